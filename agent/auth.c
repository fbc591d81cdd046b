/*
 * auth.c: bearer tokens, client certificates and peer credentials mapped to
 * roles (see auth.h).
 *
 * The tokens table is immutable once parsed; a reload builds a new one and
 * swaps the pointer under policy.lock, and requests hold a reference for the
 * few microseconds they need it. Only SHA-256 digests are kept: the file
 * never holds a token, and neither does memory beyond the request's own
 * header. Every lookup hashes the presented token and compares it with every
 * entry with CRYPTO_memcmp, so neither the match position nor a partial
 * match shows in the timing.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "config.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "secfile.h"
#include "metrics.h"

static const char *const role_names[_ROLE_MAX] = {
        [ROLE_NONE] = "none",
        [ROLE_VIEWER] = "viewer",
        [ROLE_OPERATOR] = "operator",
        [ROLE_ADMIN] = "admin",
};

const char *auth_role_to_string(enum auth_role r)
{
        return r >= 0 && r < _ROLE_MAX ? role_names[r] : "none";
}

int auth_role_from_string(const char *s)
{
        for (int i = 0; i < _ROLE_MAX; i++)
                if (s && strcmp(s, role_names[i]) == 0)
                        return i;
        return -EINVAL;
}

void auth_identity_string(const struct auth_identity *who, char *buf, size_t size)
{
        if (!who->method[0] || strcmp(who->method, "none") == 0 ||
            strcmp(who->method, "anonymous") == 0 || !who->name[0])
                snprintf(buf, size, "anonymous");
        else if (strcmp(who->method, "peercred") == 0)
                snprintf(buf, size, "%s", who->name); /* "uid:N" already */
        else
                snprintf(buf, size, "%s:%s", who->method, who->name);
}

/* ---- the tokens table --------------------------------------------------- */

struct auth_token_entry {
        char name[AUTH_TOKEN_NAME_MAX + 1];
        enum auth_role role;
        uint8_t digest[32];
};

struct auth_tokens {
        atomic_uint refs;
        size_t n;
        struct auth_token_entry e[];
};

static bool name_char(char c)
{
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '.' || c == '_' || c == '-';
}

static bool valid_name(const char *s, size_t n)
{
        if (n == 0 || n > AUTH_TOKEN_NAME_MAX)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!name_char(s[i]))
                        return false;
        return true;
}

