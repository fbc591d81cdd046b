/*
 * connlimit.h: connection accounting for every listener and MHD thread of
 * the agent: the total and per-address connection limits (checked in MHD's
 * accept policy, counted in its connection notifications), and the request
 * deadline against slowloris clients (a timer client of the event loop).
 *
 * MHD's own idle timeout restarts with every byte, so a client trickling a
 * request head one byte at a time would hold its connection forever. Here a
 * connection carries a deadline from the moment it is accepted until its
 * request (head and body) has arrived; after each answer the next request on
 * the same connection gets idle timeout + header timeout. A connection past
 * its deadline is shut down (shutdown(2)); MHD then closes it.
 *
 * Threads: accept/opened/arrived/completed/closed run on MHD threads (any
 * listener), fire/next on the loop thread. One lock (cl.lock), a leaf: under
 * it only shutdown(2) and metric atomics are called. The lock also guards
 * the removal at close, so an fd is never touched after MHD closed it (MHD
 * notifies the close before it closes the socket).
 */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#define CONNLIMIT_BUCKETS 1024

struct connlimit_conn;
struct connlimit_addr;
struct loop;

struct connlimit_queue {
        struct connlimit_conn *head, *tail;
};

struct connlimit {
        pthread_mutex_t lock;
        unsigned max_total;          /* all listeners together */
        unsigned max_per_ip;         /* per peer address; Unix peers have none */
        uint64_t head_usec;          /* a request must arrive within this */
        uint64_t keepalive_usec;     /* ... or idle + head after the previous answer */
        unsigned n_total;            /* open connections */
        uint64_t timeouts_total;     /* connections cut at their deadline */
        struct connlimit_queue q[2]; /* by deadline: new connections, kept-alive ones */
        uint64_t armed;              /* the deadline next() reported last */
        struct loop *loop;
        struct connlimit_addr *buckets[CONNLIMIT_BUCKETS];
};

void connlimit_init(struct connlimit *cl, unsigned max_total, unsigned max_per_ip,
                    uint64_t header_timeout_ms, uint64_t idle_timeout_ms);
void connlimit_set_loop(struct connlimit *cl, struct loop *l);
/* After every connection closed (the daemons are stopped). */
void connlimit_done(struct connlimit *cl);

/* Accept policy: false when a limit is reached (counted as a rejection). */
bool connlimit_accept(struct connlimit *cl, const struct sockaddr *sa, socklen_t len);
/*
 * A connection MHD accepted: account it and start its deadline. Returns the
 * tracking record to keep in MHD's socket context (NULL when out of memory:
 * the connection is shut down). A connection that races past a limit on
 * another thread is shut down at once, too.
 */
struct connlimit_conn *connlimit_opened(struct connlimit *cl, int fd, const struct sockaddr *sa);
/* The current request has arrived completely: no deadline while it is handled. */
void connlimit_arrived(struct connlimit *cl, struct connlimit_conn *c);
/* Its answer has been sent: the next request on the connection gets a deadline. */
void connlimit_completed(struct connlimit *cl, struct connlimit_conn *c);
/* MHD is about to close the connection; c is freed. NULL-safe. */
void connlimit_closed(struct connlimit *cl, struct connlimit_conn *c);

unsigned connlimit_count(struct connlimit *cl);

/*
 * The TLS client certificate's verdict, kept with the connection so that a
 * keep-alive client is verified once, not per request (server.c). Touched
 * only by the MHD thread that owns the connection; valid while gen is the
 * current certificate generation (a reload verifies again).
 */
struct connlimit_peer_cache {
        const void *gen; /* tls_generation() it was verified under; NULL = none */
        int cert;        /* tls_peer_identity()'s result */
        char name[136];
};
struct connlimit_peer_cache *connlimit_peer_cache(struct connlimit_conn *c);

/* Loop timer client: the earliest deadline (UINT64_MAX: none); cut the overdue. */
uint64_t connlimit_next_deadline(void *userdata);
void connlimit_fire(void *userdata, uint64_t now);
