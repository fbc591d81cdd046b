/*
 * cmd_host.c: the commands that talk to agents directly: state (and
 * --watch), stage, prepare, cancel, reboot (and --wait through the kexec),
 * finish, rollback, history; and the plumbing other host commands share
 * (host_check, host_call: cmd_session.c). Every HOST is attempted even when
 * an earlier one failed; the exit code is the worst outcome (EXIT_NO_CONNECT
 * only when no host answered at all). Single-threaded.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "cli.h"

#include "luofleet/macro.h"
#include "luofleet/util.h"

#define STATE_COLS 7
static const char *const state_headers[STATE_COLS] = { "HOST",   "STATE",     "INDEX", "KERNEL",
                                                       "STAGED", "OPERATION", "BOOT" };

/* Outcome bookkeeping over several hosts. */
struct outcome {
        unsigned ok, failed, unreachable;
};

static void outcome_add(struct outcome *o, int code)
{
        if (code == EXIT_OK)
                o->ok++;
        else if (code == EXIT_NO_CONNECT)
                o->unreachable++;
        else
                o->failed++;
}

static int outcome_exit(const struct outcome *o)
{
        if (o->failed == 0 && o->unreachable == 0)
                return EXIT_OK;
        if (o->failed == 0 && o->ok == 0)
                return EXIT_NO_CONNECT;
        return EXIT_FAILED;
}

/* ---- the state row ---------------------------------------------------------- */

struct state_cells {
        char index[24], staged[160], op[96], boot[16];
        const char *cells[STATE_COLS];
};

static void state_cells_fill(struct state_cells *c, const char *host, const json_t *doc)
{
        const json_t *staged = json_object_get(doc, "staged"),
                     *op = json_object_get(doc, "operation");
        const char *bid = json_str(doc, "boot_id");

        snprintf(c->index, sizeof(c->index), "%lld",
                 (long long)json_integer_value(json_object_get(doc, "index")));
        c->staged[0] = 0;
        if (json_is_object(staged)) {
                const char *rel = json_str(json_object_get(staged, "expected"), "release");
                const char *path = json_str(json_object_get(staged, "kernel"), "path");
                const char *base = path ? strrchr(path, '/') : NULL;
                snprintf(c->staged, sizeof(c->staged), "%s%s",
                         rel    ? rel
                         : base ? base + 1
                         : path ? path
                                : "yes",
                         json_is_false(json_object_get(staged, "loaded")) ? " (not loaded)" : "");
        }
        c->op[0] = 0;
        if (json_is_object(op))
                snprintf(c->op, sizeof(c->op), "%s/%s", json_str(op, "action") ?: "?",
                         json_str(op, "status") ?: "?");
        snprintf(c->boot, sizeof(c->boot), "%.8s", bid ? bid : "");
        c->cells[0] = host;
        c->cells[1] = json_str(doc, "state");
        c->cells[2] = c->index;
        c->cells[3] = json_str(doc, "kernel");
        c->cells[4] = c->staged;
        c->cells[5] = c->op;
        c->cells[6] = c->boot;
}

static int state_table_add(struct table *t, const char *host, const json_t *doc)
{
        struct state_cells c;

        state_cells_fill(&c, host, doc);
        return table_add(t, c.cells);
}

/* ---- one request to one host ------------------------------------------------ */

/* Resolve host, send the request, check the status, parse the answer (cli.h). */
int host_call(const struct cli *cli, const char *host, const char *method, const char *path,
              const char *body, long ok1, long ok2, json_t **ret_doc, char **ret_url)
{
        _cleanup_free_ char *base = NULL, *url = NULL;
        struct http_resp resp;
        char err[512];
        int r;

        r = target_resolve(cli, host, &base);
        if (r)
                return r;
        url = url_join(base, path);
        if (!url) {
                fputs("luofleetctl: out of memory\n", stderr);
                return EXIT_FAILED;
        }
        /* If-Match is a precondition of the mutating requests only */
        r = http_request(cli, method, url, body, strcmp(method, "GET") ? cli->if_match : NULL, 0,
                         &resp, err, sizeof(err));
        if (r < 0) {
                fprintf(stderr, "luofleetctl: %s: %s\n", host, err);
                return http_fail_exit(r);
        }
        if (resp.status != ok1 && resp.status != ok2) {
                http_report_problem(host, &resp);
                http_resp_clear(&resp);
                return EXIT_FAILED;
        }
        *ret_doc = http_json(host, &resp);
        http_resp_clear(&resp);
        if (!*ret_doc)
                return EXIT_FAILED;
        if (ret_url)
                *ret_url = TAKE_PTR(base);
        return EXIT_OK;
}

