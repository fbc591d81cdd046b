/*
 * test_ops_refusals.c: what agent/ops.c refuses, and that a refusal leaves no trace: the
 * transition table at the API (finish from prepared, reboot from normal with a kernel staged,
 * prepare from updated: 409 invalid-transition, the journal's index unchanged, the simulated
 * kernel never called), the kernel's errnos as HTTP statuses (also when a failed operation is
 * replayed), and an operation the journal cannot record (507 journal-full for ENOSPC, EDQUOT
 * and EFBIG, 503 state-dir-read-only for EROFS, 503 journal-error otherwise; nothing done).
 *
 * These are the assertions the existing suites did not make (tests/mutation: a transition
 * allowed by mistake still answered 409, from the kernel, and was caught only by an index
 * assertion elsewhere). The journal's fdatasync() is this suite's own (below), so that a
 * storage error can be injected into the operation's first record.
 *
 * Single-threaded: operations run synchronously (agent_op_execute on this thread).
 */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
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
#include "staging.h"
#include "agentfixture.h"
#include "testutil.h"

/* The next fdatasync() fails with this errno (once); 0: all pass. */
static int fail_fdatasync;

int fdatasync(int fd)
{
        if (fail_fdatasync) {
                errno = fail_fdatasync;
                fail_fdatasync = 0;
                return -1;
        }
        return (int)syscall(SYS_fdatasync, fd);
}

static void setup(void)
{
        static char *staging_dirs[1] = { tmpdir };

        testutil_mkdtemp(tmpdir, sizeof(tmpdir), "test_ops_refusals");
        staging_set_allowed_dirs(staging_dirs, 1);
        memset(&cfg, 0, sizeof(cfg));
        log_set_max_level(LOG_LEVEL_ERR);
        router_init();
        fail_fdatasync = 0;
        open_all();
}

