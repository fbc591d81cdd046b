/*
 * config.h: the agent's configuration, from the command line (config.c).
 * Built once by main before any thread starts; read-only afterwards.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "luofleet/backend.h"
#include "luofleet/broker.h"
#include "luofleet/session_proto.h"

#define CONFIG_MAX_LISTEN 8
#define STATE_DIR_DEFAULT "/var/lib/luofleet"
#define CONFIG_MAX_STAGING_DIRS 8
#define CONFIG_MAX_ALLOWED 16 /* --allowed-host, --allowed-origin */

/* --anonymous: read endpoints open without credentials when auth is on. */
enum {
        ANON_STATE = 1u << 0,   /* GET /v1/state (and long-poll) */
        ANON_METRICS = 1u << 1, /* GET /metrics */
        ANON_READYZ = 1u << 2,  /* GET /readyz */
};

enum sim_reboot_mode {
        SIM_REBOOT_EXEC, /* re-execute the agent: the simulated new kernel */
        SIM_REBOOT_EXIT, /* exit 0 and let the supervisor start us again */
};

/* --sim-downtime=never: the simulated machine does not come back after its kexec. */
#define SIM_DOWNTIME_NEVER UINT64_MAX
/* The longest --sim-downtime=DURATION. */
#define SIM_DOWNTIME_MAX_MS (60ull * 60 * 1000)

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

        /* Limits against hostile or broken clients (server.c). */
        unsigned max_connections_per_ip; /* default 1024 */
        size_t max_header_bytes;         /* per-connection memory: headers (16 KiB) */
        size_t max_body_bytes;           /* request body (64 KiB) */
        uint64_t header_timeout_ms;      /* whole request head must arrive (10 s) */
        uint64_t idle_timeout_ms;        /* connection idle (60 s) */

        /* Kernel staging: local paths must lie under one of these (staging.c). */
        char *staging_dirs[CONFIG_MAX_STAGING_DIRS];
        unsigned n_staging_dirs;

        /* Transport security and identity (tls.c, auth.c). */
        char *tls_cert;      /* PEM certificate chain; NULL = plain HTTP */
        char *tls_key;       /* PEM private key */
        char *tls_client_ca; /* PEM CA bundle: client certificates required */
        int tls_client_role; /* enum auth_role of a verified client certificate */
        char *tokens_file;   /* NULL = no bearer tokens */
        char *unix_group;    /* group whose members are operators on the Unix socket */
        unsigned anonymous;  /* ANON_* bits: endpoints open without credentials */
        bool insecure;       /* non-loopback without TLS and auth allowed */
        /* Browsers (websec.c): more Host names for loopback listeners, Origins accepted. */
        char *allowed_hosts[CONFIG_MAX_ALLOWED]; /* normalized by websec_parse_allowed_host */
        unsigned n_allowed_hosts;
        char *allowed_origins[CONFIG_MAX_ALLOWED]; /* normalized by websec_parse_allowed_origin */
        unsigned n_allowed_origins;

        /* Kernel staging from URLs (download.c) and signatures. */
        char *ca_bundle;              /* PEM CA bundle for https downloads; NULL = system */
        bool allow_http;              /* plain http:// URLs allowed */
        uint64_t download_max_bytes;  /* per file (default 512 MiB) */
        uint64_t download_connect_ms; /* connect timeout (10 s) */
        uint64_t download_timeout_ms; /* whole transfer (10 min) */
        unsigned download_retries;    /* after the first attempt (3) */
        char *trusted_keys_dir;       /* Ed25519 public keys (PEM); NULL = none */
        bool require_signature;       /* staging requests must be signed */

        /* Workload hooks (hooks.c). */
        char *hooks_dir;          /* DIR/<phase>.d/; NULL = no hooks */
        uint64_t hook_timeout_ms; /* per hook (60 s) */
        size_t hook_output_max;   /* bytes of output kept per hook (16 KiB) */

        /* Dead-man lease (lease.c). */
        uint64_t max_lease_ms; /* longest lease_seconds accepted (24 h) */

        /* The workload session broker (broker/broker.c, docs/sessions.md). */
        char *sessions_socket; /* where workloads connect; NULL with sessions_disabled */
        bool sessions_disabled;
        bool sessions_socket_default; /* not given: a failure to bind it is not fatal */
        unsigned sessions_socket_mode;
        char *sessions_group;
        uint32_t workload_confirm_timeout_ms;
        uint32_t workload_reboot_timeout_ms;
        unsigned session_max_per_owner;
        unsigned session_max_fds_per_owner;
        uint64_t session_max_bytes_per_owner;
        unsigned session_max_clients;

        /* Privilege separation (kernel/privsep.c, main.c). */
        bool privsep;   /* kernel calls in a separate privileged process */
        char *run_user; /* drop the network process to this user (when root) */
        enum sim_reboot_mode sim_reboot;
        /* --sim-downtime: how long the simulated machine stays offline at its kexec (nothing
         * listens), 0 = comes back at once, SIM_DOWNTIME_NEVER = never (main.c's sim_jump) */
        uint64_t sim_downtime_ms;
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
/* 127.0.0.0/8, ::1, "localhost" or a Unix socket. */
bool listen_is_loopback(const struct listen_addr *la);
/* The cross-flag rules (TLS pairs, no non-loopback without TLS + auth). */
int config_check_security(const struct agent_config *cfg);