/* Every HOST well-formed (and names resolvable) before anything is sent (cli.h). */
int host_check(const struct cli *cli, const char *cmd, int argc, char **argv, int first)
{
        if (first >= argc) {
                cli_usage_error(cmd, "which host? (HOST...)");
                return EXIT_USAGE;
        }
        for (int i = first; i < argc; i++) {
                char *url = NULL;
                int r = target_parse(argv[i], &url);
                free(url);
                if (r == -ENOMEM)
                        return EXIT_FAILED;
                if (r == -EINVAL) {
                        cli_usage_error(cmd,
                                        "'%s' is not a host: expected http(s)://ADDR:PORT, "
                                        "ADDR:PORT or a host name",
                                        argv[i]);
                        return EXIT_USAGE;
                }
                if (r == -ENOENT && !cli->controller) {
                        cli_usage_error(cmd,
                                        "'%s': a host name needs a controller to resolve it "
                                        "(--controller, LUOFLEET_CONTROLLER); or give "
                                        "ADDR:PORT or a URL",
                                        argv[i]);
                        return EXIT_USAGE;
                }
        }
        return 0;
}

/* ---- state ------------------------------------------------------------------- */

static const char state_usage[] =
        "Usage: luofleetctl state HOST... [--watch] [--output=table|json]\n"
        "\n"
        "One row per host: HOST, STATE, INDEX, KERNEL, STAGED (the staged kernel's\n"
        "release or file), OPERATION (action/status of the current or last one),\n"
        "BOOT (the boot id's first 8 digits). --output=json prints each agent's\n"
        "state document, one per line.\n"
        "\n"
        "--watch: long-poll every host and print a line per change (json: the new\n"
        "document) until interrupted (SIGINT/SIGTERM: exit 0). Unreachable hosts are\n"
        "reported once and retried every second.\n"
        "\n"
        "HOST: http(s)://ADDR:PORT; ADDR:PORT (http on loopback, https elsewhere); or a\n"
        "name the controller resolves (GET /v1/hosts/NAME). Common options: luofleetctl\n"
        "--help.\n";

struct watch_ctx {
        const struct cli *cli;
        char **names;
};

static void watch_on_doc(size_t i, json_t *doc, void *userdata)
{
        struct watch_ctx *w = userdata;
        struct state_cells c;
        char ts[RFC3339_MAX];

        if (w->cli->output == OUTPUT_JSON) {
                print_json_line(doc);
                return;
        }
        state_cells_fill(&c, w->names[i], doc);
        format_rfc3339_ms(now_real_usec(), ts);
        printf("%s %s %s index=%s kernel=%s staged=%s operation=%s boot=%s\n", ts, c.cells[0],
               c.cells[1] ?: "-", c.cells[2], c.cells[3] ?: "-", *c.cells[4] ? c.cells[4] : "-",
               *c.cells[5] ? c.cells[5] : "-", c.cells[6]);
        fflush(stdout);
}

static void watch_on_err(size_t i, long status, const char *err, void *userdata)
{
        struct watch_ctx *w = userdata;

        if (status) {
                struct http_resp r = { .status = status, .body = (char *)err, .len = strlen(err) };
                http_report_problem(w->names[i], &r);
        } else
                fprintf(stderr, "luofleetctl: %s: %s (retrying)\n", w->names[i], err);
}

