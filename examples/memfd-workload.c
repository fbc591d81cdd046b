/*
 * memfd-workload.c: an example workload for VMM authors: a memfd standing in
 * for guest memory kept across a live update with libluofleet-session
 * (docs/sessions.md). Three modes:
 *
 *   preserve  fill a memfd of N MiB with a pattern from --seed, preserve it
 *             in session S under --token, then serve events: confirm every
 *             prepare (or --veto it, or --no-confirm to let it time out),
 *             print each event, exit 0 at the reboot event (or at SIGTERM).
 *   restore   after the update: retrieve session S and the file, check its
 *             size and every byte against the pattern, report the time, and
 *             finish the session (unless --no-finish).
 *   list      the caller's sessions and their files.
 *
 * Only libc and the library: copy what you need. One thread; signals by
 * signalfd so the event loop is a single poll().
 */
#include <errno.h>
#include <ctype.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "luofleet/session.h"
#include "memfd-pattern.h"

#define MIB (UINT64_C(1) << 20)
#define MIB_MAX (UINT64_C(1) << 20) /* 1 TiB */

struct opts {
        const char *socket; /* NULL: $LUOFLEET_SESSIONS_SOCKET or the default */
        const char *name;
        const char *session;
        uint64_t mib;
        uint64_t token;
        uint64_t seed;
        const char *state_file;
        const char *reboot_time;
        const char *veto;
        bool no_confirm;
        bool no_finish;
        uint64_t wait_s;    /* retry connecting this long while there is no broker yet */
        uint64_t settle_ms; /* preserve: pause between creating the session and preserving */
        const char *mode;
};

static void usage(FILE *f)
{
        fprintf(f,
                "usage: luofleet-memfd-workload [OPTIONS] preserve|restore|list\n"
                "  --socket=PATH        the broker's socket (default $LUOFLEET_SESSIONS_SOCKET,\n"
                "                       else %s)\n"
                "  --name=NAME          this workload's name (default memfd-workload)\n"
                "  --session=S          the session (preserve, restore)\n"
                "  --mib=N              the memfd's size in MiB (preserve, restore)\n"
                "  --token=T            the file's token in the session (default 1)\n"
                "  --seed=X             the pattern's seed (default 1)\n"
                "  --state-file=FILE    preserve: write size and checksum there;\n"
                "                       restore: check them too\n"
                "  --veto=REASON        preserve: veto every prepare\n"
                "  --no-confirm         preserve: never answer a prepare\n"
                "  --reboot-time=FILE   preserve: write the reboot event's arrival there\n"
                "                       (CLOCK_REALTIME us); restore: read it and print\n"
                "                       blackout-to-data-ms\n"
                "  --no-finish          restore: leave the session unfinished\n"
                "  --settle-ms=MS       preserve: wait this long between creating the session\n"
                "                       and preserving the memfd\n"
                "  --wait=SECONDS       retry connecting this long while the broker is not\n"
                "                       there yet (default 0: fail at once)\n"
                "exit status: 0 ok, 1 failure, 2 usage\n",
                LFS_SOCKET_DEFAULT);
}

/* A one-line message on stderr; the exit status of a failure. */
static int fail(const char *what, int r, struct lfs_client *c)
{
        const char *msg = c ? lfs_last_message(c) : "";

        if (*msg)
                fprintf(stderr, "memfd-workload: %s: %s (%s)\n", what, strerror(-r), msg);
        else
                fprintf(stderr, "memfd-workload: %s: %s\n", what, strerror(-r));
        return 1;
}

/* Decimal, or hexadecimal after "0x"; nothing else, nothing after it. */
static int parse_u64(const char *s, uint64_t max, uint64_t *ret)
{
        int base = strncmp(s, "0x", 2) == 0 ? 16 : 10;
        unsigned long long v;
        char *end;

        if (base == 16)
                s += 2;
        if (!isxdigit((unsigned char)*s))
                return -EINVAL;
        errno = 0;
        v = strtoull(s, &end, base);
        if (errno || *end || v > max)
                return -ERANGE;
        *ret = v;
        return 0;
}

