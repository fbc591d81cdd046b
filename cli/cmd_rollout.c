/*
 * cmd_rollout.c: the commands that talk to the controller (luofleet-rollout,
 * rollout/controller.h): hosts, rollout plan|create|status|watch|pause|
 * resume|abort. `rollout watch` follows the SSE stream: plain lines, or a
 * live display redrawn in place with ANSI sequences when stdout is a
 * terminal. Single-threaded.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

#include "luofleet/macro.h"
#include "luofleet/util.h"

static int need_controller(const struct cli *cli, const char *cmd)
{
        if (cli->controller)
                return 0;
        cli_usage_error(cmd, "no controller configured (--controller=URL, LUOFLEET_CONTROLLER, or "
                             "\"controller =\" in the config file)");
        return EXIT_USAGE;
}

/*
 * One request to the controller; ok: the accepted statuses (0-terminated).
 * Logs failures with the controller's URL. Returns an exit code, *ret_doc and
 * *ret_status on success.
 */
static int ctl_call(const struct cli *cli, const char *method, const char *path, const char *body,
                    const long *ok, json_t **ret_doc, long *ret_status)
{
        _cleanup_free_ char *url = url_join(cli->controller, path);
        struct http_resp resp;
        char err[512];
        int r;

        if (!url) {
                fputs("luofleetctl: out of memory\n", stderr);
                return EXIT_FAILED;
        }
        r = http_request(cli, method, url, body, NULL, 0, &resp, err, sizeof(err));
        if (r < 0) {
                fprintf(stderr, "luofleetctl: %s: %s\n", cli->controller, err);
                return http_fail_exit(r);
        }
        for (; *ok; ok++)
                if (resp.status == *ok)
                        break;
        if (!*ok) {
                http_report_problem(cli->controller, &resp);
                http_resp_clear(&resp);
                return EXIT_FAILED;
        }
        *ret_doc = http_json(cli->controller, &resp);
        if (ret_status)
                *ret_status = resp.status;
        http_resp_clear(&resp);
        return *ret_doc ? EXIT_OK : EXIT_FAILED;
}

static const long ok200[] = { 200, 0 };

/* An array answer, or the array member `key` of an object answer. */
static json_t *list_of(json_t *doc, const char *key)
{
        if (json_is_array(doc))
                return doc;
        return json_object_get(doc, key);
}

/* ---- hosts ------------------------------------------------------------------- */

static const char hosts_usage[] =
        "Usage: luofleetctl hosts [--selector=KEY=VALUE]... [--output=table|json]\n"
        "\n"
        "The controller's fleet view (GET /v1/hosts): NAME, URL, STATE, KERNEL,\n"
        "BLACKOUT (of the host's last update), REACHABLE, ROLLOUT/PHASE (the newest\n"
        "rollout that includes the host, and the host's phase in it). --selector keeps\n"
        "the hosts whose labels match every KEY=VALUE given.\n";

struct selector {
        char buf[2048];
        size_t len;
        bool bad;
};

static int selector_opt(int c, const char *arg, void *userdata)
{
        struct selector *s = userdata;
        const char *eq = strchr(arg, '=');
        int n;

        if (!eq || eq == arg || strchr(arg, ',')) {
                cli_usage_error(NULL, "--selector '%s': expected KEY=VALUE", arg);
                return EXIT_USAGE;
        }
        n = snprintf(s->buf + s->len, sizeof(s->buf) - s->len, "%s%s", s->len ? "," : "", arg);
        if (n < 0 || (size_t)n >= sizeof(s->buf) - s->len) {
                cli_usage_error(NULL, "--selector: too long");
                return EXIT_USAGE;
        }
        s->len += (size_t)n;
        return 0;
}

static const char *host_reachable(const json_t *h)
{
        json_t *r = json_object_get(h, "reachable");
        return json_is_true(r) ? "yes" : json_is_false(r) ? "no" : NULL;
}

int cmd_hosts(struct cli *cli, int argc, char **argv)
{
        static const struct option opts[] = { { "selector", required_argument, NULL, 's' }, {} };
        static const char *const headers[] = { "NAME",     "URL",       "STATE",        "KERNEL",
                                               "BLACKOUT", "REACHABLE", "ROLLOUT/PHASE" };
        _cleanup_free_ char *esc = NULL, *path = NULL;
        struct selector sel = { 0 };
        json_t *doc = NULL, *h;
        struct table *t;
        size_t i;
        int first, r;

        r = cli_parse(cli, argc, argv, NULL, opts, selector_opt, &sel, hosts_usage, &first);
        if (r)
                return r < 0 ? EXIT_OK : r;
        if (first != argc) {
                cli_usage_error("hosts", "unexpected argument '%s'", argv[first]);
                return EXIT_USAGE;
        }
        r = need_controller(cli, "hosts");
        if (r)
                return r;
        if (sel.len && !(esc = url_escape(sel.buf)))
                return EXIT_FAILED;
        if (asprintf(&path, "/v1/hosts%s%s", esc ? "?selector=" : "", esc ? esc : "") < 0)
                return EXIT_FAILED;
        r = ctl_call(cli, "GET", path, NULL, ok200, &doc, NULL);
        if (r)
                return r;
        if (cli->output == OUTPUT_JSON) {
                print_json_line(doc);
                json_decref(doc);
                return EXIT_OK;
        }
        t = table_new(ELEMENTSOF(headers), headers);
        json_array_foreach (list_of(doc, "hosts"), i, h) {
                char bo[32], rp[160];
                const char *ro = json_str(h, "rollout"), *ph = json_str(h, "phase");
                const char *cells[7] = { json_str(h, "name"),
                                         json_str(h, "url"),
                                         json_str(h, "state"),
                                         json_str(h, "kernel"),
                                         fmt_ms(json_object_get(h, "blackout_ms"), bo, sizeof(bo)),
                                         host_reachable(h),
                                         rp };
                if (ro)
                        snprintf(rp, sizeof(rp), "%s/%s", ro, ph ? ph : "-");
                else
                        rp[0] = 0;
                if (t)
                        table_add(t, cells);
        }
        if (t)
                table_print(t, stdout);
        table_free(t);
        json_decref(doc);
        return EXIT_OK;
}

/* ---- rollout plan / create ---------------------------------------------------- */

