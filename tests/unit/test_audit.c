/*
 * test_audit.c: the audit trail without sockets: agent_audit()'s record
 * (exact members, identities, client bytes made safe, no operation_id when
 * there is none), one record per mutating request whatever its outcome
 * (answered at once or by the worker), the audit journal's own indexes
 * (the state index never moves), GET /v1/history?kind=audit paging,
 * requested_by from the identity, the storage probe, and the kernel's
 * "applied" counters that the crash tests rely on.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"
#include "config.h"
#include "http.h"
#include "journal.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "ops.h"
#include "router.h"
#include "agentfixture.h"
#include "testutil.h"

static void setup(void)
{
        testutil_mkdtemp(tmpdir, sizeof(tmpdir), "test_audit");
        memset(&cfg, 0, sizeof(cfg));
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

/* Dispatch; run a job on this thread (as the worker would); the answer's status. */
static int call(struct http_req *req)
{
        struct http_reply rep = { 0 };
        int status;

        router_dispatch(req, &rep);
        if (rep.defer == DEFER_WORKER || rep.defer == DEFER_AFTER) {
                struct op_job *job = TAKE_PTR(rep.job);
                bool after = rep.defer == DEFER_AFTER;
                job->done = NULL;
                agent_op_execute(job); /* frees it */
                if (!after) {
                        agent_lock(agent);
                        const char *st =
                                json_string_value(json_object_get(agent->operation, "status"));
                        rep.status = st && strcmp(st, "failed") == 0 ? 599 : 200;
                        agent_unlock(agent);
                }
        }
        status = rep.status;
        http_reply_clear(&rep);
        return status;
}

static size_t audit_count(void)
{
        struct journal *j = agent_audit_lock(agent);
        size_t n = journal_count(j);
        agent_audit_unlock(agent);
        return n;
}

/* The audit record at pos (0 = oldest), parsed; the caller decrefs. */
static json_t *audit_at(size_t pos)
{
        struct journal *j = agent_audit_lock(agent);
        const struct journal_rec *r = journal_get(j, pos);
        json_t *o = r ? json_loadb(r->json, r->len, 0, NULL) : NULL;
        agent_audit_unlock(agent);
        ck_assert_ptr_nonnull(o);
        return o;
}

static json_t *audit_last(void)
{
        size_t n = audit_count();
        ck_assert_uint_gt(n, 0);
        return audit_at(n - 1);
}

static const char *str(json_t *o, const char *key)
{
        return json_string_value(json_object_get(o, key));
}

static void assert_result(json_t *rec, int status, const char *code, bool replayed)
{
        json_t *res = json_object_get(rec, "result");
        ck_assert_int_eq(json_object_size(res), 3);
        ck_assert_int_eq(json_integer_value(json_object_get(res, "status")), status);
        ck_assert_str_eq(str(res, "code"), code);
        ck_assert(json_boolean_value(json_object_get(res, "replayed")) == replayed);
}

START_TEST(test_record_members)
{
        struct auth_identity who = { .role = ROLE_OPERATOR, .method = "token", .name = "ci-bot" };
        uint64_t idx = agent_index(agent);
        json_t *rec, *id;

        ck_assert_int_eq(agent_audit(agent, &(struct audit_entry){ .who = &who,
                                                                   .source = "::1",
                                                                   .action = "prepare",
                                                                   .operation_id = "op-1",
                                                                   .if_match = "\"7\"",
                                                                   .status = 412,
                                                                   .code = "precondition-failed" }),
                         0);
        /* Its own journal: the state index did not move. */
        ck_assert_uint_eq(agent_index(agent), idx);
        ck_assert_uint_eq(audit_count(), 1);
        rec = audit_last();
        ck_assert_int_eq(json_object_size(rec), 12);
        ck_assert_int_eq(json_integer_value(json_object_get(rec, "index")), 1);
        ck_assert_str_eq(str(rec, "kind"), "audit");
        ck_assert_int_eq(strlen(str(rec, "time")), strlen("2026-11-25T14:33:36.604Z"));
        ck_assert_str_eq(str(rec, "boot_id"), agent->info.boot_id);
        ck_assert_str_eq(str(rec, "state"), "normal");
        ck_assert_int_eq(json_integer_value(json_object_get(rec, "state_index")), (json_int_t)idx);
        id = json_object_get(rec, "identity");
        ck_assert_int_eq(json_object_size(id), 3);
        ck_assert_str_eq(str(id, "method"), "token");
        ck_assert_str_eq(str(id, "name"), "ci-bot");
        ck_assert_str_eq(str(id, "role"), "operator");
        ck_assert_str_eq(str(rec, "source"), "::1");
        ck_assert_str_eq(str(rec, "action"), "prepare");
        ck_assert_str_eq(str(rec, "operation_id"), "op-1");
        ck_assert_str_eq(str(rec, "precondition"), "\"7\"");
        assert_result(rec, 412, "precondition-failed", false);
        json_decref(rec);

        /* No identity yet (zeroed), no id, no If-Match: method none, no operation_id member. */
        struct auth_identity none = { 0 };
        ck_assert_int_eq(agent_audit(agent, &(struct audit_entry){ .who = &none,
                                                                   .source = "unix",
                                                                   .action = "finish",
                                                                   .operation_id = "",
                                                                   .status = 409,
                                                                   .code = "invalid-transition" }),
                         0);
        rec = audit_last();
        ck_assert_int_eq(json_integer_value(json_object_get(rec, "index")), 2);
        ck_assert_ptr_null(json_object_get(rec, "operation_id"));
        ck_assert(json_is_null(json_object_get(rec, "precondition")));
        id = json_object_get(rec, "identity");
        ck_assert_str_eq(str(id, "method"), "none");
        ck_assert(json_is_null(json_object_get(id, "name")));
        ck_assert_str_eq(str(id, "role"), "none");
        json_decref(rec);
}
END_TEST

