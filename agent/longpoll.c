/*
 * longpoll.c: the waiter registry (see longpoll.h). Waking is O(waiters) per
 * change: a change wakes (nearly) all of them anyway. Resume callbacks are
 * collected under the lock and called after it is released, in queue order.
 */
#include <errno.h>
#include <stdlib.h>

#include "longpoll.h"
#include "loop.h"

void lp_init(struct longpoll *lp, unsigned max)
{
        *lp = (struct longpoll){ .max = max, .next_deadline = UINT64_MAX };
        pthread_mutex_init(&lp->lock, NULL);
}

void lp_done(struct longpoll *lp)
{
        pthread_mutex_destroy(&lp->lock);
}

void lp_set_loop(struct longpoll *lp, struct loop *l)
{
        lp->loop = l;
}

static void lp_unlink(struct longpoll *lp, struct lp_waiter *w)
{
        if (w->prev)
                w->prev->next = w->next;
        else
                lp->head = w->next;
        if (w->next)
                w->next->prev = w->prev;
        w->prev = w->next = NULL;
        w->linked = false;
        lp->n--;
}

static void lp_recompute_deadline(struct longpoll *lp)
{
        uint64_t d = UINT64_MAX;
        for (struct lp_waiter *w = lp->head; w; w = w->next)
                if (w->deadline < d)
                        d = w->deadline;
        lp->next_deadline = d;
}

int lp_add(struct longpoll *lp, struct lp_waiter *w, uint64_t (*current_index)(void *), void *ud)
{
        bool rearm = false;

        pthread_mutex_lock(&lp->lock);
        if (lp->closed || current_index(ud) > w->index) {
                pthread_mutex_unlock(&lp->lock);
                return 1;
        }
        if (lp->n >= lp->max) {
                lp->rejected_total++;
                pthread_mutex_unlock(&lp->lock);
                return -EBUSY;
        }
        w->prev = NULL;
        w->next = lp->head;
        if (lp->head)
                lp->head->prev = w;
        lp->head = w;
        w->linked = true;
        w->timed_out = false;
        lp->n++;
        if (w->deadline < lp->next_deadline) {
                lp->next_deadline = w->deadline;
                rearm = true;
        }
        pthread_mutex_unlock(&lp->lock);
        if (rearm && lp->loop)
                loop_rearm(lp->loop);
        return 0;
}

/* Wake the waiters matching pred; resume them outside the lock. */
static void lp_wake(struct longpoll *lp, uint64_t index, uint64_t now, bool all)
{
        struct lp_waiter *list = NULL, *w, *next;

        pthread_mutex_lock(&lp->lock);
        for (w = lp->head; w; w = next) {
                next = w->next;
                bool changed = w->index < index;
                bool expired = now && w->deadline <= now;
                if (!(all || changed || expired))
                        continue;
                lp_unlink(lp, w);
                w->timed_out = !changed && expired;
                if (w->timed_out)
                        lp->timeouts_total++;
                else
                        lp->woken_total++;
                w->next = list;
                list = w;
        }
        lp_recompute_deadline(lp);
        pthread_mutex_unlock(&lp->lock);

        /* The list is reversed twice (head insertion): oldest waiter first. */
        for (w = list; w; w = next) {
                next = w->next;
                w->next = NULL;
                w->resume(w);
        }
}

void lp_notify(void *userdata, uint64_t index)
{
        struct longpoll *lp = userdata;
        lp_wake(lp, index, 0, false);
        /* The loop's timer may now be early or unneeded: it re-arms on fire. */
}

uint64_t lp_next_deadline(void *userdata)
{
        struct longpoll *lp = userdata;
        uint64_t d;

        pthread_mutex_lock(&lp->lock);
        d = lp->next_deadline;
        pthread_mutex_unlock(&lp->lock);
        return d;
}

void lp_fire(void *userdata, uint64_t now)
{
        struct longpoll *lp = userdata;
        lp_wake(lp, 0, now, false);
}

void lp_close(struct longpoll *lp)
{
        pthread_mutex_lock(&lp->lock);
        lp->closed = true;
        pthread_mutex_unlock(&lp->lock);
        lp_wake(lp, UINT64_MAX, 0, true);
}

unsigned lp_count(struct longpoll *lp)
{
        unsigned n;

        pthread_mutex_lock(&lp->lock);
        n = lp->n;
        pthread_mutex_unlock(&lp->lock);
        return n;
}
