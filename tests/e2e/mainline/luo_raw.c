/* luofleet e2e helper (static, in the mainline guest as /bin/luo_raw): the raw live-update
 * figures of the mainline kernel's sessions interface (docs kernel-abi.md §B) with no agent,
 * through a real kexec. Two stages, one per boot:
 *
 *   luo_raw stage1 MIB KERNEL INITRD CMDLINE SHARE
 *       errno checks (§B), then session "luo-raw" with a memfd of MIB MiB filled with a
 *       deterministic pattern (checksum computed), PRESERVE_FD (timed), kexec_file_load of
 *       KERNEL + INITRD with CMDLINE, SHARE/luo-raw.stage1 (the figures, and
 *       reboot_realtime_us = CLOCK_REALTIME just before reboot), reboot(LINUX_REBOOT_CMD_KEXEC).
 *       Returns only on failure.
 *   luo_raw stage2 MIB SHARE
 *       RETRIEVE_SESSION, RETRIEVE_FD (timed), bit-exact verification against the pattern and
 *       stage 1's checksum, FINISH; prints the raw blackout (reboot call -> data verified
 *       back), the kernel uptime when stage 2 started, preserve/retrieve ms and ms per GiB.
 *
 * Output: "ok N - what" / "not ok N - what" check lines, "luo_raw: ..." information, and in
 * stage 2 "RESULT key=value ..." lines. Exit 0 when every check passed.
 *
 * Blackout, two clocks: the guest's CLOCK_REALTIME carries across the kexec (the next kernel
 * reads the RTC again), but only in whole seconds of the RTC, so the realtime difference can
 * be off by up to a second. The share is a host folder: stat() of a file on it returns the
 * host's mtime (ns), so the same interval is also measured on the host's clock (the mtimes of
 * stage 1's last and stage 2's first write, corrected by the guest's own intra-boot gaps).
 *
 * The ioctl numbers and structs are written here from the ABI description, not from kernel
 * headers.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* --- the mainline live-update ABI (kernel-abi.md §B): _IO(0xBA, nr) = 0xBA00 + nr --- */
#define LUO_CREATE_SESSION 0xBA00
#define LUO_RETRIEVE_SESSION 0xBA01
#define LUO_PRESERVE_FD 0xBA40
#define LUO_RETRIEVE_FD 0xBA41
#define LUO_FINISH 0xBA42
#define LUO_NAME_LEN 64

struct luo_session_arg { /* CREATE_SESSION, RETRIEVE_SESSION: 72 bytes */
        uint32_t size;
        int32_t fd; /* out: the session fd (O_CLOEXEC) */
        char name[LUO_NAME_LEN];
};

struct luo_fd_arg { /* PRESERVE_FD (fd in), RETRIEVE_FD (fd out): 16 bytes */
        uint32_t size;
        int32_t fd;
        uint64_t token;
};

struct luo_finish_arg { /* FINISH: 8 bytes */
        uint32_t size;
        uint32_t reserved;
};

_Static_assert(sizeof(struct luo_session_arg) == 72, "session arg is 72 bytes");
_Static_assert(sizeof(struct luo_fd_arg) == 16, "fd arg is 16 bytes");
_Static_assert(sizeof(struct luo_finish_arg) == 8, "finish arg is 8 bytes");

#define SESSION "luo-raw"
#define NEG_SESSION "luo-raw-neg"
#define TOKEN_DATA 0x6c756f2d72617701ULL
#define TOKEN_STAMP 0x6c756f2d72617702ULL
#define SEED 0x9e3779b97f4a7c15ULL
#define STAMP_MAGIC 0x706d617473776172ULL

/* The stamp memfd (preserved beside the data): stage 1 writes into it after PRESERVE_FD,
 * right before the reboot call; the pages travel, so stage 2 reads the exact figures. */
struct stamp {
        uint64_t magic;
        int64_t reboot_realtime_us; /* CLOCK_REALTIME just before reboot() */
        int64_t file_written_rt_us; /* CLOCK_REALTIME after luo-raw.stage1 was written */
        int64_t reboot_boottime_us; /* CLOCK_BOOTTIME just before reboot() */
};

static int checks, failures;

