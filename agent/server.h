/*
 * server.h: the HTTP side of the agent: libmicrohttpd daemons (one per
 * listen address), the request context, long-poll and SSE registries, the
 * worker and the event loop they share. Created and destroyed by main.
 *
 * Threads: one MHD thread per listener runs the access handler and the
 * completion callback; see longpoll.h, sse.h, worker.h, loop.h for the rest.
 */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "connlimit.h"
#include "longpoll.h"
#include "sse.h"

struct agent;
struct worker;
struct loop;
struct server_listener;

struct server {
        struct agent *agent;
        const struct agent_config *cfg;
        struct longpoll lp;
        struct sse sse;
        struct connlimit conns; /* connection limits and request deadlines */
        struct worker *worker;
        struct loop *loop;
        struct server_listener *listeners[8];
        unsigned n_listeners;
        uint64_t started_mono;
        bool stopped;
        atomic_uint deferred; /* suspended or resumed requests not completed yet */
};

/*
 * Load the TLS credentials and the tokens file (tls.c, auth.c). main calls
 * it while it may still read root-only files, before dropping privileges;
 * server_new() calls it when main did not. Logs why on failure; -errno.
 */
int server_security_setup(const struct agent_config *cfg);

int server_new(struct agent *a, const struct agent_config *cfg, struct server **ret);
/* Bind and start every listener; prints "listening on ..." lines to stdout. */
int server_start(struct server *s);
/* Orderly stop: refuse new operations, finish the running one, wake and
 * answer waiters, end streams, stop the daemons. */
void server_stop(struct server *s);
struct server *server_free(struct server *s);

/*
 * SIGHUP (main thread): reread the TLS certificate and key and the tokens
 * file. On any error the running configuration stays and the error is
 * logged; returns 0 or -errno.
 */
int server_reload(struct server *s);

/*
 * The --listen value that binds listener i again (with the port the kernel
 * chose for port 0), for the simulated reboot's re-execution. -ENOENT past
 * the last listener.
 */
int server_listen_spec(struct server *s, unsigned i, char *buf, size_t size);
