/*
 * test_privsep.c: privilege separation's wire and both of its ends
 * (kernel/privsep.c). The helper serves a real simulated kernel on a thread
 * of this process through real SOCK_SEQPACKET socketpairs, wrapped in a
 * counting backend so a test can prove that a malformed request never
 * reaches the kernel; the proxy talks to it like the agent does.
 *
 * Covered: the round trip of every op; every malformed request (magic,
 * version, size, type, channel, seq, argument range, missing and extra fds,
 * unterminated or dirty command lines) answered with -EPROTO and not acted
 * on, its fds closed; the reply decoder; a helper that is gone (the lost
 * hook, once); a failed HELLO; the stop; a stalled SET_EVENT that does not
 * hold up queries; the helper as a forked process (privsep_spawn()). Each
 * test gets a fresh state directory under $LUOFLEET_TEST_TMP and must leave
 * as many fds open as it found.
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
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "luofleet/backend.h"
#include "luofleet/macro.h"
#include "luofleet/privsep.h"
#include "luofleet/util.h"
#include "testutil.h"

#define RELEASE "6.12.0-privsep"

static char tmpdir[PATH_MAX];
static int fds_at_start;

/* ---- a counting backend around the simulator ----------------------------- */

struct counting {
        struct backend base;
        struct backend *inner;
        atomic_int calls; /* every op but the watch ones */
};

static struct backend *inner_of(struct backend *b)
{
        return ((struct counting *)b)->inner;
}

static void count(struct backend *b)
{
        atomic_fetch_add(&((struct counting *)b)->calls, 1);
}

static void c_free(struct backend *b)
{
        backend_free(inner_of(b));
        free(b);
}

static int c_get_state(struct backend *b, enum luo_state *ret)
{
        count(b);
        return inner_of(b)->ops->get_state(inner_of(b), ret);
}

static int c_watch_fd(struct backend *b)
{
        return inner_of(b)->ops->watch_fd(inner_of(b));
}

static short c_watch_events(struct backend *b)
{
        return inner_of(b)->ops->watch_events(inner_of(b));
}

static int c_watch_read(struct backend *b, enum luo_state *ret)
{
        return inner_of(b)->ops->watch_read(inner_of(b), ret);
}

static int c_set_event(struct backend *b, enum luo_event ev)
{
        count(b);
        return inner_of(b)->ops->set_event(inner_of(b), ev);
}

static int c_kexec_load(struct backend *b, int k, int i, const char *cmdline)
{
        count(b);
        return inner_of(b)->ops->kexec_load(inner_of(b), k, i, cmdline);
}

static int c_kexec_unload(struct backend *b)
{
        count(b);
        return inner_of(b)->ops->kexec_unload(inner_of(b));
}

static int c_kexec_loaded(struct backend *b, bool *ret)
{
        count(b);
        return inner_of(b)->ops->kexec_loaded(inner_of(b), ret);
}

static int c_reboot(struct backend *b)
{
        count(b);
        return inner_of(b)->ops->reboot(inner_of(b));
}

static int c_get_info(struct backend *b, struct backend_info *ret)
{
        count(b);
        return inner_of(b)->ops->get_info(inner_of(b), ret);
}

static int c_self_check(struct backend *b, enum luo_state *a, enum luo_state *s)
{
        count(b);
        return inner_of(b)->ops->self_check(inner_of(b), a, s);
}

static const struct backend_ops counting_ops = {
        .name = "sim",
        .free = c_free,
        .get_state = c_get_state,
        .watch_fd = c_watch_fd,
        .watch_events = c_watch_events,
        .watch_read = c_watch_read,
        .set_event = c_set_event,
        .kexec_load = c_kexec_load,
        .kexec_unload = c_kexec_unload,
        .kexec_loaded = c_kexec_loaded,
        .reboot = c_reboot,
        .get_info = c_get_info,
        .self_check = c_self_check,
};

/* ---- the fixture: a helper thread, a proxy --------------------------------- */

struct rig {
        struct counting *kernel;
        int theirs[_PRIVSEP_CHAN_MAX]; /* the helper's ends */
        int mine[_PRIVSEP_CHAN_MAX];   /* the network side's (raw tests only) */
        pthread_t thread;
        bool running;
        int serve_result;
        struct backend *proxy;
};

static void setup(void)
{
        testutil_mkdtemp(tmpdir, sizeof(tmpdir), "test_privsep");
        fds_at_start = testutil_count_fds();
}

static void teardown(void)
{
        ck_assert_int_eq(testutil_count_fds(), fds_at_start);
        testutil_rm_rf(tmpdir);
        tmpdir[0] = 0;
}

static void *serve_main(void *userdata)
{
        struct rig *g = userdata;

        g->serve_result = privsep_helper_serve(&g->kernel->base, g->theirs);
        return NULL;
}

static struct counting *counting_sim(const struct backend_config *cfg)
{
        struct counting *c = calloc(1, sizeof(*c));
        char msg[256] = "";
        int r;

