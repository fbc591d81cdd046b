/* luofleet e2e test client: a tiny static HTTP/1.1 client for the VM guest.
 *
 *   lfc [-t SECONDS] [-H 'Name: value']... [-d BODY] [-e N] [-i] [-T] METHOD URL
 *
 * Sends one request (Connection: close), reads the answer and prints the
 * status code on the first line, then the body (de-chunked). With -i the
 * response headers are printed between the status line and the body.
 * -d BODY sends a JSON body; every request but GET says Content-Type: application/json; "-d @FILE"
 * reads it from FILE. -t bounds the whole exchange (default 30 s): on expiry the client prints what
 * it has and exits 3 (so a long-poll or an event stream can be cut off). -e N stops after N
 * complete Server-Sent Events (blank-line terminated blocks with a data: line) and exits 0. -T
 * prints one timing line on stderr at the end: "lfc-time sent_us=S answer_us=R elapsed_us=R-S", S
 * the CLOCK_MONOTONIC time (µs) when the request was completely written, R when the first byte of
 * the answer arrived (0 if none), so that two clients in the same guest can be compared (a POST's S
 * against a long-poll's R). Exit status: 0 an answer was read, 1 connection/IO error, 2 usage, 3
 * timeout, 4 connection closed before any status line (e.g. a kexec). Only http://IPv4:PORT/PATH
 * URLs (the guest talks to its own loopback).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static char *buf;
static size_t len, cap;

static void append(const char *p, size_t n)
{
        if (len + n + 1 > cap) {
                cap = (len + n + 1) * 2;
                buf = realloc(buf, cap);
                if (!buf) {
                        perror("realloc");
                        exit(1);
                }
        }
        memcpy(buf + len, p, n);
        len += n;
        buf[len] = 0;
}

static long long now_us(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static long long now_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *read_file(const char *path)
{
        FILE *f = fopen(path, "rb");
        if (!f) {
                perror(path);
                exit(2);
        }
        char *s = NULL;
        size_t n = 0, c = 0;
        int ch;
        while ((ch = fgetc(f)) != EOF) {
                if (n + 2 > c) {
                        c = c ? c * 2 : 4096;
                        s = realloc(s, c);
                }
                s[n++] = (char)ch;
        }
        fclose(f);
        if (!s)
                s = calloc(1, 1);
        else
                s[n] = 0;
        return s;
}

/* Decode a chunked body in place; returns 1 when the last chunk was seen. */
static int dechunk(const char *in, size_t n, char **out, size_t *outn)
{
        size_t i = 0, o = 0;
        char *d = malloc(n + 1);
        int done = 0;
        while (i < n) {
                const char *eol = memmem(in + i, n - i, "\r\n", 2);
                if (!eol)
                        break;
                unsigned long sz = strtoul(in + i, NULL, 16);
                size_t start = (size_t)(eol - in) + 2;
                if (sz == 0) {
                        done = 1;
                        break;
                }
                if (start + sz > n) {
                        /* partial chunk: keep what we have */
                        memcpy(d + o, in + start, n - start);
                        o += n - start;
                        break;
                }
                memcpy(d + o, in + start, sz);
                o += sz;
                i = start + sz + 2;
        }
        d[o] = 0;
        *out = d;
        *outn = o;
        return done;
}

static int count_events(const char *b, size_t n)
{
        /* an event = a block ending with a blank line that has a "data:" line */
        int count = 0;
        size_t start = 0;
        for (size_t i = 0; i + 1 < n; i++) {
                if (b[i] == '\n' && b[i + 1] == '\n') {
                        const char *blk = b + start;
                        size_t bl = i - start + 1;
                        if ((bl >= 5 && strncmp(blk, "data:", 5) == 0) ||
                            memmem(blk, bl, "\ndata:", 6))
                                count++;
                        start = i + 2;
                        i++;
                }
        }
        return count;
}

