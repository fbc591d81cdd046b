/*
 * test_session_client.c: the client library (libsession/session.c) against
 * a fake broker: a thread of this process listening on a SOCK_SEQPACKET
 * socket in a fresh temporary directory, decoding every request with the
 * real strict decoder and answering by a script keyed on the session name
 * ("dup" exists already, "events3" sends three events before its answer,
 * "malformed" gets a broken answer, "eof" a hang-up, ...).
 *
 * Covered: HELLO (flags and name seen by the broker, host state, refusal),
 * create/close/retrieve/finish, preserve with a real memfd (the broker
 * checks it got one) and retrieve_fd handing back the same file, list and
 * show entries (and -E2BIG past 4096, the connection still usable), events
 * queued during a request and returned in order, the queue's bound, events
 * read from the socket, -ETIMEDOUT, confirm/veto (-ESTALE, the reason
 * seen), last_message, every way the broker can break the protocol (-EPROTO
 * then -ENOTCONN) and its end of file (-ECONNRESET then -ENOTCONN). Every
 * test leaves as many fds open as it found.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "luofleet/session.h"
#include "luofleet/util.h"
#include "luofleet/session_proto.h"
#include "testutil.h"

#define STATE_NORMAL 1
#define STATE_UPDATED 4

static char tmpdir[PATH_MAX];
static char sock_path[PATH_MAX];
static int fds_at_start;

/* ---- the fake broker ------------------------------------------------------------------------ */

static struct {
        int listen_fd;
        int stop_pipe[2];
        pthread_t thread;
        int stored_fd; /* the last preserved file (a dup the fake keeps) */
        atomic_int memfds_received;
        atomic_int malformed_requests;
        atomic_uint hello_flags;
        char hello_name[LFS_WORKLOAD_MAX + 1];
        char veto_reason[LFS_TEXT_MAX + 1];
        atomic_ullong veto_id;
} fake;

/* A client that found the stream broken shuts it down: later sends may fail (EPIPE), fine. */
static void fake_send(int conn, const struct lfs_msg *m, int fd)
{
        (void)lfs_send(conn, m, fd, false);
}

static void answer(int conn, const struct lfs_msg *req, int32_t result, const char *text)
{
        struct lfs_msg a;

        lfs_msg_init(&a, (enum lfs_type)req->type, req->seq);
        a.result = result;
        if (text)
                ck_assert_int_eq(lfs_msg_set_str(a.text, sizeof(a.text), text), 0);
        fake_send(conn, &a, -1);
}

static void event(int conn, uint64_t id, enum lfs_event_kind kind, uint64_t deadline,
                  const char *note)
{
        struct lfs_msg e;

        lfs_msg_init(&e, LFS_EVENT, 0);
        e.arg = id;
        e.token = kind;
        e.arg2 = deadline;
        ck_assert_int_eq(lfs_msg_set_str(e.text, sizeof(e.text), note), 0);
        fake_send(conn, &e, -1);
}

static bool is_memfd(int fd)
{
        char link[64], target[PATH_MAX];
        ssize_t n;

        ck_assert_int_lt(snprintf(link, sizeof(link), "/proc/self/fd/%d", fd), (int)sizeof(link));
        n = readlink(link, target, sizeof(target) - 1);
        if (n < 0)
                return false;
        target[n] = 0;
        return strncmp(target, "/memfd:", 7) == 0;
}

