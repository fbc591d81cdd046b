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
#include <sys/types.h>

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
        atomic_bool listening; /* server_start: listeners[] complete, readable by any thread */
        atomic_bool closing;   /* server_stop: the accept policy refuses new connections */
        atomic_uint deferred;  /* suspended or resumed requests not completed yet */
};

/*
 * Load the TLS credentials and the tokens file (tls.c, auth.c). main calls
 * it while it may still read root-only files, before dropping privileges;
 * server_new() calls it when main did not. Logs why on failure; -errno.
 */
int server_security_setup(const struct agent_config *cfg);

/*
 * Bind every --listen address (main thread, before privileges are dropped:
 * ports below 1024, a Unix socket in a root-only directory, its chmod 0660
 * and chown to --unix-group), or take the listening sockets the simulated
 * kexec's re-execution passed on (SERVER_LISTEN_FDS_ENV). Logs why on
 * failure ("Failed to listen on ..."); -errno. Idempotent: server_start()
 * binds itself when main did not. server_unbind() closes what was bound and
 * not started (a failure before server_start()), removing Unix sockets.
 */
int server_bind(const struct agent_config *cfg);
void server_unbind(void);
/*
 * Root about to drop to uid/gid: a Unix listener that root may not create
 * (no CAP_DAC_OVERRIDE, a directory of that user's) is created with that
 * user's file system identity instead. Before server_bind().
 */
void server_set_bind_user(uid_t uid, gid_t gid);

/* Inherited listening sockets across the simulated kexec: "I:FD,..." (--listen index, fd). */
#define SERVER_LISTEN_FDS_ENV "LUOFLEET_LISTEN_FDS"

int server_new(struct agent *a, const struct agent_config *cfg, struct server **ret);
/*
 * Start a daemon on every socket server_bind() bound (binding first if it
 * was not called); once they all run, prints the "listening on ..." lines
 * to stdout.
 */
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
/* Listener i's listening socket (its daemon's), for the re-execution to inherit; -ENOENT. */
int server_listen_fd(struct server *s, unsigned i);
