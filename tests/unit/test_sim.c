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
#include <dirent.h>
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
#include <sys/mman.h>
#include <sys/random.h>
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

/* ---- sessions (kernel-abi.md section B) and the marker ---- */

#define MIB (1024u * 1024u)

static int create(struct backend *b, const char *name)
{
        int h = -1;
        ck_assert_msg(b->ops->session_create(b, name, &h) == 0, "create %s", name);
        ck_assert_int_ge(h, 0);
        ck_assert(fcntl(h, F_GETFD) & FD_CLOEXEC);
        return h;
}

static int retrieve(struct backend *b, const char *name)
{
        int h = -1;
        ck_assert_msg(b->ops->session_retrieve(b, name, &h) == 0, "retrieve %s", name);
        ck_assert_int_ge(h, 0);
        ck_assert(fcntl(h, F_GETFD) & FD_CLOEXEC);
        return h;
}

static int retrieve_err(struct backend *b, const char *name)
{
        int h = -1;
        int r = b->ops->session_retrieve(b, name, &h);
        ck_assert_int_lt(r, 0);
        ck_assert_int_eq(h, -1);
        return r;
}

static int retrieve_fd(struct backend *b, int session, uint64_t token)
{
        int fd = -1;
        ck_assert_msg(b->ops->session_retrieve_fd(b, session, token, &fd) == 0, "token %llu",
                      (unsigned long long)token);
        ck_assert_int_ge(fd, 0);
        ck_assert(fcntl(fd, F_GETFD) & FD_CLOEXEC);
        return fd;
}

static int retrieve_fd_err(struct backend *b, int session, uint64_t token)
{
        int fd = -1;
        int r = b->ops->session_retrieve_fd(b, session, token, &fd);
        ck_assert_int_lt(r, 0);
        ck_assert_int_eq(fd, -1);
        return r;
}

static int plain_memfd(const char *text)
{
        int fd = memfd_create("test-sim", MFD_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write_all(fd, text, strlen(text)), 0);
        return fd;
}

/* A memfd holding size random bytes (copied to *ret_data), then sealed and positioned. */
static int random_memfd(size_t size, int seals, off_t pos, uint8_t **ret_data)
{
        uint8_t *data = malloc(size);
        int fd = memfd_create("test-sim-random", MFD_CLOEXEC | MFD_ALLOW_SEALING);

        ck_assert_ptr_nonnull(data);
        ck_assert_int_ge(fd, 0);
        for (size_t off = 0; off < size;) {
                ssize_t n = getrandom(data + off, size - off, 0);
                ck_assert_int_gt(n, 0);
                off += (size_t)n;
        }
        ck_assert_int_eq(write_all(fd, data, size), 0);
        ck_assert_int_eq(lseek(fd, pos, SEEK_SET), pos);
        if (seals)
                ck_assert_int_eq(fcntl(fd, F_ADD_SEALS, seals), 0);
        *ret_data = data;
        return fd;
}

/* fd is a memfd with exactly these bytes, seals and position. */
static void assert_memfd(int fd, const uint8_t *data, size_t size, int seals, off_t pos)
{
        _cleanup_free_ uint8_t *got = malloc(size + 1);
        struct stat st;

        ck_assert_ptr_nonnull(got);
        ck_assert_int_eq(fstat(fd, &st), 0);
        ck_assert_int_eq(st.st_size, (off_t)size);
        ck_assert_int_eq(fcntl(fd, F_GET_SEALS), seals);
        ck_assert_int_eq(lseek(fd, 0, SEEK_CUR), pos);
        ck_assert_int_eq(pread(fd, got, size + 1, 0), (ssize_t)size);
        ck_assert_msg(memcmp(got, data, size) == 0, "contents differ");
}

static void release(struct backend *b, int h)
{
        b->ops->session_release(b, h);
        /* closed by the release */
        ck_assert_int_eq(fcntl(h, F_GETFD), -1);
        ck_assert_int_eq(errno, EBADF);
}

/* The simulated kexec (live: from prepared): the machine goes down; the next open is the new boot.
 */
static struct backend *kexec(struct backend *b, bool live)
{
        stage(b);
        if (live && state(b) == LUO_STATE_NORMAL)
                ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(b->ops->reboot(b), 0);
        backend_free(b);
        b = sim();
        ck_assert_int_eq(state(b), live ? LUO_STATE_UPDATED : LUO_STATE_NORMAL);
        return b;
}

static bool sim_path_exists(const char *rel)
{
        char path[PATH_MAX + 64];
        struct stat st;

        path_in(path, sizeof(path), rel);
        return lstat(path, &st) == 0;
}

