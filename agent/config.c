/*
 * config.c: command-line parsing for luofleet-agent. Main thread, before any
 * other thread exists. Every flag has a default; every bad value is named.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "auth.h"
#include "config.h"
#include "luofleet/log.h"
#include "luofleet/util.h"
#include "websec.h"

static void usage(FILE *f)
{
        fputs("Usage: luofleet-agent [OPTIONS]\n"
              "\n"
              "Serve a host's Linux live-update (LUO) state over HTTP and drive prepare,\n"
              "reboot, finish and cancel against the kernel, safely and idempotently.\n"
              "\n"
              "Kernel backend:\n"
              "  --backend=KIND          luo-sessions (Linux 6.19+ sessions), luo-v3 (the v3\n"
              "                          interface), sim (a simulated kernel, no root needed)\n"
              "                          or auto (default: luo-v3 when /sys/kernel/liveupdate/\n"
              "                          state exists, else luo-sessions when /dev/liveupdate\n"
              "                          does)\n"
              "  --root=DIR              resolve /sys, /dev and /proc under DIR (default /)\n"
              "  --state-dir=DIR         journal and simulator state (default /var/lib/luofleet)\n"
              "\n"
              "HTTP:\n"
              "  --listen=ADDR:PORT      TCP address (default 127.0.0.1:8421; [::1]:8421 for\n"
              "                          IPv6; port 0 picks a free port); repeatable\n"
              "  --listen=unix:PATH      a Unix socket instead or as well\n"
              "  --max-wait=DURATION     longest long-poll wait (default 10m; units ms, s, m)\n"
              "  --max-waiters=N         suspended long-polls before 503 (default 10000)\n"
              "  --max-streams=N         event-stream clients before 503 (default 1000)\n"
              "  --max-connections=N     open connections, all listeners together (16384)\n"
              "  --sse-heartbeat=DURATION  comment line on idle streams (default 15s)\n"
              "  --reboot-delay=DURATION time between the 202 leaving and the kexec (100ms)\n"
              "  --http-threads=N        HTTP threads per listener (default 1; more answer\n"
              "                          large long-poll fan-outs on several cores)\n"
              "\n"
              "Limits:\n"
              "  --max-connections-per-ip=N  connections from one address (default 1024)\n"
              "  --max-header-bytes=N    request line and headers per connection (16384)\n"
              "  --max-body-bytes=N      request body (default 65536)\n"
              "  --header-timeout=DURATION  a request (head and body) must arrive within\n"
              "                          this, however slowly it trickles in (default 10s)\n"
              "  --idle-timeout=DURATION close connections idle this long (default 60s)\n"
              "\n"
              "Security:\n"
              "  --tls-cert=FILE         serve HTTPS with this PEM certificate chain\n"
              "  --tls-key=FILE          and this PEM private key (both reread on SIGHUP)\n"
              "  --tls-client-ca=FILE    require client certificates signed by these CAs\n"
              "  --tls-client-role=ROLE  role of a verified client certificate when no token\n"
              "                          is given: viewer, operator (default) or admin\n"
              "  --tokens=FILE           bearer tokens (lines: NAME ROLE SHA256); the file must\n"
              "                          not be readable by group or others; reread on SIGHUP\n"
              "  --unix-group=GROUP      members are operators on the Unix socket (root always)\n"
              "  --anonymous=LIST        with tokens or client certificates: open any of state,\n"
              "                          metrics, readyz to callers without credentials\n"
              "                          (default none; /healthz is always open)\n"
              "  --insecure              allow a non-loopback listener without TLS and auth\n"
              "  --allowed-host=NAME     a name besides localhost, 127.0.0.0/8 and [::1] that\n"
              "                          requests to a loopback listener may carry in Host\n"
              "                          (against DNS rebinding); repeatable\n"
              "  --allowed-origin=URL    a browser origin (https://dash.example:3000) whose\n"
              "                          requests are served; any other Origin header is\n"
              "                          refused (default: none); repeatable\n"
              "  --staging-dir=DIR       kernel images may be staged from under DIR only\n"
              "                          (default /boot and STATE_DIR/kernels); repeatable\n"
              "  --privsep=yes|no        kernel calls in a separate privileged process (yes)\n"
              "  --user=NAME             when started as root, the network-facing process\n"
              "                          runs as NAME (default luofleet, which must exist)\n"
              "\n"
              "Kernel staging from URLs:\n"
              "  --ca-bundle=FILE        CA certificates for https downloads (default: the\n"
              "                          system's); certificate verification is always on\n"
              "  --allow-http            accept plain http:// URLs (default: https and file)\n"
              "  --download-max-bytes=N  largest kernel or initrd (default 536870912)\n"
              "  --download-connect-timeout=DURATION  (default 10s)\n"
              "  --download-timeout=DURATION  whole transfer of one file (default 10m)\n"
              "  --download-retries=N    retries with backoff after a failed attempt (3)\n"
              "  --trusted-keys=DIR      Ed25519 public keys (PEM) that may sign staging\n"
              "  --require-signature     refuse staging requests without a valid signature\n"
              "\n"
              "Workload hooks and leases:\n"
              "  --hooks-dir=DIR         run DIR/<phase>.d/* around each action (see docs)\n"
              "  --hook-timeout=DURATION per hook (default 60s)\n"
              "  --hook-output-max=N     bytes of a hook's output kept (default 16384)\n"
              "  --max-lease=DURATION    longest prepare lease accepted (default 24h)\n"
              "\n"
              "Workload sessions (the broker; docs/sessions.md):\n"
              "  --sessions-socket=PATH|none  where workloads connect (default: as root with\n"
              "                          the default state directory /run/luofleet/\n"
              "                          sessions.sock, else STATE_DIR/sessions.sock);\n"
              "                          none: no workload sessions\n"
              "  --sessions-socket-mode=MODE  its mode (default 0660)\n"
              "  --sessions-group=GROUP  its group (default: the agent's)\n"
              "  --workload-confirm-timeout=DURATION  how long registered workloads have to\n"
              "                          confirm a prepare (default 30s)\n"
              "  --workload-reboot-timeout=DURATION  how long a reboot waits for registered\n"
              "                          workloads to answer its event (default 2s)\n"
              "  --session-max-per-owner=N  sessions per workload uid (default 16)\n"
              "  --session-max-fds-per-owner=N  preserved files per uid (default 256)\n"
              "  --session-max-bytes-per-owner=SIZE  preserved bytes per uid (default 64G)\n"
              "  --session-max-clients=N connected workloads (default 64)\n"
              "\n"
              "Journal:\n"
              "  --journal-max-bytes=N   compact the journal above N bytes (default 8388608)\n"
              "\n"
              "Simulator (--backend=sim):\n"
              "  --sim-fault=OP=ERRNO[:DELAYms]  make OP fail with ERRNO (and/or stall):\n"
              "                          OP is prepare, freeze, finish, cancel, reboot or\n"
              "                          kexec-load; e.g. --sim-fault=prepare=EBUSY,\n"
              "                          --sim-fault=finish=250ms; repeatable\n"
              "  --sim-release=STRING    kernel release the simulator reports\n"
              "  --sim-reboot=exec|exit  after a simulated kexec, re-execute the agent\n"
              "                          (default) or exit 0 for a supervisor to restart it\n"
              "  --sim-downtime=DURATION|never  with --sim-reboot=exec: at the simulated\n"
              "                          kexec close every listener and connection (clients\n"
              "                          get connection refused), stay offline this long\n"
              "                          (units ms, s, m; at most 1h), then come back on the\n"
              "                          same addresses; never: exit 0, the machine does not\n"
              "                          come back (default 0: back at once, sockets kept)\n"
              "  --sim-boot-release=[IMAGE=]STRING  after a simulated kexec (into an image\n"
              "                          whose header names IMAGE), report this release\n"
              "                          instead of the staged image's (a wrong-kernel fault)\n"
              "\n"
              "Commands:\n"
              "  luofleet-agent token NAME [ROLE]  print a new random token and the line\n"
              "                          to add to the tokens file (ROLE default operator)\n"
              "\n"
              "Other:\n"
              "  --hostname=NAME         hostname reported in /v1/state\n"
              "  --log-level=LEVEL       error, warning, notice, info (default), debug\n"
              "  -h, --help              show this help\n"
              "  --version               show the version\n"
              "\n"
              "Exit status: 0 stopped cleanly, 1 runtime failure, 2 usage error, 3 no kernel\n"
              "backend, 4 another agent holds /dev/liveupdate or the state directory.\n",
              f);
}

int config_parse_listen(const char *spec, struct listen_addr *ret)
{
        struct listen_addr la = { 0 };
        const char *colon;
        uint64_t port;

        if (strncmp(spec, "unix:", 5) == 0) {
                const char *p = spec + 5;
                if (p[0] != '/')
                        return -EINVAL;
                if (strlen(p) >= sizeof(la.path))
                        return -ENAMETOOLONG;
                la.is_unix = true;
                snprintf(la.path, sizeof(la.path), "%s", p);
                *ret = la;
                return 0;
        }
        if (spec[0] == '[') {
                const char *end = strchr(spec, ']');
                if (!end || end[1] != ':' || (size_t)(end - spec - 1) >= sizeof(la.host))
                        return -EINVAL;
                memcpy(la.host, spec + 1, (size_t)(end - spec - 1));
                colon = end + 1;
        } else {
                colon = strrchr(spec, ':');
                if (!colon || (size_t)(colon - spec) >= sizeof(la.host))
                        return -EINVAL;
                memcpy(la.host, spec, (size_t)(colon - spec));
                if (!la.host[0])
                        snprintf(la.host, sizeof(la.host), "0.0.0.0");
        }
        if (parse_u64(colon + 1, 65535, &port) < 0)
                return -EINVAL;
        snprintf(la.port, sizeof(la.port), "%u", (unsigned)port);
        *ret = la;
        return 0;
}

enum {
        ARG_BACKEND = 0x100,
        ARG_ROOT,
        ARG_STATE_DIR,
        ARG_LISTEN,
        ARG_MAX_WAIT,
        ARG_MAX_WAITERS,
        ARG_MAX_STREAMS,
        ARG_MAX_CONNECTIONS,
        ARG_SSE_HEARTBEAT,
        ARG_REBOOT_DELAY,
        ARG_JOURNAL_MAX,
        ARG_HTTP_THREADS,
        ARG_SIM_FAULT,
        ARG_SIM_RELEASE,
        ARG_SIM_REBOOT,
        ARG_SIM_DOWNTIME,
        ARG_SIM_BOOT_RELEASE,
        ARG_HOSTNAME,
        ARG_LOG_LEVEL,
        ARG_VERSION,
        ARG_MAX_CONN_PER_IP,
        ARG_MAX_HEADER_BYTES,
        ARG_MAX_BODY_BYTES,
        ARG_HEADER_TIMEOUT,
        ARG_IDLE_TIMEOUT,
        ARG_STAGING_DIR,
        ARG_TLS_CERT,
        ARG_TLS_KEY,
        ARG_TLS_CLIENT_CA,
        ARG_TLS_CLIENT_ROLE,
        ARG_TOKENS,
        ARG_UNIX_GROUP,
        ARG_ANONYMOUS,
        ARG_INSECURE,
        ARG_ALLOWED_HOST,
        ARG_ALLOWED_ORIGIN,
        ARG_PRIVSEP,
        ARG_USER,
        ARG_CA_BUNDLE,
        ARG_ALLOW_HTTP,
        ARG_DOWNLOAD_MAX,
        ARG_DOWNLOAD_CONNECT,
        ARG_DOWNLOAD_TIMEOUT,
        ARG_DOWNLOAD_RETRIES,
        ARG_TRUSTED_KEYS,
        ARG_REQUIRE_SIGNATURE,
        ARG_HOOKS_DIR,
        ARG_HOOK_TIMEOUT,
        ARG_HOOK_OUTPUT_MAX,
        ARG_MAX_LEASE,
        ARG_SESSIONS_SOCKET,
        ARG_SESSIONS_SOCKET_MODE,
        ARG_SESSIONS_GROUP,
        ARG_WORKLOAD_CONFIRM_TIMEOUT,
        ARG_WORKLOAD_REBOOT_TIMEOUT,
        ARG_SESSION_MAX_PER_OWNER,
        ARG_SESSION_MAX_FDS,
        ARG_SESSION_MAX_BYTES,
        ARG_SESSION_MAX_CLIENTS,
};

static int bad(const char *flag, const char *value, const char *want)
{
        fprintf(stderr, "luofleet-agent: invalid %s=%s: %s\n", flag, value, want);
        return -EINVAL;
}

/* A duration for messages: "100ms", "60s", "10m", "24h", "7d". */
static void fmt_duration(uint64_t ms, char *buf, size_t size)
{
        if (ms % (24 * 3600 * 1000ull) == 0 && ms >= 24 * 3600 * 1000ull)
                snprintf(buf, size, "%llud", (unsigned long long)(ms / (24 * 3600 * 1000ull)));
        else if (ms % 3600000 == 0 && ms)
                snprintf(buf, size, "%lluh", (unsigned long long)(ms / 3600000));
        else if (ms % 60000 == 0 && ms)
                snprintf(buf, size, "%llum", (unsigned long long)(ms / 60000));
        else if (ms % 1000 == 0)
                snprintf(buf, size, "%llus", (unsigned long long)(ms / 1000));
        else
                snprintf(buf, size, "%llums", (unsigned long long)ms);
}

