/*
 * engine.c: the rollout engine (engine.h). One thread: it waits on the
 * agent client (libcurl multi: curl_multi_poll, woken by curl_multi_wakeup
 * when an HTTP thread committed a change), then, under c->lock, handles the
 * answers, runs one pass over every unfinished rollout and commits.
 *
 * Intent first: a step (stage, prepare, reboot, finish, cancel, rollback)
 * and its operation id are written in the pass's transaction, and the
 * request goes out only after that transaction committed (c->sendq). After
 * a restart every host resumes from its recorded step: the engine reads the
 * host's state first (resync) and either sees that the step already happened
 * (operation id in the document, boot id changed) or resends the same
 * request with the same operation id, which the agent answers from its
 * journal without acting twice.
 *
 * Hosts are watched with one long-poll each (GET /v1/state?index=N&wait=)
 * while they take part in a running wave; idle fleet hosts get a plain read
 * at start, on PUT and every few minutes.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "window.h"

#define IDLE_REFRESH_MS (5 * 60 * 1000)
#define PRECOND_MAX 10

static const char *const phase_names[_PH_MAX] = {
        [PH_PENDING] = "pending",     [PH_STAGING] = "staging", [PH_PREPARED] = "prepared",
        [PH_REBOOTING] = "rebooting", [PH_UPDATED] = "updated", [PH_VERIFYING] = "verifying",
        [PH_FINISHING] = "finishing", [PH_DONE] = "done",       [PH_FAILED] = "failed",
        [PH_CANCELLED] = "cancelled", [PH_SKIPPED] = "skipped", [PH_CURRENT] = "already-current",
};
static const char *const step_names[_STEP_MAX] = {
        [STEP_NONE] = "",
        [STEP_STAGE] = "stage",
        [STEP_PREPARE] = "prepare",
        [STEP_REBOOT] = "reboot",
        [STEP_FINISH] = "finish",
        [STEP_CANCEL] = "cancel",
        [STEP_ROLLBACK] = "rollback",
        [STEP_ROLLBACK_FINISH] = "rollback-finish",
};
static const char *const rstatus_names[_RS_MAX] = {
        [RS_PENDING] = "pending", [RS_RUNNING] = "running",     [RS_PAUSED] = "paused",
        [RS_BLOCKED] = "blocked", [RS_COMPLETED] = "completed", [RS_FAILED] = "failed",
        [RS_ABORTED] = "aborted",
};

const char *phase_to_string(enum phase p)
{
        return p < _PH_MAX ? phase_names[p] : NULL;
}

enum phase phase_from_string(const char *s)
{
        for (int i = 0; i < _PH_MAX; i++)
                if (s && strcmp(s, phase_names[i]) == 0)
                        return i;
        return PH_PENDING;
}

const char *step_to_string(enum step s)
{
        return s < _STEP_MAX ? step_names[s] : "";
}

enum step step_from_string(const char *s)
{
        for (int i = 1; i < _STEP_MAX; i++)
                if (s && strcmp(s, step_names[i]) == 0)
                        return i;
        return STEP_NONE;
}

const char *rstatus_to_string(enum rstatus s)
{
        return s < _RS_MAX ? rstatus_names[s] : NULL;
}

enum rstatus rstatus_from_string(const char *s)
{
        for (int i = 0; i < _RS_MAX; i++)
                if (s && strcmp(s, rstatus_names[i]) == 0)
                        return i;
        return RS_PENDING;
}

bool phase_terminal(enum phase p)
{
        return p == PH_DONE || p == PH_FAILED || p == PH_CANCELLED || p == PH_SKIPPED ||
               p == PH_CURRENT;
}

bool phase_unavailable(enum phase p)
{
        return p == PH_REBOOTING || p == PH_UPDATED || p == PH_VERIFYING || p == PH_FINISHING;
}

bool rstatus_finished(enum rstatus s)
{
        return s == RS_COMPLETED || s == RS_FAILED || s == RS_ABORTED;
}

int64_t engine_now_wall_ms(struct controller *c)
{
        if (c && c->test_now_wall_ms > 0)
                return c->test_now_wall_ms;
        return (int64_t)(now_real_usec() / 1000);
}

int64_t engine_now_mono_ms(struct controller *c)
{
        if (c && c->test_now_mono_ms > 0)
                return c->test_now_mono_ms;
        return (int64_t)(now_mono_usec() / 1000);
}

/* ---- pure decisions ---------------------------------------------------------- */

static const char *jstr(const json_t *o, const char *key)
{
        return json_string_value(json_object_get(o, key));
}

bool engine_host_current(const json_t *spec, const json_t *state)
{
        const char *want = jstr(json_object_get(spec, "target"), "release");
        const char *st = jstr(state, "state"), *run = jstr(state, "kernel");

        if (json_is_true(json_object_get(spec, "force")) || !want || !*want || !st || !run)
                return false;
        return strcmp(st, "normal") == 0 && strcmp(run, want) == 0;
}

enum obs_verdict engine_observe(const struct store_rhost *h, enum step step, const json_t *state)
{
        if (!json_is_object(state))
                return OBS_NOT_SEEN;
        if (step == STEP_REBOOT) {
                const char *boot = jstr(state, "boot_id");
                if (boot && h->boot_id_before[0] && strcmp(boot, h->boot_id_before) != 0)
                        return OBS_REBOOTED;
        }
        const json_t *op = json_object_get(state, "operation");
        const char *id = jstr(op, "id"), *status = jstr(op, "status");
        if (!id || !status || !h->op_id[0] || strcmp(id, h->op_id) != 0)
                return OBS_NOT_SEEN;
        if (strcmp(status, "running") == 0)
                return OBS_RUNNING;
        if (strcmp(status, "failed") == 0)
                return OBS_FAILED;
        /* A reboot that "succeeded" without a new boot id: the jump is still coming. */
        if (step == STEP_REBOOT)
                return OBS_RUNNING;
        return OBS_SUCCEEDED;
}

enum resp_verdict engine_classify(enum step step, int status, const json_t *body)
{
        const char *code = jstr(body, "code");
        bool replayed = json_is_true(json_object_get(body, "replayed"));

        if (status == 0)
                return RESP_RETRY;
        if (status == 200)
                return RESP_OK;
        if (status == 202)
                return step == STEP_REBOOT || step == STEP_ROLLBACK ? RESP_OK : RESP_RUNNING;
        if (status == 412)
                return RESP_REREAD;
        if (status == 409 && code && strcmp(code, "operation-in-progress") == 0)
                return RESP_WAIT;
        if (status == 409 && code && strcmp(code, "kernel-busy") == 0 && !replayed)
                return RESP_RETRY;
        if (status == 429)
                return RESP_WAIT;
        /* A repeated id answers the first failure again: retrying cannot help. */
        if (status >= 500 && !replayed)
                return RESP_RETRY;
        return RESP_FAIL;
}

bool engine_host_unavailable(const struct rhost *rh)
{
        if (phase_unavailable(rh->phase))
                return true;
        const struct host *h = rh->host;
        if (!h)
                return false;
        /* Unreachable: a contact was tried and failed. */
        if (!h->rec.reachable && h->rec.error)
                return true;
        if (rh->phase == PH_FAILED) {
                const char *st = jstr(h->rec.state, "state");
                if (!st || strcmp(st, "normal") != 0)
                        return true;
        }
        return false;
}

void engine_count(const struct rollout *ro, int wave, struct rollout_counts *ret)
{
        memset(ret, 0, sizeof(*ret));
        for (size_t i = 0; i < ro->nhosts; i++) {
                const struct rhost *rh = &ro->hosts[i];
                if (wave >= 0 && rh->rec.wave != wave)
                        continue;
                ret->by_phase[rh->phase]++;
                if (engine_host_unavailable(rh))
                        ret->unavailable++;
                else if (rh->phase == PH_STAGING || rh->phase == PH_PREPARED)
                        ret->in_flight++;
                if (rh->phase == PH_FAILED)
                        ret->failed++;
        }
}

int engine_op_id(const char *name, const char *rollout, const char *host, enum step step,
                 char buf[static STORE_OPID_MAX])
{
        int n = snprintf(buf, STORE_OPID_MAX, "%s:%s:%s:%s", name, rollout, host,
                         step_to_string(step));
        if (n > 0 && n < STORE_OPID_MAX)
                return 0;
        /* Too long for the agent (64): keep it deterministic with a hash (FNV-1a 64). */
        uint64_t hash = 1469598103934665603ULL;
        const char *parts[3] = { name, rollout, host };
        for (int p = 0; p < 3; p++) {
                for (const char *s = parts[p]; *s; s++) {
                        hash ^= (unsigned char)*s;
                        hash *= 1099511628211ULL;
                }
                hash ^= ':';
                hash *= 1099511628211ULL;
        }
        n = snprintf(buf, STORE_OPID_MAX, "%.24s:%016" PRIx64 ":%s", name, hash,
                     step_to_string(step));
        return n > 0 && n < STORE_OPID_MAX ? 0 : -ENAMETOOLONG;
}

