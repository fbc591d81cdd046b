/*
 * test_broker.c: the workload session broker (broker/broker.c) over a fake
 * kernel backend of this file, driven the two ways it is driven for real:
 * workloads through the real client library (libsession) on a
 * SOCK_SEQPACKET socket in a fresh temporary directory, the agent through
 * the decorated backend's ops (set_event_ex, reboot_ex, sessions_json,
 * watch_*).
 *
 * The fake kernel comes in four kinds: mainline-like sessions without
 * session_unpreserve (Linux 6.19+), the same with real session descriptors
 * (a pipe's write end: the session lives until its last duplicate is
 * closed), sessions with session_unpreserve (like sim), and v3 tokens
 * (fd_*). It logs every kernel call the broker makes ("create(NAME)=H
 * preserve(H,TOK) ..."), fails the next call of a kind with a programmed
 * errno, keeps a duplicate of every preserved file (so a test can compare
 * inodes), keeps the marker blob in memory, and on its reboot() hands the
 * marker and every outgoing session's (or token's) files over: the next
 * rig_start() builds a fresh fake from that handover (its sessions or tokens
 * incoming, the state updated, marker_read() the blob) and a second broker
 * over it, which is the simulated kexec.
 *
 * Covered: create (kernel name lf:<uid>:<name>), EEXIST without a kernel
 * call, preserve (the same inode reaches the kernel), kernel errnos passed
 * through, unpreserve by rebuilding the session and by session_unpreserve,
 * close, list/show, the three per-owner quotas (EDQUOT) and max_clients
 * (EUSERS), malformed datagrams (dropped, the broker serves on); token
 * allocation (0x1000 up, EEXIST skipped, never BACKEND_MARKER_TOKEN),
 * unpreserve and close by kernel token, and retrieval after a reboot by the
 * recorded kernel token; the prepare round (no workload, confirm, timeout,
 * veto, disconnect, late confirm, last_round); the marker at PREPARE and
 * at reboot_ex and its failure; the updated boot (incoming sessions, HELLO
 * state, LFS_EVENT_UPDATED, retrieve, another uid's ENOENT, FINISH refused
 * and forced); the change events (since, consecutive seq, events_dropped);
 * the watch descriptor; broker_holds(); set-up refusals; the rebuild with
 * the service manager's fd store (a fake NOTIFY_SOCKET receiver holding the
 * fds it is given, like systemd).
 *
 * Every test gets a fresh directory under $LUOFLEET_TEST_TMP and must leave
 * as many fds open as it found; the suite runs under valgrind (--track-fds)
 * and ASan.
 *
 * Three tests began as reports of broker bugs (a veto's reason missing from
 * the sentence; a failed rebuild leaving the table lying; the rebuild under
 * the fd store always failing): their comments say what was wrong.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "luofleet/backend.h"
#include "luofleet/broker.h"
#include "luofleet/macro.h"
#include "luofleet/session.h"
#include "luofleet/session_proto.h"
#include "luofleet/util.h"
#include "testutil.h"

#define FAKE_BOOT_ID "0b5ee1d0-1111-4222-8333-444455556666"
#define FAKE_RELEASE "6.99.0-fake"
#define FAKE_SESSIONS_MAX 32
#define FAKE_FILES_MAX 16
#define FAKE_TOKENS_MAX 64
#define FAKE_LOG_MAX 8192
#define NOBODY 65534

/* ---- the fake kernel ---------------------------------------------------------------------- */

enum fake_kind {
        FAKE_MAINLINE,   /* session_* without session_unpreserve (Linux 6.19+) */
        FAKE_UNPRESERVE, /* session_* with session_unpreserve (like sim) */
        FAKE_V3,         /* fd_* tokens */
        FAKE_NONE,       /* neither: nothing can be preserved */
        /*
         * Mainline with real session descriptors: a handle is the write end
         * of a pipe, and the session lives (keeps its name and its files)
         * until every duplicate of it is closed, as the kernel's does.
         */
        FAKE_MAINLINE_FD,
};

struct ffile {
        uint64_t token;
        int fd; /* the kernel's reference: a duplicate of what was preserved */
};

struct fsession {
        bool used;
        char name[LUO_SESSION_NAME_MAX];
        int handle; /* what the broker holds; 0 while an incoming one is not retrieved */
        bool incoming, finished;
        bool has_peer; /* FAKE_MAINLINE_FD: */
        int peer;      /* the read end: POLLHUP when the last duplicate is closed */
        struct ffile files[FAKE_FILES_MAX];
        size_t n_files;
};

struct ftoken {
        uint64_t ktoken;
        int fd;
        bool incoming; /* handed over by the previous boot */
};

/* What a simulated kexec carries to the next boot's fake. */
struct handover {
        bool valid;
        char *blob;
        size_t len;
        struct fsession sessions[FAKE_SESSIONS_MAX];
        size_t n_sessions;
        struct ftoken tokens[FAKE_TOKENS_MAX];
        size_t n_tokens;
};

struct fake {
        struct backend base; /* first */
        struct backend_ops ops;
        enum fake_kind kind;
        pthread_mutex_t lock;
        enum luo_state state;
        int efd; /* the fake's change notification */
        unsigned watch_reads;
        char log[FAKE_LOG_MAX];
        size_t log_len;
        int next_handle;
        struct fsession sessions[FAKE_SESSIONS_MAX];
        struct ftoken tokens[FAKE_TOKENS_MAX];
        size_t n_tokens;
        bool saw_marker_token;
        char *marker; /* the last marker_write's blob */
        size_t marker_len;
        char *prev_marker; /* what marker_read() returns */
        size_t prev_len;
        /* One-shot failures (positive errnos) of the next call of that kind. */
        int fail_create, fail_retrieve, fail_preserve, fail_finish, fail_marker_write;
        int fail_event[_LUO_EVENT_MAX];
        /* fd_preserve answers EEXIST for kernel tokens in [eexist_lo, eexist_hi]. */
        uint64_t eexist_lo, eexist_hi;
};

static struct handover ho; /* the last simulated kexec's */

static struct fake *to_fake(struct backend *b)
{
        return (struct fake *)b;
}

static void flog(struct fake *f, const char *fmt, ...) _printf_(2, 3);
static void flog(struct fake *f, const char *fmt, ...)
{
        va_list ap;
        int n;

        if (f->log_len && f->log_len < sizeof(f->log) - 1)
                f->log[f->log_len++] = ' ';
        va_start(ap, fmt);
        n = vsnprintf(f->log + f->log_len, sizeof(f->log) - f->log_len, fmt, ap);
        va_end(ap);
        if (n > 0)
                f->log_len = MIN(f->log_len + (size_t)n, sizeof(f->log) - 1);
}

/* Appended to the last entry: "=1", "=EBUSY". */
static void flog_append(struct fake *f, const char *fmt, ...) _printf_(2, 3);
static void flog_append(struct fake *f, const char *fmt, ...)
{
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(f->log + f->log_len, sizeof(f->log) - f->log_len, fmt, ap);
        va_end(ap);
        if (n > 0)
                f->log_len = MIN(f->log_len + (size_t)n, sizeof(f->log) - 1);
}

/* "=EBUSY" after a failed call's entry. */
static int flog_result(struct fake *f, int r)
{
        char eb[16];

        if (r < 0)
                flog_append(f, "=%s", errno_name(r, eb));
        return r;
}

/* A one-shot failure: -errno once, then 0. */
static int take_fail(int *slot)
{
        int e = *slot;

        *slot = 0;
        return -e;
}

static void files_close(struct ffile *files, size_t *n)
{
        for (size_t i = 0; i < *n; i++)
                if (files[i].fd >= 0)
                        close(files[i].fd);
        *n = 0;
}

static void fsession_drop(struct fsession *s)
{
        files_close(s->files, &s->n_files);
        if (s->has_peer)
                close(s->peer);
        memset(s, 0, sizeof(*s));
}

/* FAKE_MAINLINE_FD: is a duplicate of the session's descriptor still open somewhere? */
static bool fsession_alive(const struct fsession *s)
{
        struct pollfd p = { .fd = s->peer, .events = POLLIN };

        return !s->has_peer || poll(&p, 1, 0) == 0 || !(p.revents & POLLHUP);
}

static struct fsession *fsession_by_handle(struct fake *f, int h)
{
        for (size_t i = 0; i < FAKE_SESSIONS_MAX; i++)
                if (f->sessions[i].used && h > 0 && f->sessions[i].handle == h)
                        return &f->sessions[i];
        return NULL;
}

static struct fsession *fsession_by_name(struct fake *f, const char *name, bool incoming)
{
        for (size_t i = 0; i < FAKE_SESSIONS_MAX; i++)
                if (f->sessions[i].used && f->sessions[i].incoming == incoming &&
                    strcmp(f->sessions[i].name, name) == 0)
                        return &f->sessions[i];
        return NULL;
}

static struct fsession *fsession_new(struct fake *f)
{
        for (size_t i = 0; i < FAKE_SESSIONS_MAX; i++)
                if (!f->sessions[i].used) {
                        memset(&f->sessions[i], 0, sizeof(f->sessions[i]));
                        f->sessions[i].used = true;
                        return &f->sessions[i];
                }
        return NULL;
}

static void fake_free(struct backend *b)
{
        struct fake *f = to_fake(b);

        for (size_t i = 0; i < FAKE_SESSIONS_MAX; i++)
                if (f->sessions[i].used)
                        fsession_drop(&f->sessions[i]);
        for (size_t i = 0; i < f->n_tokens; i++)
                close(f->tokens[i].fd);
        close(f->efd);
        free(f->marker);
        free(f->prev_marker);
        pthread_mutex_destroy(&f->lock);
        free(f);
}

static int fake_get_state(struct backend *b, enum luo_state *ret)
{
        struct fake *f = to_fake(b);

        pthread_mutex_lock(&f->lock);
        *ret = f->state;
        pthread_mutex_unlock(&f->lock);
        return 0;
}

static int fake_watch_fd(struct backend *b)
{
        return to_fake(b)->efd;
}

static short fake_watch_events(struct backend *b)
{
        return POLLIN;
}

static int fake_watch_read(struct backend *b, enum luo_state *ret)
{
        struct fake *f = to_fake(b);
        uint64_t v;

        (void)!read(f->efd, &v, sizeof(v));
        pthread_mutex_lock(&f->lock);
        f->watch_reads++;
        *ret = f->state;
        pthread_mutex_unlock(&f->lock);
        return 0;
}

static const char *event_word(enum luo_event ev)
{
        static const char *const words[] = { "prepare", "freeze", "finish", "cancel" };

        return (unsigned)ev < ELEMENTSOF(words) ? words[ev] : "?";
}

static int fake_set_event(struct backend *b, enum luo_event ev)
{
        struct fake *f = to_fake(b);
        enum luo_state to;
        int r;

        pthread_mutex_lock(&f->lock);
        flog(f, "set_event(%s)", event_word(ev));
        r = (unsigned)ev < _LUO_EVENT_MAX ? take_fail(&f->fail_event[ev]) : -EINVAL;
        if (r == 0)
                r = luo_state_apply_event(f->state, ev, &to);
        if (r == 0) {
                f->state = to;
                if (ev == LUO_EVENT_CANCEL) {
                        free(f->marker);
                        f->marker = NULL;
                        f->marker_len = 0;
                }
                if (ev == LUO_EVENT_FINISH) {
                        /* What nobody retrieved is freed; the marker is gone. */
                        for (size_t i = 0; i < FAKE_SESSIONS_MAX; i++)
                                if (f->sessions[i].used && f->sessions[i].incoming &&
                                    f->sessions[i].handle == 0)
                                        fsession_drop(&f->sessions[i]);
                        for (size_t i = 0; i < f->n_tokens;)
                                if (f->tokens[i].incoming) {
                                        close(f->tokens[i].fd);
                                        f->tokens[i] = f->tokens[--f->n_tokens];
                                } else
                                        i++;
                        free(f->prev_marker);
                        f->prev_marker = NULL;
                        f->prev_len = 0;
                }
        }
        flog_result(f, r);
        pthread_mutex_unlock(&f->lock);
        return r;
}

static int fake_kexec_load(struct backend *b, int kernel_fd, int initrd_fd, const char *cmdline)
{
        return 0;
}

static int fake_kexec_unload(struct backend *b)
{
        return 0;
}

static int fake_kexec_loaded(struct backend *b, bool *ret)
{
        *ret = true;
        return 0;
}

/* The jump: what is outgoing now is what the next boot's fake finds. */
static int fake_reboot(struct backend *b)
{
        struct fake *f = to_fake(b);
        int r = 0;

        pthread_mutex_lock(&f->lock);
        flog(f, "reboot");
        if (f->state != LUO_STATE_PREPARED)
                r = -EPERM;
        if (r == 0) {
                ck_assert(!ho.valid);
                memset(&ho, 0, sizeof(ho));
                ho.valid = true;
                if (f->marker) {
                        ho.blob = malloc(f->marker_len);
                        ck_assert_ptr_nonnull(ho.blob);
                        memcpy(ho.blob, f->marker, f->marker_len);
                        ho.len = f->marker_len;
                }
                for (size_t i = 0; i < FAKE_SESSIONS_MAX; i++) {
                        const struct fsession *s = &f->sessions[i];
                        struct fsession *t;
                        if (!s->used || s->incoming)
                                continue;
                        t = &ho.sessions[ho.n_sessions++];
                        *t = *s;
                        t->handle = 0;
                        t->incoming = true;
                        for (size_t j = 0; j < s->n_files; j++) {
                                t->files[j].fd = fcntl(s->files[j].fd, F_DUPFD_CLOEXEC, 3);
                                ck_assert_int_ge(t->files[j].fd, 0);
                        }
                }
                for (size_t i = 0; i < f->n_tokens; i++) {
                        if (f->tokens[i].incoming)
                                continue;
                        ho.tokens[ho.n_tokens] = f->tokens[i];
                        ho.tokens[ho.n_tokens].incoming = true;
                        ho.tokens[ho.n_tokens].fd = fcntl(f->tokens[i].fd, F_DUPFD_CLOEXEC, 3);
                        ck_assert_int_ge(ho.tokens[ho.n_tokens].fd, 0);
                        ho.n_tokens++;
                }
                f->state = LUO_STATE_FROZEN;
        }
        flog_result(f, r);
        pthread_mutex_unlock(&f->lock);
        return r;
}

static int fake_get_info(struct backend *b, struct backend_info *ret)
{
        memset(ret, 0, sizeof(*ret));
        memcpy(ret->boot_id, FAKE_BOOT_ID, sizeof(FAKE_BOOT_ID));
        memcpy(ret->release, FAKE_RELEASE, sizeof(FAKE_RELEASE));
        return 0;
}

static int fake_self_check(struct backend *b, enum luo_state *a, enum luo_state *s)
{
        return 0;
}

static int fake_session_create(struct backend *b, const char *name, int *ret_session)
{
        struct fake *f = to_fake(b);
        struct fsession *s;
        int r;

        pthread_mutex_lock(&f->lock);
        flog(f, "create(%s)", name);
        /* Sessions whose last descriptor was closed elsewhere are gone by now. */
        for (size_t i = 0; i < FAKE_SESSIONS_MAX; i++)
                if (f->sessions[i].used && f->sessions[i].handle == 0 && !f->sessions[i].incoming &&
                    !fsession_alive(&f->sessions[i]))
                        fsession_drop(&f->sessions[i]);
        r = take_fail(&f->fail_create);
        if (r == 0 && (fsession_by_name(f, name, false) || fsession_by_name(f, name, true)))
                r = -EEXIST;
        if (r == 0) {
                s = fsession_new(f);
                ck_assert_ptr_nonnull(s);
                ck_assert_uint_lt(strlen(name), sizeof(s->name));
                memcpy(s->name, name, strlen(name) + 1);
                if (f->kind == FAKE_MAINLINE_FD) {
                        int p[2];
                        ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
                        s->has_peer = true;
                        s->peer = p[0];
                        s->handle = p[1];
                } else
                        s->handle = f->next_handle++;
                *ret_session = s->handle;
                flog_append(f, "=%d", s->handle);
        }
        flog_result(f, r);
        pthread_mutex_unlock(&f->lock);
        return r;
}

