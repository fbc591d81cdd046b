/*
 * test_sim.c: the simulated kernel (kernel/sim.c) against the kernel's rules:
 * every transition and errno, persistence across close/reopen, the simulated
 * kexec reboot (the release it boots into, --sim-boot-release, the uptime of
 * a boot after a downtime), fault injection (cfg and the runtime faults file), eventfd
 * notification, exclusivity, corrupt state. Also the fault-spec parser and
 * the backend kind names of kernel/backend.c.
 *
 * Each test gets a fresh state directory under $LUOFLEET_TEST_TMP (or /tmp),
 * removed at the end. Single-threaded except test_threads.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "luofleet/backend.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "testutil.h"

#define SHA_HELLO "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
#define SHA_WORLD "486ea46224d1bb4fb680f34f7c9ad96a8f24ec88be73ea8e5a6c65260e9cb8a7"
#define RELEASE "6.12.0-sim"

static char tmpdir[PATH_MAX];
static struct backend_config cfg;

static void setup(void)
{
        testutil_mkdtemp(tmpdir, sizeof(tmpdir), "test_sim");
        cfg = (struct backend_config){
                .kind = BACKEND_SIM,
                .state_dir = tmpdir,
                .sim_release = RELEASE,
        };
}

static void teardown(void)
{
        testutil_rm_rf(tmpdir);
        tmpdir[0] = 0;
}

static struct backend *sim(void)
{
        struct backend *b = NULL;
        char msg[256] = "x";
        int r = sim_open(&cfg, &b, msg, sizeof(msg));

        ck_assert_msg(r == 0, "sim_open: %d (%s)", r, msg);
        ck_assert_str_eq(msg, "");
        ck_assert_ptr_nonnull(b);
        return b;
}

static enum luo_state state(struct backend *b)
{
        enum luo_state s = (enum luo_state)99;
        ck_assert_int_eq(b->ops->get_state(b, &s), 0);
        return s;
}

static short pending(struct backend *b)
{
        struct pollfd p = { .fd = b->ops->watch_fd(b), .events = b->ops->watch_events(b) };
        int r = poll(&p, 1, 0);
        ck_assert_int_ge(r, 0);
        return r > 0 ? p.revents : 0;
}

static enum luo_state drain(struct backend *b)
{
        enum luo_state s = (enum luo_state)99;
        ck_assert_int_eq(b->ops->watch_read(b, &s), 0);
        ck_assert_int_eq(pending(b), 0);
        return s;
}

static void info(struct backend *b, struct backend_info *ret)
{
        ck_assert_int_eq(b->ops->get_info(b, ret), 0);
        ck_assert(uuid_valid(ret->boot_id));
}

static bool loaded(struct backend *b)
{
        bool l = false;
        ck_assert_int_eq(b->ops->kexec_loaded(b, &l), 0);
        return l;
}

static void path_in(char *buf, size_t size, const char *name)
{
        ck_assert_int_lt(snprintf(buf, size, "%s/sim/%s", tmpdir, name), (int)size);
}

static json_t *kernel_json(void)
{
        char path[PATH_MAX + 32];
        json_error_t err;
        json_t *j;

        path_in(path, sizeof(path), "kernel.json");
        j = json_load_file(path, 0, &err);
        ck_assert_msg(j != NULL, "kernel.json: %s", err.text);
        return j;
}

static void write_sim_file(const char *name, const char *text)
{
        char path[PATH_MAX + 32];
        _cleanup_close_ int fd = -1;

        path_in(path, sizeof(path), name);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write_all(fd, text, strlen(text)), 0);
}

static void remove_sim_file(const char *name)
{
        char path[PATH_MAX + 32];

        path_in(path, sizeof(path), name);
        ck_assert_int_eq(unlink(path), 0);
}

/* A file in tmpdir with that content, opened read-only. */
static int content_fd(const char *name, const char *text)
{
        char path[PATH_MAX + 32];
        _cleanup_close_ int fd = -1;
        int rfd;

        ck_assert_int_lt(snprintf(path, sizeof(path), "%s/%s", tmpdir, name), (int)sizeof(path));
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write_all(fd, text, strlen(text)), 0);
        rfd = open(path, O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(rfd, 0);
        return rfd;
}

static void stage(struct backend *b)
{
        _cleanup_close_ int k = content_fd("vmlinuz", "hello");
        ck_assert_int_eq(b->ops->kexec_load(b, k, -1, "console=ttyS0"), 0);
        ck_assert(loaded(b));
}

static uint64_t elapsed_ms_since(uint64_t start_usec)
{
        return (now_mono_usec() - start_usec) / 1000;
}

/* Every event from a state: the expected answer, and the state unchanged on failure. */
static void check_refused(struct backend *b, enum luo_state s, const enum luo_event *evs, size_t n)
{
        for (size_t i = 0; i < n; i++) {
                ck_assert_int_eq(state(b), s);
                ck_assert_msg(b->ops->set_event(b, evs[i]) == -EINVAL, "%s from %s accepted",
                              luo_event_to_string(evs[i]), luo_state_to_string(s));
                ck_assert_int_eq(state(b), s);
                ck_assert_int_eq(pending(b), 0);
        }
}

