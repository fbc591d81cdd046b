/*
 * cmd_session.c: `luofleetctl session list|show`: the workloads' sessions of
 * one host, from the agent's GET /v1/sessions (what its session broker last
 * reported; docs/sessions.md), through the host commands' plumbing
 * (host_check, host_call in cmd_host.c). Also the DETAIL of a "session"
 * journal record for `history`. Single-threaded.
 */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#include "luofleet/macro.h"
#include "luofleet/util.h"

static const char session_usage[] =
        "Usage: luofleetctl session list HOST [--owner=UID] [--output=table|json]\n"
        "       luofleetctl session show HOST NAME [--owner=UID] [--output=table|json]\n"
        "\n"
        "The workloads' sessions that cross the live-update kexec, as the agent's\n"
        "session broker reports them (GET /v1/sessions; docs/sessions.md).\n"
        "\n"
        "list: one row per session: NAME, OWNER (the owner's uid), WORKLOAD, PHASE\n"
        "(outgoing, incoming, retrieved, finished), FDS (files preserved), BYTES; then\n"
        "a summary line, and the last prepare round when it failed (who did not\n"
        "confirm, who vetoed). --owner: only the sessions of that uid. json: the\n"
        "agent's document.\n"
        "\n"
        "show: one session with its files (TOKEN, KERNEL-TOKEN, BYTES, RETRIEVED).\n"
        "Session names are per owner: when several owners have a session NAME, give\n"
        "--owner=UID. No such session: exit 1. json: the session's object.\n"
        "\n"
        "HOST: http(s)://ADDR:PORT; ADDR:PORT (http on loopback, https elsewhere); or a\n"
        "name the controller resolves. Common options: luofleetctl --help.\n";

#define OPT_OWNER 'o'

static int session_opt(int c, const char *arg, void *userdata)
{
        struct session_args *a = userdata;
        uint64_t v;

        if (c != OPT_OWNER)
                return EXIT_USAGE;
        /* (uid_t)-1 is no uid: the kernel never reports it as a peer's. */
        if (parse_u64(arg, UINT32_MAX - 1, &v) < 0) {
                cli_usage_error("session", "--owner: expected a uid (0..%u)", UINT32_MAX - 1);
                return EXIT_USAGE;
        }
        a->has_owner = true;
        a->owner = (uint32_t)v;
        return 0;
}

int session_parse(struct cli *cli, int argc, char **argv, struct session_args *ret)
{
        static const struct option opts[] = { { "owner", required_argument, NULL, OPT_OWNER }, {} };
        struct session_args a = { 0 };
        const char *sub;
        int first, n, r;

        r = cli_parse(cli, argc, argv, NULL, opts, session_opt, &a, session_usage, &first);
        if (r)
                return r;
        if (first >= argc) {
                cli_usage_error("session", "expected a subcommand: list or show");
                return EXIT_USAGE;
        }
        sub = argv[first++];
        n = argc - first;
        if (strcmp(sub, "list") == 0) {
                if (n != 1) {
                        cli_usage_error("session", "list: expected exactly one HOST");
                        return EXIT_USAGE;
                }
                a.cmd = SESSION_LIST;
        } else if (strcmp(sub, "show") == 0) {
                if (n != 2) {
                        cli_usage_error("session", "show: expected HOST NAME");
                        return EXIT_USAGE;
                }
                a.cmd = SESSION_SHOW;
                a.name = argv[first + 1];
                if (!*a.name) {
                        cli_usage_error("session", "show: the session NAME is empty");
                        return EXIT_USAGE;
                }
        } else {
                cli_usage_error("session", "unknown subcommand '%s' (list, show)", sub);
                return EXIT_USAGE;
        }
        r = host_check(cli, "session", first + 1, argv, first);
        if (r)
                return r;
        a.host = argv[first];
        *ret = a;
        return 0;
}

static bool owned_by(const json_t *s, bool has_owner, uint32_t owner)
{
        json_t *uid = json_object_get(s, "owner_uid");

        return !has_owner || (json_is_integer(uid) && json_integer_value(uid) == (json_int_t)owner);
}

