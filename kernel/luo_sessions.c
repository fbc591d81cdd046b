/*
 * luo_sessions.c: the real backend for the mainline live-update interface
 * (Linux 6.19 and later, kernel-abi.md section B, "luo-sessions"): sessions
 * of preserved files on /dev/liveupdate, no global state, no notification.
 * The agent's state is derived from facts (docs/design/session-broker.md,
 * "States with sessions"):
 *   normal    no "luofleet" marker session of ours, outgoing or incoming;
 *   prepared  our outgoing marker session exists (PREPARE created it, with
 *             a kexec image loaded);
 *   frozen    inside reboot(LINUX_REBOOT_CMD_KEXEC) (a failed reboot goes
 *             back to prepared: the kernel unfreezes the sessions);
 *   updated   RETRIEVE_SESSION("luofleet") succeeded at open: this boot is a
 *             live update's, until FINISH.
 * The marker session holds one memfd under token 1: "LFMK", a u32 length,
 * the blob (host.h), written by marker_write and read back by the next boot.
 *
 * /dev/liveupdate is exclusive (a second open: EBUSY) and other owners exist
 * (systemd 261+ keeps its fd store there), while closing it changes nothing
 * for sessions. So it is opened only for CREATE_SESSION/RETRIEVE_SESSION
 * and closed right after; EBUSY is waited out for up to 2 s. The session
 * fds are what keeps sessions alive: closing an outgoing one unpreserves its
 * files, closing a retrieved incoming one finishes it. This backend holds
 * the marker's; the broker holds the workloads' (session_* members).
 *
 * What the kernel interface cannot do, and what follows for the members:
 * there is no way to list sessions (neither ours nor anyone's: only a name
 * we know can be retrieved), no ioctl to unpreserve one file
 * (session_unpreserve is NULL: the broker rebuilds the session), no global
 * state to ask or watch (the watch fd is our own eventfd, written on every
 * transition we make), and handover only through kexec_file_load(2).
 *
 * Owns: the host (root dir fd), the watch eventfd, the outgoing marker
 * session and its memfd, the retrieved incoming marker session and its
 * blob.
 *
 * Threads: open/free on the main thread; set_event, kexec_*, reboot on the
 * helper's command thread, one call at a time; session_* on the broker's
 * thread; marker_* on the broker's callers; get_state, kexec_loaded,
 * get_info, self_check, describe and watch_* from any other thread. Two
 * locks, taken in this order and never across reboot():
 *   dev_lock  serialises our own opens of /dev/liveupdate, so two of our
 *             threads never make each other wait for EBUSY;
 *   lock      the derived state, the marker fields and the GET_NAME fact;
 *             held only for memory and the marker memfd's pwrite, never
 *             across an open of the device or a sleep.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backend-private.h"
#include "host.h"
#include "luofleet/backend.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"

/* The agent's marker session: no "lf:" prefix, so no workload's name can take it. */
#define MARKER_SESSION "luofleet"
#define MARKER_SESSION_TOKEN UINT64_C(1)
/* Another holder of /dev/liveupdate is waited out this long, in these steps. */
#define DEV_BUSY_WAIT_MS 2000u
#define DEV_BUSY_STEP_MS 20u
#define PROC_REL "proc"

_Static_assert(sizeof(struct luo_ioc_session) == 72, "CREATE/RETRIEVE_SESSION struct is 72 bytes");
_Static_assert(sizeof(struct luo_ioc_session_fd) == 16, "PRESERVE/RETRIEVE_FD struct is 16 bytes");
_Static_assert(sizeof(struct luo_ioc_session_finish) == 8, "FINISH struct is 8 bytes");
_Static_assert(sizeof(struct luo_ioc_session_get_name) == 72, "GET_NAME struct is 72 bytes");

struct luo_sessions {
        struct host_backend head; /* first: the ops, the luo_sys copy and the root fd */
        int watch_fd;             /* eventfd, written on every transition */

        pthread_mutex_t dev_lock;
        pthread_mutex_t lock; /* everything below */
        enum luo_state state;
        int marker_session; /* outgoing "luofleet" (prepared, frozen), else -1 */
        int marker_fd;      /* its memfd, preserved under token 1, else -1 */
        int in_session;     /* incoming "luofleet" retrieved at open (updated), else -1 */
        void *in_blob;      /* the incoming marker's blob (in_status 0) */
        size_t in_len;
        int in_status; /* 0: in_blob; -ENOENT: nothing was written; else invalid, read as empty */
        int in_fd_err; /* RETRIEVE_FD of token 1 failed with this (in_status then -EBADMSG) */
        int get_name;  /* GET_NAME: -1 not known yet, 0 absent (EINVAL), 1 works */
};

