/*
 * lp_latency.c: transition -> long-poll answer latency of luofleet-agent.
 *
 *   lp_latency --port=P --waiters=N [--rounds=20] [--warmup=2] [--wait=60s]
 *              [--settle-ms=10000] [--host=127.0.0.1] [--trace]
 *   lp_latency --port=P --waiters=N --hold
 *
 * Latency mode: N keep-alive connections each send GET
 * /v1/state?index=I&wait=60s (I = the current index) and are left suspended;
 * once /metrics shows luofleet_longpoll_waiters == N, t0 = CLOCK_MONOTONIC is
 * taken just before the POST /v1/prepare (or /v1/cancel, alternating) is
 * written on another connection; each waiter's sample is the time its whole
 * response had arrived minus t0. The POST's own processing (admission, the
 * fsync'ed journal record, the snapshot rebuild) is inside the figure: it is
 * an upper bound of the agent's wake-up latency. Every round re-arms the
 * waiters with the new index on the same connections. Warm-up rounds are not
 * counted. One epoll thread, non-blocking sockets, libc only.
 *
 * Hold mode: attach N waiters, print "READY" once /metrics counts them, then
 * keep them until SIGTERM or SIGINT (for idle CPU measurements).
 *
 * Output: human lines, then one "RESULT lp_latency key=value ..." line;
 * --trace adds a TRACE line per round (t0 on CLOCK_MONOTONIC, first and last
 * waiter, the POST's answer), to line up with timestamps taken in the agent.
 */
#include <signal.h>
#include <sys/epoll.h>

#include "benchhttp.h"

struct opts {
        const char *host;
        unsigned long port, waiters, rounds, warmup, settle_ms;
        const char *wait;
        bool hold;
        bool trace;
};

static struct opts o = {
        .host = "127.0.0.1", .rounds = 20, .warmup = 2, .settle_ms = 10000, .wait = "60s"
};
static struct bconn ctl;
static struct bconn *w;
static int ep = -1;
static char hostport[64];

static void usage(void)
{
        fprintf(stderr, "usage: lp_latency --port=P --waiters=N [--rounds=R] [--warmup=W] "
                        "[--wait=60s] [--settle-ms=MS] [--host=IPv4] [--hold] [--trace]\n");
        exit(2);
}

static void get_state(unsigned long long *index, char *state, size_t size)
{
        char req[256];
        long long i;

        snprintf(req, sizeof(req), "GET /v1/state HTTP/1.1\r\nHost: %s\r\n\r\n", hostport);
        bconn_request(&ctl, req, 10000);
        if (ctl.status != 200)
                die("GET /v1/state answered %d", ctl.status);
        i = find_number(bconn_body(&ctl), "\"index\"");
        if (i < 0 || !find_string(bconn_body(&ctl), "state", state, size))
                die("no index/state in the document: %.200s", bconn_body(&ctl));
        *index = (unsigned long long)i;
}

static long long metrics_waiters(void)
{
        char req[256];
        const char *p;

        snprintf(req, sizeof(req), "GET /metrics HTTP/1.1\r\nHost: %s\r\n\r\n", hostport);
        bconn_request(&ctl, req, 10000);
        if (ctl.status != 200)
                die("GET /metrics answered %d", ctl.status);
        /* the sample line, not the HELP/TYPE comments */
        p = strstr(bconn_body(&ctl), "\nluofleet_longpoll_waiters ");
        if (!p)
                die("no luofleet_longpoll_waiters in /metrics");
        return strtoll(p + 27, NULL, 10);
}

/* Read whatever is ready on the waiters; returns how many completed now. */
static unsigned pump(int timeout_ms, uint64_t *post_done, bool allow_answers)
{
        struct epoll_event ev[256];
        unsigned completed = 0;
        int n = epoll_wait(ep, ev, (int)(sizeof(ev) / sizeof(ev[0])), timeout_ms);

        if (n < 0) {
                if (errno == EINTR)
                        return 0;
                die("epoll_wait: %s", strerror(errno));
        }
        for (int i = 0; i < n; i++) {
                long k = (long)ev[i].data.u64;
                struct bconn *c = k < 0 ? &ctl : &w[k];
                int r = bconn_read(c);
                if (r < 0)
                        die("the agent closed %s %ld", k < 0 ? "the control connection" : "waiter",
                            k);
                if (c->done || !bconn_parse(c))
                        continue;
                c->t_done = now_ns();
                c->done = true;
                if (k < 0) {
                        if (post_done)
                                *post_done = c->t_done;
                        continue;
                }
                if (!allow_answers)
                        die("waiter %ld answered before the change (status %d): %.200s", k,
                            c->status, bconn_body(c));
                completed++;
        }
        return completed;
}

