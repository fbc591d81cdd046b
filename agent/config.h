/*
 * config.h: the agent's configuration, from the command line (config.c).
 * Built once by main before any thread starts; read-only afterwards.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "luofleet/backend.h"

#define CONFIG_MAX_LISTEN 8

enum sim_reboot_mode {
        SIM_REBOOT_EXEC, /* re-execute the agent: the simulated new kernel */
        SIM_REBOOT_EXIT, /* exit 0 and let the supervisor start us again */
};

struct listen_addr {
        bool is_unix;
        char host[128]; /* numeric address or "localhost" */
        char port[8];
        char path[108]; /* unix socket path */
};

struct agent_config {
        struct backend_config backend;
        char *state_dir;
        struct listen_addr listen[CONFIG_MAX_LISTEN];
        unsigned n_listen;

        uint64_t max_wait_ms;       /* long-poll cap (default 10 min) */
        unsigned max_waiters;       /* suspended long-polls (default 10000) */
        unsigned max_streams;       /* SSE clients (default 1000) */
        unsigned max_connections;   /* MHD connection limit (default 12000) */
        uint64_t sse_heartbeat_ms;  /* default 15 s */
        uint64_t journal_max_bytes; /* default 8 MiB */
        uint64_t reboot_delay_ms;   /* after the 202 left, before the kexec (100 ms) */
        unsigned http_threads;      /* MHD threads (default 1) */
        enum sim_reboot_mode sim_reboot;
        int log_level;
        char hostname[256]; /* override; "" = gethostname() */

        /* argv as started, for the simulated reboot's re-exec */
        char **argv;
};

/*
 * Parse argv into cfg (defaults first). Returns 1 when the program should
 * exit 0 (--help, --version printed), 0 to run, -EINVAL after printing a
 * message naming the bad flag.
 */
int config_parse(struct agent_config *cfg, int argc, char **argv);
void config_done(struct agent_config *cfg);
int config_parse_listen(const char *spec, struct listen_addr *ret);
