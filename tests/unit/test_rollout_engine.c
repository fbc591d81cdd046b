/*
 * test_rollout_engine.c: the rollout engine's decisions without HTTP. The
 * pure functions (engine_observe, engine_classify, engine_count,
 * engine_op_id, engine_backoff), then whole passes (engine_tick) over a
 * controller whose sends are recorded by a hook and answered by the test:
 * rolling waves within the unavailable budget, the failure budget and
 * resume, two-phase cancel, abort, and the resume of a host whose reboot
 * intent was recorded.
 */
#include <check.h>
#include <errno.h>
#include <string.h>

#include "engine.h"
#include "testutil.h"

/* ---- pure functions ---- */

static json_t *doc(int index, const char *state, const char *boot, const char *op_id,
                   const char *op_status)
{
        json_t *d = json_pack("{s:s, s:i, s:s, s:s}", "state", state, "index", index, "boot_id",
                              boot, "kernel", "6.1.0-old");
        if (op_id)
                json_object_set_new(d, "operation",
                                    json_pack("{s:s, s:s, s:s, s:n}", "id", op_id, "action", "x",
                                              "status", op_status, "error"));
        else
                json_object_set_new(d, "operation", json_null());
        return d;
}

START_TEST(test_observe)
{
        struct store_rhost h = { .op_id = "lf:r1:h1:prepare", .boot_id_before = "boot-1" };
        json_t *d;

        ck_assert_int_eq(engine_observe(&h, STEP_PREPARE, NULL), OBS_NOT_SEEN);
        d = doc(5, "normal", "boot-1", "lf:r1:h1:stage", "succeeded");
        ck_assert_int_eq(engine_observe(&h, STEP_PREPARE, d), OBS_NOT_SEEN);
        json_decref(d);
        d = doc(6, "normal", "boot-1", "lf:r1:h1:prepare", "running");
        ck_assert_int_eq(engine_observe(&h, STEP_PREPARE, d), OBS_RUNNING);
        json_decref(d);
        d = doc(7, "prepared", "boot-1", "lf:r1:h1:prepare", "succeeded");
        ck_assert_int_eq(engine_observe(&h, STEP_PREPARE, d), OBS_SUCCEEDED);
        json_decref(d);
        d = doc(7, "normal", "boot-1", "lf:r1:h1:prepare", "failed");
        ck_assert_int_eq(engine_observe(&h, STEP_PREPARE, d), OBS_FAILED);
        json_decref(d);

        /* Reboot: only a new boot id says it happened. */
        snprintf(h.op_id, sizeof(h.op_id), "lf:r1:h1:reboot");
        d = doc(8, "frozen", "boot-1", "lf:r1:h1:reboot", "succeeded");
        ck_assert_int_eq(engine_observe(&h, STEP_REBOOT, d), OBS_RUNNING);
        json_decref(d);
        d = doc(8, "prepared", "boot-1", "lf:r1:h1:prepare", "succeeded");
        ck_assert_int_eq(engine_observe(&h, STEP_REBOOT, d), OBS_NOT_SEEN);
        json_decref(d);
        d = doc(11, "updated", "boot-2", NULL, NULL);
        ck_assert_int_eq(engine_observe(&h, STEP_REBOOT, d), OBS_REBOOTED);
        json_decref(d);
}
END_TEST

START_TEST(test_host_current)
{
        json_t *spec = json_loads("{\"target\": {\"release\": \"6.9.1\"}}", 0, NULL),
               *forced = json_loads("{\"target\": {\"release\": \"6.9.1\"}, \"force\": true}", 0,
                                    NULL),
               *norel = json_loads("{\"target\": {}}", 0, NULL),
               *at_rest = json_loads("{\"state\": \"normal\", \"kernel\": \"6.9.1\"}", 0, NULL),
               *older = json_loads("{\"state\": \"normal\", \"kernel\": \"6.9.0\"}", 0, NULL),
               *busy = json_loads("{\"state\": \"updated\", \"kernel\": \"6.9.1\"}", 0, NULL);

        ck_assert(engine_host_current(spec, at_rest));
        ck_assert(!engine_host_current(spec, older));
        /* Updated into it but not finished: the rollout finishes it. */
        ck_assert(!engine_host_current(spec, busy));
        ck_assert(!engine_host_current(forced, at_rest));
        ck_assert(!engine_host_current(norel, at_rest));
        ck_assert(!engine_host_current(spec, NULL));
        json_decref(spec);
        json_decref(forced);
        json_decref(norel);
        json_decref(at_rest);
        json_decref(older);
        json_decref(busy);
}
END_TEST