/*
 * A duration flag, in the one grammar of every luofleet program (parse_duration_ms: "90s",
 * "30m", "2h", "1h30m", "500ms", bare seconds), from min to max ms: 0, or -EINVAL after a
 * message that says whether the form or the size is wrong.
 */
static int duration_arg(const char *flag, const char *v, uint64_t min, uint64_t max, uint64_t *ret)
{
        char lo[32], hi[32], want[128];
        uint64_t ms;
        int r = parse_duration_ms(v, max, &ms);

        if (r == 0 && ms >= min) {
                *ret = ms;
                return 0;
        }
        fmt_duration(min, lo, sizeof(lo));
        fmt_duration(max, hi, sizeof(hi));
        if (r == -EINVAL)
                snprintf(want, sizeof(want),
                         "expected a duration such as 90s, 30m, 2h, 1h30m or 500ms (%s to %s)", lo,
                         hi);
        else
                snprintf(want, sizeof(want), "out of range: %s to %s", lo, hi);
        return bad(flag, v, want);
}

static int set_str(char **dst, const char *v)
{
        char *s = strdup(v);
        if (!s)
                return -ENOMEM;
        free(*dst);
        *dst = s;
        return 0;
}

static bool ends_with(const char *s, const char *suffix)
{
        size_t n = strlen(s), m = strlen(suffix);
        return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int parse_anonymous(const char *v, unsigned *ret)
{
        char buf[128], *save = NULL;
        unsigned bits = 0;

        if (strlen(v) >= sizeof(buf))
                return -EINVAL;
        snprintf(buf, sizeof(buf), "%s", v);
        for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                if (strcmp(t, "state") == 0)
                        bits |= ANON_STATE;
                else if (strcmp(t, "metrics") == 0)
                        bits |= ANON_METRICS;
                else if (strcmp(t, "readyz") == 0)
                        bits |= ANON_READYZ;
                else if (strcmp(t, "none") != 0)
                        return -EINVAL;
        }
        *ret = bits;
        return 0;
}

