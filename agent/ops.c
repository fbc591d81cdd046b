/*
 * ops.c: the life of an operation (prepare, cancel, reboot, finish, stage,
 * unstage): admission on MHD's thread (idempotent replay, If-Match, one at a
 * time, transition table), a durable "running" record before any kernel
 * call, execution on the worker thread, and a durable end record before the
 * caller hears the result. Lock: agent.lock, never held across a kernel call.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent.h"
#include "http.h"
#include "journal.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "ops.h"
#include "problem.h"
#include "staging.h"

struct op_job *op_job_new(struct agent *a, const struct op_request *rq)
{
        struct op_job *job = calloc(1, sizeof(*job));
        if (!job)
                return NULL;
        job->agent = a;
        job->rq = *rq;
        job->ok_status = rq->action == OP_REBOOT ? 202 : 200;
        return job;
}

struct op_job *op_job_free(struct op_job *job)
{
        if (job) {
                json_decref(job->body);
                free(job);
        }
        return NULL;
}

/* "12", "\"12\"", "W/\"12\"" or "*"; a list is compared entry by entry. */
static bool if_match_ok(const char *hdr, uint64_t index)
{
        char want[32];
        const char *p = hdr;

        snprintf(want, sizeof(want), "%llu", (unsigned long long)index);
        while (*p) {
                const char *e;
                size_t n;
                while (*p == ' ' || *p == ',')
                        p++;
                if (!*p)
                        break;
                e = strchr(p, ',');
                n = e ? (size_t)(e - p) : strlen(p);
                while (n > 0 && p[n - 1] == ' ')
                        n--;
                const char *v = p;
                if (n == 1 && *v == '*')
                        return true;
                if (n >= 2 && v[0] == 'W' && v[1] == '/') {
                        v += 2;
                        n -= 2;
                }
                if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
                        v++;
                        n -= 2;
                }
                if (n == strlen(want) && memcmp(v, want, n) == 0)
                        return true;
                p = e ? e + 1 : p + strlen(p);
        }
        return false;
}

static bool action_allowed(enum op_action act, enum luo_state s)
{
        switch (act) {
        case OP_PREPARE:
                return s == LUO_STATE_NORMAL;
        case OP_CANCEL:
                return s == LUO_STATE_PREPARED || s == LUO_STATE_FROZEN;
        case OP_FINISH:
                return s == LUO_STATE_UPDATED;
        case OP_REBOOT:
                return s == LUO_STATE_PREPARED || s == LUO_STATE_FROZEN;
        case OP_STAGE:
        case OP_UNSTAGE:
                return true;
        default:
                return false;
        }
}

static void problem_invalid_transition(struct agent *a, struct http_reply *rep, const char *action,
                                       const char *why)
{
        http_reply_problem(rep, 409, "invalid-transition", "%s is not allowed in state %s%s%s",
                           action, luo_state_to_string(a->state), why ? ": " : "", why ? why : "");
        json_object_set_new(rep->json, "state", json_string(luo_state_to_string(a->state)));
        json_object_set_new(rep->json, "allowed_actions", agent_allowed_actions(a->state));
}

/*
 * The journal cannot take the operation's records: refuse before any kernel
 * call. Full (ENOSPC, EDQUOT, EFBIG): 507 journal-full; read-only: 503
 * state-dir-read-only; anything else (EIO): 503 journal-error. Nothing was
 * done, the index did not move and the operation_id stays unused, so the
 * same request succeeds once the directory is usable again.
 */
static void problem_storage(struct http_reply *rep, int r, uint64_t avail)
{
        char eb[16];

        if (r == -ENOSPC || r == -EDQUOT || r == -EFBIG) {
                if (avail != UINT64_MAX)
                        http_reply_problem(rep, 507, "journal-full",
                                           "the state directory has %llu bytes free, %llu are "
                                           "needed to journal an operation: nothing was done",
                                           (unsigned long long)avail,
                                           (unsigned long long)AGENT_STORAGE_RESERVE);
                else
                        http_reply_problem(rep, 507, "journal-full",
                                           "the journal cannot be written (%s): nothing was done",
                                           errno_name(r, eb));
        } else if (r == -EROFS)
                http_reply_problem(rep, 503, "state-dir-read-only",
                                   "the state directory is read-only, the journal cannot record "
                                   "the operation: nothing was done");
        else if (r == -ENOMEM) {
                http_reply_problem(rep, 500, "internal-error", "out of memory");
                return;
        } else
                http_reply_problem(rep, 503, "journal-error",
                                   "the journal cannot be written (%s): nothing was done",
                                   errno_name(r, eb));
        json_object_set_new(rep->json, "errno", json_string(errno_name(r, eb)));
}

