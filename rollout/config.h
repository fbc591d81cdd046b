/*
 * config.h: luofleet-rollout's configuration: command-line flags, a config
 * file of "key = value" lines with the same names (--config=FILE, or
 * $LUOFLEET_ROLLOUT_CONFIG), and the test hook LUOFLEET_TEST_TIME_OFFSET.
 * Built once by main before any thread starts; read-only afterwards.
 *
 * The functions carry a rollout_config_ prefix rather than config_: the
 * daemon links the agent's library (lfagent), whose config.c already
 * exports config_parse() and config_done(), and this file reuses its
 * config_parse_listen() and listen_is_loopback().
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "../agent/config.h" /* struct listen_addr, config_parse_listen(), listen_is_loopback() */

#define ROLLOUT_CONFIG_MAX_LISTEN 8
#define ROLLOUT_DEFAULT_DB "/var/lib/luofleet-rollout/rollout.db"
#define ROLLOUT_DEFAULT_LISTEN "127.0.0.1:7480"
#define ROLLOUT_CONFIG_ENV "LUOFLEET_ROLLOUT_CONFIG"
#define ROLLOUT_TIME_OFFSET_ENV "LUOFLEET_TEST_TIME_OFFSET"

#define ROLLOUT_AGENT_ALLOW_MAX 64

struct rollout_config {
        struct listen_addr listen[ROLLOUT_CONFIG_MAX_LISTEN];
        unsigned n_listen;

        char *db_path;        /* SQLite file (default ROLLOUT_DEFAULT_DB) */
        char *inventory_path; /* hosts file, or NULL */
        char *config_path;    /* the config file read, or NULL */

        /* How the controller reaches the agents. */
        char *agent_ca_bundle, *agent_cert, *agent_key, *agent_token_file;
        bool allow_http_agents; /* http:// agent URLs off loopback (the token never goes) */
        char *agent_allow[ROLLOUT_AGENT_ALLOW_MAX]; /* names, *.suffix, CIDRs; none: any */
        unsigned n_agent_allow;
        uint64_t poll_wait_ms, retry_min_ms, retry_max_ms;
        uint64_t connect_timeout_ms, request_timeout_ms;
        unsigned max_agent_connections;
        char *name; /* operation-id prefix (default "lf") */

        /* The controller's own API. */
        char *tls_cert, *tls_key, *tls_client_ca; /* HTTPS; client certificates */
        char *tokens_file;                        /* bearer tokens (the agent's format) */
        bool insecure;                            /* non-loopback without TLS and tokens allowed */
        unsigned max_connections;                 /* concurrent API connections per listener */
        uint64_t sse_keepalive_ms;                /* comment line on idle event streams (15 s) */

        int64_t time_offset_s; /* LUOFLEET_TEST_TIME_OFFSET (test hook) */
        int log_level;
};

/*
 * Defaults, then the config file, then argv (which wins; a --listen on the
 * command line replaces the file's). Returns 1 when the program should exit
 * 0 (--help, --version printed), 0 to run, -EINVAL after printing a message
 * that names the bad flag or file line (exit status 2), -ENOMEM.
 */
int rollout_config_parse(struct rollout_config *cfg, int argc, char **argv);
void rollout_config_done(struct rollout_config *cfg);