unsigned engine_backoff(unsigned cur, unsigned min_ms, unsigned max_ms)
{
        uint64_t next = cur ? (uint64_t)cur * 2 : min_ms;
        if (next > max_ms)
                next = max_ms;
        /* +-20% jitter so a fleet that went down together does not come back in lockstep. */
        uint64_t span = next / 5;
        if (span)
                next = next - span + (uint64_t)random() % (2 * span + 1);
        return (unsigned)MAX(next, (uint64_t)1);
}

int64_t engine_reboot_retry_ms(int64_t since_ms, int64_t est_ms, unsigned *backoff, unsigned min_ms,
                               unsigned max_ms)
{
        if (est_ms > 0 && since_ms < est_ms * 9 / 10) {
                *backoff = 0;
                return est_ms * 9 / 10 - since_ms;
        }
        if (est_ms > 0 && since_ms < est_ms * 2) {
                *backoff = 0;
                return engine_backoff(0, MAX(min_ms / 2, 1u), MAX(min_ms / 2, 1u));
        }
        *backoff = engine_backoff(*backoff, min_ms, max_ms);
        return *backoff;
}

int64_t engine_blackout_estimate(int64_t est_ms, int64_t blackout_ms)
{
        if (blackout_ms < 0)
                return est_ms;
        return est_ms > 0 ? (est_ms * 7 + blackout_ms * 3) / 10 : MAX(blackout_ms, (int64_t)1);
}

/* ---- model helpers -------------------------------------------------------------- */

struct host *engine_host_find(struct controller *c, const char *name)
{
        for (size_t i = 0; i < c->nhosts; i++)
                if (strcmp(c->hosts[i]->rec.name, name) == 0)
                        return c->hosts[i];
        return NULL;
}

struct rollout *engine_rollout_find(struct controller *c, const char *id)
{
        for (size_t i = 0; i < c->nrollouts; i++)
                if (strcmp(c->rollouts[i]->rec.id, id) == 0)
                        return c->rollouts[i];
        return NULL;
}

int engine_txn(struct controller *c)
{
        if (c->txn)
                return 0;
        int r = store_begin(c->st);
        if (r < 0) {
                c->store_ok = false;
                return r;
        }
        c->txn = true;
        return 0;
}

int engine_event(struct controller *c, struct rollout *ro, const char *type, struct rhost *rh,
                 json_t *data)
{
        char ts[RFC3339_MAX];
        int64_t now = engine_now_wall_ms(c);
        json_t *ev = data ? data : json_object();
        int r;

        if (!ev)
                return -ENOMEM;
        json_object_set_new(ev, "time", json_string(format_rfc3339_ms((uint64_t)now * 1000, ts)));
        json_object_set_new(ev, "rollout", json_string(ro->rec.id));
        json_object_set_new(ev, "type", json_string(type));
        if (rh) {
                json_object_set_new(ev, "host", json_string(rh->rec.name));
                if (!json_object_get(ev, "phase"))
                        json_object_set_new(ev, "phase", json_string(phase_to_string(rh->phase)));
                json_object_set_new(ev, "wave", json_integer(rh->rec.wave));
        }
        r = engine_txn(c);
        if (r >= 0)
                r = store_event_append(c->st, ro->rec.id, ro->rec.last_seq + 1, now, type, ev);
        json_decref(ev);
        if (r < 0) {
                c->store_ok = false;
                return r;
        }
        ro->rec.last_seq++;
        ro->dirty = true;
        c->ev_added = true;
        return 0;
}

static void send_step(struct controller *c, struct rhost *rh);

static void clear_dirty(struct controller *c)
{
        for (size_t i = 0; i < c->nhosts; i++)
                c->hosts[i]->dirty = false;
        for (size_t i = 0; i < c->nrollouts; i++) {
                struct rollout *ro = c->rollouts[i];
                if (!ro->dirty)
                        continue;
                for (size_t j = 0; j < ro->nhosts; j++)
                        ro->hosts[j].dirty = false;
                ro->dirty = false;
        }
}

/* Anything changed in the model that the store does not have yet? */
static bool any_dirty(const struct controller *c)
{
        for (size_t i = 0; i < c->nhosts; i++)
                if (c->hosts[i]->dirty)
                        return true;
        for (size_t i = 0; i < c->nrollouts; i++)
                if (c->rollouts[i]->dirty)
                        return true;
        return false;
}

int engine_commit(struct controller *c)
{
        int r = 0;

        if (c->txn || c->nsendq || !c->store_ok || any_dirty(c)) {
                /* The dirty marks go only once the commit worked: a failed commit is
                 * written again by the next one (and nothing is sent before). */
                r = engine_txn(c);
                for (size_t i = 0; r >= 0 && i < c->nhosts; i++)
                        if (c->hosts[i]->dirty)
                                r = store_host_save(c->st, &c->hosts[i]->rec);
                for (size_t i = 0; r >= 0 && i < c->nrollouts; i++) {
                        struct rollout *ro = c->rollouts[i];
                        if (!ro->dirty)
                                continue; /* a dirty host marks its rollout dirty */
                        for (size_t j = 0; r >= 0 && j < ro->nhosts; j++)
                                if (ro->hosts[j].dirty)
                                        r = store_rhost_save(c->st, ro->rec.id, &ro->hosts[j].rec);
                        if (r >= 0)
                                r = store_rollout_save(c->st, &ro->rec);
                }
                if (r >= 0)
                        r = store_commit(c->st);
                else
                        store_rollback(c->st);
                c->txn = false;
                c->store_ok = r >= 0;
                if (r >= 0)
                        clear_dirty(c);
                else
                        log_error("rollout store: commit failed: %s", store_errmsg(c->st));
        }
        if (c->ev_added) {
                c->ev_added = false;
                pthread_cond_broadcast(&c->ev_cond);
        }
        /* Intent is on the disk (or the commit failed: then nothing goes out, the
         * hosts keep their queued step and the next pass tries again). Only the
         * engine thread talks to the agents (libcurl's multi handle is its own). */
        bool engine = !c->engine_known || pthread_equal(pthread_self(), c->engine_self);
        if (r >= 0 && engine) {
                for (size_t i = 0; i < c->nsendq; i++) {
                        struct rhost *rh = c->sendq[i];
                        if (!rh->send_queued)
                                continue;
                        rh->send_queued = false;
                        send_step(c, rh);
                }
                c->nsendq = 0;
        }
        return r;
}

static void rh_dirty(struct rhost *rh)
{
        rh->dirty = true;
        rh->ro->dirty = true;
}

void engine_set_status(struct controller *c, struct rollout *ro, enum rstatus s, const char *code,
                       const char *detail, json_t *extra)
{
        json_t *reason = NULL;

        if (code) {
                reason = extra ? extra : json_object();
                json_object_set_new(reason, "code", json_string(code));
                json_object_set_new(reason, "detail", json_string(detail ? detail : ""));
        } else {
                json_decref(extra);
        }
        bool same_reason = (reason == NULL && ro->rec.reason == NULL) ||
                           (reason && ro->rec.reason && json_equal(reason, ro->rec.reason));
        if (ro->status == s && same_reason) {
                json_decref(reason);
                return;
        }
        json_decref(ro->rec.reason);
        ro->rec.reason = reason;
        ro->status = s;
        snprintf(ro->rec.status, sizeof(ro->rec.status), "%s", rstatus_to_string(s));
        ro->rec.updated_at = engine_now_wall_ms(c);
        if (rstatus_finished(s))
                ro->rec.finished_at = ro->rec.updated_at;
        ro->dirty = true;
        json_t *ev = json_object();
        json_object_set_new(ev, "status", json_string(rstatus_to_string(s)));
        if (code)
                json_object_set_new(ev, "detail", json_string(code));
        (void)engine_event(c, ro, "rollout-status", NULL, ev);
        if (rstatus_finished(s)) {
                for (size_t i = 0; i < ro->nhosts; i++) {
                        struct rhost *rh = &ro->hosts[i];
                        if (rh->host && rh->host->active == rh)
                                rh->host->active = NULL;
                }
        }
}

void engine_set_phase(struct controller *c, struct rhost *rh, enum phase p, const char *detail)
{
        if (rh->phase == p)
                return;
        int64_t now = engine_now_wall_ms(c);
        rh->phase = p;
        snprintf(rh->rec.phase, sizeof(rh->rec.phase), "%s", phase_to_string(p));
        if (p != PH_PENDING && p != PH_SKIPPED && p != PH_CURRENT && !rh->rec.started_at)
                rh->rec.started_at = now;
        if (phase_terminal(p))
                rh->rec.finished_at = now;
        if (p == PH_UPDATED)
                rh->rec.updated_at = now;
        rh->waiting_op = false;
        rh->retry_at = 0;
        rh->backoff = 0;
        rh_dirty(rh);
        rh->ro->rec.updated_at = now;
        json_t *ev = json_object();
        if (detail)
                json_object_set_new(ev, "detail", json_string(detail));
        if (p == PH_DONE && rh->rec.blackout_ms >= 0)
                json_object_set_new(ev, "blackout_ms", json_integer(rh->rec.blackout_ms));
        (void)engine_event(c, rh->ro, "host-phase", rh, ev);
}

