/*
 * cmd_converge.c: `luofleetctl converge HOST --kernel=...`: bring one host to a
 * target kernel one idempotent step at a time (stage, prepare, reboot; finish in the
 * new boot), reading the agent's state before each step, so that it can be re-run
 * at any point: after a failure, a crash of the caller, or the kexec. What a
 * Kubernetes upgrade Job or a configuration-management run calls. Single-threaded.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

#include "luofleet/bzimage.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"

static const char converge_usage[] =
        "Usage: luofleetctl converge HOST --kernel=URL|PATH [--kernel-sha256=HEX]\n"
        "                            [--initrd=URL|PATH [--initrd-sha256=HEX]]\n"
        "                            [--cmdline=STRING] [--signature=FILE] [--release=RELEASE]\n"
        "                            [--lease=SECONDS] [--wait [--wait-timeout=DURATION]]\n"
        "\n"
        "Bring HOST to the target kernel, one step at a time, and say where it is.\n"
        "HOST already runs RELEASE and is at rest (normal): nothing is sent, exit 0.\n"
        "Otherwise the next steps: stage (unless this kernel is staged already),\n"
        "prepare, reboot; in the new boot, finish. After the reboot request it exits 7\n"
        "(under way: run converge again once the host is back), unless --wait follows\n"
        "the host through the kexec (at most --wait-timeout, default 10m) and finishes.\n"
        "It can be re-run at any time: every step reads the agent's state first, and\n"
        "its operation id is made of the host's boot id and the kernel's digest, so a\n"
        "step the agent has done is not done again.\n"
        "--release: the release the new boot must run; by default the one in the\n"
        "header of the local kernel file (required with a URL).\n"
        "A host prepared for another kernel is left alone (exit 1: cancel it first).\n";

struct converge_args {
        struct stage_args stage; /* first: cli_stage_opt() fills it */
        const char *lease;
        bool wait;
        uint64_t wait_timeout_ms;
};

static int converge_opt(int c, const char *arg, void *userdata)
{
        struct converge_args *a = userdata;

        switch (c) {
        case 'k':
        case 'K':
        case 'i':
        case 'I':
        case 'c':
        case 's':
        case 'r':
                return cli_stage_opt(c, arg, &a->stage);
        case 'l':
                a->lease = arg;
                break;
        case 'w':
                a->wait = true;
                break;
        case 'W':
                if (parse_duration_ms(arg, 24 * 3600 * 1000ull, &a->wait_timeout_ms) < 0 ||
                    !a->wait_timeout_ms) {
                        cli_usage_error("converge", "--wait-timeout: expected a duration "
                                                    "(\"90s\", \"10m\")");
                        return EXIT_USAGE;
                }
                break;
        }
        return 0;
}

/* The release the local kernel file's bzImage header names; 0, or an exit code. */
static int local_release(const char *path, char *out, size_t size)
{
        char version[256];
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        int r;

        if (fd < 0) {
                fprintf(stderr, "luofleetctl converge: %s: %s\n", path, strerror(errno));
                return EXIT_USAGE;
        }
        r = bzimage_version_fd(fd, version, sizeof(version));
        if (r < 0) {
                cli_usage_error("converge",
                                "%s names no release in a bzImage header (%s): give --release",
                                path, strerror(-r));
                return EXIT_USAGE;
        }
        bzimage_release(version, out, size);
        if (!*out) {
                cli_usage_error("converge", "%s: no release in '%s': give --release", path,
                                version);
                return EXIT_USAGE;
        }
        return 0;
}

/* The staging request, with the release converge decided on; NULL after a message. */
static json_t *stage_body(const struct cli *cli, const struct converge_args *a, const char *release)
{
        struct stage_args st = a->stage;
        json_t *body;

        st.release = release;
        body = cli_stage_body("converge", &st);
        if (body && cli->reason)
                json_object_set_new(body, "reason", json_string(cli->reason));
        return body;
}

/* One request with {"operation_id": "<prefix>:<step>"} merged into body (may be NULL). */
static int step(const struct cli *cli, const char *host, const char *method, const char *path,
                json_t *body, const char *prefix, const char *name, long ok1, long ok2,
                json_t **ret_doc, char **ret_base)
{
        _cleanup_free_ char *text = NULL;
        char opid[128];
        json_t *b = body ? json_deep_copy(body) : json_object();
        int r;

        if (!b)
                return EXIT_FAILED;
        snprintf(opid, sizeof(opid), "%s:%s", prefix, name);
        json_object_set_new(b, "operation_id", json_string(opid));
        if (cli->reason && !json_object_get(b, "reason"))
                json_object_set_new(b, "reason", json_string(cli->reason));
        text = json_dumps(b, JSON_COMPACT);
        json_decref(b);
        if (!text)
                return EXIT_FAILED;
        json_t *doc = NULL;
        r = host_call(cli, host, method, path, text, ok1, ok2, &doc, ret_base);
        if (r)
                return r;
        if (ret_doc)
                *ret_doc = doc;
        else
                json_decref(doc);
        return EXIT_OK;
}

