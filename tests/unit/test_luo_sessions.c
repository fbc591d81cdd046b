/*
 * test_luo_sessions.c: the mainline backend (kernel/luo_sessions.c) against
 * a fake Linux 6.19+/7.3 kernel injected through struct luo_sys and a fake
 * root tree (dev/liveupdate as a regular file, sys/kernel/kexec_loaded,
 * proc/sys/kernel/{random/boot_id,osrelease}, proc/<pid>/{fd/N,comm}).
 *
 * The fake kernel checks request numbers and struct sizes exactly as
 * kernel-abi.md section B gives them (literal numbers, never the project's
 * macros) and models sessions: names, EEXIST, ENOENT, EINVAL on a second
 * retrieve, PRESERVE_FD EEXIST/EBUSY/EBADF/ENOENT (memfds only),
 * RETRIEVE_FD ENOENT after FINISH, an incoming set a test seeds (or
 * fake_live_update() fills from the outgoing sessions) to play the boot after
 * a live update, and an exclusive device that can be busy for N opens.
 * Descriptors it hands out (the device, session fds) are one end of a
 * socketpair whose other end it keeps, so it sees the backend close them
 * (fake_reap()): a closed outgoing session unpreserves its files, a closed
 * retrieved one is finished. The fake is a global: luo_sys members take no
 * userdata. Single-threaded except test_threads (which reads the state only).
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/kexec.h>
#include <linux/reboot.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "luofleet/backend.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "testutil.h"

#define BOOT_ID "5b1e2c3d-4f5a-4b6c-8d7e-9f0a1b2c3d4e"
#define MARKER_MAX (1024 * 1024) /* BACKEND_MARKER_MAX, restated */
#define NSESS 16
#define NFILES 8

struct fake_file {
        uint64_t token;
        int fd;        /* the kernel's own reference (a dup) */
        off_t size;    /* st_size when preserved: the mainline kernel freezes it */
        char link[96]; /* /proc/self/fd link text when preserved ("/memfd:NAME ...") */
        bool retrieved;
};

struct fake_session {
        bool used, incoming, retrieved, finished;
        char name[64];
        int peer;    /* the fake's end of the handle's socketpair; -1: no handle open */
        int foreign; /* a handle "another process" holds (the fake itself), else -1 */
        ino_t ino;   /* the handle's inode */
        struct fake_file files[NFILES];
        int finishes;
};

static struct fake {
        char root[PATH_MAX];
        struct fake_session s[NSESS];
        /* the device */
        int dev_peer;
        ino_t dev_ino;
        int dev_flags, dev_opens, dev_closes, dev_open_attempts;
        int dev_busy; /* the next N opens fail with EBUSY; < 0: all of them */
        int dev_errno;
        int dev_self_busy; /* an open while one of ours was still open: must stay 0 */
        /* the ioctls */
        int n_create, n_retrieve, n_preserve, n_retrieve_fd, n_finish, n_get_name;
        char last_retrieve[64];
        unsigned long fail_req; /* this request fails once with fail_errno */
        int fail_errno;
        bool no_get_name; /* a kernel before GET_NAME: EINVAL */
        int bad_size, bad_fd, bad_req;
        /* kexec and reboot */
        struct {
                int calls, err;
                unsigned long flags;
        } kexec;
        int reboot_calls, reboot_cmd, reboot_errno;
        enum luo_state state_in_reboot;
        struct backend *current; /* for the reboot's look at the state */
} fake;

/* ---- the fake tree ---- */

static void fake_path(char *buf, size_t size, const char *rel)
{
        ck_assert_int_lt(snprintf(buf, size, "%s/%s", fake.root, rel), (int)size);
}

static void tree_put(const char *rel, const char *text)
{
        char path[PATH_MAX + 64];
        _cleanup_close_ int fd = -1;

        fake_path(path, sizeof(path), rel);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write_all(fd, text, strlen(text)), 0);
}

static void tree_dir(const char *rel)
{
        char path[PATH_MAX + 64];

        fake_path(path, sizeof(path), rel);
        ck_assert_int_eq(mkdir_p(path, 0755), 0);
}

static void tree_rm(const char *rel)
{
        char path[PATH_MAX + 64];

        fake_path(path, sizeof(path), rel);
        testutil_rm_rf(path);
}

static void tree_symlink(const char *target, const char *rel)
{
        char path[PATH_MAX + 64];

        fake_path(path, sizeof(path), rel);
        ck_assert_int_eq(symlink(target, path), 0);
}

static void image_loaded(bool yes)
{
        tree_put("sys/kernel/kexec_loaded", yes ? "1\n" : "0\n");
}

/* ---- the fake kernel's handles ---- */

/* A socketpair: one end for the backend (returned), the other kept in *ret_peer. */
static int handle_new(int *ret_peer, ino_t *ret_ino)
{
        int sv[2];
        struct stat st;

        ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        ck_assert_int_eq(fstat(sv[0], &st), 0);
        *ret_peer = sv[1];
        *ret_ino = st.st_ino;
        return sv[0];
}

/* Nothing is ever written on these sockets: readable means the other end is gone. */
static bool handle_closed(int peer)
{
        struct pollfd p = { .fd = peer, .events = POLLIN };

        return poll(&p, 1, 0) == 1;
}

static void close_fd(int *fd)
{
        if (*fd >= 0)
                close(*fd);
        *fd = -1;
}

static void session_drop(struct fake_session *s)
{
        for (int i = 0; i < NFILES; i++)
                close_fd(&s->files[i].fd);
        close_fd(&s->peer);
        close_fd(&s->foreign);
        s->used = false;
}

static struct fake_session *session_new(const char *name, bool incoming)
{
        for (int i = 0; i < NSESS; i++) {
                struct fake_session *s = &fake.s[i];
                if (s->used)
                        continue;
                memset(s, 0, sizeof(*s));
                s->used = true;
                s->incoming = incoming;
                s->peer = s->foreign = -1;
                for (int j = 0; j < NFILES; j++)
                        s->files[j].fd = -1;
                snprintf(s->name, sizeof(s->name), "%s", name);
                return s;
        }
        ck_abort_msg("fake: too many sessions");
        return NULL;
}

static struct fake_session *session_find(const char *name, bool incoming)
{
        for (int i = 0; i < NSESS; i++)
                if (fake.s[i].used && fake.s[i].incoming == incoming &&
                    strcmp(fake.s[i].name, name) == 0)
                        return &fake.s[i];
        return NULL;
}

static struct fake_file *session_file(struct fake_session *s, uint64_t token)
{
        for (int i = 0; i < NFILES; i++)
                if (s->files[i].fd >= 0 && s->files[i].token == token)
                        return &s->files[i];
        return NULL;
}

static struct fake_file *session_file_add(struct fake_session *s, uint64_t token, int fd)
{
        for (int i = 0; i < NFILES; i++) {
                struct fake_file *f = &s->files[i];
                struct stat st;
                char proc[64];
                ssize_t n;

                if (f->fd >= 0)
                        continue;
                memset(f, 0, sizeof(*f));
                f->token = token;
                f->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
                ck_assert_int_ge(f->fd, 0);
                ck_assert_int_eq(fstat(fd, &st), 0);
                f->size = st.st_size;
                snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
                n = readlink(proc, f->link, sizeof(f->link) - 1);
                f->link[n > 0 ? n : 0] = 0;
                return f;
        }
        ck_abort_msg("fake: too many files in a session");
        return NULL;
}

