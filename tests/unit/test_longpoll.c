/*
 * test_longpoll.c: the long-poll waiter registry without MHD: admission
 * against the current index, the cap, wake-up by index (only waiters below
 * the new index), expiry by deadline, the cached next deadline, and close.
 */
#include <check.h>
#include <errno.h>
#include <stdlib.h>

#include "longpoll.h"
#include "testutil.h"

static uint64_t current;
static int resumed[16];

static uint64_t cur_index(void *ud)
{
        (void)ud;
        return current;
}

static struct lp_waiter waiters[16];

static void on_resume(struct lp_waiter *w)
{
        resumed[w - waiters]++;
}

static void init_waiter(int i, uint64_t index, uint64_t deadline)
{
        waiters[i] =
                (struct lp_waiter){ .index = index, .deadline = deadline, .resume = on_resume };
}

static void reset(void)
{
        current = 5;
        for (int i = 0; i < 16; i++)
                resumed[i] = 0;
}

START_TEST(test_admission_and_cap)
{
        struct longpoll lp;

        reset();
        lp_init(&lp, 2);
        init_waiter(0, 4, 1000); /* behind: answer at once */
        ck_assert_int_eq(lp_add(&lp, &waiters[0], cur_index, NULL), 1);
        ck_assert(!waiters[0].linked);
        init_waiter(1, 5, 1000);
        init_waiter(2, 5, 500);
        init_waiter(3, 5, 100);
        ck_assert_int_eq(lp_add(&lp, &waiters[1], cur_index, NULL), 0);
        ck_assert_int_eq(lp_add(&lp, &waiters[2], cur_index, NULL), 0);
        ck_assert_int_eq(lp_add(&lp, &waiters[3], cur_index, NULL), -EBUSY);
        ck_assert_uint_eq(lp.rejected_total, 1);
        ck_assert_uint_eq(lp_count(&lp), 2);
        ck_assert_uint_eq(lp_next_deadline(&lp), 500);
        lp_close(&lp);
        ck_assert_int_eq(resumed[1], 1);
        ck_assert_int_eq(resumed[2], 1);
        ck_assert_uint_eq(lp_count(&lp), 0);
        /* closed: new waiters are answered at once */
        init_waiter(4, 5, 1000);
        ck_assert_int_eq(lp_add(&lp, &waiters[4], cur_index, NULL), 1);
        lp_done(&lp);
}
END_TEST

START_TEST(test_notify_and_expiry)
{
        struct longpoll lp;

        reset();
        lp_init(&lp, 10);
        init_waiter(0, 5, 300);
        init_waiter(1, 5, 100);
        init_waiter(2, 7, 200); /* a client ahead of us (index from the future is answered by
                                   the handler; the registry just compares) */
        current = 5;
        ck_assert_int_eq(lp_add(&lp, &waiters[0], cur_index, NULL), 0);
        ck_assert_int_eq(lp_add(&lp, &waiters[1], cur_index, NULL), 0);
        ck_assert_int_eq(lp_add(&lp, &waiters[2], cur_index, NULL), 0);
        ck_assert_uint_eq(lp_next_deadline(&lp), 100);

        /* expiry of the earliest only */
        lp_fire(&lp, 150);
        ck_assert_int_eq(resumed[1], 1);
        ck_assert(waiters[1].timed_out);
        ck_assert_int_eq(resumed[0], 0);
        ck_assert_uint_eq(lp_next_deadline(&lp), 200);
        ck_assert_uint_eq(lp.timeouts_total, 1);

        /* index 6 wakes the waiter at 5, not the one at 7 */
        current = 6;
        lp_notify(&lp, 6);
        ck_assert_int_eq(resumed[0], 1);
        ck_assert(!waiters[0].timed_out);
        ck_assert_int_eq(resumed[2], 0);
        ck_assert_uint_eq(lp.woken_total, 1);
        ck_assert_uint_eq(lp_count(&lp), 1);

        current = 8;
        lp_notify(&lp, 8);
        ck_assert_int_eq(resumed[2], 1);
        ck_assert_uint_eq(lp_count(&lp), 0);
        ck_assert_uint_eq(lp_next_deadline(&lp), UINT64_MAX);
        /* every waiter was resumed exactly once */
        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(resumed[i], 1);
        lp_done(&lp);
}
END_TEST

static int many_count;

static void count_resume(struct lp_waiter *w)
{
        (void)w;
        many_count++;
}

START_TEST(test_many)
{
        enum { N = 1000 };
        struct longpoll lp;
        struct lp_waiter *w = calloc(N, sizeof(*w));

        ck_assert_ptr_nonnull(w);
        current = 5;
        many_count = 0;
        lp_init(&lp, N);
        for (int i = 0; i < N; i++) {
                w[i] = (struct lp_waiter){ .index = 5,
                                           .deadline = 1000 + (uint64_t)i,
                                           .resume = count_resume };
                ck_assert_int_eq(lp_add(&lp, &w[i], cur_index, NULL), 0);
        }
        ck_assert_uint_eq(lp_next_deadline(&lp), 1000);
        /* one change wakes all of them, once */
        current = 6;
        lp_notify(&lp, 6);
        ck_assert_int_eq(many_count, N);
        ck_assert_uint_eq(lp_count(&lp), 0);
        for (int i = 0; i < N; i++)
                ck_assert(!w[i].linked);
        lp_notify(&lp, 7);
        ck_assert_int_eq(many_count, N);
        free(w);
        lp_done(&lp);
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("longpoll");
        TCase *tc = tcase_create("registry");
        tcase_add_test(tc, test_admission_and_cap);
        tcase_add_test(tc, test_notify_and_expiry);
        tcase_add_test(tc, test_many);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(suite)
