/*
 * test_agent.c: the agent's model and handlers without sockets: a simulated
 * backend and a journal in a temporary directory, requests built by hand,
 * operations executed synchronously (agent_op_execute on this thread).
 * Covers query and body parsing, the errno -> HTTP table, the transition
 * table as the API enforces it, If-Match, idempotent replay, staging checks,
 * history paging and reconciliation after a simulated reboot.
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/sha.h>

#include "agent.h"
#include "config.h"
#include "http.h"
#include "journal.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "ops.h"
#include "problem.h"
#include "router.h"
#include "snapshot.h"
#include "staging.h"
#include "agentfixture.h"
#include "testutil.h"

static void setup(void)
{
        static char *staging_dirs[1] = { tmpdir };

        testutil_mkdtemp(tmpdir, sizeof(tmpdir), "test_agent");
        staging_set_allowed_dirs(staging_dirs, 1); /* files are staged from tmpdir */
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

/* A request as httpd.c would build it. */
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

static void add_arg(struct http_req *r, const char *k, const char *v)
{
        r->args[r->n_args].key = k;
        r->args[r->n_args].value = v;
        r->n_args++;
}

/* Dispatch; run a deferred job at once; return the status. */
static int call(struct http_req *req, struct http_reply *rep)
{
        *rep = (struct http_reply){ 0 };
        router_dispatch(req, rep);
        if (rep->defer == DEFER_WORKER || rep->defer == DEFER_AFTER) {
                struct op_job *job = TAKE_PTR(rep->job);
                int keep_status = rep->status;
                bool after = rep->defer == DEFER_AFTER;
                job->done = NULL;
                /* keep the job to read its result: run it with a done hook */
                agent_op_execute(job); /* frees the job (done == NULL) */
                if (!after) {
                        /* the result is the current document or the recorded failure */
                        json_decref(rep->json);
                        agent_lock(agent);
                        rep->json = agent_doc_locked(agent, agent->operation);
                        agent_unlock(agent);
                        const char *st = json_string_value(
                                json_object_get(json_object_get(rep->json, "operation"), "status"));
                        rep->status = st && strcmp(st, "failed") == 0 ? 599 : 200;
                } else
                        rep->status = keep_status;
                rep->defer = DEFER_NONE;
        }
        return rep->status;
}

static const char *code_of(struct http_reply *rep)
{
        return json_string_value(json_object_get(rep->json, "code"));
}

START_TEST(test_errno_map)
{
        ck_assert_int_eq(problem_from_errno(-EINVAL).status, 409);
        ck_assert_str_eq(problem_from_errno(-EINVAL).code, "invalid-transition");
        ck_assert_int_eq(problem_from_errno(EBUSY).status, 409);
        ck_assert_str_eq(problem_from_errno(EBUSY).code, "kernel-busy");
        ck_assert_int_eq(problem_from_errno(-EAGAIN).status, 503);
        ck_assert_str_eq(problem_from_errno(-EAGAIN).code, "kernel-interrupted");
        ck_assert_int_eq(problem_from_errno(-EPERM).status, 500);
        ck_assert_str_eq(problem_from_errno(-EPERM).code, "kernel-permission-denied");
        ck_assert_str_eq(problem_from_errno(-ENOEXEC).code, "no-kernel-staged");
        ck_assert_int_eq(problem_from_errno(-EIO).status, 500);
        ck_assert_str_eq(problem_from_errno(-EIO).code, "kernel-error");
        json_t *p = problem_new(409, "kernel-busy", "x");
        ck_assert_str_eq(json_string_value(json_object_get(p, "type")),
                         "urn:luofleet:problem:kernel-busy");
        ck_assert_str_eq(json_string_value(json_object_get(p, "title")),
                         "The kernel orchestrator is busy");
        ck_assert_int_eq(json_integer_value(json_object_get(p, "status")), 409);
        json_decref(p);
}
END_TEST

