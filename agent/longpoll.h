/*
 * longpoll.h: suspended GET /v1/state?index=N&wait=D requests. A waiter is
 * embedded in the request context (httpd.c) and lives until resumed; the
 * registry only links it. Woken by the agent's change notification (every
 * waiter whose index is below the new one) or by its own deadline (the loop's
 * timerfd). Never by sleep-polling.
 *
 * Threads: lp_add on MHD's thread; lp_notify on whichever thread made the
 * change (loop or worker); lp_fire on the loop thread. Lock: lp.lock, taken
 * after (never while holding) agent.lock.
 */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

struct loop;

struct lp_waiter {
        uint64_t index;    /* wake when the document index > index */
        uint64_t deadline; /* CLOCK_MONOTONIC usec */
        uint64_t queued_at;
        void (*resume)(struct lp_waiter *w); /* called once, without lp.lock */
        struct lp_waiter *prev, *next;
        bool linked;
        bool timed_out;
};

struct longpoll {
        pthread_mutex_t lock;
        struct lp_waiter *head;
        unsigned n;
        unsigned max;
        uint64_t next_deadline; /* cached minimum, UINT64_MAX = none */
        struct loop *loop;
        bool closed; /* shutting down: lp_add answers at once */
        /* metrics */
        uint64_t woken_total, timeouts_total, rejected_total;
};

void lp_init(struct longpoll *lp, unsigned max);
void lp_done(struct longpoll *lp);
void lp_set_loop(struct longpoll *lp, struct loop *l);

/*
 * Register a waiter. Returns 0, -EBUSY over the cap, or 1 when current_index
 * already exceeds w->index (answer at once, nothing registered). The check
 * and the link happen under the lock, so no change can slip between them.
 */
int lp_add(struct longpoll *lp, struct lp_waiter *w, uint64_t (*current_index)(void *), void *ud);

/* Agent listener: wake the waiters below index. */
void lp_notify(void *userdata, uint64_t index);
/* Timer client. */
uint64_t lp_next_deadline(void *userdata);
void lp_fire(void *userdata, uint64_t now);
/* Shutdown: wake everyone and answer new waiters at once. */
void lp_close(struct longpoll *lp);
unsigned lp_count(struct longpoll *lp);
