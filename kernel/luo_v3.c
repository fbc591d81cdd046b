/*
 * luo_v3.c: the real backend, for kernels with the v3 live-update
 * orchestrator (kernel-abi.md section A): /sys/kernel/liveupdate/state for
 * watching, /dev/liveupdate ioctls (GET_STATE, SET_EVENT), kexec_file_load(2)
 * and reboot(LINUX_REBOOT_CMD_KEXEC).
 *
 * Every path is resolved with openat() under a directory fd for cfg->root,
 * and every system call goes through a copy of cfg->sys when a member is set,
 * so the unit tests drive this file against a fake tree and a fake kernel
 * (the sys table's poll member is not used here: the agent's loop polls the
 * watch fd itself).
 *
 * Owns: the root dir fd, the sysfs state fd (the watch fd, read once at open
 * to arm sysfs_notify()) and the /dev/liveupdate fd. The device is exclusive
 * and closing it unpreserves every preserved fd, so it is opened once and kept
 * until luo_v3_free(), through the reboot call.
 *
 * Threads: open/free on the main thread; watch_* on the event-loop thread
 * (the only user of the state fd's offset); set_event, kexec_*, reboot on the
 * worker thread. get_state(), kexec_loaded() and self_check() may run on any
 * thread concurrently: they use only stack buffers and fresh fds (an ioctl
 * on the shared device fd is safe). No locks.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kexec.h>
#include <linux/reboot.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "backend-private.h"
#include "luofleet/backend.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "sysfs.h"

#define SYSFS_STATE_REL "sys/kernel/liveupdate/state"
#define DEV_LIVEUPDATE_REL "dev/liveupdate"
#define KEXEC_LOADED_REL "sys/kernel/kexec_loaded"
#define BOOT_ID_REL "proc/sys/kernel/random/boot_id"
#define OSRELEASE_REL "proc/sys/kernel/osrelease"
#define UPTIME_REL "proc/uptime"

_Static_assert(sizeof(struct luo_ioc_get_state) == 8, "GET_STATE struct is 8 bytes");
_Static_assert(sizeof(struct luo_ioc_set_event) == 8, "SET_EVENT struct is 8 bytes");

struct luo_v3 {
        struct backend base; /* first: a struct backend * is a struct luo_v3 * */
        struct luo_sys sys;  /* a copy: the caller's table may not outlive us */
        int root_fd;
        int state_fd; /* sysfs state attribute, the watch fd */
        int dev_fd;   /* /dev/liveupdate, held for our whole life */
};

static struct luo_v3 *to_v3(struct backend *b)
{
        return (struct luo_v3 *)b;
}

/* System calls, through the injected table when it has the member. */

static int v3_openat(const struct luo_sys *sys, int dirfd, const char *path, int flags)
{
        int fd = sys->openat ? sys->openat(dirfd, path, flags, 0) : openat(dirfd, path, flags);
        return fd < 0 ? negative_errno() : fd;
}

static int v3_ioctl(struct luo_v3 *v, unsigned long request, void *arg)
{
        int r = v->sys.ioctl ? v->sys.ioctl(v->dev_fd, request, arg)
                             : ioctl(v->dev_fd, request, arg);
        return r < 0 ? negative_errno() : r;
}

static int v3_kexec_file_load(struct luo_v3 *v, int kernel_fd, int initrd_fd,
                              unsigned long cmdline_len, const char *cmdline, unsigned long flags)
{
        long r;

        if (v->sys.kexec_file_load)
                r = v->sys.kexec_file_load(kernel_fd, initrd_fd, cmdline_len, cmdline, flags);
        else {
#ifdef SYS_kexec_file_load
                r = syscall(SYS_kexec_file_load, kernel_fd, initrd_fd, cmdline_len, cmdline, flags);
#else
                errno = ENOSYS;
                r = -1;
#endif
        }
        return r < 0 ? negative_errno() : 0;
}

