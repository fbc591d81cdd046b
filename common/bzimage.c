/*
 * bzimage.c: the kernel_version string of a bzImage (see bzimage.h). The
 * pointer and the string come from a file the caller does not control the
 * contents of, so every offset is checked against the bytes actually read.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "luofleet/bzimage.h"
#include "luofleet/macro.h"

int bzimage_version(const uint8_t *buf, size_t len, char *out, size_t out_size)
{
        size_t start, n;
        const uint8_t *nul;

        if (!buf || !out || out_size == 0)
                return -EINVAL;
        if (len < BZIMAGE_VERSION_PTR + 2)
                return -ENODATA;
        if (memcmp(buf + BZIMAGE_HDRS_OFFSET, "HdrS", 4) != 0)
                return -ENOEXEC;
        start = (size_t)buf[BZIMAGE_VERSION_PTR] | (size_t)buf[BZIMAGE_VERSION_PTR + 1] << 8;
        if (start == 0)
                return -ENOEXEC;
        start += BZIMAGE_VERSION_BASE;
        if (start >= len)
                return -ERANGE;
        nul = memchr(buf + start, 0, len - start);
        if (!nul)
                return -EBADMSG;
        n = (size_t)(nul - (buf + start));
        if (n == 0)
                return -EBADMSG;
        if (n > out_size - 1)
                n = out_size - 1;
        for (size_t i = 0; i < n; i++) {
                uint8_t c = buf[start + i];
                out[i] = c < 0x20 || c >= 0x7f ? '?' : (char)c;
        }
        out[n] = 0;
        return 0;
}

int bzimage_version_fd(int fd, char *out, size_t out_size)
{
        uint8_t *buf = malloc(BZIMAGE_READ_MAX);
        size_t len = 0;
        int r;

        if (!buf)
                return -ENOMEM;
        while (len < BZIMAGE_READ_MAX) {
                ssize_t n = pread(fd, buf + len, BZIMAGE_READ_MAX - len, (off_t)len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        r = negative_errno();
                        free(buf);
                        return r;
                }
                if (n == 0)
                        break;
                len += (size_t)n;
        }
        r = bzimage_version(buf, len, out, out_size);
        free(buf);
        return r;
}

void bzimage_release(const char *version, char *out, size_t out_size)
{
        size_t n = strcspn(version, " ");

        if (out_size == 0)
                return;
        if (n > out_size - 1)
                n = out_size - 1;
        memcpy(out, version, n);
        out[n] = 0;
}
