/*
 * config.c: luofleet-rollout's flags and config file. Main thread, before
 * any other thread exists. Every flag has a default; every bad value is
 * named, with the file and line when it came from the config file. One
 * function (apply) takes a value for an option whether getopt_long or the
 * file parser found it, so both accept exactly the same names and values.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "hostpolicy.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"

#define CONFIG_FILE_MAX (1024 * 1024)

static void usage(FILE *f)
{
        fputs("Usage: luofleet-rollout [OPTIONS]\n"
              "\n"
              "Drive a fleet of luofleet agents through kernel live updates in safe waves\n"
              "(canaries, batches, budgets, soak, windows), durable across restarts, behind\n"
              "a REST + Server-Sent Events API (api/rollout.yaml).\n"
              "\n"
              "Store and inventory:\n"
              "  --db=FILE               SQLite store (default " ROLLOUT_DEFAULT_DB ";\n"
              "                          its directory is created with mode 0700)\n"
              "  --inventory=FILE        hosts file (JSON, docs/rollout.md), loaded at start\n"
              "\n"
              "Reaching the agents:\n"
              "  --agent-ca-bundle=FILE  CA certificates for https agents (default: the system's)\n"
              "  --agent-cert=FILE       client certificate (PEM) presented to the agents\n"
              "  --agent-key=FILE        and its private key\n"
              "  --agent-token-file=FILE bearer token for the agents (first line of FILE);\n"
              "                          sent only over https, or http to a loopback address\n"
              "  --agent-allow=PATTERN   agent URLs must name a host matching one of these:\n"
              "                          NAME, *.DOMAIN, ADDRESS or ADDRESS/PREFIX; repeatable\n"
              "                          or comma-separated (default: any host)\n"
              "  --allow-http-agents     accept http:// agent URLs off loopback (default: https\n"
              "                          only; the agent token is never sent over them)\n"
              "  --poll-wait=DURATION    long-poll wait asked of the agents (default 30s)\n"
              "  --retry-min=DURATION    first retry delay for an unreachable agent (500ms)\n"
              "  --retry-max=DURATION    longest retry delay (default 10s)\n"
              "  --connect-timeout=DURATION  (default 3s)\n"
              "  --request-timeout=DURATION  requests other than long-polls (default 15s)\n"
              "  --max-agent-connections=N  HTTP connections to agents in total (1024)\n"
              "  --name=NAME             controller name in operation ids (default lf)\n"
              "\n"
              "API:\n"
              "  --listen=ADDR:PORT      TCP address (default " ROLLOUT_DEFAULT_LISTEN
              "; [::1]:7480\n"
              "                          for IPv6; port 0 picks a free port); repeatable\n"
              "  --max-connections=N     concurrent API connections per listener (default 64;\n"
              "                          event streams may take half of them)\n"
              "  --sse-keepalive=DURATION  comment line on idle event streams (default 15s)\n"
              "\n"
              "Security (the agent's scheme, docs/security.md):\n"
              "  --tls-cert=FILE         serve HTTPS with this PEM certificate chain\n"
              "  --tls-key=FILE          and this PEM private key (both reread on SIGHUP)\n"
              "  --tls-client-ca=FILE    require client certificates signed by these CAs\n"
              "                          (a verified certificate has the operator role)\n"
              "  --tokens=FILE           bearer tokens (lines: NAME ROLE SHA256, made with\n"
              "                          `luofleet-agent token`); GET needs viewer, POST, PUT\n"
              "                          and DELETE operator; reread on SIGHUP\n"
              "  --insecure              allow a non-loopback listener without TLS and tokens\n"
              "\n"
              "Other:\n"
              "  --config=FILE           read options from FILE first: \"key = value\" lines\n"
              "                          with the long option names, '#' comments; flags on\n"
              "                          the command line win (default $" ROLLOUT_CONFIG_ENV ")\n"
              "  --log-level=LEVEL       error, warning, notice, info (default), debug\n"
              "  -h, --help              show this help\n"
              "  --version               show the version\n"
              "\n"
              "Environment:\n"
              "  " ROLLOUT_CONFIG_ENV "  the config file when --config is not given\n"
              "  " ROLLOUT_TIME_OFFSET_ENV "  test hook: seconds (an integer, may be\n"
              "                          negative) added to the wall clock for maintenance\n"
              "                          windows; not for production\n"
              "\n"
              "Signals: SIGTERM, SIGINT stop cleanly (running rollouts resume at the next\n"
              "start); SIGHUP rereads the TLS certificate and key and the tokens file.\n"
              "\n"
              "Exit status: 0 stopped cleanly, 1 runtime failure (e.g. the store cannot be\n"
              "opened), 2 usage or configuration error.\n",
              f);
}

enum {
        ARG_LISTEN = 0x100,
        ARG_DB,
        ARG_INVENTORY,
        ARG_AGENT_CA_BUNDLE,
        ARG_AGENT_CERT,
        ARG_AGENT_KEY,
        ARG_AGENT_TOKEN_FILE,
        ARG_AGENT_ALLOW,
        ARG_ALLOW_HTTP_AGENTS,
        ARG_TLS_CERT,
        ARG_TLS_KEY,
        ARG_TLS_CLIENT_CA,
        ARG_TOKENS,
        ARG_INSECURE,
        ARG_POLL_WAIT,
        ARG_RETRY_MIN,
        ARG_RETRY_MAX,
        ARG_CONNECT_TIMEOUT,
        ARG_REQUEST_TIMEOUT,
        ARG_MAX_AGENT_CONNECTIONS,
        ARG_MAX_CONNECTIONS,
        ARG_SSE_KEEPALIVE,
        ARG_NAME,
        ARG_CONFIG,
        ARG_LOG_LEVEL,
        ARG_VERSION,
};

static const struct option options[] = {
        { "listen", required_argument, NULL, ARG_LISTEN },
        { "db", required_argument, NULL, ARG_DB },
        { "inventory", required_argument, NULL, ARG_INVENTORY },
        { "agent-ca-bundle", required_argument, NULL, ARG_AGENT_CA_BUNDLE },
        { "agent-cert", required_argument, NULL, ARG_AGENT_CERT },
        { "agent-key", required_argument, NULL, ARG_AGENT_KEY },
        { "agent-token-file", required_argument, NULL, ARG_AGENT_TOKEN_FILE },
        { "agent-allow", required_argument, NULL, ARG_AGENT_ALLOW },
        { "allow-http-agents", no_argument, NULL, ARG_ALLOW_HTTP_AGENTS },
        { "tls-cert", required_argument, NULL, ARG_TLS_CERT },
        { "tls-key", required_argument, NULL, ARG_TLS_KEY },
        { "tls-client-ca", required_argument, NULL, ARG_TLS_CLIENT_CA },
        { "tokens", required_argument, NULL, ARG_TOKENS },
        { "insecure", no_argument, NULL, ARG_INSECURE },
        { "poll-wait", required_argument, NULL, ARG_POLL_WAIT },
        { "retry-min", required_argument, NULL, ARG_RETRY_MIN },
        { "retry-max", required_argument, NULL, ARG_RETRY_MAX },
        { "connect-timeout", required_argument, NULL, ARG_CONNECT_TIMEOUT },
        { "request-timeout", required_argument, NULL, ARG_REQUEST_TIMEOUT },
        { "max-agent-connections", required_argument, NULL, ARG_MAX_AGENT_CONNECTIONS },
        { "max-connections", required_argument, NULL, ARG_MAX_CONNECTIONS },
        { "sse-keepalive", required_argument, NULL, ARG_SSE_KEEPALIVE },
        { "name", required_argument, NULL, ARG_NAME },
        { "config", required_argument, NULL, ARG_CONFIG },
        { "log-level", required_argument, NULL, ARG_LOG_LEVEL },
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, ARG_VERSION },
        {},
};

/* Where a value came from, for messages: NULL (the command line) or "FILE:LINE". */
static const char *source;
/* The --listen addresses so far came from the config file. */
static bool listen_from_file;