static uint64_t now_usec(clockid_t clock)
{
        struct timespec ts;

        clock_gettime(clock, &ts);
        return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* ---- small files ------------------------------------------------------------------------ */

static int read_text(const char *path, char *buf, size_t size)
{
        ssize_t n;
        int fd = open(path, O_RDONLY | O_CLOEXEC);

        if (fd < 0)
                return -errno;
        n = read(fd, buf, size - 1);
        close(fd);
        if (n < 0)
                return -errno;
        buf[n] = 0;
        return 0;
}

/* The value after "key=" on its own line of text. */
static int text_u64(const char *text, const char *key, uint64_t *ret)
{
        size_t k = strlen(key);

        for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
                if (strncmp(p, key, k) == 0 && p[k] == '=') {
                        char v[32];
                        size_t n = strcspn(p + k + 1, "\n");
                        if (n >= sizeof(v))
                                return -ERANGE;
                        memcpy(v, p + k + 1, n);
                        v[n] = 0;
                        return parse_u64(v, UINT64_MAX, ret);
                }
        return -ENOENT;
}

/*
 * Connect, waiting up to --wait seconds for the broker to be there: a VMM that
 * starts with the machine does not wait for the agent's HTTP side to be up,
 * only for the broker's socket, which comes first.
 */
static int connect_waiting(const struct opts *o, unsigned flags, struct lfs_client **ret)
{
        uint64_t until = now_usec(CLOCK_MONOTONIC) + o->wait_s * 1000000;
        int r;

        for (;;) {
                r = lfs_connect(o->socket, o->name, flags, ret);
                if ((r != -ENOENT && r != -ECONNREFUSED) || now_usec(CLOCK_MONOTONIC) >= until)
                        return r;
                struct timespec ts = { .tv_nsec = 5 * 1000 * 1000 };
                nanosleep(&ts, NULL);
        }
}

/* ---- preserve ----------------------------------------------------------------------------- */

/* One event: one line, and the answer a prepare needs. Returns 1 at the reboot. */
static int on_event(struct lfs_client *c, const struct lfs_event *ev, const struct opts *o)
{
        const char *kind = lfs_event_kind_to_string(ev->kind);
        int r;

        if (ev->kind == LFS_EVENT_REBOOT) {
                uint64_t at = now_usec(CLOCK_REALTIME);
                char line[32];

                printf("event reboot id=%" PRIu64 " note=\"%s\" at-usec=%" PRIu64 "\n", ev->id,
                       ev->note, at);
                snprintf(line, sizeof(line), "%" PRIu64 "\n", at);
                if (o->reboot_time && (r = write_text(o->reboot_time, line)) < 0) {
                        fail(o->reboot_time, r, NULL);
                        return -1;
                }
                /*
                 * Ready for the kexec: a VMM answers once its vCPUs are paused, so the
                 * memory the next kernel gets is consistent. The reboot waits for this
                 * (a little while: it does not wait for a workload that never answers).
                 */
                r = lfs_confirm(c, ev->id);
                if (r < 0 && r != -ESTALE)
                        fail("confirm reboot", r, c);
                fflush(stdout);
                return 1;
        }
        printf("event %s id=%" PRIu64, kind ? kind : "unknown", ev->id);
        if (ev->kind == LFS_EVENT_PREPARE)
                printf(" deadline-ms=%" PRIu64, ev->deadline_ms);
        printf(" note=\"%s\"", ev->note);
        if (ev->kind == LFS_EVENT_PREPARE) {
                /* A VMM would quiesce its devices here; the memory is preserved already. */
                if (o->no_confirm) {
                        printf(" -> not answered\n");
                        return 0;
                }
                r = o->veto ? lfs_veto(c, ev->id, o->veto) : lfs_confirm(c, ev->id);
                if (r == -ESTALE) {
                        printf(" -> too late, that prepare is over\n");
                        return 0;
                }
                if (r < 0) {
                        printf("\n");
                        fail(o->veto ? "veto" : "confirm", r, c);
                        return -1;
                }
                printf(o->veto ? " -> vetoed\n" : " -> confirmed\n");
                return 0;
        }
        printf("\n");
        return 0;
}

/* Until the reboot event (0), SIGTERM or SIGINT (0), or a failure (1): the exit status. */
static int serve_events(struct lfs_client *c, const struct opts *o)
{
        struct lfs_event ev;
        sigset_t mask;
        int sfd, r, status = 1;

        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0 || (sfd = signalfd(-1, &mask, SFD_CLOEXEC)) < 0)
                return fail("signalfd", -errno, NULL);

        for (;;) {
                struct pollfd p[2] = {
                        { .fd = lfs_get_fd(c), .events = POLLIN },
                        { .fd = sfd, .events = POLLIN },
                };

                /* Events that arrived while a confirm waited are queued, not on the socket. */
                while ((r = lfs_next_event(c, &ev, 0)) == 0) {
                        r = on_event(c, &ev, o);
                        if (r < 0)
                                goto out;
                        if (r == 1) {
                                status = 0;
                                goto out;
                        }
                }
                if (r != -ETIMEDOUT) {
                        fail("waiting for events", r, c);
                        goto out;
                }
                if (poll(p, 2, -1) < 0 && errno != EINTR) {
                        fail("poll", -errno, NULL);
                        goto out;
                }
                if (p[1].revents) {
                        printf("terminated\n");
                        status = 0;
                        goto out;
                }
        }
out:
        close(sfd);
        return status;
}