/* Replay of a known operation id: the first result, nothing done again. */
static void op_replay_locked(struct agent *a, json_t *entry, struct http_reply *rep)
{
        json_t *op = json_object_get(entry, "operation");
        int st = (int)json_integer_value(json_object_get(entry, "http_status"));
        const char *status = json_string_value(json_object_get(op, "status"));

        if (status && strcmp(status, "failed") == 0) {
                json_t *err = json_object_get(op, "error");
                const char *code = json_string_value(json_object_get(err, "code"));
                const char *detail = json_string_value(json_object_get(err, "detail"));
                json_t *en = json_object_get(err, "errno");

                if (!code || !problem_code_known(code))
                        code = "kernel-error";
                http_reply_problem(rep, st >= 400 ? st : 500, code, "%s", detail ? detail : "");
                if (json_is_string(en))
                        json_object_set(rep->json, "errno", en);
                json_object_set_new(rep->json, "operation_id",
                                    json_incref(json_object_get(op, "id")));
                json_object_set_new(rep->json, "replayed", json_true());
                if (json_is_object(json_object_get(entry, "problem_extra")))
                        json_object_update(rep->json, json_object_get(entry, "problem_extra"));
                return;
        }
        if (status && strcmp(status, "running") == 0)
                st = 202;
        http_reply_json(rep, st > 0 ? st : 200, agent_doc_locked(a, op));
}

int agent_op_begin(struct agent *a, const struct op_request *rq, struct http_reply *rep,
                   struct op_job **ret_job)
{
        const char *action = op_action_to_string(rq->action);
        char id[OP_ID_MAX + 1], when[RFC3339_MAX];
        uint64_t idx, avail;
        json_t *op;
        int r;

        agent_lock(a);
        if (a->shutting_down) {
                http_reply_problem(rep, 503, "shutting-down", "the agent is shutting down");
                rep->retry_after = 1;
                goto refuse;
        }
        if (rq->id[0]) {
                json_t *e = json_object_get(a->ops, rq->id);
                if (e) {
                        const char *was = json_string_value(
                                json_object_get(json_object_get(e, "operation"), "action"));
                        if (!was || strcmp(was, action) != 0) {
                                http_reply_problem(rep, 409, "operation-id-conflict",
                                                   "operation_id %s was used for %s", rq->id,
                                                   was ? was : "another action");
                                json_object_set_new(rep->json, "operation_id", json_string(rq->id));
                                goto refuse;
                        }
                        op_replay_locked(a, e, rep);
                        goto refuse;
                }
        }
        if (rq->if_match && !if_match_ok(rq->if_match, a->index)) {
                http_reply_problem(rep, 412, "precondition-failed",
                                   "If-Match %s does not match the current index %llu",
                                   rq->if_match, (unsigned long long)a->index);
                json_object_set_new(rep->json, "current_index", json_integer((json_int_t)a->index));
                goto refuse;
        }
        if (a->op_running) {
                const char *cur = json_string_value(json_object_get(a->operation, "id"));
                http_reply_problem(rep, 409, "operation-in-progress",
                                   "operation %s (%s) is still running", cur ? cur : "?",
                                   json_string_value(json_object_get(a->operation, "action")));
                json_object_set_new(rep->json, "operation_id", json_string(cur ? cur : ""));
                goto refuse;
        }
        if (!action_allowed(rq->action, a->state)) {
                problem_invalid_transition(a, rep, action, NULL);
                goto refuse;
        }
        if (rq->action == OP_REBOOT) {
                bool loaded = false;
                /* A sysfs read, not a blocking call: fine on this thread. */
                (void)a->backend->ops->kexec_loaded(a->backend, &loaded);
                if (!a->staged || !loaded) {
                        http_reply_problem(rep, 409, "no-kernel-staged",
                                           "%s: stage a kernel with PUT /v1/kernel first",
                                           !a->staged ? "no kernel is staged"
                                                      : "the kernel has no kexec image loaded");
                        json_object_set_new(rep->json, "state",
                                            json_string(luo_state_to_string(a->state)));
                        goto refuse;
                }
        }

