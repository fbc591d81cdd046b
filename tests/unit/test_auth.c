/*
 * test_auth.c: the tokens file (parser, permission checks, constant-time
 * lookup), the token generator, and auth_check()'s decisions for every kind
 * of caller: no auth configured, bearer tokens, client certificates,
 * anonymous reads, and SO_PEERCRED on a Unix socket.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "config.h"
#include "luofleet/util.h"
#include "testutil.h"

/* SHA-256 hex of s. */
static void sha_hex(const char *s, char out[65])
{
        unsigned char md[32];
        unsigned len = 0;
        ck_assert_int_eq(EVP_Digest(s, strlen(s), md, &len, EVP_sha256(), NULL), 1);
        hex_encode(md, 32, out);
}

static int parse_text(const char *text, struct auth_tokens **ret, char *err, size_t n)
{
        return auth_tokens_parse(text, strlen(text), ret, err, n);
}

START_TEST(test_parse_valid)
{
        struct auth_tokens *t = NULL;
        char a[65], b[65], text[512], err[200] = "";
        const char *name;
        enum auth_role role;

        sha_hex("secret-a", a);
        sha_hex("secret-b", b);
        snprintf(text, sizeof(text),
                 "# luofleet tokens\n\n  ci-bot\toperator  %s\r\ndash.board_1 viewer %s\n"
                 "   # indented comment\n",
                 a, b);
        ck_assert_int_eq(parse_text(text, &t, err, sizeof(err)), 0);
        ck_assert_uint_eq(auth_tokens_count(t), 2);
        ck_assert_int_eq(auth_tokens_find(t, "secret-a", 8, &name, &role), 0);
        ck_assert_str_eq(name, "ci-bot");
        ck_assert_int_eq(role, ROLE_OPERATOR);
        ck_assert_int_eq(auth_tokens_find(t, "secret-b", 8, &name, &role), 0);
        ck_assert_str_eq(name, "dash.board_1");
        ck_assert_int_eq(role, ROLE_VIEWER);
        ck_assert_int_eq(auth_tokens_find(t, "secret-c", 8, &name, &role), -ENOENT);
        ck_assert_int_eq(auth_tokens_find(t, "secret-a", 7, &name, &role), -ENOENT);
        ck_assert_int_eq(auth_tokens_find(t, "", 0, &name, &role), -ENOENT);
        ck_assert_int_eq(auth_tokens_find(NULL, "secret-a", 8, &name, &role), -ENOENT);
        /* The digest itself is not a token. */
        ck_assert_int_eq(auth_tokens_find(t, a, 64, &name, &role), -ENOENT);
        auth_tokens_unref(t);

        /* An empty file is a valid file with no tokens. */
        ck_assert_int_eq(parse_text("", &t, err, sizeof(err)), 0);
        ck_assert_uint_eq(auth_tokens_count(t), 0);
        auth_tokens_unref(t);
}
END_TEST

/* fmt with each '@' replaced by d. */
static void subst(const char *fmt, const char *d, char *out, size_t size)
{
        size_t o = 0;
        for (const char *p = fmt; *p && o + 65 < size; p++) {
                if (*p == '@') {
                        memcpy(out + o, d, 64);
                        o += 64;
                } else
                        out[o++] = *p;
        }
        out[o] = 0;
}

START_TEST(test_parse_errors)
{
        static const struct {
                const char *fmt; /* @ = a valid digest */
                const char *err;
        } cases[] = {
                { "ci operator\n", "line 1: expected three fields NAME ROLE SHA256, found fewer" },
                { "ci operator @ extra\n",
                  "line 1: expected three fields NAME ROLE SHA256, found more" },
                { "#x\nc/i operator @\n",
                  "line 2: the name must be 1 to 64 characters of A-Z a-z 0-9 . _ -" },
                { "ci root @\n", "line 1: the role must be viewer, operator or admin" },
                { "ci none @\n", "line 1: the role must be viewer, operator or admin" },
                { "ci operator abcdef\n", "line 1: expected the token's SHA-256 as 64 hex digits "
                                          "(never the token itself)" },
                { "ci operator "
                  "zz00000000000000000000000000000000000000000000000000000000000000\n",
                  "line 1: the SHA-256 must be 64 hex digits" },
                { "ci operator @\nci viewer "
                  "0000000000000000000000000000000000000000000000000000000000000000\n",
                  "line 2: the name ci appears twice" },
                { "ci operator @\nci2 viewer @\n",
                  "line 2: the same token digest as ci (one token, one name)" },
                { "ci operator\x01 @\n", "line 1: control character" },
        };
        char d[65], text[512], err[200];
        struct auth_tokens *t = NULL;

        sha_hex("tok", d);
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                subst(cases[i].fmt, d, text, sizeof(text));
                err[0] = 0;
                ck_assert_int_eq(parse_text(text, &t, err, sizeof(err)), -EINVAL);
                ck_assert_str_eq(err, cases[i].err);
        }
        /* A name of 65 characters. */
        snprintf(text, sizeof(text), "%065d viewer %s\n", 0, d);
        ck_assert_int_eq(parse_text(text, &t, err, sizeof(err)), -EINVAL);
        /* Bigger than the cap. */
        ck_assert_int_eq(auth_tokens_parse(text, AUTH_TOKENS_FILE_MAX + 1, &t, err, sizeof(err)),
                         -EINVAL);
        ck_assert_str_eq(err, "the file is larger than 1048576 bytes");
}
END_TEST