/* The "guest memory": a memfd (the one kind of file Linux 7.3 preserves), filled. */
static int make_memory(const struct opts *o, int *ret_fd, uint64_t *ret_sum)
{
        uint64_t size = o->mib * MIB;
        uint64_t *words;
        int fd;

        fd = memfd_create("memfd-workload", MFD_CLOEXEC);
        if (fd < 0)
                return fail("memfd_create", -errno, NULL);
        if (ftruncate(fd, (off_t)size) < 0) {
                close(fd);
                return fail("ftruncate", -errno, NULL);
        }
        words = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (words == MAP_FAILED) {
                close(fd);
                return fail("mmap", -errno, NULL);
        }
        *ret_sum = fill(words, size / 8, o->seed);
        munmap(words, size);
        *ret_fd = fd;
        return 0;
}

static int preserve(struct lfs_client *c, int fd, const struct opts *o)
{
        uint64_t bytes = 0;
        int r;

        r = lfs_session_create(c, o->session);
        if (r < 0)
                return fail("create session", r, c);
        /* A VMM creates its session at start and preserves memory as it allocates it. */
        if (o->settle_ms) {
                struct timespec ts = { .tv_sec = (time_t)(o->settle_ms / 1000),
                                       .tv_nsec = (long)(o->settle_ms % 1000) * 1000000 };
                nanosleep(&ts, NULL);
        }
        uint64_t t = now_usec(CLOCK_MONOTONIC);
        r = lfs_preserve(c, o->session, fd, o->token, &bytes);
        if (r < 0)
                return fail("preserve", r, c);
        t = now_usec(CLOCK_MONOTONIC) - t;
        printf("preserved %" PRIu64 " bytes in session %s under token %" PRIu64 "\n", bytes,
               o->session, o->token);
        printf("preserve-ms=%.3f\n", (double)t / 1000.0);
        return serve_events(c, o);
}