START_TEST(test_state_document)
{
        struct http_req req = mkreq(HTTP_GET, "/v1/state", NULL);
        struct http_reply rep;

        ck_assert_int_eq(call(&req, &rep), 200);
        ck_assert_ptr_nonnull(rep.snap);
        json_t *doc = json_loads(rep.snap->json, 0, NULL);
        ck_assert_str_eq(json_string_value(json_object_get(doc, "state")), "normal");
        ck_assert_int_eq(json_integer_value(json_object_get(doc, "index")), 1);
        ck_assert_str_eq(json_string_value(json_object_get(doc, "backend")), "sim");
        ck_assert_str_eq(json_string_value(json_object_get(doc, "kernel")), "6.1.0-test");
        ck_assert_str_eq(json_string_value(json_object_get(doc, "hostname")), "unit-host");
        ck_assert(json_is_null(json_object_get(doc, "staged")));
        ck_assert(json_is_null(json_object_get(doc, "operation")));
        ck_assert(uuid_valid(json_string_value(json_object_get(doc, "boot_id"))));
        ck_assert(json_is_null(json_object_get(doc, "lease")));
        ck_assert(json_is_null(json_object_get(doc, "last_update")));
        /* The kernel interface the backend describes; no broker in this fixture: no sessions. */
        ck_assert_str_eq(json_string_value(json_object_get(doc, "interface")),
                         "sim (sessions: mainline rules; global state: v3)");
        ck_assert(json_is_null(json_object_get(doc, "sessions")));
        ck_assert_int_eq(json_object_size(doc), 14);
        json_decref(doc);
        http_reply_clear(&rep);

        req.if_none_match = "\"1\"";
        ck_assert_int_eq(call(&req, &rep), 304);
        http_reply_clear(&rep);
        req.if_none_match = "\"7\", W/\"1\"";
        ck_assert_int_eq(call(&req, &rep), 304);
        http_reply_clear(&rep);
        req.if_none_match = "\"2\"";
        ck_assert_int_eq(call(&req, &rep), 200);
        http_reply_clear(&rep);
}
END_TEST

START_TEST(test_state_query)
{
        static const struct {
                const char *index, *wait;
                int status;
                enum http_defer defer;
        } cases[] = {
                { "1", "30s", 0, DEFER_LONGPOLL }, /* current index: wait */
                { "0", "30s", 200, DEFER_NONE },   /* behind: answer */
                { "5", "30s", 200, DEFER_NONE },   /* from the future: answer */
                { "1", "0", 200, DEFER_NONE },     /* no wait */
                { "1", NULL, 0, DEFER_LONGPOLL },  /* default wait */
                { "-1", NULL, 400, DEFER_NONE },
                { "abc", NULL, 400, DEFER_NONE },
                { "99999999999999999999", NULL, 400, DEFER_NONE },
                { "1", "10x", 400, DEFER_NONE },
                { "1", "-5s", 400, DEFER_NONE },
                { NULL, "5s", 400, DEFER_NONE }, /* wait without index */
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct http_req req = mkreq(HTTP_GET, "/v1/state", NULL);
                struct http_reply rep;
                if (cases[i].index)
                        add_arg(&req, "index", cases[i].index);
                if (cases[i].wait)
                        add_arg(&req, "wait", cases[i].wait);
                ck_assert_int_eq(call(&req, &rep), cases[i].status);
                ck_assert_int_eq(rep.defer, cases[i].defer);
                if (cases[i].status == 400)
                        ck_assert_str_eq(code_of(&rep), "invalid-query");
                http_reply_clear(&rep);
        }
        /* clamped to max_wait */
        struct http_req req = mkreq(HTTP_GET, "/v1/state", NULL);
        struct http_reply rep;
        req.max_wait_ms = 1000;
        add_arg(&req, "index", "1");
        add_arg(&req, "wait", "60m");
        uint64_t before = now_mono_usec();
        ck_assert_int_eq(call(&req, &rep), 0);
        ck_assert_uint_le(rep.wait_deadline, now_mono_usec() + 1000 * 1000);
        ck_assert_uint_ge(rep.wait_deadline, before + 1000 * 1000);
        http_reply_clear(&rep);
        /* duplicates */
        req = mkreq(HTTP_GET, "/v1/state", NULL);
        add_arg(&req, "index", "1");
        add_arg(&req, "index", "2");
        ck_assert_int_eq(call(&req, &rep), 400);
        http_reply_clear(&rep);
}
END_TEST

