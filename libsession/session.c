/*
 * session.c: libluofleet-session, the client library workloads use to talk
 * to the session broker (session.h, docs/sessions.md). One struct
 * lfs_client is one SOCK_SEQPACKET connection; the caller uses it from one
 * thread at a time. No global state, no printing, no exit, only libc.
 *
 * Every request gets the next sequence number and waits (blocking) for the
 * answer with that number and type. Meanwhile the broker may send events
 * (queued, at most QUEUE_MAX: the oldest is dropped beyond, and counted)
 * and, for LIST and SHOW, entries (collected, at most ENTRIES_MAX). Any
 * message the protocol does not allow at that point (malformed, another
 * sequence number, an answer of another type, an entry count that does not
 * match) means the broker and this library no longer agree about the
 * stream: the connection is shut down and is dead (-EPROTO once, then
 * -ENOTCONN); likewise the broker's end of file (-ECONNRESET once). The
 * descriptor stays open until lfs_close(), so a poll() loop sees a hang-up
 * rather than a closed number.
 *
 * Owns: the socket, the event queue, lists being collected (handed to the
 * caller on success).
 */
#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "luofleet/session.h"
#include "luofleet/session_proto.h"

#define LFS_EXPORT __attribute__((visibility("default")))

/* Events kept while requests wait for their answers. */
#define QUEUE_MAX 64
/* Entries of one LIST or SHOW answer; beyond: -E2BIG (the rest is read and dropped). */
#define ENTRIES_MAX 4096

struct lfs_client {
        int fd;
        uint32_t seq;   /* the last request's */
        int host_state; /* from the HELLO answer */
        bool dead;
        size_t q_head, q_len;
        uint64_t q_dropped;
        struct lfs_event queue[QUEUE_MAX];
        char last_message[LFS_TEXT_MAX + 1];
};

/* Entries of a LIST or SHOW answer, converted as they arrive. */
struct collect {
        uint16_t type; /* LFS_INFO or LFS_FD_INFO */
        size_t size;   /* of one converted entry */
        void (*convert)(void *dst, const struct lfs_msg *m);
        void *items;
        size_t n, cap;
        uint64_t seen; /* every entry received, kept or not */
        int error;     /* -ENOMEM or -E2BIG: read on, then fail */
};

static void set_message(struct lfs_client *c, const char *s)
{
        size_t n = strnlen(s, sizeof(c->last_message) - 1);

        memcpy(c->last_message, s, n);
        c->last_message[n] = 0;
}

/* The stream cannot be trusted any more: the connection is dead from now on. */
static int client_die(struct lfs_client *c, int r, const char *why)
{
        c->dead = true;
        set_message(c, why);
        /* Tell the broker at once; the fd itself stays until lfs_close(). */
        (void)shutdown(c->fd, SHUT_RDWR);
        return r;
}

static void queue_push(struct lfs_client *c, const struct lfs_msg *m)
{
        struct lfs_event *e;

        if (c->q_len == QUEUE_MAX) {
                /* The oldest goes: a workload that never reads events has no use for them. */
                c->q_head = (c->q_head + 1) % QUEUE_MAX;
                c->q_len--;
                c->q_dropped++;
        }
        e = &c->queue[(c->q_head + c->q_len) % QUEUE_MAX];
        c->q_len++;
        memset(e, 0, sizeof(*e));
        e->id = m->arg;
        e->kind = (enum lfs_event_kind)m->token;
        e->deadline_ms = m->arg2;
        memcpy(e->note, m->text, sizeof(e->note)); /* terminated: the decoder checked */
}

static bool queue_pop(struct lfs_client *c, struct lfs_event *ret)
{
        if (c->q_len == 0)
                return false;
        *ret = c->queue[c->q_head];
        c->q_head = (c->q_head + 1) % QUEUE_MAX;
        c->q_len--;
        return true;
}

