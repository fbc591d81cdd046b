/*
 * metrics.c: HTTP request counters by route, method and status, and latency
 * histograms by route (answers given at once; long-poll and stream answers
 * are counted, not timed, since their duration is the client's choice).
 * Also the connection gauge, the configured limits and the refusals by
 * reason (docs/limits.md), and the workload sessions' gauges, read from the
 * session broker's document the agent caches (sessions.c, agent.lock held
 * briefly). Atomics otherwise; any thread.
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "luofleet/macro.h"
#include "luofleet/session_proto.h"
#include "metrics.h"

const double metrics_buckets[METRICS_N_BUCKETS] = { 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                                    0.005,  0.01,    0.025,  0.05,  0.1,
                                                    0.25,   0.5,     1,      5 };

static const int codes[] = { 200, 202, 304, 400, 401, 403, 404, 405,
                             409, 412, 413, 415, 422, 500, 503, 504 };
#define N_CODES ELEMENTSOF(codes)
static const char *const methods[] = { "GET", "HEAD", "POST", "PUT", "DELETE", "OTHER" };
#define N_METHODS ELEMENTSOF(methods)

struct route_metrics {
        const char *name;
        atomic_uint_fast64_t count[N_METHODS][N_CODES + 1]; /* +1: other codes */
        atomic_uint_fast64_t bucket[METRICS_N_BUCKETS + 1];
        atomic_uint_fast64_t sum_usec;
        atomic_uint_fast64_t n_timed;
};

static struct route_metrics routes[METRICS_MAX_ROUTES + 1]; /* last: unmatched */
static int n_routes;

static const char *const reject_names[_METRICS_REJECT_MAX] = {
        [METRICS_REJECT_TOTAL] = "total",
        [METRICS_REJECT_PER_IP] = "per_ip",
        [METRICS_REJECT_HEADER_TIMEOUT] = "header_timeout",
        [METRICS_REJECT_HEADER_TOO_LARGE] = "header_too_large",
        [METRICS_REJECT_BODY_TOO_LARGE] = "body_too_large",
        [METRICS_REJECT_MALFORMED] = "malformed",
        [METRICS_REJECT_WAITERS] = "waiters",
        [METRICS_REJECT_STREAMS] = "streams",
};
static atomic_uint_fast64_t rejected[_METRICS_REJECT_MAX];

/* A kexec blackout: from well under a second (a small VM) to a minute (a server's firmware-free
 * reboot with slow devices); past that is +Inf. */
static const double blackout_buckets[] = { 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                           2.5,  5,     10,   20,  30,   60 };
static atomic_uint_fast64_t blackout_count[ELEMENTSOF(blackout_buckets) + 1];
static atomic_uint_fast64_t blackout_sum_ms;
static atomic_uint connections;
static struct metrics_limits limits;
static atomic_bool limits_set;

const char *metrics_reject_to_string(enum metrics_reject r)
{
        return r >= 0 && r < _METRICS_REJECT_MAX ? reject_names[r] : NULL;
}

void metrics_rejected(enum metrics_reject r)
{
        if (r >= 0 && r < _METRICS_REJECT_MAX)
                atomic_fetch_add_explicit(&rejected[r], 1, memory_order_relaxed);
}

void metrics_blackout(uint64_t ms)
{
        size_t b = ELEMENTSOF(blackout_buckets);

        for (size_t i = 0; i < ELEMENTSOF(blackout_buckets); i++)
                if ((double)ms / 1000.0 <= blackout_buckets[i]) {
                        b = i;
                        break;
                }
        atomic_fetch_add_explicit(&blackout_count[b], 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&blackout_sum_ms, ms, memory_order_relaxed);
}

