/*
 * test_websec.c: the Host and Origin checks against browsers (websec.c):
 * which Host values a loopback listener serves (DNS rebinding), which
 * Origins, and the syntax of --allowed-host and --allowed-origin.
 */
#include <string.h>

#include "testutil.h"
#include "websec.h"

START_TEST(test_host)
{
        static const char *const ok[] = {
                "localhost",   "LOCALHOST:8421", "localhost.",         "localhost:",
                "127.0.0.1",   "127.0.0.1:8421", "127.255.0.9:80",     "[::1]",
                "[::1]:8421",  "[0:0::1]:1",     "[::ffff:127.0.0.1]", "x",
                "hv-017:8421", /* no dot: never an outside DNS name */
        };
        static const char *const bad[] = {
                "evil.example",
                "evil.example:8421",
                "localhost.evil.example",
                "127.0.0.1.nip.io",
                "10.0.0.7",
                "0.0.0.0:8421",
                "[2001:db8::1]",
                "[::ffff:10.0.0.1]",
                "::1",
                "127.0.0.1:65536",
                "127.0.0.1:123456",
                "127.0.0.1:8x",
                "127.0.0.1:-1",
                "[::1",
                "[::1]x",
                "[]",
                "",
                ":8421",
                "a b",
                "evil.example%00",
                "evil.example/x",
        };

        ck_assert(websec_host_allowed(NULL, NULL, 0)); /* HTTP/1.0: no Host */
        for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
                ck_assert_msg(websec_host_allowed(ok[i], NULL, 0), "%s", ok[i]);
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                ck_assert_msg(!websec_host_allowed(bad[i], NULL, 0), "%s", bad[i]);
}
END_TEST

START_TEST(test_allowed_host)
{
        char a[3][WEBSEC_NAME_MAX + 1], out[WEBSEC_NAME_MAX + 1];
        const char *const list[] = { a[0], a[1], a[2] };

        ck_assert_int_eq(websec_parse_allowed_host("Agent.Example.", a[0], sizeof(a[0])), 0);
        ck_assert_str_eq(a[0], "agent.example");
        ck_assert_int_eq(websec_parse_allowed_host("2001:DB8:0::7", a[1], sizeof(a[1])), 0);
        ck_assert_str_eq(a[1], "2001:db8::7");
        ck_assert_int_eq(websec_parse_allowed_host("[2001:db8::8]", a[2], sizeof(a[2])), 0);
        ck_assert_str_eq(a[2], "2001:db8::8");

        ck_assert(websec_host_allowed("agent.example:8421", list, 3));
        ck_assert(websec_host_allowed("AGENT.EXAMPLE.", list, 3));
        ck_assert(websec_host_allowed("[2001:db8::0:7]:8421", list, 3));
        ck_assert(websec_host_allowed("[2001:db8::8]", list, 3));
        ck_assert(!websec_host_allowed("www.agent.example", list, 3));
        ck_assert(!websec_host_allowed("agent.example.evil", list, 3));
        ck_assert(!websec_host_allowed("[2001:db8::9]", list, 3));

        /* A port, a path, bad characters, nothing: refused. */
        static const char *const bad[] = {
                "agent.example:80", "[::1]:80", "a/b", "a b", "", ".", "[::1", "::g"
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                ck_assert_msg(websec_parse_allowed_host(bad[i], out, sizeof(out)) < 0, "%s",
                              bad[i]);
}
END_TEST

START_TEST(test_origin)
{
        char a[2][WEBSEC_ORIGIN_MAX + 1], out[WEBSEC_ORIGIN_MAX + 1];
        const char *const list[] = { a[0], a[1] };

        ck_assert(websec_origin_allowed(NULL, NULL, 0)); /* no Origin: not a web page */
        ck_assert(!websec_origin_allowed("http://evil.example", NULL, 0));
        ck_assert(!websec_origin_allowed("null", NULL, 0));
        ck_assert(!websec_origin_allowed("http://127.0.0.1:8421", NULL, 0));

        ck_assert_int_eq(
                websec_parse_allowed_origin("HTTPS://Dash.Example:3000", a[0], sizeof(a[0])), 0);
        ck_assert_str_eq(a[0], "https://dash.example:3000");
        /* The scheme's default port is left out, as browsers do. */
        ck_assert_int_eq(websec_parse_allowed_origin("http://ops.example:80", a[1], sizeof(a[1])),
                         0);
        ck_assert_str_eq(a[1], "http://ops.example");
        ck_assert(websec_origin_allowed("https://dash.example:3000", list, 2));
        ck_assert(websec_origin_allowed("https://DASH.example:3000", list, 2));
        ck_assert(websec_origin_allowed("http://ops.example", list, 2));
        ck_assert(!websec_origin_allowed("https://dash.example", list, 2));
        ck_assert(!websec_origin_allowed("http://dash.example:3000", list, 2));
        ck_assert(!websec_origin_allowed("https://dash.example:3000/", list, 2));

        ck_assert_int_eq(websec_parse_allowed_origin("https://[::1]:443", out, sizeof(out)), 0);
        ck_assert_str_eq(out, "https://[::1]");
        static const char *const bad[] = {
                "dash.example",
                "ftp://dash.example",
                "https://",
                "https://dash.example/",
                "null",
                "https://a b",
                "https://a:x",
                "https://dash.example?x",
                "",
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
                ck_assert_msg(websec_parse_allowed_origin(bad[i], out, sizeof(out)) < 0, "%s",
                              bad[i]);
}
END_TEST

static Suite *websec_suite(void)
{
        Suite *s = suite_create("websec");
        TCase *tc = tcase_create("core");

        tcase_add_test(tc, test_host);
        tcase_add_test(tc, test_allowed_host);
        tcase_add_test(tc, test_origin);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(websec_suite)