static void collect_add(struct collect *col, const struct lfs_msg *m)
{
        col->seen++;
        if (col->error)
                return;
        if (col->n == ENTRIES_MAX) {
                col->error = -E2BIG;
                return;
        }
        if (col->n == col->cap) {
                size_t cap = col->cap ? col->cap * 2 : 16;
                void *p;

                if (cap > ENTRIES_MAX)
                        cap = ENTRIES_MAX;
                p = realloc(col->items, cap * col->size);
                if (!p) {
                        col->error = -ENOMEM;
                        return;
                }
                col->items = p;
                col->cap = cap;
        }
        col->convert((char *)col->items + col->n * col->size, m);
        col->n++;
}

/* Read one message from the broker and decode it; the connection dies on anything wrong. */
static int client_read(struct lfs_client *c, struct lfs_msg *m, int *ret_fd, bool nonblock)
{
        int fd = -1, flags = 0, r;
        long n;

        n = lfs_recv(c->fd, m, &fd, &flags, nonblock);
        if (n == -EAGAIN || n == -EWOULDBLOCK)
                return -EAGAIN;
        if (n < 0) {
                if (n == -ECONNRESET || n == -EPIPE)
                        return client_die(c, -ECONNRESET, "the broker closed the connection");
                return client_die(c, (int)n, "reading from the broker failed");
        }
        if (n == 0)
                return client_die(c, -ECONNRESET, "the broker closed the connection");
        r = lfs_msg_decode(m, (size_t)n, flags, fd >= 0 ? 1 : 0, LFS_TO_CLIENT, m);
        if (r < 0) {
                if (fd >= 0)
                        close(fd);
                return client_die(c, -EPROTO, "malformed message from the broker");
        }
        if (ret_fd)
                *ret_fd = fd;
        else if (fd >= 0)
                close(fd); /* cannot happen: only a RETRIEVE_FD answer carries one */
        return 0;
}

/*
 * Send req (with fd, or -1) and wait for its answer: events are queued,
 * entries go to col. Returns the answer's result (0 or -errno) with the
 * answer in *ret_ans and its descriptor in *ret_fd (RETRIEVE_FD), or a
 * local failure.
 */
static int client_call(struct lfs_client *c, struct lfs_msg *req, int fd, struct collect *col,
                       struct lfs_msg *ret_ans, int *ret_fd)
{
        struct lfs_msg m;
        int r;

        if (c->dead)
                return -ENOTCONN;
        c->seq = c->seq == UINT32_MAX ? 1 : c->seq + 1; /* 0 is the events' */
        req->seq = c->seq;
        r = lfs_send(c->fd, req, fd, false);
        if (r == -EPIPE || r == -ECONNRESET)
                return client_die(c, -ECONNRESET, "the broker closed the connection");
        if (r < 0)
                return client_die(c, r, "sending to the broker failed");

        for (;;) {
                int mfd = -1;

                r = client_read(c, &m, &mfd, false);
                if (r < 0)
                        return r;
                if (m.type == LFS_EVENT) {
                        queue_push(c, &m);
                        continue;
                }
                if (m.seq != req->seq)
                        break;
                if (col && m.type == col->type) {
                        collect_add(col, &m);
                        continue;
                }
                if (m.type != req->type)
                        break;
                /* The answer. Entries come only before a successful one, all of them. */
                if (col && (m.result < 0 ? col->seen != 0 : col->seen != m.arg))
                        break;
                set_message(c, m.text);
                if (ret_fd)
                        *ret_fd = mfd;
                else if (mfd >= 0)
                        close(mfd); /* the decoder allows one only for RETRIEVE_FD */
                if (ret_ans)
                        *ret_ans = m;
                if (m.result == 0 && col && col->error) {
                        set_message(c, col->error == -E2BIG ? "too many entries in the answer"
                                                            : "out of memory for the entries");
                        return col->error;
                }
                return m.result;
        }
        /* An entry or answer that belongs to no request of ours. */
        return client_die(c, -EPROTO, "unexpected message from the broker");
}