/* Record a step's intent; the request goes out after the commit. */
static void start_step(struct controller *c, struct rhost *rh, enum step s)
{
        rh->step = s;
        snprintf(rh->rec.step, sizeof(rh->rec.step), "%s", step_to_string(s));
        rh->rec.step_done = false;
        if (engine_op_id(c->name, rh->ro->rec.id, rh->rec.name, s, rh->rec.op_id) < 0)
                rh->rec.op_id[0] = 0;
        rh->rec.step_at = engine_now_wall_ms(c);
        rh->rec.attempts++;
        rh->precond_failures = 0;
        rh->waiting_op = false;
        rh->retry_at = 0;
        rh->backoff = 0;
        if (s == STEP_REBOOT) {
                const char *boot = rh->host ? jstr(rh->host->rec.state, "boot_id") : NULL;
                snprintf(rh->rec.boot_id_before, sizeof(rh->rec.boot_id_before), "%s",
                         boot ? boot : "");
        }
        rh_dirty(rh);
        json_t *ev = json_object();
        json_object_set_new(ev, "detail", json_string(step_to_string(s)));
        json_object_set_new(ev, "operation_id", json_string(rh->rec.op_id));
        (void)engine_event(c, rh->ro, "host-action", rh, ev);
        if (!rh->send_queued) {
                if (c->nsendq == c->capq) {
                        size_t cap = MAX(c->capq * 2, (size_t)64);
                        void *q = realloc(c->sendq, cap * sizeof(*c->sendq));
                        if (!q) {
                                /* Not sent now: the resync path resends it. */
                                rh->resync = true;
                                return;
                        }
                        c->sendq = q;
                        c->capq = cap;
                }
                c->sendq[c->nsendq++] = rh;
                rh->send_queued = true;
        }
}

/* Resend the recorded step with its operation id (no new intent to record). */
static void resend_step(struct controller *c, struct rhost *rh)
{
        rh->retry_at = 0;
        if (rh->send_queued)
                return;
        if (c->nsendq == c->capq) {
                size_t cap = MAX(c->capq * 2, (size_t)64);
                void *q = realloc(c->sendq, cap * sizeof(*c->sendq));
                if (!q)
                        return;
                c->sendq = q;
                c->capq = cap;
        }
        c->sendq[c->nsendq++] = rh;
        rh->send_queued = true;
}

static void step_done(struct rhost *rh)
{
        rh->rec.step_done = true;
        rh->waiting_op = false;
        rh->retry_at = 0;
        rh->backoff = 0;
        rh_dirty(rh);
}

static void host_error_event(struct controller *c, struct rhost *rh, const char *code,
                             const char *detail)
{
        json_t *ev = json_object();
        char buf[512];
        const char *what = rh->phase == PH_VERIFYING ? "verify" : step_to_string(rh->step);
        snprintf(buf, sizeof(buf), "%s: %s: %s", *what ? what : "-", code, detail ? detail : "");
        json_object_set_new(ev, "detail", json_string(buf));
        (void)engine_event(c, rh->ro, "host-error", rh, ev);
}

static void abandon_action(struct controller *c, struct rhost *rh)
{
        if (rh->action) {
                ac_cancel(c->ac, rh->action);
                rh->action = NULL;
        }
        if (rh->lease_req) {
                ac_cancel(c->ac, rh->lease_req);
                rh->lease_req = NULL;
        }
        rh->send_queued = false;
}

/* Was the host (possibly) prepared by us, so that a cancel is owed? */
static bool owes_cancel(const struct rhost *rh)
{
        if (rh->phase == PH_PREPARED)
                return true;
        if (rh->phase == PH_REBOOTING) {
                /* The kexec was refused or never seen: unless the host is known to be in
                 * a new boot, it may still be prepared (or frozen): cancel it. A host that
                 * did reboot answers the cancel with 409, which changes nothing. */
                const json_t *st = rh->host ? rh->host->rec.state : NULL;
                const char *state = jstr(st, "state"), *boot = jstr(st, "boot_id");
                bool new_boot = boot && rh->rec.boot_id_before[0] &&
                                strcmp(boot, rh->rec.boot_id_before) != 0;
                return !new_boot && (!state || strcmp(state, "normal") != 0);
        }
        if (rh->phase == PH_STAGING && rh->step == STEP_PREPARE) {
                /* A refused prepare leaves the kernel normal: nothing to cancel. When the
                 * last state seen is not normal (or unknown), cancel to be sure. */
                const char *st = rh->host ? jstr(rh->host->rec.state, "state") : NULL;
                return !st || strcmp(st, "normal") != 0;
        }
        return false;
}

/* Fail a host with {code, detail}; cancel it if it was prepared, roll it back when asked. */
static void fail_host(struct controller *c, struct rhost *rh, const char *code, const char *detail,
                      bool rollback)
{
        if (phase_terminal(rh->phase))
                return;
        bool cancel = owes_cancel(rh);
        json_decref(rh->rec.error);
        rh->rec.error = json_pack("{s:s, s:s}", "code", code, "detail", detail ? detail : "");
        host_error_event(c, rh, code, detail);
        engine_set_phase(c, rh, PH_FAILED, code);
        abandon_action(c, rh);
        rh->resync = false;
        if (cancel)
                start_step(c, rh, STEP_CANCEL);
        else if (rollback && rh->ro->lim.auto_rollback)
                start_step(c, rh, STEP_ROLLBACK);
}

static void problem_text(const struct ac_result *res, char *code, size_t csize, char *detail,
                         size_t dsize)
{
        const char *pc = jstr(res->body, "code"), *pd = jstr(res->body, "detail");
        if (res->status == 0) {
                snprintf(code, csize, "unreachable");
                snprintf(detail, dsize, "%s", res->error);
        } else {
                if (pc)
                        snprintf(code, csize, "%s", pc);
                else
                        snprintf(code, csize, "http-%d", res->status);
                snprintf(detail, dsize, "HTTP %d%s%s", res->status, pd ? ": " : "", pd ? pd : "");
        }
}

/* The step (recorded in rh) completed successfully: move on. */
static void step_succeeded(struct controller *c, struct rhost *rh)
{
        step_done(rh);
        switch (rh->step) {
        case STEP_PREPARE:
                if (rh->phase == PH_STAGING)
                        engine_set_phase(c, rh, PH_PREPARED, NULL);
                rh->lease_at = engine_now_wall_ms(c);
                break;
        case STEP_FINISH:
                if (rh->phase == PH_FINISHING)
                        engine_set_phase(c, rh, PH_DONE, NULL);
                break;
        default:
                break;
        }
}

static void rebooted(struct controller *c, struct rhost *rh, const json_t *doc)
{
        const char *boot = jstr(doc, "boot_id"), *kernel = jstr(doc, "kernel");
        const json_t *lu = json_object_get(doc, "last_update");
        const json_t *bo = json_object_get(lu, "blackout_ms");

        abandon_action(c, rh);
        rh->resync = false;
        step_done(rh);
        snprintf(rh->rec.boot_id_after, sizeof(rh->rec.boot_id_after), "%s", boot ? boot : "");
        snprintf(rh->rec.kernel, sizeof(rh->rec.kernel), "%s", kernel ? kernel : "");
        rh->rec.blackout_ms = json_is_integer(bo) ? json_integer_value(bo) : -1;
        rh->ro->blackout_est_ms =
                engine_blackout_estimate(rh->ro->blackout_est_ms, rh->rec.blackout_ms);
        json_t *ev = json_object();
        if (rh->rec.blackout_ms >= 0)
                json_object_set_new(ev, "blackout_ms", json_integer(rh->rec.blackout_ms));
        if (kernel)
                json_object_set_new(ev, "detail", json_string(kernel));
        engine_set_phase(c, rh, PH_UPDATED, NULL);
        (void)ev;
        json_decref(ev);
}

/* Handle what a state document says about rh's recorded step. */
static void rh_observe(struct controller *c, struct rhost *rh, const json_t *doc, bool resync)
{
        if (rh->step == STEP_NONE)
                return;
        if (rh->rec.step_done && !(rh->step == STEP_REBOOT && rh->phase == PH_REBOOTING))
                return;
        enum obs_verdict v = engine_observe(&rh->rec, rh->step, doc);
        const json_t *err = json_object_get(json_object_get(doc, "operation"), "error");

        switch (v) {
        case OBS_REBOOTED:
                if (rh->phase == PH_REBOOTING)
                        rebooted(c, rh, doc);
                else
                        step_done(rh);
                break;
        case OBS_SUCCEEDED:
                if (rh->action && rh->action_kind == AC_ACTION)
                        break; /* its answer comes */
                step_succeeded(c, rh);
                break;
        case OBS_FAILED:
                if (rh->action && rh->action_kind == AC_ACTION)
                        break;
                if (phase_terminal(rh->phase)) {
                        step_done(rh);
                        break;
                }
                fail_host(c, rh, jstr(err, "code") ? jstr(err, "code") : "operation-failed",
                          jstr(err, "detail"), false);
                break;
        case OBS_RUNNING:
                rh->waiting_op = true;
                break;
        case OBS_NOT_SEEN:
                if (resync || (rh->waiting_op && !rh->action)) {
                        /* Not started (resync), or our running operation was superseded. */
                        if (rh->waiting_op && !resync)
                                rh->waiting_op = false;
                        if (resync)
                                resend_step(c, rh);
                }
                break;
        }
}

