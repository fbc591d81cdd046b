/*
 * test_util.c: the checked parsers, RFC 3339 time, errno names, small-file
 * I/O and atomic writes, UUIDs and hex of common/util.c. Single-threaded;
 * uses a temporary directory under $LUOFLEET_TEST_TMP (or /tmp), removed at
 * the end of each test.
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "testutil.h"

static char tmpdir[PATH_MAX];

static void tmp_setup(void)
{
        testutil_mkdtemp(tmpdir, sizeof(tmpdir), "test_util");
}

static void tmp_teardown(void)
{
        testutil_rm_rf(tmpdir);
        tmpdir[0] = 0;
}

/* Entries of dir other than . and ..: their count, and their names comma-separated. */
static int count_entries(const char *dir, char *names, size_t size)
{
        DIR *d = opendir(dir);
        struct dirent *de;
        int n = 0;

        ck_assert_ptr_nonnull(d);
        names[0] = 0;
        while ((de = readdir(d))) {
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;
                n++;
                size_t len = strlen(names);
                snprintf(names + len, size - len, "%s,", de->d_name);
        }
        closedir(d);
        return n;
}

START_TEST(test_parse_u64)
{
        uint64_t v = 42;

        ck_assert_int_eq(parse_u64("0", UINT64_MAX, &v), 0);
        ck_assert_uint_eq(v, 0);
        ck_assert_int_eq(parse_u64("007", UINT64_MAX, &v), 0);
        ck_assert_uint_eq(v, 7);
        ck_assert_int_eq(parse_u64("18446744073709551615", UINT64_MAX, &v), 0);
        ck_assert_uint_eq(v, UINT64_MAX);
        ck_assert_int_eq(parse_u64("100", 100, &v), 0);
        ck_assert_uint_eq(v, 100);

        v = 42;
        ck_assert_int_eq(parse_u64("18446744073709551616", UINT64_MAX, &v), -ERANGE);
        ck_assert_int_eq(parse_u64("99999999999999999999999", UINT64_MAX, &v), -ERANGE);
        ck_assert_int_eq(parse_u64("101", 100, &v), -ERANGE);
        ck_assert_int_eq(parse_u64("", UINT64_MAX, &v), -EINVAL);
        ck_assert_int_eq(parse_u64(NULL, UINT64_MAX, &v), -EINVAL);
        ck_assert_int_eq(parse_u64("-1", UINT64_MAX, &v), -EINVAL);
        ck_assert_int_eq(parse_u64("+1", UINT64_MAX, &v), -EINVAL);
        ck_assert_int_eq(parse_u64(" 1", UINT64_MAX, &v), -EINVAL);
        ck_assert_int_eq(parse_u64("1 ", UINT64_MAX, &v), -EINVAL);
        ck_assert_int_eq(parse_u64("1\n", UINT64_MAX, &v), -EINVAL);
        ck_assert_int_eq(parse_u64("12a", UINT64_MAX, &v), -EINVAL);
        ck_assert_int_eq(parse_u64("0x10", UINT64_MAX, &v), -EINVAL);
        ck_assert_int_eq(parse_u64("1e3", UINT64_MAX, &v), -EINVAL);
        ck_assert_uint_eq(v, 42); /* untouched on failure */
}
END_TEST