static int do_preserve(const struct opts *o)
{
        struct lfs_client *c = NULL;
        uint64_t sum = 0;
        int fd = -1, r, status;

        if (make_memory(o, &fd, &sum) != 0)
                return 1;
        printf("filled %" PRIu64 " MiB, seed %" PRIu64 ", checksum %016" PRIx64 "\n", o->mib,
               o->seed, sum);
        if (o->state_file) {
                char text[128];
                snprintf(text, sizeof(text),
                         "bytes=%" PRIu64 "\nchecksum=0x%016" PRIx64 "\nseed=%" PRIu64 "\n",
                         o->mib * MIB, sum, o->seed);
                if ((r = write_text(o->state_file, text)) < 0) {
                        close(fd);
                        return fail(o->state_file, r, NULL);
                }
        }
        /* Registered: every prepare now waits for our confirm. */
        r = connect_waiting(o, LFS_HELLO_REGISTER, &c);
        if (r < 0) {
                close(fd);
                return fail("connect", r, NULL);
        }
        status = preserve(c, fd, o);
        lfs_close(c);
        /* The broker holds its own reference; a VMM would keep using ours until it exits. */
        close(fd);
        return status;
}

/* ---- restore ------------------------------------------------------------------------------ */

/* The size and every word of the file against the pattern: 0 when bit-exact. */
static int check_memory(int fd, const struct opts *o, uint64_t *ret_sum)
{
        uint64_t want = o->mib * MIB;
        size_t bad, first = 0;
        struct stat st;
        void *p;

        if (fstat(fd, &st) < 0)
                return fail("fstat", -errno, NULL);
        if ((uint64_t)st.st_size != want) {
                fprintf(stderr, "memfd-workload: size %jd, expected %" PRIu64 "\n",
                        (intmax_t)st.st_size, want);
                return 1;
        }
        p = mmap(NULL, want, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED)
                return fail("mmap", -errno, NULL);
        bad = verify(p, want / 8, o->seed, ret_sum, &first);
        munmap(p, want);
        if (bad) {
                fprintf(stderr,
                        "memfd-workload: checksum MISMATCH: %zu of %" PRIu64
                        " words differ, the first at byte %zu\n",
                        bad, want / 8, first * 8);
                return 1;
        }
        return 0;
}

/* What the preserve run recorded, and the blackout since the reboot. */
static int check_records(const struct opts *o, uint64_t sum)
{
        int r;

        if (o->state_file) {
                char text[256];
                uint64_t was;
                if ((r = read_text(o->state_file, text, sizeof(text))) < 0)
                        return fail(o->state_file, r, NULL);
                if (text_u64(text, "checksum", &was) < 0 || was != sum) {
                        fprintf(stderr, "memfd-workload: %s records another checksum\n",
                                o->state_file);
                        return 1;
                }
        }
        if (o->reboot_time) {
                char text[64], back[4200];
                uint64_t then, now = now_usec(CLOCK_REALTIME);
                struct stat sb, sa;
                if ((r = read_text(o->reboot_time, text, sizeof(text))) < 0)
                        return fail(o->reboot_time, r, NULL);
                text[strcspn(text, " \n")] = 0;
                if (parse_u64(text, UINT64_MAX, &then) < 0) {
                        fprintf(stderr, "memfd-workload: %s: not a time\n", o->reboot_time);
                        return 1;
                }
                /* Signed: a clock stepped across the kexec can put "then" after "now". */
                printf("blackout-to-data-ms=%.1f\n", ((double)now - (double)then) / 1000.0);
                /*
                 * The same interval by the file system's clock: the reboot-time file's
                 * mtime against a file written now. Beside the wall clock above because
                 * a machine without a synchronised clock (a test VM reads its clock from
                 * the RTC's whole second after the kexec) may step it; on a shared
                 * folder the mtimes are the host's.
                 */
                if (snprintf(back, sizeof(back), "%s.back", o->reboot_time) < (int)sizeof(back) &&
                    write_text(back, "data back\n") == 0 && stat(o->reboot_time, &sb) == 0 &&
                    stat(back, &sa) == 0)
                        printf("blackout-to-data-ms-by-mtime=%.1f\n",
                               ((double)(sa.st_mtim.tv_sec - sb.st_mtim.tv_sec) * 1e3 +
                                (double)(sa.st_mtim.tv_nsec - sb.st_mtim.tv_nsec) / 1e6));
        }
        return 0;
}