START_TEST(test_first_start)
{
        struct backend *b = sim();
        struct backend_info bi;
        enum luo_state a = (enum luo_state)99, s = (enum luo_state)99;
        char path[PATH_MAX + 32];
        struct stat st;
        json_t *j;

        ck_assert_str_eq(b->ops->name, "sim");
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        ck_assert_int_eq(b->ops->watch_events(b), POLLIN);
        ck_assert_int_ge(b->ops->watch_fd(b), 0);
        ck_assert_int_eq(pending(b), 0);
        info(b, &bi);
        ck_assert_str_eq(bi.release, RELEASE);
        ck_assert(!loaded(b));
        ck_assert_int_eq(b->ops->self_check(b, &a, &s), 0);
        ck_assert_int_eq(a, LUO_STATE_NORMAL);
        ck_assert_int_eq(s, LUO_STATE_NORMAL);

        path_in(path, sizeof(path), "");
        ck_assert_int_eq(stat(path, &st), 0);
        ck_assert_int_eq(st.st_mode & 0777, 0700);

        j = kernel_json();
        ck_assert_str_eq(json_string_value(json_object_get(j, "state")), "normal");
        ck_assert_str_eq(json_string_value(json_object_get(j, "boot_id")), bi.boot_id);
        ck_assert_str_eq(json_string_value(json_object_get(j, "release")), RELEASE);
        ck_assert(json_is_null(json_object_get(j, "kexec")));
        ck_assert(json_is_false(json_object_get(j, "reboot_pending")));
        ck_assert_int_eq(json_integer_value(json_object_get(j, "boots")), 1);
        json_decref(j);
        ck_assert_ptr_null(backend_free(b));
}
END_TEST

START_TEST(test_release_from_uname)
{
        struct backend_info bi;
        struct utsname u;
        struct backend *b;

        cfg.sim_release = NULL;
        b = sim();
        info(b, &bi);
        ck_assert_int_eq(uname(&u), 0);
        ck_assert_str_eq(bi.release, u.release);
        backend_free(b);
}
END_TEST

START_TEST(test_transitions)
{
        static const enum luo_event from_normal[] = { LUO_EVENT_FINISH, LUO_EVENT_CANCEL,
                                                      LUO_EVENT_FREEZE };
        static const enum luo_event from_prepared[] = { LUO_EVENT_PREPARE, LUO_EVENT_FINISH,
                                                        LUO_EVENT_FREEZE };
        static const enum luo_event from_frozen[] = { LUO_EVENT_PREPARE, LUO_EVENT_FINISH,
                                                      LUO_EVENT_FREEZE };
        static const enum luo_event from_updated[] = { LUO_EVENT_PREPARE, LUO_EVENT_CANCEL,
                                                       LUO_EVENT_FREEZE };
        struct backend *b = sim();

        /* normal */
        check_refused(b, LUO_STATE_NORMAL, from_normal, ELEMENTSOF(from_normal));
        ck_assert_int_eq(b->ops->set_event(b, _LUO_EVENT_MAX), -EINVAL);
        ck_assert_int_eq(b->ops->set_event(b, (enum luo_event)(-1)), -EINVAL);

        /* normal -> prepared */
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(state(b), LUO_STATE_PREPARED);
        ck_assert_int_eq(drain(b), LUO_STATE_PREPARED);
        check_refused(b, LUO_STATE_PREPARED, from_prepared, ELEMENTSOF(from_prepared));

        /* prepared -> normal */
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), 0);
        ck_assert_int_eq(drain(b), LUO_STATE_NORMAL);

        /* frozen: only through the reboot call (no image: the kexec fails, frozen stays) */
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(b->ops->reboot(b), -EINVAL);
        ck_assert_int_eq(drain(b), LUO_STATE_FROZEN);
        check_refused(b, LUO_STATE_FROZEN, from_frozen, ELEMENTSOF(from_frozen));
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), 0);
        ck_assert_int_eq(drain(b), LUO_STATE_NORMAL);

        /* updated: through a simulated kexec from prepared */
        stage(b);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(b->ops->reboot(b), 0);
        backend_free(b);
        b = sim();
        ck_assert_int_eq(state(b), LUO_STATE_UPDATED);
        check_refused(b, LUO_STATE_UPDATED, from_updated, ELEMENTSOF(from_updated));
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FINISH), 0);
        ck_assert_int_eq(drain(b), LUO_STATE_NORMAL);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FINISH), -EINVAL);
        backend_free(b);
}
END_TEST

START_TEST(test_persistence)
{
        struct backend_info bi1, bi2;
        struct backend *b = sim();
        json_t *j;

        info(b, &bi1);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        backend_free(b);

        /* An agent restarting while prepared finds prepared, same boot. */
        b = sim();
        ck_assert_int_eq(state(b), LUO_STATE_PREPARED);
        info(&*b, &bi2);
        ck_assert_str_eq(bi1.boot_id, bi2.boot_id);
        j = kernel_json();
        ck_assert_str_eq(json_string_value(json_object_get(j, "state")), "prepared");
        ck_assert_int_eq(json_integer_value(json_object_get(j, "boots")), 1);
        json_decref(j);

        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), 0);
        backend_free(b);
        b = sim();
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        backend_free(b);
}
END_TEST

