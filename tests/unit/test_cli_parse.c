/*
 * test_cli_parse.c: luofleetctl's parsers (cli/): counts, durations and
 * maintenance windows of a rollout spec (spec.c), dotted member paths, HOST
 * arguments (target.c), the config file (config.c), the token file's
 * permission check, `session list|show` arguments, the session lookup and
 * the byte units (cmd_session.c, table.c). No network.
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

START_TEST(test_table_utf8_and_controls)
{
        static const char *const h[] = { "HOST", "KERNEL" };
        static const char *const r1[] = { "h\xc3\xb6st", "6.1" }; /* hoest: 4 columns */
        static const char *const r2[] = { "\xe6\x9c\xba\xe5\x99\xa8", "6.2" }; /* 2 wide: 4 */
        static const char *const r3[] = { "a\x1b[31mb", "x\ty" };              /* ESC shown as ? */
        struct table *t = table_new(2, h);
        char *out = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&out, &len);

        ck_assert_uint_eq(display_width("abc"), 3);
        ck_assert_uint_eq(display_width("h\xc3\xb6st"), 4);
        ck_assert_uint_eq(display_width("\xe6\x9c\xba\xe5\x99\xa8"), 4);
        ck_assert_uint_eq(display_width("e\xcc\x81"), 1);        /* e + combining acute */
        ck_assert_uint_eq(display_width("\xf0\x9f\x9a\x80"), 2); /* rocket */
        ck_assert_uint_eq(display_width("\xff\xc3"), 2);         /* broken bytes: 1 each */
        ck_assert_ptr_nonnull(t);
        ck_assert_int_eq(table_add(t, r1), 0);
        ck_assert_int_eq(table_add(t, r2), 0);
        ck_assert_int_eq(table_add(t, r3), 0);
        table_print(t, f);
        fclose(f);
        /* the widest cell is "a?[31mb" (7 columns): every first cell padded to 9 */
        ck_assert_str_eq(out, "HOST     KERNEL\n"
                              "h\xc3\xb6st     6.1\n"
                              "\xe6\x9c\xba\xe5\x99\xa8     6.2\n"
                              "a?[31mb  x y\n");
        free(out);
        table_free(t);
}
END_TEST

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
        /* loopback by the literal only: a name that starts with 127. is anyone's */
        assert_target("127.evil.example:7470", 0, "https://127.evil.example:7470");
        assert_target("[::ffff:127.0.0.1]:7470", 0, "https://[::ffff:127.0.0.1]:7470");
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

static void assert_bytes(uint64_t v, const char *want)
{
        char buf[32];

        ck_assert_str_eq(fmt_bytes(v, buf, sizeof(buf)), want);
}

START_TEST(test_fmt_bytes)
{
        assert_bytes(0, "0 B");
        assert_bytes(1, "1 B");
        assert_bytes(1023, "1023 B");
        assert_bytes(1024, "1 KiB");
        assert_bytes(1536, "1.5 KiB");
        assert_bytes(4194304, "4 MiB");
        assert_bytes(5242880, "5 MiB");
        assert_bytes(67108864, "64 MiB");
        assert_bytes(1572864000, "1.5 GiB");
        assert_bytes(1023ull << 20, "1023 MiB");
        assert_bytes((1024ull << 20) - 1, "1 GiB"); /* rounds up into the next unit */
        assert_bytes(150ull << 30, "150 GiB");
        assert_bytes(99ull * 1024 + 1000, "100 KiB");
        assert_bytes(64ull << 40, "64 TiB");
        assert_bytes(UINT64_MAX, "16 EiB");
}
END_TEST

/* session_parse() on a command line; the config comes from an empty file, no environment. */
static int parse_session(struct session_args *a, const char *const *args)
{
        char *argv[16];
        struct cli cli = { 0 };
        int argc = 0, r;

        argv[argc++] = (char *)"session";
        for (; *args; args++)
                argv[argc++] = (char *)*args;
        argv[argc] = NULL;
        *a = (struct session_args){ 0 };
        r = session_parse(&cli, argc, argv, a);
        cli_free(&cli);
        return r;
}

#define PARSE(a, ...) parse_session(a, (const char *const[]){ __VA_ARGS__, NULL })