/* Entries of sim/sessions/ (0 when it does not exist). */
static int handover_entries(void)
{
        char path[PATH_MAX + 64];
        struct dirent *de;
        int n = 0;
        DIR *d;

        path_in(path, sizeof(path), "sessions");
        d = opendir(path);
        if (!d)
                return 0;
        while ((de = readdir(d)))
                n += strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0;
        closedir(d);
        return n;
}

START_TEST(test_session_names)
{
        int fds = testutil_count_fds();
        struct backend *b = sim();
        char n63[64], n64[65], desc[128];
        int a, h = -1;

        ck_assert_ptr_nonnull(b->ops->session_create);
        ck_assert_ptr_nonnull(b->ops->session_unpreserve);
        ck_assert_ptr_null(b->ops->fd_preserve); /* the broker uses sessions here */
        ck_assert_int_eq(b->ops->describe(b, desc, sizeof(desc)), 0);
        ck_assert_str_eq(desc, "sim (sessions: mainline rules; global state: v3)");
        ck_assert_int_eq(b->ops->describe(b, desc, 4), -ENOBUFS);
        ck_assert_str_eq(desc, "sim");

        memset(n63, 'n', 63);
        n63[63] = 0;
        memset(n64, 'n', 64);
        n64[64] = 0;
        ck_assert_int_eq(b->ops->session_create(b, "", &h), -EINVAL);
        ck_assert_int_eq(b->ops->session_create(b, n64, &h), -EINVAL);
        ck_assert_int_eq(b->ops->session_create(b, NULL, &h), -EINVAL);
        ck_assert_int_eq(h, -1);
        a = create(b, "vm-1");
        ck_assert_int_eq(b->ops->session_create(b, "vm-1", &h), -EEXIST);
        ck_assert_int_eq(h, -1);
        int big = create(b, n63);
        int other = create(b, "lf:1000:vm-1");
        release(b, a);
        a = create(b, "vm-1"); /* the name is free again after the release */
        release(b, a);
        release(b, big);
        release(b, other);
        /* retrieve: names checked alike; nothing incoming on a first boot */
        ck_assert_int_eq(retrieve_err(b, ""), -EINVAL);
        ck_assert_int_eq(retrieve_err(b, n64), -EINVAL);
        ck_assert_int_eq(retrieve_err(b, "vm-1"), -ENOENT);
        void *blob = NULL;
        size_t len = 0;
        ck_assert_int_eq(b->ops->marker_read(b, &blob, &len), -ENOENT);
        backend_free(b);
        ck_assert_int_eq(testutil_count_fds(), fds);
}
END_TEST