_Static_assert(offsetof(struct luo_sessions, head) == 0, "host.c casts a struct backend *");

static struct luo_sessions *to_ls(struct backend *b)
{
        return (struct luo_sessions *)b;
}

static void ls_sleep_ms(unsigned ms)
{
        struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L };

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/* The state changes only here (lock held); the watcher hears of it through the eventfd. */
static void ls_set_state_locked(struct luo_sessions *ls, enum luo_state s)
{
        uint64_t one = 1;

        ls->state = s;
        /* A full counter (EAGAIN) is still readable: the wake-up is not lost. */
        if (write(ls->watch_fd, &one, sizeof(one)) < 0) {
        }
}

static enum luo_state ls_state(struct luo_sessions *ls)
{
        enum luo_state s;

        pthread_mutex_lock(&ls->lock);
        s = ls->state;
        pthread_mutex_unlock(&ls->lock);
        return s;
}

/*
 * GET_NAME is newer than the rest (7.3): whether the kernel has it is learnt
 * from the first session fd we get (created or retrieved), rather than from
 * a throwaway session. EINVAL means absent (an unknown nr); any other error
 * teaches nothing and the next session fd asks again.
 */
static void ls_probe_get_name(struct luo_sessions *ls, int session)
{
        struct luo_ioc_session_get_name arg = { .size = sizeof(arg) };
        int known, r;

        pthread_mutex_lock(&ls->lock);
        known = ls->get_name;
        pthread_mutex_unlock(&ls->lock);
        if (known >= 0)
                return;
        r = host_ioctl(&ls->head.host, session, LUO_IOC_SESSION_GET_NAME, &arg);
        if (r >= 0)
                known = 1;
        else if (r == -EINVAL)
                known = 0;
        else
                return;
        pthread_mutex_lock(&ls->lock);
        ls->get_name = known;
        pthread_mutex_unlock(&ls->lock);
}

/* Open /dev/liveupdate (dev_lock held), waiting out another holder for up to 2 s. */
static int ls_dev_open(struct luo_sessions *ls)
{
        uint64_t deadline = now_mono_usec() + (uint64_t)DEV_BUSY_WAIT_MS * 1000;
        int fd;

        for (;;) {
                fd = host_open(&ls->head.host, HOST_DEV_LIVEUPDATE_REL,
                               O_RDWR | O_CLOEXEC | O_NOCTTY);
                if (fd != -EBUSY || now_mono_usec() >= deadline)
                        return fd;
                ls_sleep_ms(DEV_BUSY_STEP_MS);
        }
}

/*
 * CREATE_SESSION or RETRIEVE_SESSION of name: open the device, one ioctl,
 * close it. The device open's failure also goes to *ret_open_err (when
 * non-NULL) so that the open-time caller can word it; 0 when it opened.
 */
static int ls_dev_session(struct luo_sessions *ls, unsigned long request, const char *name,
                          int *ret_session, int *ret_open_err)
{
        struct luo_ioc_session arg = { .size = sizeof(arg), .fd = -1 };
        size_t n = name ? strlen(name) : 0;
        int dev, r;

        if (ret_open_err)
                *ret_open_err = 0;
        /* The kernel's rule (1..63 bytes and a NUL), checked before bothering the device. */
        if (n == 0 || n >= sizeof(arg.name))
                return -EINVAL;
        memcpy(arg.name, name, n + 1);

        pthread_mutex_lock(&ls->dev_lock);
        dev = ls_dev_open(ls);
        if (dev >= 0) {
                r = host_ioctl(&ls->head.host, dev, request, &arg);
                close(dev); /* changes nothing for sessions; lets other owners in */
        } else
                r = dev;
        pthread_mutex_unlock(&ls->dev_lock);
        if (dev < 0 && ret_open_err)
                *ret_open_err = dev;
        if (r < 0)
                return r;
        if (arg.fd < 0)
                return -EPROTO;
        ls_probe_get_name(ls, arg.fd);
        *ret_session = arg.fd;
        return 0;
}

/* ---- session members: thin ioctls, the kernel's errno unchanged ---- */