        ck_assert_ptr_nonnull(c);
        r = sim_open(cfg, &c->inner, msg, sizeof(msg));
        ck_assert_msg(r == 0, "sim_open: %d (%s)", r, msg);
        c->base.ops = &counting_ops;
        return c;
}

/* Start the helper thread; with proxy, wrap the network ends in a proxy (it reads HELLO). */
static void rig_start(struct rig *g, const struct backend_config *cfg, bool proxy,
                      const struct privsep_hooks *hooks)
{
        struct backend_config def = {
                .kind = BACKEND_SIM,
                .state_dir = tmpdir,
                .sim_release = RELEASE,
        };
        int pair[2];

        memset(g, 0, sizeof(*g));
        g->kernel = counting_sim(cfg ? cfg : &def);
        for (int i = 0; i < _PRIVSEP_CHAN_MAX; i++) {
                ck_assert_int_eq(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair), 0);
                g->mine[i] = pair[0];
                g->theirs[i] = pair[1];
        }
        ck_assert_int_eq(pthread_create(&g->thread, NULL, serve_main, g), 0);
        g->running = true;
        if (proxy) {
                char msg[256] = "x";
                int r = privsep_proxy_new(g->mine, 0, hooks, &g->proxy, msg, sizeof(msg));
                ck_assert_msg(r == 0, "privsep_proxy_new: %d (%s)", r, msg);
                ck_assert_str_eq(msg, "");
                for (int i = 0; i < _PRIVSEP_CHAN_MAX; i++)
                        ck_assert_int_eq(g->mine[i], -1); /* taken */
        }
}

static void rig_stop(struct rig *g)
{
        if (g->proxy)
                g->proxy = backend_free(g->proxy); /* shuts the channels: the helper returns */
        for (int i = 0; i < _PRIVSEP_CHAN_MAX; i++)
                if (g->mine[i] >= 0) {
                        close(g->mine[i]);
                        g->mine[i] = -1;
                }
        if (g->running) {
                pthread_join(g->thread, NULL);
                g->running = false;
        }
        ck_assert_int_eq(g->serve_result, 0);
        for (int i = 0; i < _PRIVSEP_CHAN_MAX; i++)
                close(g->theirs[i]);
        backend_free(&g->kernel->base);
}

static int calls(struct rig *g)
{
        return atomic_load(&g->kernel->calls);
}

static enum luo_state pstate(struct backend *b)
{
        enum luo_state s = (enum luo_state)99;
        ck_assert_int_eq(b->ops->get_state(b, &s), 0);
        return s;
}

static bool kloaded(struct backend *b)
{
        bool l = true;
        ck_assert_int_eq(b->ops->kexec_loaded(b, &l), 0);
        return l;
}

static int temp_file(const char *name, const char *content)
{
        char path[PATH_MAX + 64];
        int fd;

        ck_assert_int_lt(snprintf(path, sizeof(path), "%s/%s", tmpdir, name), (int)sizeof(path));
        fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write_all(fd, content, strlen(content)), 0);
        return fd;
}

/* Wait until the watch fd fires (up to 2 s), then read the state through it. */
static enum luo_state watched(struct backend *b)
{
        struct pollfd p = { .fd = b->ops->watch_fd(b), .events = b->ops->watch_events(b) };
        enum luo_state s = (enum luo_state)99;

        ck_assert_int_eq(poll(&p, 1, 2000), 1);
        ck_assert_int_eq(b->ops->watch_read(b, &s), 0);
        return s;
}

/* ---- round trips ------------------------------------------------------------- */

