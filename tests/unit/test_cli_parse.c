/*
 * test_cli_parse.c: luofleetctl's parsers (cli/): counts, durations and
 * maintenance windows of a rollout spec (spec.c), dotted member paths, HOST
 * arguments (target.c), the config file (config.c) and the token file's
 * permission check. No network.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "testutil.h"

static void assert_json(json_t *j, const char *want)
{
        char *s;

        ck_assert_ptr_nonnull(j);
        s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
        ck_assert_str_eq(s, want);
        free(s);
        json_decref(j);
}

START_TEST(test_count)
{
        assert_json(spec_count("3"), "3");
        assert_json(spec_count("0"), "0");
        assert_json(spec_count("25%"), "\"25%\"");
        assert_json(spec_count("100%"), "\"100%\"");
        ck_assert_ptr_null(spec_count("101%"));
        ck_assert_ptr_null(spec_count("%"));
        ck_assert_ptr_null(spec_count("-1"));
        ck_assert_ptr_null(spec_count("3x"));
        ck_assert_ptr_null(spec_count(""));
        ck_assert_ptr_null(spec_count(NULL));
}
END_TEST

START_TEST(test_duration)
{
        ck_assert(spec_duration_valid("250ms"));
        ck_assert(spec_duration_valid("30s"));
        ck_assert(spec_duration_valid("5m"));
        ck_assert(spec_duration_valid("2h"));
        ck_assert(spec_duration_valid("45"));
        ck_assert(!spec_duration_valid("5 m"));
        ck_assert(!spec_duration_valid("m"));
        ck_assert(!spec_duration_valid("1d"));
        ck_assert(!spec_duration_valid(""));
        ck_assert(!spec_duration_valid("-5s"));
}
END_TEST

START_TEST(test_window)
{
        char err[256];

        assert_json(spec_window("mon-fri 02:00-05:00 Europe/Berlin", err, sizeof(err)),
                    "{\"days\":[\"mon\",\"tue\",\"wed\",\"thu\",\"fri\"],\"end\":\"05:00\","
                    "\"start\":\"02:00\",\"time_zone\":\"Europe/Berlin\"}");
        assert_json(spec_window("22:00-06:00", err, sizeof(err)),
                    "{\"end\":\"06:00\",\"start\":\"22:00\"}");
        assert_json(spec_window("daily 00:00-23:59 UTC", err, sizeof(err)),
                    "{\"end\":\"23:59\",\"start\":\"00:00\",\"time_zone\":\"UTC\"}");
        /* a range across the week's end, and a list; days come out in week order */
        assert_json(spec_window("fri-mon,wed 01:00-02:00", err, sizeof(err)),
                    "{\"days\":[\"mon\",\"wed\",\"fri\",\"sat\",\"sun\"],\"end\":\"02:00\","
                    "\"start\":\"01:00\"}");
        assert_json(spec_window("mon-sun 01:00-02:00", err, sizeof(err)),
                    "{\"end\":\"02:00\",\"start\":\"01:00\"}");
        ck_assert_ptr_null(spec_window("", err, sizeof(err)));
        ck_assert_ptr_null(spec_window("mon-fri", err, sizeof(err)));
        ck_assert_ptr_null(spec_window("monday 01:00-02:00", err, sizeof(err)));
        ck_assert_str_eq(err, "'monday': expected days like mon-fri or sat,sun");
        ck_assert_ptr_null(spec_window("mon, 01:00-02:00", err, sizeof(err)));
        ck_assert_ptr_null(spec_window("24:00-02:00", err, sizeof(err)));
        ck_assert_ptr_null(spec_window("01:60-02:00", err, sizeof(err)));
        ck_assert_ptr_null(spec_window("1:00-2:00", err, sizeof(err)));
        ck_assert_ptr_null(spec_window("mon 01:00-02:00 UTC extra", err, sizeof(err)));
}
END_TEST

START_TEST(test_set)
{
        json_t *spec = json_object();

        ck_assert_int_eq(spec_set(spec, "strategy.batch", json_string("10%")), 0);
        ck_assert_int_eq(spec_set(spec, "strategy.canary", json_integer(2)), 0);
        ck_assert_int_eq(spec_set(spec, "target.kernel.url", json_string("https://k")), 0);
        ck_assert_int_eq(spec_set(spec, "id", json_string("r1")), 0);
        assert_json(spec, "{\"id\":\"r1\",\"strategy\":{\"batch\":\"10%\",\"canary\":2},"
                          "\"target\":{\"kernel\":{\"url\":\"https://k\"}}}");
}
END_TEST

static void assert_target(const char *arg, int want_r, const char *want_url)
{
        char *url = NULL;
        int r = target_parse(arg, &url);

        ck_assert_msg(r == want_r, "%s: %d, want %d", arg, r, want_r);
        if (want_url)
                ck_assert_str_eq(url, want_url);
        else
                ck_assert_ptr_null(url);
        free(url);
}