static int ls_session_create(struct backend *b, const char *name, int *ret_session)
{
        return ls_dev_session(to_ls(b), LUO_IOC_CREATE_SESSION, name, ret_session, NULL);
}

static int ls_session_retrieve(struct backend *b, const char *name, int *ret_session)
{
        return ls_dev_session(to_ls(b), LUO_IOC_RETRIEVE_SESSION, name, ret_session, NULL);
}

static int ls_session_preserve(struct backend *b, int session, int fd, uint64_t token)
{
        struct luo_ioc_session_fd arg = { .size = sizeof(arg), .fd = fd, .token = token };
        int r;

        r = host_ioctl(&to_ls(b)->head.host, session, LUO_IOC_SESSION_PRESERVE_FD, &arg);
        return r < 0 ? r : 0;
}

static int ls_session_retrieve_fd(struct backend *b, int session, uint64_t token, int *ret_fd)
{
        struct luo_ioc_session_fd arg = { .size = sizeof(arg), .fd = -1, .token = token };
        int r;

        r = host_ioctl(&to_ls(b)->head.host, session, LUO_IOC_SESSION_RETRIEVE_FD, &arg);
        if (r < 0)
                return r;
        if (arg.fd < 0)
                return -EPROTO;
        *ret_fd = arg.fd;
        return 0;
}

static int ls_session_finish(struct backend *b, int session)
{
        struct luo_ioc_session_finish arg = { .size = sizeof(arg) };
        int r;

        r = host_ioctl(&to_ls(b)->head.host, session, LUO_IOC_SESSION_FINISH, &arg);
        return r < 0 ? r : 0;
}

/* Outgoing: its files are unpreserved. Retrieved incoming: an implicit FINISH. */
static void ls_session_release(struct backend *b, int session)
{
        if (session >= 0)
                close(session);
}

/* ---- the derived state ---- */

static void ls_free(struct backend *b)
{
        struct luo_sessions *ls = to_ls(b);

        if (!ls)
                return;
        /*
         * Closing the marker sessions: an outgoing one is unpreserved (a
         * restart while prepared comes back normal), a retrieved incoming one
         * is finished (a restart while updated comes back normal too). The
         * kernel gives no way to keep them but to keep the fds (the helper's
         * systemd fd store, docs/design/session-broker.md, "Crashes").
         */
        if (ls->marker_session >= 0)
                close(ls->marker_session);
        if (ls->marker_fd >= 0)
                close(ls->marker_fd);
        if (ls->in_session >= 0)
                close(ls->in_session);
        if (ls->watch_fd >= 0)
                close(ls->watch_fd);
        host_done(&ls->head.host);
        free(ls->in_blob);
        pthread_mutex_destroy(&ls->lock);
        pthread_mutex_destroy(&ls->dev_lock);
        free(ls);
}

static void ls_freep(struct luo_sessions **p)
{
        if (*p)
                ls_free(&(*p)->head.base);
}

static int ls_get_state(struct backend *b, enum luo_state *ret)
{
        *ret = ls_state(to_ls(b));
        return 0;
}

static int ls_watch_fd(struct backend *b)
{
        return to_ls(b)->watch_fd;
}

static short ls_watch_events(struct backend *b)
{
        return POLLIN;
}

static int ls_watch_read(struct backend *b, enum luo_state *ret)
{
        uint64_t n;

        /* Drain (wake-ups coalesce), then the state as it is now. */
        if (read(to_ls(b)->watch_fd, &n, sizeof(n)) < 0 && errno != EAGAIN && errno != EINTR)
                return negative_errno();
        return ls_get_state(b, ret);
}

/*
 * PREPARE: create the marker session with one memfd, sized before it is
 * preserved (the kernel freezes a preserved memfd's size). Nothing is left
 * behind on failure: the session fd and the memfd close on the way out.
 */
