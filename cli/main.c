/*
 * main.c: luofleetctl's entry point: the global help, the options before the
 * command (options.c) and the dispatch to cmd_*.c. Single-threaded; owns
 * struct cli for the run.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "cli.h"

#include "luofleet/macro.h"

static const char main_usage[] =
        "Usage: luofleetctl [OPTIONS] COMMAND [ARGS...]\n"
        "\n"
        "The operator's tool for luofleet: drive the per-host agents and the fleet\n"
        "controller (luofleet-rollout). Full manual: docs/cli.md.\n"
        "\n"
        "Host commands (HOST: http(s)://ADDR:PORT, ADDR:PORT, or a host name the\n"
        "controller knows):\n"
        "  state HOST... [--watch]           one row per host; --watch follows changes\n"
        "  stage HOST... --kernel=URL|PATH   stage the next kernel (PUT /v1/kernel)\n"
        "  prepare HOST... [--lease=SECONDS] prepare the live update\n"
        "  cancel HOST...                    cancel a prepared update\n"
        "  reboot HOST... [--wait]           kexec into the staged kernel\n"
        "  finish HOST... [--force]          finish the update on the new kernel\n"
        "  rollback HOST...                  go back to the previous kernel\n"
        "  converge HOST --kernel=URL|PATH   stage, prepare, reboot, finish: the next step\n"
        "                                    to the target, re-runnable (exit 7: under way)\n"
        "  history HOST [--kind=K] [--limit=N]  the agent's journal\n"
        "  session list HOST                 the workloads' sessions (GET /v1/sessions)\n"
        "  session show HOST NAME [--owner=UID]  one session and its files\n"
        "\n"
        "Fleet commands (need a controller):\n"
        "  hosts [--selector=K=V]            the controller's inventory\n"
        "  rollout plan|create [-f FILE] [SPEC FLAGS]\n"
        "  rollout status [ID]               list rollouts, or one in detail\n"
        "  rollout watch ID                  follow a rollout until it ends or pauses\n"
        "  rollout pause|resume|abort ID [--reason=TEXT]\n"
        "\n"
        "Signatures (for stage --signature; docs/staging.md):\n"
        "  luofleetctl sign --key=PRIVATE.pem --kernel-sha256=HEX [--initrd-sha256=HEX]\n"
        "                   --cmdline=STRING [--key-id=NAME]\n"
        "\n"
        "Common options (before or after the command):\n"
        "  --output=table|json   human tables (default) or the server's JSON documents\n"
        "                        (one JSON value per line)\n"
        "  --controller=URL      the controller (env LUOFLEET_CONTROLLER)\n"
        "  --token-file=FILE     bearer token file, first line (env LUOFLEET_TOKEN_FILE;\n"
        "                        LUOFLEET_TOKEN gives the token itself)\n"
        "  --ca-bundle=FILE      CA certificates to verify servers (LUOFLEET_CA_BUNDLE)\n"
        "  --cert=FILE --key=FILE  TLS client certificate and key (LUOFLEET_CERT, _KEY)\n"
        "  --timeout=DURATION    per request (default 30s; \"500ms\", \"30s\", \"2m\")\n"
        "  --config=FILE         config file (env LUOFLEETCTL_CONFIG; default\n"
        "                        $XDG_CONFIG_HOME/luofleet/luofleetctl.conf, then\n"
        "                        /etc/luofleet/luofleetctl.conf)\n"
        "  --reason=TEXT --operation-id=ID --if-match=ETAG  for the host actions\n"
        "  -h, --help            help (also per command: luofleetctl state --help)\n"
        "  --version             the version\n"
        "Precedence: flags > environment > config file > defaults.\n"
        "\n"
        "Exit status:\n"
        "  0  success; the rollout completed\n"
        "  1  a request failed or was refused (also: some of several hosts failed)\n"
        "  2  usage or configuration error\n"
        "  3  the rollout failed\n"
        "  4  the rollout is paused or blocked\n"
        "  5  the rollout was aborted\n"
        "  6  could not connect (no HTTP answer from any host asked)\n"
        "  7  converge: the host is on its way to the target (rebooting): run it again\n";

static int dispatch(struct cli *cli, int argc, char **argv)
{
        const char *cmd = argv[0];
        static const char *const actions[] = { "prepare", "cancel", "reboot", "finish",
                                               "rollback" };

        if (strcmp(cmd, "state") == 0)
                return cmd_state(cli, argc, argv);
        if (strcmp(cmd, "stage") == 0)
                return cmd_stage(cli, argc, argv);
        for (size_t i = 0; i < ELEMENTSOF(actions); i++)
                if (strcmp(cmd, actions[i]) == 0)
                        return cmd_action(cli, actions[i], argc, argv);
        if (strcmp(cmd, "converge") == 0)
                return cmd_converge(cli, argc, argv);
        if (strcmp(cmd, "history") == 0)
                return cmd_history(cli, argc, argv);
        if (strcmp(cmd, "session") == 0)
                return cmd_session(cli, argc, argv);
        if (strcmp(cmd, "hosts") == 0)
                return cmd_hosts(cli, argc, argv);
        if (strcmp(cmd, "rollout") == 0)
                return cmd_rollout(cli, argc, argv);
        if (strcmp(cmd, "help") == 0) {
                fputs(main_usage, stdout);
                return EXIT_OK;
        }
        cli_usage_error(NULL, "unknown command '%s'", cmd);
        return EXIT_USAGE;
}

int main(int argc, char **argv)
{
        struct cli cli = { 0 };
        int r, first;

        /* `sign` keeps its own parser and behaviour (docs/staging.md). */
        if (argc >= 2 && strcmp(argv[1], "sign") == 0)
                return cmd_sign(argc - 1, argv + 1);

        r = cli_parse_global(&cli, argc, argv, &first);
        if (r) {
                cli_free(&cli);
                if (r < 0)
                        printf("luofleetctl %s\n", LUOFLEET_VERSION);
                return r < 0 ? EXIT_OK : r;
        }
        if (first >= argc) {
                cli_free(&cli);
                if (cli.help) {
                        fputs(main_usage, stdout);
                        return EXIT_OK;
                }
                fputs(main_usage, stderr);
                return EXIT_USAGE;
        }
        if (cli.help) {
                /* luofleetctl --help state: the command's help */
                char *hargv[] = { argv[first], (char *)"--help", NULL };
                r = dispatch(&cli, 2, hargv);
                cli_free(&cli);
                return r;
        }
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
                fputs("luofleetctl: could not initialise libcurl\n", stderr);
                cli_free(&cli);
                return EXIT_FAILED;
        }
        r = dispatch(&cli, argc - first, argv + first);
        cli_free(&cli);
        curl_global_cleanup();
        return r;
}
