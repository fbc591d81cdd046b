/*
 * test_rollout_window.c: maintenance windows of rollout/window.c: the
 * validation of "windows" arrays and exact opening and closing instants in
 * UTC, Europe/Berlin and America/New_York, across midnight and across
 * daylight saving changes. Single-threaded except the thread-safety test;
 * needs the system tz database (/usr/share/zoneinfo).
 */
#include <check.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "testutil.h"
#include "window.h"

/* Parse a JSON literal; fails the test on a syntax error. */
static json_t *J(const char *text)
{
        json_error_t e;
        json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);

        ck_assert_msg(v != NULL, "bad test JSON: %s", e.text);
        return v;
}

/* Normalise text and expect a problem on field. */
static void expect_invalid(const char *text, const char *field)
{
        struct ctl_problem p = { 0 };
        json_t *in = J(text), *out = NULL;

        ck_assert_int_eq(windows_normalize(in, &out, &p), -1);
        ck_assert_ptr_null(out);
        ck_assert_int_eq(p.status, 400);
        ck_assert_str_eq(p.code, "invalid-field");
        ck_assert_str_eq(p.field, field);
        ck_assert_str_ne(p.detail, "");
        json_decref(in);
}

/* windows_check of a JSON text at now: returns the result, fills the times. */
static int check_at(const char *text, time_t now, time_t *next, time_t *closes)
{
        json_t *w = J(text);
        int r = windows_check(w, now, next, closes);

        json_decref(w);
        return r;
}

START_TEST(test_normalize_defaults)
{
        struct ctl_problem p = { 0 };
        json_t *in = J("[{\"start\": \"22:00\", \"end\": \"02:00\"},"
                       " {\"days\": [\"sun\", \"mon\"], \"start\": \"00:00\", \"end\": \"23:59\","
                       "  \"time_zone\": \"Europe/Berlin\"}]");
        json_t *out = NULL,
               *want = J("[{\"days\": [\"mon\",\"tue\",\"wed\",\"thu\",\"fri\",\"sat\",\"sun\"],"
                         "  \"start\": \"22:00\", \"end\": \"02:00\", \"time_zone\": \"UTC\"},"
                         " {\"days\": [\"mon\", \"sun\"], \"start\": \"00:00\", \"end\": \"23:59\","
                         "  \"time_zone\": \"Europe/Berlin\"}]");

        ck_assert_int_eq(windows_normalize(in, &out, &p), 0);
        ck_assert_msg(json_equal(out, want), "got %s", json_dumps(out, JSON_COMPACT));
        /* normalising the output again gives the same document */
        json_t *again = NULL;
        ck_assert_int_eq(windows_normalize(out, &again, &p), 0);
        ck_assert(json_equal(again, want));
        json_decref(again);
        json_decref(in);
        json_decref(out);
        json_decref(want);

        in = J("[]");
        ck_assert_int_eq(windows_normalize(in, &out, &p), 0);
        ck_assert(json_is_array(out) && json_array_size(out) == 0);
        json_decref(in);
        json_decref(out);
}
END_TEST