static void teardown(void)
{
        close_all();
        staging_set_allowed_dirs(NULL, 0);
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

/*
 * Dispatch; a deferred operation runs here. Its answer: the status it would send (the
 * operation's recorded http_status, read back by replaying its id is the caller's business);
 * 599 when the operation ran and failed.
 */
static int call(struct http_req *req, struct http_reply *rep)
{
        *rep = (struct http_reply){ 0 };
        router_dispatch(req, rep);
        if (rep->defer == DEFER_WORKER || rep->defer == DEFER_AFTER) {
                struct op_job *job = TAKE_PTR(rep->job);
                int keep = rep->status;
                bool after = rep->defer == DEFER_AFTER;
                job->done = NULL;
                agent_op_execute(job);
                json_decref(rep->json);
                agent_lock(agent);
                rep->json = agent_doc_locked(agent, agent->operation);
                const char *st = json_string_value(
                        json_object_get(json_object_get(rep->json, "operation"), "status"));
                agent_unlock(agent);
                rep->status = st && strcmp(st, "failed") == 0 ? 599 : after ? keep : 200;
                rep->defer = DEFER_NONE;
        }
        return rep->status;
}

static int post(const char *path, const char *body)
{
        struct http_req req = mkreq(HTTP_POST, path, body);
        struct http_reply rep;
        int st = call(&req, &rep);
        http_reply_clear(&rep);
        return st;
}

static const char *code_of(struct http_reply *rep)
{
        return json_string_value(json_object_get(rep->json, "code"));
}

static enum luo_state state_now(void)
{
        agent_lock(agent);
        enum luo_state s = agent->state;
        agent_unlock(agent);
        return s;
}

/* The simulated kernel's own state and counters (sim/kernel.json). */
static json_t *kernel_json(void)
{
        char path[400];
        json_error_t je;

        snprintf(path, sizeof(path), "%s/sim/kernel.json", tmpdir);
        json_t *k = json_load_file(path, 0, &je);
        ck_assert_msg(k != NULL, "%s: %s", path, je.text);
        return k;
}

/* Asserts a 409 invalid-transition naming the state, with nothing recorded or done. */
static void assert_refused(const char *path, const char *body, const char *state)
{
        struct http_req req = mkreq(HTTP_POST, path, body);
        struct http_reply rep;
        uint64_t before = agent_index(agent);
        json_t *k_before = kernel_json();

        ck_assert_int_eq(call(&req, &rep), 409);
        ck_assert_str_eq(code_of(&rep), "invalid-transition");
        ck_assert_str_eq(json_string_value(json_object_get(rep.json, "state")), state);
        ck_assert(json_is_array(json_object_get(rep.json, "allowed_actions")));
        http_reply_clear(&rep);
        /* nothing journaled, nothing asked of the kernel */
        ck_assert_uint_eq(agent_index(agent), before);
        json_t *k_after = kernel_json();
        ck_assert_msg(json_equal(k_before, k_after), "the kernel was called");
        json_decref(k_before);
        json_decref(k_after);
}

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

static void stage(void)
{
        char kpath[300], khex[65], body[600];

        snprintf(kpath, sizeof(kpath), "%s/vmlinuz", tmpdir);
        write_file(kpath, "kernel bytes", khex);
        snprintf(body, sizeof(body), "{\"kernel\":{\"path\":\"%s\",\"sha256\":\"%s\"}}", kpath,
                 khex);
        struct http_req req = mkreq(HTTP_PUT, "/v1/kernel", body);
        struct http_reply rep;
        ck_assert_int_eq(call(&req, &rep), 200);
        http_reply_clear(&rep);
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

/* ---- the transition table ------------------------------------------------------------------- */

START_TEST(test_finish_from_prepared)
{
        ck_assert_int_eq(post("/v1/prepare", NULL), 200);
        ck_assert_int_eq(state_now(), LUO_STATE_PREPARED);
        assert_refused("/v1/finish", "{\"operation_id\":\"f1\"}", "prepared");
        ck_assert_int_eq(state_now(), LUO_STATE_PREPARED);
        /* the id was not used: it is free for a finish that is allowed later */
        agent_lock(agent);
        ck_assert_ptr_null(json_object_get(agent->ops, "f1"));
        agent_unlock(agent);
}
END_TEST

START_TEST(test_reboot_from_normal)
{
        char boot[40];

        /* a kernel staged and loaded: only the state stands between it and a kexec */
        stage();
        snprintf(boot, sizeof(boot), "%s", agent->info.boot_id);
        assert_refused("/v1/reboot", "{\"operation_id\":\"r1\"}", "normal");
        json_t *k = kernel_json();
        ck_assert_int_eq(
                json_integer_value(json_object_get(json_object_get(k, "applied"), "kexec")), 0);
        json_decref(k);
        /* the same boot after a restart: nothing jumped */
        close_all();
        open_all();
        ck_assert_str_eq(agent->info.boot_id, boot);
        ck_assert_int_eq(state_now(), LUO_STATE_NORMAL);
}
END_TEST

START_TEST(test_prepare_from_updated)
{
        stage();
        ck_assert_int_eq(post("/v1/prepare", NULL), 200);
        ck_assert_int_eq(post("/v1/reboot", NULL), 202);
        close_all(); /* the new kernel */
        open_all();
        ck_assert_int_eq(state_now(), LUO_STATE_UPDATED);
        assert_refused("/v1/prepare", "{\"operation_id\":\"p2\"}", "updated");
        assert_refused("/v1/cancel", NULL, "updated");
        assert_refused("/v1/reboot", NULL, "updated");
        ck_assert_int_eq(post("/v1/finish", NULL), 200);
        ck_assert_int_eq(state_now(), LUO_STATE_NORMAL);
        assert_refused("/v1/finish", NULL, "normal");
        assert_refused("/v1/cancel", NULL, "normal");
}
END_TEST

/* ---- kernel errnos as HTTP statuses -----------------------------------------------------------
 */

START_TEST(test_errno_statuses)
{
        static const struct {
                int err, status;
                const char *code;
        } want[] = {
                { EINVAL, 409, "invalid-transition" },
                { EBUSY, 409, "kernel-busy" },
                { EAGAIN, 503, "kernel-interrupted" },
                { EINTR, 503, "kernel-interrupted" },
                { EPERM, 500, "kernel-permission-denied" },
                { EACCES, 500, "kernel-permission-denied" },
                { ENOEXEC, 409, "no-kernel-staged" },
                { EIO, 500, "kernel-error" },
                { ENOMEM, 500, "kernel-error" },
        };

        for (size_t i = 0; i < ELEMENTSOF(want); i++) {
                struct problem_errno_map m = problem_from_errno(-want[i].err);
                ck_assert_msg(m.status == want[i].status, "errno %d: %d, not %d", want[i].err,
                              m.status, want[i].status);
                ck_assert_str_eq(m.code, want[i].code);
                m = problem_from_errno(want[i].err);
                ck_assert_int_eq(m.status, want[i].status);
        }
}
END_TEST

/* A prepare the kernel fails with errno NAME: the status its replay answers, with the code. */
static void replayed_failure(const char *name, const char *id, int status, const char *code)
{
        char spec[64], body[128];

        snprintf(spec, sizeof(spec), "prepare=%s\n", name);
        set_faults(spec);
        snprintf(body, sizeof(body), "{\"operation_id\":\"%s\"}", id);
        ck_assert_int_eq(post("/v1/prepare", body), 599);
        set_faults(NULL);
        uint64_t idx = agent_index(agent);

        struct http_req req = mkreq(HTTP_POST, "/v1/prepare", body);
        struct http_reply rep;
        ck_assert_int_eq(call(&req, &rep), status);
        ck_assert_str_eq(code_of(&rep), code);
        ck_assert_str_eq(json_string_value(json_object_get(rep.json, "errno")), name);
        ck_assert(json_is_true(json_object_get(rep.json, "replayed")));
        ck_assert_str_eq(json_string_value(json_object_get(rep.json, "operation_id")), id);
        http_reply_clear(&rep);
        ck_assert_uint_eq(agent_index(agent), idx);
        ck_assert_int_eq(state_now(), LUO_STATE_NORMAL);
}

START_TEST(test_failed_operations_replay_their_status)
{
        replayed_failure("EINTR", "p-eintr", 503, "kernel-interrupted");
        replayed_failure("EAGAIN", "p-eagain", 503, "kernel-interrupted");
        replayed_failure("ENOEXEC", "p-enoexec", 409, "no-kernel-staged");
        replayed_failure("EACCES", "p-eacces", 500, "kernel-permission-denied");
        replayed_failure("EIO", "p-eio", 500, "kernel-error");
        /* the host is still usable: the same action with a new id goes through */
        ck_assert_int_eq(post("/v1/prepare", "{\"operation_id\":\"p-ok\"}"), 200);
        ck_assert_int_eq(state_now(), LUO_STATE_PREPARED);
}
END_TEST

/* ---- the journal cannot take the operation ----------------------------------------------------
 */

static void storage_refusal(int err, int status, const char *code, const char *errname)
{
        struct http_req req = mkreq(HTTP_POST, "/v1/prepare", "{\"operation_id\":\"s1\"}");
        struct http_reply rep;
        uint64_t before = agent_index(agent);
        json_t *k_before = kernel_json();

        fail_fdatasync = err;
        ck_assert_int_eq(call(&req, &rep), status);
        ck_assert_int_eq(fail_fdatasync, 0); /* it was the operation's record that failed */
        ck_assert_str_eq(code_of(&rep), code);
        ck_assert_str_eq(json_string_value(json_object_get(rep.json, "errno")), errname);
        http_reply_clear(&rep);
        /* nothing done: the kernel untouched, the id unused, the state as it was */
        json_t *k_after = kernel_json();
        ck_assert_msg(json_equal(k_before, k_after), "the kernel was called");
        json_decref(k_before);
        json_decref(k_after);
        ck_assert_int_eq(state_now(), LUO_STATE_NORMAL);
        agent_lock(agent);
        ck_assert_ptr_null(json_object_get(agent->ops, "s1"));
        ck_assert(!agent->op_running);
        agent_unlock(agent);
        ck_assert_uint_ge(agent_index(agent), before);
}

START_TEST(test_storage_errors)
{
        storage_refusal(ENOSPC, 507, "journal-full", "ENOSPC");
        storage_refusal(EDQUOT, 507, "journal-full", "EDQUOT");
        storage_refusal(EFBIG, 507, "journal-full", "EFBIG");
        storage_refusal(EROFS, 503, "state-dir-read-only", "EROFS");
        storage_refusal(EIO, 503, "journal-error", "EIO");
        /* once the journal takes records again, the same request succeeds */
        ck_assert_int_eq(post("/v1/prepare", "{\"operation_id\":\"s1\"}"), 200);
        ck_assert_int_eq(state_now(), LUO_STATE_PREPARED);
}
END_TEST

static Suite *suite(void)
{
        Suite *s = suite_create("ops_refusals");
        TCase *tc = tcase_create("refusals");

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_finish_from_prepared);
        tcase_add_test(tc, test_reboot_from_normal);
        tcase_add_test(tc, test_prepare_from_updated);
        tcase_add_test(tc, test_errno_statuses);
        tcase_add_test(tc, test_failed_operations_replay_their_status);
        tcase_add_test(tc, test_storage_errors);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(suite)