START_TEST(test_roundtrip)
{
        struct rig g;
        struct backend *b;
        struct backend_info pi, si;
        enum luo_state a = (enum luo_state)99, s = (enum luo_state)99;
        int kfd, ifd, pfd[2];
        bool l;

        rig_start(&g, NULL, true, NULL);
        b = g.proxy;
        ck_assert_str_eq(b->ops->name, "sim");
        ck_assert(privsep_is_proxy(b));
        ck_assert(!privsep_is_proxy(&g.kernel->base));
        ck_assert_int_eq(privsep_proxy_helper(b), 0);

        ck_assert_int_eq(b->ops->get_info(b, &pi), 0);
        ck_assert_int_eq(g.kernel->inner->ops->get_info(g.kernel->inner, &si), 0);
        ck_assert_str_eq(pi.boot_id, si.boot_id);
        ck_assert_str_eq(pi.release, RELEASE);
        ck_assert_int_eq(b->ops->self_check(b, &a, &s), 0);
        ck_assert_int_eq(a, LUO_STATE_NORMAL);
        ck_assert_int_eq(s, LUO_STATE_NORMAL);
        ck_assert_int_eq(pstate(b), LUO_STATE_NORMAL);
        ck_assert(!kloaded(b));

        /* The kernel's answers come back as they are. */
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FINISH), -EINVAL);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), -EINVAL);
        /* FREEZE never travels (the kernel's EINVAL, said locally). */
        int before = calls(&g);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FREEZE), -EINVAL);
        ck_assert_int_eq(b->ops->set_event(b, (enum luo_event)77), -EINVAL);
        ck_assert_int_eq(calls(&g), before);

        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(watched(b), LUO_STATE_PREPARED);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), 0);
        ck_assert_int_eq(watched(b), LUO_STATE_NORMAL);

        /* kexec_load with one fd, with two; the caller keeps its fds. */
        kfd = temp_file("vmlinuz", "kernel image");
        ifd = temp_file("initrd", "initrd image");
        ck_assert_int_eq(b->ops->kexec_load(b, kfd, -1, NULL), 0);
        ck_assert(kloaded(b));
        ck_assert_int_eq(b->ops->kexec_unload(b), 0);
        ck_assert(!kloaded(b));
        ck_assert_int_eq(b->ops->kexec_load(b, kfd, ifd, "console=ttyS0 quiet"), 0);
        ck_assert(kloaded(b));
        ck_assert_int_ge(fcntl(kfd, F_GETFD), 0);
        ck_assert_int_ge(fcntl(ifd, F_GETFD), 0);
        /* Local checks: no kernel fd, a command line longer than the kernel takes. */
        before = calls(&g);
        ck_assert_int_eq(b->ops->kexec_load(b, -1, -1, ""), -EBADF);
        char *longline = malloc(PRIVSEP_CMDLINE_MAX + 1);
        ck_assert_ptr_nonnull(longline);
        memset(longline, 'x', PRIVSEP_CMDLINE_MAX);
        longline[PRIVSEP_CMDLINE_MAX] = 0;
        ck_assert_int_eq(b->ops->kexec_load(b, kfd, -1, longline), -EINVAL);
        free(longline);
        ck_assert_int_eq(calls(&g), before);
        /* The helper takes regular files only: a pipe is refused, the kernel never sees it. */
        ck_assert_int_eq(pipe2(pfd, O_CLOEXEC), 0);
        ck_assert_int_eq(b->ops->kexec_load(b, pfd[0], -1, ""), -EBADF);
        ck_assert_int_eq(calls(&g), before);
        close(pfd[0]);
        close(pfd[1]);

        /* The simulated kexec: prepared, reboot -> frozen, reboot pending. */
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(b->ops->reboot(b), 0);
        ck_assert_int_eq(pstate(b), LUO_STATE_FROZEN);
        ck_assert_int_eq(b->ops->reboot(b), -EBUSY); /* already going down */
        l = false;
        ck_assert_int_eq(b->ops->kexec_loaded(b, &l), 0);
        ck_assert(l);

        close(kfd);
        close(ifd);
        rig_stop(&g);
}
END_TEST

static void *slow_prepare(void *userdata)
{
        struct backend *b = userdata;
        return (void *)(intptr_t)b->ops->set_event(b, LUO_EVENT_PREPARE);
}

/* A stalled SET_EVENT (a fault delay) holds the command channel only. */
START_TEST(test_slow_command_does_not_block_queries)
{
        struct backend_config cfg = {
                .kind = BACKEND_SIM,
                .state_dir = tmpdir,
                .sim_release = RELEASE,
        };
        struct rig g;
        pthread_t t;
        void *res;

        cfg.faults[SIM_FAULT_PREPARE].delay_ms = 800;
        rig_start(&g, &cfg, true, NULL);
        uint64_t t0 = now_mono_usec();
        ck_assert_int_eq(pthread_create(&t, NULL, slow_prepare, g.proxy), 0);
        usleep(100 * 1000);
        for (int i = 0; i < 20; i++) {
                ck_assert_int_eq(pstate(g.proxy), LUO_STATE_NORMAL);
                ck_assert(!kloaded(g.proxy));
        }
        /* Twenty round trips, well inside the stall. */
        ck_assert_uint_lt(now_mono_usec() - t0, 600 * 1000);
        ck_assert_int_eq(pthread_join(t, &res), 0);
        ck_assert_int_eq((int)(intptr_t)res, 0);
        ck_assert_uint_ge(now_mono_usec() - t0, 800 * 1000);
        ck_assert_int_eq(watched(g.proxy), LUO_STATE_PREPARED);
        rig_stop(&g);
}
END_TEST

/* ---- malformed requests: answered -EPROTO, never acted on -------------------- */

static struct privsep_req good_req(uint16_t type, uint64_t seq)
{
        struct privsep_req q;

        memset(&q, 0, sizeof(q));
        q.magic = PRIVSEP_MAGIC;
        q.version = PRIVSEP_VERSION;
        q.type = type;
        q.seq = seq;
        return q;
}

/* Send raw bytes (+ fds) on a channel, read the answer: its result. */
static int raw(struct rig *g, enum privsep_chan chan, const void *buf, size_t len, const int *fds,
               size_t n_fds, uint64_t want_seq)
{
        struct privsep_reply rep;
        int rfds[PRIVSEP_MAX_FDS], flags;
        size_t n_rfds;
        ssize_t n;

        ck_assert_int_eq(privsep_send(g->mine[chan], buf, len, fds, n_fds, false), 0);
        n = privsep_recv(g->mine[chan], &rep, sizeof(rep), &flags, rfds, &n_rfds, false);
        ck_assert_int_eq(n, sizeof(rep));
        ck_assert_uint_eq(n_rfds, 0);
        ck_assert_uint_eq(rep.magic, PRIVSEP_MAGIC);
        ck_assert_uint_eq(rep.version, PRIVSEP_VERSION);
        ck_assert_uint_eq(rep.seq, want_seq);
        return rep.result;
}