static int fake_session_retrieve(struct backend *b, const char *name, int *ret_session)
{
        struct fake *f = to_fake(b);
        struct fsession *s;
        int r;

        pthread_mutex_lock(&f->lock);
        flog(f, "retrieve(%s)", name);
        r = take_fail(&f->fail_retrieve);
        s = fsession_by_name(f, name, true);
        if (r == 0 && !s)
                r = -ENOENT;
        if (r == 0 && s->handle)
                r = -EINVAL; /* retrieved already */
        if (r == 0) {
                s->handle = f->next_handle++;
                *ret_session = s->handle;
                flog_append(f, "=%d", s->handle);
        }
        flog_result(f, r);
        pthread_mutex_unlock(&f->lock);
        return r;
}

static int fake_session_preserve(struct backend *b, int session, int fd, uint64_t token)
{
        struct fake *f = to_fake(b);
        struct fsession *s;
        int r;

        pthread_mutex_lock(&f->lock);
        flog(f, "preserve(%d,%llu)", session, (unsigned long long)token);
        s = fsession_by_handle(f, session);
        r = take_fail(&f->fail_preserve);
        if (r == 0 && (!s || s->incoming))
                r = !s ? -EBADF : -EINVAL;
        if (r == 0 && fcntl(fd, F_GETFD) < 0)
                r = -EBADF;
        for (size_t i = 0; r == 0 && i < s->n_files; i++)
                if (s->files[i].token == token)
                        r = -EEXIST;
        if (r == 0) {
                ck_assert_uint_lt(s->n_files, FAKE_FILES_MAX);
                s->files[s->n_files].token = token;
                s->files[s->n_files].fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
                ck_assert_int_ge(s->files[s->n_files].fd, 0);
                s->n_files++;
        }
        flog_result(f, r);
        pthread_mutex_unlock(&f->lock);
        return r;
}

static int fake_session_unpreserve(struct backend *b, int session, uint64_t token)
{
        struct fake *f = to_fake(b);
        struct fsession *s;
        int r = -ENOENT;

        pthread_mutex_lock(&f->lock);
        flog(f, "unpreserve(%d,%llu)", session, (unsigned long long)token);
        s = fsession_by_handle(f, session);
        for (size_t i = 0; s && i < s->n_files; i++)
                if (s->files[i].token == token) {
                        close(s->files[i].fd);
                        s->files[i] = s->files[--s->n_files];
                        r = 0;
                        break;
                }
        flog_result(f, r);
        pthread_mutex_unlock(&f->lock);
        return r;
}

static int fake_session_retrieve_fd(struct backend *b, int session, uint64_t token, int *ret_fd)
{
        struct fake *f = to_fake(b);
        struct fsession *s;
        int r = -ENOENT;

        pthread_mutex_lock(&f->lock);
        flog(f, "retrieve_fd(%d,%llu)", session, (unsigned long long)token);
        s = fsession_by_handle(f, session);
        if (!s || !s->incoming)
                r = -EINVAL;
        for (size_t i = 0; s && s->incoming && !s->finished && i < s->n_files; i++)
                if (s->files[i].token == token) {
                        *ret_fd = fcntl(s->files[i].fd, F_DUPFD_CLOEXEC, 3);
                        r = *ret_fd >= 0 ? 0 : -EMFILE;
                }
        flog_result(f, r);
        pthread_mutex_unlock(&f->lock);
        return r;
}

static int fake_session_finish(struct backend *b, int session)
{
        struct fake *f = to_fake(b);
        struct fsession *s;
        int r;

        pthread_mutex_lock(&f->lock);
        flog(f, "finish(%d)", session);
        s = fsession_by_handle(f, session);
        r = take_fail(&f->fail_finish);
        if (r == 0 && (!s || !s->incoming))
                r = -EINVAL;
        if (r == 0) {
                s->finished = true;
                files_close(s->files, &s->n_files);
        }
        flog_result(f, r);
        pthread_mutex_unlock(&f->lock);
        return r;
}

static void fake_session_release(struct backend *b, int session)
{
        struct fake *f = to_fake(b);
        struct fsession *s;

        pthread_mutex_lock(&f->lock);
        flog(f, "release(%d)", session);
        s = fsession_by_handle(f, session);
        if (s && s->has_peer) {
                /* Closing one descriptor; the session ends with its last one. */
                close(s->handle);
                s->handle = 0;
                if (!fsession_alive(s))
                        fsession_drop(s);
        } else if (s)
                fsession_drop(s); /* outgoing: unpreserved; retrieved: finished implicitly */
        else
                flog_append(f, "=EBADF");
        pthread_mutex_unlock(&f->lock);
}

static struct ftoken *ftoken_find(struct fake *f, uint64_t kt)
{
        for (size_t i = 0; i < f->n_tokens; i++)
                if (f->tokens[i].ktoken == kt)
                        return &f->tokens[i];
        return NULL;
}

static int fake_fd_preserve(struct backend *b, int fd, uint64_t token)
{
        struct fake *f = to_fake(b);
        int r = 0;

        pthread_mutex_lock(&f->lock);
        flog(f, "fd_preserve(0x%llx)", (unsigned long long)token);
        if (token == BACKEND_MARKER_TOKEN)
                f->saw_marker_token = true;
        if ((token >= f->eexist_lo && token <= f->eexist_hi) || ftoken_find(f, token))
                r = -EEXIST;
        if (r == 0) {
                ck_assert_uint_lt(f->n_tokens, FAKE_TOKENS_MAX);
                f->tokens[f->n_tokens] = (struct ftoken){
                        .ktoken = token,
                        .fd = fcntl(fd, F_DUPFD_CLOEXEC, 3),
                };
                ck_assert_int_ge(f->tokens[f->n_tokens].fd, 0);
                f->n_tokens++;
        }
        flog_result(f, r);
        pthread_mutex_unlock(&f->lock);
        return r;
}

static int fake_fd_unpreserve(struct backend *b, uint64_t token)
{
        struct fake *f = to_fake(b);
        struct ftoken *t;
        int r = -ENOENT;

        pthread_mutex_lock(&f->lock);
        flog(f, "fd_unpreserve(0x%llx)", (unsigned long long)token);
        t = ftoken_find(f, token);
        if (t && !t->incoming) {
                close(t->fd);
                *t = f->tokens[--f->n_tokens];
                r = 0;
        }
        flog_result(f, r);
        pthread_mutex_unlock(&f->lock);
        return r;
}

static int fake_fd_restore(struct backend *b, uint64_t token, int *ret_fd)
{
        struct fake *f = to_fake(b);
        struct ftoken *t;
        int r = -ENOENT;

        pthread_mutex_lock(&f->lock);
        flog(f, "fd_restore(0x%llx)", (unsigned long long)token);
        t = ftoken_find(f, token);
        if (t && t->incoming) {
                *ret_fd = fcntl(t->fd, F_DUPFD_CLOEXEC, 3);
                r = *ret_fd >= 0 ? 0 : -EMFILE;
        }
        flog_result(f, r);
        pthread_mutex_unlock(&f->lock);
        return r;
}

static int fake_marker_write(struct backend *b, const void *blob, size_t len)
{
        struct fake *f = to_fake(b);
        int r;

        pthread_mutex_lock(&f->lock);
        flog(f, "marker_write");
        r = take_fail(&f->fail_marker_write);
        if (r == 0 && f->state != LUO_STATE_PREPARED)
                r = -EINVAL;
        if (r == 0 && len > BACKEND_MARKER_MAX)
                r = -EFBIG;
        if (r == 0) {
                char *copy = malloc(len + 1);
                ck_assert_ptr_nonnull(copy);
                memcpy(copy, blob, len);
                copy[len] = 0;
                free(f->marker);
                f->marker = copy;
                f->marker_len = len;
        }
        flog_result(f, r);
        pthread_mutex_unlock(&f->lock);
        return r;
}

static int fake_marker_read(struct backend *b, void **ret_blob, size_t *ret_len)
{
        struct fake *f = to_fake(b);
        int r = -ENOENT;

        pthread_mutex_lock(&f->lock);
        if (f->prev_marker) {
                *ret_blob = malloc(f->prev_len);
                ck_assert_ptr_nonnull(*ret_blob);
                memcpy(*ret_blob, f->prev_marker, f->prev_len);
                *ret_len = f->prev_len;
                r = 0;
        }
        pthread_mutex_unlock(&f->lock);
        return r;
}

static const struct backend_ops fake_ops_base = {
        .name = "fake",
        .free = fake_free,
        .get_state = fake_get_state,
        .watch_fd = fake_watch_fd,
        .watch_events = fake_watch_events,
        .watch_read = fake_watch_read,
        .set_event = fake_set_event,
        .kexec_load = fake_kexec_load,
        .kexec_unload = fake_kexec_unload,
        .kexec_loaded = fake_kexec_loaded,
        .reboot = fake_reboot,
        .get_info = fake_get_info,
        .self_check = fake_self_check,
        .marker_write = fake_marker_write,
        .marker_read = fake_marker_read,
};

/* A fresh fake of that kind; after a simulated kexec (ho.valid) it takes the handover. */
static struct fake *fake_new(enum fake_kind kind)
{
        struct fake *f = calloc(1, sizeof(*f));

        ck_assert_ptr_nonnull(f);
        f->ops = fake_ops_base;
        if (kind == FAKE_MAINLINE || kind == FAKE_UNPRESERVE || kind == FAKE_MAINLINE_FD) {
                f->ops.session_create = fake_session_create;
                f->ops.session_retrieve = fake_session_retrieve;
                f->ops.session_preserve = fake_session_preserve;
                f->ops.session_retrieve_fd = fake_session_retrieve_fd;
                f->ops.session_finish = fake_session_finish;
                f->ops.session_release = fake_session_release;
                if (kind == FAKE_UNPRESERVE)
                        f->ops.session_unpreserve = fake_session_unpreserve;
        } else if (kind == FAKE_V3) {
                f->ops.fd_preserve = fake_fd_preserve;
                f->ops.fd_unpreserve = fake_fd_unpreserve;
                f->ops.fd_restore = fake_fd_restore;
        }
        f->base.ops = &f->ops;
        f->kind = kind;
        pthread_mutex_init(&f->lock, NULL);
        f->state = LUO_STATE_NORMAL;
        f->next_handle = 1;
        f->eexist_lo = 1;
        f->eexist_hi = 0;
        f->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        ck_assert_int_ge(f->efd, 0);
        if (ho.valid) {
                f->state = LUO_STATE_UPDATED;
                f->prev_marker = TAKE_PTR(ho.blob);
                f->prev_len = ho.len;
                for (size_t i = 0; i < ho.n_sessions; i++)
                        f->sessions[i] = ho.sessions[i];
                for (size_t i = 0; i < ho.n_tokens; i++)
                        f->tokens[i] = ho.tokens[i];
                f->n_tokens = ho.n_tokens;
                memset(&ho, 0, sizeof(ho));
        }
        return f;
}

static void handover_clear(void)
{
        for (size_t i = 0; i < ho.n_sessions; i++)
                files_close(ho.sessions[i].files, &ho.sessions[i].n_files);
        for (size_t i = 0; i < ho.n_tokens; i++)
                close(ho.tokens[i].fd);
        free(ho.blob);
        memset(&ho, 0, sizeof(ho));
}

static void fmt_buf(char *buf, size_t size, const char *fmt, ...) _printf_(3, 4);
static void fmt_buf(char *buf, size_t size, const char *fmt, ...)
{
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(buf, size, fmt, ap);
        va_end(ap);
        ck_assert_int_ge(n, 0);
        ck_assert_int_lt(n, (int)size);
}

/* ---- a fake service manager's fd store (NOTIFY_SOCKET) ------------------------------------ */

#define STORE_MAX 128

/*
 * Like systemd: a thread takes the notifications in as they come, in order
 * (FDSTORE=1, FDSTOREREMOVE=1, BARRIER=1 answered by closing its fd);
 * store_sync() waits until it took in everything sent before.
 */
static struct {
        bool on;
        int sock, stop_fd;
        char path[PATH_MAX];
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        uint64_t synced;
        char error[256]; /* what the thread could not take (asserted on by store_sync) */
        size_t n;
        char names[STORE_MAX][160];
        int fds[STORE_MAX];
} store;

static void store_take(char *buf, const int *fds, size_t nfds)
{
        char *name = strstr(buf, "FDNAME="), *nl;

        if (name) {
                name += strlen("FDNAME=");
                nl = strchr(name, '\n');
                if (nl)
                        *nl = 0;
        }
        if (strncmp(buf, "X-SYNC=", 7) == 0) {
                store.synced = strtoull(buf + 7, NULL, 10);
                pthread_cond_broadcast(&store.cond);
        } else if (strncmp(buf, "FDSTORE=1\n", 10) == 0 && name) {
                for (size_t i = 0; i < nfds; i++) {
                        if (store.n == STORE_MAX) {
                                snprintf(store.error, sizeof(store.error), "store full");
                                close(fds[i]);
                                continue;
                        }
                        snprintf(store.names[store.n], sizeof(store.names[0]), "%s", name);
                        store.fds[store.n++] = fds[i];
                }
                return;
        } else if (strncmp(buf, "FDSTOREREMOVE=1\n", 16) == 0 && name) {
                for (size_t i = 0; i < store.n;)
                        if (strcmp(store.names[i], name) == 0) {
                                close(store.fds[i]);
                                store.n--;
                                /* The last one moves into the hole (itself: nothing to move). */
                                if (i != store.n)
                                        memcpy(store.names[i], store.names[store.n],
                                               sizeof(store.names[0]));
                                store.fds[i] = store.fds[store.n];
                        } else
                                i++;
        } else if (strncmp(buf, "BARRIER=1", 9) != 0 && !store.error[0])
                snprintf(store.error, sizeof(store.error), "unexpected notification: %.200s", buf);
        /* BARRIER=1: closing its fd is the answer; anything else passed along is not kept. */
        for (size_t i = 0; i < nfds; i++)
                close(fds[i]);
}

static void *store_main(void *userdata)
{
        for (;;) {
                struct pollfd p[2] = {
                        { .fd = store.sock, .events = POLLIN },
                        { .fd = store.stop_fd, .events = POLLIN },
                };
                char buf[512];
                union {
                        struct cmsghdr h;
                        char b[CMSG_SPACE(sizeof(int) * 8)];
                } ctl;
                struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) - 1 };
                struct msghdr mh = {
                        .msg_iov = &iov,
                        .msg_iovlen = 1,
                        .msg_control = ctl.b,
                        .msg_controllen = sizeof(ctl.b),
                };
                int fds[8];
                size_t nfds = 0;
                ssize_t n;

                if (poll(p, 2, -1) < 0)
                        continue;
                if (p[1].revents)
                        return NULL;
                n = recvmsg(store.sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
                if (n < 0)
                        continue;
                buf[n] = 0;
                for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
                        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
                                for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                                     i++)
                                        memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int),
                                               sizeof(int));
                pthread_mutex_lock(&store.lock);
                store_take(buf, fds, nfds);
                pthread_mutex_unlock(&store.lock);
        }
}

/*
 * Listen where sd_notify() sends: $NOTIFY_SOCKET, in a short directory of its
 * own under /tmp (libsystemd names it by path, which must fit sun_path however
 * deep the checkout is; dir is not used for it).
 */
static char store_dir[64];