static void render_blackout(struct strbuf *sb)
{
        uint64_t cum = 0;

        strbuf_printf(sb, "# HELP luofleet_blackout_seconds Blackout of the reboot this agent "
                          "came up after: the last journal record of the old boot to the agent "
                          "running in the new one.\n"
                          "# TYPE luofleet_blackout_seconds histogram\n");
        for (size_t b = 0; b < ELEMENTSOF(blackout_buckets); b++) {
                cum += atomic_load(&blackout_count[b]);
                strbuf_printf(sb, "luofleet_blackout_seconds_bucket{le=\"%g\"} %llu\n",
                              blackout_buckets[b], (unsigned long long)cum);
        }
        cum += atomic_load(&blackout_count[ELEMENTSOF(blackout_buckets)]);
        strbuf_printf(sb,
                      "luofleet_blackout_seconds_bucket{le=\"+Inf\"} %llu\n"
                      "luofleet_blackout_seconds_sum %.3f\nluofleet_blackout_seconds_count %llu\n",
                      (unsigned long long)cum, (double)atomic_load(&blackout_sum_ms) / 1000.0,
                      (unsigned long long)cum);
}

void metrics_connections_set(unsigned n)
{
        atomic_store_explicit(&connections, n, memory_order_relaxed);
}

void metrics_set_limits(const struct metrics_limits *l)
{
        limits = *l;
        atomic_store(&limits_set, true);
}

static void render_limits(struct strbuf *sb)
{
        strbuf_printf(sb,
                      "# HELP luofleet_http_connections Open HTTP connections, all listeners.\n"
                      "# TYPE luofleet_http_connections gauge\nluofleet_http_connections %u\n",
                      (unsigned)atomic_load(&connections));
        if (atomic_load(&limits_set))
                strbuf_printf(
                        sb,
                        "# HELP luofleet_http_connections_max Connection limit, all listeners "
                        "(--max-connections).\n"
                        "# TYPE luofleet_http_connections_max gauge\n"
                        "luofleet_http_connections_max %u\n"
                        "# HELP luofleet_http_connections_per_ip_max Connections allowed from one "
                        "address (--max-connections-per-ip).\n"
                        "# TYPE luofleet_http_connections_per_ip_max gauge\n"
                        "luofleet_http_connections_per_ip_max %u\n"
                        "# HELP luofleet_http_header_max_bytes Request line and headers per "
                        "connection (--max-header-bytes).\n"
                        "# TYPE luofleet_http_header_max_bytes gauge\n"
                        "luofleet_http_header_max_bytes %llu\n"
                        "# HELP luofleet_http_body_max_bytes Request body (--max-body-bytes).\n"
                        "# TYPE luofleet_http_body_max_bytes gauge\n"
                        "luofleet_http_body_max_bytes %llu\n"
                        "# HELP luofleet_http_header_timeout_seconds Time a request has to "
                        "arrive (--header-timeout).\n"
                        "# TYPE luofleet_http_header_timeout_seconds gauge\n"
                        "luofleet_http_header_timeout_seconds %.3f\n"
                        "# HELP luofleet_http_idle_timeout_seconds Idle connections are closed "
                        "after this (--idle-timeout).\n"
                        "# TYPE luofleet_http_idle_timeout_seconds gauge\n"
                        "luofleet_http_idle_timeout_seconds %.3f\n"
                        "# HELP luofleet_sse_clients_max The event-stream cap (--max-streams).\n"
                        "# TYPE luofleet_sse_clients_max gauge\nluofleet_sse_clients_max %u\n",
                        limits.max_connections, limits.max_connections_per_ip,
                        (unsigned long long)limits.max_header_bytes,
                        (unsigned long long)limits.max_body_bytes,
                        (double)limits.header_timeout_ms / 1000.0,
                        (double)limits.idle_timeout_ms / 1000.0, limits.max_streams);
        strbuf_printf(sb, "# HELP luofleet_http_rejected_total Connections and requests refused "
                          "by a limit, by reason.\n"
                          "# TYPE luofleet_http_rejected_total counter\n");
        for (int r = 0; r < _METRICS_REJECT_MAX; r++)
                strbuf_printf(sb, "luofleet_http_rejected_total{reason=\"%s\"} %llu\n",
                              reject_names[r], (unsigned long long)atomic_load(&rejected[r]));
}

