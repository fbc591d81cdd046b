/*
 * util.c: checked parsing, clocks, RFC 3339, small-file I/O and atomic
 * writes. Non-logging, thread-safe, no state.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#define HAVE_LSAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#include <sanitizer/lsan_interface.h>
#define HAVE_LSAN 1
#endif
#endif

#include "luofleet/macro.h"
#include "luofleet/util.h"

int parse_u64(const char *s, uint64_t max, uint64_t *ret)
{
        uint64_t v = 0;

        if (!s || !*s)
                return -EINVAL;
        for (const char *p = s; *p; p++) {
                if (*p < '0' || *p > '9')
                        return -EINVAL;
                unsigned d = (unsigned)(*p - '0');
                if (v > (UINT64_MAX - d) / 10)
                        return -ERANGE;
                v = v * 10 + d;
        }
        if (v > max)
                return -ERANGE;
        *ret = v;
        return 0;
}

int parse_duration_ms(const char *s, uint64_t max_ms, uint64_t *ret_ms)
{
        /* units, and their rank: components largest first, each at most once */
        static const struct {
                const char *unit;
                uint64_t ms;
                int rank;
        } units[] = { { "ms", 1, 3 }, { "h", 3600000, 0 }, { "m", 60000, 1 }, { "s", 1000, 2 } };
        uint64_t total = 0;
        int last = -1;
        bool any = false;

        if (!s || !*s)
                return -EINVAL;
        /* bare seconds */
        if (strspn(s, "0123456789") == strlen(s)) {
                uint64_t v;
                int r = parse_u64(s, UINT64_MAX / 1000, &v);
                if (r < 0)
                        return r == -ERANGE ? -ERANGE : -EINVAL;
                if (v * 1000 > max_ms)
                        return -ERANGE;
                *ret_ms = v * 1000;
                return 0;
        }
        while (*s) {
                char num[24];
                size_t n = strspn(s, "0123456789"), u;
                uint64_t v;

                if (n == 0)
                        return -EINVAL;
                if (n >= sizeof(num))
                        return -ERANGE;
                memcpy(num, s, n);
                num[n] = 0;
                s += n;
                for (u = 0; u < ELEMENTSOF(units); u++)
                        if (strncmp(s, units[u].unit, strlen(units[u].unit)) == 0)
                                break;
                if (u == ELEMENTSOF(units) || units[u].rank <= last)
                        return -EINVAL;
                last = units[u].rank;
                s += strlen(units[u].unit);
                if (parse_u64(num, UINT64_MAX / units[u].ms, &v) < 0)
                        return -ERANGE;
                if (v * units[u].ms > UINT64_MAX - total)
                        return -ERANGE;
                total += v * units[u].ms;
                any = true;
        }
        if (!any)
                return -EINVAL;
        if (total > max_ms)
                return -ERANGE;
        *ret_ms = total;
        return 0;
}

