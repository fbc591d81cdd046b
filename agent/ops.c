/*
 * ops.c: the life of an operation (prepare, cancel, reboot, finish, stage,
 * unstage, rollback: finish + stage + prepare + reboot in one): admission on MHD's thread
 * (idempotent replay, If-Match, one at a time, transition table), a durable "running" record before
 * any kernel call, execution on the worker thread, and a durable end record before the caller hears
 * the result. Lock: agent.lock, never held across a kernel call.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent.h"
#include "hooks.h"
#include "http.h"
#include "journal.h"
#include "lease.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "ops.h"
#include "luofleet/privsep.h"
#include "problem.h"
#include "sessions.h"
#include "staging.h"
#include "verify.h"

struct op_job *op_job_new(struct agent *a, const struct op_request *rq)
{
        struct op_job *job = calloc(1, sizeof(*job));
        if (!job)
                return NULL;
        job->agent = a;
        job->rq = *rq;
        job->ok_status = rq->action == OP_REBOOT || rq->action == OP_ROLLBACK ? 202 : 200;
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
bool op_if_match_ok(const char *hdr, uint64_t index)
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
        case OP_ROLLBACK:
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
        if (rq->if_match && !op_if_match_ok(rq->if_match, a->index)) {
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
        if (rq->action == OP_ROLLBACK) {
                json_t *t = a->rollback_target;
                const char *rel = json_string_value(json_object_get(t, "release"));
                if (!json_is_string(json_object_get(t, "image")) ||
                    !json_is_string(json_object_get(t, "image_sha256"))) {
                        http_reply_problem(rep, 409, "no-rollback-target",
                                           "%s%s%s: no kernel image of it was recorded when the "
                                           "running kernel was staged (docs/staging.md)",
                                           rel ? "the previous release " : "no previous kernel",
                                           rel ? rel : "", rel ? " is known but" : " is recorded");
                        json_object_set_new(rep->json, "state",
                                            json_string(luo_state_to_string(a->state)));
                        goto refuse;
                }
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
        if (rq->force)
                json_object_set_new(op, "force", json_true());
        /* A prepare starts the next update: the last one's report leaves the document. */
        json_t *last_update = a->last_update;
        if (rq->action == OP_PREPARE)
                a->last_update = NULL;
        /* The intent is durable before the kernel hears of it, or nothing happens. */
        r = agent_record_op_begin_locked(a, op);
        json_decref(op);
        if (r < 0) {
                a->last_update = last_update;
                problem_storage(rep, r, UINT64_MAX);
                goto refuse;
        }
        if (rq->action == OP_PREPARE) {
                json_decref(last_update);
                /* The dead-man lease runs from the admission (lease.c, docs/leases.md). */
                if (rq->lease_seconds)
                        lease_start_locked(a, id, rq->lease_seconds);
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

/* The marker's note: which operation rebooted, and the journal position it left. */
static void op_note(struct agent *a, const char *id, char note[static BACKEND_NOTE_MAX])
{
        uint64_t idx = agent_index(a);
        int n = snprintf(note, BACKEND_NOTE_MAX, "operation=%s index=%llu", id,
                         (unsigned long long)idx);

        if (n < 0 || n >= BACKEND_NOTE_MAX)
                snprintf(note, BACKEND_NOTE_MAX, "index=%llu", (unsigned long long)idx);
        /* Operation ids are printable ASCII already (h_actions.c); the helper checks again. */
}

/*
 * The broker's view for a refusal's problem: the workloads of its last
 * prepare round (which did not confirm, or vetoed), or the unfinished
 * sessions. From the broker itself (worker thread: a query may wait).
 */
static json_t *op_broker_extra(struct agent *a, enum luo_event ev)
{
        _cleanup_free_ char *text = NULL;
        json_t *doc, *extra = NULL, *round, *list, *s;
        size_t len = 0, i;

        if (a->backend->ops->sessions_json(a->backend, UINT64_MAX - 1, &text, &len) < 0)
                return NULL;
        doc = json_loadb(text, len, 0, NULL);
        if (!doc)
                return NULL;
        if (ev == LUO_EVENT_PREPARE) {
                round = json_object_get(doc, "last_round");
                list = json_array();
                json_array_extend(list, json_object_get(round, "pending"));
                json_array_extend(list, json_object_get(round, "gone"));
                json_array_extend(list, json_object_get(round, "vetoed"));
                extra = json_pack("{s:o}", "workloads", list);
        } else {
                list = json_array();
                json_array_foreach (json_object_get(doc, "sessions"), i, s) {
                        const char *ph = json_string_value(json_object_get(s, "phase"));
                        if (ph && (strcmp(ph, "incoming") == 0 || strcmp(ph, "retrieved") == 0))
                                json_array_append_new(
                                        list, json_pack("{s:O, s:O, s:O, s:O}", "name",
                                                        json_object_get(s, "name"), "owner_uid",
                                                        json_object_get(s, "owner_uid"), "workload",
                                                        json_object_get(s, "workload"), "phase",
                                                        json_object_get(s, "phase")));
                }
                extra = json_pack("{s:o}", "sessions", list);
        }
        json_decref(doc);
        return extra;
}

/*
 * A kernel event, through the session broker when there is one. The
 * broker's own refusals become the operation's problem in *sr (returns 0
 * then, like a refused staging): a prepare the workloads did not confirm
 * (409 workloads-not-confirmed) or vetoed (409 workload-veto), a finish
 * with unfinished sessions (409 sessions-unfinished). Worker thread.
 */
static int op_kernel_event(struct op_job *job, enum luo_event ev, struct stage_result *sr)
{
        struct agent *a = job->agent;
        struct backend *b = a->backend;
        struct backend_event_opts o = { 0 };
        char msg[PRIVSEP_MSG_MAX] = "";
        int r;

        if (!b->ops->set_event_ex)
                return b->ops->set_event(b, ev);
        o.confirm_timeout_ms = a->cfg ? a->cfg->workload_confirm_timeout_ms : 0;
        o.force = ev == LUO_EVENT_FINISH && job->rq.force;
        op_note(a, job->rq.id, o.note);
        r = b->ops->set_event_ex(b, ev, &o, msg, sizeof(msg));
        if (r >= 0 || !msg[0])
                return r;
        if (ev == LUO_EVENT_PREPARE && (r == -ETIMEDOUT || r == -ECANCELED)) {
                sr->code = r == -ETIMEDOUT ? "workloads-not-confirmed" : "workload-veto";
                /* The broker's sentence is shorter than the detail: room for the verdict. */
                if (snprintf(sr->detail, sizeof(sr->detail), "%.480s: nothing was prepared", msg) <
                    0)
                        sr->detail[0] = 0;
        } else if (ev == LUO_EVENT_FINISH && r == -EBUSY) {
                sr->code = "sessions-unfinished";
                if (snprintf(sr->detail, sizeof(sr->detail), "%.500s", msg) < 0)
                        sr->detail[0] = 0;
        } else {
                log_warning("Operation %s %s: %s", op_action_to_string(job->rq.action), job->rq.id,
                            msg);
                return r;
        }
        sr->status = 409;
        sr->extra = op_broker_extra(a, ev);
        return 0;
}

/* The reboot, through the broker when there is one (its marker gets the note). */
static int op_kernel_reboot(struct op_job *job)
{
        struct agent *a = job->agent;
        struct backend *b = a->backend;
        struct backend_event_opts o = { 0 };
        char msg[PRIVSEP_MSG_MAX] = "";
        int r;

        if (!b->ops->reboot_ex)
                return b->ops->reboot(b);
        op_note(a, job->rq.id, o.note);
        r = b->ops->reboot_ex(b, &o, msg, sizeof(msg));
        if (r < 0 && msg[0])
                log_warning("Operation %s %s: %s", op_action_to_string(job->rq.action), job->rq.id,
                            msg);
        return r;
}

static void sleep_ms(uint64_t ms)
{
        struct timespec ts = { .tv_sec = (time_t)(ms / 1000),
                               .tv_nsec = (long)(ms % 1000) * 1000000 };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/*
 * Workload hooks before the kernel call (hooks.c, docs/hooks.md), worker
 * thread: a finish first needs the post-update checks passing (run again
 * here when they failed) unless forced; then a failing pre-* hook vetoes.
 * True when the action must not happen: *sr holds the answer (409
 * health-check-failed or hook-veto, 500 internal-error when the runner
 * failed), reported like a refused staging.
 */
static bool op_hooks_before(struct op_job *job, struct stage_result *sr)
{
        struct agent *a = job->agent;
        const char *action = op_action_to_string(job->rq.action);
        struct hook_result hr = { 0 };
        enum hook_phase phase;
        char what[96];
        int k;

        if (!a->cfg || !a->cfg->hooks_dir)
                return false;
        if (job->rq.action == OP_FINISH && !hooks_health(a, what, sizeof(what))) {
                hooks_post_update(a, job->rq.id);
                if (!hooks_health(a, sr->detail, sizeof(sr->detail))) {
                        if (job->rq.force) {
                                log_notice("Operation finish %s forced past a failing post-update "
                                           "hook: %s",
                                           job->rq.id, sr->detail);
                                sr->detail[0] = 0;
                        } else {
                                sr->status = 409;
                                sr->code = "health-check-failed";
                                agent_lock(a);
                                sr->extra = json_deep_copy(a->hooks_failing);
                                agent_unlock(a);
                                return true;
                        }
                }
        }
        switch (job->rq.action) {
        case OP_PREPARE:
                phase = HOOK_PRE_PREPARE;
                break;
        case OP_REBOOT:
        case OP_ROLLBACK: /* before anything: its finish, staging and prepare run no hooks */
                phase = HOOK_PRE_REBOOT;
                break;
        case OP_FINISH:
                phase = HOOK_PRE_FINISH;
                break;
        default:
                return false;
        }
        k = hooks_phase(a, phase, job->rq.id, true, &hr);
        if (k == 0)
                return false;
        if (k < 0) {
                char why[320];
                sr->status = 500;
                /* Fail closed: a veto hook that cannot be read protects nothing. */
                if (k != -ENOMEM && hooks_check(a->cfg->hooks_dir, why, sizeof(why)) < 0) {
                        sr->code = "hooks-unreadable";
                        snprintf(sr->detail, sizeof(sr->detail),
                                 "the %s hooks cannot run: %s; %s "
                                 "was not done",
                                 hook_phase_to_string(phase), why, action);
                } else {
                        sr->code = "internal-error";
                        snprintf(sr->detail, sizeof(sr->detail),
                                 "the %s hooks could not be run: %s was not done",
                                 hook_phase_to_string(phase), action);
                }
                return true;
        }
        hook_result_describe(&hr, what, sizeof(what));
        sr->status = 409;
        sr->code = "hook-veto";
        snprintf(sr->detail, sizeof(sr->detail), "%s hook %s vetoed %s (%s): nothing was done",
                 hook_phase_to_string(phase), hr.name, action, what);
        sr->extra = hooks_problem_extra(phase, &hr);
        hook_result_done(&hr);
        return true;
}

/*
 * Workload hooks after a successful kernel call (worker thread). A failing
 * post-prepare hook cancels the prepare (kernel CANCEL, then the on-cancel
 * hooks) and fails the operation with 409 hook-failed; post-finish and
 * on-cancel failures are journaled and logged only (the action is done).
 */
static void op_hooks_after(struct op_job *job, struct stage_result *sr)
{
        struct agent *a = job->agent;
        struct backend *b = a->backend;
        struct hook_result hr = { 0 };
        char what[96], eb[16];
        int k, r;

        if (!a->cfg || !a->cfg->hooks_dir)
                return;
        switch (job->rq.action) {
        case OP_PREPARE:
                k = hooks_phase(a, HOOK_POST_PREPARE, job->rq.id, true, &hr);
                if (k == 0)
                        return;
                if (k > 0)
                        hook_result_describe(&hr, what, sizeof(what));
                else
                        snprintf(what, sizeof(what), "the hook runner failed");
                log_warning("Operation prepare %s: post-prepare hook %s failed (%s): cancelling",
                            job->rq.id, k > 0 ? hr.name : "?", what);
                r = b->ops->set_event(b, LUO_EVENT_CANCEL);
                sr->status = 409;
                sr->code = "hook-failed";
                if (r >= 0)
                        snprintf(sr->detail, sizeof(sr->detail),
                                 "post-prepare hook %s failed (%s): the prepare was cancelled",
                                 k > 0 ? hr.name : "?", what);
                else
                        snprintf(sr->detail, sizeof(sr->detail),
                                 "post-prepare hook %s failed (%s) and the cancel failed (%s): "
                                 "the host stays prepared",
                                 k > 0 ? hr.name : "?", what, errno_name(r, eb));
                sr->extra = k > 0 ? hooks_problem_extra(HOOK_POST_PREPARE, &hr)
                                  : json_pack("{s:s}", "phase", "post-prepare");
                if (sr->extra)
                        json_object_set_new(sr->extra, "cancelled", json_boolean(r >= 0));
                hook_result_done(&hr);
                if (r >= 0)
                        (void)hooks_phase(a, HOOK_ON_CANCEL, job->rq.id, false, NULL);
                return;
        case OP_CANCEL:
                (void)hooks_phase(a, HOOK_ON_CANCEL, job->rq.id, false, NULL);
                return;
        case OP_FINISH:
                /* The update is over: its health checks no longer hold readiness back. */
                agent_lock(a);
                json_decref(a->hooks_failing);
                a->hooks_failing = NULL;
                agent_unlock(a);
                (void)hooks_phase(a, HOOK_POST_FINISH, job->rq.id, false, NULL);
                return;
        default:
                return;
        }
}

/*
 * A reboot deferred to the worker (hooks configured: h_actions.c) answers
 * its 202 here, once the pre-reboot hooks let it go, and is audited then.
 */
static void op_reboot_accepted(struct op_job *job)
{
        struct agent *a = job->agent;
        struct op_job *reply;

        if (!job->done)
                return;
        reply = op_job_new(a, &job->rq);
        if (reply) {
                agent_lock(a);
                reply->body = agent_doc_locked(a, a->operation);
                agent_unlock(a);
                reply->status = 202;
                job->done(reply, job->done_data);
        }
        job->done = NULL;
        agent_audit(a, &(struct audit_entry){
                               .who = &job->rq.who,
                               .source = job->rq.source,
                               .action = op_action_to_string(job->rq.action),
                               .operation_id = job->rq.id,
                               .if_match = job->rq.has_precondition ? job->rq.precondition : NULL,
                               .status = 202,
                               .code = "accepted",
                       });
}

/*
 * POST /v1/rollback on the worker (docs/staging.md): from updated, finish,
 * stage the recorded previous kernel (digests checked, the expectation its
 * release), prepare, then answer 202 and jump like a reboot. A step that
 * fails ends the operation there (the host stays where that step left it).
 * Returns like a kernel call; *jump when the reboot was made.
 */
/* The kernel re-read between a rollback's steps, so that its 202 shows where it stands. */
static void op_apply_kernel_state(struct agent *a, const char *id)
{
        uint64_t ticket = agent_read_ticket(a), idx;
        enum luo_state ks;
        int rs = a->backend->ops->get_state(a->backend, &ks);

        agent_lock(a);
        if (rs >= 0 && ticket >= a->applied_ticket) {
                a->applied_ticket = ticket;
                agent_transition_op_locked(a, ks, id);
        }
        idx = a->index;
        agent_unlock(a);
        agent_notify_index(a, idx);
}

static int op_rollback(struct op_job *job, struct stage_result *sr, bool *jump)
{
        struct agent *a = job->agent;
        struct backend *b = a->backend;
        struct op_request *srq;
        enum luo_state ks;
        json_t *t, *staged;
        uint64_t idx;
        int r;

        srq = calloc(1, sizeof(*srq));
        if (!srq)
                return -ENOMEM;
        *srq = job->rq;
        srq->action = OP_STAGE;
        agent_lock(a);
        t = a->rollback_target;
        snprintf(srq->kernel_path, sizeof(srq->kernel_path), "%s",
                 json_string_value(json_object_get(t, "image")) ?: "");
        snprintf(srq->kernel_sha256, sizeof(srq->kernel_sha256), "%s",
                 json_string_value(json_object_get(t, "image_sha256")) ?: "");
        snprintf(srq->initrd_path, sizeof(srq->initrd_path), "%s",
                 json_string_value(json_object_get(t, "initrd")) ?: "");
        snprintf(srq->initrd_sha256, sizeof(srq->initrd_sha256), "%s",
                 json_string_value(json_object_get(t, "initrd_sha256")) ?: "");
        snprintf(srq->cmdline, sizeof(srq->cmdline), "%s",
                 json_string_value(json_object_get(t, "cmdline")) ?: "");
        snprintf(srq->expected_release, sizeof(srq->expected_release), "%s",
                 json_string_value(json_object_get(t, "release")) ?: "");
        srq->kernel_url[0] = srq->initrd_url[0] = srq->signed_by[0] = 0;
        agent_unlock(a);

        r = b->ops->get_state(b, &ks);
        if (r >= 0 && ks == LUO_STATE_UPDATED) {
                r = op_kernel_event(job, LUO_EVENT_FINISH, sr);
                op_apply_kernel_state(a, job->rq.id);
        }
        if (r < 0 || sr->code)
                goto out;
        r = staging_run(b, srq, sr);
        if (r < 0 || sr->code)
                goto out;
        verify_stage_expectation(a, srq, sr->staged);
        staged = json_incref(sr->staged);
        agent_lock(a);
        staging_previous_from_booted(staged, a->booted);
        /* The staged record keeps the kernel rolled back from as its own "previous". */
        json_decref(a->staged);
        a->staged = staged;
        agent_record_staging_locked(a, a->staged);
        idx = a->index;
        agent_unlock(a);
        agent_notify_index(a, idx);
        r = op_kernel_event(job, LUO_EVENT_PREPARE, sr);
        if (r < 0 || sr->code)
                goto out;
        op_apply_kernel_state(a, job->rq.id);
        op_reboot_accepted(job);
        sleep_ms(a->cfg ? a->cfg->reboot_delay_ms : 0);
        log_notice("Rolling back to %s (operation %s)", srq->expected_release, job->rq.id);
        r = op_kernel_reboot(job);
        *jump = r >= 0;
out:
        free(srq);
        return r;
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
        bool jump = false, vetoed, audit_now;

        /* Before the DEFER_AFTER job of a reboot runs, its 202 (and audit) went already. */
        /* So did a URL staging's 202 (staging_execute runs after the answer). */
        audit_now = (job->rq.action != OP_REBOOT && !job->rq.kernel_url[0]) || job->done;
        vetoed = op_hooks_before(job, &sr);
        /* Test hooks (LUOFLEET_TEST_CRASH_POINT, docs/journal.md): die around the kernel call. */
        journal_crash_point("op-before-kernel", action);
        if (vetoed)
                goto after_kernel; /* refused by a hook: the kernel is not called */
        switch (job->rq.action) {
        case OP_PREPARE:
                r = op_kernel_event(job, LUO_EVENT_PREPARE, &sr);
                break;
        case OP_CANCEL:
                r = op_kernel_event(job, LUO_EVENT_CANCEL, &sr);
                break;
        case OP_FINISH:
                r = op_kernel_event(job, LUO_EVENT_FINISH, &sr);
                break;
        case OP_REBOOT:
                /* Let the 202 reach the client before the jump (Connection: close). */
                op_reboot_accepted(job);
                audit_now = false;
                sleep_ms(a->cfg ? a->cfg->reboot_delay_ms : 0);
                log_notice("Rebooting into the staged kernel (operation %s)", job->rq.id);
                r = op_kernel_reboot(job);
                jump = r >= 0;
                break;
        case OP_STAGE:
                r = staging_execute(a, &job->rq, &sr); /* downloads first when by URL */
                /* What the new boot will be checked against (verify.c). */
                if (r >= 0 && !sr.code)
                        verify_stage_expectation(a, &job->rq, sr.staged);
                break;
        case OP_UNSTAGE:
                r = b->ops->kexec_unload(b);
                break;
        case OP_ROLLBACK:
                r = op_rollback(job, &sr, &jump);
                if (!job->done)
                        audit_now = false; /* audited with its 202 (op_reboot_accepted) */
                break;
        default:
                r = -EINVAL;
        }

        journal_crash_point("op-after-kernel", action);
after_kernel:
        if (r >= 0 && !sr.code)
                op_hooks_after(job, &sr);

        /* After any kernel call, success or not, the kernel is re-read: it is the truth. */
        uint64_t ticket = agent_read_ticket(a);
        int rs = b->ops->get_state(b, &ks);
        bool kexec_loaded = true;
        if (job->rq.action == OP_CANCEL && b->ops->kexec_loaded(b, &kexec_loaded) < 0)
                kexec_loaded = true; /* unknown: keep the staged record */

        agent_lock(a);
        if (rs >= 0 && ticket >= a->applied_ticket) {
                a->applied_ticket = ticket;
                agent_transition_op_locked(a, ks, job->rq.id);
        }
        json_t *op = a->operation;
        json_decref(job->body);
        job->body = NULL;
        if (r >= 0 && sr.code) {
                /* staging refused the files, or a hook refused the action */
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
                if ((job->rq.action == OP_REBOOT || job->rq.action == OP_ROLLBACK) && r == -EINVAL)
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
                        staging_previous_from_booted(sr.staged, a->booted);
                        json_decref(a->staged);
                        a->staged = json_incref(sr.staged);
                        agent_record_staging_locked(a, a->staged);
                } else if (job->rq.action == OP_UNSTAGE && a->staged) {
                        json_decref(a->staged);
                        a->staged = NULL;
                        agent_record_staging_locked(a, NULL);
                } else if (job->rq.action == OP_CANCEL && a->staged && !kexec_loaded) {
                        /* The kernel's cancel took the image too (luo-sessions): say so. */
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
                /* A lease lives while the host is prepared or frozen (lease.c). */
                if (a->lease.active && a->state != LUO_STATE_PREPARED &&
                    a->state != LUO_STATE_FROZEN)
                        lease_end_locked(a, job->rq.action == OP_CANCEL && r >= 0 && !sr.code
                                                    ? "lease-cancelled"
                                                    : "lease-void");
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
        if (audit_now) {
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
                                       .force = job->rq.force,
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
