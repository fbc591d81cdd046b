/*
 * test_journal.c: unit tests of agent/journal.c: create, append and reload,
 * refusal of bad records, recovery from torn and corrupt files, compaction
 * (on append, at open, called directly) and its failure paths, find_after.
 *
 * Single-threaded. Each test gets its own directory under $LUOFLEET_TEST_TMP
 * (or /tmp), removed by the teardown.
 */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "journal.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "testutil.h"

#define JNAME "journal.jsonl"
#define JTMP "journal.jsonl.compact"

static char test_dir[PATH_MAX];
static int test_dfd = -1;
static int fds_at_setup;

static void setup(void)
{
        fds_at_setup = testutil_count_fds();
        testutil_mkdtemp(test_dir, sizeof(test_dir), "test_journal");
        test_dfd = open(test_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        ck_assert_int_ge(test_dfd, 0);
}

static void teardown(void)
{
        DIR *d = opendir(test_dir);
        struct dirent *de;

        if (d) {
                while ((de = readdir(d))) {
                        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                                continue;
                        if (unlinkat(dirfd(d), de->d_name, 0) < 0 && errno == EISDIR)
                                (void)unlinkat(dirfd(d), de->d_name, AT_REMOVEDIR);
                }
                closedir(d);
        }
        closep(&test_dfd);
        test_dfd = -1;
        ck_assert_int_eq(rmdir(test_dir), 0);
        ck_assert_int_eq(testutil_count_fds(), fds_at_setup);
}

static void put_file(const char *name, const void *data, size_t len)
{
        _cleanup_close_ int fd =
                openat(test_dfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write_all(fd, data, len), 0);
}

/* The file's size by fstat() on a fresh descriptor. */
static uint64_t file_size(const char *name)
{
        _cleanup_close_ int fd = openat(test_dfd, name, O_RDONLY | O_CLOEXEC);
        struct stat st;

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(fstat(fd, &st), 0);
        return (uint64_t)st.st_size;
}

/* The whole file, NUL-terminated; *ret_len its size. */
static char *get_file(const char *name, size_t *ret_len)
{
        _cleanup_close_ int fd = openat(test_dfd, name, O_RDONLY | O_CLOEXEC);
        size_t len = 0, cap = 4096;
        char *buf = malloc(cap + 1);

        ck_assert_int_ge(fd, 0);
        ck_assert_ptr_nonnull(buf);
        for (;;) {
                if (len == cap) {
                        cap *= 2;
                        buf = realloc(buf, cap + 1);
                        ck_assert_ptr_nonnull(buf);
                }
                ssize_t n = read(fd, buf + len, cap - len);
                ck_assert_int_ge(n, 0);
                if (n == 0)
                        break;
                len += (size_t)n;
        }
        buf[len] = 0;
        if (ret_len)
                *ret_len = len;
        return buf;
}

static bool file_exists(const char *name)
{
        return faccessat(test_dfd, name, F_OK, AT_SYMLINK_NOFOLLOW) == 0;
}

static struct journal *jopen(uint64_t max_bytes, struct journal_load_report *rep)
{
        struct journal *j = NULL;
        struct journal_load_report dummy;

        ck_assert_int_eq(journal_open(test_dfd, JNAME, max_bytes, &j, rep ? rep : &dummy), 0);
        ck_assert_ptr_nonnull(j);
        return j;
}

static int append_pack(struct journal *j, json_t *rec)
{
        ck_assert_ptr_nonnull(rec);
        int r = journal_append(j, rec);
        json_decref(rec);
        return r;
}

static int append_simple(struct journal *j, uint64_t index, const char *kind)
{
        return append_pack(j, json_pack("{s:I,s:s}", "index", (json_int_t)index, "kind", kind));
}

/*
 * A record whose line is exactly 99 bytes (100 with '\n') for 100 <= index
 * <= 999: {"index":NNN,"kind":"transition","pad":"<57 x>"}.
 */
#define REC100_PAD "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
static json_t *rec100(uint64_t index)
{
        return json_pack("{s:I,s:s,s:s}", "index", (json_int_t)index, "kind", "transition", "pad",
                         REC100_PAD);
}

static int append100(struct journal *j, uint64_t index)
{
        return append_pack(j, rec100(index));
}

static void check_monotonic(const struct journal *j)
{
        for (size_t i = 1; i < journal_count(j); i++)
                ck_assert_uint_lt(journal_get(j, i - 1)->index, journal_get(j, i)->index);
}

START_TEST(test_open_empty)
{
        struct journal_load_report rep = { .records = 99, .torn = true };
        struct journal *j = jopen(0, &rep);
        struct stat st;

        ck_assert_uint_eq(rep.records, 0);
        ck_assert_uint_eq(rep.dropped_bytes, 0);
        ck_assert_uint_eq(rep.first_bad_offset, 0);
        ck_assert(!rep.torn);
        ck_assert_uint_eq(journal_count(j), 0);
        ck_assert_uint_eq(journal_last_index(j), 0);
        ck_assert_uint_eq(journal_first_index(j), 0);
        ck_assert_uint_eq(journal_size_bytes(j), 0);
        ck_assert_uint_eq(journal_find_after(j, 0), 0);
        ck_assert_ptr_null(journal_get(j, 0));
        ck_assert_uint_eq(journal_compactions(j), 0);
        ck_assert_int_eq(journal_last_error(j), 0);
        ck_assert_int_eq(journal_compact(j), 0);
        ck_assert_int_eq(fstatat(test_dfd, JNAME, &st, AT_SYMLINK_NOFOLLOW), 0);
        ck_assert(S_ISREG(st.st_mode));
        ck_assert_uint_eq(st.st_mode & 07777, 0600);
        ck_assert_int_eq(st.st_size, 0);
        ck_assert_ptr_null(journal_free(j));
        ck_assert_ptr_null(journal_free(NULL));

        j = jopen(0, &rep);
        ck_assert_uint_eq(rep.records, 0);
        ck_assert_uint_eq(journal_count(j), 0);
        journal_free(j);
}
END_TEST

START_TEST(test_roundtrip)
{
        static const char *const lines[] = {
                "{\"index\":1,\"kind\":\"start\",\"agent_version\":\"0.1.0\"}",
                "{\"index\":2,\"kind\":\"transition\",\"from\":\"normal\",\"to\":\"prepared\","
                "\"cause\":\"operation\"}",
                "{\"index\":7,\"kind\":\"operation\",\"z\":1,\"a\":[true,null,2.5],"
                "\"operation\":{\"id\":\"op-1\",\"status\":\"running\"},\"u\":\"h\xc3\xa9\\n\"}",
        };
        struct journal_load_report rep;
        struct journal *j = jopen(0, &rep);
        uint64_t total = 0;
        char *content;
        size_t len;

        ck_assert_int_eq(append_pack(j, json_pack("{s:i,s:s,s:s}", "index", 1, "kind", "start",
                                                  "agent_version", "0.1.0")),
                         0);
        ck_assert_int_eq(
                append_pack(j, json_pack("{s:i,s:s,s:s,s:s,s:s}", "index", 2, "kind", "transition",
                                         "from", "normal", "to", "prepared", "cause", "operation")),
                0);
        ck_assert_int_eq(
                append_pack(j, json_pack("{s:i,s:s,s:i,s:[b,n,f],s:{s:s,s:s},s:s}", "index", 7,
                                         "kind", "operation", "z", 1, "a", 1, 2.5, "operation",
                                         "id", "op-1", "status", "running", "u", "h\xc3\xa9\n")),
                0);

        for (int pass = 0; pass < 2; pass++) {
                ck_assert_uint_eq(journal_count(j), 3);
                ck_assert_uint_eq(journal_first_index(j), 1);
                ck_assert_uint_eq(journal_last_index(j), 7);
                ck_assert_uint_eq(journal_get(j, 0)->index, 1);
                ck_assert_uint_eq(journal_get(j, 1)->index, 2);
                ck_assert_uint_eq(journal_get(j, 2)->index, 7);
                ck_assert_str_eq(journal_get(j, 0)->kind, "start");
                ck_assert_str_eq(journal_get(j, 1)->kind, "transition");
                ck_assert_str_eq(journal_get(j, 2)->kind, "operation");
                total = 0;
                for (size_t i = 0; i < 3; i++) {
                        ck_assert_str_eq(journal_get(j, i)->json, lines[i]);
                        ck_assert_uint_eq(journal_get(j, i)->len, strlen(lines[i]));
                        total += strlen(lines[i]) + 1;
                }
                ck_assert_uint_eq(journal_size_bytes(j), total);
                ck_assert_uint_eq(file_size(JNAME), total);
                journal_free(j);
                j = jopen(0, &rep);
                ck_assert_uint_eq(rep.records, 3);
                ck_assert_uint_eq(rep.dropped_bytes, 0);
                ck_assert_uint_eq(rep.first_bad_offset, 0);
                ck_assert(!rep.torn);
        }

        content = get_file(JNAME, &len);
        ck_assert_uint_eq(len, total);
        ck_assert_int_eq(strncmp(content, lines[0], strlen(lines[0])), 0);
        ck_assert_int_eq(content[strlen(lines[0])], '\n');
        ck_assert_int_eq(content[len - 1], '\n');
        free(content);

        /* Appending continues after a reopen. */
        ck_assert_int_eq(append_simple(j, 8, "staging"), 0);
        ck_assert_uint_eq(journal_last_index(j), 8);
        ck_assert_str_eq(journal_get(j, 3)->json, "{\"index\":8,\"kind\":\"staging\"}");
        journal_free(j);
}
END_TEST

START_TEST(test_append_invalid)
{
        struct journal *j = jopen(0, NULL);
        uint64_t size;

        ck_assert_int_eq(append_simple(j, 5, "start"), 0);
        size = journal_size_bytes(j);
        ck_assert_uint_eq(size, strlen("{\"index\":5,\"kind\":\"start\"}") + 1);

        ck_assert_int_eq(append_simple(j, 5, "x"), -EINVAL); /* equal */
        ck_assert_int_eq(append_simple(j, 4, "x"), -EINVAL); /* lower */
        ck_assert_int_eq(append_simple(j, 0, "x"), -EINVAL);
        ck_assert_int_eq(append_pack(j, json_pack("{s:i,s:s}", "index", -6, "kind", "x")), -EINVAL);
        ck_assert_int_eq(append_pack(j, json_pack("{s:s}", "kind", "x")), -EINVAL);
        ck_assert_int_eq(append_pack(j, json_pack("{s:s,s:s}", "index", "6", "kind", "x")),
                         -EINVAL);
        ck_assert_int_eq(append_pack(j, json_pack("{s:f,s:s}", "index", 6.0, "kind", "x")),
                         -EINVAL);
        ck_assert_int_eq(append_pack(j, json_pack("{s:i}", "index", 6)), -EINVAL);
        ck_assert_int_eq(append_pack(j, json_pack("{s:i,s:i}", "index", 6, "kind", 1)), -EINVAL);
        ck_assert_int_eq(
                append_pack(j, json_pack("{s:i,s:s#}", "index", 6, "kind", "a\0b", (int)3)),
                -EINVAL);
        ck_assert_int_eq(append_pack(j, json_pack("[i]", 6)), -EINVAL);
        ck_assert_int_eq(journal_append(j, NULL), -EINVAL);

        ck_assert_uint_eq(journal_count(j), 1);
        ck_assert_uint_eq(journal_last_index(j), 5);
        ck_assert_uint_eq(journal_size_bytes(j), size);
        ck_assert_uint_eq(file_size(JNAME), size);

        /* NUL inside other strings is fine: it is escaped, and read back. */
        ck_assert_int_eq(append_pack(j, json_pack("{s:i,s:s,s:s#}", "index", 6, "kind", "x", "v",
                                                  "a\0b", (int)3)),
                         0);
        ck_assert_str_eq(journal_get(j, 1)->json,
                         "{\"index\":6,\"kind\":\"x\",\"v\":\"a\\u0000b\"}");
        journal_free(j);
        j = jopen(0, NULL);
        ck_assert_uint_eq(journal_count(j), 2);
        journal_free(j);
}
END_TEST

START_TEST(test_append_line_limit)
{
        struct journal_load_report rep;
        struct journal *j = jopen(0, NULL);
        json_t *o = json_pack("{s:i,s:s,s:s}", "index", 1, "kind", "k", "p", "");
        char *s = json_dumps(o, JSON_COMPACT);
        size_t base = strlen(s); /* {"index":1,"kind":"k","p":""} */
        size_t pad = JOURNAL_LINE_MAX - 1 - base;
        char *big = malloc(pad + 2);

        ck_assert_uint_eq(base, 29);
        free(s);
        memset(big, 'a', pad + 1);
        big[pad + 1] = 0;

        /* One byte too long: '\n' included the line would be JOURNAL_LINE_MAX + 1. */
        json_object_set_new(o, "p", json_string(big));
        ck_assert_int_eq(journal_append(j, o), -E2BIG);
        ck_assert_uint_eq(journal_count(j), 0);
        ck_assert_uint_eq(file_size(JNAME), 0);

        /* Exactly JOURNAL_LINE_MAX with its '\n': accepted, and read back. */
        big[pad] = 0;
        json_object_set_new(o, "p", json_string(big));
        ck_assert_int_eq(journal_append(j, o), 0);
        ck_assert_uint_eq(journal_size_bytes(j), JOURNAL_LINE_MAX);
        ck_assert_uint_eq(journal_get(j, 0)->len, JOURNAL_LINE_MAX - 1);
        journal_free(j);

        j = jopen(0, &rep);
        ck_assert_uint_eq(rep.records, 1);
        ck_assert_uint_eq(rep.dropped_bytes, 0);
        ck_assert_uint_eq(journal_size_bytes(j), JOURNAL_LINE_MAX);
        ck_assert_uint_eq(file_size(JNAME), JOURNAL_LINE_MAX);
        journal_free(j);
        json_decref(o);
        free(big);
}
END_TEST

/* Torn and corrupt files: a good prefix, then bad bytes. */
#define GOOD1 "{\"index\":1,\"kind\":\"start\"}\n"
#define GOOD2 "{\"index\":2,\"kind\":\"transition\",\"to\":\"prepared\"}\n"
#define GOOD3 "{\"index\":3,\"kind\":\"operation\"}\n"
#define GOOD_ALL GOOD1 GOOD2 GOOD3
#define L(s) s, sizeof(s) - 1

struct bad_case {
        const char *what;
        const char *prefix; /* good lines */
        size_t prefix_len;
        size_t records;   /* good lines in prefix */
        uint64_t last;    /* index of the last good line */
        const char *tail; /* NULL: tail_len zero bytes */
        size_t tail_len;
        bool torn;
};

static const struct bad_case bad_cases[] = {
        { "last line without newline", L(GOOD_ALL), 3, 3, L("{\"index\":4,\"kind\":\"x\"}"), true },
        { "half a line", L(GOOD_ALL), 3, 3, L("{\"index\":4,\"ki"), true },
        { "NUL-filled tail", L(GOOD_ALL), 3, 3, NULL, 4096, true },
        { "garbage in the middle", L(GOOD1 GOOD2), 2, 2, L("garbage\n" GOOD3), false },
        { "not an object", L(GOOD_ALL), 3, 3, L("[4]\n{\"index\":5,\"kind\":\"x\"}\n"), false },
        { "no index", L(GOOD_ALL), 3, 3, L("{\"kind\":\"x\"}\n"), false },
        { "string index", L(GOOD_ALL), 3, 3, L("{\"index\":\"4\",\"kind\":\"x\"}\n"), false },
        { "real index", L(GOOD_ALL), 3, 3, L("{\"index\":4.0,\"kind\":\"x\"}\n"), false },
        { "negative index", L(GOOD_ALL), 3, 3, L("{\"index\":-4,\"kind\":\"x\"}\n"), false },
        { "huge index", L(GOOD_ALL), 3, 3, L("{\"index\":99999999999999999999,\"kind\":\"x\"}\n"),
          false },
        { "equal index", L(GOOD_ALL), 3, 3, L("{\"index\":3,\"kind\":\"x\"}\n"), false },
        { "lower index", L(GOOD_ALL), 3, 3,
          L("{\"index\":2,\"kind\":\"x\"}\n{\"index\":9,\"kind\":\"x\"}\n"), false },
        { "no kind", L(GOOD_ALL), 3, 3, L("{\"index\":4}\n"), false },
        { "number kind", L(GOOD_ALL), 3, 3, L("{\"index\":4,\"kind\":4}\n"), false },
        { "NUL in kind", L(GOOD_ALL), 3, 3, L("{\"index\":4,\"kind\":\"a\\u0000\"}\n"), false },
        { "duplicate key", L(GOOD_ALL), 3, 3, L("{\"index\":4,\"index\":5,\"kind\":\"x\"}\n"),
          false },
        { "raw NUL in a line", L(GOOD_ALL), 3, 3, L("{\"index\":4,\0\"kind\":\"x\"}\n"), false },
        { "empty line", L(GOOD_ALL), 3, 3,
          L("\n"
            "{\"index\":4,\"kind\":\"x\"}\n"),
          false },
        { "trailing garbage", L(GOOD_ALL), 3, 3, L("{\"index\":4,\"kind\":\"x\"} x\n"), false },
        { "invalid UTF-8", L(GOOD_ALL), 3, 3, L("{\"index\":4,\"kind\":\"\xff\"}\n"), false },
        { "bad first line", "", 0, 0, 0, L("{\"index\":0,\"kind\":\"x\"}\n" GOOD1), false },
        { "garbage only", "", 0, 0, 0,
          L("\x7f"
            "ELF\x02\x01\x01"),
          true },
};

START_TEST(test_bad_tail)
{
        const struct bad_case *c = &bad_cases[_i];
        struct journal_load_report rep;
        struct journal *j;
        size_t len = c->prefix_len + c->tail_len, clen;
        char *data = calloc(1, len + 1), *content;

        memcpy(data, c->prefix, c->prefix_len);
        if (c->tail)
                memcpy(data + c->prefix_len, c->tail, c->tail_len);
        put_file(JNAME, data, len);

        j = jopen(0, &rep);
        ck_assert_msg(rep.records == c->records, "%s: records %zu", c->what, rep.records);
        ck_assert_uint_eq(rep.dropped_bytes, c->tail_len);
        ck_assert_uint_eq(rep.first_bad_offset, c->prefix_len);
        ck_assert_msg(rep.torn == c->torn, "%s: torn %d", c->what, rep.torn);
        ck_assert_uint_eq(journal_count(j), c->records);
        ck_assert_uint_eq(journal_last_index(j), c->last);
        ck_assert_uint_eq(journal_size_bytes(j), c->prefix_len);
        ck_assert_uint_eq(file_size(JNAME), c->prefix_len);
        content = get_file(JNAME, &clen);
        ck_assert_uint_eq(clen, c->prefix_len);
        ck_assert_int_eq(memcmp(content, c->prefix, clen), 0);
        free(content);

        /* Appending afterwards works, and the next open finds a clean file. */
        ck_assert_int_eq(append_simple(j, c->last + 1, "after"), 0);
        journal_free(j);
        j = jopen(0, &rep);
        ck_assert_uint_eq(rep.records, c->records + 1);
        ck_assert_uint_eq(rep.dropped_bytes, 0);
        ck_assert_uint_eq(rep.first_bad_offset, 0);
        ck_assert(!rep.torn);
        ck_assert_uint_eq(journal_last_index(j), c->last + 1);
        ck_assert_str_eq(journal_get(j, c->records)->kind, "after");
        journal_free(j);
        free(data);
}
END_TEST

START_TEST(test_line_too_long)
{
        /* JOURNAL_LINE_MAX + 10 bytes before the first '\n': not a line we write. */
        size_t bad = JOURNAL_LINE_MAX + 10, len = strlen(GOOD_ALL) + bad;
        char *data = malloc(len);
        struct journal_load_report rep;
        struct journal *j;

        memcpy(data, GOOD_ALL, strlen(GOOD_ALL));
        memset(data + strlen(GOOD_ALL), 'a', bad);
        data[len - 1] = '\n';
        put_file(JNAME, data, len);
        j = jopen(0, &rep);
        ck_assert_uint_eq(rep.records, 3);
        ck_assert_uint_eq(rep.dropped_bytes, bad);
        ck_assert_uint_eq(rep.first_bad_offset, strlen(GOOD_ALL));
        ck_assert(!rep.torn);
        ck_assert_uint_eq(file_size(JNAME), strlen(GOOD_ALL));
        journal_free(j);
        free(data);
}
END_TEST

/* Snapshot function for the tests: counts, remembers, returns an object. */
struct snap_probe {
        unsigned calls;
        size_t n_dropped;
        uint64_t first_dropped_index;
        uint64_t last_dropped_index;
        char first_dropped_kind[32];
        int mode; /* 0 object, 1 NULL, 2 array, 3 too big */
};

static json_t *snap_fn(const struct journal_rec *const *dropped, size_t n, void *userdata)
{
        struct snap_probe *p = userdata;

        p->calls++;
        p->n_dropped = n;
        ck_assert_uint_gt(n, 0);
        p->first_dropped_index = dropped[0]->index;
        p->last_dropped_index = dropped[n - 1]->index;
        snprintf(p->first_dropped_kind, sizeof(p->first_dropped_kind), "%s", dropped[0]->kind);
        for (size_t i = 1; i < n; i++)
                ck_assert_uint_lt(dropped[i - 1]->index, dropped[i]->index);
        switch (p->mode) {
        case 1:
                return NULL;
        case 2:
                return json_array();
        case 3: {
                char *s = malloc(JOURNAL_LINE_MAX);
                memset(s, 'b', JOURNAL_LINE_MAX - 1);
                s[JOURNAL_LINE_MAX - 1] = 0;
                json_t *o = json_pack("{s:s}", "big", s);
                free(s);
                return o;
        }
        default:
                /* "index" and "kind" are the journal's: they get overwritten. */
                return json_pack("{s:s,s:I,s:s,s:s}", "kind", "bogus", "n_dropped", (json_int_t)n,
                                 "index", "bogus", "first_kind", dropped[0]->kind);
        }
}

START_TEST(test_compaction)
{
        struct snap_probe probe = { 0 };
        struct journal *j = jopen(4096, NULL);
        char expect[256];
        char **saved;
        size_t n_saved;

        journal_set_snapshot_fn(j, snap_fn, &probe);
        json_t *r = rec100(100);
        char *s = json_dumps(r, JSON_COMPACT);
        ck_assert_uint_eq(strlen(s), 99);
        free(s);
        json_decref(r);

        /* 41 records of 100 bytes: 4100 > 4096 after the 41st. */
        for (uint64_t i = 100; i < 140; i++)
                ck_assert_int_eq(append100(j, i), 0);
        ck_assert_uint_eq(journal_compactions(j), 0);
        ck_assert_uint_eq(journal_size_bytes(j), 4000);
        ck_assert_int_eq(append100(j, 140), 0);

        /* The newest 20 (2000 <= 2048 bytes) kept, 21 dropped into the snapshot. */
        ck_assert_uint_eq(journal_compactions(j), 1);
        ck_assert_int_eq(journal_last_error(j), 0);
        ck_assert_uint_eq(probe.calls, 1);
        ck_assert_uint_eq(probe.n_dropped, 21);
        ck_assert_uint_eq(probe.first_dropped_index, 100);
        ck_assert_uint_eq(probe.last_dropped_index, 120);
        ck_assert_uint_eq(journal_count(j), 21);
        ck_assert_uint_eq(journal_first_index(j), 120);
        ck_assert_uint_eq(journal_last_index(j), 140);
        ck_assert_str_eq(journal_get(j, 0)->kind, "snapshot");
        ck_assert_str_eq(journal_get(j, 0)->json,
                         "{\"index\":120,\"kind\":\"snapshot\","
                         "\"n_dropped\":21,\"first_kind\":\"transition\"}");
        ck_assert_uint_eq(journal_get(j, 1)->index, 121);
        ck_assert_uint_eq(journal_size_bytes(j), journal_get(j, 0)->len + 1 + 2000);
        ck_assert_uint_eq(file_size(JNAME), journal_size_bytes(j));
        ck_assert(!file_exists(JTMP));
        check_monotonic(j);

        /* Keep going: every later compaction starts from the previous snapshot. */
        for (uint64_t i = 141; i < 600; i++) {
                uint64_t before = journal_compactions(j);
                ck_assert_int_eq(append100(j, i), 0);
                ck_assert_uint_eq(journal_last_index(j), i);
                ck_assert_uint_le(journal_size_bytes(j), 4096);
                if (journal_compactions(j) != before) {
                        ck_assert_uint_eq(probe.calls, journal_compactions(j));
                        ck_assert_str_eq(probe.first_dropped_kind, "snapshot");
                        ck_assert_uint_eq(journal_get(j, 0)->index, probe.last_dropped_index);
                        ck_assert_uint_eq(journal_get(j, 1)->index, probe.last_dropped_index + 1);
                        ck_assert_uint_eq(journal_count(j), 21);
                        snprintf(expect, sizeof(expect),
                                 "{\"index\":%" PRIu64 ",\"kind\":\"snapshot\",\"n_dropped\":%zu,"
                                 "\"first_kind\":\"snapshot\"}",
                                 probe.last_dropped_index, probe.n_dropped);
                        ck_assert_str_eq(journal_get(j, 0)->json, expect);
                }
                check_monotonic(j);
        }
        ck_assert_uint_gt(journal_compactions(j), 10);
        ck_assert_int_eq(journal_last_error(j), 0);
        ck_assert_uint_eq(file_size(JNAME), journal_size_bytes(j));

        /* Reopen: the same records. */
        n_saved = journal_count(j);
        saved = calloc(n_saved, sizeof(*saved));
        for (size_t i = 0; i < n_saved; i++)
                saved[i] = strdup(journal_get(j, i)->json);
        journal_free(j);

        struct journal_load_report rep;
        j = jopen(4096, &rep);
        ck_assert_uint_eq(rep.records, n_saved);
        ck_assert_uint_eq(rep.dropped_bytes, 0);
        ck_assert_uint_eq(journal_count(j), n_saved);
        ck_assert_uint_eq(journal_compactions(j), 0);
        for (size_t i = 0; i < n_saved; i++) {
                ck_assert_str_eq(journal_get(j, i)->json, saved[i]);
                free(saved[i]);
        }
        free(saved);
        ck_assert_str_eq(journal_get(j, 0)->kind, "snapshot");
        ck_assert_uint_eq(journal_last_index(j), 599);
        journal_free(j);
}
END_TEST

START_TEST(test_compaction_bare)
{
        struct journal *j = jopen(4096, NULL);

        for (uint64_t i = 100; i <= 140; i++)
                ck_assert_int_eq(append100(j, i), 0);
        ck_assert_uint_eq(journal_compactions(j), 1);
        ck_assert_uint_eq(journal_count(j), 21);
        ck_assert_str_eq(journal_get(j, 0)->json, "{\"index\":120,\"kind\":\"snapshot\"}");
        ck_assert_uint_eq(journal_size_bytes(j), 32 + 2000);
        ck_assert_uint_eq(file_size(JNAME), 32 + 2000);

        /* A NULL from the snapshot function is the same bare snapshot. */
        struct snap_probe probe = { .mode = 1 };
        journal_set_snapshot_fn(j, snap_fn, &probe);
        for (uint64_t i = 141; i <= 161; i++)
                ck_assert_int_eq(append100(j, i), 0);
        ck_assert_uint_eq(journal_compactions(j), 2);
        ck_assert_uint_eq(probe.calls, 1);
        ck_assert_uint_eq(probe.n_dropped, 22); /* the old snapshot and 121..141 */
        ck_assert_str_eq(journal_get(j, 0)->json, "{\"index\":141,\"kind\":\"snapshot\"}");
        ck_assert_uint_eq(journal_get(j, 1)->index, 142);
        journal_free(j);
}
END_TEST

START_TEST(test_compact_explicit)
{
        struct journal *j = jopen(4096, NULL);
        struct snap_probe probe = { 0 };

        journal_set_snapshot_fn(j, snap_fn, &probe);
        ck_assert_int_eq(journal_compact(j), 0); /* empty */
        ck_assert_int_eq(append100(j, 100), 0);
        ck_assert_int_eq(journal_compact(j), 0); /* the newest record stays */
        for (uint64_t i = 101; i < 120; i++)
                ck_assert_int_eq(append100(j, i), 0);
        ck_assert_int_eq(journal_compact(j), 0); /* 2000 bytes fit max_bytes / 2 */
        ck_assert_int_eq(append100(j, 120), 0);
        ck_assert_int_eq(journal_compact(j), 1); /* 2100 do not */
        ck_assert_uint_eq(probe.n_dropped, 1);
        ck_assert_uint_eq(journal_count(j), 21);
        ck_assert_uint_eq(journal_first_index(j), 100);
        ck_assert_str_eq(journal_get(j, 0)->kind, "snapshot");
        ck_assert_uint_eq(journal_get(j, 1)->index, 101);
        ck_assert_uint_eq(journal_compactions(j), 1);
        journal_free(j);
}
END_TEST

/* The newest record is kept even when it alone exceeds max_bytes / 2. */
START_TEST(test_compact_keeps_newest)
{
        struct journal *j = jopen(4096, NULL);
        char pad[3001];

        memset(pad, 'p', sizeof(pad) - 1);
        pad[sizeof(pad) - 1] = 0;
        ck_assert_int_eq(append_simple(j, 1, "a"), 0);
        ck_assert_int_eq(
                append_pack(j, json_pack("{s:i,s:s,s:s}", "index", 2, "kind", "big", "p", pad)), 0);
        ck_assert_int_eq(
                append_pack(j, json_pack("{s:i,s:s,s:s}", "index", 3, "kind", "big", "p", pad)), 0);
        ck_assert_uint_eq(journal_compactions(j), 1);
        ck_assert_uint_eq(journal_count(j), 2);
        ck_assert_str_eq(journal_get(j, 0)->json, "{\"index\":2,\"kind\":\"snapshot\"}");
        ck_assert_uint_eq(journal_get(j, 1)->index, 3);
        journal_free(j);
}
END_TEST

START_TEST(test_open_oversized)
{
        /* 500 records of 100 bytes = 50000 > 4 * 4096: compacted at open. */
        size_t len = 500 * 100;
        char *data = malloc(len + 1), *p = data;
        struct journal_load_report rep;
        struct journal *j;

        for (uint64_t i = 100; i < 600; i++) {
                json_t *r = rec100(i);
                char *s = json_dumps(r, JSON_COMPACT);
                memcpy(p, s, 99);
                p[99] = '\n';
                p += 100;
                free(s);
                json_decref(r);
        }
        put_file(JNAME, data, len);
        put_file(JTMP, "stale", 5);

        j = jopen(4096, &rep);
        ck_assert(!file_exists(JTMP));
        ck_assert_uint_eq(rep.records, 500);
        ck_assert_uint_eq(rep.dropped_bytes, 0);
        ck_assert(!rep.torn);
        ck_assert_uint_eq(journal_compactions(j), 1);
        ck_assert_int_eq(journal_last_error(j), 0);
        ck_assert_uint_eq(journal_count(j), 21);
        ck_assert_str_eq(journal_get(j, 0)->json, "{\"index\":579,\"kind\":\"snapshot\"}");
        ck_assert_uint_eq(journal_get(j, 1)->index, 580);
        ck_assert_uint_eq(journal_last_index(j), 599);
        ck_assert_uint_eq(journal_size_bytes(j), 32 + 2000);
        ck_assert_uint_eq(file_size(JNAME), 32 + 2000);
        journal_free(j);

        /* Within 4 * max_bytes: loaded whole, not compacted. */
        put_file(JNAME, data, 16000);
        j = jopen(4096, &rep);
        ck_assert_uint_eq(rep.records, 160);
        ck_assert_uint_eq(journal_count(j), 160);
        ck_assert_uint_eq(journal_compactions(j), 0);
        ck_assert_uint_eq(file_size(JNAME), 16000);
        journal_free(j);
        free(data);
}
END_TEST

START_TEST(test_find_after)
{
        struct journal *j = jopen(0, NULL);

        ck_assert_uint_eq(journal_find_after(j, 0), 0);
        ck_assert_uint_eq(journal_find_after(j, UINT64_MAX), 0);
        ck_assert_int_eq(append_simple(j, 10, "a"), 0);
        ck_assert_uint_eq(journal_find_after(j, 9), 0);
        ck_assert_uint_eq(journal_find_after(j, 10), 1);
        ck_assert_int_eq(append_simple(j, 20, "b"), 0);
        ck_assert_int_eq(append_simple(j, 30, "c"), 0);
        ck_assert_uint_eq(journal_find_after(j, 0), 0);
        ck_assert_uint_eq(journal_find_after(j, 9), 0);
        ck_assert_uint_eq(journal_find_after(j, 10), 1);
        ck_assert_uint_eq(journal_find_after(j, 15), 1);
        ck_assert_uint_eq(journal_find_after(j, 19), 1);
        ck_assert_uint_eq(journal_find_after(j, 20), 2);
        ck_assert_uint_eq(journal_find_after(j, 29), 2);
        ck_assert_uint_eq(journal_find_after(j, 30), 3);
        ck_assert_uint_eq(journal_find_after(j, 31), 3);
        ck_assert_uint_eq(journal_find_after(j, UINT64_MAX), 3);

        /* Many records: every boundary. */
        for (uint64_t i = 31; i < 1000; i++)
                ck_assert_int_eq(append_simple(j, 2 * i, "d"), 0);
        for (size_t pos = 0; pos < journal_count(j); pos++) {
                uint64_t ix = journal_get(j, pos)->index;
                ck_assert_uint_eq(journal_find_after(j, ix - 1), pos);
                ck_assert_uint_eq(journal_find_after(j, ix), pos + 1);
        }
        journal_free(j);
}
END_TEST

/* journal_get() pointers survive appends (the array grows, records stay). */
START_TEST(test_pointer_stable)
{
        struct journal *j = jopen(0, NULL);
        const struct journal_rec *r;

        ck_assert_int_eq(append_simple(j, 1, "first"), 0);
        r = journal_get(j, 0);
        for (uint64_t i = 2; i < 300; i++)
                ck_assert_int_eq(append_simple(j, i, "more"), 0);
        ck_assert_ptr_eq(r, journal_get(j, 0));
        ck_assert_str_eq(r->json, "{\"index\":1,\"kind\":\"first\"}");
        ck_assert_str_eq(r->kind, "first");
        journal_free(j);
}
END_TEST

START_TEST(test_open_errors)
{
        struct journal *j = (struct journal *)&test_dfd; /* must stay untouched */
        struct journal *j2;

        ck_assert_int_eq(journal_open(test_dfd, "a/b", 0, &j, NULL), -EINVAL);
        ck_assert_int_eq(journal_open(test_dfd, "", 0, &j, NULL), -EINVAL);
        ck_assert_int_eq(journal_open(test_dfd, ".", 0, &j, NULL), -EINVAL);
        ck_assert_int_eq(journal_open(test_dfd, "..", 0, &j, NULL), -EINVAL);
        ck_assert_int_eq(journal_open(test_dfd, NULL, 0, &j, NULL), -EINVAL);
        ck_assert_int_eq(journal_open(test_dfd, JNAME, 4095, &j, NULL), -ERANGE);
        ck_assert_int_eq(journal_open(test_dfd, JNAME, JOURNAL_MAX_BYTES_LIMIT + 1, &j, NULL),
                         -ERANGE);
        ck_assert_int_eq(journal_open(-1, JNAME, 0, &j, NULL), -EBADF);

        ck_assert_int_eq(symlinkat(JNAME, test_dfd, "link"), 0);
        ck_assert_int_eq(journal_open(test_dfd, "link", 0, &j, NULL), -ELOOP);
        ck_assert(!file_exists(JNAME)); /* not created through the link */
        ck_assert_int_eq(mkdirat(test_dfd, "dir", 0700), 0);
        ck_assert_int_eq(journal_open(test_dfd, "dir", 0, &j, NULL), -EISDIR);
        ck_assert_int_eq(mkfifoat(test_dfd, "fifo", 0600), 0);
        ck_assert_int_eq(journal_open(test_dfd, "fifo", 0, &j, NULL), -EBADFD);
        ck_assert_ptr_eq(j, (struct journal *)&test_dfd);

        /* One journal per file. */
        j2 = jopen(JOURNAL_MAX_BYTES_MIN, NULL);
        ck_assert_int_eq(journal_open(test_dfd, JNAME, 0, &j, NULL), -EBUSY);
        journal_free(j2);

        /* AT_FDCWD works too. */
        _cleanup_close_ int cwd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        ck_assert_int_ge(cwd, 0);
        ck_assert_int_eq(fchdir(test_dfd), 0);
        ck_assert_int_eq(journal_open(AT_FDCWD, JNAME, 0, &j2, NULL), 0);
        ck_assert_int_eq(fchdir(cwd), 0);
        ck_assert_int_eq(append_simple(j2, 1, "x"), 0);
        journal_free(j2);
}
END_TEST

/* A directory squats the temporary name: the compaction fails, nothing is lost. */
START_TEST(test_compact_fail_tmp)
{
        struct journal *j = jopen(4096, NULL);
        struct snap_probe probe = { 0 };
        char *before, *after;
        size_t blen, alen;

        journal_set_snapshot_fn(j, snap_fn, &probe);
        for (uint64_t i = 100; i < 140; i++)
                ck_assert_int_eq(append100(j, i), 0);
        before = get_file(JNAME, &blen);
        ck_assert_int_eq(mkdirat(test_dfd, JTMP, 0700), 0);

        ck_assert_int_eq(append100(j, 140), 0); /* the append itself succeeds */
        ck_assert_uint_eq(probe.calls, 1);
        ck_assert_uint_eq(journal_compactions(j), 0);
        ck_assert_int_eq(journal_last_error(j), -EEXIST);
        ck_assert_uint_eq(journal_count(j), 41);
        ck_assert_uint_eq(journal_first_index(j), 100);
        ck_assert_uint_eq(journal_size_bytes(j), 4100);
        after = get_file(JNAME, &alen);
        ck_assert_uint_eq(alen, 4100);
        ck_assert_int_eq(memcmp(before, after, blen), 0);
        free(before);
        free(after);

        /* Clear the way: the next append compacts and clears the error. */
        ck_assert_int_eq(unlinkat(test_dfd, JTMP, AT_REMOVEDIR), 0);
        ck_assert_int_eq(append100(j, 141), 0);
        ck_assert_uint_eq(journal_compactions(j), 1);
        ck_assert_int_eq(journal_last_error(j), 0);
        ck_assert_uint_eq(journal_first_index(j), 121);
        ck_assert(!file_exists(JTMP));
        journal_free(j);
}
END_TEST

START_TEST(test_compact_fail_snapshot)
{
        struct journal *j = jopen(4096, NULL);
        struct snap_probe probe = { .mode = 2 };

        journal_set_snapshot_fn(j, snap_fn, &probe);
        for (uint64_t i = 100; i < 130; i++)
                ck_assert_int_eq(append100(j, i), 0);
        ck_assert_int_eq(journal_compact(j), -EINVAL); /* not an object */
        ck_assert_int_eq(journal_last_error(j), -EINVAL);
        probe.mode = 3;
        ck_assert_int_eq(journal_compact(j), -E2BIG); /* snapshot line too long */
        ck_assert_int_eq(journal_last_error(j), -E2BIG);
        ck_assert_uint_eq(probe.calls, 2);
        ck_assert_uint_eq(journal_compactions(j), 0);
        ck_assert_uint_eq(journal_count(j), 30);
        ck_assert_uint_eq(journal_size_bytes(j), 3000);
        ck_assert_uint_eq(file_size(JNAME), 3000);
        ck_assert(!file_exists(JTMP));
        probe.mode = 0;
        ck_assert_int_eq(journal_compact(j), 1);
        ck_assert_int_eq(journal_last_error(j), 0);
        ck_assert_uint_eq(journal_count(j), 21);
        journal_free(j);
}
END_TEST

/*
 * Write failures, injected with RLIMIT_FSIZE (works as root too): a write past
 * the limit is cut short, then fails with EFBIG (SIGXFSZ ignored).
 */
static struct rlimit saved_fsize;
static struct sigaction saved_xfsz;

static void fsize_limit(rlim_t limit)
{
        struct sigaction sa = { .sa_handler = SIG_IGN };
        struct rlimit rl;

        ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &saved_fsize), 0);
        ck_assert_int_eq(sigaction(SIGXFSZ, &sa, &saved_xfsz), 0);
        rl = saved_fsize;
        rl.rlim_cur = limit;
        ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
}

