/*
 * loop.c: the event-loop thread (see loop.h). Owns the timerfd and the stop
 * eventfd; the backend's watch fd belongs to the backend. No lock of its
 * own: loop_rearm() is one timerfd_settime() call, which is thread-safe.
 * Under a systemd watchdog (WatchdogSec=) it is also the watchdog's timer
 * client: WATCHDOG=1 comes from this thread, so a wedged loop stops the
 * keep-alives and the service manager restarts the agent.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "agent.h"
#include "lease.h"
#include "loop.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "notify.h"
#include "sessions.h"

/* long-poll, event streams, connection limits, the watchdog, the lease, and room */
#define LOOP_MAX_CLIENTS 8

struct loop {
        struct agent *agent;
        pthread_t thread;
        bool started;
        int timer_fd;
        int stop_fd;
        struct loop_timer_client clients[LOOP_MAX_CLIENTS];
        unsigned n_clients;
        atomic_uint_fast64_t wakeups;
        pthread_mutex_t arm_lock;
        /* Watchdog keep-alive period (half of WATCHDOG_USEC), 0 for none, and
         * the next keep-alive (CLOCK_MONOTONIC usec; read by loop_rearm()
         * in any thread, written by the loop thread). */
        uint64_t watchdog_period;
        atomic_uint_fast64_t watchdog_next;
};

static uint64_t loop_watchdog_next(void *userdata)
{
        struct loop *l = userdata;

        return atomic_load(&l->watchdog_next);
}

static void loop_watchdog_fire(void *userdata, uint64_t now)
{
        struct loop *l = userdata;

        /* Fired with every other client's deadline too: only when due. */
        if (now < atomic_load(&l->watchdog_next))
                return;
        (void)notify_watchdog();
        atomic_store(&l->watchdog_next, now + l->watchdog_period);
}

int loop_new(struct agent *a, struct loop **ret)
{
        struct loop *l = calloc(1, sizeof(*l));

        if (!l)
                return -ENOMEM;
        l->agent = a;
        pthread_mutex_init(&l->arm_lock, NULL);
        l->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
        l->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (l->timer_fd < 0 || l->stop_fd < 0) {
                int r = negative_errno();
                loop_free(l);
                return r;
        }
        /* Keep-alives at half the interval, as sd_watchdog_enabled(3) advises;
         * the first one as soon as the loop runs (watchdog_next 0). Without a
         * watchdog there is no client, so no timer and no wake-up for it. */
        uint64_t watchdog_usec = notify_watchdog_usec();
        if (watchdog_usec > 0) {
                l->watchdog_period = MAX(watchdog_usec / 2, 1u);
                (void)loop_add_timer_client(l, &(struct loop_timer_client){
                                                       loop_watchdog_next, loop_watchdog_fire, l });
        }
        /* The dead-man lease's expiry is a timer client too (lease.c); armed from the start
         * when reconciliation found a lease to keep. */
        if (a) {
                int r = lease_attach(a, l);
                if (r < 0) {
                        loop_free(l);
                        return r;
                }
        }
        *ret = l;
        return 0;
}

int loop_add_timer_client(struct loop *l, const struct loop_timer_client *c)
{
        if (l->n_clients >= LOOP_MAX_CLIENTS)
                return -ENOSPC;
        l->clients[l->n_clients++] = *c;
        return 0;
}

void loop_rearm(struct loop *l)
{
        uint64_t next = UINT64_MAX;
        struct itimerspec its = { 0 };

        /* Serialized so two threads cannot arm a stale deadline last. */
        pthread_mutex_lock(&l->arm_lock);
        for (unsigned i = 0; i < l->n_clients; i++) {
                uint64_t d = l->clients[i].next(l->clients[i].userdata);
                if (d < next)
                        next = d;
        }
        if (next != UINT64_MAX) {
                if (next == 0)
                        next = 1; /* 0 would disarm */
                its.it_value.tv_sec = (time_t)(next / 1000000u);
                its.it_value.tv_nsec = (long)(next % 1000000u) * 1000;
        }
        (void)timerfd_settime(l->timer_fd, TFD_TIMER_ABSTIME, &its, NULL);
        pthread_mutex_unlock(&l->arm_lock);
}

static void loop_watch(struct loop *l)
{
        struct backend *b = l->agent->backend;
        enum luo_state s;
        int r;

        atomic_fetch_add(&l->wakeups, 1);
        for (int tries = 0; tries < 8; tries++) {
                uint64_t ticket = agent_read_ticket(l->agent);
                /* The first read consumes the notification; later ones only re-read. */
                r = tries == 0 ? b->ops->watch_read(b, &s) : b->ops->get_state(b, &s);
                if (r < 0) {
                        /* Fall back on the authoritative read. */
                        log_warning_errno(r, "Failed to re-read the live-update state: %m");
                        if (b->ops->get_state(b, &s) < 0)
                                return;
                }
                if (agent_kernel_observed(l->agent, ticket, s) != -ESTALE)
                        break;
        }
        /* The same doorbell rings for the session broker's changes (sessions.c). */
        r = sessions_refresh(l->agent);
        if (r < 0 && r != -ENOTCONN)
                log_warning_errno(r, "Failed to read the session broker's changes: %m");
}

static void *loop_main(void *userdata)
{
        struct loop *l = userdata;
        struct backend *b = l->agent->backend;
        struct pollfd pfd[3] = {
                { .fd = l->stop_fd, .events = POLLIN },
                { .fd = l->timer_fd, .events = POLLIN },
                { .fd = b->ops->watch_fd(b), .events = b->ops->watch_events(b) },
        };

        for (;;) {
                int n = poll(pfd, pfd[2].fd >= 0 ? 3 : 2, -1);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        log_error_errno(errno, "poll() failed in the event loop: %m");
                        break;
                }
                if (pfd[0].revents)
                        break;
                if (pfd[2].revents)
                        loop_watch(l);
                if (pfd[1].revents) {
                        uint64_t exp;
                        (void)!read(l->timer_fd, &exp, sizeof(exp));
                        uint64_t now = now_mono_usec();
                        for (unsigned i = 0; i < l->n_clients; i++)
                                l->clients[i].fire(l->clients[i].userdata, now);
                        loop_rearm(l);
                }
        }
        return NULL;
}

int loop_start(struct loop *l)
{
        int r;

        /* The other clients arm the timer when they get a deadline; the
         * watchdog's first one is due now. */
        if (l->watchdog_period > 0)
                loop_rearm(l);
        r = pthread_create(&l->thread, NULL, loop_main, l);
        if (r != 0)
                return -r;
        l->started = true;
        return 0;
}

uint64_t loop_watch_wakeups(struct loop *l)
{
        return atomic_load(&l->wakeups);
}

void loop_stop(struct loop *l)
{
        if (l->started) {
                uint64_t one = 1;
                (void)!write(l->stop_fd, &one, sizeof(one));
                pthread_join(l->thread, NULL);
                l->started = false;
        }
        /* No expiry fires any more: let a lease's cancel under way finish (lease.c). */
        if (l->agent)
                lease_detach(l->agent);
}

struct loop *loop_free(struct loop *l)
{
        if (!l)
                return NULL;
        loop_stop(l);
        if (l->timer_fd >= 0)
                close(l->timer_fd);
        if (l->stop_fd >= 0)
                close(l->stop_fd);
        pthread_mutex_destroy(&l->arm_lock);
        free(l);
        return NULL;
}
