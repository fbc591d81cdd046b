/*
 * luo_v3.c: the real backend, for kernels with the v3 live-update
 * orchestrator (kernel-abi.md section A): /sys/kernel/liveupdate/state for
 * watching, /dev/liveupdate ioctls (GET_STATE, SET_EVENT; FD_PRESERVE,
 * FD_UNPRESERVE, FD_RESTORE for the session broker's tokens and the
 * marker), kexec_file_load(2) and reboot(LINUX_REBOOT_CMD_KEXEC) through
 * host.c.
 *
 * Every path is resolved with openat() under a directory fd for cfg->root,
 * and every system call goes through a copy of cfg->sys when a member is set
 * (host.c), so the unit tests drive this file against a fake tree and a fake
 * kernel (the sys table's poll member is not used here: the agent's loop
 * polls the watch fd itself).
 *
 * Owns: the host (root dir fd), the sysfs state fd (the watch fd, read once
 * at open to arm sysfs_notify()), the /dev/liveupdate fd, the outgoing
 * marker memfd and the incoming marker's blob. The device is exclusive and
 * closing it unpreserves every preserved fd, so it is opened once and kept
 * until luo_v3_free(), through the reboot call.
 *
 * Threads: open/free on the main thread; watch_* on the event-loop thread
 * (the only user of the state fd's offset); set_event, kexec_*, reboot on the
 * worker (the helper's command) thread; fd_* and marker_* on the broker's
 * callers' threads. get_state(), kexec_loaded(), self_check() and describe()
 * may run on any thread concurrently: they use only stack buffers and fresh
 * fds (an ioctl on the shared device fd is safe). One lock, marker_lock, for
 * the marker's fields (marker_write, marker_read and FINISH dropping the
 * incoming blob); it is a leaf: nothing else is taken while it is held.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend-private.h"
#include "host.h"
#include "luofleet/backend.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "sysfs.h"

#define SYSFS_STATE_REL "sys/kernel/liveupdate/state"

_Static_assert(sizeof(struct luo_ioc_get_state) == 8, "GET_STATE struct is 8 bytes");
_Static_assert(sizeof(struct luo_ioc_set_event) == 8, "SET_EVENT struct is 8 bytes");
_Static_assert(sizeof(struct luo_ioc_fd_preserve) == 16, "FD_PRESERVE struct is 16 bytes");
_Static_assert(sizeof(struct luo_ioc_fd_unpreserve) == 16, "FD_UNPRESERVE struct is 16 bytes");
_Static_assert(sizeof(struct luo_ioc_fd_restore) == 16, "FD_RESTORE struct is 16 bytes");

struct luo_v3 {
        struct host_backend head; /* first: the ops, the luo_sys copy and the root fd */
        int state_fd;             /* sysfs state attribute, the watch fd */
        int dev_fd;               /* /dev/liveupdate, held for our whole life */

        pthread_mutex_t marker_lock;
        int marker_fd;         /* outgoing marker memfd, -1 until the first marker_write */
        bool marker_preserved; /* FD_PRESERVEd under BACKEND_MARKER_TOKEN */
        void *in_blob;         /* the incoming marker (FD_RESTORE at open), until FINISH */
        size_t in_len;
        int in_status; /* 0: in_blob; -EBADMSG: invalid (empty); else none (FD_RESTORE's errno) */
};

_Static_assert(offsetof(struct luo_v3, head) == 0, "host.c casts a struct backend *");

static struct luo_v3 *to_v3(struct backend *b)
{
        return (struct luo_v3 *)b;
}

static int v3_ioctl(struct luo_v3 *v, unsigned long request, void *arg)
{
        return host_ioctl(&v->head.host, v->dev_fd, request, arg);
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
        if (v->marker_fd >= 0)
                close(v->marker_fd);
        host_done(&v->head.host);
        free(v->in_blob);
        pthread_mutex_destroy(&v->marker_lock);
        free(v);
}

static void luo_v3_freep(struct luo_v3 **p)
{
        if (*p)
                luo_v3_free(&(*p)->head.base);
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
        struct luo_v3 *v = to_v3(b);
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
        r = v3_ioctl(v, LUO_IOC_SET_EVENT, &arg);
        if (r < 0)
                return r;
        if (ev == LUO_EVENT_FINISH) {
                /* The incoming marker is available until FINISH (backend.h). */
                pthread_mutex_lock(&v->marker_lock);
                free(v->in_blob);
                v->in_blob = NULL;
                v->in_len = 0;
                v->in_status = -ENOENT;
                pthread_mutex_unlock(&v->marker_lock);
        }
        return 0;
}