START_TEST(test_target)
{
        assert_target("http://127.0.0.1:7470", 0, "http://127.0.0.1:7470");
        assert_target("https://h.example:7470/base", 0, "https://h.example:7470/base");
        assert_target("127.0.0.1:7470", 0, "http://127.0.0.1:7470");
        assert_target("127.3.4.5:1", 0, "http://127.3.4.5:1");
        assert_target("localhost:7470", 0, "http://localhost:7470");
        assert_target("[::1]:7470", 0, "http://[::1]:7470");
        assert_target("10.0.0.1:7470", 0, "https://10.0.0.1:7470");
        assert_target("host7.example:7470", 0, "https://host7.example:7470");
        assert_target("[2001:db8::1]:7470", 0, "https://[2001:db8::1]:7470");
        assert_target("web1", -ENOENT, NULL);
        assert_target("web-1.rack_2", -ENOENT, NULL);
        assert_target("", -EINVAL, NULL);
        assert_target("http://", -EINVAL, NULL);
        assert_target("ftp://h:1", -EINVAL, NULL);
        assert_target("h:0", -EINVAL, NULL);
        assert_target("h:65536", -EINVAL, NULL);
        assert_target("h:", -EINVAL, NULL);
        assert_target(":80", -EINVAL, NULL);
        assert_target("2001:db8::1", -EINVAL, NULL);
        assert_target("a b", -EINVAL, NULL);
        assert_target("h/x:1", -EINVAL, NULL);
}
END_TEST

START_TEST(test_config_text)
{
        struct cfg_layer l = { 0 };
        char err[256];

        ck_assert_int_eq(config_parse_text("# comment\n\n  controller = https://c:1  \n"
                                           "output=json\ntimeout = 5s\n# end",
                                           &l, err, sizeof(err)),
                         0);
        ck_assert_str_eq(l.v[CFG_CONTROLLER], "https://c:1");
        ck_assert_str_eq(l.v[CFG_OUTPUT], "json");
        ck_assert_str_eq(l.v[CFG_TIMEOUT], "5s");
        ck_assert_ptr_null(l.v[CFG_CERT]);
        /* a later line wins */
        ck_assert_int_eq(config_parse_text("output = table\noutput = json\n", &l, err, sizeof(err)),
                         0);
        ck_assert_str_eq(l.v[CFG_OUTPUT], "json");
        ck_assert_int_eq(config_parse_text("cert = a\n\nbogus = 1\n", &l, err, sizeof(err)),
                         -EINVAL);
        ck_assert_str_eq(err, "3: unknown key 'bogus' (known: controller, token-file, "
                              "ca-bundle, cert, key, output, timeout)");
        ck_assert_int_eq(config_parse_text("controller\n", &l, err, sizeof(err)), -EINVAL);
        ck_assert_str_eq(err, "1: expected \"key = value\"");
        ck_assert_int_eq(config_parse_text("key =   \n", &l, err, sizeof(err)), -EINVAL);
        ck_assert_str_eq(err, "1: 'key' has no value");
        config_layer_clear(&l);
        ck_assert_int_eq(cfg_key_from_string("token-file"), CFG_TOKEN_FILE);
        ck_assert_int_eq(cfg_key_from_string("token"), _CFG_MAX);
        ck_assert_str_eq(cfg_key_to_string(CFG_CA_BUNDLE), "ca-bundle");
}
END_TEST

START_TEST(test_token_file)
{
        char dir[512], path[600], err[512];
        char *tok = NULL;
        int fd, fds = testutil_count_fds();

        testutil_mkdtemp(dir, sizeof(dir), "cli-token");
        snprintf(path, sizeof(path), "%s/token", dir);
        fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write(fd, "s3cret  \nnext\n", 14), 14);
        close(fd);
        ck_assert_int_eq(chmod(path, 0600), 0);
        ck_assert_int_eq(config_read_token_file(path, &tok, err, sizeof(err)), 0);
        ck_assert_str_eq(tok, "s3cret");
        free(tok);
        tok = NULL;
        ck_assert_int_eq(chmod(path, 0604), 0);
        ck_assert_int_eq(config_read_token_file(path, &tok, err, sizeof(err)), -EPERM);
        ck_assert_ptr_null(tok);
        ck_assert_ptr_nonnull(strstr(err, "readable by every user (mode 0604)"));
        ck_assert_int_eq(config_read_token_file(dir, &tok, err, sizeof(err)), -EINVAL);
        snprintf(path, sizeof(path), "%s/none", dir);
        ck_assert_int_eq(config_read_token_file(path, &tok, err, sizeof(err)), -ENOENT);
        ck_assert_int_eq(testutil_count_fds(), fds);
        testutil_rm_rf(dir);
}
END_TEST

START_TEST(test_url_helpers)
{
        char *s = url_join("http://h:1/", "/v1/state");
        ck_assert_str_eq(s, "http://h:1/v1/state");
        free(s);
        s = url_join("http://h:1/base//", "/v1/hosts");
        ck_assert_str_eq(s, "http://h:1/base/v1/hosts");
        free(s);
        s = url_escape("zone=a,rack=r 1");
        ck_assert_str_eq(s, "zone%3Da%2Crack%3Dr%201");
        free(s);
        ck_assert_int_eq(rollout_status_exit("completed"), EXIT_OK);
        ck_assert_int_eq(rollout_status_exit("failed"), EXIT_RO_FAILED);
        ck_assert_int_eq(rollout_status_exit("blocked"), EXIT_RO_PAUSED);
        ck_assert_int_eq(rollout_status_exit("aborted"), EXIT_RO_ABORTED);
}
END_TEST

static Suite *cli_suite(void)
{
        Suite *s = suite_create("cli_parse");
        TCase *tc = tcase_create("core");

        tcase_add_test(tc, test_count);
        tcase_add_test(tc, test_duration);
        tcase_add_test(tc, test_window);
        tcase_add_test(tc, test_set);
        tcase_add_test(tc, test_target);
        tcase_add_test(tc, test_config_text);
        tcase_add_test(tc, test_token_file);
        tcase_add_test(tc, test_url_helpers);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(cli_suite)