static int bad(const char *flag, const char *value, const char *want)
{
        if (source)
                fprintf(stderr, "luofleet-rollout: %s: invalid %s = %s: %s\n", source, flag, value,
                        want);
        else
                fprintf(stderr, "luofleet-rollout: invalid --%s=%s: %s\n", flag, value, want);
        return -EINVAL;
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

static int set_path(const char *flag, char **dst, const char *v)
{
        if (!v[0] || strlen(v) >= 4096)
                return bad(flag, v, "expected a file path");
        return set_str(dst, v);
}

static int set_duration(const char *flag, const char *v, uint64_t min, uint64_t max,
                        const char *want, uint64_t *ret)
{
        uint64_t ms;
        if (parse_duration_ms(v, max, &ms) < 0 || ms < min)
                return bad(flag, v, want);
        *ret = ms;
        return 0;
}

static int set_count(const char *flag, const char *v, uint64_t min, uint64_t max, unsigned *ret)
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

static bool name_valid(const char *s)
{
        size_t n = strlen(s);
        if (n == 0 || n > 32)
                return false;
        for (const char *p = s; *p; p++)
                if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                      (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' || *p == '-'))
                        return false;
        return true;
}

/* One option's value (flag is its long name, for messages). 0 or -EINVAL/-ENOMEM. */
static int apply(struct rollout_config *cfg, int id, const char *flag, const char *v)
{
        int r;

        switch (id) {
        case ARG_LISTEN:
                /* The command line's --listen replaces the config file's. */
                if (!source && listen_from_file) {
                        cfg->n_listen = 0;
                        listen_from_file = false;
                }
                if (cfg->n_listen >= ROLLOUT_CONFIG_MAX_LISTEN)
                        return bad(flag, v, "too many listen addresses");
                if (config_parse_listen(v, &cfg->listen[cfg->n_listen]) < 0 ||
                    cfg->listen[cfg->n_listen].is_unix)
                        return bad(flag, v, "expected ADDR:PORT or [IPv6]:PORT");
                cfg->n_listen++;
                if (source)
                        listen_from_file = true;
                return 0;
        case ARG_DB:
                return set_path(flag, &cfg->db_path, v);
        case ARG_INVENTORY:
                return set_path(flag, &cfg->inventory_path, v);
        case ARG_AGENT_CA_BUNDLE:
                return set_path(flag, &cfg->agent_ca_bundle, v);
        case ARG_AGENT_CERT:
                return set_path(flag, &cfg->agent_cert, v);
        case ARG_AGENT_KEY:
                return set_path(flag, &cfg->agent_key, v);
        case ARG_AGENT_TOKEN_FILE:
                return set_path(flag, &cfg->agent_token_file, v);
        case ARG_AGENT_ALLOW: {
                const char *p = v;
                while (p && *p) {
                        size_t n = strcspn(p, ",");
                        char pat[256];
                        if (n == 0 || n >= sizeof(pat))
                                return bad(flag, v,
                                           "expected NAME, *.DOMAIN, ADDRESS or "
                                           "ADDRESS/PREFIX, comma-separated");
                        memcpy(pat, p, n);
                        pat[n] = 0;
                        if (!allow_pattern_valid(pat))
                                return bad(flag, pat,
                                           "expected NAME, *.DOMAIN, ADDRESS or "
                                           "ADDRESS/PREFIX");
                        if (cfg->n_agent_allow >= ROLLOUT_AGENT_ALLOW_MAX)
                                return bad(flag, pat, "too many patterns (at most 64)");
                        cfg->agent_allow[cfg->n_agent_allow] = strdup(pat);
                        if (!cfg->agent_allow[cfg->n_agent_allow])
                                return -ENOMEM;
                        cfg->n_agent_allow++;
                        p += n + (p[n] == ',');
                }
                return 0;
        }
        case ARG_ALLOW_HTTP_AGENTS:
                if (!v || strcmp(v, "yes") == 0 || strcmp(v, "true") == 0 || strcmp(v, "1") == 0)
                        cfg->allow_http_agents = true;
                else if (strcmp(v, "no") == 0 || strcmp(v, "false") == 0 || strcmp(v, "0") == 0)
                        cfg->allow_http_agents = false;
                else
                        return bad(flag, v, "expected yes or no");
                return 0;
        case ARG_TLS_CERT:
                return set_path(flag, &cfg->tls_cert, v);
        case ARG_TLS_KEY:
                return set_path(flag, &cfg->tls_key, v);
        case ARG_TLS_CLIENT_CA:
                return set_path(flag, &cfg->tls_client_ca, v);
        case ARG_TOKENS:
                return set_path(flag, &cfg->tokens_file, v);
        case ARG_INSECURE:
                /* A flag on the command line; "insecure = yes|no" in the file. */
                if (!v || strcmp(v, "yes") == 0 || strcmp(v, "true") == 0 || strcmp(v, "1") == 0)
                        cfg->insecure = true;
                else if (strcmp(v, "no") == 0 || strcmp(v, "false") == 0 || strcmp(v, "0") == 0)
                        cfg->insecure = false;
                else
                        return bad(flag, v, "expected yes or no");
                return 0;
        case ARG_POLL_WAIT:
                return set_duration(flag, v, 1000, 10 * 60 * 1000,
                                    "expected a duration from 1s to 10m", &cfg->poll_wait_ms);
        case ARG_RETRY_MIN:
                return set_duration(flag, v, 10, 10 * 60 * 1000,
                                    "expected a duration from 10ms to 10m", &cfg->retry_min_ms);
        case ARG_RETRY_MAX:
                return set_duration(flag, v, 10, 60 * 60 * 1000,
                                    "expected a duration from 10ms to 1h", &cfg->retry_max_ms);
        case ARG_CONNECT_TIMEOUT:
                return set_duration(flag, v, 100, 10 * 60 * 1000,
                                    "expected a duration from 100ms to 10m",
                                    &cfg->connect_timeout_ms);
        case ARG_REQUEST_TIMEOUT:
                return set_duration(flag, v, 100, 60 * 60 * 1000,
                                    "expected a duration from 100ms to 1h",
                                    &cfg->request_timeout_ms);
        case ARG_MAX_AGENT_CONNECTIONS:
                return set_count(flag, v, 1, 100000, &cfg->max_agent_connections);
        case ARG_MAX_CONNECTIONS:
                return set_count(flag, v, 4, 10000, &cfg->max_connections);
        case ARG_SSE_KEEPALIVE:
                return set_duration(flag, v, 100, 60 * 60 * 1000,
                                    "expected a duration from 100ms to 1h", &cfg->sse_keepalive_ms);
        case ARG_NAME:
                if (!name_valid(v))
                        return bad(flag, v, "expected 1 to 32 of [A-Za-z0-9._-]");
                return set_str(&cfg->name, v);
        case ARG_LOG_LEVEL:
                r = log_level_from_string(v);
                if (r < 0)
                        return bad(flag, v, "expected error, warning, notice, info or debug");
                cfg->log_level = r;
                return 0;
        default:
                return -EINVAL;
        }
}

static char *trim(char *s)
{
        while (*s == ' ' || *s == '\t')
                s++;
        size_t n = strlen(s);
        while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
                s[--n] = 0;
        return s;
}

static int read_config_file(const char *path, char **ret)
{
        _cleanup_close_ int fd = -1;
        struct stat st;
        char *buf;
        ssize_t n;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0 || fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EINVAL;
        if (st.st_size > CONFIG_FILE_MAX)
                return -EFBIG;
        buf = malloc((size_t)st.st_size + 1);
        if (!buf)
                return -ENOMEM;
        n = read_full(fd, buf, (size_t)st.st_size);
        if (n < 0) {
                free(buf);
                return (int)n;
        }
        buf[n] = 0;
        if (strlen(buf) != (size_t)n) {
                free(buf);
                return -EINVAL; /* a NUL byte: not a text file */
        }
        *ret = buf;
        return 0;
}

/*
 * "key = value" lines; '#' starts a comment at the beginning of a line or
 * after white space; a value may be quoted with "..." (kept verbatim).
 */
static int parse_config_file(struct rollout_config *cfg, const char *path)
{
        char *text = NULL, *save = NULL, where[4200];
        unsigned line = 0;
        int r;

        r = read_config_file(path, &text);
        if (r < 0) {
                fprintf(stderr, "luofleet-rollout: cannot read config file %s: %s\n", path,
                        r == -EINVAL  ? "not a regular text file"
                        : r == -EFBIG ? "larger than 1 MiB"
                                      : strerror(-r));
                return -EINVAL;
        }
        /* strtok_r would skip empty lines and miscount: split by hand. */
        for (char *ln = text; ln; ln = save) {
                char *nl = strchr(ln, '\n'), *key, *val, *eq;
                const struct option *o;

                save = nl ? nl + 1 : NULL;
                if (nl)
                        *nl = 0;
                line++;
                for (char *h = ln; (h = strchr(h, '#')); h++)
                        if (h == ln || h[-1] == ' ' || h[-1] == '\t') {
                                *h = 0;
                                break;
                        }
                key = trim(ln);
                if (!key[0])
                        continue;
                snprintf(where, sizeof(where), "%s:%u", path, line);
                eq = strchr(key, '=');
                val = NULL;
                if (eq) {
                        *eq = 0;
                        val = trim(eq + 1);
                        key = trim(key);
                        size_t vl = strlen(val);
                        if (vl >= 2 && val[0] == '"' && val[vl - 1] == '"') {
                                val[vl - 1] = 0;
                                val++;
                        }
                }
                for (o = options; o->name; o++)
                        if (strcmp(o->name, key) == 0)
                                break;
                if (!o->name || o->val == 'h' || o->val == ARG_VERSION || o->val == ARG_CONFIG) {
                        fprintf(stderr, "luofleet-rollout: %s: unknown key '%s'\n", where, key);
                        free(text);
                        return -EINVAL;
                }
                if (!val && o->has_arg == required_argument) {
                        fprintf(stderr, "luofleet-rollout: %s: expected '%s = VALUE'\n", where,
                                key);
                        free(text);
                        return -EINVAL;
                }
                source = where;
                r = apply(cfg, o->val, o->name, val);
                source = NULL;
                if (r < 0) {
                        free(text);
                        return r;
                }
        }
        free(text);
        return 0;
}

/* --config=FILE / --config FILE on the command line, without disturbing getopt. */
static const char *find_config_flag(int argc, char **argv)
{
        const char *found = NULL;
        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "--") == 0)
                        break;
                if (strncmp(argv[i], "--config=", 9) == 0)
                        found = argv[i] + 9;
                else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
                        found = argv[++i];
        }
        return found;
}

