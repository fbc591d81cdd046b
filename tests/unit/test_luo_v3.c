/*
 * test_luo_v3.c: the real backend (kernel/luo_v3.c) against a fake root tree
 * (sys/kernel/liveupdate/state, dev/liveupdate as a regular file,
 * sys/kernel/kexec_loaded, proc/sys/kernel/{random/boot_id,osrelease}) and a
 * fake kernel injected through struct luo_sys: its ioctl checks the request
 * numbers and struct sizes of kernel-abi.md section A exactly, applies the
 * kernel's SET_EVENT rules and rewrites the fake sysfs file like
 * sysfs_notify()'s writer would; its openat can make /dev/liveupdate busy or
 * forbidden; FD_PRESERVE/FD_UNPRESERVE/FD_RESTORE keep a token table (a dup
 * of each preserved file) and an incoming table a test seeds to play the
 * boot after a live update. Also --backend=auto detection (kernel/backend.c).
 *
 * Each test builds its tree under $LUOFLEET_TEST_TMP (or /tmp) and removes
 * it. The fake kernel is a global: struct luo_sys members take no userdata.
 * Single-threaded except test_threads.
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <linux/kexec.h>
#include <linux/reboot.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "luofleet/backend.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "testutil.h"

#define BOOT_ID "0f3c2d1e-8a7b-4c6d-9e5f-0123456789ab"
#define RELEASE "6.16.0-luo-v3"

/* The fake kernel. */
static struct fake {
        char root[PATH_MAX];
        uint32_t state; /* what GET_STATE answers */
        bool desync;    /* stop mirroring the state into sysfs */
        bool bogus;     /* GET_STATE answers bogus_state instead */
        uint32_t bogus_state;
        int open_errno;  /* opening dev/liveupdate fails with this */
        int ioctl_errno; /* the next ioctl fails with this (one shot) */
        int dev_fd;      /* the fd handed out for dev/liveupdate */
        int dev_opens, dev_flags, state_flags;
        int n_get, n_set, n_other, bad_fd;
        uint32_t last_event;
        int reboot_calls, reboot_cmd, reboot_errno;
        /* FD_PRESERVE'd files (a dup each) and what a previous boot handed over. */
        struct fake_token {
                uint64_t token;
                int fd; /* -1: free slot */
        } tokens[8], incoming[8];
        int n_preserve, n_unpreserve, n_restore;
        int token_errno[3]; /* FD_PRESERVE, FD_UNPRESERVE, FD_RESTORE fail with this (one shot) */
        struct {
                int calls, kernel_fd, initrd_fd, err;
                unsigned long cmdline_len, flags;
                bool cmdline_null;
                char cmdline[256];
        } kexec;
} fake;

static void fake_write(const char *rel, const char *text)
{
        char path[PATH_MAX + 64];
        _cleanup_close_ int fd = -1;

        ck_assert_int_lt(snprintf(path, sizeof(path), "%s/%s", fake.root, rel), (int)sizeof(path));
        /* In place (same inode): the backend's open watch fd sees the new content. */
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write_all(fd, text, strlen(text)), 0);
}

static void fake_unlink(const char *rel)
{
        char path[PATH_MAX + 64];

        ck_assert_int_lt(snprintf(path, sizeof(path), "%s/%s", fake.root, rel), (int)sizeof(path));
        ck_assert_int_eq(unlink(path), 0);
}

static void fake_set_sysfs(uint32_t s)
{
        char buf[32];

        snprintf(buf, sizeof(buf), "%s\n", luo_state_to_string((enum luo_state)s));
        fake_write("sys/kernel/liveupdate/state", buf);
}

static int fake_openat(int dirfd, const char *path, int flags, mode_t mode)
{
        int fd;

        if (strcmp(path, "dev/liveupdate") == 0) {
                if (fake.open_errno) {
                        errno = fake.open_errno;
                        return -1;
                }
                fd = openat(dirfd, path, flags, mode);
                if (fd >= 0) {
                        fake.dev_fd = fd;
                        fake.dev_opens++;
                        fake.dev_flags = flags;
                }
                return fd;
        }
        if (strcmp(path, "sys/kernel/liveupdate/state") == 0)
                fake.state_flags = flags;
        return openat(dirfd, path, flags, mode);
}

static struct fake_token *fake_token_find(struct fake_token *table, uint64_t token)
{
        for (int i = 0; i < 8; i++)
                if (table[i].fd >= 0 && table[i].token == token)
                        return &table[i];
        return NULL;
}

static struct fake_token *fake_token_add(struct fake_token *table, uint64_t token, int fd)
{
        for (int i = 0; i < 8; i++)
                if (table[i].fd < 0) {
                        table[i].token = token;
                        table[i].fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
                        ck_assert_int_ge(table[i].fd, 0);
                        return &table[i];
                }
        ck_abort_msg("fake token table full");
        return NULL;
}

static void fake_token_drop(struct fake_token *t)
{
        close(t->fd);
        t->fd = -1;
}

/* The token ioctls: the kernel holds its own reference to each preserved file. */
static int fake_token_ioctl(unsigned long nr, void *arg)
{
        struct {
                uint32_t size;
                int32_t fd;
                uint64_t token;
        } *a = arg;
        struct fake_token *t = fake_token_find(nr == 2 ? fake.incoming : fake.tokens, a->token);

        if (fake.token_errno[nr]) {
                errno = fake.token_errno[nr];
                fake.token_errno[nr] = 0;
                return -1;
        }
        switch (nr) {
        case 0: /* FD_PRESERVE */
                fake.n_preserve++;
                if (t) {
                        errno = EEXIST;
                        return -1;
                }
                if (fcntl(a->fd, F_GETFD) < 0) {
                        errno = EBADF;
                        return -1;
                }
                fake_token_add(fake.tokens, a->token, a->fd);
                return 0;
        case 1: /* FD_UNPRESERVE */
                fake.n_unpreserve++;
                ck_assert_int_eq(a->fd, 0); /* the pad */
                if (!t) {
                        errno = ENOENT;
                        return -1;
                }
                fake_token_drop(t);
                return 0;
        default: /* FD_RESTORE */
                fake.n_restore++;
                if (!t) {
                        errno = ENOENT;
                        return -1;
                }
                a->fd = fcntl(t->fd, F_DUPFD_CLOEXEC, 0);
                return 0;
        }
}