        /*
         * Last of the checks: replays, refusals and reads need no room, an
         * operation does (its records after the kernel call must not be the
         * first append to fail).
         */
        r = agent_storage_check(a, AGENT_STORAGE_RESERVE, &avail);
        if (r < 0) {
                problem_storage(rep, r, avail);
                goto refuse;
        }

        if (rq->id[0])
                snprintf(id, sizeof(id), "%s", rq->id);
        else if (uuid_v4(id) < 0) {
                http_reply_problem(rep, 500, "internal-error", "no randomness for an operation id");
                goto refuse;
        }
        op = json_pack("{s:s, s:s, s:s, s:n, s:s, s:n, s:o, s:s}", "id", id, "action", action,
                       "status", "running", "error", "requested_at",
                       format_rfc3339_ms(now_real_usec(), when), "finished_at", "reason",
                       rq->has_reason ? json_string(rq->reason) : json_null(), "requested_by",
                       rq->requested_by[0] ? rq->requested_by : "unknown");
        if (!op) {
                http_reply_problem(rep, 500, "internal-error", "out of memory");
                goto refuse;
        }
        /* The intent is durable before the kernel hears of it, or nothing happens. */
        r = agent_record_op_begin_locked(a, op);
        json_decref(op);
        if (r < 0) {
                problem_storage(rep, r, UINT64_MAX);
                goto refuse;
        }
        *ret_job = op_job_new(a, rq);
        if (!*ret_job) {
                agent_unlock(a);
                return -ENOMEM;
        }
        snprintf((*ret_job)->rq.id, sizeof((*ret_job)->rq.id), "%s", id);
        idx = a->index;
        agent_unlock(a);
        agent_notify_index(a, idx);
        log_info("Operation %s %s accepted (requested by %s)", action, id, rq->requested_by);
        return 1;

refuse:
        agent_unlock(a);
        return 0;
}

