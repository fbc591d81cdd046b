/*
 * bzimage.h: the kernel_version string of an x86 bzImage's setup header, for
 * the agent's verification after a kexec (agent/verify.c) and the simulated
 * kernel (kernel/sim.c), which boots "into" the release an image names.
 * Pure functions; any thread.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* The header fields (Documentation/arch/x86/boot.rst, protocol 2.00+). */
#define BZIMAGE_HDRS_OFFSET 0x202 /* "HdrS" */
#define BZIMAGE_VERSION_PTR 0x20E /* le16 kernel_version: the string is at ptr + 0x200 */
#define BZIMAGE_VERSION_BASE 0x200
#define BZIMAGE_READ_MAX (64 * 1024) /* the setup code is at most 32 KiB + the header */

/*
 * The kernel_version string of the image in buf[0..len): "HdrS" at 0x202,
 * the le16 pointer at 0x20E, the string at pointer + 0x200, NUL-terminated
 * within buf. 0 with out filled (cut at out_size - 1 bytes, control
 * characters as '?'); -ENODATA: too short for a header; -ENOEXEC: no "HdrS"
 * or a zero pointer; -ERANGE: the string would start outside buf; -EBADMSG:
 * no terminator within buf, or an empty string.
 */
int bzimage_version(const uint8_t *buf, size_t len, char *out, size_t out_size);

/* The same from the first BZIMAGE_READ_MAX bytes of fd (pread: the offset does not move). */
int bzimage_version_fd(int fd, char *out, size_t out_size);

/* The release: the version string's first word ("6.12.9-luo (b@h) #1 ..." -> "6.12.9-luo"). */
void bzimage_release(const char *version, char *out, size_t out_size);