START_TEST(test_routes)
{
        struct http_req req = mkreq(HTTP_GET, "/v1/nothing", NULL);
        struct http_reply rep;

        ck_assert_int_eq(call(&req, &rep), 404);
        ck_assert_str_eq(code_of(&rep), "not-found");
        http_reply_clear(&rep);
        req = mkreq(HTTP_POST, "/v1/state", NULL);
        ck_assert_int_eq(call(&req, &rep), 405);
        ck_assert_str_eq(code_of(&rep), "method-not-allowed");
        ck_assert_str_eq(rep.allow, "GET, HEAD");
        http_reply_clear(&rep);
        req = mkreq(HTTP_GET, "/v1/prepare", NULL);
        ck_assert_int_eq(call(&req, &rep), 405);
        ck_assert_str_eq(rep.allow, "POST");
        http_reply_clear(&rep);
        req = mkreq(HTTP_POST, "/v1/kernel", NULL);
        ck_assert_int_eq(call(&req, &rep), 405);
        ck_assert_str_eq(rep.allow, "PUT, GET, HEAD, DELETE");
        http_reply_clear(&rep);
        req = mkreq(HTTP_HEAD, "/healthz", NULL);
        ck_assert_int_eq(call(&req, &rep), 200);
        http_reply_clear(&rep);
}
END_TEST

START_TEST(test_bodies)
{
        static const struct {
                const char *body, *ctype;
                int status;
                const char *code;
        } cases[] = {
                { "{\"reason\":\"x\"", "application/json", 400, "malformed-json" },
                { "[1]", "application/json", 400, "malformed-json" },
                { "{\"a\":1,\"a\":2}", "application/json", 400, "malformed-json" },
                { "{\"reason\":\"\xff\"}", "application/json", 400, "malformed-json" },
                { "{\"bogus\":1}", "application/json", 400, "unknown-field" },
                { "{\"reason\":5}", "application/json", 400, "invalid-field" },
                { "{\"operation_id\":\"a b\"}", "application/json", 400, "invalid-field" },
                { "{\"operation_id\":\"\"}", "application/json", 400, "invalid-field" },
                { "{\"operation_id\":"
                  "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}",
                  "application/json", 400, "invalid-field" },
                { "{\"reason\":\"x\"}", "text/plain", 415, "unsupported-media-type" },
                { "{\"reason\":\"x\"}", NULL, 415, "unsupported-media-type" },
                { "{\"reason\":\"x\"}", "application/json; charset=utf-8", 200, NULL },
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct http_req req = mkreq(HTTP_POST, "/v1/prepare", cases[i].body);
                struct http_reply rep;
                req.content_type = cases[i].ctype;
                ck_assert_msg(call(&req, &rep) == cases[i].status, "case %zu: %d", i, rep.status);
                if (cases[i].code)
                        ck_assert_str_eq(code_of(&rep), cases[i].code);
                http_reply_clear(&rep);
        }
}
END_TEST