static int ls_prepare(struct luo_sessions *ls)
{
        _cleanup_close_ int memfd = -1, session = -1;
        bool loaded;
        int r;

        if (ls_state(ls) != LUO_STATE_NORMAL)
                return -EINVAL;
        /* The handover needs a kexec_file_load'ed image: without one, nothing to vouch for. */
        r = host_kexec_loaded(&ls->head.host, &loaded);
        if (r < 0)
                return r;
        if (!loaded)
                return -ENOEXEC;

        r = host_marker_memfd(&memfd);
        if (r < 0)
                return r;
        r = ls_dev_session(ls, LUO_IOC_CREATE_SESSION, MARKER_SESSION, &session, NULL);
        if (r < 0)
                return r;
        r = ls_session_preserve(&ls->head.base, session, memfd, MARKER_SESSION_TOKEN);
        if (r < 0)
                return r;

        pthread_mutex_lock(&ls->lock);
        ls->marker_session = TAKE_FD(session);
        ls->marker_fd = TAKE_FD(memfd);
        ls_set_state_locked(ls, LUO_STATE_PREPARED);
        pthread_mutex_unlock(&ls->lock);
        return 0;
}

/*
 * CANCEL: release the marker session (its memfd is unpreserved), then
 * unload the kexec image. The release comes first because it is what makes
 * the host normal, and a normal host refuses the reboot (EPERM): should the
 * unload then fail, its error is returned with the cancel done and only the
 * image left staged. The workloads' sessions are not ours to touch.
 */
static int ls_cancel(struct luo_sessions *ls)
{
        _cleanup_close_ int session = -1, memfd = -1;

        pthread_mutex_lock(&ls->lock);
        if (ls->state != LUO_STATE_PREPARED && ls->state != LUO_STATE_FROZEN) {
                pthread_mutex_unlock(&ls->lock);
                return -EINVAL;
        }
        session = TAKE_FD(ls->marker_session);
        memfd = TAKE_FD(ls->marker_fd);
        ls_set_state_locked(ls, LUO_STATE_NORMAL);
        pthread_mutex_unlock(&ls->lock);

        if (session >= 0)
                close(TAKE_FD(session));
        return host_kexec_unload(&ls->head.host);
}

/* FINISH: the incoming marker session's FINISH, then release it. */
static int ls_finish(struct luo_sessions *ls)
{
        int session, r;

        pthread_mutex_lock(&ls->lock);
        if (ls->state != LUO_STATE_UPDATED) {
                pthread_mutex_unlock(&ls->lock);
                return -EINVAL;
        }
        session = ls->in_session;
        pthread_mutex_unlock(&ls->lock);

        /* An error leaves us updated: the finish can be tried again. */
        r = ls_session_finish(&ls->head.base, session);
        if (r < 0)
                return r;

        pthread_mutex_lock(&ls->lock);
        ls->in_session = -1;
        free(ls->in_blob);
        ls->in_blob = NULL;
        ls->in_len = 0;
        ls->in_status = -ENOENT;
        ls->in_fd_err = 0;
        ls_set_state_locked(ls, LUO_STATE_NORMAL);
        pthread_mutex_unlock(&ls->lock);
        close(session);
        return 0;
}

static int ls_set_event(struct backend *b, enum luo_event ev)
{
        switch (ev) {
        case LUO_EVENT_PREPARE:
                return ls_prepare(to_ls(b));
        case LUO_EVENT_CANCEL:
                return ls_cancel(to_ls(b));
        case LUO_EVENT_FINISH:
                return ls_finish(to_ls(b));
        default:
                /* FREEZE happens only inside the reboot call, as on the v3 kernel. */
                return -EINVAL;
        }
}

/*
 * reboot: only while prepared. From normal the kernel would do a plain
 * kexec carrying whatever sessions others hold: the helper refuses a kexec
 * the agent has not vouched for (EPERM). The lock is not held across the
 * reboot call: the state reads frozen meanwhile.
 */
static int ls_reboot(struct backend *b)
{
        struct luo_sessions *ls = to_ls(b);
        bool loaded;
        int r;

        if (ls_state(ls) != LUO_STATE_PREPARED)
                return -EPERM;
        r = host_kexec_loaded(&ls->head.host, &loaded);
        if (r < 0)
                return r;
        if (!loaded)
                return -ENOEXEC;

        pthread_mutex_lock(&ls->lock);
        ls_set_state_locked(ls, LUO_STATE_FROZEN);
        pthread_mutex_unlock(&ls->lock);

        r = host_reboot_kexec(&ls->head.host);
        if (r < 0) {
                /* The kernel unfroze the sessions: prepared again. */
                pthread_mutex_lock(&ls->lock);
                ls_set_state_locked(ls, LUO_STATE_PREPARED);
                pthread_mutex_unlock(&ls->lock);
        }
        return r;
}

