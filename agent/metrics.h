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

/* Append the request metrics to a growing buffer. */
struct strbuf;
void metrics_render_requests(struct strbuf *sb);

/* A tiny growing string buffer for text bodies. */
struct strbuf {
        char *s;
        size_t len, cap;
        int oom;
};
void strbuf_printf(struct strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void strbuf_free(struct strbuf *sb);
