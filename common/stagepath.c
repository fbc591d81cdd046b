/*
 * stagepath.c: kernel image paths confined to the allowed staging
 * directories (stagepath.h). Used on both sides of the privilege
 * separation: the helper never trusts the network side's check, so the one
 * implementation runs again there.
 *
 * A path is taken only when its canonical form (realpath(3): no symlinks,
 * no '.' or '..') lies inside one of the allowed directories. The file is
 * then opened by its canonical path with O_NOFOLLOW, and the opened inode
 * must be the one stat(2) saw at that path: a symlink swapped in meanwhile
 * anywhere on the way fails the comparison. A symlink inside an allowed
 * directory that points outside is refused like any outside path.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "luofleet/stagepath.h"

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

/* Is the canonical path inside the canonical directory (not the directory itself)? */
static bool path_inside(const char *path, const char *dir)
{
        size_t n = strlen(dir);

        if (n == 1 && dir[0] == '/')
                return path[0] == '/' && path[1] != 0;
        return strncmp(path, dir, n) == 0 && path[n] == '/' && path[n + 1] != 0;
}

bool stagepath_allowed(const char *path, const char *canonical, char *const *dirs, unsigned n)
{
        char dir[PATH_MAX];

        for (unsigned i = 0; i < n; i++) {
                const char *d = dirs[i];
                if (!d)
                        continue;
                if (!canonical && d[0] == '/' && path_inside(path, d))
                        return true;
                if (!realpath(d, dir))
                        continue; /* not there (yet): nothing inside it either */
                if (path_inside(canonical ? canonical : path, dir))
                        return true;
        }
        return false;
}

int stagepath_open(const char *path, char *const *dirs, unsigned n)
{
        char canonical[PATH_MAX];
        struct stat before, st;
        const char *real;
        int fd, e;

        if (!stagepath_valid(path))
                return -STAGEPATH_NOT_ALLOWED;
        real = realpath(path, canonical);
        e = real ? 0 : errno;
        /* Only inside the allowed directories; checked before anything else is
         * said about the file, so the answer tells nothing about other places. */
        if (!stagepath_allowed(path, real, dirs, n))
                return -STAGEPATH_NOT_ALLOWED;
        if (!real)
                return -(e ? e : ENOENT);
        /*
         * Look before opening: opening a FIFO blocks until a writer comes, and
         * opening some devices acts (a watchdog starts ticking). Then open
         * without blocking and check it is still the same file.
         */
        if (stat(real, &before) < 0)
                return -errno;
        if (!S_ISREG(before.st_mode))
                return -STAGEPATH_NOT_REGULAR;
        fd = open(real, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | O_NOFOLLOW);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_ino != before.st_ino ||
            st.st_dev != before.st_dev) {
                close(fd);
                return -STAGEPATH_NOT_REGULAR;
        }
        return fd;
}