/* The v3 kernel's ioctl: numbers and sizes checked exactly, never via the project's macros. */
static int fake_ioctl_locked(int fd, unsigned long request, void *arg)
{
        uint32_t *a = arg;
        enum luo_state to;

        if (fd != fake.dev_fd) {
                fake.bad_fd++;
                errno = EBADF;
                return -1;
        }
        if (fake.ioctl_errno) {
                errno = fake.ioctl_errno;
                fake.ioctl_errno = 0;
                return -1;
        }
        switch (request) {
        case 0xBA03: /* GET_STATE {u32 size = 8; u32 state} */
                fake.n_get++;
                if (a[0] != 8) {
                        errno = EINVAL;
                        return -1;
                }
                a[1] = fake.bogus ? fake.bogus_state : fake.state;
                return 0;
        case 0xBA04: /* SET_EVENT {u32 size = 8; u32 event} */
                fake.n_set++;
                if (a[0] != 8) {
                        errno = EINVAL;
                        return -1;
                }
                fake.last_event = a[1];
                if (a[1] >= _LUO_EVENT_MAX ||
                    luo_state_apply_event((enum luo_state)fake.state, (enum luo_event)a[1], &to) <
                            0) {
                        errno = EINVAL;
                        return -1;
                }
                fake.state = to;
                if (!fake.desync)
                        fake_set_sysfs(to);
                return 0;
        case 0xBA00: /* FD_PRESERVE {u32 size = 16; s32 fd; u64 token} */
        case 0xBA01: /* FD_UNPRESERVE {u32 size = 16; u32 pad; u64 token} */
        case 0xBA02: /* FD_RESTORE {u32 size = 16; s32 fd (out); u64 token} */
                if (a[0] != 16) {
                        errno = EINVAL;
                        return -1;
                }
                return fake_token_ioctl(request & 0xff, arg);
        default:
                fake.n_other++;
                errno = EINVAL; /* what the v3 kernel answers for an unknown nr */
                return -1;
        }
}

/* Like the kernel's own mutex: test_threads calls GET_STATE from two threads. */
static int fake_ioctl(int fd, unsigned long request, void *arg)
{
        static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
        int r, saved;

        pthread_mutex_lock(&lock);
        r = fake_ioctl_locked(fd, request, arg);
        saved = errno;
        pthread_mutex_unlock(&lock);
        errno = saved;
        return r;
}

static long fake_kexec_file_load(int kernel_fd, int initrd_fd, unsigned long cmdline_len,
                                 const char *cmdline, unsigned long flags)
{
        fake.kexec.calls++;
        fake.kexec.kernel_fd = kernel_fd;
        fake.kexec.initrd_fd = initrd_fd;
        fake.kexec.cmdline_len = cmdline_len;
        fake.kexec.flags = flags;
        fake.kexec.cmdline_null = cmdline == NULL;
        fake.kexec.cmdline[0] = 0;
        if (cmdline)
                snprintf(fake.kexec.cmdline, sizeof(fake.kexec.cmdline), "%s", cmdline);
        if (fake.kexec.err) {
                errno = fake.kexec.err;
                return -1;
        }
        return 0;
}

static int fake_reboot(int cmd)
{
        fake.reboot_calls++;
        fake.reboot_cmd = cmd;
        if (fake.reboot_errno) {
                errno = fake.reboot_errno;
                return -1;
        }
        return 0;
}

static const struct luo_sys fake_sys = {
        .ioctl = fake_ioctl,
        .kexec_file_load = fake_kexec_file_load,
        .reboot = fake_reboot,
        .openat = fake_openat,
};

static void fake_mkdir(const char *rel)
{
        char path[PATH_MAX + 64];

        ck_assert_int_lt(snprintf(path, sizeof(path), "%s/%s", fake.root, rel), (int)sizeof(path));
        ck_assert_int_eq(mkdir_p(path, 0755), 0);
}

static void setup(void)
{
        memset(&fake, 0, sizeof(fake));
        fake.dev_fd = -1;
        for (int i = 0; i < 8; i++)
                fake.tokens[i].fd = fake.incoming[i].fd = -1;
        fake.state = LUO_STATE_NORMAL;
        testutil_mkdtemp(fake.root, sizeof(fake.root), "test_luo_v3");
        fake_mkdir("sys/kernel/liveupdate");
        fake_mkdir("dev");
        fake_mkdir("proc/sys/kernel/random");
        fake_write("sys/kernel/liveupdate/state", "normal\n");
        fake_write("dev/liveupdate", "");
        fake_write("sys/kernel/kexec_loaded", "0\n");
        fake_write("proc/sys/kernel/random/boot_id", BOOT_ID "\n");
        fake_write("proc/sys/kernel/osrelease", RELEASE "\n");
}

static void teardown(void)
{
        for (int i = 0; i < 8; i++) {
                if (fake.tokens[i].fd >= 0)
                        fake_token_drop(&fake.tokens[i]);
                if (fake.incoming[i].fd >= 0)
                        fake_token_drop(&fake.incoming[i]);
        }
        testutil_rm_rf(fake.root);
        fake.root[0] = 0;
}

static struct backend_config v3_cfg(enum backend_kind kind)
{
        return (struct backend_config){ .kind = kind, .root = fake.root, .sys = &fake_sys };
}

static struct backend *v3(void)
{
        struct backend_config c = v3_cfg(BACKEND_LUO_V3);
        struct backend *b = NULL;
        char msg[256] = "x";
        int r = luo_v3_open(&c, &b, msg, sizeof(msg));

        ck_assert_msg(r == 0, "luo_v3_open: %d (%s)", r, msg);
        ck_assert_str_eq(msg, "");
        return b;
}