START_TEST(test_normalize_invalid)
{
        expect_invalid("{}", "windows");
        expect_invalid("\"mon\"", "windows");
        expect_invalid("[1]", "windows[0]");
        expect_invalid("[{\"start\": \"01:00\"}]", "windows[0].end");
        expect_invalid("[{\"end\": \"01:00\"}]", "windows[0].start");
        expect_invalid("[{\"start\": \"24:00\", \"end\": \"01:00\"}]", "windows[0].start");
        expect_invalid("[{\"start\": \"9:00\", \"end\": \"10:00\"}]", "windows[0].start");
        expect_invalid("[{\"start\": \"09:60\", \"end\": \"10:00\"}]", "windows[0].start");
        expect_invalid("[{\"start\": 900, \"end\": \"10:00\"}]", "windows[0].start");
        expect_invalid("[{\"start\": \"09:00\", \"end\": \"10:00 \"}]", "windows[0].end");
        expect_invalid("[{\"start\": \"09:00\", \"end\": \"10:00\", \"x\": 1}]", "windows[0].x");
        expect_invalid("[{\"days\": [], \"start\": \"09:00\", \"end\": \"10:00\"}]",
                       "windows[0].days");
        expect_invalid("[{\"days\": [\"mon\", \"mon\"], \"start\": \"09:00\", \"end\": \"10:00\"}]",
                       "windows[0].days");
        expect_invalid("[{\"days\": [\"Mon\"], \"start\": \"09:00\", \"end\": \"10:00\"}]",
                       "windows[0].days");
        expect_invalid("[{\"days\": \"mon\", \"start\": \"09:00\", \"end\": \"10:00\"}]",
                       "windows[0].days");
        static const char *const bad_zones[] = { "\"\"",
                                                 "\"../../etc/passwd\"",
                                                 "\"/etc/localtime\"",
                                                 "\"Europe\"",
                                                 "\"Europe/Nowhere\"",
                                                 "\"Europe/../UTC\"",
                                                 "\"Europe/Ber lin\"",
                                                 "\"utc\"",
                                                 "1",
                                                 "\"Europe\\u0000/Berlin\"",
                                                 "\"zone.tab\"",
                                                 "\"Europe//Berlin\"" };
        for (size_t i = 0; i < sizeof(bad_zones) / sizeof(bad_zones[0]); i++) {
                char text[256];
                snprintf(text, sizeof(text),
                         "[{\"start\": \"09:00\", \"end\": \"10:00\"},"
                         " {\"start\": \"09:00\", \"end\": \"10:00\", \"time_zone\": %s}]",
                         bad_zones[i]);
                expect_invalid(text, "windows[1].time_zone");
        }
        /* a member name with an embedded NUL */
        json_t *nul = J("[{\"end\": \"10:00\"}]");
        json_object_setn_new(json_array_get(nul, 0), "start\0", 6, json_string("09:00"));
        struct ctl_problem np = { 0 };
        json_t *nout = NULL;
        ck_assert_int_eq(windows_normalize(nul, &nout, &np), -1);
        ck_assert_str_eq(np.field, "windows[0].start");
        json_decref(nul);
        /* 33 windows: over the cap */
        json_t *many = json_array();
        for (int i = 0; i < 33; i++)
                json_array_append_new(many, J("{\"start\": \"09:00\", \"end\": \"10:00\"}"));
        struct ctl_problem p = { 0 };
        json_t *out = NULL;
        ck_assert_int_eq(windows_normalize(many, &out, &p), -1);
        ck_assert_str_eq(p.field, "windows");
        json_decref(many);
}
END_TEST

START_TEST(test_check_empty)
{
        time_t next = 7, closes = 7;

        ck_assert_int_eq(windows_check(NULL, 1767578400, &next, &closes), 1);
        ck_assert_int_eq(next, 0);
        ck_assert_int_eq(closes, 0);
        ck_assert_int_eq(check_at("[]", 1767578400, &next, &closes), 1);
        ck_assert_int_eq(closes, 0);
        ck_assert_int_eq(check_at("{}", 1767578400, &next, &closes), -EINVAL);
        ck_assert_int_eq(check_at("[1]", 1767578400, &next, &closes), -EINVAL);
        ck_assert_int_eq(
                check_at("[{\"start\": \"x\", \"end\": \"10:00\"}]", 1767578400, &next, &closes),
                -EINVAL);
        ck_assert_int_eq(check_at("[{\"start\": \"09:00\", \"end\": \"10:00\","
                                  " \"time_zone\": \"../etc/passwd\"}]",
                                  1767578400, &next, &closes),
                         -EINVAL);
        /* no day at all: never opens */
        ck_assert_int_eq(check_at("[{\"days\": [], \"start\": \"09:00\", \"end\": \"10:00\"}]",
                                  1767578400, &next, &closes),
                         0);
        ck_assert_int_eq(next, 0);
}
END_TEST

#define BERLIN_MON                                                                                 \
        "[{\"days\": [\"mon\"], \"start\": \"02:00\", \"end\": \"05:00\", "                        \
        "\"time_zone\": \"Europe/Berlin\"}]"