/* Session-create scripts. Returns false when the connection is to be dropped. */
static bool on_create(int conn, const struct lfs_msg *q)
{
        const char *s = q->session;
        struct lfs_msg a;

        if (strcmp(s, "dup") == 0) {
                answer(conn, q, -EEXIST, "session dup exists");
        } else if (strcmp(s, "events3") == 0) {
                event(conn, 1, LFS_EVENT_PREPARE, 30000, "operation=a index=1");
                event(conn, 2, LFS_EVENT_CANCEL, 0, "");
                event(conn, 3, LFS_EVENT_REBOOT, 0, "reboot");
                answer(conn, q, 0, NULL);
        } else if (strcmp(s, "events70") == 0) {
                for (uint64_t i = 1; i <= 70; i++)
                        event(conn, i, LFS_EVENT_PREPARE, i, "");
                answer(conn, q, 0, NULL);
        } else if (strcmp(s, "later") == 0) {
                answer(conn, q, 0, NULL);
                event(conn, 99, LFS_EVENT_UPDATED, 0, "operation=b");
        } else if (strcmp(s, "hangup-later") == 0) {
                answer(conn, q, 0, NULL);
                return false;
        } else if (strcmp(s, "stray-answer") == 0) {
                answer(conn, q, 0, NULL);
                answer(conn, q, 0, NULL); /* a second answer, nobody asked */
        } else if (strcmp(s, "eof") == 0) {
                return false;
        } else if (strcmp(s, "malformed") == 0) {
                lfs_msg_init(&a, LFS_SESSION_CREATE, q->seq);
                a.magic = 0x12345678;
                fake_send(conn, &a, -1);
        } else if (strcmp(s, "dirty") == 0) {
                lfs_msg_init(&a, LFS_SESSION_CREATE, q->seq);
                a.arg2 = 1; /* unused in this answer */
                fake_send(conn, &a, -1);
        } else if (strcmp(s, "wrongseq") == 0) {
                lfs_msg_init(&a, LFS_SESSION_CREATE, q->seq + 1);
                fake_send(conn, &a, -1);
        } else if (strcmp(s, "wrongtype") == 0) {
                lfs_msg_init(&a, LFS_SESSION_CLOSE, q->seq);
                fake_send(conn, &a, -1);
        } else if (strcmp(s, "fd-answer") == 0) {
                /* An answer that may not carry a descriptor, with one. */
                int p[2];
                ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
                lfs_msg_init(&a, LFS_SESSION_CREATE, q->seq);
                fake_send(conn, &a, p[0]);
                close(p[0]);
                close(p[1]);
        } else if (strcmp(s, "stray-entry") == 0) {
                lfs_msg_init(&a, LFS_INFO, q->seq);
                ck_assert_int_eq(lfs_msg_set_str(a.session, sizeof(a.session), "x"), 0);
                a.arg = LFS_PHASE_OUTGOING;
                fake_send(conn, &a, -1);
                answer(conn, q, 0, NULL);
        } else {
                answer(conn, q, 0, NULL);
        }
        return true;
}

static void entries(int conn, const struct lfs_msg *q, int type, uint64_t n, uint64_t claim)
{
        struct lfs_msg e, a;

        for (uint64_t i = 0; i < n; i++) {
                lfs_msg_init(&e, (enum lfs_type)type, q->seq);
                if (type == LFS_INFO) {
                        char name[32];
                        ck_assert_int_lt(
                                snprintf(name, sizeof(name), "s%llu", (unsigned long long)i),
                                (int)sizeof(name));
                        ck_assert_int_eq(lfs_msg_set_str(e.session, sizeof(e.session), name), 0);
                        e.arg = 1 + i % 4;
                        e.arg2 = i;
                        e.token = i * 4096;
                } else {
                        e.token = i + 1;
                        e.arg = (i + 1) * 4096;
                        e.arg2 = i % 2;
                }
                fake_send(conn, &e, -1);
        }
        lfs_msg_init(&a, (enum lfs_type)q->type, q->seq);
        a.arg = claim;
        fake_send(conn, &a, -1);
}