/* ---- sending --------------------------------------------------------------------- */

static void on_action_cb(void *ud, const struct ac_result *res);
static void on_resync_cb(void *ud, const struct ac_result *res);
static void on_readyz_cb(void *ud, const struct ac_result *res);

static int64_t host_index(const struct host *h)
{
        const json_t *i = json_object_get(h ? h->rec.state : NULL, "index");
        return json_is_integer(i) ? json_integer_value(i) : -1;
}

static void send_step(struct controller *c, struct rhost *rh)
{
        const char *path = NULL, *method = "POST";
        json_t *body = NULL;
        char reason[128];

        if (!rh->host || rh->action)
                return;
        if (c->send_hook) {
                c->send_hook(c, rh, AC_ACTION);
                return;
        }
        snprintf(reason, sizeof(reason), "rollout %s", rh->ro->rec.id);
        switch (rh->step) {
        case STEP_STAGE:
                method = "PUT";
                path = "/v1/kernel";
                body = json_deep_copy(json_object_get(rh->ro->rec.spec, "target"));
                if (!body)
                        body = json_object();
                json_object_set_new(body, "operation_id", json_string(rh->rec.op_id));
                break;
        case STEP_PREPARE:
                path = "/v1/prepare";
                body = json_pack("{s:s, s:s}", "operation_id", rh->rec.op_id, "reason", reason);
                if (rh->ro->lim.lease_seconds)
                        json_object_set_new(body, "lease_seconds",
                                            json_integer(rh->ro->lim.lease_seconds));
                break;
        case STEP_REBOOT:
                path = "/v1/reboot";
                break;
        case STEP_FINISH:
        case STEP_ROLLBACK_FINISH:
                path = "/v1/finish";
                break;
        case STEP_CANCEL:
                path = "/v1/cancel";
                break;
        case STEP_ROLLBACK:
                path = "/v1/rollback";
                break;
        default:
                return;
        }
        if (!body)
                body = json_pack("{s:s, s:s}", "operation_id", rh->rec.op_id, "reason", reason);
        int r = ac_start(c->ac, AC_ACTION, method, rh->host->rec.url, path, body,
                         host_index(rh->host), 0, on_action_cb, rh, &rh->action);
        json_decref(body);
        if (r < 0) {
                rh->backoff = engine_backoff(rh->backoff, c->retry_min_ms, c->retry_max_ms);
                rh->retry_at = engine_now_mono_ms(c) + rh->backoff;
                return;
        }
        rh->action_kind = AC_ACTION;
}

static void start_resync(struct controller *c, struct rhost *rh)
{
        if (!rh->host || rh->action)
                return;
        if (c->send_hook) {
                /* Tests: the hook sees the read and answers with engine_on_resync(). */
                c->send_hook(c, rh, AC_STATE);
                return;
        }
        if (ac_start(c->ac, AC_STATE, "GET", rh->host->rec.url, "/v1/state", NULL, -1, 0,
                     on_resync_cb, rh, &rh->action) >= 0)
                rh->action_kind = AC_STATE;
}

static void start_readyz(struct controller *c, struct rhost *rh)
{
        if (!rh->host || rh->action)
                return;
        if (c->send_hook) {
                c->send_hook(c, rh, AC_READYZ);
                return;
        }
        if (ac_start(c->ac, AC_READYZ, "GET", rh->host->rec.url, "/readyz", NULL, -1, 0,
                     on_readyz_cb, rh, &rh->action) >= 0)
                rh->action_kind = AC_READYZ;
}

static void host_seen(struct controller *c, struct host *h, json_t *doc)
{
        json_decref(h->rec.state);
        h->rec.state = json_incref(doc);
        h->rec.reachable = true;
        h->rec.last_seen = engine_now_wall_ms(c);
        free(h->rec.error);
        h->rec.error = NULL;
        h->watch_backoff = 0;
        h->dirty = true;
        if (h->active) {
                const json_t *idx = json_object_get(doc, "index");
                if (json_is_integer(idx) && h->active->rec.last_index != json_integer_value(idx)) {
                        h->active->rec.last_index = json_integer_value(idx);
                        rh_dirty(h->active);
                }
        }
}

static void host_unreachable(struct controller *c, struct host *h, const char *err)
{
        bool changed = h->rec.reachable || !h->rec.error || strcmp(h->rec.error, err) != 0;
        h->rec.reachable = false;
        if (changed) {
                free(h->rec.error);
                h->rec.error = strdup(err);
                h->dirty = true;
        }
}

/*
 * A failed host we sent POST /v1/rollback: the agent finishes the update,
 * stages the previous kernel, prepares and kexecs into it, and comes back
 * `updated` in a new boot. Finish that boot (its own operation id), so the
 * host ends normal on its old kernel and stops counting as unavailable.
 */
static void rollback_progress(struct controller *c, struct rhost *rh, const json_t *doc)
{
        const char *boot = jstr(doc, "boot_id"), *st = jstr(doc, "state");

        if (rh->phase != PH_FAILED || rh->step != STEP_ROLLBACK || !rh->rec.step_done ||
            rh->action || rh->send_queued)
                return;
        if (!boot || !st || !rh->rec.boot_id_after[0] || strcmp(boot, rh->rec.boot_id_after) == 0)
                return;
        if (strcmp(st, "updated") == 0)
                start_step(c, rh, STEP_ROLLBACK_FINISH);
}

void engine_on_state(struct controller *c, struct host *h, json_t *doc)
{
        if (!json_is_object(doc) || !json_is_integer(json_object_get(doc, "index")))
                return;
        host_seen(c, h, doc);
        if (h->active) {
                rh_observe(c, h->active, doc, false);
                rollback_progress(c, h->active, doc);
        }
}

void engine_on_action(struct controller *c, struct rhost *rh, const struct ac_result *res)
{
        char code[64], detail[320];

        if (rh->host && (res->status == 200 || res->status == 202) && json_is_object(res->body) &&
            json_object_get(res->body, "index"))
                host_seen(c, rh->host, res->body);
        else if (rh->host && res->status == 0)
                host_unreachable(c, rh->host, res->error);

        enum resp_verdict v = engine_classify(rh->step, res->status, res->body);
        if (phase_terminal(rh->phase) && rh->step != STEP_CANCEL && rh->step != STEP_ROLLBACK &&
            rh->step != STEP_ROLLBACK_FINISH)
                return;
        switch (v) {
        case RESP_OK:
                if (rh->step == STEP_REBOOT) {
                        /* Accepted: the long-poll sees the new boot. Possibly already. */
                        if (rh->host)
                                rh_observe(c, rh, rh->host->rec.state, false);
                } else if (rh->step == STEP_CANCEL || rh->step == STEP_ROLLBACK) {
                        step_done(rh);
                } else if (rh->step == STEP_ROLLBACK_FINISH) {
                        step_done(rh);
                        json_t *ev = json_object();
                        const char *k = rh->host ? jstr(rh->host->rec.state, "kernel") : NULL;
                        json_object_set_new(ev, "detail", json_string(k ? k : ""));
                        (void)engine_event(c, rh->ro, "host-rolled-back", rh, ev);
                } else {
                        step_succeeded(c, rh);
                }
                break;
        case RESP_RUNNING:
                rh->waiting_op = true;
                if (rh->host)
                        rh_observe(c, rh, rh->host->rec.state, false);
                break;
        case RESP_REREAD:
                if (++rh->precond_failures > PRECOND_MAX) {
                        fail_host(c, rh, "precondition-failed",
                                  "the host's state kept changing under the controller", false);
                        break;
                }
                rh->resync = true;
                break;
        case RESP_WAIT:
        case RESP_RETRY:
                problem_text(res, code, sizeof(code), detail, sizeof(detail));
                if (res->status != 0 || rh->step != STEP_REBOOT)
                        host_error_event(c, rh, code, detail);
                rh->backoff = engine_backoff(rh->backoff, c->retry_min_ms, c->retry_max_ms);
                rh->retry_at = engine_now_mono_ms(c) + rh->backoff;
                break;
        case RESP_FAIL:
                problem_text(res, code, sizeof(code), detail, sizeof(detail));
                if (rh->step == STEP_CANCEL || rh->step == STEP_ROLLBACK ||
                    rh->step == STEP_ROLLBACK_FINISH) {
                        /* Nothing left to cancel (already normal), or no rollback target:
                         * the host stays failed; say so. */
                        host_error_event(c, rh, code, detail);
                        step_done(rh);
                        break;
                }
                fail_host(c, rh, code, detail,
                          rh->step == STEP_FINISH && strcmp(code, "health-check-failed") == 0);
                break;
        }
}