START_TEST(test_reboot_to_updated)
{
        _cleanup_close_ int k = -1, i = -1;
        struct backend_info before, after;
        struct backend *b = sim();
        json_t *j, *kx;

        info(b, &before);
        k = content_fd("vmlinuz", "hello");
        i = content_fd("initrd", "world");
        ck_assert_int_eq(lseek(k, 3, SEEK_SET), 3);
        ck_assert_int_eq(b->ops->kexec_load(b, k, i, "console=ttyS0 quiet"), 0);
        ck_assert_int_eq(lseek(k, 0, SEEK_CUR), 3); /* hashed with pread: offset untouched */
        ck_assert(loaded(b));
        ck_assert_int_eq(pending(b), 0); /* staging is not a state change */

        j = kernel_json();
        kx = json_object_get(j, "kexec");
        ck_assert(json_is_object(kx));
        ck_assert_str_eq(json_string_value(json_object_get(kx, "kernel_sha256")), SHA_HELLO);
        ck_assert_str_eq(json_string_value(json_object_get(kx, "initrd_sha256")), SHA_WORLD);
        ck_assert_str_eq(json_string_value(json_object_get(kx, "cmdline")), "console=ttyS0 quiet");
        ck_assert_int_eq(json_integer_value(json_object_get(kx, "kernel_size")), 5);
        json_decref(j);

        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(drain(b), LUO_STATE_PREPARED);
        ck_assert_int_eq(b->ops->reboot(b), 0);
        ck_assert_int_eq(state(b), LUO_STATE_FROZEN);
        ck_assert_int_eq(pending(b), POLLIN);
        ck_assert_int_eq(drain(b), LUO_STATE_FROZEN);
        j = kernel_json();
        ck_assert_str_eq(json_string_value(json_object_get(j, "state")), "frozen");
        ck_assert(json_is_true(json_object_get(j, "reboot_pending")));
        json_decref(j);

        /* The machine is going down: nothing else is accepted. */
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), -EBUSY);
        ck_assert_int_eq(b->ops->reboot(b), -EBUSY);
        ck_assert_int_eq(b->ops->kexec_load(b, k, -1, ""), -EBUSY);
        ck_assert_int_eq(b->ops->kexec_unload(b), -EBUSY);
        backend_free(b);

        /* The next open is the new boot. */
        b = sim();
        ck_assert_int_eq(state(b), LUO_STATE_UPDATED);
        info(b, &after);
        ck_assert_str_ne(before.boot_id, after.boot_id);
        ck_assert(!loaded(b));
        j = kernel_json();
        ck_assert_str_eq(json_string_value(json_object_get(j, "state")), "updated");
        ck_assert_str_eq(json_string_value(json_object_get(j, "boot_id")), after.boot_id);
        ck_assert(json_is_false(json_object_get(j, "reboot_pending")));
        ck_assert(json_is_null(json_object_get(j, "kexec")));
        ck_assert_int_eq(json_integer_value(json_object_get(j, "boots")), 2);
        json_decref(j);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FINISH), 0);
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        backend_free(b);

        /* and it stays that boot across restarts */
        b = sim();
        info(b, &before);
        ck_assert_str_eq(before.boot_id, after.boot_id);
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        backend_free(b);
}
END_TEST

START_TEST(test_reboot_plain_kexec)
{
        struct backend_info before, after;
        struct backend *b = sim();
        json_t *j;

        info(b, &before);
        stage(b);
        ck_assert_int_eq(b->ops->reboot(b), 0);
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        ck_assert_int_eq(pending(b), 0);
        backend_free(b);

        b = sim();
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL); /* nothing handed over */
        info(b, &after);
        ck_assert_str_ne(before.boot_id, after.boot_id);
        ck_assert(!loaded(b));
        j = kernel_json();
        ck_assert_int_eq(json_integer_value(json_object_get(j, "boots")), 2);
        json_decref(j);
        backend_free(b);
}
END_TEST

START_TEST(test_reboot_normal_without_image)
{
        struct backend_info before, after;
        struct backend *b = sim();
        json_t *j;

        info(b, &before);
        ck_assert_int_eq(b->ops->reboot(b), -EINVAL);
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        ck_assert_int_eq(pending(b), 0);
        j = kernel_json();
        ck_assert(json_is_false(json_object_get(j, "reboot_pending")));
        json_decref(j);
        backend_free(b);

        b = sim(); /* no reboot happened */
        info(b, &after);
        ck_assert_str_eq(before.boot_id, after.boot_id);
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        backend_free(b);
}
END_TEST

START_TEST(test_reboot_prepared_without_image)
{
        struct backend_info before, after;
        struct backend *b = sim();
        json_t *j;

        info(b, &before);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(drain(b), LUO_STATE_PREPARED);
        ck_assert_int_eq(b->ops->reboot(b), -EINVAL);
        ck_assert_int_eq(state(b), LUO_STATE_FROZEN); /* froze, then the kexec failed */
        ck_assert_int_eq(pending(b), POLLIN);
        ck_assert_int_eq(drain(b), LUO_STATE_FROZEN);
        j = kernel_json();
        ck_assert_str_eq(json_string_value(json_object_get(j, "state")), "frozen");
        ck_assert(json_is_false(json_object_get(j, "reboot_pending")));
        json_decref(j);

        /* a second try from frozen still fails the same way, without moving */
        ck_assert_int_eq(b->ops->reboot(b), -EINVAL);
        ck_assert_int_eq(state(b), LUO_STATE_FROZEN);
        ck_assert_int_eq(pending(b), 0);

        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), 0);
        ck_assert_int_eq(drain(b), LUO_STATE_NORMAL);
        backend_free(b);

        b = sim();
        info(b, &after);
        ck_assert_str_eq(before.boot_id, after.boot_id);
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        backend_free(b);
}
END_TEST

