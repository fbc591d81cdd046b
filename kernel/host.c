/*
 * host.c: the system calls and facts the real backends share (host.h):
 * luo_sys indirection, the root directory fd, kexec_file_load(2) and
 * reboot(LINUX_REBOOT_CMD_KEXEC), /sys/kernel/kexec_loaded, the boot id,
 * release and uptime of get_info, and the marker memfd's format.
 *
 * Threads: any, concurrently (a struct host is read-only after host_init());
 * every read uses a fresh fd and stack buffers. Owns: the root fd of each
 * struct host, closed by host_done().
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kexec.h>
#include <linux/reboot.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "backend-private.h"
#include "host.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "sysfs.h"

#define BOOT_ID_REL "proc/sys/kernel/random/boot_id"
#define OSRELEASE_REL "proc/sys/kernel/osrelease"
#define UPTIME_REL "proc/uptime"

static const char marker_magic[4] = { 'L', 'F', 'M', 'K' };

int host_init(struct host *h, const struct backend_config *cfg, char *msg, size_t msg_size)
{
        const char *root = cfg->root ? cfg->root : BACKEND_ROOT_DEFAULT;
        int r;

        *h = (struct host){ .root_fd = -1 };
        if (cfg->sys)
                h->sys = *cfg->sys;
        r = host_openat(h, AT_FDCWD, root, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (r < 0) {
                backend_msgf(msg, msg_size, "cannot open root directory %s: %s", root,
                             strerror(-r));
                return r;
        }
        h->root_fd = r;
        return 0;
}

void host_done(struct host *h)
{
        if (h->root_fd >= 0)
                close(h->root_fd);
        h->root_fd = -1;
}

int host_openat(const struct host *h, int dirfd, const char *path, int flags)
{
        int fd = h->sys.openat ? h->sys.openat(dirfd, path, flags, 0) : openat(dirfd, path, flags);
        return fd < 0 ? negative_errno() : fd;
}

int host_open(const struct host *h, const char *rel, int flags)
{
        return host_openat(h, h->root_fd, rel, flags);
}

int host_ioctl(const struct host *h, int fd, unsigned long request, void *arg)
{
        int r = h->sys.ioctl ? h->sys.ioctl(fd, request, arg) : ioctl(fd, request, arg);
        return r < 0 ? negative_errno() : r;
}

ssize_t host_read_attr(const struct host *h, const char *rel, char *buf, size_t size)
{
        _cleanup_close_ int fd = -1;

        fd = host_open(h, rel, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return fd;
        return sysfs_read_attr(fd, buf, size);
}

static int host_kexec_file_load(const struct host *h, int kernel_fd, int initrd_fd,
                                unsigned long cmdline_len, const char *cmdline, unsigned long flags)
{
        long r;

        if (h->sys.kexec_file_load)
                r = h->sys.kexec_file_load(kernel_fd, initrd_fd, cmdline_len, cmdline, flags);
        else {
#ifdef SYS_kexec_file_load
                r = syscall(SYS_kexec_file_load, kernel_fd, initrd_fd, cmdline_len, cmdline, flags);
#else
                errno = ENOSYS;
                r = -1;
#endif
        }
        return r < 0 ? negative_errno() : 0;
}

int host_kexec_load(const struct host *h, int kernel_fd, int initrd_fd, const char *cmdline)
{
        unsigned long flags = 0;

        if (kernel_fd < 0)
                return -EBADF;
        if (!cmdline)
                cmdline = "";
        if (initrd_fd < 0) {
                initrd_fd = -1;
                flags |= KEXEC_FILE_NO_INITRAMFS;
        }
        /* The kernel wants the length including the terminating NUL. */
        return host_kexec_file_load(h, kernel_fd, initrd_fd, strlen(cmdline) + 1, cmdline, flags);
}

int host_kexec_unload(const struct host *h)
{
        return host_kexec_file_load(h, -1, -1, 0, NULL, KEXEC_FILE_UNLOAD);
}

int host_kexec_loaded(const struct host *h, bool *ret)
{
        char buf[SYSFS_ATTR_MAX];
        ssize_t n;

        n = host_read_attr(h, HOST_KEXEC_LOADED_REL, buf, sizeof(buf));
        if (n < 0)
                return (int)n;
        return sysfs_parse_bool(buf, (size_t)n, ret);
}

int host_reboot_kexec(const struct host *h)
{
        int r;

        sync();
        r = h->sys.reboot ? h->sys.reboot(LINUX_REBOOT_CMD_KEXEC) : reboot(LINUX_REBOOT_CMD_KEXEC);
        if (r < 0)
                return negative_errno();
        return 0; /* only an injected reboot returns success */
}

/* "SECONDS.FRACTION IDLE" in milliseconds (to the hundredth); 0 when unreadable. */
static uint64_t host_uptime_ms(const struct host *h)
{
        char up[128];
        char *end = NULL;
        unsigned long long sec;
        uint64_t ms;

        if (host_read_attr(h, UPTIME_REL, up, sizeof(up)) <= 0)
                return 0;
        errno = 0;
        sec = strtoull(up, &end, 10);
        if (errno != 0 || end == up || sec >= UINT64_MAX / 1000)
                return 0;
        ms = (uint64_t)sec * 1000;
        if (*end == '.' && end[1] >= '0' && end[1] <= '9') {
                ms += (uint64_t)(end[1] - '0') * 100;
                if (end[2] >= '0' && end[2] <= '9')
                        ms += (uint64_t)(end[2] - '0') * 10;
        }
        return ms;
}

