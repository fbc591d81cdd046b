/*
 * journal.c: the agent's durable, append-only journal (JSON lines), loaded
 * whole into memory at open, appended with write + fdatasync, compacted into
 * "snapshot + newest records" when it outgrows its size limit.
 *
 * Threads: not thread-safe; the caller holds the agent's lock for every call.
 * Non-logging: returns -errno, the caller logs.
 *
 * Owns: the journal fd (O_RDWR | O_APPEND, flock()ed so that two agents can
 * never interleave their lines), a directory fd (renameat and its fsync for
 * compaction), one allocation per record (struct journal_rec, then the line,
 * then the kind) and the array of pointers to them. Records are referenced
 * through pointers, not stored inline, so that an append, which may move the
 * array, never moves a record a reader holds.
 *
 * Invariant: every line in the file is one the loader accepts. That is why
 * journal_append() parses the line it is about to write with the loader's own
 * function (rec_from_line()): a line the loader rejected would make the next
 * start-up truncate it and every record after it. The parse costs
 * microseconds; the fdatasync that follows costs milliseconds.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "journal.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"

#define JOURNAL_TMP_SUFFIX ".compact"
/* Read and write staging buffers (load grows its buffer up to JOURNAL_LINE_MAX). */
#define JOURNAL_IO_CHUNK ((size_t)64 * 1024)

struct journal {
        int dir_fd;
        int fd;
        char *name;
        char *tmp_name; /* name + ".compact" */
        uint64_t max_bytes;
        uint64_t size; /* bytes of good lines in the file */

        struct journal_rec **recs; /* oldest first */
        size_t n_recs;
        size_t n_allocated;

        /*
         * Newest index of records that are in the file but not in memory (0 =
         * none): a load that will end in a compaction keeps only the newest
         * records in memory, so that a huge file cannot take all memory. The
         * compaction folds them into its snapshot.
         */
        uint64_t hidden_last_index;

        bool tail_dirty; /* a failed append left bytes past size that are not cut yet */
        bool dir_dirty;  /* the directory sync after a compaction's rename failed */

        journal_snapshot_fn snapshot_fn;
        void *snapshot_userdata;
        uint64_t compactions;
        int last_error;
};

/* ---- the crash-point test hook (journal.h) ---------------------------------- */

static struct {
        char point[32];
        char arg[32]; /* "" = any */
        unsigned nth;
        atomic_uint hits;
} crash;
static pthread_once_t crash_once = PTHREAD_ONCE_INIT;

static void crash_init(void)
{
        const char *s = getenv("LUOFLEET_TEST_CRASH_POINT");
        char buf[96], *arg, *nth;
        uint64_t n = 1;

        if (!s || !*s || strlen(s) >= sizeof(buf))
                return;
        memcpy(buf, s, strlen(s) + 1);
        arg = strchr(buf, ':');
        if (arg) {
                *arg++ = 0;
                nth = strchr(arg, ':');
                if (nth) {
                        *nth++ = 0;
                        if (parse_u64(nth, UINT32_MAX, &n) < 0 || n == 0)
                                return;
                }
                if (strlen(arg) >= sizeof(crash.arg))
                        return;
                memcpy(crash.arg, arg, strlen(arg) + 1);
        }
        if (strlen(buf) >= sizeof(crash.point))
                return;
        memcpy(crash.point, buf, strlen(buf) + 1);
        crash.nth = (unsigned)n;
}

static bool crash_due(const char *point, const char *arg)
{
        if (!crash.point[0] || strcmp(crash.point, point) != 0)
                return false;
        if (crash.arg[0] && (!arg || strcmp(crash.arg, arg) != 0))
                return false;
        return atomic_fetch_add(&crash.hits, 1) + 1 == crash.nth;
}

static _Noreturn void crash_now(const char *point, const char *arg)
{
        /* One line for the test to find; the process dies as a kill -9 would kill it. */
        fprintf(stderr, "luofleet test hook: crash point %s:%s reached, SIGKILL\n", point,
                arg ? arg : "");
        fflush(stderr);
        raise(SIGKILL);
        abort();
}

