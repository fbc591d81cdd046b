// SPDX-License-Identifier: GPL-2.0
/*
 * luo_emul_selftest: checks the v3 live-update interface of luo_emul.ko (or of
 * a real v3 kernel) from userspace, inside the test guest. Needs root.
 *
 * Usage: luo_emul_selftest [--no-kexec]
 *   --no-kexec  skip the "reboot(KEXEC) with no image while prepared" check
 *               (it is skipped anyway when /sys/kernel/kexec_loaded is 1)
 *
 * Output: one "ok N - ..." or "not ok N - ..." line per check, then
 * "SELFTEST PASS n/m" or "SELFTEST FAIL f/m failed". Exit status 0 on pass.
 * If the module starts in "updated" (start_updated=1), the updated-state
 * checks run first and FINISH returns it to "normal".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/reboot.h>
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
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define DEV "/dev/liveupdate"
#define SYSFS_STATE "/sys/kernel/liveupdate/state"
#define PARAM_FAIL_PREPARE "/sys/module/luo_emul/parameters/fail_prepare"
#define PARAM_FAIL_FREEZE "/sys/module/luo_emul/parameters/fail_freeze"
#define PARAM_FAIL_KEXEC "/sys/module/luo_emul/parameters/fail_kexec"
#define KEXEC_LOADED "/sys/kernel/kexec_loaded"

#define LUO_IOC(nr) ((unsigned long)((0xBA << 8) | (nr)))
#define FD_PRESERVE LUO_IOC(0x00)
#define FD_UNPRESERVE LUO_IOC(0x01)
#define FD_RESTORE LUO_IOC(0x02)
#define GET_STATE LUO_IOC(0x03)
#define SET_EVENT LUO_IOC(0x04)
#define GET_FD_STATE LUO_IOC(0x05)
#define SET_FD_EVENT LUO_IOC(0x06)

enum { ST_UNDEFINED, ST_NORMAL, ST_PREPARED, ST_FROZEN, ST_UPDATED };
enum { EV_PREPARE, EV_FREEZE, EV_FINISH, EV_CANCEL };
static const char *const state_names[] = {"undefined", "normal", "prepared", "frozen",
                                          "updated"};

struct get_state {
        uint32_t size, state;
};
struct set_event {
        uint32_t size, event;
};
struct fd_arg { /* FD_PRESERVE, FD_UNPRESERVE, FD_RESTORE */
        uint32_t size;
        int32_t fd;
        uint64_t token;
};
struct get_fd_state {
        uint32_t size;
        uint8_t incoming, pad[3];
        uint64_t token;
        uint32_t state, pad2;
};
struct set_fd_event {
        uint32_t size, event;
        uint64_t token;
};

_Static_assert(sizeof(struct get_fd_state) == 24, "GET_FD_STATE is 24 bytes");
_Static_assert(sizeof(struct set_fd_event) == 16, "SET_FD_EVENT is 16 bytes");

static int n_checks, n_failed;

