/*
 * test_lease.c: the dead-man lease (agent/lease.c, docs/leases.md) without sockets or timers:
 * a lease lives while the host is prepared or frozen and no longer; a prepare that failed
 * leaves none behind ("lease-void"), a cancel ends it ("lease-cancelled"); only the prepare's
 * own id renews it (409 lease-mismatch, the deadline untouched); lease_seconds is 1 to the
 * agent's maximum.
 *
 * Why: a lease kept after a failed prepare expires later and cancels whatever was prepared
 * since, by an operation nobody asked for; it survived every suite before this one
 * (tests/mutation: lease-kept-after-failed-prepare, lease-renew-any-id, lease-seconds-zero).
 *
 * Single-threaded: operations run synchronously (agent_op_execute on this thread).
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "config.h"
#include "http.h"
#include "journal.h"
#include "lease.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "ops.h"
#include "problem.h"
#include "router.h"
#include "agentfixture.h"
#include "testutil.h"

#define MAX_LEASE_S 3600

static void setup(void)
{
        testutil_mkdtemp(tmpdir, sizeof(tmpdir), "test_lease");
        memset(&cfg, 0, sizeof(cfg));
        cfg.max_lease_ms = MAX_LEASE_S * 1000ull;
        log_set_max_level(LOG_LEVEL_ERR);
        router_init();
        open_all();
}

static void teardown(void)
{
        close_all();
        testutil_rm_rf(tmpdir);
}

static struct http_req mkreq(enum http_method m, const char *path, const char *body)
{
        struct http_req r = { .method = m, .path = path, .agent = agent, .max_wait_ms = 600000 };
        if (body) {
                r.body = body;
                r.body_len = strlen(body);
                r.content_type = "application/json";
        }
        snprintf(r.peer, sizeof(r.peer), "127.0.0.1");
        return r;
}

/* Dispatch; a deferred operation runs here: 200 when it succeeded, 599 when it failed. */
static int call(struct http_req *req, struct http_reply *rep)
{
        *rep = (struct http_reply){ 0 };
        router_dispatch(req, rep);
        if (rep->defer == DEFER_WORKER || rep->defer == DEFER_AFTER) {
                struct op_job *job = TAKE_PTR(rep->job);
                job->done = NULL;
                agent_op_execute(job);
                json_decref(rep->json);
                agent_lock(agent);
                rep->json = agent_doc_locked(agent, agent->operation);
                const char *st = json_string_value(
                        json_object_get(json_object_get(rep->json, "operation"), "status"));
                agent_unlock(agent);
                rep->status = st && strcmp(st, "failed") == 0 ? 599 : 200;
                rep->defer = DEFER_NONE;
        }
        return rep->status;
}

static int post(const char *path, const char *body, char *code, size_t code_size)
{
        struct http_req req = mkreq(HTTP_POST, path, body);
        struct http_reply rep;
        int st = call(&req, &rep);
        if (code)
                snprintf(code, code_size, "%s",
                         json_string_value(json_object_get(rep.json, "code")) ?: "");
        http_reply_clear(&rep);
        return st;
}

static bool lease_active(void)
{
        agent_lock(agent);
        bool on = agent->lease.active;
        agent_unlock(agent);
        return on;
}

/* The state document's "lease" member (a new reference). */
static json_t *doc_lease(void)
{
        agent_lock(agent);
        json_t *doc = agent_doc_locked(agent, agent->operation);
        agent_unlock(agent);
        json_t *l = json_incref(json_object_get(doc, "lease"));
        json_decref(doc);
        return l;
}

/* The journal's lease records, newest last: their causes ("" for a grant or renewal). */
static int lease_causes(char causes[][32], int max)
{
        int n = 0;

        agent_lock(agent);
        for (size_t i = 0; i < journal_count(journal) && n < max; i++) {
                const struct journal_rec *r = journal_get(journal, i);
                if (strcmp(r->kind, "lease") != 0)
                        continue;
                json_t *j = json_loads(r->json, 0, NULL);
                ck_assert_ptr_nonnull(j);
                snprintf(causes[n++], 32, "%s",
                         json_string_value(json_object_get(j, "cause")) ?: "");
                json_decref(j);
        }
        agent_unlock(agent);
        return n;
}

static void set_faults(const char *spec)
{
        char path[300];

        snprintf(path, sizeof(path), "%s/sim/faults", tmpdir);
        if (!spec) {
                unlink(path);
                return;
        }
        FILE *f = fopen(path, "we");
        ck_assert_ptr_nonnull(f);
        fputs(spec, f);
        fclose(f);
}

START_TEST(test_failed_prepare_voids_lease)
{
        char causes[8][32], code[64];
        json_t *l;

        set_faults("prepare=EIO\n");
        ck_assert_int_eq(post("/v1/prepare", "{\"operation_id\":\"p1\",\"lease_seconds\":60}", code,
                              sizeof(code)),
                         599);
        set_faults(NULL);
        agent_lock(agent);
        ck_assert_int_eq(agent->state, LUO_STATE_NORMAL);
        agent_unlock(agent);
        /* no lease: not in memory, not in the document, ended in the journal */
        ck_assert(!lease_active());
        l = doc_lease();
        ck_assert(json_is_null(l));
        json_decref(l);
        ck_assert_int_eq(lease_causes(causes, 8), 2);
        ck_assert_str_eq(causes[0], "");
        ck_assert_str_eq(causes[1], "lease-void");
        /* a renewal finds none */
        ck_assert_int_eq(post("/v1/lease", "{\"operation_id\":\"p1\"}", code, sizeof(code)), 404);
        ck_assert_str_eq(code, "no-lease");
        /* and a restart brings none back */
        close_all();
        open_all();
        ck_assert(!lease_active());
}
END_TEST