static int parse_time_offset(int64_t *ret)
{
        const char *e = getenv(ROLLOUT_TIME_OFFSET_ENV);
        uint64_t v;
        bool neg;

        *ret = 0;
        if (!e || !e[0])
                return 0;
        neg = e[0] == '-';
        /* At most ten years either way. */
        if (parse_u64(e + (neg || e[0] == '+'), 10ull * 366 * 86400, &v) < 0) {
                fprintf(stderr,
                        "luofleet-rollout: invalid %s=%s: expected an integer number of seconds\n",
                        ROLLOUT_TIME_OFFSET_ENV, e);
                return -EINVAL;
        }
        *ret = neg ? -(int64_t)v : (int64_t)v;
        return 0;
}

static int check_security(const struct rollout_config *cfg)
{
        bool tls = cfg->tls_cert && cfg->tls_key;
        bool auth = cfg->tokens_file || cfg->tls_client_ca;

        if (!!cfg->tls_cert != !!cfg->tls_key) {
                fprintf(stderr, "luofleet-rollout: --tls-cert and --tls-key go together\n");
                return -EINVAL;
        }
        if (cfg->tls_client_ca && !tls) {
                fprintf(stderr,
                        "luofleet-rollout: --tls-client-ca needs --tls-cert and --tls-key\n");
                return -EINVAL;
        }
        if (!!cfg->agent_cert != !!cfg->agent_key) {
                fprintf(stderr, "luofleet-rollout: --agent-cert and --agent-key go together\n");
                return -EINVAL;
        }
        if (cfg->retry_min_ms > cfg->retry_max_ms) {
                fprintf(stderr,
                        "luofleet-rollout: --retry-min (%llums) is longer than "
                        "--retry-max (%llums)\n",
                        (unsigned long long)cfg->retry_min_ms,
                        (unsigned long long)cfg->retry_max_ms);
                return -EINVAL;
        }
        for (unsigned i = 0; i < cfg->n_listen; i++) {
                const struct listen_addr *la = &cfg->listen[i];
                if (listen_is_loopback(la) || cfg->insecure || (tls && auth))
                        continue;
                fprintf(stderr,
                        "luofleet-rollout: refusing to listen on %s:%s: a non-loopback address "
                        "needs TLS (--tls-cert, --tls-key) and authentication (--tokens or "
                        "--tls-client-ca); --insecure overrides this\n",
                        la->host, la->port);
                return -EINVAL;
        }
        return 0;
}

