/*
 * session.h: libluofleet-session, the client library for workloads (VMMs,
 * databases, anything keeping state in memfds) that want their state to
 * survive a live update (docs/sessions.md, protocol in
 * docs/session-protocol.md). Stable API: functions are only ever added.
 *
 * Link with -lluofleet-session (pkg-config luofleet-session). Every function
 * returns 0 (or a count) on success and -errno on failure; errnos from the
 * kernel come back unchanged (EEXIST, EBUSY, ENOENT, EBADF, ...), with the
 * broker's sentence in lfs_last_message(). Nothing is printed. A message
 * from the broker that breaks the protocol fails the call with -EPROTO, the
 * broker's end of file with -ECONNRESET; the connection is then dead and
 * every later call returns -ENOTCONN (queued events are still returned).
 *
 * A client is one connection, used by one thread at a time. Events
 * (LFS_EVENT_PREPARE, ...) that arrive while a request waits for its answer
 * are queued (up to 64, the oldest dropped beyond) and returned by
 * lfs_next_event(). lfs_get_fd() is readable when an event may be waiting
 * on the socket: poll() it in an event loop, but first drain what earlier
 * calls queued (lfs_next_event(c, &ev, 0) until -ETIMEDOUT), since queued
 * events no longer make the socket readable.
 *
 *   struct lfs_client *c;
 *   lfs_connect(NULL, "vm-42", LFS_HELLO_REGISTER, &c);
 *   lfs_session_create(c, "memory");
 *   lfs_preserve(c, "memory", memfd, 1);
 *   ... on LFS_EVENT_PREPARE: lfs_confirm(c, ev.id);
 *   after the update (a new process, a new connection):
 *   lfs_session_retrieve(c, "memory");
 *   lfs_retrieve_fd(c, "memory", 1, &fd);
 *   lfs_session_finish(c, "memory");
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "luofleet/session_proto.h"

#ifdef __cplusplus
extern "C" {
#endif

struct lfs_client;

struct lfs_event {
        uint64_t id;              /* confirm or veto a PREPARE with this id */
        enum lfs_event_kind kind; /* LFS_EVENT_PREPARE, ... */
        uint64_t deadline_ms;     /* PREPARE, REBOOT: confirm within this many ms of arrival */
        char note[LFS_TEXT_MAX + 1];
};

struct lfs_session_info {
        char name[LFS_NAME_MAX + 1];
        enum lfs_phase phase;
        uint64_t fds;
        uint64_t bytes;
};

struct lfs_fd_info {
        uint64_t token;
        uint64_t bytes;
        int retrieved; /* 1 when retrieved in this boot */
};

/*
 * The socket to use when lfs_connect() gets NULL: $LUOFLEET_SESSIONS_SOCKET,
 * else LFS_SOCKET_DEFAULT.
 */
const char *lfs_default_socket(void);

/*
 * Connect and say HELLO as workload `name` (1..63 of [A-Za-z0-9._-]).
 * flags: LFS_HELLO_REGISTER to take part in prepare (every registered
 * workload must confirm each prepare, or it fails naming the ones that did
 * not). -ECONNREFUSED/-ENOENT: no broker; -EACCES: the socket's mode/group
 * keep us out; -EUSERS: too many clients.
 */
int lfs_connect(const char *socket_path, const char *name, unsigned flags, struct lfs_client **ret);
/* Close the connection (NULL is fine). Sessions stay with the broker. */
void lfs_close(struct lfs_client *c);

/* The connection's descriptor, for poll(POLLIN): an event may be waiting. */
int lfs_get_fd(const struct lfs_client *c);
/* The host's state at HELLO (enum luo_state: 1 normal, 2 prepared, 4 updated, ...). */
int lfs_host_state(const struct lfs_client *c);
/* The broker's sentence about the last failure ("" when none). */
const char *lfs_last_message(const struct lfs_client *c);

/* Sessions: names are per owner (the caller's uid); another uid cannot see them. */
int lfs_session_create(struct lfs_client *c, const char *session);
int lfs_session_close(struct lfs_client *c, const char *session);
int lfs_session_retrieve(struct lfs_client *c, const char *session);
int lfs_session_finish(struct lfs_client *c, const char *session);

/* Preserve fd (a memfd on Linux 7.3) under token in an outgoing session. *ret_bytes may be NULL. */
int lfs_preserve(struct lfs_client *c, const char *session, int fd, uint64_t token,
                 uint64_t *ret_bytes);
int lfs_unpreserve(struct lfs_client *c, const char *session, uint64_t token);
/* After the update: the file preserved under token (O_CLOEXEC; the caller closes it). */
int lfs_retrieve_fd(struct lfs_client *c, const char *session, uint64_t token, int *ret_fd);

/* The caller's sessions / one session's fds: malloc'ed arrays (free() them), *ret_n entries. */
int lfs_list(struct lfs_client *c, struct lfs_session_info **ret, size_t *ret_n);
int lfs_show(struct lfs_client *c, const char *session, struct lfs_fd_info **ret, size_t *ret_n);

/*
 * The next event: 0 with *ret filled, -ETIMEDOUT after timeout_ms (-1 =
 * wait forever, 0 = poll), -ECONNRESET when the broker went away.
 */
int lfs_next_event(struct lfs_client *c, struct lfs_event *ret, int timeout_ms);
/* Answer an LFS_EVENT_PREPARE: -ESTALE when that prepare is over already. */
int lfs_confirm(struct lfs_client *c, uint64_t event_id);
int lfs_veto(struct lfs_client *c, uint64_t event_id, const char *reason);

#ifdef __cplusplus
}
#endif
