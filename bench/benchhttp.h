/*
 * benchhttp.h: the little HTTP/1.1 client shared by the bench tools (libc
 * only): non-blocking TCP connections to 127.0.0.1, a growable receive
 * buffer and a parser for one Content-Length delimited response at a time.
 * Header-only (static functions) so each tool is one translation unit.
 */
#pragma once

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct bconn {
        int fd;
        char *buf;
        size_t len, cap;
        /* the parsed response, valid when bconn_parse() returned 1 */
        int status;
        size_t hdr_len, body_len;
        /* tool-specific */
        uint64_t t_done;
        bool done;
};

static inline uint64_t now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static inline void die(const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        fputs("error: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
        exit(1);
}

static inline void raise_nofile(unsigned want)
{
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                die("getrlimit: %s", strerror(errno));
        if (rl.rlim_cur >= want)
                return;
        if (rl.rlim_max < want)
                rl.rlim_max = want; /* only root may do this; try anyway */
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                die("cannot raise RLIMIT_NOFILE to %u: %s", want, strerror(errno));
}

/* Start a non-blocking connect; bconn_wait_connected() finishes it. */
static inline void bconn_open(struct bconn *c, const char *host, unsigned port)
{
        struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
        int one = 1;

        memset(c, 0, sizeof(*c));
        if (inet_pton(AF_INET, host, &sin.sin_addr) != 1)
                die("bad IPv4 address %s", host);
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0)
                die("socket: %s", strerror(errno));
        (void)setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(c->fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 && errno != EINPROGRESS)
                die("connect to %s:%u: %s", host, port, strerror(errno));
        c->cap = 4096;
        c->buf = malloc(c->cap);
        if (!c->buf)
                die("out of memory");
}

static inline void bconn_wait_connected(struct bconn *c)
{
        struct pollfd p = { .fd = c->fd, .events = POLLOUT };
        int err = 0;
        socklen_t l = sizeof(err);

        if (poll(&p, 1, 10000) != 1)
                die("connect timed out");
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0 || err)
                die("connect: %s", strerror(err ? err : errno));
}

static inline void bconn_close(struct bconn *c)
{
        if (c->fd >= 0)
                close(c->fd);
        c->fd = -1;
        free(c->buf);
        c->buf = NULL;
}

/* Write all of s (small requests: the socket buffer takes them at once). */
static inline void bconn_send(struct bconn *c, const char *s, size_t n)
{
        while (n) {
                ssize_t w = write(c->fd, s, n);
                if (w < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN) {
                                struct pollfd p = { .fd = c->fd, .events = POLLOUT };
                                (void)poll(&p, 1, 1000);
                                continue;
                        }
                        die("write: %s", strerror(errno));
                }
                s += w;
                n -= (size_t)w;
        }
}

/* Read what is there. 1 read something, 0 nothing (EAGAIN), -1 EOF. */
static inline int bconn_read(struct bconn *c)
{
        int got = 0;

        for (;;) {
                if (c->cap - c->len < 2048) {
                        c->cap *= 2;
                        c->buf = realloc(c->buf, c->cap);
                        if (!c->buf)
                                die("out of memory");
                }
                ssize_t r = read(c->fd, c->buf + c->len, c->cap - c->len - 1);
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                return got;
                        die("read: %s", strerror(errno));
                }
                if (r == 0)
                        return got ? 1 : -1;
                c->len += (size_t)r;
                c->buf[c->len] = 0;
                got = 1;
        }
}

