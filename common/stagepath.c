/*
 * stagepath.c: kernel image paths confined to the allowed staging
 * directories (stagepath.h). Used on both sides of the privilege
 * separation: the helper never trusts the network side's check, so the one
 * implementation runs again there, as root (fsuid 0).
 *
 * The threat: whoever can write inside or next to an allowed directory
 * (the run user owns STATE_DIR and so STATE_DIR/kernels; any user may own
 * a directory an operator lists) must not make the helper open a file
 * outside, nor learn anything about files outside from its answers.
 *
 * Why not "realpath(), then open the canonical name": a name is resolved
 * again by every system call that takes it, so between the check and the
 * open a directory on the way can be exchanged with a symlink
 * (renameat2(RENAME_EXCHANGE) does it atomically, in a loop); O_NOFOLLOW
 * covers only the last component, and comparing the inode with a stat() of
 * the same name loses when the swap lands before both. So the name is used
 * only to find out which allowed directory the file is in; the file itself
 * is reached from that directory's descriptor, beneath it, through real
 * directories only:
 *
 * 1. The allowed directory (the trust anchor) is walked from "/" one
 *    component at a time with O_PATH|O_NOFOLLOW: directories are entered,
 *    symlinks followed only when root or the caller's effective uid owns
 *    them (so a configured directory given through a symlink, like a linked
 *    state directory, still works), anything else ends the walk. In the
 *    helper that means root's symlinks only: the run user cannot redirect
 *    STATE_DIR/kernels to /root. The result is a descriptor and the
 *    directory's symlink-free name. Resolved at each call, not pinned at
 *    the start: STATE_DIR/kernels appears at the first download, after the
 *    start, and a pin taken then would trust whatever was there first; the
 *    owner rule holds at every call.
 * 2. The requested name is resolved with realpath() (the caller's view,
 *    only a hint) and must be lexically inside that directory's name; the
 *    remainder is opened from the descriptor with openat2(RESOLVE_BENEATH |
 *    RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS) for its directories
 *    (without openat2, ENOSYS or a seccomp filter's EPERM: one
 *    openat(O_PATH|O_NOFOLLOW) per component, the same refusals), then
 *    fstatat() and openat(O_NOFOLLOW|O_NONBLOCK) of the last component in
 *    that directory, and fstat() of what was opened: the same regular
 *    file. If the swap happened, the open fails (ELOOP: "not allowed"); it
 *    cannot reach the other side of the symlink. RESOLVE_NO_XDEV is not
 *    set: mounts are root's doing, and kernels on the ESP mounted at
 *    /boot/efi (systemd-boot) are legitimate.
 * 3. A name that does not resolve but lies literally inside an allowed
 *    directory (as given or as resolved) is looked up the same way, so that
 *    a missing file there is "not found" and a dangling symlink "not
 *    allowed" whether or not its target exists: the answer tells nothing
 *    about other places, even though the helper resolves as root.
 * 4. Hard links (stagepath.h has the rule): a link of root's /etc/shadow
 *    made in the run user's directory (where fs.protected_hardlinks is off,
 *    or by a process that can read and write the file) is a file outside.
 *
 * A symlink inside an allowed directory that points outside is refused like
 * any outside path; one outside pointing inside names the file inside.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "luofleet/macro.h"
#include "luofleet/stagepath.h"

#define STAGEPATH_MAX_LINKS 40 /* the kernel's own limit on one resolution */

static atomic_bool fallback_forced;  /* the tests' switch */
static atomic_bool openat2_unusable; /* ENOSYS or EPERM seen once: the kernel or a filter says no */

void stagepath_force_fallback(bool on)
{
        atomic_store(&fallback_forced, on);
}