START_TEST(test_malformed_requests_rejected)
{
        struct privsep_reply hello;
        struct rig g;
        uint64_t cseq = 0, qseq = 0;
        int rfds[PRIVSEP_MAX_FDS], flags, k, i2, five[5];
        size_t n_rfds;
        struct privsep_req q;
        unsigned char big[sizeof(struct privsep_req) + 1];

        rig_start(&g, NULL, false, NULL);
        ck_assert_int_eq(privsep_recv(g.mine[PRIVSEP_CHAN_CMD], &hello, sizeof(hello), &flags, rfds,
                                      &n_rfds, false),
                         sizeof(hello));
        ck_assert_int_eq(privsep_reply_decode(&hello, sizeof(hello), flags, n_rfds, PRIVSEP_HELLO,
                                              0, &hello),
                         0);
        k = temp_file("k", "kernel");
        i2 = temp_file("i", "initrd");
        int base_fds = testutil_count_fds();
        int base_calls = calls(&g);

#define BAD_CMD(qq, fdv, nf)                                                                       \
        ck_assert_int_eq(raw(&g, PRIVSEP_CHAN_CMD, &(qq), sizeof(qq), fdv, nf, ++cseq), -EPROTO)
#define BAD_QUERY(qq, fdv, nf)                                                                     \
        ck_assert_int_eq(raw(&g, PRIVSEP_CHAN_QUERY, &(qq), sizeof(qq), fdv, nf, ++qseq), -EPROTO)

        /* header */
        q = good_req(PRIVSEP_REBOOT, cseq + 1);
        q.magic ^= 1;
        BAD_CMD(q, NULL, 0);
        q = good_req(PRIVSEP_REBOOT, cseq + 1);
        q.version = PRIVSEP_VERSION + 1;
        BAD_CMD(q, NULL, 0);
        q = good_req(PRIVSEP_REBOOT, cseq + 5); /* seq ahead */
        BAD_CMD(q, NULL, 0);
        q = good_req(PRIVSEP_REBOOT, cseq); /* seq replayed */
        BAD_CMD(q, NULL, 0);
        q = good_req(PRIVSEP_GET_STATE, qseq + 1);
        q.seq = 0;
        BAD_QUERY(q, NULL, 0);
        /* size: one byte short, one byte long, empty-ish */
        q = good_req(PRIVSEP_REBOOT, cseq + 1);
        ck_assert_int_eq(raw(&g, PRIVSEP_CHAN_CMD, &q, sizeof(q) - 1, NULL, 0, ++cseq), -EPROTO);
        memset(big, 0, sizeof(big));
        q = good_req(PRIVSEP_REBOOT, cseq + 1);
        memcpy(big, &q, sizeof(q));
        ck_assert_int_eq(raw(&g, PRIVSEP_CHAN_CMD, big, sizeof(big), NULL, 0, ++cseq), -EPROTO);
        ck_assert_int_eq(raw(&g, PRIVSEP_CHAN_QUERY, big, 1, NULL, 0, ++qseq), -EPROTO);
        /* type: unknown, zero, helper-only types, the wrong channel */
        static const uint16_t bad_cmd_types[] = { 0,
                                                  99,
                                                  _PRIVSEP_TYPE_MAX,
                                                  PRIVSEP_HELLO,
                                                  PRIVSEP_STATE_CHANGED,
                                                  PRIVSEP_GET_STATE,
                                                  PRIVSEP_KEXEC_LOADED,
                                                  PRIVSEP_GET_INFO,
                                                  PRIVSEP_SELF_CHECK };
        for (size_t i = 0; i < ELEMENTSOF(bad_cmd_types); i++) {
                q = good_req(bad_cmd_types[i], cseq + 1);
                BAD_CMD(q, NULL, 0);
        }
        static const uint16_t bad_query_types[] = { 0,
                                                    0xffff,
                                                    PRIVSEP_HELLO,
                                                    PRIVSEP_STATE_CHANGED,
                                                    PRIVSEP_SET_EVENT,
                                                    PRIVSEP_KEXEC_LOAD,
                                                    PRIVSEP_KEXEC_UNLOAD,
                                                    PRIVSEP_REBOOT };
        for (size_t i = 0; i < ELEMENTSOF(bad_query_types); i++) {
                q = good_req(bad_query_types[i], qseq + 1);
                BAD_QUERY(q, NULL, 0);
        }
        /* argument ranges */
        static const uint32_t bad_events[] = { LUO_EVENT_FREEZE, _LUO_EVENT_MAX, 0xffffffffu };
        for (size_t i = 0; i < ELEMENTSOF(bad_events); i++) {
                q = good_req(PRIVSEP_SET_EVENT, cseq + 1);
                q.arg = bad_events[i];
                BAD_CMD(q, NULL, 0);
        }
        q = good_req(PRIVSEP_REBOOT, cseq + 1);
        q.arg = 1;
        BAD_CMD(q, NULL, 0);
        q = good_req(PRIVSEP_GET_STATE, qseq + 1);
        q.arg = 1;
        BAD_QUERY(q, NULL, 0);
        q = good_req(PRIVSEP_KEXEC_LOAD, cseq + 1);
        q.arg = 2;
        BAD_CMD(q, ((int[]){ k, i2 }), 2);
        /* fds: missing, extra, where none belong, more than the buffer holds */
        q = good_req(PRIVSEP_KEXEC_LOAD, cseq + 1);
        BAD_CMD(q, NULL, 0);
        q = good_req(PRIVSEP_KEXEC_LOAD, cseq + 1);
        BAD_CMD(q, ((int[]){ k, i2 }), 2);
        q = good_req(PRIVSEP_KEXEC_LOAD, cseq + 1);
        q.arg = 1;
        BAD_CMD(q, &k, 1);
        q = good_req(PRIVSEP_KEXEC_LOAD, cseq + 1);
        q.arg = 1;
        BAD_CMD(q, ((int[]){ k, i2, k }), 3);
        q = good_req(PRIVSEP_REBOOT, cseq + 1);
        BAD_CMD(q, &k, 1);
        q = good_req(PRIVSEP_GET_STATE, qseq + 1);
        BAD_QUERY(q, ((int[]){ k, i2 }), 2);
        for (int i = 0; i < 5; i++)
                five[i] = k;
        q = good_req(PRIVSEP_KEXEC_LOAD, cseq + 1);
        {
                /* Five fds: past the receive buffer, so MSG_CTRUNC (the kernel closes the rest). */
                union {
                        struct cmsghdr h;
                        char buf[CMSG_SPACE(sizeof(int) * 5)];
                } control;
                struct iovec iov = { .iov_base = &q, .iov_len = sizeof(q) };
                struct msghdr mh = { .msg_iov = &iov,
                                     .msg_iovlen = 1,
                                     .msg_control = control.buf,
                                     .msg_controllen = sizeof(control.buf) };
                struct cmsghdr *c;
                struct privsep_reply rep;
                memset(&control, 0, sizeof(control));
                c = CMSG_FIRSTHDR(&mh);
                c->cmsg_level = SOL_SOCKET;
                c->cmsg_type = SCM_RIGHTS;
                c->cmsg_len = CMSG_LEN(sizeof(int) * 5);
                memcpy(CMSG_DATA(c), five, sizeof(five));
                ck_assert_int_eq(sendmsg(g.mine[PRIVSEP_CHAN_CMD], &mh, MSG_NOSIGNAL), sizeof(q));
                ck_assert_int_eq(privsep_recv(g.mine[PRIVSEP_CHAN_CMD], &rep, sizeof(rep), &flags,
                                              rfds, &n_rfds, false),
                                 sizeof(rep));
                ck_assert_int_eq(rep.result, -EPROTO);
                ck_assert_uint_eq(rep.seq, ++cseq);
        }
        /* command lines: unterminated, embedded NUL, too long, dirty tail, where none belongs */
        q = good_req(PRIVSEP_KEXEC_LOAD, cseq + 1);
        memset(q.cmdline, 'a', sizeof(q.cmdline));
        q.cmdline_len = PRIVSEP_CMDLINE_MAX - 1;
        BAD_CMD(q, &k, 1);
        q = good_req(PRIVSEP_KEXEC_LOAD, cseq + 1);
        memset(q.cmdline, 'a', sizeof(q.cmdline));
        q.cmdline_len = PRIVSEP_CMDLINE_MAX;
        BAD_CMD(q, &k, 1);
        q = good_req(PRIVSEP_KEXEC_LOAD, cseq + 1);
        memcpy(q.cmdline, "ab\0de", 5);
        q.cmdline_len = 5;
        BAD_CMD(q, &k, 1);
        q = good_req(PRIVSEP_KEXEC_LOAD, cseq + 1);
        memcpy(q.cmdline, "quiet", 5);
        q.cmdline_len = 3; /* "qui" then no NUL */
        BAD_CMD(q, &k, 1);
        q = good_req(PRIVSEP_KEXEC_LOAD, cseq + 1);
        memcpy(q.cmdline, "quiet", 5);
        q.cmdline_len = 5;
        q.cmdline[100] = 'x'; /* garbage after the terminator */
        BAD_CMD(q, &k, 1);
        q = good_req(PRIVSEP_KEXEC_LOAD, cseq + 1);
        q.cmdline_len = 0xffffffffu;
        BAD_CMD(q, &k, 1);
        q = good_req(PRIVSEP_REBOOT, cseq + 1);
        q.cmdline_len = 1;
        BAD_CMD(q, NULL, 0);
        q = good_req(PRIVSEP_GET_STATE, qseq + 1);
        q.cmdline[PRIVSEP_CMDLINE_MAX - 1] = 1;
        BAD_QUERY(q, NULL, 0);

        /* Nothing reached the kernel; every fd the helper received is closed. */
        ck_assert_int_eq(calls(&g), base_calls);
        ck_assert_int_eq(testutil_count_fds(), base_fds);
        ck_assert_int_eq(g.kernel->inner->ops->get_state(g.kernel->inner, &(enum luo_state){ 0 }),
                         0);
        ck_assert_int_eq(atomic_load(&g.kernel->calls), base_calls);

        /* The channels stay in step: well-formed requests work after all that. */
        q = good_req(PRIVSEP_KEXEC_LOAD, cseq + 1);
        memcpy(q.cmdline, "quiet", 5);
        q.cmdline_len = 5;
        ck_assert_int_eq(raw(&g, PRIVSEP_CHAN_CMD, &q, sizeof(q), &k, 1, ++cseq), 0);
        q = good_req(PRIVSEP_KEXEC_LOADED, qseq + 1);
        ck_assert_int_eq(raw(&g, PRIVSEP_CHAN_QUERY, &q, sizeof(q), NULL, 0, ++qseq), 0);
        ck_assert_int_eq(calls(&g), base_calls + 2);
        ck_assert_int_eq(testutil_count_fds(), base_fds);

        close(k);
        close(i2);
        rig_stop(&g);
#undef BAD_CMD
#undef BAD_QUERY
}
END_TEST

