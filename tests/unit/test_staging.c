/*
 * test_staging.c: staging path rules (staging.c): the literal checks of a
 * request's path, and the allowed-directory check of staging_run() with
 * symlinks inside, into and out of the allowed directory, /proc/self/fd
 * and a directory given with a symlink in its own name. The simulator is
 * the backend (kexec_file_load is recorded, not done). The shared
 * confinement (common/stagepath.c) directly, and staging through a
 * privilege-separation proxy: the file is opened by the helper (a thread
 * here), which applies its own staging directories whatever the network
 * side allowed.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "config.h"
#include "luofleet/backend.h"
#include "luofleet/log.h"
#include "luofleet/privsep.h"
#include "luofleet/stagepath.h"
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

START_TEST(test_stagepath_open)
{
        char hex[65], p[PATH_MAX + 16], q[PATH_MAX + 16];
        int fd;

        snprintf(p, sizeof(p), "%s/vmlinuz", allowed);
        write_file(p, "kernel", hex);
        fd = stagepath_open(p, dirs, 1);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_ne(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
        ck_assert_int_eq(fcntl(fd, F_GETFL) & O_ACCMODE, O_RDONLY);
        close(fd);
        snprintf(q, sizeof(q), "%s/secret", outside);
        write_file(q, "secret", hex);
        ck_assert_int_eq(stagepath_open(q, dirs, 1), -STAGEPATH_NOT_ALLOWED);
        ck_assert_int_eq(stagepath_open(q, dirs, 0), -STAGEPATH_NOT_ALLOWED);
        snprintf(q, sizeof(q), "%s/../outside/secret", allowed);
        ck_assert_int_eq(stagepath_open(q, dirs, 1), -STAGEPATH_NOT_ALLOWED);
        ck_assert_int_eq(stagepath_open("vmlinuz", dirs, 1), -STAGEPATH_NOT_ALLOWED);
        ck_assert_int_eq(stagepath_open(NULL, dirs, 1), -STAGEPATH_NOT_ALLOWED);
        snprintf(q, sizeof(q), "%s/fifo", allowed);
        ck_assert_int_eq(mkfifo(q, 0600), 0);
        ck_assert_int_eq(stagepath_open(q, dirs, 1), -STAGEPATH_NOT_REGULAR);
        ck_assert_int_eq(stagepath_open(allowed, dirs, 1), -STAGEPATH_NOT_ALLOWED);
        snprintf(q, sizeof(q), "%s/missing", allowed);
        ck_assert_int_eq(stagepath_open(q, dirs, 1), -ENOENT);
        ck_assert(stagepath_valid(p));
        ck_assert(!stagepath_valid("/boot/../etc/shadow"));
}
END_TEST

/* ---- staging through a privsep proxy ------------------------------------- */

struct helper_thread {
        struct backend *kernel;
        int fds[_PRIVSEP_CHAN_MAX];
        const struct privsep_files *files;
        pthread_t thread;
};

static void *helper_main(void *userdata)
{
        struct helper_thread *h = userdata;

        (void)privsep_helper_serve(h->kernel, h->fds, h->files);
        return NULL;
}

/*
 * The helper serves this suite's simulator with its own staging directories
 * (helper_dirs); the network side's are dirs[]. Returns the proxy.
 */
static struct backend *proxy_start(struct helper_thread *h, const struct privsep_files *files)
{
        int mine[_PRIVSEP_CHAN_MAX], pair[2];
        struct backend *proxy = NULL;
        char msg[256] = "";

        h->kernel = backend;
        h->files = files;
        for (int i = 0; i < _PRIVSEP_CHAN_MAX; i++) {
                ck_assert_int_eq(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair), 0);
                mine[i] = pair[0];
                h->fds[i] = pair[1];
        }
        ck_assert_int_eq(pthread_create(&h->thread, NULL, helper_main, h), 0);
        ck_assert_int_eq(privsep_proxy_new(mine, 0, NULL, &proxy, msg, sizeof(msg)), 0);
        return proxy;
}

static void proxy_stop(struct helper_thread *h, struct backend *proxy)
{
        backend_free(proxy);
        pthread_join(h->thread, NULL);
        for (int i = 0; i < _PRIVSEP_CHAN_MAX; i++)
                close(h->fds[i]);
}

static const char *stage_via(struct backend *b, const char *path, const char *hex)
{
        struct backend *saved = backend;
        const char *code;

        backend = b;
        code = stage(path, hex);
        backend = saved;
        return code;
}

START_TEST(test_staging_through_the_helper)
{
        char hex[65], p[PATH_MAX + 16], q[PATH_MAX + 16], qhex[65];
        char *helper_dirs[1] = { allowed };
        struct privsep_files files = { .staging_dirs = helper_dirs, .n_staging_dirs = 1 };
        struct helper_thread h;
        struct backend *proxy;
        bool loaded = false;

        snprintf(p, sizeof(p), "%s/vmlinuz", allowed);
        write_file(p, "kernel", hex);
        snprintf(q, sizeof(q), "%s/secret", outside);
        write_file(q, "secret", qhex);
        proxy = proxy_start(&h, &files);

        ck_assert_str_eq(stage_via(proxy, p, hex), "ok");
        ck_assert_int_eq(backend->ops->kexec_loaded(backend, &loaded), 0);
        ck_assert(loaded);
        ck_assert_str_eq(stage_via(proxy, q, qhex), "path-not-allowed");
        snprintf(q, sizeof(q), "%s/missing", allowed);
        ck_assert_str_eq(stage_via(proxy, q, hex), "file-not-found");
        snprintf(q, sizeof(q), "%s/fifo", allowed);
        ck_assert_int_eq(mkfifo(q, 0600), 0);
        ck_assert_str_eq(stage_via(proxy, q, hex), "not-a-regular-file");

        /* The network side allows "outside" too; the helper does not: refused there. */
        dirs[0] = allowed;
        dirs[1] = outside;
        staging_set_allowed_dirs(dirs, 2);
        snprintf(q, sizeof(q), "%s/secret", outside);
        ck_assert_str_eq(stage_via(proxy, q, qhex), "path-not-allowed");
        ck_assert_str_eq(stage_via(proxy, p, hex), "ok");
        proxy_stop(&h, proxy);
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
        tcase_add_test(tc, test_stagepath_open);
        tcase_add_test(tc, test_staging_through_the_helper);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(staging_suite)
