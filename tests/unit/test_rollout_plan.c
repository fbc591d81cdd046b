/*
 * test_rollout_plan.c: RolloutSpec validation and defaulting, Count and
 * Duration parsing, selectors, resolved limits and wave cutting of
 * rollout/plan.c, with exact documents, problem codes and fields; plus a
 * hostile-input sweep that must never crash or leak. Single-threaded.
 */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plan.h"
#include "testutil.h"

#define SHA "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define TARGET "{\"kernel\": {\"url\": \"https://example.org/vmlinuz\", \"sha256\": \"" SHA "\"}}"

static json_t *J(const char *text)
{
        json_error_t e;
        json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);

        ck_assert_msg(v != NULL, "bad test JSON (%s): %s", e.text, text);
        return v;
}

static void assert_json_eq(const json_t *got, const char *want_text)
{
        json_t *want = J(want_text);
        char *g = json_dumps(got, JSON_SORT_KEYS | JSON_COMPACT | JSON_ENCODE_ANY);

        ck_assert_msg(json_equal(got, want), "got %s", g ? g : "(null)");
        free(g);
        json_decref(want);
}

/* Normalise a spec given as JSON text; returns the output (or NULL and p). */
static json_t *norm(const char *text, struct ctl_problem *p)
{
        json_t *in = J(text), *out = NULL;
        int r = rollout_spec_normalize(in, &out, p);

        json_decref(in);
        ck_assert_int_eq(r == 0, out != NULL);
        return out;
}

static void expect_problem(const char *text, int status, const char *code, const char *field)
{
        struct ctl_problem p = { 0 };
        json_t *out = norm(text, &p);

        ck_assert_msg(out == NULL, "accepted: %s", text);
        ck_assert_int_eq(p.status, status);
        ck_assert_str_eq(p.code, code);
        ck_assert_msg(strcmp(p.field, field) == 0, "%s: field %s, want %s", text, p.field, field);
        ck_assert_str_ne(p.detail, "");
}

START_TEST(test_normalize_defaults)
{
        struct ctl_problem p = { 0 };
        json_t *out = norm("{\"target\": " TARGET ", \"dry_run\": true}", &p);

        ck_assert_ptr_nonnull(out);
        assert_json_eq(out, "{\"target\": " TARGET ", \"selector\": {},"
                            " \"strategy\": {\"mode\": \"rolling\", \"canary\": 1,"
                            "   \"batch\": \"10%\", \"max_unavailable\": 1, \"max_failures\": 0,"
                            "   \"soak_ms\": 0},"
                            " \"timeouts\": {\"stage_ms\": 600000, \"prepare_ms\": 120000,"
                            "   \"reboot_ms\": 600000, \"finish_ms\": 120000},"
                            " \"lease_seconds\": 0, \"windows\": [], \"auto_rollback\": false}");
        json_decref(out);
}
END_TEST

START_TEST(test_normalize_force)
{
        struct ctl_problem p = { 0 };
        json_t *out = norm("{\"target\": " TARGET ", \"force\": true}", &p);

        ck_assert_ptr_nonnull(out);
        ck_assert(json_is_true(json_object_get(out, "force")));
        json_decref(out);
        /* false is the default, and not kept: specs stored before "force" stay equal. */
        out = norm("{\"target\": " TARGET ", \"force\": false}", &p);
        ck_assert_ptr_nonnull(out);
        ck_assert_ptr_null(json_object_get(out, "force"));
        json_decref(out);
        expect_problem("{\"target\": " TARGET ", \"force\": 1}", 400, "invalid-field", "force");
}
END_TEST

START_TEST(test_normalize_full)
{
        struct ctl_problem p = { 0 };
        json_t *out = norm(
                "{\"id\": \"r-2026.11_a\", \"target\": {\"kernel\": {\"path\": \"/boot/k\","
                " \"sha256\": \"" SHA "\"}, \"initrd\": {\"url\": \"file:///i\", \"sha256\": \"" SHA
                "\"}, \"cmdline\": \"quiet\", \"signature\": {\"key_id\": \"k1\", \"ed25519\": "
                "\"x\"},"
                " \"release\": \"6.12.1\"},"
                " \"selector\": {\"zone\": \"a\", \"k8s.io/role\": \"db\"},"
                " \"hosts\": [\"h1\", \"h-2.example\"],"
                " \"strategy\": {\"mode\": \"two-phase\", \"canary\": \"0%\", \"batch\": \"100%\","
                "   \"max_unavailable\": 3, \"max_failures\": \"5%\", \"soak\": \"1h30m\"},"
                " \"timeouts\": {\"stage\": 45, \"prepare\": \"1s\", \"reboot\": \"24h\","
                "   \"finish\": \"1m30s500ms\"},"
                " \"lease_seconds\": 86400, \"auto_rollback\": true, \"dry_run\": false,"
                " \"windows\": [{\"start\": \"01:00\", \"end\": \"02:00\"}]}",
                &p);

        ck_assert_msg(out != NULL, "%s: %s", p.field, p.detail);
        assert_json_eq(
                out,
                "{\"id\": \"r-2026.11_a\", \"target\": {\"kernel\": {\"path\": \"/boot/k\","
                " \"sha256\": \"" SHA "\"}, \"initrd\": {\"url\": \"file:///i\", \"sha256\": \"" SHA
                "\"}, \"cmdline\": \"quiet\", \"signature\": {\"key_id\": \"k1\", \"ed25519\": "
                "\"x\"},"
                " \"release\": \"6.12.1\"},"
                " \"selector\": {\"zone\": \"a\", \"k8s.io/role\": \"db\"},"
                " \"hosts\": [\"h1\", \"h-2.example\"],"
                " \"strategy\": {\"mode\": \"two-phase\", \"canary\": \"0%\", \"batch\": \"100%\","
                "   \"max_unavailable\": 3, \"max_failures\": \"5%\", \"soak_ms\": 5400000},"
                " \"timeouts\": {\"stage_ms\": 45000, \"prepare_ms\": 1000,"
                "   \"reboot_ms\": 86400000, \"finish_ms\": 90500},"
                " \"lease_seconds\": 86400, \"auto_rollback\": true,"
                " \"windows\": [{\"days\": "
                "[\"mon\",\"tue\",\"wed\",\"thu\",\"fri\",\"sat\",\"sun\"],"
                "   \"start\": \"01:00\", \"end\": \"02:00\", \"time_zone\": \"UTC\"}]}");

        /* What GET answers can be posted again: normalising it changes nothing. */
        json_t *again = NULL;
        ck_assert_int_eq(rollout_spec_normalize(out, &again, &p), 0);
        ck_assert(json_equal(again, out));
        json_decref(again);
        json_decref(out);
}
END_TEST