/* The decoders themselves, on exact bytes. */
START_TEST(test_decoders)
{
        struct privsep_req q = good_req(PRIVSEP_SET_EVENT, 7), out;
        struct privsep_reply p, rp;

        q.arg = LUO_EVENT_CANCEL;
        ck_assert_int_eq(privsep_req_decode(&q, sizeof(q), 0, 0, PRIVSEP_CHAN_CMD, 7, &out), 0);
        ck_assert_int_eq(memcmp(&q, &out, sizeof(q)), 0);
        ck_assert_int_eq(privsep_req_decode(&q, sizeof(q), MSG_TRUNC, 0, PRIVSEP_CHAN_CMD, 7, &out),
                         -EPROTO);
        ck_assert_int_eq(
                privsep_req_decode(&q, sizeof(q), MSG_CTRUNC, 0, PRIVSEP_CHAN_CMD, 7, &out),
                -EPROTO);
        ck_assert_int_eq(privsep_req_decode(&q, sizeof(q), 0, 0, PRIVSEP_CHAN_QUERY, 7, &out),
                         -EPROTO);
        ck_assert_int_eq(privsep_req_decode(&q, sizeof(q), 0, 0, PRIVSEP_CHAN_EVENT, 7, &out),
                         -EPROTO);
        ck_assert_int_eq(privsep_req_decode(NULL, 0, 0, 0, PRIVSEP_CHAN_CMD, 7, &out), -EPROTO);
        ck_assert_int_eq(privsep_req_fds(PRIVSEP_KEXEC_LOAD, 0), 1);
        ck_assert_int_eq(privsep_req_fds(PRIVSEP_KEXEC_LOAD, 1), 2);
        ck_assert_int_eq(privsep_req_fds(PRIVSEP_REBOOT, 0), 0);
        ck_assert_int_eq(privsep_req_fds(PRIVSEP_HELLO, 0), -1);
        ck_assert_str_eq(privsep_type_to_string(PRIVSEP_KEXEC_LOAD), "KEXEC_LOAD");
        ck_assert_ptr_null(privsep_type_to_string(_PRIVSEP_TYPE_MAX));

        memset(&p, 0, sizeof(p));
        p.magic = PRIVSEP_MAGIC;
        p.version = PRIVSEP_VERSION;
        p.type = PRIVSEP_GET_STATE;
        p.seq = 3;
        p.state = LUO_STATE_FROZEN;
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p), 0, 0, PRIVSEP_GET_STATE, 3, &rp), 0);
        ck_assert_uint_eq(rp.state, LUO_STATE_FROZEN);
        /* wrong type, seq, size, fds, flags */
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p), 0, 0, PRIVSEP_KEXEC_LOADED, 3, &rp),
                         -EPROTO);
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p), 0, 0, PRIVSEP_GET_STATE, 4, &rp),
                         -EPROTO);
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p) - 1, 0, 0, PRIVSEP_GET_STATE, 3, &rp),
                         -EPROTO);
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p), 0, 1, PRIVSEP_GET_STATE, 3, &rp),
                         -EPROTO);
        ck_assert_int_eq(
                privsep_reply_decode(&p, sizeof(p), MSG_TRUNC, 0, PRIVSEP_GET_STATE, 3, &rp),
                -EPROTO);
        /* state out of range; a result that is not an errno; a field it does not carry */
        p.state = _LUO_STATE_MAX;
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p), 0, 0, PRIVSEP_GET_STATE, 3, &rp),
                         -EPROTO);
        p.state = LUO_STATE_NORMAL;
        p.result = 1;
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p), 0, 0, PRIVSEP_GET_STATE, 3, &rp),
                         -EPROTO);
        p.result = -5000;
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p), 0, 0, PRIVSEP_GET_STATE, 3, &rp),
                         -EPROTO);
        p.result = 0;
        p.flag = 1;
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p), 0, 0, PRIVSEP_GET_STATE, 3, &rp),
                         -EPROTO);
        p.flag = 0;
        p.msg[0] = 'x';
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p), 0, 0, PRIVSEP_GET_STATE, 3, &rp),
                         -EPROTO);
        p.msg[0] = 0;
        /* KEXEC_LOADED: flag 0 or 1 only */
        p.type = PRIVSEP_KEXEC_LOADED;
        p.state = 0;
        p.flag = 2;
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p), 0, 0, PRIVSEP_KEXEC_LOADED, 3, &rp),
                         -EPROTO);
        p.flag = 1;
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p), 0, 0, PRIVSEP_KEXEC_LOADED, 3, &rp),
                         0);
        /* HELLO: a known backend name, a boot id, a release; all terminated */
        memset(&p, 0, sizeof(p));
        p.magic = PRIVSEP_MAGIC;
        p.version = PRIVSEP_VERSION;
        p.type = PRIVSEP_HELLO;
        memcpy(p.name, "luo-v3", 6);
        memcpy(p.boot_id, "0b9a4e4e-8c53-4f2b-9d0e-3f1c6a2b7d10", 36);
        memcpy(p.release, "6.12.0", 6);
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p), 0, 0, PRIVSEP_HELLO, 0, &rp), 0);
        memcpy(p.name, "auto", 5);
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p), 0, 0, PRIVSEP_HELLO, 0, &rp), -EPROTO);
        memcpy(p.name, "sim\0", 4);
        memset(p.release, 'r', sizeof(p.release)); /* unterminated */
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p), 0, 0, PRIVSEP_HELLO, 0, &rp), -EPROTO);
        memset(p.release, 0, sizeof(p.release));
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p), 0, 0, PRIVSEP_HELLO, 0, &rp),
                         -EPROTO); /* empty release */
        memcpy(p.release, "6.12.0", 6);
        p.boot_id[3] = 'z';
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p), 0, 0, PRIVSEP_HELLO, 0, &rp), -EPROTO);
}
END_TEST