static int restore(struct lfs_client *c, const struct opts *o, uint64_t t0)
{
        uint64_t sum = 0;
        int fd, r, status;

        /* Where the time from our start to the data goes: the broker's start-up
         * (connect-ms), the session, the fd, reading it (verify-ms). */
        uint64_t t = now_usec(CLOCK_MONOTONIC);
        printf("connect-ms=%.3f\n", (double)(t - t0) / 1000.0);
        r = lfs_session_retrieve(c, o->session);
        if (r < 0)
                return fail("retrieve session", r, c);
        uint64_t ts = now_usec(CLOCK_MONOTONIC);
        printf("retrieve-session-ms=%.3f\n", (double)(ts - t) / 1000.0);
        t = ts;
        r = lfs_retrieve_fd(c, o->session, o->token, &fd);
        if (r < 0)
                return fail("retrieve fd", r, c);
        t = now_usec(CLOCK_MONOTONIC) - t;
        printf("retrieve-ms=%.3f\n", (double)t / 1000.0);
        t = now_usec(CLOCK_MONOTONIC);
        status = check_memory(fd, o, &sum);
        printf("verify-ms=%.3f\n", (double)(now_usec(CLOCK_MONOTONIC) - t) / 1000.0);
        /* A VMM would map it as guest memory now; we only needed to read it. */
        close(fd);
        if (status)
                return status;
        printf("restored %" PRIu64 " MiB in %.1f ms, checksum ok (%016" PRIx64 ")\n", o->mib,
               (double)(now_usec(CLOCK_MONOTONIC) - t0) / 1000.0, sum);
        status = check_records(o, sum);
        if (status)
                return status;
        if (!o->no_finish) {
                /* Done with it: the broker frees what was not retrieved. */
                r = lfs_session_finish(c, o->session);
                if (r < 0)
                        return fail("finish session", r, c);
                printf("finished session %s\n", o->session);
        }
        return 0;
}

static int do_restore(const struct opts *o)
{
        uint64_t t0 = now_usec(CLOCK_MONOTONIC);
        struct lfs_client *c = NULL;
        int r, status;

        r = connect_waiting(o, 0, &c);
        if (r < 0)
                return fail("connect", r, NULL);
        status = restore(c, o, t0);
        lfs_close(c);
        return status;
}

/* ---- list --------------------------------------------------------------------------------- */

static int do_list(const struct opts *o)
{
        struct lfs_session_info *s = NULL;
        struct lfs_client *c = NULL;
        size_t n = 0;
        int r;

        r = lfs_connect(o->socket, o->name, 0, &c);
        if (r < 0)
                return fail("connect", r, NULL);
        r = lfs_list(c, &s, &n);
        if (r < 0) {
                fail("list", r, c);
                lfs_close(c);
                return 1;
        }
        printf("%-24s %-10s %5s %14s\n", "SESSION", "PHASE", "FDS", "BYTES");
        for (size_t i = 0; i < n; i++) {
                struct lfs_fd_info *f = NULL;
                size_t m = 0;
                const char *phase = lfs_phase_to_string(s[i].phase);

                printf("%-24s %-10s %5" PRIu64 " %14" PRIu64 "\n", s[i].name, phase ? phase : "?",
                       s[i].fds, s[i].bytes);
                if (lfs_show(c, s[i].name, &f, &m) < 0)
                        continue;
                for (size_t j = 0; j < m; j++)
                        printf("  token %" PRIu64 ": %" PRIu64 " bytes%s\n", f[j].token, f[j].bytes,
                               f[j].retrieved ? ", retrieved" : "");
                free(f);
        }
        free(s);
        lfs_close(c);
        return 0;
}

/* ---- main --------------------------------------------------------------------------------- */