START_TEST(test_normalize_ms_forms)
{
        struct ctl_problem p = { 0 };
        json_t *out = norm("{\"target\": " TARGET ", \"strategy\": {\"soak_ms\": 1500},"
                           " \"timeouts\": {\"reboot_ms\": 5000, \"stage\": \"2s\"}}",
                           &p);

        ck_assert_msg(out != NULL, "%s: %s", p.field, p.detail);
        ck_assert_int_eq(
                json_integer_value(json_object_get(json_object_get(out, "strategy"), "soak_ms")),
                1500);
        ck_assert_int_eq(
                json_integer_value(json_object_get(json_object_get(out, "timeouts"), "reboot_ms")),
                5000);
        ck_assert_int_eq(
                json_integer_value(json_object_get(json_object_get(out, "timeouts"), "stage_ms")),
                2000);
        json_decref(out);
        expect_problem("{\"target\": " TARGET ", \"strategy\": {\"soak\": 1, \"soak_ms\": 1}}", 400,
                       "invalid-field", "strategy.soak_ms");
        expect_problem("{\"target\": " TARGET ", \"strategy\": {\"soak_ms\": \"1s\"}}", 400,
                       "invalid-field", "strategy.soak_ms");
        expect_problem("{\"target\": " TARGET ", \"timeouts\": {\"finish_ms\": 999}}", 400,
                       "invalid-field", "timeouts.finish_ms");
        expect_problem("{\"target\": " TARGET ", \"timeouts\": {\"finish_s\": 9}}", 400,
                       "invalid-field", "timeouts.finish_s");
}
END_TEST