static int state_watch(struct cli *cli, int n, char **hosts)
{
        _cleanup_free_ char **urls = calloc((size_t)n, sizeof(char *));
        struct watch_ctx w = { cli, hosts };
        int r = EXIT_OK;

        if (!urls) {
                fputs("luofleetctl: out of memory\n", stderr);
                return EXIT_FAILED;
        }
        for (int i = 0; i < n && r == EXIT_OK; i++)
                r = target_resolve(cli, hosts[i], &urls[i]);
        if (r == EXIT_OK) {
                cli_catch_signals();
                if (http_watch_states(cli, (size_t)n, (const char *const *)urls, watch_on_doc,
                                      watch_on_err, &w) < 0) {
                        fputs("luofleetctl: out of memory\n", stderr);
                        r = EXIT_FAILED;
                }
        }
        for (int i = 0; i < n; i++)
                free(urls[i]);
        return r;
}

static int state_opt(int c, const char *arg, void *userdata)
{
        *(bool *)userdata = true;
        return 0;
}

int cmd_state(struct cli *cli, int argc, char **argv)
{
        static const struct option opts[] = { { "watch", no_argument, NULL, 'w' }, {} };
        struct outcome o = { 0 };
        struct table *t = NULL;
        bool watch = false;
        int first, r;

        r = cli_parse(cli, argc, argv, NULL, opts, state_opt, &watch, state_usage, &first);
        if (r)
                return r < 0 ? EXIT_OK : r;
        r = host_check(cli, "state", argc, argv, first);
        if (r)
                return r;
        if (watch)
                return state_watch(cli, argc - first, argv + first);
        if (cli->output == OUTPUT_TABLE) {
                t = table_new(STATE_COLS, state_headers);
                if (!t) {
                        fputs("luofleetctl: out of memory\n", stderr);
                        return EXIT_FAILED;
                }
        }
        for (int i = first; i < argc; i++) {
                json_t *doc = NULL;
                r = host_call(cli, argv[i], "GET", "/v1/state", NULL, 200, 200, &doc, NULL);
                outcome_add(&o, r);
                if (r)
                        continue;
                if (t)
                        state_table_add(t, argv[i], doc);
                else
                        print_json_line(doc);
                json_decref(doc);
        }
        if (t && o.ok > 0)
                table_print(t, stdout);
        table_free(t);
        return outcome_exit(&o);
}

/* ---- stage ------------------------------------------------------------------- */

static const char stage_usage[] =
        "Usage: luofleetctl stage HOST... --kernel=URL|PATH [--kernel-sha256=HEX]\n"
        "                         [--initrd=URL|PATH [--initrd-sha256=HEX]] [--cmdline=STRING]\n"
        "                         [--signature=FILE] [--release=RELEASE]\n"
        "                         [--operation-id=ID] [--reason=TEXT] [--if-match=ETAG]\n"
        "\n"
        "Stage the kernel for the next live-update reboot (PUT /v1/kernel). A URL\n"
        "(https://, file://, http:// where the agent allows it) is downloaded by the\n"
        "agent; a PATH is a file on the host (made absolute when it names a file here).\n"
        "Without --kernel-sha256 (--initrd-sha256) the SHA-256 of the local file PATH is\n"
        "computed; a URL or a file not readable here needs the digest. --signature: a\n"
        "file with the output of `luofleetctl sign` ({\"key_id\", \"ed25519\"}).\n"
        "--release: the release the new kernel must report after the reboot.\n";

int cli_stage_opt(int c, const char *arg, void *userdata)
{
        struct stage_args *a = userdata;

        switch (c) {
        case 'k':
                a->kernel = arg;
                break;
        case 'K':
                a->kernel_sha = arg;
                break;
        case 'i':
                a->initrd = arg;
                break;
        case 'I':
                a->initrd_sha = arg;
                break;
        case 'c':
                a->cmdline = arg;
                break;
        case 's':
                a->signature = arg;
                break;
        case 'r':
                a->release = arg;
                break;
        }
        return 0;
}

static int file_sha256(const char *path, char out[65])
{
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        unsigned char buf[65536], md[EVP_MAX_MD_SIZE];
        unsigned mdlen = 0;
        EVP_MD_CTX *ctx;
        ssize_t n;
        int r = 0;

        if (fd < 0)
                return negative_errno();
        ctx = EVP_MD_CTX_new();
        if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
                EVP_MD_CTX_free(ctx);
                return -ENOMEM;
        }
        while ((n = read(fd, buf, sizeof(buf))) != 0) {
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        r = negative_errno();
                        break;
                }
                EVP_DigestUpdate(ctx, buf, (size_t)n);
        }
        if (r == 0 && EVP_DigestFinal_ex(ctx, md, &mdlen) != 1)
                r = -EIO;
        EVP_MD_CTX_free(ctx);
        if (r == 0)
                hex_encode(md, mdlen, out);
        return r;
}

