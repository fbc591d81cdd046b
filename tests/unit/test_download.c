/*
 * test_download.c: file:/// URLs in download.c (issue 12, item 10): the
 * path a URL names (percent-decoding, what is refused), and
 * download_to_fd() of a file:// URL, which never reaches libcurl: inside
 * the staging directories copied and hashed, outside (by name, through a
 * symlink, spelt with %2F) "path-not-allowed" without its size or digest,
 * a FIFO "not-a-regular-file", a missing file "download-failed", the size
 * cap, a digest mismatch, a stopping agent. https and http are tested by
 * the integration suite (tests/integration/test_download.py).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/sha.h>

#include "download.h"
#include "luofleet/util.h"
#include "testutil.h"

static char tmpdir[PATH_MAX], allowed[PATH_MAX + 16], outside[PATH_MAX + 16];
static char kernel[PATH_MAX + 32], secret[PATH_MAX + 32], kernel_sha[65], secret_sha[65];
static char *dirs[1];
static struct download_opts opts;
static int out_fd = -1;

static void write_file(const char *path, const char *data, char hex[65])
{
        uint8_t md[32];
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write_all(fd, data, strlen(data)), 0);
        close(fd);
        SHA256((const uint8_t *)data, strlen(data), md);
        hex_encode(md, 32, hex);
}

static void setup(void)
{
        char made[PATH_MAX], out[PATH_MAX + 16];

        testutil_mkdtemp(made, sizeof(made), "test_download");
        ck_assert_ptr_nonnull(realpath(made, tmpdir));
        snprintf(allowed, sizeof(allowed), "%s/allowed", tmpdir);
        snprintf(outside, sizeof(outside), "%s/outside", tmpdir);
        ck_assert_int_eq(mkdir(allowed, 0755), 0);
        ck_assert_int_eq(mkdir(outside, 0755), 0);
        snprintf(kernel, sizeof(kernel), "%s/vmlinuz", allowed);
        snprintf(secret, sizeof(secret), "%s/secret", outside);
        write_file(kernel, "the kernel", kernel_sha);
        write_file(secret, "readable by the run user", secret_sha);
        dirs[0] = allowed;
        opts = (struct download_opts){ .max_bytes = 1 << 20,
                                       .connect_ms = 1000,
                                       .timeout_ms = 5000,
                                       .file_dirs = dirs,
                                       .n_file_dirs = 1 };
        snprintf(out, sizeof(out), "%s/out", tmpdir);
        out_fd = open(out, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        ck_assert_int_ge(out_fd, 0);
}

static void teardown(void)
{
        close(out_fd);
        testutil_rm_rf(tmpdir);
}

START_TEST(test_file_url_path)
{
        char p[64];

        ck_assert_int_eq(download_file_url_path("file:///boot/vmlinuz", p, sizeof(p)), 0);
        ck_assert_str_eq(p, "/boot/vmlinuz");
        ck_assert_int_eq(download_file_url_path("FILE:///boot/vml%69nuz%2d6.1", p, sizeof(p)), 0);
        ck_assert_str_eq(p, "/boot/vmlinuz-6.1");
        ck_assert_int_eq(download_file_url_path("file:///a%2Fb%2fc", p, sizeof(p)), 0);
        ck_assert_str_eq(p, "/a/b/c");
        static const char *const bad[] = {
                "file://host/x",   "file:/x",          "https:///x",
                "file:///",        "file:///a/../etc", "file:///a/%2e%2e",
                "file:///a/%2E/b", "file:///a//b",     "file:///a%2f%2fb",
                "file:///a?b",     "file:///a#b",      "file:///a%00b",
                "file:///a%0ab",   "file:///a%",       "file:///a%4",
                "file:///a%zz",    "file:///a/./b",    NULL,
        };
        for (size_t i = 0; bad[i]; i++)
                ck_assert_msg(download_file_url_path(bad[i], p, sizeof(p)) == -EINVAL, "%s",
                              bad[i]);
        ck_assert_int_eq(download_file_url_path(NULL, p, sizeof(p)), -EINVAL);
        ck_assert_int_eq(download_file_url_path("file:///0123456789", p, 8), -ENAMETOOLONG);
}
END_TEST

static int fetch(const char *url, const char *sha, struct download_error *err)
{
        uint64_t size = 0;
        int r = download_to_fd(&opts, url, out_fd, sha, NULL, NULL, err, &size);

        if (r == 0)
                ck_assert_uint_eq(size, (uint64_t)lseek(out_fd, 0, SEEK_END));
        return r;
}

static void assert_refused(const char *url, const char *code)
{
        struct download_error err;

        ck_assert_int_eq(ftruncate(out_fd, 0), 0);
        ck_assert_int_eq(fetch(url, secret_sha, &err), -EPROTO);
        ck_assert_str_eq(err.code, code);
        ck_assert_int_eq(err.status, 422);
        ck_assert_str_eq(err.actual_sha256, "");
        ck_assert_ptr_null(strstr(err.detail, "bytes"));
        ck_assert_int_eq((int)lseek(out_fd, 0, SEEK_END), 0); /* nothing read */
}