START_TEST(test_classify)
{
        json_t *inprog = json_pack("{s:s}", "code", "operation-in-progress");
        json_t *invalid = json_pack("{s:s}", "code", "invalid-transition");
        json_t *replayed = json_pack("{s:s, s:b}", "code", "kernel-error", "replayed", 1);
        json_t *kerr = json_pack("{s:s}", "code", "kernel-error");

        ck_assert_int_eq(engine_classify(STEP_STAGE, 200, NULL), RESP_OK);
        ck_assert_int_eq(engine_classify(STEP_STAGE, 202, NULL), RESP_RUNNING);
        ck_assert_int_eq(engine_classify(STEP_REBOOT, 202, NULL), RESP_OK);
        ck_assert_int_eq(engine_classify(STEP_ROLLBACK, 202, NULL), RESP_OK);
        ck_assert_int_eq(engine_classify(STEP_PREPARE, 412, NULL), RESP_REREAD);
        ck_assert_int_eq(engine_classify(STEP_PREPARE, 409, inprog), RESP_WAIT);
        ck_assert_int_eq(engine_classify(STEP_PREPARE, 409, invalid), RESP_FAIL);
        ck_assert_int_eq(engine_classify(STEP_PREPARE, 0, NULL), RESP_RETRY);
        ck_assert_int_eq(engine_classify(STEP_PREPARE, 503, NULL), RESP_RETRY);
        ck_assert_int_eq(engine_classify(STEP_PREPARE, 500, kerr), RESP_RETRY);
        ck_assert_int_eq(engine_classify(STEP_PREPARE, 500, replayed), RESP_FAIL);
        ck_assert_int_eq(engine_classify(STEP_STAGE, 422, NULL), RESP_FAIL);
        ck_assert_int_eq(engine_classify(STEP_STAGE, 400, NULL), RESP_FAIL);
        json_decref(inprog);
        json_decref(invalid);
        json_decref(replayed);
        json_decref(kerr);
}
END_TEST

/* When a host in its reboot is looked for again, and the blackout estimate. */
START_TEST(test_reboot_retry)
{
        unsigned b = 0;

        /* No estimate yet: the plain backoff from min (+-20%). */
        int64_t d = engine_reboot_retry_ms(100, 0, &b, 500, 10000);
        ck_assert(d >= 400 && d <= 600);
        d = engine_reboot_retry_ms(700, 0, &b, 500, 10000);
        ck_assert(d >= 800 && d <= 1200);
        /* An estimate of 5 s, 1 s after the reboot: not before 4.5 s, exactly. */
        b = 1000;
        ck_assert_int_eq(engine_reboot_retry_ms(1000, 5000, &b, 500, 10000), 3500);
        ck_assert_uint_eq(b, 0);
        /* Around the estimate: every min/2 (+-20%). */
        d = engine_reboot_retry_ms(4600, 5000, &b, 500, 10000);
        ck_assert(d >= 200 && d <= 300);
        d = engine_reboot_retry_ms(9900, 5000, &b, 500, 10000);
        ck_assert(d >= 200 && d <= 300);
        /* Past twice the estimate: the backoff again. */
        d = engine_reboot_retry_ms(10000, 5000, &b, 500, 10000);
        ck_assert(d >= 400 && d <= 600);

        /* The estimate: the first blackout, then 70/30. */
        ck_assert_int_eq(engine_blackout_estimate(0, -1), 0);
        ck_assert_int_eq(engine_blackout_estimate(0, 1000), 1000);
        ck_assert_int_eq(engine_blackout_estimate(1000, 2000), 1300);
        ck_assert_int_eq(engine_blackout_estimate(1300, -1), 1300);
        ck_assert_int_eq(engine_blackout_estimate(0, 0), 1);
}
END_TEST

START_TEST(test_op_id_and_backoff)
{
        char id[STORE_OPID_MAX], id2[STORE_OPID_MAX];

        ck_assert_int_eq(engine_op_id("lf", "r-20261125-101500-0a1b", "web-7", STEP_REBOOT, id), 0);
        ck_assert_str_eq(id, "lf:r-20261125-101500-0a1b:web-7:reboot");
        /* Too long for the agent's 64: hashed, deterministic, still ends with the step. */
        const char *longhost = "a-very-long-host-name-in-some-datacenter.example.internal";
        ck_assert_int_eq(engine_op_id("lf", "rollout-with-a-long-name", longhost, STEP_STAGE, id),
                         0);
        ck_assert_int_eq(engine_op_id("lf", "rollout-with-a-long-name", longhost, STEP_STAGE, id2),
                         0);
        ck_assert_str_eq(id, id2);
        ck_assert_uint_le(strlen(id), 64);
        ck_assert_int_eq(strncmp(id, "lf:", 3), 0);
        ck_assert_str_eq(id + strlen(id) - 6, ":stage");
        ck_assert_int_eq(engine_op_id("lf", "rollout-with-a-long-name", longhost, STEP_CANCEL, id2),
                         0);
        ck_assert_str_ne(id, id2);

        for (int i = 0; i < 50; i++) {
                unsigned b = engine_backoff(0, 500, 10000);
                ck_assert_uint_ge(b, 400);
                ck_assert_uint_le(b, 600);
                b = engine_backoff(4000, 500, 10000);
                ck_assert_uint_ge(b, 6400);
                ck_assert_uint_le(b, 9600);
                b = engine_backoff(9000, 500, 10000);
                ck_assert_uint_ge(b, 8000);
                ck_assert_uint_le(b, 12000);
        }
}
END_TEST

/* ---- passes over a controller with recorded sends ---- */

struct sent {
        char host[STORE_NAME_MAX];
        enum step step;
        enum ac_kind kind;
        char op_id[STORE_OPID_MAX];
};
static struct sent sent[64];
static int nsent;