static void write_file(const char *path, const char *text, mode_t mode)
{
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write_all(fd, text, strlen(text)), 0);
        ck_assert_int_eq(fchmod(fd, mode), 0);
        close(fd);
}

START_TEST(test_load_permissions)
{
        char dir[256], path[300], d[65], text[200], err[300] = "";
        struct auth_tokens *t = NULL;
        int fds = testutil_count_fds();

        testutil_mkdtemp(dir, sizeof(dir), "auth");
        snprintf(path, sizeof(path), "%s/tokens", dir);
        sha_hex("tok", d);
        snprintf(text, sizeof(text), "ci operator %s\n", d);

        write_file(path, text, 0600);
        ck_assert_int_eq(auth_tokens_load(path, &t, err, sizeof(err)), 0);
        ck_assert_uint_eq(auth_tokens_count(t), 1);
        t = auth_tokens_unref(t);

        write_file(path, text, 0640);
        ck_assert_int_eq(auth_tokens_load(path, &t, err, sizeof(err)), -EPERM);
        ck_assert_ptr_nonnull(strstr(err, "has mode 0640: a tokens file must not be readable"));
        write_file(path, text, 0604);
        ck_assert_int_eq(auth_tokens_load(path, &t, err, sizeof(err)), -EPERM);
        write_file(path, text, 0400);
        ck_assert_int_eq(auth_tokens_load(path, &t, err, sizeof(err)), 0);
        t = auth_tokens_unref(t);

        ck_assert_int_eq(auth_tokens_load(dir, &t, err, sizeof(err)), -EINVAL);
        snprintf(path, sizeof(path), "%s/missing", dir);
        ck_assert_int_eq(auth_tokens_load(path, &t, err, sizeof(err)), -ENOENT);

        testutil_rm_rf(dir);
        ck_assert_int_eq(testutil_count_fds(), fds);
}
END_TEST

/* ---- decisions ---------------------------------------------------------- */

static char tdir[256];

static void setup_policy(const char *tokens_text, bool client_ca, unsigned anonymous)
{
        struct agent_config cfg = { .tls_client_role = ROLE_OPERATOR, .anonymous = anonymous };
        char path[300], err[300] = "";

        testutil_mkdtemp(tdir, sizeof(tdir), "authp");
        snprintf(path, sizeof(path), "%s/tokens", tdir);
        if (tokens_text) {
                write_file(path, tokens_text, 0600);
                cfg.tokens_file = path;
        }
        if (client_ca)
                cfg.tls_client_ca = (char *)"/unused/ca.pem";
        ck_assert_int_eq(auth_setup(&cfg, err, sizeof(err)), 0);
}

static void teardown_policy(void)
{
        auth_done();
        testutil_rm_rf(tdir);
}

static enum auth_verdict check(bool is_read, const char *path, const char *authz, int cert,
                               struct auth_identity *who, const char **code)
{
        struct auth_request rq = { .is_read = is_read,
                                   .path = path,
                                   .authorization = authz,
                                   .fd = -1,
                                   .cert = cert,
                                   .cert_name = "ctl.example" };
        char detail[256];
        return auth_check(&rq, who, code, detail, sizeof(detail));
}

START_TEST(test_check_no_auth)
{
        struct auth_identity who;
        const char *code;

        setup_policy(NULL, false, 0);
        ck_assert(!auth_required());
        ck_assert_int_eq(check(false, "/v1/prepare", NULL, 0, &who, &code), AUTH_ALLOW);
        ck_assert_int_eq(who.role, ROLE_OPERATOR);
        ck_assert_str_eq(who.method, "none");
        /* A token is not looked at when none are configured. */
        ck_assert_int_eq(check(false, "/v1/prepare", "Bearer nope", 0, &who, &code), AUTH_ALLOW);
        teardown_policy();
}
END_TEST

