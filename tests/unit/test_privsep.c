/*
 * test_privsep.c: privilege separation's wire and both of its ends
 * (kernel/privsep.c). The helper serves a real simulated kernel on a thread
 * of this process through real SOCK_SEQPACKET socketpairs, wrapped in a
 * counting backend so a test can prove that a malformed request never
 * reaches the kernel; the proxy talks to it like the agent does.
 *
 * Covered: the round trip of every op; every malformed request (magic,
 * version, size, type, channel, seq, argument range, fds where none belong,
 * unterminated or dirty command lines, KEXEC_LOAD's load block: paths,
 * digests, key id and signature) answered with -EPROTO and not acted on,
 * its fds closed; the helper's own policy (KEXEC_LOAD opens by path inside
 * the staging directories, compares the digests, verifies the signature
 * when keys are trusted and requires one when told; REBOOT only from
 * prepared or frozen; printable command lines), each refusal before the
 * kernel sees anything; the reply decoder; a helper that is gone (the lost
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
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "luofleet/backend.h"
#include "luofleet/macro.h"
#include "luofleet/privsep.h"
#include "luofleet/sign.h"
#include "luofleet/stagepath.h"
#include "luofleet/util.h"
#include "testutil.h"

#define RELEASE "6.12.0-privsep"

static char tmpdir[PATH_MAX];
static int fds_at_start;
/* What the helper thread of the next rig_start() may open (NULL: nothing). */
static const struct privsep_files *rig_files;

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
        rig_files = NULL;
        ck_assert_int_eq(testutil_count_fds(), fds_at_start);
        testutil_rm_rf(tmpdir);
        tmpdir[0] = 0;
}