START_TEST(test_session_preserve_errors)
{
        int fds = testutil_count_fds();
        struct backend *b = sim();
        _cleanup_close_ int m1 = plain_memfd("one"), m2 = plain_memfd("two"), nul = -1, reg = -1,
                            tmpf = -1;
        int p[2], s1, s2, closed;

        s1 = create(b, "neg-1");
        s2 = create(b, "neg-2");
        ck_assert_int_eq(b->ops->session_preserve(b, s1, m1, 1), 0);
        ck_assert_int_eq(b->ops->session_preserve(b, s1, m1, 2), -EBUSY);  /* same file */
        ck_assert_int_eq(b->ops->session_preserve(b, s1, m2, 1), -EEXIST); /* same token */
        ck_assert_int_eq(b->ops->session_preserve(b, s2, m1, 1), -EBUSY);  /* in another session */
        ck_assert_int_eq(b->ops->session_preserve(b, s1, -1, 3), -EBADF);
        closed = 100000; /* far above anything open */
        ck_assert_int_eq(fcntl(closed, F_GETFD), -1);
        ck_assert_int_eq(b->ops->session_preserve(b, s1, closed, 3), -EBADF);
        ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
        ck_assert_int_eq(b->ops->session_preserve(b, s1, p[0], 4), -ENOENT);
        close(p[0]);
        close(p[1]);
        nul = open("/dev/null", O_RDWR | O_CLOEXEC);
        ck_assert_int_ge(nul, 0);
        ck_assert_int_eq(b->ops->session_preserve(b, s1, nul, 5), -ENOENT);
        ck_assert_int_eq(b->ops->session_preserve(b, s1, s1, 6), -ENOENT); /* a session fd */
        ck_assert_int_eq(b->ops->session_preserve(b, s1, s2, 6), -ENOENT);
        reg = content_fd("regular", "not a memfd");
        ck_assert_int_eq(b->ops->session_preserve(b, s1, reg, 7), -ENOENT);
        /* an unlinked tmpfs file that is not in tmpfs's internal mount: only if /dev/shm is tmpfs
         */
        tmpf = open("/dev/shm", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        if (tmpf >= 0) {
                /* shmem and unlinked: what mainline's memfd handler takes too */
                int r = b->ops->session_preserve(b, s1, tmpf, 8);
                ck_assert_msg(r == 0 || r == -ENOENT, "O_TMPFILE: %d", r);
        }
        /* hugetlb memfds are refused (when this machine can make one) */
        int huge = memfd_create("test-huge", MFD_CLOEXEC | MFD_HUGETLB);
        if (huge >= 0) {
                ck_assert_int_eq(b->ops->session_preserve(b, s1, huge, 9), -ENOENT);
                close(huge);
        }
        /* a memfd created without sealing, one with seals: both fine */
        ck_assert_int_eq(b->ops->session_preserve(b, s2, m2, 1), 0);

        /* not a session: a memfd, a closed number */
        ck_assert_int_eq(b->ops->session_preserve(b, m2, m1, 10), -EINVAL);
        ck_assert_int_eq(b->ops->session_preserve(b, closed, m1, 10), -EBADF);
        /* the incoming-only calls on an outgoing session */
        ck_assert_int_eq(retrieve_fd_err(b, s1, 1), -EINVAL);
        ck_assert_int_eq(b->ops->session_finish(b, s1), -EINVAL);
        ck_assert_int_eq(b->ops->session_finish(b, m1), -EINVAL);

        release(b, s1);
        release(b, s2);
        /* released: the files are free to go elsewhere */
        s1 = create(b, "neg-3");
        ck_assert_int_eq(b->ops->session_preserve(b, s1, m1, 1), 0);
        ck_assert_int_eq(b->ops->session_preserve(b, s1, m2, 2), 0);
        release(b, s1);
        backend_free(b);
        close(TAKE_FD(m1));
        close(TAKE_FD(m2));
        close(TAKE_FD(nul));
        close(TAKE_FD(reg));
        if (tmpf >= 0)
                close(TAKE_FD(tmpf));
        ck_assert_int_eq(testutil_count_fds(), fds);
}
END_TEST

START_TEST(test_session_unpreserve)
{
        struct backend *b = sim();
        _cleanup_close_ int m1 = plain_memfd("one"), m2 = plain_memfd("two");
        int s1 = create(b, "a"), s2 = create(b, "b");

        ck_assert_int_eq(b->ops->session_preserve(b, s1, m1, 7), 0);
        ck_assert_int_eq(b->ops->session_unpreserve(b, s1, 8), -ENOENT);
        ck_assert_int_eq(b->ops->session_unpreserve(b, s2, 7),
                         -ENOENT); /* tokens are per session */
        ck_assert_int_eq(b->ops->session_unpreserve(b, s1, 7), 0);
        ck_assert_int_eq(b->ops->session_unpreserve(b, s1, 7), -ENOENT);
        /* the token and the file are free again */
        ck_assert_int_eq(b->ops->session_preserve(b, s2, m1, 7), 0);
        ck_assert_int_eq(b->ops->session_preserve(b, s1, m2, 7), 0);
        ck_assert_int_eq(b->ops->session_unpreserve(b, m1, 7), -EINVAL);

        /* unpreserved and released sessions carry nothing through a kexec */
        ck_assert_int_eq(b->ops->session_unpreserve(b, s1, 7), 0);
        int s3 = create(b, "c");
        ck_assert_int_eq(b->ops->session_preserve(b, s3, m2, 1), 0);
        release(b, s3);
        b = kexec(b, true);
        ck_assert_int_eq(retrieve_err(b, "a"), -ENOENT); /* empty: not handed over */
        ck_assert_int_eq(retrieve_err(b, "c"), -ENOENT); /* released */
        int h = retrieve(b, "b");
        int fd = retrieve_fd(b, h, 7);
        assert_memfd(fd, (const uint8_t *)"one", 3, F_SEAL_SEAL, 3);
        close(fd);
        ck_assert_int_eq(b->ops->session_unpreserve(b, h, 7), -EINVAL); /* incoming */
        release(b, h);
        backend_free(b);
        /* the previous boot's handles: plain descriptors now (the process would be gone) */
        close(s1);
        close(s2);
}
END_TEST

START_TEST(test_session_kexec)
{
        int fds = testutil_count_fds();
        static const int sealed = F_SEAL_SHRINK | F_SEAL_GROW;
        struct backend *b = sim();
        uint8_t *d[4];
        int m[4], ha, hb, hc, hx;
        struct stat st1, st2;
        char path[PATH_MAX + 64];
        json_t *j;

        m[0] = random_memfd(MIB, 0, 0, &d[0]);
        m[1] = random_memfd(MIB, sealed, 12345, &d[1]);
        m[2] = random_memfd(MIB, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE, MIB, &d[2]);
        m[3] = random_memfd(MIB + 7, F_SEAL_SEAL | F_SEAL_GROW, 1, &d[3]);
        ha = create(b, "lf:1000:vm-a");
        hb = create(b, "lf:1000:vm-b");
        hc = create(b, "empty"); /* no files: nothing to hand over */
        ck_assert_int_eq(b->ops->session_preserve(b, ha, m[0], 1), 0);
        ck_assert_int_eq(b->ops->session_preserve(b, ha, m[1], UINT64_MAX), 0);
        ck_assert_int_eq(b->ops->session_preserve(b, hb, m[2], 1), 0);
        ck_assert_int_eq(b->ops->session_preserve(b, hb, m[3], 0x4c46000000000000ull), 0);
        /* writes after the preserve reach the next boot; the workload's fds may go */
        memcpy(d[0] + 4096, "late write", 10);
        ck_assert_int_eq(pwrite(m[0], "late write", 10, 4096), 10);
        for (int i = 0; i < 4; i++)
                close(m[i]);

        stage(b);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(b->ops->marker_write(b, "marker", 6), 0);
        ck_assert_int_eq(b->ops->reboot(b), 0);
        /* the machine is going down: no more changes */
        ck_assert_int_eq(b->ops->session_create(b, "late", &hx), -EBUSY);
        ck_assert_int_eq(b->ops->marker_write(b, "x", 1), -EINVAL);
        release(b, ha);
        release(b, hb);
        release(b, hc);
        backend_free(b);

        b = sim();
        ck_assert_int_eq(state(b), LUO_STATE_UPDATED);
        j = kernel_json();
        ck_assert(json_is_string(json_object_get(j, "handover")));
        json_decref(j);
        ck_assert_int_eq(retrieve_err(b, "never-created"), -ENOENT);
        ck_assert_int_eq(retrieve_err(b, "empty"), -ENOENT);
        ha = retrieve(b, "lf:1000:vm-a");
        ck_assert_int_eq(retrieve_err(b, "lf:1000:vm-a"), -EINVAL);
        /* an outgoing session may take the name of an incoming one */
        hx = create(b, "lf:1000:vm-a");
        ck_assert_int_eq(retrieve_fd_err(b, hx, 1), -EINVAL);
        release(b, hx);

        ck_assert_int_eq(retrieve_fd_err(b, ha, 2), -ENOENT);
        int f0 = retrieve_fd(b, ha, 1);
        assert_memfd(f0, d[0], MIB, 0, 0);
        int f1 = retrieve_fd(b, ha, UINT64_MAX);
        assert_memfd(f1, d[1], MIB, sealed, 12345);
        ck_assert_int_eq(ftruncate(f1, 2 * MIB), -1); /* the seals hold */
        ck_assert_int_eq(errno, EPERM);
        /* the same token again: the same file */
        int f1b = retrieve_fd(b, ha, UINT64_MAX);
        ck_assert_int_eq(fstat(f1, &st1), 0);
        ck_assert_int_eq(fstat(f1b, &st2), 0);
        ck_assert(st1.st_ino == st2.st_ino && st1.st_dev == st2.st_dev);
        assert_memfd(f1b, d[1], MIB, sealed, 12345);
        ck_assert_int_eq(pwrite(f0, "x", 1, 0), 1); /* a plain memfd, writable */
        ck_assert_int_eq(b->ops->session_preserve(b, ha, f0, 9), -EINVAL); /* incoming */

        ck_assert_int_eq(b->ops->session_finish(b, ha), 0);
        ck_assert_int_eq(b->ops->session_finish(b, ha), 0); /* a no-op */
        ck_assert_int_eq(retrieve_fd_err(b, ha, 1), -ENOENT);
        ck_assert_int_eq(retrieve_err(b, "lf:1000:vm-a"), -EINVAL); /* finished, not closed */
        ck_assert_int_eq(pread(f1, path, 1, 0), 1); /* what was retrieved stays usable */
        release(b, ha);
        ck_assert_int_eq(retrieve_err(b, "lf:1000:vm-a"), -ENOENT);

        hb = retrieve(b, "lf:1000:vm-b");
        int f2 = retrieve_fd(b, hb, 1);
        int f3 = retrieve_fd(b, hb, 0x4c46000000000000ull);
        assert_memfd(f2, d[2], MIB, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE, MIB);
        assert_memfd(f3, d[3], MIB + 7, F_SEAL_SEAL | F_SEAL_GROW, 1);
        /* a retrieved file may be preserved again for the next update */
        hx = create(b, "lf:1000:vm-b");
        ck_assert_int_eq(b->ops->session_preserve(b, hx, f2, 1), 0);
        release(b, hx);
        release(b, hb); /* an implicit finish */
        ck_assert_int_eq(retrieve_err(b, "lf:1000:vm-b"), -ENOENT);

        void *blob = NULL;
        size_t len = 0;
        ck_assert_int_eq(b->ops->marker_read(b, &blob, &len), 0);
        ck_assert_uint_eq(len, 6);
        ck_assert_mem_eq(blob, "marker", 6);
        free(blob);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FINISH), 0);
        ck_assert_int_eq(b->ops->marker_read(b, &blob, &len), -ENOENT);
        ck_assert_int_eq(handover_entries(), 0); /* all consumed */
        j = kernel_json();
        ck_assert_ptr_null(json_object_get(j, "handover"));
        json_decref(j);

        close(f0);
        close(f1);
        close(f1b);
        close(f2);
        close(f3);
        for (int i = 0; i < 4; i++)
                free(d[i]);
        backend_free(b);
        ck_assert_int_eq(testutil_count_fds(), fds);
}
END_TEST