START_TEST(test_check_tokens)
{
        struct auth_identity who;
        const char *code;
        char a[65], b[65], text[300], ids[200];

        sha_hex("op-token", a);
        sha_hex("view-token", b);
        snprintf(text, sizeof(text), "ci operator %s\ndash viewer %s\n", a, b);
        setup_policy(text, false, ANON_METRICS);
        ck_assert(auth_required());
        ck_assert_uint_eq(auth_token_count(), 2);

        ck_assert_int_eq(check(true, "/healthz", NULL, 0, &who, &code), AUTH_ALLOW);
        ck_assert_int_eq(check(true, "/v1/state", NULL, 0, &who, &code), AUTH_UNAUTHENTICATED);
        ck_assert_str_eq(code, "authentication-required");
        ck_assert_int_eq(check(true, "/metrics", NULL, 0, &who, &code), AUTH_ALLOW);
        ck_assert_str_eq(who.method, "anonymous");
        ck_assert_int_eq(check(true, "/readyz", NULL, 0, &who, &code), AUTH_UNAUTHENTICATED);
        /* Anonymous opens reads only. */
        ck_assert_int_eq(check(false, "/metrics", NULL, 0, &who, &code), AUTH_UNAUTHENTICATED);

        ck_assert_int_eq(check(true, "/v1/state", "Bearer view-token", 0, &who, &code), AUTH_ALLOW);
        ck_assert_str_eq(who.method, "token");
        ck_assert_str_eq(who.name, "dash");
        ck_assert_int_eq(who.role, ROLE_VIEWER);
        ck_assert_int_eq(check(false, "/v1/prepare", "Bearer view-token", 0, &who, &code),
                         AUTH_FORBIDDEN);
        ck_assert_str_eq(code, "forbidden");
        ck_assert_int_eq(check(false, "/v1/prepare", "bearer   op-token  ", 0, &who, &code),
                         AUTH_ALLOW);
        ck_assert_int_eq(who.role, ROLE_OPERATOR);
        auth_identity_string(&who, ids, sizeof(ids));
        ck_assert_str_eq(ids, "token:ci");

        ck_assert_int_eq(check(false, "/v1/prepare", "Bearer wrong", 0, &who, &code),
                         AUTH_UNAUTHENTICATED);
        ck_assert_str_eq(code, "invalid-credentials");
        ck_assert_int_eq(check(false, "/v1/prepare", "Basic b3A6dG9rZW4=", 0, &who, &code),
                         AUTH_UNAUTHENTICATED);
        ck_assert_str_eq(code, "invalid-credentials");
        ck_assert_int_eq(check(false, "/v1/prepare", "Bearer", 0, &who, &code),
                         AUTH_UNAUTHENTICATED);
        ck_assert_int_eq(check(false, "/v1/prepare", "Bearer op-token\r\nX: y", 0, &who, &code),
                         AUTH_UNAUTHENTICATED);
        ck_assert_int_eq(check(false, "/v1/prepare", "Bearer op token", 0, &who, &code),
                         AUTH_UNAUTHENTICATED);
        /* Without a client CA a certificate state of 1 still identifies (role --tls-client-role).
         */
        ck_assert_int_eq(check(false, "/v1/prepare", NULL, 1, &who, &code), AUTH_ALLOW);
        ck_assert_str_eq(who.method, "cert");
        ck_assert_str_eq(who.name, "ctl.example");
        teardown_policy();
}
END_TEST

START_TEST(test_check_client_certificates)
{
        struct auth_identity who;
        const char *code;
        char a[65], text[200], ids[200];

        sha_hex("view-token", a);
        snprintf(text, sizeof(text), "dash viewer %s\n", a);
        setup_policy(text, true, ANON_STATE);

        ck_assert_int_eq(check(false, "/v1/prepare", NULL, 0, &who, &code), AUTH_UNAUTHENTICATED);
        ck_assert_str_eq(code, "client-certificate-required");
        /* A token alone is not enough with mutual TLS. */
        ck_assert_int_eq(check(true, "/v1/history", "Bearer view-token", 0, &who, &code),
                         AUTH_UNAUTHENTICATED);
        ck_assert_str_eq(code, "client-certificate-required");
        ck_assert_int_eq(check(false, "/v1/prepare", NULL, -1, &who, &code), AUTH_UNAUTHENTICATED);
        ck_assert_str_eq(code, "invalid-credentials");
        ck_assert_int_eq(check(false, "/v1/prepare", NULL, 1, &who, &code), AUTH_ALLOW);
        ck_assert_int_eq(who.role, ROLE_OPERATOR);
        auth_identity_string(&who, ids, sizeof(ids));
        ck_assert_str_eq(ids, "cert:ctl.example");
        /* Certificate and token: the token's role counts. */
        ck_assert_int_eq(check(false, "/v1/prepare", "Bearer view-token", 1, &who, &code),
                         AUTH_FORBIDDEN);
        /* Anonymous state needs no certificate either. */
        ck_assert_int_eq(check(true, "/v1/state", NULL, 0, &who, &code), AUTH_ALLOW);
        ck_assert_int_eq(check(true, "/healthz", NULL, -1, &who, &code), AUTH_ALLOW);
        teardown_policy();
}
END_TEST