/* "N", or N with a binary suffix K, M, G or T (at most 2^60 bytes). */
static int parse_size(const char *v, uint64_t *ret)
{
        static const char units[] = "KMGT";
        char num[32];
        size_t n = strlen(v);
        unsigned shift = 0;
        uint64_t x;

        if (n == 0 || n >= sizeof(num))
                return -EINVAL;
        memcpy(num, v, n + 1);
        const char *u = strchr(units, num[n - 1]);
        if (u && num[n - 1]) {
                shift = 10u * (unsigned)(u - units + 1);
                num[n - 1] = 0;
        }
        if (parse_u64(num, (UINT64_C(1) << 60) >> shift, &x) < 0)
                return -EINVAL;
        *ret = x << shift;
        return 0;
}

static int parse_count(const char *flag, const char *v, uint64_t min, uint64_t max, unsigned *ret)
{
        uint64_t n;
        if (parse_u64(v, max, &n) < 0 || n < min) {
                char want[96];
                snprintf(want, sizeof(want), "expected an integer from %llu to %llu",
                         (unsigned long long)min, (unsigned long long)max);
                return bad(flag, v, want);
        }
        *ret = (unsigned)n;
        return 0;
}

int config_parse(struct agent_config *cfg, int argc, char **argv)
{
        static const struct option opts[] = {
                { "backend", required_argument, NULL, ARG_BACKEND },
                { "root", required_argument, NULL, ARG_ROOT },
                { "state-dir", required_argument, NULL, ARG_STATE_DIR },
                { "listen", required_argument, NULL, ARG_LISTEN },
                { "max-wait", required_argument, NULL, ARG_MAX_WAIT },
                { "max-waiters", required_argument, NULL, ARG_MAX_WAITERS },
                { "max-streams", required_argument, NULL, ARG_MAX_STREAMS },
                { "max-connections", required_argument, NULL, ARG_MAX_CONNECTIONS },
                { "sse-heartbeat", required_argument, NULL, ARG_SSE_HEARTBEAT },
                { "reboot-delay", required_argument, NULL, ARG_REBOOT_DELAY },
                { "journal-max-bytes", required_argument, NULL, ARG_JOURNAL_MAX },
                { "http-threads", required_argument, NULL, ARG_HTTP_THREADS },
                { "sim-fault", required_argument, NULL, ARG_SIM_FAULT },
                { "sim-release", required_argument, NULL, ARG_SIM_RELEASE },
                { "sim-reboot", required_argument, NULL, ARG_SIM_REBOOT },
                { "sim-downtime", required_argument, NULL, ARG_SIM_DOWNTIME },
                { "sim-boot-release", required_argument, NULL, ARG_SIM_BOOT_RELEASE },
                { "hostname", required_argument, NULL, ARG_HOSTNAME },
                { "log-level", required_argument, NULL, ARG_LOG_LEVEL },
                { "max-connections-per-ip", required_argument, NULL, ARG_MAX_CONN_PER_IP },
                { "max-header-bytes", required_argument, NULL, ARG_MAX_HEADER_BYTES },
                { "max-body-bytes", required_argument, NULL, ARG_MAX_BODY_BYTES },
                { "header-timeout", required_argument, NULL, ARG_HEADER_TIMEOUT },
                { "idle-timeout", required_argument, NULL, ARG_IDLE_TIMEOUT },
                { "staging-dir", required_argument, NULL, ARG_STAGING_DIR },
                { "tls-cert", required_argument, NULL, ARG_TLS_CERT },
                { "tls-key", required_argument, NULL, ARG_TLS_KEY },
                { "tls-client-ca", required_argument, NULL, ARG_TLS_CLIENT_CA },
                { "tls-client-role", required_argument, NULL, ARG_TLS_CLIENT_ROLE },
                { "tokens", required_argument, NULL, ARG_TOKENS },
                { "unix-group", required_argument, NULL, ARG_UNIX_GROUP },
                { "anonymous", required_argument, NULL, ARG_ANONYMOUS },
                { "insecure", no_argument, NULL, ARG_INSECURE },
                { "allowed-host", required_argument, NULL, ARG_ALLOWED_HOST },
                { "allowed-origin", required_argument, NULL, ARG_ALLOWED_ORIGIN },
                { "privsep", required_argument, NULL, ARG_PRIVSEP },
                { "user", required_argument, NULL, ARG_USER },
                { "ca-bundle", required_argument, NULL, ARG_CA_BUNDLE },
                { "allow-http", no_argument, NULL, ARG_ALLOW_HTTP },
                { "download-max-bytes", required_argument, NULL, ARG_DOWNLOAD_MAX },
                { "download-connect-timeout", required_argument, NULL, ARG_DOWNLOAD_CONNECT },
                { "download-timeout", required_argument, NULL, ARG_DOWNLOAD_TIMEOUT },
                { "download-retries", required_argument, NULL, ARG_DOWNLOAD_RETRIES },
                { "trusted-keys", required_argument, NULL, ARG_TRUSTED_KEYS },
                { "require-signature", no_argument, NULL, ARG_REQUIRE_SIGNATURE },
                { "hooks-dir", required_argument, NULL, ARG_HOOKS_DIR },
                { "hook-timeout", required_argument, NULL, ARG_HOOK_TIMEOUT },
                { "hook-output-max", required_argument, NULL, ARG_HOOK_OUTPUT_MAX },
                { "max-lease", required_argument, NULL, ARG_MAX_LEASE },
                { "sessions-socket", required_argument, NULL, ARG_SESSIONS_SOCKET },
                { "sessions-socket-mode", required_argument, NULL, ARG_SESSIONS_SOCKET_MODE },
                { "sessions-group", required_argument, NULL, ARG_SESSIONS_GROUP },
                { "workload-confirm-timeout", required_argument, NULL,
                  ARG_WORKLOAD_CONFIRM_TIMEOUT },
                { "workload-reboot-timeout", required_argument, NULL, ARG_WORKLOAD_REBOOT_TIMEOUT },
                { "session-max-per-owner", required_argument, NULL, ARG_SESSION_MAX_PER_OWNER },
                { "session-max-fds-per-owner", required_argument, NULL, ARG_SESSION_MAX_FDS },
                { "session-max-bytes-per-owner", required_argument, NULL, ARG_SESSION_MAX_BYTES },
                { "session-max-clients", required_argument, NULL, ARG_SESSION_MAX_CLIENTS },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                {},
        };
        uint64_t v;
        int c, r;

        *cfg = (struct agent_config){
                .backend = { .kind = BACKEND_AUTO, .root = "/" },
                .max_wait_ms = 10 * 60 * 1000,
                .max_waiters = 10000,
                .max_streams = 1000,
                .max_connections = 16384,
                .sse_heartbeat_ms = 15000,
                .journal_max_bytes = 8 * 1024 * 1024,
                .reboot_delay_ms = 100,
                .http_threads = 1,
                .max_connections_per_ip = 1024,
                .max_header_bytes = 16 * 1024,
                .max_body_bytes = 64 * 1024,
                .header_timeout_ms = 10 * 1000,
                .idle_timeout_ms = 60 * 1000,
                .tls_client_role = ROLE_OPERATOR,
                .privsep = true,
                .download_max_bytes = 512ull * 1024 * 1024,
                .download_connect_ms = 10 * 1000,
                .download_timeout_ms = 10 * 60 * 1000,
                .download_retries = 3,
                .hook_timeout_ms = 60 * 1000,
                .hook_output_max = 16 * 1024,
                .max_lease_ms = 24ull * 3600 * 1000,
                .sessions_socket_mode = 0660,
                .workload_confirm_timeout_ms = BROKER_DEFAULT_CONFIRM_TIMEOUT_MS,
                .workload_reboot_timeout_ms = BROKER_DEFAULT_REBOOT_TIMEOUT_MS,
                .session_max_per_owner = BROKER_DEFAULT_MAX_SESSIONS_PER_OWNER,
                .session_max_fds_per_owner = BROKER_DEFAULT_MAX_FDS_PER_OWNER,
                .session_max_bytes_per_owner = BROKER_DEFAULT_MAX_BYTES_PER_OWNER,
                .session_max_clients = BROKER_DEFAULT_MAX_CLIENTS,
                .sim_reboot = SIM_REBOOT_EXEC,
                .log_level = LOG_LEVEL_INFO,
                .argv = argv,
        };
        cfg->state_dir = strdup(STATE_DIR_DEFAULT);
        if (!cfg->state_dir)
                return -ENOMEM;

        optind = 1;
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        usage(stdout);
                        return 1;
                case ARG_VERSION:
                        printf("luofleet-agent %s\n", LUOFLEET_VERSION);
                        return 1;
                case ARG_BACKEND:
                        r = backend_kind_from_string(optarg);
                        if (r < 0)
                                return bad("--backend", optarg,
                                           "expected luo-sessions, luo-v3, sim or auto");
                        cfg->backend.kind = r;
                        break;
                case ARG_ROOT:
                        if (optarg[0] != '/')
                                return bad("--root", optarg, "expected an absolute directory");
                        cfg->backend.root = optarg;
                        break;
                case ARG_STATE_DIR:
                        if (optarg[0] != '/' && optarg[0] != '.')
                                return bad("--state-dir", optarg, "expected a directory path");
                        free(cfg->state_dir);
                        cfg->state_dir = strdup(optarg);
                        if (!cfg->state_dir)
                                return -ENOMEM;
                        break;
                case ARG_LISTEN:
                        if (cfg->n_listen >= CONFIG_MAX_LISTEN)
                                return bad("--listen", optarg, "too many listen addresses");
                        r = config_parse_listen(optarg, &cfg->listen[cfg->n_listen]);
                        if (r == -ENAMETOOLONG) {
                                fprintf(stderr,
                                        "luofleet-agent: invalid --listen=%s: the socket path "
                                        "is %zu bytes, the limit is %zu (put the socket in a "
                                        "shorter directory, e.g. /run/luofleet)\n",
                                        optarg, strlen(optarg + 5),
                                        sizeof(cfg->listen[0].path) - 1);
                                return -EINVAL;
                        }
                        if (r < 0)
                                return bad("--listen", optarg,
                                           "expected ADDR:PORT, [IPv6]:PORT or unix:/PATH");
                        cfg->n_listen++;
                        break;
                case ARG_MAX_WAIT:
                        if (duration_arg("--max-wait", optarg, 1, 24ull * 3600 * 1000, &v) < 0)
                                return -EINVAL;
                        cfg->max_wait_ms = v;
                        break;
                case ARG_MAX_WAITERS:
                        if (parse_count("--max-waiters", optarg, 1, 1000000, &cfg->max_waiters) < 0)
                                return -EINVAL;
                        break;
                case ARG_MAX_STREAMS:
                        if (parse_count("--max-streams", optarg, 1, 100000, &cfg->max_streams) < 0)
                                return -EINVAL;
                        break;
                case ARG_MAX_CONNECTIONS:
                        if (parse_count("--max-connections", optarg, 4, 1000000,
                                        &cfg->max_connections) < 0)
                                return -EINVAL;
                        break;
                case ARG_SSE_HEARTBEAT:
                        if (duration_arg("--sse-heartbeat", optarg, 100, 3600 * 1000, &v) < 0)
                                return -EINVAL;
                        cfg->sse_heartbeat_ms = v;
                        break;
                case ARG_REBOOT_DELAY:
                        if (duration_arg("--reboot-delay", optarg, 0, 60 * 1000, &v) < 0)
                                return -EINVAL;
                        cfg->reboot_delay_ms = v;
                        break;
                case ARG_JOURNAL_MAX:
                        if (parse_u64(optarg, 1ull << 30, &v) < 0 || v < 65536)
                                return bad("--journal-max-bytes", optarg,
                                           "expected a byte count from 65536 to 1073741824");
                        cfg->journal_max_bytes = v;
                        break;
                case ARG_HTTP_THREADS:
                        if (parse_count("--http-threads", optarg, 1, 64, &cfg->http_threads) < 0)
                                return -EINVAL;
                        break;
                case ARG_SIM_FAULT:
                        if (backend_config_add_fault(&cfg->backend, optarg) < 0)
                                return bad("--sim-fault", optarg,
                                           "expected OP=ERRNO[:DELAYms] or OP=DELAYms, OP one of "
                                           "prepare, freeze, finish, cancel, reboot, kexec-load");
                        break;
                case ARG_SIM_RELEASE:
                        if (!optarg[0] || strlen(optarg) >= 128)
                                return bad("--sim-release", optarg, "expected 1 to 127 characters");
                        cfg->backend.sim_release = optarg;
                        break;
                case ARG_SIM_REBOOT:
                        if (strcmp(optarg, "exec") == 0)
                                cfg->sim_reboot = SIM_REBOOT_EXEC;
                        else if (strcmp(optarg, "exit") == 0)
                                cfg->sim_reboot = SIM_REBOOT_EXIT;
                        else
                                return bad("--sim-reboot", optarg, "expected exec or exit");
                        break;
                case ARG_SIM_DOWNTIME:
                        if (strcmp(optarg, "never") == 0)
                                cfg->sim_downtime_ms = SIM_DOWNTIME_NEVER;
                        else if (parse_duration_ms(optarg, SIM_DOWNTIME_MAX_MS, &v) < 0)
                                return bad("--sim-downtime", optarg,
                                           "expected a duration such as 2s, 500ms or 1m30s (at "
                                           "most 1h), or never");
                        else
                                cfg->sim_downtime_ms = v;
                        break;
                case ARG_SIM_BOOT_RELEASE:
                        if (!optarg[0] || strlen(optarg) >= 128 || optarg[0] == '=' ||
                            optarg[strlen(optarg) - 1] == '=' ||
                            strchr(strchr(optarg, '=') ? strchr(optarg, '=') + 1 : optarg, '='))
                                return bad("--sim-boot-release", optarg,
                                           "expected [IMAGE-RELEASE=]RELEASE, 1 to 127 "
                                           "characters");
                        cfg->backend.sim_boot_release = optarg;
                        break;
                case ARG_HOSTNAME:
                        if (!optarg[0] || strlen(optarg) >= sizeof(cfg->hostname))
                                return bad("--hostname", optarg, "expected 1 to 255 characters");
                        snprintf(cfg->hostname, sizeof(cfg->hostname), "%s", optarg);
                        break;
                case ARG_LOG_LEVEL:
                        r = log_level_from_string(optarg);
                        if (r < 0)
                                return bad("--log-level", optarg,
                                           "expected error, warning, notice, info or debug");
                        cfg->log_level = r;
                        break;
                case ARG_MAX_CONN_PER_IP:
                        if (parse_count("--max-connections-per-ip", optarg, 1, 1000000,
                                        &cfg->max_connections_per_ip) < 0)
                                return -EINVAL;
                        break;
                case ARG_MAX_HEADER_BYTES:
                        if (parse_u64(optarg, 1024 * 1024, &v) < 0 || v < 4096)
                                return bad("--max-header-bytes", optarg,
                                           "expected a byte count from 4096 to 1048576");
                        cfg->max_header_bytes = (size_t)v;
                        break;
                case ARG_MAX_BODY_BYTES:
                        if (parse_u64(optarg, 16 * 1024 * 1024, &v) < 0 || v < 1024)
                                return bad("--max-body-bytes", optarg,
                                           "expected a byte count from 1024 to 16777216");
                        cfg->max_body_bytes = (size_t)v;
                        break;
                case ARG_HEADER_TIMEOUT:
                        if (duration_arg("--header-timeout", optarg, 100, 3600 * 1000, &v) < 0)
                                return -EINVAL;
                        cfg->header_timeout_ms = v;
                        break;
                case ARG_IDLE_TIMEOUT:
                        if (duration_arg("--idle-timeout", optarg, 1000, 24ull * 3600 * 1000, &v) <
                            0)
                                return -EINVAL;
                        cfg->idle_timeout_ms = v;
                        break;
                case ARG_STAGING_DIR:
                        if (cfg->n_staging_dirs >= CONFIG_MAX_STAGING_DIRS)
                                return bad("--staging-dir", optarg, "too many staging directories");
                        if (optarg[0] != '/' || strlen(optarg) >= 1024 || strstr(optarg, "/../") ||
                            ends_with(optarg, "/.."))
                                return bad("--staging-dir", optarg,
                                           "expected an absolute directory without '..'");
                        if (set_str(&cfg->staging_dirs[cfg->n_staging_dirs], optarg) < 0)
                                return -ENOMEM;
                        cfg->n_staging_dirs++;
                        break;
                case ARG_TLS_CERT:
                case ARG_TLS_KEY:
                case ARG_TLS_CLIENT_CA:
                case ARG_TOKENS: {
                        static const char *const names[] = { "--tls-cert", "--tls-key",
                                                             "--tls-client-ca", "--tokens" };
                        char **dst = c == ARG_TLS_CERT        ? &cfg->tls_cert
                                     : c == ARG_TLS_KEY       ? &cfg->tls_key
                                     : c == ARG_TLS_CLIENT_CA ? &cfg->tls_client_ca
                                                              : &cfg->tokens_file;
                        const char *name = names[c == ARG_TLS_CERT        ? 0
                                                 : c == ARG_TLS_KEY       ? 1
                                                 : c == ARG_TLS_CLIENT_CA ? 2
                                                                          : 3];
                        if (!optarg[0] || strlen(optarg) >= 4096)
                                return bad(name, optarg, "expected a file path");
                        if (set_str(dst, optarg) < 0)
                                return -ENOMEM;
                        break;
                }
                case ARG_TLS_CLIENT_ROLE:
                        r = auth_role_from_string(optarg);
                        if (r <= ROLE_NONE)
                                return bad("--tls-client-role", optarg,
                                           "expected viewer, operator or admin");
                        cfg->tls_client_role = r;
                        break;
                case ARG_UNIX_GROUP:
                        if (!optarg[0] || strlen(optarg) >= 256)
                                return bad("--unix-group", optarg, "expected a group name or id");
                        if (set_str(&cfg->unix_group, optarg) < 0)
                                return -ENOMEM;
                        break;
                case ARG_ANONYMOUS:
                        if (parse_anonymous(optarg, &cfg->anonymous) < 0)
                                return bad("--anonymous", optarg,
                                           "expected a comma-separated list of state, metrics, "
                                           "readyz, or none");
                        break;
                case ARG_INSECURE:
                        cfg->insecure = true;
                        break;
                case ARG_ALLOWED_HOST:
                case ARG_ALLOWED_ORIGIN: {
                        bool host = c == ARG_ALLOWED_HOST;
                        char norm[WEBSEC_ORIGIN_MAX + 1];
                        char **list = host ? cfg->allowed_hosts : cfg->allowed_origins;
                        unsigned *n = host ? &cfg->n_allowed_hosts : &cfg->n_allowed_origins;
                        r = host ? websec_parse_allowed_host(optarg, norm, sizeof(norm))
                                 : websec_parse_allowed_origin(optarg, norm, sizeof(norm));
                        if (r < 0)
                                return bad(host ? "--allowed-host" : "--allowed-origin", optarg,
                                           host ? "expected a host name or an IP address, "
                                                  "without a port"
                                                : "expected an origin: http:// or https://, a "
                                                  "host and an optional port, nothing after it");
                        if (*n >= CONFIG_MAX_ALLOWED)
                                return bad(host ? "--allowed-host" : "--allowed-origin", optarg,
                                           "at most 16 of them");
                        if (set_str(&list[*n], norm) < 0)
                                return -ENOMEM;
                        (*n)++;
                        break;
                }
                case ARG_PRIVSEP:
                        if (strcmp(optarg, "yes") == 0)
                                cfg->privsep = true;
                        else if (strcmp(optarg, "no") == 0)
                                cfg->privsep = false;
                        else
                                return bad("--privsep", optarg, "expected yes or no");
                        break;
                case ARG_USER:
                        if (!optarg[0] || strlen(optarg) >= 256)
                                return bad("--user", optarg, "expected a user name or id");
                        if (set_str(&cfg->run_user, optarg) < 0)
                                return -ENOMEM;
                        break;
                case ARG_CA_BUNDLE:
                case ARG_TRUSTED_KEYS:
                case ARG_HOOKS_DIR: {
                        const char *name = c == ARG_CA_BUNDLE      ? "--ca-bundle"
                                           : c == ARG_TRUSTED_KEYS ? "--trusted-keys"
                                                                   : "--hooks-dir";
                        char **dst = c == ARG_CA_BUNDLE      ? &cfg->ca_bundle
                                     : c == ARG_TRUSTED_KEYS ? &cfg->trusted_keys_dir
                                                             : &cfg->hooks_dir;
                        if (optarg[0] != '/' || strlen(optarg) >= 4096)
                                return bad(name, optarg, "expected an absolute path");
                        if (set_str(dst, optarg) < 0)
                                return -ENOMEM;
                        break;
                }
                case ARG_ALLOW_HTTP:
                        cfg->allow_http = true;
                        break;
                case ARG_REQUIRE_SIGNATURE:
                        cfg->require_signature = true;
                        break;
                case ARG_DOWNLOAD_MAX:
                        if (parse_u64(optarg, 1ull << 34, &v) < 0 || v < 4096)
                                return bad("--download-max-bytes", optarg,
                                           "expected a byte count from 4096 to 17179869184");
                        cfg->download_max_bytes = v;
                        break;
                case ARG_DOWNLOAD_CONNECT:
                        if (duration_arg("--download-connect-timeout", optarg, 100, 10 * 60 * 1000,
                                         &v) < 0)
                                return -EINVAL;
                        cfg->download_connect_ms = v;
                        break;
                case ARG_DOWNLOAD_TIMEOUT:
                        if (duration_arg("--download-timeout", optarg, 1000, 24ull * 3600 * 1000,
                                         &v) < 0)
                                return -EINVAL;
                        cfg->download_timeout_ms = v;
                        break;
                case ARG_DOWNLOAD_RETRIES:
                        if (parse_count("--download-retries", optarg, 0, 100,
                                        &cfg->download_retries) < 0)
                                return -EINVAL;
                        break;
                case ARG_HOOK_TIMEOUT:
                        if (duration_arg("--hook-timeout", optarg, 100, 3600 * 1000, &v) < 0)
                                return -EINVAL;
                        cfg->hook_timeout_ms = v;
                        break;
                case ARG_HOOK_OUTPUT_MAX:
                        if (parse_u64(optarg, 1024 * 1024, &v) < 0 || v < 256)
                                return bad("--hook-output-max", optarg,
                                           "expected a byte count from 256 to 1048576");
                        cfg->hook_output_max = (size_t)v;
                        break;
                case ARG_MAX_LEASE:
                        if (duration_arg("--max-lease", optarg, 1000, 7ull * 24 * 3600 * 1000, &v) <
                            0)
                                return -EINVAL;
                        cfg->max_lease_ms = v;
                        break;
                case ARG_SESSIONS_SOCKET:
                        if (strcmp(optarg, "none") == 0) {
                                cfg->sessions_disabled = true;
                                break;
                        }
                        if (optarg[0] != '/' || strlen(optarg) >= 4096)
                                return bad("--sessions-socket", optarg,
                                           "expected an absolute path, or none");
                        cfg->sessions_disabled = false;
                        if (set_str(&cfg->sessions_socket, optarg) < 0)
                                return -ENOMEM;
                        break;
                case ARG_SESSIONS_SOCKET_MODE: {
                        char *end = NULL;
                        unsigned long m;
                        errno = 0;
                        m = strtoul(optarg, &end, 8);
                        /* Read and write for the owner at least; never execute bits. */
                        if (errno || !end || *end || end == optarg || (m & ~0666ul) ||
                            (m & 0600) != 0600)
                                return bad("--sessions-socket-mode", optarg,
                                           "expected an octal mode like 0660 (read and write "
                                           "bits only, owner included)");
                        cfg->sessions_socket_mode = (unsigned)m;
                        break;
                }
                case ARG_SESSIONS_GROUP:
                        if (!optarg[0] || strlen(optarg) > 64)
                                return bad("--sessions-group", optarg, "expected a group name");
                        if (set_str(&cfg->sessions_group, optarg) < 0)
                                return -ENOMEM;
                        break;
                case ARG_WORKLOAD_CONFIRM_TIMEOUT:
                        if (duration_arg("--workload-confirm-timeout", optarg, 100, 3600 * 1000,
                                         &v) < 0)
                                return -EINVAL;
                        cfg->workload_confirm_timeout_ms = (uint32_t)v;
                        break;
                case ARG_WORKLOAD_REBOOT_TIMEOUT:
                        if (duration_arg("--workload-reboot-timeout", optarg, 0, 60 * 1000, &v) < 0)
                                return -EINVAL;
                        /* 0 is "do not wait": the broker's default is then not taken. */
                        cfg->workload_reboot_timeout_ms = v ? (uint32_t)v : 1;
                        break;
                case ARG_SESSION_MAX_PER_OWNER:
                        if (parse_count("--session-max-per-owner", optarg, 1, 4096,
                                        &cfg->session_max_per_owner) < 0)
                                return -EINVAL;
                        break;
                case ARG_SESSION_MAX_FDS:
                        if (parse_count("--session-max-fds-per-owner", optarg, 1, 65536,
                                        &cfg->session_max_fds_per_owner) < 0)
                                return -EINVAL;
                        break;
                case ARG_SESSION_MAX_BYTES:
                        if (parse_size(optarg, &v) < 0 || v == 0)
                                return bad("--session-max-bytes-per-owner", optarg,
                                           "expected a size like 64G, 512M or a byte count");
                        cfg->session_max_bytes_per_owner = v;
                        break;
                case ARG_SESSION_MAX_CLIENTS:
                        if (parse_count("--session-max-clients", optarg, 1, 4096,
                                        &cfg->session_max_clients) < 0)
                                return -EINVAL;
                        break;
                default:
                        fprintf(stderr, "Try 'luofleet-agent --help'.\n");
                        return -EINVAL;
                }
        }
        if (optind < argc) {
                fprintf(stderr,
                        "luofleet-agent: unexpected argument '%s'\nTry 'luofleet-agent --help'.\n",
                        argv[optind]);
                return -EINVAL;
        }
        /* The downtime is the re-executed agent's: a supervisor restarting an exited one
         * decides by itself when the machine is back. */
        if (cfg->sim_downtime_ms && cfg->sim_reboot == SIM_REBOOT_EXIT) {
                fprintf(stderr, "luofleet-agent: --sim-downtime needs --sim-reboot=exec (with "
                                "--sim-reboot=exit the supervisor decides when the machine "
                                "comes back)\n");
                return -EINVAL;
        }
        if (cfg->n_listen == 0) {
                (void)config_parse_listen("127.0.0.1:8421", &cfg->listen[0]);
                cfg->n_listen = 1;
        }
        cfg->backend.state_dir = cfg->state_dir;
        /*
         * The workloads' socket: the system agent's (root, the default state
         * directory) in /run/luofleet, where the client library looks; any
         * other agent's beside its journal, so that agents with their own
         * state directories (tests, several simulated hosts) never share one.
         */
        if (!cfg->sessions_disabled && !cfg->sessions_socket) {
                char spath[4200];
                if (geteuid() == 0 && strcmp(cfg->state_dir, STATE_DIR_DEFAULT) == 0)
                        snprintf(spath, sizeof(spath), "%s", LFS_SOCKET_DEFAULT);
                else
                        snprintf(spath, sizeof(spath), "%s/sessions.sock", cfg->state_dir);
                if (set_str(&cfg->sessions_socket, spath) < 0)
                        return -ENOMEM;
                cfg->sessions_socket_default = true;
        }
        if (cfg->n_staging_dirs == 0) {
                char kdir[4200];
                snprintf(kdir, sizeof(kdir), "%s/kernels", cfg->state_dir);
                if (set_str(&cfg->staging_dirs[0], "/boot") < 0 ||
                    set_str(&cfg->staging_dirs[1], kdir) < 0)
                        return -ENOMEM;
                cfg->n_staging_dirs = 2;
        }
        return config_check_security(cfg);
}

