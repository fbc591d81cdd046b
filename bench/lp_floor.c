/*
 * lp_floor.c: the floor for the long-poll latency figure: a minimal
 * single-threaded epoll server that speaks just enough of the agent's
 * protocol for lp_latency (GET /v1/state, GET /v1/state?index=N&wait=D,
 * GET /metrics, POST /v1/prepare|cancel) and does the least possible work
 * per waiter: parked connections stay in the epoll set, and a change is one
 * prebuilt response written with one write() per waiter. No journal, no
 * locks, no other threads. What lp_latency measures against it is the cost
 * of the kernel (loopback TCP, wake-ups) and of the client on this machine:
 * the agent cannot do better than this with one thread.
 *
 *   lp_floor [--port=0] [--doc-bytes=420] [--verbose]
 *
 * --verbose: on stderr, how long each change took to write to all waiters.
 *
 * Prints "listening on http://127.0.0.1:PORT" once ready; runs until
 * SIGTERM/SIGINT. A POST moves the index by 3 (as the agent's running
 * record, transition and end record do) and wakes the waiters at the first.
 */
#include <signal.h>
#include <sys/epoll.h>

#include "benchhttp.h"

struct fconn {
        int fd;
        char buf[2048];
        size_t len;
        bool parked;
        struct fconn *next_parked;
};

static unsigned long long index_ = 1;
static bool prepared;
static unsigned long doc_bytes = 420;
static struct fconn *parked;
static unsigned n_parked;
static volatile sig_atomic_t stop;
static bool verbose;

static void on_signal(int sig)
{
        (void)sig;
        stop = 1;
}

/* The state document's response at the current index, padded to doc_bytes. */
static size_t build_doc(char *out, size_t size)
{
        char body[4096];
        int n = snprintf(body, sizeof(body),
                         "{\"state\":\"%s\",\"index\":%llu,\"backend\":\"floor\",\"pad\":\"",
                         prepared ? "prepared" : "normal", index_);
        while ((size_t)n + 2 < doc_bytes && (size_t)n + 3 < sizeof(body))
                body[n++] = 'x';
        body[n++] = '"';
        body[n++] = '}';
        body[n] = 0;
        n = snprintf(out, size,
                     "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: "
                     "no-store\r\nETag: \"%llu\"\r\nContent-Length: %d\r\n\r\n%s",
                     index_, n, body);
        return (size_t)n;
}

static void reply(struct fconn *c, const char *s, size_t n)
{
        ssize_t w = write(c->fd, s, n);
        if (w != (ssize_t)n) /* small answers on loopback: the socket buffer takes them */
                die("short write to a client (%zd of %zu): %s", w, n, strerror(errno));
}

static void reply_doc(struct fconn *c)
{
        char out[8192];
        reply(c, out, build_doc(out, sizeof(out)));
}

static void reply_text(struct fconn *c, const char *body)
{
        char out[512];
        int n = snprintf(out, sizeof(out),
                         "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                         "%zu\r\n\r\n%s",
                         strlen(body), body);
        reply(c, out, (size_t)n);
}

static void change(void)
{
        char out[8192];
        size_t n;

        /* the running record: every waiter hears it */
        uint64_t t0 = now_ns();
        unsigned woken = n_parked;
        index_++;
        n = build_doc(out, sizeof(out));
        for (struct fconn *c = parked, *next; c; c = next) {
                next = c->next_parked;
                c->parked = false;
                c->next_parked = NULL;
                reply(c, out, n);
        }
        parked = NULL;
        n_parked = 0;
        if (verbose)
                fprintf(stderr, "lp_floor: %u waiters answered in %.1f us\n", woken,
                        (double)(now_ns() - t0) / 1000.0);
        /* the transition and the end record */
        prepared = !prepared;
        index_ += 2;
}