/* Client bytes that are not UTF-8 never cost a problem document its body (found by fuzz_body). */
START_TEST(test_problem_bodies_survive_bad_utf8)
{
        char body[128];
        struct http_req req;
        struct http_reply rep;

        /* an unknown member whose name is clipped in the middle of a character */
        snprintf(body, sizeof(body), "{\"%s\xc3\xa9\":1}",
                 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
        req = mkreq(HTTP_POST, "/v1/prepare", body);
        ck_assert_int_eq(call(&req, &rep), 400);
        ck_assert_ptr_nonnull(rep.json);
        ck_assert_str_eq(code_of(&rep), "unknown-field");
        ck_assert_ptr_nonnull(json_string_value(json_object_get(rep.json, "field")));
        ck_assert_ptr_nonnull(json_string_value(json_object_get(rep.json, "detail")));
        http_reply_clear(&rep);

        /* a bad escape right before a non-ASCII byte: jansson's message cuts the character */
        req = mkreq(HTTP_POST, "/v1/prepare", "{\"kernel\\\xc4\x84\":1}");
        ck_assert_int_eq(call(&req, &rep), 400);
        ck_assert_ptr_nonnull(rep.json);
        ck_assert_str_eq(code_of(&rep), "malformed-json");
        http_reply_clear(&rep);

        /* a method name that is not UTF-8, on a 405 */
        req = mkreq(HTTP_OTHER, "/v1/state", NULL);
        req.method_raw = "\xff\xfe";
        ck_assert_int_eq(call(&req, &rep), 405);
        ck_assert_ptr_nonnull(rep.json);
        ck_assert_str_eq(code_of(&rep), "method-not-allowed");
        http_reply_clear(&rep);
}
END_TEST

START_TEST(test_transitions_and_idempotency)
{
        struct http_req req;
        struct http_reply rep;

        /* finish and cancel from normal: 409 with the allowed actions */
        req = mkreq(HTTP_POST, "/v1/finish", NULL);
        ck_assert_int_eq(call(&req, &rep), 409);
        ck_assert_str_eq(code_of(&rep), "invalid-transition");
        ck_assert_str_eq(json_string_value(json_object_get(rep.json, "state")), "normal");
        ck_assert_str_eq(
                json_string_value(json_array_get(json_object_get(rep.json, "allowed_actions"), 0)),
                "prepare");
        http_reply_clear(&rep);

        /* stale If-Match */
        req = mkreq(HTTP_POST, "/v1/prepare", NULL);
        req.if_match = "\"0\"";
        ck_assert_int_eq(call(&req, &rep), 412);
        ck_assert_str_eq(code_of(&rep), "precondition-failed");
        ck_assert_int_eq(json_integer_value(json_object_get(rep.json, "current_index")), 1);
        http_reply_clear(&rep);

        req = mkreq(HTTP_POST, "/v1/prepare", "{\"operation_id\":\"op-1\",\"reason\":\"t\"}");
        req.if_match = "\"1\"";
        ck_assert_int_eq(call(&req, &rep), 200);
        ck_assert_str_eq(json_string_value(json_object_get(rep.json, "state")), "prepared");
        uint64_t idx = agent_index(agent);
        ck_assert_int_eq(idx, 4); /* op running, transition, op succeeded */
        http_reply_clear(&rep);

        /* replay: the first result, nothing recorded */
        req = mkreq(HTTP_POST, "/v1/prepare", "{\"operation_id\":\"op-1\"}");
        ck_assert_int_eq(call(&req, &rep), 200);
        ck_assert_str_eq(
                json_string_value(json_object_get(json_object_get(rep.json, "operation"), "id")),
                "op-1");
        ck_assert_str_eq(json_string_value(
                                 json_object_get(json_object_get(rep.json, "operation"), "reason")),
                         "t");
        ck_assert_int_eq(agent_index(agent), idx);
        http_reply_clear(&rep);

        /* the same id for another action */
        req = mkreq(HTTP_POST, "/v1/cancel", "{\"operation_id\":\"op-1\"}");
        ck_assert_int_eq(call(&req, &rep), 409);
        ck_assert_str_eq(code_of(&rep), "operation-id-conflict");
        http_reply_clear(&rep);

        /* reboot without a staged kernel */
        req = mkreq(HTTP_POST, "/v1/reboot", NULL);
        ck_assert_int_eq(call(&req, &rep), 409);
        ck_assert_str_eq(code_of(&rep), "no-kernel-staged");
        http_reply_clear(&rep);

        /* survives a restart */
        close_all();
        open_all();
        ck_assert_int_eq(agent_index(agent), idx);
        req = mkreq(HTTP_POST, "/v1/prepare", "{\"operation_id\":\"op-1\"}");
        ck_assert_int_eq(call(&req, &rep), 200);
        ck_assert_int_eq(agent_index(agent), idx);
        http_reply_clear(&rep);

        req = mkreq(HTTP_POST, "/v1/cancel", NULL);
        ck_assert_int_eq(call(&req, &rep), 200);
        ck_assert_str_eq(json_string_value(json_object_get(rep.json, "state")), "normal");
        http_reply_clear(&rep);
}
END_TEST

static void write_file(const char *path, const char *data, char hex[65])
{
        uint8_t md[32];
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write_all(fd, data, strlen(data)), 0);
        close(fd);
        SHA256((const uint8_t *)data, strlen(data), md);
        hex_encode(md, 32, hex);
}