START_TEST(test_check_berlin_winter_summer)
{
        time_t next, closes;

        /* Mon 2026-01-05 02:00Z = 03:00 CET: open until 05:00 CET = 04:00Z */
        ck_assert_int_eq(check_at(BERLIN_MON, 1767578400, &next, &closes), 1);
        ck_assert_int_eq(closes, 1767585600);
        ck_assert_int_eq(next, 0);
        /* 01:00Z = 02:00 CET: the first open second */
        ck_assert_int_eq(check_at(BERLIN_MON, 1767574800, &next, &closes), 1);
        ck_assert_int_eq(closes, 1767585600);
        /* one second before: closed, opens at 01:00Z */
        ck_assert_int_eq(check_at(BERLIN_MON, 1767574799, &next, &closes), 0);
        ck_assert_int_eq(next, 1767574800);
        ck_assert_int_eq(closes, 0);
        /* 04:00Z = 05:00 CET: the end is excluded, next monday */
        ck_assert_int_eq(check_at(BERLIN_MON, 1767585600, &next, &closes), 0);
        ck_assert_int_eq(next, 1767574800 + 7 * 86400);

        /* Mon 2026-07-06 01:00Z = 03:00 CEST: open until 05:00 CEST = 03:00Z */
        ck_assert_int_eq(check_at(BERLIN_MON, 1783299600, &next, &closes), 1);
        ck_assert_int_eq(closes, 1783306800);
        /* 03:00Z: closed, next Mon 2026-07-13 02:00 CEST = 00:00Z */
        ck_assert_int_eq(check_at(BERLIN_MON, 1783306800, &next, &closes), 0);
        ck_assert_int_eq(next, 1783900800);
        /* Sun 2026-07-05 23:59:59Z = Mon 01:59:59 CEST: opens in one second */
        ck_assert_int_eq(check_at(BERLIN_MON, 1783295999, &next, &closes), 0);
        ck_assert_int_eq(next, 1783296000);
        /* a bit later than that in UTC but on the same monday: open */
        ck_assert_int_eq(check_at(BERLIN_MON, 1783296000, &next, &closes), 1);
        ck_assert_int_eq(closes, 1783306800);
}
END_TEST

START_TEST(test_check_past_midnight)
{
        const char *w = "[{\"days\": [\"fri\"], \"start\": \"22:00\", \"end\": \"02:00\"}]";
        time_t next, closes;

        /* Fri 2026-01-09 22:00Z opens; Sat 01:00Z still open (the friday window) */
        ck_assert_int_eq(check_at(w, 1767996000, &next, &closes), 1);
        ck_assert_int_eq(closes, 1768010400);
        ck_assert_int_eq(check_at(w, 1768006800, &next, &closes), 1);
        ck_assert_int_eq(closes, 1768010400);
        /* Sat 03:00Z: closed until Fri 2026-01-16 22:00Z */
        ck_assert_int_eq(check_at(w, 1768014000, &next, &closes), 0);
        ck_assert_int_eq(next, 1768600800);
        /* Sat 2026-01-03 12:00Z: next is Fri 2026-01-09 22:00Z (6.4 days ahead) */
        ck_assert_int_eq(check_at(w, 1767441600, &next, &closes), 0);
        ck_assert_int_eq(next, 1767996000);

        /* end == start: 24 hours from the start */
        ck_assert_int_eq(
                check_at("[{\"days\": [\"fri\"], \"start\": \"22:00\", \"end\": \"22:00\"}]",
                         1768006800, &next, &closes),
                1);
        ck_assert_int_eq(closes, 1767996000 + 86400);
}
END_TEST

START_TEST(test_check_chained)
{
        /* Mon 22:00-24:00 then Tue 00:00-06:00 UTC: one stretch until Tue 06:00 */
        const char *w = "[{\"days\": [\"tue\"], \"start\": \"00:00\", \"end\": \"06:00\"},"
                        " {\"days\": [\"mon\"], \"start\": \"22:00\", \"end\": \"00:00\"}]";
        time_t next, closes;

        ck_assert_int_eq(check_at(w, 1767654000, &next, &closes), 1); /* Mon 23:00Z */
        ck_assert_int_eq(closes, 1767679200);                         /* Tue 06:00Z */
}
END_TEST

START_TEST(test_check_new_york)
{
        const char *w = "[{\"days\": [\"tue\"], \"start\": \"09:00\", \"end\": \"17:00\","
                        " \"time_zone\": \"America/New_York\"}]";
        time_t next, closes;

        /* Tue 2026-03-10 (EDT, UTC-4): opens 13:00:00Z exactly, closes 21:00Z */
        ck_assert_int_eq(check_at(w, 1773147599, &next, &closes), 0);
        ck_assert_int_eq(next, 1773147600);
        ck_assert_int_eq(check_at(w, 1773147600, &next, &closes), 1);
        ck_assert_int_eq(closes, 1773176400);
        /* Tue 2026-03-03 (EST, UTC-5): 09:00 = 14:00Z, 17:00 = 22:00Z */
        ck_assert_int_eq(check_at(w, 1772546400 - 60, &next, &closes), 0);
        ck_assert_int_eq(next, 1772546400);
        ck_assert_int_eq(check_at(w, 1772546400 + 3600, &next, &closes), 1);
        ck_assert_int_eq(closes, 1772575200);
        /* from the EST tuesday after it closes, the next one is the EDT tuesday */
        ck_assert_int_eq(check_at(w, 1772575200, &next, &closes), 0);
        ck_assert_int_eq(next, 1773147600);
}
END_TEST