START_TEST(test_parse_duration)
{
        uint64_t ms = 42;

        ck_assert_int_eq(parse_duration_ms("0", UINT64_MAX, &ms), 0);
        ck_assert_uint_eq(ms, 0);
        ck_assert_int_eq(parse_duration_ms("0ms", UINT64_MAX, &ms), 0);
        ck_assert_uint_eq(ms, 0);
        ck_assert_int_eq(parse_duration_ms("250ms", UINT64_MAX, &ms), 0);
        ck_assert_uint_eq(ms, 250);
        ck_assert_int_eq(parse_duration_ms("30s", UINT64_MAX, &ms), 0);
        ck_assert_uint_eq(ms, 30000);
        ck_assert_int_eq(parse_duration_ms("5m", UINT64_MAX, &ms), 0);
        ck_assert_uint_eq(ms, 300000);
        ck_assert_int_eq(parse_duration_ms("7", UINT64_MAX, &ms), 0); /* bare: seconds */
        ck_assert_uint_eq(ms, 7000);
        ck_assert_int_eq(parse_duration_ms("1000ms", 1000, &ms), 0);
        ck_assert_uint_eq(ms, 1000);
        /* the one grammar (agent, controller, CLI): components largest first, once each */
        ck_assert_int_eq(parse_duration_ms("5h", UINT64_MAX, &ms), 0);
        ck_assert_uint_eq(ms, 18000000);
        ck_assert_int_eq(parse_duration_ms("1h30m", UINT64_MAX, &ms), 0);
        ck_assert_uint_eq(ms, 5400000);
        ck_assert_int_eq(parse_duration_ms("2m30s", UINT64_MAX, &ms), 0);
        ck_assert_uint_eq(ms, 150000);
        ck_assert_int_eq(parse_duration_ms("1s500ms", UINT64_MAX, &ms), 0);
        ck_assert_uint_eq(ms, 1500);
        ck_assert_int_eq(parse_duration_ms("2h0m5s", UINT64_MAX, &ms), 0);
        ck_assert_uint_eq(ms, 7205000);

        ms = 42;
        static const char *const bad[] = { "",     "ms",  "s",     "5d",   "5 s",   " 5s",
                                           "-5s",  "+5s", "5s5",   "1.5s", "5S",    "5MS",
                                           "5msx", "0x5", "30m1h", "1h1h", "5ms5s", "1h 30m" };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                ck_assert_msg(parse_duration_ms(bad[i], UINT64_MAX, &ms) == -EINVAL,
                              "accepted \"%s\"", bad[i]);
        ck_assert_int_eq(parse_duration_ms(NULL, UINT64_MAX, &ms), -EINVAL);

        ck_assert_int_eq(parse_duration_ms("1001ms", 1000, &ms), -ERANGE);
        ck_assert_int_eq(parse_duration_ms("2s", 1000, &ms), -ERANGE);
        ck_assert_int_eq(parse_duration_ms("18446744073709551616ms", UINT64_MAX, &ms), -ERANGE);
        ck_assert_int_eq(parse_duration_ms("18446744073709551615s", UINT64_MAX, &ms), -ERANGE);
        ck_assert_int_eq(parse_duration_ms("307445734561825861m", UINT64_MAX, &ms), -ERANGE);
        ck_assert_int_eq(parse_duration_ms("123456789012345678901234567890", UINT64_MAX, &ms),
                         -ERANGE);
        ck_assert_uint_eq(ms, 42);
}
END_TEST

START_TEST(test_rfc3339)
{
        char buf[RFC3339_MAX];
        uint64_t t = 0;

        ck_assert_str_eq(format_rfc3339_ms(0, buf), "1970-01-01T00:00:00.000Z");
        ck_assert_str_eq(format_rfc3339_ms(1795616902123456ull, buf), "2026-11-25T14:28:22.123Z");
        ck_assert_int_eq(parse_rfc3339(buf, &t), 0);
        ck_assert_uint_eq(t, 1795616902123000ull); /* milliseconds survive, microseconds not */

        /* round trips at millisecond precision */
        static const uint64_t samples[] = {
                0, 999000, 1000000, 951868799000000ull, 1795616902123000ull, 4102444799999000ull
        };
        for (size_t i = 0; i < ELEMENTSOF(samples); i++) {
                format_rfc3339_ms(samples[i], buf);
                ck_assert_int_eq(parse_rfc3339(buf, &t), 0);
                ck_assert_uint_eq(t, samples[i]);
        }
        ck_assert_str_eq(format_rfc3339_ms(951868799000000ull, buf), "2000-02-29T23:59:59.000Z");

        ck_assert_int_eq(parse_rfc3339("2026-11-25T14:28:22Z", &t), 0);
        ck_assert_uint_eq(t, 1795616902000000ull);
        ck_assert_int_eq(parse_rfc3339("2026-11-25T14:28:22.5Z", &t), 0);
        ck_assert_uint_eq(t, 1795616902500000ull);
        ck_assert_int_eq(parse_rfc3339("2026-11-25T14:28:22.123456Z", &t), 0);
        ck_assert_uint_eq(t, 1795616902123000ull);

        t = 42;
        static const char *const bad[] = { "",
                                           "2026-11-25 14:28:22Z",
                                           "2026-11-25T14:28:22",
                                           "2026-11-25T14:28:22.Z",
                                           "2026-11-25T14:28:22+01:00",
                                           "2026-11-25T14:28:22.123Zx",
                                           "2026-11-25",
                                           "yesterday" };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                ck_assert_msg(parse_rfc3339(bad[i], &t) == -EINVAL, "accepted \"%s\"", bad[i]);
        ck_assert_int_eq(parse_rfc3339(NULL, &t), -EINVAL);
        ck_assert_uint_eq(t, 42);
}
END_TEST