/* What the backend closed since the last look. */
static void fake_reap(void)
{
        if (fake.dev_peer >= 0 && handle_closed(fake.dev_peer)) {
                close_fd(&fake.dev_peer);
                fake.dev_closes++;
        }
        for (int i = 0; i < NSESS; i++) {
                struct fake_session *s = &fake.s[i];
                if (!s->used || s->peer < 0 || !handle_closed(s->peer))
                        continue;
                /* outgoing: its files are unpreserved; retrieved: an implicit FINISH */
                session_drop(s);
        }
}

/* ---- the fake kernel's calls ---- */

static int kfail(int e)
{
        errno = e;
        return -1;
}

static int fake_openat(int dirfd, const char *path, int flags, mode_t mode)
{
        if (strcmp(path, "dev/liveupdate") != 0)
                return openat(dirfd, path, flags, mode);
        fake_reap();
        fake.dev_open_attempts++;
        if (fake.dev_errno)
                return kfail(fake.dev_errno);
        if (fake.dev_busy != 0) {
                if (fake.dev_busy > 0)
                        fake.dev_busy--;
                return kfail(EBUSY);
        }
        if (fake.dev_peer >= 0) {
                fake.dev_self_busy++; /* exclusive: the backend still holds it */
                return kfail(EBUSY);
        }
        fake.dev_opens++;
        fake.dev_flags = flags;
        return handle_new(&fake.dev_peer, &fake.dev_ino);
}

/* Name rules: NUL-terminated within 64 bytes, not empty. */
static bool name_ok(const char *name)
{
        return name[0] != 0 && memchr(name, 0, 64) != NULL;
}

/* CREATE_SESSION 0xBA00, RETRIEVE_SESSION 0xBA01: {u32 size = 72; s32 fd (out); u8 name[64]} */
static int fake_dev_ioctl(unsigned long request, void *arg)
{
        struct {
                uint32_t size;
                int32_t fd;
                char name[64];
        } *a = arg;
        struct fake_session *s;

        if (request != 0xBA00 && request != 0xBA01) {
                fake.bad_req++;
                return kfail(EINVAL);
        }
        if (a->size != 72) {
                fake.bad_size++;
                return kfail(EINVAL);
        }
        if (!name_ok(a->name))
                return kfail(EINVAL);
        if (request == 0xBA00) {
                fake.n_create++;
                if (session_find(a->name, false))
                        return kfail(EEXIST);
                s = session_new(a->name, false);
        } else {
                fake.n_retrieve++;
                snprintf(fake.last_retrieve, sizeof(fake.last_retrieve), "%s", a->name);
                s = session_find(a->name, true);
                if (!s)
                        return kfail(ENOENT);
                if (s->retrieved)
                        return kfail(EINVAL);
                s->retrieved = true;
        }
        a->fd = handle_new(&s->peer, &s->ino);
        return 0;
}

/* PRESERVE_FD 0xBA40: outgoing only; the file checks of kernel-abi.md section B. */
static int fake_preserve(struct fake_session *s, int fd, uint64_t token)
{
        char proc[64], link[96] = "";
        struct stat st, other;

        fake.n_preserve++;
        if (s->incoming)
                return kfail(EINVAL);
        if (session_file(s, token))
                return kfail(EEXIST);
        if (fstat(fd, &st) < 0)
                return kfail(EBADF);
        snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
        if (readlink(proc, link, sizeof(link) - 1) < 0 || strncmp(link, "/memfd:", 7) != 0)
                return kfail(ENOENT); /* no handler: only memfds in 7.3 */
        for (int i = 0; i < NSESS; i++)
                for (int j = 0; fake.s[i].used && !fake.s[i].incoming && j < NFILES; j++)
                        if (fake.s[i].files[j].fd >= 0 &&
                            fstat(fake.s[i].files[j].fd, &other) == 0 &&
                            other.st_ino == st.st_ino && other.st_dev == st.st_dev)
                                return kfail(EBUSY);
        session_file_add(s, token, fd);
        return 0;
}

static int fake_session_ioctl(struct fake_session *s, unsigned long request, void *arg)
{
        uint32_t *a = arg;
        struct fake_file *f;

        switch (request) {
        case 0xBA40: /* PRESERVE_FD {u32 size = 16; s32 fd; u64 token} */
        case 0xBA41: /* RETRIEVE_FD {u32 size = 16; s32 fd (out); u64 token} */
                if (a[0] != 16) {
                        fake.bad_size++;
                        return kfail(EINVAL);
                }
                uint64_t token;
                memcpy(&token, (char *)arg + 8, sizeof(token));
                if (request == 0xBA40)
                        return fake_preserve(s, (int)a[1], token);
                fake.n_retrieve_fd++;
                if (!s->incoming)
                        return kfail(EINVAL);
                f = s->finished ? NULL : session_file(s, token);
                if (!f)
                        return kfail(ENOENT);
                f->retrieved = true; /* the same file again on a second call */
                a[1] = (uint32_t)fcntl(f->fd, F_DUPFD_CLOEXEC, 0);
                return 0;
        case 0xBA42: /* FINISH {u32 size = 8; u32 reserved = 0} */
                if (a[0] != 8 || a[1] != 0) {
                        fake.bad_size++;
                        return kfail(EINVAL);
                }
                fake.n_finish++;
                if (!s->incoming)
                        return kfail(EINVAL);
                s->finishes++;
                if (!s->finished) {
                        /* files not retrieved are freed */
                        for (int i = 0; i < NFILES; i++)
                                close_fd(&s->files[i].fd);
                        s->finished = true;
                }
                return 0;
        case 0xBA43: /* GET_NAME {u32 size = 72; u32 reserved = 0; u8 name[64] (out)} */
                if (a[0] != 72 || a[1] != 0) {
                        fake.bad_size++;
                        return kfail(EINVAL);
                }
                fake.n_get_name++;
                if (fake.no_get_name)
                        return kfail(EINVAL);
                memcpy(a + 2, s->name, sizeof(s->name));
                return 0;
        default:
                fake.bad_req++;
                return kfail(EINVAL); /* device ioctls on a session fd included */
        }
}

static int fake_ioctl(int fd, unsigned long request, void *arg)
{
        struct stat st;

        fake_reap();
        if (fstat(fd, &st) < 0) {
                fake.bad_fd++;
                return kfail(EBADF);
        }
        if (fake.fail_req == request) {
                fake.fail_req = 0;
                return kfail(fake.fail_errno);
        }
        if (fake.dev_peer >= 0 && st.st_ino == fake.dev_ino)
                return fake_dev_ioctl(request, arg);
        for (int i = 0; i < NSESS; i++)
                if (fake.s[i].used && fake.s[i].peer >= 0 && fake.s[i].ino == st.st_ino)
                        return fake_session_ioctl(&fake.s[i], request, arg);
        fake.bad_fd++;
        return kfail(ENOTTY);
}

static long fake_kexec_file_load(int kernel_fd, int initrd_fd, unsigned long cmdline_len,
                                 const char *cmdline, unsigned long flags)
{
        fake.kexec.calls++;
        fake.kexec.flags = flags;
        return fake.kexec.err ? kfail(fake.kexec.err) : 0;
}