/* The agent restarts within the boot (kill -9 and a new open): what it finds. */
START_TEST(test_session_agent_restart)
{
        int fds = testutil_count_fds();
        struct backend *b = sim();
        static const char *const names[] = { "done", "held", "waiting" };
        void *blob = NULL;
        size_t len = 0;
        int h[3];

        for (int i = 0; i < 3; i++) {
                _cleanup_close_ int m = plain_memfd(names[i]);
                h[i] = create(b, names[i]);
                ck_assert_int_eq(b->ops->session_preserve(b, h[i], m, 1), 0);
        }
        stage(b);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(b->ops->marker_write(b, "{\"version\":1}", 13), 0);
        ck_assert_int_eq(b->ops->reboot(b), 0);
        backend_free(b); /* the process dies holding the handles */
        for (int i = 0; i < 3; i++)
                close(h[i]);

        b = sim();
        h[0] = retrieve(b, "done");
        ck_assert_int_eq(b->ops->session_finish(b, h[0]), 0);
        release(b, h[0]);
        h[1] = retrieve(b, "held"); /* retrieved, not finished, when the agent dies */
        int f = retrieve_fd(b, h[1], 1);
        close(f);
        backend_free(b);
        close(h[1]);

        /* the same boot: the session never retrieved is still offered, and the marker */
        b = sim();
        ck_assert_int_eq(state(b), LUO_STATE_UPDATED);
        ck_assert_int_eq(retrieve_err(b, "done"), -ENOENT);
        /* the kernel finishes a retrieved session when its holder's fd closes */
        ck_assert_int_eq(retrieve_err(b, "held"), -ENOENT);
        h[2] = retrieve(b, "waiting");
        f = retrieve_fd(b, h[2], 1);
        assert_memfd(f, (const uint8_t *)"waiting", 7, F_SEAL_SEAL, 7);
        close(f);
        ck_assert_int_eq(b->ops->marker_read(b, &blob, &len), 0);
        ck_assert_uint_eq(len, 13);
        free(blob);
        /* and once more, before anything finished it */
        backend_free(b);
        close(h[2]);
        b = sim();
        ck_assert_int_eq(retrieve_err(b, "waiting"), -ENOENT); /* retrieved by the dead one */
        ck_assert_int_eq(b->ops->marker_read(b, &blob, &len), 0);
        free(blob);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FINISH), 0);
        ck_assert_int_eq(b->ops->marker_read(b, &blob, &len), -ENOENT);
        ck_assert_int_eq(handover_entries(), 0);
        backend_free(b);
        ck_assert_int_eq(testutil_count_fds(), fds);
}
END_TEST

