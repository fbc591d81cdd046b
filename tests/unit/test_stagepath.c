/*
 * test_stagepath.c: the staging confinement (common/stagepath.c) on its
 * own, each case with openat2 and again with the component-by-component
 * fallback (stagepath_force_fallback()): what is inside, outside, through
 * symlinks either way, dangling ones (the same answer whatever they point
 * at), the allowed directory given through a symlink and through somebody
 * else's symlink, the hard-link rule, descriptor flags and no leaked
 * descriptors. Then the race of issue 12 item 2: a child exchanges a real
 * directory inside the allowed one with a symlink to a directory outside
 * (renameat2(RENAME_EXCHANGE)) as fast as it can for 10 s while this
 * process opens the file through that directory in a loop, both ways in
 * turn: the file outside is never opened. The parts that need another
 * owner (chown, lchown) run only as root.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "luofleet/stagepath.h"
#include "testutil.h"

#define NOBODY 65534
#define RACE_SECONDS 10

static char tmpdir[PATH_MAX], allowed[PATH_MAX + 16], outside[PATH_MAX + 16];
static char kernel[PATH_MAX + 32], secret[PATH_MAX + 32];
static char *dirs[2];
static int fds_before;

static void write_file(const char *path, const char *data)
{
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write(fd, data, strlen(data)), (ssize_t)strlen(data));
        close(fd);
}

static void setup(void)
{
        char made[PATH_MAX];

        testutil_mkdtemp(made, sizeof(made), "test_stagepath");
        /* The canonical name: the checks compare names. */
        ck_assert_ptr_nonnull(realpath(made, tmpdir));
        snprintf(allowed, sizeof(allowed), "%s/allowed", tmpdir);
        snprintf(outside, sizeof(outside), "%s/outside", tmpdir);
        ck_assert_int_eq(mkdir(allowed, 0755), 0);
        ck_assert_int_eq(mkdir(outside, 0700), 0);
        snprintf(kernel, sizeof(kernel), "%s/vmlinuz", allowed);
        snprintf(secret, sizeof(secret), "%s/secret", outside);
        write_file(kernel, "kernel");
        write_file(secret, "secret");
        dirs[0] = allowed;
        dirs[1] = NULL;
        fds_before = testutil_count_fds();
}

static void teardown(void)
{
        stagepath_force_fallback(false);
        ck_assert_int_eq(testutil_count_fds(), fds_before);
        testutil_rm_rf(tmpdir);
}

static void path_in(char *buf, size_t size, const char *dir, const char *name)
{
        ck_assert_int_lt(snprintf(buf, size, "%s/%s", dir, name), (int)size);
}