static void check(int cond, const char *what, const char *detail)
{
        checks++;
        if (cond) {
                printf("ok %d - %s\n", checks, what);
        } else {
                failures++;
                printf("not ok %d - %s%s%s\n", checks, what, detail ? ": " : "",
                       detail ? detail : "");
        }
}

static const char *ename(int e)
{
        switch (e) {
        case 0:
                return "success";
        case EINVAL:
                return "EINVAL";
        case ENOENT:
                return "ENOENT";
        case EEXIST:
                return "EEXIST";
        case EBUSY:
                return "EBUSY";
        case EPERM:
                return "EPERM";
        case EBADF:
                return "EBADF";
        case E2BIG:
                return "E2BIG";
        case ENOMEM:
                return "ENOMEM";
        case ENOSYS:
                return "ENOSYS";
        case ENOTTY:
                return "ENOTTY";
        case EACCES:
                return "EACCES";
        default:
                return strerror(e);
        }
}

/* expect_errno: the call returned ret (< 0 with errno set on failure); want 0 = success */
static void expect_errno(long ret, int err, int want, const char *what)
{
        char d[96];
        int got = ret < 0 ? err : 0;
        snprintf(d, sizeof(d), "got %s, want %s", ename(got), ename(want));
        check(got == want, what, got == want ? NULL : d);
}