static int fake_reboot(int cmd)
{
        fake.reboot_calls++;
        fake.reboot_cmd = cmd;
        if (fake.current)
                ck_assert_int_eq(fake.current->ops->get_state(fake.current, &fake.state_in_reboot),
                                 0);
        return fake.reboot_errno ? kfail(fake.reboot_errno) : 0;
}

static const struct luo_sys fake_sys = {
        .ioctl = fake_ioctl,
        .kexec_file_load = fake_kexec_file_load,
        .reboot = fake_reboot,
        .openat = fake_openat,
};

/* The machine goes through a live update: outgoing sessions become incoming. */
static void fake_live_update(void)
{
        fake_reap();
        for (int i = 0; i < NSESS; i++)
                if (fake.s[i].used && fake.s[i].incoming)
                        session_drop(&fake.s[i]);
        for (int i = 0; i < NSESS; i++) {
                struct fake_session *s = &fake.s[i];
                if (!s->used)
                        continue;
                /* the old boot's handles die with it: what the backend closes later is moot */
                close_fd(&s->peer);
                close_fd(&s->foreign);
                s->incoming = true;
                s->retrieved = s->finished = false;
        }
        close_fd(&fake.dev_peer);
        image_loaded(false);
}

/* An incoming session with one file, as a previous boot would have left it. */
static struct fake_session *fake_seed(const char *name, uint64_t token, int fd)
{
        struct fake_session *s = session_find(name, true);

        if (!s)
                s = session_new(name, true);
        if (fd >= 0)
                session_file_add(s, token, fd);
        return s;
}

/* An outgoing session "another process" holds (its handle stays open). */
static struct fake_session *fake_foreign(const char *name)
{
        struct fake_session *s = session_new(name, false);

        s->foreign = handle_new(&s->peer, &s->ino);
        return s;
}

static void setup(void)
{
        memset(&fake, 0, sizeof(fake));
        fake.dev_peer = -1;
        testutil_mkdtemp(fake.root, sizeof(fake.root), "test_luo_sessions");
        tree_dir("dev");
        tree_dir("sys/kernel");
        tree_dir("proc/sys/kernel/random");
        tree_put("dev/liveupdate", "");
        image_loaded(false);
        tree_put("proc/sys/kernel/random/boot_id", BOOT_ID "\n");
        tree_put("proc/sys/kernel/osrelease", "7.3.4-lf\n");
}

static void teardown(void)
{
        fake_reap();
        for (int i = 0; i < NSESS; i++)
                if (fake.s[i].used)
                        session_drop(&fake.s[i]);
        close_fd(&fake.dev_peer);
        ck_assert_int_eq(fake.bad_size, 0);
        ck_assert_int_eq(fake.bad_fd, 0);
        ck_assert_int_eq(fake.bad_req, 0);
        ck_assert_int_eq(fake.dev_self_busy, 0);
        testutil_rm_rf(fake.root);
}

/* ---- helpers ---- */

static struct backend_config ls_cfg(void)
{
        return (struct backend_config){ .kind = BACKEND_LUO_SESSIONS,
                                        .root = fake.root,
                                        .sys = &fake_sys };
}

static struct backend *ls_open(void)
{
        struct backend_config c = ls_cfg();
        struct backend *b = NULL;
        char msg[512] = "x";
        int r = luo_sessions_open(&c, &b, msg, sizeof(msg));

        ck_assert_msg(r == 0, "luo_sessions_open: %d (%s)", r, msg);
        ck_assert_str_eq(msg, "");
        fake.current = b;
        return b;
}

static void ls_close(struct backend *b)
{
        fake.current = NULL;
        backend_free(b);
        fake_reap();
}

static enum luo_state state(struct backend *b)
{
        enum luo_state s = (enum luo_state)99;

        ck_assert_int_eq(b->ops->get_state(b, &s), 0);
        return s;
}

static bool watch_ready(struct backend *b)
{
        struct pollfd p = { .fd = b->ops->watch_fd(b), .events = b->ops->watch_events(b) };

        return poll(&p, 1, 0) == 1;
}

/* The watch fired; reading it drains it and answers the state. */
static enum luo_state watched(struct backend *b)
{
        enum luo_state s = (enum luo_state)99;

        ck_assert(watch_ready(b));
        ck_assert_int_eq(b->ops->watch_read(b, &s), 0);
        ck_assert(!watch_ready(b));
        return s;
}

/* Descriptors of this process once the fake has seen what the backend closed. */
static int fds_now(void)
{
        fake_reap();
        return testutil_count_fds();
}

static void open_fails(const struct backend_config *c, int err, char *msg, size_t size)
{
        struct backend *b = NULL;
        int before;

        before = fds_now();
        msg[0] = 0;
        ck_assert_int_eq(backend_open(c, &b, msg, size), err);
        ck_assert_ptr_null(b);
        ck_assert_int_eq(fds_now(), before);
        ck_assert_str_ne(msg, "");
}

static int memfd_with(const char *content)
{
        int fd = memfd_create("test-sessions", MFD_CLOEXEC);

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write_all(fd, content, strlen(content)), 0);
        return fd;
}

/* A marker file as the backend writes it: "LFMK", LE u32 length, blob; MARKER_MAX bytes. */
static int marker_memfd(const char *magic, uint32_t len, const char *blob)
{
        int fd = memfd_create("test-marker", MFD_CLOEXEC);
        uint8_t hdr[8];

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(ftruncate(fd, MARKER_MAX), 0);
        memcpy(hdr, magic, 4);
        for (int i = 0; i < 4; i++)
                hdr[4 + i] = (uint8_t)(len >> (8 * i));
        ck_assert_int_eq(pwrite(fd, hdr, 8, 0), 8);
        if (blob)
                ck_assert_int_eq(pwrite(fd, blob, strlen(blob), 8), (ssize_t)strlen(blob));
        return fd;
}

static void assert_marker_read(struct backend *b, int err, const char *want)
{
        void *blob = NULL;
        size_t len = 99;

        ck_assert_int_eq(b->ops->marker_read(b, &blob, &len), err);
        if (err < 0) {
                ck_assert_ptr_null(blob);
                ck_assert_uint_eq(len, 99);
                return;
        }
        ck_assert_ptr_nonnull(blob);
        ck_assert_uint_eq(len, strlen(want));
        ck_assert_int_eq(memcmp(blob, want, len), 0);
        free(blob);
}

static void assert_describe(struct backend *b, const char *want)
{
        char buf[256];

        ck_assert_int_eq(b->ops->describe(b, buf, sizeof(buf)), (int)strlen(want));
        ck_assert_str_eq(buf, want);
}

#define DESCRIBE_BASE "sessions (CREATE_SESSION RETRIEVE_SESSION PRESERVE_FD RETRIEVE_FD FINISH"

/* Prepared, with the marker session as the fake kernel sees it. */
static struct fake_session *prepare(struct backend *b)
{
        struct fake_session *m;

        image_loaded(true);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(state(b), LUO_STATE_PREPARED);
        fake_reap();
        m = session_find("luofleet", false);
        ck_assert_ptr_nonnull(m);
        ck_assert_int_ge(m->peer, 0);
        return m;
}

/* ---- tests ---- */