static const char spec_usage[] =
        "Usage: luofleetctl rollout plan|create [-f FILE|-] [SPEC OPTIONS]\n"
        "       luofleetctl rollout retry ID [SPEC OPTIONS]\n"
        "\n"
        "The rollout spec (rollout/controller.h, api/rollout.yaml) comes from FILE (JSON;\n"
        "'-' reads standard input) and/or these options; an option overrides the\n"
        "file's member:\n"
        "  --kernel-url=URL|PATH --kernel-sha256=HEX   target.kernel\n"
        "  --initrd-url=URL|PATH --initrd-sha256=HEX   target.initrd\n"
        "  --cmdline=STRING --release=RELEASE          target.cmdline, target.release\n"
        "  --signature=FILE                            target.signature (luofleetctl sign)\n"
        "  --selector=KEY=VALUE (repeatable)           selector.KEY\n"
        "  --hosts=NAME,NAME...                        hosts\n"
        "  --canary=N|N% --batch=N|N%                  strategy.canary, strategy.batch\n"
        "  --max-unavailable=N|N% --max-failures=N|N%  strategy.max_unavailable, ...\n"
        "  --soak=DURATION --mode=rolling|two-phase    strategy.soak, strategy.mode\n"
        "  --lease=SECONDS                             lease_seconds\n"
        "  --window=\"[DAYS] HH:MM-HH:MM [ZONE]\"        windows (repeatable; the options\n"
        "                                              replace the file's list), e.g.\n"
        "                                              \"mon-fri 02:00-05:00 Europe/Berlin\"\n"
        "  --auto-rollback                             auto_rollback: true\n"
        "  --force                                     force: true (update hosts that run the\n"
        "                                              target release already, too)\n"
        "  --only-failed-of=ID                         only_failed_of: the hosts rollout ID\n"
        "                                              did not update (failed, cancelled,\n"
        "                                              skipped)\n"
        "  --id=ID                                     id\n"
        "\n"
        "plan: ask the controller for the plan (dry_run) and print the waves, the\n"
        "skipped hosts, the hosts already on the target release (left alone unless\n"
        "--force) and the expected duration. create: create the rollout and print its\n"
        "id. retry: create a rollout with rollout ID's spec for the hosts it did not\n"
        "update (its hosts list and id dropped, only_failed_of: ID), the options over it.\n"
        "--output=json prints the controller's Plan or Rollout document.\n";

enum {
        SP_KERNEL_URL = 0x200,
        SP_KERNEL_SHA,
        SP_INITRD_URL,
        SP_INITRD_SHA,
        SP_CMDLINE,
        SP_RELEASE,
        SP_SIGNATURE,
        SP_SELECTOR,
        SP_HOSTS,
        SP_CANARY,
        SP_BATCH,
        SP_MAX_UNAVAILABLE,
        SP_MAX_FAILURES,
        SP_SOAK,
        SP_MODE,
        SP_LEASE,
        SP_WINDOW,
        SP_AUTO_ROLLBACK,
        SP_FORCE,
        SP_ONLY_FAILED_OF,
        SP_ID,
};

struct spec_args {
        const char *file;
        json_t *flags;   /* the members the options set, applied over the file */
        json_t *windows; /* NULL: not given */
};

/* "url" or "path" for a --*-url value: a URL, or an absolute path on the hosts. */
static int set_location(json_t *flags, const char *what, const char *v)
{
        char p[32];

        if (!strstr(v, "://") && *v != '/') {
                cli_usage_error("rollout", "--%s-url: expected a URL or an absolute path", what);
                return EXIT_USAGE;
        }
        snprintf(p, sizeof(p), "target.%s.%s", what, strstr(v, "://") ? "url" : "path");
        spec_set(flags, p, json_string(v));
        /* the other form must go from the file's member: remembered as null */
        snprintf(p, sizeof(p), "target.%s.%s", what, strstr(v, "://") ? "path" : "url");
        spec_set(flags, p, json_null());
        return 0;
}

static int set_count(json_t *flags, const char *opt, const char *member, const char *v)
{
        json_t *c = spec_count(v);

        if (!c) {
                size_t n = strlen(v);
                uint64_t x;
                bool pct = n > 1 && v[n - 1] == '%';
                char num[24];
                /* well-formed but too large: say so, not "expected a percentage" */
                snprintf(num, sizeof(num), "%.*s", (int)(pct ? n - 1 : n), v);
                if (n && strspn(num, "0123456789") == strlen(num) && *num &&
                    (parse_u64(num, UINT64_MAX, &x) < 0 || x > (pct ? 100 : 1000000)))
                        cli_usage_error("rollout", "--%s=%s: at most %s", opt, v,
                                        pct ? "100%" : "1000000 hosts");
                else
                        cli_usage_error("rollout",
                                        "--%s=%s: expected a count (N) or a percentage (N%%)", opt,
                                        v);
                return EXIT_USAGE;
        }
        spec_set(flags, member, c);
        return 0;
}

