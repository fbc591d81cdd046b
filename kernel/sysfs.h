/*
 * sysfs.h: reading sysfs attributes the way sysfs wants (kernel/ only): one
 * read at offset 0, never a loop, since a sysfs attribute is produced whole
 * by one show() call and a read at offset 0 is what refreshes it (and re-arms
 * sysfs_notify() on the watched fd). Non-logging, no state; any thread, as
 * long as one fd is not read by two threads at once.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "luofleet/luo_state.h"

/* Longest attribute we read: "undefined\n" and "1\n" fit with room to spare. */
#define SYSFS_ATTR_MAX 64

/*
 * lseek(fd, 0) and one read into buf (size >= 2), NUL-terminated. Returns the
 * length, -errno, or -EPROTO when the content fills the buffer (not an
 * attribute we know).
 */
ssize_t sysfs_read_attr(int fd, char *buf, size_t size);

/* sysfs_read_attr() + luo_state_from_buf(); unknown content: -EPROTO. */
int sysfs_read_state(int fd, enum luo_state *ret);

/* "1\n" or "0\n" (newline optional) -> bool; anything else: -EPROTO. */
int sysfs_parse_bool(const char *buf, size_t len, bool *ret);