START_TEST(test_open_cold)
{
        struct luo_sys local = fake_sys;
        struct backend_config c = ls_cfg();
        struct backend *b = NULL;
        enum luo_state a = (enum luo_state)99, s = (enum luo_state)99;
        char msg[256] = "x";

        c.sys = &local;
        ck_assert_int_eq(luo_sessions_open(&c, &b, msg, sizeof(msg)), 0);
        memset(&local, 0, sizeof(local)); /* the table was copied */
        ck_assert_str_eq(msg, "");
        ck_assert_str_eq(b->ops->name, "luo-sessions");

        /* one RETRIEVE_SESSION("luofleet") on a device opened for it and closed after */
        ck_assert_int_eq(fake.n_retrieve, 1);
        ck_assert_str_eq(fake.last_retrieve, "luofleet");
        fake_reap();
        ck_assert_int_eq(fake.dev_opens, 1);
        ck_assert_int_eq(fake.dev_closes, 1);
        ck_assert_int_eq(fake.dev_flags & O_ACCMODE, O_RDWR);
        ck_assert(fake.dev_flags & O_CLOEXEC);

        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        ck_assert_int_eq(b->ops->watch_events(b), POLLIN);
        ck_assert_int_ge(b->ops->watch_fd(b), 0);
        ck_assert(!watch_ready(b));
        ck_assert_int_eq(b->ops->self_check(b, &a, &s), 0);
        ck_assert_int_eq(a, LUO_STATE_NORMAL);
        ck_assert_int_eq(s, LUO_STATE_NORMAL);
        ck_assert_int_eq(b->ops->self_check(b, NULL, NULL), 0);
        assert_marker_read(b, -ENOENT, NULL);
        /* GET_NAME is not known before the first session fd */
        assert_describe(b, DESCRIBE_BASE ")");
        ck_assert_int_eq(fake.n_get_name, 0);

        /* the members the mainline kernel has, and those it has not */
        ck_assert_ptr_nonnull(b->ops->session_create);
        ck_assert_ptr_nonnull(b->ops->session_release);
        ck_assert_ptr_null(b->ops->session_unpreserve);
        ck_assert_ptr_null(b->ops->fd_preserve);
        ck_assert_ptr_null(b->ops->fd_unpreserve);
        ck_assert_ptr_null(b->ops->fd_restore);
        ck_assert_ptr_null(b->ops->set_event_ex);
        ck_assert_ptr_null(b->ops->sessions_json);
        ls_close(b);
        ck_assert_int_eq(fake.dev_opens, 1);
}
END_TEST

START_TEST(test_auto_and_kind)
{
        struct backend_config c = ls_cfg();
        struct backend *b = NULL;
        char msg[256];

        ck_assert_str_eq(backend_kind_to_string(BACKEND_LUO_SESSIONS), "luo-sessions");
        ck_assert_int_eq(backend_kind_from_string("luo-sessions"), BACKEND_LUO_SESSIONS);
        ck_assert_int_eq(backend_kind_from_string("luo_sessions"), -EINVAL);

        ck_assert_int_eq(backend_open(&c, &b, msg, sizeof(msg)), 0);
        ck_assert_str_eq(b->ops->name, "luo-sessions");
        b = backend_free(b);

        /* no v3 sysfs file, a /dev/liveupdate: auto picks luo-sessions */
        c.kind = BACKEND_AUTO;
        ck_assert_int_eq(backend_open(&c, &b, msg, sizeof(msg)), 0);
        ck_assert_str_eq(msg, "");
        ck_assert_str_eq(b->ops->name, "luo-sessions");
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        b = backend_free(b);
        ck_assert_int_eq(fake.n_retrieve, 2);

        /* with both, the v3 file wins (the v3 backend then wants GET_STATE: EINVAL here) */
        tree_dir("sys/kernel/liveupdate");
        tree_put("sys/kernel/liveupdate/state", "normal\n");
        open_fails(&c, -EINVAL, msg, sizeof(msg));
        ck_assert_msg(strstr(msg, "GET_STATE") != NULL, "%s", msg);
        ck_assert_int_eq(fake.bad_req, 1); /* the v3 GET_STATE 0xBA03 */
        fake.bad_req = 0;
}
END_TEST

START_TEST(test_open_errors)
{
        struct backend_config c = ls_cfg();
        struct luo_sys no_ioctl = fake_sys;
        char msg[512], path[PATH_MAX + 64];

        fake.dev_errno = EACCES;
        open_fails(&c, -EACCES, msg, sizeof(msg));
        ck_assert_msg(strstr(msg, "CAP_SYS_ADMIN") != NULL, "%s", msg);
        fake.dev_errno = EPERM;
        open_fails(&c, -EPERM, msg, sizeof(msg));
        ck_assert_msg(strstr(msg, "CAP_SYS_ADMIN") != NULL, "%s", msg);
        fake.dev_errno = EIO;
        open_fails(&c, -EIO, msg, sizeof(msg));
        ck_assert_msg(strstr(msg, "cannot open") != NULL, "%s", msg);
        fake.dev_errno = 0;

        /* RETRIEVE_SESSION failing otherwise than ENOENT: the state cannot be known */
        fake.fail_req = 0xBA01;
        fake.fail_errno = EINVAL;
        open_fails(&c, -EINVAL, msg, sizeof(msg));
        ck_assert_msg(strstr(msg, "RETRIEVE_SESSION(\"luofleet\")") != NULL, "%s", msg);
        ck_assert_msg(strstr(msg, "retrieved already") != NULL, "%s", msg);
        fake.fail_req = 0xBA01;
        fake.fail_errno = ENOMEM;
        open_fails(&c, -ENOMEM, msg, sizeof(msg));
        /* really retrieved already: another agent of this boot holds it */
        fake_seed("luofleet", 1, -1)->retrieved = true;
        open_fails(&c, -EINVAL, msg, sizeof(msg));

        /* a regular file is a device only for a fake kernel (an injected ioctl) */
        no_ioctl.ioctl = NULL;
        c.sys = &no_ioctl;
        open_fails(&c, -ENODEV, msg, sizeof(msg));
        ck_assert_msg(strstr(msg, "not a character device") != NULL, "%s", msg);
        c.sys = &fake_sys;
        tree_rm("dev/liveupdate");
        tree_dir("dev/liveupdate");
        open_fails(&c, -ENODEV, msg, sizeof(msg));
        tree_rm("dev/liveupdate");

        /* no device: the kernel was booted without liveupdate=on */
        fake.dev_opens = 0;
        open_fails(&c, -ENOENT, msg, sizeof(msg));
        ck_assert_msg(strstr(msg, "liveupdate=on kho=on") != NULL, "%s", msg);
        fake_path(path, sizeof(path), "dev/liveupdate");
        ck_assert_msg(strstr(msg, path) != NULL, "%s", msg);
        ck_assert_int_eq(fake.dev_opens, 0);
        /* auto: neither interface */
        c.kind = BACKEND_AUTO;
        open_fails(&c, -ENOENT, msg, sizeof(msg));
        ck_assert_msg(strstr(msg, "no live-update orchestrator found") != NULL, "%s", msg);
        ck_assert_msg(strstr(msg, "liveupdate=on") != NULL, "%s", msg);
        ck_assert_msg(strstr(msg, "--backend=sim") != NULL, "%s", msg);
        c.kind = BACKEND_LUO_SESSIONS;

        teardown(); /* the root itself is gone */
        open_fails(&c, -ENOENT, msg, sizeof(msg));
        ck_assert_msg(strstr(msg, "root directory") != NULL, "%s", msg);
}
END_TEST