static void store_start(const char *dir)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };

        (void)dir;
        memset(&store, 0, sizeof(store));
        snprintf(store_dir, sizeof(store_dir), "/tmp/lf-store-XXXXXX");
        ck_assert_ptr_nonnull(mkdtemp(store_dir));
        ck_assert_int_lt(snprintf(store.path, sizeof(store.path), "%s/notify.sock", store_dir),
                         (int)sizeof(sa.sun_path));
        memcpy(sa.sun_path, store.path, strlen(store.path) + 1);
        store.sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(store.sock, 0);
        ck_assert_int_eq(bind(store.sock, (struct sockaddr *)&sa, sizeof(sa)), 0);
        store.stop_fd = eventfd(0, EFD_CLOEXEC);
        ck_assert_int_ge(store.stop_fd, 0);
        pthread_mutex_init(&store.lock, NULL);
        pthread_cond_init(&store.cond, NULL);
        ck_assert_int_eq(pthread_create(&store.thread, NULL, store_main, NULL), 0);
        ck_assert_int_eq(setenv("NOTIFY_SOCKET", store.path, 1), 0);
        store.on = true;
}

/* Wait until the store took in everything sent to it so far. */
static void store_sync(void)
{
        static uint64_t seq;
        char msg[64];
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };

        ck_assert_int_ge(fd, 0);
        memcpy(sa.sun_path, store.path, strlen(store.path) + 1);
        fmt_buf(msg, sizeof(msg), "X-SYNC=%llu", (unsigned long long)++seq);
        ck_assert_int_eq(sendto(fd, msg, strlen(msg), 0, (struct sockaddr *)&sa, sizeof(sa)),
                         (ssize_t)strlen(msg));
        close(fd);
        pthread_mutex_lock(&store.lock);
        while (store.synced < seq)
                pthread_cond_wait(&store.cond, &store.lock);
        pthread_mutex_unlock(&store.lock);
        ck_assert_msg(store.error[0] == 0, "fd store: %s", store.error);
}

static bool store_has(const char *name)
{
        bool has = false;

        pthread_mutex_lock(&store.lock);
        for (size_t i = 0; i < store.n && !has; i++)
                has = strcmp(store.names[i], name) == 0;
        pthread_mutex_unlock(&store.lock);
        return has;
}

static void store_stop(void)
{
        uint64_t one = 1;

        if (!store.on)
                return;
        ck_assert_int_eq(write(store.stop_fd, &one, sizeof(one)), (ssize_t)sizeof(one));
        ck_assert_int_eq(pthread_join(store.thread, NULL), 0);
        for (size_t i = 0; i < store.n; i++)
                close(store.fds[i]);
        close(store.sock);
        close(store.stop_fd);
        unlink(store.path);
        rmdir(store_dir);
        unsetenv("NOTIFY_SOCKET");
        pthread_mutex_destroy(&store.lock);
        pthread_cond_destroy(&store.cond);
        memset(&store, 0, sizeof(store));
}

/* ---- the rig: a fake, a broker over it, its socket ---------------------------------------- */

static char tmpdir[PATH_MAX];
static char sock_path[PATH_MAX];
static int fds_at_start;
static uid_t me;
static pid_t my_pid;
static struct broker_config cfg; /* the next rig_start()'s (setup() sets the defaults) */
static struct fake *fk;          /* the broker's inner backend (the broker owns it) */
static struct backend *bk;       /* the broker under test */

static void rig_start(enum fake_kind kind)
{
        char msg[256];

        ck_assert_ptr_null(bk);
        fk = fake_new(kind);
        ck_assert_int_eq(broker_new(&fk->base, &cfg, &bk, msg, sizeof(msg)), 0);
        ck_assert_str_eq(msg, "");
        ck_assert(broker_is(bk));
        ck_assert_str_eq(bk->ops->name, "fake");
        /* The broker's own members only: the kernel's preserving ones stay inside. */
        ck_assert_ptr_null(bk->ops->session_create);
        ck_assert_ptr_null(bk->ops->fd_preserve);
        ck_assert_ptr_null(bk->ops->marker_write);
}

static void rig_stop(void)
{
        if (bk)
                bk->ops->free(bk);
        bk = NULL;
        fk = NULL;
}

static void setup(void)
{
        fds_at_start = testutil_count_fds();
        me = getuid();
        my_pid = getpid();
        testutil_mkdtemp(tmpdir, sizeof(tmpdir), "broker");
        ck_assert_int_lt(snprintf(sock_path, sizeof(sock_path), "%s/sessions.sock", tmpdir),
                         (int)sizeof(sock_path));
        broker_config_init(&cfg);
        cfg.socket_path = sock_path;
        memset(&ho, 0, sizeof(ho));
}

static void teardown(void)
{
        rig_stop();
        store_stop();
        handover_clear();
        testutil_rm_rf(tmpdir);
        ck_assert_int_eq(testutil_count_fds(), fds_at_start);
}

/* The fake's call log since the last look, and a fresh one. */
static void log_take(char *buf, size_t size)
{
        pthread_mutex_lock(&fk->lock);
        fmt_buf(buf, size, "%s", fk->log);
        fk->log_len = 0;
        fk->log[0] = 0;
        pthread_mutex_unlock(&fk->lock);
}

/* The kernel calls since the last look were exactly these. */
#define LOG_IS(...)                                                                                \
        do {                                                                                       \
                char want_[FAKE_LOG_MAX], got_[FAKE_LOG_MAX];                                      \
                fmt_buf(want_, sizeof(want_), __VA_ARGS__);                                        \
                log_take(got_, sizeof(got_));                                                      \
                ck_assert_str_eq(got_, want_);                                                     \
        } while (0)
/* No kernel call since the last look. */
#define LOG_EMPTY()                                                                                \
        do {                                                                                       \
                char got_[FAKE_LOG_MAX];                                                           \
                log_take(got_, sizeof(got_));                                                      \
                ck_assert_str_eq(got_, "");                                                        \
        } while (0)

static struct lfs_client *client(const char *name, unsigned flags)
{
        struct lfs_client *c = NULL;

        ck_assert_int_eq(lfs_connect(sock_path, name, flags, &c), 0);
        ck_assert_ptr_nonnull(c);
        return c;
}

/*
 * The broker answers a request before it records the request's event: one
 * more round trip (LIST records nothing) makes sure the last one's is in.
 */
static void sync_broker(struct lfs_client *c)
{
        struct lfs_session_info *l = NULL;
        size_t n = 0;

        ck_assert_int_eq(lfs_list(c, &l, &n), 0);
        free(l);
}

/* A memfd of size bytes starting with text. */
static int memfd_with(const char *text, off_t size)
{
        int fd = memfd_create("test-broker", MFD_CLOEXEC);

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(ftruncate(fd, size), 0);
        if (text)
                ck_assert_int_eq(pwrite(fd, text, strlen(text), 0), (ssize_t)strlen(text));
        return fd;
}

static ino_t ino_of(int fd)
{
        struct stat st;

        ck_assert_int_eq(fstat(fd, &st), 0);
        return st.st_ino;
}

/* Preserve a fresh memfd of size bytes under token; returns its inode. */
static ino_t preserve_new(struct lfs_client *c, const char *session, uint64_t token, off_t size,
                          const char *text)
{
        int fd = memfd_with(text, size);
        uint64_t bytes = UINT64_MAX;
        ino_t ino = ino_of(fd);

        ck_assert_int_eq(lfs_preserve(c, session, fd, token, &bytes), 0);
        ck_assert_uint_eq(bytes, (uint64_t)size);
        close(fd);
        return ino;
}

/* The fake's copy of (session name, token): its inode, 0 when it holds none. */
static ino_t fake_ino(const char *kname, bool incoming, uint64_t token)
{
        struct fsession *s;
        ino_t ino = 0;

        pthread_mutex_lock(&fk->lock);
        s = fsession_by_name(fk, kname, incoming);
        for (size_t i = 0; s && i < s->n_files; i++)
                if (s->files[i].token == token)
                        ino = ino_of(s->files[i].fd);
        pthread_mutex_unlock(&fk->lock);
        return ino;
}

static size_t fake_n_files(const char *kname)
{
        struct fsession *s;
        size_t n = SIZE_MAX;

        pthread_mutex_lock(&fk->lock);
        s = fsession_by_name(fk, kname, false);
        if (s)
                n = s->n_files;
        pthread_mutex_unlock(&fk->lock);
        return n;
}

/* Outgoing sessions of that name the fake kernel still has (live descriptors somewhere). */
static size_t fake_n_sessions(const char *kname)
{
        size_t n = 0;

        pthread_mutex_lock(&fk->lock);
        for (size_t i = 0; i < FAKE_SESSIONS_MAX; i++)
                if (fk->sessions[i].used && !fk->sessions[i].incoming &&
                    strcmp(fk->sessions[i].name, kname) == 0 && fsession_alive(&fk->sessions[i]))
                        n++;
        pthread_mutex_unlock(&fk->lock);
        return n;
}

static ino_t fake_token_ino(uint64_t kt)
{
        struct ftoken *t;
        ino_t ino = 0;

        pthread_mutex_lock(&fk->lock);
        t = ftoken_find(fk, kt);
        if (t)
                ino = ino_of(t->fd);
        pthread_mutex_unlock(&fk->lock);
        return ino;
}

static size_t fake_n_tokens(void)
{
        size_t n;

        pthread_mutex_lock(&fk->lock);
        n = fk->n_tokens;
        pthread_mutex_unlock(&fk->lock);
        return n;
}

static enum luo_state fake_state(void)
{
        enum luo_state st;

        ck_assert_int_eq(fake_get_state(&fk->base, &st), 0);
        return st;
}

/* "lf:<uid>:<name>" */
static const char *kname(uid_t uid, const char *name)
{
        static char bufs[4][LUO_SESSION_NAME_MAX];
        static unsigned next;
        char *b = bufs[next++ % ELEMENTSOF(bufs)];

        fmt_buf(b, LUO_SESSION_NAME_MAX, "lf:%u:%s", (unsigned)uid, name);
        return b;
}

/* ---- the broker's document ---------------------------------------------------------------- */

static json_t *doc_get(uint64_t since)
{
        char *text = NULL;
        size_t len = 0;
        json_error_t err;
        json_t *doc;

        ck_assert_int_eq(bk->ops->sessions_json(bk, since, &text, &len), 0);
        ck_assert_ptr_nonnull(text);
        ck_assert_uint_eq(strlen(text), len);
        doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
        ck_assert_msg(doc != NULL, "sessions_json is not JSON: %s", err.text);
        free(text);
        return doc;
}

static json_t *jget(json_t *o, const char *key)
{
        json_t *v = json_object_get(o, key);

        ck_assert_msg(v != NULL, "no member \"%s\"", key);
        return v;
}

static long long jint(json_t *o, const char *key)
{
        json_t *v = jget(o, key);

        ck_assert_msg(json_is_integer(v), "\"%s\" is not an integer", key);
        return json_integer_value(v);
}

static const char *jstr(json_t *o, const char *key)
{
        json_t *v = jget(o, key);

        ck_assert_msg(json_is_string(v), "\"%s\" is not a string", key);
        return json_string_value(v);
}

static json_t *jarr(json_t *o, const char *key, size_t n)
{
        json_t *v = jget(o, key);

        ck_assert_msg(json_is_array(v), "\"%s\" is not an array", key);
        ck_assert_msg(json_array_size(v) == n, "\"%s\" has %zu elements, not %zu", key,
                      json_array_size(v), n);
        return v;
}

/* The object's members are exactly these (space-separated). */
static void jkeys(json_t *o, const char *keys)
{
        char copy[512], *save = NULL;
        size_t n = 0;

        ck_assert(json_is_object(o));
        fmt_buf(copy, sizeof(copy), "%s", keys);
        for (char *k = strtok_r(copy, " ", &save); k; k = strtok_r(NULL, " ", &save)) {
                ck_assert_msg(json_object_get(o, k) != NULL, "no member \"%s\"", k);
                n++;
        }
        ck_assert_msg(json_object_size(o) == n, "%zu members, expected exactly: %s",
                      json_object_size(o), keys);
}

static json_t *doc_session(json_t *doc, const char *name)
{
        json_t *s;
        size_t i;

        json_array_foreach (jget(doc, "sessions"), i, s)
                if (strcmp(jstr(s, "name"), name) == 0)
                        return s;
        ck_abort_msg("no session %s in the document", name);
        return NULL;
}

/* The events' names, space-separated. */
static void event_names(json_t *doc, char *buf, size_t size)
{
        json_t *e;
        size_t i, len = 0;

        buf[0] = 0;
        json_array_foreach (jget(doc, "events"), i, e) {
                int n = snprintf(buf + len, size - len, "%s%s", len ? " " : "", jstr(e, "event"));
                ck_assert_int_lt(n, (int)(size - len));
                len += (size_t)n;
        }
}

static json_t *marker_get(void)
{
        json_error_t err;
        json_t *doc;

        pthread_mutex_lock(&fk->lock);
        ck_assert_ptr_nonnull(fk->marker);
        doc = json_loadb(fk->marker, fk->marker_len, JSON_REJECT_DUPLICATES, &err);
        pthread_mutex_unlock(&fk->lock);
        ck_assert_msg(doc != NULL, "the marker is not JSON: %s", err.text);
        return doc;
}

/* ---- the agent's side --------------------------------------------------------------------- */

static int prepare(uint32_t timeout_ms, const char *note, char *msg, size_t msg_size)
{
        struct backend_event_opts o = { .confirm_timeout_ms = timeout_ms };

        if (note)
                fmt_buf(o.note, sizeof(o.note), "%s", note);
        return bk->ops->set_event_ex(bk, LUO_EVENT_PREPARE, &o, msg, msg_size);
}

static int finish(bool force, char *msg, size_t msg_size)
{
        struct backend_event_opts o = { .force = force };

        return bk->ops->set_event_ex(bk, LUO_EVENT_FINISH, &o, msg, msg_size);
}

static int reboot_with(const char *note, char *msg, size_t msg_size)
{
        struct backend_event_opts o = { 0 };

        fmt_buf(o.note, sizeof(o.note), "%s", note);
        return bk->ops->reboot_ex(bk, &o, msg, msg_size);
}

static uint64_t mono_ms(void)
{
        return now_mono_usec() / 1000u;
}

static bool readable(int fd, int timeout_ms)
{
        struct pollfd p = { .fd = fd, .events = POLLIN };
        int r = poll(&p, 1, timeout_ms);

        ck_assert_int_ge(r, 0);
        return r == 1 && (p.revents & POLLIN);
}

/* The next event, within 2 s. */
static struct lfs_event next_event(struct lfs_client *c, enum lfs_event_kind kind)
{
        struct lfs_event ev;

        memset(&ev, 0, sizeof(ev));
        ck_assert_int_eq(lfs_next_event(c, &ev, 2000), 0);
        ck_assert_int_eq(ev.kind, kind);
        return ev;
}

/* A registered workload's thread answering one LFS_EVENT_PREPARE. */
enum respond {
        RESPOND_CONFIRM,
        RESPOND_VETO,
        RESPOND_HANGUP, /* close the connection instead */
};

struct responder {
        struct lfs_client *c;
        enum respond how;
        pthread_t thread;
        int next_r;
        struct lfs_event ev;
        int answer_r;
};

static void *responder_main(void *p)
{
        struct responder *r = p;

        r->next_r = lfs_next_event(r->c, &r->ev, 5000);
        if (r->next_r < 0 || r->ev.kind != LFS_EVENT_PREPARE)
                return NULL;
        switch (r->how) {
        case RESPOND_CONFIRM:
                r->answer_r = lfs_confirm(r->c, r->ev.id);
                break;
        case RESPOND_VETO:
                r->answer_r = lfs_veto(r->c, r->ev.id, "disk busy");
                break;
        case RESPOND_HANGUP:
                lfs_close(r->c);
                r->c = NULL;
                break;
        }
        return NULL;
}

static void responder_start(struct responder *r, struct lfs_client *c, enum respond how)
{
        memset(r, 0, sizeof(*r));
        r->c = c;
        r->how = how;
        ck_assert_int_eq(pthread_create(&r->thread, NULL, responder_main, r), 0);
}

static void responder_join(struct responder *r)
{
        ck_assert_int_eq(pthread_join(r->thread, NULL), 0);
        ck_assert_int_eq(r->next_r, 0);
        ck_assert_int_eq(r->ev.kind, LFS_EVENT_PREPARE);
}

/* ---- session mode ------------------------------------------------------------------------- */