/* Nothing to compare: the state is ours alone. */
static int ls_self_check(struct backend *b, enum luo_state *ret_ioctl, enum luo_state *ret_sysfs)
{
        enum luo_state s = ls_state(to_ls(b));

        if (ret_ioctl)
                *ret_ioctl = s;
        if (ret_sysfs)
                *ret_sysfs = s;
        return 0;
}

/* ---- the marker ---- */

static int ls_marker_write(struct backend *b, const void *blob, size_t len)
{
        struct luo_sessions *ls = to_ls(b);
        int r;

        pthread_mutex_lock(&ls->lock);
        /* Not while frozen: the kernel is serialising the session at that moment. */
        if (ls->state != LUO_STATE_PREPARED || ls->marker_fd < 0)
                r = -EINVAL;
        else
                r = host_marker_store(ls->marker_fd, blob, len); /* -EFBIG */
        pthread_mutex_unlock(&ls->lock);
        return r;
}

/*
 * The previous boot's blob, a copy. An invalid marker (wrong magic or length,
 * token 1 missing) reads as an empty blob: the boot is a live update's all
 * the same (the marker session came through), and describe() says why.
 */
static int ls_marker_read(struct backend *b, void **ret_blob, size_t *ret_len)
{
        struct luo_sessions *ls = to_ls(b);
        void *copy = NULL;
        size_t len = 0;
        int r = 0;

        pthread_mutex_lock(&ls->lock);
        if (ls->in_session < 0 || ls->in_status == -ENOENT)
                r = -ENOENT;
        else {
                len = ls->in_status == 0 ? ls->in_len : 0;
                copy = malloc(len > 0 ? len : 1);
                if (!copy)
                        r = -ENOMEM;
                else if (len > 0)
                        memcpy(copy, ls->in_blob, len);
        }
        pthread_mutex_unlock(&ls->lock);
        if (r < 0)
                return r;
        *ret_blob = copy;
        *ret_len = len;
        return 0;
}

static int ls_describe(struct backend *b, char *buf, size_t size)
{
        struct luo_sessions *ls = to_ls(b);
        char why[96] = "";
        bool get_name, incoming;
        int status, fd_err, n;

        if (!buf || size == 0)
                return -EINVAL;
        pthread_mutex_lock(&ls->lock);
        get_name = ls->get_name == 1;
        incoming = ls->in_session >= 0;
        status = ls->in_status;
        fd_err = ls->in_fd_err;
        pthread_mutex_unlock(&ls->lock);

        if (incoming && status == -ENOENT)
                snprintf(why, sizeof(why), "; incoming marker empty (nothing was written)");
        else if (incoming && fd_err < 0)
                snprintf(why, sizeof(why),
                         "; incoming marker invalid (RETRIEVE_FD: %s), read as empty",
                         strerror(-fd_err));
        else if (incoming && status < 0)
                snprintf(why, sizeof(why), "; incoming marker invalid (%s), read as empty",
                         status == -EBADMSG ? "bad magic or length" : strerror(-status));
        n = snprintf(
                buf, size,
                "sessions (CREATE_SESSION RETRIEVE_SESSION PRESERVE_FD RETRIEVE_FD FINISH%s)%s",
                get_name ? " GET_NAME" : "", why);
        if (n < 0)
                return -EIO;
        return (size_t)n >= size ? -ENOBUFS : n;
}

static const struct backend_ops luo_sessions_ops = {
        .name = "luo-sessions",
        .free = ls_free,
        .get_state = ls_get_state,
        .watch_fd = ls_watch_fd,
        .watch_events = ls_watch_events,
        .watch_read = ls_watch_read,
        .set_event = ls_set_event,
        .kexec_load = host_op_kexec_load,
        .kexec_unload = host_op_kexec_unload,
        .kexec_loaded = host_op_kexec_loaded,
        .reboot = ls_reboot,
        .get_info = host_op_get_info,
        .self_check = ls_self_check,
        .session_create = ls_session_create,
        .session_retrieve = ls_session_retrieve,
        .session_preserve = ls_session_preserve,
        .session_unpreserve = NULL, /* the kernel has no such ioctl */
        .session_retrieve_fd = ls_session_retrieve_fd,
        .session_finish = ls_session_finish,
        .session_release = ls_session_release,
        .marker_write = ls_marker_write,
        .marker_read = ls_marker_read,
        .describe = ls_describe,
};

/* ---- open ---- */

static void closedirp(DIR **d)
{
        if (*d)
                closedir(*d);
}

