/*
 * options.c: the options every command accepts (output, controller,
 * credentials, timeout, config, reason, operation id, If-Match, help), the
 * parser the commands share, the options before the command, usage errors.
 * Single-threaded (getopt's globals).
 */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#include "luofleet/macro.h"

enum {
        OPT_OUTPUT = 0x100,
        OPT_CONTROLLER,
        OPT_TOKEN_FILE,
        OPT_CA_BUNDLE,
        OPT_CERT,
        OPT_KEY,
        OPT_TIMEOUT,
        OPT_CONFIG,
        OPT_REASON,
        OPT_OPERATION_ID,
        OPT_IF_MATCH,
        OPT_VERSION,
};

static const struct option common_opts[] = {
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "controller", required_argument, NULL, OPT_CONTROLLER },
        { "token-file", required_argument, NULL, OPT_TOKEN_FILE },
        { "ca-bundle", required_argument, NULL, OPT_CA_BUNDLE },
        { "cert", required_argument, NULL, OPT_CERT },
        { "key", required_argument, NULL, OPT_KEY },
        { "timeout", required_argument, NULL, OPT_TIMEOUT },
        { "config", required_argument, NULL, OPT_CONFIG },
        { "reason", required_argument, NULL, OPT_REASON },
        { "operation-id", required_argument, NULL, OPT_OPERATION_ID },
        { "if-match", required_argument, NULL, OPT_IF_MATCH },
        { "help", no_argument, NULL, 'h' },
};

void cli_usage_error(const char *cmd, const char *fmt, ...)
{
        va_list ap;

        fprintf(stderr, "luofleetctl%s%s: ", cmd ? " " : "", cmd ? cmd : "");
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fprintf(stderr, "\nTry 'luofleetctl%s%s --help'.\n", cmd ? " " : "", cmd ? cmd : "");
}

static int set_flag(struct cli *cli, enum cfg_key k, const char *arg)
{
        char *s = strdup(arg);

        if (!s)
                return -ENOMEM;
        free(cli->flags.v[k]);
        cli->flags.v[k] = s;
        return 0;
}

/* 1: handled, 0: not a common option, <0: -ENOMEM */
static int common_option(struct cli *cli, int c, const char *arg)
{
        switch (c) {
        case OPT_OUTPUT:
                return set_flag(cli, CFG_OUTPUT, arg) ?: 1;
        case OPT_CONTROLLER:
                return set_flag(cli, CFG_CONTROLLER, arg) ?: 1;
        case OPT_TOKEN_FILE:
                return set_flag(cli, CFG_TOKEN_FILE, arg) ?: 1;
        case OPT_CA_BUNDLE:
                return set_flag(cli, CFG_CA_BUNDLE, arg) ?: 1;
        case OPT_CERT:
                return set_flag(cli, CFG_CERT, arg) ?: 1;
        case OPT_KEY:
                return set_flag(cli, CFG_KEY, arg) ?: 1;
        case OPT_TIMEOUT:
                return set_flag(cli, CFG_TIMEOUT, arg) ?: 1;
        case OPT_CONFIG:
                free(cli->config_path);
                cli->config_path = strdup(arg);
                return cli->config_path ? 1 : -ENOMEM;
        case OPT_REASON:
                cli->reason = arg;
                return 1;
        case OPT_OPERATION_ID:
                cli->operation_id = arg;
                return 1;
        case OPT_IF_MATCH:
                cli->if_match = arg;
                return 1;
        }
        return 0;
}

int cli_parse(struct cli *cli, int argc, char **argv, const char *shortopts,
              const struct option *opts, opt_handler handle, void *userdata, const char *usage,
              int *ret_optind)
{
        struct option all[96];
        char sopts[64];
        size_t n = 0;
        int c, r, n2;
        const char *cmd = argv[0];

        for (const struct option *o = opts; o && o->name; o++) {
                if (n >= ELEMENTSOF(all) - ELEMENTSOF(common_opts) - 1)
                        return EXIT_USAGE; /* a programming error: too many options */
                all[n++] = *o;
        }
        for (size_t i = 0; i < ELEMENTSOF(common_opts); i++)
                all[n++] = common_opts[i];
        memset(&all[n], 0, sizeof(all[n]));
        n2 = snprintf(sopts, sizeof(sopts), ":h%s", shortopts ? shortopts : "");
        if (n2 < 0 || (size_t)n2 >= sizeof(sopts))
                return EXIT_USAGE;

        optind = 0;
        opterr = 0;
        while ((c = getopt_long(argc, argv, sopts, all, NULL)) >= 0) {
                if (c == 'h') {
                        fputs(usage, stdout);
                        return -1;
                }
                if (c == '?') {
                        if (optopt)
                                cli_usage_error(cmd, "unknown option '-%c'", optopt);
                        else
                                cli_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
                        return EXIT_USAGE;
                }
                if (c == ':') {
                        cli_usage_error(cmd, "option '%s' needs a value", argv[optind - 1]);
                        return EXIT_USAGE;
                }
                r = common_option(cli, c, optarg);
                if (r < 0) {
                        fputs("luofleetctl: out of memory\n", stderr);
                        return EXIT_FAILED;
                }
                if (r > 0)
                        continue;
                r = handle ? handle(c, optarg, userdata) : EXIT_USAGE;
                if (r)
                        return r;
        }
        *ret_optind = optind;
        return config_resolve(cli);
}

int rollout_status_exit(const char *status)
{
        if (!status)
                return EXIT_OK;
        if (strcmp(status, "failed") == 0)
                return EXIT_RO_FAILED;
        if (strcmp(status, "paused") == 0 || strcmp(status, "blocked") == 0)
                return EXIT_RO_PAUSED;
        if (strcmp(status, "aborted") == 0)
                return EXIT_RO_ABORTED;
        return EXIT_OK;
}

int cli_parse_global(struct cli *cli, int argc, char **argv, int *ret_optind)
{
        struct option all[ELEMENTSOF(common_opts) + 2];
        int c, r;

        memcpy(all, common_opts, sizeof(common_opts));
        all[ELEMENTSOF(common_opts)] = (struct option){ "version", no_argument, NULL, OPT_VERSION };
        memset(&all[ELEMENTSOF(common_opts) + 1], 0, sizeof(all[0]));
        optind = 0;
        opterr = 0;
        while ((c = getopt_long(argc, argv, "+:h", all, NULL)) >= 0) {
                if (c == 'h') {
                        cli->help = true;
                        continue;
                }
                if (c == OPT_VERSION)
                        return -1;
                if (c == '?') {
                        if (optopt)
                                cli_usage_error(NULL, "unknown option '-%c'", optopt);
                        else
                                cli_usage_error(NULL, "unknown option '%s'", argv[optind - 1]);
                        return EXIT_USAGE;
                }
                if (c == ':') {
                        cli_usage_error(NULL, "option '%s' needs a value", argv[optind - 1]);
                        return EXIT_USAGE;
                }
                r = common_option(cli, c, optarg);
                if (r < 0) {
                        fputs("luofleetctl: out of memory\n", stderr);
                        return EXIT_FAILED;
                }
        }
        *ret_optind = optind;
        return 0;
}