START_TEST(test_prepare_keeps_cancel_ends)
{
        char causes[8][32], code[64];
        json_t *l;

        ck_assert_int_eq(
                post("/v1/prepare", "{\"operation_id\":\"p1\",\"lease_seconds\":60}", NULL, 0),
                200);
        ck_assert(lease_active());
        l = doc_lease();
        ck_assert_str_eq(json_string_value(json_object_get(l, "operation_id")), "p1");
        ck_assert_int_eq(json_integer_value(json_object_get(l, "lease_seconds")), 60);
        json_decref(l);
        /* a failed operation while prepared leaves the lease alone */
        set_faults("cancel=EBUSY\n");
        ck_assert_int_eq(post("/v1/cancel", NULL, code, sizeof(code)), 599);
        set_faults(NULL);
        ck_assert(lease_active());
        ck_assert_int_eq(post("/v1/cancel", NULL, NULL, 0), 200);
        ck_assert(!lease_active());
        ck_assert_int_eq(lease_causes(causes, 8), 2);
        ck_assert_str_eq(causes[1], "lease-cancelled");
}
END_TEST

START_TEST(test_renew_only_by_its_prepare)
{
        char code[64];
        struct http_reply rep;
        struct http_req req;

        ck_assert_int_eq(
                post("/v1/prepare", "{\"operation_id\":\"p1\",\"lease_seconds\":60}", NULL, 0),
                200);
        agent_lock(agent);
        uint64_t expires = agent->lease.expires_usec;
        agent_unlock(agent);
        uint64_t idx = agent_index(agent);

        req = mkreq(HTTP_POST, "/v1/lease", "{\"operation_id\":\"other\",\"lease_seconds\":600}");
        ck_assert_int_eq(call(&req, &rep), 409);
        ck_assert_str_eq(json_string_value(json_object_get(rep.json, "code")), "lease-mismatch");
        ck_assert_str_eq(json_string_value(json_object_get(rep.json, "operation_id")), "p1");
        http_reply_clear(&rep);
        agent_lock(agent);
        ck_assert_uint_eq(agent->lease.expires_usec, expires);
        ck_assert_uint_eq(agent->lease.seconds, 60);
        ck_assert_str_eq(agent->lease.operation_id, "p1");
        agent_unlock(agent);
        /* the refusal is audited, but no lease record was written */
        char causes[8][32];
        ck_assert_int_eq(lease_causes(causes, 8), 1);
        ck_assert_uint_ge(agent_index(agent), idx);

        /* its own id renews it */
        req = mkreq(HTTP_POST, "/v1/lease", "{\"operation_id\":\"p1\",\"lease_seconds\":600}");
        ck_assert_int_eq(call(&req, &rep), 200);
        ck_assert_int_eq(json_integer_value(json_object_get(rep.json, "lease_seconds")), 600);
        http_reply_clear(&rep);
        agent_lock(agent);
        ck_assert_uint_gt(agent->lease.expires_usec, expires);
        agent_unlock(agent);
        ck_assert_int_eq(lease_causes(causes, 8), 2);
        (void)code;
}
END_TEST

START_TEST(test_lease_seconds_bounds)
{
        static const struct {
                const char *body;
                int ok;
                uint64_t secs;
        } cases[] = {
                { "{}", 1, 0 },
                { "{\"lease_seconds\":1}", 1, 1 },
                { "{\"lease_seconds\":3600}", 1, MAX_LEASE_S },
                { "{\"lease_seconds\":0}", 0, 0 },
                { "{\"lease_seconds\":-1}", 0, 0 },
                { "{\"lease_seconds\":3601}", 0, 0 },
                { "{\"lease_seconds\":\"60\"}", 0, 0 },
                { "{\"lease_seconds\":1.5}", 0, 0 },
        };

        ck_assert_uint_eq(lease_max_seconds(agent), MAX_LEASE_S);
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                struct http_reply rep = { 0 };
                json_t *body = json_loads(cases[i].body, 0, NULL);
                uint64_t secs = 99;
                ck_assert_ptr_nonnull(body);
                int r = lease_parse_seconds(body, MAX_LEASE_S, &secs, &rep);
                ck_assert_msg(r == cases[i].ok, "%s: %d", cases[i].body, r);
                if (r) {
                        ck_assert_uint_eq(secs, cases[i].secs);
                        ck_assert_ptr_null(rep.json);
                } else {
                        ck_assert_int_eq(rep.status, 400);
                        ck_assert_str_eq(json_string_value(json_object_get(rep.json, "code")),
                                         "invalid-field");
                        ck_assert_str_eq(json_string_value(json_object_get(rep.json, "field")),
                                         "lease_seconds");
                }
                http_reply_clear(&rep);
                json_decref(body);
        }

        /* through the API: 400 before anything is journaled */
        char code[64];
        uint64_t idx = agent_index(agent);
        ck_assert_int_eq(post("/v1/prepare", "{\"lease_seconds\":0}", code, sizeof(code)), 400);
        ck_assert_str_eq(code, "invalid-field");
        ck_assert(!lease_active());
        agent_lock(agent);
        ck_assert_int_eq(agent->state, LUO_STATE_NORMAL);
        agent_unlock(agent);
        ck_assert_uint_ge(agent_index(agent), idx);
        char causes[8][32];
        ck_assert_int_eq(lease_causes(causes, 8), 0);
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("lease");
        TCase *tc = tcase_create("lease");

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_failed_prepare_voids_lease);
        tcase_add_test(tc, test_prepare_keeps_cancel_ends);
        tcase_add_test(tc, test_renew_only_by_its_prepare);
        tcase_add_test(tc, test_lease_seconds_bounds);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(suite)