/* Does <proc>/<pid>/fd hold a link to the device (by its path, or by its inode)? */
static bool ls_pid_holds(struct luo_sessions *ls, int proc_fd, const char *pid, const char *devpath,
                         const struct stat *dev_st)
{
        _cleanup_(closedirp) DIR *d = NULL;
        struct dirent *de;
        char rel[NAME_MAX + 8], link[PATH_MAX];
        struct stat st;
        int fd;

        if (snprintf(rel, sizeof(rel), "%s/fd", pid) >= (int)sizeof(rel))
                return false;
        fd = host_openat(&ls->head.host, proc_fd, rel, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return false;
        d = fdopendir(fd);
        if (!d) {
                close(fd);
                return false;
        }
        while ((de = readdir(d))) {
                ssize_t n;

                if (de->d_name[0] == '.')
                        continue;
                n = readlinkat(dirfd(d), de->d_name, link, sizeof(link) - 1);
                if (n > 0) {
                        link[n] = 0;
                        if (strcmp(link, "/" HOST_DEV_LIVEUPDATE_REL) == 0 ||
                            strcmp(link, devpath) == 0)
                                return true;
                }
                /* Another mount namespace names it differently: the inode is the same. */
                if (dev_st && fstatat(dirfd(d), de->d_name, &st, 0) == 0 &&
                    st.st_dev == dev_st->st_dev && st.st_ino == dev_st->st_ino)
                        return true;
        }
        return false;
}

/*
 * Who holds /dev/liveupdate: the first process under <root>/proc whose fd
 * table links to it. 0 with its pid and comm ("?" when unreadable), or
 * -ENOENT (not found, or /proc unreadable: other users' fds need root).
 */
static int ls_find_holder(struct luo_sessions *ls, const char *root, uint64_t *ret_pid, char *comm,
                          size_t comm_size)
{
        _cleanup_(closedirp) DIR *d = NULL;
        struct dirent *de;
        struct stat dev_st;
        char devpath[512];
        bool have_dev;
        int fd;

        backend_display_path(root, HOST_DEV_LIVEUPDATE_REL, devpath, sizeof(devpath));
        have_dev = fstatat(ls->head.host.root_fd, HOST_DEV_LIVEUPDATE_REL, &dev_st, 0) == 0;
        fd = host_open(&ls->head.host, PROC_REL, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return -ENOENT;
        d = fdopendir(fd);
        if (!d) {
                close(fd);
                return -ENOENT;
        }
        while ((de = readdir(d))) {
                char rel[NAME_MAX + 16];
                uint64_t pid;
                ssize_t n;

                if (parse_u64(de->d_name, INT_MAX, &pid) < 0 || pid == 0)
                        continue;
                if (!ls_pid_holds(ls, dirfd(d), de->d_name, devpath, have_dev ? &dev_st : NULL))
                        continue;
                *ret_pid = pid;
                n = -EINVAL;
                if (snprintf(rel, sizeof(rel), PROC_REL "/%s/comm", de->d_name) < (int)sizeof(rel))
                        n = host_read_attr(&ls->head.host, rel, comm, comm_size);
                if (n > 0)
                        strip_trailing(comm);
                if (n <= 0 || comm[0] == 0)
                        snprintf(comm, comm_size, "?");
                return 0;
        }
        return -ENOENT;
}

/* The operator's sentence for a device open that failed at start-up. */
static void ls_msg_open_failed(struct luo_sessions *ls, const char *root, int err, char *msg,
                               size_t msg_size)
{
        char comm[64];
        uint64_t pid;

        if (err != -EBUSY) {
                host_msg_open_failed(root, HOST_DEV_LIVEUPDATE_REL, err, msg, msg_size);
                return;
        }
        if (msg && msg_size > 0 && ls_find_holder(ls, root, &pid, comm, sizeof(comm)) == 0)
                backend_msgf(msg, msg_size, "process %" PRIu64 " (%s) holds /dev/liveupdate", pid,
                             comm);
        else
                backend_msgf(msg, msg_size, "another process holds /dev/liveupdate");
}

/*
 * <root>/dev/liveupdate must be there and be a character device. The unit
 * tests fake it with a regular file and a fake kernel behind an injected
 * ioctl (test_luo_sessions.c, as test_luo_v3.c does): a regular file passes
 * only then, since a real ioctl on it could only fail.
 */
static int ls_check_device(struct luo_sessions *ls, const char *root, char *msg, size_t msg_size)
{
        char path[512];
        struct stat st;
        int r;

        backend_display_path(root, HOST_DEV_LIVEUPDATE_REL, path, sizeof(path));
        if (fstatat(ls->head.host.root_fd, HOST_DEV_LIVEUPDATE_REL, &st, 0) < 0) {
                r = negative_errno();
                if (r == -ENOENT || r == -ENOTDIR) {
                        backend_msgf(msg, msg_size,
                                     "%s missing: booted without liveupdate=on kho=on? (the "
                                     "live-update sessions interface of Linux 6.19+ needs both)",
                                     path);
                        return -ENOENT;
                }
                backend_msgf(msg, msg_size, "cannot look at %s: %s", path, strerror(-r));
                return r;
        }
        if (S_ISCHR(st.st_mode) || (S_ISREG(st.st_mode) && ls->head.host.sys.ioctl))
                return 0;
        backend_msgf(msg, msg_size, "%s is not a character device", path);
        return -ENODEV;
}

/* The incoming marker (token 1 of the retrieved marker session), read once at open. */
static void ls_marker_restore(struct luo_sessions *ls)
{
        _cleanup_close_ int fd = -1;
        int r;

        r = ls_session_retrieve_fd(&ls->head.base, ls->in_session, MARKER_SESSION_TOKEN, &fd);
        if (r < 0) {
                ls->in_fd_err = r;
                ls->in_status = -EBADMSG;
                return;
        }
        ls->in_status = host_marker_load(fd, &ls->in_blob, &ls->in_len);
}

int luo_sessions_open(const struct backend_config *cfg, struct backend **ret, char *msg,
                      size_t msg_size)
{
        _cleanup_(ls_freep) struct luo_sessions *ls = NULL;
        const char *root;
        char path[512];
        int r, open_err, session = -1;

        if (msg && msg_size > 0)
                msg[0] = 0;
        if (!cfg || !ret)
                return -EINVAL;
        root = cfg->root ? cfg->root : BACKEND_ROOT_DEFAULT;

        ls = calloc(1, sizeof(*ls));
        if (!ls)
                return -ENOMEM;
        ls->head.base.ops = &luo_sessions_ops;
        ls->head.host.root_fd = ls->watch_fd = -1;
        ls->marker_session = ls->marker_fd = ls->in_session = -1;
        ls->state = LUO_STATE_NORMAL;
        ls->in_status = -ENOENT;
        ls->get_name = -1;
        pthread_mutex_init(&ls->dev_lock, NULL);
        pthread_mutex_init(&ls->lock, NULL);

        r = host_init(&ls->head.host, cfg, msg, msg_size);
        if (r < 0)
                return r;
        r = ls_check_device(ls, root, msg, msg_size);
        if (r < 0)
                return r;
        ls->watch_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (ls->watch_fd < 0) {
                r = negative_errno();
                backend_msgf(msg, msg_size, "cannot create the state watch eventfd: %s",
                             strerror(-r));
                return r;
        }

        /* Is this boot a live update of ours? Our marker session says so. */
        r = ls_dev_session(ls, LUO_IOC_RETRIEVE_SESSION, MARKER_SESSION, &session, &open_err);
        if (open_err < 0) {
                ls_msg_open_failed(ls, root, open_err, msg, msg_size);
                return open_err;
        }
        if (r == -ENOENT) {
                /* A cold boot, or a live update that did not carry our marker: normal. */
                *ret = &TAKE_PTR(ls)->head.base;
                return 0;
        }
        if (r < 0) {
                backend_display_path(root, HOST_DEV_LIVEUPDATE_REL, path, sizeof(path));
                /*
                 * EINVAL: retrieved already (by another agent of this boot,
                 * still alive), or not the sessions ABI at all. Either way the
                 * state cannot be known: refuse rather than guess.
                 */
                backend_msgf(msg, msg_size, "RETRIEVE_SESSION(\"%s\") on %s failed: %s%s",
                             MARKER_SESSION, path, strerror(-r),
                             r == -EINVAL || r == -ENOTTY
                                     ? " (retrieved already by another process of this boot, or "
                                       "the kernel does not speak the live-update sessions ABI)"
                                     : "");
                return r;
        }
        ls->in_session = session;
        ls_marker_restore(ls);
        ls->state = LUO_STATE_UPDATED;

        *ret = &TAKE_PTR(ls)->head.base;
        return 0;
}