bool stagepath_valid(const char *path)
{
        size_t n;

        if (!path || path[0] != '/')
                return false;
        n = strlen(path);
        if (n < 2 || n >= 4096)
                return false;
        /* Reject "." and ".." components and empty ones ("//"): a path is
         * taken literally, and the allowed-directory check compares names. */
        for (const char *p = path; *p;) {
                const char *c = p + 1, *e = strchrnul(c, '/');
                size_t len = (size_t)(e - c);
                if ((len == 0 && *e) || (len == 1 && c[0] == '.') ||
                    (len == 2 && c[0] == '.' && c[1] == '.'))
                        return false;
                p = e;
        }
        for (const char *p = path; *p; p++)
                if ((unsigned char)*p < 0x20 || *p == 0x7f)
                        return false;
        return true;
}

/*
 * Is path inside dir (not dir itself)? The remainder (relative, at least
 * one character) or NULL. Both are compared as names.
 */
static const char *inside(const char *path, const char *dir)
{
        size_t n = strlen(dir);

        if (n == 1 && dir[0] == '/')
                return path[0] == '/' && path[1] != 0 ? path + 1 : NULL;
        if (strncmp(path, dir, n) == 0 && path[n] == '/' && path[n + 1] != 0)
                return path + n + 1;
        return NULL;
}

/*
 * One component from the directory cur, not followed: 0 and *ret_fd (O_PATH)
 * for a directory, 1 and *ret_fd (the symlink itself) for a symlink, with
 * st filled; -ENOTDIR for anything else.
 */
static int step(int cur, const char *name, int *ret_fd, struct stat *st)
{
        _cleanup_close_ int fd = openat(cur, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);

        if (fd < 0 || fstat(fd, st) < 0)
                return negative_errno();
        if (S_ISDIR(st->st_mode)) {
                *ret_fd = TAKE_FD(fd);
                return 0;
        }
        if (S_ISLNK(st->st_mode)) {
                *ret_fd = TAKE_FD(fd);
                return 1;
        }
        return -ENOTDIR;
}

/* The next component of todo from *pos into name; false at the end. */
static int next_name(const char *todo, size_t *pos, char name[NAME_MAX + 1])
{
        size_t len;

        while (todo[*pos] == '/')
                (*pos)++;
        if (!todo[*pos])
                return 0;
        len = strcspn(todo + *pos, "/");
        if (len > NAME_MAX)
                return -ENAMETOOLONG;
        memcpy(name, todo + *pos, len);
        name[len] = 0;
        *pos += len;
        return 1;
}

/*
 * Resolve an allowed directory, from "/" (a relative one from the working
 * directory's name), one component at a time (step 1 above). *ret_fd is an
 * O_PATH descriptor of it, ret_path (PATH_MAX) its name without symlinks.
 * -EXDEV: a symlink of somebody else's on the way; this directory allows
 * nothing. Other -errno: it does not resolve (yet) for this caller.
 */