static int hex_value(char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* Split the next whitespace-separated field of [*p, end). */
static bool next_field(const char **p, const char *end, const char **ret, size_t *ret_len)
{
        const char *s = *p;
        while (s < end && (*s == ' ' || *s == '\t'))
                s++;
        const char *f = s;
        while (s < end && *s != ' ' && *s != '\t')
                s++;
        *p = s;
        *ret = f;
        *ret_len = (size_t)(s - f);
        return s > f;
}

int auth_tokens_parse(const char *text, size_t len, struct auth_tokens **ret, char *err,
                      size_t err_size)
{
        struct auth_tokens *t;
        size_t lines = 0, cap = 0;
        unsigned lineno = 0;

        if (len > AUTH_TOKENS_FILE_MAX) {
                snprintf(err, err_size, "the file is larger than %d bytes", AUTH_TOKENS_FILE_MAX);
                return -EINVAL;
        }
        for (size_t i = 0; i < len; i++)
                if (text[i] == '\n')
                        lines++;
        cap = MIN(lines + 1, (size_t)AUTH_TOKENS_MAX + 1);
        t = calloc(1, sizeof(*t) + cap * sizeof(t->e[0]));
        if (!t)
                return -ENOMEM;
        atomic_init(&t->refs, 1);

        for (const char *p = text, *end = text + len; p < end;) {
                const char *eol = memchr(p, '\n', (size_t)(end - p));
                const char *le = eol ? eol : end;
                const char *q = p, *f[4];
                size_t fl[4];
                unsigned nf = 0;

                lineno++;
                if (le > p && le[-1] == '\r')
                        le--;
                for (const char *c = p; c < le; c++)
                        if ((unsigned char)*c < 0x20 && *c != '\t') {
                                snprintf(err, err_size, "line %u: control character", lineno);
                                goto fail;
                        }
                while (nf < 4 && next_field(&q, le, &f[nf], &fl[nf]))
                        nf++;
                p = eol ? eol + 1 : end;
                if (nf == 0 || f[0][0] == '#')
                        continue;
                if (nf != 3) {
                        snprintf(err, err_size,
                                 "line %u: expected three fields NAME ROLE SHA256, found %s",
                                 lineno, nf > 3 ? "more" : "fewer");
                        goto fail;
                }
                if (!valid_name(f[0], fl[0])) {
                        snprintf(
                                err, err_size,
                                "line %u: the name must be 1 to %d characters of A-Z a-z 0-9 . _ -",
                                lineno, AUTH_TOKEN_NAME_MAX);
                        goto fail;
                }
                char role[16] = "";
                if (fl[1] < sizeof(role))
                        memcpy(role, f[1], fl[1]);
                int r = auth_role_from_string(role);
                if (r <= ROLE_NONE) {
                        snprintf(err, err_size,
                                 "line %u: the role must be viewer, operator or admin", lineno);
                        goto fail;
                }
                if (fl[2] != 64) {
                        snprintf(err, err_size,
                                 "line %u: expected the token's SHA-256 as 64 hex digits "
                                 "(never the token itself)",
                                 lineno);
                        goto fail;
                }
                if (t->n >= AUTH_TOKENS_MAX) {
                        snprintf(err, err_size, "line %u: more than %d tokens", lineno,
                                 AUTH_TOKENS_MAX);
                        goto fail;
                }
                struct auth_token_entry *e = &t->e[t->n];
                for (size_t i = 0; i < 32; i++) {
                        int hi = hex_value(f[2][2 * i]), lo = hex_value(f[2][2 * i + 1]);
                        if (hi < 0 || lo < 0) {
                                snprintf(err, err_size,
                                         "line %u: the SHA-256 must be 64 hex digits", lineno);
                                goto fail;
                        }
                        e->digest[i] = (uint8_t)(hi << 4 | lo);
                }
                memcpy(e->name, f[0], fl[0]);
                e->name[fl[0]] = 0;
                e->role = r;
                for (size_t i = 0; i < t->n; i++) {
                        if (strcmp(t->e[i].name, e->name) == 0) {
                                snprintf(err, err_size, "line %u: the name %s appears twice",
                                         lineno, e->name);
                                goto fail;
                        }
                        if (memcmp(t->e[i].digest, e->digest, 32) == 0) {
                                snprintf(err, err_size,
                                         "line %u: the same token digest as %s (one token, one "
                                         "name)",
                                         lineno, t->e[i].name);
                                goto fail;
                        }
                }
                t->n++;
        }
        *ret = t;
        return 0;
fail:
        free(t);
        return -EINVAL;
}

/*
 * Who may own the tokens file besides root: the user the agent was started
 * as, fixed at the first load. Started as root that is root only, also for
 * the reloads that run after the network process dropped to --user.
 */
static uid_t tokens_owner(void)
{
        static _Atomic uid_t owner = (uid_t)-1;
        uid_t o = atomic_load(&owner);

        if (o == (uid_t)-1) {
                o = geteuid();
                atomic_store(&owner, o);
        }
        return o;
}

int auth_tokens_load(const char *path, struct auth_tokens **ret, char *err, size_t err_size)
{
        _cleanup_close_ int fd = -1;
        struct stat st;
        char *buf;
        size_t len = 0;
        int r;

        fd = secfile_open(path);
        if (fd < 0)
                errno = -fd;
        if (fd < 0) {
                r = -errno;
                snprintf(err, err_size, "cannot open %s: %s", path, strerror(-r));
                return r;
        }
        if (fstat(fd, &st) < 0) {
                r = -errno;
                snprintf(err, err_size, "cannot stat %s: %s", path, strerror(-r));
                return r;
        }
        if (!S_ISREG(st.st_mode)) {
                snprintf(err, err_size, "%s is not a regular file", path);
                return -EINVAL;
        }
        if (st.st_mode & (S_IRWXG | S_IRWXO)) {
                snprintf(err, err_size,
                         "%s has mode %04o: a tokens file must not be readable or writable by "
                         "group or others (chmod 600)",
                         path, (unsigned)(st.st_mode & 07777));
                return -EPERM;
        }
        if (st.st_uid != 0 && st.st_uid != tokens_owner()) {
                snprintf(err, err_size, "%s is owned by uid %u: expected root%s", path,
                         (unsigned)st.st_uid,
                         tokens_owner() ? " or the agent's user (not started as root)" : "");
                return -EPERM;
        }
        if (st.st_size > AUTH_TOKENS_FILE_MAX) {
                snprintf(err, err_size, "%s is larger than %d bytes", path, AUTH_TOKENS_FILE_MAX);
                return -EFBIG;
        }
        buf = malloc((size_t)st.st_size + 1);
        if (!buf)
                return -ENOMEM;
        ssize_t n = read_full(fd, buf, (size_t)st.st_size);
        if (n < 0) {
                free(buf);
                snprintf(err, err_size, "cannot read %s: %s", path, strerror((int)-n));
                return (int)n;
        }
        len = (size_t)n;
        char perr[200] = "";
        r = auth_tokens_parse(buf, len, ret, perr, sizeof(perr));
        OPENSSL_cleanse(buf, len);
        free(buf);
        if (r < 0)
                snprintf(err, err_size, "%s: %s", path, perr);
        return r;
}

struct auth_tokens *auth_tokens_ref(struct auth_tokens *t)
{
        if (t)
                atomic_fetch_add(&t->refs, 1);
        return t;
}

struct auth_tokens *auth_tokens_unref(struct auth_tokens *t)
{
        if (t && atomic_fetch_sub(&t->refs, 1) == 1)
                free(t);
        return NULL;
}

size_t auth_tokens_count(const struct auth_tokens *t)
{
        return t ? t->n : 0;
}

/*
 * SHA-256 on the request path, made cheap: the algorithm is fetched once
 * (EVP_sha256() makes OpenSSL 3 look it up on every EVP_Digest()) and each
 * thread keeps one digest context (freed when the thread ends), instead of a
 * context allocated and freed per request. Together they took an
 * authenticated GET from 44k to 37k instructions (bench/run callgrind).
 */
static EVP_MD *sha256_md;
static pthread_key_t sha256_key;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_ctx_free(void *p)
{
        EVP_MD_CTX_free(p);
}

static void sha256_setup(void)
{
        sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
        if (pthread_key_create(&sha256_key, sha256_ctx_free) != 0)
                sha256_md = NULL; /* fall back to one-shot digests */
}

static int sha256(const void *data, size_t len, uint8_t md[static 32])
{
        unsigned md_len = 0;
        EVP_MD_CTX *ctx;

        pthread_once(&sha256_once, sha256_setup);
        if (!sha256_md)
                return EVP_Digest(data, len, md, &md_len, EVP_sha256(), NULL) == 1 && md_len == 32
                               ? 0
                               : -EIO;
        ctx = pthread_getspecific(sha256_key);
        if (!ctx) {
                ctx = EVP_MD_CTX_new();
                if (!ctx || pthread_setspecific(sha256_key, ctx) != 0) {
                        EVP_MD_CTX_free(ctx);
                        return -ENOMEM;
                }
        }
        if (EVP_DigestInit_ex2(ctx, sha256_md, NULL) != 1 ||
            EVP_DigestUpdate(ctx, data, len) != 1 || EVP_DigestFinal_ex(ctx, md, &md_len) != 1 ||
            md_len != 32)
                return -EIO;
        return 0;
}

int auth_tokens_find(const struct auth_tokens *t, const char *token, size_t len,
                     const char **ret_name, enum auth_role *ret_role)
{
        uint8_t md[32];
        size_t found = SIZE_MAX;

        if (!t || len == 0 || len > AUTH_TOKEN_MAX)
                return -ENOENT;
        if (sha256(token, len, md) < 0)
                return -ENOENT;
        /* Every entry, every time: the loop's length is the table's, not the match's. */
        for (size_t i = 0; i < t->n; i++) {
                size_t hit = (size_t)(CRYPTO_memcmp(t->e[i].digest, md, 32) == 0);
                found = hit ? i : found;
        }
        if (found == SIZE_MAX)
                return -ENOENT;
        *ret_name = t->e[found].name;
        *ret_role = t->e[found].role;
        return 0;
}

/* ---- the policy --------------------------------------------------------- */

static struct {
        pthread_mutex_t lock; /* guards tokens (the pointer) */
        struct auth_tokens *tokens;
        char *tokens_path;
        bool required; /* tokens or client CA: TCP callers authenticate */
        bool client_ca;
        enum auth_role cert_role;
        unsigned anonymous;
        bool has_unix_gid;
        gid_t unix_gid;
} policy = { .lock = PTHREAD_MUTEX_INITIALIZER };

int auth_setup(const struct agent_config *cfg, char *err, size_t err_size)
{
        struct auth_tokens *t = NULL;
        int r;

        auth_done();
        if (cfg->tokens_file) {
                r = auth_tokens_load(cfg->tokens_file, &t, err, err_size);
                if (r < 0)
                        return r;
                policy.tokens_path = strdup(cfg->tokens_file);
                if (!policy.tokens_path) {
                        auth_tokens_unref(t);
                        return -ENOMEM;
                }
        }
        if (cfg->unix_group) {
                struct group gr, *res = NULL;
                char buf[4096];
                uint64_t gid;
                if (parse_u64(cfg->unix_group, UINT32_MAX - 1, &gid) == 0) {
                        policy.unix_gid = (gid_t)gid;
                } else if (getgrnam_r(cfg->unix_group, &gr, buf, sizeof(buf), &res) == 0 && res) {
                        policy.unix_gid = res->gr_gid;
                } else {
                        snprintf(err, err_size, "--unix-group=%s: no such group", cfg->unix_group);
                        auth_tokens_unref(t);
                        return -ENOENT;
                }
                policy.has_unix_gid = true;
        }
        pthread_mutex_lock(&policy.lock);
        policy.tokens = t;
        pthread_mutex_unlock(&policy.lock);
        policy.client_ca = cfg->tls_client_ca != NULL;
        policy.required = cfg->tokens_file || cfg->tls_client_ca;
        policy.cert_role = (enum auth_role)cfg->tls_client_role;
        policy.anonymous = cfg->anonymous;
        return 0;
}

int auth_reload(char *err, size_t err_size)
{
        struct auth_tokens *t = NULL, *old;
        int r;

        if (!policy.tokens_path)
                return 0;
        r = auth_tokens_load(policy.tokens_path, &t, err, err_size);
        if (r < 0)
                return r;
        pthread_mutex_lock(&policy.lock);
        old = policy.tokens;
        policy.tokens = t;
        pthread_mutex_unlock(&policy.lock);
        auth_tokens_unref(old);
        return 0;
}

void auth_done(void)
{
        pthread_mutex_lock(&policy.lock);
        policy.tokens = auth_tokens_unref(policy.tokens);
        pthread_mutex_unlock(&policy.lock);
        free(policy.tokens_path);
        policy.tokens_path = NULL;
        policy.required = policy.client_ca = policy.has_unix_gid = false;
        policy.anonymous = 0;
}

int auth_chown_socket(int file_fd)
{
        if (!policy.has_unix_gid)
                return 0;
        /* The inode itself (an O_PATH descriptor), never a name that may have been replaced. */
        if (fchownat(file_fd, "", (uid_t)-1, policy.unix_gid, AT_EMPTY_PATH) < 0)
                return -errno;
        return 0;
}

bool auth_required(void)
{
        return policy.required;
}

size_t auth_token_count(void)
{
        size_t n;
        pthread_mutex_lock(&policy.lock);
        n = auth_tokens_count(policy.tokens);
        pthread_mutex_unlock(&policy.lock);
        return n;
}

static struct auth_tokens *tokens_get(void)
{
        struct auth_tokens *t;
        pthread_mutex_lock(&policy.lock);
        t = auth_tokens_ref(policy.tokens);
        pthread_mutex_unlock(&policy.lock);
        return t;
}

/* Bounded copy, always terminated (snprintf("%s") cost a tenth of an authenticated GET). */
static void copy_str(char *dst, size_t size, const char *src)
{
        size_t n = src ? strnlen(src, size - 1) : 0;
        if (n)
                memcpy(dst, src, n);
        dst[n] = 0;
}

static void set_who(struct auth_identity *who, enum auth_role role, const char *method,
                    const char *name)
{
        who->role = role;
        copy_str(who->method, sizeof(who->method), method);
        copy_str(who->name, sizeof(who->name), name);
}

/*
 * Authorization: Bearer <token>. Returns 1 with the token span, 0 when the
 * header is absent, -EINVAL when it is not a usable bearer credential.
 */
static int bearer(const char *h, const char **ret, size_t *ret_len)
{
        const char *p, *e;

        if (!h)
                return 0;
        if (strncasecmp(h, "Bearer", 6) != 0 || (h[6] != ' ' && h[6] != '\t'))
                return -EINVAL;
        p = h + 7;
        while (*p == ' ' || *p == '\t')
                p++;
        e = p + strlen(p);
        while (e > p && (e[-1] == ' ' || e[-1] == '\t'))
                e--;
        if (e == p || (size_t)(e - p) > AUTH_TOKEN_MAX)
                return -EINVAL;
        /* RFC 6750 token68 characters only. */
        for (const char *c = p; c < e; c++)
                if (!(name_char(*c) || *c == '~' || *c == '+' || *c == '/' || *c == '='))
                        return -EINVAL;
        *ret = p;
        *ret_len = (size_t)(e - p);
        return 1;
}

/* Returns 1 found (who filled), -ENOENT unknown, -EINVAL malformed, 0 absent. */
static int token_identity(const char *authorization, struct auth_identity *who)
{
        const char *tok, *name;
        size_t len;
        enum auth_role role;
        int r = bearer(authorization, &tok, &len);
        if (r <= 0)
                return r;
        struct auth_tokens *t = tokens_get();
        r = auth_tokens_find(t, tok, len, &name, &role);
        if (r == 0)
                set_who(who, role, "token", name);
        auth_tokens_unref(t);
        return r == 0 ? 1 : -ENOENT;
}

static bool peer_in_group(int fd, gid_t peer_gid, gid_t want)
{
        gid_t groups[256];
        socklen_t len = sizeof(groups);

        if (peer_gid == want)
                return true;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) < 0)
                return false;
        for (size_t i = 0; i < len / sizeof(gid_t); i++)
                if (groups[i] == want)
                        return true;
        return false;
}

