/*
 * test_bzimage.c: the bzImage kernel_version parser of common/bzimage.c with
 * crafted headers: a good one, too short, bad magic, a zero pointer, a
 * pointer out of range, an unterminated or empty string, control bytes,
 * truncation to the output buffer; the fd variant; the release word.
 * Single-threaded; a temporary file under $LUOFLEET_TEST_TMP (or /tmp).
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "luofleet/bzimage.h"
#include "testutil.h"

#define IMG_SIZE 0x2000
#define PTR 0x300 /* the string at 0x500 */

static uint8_t img[IMG_SIZE];

static void craft(const char *version)
{
        memset(img, 0xAA, sizeof(img));
        memcpy(img + 0x202, "HdrS", 4);
        img[0x20E] = PTR & 0xff;
        img[0x20F] = PTR >> 8;
        if (version)
                memcpy(img + PTR + 0x200, version, strlen(version) + 1);
}

START_TEST(test_good)
{
        char out[256], rel[64];

        craft("6.12.9-luo (b@h) #1 SMP PREEMPT_DYNAMIC");
        ck_assert_int_eq(bzimage_version(img, sizeof(img), out, sizeof(out)), 0);
        ck_assert_str_eq(out, "6.12.9-luo (b@h) #1 SMP PREEMPT_DYNAMIC");
        bzimage_release(out, rel, sizeof(rel));
        ck_assert_str_eq(rel, "6.12.9-luo");
        /* Exactly as long as needed: the terminator is the buffer's last byte. */
        size_t end = PTR + 0x200 + strlen(out) + 1;
        ck_assert_int_eq(bzimage_version(img, end, out, sizeof(out)), 0);
        /* Cut to the output buffer. */
        ck_assert_int_eq(bzimage_version(img, sizeof(img), out, 7), 0);
        ck_assert_str_eq(out, "6.12.9");
        bzimage_release("6.12.9-luo", rel, 4);
        ck_assert_str_eq(rel, "6.1");
}
END_TEST

START_TEST(test_too_short)
{
        char out[64];

        craft("6.1.0 #1");
        ck_assert_int_eq(bzimage_version(img, 0, out, sizeof(out)), -ENODATA);
        ck_assert_int_eq(bzimage_version(img, 0x20F, out, sizeof(out)), -ENODATA);
        /* The header fits, the string does not start within the bytes. */
        ck_assert_int_eq(bzimage_version(img, 0x210, out, sizeof(out)), -ERANGE);
        ck_assert_int_eq(bzimage_version(img, PTR + 0x200, out, sizeof(out)), -ERANGE);
}
END_TEST

START_TEST(test_bad_magic)
{
        char out[64];

        craft("6.1.0 #1");
        memcpy(img + 0x202, "HdrZ", 4);
        ck_assert_int_eq(bzimage_version(img, sizeof(img), out, sizeof(out)), -ENOEXEC);
        craft("6.1.0 #1");
        img[0x20E] = img[0x20F] = 0; /* no kernel_version */
        ck_assert_int_eq(bzimage_version(img, sizeof(img), out, sizeof(out)), -ENOEXEC);
}
END_TEST

START_TEST(test_pointer_out_of_range)
{
        char out[64];

        craft(NULL);
        img[0x20E] = 0xff;
        img[0x20F] = 0xff; /* 0xffff + 0x200: past an 8 KiB image */
        ck_assert_int_eq(bzimage_version(img, sizeof(img), out, sizeof(out)), -ERANGE);
        img[0x20E] = (IMG_SIZE - 0x200) & 0xff;
        img[0x20F] = (IMG_SIZE - 0x200) >> 8; /* exactly the end */
        ck_assert_int_eq(bzimage_version(img, sizeof(img), out, sizeof(out)), -ERANGE);
}
END_TEST

START_TEST(test_unterminated_and_empty)
{
        char out[64];

        craft(NULL); /* 0xAA to the end: no NUL after the pointer */
        ck_assert_int_eq(bzimage_version(img, sizeof(img), out, sizeof(out)), -EBADMSG);
        craft("");
        ck_assert_int_eq(bzimage_version(img, sizeof(img), out, sizeof(out)), -EBADMSG);
        /* Control bytes and non-ASCII become '?'. */
        craft("6.1\n\x01\xc3\xa9");
        ck_assert_int_eq(bzimage_version(img, sizeof(img), out, sizeof(out)), 0);
        ck_assert_str_eq(out, "6.1????");
        ck_assert_int_eq(bzimage_version(NULL, 10, out, sizeof(out)), -EINVAL);
        ck_assert_int_eq(bzimage_version(img, sizeof(img), out, 0), -EINVAL);
}
END_TEST

START_TEST(test_fd)
{
        char dir[PATH_MAX], path[PATH_MAX + 16], out[64];
        int fd;

        testutil_mkdtemp(dir, sizeof(dir), "test_bzimage");
        snprintf(path, sizeof(path), "%s/img", dir);
        craft("6.5.0-fd #3");
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write(fd, img, sizeof(img)), (ssize_t)sizeof(img));
        /* pread: the offset stays where the caller left it. */
        ck_assert_int_eq(bzimage_version_fd(fd, out, sizeof(out)), 0);
        ck_assert_str_eq(out, "6.5.0-fd #3");
        ck_assert_int_eq(lseek(fd, 0, SEEK_CUR), (off_t)sizeof(img));
        ck_assert_int_eq(ftruncate(fd, 0x100), 0);
        ck_assert_int_eq(bzimage_version_fd(fd, out, sizeof(out)), -ENODATA);
        close(fd);
        ck_assert_int_eq(bzimage_version_fd(-1, out, sizeof(out)), -EBADF);
        testutil_rm_rf(dir);
}
END_TEST

static Suite *bzimage_suite(void)
{
        Suite *s = suite_create("bzimage");
        TCase *tc = tcase_create("core");

        tcase_add_test(tc, test_good);
        tcase_add_test(tc, test_too_short);
        tcase_add_test(tc, test_bad_magic);
        tcase_add_test(tc, test_pointer_out_of_range);
        tcase_add_test(tc, test_unterminated_and_empty);
        tcase_add_test(tc, test_fd);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(bzimage_suite)