void journal_crash_point(const char *point, const char *arg)
{
        if (crash_due(point, arg))
                crash_now(point, arg);
}

static void journal_freep(struct journal **j)
{
        journal_free(*j);
}

static uint64_t rec_bytes(const struct journal_rec *r)
{
        return (uint64_t)r->len + 1;
}

static struct journal_rec *rec_new(uint64_t index, const char *line, size_t len, const char *kind,
                                   size_t kind_len)
{
        struct journal_rec *r;
        char *p;

        r = malloc(sizeof(*r) + len + 1 + kind_len + 1);
        if (!r)
                return NULL;
        p = (char *)(r + 1);
        memcpy(p, line, len);
        p[len] = 0;
        memcpy(p + len + 1, kind, kind_len);
        p[len + 1 + kind_len] = 0;
        r->index = index;
        r->json = p;
        r->len = len;
        r->kind = p + len + 1;
        return r;
}

/*
 * Parse and check one line (without its '\n'): a JSON object with an integer
 * "index" >= 1 and > prev_index and a string "kind" without NUL, no raw NUL
 * byte (a crash can leave NUL-filled blocks), no duplicate keys (an
 * ambiguous "index"). Returns 0 with a new record, -EINVAL, or -ENOMEM (which
 * the loader must not mistake for a bad line).
 */
static int rec_from_line(const char *line, size_t len, uint64_t prev_index,
                         struct journal_rec **ret)
{
        _cleanup_(json_decrefp) json_t *o = NULL;
        json_error_t err;
        json_t *v;
        json_int_t index;
        const char *kind;
        size_t kind_len;
        struct journal_rec *r;

        if (len == 0 || len >= JOURNAL_LINE_MAX || memchr(line, 0, len))
                return -EINVAL;
        o = json_loadb(line, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &err);
        if (!o)
                return json_error_code(&err) == json_error_out_of_memory ? -ENOMEM : -EINVAL;
        if (!json_is_object(o))
                return -EINVAL;
        v = json_object_get(o, "index");
        if (!json_is_integer(v))
                return -EINVAL;
        index = json_integer_value(v);
        if (index <= 0 || (uint64_t)index <= prev_index)
                return -EINVAL;
        v = json_object_get(o, "kind");
        if (!json_is_string(v))
                return -EINVAL;
        kind = json_string_value(v);
        kind_len = json_string_length(v);
        if (strlen(kind) != kind_len)
                return -EINVAL;
        r = rec_new((uint64_t)index, line, len, kind, kind_len);
        if (!r)
                return -ENOMEM;
        *ret = r;
        return 0;
}

static int recs_reserve(struct journal *j, size_t n)
{
        struct journal_rec **a;
        size_t m;

        if (n <= j->n_allocated)
                return 0;
        m = MAX(n, j->n_allocated < 32 ? 64 : j->n_allocated * 2);
        a = reallocarray(j->recs, m, sizeof(*a));
        if (!a)
                return -ENOMEM;
        j->recs = a;
        j->n_allocated = m;
        return 0;
}

static void recs_free(struct journal_rec **recs, size_t n)
{
        for (size_t i = 0; i < n; i++)
                free(recs[i]);
}

struct journal *journal_free(struct journal *j)
{
        if (!j)
                return NULL;
        recs_free(j->recs, j->n_recs);
        free(j->recs);
        closep(&j->fd);
        closep(&j->dir_fd);
        free(j->name);
        free(j->tmp_name);
        free(j);
        return NULL;
}

/*
 * While loading a file that will be compacted right after (its good part is
 * larger than 4 * max_bytes), memory need not hold more than the newest
 * records: past 4 * max_bytes in memory, drop the oldest down to 2 * max_bytes
 * (the compaction keeps at most max_bytes / 2 of them). Batches keep the
 * memmove amortized.
 */