static bool anonymous_ok(const struct auth_request *rq)
{
        if (!rq->is_read)
                return false;
        return ((policy.anonymous & ANON_STATE) && strcmp(rq->path, "/v1/state") == 0) ||
               ((policy.anonymous & ANON_METRICS) && strcmp(rq->path, "/metrics") == 0) ||
               ((policy.anonymous & ANON_READYZ) && strcmp(rq->path, "/readyz") == 0);
}

enum auth_verdict auth_check(const struct auth_request *rq, struct auth_identity *who,
                             const char **ret_code, char *detail, size_t detail_size)
{
        enum auth_role need = rq->is_read ? ROLE_VIEWER : ROLE_OPERATOR;
        char ids[200];
        int r;

        *who = (struct auth_identity){ 0 };
        *ret_code = NULL;
        if (strcmp(rq->path, "/healthz") == 0) {
                set_who(who, ROLE_VIEWER, "anonymous", NULL);
                return AUTH_ALLOW;
        }

        if (rq->is_unix) {
                r = token_identity(rq->authorization, who);
                if (r < 0) {
                        *ret_code = "invalid-credentials";
                        snprintf(detail, detail_size,
                                 r == -EINVAL ? "the Authorization header is not a Bearer token"
                                              : "the bearer token is not known");
                        return AUTH_UNAUTHENTICATED;
                }
                if (r == 0) {
                        struct ucred uc;
                        socklen_t len = sizeof(uc);
                        char name[32];
                        if (rq->fd < 0 ||
                            getsockopt(rq->fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) < 0) {
                                *ret_code = "authentication-required";
                                snprintf(detail, detail_size,
                                         "the peer's credentials cannot be read");
                                return AUTH_UNAUTHENTICATED;
                        }
                        snprintf(name, sizeof(name), "uid:%u", (unsigned)uc.uid);
                        bool op = uc.uid == 0 || uc.uid == geteuid() ||
                                  (policy.has_unix_gid &&
                                   peer_in_group(rq->fd, uc.gid, policy.unix_gid));
                        set_who(who, op ? ROLE_OPERATOR : ROLE_VIEWER, "peercred", name);
                }
        } else if (!policy.required) {
                /* No tokens, no client CA: loopback only (or --insecure), every caller acts. */
                set_who(who, ROLE_OPERATOR, "none", NULL);
                return AUTH_ALLOW;
        } else {
                bool anon = anonymous_ok(rq);
                if (rq->cert < 0 && !anon) {
                        *ret_code = "invalid-credentials";
                        snprintf(detail, detail_size,
                                 "the client certificate is not signed by a trusted CA, has "
                                 "expired or is not for client authentication");
                        return AUTH_UNAUTHENTICATED;
                }
                if (policy.client_ca && rq->cert != 1 && !anon) {
                        *ret_code = "client-certificate-required";
                        snprintf(detail, detail_size,
                                 "this agent requires a TLS client certificate");
                        return AUTH_UNAUTHENTICATED;
                }
                r = token_identity(rq->authorization, who);
                if (r < 0) {
                        *ret_code = "invalid-credentials";
                        snprintf(detail, detail_size,
                                 r == -EINVAL ? "the Authorization header is not a Bearer token"
                                              : "the bearer token is not known");
                        return AUTH_UNAUTHENTICATED;
                }
                if (r == 0) {
                        if (rq->cert == 1)
                                set_who(who, policy.cert_role, "cert", rq->cert_name);
                        else if (anon)
                                set_who(who, ROLE_VIEWER, "anonymous", NULL);
                        else {
                                *ret_code = "authentication-required";
                                snprintf(detail, detail_size,
                                         "this endpoint needs credentials: a bearer token%s",
                                         policy.client_ca ? " or a client certificate" : "");
                                return AUTH_UNAUTHENTICATED;
                        }
                }
        }
        if (who->role < need) {
                auth_identity_string(who, ids, sizeof(ids));
                *ret_code = "forbidden";
                snprintf(detail, detail_size, "%s has role %s; this request needs %s", ids,
                         auth_role_to_string(who->role), auth_role_to_string(need));
                return AUTH_FORBIDDEN;
        }
        return AUTH_ALLOW;
}