static bool sha_valid(const char *s)
{
        size_t n = 0;

        for (; s[n]; n++)
                if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f') ||
                      (s[n] >= 'A' && s[n] <= 'F')))
                        return false;
        return n == 64;
}

/* {"url"|"path", "sha256"} for one file; NULL after a usage message (cli.h). */
json_t *cli_stage_file(const char *cmd, const char *what, const char *loc, const char *sha)
{
        char digest[65], abs[PATH_MAX];
        struct stat st;
        bool url = strstr(loc, "://") != NULL;
        bool local = !url && stat(loc, &st) == 0 && S_ISREG(st.st_mode) && access(loc, R_OK) == 0;
        int r;

        if (*loc == 0) {
                cli_usage_error(cmd, "--%s is empty", what);
                return NULL;
        }
        if (sha && !sha_valid(sha)) {
                cli_usage_error(cmd, "--%s-sha256: expected 64 hex digits", what);
                return NULL;
        }
        if (!sha && !url && stat(loc, &st) < 0) {
                /* the likely mistake first: a typo, not a file that is on the host only */
                cli_usage_error(cmd,
                                "--%s=%s: %s (a file that is on the host only needs "
                                "--%s-sha256)",
                                what, loc, strerror(errno), what);
                return NULL;
        }
        if (!sha && !local) {
                cli_usage_error(cmd,
                                "--%s-sha256 is needed: %s is %s, so its digest cannot be "
                                "computed here",
                                what, loc, url ? "a URL" : "not a readable file on this machine");
                return NULL;
        }
        if (!sha) {
                r = file_sha256(loc, digest);
                if (r < 0) {
                        fprintf(stderr, "luofleetctl %s: %s: %s\n", cmd, loc, strerror(-r));
                        return NULL;
                }
                sha = digest;
        }
        if (!url && *loc != '/') {
                if (!local || !realpath(loc, abs)) {
                        cli_usage_error(cmd, "--%s: a PATH on the host must be absolute", what);
                        return NULL;
                }
                loc = abs;
        }
        return json_pack("{s:s, s:s}", url ? "url" : "path", loc, "sha256", sha);
}

json_t *cli_read_json_file(const char *path, const char *what)
{
        json_error_t e;
        json_t *j = strcmp(path, "-") == 0 ? json_loadf(stdin, JSON_REJECT_DUPLICATES, &e)
                                           : json_load_file(path, JSON_REJECT_DUPLICATES, &e);

        if (!j)
                fprintf(stderr, "luofleetctl: %s %s: %s (line %d)\n", what, path, e.text, e.line);
        return j;
}

static int add_common_body(const struct cli *cli, json_t *body)
{
        if (cli->operation_id &&
            json_object_set_new(body, "operation_id", json_string(cli->operation_id)) < 0)
                return -ENOMEM;
        if (cli->reason && json_object_set_new(body, "reason", json_string(cli->reason)) < 0)
                return -ENOMEM;
        return 0;
}

static int send_to_hosts(struct cli *cli, int argc, char **argv, int first, const char *method,
                         const char *path, json_t *body, long ok1, long ok2)
{
        _cleanup_free_ char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
        struct outcome o = { 0 };
        struct table *t = NULL;
        int r;

        if (body && !text) {
                fputs("luofleetctl: out of memory\n", stderr);
                return EXIT_FAILED;
        }
        if (cli->output == OUTPUT_TABLE && !(t = table_new(STATE_COLS, state_headers))) {
                fputs("luofleetctl: out of memory\n", stderr);
                return EXIT_FAILED;
        }
        for (int i = first; i < argc; i++) {
                json_t *doc = NULL;
                r = host_call(cli, argv[i], method, path, text, ok1, ok2, &doc, NULL);
                outcome_add(&o, r);
                if (r)
                        continue;
                if (t)
                        state_table_add(t, argv[i], doc);
                else
                        print_json_line(doc);
                json_decref(doc);
        }
        if (t && o.ok > 0)
                table_print(t, stdout);
        table_free(t);
        return outcome_exit(&o);
}