START_TEST(test_client_bytes_made_safe)
{
        struct auth_identity who = { .role = ROLE_VIEWER, .method = "cert" };
        char if_match[600];
        json_t *rec;

        /* A subject with a control character and bytes that are not UTF-8. */
        snprintf(who.name, sizeof(who.name), "CN=a\x01z\xff\xfe");
        memset(if_match, 'x', sizeof(if_match) - 1);
        if_match[sizeof(if_match) - 1] = 0;
        if_match[3] = '\n';
        ck_assert_int_eq(agent_audit(agent, &(struct audit_entry){ .who = &who,
                                                                   .source = "127.0.0.1",
                                                                   .action = "cancel",
                                                                   .if_match = if_match,
                                                                   .status = 403,
                                                                   .code = "forbidden" }),
                         0);
        rec = audit_last();
        ck_assert_str_eq(str(json_object_get(rec, "identity"), "name"), "CN=a?z??");
        const char *p = str(rec, "precondition");
        ck_assert_uint_eq(strlen(p), AUDIT_PRECONDITION_MAX);
        ck_assert_int_eq(p[3], '?');
        json_decref(rec);
}
END_TEST

START_TEST(test_one_record_per_request)
{
        struct http_req req;
        json_t *rec;
        uint64_t idx;

        /* Accepted (the worker answers): one record, after the operation's own. */
        req = mkreq(HTTP_POST, "/v1/prepare", "{\"operation_id\":\"u-1\"}");
        ck_assert_int_eq(call(&req), 200);
        ck_assert_uint_eq(audit_count(), 1);
        rec = audit_last();
        ck_assert_str_eq(str(rec, "action"), "prepare");
        ck_assert_str_eq(str(rec, "operation_id"), "u-1");
        ck_assert_str_eq(str(rec, "source"), "127.0.0.1");
        ck_assert_str_eq(str(json_object_get(rec, "identity"), "method"), "none");
        assert_result(rec, 200, "ok", false);
        ck_assert_str_eq(str(rec, "state"), "prepared");
        ck_assert_int_eq(json_integer_value(json_object_get(rec, "state_index")),
                         (json_int_t)agent_index(agent));
        json_decref(rec);
        /* requested_by is the identity (none: "anonymous"), not the address. */
        agent_lock(agent);
        ck_assert_str_eq(str(agent->operation, "requested_by"), "anonymous");
        agent_unlock(agent);

        /* Replay, refusals, a bad body: each exactly one record, the index never moved. */
        idx = agent_index(agent);
        static const struct {
                enum http_method m;
                const char *path, *body, *if_match, *code, *op_id;
                int status;
                bool replayed;
        } cases[] = {
                { HTTP_POST, "/v1/prepare", "{\"operation_id\":\"u-1\"}", NULL, "replayed", "u-1",
                  200, true },
                { HTTP_POST, "/v1/finish", NULL, NULL, "invalid-transition", NULL, 409, false },
                { HTTP_POST, "/v1/cancel", "{\"operation_id\":\"u-1\"}", NULL,
                  "operation-id-conflict", "u-1", 409, false },
                { HTTP_POST, "/v1/cancel", NULL, "\"999\"", "precondition-failed", NULL, 412,
                  false },
                { HTTP_POST, "/v1/cancel", "{\"operation_id\":\"not valid\"}", NULL,
                  "invalid-field", NULL, 400, false },
                { HTTP_POST, "/v1/cancel", "{\"x\":1}", NULL, "unknown-field", NULL, 400, false },
                { HTTP_POST, "/v1/cancel", "[", NULL, "malformed-json", NULL, 400, false },
                { HTTP_PUT, "/v1/kernel", "{}", NULL, "invalid-field", NULL, 400, false },
                { HTTP_POST, "/v1/reboot", NULL, NULL, "no-kernel-staged", NULL, 409, false },
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                size_t n = audit_count();
                req = mkreq(cases[i].m, cases[i].path, cases[i].body);
                req.if_match = cases[i].if_match;
                ck_assert_int_eq(call(&req), cases[i].status);
                ck_assert_uint_eq(audit_count(), n + 1);
                rec = audit_last();
                assert_result(rec, cases[i].status, cases[i].code, cases[i].replayed);
                if (cases[i].op_id)
                        ck_assert_str_eq(str(rec, "operation_id"), cases[i].op_id);
                else
                        ck_assert_ptr_null(json_object_get(rec, "operation_id"));
                if (cases[i].if_match)
                        ck_assert_str_eq(str(rec, "precondition"), cases[i].if_match);
                json_decref(rec);
        }
        ck_assert_uint_eq(agent_index(agent), idx);

        /* Unstage (nothing staged): accepted, an id of the agent's own making. */
        req = mkreq(HTTP_DELETE, "/v1/kernel", NULL);
        ck_assert_int_eq(call(&req), 200);
        rec = audit_last();
        ck_assert_str_eq(str(rec, "action"), "unstage");
        agent_lock(agent);
        ck_assert_str_eq(str(rec, "operation_id"), str(agent->operation, "id"));
        agent_unlock(agent);
        json_decref(rec);
}
END_TEST