static int spec_opt(int c, const char *arg, void *userdata)
{
        struct spec_args *a = userdata;
        char err[256];
        uint64_t v;

        switch (c) {
        case 'f':
                a->file = arg;
                return 0;
        case SP_KERNEL_URL:
                return set_location(a->flags, "kernel", arg);
        case SP_INITRD_URL:
                return set_location(a->flags, "initrd", arg);
        case SP_KERNEL_SHA:
        case SP_INITRD_SHA:
                if (strlen(arg) != 64 || strspn(arg, "0123456789abcdefABCDEF") != 64) {
                        cli_usage_error("rollout", "--%s-sha256: expected 64 hex digits",
                                        c == SP_KERNEL_SHA ? "kernel" : "initrd");
                        return EXIT_USAGE;
                }
                spec_set(a->flags,
                         c == SP_KERNEL_SHA ? "target.kernel.sha256" : "target.initrd.sha256",
                         json_string(arg));
                return 0;
        case SP_CMDLINE:
                spec_set(a->flags, "target.cmdline", json_string(arg));
                return 0;
        case SP_RELEASE:
                spec_set(a->flags, "target.release", json_string(arg));
                return 0;
        case SP_SIGNATURE: {
                json_error_t e;
                json_t *sig = json_load_file(arg, JSON_REJECT_DUPLICATES, &e);
                if (!json_is_object(sig)) {
                        fprintf(stderr, "luofleetctl: signature file %s: %s\n", arg,
                                sig ? "expected a JSON object" : e.text);
                        json_decref(sig);
                        return EXIT_USAGE;
                }
                spec_set(a->flags, "target.signature", sig);
                return 0;
        }
        case SP_SELECTOR: {
                const char *eq = strchr(arg, '=');
                char key[256];
                if (!eq || eq == arg || (size_t)(eq - arg) >= sizeof(key)) {
                        cli_usage_error("rollout", "--selector '%s': expected KEY=VALUE", arg);
                        return EXIT_USAGE;
                }
                memcpy(key, arg, (size_t)(eq - arg));
                key[eq - arg] = 0;
                json_t *s = json_object_get(a->flags, "selector");
                if (!s) {
                        s = json_object();
                        json_object_set_new(a->flags, "selector", s);
                }
                json_object_set_new(s, key, json_string(eq + 1));
                return 0;
        }
        case SP_HOSTS: {
                json_t *l = json_array();
                _cleanup_free_ char *copy = strdup(arg);
                char *save = NULL;
                if (!l || !copy) {
                        json_decref(l);
                        return EXIT_FAILED;
                }
                for (char *p = strtok_r(copy, ",", &save); p; p = strtok_r(NULL, ",", &save))
                        json_array_append_new(l, json_string(p));
                if (json_array_size(l) == 0) {
                        json_decref(l);
                        cli_usage_error("rollout", "--hosts: expected NAME,NAME...");
                        return EXIT_USAGE;
                }
                json_object_set_new(a->flags, "hosts", l);
                return 0;
        }
        case SP_CANARY:
                return set_count(a->flags, "canary", "strategy.canary", arg);
        case SP_BATCH:
                return set_count(a->flags, "batch", "strategy.batch", arg);
        case SP_MAX_UNAVAILABLE:
                return set_count(a->flags, "max-unavailable", "strategy.max_unavailable", arg);
        case SP_MAX_FAILURES:
                return set_count(a->flags, "max-failures", "strategy.max_failures", arg);
        case SP_SOAK:
                if (!spec_duration_valid(arg)) {
                        cli_usage_error("rollout",
                                        "--soak: expected a duration (250ms, 30s, 5m, 2h)");
                        return EXIT_USAGE;
                }
                spec_set(a->flags, "strategy.soak", json_string(arg));
                return 0;
        case SP_MODE:
                if (strcmp(arg, "rolling") != 0 && strcmp(arg, "two-phase") != 0) {
                        cli_usage_error("rollout", "--mode: expected rolling or two-phase");
                        return EXIT_USAGE;
                }
                spec_set(a->flags, "strategy.mode", json_string(arg));
                return 0;
        case SP_LEASE:
                if (parse_u64(arg, 86400, &v) < 0) {
                        cli_usage_error("rollout", "--lease: expected seconds (0..86400)");
                        return EXIT_USAGE;
                }
                spec_set(a->flags, "lease_seconds", json_integer((json_int_t)v));
                return 0;
        case SP_WINDOW: {
                json_t *w = spec_window(arg, err, sizeof(err));
                if (!w) {
                        cli_usage_error("rollout", "--window '%s': %s", arg, err);
                        return EXIT_USAGE;
                }
                if (!a->windows)
                        a->windows = json_array();
                json_array_append_new(a->windows, w);
                return 0;
        }
        case SP_AUTO_ROLLBACK:
                spec_set(a->flags, "auto_rollback", json_true());
                return 0;
        case SP_FORCE:
                spec_set(a->flags, "force", json_true());
                return 0;
        case SP_ONLY_FAILED_OF:
                spec_set(a->flags, "only_failed_of", json_string(arg));
                return 0;
        case SP_ID:
                spec_set(a->flags, "id", json_string(arg));
                return 0;
        }
        return EXIT_USAGE;
}

/* Apply flags over spec: objects merge member by member, a null removes, the rest replaces. */
static void merge(json_t *spec, json_t *flags)
{
        const char *k;
        json_t *v;

        json_object_foreach (flags, k, v) {
                json_t *cur = json_object_get(spec, k);
                if (json_is_null(v))
                        json_object_del(spec, k);
                else if (json_is_object(v) && json_is_object(cur))
                        merge(cur, v);
                else if (json_is_object(v)) {
                        json_t *o = json_object();
                        merge(o, v);
                        json_object_set_new(spec, k, o);
                } else
                        json_object_set(spec, k, v);
        }
}

static int rollout_get(struct cli *cli, const char *id, json_t **ret);

/* plan, create, and retry ID (retry: the spec of rollout ID, its "hosts" and "id" dropped,
 * "only_failed_of": ID, the options over it; then create). */