/* A request naming a session; checks the name before anything leaves. */
static int session_req(struct lfs_client *c, enum lfs_type type, const char *session,
                       struct lfs_msg *req)
{
        if (!c)
                return -EINVAL;
        if (!lfs_name_valid(session, LFS_NAME_MAX)) {
                set_message(c, "invalid session name");
                return -EINVAL;
        }
        lfs_msg_init(req, type, 0);
        return lfs_msg_set_str(req->session, sizeof(req->session), session);
}

LFS_EXPORT const char *lfs_default_socket(void)
{
        const char *s = secure_getenv(LFS_SOCKET_ENV);

        return s && *s ? s : LFS_SOCKET_DEFAULT;
}

/*
 * The address of path. One too long for sun_path (a socket in a deep
 * directory) is named through its directory: "/proc/self/fd/N/name", with
 * the directory's descriptor in *ret_dir (closed by the caller after
 * connect()). The agent binds the same way (common/util.c unix_sockaddr;
 * this library stands alone, so it has its own few lines).
 */
static int unix_address(const char *path, struct sockaddr_un *sa, int *ret_dir)
{
        size_t n = strlen(path);
        const char *name;
        char dir[4096];
        int k;

        *ret_dir = -1;
        if (n == 0)
                return -EINVAL;
        if (n < sizeof(sa->sun_path)) {
                memcpy(sa->sun_path, path, n + 1);
                return 0;
        }
        name = strrchr(path, '/');
        if (!name || !name[1] || (size_t)(name - path) + 1 >= sizeof(dir))
                return -ENAMETOOLONG;
        memcpy(dir, path, (size_t)(name - path) + 1);
        dir[name - path + 1] = 0;
        *ret_dir = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (*ret_dir < 0)
                return errno > 0 ? -errno : -EIO;
        k = snprintf(sa->sun_path, sizeof(sa->sun_path), "/proc/self/fd/%d/%s", *ret_dir, name + 1);
        if (k < 0 || (size_t)k >= sizeof(sa->sun_path)) {
                close(*ret_dir);
                *ret_dir = -1;
                return -ENAMETOOLONG;
        }
        return 0;
}

static int connect_unix(const char *path)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd, r, dir;

        r = unix_address(path, &sa, &dir);
        if (r < 0)
                return r;
        fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        if (fd < 0) {
                r = errno > 0 ? -errno : -EIO;
                if (dir >= 0)
                        close(dir);
                return r;
        }
        r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
        if (dir >= 0) {
                int saved = errno;
                close(dir);
                errno = saved;
        }
        if (r < 0 && errno == EINTR) {
                /* The connection goes on without us: wait for it and take its outcome. */
                struct pollfd p = { .fd = fd, .events = POLLOUT };
                int err = 0;
                socklen_t len = sizeof(err);

                while (poll(&p, 1, -1) < 0 && errno == EINTR)
                        ;
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                        err = errno;
                r = err ? -1 : 0;
                errno = err;
        }
        if (r < 0) {
                r = errno > 0 ? -errno : -EIO;
                close(fd);
                return r;
        }
        return fd;
}

LFS_EXPORT int lfs_connect(const char *socket_path, const char *name, unsigned flags,
                           struct lfs_client **ret)
{
        struct lfs_client *c;
        struct lfs_msg req, ans;
        int r;

        if (!ret || !lfs_name_valid(name, LFS_WORKLOAD_MAX) || (flags & ~LFS_HELLO_REGISTER))
                return -EINVAL;
        if (!socket_path)
                socket_path = lfs_default_socket();
        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->fd = connect_unix(socket_path);
        if (c->fd < 0) {
                r = c->fd;
                free(c);
                return r;
        }
        lfs_msg_init(&req, LFS_HELLO, 0);
        req.arg = flags;
        r = lfs_msg_set_str(req.text, sizeof(req.text), name);
        if (r == 0)
                r = client_call(c, &req, -1, NULL, &ans, NULL);
        if (r < 0) {
                lfs_close(c);
                return r;
        }
        c->host_state = (int)ans.arg;
        *ret = c;
        return 0;
}

