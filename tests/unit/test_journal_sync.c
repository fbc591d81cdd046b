/*
 * test_journal_sync.c: what agent/journal.c makes durable, and in which order, seen through
 * its system calls: this suite defines fdatasync(), fsync() and renameat() itself (a symbol of
 * the executable wins over libc's for the static lfagent library), records each call with
 * what the descriptor is (the inode, whether a directory, the file's size then) and passes it
 * on to the kernel, or fails it on demand.
 *
 * Why a suite of its own: a journal that skips its fdatasync passes every functional test
 * (the page cache answers the reads); only a power cut shows it, which the loop-device test of
 * test_faults.py imitates as root. Here the promise is checked on every machine: an append
 * returns 0 only after an fdatasync of the journal that covers the new line; a compaction
 * syncs the new file before its rename and the directory after it. (tests/mutation: the
 * mutations journal-fdatasync-dropped, journal-compact-fsync-dropped,
 * journal-compact-dirsync-dropped.)
 *
 * Single-threaded; one directory per test under $LUOFLEET_TEST_TMP.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "journal.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "testutil.h"

#define JNAME "journal.jsonl"

/* ---- the interposed calls -------------------------------------------------------------- */

struct sync_event {
        char call; /* 'd' fdatasync, 's' fsync, 'r' renameat */
        bool is_dir;
        ino_t ino;
        off_t size;
        int err; /* the errno it returned, 0 on success */
};

static struct sync_event events[64];
static unsigned n_events;
static bool recording;
static int fail_fdatasync; /* an errno the next fdatasync() returns, 0: none */

static void record(char call, int fd, int err)
{
        struct sync_event *e;
        struct stat st;

        if (!recording || n_events >= ELEMENTSOF(events))
                return;
        e = &events[n_events++];
        *e = (struct sync_event){ .call = call, .err = err };
        if (fd >= 0 && fstat(fd, &st) == 0) {
                e->is_dir = S_ISDIR(st.st_mode);
                e->ino = st.st_ino;
                e->size = st.st_size;
        }
}

int fdatasync(int fd)
{
        if (fail_fdatasync) {
                int e = fail_fdatasync;
                fail_fdatasync = 0;
                record('d', fd, e);
                errno = e;
                return -1;
        }
        long r = syscall(SYS_fdatasync, fd);
        record('d', fd, r < 0 ? errno : 0);
        return (int)r;
}

int fsync(int fd)
{
        long r = syscall(SYS_fsync, fd);
        record('s', fd, r < 0 ? errno : 0);
        return (int)r;
}

int renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)
{
#ifdef SYS_renameat
        long r = syscall(SYS_renameat, olddirfd, oldpath, newdirfd, newpath);
#else
        long r = syscall(SYS_renameat2, olddirfd, oldpath, newdirfd, newpath, 0);
#endif
        record('r', -1, r < 0 ? errno : 0);
        return (int)r;
}

/* ---- fixture ---------------------------------------------------------------------------- */

static char test_dir[PATH_MAX];
static int test_dfd = -1;