/* The FINISH event frees what was not retrieved; what was lives on until its own finish. */
START_TEST(test_session_finish_event)
{
        struct backend *b = sim();
        _cleanup_close_ int m1 = plain_memfd("kept"), m2 = plain_memfd("dropped");
        int h1 = create(b, "kept"), h2 = create(b, "dropped");
        void *blob = NULL;
        size_t len = 0;

        ck_assert_int_eq(b->ops->session_preserve(b, h1, m1, 1), 0);
        ck_assert_int_eq(b->ops->session_preserve(b, h2, m2, 1), 0);
        b = kexec(b, true);
        close(h1);
        close(h2);
        ck_assert_int_eq(b->ops->marker_read(b, &blob, &len), -ENOENT); /* none written */
        h1 = retrieve(b, "kept");
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FINISH), 0);
        ck_assert_int_eq(retrieve_err(b, "dropped"), -ENOENT);
        ck_assert_int_eq(handover_entries(), 1); /* "kept" still has its files */
        int f = retrieve_fd(b, h1, 1);
        assert_memfd(f, (const uint8_t *)"kept", 4, F_SEAL_SEAL, 4);
        close(f);
        backend_free(b);
        close(h1);

        /* a restart after the FINISH event offers nothing, and clears what was left */
        b = sim();
        ck_assert_int_eq(retrieve_err(b, "kept"), -ENOENT);
        ck_assert_int_eq(retrieve_err(b, "dropped"), -ENOENT);
        ck_assert_int_eq(handover_entries(), 0);
        backend_free(b);
}
END_TEST

