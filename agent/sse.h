/*
 * sse.h: GET /v1/events, Server-Sent Events. Each client is an MHD response
 * driven by a content reader that formats journal records as events (id =
 * index, event = kind, data = the record), suspends its connection when it
 * has nothing to send, and is resumed by the agent's change notification or
 * by the heartbeat timer.
 *
 * Threads: the reader runs on MHD's thread; sse_notify on the changing
 * thread; sse_fire on the loop thread. Lock order: sse.lock is never held
 * while taking agent.lock.
 */
#pragma once

#include <pthread.h>
#include <stdint.h>

struct agent;
struct loop;
struct MHD_Response;
struct MHD_Connection;
struct sse_client;

struct sse {
        pthread_mutex_t lock;
        struct agent *agent;
        struct loop *loop;
        struct sse_client *head;
        unsigned n, max;
        uint64_t gen;            /* bumped on every change */
        int closed;              /* shutting down: no new streams */
        uint64_t heartbeat_usec; /* interval */
        uint64_t next_heartbeat; /* CLOCK_MONOTONIC usec, UINT64_MAX = none */
        uint64_t events_total, clients_total, rejected_total;
};

void sse_init(struct sse *s, struct agent *a, unsigned max, uint64_t heartbeat_ms);
void sse_done(struct sse *s);
void sse_set_loop(struct sse *s, struct loop *l);

/*
 * Make the streaming response for a new client (replay records after
 * `after`; with initial_state, start with the current document). Returns
 * NULL with -EBUSY over the cap.
 */
struct MHD_Response *sse_response_new(struct sse *s, struct MHD_Connection *conn, uint64_t after,
                                      int initial_state, int *ret_error);

void sse_notify(void *userdata, uint64_t index);
uint64_t sse_next_deadline(void *userdata);
void sse_fire(void *userdata, uint64_t now);
/* Shutdown: end every stream. */
void sse_close_all(struct sse *s);
unsigned sse_count(struct sse *s);
