/*
 * testutil.h: what every check suite needs: a private temporary directory
 * under $LUOFLEET_TEST_TMP (CTest sets it; /tmp otherwise), its removal, and
 * the runner main(). Header only; single-threaded test code.
 */
#pragma once

#include <check.h>
#include <dirent.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "luofleet/util.h"

static inline int testutil_rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
        (void)st;
        (void)flag;
        (void)ftw;
        return remove(p);
}

/* Create a fresh directory "<base>/<prefix>-XXXXXX" into buf; fails the test on error. */
static inline void testutil_mkdtemp(char *buf, size_t size, const char *prefix)
{
        const char *base = getenv("LUOFLEET_TEST_TMP");

        if (!base || !*base)
                base = "/tmp";
        ck_assert_int_eq(mkdir_p(base, 0700), 0);
        ck_assert_int_lt(snprintf(buf, size, "%s/%s-XXXXXX", base, prefix), (int)size);
        ck_assert_ptr_nonnull(mkdtemp(buf));
}

/* rm -rf path (no symlinks followed). */
static inline void testutil_rm_rf(const char *path)
{
        if (path && *path)
                (void)nftw(path, testutil_rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* Open descriptors of this process: a test must leave as many as it found. */
static inline int testutil_count_fds(void)
{
        DIR *d = opendir("/proc/self/fd");
        int n = 0;

        ck_assert_ptr_nonnull(d);
        while (readdir(d))
                n++;
        closedir(d);
        return n;
}

/* main(): run the suite, exit 0 only when every test passed. */
#define TESTUTIL_MAIN(suite_fn)                                                                    \
        int main(void)                                                                             \
        {                                                                                          \
                SRunner *sr = srunner_create(suite_fn());                                          \
                srunner_run_all(sr, CK_NORMAL);                                                    \
                int failed = srunner_ntests_failed(sr);                                            \
                srunner_free(sr);                                                                  \
                return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;                                  \
        }