static void check(bool ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(bool ok, const char *fmt, ...)
{
        va_list ap;

        n_checks++;
        if (!ok)
                n_failed++;
        printf("%s %d - ", ok ? "ok" : "not ok", n_checks);
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        printf("\n");
        fflush(stdout);
}

/* ioctl result as 0 or -errno. */
static int xioctl(int fd, unsigned long req, void *arg)
{
        return ioctl(fd, req, arg) < 0 ? -errno : 0;
}

static int expect_errno(int r, int want, const char *what)
{
        check(r == -want, "%s -> %s (got %s)", what, want ? strerror(want) : "0",
              r ? strerror(-r) : "0");
        return r;
}

static int get_state(int dev)
{
        struct get_state a = {.size = sizeof(a)};
        int r = xioctl(dev, GET_STATE, &a);

        return r < 0 ? r : (int)a.state;
}

static int set_event(int dev, uint32_t ev)
{
        struct set_event a = {.size = sizeof(a), .event = ev};

        return xioctl(dev, SET_EVENT, &a);
}

static int fd_op(int dev, unsigned long req, int fd, uint64_t token)
{
        struct fd_arg a = {.size = sizeof(a), .fd = fd, .token = token};

        return xioctl(dev, req, &a);
}

static int get_fd_state(int dev, uint64_t token, bool incoming, uint32_t *state)
{
        struct get_fd_state a = {.size = sizeof(a), .incoming = incoming, .token = token};
        int r = xioctl(dev, GET_FD_STATE, &a);

        if (r == 0 && state)
                *state = a.state;
        return r;
}

static int set_fd_event(int dev, uint64_t token, uint32_t ev)
{
        struct set_fd_event a = {.size = sizeof(a), .event = ev, .token = token};

        return xioctl(dev, SET_FD_EVENT, &a);
}

/* Re-read the watch fd from offset 0 into buf (newline stripped). */
static int read_attr_fd(int fd, char *buf, size_t size)
{
        ssize_t n;

        if (lseek(fd, 0, SEEK_SET) < 0)
                return -errno;
        n = read(fd, buf, size - 1);
        if (n < 0)
                return -errno;
        buf[n] = 0;
        if (n > 0 && buf[n - 1] == '\n')
                buf[n - 1] = 0;
        return (int)n;
}

static int read_file(const char *path, char *buf, size_t size)
{
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        int r;

        if (fd < 0)
                return -errno;
        r = read_attr_fd(fd, buf, size);
        close(fd);
        return r;
}

static int write_file(const char *path, const char *s)
{
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        ssize_t n;

        if (fd < 0)
                return -errno;
        n = write(fd, s, strlen(s));
        close(fd);
        return n < 0 ? -errno : 0;
}

/* Both views agree on `want`: GET_STATE and a fresh sysfs read. */
static void check_state(int dev, int want, const char *when)
{
        char buf[64] = "";
        int s = get_state(dev);

        check(s == want, "%s: GET_STATE = %s (got %d)", when, state_names[want], s);
        read_file(SYSFS_STATE, buf, sizeof(buf));
        check(strcmp(buf, state_names[want]) == 0, "%s: sysfs reads \"%s\" (got \"%s\")", when,
              state_names[want], buf);
}

/* Is a notification pending on the watch fd? (0 ms: already signalled.) */
static bool notified(int wfd, int timeout_ms)
{
        struct pollfd p = {.fd = wfd, .events = POLLPRI | POLLERR};
        int r = poll(&p, 1, timeout_ms);

        return r == 1 && (p.revents & (POLLPRI | POLLERR));
}

/* After a change: the watch fd was notified; re-reading it re-arms it. */
static void check_notified(int wfd, int want, const char *when)
{
        char buf[64] = "";
        bool n = notified(wfd, 1000);

        check(n, "%s: poll(POLLPRI) signalled", when);
        read_attr_fd(wfd, buf, sizeof(buf));
        check(strcmp(buf, state_names[want]) == 0, "%s: watch fd re-read \"%s\" (got \"%s\")",
              when, state_names[want], buf);
}

static void check_not_notified(int wfd, const char *when)
{
        check(!notified(wfd, 0), "%s: no notification", when);
}

/* Only called when /sys/kernel/kexec_loaded is 0: it cannot jump. */
static int do_kexec_reboot(void)
{
        return syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2,
                       LINUX_REBOOT_CMD_KEXEC, NULL) < 0
                       ? -errno
                       : 0;
}

static int drop_cap_sys_admin(void)
{
        struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3};
        struct __user_cap_data_struct d[2];

        if (syscall(SYS_capget, &h, d) < 0)
                return -errno;
        d[CAP_SYS_ADMIN / 32].effective &= ~(1u << (CAP_SYS_ADMIN % 32));
        d[CAP_SYS_ADMIN / 32].permitted &= ~(1u << (CAP_SYS_ADMIN % 32));
        if (syscall(SYS_capset, &h, d) < 0)
                return -errno;
        return 0;
}

static void test_updated_phase(int dev, int wfd)
{
        uint32_t st;
        int mfd = memfd_create("luo-selftest", MFD_CLOEXEC);

        printf("# started in updated: updated-state checks\n");
        expect_errno(set_event(dev, EV_PREPARE), EINVAL, "updated: PREPARE");
        expect_errno(set_event(dev, EV_CANCEL), EINVAL, "updated: CANCEL");
        expect_errno(set_event(dev, EV_FREEZE), EINVAL, "updated: FREEZE");
        expect_errno(fd_op(dev, FD_PRESERVE, mfd, 1), EBUSY, "updated: FD_PRESERVE");
        expect_errno(fd_op(dev, FD_RESTORE, -1, 42), ENOENT, "updated: FD_RESTORE unknown token");
        expect_errno(get_fd_state(dev, 42, true, &st), ENOENT, "updated: GET_FD_STATE incoming");
        expect_errno(set_fd_event(dev, 42, EV_FINISH), ENOENT,
                     "updated: SET_FD_EVENT FINISH unknown token");
        check_not_notified(wfd, "updated: after refused events");
        expect_errno(set_event(dev, EV_FINISH), 0, "updated: FINISH");
        check_notified(wfd, ST_NORMAL, "FINISH");
        check_state(dev, ST_NORMAL, "after FINISH");
        close(mfd);
}