json_t *cli_stage_body(const char *cmd, const struct stage_args *a)
{
        json_t *body = json_object(), *f;

        if (!body)
                return NULL;
        f = cli_stage_file(cmd, "kernel", a->kernel, a->kernel_sha);
        if (!f)
                goto fail;
        json_object_set_new(body, "kernel", f);
        if (a->initrd) {
                f = cli_stage_file(cmd, "initrd", a->initrd, a->initrd_sha);
                if (!f)
                        goto fail;
                json_object_set_new(body, "initrd", f);
        }
        if (a->cmdline)
                json_object_set_new(body, "cmdline", json_string(a->cmdline));
        if (a->release)
                json_object_set_new(body, "release", json_string(a->release));
        if (a->signature) {
                json_t *sig = cli_read_json_file(a->signature, "signature file");
                if (!json_is_object(sig) || !json_is_string(json_object_get(sig, "key_id")) ||
                    !json_is_string(json_object_get(sig, "ed25519"))) {
                        if (sig)
                                fprintf(stderr,
                                        "luofleetctl: signature file %s: expected the output of "
                                        "luofleetctl sign ({\"key_id\", \"ed25519\"})\n",
                                        a->signature);
                        json_decref(sig);
                        goto fail;
                }
                json_object_set_new(body, "signature", sig);
        }
        return body;
fail:
        json_decref(body);
        return NULL;
}

int cmd_stage(struct cli *cli, int argc, char **argv)
{
        static const struct option opts[] = {
                { "kernel", required_argument, NULL, 'k' },
                { "kernel-sha256", required_argument, NULL, 'K' },
                { "initrd", required_argument, NULL, 'i' },
                { "initrd-sha256", required_argument, NULL, 'I' },
                { "cmdline", required_argument, NULL, 'c' },
                { "signature", required_argument, NULL, 's' },
                { "release", required_argument, NULL, 'r' },
                {},
        };
        struct stage_args a = { 0 };
        json_t *body;
        int first, r;

        r = cli_parse(cli, argc, argv, NULL, opts, cli_stage_opt, &a, stage_usage, &first);
        if (r)
                return r < 0 ? EXIT_OK : r;
        r = host_check(cli, "stage", argc, argv, first);
        if (r)
                return r;
        if (!a.kernel) {
                cli_usage_error("stage", "--kernel=URL|PATH is required");
                return EXIT_USAGE;
        }
        if (!a.initrd && a.initrd_sha) {
                cli_usage_error("stage", "--initrd-sha256 without --initrd");
                return EXIT_USAGE;
        }
        body = cli_stage_body("stage", &a);
        if (!body)
                return EXIT_USAGE;
        if (add_common_body(cli, body) < 0) {
                json_decref(body);
                return EXIT_FAILED;
        }
        /* 200: staged from local files; 202: the agent downloads in the background */
        r = send_to_hosts(cli, argc, argv, first, "PUT", "/v1/kernel", body, 200, 202);
        json_decref(body);
        return r;
}

/* ---- prepare, cancel, reboot, finish, rollback ---------------------------------- */

static const char action_usage[] =
        "Usage: luofleetctl prepare HOST... [--lease=SECONDS]\n"
        "       luofleetctl cancel HOST...\n"
        "       luofleetctl reboot HOST... [--wait] [--wait-timeout=DURATION]\n"
        "       luofleetctl finish HOST... [--force]\n"
        "       luofleetctl rollback HOST... [--wait] [--wait-timeout=DURATION]\n"
        "   with [--operation-id=ID] [--reason=TEXT] [--if-match=ETAG]\n"
        "\n"
        "POST /v1/ACTION to every HOST, then one state row per host (json: the\n"
        "answered state documents). --operation-id makes a retry act once (the same\n"
        "id is sent to every host); --if-match acts only if the state document's index\n"
        "is still the one given (412 otherwise). prepare --lease: a dead-man lease of\n"
        "SECONDS. finish --force: past a failing post-update hook.\n"
        "\n"
        "reboot/rollback --wait: follow each host through the kexec until it answers\n"
        "with a new boot id, then print the blackout (the agent's figure, and how long\n"
        "it did not answer here); at most --wait-timeout (default 10m) per host.\n";