static void sleep_ms(uint64_t ms)
{
        struct timespec ts = { .tv_sec = (time_t)(ms / 1000),
                               .tv_nsec = (long)(ms % 1000) * 1000000 };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

void agent_op_execute(struct op_job *job)
{
        struct agent *a = job->agent;
        struct backend *b = a->backend;
        const char *action = op_action_to_string(job->rq.action);
        struct stage_result sr = { 0 };
        enum luo_state ks;
        char when[RFC3339_MAX], eb[16];
        int r = 0, status;
        uint64_t idx;
        bool jump = false;

        /* Test hooks (LUOFLEET_TEST_CRASH_POINT, docs/journal.md): die around the kernel call. */
        journal_crash_point("op-before-kernel", action);
        switch (job->rq.action) {
        case OP_PREPARE:
                r = b->ops->set_event(b, LUO_EVENT_PREPARE);
                break;
        case OP_CANCEL:
                r = b->ops->set_event(b, LUO_EVENT_CANCEL);
                break;
        case OP_FINISH:
                r = b->ops->set_event(b, LUO_EVENT_FINISH);
                break;
        case OP_REBOOT:
                /* Let the 202 reach the client before the jump (Connection: close). */
                sleep_ms(a->cfg ? a->cfg->reboot_delay_ms : 0);
                log_notice("Rebooting into the staged kernel (operation %s)", job->rq.id);
                r = b->ops->reboot(b);
                jump = r >= 0;
                break;
        case OP_STAGE:
                r = staging_run(b, &job->rq, &sr);
                break;
        case OP_UNSTAGE:
                r = b->ops->kexec_unload(b);
                break;
        default:
                r = -EINVAL;
        }

        journal_crash_point("op-after-kernel", action);

        /* After any kernel call, success or not, the kernel is re-read: it is the truth. */
        uint64_t ticket = agent_read_ticket(a);
        int rs = b->ops->get_state(b, &ks);

        agent_lock(a);
        if (rs >= 0 && ticket >= a->applied_ticket) {
                a->applied_ticket = ticket;
                agent_transition_op_locked(a, ks, job->rq.id);
        }
        json_t *op = a->operation;
        json_decref(job->body);
        job->body = NULL;
        if (r >= 0 && sr.code) {
                /* staging refused the files */
                status = sr.status;
                job->body = problem_new(status, sr.code, sr.detail);
                if (sr.extra)
                        json_object_update(job->body, sr.extra);
                if (sr.err)
                        json_object_set_new(job->body, "errno",
                                            json_string(errno_name(sr.err, eb)));
                json_object_set_new(
                        op, "error",
                        json_pack("{s:s, s:s, s:o}", "code", sr.code, "detail", sr.detail, "errno",
                                  sr.err ? json_string(errno_name(sr.err, eb)) : json_null()));
                json_object_set_new(op, "status", json_string("failed"));
        } else if (r < 0) {
                struct problem_errno_map m = problem_from_errno(r);
                char detail[256];
                if (job->rq.action == OP_REBOOT && r == -EINVAL)
                        m = (struct problem_errno_map){ EINVAL, 500, "kernel-error" };
                snprintf(detail, sizeof(detail), "the kernel refused %s: %s (%s)", action,
                         strerror(-r), errno_name(r, eb));
                status = m.status;
                job->body = problem_new(status, m.code, detail);
                json_object_set_new(job->body, "errno", json_string(errno_name(r, eb)));
                json_object_set_new(job->body, "state", json_string(luo_state_to_string(a->state)));
                if (strcmp(m.code, "invalid-transition") == 0)
                        json_object_set_new(job->body, "allowed_actions",
                                            agent_allowed_actions(a->state));
                json_object_set_new(op, "error",
                                    json_pack("{s:s, s:s, s:s}", "code", m.code, "detail", detail,
                                              "errno", errno_name(r, eb)));
                json_object_set_new(op, "status", json_string("failed"));
                log_warning("Operation %s %s failed: %s", action, job->rq.id, detail);
        } else {
                status = job->ok_status;
                json_object_set_new(op, "status", json_string(jump ? "running" : "succeeded"));
                if (job->rq.action == OP_STAGE) {
                        json_decref(a->staged);
                        a->staged = json_incref(sr.staged);
                        agent_record_staging_locked(a, a->staged);
                } else if (job->rq.action == OP_UNSTAGE && a->staged) {
                        json_decref(a->staged);
                        a->staged = NULL;
                        agent_record_staging_locked(a, NULL);
                }
        }
        if (!jump) {
                json_object_set_new(op, "finished_at",
                                    json_string(format_rfc3339_ms(now_real_usec(), when)));
                a->op_running = false;
                a->ops_done[job->rq.action][r < 0 || sr.code ? 1 : 0]++;
                agent_record_op_extra_locked(a, op, status, sr.code ? sr.extra : NULL);
        }
        if (!job->body)
                job->body = agent_doc_locked(a, op);
        job->status = status;
        job->problem = status >= 400;
        idx = a->index;
        agent_unlock(a);
        stage_result_done(&sr);
        agent_notify_index(a, idx);

        /* The request's audit record, with its answer; a reboot's was written at its 202. */
        if (job->rq.action != OP_REBOOT) {
                const char *code =
                        job->problem ? json_string_value(json_object_get(job->body, "code")) : "ok";
                agent_audit(a, &(struct audit_entry){
                                       .who = &job->rq.who,
                                       .source = job->rq.source,
                                       .action = action,
                                       .operation_id = job->rq.id,
                                       .if_match = job->rq.has_precondition ? job->rq.precondition
                                                                            : NULL,
                                       .status = job->status,
                                       .code = code,
                               });
        }

        if (jump && a->sim_jump) {
                /* The simulated kexec: the process goes away as a kernel would. */
                a->sim_jump(a->sim_jump_data);
        }
        if (job->done)
                job->done(job, job->done_data);
        else
                op_job_free(job);
}