START_TEST(test_reboot_from_frozen_with_image)
{
        struct backend *b = sim();

        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(b->ops->reboot(b), -EINVAL);
        ck_assert_int_eq(state(b), LUO_STATE_FROZEN);
        /* stage late, retry: the frozen machine goes down and comes back updated */
        stage(b);
        ck_assert_int_eq(b->ops->reboot(b), 0);
        backend_free(b);
        b = sim();
        ck_assert_int_eq(state(b), LUO_STATE_UPDATED);
        backend_free(b);
}
END_TEST

/* A bzImage-like file in tmpdir whose setup header names version; opened read-only. */
static int bzimage_fd(const char *name, const char *version)
{
        char path[PATH_MAX + 32];
        uint8_t img[0x600] = { 0 };
        _cleanup_close_ int fd = -1;
        int rfd;

        memcpy(img + 0x202, "HdrS", 4);
        img[0x20E] = 0x00; /* le16 0x100: the string at 0x100 + 0x200 */
        img[0x20F] = 0x01;
        ck_assert_int_lt(strlen(version), sizeof(img) - 0x300);
        memcpy(img + 0x300, version, strlen(version) + 1);
        ck_assert_int_lt(snprintf(path, sizeof(path), "%s/%s", tmpdir, name), (int)sizeof(path));
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write_all(fd, img, sizeof(img)), 0);
        rfd = open(path, O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(rfd, 0);
        return rfd;
}

/* Stage an image naming 6.99.1-next, prepare, reboot, reopen: the new boot. */
static struct backend *kexec_into_next(struct backend *b)
{
        _cleanup_close_ int k = bzimage_fd("vmlinuz-next", "6.99.1-next (ci@build) #7 SMP");

        ck_assert_int_eq(b->ops->kexec_load(b, k, -1, ""), 0);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(b->ops->reboot(b), 0);
        backend_free(b);
        b = sim();
        ck_assert_int_eq(state(b), LUO_STATE_UPDATED);
        return b;
}

START_TEST(test_boot_release_from_image)
{
        struct backend_info bi;
        struct backend *b = sim();

        info(b, &bi);
        ck_assert_str_eq(bi.release, RELEASE);
        b = kexec_into_next(b);
        info(b, &bi);
        ck_assert_str_eq(bi.release, "6.99.1-next");
        backend_free(b);
}
END_TEST

START_TEST(test_boot_release_override)
{
        struct backend_info bi, bi2;
        struct backend *b;
        json_t *j;

        /* --sim-boot-release: not the machine's first boot, nor a restart without a kexec */
        cfg.sim_boot_release = "6.66.6-wrong";
        b = sim();
        info(b, &bi);
        ck_assert_str_eq(bi.release, RELEASE);
        backend_free(b);
        b = sim();
        info(b, &bi);
        ck_assert_str_eq(bi.release, RELEASE);

        /* but every boot a simulated kexec lands in, whatever the image names */
        b = kexec_into_next(b);
        info(b, &bi);
        ck_assert_str_eq(bi.release, "6.66.6-wrong");
        j = kernel_json();
        ck_assert_str_eq(json_string_value(json_object_get(j, "release")), "6.66.6-wrong");
        json_decref(j);
        backend_free(b);

        /* kept by the boot across restarts, even with the flag gone */
        cfg.sim_boot_release = NULL;
        b = sim();
        info(b, &bi2);
        ck_assert_str_eq(bi2.release, "6.66.6-wrong");
        ck_assert_str_eq(bi2.boot_id, bi.boot_id);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FINISH), 0);

        /* a plain kexec (no image release, from normal) too */
        cfg.sim_boot_release = "6.66.7-wrong";
        stage(b);
        ck_assert_int_eq(b->ops->reboot(b), 0);
        backend_free(b);
        b = sim();
        info(b, &bi);
        ck_assert_str_eq(bi.release, "6.66.7-wrong");
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        backend_free(b);
}
END_TEST

/* "IMAGE=WRONG": only a kexec into an image naming IMAGE comes up wrong. */
START_TEST(test_boot_release_override_for_one_image)
{
        struct backend_info bi;
        struct backend *b;

        cfg.sim_boot_release = "6.1.0-other=6.66.8-wrong";
        b = kexec_into_next(sim());
        info(b, &bi);
        ck_assert_str_eq(bi.release, "6.99.1-next");
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FINISH), 0);
        cfg.sim_boot_release = "6.99.1-next=6.66.8-wrong";
        b = kexec_into_next(b);
        info(b, &bi);
        ck_assert_str_eq(bi.release, "6.66.8-wrong");
        cfg.sim_boot_release = NULL;
        backend_free(b);
}
END_TEST