START_TEST(test_normalize_invalid)
{
        static const struct {
                const char *spec; /* the members after "target" (or the whole when no '{') */
                int status;
                const char *code, *field;
        } cases[] = {
                { "[]", 400, "invalid-field", "" },
                { "null", 400, "invalid-field", "" },
                { "{}", 400, "missing-field", "target" },
                { "{\"target\": 1}", 400, "invalid-field", "target" },
                { "{\"target\": {}}", 400, "missing-field", "target.kernel" },
                { "{\"target\": {\"cmdline\": \"x\"}}", 400, "missing-field", "target.kernel" },
                { "{\"target\": {\"kernel\": \"x\"}}", 400, "invalid-field", "target.kernel" },
                { "{\"target\": {\"kernel\": {\"sha256\": \"" SHA "\"}}}", 400, "invalid-field",
                  "target.kernel" },
                { "{\"target\": {\"kernel\": {\"url\": \"u\", \"path\": \"/p\", \"sha256\": \"" SHA
                  "\"}}}",
                  400, "invalid-field", "target.kernel" },
                { "{\"target\": {\"kernel\": {\"url\": \"u\"}}}", 400, "missing-field",
                  "target.kernel.sha256" },
                { "{\"target\": {\"kernel\": {\"url\": \"\", \"sha256\": \"" SHA "\"}}}", 400,
                  "invalid-field", "target.kernel.url" },
                { "{\"target\": {\"kernel\": {\"url\": \"u\", \"sha256\": \"" SHA "0\"}}}", 400,
                  "invalid-field", "target.kernel.sha256" },
                { "{\"target\": {\"kernel\": {\"url\": \"u\", \"sha256\": "
                  "\"0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef\"}}}",
                  400, "invalid-field", "target.kernel.sha256" },
                { "{\"target\": {\"kernel\": {\"url\": \"u\", \"sha256\": \"" SHA "\", \"x\": 1}}}",
                  400, "invalid-field", "target.kernel.x" },
                { "{\"target\": {\"kernel\": {\"url\": \"u\", \"sha256\": \"" SHA
                  "\"}, \"operation_id\": \"x\"}}",
                  400, "invalid-field", "target.operation_id" },
                { "{\"target\": {\"kernel\": {\"url\": \"u\", \"sha256\": \"" SHA
                  "\"}, \"initrd\": []}}",
                  400, "invalid-field", "target.initrd" },
                { "{\"target\": {\"kernel\": {\"url\": \"u\", \"sha256\": \"" SHA
                  "\"}, \"signature\": \"sig\"}}",
                  400, "invalid-field", "target.signature" },
                { "{\"target\": {\"kernel\": {\"url\": \"u\", \"sha256\": \"" SHA
                  "\"}, \"cmdline\": 5}}",
                  400, "invalid-field", "target.cmdline" },
                { "{\"target\": {\"kernel\": {\"url\": \"u\", \"sha256\": \"" SHA
                  "\"}, \"release\": \"\"}}",
                  400, "invalid-field", "target.release" },
                { "\"bogus\": 1", 400, "invalid-field", "bogus" },
                { "\"id\": \"\"", 400, "invalid-field", "id" },
                { "\"id\": \"a b\"", 400, "invalid-field", "id" },
                { "\"id\": \"a\\u0000b\"", 400, "invalid-field", "id" },
                { "\"id\": 5", 400, "invalid-field", "id" },
                { "\"id\": \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"",
                  400, "invalid-field", "id" },
                { "\"selector\": []", 400, "invalid-field", "selector" },
                { "\"selector\": {\"zone\": 1}", 400, "invalid-field", "selector.zone" },
                { "\"selector\": {\"a b\": \"x\"}", 400, "invalid-field", "selector" },
                { "\"selector\": {\"\": \"x\"}", 400, "invalid-field", "selector" },
                { "\"hosts\": \"h1\"", 400, "invalid-field", "hosts" },
                { "\"hosts\": [\"h1\", \"h1\"]", 400, "invalid-field", "hosts[1]" },
                { "\"hosts\": [\"h1\", \"\"]", 400, "invalid-field", "hosts[1]" },
                { "\"hosts\": [\"h1\", 2]", 400, "invalid-field", "hosts[1]" },
                { "\"hosts\": [\"h/1\"]", 400, "invalid-field", "hosts[0]" },
                { "\"strategy\": 1", 400, "invalid-field", "strategy" },
                { "\"strategy\": {\"mode\": \"fast\"}", 400, "invalid-field", "strategy.mode" },
                { "\"strategy\": {\"speed\": 1}", 400, "invalid-field", "strategy.speed" },
                { "\"strategy\": {\"batch\": 0}", 400, "invalid-field", "strategy.batch" },
                { "\"strategy\": {\"batch\": \"0%\"}", 400, "invalid-field", "strategy.batch" },
                { "\"strategy\": {\"batch\": \"101%\"}", 400, "invalid-field", "strategy.batch" },
                { "\"strategy\": {\"batch\": \"5\"}", 400, "invalid-field", "strategy.batch" },
                { "\"strategy\": {\"batch\": 1.5}", 400, "invalid-field", "strategy.batch" },
                { "\"strategy\": {\"batch\": 1000001}", 400, "invalid-field", "strategy.batch" },
                { "\"strategy\": {\"canary\": -1}", 400, "invalid-field", "strategy.canary" },
                { "\"strategy\": {\"canary\": \"-1%\"}", 400, "invalid-field", "strategy.canary" },
                { "\"strategy\": {\"max_unavailable\": 0}", 400, "invalid-field",
                  "strategy.max_unavailable" },
                { "\"strategy\": {\"max_failures\": \"x%\"}", 400, "invalid-field",
                  "strategy.max_failures" },
                { "\"strategy\": {\"soak\": \"25h\"}", 400, "invalid-field", "strategy.soak" },
                { "\"strategy\": {\"soak\": -1}", 400, "invalid-field", "strategy.soak" },
                { "\"strategy\": {\"soak\": \"1d\"}", 400, "invalid-field", "strategy.soak" },
                { "\"timeouts\": []", 400, "invalid-field", "timeouts" },
                { "\"timeouts\": {\"stage\": 0}", 400, "invalid-field", "timeouts.stage" },
                { "\"timeouts\": {\"prepare\": \"999ms\"}", 400, "invalid-field",
                  "timeouts.prepare" },
                { "\"timeouts\": {\"reboot\": 86401}", 400, "invalid-field", "timeouts.reboot" },
                { "\"timeouts\": {\"finish\": true}", 400, "invalid-field", "timeouts.finish" },
                { "\"timeouts\": {\"verify\": 5}", 400, "invalid-field", "timeouts.verify" },
                { "\"lease_seconds\": -1", 400, "invalid-field", "lease_seconds" },
                { "\"lease_seconds\": 86401", 400, "invalid-field", "lease_seconds" },
                { "\"lease_seconds\": \"5\"", 400, "invalid-field", "lease_seconds" },
                { "\"auto_rollback\": 1", 400, "invalid-field", "auto_rollback" },
                { "\"dry_run\": \"yes\"", 400, "invalid-field", "dry_run" },
                { "\"windows\": {}", 400, "invalid-field", "windows" },
                { "\"windows\": [{\"start\": \"01:00\", \"end\": \"25:00\"}]", 400, "invalid-field",
                  "windows[0].end" },
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                char text[1024];
                if (cases[i].spec[0] == '{' || cases[i].spec[0] == '[' || cases[i].spec[0] == 'n')
                        snprintf(text, sizeof(text), "%s", cases[i].spec);
                else
                        snprintf(text, sizeof(text), "{\"target\": " TARGET ", %s}", cases[i].spec);
                expect_problem(text, cases[i].status, cases[i].code, cases[i].field);
        }
}
END_TEST