static void setup(void)
{
        testutil_mkdtemp(test_dir, sizeof(test_dir), "test_journal_sync");
        test_dfd = open(test_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        ck_assert_int_ge(test_dfd, 0);
        n_events = 0;
        recording = false;
        fail_fdatasync = 0;
}

static void teardown(void)
{
        recording = false;
        closep(&test_dfd);
        testutil_rm_rf(test_dir);
}

static struct stat stat_of(const char *name)
{
        struct stat st;

        ck_assert_int_eq(fstatat(test_dfd, name, &st, AT_SYMLINK_NOFOLLOW), 0);
        return st;
}

static struct stat dir_stat(void)
{
        struct stat st;

        ck_assert_int_eq(fstat(test_dfd, &st), 0);
        return st;
}

static int append(struct journal *j, uint64_t index)
{
        /* 99 bytes + '\n' for 100 <= index <= 999 */
        json_t *rec = json_pack("{s:I,s:s,s:s}", "index", (json_int_t)index, "kind", "transition",
                                "pad", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
        ck_assert_ptr_nonnull(rec);
        int r = journal_append(j, rec);
        json_decref(rec);
        return r;
}

static void start(void)
{
        n_events = 0;
        recording = true;
}

/* ---- tests --------------------------------------------------------------------------------- */

/* An append is acknowledged only after an fdatasync of the journal that covers its line. */
START_TEST(test_append_is_synced)
{
        struct journal *j = NULL;

        ck_assert_int_eq(journal_open(test_dfd, JNAME, 0, &j, NULL), 0);
        for (uint64_t i = 100; i < 103; i++) {
                start();
                ck_assert_int_eq(append(j, i), 0);
                recording = false;
                struct stat st = stat_of(JNAME);
                ck_assert_int_eq(st.st_size, (off_t)(i - 99) * 100);
                /* exactly one call, an fdatasync of the journal with the whole line in it */
                ck_assert_uint_eq(n_events, 1);
                ck_assert_int_eq(events[0].call, 'd');
                ck_assert(!events[0].is_dir);
                ck_assert_uint_eq(events[0].ino, st.st_ino);
                ck_assert_int_eq(events[0].size, st.st_size);
                ck_assert_int_eq(events[0].err, 0);
        }
        journal_free(j);
}
END_TEST

/*
 * A failed fdatasync is a failed append: not acknowledged, not in memory, and the line is cut
 * from the file (a later start-up must not find a record nobody was told about).
 */
START_TEST(test_append_sync_failure)
{
        struct journal *j = NULL;
        struct journal_load_report rep;

        ck_assert_int_eq(journal_open(test_dfd, JNAME, 0, &j, NULL), 0);
        ck_assert_int_eq(append(j, 100), 0);
        fail_fdatasync = EIO;
        start();
        ck_assert_int_eq(append(j, 101), -EIO);
        recording = false;
        ck_assert_uint_ge(n_events, 1);
        ck_assert_int_eq(events[0].call, 'd');
        ck_assert_int_eq(events[0].err, EIO);
        ck_assert_uint_eq(journal_last_index(j), 100);
        ck_assert_uint_eq(journal_count(j), 1);
        ck_assert_uint_eq(journal_size_bytes(j), 100);
        ck_assert_int_eq(stat_of(JNAME).st_size, 100);
        /* the same index is accepted once the disk is back */
        ck_assert_int_eq(append(j, 101), 0);
        journal_free(j);
        ck_assert_int_eq(journal_open(test_dfd, JNAME, 0, &j, &rep), 0);
        ck_assert_uint_eq(rep.records, 2);
        ck_assert_uint_eq(rep.dropped_bytes, 0);
        ck_assert_uint_eq(journal_last_index(j), 101);
        journal_free(j);
}
END_TEST

/*
 * A compaction: the new file is fsynced (all of it) before it is renamed over the journal, and
 * the directory is fsynced after the rename; then the next append syncs the new file.
 */
START_TEST(test_compaction_order)
{
        struct journal *j = NULL;
        int rename_at = -1, file_sync = -1, dir_sync = -1;

        ck_assert_int_eq(journal_open(test_dfd, JNAME, 4096, &j, NULL), 0);
        for (uint64_t i = 100; i < 121; i++)
                ck_assert_int_eq(append(j, i), 0);
        ck_assert_uint_eq(journal_compactions(j), 0);
        ino_t old_ino = stat_of(JNAME).st_ino;

        start();
        ck_assert_int_eq(journal_compact(j), 1);
        recording = false;
        ck_assert_uint_eq(journal_compactions(j), 1);
        struct stat st = stat_of(JNAME), dst = dir_stat();
        ck_assert_uint_ne(st.st_ino, old_ino);

        for (unsigned i = 0; i < n_events; i++) {
                const struct sync_event *e = &events[i];
                ck_assert_int_eq(e->err, 0);
                if (e->call == 'r' && rename_at < 0)
                        rename_at = (int)i;
                else if (e->call == 's' && !e->is_dir && e->ino == st.st_ino && rename_at < 0)
                        file_sync = (int)i;
                else if (e->call == 's' && e->is_dir && e->ino == dst.st_ino && rename_at >= 0)
                        dir_sync = (int)i;
        }
        ck_assert_msg(rename_at >= 0, "no rename");
        ck_assert_msg(file_sync >= 0, "the compacted file was not fsynced before its rename");
        ck_assert_int_eq(events[file_sync].size, st.st_size); /* all of it */
        ck_assert_msg(dir_sync >= 0, "the directory was not fsynced after the rename");

        /* the next record goes to the new file, synced */
        start();
        ck_assert_int_eq(append(j, 121), 0);
        recording = false;
        ck_assert_uint_eq(n_events, 1);
        ck_assert_int_eq(events[0].call, 'd');
        ck_assert_uint_eq(events[0].ino, st.st_ino);
        journal_free(j);
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("journal_sync");
        TCase *tc = tcase_create("sync");

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_append_is_synced);
        tcase_add_test(tc, test_append_sync_failure);
        tcase_add_test(tc, test_compaction_order);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(suite)