START_TEST(test_boot_release_invalid)
{
        struct backend *b = NULL;
        char msg[256] = "";
        char longrel[200];

        cfg.sim_boot_release = "";
        ck_assert_int_eq(sim_open(&cfg, &b, msg, sizeof(msg)), -EINVAL);
        ck_assert_ptr_null(b);
        ck_assert_ptr_nonnull(strstr(msg, "release"));
        memset(longrel, 'x', sizeof(longrel) - 1);
        longrel[sizeof(longrel) - 1] = 0;
        cfg.sim_boot_release = longrel;
        ck_assert_int_eq(sim_open(&cfg, &b, msg, sizeof(msg)), -EINVAL);
        ck_assert_ptr_null(b);
        cfg.sim_boot_release = "=6.1.0";
        ck_assert_int_eq(sim_open(&cfg, &b, msg, sizeof(msg)), -EINVAL);
        cfg.sim_boot_release = "6.1.0=";
        ck_assert_int_eq(sim_open(&cfg, &b, msg, sizeof(msg)), -EINVAL);
        ck_assert_ptr_null(b);
}
END_TEST

/*
 * A machine that stays down between the reboot call and the next open (the
 * agent's --sim-downtime): the new boot starts when it comes back, so the
 * time down is the jump's share of the blackout, not the new boot's uptime.
 */
START_TEST(test_downtime_is_not_uptime)
{
        struct backend_info before, after;
        struct backend *b = sim();
        uint64_t down, booted;
        json_t *j;

        info(b, &before);
        stage(b);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(b->ops->reboot(b), 0);
        down = now_real_usec();
        backend_free(b);
        usleep(400 * 1000);

        b = sim();
        info(b, &after);
        ck_assert_str_ne(before.boot_id, after.boot_id);
        ck_assert_uint_ge(after.uptime_ms, 1);
        ck_assert_uint_lt(after.uptime_ms, 400);
        j = kernel_json();
        booted = (uint64_t)json_integer_value(json_object_get(j, "booted_usec"));
        json_decref(j);
        ck_assert_uint_ge(booted, down + 400 * 1000);
        usleep(50 * 1000);
        info(b, &after);
        ck_assert_uint_ge(after.uptime_ms, 50); /* and it runs from there */
        backend_free(b);
}
END_TEST

START_TEST(test_kexec_load_unload)
{
        _cleanup_close_ int empty = -1, k = -1;
        char longline[3000];
        struct backend *b = sim();
        json_t *j, *kx;

        empty = content_fd("empty", "");
        k = content_fd("vmlinuz", "hello");
        ck_assert_int_eq(b->ops->kexec_load(b, empty, -1, ""), -ENOEXEC);
        ck_assert_int_eq(b->ops->kexec_load(b, -1, -1, ""), -EBADF);
        memset(longline, 'x', sizeof(longline) - 1);
        longline[sizeof(longline) - 1] = 0;
        ck_assert_int_eq(b->ops->kexec_load(b, k, -1, longline), -EINVAL);
        ck_assert(!loaded(b));

        ck_assert_int_eq(b->ops->kexec_load(b, k, -1, NULL), 0);
        ck_assert(loaded(b));
        j = kernel_json();
        kx = json_object_get(j, "kexec");
        ck_assert_str_eq(json_string_value(json_object_get(kx, "kernel_sha256")), SHA_HELLO);
        ck_assert(json_is_null(json_object_get(kx, "initrd_sha256")));
        ck_assert_str_eq(json_string_value(json_object_get(kx, "cmdline")), "");
        json_decref(j);
        backend_free(b);

        b = sim(); /* staging survives an agent restart */
        ck_assert(loaded(b));
        ck_assert_int_eq(b->ops->kexec_unload(b), 0);
        ck_assert(!loaded(b));
        ck_assert_int_eq(b->ops->kexec_unload(b), 0);
        j = kernel_json();
        ck_assert(json_is_null(json_object_get(j, "kexec")));
        json_decref(j);
        ck_assert_int_eq(b->ops->reboot(b), -EINVAL);
        backend_free(b);
}
END_TEST

START_TEST(test_faults_cfg)
{
        _cleanup_close_ int k = -1;
        struct backend *b;

        /* prepare fails in a subsystem: the state stays normal, nothing notified */
        ck_assert_int_eq(backend_config_add_fault(&cfg, "prepare=EIO"), 0);
        b = sim();
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), -EIO);
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        ck_assert_int_eq(pending(b), 0);
        /* an invalid event is still EINVAL, fault or not */
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), -EINVAL);
        backend_free(b);

        memset(cfg.faults, 0, sizeof(cfg.faults));
        ck_assert_int_eq(backend_config_add_fault(&cfg, "cancel=EBUSY"), 0);
        ck_assert_int_eq(backend_config_add_fault(&cfg, "kexec-load=EKEYREJECTED"), 0);
        b = sim();
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), -EBUSY);
        ck_assert_int_eq(state(b), LUO_STATE_PREPARED);
        k = content_fd("vmlinuz", "hello");
        ck_assert_int_eq(b->ops->kexec_load(b, k, -1, ""), -EKEYREJECTED);
        ck_assert(!loaded(b));
        backend_free(b);
}
END_TEST

START_TEST(test_fault_freeze)
{
        struct backend *b;
        json_t *j;

        ck_assert_int_eq(backend_config_add_fault(&cfg, "freeze=EIO"), 0);
        b = sim();
        stage(b);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(drain(b), LUO_STATE_PREPARED);
        /* a freeze callback fails: back to normal, reboot returns the error, no kexec */
        ck_assert_int_eq(b->ops->reboot(b), -EIO);
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);
        ck_assert_int_eq(pending(b), POLLIN);
        ck_assert_int_eq(drain(b), LUO_STATE_NORMAL);
        j = kernel_json();
        ck_assert_str_eq(json_string_value(json_object_get(j, "state")), "normal");
        ck_assert(json_is_false(json_object_get(j, "reboot_pending")));
        json_decref(j);
        /* from normal there is nothing to freeze: a plain kexec goes through */
        ck_assert_int_eq(b->ops->reboot(b), 0);
        backend_free(b);
}
END_TEST