struct action_args {
        const char *action;
        const char *lease;
        bool force, wait;
        uint64_t wait_timeout_ms;
        bool bad;
};

static int action_opt(int c, const char *arg, void *userdata)
{
        struct action_args *a = userdata;
        const char *needs = NULL;

        switch (c) {
        case 'l':
                a->lease = arg;
                needs = "prepare";
                break;
        case 'f':
                a->force = true;
                needs = "finish";
                break;
        case 'w':
                a->wait = true;
                break;
        case 'W':
                if (parse_duration_ms(arg, 24 * 3600 * 1000ull, &a->wait_timeout_ms) < 0 ||
                    !a->wait_timeout_ms) {
                        cli_usage_error(a->action, "--wait-timeout: expected a duration");
                        return EXIT_USAGE;
                }
                break;
        }
        if (c == 'w' || c == 'W') {
                if (strcmp(a->action, "reboot") != 0 && strcmp(a->action, "rollback") != 0)
                        needs = "reboot or rollback";
        }
        if (needs && strstr(needs, a->action) == NULL) {
                cli_usage_error(a->action, "this option is for %s only", needs);
                return EXIT_USAGE;
        }
        return 0;
}

/*
 * Follow one host from the 202 answer through the kexec to its new boot.
 * Returns an exit code and prints the outcome.
 */
int cli_reboot_wait(struct cli *cli, const char *host, const char *base, json_t *accepted,
                    uint64_t limit_ms)
{
        const char *old_boot = json_str(accepted, "boot_id");
        json_int_t index = json_integer_value(json_object_get(accepted, "index"));
        uint64_t start = now_mono_usec() / 1000, down_since = 0, down_ms = 0;
        char err[512], path[96];

        while (!cli_interrupted) {
                _cleanup_free_ char *url = NULL;
                struct http_resp resp;
                json_t *doc;
                uint64_t now = now_mono_usec() / 1000;
                int r;

                if (now - start > limit_ms) {
                        fprintf(stderr, "luofleetctl: %s: no new boot within %llus\n", host,
                                (unsigned long long)(limit_ms / 1000));
                        return EXIT_FAILED;
                }
                snprintf(path, sizeof(path), "/v1/state?index=%lld&wait=5s", (long long)index);
                url = url_join(base, path);
                if (!url)
                        return EXIT_FAILED;
                r = http_request(cli, "GET", url, NULL, NULL, 5000 + MIN(cli->timeout_ms, 5000),
                                 &resp, err, sizeof(err));
                if (r < 0 || resp.status != 200) {
                        if (r == 0)
                                http_resp_clear(&resp);
                        if (!down_since)
                                down_since = now;
                        usleep(50 * 1000);
                        continue;
                }
                if (down_since) {
                        down_ms += now_mono_usec() / 1000 - down_since;
                        down_since = 0;
                }
                doc = json_loadb(resp.body, resp.len, 0, NULL);
                http_resp_clear(&resp);
                if (!doc)
                        continue;
                index = json_integer_value(json_object_get(doc, "index"));
                const char *boot = json_str(doc, "boot_id");
                json_t *op = json_object_get(doc, "operation");
                const char *st = json_str(op, "status");
                if (boot && old_boot && strcmp(boot, old_boot) != 0) {
                        json_t *lu = json_object_get(doc, "last_update");
                        char b1[32];
                        if (cli->output == OUTPUT_JSON)
                                print_json_line(doc);
                        else
                                printf("%s: rebooted into %s (boot %.8s -> %.8s): blackout %s "
                                       "(agent), no answer here for %llums; state %s\n",
                                       host, json_str(doc, "kernel") ?: "?", old_boot, boot,
                                       fmt_ms(json_object_get(lu, "blackout_ms"), b1, sizeof(b1)),
                                       (unsigned long long)down_ms, json_str(doc, "state") ?: "?");
                        json_decref(doc);
                        return EXIT_OK;
                }
                if (st && strcmp(st, "failed") == 0) {
                        json_t *e = json_object_get(op, "error");
                        fprintf(stderr, "luofleetctl: %s: the %s failed: %s: %s (state %s)\n", host,
                                json_str(op, "action") ?: "reboot", json_str(e, "code") ?: "error",
                                json_str(e, "detail") ?: "", json_str(doc, "state") ?: "?");
                        json_decref(doc);
                        return EXIT_FAILED;
                }
                json_decref(doc);
        }
        fprintf(stderr, "luofleetctl: %s: interrupted\n", host);
        return EXIT_FAILED;
}

