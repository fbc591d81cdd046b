/*
 * test_connlimit.c: connection accounting (connlimit.c) without MHD: the
 * accept policy per address and in total, Unix peers, a race past the limit
 * (opened() over the limit shuts the socket down), the request deadline
 * (fresh and kept-alive queues, cut with shutdown(2), counted) and the
 * bookkeeping after close. Sockets are socketpairs: a cut one reads EOF on
 * the other side.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "connlimit.h"
#include "metrics.h"
#include "testutil.h"

static struct sockaddr_in v4(const char *ip)
{
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(4242) };
        ck_assert_int_eq(inet_pton(AF_INET, ip, &sa.sin_addr), 1);
        return sa;
}

static struct sockaddr_in6 v6(const char *ip)
{
        struct sockaddr_in6 sa = { .sin6_family = AF_INET6, .sin6_port = htons(4242) };
        ck_assert_int_eq(inet_pton(AF_INET6, ip, &sa.sin6_addr), 1);
        return sa;
}

#define SA(x) ((const struct sockaddr *)(const void *)&(x))

struct pair {
        int ours, peer;
};

static struct pair pair_new(void)
{
        int sv[2];
        ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        return (struct pair){ sv[0], sv[1] };
}

static void pair_close(struct pair *p)
{
        close(p->ours);
        close(p->peer);
}

/* Has our side been shut down (the peer reads EOF at once)? */
static bool cut(const struct pair *p)
{
        struct pollfd pfd = { .fd = p->peer, .events = POLLIN };
        char c;
        if (poll(&pfd, 1, 0) != 1)
                return false;
        return read(p->peer, &c, 1) == 0;
}

static uint64_t rejected(enum metrics_reject r)
{
        struct strbuf sb = { 0 };
        char want[96];
        unsigned long long v = 0;

        metrics_render_requests(&sb);
        ck_assert(!sb.oom);
        snprintf(want, sizeof(want), "luofleet_http_rejected_total{reason=\"%s\"} ",
                 metrics_reject_to_string(r));
        const char *p = strstr(sb.s, want);
        ck_assert_ptr_nonnull(p);
        ck_assert_int_eq(sscanf(p + strlen(want), "%llu", &v), 1);
        strbuf_free(&sb);
        return v;
}

START_TEST(test_limits)
{
        struct connlimit cl;
        struct sockaddr_in a = v4("10.0.0.1"), b = v4("10.0.0.2");
        struct sockaddr_in6 c6 = v6("2001:db8::1");
        struct sockaddr_un un = { .sun_family = AF_UNIX };
        struct connlimit_conn *c[8];
        struct pair p[8];
        uint64_t per_ip = rejected(METRICS_REJECT_PER_IP), total = rejected(METRICS_REJECT_TOTAL);

        connlimit_init(&cl, 5, 2, 10000, 60000);
        for (int i = 0; i < 8; i++)
                p[i] = pair_new();

        ck_assert(connlimit_accept(&cl, SA(a), sizeof(a)));
        c[0] = connlimit_opened(&cl, p[0].ours, SA(a));
        ck_assert(connlimit_accept(&cl, SA(a), sizeof(a)));
        c[1] = connlimit_opened(&cl, p[1].ours, SA(a));
        /* a third from a: refused; from b and from an IPv6 address: fine */
        ck_assert(!connlimit_accept(&cl, SA(a), sizeof(a)));
        ck_assert_uint_eq(rejected(METRICS_REJECT_PER_IP), per_ip + 1);
        ck_assert(connlimit_accept(&cl, SA(b), sizeof(b)));
        c[2] = connlimit_opened(&cl, p[2].ours, SA(b));
        ck_assert(connlimit_accept(&cl, SA(c6), sizeof(c6)));
        c[3] = connlimit_opened(&cl, p[3].ours, SA(c6));
        /* Unix peers have no address: only the total counts */
        ck_assert(connlimit_accept(&cl, SA(un), sizeof(un)));
        c[4] = connlimit_opened(&cl, p[4].ours, NULL);
        ck_assert_uint_eq(connlimit_count(&cl), 5);
        ck_assert(!connlimit_accept(&cl, SA(un), sizeof(un)));
        ck_assert(!connlimit_accept(&cl, SA(b), sizeof(b)));
        ck_assert_uint_eq(rejected(METRICS_REJECT_TOTAL), total + 2);
        for (int i = 0; i < 5; i++)
                ck_assert(!cut(&p[i]));

        /* A race: another thread's check passed before these were counted. */
        c[5] = connlimit_opened(&cl, p[5].ours, SA(b));
        ck_assert(cut(&p[5]));
        ck_assert_uint_eq(rejected(METRICS_REJECT_TOTAL), total + 3);
        connlimit_closed(&cl, c[5]);

        /* Closing frees the slots, and the address entry with the last one. */
        connlimit_closed(&cl, c[0]);
        connlimit_closed(&cl, c[1]);
        ck_assert_uint_eq(connlimit_count(&cl), 3);
        ck_assert(connlimit_accept(&cl, SA(a), sizeof(a)));
        c[0] = connlimit_opened(&cl, p[6].ours, SA(a));
        c[1] = connlimit_opened(&cl, p[7].ours, SA(a));
        ck_assert(!cut(&p[6]));
        ck_assert(!cut(&p[7]));
        /* over per address by a race */
        struct pair extra = pair_new();
        connlimit_closed(&cl, c[4]);
        struct connlimit_conn *x = connlimit_opened(&cl, extra.ours, SA(a));
        ck_assert(cut(&extra));
        ck_assert_uint_eq(rejected(METRICS_REJECT_PER_IP), per_ip + 2);
        connlimit_closed(&cl, x);
        pair_close(&extra);

        for (int i = 0; i < 4; i++)
                connlimit_closed(&cl, c[i]);
        ck_assert_uint_eq(connlimit_count(&cl), 0);
        for (int i = 0; i < 8; i++)
                pair_close(&p[i]);
        connlimit_done(&cl);
}
END_TEST