/* 1 a whole response is in buf, 0 not yet. Dies on a malformed one. */
static inline int bconn_parse(struct bconn *c)
{
        char *end, *p;
        size_t cl = 0;
        bool have_cl = false;

        if (c->len < 12)
                return 0;
        c->buf[c->len] = 0;
        end = strstr(c->buf, "\r\n\r\n");
        if (!end)
                return 0;
        if (strncmp(c->buf, "HTTP/1.1 ", 9) != 0 && strncmp(c->buf, "HTTP/1.0 ", 9) != 0)
                die("not an HTTP response: %.40s", c->buf);
        c->status = (int)strtol(c->buf + 9, NULL, 10);
        for (p = strstr(c->buf, "\r\n"); p && p < end; p = strstr(p + 2, "\r\n")) {
                if (strncasecmp(p + 2, "Content-Length:", 15) == 0) {
                        cl = (size_t)strtoull(p + 17, NULL, 10);
                        have_cl = true;
                }
        }
        if (!have_cl)
                die("response without Content-Length (status %d)", c->status);
        c->hdr_len = (size_t)(end + 4 - c->buf);
        c->body_len = cl;
        if (c->len < c->hdr_len + cl)
                return 0;
        if (c->len > c->hdr_len + cl)
                die("%zu unexpected bytes after a response", c->len - c->hdr_len - cl);
        return 1;
}

static inline const char *bconn_body(const struct bconn *c)
{
        return c->buf + c->hdr_len;
}

static inline void bconn_reset(struct bconn *c)
{
        c->len = 0;
        c->status = 0;
        c->hdr_len = c->body_len = 0;
        c->done = false;
}

/* One blocking exchange (poll on the non-blocking socket). */
static inline void bconn_request(struct bconn *c, const char *req, int timeout_ms)
{
        uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000u;

        bconn_reset(c);
        bconn_send(c, req, strlen(req));
        for (;;) {
                struct pollfd p = { .fd = c->fd, .events = POLLIN };
                int64_t left = (int64_t)(deadline - now_ns()) / 1000000;
                if (left <= 0 || poll(&p, 1, (int)left) == 0)
                        die("no answer within %d ms to %.60s", timeout_ms, req);
                if (bconn_read(c) < 0)
                        die("connection closed by the server (request %.60s)", req);
                if (bconn_parse(c))
                        return;
        }
}

/* The unsigned integer after "key": in a JSON or text body; -1 if absent. */
static inline long long find_number(const char *s, const char *key)
{
        const char *p = strstr(s, key);

        if (!p)
                return -1;
        p += strlen(key);
        while (*p == ' ' || *p == ':')
                p++;
        if (*p < '0' || *p > '9')
                return -1;
        return strtoll(p, NULL, 10);
}

/* The string value of "key" in a flat JSON object, copied into out. */
static inline bool find_string(const char *s, const char *key, char *out, size_t size)
{
        char pat[64];
        const char *p, *e;

        snprintf(pat, sizeof(pat), "\"%s\":\"", key);
        p = strstr(s, pat);
        if (!p)
                return false;
        p += strlen(pat);
        e = strchr(p, '"');
        if (!e || (size_t)(e - p) >= size)
                return false;
        memcpy(out, p, (size_t)(e - p));
        out[e - p] = 0;
        return true;
}

static inline int cmp_u64(const void *a, const void *b)
{
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
        return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted array. */
static inline uint64_t percentile(const uint64_t *v, size_t n, double p)
{
        size_t k;

        if (!n)
                return 0;
        k = (size_t)(p / 100.0 * (double)n + 0.999999999);
        if (k < 1)
                k = 1;
        if (k > n)
                k = n;
        return v[k - 1];
}

/*
 * Install handler for SIGTERM and SIGINT and block both; *ret_waitmask is the
 * mask to wait with (epoll_pwait, sigsuspend), so a stop is never lost
 * between a check and the wait.
 */
static inline void stop_signals_setup(void (*handler)(int), sigset_t *ret_waitmask)
{
        struct sigaction sa = { .sa_handler = handler };
        sigset_t block;

        sigemptyset(&block);
        sigaddset(&block, SIGTERM);
        sigaddset(&block, SIGINT);
        sigprocmask(SIG_BLOCK, &block, ret_waitmask);
        sigdelset(ret_waitmask, SIGTERM);
        sigdelset(ret_waitmask, SIGINT);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
}

static inline bool parse_uint_arg(const char *arg, const char *name, unsigned long *out)
{
        size_t n = strlen(name);
        char *e;

        if (strncmp(arg, name, n) != 0 || arg[n] != '=')
                return false;
        errno = 0;
        *out = strtoul(arg + n + 1, &e, 10);
        if (errno || *e || e == arg + n + 1)
                die("bad value in %s", arg);
        return true;
}