static void on_action_cb(void *ud, const struct ac_result *res)
{
        struct rhost *rh = ud;
        rh->action = NULL;
        /* Called from ac_dispatch() under c->lock. */
        engine_on_action(rh->ro->ctl, rh, res);
}

/* ---- readiness -------------------------------------------------------------------- */

/* Verdict on GET /readyz: 1 ready, 0 not yet, -1 definitive failure (code/detail set). */
static int readyz_verdict(const struct rhost *rh, const struct ac_result *res, char *code,
                          size_t csize, char *detail, size_t dsize)
{
        const json_t *checks = json_object_get(res->body, "checks");
        const char *release = jstr(json_object_get(rh->ro->rec.spec, "target"), "release");
        const char *kernel = rh->host ? jstr(rh->host->rec.state, "kernel") : NULL;
        bool all_ok = res->status == 200;
        size_t i;
        const json_t *ch;

        if (res->status == 0 || !json_is_array(checks))
                return 0;
        json_array_foreach (checks, i, ch) {
                const char *name = jstr(ch, "name");
                if (json_is_true(json_object_get(ch, "ok")))
                        continue;
                all_ok = false;
                if (name && strcmp(name, "kernel-verified") == 0) {
                        snprintf(code, csize, "kernel-verification-failed");
                        snprintf(detail, dsize, "%s", jstr(ch, "detail") ? jstr(ch, "detail") : "");
                        return -1;
                }
                snprintf(code, csize, "health-check-failed");
                snprintf(detail, dsize, "%s: %s", name ? name : "?",
                         jstr(ch, "detail") ? jstr(ch, "detail") : "");
        }
        if (release && kernel && strcmp(release, kernel) != 0) {
                snprintf(code, csize, "kernel-mismatch");
                snprintf(detail, dsize, "running %s, the target is %s", kernel, release);
                return -1;
        }
        return all_ok ? 1 : 0;
}

void engine_on_readyz(struct controller *c, struct rhost *rh, const struct ac_result *res)
{
        char code[64] = "health-check-failed", detail[320] = "";

        if (rh->phase != PH_VERIFYING)
                return;
        int v = readyz_verdict(rh, res, code, sizeof(code), detail, sizeof(detail));
        if (v > 0) {
                const char *st = rh->host ? jstr(rh->host->rec.state, "state") : NULL;
                if (st && strcmp(st, "normal") == 0) {
                        /* Came back without a live update pending (nothing to finish). */
                        engine_set_phase(c, rh, PH_DONE, "nothing to finish");
                        return;
                }
                engine_set_phase(c, rh, PH_FINISHING, NULL);
                start_step(c, rh, STEP_FINISH);
                return;
        }
        if (v < 0) {
                fail_host(c, rh, code, detail, true);
                return;
        }
        if (res->status == 0 && rh->host)
                host_unreachable(c, rh->host, res->error);
        rh->backoff = engine_backoff(rh->backoff, c->retry_min_ms, c->retry_max_ms);
        rh->retry_at = engine_now_mono_ms(c) + rh->backoff;
        json_decref(rh->rec.error);
        rh->rec.error = json_pack("{s:s, s:s}", "code", code, "detail", detail);
        rh_dirty(rh);
}

static void on_readyz_cb(void *ud, const struct ac_result *res)
{
        struct rhost *rh = ud;
        rh->action = NULL;
        engine_on_readyz(rh->ro->ctl, rh, res);
}

static void on_resync_cb(void *ud, const struct ac_result *res)
{
        struct rhost *rh = ud;
        rh->action = NULL;
        engine_on_resync(rh->ro->ctl, rh, res);
}

void engine_on_resync(struct controller *c, struct rhost *rh, const struct ac_result *res)
{
        if (res->status == 200 && json_is_object(res->body) && rh->host) {
                host_seen(c, rh->host, res->body);
                rh->resync = false;
                rh_observe(c, rh, res->body, true);
                return;
        }
        if (rh->host && res->status == 0)
                host_unreachable(c, rh->host, res->error);
        rh->backoff = engine_backoff(rh->backoff, c->retry_min_ms, c->retry_max_ms);
        rh->retry_at = engine_now_mono_ms(c) + rh->backoff;
}

/* ---- leases ---------------------------------------------------------------------- */

/*
 * A host prepared with a dead-man lease (lease_seconds) that waits (for the
 * rest of a two-phase wave, for the budget, through a pause) has its lease
 * renewed at a third of its length, so it stays prepared while the
 * controller lives, and cancels itself when the controller is gone. A lease
 * already gone (404 no-lease, 409 lease-mismatch: the host cancelled itself)
 * fails the host with lease-expired instead of a confusing refusal later.
 */
static void on_lease_cb(void *ud, const struct ac_result *res)
{
        struct rhost *rh = ud;
        struct controller *c = rh->ro->ctl;
        char code[64], detail[320];

        rh->lease_req = NULL;
        if (rh->phase != PH_PREPARED)
                return;
        if (res->status == 200) {
                rh->lease_at = engine_now_wall_ms(c);
                return;
        }
        problem_text(res, code, sizeof(code), detail, sizeof(detail));
        if (res->status == 404 || res->status == 409) {
                fail_host(c, rh, "lease-expired", detail, false);
                return;
        }
        host_error_event(c, rh, code, detail);
        /* Transport error or 5xx: the next pass tries again (not before a second). */
        rh->lease_at = engine_now_wall_ms(c) - (int64_t)rh->ro->lim.lease_seconds * 1000 / 3 + 1000;
}

static void renew_lease(struct controller *c, struct rhost *rh, int64_t now_wall)
{
        unsigned secs = rh->ro->lim.lease_seconds;

        if (!secs || rh->phase != PH_PREPARED || rh->step != STEP_PREPARE || rh->lease_req ||
            rh->action || rh->send_queued || !rh->host || c->send_hook ||
            now_wall - rh->lease_at < (int64_t)secs * 1000 / 3)
                return;
        json_t *body =
                json_pack("{s:s, s:i}", "operation_id", rh->rec.op_id, "lease_seconds", (int)secs);
        if (!body)
                return;
        (void)ac_start(c->ac, AC_ACTION, "POST", rh->host->rec.url, "/v1/lease", body, -1, 0,
                       on_lease_cb, rh, &rh->lease_req);
        json_decref(body);
}

/* ---- the rollout pass ---------------------------------------------------------------- */

static bool window_open(struct controller *c, struct rollout *ro, json_t **reason_extra,
                        char *detail, size_t dsize)
{
        const json_t *w = json_object_get(ro->rec.spec, "windows");
        time_t now = (time_t)(engine_now_wall_ms(c) / 1000 + c->time_offset_s);
        time_t next = 0, closes = 0;

        if (!json_is_array(w) || json_array_size(w) == 0)
                return true;
        int r = windows_check(w, now, &next, &closes);
        if (r != 0)
                return r > 0 || r < 0; /* a broken array was refused at create; don't block */
        char ts[RFC3339_MAX];
        if (next > 0) {
                format_rfc3339_ms((uint64_t)(next - c->time_offset_s) * 1000000, ts);
                *reason_extra = json_pack("{s:s}", "next_window_at", ts);
                snprintf(detail, dsize, "outside every maintenance window; the next opens at %s",
                         ts);
        } else {
                *reason_extra = json_object();
                snprintf(detail, dsize, "outside every maintenance window");
        }
        return false;
}

/* Timeouts of the host's current phase. */
static void check_timeout(struct controller *c, struct rhost *rh, int64_t now_wall)
{
        const struct rollout_limits *l = &rh->ro->lim;
        int64_t limit = 0, since = 0;
        const char *code = NULL;

        switch (rh->phase) {
        case PH_STAGING:
                if (rh->step == STEP_STAGE && !rh->rec.step_done) {
                        limit = l->stage_ms;
                        code = "timeout-stage";
                } else if (rh->step == STEP_PREPARE && !rh->rec.step_done) {
                        limit = l->prepare_ms;
                        code = "timeout-prepare";
                }
                since = rh->rec.step_at;
                break;
        case PH_REBOOTING:
                limit = l->reboot_ms;
                code = "timeout-reboot";
                since = rh->rec.step_at;
                break;
        case PH_UPDATED:
        case PH_VERIFYING:
        case PH_FINISHING:
                limit = l->finish_ms;
                code = "timeout-finish";
                since = rh->rec.updated_at;
                break;
        default:
                return;
        }
        if (!code || limit <= 0 || since <= 0 || now_wall - since < limit)
                return;
        char detail[160];
        snprintf(detail, sizeof(detail), "the %s phase took longer than %" PRId64 " ms",
                 phase_to_string(rh->phase), limit);
        bool verifying = rh->phase == PH_VERIFYING || rh->phase == PH_UPDATED;
        fail_host(c, rh, code, detail, verifying && rh->rec.error);
}