START_TEST(test_prepare)
{
        struct backend *b = ls_open();
        struct fake_session *m;
        struct fake_file *f;
        bool loaded = true;

        /* no kexec image: nothing to vouch for, nothing touched */
        ck_assert_int_eq(b->ops->kexec_loaded(b, &loaded), 0);
        ck_assert(!loaded);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), -ENOEXEC);
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        ck_assert(!watch_ready(b));
        ck_assert_int_eq(fake.n_create, 0);
        tree_rm("sys/kernel/kexec_loaded");
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), -ENOENT);
        tree_put("sys/kernel/kexec_loaded", "2\n");
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), -EPROTO);
        ck_assert_int_eq(fake.n_create, 0);

        m = prepare(b);
        ck_assert_int_eq(watched(b), LUO_STATE_PREPARED);
        ck_assert_int_eq(fake.n_create, 1);
        /* one memfd under token 1, sized to the marker's maximum before it was preserved */
        f = session_file(m, 1);
        ck_assert_ptr_nonnull(f);
        ck_assert_int_eq(f->size, MARKER_MAX);
        ck_assert_msg(strncmp(f->link, "/memfd:luofleet-marker", 22) == 0, "%s", f->link);
        for (uint64_t t = 2; t < 8; t++)
                ck_assert_ptr_null(session_file(m, t));
        /* the device was opened for the create and closed at once */
        ck_assert_int_eq(fake.dev_opens, 2);
        ck_assert_int_eq(fake.dev_closes, 2);
        /* GET_NAME learnt from that first session fd */
        ck_assert_int_eq(fake.n_get_name, 1);
        assert_describe(b, DESCRIBE_BASE " GET_NAME)");

        /* only from normal; FREEZE and unknown events never */
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), -EINVAL);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FINISH), -EINVAL);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FREEZE), -EINVAL);
        ck_assert_int_eq(b->ops->set_event(b, _LUO_EVENT_MAX), -EINVAL);
        ck_assert_int_eq(b->ops->set_event(b, (enum luo_event)(-1)), -EINVAL);
        ck_assert_int_eq(state(b), LUO_STATE_PREPARED);
        ck_assert(!watch_ready(b));
        ck_assert_int_eq(fake.n_create, 1);
        ck_assert_int_eq(fake.n_get_name, 1);

        /* free while prepared: the marker session closes, the kernel unpreserves it */
        ls_close(b);
        ck_assert_ptr_null(session_find("luofleet", false));
}
END_TEST

START_TEST(test_prepare_failures)
{
        struct backend *b = ls_open();
        struct fake_session *theirs;
        int before;

        image_loaded(true);
        /* someone else's "luofleet" session */
        theirs = fake_foreign("luofleet");
        before = fds_now();
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), -EEXIST);
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        ck_assert(!watch_ready(b));
        ck_assert_int_eq(fds_now(), before); /* the memfd did not leak */
        session_drop(theirs);

        /* PRESERVE_FD refused: the new session is closed again */
        static const int errs[] = { ENOMEM, EIO, EAGAIN, ENOSPC };
        for (size_t i = 0; i < ELEMENTSOF(errs); i++) {
                fake.fail_req = 0xBA40;
                fake.fail_errno = errs[i];
                before = fds_now();
                ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), -errs[i]);
                ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
                ck_assert_int_eq(fds_now(), before);
                ck_assert_ptr_null(session_find("luofleet", false));
        }
        /* CREATE_SESSION refused */
        fake.fail_req = 0xBA00;
        fake.fail_errno = ENOMEM;
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), -ENOMEM);
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        ck_assert(!watch_ready(b));

        prepare(b);
        ls_close(b);
}
END_TEST

START_TEST(test_cancel)
{
        struct backend *b = ls_open();
        _cleanup_close_ int mem = memfd_with("vm memory");
        struct fake_session *m, *vm;
        int session = -1;

        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), -EINVAL);
        ck_assert_int_eq(fake.kexec.calls, 0);

        /* a workload's session, preserved by the broker */
        ck_assert_int_eq(b->ops->session_create(b, "lf:1000:vm1", &session), 0);
        ck_assert_int_eq(b->ops->session_preserve(b, session, mem, 1), 0);

        m = prepare(b);
        ck_assert_ptr_nonnull(session_file(m, 1));
        ck_assert_int_eq(watched(b), LUO_STATE_PREPARED);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), 0);
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        ck_assert_int_eq(watched(b), LUO_STATE_NORMAL);
        /* the marker session released (its memfd unpreserved), the image unloaded */
        fake_reap();
        ck_assert_ptr_null(session_find("luofleet", false));
        ck_assert_int_eq(fake.kexec.calls, 1);
        ck_assert_uint_eq(fake.kexec.flags, KEXEC_FILE_UNLOAD);
        /* the workload's session is not ours to touch */
        vm = session_find("lf:1000:vm1", false);
        ck_assert_ptr_nonnull(vm);
        ck_assert_ptr_nonnull(session_file(vm, 1));
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), -EINVAL);
        ck_assert_int_eq(b->ops->marker_write(b, "x", 1), -EINVAL);

        /* the unload failing: its errno, but the cancel is done (normal, marker gone) */
        prepare(b);
        (void)watched(b);
        fake.kexec.err = EPERM;
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), -EPERM);
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        ck_assert_int_eq(watched(b), LUO_STATE_NORMAL);
        fake_reap();
        ck_assert_ptr_null(session_find("luofleet", false));
        ck_assert_int_eq(fake.kexec.calls, 2);

        /* a new prepare after a cancel */
        fake.kexec.err = 0;
        prepare(b);
        b->ops->session_release(b, session);
        ls_close(b);
        ck_assert_ptr_null(session_find("lf:1000:vm1", false));
        ck_assert_ptr_null(session_find("luofleet", false));
}
END_TEST

START_TEST(test_reboot)
{
        struct backend *b = ls_open();

        /* from normal: refused before anything happens, even with an image */
        image_loaded(true);
        ck_assert_int_eq(b->ops->reboot(b), -EPERM);
        ck_assert_int_eq(fake.reboot_calls, 0);

        prepare(b);
        ck_assert_int_eq(watched(b), LUO_STATE_PREPARED);
        image_loaded(false);
        ck_assert_int_eq(b->ops->reboot(b), -ENOEXEC);
        ck_assert_int_eq(fake.reboot_calls, 0);
        ck_assert_int_eq(state(b), LUO_STATE_PREPARED);
        ck_assert(!watch_ready(b));

        /* the reboot fails: frozen inside it, prepared again after */
        image_loaded(true);
        fake.reboot_errno = EBUSY;
        ck_assert_int_eq(b->ops->reboot(b), -EBUSY);
        ck_assert_int_eq(fake.reboot_calls, 1);
        ck_assert_int_eq(fake.reboot_cmd, 0x45584543); /* LINUX_REBOOT_CMD_KEXEC */
        ck_assert_int_eq(fake.state_in_reboot, LUO_STATE_FROZEN);
        ck_assert_int_eq(state(b), LUO_STATE_PREPARED);
        ck_assert_int_eq(watched(b), LUO_STATE_PREPARED);
        ck_assert_ptr_nonnull(session_find("luofleet", false));
        fake.reboot_errno = EINVAL;
        ck_assert_int_eq(b->ops->reboot(b), -EINVAL);
        ck_assert_int_eq(state(b), LUO_STATE_PREPARED);

        /* an injected reboot returns: frozen, from where a cancel is legal */
        fake.reboot_errno = 0;
        fake.state_in_reboot = LUO_STATE_UNDEFINED;
        ck_assert_int_eq(b->ops->reboot(b), 0);
        ck_assert_int_eq(fake.reboot_calls, 3);
        ck_assert_int_eq(fake.state_in_reboot, LUO_STATE_FROZEN);
        ck_assert_int_eq(state(b), LUO_STATE_FROZEN);
        ck_assert_int_eq(watched(b), LUO_STATE_FROZEN);
        ck_assert_int_eq(b->ops->marker_write(b, "x", 1), -EINVAL);
        ck_assert_int_eq(b->ops->reboot(b), -EPERM);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), -EINVAL);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), 0);
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        ck_assert_int_eq(fake.reboot_calls, 3);
        ls_close(b);
}
END_TEST

