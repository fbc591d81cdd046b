/*
 * connlimit.c: connection limits and request deadlines (see connlimit.h).
 * MHD threads of every listener and the loop thread; cl.lock is a leaf.
 *
 * Both deadline queues stay sorted by construction: every record entering a
 * queue gets now + that queue's constant, so appending keeps the order, and
 * the timer only looks at the two heads. The loop is re-armed only when a
 * new deadline is earlier than the one it was last told about (after a fire
 * the loop asks again), so a busy server does not re-arm per request.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "connlimit.h"
#include "loop.h"
#include "luofleet/util.h"
#include "metrics.h"

struct connlimit_addr {
        struct connlimit_addr *next;
        sa_family_t family;
        uint8_t bytes[16];
        unsigned n;
};

struct connlimit_conn {
        struct connlimit_conn *prev, *next;
        int queue; /* index into cl->q, -1 when not waiting for a request */
        uint64_t deadline;
        int fd;
        struct connlimit_addr *addr;
        struct connlimit_peer_cache peer;
};

static bool addr_key(const struct sockaddr *sa, sa_family_t *family, uint8_t bytes[16])
{
        memset(bytes, 0, 16);
        if (!sa)
                return false;
        if (sa->sa_family == AF_INET) {
                memcpy(bytes, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
                *family = AF_INET;
                return true;
        }
        if (sa->sa_family == AF_INET6) {
                memcpy(bytes, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
                *family = AF_INET6;
                return true;
        }
        return false; /* Unix peers have no address to limit */
}

static unsigned addr_hash(sa_family_t family, const uint8_t bytes[16])
{
        uint32_t h = 2166136261u ^ family;
        for (int i = 0; i < 16; i++)
                h = (h ^ bytes[i]) * 16777619u;
        return h % CONNLIMIT_BUCKETS;
}

static struct connlimit_addr *addr_find(struct connlimit *cl, sa_family_t family,
                                        const uint8_t bytes[16])
{
        for (struct connlimit_addr *a = cl->buckets[addr_hash(family, bytes)]; a; a = a->next)
                if (a->family == family && memcmp(a->bytes, bytes, 16) == 0)
                        return a;
        return NULL;
}

void connlimit_init(struct connlimit *cl, unsigned max_total, unsigned max_per_ip,
                    uint64_t header_timeout_ms, uint64_t idle_timeout_ms)
{
        *cl = (struct connlimit){ .max_total = max_total,
                                  .max_per_ip = max_per_ip,
                                  .head_usec = header_timeout_ms * 1000,
                                  .keepalive_usec = (idle_timeout_ms + header_timeout_ms) * 1000,
                                  .armed = UINT64_MAX };
        for (int i = 0; i < 2; i++)
                cl->q[i] = (struct connlimit_queue){ NULL, NULL };
        pthread_mutex_init(&cl->lock, NULL);
}

void connlimit_set_loop(struct connlimit *cl, struct loop *l)
{
        cl->loop = l;
}

void connlimit_done(struct connlimit *cl)
{
        for (int i = 0; i < CONNLIMIT_BUCKETS; i++)
                while (cl->buckets[i]) {
                        struct connlimit_addr *a = cl->buckets[i];
                        cl->buckets[i] = a->next;
                        free(a);
                }
        pthread_mutex_destroy(&cl->lock);
}

bool connlimit_accept(struct connlimit *cl, const struct sockaddr *sa, socklen_t len)
{
        uint8_t bytes[16];
        sa_family_t family = AF_UNSPEC;
        enum metrics_reject why = _METRICS_REJECT_MAX;

        (void)len;
        bool has_addr = addr_key(sa, &family, bytes);
        pthread_mutex_lock(&cl->lock);
        if (cl->n_total >= cl->max_total)
                why = METRICS_REJECT_TOTAL;
        else if (has_addr) {
                struct connlimit_addr *a = addr_find(cl, family, bytes);
                if (a && a->n >= cl->max_per_ip)
                        why = METRICS_REJECT_PER_IP;
        }
        pthread_mutex_unlock(&cl->lock);
        if (why == _METRICS_REJECT_MAX)
                return true;
        metrics_rejected(why);
        return false;
}

static void queue_unlink(struct connlimit *cl, struct connlimit_conn *c)
{
        struct connlimit_queue *q;

        if (c->queue < 0)
                return;
        q = &cl->q[c->queue];
        if (c->prev)
                c->prev->next = c->next;
        else
                q->head = c->next;
        if (c->next)
                c->next->prev = c->prev;
        else
                q->tail = c->prev;
        c->prev = c->next = NULL;
        c->queue = -1;
}

/* Append with now + the queue's constant; true when the loop must be re-armed. */
static bool queue_append(struct connlimit *cl, struct connlimit_conn *c, int queue)
{
        struct connlimit_queue *q = &cl->q[queue];

        queue_unlink(cl, c);
        c->deadline = now_mono_usec() + (queue == 0 ? cl->head_usec : cl->keepalive_usec);
        c->queue = queue;
        c->prev = q->tail;
        c->next = NULL;
        if (q->tail)
                q->tail->next = c;
        else
                q->head = c;
        q->tail = c;
        if (c->deadline < cl->armed) {
                /* Only one thread re-arms for it: the loop will ask next() again. */
                cl->armed = c->deadline;
                return true;
        }
        return false;
}

static void rearm(struct connlimit *cl, bool needed)
{
        if (needed && cl->loop)
                loop_rearm(cl->loop);
}

struct connlimit_conn *connlimit_opened(struct connlimit *cl, int fd, const struct sockaddr *sa)
{
        struct connlimit_conn *c = calloc(1, sizeof(*c));
        uint8_t bytes[16];
        sa_family_t family = AF_UNSPEC;
        enum metrics_reject why = _METRICS_REJECT_MAX;
        bool has_addr = addr_key(sa, &family, bytes), arm = false;

        if (!c) {
                (void)shutdown(fd, SHUT_RDWR);
                return NULL;
        }
        c->fd = fd;
        c->queue = -1;
        pthread_mutex_lock(&cl->lock);
        cl->n_total++;
        if (has_addr) {
                struct connlimit_addr *a = addr_find(cl, family, bytes);
                if (!a) {
                        a = calloc(1, sizeof(*a));
                        if (a) {
                                unsigned h = addr_hash(family, bytes);
                                a->family = family;
                                memcpy(a->bytes, bytes, 16);
                                a->next = cl->buckets[h];
                                cl->buckets[h] = a;
                        }
                }
                if (a) {
                        a->n++;
                        c->addr = a;
                        if (a->n > cl->max_per_ip)
                                why = METRICS_REJECT_PER_IP;
                } else
                        why = METRICS_REJECT_TOTAL; /* out of memory: no room for more */
        }
        if (cl->n_total > cl->max_total)
                why = METRICS_REJECT_TOTAL;
        if (why != _METRICS_REJECT_MAX) {
                /* Another thread's connection came first: it never gets a request in.
                 * (Counted first: the client may ask for the metrics at once.) */
                metrics_rejected(why);
                (void)shutdown(fd, SHUT_RDWR);
        } else
                arm = queue_append(cl, c, 0);
        metrics_connections_set(cl->n_total);
        pthread_mutex_unlock(&cl->lock);
        rearm(cl, arm);
        return c;
}

void connlimit_arrived(struct connlimit *cl, struct connlimit_conn *c)
{
        if (!c)
                return;
        pthread_mutex_lock(&cl->lock);
        queue_unlink(cl, c);
        pthread_mutex_unlock(&cl->lock);
}

void connlimit_completed(struct connlimit *cl, struct connlimit_conn *c)
{
        bool arm;

        if (!c)
                return;
        pthread_mutex_lock(&cl->lock);
        arm = c->fd >= 0 && queue_append(cl, c, 1);
        pthread_mutex_unlock(&cl->lock);
        rearm(cl, arm);
}

void connlimit_closed(struct connlimit *cl, struct connlimit_conn *c)
{
        if (!c)
                return;
        pthread_mutex_lock(&cl->lock);
        queue_unlink(cl, c);
        cl->n_total--;
        if (c->addr) {
                struct connlimit_addr *a = c->addr;
                if (--a->n == 0) {
                        struct connlimit_addr **pp = &cl->buckets[addr_hash(a->family, a->bytes)];
                        while (*pp != a)
                                pp = &(*pp)->next;
                        *pp = a->next;
                        free(a);
                }
        }
        metrics_connections_set(cl->n_total);
        pthread_mutex_unlock(&cl->lock);
        free(c);
}

unsigned connlimit_count(struct connlimit *cl)
{
        unsigned n;

        pthread_mutex_lock(&cl->lock);
        n = cl->n_total;
        pthread_mutex_unlock(&cl->lock);
        return n;
}

uint64_t connlimit_next_deadline(void *userdata)
{
        struct connlimit *cl = userdata;
        uint64_t d = UINT64_MAX;

        pthread_mutex_lock(&cl->lock);
        for (int i = 0; i < 2; i++)
                if (cl->q[i].head && cl->q[i].head->deadline < d)
                        d = cl->q[i].head->deadline;
        cl->armed = d;
        pthread_mutex_unlock(&cl->lock);
        return d;
}

void connlimit_fire(void *userdata, uint64_t now)
{
        struct connlimit *cl = userdata;

        pthread_mutex_lock(&cl->lock);
        for (int i = 0; i < 2; i++)
                while (cl->q[i].head && cl->q[i].head->deadline <= now) {
                        struct connlimit_conn *c = cl->q[i].head;
                        queue_unlink(cl, c);
                        /* Counted before the client can see it. Still open: MHD
                         * notifies the close (under this lock) before closing. */
                        metrics_rejected(METRICS_REJECT_HEADER_TIMEOUT);
                        cl->timeouts_total++;
                        (void)shutdown(c->fd, SHUT_RDWR);
                }
        pthread_mutex_unlock(&cl->lock);
}

struct connlimit_peer_cache *connlimit_peer_cache(struct connlimit_conn *c)
{
        return c ? &c->peer : NULL;
}