static int rollout_spec_cmd(struct cli *cli, bool plan, bool retry, int argc, char **argv)
{
        static const struct option opts[] = {
                { "file", required_argument, NULL, 'f' },
                { "kernel-url", required_argument, NULL, SP_KERNEL_URL },
                { "kernel-sha256", required_argument, NULL, SP_KERNEL_SHA },
                { "initrd-url", required_argument, NULL, SP_INITRD_URL },
                { "initrd-sha256", required_argument, NULL, SP_INITRD_SHA },
                { "cmdline", required_argument, NULL, SP_CMDLINE },
                { "release", required_argument, NULL, SP_RELEASE },
                { "signature", required_argument, NULL, SP_SIGNATURE },
                { "selector", required_argument, NULL, SP_SELECTOR },
                { "hosts", required_argument, NULL, SP_HOSTS },
                { "canary", required_argument, NULL, SP_CANARY },
                { "batch", required_argument, NULL, SP_BATCH },
                { "max-unavailable", required_argument, NULL, SP_MAX_UNAVAILABLE },
                { "max-failures", required_argument, NULL, SP_MAX_FAILURES },
                { "soak", required_argument, NULL, SP_SOAK },
                { "mode", required_argument, NULL, SP_MODE },
                { "lease", required_argument, NULL, SP_LEASE },
                { "window", required_argument, NULL, SP_WINDOW },
                { "auto-rollback", no_argument, NULL, SP_AUTO_ROLLBACK },
                { "force", no_argument, NULL, SP_FORCE },
                { "only-failed-of", required_argument, NULL, SP_ONLY_FAILED_OF },
                { "id", required_argument, NULL, SP_ID },
                {},
        };
        static const long ok_create[] = { 200, 201, 0 };
        struct spec_args a = { .flags = json_object() };
        _cleanup_free_ char *text = NULL;
        json_t *spec = NULL, *doc = NULL;
        long status = 0;
        int first, r;

        if (!a.flags)
                return EXIT_FAILED;
        r = cli_parse(cli, argc, argv, "f:", opts, spec_opt, &a, spec_usage, &first);
        if (r)
                goto out;
        const char *retry_id = retry && first < argc ? argv[first++] : NULL;
        if (retry && !retry_id) {
                cli_usage_error("rollout retry", "which rollout? (ID)");
                r = EXIT_USAGE;
                goto out;
        }
        if (retry && a.file) {
                cli_usage_error("rollout retry", "-f: the spec is rollout %s's", retry_id);
                r = EXIT_USAGE;
                goto out;
        }
        if (first != argc) {
                cli_usage_error("rollout", "unexpected argument '%s'", argv[first]);
                r = EXIT_USAGE;
                goto out;
        }
        r = need_controller(cli, plan    ? "rollout plan"
                                 : retry ? "rollout retry"
                                         : "rollout create");
        if (r)
                goto out;
        if (retry) {
                json_t *old = NULL;
                r = rollout_get(cli, retry_id, &old);
                if (r)
                        goto out;
                spec = json_deep_copy(json_object_get(old, "spec"));
                json_decref(old);
                if (!json_is_object(spec)) {
                        fprintf(stderr, "luofleetctl: rollout %s: no spec in the answer\n",
                                retry_id);
                        r = EXIT_FAILED;
                        goto out;
                }
                json_object_del(spec, "id");
                json_object_del(spec, "hosts");
                json_object_set_new(spec, "only_failed_of", json_string(retry_id));
        } else if (a.file) {
                json_error_t e;
                spec = strcmp(a.file, "-") == 0
                               ? json_loadf(stdin, JSON_REJECT_DUPLICATES, &e)
                               : json_load_file(a.file, JSON_REJECT_DUPLICATES, &e);
                if (!json_is_object(spec)) {
                        fprintf(stderr, "luofleetctl: spec file %s: %s\n", a.file,
                                spec ? "expected a JSON object" : e.text);
                        r = EXIT_USAGE;
                        goto out;
                }
        } else
                spec = json_object();
        merge(spec, a.flags);
        if (a.windows)
                json_object_set(spec, "windows", a.windows);
        if (!json_is_object(json_object_get(json_object_get(spec, "target"), "kernel"))) {
                cli_usage_error("rollout", "no kernel: give --kernel-url and --kernel-sha256, "
                                           "or target.kernel in -f FILE");
                r = EXIT_USAGE;
                goto out;
        }
        if (plan)
                json_object_set_new(spec, "dry_run", json_true());
        else
                json_object_del(spec, "dry_run");
        text = json_dumps(spec, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (!text) {
                r = EXIT_FAILED;
                goto out;
        }
        r = ctl_call(cli, "POST", "/v1/rollouts", text, plan ? ok200 : ok_create, &doc, &status);
        if (r)
                goto out;
        if (cli->output == OUTPUT_JSON)
                print_json_line(doc);
        else if (!plan) {
                printf("%s\n", json_str(doc, "id") ?: "?");
                if (status == 200)
                        fprintf(stderr, "luofleetctl: rollout %s exists already with this spec\n",
                                json_str(doc, "id") ?: "?");
        } else {
                static const char *const headers[] = { "WAVE", "CANARY", "HOSTS", "NAMES" };
                struct table *t = table_new(4, headers);
                json_t *w, *s;
                size_t i;
                char dur[32];
                json_array_foreach (json_object_get(doc, "waves"), i, w) {
                        char idx[24], n[24], *names = NULL;
                        json_t *hs = json_object_get(w, "hosts"), *h;
                        size_t j, len = 0;
                        FILE *f = open_memstream(&names, &len);
                        json_array_foreach (hs, j, h) {
                                if (f)
                                        fprintf(f, "%s%s", j ? "," : "", json_string_value(h));
                        }
                        if (f)
                                fclose(f);
                        /* waves are numbered from 1 on screen, from 0 in the API */
                        snprintf(idx, sizeof(idx), "%lld",
                                 (long long)json_integer_value(json_object_get(w, "index")) + 1);
                        snprintf(n, sizeof(n), "%zu", json_array_size(hs));
                        const char *cells[4] = { idx,
                                                 json_is_true(json_object_get(w, "canary")) ? "yes"
                                                                                            : "no",
                                                 n, names };
                        if (t)
                                table_add(t, cells);
                        free(names);
                }
                if (t)
                        table_print(t, stdout);
                table_free(t);
                json_array_foreach (json_object_get(doc, "skipped"), i, s)
                        printf("skipped: %s (%s)\n", json_str(s, "host") ?: "?",
                               json_str(s, "reason") ?: "?");
                json_array_foreach (json_object_get(doc, "already_current"), i, s)
                        printf("already current: %s (runs %s; --force updates it again)\n",
                               json_str(s, "host") ?: "?", json_str(s, "kernel") ?: "?");
                printf("%lld hosts in %zu waves, expected duration %s\n",
                       (long long)json_integer_value(json_object_get(doc, "hosts")),
                       json_array_size(json_object_get(doc, "waves")),
                       fmt_duration_s(
                               json_number_value(json_object_get(doc, "expected_duration_s")), dur,
                               sizeof(dur)));
        }
out:
        json_decref(doc);
        json_decref(spec);
        json_decref(a.flags);
        json_decref(a.windows);
        return r < 0 ? EXIT_OK : r;
}

/* ---- rollout status ------------------------------------------------------------ */

static const char status_usage[] =
        "Usage: luofleetctl rollout status [ID]\n"
        "\n"
        "Without ID: the rollouts (ID, STATUS, WAVE, DONE, FAILED, CREATED, REASON).\n"
        "With ID: its summary and one row per host: HOST, WAVE, PHASE, KERNEL,\n"
        "BLACKOUT, ERROR. With ID the exit status tells the rollout's status: 0\n"
        "pending, running or completed; 3 failed; 4 paused or blocked; 5 aborted.\n";

static void reason_text(const json_t *ro, char *buf, size_t size)
{
        const json_t *r = json_object_get(ro, "reason");

        if (json_is_object(r))
                snprintf(buf, size, "%s: %s", json_str(r, "code") ?: "?",
                         json_str(r, "detail") ?: "");
        else
                buf[0] = 0;
}

static void wave_text(const json_t *ro, char *buf, size_t size)
{
        const json_t *cw = json_object_get(ro, "current_wave");
        long long waves = json_integer_value(json_object_get(ro, "waves"));

        if (json_is_integer(cw))
                snprintf(buf, size, "%lld/%lld", (long long)json_integer_value(cw) + 1, waves);
        else
                snprintf(buf, size, "-/%lld", waves);
}

static int status_list(struct cli *cli)
{
        static const char *const headers[] = { "ID",     "STATUS",  "WAVE",  "DONE",
                                               "FAILED", "CREATED", "REASON" };
        json_t *doc = NULL, *ro;
        struct table *t;
        size_t i;
        int r = ctl_call(cli, "GET", "/v1/rollouts", NULL, ok200, &doc, NULL);

        if (r)
                return r;
        if (cli->output == OUTPUT_JSON) {
                print_json_line(doc);
                json_decref(doc);
                return EXIT_OK;
        }
        t = table_new(ELEMENTSOF(headers), headers);
        json_array_foreach (list_of(doc, "rollouts"), i, ro) {
                json_t *c = json_object_get(ro, "counters");
                char wave[32], done[48], failed[24], reason[320];
                wave_text(ro, wave, sizeof(wave));
                snprintf(done, sizeof(done), "%lld/%lld",
                         (long long)json_integer_value(json_object_get(c, "done")),
                         (long long)json_integer_value(json_object_get(c, "total")));
                snprintf(failed, sizeof(failed), "%lld",
                         (long long)json_integer_value(json_object_get(c, "failed")));
                reason_text(ro, reason, sizeof(reason));
                const char *cells[7] = { json_str(ro, "id"),
                                         json_str(ro, "status"),
                                         wave,
                                         done,
                                         failed,
                                         json_str(ro, "created_at"),
                                         reason };
                if (t)
                        table_add(t, cells);
        }
        if (t)
                table_print(t, stdout);
        table_free(t);
        json_decref(doc);
        return EXIT_OK;
}

static int rollout_get(struct cli *cli, const char *id, json_t **ret)
{
        _cleanup_free_ char *esc = url_escape(id), *path = NULL;

        if (!esc || asprintf(&path, "/v1/rollouts/%s", esc) < 0)
                return EXIT_FAILED;
        return ctl_call(cli, "GET", path, NULL, ok200, ret, NULL);
}

static void print_counters(const json_t *c)
{
        static const char *const keys[] = { "total",       "pending", "in_progress",
                                            "unavailable", "done",    "failed",
                                            "cancelled",   "skipped", "already_current" };
        printf("hosts:");
        for (size_t i = 0; i < ELEMENTSOF(keys); i++) {
                const json_t *v = json_object_get(c, keys[i]);
                /* a controller older than a counter does not send it */
                if (v || i < ELEMENTSOF(keys) - 1)
                        printf("%s %s %lld", i ? "," : "", keys[i],
                               (long long)json_integer_value(v));
        }
        putchar('\n');
}

static void print_rollout(const json_t *ro)
{
        static const char *const headers[] = { "HOST",   "WAVE",     "PHASE",
                                               "KERNEL", "BLACKOUT", "ERROR" };
        const json_t *target = json_object_get(json_object_get(ro, "spec"), "target"),
                     *k = json_object_get(target, "kernel"), *h;
        char wave[32], reason[320];
        struct table *t;
        size_t i;

        wave_text(ro, wave, sizeof(wave));
        printf("rollout %s: %s, wave %s\n", json_str(ro, "id") ?: "?",
               json_str(ro, "status") ?: "?", wave);
        printf("target: %s%s%s\n", json_str(k, "url") ?: json_str(k, "path") ?: "?",
               json_str(target, "release") ? ", release " : "",
               json_str(target, "release") ?: "");
        printf("created %s, updated %s%s%s\n", json_str(ro, "created_at") ?: "?",
               json_str(ro, "updated_at") ?: "?", json_str(ro, "finished_at") ? ", finished " : "",
               json_str(ro, "finished_at") ?: "");
        print_counters(json_object_get(ro, "counters"));
        reason_text(ro, reason, sizeof(reason));
        if (*reason)
                printf("reason: %s\n", reason);
        t = table_new(ELEMENTSOF(headers), headers);
        json_array_foreach (json_object_get(ro, "hosts"), i, h) {
                char w[24], bo[32], err[320];
                const json_t *e = json_object_get(h, "error");
                snprintf(w, sizeof(w), "%lld",
                         (long long)json_integer_value(json_object_get(h, "wave")) + 1);
                const json_t *now = json_object_get(h, "now");
                if (json_is_object(e) && json_is_object(now))
                        /* what it runs now, and whether a retry would stage again */
                        snprintf(err, sizeof(err), "%s: %s (now %s on %s, target %sstaged)",
                                 json_str(e, "code") ?: "?", json_str(e, "detail") ?: "",
                                 json_str(now, "state") ?: "?", json_str(now, "kernel") ?: "?",
                                 json_is_true(json_object_get(now, "target_staged")) ? "" : "not ");
                else if (json_is_object(e))
                        snprintf(err, sizeof(err), "%s: %s", json_str(e, "code") ?: "?",
                                 json_str(e, "detail") ?: "");
                else
                        err[0] = 0;
                const char *cells[6] = { json_str(h, "name"),
                                         w,
                                         json_str(h, "phase"),
                                         json_str(h, "kernel"),
                                         fmt_ms(json_object_get(h, "blackout_ms"), bo, sizeof(bo)),
                                         err };
                if (t)
                        table_add(t, cells);
        }
        if (t) {
                putchar('\n');
                table_print(t, stdout);
        }
        table_free(t);
}

static int rollout_status(struct cli *cli, int argc, char **argv)
{
        json_t *ro = NULL;
        int first, r;

        r = cli_parse(cli, argc, argv, NULL, NULL, NULL, NULL, status_usage, &first);
        if (r)
                return r < 0 ? EXIT_OK : r;
        if (argc - first > 1) {
                cli_usage_error("rollout status", "at most one ID");
                return EXIT_USAGE;
        }
        r = need_controller(cli, "rollout status");
        if (r)
                return r;
        if (first == argc)
                return status_list(cli);
        r = rollout_get(cli, argv[first], &ro);
        if (r)
                return r;
        if (cli->output == OUTPUT_JSON)
                print_json_line(ro);
        else
                print_rollout(ro);
        r = rollout_status_exit(json_str(ro, "status"));
        json_decref(ro);
        return r;
}

/* ---- rollout pause / resume / abort ------------------------------------------------ */

static const char act_usage[] =
        "Usage: luofleetctl rollout pause|resume|abort ID [--reason=TEXT]\n"
        "\n"
        "POST /v1/rollouts/ID/ACTION; prints the rollout's new status (json: the\n"
        "Rollout document). Refused (exit 1) for a finished rollout.\n";

static int rollout_act(struct cli *cli, const char *action, int argc, char **argv)
{
        _cleanup_free_ char *esc = NULL, *path = NULL, *text = NULL;
        json_t *body, *doc = NULL;
        int first, r;

        r = cli_parse(cli, argc, argv, NULL, NULL, NULL, NULL, act_usage, &first);
        if (r)
                return r < 0 ? EXIT_OK : r;
        if (argc - first != 1) {
                cli_usage_error("rollout", "%s: expected exactly one rollout ID", action);
                return EXIT_USAGE;
        }
        r = need_controller(cli, "rollout");
        if (r)
                return r;
        body = cli->reason ? json_pack("{s:s}", "reason", cli->reason) : json_object();
        text = body ? json_dumps(body, JSON_COMPACT) : NULL;
        json_decref(body);
        esc = url_escape(argv[first]);
        if (!text || !esc || asprintf(&path, "/v1/rollouts/%s/%s", esc, action) < 0)
                return EXIT_FAILED;
        r = ctl_call(cli, "POST", path, text, ok200, &doc, NULL);
        if (r)
                return r;
        if (cli->output == OUTPUT_JSON)
                print_json_line(doc);
        else
                printf("rollout %s: %s\n", json_str(doc, "id") ?: argv[first],
                       json_str(doc, "status") ?: "?");
        json_decref(doc);
        return EXIT_OK;
}

/* ---- rollout watch ----------------------------------------------------------------- */

static const char watch_usage[] =
        "Usage: luofleetctl rollout watch ID\n"
        "\n"
        "Follow the rollout's events (GET /v1/rollouts/ID/events, Server-Sent Events,\n"
        "resumed with Last-Event-ID when the connection breaks) until the rollout\n"
        "completes (exit 0), fails (3), pauses (4) or is aborted (5). On a terminal a\n"
        "live display (waves, each host's phase, counts, blackout figures) is redrawn in\n"
        "place; otherwise one line per event (json: each event's document).\n"
        "Interrupted (SIGINT, SIGTERM): exit 128+signal.\n";

struct watch {
        struct cli *cli;
        const char *id;
        json_t *ro; /* the Rollout document, updated by the events */
        bool live;
        bool color;     /* SGR colours (not with NO_COLOR) */
        unsigned drawn; /* lines of the last drawing */
        char last[512]; /* the newest event, as a line */
        int result;     /* -1: go on */
        char last_id[32];
};

/* the final outcome of a status: exit code, or -1 to go on */
static int status_final(const char *st)
{
        if (!st)
                return -1;
        if (strcmp(st, "completed") == 0)
                return EXIT_OK;
        if (strcmp(st, "failed") == 0)
                return EXIT_RO_FAILED;
        if (strcmp(st, "aborted") == 0)
                return EXIT_RO_ABORTED;
        if (strcmp(st, "paused") == 0)
                return EXIT_RO_PAUSED;
        return -1;
}

static json_t *watch_host(struct watch *w, const char *name)
{
        json_t *h;
        size_t i;

        json_array_foreach (json_object_get(w->ro, "hosts"), i, h)
                if (json_str(h, "name") && strcmp(json_str(h, "name"), name) == 0)
                        return h;
        return NULL;
}

static void event_line(const json_t *ev, char *buf, size_t size)
{
        FILE *f = fmemopen(buf, size, "w");
        const char *time = json_str(ev, "time");
        const json_t *v;

        if (!f) {
                buf[0] = 0;
                return;
        }
        fprintf(f, "%s %s", time ? time : "-", json_str(ev, "type") ?: "?");
        if ((v = json_object_get(ev, "host")) && json_is_string(v))
                fprintf(f, " host=%s", json_string_value(v));
        if ((v = json_object_get(ev, "wave")) && json_is_integer(v))
                fprintf(f, " wave=%lld", (long long)json_integer_value(v) + 1);
        if ((v = json_object_get(ev, "phase")) && json_is_string(v))
                fprintf(f, " phase=%s", json_string_value(v));
        if ((v = json_object_get(ev, "status")) && json_is_string(v))
                fprintf(f, " status=%s", json_string_value(v));
        if ((v = json_object_get(ev, "blackout_ms")) && json_is_integer(v))
                fprintf(f, " blackout=%lldms", (long long)json_integer_value(v));
        if ((v = json_object_get(ev, "detail")) && json_is_string(v))
                fprintf(f, " detail=\"%s\"", json_string_value(v));
        fclose(f);
        buf[size - 1] = 0;
}

static bool phase_in_progress(const char *p)
{
        static const char *const active[] = { "staging", "prepared",  "rebooting",
                                              "updated", "verifying", "finishing" };
        for (size_t i = 0; i < ELEMENTSOF(active); i++)
                if (p && strcmp(p, active[i]) == 0)
                        return true;
        return false;
}

static int cmp_ll(const void *a, const void *b)
{
        long long x = *(const long long *)a, y = *(const long long *)b;
        return (x > y) - (x < y);
}

/*
 * One line for a wave: every host with its phase when they fit, else the counts and
 * the hosts that are in progress or failed (as many as fit). Returns 1 (lines).
 */
static unsigned draw_wave(FILE *f, json_t *ro, long long wv, unsigned width, bool use_color)
{
        unsigned n_all = 0, len_all = 0, done = 0, pending = 0, active = 0, failed = 0;
        char head[96];
        unsigned col;
        json_t *h;
        size_t i;

        json_array_foreach (json_object_get(ro, "hosts"), i, h) {
                const char *p = json_str(h, "phase") ?: "pending";
                if (json_integer_value(json_object_get(h, "wave")) != wv)
                        continue;
                n_all++;
                len_all += (unsigned)(strlen(json_str(h, "name") ?: "?") + strlen(p) + 2);
                if (strcmp(p, "done") == 0)
                        done++;
                else if (strcmp(p, "failed") == 0)
                        failed++;
                else if (phase_in_progress(p))
                        active++;
                else
                        pending++;
        }
        if (len_all + 12 <= width)
                snprintf(head, sizeof(head), "wave %lld:", wv + 1);
        else
                snprintf(head, sizeof(head),
                         "wave %lld: %u hosts, done %u, in progress %u, pending %u, failed %u;",
                         wv + 1, n_all, done, active, pending, failed);
        fputs(head, f);
        col = (unsigned)strlen(head);
        json_array_foreach (json_object_get(ro, "hosts"), i, h) {
                char cell[160];
                const char *p = json_str(h, "phase") ?: "pending";
                const char *color = !use_color                 ? ""
                                    : strcmp(p, "done") == 0   ? "\033[32m"
                                    : strcmp(p, "failed") == 0 ? "\033[31m"
                                    : phase_in_progress(p)     ? "\033[33m"
                                                               : "";
                int n;

                if (json_integer_value(json_object_get(h, "wave")) != wv)
                        continue;
                if (len_all + 12 > width && !phase_in_progress(p) && strcmp(p, "failed") != 0)
                        continue;
                n = snprintf(cell, sizeof(cell), " %s:%s", json_str(h, "name") ?: "?", p);
                if (n < 0)
                        continue;
                if (col + (unsigned)n + 4 > width) {
                        fputs(" ...", f);
                        break;
                }
                fprintf(f, "%s%s%s", color, cell, *color ? "\033[0m" : "");
                col += (unsigned)n;
        }
        fputc('\n', f);
        return 1;
}

/* The live display: redrawn in place (cursor up, clear to the end). */
static void watch_draw(struct watch *w)
{
        char *text = NULL;
        size_t len = 0, nh = json_array_size(json_object_get(w->ro, "hosts"));
        FILE *f = open_memstream(&text, &len);
        unsigned lines = 0, done = 0, active = 0, failed = 0, pending = 0, other = 0, nb = 0;
        long long *bo = calloc(nh + 1, sizeof(long long));
        long long waves = json_integer_value(json_object_get(w->ro, "waves"));
        struct winsize ws = { 0 };
        unsigned width = 100;
        char wave[32];
        json_t *h;
        size_t i;

        if (!f || !bo) {
                if (f)
                        fclose(f);
                free(text);
                free(bo);
                return;
        }
        if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 20)
                width = ws.ws_col;
        json_array_foreach (json_object_get(w->ro, "hosts"), i, h) {
                const char *p = json_str(h, "phase");
                json_t *b = json_object_get(h, "blackout_ms");
                if (p && strcmp(p, "done") == 0)
                        done++;
                else if (p && strcmp(p, "failed") == 0)
                        failed++;
                else if (!p || strcmp(p, "pending") == 0)
                        pending++;
                else if (phase_in_progress(p))
                        active++;
                else
                        other++;
                if (json_is_integer(b))
                        bo[nb++] = json_integer_value(b);
        }
        wave_text(w->ro, wave, sizeof(wave));
        fprintf(f, "%srollout %.*s%s  %s  wave %s\n", w->color ? "\033[1m" : "",
                (int)MAX(width, 48u) - 40, w->id, w->color ? "\033[0m" : "",
                json_str(w->ro, "status") ?: "?", wave);
        fprintf(f, "hosts %zu: done %u, in progress %u, pending %u, failed %u, other %u\n", nh,
                done, active, pending, failed, other);
        lines += 2;
        if (nb) {
                qsort(bo, nb, sizeof(bo[0]), cmp_ll);
                fprintf(f, "blackout: min %lldms, median %lldms, max %lldms (%u hosts)\n", bo[0],
                        bo[nb / 2], bo[nb - 1], nb);
        } else
                fprintf(f, "blackout: -\n");
        lines++;
        /* the drawing must fit the terminal, or "cursor up" cannot reach its top: show
         * the waves from the one before the current one, as many as fit */
        long long from = 0, to = waves, room = ws.ws_row > 8 ? ws.ws_row - 6 : 20;
        json_t *cw = json_object_get(w->ro, "current_wave");
        if (waves > room) {
                from = json_is_integer(cw) && json_integer_value(cw) > 0
                               ? json_integer_value(cw) - 1
                               : 0;
                to = MIN(waves, from + room - 1);
        }
        for (long long wv = from; wv < to; wv++)
                lines += draw_wave(f, w->ro, wv, width, w->color);
        if (to < waves || from > 0) {
                fprintf(f, "(waves %lld-%lld of %lld shown)\n", from + 1, to, waves);
                lines++;
        }
        fprintf(f, "%.*s\n", (int)(width - 1), w->last);
        lines++;
        fclose(f);
        if (w->drawn)
                printf("\033[%uA", w->drawn);
        printf("\r\033[J%s", text);
        fflush(stdout);
        w->drawn = lines;
        free(text);
        free(bo);
}