START_TEST(test_file_url_download)
{
        char url[PATH_MAX + 128], link[PATH_MAX + 64], buf[64] = "";
        struct download_error err;

        snprintf(url, sizeof(url), "file://%s", kernel);
        ck_assert_int_eq(fetch(url, kernel_sha, &err), 0);
        ck_assert_int_eq(pread(out_fd, buf, sizeof(buf) - 1, 0), 10);
        ck_assert_str_eq(buf, "the kernel");
        ck_assert_uint_eq(err.attempts, 1);
        /* Outside, by name, spelt with %2F, through a symlink inside: refused, unread. */
        snprintf(url, sizeof(url), "file://%s", secret);
        assert_refused(url, "path-not-allowed");
        assert_refused("file:///etc/passwd", "path-not-allowed");
        size_t n = (size_t)snprintf(url, sizeof(url), "file:///");
        for (const char *c = secret + 1; *c && n + 4 < sizeof(url); c++) {
                if (*c == '/') {
                        memcpy(url + n, "%2F", 3);
                        n += 3;
                } else
                        url[n++] = *c;
        }
        url[n] = 0;
        assert_refused(url, "path-not-allowed");
        snprintf(link, sizeof(link), "%s/escape", allowed);
        ck_assert_int_eq(symlink(secret, link), 0);
        snprintf(url, sizeof(url), "file://%s", link);
        assert_refused(url, "path-not-allowed");
        assert_refused("file:///a/../b", "path-not-allowed"); /* not a valid path */
        /* A FIFO inside: not opened for reading (it would block). */
        snprintf(link, sizeof(link), "%s/fifo", allowed);
        ck_assert_int_eq(mkfifo(link, 0600), 0);
        snprintf(url, sizeof(url), "file://%s", link);
        assert_refused(url, "not-a-regular-file");
        /* Missing: the download failed, as libcurl's "couldn't open" did. */
        snprintf(url, sizeof(url), "file://%s.missing", kernel);
        ck_assert_int_eq(fetch(url, kernel_sha, &err), -EPROTO);
        ck_assert_str_eq(err.code, "download-failed");
        ck_assert_int_eq(err.status, 502);
        ck_assert_ptr_nonnull(strstr(err.curl_error, "ENOENT"));
        /* Inside, the wrong digest: the actual one, as for a path. */
        snprintf(url, sizeof(url), "file://%s", kernel);
        ck_assert_int_eq(fetch(url, secret_sha, &err), -EPROTO);
        ck_assert_str_eq(err.code, "digest-mismatch");
        ck_assert_str_eq(err.actual_sha256, kernel_sha);
        /* Larger than the cap. */
        opts.max_bytes = 5;
        ck_assert_int_eq(fetch(url, kernel_sha, &err), -EPROTO);
        ck_assert_str_eq(err.code, "download-too-large");
        /* Without directories (the caller checked): opened by name. */
        opts.max_bytes = 1 << 20;
        opts.file_dirs = NULL;
        opts.n_file_dirs = 0;
        snprintf(url, sizeof(url), "file://%s", secret);
        ck_assert_int_eq(fetch(url, secret_sha, &err), 0);
        snprintf(url, sizeof(url), "file://%s", link); /* still not a FIFO */
        ck_assert_int_eq(fetch(url, kernel_sha, &err), -EPROTO);
        ck_assert_str_eq(err.code, "not-a-regular-file");
}
END_TEST

static bool stop_now(void *userdata, uint64_t done, uint64_t total)
{
        (void)done;
        (void)total;
        ++*(int *)userdata;
        return false;
}

START_TEST(test_file_url_shutting_down)
{
        char url[PATH_MAX + 64];
        struct download_error err;
        uint64_t size = 0;
        int calls = 0;

        snprintf(url, sizeof(url), "file://%s", kernel);
        ck_assert_int_eq(
                download_to_fd(&opts, url, out_fd, kernel_sha, stop_now, &calls, &err, &size),
                -EPROTO);
        ck_assert_str_eq(err.code, "shutting-down");
        ck_assert_int_eq(err.status, 503);
        ck_assert_int_eq(calls, 1);
}
END_TEST

static Suite *download_suite(void)
{
        Suite *s = suite_create("download");
        TCase *tc = tcase_create("file");

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_file_url_path);
        tcase_add_test(tc, test_file_url_download);
        tcase_add_test(tc, test_file_url_shutting_down);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(download_suite)