START_TEST(test_session_args)
{
        char dir[512], conf[600], opt[640];
        struct session_args a;
        int fd;

        testutil_mkdtemp(dir, sizeof(dir), "cli-session");
        snprintf(conf, sizeof(conf), "%s/empty.conf", dir);
        fd = open(conf, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        close(fd);
        snprintf(opt, sizeof(opt), "--config=%s", conf);
        unsetenv("LUOFLEET_CONTROLLER");
        unsetenv("LUOFLEET_OUTPUT");

        ck_assert_int_eq(PARSE(&a, "list", "127.0.0.1:7470", opt), 0);
        ck_assert_int_eq(a.cmd, SESSION_LIST);
        ck_assert_str_eq(a.host, "127.0.0.1:7470");
        ck_assert_ptr_null(a.name);
        ck_assert(!a.has_owner);
        /* options anywhere, the common ones too */
        ck_assert_int_eq(PARSE(&a, "--owner=1000", "list", opt, "http://h:1", "--output=json"), 0);
        ck_assert_int_eq(a.cmd, SESSION_LIST);
        ck_assert_str_eq(a.host, "http://h:1");
        ck_assert(a.has_owner);
        ck_assert_uint_eq(a.owner, 1000);
        ck_assert_int_eq(PARSE(&a, "show", "127.0.0.1:7470", "vm1", opt), 0);
        ck_assert_int_eq(a.cmd, SESSION_SHOW);
        ck_assert_str_eq(a.host, "127.0.0.1:7470");
        ck_assert_str_eq(a.name, "vm1");
        ck_assert(!a.has_owner);
        ck_assert_int_eq(PARSE(&a, "show", "[::1]:7470", "vm1", "--owner", "0", opt), 0);
        ck_assert(a.has_owner);
        ck_assert_uint_eq(a.owner, 0);
        ck_assert_int_eq(PARSE(&a, "show", "h:1", "vm1", "--owner=4294967294", opt), 0);
        ck_assert_uint_eq(a.owner, 4294967294u);

        /* usage errors: exit 2 */
        ck_assert_int_eq(PARSE(&a, opt), EXIT_USAGE);                          /* no subcommand */
        ck_assert_int_eq(PARSE(&a, "lst", "h:1", opt), EXIT_USAGE);            /* unknown */
        ck_assert_int_eq(PARSE(&a, "list", opt), EXIT_USAGE);                  /* no HOST */
        ck_assert_int_eq(PARSE(&a, "list", "h:1", "h:2", opt), EXIT_USAGE);    /* two */
        ck_assert_int_eq(PARSE(&a, "show", "h:1", opt), EXIT_USAGE);           /* no NAME */
        ck_assert_int_eq(PARSE(&a, "show", "h:1", "a", "b", opt), EXIT_USAGE); /* two */
        ck_assert_int_eq(PARSE(&a, "show", "h:1", "", opt), EXIT_USAGE);
        ck_assert_int_eq(PARSE(&a, "list", "h:0", opt), EXIT_USAGE);  /* malformed HOST */
        ck_assert_int_eq(PARSE(&a, "list", "web1", opt), EXIT_USAGE); /* a name, no controller */
        ck_assert_int_eq(PARSE(&a, "list", "h:1", "--owner=-1", opt), EXIT_USAGE);
        ck_assert_int_eq(PARSE(&a, "list", "h:1", "--owner=4294967295", opt), EXIT_USAGE);
        ck_assert_int_eq(PARSE(&a, "list", "h:1", "--owner=1k", opt), EXIT_USAGE);
        ck_assert_int_eq(PARSE(&a, "list", "h:1", "--owner=", opt), EXIT_USAGE);
        ck_assert_int_eq(PARSE(&a, "list", "h:1", "--force", opt), EXIT_USAGE);
        ck_assert_int_eq(PARSE(&a, "list", "h:1", "--owner"), EXIT_USAGE); /* no value */
        /* --help: -1, nothing else looked at */
        ck_assert_int_eq(PARSE(&a, "--help"), -1);
        ck_assert_int_eq(PARSE(&a, "show", "--help"), -1);
        testutil_rm_rf(dir);
}
END_TEST

START_TEST(test_session_find)
{
        json_t *doc = json_loads("{\"sessions\": [{\"name\": \"vm1\", \"owner_uid\": 1000},"
                                 "{\"name\": \"vm2\", \"owner_uid\": 1000},"
                                 "{\"name\": \"vm1\", \"owner_uid\": 1001}], \"workloads\": []}",
                                 0, NULL);
        const json_t *s;

        ck_assert_ptr_nonnull(doc);
        ck_assert_uint_eq(session_find(doc, "vm1", false, 0, &s), 2);
        ck_assert_ptr_eq(s, json_array_get(json_object_get(doc, "sessions"), 0));
        ck_assert_uint_eq(session_find(doc, "vm1", true, 1001, &s), 1);
        ck_assert_ptr_eq(s, json_array_get(json_object_get(doc, "sessions"), 2));
        ck_assert_uint_eq(session_find(doc, "vm2", false, 0, &s), 1);
        ck_assert_uint_eq(session_find(doc, "vm2", true, 1001, &s), 0);
        ck_assert_ptr_null(s);
        ck_assert_uint_eq(session_find(doc, "VM1", false, 0, &s), 0); /* names are exact */
        ck_assert_uint_eq(session_find(doc, "vm", false, 0, &s), 0);
        json_decref(doc);
        /* no broker: sessions [] */
        doc = json_loads("{\"sessions\": [], \"summary\": null}", 0, NULL);
        ck_assert_uint_eq(session_find(doc, "vm1", false, 0, &s), 0);
        json_decref(doc);
}
END_TEST

START_TEST(test_session_record_detail)
{
        json_t *rec = json_loads("{\"kind\": \"session\", \"event\": \"preserved\", "
                                 "\"broker\": {\"id\": \"b\", \"seq\": 3}, \"session\": "
                                 "\"vm1\", \"owner_uid\": 1000, \"workload\": \"vm-42\", "
                                 "\"pid\": 42, \"token\": 1, \"bytes\": 67108864}",
                                 0, NULL);
        char buf[256];

        session_record_detail(rec, buf, sizeof(buf));
        ck_assert_str_eq(buf, "preserved vm1 uid=1000 workload=vm-42 token=1 64 MiB");
        json_decref(rec);
        rec = json_loads("{\"event\": \"prepare-refused\", \"errno\": \"ETIMEDOUT\", "
                         "\"detail\": \"workloads did not confirm within 30000 ms: vm-1\"}",
                         0, NULL);
        session_record_detail(rec, buf, sizeof(buf));
        ck_assert_str_eq(
                buf, "prepare-refused ETIMEDOUT: workloads did not confirm within 30000 ms: vm-1");
        /* a short buffer is cut, still terminated */
        session_record_detail(rec, buf, 20);
        ck_assert_str_eq(buf, "prepare-refused ETI");
        json_decref(rec);
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
        tcase_add_test(tc, test_fmt_bytes);
        tcase_add_test(tc, test_session_args);
        tcase_add_test(tc, test_session_find);
        tcase_add_test(tc, test_session_record_detail);
        tcase_add_test(tc, test_table_utf8_and_controls);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(cli_suite)