/* ---- luofleet-agent token ------------------------------------------------ */

static void base64url(const uint8_t *in, size_t len, char *out)
{
        static const char tab[] =
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        size_t o = 0;
        uint32_t acc = 0;
        int bits = 0;

        for (size_t i = 0; i < len; i++) {
                acc = acc << 8 | in[i];
                bits += 8;
                while (bits >= 6) {
                        bits -= 6;
                        out[o++] = tab[(acc >> bits) & 63];
                }
        }
        if (bits > 0)
                out[o++] = tab[(acc << (6 - bits)) & 63];
        out[o] = 0;
}

int auth_token_command(int argc, char **argv)
{
        uint8_t raw[32], md[32];
        unsigned md_len = 0;
        char token[64], hex[65];
        int role = ROLE_OPERATOR;

        if (argc >= 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
                printf("Usage: luofleet-agent token NAME [viewer|operator|admin]\n"
                       "\n"
                       "Print a new random bearer token on stdout and, on stderr, the line to\n"
                       "add to the tokens file (--tokens=FILE). Only the token's SHA-256 goes\n"
                       "into the file; keep the token itself where the client reads it.\n"
                       "\n"
                       "  luofleet-agent token ci-bot operator 2>>/etc/luofleet/tokens\n");
                return 0;
        }
        if (argc < 2 || argc > 3) {
                fprintf(stderr, "Usage: luofleet-agent token NAME [viewer|operator|admin]\n");
                return 2;
        }
        if (!valid_name(argv[1], strlen(argv[1]))) {
                fprintf(stderr,
                        "luofleet-agent token: invalid name '%s': 1 to %d characters of "
                        "A-Z a-z 0-9 . _ -\n",
                        argv[1], AUTH_TOKEN_NAME_MAX);
                return 2;
        }
        if (argc == 3) {
                role = auth_role_from_string(argv[2]);
                if (role <= ROLE_NONE) {
                        fprintf(stderr,
                                "luofleet-agent token: invalid role '%s': expected viewer, "
                                "operator or admin\n",
                                argv[2]);
                        return 2;
                }
        }
        if (RAND_bytes(raw, sizeof(raw)) != 1) {
                fprintf(stderr, "luofleet-agent token: no randomness available\n");
                return 1;
        }
        memcpy(token, "lfa_", 4);
        base64url(raw, sizeof(raw), token + 4);
        OPENSSL_cleanse(raw, sizeof(raw));
        if (EVP_Digest(token, strlen(token), md, &md_len, EVP_sha256(), NULL) != 1 ||
            md_len != 32) {
                fprintf(stderr, "luofleet-agent token: SHA-256 failed\n");
                return 1;
        }
        hex_encode(md, 32, hex);
        printf("%s\n", token);
        fprintf(stderr, "%s %s %s\n", argv[1], auth_role_to_string(role), hex);
        OPENSSL_cleanse(token, sizeof(token));
        return fflush(stdout) == 0 ? 0 : 1;
}