/* Handle the complete requests in c->buf. */
static void serve(struct fconn *c)
{
        char *end;

        while ((end = strstr(c->buf, "\r\n\r\n"))) {
                size_t used = (size_t)(end + 4 - c->buf);
                const char *q;

                if (c->parked)
                        die("a request on a parked connection");
                if (strncmp(c->buf, "GET /v1/state?", 14) == 0 && (q = strstr(c->buf, "index=")) &&
                    q < end) {
                        unsigned long long want = strtoull(q + 6, NULL, 10);
                        if (want == index_) {
                                c->parked = true;
                                c->next_parked = parked;
                                parked = c;
                                n_parked++;
                        } else
                                reply_doc(c);
                } else if (strncmp(c->buf, "GET /v1/state ", 14) == 0) {
                        reply_doc(c);
                } else if (strncmp(c->buf, "GET /metrics ", 13) == 0) {
                        char m[128];
                        snprintf(m, sizeof(m), "# lp_floor\nluofleet_longpoll_waiters %u\n",
                                 n_parked);
                        reply_text(c, m);
                } else if (strncmp(c->buf, "POST /v1/", 9) == 0) {
                        change();
                        reply_doc(c); /* bodies are not supported: Content-Length: 0 */
                } else
                        die("unexpected request: %.60s", c->buf);
                memmove(c->buf, c->buf + used, c->len - used + 1);
                c->len -= used;
        }
}

static void drop(int ep, struct fconn *c)
{
        if (c->parked) {
                struct fconn **pp = &parked;
                while (*pp != c)
                        pp = &(*pp)->next_parked;
                *pp = c->next_parked;
                n_parked--;
        }
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        free(c);
}

int main(int argc, char **argv)
{
        unsigned long port = 0;
        struct sockaddr_in sin = { .sin_family = AF_INET,
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t sl = sizeof(sin);
        int one = 1, lfd, ep;
        struct epoll_event ev[256];

        /* SIGTERM/SIGINT are blocked except inside epoll_pwait(): no lost stop. */
        sigset_t waitmask;
        stop_signals_setup(on_signal, &waitmask);
        signal(SIGPIPE, SIG_IGN);
        for (int i = 1; i < argc; i++) {
                if (parse_uint_arg(argv[i], "--port", &port) ||
                    parse_uint_arg(argv[i], "--doc-bytes", &doc_bytes))
                        continue;
                if (strcmp(argv[i], "--verbose") == 0) {
                        verbose = true;
                        continue;
                }
                fprintf(stderr, "usage: lp_floor [--port=P] [--doc-bytes=N] [--verbose]\n");
                return 2;
        }
        if (port > 65535 || doc_bytes < 64 || doc_bytes > 4000)
                die("bad --port or --doc-bytes (64..4000)");
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max; /* as many waiters as we are allowed */
                (void)setrlimit(RLIMIT_NOFILE, &rl);
        }

        lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        sin.sin_port = htons((uint16_t)port);
        (void)setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (lfd < 0 || bind(lfd, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
            listen(lfd, 4096) < 0 || getsockname(lfd, (struct sockaddr *)&sin, &sl) < 0)
                die("listen: %s", strerror(errno));
        ep = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event lev = { .events = EPOLLIN, .data.ptr = NULL };
        if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0)
                die("epoll: %s", strerror(errno));
        printf("lp_floor: listening on http://127.0.0.1:%u\n", ntohs(sin.sin_port));
        fflush(stdout);

        while (!stop) {
                int n = epoll_pwait(ep, ev, (int)(sizeof(ev) / sizeof(ev[0])), -1, &waitmask);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        die("epoll_wait: %s", strerror(errno));
                }
                for (int i = 0; i < n; i++) {
                        struct fconn *c = ev[i].data.ptr;
                        if (!c) {
                                int fd;
                                while ((fd = accept4(lfd, NULL, NULL,
                                                     SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                                        c = calloc(1, sizeof(*c));
                                        if (!c)
                                                die("out of memory");
                                        c->fd = fd;
                                        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one,
                                                         sizeof(one));
                                        struct epoll_event cev = { .events = EPOLLIN,
                                                                   .data.ptr = c };
                                        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) < 0)
                                                die("epoll_ctl: %s", strerror(errno));
                                }
                                continue;
                        }
                        ssize_t r = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len - 1);
                        if (r < 0 && (errno == EAGAIN || errno == EINTR))
                                continue;
                        if (r <= 0) {
                                drop(ep, c);
                                continue;
                        }
                        c->len += (size_t)r;
                        c->buf[c->len] = 0;
                        if (c->len >= sizeof(c->buf) - 1)
                                die("request too large");
                        serve(c);
                }
        }
        close(lfd);
        close(ep);
        return 0;
}