int host_get_info(const struct host *h, struct backend_info *ret)
{
        struct backend_info info = {};
        char buf[sizeof(info.release) + 2];
        ssize_t n;

        n = host_read_attr(h, BOOT_ID_REL, buf, sizeof(buf));
        if (n < 0)
                return (int)n;
        strip_trailing(buf);
        if (!uuid_valid(buf))
                return -EPROTO;
        memcpy(info.boot_id, buf, strlen(buf) + 1);

        n = host_read_attr(h, OSRELEASE_REL, buf, sizeof(buf));
        if (n >= 0) {
                strip_trailing(buf);
                if (buf[0] == 0 || strlen(buf) >= sizeof(info.release))
                        n = -EPROTO;
        }
        if (n >= 0)
                memcpy(info.release, buf, strlen(buf) + 1);
        else {
                struct utsname u;
                if (uname(&u) < 0)
                        return negative_errno();
                _Static_assert(sizeof(u.release) <= sizeof(info.release), "release fits");
                memcpy(info.release, u.release, sizeof(u.release));
                info.release[sizeof(info.release) - 1] = 0;
        }

        /* The blackout's share of the new boot (agent/verify.c). */
        info.uptime_ms = host_uptime_ms(h);
        *ret = info;
        return 0;
}

void host_msg_open_failed(const char *root, const char *rel, int err, char *msg, size_t msg_size)
{
        char path[512];

        backend_display_path(root, rel, path, sizeof(path));
        if (err == -EACCES || err == -EPERM)
                backend_msgf(msg, msg_size,
                             "opening %s needs CAP_SYS_ADMIN: run the agent as root (%s)", path,
                             strerror(-err));
        else
                backend_msgf(msg, msg_size, "cannot open %s: %s", path, strerror(-err));
}

/* pwrite/pread the whole range, looping on EINTR and short counts (a memfd, not sysfs). */
static int host_pwrite_all(int fd, const void *data, size_t len, off_t off)
{
        const char *p = data;

        while (len > 0) {
                ssize_t n = pwrite(fd, p, len, off);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return negative_errno();
                if (n == 0)
                        return -EIO;
                p += n;
                len -= (size_t)n;
                off += n;
        }
        return 0;
}

static int host_pread_all(int fd, void *buf, size_t len, off_t off)
{
        char *p = buf;

        while (len > 0) {
                ssize_t n = pread(fd, p, len, off);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return negative_errno();
                if (n == 0)
                        return -EBADMSG; /* shorter than its header says */
                p += n;
                len -= (size_t)n;
                off += n;
        }
        return 0;
}

int host_marker_memfd(int *ret_fd)
{
        _cleanup_close_ int fd = -1;

        fd = memfd_create("luofleet-marker", MFD_CLOEXEC);
        if (fd < 0)
                return negative_errno();
        /* Before PRESERVE_FD: the mainline kernel freezes a preserved memfd's size. */
        if (ftruncate(fd, (off_t)BACKEND_MARKER_MAX) < 0)
                return negative_errno();
        *ret_fd = TAKE_FD(fd);
        return 0;
}

int host_marker_store(int memfd, const void *blob, size_t len)
{
        uint8_t hdr[HOST_MARKER_HEADER];
        int r;

        if (len > HOST_MARKER_BLOB_MAX)
                return -EFBIG;
        if (len > 0 && !blob)
                return -EINVAL;
        memcpy(hdr, marker_magic, sizeof(marker_magic));
        for (unsigned i = 0; i < 4; i++)
                hdr[4 + i] = (uint8_t)(len >> (8 * i));
        /* The blob first, then the header that makes it valid. */
        r = host_pwrite_all(memfd, blob, len, HOST_MARKER_HEADER);
        if (r < 0)
                return r;
        return host_pwrite_all(memfd, hdr, sizeof(hdr), 0);
}

int host_marker_load(int memfd, void **ret_blob, size_t *ret_len)
{
        static const uint8_t zero[HOST_MARKER_HEADER];
        uint8_t hdr[HOST_MARKER_HEADER];
        _cleanup_free_ void *blob = NULL;
        struct stat st;
        uint32_t len = 0;
        int r;

        if (fstat(memfd, &st) < 0)
                return negative_errno();
        if (st.st_size < (off_t)HOST_MARKER_HEADER)
                return st.st_size == 0 ? -ENOENT : -EBADMSG;
        r = host_pread_all(memfd, hdr, sizeof(hdr), 0);
        if (r < 0)
                return r;
        if (memcmp(hdr, zero, sizeof(hdr)) == 0)
                return -ENOENT;
        if (memcmp(hdr, marker_magic, sizeof(marker_magic)) != 0)
                return -EBADMSG;
        for (unsigned i = 0; i < 4; i++)
                len |= (uint32_t)hdr[4 + i] << (8 * i);
        if (len > HOST_MARKER_BLOB_MAX || (off_t)len > st.st_size - (off_t)HOST_MARKER_HEADER)
                return -EBADMSG;
        blob = malloc(len > 0 ? len : 1);
        if (!blob)
                return -ENOMEM;
        r = host_pread_all(memfd, blob, len, HOST_MARKER_HEADER);
        if (r < 0)
                return r;
        *ret_blob = TAKE_PTR(blob);
        *ret_len = len;
        return 0;
}

static const struct host *host_of(struct backend *b)
{
        return &((struct host_backend *)b)->host;
}

int host_op_kexec_load(struct backend *b, int kernel_fd, int initrd_fd, const char *cmdline)
{
        return host_kexec_load(host_of(b), kernel_fd, initrd_fd, cmdline);
}

int host_op_kexec_unload(struct backend *b)
{
        return host_kexec_unload(host_of(b));
}

int host_op_kexec_loaded(struct backend *b, bool *ret)
{
        return host_kexec_loaded(host_of(b), ret);
}

int host_op_get_info(struct backend *b, struct backend_info *ret)
{
        return host_get_info(host_of(b), ret);
}