int metrics_route_register(const char *name)
{
        for (int i = 0; i < n_routes; i++)
                if (strcmp(routes[i].name, name) == 0)
                        return i;
        if (n_routes >= METRICS_MAX_ROUTES)
                return -1;
        routes[n_routes].name = name;
        return n_routes++;
}

const char *metrics_route_name(int id)
{
        return id >= 0 && id < n_routes ? routes[id].name : "unmatched";
}

int metrics_n_routes(void)
{
        return n_routes;
}

void metrics_request(int route, const char *method, int status, uint64_t usec, int timed)
{
        struct route_metrics *m =
                route >= 0 && route < n_routes ? &routes[route] : &routes[METRICS_MAX_ROUTES];
        size_t mi = N_METHODS - 1, ci = N_CODES;

        for (size_t i = 0; i < N_METHODS; i++)
                if (method && strcmp(method, methods[i]) == 0)
                        mi = i;
        for (size_t i = 0; i < N_CODES; i++)
                if (codes[i] == status)
                        ci = i;
        atomic_fetch_add_explicit(&m->count[mi][ci], 1, memory_order_relaxed);
        if (!timed)
                return;
        double sec = (double)usec / 1e6;
        size_t b = METRICS_N_BUCKETS;
        for (size_t i = 0; i < METRICS_N_BUCKETS; i++)
                if (sec <= metrics_buckets[i]) {
                        b = i;
                        break;
                }
        atomic_fetch_add_explicit(&m->bucket[b], 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&m->sum_usec, usec, memory_order_relaxed);
        atomic_fetch_add_explicit(&m->n_timed, 1, memory_order_relaxed);
}

void strbuf_printf(struct strbuf *sb, const char *fmt, ...)
{
        va_list ap;
        int n;

        if (sb->oom)
                return;
        for (;;) {
                size_t avail = sb->cap - sb->len;
                va_start(ap, fmt);
                n = vsnprintf(sb->s ? sb->s + sb->len : NULL, avail, fmt, ap);
                va_end(ap);
                if (n < 0) {
                        sb->oom = 1;
                        return;
                }
                if ((size_t)n < avail) {
                        sb->len += (size_t)n;
                        return;
                }
                size_t cap = sb->cap ? sb->cap * 2 : 4096;
                while (cap < sb->len + (size_t)n + 1)
                        cap *= 2;
                char *ns = realloc(sb->s, cap);
                if (!ns) {
                        sb->oom = 1;
                        return;
                }
                sb->s = ns;
                sb->cap = cap;
        }
}

void strbuf_free(struct strbuf *sb)
{
        free(sb->s);
        *sb = (struct strbuf){ 0 };
}

/* A non-negative integer member of o, 0 when absent (no broker) or not an integer. */
static unsigned long long doc_count(const json_t *o, const char *key)
{
        json_int_t v = json_integer_value(json_object_get(o, key));

        return v > 0 ? (unsigned long long)v : 0;
}