int rollout_config_parse(struct rollout_config *cfg, int argc, char **argv)
{
        const char *cfile;
        int c, r;

        *cfg = (struct rollout_config){
                .poll_wait_ms = 30 * 1000,
                .retry_min_ms = 500,
                .retry_max_ms = 10 * 1000,
                .connect_timeout_ms = 3 * 1000,
                .request_timeout_ms = 15 * 1000,
                .max_agent_connections = 1024,
                .max_connections = 64,
                .sse_keepalive_ms = 15 * 1000,
                .log_level = LOG_LEVEL_INFO,
        };
        source = NULL;
        listen_from_file = false;
        if (set_str(&cfg->db_path, ROLLOUT_DEFAULT_DB) < 0 || set_str(&cfg->name, "lf") < 0)
                return -ENOMEM;

        /* --help and --version win over a broken config file. */
        for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
                if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
                        usage(stdout);
                        return 1;
                }
                if (strcmp(argv[i], "--version") == 0) {
                        printf("luofleet-rollout %s\n", LUOFLEET_VERSION);
                        return 1;
                }
        }

        cfile = find_config_flag(argc, argv);
        if (!cfile) {
                const char *e = getenv(ROLLOUT_CONFIG_ENV);
                if (e && e[0])
                        cfile = e;
        }
        if (cfile) {
                if (set_str(&cfg->config_path, cfile) < 0)
                        return -ENOMEM;
                r = parse_config_file(cfg, cfg->config_path);
                if (r < 0)
                        return r;
        }

        optind = 1;
        opterr = 1;
        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                const struct option *o;
                if (c == 'h' || c == ARG_VERSION || c == ARG_CONFIG)
                        continue; /* handled above */
                if (c == '?' || c == ':') {
                        fprintf(stderr, "Try 'luofleet-rollout --help'.\n");
                        return -EINVAL;
                }
                for (o = options; o->name && o->val != c; o++)
                        ;
                r = apply(cfg, c, o->name, optarg);
                if (r < 0)
                        return r;
        }
        if (optind < argc) {
                fprintf(stderr,
                        "luofleet-rollout: unexpected argument '%s'\n"
                        "Try 'luofleet-rollout --help'.\n",
                        argv[optind]);
                return -EINVAL;
        }
        if (cfg->n_listen == 0) {
                (void)config_parse_listen(ROLLOUT_DEFAULT_LISTEN, &cfg->listen[0]);
                cfg->n_listen = 1;
        }
        r = parse_time_offset(&cfg->time_offset_s);
        if (r < 0)
                return r;
        return check_security(cfg);
}

void rollout_config_done(struct rollout_config *cfg)
{
        char **strs[] = { &cfg->db_path,          &cfg->inventory_path, &cfg->config_path,
                          &cfg->agent_ca_bundle,  &cfg->agent_cert,     &cfg->agent_key,
                          &cfg->agent_token_file, &cfg->name,           &cfg->tls_cert,
                          &cfg->tls_key,          &cfg->tls_client_ca,  &cfg->tokens_file };
        for (size_t i = 0; i < ELEMENTSOF(strs); i++) {
                free(*strs[i]);
                *strs[i] = NULL;
        }
        for (unsigned i = 0; i < cfg->n_agent_allow; i++) {
                free(cfg->agent_allow[i]);
                cfg->agent_allow[i] = NULL;
        }
        cfg->n_agent_allow = 0;
}