static int dir_open(const char *dir, int *ret_fd, char *ret_path)
{
        char todo[2 * PATH_MAX], res[PATH_MAX], target[PATH_MAX], name[NAME_MAX + 1];
        _cleanup_close_ int cur = -1;
        size_t pos = 0, res_len = 0;
        unsigned links = 0;
        int n, r;

        if (!dir || !dir[0])
                return -ENOENT;
        if (dir[0] == '/')
                n = snprintf(todo, sizeof(todo), "%s", dir);
        else {
                char cwd[PATH_MAX];
                if (!getcwd(cwd, sizeof(cwd)))
                        return negative_errno();
                n = snprintf(todo, sizeof(todo), "%s/%s", cwd, dir);
        }
        if (n < 0 || (size_t)n >= sizeof(todo))
                return -ENAMETOOLONG;
        cur = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (cur < 0)
                return negative_errno();
        res[0] = 0;
        while ((r = next_name(todo, &pos, name)) > 0) {
                struct stat st;
                ssize_t t;
                size_t rest;
                int next = -1;

                if (strcmp(name, ".") == 0)
                        continue;
                if (strcmp(name, "..") == 0) {
                        if (res_len == 0)
                                continue; /* "/.." is "/" */
                        next = openat(cur, "..", O_PATH | O_DIRECTORY | O_CLOEXEC);
                        if (next < 0)
                                return negative_errno();
                        close(cur);
                        cur = next;
                        while (res_len > 0 && res[res_len - 1] != '/')
                                res_len--;
                        res[--res_len] = 0;
                        continue;
                }
                r = step(cur, name, &next, &st);
                if (r < 0)
                        return r;
                if (r == 0) {
                        size_t len = strlen(name);
                        if (res_len + 1 + len >= sizeof(res)) {
                                close(next);
                                return -ENAMETOOLONG;
                        }
                        res[res_len++] = '/';
                        memcpy(res + res_len, name, len + 1);
                        res_len += len;
                        close(cur);
                        cur = next;
                        continue;
                }
                /* A symlink: only root's or the caller's own are followed. */
                if (st.st_uid != 0 && st.st_uid != geteuid()) {
                        close(next);
                        return -EXDEV;
                }
                t = readlinkat(next, "", target, sizeof(target));
                close(next);
                if (t < 0)
                        return negative_errno();
                if (++links > STAGEPATH_MAX_LINKS)
                        return -ELOOP;
                if (t == 0)
                        return -ENOENT;
                if ((size_t)t >= sizeof(target))
                        return -ENAMETOOLONG;
                /* todo becomes TARGET/REST */
                rest = strlen(todo + pos);
                if ((size_t)t + 1 + rest >= sizeof(todo))
                        return -ENAMETOOLONG;
                memmove(todo + t + 1, todo + pos, rest + 1);
                memcpy(todo, target, (size_t)t);
                todo[t] = '/';
                pos = 0;
                if (target[0] == '/') {
                        next = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
                        if (next < 0)
                                return negative_errno();
                        close(cur);
                        cur = next;
                        res_len = 0;
                        res[0] = 0;
                }
        }
        if (r < 0)
                return r;
        memcpy(ret_path, res_len ? res : "/", res_len ? res_len + 1 : 2);
        *ret_fd = TAKE_FD(cur);
        return 0;
}

/*
 * The directory rest (relative, valid components, no "." or "..") beneath
 * dfd, through directories only: an O_PATH descriptor, -ELOOP when a
 * component is a symlink, -ENOTDIR when it is something else.
 */
static int beneath_dir(int dfd, const char *rest)
{
        char name[NAME_MAX + 1];
        _cleanup_close_ int cur = -1;
        size_t pos = 0;
        int r;

        if (!atomic_load(&fallback_forced) && !atomic_load(&openat2_unusable)) {
                struct open_how how = {
                        .flags = O_PATH | O_DIRECTORY | O_CLOEXEC,
                        .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
                };
                for (int tries = 0; tries < 16; tries++) {
                        long fd = syscall(SYS_openat2, dfd, rest, &how, sizeof(how));
                        if (fd >= 0)
                                return (int)fd;
                        /* EAGAIN: a rename elsewhere raced the lookup; try again. */
                        if (errno == EAGAIN || errno == EINTR)
                                continue;
                        if (errno != ENOSYS && errno != EPERM)
                                return negative_errno();
                        atomic_store(&openat2_unusable, true);
                        break;
                }
                if (!atomic_load(&openat2_unusable))
                        return -EAGAIN;
        }
        while ((r = next_name(rest, &pos, name)) > 0) {
                struct stat st;
                int next = -1;

                r = step(cur >= 0 ? cur : dfd, name, &next, &st);
                if (r == 1) {
                        close(next);
                        return -ELOOP;
                }
                if (r < 0)
                        return r;
                if (cur >= 0)
                        close(cur);
                cur = next;
        }
        if (r < 0)
                return r;
        if (cur < 0)
                return -ENOENT; /* nothing to walk: not called so */
        return TAKE_FD(cur);
}

/* A symlink met (ELOOP) or an escape (EXDEV) on the way: the path leads elsewhere now. */
static int walk_answer(int r)
{
        return r == -ELOOP || r == -EXDEV ? -STAGEPATH_NOT_ALLOWED : r;
}