static int luo_v3_reboot(struct backend *b)
{
        bool loaded;
        int r;

        /*
         * With no image staged the kernel would still freeze a prepared
         * state and then fail the kexec with EINVAL, leaving the workloads
         * frozen. Refuse before that: -ENOEXEC, which the agent reports as
         * "no kernel staged".
         */
        r = host_op_kexec_loaded(b, &loaded);
        if (r < 0)
                return r;
        if (!loaded)
                return -ENOEXEC;
        return host_reboot_kexec(&to_v3(b)->head.host);
}

static int v3_sysfs_state_fresh(struct luo_v3 *v, enum luo_state *ret)
{
        _cleanup_close_ int fd = -1;

        /* A separate fd: the watch fd's armed notification stays untouched. */
        fd = host_open(&v->head.host, SYSFS_STATE_REL, O_RDONLY | O_CLOEXEC | O_NOCTTY);
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

/*
 * Tokens (the session broker's, backend.h): thin ioctls on the held device,
 * the kernel's errno unchanged. BACKEND_MARKER_TOKEN is the marker's: the
 * broker may not preserve under it (-EEXIST, as for a token in use), so a
 * kernel EEXIST for that token in v3_marker_preserve() can only be ours.
 */
static int luo_v3_fd_preserve(struct backend *b, int fd, uint64_t token)
{
        struct luo_ioc_fd_preserve arg = { .size = sizeof(arg), .fd = fd, .token = token };
        int r;

        if (token == BACKEND_MARKER_TOKEN)
                return -EEXIST;
        r = v3_ioctl(to_v3(b), LUO_IOC_FD_PRESERVE, &arg);
        return r < 0 ? r : 0;
}

static int luo_v3_fd_unpreserve(struct backend *b, uint64_t token)
{
        struct luo_ioc_fd_unpreserve arg = { .size = sizeof(arg), .token = token };
        int r;

        r = v3_ioctl(to_v3(b), LUO_IOC_FD_UNPRESERVE, &arg);
        return r < 0 ? r : 0;
}

static int v3_fd_restore(struct luo_v3 *v, uint64_t token, int *ret_fd)
{
        struct luo_ioc_fd_restore arg = { .size = sizeof(arg), .fd = -1, .token = token };
        int r;

        r = v3_ioctl(v, LUO_IOC_FD_RESTORE, &arg);
        if (r < 0)
                return r;
        if (arg.fd < 0)
                return -EPROTO;
        *ret_fd = arg.fd;
        return 0;
}

static int luo_v3_fd_restore(struct backend *b, uint64_t token, int *ret_fd)
{
        return v3_fd_restore(to_v3(b), token, ret_fd);
}

/*
 * FD_PRESERVE the marker memfd under BACKEND_MARKER_TOKEN (marker_lock held).
 * EEXIST means the token holds a file already, and only this file preserves
 * under it (luo_v3_fd_preserve refuses the token): an earlier marker of ours
 * in this device's life, whose preserve we did not get to record. That file
 * is not the memfd we write now, so it is swapped for ours: unpreserve, then
 * preserve again, once.
 */
static int v3_marker_preserve(struct luo_v3 *v)
{
        struct luo_ioc_fd_preserve arg = { .size = sizeof(arg),
                                           .fd = v->marker_fd,
                                           .token = BACKEND_MARKER_TOKEN };
        int r;

        r = v3_ioctl(v, LUO_IOC_FD_PRESERVE, &arg);
        if (r == -EEXIST) {
                r = luo_v3_fd_unpreserve(&v->head.base, BACKEND_MARKER_TOKEN);
                if (r < 0)
                        return r;
                arg = (struct luo_ioc_fd_preserve){ .size = sizeof(arg),
                                                    .fd = v->marker_fd,
                                                    .token = BACKEND_MARKER_TOKEN };
                r = v3_ioctl(v, LUO_IOC_FD_PRESERVE, &arg);
        }
        if (r < 0)
                return r;
        v->marker_preserved = true;
        return 0;
}

static int luo_v3_marker_write(struct backend *b, const void *blob, size_t len)
{
        struct luo_v3 *v = to_v3(b);
        enum luo_state s;
        int r;

        /* The kernel's state is the truth: only while it says prepared. */
        r = luo_v3_get_state(b, &s);
        if (r < 0)
                return r;
        if (s != LUO_STATE_PREPARED)
                return -EINVAL;
        if (len > HOST_MARKER_BLOB_MAX)
                return -EFBIG;
        if (len > 0 && !blob)
                return -EINVAL;

        pthread_mutex_lock(&v->marker_lock);
        r = 0;
        /* Created at the first write, then kept (and preserved) for our whole life. */
        if (v->marker_fd < 0)
                r = host_marker_memfd(&v->marker_fd);
        if (r >= 0 && !v->marker_preserved)
                r = v3_marker_preserve(v);
        if (r >= 0)
                r = host_marker_store(v->marker_fd, blob, len);
        pthread_mutex_unlock(&v->marker_lock);
        return r;
}

static int luo_v3_marker_read(struct backend *b, void **ret_blob, size_t *ret_len)
{
        struct luo_v3 *v = to_v3(b);
        void *copy = NULL;
        size_t len = 0;
        int r = 0;

        pthread_mutex_lock(&v->marker_lock);
        /* Restored but invalid (wrong magic or length): an empty blob, as on luo-sessions. */
        if (v->in_status != 0 && v->in_status != -EBADMSG)
                r = -ENOENT;
        else {
                len = v->in_status == 0 ? v->in_len : 0;
                copy = malloc(len > 0 ? len : 1);
                if (!copy)
                        r = -ENOMEM;
                else if (len > 0)
                        memcpy(copy, v->in_blob, len);
        }
        pthread_mutex_unlock(&v->marker_lock);
        if (r < 0)
                return r;
        *ret_blob = copy;
        *ret_len = len;
        return 0;
}

static int luo_v3_describe(struct backend *b, char *buf, size_t size)
{
        int n;

        if (!buf || size == 0)
                return -EINVAL;
        n = snprintf(buf, size, "v3 (GET_STATE SET_EVENT FD_PRESERVE FD_UNPRESERVE FD_RESTORE)");
        if (n < 0)
                return -EIO;
        return (size_t)n >= size ? -ENOBUFS : n;
}

static const struct backend_ops luo_v3_ops = {
        .name = "luo-v3",
        .free = luo_v3_free,
        .get_state = luo_v3_get_state,
        .watch_fd = luo_v3_watch_fd,
        .watch_events = luo_v3_watch_events,
        .watch_read = luo_v3_watch_read,
        .set_event = luo_v3_set_event,
        .kexec_load = host_op_kexec_load,
        .kexec_unload = host_op_kexec_unload,
        .kexec_loaded = host_op_kexec_loaded,
        .reboot = luo_v3_reboot,
        .get_info = host_op_get_info,
        .self_check = luo_v3_self_check,
        .fd_preserve = luo_v3_fd_preserve,
        .fd_unpreserve = luo_v3_fd_unpreserve,
        .fd_restore = luo_v3_fd_restore,
        .marker_write = luo_v3_marker_write,
        .marker_read = luo_v3_marker_read,
        .describe = luo_v3_describe,
};

static int v3_open_device(struct luo_v3 *v, const char *root, char *msg, size_t msg_size)
{
        char path[512], spath[512];
        int fd;

        fd = host_open(&v->head.host, HOST_DEV_LIVEUPDATE_REL, O_RDWR | O_CLOEXEC | O_NOCTTY);
        if (fd >= 0) {
                v->dev_fd = fd;
                return 0;
        }

        switch (fd) {
        case -EBUSY:
                /* The device is exclusive: someone else is the live-update agent. */
                backend_msgf(msg, msg_size, "another live-update agent holds /dev/liveupdate");
                break;
        case -ENOENT:
                backend_msgf(
                        msg, msg_size,
                        "%s missing although %s exists: the kernel has the v3 live-update "
                        "orchestrator but no device for it",
                        backend_display_path(root, HOST_DEV_LIVEUPDATE_REL, path, sizeof(path)),
                        backend_display_path(root, SYSFS_STATE_REL, spath, sizeof(spath)));
                break;
        default:
                host_msg_open_failed(root, HOST_DEV_LIVEUPDATE_REL, fd, msg, msg_size);
                break;
        }
        return fd;
}

/*
 * The previous boot's marker, if this boot is its live update: FD_RESTORE
 * once at open (the broker asks for it right after, through marker_read).
 * Never fails the open: a missing marker (ENOENT) is a live update without
 * one (not ours, or nothing was written), and so is any other FD_RESTORE
 * error (marker_read: -ENOENT); a restored marker with a wrong magic or
 * length reads as an empty blob.
 */
static void v3_marker_restore(struct luo_v3 *v)
{
        _cleanup_close_ int fd = -1;

        v->in_status = v3_fd_restore(v, BACKEND_MARKER_TOKEN, &fd);
        if (v->in_status < 0)
                return;
        v->in_status = host_marker_load(fd, &v->in_blob, &v->in_len);
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
        v->head.base.ops = &luo_v3_ops;
        v->state_fd = v->dev_fd = v->marker_fd = -1;
        v->in_status = -ENOENT;
        pthread_mutex_init(&v->marker_lock, NULL);

        r = host_init(&v->head.host, cfg, msg, msg_size);
        if (r < 0)
                return r;

        backend_display_path(root, SYSFS_STATE_REL, path, sizeof(path));
        r = host_open(&v->head.host, SYSFS_STATE_REL, O_RDONLY | O_CLOEXEC | O_NOCTTY);
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
        r = luo_v3_get_state(&v->head.base, &s);
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
        if (s == LUO_STATE_UPDATED)
                v3_marker_restore(v);

        *ret = &TAKE_PTR(v)->head.base;
        return 0;
}
