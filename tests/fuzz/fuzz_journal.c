/*
 * fuzz_journal.c: journal loading (journal_open on an arbitrary file) and
 * one append after it, the path every agent start takes over whatever a
 * crash, a full disk or an attacker with write access left in the state
 * directory.
 *
 * Each input gets a fresh private directory (mkdtemp, 0700) under
 * $TMPDIR, /dev/shm when it exists (fdatasync is cheap there) or /tmp, which
 * is removed again before returning. Descriptors are checked: the lowest
 * free descriptor must be the same after a run as before it, or the run
 * aborts (a leak is a bug like any other).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "journal.h"
#include "luofleet/util.h"

#define MAX_BYTES 65536

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int lowest_free_fd(void)
{
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                abort();
        close(fd);
        return fd;
}

static const char *tmp_base(void)
{
        const char *t = getenv("TMPDIR");
        struct stat st;

        if (t && *t)
                return t;
        if (stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) && access("/dev/shm", W_OK) == 0)
                return "/dev/shm";
        return "/tmp";
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        char dir[4096];
        struct journal *j = NULL;
        struct journal_load_report rep = { 0 };
        int fd_before = lowest_free_fd(), dfd, fd, r;

        if (snprintf(dir, sizeof(dir), "%s/luofleet-fuzz-journal.XXXXXX", tmp_base()) >=
                    (int)sizeof(dir) ||
            !mkdtemp(dir))
                abort();
        dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                abort();
        fd = openat(dfd, "journal", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0 || write_all(fd, data, size) < 0)
                abort();
        close(fd);

        r = journal_open(dfd, "journal", MAX_BYTES, &j, &rep);
        if (r >= 0) {
                uint64_t last = journal_last_index(j);
                size_t n = journal_count(j);

                /* What was loaded must be self-consistent. */
                if (rep.dropped_bytes > size || rep.first_bad_offset > size)
                        abort();
                if (n > 0 && (journal_first_index(j) > last || !journal_get(j, n - 1) ||
                              journal_get(j, n - 1)->index != last))
                        abort();
                for (size_t i = 0; i < n; i++) {
                        const struct journal_rec *rec = journal_get(j, i);
                        if (!rec || !rec->kind || !rec->json || strlen(rec->json) != rec->len)
                                abort();
                }
                if (journal_size_bytes(j) > size && journal_compactions(j) == 0)
                        abort();

                if (last < (uint64_t)INT64_MAX) {
                        json_t *rec = json_pack("{s:I, s:s, s:s}", "index", (json_int_t)(last + 1),
                                                "kind", "fuzz", "note", "appended by fuzz_journal");
                        if (!rec)
                                abort();
                        r = journal_append(j, rec);
                        json_decref(rec);
                        if (r < 0 && r != -E2BIG)
                                abort(); /* a good journal must take the next record */
                        if (r >= 0 && journal_last_index(j) != last + 1)
                                abort();
                }
                /* An index at or below the last one must be refused. */
                json_t *old = json_pack("{s:I, s:s}", "index", (json_int_t)journal_last_index(j),
                                        "kind", "fuzz");
                if (!old)
                        abort();
                if (journal_last_index(j) > 0 && journal_append(j, old) != -EINVAL)
                        abort();
                json_decref(old);
        }
        j = journal_free(j);

        /* Remove whatever the journal may have created: file, .compact temp. */
        (void)unlinkat(dfd, "journal", 0);
        (void)unlinkat(dfd, "journal.compact", 0);
        close(dfd);
        if (rmdir(dir) < 0) {
                fprintf(stderr, "fuzz_journal: %s left behind: %m\n", dir);
                abort();
        }
        if (lowest_free_fd() != fd_before) {
                fprintf(stderr, "fuzz_journal: descriptor leak (lowest free fd %d, was %d)\n",
                        lowest_free_fd(), fd_before);
                abort();
        }
        return 0;
}