LFS_EXPORT void lfs_close(struct lfs_client *c)
{
        if (!c)
                return;
        if (c->fd >= 0)
                close(c->fd);
        free(c);
}

LFS_EXPORT int lfs_get_fd(const struct lfs_client *c)
{
        return c ? c->fd : -EINVAL;
}

LFS_EXPORT int lfs_host_state(const struct lfs_client *c)
{
        return c ? c->host_state : -EINVAL;
}

LFS_EXPORT const char *lfs_last_message(const struct lfs_client *c)
{
        return c ? c->last_message : "";
}

static int simple(struct lfs_client *c, enum lfs_type type, const char *session)
{
        struct lfs_msg req;
        int r;

        r = session_req(c, type, session, &req);
        if (r < 0)
                return r;
        return client_call(c, &req, -1, NULL, NULL, NULL);
}

LFS_EXPORT int lfs_session_create(struct lfs_client *c, const char *session)
{
        return simple(c, LFS_SESSION_CREATE, session);
}

LFS_EXPORT int lfs_session_close(struct lfs_client *c, const char *session)
{
        return simple(c, LFS_SESSION_CLOSE, session);
}

LFS_EXPORT int lfs_session_retrieve(struct lfs_client *c, const char *session)
{
        return simple(c, LFS_SESSION_RETRIEVE, session);
}

LFS_EXPORT int lfs_session_finish(struct lfs_client *c, const char *session)
{
        return simple(c, LFS_SESSION_FINISH, session);
}

LFS_EXPORT int lfs_preserve(struct lfs_client *c, const char *session, int fd, uint64_t token,
                            uint64_t *ret_bytes)
{
        struct lfs_msg req, ans;
        int r;

        r = session_req(c, LFS_PRESERVE, session, &req);
        if (r < 0)
                return r;
        if (fd < 0)
                return -EBADF;
        req.token = token;
        r = client_call(c, &req, fd, NULL, &ans, NULL);
        if (r < 0)
                return r;
        if (ret_bytes)
                *ret_bytes = ans.arg;
        return 0;
}

LFS_EXPORT int lfs_unpreserve(struct lfs_client *c, const char *session, uint64_t token)
{
        struct lfs_msg req;
        int r;

        r = session_req(c, LFS_UNPRESERVE, session, &req);
        if (r < 0)
                return r;
        req.token = token;
        return client_call(c, &req, -1, NULL, NULL, NULL);
}

LFS_EXPORT int lfs_retrieve_fd(struct lfs_client *c, const char *session, uint64_t token,
                               int *ret_fd)
{
        struct lfs_msg req;
        int r, fd = -1;

        if (!ret_fd)
                return -EINVAL;
        r = session_req(c, LFS_RETRIEVE_FD, session, &req);
        if (r < 0)
                return r;
        req.token = token;
        r = client_call(c, &req, -1, NULL, NULL, &fd);
        if (r < 0) {
                if (fd >= 0)
                        close(fd);
                return r;
        }
        if (fd < 0) /* cannot happen: the decoder demands it with result 0 */
                return client_die(c, -EPROTO, "no descriptor in the answer");
        *ret_fd = fd;
        return 0;
}

static void convert_info(void *dst, const struct lfs_msg *m)
{
        struct lfs_session_info *i = dst;

        memset(i, 0, sizeof(*i));
        memcpy(i->name, m->session, strnlen(m->session, LFS_NAME_MAX)); /* <= 48: decoded */
        i->phase = (enum lfs_phase)m->arg;
        i->fds = m->arg2;
        i->bytes = m->token;
}

static void convert_fd_info(void *dst, const struct lfs_msg *m)
{
        struct lfs_fd_info *i = dst;

        memset(i, 0, sizeof(*i));
        i->token = m->token;
        i->bytes = m->arg;
        i->retrieved = m->arg2 ? 1 : 0;
}