START_TEST(test_marker_round_trip)
{
        const char *doc =
                "{\"version\": 1, \"note\": \"operation=op-1 index=7\", \"sessions\": []}";
        static char big[MARKER_MAX];
        struct backend *b = ls_open();
        struct fake_session *m;
        uint8_t hdr[8];

        ck_assert_int_eq(b->ops->marker_write(b, doc, strlen(doc)), -EINVAL);
        m = prepare(b);
        ck_assert_int_eq(b->ops->marker_write(b, big, MARKER_MAX - 7), -EFBIG);
        ck_assert_int_eq(b->ops->marker_write(b, big, MARKER_MAX - 8), 0); /* the largest */
        ck_assert_int_eq(b->ops->marker_write(b, doc, strlen(doc)), 0);
        /* what the kernel carries: "LFMK", the length (LE u32), the blob */
        ck_assert_int_eq(pread(session_file(m, 1)->fd, hdr, 8, 0), 8);
        ck_assert_int_eq(memcmp(hdr, "LFMK", 4), 0);
        ck_assert_uint_eq(hdr[4] | hdr[5] << 8 | hdr[6] << 16 | (uint32_t)hdr[7] << 24,
                          strlen(doc));
        assert_marker_read(b, -ENOENT, NULL); /* the outgoing one is not the incoming one */

        /* the machine goes through the live update; the next boot reads it back */
        image_loaded(true);
        ck_assert_int_eq(b->ops->reboot(b), 0);
        fake_live_update();
        ls_close(b);
        b = ls_open();
        ck_assert_int_eq(state(b), LUO_STATE_UPDATED);
        ck_assert(!watch_ready(b));
        ck_assert_int_eq(fake.n_retrieve_fd, 1);
        assert_marker_read(b, 0, doc);
        assert_marker_read(b, 0, doc);
        assert_describe(b, DESCRIBE_BASE " GET_NAME)");
        m = session_find("luofleet", true);
        ck_assert_ptr_nonnull(m);
        ck_assert(m->retrieved);
        ck_assert_int_ge(m->peer, 0); /* held until FINISH */

        /* updated: no prepare, no cancel, no reboot, no marker_write */
        image_loaded(true);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), -EINVAL);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), -EINVAL);
        ck_assert_int_eq(b->ops->reboot(b), -EPERM);
        ck_assert_int_eq(b->ops->marker_write(b, "x", 1), -EINVAL);
        ck_assert_int_eq(fake.reboot_calls, 1);
        ck_assert_int_eq(fake.kexec.calls, 0);

        /* FINISH on the marker session, released: normal, and the marker is gone */
        fake.fail_req = 0xBA42;
        fake.fail_errno = EIO;
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FINISH), -EIO);
        ck_assert_int_eq(state(b), LUO_STATE_UPDATED);
        assert_marker_read(b, 0, doc);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FINISH), 0);
        ck_assert_int_eq(m->finishes, 1);
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        ck_assert_int_eq(watched(b), LUO_STATE_NORMAL);
        fake_reap();
        ck_assert_ptr_null(session_find("luofleet", true));
        assert_marker_read(b, -ENOENT, NULL);
        assert_describe(b, DESCRIBE_BASE " GET_NAME)");
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FINISH), -EINVAL);

        /* and a new update can begin */
        prepare(b);
        ls_close(b);
}
END_TEST

START_TEST(test_marker_incoming_odd)
{
        _cleanup_close_ int bad = marker_memfd("LFMX", 3, "abc");
        _cleanup_close_ int zero = marker_memfd("\0\0\0\0", 0, NULL);
        _cleanup_close_ int toolong = marker_memfd("LFMK", MARKER_MAX, NULL);
        _cleanup_close_ int empty = marker_memfd("LFMK", 0, NULL);
        struct backend *b;

        /* a wrong magic: updated all the same, an empty blob, and describe says why */
        fake_seed("luofleet", 1, bad);
        b = ls_open();
        ck_assert_int_eq(state(b), LUO_STATE_UPDATED);
        assert_marker_read(b, 0, "");
        assert_describe(b, DESCRIBE_BASE
                        " GET_NAME); incoming marker invalid (bad magic or length), read as empty");
        ls_close(b); /* closing the retrieved session finished it */
        ck_assert_ptr_null(session_find("luofleet", true));

        fake_seed("luofleet", 1, toolong);
        b = ls_open();
        ck_assert_int_eq(state(b), LUO_STATE_UPDATED);
        assert_marker_read(b, 0, "");
        ls_close(b);

        /* prepared, but nothing was ever written: no blob */
        fake_seed("luofleet", 1, zero);
        b = ls_open();
        ck_assert_int_eq(state(b), LUO_STATE_UPDATED);
        assert_marker_read(b, -ENOENT, NULL);
        assert_describe(b, DESCRIBE_BASE " GET_NAME); incoming marker empty (nothing was written)");
        ls_close(b);

        /* an empty blob that was written as such */
        fake_seed("luofleet", 1, empty);
        b = ls_open();
        assert_marker_read(b, 0, "");
        assert_describe(b, DESCRIBE_BASE " GET_NAME)");
        ls_close(b);

        /* the marker session came without token 1 */
        fake_seed("luofleet", 7, empty);
        fake.no_get_name = true;
        b = ls_open();
        ck_assert_int_eq(state(b), LUO_STATE_UPDATED);
        assert_marker_read(b, 0, "");
        assert_describe(b, DESCRIBE_BASE
                        "); incoming marker invalid (RETRIEVE_FD: No such file or directory), "
                        "read as empty");
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FINISH), 0);
        assert_marker_read(b, -ENOENT, NULL);
        assert_describe(b, DESCRIBE_BASE ")");
        ls_close(b);
}
END_TEST