/* stagepath_open() of path must give the file with this content. */
static void assert_opens(const char *path, const char *want)
{
        char buf[64] = "";
        int fd = stagepath_open(path, dirs, 1);

        ck_assert_msg(fd >= 0, "%s: %d", path, fd);
        ck_assert_int_ne(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
        ck_assert_int_eq(fcntl(fd, F_GETFL) & (O_ACCMODE | O_NONBLOCK), O_RDONLY);
        ck_assert_int_eq(read(fd, buf, sizeof(buf) - 1), (ssize_t)strlen(want));
        ck_assert_str_eq(buf, want);
        close(fd);
}

START_TEST(test_inside_and_outside)
{
        char p[PATH_MAX + 64];

        stagepath_force_fallback(_i);
        assert_opens(kernel, "kernel");
        /* A file in a directory inside. */
        path_in(p, sizeof(p), allowed, "sub");
        ck_assert_int_eq(mkdir(p, 0755), 0);
        path_in(p, sizeof(p), allowed, "sub/vmlinuz-2");
        write_file(p, "kernel 2");
        assert_opens(p, "kernel 2");
        /* Outside by name, not valid, no directories. */
        ck_assert_int_eq(stagepath_open(secret, dirs, 1), -STAGEPATH_NOT_ALLOWED);
        ck_assert_int_eq(stagepath_open(kernel, dirs, 0), -STAGEPATH_NOT_ALLOWED);
        path_in(p, sizeof(p), allowed, "../outside/secret");
        ck_assert_int_eq(stagepath_open(p, dirs, 1), -STAGEPATH_NOT_ALLOWED);
        ck_assert_int_eq(stagepath_open("vmlinuz", dirs, 1), -STAGEPATH_NOT_ALLOWED);
        ck_assert_int_eq(stagepath_open(NULL, dirs, 1), -STAGEPATH_NOT_ALLOWED);
        ck_assert_int_eq(stagepath_open("/etc/passwd", dirs, 1), -STAGEPATH_NOT_ALLOWED);
        /* The allowed directory itself; a name that only starts like it. */
        ck_assert_int_eq(stagepath_open(allowed, dirs, 1), -STAGEPATH_NOT_ALLOWED);
        snprintf(p, sizeof(p), "%s-evil", allowed);
        ck_assert_int_eq(mkdir(p, 0700), 0);
        snprintf(p, sizeof(p), "%s-evil/vmlinuz", allowed);
        write_file(p, "evil");
        ck_assert_int_eq(stagepath_open(p, dirs, 1), -STAGEPATH_NOT_ALLOWED);
        /* Inside but not a regular file; missing; under a regular file. */
        path_in(p, sizeof(p), allowed, "fifo");
        ck_assert_int_eq(mkfifo(p, 0600), 0);
        ck_assert_int_eq(stagepath_open(p, dirs, 1), -STAGEPATH_NOT_REGULAR);
        path_in(p, sizeof(p), allowed, "sub");
        ck_assert_int_eq(stagepath_open(p, dirs, 1), -STAGEPATH_NOT_REGULAR);
        path_in(p, sizeof(p), allowed, "missing");
        ck_assert_int_eq(stagepath_open(p, dirs, 1), -ENOENT);
        path_in(p, sizeof(p), allowed, "nodir/vmlinuz");
        ck_assert_int_eq(stagepath_open(p, dirs, 1), -ENOENT);
        path_in(p, sizeof(p), allowed, "vmlinuz/x");
        ck_assert_int_eq(stagepath_open(p, dirs, 1), -ENOTDIR);
        /* "/" allows everything; a missing directory nothing but "not found". */
        dirs[0] = (char *)"/";
        assert_opens(secret, "secret");
        path_in(p, sizeof(p), tmpdir, "nonexistent");
        dirs[0] = p;
        ck_assert_int_eq(stagepath_open(kernel, dirs, 1), -STAGEPATH_NOT_ALLOWED);
        char q[PATH_MAX + 96];
        path_in(q, sizeof(q), p, "vmlinuz");
        ck_assert_int_eq(stagepath_open(q, dirs, 1), -ENOENT);
        ck_assert(!stagepath_allowed(kernel, kernel, dirs, 1));
        ck_assert(stagepath_allowed(q, NULL, dirs, 1));
}
END_TEST

START_TEST(test_symlinks)
{
        char p[PATH_MAX + 64], q[PATH_MAX + 64];

        stagepath_force_fallback(_i);
        /* Inside to inside, relative and absolute: the file inside. */
        path_in(p, sizeof(p), allowed, "current");
        ck_assert_int_eq(symlink("vmlinuz", p), 0);
        assert_opens(p, "kernel");
        path_in(p, sizeof(p), allowed, "current-abs");
        ck_assert_int_eq(symlink(kernel, p), 0);
        assert_opens(p, "kernel");
        /* Outside to inside: the file is inside. */
        path_in(p, sizeof(p), outside, "in");
        ck_assert_int_eq(symlink(kernel, p), 0);
        assert_opens(p, "kernel");
        /* Inside to outside: a file, a directory, "..": refused. */
        path_in(p, sizeof(p), allowed, "escape");
        ck_assert_int_eq(symlink(secret, p), 0);
        ck_assert_int_eq(stagepath_open(p, dirs, 1), -STAGEPATH_NOT_ALLOWED);
        path_in(p, sizeof(p), allowed, "outdir");
        ck_assert_int_eq(symlink(outside, p), 0);
        path_in(p, sizeof(p), allowed, "outdir/secret");
        ck_assert_int_eq(stagepath_open(p, dirs, 1), -STAGEPATH_NOT_ALLOWED);
        path_in(p, sizeof(p), allowed, "up");
        ck_assert_int_eq(symlink("../outside/secret", p), 0);
        ck_assert_int_eq(stagepath_open(p, dirs, 1), -STAGEPATH_NOT_ALLOWED);
        /*
         * Dangling, to a missing file outside or inside: "not allowed" like the
         * existing one, so the answer does not tell whether something exists
         * out there (the helper resolves as root).
         */
        path_in(p, sizeof(p), allowed, "dangling-out");
        path_in(q, sizeof(q), outside, "missing");
        ck_assert_int_eq(symlink(q, p), 0);
        ck_assert_int_eq(stagepath_open(p, dirs, 1), -STAGEPATH_NOT_ALLOWED);
        path_in(p, sizeof(p), allowed, "dangling-in");
        ck_assert_int_eq(symlink("missing", p), 0);
        ck_assert_int_eq(stagepath_open(p, dirs, 1), -STAGEPATH_NOT_ALLOWED);
        /* /proc/self/fd/N names the file it is open on, inside or not. */
        int fd = open(kernel, O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
        assert_opens(p, "kernel");
        close(fd);
        fd = open(secret, O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
        ck_assert_int_eq(stagepath_open(p, dirs, 1), -STAGEPATH_NOT_ALLOWED);
        close(fd);
}
END_TEST

START_TEST(test_dir_through_a_symlink)
{
        char alias[PATH_MAX + 64], p[PATH_MAX + 96];

        stagepath_force_fallback(_i);
        /* Ours (or root's): followed, by its name and by the target's. */
        path_in(alias, sizeof(alias), tmpdir, "alias");
        ck_assert_int_eq(symlink("allowed", alias), 0);
        dirs[0] = alias;
        path_in(p, sizeof(p), alias, "vmlinuz");
        assert_opens(p, "kernel");
        assert_opens(kernel, "kernel");
        path_in(p, sizeof(p), alias, "missing");
        ck_assert_int_eq(stagepath_open(p, dirs, 1), -ENOENT);
        ck_assert_int_eq(stagepath_open(secret, dirs, 1), -STAGEPATH_NOT_ALLOWED);
        /* A relative directory is taken from the working directory. */
        char cwd[PATH_MAX];
        ck_assert_ptr_nonnull(getcwd(cwd, sizeof(cwd)));
        ck_assert_int_eq(chdir(tmpdir), 0);
        dirs[0] = (char *)"alias";
        assert_opens(kernel, "kernel");
        ck_assert_int_eq(chdir(cwd), 0);
        if (geteuid() != 0)
                return;
        /*
         * Somebody else's symlink (the run user turning STATE_DIR/kernels into a
         * link to /root): the directory allows nothing, by either name.
         */
        ck_assert_int_eq(lchown(alias, NOBODY, NOBODY), 0);
        dirs[0] = alias;
        path_in(p, sizeof(p), alias, "vmlinuz");
        ck_assert_int_eq(stagepath_open(p, dirs, 1), -STAGEPATH_NOT_ALLOWED);
        ck_assert_int_eq(stagepath_open(kernel, dirs, 1), -STAGEPATH_NOT_ALLOWED);
        path_in(p, sizeof(p), alias, "missing");
        ck_assert_int_eq(stagepath_open(p, dirs, 1), -STAGEPATH_NOT_ALLOWED);
        ck_assert(!stagepath_allowed(kernel, kernel, dirs, 1));
        ck_assert(!stagepath_allowed(p, NULL, dirs, 1));
}
END_TEST

START_TEST(test_hard_links)
{
        char p[PATH_MAX + 64], shared[PATH_MAX + 64];

        stagepath_force_fallback(_i);
        /* Two links of our own file in our own 0755 directory: fine. */
        path_in(p, sizeof(p), allowed, "vmlinuz-link");
        ck_assert_int_eq(link(kernel, p), 0);
        assert_opens(p, "kernel");
        assert_opens(kernel, "kernel"); /* the first name has two links too now */
        /* A directory others may write: anyone could have made the link. */
        path_in(shared, sizeof(shared), allowed, "shared");
        ck_assert_int_eq(mkdir(shared, 0755), 0);
        ck_assert_int_eq(chmod(shared, 01777), 0);
        path_in(p, sizeof(p), shared, "vmlinuz");
        ck_assert_int_eq(link(kernel, p), 0);
        ck_assert_int_eq(stagepath_open(p, dirs, 1), -STAGEPATH_NOT_ALLOWED);
        ck_assert_int_eq(chmod(shared, 0775), 0); /* group write: the same */
        ck_assert_int_eq(stagepath_open(p, dirs, 1), -STAGEPATH_NOT_ALLOWED);
        ck_assert_int_eq(chmod(shared, 0755), 0);
        assert_opens(p, "kernel");
        /* One link only: the directory's mode does not matter. */
        path_in(p, sizeof(p), shared, "single");
        write_file(p, "single");
        ck_assert_int_eq(chmod(shared, 01777), 0);
        assert_opens(p, "single");
        if (geteuid() != 0)
                return;
        /*
         * The attack: root's file (the secret, 0600 in a 0700 directory)
         * hard-linked into a directory of the run user's. Refused, and so is
         * the reverse (another user's file linked into root's directory).
         */
        path_in(shared, sizeof(shared), allowed, "runuser");
        ck_assert_int_eq(mkdir(shared, 0755), 0);
        ck_assert_int_eq(chown(shared, NOBODY, NOBODY), 0);
        path_in(p, sizeof(p), shared, "shadow");
        ck_assert_int_eq(link(secret, p), 0);
        ck_assert_int_eq(stagepath_open(p, dirs, 1), -STAGEPATH_NOT_ALLOWED);
        ck_assert_int_eq(chown(secret, NOBODY, NOBODY), 0); /* the run user's own file: fine */
        assert_opens(p, "secret");
        path_in(p, sizeof(p), allowed, "nobodys");
        ck_assert_int_eq(link(secret, p), 0);
        ck_assert_int_eq(stagepath_open(p, dirs, 1), -STAGEPATH_NOT_ALLOWED);
}
END_TEST

/* ---- the race ------------------------------------------------------------ */

static volatile sig_atomic_t swapper_stop;

static void on_term(int sig)
{
        (void)sig;
        swapper_stop = 1;
}

/* The child: exchange a and b until SIGTERM, then write the count to fd and exit. */
static void swapper(const char *a, const char *b, int fd)
{
        unsigned long swaps = 0;

        signal(SIGTERM, on_term);
        while (!swapper_stop)
                if (renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) == 0)
                        swaps++;
        (void)!write(fd, &swaps, sizeof(swaps));
        _exit(0);
}

START_TEST(test_swap_race)
{
        char real_dir[PATH_MAX + 64], link_dir[PATH_MAX + 64], p[PATH_MAX + 96];
        unsigned long swaps = 0, opened = 0, secret_opened = 0, refused = 0, tries = 0;
        struct stat sst, kst;
        struct timespec start, now;
        int pipefd[2], status;
        pid_t child;

        /*
         * allowed/d is a real directory holding a kernel, allowed/s a symlink to
         * the directory outside, which holds a file of the same name. The
         * child exchanges the two names; this process opens allowed/d/vmlinuz.
         */
        path_in(real_dir, sizeof(real_dir), allowed, "d");
        path_in(link_dir, sizeof(link_dir), allowed, "s");
        ck_assert_int_eq(mkdir(real_dir, 0755), 0);
        ck_assert_int_eq(symlink(outside, link_dir), 0);
        path_in(p, sizeof(p), real_dir, "vmlinuz");
        write_file(p, "kernel in d");
        ck_assert_int_eq(stat(p, &kst), 0);
        path_in(p, sizeof(p), outside, "vmlinuz");
        write_file(p, "the secret");
        ck_assert_int_eq(stat(p, &sst), 0);
        path_in(p, sizeof(p), real_dir, "vmlinuz");

        ck_assert_int_eq(pipe2(pipefd, O_CLOEXEC), 0);
        child = fork();
        ck_assert_int_ge(child, 0);
        if (child == 0) {
                close(pipefd[0]);
                swapper(real_dir, link_dir, pipefd[1]);
        }
        close(pipefd[1]);
        clock_gettime(CLOCK_MONOTONIC, &start);
        do {
                struct stat st;
                /* openat2 and the fallback in turn */
                stagepath_force_fallback(tries++ % 2);
                int fd = stagepath_open(p, dirs, 1);
                if (fd >= 0) {
                        ck_assert_int_eq(fstat(fd, &st), 0);
                        if (st.st_ino == sst.st_ino && st.st_dev == sst.st_dev)
                                secret_opened++;
                        else if (st.st_ino == kst.st_ino && st.st_dev == kst.st_dev)
                                opened++;
                        close(fd);
                } else {
                        /* Whatever the timing: not allowed or not found, never more. */
                        ck_assert_msg(fd == -STAGEPATH_NOT_ALLOWED || fd == -ENOENT, "%d", fd);
                        refused++;
                }
                clock_gettime(CLOCK_MONOTONIC, &now);
        } while (now.tv_sec - start.tv_sec < RACE_SECONDS);
        ck_assert_int_eq(kill(child, SIGTERM), 0);
        ck_assert_int_eq(read(pipefd[0], &swaps, sizeof(swaps)), (ssize_t)sizeof(swaps));
        close(pipefd[0]);
        ck_assert_int_eq(waitpid(child, &status, 0), child);
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        stagepath_force_fallback(false);
        fprintf(stderr,
                "swap race: %lu swaps, %lu opens: %lu of the kernel, %lu refused, %lu of "
                "the file outside\n",
                swaps, tries, opened, refused, secret_opened);
        ck_assert_uint_eq(secret_opened, 0);
        /* The race did run: names were exchanged, and both outcomes were seen. */
        ck_assert_uint_gt(swaps, 1000);
        ck_assert_uint_gt(opened, 0);
        ck_assert_uint_gt(refused, 0);
}
END_TEST

static Suite *stagepath_suite(void)
{
        Suite *s = suite_create("stagepath");
        TCase *tc = tcase_create("core");
        TCase *race = tcase_create("race");

        tcase_add_checked_fixture(tc, setup, teardown);
        /* _i: 0 with openat2, 1 with the fallback */
        tcase_add_loop_test(tc, test_inside_and_outside, 0, 2);
        tcase_add_loop_test(tc, test_symlinks, 0, 2);
        tcase_add_loop_test(tc, test_dir_through_a_symlink, 0, 2);
        tcase_add_loop_test(tc, test_hard_links, 0, 2);
        suite_add_tcase(s, tc);
        tcase_add_checked_fixture(race, setup, teardown);
        tcase_set_timeout(race, RACE_SECONDS * 6);
        tcase_add_test(race, test_swap_race);
        suite_add_tcase(s, race);
        return s;
}

TESTUTIL_MAIN(stagepath_suite)