/* ---- the helper gone, a failed HELLO, the stop ------------------------------ */

static atomic_int lost_calls;

static void on_lost(void *userdata, const char *why)
{
        (void)userdata;
        ck_assert_ptr_nonnull(why);
        atomic_fetch_add(&lost_calls, 1);
}

START_TEST(test_helper_gone)
{
        struct privsep_hooks hooks = { .lost = on_lost };
        struct rig g;
        struct backend *b;
        enum luo_state s;
        bool l;

        atomic_store(&lost_calls, 0);
        rig_start(&g, NULL, true, &hooks);
        b = g.proxy;
        ck_assert_int_eq(pstate(b), LUO_STATE_NORMAL);
        /* The helper dies: its ends close (here: the thread is told to stop, then they go). */
        for (int i = 0; i < _PRIVSEP_CHAN_MAX; i++)
                ck_assert_int_eq(shutdown(g.theirs[i], SHUT_RDWR), 0);
        pthread_join(g.thread, NULL);
        g.running = false;
        ck_assert_int_eq(b->ops->get_state(b, &s), -ENOTCONN);
        ck_assert_int_eq(atomic_load(&lost_calls), 1);
        /* Once: every later call fails at once, without another loss. */
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), -ENOTCONN);
        ck_assert_int_eq(b->ops->kexec_loaded(b, &l), -ENOTCONN);
        ck_assert_int_eq(b->ops->reboot(b), -ENOTCONN);
        ck_assert_int_eq(b->ops->watch_read(b, &s), -ENOTCONN);
        ck_assert_int_eq(atomic_load(&lost_calls), 1);
        /* The watch fd no longer fires (a hung-up socket would spin the event loop). */
        struct pollfd p = { .fd = b->ops->watch_fd(b), .events = b->ops->watch_events(b) };
        ck_assert_int_eq(poll(&p, 1, 50), 0);
        rig_stop(&g);
}
END_TEST