static enum luo_state state(struct backend *b)
{
        enum luo_state s = (enum luo_state)99;
        ck_assert_int_eq(b->ops->get_state(b, &s), 0);
        return s;
}

static enum luo_state watched(struct backend *b)
{
        enum luo_state s = (enum luo_state)99;
        ck_assert_int_eq(b->ops->watch_read(b, &s), 0);
        return s;
}

/* Open must fail with err, write exactly nothing to *ret and leak no fd. */
static void open_fails(enum backend_kind kind, int err, char *msg, size_t size)
{
        struct backend_config c = v3_cfg(kind);
        struct backend *b = NULL;
        int before = testutil_count_fds();

        msg[0] = 0;
        ck_assert_int_eq(backend_open(&c, &b, msg, size), err);
        ck_assert_ptr_null(b);
        ck_assert_int_eq(testutil_count_fds(), before);
        ck_assert_str_ne(msg, "");
}

START_TEST(test_open)
{
        struct luo_sys local = fake_sys;
        struct backend_config c = v3_cfg(BACKEND_LUO_V3);
        struct backend *b = NULL;
        char msg[256];

        c.sys = &local;
        ck_assert_int_eq(luo_v3_open(&c, &b, msg, sizeof(msg)), 0);
        /* The table was copied: the caller's may go away. */
        memset(&local, 0, sizeof(local));

        ck_assert_str_eq(b->ops->name, "luo-v3");
        ck_assert_int_eq(b->ops->watch_events(b), POLLPRI | POLLERR);
        ck_assert_int_ge(b->ops->watch_fd(b), 0);
        ck_assert_int_eq(fake.dev_opens, 1);
        ck_assert_int_eq(fake.dev_flags & O_ACCMODE, O_RDWR);
        ck_assert(fake.dev_flags & O_CLOEXEC);
        ck_assert_int_eq(fake.state_flags & O_ACCMODE, O_RDONLY);
        ck_assert(fake.state_flags & O_CLOEXEC);
        ck_assert_int_eq(fake.n_get, 1); /* the ABI probe */

        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        ck_assert_int_eq(fake.n_get, 2);
        fake.state = LUO_STATE_UPDATED;
        ck_assert_int_eq(state(b), LUO_STATE_UPDATED);
        fake.state = LUO_STATE_UNDEFINED;
        ck_assert_int_eq(state(b), LUO_STATE_UNDEFINED);
        ck_assert_int_eq(fake.bad_fd, 0);
        ck_assert_int_eq(fake.n_other, 0);
        ck_assert_int_eq(fake.dev_opens, 1); /* held, never reopened */
        ck_assert_ptr_null(backend_free(b));
}
END_TEST

START_TEST(test_set_event)
{
        struct backend *b = v3();

        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(fake.n_set, 1);
        ck_assert_uint_eq(fake.last_event, 0);
        ck_assert_int_eq(state(b), LUO_STATE_PREPARED);
        ck_assert_int_eq(watched(b), LUO_STATE_PREPARED);

        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), -EINVAL);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FINISH), -EINVAL);
        ck_assert_uint_eq(fake.last_event, 2);
        ck_assert_int_eq(fake.n_set, 3);
        ck_assert_int_eq(state(b), LUO_STATE_PREPARED);

        /* FREEZE and unknown events never reach the kernel */
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FREEZE), -EINVAL);
        ck_assert_int_eq(b->ops->set_event(b, _LUO_EVENT_MAX), -EINVAL);
        ck_assert_int_eq(b->ops->set_event(b, (enum luo_event)(-1)), -EINVAL);
        ck_assert_int_eq(fake.n_set, 3);

        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), 0);
        ck_assert_uint_eq(fake.last_event, 3);
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        ck_assert_int_eq(watched(b), LUO_STATE_NORMAL);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), -EINVAL);

        fake.state = LUO_STATE_UPDATED;
        fake_set_sysfs(LUO_STATE_UPDATED);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), -EINVAL);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FINISH), 0);
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        ck_assert_int_eq(watched(b), LUO_STATE_NORMAL);

        /* The kernel's errno comes back exactly. */
        static const int errs[] = { EBUSY, EAGAIN, EFAULT, ENOMEM, E2BIG, EIO };
        for (size_t i = 0; i < ELEMENTSOF(errs); i++) {
                fake.ioctl_errno = errs[i];
                ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), -errs[i]);
                ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        }
        ck_assert_int_eq(fake.bad_fd, 0);
        backend_free(b);
}
END_TEST

START_TEST(test_get_state_errors)
{
        struct backend *b = v3();
        enum luo_state s = LUO_STATE_FROZEN;

        fake.bogus = true;
        fake.bogus_state = 5;
        ck_assert_int_eq(b->ops->get_state(b, &s), -EPROTO);
        fake.bogus_state = 0xffffffffu;
        ck_assert_int_eq(b->ops->get_state(b, &s), -EPROTO);
        ck_assert_int_eq(s, LUO_STATE_FROZEN); /* untouched */
        fake.bogus = false;
        fake.ioctl_errno = EAGAIN;
        ck_assert_int_eq(b->ops->get_state(b, &s), -EAGAIN);
        fake.ioctl_errno = EFAULT;
        ck_assert_int_eq(b->ops->get_state(b, &s), -EFAULT);
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        backend_free(b);
}
END_TEST

START_TEST(test_open_busy_and_permissions)
{
        char msg[256];

        fake.open_errno = EBUSY;
        open_fails(BACKEND_LUO_V3, -EBUSY, msg, sizeof(msg));
        ck_assert_str_eq(msg, "another live-update agent holds /dev/liveupdate");

        fake.open_errno = EACCES;
        open_fails(BACKEND_LUO_V3, -EACCES, msg, sizeof(msg));
        ck_assert_msg(strstr(msg, "CAP_SYS_ADMIN") != NULL, "%s", msg);
        fake.open_errno = EPERM;
        open_fails(BACKEND_LUO_V3, -EPERM, msg, sizeof(msg));
        ck_assert_msg(strstr(msg, "CAP_SYS_ADMIN") != NULL, "%s", msg);

        /* auto goes the same way once it has found the v3 sysfs file */
        fake.open_errno = EBUSY;
        open_fails(BACKEND_AUTO, -EBUSY, msg, sizeof(msg));
        ck_assert_str_eq(msg, "another live-update agent holds /dev/liveupdate");
}
END_TEST