START_TEST(test_duration)
{
        static const struct {
                const char *json;
                int64_t ms;
        } ok[] = {
                { "\"250ms\"", 250 },
                { "\"30s\"", 30000 },
                { "\"5m\"", 300000 },
                { "\"2h\"", 7200000 },
                { "\"1h30m\"", 5400000 },
                { "\"0s\"", 0 },
                { "45", 45000 },
                { "0", 0 },
                { "\"1m30s\"", 90000 },
                { "\"1h1ms\"", 3600001 },
                { "\"2h0m5s\"", 7205000 },
                /* one grammar with the agent and the CLI: a bare number is seconds */
                { "\"5\"", 5000 },
        };
        static const char *const bad[] = {
                "\"\"",
                "\"ms\"",
                "\"1m1h\"",
                "\"1h1h\"",
                "\"5 s\"",
                "\"-5s\"",
                "\"5d\"",
                "\"5S\"",
                "\"1s1m\"",
                "\"5ms5s\"",
                "\"5s \"",
                "-1",
                "1.5",
                "1e308",
                "null",
                "true",
                "[]",
                "{}",
                "\"5s\\u0000\"",
                "\"9999999999999h\"",
                "9223372036854775807",
                "\"99999999999999999999s\"",
        };
        int64_t ms;

        for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
                json_t *v = J(ok[i].json);
                ms = -1;
                ck_assert_msg(rollout_duration_parse(v, &ms) == 0, "%s", ok[i].json);
                ck_assert_int_eq(ms, ok[i].ms);
                json_decref(v);
        }
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                json_t *v = J(bad[i]);
                ms = -7;
                ck_assert_msg(rollout_duration_parse(v, &ms) == -EINVAL, "%s", bad[i]);
                ck_assert_int_eq(ms, -7);
                json_decref(v);
        }
        ck_assert_int_eq(rollout_duration_parse(NULL, &ms), -EINVAL);
        /* the largest that fits is fine */
        json_t *v = J("\"99999999999h\"");
        ck_assert_int_eq(rollout_duration_parse(v, &ms), 0);
        ck_assert_int_eq(ms, INT64_C(99999999999) * 3600000);
        json_decref(v);
}
END_TEST

START_TEST(test_count)
{
        static const struct {
                const char *json;
                unsigned total, want;
        } ok[] = {
                { "\"10%\"", 25, 3 },
                { "\"10%\"", 30, 3 },
                { "\"10%\"", 31, 4 },
                { "\"1%\"", 5, 1 },
                { "\"0%\"", 50, 0 },
                { "\"100%\"", 7, 7 },
                { "\"50%\"", 1, 1 },
                { "\"50%\"", 0, 0 },
                { "5", 3, 5 },
                { "0", 3, 0 },
                { "1000000", 1, 1000000 },
                { "\"05%\"", 100, 5 },
                { "\"100%\"", 4000000000u, 4000000000u },
        };
        static const char *const bad[] = {
                "\"101%\"", "\"5\"",    "\"%\"",          "\"-1%\"", "\"1.5%\"", "\"10%%\"",
                "\"10% \"", "\" 10%\"", "\"1000%\"",      "-1",      "1000001",  "1.0",
                "null",     "[]",       "\"10%\\u0000\"", "true",    "\"\"",
        };
        unsigned n;

        for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
                json_t *v = J(ok[i].json);
                ck_assert_msg(rollout_count_resolve(v, ok[i].total, &n) == 0, "%s", ok[i].json);
                ck_assert_uint_eq(n, ok[i].want);
                json_decref(v);
        }
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                json_t *v = J(bad[i]);
                ck_assert_msg(rollout_count_resolve(v, 10, &n) == -EINVAL, "%s", bad[i]);
                json_decref(v);
        }
}
END_TEST

START_TEST(test_selector)
{
        json_t *labels = J("{\"zone\": \"a\", \"rack\": \"r1\"}");
        json_t *s1 = J("{\"zone\": \"a\"}"), *s2 = J("{\"zone\": \"a\", \"rack\": \"r2\"}");
        json_t *s3 = J("{}"), *s4 = J("{\"gpu\": \"yes\"}");

        ck_assert(rollout_selector_match(NULL, labels));
        ck_assert(rollout_selector_match(s3, labels));
        ck_assert(rollout_selector_match(s3, NULL));
        ck_assert(rollout_selector_match(s1, labels));
        ck_assert(!rollout_selector_match(s2, labels));
        ck_assert(!rollout_selector_match(s4, labels));
        ck_assert(!rollout_selector_match(s1, NULL));
        json_decref(labels);
        json_decref(s1);
        json_decref(s2);
        json_decref(s3);
        json_decref(s4);
}
END_TEST

/* Six hosts over zones a (h1, h3, h6), b (h2, h5), c (h4): interleaved order
 * h1 h2 h4 h3 h5 h6; r7 has no zone and another rack. */