START_TEST(test_create_and_duplicate)
{
        struct lfs_client *c;
        json_t *doc, *s;

        rig_start(FAKE_MAINLINE);
        LOG_EMPTY();
        c = client("vm-1", 0);
        ck_assert_int_eq(lfs_host_state(c), LUO_STATE_NORMAL);
        ck_assert_int_eq(lfs_session_create(c, "vm1"), 0);
        LOG_IS("create(%s)=1", kname(me, "vm1"));
        /* A name in use: the broker knows, the kernel is not asked. */
        ck_assert_int_eq(lfs_session_create(c, "vm1"), -EEXIST);
        ck_assert_str_eq(lfs_last_message(c), "session vm1 exists (outgoing)");
        LOG_EMPTY();
        ck_assert_int_eq(lfs_session_create(c, "vm.2_x-Y"), 0);
        LOG_IS("create(%s)=2", kname(me, "vm.2_x-Y"));
        sync_broker(c);

        doc = doc_get(0);
        ck_assert_int_eq(jint(doc, "version"), 1);
        ck_assert_str_eq(jstr(doc, "interface"), "sessions");
        ck_assert_uint_eq(strlen(jstr(doc, "broker_id")), 36);
        ck_assert_ptr_null(json_object_get(doc, "previous_boot"));
        ck_assert(json_is_null(jget(doc, "last_round")));
        s = doc_session(doc, "vm1");
        jkeys(s, "name kernel_name owner_uid workload phase fds bytes tokens");
        ck_assert_str_eq(jstr(s, "kernel_name"), kname(me, "vm1"));
        ck_assert_int_eq(jint(s, "owner_uid"), me);
        ck_assert_str_eq(jstr(s, "workload"), "vm-1");
        ck_assert_str_eq(jstr(s, "phase"), "outgoing");
        ck_assert_int_eq(jint(s, "fds"), 0);
        ck_assert_int_eq(jint(s, "bytes"), 0);
        jarr(s, "tokens", 0);
        s = json_array_get(jarr(doc, "workloads", 1), 0);
        jkeys(s, "name uid pid registered");
        ck_assert_str_eq(jstr(s, "name"), "vm-1");
        ck_assert_int_eq(jint(s, "uid"), me);
        ck_assert_int_eq(jint(s, "pid"), my_pid);
        ck_assert(json_is_false(jget(s, "registered")));
        s = jget(doc, "summary");
        jkeys(s, "sessions fds bytes outgoing incoming retrieved finished workloads");
        ck_assert_int_eq(jint(s, "sessions"), 2);
        ck_assert_int_eq(jint(s, "outgoing"), 2);
        ck_assert_int_eq(jint(s, "workloads"), 1);
        json_decref(doc);
        lfs_close(c);
}
END_TEST

START_TEST(test_preserve_reaches_kernel)
{
        struct lfs_client *c;
        struct lfs_fd_info *fi = NULL;
        size_t n = 0;
        ino_t ino;
        int fd;

        rig_start(FAKE_MAINLINE);
        c = client("vm-1", 0);
        ck_assert_int_eq(lfs_session_create(c, "vm1"), 0);
        LOG_IS("create(%s)=1", kname(me, "vm1"));
        ino = preserve_new(c, "vm1", 7, 4096, "hello");
        LOG_IS("preserve(1,7)");
        /* The kernel holds the very file the workload sent (which closed its own fd). */
        ck_assert_uint_eq(fake_ino(kname(me, "vm1"), false, 7), ino);
        ck_assert_uint_ne(ino, 0);

        /* The workload's token is in use: refused before the kernel. */
        fd = memfd_with(NULL, 10);
        ck_assert_int_eq(lfs_preserve(c, "vm1", fd, 7, NULL), -EEXIST);
        ck_assert_str_eq(lfs_last_message(c), "token 7 is in use in session vm1");
        /* No such session (of ours). */
        ck_assert_int_eq(lfs_preserve(c, "nope", fd, 8, NULL), -ENOENT);
        LOG_EMPTY();
        close(fd);

        ck_assert_int_eq(lfs_show(c, "vm1", &fi, &n), 0);
        ck_assert_uint_eq(n, 1);
        ck_assert_uint_eq(fi[0].token, 7);
        ck_assert_uint_eq(fi[0].bytes, 4096);
        ck_assert_int_eq(fi[0].retrieved, 0);
        free(fi);
        lfs_close(c);
}
END_TEST

START_TEST(test_kernel_errnos_pass_through)
{
        struct lfs_client *c;
        struct lfs_fd_info *fi = NULL;
        struct lfs_session_info *si = NULL;
        size_t n = 9;
        json_t *doc, *e;
        char names[512];
        int fd;

        rig_start(FAKE_MAINLINE);
        c = client("vm-1", 0);

        /* CREATE_SESSION: EEXIST (a name the kernel has, say from another agent). */
        fk->fail_create = EEXIST;
        ck_assert_int_eq(lfs_session_create(c, "vm1"), -EEXIST);
        LOG_IS("create(%s)=EEXIST", kname(me, "vm1"));
        ck_assert_ptr_nonnull(strstr(lfs_last_message(c), "EEXIST"));
        ck_assert_int_eq(lfs_list(c, &si, &n), 0);
        ck_assert_uint_eq(n, 0);
        free(si);

        ck_assert_int_eq(lfs_session_create(c, "vm1"), 0);
        LOG_IS("create(%s)=1", kname(me, "vm1"));
        fd = memfd_with(NULL, 4096);
        /* PRESERVE_FD: EBUSY (the file is preserved already), ENOENT (cannot be), EEXIST. */
        fk->fail_preserve = EBUSY;
        ck_assert_int_eq(lfs_preserve(c, "vm1", fd, 1, NULL), -EBUSY);
        LOG_IS("preserve(1,1)=EBUSY");
        ck_assert_ptr_nonnull(strstr(lfs_last_message(c), "EBUSY"));
        fk->fail_preserve = ENOENT;
        ck_assert_int_eq(lfs_preserve(c, "vm1", fd, 1, NULL), -ENOENT);
        LOG_IS("preserve(1,1)=ENOENT");
        fk->fail_preserve = EEXIST;
        ck_assert_int_eq(lfs_preserve(c, "vm1", fd, 1, NULL), -EEXIST);
        LOG_IS("preserve(1,1)=EEXIST");
        ck_assert_int_eq(lfs_show(c, "vm1", &fi, &n), 0);
        ck_assert_uint_eq(n, 0); /* nothing recorded for a refused file */
        free(fi);
        ck_assert_int_eq(lfs_preserve(c, "vm1", fd, 1, NULL), 0);
        LOG_IS("preserve(1,1)");
        close(fd);

        /* RETRIEVE_SESSION of a name the kernel does not have: ENOENT, from the kernel. */
        ck_assert_int_eq(lfs_session_retrieve(c, "ghost"), -ENOENT);
        LOG_IS("retrieve(%s)=ENOENT", kname(me, "ghost"));
        fk->fail_retrieve = EBUSY;
        ck_assert_int_eq(lfs_session_retrieve(c, "ghost"), -EBUSY);
        LOG_IS("retrieve(%s)=EBUSY", kname(me, "ghost"));
        sync_broker(c);

        /* Every refusal is an event with the errno. */
        doc = doc_get(0);
        event_names(doc, names, sizeof(names));
        ck_assert_str_eq(names, "connected refused created refused refused refused preserved "
                                "refused refused");
        e = json_array_get(jget(doc, "events"), 3);
        jkeys(e, "seq time event session owner_uid workload pid token errno detail");
        ck_assert_str_eq(jstr(e, "errno"), "EBUSY");
        ck_assert_str_eq(jstr(e, "session"), "vm1");
        ck_assert_int_eq(jint(e, "token"), 1);
        ck_assert_int_eq(jint(e, "owner_uid"), me);
        ck_assert_int_eq(jint(e, "pid"), my_pid);
        ck_assert_str_eq(jstr(e, "workload"), "vm-1");
        json_decref(doc);
        lfs_close(c);
}
END_TEST

START_TEST(test_unpreserve_rebuilds_session)
{
        struct lfs_client *c;
        struct lfs_fd_info *fi = NULL;
        size_t n = 0;
        ino_t i1, i2, i3;

        rig_start(FAKE_MAINLINE);
        c = client("vm-1", 0);
        ck_assert_int_eq(lfs_session_create(c, "vm1"), 0);
        i1 = preserve_new(c, "vm1", 1, 4096, "one");
        i2 = preserve_new(c, "vm1", 2, 8192, "two");
        i3 = preserve_new(c, "vm1", 3, 4096, "three");
        LOG_IS("create(%s)=1 preserve(1,1) preserve(1,2) preserve(1,3)", kname(me, "vm1"));
        ck_assert_uint_eq(fake_ino(kname(me, "vm1"), false, 2), i2);

        /* Mainline has no UNPRESERVE: the session is built again without token 2. */
        ck_assert_int_eq(lfs_unpreserve(c, "vm1", 2), 0);
        LOG_IS("release(1) create(%s)=2 preserve(2,1) preserve(2,3)", kname(me, "vm1"));
        ck_assert_uint_eq(fake_n_files(kname(me, "vm1")), 2);
        ck_assert_uint_eq(fake_ino(kname(me, "vm1"), false, 1), i1);
        ck_assert_uint_eq(fake_ino(kname(me, "vm1"), false, 3), i3);
        ck_assert_uint_eq(fake_ino(kname(me, "vm1"), false, 2), 0);

        ck_assert_int_eq(lfs_show(c, "vm1", &fi, &n), 0);
        ck_assert_uint_eq(n, 2);
        ck_assert_uint_eq(fi[0].token + fi[1].token, 4);
        ck_assert_uint_ne(fi[0].token, 2);
        free(fi);

        /* Gone already, or never there: ENOENT from the broker. */
        ck_assert_int_eq(lfs_unpreserve(c, "vm1", 2), -ENOENT);
        ck_assert_int_eq(lfs_unpreserve(c, "nope", 1), -ENOENT);
        LOG_EMPTY();

        /* The rebuilt session goes on: the next unpreserve rebuilds from handle 2. */
        ck_assert_int_eq(lfs_unpreserve(c, "vm1", 1), 0);
        LOG_IS("release(2) create(%s)=3 preserve(3,3)", kname(me, "vm1"));
        lfs_close(c);
}
END_TEST

/*
 * Was a bug: broker.c session_rebuild_without() released the session first; when
 * the create or a re-preserve then fails, it returns the error with the
 * kernel holding no session (or only some of its files) while the broker's
 * table still lists every file, the one to unpreserve included (file_remove
 * is skipped). The workload hears the errno, yet broker_holds() stays true,
 * lfs_show() lists three files and the marker would carry them: after the
 * kexec the session does not exist. Now a failed UNPRESERVE changes
 * nothing: the broker builds the session back with all its files.
 */
START_TEST(test_unpreserve_rebuild_failure)
{
        struct lfs_client *c;

        rig_start(FAKE_MAINLINE);
        c = client("vm-1", 0);
        ck_assert_int_eq(lfs_session_create(c, "vm1"), 0);
        preserve_new(c, "vm1", 1, 4096, NULL);
        preserve_new(c, "vm1", 2, 4096, NULL);
        preserve_new(c, "vm1", 3, 4096, NULL);
        LOG_IS("create(%s)=1 preserve(1,1) preserve(1,2) preserve(1,3)", kname(me, "vm1"));

        fk->fail_create = ENOMEM;
        ck_assert_int_eq(lfs_unpreserve(c, "vm1", 2), -ENOMEM);
        /* The session was released before the create failed. */
        ck_assert_str_eq(lfs_last_message(c), "unpreserving token 2 failed: Cannot allocate "
                                              "memory (ENOMEM)");
        {
                struct lfs_fd_info *fi = NULL;
                size_t n = 0;

                /* Nothing changed: the kernel still has the session with all three files. */
                ck_assert_uint_eq(fake_n_files(kname(me, "vm1")), 3);
                ck_assert_int_eq(lfs_show(c, "vm1", &fi, &n), 0);
                ck_assert_uint_eq(n, 3);
                free(fi);
        }
        lfs_close(c);
}
END_TEST

/* The rebuild with real session descriptors, the fd store off: the control for bug 3. */
START_TEST(test_unpreserve_rebuild_real_fds)
{
        struct lfs_client *c;

        rig_start(FAKE_MAINLINE_FD);
        c = client("vm-1", 0);
        ck_assert_int_eq(lfs_session_create(c, "vm1"), 0);
        preserve_new(c, "vm1", 1, 4096, NULL);
        preserve_new(c, "vm1", 2, 4096, NULL);
        ck_assert_int_eq(lfs_unpreserve(c, "vm1", 2), 0);
        ck_assert_uint_eq(fake_n_sessions(kname(me, "vm1")), 1);
        ck_assert_uint_eq(fake_n_files(kname(me, "vm1")), 1);
        ck_assert_uint_eq(fake_ino(kname(me, "vm1"), false, 2), 0);
        ck_assert_int_eq(lfs_session_close(c, "vm1"), 0);
        ck_assert_uint_eq(fake_n_sessions(kname(me, "vm1")), 0);
        lfs_close(c);
}
END_TEST

/*
 * Was a bug: with cfg.fdstore (on whenever NOTIFY_SOCKET is set,
 * i.e. under the systemd unit: agent/main.c take_fdstore()), the
 * service manager holds a duplicate of every session fd ("lf-s-<uid>-<name>",
 * put by do_create). session_rebuild_without() (broker.c ~line 1061)
 * releases the broker's descriptor and at once creates the session again
 * under the same name, while the store's duplicate keeps the kernel's
 * session (and all its files) alive: the kernel answers CREATE_SESSION with
 * EEXIST (do_unpreserve removes the store's copy only after a successful
 * rebuild, ~line 1118, and FDSTOREREMOVE is asynchronous anyway). So on
 * luo-sessions under systemd every UNPRESERVE fails with EEXIST, the
 * broker's session is left without a descriptor (s->sfd = -1: later
 * PRESERVEs fail with EBADF), and the old session, the "unpreserved" file
 * included, stays preserved for the next kernel through the store.
 * Now the store lets go of it first (FDSTOREREMOVE, then a barrier): the
 * unpreserve succeeds and the kernel then has one session of
 * that name, without the file.
 */
START_TEST(test_fdstore_unpreserve_rebuild)
{
        struct lfs_client *c;
        char sname[160];
        int r;

        store_start(tmpdir);
        cfg.fdstore = true;
        rig_start(FAKE_MAINLINE_FD);
        c = client("vm-1", 0);
        ck_assert_int_eq(lfs_session_create(c, "vm1"), 0);
        preserve_new(c, "vm1", 1, 4096, NULL);
        preserve_new(c, "vm1", 2, 4096, NULL);
        store_sync();
        fmt_buf(sname, sizeof(sname), BROKER_FDNAME_SESSION "%u-vm1", (unsigned)me);
        ck_assert(store_has(sname));
        ck_assert(store_has(BROKER_FDNAME_DOC));

        r = lfs_unpreserve(c, "vm1", 2);
        store_sync();
        ck_assert_int_eq(r, 0);
        ck_assert_uint_eq(fake_n_sessions(kname(me, "vm1")), 1);
        ck_assert_uint_eq(fake_n_files(kname(me, "vm1")), 1);
        ck_assert_uint_eq(fake_ino(kname(me, "vm1"), false, 2), 0);
        lfs_close(c);
}
END_TEST

START_TEST(test_unpreserve_by_kernel)
{
        struct lfs_client *c;

        rig_start(FAKE_UNPRESERVE);
        c = client("vm-1", 0);
        ck_assert_int_eq(lfs_session_create(c, "vm1"), 0);
        preserve_new(c, "vm1", 1, 4096, NULL);
        preserve_new(c, "vm1", 2, 4096, NULL);
        LOG_IS("create(%s)=1 preserve(1,1) preserve(1,2)", kname(me, "vm1"));
        ck_assert_int_eq(lfs_unpreserve(c, "vm1", 1), 0);
        LOG_IS("unpreserve(1,1)");
        ck_assert_uint_eq(fake_n_files(kname(me, "vm1")), 1);
        lfs_close(c);
}
END_TEST