int config_check_security(const struct agent_config *cfg)
{
        bool tls = cfg->tls_cert || cfg->tls_key;
        bool auth = cfg->tokens_file || cfg->tls_client_ca;

        if (!!cfg->tls_cert != !!cfg->tls_key) {
                fprintf(stderr, "luofleet-agent: --tls-cert and --tls-key go together\n");
                return -EINVAL;
        }
        if (cfg->tls_client_ca && !tls) {
                fprintf(stderr, "luofleet-agent: --tls-client-ca needs --tls-cert and --tls-key\n");
                return -EINVAL;
        }
        if (cfg->anonymous && !auth) {
                fprintf(stderr, "luofleet-agent: --anonymous has no effect without --tokens or "
                                "--tls-client-ca (without them every local caller is served)\n");
                return -EINVAL;
        }
        for (unsigned i = 0; i < cfg->n_listen; i++) {
                const struct listen_addr *la = &cfg->listen[i];
                if (la->is_unix || listen_is_loopback(la) || cfg->insecure || (tls && auth))
                        continue;
                fprintf(stderr,
                        "luofleet-agent: refusing to listen on %s:%s: a non-loopback address "
                        "needs TLS (--tls-cert, --tls-key) and authentication (--tokens or "
                        "--tls-client-ca); --insecure overrides this\n",
                        la->host, la->port);
                return -EINVAL;
        }
        return 0;
}

