/*
 * util.h: small non-logging helpers shared by every program: checked number
 * and duration parsing, clocks and RFC 3339 time, file reads and atomic
 * writes relative to a directory fd, errno names. Thread-safe, no state.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * Parse an unsigned decimal integer: no sign, no spaces, no trailing garbage,
 * at most max. Returns 0, -EINVAL (syntax) or -ERANGE (> max).
 */
int parse_u64(const char *s, uint64_t max, uint64_t *ret);

/*
 * Parse a duration into milliseconds, in the one grammar every luofleet program and API
 * shares: components of a number and a unit, largest unit first, each unit at most once
 * ("500ms", "90s", "30m", "2h", "1h30m", "2m30s"); or a bare number of seconds ("30").
 * At most max_ms. Returns 0, -EINVAL (not a duration) or -ERANGE (too large).
 */
int parse_duration_ms(const char *s, uint64_t max_ms, uint64_t *ret_ms);

/* Clocks in microseconds. */
uint64_t now_mono_usec(void);
uint64_t now_real_usec(void);

/* "2026-11-25T14:28:22.123Z" (UTC, milliseconds); buf at least 32 bytes. */
#define RFC3339_MAX 32
char *format_rfc3339_ms(uint64_t real_usec, char buf[static RFC3339_MAX]);
/* Parse what format_rfc3339_ms() writes (and second precision). -EINVAL. */
int parse_rfc3339(const char *s, uint64_t *ret_real_usec);

/*
 * Read a small file (at most size-1 bytes) relative to dirfd into buf,
 * NUL-terminated. Returns the length or -errno (-EFBIG if it does not fit).
 */
ssize_t read_small_file_at(int dirfd, const char *path, char *buf, size_t size);

/* Strip trailing whitespace/newlines in place; returns s. */
char *strip_trailing(char *s);

/*
 * Write data to dirfd/name atomically: a temporary file in the same
 * directory, fsync, rename, fsync the directory. Returns 0 or -errno; on
 * failure the old file is untouched and no temporary file is left.
 */
int write_file_atomic_at(int dirfd, const char *name, const void *data, size_t len, mode_t mode);

/* write() the whole buffer, looping on EINTR and short counts. */
int write_all(int fd, const void *data, size_t len);
/* read() until size bytes or end of file, looping on EINTR. Returns the count or -errno. */
ssize_t read_full(int fd, void *buf, size_t size);

/* "EINVAL" for 22; "E<n>" for numbers without a name (buf >= 16). */
const char *errno_name(int err, char buf[static 16]);
/* "EINVAL" or "22" -> 22. Returns the errno (> 0) or -EINVAL. */
int errno_from_name(const char *s);

/* A random RFC 4122 version 4 UUID string (37 bytes with NUL). */
int uuid_v4(char buf[static 37]);

/* Is s a syntactically valid UUID (36 chars, hex and dashes)? */
bool uuid_valid(const char *s);

/* Lower-case hex of len bytes; out must hold 2*len+1. */
void hex_encode(const uint8_t *in, size_t len, char *out);

/* Make dir (and parents) with mode; ok if it exists. Returns 0 or -errno. */
int mkdir_p(const char *path, mode_t mode);

/*
 * _exit(status) after the leak check exit() would have run in an ASan build
 * (LeakSanitizer runs at exit(), never at _exit() or execve(): a leak in a
 * process that leaves that way was never reported). With a leak the check
 * ends the process itself (exit code 23, report to ASAN_OPTIONS' log_path).
 * Elsewhere exactly _exit(status).
 */
_Noreturn void exit_now(int status);

/* The same check before an execve() (no-op outside ASan builds). */
void leak_check_now(void);

/*
 * The address of the Unix socket at path (absolute). A path too long for
 * sun_path is named through its directory: "/proc/self/fd/N/name", with
 * the directory's descriptor N in *ret_dir_fd (close it after bind() or
 * connect()); -1 otherwise. 0 or -errno.
 */
struct sockaddr_un;
int unix_sockaddr(const char *path, struct sockaddr_un *ret, int *ret_dir_fd);

/*
 * The host part of an http:// or https:// URL into out (brackets of an IPv6 literal
 * removed, lower-cased): 0, or -EINVAL (another scheme, user info, empty or too long).
 */
int url_host(const char *url, char *out, size_t size);
/*
 * Is host (as url_host() gives it) the loopback interface by its literal: an IPv4 address
 * in 127.0.0.0/8, ::1, or "localhost"? A name that merely starts with "127." is not
 * (127.evil.example resolves wherever its owner wants).
 */
bool host_is_loopback(const char *host);
/* A bearer token may go to url: https (its certificate is verified), or http to a loopback
 * literal; never in clear text across a network. */
bool url_may_carry_token(const char *url);