START_TEST(test_close_session)
{
        struct lfs_client *c;
        struct lfs_session_info *si = NULL;
        size_t n = 9;
        json_t *doc, *e;
        char names[256];

        rig_start(FAKE_MAINLINE);
        c = client("vm-1", 0);
        ck_assert_int_eq(lfs_session_create(c, "vm1"), 0);
        preserve_new(c, "vm1", 1, 4096, NULL);
        preserve_new(c, "vm1", 2, 8192, NULL);
        LOG_IS("create(%s)=1 preserve(1,1) preserve(1,2)", kname(me, "vm1"));
        ck_assert_int_eq(lfs_session_close(c, "vm1"), 0);
        /* Releasing an outgoing session unpreserves its files. */
        LOG_IS("release(1)");
        ck_assert_uint_eq(fake_n_files(kname(me, "vm1")), SIZE_MAX);
        ck_assert_int_eq(lfs_list(c, &si, &n), 0);
        ck_assert_uint_eq(n, 0);
        free(si);
        ck_assert_int_eq(lfs_session_close(c, "vm1"), -ENOENT);
        LOG_EMPTY();
        /* The name is free again. */
        ck_assert_int_eq(lfs_session_create(c, "vm1"), 0);
        LOG_IS("create(%s)=2", kname(me, "vm1"));
        sync_broker(c);

        doc = doc_get(0);
        event_names(doc, names, sizeof(names));
        ck_assert_str_eq(names, "connected created preserved preserved closed refused created");
        e = json_array_get(jget(doc, "events"), 4);
        jkeys(e, "seq time event session owner_uid workload pid bytes");
        ck_assert_int_eq(jint(e, "bytes"), 12288);
        json_decref(doc);
        lfs_close(c);
}
END_TEST

START_TEST(test_list_and_show)
{
        struct lfs_client *c;
        struct lfs_session_info *si = NULL;
        struct lfs_fd_info *fi = NULL;
        size_t n = 0;

        rig_start(FAKE_MAINLINE);
        c = client("vm-1", 0);
        ck_assert_int_eq(lfs_session_create(c, "a"), 0);
        ck_assert_int_eq(lfs_session_create(c, "b"), 0);
        preserve_new(c, "a", 10, 4096, NULL);
        preserve_new(c, "a", 11, 8192, NULL);

        ck_assert_int_eq(lfs_list(c, &si, &n), 0);
        ck_assert_uint_eq(n, 2);
        ck_assert_str_eq(si[0].name, "a");
        ck_assert_int_eq(si[0].phase, LFS_PHASE_OUTGOING);
        ck_assert_uint_eq(si[0].fds, 2);
        ck_assert_uint_eq(si[0].bytes, 12288);
        ck_assert_str_eq(si[1].name, "b");
        ck_assert_int_eq(si[1].phase, LFS_PHASE_OUTGOING);
        ck_assert_uint_eq(si[1].fds, 0);
        ck_assert_uint_eq(si[1].bytes, 0);
        free(si);

        ck_assert_int_eq(lfs_show(c, "a", &fi, &n), 0);
        ck_assert_uint_eq(n, 2);
        ck_assert_uint_eq(fi[0].token, 10);
        ck_assert_uint_eq(fi[0].bytes, 4096);
        ck_assert_int_eq(fi[0].retrieved, 0);
        ck_assert_uint_eq(fi[1].token, 11);
        ck_assert_uint_eq(fi[1].bytes, 8192);
        free(fi);
        ck_assert_int_eq(lfs_show(c, "b", &fi, &n), 0);
        ck_assert_uint_eq(n, 0);
        free(fi);
        fi = NULL;
        ck_assert_int_eq(lfs_show(c, "nope", &fi, &n), -ENOENT);
        ck_assert_ptr_null(fi);
        lfs_close(c);
}
END_TEST

START_TEST(test_quota_sessions)
{
        struct lfs_client *c;
        char want[128];

        cfg.max_sessions_per_owner = 2;
        rig_start(FAKE_MAINLINE);
        c = client("vm-1", 0);
        ck_assert_int_eq(lfs_session_create(c, "a"), 0);
        ck_assert_int_eq(lfs_session_create(c, "b"), 0);
        LOG_IS("create(%s)=1 create(%s)=2", kname(me, "a"), kname(me, "b"));
        ck_assert_int_eq(lfs_session_create(c, "c"), -EDQUOT);
        LOG_EMPTY();
        fmt_buf(want, sizeof(want), "uid %u has 2 sessions, the limit is 2", (unsigned)me);
        ck_assert_str_eq(lfs_last_message(c), want);
        ck_assert_int_eq(lfs_session_close(c, "a"), 0);
        ck_assert_int_eq(lfs_session_create(c, "c"), 0);
        LOG_IS("release(1) create(%s)=3", kname(me, "c"));
        lfs_close(c);
}
END_TEST

START_TEST(test_quota_fds)
{
        struct lfs_client *c;
        char want[128];
        int fd;

        cfg.max_fds_per_owner = 2;
        rig_start(FAKE_MAINLINE);
        c = client("vm-1", 0);
        ck_assert_int_eq(lfs_session_create(c, "a"), 0);
        ck_assert_int_eq(lfs_session_create(c, "b"), 0);
        preserve_new(c, "a", 1, 4096, NULL);
        preserve_new(c, "a", 2, 4096, NULL);
        LOG_IS("create(%s)=1 create(%s)=2 preserve(1,1) preserve(1,2)", kname(me, "a"),
               kname(me, "b"));
        /* Per owner, not per session. */
        fd = memfd_with(NULL, 4096);
        ck_assert_int_eq(lfs_preserve(c, "b", fd, 1, NULL), -EDQUOT);
        LOG_EMPTY();
        fmt_buf(want, sizeof(want), "uid %u preserves 2 files, the limit is 2", (unsigned)me);
        ck_assert_str_eq(lfs_last_message(c), want);
        ck_assert_int_eq(lfs_unpreserve(c, "a", 1), 0);
        ck_assert_int_eq(lfs_preserve(c, "b", fd, 1, NULL), 0);
        LOG_IS("release(1) create(%s)=3 preserve(3,2) preserve(2,1)", kname(me, "a"));
        close(fd);
        lfs_close(c);
}
END_TEST

START_TEST(test_quota_bytes)
{
        struct lfs_client *c;
        char want[128];
        int fd;

        cfg.max_bytes_per_owner = 8192;
        rig_start(FAKE_MAINLINE);
        c = client("vm-1", 0);
        ck_assert_int_eq(lfs_session_create(c, "a"), 0);
        ck_assert_int_eq(lfs_session_create(c, "b"), 0);
        preserve_new(c, "a", 1, 4096, NULL);
        preserve_new(c, "b", 1, 4096, NULL); /* exactly the limit */
        LOG_IS("create(%s)=1 create(%s)=2 preserve(1,1) preserve(2,1)", kname(me, "a"),
               kname(me, "b"));
        fd = memfd_with(NULL, 1);
        ck_assert_int_eq(lfs_preserve(c, "a", fd, 2, NULL), -EDQUOT);
        LOG_EMPTY();
        fmt_buf(want, sizeof(want), "uid %u would preserve 8193 bytes, the limit is 8192",
                (unsigned)me);
        ck_assert_str_eq(lfs_last_message(c), want);
        close(fd);
        /* An empty file costs no bytes. */
        preserve_new(c, "a", 3, 0, NULL);
        LOG_IS("preserve(1,3)");
        /* One file larger than the whole limit. */
        fd = memfd_with(NULL, 16384);
        ck_assert_int_eq(lfs_preserve(c, "a", fd, 4, NULL), -EDQUOT);
        close(fd);
        LOG_EMPTY();
        lfs_close(c);
}
END_TEST

START_TEST(test_max_clients)
{
        struct lfs_client *c1, *c2, *c3 = NULL;
        json_t *doc;
        uint64_t t0;

        cfg.max_clients = 2;
        rig_start(FAKE_MAINLINE);
        c1 = client("vm-1", 0);
        c2 = client("vm-2", LFS_HELLO_REGISTER);
        ck_assert_int_eq(lfs_connect(sock_path, "vm-3", 0, &c3), -EUSERS);
        ck_assert_ptr_null(c3);
        /* The others are served on. */
        ck_assert_int_eq(lfs_session_create(c1, "a"), 0);
        ck_assert_int_eq(lfs_session_create(c2, "b"), 0);
        LOG_IS("create(%s)=1 create(%s)=2", kname(me, "a"), kname(me, "b"));

        /* A place freed is a place taken. */
        lfs_close(c1);
        t0 = mono_ms();
        for (;;) {
                doc = doc_get(0);
                size_t n = json_array_size(jget(doc, "workloads"));
                json_decref(doc);
                if (n == 1)
                        break;
                ck_assert_uint_lt(mono_ms() - t0, 5000);
                usleep(10000);
        }
        c3 = client("vm-3", 0);
        ck_assert_int_eq(lfs_session_create(c3, "c"), 0);
        lfs_close(c2);
        lfs_close(c3);
}
END_TEST

/* A plain SOCK_SEQPACKET connection to the broker, no library. */
static int raw_connect(void)
{
        struct sockaddr_un sa;
        int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0), dir_fd;

        ck_assert_int_ge(fd, 0);
        /* A deep checkout's temporary directory is named through its descriptor. */
        ck_assert_int_eq(unix_sockaddr(sock_path, &sa, &dir_fd), 0);
        ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        if (dir_fd >= 0)
                close(dir_fd);
        return fd;
}

/* The broker hung up on fd (within 5 s). */
static void assert_hung_up(int fd)
{
        char buf[sizeof(struct lfs_msg)];
        struct pollfd p = { .fd = fd, .events = POLLIN };
        ssize_t n;

        for (;;) {
                ck_assert_int_eq(poll(&p, 1, 5000), 1);
                n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
                if (n == 0)
                        return;
                /* an answer first (a refusal) is fine; then the end */
                ck_assert_int_eq(n, (ssize_t)sizeof(struct lfs_msg));
        }
}

static struct lfs_msg raw_call(int fd, struct lfs_msg *q)
{
        struct lfs_msg a;
        int afd = -1, flags = 0;

        ck_assert_int_eq(lfs_send(fd, q, -1, false), 0);
        ck_assert_int_eq(lfs_recv(fd, &a, &afd, &flags, false), (long)sizeof(a));
        ck_assert_int_eq(afd, -1);
        ck_assert_int_eq(lfs_msg_decode(&a, sizeof(a), flags, 0, LFS_TO_CLIENT, &a), 0);
        ck_assert_uint_eq(a.seq, q->seq);
        ck_assert_uint_eq(a.type, q->type);
        return a;
}

START_TEST(test_malformed_datagrams)
{
        struct lfs_client *c, *d;
        struct lfs_msg q, a;
        int raw, m;

        rig_start(FAKE_MAINLINE);
        c = client("vm-1", 0);
        ck_assert_int_eq(lfs_session_create(c, "vm1"), 0);

        /* Bytes that are no message: the connection ends, nothing else does. */
        raw = raw_connect();
        ck_assert_int_eq(send(raw, "hello, broker", 13, MSG_NOSIGNAL), 13);
        assert_hung_up(raw);
        close(raw);

        /* The right size, a wrong magic, and a descriptor: dropped, the fd closed. */
        raw = raw_connect();
        lfs_msg_init(&q, LFS_HELLO, 1);
        fmt_buf(q.text, sizeof(q.text), "%s", "raw");
        ck_assert_int_eq(raw_call(raw, &q).result, 0);
        lfs_msg_init(&q, LFS_PRESERVE, 2);
        fmt_buf(q.session, sizeof(q.session), "%s", "vm1");
        q.token = 1;
        q.magic ^= 1;
        m = memfd_with(NULL, 4096);
        ck_assert_int_eq(lfs_send(raw, &q, m, false), 0);
        close(m);
        assert_hung_up(raw);
        close(raw);

        /* Well-formed, a name outside the alphabet: EINVAL, the connection stays. */
        raw = raw_connect();
        lfs_msg_init(&q, LFS_HELLO, 1);
        fmt_buf(q.text, sizeof(q.text), "%s", "raw");
        ck_assert_int_eq(raw_call(raw, &q).result, 0);
        lfs_msg_init(&q, LFS_SESSION_CREATE, 2);
        fmt_buf(q.session, sizeof(q.session), "%s", "no way");
        a = raw_call(raw, &q);
        ck_assert_int_eq(a.result, -EINVAL);
        lfs_msg_init(&q, LFS_SESSION_CREATE, 3);
        fmt_buf(q.session, sizeof(q.session), "%s", "raw1");
        ck_assert_int_eq(raw_call(raw, &q).result, 0);
        /* A second HELLO: EINVAL, the connection stays. */
        lfs_msg_init(&q, LFS_HELLO, 4);
        fmt_buf(q.text, sizeof(q.text), "%s", "raw");
        ck_assert_int_eq(raw_call(raw, &q).result, -EINVAL);
        close(raw);

        /* A request before HELLO: EPROTO, then the end. */
        raw = raw_connect();
        lfs_msg_init(&q, LFS_LIST, 1);
        a = raw_call(raw, &q);
        ck_assert_int_eq(a.result, -EPROTO);
        assert_hung_up(raw);
        close(raw);

        LOG_IS("create(%s)=1 create(%s)=2", kname(me, "vm1"), kname(me, "raw1"));
        /* The broker serves its clients, old and new. */
        ck_assert_int_eq(lfs_session_create(c, "vm2"), 0);
        d = client("vm-2", 0);
        ck_assert_int_eq(lfs_session_create(d, "vm3"), 0);
        LOG_IS("create(%s)=3 create(%s)=4", kname(me, "vm2"), kname(me, "vm3"));
        lfs_close(d);
        lfs_close(c);
}
END_TEST

/* ---- token mode (v3) ---------------------------------------------------------------------- */

START_TEST(test_token_allocation)
{
        struct lfs_client *c;
        char want[FAKE_LOG_MAX];
        size_t len = 0;
        json_t *doc, *t;
        ino_t ia1, ib1;
        int fd;

        rig_start(FAKE_V3);
        c = client("vm-1", 0);
        ck_assert_int_eq(lfs_session_create(c, "a"), 0);
        ck_assert_int_eq(lfs_session_create(c, "b"), 0);
        LOG_EMPTY(); /* sessions are the broker's own on v3 */
        ia1 = preserve_new(c, "a", 1, 4096, NULL);
        ib1 = preserve_new(c, "b", 1, 8192, NULL);
        LOG_IS("fd_preserve(0x1000) fd_preserve(0x1001)");
        ck_assert_uint_eq(fake_token_ino(0x1000), ia1);
        ck_assert_uint_eq(fake_token_ino(0x1001), ib1);

        /* A kernel token in use (by someone else): the next one. */
        fk->eexist_lo = fk->eexist_hi = 0x1002;
        preserve_new(c, "a", 2, 4096, NULL);
        LOG_IS("fd_preserve(0x1002)=EEXIST fd_preserve(0x1003)");

        /* Sixteen in use in a row: the broker gives up with EEXIST. */
        fk->eexist_lo = 0x1004;
        fk->eexist_hi = 0x1004 + 15;
        fd = memfd_with(NULL, 4096);
        ck_assert_int_eq(lfs_preserve(c, "a", fd, 3, NULL), -EEXIST);
        close(fd);
        want[0] = 0;
        for (unsigned i = 0; i < 16; i++)
                len += (size_t)snprintf(want + len, sizeof(want) - len,
                                        "%sfd_preserve(0x%x)=EEXIST", i ? " " : "", 0x1004 + i);
        LOG_IS("%s", want);
        preserve_new(c, "a", 3, 4096, NULL);
        LOG_IS("fd_preserve(0x1014)");
        sync_broker(c);

        doc = doc_get(0);
        ck_assert_str_eq(jstr(doc, "interface"), "tokens");
        t = jarr(doc_session(doc, "a"), "tokens", 3);
        jkeys(json_array_get(t, 0), "token kernel_token bytes retrieved");
        ck_assert_int_eq(jint(json_array_get(t, 0), "token"), 1);
        ck_assert_int_eq(jint(json_array_get(t, 0), "kernel_token"), 0x1000);
        ck_assert_int_eq(jint(json_array_get(t, 1), "token"), 2);
        ck_assert_int_eq(jint(json_array_get(t, 1), "kernel_token"), 0x1003);
        ck_assert_int_eq(jint(json_array_get(t, 2), "token"), 3);
        ck_assert_int_eq(jint(json_array_get(t, 2), "kernel_token"), 0x1014);
        t = jarr(doc_session(doc, "b"), "tokens", 1);
        ck_assert_int_eq(jint(json_array_get(t, 0), "token"), 1);
        ck_assert_int_eq(jint(json_array_get(t, 0), "kernel_token"), 0x1001);
        ck_assert_int_eq(jint(json_array_get(t, 0), "bytes"), 8192);
        json_decref(doc);
        ck_assert(!fk->saw_marker_token);
        lfs_close(c);
}
END_TEST