START_TEST(test_open_missing)
{
        char msg[512], want[PATH_MAX + 256];

        fake_unlink("dev/liveupdate");
        open_fails(BACKEND_LUO_V3, -ENOENT, msg, sizeof(msg));
        ck_assert_msg(strstr(msg, "/dev/liveupdate missing") != NULL, "%s", msg);

        fake_write("dev/liveupdate", "");
        fake_unlink("sys/kernel/liveupdate/state");
        open_fails(BACKEND_LUO_V3, -ENOENT, msg, sizeof(msg));
        snprintf(want, sizeof(want),
                 "no live-update orchestrator found (%s/sys/kernel/liveupdate/state missing); use "
                 "--backend=sim to run on the simulated kernel",
                 fake.root);
        ck_assert_str_eq(msg, want);
        ck_assert_int_eq(fake.dev_opens, 0);

        teardown(); /* the root itself is gone */
        open_fails(BACKEND_LUO_V3, -ENOENT, msg, sizeof(msg));
        ck_assert_msg(strstr(msg, "root directory") != NULL, "%s", msg);
}
END_TEST

START_TEST(test_open_bad_sysfs_or_abi)
{
        char msg[256];

        fake_write("sys/kernel/liveupdate/state", "banana\n");
        open_fails(BACKEND_LUO_V3, -EPROTO, msg, sizeof(msg));
        ck_assert_msg(strstr(msg, "sys/kernel/liveupdate/state") != NULL, "%s", msg);
        fake_write("sys/kernel/liveupdate/state", "normal\n");

        /* A device that does not answer GET_STATE (e.g. the 6.19 sessions ABI) */
        fake.ioctl_errno = ENOTTY;
        open_fails(BACKEND_LUO_V3, -ENOTTY, msg, sizeof(msg));
        ck_assert_msg(strstr(msg, "v3") != NULL, "%s", msg);
        fake.bogus = true;
        fake.bogus_state = 9;
        open_fails(BACKEND_LUO_V3, -EPROTO, msg, sizeof(msg));
}
END_TEST

START_TEST(test_real_syscalls_on_fake_tree)
{
        /* No injected table: the real ioctl on a regular file is ENOTTY. */
        struct backend_config c = { .kind = BACKEND_LUO_V3, .root = fake.root };
        struct backend *b = NULL;
        char msg[256] = "";

        ck_assert_int_eq(luo_v3_open(&c, &b, msg, sizeof(msg)), -ENOTTY);
        ck_assert_ptr_null(b);
        ck_assert_msg(strstr(msg, "GET_STATE") != NULL, "%s", msg);
}
END_TEST

START_TEST(test_reboot)
{
        struct backend *b = v3();
        bool loaded = true;

        ck_assert_int_eq(b->ops->kexec_loaded(b, &loaded), 0);
        ck_assert(!loaded);
        ck_assert_int_eq(b->ops->reboot(b), -ENOEXEC);
        ck_assert_int_eq(fake.reboot_calls, 0);

        fake_write("sys/kernel/kexec_loaded", "1\n");
        ck_assert_int_eq(b->ops->kexec_loaded(b, &loaded), 0);
        ck_assert(loaded);
        ck_assert_int_eq(b->ops->reboot(b), 0);
        ck_assert_int_eq(fake.reboot_calls, 1);
        ck_assert_int_eq(fake.reboot_cmd, (int)LINUX_REBOOT_CMD_KEXEC);
        ck_assert_int_eq(fake.reboot_cmd, 0x45584543);

        fake.reboot_errno = EBUSY;
        ck_assert_int_eq(b->ops->reboot(b), -EBUSY);
        fake.reboot_errno = EINVAL;
        ck_assert_int_eq(b->ops->reboot(b), -EINVAL);
        ck_assert_int_eq(fake.reboot_calls, 3);

        fake_write("sys/kernel/kexec_loaded", "2\n");
        ck_assert_int_eq(b->ops->kexec_loaded(b, &loaded), -EPROTO);
        ck_assert_int_eq(b->ops->reboot(b), -EPROTO);
        fake_write("sys/kernel/kexec_loaded", "");
        ck_assert_int_eq(b->ops->kexec_loaded(b, &loaded), -EPROTO);
        fake_write("sys/kernel/kexec_loaded", "1");
        ck_assert_int_eq(b->ops->kexec_loaded(b, &loaded), 0);
        ck_assert(loaded);
        fake_unlink("sys/kernel/kexec_loaded");
        ck_assert_int_eq(b->ops->kexec_loaded(b, &loaded), -ENOENT);
        ck_assert_int_eq(b->ops->reboot(b), -ENOENT);
        ck_assert_int_eq(fake.reboot_calls, 3);
        backend_free(b);
}
END_TEST