START_TEST(test_staging_and_reboot)
{
        char kpath[300], ipath[300], khex[65], ihex[65], body[1200];
        struct http_req req;
        struct http_reply rep;

        snprintf(kpath, sizeof(kpath), "%s/vmlinuz", tmpdir);
        snprintf(ipath, sizeof(ipath), "%s/initrd", tmpdir);
        write_file(kpath, "kernel bytes", khex);
        write_file(ipath, "initrd bytes", ihex);

        /* wrong digest: 422, nothing staged */
        snprintf(body, sizeof(body),
                 "{\"kernel\":{\"path\":\"%s\",\"sha256\":\"%s\"},\"initrd\":{\"path\":\"%s\","
                 "\"sha256\":\"%s\"},\"cmdline\":\"quiet\"}",
                 kpath, ihex, ipath, ihex);
        req = mkreq(HTTP_PUT, "/v1/kernel", body);
        ck_assert_int_eq(call(&req, &rep), 599);
        http_reply_clear(&rep);
        agent_lock(agent);
        ck_assert_ptr_null(agent->staged);
        ck_assert_str_eq(json_string_value(json_object_get(
                                 json_object_get(agent->operation, "error"), "code")),
                         "digest-mismatch");
        agent_unlock(agent);

        /* a FIFO is refused without being opened (an open would block the worker) */
        char fifo[300];
        snprintf(fifo, sizeof(fifo), "%s/fifo", tmpdir);
        ck_assert_int_eq(mkfifo(fifo, 0600), 0);
        snprintf(body, sizeof(body), "{\"kernel\":{\"path\":\"%s\",\"sha256\":\"%s\"}}", fifo,
                 khex);
        req = mkreq(HTTP_PUT, "/v1/kernel", body);
        ck_assert_int_eq(call(&req, &rep), 599);
        http_reply_clear(&rep);
        agent_lock(agent);
        ck_assert_str_eq(json_string_value(json_object_get(
                                 json_object_get(agent->operation, "error"), "code")),
                         "not-a-regular-file");
        agent_unlock(agent);

        /* bad paths are 400 before anything runs */
        req = mkreq(HTTP_PUT, "/v1/kernel",
                    "{\"kernel\":{\"path\":\"relative\",\"sha256\":"
                    "\"0000000000000000000000000000000000000000000000000000000000000000\"}}");
        ck_assert_int_eq(call(&req, &rep), 400);
        ck_assert_str_eq(code_of(&rep), "invalid-field");
        http_reply_clear(&rep);
        ck_assert(!staging_path_valid("/boot/../etc/shadow"));
        ck_assert(!staging_path_valid("/boot/.."));
        ck_assert(staging_path_valid("/boot/..vmlinuz"));
        ck_assert(!staging_path_valid("/a\nb"));
        ck_assert(!staging_sha256_valid("abc"));

        snprintf(body, sizeof(body),
                 "{\"kernel\":{\"path\":\"%s\",\"sha256\":\"%s\"},\"initrd\":{\"path\":\"%s\","
                 "\"sha256\":\"%s\"},\"cmdline\":\"quiet\"}",
                 kpath, khex, ipath, ihex);
        req = mkreq(HTTP_PUT, "/v1/kernel", body);
        ck_assert_int_eq(call(&req, &rep), 200);
        json_t *st = json_object_get(rep.json, "staged");
        ck_assert_str_eq(
                json_string_value(json_object_get(json_object_get(st, "kernel"), "sha256")), khex);
        ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(st, "kernel"), "size")),
                         12);
        ck_assert(json_is_true(json_object_get(st, "loaded")));
        http_reply_clear(&rep);

        req = mkreq(HTTP_POST, "/v1/prepare", NULL);
        ck_assert_int_eq(call(&req, &rep), 200);
        http_reply_clear(&rep);
        char old_boot[40];
        snprintf(old_boot, sizeof(old_boot), "%s", agent->info.boot_id);

        /* reboot: 202 first; the sim moves to frozen and asks for the jump */
        req = mkreq(HTTP_POST, "/v1/reboot", "{\"operation_id\":\"rb\"}");
        ck_assert_int_eq(call(&req, &rep), 202);
        ck_assert(rep.close);
        http_reply_clear(&rep);
        agent_lock(agent);
        ck_assert_int_eq(agent->state, LUO_STATE_FROZEN);
        agent_unlock(agent);
        uint64_t before = agent_index(agent);

        /* the "new kernel": reopen everything */
        close_all();
        open_all();
        agent_lock(agent);
        ck_assert_int_eq(agent->state, LUO_STATE_UPDATED);
        ck_assert_str_ne(agent->info.boot_id, old_boot);
        ck_assert_ptr_null(agent->staged);
        ck_assert_str_eq(json_string_value(json_object_get(agent->operation, "status")),
                         "succeeded");
        agent_unlock(agent);
        ck_assert_uint_gt(agent_index(agent), before);

        /* history has the reboot record */
        req = mkreq(HTTP_GET, "/v1/history", NULL);
        add_arg(&req, "kind", "reboot");
        ck_assert_int_eq(call(&req, &rep), 200);
        json_t *recs = json_object_get(rep.json, "records");
        ck_assert_int_eq(json_array_size(recs), 1);
        json_t *rb = json_array_get(recs, 0);
        ck_assert_str_eq(json_string_value(json_object_get(rb, "from_boot_id")), old_boot);
        ck_assert(json_is_true(json_object_get(rb, "planned")));
        ck_assert_str_eq(json_string_value(json_object_get(rb, "operation_id")), "rb");
        http_reply_clear(&rep);

        req = mkreq(HTTP_POST, "/v1/finish", NULL);
        ck_assert_int_eq(call(&req, &rep), 200);
        ck_assert_str_eq(json_string_value(json_object_get(rep.json, "state")), "normal");
        http_reply_clear(&rep);
}
END_TEST

