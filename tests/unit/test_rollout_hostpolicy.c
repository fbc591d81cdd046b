/*
 * test_rollout_hostpolicy.c: the agent URLs the controller accepts
 * (rollout/hostpolicy.c) and where a bearer token may go (common/util.c
 * url_host, host_is_loopback, url_may_carry_token): loopback by the literal
 * only, https or loopback for tokens, --agent-allow patterns. Pure; no network.
 */
#include <check.h>
#include <errno.h>
#include <string.h>

#include "hostpolicy.h"
#include "luofleet/util.h"
#include "testutil.h"

START_TEST(test_url_host)
{
        char h[256];

        ck_assert_int_eq(url_host("https://Agent-1.Example.NET:7470/v1", h, sizeof(h)), 0);
        ck_assert_str_eq(h, "agent-1.example.net");
        ck_assert_int_eq(url_host("http://[::1]:7470", h, sizeof(h)), 0);
        ck_assert_str_eq(h, "::1");
        ck_assert_int_eq(url_host("http://127.0.0.1", h, sizeof(h)), 0);
        ck_assert_str_eq(h, "127.0.0.1");
        ck_assert_int_eq(url_host("http://user:pw@127.0.0.1:1/", h, sizeof(h)), -EINVAL);
        ck_assert_int_eq(url_host("ftp://127.0.0.1/", h, sizeof(h)), -EINVAL);
        ck_assert_int_eq(url_host("http://", h, sizeof(h)), -EINVAL);
        ck_assert_int_eq(url_host("http://[::1", h, sizeof(h)), -EINVAL);
        ck_assert_int_eq(url_host("http://abcdefgh", h, 4), -EINVAL);
}
END_TEST

START_TEST(test_loopback_by_literal)
{
        ck_assert(host_is_loopback("127.0.0.1"));
        ck_assert(host_is_loopback("127.200.3.4"));
        ck_assert(host_is_loopback("::1"));
        ck_assert(host_is_loopback("localhost"));
        ck_assert(!host_is_loopback("127.evil.example"));
        ck_assert(!host_is_loopback("128.0.0.1"));
        ck_assert(!host_is_loopback("::ffff:127.0.0.1"));
        ck_assert(!host_is_loopback("localhost.example"));
        ck_assert(!host_is_loopback(NULL));

        ck_assert(url_may_carry_token("https://agent.example:7470"));
        ck_assert(url_may_carry_token("http://127.0.0.1:7470"));
        ck_assert(url_may_carry_token("http://[::1]:7470/v1/state"));
        ck_assert(!url_may_carry_token("http://10.0.0.5:7470"));
        ck_assert(!url_may_carry_token("http://127.evil.example:7470"));
        ck_assert(!url_may_carry_token("http://[::ffff:127.0.0.1]:7470"));
        ck_assert(!url_may_carry_token("https://user@agent.example"));
        ck_assert(!url_may_carry_token(NULL));
}
END_TEST

START_TEST(test_patterns)
{
        char *const pats[] = { "hv1.example.net", "*.dc2.example.net", "10.1.0.0/16", "fd00::/8",
                               "192.0.2.7" };

        ck_assert(allow_pattern_valid("hv1.example.net"));
        ck_assert(allow_pattern_valid("*.example.net"));
        ck_assert(allow_pattern_valid("10.0.0.0/8"));
        ck_assert(allow_pattern_valid("::1"));
        ck_assert(allow_pattern_valid("fd00::/8"));
        ck_assert(!allow_pattern_valid(""));
        ck_assert(!allow_pattern_valid("*.") && !allow_pattern_valid("*..x"));
        ck_assert(!allow_pattern_valid("10.0.0.0/33"));
        ck_assert(!allow_pattern_valid("10.0.0.0/"));
        ck_assert(!allow_pattern_valid("host name"));
        ck_assert(!allow_pattern_valid("a*b"));

        ck_assert(host_allowed(pats, 5, "hv1.example.net"));
        ck_assert(host_allowed(pats, 5, "HV1.example.net") == true);
        ck_assert(host_allowed(pats, 5, "hv7.dc2.example.net"));
        ck_assert(!host_allowed(pats, 5, "dc2.example.net")); /* *.d needs a label before */
        ck_assert(!host_allowed(pats, 5, "hv7.dc2.example.net.evil"));
        ck_assert(host_allowed(pats, 5, "10.1.255.3"));
        ck_assert(!host_allowed(pats, 5, "10.2.0.1"));
        ck_assert(host_allowed(pats, 5, "fd12::3"));
        ck_assert(!host_allowed(pats, 5, "fe80::1"));
        ck_assert(host_allowed(pats, 5, "192.0.2.7"));
        ck_assert(!host_allowed(pats, 5, "192.0.2.8"));
        ck_assert(!host_allowed(pats, 5, "hv2.example.net"));
        ck_assert(host_allowed(pats, 0, "anything")); /* no patterns: any host */
}
END_TEST

START_TEST(test_url_check)
{
        char *const pats[] = { "127.0.0.1", "*.example.net" };
        struct host_policy strict = { 0 }, http = { .allow_http = true },
                           listed = { .allow = pats, .n_allow = 2 };
        char why[320];

        ck_assert_int_eq(host_url_check(&strict, "https://hv1.example.net:7470", why, sizeof(why)),
                         0);
        ck_assert_int_eq(host_url_check(&strict, "http://127.0.0.1:7470", why, sizeof(why)), 0);
        ck_assert_int_eq(host_url_check(&strict, "http://10.0.0.5:7470", why, sizeof(why)), -1);
        ck_assert_msg(strstr(why, "http:// only to a loopback address") != NULL, "%s", why);
        ck_assert_int_eq(host_url_check(&http, "http://10.0.0.5:7470", why, sizeof(why)), 0);
        ck_assert_int_eq(host_url_check(&strict, "https://u:p@hv1.example.net", why, sizeof(why)),
                         -1);
        ck_assert_msg(strstr(why, "without user information") != NULL, "%s", why);
        ck_assert_int_eq(host_url_check(&strict, "gopher://x", why, sizeof(why)), -1);
        ck_assert_int_eq(host_url_check(&listed, "https://hv1.example.net", why, sizeof(why)), 0);
        ck_assert_int_eq(host_url_check(&listed, "http://127.0.0.1:1", why, sizeof(why)), 0);
        ck_assert_int_eq(host_url_check(&listed, "http://localhost:1", why, sizeof(why)), -1);
        ck_assert_str_eq(why, "url: the host localhost matches no --agent-allow pattern");
}
END_TEST

static Suite *hostpolicy_suite(void)
{
        Suite *s = suite_create("rollout_hostpolicy");
        TCase *tc = tcase_create("core");

        tcase_add_test(tc, test_url_host);
        tcase_add_test(tc, test_loopback_by_literal);
        tcase_add_test(tc, test_patterns);
        tcase_add_test(tc, test_url_check);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(hostpolicy_suite)