/* The file rest (relative, at least one character) beneath the allowed directory dfd. */
static int open_beneath(int dfd, const char *rest)
{
        _cleanup_close_ int pfd = -1, fd = -1;
        const char *slash = strrchr(rest, '/'), *base = slash ? slash + 1 : rest;
        struct stat before, st, dir;
        int at = dfd, fl;

        if (slash) {
                char parent[PATH_MAX];
                size_t len = (size_t)(slash - rest);
                if (len >= sizeof(parent))
                        return -ENAMETOOLONG;
                memcpy(parent, rest, len);
                parent[len] = 0;
                pfd = beneath_dir(dfd, parent);
                if (pfd < 0)
                        return walk_answer(pfd);
                at = pfd;
        }
        if (!base[0])
                return -ENOENT; /* "dir/": a literal path with a trailing slash that did not resolve
                                 */
        /*
         * Look before opening: opening a FIFO blocks until a writer comes, and
         * opening some devices acts (a watchdog starts ticking). Then open
         * without blocking and check it is still the same file.
         */
        if (fstatat(at, base, &before, AT_SYMLINK_NOFOLLOW) < 0)
                return negative_errno();
        if (S_ISLNK(before.st_mode))
                return -STAGEPATH_NOT_ALLOWED;
        if (!S_ISREG(before.st_mode))
                return -STAGEPATH_NOT_REGULAR;
        fd = openat(at, base, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | O_NOFOLLOW);
        if (fd < 0)
                return walk_answer(negative_errno());
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_ino != before.st_ino ||
            st.st_dev != before.st_dev)
                return -STAGEPATH_NOT_REGULAR;
        /* The hard-link rule: whoever could have made the link owns the file too. */
        if (st.st_nlink > 1) {
                if (fstat(at, &dir) < 0)
                        return negative_errno();
                if (st.st_uid != dir.st_uid || (dir.st_mode & (S_IWGRP | S_IWOTH)))
                        return -STAGEPATH_NOT_ALLOWED;
        }
        fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
                return negative_errno();
        return TAKE_FD(fd);
}

bool stagepath_allowed(const char *path, const char *canonical, char *const *dirs, unsigned n)
{
        char dir[PATH_MAX];

        if (!path)
                return false;
        for (unsigned i = 0; i < n; i++) {
                _cleanup_close_ int dfd = -1;
                const char *d = dirs[i];
                int r;

                if (!d)
                        continue;
                r = dir_open(d, &dfd, dir);
                if (r == -EXDEV)
                        continue; /* through somebody else's symlink: nothing is inside */
                if (!canonical && d[0] == '/' && inside(path, d))
                        return true;
                if (r < 0)
                        continue; /* not there (yet): nothing inside it either */
                if (inside(canonical ? canonical : path, dir))
                        return true;
        }
        return false;
}

int stagepath_open(const char *path, char *const *dirs, unsigned n)
{
        char canonical[PATH_MAX], dir[PATH_MAX];
        const char *real;
        int e;

        if (!stagepath_valid(path))
                return -STAGEPATH_NOT_ALLOWED;
        /* The caller's view of the name: it says which directory to look in, nothing more. */
        real = realpath(path, canonical);
        e = real ? 0 : errno;
        for (unsigned i = 0; i < n; i++) {
                _cleanup_close_ int dfd = -1;
                const char *d = dirs[i], *rest = NULL;
                int r;

                if (!d)
                        continue;
                r = dir_open(d, &dfd, dir);
                if (r == -EXDEV)
                        continue;
                if (real) {
                        if (r >= 0)
                                rest = inside(real, dir);
                } else {
                        if (r >= 0)
                                rest = inside(path, dir);
                        if (!rest && d[0] == '/' && (rest = inside(path, d)) && r < 0)
                                return -(e ? e : ENOENT); /* no directory: no file either */
                }
                /* Only inside the allowed directories, checked before anything is said
                 * about the file, so the answer tells nothing about other places. */
                if (rest)
                        return open_beneath(dfd, rest);
        }
        return -STAGEPATH_NOT_ALLOWED;
}