bool listen_is_loopback(const struct listen_addr *la)
{
        struct in6_addr a6;
        struct in_addr a4;

        if (la->is_unix)
                return true;
        if (strcmp(la->host, "localhost") == 0)
                return true;
        if (inet_pton(AF_INET, la->host, &a4) == 1)
                return (ntohl(a4.s_addr) >> 24) == 127;
        if (inet_pton(AF_INET6, la->host, &a6) == 1)
                return IN6_IS_ADDR_LOOPBACK(&a6);
        return false;
}

void config_done(struct agent_config *cfg)
{
        free(cfg->state_dir);
        cfg->state_dir = NULL;
        for (unsigned i = 0; i < cfg->n_staging_dirs; i++)
                free(cfg->staging_dirs[i]);
        cfg->n_staging_dirs = 0;
        free(cfg->tls_cert);
        free(cfg->tls_key);
        free(cfg->tls_client_ca);
        free(cfg->tokens_file);
        free(cfg->unix_group);
        for (unsigned i = 0; i < cfg->n_allowed_hosts; i++)
                free(cfg->allowed_hosts[i]);
        for (unsigned i = 0; i < cfg->n_allowed_origins; i++)
                free(cfg->allowed_origins[i]);
        cfg->n_allowed_hosts = cfg->n_allowed_origins = 0;
        free(cfg->run_user);
        free(cfg->ca_bundle);
        free(cfg->trusted_keys_dir);
        free(cfg->hooks_dir);
        free(cfg->sessions_socket);
        free(cfg->sessions_group);
        cfg->sessions_socket = cfg->sessions_group = NULL;
        cfg->ca_bundle = cfg->trusted_keys_dir = cfg->hooks_dir = NULL;
        cfg->tls_cert = cfg->tls_key = cfg->tls_client_ca = NULL;
        cfg->tokens_file = cfg->unix_group = cfg->run_user = NULL;
}
