/*
 * session_rounds.c: luofleet-bench-sessions, the repeated, alternating
 * comparison of the session broker with the bare ioctls of /dev/liveupdate
 * (docs/benchmarks.md, "Live update"; driven by the VM scenario
 * tests/e2e/scenarios/mainline-rounds.sh inside the mainline guest). One
 * sample of each kind per run cannot tell the broker's cost from the noise
 * of an emulated machine; many samples, raw and broker taken in turn (the
 * order swapped every round), and their medians can.
 *
 *   preserve-rounds  R rounds; per round one raw sample (open the device,
 *                    CREATE_SESSION, close the device, PRESERVE_FD of a
 *                    filled M MiB memfd: timed, close the session, which
 *                    unpreserves) and one broker sample (lfs_session_create,
 *                    lfs_preserve: timed, lfs_session_close).
 *   hold             K raw sessions "rr-I" and K broker sessions "br-I", one
 *                    filled M MiB memfd each under token 1, their seeds and
 *                    checksums in --state; then serve the broker's events
 *                    (confirm prepare and reboot) holding the raw session
 *                    descriptors open, until the kexec ends the process: a
 *                    raw session open at the reboot is carried.
 *   retrieve-rounds  after the kexec, for each I in turn: raw (open the
 *                    device, RETRIEVE_SESSION rr-I, close the device,
 *                    RETRIEVE_FD: timed, check every word, FINISH) and broker
 *                    (lfs_session_retrieve br-I, lfs_retrieve_fd: timed,
 *                    check, lfs_session_finish).
 *
 * Only the kernel call (raw) or the library call that wraps it (broker) is
 * timed, on CLOCK_MONOTONIC; filling, creating and checking are not. Before
 * each timed call the process sleeps --settle-ms, so that what the previous
 * step set off in the agent (its journal records, fsync'ed on the share)
 * does not land inside the next sample, whichever kind it is.
 *
 * Broker sessions are kernel sessions named "lf:<uid>:<name>": the raw names
 * here ("rp-", "rr-") can never collide with them, nor with the agent's
 * marker "luofleet". The ioctl numbers and structs are the mainline ABI's
 * (docs kernel-abi.md §B, as in tests/e2e/mainline/luo_raw.c), written here.
 *
 * Beside each broker sample, its floor is timed too: one request without a
 * kernel call (lfs_show), after the same pause (rtt).
 *
 * Output: one line per sample, then "RESULT kind=preserve|retrieve ..." with
 * every sample, the median, minimum and maximum of each kind (and of rtt),
 * ms per GiB and the broker's overhead on the medians. Exit status 0 ok, 1 failure, 2 usage.
 * One thread; libc and the static client library only.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "luofleet/backend.h"
#include "luofleet/session.h"
#include "memfd-pattern.h"

/* The mainline live-update ABI (kernel-abi.md §B): the agent's own definitions. */
#define LUO_DEV "/dev/liveupdate"

#define MIB (UINT64_C(1) << 20)
#define MIB_MAX 65536u   /* 64 GiB per memfd */
#define ROUNDS_MAX 1000u /* samples of each kind */
#define SESSIONS_MAX 16u /* the broker's default per-owner session quota */
#define TOKEN 1
#define STATE_MAX 8192

/* Seeds of the patterns: every memfd has its own, so a mixed-up file does not verify. */
#define SEED_PRESERVE_RAW 0x7270000u
#define SEED_PRESERVE_BROKER 0x6270000u
#define SEED_HOLD_RAW 0x7272000u
#define SEED_HOLD_BROKER 0x6272000u

enum kind { RAW, BROKER };

struct opts {
        const char *socket; /* NULL: $LUOFLEET_SESSIONS_SOCKET or the default */
        const char *name;
        const char *state;
        uint64_t mib;
        uint64_t rounds;
        uint64_t sessions;
        uint64_t settle_ms;
        uint64_t busy_ms;
        uint64_t wait_s;
        const char *mode;
};

