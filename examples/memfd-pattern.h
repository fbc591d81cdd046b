/*
 * memfd-pattern.h: the example workload's test pattern and its durable
 * small-file write, shared with bench/session_rounds.c. Static inline
 * functions: each program compiles its own; installed beside
 * memfd-workload.c.
 */
#pragma once

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* ---- the pattern: xorshift64 words, checksummed with FNV-1a over 64-bit words ------------- */

static inline uint64_t pattern_start(uint64_t seed)
{
        /* splitmix64 of the seed: any seed (0 too) gives a non-zero xorshift state. */
        uint64_t z = seed + 0x9e3779b97f4a7c15;

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
        z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
        z ^= z >> 31;
        return z ? z : 1;
}

static inline uint64_t pattern_next(uint64_t *x)
{
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        return *x;
}

#define FNV_OFFSET 0xcbf29ce484222325
#define FNV_PRIME 0x100000001b3

static inline uint64_t fill(uint64_t *words, size_t n, uint64_t seed)
{
        uint64_t x = pattern_start(seed), h = FNV_OFFSET;

        for (size_t i = 0; i < n; i++) {
                words[i] = pattern_next(&x);
                h = (h ^ words[i]) * FNV_PRIME;
        }
        return h;
}

/* The number of words that differ from the pattern; the checksum of what is there. */
static inline size_t verify(const uint64_t *words, size_t n, uint64_t seed, uint64_t *ret_sum,
                            size_t *ret_first)
{
        uint64_t x = pattern_start(seed), h = FNV_OFFSET;
        size_t bad = 0;

        for (size_t i = 0; i < n; i++) {
                if (words[i] != pattern_next(&x) && bad++ == 0)
                        *ret_first = i;
                h = (h ^ words[i]) * FNV_PRIME;
        }
        *ret_sum = h;
        return bad;
}

/* Write text to path durably: a temporary file, fsync, rename. */
static inline int write_text(const char *path, const char *text)
{
        char tmp[4096];
        size_t len = strlen(text);
        int fd, r = 0;

        if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
                return -ENAMETOOLONG;
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
                return -errno;
        if (write(fd, text, len) != (ssize_t)len || fsync(fd) < 0)
                r = errno ? -errno : -EIO;
        if (close(fd) < 0 && r == 0)
                r = -errno;
        if (r == 0 && rename(tmp, path) < 0)
                r = -errno;
        if (r < 0)
                unlink(tmp);
        return r;
}
