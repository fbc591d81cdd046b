/*
 * metrics.h: request counters and latency histograms, lock-free (atomics),
 * rendered with the agent's own gauges as Prometheus text by h_health.c.
 * Any thread.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define METRICS_MAX_ROUTES 16
#define METRICS_N_BUCKETS 14

extern const double metrics_buckets[METRICS_N_BUCKETS];

/* Register route names once at start (router.c); returns the route id. */
int metrics_route_register(const char *name);
const char *metrics_route_name(int id);
int metrics_n_routes(void);

/* route -1 = unmatched */
void metrics_request(int route, const char *method, int status, uint64_t usec, int timed);

/* Requests and connections refused by a limit (docs/limits.md). */
enum metrics_reject {
        METRICS_REJECT_TOTAL,            /* --max-connections */
        METRICS_REJECT_PER_IP,           /* --max-connections-per-ip */
        METRICS_REJECT_HEADER_TIMEOUT,   /* --header-timeout */
        METRICS_REJECT_HEADER_TOO_LARGE, /* --max-header-bytes (MHD's 431/414) */
        METRICS_REJECT_BODY_TOO_LARGE,   /* --max-body-bytes */
        METRICS_REJECT_MALFORMED,        /* MHD's own 400 (bad request line, Host...) */
        METRICS_REJECT_WAITERS,          /* --max-waiters */
        METRICS_REJECT_STREAMS,          /* --max-streams */
        _METRICS_REJECT_MAX,
};
const char *metrics_reject_to_string(enum metrics_reject r);
void metrics_rejected(enum metrics_reject r);
/* Open connections, all listeners (a gauge). */
void metrics_connections_set(unsigned n);

/* The configured limits, exported as gauges; set once at start. */
struct metrics_limits {
        unsigned max_connections, max_connections_per_ip, max_waiters, max_streams;
        uint64_t max_header_bytes, max_body_bytes, header_timeout_ms, idle_timeout_ms;
};
void metrics_set_limits(const struct metrics_limits *l);

/*
 * The blackout of a reboot into this boot (agent.c at start-up): the
 * luofleet_blackout_seconds histogram, 10 ms .. 60 s. Counted by this
 * process, so it holds at most the reboot it came up after.
 */
void metrics_blackout(uint64_t ms);

/* Append the request metrics (and the limits, the blackout) to a growing buffer. */
struct strbuf;
void metrics_render_requests(struct strbuf *sb);

/*
 * Append the workload sessions' gauges (luofleet_sessions{phase}, _fds,
 * _bytes, _workloads, _events_dropped_total) from the session broker's
 * document the agent caches; zeros without a broker. Takes agent.lock: call
 * it without holding it.
 */
struct agent;
void metrics_render_sessions(struct strbuf *sb, struct agent *a);

/* A tiny growing string buffer for text bodies. */
struct strbuf {
        char *s;
        size_t len, cap;
        int oom;
};
void strbuf_printf(struct strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void strbuf_free(struct strbuf *sb);