static void *serve_main(void *userdata)
{
        struct rig *g = userdata;

        g->serve_result = privsep_helper_serve(&g->kernel->base, g->theirs, rig_files);
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

/* SHA-256 of content, lower-case hex. */
static void sha_hex(const char *content, char out[65])
{
        uint8_t md[32];
        unsigned len = 0;

        ck_assert_int_eq(EVP_Digest(content, strlen(content), md, &len, EVP_sha256(), NULL), 1);
        ck_assert_uint_eq(len, 32);
        hex_encode(md, 32, out);
}

/* The rig's helper may stage from tmpdir (and nothing else). */
static char *tmp_dirs[1];
static struct privsep_files tmp_files;

static const struct privsep_files *staging_in_tmpdir(void)
{
        tmp_dirs[0] = tmpdir;
        tmp_files = (struct privsep_files){ .staging_dirs = tmp_dirs, .n_staging_dirs = 1 };
        return &tmp_files;
}

/* KEXEC_LOAD through the proxy: kernel (and initrd) under tmpdir by name, with digests. */
static int load(struct backend *b, const char *kname, const char *ksha, const char *iname,
                const char *isha, const char *cmdline)
{
        char kpath[PATH_MAX + 64], ipath[PATH_MAX + 64];

        snprintf(kpath, sizeof(kpath), "%s/%s", tmpdir, kname);
        if (iname)
                snprintf(ipath, sizeof(ipath), "%s/%s", tmpdir, iname);
        return privsep_proxy_kexec_load(b, &(struct privsep_kexec_args){
                                                   .kernel_path = kpath,
                                                   .kernel_sha256 = ksha,
                                                   .initrd_path = iname ? ipath : NULL,
                                                   .initrd_sha256 = isha,
                                                   .cmdline = cmdline,
                                           });
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
        char ksha[65], isha[65], path[PATH_MAX + 64];
        int kfd, ifd;
        bool l;

        rig_files = staging_in_tmpdir();
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

        /* KEXEC_LOAD by path, the kernel alone, with an initrd; the helper opens them. */
        kfd = temp_file("vmlinuz", "kernel image");
        ifd = temp_file("initrd", "initrd image");
        sha_hex("kernel image", ksha);
        sha_hex("initrd image", isha);
        ck_assert_int_eq(load(b, "vmlinuz", ksha, NULL, NULL, NULL), 0);
        ck_assert(kloaded(b));
        ck_assert_int_eq(b->ops->kexec_unload(b), 0);
        ck_assert(!kloaded(b));
        for (int i = 0; i < 64; i++) /* the digests' case does not matter on this side */
                ksha[i] = (char)(ksha[i] >= 'a' ? ksha[i] - 'a' + 'A' : ksha[i]);
        ck_assert_int_eq(load(b, "vmlinuz", ksha, "initrd", isha, "console=ttyS0 quiet"), 0);
        ck_assert(kloaded(b));
        sha_hex("kernel image", ksha);
        /* Descriptors do not travel any more: the proxy's kexec_load refuses them. */
        before = calls(&g);
        ck_assert_int_eq(b->ops->kexec_load(b, kfd, -1, ""), -EOPNOTSUPP);
        /* Local checks: a command line longer than the kernel takes, or not printable; bad
         * digests and paths. */
        char *longline = malloc(PRIVSEP_CMDLINE_MAX + 1);
        ck_assert_ptr_nonnull(longline);
        memset(longline, 'x', PRIVSEP_CMDLINE_MAX);
        longline[PRIVSEP_CMDLINE_MAX] = 0;
        ck_assert_int_eq(load(b, "vmlinuz", ksha, NULL, NULL, longline), -EINVAL);
        free(longline);
        ck_assert_int_eq(load(b, "vmlinuz", ksha, NULL, NULL, "quiet\ninit=/bin/sh"), -EINVAL);
        ck_assert_int_eq(load(b, "vmlinuz", ksha, NULL, NULL, "caf\xc3\xa9"), -EINVAL);
        ck_assert_int_eq(load(b, "vmlinuz", "abc", NULL, NULL, NULL), -EINVAL);
        ck_assert_int_eq(load(b, "vmlinuz", ksha, "initrd", "", NULL), -EINVAL);
        ck_assert_int_eq(
                privsep_proxy_kexec_load(b, &(struct privsep_kexec_args){ .kernel_path = "vmlinuz",
                                                                          .kernel_sha256 = ksha }),
                -EINVAL);
        ck_assert_int_eq(
                privsep_proxy_kexec_load(b, &(struct privsep_kexec_args){ .kernel_path = "/k",
                                                                          .kernel_sha256 = ksha,
                                                                          .key_id = "release" }),
                -EINVAL); /* a key id without a signature */
        ck_assert_int_eq(privsep_proxy_kexec_load(&g.kernel->base, &(struct privsep_kexec_args){}),
                         -EINVAL);
        ck_assert_int_eq(calls(&g), before);
        /* The helper's own refusals: nothing reaches the kernel. */
        ck_assert_int_eq(load(b, "vmlinuz", isha, NULL, NULL, NULL), -EBADMSG);
        ck_assert_int_eq(load(b, "vmlinuz", ksha, "initrd", ksha, NULL), -EBADMSG);
        ck_assert_int_eq(load(b, "missing", ksha, NULL, NULL, NULL), -ENOENT);
        ck_assert_int_eq(load(b, "../etc", ksha, NULL, NULL, NULL), -STAGEPATH_NOT_ALLOWED);
        ck_assert_int_eq(privsep_proxy_kexec_load(
                                 b, &(struct privsep_kexec_args){ .kernel_path = "/etc/passwd",
                                                                  .kernel_sha256 = ksha }),
                         -STAGEPATH_NOT_ALLOWED);
        snprintf(path, sizeof(path), "%s/fifo", tmpdir);
        ck_assert_int_eq(mkfifo(path, 0600), 0);
        ck_assert_int_eq(load(b, "fifo", ksha, NULL, NULL, NULL), -STAGEPATH_NOT_REGULAR);
        ck_assert_int_eq(calls(&g), before);

        /* REBOOT from normal: refused by the helper (it read the state), never carried out. */
        ck_assert_int_eq(b->ops->reboot(b), -EPERM);
        ck_assert_int_eq(pstate(b), LUO_STATE_NORMAL);
        ck_assert_int_eq(calls(&g), before + 2); /* its GET_STATE and ours; no reboot */

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

/* A well-formed KEXEC_LOAD of tmpdir/k ("kernel", temp_file's) with its digest. */
static struct privsep_req kexec_req(uint64_t seq)
{
        struct privsep_req q = good_req(PRIVSEP_KEXEC_LOAD, seq);

        ck_assert_int_lt(snprintf(q.load.kernel_path, sizeof(q.load.kernel_path), "%s/k", tmpdir),
                         (int)sizeof(q.load.kernel_path));
        sha_hex("kernel", q.load.kernel_sha256);
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

        rig_files = staging_in_tmpdir();
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
                                                  PRIVSEP_SELF_CHECK,
                                                  PRIVSEP_OPEN_CONFIG,
                                                  PRIVSEP_OPEN_STAGING,
                                                  PRIVSEP_UNLINK_SOCKET };
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
        q = kexec_req(cseq + 1);
        q.arg = 2;
        BAD_CMD(q, NULL, 0);
        /* fds: none belongs anywhere (KEXEC_LOAD's images are opened by the helper) */
        q = kexec_req(cseq + 1);
        BAD_CMD(q, &k, 1);
        q = kexec_req(cseq + 1);
        BAD_CMD(q, ((int[]){ k, i2 }), 2);
        q = kexec_req(cseq + 1);
        q.arg = 1;
        BAD_CMD(q, ((int[]){ k, i2, k }), 3);
        q = good_req(PRIVSEP_REBOOT, cseq + 1);
        BAD_CMD(q, &k, 1);
        q = good_req(PRIVSEP_GET_STATE, qseq + 1);
        BAD_QUERY(q, ((int[]){ k, i2 }), 2);
        for (int i = 0; i < 5; i++)
                five[i] = k;
        q = kexec_req(cseq + 1);
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
        q = kexec_req(cseq + 1);
        memset(q.cmdline, 'a', sizeof(q.cmdline));
        q.cmdline_len = PRIVSEP_CMDLINE_MAX - 1;
        BAD_CMD(q, NULL, 0);
        q = kexec_req(cseq + 1);
        memset(q.cmdline, 'a', sizeof(q.cmdline));
        q.cmdline_len = PRIVSEP_CMDLINE_MAX;
        BAD_CMD(q, NULL, 0);
        q = kexec_req(cseq + 1);
        memcpy(q.cmdline, "ab\0de", 5);
        q.cmdline_len = 5;
        BAD_CMD(q, NULL, 0);
        q = kexec_req(cseq + 1);
        memcpy(q.cmdline, "quiet", 5);
        q.cmdline_len = 3; /* "qui" then no NUL */
        BAD_CMD(q, NULL, 0);
        q = kexec_req(cseq + 1);
        memcpy(q.cmdline, "quiet", 5);
        q.cmdline_len = 5;
        q.cmdline[100] = 'x'; /* garbage after the terminator */
        BAD_CMD(q, NULL, 0);
        q = kexec_req(cseq + 1);
        q.cmdline_len = 0xffffffffu;
        BAD_CMD(q, NULL, 0);
        /* KEXEC_LOAD's load block: paths, digests, the signature's form */
        q = kexec_req(cseq + 1);
        memset(q.load.kernel_path, 0, sizeof(q.load.kernel_path)); /* no kernel */
        BAD_CMD(q, NULL, 0);
        q = kexec_req(cseq + 1);
        memcpy(q.load.kernel_path, "boot/vmlinuz", 13); /* relative */
        BAD_CMD(q, NULL, 0);
        q = kexec_req(cseq + 1);
        memset(q.load.kernel_path, '/', sizeof(q.load.kernel_path)); /* unterminated */
        BAD_CMD(q, NULL, 0);
        q = kexec_req(cseq + 1);
        q.load.kernel_path[sizeof(q.load.kernel_path) - 1] = 'x'; /* dirty tail */
        BAD_CMD(q, NULL, 0);
        q = kexec_req(cseq + 1);
        q.load.kernel_sha256[0] = 'A'; /* upper case: the proxy lower-cases */
        BAD_CMD(q, NULL, 0);
        q = kexec_req(cseq + 1);
        q.load.kernel_sha256[63] = 0; /* 63 digits */
        BAD_CMD(q, NULL, 0);
        q = kexec_req(cseq + 1);
        q.load.kernel_sha256[10] = 'g';
        BAD_CMD(q, NULL, 0);
        q = kexec_req(cseq + 1);
        q.load.kernel_sha256[70] = '1'; /* past the terminator */
        BAD_CMD(q, NULL, 0);
        q = kexec_req(cseq + 1);
        memcpy(q.load.initrd_path, "/boot/initrd", 12); /* an initrd with arg 0 */
        BAD_CMD(q, NULL, 0);
        q = kexec_req(cseq + 1);
        memcpy(q.load.initrd_sha256, q.load.kernel_sha256, 64);
        BAD_CMD(q, NULL, 0);
        q = kexec_req(cseq + 1);
        q.arg = 1; /* arg 1 without an initrd */
        BAD_CMD(q, NULL, 0);
        q = kexec_req(cseq + 1);
        q.arg = 1;
        memcpy(q.load.initrd_path, "/boot/initrd", 12); /* without its digest */
        BAD_CMD(q, NULL, 0);
        q = kexec_req(cseq + 1);
        memcpy(q.load.key_id, "release", 7); /* a key without a signature */
        BAD_CMD(q, NULL, 0);
        q = kexec_req(cseq + 1);
        memset(q.load.signature, 'A', SIGN_B64_LEN); /* a signature without a key */
        BAD_CMD(q, NULL, 0);
        q = kexec_req(cseq + 1);
        memcpy(q.load.key_id, "../x", 4);
        memset(q.load.signature, 'A', SIGN_B64_LEN);
        BAD_CMD(q, NULL, 0);
        q = kexec_req(cseq + 1);
        memcpy(q.load.key_id, "release", 7);
        memset(q.load.signature, 'A', SIGN_B64_LEN - 1); /* one short */
        BAD_CMD(q, NULL, 0);
        q = kexec_req(cseq + 1);
        memcpy(q.load.key_id, "release", 7);
        memset(q.load.signature, 'A', SIGN_B64_LEN);
        q.load.signature[5] = '!'; /* not base64 */
        BAD_CMD(q, NULL, 0);
        q = good_req(PRIVSEP_REBOOT, cseq + 1);
        q.load.kernel_path[0] = '/'; /* a load block where none belongs */
        BAD_CMD(q, NULL, 0);
        q = good_req(PRIVSEP_GET_STATE, qseq + 1);
        q.load.signature[95] = 1;
        BAD_QUERY(q, NULL, 0);
        q = good_req(PRIVSEP_REBOOT, cseq + 1);
        q.cmdline_len = 1;
        BAD_CMD(q, NULL, 0);
        q = good_req(PRIVSEP_GET_STATE, qseq + 1);
        q.cmdline[PRIVSEP_CMDLINE_MAX - 1] = 1;
        BAD_QUERY(q, NULL, 0);
        /* the opens: an index out of range, an fd sent along, an empty or dirty path */
        q = good_req(PRIVSEP_OPEN_CONFIG, qseq + 1);
        q.arg = _PRIVSEP_CONFIG_MAX;
        BAD_QUERY(q, NULL, 0);
        q = good_req(PRIVSEP_OPEN_CONFIG, qseq + 1);
        q.arg = 0xffffffffu;
        BAD_QUERY(q, NULL, 0);
        q = good_req(PRIVSEP_OPEN_CONFIG, qseq + 1);
        BAD_QUERY(q, &k, 1);
        q = good_req(PRIVSEP_OPEN_CONFIG, qseq + 1);
        memcpy(q.cmdline, "/etc/shadow", 11); /* a path where none belongs */
        q.cmdline_len = 11;
        BAD_QUERY(q, NULL, 0);
        q = good_req(PRIVSEP_OPEN_STAGING, qseq + 1); /* no path */
        BAD_QUERY(q, NULL, 0);
        q = good_req(PRIVSEP_OPEN_STAGING, qseq + 1);
        memset(q.cmdline, '/', sizeof(q.cmdline)); /* unterminated */
        q.cmdline_len = PRIVSEP_CMDLINE_MAX;
        BAD_QUERY(q, NULL, 0);
        q = good_req(PRIVSEP_OPEN_STAGING, qseq + 1);
        memcpy(q.cmdline, "/boot/vmlinuz", 13);
        q.cmdline_len = 13;
        q.arg = 1;
        BAD_QUERY(q, NULL, 0);
        q = good_req(PRIVSEP_OPEN_STAGING, qseq + 1);
        memcpy(q.cmdline, "/boot/vmlinuz", 13);
        q.cmdline_len = 5; /* "/boot" then no NUL */
        BAD_QUERY(q, NULL, 0);
        q = good_req(PRIVSEP_UNLINK_SOCKET, qseq + 1);
        q.arg = PRIVSEP_MAX_SOCKETS;
        BAD_QUERY(q, NULL, 0);

        /* Nothing reached the kernel; every fd the helper received is closed. */
        ck_assert_int_eq(calls(&g), base_calls);
        ck_assert_int_eq(testutil_count_fds(), base_fds);
        ck_assert_int_eq(g.kernel->inner->ops->get_state(g.kernel->inner, &(enum luo_state){ 0 }),
                         0);
        ck_assert_int_eq(atomic_load(&g.kernel->calls), base_calls);

        /* The channels stay in step: well-formed requests work after all that. */
        q = kexec_req(cseq + 1);
        memcpy(q.cmdline, "quiet", 5);
        q.cmdline_len = 5;
        ck_assert_int_eq(raw(&g, PRIVSEP_CHAN_CMD, &q, sizeof(q), NULL, 0, ++cseq), 0);
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
        ck_assert_int_eq(privsep_req_fds(PRIVSEP_KEXEC_LOAD, 0), 0);
        ck_assert_int_eq(privsep_req_fds(PRIVSEP_KEXEC_LOAD, 1), 0);
        q = kexec_req(7);
        ck_assert_int_eq(privsep_req_decode(&q, sizeof(q), 0, 0, PRIVSEP_CHAN_CMD, 7, &out), 0);
        ck_assert_int_eq(memcmp(&q, &out, sizeof(q)), 0);
        ck_assert_int_eq(privsep_req_decode(&q, sizeof(q), 0, 1, PRIVSEP_CHAN_CMD, 7, &out),
                         -EPROTO);
        memcpy(q.load.key_id, "release-2.0_x", 13);
        memset(q.load.signature, 'A', SIGN_B64_LEN - 2);
        memcpy(q.load.signature + SIGN_B64_LEN - 2, "==", 2);
        ck_assert_int_eq(privsep_req_decode(&q, sizeof(q), 0, 0, PRIVSEP_CHAN_CMD, 7, &out), 0);
        q = good_req(PRIVSEP_SET_EVENT, 7);
        q.arg = LUO_EVENT_CANCEL;
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
        /* The opens: one fd with a success, none with a failure, nothing else carried. */
        p.flag = 0;
        p.type = PRIVSEP_OPEN_CONFIG;
        ck_assert_int_eq(privsep_reply_fds(PRIVSEP_OPEN_CONFIG, 0), 1);
        ck_assert_int_eq(privsep_reply_fds(PRIVSEP_OPEN_STAGING, 0), 1);
        ck_assert_int_eq(privsep_reply_fds(PRIVSEP_OPEN_STAGING, -EXDEV), 0);
        ck_assert_int_eq(privsep_reply_fds(PRIVSEP_UNLINK_SOCKET, 0), 0);
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p), 0, 1, PRIVSEP_OPEN_CONFIG, 3, &rp), 0);
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p), 0, 0, PRIVSEP_OPEN_CONFIG, 3, &rp),
                         -EPROTO);
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p), 0, 2, PRIVSEP_OPEN_CONFIG, 3, &rp),
                         -EPROTO);
        p.state = LUO_STATE_PREPARED;
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p), 0, 1, PRIVSEP_OPEN_CONFIG, 3, &rp),
                         -EPROTO);
        p.state = 0;
        p.result = -EACCES;
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p), 0, 0, PRIVSEP_OPEN_CONFIG, 3, &rp), 0);
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p), 0, 1, PRIVSEP_OPEN_CONFIG, 3, &rp),
                         -EPROTO);
        p.type = PRIVSEP_UNLINK_SOCKET;
        p.result = 0;
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p), 0, 0, PRIVSEP_UNLINK_SOCKET, 3, &rp),
                         0);
        ck_assert_int_eq(privsep_reply_decode(&p, sizeof(p), 0, 1, PRIVSEP_UNLINK_SOCKET, 3, &rp),
                         -EPROTO);
        /* the request side: an OPEN_CONFIG index in range; OPEN_STAGING's path terminated */
        q = good_req(PRIVSEP_OPEN_CONFIG, 2);
        q.arg = PRIVSEP_CONFIG_TOKENS;
        ck_assert_int_eq(privsep_req_decode(&q, sizeof(q), 0, 0, PRIVSEP_CHAN_QUERY, 2, &out), 0);
        q.arg = _PRIVSEP_CONFIG_MAX;
        ck_assert_int_eq(privsep_req_decode(&q, sizeof(q), 0, 0, PRIVSEP_CHAN_QUERY, 2, &out),
                         -EPROTO);
        q = good_req(PRIVSEP_OPEN_STAGING, 2);
        memcpy(q.cmdline, "/boot/vmlinuz", 13);
        q.cmdline_len = 13;
        ck_assert_int_eq(privsep_req_decode(&q, sizeof(q), 0, 0, PRIVSEP_CHAN_QUERY, 2, &out), 0);
        ck_assert_int_eq(privsep_req_decode(&q, sizeof(q), 0, 0, PRIVSEP_CHAN_CMD, 2, &out),
                         -EPROTO);
        ck_assert_int_eq(privsep_req_fds(PRIVSEP_OPEN_STAGING, 0), 0);
        ck_assert_str_eq(privsep_type_to_string(PRIVSEP_OPEN_STAGING), "OPEN_STAGING");
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