static void hook(struct controller *c, struct rhost *rh, enum ac_kind kind)
{
        (void)c;
        ck_assert_int_lt(nsent, 64);
        snprintf(sent[nsent].host, sizeof(sent[nsent].host), "%s", rh->rec.name);
        sent[nsent].step = rh->step;
        sent[nsent].kind = kind;
        snprintf(sent[nsent].op_id, sizeof(sent[nsent].op_id), "%s", rh->rec.op_id);
        nsent++;
}

static struct controller *fake_new(void)
{
        struct controller *c = calloc(1, sizeof(*c));
        char err[256];

        ck_assert_ptr_nonnull(c);
        pthread_mutex_init(&c->lock, NULL);
        pthread_cond_init(&c->ev_cond, NULL);
        ck_assert_int_eq(store_open(":memory:", &c->st, err, sizeof(err)), 0);
        snprintf(c->name, sizeof(c->name), "lf");
        c->poll_wait_ms = 30000;
        c->retry_min_ms = 500;
        c->retry_max_ms = 10000;
        c->store_ok = true;
        c->send_hook = hook;
        c->test_now_wall_ms = 1764000000000;
        c->test_now_mono_ms = 1000000;
        nsent = 0;
        return c;
}

static void add_host(struct controller *c, const char *name, const char *zone, const char *boot)
{
        json_t *body =
                json_pack("{s:s, s:{s:s}}", "url", "http://127.0.0.1:1", "labels", "zone", zone);
        json_t *ret = NULL;
        bool created = false;
        struct ctl_problem p;

        ck_assert_int_eq(controller_host_put(c, name, body, &ret, &created, &p), 0);
        ck_assert(created);
        json_decref(ret);
        json_decref(body);
        json_t *d = doc(1, "normal", boot, NULL, NULL);
        engine_on_state(c, engine_host_find(c, name), d);
        json_decref(d);
}

static struct rollout *create(struct controller *c, const char *strategy_json)
{
        json_error_t je;
        json_t *strategy = json_loads(strategy_json, 0, &je);
        ck_assert_ptr_nonnull(strategy);
        json_t *spec = json_pack("{s:s, s:{s:{s:s, s:s}, s:s}, s:o}", "id", "r1", "target",
                                 "kernel", "path", "/boot/vmlinuz-new", "sha256",
                                 "9d12afdaf1d086971c5c0ba5661dda54152987c89c45155f7b421f8b00b064dc",
                                 "release", "6.99.1-new", "strategy", strategy);
        json_t *ret = NULL;
        int code = 0;
        struct ctl_problem p = { 0 };
        ck_assert_msg(controller_rollout_create(c, spec, &ret, &code, &p) == 0, "%s: %s", p.code,
                      p.detail);
        ck_assert_int_eq(code, 201);
        json_decref(ret);
        json_decref(spec);
        return engine_rollout_find(c, "r1");
}

static struct rhost *rh_of(struct rollout *ro, const char *name)
{
        for (size_t i = 0; i < ro->nhosts; i++)
                if (strcmp(ro->hosts[i].rec.name, name) == 0)
                        return &ro->hosts[i];
        ck_abort_msg("no host %s", name);
        return NULL;
}

static void pass(struct controller *c, struct rollout *ro)
{
        engine_tick(c, ro);
        ck_assert_int_eq(engine_commit(c), 0);
}

static void answer(struct controller *c, struct rhost *rh, int status, json_t *body)
{
        struct ac_result res = { .status = status, .body = body };
        engine_on_action(c, rh, &res);
        json_decref(body);
        ck_assert_int_eq(engine_commit(c), 0);
}

static json_t *ready(bool ok)
{
        return json_pack("{s:s, s:[{s:s, s:b, s:s}, {s:s, s:b, s:s}]}", "status",
                         ok ? "ready" : "not-ready", "checks", "name", "backend", "ok", 1, "detail",
                         "sim", "name", "kernel-verified", "ok", ok, "detail",
                         ok ? "verified" : "running 6.1.0-old, staged 6.99.1-new");
}

static const char *reason_code(const struct rollout *ro)
{
        return json_string_value(json_object_get(ro->rec.reason, "code"));
}