static void watch_apply(struct watch *w, const json_t *ev)
{
        const char *type = json_str(ev, "type") ?: "";
        json_t *h;

        if (json_str(ev, "status") && strcmp(type, "rollout-status") == 0)
                json_object_set_new(w->ro, "status", json_string(json_str(ev, "status")));
        if (strcmp(type, "wave-started") == 0 && json_is_integer(json_object_get(ev, "wave")))
                json_object_set(w->ro, "current_wave", json_object_get(ev, "wave"));
        if (json_str(ev, "host") && (h = watch_host(w, json_str(ev, "host")))) {
                if (json_str(ev, "phase"))
                        json_object_set_new(h, "phase", json_string(json_str(ev, "phase")));
                if (json_is_integer(json_object_get(ev, "blackout_ms")))
                        json_object_set(h, "blackout_ms", json_object_get(ev, "blackout_ms"));
        }
}

static int watch_event(const struct sse_event *sev, void *userdata)
{
        struct watch *w = userdata;
        json_t *ev = json_loads(sev->data, 0, NULL);
        const char *st;

        if (sev->id)
                snprintf(w->last_id, sizeof(w->last_id), "%s", sev->id);
        if (!ev)
                return 0;
        if (w->cli->output == OUTPUT_JSON)
                print_json_line(ev);
        else {
                event_line(ev, w->last, sizeof(w->last));
                if (!w->live) {
                        printf("%s\n", w->last);
                        fflush(stdout);
                }
        }
        watch_apply(w, ev);
        if (w->live && w->cli->output == OUTPUT_TABLE)
                watch_draw(w);
        st = strcmp(json_str(ev, "type") ?: "", "rollout-status") == 0 ? json_str(ev, "status")
                                                                       : NULL;
        w->result = status_final(st);
        json_decref(ev);
        if (w->result == EXIT_RO_PAUSED) {
                /* an old pause replayed from the start of the stream is not the end:
                 * is the rollout paused now? */
                json_t *ro = NULL;
                if (rollout_get(w->cli, w->id, &ro) == EXIT_OK &&
                    strcmp(json_str(ro, "status") ?: "", "paused") != 0)
                        w->result = -1;
                json_decref(ro);
        }
        return w->result >= 0 ? 1 : 0;
}