START_TEST(test_sessions)
{
        struct backend *b = ls_open();
        _cleanup_close_ int mem = memfd_with("vm memory"), mem2 = memfd_with("more");
        _cleanup_close_ int prev = memfd_with("hello from the last boot");
        char name63[64], name64[65], buf[64] = "";
        int s = -1, s2 = -1, in = -1, fd = -1, fd2 = -1, p[2];
        struct stat st1, st2;
        int opens;

        /* names are checked before the device is opened */
        opens = fake.dev_opens;
        ck_assert_int_eq(b->ops->session_create(b, "", &s), -EINVAL);
        ck_assert_int_eq(b->ops->session_create(b, NULL, &s), -EINVAL);
        memset(name64, 'n', 64);
        name64[64] = 0;
        ck_assert_int_eq(b->ops->session_create(b, name64, &s), -EINVAL);
        ck_assert_int_eq(b->ops->session_retrieve(b, name64, &s), -EINVAL);
        ck_assert_int_eq(fake.dev_opens, opens);
        ck_assert_int_eq(s, -1);
        memset(name63, 'n', 63);
        name63[63] = 0;
        ck_assert_int_eq(b->ops->session_create(b, name63, &s), 0);
        ck_assert_ptr_nonnull(session_find(name63, false));
        b->ops->session_release(b, s);
        fake_reap();
        ck_assert_ptr_null(session_find(name63, false));

        /* outgoing: create, preserve, the kernel's errnos unchanged */
        ck_assert_int_eq(b->ops->session_create(b, "lf:1000:vm1", &s), 0);
        ck_assert_int_ge(s, 0);
        ck_assert(fcntl(s, F_GETFD) & FD_CLOEXEC);
        ck_assert_int_eq(b->ops->session_create(b, "lf:1000:vm1", &s2), -EEXIST);
        ck_assert_int_eq(b->ops->session_create(b, "lf:1000:vm2", &s2), 0);
        fake_reap();
        ck_assert_int_eq(fake.dev_opens, fake.dev_closes); /* closed after each one */
        ck_assert_int_eq(b->ops->session_preserve(b, s, mem, 1), 0);
        ck_assert_int_eq(b->ops->session_preserve(b, s, mem2, 1), -EEXIST);
        ck_assert_int_eq(b->ops->session_preserve(b, s, mem, 2), -EBUSY);
        ck_assert_int_eq(b->ops->session_preserve(b, s2, mem, 1), -EBUSY);
        ck_assert_int_eq(b->ops->session_preserve(b, s, 9999, 3), -EBADF);
        ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
        ck_assert_int_eq(b->ops->session_preserve(b, s, p[0], 4), -ENOENT);
        close(p[0]);
        close(p[1]);
        ck_assert_int_eq(b->ops->session_preserve(b, s, s2, 5), -ENOENT);
        ck_assert_int_eq(b->ops->session_retrieve_fd(b, s, 1, &fd), -EINVAL);
        ck_assert_int_eq(b->ops->session_finish(b, s), -EINVAL);
        ck_assert_int_eq(fd, -1);
        ck_assert_int_eq(b->ops->session_preserve(b, s2, mem2, 1), 0);
        /* releasing an outgoing session unpreserves its files: mem is free again */
        b->ops->session_release(b, s2);
        b->ops->session_release(b, -1);
        fake_reap();
        ck_assert_ptr_null(session_find("lf:1000:vm2", false));
        ck_assert_int_eq(b->ops->session_create(b, "lf:1000:vm2", &s2), 0);
        ck_assert_int_eq(b->ops->session_preserve(b, s2, mem2, 9), 0);

        /* incoming: seeded as a previous boot would have left it */
        ck_assert_int_eq(b->ops->session_retrieve(b, "lf:1000:old", &in), -ENOENT);
        fake_seed("lf:1000:old", 5, prev);
        ck_assert_int_eq(b->ops->session_retrieve(b, "lf:1000:old", &in), 0);
        ck_assert_int_eq(b->ops->session_retrieve(b, "lf:1000:old", &fd), -EINVAL);
        ck_assert_int_eq(fd, -1);
        ck_assert_int_eq(b->ops->session_preserve(b, in, mem, 6), -EINVAL);
        ck_assert_int_eq(b->ops->session_retrieve_fd(b, in, 6, &fd), -ENOENT);
        ck_assert_int_eq(b->ops->session_retrieve_fd(b, in, 5, &fd), 0);
        ck_assert_int_eq(b->ops->session_retrieve_fd(b, in, 5, &fd2), 0);
        ck_assert_int_eq(fstat(fd, &st1), 0);
        ck_assert_int_eq(fstat(fd2, &st2), 0);
        ck_assert_int_eq(st1.st_ino, st2.st_ino); /* the same file again */
        ck_assert_int_eq(pread(fd, buf, sizeof(buf) - 1, 0), 24);
        ck_assert_str_eq(buf, "hello from the last boot");
        close(fd);
        close(fd2);
        ck_assert_int_eq(b->ops->session_finish(b, in), 0);
        ck_assert_int_eq(b->ops->session_finish(b, in), 0); /* a no-op */
        ck_assert_int_eq(b->ops->session_retrieve_fd(b, in, 5, &fd), -ENOENT);
        b->ops->session_release(b, in);
        fake_reap();
        ck_assert_int_eq(b->ops->session_retrieve(b, "lf:1000:old", &in), -ENOENT);
        /* a retrieved session closed without FINISH: finished all the same */
        fake_seed("lf:1000:old2", 1, prev);
        ck_assert_int_eq(b->ops->session_retrieve(b, "lf:1000:old2", &in), 0);
        b->ops->session_release(b, in);
        fake_reap();
        ck_assert_ptr_null(session_find("lf:1000:old2", true));

        /* the kernel's errnos pass through unchanged */
        static const int errs[] = { EIO, ENOMEM, EAGAIN, EFAULT, E2BIG, EPERM };
        static const unsigned long reqs[] = { 0xBA00, 0xBA01, 0xBA40, 0xBA41, 0xBA42 };
        fd = -1;
        for (size_t i = 0; i < ELEMENTSOF(errs); i++)
                for (size_t j = 0; j < ELEMENTSOF(reqs); j++) {
                        int r = -1;

                        fake.fail_req = reqs[j];
                        fake.fail_errno = errs[i];
                        switch (j) {
                        case 0:
                                r = b->ops->session_create(b, "lf:1000:x", &fd);
                                break;
                        case 1:
                                r = b->ops->session_retrieve(b, "lf:1000:x", &fd);
                                break;
                        case 2:
                                r = b->ops->session_preserve(b, s, mem2, 77);
                                break;
                        case 3:
                                r = b->ops->session_retrieve_fd(b, s, 1, &fd);
                                break;
                        default:
                                r = b->ops->session_finish(b, s);
                                break;
                        }
                        ck_assert_int_eq(r, -errs[i]);
                        ck_assert_int_eq(fd, -1);
                }
        fake_reap();
        ck_assert_int_eq(fake.dev_opens, fake.dev_closes);
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        ck_assert(!watch_ready(b)); /* sessions are not the agent's state */

        b->ops->session_release(b, s);
        b->ops->session_release(b, s2);
        ls_close(b);
        ck_assert_ptr_null(session_find("lf:1000:vm1", false));
}
END_TEST