/* Drive one host from pending to done, checking each send. */
static void drive_to_done(struct controller *c, struct rollout *ro, struct rhost *rh,
                          const char *new_boot)
{
        char op[STORE_NAME_MAX + 32];

        ck_assert_int_eq(rh->phase, PH_STAGING);
        ck_assert_int_eq(sent[nsent - 1].step, STEP_STAGE);
        snprintf(op, sizeof(op), "lf:r1:%s:stage", rh->rec.name);
        ck_assert_str_eq(sent[nsent - 1].op_id, op);
        answer(c, rh, 200,
               doc(2, "normal", rh->rec.boot_id_before[0] ? "x" : "boot-1", op, "succeeded"));
        ck_assert(rh->rec.step_done);
        pass(c, ro);
        ck_assert_int_eq(sent[nsent - 1].step, STEP_PREPARE);
        ck_assert_str_eq(rh->rec.step, "prepare");
        answer(c, rh, 200, NULL);
        ck_assert_int_eq(rh->phase, PH_PREPARED);
        pass(c, ro);
        ck_assert_int_eq(rh->phase, PH_REBOOTING);
        ck_assert_int_eq(sent[nsent - 1].step, STEP_REBOOT);
        answer(c, rh, 202, NULL);
        ck_assert_int_eq(rh->phase, PH_REBOOTING);
        json_t *d = doc(12, "updated", new_boot, NULL, NULL);
        json_object_set_new(d, "kernel", json_string("6.99.1-new"));
        json_object_set_new(d, "last_update", json_pack("{s:i}", "blackout_ms", 37));
        engine_on_state(c, rh->host, d);
        json_decref(d);
        ck_assert_int_eq(rh->phase, PH_UPDATED);
        ck_assert_str_eq(rh->rec.boot_id_after, new_boot);
        ck_assert_str_eq(rh->rec.kernel, "6.99.1-new");
        ck_assert_int_eq(rh->rec.blackout_ms, 37);
        pass(c, ro);
        ck_assert_int_eq(rh->phase, PH_VERIFYING);
        ck_assert_int_eq(sent[nsent - 1].kind, AC_READYZ);
        struct ac_result res = { .status = 200, .body = ready(true) };
        engine_on_readyz(c, rh, &res);
        json_decref(res.body);
        ck_assert_int_eq(engine_commit(c), 0);
        ck_assert_int_eq(rh->phase, PH_FINISHING);
        ck_assert_int_eq(sent[nsent - 1].step, STEP_FINISH);
        answer(c, rh, 200, NULL);
        ck_assert_int_eq(rh->phase, PH_DONE);
}

START_TEST(test_rolling_waves)
{
        struct controller *c = fake_new();
        add_host(c, "h1", "a", "boot-1");
        add_host(c, "h2", "b", "boot-1");
        add_host(c, "h3", "a", "boot-1");
        struct rollout *ro = create(c, "{\"canary\": 1, \"batch\": 2, \"max_unavailable\": 1}");
        ck_assert_int_eq(ro->nwaves, 2);
        ck_assert_int_eq(ro->status, RS_PENDING);

        pass(c, ro);
        ck_assert_int_eq(ro->status, RS_RUNNING);
        ck_assert_int_eq(ro->rec.current_wave, 0);
        ck_assert_int_eq(nsent, 1);
        struct rhost *canary = rh_of(ro, sent[0].host);
        ck_assert_int_eq(canary->rec.wave, 0);
        drive_to_done(c, ro, canary, "boot-2");
        ck_assert_str_eq(canary->rec.boot_id_before, "boot-1");

        /* Wave 1: max_unavailable 1, so one host is staged, not both. */
        int before = nsent;
        pass(c, ro);
        ck_assert_int_eq(ro->rec.current_wave, 1);
        ck_assert_int_eq(nsent, before + 1);
        struct rhost *second = rh_of(ro, sent[nsent - 1].host);
        ck_assert_int_eq(second->rec.wave, 1);
        struct rollout_counts n;
        engine_count(ro, 1, &n);
        ck_assert_uint_eq(n.by_phase[PH_PENDING], 1);
        ck_assert_uint_eq(n.by_phase[PH_STAGING], 1);
        ck_assert_uint_eq(n.in_flight, 1);
        drive_to_done(c, ro, second, "boot-3");
        pass(c, ro);
        struct rhost *third = rh_of(ro, sent[nsent - 1].host);
        ck_assert_ptr_ne(third, second);
        drive_to_done(c, ro, third, "boot-4");
        pass(c, ro);
        ck_assert_int_eq(ro->status, RS_COMPLETED);
        ck_assert_int_gt(ro->rec.finished_at, 0);

        /* Events: created, running, wave 0, ..., completed; seq from 1 without gaps. */
        json_t *ev = NULL;
        ck_assert_int_eq(store_events_get(c->st, "r1", 0, 1000, &ev), 0);
        ck_assert_int_eq(json_array_size(ev), (size_t)ro->rec.last_seq);
        ck_assert_str_eq(json_string_value(json_object_get(json_array_get(ev, 0), "type")),
                         "rollout-created");
        ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(ev, 0), "seq")), 1);
        json_t *last = json_array_get(ev, json_array_size(ev) - 1);
        ck_assert_str_eq(json_string_value(json_object_get(last, "status")), "completed");
        json_decref(ev);
        controller_stop(c);
}
END_TEST