void metrics_render_sessions(struct strbuf *sb, struct agent *a)
{
        unsigned long long phase[_LFS_PHASE_MAX] = { 0 }, fds, bytes, workloads, dropped;
        const json_t *summary;

        /* The numbers under agent.lock, the text after: sessions.c replaces the document. */
        agent_lock(a);
        summary = json_object_get(a->sessions_doc, "summary");
        for (int p = LFS_PHASE_OUTGOING; p < _LFS_PHASE_MAX; p++)
                phase[p] = doc_count(summary, lfs_phase_to_string(p));
        fds = doc_count(summary, "fds");
        bytes = doc_count(summary, "bytes");
        workloads = doc_count(summary, "workloads");
        dropped = doc_count(a->sessions_doc, "events_dropped");
        agent_unlock(a);

        strbuf_printf(sb, "# HELP luofleet_sessions Workload sessions the session broker holds, by "
                          "phase.\n"
                          "# TYPE luofleet_sessions gauge\n");
        for (int p = LFS_PHASE_OUTGOING; p < _LFS_PHASE_MAX; p++)
                strbuf_printf(sb, "luofleet_sessions{phase=\"%s\"} %llu\n", lfs_phase_to_string(p),
                              phase[p]);
        strbuf_printf(sb,
                      "# HELP luofleet_session_fds Files preserved in workload sessions.\n"
                      "# TYPE luofleet_session_fds gauge\nluofleet_session_fds %llu\n"
                      "# HELP luofleet_session_bytes Bytes of the files preserved in workload "
                      "sessions.\n"
                      "# TYPE luofleet_session_bytes gauge\nluofleet_session_bytes %llu\n"
                      "# HELP luofleet_session_workloads Workloads connected to the sessions "
                      "socket.\n"
                      "# TYPE luofleet_session_workloads gauge\nluofleet_session_workloads %llu\n"
                      "# HELP luofleet_session_events_dropped_total Session broker events lost "
                      "before the agent journaled them (since the broker started).\n"
                      "# TYPE luofleet_session_events_dropped_total counter\n"
                      "luofleet_session_events_dropped_total %llu\n",
                      fds, bytes, workloads, dropped);
}

void metrics_render_requests(struct strbuf *sb)
{
        render_limits(sb);
        render_blackout(sb);
        strbuf_printf(sb, "# HELP luofleet_http_requests_total HTTP requests answered, by route, "
                          "method and status code.\n"
                          "# TYPE luofleet_http_requests_total counter\n");
        for (int r = 0; r <= n_routes; r++) {
                struct route_metrics *m = r < n_routes ? &routes[r] : &routes[METRICS_MAX_ROUTES];
                const char *name = r < n_routes ? m->name : "unmatched";
                for (size_t mi = 0; mi < N_METHODS; mi++)
                        for (size_t ci = 0; ci <= N_CODES; ci++) {
                                uint64_t v = atomic_load(&m->count[mi][ci]);
                                if (!v)
                                        continue;
                                char code[8];
                                if (ci < N_CODES)
                                        snprintf(code, sizeof(code), "%d", codes[ci]);
                                else
                                        snprintf(code, sizeof(code), "other");
                                strbuf_printf(
                                        sb,
                                        "luofleet_http_requests_total{route=\"%s\",method=\"%s\","
                                        "code=\"%s\"} %llu\n",
                                        name, methods[mi], code, (unsigned long long)v);
                        }
        }
        strbuf_printf(sb, "# HELP luofleet_http_request_duration_seconds Time to answer requests "
                          "answered at once (long-polls and streams excluded), by route.\n"
                          "# TYPE luofleet_http_request_duration_seconds histogram\n");
        for (int r = 0; r < n_routes; r++) {
                struct route_metrics *m = &routes[r];
                uint64_t cum = 0;
                for (size_t b = 0; b < METRICS_N_BUCKETS; b++) {
                        cum += atomic_load(&m->bucket[b]);
                        strbuf_printf(sb,
                                      "luofleet_http_request_duration_seconds_bucket{route=\"%s\","
                                      "le=\"%g\"} %llu\n",
                                      m->name, metrics_buckets[b], (unsigned long long)cum);
                }
                cum += atomic_load(&m->bucket[METRICS_N_BUCKETS]);
                strbuf_printf(
                        sb,
                        "luofleet_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} "
                        "%llu\n"
                        "luofleet_http_request_duration_seconds_sum{route=\"%s\"} %.6f\n"
                        "luofleet_http_request_duration_seconds_count{route=\"%s\"} %llu\n",
                        m->name, (unsigned long long)cum, m->name,
                        (double)atomic_load(&m->sum_usec) / 1e6, m->name,
                        (unsigned long long)atomic_load(&m->n_timed));
        }
}
