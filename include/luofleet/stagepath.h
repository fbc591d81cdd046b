/*
 * stagepath.h: the confinement of kernel images to the --staging-dir
 * directories, shared by the network process (agent/staging.c, its own
 * check and, with --privsep=no, the open; agent/h_actions.c and
 * agent/download.c for file:// URLs) and the privileged helper
 * (kernel/privsep.c's OPEN_STAGING, which re-applies every check on a path
 * the network side sent). Non-logging, no state but a switch for the tests;
 * thread-safe (system calls on descriptors it owns). The callers own the
 * directory list.
 *
 * The rules (the why is in stagepath.c):
 * - An allowed directory is resolved at each call from "/" one component at
 *   a time: through directories, and through symlinks only when they belong
 *   to root or to the caller's effective uid. A directory reached through
 *   anybody else's symlink allows nothing (the run user cannot turn
 *   STATE_DIR/kernels into a symlink to /root for the helper).
 * - The requested path names the file the way realpath(3) resolves it (a
 *   symlink anywhere is fine as long as the file is inside), but the file is
 *   then opened from the allowed directory's descriptor, beneath it, through
 *   real directories only (openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
 *   RESOLVE_NO_MAGICLINKS; without openat2, one openat(O_NOFOLLOW) per
 *   component): a directory swapped for a symlink meanwhile fails the open,
 *   never leads outside. Mount points beneath are crossed (no
 *   RESOLVE_NO_XDEV): only root mounts, and /boot/efi is one.
 * - Hard links: a file with more than one link is taken only when its owner
 *   owns the directory it was found in and that directory is writable by
 *   nobody else (no group or other write bit, which also covers an ACL's
 *   mask). Whoever could have put the link there owns both, so a link to a
 *   file of someone else's (root's /etc/shadow into the run user's
 *   STATE_DIR/kernels) is refused like a path outside. Single-link files,
 *   and root's links in root's 0755 /boot, are unaffected.
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
 * call (they may appear after the start), by the rules above. A check
 * only: stagepath_open() decides.
 */
bool stagepath_allowed(const char *path, const char *canonical, char *const *dirs, unsigned n);

/*
 * Open a kernel or initrd image for reading: valid; resolved with
 * realpath() to find the allowed directory it is in (the first one that
 * holds it); then opened beneath that directory's descriptor by the
 * remainder, looked at with fstatat() before the open (a regular file:
 * opening a FIFO would block, some devices act), opened with
 * O_RDONLY|O_CLOEXEC|O_NOCTTY|O_NONBLOCK|O_NOFOLLOW, the same inode, the
 * hard-link rule, O_NONBLOCK cleared. A path that does not resolve but is
 * literally inside an allowed directory is looked up the same way (a
 * dangling symlink there is "not allowed", whatever it points at, so the
 * answer says nothing about other places).
 *
 * Returns the descriptor, -STAGEPATH_NOT_ALLOWED (also: a symlink met
 * where the resolution saw a directory, a refused hard link),
 * -STAGEPATH_NOT_REGULAR or open(2)'s -errno (-ENOENT, -ENOTDIR, -EACCES...).
 */
int stagepath_open(const char *path, char *const *dirs, unsigned n);

/*
 * For the tests: true makes every later call walk component by component as
 * on a kernel without openat2(2) (ENOSYS, or EPERM from a seccomp filter),
 * false uses openat2 again where the kernel has it. Process-wide.
 */
void stagepath_force_fallback(bool on);