START_TEST(test_get_name_absent)
{
        struct backend *b = ls_open();
        int s = -1;

        fake.no_get_name = true;
        ck_assert_int_eq(b->ops->session_create(b, "lf:0:a", &s), 0);
        ck_assert_int_eq(fake.n_get_name, 1);
        assert_describe(b, DESCRIBE_BASE ")");
        b->ops->session_release(b, s);
        prepare(b);
        ck_assert_int_eq(fake.n_get_name, 1); /* learnt once */
        assert_describe(b, DESCRIBE_BASE ")");

        /* an error other than EINVAL teaches nothing: asked again next time */
        ls_close(b);
        fake.no_get_name = false;
        fake.n_get_name = 0;
        b = ls_open();
        fake.fail_req = 0xBA43;
        fake.fail_errno = EIO;
        ck_assert_int_eq(b->ops->session_create(b, "lf:0:a", &s), 0);
        b->ops->session_release(b, s);
        assert_describe(b, DESCRIBE_BASE ")");
        ck_assert_int_eq(b->ops->session_create(b, "lf:0:a", &s), 0);
        ck_assert_int_eq(fake.n_get_name, 1);
        assert_describe(b, DESCRIBE_BASE " GET_NAME)");
        b->ops->session_release(b, s);

        char small[12];
        ck_assert_int_eq(b->ops->describe(b, small, sizeof(small)), -ENOBUFS);
        ck_assert_str_eq(small, "sessions (C");
        ls_close(b);
}
END_TEST

START_TEST(test_busy)
{
        struct backend *b;
        uint64_t t0;
        int s = -1;

        /* another holder for a while: waited out */
        fake.dev_busy = 5;
        b = ls_open();
        ck_assert_int_eq(fake.dev_open_attempts, 6);
        ck_assert_int_eq(fake.dev_opens, 1);

        fake.dev_busy = 3;
        fake.dev_open_attempts = 0;
        image_loaded(true);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(fake.dev_open_attempts, 4);

        /* for good: -EBUSY after 2 s, no sentence to write after open */
        fake.dev_busy = -1;
        fake.dev_open_attempts = 0;
        t0 = now_mono_usec();
        ck_assert_int_eq(b->ops->session_create(b, "lf:0:a", &s), -EBUSY);
        ck_assert_uint_ge(now_mono_usec() - t0, 2000000);
        ck_assert_uint_lt(now_mono_usec() - t0, 10000000);
        ck_assert_int_gt(fake.dev_open_attempts, 10);
        ck_assert_int_le(fake.dev_open_attempts, 101);
        ck_assert_int_eq(s, -1);
        ck_assert_int_eq(state(b), LUO_STATE_PREPARED);
        fake.dev_busy = 0;
        ls_close(b);
}
END_TEST

/* The open-time sentence names who holds the device (fake /proc/<pid>/fd and comm). */
START_TEST(test_busy_holder)
{
        struct backend_config c = ls_cfg();
        char msg[256], dev[PATH_MAX + 64];

        tree_dir("proc/1/fd");
        tree_put("proc/1/comm", "init\n");
        tree_symlink("/dev/null", "proc/1/fd/0");
        tree_symlink("socket:[1234]", "proc/1/fd/1");
        tree_dir("proc/4242/fd");
        tree_put("proc/4242/comm", "systemd\n");
        tree_symlink("/dev/null", "proc/4242/fd/0");
        tree_symlink("/dev/liveupdate", "proc/4242/fd/7");
        tree_dir("proc/self");
        tree_put("proc/uptime", "1.00 1.00\n");

        fake.dev_busy = -1;
        open_fails(&c, -EBUSY, msg, sizeof(msg));
        ck_assert_str_eq(msg, "process 4242 (systemd) holds /dev/liveupdate");
        ck_assert_int_eq(fake.dev_opens, 0);

        /* known by its inode (another mount namespace's path), no comm */
        tree_rm("proc/4242");
        tree_dir("proc/77/fd");
        fake_path(dev, sizeof(dev), "dev/liveupdate");
        {
                char alias[PATH_MAX + 64];
                fake_path(alias, sizeof(alias), "dev/alias-of-liveupdate");
                ck_assert_int_eq(link(dev, alias), 0);
                tree_symlink(alias, "proc/77/fd/3");
        }
        open_fails(&c, -EBUSY, msg, sizeof(msg));
        ck_assert_str_eq(msg, "process 77 (?) holds /dev/liveupdate");

        /* nobody found */
        tree_rm("proc/77");
        open_fails(&c, -EBUSY, msg, sizeof(msg));
        ck_assert_str_eq(msg, "another process holds /dev/liveupdate");
}
END_TEST

START_TEST(test_info_and_kexec)
{
        struct backend *b = ls_open();
        struct backend_info bi;
        _cleanup_close_ int k = memfd_with("bzImage");

        ck_assert_int_eq(b->ops->get_info(b, &bi), 0);
        ck_assert_str_eq(bi.boot_id, BOOT_ID);
        ck_assert_str_eq(bi.release, "7.3.4-lf");
        ck_assert_int_eq(b->ops->kexec_load(b, k, -1, "console=ttyS0"), 0);
        ck_assert_uint_eq(fake.kexec.flags, KEXEC_FILE_NO_INITRAMFS);
        ck_assert_int_eq(b->ops->kexec_load(b, -1, -1, NULL), -EBADF);
        fake.kexec.err = EKEYREJECTED;
        ck_assert_int_eq(b->ops->kexec_load(b, k, -1, ""), -EKEYREJECTED);
        ck_assert_int_eq(b->ops->kexec_unload(b), -EKEYREJECTED);
        ck_assert_uint_eq(fake.kexec.flags, KEXEC_FILE_UNLOAD);
        ck_assert_int_eq(fake.kexec.calls, 3);
        ls_close(b);
}
END_TEST

static void *state_reader(void *p)
{
        struct backend *b = p;
        intptr_t bad = 0;

        for (int i = 0; i < 2000; i++) {
                enum luo_state s;
                char buf[256];
                if (b->ops->get_state(b, &s) < 0 ||
                    (s != LUO_STATE_NORMAL && s != LUO_STATE_PREPARED))
                        bad++;
                if (b->ops->describe(b, buf, sizeof(buf)) < 0)
                        bad++;
                if (b->ops->self_check(b, NULL, NULL) < 0)
                        bad++;
        }
        return (void *)bad;
}

START_TEST(test_threads)
{
        struct backend *b = ls_open();
        pthread_t t1, t2;
        void *r1, *r2;

        image_loaded(true);
        ck_assert_int_eq(pthread_create(&t1, NULL, state_reader, b), 0);
        ck_assert_int_eq(pthread_create(&t2, NULL, state_reader, b), 0);
        for (int i = 0; i < 20; i++) {
                ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
                ck_assert_int_eq(b->ops->marker_write(b, "blob", 4), 0);
                ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), 0);
        }
        ck_assert_int_eq(pthread_join(t1, &r1), 0);
        ck_assert_int_eq(pthread_join(t2, &r2), 0);
        ck_assert_ptr_null(r1);
        ck_assert_ptr_null(r2);
        ls_close(b);
}
END_TEST

static Suite *luo_sessions_suite(void)
{
        Suite *s = suite_create("luo_sessions");
        TCase *tc = tcase_create("core");

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_open_cold);
        tcase_add_test(tc, test_auto_and_kind);
        tcase_add_test(tc, test_open_errors);
        tcase_add_test(tc, test_prepare);
        tcase_add_test(tc, test_prepare_failures);
        tcase_add_test(tc, test_cancel);
        tcase_add_test(tc, test_reboot);
        tcase_add_test(tc, test_marker_round_trip);
        tcase_add_test(tc, test_marker_incoming_odd);
        tcase_add_test(tc, test_sessions);
        tcase_add_test(tc, test_get_name_absent);
        tcase_add_test(tc, test_busy);
        tcase_add_test(tc, test_busy_holder);
        tcase_add_test(tc, test_info_and_kexec);
        tcase_add_test(tc, test_threads);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(luo_sessions_suite)
