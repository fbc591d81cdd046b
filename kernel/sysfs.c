/*
 * sysfs.c: one-shot reads of sysfs attributes (see sysfs.h for why there is
 * no read loop). Used by luo_v3.c on the event-loop thread (the watched state
 * fd), and by host.c (kexec_loaded, boot id, release) on any thread with fresh
 * fds of their own. Owns nothing.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "luofleet/macro.h"
#include "sysfs.h"

ssize_t sysfs_read_attr(int fd, char *buf, size_t size)
{
        ssize_t n;

        if (fd < 0 || !buf || size < 2)
                return -EINVAL;
        if (lseek(fd, 0, SEEK_SET) < 0)
                return negative_errno();
        do
                n = read(fd, buf, size - 1);
        while (n < 0 && errno == EINTR);
        if (n < 0)
                return negative_errno();
        if ((size_t)n >= size - 1)
                return -EPROTO;
        buf[n] = 0;
        return n;
}

int sysfs_read_state(int fd, enum luo_state *ret)
{
        char buf[SYSFS_ATTR_MAX];
        ssize_t n;
        int s;

        n = sysfs_read_attr(fd, buf, sizeof(buf));
        if (n < 0)
                return (int)n;
        s = luo_state_from_buf(buf, (unsigned long)n);
        if (s < 0)
                return -EPROTO;
        *ret = (enum luo_state)s;
        return 0;
}

int sysfs_parse_bool(const char *buf, size_t len, bool *ret)
{
        if (len > 0 && buf[len - 1] == '\n')
                len--;
        if (len != 1 || (buf[0] != '0' && buf[0] != '1'))
                return -EPROTO;
        *ret = buf[0] == '1';
        return 0;
}