/* ---- metrics ------------------------------------------------------------ */

static const char *const denied_codes[] = {
        "authentication-required",
        "invalid-credentials",
        "client-certificate-required",
        "forbidden",
        "origin-not-allowed", /* server.c: a browser's request (websec.h) */
        "host-not-allowed",
};
static atomic_uint_fast64_t denied[ELEMENTSOF(denied_codes)];

void auth_count_denied(enum auth_verdict v, const char *code)
{
        (void)v;
        for (size_t i = 0; code && i < ELEMENTSOF(denied_codes); i++)
                if (strcmp(code, denied_codes[i]) == 0)
                        atomic_fetch_add(&denied[i], 1);
}

void auth_render_metrics(struct strbuf *sb)
{
        strbuf_printf(sb, "# HELP luofleet_auth_denied_total Requests refused by authentication "
                          "(401) or authorization (403), by problem code.\n"
                          "# TYPE luofleet_auth_denied_total counter\n");
        for (size_t i = 0; i < ELEMENTSOF(denied_codes); i++)
                strbuf_printf(sb, "luofleet_auth_denied_total{code=\"%s\"} %llu\n", denied_codes[i],
                              (unsigned long long)atomic_load(&denied[i]));
        strbuf_printf(sb,
                      "# HELP luofleet_auth_tokens Bearer tokens loaded from the tokens file.\n"
                      "# TYPE luofleet_auth_tokens gauge\n"
                      "luofleet_auth_tokens %zu\n",
                      auth_token_count());
}