/* Until the staging of kernel sha (a download: 202) ends; an exit code. */
static int wait_staged(const struct cli *cli, const char *host, json_int_t index, const char *sha,
                       const char *opid)
{
        uint64_t until = now_mono_usec() / 1000 + 3600 * 1000ull;

        while (!cli_interrupted && now_mono_usec() / 1000 < until) {
                char path[80];
                json_t *doc = NULL;
                snprintf(path, sizeof(path), "/v1/state?index=%lld&wait=10s", (long long)index);
                int r = host_call(cli, host, "GET", path, NULL, 200, 200, &doc, NULL);
                if (r)
                        return r;
                index = json_integer_value(json_object_get(doc, "index"));
                const json_t *op = json_object_get(doc, "operation");
                const char *staged = json_str(
                        json_object_get(json_object_get(doc, "staged"), "kernel"), "sha256");
                const char *st = json_str(op, "status"), *id = json_str(op, "id");
                if (staged && strcasecmp(staged, sha) == 0 &&
                    !(st && id && strcmp(id, opid) == 0 && strcmp(st, "running") == 0)) {
                        json_decref(doc);
                        return EXIT_OK;
                }
                if (id && strcmp(id, opid) == 0 && st && strcmp(st, "failed") == 0) {
                        const json_t *e = json_object_get(op, "error");
                        fprintf(stderr, "luofleetctl: %s: staging failed: %s: %s\n", host,
                                json_str(e, "code") ?: "error", json_str(e, "detail") ?: "");
                        json_decref(doc);
                        return EXIT_FAILED;
                }
                json_decref(doc);
        }
        fprintf(stderr, "luofleetctl: %s: %s waiting for the staging\n", host,
                cli_interrupted ? "interrupted" : "gave up");
        return EXIT_FAILED;
}