static int64_t clock_us(clockid_t c)
{
        struct timespec ts;
        clock_gettime(c, &ts);
        return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t mtime_us(const char *path)
{
        struct stat st;
        if (stat(path, &st) < 0)
                return -1;
        return (int64_t)st.st_mtim.tv_sec * 1000000 + st.st_mtim.tv_nsec / 1000;
}

static int session_ioctl(int dev, unsigned long req, const char *name)
{
        struct luo_session_arg a;
        size_t n = strlen(name);
        memset(&a, 0, sizeof(a));
        a.size = sizeof(a);
        if (n >= sizeof(a.name)) {
                errno = ENAMETOOLONG;
                return -1;
        }
        memcpy(a.name, name, n);
        if (ioctl(dev, req, &a) < 0)
                return -1;
        return a.fd;
}

static int preserve_fd(int session, int fd, uint64_t token)
{
        struct luo_fd_arg a = { .size = sizeof(a), .fd = fd, .token = token };
        return ioctl(session, LUO_PRESERVE_FD, &a);
}

static int retrieve_fd(int session, uint64_t token)
{
        struct luo_fd_arg a = { .size = sizeof(a), .fd = -1, .token = token };
        if (ioctl(session, LUO_RETRIEVE_FD, &a) < 0)
                return -1;
        return a.fd;
}

static int finish(int session)
{
        struct luo_finish_arg a = { .size = sizeof(a), .reserved = 0 };
        return ioctl(session, LUO_FINISH, &a);
}

static uint64_t mix(uint64_t x)
{
        x += SEED;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
        return x ^ (x >> 31);
}

/* FNV-1a style fold over 64-bit words */
static uint64_t checksum(const uint64_t *p, size_t words)
{
        uint64_t h = 0xcbf29ce484222325ULL;
        for (size_t i = 0; i < words; i++)
                h = (h ^ p[i]) * 0x100000001b3ULL;
        return h;
}

static int parse_mib(const char *s, size_t *mib)
{
        char *end;
        unsigned long v;
        errno = 0;
        v = strtoul(s, &end, 10);
        if (errno || *end || v == 0 || v > 65536) {
                fprintf(stderr, "luo_raw: bad MiB count '%s'\n", s);
                return -1;
        }
        *mib = v;
        return 0;
}

static double per_gib(int64_t us, size_t mib)
{
        return us / 1000.0 * 1024.0 / (double)mib;
}

/* The §B errno facts that need no kexec: run on the first boot, before the real session. */
static void errno_checks(int dev)
{
        int fd, s, m, p[2], r;

        fd = open("/dev/liveupdate", O_RDWR);
        expect_errno(fd, errno, EBUSY, "second open of /dev/liveupdate is EBUSY");
        if (fd >= 0)
                close(fd);

        r = session_ioctl(dev, LUO_RETRIEVE_SESSION, "luo-raw-never-created");
        expect_errno(r, errno, ENOENT, "RETRIEVE_SESSION of an unknown name is ENOENT");

        s = session_ioctl(dev, LUO_CREATE_SESSION, NEG_SESSION);
        expect_errno(s, errno, 0, "CREATE_SESSION " NEG_SESSION);
        if (s < 0)
                return;
        r = session_ioctl(dev, LUO_CREATE_SESSION, NEG_SESSION);
        expect_errno(r, errno, EEXIST, "CREATE_SESSION of a duplicate name is EEXIST");
        if (r >= 0)
                close(r);

        m = memfd_create("luo-raw-neg", 0);
        if (m < 0 || ftruncate(m, 4096) < 0) {
                check(0, "memfd for the errno checks", strerror(errno));
                close(s);
                return;
        }
        r = preserve_fd(s, m, 1);
        expect_errno(r, errno, 0, "PRESERVE_FD of a 4 KiB memfd");
        r = ftruncate(m, 8192);
        expect_errno(r, errno, EPERM, "ftruncate of a preserved memfd is EPERM");
        if (pipe(p) == 0) {
                r = preserve_fd(s, p[0], 2);
                expect_errno(r, errno, ENOENT, "PRESERVE_FD of a pipe is ENOENT");
                close(p[0]);
                close(p[1]);
        } else {
                check(0, "pipe for the errno checks", strerror(errno));
        }
        close(m);
        /* closing the outgoing session unpreserves its memfd: nothing of it reaches stage 2 */
        close(s);
}

static int write_file(const char *path, const char *text)
{
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        size_t n = strlen(text);
        if (fd < 0)
                return -1;
        if (write(fd, text, n) != (ssize_t)n || fsync(fd) < 0) {
                close(fd);
                return -1;
        }
        return close(fd);
}

static int stage1(size_t mib, const char *kernel, const char *initrd, const char *cmdline,
                  const char *share)
{
        size_t bytes = mib << 20, words = bytes / 8;
        int dev, s, data, stampfd, kfd, ifd;
        uint64_t *map, sum;
        struct stamp *stamp;
        int64_t t0, fill_us, preserve_us, load_us, rt;
        char path[512], text[1024];
        long r;

        printf("luo_raw: stage 1, %zu MiB, uptime %.3f s\n", mib, clock_us(CLOCK_BOOTTIME) / 1e6);
        dev = open("/dev/liveupdate", O_RDWR | O_CLOEXEC);
        expect_errno(dev, errno, 0, "open /dev/liveupdate");
        if (dev < 0)
                return 1;
        errno_checks(dev);

        s = session_ioctl(dev, LUO_CREATE_SESSION, SESSION);
        expect_errno(s, errno, 0, "CREATE_SESSION " SESSION);
        if (s < 0)
                return 1;
        data = memfd_create("luo-raw-data", MFD_CLOEXEC);
        if (data < 0 || ftruncate(data, (off_t)bytes) < 0) {
                perror("luo_raw: memfd");
                return 1;
        }
        map = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, data, 0);
        if (map == MAP_FAILED) {
                perror("luo_raw: mmap");
                return 1;
        }
        t0 = clock_us(CLOCK_MONOTONIC);
        for (size_t i = 0; i < words; i++)
                map[i] = mix(i);
        sum = checksum(map, words);
        fill_us = clock_us(CLOCK_MONOTONIC) - t0;
        munmap(map, bytes);
        printf("luo_raw: filled and checksummed %zu MiB in %.1f ms, checksum %016" PRIx64 "\n", mib,
               fill_us / 1000.0, sum);

        stampfd = memfd_create("luo-raw-stamp", MFD_CLOEXEC);
        if (stampfd < 0 || ftruncate(stampfd, 4096) < 0) {
                perror("luo_raw: stamp memfd");
                return 1;
        }
        stamp = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, stampfd, 0);
        if (stamp == MAP_FAILED) {
                perror("luo_raw: mmap stamp");
                return 1;
        }

        t0 = clock_us(CLOCK_MONOTONIC);
        r = preserve_fd(s, data, TOKEN_DATA);
        preserve_us = clock_us(CLOCK_MONOTONIC) - t0;
        expect_errno(r, errno, 0, "PRESERVE_FD of the data memfd");
        if (r < 0)
                return 1;
        r = preserve_fd(s, stampfd, TOKEN_STAMP);
        expect_errno(r, errno, 0, "PRESERVE_FD of the stamp memfd");
        if (r < 0)
                return 1;
        printf("luo_raw: PRESERVE_FD of %zu MiB took %.3f ms (%.1f ms per GiB)\n", mib,
               preserve_us / 1000.0, per_gib(preserve_us, mib));
        /* the memfds stay referenced by the session; the device is not needed any more */
        close(data);
        close(stampfd);
        close(dev);

        kfd = open(kernel, O_RDONLY | O_CLOEXEC);
        ifd = open(initrd, O_RDONLY | O_CLOEXEC);
        if (kfd < 0 || ifd < 0) {
                fprintf(stderr, "luo_raw: cannot open %s or %s: %s\n", kernel, initrd,
                        strerror(errno));
                return 1;
        }
        t0 = clock_us(CLOCK_MONOTONIC);
        r = syscall(SYS_kexec_file_load, kfd, ifd, strlen(cmdline) + 1, cmdline, 0UL);
        load_us = clock_us(CLOCK_MONOTONIC) - t0;
        expect_errno(r, errno, 0, "kexec_file_load");
        if (r < 0)
                return 1;
        close(kfd);
        close(ifd);
        {
                char c = 0;
                int fd = open("/sys/kernel/kexec_loaded", O_RDONLY);
                if (fd >= 0) {
                        if (read(fd, &c, 1) != 1)
                                c = 0;
                        close(fd);
                }
                check(c == '1', "/sys/kernel/kexec_loaded is 1", NULL);
        }
        printf("luo_raw: kexec_file_load took %.1f ms, command line '%s'\n", load_us / 1000.0,
               cmdline);
        if (failures) {
                printf("luo_raw: %d check(s) failed; no kexec\n", failures);
                return 1;
        }

        snprintf(path, sizeof(path), "%s/luo-raw.stage1", share);
        rt = clock_us(CLOCK_REALTIME);
        snprintf(text, sizeof(text),
                 "mib=%zu\nchecksum=%016" PRIx64 "\npreserve_us=%" PRId64 "\nload_us=%" PRId64
                 "\nfill_us=%" PRId64 "\nreboot_realtime_us=%" PRId64 "\n",
                 mib, sum, preserve_us, load_us, fill_us, rt);
        if (write_file(path, text) < 0) {
                fprintf(stderr, "luo_raw: cannot write %s: %s\n", path, strerror(errno));
                return 1;
        }
        printf("luo_raw: calling reboot(LINUX_REBOOT_CMD_KEXEC) at realtime %" PRId64
               " us, uptime %.3f s\n",
               rt, clock_us(CLOCK_BOOTTIME) / 1e6);
        fflush(stdout);
        stamp->file_written_rt_us = clock_us(CLOCK_REALTIME);
        stamp->reboot_boottime_us = clock_us(CLOCK_BOOTTIME);
        stamp->magic = STAMP_MAGIC;
        stamp->reboot_realtime_us = clock_us(CLOCK_REALTIME);
        reboot(RB_KEXEC);
        printf("luo_raw: reboot(LINUX_REBOOT_CMD_KEXEC) returned: %s\n", ename(errno));
        return 1;
}