/* One-shot read of a small attribute under the root, on a fresh fd. */
static ssize_t v3_read_attr_at(struct luo_v3 *v, const char *rel, char *buf, size_t size)
{
        _cleanup_close_ int fd = -1;

        fd = v3_openat(&v->sys, v->root_fd, rel, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return fd;
        return sysfs_read_attr(fd, buf, size);
}

static void luo_v3_free(struct backend *b)
{
        struct luo_v3 *v = to_v3(b);

        if (!v)
                return;
        /* Closing the device unpreserves every preserved fd (but keeps the state). */
        if (v->dev_fd >= 0)
                close(v->dev_fd);
        if (v->state_fd >= 0)
                close(v->state_fd);
        if (v->root_fd >= 0)
                close(v->root_fd);
        free(v);
}

static void luo_v3_freep(struct luo_v3 **p)
{
        if (*p)
                luo_v3_free(&(*p)->base);
}

static int luo_v3_get_state(struct backend *b, enum luo_state *ret)
{
        struct luo_ioc_get_state arg = { .size = sizeof(arg) };
        int r;

        r = v3_ioctl(to_v3(b), LUO_IOC_GET_STATE, &arg);
        if (r < 0)
                return r;
        if (arg.state >= _LUO_STATE_MAX)
                return -EPROTO;
        *ret = (enum luo_state)arg.state;
        return 0;
}

static int luo_v3_watch_fd(struct backend *b)
{
        return to_v3(b)->state_fd;
}

static short luo_v3_watch_events(struct backend *b)
{
        return POLLPRI | POLLERR;
}

static int luo_v3_watch_read(struct backend *b, enum luo_state *ret)
{
        /* lseek(0) + one read: consumes the notification and re-arms it. */
        return sysfs_read_state(to_v3(b)->state_fd, ret);
}

static int luo_v3_set_event(struct backend *b, enum luo_event ev)
{
        struct luo_ioc_set_event arg = { .size = sizeof(arg) };
        int r;

        /*
         * FREEZE is refused here, without asking the kernel. The v3 kernel
         * answers EINVAL anyway (freezing happens only inside the reboot
         * call), but a kernel that accepted it would suspend the workloads
         * with no kexec to follow: an open-ended blackout. Never risk that.
         */
        if ((unsigned)ev >= _LUO_EVENT_MAX || ev == LUO_EVENT_FREEZE)
                return -EINVAL;
        arg.event = (uint32_t)ev;
        r = v3_ioctl(to_v3(b), LUO_IOC_SET_EVENT, &arg);
        return r < 0 ? r : 0;
}

static int luo_v3_kexec_load(struct backend *b, int kernel_fd, int initrd_fd, const char *cmdline)
{
        unsigned long flags = 0;

        if (kernel_fd < 0)
                return -EBADF;
        if (!cmdline)
                cmdline = "";
        if (initrd_fd < 0) {
                initrd_fd = -1;
                flags |= KEXEC_FILE_NO_INITRAMFS;
        }
        /* The kernel wants the length including the terminating NUL. */
        return v3_kexec_file_load(to_v3(b), kernel_fd, initrd_fd, strlen(cmdline) + 1, cmdline,
                                  flags);
}

static int luo_v3_kexec_unload(struct backend *b)
{
        return v3_kexec_file_load(to_v3(b), -1, -1, 0, NULL, KEXEC_FILE_UNLOAD);
}

static int luo_v3_kexec_loaded(struct backend *b, bool *ret)
{
        char buf[SYSFS_ATTR_MAX];
        ssize_t n;

        n = v3_read_attr_at(to_v3(b), KEXEC_LOADED_REL, buf, sizeof(buf));
        if (n < 0)
                return (int)n;
        return sysfs_parse_bool(buf, (size_t)n, ret);
}

static int luo_v3_reboot(struct backend *b)
{
        struct luo_v3 *v = to_v3(b);
        bool loaded;
        int r;

        /*
         * With no image staged the kernel would still freeze a prepared
         * state and then fail the kexec with EINVAL, leaving the workloads
         * frozen. Refuse before that: -ENOEXEC, which the agent reports as
         * "no kernel staged".
         */
        r = luo_v3_kexec_loaded(b, &loaded);
        if (r < 0)
                return r;
        if (!loaded)
                return -ENOEXEC;

        sync();
        r = v->sys.reboot ? v->sys.reboot(LINUX_REBOOT_CMD_KEXEC) : reboot(LINUX_REBOOT_CMD_KEXEC);
        if (r < 0)
                return negative_errno();
        return 0; /* only an injected reboot returns success */
}

static int luo_v3_get_info(struct backend *b, struct backend_info *ret)
{
        struct luo_v3 *v = to_v3(b);
        struct backend_info info = {};
        char buf[sizeof(info.release) + 2];
        ssize_t n;

        n = v3_read_attr_at(v, BOOT_ID_REL, buf, sizeof(buf));
        if (n < 0)
                return (int)n;
        strip_trailing(buf);
        if (!uuid_valid(buf))
                return -EPROTO;
        memcpy(info.boot_id, buf, strlen(buf) + 1);

        n = v3_read_attr_at(v, OSRELEASE_REL, buf, sizeof(buf));
        if (n >= 0) {
                strip_trailing(buf);
                if (buf[0] == 0 || strlen(buf) >= sizeof(info.release))
                        n = -EPROTO;
        }
        if (n >= 0)
                memcpy(info.release, buf, strlen(buf) + 1);
        else {
                struct utsname u;
                if (uname(&u) < 0)
                        return negative_errno();
                _Static_assert(sizeof(u.release) <= sizeof(info.release), "release fits");
                memcpy(info.release, u.release, sizeof(u.release));
                info.release[sizeof(info.release) - 1] = 0;
        }

        /* "SECONDS.FRACTION IDLE": the blackout's share of the new boot (agent/verify.c). */
        char up[128];
        if (v3_read_attr_at(v, UPTIME_REL, up, sizeof(up)) > 0) {
                char *end = NULL;
                errno = 0;
                unsigned long long sec = strtoull(up, &end, 10);
                if (errno == 0 && end != up && sec < UINT64_MAX / 1000) {
                        info.uptime_ms = (uint64_t)sec * 1000;
                        if (*end == '.' && end[1] >= '0' && end[1] <= '9') {
                                info.uptime_ms += (uint64_t)(end[1] - '0') * 100;
                                if (end[2] >= '0' && end[2] <= '9')
                                        info.uptime_ms += (uint64_t)(end[2] - '0') * 10;
                        }
                }
        }

        *ret = info;
        return 0;
}

static int v3_sysfs_state_fresh(struct luo_v3 *v, enum luo_state *ret)
{
        _cleanup_close_ int fd = -1;

        /* A separate fd: the watch fd's armed notification stays untouched. */
        fd = v3_openat(&v->sys, v->root_fd, SYSFS_STATE_REL, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return fd;
        return sysfs_read_state(fd, ret);
}

static int luo_v3_self_check(struct backend *b, enum luo_state *ret_ioctl,
                             enum luo_state *ret_sysfs)
{
        struct luo_v3 *v = to_v3(b);
        enum luo_state a = LUO_STATE_UNDEFINED, s = LUO_STATE_UNDEFINED;
        int r;

        /*
         * Two tries: a transition that lands between the two reads (the
         * kernel moving on by itself, e.g. a failing prepare) is not a
         * disagreement. Two mismatches in a row are.
         */
        for (int attempt = 0; attempt < 2; attempt++) {
                r = luo_v3_get_state(b, &a);
                if (r < 0)
                        return r;
                r = v3_sysfs_state_fresh(v, &s);
                if (r < 0)
                        return r;
                if (a == s)
                        break;
        }
        if (ret_ioctl)
                *ret_ioctl = a;
        if (ret_sysfs)
                *ret_sysfs = s;
        return a == s ? 0 : -EPROTO;
}

static const struct backend_ops luo_v3_ops = {
        .name = "luo-v3",
        .free = luo_v3_free,
        .get_state = luo_v3_get_state,
        .watch_fd = luo_v3_watch_fd,
        .watch_events = luo_v3_watch_events,
        .watch_read = luo_v3_watch_read,
        .set_event = luo_v3_set_event,
        .kexec_load = luo_v3_kexec_load,
        .kexec_unload = luo_v3_kexec_unload,
        .kexec_loaded = luo_v3_kexec_loaded,
        .reboot = luo_v3_reboot,
        .get_info = luo_v3_get_info,
        .self_check = luo_v3_self_check,
};

static int v3_open_device(struct luo_v3 *v, const char *root, char *msg, size_t msg_size)
{
        char path[512], spath[512];
        int fd;

        fd = v3_openat(&v->sys, v->root_fd, DEV_LIVEUPDATE_REL, O_RDWR | O_CLOEXEC | O_NOCTTY);
        if (fd >= 0) {
                v->dev_fd = fd;
                return 0;
        }

        backend_display_path(root, DEV_LIVEUPDATE_REL, path, sizeof(path));
        switch (fd) {
        case -EBUSY:
                /* The device is exclusive: someone else is the live-update agent. */
                backend_msgf(msg, msg_size, "another live-update agent holds /dev/liveupdate");
                break;
        case -EACCES:
        case -EPERM:
                backend_msgf(msg, msg_size,
                             "opening %s needs CAP_SYS_ADMIN: run the agent as root (%s)", path,
                             strerror(-fd));
                break;
        case -ENOENT:
                backend_msgf(msg, msg_size,
                             "%s missing although %s exists: the kernel has the v3 live-update "
                             "orchestrator but no device for it",
                             path,
                             backend_display_path(root, SYSFS_STATE_REL, spath, sizeof(spath)));
                break;
        default:
                backend_msgf(msg, msg_size, "cannot open %s: %s", path, strerror(-fd));
                break;
        }
        return fd;
}

int luo_v3_open(const struct backend_config *cfg, struct backend **ret, char *msg, size_t msg_size)
{
        _cleanup_(luo_v3_freep) struct luo_v3 *v = NULL;
        const char *root;
        char path[512];
        enum luo_state s;
        int r;

        if (msg && msg_size > 0)
                msg[0] = 0;
        if (!cfg || !ret)
                return -EINVAL;
        root = cfg->root ? cfg->root : BACKEND_ROOT_DEFAULT;

        v = calloc(1, sizeof(*v));
        if (!v)
                return -ENOMEM;
        v->base.ops = &luo_v3_ops;
        v->root_fd = v->state_fd = v->dev_fd = -1;
        if (cfg->sys)
                v->sys = *cfg->sys;

        r = v3_openat(&v->sys, AT_FDCWD, root, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (r < 0) {
                backend_msgf(msg, msg_size, "cannot open root directory %s: %s", root,
                             strerror(-r));
                return r;
        }
        v->root_fd = r;

        backend_display_path(root, SYSFS_STATE_REL, path, sizeof(path));
        r = v3_openat(&v->sys, v->root_fd, SYSFS_STATE_REL, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (r == -ENOENT || r == -ENOTDIR) {
                backend_msgf(msg, msg_size,
                             "no live-update orchestrator found (%s missing); use --backend=sim to "
                             "run on the simulated kernel",
                             path);
                return -ENOENT;
        }
        if (r < 0) {
                backend_msgf(msg, msg_size, "cannot open %s: %s", path, strerror(-r));
                return r;
        }
        v->state_fd = r;

        /* The first read arms sysfs_notify() for the watch fd. */
        r = sysfs_read_state(v->state_fd, &s);
        if (r == -EPROTO) {
                backend_msgf(msg, msg_size, "unexpected content in %s: not a live-update state",
                             path);
                return r;
        }
        if (r < 0) {
                backend_msgf(msg, msg_size, "cannot read %s: %s", path, strerror(-r));
                return r;
        }

        r = v3_open_device(v, root, msg, msg_size);
        if (r < 0)
                return r;

        /* Probe the ioctl ABI once, so a mismatch is reported at start, not mid-update. */
        r = luo_v3_get_state(&v->base, &s);
        if (r == -EPROTO) {
                backend_msgf(msg, msg_size,
                             "GET_STATE on /dev/liveupdate returned an unknown state");
                return r;
        }
        if (r == -ENOTTY || r == -EINVAL) {
                backend_msgf(msg, msg_size,
                             "GET_STATE on /dev/liveupdate failed (%s): the kernel does not speak "
                             "the v3 live-update ioctl ABI",
                             strerror(-r));
                return r;
        }
        if (r < 0) {
                backend_msgf(msg, msg_size, "GET_STATE on /dev/liveupdate failed: %s",
                             strerror(-r));
                return r;
        }

        *ret = &TAKE_PTR(v)->base;
        return 0;
}