int cmd_converge(struct cli *cli, int argc, char **argv)
{
        static const struct option opts[] = {
                { "kernel", required_argument, NULL, 'k' },
                { "kernel-sha256", required_argument, NULL, 'K' },
                { "initrd", required_argument, NULL, 'i' },
                { "initrd-sha256", required_argument, NULL, 'I' },
                { "cmdline", required_argument, NULL, 'c' },
                { "signature", required_argument, NULL, 's' },
                { "release", required_argument, NULL, 'r' },
                { "lease", required_argument, NULL, 'l' },
                { "wait", no_argument, NULL, 'w' },
                { "wait-timeout", required_argument, NULL, 'W' },
                {},
        };
        struct converge_args a = { .wait_timeout_ms = 600000 };
        char release[256];
        json_t *body = NULL, *prep = NULL;
        int first, r, result = EXIT_FAILED;

        r = cli_parse(cli, argc, argv, NULL, opts, converge_opt, &a, converge_usage, &first);
        if (r)
                return r < 0 ? EXIT_OK : r;
        r = host_check(cli, "converge", argc, argv, first);
        if (r)
                return r;
        if (argc - first != 1) {
                cli_usage_error("converge", "one HOST at a time (%d given)", argc - first);
                return EXIT_USAGE;
        }
        const char *host = argv[first];
        if (!a.stage.kernel) {
                cli_usage_error("converge", "--kernel=URL|PATH is required");
                return EXIT_USAGE;
        }
        if (!a.stage.initrd && a.stage.initrd_sha) {
                cli_usage_error("converge", "--initrd-sha256 without --initrd");
                return EXIT_USAGE;
        }
        if (a.wait_timeout_ms != 600000 && !a.wait) {
                cli_usage_error("converge", "--wait-timeout without --wait");
                return EXIT_USAGE;
        }
        if (a.stage.release) {
                if (!*a.stage.release || strlen(a.stage.release) >= sizeof(release)) {
                        cli_usage_error("converge", "--release: 1 to %zu characters",
                                        sizeof(release) - 1);
                        return EXIT_USAGE;
                }
                snprintf(release, sizeof(release), "%s", a.stage.release);
        } else if (strstr(a.stage.kernel, "://")) {
                cli_usage_error("converge", "--release is required with a URL (the release "
                                            "the new boot must run)");
                return EXIT_USAGE;
        } else if ((r = local_release(a.stage.kernel, release, sizeof(release))) != 0) {
                return r;
        }
        body = stage_body(cli, &a, release);
        if (!body)
                return EXIT_USAGE;
        prep = json_object();
        if (!prep)
                goto out;
        if (a.lease) {
                uint64_t v;
                if (parse_u64(a.lease, 86400, &v) < 0) {
                        cli_usage_error("converge", "--lease: expected seconds (0..86400)");
                        result = EXIT_USAGE;
                        goto out;
                }
                json_object_set_new(prep, "lease_seconds", json_integer((json_int_t)v));
        }
        const char *sha = json_str(json_object_get(body, "kernel"), "sha256");
        cli_catch_signals();

        /* Each pass reads the state and takes one step; a step the agent has done shows in
         * the next state, so a handful of passes is the whole way (5: stage, prepare,
         * reboot, finish, and the look that says it is done). */
        for (int pass = 0; pass < 8 && !cli_interrupted; pass++) {
                json_t *doc = NULL;
                r = host_call(cli, host, "GET", "/v1/state", NULL, 200, 200, &doc, NULL);
                if (r) {
                        result = r;
                        goto out;
                }
                const char *state = json_str(doc, "state") ?: "?";
                const char *kernel = json_str(doc, "kernel") ?: "?";
                const char *boot = json_str(doc, "boot_id") ?: "";
                const json_t *staged = json_object_get(doc, "staged");
                const char *staged_sha = json_str(json_object_get(staged, "kernel"), "sha256");
                bool ours = staged_sha && strcasecmp(staged_sha, sha) == 0;
                json_int_t index = json_integer_value(json_object_get(doc, "index"));
                char prefix[64];
                snprintf(prefix, sizeof(prefix), "converge:%.8s:%.12s", boot, sha);

                if (strcmp(state, "normal") == 0 && strcmp(kernel, release) == 0) {
                        printf("%s: runs %s, state normal: converged\n", host, release);
                        result = EXIT_OK;
                } else if (strcmp(state, "updated") == 0) {
                        if (strcmp(kernel, release) != 0) {
                                fprintf(stderr,
                                        "luofleetctl: %s: the new boot runs %s, not %s: not "
                                        "finishing it (luofleetctl rollback %s, or finish it "
                                        "yourself)\n",
                                        host, kernel, release, host);
                                result = EXIT_FAILED;
                        } else if ((r = step(cli, host, "POST", "/v1/finish", NULL, prefix,
                                             "finish", 200, 200, NULL, NULL)) != 0) {
                                result = r;
                        } else {
                                printf("%s: finished the update to %s\n", host, release);
                                result = -1;
                        }
                } else if (strcmp(state, "frozen") == 0 ||
                           (strcmp(state, "prepared") == 0 && ours)) {
                        json_t *acc = NULL;
                        _cleanup_free_ char *base = NULL;
                        if (strcmp(state, "frozen") == 0) {
                                printf("%s: rebooting into the staged kernel\n", host);
                                acc = json_incref(doc);
                                r = target_resolve(cli, host, &base);
                        } else {
                                r = step(cli, host, "POST", "/v1/reboot", NULL, prefix, "reboot",
                                         202, 202, &acc, &base);
                                if (!r)
                                        printf("%s: reboot into %s requested\n", host, release);
                        }
                        if (r)
                                result = r;
                        else if (!a.wait) {
                                printf("%s: under way: run converge again once the host "
                                       "is back\n",
                                       host);
                                result = EXIT_UNDER_WAY;
                        } else {
                                r = cli_reboot_wait(cli, host, base, acc, a.wait_timeout_ms);
                                result = r ? r : -1;
                        }
                        json_decref(acc);
                } else if (strcmp(state, "prepared") == 0) {
                        const json_t *op = json_object_get(doc, "operation");
                        fprintf(stderr,
                                "luofleetctl: %s: prepared for another kernel (staged %.12s, "
                                "operation %s): cancel it first (luofleetctl cancel %s)\n",
                                host, staged_sha ? staged_sha : "nothing",
                                json_str(op, "id") ?: "?", host);
                        result = EXIT_FAILED;
                } else if (strcmp(state, "normal") == 0) {
                        if (!ours) {
                                json_t *acc = NULL;
                                char opid[128];
                                r = step(cli, host, "PUT", "/v1/kernel", body, prefix, "stage", 200,
                                         202, &acc, NULL);
                                snprintf(opid, sizeof(opid), "%s:stage", prefix);
                                if (!r) {
                                        /* 200: staged; 202: the agent downloads it first */
                                        const char *now = json_str(
                                                json_object_get(json_object_get(acc, "staged"),
                                                                "kernel"),
                                                "sha256");
                                        if (!now || strcasecmp(now, sha) != 0)
                                                r = wait_staged(cli, host, index, sha, opid);
                                }
                                json_decref(acc);
                                if (r) {
                                        result = r;
                                        json_decref(doc);
                                        goto out;
                                }
                                printf("%s: staged %s (%.12s)\n", host, release, sha);
                        }
                        r = step(cli, host, "POST", "/v1/prepare", prep, prefix, "prepare", 200,
                                 200, NULL, NULL);
                        if (r)
                                result = r;
                        else {
                                printf("%s: prepared\n", host);
                                result = -1;
                        }
                } else {
                        fprintf(stderr, "luofleetctl: %s: state %s: nothing converge can do\n",
                                host, state);
                        result = EXIT_FAILED;
                }
                json_decref(doc);
                if (result >= 0)
                        goto out;
        }
        if (result < 0) {
                fprintf(stderr, "luofleetctl: %s: %s\n", host,
                        cli_interrupted ? "interrupted" : "not converged after 8 steps");
                result = EXIT_FAILED;
        }
out:
        json_decref(body);
        json_decref(prep);
        return result;
}