int main(int argc, char **argv)
{
        bool try_kexec = !(argc > 1 && strcmp(argv[1], "--no-kexec") == 0);
        char buf[64];
        uint32_t st;
        int dev, dev2, wfd, mfd, s, r;
        unsigned char big[64];

        setvbuf(stdout, NULL, _IOLBF, 0);

        /* Open, exclusive. */
        dev = open(DEV, O_RDWR | O_CLOEXEC);
        check(dev >= 0, "open %s (%s)", DEV, dev >= 0 ? "ok" : strerror(errno));
        if (dev < 0)
                goto out;
        dev2 = open(DEV, O_RDWR | O_CLOEXEC);
        check(dev2 < 0 && errno == EBUSY, "second open -> EBUSY (got %s)",
              dev2 < 0 ? strerror(errno) : "success");
        if (dev2 >= 0)
                close(dev2);

        /* Open without CAP_SYS_ADMIN -> EPERM (in a child, device closed first there). */
        {
                pid_t pid = fork();
                int status = 0;

                if (pid == 0) {
                        close(dev);
                        /* The parent still holds it open: EPERM must win over EBUSY. */
                        if (drop_cap_sys_admin() < 0)
                                _exit(2);
                        _exit(open(DEV, O_RDWR) < 0 && errno == EPERM ? 0 : 1);
                }
                waitpid(pid, &status, 0);
                check(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                      "open without CAP_SYS_ADMIN -> EPERM (child status %d)", status);
        }

        /* The watch fd: read once to arm. */
        wfd = open(SYSFS_STATE, O_RDONLY | O_CLOEXEC);
        check(wfd >= 0, "open %s", SYSFS_STATE);
        if (wfd < 0)
                goto out;
        read_attr_fd(wfd, buf, sizeof(buf));

        s = get_state(dev);
        check(s >= ST_NORMAL && s <= ST_UPDATED, "GET_STATE at start: %d (%s)", s,
              s >= 0 && s <= ST_UPDATED ? state_names[s] : "?");
        check(strcmp(buf, s >= 0 && s <= ST_UPDATED ? state_names[s] : "?") == 0,
              "sysfs at start \"%s\" matches GET_STATE", buf);
        if (s == ST_UPDATED)
                test_updated_phase(dev, wfd);
        else if (s == ST_PREPARED || s == ST_FROZEN) {
                printf("# started in %s: cancelling first\n", state_names[s]);
                set_event(dev, EV_CANCEL);
                read_attr_fd(wfd, buf, sizeof(buf));
        }
        check_state(dev, ST_NORMAL, "start");

        /* Events refused in NORMAL. */
        expect_errno(set_event(dev, EV_FREEZE), EINVAL, "normal: SET_EVENT FREEZE");
        expect_errno(set_event(dev, EV_FINISH), EINVAL, "normal: FINISH");
        expect_errno(set_event(dev, EV_CANCEL), EINVAL, "normal: CANCEL");
        expect_errno(set_event(dev, 7), EINVAL, "normal: unknown event 7");
        check_not_notified(wfd, "normal: after refused events");
        check_state(dev, ST_NORMAL, "after refused events");

        /* Struct size rules, on GET_STATE and GET_FD_STATE. */
        {
                struct get_state a = {.size = 4};

                expect_errno(xioctl(dev, GET_STATE, &a), EINVAL, "GET_STATE size 4 < 8");
                a.size = 0;
                expect_errno(xioctl(dev, GET_STATE, &a), EINVAL, "GET_STATE size 0");
                memset(big, 0, sizeof(big));
                *(uint32_t *)big = sizeof(big);
                r = xioctl(dev, GET_STATE, big);
                expect_errno(r, 0, "GET_STATE size 64, zero tail");
                check(r == 0 && *(uint32_t *)(big + 4) == ST_NORMAL,
                      "GET_STATE size 64 answers the state");
                big[40] = 1;
                expect_errno(xioctl(dev, GET_STATE, big), E2BIG, "GET_STATE size 64, nonzero tail");
                expect_errno(xioctl(dev, GET_STATE, NULL), EFAULT, "GET_STATE NULL pointer");
                expect_errno(xioctl(dev, GET_STATE, (void *)8), EFAULT, "GET_STATE bad pointer");
                expect_errno(xioctl(dev, LUO_IOC(0x07), &a), EINVAL, "unknown nr 0x07");
                expect_errno(xioctl(dev, LUO_IOC(0x3f), &a), EINVAL, "unknown nr 0x3f");
                a.size = sizeof(a);
                expect_errno(xioctl(dev, (0xBB << 8) | 0x03, &a), EINVAL, "wrong type 0xBB");
                expect_errno(xioctl(dev, _IOR(0xBA, 0x03, struct get_state), &a), EINVAL,
                             "_IOR(0xBA, 3) instead of _IO");
                struct set_event e = {.size = 7, .event = EV_PREPARE};

                expect_errno(xioctl(dev, SET_EVENT, &e), EINVAL, "SET_EVENT size 7 < 8");
                struct fd_arg f = {.size = 12, .fd = 0, .token = 1};

                expect_errno(xioctl(dev, FD_PRESERVE, &f), EINVAL, "FD_PRESERVE size 12 < 16");
                check_state(dev, ST_NORMAL, "after size checks");
        }

        /* NORMAL -> PREPARED -> CANCEL -> NORMAL, with notifications. */
        expect_errno(set_event(dev, EV_PREPARE), 0, "normal: PREPARE");
        check_notified(wfd, ST_PREPARED, "PREPARE");
        check_state(dev, ST_PREPARED, "after PREPARE");
        expect_errno(set_event(dev, EV_PREPARE), EINVAL, "prepared: PREPARE");
        expect_errno(set_event(dev, EV_FINISH), EINVAL, "prepared: FINISH");
        expect_errno(set_event(dev, EV_FREEZE), EINVAL, "prepared: SET_EVENT FREEZE");
        check_not_notified(wfd, "prepared: after refused events");
        expect_errno(set_event(dev, EV_CANCEL), 0, "prepared: CANCEL");
        check_notified(wfd, ST_NORMAL, "CANCEL");
        check_state(dev, ST_NORMAL, "after CANCEL");

        /* A blocked poll() wakes on a change made by another task. */
        {
                pid_t pid = fork();
                int status = 0;
                bool woke;

                if (pid == 0) {
                        usleep(200 * 1000);
                        _exit(set_event(dev, EV_PREPARE) == 0 ? 0 : 1);
                }
                woke = notified(wfd, 5000);
                waitpid(pid, &status, 0);
                check(woke, "blocked poll(POLLPRI) woke on PREPARE from another task");
                check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child PREPARE succeeded");
                read_attr_fd(wfd, buf, sizeof(buf));
                check(strcmp(buf, "prepared") == 0, "woken re-read \"prepared\" (got \"%s\")", buf);
                expect_errno(set_event(dev, EV_CANCEL), 0, "CANCEL");
                check_notified(wfd, ST_NORMAL, "CANCEL");
        }

        /* A failing subsystem prepare leaves NORMAL. */
        r = write_file(PARAM_FAIL_PREPARE, "5");
        if (r == 0) {
                expect_errno(set_event(dev, EV_PREPARE), EIO, "PREPARE with fail_prepare=5");
                check_state(dev, ST_NORMAL, "after failed PREPARE");
                check_not_notified(wfd, "after failed PREPARE");
                write_file(PARAM_FAIL_PREPARE, "0");
        } else {
                printf("# %s not writable (%s): not luo_emul? skipping fail_prepare\n",
                       PARAM_FAIL_PREPARE, strerror(-r));
        }

        /* Tokens. */
        mfd = memfd_create("luo-selftest", MFD_CLOEXEC);
        check(mfd >= 0, "memfd_create");
        expect_errno(fd_op(dev, FD_PRESERVE, mfd, 1), 0, "FD_PRESERVE token 1");
        expect_errno(fd_op(dev, FD_PRESERVE, mfd, 1), EEXIST, "FD_PRESERVE token 1 again");
        expect_errno(fd_op(dev, FD_PRESERVE, -1, 2), EBADF, "FD_PRESERVE fd -1");
        expect_errno(fd_op(dev, FD_PRESERVE, 9999, 2), EBADF, "FD_PRESERVE fd 9999");
        st = 99;
        expect_errno(get_fd_state(dev, 1, false, &st), 0, "GET_FD_STATE token 1");
        check(st == ST_NORMAL, "token 1 state normal (got %u)", st);
        expect_errno(get_fd_state(dev, 77, false, &st), ENOENT, "GET_FD_STATE unknown token");
        expect_errno(get_fd_state(dev, 1, true, &st), ENOENT, "GET_FD_STATE incoming token");
        {
                /* 20 bytes (offsetofend(state)) is the minimum; 16 is too short. */
                struct get_fd_state g = {.size = 16, .token = 1};

                expect_errno(xioctl(dev, GET_FD_STATE, &g), EINVAL, "GET_FD_STATE size 16");
        }
        expect_errno(fd_op(dev, FD_RESTORE, -1, 1), EBUSY, "normal: FD_RESTORE");
        expect_errno(set_fd_event(dev, 1, EV_FINISH), EBUSY, "normal: SET_FD_EVENT FINISH");
        expect_errno(set_fd_event(dev, 77, EV_PREPARE), ENOENT,
                     "SET_FD_EVENT PREPARE unknown token");
        expect_errno(set_fd_event(dev, 1, EV_PREPARE), 0, "SET_FD_EVENT PREPARE token 1");
        get_fd_state(dev, 1, false, &st);
        check(st == ST_PREPARED, "token 1 prepared after per-fd PREPARE (got %u)", st);
        expect_errno(set_fd_event(dev, 1, EV_CANCEL), 0, "SET_FD_EVENT CANCEL token 1");
        expect_errno(set_fd_event(dev, 1, EV_FREEZE), EINVAL, "SET_FD_EVENT FREEZE");
        check_not_notified(wfd, "per-fd events do not change the global state");
        expect_errno(fd_op(dev, FD_UNPRESERVE, -1, 1), 0, "FD_UNPRESERVE token 1");
        expect_errno(fd_op(dev, FD_UNPRESERVE, -1, 1), ENOENT, "FD_UNPRESERVE token 1 again");

        /* Preserve while prepared; tokens survive CANCEL. */
        expect_errno(fd_op(dev, FD_PRESERVE, mfd, 10), 0, "FD_PRESERVE token 10");
        expect_errno(set_event(dev, EV_PREPARE), 0, "PREPARE");
        check_notified(wfd, ST_PREPARED, "PREPARE");
        expect_errno(fd_op(dev, FD_PRESERVE, mfd, 11), 0, "prepared: FD_PRESERVE token 11");
        get_fd_state(dev, 10, false, &st);
        check(st == ST_PREPARED, "token 10 prepared (got %u)", st);
        expect_errno(fd_op(dev, FD_RESTORE, -1, 10), EBUSY, "prepared: FD_RESTORE");
        expect_errno(set_event(dev, EV_CANCEL), 0, "CANCEL");
        check_notified(wfd, ST_NORMAL, "CANCEL");
        expect_errno(get_fd_state(dev, 10, false, &st), 0, "token 10 valid after CANCEL");
        check(st == ST_NORMAL, "token 10 normal after CANCEL (got %u)", st);
        expect_errno(get_fd_state(dev, 11, false, &st), 0, "token 11 valid after CANCEL");

        /* The reboot path: PREPARED, reboot(KEXEC) with no image -> FROZEN + EINVAL. */
        r = read_file(KEXEC_LOADED, buf, sizeof(buf));
        if (try_kexec && r > 0 && strcmp(buf, "0") == 0) {
                expect_errno(set_event(dev, EV_PREPARE), 0, "PREPARE before reboot(KEXEC)");
                check_notified(wfd, ST_PREPARED, "PREPARE");
                r = do_kexec_reboot();
                expect_errno(r, EINVAL, "reboot(KEXEC) with no image loaded");
                read_file("/sys/module/luo_emul/parameters/freeze_hook", buf, sizeof(buf));
                printf("# freeze_hook = %s\n", buf);
                if (strcmp(buf, "kprobe") == 0) {
                        check_notified(wfd, ST_FROZEN, "failed kexec");
                        check_state(dev, ST_FROZEN, "after failed kexec");
                        expect_errno(fd_op(dev, FD_PRESERVE, mfd, 12), EBUSY,
                                     "frozen: FD_PRESERVE");
                        expect_errno(fd_op(dev, FD_UNPRESERVE, -1, 10), EBUSY,
                                     "frozen: FD_UNPRESERVE");
                        get_fd_state(dev, 10, false, &st);
                        check(st == ST_FROZEN, "token 10 frozen (got %u)", st);
                        expect_errno(set_event(dev, EV_PREPARE), EINVAL, "frozen: PREPARE");
                        expect_errno(set_event(dev, EV_FINISH), EINVAL, "frozen: FINISH");
                        expect_errno(set_event(dev, EV_FREEZE), EINVAL, "frozen: FREEZE");
                }
                expect_errno(set_event(dev, EV_CANCEL), 0, "CANCEL after failed kexec");
                check_notified(wfd, ST_NORMAL, "CANCEL");
                expect_errno(get_fd_state(dev, 10, false, &st), 0, "token 10 valid after it");
                if (strcmp(buf, "kprobe") == 0 && write_file(PARAM_FAIL_FREEZE, "12") == 0) {
                        /* A failing freeze: back to NORMAL, reboot() fails, no kexec. */
                        expect_errno(set_event(dev, EV_PREPARE), 0, "PREPARE");
                        check_notified(wfd, ST_PREPARED, "PREPARE");
                        expect_errno(do_kexec_reboot(), ENOMEM, "reboot(KEXEC), fail_freeze=12");
                        check_notified(wfd, ST_NORMAL, "failed freeze");
                        check_state(dev, ST_NORMAL, "after failed freeze");
                        write_file(PARAM_FAIL_FREEZE, "0");
                        /* A failing kexec after the freeze: FROZEN, reboot() fails. */
                        check(write_file(PARAM_FAIL_KEXEC, "16") == 0, "set fail_kexec=16");
                        expect_errno(set_event(dev, EV_PREPARE), 0, "PREPARE");
                        check_notified(wfd, ST_PREPARED, "PREPARE");
                        expect_errno(do_kexec_reboot(), EBUSY, "reboot(KEXEC), fail_kexec=16");
                        check_notified(wfd, ST_FROZEN, "failed kexec");
                        check_state(dev, ST_FROZEN, "after fail_kexec");
                        /* In NORMAL, fail_kexec fails a plain kexec the same way. */
                        expect_errno(set_event(dev, EV_CANCEL), 0, "CANCEL");
                        check_notified(wfd, ST_NORMAL, "CANCEL");
                        expect_errno(do_kexec_reboot(), EBUSY, "normal: reboot(KEXEC), fail_kexec");
                        check_not_notified(wfd, "normal: failed kexec changes nothing");
                        write_file(PARAM_FAIL_KEXEC, "0");
                        check_state(dev, ST_NORMAL, "after fail_* checks");
                }
        } else {
                printf("# skipping reboot(KEXEC) check (kexec_loaded \"%s\")\n", buf);
        }

        /* Closing the device unpreserves everything but does not cancel. */
        expect_errno(set_event(dev, EV_PREPARE), 0, "PREPARE before close");
        check_notified(wfd, ST_PREPARED, "PREPARE");
        close(dev);
        check_not_notified(wfd, "close does not change the state");
        dev = open(DEV, O_RDWR | O_CLOEXEC);
        check(dev >= 0, "reopen after close (%s)", dev >= 0 ? "ok" : strerror(errno));
        if (dev < 0)
                goto out;
        check_state(dev, ST_PREPARED, "after close+reopen");
        expect_errno(fd_op(dev, FD_UNPRESERVE, -1, 10), ENOENT, "token 10 gone after close");
        expect_errno(get_fd_state(dev, 11, false, &st), ENOENT, "token 11 gone after close");
        expect_errno(set_event(dev, EV_CANCEL), 0, "CANCEL");
        check_notified(wfd, ST_NORMAL, "CANCEL");
        check_state(dev, ST_NORMAL, "end");
        close(mfd);
        close(dev);
        close(wfd);
out:
        if (n_failed)
                printf("SELFTEST FAIL %d/%d failed\n", n_failed, n_checks);
        else
                printf("SELFTEST PASS %d/%d\n", n_checks, n_checks);
        return n_failed ? 1 : 0;
}