START_TEST(test_token_never_the_marker_token)
{
        struct lfs_client *c;
        char blob[256];

        /* A previous boot whose broker got as far as the marker's token. */
        fmt_buf(blob, sizeof(blob),
                "{\"version\":1,\"interface\":\"tokens\",\"note\":\"\",\"boot_id\":\"x\","
                "\"next_kernel_token\":%llu,\"sessions\":[]}",
                (unsigned long long)(BACKEND_MARKER_TOKEN - 1));
        ho.valid = true;
        ho.blob = strdup(blob);
        ck_assert_ptr_nonnull(ho.blob);
        ho.len = strlen(blob);
        rig_start(FAKE_V3);
        c = client("vm-1", 0);
        ck_assert_int_eq(lfs_session_create(c, "a"), 0);
        preserve_new(c, "a", 1, 4096, NULL);
        preserve_new(c, "a", 2, 4096, NULL);
        LOG_IS("fd_preserve(0x4c45ffffffffffff) fd_preserve(0x4c46000000000001)");
        ck_assert(!fk->saw_marker_token);
        lfs_close(c);
}
END_TEST

START_TEST(test_token_unpreserve_and_close)
{
        struct lfs_client *c;

        rig_start(FAKE_V3);
        c = client("vm-1", 0);
        ck_assert_int_eq(lfs_session_create(c, "a"), 0);
        preserve_new(c, "a", 1, 4096, NULL);
        preserve_new(c, "a", 2, 4096, NULL);
        preserve_new(c, "a", 3, 4096, NULL);
        LOG_IS("fd_preserve(0x1000) fd_preserve(0x1001) fd_preserve(0x1002)");
        ck_assert_int_eq(lfs_unpreserve(c, "a", 2), 0);
        LOG_IS("fd_unpreserve(0x1001)");
        ck_assert_uint_eq(fake_n_tokens(), 2);
        ck_assert(broker_holds(bk));
        ck_assert_int_eq(lfs_session_close(c, "a"), 0);
        LOG_IS("fd_unpreserve(0x1000) fd_unpreserve(0x1002)");
        ck_assert_uint_eq(fake_n_tokens(), 0);
        ck_assert(!broker_holds(bk));
        lfs_close(c);
}
END_TEST