START_TEST(test_event_channel_closed_is_a_loss)
{
        struct privsep_hooks hooks = { .lost = on_lost };
        struct rig g;
        enum luo_state s;

        atomic_store(&lost_calls, 0);
        rig_start(&g, NULL, true, &hooks);
        ck_assert_int_eq(shutdown(g.theirs[PRIVSEP_CHAN_EVENT], SHUT_RDWR), 0);
        struct pollfd p = { .fd = g.proxy->ops->watch_fd(g.proxy), .events = POLLIN };
        ck_assert_int_eq(poll(&p, 1, 1000), 1);
        ck_assert_int_eq(g.proxy->ops->watch_read(g.proxy, &s), -ENOTCONN);
        ck_assert_int_eq(atomic_load(&lost_calls), 1);
        ck_assert_int_eq(poll(&p, 1, 50), 0);
        rig_stop(&g);
}
END_TEST

START_TEST(test_hello_error)
{
        int pair[_PRIVSEP_CHAN_MAX][2], mine[_PRIVSEP_CHAN_MAX];
        struct backend *b = NULL;
        char msg[256] = "";

        for (int i = 0; i < _PRIVSEP_CHAN_MAX; i++) {
                ck_assert_int_eq(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair[i]), 0);
                mine[i] = pair[i][0];
        }
        ck_assert_int_eq(privsep_helper_hello_error(pair[PRIVSEP_CHAN_CMD][1], -EBUSY,
                                                    "another live-update agent holds it"),
                         -EBUSY);
        ck_assert_int_eq(privsep_proxy_new(mine, 0, NULL, &b, msg, sizeof(msg)), -EBUSY);
        ck_assert_ptr_null(b);
        ck_assert_str_eq(msg, "another live-update agent holds it");
        for (int i = 0; i < _PRIVSEP_CHAN_MAX; i++) {
                ck_assert_int_eq(mine[i], -1);
                close(pair[i][1]);
        }

        /* A helper that ends without a word. */
        for (int i = 0; i < _PRIVSEP_CHAN_MAX; i++) {
                ck_assert_int_eq(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair[i]), 0);
                mine[i] = pair[i][0];
                close(pair[i][1]);
        }
        ck_assert_int_lt(privsep_proxy_new(mine, 0, NULL, &b, msg, sizeof(msg)), 0);
        ck_assert_ptr_null(b);
        ck_assert_ptr_nonnull(strstr(msg, "ended"));
}
END_TEST