START_TEST(test_history_kind_audit)
{
        struct http_req req;
        struct http_reply rep = { 0 };
        json_t *recs;

        for (int i = 0; i < 5; i++) {
                req = mkreq(HTTP_POST, "/v1/finish", NULL);
                ck_assert_int_eq(call(&req), 409);
        }
        req = mkreq(HTTP_GET, "/v1/history", NULL);
        req.args[req.n_args++] = (struct http_arg){ "kind", "audit" };
        req.args[req.n_args++] = (struct http_arg){ "limit", "2" };
        router_dispatch(&req, &rep);
        ck_assert_int_eq(rep.status, 200);
        recs = json_object_get(rep.json, "records");
        ck_assert_int_eq(json_array_size(recs), 2);
        ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(recs, 0), "index")), 4);
        ck_assert(json_is_true(json_object_get(rep.json, "more")));
        ck_assert_int_eq(json_integer_value(json_object_get(rep.json, "first_index")), 1);
        ck_assert_int_eq(json_integer_value(json_object_get(rep.json, "last_index")), 5);
        http_reply_clear(&rep);

        req = mkreq(HTTP_GET, "/v1/history", NULL);
        req.args[req.n_args++] = (struct http_arg){ "kind", "audit" };
        req.args[req.n_args++] = (struct http_arg){ "since", "3" };
        router_dispatch(&req, &rep);
        recs = json_object_get(rep.json, "records");
        ck_assert_int_eq(json_array_size(recs), 2);
        ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(recs, 0), "index")), 4);
        ck_assert(json_is_false(json_object_get(rep.json, "more")));
        http_reply_clear(&rep);

        /* The state journal has none; mixing the two index spaces is refused. */
        req = mkreq(HTTP_GET, "/v1/history", NULL);
        router_dispatch(&req, &rep);
        json_t *r;
        size_t k;
        json_array_foreach (json_object_get(rep.json, "records"), k, r)
                ck_assert_str_ne(str(r, "kind"), "audit");
        http_reply_clear(&rep);
        req = mkreq(HTTP_GET, "/v1/history", NULL);
        req.args[req.n_args++] = (struct http_arg){ "kind", "operation,audit" };
        router_dispatch(&req, &rep);
        ck_assert_int_eq(rep.status, 400);
        ck_assert_str_eq(str(rep.json, "code"), "invalid-query");
        http_reply_clear(&rep);

        /* Durable: a new agent on the same directory reads them back. */
        close_all();
        open_all();
        ck_assert_uint_eq(audit_count(), 5);
}
END_TEST