START_TEST(test_history_paging)
{
        struct http_req req;
        struct http_reply rep;

        for (int i = 0; i < 5; i++) {
                req = mkreq(HTTP_POST, i % 2 ? "/v1/cancel" : "/v1/prepare", NULL);
                ck_assert_int_eq(call(&req, &rep), 200);
                http_reply_clear(&rep);
        }
        uint64_t last = agent_index(agent); /* 1 + 5 * 3 */
        ck_assert_int_eq(last, 16);

        req = mkreq(HTTP_GET, "/v1/history", NULL);
        add_arg(&req, "limit", "3");
        ck_assert_int_eq(call(&req, &rep), 200);
        json_t *recs = json_object_get(rep.json, "records");
        ck_assert_int_eq(json_array_size(recs), 3);
        ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(recs, 0), "index")), 14);
        ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(recs, 2), "index")), 16);
        ck_assert(json_is_true(json_object_get(rep.json, "more")));
        ck_assert_int_eq(json_integer_value(json_object_get(rep.json, "first_index")), 1);
        ck_assert_int_eq(json_integer_value(json_object_get(rep.json, "last_index")), 16);
        http_reply_clear(&rep);

        req = mkreq(HTTP_GET, "/v1/history", NULL);
        add_arg(&req, "since", "10");
        add_arg(&req, "limit", "4");
        ck_assert_int_eq(call(&req, &rep), 200);
        recs = json_object_get(rep.json, "records");
        ck_assert_int_eq(json_array_size(recs), 4);
        ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(recs, 0), "index")), 11);
        ck_assert(json_is_true(json_object_get(rep.json, "more")));
        http_reply_clear(&rep);

        req = mkreq(HTTP_GET, "/v1/history", NULL);
        add_arg(&req, "since", "0");
        add_arg(&req, "kind", "transition");
        ck_assert_int_eq(call(&req, &rep), 200);
        ck_assert_int_eq(json_array_size(json_object_get(rep.json, "records")), 5);
        ck_assert(json_is_false(json_object_get(rep.json, "more")));
        http_reply_clear(&rep);

        static const char *const bad[][2] = {
                { "limit", "0" }, { "limit", "1001" }, { "since", "x" }, { "kind", "A;B" }
        };
        for (size_t i = 0; i < 4; i++) {
                req = mkreq(HTTP_GET, "/v1/history", NULL);
                add_arg(&req, bad[i][0], bad[i][1]);
                ck_assert_int_eq(call(&req, &rep), 400);
                ck_assert_str_eq(code_of(&rep), "invalid-query");
                http_reply_clear(&rep);
        }
}
END_TEST