/* A plain kexec (from normal) hands the sessions over too (mainline); no marker, state normal. */
START_TEST(test_session_plain_kexec)
{
        struct backend *b = sim();
        _cleanup_close_ int m = plain_memfd("plain");
        void *blob = NULL;
        size_t len = 0;
        int h = create(b, "plain");

        ck_assert_int_eq(b->ops->session_preserve(b, h, m, 5), 0);
        b = kexec(b, false);
        close(h);
        ck_assert_int_eq(b->ops->marker_read(b, &blob, &len), -ENOENT);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FINISH), -EINVAL); /* normal */
        backend_free(b);
        b = sim(); /* an agent restart: still there */
        h = retrieve(b, "plain");
        int f = retrieve_fd(b, h, 5);
        assert_memfd(f, (const uint8_t *)"plain", 5, F_SEAL_SEAL, 5);
        close(f);
        ck_assert_int_eq(b->ops->session_finish(b, h), 0);
        ck_assert_int_eq(handover_entries(), 0);
        release(b, h);
        backend_free(b);
}
END_TEST

/* Incoming sessions last one boot: the next kexec hands over only the outgoing ones. */
START_TEST(test_session_two_kexecs)
{
        struct backend *b = sim();
        _cleanup_close_ int m = plain_memfd("first");
        int h = create(b, "first");

        ck_assert_int_eq(b->ops->session_preserve(b, h, m, 1), 0);
        b = kexec(b, true);
        close(h);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FINISH), 0);
        h = create(b, "second");
        ck_assert_int_eq(b->ops->session_preserve(b, h, m, 1), 0);
        b = kexec(b, false);
        close(h);
        ck_assert_int_eq(retrieve_err(b, "first"), -ENOENT);
        h = retrieve(b, "second");
        release(b, h);
        ck_assert_int_eq(handover_entries(), 0);
        backend_free(b);
}
END_TEST

START_TEST(test_marker)
{
        struct backend *b = sim();
        _cleanup_free_ char *big = malloc(BACKEND_MARKER_MAX + 1);
        void *blob = NULL;
        size_t len = 0;

        ck_assert_ptr_nonnull(big);
        ck_assert_int_eq(b->ops->marker_write(b, "x", 1), -EINVAL); /* normal */
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(b->ops->marker_write(b, big, BACKEND_MARKER_MAX + 1), -EFBIG);
        ck_assert_int_eq(b->ops->marker_write(b, "first", 5), 0);
        /* cancelled: the marker goes with the live update */
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), 0);
        ck_assert_int_eq(b->ops->marker_write(b, "x", 1), -EINVAL);
        b = kexec(b, true);
        ck_assert_int_eq(b->ops->marker_read(b, &blob, &len), -ENOENT);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FINISH), 0);

        /* the largest marker, rewritten: the last write goes */
        for (size_t i = 0; i < BACKEND_MARKER_MAX; i++)
                big[i] = (char)(i * 7);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(b->ops->marker_write(b, "small", 5), 0);
        ck_assert_int_eq(b->ops->marker_write(b, big, BACKEND_MARKER_MAX), 0);
        ck_assert_int_eq(b->ops->marker_read(b, &blob, &len), -ENOENT); /* this boot's: not yet */
        ck_assert(!sim_path_exists("sessions")); /* in memory until the kexec */
        b = kexec(b, true);
        ck_assert_int_eq(b->ops->marker_read(b, &blob, &len), 0);
        ck_assert_uint_eq(len, BACKEND_MARKER_MAX);
        ck_assert_mem_eq(blob, big, BACKEND_MARKER_MAX);
        free(blob);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_FINISH), 0);
        ck_assert_int_eq(b->ops->marker_read(b, &blob, &len), -ENOENT);
        ck_assert_int_eq(handover_entries(), 0);

        /* a freeze that fails drops it too (back to normal) */
        write_sim_file("faults", "freeze=EIO\n");
        stage(b);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(b->ops->marker_write(b, "gone", 4), 0);
        ck_assert_int_eq(b->ops->reboot(b), -EIO);
        remove_sim_file("faults");
        ck_assert_int_eq(b->ops->reboot(b), 0); /* a plain kexec now */
        backend_free(b);
        b = sim();
        ck_assert_int_eq(b->ops->marker_read(b, &blob, &len), -ENOENT);
        backend_free(b);
}
END_TEST