START_TEST(test_errno_names)
{
        char buf[16];

        ck_assert_int_eq(errno_from_name("EIO"), EIO);
        ck_assert_int_eq(errno_from_name("EBUSY"), EBUSY);
        ck_assert_int_eq(errno_from_name("EKEYREJECTED"), EKEYREJECTED);
        ck_assert_int_eq(errno_from_name("5"), 5);
        ck_assert_int_eq(errno_from_name("4095"), 4095);
        ck_assert_int_eq(errno_from_name("0"), -EINVAL);
        ck_assert_int_eq(errno_from_name("4096"), -EINVAL);
        ck_assert_int_eq(errno_from_name("eio"), -EINVAL);
        ck_assert_int_eq(errno_from_name("EFOO"), -EINVAL);
        ck_assert_int_eq(errno_from_name("-5"), -EINVAL);
        ck_assert_int_eq(errno_from_name(""), -EINVAL);
        ck_assert_int_eq(errno_from_name(NULL), -EINVAL);

        ck_assert_str_eq(errno_name(EINVAL, buf), "EINVAL");
        ck_assert_str_eq(errno_name(-EIO, buf), "EIO");
        ck_assert_str_eq(errno_name(4000, buf), "E4000");
        ck_assert_int_eq(errno_from_name(errno_name(ENOEXEC, buf)), ENOEXEC);
}
END_TEST