START_TEST(test_kernel_fault)
{
        struct http_req req;
        struct http_reply rep;
        char path[300];

        /* the runtime faults file of the simulator */
        snprintf(path, sizeof(path), "%s/sim/faults", tmpdir);
        FILE *f = fopen(path, "we");
        ck_assert_ptr_nonnull(f);
        fputs("prepare=EBUSY\n", f);
        fclose(f);
        req = mkreq(HTTP_POST, "/v1/prepare", "{\"operation_id\":\"busy\"}");
        ck_assert_int_eq(call(&req, &rep), 599);
        http_reply_clear(&rep);
        agent_lock(agent);
        json_t *err = json_object_get(agent->operation, "error");
        ck_assert_str_eq(json_string_value(json_object_get(err, "code")), "kernel-busy");
        ck_assert_str_eq(json_string_value(json_object_get(err, "errno")), "EBUSY");
        ck_assert_int_eq(agent->state, LUO_STATE_NORMAL);
        agent_unlock(agent);

        /* the replay answers the recorded problem */
        req = mkreq(HTTP_POST, "/v1/prepare", "{\"operation_id\":\"busy\"}");
        ck_assert_int_eq(call(&req, &rep), 409);
        ck_assert_str_eq(code_of(&rep), "kernel-busy");
        ck_assert_str_eq(json_string_value(json_object_get(rep.json, "errno")), "EBUSY");
        http_reply_clear(&rep);
        unlink(path);
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("agent");
        TCase *tc = tcase_create("core");

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_errno_map);
        tcase_add_test(tc, test_state_document);
        tcase_add_test(tc, test_state_query);
        tcase_add_test(tc, test_routes);
        tcase_add_test(tc, test_bodies);
        tcase_add_test(tc, test_problem_bodies_survive_bad_utf8);
        tcase_add_test(tc, test_transitions_and_idempotency);
        tcase_add_test(tc, test_staging_and_reboot);
        tcase_add_test(tc, test_history_paging);
        tcase_add_test(tc, test_kernel_fault);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(suite)