static int usage_error(const char *msg, const char *arg)
{
        fprintf(stderr, "memfd-workload: %s%s\n", msg, arg ? arg : "");
        return -1;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
        enum {
                O_SOCKET = 256,
                O_NAME,
                O_SESSION,
                O_MIB,
                O_TOKEN,
                O_SEED,
                O_STATE,
                O_REBOOT,
                O_VETO,
                O_NO_CONFIRM,
                O_NO_FINISH,
                O_WAIT,
                O_SETTLE,
                O_HELP
        };
        static const struct option longopts[] = {
                { "socket", required_argument, NULL, O_SOCKET },
                { "name", required_argument, NULL, O_NAME },
                { "session", required_argument, NULL, O_SESSION },
                { "mib", required_argument, NULL, O_MIB },
                { "token", required_argument, NULL, O_TOKEN },
                { "seed", required_argument, NULL, O_SEED },
                { "state-file", required_argument, NULL, O_STATE },
                { "reboot-time", required_argument, NULL, O_REBOOT },
                { "veto", required_argument, NULL, O_VETO },
                { "no-confirm", no_argument, NULL, O_NO_CONFIRM },
                { "no-finish", no_argument, NULL, O_NO_FINISH },
                { "wait", required_argument, NULL, O_WAIT },
                { "settle-ms", required_argument, NULL, O_SETTLE },
                { "help", no_argument, NULL, O_HELP },
                { 0 },
        };
        int c;

        *o = (struct opts){ .name = "memfd-workload", .token = 1, .seed = 1 };
        while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
                switch (c) {
                case O_SOCKET:
                        o->socket = optarg;
                        break;
                case O_NAME:
                        o->name = optarg;
                        break;
                case O_SESSION:
                        o->session = optarg;
                        break;
                case O_MIB:
                        if (parse_u64(optarg, MIB_MAX, &o->mib) < 0 || o->mib == 0)
                                return usage_error("--mib: 1..1048576, not ", optarg);
                        break;
                case O_TOKEN:
                        if (parse_u64(optarg, UINT64_MAX, &o->token) < 0)
                                return usage_error("--token: a number, not ", optarg);
                        break;
                case O_SEED:
                        if (parse_u64(optarg, UINT64_MAX, &o->seed) < 0)
                                return usage_error("--seed: a number, not ", optarg);
                        break;
                case O_STATE:
                        o->state_file = optarg;
                        break;
                case O_REBOOT:
                        o->reboot_time = optarg;
                        break;
                case O_VETO:
                        o->veto = optarg;
                        break;
                case O_NO_CONFIRM:
                        o->no_confirm = true;
                        break;
                case O_NO_FINISH:
                        o->no_finish = true;
                        break;
                case O_SETTLE:
                        if (parse_u64(optarg, 60000, &o->settle_ms) < 0)
                                return usage_error("--settle-ms: milliseconds, not ", optarg);
                        break;
                case O_WAIT:
                        if (parse_u64(optarg, 3600, &o->wait_s) < 0)
                                return usage_error("--wait: seconds, not ", optarg);
                        break;
                case O_HELP:
                        usage(stdout);
                        exit(0);
                default:
                        return -1;
                }
        }
        if (optind != argc - 1)
                return usage_error("one mode: preserve, restore or list", NULL);
        o->mode = argv[optind];
        if (strcmp(o->mode, "list") == 0)
                return 0;
        if (strcmp(o->mode, "preserve") != 0 && strcmp(o->mode, "restore") != 0)
                return usage_error("unknown mode ", o->mode);
        if (!o->session || o->mib == 0)
                return usage_error("preserve and restore need --session and --mib", NULL);
        if (o->veto && o->no_confirm)
                return usage_error("--veto and --no-confirm exclude each other", NULL);
        return 0;
}

int main(int argc, char **argv)
{
        struct opts o;

        /* Lines reach a pipe as they are printed: a test harness waits for them. */
        setvbuf(stdout, NULL, _IOLBF, 0);
        if (parse_args(argc, argv, &o) < 0) {
                usage(stderr);
                return 2;
        }
        if (strcmp(o.mode, "preserve") == 0)
                return do_preserve(&o);
        if (strcmp(o.mode, "restore") == 0)
                return do_restore(&o);
        return do_list(&o);
}