static int rollout_watch(struct cli *cli, int argc, char **argv)
{
        struct watch w = { .cli = cli, .result = -1 };
        _cleanup_free_ char *esc = NULL, *path = NULL, *url = NULL;
        int first, r, failures = 0;

        r = cli_parse(cli, argc, argv, NULL, NULL, NULL, NULL, watch_usage, &first);
        if (r)
                return r < 0 ? EXIT_OK : r;
        if (argc - first != 1) {
                cli_usage_error("rollout watch", "expected exactly one rollout ID");
                return EXIT_USAGE;
        }
        r = need_controller(cli, "rollout watch");
        if (r)
                return r;
        w.id = argv[first];
        esc = url_escape(w.id);
        if (!esc || asprintf(&path, "/v1/rollouts/%s/events", esc) < 0 ||
            !(url = url_join(cli->controller, path)))
                return EXIT_FAILED;
        r = rollout_get(cli, w.id, &w.ro);
        if (r)
                return r;
        /* Redrawing in place needs a terminal that moves the cursor (not TERM=dumb); colour
         * also honours NO_COLOR (https://no-color.org: set and not empty). */
        const char *term = getenv("TERM"), *no_color = getenv("NO_COLOR");
        w.live = cli->output == OUTPUT_TABLE && isatty(STDOUT_FILENO) &&
                 !(term && strcmp(term, "dumb") == 0);
        w.color = w.live && !(no_color && *no_color);
        cli_catch_signals();
        if (w.live) {
                printf("\033[?25l"); /* hide the cursor while redrawing */
                watch_draw(&w);
        }
        while (w.result < 0 && !cli_interrupted) {
                struct http_resp resp;
                char err[512];

                r = http_sse(cli, url, w.last_id[0] ? w.last_id : NULL, watch_event, &w, &resp, err,
                             sizeof(err));
                if (w.result >= 0 || cli_interrupted)
                        break;
                if (r == -2) {
                        http_report_problem(cli->controller, &resp);
                        http_resp_clear(&resp);
                        w.result = EXIT_FAILED;
                        break;
                }
                if (r == -1) {
                        if (++failures > 30) {
                                fprintf(stderr, "luofleetctl: %s: %s\n", cli->controller, err);
                                w.result = EXIT_NO_CONNECT;
                                break;
                        }
                } else
                        failures = 0;
                /* the stream ended: finished while we were away, or a broken connection */
                json_t *ro = NULL;
                if (rollout_get(cli, w.id, &ro) == EXIT_OK) {
                        int f = status_final(json_str(ro, "status"));
                        if (f >= 0 && r == 0) {
                                w.result = f;
                                json_decref(ro);
                                break;
                        }
                }
                json_decref(ro);
                usleep(500 * 1000);
        }
        if (w.live)
                printf("\033[?25h");
        fflush(stdout);
        json_decref(w.ro);
        if (w.result < 0)
                return 128 + (cli_interrupted ? cli_interrupted : 2);
        return w.result;
}