#define INVENTORY                                                                                  \
        "[{\"name\": \"h6\", \"labels\": {\"zone\": \"a\", \"rack\": \"r1\"}},"                    \
        " {\"name\": \"h5\", \"labels\": {\"zone\": \"b\", \"rack\": \"r1\"}},"                    \
        " {\"name\": \"h4\", \"labels\": {\"zone\": \"c\", \"rack\": \"r1\"}},"                    \
        " {\"name\": \"h3\", \"labels\": {\"zone\": \"a\", \"rack\": \"r1\"}},"                    \
        " {\"name\": \"h2\", \"labels\": {\"zone\": \"b\", \"rack\": \"r1\"}, \"url\": \"x\"},"    \
        " {\"name\": \"h1\", \"labels\": {\"zone\": \"a\", \"rack\": \"r1\"}},"                    \
        " {\"name\": \"h1\", \"labels\": {\"zone\": \"z\", \"rack\": \"r1\"}},"                    \
        " {\"labels\": {}}, 7,"                                                                    \
        " {\"name\": \"r7\", \"labels\": {\"rack\": \"r2\"}}]"

/* Plan for the spec members given (after target), against INVENTORY. */
static json_t *plan_for(const char *members, struct ctl_problem *p)
{
        char text[2048];
        json_t *spec, *inv = J(INVENTORY), *plan = NULL;

        snprintf(text, sizeof(text), "{\"target\": " TARGET "%s%s}", *members ? ", " : "", members);
        spec = norm(text, p);
        ck_assert_msg(spec != NULL, "%s: %s", p->field, p->detail);
        int r = rollout_plan(spec, inv, &plan, p);
        ck_assert_int_eq(r == 0, plan != NULL);
        json_decref(spec);
        json_decref(inv);
        return plan;
}

START_TEST(test_plan_zones)
{
        struct ctl_problem p = { 0 };
        json_t *plan = plan_for("\"selector\": {\"rack\": \"r1\"},"
                                " \"strategy\": {\"batch\": 2, \"soak\": \"30s\"}",
                                &p);

        /* rolling, max_unavailable 1: rounds 1+2+2+1 = 6 * 24 s + 3 soaks of 30 s */
        assert_json_eq(plan, "{\"hosts\": 6, \"skipped\": [], \"expected_duration_s\": 234,"
                             " \"waves\": [{\"index\": 0, \"canary\": true, \"hosts\": [\"h1\"]},"
                             "  {\"index\": 1, \"canary\": false, \"hosts\": [\"h2\", \"h4\"]},"
                             "  {\"index\": 2, \"canary\": false, \"hosts\": [\"h3\", \"h5\"]},"
                             "  {\"index\": 3, \"canary\": false, \"hosts\": [\"h6\"]}]}");
        json_decref(plan);

        /* defaults over all 7: canary 1, batch 10% = 1; the zone-less r7 comes first */
        plan = plan_for("", &p);
        assert_json_eq(plan, "{\"hosts\": 7, \"skipped\": [], \"expected_duration_s\": 168,"
                             " \"waves\": [{\"index\": 0, \"canary\": true, \"hosts\": [\"r7\"]},"
                             "  {\"index\": 1, \"canary\": false, \"hosts\": [\"h1\"]},"
                             "  {\"index\": 2, \"canary\": false, \"hosts\": [\"h2\"]},"
                             "  {\"index\": 3, \"canary\": false, \"hosts\": [\"h4\"]},"
                             "  {\"index\": 4, \"canary\": false, \"hosts\": [\"h3\"]},"
                             "  {\"index\": 5, \"canary\": false, \"hosts\": [\"h5\"]},"
                             "  {\"index\": 6, \"canary\": false, \"hosts\": [\"h6\"]}]}");
        json_decref(plan);
}
END_TEST

START_TEST(test_plan_canary0_full_batch)
{
        struct ctl_problem p = { 0 };
        json_t *plan = plan_for("\"selector\": {\"zone\": \"a\"},"
                                " \"strategy\": {\"canary\": 0, \"batch\": \"100%\","
                                "   \"max_unavailable\": 2, \"soak\": \"1h\"}",
                                &p);

        /* one wave of 3, rolling with 2 at a time: 2 rounds; no soak after the last */
        assert_json_eq(plan, "{\"hosts\": 3, \"skipped\": [], \"expected_duration_s\": 48,"
                             " \"waves\": [{\"index\": 0, \"canary\": false,"
                             "   \"hosts\": [\"h1\", \"h3\", \"h6\"]}]}");
        json_decref(plan);

        /* canary larger than the fleet: every host is a canary */
        plan = plan_for("\"selector\": {\"zone\": \"b\"}, \"strategy\": {\"canary\": 5}", &p);
        assert_json_eq(plan, "{\"hosts\": 2, \"skipped\": [], \"expected_duration_s\": 48,"
                             " \"waves\": [{\"index\": 0, \"canary\": true,"
                             "   \"hosts\": [\"h2\", \"h5\"]}]}");
        json_decref(plan);
}
END_TEST

