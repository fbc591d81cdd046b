/*
 * test_staging_checks.c: the checks of agent/staging.c a staged file must pass besides its
 * directory: the SHA-256 the request names (kernel and initrd; a mismatch is 422
 * digest-mismatch with field, expected_sha256 and actual_sha256, and nothing reaches the
 * kernel), and the literal rules of a path (common/stagepath.c) at their bounds: every control
 * character and DEL refused, the longest path (4095 bytes) taken and one byte more refused.
 *
 * Why a suite of its own: test_staging.c covers the directories and never a wrong digest; the
 * mutations staging-digest-skipped, stagepath-control-char-bound and stagepath-length-bound
 * (tests/mutation) survived it. The simulator is the backend: what it loaded is in
 * sim/kernel.json.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "config.h"
#include "luofleet/backend.h"
#include "luofleet/log.h"
#include "luofleet/stagepath.h"
#include "staging.h"
#include "testutil.h"

static char tmpdir[256];
static char *dirs[1];
static struct backend_config bcfg;
static struct backend *backend;

static void setup(void)
{
        char msg[256];

        log_set_max_level(LOG_LEVEL_ERR);
        testutil_mkdtemp(tmpdir, sizeof(tmpdir), "test_staging_checks");
        dirs[0] = tmpdir;
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

/* What the simulated kernel has loaded: its "kexec" member (null: nothing). */
static bool kernel_loaded(void)
{
        char path[400];
        json_error_t je;

        snprintf(path, sizeof(path), "%s/sim/kernel.json", tmpdir);
        json_t *k = json_load_file(path, 0, &je);
        if (!k)
                return false; /* never written: nothing was ever loaded */
        bool loaded = !json_is_null(json_object_get(k, "kexec"));
        json_decref(k);
        return loaded;
}

static void request(struct op_request *rq, const char *kpath, const char *khex, const char *ipath,
                    const char *ihex)
{
        *rq = (struct op_request){ .action = OP_STAGE };
        snprintf(rq->kernel_path, sizeof(rq->kernel_path), "%s", kpath);
        snprintf(rq->kernel_sha256, sizeof(rq->kernel_sha256), "%s", khex);
        if (ipath) {
                snprintf(rq->initrd_path, sizeof(rq->initrd_path), "%s", ipath);
                snprintf(rq->initrd_sha256, sizeof(rq->initrd_sha256), "%s", ihex);
        }
}

static void assert_mismatch(struct stage_result *res, const char *field, const char *want,
                            const char *got)
{
        ck_assert_ptr_null(res->staged);
        ck_assert_int_eq(res->status, 422);
        ck_assert_str_eq(res->code, "digest-mismatch");
        ck_assert_str_eq(json_string_value(json_object_get(res->extra, "field")), field);
        ck_assert_str_eq(json_string_value(json_object_get(res->extra, "expected_sha256")), want);
        ck_assert_str_eq(json_string_value(json_object_get(res->extra, "actual_sha256")), got);
}

START_TEST(test_digest_mismatch)
{
        char kpath[300], ipath[300], khex[65], ihex[65], other[65];
        struct op_request rq;
        struct stage_result res;

        snprintf(kpath, sizeof(kpath), "%s/vmlinuz", tmpdir);
        snprintf(ipath, sizeof(ipath), "%s/initrd", tmpdir);
        write_file(kpath, "kernel bytes", khex);
        write_file(ipath, "initrd bytes", ihex);
        snprintf(other, sizeof(other), "%s", khex);
        other[63] = other[63] == '0' ? '1' : '0'; /* one nibble off */

        /* the kernel's digest wrong by one nibble */
        request(&rq, kpath, other, NULL, NULL);
        ck_assert_int_eq(staging_run(backend, &rq, &res), 0);
        assert_mismatch(&res, "kernel", other, khex);
        stage_result_done(&res);
        ck_assert(!kernel_loaded());

        /* the initrd's wrong after a good kernel: nothing loaded either */
        request(&rq, kpath, khex, ipath, khex);
        ck_assert_int_eq(staging_run(backend, &rq, &res), 0);
        assert_mismatch(&res, "initrd", khex, ihex);
        stage_result_done(&res);
        ck_assert(!kernel_loaded());

        /* the digests swapped */
        request(&rq, kpath, ihex, ipath, khex);
        ck_assert_int_eq(staging_run(backend, &rq, &res), 0);
        assert_mismatch(&res, "kernel", ihex, khex);
        stage_result_done(&res);
        ck_assert(!kernel_loaded());

        /* the file changed after its digest was taken */
        write_file(kpath, "kernel bytes, changed", other);
        request(&rq, kpath, khex, NULL, NULL);
        ck_assert_int_eq(staging_run(backend, &rq, &res), 0);
        assert_mismatch(&res, "kernel", khex, other);
        stage_result_done(&res);
        ck_assert(!kernel_loaded());

        /* right digests (upper-case hex too): staged and loaded, with the digests */
        write_file(kpath, "kernel bytes", khex);
        char upper[65];
        for (int i = 0; i < 65; i++)
                upper[i] = (char)(khex[i] >= 'a' && khex[i] <= 'f' ? khex[i] - 32 : khex[i]);
        request(&rq, kpath, upper, ipath, ihex);
        ck_assert_int_eq(staging_run(backend, &rq, &res), 0);
        ck_assert_msg(res.staged != NULL, "%s: %s", res.code, res.detail);
        ck_assert_str_eq(
                json_string_value(json_object_get(json_object_get(res.staged, "kernel"), "sha256")),
                khex);
        ck_assert_str_eq(
                json_string_value(json_object_get(json_object_get(res.staged, "initrd"), "sha256")),
                ihex);
        stage_result_done(&res);
        ck_assert(kernel_loaded());
}
END_TEST

START_TEST(test_path_character_bounds)
{
        char p[16];

        for (int c = 1; c < 0x20; c++) {
                snprintf(p, sizeof(p), "/boot/a%cb", c);
                ck_assert_msg(!stagepath_valid(p), "control character 0x%02x taken", c);
                ck_assert(!staging_path_valid(p));
        }
        ck_assert(!stagepath_valid("/boot/a\x7f"
                                   "b"));
        /* the first printable character and the last one below DEL are fine */
        ck_assert(stagepath_valid("/boot/a b"));
        ck_assert(stagepath_valid("/boot/a~b"));
        /* bytes above DEL are names like any other (UTF-8 file names) */
        ck_assert(stagepath_valid("/boot/vmlinuz-\xc3\xa9"));
}
END_TEST

START_TEST(test_path_length_bounds)
{
        static char p[4100];

        /* 4095 bytes and its NUL fill PATH_MAX: the longest path the kernel takes */
        memset(p, 'a', sizeof(p) - 1);
        p[0] = '/';
        for (size_t i = 200; i < 4095; i += 200)
                p[i] = '/'; /* components of at most NAME_MAX */
        p[4095] = 0;
        ck_assert_uint_eq(strlen(p), PATH_MAX - 1);
        ck_assert(stagepath_valid(p));
        p[4095] = 'a';
        p[4096] = 0;
        ck_assert(!stagepath_valid(p));
        ck_assert(!staging_path_valid(p));
        ck_assert(!stagepath_valid("/"));
        ck_assert(stagepath_valid("/a"));
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("staging_checks");
        TCase *tc = tcase_create("checks");

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_digest_mismatch);
        tcase_add_test(tc, test_path_character_bounds);
        tcase_add_test(tc, test_path_length_bounds);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(suite)
