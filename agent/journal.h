/*
 * journal.h: the agent's durable, append-only record of every change of the
 * host's state document, which is also the event log (SSE ids and
 * /v1/history entries are journal indexes).
 *
 * The file is JSON lines: one compact JSON object per line, each ended by
 * '\n', each with an integer "index" strictly greater than the previous
 * line's and a string "kind". Everything else in a record is opaque here.
 * Every record is also held in memory, as its serialized line.
 *
 * Threads: none of its own and not thread-safe; every call is made with the
 * agent's lock held. Non-logging: functions return >= 0 or -errno and the
 * caller logs once.
 *
 * Owns: the journal file descriptor (O_APPEND, flock()ed), a descriptor of
 * the directory it lives in, and the in-memory copy of every record.
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* 0 passed as max_bytes to journal_open() means this. */
#define JOURNAL_MAX_BYTES_DEFAULT (UINT64_C(8) * 1024 * 1024)
/* The accepted range of max_bytes (-ERANGE outside). */
#define JOURNAL_MAX_BYTES_MIN UINT64_C(4096)
#define JOURNAL_MAX_BYTES_LIMIT (UINT64_C(1) * 1024 * 1024 * 1024)
/* The longest line, its '\n' included, that is written or accepted. */
#define JOURNAL_LINE_MAX ((size_t)1024 * 1024)

struct journal;

/*
 * One record, as stored. json is the line without its '\n' and is
 * NUL-terminated (len excludes the NUL); kind points into the same
 * allocation. Borrowed from the journal: valid until the record is dropped by
 * a compaction or the journal is freed (an append does not move it).
 */
struct journal_rec {
        uint64_t index;
        const char *kind;
        const char *json;
        size_t len;
};

/*
 * What journal_open() found. records: valid records read from the file (all
 * of them, even if a compaction at open then folded some into a snapshot).
 * dropped_bytes: bytes cut off the end of the file, starting at
 * first_bad_offset (the offset of the first invalid line; 0 when nothing was
 * dropped). torn: the dropped bytes were one unterminated last line (what an
 * interrupted write leaves, NUL-filled or not) rather than invalid data
 * followed by more lines.
 */
struct journal_load_report {
        size_t records;
        uint64_t dropped_bytes;
        uint64_t first_bad_offset;
        bool torn;
};

/*
 * Open (creating it 0600 if missing) dir_fd/name, a plain file name, and load
 * every record. Loading stops at the first invalid line (no '\n', NUL bytes,
 * not a JSON object, no integer "index" >= 1 greater than the previous one,
 * no string "kind", longer than JOURNAL_LINE_MAX); the file is truncated to
 * the end of the last good record and synced, and *ret_report says what was
 * dropped. Records before the bad line are never lost. A good prefix larger
 * than 4 * max_bytes is compacted at once (with a bare snapshot: no snapshot
 * function can be set yet); a failure of that compaction does not fail the
 * open (see journal_last_error()), but memory then holds only the newest
 * records (about 2 to 4 * max_bytes of them; the next compaction folds the
 * rest into its snapshot). ret_report may be NULL.
 *
 * max_bytes: 0 = JOURNAL_MAX_BYTES_DEFAULT, else within [JOURNAL_MAX_BYTES_MIN,
 * JOURNAL_MAX_BYTES_LIMIT].
 *
 * Returns 0, or -EINVAL (bad name), -ERANGE (max_bytes), -ELOOP (name is a
 * symlink), -EISDIR, -EBADFD (not a regular file), -EBUSY (another process or
 * journal holds the file), -ENOMEM, or the -errno of a failed system call.
 */
int journal_open(int dir_fd, const char *name, uint64_t max_bytes, struct journal **ret,
                 struct journal_load_report *ret_report);

/* Close the files and free every record. NULL-safe; returns NULL. */
struct journal *journal_free(struct journal *j);

/*
 * Append rec (borrowed, not modified) as one line: rec must be an object
 * with an integer "index" > journal_last_index() and a string "kind" without
 * NUL (-EINVAL otherwise); the line, '\n' included, must fit
 * JOURNAL_LINE_MAX (-E2BIG). Returns 0 only once the line is on disk
 * (write + fdatasync) and in memory. On failure the file is cut back to its
 * previous size, memory is unchanged and -errno is returned; if even the
 * cut-back fails, later appends retry it first and fail until it succeeds.
 *
 * If the file then exceeds max_bytes, journal_compact() runs; its failure does
 * not fail the append (journal_last_error() tells).
 */
int journal_append(struct journal *j, json_t *rec);

/* Index of the newest / oldest record in memory; 0 when empty. */
uint64_t journal_last_index(const struct journal *j);
uint64_t journal_first_index(const struct journal *j);
size_t journal_count(const struct journal *j);

/* The record at pos (0 = oldest), borrowed; NULL when pos >= journal_count(). */
const struct journal_rec *journal_get(const struct journal *j, size_t pos);

/* Position of the first record with an index > index; journal_count() if none. */
size_t journal_find_after(const struct journal *j, uint64_t index);

/* Size of the file (the good records), in bytes. */
uint64_t journal_size_bytes(const struct journal *j);

/*
 * Builds the snapshot that replaces the records a compaction drops (oldest
 * first; the first may be an earlier snapshot). Returns a new reference to a
 * JSON object, which the journal takes, or NULL for a bare snapshot. The
 * journal then sets "index" (the index of the last dropped record) and
 * "kind": "snapshot" in it, first in key order. It must not call back into
 * the journal. A non-object result fails the compaction (-EINVAL).
 */
typedef json_t *(*journal_snapshot_fn)(const struct journal_rec *const *dropped, size_t n_dropped,
                                       void *userdata);

void journal_set_snapshot_fn(struct journal *j, journal_snapshot_fn fn, void *userdata);

/*
 * Keep the newest records whose lines total at most max_bytes / 2 (the newest
 * one always) and replace the older ones by one snapshot record: written with
 * the kept records to "<name>.compact", synced, renamed over the journal, the
 * directory synced. Returns 1 when compacted, 0 when there was nothing to drop,
 * -errno on failure, in which case the file and memory are as before and no
 * temporary file is left. One exception: if only the final directory sync
 * fails, the new file is in place and in use, -errno is returned, and the
 * next append syncs the directory before it succeeds.
 * Pointers from journal_get() to dropped records die here.
 */
int journal_compact(struct journal *j);

/* Successful compactions since open. */
uint64_t journal_compactions(const struct journal *j);

/*
 * The -errno of the latest compaction if it failed (at open, after an append,
 * or called directly), 0 after a successful one or if none failed yet.
 */
int journal_last_error(const struct journal *j);

/*
 * Test hook, for the crash tests only (tests/integration/test_faults.py,
 * test_crash.py; docs/journal.md): the environment variable
 * LUOFLEET_TEST_CRASH_POINT=POINT[:ARG[:N]], read once at the first
 * journal_open(), names one place where the process kills itself with
 * SIGKILL, the N-th time (default 1) it gets there with ARG (any when
 * omitted). No API reaches it. Points:
 *   journal-mid-record:KIND   half of a KIND record's line written and synced
 *   journal-after-record:KIND a KIND record durable, not yet acknowledged
 *   op-before-kernel:ACTION   an operation's running record durable, no kernel call yet
 *   op-after-kernel:ACTION    the kernel call returned, nothing recorded yet
 * journal_crash_point() kills the process when (point, arg) is the one due
 * and returns otherwise. Unset (always in production), it costs a compare.
 */
void journal_crash_point(const char *point, const char *arg);
