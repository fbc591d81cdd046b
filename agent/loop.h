/*
 * loop.h: the agent's event-loop thread: the backend's change notification
 * (sysfs POLLPRI or the simulator's eventfd), one timerfd for every deadline
 * (long-poll expiry, SSE heartbeats), and an eventfd to stop. The timer is
 * armed only while some client asked for a deadline: an idle agent sleeps.
 * Under a systemd watchdog, the loop itself is a timer client that sends
 * WATCHDOG=1 (notify.h) at half the interval; without one it costs nothing.
 */
#pragma once

#include <stdint.h>

struct agent;
struct loop;

struct loop_timer_client {
        /* earliest CLOCK_MONOTONIC deadline in usec, UINT64_MAX for none */
        uint64_t (*next)(void *userdata);
        void (*fire)(void *userdata, uint64_t now);
        void *userdata;
};

int loop_new(struct agent *a, struct loop **ret);
int loop_add_timer_client(struct loop *l, const struct loop_timer_client *c);
int loop_start(struct loop *l);
/* Recompute and arm the timer; any thread. */
void loop_rearm(struct loop *l);
/* Stop the thread (idempotent); nothing is resumed or notified after it. */
void loop_stop(struct loop *l);
/* Stop (if not yet) and free; NULL-safe. */
struct loop *loop_free(struct loop *l);
/* Wake-ups handled, for metrics. */
uint64_t loop_watch_wakeups(struct loop *l);