int cmd_action(struct cli *cli, const char *action, int argc, char **argv)
{
        static const struct option opts[] = {
                { "lease", required_argument, NULL, 'l' },
                { "force", no_argument, NULL, 'f' },
                { "wait", no_argument, NULL, 'w' },
                { "wait-timeout", required_argument, NULL, 'W' },
                {},
        };
        struct action_args a = { .action = action, .wait_timeout_ms = 600000 };
        bool reboots = strcmp(action, "reboot") == 0 || strcmp(action, "rollback") == 0;
        _cleanup_free_ char *text = NULL;
        char path[32];
        struct outcome o = { 0 };
        json_t *body;
        json_t **accepted;
        char **bases;
        int first, r;

        r = cli_parse(cli, argc, argv, NULL, opts, action_opt, &a, action_usage, &first);
        if (r)
                return r < 0 ? EXIT_OK : r;
        r = host_check(cli, action, argc, argv, first);
        if (r)
                return r;
        body = json_object();
        if (!body || add_common_body(cli, body) < 0) {
                json_decref(body);
                return EXIT_FAILED;
        }
        if (a.lease) {
                uint64_t v;
                if (parse_u64(a.lease, 86400, &v) < 0) {
                        cli_usage_error(action, "--lease: expected seconds (0..86400)");
                        json_decref(body);
                        return EXIT_USAGE;
                }
                json_object_set_new(body, "lease_seconds", json_integer((json_int_t)v));
        }
        if (a.force)
                json_object_set_new(body, "force", json_true());
        text = json_dumps(body, JSON_COMPACT);
        json_decref(body);
        snprintf(path, sizeof(path), "/v1/%s", action);
        if (!text)
                return EXIT_FAILED;
        if (!a.wait) {
                json_t *b = json_loads(text, 0, NULL);
                r = send_to_hosts(cli, argc, argv, first, "POST", path, b, reboots ? 202 : 200,
                                  reboots ? 202 : 200);
                json_decref(b);
                return r;
        }

        /* reboot/rollback --wait: send every request first, then follow each host */
        accepted = calloc((size_t)argc, sizeof(json_t *));
        bases = calloc((size_t)argc, sizeof(char *));
        if (!accepted || !bases) {
                free(accepted);
                free(bases);
                return EXIT_FAILED;
        }
        cli_catch_signals();
        for (int i = first; i < argc; i++) {
                r = host_call(cli, argv[i], "POST", path, text, 202, 202, &accepted[i], &bases[i]);
                if (r)
                        outcome_add(&o, r);
        }
        for (int i = first; i < argc; i++) {
                if (!accepted[i])
                        continue;
                r = cli_reboot_wait(cli, argv[i], bases[i], accepted[i], a.wait_timeout_ms);
                outcome_add(&o, r);
                json_decref(accepted[i]);
                free(bases[i]);
        }
        free(accepted);
        free(bases);
        return outcome_exit(&o);
}

/* ---- history ----------------------------------------------------------------- */

static const char history_usage[] =
        "Usage: luofleetctl history HOST [--kind=KIND[,KIND...]] [--limit=N]\n"
        "\n"
        "The newest records of the agent's journal (GET /v1/history), oldest first:\n"
        "INDEX, TIME, KIND, STATE, DETAIL. KIND: transition, operation, staging, reboot,\n"
        "start, snapshot, hook, lease, session, or audit (the audit trail). --limit: how\n"
        "many (default: the agent's). --output=json prints the page document.\n";

struct history_args {
        const char *kind, *limit;
};

static int history_opt(int c, const char *arg, void *userdata)
{
        struct history_args *a = userdata;

        if (c == 'k')
                a->kind = arg;
        else if (c == 'l')
                a->limit = arg;
        return 0;
}