static uint64_t now_usec(clockid_t c)
{
        struct timespec ts;
        clock_gettime(c, &ts);
        return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t now_mono_usec(void)
{
        return now_usec(CLOCK_MONOTONIC);
}

uint64_t now_real_usec(void)
{
        return now_usec(CLOCK_REALTIME);
}

char *format_rfc3339_ms(uint64_t real_usec, char buf[static RFC3339_MAX])
{
        time_t sec = (time_t)(real_usec / 1000000u);
        unsigned ms = (unsigned)((real_usec / 1000u) % 1000u);
        struct tm tm;

        if (!gmtime_r(&sec, &tm) ||
            snprintf(buf, RFC3339_MAX, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ms) >= RFC3339_MAX)
                snprintf(buf, RFC3339_MAX, "1970-01-01T00:00:00.000Z");
        return buf;
}

int parse_rfc3339(const char *s, uint64_t *ret_real_usec)
{
        struct tm tm = { 0 };
        unsigned ms = 0;
        const char *p;

        if (!s)
                return -EINVAL;
        p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
        if (!p)
                return -EINVAL;
        if (*p == '.') {
                int digits = 0;
                p++;
                while (*p >= '0' && *p <= '9') {
                        if (digits < 3)
                                ms = ms * 10 + (unsigned)(*p - '0');
                        digits++;
                        p++;
                }
                if (digits == 0)
                        return -EINVAL;
                for (; digits < 3; digits++)
                        ms *= 10;
        }
        if (strcmp(p, "Z") != 0)
                return -EINVAL;
        time_t t = timegm(&tm);
        if (t < 0)
                return -EINVAL;
        *ret_real_usec = (uint64_t)t * 1000000u + (uint64_t)ms * 1000u;
        return 0;
}

ssize_t read_small_file_at(int dirfd, const char *path, char *buf, size_t size)
{
        _cleanup_close_ int fd = -1;
        ssize_t n;

        if (size == 0)
                return -EINVAL;
        fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return negative_errno();
        /* One read at offset 0: enough for sysfs and /proc attributes. */
        do
                n = read(fd, buf, size);
        while (n < 0 && errno == EINTR);
        if (n < 0)
                return negative_errno();
        if ((size_t)n >= size)
                return -EFBIG;
        buf[n] = 0;
        return n;
}

char *strip_trailing(char *s)
{
        size_t n = strlen(s);
        while (n > 0 &&
               (s[n - 1] == '\n' || s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
                s[--n] = 0;
        return s;
}

int write_all(int fd, const void *data, size_t len)
{
        const char *p = data;
        while (len > 0) {
                ssize_t n = write(fd, p, len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return negative_errno();
                }
                if (n == 0)
                        return -EIO;
                p += n;
                len -= (size_t)n;
        }
        return 0;
}

ssize_t read_full(int fd, void *buf, size_t size)
{
        char *p = buf;
        size_t len = 0;

        while (len < size) {
                ssize_t n = read(fd, p + len, size - len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return negative_errno();
                }
                if (n == 0)
                        break;
                len += (size_t)n;
        }
        return (ssize_t)len;
}

int write_file_atomic_at(int dirfd, const char *name, const void *data, size_t len, mode_t mode)
{
        char tmp[256];
        _cleanup_close_ int fd = -1;
        int r;

        if (snprintf(tmp, sizeof(tmp), ".%s.tmp.%d", name, (int)getpid()) >= (int)sizeof(tmp))
                return -ENAMETOOLONG;
        fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
        if (fd < 0)
                return negative_errno();
        r = write_all(fd, data, len);
        if (r >= 0 && fsync(fd) < 0)
                r = negative_errno();
        if (r >= 0 && close(TAKE_FD(fd)) < 0)
                r = negative_errno();
        if (r >= 0 && renameat(dirfd, tmp, dirfd, name) < 0)
                r = negative_errno();
        if (r < 0) {
                (void)unlinkat(dirfd, tmp, 0);
                return r;
        }
        if (fsync(dirfd) < 0)
                return negative_errno();
        return 0;
}

const char *errno_name(int err, char buf[static 16])
{
        if (err < 0)
                err = -err;
        const char *n = strerrorname_np(err);
        if (n)
                return n;
        snprintf(buf, 16, "E%d", err);
        return buf;
}

int errno_from_name(const char *s)
{
        uint64_t v;

        if (!s || !*s)
                return -EINVAL;
        if (parse_u64(s, 4095, &v) == 0)
                return v > 0 ? (int)v : -EINVAL;
        for (int e = 1; e < 4096; e++) {
                const char *n = strerrorname_np(e);
                if (n && strcmp(n, s) == 0)
                        return e;
        }
        return -EINVAL;
}

void hex_encode(const uint8_t *in, size_t len, char *out)
{
        static const char digits[] = "0123456789abcdef";
        for (size_t i = 0; i < len; i++) {
                out[2 * i] = digits[in[i] >> 4];
                out[2 * i + 1] = digits[in[i] & 15];
        }
        out[2 * len] = 0;
}

int uuid_v4(char buf[static 37])
{
        uint8_t b[16];

        if (RAND_bytes(b, sizeof(b)) != 1)
                return -EIO;
        b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
        b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
        snprintf(buf, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
                 b[13], b[14], b[15]);
        return 0;
}

bool uuid_valid(const char *s)
{
        if (!s || strlen(s) != 36)
                return false;
        for (int i = 0; i < 36; i++) {
                char c = s[i];
                if (i == 8 || i == 13 || i == 18 || i == 23) {
                        if (c != '-')
                                return false;
                } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
                             (c >= 'A' && c <= 'F')))
                        return false;
        }
        return true;
}

int mkdir_p(const char *path, mode_t mode)
{
        char buf[4096];
        size_t n = strlen(path);

        if (n == 0 || n >= sizeof(buf))
                return -EINVAL;
        memcpy(buf, path, n + 1);
        for (char *p = buf + 1; *p; p++) {
                if (*p != '/')
                        continue;
                *p = 0;
                if (mkdir(buf, mode) < 0 && errno != EEXIST)
                        return negative_errno();
                *p = '/';
        }
        if (mkdir(buf, mode) < 0 && errno != EEXIST)
                return negative_errno();
        return 0;
}

int unix_sockaddr(const char *path, struct sockaddr_un *ret, int *ret_dir_fd)
{
        const char *name;
        char dir[4096];
        size_t n;
        int fd, k;

        *ret_dir_fd = -1;
        if (!path || path[0] != '/')
                return -EINVAL;
        n = strlen(path);
        *ret = (struct sockaddr_un){ .sun_family = AF_UNIX };
        if (n < sizeof(ret->sun_path)) {
                memcpy(ret->sun_path, path, n + 1);
                return 0;
        }
        /* Too deep for sun_path: name it through the directory's descriptor. */
        name = strrchr(path, '/') + 1;
        if ((size_t)(name - path) >= sizeof(dir) || !name[0])
                return -ENAMETOOLONG;
        memcpy(dir, path, (size_t)(name - path));
        dir[name - path] = 0;
        fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return negative_errno();
        k = snprintf(ret->sun_path, sizeof(ret->sun_path), "/proc/self/fd/%d/%s", fd, name);
        if (k < 0 || (size_t)k >= sizeof(ret->sun_path)) {
                close(fd);
                return -ENAMETOOLONG;
        }
        *ret_dir_fd = fd;
        return 0;
}

void leak_check_now(void)
{
#ifdef HAVE_LSAN
        /* LeakSanitizer stops the world through ptrace, which a process that is not
         * dumpable (after a change of uid or of its capabilities) or is confined
         * (the privilege-separated processes) may not do to itself: the check would end
         * in a "fatal error" instead of a verdict. Those are checked where they run
         * unconfined (tests as a non-root user, --privsep=no). */
        if (prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 1)
                __lsan_do_leak_check();
#endif
}

_Noreturn void exit_now(int status)
{
        leak_check_now();
        _exit(status);
}

int url_host(const char *url, char *out, size_t size)
{
        const char *p, *end;
        size_t n;

        if (!url || !size)
                return -EINVAL;
        if (strncasecmp(url, "http://", 7) == 0)
                p = url + 7;
        else if (strncasecmp(url, "https://", 8) == 0)
                p = url + 8;
        else
                return -EINVAL;
        end = p + strcspn(p, "/?#");
        if (memchr(p, '@', (size_t)(end - p)))
                return -EINVAL; /* user info: never sent, never shown */
        if (*p == '[') {
                const char *close = memchr(p, ']', (size_t)(end - p));
                if (!close)
                        return -EINVAL;
                p++;
                n = (size_t)(close - p);
        } else {
                n = strcspn(p, ":/?#");
        }
        if (n == 0 || n >= size)
                return -EINVAL;
        for (size_t i = 0; i < n; i++)
                out[i] = (char)((p[i] >= 'A' && p[i] <= 'Z') ? p[i] + ('a' - 'A') : p[i]);
        out[n] = 0;
        return 0;
}

bool host_is_loopback(const char *host)
{
        struct in_addr a4;
        struct in6_addr a6;

        if (!host)
                return false;
        if (strcmp(host, "localhost") == 0)
                return true;
        if (inet_pton(AF_INET, host, &a4) == 1)
                return (ntohl(a4.s_addr) >> 24) == 127;
        if (inet_pton(AF_INET6, host, &a6) == 1)
                return IN6_IS_ADDR_LOOPBACK(&a6);
        return false;
}

bool url_may_carry_token(const char *url)
{
        char host[256];

        if (url && strncasecmp(url, "https://", 8) == 0)
                return url_host(url, host, sizeof(host)) == 0;
        return url_host(url, host, sizeof(host)) == 0 && host_is_loopback(host);
}