static void load_evict(struct journal *j, uint64_t *mem_bytes)
{
        size_t k = 0;

        if (*mem_bytes <= 4 * j->max_bytes)
                return;
        while (*mem_bytes > 2 * j->max_bytes && k + 1 < j->n_recs) {
                *mem_bytes -= rec_bytes(j->recs[k]);
                k++;
        }
        if (k == 0)
                return;
        j->hidden_last_index = j->recs[k - 1]->index;
        recs_free(j->recs, k);
        memmove(j->recs, j->recs + k, (j->n_recs - k) * sizeof(*j->recs));
        j->n_recs -= k;
}

/*
 * Read the file from the start, line by line, up to the first bad line, and
 * cut the file there. The buffer holds at most one line (JOURNAL_LINE_MAX)
 * plus what was read past it. To go on past the end of the buffer it is
 * refilled from the file at the start of the unfinished line (pread), not
 * shifted with memmove(): re-reading less than a line per 64 KiB costs
 * nothing, and valgrind 3.19 reports glibc's fortified memmove of
 * overlapping ranges (aliased to __memcpy_chk) as an error.
 */
static int journal_load(struct journal *j, struct journal_load_report *rep)
{
        _cleanup_free_ char *buf = NULL;
        size_t cap = JOURNAL_IO_CHUNK, have = 0, start = 0;
        uint64_t base = 0; /* file offset of buf[0] */
        uint64_t good_end = 0, mem_bytes = 0;
        bool eof = false, bad = false;
        struct stat st;
        int r;

        *rep = (struct journal_load_report){ 0 };
        buf = malloc(cap);
        if (!buf)
                return -ENOMEM;

        for (;;) {
                char *nl = memchr(buf + start, '\n', have - start);

                if (nl) {
                        size_t len = (size_t)(nl - (buf + start));
                        struct journal_rec *rec;

                        r = rec_from_line(buf + start, len, journal_last_index(j), &rec);
                        if (r == -ENOMEM)
                                return r;
                        if (r < 0) {
                                bad = true;
                                break;
                        }
                        r = recs_reserve(j, j->n_recs + 1);
                        if (r < 0) {
                                free(rec);
                                return r;
                        }
                        j->recs[j->n_recs++] = rec;
                        rep->records++;
                        mem_bytes += rec_bytes(rec);
                        start += len + 1;
                        good_end = base + start;
                        load_evict(j, &mem_bytes);
                        continue;
                }

                size_t pending = have - start;
                if (eof) {
                        /* An unterminated last line: what an interrupted append leaves. */
                        if (pending > 0)
                                bad = rep->torn = true;
                        break;
                }
                if (pending >= JOURNAL_LINE_MAX) {
                        bad = true; /* no '\n' within the longest line we write */
                        break;
                }
                if (start > 0) {
                        /* Drop what was consumed; the pending bytes are read again. */
                        base += start;
                        start = have = 0;
                } else if (have == cap) {
                        size_t ncap = MIN(cap * 2, JOURNAL_LINE_MAX);
                        char *nbuf = realloc(buf, ncap);
                        if (!nbuf)
                                return -ENOMEM;
                        buf = nbuf;
                        cap = ncap;
                }
                ssize_t n = pread(j->fd, buf + have, cap - have, (off_t)(base + have));
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return negative_errno();
                }
                if (n == 0)
                        eof = true;
                have += (size_t)n;
        }

        if (bad) {
                if (fstat(j->fd, &st) < 0)
                        return negative_errno();
                rep->first_bad_offset = good_end;
                rep->dropped_bytes = (uint64_t)st.st_size - good_end;
                if (ftruncate(j->fd, (off_t)good_end) < 0 || fsync(j->fd) < 0)
                        return negative_errno();
        }
        j->size = good_end;
        return 0;
}