static void arm_waiters(unsigned long long index)
{
        char req[256];
        int n = snprintf(req, sizeof(req),
                         "GET /v1/state?index=%llu&wait=%s HTTP/1.1\r\nHost: %s\r\n\r\n", index,
                         o.wait, hostport);

        for (unsigned long i = 0; i < o.waiters; i++) {
                bconn_reset(&w[i]);
                bconn_send(&w[i], req, (size_t)n);
        }
}

static void settle(void)
{
        uint64_t deadline = now_ns() + o.settle_ms * 1000000u;
        long long have;

        for (;;) {
                have = metrics_waiters();
                if (have == (long long)o.waiters)
                        return;
                if (have > (long long)o.waiters)
                        die("/metrics counts %lld waiters, more than our %lu: another client?",
                            have, o.waiters);
                if (now_ns() > deadline)
                        die("only %lld of %lu waiters registered after %lu ms", have, o.waiters,
                            o.settle_ms);
                (void)pump(1, NULL, false); /* also catches early answers */
        }
}

static void on_signal(int sig)
{
        (void)sig;
}

int main(int argc, char **argv)
{
        uint64_t *samples, *post_lat;
        size_t ns = 0, np = 0;
        unsigned long long seen_next = 0, seen_later = 0;

        for (int i = 1; i < argc; i++) {
                if (parse_uint_arg(argv[i], "--port", &o.port) ||
                    parse_uint_arg(argv[i], "--waiters", &o.waiters) ||
                    parse_uint_arg(argv[i], "--rounds", &o.rounds) ||
                    parse_uint_arg(argv[i], "--warmup", &o.warmup) ||
                    parse_uint_arg(argv[i], "--settle-ms", &o.settle_ms))
                        continue;
                if (strncmp(argv[i], "--host=", 7) == 0)
                        o.host = argv[i] + 7;
                else if (strncmp(argv[i], "--wait=", 7) == 0)
                        o.wait = argv[i] + 7;
                else if (strcmp(argv[i], "--hold") == 0)
                        o.hold = true;
                else if (strcmp(argv[i], "--trace") == 0)
                        o.trace = true;
                else
                        usage();
        }
        if (!o.port || o.port > 65535 || !o.waiters || o.waiters > 100000 || !o.rounds)
                usage();
        snprintf(hostport, sizeof(hostport), "%s:%lu", o.host, o.port);
        raise_nofile((unsigned)o.waiters + 64);
        signal(SIGPIPE, SIG_IGN);

        ep = epoll_create1(EPOLL_CLOEXEC);
        if (ep < 0)
                die("epoll_create1: %s", strerror(errno));
        bconn_open(&ctl, o.host, (unsigned)o.port);
        bconn_wait_connected(&ctl);
        w = calloc(o.waiters, sizeof(*w));
        samples = calloc(o.waiters * o.rounds, sizeof(*samples));
        post_lat = calloc(o.rounds, sizeof(*post_lat));
        if (!w || !samples || !post_lat)
                die("out of memory");
        for (unsigned long i = 0; i < o.waiters; i++) {
                bconn_open(&w[i], o.host, (unsigned)o.port);
                struct epoll_event ev = { .events = EPOLLIN, .data.u64 = i };
                if (epoll_ctl(ep, EPOLL_CTL_ADD, w[i].fd, &ev) < 0)
                        die("epoll_ctl: %s", strerror(errno));
        }
        for (unsigned long i = 0; i < o.waiters; i++)
                bconn_wait_connected(&w[i]);

        if (o.hold) {
                unsigned long long index;
                char state[32];
                sigset_t waitmask;
                stop_signals_setup(on_signal, &waitmask);
                get_state(&index, state, sizeof(state));
                arm_waiters(index);
                settle();
                printf("READY waiters=%lu index=%llu\n", o.waiters, index);
                fflush(stdout);
                /* Sleep until signalled: no activity of our own while the agent is sampled. */
                sigsuspend(&waitmask);
                for (unsigned long i = 0; i < o.waiters; i++)
                        bconn_close(&w[i]);
                bconn_close(&ctl);
                free(w);
                free(samples);
                free(post_lat);
                return 0;
        }

        struct epoll_event cev = { .events = EPOLLIN, .data.u64 = (uint64_t)-1 };
        if (epoll_ctl(ep, EPOLL_CTL_ADD, ctl.fd, &cev) < 0)
                die("epoll_ctl: %s", strerror(errno));

        for (unsigned long round = 0; round < o.warmup + o.rounds; round++) {
                unsigned long long index;
                char state[32], req[256];
                const char *action;
                uint64_t t0, post_done = 0, deadline;
                unsigned left = (unsigned)o.waiters;
                int n;

                get_state(&index, state, sizeof(state));
                if (strcmp(state, "normal") == 0)
                        action = "prepare";
                else if (strcmp(state, "prepared") == 0 || strcmp(state, "frozen") == 0)
                        action = "cancel";
                else
                        die("the agent is in state %s: use a fresh --state-dir", state);
                arm_waiters(index);
                settle();
                n = snprintf(
                        req, sizeof(req),
                        "POST /v1/%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                        "Content-Length: 0\r\n\r\n",
                        action, hostport);
                bconn_reset(&ctl);
                t0 = now_ns();
                bconn_send(&ctl, req, (size_t)n);
                deadline = t0 + 30ull * 1000000000u;
                while (left || !post_done) {
                        left -= pump(100, &post_done, true);
                        if (now_ns() > deadline)
                                die("round %lu: %u waiters and %s still unanswered after 30 s",
                                    round, left, post_done ? "not the POST" : "the POST");
                }
                if (ctl.status != 200)
                        die("POST /v1/%s answered %d: %.300s", action, ctl.status,
                            bconn_body(&ctl));
                for (unsigned long i = 0; i < o.waiters; i++) {
                        long long seen;
                        if (w[i].status != 200)
                                die("waiter %lu answered %d", i, w[i].status);
                        seen = find_number(bconn_body(&w[i]), "\"index\"");
                        if (seen <= (long long)index)
                                die("waiter %lu woke with index %lld, not above %llu", i, seen,
                                    index);
                        if (round < o.warmup)
                                continue;
                        samples[ns++] = w[i].t_done - t0;
                        if (seen == (long long)index + 1)
                                seen_next++;
                        else
                                seen_later++;
                }
                if (round >= o.warmup)
                        post_lat[np++] = post_done - t0;
                if (o.trace) {
                        uint64_t first = UINT64_MAX, last = 0;
                        for (unsigned long i = 0; i < o.waiters; i++) {
                                first = w[i].t_done < first ? w[i].t_done : first;
                                last = w[i].t_done > last ? w[i].t_done : last;
                        }
                        printf("TRACE round=%lu index=%llu action=%s t0_ns=%llu first_us=%.1f "
                               "last_us=%.1f post_us=%.1f\n",
                               round, index, action, (unsigned long long)t0,
                               (double)(first - t0) / 1000.0, (double)(last - t0) / 1000.0,
                               (double)(post_done - t0) / 1000.0);
                }
        }

        qsort(samples, ns, sizeof(*samples), cmp_u64);
        qsort(post_lat, np, sizeof(*post_lat), cmp_u64);
        double sum = 0;
        for (size_t i = 0; i < ns; i++)
                sum += (double)samples[i];
#define US(x) ((double)(x) / 1000.0)
        printf("long-poll wake latency, %lu waiters, %lu rounds (%zu samples): "
               "min %.1f us, p50 %.1f us, p90 %.1f us, p99 %.1f us, max %.1f us, mean %.1f us\n",
               o.waiters, o.rounds, ns, US(samples[0]), US(percentile(samples, ns, 50)),
               US(percentile(samples, ns, 90)), US(percentile(samples, ns, 99)),
               US(samples[ns - 1]), US(sum / (double)ns));
        printf("  woken with the next index: %llu, a later one: %llu; the POST itself answered "
               "after p50 %.1f us\n",
               seen_next, seen_later, US(percentile(post_lat, np, 50)));
        printf("RESULT lp_latency waiters=%lu rounds=%lu samples=%zu min_us=%.1f p50_us=%.1f "
               "p90_us=%.1f p99_us=%.1f max_us=%.1f mean_us=%.1f post_p50_us=%.1f\n",
               o.waiters, o.rounds, ns, US(samples[0]), US(percentile(samples, ns, 50)),
               US(percentile(samples, ns, 90)), US(percentile(samples, ns, 99)),
               US(samples[ns - 1]), US(sum / (double)ns), US(percentile(post_lat, np, 50)));
        for (unsigned long i = 0; i < o.waiters; i++)
                bconn_close(&w[i]);
        bconn_close(&ctl);
        free(w);
        free(samples);
        free(post_lat);
        close(ep);
        return 0;
}
