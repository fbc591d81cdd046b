/*
 * stagepath.h: the confinement of kernel images to the --staging-dir
 * directories, shared by the network process (agent/staging.c, its own
 * check and, with --privsep=no, the open) and the privileged helper
 * (kernel/privsep.c's OPEN_STAGING, which re-applies every check on a path
 * the network side sent). Non-logging, no state; thread-safe (realpath(3),
 * stat(2), open(2) only). The callers own the directory list.
 */
#pragma once

#include <stdbool.h>

/* The answers of stagepath_open() that are not open(2)'s own. */
#define STAGEPATH_NOT_ALLOWED EXDEV  /* outside every allowed directory (or not a valid path) */
#define STAGEPATH_NOT_REGULAR ENODEV /* not a regular file, or swapped between stat and open */

/*
 * The literal rules: absolute, shorter than 4096 bytes, no "." or ".."
 * components, no empty ones ("//"), no control characters.
 */
bool stagepath_valid(const char *path);

/*
 * Does path (valid) lie inside one of the n directories? canonical is
 * realpath() of path, or NULL when it did not resolve: then the literal
 * path is compared with the directories as given and as resolved, so that
 * a missing (or unreachable) file in an allowed directory is "not found"
 * and anything else "not allowed". The directories are resolved at each
 * call (they may appear after the start).
 */
bool stagepath_allowed(const char *path, const char *canonical, char *const *dirs, unsigned n);

/*
 * Open a kernel or initrd image for reading: valid, resolved with
 * realpath() inside an allowed directory, stat()ed (a regular file, looked
 * at before the open: opening a FIFO would block, some devices act), opened
 * by its canonical path with O_RDONLY|O_CLOEXEC|O_NOCTTY|O_NONBLOCK|
 * O_NOFOLLOW, and the opened inode must be the one stat() saw. Returns the
 * descriptor, -STAGEPATH_NOT_ALLOWED, -STAGEPATH_NOT_REGULAR or open(2)'s
 * -errno (realpath()'s when the path did not resolve).
 */
int stagepath_open(const char *path, char *const *dirs, unsigned n);