START_TEST(test_requested_by)
{
        char buf[200];
        struct auth_identity who = { 0 };

        agent_requested_by(&who, buf, sizeof(buf));
        ck_assert_str_eq(buf, "anonymous");
        agent_requested_by(NULL, buf, sizeof(buf));
        ck_assert_str_eq(buf, "anonymous");
        who = (struct auth_identity){ .role = ROLE_OPERATOR, .method = "none" };
        agent_requested_by(&who, buf, sizeof(buf));
        ck_assert_str_eq(buf, "anonymous");
        who = (struct auth_identity){ .role = ROLE_OPERATOR, .method = "token", .name = "ci" };
        agent_requested_by(&who, buf, sizeof(buf));
        ck_assert_str_eq(buf, "token:ci");
        who = (struct auth_identity){ .role = ROLE_OPERATOR, .method = "cert", .name = "CN=x" };
        agent_requested_by(&who, buf, sizeof(buf));
        ck_assert_str_eq(buf, "cert:CN=x");
        who = (struct auth_identity){ .role = ROLE_OPERATOR,
                                      .method = "peercred",
                                      .name = "uid:0" };
        agent_requested_by(&who, buf, sizeof(buf));
        ck_assert_str_eq(buf, "uid:0");
}
END_TEST

START_TEST(test_storage_probe)
{
        uint64_t avail = 0;
        char detail[160];

        ck_assert_int_eq(agent_storage_check(agent, 1, &avail), 0);
        ck_assert_uint_gt(avail, 0);
        ck_assert_int_eq(agent_storage_check(agent, UINT64_MAX, &avail), -ENOSPC);
        ck_assert(agent_journal_health(agent, detail, sizeof(detail)));
        ck_assert_str_eq(detail, "writable");
        /* A failed append the probe cannot see recover (EIO) shows until one succeeds. */
        agent_lock(agent);
        agent->journal_error = -EIO;
        agent_unlock(agent);
        ck_assert(!agent_journal_health(agent, detail, sizeof(detail)));
        ck_assert_str_eq(detail, "last append failed: EIO");
        /* A full directory that has room again has recovered. */
        agent_lock(agent);
        agent->journal_error = -ENOSPC;
        agent_unlock(agent);
        ck_assert(agent_journal_health(agent, detail, sizeof(detail)));
        agent_lock(agent);
        agent->journal_error = 0;
        agent_unlock(agent);
}
END_TEST

/* kernel.json counts what the simulated kernel carried out, once per call that did it. */
START_TEST(test_sim_applied_counters)
{
        struct http_req req;
        char path[512], *text = NULL;
        size_t len = 0;
        FILE *f;

        for (int i = 0; i < 2; i++) {
                req = mkreq(HTTP_POST, "/v1/prepare", NULL);
                ck_assert_int_eq(call(&req), 200);
                req = mkreq(HTTP_POST, "/v1/cancel", NULL);
                ck_assert_int_eq(call(&req), 200);
        }
        req = mkreq(HTTP_POST, "/v1/cancel", NULL); /* refused: not counted */
        ck_assert_int_eq(call(&req), 409);
        snprintf(path, sizeof(path), "%s/sim/kernel.json", tmpdir);
        f = fopen(path, "re");
        ck_assert_ptr_nonnull(f);
        ck_assert_int_gt(getdelim(&text, &len, 0, f), 0);
        fclose(f);
        json_t *k = json_loads(text, 0, NULL), *ap = json_object_get(k, "applied");
        free(text);
        ck_assert_int_eq(json_integer_value(json_object_get(ap, "prepare")), 2);
        ck_assert_int_eq(json_integer_value(json_object_get(ap, "cancel")), 2);
        ck_assert_int_eq(json_integer_value(json_object_get(ap, "finish")), 0);
        ck_assert_int_eq(json_integer_value(json_object_get(ap, "load")), 0);
        json_decref(k);
        /* They survive a restart of the backend. */
        close_all();
        open_all();
        req = mkreq(HTTP_POST, "/v1/prepare", NULL);
        ck_assert_int_eq(call(&req), 200);
        f = fopen(path, "re");
        text = NULL;
        ck_assert_int_gt(getdelim(&text, &len, 0, f), 0);
        fclose(f);
        k = json_loads(text, 0, NULL);
        free(text);
        ck_assert_int_eq(
                json_integer_value(json_object_get(json_object_get(k, "applied"), "prepare")), 3);
        json_decref(k);
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("audit");
        TCase *tc = tcase_create("core");

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_record_members);
        tcase_add_test(tc, test_client_bytes_made_safe);
        tcase_add_test(tc, test_one_record_per_request);
        tcase_add_test(tc, test_history_kind_audit);
        tcase_add_test(tc, test_requested_by);
        tcase_add_test(tc, test_storage_probe);
        tcase_add_test(tc, test_sim_applied_counters);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(suite)