START_TEST(test_token_reboot_and_retrieve)
{
        struct lfs_client *c;
        struct lfs_fd_info *fi = NULL;
        size_t n = 0;
        char msg[512], buf[8] = { 0 };
        json_t *doc, *s, *t;
        ino_t ino;
        int fd = -1;

        rig_start(FAKE_V3);
        c = client("vm-1", 0);
        ck_assert_int_eq(lfs_session_create(c, "vm1"), 0);
        ino = preserve_new(c, "vm1", 7, 4096, "hello");
        LOG_IS("fd_preserve(0x1000)");
        ck_assert_int_eq(prepare(0, "operation=op-1 index=1", msg, sizeof(msg)), 0);
        ck_assert_int_eq(reboot_with("operation=op-1 index=2", msg, sizeof(msg)), 0);
        LOG_IS("set_event(prepare) marker_write marker_write reboot");
        lfs_close(c);
        rig_stop();

        /* The next boot. */
        rig_start(FAKE_V3);
        doc = doc_get(0);
        s = doc_session(doc, "vm1");
        ck_assert_str_eq(jstr(s, "phase"), "incoming");
        t = jarr(s, "tokens", 1);
        ck_assert_int_eq(jint(json_array_get(t, 0), "kernel_token"), 0x1000);
        json_decref(doc);

        c = client("vm-1", 0);
        ck_assert_int_eq(lfs_host_state(c), LUO_STATE_UPDATED);
        ck_assert_int_eq(lfs_retrieve_fd(c, "vm1", 7, &fd), -EINVAL); /* not retrieved yet */
        ck_assert_int_eq(lfs_session_retrieve(c, "vm1"), 0);
        LOG_EMPTY(); /* a broker session on v3: nothing to ask the kernel */
        ck_assert_int_eq(lfs_session_retrieve(c, "vm1"), -EINVAL);
        ck_assert_int_eq(lfs_retrieve_fd(c, "vm1", 7, &fd), 0);
        LOG_IS("fd_restore(0x1000)");
        ck_assert_uint_eq(ino_of(fd), ino);
        ck_assert_int_eq(pread(fd, buf, 5, 0), 5);
        ck_assert_str_eq(buf, "hello");
        ck_assert_int_ne(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
        close(fd);
        ck_assert_int_eq(lfs_retrieve_fd(c, "vm1", 8, &fd), -ENOENT);
        LOG_EMPTY(); /* an unknown token is not asked for */
        ck_assert_int_eq(lfs_show(c, "vm1", &fi, &n), 0);
        ck_assert_uint_eq(n, 1);
        ck_assert_int_eq(fi[0].retrieved, 1);
        ck_assert_uint_eq(fi[0].bytes, 4096);
        free(fi);

        /* New files of this boot get kernel tokens past the previous boot's. */
        ck_assert_int_eq(lfs_session_create(c, "vm1b"), 0);
        preserve_new(c, "vm1b", 1, 4096, NULL);
        LOG_IS("fd_preserve(0x1001)");
        ck_assert_int_eq(lfs_session_close(c, "vm1b"), 0);
        LOG_IS("fd_unpreserve(0x1001)");

        ck_assert_int_eq(lfs_session_finish(c, "vm1"), 0);
        ck_assert_int_eq(lfs_session_finish(c, "vm1"), 0); /* a second FINISH: no-op */
        LOG_EMPTY();
        ck_assert_int_eq(finish(false, msg, sizeof(msg)), 0);
        LOG_IS("set_event(finish)");
        ck_assert_int_eq(fake_state(), LUO_STATE_NORMAL);
        doc = doc_get(0);
        jarr(doc, "sessions", 0);
        json_decref(doc);
        lfs_close(c);
}
END_TEST

/* ---- the prepare round -------------------------------------------------------------------- */

START_TEST(test_prepare_without_workloads)
{
        struct lfs_client *c;
        char msg[512] = "x";
        json_t *doc, *lr;

        rig_start(FAKE_MAINLINE);
        c = client("vm-1", 0); /* not registered: not asked */
        ck_assert_int_eq(prepare(200, "operation=op-1 index=1", msg, sizeof(msg)), 0);
        ck_assert_str_eq(msg, "");
        LOG_IS("set_event(prepare) marker_write");
        ck_assert_int_eq(fake_state(), LUO_STATE_PREPARED);
        doc = doc_get(0);
        lr = jget(doc, "last_round");
        jkeys(lr, "event_id result asked pending vetoed gone");
        ck_assert_int_gt(jint(lr, "event_id"), 0);
        ck_assert_str_eq(jstr(lr, "result"), "confirmed");
        ck_assert_int_eq(jint(lr, "asked"), 0);
        jarr(lr, "pending", 0);
        jarr(lr, "vetoed", 0);
        jarr(lr, "gone", 0);
        json_decref(doc);
        /* Nothing was sent to the unregistered workload. */
        {
                struct lfs_event ev;
                ck_assert_int_eq(lfs_next_event(c, &ev, 0), -ETIMEDOUT);
        }
        lfs_close(c);
}
END_TEST

START_TEST(test_prepare_confirmed)
{
        struct lfs_client *c;
        struct responder r;
        struct lfs_event ev;
        char msg[512];
        json_t *doc, *lr;

        rig_start(FAKE_MAINLINE);
        c = client("vm-1", LFS_HELLO_REGISTER);
        responder_start(&r, c, RESPOND_CONFIRM);
        ck_assert_int_eq(prepare(5000, NULL, msg, sizeof(msg)), 0);
        responder_join(&r);
        ck_assert_int_eq(r.answer_r, 0);
        ck_assert_uint_eq(r.ev.deadline_ms, 5000);
        LOG_IS("set_event(prepare) marker_write");
        doc = doc_get(0);
        lr = jget(doc, "last_round");
        jkeys(lr, "event_id result asked pending vetoed gone");
        ck_assert_int_eq(jint(lr, "event_id"), (long long)r.ev.id);
        ck_assert_str_eq(jstr(lr, "result"), "confirmed");
        ck_assert_int_eq(jint(lr, "asked"), 1);
        jarr(lr, "pending", 0);
        jarr(lr, "vetoed", 0);
        jarr(lr, "gone", 0);
        json_decref(doc);
        /* Confirming again: that prepare is over. */
        ck_assert_int_eq(lfs_confirm(c, r.ev.id), -ESTALE);

        /* CANCEL reaches the kernel, then the workloads. */
        ck_assert_int_eq(bk->ops->set_event_ex(bk, LUO_EVENT_CANCEL, NULL, msg, sizeof(msg)), 0);
        LOG_IS("set_event(cancel)");
        ev = next_event(c, LFS_EVENT_CANCEL);
        ck_assert_str_eq(ev.note, "cancelled");
        ck_assert_int_eq(lfs_next_event(c, &ev, 0), -ETIMEDOUT);
        lfs_close(c);
}
END_TEST

START_TEST(test_prepare_timeout)
{
        struct lfs_client *c, *other;
        struct lfs_event ev, prep;
        char msg[512], want[512], names[256];
        json_t *doc, *lr, *p;
        uint64_t t0, ms;

        rig_start(FAKE_MAINLINE);
        c = client("vm-1", LFS_HELLO_REGISTER);
        other = client("vm-2", 0);
        sync_broker(c);
        sync_broker(other);
        t0 = mono_ms();
        ck_assert_int_eq(prepare(200, NULL, msg, sizeof(msg)), -ETIMEDOUT);
        ms = mono_ms() - t0;
        ck_assert_uint_ge(ms, 200);
        ck_assert_uint_lt(ms, 5000);
        fmt_buf(want, sizeof(want), "vm-1 (uid %u, pid %d)", (unsigned)me, (int)my_pid);
        ck_assert_msg(strstr(msg, want) != NULL, "\"%s\" does not name %s", msg, want);
        ck_assert_msg(strstr(msg, "did not confirm") != NULL, "%s", msg);
        /* The kernel was not touched. */
        LOG_EMPTY();
        ck_assert_int_eq(fake_state(), LUO_STATE_NORMAL);

        /* The workload heard PREPARE, then CANCEL. */
        prep = next_event(c, LFS_EVENT_PREPARE);
        ck_assert_uint_eq(prep.deadline_ms, 200);
        ev = next_event(c, LFS_EVENT_CANCEL);
        ck_assert_str_eq(ev.note, "the prepare failed");
        ck_assert_int_eq(lfs_next_event(other, &ev, 0), -ETIMEDOUT);
        /* A late confirm. */
        ck_assert_int_eq(lfs_confirm(c, prep.id), -ESTALE);
        ck_assert_str_eq(lfs_last_message(c), "no prepare of that id is waiting for this workload");

        doc = doc_get(0);
        lr = jget(doc, "last_round");
        jkeys(lr, "event_id result asked pending vetoed gone");
        ck_assert_int_eq(jint(lr, "event_id"), (long long)prep.id);
        ck_assert_str_eq(jstr(lr, "result"), "timeout");
        ck_assert_int_eq(jint(lr, "asked"), 1);
        p = json_array_get(jarr(lr, "pending", 1), 0);
        jkeys(p, "name uid pid reason");
        ck_assert_str_eq(jstr(p, "name"), "vm-1");
        ck_assert_int_eq(jint(p, "uid"), me);
        ck_assert_int_eq(jint(p, "pid"), my_pid);
        ck_assert_str_eq(jstr(p, "reason"), "");
        jarr(lr, "vetoed", 0);
        jarr(lr, "gone", 0);
        event_names(doc, names, sizeof(names));
        ck_assert_str_eq(names, "connected connected prepare-refused");
        p = json_array_get(jget(doc, "events"), 2);
        ck_assert_str_eq(jstr(p, "errno"), "ETIMEDOUT");
        ck_assert_str_eq(jstr(p, "detail"), msg);
        json_decref(doc);

        /* The next round can succeed: a new id, confirmed in time. */
        {
                struct responder r;
                responder_start(&r, c, RESPOND_CONFIRM);
                ck_assert_int_eq(prepare(5000, NULL, msg, sizeof(msg)), 0);
                responder_join(&r);
                ck_assert_int_eq(r.answer_r, 0);
                ck_assert_uint_gt(r.ev.id, prep.id);
                LOG_IS("set_event(prepare) marker_write");
        }
        lfs_close(other);
        lfs_close(c);
}
END_TEST

/*
 * Was a bug: broker.c prepare_round() wrote
 * "vetoed by vm-1 (uid U, pid P)" into msg on a veto: the workload's reason
 * is only in last_round.vetoed[].reason. The design (session-broker.md,
 * "prepare") wants it in the sentence the operator reads:
 * "workload vm-1 (uid 1000, pid 42) vetoed: <reason>" (docs/api.md's
 * workload-veto example shows today's text and would change with it).
 */
START_TEST(test_prepare_vetoed)
{
        struct lfs_client *c;
        struct responder r;
        struct lfs_event ev;
        char msg[512], want[512];
        json_t *doc, *lr, *v;

        rig_start(FAKE_MAINLINE);
        c = client("vm-1", LFS_HELLO_REGISTER);
        responder_start(&r, c, RESPOND_VETO);
        ck_assert_int_eq(prepare(5000, NULL, msg, sizeof(msg)), -ECANCELED);
        responder_join(&r);
        ck_assert_int_eq(r.answer_r, 0);
        fmt_buf(want, sizeof(want), "vm-1 (uid %u, pid %d)", (unsigned)me, (int)my_pid);
        ck_assert_msg(strstr(msg, want) != NULL, "\"%s\" does not name %s", msg, want);
        ck_assert_msg(strstr(msg, "disk busy") != NULL, "\"%s\" lacks the reason", msg);
        LOG_EMPTY();
        ck_assert_int_eq(fake_state(), LUO_STATE_NORMAL);
        ev = next_event(c, LFS_EVENT_CANCEL);
        ck_assert_str_eq(ev.note, "the prepare failed");

        doc = doc_get(0);
        lr = jget(doc, "last_round");
        jkeys(lr, "event_id result asked pending vetoed gone");
        ck_assert_int_eq(jint(lr, "event_id"), (long long)r.ev.id);
        ck_assert_str_eq(jstr(lr, "result"), "vetoed");
        ck_assert_int_eq(jint(lr, "asked"), 1);
        jarr(lr, "pending", 0);
        jarr(lr, "gone", 0);
        v = json_array_get(jarr(lr, "vetoed", 1), 0);
        jkeys(v, "name uid pid reason");
        ck_assert_str_eq(jstr(v, "name"), "vm-1");
        ck_assert_int_eq(jint(v, "uid"), me);
        ck_assert_int_eq(jint(v, "pid"), my_pid);
        ck_assert_str_eq(jstr(v, "reason"), "disk busy");
        json_decref(doc);
        lfs_close(c);
}
END_TEST

START_TEST(test_prepare_workload_disconnects)
{
        struct lfs_client *c;
        struct responder r;
        char msg[512], want[512];
        json_t *doc, *lr, *g;
        uint64_t t0, ms;

        rig_start(FAKE_MAINLINE);
        c = client("vm-1", LFS_HELLO_REGISTER);
        responder_start(&r, c, RESPOND_HANGUP);
        t0 = mono_ms();
        ck_assert_int_eq(prepare(20000, NULL, msg, sizeof(msg)), -ETIMEDOUT);
        ms = mono_ms() - t0;
        responder_join(&r);
        ck_assert_ptr_null(r.c); /* closed by the responder */
        /* At once, not after 20 s. */
        ck_assert_uint_lt(ms, 5000);
        fmt_buf(want, sizeof(want),
                "workloads went away before confirming: vm-1 (uid %u, pid %d, disconnected)",
                (unsigned)me, (int)my_pid);
        ck_assert_str_eq(msg, want);
        LOG_EMPTY();
        doc = doc_get(0);
        lr = jget(doc, "last_round");
        jkeys(lr, "event_id result asked pending vetoed gone");
        ck_assert_str_eq(jstr(lr, "result"), "timeout");
        ck_assert_int_eq(jint(lr, "asked"), 1);
        jarr(lr, "pending", 0);
        jarr(lr, "vetoed", 0);
        g = json_array_get(jarr(lr, "gone", 1), 0);
        jkeys(g, "name uid pid reason");
        ck_assert_str_eq(jstr(g, "name"), "vm-1");
        ck_assert_int_eq(jint(g, "pid"), my_pid);
        ck_assert_str_eq(jstr(g, "reason"), "disconnected");
        json_decref(doc);
}
END_TEST

/* ---- the marker --------------------------------------------------------------------------- */

START_TEST(test_marker_at_prepare_and_reboot)
{
        struct lfs_client *c, *reg;
        struct lfs_event ev;
        char msg[512];
        json_t *m, *s, *t;

        rig_start(FAKE_MAINLINE);
        c = client("vm-1", 0);
        ck_assert_int_eq(lfs_session_create(c, "vm1"), 0);
        ck_assert_int_eq(lfs_session_create(c, "empty"), 0);
        preserve_new(c, "vm1", 7, 4096, NULL);
        LOG_IS("create(%s)=1 create(%s)=2 preserve(1,7)", kname(me, "vm1"), kname(me, "empty"));
        ck_assert_int_eq(prepare(0, "operation=op-1 index=3", msg, sizeof(msg)), 0);
        LOG_IS("set_event(prepare) marker_write");

        m = marker_get();
        jkeys(m, "version interface note boot_id next_kernel_token sessions");
        ck_assert_int_eq(jint(m, "version"), 1);
        ck_assert_str_eq(jstr(m, "interface"), "sessions");
        ck_assert_str_eq(jstr(m, "note"), "operation=op-1 index=3");
        ck_assert_str_eq(jstr(m, "boot_id"), FAKE_BOOT_ID);
        /* Only the outgoing sessions with files. */
        s = json_array_get(jarr(m, "sessions", 1), 0);
        jkeys(s, "name kernel_name owner_uid workload phase fds bytes tokens");
        ck_assert_str_eq(jstr(s, "name"), "vm1");
        ck_assert_str_eq(jstr(s, "kernel_name"), kname(me, "vm1"));
        ck_assert_int_eq(jint(s, "owner_uid"), me);
        ck_assert_str_eq(jstr(s, "workload"), "vm-1");
        ck_assert_str_eq(jstr(s, "phase"), "outgoing");
        ck_assert_int_eq(jint(s, "fds"), 1);
        ck_assert_int_eq(jint(s, "bytes"), 4096);
        t = json_array_get(jarr(s, "tokens", 1), 0);
        jkeys(t, "token kernel_token bytes retrieved");
        ck_assert_int_eq(jint(t, "token"), 7);
        ck_assert_int_eq(jint(t, "kernel_token"), 7);
        ck_assert_int_eq(jint(t, "bytes"), 4096);
        ck_assert(json_is_false(jget(t, "retrieved")));
        json_decref(m);

        /* While prepared, more is preserved: the reboot's document has it, and its note. */
        preserve_new(c, "empty", 1, 8192, NULL);
        LOG_IS("preserve(2,1)");
        reg = client("vm-2", LFS_HELLO_REGISTER);
        ck_assert_int_eq(reboot_with("operation=op-1 index=4", msg, sizeof(msg)), 0);
        ck_assert_str_eq(msg, "");
        LOG_IS("marker_write reboot");
        m = marker_get();
        ck_assert_str_eq(jstr(m, "note"), "operation=op-1 index=4");
        jarr(m, "sessions", 2);
        ck_assert_int_eq(jint(doc_session(m, "empty"), "bytes"), 8192);
        json_decref(m);
        ev = next_event(reg, LFS_EVENT_REBOOT);
        ck_assert_str_eq(ev.note, "operation=op-1 index=4");
        ck_assert_int_eq(lfs_next_event(c, &ev, 0), -ETIMEDOUT); /* not registered */
        lfs_close(reg);
        lfs_close(c);
}
END_TEST

START_TEST(test_marker_write_failure)
{
        struct lfs_client *c, *reg;
        struct responder r;
        struct lfs_event ev;
        char msg[512];

        rig_start(FAKE_MAINLINE);
        c = client("vm-1", 0);
        reg = client("vm-2", LFS_HELLO_REGISTER);
        ck_assert_int_eq(lfs_session_create(c, "vm1"), 0);
        preserve_new(c, "vm1", 1, 4096, NULL);
        LOG_IS("create(%s)=1 preserve(1,1)", kname(me, "vm1"));

        /* At PREPARE: the kernel's prepare is undone, the workloads hear CANCEL. */
        fk->fail_marker_write = ENOSPC;
        responder_start(&r, reg, RESPOND_CONFIRM);
        ck_assert_int_eq(prepare(5000, NULL, msg, sizeof(msg)), -ENOSPC);
        responder_join(&r);
        ck_assert_int_eq(r.answer_r, 0);
        LOG_IS("set_event(prepare) marker_write=ENOSPC set_event(cancel)");
        ck_assert_int_eq(fake_state(), LUO_STATE_NORMAL);
        ck_assert_str_eq(msg, "the sessions' document could not be written into the marker "
                              "(ENOSPC): the prepare was cancelled");
        ev = next_event(reg, LFS_EVENT_CANCEL);
        ck_assert_str_eq(ev.note, "the prepare failed");

        /* The kernel refuses PREPARE itself: no marker, CANCEL all the same. */
        fk->fail_event[LUO_EVENT_PREPARE] = EIO;
        responder_start(&r, reg, RESPOND_CONFIRM);
        ck_assert_int_eq(prepare(5000, NULL, msg, sizeof(msg)), -EIO);
        responder_join(&r);
        LOG_IS("set_event(prepare)=EIO");
        ev = next_event(reg, LFS_EVENT_CANCEL);

        /* At the reboot: no reboot. */
        responder_start(&r, reg, RESPOND_CONFIRM);
        ck_assert_int_eq(prepare(5000, NULL, msg, sizeof(msg)), 0);
        responder_join(&r);
        LOG_IS("set_event(prepare) marker_write");
        fk->fail_marker_write = ENOSPC;
        ck_assert_int_eq(reboot_with("operation=op-2 index=1", msg, sizeof(msg)), -ENOSPC);
        ck_assert_str_eq(msg, "the sessions' document could not be written into the marker "
                              "(ENOSPC): no reboot");
        LOG_IS("marker_write=ENOSPC");
        ck_assert_int_eq(fake_state(), LUO_STATE_PREPARED);
        ck_assert_int_eq(lfs_next_event(reg, &ev, 0), -ETIMEDOUT); /* no REBOOT */
        ck_assert(!ho.valid);
        lfs_close(reg);
        lfs_close(c);
}
END_TEST

/* ---- the updated boot --------------------------------------------------------------------- */

/*
 * Boot 1: vm-1 preserves "vm1" (token 7, 4096 bytes starting "hello"; its
 * inode in *ret_ino) and "vm2" (token 1, 8192 bytes); the host prepares
 * and reboots with note "operation=op-7 index=9". Then boot 2's broker.
 */
static void boot_two_sessions(enum fake_kind kind, ino_t *ret_ino)
{
        struct lfs_client *c;
        char msg[512];

        rig_start(kind);
        c = client("vm-1", 0);
        ck_assert_int_eq(lfs_session_create(c, "vm1"), 0);
        ck_assert_int_eq(lfs_session_create(c, "vm2"), 0);
        *ret_ino = preserve_new(c, "vm1", 7, 4096, "hello");
        preserve_new(c, "vm2", 1, 8192, NULL);
        ck_assert_int_eq(prepare(0, "operation=op-7 index=8", msg, sizeof(msg)), 0);
        ck_assert_int_eq(reboot_with("operation=op-7 index=9", msg, sizeof(msg)), 0);
        lfs_close(c);
        rig_stop();
        ck_assert(ho.valid);
        rig_start(kind);
}

START_TEST(test_updated_boot)
{
        struct lfs_client *c;
        struct lfs_session_info *si = NULL;
        struct lfs_fd_info *fi = NULL;
        struct lfs_event ev;
        char msg[512], want[512], names[512], buf[8] = { 0 };
        size_t n = 0;
        json_t *doc, *s, *e;
        ino_t ino;
        int fd = -1;

        boot_two_sessions(FAKE_MAINLINE, &ino);
        LOG_EMPTY();
        ck_assert(broker_holds(bk));

        doc = doc_get(0);
        s = doc_session(doc, "vm1");
        ck_assert_str_eq(jstr(s, "phase"), "incoming");
        ck_assert_str_eq(jstr(s, "kernel_name"), kname(me, "vm1"));
        ck_assert_int_eq(jint(s, "owner_uid"), me);
        ck_assert_str_eq(jstr(s, "workload"), "vm-1");
        ck_assert_int_eq(jint(s, "fds"), 1);
        ck_assert_int_eq(jint(s, "bytes"), 4096);
        ck_assert_str_eq(jstr(doc_session(doc, "vm2"), "phase"), "incoming");
        s = jget(doc, "summary");
        ck_assert_int_eq(jint(s, "sessions"), 2);
        ck_assert_int_eq(jint(s, "incoming"), 2);
        ck_assert_int_eq(jint(s, "outgoing"), 0);
        ck_assert_int_eq(jint(s, "bytes"), 12288);
        s = jget(doc, "previous_boot");
        jkeys(s, "note boot_id");
        ck_assert_str_eq(jstr(s, "note"), "operation=op-7 index=9");
        ck_assert_str_eq(jstr(s, "boot_id"), FAKE_BOOT_ID);
        event_names(doc, names, sizeof(names));
        ck_assert_str_eq(names, "incoming incoming");
        json_decref(doc);

        /* HELLO says updated; a registered workload hears UPDATED with the note. */
        c = client("vm-1", LFS_HELLO_REGISTER);
        ck_assert_int_eq(lfs_host_state(c), LUO_STATE_UPDATED);
        ev = next_event(c, LFS_EVENT_UPDATED);
        ck_assert_str_eq(ev.note, "operation=op-7 index=9");
        ck_assert_int_eq(lfs_list(c, &si, &n), 0);
        ck_assert_uint_eq(n, 2);
        ck_assert_str_eq(si[0].name, "vm1");
        ck_assert_int_eq(si[0].phase, LFS_PHASE_INCOMING);
        ck_assert_uint_eq(si[0].fds, 1);
        ck_assert_uint_eq(si[0].bytes, 4096);
        ck_assert_int_eq(si[1].phase, LFS_PHASE_INCOMING);
        free(si);
        /* An incoming session is no place for new files, nor closed. */
        fd = memfd_with(NULL, 16);
        ck_assert_int_eq(lfs_preserve(c, "vm1", fd, 9, NULL), -EINVAL);
        close(fd);
        ck_assert_int_eq(lfs_session_close(c, "vm1"), -EINVAL);
        LOG_EMPTY();

        ck_assert_int_eq(lfs_session_retrieve(c, "vm1"), 0);
        LOG_IS("retrieve(%s)=1", kname(me, "vm1"));
        ck_assert(broker_holds(bk));
        /* Twice: EINVAL, the kernel not asked again. */
        ck_assert_int_eq(lfs_session_retrieve(c, "vm1"), -EINVAL);
        LOG_EMPTY();
        ck_assert_int_eq(lfs_retrieve_fd(c, "vm1", 7, &fd), 0);
        LOG_IS("retrieve_fd(1,7)");
        ck_assert_uint_eq(ino_of(fd), ino);
        ck_assert_int_eq(pread(fd, buf, 5, 0), 5);
        ck_assert_str_eq(buf, "hello");
        close(fd);
        ck_assert_int_eq(lfs_show(c, "vm1", &fi, &n), 0);
        ck_assert_uint_eq(n, 1);
        ck_assert_uint_eq(fi[0].token, 7);
        ck_assert_int_eq(fi[0].retrieved, 1);
        free(fi);
        /* The kernel's RETRIEVE_FD errno passes through. */
        ck_assert_int_eq(lfs_retrieve_fd(c, "vm1", 8, &fd), -ENOENT);
        LOG_IS("retrieve_fd(1,8)=ENOENT");
        ck_assert_int_eq(lfs_session_finish(c, "vm1"), 0);
        LOG_IS("finish(1) release(1)");
        ck_assert_int_eq(lfs_session_finish(c, "vm1"), 0);
        LOG_EMPTY();
        ck_assert(broker_holds(bk)); /* vm2 */
        /* A finished session keeps its name until the update is finished (sessions.md). */
        ck_assert_int_eq(lfs_session_create(c, "vm1"), -EEXIST);
        ck_assert_str_eq(lfs_last_message(c), "session vm1 exists (finished)");
        LOG_EMPTY();
        sync_broker(c);

        /* FINISH: vm2 is unfinished. */
        doc = doc_get(0);
        uint64_t since = (uint64_t)jint(doc, "next_seq") - 1;
        json_decref(doc);
        ck_assert_int_eq(finish(false, msg, sizeof(msg)), -EBUSY);
        fmt_buf(want, sizeof(want),
                "1 workload session is not finished: vm2 (uid %u, incoming) (finish them, or "
                "finish with force: their data is freed)",
                (unsigned)me);
        ck_assert_str_eq(msg, want);
        LOG_EMPTY();
        ck_assert_int_eq(fake_state(), LUO_STATE_UPDATED);
        ck_assert_int_eq(lfs_next_event(c, &ev, 0), -ETIMEDOUT);

        /* Forced: the broker retrieves and finishes vm2, then the kernel's FINISH. */
        ck_assert_int_eq(finish(true, msg, sizeof(msg)), 0);
        LOG_IS("retrieve(%s)=2 finish(2) release(2) set_event(finish)", kname(me, "vm2"));
        ck_assert_int_eq(fake_state(), LUO_STATE_NORMAL);
        ev = next_event(c, LFS_EVENT_FINISH);
        ck_assert_str_eq(ev.note, "the update is finished");
        doc = doc_get(since);
        e = json_array_get(jarr(doc, "events", 3), 0);
        ck_assert_str_eq(jstr(e, "event"), "force-finished");
        ck_assert_str_eq(jstr(e, "session"), "vm2");
        ck_assert_int_eq(jint(e, "owner_uid"), me);
        ck_assert_int_eq(jint(e, "bytes"), 8192);
        ck_assert_ptr_null(json_object_get(e, "errno"));
        /* Then both sessions leave the list with the update: one "released" each. */
        for (size_t i = 1; i < 3; i++)
                ck_assert_str_eq(jstr(json_array_get(jget(doc, "events"), i), "event"), "released");
        jarr(doc, "sessions", 0);
        ck_assert_int_eq(jint(jget(doc, "summary"), "sessions"), 0);
        json_decref(doc);
        ck_assert(!broker_holds(bk));
        ck_assert_int_eq(lfs_list(c, &si, &n), 0);
        ck_assert_uint_eq(n, 0);
        free(si);
        /* The name is free for the next update. */
        ck_assert_int_eq(lfs_session_create(c, "vm1"), 0);
        LOG_IS("create(%s)=3", kname(me, "vm1"));
        lfs_close(c);
}
END_TEST

START_TEST(test_updated_finish_all_finished)
{
        struct lfs_client *c;
        char msg[512];
        ino_t ino;

        boot_two_sessions(FAKE_MAINLINE, &ino);
        c = client("vm-1", 0);
        /* Finishing without retrieving: the broker retrieves to finish. */
        ck_assert_int_eq(lfs_session_finish(c, "vm1"), 0);
        LOG_IS("retrieve(%s)=1 finish(1) release(1)", kname(me, "vm1"));
        ck_assert_int_eq(lfs_session_retrieve(c, "vm2"), 0);
        ck_assert_int_eq(lfs_session_finish(c, "vm2"), 0);
        LOG_IS("retrieve(%s)=2 finish(2) release(2)", kname(me, "vm2"));
        ck_assert(!broker_holds(bk));
        ck_assert_int_eq(finish(false, msg, sizeof(msg)), 0);
        LOG_IS("set_event(finish)");
        lfs_close(c);
}
END_TEST

struct intruder {
        int setuid_r, connect_r, retrieve_r, finish_r, close_r, list_r, create_r;
        size_t n_listed;
};

/* In a child as uid/gid 65534: what another owner can do to our sessions. */
static void run_intruder(struct intruder *ret)
{
        char path[128];
        int p[2], dir, status = -1;
        pid_t pid;

        dir = open(tmpdir, O_PATH | O_DIRECTORY | O_CLOEXEC);
        ck_assert_int_ge(dir, 0);
        /* Through the directory's fd: the build tree's parents need not be open to nobody. */
        fmt_buf(path, sizeof(path), "/proc/self/fd/%d/sessions.sock", dir);
        ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                struct intruder r = { .setuid_r = -1 };
                struct lfs_client *c = NULL;
                struct lfs_session_info *si = NULL;

                if (setgroups(0, NULL) == 0 && setgid(NOBODY) == 0 && setuid(NOBODY) == 0)
                        r.setuid_r = 0;
                if (r.setuid_r == 0)
                        r.connect_r = lfs_connect(path, "intruder", 0, &c);
                if (c) {
                        r.retrieve_r = lfs_session_retrieve(c, "vm1");
                        r.finish_r = lfs_session_finish(c, "vm2");
                        r.close_r = lfs_session_close(c, "vm2");
                        r.list_r = lfs_list(c, &si, &r.n_listed);
                        free(si);
                        r.create_r = lfs_session_create(c, "vm1");
                        lfs_close(c);
                }
                (void)!write(p[1], &r, sizeof(r));
                /*
                 * Leave without this process's exit handlers (check's, the
                 * sanitizers', valgrind's fd and leak report of a copy of the
                 * parent).
                 */
                execl("/bin/true", "true", (char *)NULL);
                _exit(0);
        }
        close(p[1]);
        ck_assert_int_eq(read(p[0], ret, sizeof(*ret)), (ssize_t)sizeof(*ret));
        close(p[0]);
        close(dir);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert(WIFEXITED(status));
}

