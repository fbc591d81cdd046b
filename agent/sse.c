/*
 * sse.c: the event stream (see sse.h). A client owns a small output buffer;
 * the reader refills it from the journal (agent.lock held only while
 * copying records), and when the journal has nothing newer it suspends the
 * connection unless a change or heartbeat arrived meanwhile (the generation
 * counter closes that race).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <microhttpd.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent.h"
#include "journal.h"
#include "loop.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "sse.h"

#define SSE_BUF_MAX (64 * 1024)

struct sse_client {
        struct sse *sse;
        struct MHD_Connection *conn;
        struct sse_client *prev, *next;
        uint64_t last_sent; /* index of the last event sent */
        uint64_t gen_seen;
        bool suspended;
        bool closing;
        bool initial_state;
        bool hb_due;
        char *buf;
        size_t len, off, cap;
};

void sse_init(struct sse *s, struct agent *a, unsigned max, uint64_t heartbeat_ms)
{
        *s = (struct sse){ .agent = a,
                           .max = max,
                           .heartbeat_usec = heartbeat_ms * 1000,
                           .next_heartbeat = UINT64_MAX };
        pthread_mutex_init(&s->lock, NULL);
}

void sse_done(struct sse *s)
{
        pthread_mutex_destroy(&s->lock);
}

void sse_set_loop(struct sse *s, struct loop *l)
{
        s->loop = l;
}

static int buf_append(struct sse_client *c, const char *data, size_t n)
{
        if (c->len + n > c->cap) {
                size_t cap = c->cap ? c->cap : 4096;
                while (cap < c->len + n)
                        cap *= 2;
                char *nb = realloc(c->buf, cap);
                if (!nb)
                        return -ENOMEM;
                c->buf = nb;
                c->cap = cap;
        }
        memcpy(c->buf + c->len, data, n);
        c->len += n;
        return 0;
}

static int buf_printf(struct sse_client *c, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));
static int buf_printf(struct sse_client *c, const char *fmt, ...)
{
        char tmp[256];
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
        va_end(ap);
        if (n < 0 || (size_t)n >= sizeof(tmp))
                return -EINVAL;
        return buf_append(c, tmp, (size_t)n);
}

/* Fill the buffer with what the client has not seen. Agent lock inside. */
static void sse_fill(struct sse_client *c)
{
        struct agent *a = c->sse->agent;
        uint64_t sent = 0;

        c->len = c->off = 0;
        agent_lock(a);
        if (c->initial_state) {
                c->initial_state = false;
                if (a->snap) {
                        buf_printf(c, "id: %" PRIu64 "\nevent: state\ndata: ", a->snap->index);
                        buf_append(c, a->snap->json, a->snap->len);
                        buf_append(c, "\n\n", 2);
                        c->last_sent = a->snap->index;
                        sent++;
                }
        }
        size_t n = journal_count(a->journal);
        for (size_t pos = journal_find_after(a->journal, c->last_sent);
             pos < n && c->len < SSE_BUF_MAX; pos++) {
                const struct journal_rec *r = journal_get(a->journal, pos);
                buf_printf(c, "id: %" PRIu64 "\nevent: %s\ndata: ", r->index, r->kind);
                buf_append(c, r->json, r->len);
                buf_append(c, "\n\n", 2);
                c->last_sent = r->index;
                sent++;
        }
        agent_unlock(a);
        if (sent) {
                pthread_mutex_lock(&c->sse->lock);
                c->sse->events_total += sent;
                pthread_mutex_unlock(&c->sse->lock);
        }
}

static ssize_t sse_reader(void *cls, uint64_t pos, char *out, size_t max)
{
        struct sse_client *c = cls;
        struct sse *s = c->sse;

        (void)pos;
        for (;;) {
                if (c->off < c->len) {
                        size_t n = MIN(max, c->len - c->off);
                        memcpy(out, c->buf + c->off, n);
                        c->off += n;
                        return (ssize_t)n;
                }
                pthread_mutex_lock(&s->lock);
                uint64_t gen = s->gen;
                bool closing = c->closing, hb = c->hb_due;
                c->hb_due = false;
                pthread_mutex_unlock(&s->lock);
                if (closing)
                        return MHD_CONTENT_READER_END_OF_STREAM;

                sse_fill(c);
                if (c->len == 0 && hb) {
                        static const char beat[] = ": heartbeat\n\n";
                        buf_append(c, beat, sizeof(beat) - 1);
                }
                if (c->len > 0)
                        continue;

                pthread_mutex_lock(&s->lock);
                if (s->gen != gen || c->hb_due || c->closing) {
                        pthread_mutex_unlock(&s->lock);
                        continue;
                }
                /* Nothing new: park the connection until a change or a heartbeat. */
                c->suspended = true;
                MHD_suspend_connection(c->conn);
                pthread_mutex_unlock(&s->lock);
                return 0;
        }
}