/* ---- dispatch ---------------------------------------------------------------------- */

static const char rollout_usage[] =
        "Usage: luofleetctl rollout plan|create [-f FILE|-] [SPEC OPTIONS]\n"
        "       luofleetctl rollout retry ID [SPEC OPTIONS]\n"
        "       luofleetctl rollout status [ID]\n"
        "       luofleetctl rollout watch ID\n"
        "       luofleetctl rollout pause|resume|abort ID [--reason=TEXT]\n"
        "\n"
        "Drive rollouts on the controller (--controller, LUOFLEET_CONTROLLER).\n"
        "luofleetctl rollout SUBCOMMAND --help for each. Exit status of status ID and\n"
        "watch: 0 completed (or still running, for status), 3 failed, 4 paused or\n"
        "blocked, 5 aborted.\n";

int cmd_rollout(struct cli *cli, int argc, char **argv)
{
        const char *sub = argc >= 2 ? argv[1] : NULL;

        if (!sub) {
                cli_usage_error("rollout", "which subcommand? (plan, create, retry, status, "
                                           "watch, pause, resume, abort)");
                return EXIT_USAGE;
        }
        if (strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0 || strcmp(sub, "help") == 0) {
                fputs(rollout_usage, stdout);
                return EXIT_OK;
        }
        if (strcmp(sub, "plan") == 0 || strcmp(sub, "create") == 0 || strcmp(sub, "retry") == 0)
                return rollout_spec_cmd(cli, strcmp(sub, "plan") == 0, strcmp(sub, "retry") == 0,
                                        argc - 1, argv + 1);
        if (strcmp(sub, "status") == 0)
                return rollout_status(cli, argc - 1, argv + 1);
        if (strcmp(sub, "watch") == 0)
                return rollout_watch(cli, argc - 1, argv + 1);
        if (strcmp(sub, "pause") == 0 || strcmp(sub, "resume") == 0 || strcmp(sub, "abort") == 0)
                return rollout_act(cli, sub, argc - 1, argv + 1);
        cli_usage_error("rollout", "unknown subcommand '%s'", sub);
        return EXIT_USAGE;
}