static void finish_rollout(struct controller *c, struct rollout *ro)
{
        struct rollout_counts n;
        engine_count(ro, -1, &n);
        if (ro->rec.aborting) {
                char detail[256];
                const char *d = jstr(ro->rec.reason, "detail");
                snprintf(detail, sizeof(detail), "%s", d ? d : "aborted by user");
                engine_set_status(c, ro, RS_ABORTED, "aborted-by-user", detail, NULL);
                return;
        }
        if (n.by_phase[PH_DONE] == 0 && n.failed > 0) {
                /* Keep the more specific cause a pause gave, if any. */
                const char *why = jstr(ro->rec.reason, "code");
                bool two_phase = why && strcmp(why, "two-phase-prepare-failed") == 0;
                engine_set_status(c, ro, RS_FAILED,
                                  two_phase ? "two-phase-prepare-failed"
                                            : "failure-budget-exhausted",
                                  "no host could be updated", NULL);
        } else
                engine_set_status(c, ro, RS_COMPLETED, NULL, NULL, NULL);
}

static bool hosts_busy(const struct rollout *ro)
{
        int64_t now = engine_now_wall_ms(ro->ctl);

        for (size_t i = 0; i < ro->nhosts; i++) {
                const struct rhost *rh = &ro->hosts[i];
                if (rh->action || rh->send_queued)
                        return true;
                if ((rh->step == STEP_CANCEL || rh->step == STEP_ROLLBACK ||
                     rh->step == STEP_ROLLBACK_FINISH) &&
                    !rh->rec.step_done && rh->host && rh->host->rec.reachable)
                        return true;
                /* Rolled back, its new boot not finished yet: wait for it, within the
                 * reboot and finish timeouts. */
                if (rh->step == STEP_ROLLBACK && rh->rec.step_done && rh->host &&
                    now - rh->rec.step_at < ro->lim.reboot_ms + ro->lim.finish_ms) {
                        const char *st = jstr(rh->host->rec.state, "state");
                        if (!st || strcmp(st, "normal") != 0)
                                return true;
                }
        }
        return false;
}

static void tick_abort(struct controller *c, struct rollout *ro)
{
        bool all_terminal = true;
        for (size_t i = 0; i < ro->nhosts; i++) {
                struct rhost *rh = &ro->hosts[i];
                if (rh->phase == PH_PENDING) {
                        engine_set_phase(c, rh, PH_SKIPPED, "aborted");
                } else if (rh->phase == PH_STAGING && rh->step == STEP_STAGE) {
                        if (!rh->action) {
                                rh->resync = false;
                                engine_set_phase(c, rh, PH_CANCELLED, "aborted");
                        }
                } else if (rh->phase != PH_REBOOTING && owes_cancel(rh) &&
                           !(rh->action && rh->step == STEP_PREPARE)) {
                        /* (A host in its reboot completes: the kexec cannot be called back.) */
                        abandon_action(c, rh);
                        rh->resync = false;
                        engine_set_phase(c, rh, PH_CANCELLED, "aborted");
                        start_step(c, rh, STEP_CANCEL);
                }
                if (!phase_terminal(rh->phase))
                        all_terminal = false;
        }
        if (all_terminal && !hosts_busy(ro))
                finish_rollout(c, ro);
}

/* A cancel sent to a reachable host and not answered yet (as hosts_busy). */
static bool cancel_under_way(const struct rhost *rh)
{
        return rh->step == STEP_CANCEL &&
               (rh->action || rh->send_queued ||
                (!rh->rec.step_done && rh->host && rh->host->rec.reachable));
}

/*
 * Two-phase mode: a host of the current wave failed before any of the wave
 * rebooted. Nothing more of the wave may go ahead: prepared hosts are
 * cancelled, staged-only ones set aside (cancelled, nothing to undo in the
 * kernel), hosts whose stage or prepare is still under way are waited for,
 * and so are the cancels (as an abort waits: docs/rollout.md promises the
 * wave's hosts are back to normal when the rollout pauses; an unreachable
 * host is not waited for, its cancel is retried). Then the rollout pauses
 * with two-phase-prepare-failed, whatever the failure budget says (the cause
 * is more specific). Returns true while the wave is being taken down (the
 * pass ends there).
 *
 * The pause is owed while the wave has such a failure that no resume has
 * accepted yet (budget_baseline): after a kill -9 between the cancels and the
 * pause, the restarted engine waits for the cancels again and then pauses.
 */
static bool tick_two_phase_failure(struct controller *c, struct rollout *ro)
{
        struct rollout_counts w, all;
        int wave = ro->rec.current_wave;
        bool waiting = false, taken_down = false;
        char detail[256];

        if (ro->lim.mode != ROLLOUT_TWO_PHASE || wave < 0)
                return false;
        engine_count(ro, wave, &w);
        unsigned past = w.by_phase[PH_REBOOTING] + w.by_phase[PH_UPDATED] +
                        w.by_phase[PH_VERIFYING] + w.by_phase[PH_FINISHING] + w.by_phase[PH_DONE];
        if (w.failed == 0 || past > 0)
                return false;
        /* (Outside an abort, only this takedown cancels a host of a two-phase wave.) */
        for (size_t i = 0; i < ro->nhosts; i++)
                if (ro->hosts[i].rec.wave == wave && ro->hosts[i].phase == PH_CANCELLED)
                        taken_down = true;
        if (w.by_phase[PH_STAGING] + w.by_phase[PH_PREPARED] == 0) {
                engine_count(ro, -1, &all);
                if (!taken_down || ro->status == RS_PAUSED ||
                    (int)all.failed <= ro->rec.budget_baseline)
                        return false;
        }
        for (size_t i = 0; i < ro->nhosts; i++) {
                struct rhost *rh = &ro->hosts[i];
                if (rh->rec.wave != wave)
                        continue;
                if (rh->phase == PH_CANCELLED && cancel_under_way(rh)) {
                        waiting = true; /* the host is not back to normal yet */
                        continue;
                }
                if (rh->phase != PH_STAGING && rh->phase != PH_PREPARED)
                        continue;
                if (rh->action || rh->send_queued || rh->resync ||
                    (rh->phase == PH_STAGING && !rh->rec.step_done)) {
                        waiting = true; /* its answer comes first */
                        continue;
                }
                if (rh->phase == PH_PREPARED) {
                        engine_set_phase(c, rh, PH_CANCELLED, "two-phase-prepare-failed");
                        start_step(c, rh, STEP_CANCEL);
                        waiting = true;
                } else {
                        engine_set_phase(c, rh, PH_CANCELLED, "two-phase-prepare-failed");
                }
        }
        if (!waiting) {
                snprintf(detail, sizeof(detail),
                         "%u hosts of wave %d failed before the reboot: the wave was cancelled",
                         w.failed, wave);
                engine_set_status(c, ro, RS_PAUSED, "two-phase-prepare-failed", detail, NULL);
        }
        return true;
}

/* The wave's pending hosts that run the target already: left alone, whatever the budget or
 * the window (nothing is done to them). */
static void mark_current(struct controller *c, struct rollout *ro, int wave)
{
        for (size_t i = 0; i < ro->nhosts; i++) {
                struct rhost *rh = &ro->hosts[i];
                if (rh->rec.wave != wave || rh->phase != PH_PENDING || !rh->host ||
                    !rh->host->rec.reachable ||
                    !engine_host_current(ro->rec.spec, rh->host->rec.state))
                        continue;
                const char *run = jstr(rh->host->rec.state, "kernel");
                char detail[STORE_KERNEL_MAX + 32];
                snprintf(rh->rec.kernel, sizeof(rh->rec.kernel), "%s", run);
                snprintf(detail, sizeof(detail), "the host runs %s already", run);
                engine_set_phase(c, rh, PH_CURRENT, detail);
        }
}

static void start_wave(struct controller *c, struct rollout *ro, int wave)
{
        ro->rec.current_wave = wave;
        ro->rec.wave_finished_at = 0;
        ro->dirty = true;
        json_t *ev = json_pack("{s:i}", "wave", wave);
        (void)engine_event(c, ro, "wave-started", NULL, ev);
        for (size_t i = 0; i < ro->nhosts; i++)
                if (ro->hosts[i].rec.wave == wave && ro->hosts[i].host)
                        ro->hosts[i].host->watch_at = 0; /* watch from now on */
}