/* ---- OPEN_CONFIG, OPEN_STAGING, UNLINK_SOCKET -------------------------------- */

static void tmp_path(char *buf, size_t size, const char *name)
{
        ck_assert_int_lt(snprintf(buf, size, "%s/%s", tmpdir, name), (int)size);
}

static void write_file(const char *path, const char *content)
{
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write_all(fd, content, strlen(content)), 0);
        close(fd);
}

static void assert_fd_reads(int fd, const char *want)
{
        char buf[64] = "";
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(read(fd, buf, sizeof(buf) - 1), (ssize_t)strlen(want));
        ck_assert_str_eq(buf, want);
        ck_assert_int_ne(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
        close(fd);
}

/* A Unix socket file nobody listens on. */
static void make_socket_file(const char *path)
{
        struct sockaddr_un sun;
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), dir_fd;

        ck_assert_int_ge(fd, 0);
        /* A deep checkout's temporary directory is named through its descriptor. */
        ck_assert_int_eq(unix_sockaddr(path, &sun, &dir_fd), 0);
        ck_assert_int_eq(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
        if (dir_fd >= 0)
                close(dir_fd);
        close(fd);
}

struct file_rig {
        char stage[PATH_MAX], kernel[PATH_MAX + 16], outside[PATH_MAX + 16],
                link_out[PATH_MAX + 16], fifo[PATH_MAX + 16], tokens[PATH_MAX], cert_link[PATH_MAX],
                key_dir[PATH_MAX], sock[PATH_MAX], not_sock[PATH_MAX];
        char *dirs[1];
        struct privsep_files files;
};

static void file_rig_init(struct file_rig *f)
{
        memset(f, 0, sizeof(*f));
        tmp_path(f->stage, sizeof(f->stage), "stage");
        ck_assert_int_eq(mkdir(f->stage, 0700), 0);
        snprintf(f->kernel, sizeof(f->kernel), "%s/vmlinuz", f->stage);
        write_file(f->kernel, "kernel image");
        tmp_path(f->outside, sizeof(f->outside), "secret");
        write_file(f->outside, "not a kernel");
        snprintf(f->link_out, sizeof(f->link_out), "%s/escape", f->stage);
        ck_assert_int_eq(symlink(f->outside, f->link_out), 0);
        snprintf(f->fifo, sizeof(f->fifo), "%s/fifo", f->stage);
        ck_assert_int_eq(mkfifo(f->fifo, 0600), 0);
        tmp_path(f->tokens, sizeof(f->tokens), "tokens");
        write_file(f->tokens, "tokens file");
        tmp_path(f->cert_link, sizeof(f->cert_link), "cert.pem");
        ck_assert_int_eq(symlink("tokens", f->cert_link), 0); /* deploy tools' symlinks: followed */
        tmp_path(f->key_dir, sizeof(f->key_dir), "keydir");
        ck_assert_int_eq(mkdir(f->key_dir, 0700), 0);
        tmp_path(f->sock, sizeof(f->sock), "agent.sock");
        make_socket_file(f->sock);
        tmp_path(f->not_sock, sizeof(f->not_sock), "precious");
        write_file(f->not_sock, "precious");
        f->dirs[0] = f->stage;
        f->files.config[PRIVSEP_CONFIG_TOKENS] = f->tokens;
        f->files.config[PRIVSEP_CONFIG_TLS_CERT] = f->cert_link;
        f->files.config[PRIVSEP_CONFIG_TLS_KEY] = f->key_dir;
        f->files.staging_dirs = f->dirs;
        f->files.n_staging_dirs = 1;
        f->files.sockets[0] = f->sock;
        f->files.sockets[2] = f->not_sock;
}

START_TEST(test_open_files)
{
        struct file_rig f;
        struct rig g;
        struct backend *b;
        char path[PATH_MAX + 32];
        int base_calls;

        file_rig_init(&f);
        rig_files = &f.files;
        rig_start(&g, NULL, true, NULL);
        b = g.proxy;
        base_calls = calls(&g);

        /* OPEN_CONFIG: the configured files by index, a symlink followed, nothing else. */
        assert_fd_reads(privsep_proxy_open_config(b, PRIVSEP_CONFIG_TOKENS), "tokens file");
        assert_fd_reads(privsep_proxy_open_config(b, PRIVSEP_CONFIG_TLS_CERT), "tokens file");
        ck_assert_int_eq(privsep_proxy_open_config(b, PRIVSEP_CONFIG_TLS_KEY), -EISDIR);
        ck_assert_int_eq(privsep_proxy_open_config(b, PRIVSEP_CONFIG_TLS_CLIENT_CA), -ENOENT);
        ck_assert_int_eq(privsep_proxy_open_config(b, _PRIVSEP_CONFIG_MAX), -EINVAL);
        ck_assert_int_eq(privsep_proxy_open_config(&g.kernel->base, PRIVSEP_CONFIG_TOKENS),
                         -EINVAL);

        /* OPEN_STAGING: inside the staging directory only, regular files only. */
        assert_fd_reads(privsep_proxy_open_staging(b, f.kernel), "kernel image");
        ck_assert_int_eq(privsep_proxy_open_staging(b, f.outside), -STAGEPATH_NOT_ALLOWED);
        ck_assert_int_eq(privsep_proxy_open_staging(b, f.link_out), -STAGEPATH_NOT_ALLOWED);
        snprintf(path, sizeof(path), "%s/../secret", f.stage);
        ck_assert_int_eq(privsep_proxy_open_staging(b, path), -STAGEPATH_NOT_ALLOWED);
        ck_assert_int_eq(privsep_proxy_open_staging(b, "relative/vmlinuz"), -STAGEPATH_NOT_ALLOWED);
        ck_assert_int_eq(privsep_proxy_open_staging(b, f.fifo), -STAGEPATH_NOT_REGULAR);
        snprintf(path, sizeof(path), "%s/missing", f.stage);
        ck_assert_int_eq(privsep_proxy_open_staging(b, path), -ENOENT);
        ck_assert_int_eq(privsep_proxy_open_staging(b, ""), -ENAMETOOLONG);

        /* UNLINK_SOCKET: a socket by index; anything else stays. */
        ck_assert_int_eq(privsep_proxy_unlink_socket(b, 2), -ENOTSOCK);
        ck_assert_int_eq(access(f.not_sock, F_OK), 0);
        ck_assert_int_eq(privsep_proxy_unlink_socket(b, 1), -ENOENT);
        ck_assert_int_eq(privsep_proxy_unlink_socket(b, PRIVSEP_MAX_SOCKETS), -EINVAL);
        ck_assert_int_eq(privsep_proxy_unlink_socket(b, 0), 0);
        ck_assert_int_eq(access(f.sock, F_OK), -1);
        ck_assert_int_eq(privsep_proxy_unlink_socket(b, 0), -ENOENT);

        /* None of it is a kernel call; the channel is still in step. */
        ck_assert_int_eq(calls(&g), base_calls);
        ck_assert_int_eq(pstate(b), LUO_STATE_NORMAL);
        rig_stop(&g);
}
END_TEST

/*
 * The helper's own handler, as a network process that skipped its own
 * checks would reach it: every path outside the staging directories is
 * refused there, however it is spelt.
 */
START_TEST(test_helper_refuses_outside_staging)
{
        struct file_rig f;
        struct privsep_req q;
        char path[PATH_MAX + 32];
        int fd;

        file_rig_init(&f);
#define STAGING_REQ(p)                                                                             \
        do {                                                                                       \
                q = good_req(PRIVSEP_OPEN_STAGING, 1);                                             \
                ck_assert_uint_lt(strlen(p), sizeof(q.cmdline));                                   \
                memcpy(q.cmdline, (p), strlen(p));                                                 \
                q.cmdline_len = (uint32_t)strlen(p);                                               \
        } while (0)

        STAGING_REQ(f.kernel);
        fd = privsep_helper_file_request(&f.files, &q);
        assert_fd_reads(fd, "kernel image");
        static const char *const outside[] = { "/etc/shadow", "/etc/passwd", "/", "etc/passwd" };
        for (size_t i = 0; i < ELEMENTSOF(outside); i++) {
                STAGING_REQ(outside[i]);
                ck_assert_int_eq(privsep_helper_file_request(&f.files, &q), -STAGEPATH_NOT_ALLOWED);
        }
        STAGING_REQ(f.outside);
        ck_assert_int_eq(privsep_helper_file_request(&f.files, &q), -STAGEPATH_NOT_ALLOWED);
        STAGING_REQ(f.link_out); /* inside by name, outside once resolved */
        ck_assert_int_eq(privsep_helper_file_request(&f.files, &q), -STAGEPATH_NOT_ALLOWED);
        snprintf(path, sizeof(path), "%s/../secret", f.stage);
        STAGING_REQ(path);
        ck_assert_int_eq(privsep_helper_file_request(&f.files, &q), -STAGEPATH_NOT_ALLOWED);
        snprintf(path, sizeof(path), "%s/./vmlinuz", f.stage);
        STAGING_REQ(path);
        ck_assert_int_eq(privsep_helper_file_request(&f.files, &q), -STAGEPATH_NOT_ALLOWED);
        STAGING_REQ(f.stage); /* the directory itself */
        ck_assert_int_eq(privsep_helper_file_request(&f.files, &q), -STAGEPATH_NOT_ALLOWED);
        STAGING_REQ(f.fifo);
        ck_assert_int_eq(privsep_helper_file_request(&f.files, &q), -STAGEPATH_NOT_REGULAR);
        /* No staging directory at all: nothing is inside. */
        f.files.n_staging_dirs = 0;
        STAGING_REQ(f.kernel);
        ck_assert_int_eq(privsep_helper_file_request(&f.files, &q), -STAGEPATH_NOT_ALLOWED);
        ck_assert_int_eq(privsep_helper_file_request(NULL, &q), -STAGEPATH_NOT_ALLOWED);
        /* An unterminated path, an index out of range: refused even past the decoder. */
        q = good_req(PRIVSEP_OPEN_STAGING, 1);
        memset(q.cmdline, 'a', sizeof(q.cmdline));
        ck_assert_int_eq(privsep_helper_file_request(&f.files, &q), -EPROTO);
        q = good_req(PRIVSEP_OPEN_CONFIG, 1);
        q.arg = _PRIVSEP_CONFIG_MAX;
        ck_assert_int_eq(privsep_helper_file_request(&f.files, &q), -EPROTO);
        q.arg = PRIVSEP_CONFIG_TLS_CLIENT_CA; /* not configured */
        ck_assert_int_eq(privsep_helper_file_request(&f.files, &q), -ENOENT);
        q = good_req(PRIVSEP_UNLINK_SOCKET, 1);
        q.arg = PRIVSEP_MAX_SOCKETS;
        ck_assert_int_eq(privsep_helper_file_request(&f.files, &q), -EPROTO);
        q = good_req(PRIVSEP_GET_STATE, 1);
        ck_assert_int_eq(privsep_helper_file_request(&f.files, &q), -EPROTO);
#undef STAGING_REQ
}
END_TEST

/* ---- the helper's own policy -------------------------------------------------- */

/* A fresh Ed25519 key pair: DIR/<name>.key (private), DIR/<name>.pem (public). */
static void make_key(const char *dir, const char *name)
{
        EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
        char path[PATH_MAX + 64];
        FILE *f;

        ck_assert_ptr_nonnull(k);
        snprintf(path, sizeof(path), "%s/%s.key", dir, name);
        f = fopen(path, "w");
        ck_assert_ptr_nonnull(f);
        ck_assert_int_eq(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
        fclose(f);
        snprintf(path, sizeof(path), "%s/%s.pem", dir, name);
        f = fopen(path, "w");
        ck_assert_ptr_nonnull(f);
        ck_assert_int_eq(PEM_write_PUBKEY(f, k), 1);
        fclose(f);
        EVP_PKEY_free(k);
}

/* Sign what a KEXEC_LOAD of ksha (isha) with cmdline says, with DIR/<name>.key. */
static void sign_load(const char *dir, const char *name, const char *ksha, const char *isha,
                      const char *cmdline, char b64[SIGN_B64_LEN + 1])
{
        char path[PATH_MAX + 64], msg[4352];
        int n = sign_message(ksha, isha, cmdline, msg, sizeof(msg));

        ck_assert_int_gt(n, 0);
        snprintf(path, sizeof(path), "%s/%s.key", dir, name);
        ck_assert_int_eq(sign_create(path, msg, (size_t)n, b64), 0);
}

START_TEST(test_helper_policy)
{
        char keys[PATH_MAX], other[PATH_MAX], ksha[65], isha[65], sig[SIGN_B64_LEN + 1],
                bad[SIGN_B64_LEN + 1], why[PRIVSEP_MSG_MAX], kpath[PATH_MAX + 16],
                ipath[PATH_MAX + 16];
        struct privsep_files files;
        struct privsep_req q;
        struct rig g;
        struct backend *b;
        int fd, before;

        /* The command line: printable ASCII, nothing else. */
        ck_assert_int_eq(privsep_helper_cmdline_check("", why, sizeof(why)), 0);
        ck_assert_int_eq(
                privsep_helper_cmdline_check("console=ttyS0 ro init=/sbin/init", why, sizeof(why)),
                0);
        ck_assert_int_eq(privsep_helper_cmdline_check("ro\tquiet", why, sizeof(why)), -EINVAL);
        ck_assert_ptr_nonnull(strstr(why, "0x09 at offset 2"));
        ck_assert_int_eq(privsep_helper_cmdline_check("ro\x7f", NULL, 0), -EINVAL);
        ck_assert_int_eq(privsep_helper_cmdline_check("\xff", NULL, 0), -EINVAL);

        /* Keys: "release" trusted, "rogue" not (its public half is elsewhere). */
        tmp_path(keys, sizeof(keys), "keys");
        tmp_path(other, sizeof(other), "other");
        ck_assert_int_eq(mkdir(keys, 0700), 0);
        ck_assert_int_eq(mkdir(other, 0700), 0);
        make_key(keys, "release");
        make_key(other, "rogue");
        ck_assert_int_lt(snprintf(kpath, sizeof(kpath), "%s/vmlinuz", tmpdir), (int)sizeof(kpath));
        ck_assert_int_lt(snprintf(ipath, sizeof(ipath), "%s/initrd", tmpdir), (int)sizeof(ipath));
        write_file(kpath, "kernel image");
        write_file(ipath, "initrd image");
        sha_hex("kernel image", ksha);
        sha_hex("initrd image", isha);
        sign_load(keys, "release", ksha, isha, "ro quiet", sig);

        /* The signature check on its own, every policy. */
        files = *staging_in_tmpdir();
        q = good_req(PRIVSEP_KEXEC_LOAD, 1);
        q.arg = 1;
        memcpy(q.load.kernel_sha256, ksha, 64);
        memcpy(q.load.initrd_sha256, isha, 64);
        memcpy(q.cmdline, "ro quiet", 8);
        q.cmdline_len = 8;
        ck_assert_int_eq(privsep_helper_signature_check(&files, &q, why, sizeof(why)), 0);
        files.require_signature = true; /* required, but no keys: nothing loads */
        ck_assert_int_eq(privsep_helper_signature_check(&files, &q, why, sizeof(why)),
                         -EKEYREJECTED);
        ck_assert_ptr_nonnull(strstr(why, "--trusted-keys"));
        files.trusted_keys_dir = keys;
        ck_assert_int_eq(privsep_helper_signature_check(&files, &q, why, sizeof(why)),
                         -EKEYREJECTED);
        ck_assert_ptr_nonnull(strstr(why, "not signed"));
        memcpy(q.load.key_id, "release", 7);
        memcpy(q.load.signature, sig, SIGN_B64_LEN);
        ck_assert_int_eq(privsep_helper_signature_check(&files, &q, why, sizeof(why)), 0);
        q.cmdline[2] = '_'; /* "ro_quiet": not what was signed */
        ck_assert_int_eq(privsep_helper_signature_check(&files, &q, why, sizeof(why)),
                         -EKEYREJECTED);
        ck_assert_ptr_nonnull(strstr(why, "does not verify with key release"));
        q.cmdline[2] = ' ';
        q.arg = 0; /* the same without the initrd: not what was signed either */
        ck_assert_int_eq(privsep_helper_signature_check(&files, &q, why, sizeof(why)),
                         -EKEYREJECTED);
        q.arg = 1;
        sign_load(other, "rogue", ksha, isha, "ro quiet", bad);
        memcpy(q.load.key_id, "rogue\0\0", 8);
        memcpy(q.load.signature, bad, SIGN_B64_LEN);
        ck_assert_int_eq(privsep_helper_signature_check(&files, &q, why, sizeof(why)),
                         -EKEYREJECTED);
        ck_assert_ptr_nonnull(strstr(why, "no trusted Ed25519 public key named rogue"));
        files.require_signature = false; /* a signature is still checked when there are keys */
        ck_assert_int_eq(privsep_helper_signature_check(&files, &q, why, sizeof(why)),
                         -EKEYREJECTED);
        files.trusted_keys_dir = NULL; /* no keys, not required: not looked at here */
        ck_assert_int_eq(privsep_helper_signature_check(&files, &q, why, sizeof(why)), 0);

        /* The images, opened by the helper: the digest compared; anyone's file is a sealed copy. */
        files = *staging_in_tmpdir();
        q = good_req(PRIVSEP_KEXEC_LOAD, 1);
        memcpy(q.load.kernel_path, kpath, strlen(kpath));
        memcpy(q.load.kernel_sha256, ksha, 64);
        ck_assert_int_eq(chmod(kpath, 0620), 0); /* group-writable: copied whoever owns it */
        fd = privsep_helper_kexec_open(&files, &q, 0, why, sizeof(why));
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(fcntl(fd, F_GET_SEALS) & F_SEAL_WRITE, F_SEAL_WRITE);
        ck_assert_int_eq(fcntl(fd, F_GETFL) & O_ACCMODE, O_RDONLY);
        assert_fd_reads(fd, "kernel image");
        write_file(kpath, "kernel image"); /* 0620 kept: rewritten by its owner... */
        ck_assert_int_eq(chmod(kpath, 0600), 0);
        fd = privsep_helper_kexec_open(&files, &q, 0, why, sizeof(why));
        ck_assert_int_ge(fd, 0);
        /* Root's own file, nobody else may write it: loaded as it is. */
        ck_assert_int_eq(fcntl(fd, F_GET_SEALS) < 0 || geteuid() != 0, 1);
        assert_fd_reads(fd, "kernel image");
        write_file(kpath, "kernel imagE"); /* ...changed: refused */
        ck_assert_int_eq(privsep_helper_kexec_open(&files, &q, 0, why, sizeof(why)), -EBADMSG);
        ck_assert_ptr_nonnull(strstr(why, ksha));
        files.n_staging_dirs = 0;
        ck_assert_int_eq(privsep_helper_kexec_open(&files, &q, 0, why, sizeof(why)),
                         -STAGEPATH_NOT_ALLOWED);
        ck_assert_int_eq(privsep_helper_kexec_open(NULL, &q, 0, why, sizeof(why)),
                         -STAGEPATH_NOT_ALLOWED);
        write_file(kpath, "kernel image");

        /* Through a helper that trusts "release" and requires signatures. */
        files = *staging_in_tmpdir();
        files.trusted_keys_dir = keys;
        files.require_signature = true;
        rig_files = &files;
        rig_start(&g, NULL, true, NULL);
        b = g.proxy;
        before = calls(&g);
        ck_assert_int_eq(load(b, "vmlinuz", ksha, "initrd", isha, "ro quiet"), -EKEYREJECTED);
        ck_assert_int_eq(
                privsep_proxy_kexec_load(
                        b, &(struct privsep_kexec_args){ .kernel_path = kpath,
                                                         .kernel_sha256 = ksha,
                                                         .initrd_path = ipath,
                                                         .initrd_sha256 = isha,
                                                         .cmdline = "ro quiet init=/bin/sh",
                                                         .key_id = "release",
                                                         .signature = sig }),
                -EKEYREJECTED);
        ck_assert_int_eq(calls(&g), before);
        ck_assert(!kloaded(b));
        ck_assert_int_eq(
                privsep_proxy_kexec_load(b, &(struct privsep_kexec_args){ .kernel_path = kpath,
                                                                          .kernel_sha256 = ksha,
                                                                          .initrd_path = ipath,
                                                                          .initrd_sha256 = isha,
                                                                          .cmdline = "ro quiet",
                                                                          .key_id = "release",
                                                                          .signature = sig }),
                0);
        ck_assert(kloaded(b));
        /* Loaded and signed, but normal: no reboot; prepared: the reboot goes through. */
        ck_assert_int_eq(b->ops->reboot(b), -EPERM);
        ck_assert_int_eq(pstate(b), LUO_STATE_NORMAL);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(privsep_helper_reboot_check(&g.kernel->base, why, sizeof(why)), 0);
        ck_assert_int_eq(b->ops->reboot(b), 0);
        ck_assert_int_eq(pstate(b), LUO_STATE_FROZEN);
        rig_stop(&g);
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
        tcase_add_test(tc, test_open_files);
        tcase_add_test(tc, test_helper_refuses_outside_staging);
        tcase_add_test(tc, test_helper_policy);
        tcase_add_test(tc, test_helper_gone);
        tcase_add_test(tc, test_event_channel_closed_is_a_loss);
        tcase_add_test(tc, test_hello_error);
        tcase_add_test(tc, test_stop);
        tcase_add_test(tc, test_spawn);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(privsep_suite)