static void usage(FILE *f)
{
        fprintf(f,
                "usage: luofleet-bench-sessions [OPTIONS] preserve-rounds|hold|retrieve-rounds\n"
                "  preserve-rounds    --rounds rounds of one raw PRESERVE_FD and one lfs_preserve\n"
                "                     of a --mib memfd each, in turn (the order swapped each "
                "round)\n"
                "  hold               preserve --sessions raw sessions rr-I and as many broker\n"
                "                     sessions br-I, write --state, then serve the broker's "
                "events\n"
                "                     holding them until the kexec (or SIGTERM: nothing carried)\n"
                "  retrieve-rounds    after the kexec: RETRIEVE_FD and lfs_retrieve_fd of each\n"
                "                     session in --state, in turn, checked word by word, finished\n"
                "options:\n"
                "  --socket=PATH      the broker's socket (default $%s,\n"
                "                     else %s)\n"
                "  --name=NAME        the workload name told to the broker (default "
                "bench-sessions)\n"
                "  --mib=N            the size of each memfd in MiB (default 128)\n"
                "  --rounds=R         preserve-rounds: rounds (default 7)\n"
                "  --sessions=K       hold: sessions of each kind (default 4, at most %u)\n"
                "  --state=FILE       hold: where the seeds and checksums go; retrieve-rounds:\n"
                "                     where they are read from (required for both)\n"
                "  --settle-ms=MS     sleep before each timed call (default 500)\n"
                "  --busy-ms=MS       how long to retry a busy /dev/liveupdate (default 5000)\n"
                "  --wait=SECONDS     how long to wait for the broker's socket (default 30)\n"
                "exit status: 0 ok, 1 failure, 2 usage\n",
                LFS_SOCKET_ENV, LFS_SOCKET_DEFAULT, SESSIONS_MAX);
}

/* A one-line message on stderr; the exit status of a failure. */
static int fail(const char *what, int r, struct lfs_client *c)
{
        const char *msg = c ? lfs_last_message(c) : "";

        if (*msg)
                fprintf(stderr, "bench-sessions: %s: %s (%s)\n", what, strerror(-r), msg);
        else
                fprintf(stderr, "bench-sessions: %s: %s\n", what, strerror(-r));
        return 1;
}

static int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *ret)
{
        unsigned long long v;
        char *end;

        if (!isdigit((unsigned char)*s))
                return -EINVAL;
        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno || *end || v < min || v > max)
                return -ERANGE;
        *ret = v;
        return 0;
}