START_TEST(test_failure_budget_and_resume)
{
        struct controller *c = fake_new();
        add_host(c, "h1", "a", "boot-1");
        add_host(c, "h2", "a", "boot-1");
        struct rollout *ro = create(
                c, "{\"canary\": 0, \"batch\": 2, \"max_unavailable\": 2, \"max_failures\": 0}");
        pass(c, ro);
        ck_assert_int_eq(nsent, 2);
        struct rhost *h1 = rh_of(ro, "h1"), *h2 = rh_of(ro, "h2");
        answer(c, h1, 422,
               json_pack("{s:s, s:s}", "code", "path-not-allowed", "detail", "not in /boot"));
        ck_assert_int_eq(h1->phase, PH_FAILED);
        ck_assert_str_eq(json_string_value(json_object_get(h1->rec.error, "code")),
                         "path-not-allowed");
        pass(c, ro);
        ck_assert_int_eq(ro->status, RS_PAUSED);
        ck_assert_str_eq(reason_code(ro), "failure-budget-exhausted");
        /* Paused: the staged host is not prepared. */
        answer(c, h2, 200, NULL);
        int before = nsent;
        pass(c, ro);
        ck_assert_int_eq(nsent, before);
        ck_assert_int_eq(h2->phase, PH_STAGING);

        /* Finished rollouts refuse actions; resume accepts the failures so far. */
        json_t *ret = NULL;
        struct ctl_problem p;
        ck_assert_int_eq(controller_rollout_action(c, "r1", "resume", NULL, &ret, &p), 0);
        ck_assert_str_eq(json_string_value(json_object_get(ret, "status")), "running");
        json_decref(ret);
        ck_assert_int_eq(ro->rec.budget_baseline, 1);
        pass(c, ro);
        ck_assert_int_eq(ro->status, RS_RUNNING);
        ck_assert_int_eq(nsent, before + 1);
        ck_assert_int_eq(sent[nsent - 1].step, STEP_PREPARE);
        ck_assert_str_eq(sent[nsent - 1].host, "h2");
        /* A new failure exhausts it again; a prepared failure owes a cancel. */
        answer(c, h2, 200, NULL);
        ck_assert_int_eq(h2->phase, PH_PREPARED);
        ck_assert_int_eq(controller_rollout_action(c, "r1", "pause", "change freeze", &ret, &p), 0);
        json_decref(ret);
        ck_assert_str_eq(reason_code(ro), "paused-by-user");
        ck_assert_str_eq(json_string_value(json_object_get(ro->rec.reason, "detail")),
                         "change freeze");
        ck_assert_int_eq(controller_rollout_action(c, "r1", "abort", NULL, &ret, &p), 0);
        json_decref(ret);
        pass(c, ro);
        ck_assert_int_eq(h2->phase, PH_CANCELLED);
        ck_assert_int_eq(sent[nsent - 1].step, STEP_CANCEL);
        ck_assert_str_eq(sent[nsent - 1].op_id, "lf:r1:h2:cancel");
        ck_assert_int_eq(ro->status, RS_PAUSED); /* the cancel is not answered yet */
        answer(c, h2, 200, NULL);
        pass(c, ro);
        ck_assert_int_eq(ro->status, RS_ABORTED);
        ck_assert_str_eq(reason_code(ro), "aborted-by-user");
        ck_assert_int_eq(controller_rollout_action(c, "r1", "resume", NULL, &ret, &p), -1);
        ck_assert_int_eq(p.status, 409);
        ck_assert_str_eq(p.code, "invalid-transition");
        controller_stop(c);
}
END_TEST

START_TEST(test_two_phase_cancel)
{
        struct controller *c = fake_new();
        add_host(c, "h1", "a", "boot-1");
        add_host(c, "h2", "a", "boot-1");
        add_host(c, "h3", "a", "boot-1");
        struct rollout *ro = create(c, "{\"mode\": \"two-phase\", \"canary\": 0, \"batch\": 3, "
                                       "\"max_unavailable\": 3, \"max_failures\": 5}");
        pass(c, ro);
        ck_assert_int_eq(nsent, 3);
        for (size_t i = 0; i < ro->nhosts; i++)
                answer(c, &ro->hosts[i], 200, NULL);
        pass(c, ro);
        ck_assert_int_eq(nsent, 6);
        ck_assert_int_eq(sent[5].step, STEP_PREPARE);
        answer(c, rh_of(ro, "h1"), 200, NULL);
        answer(c, rh_of(ro, "h2"), 500,
               json_pack("{s:s, s:s, s:b}", "code", "kernel-error", "detail", "EIO", "replayed",
                         1));
        ck_assert_int_eq(rh_of(ro, "h2")->phase, PH_FAILED);
        /* h2 is still preparing per our records: the wave waits for h3. */
        pass(c, ro);
        ck_assert_int_eq(ro->status, RS_RUNNING);
        answer(c, rh_of(ro, "h3"), 200, NULL);
        pass(c, ro);
        ck_assert_int_eq(rh_of(ro, "h1")->phase, PH_CANCELLED);
        ck_assert_int_eq(rh_of(ro, "h3")->phase, PH_CANCELLED);
        ck_assert_int_eq(rh_of(ro, "h2")->phase, PH_FAILED);
        /* The pause waits until the cancels are answered: the hosts are back to normal
         * first (docs/rollout.md), as an abort waits. */
        ck_assert_int_eq(ro->status, RS_RUNNING);
        ck_assert_int_eq(sent[nsent - 1].step, STEP_CANCEL);
        answer(c, rh_of(ro, "h1"), 200, NULL);
        pass(c, ro);
        ck_assert_int_eq(ro->status, RS_RUNNING);
        answer(c, rh_of(ro, "h3"), 200, NULL);
        pass(c, ro);
        ck_assert_int_eq(ro->status, RS_PAUSED);
        ck_assert_str_eq(reason_code(ro), "two-phase-prepare-failed");
        /* Its only wave lost, nothing is left to resume for: failed, for the same cause. */
        pass(c, ro);
        ck_assert_int_eq(ro->status, RS_FAILED);
        ck_assert_str_eq(reason_code(ro), "two-phase-prepare-failed");
        /* The refused prepare left h2 normal (its last state seen): no cancel for it. */
        int cancels = 0, reboots = 0;
        for (int i = 0; i < nsent; i++) {
                cancels += sent[i].step == STEP_CANCEL;
                reboots += sent[i].step == STEP_REBOOT;
                ck_assert(sent[i].step != STEP_CANCEL || strcmp(sent[i].host, "h2") != 0);
        }
        ck_assert_int_eq(cancels, 2);
        ck_assert_int_eq(reboots, 0);
        controller_stop(c);
}
END_TEST