static void sse_free_cb(void *cls)
{
        struct sse_client *c = cls;
        struct sse *s = c->sse;

        pthread_mutex_lock(&s->lock);
        if (c->prev)
                c->prev->next = c->next;
        else
                s->head = c->next;
        if (c->next)
                c->next->prev = c->prev;
        s->n--;
        if (s->n == 0)
                s->next_heartbeat = UINT64_MAX;
        pthread_mutex_unlock(&s->lock);
        free(c->buf);
        free(c);
}

struct MHD_Response *sse_response_new(struct sse *s, struct MHD_Connection *conn, uint64_t after,
                                      int initial_state, int *ret_error)
{
        struct sse_client *c;
        struct MHD_Response *resp;
        bool rearm = false;

        pthread_mutex_lock(&s->lock);
        if (s->closed) {
                pthread_mutex_unlock(&s->lock);
                *ret_error = -ESHUTDOWN;
                return NULL;
        }
        if (s->n >= s->max) {
                s->rejected_total++;
                pthread_mutex_unlock(&s->lock);
                *ret_error = -EBUSY;
                return NULL;
        }
        pthread_mutex_unlock(&s->lock);

        c = calloc(1, sizeof(*c));
        if (!c) {
                *ret_error = -ENOMEM;
                return NULL;
        }
        c->sse = s;
        c->conn = conn;
        c->last_sent = after;
        c->initial_state = initial_state;
        /* Reconnect hint for EventSource clients. */
        buf_append(c, "retry: 2000\n\n", 13);
        resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, sse_reader, c,
                                                 sse_free_cb);
        if (!resp) {
                free(c->buf);
                free(c);
                *ret_error = -ENOMEM;
                return NULL;
        }
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-store");
        MHD_add_response_header(resp, "X-Accel-Buffering", "no");

        pthread_mutex_lock(&s->lock);
        c->next = s->head;
        if (s->head)
                s->head->prev = c;
        s->head = c;
        s->n++;
        s->clients_total++;
        if (s->next_heartbeat == UINT64_MAX && s->heartbeat_usec) {
                s->next_heartbeat = now_mono_usec() + s->heartbeat_usec;
                rearm = true;
        }
        pthread_mutex_unlock(&s->lock);
        if (rearm && s->loop)
                loop_rearm(s->loop);
        *ret_error = 0;
        return resp;
}

/* Resume every parked client (lock held). */
static void sse_resume_locked(struct sse *s)
{
        for (struct sse_client *c = s->head; c; c = c->next)
                if (c->suspended) {
                        c->suspended = false;
                        MHD_resume_connection(c->conn);
                }
}

void sse_notify(void *userdata, uint64_t index)
{
        struct sse *s = userdata;

        (void)index;
        pthread_mutex_lock(&s->lock);
        s->gen++;
        sse_resume_locked(s);
        pthread_mutex_unlock(&s->lock);
}

uint64_t sse_next_deadline(void *userdata)
{
        struct sse *s = userdata;
        uint64_t d;

        pthread_mutex_lock(&s->lock);
        d = s->next_heartbeat;
        pthread_mutex_unlock(&s->lock);
        return d;
}

void sse_fire(void *userdata, uint64_t now)
{
        struct sse *s = userdata;

        pthread_mutex_lock(&s->lock);
        if (s->next_heartbeat != UINT64_MAX && now >= s->next_heartbeat) {
                for (struct sse_client *c = s->head; c; c = c->next)
                        c->hb_due = true;
                sse_resume_locked(s);
                s->next_heartbeat = s->n ? now + s->heartbeat_usec : UINT64_MAX;
        }
        pthread_mutex_unlock(&s->lock);
}

void sse_close_all(struct sse *s)
{
        pthread_mutex_lock(&s->lock);
        s->closed = 1;
        for (struct sse_client *c = s->head; c; c = c->next)
                c->closing = true;
        sse_resume_locked(s);
        pthread_mutex_unlock(&s->lock);
}

unsigned sse_count(struct sse *s)
{
        unsigned n;

        pthread_mutex_lock(&s->lock);
        n = s->n;
        pthread_mutex_unlock(&s->lock);
        return n;
}