static int list_call(struct lfs_client *c, struct lfs_msg *req, struct collect *col, void **ret,
                     size_t *ret_n)
{
        int r;

        r = client_call(c, req, -1, col, NULL, NULL);
        if (r < 0) {
                free(col->items);
                return r;
        }
        *ret = col->items;
        *ret_n = col->n;
        return 0;
}

LFS_EXPORT int lfs_list(struct lfs_client *c, struct lfs_session_info **ret, size_t *ret_n)
{
        struct collect col = {
                .type = LFS_INFO,
                .size = sizeof(struct lfs_session_info),
                .convert = convert_info,
        };
        struct lfs_msg req;
        void *items = NULL;
        int r;

        if (!c || !ret || !ret_n)
                return -EINVAL;
        lfs_msg_init(&req, LFS_LIST, 0);
        r = list_call(c, &req, &col, &items, ret_n);
        if (r < 0)
                return r;
        *ret = items;
        return 0;
}

LFS_EXPORT int lfs_show(struct lfs_client *c, const char *session, struct lfs_fd_info **ret,
                        size_t *ret_n)
{
        struct collect col = {
                .type = LFS_FD_INFO,
                .size = sizeof(struct lfs_fd_info),
                .convert = convert_fd_info,
        };
        struct lfs_msg req;
        void *items = NULL;
        int r;

        if (!ret || !ret_n)
                return -EINVAL;
        r = session_req(c, LFS_SHOW, session, &req);
        if (r < 0)
                return r;
        r = list_call(c, &req, &col, &items, ret_n);
        if (r < 0)
                return r;
        *ret = items;
        return 0;
}

static uint64_t now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

LFS_EXPORT int lfs_next_event(struct lfs_client *c, struct lfs_event *ret, int timeout_ms)
{
        uint64_t deadline = 0;
        struct lfs_msg m;
        int r;

        if (!c || !ret)
                return -EINVAL;
        if (queue_pop(c, ret))
                return 0;
        if (c->dead)
                return -ENOTCONN;
        if (timeout_ms > 0)
                deadline = now_ms() + (uint64_t)timeout_ms;
        for (;;) {
                struct pollfd p = { .fd = c->fd, .events = POLLIN };
                int wait = timeout_ms;

                if (timeout_ms > 0) {
                        uint64_t now = now_ms();
                        wait = now >= deadline ? 0 : (int)(deadline - now);
                }
                r = poll(&p, 1, wait);
                if (r < 0 && errno == EINTR)
                        continue;
                if (r < 0)
                        return -errno;
                if (r == 0)
                        return -ETIMEDOUT;
                r = client_read(c, &m, NULL, true);
                if (r == -EAGAIN)
                        continue;
                if (r < 0)
                        return r;
                /* Between requests only events may come: an answer here answers nothing. */
                if (m.type != LFS_EVENT)
                        return client_die(c, -EPROTO, "unexpected message from the broker");
                queue_push(c, &m);
                queue_pop(c, ret);
                return 0;
        }
}

LFS_EXPORT int lfs_confirm(struct lfs_client *c, uint64_t event_id)
{
        struct lfs_msg req;

        if (!c)
                return -EINVAL;
        lfs_msg_init(&req, LFS_CONFIRM, 0);
        req.arg = event_id;
        return client_call(c, &req, -1, NULL, NULL, NULL);
}

LFS_EXPORT int lfs_veto(struct lfs_client *c, uint64_t event_id, const char *reason)
{
        struct lfs_msg req;
        int r;

        if (!c)
                return -EINVAL;
        if (!reason)
                reason = "";
        if (!lfs_text_valid(reason)) {
                set_message(c, "invalid veto reason: printable ASCII, at most 255 bytes");
                return -EINVAL;
        }
        lfs_msg_init(&req, LFS_VETO, 0);
        req.arg = event_id;
        r = lfs_msg_set_str(req.text, sizeof(req.text), reason);
        if (r < 0)
                return r;
        return client_call(c, &req, -1, NULL, NULL, NULL);
}