START_TEST(test_resume_reboot_intent)
{
        struct controller *c = fake_new();
        add_host(c, "h1", "a", "boot-1");
        add_host(c, "h2", "a", "boot-1");
        struct rollout *ro = create(c, "{\"canary\": 0, \"batch\": 2, \"max_unavailable\": 2}");
        pass(c, ro);
        for (size_t i = 0; i < 2; i++)
                answer(c, &ro->hosts[i], 200, NULL);
        pass(c, ro);
        for (size_t i = 0; i < 2; i++)
                answer(c, &ro->hosts[i], 200, NULL);
        pass(c, ro);
        struct rhost *h1 = rh_of(ro, "h1"), *h2 = rh_of(ro, "h2");
        ck_assert_int_eq(h1->phase, PH_REBOOTING);
        ck_assert_int_eq(h2->phase, PH_REBOOTING);
        int attempts = h1->rec.attempts;

        /* "Restart": the engine resumes from the records (resync first). */
        engine_attach(c, ro, true);
        ck_assert(h1->resync);
        ck_assert(h2->resync);
        nsent = 0;
        pass(c, ro);
        ck_assert_int_eq(nsent, 2);
        ck_assert_int_eq(sent[0].kind, AC_STATE);
        ck_assert_int_eq(sent[1].kind, AC_STATE);
        /* h1 rebooted meanwhile: nothing is resent. */
        json_t *d = doc(20, "updated", "boot-9", "lf:r1:h1:reboot", "succeeded");
        struct ac_result res = { .status = 200, .body = d };
        engine_on_resync(c, h1, &res);
        json_decref(d);
        ck_assert_int_eq(engine_commit(c), 0);
        ck_assert_int_eq(h1->phase, PH_UPDATED);
        ck_assert_int_eq(nsent, 2);
        /* h2 never got it: the same request with the same operation id, no new intent. */
        d = doc(9, "prepared", "boot-1", "lf:r1:h2:prepare", "succeeded");
        res.body = d;
        engine_on_resync(c, h2, &res);
        json_decref(d);
        ck_assert_int_eq(engine_commit(c), 0);
        ck_assert_int_eq(nsent, 3);
        ck_assert_int_eq(sent[2].step, STEP_REBOOT);
        ck_assert_str_eq(sent[2].op_id, "lf:r1:h2:reboot");
        ck_assert_int_eq(h2->rec.attempts, attempts);
        ck_assert_int_eq(h2->phase, PH_REBOOTING);
        controller_stop(c);
}
END_TEST

START_TEST(test_verify_fails_rollback)
{
        struct controller *c = fake_new();
        add_host(c, "h1", "a", "boot-1");
        json_error_t je;
        json_t *spec = json_loads(
                "{\"id\": \"r1\", \"auto_rollback\": true, \"target\": {\"kernel\": {\"path\": "
                "\"/boot/vmlinuz-new\", \"sha256\": "
                "\"9d12afdaf1d086971c5c0ba5661dda54152987c89c45155f7b421f8b00b064dc\"}}, "
                "\"strategy\": {\"canary\": 0, \"max_failures\": 1}}",
                0, &je);
        json_t *ret = NULL;
        int code;
        struct ctl_problem p;
        ck_assert_int_eq(controller_rollout_create(c, spec, &ret, &code, &p), 0);
        json_decref(ret);
        json_decref(spec);
        struct rollout *ro = engine_rollout_find(c, "r1");
        ck_assert(ro->lim.auto_rollback);
        pass(c, ro);
        struct rhost *h1 = rh_of(ro, "h1");
        answer(c, h1, 200, NULL);
        pass(c, ro);
        answer(c, h1, 200, NULL);
        pass(c, ro);
        answer(c, h1, 202, NULL);
        json_t *d = doc(12, "updated", "boot-2", NULL, NULL);
        engine_on_state(c, h1->host, d);
        json_decref(d);
        pass(c, ro);
        ck_assert_int_eq(h1->phase, PH_VERIFYING);
        struct ac_result res = { .status = 503, .body = ready(false) };
        engine_on_readyz(c, h1, &res);
        json_decref(res.body);
        ck_assert_int_eq(engine_commit(c), 0);
        ck_assert_int_eq(h1->phase, PH_FAILED);
        ck_assert_str_eq(json_string_value(json_object_get(h1->rec.error, "code")),
                         "kernel-verification-failed");
        ck_assert_int_eq(sent[nsent - 1].step, STEP_ROLLBACK);
        ck_assert_str_eq(sent[nsent - 1].op_id, "lf:r1:h1:rollback");
        answer(c, h1, 202, NULL);
        pass(c, ro);
        /* The rollback's kexec is under way: the rollout waits for it. */
        ck_assert_int_eq(ro->status, RS_RUNNING);
        /* Back in a third boot, updated on the old kernel: the controller finishes it. */
        d = doc(20, "updated", "boot-3", NULL, NULL);
        engine_on_state(c, h1->host, d);
        json_decref(d);
        ck_assert_int_eq(engine_commit(c), 0);
        ck_assert_int_eq(sent[nsent - 1].step, STEP_ROLLBACK_FINISH);
        ck_assert_str_eq(sent[nsent - 1].op_id, "lf:r1:h1:rollback-finish");
        answer(c, h1, 200, NULL);
        d = doc(22, "normal", "boot-3", NULL, NULL);
        engine_on_state(c, h1->host, d);
        json_decref(d);
        pass(c, ro);
        ck_assert_int_eq(h1->phase, PH_FAILED);
        /* Within max_failures 1, but no host got through: failed. */
        ck_assert_int_eq(ro->status, RS_FAILED);
        controller_stop(c);
}
END_TEST