START_TEST(test_kexec_load)
{
        struct backend *b = v3();
        char kpath[PATH_MAX + 32];
        _cleanup_close_ int k = -1, i = -1;

        snprintf(kpath, sizeof(kpath), "%s/proc/sys/kernel/osrelease", fake.root);
        k = open(kpath, O_RDONLY | O_CLOEXEC);
        i = open(kpath, O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(k, 0);
        ck_assert_int_ge(i, 0);

        ck_assert_int_eq(b->ops->kexec_load(b, k, i, "console=ttyS0"), 0);
        ck_assert_int_eq(fake.kexec.calls, 1);
        ck_assert_int_eq(fake.kexec.kernel_fd, k);
        ck_assert_int_eq(fake.kexec.initrd_fd, i);
        ck_assert_uint_eq(fake.kexec.cmdline_len, 14); /* strlen + NUL */
        ck_assert_str_eq(fake.kexec.cmdline, "console=ttyS0");
        ck_assert_uint_eq(fake.kexec.flags, 0);

        ck_assert_int_eq(b->ops->kexec_load(b, k, -1, "quiet"), 0);
        ck_assert_int_eq(fake.kexec.initrd_fd, -1);
        ck_assert_uint_eq(fake.kexec.cmdline_len, 6);
        ck_assert_uint_eq(fake.kexec.flags, KEXEC_FILE_NO_INITRAMFS);
        ck_assert_uint_eq(fake.kexec.flags, 4);

        ck_assert_int_eq(b->ops->kexec_load(b, k, -7, NULL), 0);
        ck_assert_int_eq(fake.kexec.initrd_fd, -1);
        ck_assert_uint_eq(fake.kexec.cmdline_len, 1);
        ck_assert(!fake.kexec.cmdline_null);
        ck_assert_str_eq(fake.kexec.cmdline, "");
        ck_assert_uint_eq(fake.kexec.flags, 4);

        fake.kexec.err = EKEYREJECTED; /* KEXEC_SIG */
        ck_assert_int_eq(b->ops->kexec_load(b, k, i, ""), -EKEYREJECTED);
        fake.kexec.err = 0;
        ck_assert_int_eq(b->ops->kexec_load(b, -1, i, ""), -EBADF);
        ck_assert_int_eq(fake.kexec.calls, 4);

        ck_assert_int_eq(b->ops->kexec_unload(b), 0);
        ck_assert_int_eq(fake.kexec.calls, 5);
        ck_assert_int_eq(fake.kexec.kernel_fd, -1);
        ck_assert_int_eq(fake.kexec.initrd_fd, -1);
        ck_assert_uint_eq(fake.kexec.cmdline_len, 0);
        ck_assert(fake.kexec.cmdline_null);
        ck_assert_uint_eq(fake.kexec.flags, KEXEC_FILE_UNLOAD);
        ck_assert_uint_eq(fake.kexec.flags, 1);
        fake.kexec.err = EPERM;
        ck_assert_int_eq(b->ops->kexec_unload(b), -EPERM);
        backend_free(b);
}
END_TEST

START_TEST(test_self_check)
{
        struct backend *b = v3();
        enum luo_state a = (enum luo_state)99, s = (enum luo_state)99;

        ck_assert_int_eq(b->ops->self_check(b, &a, &s), 0);
        ck_assert_int_eq(a, LUO_STATE_NORMAL);
        ck_assert_int_eq(s, LUO_STATE_NORMAL);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(b->ops->self_check(b, &a, &s), 0);
        ck_assert_int_eq(a, LUO_STATE_PREPARED);
        ck_assert_int_eq(s, LUO_STATE_PREPARED);

        fake.desync = true;
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), 0);
        ck_assert_int_eq(b->ops->self_check(b, &a, &s), -EPROTO);
        ck_assert_int_eq(a, LUO_STATE_NORMAL);
        ck_assert_int_eq(s, LUO_STATE_PREPARED);
        ck_assert_int_eq(b->ops->self_check(b, NULL, NULL), -EPROTO);

        fake_write("sys/kernel/liveupdate/state", "garbage\n");
        ck_assert_int_eq(b->ops->self_check(b, &a, &s), -EPROTO);
        fake.ioctl_errno = EAGAIN;
        ck_assert_int_eq(b->ops->self_check(b, &a, &s), -EAGAIN);
        backend_free(b);
}
END_TEST

START_TEST(test_watch_read)
{
        struct backend *b = v3();
        enum luo_state s = LUO_STATE_UPDATED;
        char longline[200];

        ck_assert_int_eq(watched(b), LUO_STATE_NORMAL);
        fake_write("sys/kernel/liveupdate/state", "frozen\n");
        ck_assert_int_eq(watched(b), LUO_STATE_FROZEN);
        ck_assert_int_eq(watched(b), LUO_STATE_FROZEN); /* re-reads from offset 0 */
        fake_write("sys/kernel/liveupdate/state", "updated\n");
        ck_assert_int_eq(watched(b), LUO_STATE_UPDATED);
        fake_write("sys/kernel/liveupdate/state", "undefined\n");
        ck_assert_int_eq(watched(b), LUO_STATE_UNDEFINED);
        fake_write("sys/kernel/liveupdate/state", "prepared");
        ck_assert_int_eq(watched(b), LUO_STATE_PREPARED);

        fake_write("sys/kernel/liveupdate/state", "banana\n");
        ck_assert_int_eq(b->ops->watch_read(b, &s), -EPROTO);
        fake_write("sys/kernel/liveupdate/state", "");
        ck_assert_int_eq(b->ops->watch_read(b, &s), -EPROTO);
        fake_write("sys/kernel/liveupdate/state", "normal\n\n");
        ck_assert_int_eq(b->ops->watch_read(b, &s), -EPROTO);
        memset(longline, 'n', sizeof(longline) - 1);
        longline[sizeof(longline) - 1] = 0;
        fake_write("sys/kernel/liveupdate/state", longline);
        ck_assert_int_eq(b->ops->watch_read(b, &s), -EPROTO);
        ck_assert_int_eq(s, LUO_STATE_UPDATED); /* untouched */

        fake_write("sys/kernel/liveupdate/state", "normal\n");
        ck_assert_int_eq(watched(b), LUO_STATE_NORMAL);
        backend_free(b);
}
END_TEST