static void fsize_restore(void)
{
        ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &saved_fsize), 0);
        ck_assert_int_eq(sigaction(SIGXFSZ, &saved_xfsz, NULL), 0);
}

START_TEST(test_write_failures)
{
        struct journal_load_report rep;
        struct journal *j = jopen(4096, NULL);
        struct snap_probe probe = { 0 };
        char *before, *after;
        size_t blen, alen;

        journal_set_snapshot_fn(j, snap_fn, &probe);
        for (uint64_t i = 100; i < 130; i++)
                ck_assert_int_eq(append100(j, i), 0);
        before = get_file(JNAME, &blen);
        ck_assert_uint_eq(blen, 3000);

        /* Append: 50 of 100 bytes get written, then EFBIG: cut back. */
        fsize_limit(3050);
        int r = append100(j, 130);
        fsize_restore();
        ck_assert_int_eq(r, -EFBIG);
        ck_assert_uint_eq(journal_count(j), 30);
        ck_assert_uint_eq(journal_last_index(j), 129);
        ck_assert_uint_eq(journal_size_bytes(j), 3000);
        ck_assert_uint_eq(file_size(JNAME), 3000);

        /* Compaction: the temporary file cannot be written. */
        fsize_limit(1000);
        r = journal_compact(j);
        fsize_restore();
        ck_assert_int_eq(r, -EFBIG);
        ck_assert_int_eq(journal_last_error(j), -EFBIG);
        ck_assert_uint_eq(journal_compactions(j), 0);
        ck_assert_uint_eq(journal_count(j), 30);
        ck_assert(!file_exists(JTMP));
        after = get_file(JNAME, &alen);
        ck_assert_uint_eq(alen, blen);
        ck_assert_int_eq(memcmp(before, after, blen), 0);
        free(before);
        free(after);

        /* All well again. */
        ck_assert_int_eq(append100(j, 130), 0);
        ck_assert_uint_eq(journal_size_bytes(j), 3100);
        journal_free(j);
        j = jopen(4096, &rep);
        ck_assert_uint_eq(rep.records, 31);
        ck_assert_uint_eq(rep.dropped_bytes, 0);
        ck_assert_uint_eq(journal_last_index(j), 130);
        journal_free(j);
}
END_TEST

static Suite *journal_suite(void)
{
        Suite *s = suite_create("journal");
        TCase *tc = tcase_create("core");

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_open_empty);
        tcase_add_test(tc, test_roundtrip);
        tcase_add_test(tc, test_append_invalid);
        tcase_add_test(tc, test_append_line_limit);
        tcase_add_loop_test(tc, test_bad_tail, 0, (int)ELEMENTSOF(bad_cases));
        tcase_add_test(tc, test_line_too_long);
        tcase_add_test(tc, test_compaction);
        tcase_add_test(tc, test_compaction_bare);
        tcase_add_test(tc, test_compact_explicit);
        tcase_add_test(tc, test_compact_keeps_newest);
        tcase_add_test(tc, test_open_oversized);
        tcase_add_test(tc, test_find_after);
        tcase_add_test(tc, test_pointer_stable);
        tcase_add_test(tc, test_open_errors);
        tcase_add_test(tc, test_compact_fail_tmp);
        tcase_add_test(tc, test_compact_fail_snapshot);
        tcase_add_test(tc, test_write_failures);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(journal_suite)