START_TEST(test_window_blocks)
{
        struct controller *c = fake_new();
        add_host(c, "h1", "a", "boot-1");
        json_error_t je;
        /* The clock says 2025-11-24T16:00:00Z; the window opens at 02:00 UTC. */
        json_t *spec = json_loads(
                "{\"id\": \"r1\", \"target\": {\"kernel\": {\"path\": "
                "\"/boot/vmlinuz-new\", \"sha256\": "
                "\"9d12afdaf1d086971c5c0ba5661dda54152987c89c45155f7b421f8b00b064dc\"}}, "
                "\"windows\": [{\"start\": \"02:00\", \"end\": \"03:00\"}]}",
                0, &je);
        json_t *ret = NULL;
        int code;
        struct ctl_problem p;
        ck_assert_msg(controller_rollout_create(c, spec, &ret, &code, &p) == 0, "%s", p.detail);
        json_decref(ret);
        json_decref(spec);
        struct rollout *ro = engine_rollout_find(c, "r1");
        pass(c, ro);
        ck_assert_int_eq(ro->status, RS_BLOCKED);
        ck_assert_str_eq(reason_code(ro), "outside-window");
        ck_assert_str_eq(json_string_value(json_object_get(ro->rec.reason, "next_window_at")),
                         "2025-11-25T02:00:00.000Z");
        ck_assert_int_eq(nsent, 0);
        ck_assert_int_eq(ro->rec.current_wave, -1);
        /* The test offset moves the window check (not the event times): 10.5 h later. */
        c->time_offset_s = 37800;
        pass(c, ro);
        ck_assert_int_eq(ro->status, RS_RUNNING);
        ck_assert_ptr_null(ro->rec.reason);
        ck_assert_int_eq(nsent, 1);
        ck_assert_int_eq(sent[0].step, STEP_STAGE);
        controller_stop(c);
}
END_TEST

START_TEST(test_unavailable_budget_blocks)
{
        struct controller *c = fake_new();
        add_host(c, "h1", "a", "boot-1");
        add_host(c, "h2", "a", "boot-1");
        /* h2 does not answer: it counts against max_unavailable 1. */
        struct host *h2 = engine_host_find(c, "h2");
        h2->rec.reachable = false;
        h2->rec.error = strdup("Connection refused");
        struct rollout *ro = create(c, "{\"canary\": 0, \"batch\": 2, \"max_unavailable\": 1}");
        pass(c, ro);
        ck_assert_int_eq(ro->status, RS_BLOCKED);
        ck_assert_str_eq(reason_code(ro), "unavailable-budget");
        ck_assert_int_eq(nsent, 0);
        struct rollout_counts n;
        engine_count(ro, -1, &n);
        ck_assert_uint_eq(n.unavailable, 1);
        /* It comes back: the rollout goes on, one host at a time. */
        json_t *d = doc(3, "normal", "boot-1", NULL, NULL);
        engine_on_state(c, h2, d);
        json_decref(d);
        pass(c, ro);
        ck_assert_int_eq(ro->status, RS_RUNNING);
        ck_assert_int_eq(nsent, 1);
        controller_stop(c);
}
END_TEST

/*
 * Step timeouts (the spec's timeouts, here the defaults: stage 10 min, prepare 2 min): a host
 * that does not answer its step fails with timeout-<step> once the limit has passed, not a
 * millisecond before; the other host goes on. (tests/mutation: engine-step-timeout-never.)
 */