/* One request; false: drop the connection. */
static bool fake_serve_one(int conn, const struct lfs_msg *q, int fd)
{
        struct lfs_msg a;
        struct stat st;

        switch (q->type) {
        case LFS_HELLO:
                if (strcmp(q->text, "full") == 0) {
                        answer(conn, q, -EUSERS, "too many clients (64)");
                        return false;
                }
                memcpy(fake.hello_name, q->text, sizeof(fake.hello_name) - 1);
                atomic_store(&fake.hello_flags, (unsigned)q->arg);
                lfs_msg_init(&a, LFS_HELLO, q->seq);
                a.arg = strcmp(q->text, "after-update") == 0 ? STATE_UPDATED : STATE_NORMAL;
                a.token = getuid();
                fake_send(conn, &a, -1);
                return true;
        case LFS_SESSION_CREATE:
                return on_create(conn, q);
        case LFS_PRESERVE:
                ck_assert_int_ge(fd, 0);
                if (is_memfd(fd))
                        atomic_fetch_add(&fake.memfds_received, 1);
                ck_assert_int_eq(fstat(fd, &st), 0);
                if (fake.stored_fd >= 0)
                        close(fake.stored_fd);
                fake.stored_fd = fd;
                lfs_msg_init(&a, LFS_PRESERVE, q->seq);
                a.arg = (uint64_t)st.st_size;
                fake_send(conn, &a, -1);
                return true;
        case LFS_RETRIEVE_FD:
                if (q->token != 1 || fake.stored_fd < 0) {
                        answer(conn, q, -ENOENT, "no file under that token");
                        return true;
                }
                ck_assert_int_eq(fstat(fake.stored_fd, &st), 0);
                lfs_msg_init(&a, LFS_RETRIEVE_FD, q->seq);
                a.arg = (uint64_t)st.st_size;
                fake_send(conn, &a, fake.stored_fd);
                return true;
        case LFS_LIST:
                entries(conn, q, LFS_INFO, 2, 2);
                return true;
        case LFS_SHOW:
                if (strcmp(q->session, "huge") == 0)
                        entries(conn, q, LFS_FD_INFO, 4097, 4097);
                else if (strcmp(q->session, "exact") == 0)
                        entries(conn, q, LFS_FD_INFO, 4096, 4096);
                else if (strcmp(q->session, "badcount") == 0)
                        entries(conn, q, LFS_FD_INFO, 2, 3);
                else if (strcmp(q->session, "empty") == 0)
                        entries(conn, q, LFS_FD_INFO, 0, 0);
                else if (strcmp(q->session, "missing") == 0)
                        answer(conn, q, -ENOENT, "no session missing");
                else
                        entries(conn, q, LFS_FD_INFO, 3, 3);
                return true;
        case LFS_CONFIRM:
                if (q->arg == 7)
                        answer(conn, q, 0, NULL);
                else
                        answer(conn, q, -ESTALE, "prepare 8 is over");
                return true;
        case LFS_VETO:
                memcpy(fake.veto_reason, q->text, sizeof(fake.veto_reason));
                atomic_store(&fake.veto_id, q->arg);
                answer(conn, q, 0, NULL);
                return true;
        default:
                answer(conn, q, 0, NULL);
                return true;
        }
}

static void fake_serve(int conn)
{
        for (;;) {
                struct lfs_msg m, q;
                int fd = -1, flags = 0;
                long n = lfs_recv(conn, &m, &fd, &flags, false);

                if (n <= 0)
                        break;
                int r = lfs_msg_decode(&m, (size_t)n, flags, fd >= 0 ? 1 : 0, LFS_TO_BROKER, &q);
                if (r < 0) {
                        atomic_fetch_add(&fake.malformed_requests, 1);
                        if (fd >= 0)
                                close(fd);
                        break;
                }
                if (!fake_serve_one(conn, &q, fd))
                        break;
        }
        close(conn);
}

static void *fake_main(void *arg)
{
        (void)arg;
        for (;;) {
                struct pollfd p[2] = {
                        { .fd = fake.listen_fd, .events = POLLIN },
                        { .fd = fake.stop_pipe[0], .events = POLLIN },
                };
                if (poll(p, 2, -1) < 0)
                        continue;
                if (p[1].revents)
                        break;
                int conn = accept4(fake.listen_fd, NULL, NULL, SOCK_CLOEXEC);
                if (conn >= 0)
                        fake_serve(conn);
        }
        return NULL;
}