static void history_detail(const json_t *rec, char *buf, size_t size)
{
        const char *kind = json_str(rec, "kind") ?: "";
        const json_t *op = json_object_get(rec, "operation");
        char b[32];

        buf[0] = 0;
        if (strcmp(kind, "transition") == 0)
                snprintf(buf, size, "%s -> %s (%s%s%s)", json_str(rec, "from") ?: "?",
                         json_str(rec, "to") ?: "?", json_str(rec, "cause") ?: "?",
                         json_str(rec, "operation_id") ? " " : "",
                         json_str(rec, "operation_id") ?: "");
        else if (strcmp(kind, "reboot") == 0)
                snprintf(buf, size, "boot %.8s -> %.8s, blackout %s",
                         json_str(rec, "from_boot_id") ?: "?", json_str(rec, "to_boot_id") ?: "?",
                         fmt_ms(json_object_get(rec, "blackout_ms"), b, sizeof(b)));
        else if (strcmp(kind, "session") == 0)
                session_record_detail(rec, buf, size);
        else if (json_is_object(op)) {
                const char *code = json_str(json_object_get(op, "error"), "code");
                snprintf(buf, size, "%s %s %s%s%s", json_str(op, "action") ?: "?",
                         json_str(op, "status") ?: "?", json_str(op, "id") ?: "", code ? ": " : "",
                         code ? code : "");
        } else if (json_str(rec, "operation_id"))
                snprintf(buf, size, "%s", json_str(rec, "operation_id"));
}

int cmd_history(struct cli *cli, int argc, char **argv)
{
        static const struct option opts[] = {
                { "kind", required_argument, NULL, 'k' },
                { "limit", required_argument, NULL, 'l' },
                {},
        };
        static const char *const headers[] = { "INDEX", "TIME", "KIND", "STATE", "DETAIL" };
        struct history_args a = { 0 };
        _cleanup_free_ char *kind = NULL, *path = NULL;
        json_t *doc = NULL, *rec;
        struct table *t;
        uint64_t limit = 0;
        size_t i;
        int first, r;

        r = cli_parse(cli, argc, argv, NULL, opts, history_opt, &a, history_usage, &first);
        if (r)
                return r < 0 ? EXIT_OK : r;
        if (argc - first != 1) {
                cli_usage_error("history", "expected exactly one HOST");
                return EXIT_USAGE;
        }
        r = host_check(cli, "history", argc, argv, first);
        if (r)
                return r;
        if (a.limit && (parse_u64(a.limit, 100000, &limit) < 0 || limit == 0)) {
                cli_usage_error("history", "--limit: expected a positive number");
                return EXIT_USAGE;
        }
        if (a.kind && !(kind = url_escape(a.kind)))
                return EXIT_FAILED;
        if (kind && a.limit)
                r = asprintf(&path, "/v1/history?kind=%s&limit=%llu", kind,
                             (unsigned long long)limit);
        else if (kind)
                r = asprintf(&path, "/v1/history?kind=%s", kind);
        else if (a.limit)
                r = asprintf(&path, "/v1/history?limit=%llu", (unsigned long long)limit);
        else
                r = asprintf(&path, "/v1/history");
        if (r < 0)
                return EXIT_FAILED;
        r = host_call(cli, argv[first], "GET", path, NULL, 200, 200, &doc, NULL);
        if (r)
                return r;
        if (cli->output == OUTPUT_JSON) {
                print_json_line(doc);
                json_decref(doc);
                return EXIT_OK;
        }
        t = table_new(ELEMENTSOF(headers), headers);
        json_array_foreach (json_object_get(doc, "records"), i, rec) {
                char idx[24], detail[512];
                const char *cells[5];
                snprintf(idx, sizeof(idx), "%lld",
                         (long long)json_integer_value(json_object_get(rec, "index")));
                history_detail(rec, detail, sizeof(detail));
                cells[0] = idx;
                cells[1] = json_str(rec, "time");
                cells[2] = json_str(rec, "kind");
                cells[3] = json_str(rec, "state");
                cells[4] = detail;
                if (t)
                        table_add(t, cells);
        }
        if (t)
                table_print(t, stdout);
        table_free(t);
        json_decref(doc);
        return EXIT_OK;
}