START_TEST(test_fault_reboot)
{
        struct backend *b;

        ck_assert_int_eq(backend_config_add_fault(&cfg, "reboot=EPERM"), 0);
        b = sim();
        stage(b);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(drain(b), LUO_STATE_PREPARED);
        ck_assert_int_eq(b->ops->reboot(b), -EPERM);
        ck_assert_int_eq(state(b), LUO_STATE_PREPARED); /* failed before anything moved */
        ck_assert_int_eq(pending(b), 0);
        backend_free(b);
}
END_TEST

START_TEST(test_fault_delay)
{
        struct backend *b;
        uint64_t t;

        ck_assert_int_eq(backend_config_add_fault(&cfg, "prepare=150ms"), 0);
        ck_assert_int_eq(backend_config_add_fault(&cfg, "cancel=EAGAIN:100ms"), 0);
        b = sim();
        t = now_mono_usec();
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_uint_ge(elapsed_ms_since(t), 150);
        ck_assert_int_eq(state(b), LUO_STATE_PREPARED);
        t = now_mono_usec();
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), -EAGAIN);
        ck_assert_uint_ge(elapsed_ms_since(t), 100);
        ck_assert_int_eq(state(b), LUO_STATE_PREPARED);
        /* an event the state machine refuses is answered at once */
        t = now_mono_usec();
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), -EINVAL);
        ck_assert_uint_lt(elapsed_ms_since(t), 100);
        backend_free(b);
}
END_TEST

START_TEST(test_faults_runtime_file)
{
        struct backend *b;
        uint64_t t;

        ck_assert_int_eq(backend_config_add_fault(&cfg, "finish=EIO"), 0);
        b = sim();

        write_sim_file("faults", "# injected by the test\n\nprepare=ENOMEM\n");
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), -ENOMEM);
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);

        /* changed at run time, no restart; comments after a spec, blanks around it */
        write_sim_file("faults", "  prepare=120ms   # slow prepare\n");
        t = now_mono_usec();
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_uint_ge(elapsed_ms_since(t), 120);
        ck_assert_int_eq(drain(b), LUO_STATE_PREPARED);

        /* freeze through the file: reboot from prepared fails back to normal */
        write_sim_file("faults", "freeze=ECANCELED\n");
        stage(b);
        ck_assert_int_eq(b->ops->reboot(b), -ECANCELED);
        ck_assert_int_eq(drain(b), LUO_STATE_NORMAL);

        /* a malformed file fails the operation rather than being ignored */
        write_sim_file("faults", "prepare=EWHATEVER\n");
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), -EBADMSG);
        ck_assert_int_eq(state(b), LUO_STATE_NORMAL);

        /* a missing file means no runtime faults */
        remove_sim_file("faults");
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), 0);
        backend_free(b);
}
END_TEST

START_TEST(test_faults_runtime_overrides_cfg)
{
        struct backend *b;

        ck_assert_int_eq(backend_config_add_fault(&cfg, "prepare=EIO"), 0);
        ck_assert_int_eq(backend_config_add_fault(&cfg, "cancel=EIO"), 0);
        b = sim();
        write_sim_file("faults", "prepare=0ms\n"); /* names prepare: overrides cfg's EIO */
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), -EIO); /* not named: cfg */
        remove_sim_file("faults");
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), -EIO);
        ck_assert_int_eq(state(b), LUO_STATE_PREPARED);
        backend_free(b);
}
END_TEST

