/*
 * test_staging.c: staging path rules (staging.c): the literal checks of a
 * request's path, and the allowed-directory check of staging_run() with
 * symlinks inside, into and out of the allowed directory, /proc/self/fd
 * and a directory given with a symlink in its own name. The simulator is
 * the backend (kexec_file_load is recorded, not done).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/sha.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "config.h"
#include "luofleet/backend.h"
#include "luofleet/log.h"
#include "staging.h"
#include "testutil.h"

static char tmpdir[256], allowed[300], outside[300];
static char *dirs[2];
static struct backend_config bcfg;
static struct backend *backend;

static void setup(void)
{
        char msg[256];

        log_set_max_level(LOG_LEVEL_ERR);
        testutil_mkdtemp(tmpdir, sizeof(tmpdir), "test_staging");
        snprintf(allowed, sizeof(allowed), "%s/allowed", tmpdir);
        snprintf(outside, sizeof(outside), "%s/outside", tmpdir);
        ck_assert_int_eq(mkdir(allowed, 0700), 0);
        ck_assert_int_eq(mkdir(outside, 0700), 0);
        dirs[0] = allowed;
        staging_set_allowed_dirs(dirs, 1);
        bcfg = (struct backend_config){ .kind = BACKEND_SIM,
                                        .state_dir = tmpdir,
                                        .sim_release = "6.1.0-test" };
        ck_assert_int_eq(backend_open(&bcfg, &backend, msg, sizeof(msg)), 0);
}

static void teardown(void)
{
        backend = backend_free(backend);
        staging_set_allowed_dirs(NULL, 0);
        testutil_rm_rf(tmpdir);
}

static void write_file(const char *path, const char *data, char hex[65])
{
        uint8_t md[32];
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write_all(fd, data, strlen(data)), 0);
        close(fd);
        SHA256((const uint8_t *)data, strlen(data), md);
        hex_encode(md, 32, hex);
}

/* staging_run() on one kernel path; returns the problem code or "ok". */
static const char *stage(const char *path, const char *hex)
{
        static char code[64];
        struct op_request rq = { .action = OP_STAGE };
        struct stage_result res;

        snprintf(rq.kernel_path, sizeof(rq.kernel_path), "%s", path);
        snprintf(rq.kernel_sha256, sizeof(rq.kernel_sha256), "%s", hex);
        ck_assert_int_eq(staging_run(backend, &rq, &res), 0);
        snprintf(code, sizeof(code), "%s", res.staged ? "ok" : res.code);
        if (!res.staged)
                ck_assert_int_eq(res.status, 422);
        stage_result_done(&res);
        return code;
}

START_TEST(test_path_rules)
{
        ck_assert(staging_path_valid("/boot/vmlinuz"));
        ck_assert(staging_path_valid("/boot/..vmlinuz"));
        ck_assert(staging_path_valid("/boot/.vmlinuz"));
        ck_assert(staging_path_valid("/boot/vmlinuz."));
        ck_assert(!staging_path_valid("boot/vmlinuz"));
        ck_assert(!staging_path_valid(""));
        ck_assert(!staging_path_valid("/"));
        ck_assert(!staging_path_valid("/boot/../etc/shadow"));
        ck_assert(!staging_path_valid("/boot/.."));
        ck_assert(!staging_path_valid("/boot/./vmlinuz"));
        ck_assert(!staging_path_valid("/boot/."));
        ck_assert(!staging_path_valid("/./boot/vmlinuz"));
        ck_assert(!staging_path_valid("/boot//vmlinuz"));
        ck_assert(!staging_path_valid("//boot/vmlinuz"));
        ck_assert(!staging_path_valid("/boot/vmlinuz\n"));
        ck_assert(!staging_path_valid("/boot/\x7fvmlinuz"));
}
END_TEST