START_TEST(test_stop)
{
        struct privsep_hooks hooks = { .lost = on_lost };
        struct rig g;
        enum luo_state s = (enum luo_state)99;

        atomic_store(&lost_calls, 0);
        rig_start(&g, NULL, true, &hooks);
        ck_assert_int_eq(g.proxy->ops->set_event(g.proxy, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(pstate(g.proxy), LUO_STATE_PREPARED);
        ck_assert_int_eq(privsep_proxy_stop(g.proxy, 1000), 0);
        ck_assert_int_eq(privsep_proxy_stop(&g.kernel->base, 1000), -EINVAL);
        pthread_join(g.thread, NULL); /* the helper saw EOF and returned */
        g.running = false;
        ck_assert_int_eq(g.serve_result, 0);
        ck_assert_int_eq(g.proxy->ops->set_event(g.proxy, LUO_EVENT_CANCEL), -ENOTCONN);
        /* The watcher gets the last state the helper told, and a quiet fd. */
        ck_assert_int_eq(g.proxy->ops->watch_read(g.proxy, &s), 0);
        ck_assert_int_eq(s, LUO_STATE_PREPARED);
        struct pollfd p = { .fd = g.proxy->ops->watch_fd(g.proxy), .events = POLLIN };
        ck_assert_int_eq(poll(&p, 1, 50), 0);
        ck_assert_int_eq(atomic_load(&lost_calls), 0); /* a stop is not a loss */
        rig_stop(&g);
}
END_TEST

/* The helper as a process: forked, serving, reaped; backend_open()'s errors come through. */
START_TEST(test_spawn)
{
        struct backend_config cfg = {
                .kind = BACKEND_SIM,
                .state_dir = tmpdir,
                .sim_release = RELEASE,
        };
        struct privsep_spawn_config pc = { .backend = &cfg, .busy_retry_ms = 100 };
        struct backend *b = NULL, *holder = NULL;
        char msg[256] = "";
        pid_t pid;

        ck_assert_int_eq(privsep_spawn(&pc, NULL, &b, msg, sizeof(msg)), 0);
        ck_assert_str_eq(msg, "");
        pid = privsep_proxy_helper(b);
        ck_assert_int_gt(pid, 0);
        ck_assert_str_eq(b->ops->name, "sim");
        ck_assert_int_eq(pstate(b), LUO_STATE_NORMAL);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(watched(b), LUO_STATE_PREPARED);
        b = backend_free(b);
        /* Reaped by the proxy: no such child any more. */
        ck_assert_int_eq(waitpid(pid, NULL, WNOHANG), -1);
        ck_assert_int_eq(errno, ECHILD);

        /* The simulated device is held (here by this process): EBUSY and its sentence. */
        ck_assert_int_eq(sim_open(&cfg, &holder, msg, sizeof(msg)), 0);
        ck_assert_int_eq(privsep_spawn(&pc, NULL, &b, msg, sizeof(msg)), -EBUSY);
        ck_assert_ptr_null(b);
        ck_assert_ptr_nonnull(strstr(msg, "another live-update agent holds"));
        backend_free(holder);
        ck_assert_int_eq(waitpid(-1, NULL, WNOHANG), -1);
        ck_assert_int_eq(errno, ECHILD);
}
END_TEST

static Suite *privsep_suite(void)
{
        Suite *s = suite_create("privsep");
        TCase *tc = tcase_create("core");

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_roundtrip);
        tcase_add_test(tc, test_slow_command_does_not_block_queries);
        tcase_add_test(tc, test_malformed_requests_rejected);
        tcase_add_test(tc, test_decoders);
        tcase_add_test(tc, test_helper_gone);
        tcase_add_test(tc, test_event_channel_closed_is_a_loss);
        tcase_add_test(tc, test_hello_error);
        tcase_add_test(tc, test_stop);
        tcase_add_test(tc, test_spawn);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(privsep_suite)