START_TEST(test_get_info)
{
        struct backend *b = v3();
        struct backend_info bi;
        struct utsname u;

        ck_assert_int_eq(b->ops->get_info(b, &bi), 0);
        ck_assert_str_eq(bi.boot_id, BOOT_ID);
        ck_assert_str_eq(bi.release, RELEASE);
        ck_assert_uint_eq(bi.uptime_ms, 0); /* no proc/uptime: unknown */

        /* The blackout's share of the new boot (agent/verify.c). */
        fake_write("proc/uptime", "12345.67 99.00\n");
        ck_assert_int_eq(b->ops->get_info(b, &bi), 0);
        ck_assert_uint_eq(bi.uptime_ms, 12345670);
        fake_write("proc/uptime", "7 1\n");
        ck_assert_int_eq(b->ops->get_info(b, &bi), 0);
        ck_assert_uint_eq(bi.uptime_ms, 7000);
        fake_write("proc/uptime", "garbage\n");
        ck_assert_int_eq(b->ops->get_info(b, &bi), 0);
        ck_assert_uint_eq(bi.uptime_ms, 0);
        fake_unlink("proc/uptime");

        fake_unlink("proc/sys/kernel/osrelease");
        ck_assert_int_eq(b->ops->get_info(b, &bi), 0);
        ck_assert_int_eq(uname(&u), 0);
        ck_assert_str_eq(bi.release, u.release);

        fake_write("proc/sys/kernel/random/boot_id", "not-a-boot-id\n");
        snprintf(bi.boot_id, sizeof(bi.boot_id), "untouched");
        ck_assert_int_eq(b->ops->get_info(b, &bi), -EPROTO);
        ck_assert_str_eq(bi.boot_id, "untouched");
        fake_unlink("proc/sys/kernel/random/boot_id");
        ck_assert_int_eq(b->ops->get_info(b, &bi), -ENOENT);
        backend_free(b);
}
END_TEST

START_TEST(test_auto)
{
        struct backend_config c = v3_cfg(BACKEND_AUTO);
        struct backend *b = NULL;
        char msg[1024], want[2 * PATH_MAX + 256];

        ck_assert_int_eq(backend_open(&c, &b, msg, sizeof(msg)), 0);
        ck_assert_str_eq(b->ops->name, "luo-v3");
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        b = backend_free(b);
        c.kind = BACKEND_LUO_V3;
        ck_assert_int_eq(backend_open(&c, &b, msg, sizeof(msg)), 0);
        ck_assert_str_eq(b->ops->name, "luo-v3");
        b = backend_free(b);

        /*
         * /dev/liveupdate without the v3 sysfs file: the 6.19+ sessions
         * interface, driven by luo-sessions (test_luo_sessions.c). This fake
         * speaks only v3: its RETRIEVE_SESSION (0xBA01, 72 bytes) is an
         * FD_UNPRESERVE of the wrong size, EINVAL, and the open says so.
         */
        fake_unlink("sys/kernel/liveupdate/state");
        fake.dev_opens = 0;
        open_fails(BACKEND_AUTO, -EINVAL, msg, sizeof(msg));
        ck_assert_msg(strstr(msg, "RETRIEVE_SESSION(\"luofleet\")") != NULL, "%s", msg);
        ck_assert_msg(strstr(msg, "sessions ABI") != NULL, "%s", msg);
        ck_assert_int_eq(fake.dev_opens, 1); /* opened for that one ioctl, closed again */
        ck_assert_int_eq(fake.n_unpreserve, 0);

        /* nothing at all */
        fake_unlink("dev/liveupdate");
        fake.dev_opens = 0;
        open_fails(BACKEND_AUTO, -ENOENT, msg, sizeof(msg));
        snprintf(want, sizeof(want),
                 "no live-update orchestrator found: use --backend=sim to run on the simulated "
                 "kernel (a Linux 6.19+ kernel needs liveupdate=on kho=on on its command line; "
                 "neither %s/sys/kernel/liveupdate/state nor %s/dev/liveupdate exists)",
                 fake.root, fake.root);
        ck_assert_str_eq(msg, want);
        ck_assert_int_eq(fake.dev_opens, 0);

        /* a trailing slash on --root does not double the slash in messages */
        char root[PATH_MAX + 2];
        snprintf(root, sizeof(root), "%s/", fake.root);
        c = v3_cfg(BACKEND_AUTO);
        c.root = root;
        ck_assert_int_eq(backend_open(&c, &b, msg, sizeof(msg)), -ENOENT);
        ck_assert_str_eq(msg, want);

        c.kind = (enum backend_kind)42;
        ck_assert_int_eq(backend_open(&c, &b, msg, sizeof(msg)), -EINVAL);
        ck_assert_ptr_null(b);
}
END_TEST

/* A memfd with content, for the token tests. */
static int test_memfd(const char *content)
{
        int fd = memfd_create("test-v3", MFD_CLOEXEC);

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write_all(fd, content, strlen(content)), 0);
        return fd;
}

static void fake_seed_incoming(uint64_t token, int fd)
{
        fake_token_add(fake.incoming, token, fd);
}

START_TEST(test_tokens)
{
        struct backend *b = v3();
        _cleanup_close_ int m = test_memfd("vm memory"), m2 = test_memfd("other");
        struct fake_token *t;
        char buf[32] = "";
        int fd = -1;

        ck_assert_ptr_null(b->ops->session_create);
        ck_assert_ptr_nonnull(b->ops->fd_preserve);
        ck_assert_int_eq(b->ops->fd_preserve(b, m, 7), 0);
        t = fake_token_find(fake.tokens, 7);
        ck_assert_ptr_nonnull(t);
        ck_assert_int_eq(pread(t->fd, buf, sizeof(buf) - 1, 0), 9);
        ck_assert_str_eq(buf, "vm memory");
        ck_assert_int_eq(b->ops->fd_preserve(b, m2, 7), -EEXIST);
        ck_assert_int_eq(b->ops->fd_preserve(b, 9999, 8), -EBADF);
        ck_assert_int_eq(fake.n_preserve, 3);
        /* the marker's token is refused before the kernel sees it */
        ck_assert_int_eq(b->ops->fd_preserve(b, m2, BACKEND_MARKER_TOKEN), -EEXIST);
        ck_assert_int_eq(fake.n_preserve, 3);

        ck_assert_int_eq(b->ops->fd_unpreserve(b, 7), 0);
        ck_assert_ptr_null(fake_token_find(fake.tokens, 7));
        ck_assert_int_eq(b->ops->fd_unpreserve(b, 7), -ENOENT);
        ck_assert_int_eq(b->ops->fd_preserve(b, m2, 7), 0);

        /* FD_RESTORE: only what a previous boot handed over */
        ck_assert_int_eq(b->ops->fd_restore(b, 7, &fd), -ENOENT);
        ck_assert_int_eq(fd, -1);
        fake_seed_incoming(42, m);
        ck_assert_int_eq(b->ops->fd_restore(b, 42, &fd), 0);
        ck_assert_int_ge(fd, 0);
        memset(buf, 0, sizeof(buf));
        ck_assert_int_eq(pread(fd, buf, sizeof(buf) - 1, 0), 9);
        ck_assert_str_eq(buf, "vm memory");
        close(fd);
        ck_assert_int_eq(fake.n_restore, 2);

        /* the kernel's errno, unchanged */
        static const int errs[] = { EBUSY, EAGAIN, ENOMEM, EFAULT };
        for (size_t i = 0; i < ELEMENTSOF(errs); i++) {
                fake.ioctl_errno = errs[i];
                ck_assert_int_eq(b->ops->fd_preserve(b, m, 11), -errs[i]);
                fake.ioctl_errno = errs[i];
                ck_assert_int_eq(b->ops->fd_unpreserve(b, 7), -errs[i]);
                fake.ioctl_errno = errs[i];
                ck_assert_int_eq(b->ops->fd_restore(b, 42, &fd), -errs[i]);
        }
        ck_assert_int_eq(fake.bad_fd, 0);
        ck_assert_int_eq(fake.n_other, 0);
        backend_free(b);
}
END_TEST