void engine_tick(struct controller *c, struct rollout *ro)
{
        int64_t now_wall = engine_now_wall_ms(c), now_mono = engine_now_mono_ms(c);
        struct rollout_counts all, w;
        char detail[256];
        json_t *extra = NULL;

        if (rstatus_finished(ro->status))
                return;
        if (ro->status == RS_PENDING)
                engine_set_status(c, ro, RS_RUNNING, NULL, NULL, NULL);

        /* Timeouts, retries and resyncs of the hosts. */
        for (size_t i = 0; i < ro->nhosts; i++) {
                struct rhost *rh = &ro->hosts[i];
                check_timeout(c, rh, now_wall);
                renew_lease(c, rh, now_wall);
                if (rh->action || rh->send_queued)
                        continue;
                if (rh->retry_at && now_mono < rh->retry_at)
                        continue;
                if (rh->resync) {
                        rh->retry_at = 0;
                        start_resync(c, rh);
                        continue;
                }
                if (rh->retry_at) {
                        rh->retry_at = 0;
                        if (rh->phase == PH_VERIFYING)
                                start_readyz(c, rh);
                        else if (!rh->rec.step_done && rh->step != STEP_NONE)
                                resend_step(c, rh);
                }
        }
        /* Hosts past the reboot complete whatever the status, aborting included: a
         * kexec cannot be called back, and an updated host must be finished. */
        for (size_t i = 0; i < ro->nhosts; i++) {
                struct rhost *rh = &ro->hosts[i];
                if (rh->action || rh->send_queued || rh->resync)
                        continue;
                if (rh->phase == PH_UPDATED) {
                        engine_set_phase(c, rh, PH_VERIFYING, NULL);
                        start_readyz(c, rh);
                } else if (rh->phase == PH_VERIFYING && !rh->retry_at) {
                        start_readyz(c, rh);
                }
        }
        if (ro->rec.aborting) {
                tick_abort(c, ro);
                return;
        }
        if (tick_two_phase_failure(c, ro))
                return;

        /* Failure budget. */
        engine_count(ro, -1, &all);
        if ((int)all.failed - ro->rec.budget_baseline > (int)ro->lim.max_failures &&
            ro->status != RS_PAUSED) {
                snprintf(detail, sizeof(detail), "%u hosts failed, more than max_failures %u",
                         all.failed - (unsigned)ro->rec.budget_baseline, ro->lim.max_failures);
                engine_set_status(c, ro, RS_PAUSED, "failure-budget-exhausted", detail, NULL);
        }

        /* The current wave. */
        if (ro->rec.current_wave < 0) {
                if (ro->status == RS_PAUSED)
                        return;
                if (!window_open(c, ro, &extra, detail, sizeof(detail))) {
                        engine_set_status(c, ro, RS_BLOCKED, "outside-window", detail, extra);
                        return;
                }
                start_wave(c, ro, 0);
        }
        int wave = ro->rec.current_wave;
        mark_current(c, ro, wave);
        engine_count(ro, wave, &w);
        unsigned wave_total = 0, wave_terminal = 0;
        for (int p = 0; p < _PH_MAX; p++) {
                wave_total += w.by_phase[p];
                if (phase_terminal(p))
                        wave_terminal += w.by_phase[p];
        }
        if (wave_terminal == wave_total && !hosts_busy(ro)) {
                if (!ro->rec.wave_finished_at) {
                        ro->rec.wave_finished_at = now_wall;
                        ro->dirty = true;
                        (void)engine_event(c, ro, "wave-finished", NULL,
                                           json_pack("{s:i}", "wave", wave));
                }
                if (wave + 1 >= ro->nwaves) {
                        finish_rollout(c, ro);
                        return;
                }
                if (ro->status == RS_PAUSED)
                        return;
                /* A wave that changed nothing (every host current already) needs no soak. */
                if (w.by_phase[PH_CURRENT] < wave_total &&
                    now_wall < ro->rec.wave_finished_at + ro->lim.soak_ms)
                        return;
                if (!window_open(c, ro, &extra, detail, sizeof(detail))) {
                        engine_set_status(c, ro, RS_BLOCKED, "outside-window", detail, extra);
                        return;
                }
                start_wave(c, ro, wave + 1);
                wave++;
                mark_current(c, ro, wave);
                engine_count(ro, wave, &w);
        }
        if (ro->status == RS_PAUSED)
                return;

        bool open = window_open(c, ro, &extra, detail, sizeof(detail));
        bool want_start = false, started = false, budget_blocked = false;
        engine_count(ro, -1, &all);
        unsigned unavail = all.unavailable, reserved = all.unavailable + all.in_flight;
        unsigned maxu = ro->lim.max_unavailable;

        if (ro->lim.mode == ROLLOUT_TWO_PHASE) {
                unsigned staging = w.by_phase[PH_STAGING], prepared = w.by_phase[PH_PREPARED];
                unsigned past = w.by_phase[PH_REBOOTING] + w.by_phase[PH_UPDATED] +
                                w.by_phase[PH_VERIFYING] + w.by_phase[PH_FINISHING] +
                                w.by_phase[PH_DONE];
                if (w.by_phase[PH_PENDING]) {
                        want_start = true;
                        if (open) {
                                for (size_t i = 0; i < ro->nhosts; i++) {
                                        struct rhost *rh = &ro->hosts[i];
                                        if (rh->rec.wave != wave || rh->phase != PH_PENDING)
                                                continue;
                                        engine_set_phase(c, rh, PH_STAGING, NULL);
                                        start_step(c, rh, STEP_STAGE);
                                }
                                started = true;
                        }
                } else if (staging == 0 && prepared > 0 && past == 0 && w.failed == 0) {
                        /* Every host prepared: reboot the wave at once. */
                        want_start = true;
                        unsigned others = unavail; /* none of this wave is down yet */
                        if (others + prepared <= maxu || (others == 0 && prepared <= maxu)) {
                                for (size_t i = 0; i < ro->nhosts; i++) {
                                        struct rhost *rh = &ro->hosts[i];
                                        if (rh->rec.wave != wave || rh->phase != PH_PREPARED ||
                                            rh->action || rh->send_queued)
                                                continue;
                                        engine_set_phase(c, rh, PH_REBOOTING, NULL);
                                        start_step(c, rh, STEP_REBOOT);
                                }
                                started = true;
                        } else {
                                budget_blocked = true;
                        }
                }
                /* Staged hosts go on to prepare. */
                for (size_t i = 0; open && i < ro->nhosts; i++) {
                        struct rhost *rh = &ro->hosts[i];
                        if (rh->rec.wave == wave && rh->phase == PH_STAGING &&
                            rh->step == STEP_STAGE && rh->rec.step_done && !rh->action &&
                            !rh->resync)
                                start_step(c, rh, STEP_PREPARE);
                }
        } else {
                /* Rolling: reboot prepared hosts within the budget... */
                for (size_t i = 0; i < ro->nhosts; i++) {
                        struct rhost *rh = &ro->hosts[i];
                        if (rh->rec.wave != wave || rh->phase != PH_PREPARED || rh->action ||
                            rh->send_queued || rh->resync)
                                continue;
                        want_start = true;
                        if (unavail >= maxu) {
                                budget_blocked = true;
                                continue;
                        }
                        engine_set_phase(c, rh, PH_REBOOTING, NULL);
                        start_step(c, rh, STEP_REBOOT);
                        unavail++;
                        started = true;
                }
                /* ...prepare staged ones inside a window... */
                for (size_t i = 0; i < ro->nhosts; i++) {
                        struct rhost *rh = &ro->hosts[i];
                        if (rh->rec.wave != wave || rh->phase != PH_STAGING ||
                            rh->step != STEP_STAGE || !rh->rec.step_done || rh->action ||
                            rh->send_queued || rh->resync)
                                continue;
                        want_start = true;
                        if (open) {
                                start_step(c, rh, STEP_PREPARE);
                                started = true;
                        }
                }
                /* ...and start pending ones only when they could reboot within the budget. */
                for (size_t i = 0; i < ro->nhosts; i++) {
                        struct rhost *rh = &ro->hosts[i];
                        if (rh->rec.wave != wave || rh->phase != PH_PENDING)
                                continue;
                        want_start = true;
                        if (!open)
                                break;
                        if (reserved >= maxu) {
                                if (all.unavailable >= maxu && all.in_flight == 0)
                                        budget_blocked = true;
                                break;
                        }
                        /* An unreachable pending host: it is counted unavailable; skip it now. */
                        if (engine_host_unavailable(rh))
                                continue;
                        engine_set_phase(c, rh, PH_STAGING, NULL);
                        start_step(c, rh, STEP_STAGE);
                        reserved++;
                        started = true;
                }
        }

        bool own_active = all.in_flight > 0 || all.by_phase[PH_REBOOTING] ||
                          all.by_phase[PH_UPDATED] || all.by_phase[PH_VERIFYING] ||
                          all.by_phase[PH_FINISHING];
        if (want_start && !open && !started) {
                engine_set_status(c, ro, RS_BLOCKED, "outside-window", detail, extra);
                extra = NULL;
        } else if (want_start && budget_blocked && !started && !own_active) {
                snprintf(detail, sizeof(detail),
                         "%u selected hosts are unavailable already (max_unavailable %u)", unavail,
                         maxu);
                engine_set_status(c, ro, RS_BLOCKED, "unavailable-budget", detail, NULL);
        } else if (ro->status == RS_BLOCKED && (started || own_active || !want_start)) {
                engine_set_status(c, ro, RS_RUNNING, NULL, NULL, NULL);
        }
        json_decref(extra);
}