static bool name_valid(const char *name)
{
        size_t n;

        if (!name)
                return false;
        n = strlen(name);
        return n > 0 && n + strlen(JOURNAL_TMP_SUFFIX) <= NAME_MAX && !strchr(name, '/') &&
               strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

static char *strjoin2(const char *a, const char *b)
{
        size_t la = strlen(a), lb = strlen(b);
        char *s = malloc(la + lb + 1);

        if (!s)
                return NULL;
        memcpy(s, a, la);
        memcpy(s + la, b, lb + 1);
        return s;
}

int journal_open(int dir_fd, const char *name, uint64_t max_bytes, struct journal **ret,
                 struct journal_load_report *ret_report)
{
        _cleanup_(journal_freep) struct journal *j = NULL;
        struct journal_load_report rep;
        struct stat st;
        int r;

        pthread_once(&crash_once, crash_init);
        if (!ret || !name_valid(name))
                return -EINVAL;
        if (max_bytes == 0)
                max_bytes = JOURNAL_MAX_BYTES_DEFAULT;
        if (max_bytes < JOURNAL_MAX_BYTES_MIN || max_bytes > JOURNAL_MAX_BYTES_LIMIT)
                return -ERANGE;

        j = calloc(1, sizeof(*j));
        if (!j)
                return -ENOMEM;
        j->fd = j->dir_fd = -1;
        j->max_bytes = max_bytes;
        j->name = strdup(name);
        j->tmp_name = strjoin2(name, JOURNAL_TMP_SUFFIX);
        if (!j->name || !j->tmp_name)
                return -ENOMEM;

        /*
         * Our own directory fd: works whether the caller passed AT_FDCWD, an
         * O_PATH fd (fsync() would fail on those) or a plain one, and whether
         * or not the caller keeps it open.
         */
        j->dir_fd = openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (j->dir_fd < 0)
                return negative_errno();

        /* O_NONBLOCK: never hang in open() on a FIFO planted at our name. */
        j->fd = openat(j->dir_fd, name,
                       O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK,
                       0600);
        if (j->fd < 0)
                return negative_errno();
        if (fstat(j->fd, &st) < 0)
                return negative_errno();
        if (S_ISDIR(st.st_mode))
                return -EISDIR;
        if (!S_ISREG(st.st_mode))
                return -EBADFD;
        if (flock(j->fd, LOCK_EX | LOCK_NB) < 0)
                return errno == EWOULDBLOCK ? -EBUSY : negative_errno();
        /* The file may have just been created: make its name durable too. */
        if (fsync(j->dir_fd) < 0)
                return negative_errno();
        /* A compaction interrupted by a crash leaves its temporary file. */
        (void)unlinkat(j->dir_fd, j->tmp_name, 0);

        r = journal_load(j, &rep);
        if (r < 0)
                return r;

        if (j->size > 4 * j->max_bytes)
                (void)journal_compact(j); /* failure: journal_last_error() */

        if (ret_report)
                *ret_report = rep;
        *ret = TAKE_PTR(j);
        return 0;
}

uint64_t journal_last_index(const struct journal *j)
{
        return j->n_recs > 0 ? j->recs[j->n_recs - 1]->index : j->hidden_last_index;
}

uint64_t journal_first_index(const struct journal *j)
{
        return j->n_recs > 0 ? j->recs[0]->index : 0;
}

size_t journal_count(const struct journal *j)
{
        return j->n_recs;
}

const struct journal_rec *journal_get(const struct journal *j, size_t pos)
{
        return pos < j->n_recs ? j->recs[pos] : NULL;
}

size_t journal_find_after(const struct journal *j, uint64_t index)
{
        size_t lo = 0, hi = j->n_recs;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (j->recs[mid]->index <= index)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo;
}

uint64_t journal_size_bytes(const struct journal *j)
{
        return j->size;
}

uint64_t journal_compactions(const struct journal *j)
{
        return j->compactions;
}

int journal_last_error(const struct journal *j)
{
        return j->last_error;
}

void journal_set_snapshot_fn(struct journal *j, journal_snapshot_fn fn, void *userdata)
{
        j->snapshot_fn = fn;
        j->snapshot_userdata = userdata;
}

int journal_append(struct journal *j, json_t *rec)
{
        _cleanup_free_ char *line = NULL;
        struct journal_rec *r;
        json_t *v;
        size_t len;
        int k;

        /* The cheap checks first: no serialization for a record we refuse. */
        if (!json_is_object(rec))
                return -EINVAL;
        v = json_object_get(rec, "index");
        if (!json_is_integer(v) || json_integer_value(v) <= 0 ||
            (uint64_t)json_integer_value(v) <= journal_last_index(j))
                return -EINVAL;
        if (!json_is_string(json_object_get(rec, "kind")))
                return -EINVAL;

        line = json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (!line)
                return -ENOMEM;
        len = strlen(line);
        if (len + 1 > JOURNAL_LINE_MAX)
                return -E2BIG;
        k = rec_from_line(line, len, journal_last_index(j), &r);
        if (k < 0)
                return k;
        /* Everything that can fail without touching the file fails here. */
        k = recs_reserve(j, j->n_recs + 1);
        if (k < 0) {
                free(r);
                return k;
        }

        if (j->tail_dirty) {
                if (ftruncate(j->fd, (off_t)j->size) < 0) {
                        k = negative_errno();
                        free(r);
                        return k;
                }
                j->tail_dirty = false;
        }

        line[len] = '\n';
        if (crash_due("journal-mid-record", r->kind)) {
                /* What a crash in the middle of the write leaves: half a line, on disk. */
                (void)write_all(j->fd, line, (len + 1) / 2);
                (void)fdatasync(j->fd);
                crash_now("journal-mid-record", r->kind);
        }
        k = write_all(j->fd, line, len + 1);
        if (k >= 0 && fdatasync(j->fd) < 0)
                k = negative_errno();
        /* A compaction's rename must be durable before anything written after it. */
        if (k >= 0 && j->dir_dirty) {
                if (fsync(j->dir_fd) < 0)
                        k = negative_errno();
                else
                        j->dir_dirty = false;
        }
        if (k < 0) {
                /*
                 * Cut off whatever part of the line reached the file: left
                 * there, it would make the loader drop every later record.
                 */
                if (ftruncate(j->fd, (off_t)j->size) < 0)
                        j->tail_dirty = true;
                free(r);
                return k;
        }

        if (crash_due("journal-after-record", r->kind))
                crash_now("journal-after-record", r->kind); /* durable, not acknowledged */
        j->recs[j->n_recs++] = r;
        j->size += len + 1;

        if (j->size > j->max_bytes)
                (void)journal_compact(j); /* failure: journal_last_error() */
        return 0;
}

/* A small write-behind buffer for the compacted file. */
struct wbuf {
        int fd;
        char *buf;
        size_t n;
        size_t cap;
        uint64_t total;
};

static int wbuf_flush(struct wbuf *w)
{
        int r = write_all(w->fd, w->buf, w->n);
        w->n = 0;
        return r;
}

static int wbuf_line(struct wbuf *w, const char *s, size_t len)
{
        int r;

        if (w->n + len + 1 > w->cap) {
                r = wbuf_flush(w);
                if (r < 0)
                        return r;
        }
        if (len + 1 > w->cap) {
                r = write_all(w->fd, s, len);
                if (r < 0)
                        return r;
                r = write_all(w->fd, "\n", 1);
                if (r < 0)
                        return r;
        } else {
                memcpy(w->buf + w->n, s, len);
                w->buf[w->n + len] = '\n';
                w->n += len + 1;
        }
        w->total += len + 1;
        return 0;
}

/*
 * The snapshot record: {"index": last_dropped, "kind": "snapshot", ...what the
 * snapshot function returned}, index and kind first.
 */
static int snapshot_build(struct journal *j, size_t n_dropped, uint64_t index,
                          struct journal_rec **ret)
{
        _cleanup_(json_decrefp) json_t *user = NULL;
        _cleanup_(json_decrefp) json_t *snap = NULL;
        _cleanup_free_ char *line = NULL;
        size_t len;

        /* n_dropped is 0 only when all dropped records were left out of memory at load. */
        if (j->snapshot_fn && n_dropped > 0) {
                user = j->snapshot_fn((const struct journal_rec *const *)j->recs, n_dropped,
                                      j->snapshot_userdata);
                if (user && !json_is_object(user))
                        return -EINVAL;
        }
        snap = json_pack("{s:I,s:s}", "index", (json_int_t)index, "kind", "snapshot");
        if (!snap)
                return -ENOMEM;
        /*
         * Setting an existing key keeps its place: update() may overwrite
         * "index"/"kind" but not move them; the second set restores ours.
         */
        if ((user && json_object_update(snap, user) < 0) ||
            json_object_set_new(snap, "index", json_integer((json_int_t)index)) < 0 ||
            json_object_set_new(snap, "kind", json_string("snapshot")) < 0)
                return -ENOMEM;
        line = json_dumps(snap, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (!line)
                return -ENOMEM;
        len = strlen(line);
        if (len + 1 > JOURNAL_LINE_MAX)
                return -E2BIG;
        return rec_from_line(line, len, 0, ret);
}

static int journal_compact_internal(struct journal *j)
{
        _cleanup_free_ struct journal_rec **recs = NULL;
        _cleanup_free_ char *buf = NULL;
        _cleanup_close_ int fd = -1;
        struct journal_rec *snap = NULL;
        struct wbuf w;
        uint64_t kept_bytes = 0;
        size_t k, n_kept, n_allocated;
        int r;

        /* Keep the newest records within max_bytes / 2, and the newest one always. */
        k = j->n_recs;
        while (k > 0) {
                uint64_t b = rec_bytes(j->recs[k - 1]);
                if (k < j->n_recs && kept_bytes + b > j->max_bytes / 2)
                        break;
                kept_bytes += b;
                k--;
        }
        if (k == 0 && j->hidden_last_index == 0)
                return 0; /* nothing to drop */
        n_kept = j->n_recs - k;

        r = snapshot_build(j, k, k > 0 ? j->recs[k - 1]->index : j->hidden_last_index, &snap);
        if (r < 0)
                return r;

        /* Allocate everything now: nothing may fail after the rename. */
        n_allocated = MAX((size_t)64, 2 * (n_kept + 1));
        recs = calloc(n_allocated, sizeof(*recs));
        buf = malloc(JOURNAL_IO_CHUNK);
        if (!recs || !buf) {
                free(snap);
                return -ENOMEM;
        }
        recs[0] = snap;
        memcpy(recs + 1, j->recs + k, n_kept * sizeof(*recs));

        /*
         * O_EXCL after the unlink: we write into a file we created, never
         * through a link someone left at that name. O_APPEND: this fd becomes
         * the journal's own after the rename, so no reopen can fail then.
         */
        (void)unlinkat(j->dir_fd, j->tmp_name, 0);
        fd = openat(j->dir_fd, j->tmp_name,
                    O_RDWR | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
        if (fd < 0) {
                r = negative_errno();
                goto fail;
        }
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
                r = negative_errno();
                goto fail_unlink;
        }
        w = (struct wbuf){ .fd = fd, .buf = buf, .cap = JOURNAL_IO_CHUNK };
        for (size_t i = 0; i < n_kept + 1; i++) {
                r = wbuf_line(&w, recs[i]->json, recs[i]->len);
                if (r < 0)
                        goto fail_unlink;
        }
        r = wbuf_flush(&w);
        if (r < 0)
                goto fail_unlink;
        if (fsync(fd) < 0) {
                r = negative_errno();
                goto fail_unlink;
        }
        if (renameat(j->dir_fd, j->tmp_name, j->dir_fd, j->name) < 0) {
                r = negative_errno();
                goto fail_unlink;
        }

        /* The new file is the journal now: switch to it whatever happens next. */
        closep(&j->fd);
        j->fd = TAKE_FD(fd);
        recs_free(j->recs, k);
        free(j->recs);
        j->recs = TAKE_PTR(recs);
        j->n_recs = n_kept + 1;
        j->n_allocated = n_allocated;
        j->size = w.total;
        j->hidden_last_index = 0;
        j->tail_dirty = false;
        j->compactions++;

        if (fsync(j->dir_fd) < 0) {
                j->dir_dirty = true; /* journal_append() retries before it acknowledges */
                return negative_errno();
        }
        j->dir_dirty = false;
        return 1;

fail_unlink:
        (void)unlinkat(j->dir_fd, j->tmp_name, 0);
fail:
        free(snap);
        return r;
}

int journal_compact(struct journal *j)
{
        int r = journal_compact_internal(j);

        if (r != 0)
                j->last_error = MIN(r, 0);
        return r;
}