START_TEST(test_step_timeouts)
{
        struct controller *c = fake_new();
        add_host(c, "h1", "a", "boot-1");
        add_host(c, "h2", "a", "boot-1");
        struct rollout *ro = create(c, "{\"canary\": 0, \"batch\": 2, \"max_unavailable\": 2, "
                                       "\"max_failures\": 5}");
        int64_t t0 = c->test_now_wall_ms;
        pass(c, ro);
        ck_assert_int_eq(nsent, 2);
        struct rhost *h1 = rh_of(ro, "h1"), *h2 = rh_of(ro, "h2");
        ck_assert_int_eq(ro->lim.stage_ms, 10 * 60 * 1000);
        ck_assert_int_eq(ro->lim.prepare_ms, 2 * 60 * 1000);

        /* h2 is staged at once and starts its prepare; h1 never answers its stage */
        answer(c, h2, 200, doc(2, "normal", "boot-1", "lf:r1:h2:stage", "succeeded"));
        c->test_now_wall_ms = t0 + 1000;
        pass(c, ro);
        ck_assert_str_eq(h2->rec.step, "prepare");
        int64_t t_prep = c->test_now_wall_ms;

        /* h2's prepare has its own clock: 2 min from when it was sent */
        c->test_now_wall_ms = t_prep + ro->lim.prepare_ms - 1;
        pass(c, ro);
        ck_assert_int_eq(h2->phase, PH_STAGING);
        ck_assert_ptr_null(h2->rec.error);
        c->test_now_wall_ms = t_prep + ro->lim.prepare_ms;
        pass(c, ro);
        ck_assert_int_eq(h2->phase, PH_FAILED);
        ck_assert_str_eq(json_string_value(json_object_get(h2->rec.error, "code")),
                         "timeout-prepare");

        /* h1's stage: 10 min from when it was sent */
        ck_assert_int_eq(h1->phase, PH_STAGING);
        c->test_now_wall_ms = t0 + ro->lim.stage_ms - 1;
        pass(c, ro);
        ck_assert_int_eq(h1->phase, PH_STAGING);
        ck_assert_ptr_null(h1->rec.error);
        c->test_now_wall_ms = t0 + ro->lim.stage_ms;
        pass(c, ro);
        ck_assert_int_eq(h1->phase, PH_FAILED);
        ck_assert_str_eq(json_string_value(json_object_get(h1->rec.error, "code")),
                         "timeout-stage");
        controller_stop(c);
}
END_TEST

/*
 * Hosts prepared within the budget, then another selected host goes away: of the two prepared,
 * only as many reboot as max_unavailable still allows (2 - 1 = 1); the other waits prepared.
 * (tests/mutation: engine-max-unavailable-reboot.)
 */
START_TEST(test_unavailable_budget_holds_reboots)
{
        struct controller *c = fake_new();
        add_host(c, "h1", "a", "boot-1");
        add_host(c, "h2", "a", "boot-1");
        add_host(c, "h3", "a", "boot-1");
        struct rollout *ro = create(c, "{\"canary\": 0, \"batch\": 2, \"max_unavailable\": 2, "
                                       "\"max_failures\": 5}");
        pass(c, ro);
        ck_assert_int_eq(nsent, 2);
        struct rhost *h1 = rh_of(ro, "h1"), *h2 = rh_of(ro, "h2");
        answer(c, h1, 200, doc(2, "normal", "boot-1", "lf:r1:h1:stage", "succeeded"));
        answer(c, h2, 200, doc(2, "normal", "boot-1", "lf:r1:h2:stage", "succeeded"));
        pass(c, ro);
        ck_assert_str_eq(h1->rec.step, "prepare");
        ck_assert_str_eq(h2->rec.step, "prepare");
        answer(c, h1, 200, NULL);
        answer(c, h2, 200, NULL);
        ck_assert_int_eq(h1->phase, PH_PREPARED);
        ck_assert_int_eq(h2->phase, PH_PREPARED);

        /* h3 (the next wave) stops answering: one of the two slots is taken */
        struct host *h3 = engine_host_find(c, "h3");
        h3->rec.reachable = false;
        h3->rec.error = strdup("Connection refused");
        struct rollout_counts n;
        engine_count(ro, -1, &n);
        ck_assert_uint_eq(n.unavailable, 1);

        int before = nsent;
        pass(c, ro);
        ck_assert_int_eq(nsent, before + 1);
        ck_assert_int_eq(sent[nsent - 1].step, STEP_REBOOT);
        ck_assert_int_eq(h1->phase, PH_REBOOTING);
        ck_assert_int_eq(h2->phase, PH_PREPARED);
        /* and it stays so while h1 is down */
        answer(c, h1, 202, NULL);
        pass(c, ro);
        ck_assert_int_eq(nsent, before + 1);
        ck_assert_int_eq(h2->phase, PH_PREPARED);
        controller_stop(c);
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("rollout_engine");
        TCase *pure = tcase_create("pure");
        tcase_add_test(pure, test_observe);
        tcase_add_test(pure, test_classify);
        tcase_add_test(pure, test_host_current);
        tcase_add_test(pure, test_op_id_and_backoff);
        tcase_add_test(pure, test_reboot_retry);
        suite_add_tcase(s, pure);
        TCase *tick = tcase_create("tick");
        tcase_add_test(tick, test_rolling_waves);
        tcase_add_test(tick, test_failure_budget_and_resume);
        tcase_add_test(tick, test_two_phase_cancel);
        tcase_add_test(tick, test_resume_reboot_intent);
        tcase_add_test(tick, test_verify_fails_rollback);
        tcase_add_test(tick, test_window_blocks);
        tcase_add_test(tick, test_unavailable_budget_blocks);
        tcase_add_test(tick, test_step_timeouts);
        tcase_add_test(tick, test_unavailable_budget_holds_reboots);
        suite_add_tcase(s, tick);
        return s;
}

TESTUTIL_MAIN(suite)