size_t session_find(const json_t *doc, const char *name, bool has_owner, uint32_t owner,
                    const json_t **ret_first)
{
        const json_t *s;
        size_t i, n = 0;

        *ret_first = NULL;
        json_array_foreach (json_object_get(doc, "sessions"), i, s) {
                const char *sn = json_str(s, "name");
                if (!sn || strcmp(sn, name) != 0 || !owned_by(s, has_owner, owner))
                        continue;
                if (n++ == 0)
                        *ret_first = s;
        }
        return n;
}

static long long int_member(const json_t *o, const char *key)
{
        return (long long)json_integer_value(json_object_get(o, key));
}

static uint64_t u64_member(const json_t *o, const char *key)
{
        json_int_t v = json_integer_value(json_object_get(o, key));

        return v > 0 ? (uint64_t)v : 0;
}

/* ---- list --------------------------------------------------------------------- */

/* Append to buf at *len, keeping it NUL-terminated; stops quietly when full. */
_printf_(4, 5) static void append(char *buf, size_t size, size_t *len, const char *fmt, ...)
{
        va_list ap;
        int n;

        if (*len >= size)
                return;
        va_start(ap, fmt);
        n = vsnprintf(buf + *len, size - *len, fmt, ap);
        va_end(ap);
        if (n > 0)
                *len = MIN(*len + (size_t)n, size - 1);
}

/* "sessions: 2 (1 outgoing, 1 incoming), files: 3, bytes: 96 MiB, workloads: 1 connected
 * (1 registered)" */
static void print_summary(const json_t *doc)
{
        /* SessionPhase (api/openapi.yaml), the summary's members */
        static const char *const summary_phases[] = { "outgoing", "incoming", "retrieved",
                                                      "finished" };
        const json_t *sum = json_object_get(doc, "summary"), *w;
        char line[512], b[32];
        size_t len = 0, i, registered = 0;
        bool any = false;

        json_array_foreach (json_object_get(doc, "workloads"), i, w)
                registered += json_is_true(json_object_get(w, "registered"));
        append(line, sizeof(line), &len, "sessions: %llu",
               (unsigned long long)u64_member(sum, "sessions"));
        for (i = 0; i < ELEMENTSOF(summary_phases); i++) {
                uint64_t n = u64_member(sum, summary_phases[i]);
                if (!n)
                        continue;
                append(line, sizeof(line), &len, "%s%llu %s", any ? ", " : " (",
                       (unsigned long long)n, summary_phases[i]);
                any = true;
        }
        append(line, sizeof(line), &len, "%s, files: %llu, bytes: %s, workloads: %llu connected",
               any ? ")" : "", (unsigned long long)u64_member(sum, "fds"),
               fmt_bytes(u64_member(sum, "bytes"), b, sizeof(b)),
               (unsigned long long)u64_member(sum, "workloads"));
        if (registered)
                append(line, sizeof(line), &len, " (%zu registered)", registered);
        puts(line);
}

/* The last prepare round, when the workloads did not all confirm it. */
static void print_round(const json_t *doc)
{
        static const struct {
                const char *member, *reason; /* reason: when the entry has none */
        } lists[] = { { "vetoed", "vetoed" }, { "pending", "no answer" }, { "gone", "gone" } };
        const json_t *round = json_object_get(doc, "last_round"), *w;
        const char *result = json_str(round, "result");
        char line[1024];
        size_t len = 0, i;
        bool any = false;

        if (!result || strcmp(result, "confirmed") == 0)
                return;
        append(line, sizeof(line), &len,
               "last prepare round %lld %s:", int_member(round, "event_id"),
               strcmp(result, "vetoed") == 0 ? "vetoed" : "timed out");
        for (size_t l = 0; l < ELEMENTSOF(lists); l++)
                json_array_foreach (json_object_get(round, lists[l].member), i, w) {
                        const char *reason = json_str(w, "reason");
                        append(line, sizeof(line), &len, "%s %s (uid %lld, pid %lld): %s",
                               any ? ";" : "", json_str(w, "name") ?: "?", int_member(w, "uid"),
                               int_member(w, "pid"), reason && *reason ? reason : lists[l].reason);
                        any = true;
                }
        if (!any)
                append(line, sizeof(line), &len, " (no workload named)");
        puts(line);
}