START_TEST(test_fault_spec_parser)
{
        struct backend_config c = {};

        ck_assert_int_eq(backend_config_add_fault(&c, "prepare=EIO"), 0);
        ck_assert_int_eq(c.faults[SIM_FAULT_PREPARE].error, EIO);
        ck_assert_uint_eq(c.faults[SIM_FAULT_PREPARE].delay_ms, 0);
        ck_assert_int_eq(backend_config_add_fault(&c, "freeze=5"), 0);
        ck_assert_int_eq(c.faults[SIM_FAULT_FREEZE].error, 5);
        ck_assert_int_eq(backend_config_add_fault(&c, "finish=EBUSY:250ms"), 0);
        ck_assert_int_eq(c.faults[SIM_FAULT_FINISH].error, EBUSY);
        ck_assert_uint_eq(c.faults[SIM_FAULT_FINISH].delay_ms, 250);
        ck_assert_int_eq(backend_config_add_fault(&c, "cancel=2s"), 0);
        ck_assert_int_eq(c.faults[SIM_FAULT_CANCEL].error, 0);
        ck_assert_uint_eq(c.faults[SIM_FAULT_CANCEL].delay_ms, 2000);
        ck_assert_int_eq(backend_config_add_fault(&c, "reboot=1m"), 0);
        ck_assert_uint_eq(c.faults[SIM_FAULT_REBOOT].delay_ms, 60000);
        ck_assert_int_eq(backend_config_add_fault(&c, "kexec-load=EPERM:0ms"), 0);
        ck_assert_int_eq(c.faults[SIM_FAULT_KEXEC_LOAD].error, EPERM);
        ck_assert_uint_eq(c.faults[SIM_FAULT_KEXEC_LOAD].delay_ms, 0);
        /* the same op again replaces, it does not merge */
        ck_assert_int_eq(backend_config_add_fault(&c, "prepare=300ms"), 0);
        ck_assert_int_eq(c.faults[SIM_FAULT_PREPARE].error, 0);
        ck_assert_uint_eq(c.faults[SIM_FAULT_PREPARE].delay_ms, 300);

        struct backend_config before = c;
        static const char *const bad[] = {
                "",
                "prepare",
                "prepare=",
                "=EIO",
                "preparex=EIO",
                "PREPARE=EIO",
                "kexec_load=EIO",
                "prepare=EFOO",
                "prepare=eio",
                "prepare=0",
                "prepare=4096",
                "prepare=-5",
                "prepare=EIO:",
                "prepare=EIO:250",
                "prepare=:250ms",
                "prepare=EIO:250ms:1",
                "prepare=EIO:EBUSY",
                "prepare=250h",
                "prepare=11m",
                "prepare=EIO ",
                " prepare=EIO",
                "prepare =EIO",
                "prepare=18446744073709551616ms",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                ck_assert_msg(backend_config_add_fault(&c, bad[i]) == -EINVAL, "accepted \"%s\"",
                              bad[i]);
        ck_assert_mem_eq(&c, &before, sizeof(c)); /* untouched on failure */
        ck_assert_int_eq(backend_config_add_fault(NULL, "prepare=EIO"), -EINVAL);
        ck_assert_int_eq(backend_config_add_fault(&c, NULL), -EINVAL);
}
END_TEST

START_TEST(test_kind_strings)
{
        ck_assert_str_eq(backend_kind_to_string(BACKEND_LUO_V3), "luo-v3");
        ck_assert_str_eq(backend_kind_to_string(BACKEND_SIM), "sim");
        ck_assert_str_eq(backend_kind_to_string(BACKEND_AUTO), "auto");
        ck_assert_ptr_null(backend_kind_to_string(_BACKEND_KIND_MAX));
        for (int k = 0; k < _BACKEND_KIND_MAX; k++)
                ck_assert_int_eq(backend_kind_from_string(backend_kind_to_string(k)), k);
        ck_assert_int_eq(backend_kind_from_string("luo_v3"), -EINVAL);
        ck_assert_int_eq(backend_kind_from_string("Sim"), -EINVAL);
        ck_assert_int_eq(backend_kind_from_string(""), -EINVAL);
        ck_assert_int_eq(backend_kind_from_string(NULL), -EINVAL);
}
END_TEST

START_TEST(test_notification_poll)
{
        struct backend *b = sim();
        enum luo_state s;

        ck_assert_int_eq(pending(b), 0);
        /* watch_read with nothing pending still answers the state */
        ck_assert_int_eq(b->ops->watch_read(b, &s), 0);
        ck_assert_int_eq(s, LUO_STATE_NORMAL);

        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(pending(b), POLLIN);
        /* two changes before the reader wakes coalesce into one wake-up, one re-read */
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), 0);
        ck_assert_int_eq(pending(b), POLLIN);
        ck_assert_int_eq(drain(b), LUO_STATE_NORMAL);

        /* failures do not wake anyone */
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FINISH), -EINVAL);
        ck_assert_int_eq(pending(b), 0);
        backend_free(b);
}
END_TEST

static void corrupt_case(const char *text)
{
        struct backend *b = NULL;
        char msg[512] = "", path[PATH_MAX + 32];

        write_sim_file("kernel.json", text);
        ck_assert_int_eq(sim_open(&cfg, &b, msg, sizeof(msg)), -EBADMSG);
        ck_assert_ptr_null(b);
        path_in(path, sizeof(path), "kernel.json");
        ck_assert_msg(strstr(msg, path) != NULL, "message does not name the file: %s", msg);
}

START_TEST(test_corrupt_state)
{
        backend_free(sim()); /* creates the directory */

        corrupt_case("{not json");
        corrupt_case("");
        corrupt_case("[]");
        corrupt_case("{\"state\":\"sleeping\",\"boot_id\":\"0f3c2d1e-8a7b-4c6d-9e5f-0123456789ab\","
                     "\"release\":\"6.1\",\"kexec\":null,\"reboot_pending\":false,\"boots\":1}");
        corrupt_case("{\"state\":\"normal\",\"boot_id\":\"not-a-uuid\","
                     "\"release\":\"6.1\",\"kexec\":null,\"reboot_pending\":false,\"boots\":1}");
        corrupt_case("{\"state\":\"normal\",\"boot_id\":\"0f3c2d1e-8a7b-4c6d-9e5f-0123456789ab\","
                     "\"release\":\"6.1\",\"kexec\":null,\"boots\":1}");
        corrupt_case("{\"state\":\"normal\",\"boot_id\":\"0f3c2d1e-8a7b-4c6d-9e5f-0123456789ab\","
                     "\"release\":\"6.1\",\"kexec\":{\"kernel_sha256\":\"abc\",\"initrd_sha256\":"
                     "null,\"cmdline\":\"\",\"kernel_size\":5},\"reboot_pending\":false,"
                     "\"boots\":1}");
        corrupt_case("{\"state\":\"normal\",\"boot_id\":\"0f3c2d1e-8a7b-4c6d-9e5f-0123456789ab\","
                     "\"release\":\"6.1\",\"kexec\":null,\"reboot_pending\":false,\"boots\":0}");

        /* and a valid hand-written one is accepted as is */
        write_sim_file(
                "kernel.json",
                "{\"state\":\"updated\",\"boot_id\":\"0f3c2d1e-8a7b-4c6d-9e5f-0123456789ab\","
                "\"release\":\"6.1\",\"kexec\":null,\"reboot_pending\":false,\"boots\":7}");
        struct backend *b = sim();
        struct backend_info bi;
        ck_assert_int_eq(state(b), LUO_STATE_UPDATED);
        info(b, &bi);
        ck_assert_str_eq(bi.boot_id, "0f3c2d1e-8a7b-4c6d-9e5f-0123456789ab");
        ck_assert_str_eq(bi.release, "6.1");
        backend_free(b);
}
END_TEST