START_TEST(test_updated_other_uid)
{
        struct lfs_client *c;
        struct intruder r;
        json_t *doc;
        ino_t ino;

        if (geteuid() != 0) {
                fprintf(stderr, "test_updated_other_uid: SKIPPED: connecting as another uid "
                                "(65534) needs root\n");
                return;
        }
        cfg.socket_mode = 0666;
        ck_assert_int_eq(chmod(tmpdir, 0711), 0);
        boot_two_sessions(FAKE_MAINLINE, &ino);
        LOG_EMPTY();
        run_intruder(&r);
        ck_assert_int_eq(r.setuid_r, 0);
        ck_assert_int_eq(r.connect_r, 0);
        /* Another owner's name: as if there were none (the kernel says so for its own name). */
        ck_assert_int_eq(r.retrieve_r, -ENOENT);
        ck_assert_int_eq(r.finish_r, -ENOENT);
        ck_assert_int_eq(r.close_r, -ENOENT);
        ck_assert_int_eq(r.list_r, 0);
        ck_assert_uint_eq(r.n_listed, 0);
        /* The same name is another kernel session for another owner. */
        ck_assert_int_eq(r.create_r, 0);
        LOG_IS("retrieve(%s)=ENOENT create(%s)=1", kname(NOBODY, "vm1"), kname(NOBODY, "vm1"));

        doc = doc_get(0);
        ck_assert_str_eq(jstr(doc_session(doc, "vm1"), "phase"), "incoming");
        json_decref(doc);
        /* The owner still can. */
        c = client("vm-1", 0);
        ck_assert_int_eq(lfs_session_retrieve(c, "vm1"), 0);
        LOG_IS("retrieve(%s)=2", kname(me, "vm1"));
        lfs_close(c);
}
END_TEST

/* ---- events, watch, holds ----------------------------------------------------------------- */

START_TEST(test_events_since_and_dropped)
{
        struct lfs_client *c;
        json_t *doc, *ev, *e;
        size_t i;

        rig_start(FAKE_MAINLINE);
        c = client("vm-1", 0);
        ck_assert_int_eq(lfs_session_create(c, "vm1"), 0);
        sync_broker(c);

        doc = doc_get(0);
        ev = jarr(doc, "events", 2);
        ck_assert_int_eq(jint(json_array_get(ev, 0), "seq"), 1);
        ck_assert_str_eq(jstr(json_array_get(ev, 0), "event"), "connected");
        ck_assert_int_eq(jint(json_array_get(ev, 1), "seq"), 2);
        ck_assert_str_eq(jstr(json_array_get(ev, 1), "event"), "created");
        ck_assert_int_eq(jint(doc, "next_seq"), 3);
        ck_assert_int_eq(jint(doc, "events_dropped"), 0);
        json_decref(doc);
        /* The agent drained up to 2. */
        doc = doc_get(2);
        jarr(doc, "events", 0);
        json_decref(doc);
        doc = doc_get(1);
        ev = jarr(doc, "events", 1);
        ck_assert_int_eq(jint(json_array_get(ev, 0), "seq"), 2);
        json_decref(doc);

        /* 1100 more (refusals): seq 3..1102; 3..78 are overwritten undrained. */
        for (int k = 0; k < 1100; k++)
                ck_assert_int_eq(lfs_session_create(c, "vm1"), -EEXIST);
        sync_broker(c);
        doc = doc_get(0);
        ck_assert_int_eq(jint(doc, "next_seq"), 1103);
        ck_assert_int_eq(jint(doc, "events_dropped"), 76);
        ev = jarr(doc, "events", BROKER_EVENTS_MAX);
        json_array_foreach (ev, i, e) {
                ck_assert_int_eq(jint(e, "seq"), 79 + (long long)i);
                ck_assert_str_eq(jstr(e, "event"), "refused");
        }
        e = json_array_get(ev, 0);
        jkeys(e, "seq time event session owner_uid workload pid errno detail");
        ck_assert_str_eq(jstr(e, "session"), "vm1");
        ck_assert_str_eq(jstr(e, "errno"), "EEXIST");
        ck_assert_str_eq(jstr(e, "detail"), "session vm1 exists (outgoing)");
        ck_assert_uint_eq(strlen(jstr(e, "time")), 24);
        json_decref(doc);

        doc = doc_get(1100);
        ev = jarr(doc, "events", 2);
        ck_assert_int_eq(jint(json_array_get(ev, 0), "seq"), 1101);
        ck_assert_int_eq(jint(json_array_get(ev, 1), "seq"), 1102);
        ck_assert_int_eq(jint(doc, "events_dropped"), 76);
        json_decref(doc);

        /* Drained to 1100: 30 more overwrite 79..108, all drained: nothing more dropped. */
        for (int k = 0; k < 30; k++)
                ck_assert_int_eq(lfs_session_create(c, "vm1"), -EEXIST);
        sync_broker(c);
        doc = doc_get(1100);
        ck_assert_int_eq(jint(doc, "events_dropped"), 76);
        ev = jarr(doc, "events", 32);
        ck_assert_int_eq(jint(json_array_get(ev, 31), "seq"), 1132);
        json_decref(doc);
        lfs_close(c);
}
END_TEST

START_TEST(test_watch)
{
        struct lfs_client *c;
        enum luo_state st = LUO_STATE_UNDEFINED;
        uint64_t one = 1;
        int wfd;

        rig_start(FAKE_MAINLINE);
        wfd = bk->ops->watch_fd(bk);
        ck_assert_int_ge(wfd, 0);
        ck_assert_int_ne(wfd, fk->efd);
        ck_assert_int_eq(bk->ops->watch_events(bk), POLLIN);
        ck_assert(!readable(wfd, 0));

        /* A workload connects: a change. */
        c = client("vm-1", 0);
        sync_broker(c);
        ck_assert(readable(wfd, 2000));
        ck_assert_int_eq(bk->ops->watch_read(bk, &st), 0);
        ck_assert_int_eq(st, LUO_STATE_NORMAL);
        ck_assert_uint_eq(fk->watch_reads, 0);
        ck_assert(!readable(wfd, 0));

        /* A session is created: a change, heard without another request. */
        ck_assert_int_eq(lfs_session_create(c, "vm1"), 0);
        ck_assert(readable(wfd, 2000));
        ck_assert_int_eq(bk->ops->watch_read(bk, &st), 0);
        ck_assert_int_eq(st, LUO_STATE_NORMAL);
        ck_assert(!readable(wfd, 0));

        /* The kernel's own notification: the fake's watch_read reads its state. */
        pthread_mutex_lock(&fk->lock);
        fk->state = LUO_STATE_PREPARED;
        pthread_mutex_unlock(&fk->lock);
        ck_assert_int_eq(write(fk->efd, &one, sizeof(one)), (ssize_t)sizeof(one));
        ck_assert(readable(wfd, 2000));
        ck_assert_int_eq(bk->ops->watch_read(bk, &st), 0);
        ck_assert_int_eq(st, LUO_STATE_PREPARED);
        ck_assert_uint_eq(fk->watch_reads, 1);
        ck_assert(!readable(wfd, 0));

        /* The agent's own set_event_ex is a change too (PREPARE with nobody registered). */
        pthread_mutex_lock(&fk->lock);
        fk->state = LUO_STATE_NORMAL;
        pthread_mutex_unlock(&fk->lock);
        {
                char msg[256];
                ck_assert_int_eq(prepare(0, NULL, msg, sizeof(msg)), 0);
        }
        ck_assert(readable(wfd, 0));
        ck_assert_int_eq(bk->ops->watch_read(bk, &st), 0);
        ck_assert_int_eq(st, LUO_STATE_PREPARED);
        lfs_close(c);
}
END_TEST

START_TEST(test_holds)
{
        struct lfs_client *c;

        ck_assert(!broker_holds(NULL));
        ck_assert(!broker_is(NULL));
        rig_start(FAKE_MAINLINE);
        ck_assert(!broker_holds(bk));
        ck_assert(!broker_is(&fk->base));
        ck_assert(!broker_holds(&fk->base));
        c = client("vm-1", 0);
        ck_assert_int_eq(lfs_session_create(c, "vm1"), 0);
        ck_assert(!broker_holds(bk)); /* no file in it */
        preserve_new(c, "vm1", 1, 4096, NULL);
        ck_assert(broker_holds(bk));
        ck_assert_int_eq(lfs_unpreserve(c, "vm1", 1), 0);
        ck_assert(!broker_holds(bk));
        preserve_new(c, "vm1", 1, 4096, NULL);
        ck_assert(broker_holds(bk));
        ck_assert_int_eq(lfs_session_close(c, "vm1"), 0);
        ck_assert(!broker_holds(bk));
        lfs_close(c);
}
END_TEST

/* ---- set-up ------------------------------------------------------------------------------- */

START_TEST(test_new_refusals)
{
        struct backend *b = NULL;
        struct fake *f;
        char msg[256];
        int fd;

        /* A backend that can preserve nothing: refused, and freed. */
        f = fake_new(FAKE_NONE);
        ck_assert_int_eq(broker_new(&f->base, &cfg, &b, msg, sizeof(msg)), -EOPNOTSUPP);
        ck_assert_ptr_null(b);
        ck_assert_str_eq(msg, "the fake backend can preserve no files: the session broker needs "
                              "sessions or tokens");

        /* A file in the way of the socket. */
        fd = open(sock_path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        close(fd);
        f = fake_new(FAKE_MAINLINE);
        ck_assert_int_eq(broker_new(&f->base, &cfg, &b, msg, sizeof(msg)), -EEXIST);
        ck_assert_ptr_nonnull(strstr(msg, "not a socket"));
        ck_assert_int_eq(unlink(sock_path), 0);

        /* A live broker there. */
        rig_start(FAKE_MAINLINE);
        f = fake_new(FAKE_V3);
        ck_assert_int_eq(broker_new(&f->base, &cfg, &b, msg, sizeof(msg)), -EADDRINUSE);
        ck_assert_ptr_nonnull(strstr(msg, "another agent serves it"));
        ck_assert_ptr_null(b);
        /* A stale one (the broker gone) is replaced. */
        rig_stop();
        rig_start(FAKE_V3);
        {
                struct lfs_client *c = client("vm-1", 0);
                lfs_close(c);
        }

        /* No socket at all: the broker still wraps the backend. */
        rig_stop();
        ck_assert_int_eq(unlink(sock_path), 0); /* a broker leaves its socket file behind */
        cfg.socket_path = NULL;
        rig_start(FAKE_MAINLINE);
        ck_assert_int_eq(access(sock_path, F_OK), -1);
}
END_TEST

static Suite *broker_suite(void)
{
        Suite *s = suite_create("broker");
        TCase *tc;

        tc = tcase_create("sessions");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_create_and_duplicate);
        tcase_add_test(tc, test_preserve_reaches_kernel);
        tcase_add_test(tc, test_kernel_errnos_pass_through);
        tcase_add_test(tc, test_unpreserve_rebuilds_session);
        tcase_add_test(tc, test_unpreserve_rebuild_failure);
        tcase_add_test(tc, test_unpreserve_rebuild_real_fds);
        tcase_add_test(tc, test_fdstore_unpreserve_rebuild);
        tcase_add_test(tc, test_unpreserve_by_kernel);
        tcase_add_test(tc, test_close_session);
        tcase_add_test(tc, test_list_and_show);
        tcase_add_test(tc, test_quota_sessions);
        tcase_add_test(tc, test_quota_fds);
        tcase_add_test(tc, test_quota_bytes);
        tcase_add_test(tc, test_max_clients);
        tcase_add_test(tc, test_malformed_datagrams);
        suite_add_tcase(s, tc);

        tc = tcase_create("tokens");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_token_allocation);
        tcase_add_test(tc, test_token_never_the_marker_token);
        tcase_add_test(tc, test_token_unpreserve_and_close);
        tcase_add_test(tc, test_token_reboot_and_retrieve);
        suite_add_tcase(s, tc);

        tc = tcase_create("prepare");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_prepare_without_workloads);
        tcase_add_test(tc, test_prepare_confirmed);
        tcase_add_test(tc, test_prepare_timeout);
        tcase_add_test(tc, test_prepare_vetoed);
        tcase_add_test(tc, test_prepare_workload_disconnects);
        tcase_add_test(tc, test_marker_at_prepare_and_reboot);
        tcase_add_test(tc, test_marker_write_failure);
        suite_add_tcase(s, tc);

        tc = tcase_create("update");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_updated_boot);
        tcase_add_test(tc, test_updated_finish_all_finished);
        tcase_add_test(tc, test_updated_other_uid);
        suite_add_tcase(s, tc);

        tc = tcase_create("agent");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_events_since_and_dropped);
        tcase_add_test(tc, test_watch);
        tcase_add_test(tc, test_holds);
        tcase_add_test(tc, test_new_refusals);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(broker_suite)