static uint64_t now_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void sleep_ms(uint64_t ms)
{
        struct timespec ts = { .tv_sec = (time_t)(ms / 1000),
                               .tv_nsec = (long)(ms % 1000) * 1000000 };

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

static double ns_to_ms(uint64_t ns)
{
        return (double)ns / 1e6;
}

/*
 * A memfd of mib MiB filled with the pattern of seed: every page written
 * (faulted in) before anything is timed. Its checksum in *ret_sum.
 */
static int memfd_filled(uint64_t mib, uint64_t seed, int *ret_fd, uint64_t *ret_sum)
{
        uint64_t size = mib * MIB;
        uint64_t *w;
        int fd, r;

        fd = memfd_create("bench-sessions", MFD_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (ftruncate(fd, (off_t)size) < 0)
                goto fail;
        w = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (w == MAP_FAILED)
                goto fail;
        *ret_sum = fill(w, size / 8, seed);
        munmap(w, size);
        *ret_fd = fd;
        return 0;
fail:
        r = -errno;
        close(fd);
        return r;
}

/* The file's size and every word against the pattern of seed, and its checksum: 0 when exact. */
static int memfd_check(int fd, uint64_t mib, uint64_t seed, uint64_t want_sum, const char *what)
{
        uint64_t size = mib * MIB, h;
        size_t bad, first = 0;
        const uint64_t *w;
        struct stat st;

        if (fstat(fd, &st) < 0)
                return fail("fstat", -errno, NULL);
        if ((uint64_t)st.st_size != size) {
                fprintf(stderr, "bench-sessions: %s: size %jd, expected %" PRIu64 "\n", what,
                        (intmax_t)st.st_size, size);
                return 1;
        }
        w = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
        if (w == MAP_FAILED)
                return fail("mmap", -errno, NULL);
        bad = verify(w, size / 8, seed, &h, &first);
        munmap((void *)w, size);
        if (bad || h != want_sum) {
                fprintf(stderr,
                        "bench-sessions: %s: NOT bit-exact: %zu of %" PRIu64
                        " words differ (the first at byte %zu), checksum %016" PRIx64
                        ", expected %016" PRIx64 "\n",
                        what, bad, size / 8, first * 8, h, want_sum);
                return 1;
        }
        return 0;
}

/* ---- raw: the device and its ioctls ------------------------------------------------------- */

/*
 * Open /dev/liveupdate. The device has one opener at a time, and the agent
 * opens it around each CREATE/RETRIEVE_SESSION: EBUSY is waited out for up
 * to busy_ms, as the agent itself does.
 */
static int dev_open(uint64_t busy_ms)
{
        uint64_t deadline = now_ns() + busy_ms * 1000000;
        int fd;

        for (;;) {
                fd = open(LUO_DEV, O_RDWR | O_CLOEXEC);
                if (fd >= 0)
                        return fd;
                if (errno != EBUSY || now_ns() >= deadline)
                        return -errno;
                sleep_ms(5);
        }
}

/*
 * CREATE_SESSION or RETRIEVE_SESSION of name: the device is opened for that
 * call only and closed right after (closing it changes nothing for the
 * session), so it is free again for the agent, as the agent leaves it for us.
 */
static int raw_session(unsigned long request, const char *name, uint64_t busy_ms, int *ret_fd)
{
        struct luo_ioc_session a = { .size = sizeof(a), .fd = -1 };
        size_t n = strlen(name);
        int dev, r = 0;

        if (n >= sizeof(a.name))
                return -ENAMETOOLONG;
        memcpy(a.name, name, n);
        dev = dev_open(busy_ms);
        if (dev < 0)
                return dev;
        if (ioctl(dev, request, &a) < 0)
                r = -errno;
        close(dev);
        if (r < 0)
                return r;
        *ret_fd = a.fd;
        return 0;
}

static int raw_preserve(int session, int fd, uint64_t token)
{
        struct luo_ioc_session_fd a = { .size = sizeof(a), .fd = fd, .token = token };

        return ioctl(session, LUO_IOC_SESSION_PRESERVE_FD, &a) < 0 ? -errno : 0;
}

static int raw_retrieve_fd(int session, uint64_t token, int *ret_fd)
{
        struct luo_ioc_session_fd a = { .size = sizeof(a), .fd = -1, .token = token };

        if (ioctl(session, LUO_IOC_SESSION_RETRIEVE_FD, &a) < 0)
                return -errno;
        *ret_fd = a.fd;
        return 0;
}

static int raw_finish(int session)
{
        struct luo_ioc_session_finish a = { .size = sizeof(a) };

        return ioctl(session, LUO_IOC_SESSION_FINISH, &a) < 0 ? -errno : 0;
}

/* ---- samples and their summary ------------------------------------------------------------ */

struct samples {
        uint64_t ns[ROUNDS_MAX];
        size_t n;
};

static int cmp_u64(const void *a, const void *b)
{
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

        return x < y ? -1 : x > y;
}

/* Median (the mean of the middle two for an even count), minimum and maximum, in ns. */
static void samples_stats(const struct samples *s, double *ret_med, double *ret_min,
                          double *ret_max)
{
        uint64_t v[ROUNDS_MAX];

        memcpy(v, s->ns, s->n * sizeof(v[0]));
        qsort(v, s->n, sizeof(v[0]), cmp_u64);
        *ret_min = (double)v[0];
        *ret_max = (double)v[s->n - 1];
        *ret_med = s->n % 2 ? (double)v[s->n / 2] : ((double)v[s->n / 2 - 1] + v[s->n / 2]) / 2;
}

static void print_list(const char *key, const struct samples *s)
{
        printf(" %s=", key);
        for (size_t i = 0; i < s->n; i++)
                printf("%s%.3f", i ? "," : "", ns_to_ms(s->ns[i]));
}

/*
 * The RESULT line: every sample, then median/min/max of each kind, per GiB, the overhead,
 * and the broker's round trip without a kernel call (rtt) beside it.
 */
static void print_result(const char *kind, uint64_t mib, const struct samples *raw,
                         const struct samples *broker, const struct samples *rtt)
{
        double rmed, rmin, rmax, bmed, bmin, bmax, tmed, tmin, tmax, gib = (double)mib / 1024.0;

        samples_stats(raw, &rmed, &rmin, &rmax);
        samples_stats(broker, &bmed, &bmin, &bmax);
        samples_stats(rtt, &tmed, &tmin, &tmax);
        printf("RESULT kind=%s mib=%" PRIu64 " samples=%zu", kind, mib, raw->n);
        print_list("raw_ms", raw);
        print_list("broker_ms", broker);
        print_list("rtt_ms", rtt);
        printf(" raw_median_ms=%.3f raw_min_ms=%.3f raw_max_ms=%.3f"
               " broker_median_ms=%.3f broker_min_ms=%.3f broker_max_ms=%.3f"
               " rtt_median_ms=%.3f rtt_min_ms=%.3f rtt_max_ms=%.3f"
               " raw_ms_per_gib=%.1f broker_ms_per_gib=%.1f overhead_pct=%+.1f\n",
               rmed / 1e6, rmin / 1e6, rmax / 1e6, bmed / 1e6, bmin / 1e6, bmax / 1e6, tmed / 1e6,
               tmin / 1e6, tmax / 1e6, rmed / 1e6 / gib, bmed / 1e6 / gib,
               100.0 * (bmed / rmed - 1.0));
}

/*
 * The broker's floor: one request and its answer with no kernel call and no
 * journal record (lfs_show of the session), after the same settling pause as
 * the timed call that follows it. What the broker adds to a kernel call
 * beyond this is its own work around the ioctl.
 */
static int broker_rtt(const struct opts *o, struct lfs_client *c, const char *session,
                      uint64_t *ret_ns)
{
        struct lfs_fd_info *f = NULL;
        size_t n = 0;
        uint64_t t;
        int e;

        sleep_ms(o->settle_ms);
        t = now_ns();
        e = lfs_show(c, session, &f, &n);
        t = now_ns() - t;
        free(f);
        if (e < 0)
                return fail("lfs_show", e, c);
        *ret_ns = t;
        return 0;
}

/*
 * Connect as workload o->name, waiting up to --wait seconds for the broker's
 * socket (the agent may still be starting).
 */
static int broker_connect(const struct opts *o, unsigned flags, struct lfs_client **ret)
{
        uint64_t deadline = now_ns() + o->wait_s * 1000000000u;
        int r;

        for (;;) {
                r = lfs_connect(o->socket, o->name, flags, ret);
                if ((r != -ENOENT && r != -ECONNREFUSED) || now_ns() >= deadline)
                        return r;
                sleep_ms(20);
        }
}

/* ---- preserve-rounds ---------------------------------------------------------------------- */

/* One raw sample of round r: the PRESERVE_FD ioctl alone, timed. */
static int preserve_raw(const struct opts *o, unsigned r, uint64_t *ret_ns)
{
        char name[LUO_SESSION_NAME_MAX];
        uint64_t sum, t;
        int fd, s, e;

        snprintf(name, sizeof(name), "rp-%u", r);
        e = memfd_filled(o->mib, SEED_PRESERVE_RAW + r, &fd, &sum);
        if (e < 0)
                return fail("memfd", e, NULL);
        e = raw_session(LUO_IOC_CREATE_SESSION, name, o->busy_ms, &s);
        if (e < 0) {
                close(fd);
                return fail("CREATE_SESSION", e, NULL);
        }
        sleep_ms(o->settle_ms);
        t = now_ns();
        e = raw_preserve(s, fd, TOKEN);
        t = now_ns() - t;
        /* Closing an outgoing session releases it: the memfd is unpreserved, the name free. */
        close(s);
        close(fd);
        if (e < 0)
                return fail("PRESERVE_FD", e, NULL);
        *ret_ns = t;
        return 0;
}

/*
 * One broker sample of round r: lfs_preserve alone (request, SCM_RIGHTS, ioctl, answer),
 * timed; before it the broker's round trip (*ret_rtt).
 */
static int preserve_broker(const struct opts *o, struct lfs_client *c, unsigned r, uint64_t *ret_ns,
                           uint64_t *ret_rtt)
{
        char name[LFS_NAME_MAX + 1];
        uint64_t sum, t, bytes = 0;
        int fd, e;

        snprintf(name, sizeof(name), "bp-%u", r);
        e = memfd_filled(o->mib, SEED_PRESERVE_BROKER + r, &fd, &sum);
        if (e < 0)
                return fail("memfd", e, NULL);
        e = lfs_session_create(c, name);
        if (e < 0) {
                close(fd);
                return fail("lfs_session_create", e, c);
        }
        if (broker_rtt(o, c, name, ret_rtt)) {
                close(fd);
                return 1;
        }
        sleep_ms(o->settle_ms);
        t = now_ns();
        e = lfs_preserve(c, name, fd, TOKEN, &bytes);
        t = now_ns() - t;
        close(fd);
        if (e < 0)
                return fail("lfs_preserve", e, c);
        if (bytes != o->mib * MIB) {
                fprintf(stderr, "bench-sessions: the broker preserved %" PRIu64 " bytes of %s\n",
                        bytes, name);
                return 1;
        }
        /* An outgoing session: the broker releases the kernel's (unpreserving) and forgets it. */
        e = lfs_session_close(c, name);
        if (e < 0)
                return fail("lfs_session_close", e, c);
        *ret_ns = t;
        return 0;
}

static int do_preserve_rounds(const struct opts *o)
{
        static struct samples raw, broker, rtt;
        struct lfs_client *c = NULL;
        int e, status = 1;

        /* Not registered: no prepare waits for a benchmark. */
        e = broker_connect(o, 0, &c);
        if (e < 0)
                return fail("connect", e, NULL);
        printf("preserve-rounds: %" PRIu64 " rounds of %" PRIu64 " MiB, settle %" PRIu64 " ms\n",
               o->rounds, o->mib, o->settle_ms);
        for (unsigned r = 0; r < o->rounds; r++) {
                bool raw_first = r % 2 == 0;
                uint64_t rt = 0, bt = 0, tt = 0;

                for (int i = 0; i < 2; i++) {
                        if ((i == 0) == raw_first) {
                                if (preserve_raw(o, r, &rt))
                                        goto out;
                        } else if (preserve_broker(o, c, r, &bt, &tt)) {
                                goto out;
                        }
                }
                raw.ns[raw.n++] = rt;
                broker.ns[broker.n++] = bt;
                rtt.ns[rtt.n++] = tt;
                printf("round %u %s: raw %.3f ms, broker %.3f ms (its round trip %.3f ms)\n", r,
                       raw_first ? "raw first" : "broker first", ns_to_ms(rt), ns_to_ms(bt),
                       ns_to_ms(tt));
        }
        print_result("preserve", o->mib, &raw, &broker, &rtt);
        status = 0;
out:
        lfs_close(c);
        return status;
}

/* ---- hold --------------------------------------------------------------------------------- */

/* Appends to a bounded buffer; false once it would not fit. */
static bool append(char *buf, size_t size, size_t *len, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

static bool append(char *buf, size_t size, size_t *len, const char *fmt, ...)
{
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(buf + *len, size - *len, fmt, ap);
        va_end(ap);
        if (n < 0 || (size_t)n >= size - *len)
                return false;
        *len += (size_t)n;
        return true;
}

/* The broker's events until SIGTERM/SIGINT: confirm prepares and the reboot, print each. */
static int hold_serve(struct lfs_client *c)
{
        struct lfs_event ev;
        sigset_t mask;
        bool broker_gone = false;
        int sfd, r;

        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0 || (sfd = signalfd(-1, &mask, SFD_CLOEXEC)) < 0)
                return fail("signalfd", -errno, NULL);
        for (;;) {
                struct pollfd p[2] = {
                        { .fd = sfd, .events = POLLIN },
                        { .fd = broker_gone ? -1 : lfs_get_fd(c), .events = POLLIN },
                };

                while (!broker_gone && (r = lfs_next_event(c, &ev, 0)) == 0) {
                        const char *kind = lfs_event_kind_to_string(ev.kind);

                        printf("event %s id=%" PRIu64 " note=\"%s\"", kind ? kind : "unknown",
                               ev.id, ev.note);
                        if (ev.kind == LFS_EVENT_PREPARE || ev.kind == LFS_EVENT_REBOOT) {
                                /*
                                 * Everything is preserved already. At the reboot the raw
                                 * sessions stay open: the kexec takes them with the process.
                                 */
                                r = lfs_confirm(c, ev.id);
                                printf(" -> %s", r == 0 ? "confirmed" : strerror(-r));
                        }
                        printf("\n");
                        fflush(stdout);
                }
                if (!broker_gone && r != -ETIMEDOUT) {
                        /* The raw sessions do not need the broker: hold on to them anyway. */
                        printf("the broker's connection ended (%s); still holding the raw "
                               "sessions\n",
                               strerror(-r));
                        broker_gone = true;
                }
                if (poll(p, 2, -1) < 0 && errno != EINTR) {
                        r = -errno;
                        close(sfd);
                        return fail("poll", r, NULL);
                }
                if (p[0].revents) {
                        printf("terminated: the sessions are released, nothing is carried\n");
                        close(sfd);
                        return 0;
                }
        }
}

static int do_hold(const struct opts *o)
{
        static char text[STATE_MAX];
        int sessions[SESSIONS_MAX];
        struct lfs_client *c = NULL;
        size_t len = 0;
        int e, status = 1;
        unsigned i, n_raw = 0;

        /* Registered: a workload that holds sessions across the update takes part in it. */
        e = broker_connect(o, LFS_HELLO_REGISTER, &c);
        if (e < 0)
                return fail("connect", e, NULL);
        (void)append(text, sizeof(text), &len, "mib=%" PRIu64 "\nsessions=%" PRIu64 "\n", o->mib,
                     o->sessions);
        for (i = 0; i < o->sessions; i++) {
                char rname[LUO_SESSION_NAME_MAX], bname[LFS_NAME_MAX + 1];
                uint64_t rseed = SEED_HOLD_RAW + i, bseed = SEED_HOLD_BROKER + i, rsum, bsum;
                uint64_t rt, bt;
                int fd;

                snprintf(rname, sizeof(rname), "rr-%u", i);
                snprintf(bname, sizeof(bname), "br-%u", i);
                e = memfd_filled(o->mib, rseed, &fd, &rsum);
                if (e < 0) {
                        fail("memfd", e, NULL);
                        goto out;
                }
                e = raw_session(LUO_IOC_CREATE_SESSION, rname, o->busy_ms, &sessions[n_raw]);
                if (e < 0) {
                        close(fd);
                        fail("CREATE_SESSION", e, NULL);
                        goto out;
                }
                n_raw++;
                rt = now_ns();
                e = raw_preserve(sessions[n_raw - 1], fd, TOKEN);
                rt = now_ns() - rt;
                close(fd); /* the session keeps the file */
                if (e < 0) {
                        fail("PRESERVE_FD", e, NULL);
                        goto out;
                }

                e = memfd_filled(o->mib, bseed, &fd, &bsum);
                if (e < 0) {
                        fail("memfd", e, NULL);
                        goto out;
                }
                e = lfs_session_create(c, bname);
                if (e < 0) {
                        close(fd);
                        fail("lfs_session_create", e, c);
                        goto out;
                }
                bt = now_ns();
                e = lfs_preserve(c, bname, fd, TOKEN, NULL);
                bt = now_ns() - bt;
                close(fd); /* the broker keeps its own */
                if (e < 0) {
                        fail("lfs_preserve", e, c);
                        goto out;
                }
                if (!append(text, sizeof(text), &len,
                            "session %s raw %" PRIu64 " %016" PRIx64 "\n"
                            "session %s broker %" PRIu64 " %016" PRIx64 "\n",
                            rname, rseed, rsum, bname, bseed, bsum)) {
                        fail("the state text", -ENOBUFS, NULL);
                        goto out;
                }
                printf("preserved %s (raw, %.3f ms) and %s (broker, %.3f ms)\n", rname,
                       ns_to_ms(rt), bname, ns_to_ms(bt));
        }
        e = write_text(o->state, text);
        if (e < 0) {
                fail(o->state, e, NULL);
                goto out;
        }
        printf("holding %u raw and %u broker sessions of %" PRIu64 " MiB (state in %s)\n", n_raw,
               n_raw, o->mib, o->state);
        fflush(stdout);
        status = hold_serve(c);
out:
        for (i = 0; i < n_raw; i++)
                close(sessions[i]);
        lfs_close(c);
        return status;
}

/* ---- retrieve-rounds ---------------------------------------------------------------------- */

struct held {
        char name[LFS_NAME_MAX + 1];
        enum kind kind;
        uint64_t seed, sum;
};

/* What hold wrote: the size, and each session with its kind, seed and checksum. */
static int state_read(const char *path, uint64_t *ret_mib, struct held *h, size_t *ret_n)
{
        char line[256], name[LFS_NAME_MAX + 1], kind[16];
        uint64_t mib = 0, seed, sum;
        size_t n = 0;
        FILE *f;

        f = fopen(path, "re");
        if (!f)
                return fail(path, -errno, NULL);
        while (fgets(line, sizeof(line), f)) {
                if (sscanf(line, "mib=%" SCNu64, &mib) == 1)
                        continue;
                if (strncmp(line, "sessions=", 9) == 0)
                        continue;
                if (sscanf(line, "session %48s %15s %" SCNu64 " %" SCNx64, name, kind, &seed,
                           &sum) != 4 ||
                    (strcmp(kind, "raw") != 0 && strcmp(kind, "broker") != 0) ||
                    n >= 2 * SESSIONS_MAX) {
                        fclose(f);
                        fprintf(stderr, "bench-sessions: %s: a line I did not write: %s", path,
                                line);
                        return 1;
                }
                snprintf(h[n].name, sizeof(h[n].name), "%s", name);
                h[n].kind = strcmp(kind, "raw") == 0 ? RAW : BROKER;
                h[n].seed = seed;
                h[n].sum = sum;
                n++;
        }
        fclose(f);
        if (mib == 0 || mib > MIB_MAX || n == 0) {
                fprintf(stderr, "bench-sessions: %s: no size or no sessions in it\n", path);
                return 1;
        }
        *ret_mib = mib;
        *ret_n = n;
        return 0;
}

static int retrieve_raw(const struct opts *o, uint64_t mib, const struct held *h, uint64_t *ret_ns)
{
        uint64_t t;
        int s, fd = -1, e, status;

        e = raw_session(LUO_IOC_RETRIEVE_SESSION, h->name, o->busy_ms, &s);
        if (e < 0)
                return fail("RETRIEVE_SESSION", e, NULL);
        sleep_ms(o->settle_ms);
        t = now_ns();
        e = raw_retrieve_fd(s, TOKEN, &fd);
        t = now_ns() - t;
        if (e < 0) {
                close(s);
                return fail("RETRIEVE_FD", e, NULL);
        }
        status = memfd_check(fd, mib, h->seed, h->sum, h->name);
        close(fd);
        if (status == 0 && (e = raw_finish(s)) < 0)
                status = fail("FINISH", e, NULL);
        close(s);
        *ret_ns = t;
        return status;
}

static int retrieve_broker(const struct opts *o, struct lfs_client *c, uint64_t mib,
                           const struct held *h, uint64_t *ret_ns, uint64_t *ret_rtt)
{
        uint64_t t;
        int fd = -1, e, status;

        e = lfs_session_retrieve(c, h->name);
        if (e < 0)
                return fail("lfs_session_retrieve", e, c);
        if (broker_rtt(o, c, h->name, ret_rtt))
                return 1;
        sleep_ms(o->settle_ms);
        t = now_ns();
        e = lfs_retrieve_fd(c, h->name, TOKEN, &fd);
        t = now_ns() - t;
        if (e < 0)
                return fail("lfs_retrieve_fd", e, c);
        status = memfd_check(fd, mib, h->seed, h->sum, h->name);
        close(fd);
        if (status == 0 && (e = lfs_session_finish(c, h->name)) < 0)
                status = fail("lfs_session_finish", e, c);
        *ret_ns = t;
        return status;
}

static int do_retrieve_rounds(const struct opts *o)
{
        static struct samples raw, broker, rtt;
        struct held h[2 * SESSIONS_MAX];
        const struct held *rs[SESSIONS_MAX], *bs[SESSIONS_MAX];
        struct lfs_client *c = NULL;
        size_t n = 0, nr = 0, nb = 0;
        uint64_t mib = 0;
        int e, status = 1;

        if (state_read(o->state, &mib, h, &n))
                return 1;
        for (size_t i = 0; i < n; i++) {
                if (h[i].kind == RAW && nr < SESSIONS_MAX)
                        rs[nr++] = &h[i];
                else if (h[i].kind == BROKER && nb < SESSIONS_MAX)
                        bs[nb++] = &h[i];
        }
        if (nr != nb) {
                fprintf(stderr, "bench-sessions: %s: %zu raw and %zu broker sessions\n", o->state,
                        nr, nb);
                return 1;
        }
        e = broker_connect(o, 0, &c);
        if (e < 0)
                return fail("connect", e, NULL);
        printf("retrieve-rounds: %zu sessions of each kind, %" PRIu64 " MiB, settle %" PRIu64
               " ms\n",
               nr, mib, o->settle_ms);
        for (size_t i = 0; i < nr; i++) {
                bool raw_first = i % 2 == 0;
                uint64_t rt = 0, bt = 0, tt = 0;

                for (int k = 0; k < 2; k++) {
                        if ((k == 0) == raw_first) {
                                if (retrieve_raw(o, mib, rs[i], &rt))
                                        goto out;
                        } else if (retrieve_broker(o, c, mib, bs[i], &bt, &tt)) {
                                goto out;
                        }
                }
                raw.ns[raw.n++] = rt;
                broker.ns[broker.n++] = bt;
                rtt.ns[rtt.n++] = tt;
                printf("round %zu %s: raw %s %.3f ms, broker %s %.3f ms (its round trip %.3f "
                       "ms), both bit-exact\n",
                       i, raw_first ? "raw first" : "broker first", rs[i]->name, ns_to_ms(rt),
                       bs[i]->name, ns_to_ms(bt), ns_to_ms(tt));
        }
        print_result("retrieve", mib, &raw, &broker, &rtt);
        status = 0;
out:
        lfs_close(c);
        return status;
}

/* ---- main --------------------------------------------------------------------------------- */

static int usage_error(const char *msg, const char *arg)
{
        fprintf(stderr, "bench-sessions: %s%s\n", msg, arg ? arg : "");
        return -1;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
        enum {
                O_SOCKET = 256,
                O_NAME,
                O_STATE,
                O_MIB,
                O_ROUNDS,
                O_SESSIONS,
                O_SETTLE,
                O_BUSY,
                O_WAIT,
                O_HELP
        };
        static const struct option longopts[] = {
                { "socket", required_argument, NULL, O_SOCKET },
                { "name", required_argument, NULL, O_NAME },
                { "state", required_argument, NULL, O_STATE },
                { "mib", required_argument, NULL, O_MIB },
                { "rounds", required_argument, NULL, O_ROUNDS },
                { "sessions", required_argument, NULL, O_SESSIONS },
                { "settle-ms", required_argument, NULL, O_SETTLE },
                { "busy-ms", required_argument, NULL, O_BUSY },
                { "wait", required_argument, NULL, O_WAIT },
                { "help", no_argument, NULL, O_HELP },
                { 0 },
        };
        int c;

        *o = (struct opts){ .name = "bench-sessions",
                            .mib = 128,
                            .rounds = 7,
                            .sessions = 4,
                            .settle_ms = 500,
                            .busy_ms = 5000,
                            .wait_s = 30 };
        while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
                switch (c) {
                case O_SOCKET:
                        o->socket = optarg;
                        break;
                case O_NAME:
                        o->name = optarg;
                        break;
                case O_STATE:
                        o->state = optarg;
                        break;
                case O_MIB:
                        if (parse_u64(optarg, 1, MIB_MAX, &o->mib) < 0)
                                return usage_error("--mib: 1..65536, not ", optarg);
                        break;
                case O_ROUNDS:
                        if (parse_u64(optarg, 1, ROUNDS_MAX, &o->rounds) < 0)
                                return usage_error("--rounds: 1..1000, not ", optarg);
                        break;
                case O_SESSIONS:
                        if (parse_u64(optarg, 1, SESSIONS_MAX, &o->sessions) < 0)
                                return usage_error("--sessions: 1..16, not ", optarg);
                        break;
                case O_SETTLE:
                        if (parse_u64(optarg, 0, 60000, &o->settle_ms) < 0)
                                return usage_error("--settle-ms: 0..60000, not ", optarg);
                        break;
                case O_BUSY:
                        if (parse_u64(optarg, 0, 600000, &o->busy_ms) < 0)
                                return usage_error("--busy-ms: 0..600000, not ", optarg);
                        break;
                case O_WAIT:
                        if (parse_u64(optarg, 0, 3600, &o->wait_s) < 0)
                                return usage_error("--wait: 0..3600 seconds, not ", optarg);
                        break;
                case O_HELP:
                        usage(stdout);
                        exit(0);
                default:
                        return -1;
                }
        }
        if (optind != argc - 1)
                return usage_error("one mode: preserve-rounds, hold or retrieve-rounds", NULL);
        o->mode = argv[optind];
        if (strcmp(o->mode, "preserve-rounds") != 0 && strcmp(o->mode, "hold") != 0 &&
            strcmp(o->mode, "retrieve-rounds") != 0)
                return usage_error("unknown mode ", o->mode);
        if (strcmp(o->mode, "preserve-rounds") != 0 && !o->state)
                return usage_error(o->mode, " needs --state=FILE");
        return 0;
}

int main(int argc, char **argv)
{
        struct opts o;

        /* Lines reach a pipe or file as they are printed: the scenario waits for them. */
        setvbuf(stdout, NULL, _IOLBF, 0);
        if (parse_args(argc, argv, &o) < 0) {
                fprintf(stderr, "bench-sessions: --help for the usage\n");
                return 2;
        }
        if (strcmp(o.mode, "preserve-rounds") == 0)
                return do_preserve_rounds(&o);
        if (strcmp(o.mode, "hold") == 0)
                return do_hold(&o);
        return do_retrieve_rounds(&o);
}
