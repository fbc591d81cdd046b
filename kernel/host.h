/*
 * host.h: what the two real backends (luo_v3.c, luo_sessions.c) share
 * (kernel/ only): the system calls behind the injected struct luo_sys,
 * paths resolved under a directory fd for cfg->root, kexec staging and the
 * reboot call, the boot facts of get_info (boot id, release, uptime), and
 * the marker memfd's format.
 *
 * A struct host is a value embedded in a backend: the luo_sys copy and the
 * root fd. After host_init() it is read-only, so every function here may be
 * called from any thread at once (each uses stack buffers and fresh fds).
 * Non-logging: -errno returns; host_init() and host_msg_open_failed() write
 * an operator's sentence into msg.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "luofleet/backend.h"

#define HOST_KEXEC_LOADED_REL "sys/kernel/kexec_loaded"
#define HOST_DEV_LIVEUPDATE_REL "dev/liveupdate"

struct host {
        struct luo_sys sys; /* a copy: the caller's table may not outlive us */
        int root_fd;        /* O_PATH directory fd for cfg->root; -1 when closed */
};

/*
 * The head both real backends start with (their first member), so that the
 * ops members that only need the host are served here directly.
 */
struct host_backend {
        struct backend base; /* first: a struct backend * is a struct host_backend * */
        struct host host;
};

/* backend_ops members for a struct host_backend: kexec_load/unload/loaded, get_info. */
int host_op_kexec_load(struct backend *b, int kernel_fd, int initrd_fd, const char *cmdline);
int host_op_kexec_unload(struct backend *b);
int host_op_kexec_loaded(struct backend *b, bool *ret);
int host_op_get_info(struct backend *b, struct backend_info *ret);

/*
 * Copy cfg->sys (NULL members: the real calls) and open cfg->root (NULL:
 * BACKEND_ROOT_DEFAULT). On failure: -errno and "cannot open root directory
 * ROOT: REASON" in msg; h->root_fd stays -1. Call host_done() in any case.
 */
int host_init(struct host *h, const struct backend_config *cfg, char *msg, size_t msg_size);
/* Close the root fd; idempotent. */
void host_done(struct host *h);

/* openat(2) through the table: an fd or -errno. dirfd AT_FDCWD or any fd. */
int host_openat(const struct host *h, int dirfd, const char *path, int flags);
/* openat(2) of rel (relative, no leading slash) under the root. */
int host_open(const struct host *h, const char *rel, int flags);
/* ioctl(2) through the table: >= 0 or -errno (the kernel's errno unchanged). */
int host_ioctl(const struct host *h, int fd, unsigned long request, void *arg);

/* One-shot read of a small attribute under the root on a fresh fd (sysfs.h rules). */
ssize_t host_read_attr(const struct host *h, const char *rel, char *buf, size_t size);

/* kexec_file_load(2) of kernel_fd (initrd_fd < 0: none; cmdline NULL: ""). */
int host_kexec_load(const struct host *h, int kernel_fd, int initrd_fd, const char *cmdline);
/* kexec_file_load(2) with KEXEC_FILE_UNLOAD. */
int host_kexec_unload(const struct host *h);
/* <root>/sys/kernel/kexec_loaded == 1; -EPROTO for content other than 0/1. */
int host_kexec_loaded(const struct host *h, bool *ret);
/* sync(), then reboot(LINUX_REBOOT_CMD_KEXEC); returns only on failure (or when injected). */
int host_reboot_kexec(const struct host *h);

/* boot id (required), release (uname's when osrelease is unreadable), uptime (0 = unknown). */
int host_get_info(const struct host *h, struct backend_info *ret);

/*
 * The operator's sentence for a failed open of <root>/<rel> with the
 * negative errno err: EACCES/EPERM name CAP_SYS_ADMIN, anything else
 * "cannot open PATH: REASON". The backends handle their own special cases
 * (EBUSY, ENOENT) before calling this.
 */
void host_msg_open_failed(const char *root, const char *rel, int err, char *msg, size_t msg_size);

/*
 * The marker memfd (backend.h's marker_write/marker_read): "LFMK", the
 * blob's length as a little-endian u32, the blob; BACKEND_MARKER_MAX bytes
 * in all. The size is set before the memfd is preserved: the mainline
 * kernel freezes it at PRESERVE_FD (ftruncate then fails with EPERM).
 */
#define HOST_MARKER_HEADER 8u
#define HOST_MARKER_BLOB_MAX (BACKEND_MARKER_MAX - HOST_MARKER_HEADER)

/* memfd_create("luofleet-marker", MFD_CLOEXEC), ftruncate'd to BACKEND_MARKER_MAX. */
int host_marker_memfd(int *ret_fd);
/* Write the header and blob at offset 0 (-EFBIG past HOST_MARKER_BLOB_MAX). */
int host_marker_store(int memfd, const void *blob, size_t len);
/*
 * Read a marker memfd back: the blob malloc'ed (never NULL, even for 0
 * bytes) and its length. -ENOENT when the header is all zero (prepared, but
 * nothing was ever written), -EBADMSG for a wrong magic or a length the file
 * cannot hold.
 */
int host_marker_load(int memfd, void **ret_blob, size_t *ret_len);