static int session_list(const struct cli *cli, const struct session_args *a, json_t *doc)
{
        static const char *const headers[] = {
                "NAME", "OWNER", "WORKLOAD", "PHASE", "FDS", "BYTES"
        };
        struct table *t;
        const json_t *s;
        size_t i, rows = 0;

        if (cli->output == OUTPUT_JSON) {
                print_json_line(doc);
                return EXIT_OK;
        }
        if (json_is_null(json_object_get(doc, "summary"))) {
                printf("no session broker on this host (backend %s)\n",
                       json_str(doc, "backend") ?: "?");
                return EXIT_OK;
        }
        t = table_new(ELEMENTSOF(headers), headers);
        if (!t) {
                fputs("luofleetctl: out of memory\n", stderr);
                return EXIT_FAILED;
        }
        json_array_foreach (json_object_get(doc, "sessions"), i, s) {
                char owner[24], fds[24], bytes[32];
                const char *cells[ELEMENTSOF(headers)];
                if (!owned_by(s, a->has_owner, a->owner))
                        continue;
                snprintf(owner, sizeof(owner), "%lld", int_member(s, "owner_uid"));
                snprintf(fds, sizeof(fds), "%lld", int_member(s, "fds"));
                cells[0] = json_str(s, "name");
                cells[1] = owner;
                cells[2] = json_str(s, "workload");
                cells[3] = json_str(s, "phase");
                cells[4] = fds;
                cells[5] = fmt_bytes(u64_member(s, "bytes"), bytes, sizeof(bytes));
                if (table_add(t, cells) < 0) {
                        table_free(t);
                        fputs("luofleetctl: out of memory\n", stderr);
                        return EXIT_FAILED;
                }
                rows++;
        }
        /* No rows: the summary line says it; a table of headers only would not. */
        if (rows)
                table_print(t, stdout);
        table_free(t);
        print_summary(doc);
        print_round(doc);
        if (u64_member(doc, "events_dropped"))
                printf("broker events lost before the agent journaled them: %llu\n",
                       (unsigned long long)u64_member(doc, "events_dropped"));
        return EXIT_OK;
}

/* ---- show --------------------------------------------------------------------- */

/* The connected workload that owns s (same name and uid), or NULL. */
static const json_t *session_workload(const json_t *doc, const json_t *s)
{
        const char *name = json_str(s, "workload");
        const json_t *w;
        size_t i;

        json_array_foreach (json_object_get(doc, "workloads"), i, w)
                if (name && json_str(w, "name") && strcmp(json_str(w, "name"), name) == 0 &&
                    int_member(w, "uid") == int_member(s, "owner_uid"))
                        return w;
        return NULL;
}

static void print_ambiguous(const struct session_args *a, const json_t *doc)
{
        const json_t *s;
        size_t i;

        fprintf(stderr,
                "luofleetctl session: %s: several owners have a session named '%s'; choose "
                "one with --owner=UID:\n",
                a->host, a->name);
        json_array_foreach (json_object_get(doc, "sessions"), i, s) {
                const char *sn = json_str(s, "name");
                if (sn && strcmp(sn, a->name) == 0)
                        fprintf(stderr, "  --owner=%lld  (workload %s, %s)\n",
                                int_member(s, "owner_uid"), json_str(s, "workload") ?: "-",
                                json_str(s, "phase") ?: "?");
        }
}