START_TEST(test_exclusive)
{
        struct backend *a = sim(), *b = NULL;
        char msg[512] = "";

        ck_assert_int_eq(sim_open(&cfg, &b, msg, sizeof(msg)), -EBUSY);
        ck_assert_ptr_null(b);
        ck_assert_ptr_nonnull(strstr(msg, "another live-update agent holds"));
        backend_free(a);
        b = sim();
        backend_free(b);
}
END_TEST

START_TEST(test_open_errors)
{
        struct backend *b = NULL;
        char msg[256] = "";

        cfg.state_dir = NULL;
        ck_assert_int_eq(sim_open(&cfg, &b, msg, sizeof(msg)), -EINVAL);
        ck_assert_str_ne(msg, "");
        ck_assert_ptr_null(b);
        ck_assert_int_eq(backend_open(NULL, &b, msg, sizeof(msg)), -EINVAL);
        ck_assert_ptr_null(backend_free(NULL));

        /* through the front door */
        cfg.state_dir = tmpdir;
        ck_assert_int_eq(backend_open(&cfg, &b, NULL, 0), 0);
        ck_assert_str_eq(b->ops->name, "sim");
        ck_assert_ptr_null(backend_free(b));
}
END_TEST

struct reader {
        struct backend *b;
        int bad;
};

static void *reader_thread(void *p)
{
        struct reader *r = p;

        for (int i = 0; i < 2000; i++) {
                enum luo_state s;
                bool l;
                struct backend_info bi;
                if (r->b->ops->get_state(r->b, &s) < 0 ||
                    (s != LUO_STATE_NORMAL && s != LUO_STATE_PREPARED))
                        r->bad++;
                if (r->b->ops->kexec_loaded(r->b, &l) < 0 || l)
                        r->bad++;
                if (r->b->ops->get_info(r->b, &bi) < 0 || !uuid_valid(bi.boot_id))
                        r->bad++;
                if (r->b->ops->watch_read(r->b, &s) < 0)
                        r->bad++;
        }
        return NULL;
}

START_TEST(test_threads)
{
        struct reader rd = { .b = sim() };
        pthread_t t;

        ck_assert_int_eq(pthread_create(&t, NULL, reader_thread, &rd), 0);
        for (int i = 0; i < 20; i++) {
                ck_assert_int_eq(rd.b->ops->set_event(rd.b, LUO_EVENT_PREPARE), 0);
                ck_assert_int_eq(rd.b->ops->set_event(rd.b, LUO_EVENT_CANCEL), 0);
        }
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        ck_assert_int_eq(rd.bad, 0);
        backend_free(rd.b);
}
END_TEST

static Suite *sim_suite(void)
{
        Suite *s = suite_create("sim");
        TCase *tc = tcase_create("core");

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_first_start);
        tcase_add_test(tc, test_release_from_uname);
        tcase_add_test(tc, test_transitions);
        tcase_add_test(tc, test_persistence);
        tcase_add_test(tc, test_reboot_to_updated);
        tcase_add_test(tc, test_reboot_plain_kexec);
        tcase_add_test(tc, test_reboot_normal_without_image);
        tcase_add_test(tc, test_reboot_prepared_without_image);
        tcase_add_test(tc, test_reboot_from_frozen_with_image);
        tcase_add_test(tc, test_boot_release_from_image);
        tcase_add_test(tc, test_boot_release_override);
        tcase_add_test(tc, test_boot_release_override_for_one_image);
        tcase_add_test(tc, test_boot_release_invalid);
        tcase_add_test(tc, test_downtime_is_not_uptime);
        tcase_add_test(tc, test_kexec_load_unload);
        tcase_add_test(tc, test_faults_cfg);
        tcase_add_test(tc, test_fault_freeze);
        tcase_add_test(tc, test_fault_reboot);
        tcase_add_test(tc, test_fault_delay);
        tcase_add_test(tc, test_faults_runtime_file);
        tcase_add_test(tc, test_faults_runtime_overrides_cfg);
        tcase_add_test(tc, test_fault_spec_parser);
        tcase_add_test(tc, test_kind_strings);
        tcase_add_test(tc, test_notification_poll);
        tcase_add_test(tc, test_corrupt_state);
        tcase_add_test(tc, test_exclusive);
        tcase_add_test(tc, test_open_errors);
        tcase_add_test(tc, test_threads);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(sim_suite)