/* What the fake kernel holds under the marker token: "LFMK", LE u32 length, blob. */
static void assert_marker_file(const char *blob)
{
        struct fake_token *t = fake_token_find(fake.tokens, BACKEND_MARKER_TOKEN);
        size_t len = strlen(blob);
        char buf[256];
        struct stat st;

        ck_assert_ptr_nonnull(t);
        ck_assert_int_eq(fstat(t->fd, &st), 0);
        ck_assert_int_eq(st.st_size, 1024 * 1024);
        ck_assert_uint_lt(len + 8, sizeof(buf));
        ck_assert_int_eq(pread(t->fd, buf, len + 8, 0), (ssize_t)(len + 8));
        ck_assert_int_eq(memcmp(buf, "LFMK", 4), 0);
        ck_assert_uint_eq((uint8_t)buf[4] | (uint8_t)buf[5] << 8 | (uint8_t)buf[6] << 16 |
                                  (uint32_t)(uint8_t)buf[7] << 24,
                          len);
        ck_assert_int_eq(memcmp(buf + 8, blob, len), 0);
}

static void assert_marker_read(struct backend *b, const char *want)
{
        void *blob = NULL;
        size_t len = 99;

        if (!want) {
                ck_assert_int_eq(b->ops->marker_read(b, &blob, &len), -ENOENT);
                ck_assert_ptr_null(blob);
                ck_assert_uint_eq(len, 99);
                return;
        }
        ck_assert_int_eq(b->ops->marker_read(b, &blob, &len), 0);
        ck_assert_ptr_nonnull(blob);
        ck_assert_uint_eq(len, strlen(want));
        ck_assert_int_eq(memcmp(blob, want, len), 0);
        free(blob);
}

/* The next boot: the kernel hands over what was preserved, the state is updated. */
static void fake_live_update(void)
{
        for (int i = 0; i < 8; i++) {
                if (fake.incoming[i].fd >= 0)
                        fake_token_drop(&fake.incoming[i]);
                if (fake.tokens[i].fd >= 0) {
                        fake_seed_incoming(fake.tokens[i].token, fake.tokens[i].fd);
                        fake_token_drop(&fake.tokens[i]);
                }
        }
        fake.state = LUO_STATE_UPDATED;
        fake_set_sysfs(LUO_STATE_UPDATED);
}

START_TEST(test_marker)
{
        struct backend *b = v3();
        static char big[1024 * 1024];
        const char *doc = "{\"version\": 1, \"sessions\": []}";

        /* a cold boot: nothing incoming, and no FD_RESTORE asked */
        assert_marker_read(b, NULL);
        ck_assert_int_eq(fake.n_restore, 0);

        /* only while the kernel says prepared */
        ck_assert_int_eq(b->ops->marker_write(b, "x", 1), -EINVAL);
        ck_assert_int_eq(fake.n_preserve, 0);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(b->ops->marker_write(b, big, sizeof(big) - 7), -EFBIG);
        ck_assert_int_eq(b->ops->marker_write(b, "first, longer blob", 18), 0);
        ck_assert_int_eq(fake.n_preserve, 1);
        assert_marker_file("first, longer blob");
        ck_assert_int_eq(b->ops->marker_write(b, doc, strlen(doc)), 0);
        ck_assert_int_eq(fake.n_preserve, 1); /* preserved once, written in place */
        assert_marker_file(doc);
        ck_assert_int_eq(b->ops->marker_write(b, big, sizeof(big) - 8), 0); /* the largest */
        ck_assert_int_eq(b->ops->marker_write(b, doc, strlen(doc)), 0);

        /* a cancel keeps the token (the kernel's rule), a new prepare writes on */
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), 0);
        ck_assert_int_eq(b->ops->marker_write(b, "x", 1), -EINVAL);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(b->ops->marker_write(b, doc, strlen(doc)), 0);
        ck_assert_int_eq(fake.n_preserve, 1);
        assert_marker_read(b, NULL); /* the outgoing marker is not the incoming one */
        b = backend_free(b);

        /* the next boot reads it back at open, until FINISH */
        fake_live_update();
        b = v3();
        ck_assert_int_eq(fake.n_restore, 1);
        assert_marker_read(b, doc);
        assert_marker_read(b, doc); /* a copy each time */
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), -EINVAL);
        assert_marker_read(b, doc);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FINISH), 0);
        assert_marker_read(b, NULL);
        ck_assert_int_eq(fake.n_restore, 1);
        backend_free(b);
}
END_TEST