START_TEST(test_check_dst_gap_and_repeat)
{
        /* Sun 2026-03-29, Berlin: 02:00 CET jumps to 03:00 CEST at 01:00Z.
         * 02:30-03:30 that day is open from the jump (01:00Z) to 03:30 CEST (01:30Z). */
        const char *gap = "[{\"days\": [\"sun\"], \"start\": \"02:30\", \"end\": \"03:30\","
                          " \"time_zone\": \"Europe/Berlin\"}]";
        time_t next, closes;

        ck_assert_int_eq(check_at(gap, 1774745999, &next, &closes), 0);
        ck_assert_int_eq(next, 1774746000);
        ck_assert_int_eq(check_at(gap, 1774746600, &next, &closes), 1);
        ck_assert_int_eq(closes, 1774747800);
        /* 01:30Z: closed; next sunday 02:30 CEST = 00:30Z on 2026-04-05 */
        ck_assert_int_eq(check_at(gap, 1774747800, &next, &closes), 0);
        ck_assert_int_eq(next, 1774747800 + 7 * 86400 - 3600);

        /* Sun 2026-10-25: 02:30 happens twice (00:30Z CEST, 01:30Z CET); the
         * first counts. 02:30-04:00 is open from 00:30Z to 04:00 CET = 03:00Z. */
        const char *rep = "[{\"days\": [\"sun\"], \"start\": \"02:30\", \"end\": \"04:00\","
                          " \"time_zone\": \"Europe/Berlin\"}]";
        ck_assert_int_eq(check_at(rep, 1792886400, &next, &closes), 0);
        ck_assert_int_eq(next, 1792888200);
        ck_assert_int_eq(check_at(rep, 1792888200, &next, &closes), 1);
        ck_assert_int_eq(closes, 1792897200);
}
END_TEST

START_TEST(test_check_restores_tz)
{
        const char *before = getenv("TZ");
        char *saved = before ? strdup(before) : NULL;
        time_t next, closes;

        setenv("TZ", "Asia/Tokyo", 1);
        tzset();
        ck_assert_int_eq(check_at(BERLIN_MON, 1767578400, &next, &closes), 1);
        ck_assert_str_eq(getenv("TZ"), "Asia/Tokyo");
        struct tm tm;
        time_t t = 0;
        localtime_r(&t, &tm);
        ck_assert_int_eq(tm.tm_hour, 9); /* still Tokyo */
        if (saved)
                setenv("TZ", saved, 1);
        else
                unsetenv("TZ");
        tzset();
        free(saved);
}
END_TEST

static void *check_thread(void *arg)
{
        const char *w = arg;
        long bad = 0;

        for (int i = 0; i < 200; i++) {
                time_t next, closes;
                if (strstr(w, "Berlin")) {
                        if (check_at(w, 1767578400, &next, &closes) != 1 || closes != 1767585600)
                                bad++;
                } else if (check_at(w, 1773147599, &next, &closes) != 0 || next != 1773147600) {
                        bad++;
                }
        }
        return (void *)bad;
}

START_TEST(test_check_threads)
{
        static const char ny[] = "[{\"days\": [\"tue\"], \"start\": \"09:00\", \"end\": \"17:00\","
                                 " \"time_zone\": \"America/New_York\"}]";
        pthread_t t[4];

        for (int i = 0; i < 4; i++)
                ck_assert_int_eq(pthread_create(&t[i], NULL, check_thread,
                                                (void *)(i % 2 ? ny : BERLIN_MON)),
                                 0);
        for (int i = 0; i < 4; i++) {
                void *bad;
                ck_assert_int_eq(pthread_join(t[i], &bad), 0);
                ck_assert_ptr_null(bad);
        }
}
END_TEST

static Suite *window_suite(void)
{
        Suite *s = suite_create("rollout_window");
        TCase *tc = tcase_create("core");

        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_normalize_defaults);
        tcase_add_test(tc, test_normalize_invalid);
        tcase_add_test(tc, test_check_empty);
        tcase_add_test(tc, test_check_berlin_winter_summer);
        tcase_add_test(tc, test_check_past_midnight);
        tcase_add_test(tc, test_check_chained);
        tcase_add_test(tc, test_check_new_york);
        tcase_add_test(tc, test_check_dst_gap_and_repeat);
        tcase_add_test(tc, test_check_restores_tz);
        tcase_add_test(tc, test_check_threads);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(window_suite)