void engine_attach(struct controller *c, struct rollout *ro, bool resume)
{
        unsigned total = (unsigned)ro->nhosts;
        ro->ctl = c;
        (void)rollout_limits_get(ro->rec.spec, total, &ro->lim);
        ro->nwaves = (int)json_array_size(json_object_get(ro->rec.plan, "waves"));
        for (size_t i = 0; i < ro->nhosts; i++) {
                struct rhost *rh = &ro->hosts[i];
                rh->ro = ro;
                if (rh->rec.blackout_ms >= 0 && rh->rec.boot_id_after[0])
                        ro->blackout_est_ms =
                                engine_blackout_estimate(ro->blackout_est_ms, rh->rec.blackout_ms);
                rh->phase = phase_from_string(rh->rec.phase);
                rh->step = step_from_string(rh->rec.step);
                rh->host = engine_host_find(c, rh->rec.name);
                if (rh->host)
                        rh->host->newest = rh;
                if (rstatus_finished(ro->status))
                        continue;
                if (rh->host)
                        rh->host->active = rh;
                if (resume && rh->step != STEP_NONE && !rh->rec.step_done &&
                    (!phase_terminal(rh->phase) || rh->step == STEP_CANCEL ||
                     rh->step == STEP_ROLLBACK || rh->step == STEP_ROLLBACK_FINISH))
                        rh->resync = true;
                if (resume && rh->phase == PH_REBOOTING)
                        rh->resync = true;
        }
}

/* ---- watching ---------------------------------------------------------------------- */

static void on_watch_cb(void *ud, const struct ac_result *res)
{
        struct host *h = ud;
        struct controller *c = h->ctl;

        h->watch = NULL;
        if (h->watch_lp && (res->status == 304 ||
                            (res->status == 200 && json_integer_value(json_object_get(
                                                           res->body, "index")) == h->watch_idx)))
                atomic_fetch_add(&c->lp_renewals, 1);
        if (res->status == 200 && json_is_object(res->body)) {
                engine_on_state(c, h, res->body);
                h->watch_at = 0;
                return;
        }
        if (res->status == 304) {
                h->watch_at = 0;
                return;
        }
        char err[300];
        if (res->status == 0)
                snprintf(err, sizeof(err), "%s", res->error);
        else
                snprintf(err, sizeof(err), "GET /v1/state: HTTP %d", res->status);
        host_unreachable(c, h, err);
        /* A host in its reboot: look for it when the hosts before it came back (the
         * rollout's blackout estimate), often around then, not in a fixed rhythm
         * through the whole downtime: few requests, and its return seen soon. */
        if (h->active && h->active->phase == PH_REBOOTING) {
                struct rhost *rh = h->active;
                int64_t since = engine_now_wall_ms(c) - rh->rec.step_at;
                h->watch_at =
                        engine_now_mono_ms(c) +
                        engine_reboot_retry_ms(since, rh->ro->blackout_est_ms, &h->watch_backoff,
                                               c->retry_min_ms, c->retry_max_ms);
                return;
        }
        h->watch_backoff = engine_backoff(h->watch_backoff, c->retry_min_ms, c->retry_max_ms);
        h->watch_at = engine_now_mono_ms(c) + h->watch_backoff;
}

/*
 * Should the host be long-polled now? Only while the controller waits for
 * something the agent does on its own: the kexec (a new boot id), an
 * operation that answered 202 and runs, a rollback's reboot, a failed or
 * unreachable host's return. Not while an action is on its way: its answer
 * carries the state document, and a long-poll beside it would come back
 * for every journal record the action writes (most of the requests per host
 * were those).
 */
static bool host_watched(const struct host *h)
{
        const struct rhost *rh = h->active;
        if (!rh || rstatus_finished(rh->ro->status))
                return false;
        if (rh->rec.wave > rh->ro->rec.current_wave)
                /* A later wave: only an unreachable host, whose return frees the budget. */
                return !h->rec.reachable && h->rec.error && rh->phase == PH_PENDING;
        if (rh->action || rh->send_queued)
                return false;
        if (rh->phase == PH_REBOOTING || rh->waiting_op)
                return true;
        if (rh->phase == PH_FAILED) {
                /* Rolling back, or not normal (it counts as unavailable until it is). */
                const char *st = jstr(h->rec.state, "state");
                return (rh->step == STEP_ROLLBACK && rh->rec.step_done) || !st ||
                       strcmp(st, "normal") != 0 || !h->rec.reachable;
        }
        if (phase_terminal(rh->phase))
                return !rh->rec.step_done && rh->step != STEP_NONE;
        /* Between steps (pending, staged, prepared waiting for the budget, verifying):
         * the engine acts next, or polls /readyz; an unreachable host is watched for
         * its return. */
        return !h->rec.reachable && h->rec.error;
}

static void watch_hosts(struct controller *c, int64_t now, int64_t *next)
{
        char path[96];

        for (size_t i = 0; i < c->nhosts; i++) {
                struct host *h = c->hosts[i];
                if (h->watch)
                        continue;
                bool watched = host_watched(h);
                /* An idle host that answers is read again after the idle refresh; one that
                 * does not is retried with the backoff (watch_at), so that its return is
                 * seen in seconds, not minutes (a plan, already-current, need its state). */
                if (!watched && h->rec.reachable && h->refresh_at && now < h->refresh_at) {
                        *next = MIN(*next, h->refresh_at);
                        continue;
                }
                if (h->watch_at && now < h->watch_at) {
                        *next = MIN(*next, h->watch_at);
                        continue;
                }
                int64_t idx = host_index(h);
                enum ac_kind kind = AC_STATE;
                unsigned timeout = 0;
                if (watched && idx >= 0 && h->rec.reachable) {
                        snprintf(path, sizeof(path), "/v1/state?index=%" PRId64 "&wait=%ums", idx,
                                 c->poll_wait_ms);
                        kind = AC_LONGPOLL;
                        timeout = c->poll_wait_ms + 15000;
                } else if (watched && idx >= 0) {
                        /* Down (rebooting): the first answer when it is back is what we want. */
                        snprintf(path, sizeof(path), "/v1/state?index=%" PRId64 "&wait=%ums", idx,
                                 c->poll_wait_ms);
                        kind = AC_LONGPOLL;
                        timeout = c->poll_wait_ms + 15000;
                } else {
                        snprintf(path, sizeof(path), "/v1/state");
                }
                h->watch_lp = kind == AC_LONGPOLL;
                h->watch_idx = idx;
                /* Whatever this read is, the idle refresh is due only later. */
                h->refresh_at = now + IDLE_REFRESH_MS;
                if (ac_start(c->ac, kind, "GET", h->rec.url, path, NULL, -1, timeout, on_watch_cb,
                             h, &h->watch) < 0) {
                        h->watch_at = now + 1000;
                        *next = MIN(*next, h->watch_at);
                }
        }
}

static int64_t next_host_timer(struct controller *c, int64_t next)
{
        for (size_t i = 0; i < c->nrollouts; i++) {
                struct rollout *ro = c->rollouts[i];
                if (rstatus_finished(ro->status))
                        continue;
                for (size_t j = 0; j < ro->nhosts; j++)
                        if (ro->hosts[j].retry_at)
                                next = MIN(next, ro->hosts[j].retry_at);
        }
        return next;
}

void engine_host_free(struct controller *c, struct host *h)
{
        if (!h)
                return;
        if (h->watch && c->ac)
                ac_cancel(c->ac, h->watch);
        store_host_clear(&h->rec);
        free(h);
}

void engine_rollout_free(struct rollout *ro)
{
        if (!ro)
                return;
        for (size_t i = 0; i < ro->nhosts; i++)
                store_rhost_clear(&ro->hosts[i].rec);
        free(ro->hosts);
        store_rollout_clear(&ro->rec);
        free(ro);
}

void *engine_thread(void *arg)
{
        struct controller *c = arg;

        pthread_mutex_lock(&c->lock);
        c->engine_self = pthread_self();
        c->engine_known = true;
        pthread_mutex_unlock(&c->lock);
        while (!atomic_load(&c->stop)) {
                pthread_mutex_lock(&c->lock);
                int64_t now = engine_now_mono_ms(c);
                int64_t next = now + 5000;
                ac_dispatch(c->ac);
                for (size_t i = 0; i < c->ngraveyard; i++)
                        engine_host_free(c, c->graveyard[i]);
                c->ngraveyard = 0;
                bool active = false;
                for (size_t i = 0; i < c->nrollouts; i++) {
                        engine_tick(c, c->rollouts[i]);
                        active = active || !rstatus_finished(c->rollouts[i]->status);
                }
                watch_hosts(c, now, &next);
                next = next_host_timer(c, next);
                (void)engine_commit(c);
                atomic_store(&c->last_pass_ms, now);
                pthread_mutex_unlock(&c->lock);

                int64_t wait = next - engine_now_mono_ms(c);
                /* Soak and window ends are checked at least once a second while a rollout
                 * runs; idle, every 5 s (the pass is the liveness /healthz reports, which
                 * allows 10 s); an API change wakes the engine at once (ac_wakeup). */
                wait = MAX(wait, (int64_t)10);
                wait = MIN(wait, active ? (int64_t)1000 : (int64_t)5000);
                (void)ac_poll(c->ac, (int)wait);
        }
        return NULL;
}