START_TEST(test_write_atomic)
{
        _cleanup_close_ int dfd = -1;
        char buf[64], names[256];
        ssize_t n;

        tmp_setup();
        dfd = open(tmpdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        ck_assert_int_ge(dfd, 0);

        ck_assert_int_eq(write_file_atomic_at(dfd, "f", "one\n", 4, 0600), 0);
        n = read_small_file_at(dfd, "f", buf, sizeof(buf));
        ck_assert_int_eq(n, 4);
        ck_assert_str_eq(buf, "one\n");
        ck_assert_int_eq(write_file_atomic_at(dfd, "f", "second", 6, 0600), 0);
        ck_assert_int_eq(read_small_file_at(dfd, "f", buf, sizeof(buf)), 6);
        ck_assert_str_eq(buf, "second");
        ck_assert_int_eq(count_entries(tmpdir, names, sizeof(names)), 1);
        ck_assert_str_eq(names, "f,");

        struct stat st;
        ck_assert_int_eq(fstatat(dfd, "f", &st, 0), 0);
        ck_assert_int_eq(st.st_mode & 07777, 0600);

        /* A rename that fails (onto a directory) must not leave the temporary file. */
        ck_assert_int_eq(mkdirat(dfd, "d", 0700), 0);
        ck_assert_int_eq(write_file_atomic_at(dfd, "d", "x", 1, 0600), -EISDIR);
        ck_assert_int_eq(write_file_atomic_at(dfd, "nodir/x", "x", 1, 0600), -ENOENT);
        ck_assert_int_eq(count_entries(tmpdir, names, sizeof(names)), 2); /* f and d only */
        ck_assert_int_eq(read_small_file_at(dfd, "f", buf, sizeof(buf)), 6);
        tmp_teardown();
}
END_TEST

START_TEST(test_read_small_file)
{
        _cleanup_close_ int dfd = -1;
        char buf[8];

        tmp_setup();
        dfd = open(tmpdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        ck_assert_int_ge(dfd, 0);
        ck_assert_int_eq(write_file_atomic_at(dfd, "small", "1234567", 7, 0600), 0);
        ck_assert_int_eq(write_file_atomic_at(dfd, "big", "12345678", 8, 0600), 0);
        ck_assert_int_eq(read_small_file_at(dfd, "small", buf, sizeof(buf)), 7);
        ck_assert_str_eq(buf, "1234567");
        ck_assert_int_eq(read_small_file_at(dfd, "big", buf, sizeof(buf)), -EFBIG);
        ck_assert_int_eq(read_small_file_at(dfd, "missing", buf, sizeof(buf)), -ENOENT);
        ck_assert_int_eq(read_small_file_at(dfd, "small", buf, 0), -EINVAL);
        tmp_teardown();
}
END_TEST

START_TEST(test_strip_trailing)
{
        char a[] = "prepared\n", b[] = "x \t\r\n\n", c[] = "", d[] = "\n\n", e[] = " a b ";

        ck_assert_str_eq(strip_trailing(a), "prepared");
        ck_assert_str_eq(strip_trailing(b), "x");
        ck_assert_str_eq(strip_trailing(c), "");
        ck_assert_str_eq(strip_trailing(d), "");
        ck_assert_str_eq(strip_trailing(e), " a b");
}
END_TEST

START_TEST(test_uuid)
{
        char a[37], b[37];

        ck_assert_int_eq(uuid_v4(a), 0);
        ck_assert_int_eq(uuid_v4(b), 0);
        ck_assert_uint_eq(strlen(a), 36);
        ck_assert(uuid_valid(a));
        ck_assert(uuid_valid(b));
        ck_assert_str_ne(a, b);
        ck_assert_int_eq(a[14], '4');                 /* version 4 */
        ck_assert_ptr_nonnull(strchr("89ab", a[19])); /* RFC 4122 variant */
        for (int i = 0; i < 36; i++)
                ck_assert_msg(a[i] == '-' || (a[i] >= '0' && a[i] <= '9') ||
                                      (a[i] >= 'a' && a[i] <= 'f'),
                              "upper case or junk in %s", a);

        ck_assert(uuid_valid("0f3c2d1e-8a7b-4c6d-9e5f-0123456789ab"));
        ck_assert(uuid_valid("0F3C2D1E-8A7B-4C6D-9E5F-0123456789AB"));
        ck_assert(!uuid_valid("0f3c2d1e-8a7b-4c6d-9e5f-0123456789a"));
        ck_assert(!uuid_valid("0f3c2d1e-8a7b-4c6d-9e5f-0123456789abc"));
        ck_assert(!uuid_valid("0f3c2d1e8a7b-4c6d-9e5f-0123456789abc"));
        ck_assert(!uuid_valid("0f3c2d1e-8a7b-4c6d-9e5f-0123456789ag"));
        ck_assert(!uuid_valid("0f3c2d1e-8a7b-4c6d-9e5f-0123456789a\n"));
        ck_assert(!uuid_valid(""));
        ck_assert(!uuid_valid(NULL));
}
END_TEST

START_TEST(test_hex_and_mkdir)
{
        static const uint8_t in[] = { 0x00, 0x01, 0xab, 0xff };
        char out[9], path[PATH_MAX + 16];
        struct stat st;

        hex_encode(in, sizeof(in), out);
        ck_assert_str_eq(out, "0001abff");
        hex_encode(in, 0, out);
        ck_assert_str_eq(out, "");

        tmp_setup();
        ck_assert_int_lt(snprintf(path, sizeof(path), "%s/a/b/c", tmpdir), (int)sizeof(path));
        ck_assert_int_eq(mkdir_p(path, 0700), 0);
        ck_assert_int_eq(mkdir_p(path, 0700), 0); /* exists: fine */
        ck_assert_int_eq(stat(path, &st), 0);
        ck_assert(S_ISDIR(st.st_mode));
        ck_assert_int_eq(st.st_mode & 0777, 0700);
        ck_assert_int_eq(mkdir_p("", 0700), -EINVAL);
        tmp_teardown();
}
END_TEST

START_TEST(test_read_full)
{
        char buf[16];
        int p[2];

        ck_assert_int_eq(pipe(p), 0);
        ck_assert_int_eq(write_all(p[1], "hel", 3), 0);
        ck_assert_int_eq(write_all(p[1], "lo", 2), 0);
        close(p[1]);
        /* Short reads are joined; end of file ends it. */
        ck_assert_int_eq(read_full(p[0], buf, sizeof(buf)), 5);
        ck_assert_int_eq(memcmp(buf, "hello", 5), 0);
        ck_assert_int_eq(read_full(p[0], buf, sizeof(buf)), 0);
        close(p[0]);
        ck_assert_int_eq(read_full(p[0], buf, sizeof(buf)), -EBADF);
}
END_TEST

static Suite *util_suite(void)
{
        Suite *s = suite_create("util");
        TCase *tc = tcase_create("core");

        tcase_add_test(tc, test_parse_u64);
        tcase_add_test(tc, test_parse_duration);
        tcase_add_test(tc, test_rfc3339);
        tcase_add_test(tc, test_errno_names);
        tcase_add_test(tc, test_write_atomic);
        tcase_add_test(tc, test_read_full);
        tcase_add_test(tc, test_read_small_file);
        tcase_add_test(tc, test_strip_trailing);
        tcase_add_test(tc, test_uuid);
        tcase_add_test(tc, test_hex_and_mkdir);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(util_suite)