START_TEST(test_plan_two_phase)
{
        struct ctl_problem p = { 0 };
        json_t *plan = plan_for("\"selector\": {\"rack\": \"r1\"},"
                                " \"strategy\": {\"mode\": \"two-phase\", \"canary\": 3,"
                                "   \"batch\": \"50%\", \"max_unavailable\": 2,"
                                "   \"soak\": \"500ms\"}",
                                &p);

        /* canaries (3) and batches (50% = 3) cut to max_unavailable 2; each wave
         * is one round: 4 * 24 s + 3 * 0.5 s */
        assert_json_eq(plan,
                       "{\"hosts\": 6, \"skipped\": [], \"expected_duration_s\": 97.5,"
                       " \"waves\": [{\"index\": 0, \"canary\": true, \"hosts\": [\"h1\", \"h2\"]},"
                       "  {\"index\": 1, \"canary\": true, \"hosts\": [\"h4\"]},"
                       "  {\"index\": 2, \"canary\": false, \"hosts\": [\"h3\", \"h5\"]},"
                       "  {\"index\": 3, \"canary\": false, \"hosts\": [\"h6\"]}]}");
        json_decref(plan);

        /* rolling with the same numbers keeps the waves whole */
        plan = plan_for(
                "\"selector\": {\"rack\": \"r1\"},"
                " \"strategy\": {\"canary\": 3, \"batch\": \"50%\", \"max_unavailable\": 2}",
                &p);
        assert_json_eq(
                plan, "{\"hosts\": 6, \"skipped\": [], \"expected_duration_s\": 96,"
                      " \"waves\": [{\"index\": 0, \"canary\": true,"
                      "   \"hosts\": [\"h1\", \"h2\", \"h4\"]},"
                      "  {\"index\": 1, \"canary\": false, \"hosts\": [\"h3\", \"h5\", \"h6\"]}]}");
        json_decref(plan);
}
END_TEST

START_TEST(test_plan_unknown_hosts)
{
        struct ctl_problem p = { 0 };
        json_t *plan = plan_for("\"hosts\": [\"zz\", \"h5\", \"h2\", \"r7\", \"yy\"],"
                                " \"selector\": {\"rack\": \"r1\"}, \"strategy\": {\"canary\": 0,"
                                " \"batch\": 1}",
                                &p);

        /* r7 is known but not selected: just left out */
        assert_json_eq(plan, "{\"hosts\": 2, \"expected_duration_s\": 48,"
                             " \"skipped\": [{\"host\": \"zz\", \"reason\": \"unknown-host\"},"
                             "   {\"host\": \"yy\", \"reason\": \"unknown-host\"}],"
                             " \"waves\": [{\"index\": 0, \"canary\": false, \"hosts\": [\"h2\"]},"
                             "  {\"index\": 1, \"canary\": false, \"hosts\": [\"h5\"]}]}");
        json_decref(plan);
}
END_TEST

START_TEST(test_plan_no_hosts)
{
        struct ctl_problem p = { 0 };

        ck_assert_ptr_null(plan_for("\"selector\": {\"zone\": \"mars\"}", &p));
        ck_assert_int_eq(p.status, 422);
        ck_assert_str_eq(p.code, "no-hosts");
        ck_assert_str_ne(p.detail, "");

        memset(&p, 0, sizeof(p));
        ck_assert_ptr_null(plan_for("\"hosts\": [\"nope\"]", &p));
        ck_assert_int_eq(p.status, 422);
        ck_assert_str_eq(p.code, "no-hosts");

        /* an empty inventory, and a NULL one */
        json_t *spec = norm("{\"target\": " TARGET "}", &p), *inv = J("[]"), *plan = NULL;
        memset(&p, 0, sizeof(p));
        ck_assert_int_eq(rollout_plan(spec, inv, &plan, &p), -1);
        ck_assert_str_eq(p.code, "no-hosts");
        ck_assert_int_eq(rollout_plan(spec, NULL, &plan, &p), -1);
        ck_assert_str_eq(p.code, "no-hosts");
        ck_assert_ptr_null(plan);
        json_decref(spec);
        json_decref(inv);
}
END_TEST

START_TEST(test_plan_large)
{
        struct ctl_problem p = { 0 };
        json_t *inv = json_array(), *plan = NULL;
        json_t *spec = norm("{\"target\": " TARGET ", \"strategy\": {\"canary\": \"1%\"}}", &p);

        /* 20000 hosts over 4 zones by i % 4: interleaving gives back name order */
        for (int i = 19999; i >= 0; i--) {
                char name[16], zone[8];
                snprintf(name, sizeof(name), "h%05d", i);
                snprintf(zone, sizeof(zone), "z%d", i % 4);
                json_array_append_new(
                        inv, json_pack("{s:s,s:{s:s}}", "name", name, "labels", "zone", zone));
        }
        ck_assert_int_eq(rollout_plan(spec, inv, &plan, &p), 0);
        json_t *waves = json_object_get(plan, "waves");
        ck_assert_int_eq(json_integer_value(json_object_get(plan, "hosts")), 20000);
        /* 200 canaries, then 19800 in batches of 2000: 10 waves, the last of 1800 */
        ck_assert_uint_eq(json_array_size(waves), 11);
        ck_assert_uint_eq(json_array_size(json_object_get(json_array_get(waves, 0), "hosts")), 200);
        ck_assert_uint_eq(json_array_size(json_object_get(json_array_get(waves, 1), "hosts")),
                          2000);
        ck_assert_uint_eq(json_array_size(json_object_get(json_array_get(waves, 10), "hosts")),
                          1800);
        ck_assert_str_eq(json_string_value(json_array_get(
                                 json_object_get(json_array_get(waves, 1), "hosts"), 0)),
                         "h00200");
        ck_assert_str_eq(json_string_value(json_array_get(
                                 json_object_get(json_array_get(waves, 10), "hosts"), 1799)),
                         "h19999");
        /* one host at a time: 20000 rounds of 24 s */
        ck_assert_int_eq(json_integer_value(json_object_get(plan, "expected_duration_s")), 480000);
        json_decref(plan);
        json_decref(inv);
        json_decref(spec);
}
END_TEST