static int session_show(const struct cli *cli, const struct session_args *a, const json_t *doc)
{
        static const char *const headers[] = { "TOKEN", "KERNEL-TOKEN", "BYTES", "RETRIEVED" };
        const json_t *s, *w, *tok;
        struct table *t;
        char b[32];
        size_t n, i;

        n = session_find(doc, a->name, a->has_owner, a->owner, &s);
        if (n == 0) {
                if (a->has_owner)
                        fprintf(stderr, "luofleetctl: %s: no session named '%s' owned by uid %u\n",
                                a->host, a->name, (unsigned)a->owner);
                else
                        fprintf(stderr, "luofleetctl: %s: no session named '%s'\n", a->host,
                                a->name);
                return EXIT_FAILED;
        }
        if (n > 1) {
                print_ambiguous(a, doc);
                return EXIT_USAGE;
        }
        if (cli->output == OUTPUT_JSON) {
                print_json_line(s);
                return EXIT_OK;
        }
        w = session_workload(doc, s);
        printf("name:         %s\n", json_str(s, "name") ?: "?");
        printf("kernel name:  %s\n", json_str(s, "kernel_name") ?: "-");
        printf("owner:        uid %lld\n", int_member(s, "owner_uid"));
        if (w)
                printf("workload:     %s (connected, pid %lld%s)\n", json_str(s, "workload") ?: "-",
                       int_member(w, "pid"),
                       json_is_true(json_object_get(w, "registered")) ? ", registered" : "");
        else
                printf("workload:     %s (not connected)\n", json_str(s, "workload") ?: "-");
        printf("phase:        %s\n", json_str(s, "phase") ?: "?");
        printf("files:        %lld, %s\n", int_member(s, "fds"),
               fmt_bytes(u64_member(s, "bytes"), b, sizeof(b)));
        t = table_new(ELEMENTSOF(headers), headers);
        if (!t) {
                fputs("luofleetctl: out of memory\n", stderr);
                return EXIT_FAILED;
        }
        json_array_foreach (json_object_get(s, "tokens"), i, tok) {
                char token[24], ktoken[24];
                const char *cells[ELEMENTSOF(headers)];
                snprintf(token, sizeof(token), "%lld", int_member(tok, "token"));
                snprintf(ktoken, sizeof(ktoken), "%lld", int_member(tok, "kernel_token"));
                cells[0] = token;
                cells[1] = ktoken;
                cells[2] = fmt_bytes(u64_member(tok, "bytes"), b, sizeof(b));
                cells[3] = json_is_true(json_object_get(tok, "retrieved")) ? "yes" : "no";
                if (table_add(t, cells) < 0) {
                        table_free(t);
                        fputs("luofleetctl: out of memory\n", stderr);
                        return EXIT_FAILED;
                }
        }
        if (json_array_size(json_object_get(s, "tokens")) > 0) {
                putchar('\n');
                table_print(t, stdout);
        }
        table_free(t);
        return EXIT_OK;
}

int cmd_session(struct cli *cli, int argc, char **argv)
{
        struct session_args a;
        json_t *doc = NULL;
        int r;

        r = session_parse(cli, argc, argv, &a);
        if (r)
                return r < 0 ? EXIT_OK : r;
        r = host_call(cli, a.host, "GET", "/v1/sessions", NULL, 200, 200, &doc, NULL);
        if (r)
                return r;
        r = a.cmd == SESSION_LIST ? session_list(cli, &a, doc) : session_show(cli, &a, doc);
        json_decref(doc);
        return r;
}

/* ---- history ------------------------------------------------------------------ */

void session_record_detail(const json_t *rec, char *buf, size_t size)
{
        const char *event = json_str(rec, "event") ?: "?", *s;
        size_t len = 0;
        char b[32];

        buf[0] = 0;
        append(buf, size, &len, "%s", event);
        if ((s = json_str(rec, "session")))
                append(buf, size, &len, " %s", s);
        if (json_is_integer(json_object_get(rec, "owner_uid")))
                append(buf, size, &len, " uid=%lld", int_member(rec, "owner_uid"));
        if ((s = json_str(rec, "workload")))
                append(buf, size, &len, " workload=%s", s);
        if (json_is_integer(json_object_get(rec, "token")))
                append(buf, size, &len, " token=%lld", int_member(rec, "token"));
        if (json_is_integer(json_object_get(rec, "bytes")))
                append(buf, size, &len, " %s", fmt_bytes(u64_member(rec, "bytes"), b, sizeof(b)));
        if ((s = json_str(rec, "errno")))
                append(buf, size, &len, " %s", s);
        if ((s = json_str(rec, "detail")) && *s)
                append(buf, size, &len, ": %s", s);
}