/* What a crash in the middle of a handover, or of a failed reboot, leaves: the old set. */
START_TEST(test_handover_leftovers)
{
        struct backend *b = sim();
        _cleanup_close_ int m = plain_memfd("data");
        struct backend_info bi;
        char rel[128], path[PATH_MAX + 64];
        int h = create(b, "s");

        ck_assert_int_eq(b->ops->session_preserve(b, h, m, 1), 0);
        b = kexec(b, true);
        close(h);
        info(b, &bi);
        backend_free(b);
        /* a reboot of this boot that crashed while copying, and one that crashed after the
         * rename but before reboot_pending: neither happened */
        ck_assert_int_lt(snprintf(rel, sizeof(rel), "sessions/.tmp-%s", bi.boot_id),
                         (int)sizeof(rel));
        path_in(path, sizeof(path), rel);
        ck_assert_int_eq(mkdir(path, 0700), 0);
        ck_assert_int_lt(snprintf(rel, sizeof(rel), "sessions/%s", bi.boot_id), (int)sizeof(rel));
        path_in(path, sizeof(path), rel);
        ck_assert_int_eq(mkdir(path, 0700), 0);
        ck_assert_int_lt(snprintf(rel, sizeof(rel), "sessions/%s/junk", bi.boot_id),
                         (int)sizeof(rel));
        write_sim_file(rel, "junk");
        ck_assert_int_eq(handover_entries(), 3);
        b = sim();
        ck_assert_int_eq(handover_entries(), 1);
        h = retrieve(b, "s");
        int f = retrieve_fd(b, h, 1);
        assert_memfd(f, (const uint8_t *)"data", 4, F_SEAL_SEAL, 4);
        close(f);
        release(b, h);
        backend_free(b);
}
END_TEST

/* A handover that cannot be written fails the reboot call; the state stays (frozen). */
START_TEST(test_handover_write_fails)
{
        struct backend *b = sim();
        _cleanup_close_ int m = plain_memfd("data");
        int h = create(b, "s");
        json_t *j;

        ck_assert_int_eq(b->ops->session_preserve(b, h, m, 1), 0);
        write_sim_file("sessions", "a file where the directory goes\n");
        stage(b);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        ck_assert_int_eq(b->ops->marker_write(b, "m", 1), 0);
        ck_assert_int_eq(b->ops->reboot(b), -ENOTDIR);
        ck_assert_int_eq(state(b), LUO_STATE_FROZEN);
        j = kernel_json();
        ck_assert(json_is_false(json_object_get(j, "reboot_pending")));
        json_decref(j);
        /* once it can be written, the retry goes through */
        remove_sim_file("sessions");
        ck_assert_int_eq(b->ops->reboot(b), 0);
        release(b, h);
        backend_free(b);
        b = sim();
        ck_assert_int_eq(state(b), LUO_STATE_UPDATED);
        h = retrieve(b, "s");
        release(b, h);
        void *blob = NULL;
        size_t len = 0;
        ck_assert_int_eq(b->ops->marker_read(b, &blob, &len), 0);
        ck_assert_uint_eq(len, 1);
        free(blob);
        backend_free(b);
}
END_TEST