START_TEST(test_deadlines)
{
        struct connlimit cl;
        struct sockaddr_in a = v4("10.0.0.1");
        struct pair p[3];
        struct connlimit_conn *c[3];
        uint64_t timeouts = rejected(METRICS_REJECT_HEADER_TIMEOUT);

        connlimit_init(&cl, 100, 100, 1000, 5000); /* head 1 s, kept alive 6 s */
        ck_assert_uint_eq(connlimit_next_deadline(&cl), UINT64_MAX);
        uint64_t t0 = now_mono_usec();
        for (int i = 0; i < 3; i++) {
                p[i] = pair_new();
                c[i] = connlimit_opened(&cl, p[i].ours, SA(a));
        }
        uint64_t d = connlimit_next_deadline(&cl);
        ck_assert_uint_ge(d, t0 + 1000000);
        ck_assert_uint_le(d, now_mono_usec() + 1000000);

        /* c0's request arrived; c1 was answered and waits for its next one */
        connlimit_arrived(&cl, c[0]);
        connlimit_arrived(&cl, c[1]);
        connlimit_completed(&cl, c[1]);

        /* Not yet due: nothing happens. */
        connlimit_fire(&cl, t0 + 500000);
        for (int i = 0; i < 3; i++)
                ck_assert(!cut(&p[i]));
        /* c2 is due at 1 s; c1 at 6 s after its answer; c0 never */
        connlimit_fire(&cl, now_mono_usec() + 1000000);
        ck_assert(!cut(&p[0]));
        ck_assert(!cut(&p[1]));
        ck_assert(cut(&p[2]));
        ck_assert_uint_eq(rejected(METRICS_REJECT_HEADER_TIMEOUT), timeouts + 1);
        d = connlimit_next_deadline(&cl);
        ck_assert_uint_ge(d, t0 + 6000000);
        connlimit_fire(&cl, now_mono_usec() + 6000000);
        ck_assert(cut(&p[1]));
        ck_assert(!cut(&p[0]));
        ck_assert_uint_eq(connlimit_next_deadline(&cl), UINT64_MAX);
        ck_assert_uint_eq(rejected(METRICS_REJECT_HEADER_TIMEOUT), timeouts + 2);

        /* Cut connections stay counted until MHD closes them. */
        ck_assert_uint_eq(connlimit_count(&cl), 3);
        for (int i = 0; i < 3; i++) {
                connlimit_closed(&cl, c[i]);
                pair_close(&p[i]);
        }
        connlimit_closed(&cl, NULL);
        ck_assert_uint_eq(connlimit_count(&cl), 0);
        connlimit_done(&cl);
}
END_TEST

static Suite *connlimit_suite(void)
{
        Suite *s = suite_create("connlimit");
        TCase *tc = tcase_create("core");

        tcase_add_test(tc, test_limits);
        tcase_add_test(tc, test_deadlines);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(connlimit_suite)