static int read_kv(const char *path, const char *key, char *out, size_t len)
{
        FILE *f = fopen(path, "r");
        char line[256];
        size_t k = strlen(key);
        int found = -1;
        if (!f)
                return -1;
        while (fgets(line, sizeof(line), f)) {
                if (strncmp(line, key, k) == 0 && line[k] == '=') {
                        snprintf(out, len, "%s", line + k + 1);
                        out[strcspn(out, "\n")] = 0;
                        found = 0;
                        break;
                }
        }
        fclose(f);
        return found;
}

static int64_t read_kv_i64(const char *path, const char *key)
{
        char v[64];
        if (read_kv(path, key, v, sizeof(v)) < 0)
                return -1;
        return strtoll(v, NULL, 10);
}

static int stage2(size_t mib, const char *share)
{
        int64_t start_rt = clock_us(CLOCK_REALTIME), start_up = clock_us(CLOCK_BOOTTIME);
        size_t bytes = mib << 20, words = bytes / 8, bad = 0;
        int dev, s, data, stampfd, r;
        int64_t t0, open_us, rsess_us, retrieve_us, verify_us, verified_rt, verified_up;
        int64_t preserve_us, rt_blackout, host_blackout = -1, write_rt;
        uint64_t *map, sum, want_sum;
        struct stamp stamp;
        char p1[512], p2[512], v[64], text[1024], d[128];
        struct stat st;

        printf("luo_raw: stage 2, kernel uptime at start %.3f s\n", start_up / 1e6);
        snprintf(p1, sizeof(p1), "%s/luo-raw.stage1", share);
        snprintf(p2, sizeof(p2), "%s/luo-raw.stage2", share);
        if (read_kv(p1, "checksum", v, sizeof(v)) < 0) {
                fprintf(stderr, "luo_raw: no checksum in %s (stage 1 did not run?)\n", p1);
                return 1;
        }
        want_sum = strtoull(v, NULL, 16);
        preserve_us = read_kv_i64(p1, "preserve_us");
        check((size_t)read_kv_i64(p1, "mib") == mib, "stage 1 used the same size", NULL);

        t0 = clock_us(CLOCK_MONOTONIC);
        dev = open("/dev/liveupdate", O_RDWR | O_CLOEXEC);
        open_us = clock_us(CLOCK_MONOTONIC) - t0;
        expect_errno(dev, errno, 0, "open /dev/liveupdate after the kexec");
        if (dev < 0)
                return 1;
        t0 = clock_us(CLOCK_MONOTONIC);
        s = session_ioctl(dev, LUO_RETRIEVE_SESSION, SESSION);
        rsess_us = clock_us(CLOCK_MONOTONIC) - t0;
        expect_errno(s, errno, 0, "RETRIEVE_SESSION " SESSION);
        if (s < 0)
                return 1;
        t0 = clock_us(CLOCK_MONOTONIC);
        data = retrieve_fd(s, TOKEN_DATA);
        retrieve_us = clock_us(CLOCK_MONOTONIC) - t0;
        expect_errno(data, errno, 0, "RETRIEVE_FD of the data memfd");
        if (data < 0)
                return 1;
        stampfd = retrieve_fd(s, TOKEN_STAMP);
        expect_errno(stampfd, errno, 0, "RETRIEVE_FD of the stamp memfd");
        if (stampfd < 0 || pread(stampfd, &stamp, sizeof(stamp), 0) != sizeof(stamp))
                memset(&stamp, 0, sizeof(stamp));

        t0 = clock_us(CLOCK_MONOTONIC);
        check(fstat(data, &st) == 0 && (size_t)st.st_size == bytes, "the memfd kept its size",
              NULL);
        map = mmap(NULL, bytes, PROT_READ, MAP_SHARED, data, 0);
        if (map == MAP_FAILED) {
                perror("luo_raw: mmap");
                return 1;
        }
        for (size_t i = 0; i < words; i++)
                if (map[i] != mix(i))
                        bad++;
        sum = checksum(map, words);
        verify_us = clock_us(CLOCK_MONOTONIC) - t0;
        verified_rt = clock_us(CLOCK_REALTIME);
        verified_up = clock_us(CLOCK_BOOTTIME);
        munmap(map, bytes);
        snprintf(d, sizeof(d), "%zu of %zu words differ", bad, words);
        check(bad == 0, "the data is bit-exact (every word matches the pattern)", d);
        snprintf(d, sizeof(d), "%016" PRIx64 " != %016" PRIx64, sum, want_sum);
        check(sum == want_sum, "the checksum matches stage 1's", d);
        check(stamp.magic == STAMP_MAGIC, "the stamp written after PRESERVE_FD arrived", NULL);

        r = finish(s);
        expect_errno(r, errno, 0, "FINISH " SESSION);
        r = retrieve_fd(s, TOKEN_DATA);
        expect_errno(r, errno, ENOENT, "RETRIEVE_FD after FINISH is ENOENT");
        close(s);
        close(data);
        if (stampfd >= 0)
                close(stampfd);
        r = session_ioctl(dev, LUO_RETRIEVE_SESSION, NEG_SESSION);
        expect_errno(r, errno, ENOENT, "a session closed before the kexec did not arrive (ENOENT)");
        r = session_ioctl(dev, LUO_RETRIEVE_SESSION, "luo-raw-never-created");
        expect_errno(r, errno, ENOENT, "RETRIEVE_SESSION of an unknown name is ENOENT");
        close(dev);

        /* The host's clock: mtimes of stage 1's file (written just before the reboot call)
         * and of stage 2's (written now), each corrected by the guest's own gap to the
         * instant that counts (intra-boot differences are exact). */
        write_rt = clock_us(CLOCK_REALTIME);
        snprintf(text, sizeof(text), "verified=%s\nstage2_started_rt_us=%" PRId64 "\n",
                 bad == 0 && sum == want_sum ? "yes" : "no", start_rt);
        if (write_file(p2, text) == 0 && mtime_us(p1) > 0 && stamp.magic == STAMP_MAGIC) {
                int64_t m1 = mtime_us(p1), m2 = mtime_us(p2);
                host_blackout = (m2 - (write_rt - verified_rt)) -
                                (m1 + (stamp.reboot_realtime_us - stamp.file_written_rt_us));
        }

        rt_blackout = stamp.magic == STAMP_MAGIC ? verified_rt - stamp.reboot_realtime_us : -1;
        printf("luo_raw: first open of /dev/liveupdate %.3f ms, RETRIEVE_SESSION %.3f ms, "
               "RETRIEVE_FD %.3f ms, verify %.1f ms\n",
               open_us / 1000.0, rsess_us / 1000.0, retrieve_us / 1000.0, verify_us / 1000.0);
        printf("luo_raw: reboot call -> data verified: %.1f ms by the guest's realtime clock, "
               "%.1f ms by the host's clock (9p mtimes); kernel uptime at stage 2 start "
               "%.1f ms, at verification %.1f ms\n",
               rt_blackout / 1000.0, host_blackout / 1000.0, start_up / 1000.0,
               verified_up / 1000.0);
        /* sanity: the realtime figure is within the RTC's second of the host's; the host's
         * covers at least the new kernel's own uptime */
        snprintf(d, sizeof(d), "realtime %.0f ms, host %.0f ms", rt_blackout / 1000.0,
                 host_blackout / 1000.0);
        check(rt_blackout > 0 && host_blackout > 0 && llabs(rt_blackout - host_blackout) < 1100000,
              "the realtime blackout agrees with the host's clock within the RTC's second", d);
        snprintf(d, sizeof(d), "host %.0f ms, uptime %.0f ms", host_blackout / 1000.0,
                 verified_up / 1000.0);
        check(host_blackout >= verified_up,
              "the blackout covers at least the new kernel's uptime at verification", d);

        printf("RESULT blackout_ms=%.0f blackout_host_ms=%.0f uptime_at_stage2_ms=%.0f "
               "uptime_at_verified_ms=%.0f\n",
               rt_blackout / 1000.0, host_blackout / 1000.0, start_up / 1000.0,
               verified_up / 1000.0);
        printf("RESULT mib=%zu preserve_ms=%.3f retrieve_ms=%.3f preserve_ms_per_gib=%.1f "
               "retrieve_ms_per_gib=%.1f first_open_ms=%.3f retrieve_session_ms=%.3f\n",
               mib, preserve_us / 1000.0, retrieve_us / 1000.0, per_gib(preserve_us, mib),
               per_gib(retrieve_us, mib), open_us / 1000.0, rsess_us / 1000.0);
        printf("luo_raw: %d checks, %d failed\n", checks, failures);
        return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
        size_t mib;
        setvbuf(stdout, NULL, _IOLBF, 0);
        if (argc == 7 && strcmp(argv[1], "stage1") == 0 && parse_mib(argv[2], &mib) == 0)
                return stage1(mib, argv[3], argv[4], argv[5], argv[6]);
        if (argc == 4 && strcmp(argv[1], "stage2") == 0 && parse_mib(argv[2], &mib) == 0)
                return stage2(mib, argv[3]);
        fprintf(stderr, "usage: luo_raw stage1 MIB KERNEL INITRD CMDLINE SHARE\n"
                        "       luo_raw stage2 MIB SHARE\n");
        return 2;
}