START_TEST(test_handover_corrupt)
{
        struct backend *b = sim();
        _cleanup_close_ int m = plain_memfd("data");
        char path[PATH_MAX + 160], msg[512] = "";
        json_t *j;
        int h = create(b, "s");

        ck_assert_int_eq(b->ops->session_preserve(b, h, m, 1), 0);
        b = kexec(b, true);
        close(h);
        j = kernel_json();
        ck_assert_int_lt(snprintf(path, sizeof(path), "%s/sim/sessions/%s/index.json", tmpdir,
                                  json_string_value(json_object_get(j, "handover"))),
                         (int)sizeof(path));
        json_decref(j);
        backend_free(b);
        {
                _cleanup_close_ int fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
                ck_assert_int_ge(fd, 0);
                ck_assert_int_eq(write_all(fd, "{\"version\":1", 12), 0);
        }
        b = NULL;
        ck_assert_int_eq(sim_open(&cfg, &b, msg, sizeof(msg)), -EBADMSG);
        ck_assert_ptr_null(b);
        ck_assert_ptr_nonnull(strstr(msg, "corrupt session handover"));
}
END_TEST

START_TEST(test_fault_preserve)
{
        struct backend *b = sim();
        _cleanup_close_ int m = plain_memfd("x");
        int h = create(b, "s");
        uint64_t t;

        write_sim_file("faults", "preserve=ENOSPC\nprepare=10ms\n");
        ck_assert_int_eq(b->ops->session_preserve(b, h, m, 1), -ENOSPC);
        /* an invalid call is answered before the fault */
        ck_assert_int_eq(b->ops->session_preserve(b, h, -1, 1), -EBADF);
        /* the other ops read the file as before */
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_PREPARE), 0);
        write_sim_file("faults", "preserve=100ms\n");
        t = now_mono_usec();
        ck_assert_int_eq(b->ops->session_preserve(b, h, m, 1), 0);
        ck_assert_uint_ge(elapsed_ms_since(t), 100);
        write_sim_file("faults", "preserve=EWHAT\n");
        ck_assert_int_eq(b->ops->session_unpreserve(b, h, 1), 0);
        ck_assert_int_eq(b->ops->session_preserve(b, h, m, 1), -EBADMSG);
        ck_assert_int_eq(b->ops->set_event(b, LUO_EVENT_CANCEL), -EBADMSG);
        remove_sim_file("faults");
        ck_assert_int_eq(b->ops->session_preserve(b, h, m, 1), 0);
        release(b, h);
        backend_free(b);
}
END_TEST

struct session_worker {
        struct backend *b;
        int bad;
};

static void *session_thread(void *p)
{
        struct session_worker *w = p;
        struct backend *b = w->b;
        int m = memfd_create("test-thread", MFD_CLOEXEC);

        for (int i = 0; i < 300 && m >= 0; i++) {
                int h = -1;
                if (b->ops->session_create(b, "worker", &h) < 0) {
                        w->bad++;
                        continue;
                }
                if (b->ops->session_preserve(b, h, m, (uint64_t)i) < 0)
                        w->bad++;
                if (i % 2 && b->ops->session_unpreserve(b, h, (uint64_t)i) < 0)
                        w->bad++;
                b->ops->session_release(b, h);
        }
        if (m < 0)
                w->bad++;
        else
                close(m);
        return NULL;
}

START_TEST(test_session_threads)
{
        struct session_worker w = { .b = sim() };
        pthread_t t;

        ck_assert_int_eq(pthread_create(&t, NULL, session_thread, &w), 0);
        for (int i = 0; i < 100; i++) {
                ck_assert_int_eq(w.b->ops->set_event(w.b, LUO_EVENT_PREPARE), 0);
                ck_assert_int_eq(w.b->ops->marker_write(w.b, "m", 1), 0);
                ck_assert_int_eq(w.b->ops->set_event(w.b, LUO_EVENT_CANCEL), 0);
                ck_assert_int_eq(state(w.b), LUO_STATE_NORMAL);
        }
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        ck_assert_int_eq(w.bad, 0);
        backend_free(w.b);
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
        tcase_add_test(tc, test_session_names);
        tcase_add_test(tc, test_session_preserve_errors);
        tcase_add_test(tc, test_session_unpreserve);
        tcase_add_test(tc, test_session_kexec);
        tcase_add_test(tc, test_session_agent_restart);
        tcase_add_test(tc, test_session_finish_event);
        tcase_add_test(tc, test_session_plain_kexec);
        tcase_add_test(tc, test_session_two_kexecs);
        tcase_add_test(tc, test_marker);
        tcase_add_test(tc, test_handover_leftovers);
        tcase_add_test(tc, test_handover_write_fails);
        tcase_add_test(tc, test_handover_corrupt);
        tcase_add_test(tc, test_fault_preserve);
        tcase_add_test(tc, test_session_threads);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(sim_suite)
