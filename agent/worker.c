/*
 * worker.c: one thread, a FIFO of operation jobs, agent_op_execute() for
 * each. Owns the queue; lock: worker.lock only (taken without agent.lock).
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "agent.h"
#include "ops.h"
#include "worker.h"

struct worker_item {
        struct op_job *job;
        struct worker_item *next;
};

struct worker {
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        struct worker_item *head, *tail;
        bool stop;
};

static void *worker_main(void *userdata)
{
        struct worker *w = userdata;

        for (;;) {
                struct worker_item *it;

                pthread_mutex_lock(&w->lock);
                while (!w->head && !w->stop)
                        pthread_cond_wait(&w->cond, &w->lock);
                it = w->head;
                if (!it) {
                        pthread_mutex_unlock(&w->lock);
                        break;
                }
                w->head = it->next;
                if (!w->head)
                        w->tail = NULL;
                pthread_mutex_unlock(&w->lock);
                agent_op_execute(it->job);
                free(it);
        }
        return NULL;
}

int worker_new(struct worker **ret)
{
        struct worker *w = calloc(1, sizeof(*w));
        int r;

        if (!w)
                return -ENOMEM;
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->cond, NULL);
        r = pthread_create(&w->thread, NULL, worker_main, w);
        if (r != 0) {
                pthread_cond_destroy(&w->cond);
                pthread_mutex_destroy(&w->lock);
                free(w);
                return -r;
        }
        *ret = w;
        return 0;
}

int worker_submit(struct worker *w, struct op_job *job)
{
        struct worker_item *it = calloc(1, sizeof(*it));

        if (!it)
                return -ENOMEM;
        it->job = job;
        pthread_mutex_lock(&w->lock);
        if (w->stop) {
                pthread_mutex_unlock(&w->lock);
                free(it);
                return -ESHUTDOWN;
        }
        if (w->tail)
                w->tail->next = it;
        else
                w->head = it;
        w->tail = it;
        pthread_cond_signal(&w->cond);
        pthread_mutex_unlock(&w->lock);
        return 0;
}

void worker_stop(struct worker *w)
{
        bool join;

        pthread_mutex_lock(&w->lock);
        join = !w->stop;
        w->stop = true;
        pthread_cond_signal(&w->cond);
        pthread_mutex_unlock(&w->lock);
        if (join)
                pthread_join(w->thread, NULL);
}

struct worker *worker_free(struct worker *w)
{
        if (!w)
                return NULL;
        worker_stop(w);
        pthread_cond_destroy(&w->cond);
        pthread_mutex_destroy(&w->lock);
        free(w);
        return NULL;
}