START_TEST(test_marker_incoming)
{
        _cleanup_close_ int m = memfd_create("test-marker", MFD_CLOEXEC);
        struct backend *b;

        ck_assert_int_ge(m, 0);
        ck_assert_int_eq(ftruncate(m, 1024 * 1024), 0);
        fake.state = LUO_STATE_UPDATED;
        fake_set_sysfs(LUO_STATE_UPDATED);

        /* updated without a marker token: a live update that is not ours */
        b = v3();
        ck_assert_int_eq(fake.n_restore, 1);
        assert_marker_read(b, NULL);
        b = backend_free(b);

        /* the marker was preserved but never written: all zero */
        fake_seed_incoming(BACKEND_MARKER_TOKEN, m);
        b = v3();
        assert_marker_read(b, NULL);
        b = backend_free(b);

        /* a wrong magic: an empty blob, the boot stays updated */
        ck_assert_int_eq(pwrite(m, "LFMX\3\0\0\0abc", 11, 0), 11);
        b = v3();
        assert_marker_read(b, "");
        ck_assert_int_eq(state(b), LUO_STATE_UPDATED);
        b = backend_free(b);
        /* a length beyond the file */
        ck_assert_int_eq(pwrite(m, "LFMK\xff\xff\x0f\0", 8, 0), 8);
        b = v3();
        assert_marker_read(b, "");
        b = backend_free(b);
        ck_assert_int_eq(pwrite(m, "LFMK\3\0\0\0abc", 11, 0), 11);
        b = v3();
        assert_marker_read(b, "abc");
        b = backend_free(b);

        /* FD_RESTORE failing otherwise does not fail the open: no marker */
        fake.token_errno[2] = EIO;
        b = v3();
        assert_marker_read(b, NULL);
        ck_assert_int_eq(state(b), LUO_STATE_UPDATED);
        backend_free(b);
}
END_TEST

START_TEST(test_marker_token_taken)
{
        _cleanup_close_ int stale = test_memfd("stale");
        struct backend *b = v3();
        char buf[8] = "";

        /* the token holds another file already: it is swapped for ours */
        fake_token_add(fake.tokens, BACKEND_MARKER_TOKEN, stale);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(b->ops->marker_write(b, "mine", 4), 0);
        ck_assert_int_eq(fake.n_preserve, 2);
        ck_assert_int_eq(fake.n_unpreserve, 1);
        assert_marker_file("mine");
        ck_assert_int_eq(pread(stale, buf, 5, 0), 5);
        ck_assert_int_eq(memcmp(buf, "stale", 5), 0);

        /* a preserve failing otherwise: the kernel's errno, and the next write tries again */
        backend_free(b);
        fake_token_drop(fake_token_find(fake.tokens, BACKEND_MARKER_TOKEN)); /* device closed */
        b = v3();
        fake.token_errno[0] = ENOMEM;
        ck_assert_int_eq(b->ops->marker_write(b, "x", 1), -ENOMEM);
        fake.token_errno[1] = EIO; /* unused: no EEXIST, so no FD_UNPRESERVE */
        ck_assert_int_eq(b->ops->marker_write(b, "again", 5), 0);
        ck_assert_int_eq(fake.token_errno[1], EIO);
        assert_marker_file("again");
        /* EEXIST, then the unpreserve fails: its errno */
        backend_free(b);
        b = v3();
        fake.token_errno[1] = EBUSY;
        ck_assert_int_eq(b->ops->marker_write(b, "x", 1), -EBUSY);
        assert_marker_file("again");
        backend_free(b);
}
END_TEST

START_TEST(test_describe)
{
        struct backend *b = v3();
        char buf[128], small[8];

        ck_assert_int_gt(b->ops->describe(b, buf, sizeof(buf)), 0);
        ck_assert_str_eq(buf, "v3 (GET_STATE SET_EVENT FD_PRESERVE FD_UNPRESERVE FD_RESTORE)");
        ck_assert_int_eq(b->ops->describe(b, small, sizeof(small)), -ENOBUFS);
        ck_assert_str_eq(small, "v3 (GET");
        ck_assert_ptr_null(b->ops->session_unpreserve);
        ck_assert_ptr_null(b->ops->set_event_ex);
        backend_free(b);
}
END_TEST

static void *state_reader(void *p)
{
        struct backend *b = p;
        intptr_t bad = 0;

        for (int i = 0; i < 500; i++) {
                enum luo_state s;
                bool l;
                if (b->ops->get_state(b, &s) < 0 || s != LUO_STATE_NORMAL)
                        bad++;
                if (b->ops->kexec_loaded(b, &l) < 0 || !l)
                        bad++;
        }
        return (void *)bad;
}

START_TEST(test_threads)
{
        struct backend *b = v3();
        pthread_t t1, t2;
        void *r1, *r2;

        fake_write("sys/kernel/kexec_loaded", "1\n");
        ck_assert_int_eq(pthread_create(&t1, NULL, state_reader, b), 0);
        ck_assert_int_eq(pthread_create(&t2, NULL, state_reader, b), 0);
        ck_assert_int_eq(pthread_join(t1, &r1), 0);
        ck_assert_int_eq(pthread_join(t2, &r2), 0);
        ck_assert_ptr_null(r1);
        ck_assert_ptr_null(r2);
        backend_free(b);
}
END_TEST

static Suite *luo_v3_suite(void)
{
        Suite *s = suite_create("luo_v3");
        TCase *tc = tcase_create("core");

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_open);
        tcase_add_test(tc, test_set_event);
        tcase_add_test(tc, test_get_state_errors);
        tcase_add_test(tc, test_open_busy_and_permissions);
        tcase_add_test(tc, test_open_missing);
        tcase_add_test(tc, test_open_bad_sysfs_or_abi);
        tcase_add_test(tc, test_real_syscalls_on_fake_tree);
        tcase_add_test(tc, test_reboot);
        tcase_add_test(tc, test_kexec_load);
        tcase_add_test(tc, test_self_check);
        tcase_add_test(tc, test_watch_read);
        tcase_add_test(tc, test_get_info);
        tcase_add_test(tc, test_auto);
        tcase_add_test(tc, test_threads);
        tcase_add_test(tc, test_tokens);
        tcase_add_test(tc, test_marker);
        tcase_add_test(tc, test_marker_incoming);
        tcase_add_test(tc, test_marker_token_taken);
        tcase_add_test(tc, test_describe);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(luo_v3_suite)