static void fake_start(void)
{
        struct sockaddr_un sa;
        int dir_fd;

        memset(&fake, 0, sizeof(fake));
        fake.stored_fd = -1;
        /* A deep temporary directory (a deep checkout) is named through its descriptor. */
        ck_assert_int_eq(unix_sockaddr(sock_path, &sa, &dir_fd), 0);
        fake.listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(fake.listen_fd, 0);
        ck_assert_int_eq(bind(fake.listen_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        if (dir_fd >= 0)
                close(dir_fd);
        ck_assert_int_eq(listen(fake.listen_fd, 8), 0);
        ck_assert_int_eq(pipe2(fake.stop_pipe, O_CLOEXEC), 0);
        ck_assert_int_eq(pthread_create(&fake.thread, NULL, fake_main, NULL), 0);
}

static void fake_stop(void)
{
        ck_assert_int_eq(write(fake.stop_pipe[1], "x", 1), 1);
        ck_assert_int_eq(pthread_join(fake.thread, NULL), 0);
        close(fake.listen_fd);
        close(fake.stop_pipe[0]);
        close(fake.stop_pipe[1]);
        if (fake.stored_fd >= 0)
                close(fake.stored_fd);
        unlink(sock_path);
}

static void setup(void)
{
        fds_at_start = testutil_count_fds();
        testutil_mkdtemp(tmpdir, sizeof(tmpdir), "session-client");
        ck_assert_int_lt(snprintf(sock_path, sizeof(sock_path), "%s/sessions.sock", tmpdir),
                         (int)sizeof(sock_path));
        fake_start();
}

static void teardown(void)
{
        fake_stop();
        testutil_rm_rf(tmpdir);
        ck_assert_int_eq(testutil_count_fds(), fds_at_start);
        ck_assert_int_eq(atomic_load(&fake.malformed_requests), 0);
}

static struct lfs_client *connect_ok(const char *name, unsigned flags)
{
        struct lfs_client *c = NULL;

        ck_assert_int_eq(lfs_connect(sock_path, name, flags, &c), 0);
        ck_assert_ptr_nonnull(c);
        return c;
}

static uint64_t mono_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- tests ---------------------------------------------------------------------------------- */

START_TEST(test_connect_hello)
{
        struct lfs_client *c = connect_ok("vm-42", LFS_HELLO_REGISTER);

        ck_assert_str_eq(fake.hello_name, "vm-42");
        ck_assert_uint_eq(atomic_load(&fake.hello_flags), LFS_HELLO_REGISTER);
        ck_assert_int_eq(lfs_host_state(c), STATE_NORMAL);
        ck_assert_str_eq(lfs_last_message(c), "");
        ck_assert_int_ge(lfs_get_fd(c), 0);
        ck_assert_int_eq(fcntl(lfs_get_fd(c), F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
        lfs_close(c);

        c = connect_ok("after-update", 0);
        ck_assert_uint_eq(atomic_load(&fake.hello_flags), 0);
        ck_assert_int_eq(lfs_host_state(c), STATE_UPDATED);
        lfs_close(c);
        lfs_close(NULL);
}
END_TEST

START_TEST(test_connect_failures)
{
        struct lfs_client *c = NULL;
        char path[PATH_MAX], longpath[200];

        /* The broker says no. */
        ck_assert_int_eq(lfs_connect(sock_path, "full", 0, &c), -EUSERS);
        ck_assert_ptr_null(c);
        /* Refused locally: the broker never hears of it. */
        ck_assert_int_eq(lfs_connect(sock_path, "bad/name", 0, &c), -EINVAL);
        ck_assert_int_eq(lfs_connect(sock_path, "", 0, &c), -EINVAL);
        ck_assert_int_eq(lfs_connect(sock_path, "vm", 0x8, &c), -EINVAL);
        ck_assert_int_eq(lfs_connect(sock_path, "vm", 0, NULL), -EINVAL);
        /* No broker. */
        ck_assert_int_lt(snprintf(path, sizeof(path), "%s/nothing.sock", tmpdir),
                         (int)sizeof(path));
        ck_assert_int_eq(lfs_connect(path, "vm", 0, &c), -ENOENT);
        ck_assert_int_lt(snprintf(path, sizeof(path), "%s/file", tmpdir), (int)sizeof(path));
        int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        close(fd);
        ck_assert_int_eq(lfs_connect(path, "vm", 0, &c), -ECONNREFUSED);
        memset(longpath, 'p', sizeof(longpath) - 1);
        longpath[sizeof(longpath) - 1] = 0;
        ck_assert_int_eq(lfs_connect(longpath, "vm", 0, &c), -ENAMETOOLONG);
        ck_assert_ptr_null(c);
}
END_TEST

START_TEST(test_default_socket)
{
        struct lfs_client *c = NULL;

        unsetenv(LFS_SOCKET_ENV);
        ck_assert_str_eq(lfs_default_socket(), LFS_SOCKET_DEFAULT);
        ck_assert_str_eq(lfs_default_socket(), "/run/luofleet/sessions.sock");
        setenv(LFS_SOCKET_ENV, "", 1);
        ck_assert_str_eq(lfs_default_socket(), LFS_SOCKET_DEFAULT);
        setenv(LFS_SOCKET_ENV, sock_path, 1);
        ck_assert_str_eq(lfs_default_socket(), sock_path);
        /* NULL means the default: here the environment's. */
        ck_assert_int_eq(lfs_connect(NULL, "vm", 0, &c), 0);
        lfs_close(c);
        unsetenv(LFS_SOCKET_ENV);
}
END_TEST

START_TEST(test_sessions_and_last_message)
{
        struct lfs_client *c = connect_ok("vm", 0);

        ck_assert_int_eq(lfs_session_create(c, "vm1"), 0);
        ck_assert_str_eq(lfs_last_message(c), "");
        ck_assert_int_eq(lfs_session_create(c, "dup"), -EEXIST);
        ck_assert_str_eq(lfs_last_message(c), "session dup exists");
        /* A success clears it. */
        ck_assert_int_eq(lfs_session_close(c, "vm1"), 0);
        ck_assert_str_eq(lfs_last_message(c), "");
        ck_assert_int_eq(lfs_session_retrieve(c, "vm1"), 0);
        ck_assert_int_eq(lfs_session_finish(c, "vm1"), 0);
        ck_assert_int_eq(lfs_unpreserve(c, "vm1", 3), 0);
        /* Names are checked before anything is sent. */
        ck_assert_int_eq(lfs_session_create(c, ".."), -EINVAL);
        ck_assert_int_eq(lfs_session_create(c, "a b"), -EINVAL);
        ck_assert_int_eq(lfs_session_create(c, NULL), -EINVAL);
        ck_assert_int_eq(lfs_session_create(NULL, "x"), -EINVAL);
        ck_assert_str_ne(lfs_last_message(c), "");
        /* And the connection is fine. */
        ck_assert_int_eq(lfs_session_create(c, "vm2"), 0);
        lfs_close(c);
}
END_TEST

START_TEST(test_preserve_and_retrieve_fd)
{
        struct lfs_client *c = connect_ok("vm", LFS_HELLO_REGISTER);
        uint64_t bytes = 0;
        int mfd, fd = -1;
        char buf[32] = { 0 };

        mfd = memfd_create("guest-ram", MFD_CLOEXEC);
        ck_assert_int_ge(mfd, 0);
        ck_assert_int_eq(ftruncate(mfd, 8192), 0);
        ck_assert_int_eq(pwrite(mfd, "guest memory", 12, 4096), 12);

        ck_assert_int_eq(lfs_session_create(c, "vm1"), 0);
        ck_assert_int_eq(lfs_preserve(c, "vm1", mfd, 1, &bytes), 0);
        ck_assert_uint_eq(bytes, 8192);
        ck_assert_int_eq(atomic_load(&fake.memfds_received), 1);
        ck_assert_int_eq(lfs_preserve(c, "vm1", mfd, 1, NULL), 0);
        ck_assert_int_eq(atomic_load(&fake.memfds_received), 2);
        ck_assert_int_eq(lfs_preserve(c, "vm1", -1, 1, NULL), -EBADF);

        ck_assert_int_eq(lfs_retrieve_fd(c, "vm1", 1, &fd), 0);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_ne(fd, mfd);
        ck_assert_int_eq(fcntl(fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
        ck_assert_int_eq(pread(fd, buf, 12, 4096), 12);
        ck_assert_str_eq(buf, "guest memory");
        /* The same file: written through one, read through the other. */
        ck_assert_int_eq(pwrite(fd, "updated", 7, 0), 7);
        memset(buf, 0, sizeof(buf));
        ck_assert_int_eq(pread(mfd, buf, 7, 0), 7);
        ck_assert_str_eq(buf, "updated");
        close(fd);

        fd = 1234;
        ck_assert_int_eq(lfs_retrieve_fd(c, "vm1", 2, &fd), -ENOENT);
        ck_assert_int_eq(fd, 1234); /* untouched on failure */
        ck_assert_str_eq(lfs_last_message(c), "no file under that token");
        ck_assert_int_eq(lfs_retrieve_fd(c, "vm1", 1, NULL), -EINVAL);
        close(mfd);
        lfs_close(c);
}
END_TEST

START_TEST(test_list_and_show)
{
        struct lfs_client *c = connect_ok("vm", 0);
        struct lfs_session_info *s = NULL;
        struct lfs_fd_info *f = NULL;
        size_t n = 99;

        ck_assert_int_eq(lfs_list(c, &s, &n), 0);
        ck_assert_uint_eq(n, 2);
        ck_assert_str_eq(s[0].name, "s0");
        ck_assert_int_eq(s[0].phase, LFS_PHASE_OUTGOING);
        ck_assert_str_eq(s[1].name, "s1");
        ck_assert_int_eq(s[1].phase, LFS_PHASE_INCOMING);
        ck_assert_uint_eq(s[1].fds, 1);
        ck_assert_uint_eq(s[1].bytes, 4096);
        free(s);

        ck_assert_int_eq(lfs_show(c, "vm1", &f, &n), 0);
        ck_assert_uint_eq(n, 3);
        for (size_t i = 0; i < n; i++) {
                ck_assert_uint_eq(f[i].token, i + 1);
                ck_assert_uint_eq(f[i].bytes, (i + 1) * 4096);
                ck_assert_int_eq(f[i].retrieved, (int)(i % 2));
        }
        free(f);

        f = NULL;
        ck_assert_int_eq(lfs_show(c, "empty", &f, &n), 0);
        ck_assert_uint_eq(n, 0);
        free(f);
        ck_assert_int_eq(lfs_show(c, "exact", &f, &n), 0);
        ck_assert_uint_eq(n, 4096);
        ck_assert_uint_eq(f[4095].token, 4096);
        free(f);

        /* Past the bound: -E2BIG, everything read, the connection still in step. */
        f = NULL;
        n = 77;
        ck_assert_int_eq(lfs_show(c, "huge", &f, &n), -E2BIG);
        ck_assert_ptr_null(f);
        ck_assert_uint_eq(n, 77);
        ck_assert_str_ne(lfs_last_message(c), "");
        ck_assert_int_eq(lfs_show(c, "missing", &f, &n), -ENOENT);
        ck_assert_str_eq(lfs_last_message(c), "no session missing");
        ck_assert_int_eq(lfs_list(c, &s, &n), 0);
        ck_assert_uint_eq(n, 2);
        free(s);
        ck_assert_int_eq(lfs_show(c, "bad name", &f, &n), -EINVAL);

        /* An answer whose count differs from the entries sent: the stream is not trusted. */
        ck_assert_int_eq(lfs_show(c, "badcount", &f, &n), -EPROTO);
        ck_assert_int_eq(lfs_list(c, &s, &n), -ENOTCONN);
        lfs_close(c);
}
END_TEST

START_TEST(test_events_queued_in_order)
{
        struct lfs_client *c = connect_ok("vm", LFS_HELLO_REGISTER);
        struct lfs_event ev;

        ck_assert_int_eq(lfs_session_create(c, "events3"), 0);
        ck_assert_int_eq(lfs_next_event(c, &ev, 0), 0);
        ck_assert_uint_eq(ev.id, 1);
        ck_assert_int_eq(ev.kind, LFS_EVENT_PREPARE);
        ck_assert_uint_eq(ev.deadline_ms, 30000);
        ck_assert_str_eq(ev.note, "operation=a index=1");
        ck_assert_int_eq(lfs_next_event(c, &ev, 0), 0);
        ck_assert_uint_eq(ev.id, 2);
        ck_assert_int_eq(ev.kind, LFS_EVENT_CANCEL);
        ck_assert_uint_eq(ev.deadline_ms, 0);
        ck_assert_str_eq(ev.note, "");
        ck_assert_int_eq(lfs_next_event(c, &ev, -1), 0); /* queued: no wait */
        ck_assert_uint_eq(ev.id, 3);
        ck_assert_int_eq(ev.kind, LFS_EVENT_REBOOT);
        ck_assert_int_eq(lfs_next_event(c, &ev, 0), -ETIMEDOUT);

        /* An event after the answer comes from the socket, which poll() sees. */
        ck_assert_int_eq(lfs_session_create(c, "later"), 0);
        struct pollfd p = { .fd = lfs_get_fd(c), .events = POLLIN };
        ck_assert_int_eq(poll(&p, 1, 5000), 1);
        ck_assert_int_eq(lfs_next_event(c, &ev, 5000), 0);
        ck_assert_uint_eq(ev.id, 99);
        ck_assert_int_eq(ev.kind, LFS_EVENT_UPDATED);
        ck_assert_str_eq(ev.note, "operation=b");
        ck_assert_int_eq(lfs_next_event(NULL, &ev, 0), -EINVAL);
        ck_assert_int_eq(lfs_next_event(c, NULL, 0), -EINVAL);
        lfs_close(c);
}
END_TEST

START_TEST(test_event_queue_bound)
{
        struct lfs_client *c = connect_ok("vm", LFS_HELLO_REGISTER);
        struct lfs_event ev;

        /* 70 events before the answer: the oldest 6 are dropped. */
        ck_assert_int_eq(lfs_session_create(c, "events70"), 0);
        for (uint64_t want = 7; want <= 70; want++) {
                ck_assert_int_eq(lfs_next_event(c, &ev, 0), 0);
                ck_assert_uint_eq(ev.id, want);
                ck_assert_uint_eq(ev.deadline_ms, want);
        }
        ck_assert_int_eq(lfs_next_event(c, &ev, 0), -ETIMEDOUT);
        lfs_close(c);
}
END_TEST

START_TEST(test_next_event_timeout)
{
        struct lfs_client *c = connect_ok("vm", LFS_HELLO_REGISTER);
        struct lfs_event ev;
        uint64_t t0;

        t0 = mono_ms();
        ck_assert_int_eq(lfs_next_event(c, &ev, 0), -ETIMEDOUT);
        ck_assert_uint_lt(mono_ms() - t0, 1000);
        t0 = mono_ms();
        ck_assert_int_eq(lfs_next_event(c, &ev, 150), -ETIMEDOUT);
        ck_assert_uint_ge(mono_ms() - t0, 140);
        /* Still usable. */
        ck_assert_int_eq(lfs_session_create(c, "vm1"), 0);
        lfs_close(c);
}
END_TEST

START_TEST(test_confirm_veto)
{
        struct lfs_client *c = connect_ok("vm", LFS_HELLO_REGISTER);

        ck_assert_int_eq(lfs_confirm(c, 7), 0);
        ck_assert_int_eq(lfs_confirm(c, 8), -ESTALE);
        ck_assert_str_eq(lfs_last_message(c), "prepare 8 is over");
        ck_assert_int_eq(lfs_veto(c, 9, "guest is migrating"), 0);
        ck_assert_str_eq(fake.veto_reason, "guest is migrating");
        ck_assert_uint_eq(atomic_load(&fake.veto_id), 9);
        ck_assert_int_eq(lfs_veto(c, 10, NULL), 0);
        ck_assert_str_eq(fake.veto_reason, "");
        /* Not printable: refused here, never sent. */
        ck_assert_int_eq(lfs_veto(c, 11, "two\nlines"), -EINVAL);
        ck_assert_uint_eq(atomic_load(&fake.veto_id), 10);
        ck_assert_int_eq(lfs_confirm(NULL, 7), -EINVAL);
        lfs_close(c);
}
END_TEST

/* A session-create whose answer breaks the protocol: -EPROTO, then -ENOTCONN for good. */
static void expect_proto_death(const char *script)
{
        struct lfs_client *c = connect_ok("vm", LFS_HELLO_REGISTER);
        struct lfs_event ev;
        int fd = -1;

        ck_assert_msg(lfs_session_create(c, script) == -EPROTO, "%s", script);
        ck_assert_str_ne(lfs_last_message(c), "");
        ck_assert_int_eq(lfs_session_create(c, "vm1"), -ENOTCONN);
        ck_assert_int_eq(lfs_retrieve_fd(c, "vm1", 1, &fd), -ENOTCONN);
        ck_assert_int_eq(lfs_confirm(c, 7), -ENOTCONN);
        ck_assert_int_eq(lfs_next_event(c, &ev, 0), -ENOTCONN);
        /* The descriptor stays valid (and hung up) until lfs_close(). */
        ck_assert_int_ge(fcntl(lfs_get_fd(c), F_GETFD), 0);
        lfs_close(c);
}

START_TEST(test_malformed_answers)
{
        expect_proto_death("malformed");
        expect_proto_death("dirty");
        expect_proto_death("wrongseq");
        expect_proto_death("wrongtype");
        expect_proto_death("fd-answer"); /* and the descriptor is closed: teardown counts */
        expect_proto_death("stray-entry");
}
END_TEST

START_TEST(test_stray_answer_between_requests)
{
        struct lfs_client *c = connect_ok("vm", LFS_HELLO_REGISTER);
        struct lfs_event ev;

        ck_assert_int_eq(lfs_session_create(c, "stray-answer"), 0);
        ck_assert_int_eq(lfs_next_event(c, &ev, 5000), -EPROTO);
        ck_assert_int_eq(lfs_next_event(c, &ev, 0), -ENOTCONN);
        lfs_close(c);
}
END_TEST

START_TEST(test_broker_eof)
{
        struct lfs_client *c = connect_ok("vm", 0);
        struct lfs_event ev;

        /* While waiting for an answer. */
        ck_assert_int_eq(lfs_session_create(c, "eof"), -ECONNRESET);
        ck_assert_int_eq(lfs_session_create(c, "vm1"), -ENOTCONN);
        ck_assert_int_eq(lfs_next_event(c, &ev, 0), -ENOTCONN);
        lfs_close(c);

        /* While waiting for an event. */
        c = connect_ok("vm", LFS_HELLO_REGISTER);
        ck_assert_int_eq(lfs_session_create(c, "hangup-later"), 0);
        ck_assert_int_eq(lfs_next_event(c, &ev, 5000), -ECONNRESET);
        ck_assert_int_eq(lfs_next_event(c, &ev, 0), -ENOTCONN);
        ck_assert_int_eq(lfs_session_create(c, "vm1"), -ENOTCONN);
        lfs_close(c);

        /* Events queued before the end are still handed out. */
        c = connect_ok("vm", LFS_HELLO_REGISTER);
        ck_assert_int_eq(lfs_session_create(c, "events3"), 0);
        ck_assert_int_eq(lfs_session_create(c, "eof"), -ECONNRESET);
        for (uint64_t want = 1; want <= 3; want++) {
                ck_assert_int_eq(lfs_next_event(c, &ev, 0), 0);
                ck_assert_uint_eq(ev.id, want);
        }
        ck_assert_int_eq(lfs_next_event(c, &ev, 0), -ENOTCONN);
        lfs_close(c);
}
END_TEST

static Suite *session_client_suite(void)
{
        Suite *s = suite_create("session_client");
        TCase *tc = tcase_create("core");

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_connect_hello);
        tcase_add_test(tc, test_connect_failures);
        tcase_add_test(tc, test_default_socket);
        tcase_add_test(tc, test_sessions_and_last_message);
        tcase_add_test(tc, test_preserve_and_retrieve_fd);
        tcase_add_test(tc, test_list_and_show);
        tcase_add_test(tc, test_events_queued_in_order);
        tcase_add_test(tc, test_event_queue_bound);
        tcase_add_test(tc, test_next_event_timeout);
        tcase_add_test(tc, test_confirm_veto);
        tcase_add_test(tc, test_malformed_answers);
        tcase_add_test(tc, test_stray_answer_between_requests);
        tcase_add_test(tc, test_broker_eof);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(session_client_suite)