int main(int argc, char **argv)
{
        double timeout = 30;
        const char *body = NULL;
        char headers[8192] = "";
        int events = 0, show_headers = 0, timing = 0, opt;
        long long sent_us = 0, answer_us = 0;
        while ((opt = getopt(argc, argv, "t:H:d:e:iT")) != -1) {
                switch (opt) {
                case 't':
                        timeout = atof(optarg);
                        break;
                case 'H': {
                        size_t hl0 = strlen(headers);
                        snprintf(headers + hl0, sizeof(headers) - hl0, "%s\r\n", optarg);
                        break;
                }
                case 'd':
                        body = optarg[0] == '@' ? read_file(optarg + 1) : optarg;
                        break;
                case 'e':
                        events = (int)strtol(optarg, NULL, 10);
                        break;
                case 'i':
                        show_headers = 1;
                        break;
                case 'T':
                        timing = 1;
                        break;
                default:
                        return 2;
                }
        }
        if (argc - optind != 2) {
                fprintf(stderr,
                        "usage: lfc [-t s] [-H hdr] [-d body|@file] [-e n] [-i] [-T] METHOD URL\n");
                return 2;
        }
        const char *method = argv[optind], *url = argv[optind + 1];
        if (strncmp(url, "http://", 7) != 0) {
                fprintf(stderr, "lfc: only http:// URLs\n");
                return 2;
        }
        char host[256];
        const char *hp = url + 7, *path = strchr(hp, '/');
        if (!path)
                path = "/";
        size_t hl = (size_t)(strchr(hp, '/') ? strchr(hp, '/') - hp : (long)strlen(hp));
        if (hl >= sizeof(host))
                return 2;
        memcpy(host, hp, hl);
        host[hl] = 0;
        char *colon = strrchr(host, ':');
        int port = 80;
        char ip[256];
        snprintf(ip, sizeof(ip), "%s", host);
        if (colon) {
                port = (int)strtol(colon + 1, NULL, 10);
                ip[colon - host] = 0;
        }
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((unsigned short)port) };
        if (inet_pton(AF_INET, ip, &sa.sin_addr) != 1) {
                fprintf(stderr, "lfc: need a numeric IPv4 address: %s\n", ip);
                return 2;
        }
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
                fprintf(stderr, "lfc: connect %s: %s\n", host, strerror(errno));
                return 1;
        }
        char *req;
        size_t bl = body ? strlen(body) : 0;
        int rl = asprintf(
                &req,
                "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\nUser-Agent: lfc\r\n"
                "%s%s%s\r\n",
                method, path, host, headers,
                /* every mutating request, also without a body (the agent
                 * refuses it otherwise: docs/security.md, cross-site requests) */
                body || strcmp(method, "GET") != 0 ? "Content-Type: application/json\r\n" : "", "");
        if (rl < 0)
                return 1;
        if (body) {
                char *r2;
                if (asprintf(&r2, "%.*sContent-Length: %zu\r\n\r\n%s", rl - 2, req, bl, body) < 0)
                        return 1;
                req = r2;
        } else if (strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0) {
                char *r2;
                if (asprintf(&r2, "%.*sContent-Length: 0\r\n\r\n", rl - 2, req) < 0)
                        return 1;
                req = r2;
        }
        size_t rlen = strlen(req), off = 0;
        while (off < rlen) {
                ssize_t w = write(fd, req + off, rlen - off);
                if (w < 0) {
                        if (errno == EINTR)
                                continue;
                        perror("lfc: write");
                        return 1;
                }
                off += (size_t)w;
        }
        sent_us = now_us();

        long long deadline = now_ms() + (long long)(timeout * 1000);
        int rc = 0;
        size_t hdr_end = 0;
        int chunked = 0;
        long content_length = -1;
        for (;;) {
                long long left = deadline - now_ms();
                if (left <= 0) {
                        rc = 3;
                        break;
                }
                struct pollfd p = { .fd = fd, .events = POLLIN };
                int pr = poll(&p, 1, (int)(left > 1000000 ? 1000000 : left));
                if (pr < 0 && errno == EINTR)
                        continue;
                if (pr == 0) {
                        rc = 3;
                        break;
                }
                char tmp[16384];
                ssize_t r = read(fd, tmp, sizeof(tmp));
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        rc = len ? 0 : 4;
                        if (!len)
                                fprintf(stderr, "lfc: read: %s\n", strerror(errno));
                        break;
                }
                if (r == 0) {
                        if (!len)
                                rc = 4;
                        break;
                }
                if (!len)
                        answer_us = now_us();
                append(tmp, (size_t)r);
                if (!hdr_end) {
                        char *e = strstr(buf, "\r\n\r\n");
                        if (e) {
                                hdr_end = (size_t)(e - buf) + 4;
                                for (char *l = strstr(buf, "\r\n"); l && l < e;
                                     l = strstr(l + 2, "\r\n")) {
                                        if (strncasecmp(l + 2, "Transfer-Encoding:", 18) == 0 &&
                                            strcasestr(l + 2, "chunked") &&
                                            strcasestr(l + 2, "chunked") < strstr(l + 2, "\r\n"))
                                                chunked = 1;
                                        if (strncasecmp(l + 2, "Content-Length:", 15) == 0)
                                                content_length = strtol(l + 17, NULL, 10);
                                }
                        }
                }
                if (hdr_end) {
                        size_t blen = len - hdr_end;
                        if (!chunked && content_length >= 0 && (long)blen >= content_length)
                                break;
                        if (!chunked && strncmp(method, "HEAD", 4) == 0)
                                break;
                        if (chunked || events) {
                                char *d = NULL;
                                size_t dn = blen;
                                int done = 0;
                                if (chunked)
                                        done = dechunk(buf + hdr_end, blen, &d, &dn);
                                int n = events ? count_events(d ? d : buf + hdr_end, dn) : 0;
                                free(d);
                                if (done || (events && n >= events))
                                        break;
                        }
                }
        }
        close(fd);
        if (timing)
                fprintf(stderr, "lfc-time sent_us=%lld answer_us=%lld elapsed_us=%lld\n", sent_us,
                        answer_us, answer_us ? answer_us - sent_us : 0);
        if (!len) {
                if (rc == 3)
                        fprintf(stderr, "lfc: timeout before any answer\n");
                printf("000\n");
                return rc ? rc : 4;
        }
        int status = 0;
        if (strncmp(buf, "HTTP/1.", 7) == 0)
                status = (int)strtol(buf + 9, NULL, 10);
        printf("%03d\n", status);
        if (!hdr_end) {
                fwrite(buf, 1, len, stdout);
                return rc ? rc : 1;
        }
        if (show_headers) {
                char *first = strstr(buf, "\r\n");
                for (char *p = first + 2; p < buf + hdr_end - 2; p++)
                        if (*p != '\r')
                                putchar(*p);
        }
        if (chunked) {
                char *d;
                size_t dn;
                dechunk(buf + hdr_end, len - hdr_end, &d, &dn);
                fwrite(d, 1, dn, stdout);
                free(d);
        } else {
                fwrite(buf + hdr_end, 1, len - hdr_end, stdout);
        }
        if (len > hdr_end)
                putchar('\n');
        fflush(stdout);
        return rc;
}