START_TEST(test_allowed_dirs)
{
        char hex[65], ohex[65], p[PATH_MAX], q[PATH_MAX], link[PATH_MAX];

        snprintf(p, sizeof(p), "%s/vmlinuz", allowed);
        write_file(p, "kernel", hex);
        snprintf(q, sizeof(q), "%s/secret", outside);
        write_file(q, "secret", ohex);

        ck_assert_str_eq(stage(p, hex), "ok");
        /* the canonical name of something outside, missing or not */
        ck_assert_str_eq(stage(q, ohex), "path-not-allowed");
        snprintf(link, sizeof(link), "%s/missing", outside);
        ck_assert_str_eq(stage(link, ohex), "path-not-allowed");
        ck_assert_str_eq(stage("/etc/passwd", ohex), "path-not-allowed");
        /* missing inside: not found */
        snprintf(link, sizeof(link), "%s/missing", allowed);
        ck_assert_str_eq(stage(link, hex), "file-not-found");
        /* the allowed directory itself, and a directory inside it */
        ck_assert_str_eq(stage(allowed, hex), "path-not-allowed");
        snprintf(link, sizeof(link), "%s/sub", allowed);
        ck_assert_int_eq(mkdir(link, 0700), 0);
        ck_assert_str_eq(stage(link, hex), "not-a-regular-file");
        /* a name that only starts like the allowed directory */
        snprintf(link, sizeof(link), "%s-evil", allowed);
        ck_assert_int_eq(mkdir(link, 0700), 0);
        snprintf(link, sizeof(link), "%s-evil/vmlinuz", allowed);
        write_file(link, "kernel", hex);
        ck_assert_str_eq(stage(link, hex), "path-not-allowed");

        /* a symlink inside pointing outside is outside */
        snprintf(link, sizeof(link), "%s/escape", allowed);
        ck_assert_int_eq(symlink(q, link), 0);
        ck_assert_str_eq(stage(link, ohex), "path-not-allowed");
        /* a directory symlink inside pointing outside, too */
        snprintf(link, sizeof(link), "%s/outdir", allowed);
        ck_assert_int_eq(symlink(outside, link), 0);
        snprintf(link, sizeof(link), "%s/outdir/secret", allowed);
        ck_assert_str_eq(stage(link, ohex), "path-not-allowed");
        /* a symlink inside pointing inside is fine */
        snprintf(link, sizeof(link), "%s/current", allowed);
        ck_assert_int_eq(symlink("vmlinuz", link), 0);
        ck_assert_str_eq(stage(link, hex), "ok");
        /* a symlink outside pointing inside: the file is inside */
        snprintf(link, sizeof(link), "%s/in", outside);
        ck_assert_int_eq(symlink(p, link), 0);
        ck_assert_str_eq(stage(link, hex), "ok");

        /* /proc/self/fd/N of a file outside, and of one inside */
        int fd = open(q, O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        ck_assert_str_eq(stage(link, ohex), "path-not-allowed");
        close(fd);
        fd = open(p, O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        ck_assert_str_eq(stage(link, hex), "ok"); /* it names a file inside */
        close(fd);
}
END_TEST

START_TEST(test_dir_through_symlink)
{
        char hex[65], p[PATH_MAX + 16], alias[PATH_MAX];

        /* The configured directory is a symlink (like a relative or linked state dir). */
        snprintf(alias, sizeof(alias), "%s/alias", tmpdir);
        ck_assert_int_eq(symlink(allowed, alias), 0);
        dirs[0] = alias;
        staging_set_allowed_dirs(dirs, 1);
        snprintf(p, sizeof(p), "%s/vmlinuz", allowed);
        write_file(p, "kernel", hex);
        ck_assert_str_eq(stage(p, hex), "ok");
        snprintf(p, sizeof(p), "%s/vmlinuz", alias);
        ck_assert_str_eq(stage(p, hex), "ok");
        snprintf(p, sizeof(p), "%s/missing", alias);
        ck_assert_str_eq(stage(p, hex), "file-not-found");

        /* A configured directory that does not exist allows nothing. */
        snprintf(alias, sizeof(alias), "%s/nonexistent", tmpdir);
        dirs[0] = alias;
        ck_assert_str_eq(stage(p, hex), "path-not-allowed");
        snprintf(p, sizeof(p), "%s/nonexistent/vmlinuz", tmpdir);
        ck_assert_str_eq(stage(p, hex), "file-not-found");

        /* No directories at all: everything is refused. */
        staging_set_allowed_dirs(NULL, 0);
        snprintf(p, sizeof(p), "%s/vmlinuz", allowed);
        ck_assert_str_eq(stage(p, hex), "path-not-allowed");

        /* "/" allows everything. */
        dirs[0] = (char *)"/";
        staging_set_allowed_dirs(dirs, 1);
        ck_assert_str_eq(stage(p, hex), "ok");
}
END_TEST

static Suite *staging_suite(void)
{
        Suite *s = suite_create("staging");
        TCase *tc = tcase_create("core");

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_path_rules);
        tcase_add_test(tc, test_allowed_dirs);
        tcase_add_test(tc, test_dir_through_symlink);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(staging_suite)
