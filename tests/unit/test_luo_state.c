/*
 * test_luo_state.c: the kernel's SET_EVENT table, every (state, event) pair,
 * and the state/event strings (sysfs form included). Single-threaded.
 */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "luofleet/luo_state.h"
#include "testutil.h"

/* The kernel's answer for each pair: the target state, or -EINVAL. */
static const int expected[_LUO_STATE_MAX][_LUO_EVENT_MAX] = {
        [LUO_STATE_UNDEFINED] = { -EINVAL, -EINVAL, -EINVAL, -EINVAL },
        [LUO_STATE_NORMAL] = { LUO_STATE_PREPARED, -EINVAL, -EINVAL, -EINVAL },
        [LUO_STATE_PREPARED] = { -EINVAL, -EINVAL, -EINVAL, LUO_STATE_NORMAL },
        [LUO_STATE_FROZEN] = { -EINVAL, -EINVAL, -EINVAL, LUO_STATE_NORMAL },
        [LUO_STATE_UPDATED] = { -EINVAL, -EINVAL, LUO_STATE_NORMAL, -EINVAL },
};

START_TEST(test_transition_table)
{
        /* The event columns above are PREPARE, FREEZE, FINISH, CANCEL. */
        ck_assert_int_eq(LUO_EVENT_PREPARE, 0);
        ck_assert_int_eq(LUO_EVENT_FREEZE, 1);
        ck_assert_int_eq(LUO_EVENT_FINISH, 2);
        ck_assert_int_eq(LUO_EVENT_CANCEL, 3);

        for (int s = 0; s < _LUO_STATE_MAX; s++)
                for (int e = 0; e < _LUO_EVENT_MAX; e++) {
                        enum luo_state to = (enum luo_state)99;
                        int r = luo_state_apply_event((enum luo_state)s, (enum luo_event)e, &to);
                        if (expected[s][e] < 0) {
                                ck_assert_msg(r == -EINVAL, "state %d event %d: got %d", s, e, r);
                                ck_assert_int_eq(to, 99); /* untouched on failure */
                        } else {
                                ck_assert_msg(r == 0, "state %d event %d: got %d", s, e, r);
                                ck_assert_int_eq(to, expected[s][e]);
                        }
                }
}
END_TEST

START_TEST(test_transition_out_of_range)
{
        enum luo_state to;

        ck_assert_int_eq(luo_state_apply_event(LUO_STATE_NORMAL, _LUO_EVENT_MAX, &to), -EINVAL);
        ck_assert_int_eq(luo_state_apply_event(LUO_STATE_NORMAL, (enum luo_event)(-1), &to),
                         -EINVAL);
        ck_assert_int_eq(luo_state_apply_event(_LUO_STATE_MAX, LUO_EVENT_PREPARE, &to), -EINVAL);
        /* ret_to may be NULL */
        ck_assert_int_eq(luo_state_apply_event(LUO_STATE_NORMAL, LUO_EVENT_PREPARE, NULL), 0);
}
END_TEST

START_TEST(test_abi_values)
{
        ck_assert_int_eq(LUO_STATE_UNDEFINED, 0);
        ck_assert_int_eq(LUO_STATE_NORMAL, 1);
        ck_assert_int_eq(LUO_STATE_PREPARED, 2);
        ck_assert_int_eq(LUO_STATE_FROZEN, 3);
        ck_assert_int_eq(LUO_STATE_UPDATED, 4);
        ck_assert_int_eq(_LUO_STATE_MAX, 5);
        ck_assert_int_eq(_LUO_EVENT_MAX, 4);
}
END_TEST

START_TEST(test_state_strings)
{
        static const char *const names[] = { "undefined", "normal", "prepared", "frozen",
                                             "updated" };

        for (int s = 0; s < _LUO_STATE_MAX; s++) {
                ck_assert_str_eq(luo_state_to_string((enum luo_state)s), names[s]);
                ck_assert_int_eq(luo_state_from_string(names[s]), s);
                ck_assert_int_eq(luo_state_from_string(luo_state_to_string((enum luo_state)s)), s);
        }
        ck_assert_ptr_null(luo_state_to_string(_LUO_STATE_MAX));
        ck_assert_ptr_null(luo_state_to_string((enum luo_state)(-1)));
}
END_TEST

START_TEST(test_event_strings)
{
        static const char *const names[] = { "prepare", "freeze", "finish", "cancel" };

        for (int e = 0; e < _LUO_EVENT_MAX; e++) {
                ck_assert_str_eq(luo_event_to_string((enum luo_event)e), names[e]);
                ck_assert_int_eq(luo_event_from_string(names[e]), e);
        }
        ck_assert_ptr_null(luo_event_to_string(_LUO_EVENT_MAX));
        ck_assert_int_eq(luo_event_from_string("prepared"), -EINVAL);
        ck_assert_int_eq(luo_event_from_string("Prepare"), -EINVAL);
        ck_assert_int_eq(luo_event_from_string(""), -EINVAL);
        ck_assert_int_eq(luo_event_from_string(NULL), -EINVAL);
}
END_TEST

START_TEST(test_sysfs_parsing)
{
        /* Exactly what the kernel's show() writes: one word and a newline. */
        ck_assert_int_eq(luo_state_from_buf("prepared\n", 9), LUO_STATE_PREPARED);
        ck_assert_int_eq(luo_state_from_buf("normal\n", 7), LUO_STATE_NORMAL);
        ck_assert_int_eq(luo_state_from_buf("frozen\n", 7), LUO_STATE_FROZEN);
        ck_assert_int_eq(luo_state_from_buf("updated\n", 8), LUO_STATE_UPDATED);
        ck_assert_int_eq(luo_state_from_buf("undefined\n", 10), LUO_STATE_UNDEFINED);
        ck_assert_int_eq(luo_state_from_string("prepared\n"), LUO_STATE_PREPARED);
        /* not NUL-terminated: the length counts, not the terminator */
        ck_assert_int_eq(luo_state_from_buf("frozenXYZ", 6), LUO_STATE_FROZEN);
        ck_assert_int_eq(luo_state_from_buf("prepared", 8), LUO_STATE_PREPARED);
}
END_TEST

START_TEST(test_garbage_rejected)
{
        static const char *const bad[] = {
                "",          "\n",         "prepared\n\n", "Prepared\n", "PREPARED",  " normal\n",
                "normal \n", "normal\r\n", "prepare\n",    "norma",      "normalx\n", "updated\t",
                "4",         "2\n",
        };

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                ck_assert_msg(luo_state_from_string(bad[i]) == -EINVAL, "accepted \"%s\"", bad[i]);
        ck_assert_int_eq(luo_state_from_buf("frozen\0", 7), -EINVAL);
        ck_assert_int_eq(luo_state_from_buf("normal\n", 6 + 2), -EINVAL); /* NUL after \n */
        ck_assert_int_eq(luo_state_from_buf(NULL, 0), -EINVAL);
        ck_assert_int_eq(luo_state_from_string(NULL), -EINVAL);
}
END_TEST

static Suite *luo_state_suite(void)
{
        Suite *s = suite_create("luo_state");
        TCase *tc = tcase_create("core");

        tcase_add_test(tc, test_transition_table);
        tcase_add_test(tc, test_transition_out_of_range);
        tcase_add_test(tc, test_abi_values);
        tcase_add_test(tc, test_state_strings);
        tcase_add_test(tc, test_event_strings);
        tcase_add_test(tc, test_sysfs_parsing);
        tcase_add_test(tc, test_garbage_rejected);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(luo_state_suite)