START_TEST(test_limits)
{
        struct ctl_problem p = { 0 };
        struct rollout_limits l;
        json_t *spec = norm("{\"target\": " TARGET ", \"strategy\": {\"mode\": \"two-phase\","
                            " \"canary\": \"10%\", \"batch\": \"25%\", \"max_unavailable\": \"5%\","
                            " \"max_failures\": 3, \"soak\": \"2m\"}, \"timeouts\": {\"stage\": 7},"
                            " \"lease_seconds\": 600, \"auto_rollback\": true}",
                            &p);

        ck_assert_int_eq(rollout_limits_get(spec, 50, &l), 0);
        ck_assert_int_eq(l.mode, ROLLOUT_TWO_PHASE);
        ck_assert_uint_eq(l.canary, 5);
        ck_assert_uint_eq(l.batch, 13);
        ck_assert_uint_eq(l.max_unavailable, 3);
        ck_assert_uint_eq(l.max_failures, 3);
        ck_assert_int_eq(l.soak_ms, 120000);
        ck_assert_int_eq(l.stage_ms, 7000);
        ck_assert_int_eq(l.prepare_ms, 120000);
        ck_assert_int_eq(l.reboot_ms, 600000);
        ck_assert_int_eq(l.finish_ms, 120000);
        ck_assert_uint_eq(l.lease_seconds, 600);
        ck_assert(l.auto_rollback);
        /* of nobody, batch and max_unavailable still resolve to 1 */
        ck_assert_int_eq(rollout_limits_get(spec, 0, &l), 0);
        ck_assert_uint_eq(l.canary, 0);
        ck_assert_uint_eq(l.batch, 1);
        ck_assert_uint_eq(l.max_unavailable, 1);
        json_decref(spec);

        json_t *raw = J("{\"strategy\": {\"mode\": \"rolling\"}}");
        ck_assert_int_eq(rollout_limits_get(raw, 5, &l), -EINVAL);
        ck_assert_int_eq(rollout_limits_get(NULL, 5, &l), -EINVAL);
        json_decref(raw);
}
END_TEST

/* Odd values put at every place of a spec: never a crash, never a leak,
 * always 0 or -1 with a 400 problem. */