START_TEST(test_check_unix_peercred)
{
        struct auth_identity who;
        const char *code;
        char detail[256], expect[32];
        int sv[2];

        setup_policy(NULL, false, 0);
        ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        struct auth_request rq = {
                .is_unix = true, .is_read = false, .path = "/v1/prepare", .fd = sv[0]
        };
        ck_assert_int_eq(auth_check(&rq, &who, &code, detail, sizeof(detail)), AUTH_ALLOW);
        ck_assert_str_eq(who.method, "peercred");
        snprintf(expect, sizeof(expect), "uid:%u", (unsigned)geteuid());
        ck_assert_str_eq(who.name, expect);
        /* Our own uid (the agent's user, or root) is an operator. */
        ck_assert_int_eq(who.role, ROLE_OPERATOR);
        /* No credentials readable: refused, not guessed. */
        rq.fd = -1;
        ck_assert_int_eq(auth_check(&rq, &who, &code, detail, sizeof(detail)),
                         AUTH_UNAUTHENTICATED);
        /* A bearer token on the Unix socket with no tokens configured: unknown. */
        rq.fd = sv[0];
        rq.authorization = "Bearer x";
        ck_assert_int_eq(auth_check(&rq, &who, &code, detail, sizeof(detail)),
                         AUTH_UNAUTHENTICATED);
        ck_assert_str_eq(code, "invalid-credentials");
        close(sv[0]);
        close(sv[1]);
        teardown_policy();
}
END_TEST

START_TEST(test_reload_keeps_old_on_error)
{
        char a[65], b[65], text[300], path[300], err[300] = "";
        struct auth_identity who;
        const char *code;

        sha_hex("one", a);
        sha_hex("two", b);
        snprintf(text, sizeof(text), "one operator %s\n", a);
        setup_policy(text, false, 0);
        snprintf(path, sizeof(path), "%s/tokens", tdir);

        write_file(path, "broken line\n", 0600);
        ck_assert_int_eq(auth_reload(err, sizeof(err)), -EINVAL);
        ck_assert_int_eq(check(false, "/v1/prepare", "Bearer one", 0, &who, &code), AUTH_ALLOW);

        snprintf(text, sizeof(text), "two operator %s\n", b);
        write_file(path, text, 0600);
        ck_assert_int_eq(auth_reload(err, sizeof(err)), 0);
        ck_assert_int_eq(check(false, "/v1/prepare", "Bearer one", 0, &who, &code),
                         AUTH_UNAUTHENTICATED);
        ck_assert_int_eq(check(false, "/v1/prepare", "Bearer two", 0, &who, &code), AUTH_ALLOW);
        ck_assert_str_eq(who.name, "two");
        teardown_policy();
}
END_TEST

START_TEST(test_roles)
{
        ck_assert_str_eq(auth_role_to_string(ROLE_VIEWER), "viewer");
        ck_assert_str_eq(auth_role_to_string(ROLE_ADMIN), "admin");
        ck_assert_str_eq(auth_role_to_string((enum auth_role)99), "none");
        ck_assert_int_eq(auth_role_from_string("operator"), ROLE_OPERATOR);
        ck_assert_int_eq(auth_role_from_string("Operator"), -EINVAL);
        ck_assert_int_eq(auth_role_from_string(NULL), -EINVAL);

        struct auth_identity w = { .role = ROLE_VIEWER, .method = "anonymous" };
        char s[64];
        auth_identity_string(&w, s, sizeof(s));
        ck_assert_str_eq(s, "anonymous");
        w = (struct auth_identity){ .role = ROLE_OPERATOR, .method = "peercred", .name = "uid:0" };
        auth_identity_string(&w, s, sizeof(s));
        ck_assert_str_eq(s, "uid:0");
}
END_TEST

static Suite *auth_suite(void)
{
        Suite *s = suite_create("auth");
        TCase *tc = tcase_create("core");

        tcase_add_test(tc, test_parse_valid);
        tcase_add_test(tc, test_parse_errors);
        tcase_add_test(tc, test_load_permissions);
        tcase_add_test(tc, test_check_no_auth);
        tcase_add_test(tc, test_check_tokens);
        tcase_add_test(tc, test_check_client_certificates);
        tcase_add_test(tc, test_check_unix_peercred);
        tcase_add_test(tc, test_reload_keeps_old_on_error);
        tcase_add_test(tc, test_roles);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(auth_suite)