START_TEST(test_hostile)
{
        static const char *const odd[] = {
                "null",
                "true",
                "false",
                "0",
                "-1",
                "1e308",
                "-1e308",
                "1.5",
                "9223372036854775807",
                "-9223372036854775808",
                "\"\"",
                "\"%\"",
                "\"100%\"",
                "\"1h\"",
                "[]",
                "{}",
                "[[[[[]]]]]",
                "{\"a\": {\"b\": {}}}",
                "\"\\u0000\"",
                "\"a\\u0000b\"",
                "\"\\u00ff\\u2603\"",
                "[null, 1, \"x\"]",
                "{\"\": 1}",
        };
        static const char *const paths[] = {
                "id",
                "target",
                "selector",
                "hosts",
                "strategy",
                "timeouts",
                "lease_seconds",
                "windows",
                "auto_rollback",
                "dry_run",
                "strategy.mode",
                "strategy.canary",
                "strategy.batch",
                "strategy.max_unavailable",
                "strategy.max_failures",
                "strategy.soak",
                "timeouts.stage",
                "timeouts.reboot",
                "target.kernel",
                "target.initrd",
                "target.cmdline",
                "target.signature",
                "target.release",
                "target.kernel.url",
                "target.kernel.sha256",
                "selector.zone",
                "hosts.0",
                "windows.0",
                "windows.0.start",
                "windows.0.days",
                "windows.0.time_zone",
                "windows.0.days.0",
        };
        unsigned accepted = 0, refused = 0;

        for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
                for (size_t j = 0; j < sizeof(odd) / sizeof(odd[0]); j++) {
                        json_t *spec =
                                J("{\"target\": " TARGET ", \"hosts\": [\"h1\"],"
                                  " \"strategy\": {}, \"timeouts\": {},"
                                  " \"windows\": [{\"days\": [\"mon\"], \"start\": \"01:00\","
                                  "   \"end\": \"02:00\"}], \"selector\": {}}");
                        json_t *parent = spec, *v = J(odd[j]);
                        char path[64], *save = NULL, *tok, *last = NULL;
                        snprintf(path, sizeof(path), "%s", paths[i]);
                        for (tok = strtok_r(path, ".", &save); tok;
                             tok = strtok_r(NULL, ".", &save)) {
                                if (last)
                                        parent = json_is_array(parent)
                                                         ? json_array_get(parent, 0)
                                                         : json_object_get(parent, last);
                                last = tok;
                        }
                        if (json_is_array(parent))
                                json_array_set_new(parent, 0, v);
                        else
                                json_object_set_new(parent, last, v);
                        struct ctl_problem p = { 0 };
                        json_t *out = NULL;
                        int r = rollout_spec_normalize(spec, &out, &p);
                        if (r == 0) {
                                accepted++;
                                ck_assert_ptr_nonnull(out);
                                json_t *inv = J(INVENTORY), *plan = NULL;
                                r = rollout_plan(out, inv, &plan, &p);
                                ck_assert(r == 0 || (r == -1 && p.status == 422));
                                json_decref(plan);
                                json_decref(inv);
                        } else {
                                refused++;
                                ck_assert_int_eq(r, -1);
                                ck_assert_ptr_null(out);
                                ck_assert_int_eq(p.status, 400);
                                ck_assert(strcmp(p.code, "invalid-field") == 0 ||
                                          strcmp(p.code, "missing-field") == 0);
                        }
                        json_decref(out);
                        json_decref(spec);
                }
        }
        ck_assert_uint_gt(accepted, 10);
        ck_assert_uint_gt(refused, 500);

        /* strings with NUL, built directly */
        json_t *spec = J("{\"target\": " TARGET "}");
        json_object_set_new(spec, "id", json_stringn("ab\0cd", 5));
        struct ctl_problem p = { 0 };
        json_t *out = NULL;
        ck_assert_int_eq(rollout_spec_normalize(spec, &out, &p), -1);
        ck_assert_str_eq(p.field, "id");
        json_object_del(spec, "id");
        json_object_set_new(spec, "selector", json_pack("{s:o}", "zone", json_stringn("a\0b", 3)));
        ck_assert_int_eq(rollout_spec_normalize(spec, &out, &p), -1);
        ck_assert_str_eq(p.field, "selector.zone");
        json_object_del(spec, "selector");
        json_object_set_new(spec, "strategy", json_pack("{s:o}", "batch", json_stringn("5%\0", 3)));
        ck_assert_int_eq(rollout_spec_normalize(spec, &out, &p), -1);
        ck_assert_str_eq(p.field, "strategy.batch");
        json_object_set_new(spec, "strategy", json_pack("{s:f}", "soak", 1e308));
        ck_assert_int_eq(rollout_spec_normalize(spec, &out, &p), -1);
        ck_assert_str_eq(p.field, "strategy.soak");
        json_object_set_new(spec, "strategy", json_pack("{s:I}", "soak", (json_int_t)INT64_MIN));
        ck_assert_int_eq(rollout_spec_normalize(spec, &out, &p), -1);
        ck_assert_str_eq(p.field, "strategy.soak");
        json_decref(spec);
        /* a member name with NUL, and a very long one (the field is cut, not overflowed) */
        spec = J("{\"target\": " TARGET "}");
        json_object_setn_new(spec, "x\0y", 3, json_true());
        ck_assert_int_eq(rollout_spec_normalize(spec, &out, &p), -1);
        ck_assert_str_eq(p.code, "invalid-field");
        ck_assert_str_eq(p.field, "x");
        json_decref(spec);
        spec = J("{\"target\": " TARGET "}");
        json_object_setn_new(spec, "id\0x", 4, json_string("r1"));
        ck_assert_int_eq(rollout_spec_normalize(spec, &out, &p), -1);
        ck_assert_str_eq(p.field, "id");
        json_decref(spec);
        spec = J("{\"target\": " TARGET ", \"selector\": {}}");
        json_object_setn_new(json_object_get(spec, "selector"), "zone\0x", 6, json_string("a"));
        ck_assert_int_eq(rollout_spec_normalize(spec, &out, &p), -1);
        ck_assert_str_eq(p.field, "selector");
        json_decref(spec);
        char longkey[300];
        memset(longkey, 'k', sizeof(longkey) - 1);
        longkey[sizeof(longkey) - 1] = 0;
        spec = J("{\"target\": " TARGET "}");
        json_object_set_new(spec, longkey, json_true());
        ck_assert_int_eq(rollout_spec_normalize(spec, &out, &p), -1);
        ck_assert_uint_eq(strlen(p.field), sizeof(p.field) - 1);
        json_decref(spec);
        ck_assert_int_eq(rollout_spec_normalize(NULL, &out, &p), -1);
        ck_assert_ptr_null(out);
}
END_TEST

static Suite *plan_suite(void)
{
        Suite *s = suite_create("rollout_plan");
        TCase *tc = tcase_create("core");

        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_normalize_defaults);
        tcase_add_test(tc, test_normalize_force);
        tcase_add_test(tc, test_normalize_full);
        tcase_add_test(tc, test_normalize_ms_forms);
        tcase_add_test(tc, test_normalize_invalid);
        tcase_add_test(tc, test_duration);
        tcase_add_test(tc, test_count);
        tcase_add_test(tc, test_selector);
        tcase_add_test(tc, test_plan_zones);
        tcase_add_test(tc, test_plan_canary0_full_batch);
        tcase_add_test(tc, test_plan_two_phase);
        tcase_add_test(tc, test_plan_unknown_hosts);
        tcase_add_test(tc, test_plan_no_hosts);
        tcase_add_test(tc, test_plan_large);
        tcase_add_test(tc, test_limits);
        tcase_add_test(tc, test_hostile);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(plan_suite)
