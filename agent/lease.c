/*
 * lease.c: the dead-man lease (see lease.h and docs/leases.md): its journal
 * records, its place in the state document, the renewal endpoint, the
 * event-loop timer that cancels a prepared host whose controller went away,
 * and what start-up makes of a lease found in the journal.
 *
 * Clocks: the deadline is kept and journaled on CLOCK_REALTIME with the boot
 * id (it must survive an agent restart: STYLE.md), and armed on
 * CLOCK_MONOTONIC (now_mono + the remaining wall-clock time, computed when it
 * is armed), so a wall-clock step while the agent runs neither shortens nor
 * lengthens a lease; only a restart re-reads the wall clock.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "agent.h"
#include "body.h"
#include "http.h"
#include "lease.h"
#include "loop.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "ops.h"
#include "snapshot.h"
#include "worker.h"

/* An expired lease whose cancel cannot start yet (another operation runs) tries again after this.
 */
#define LEASE_RETRY_USEC (1000 * 1000)

json_t *lease_json(const struct lease *l)
{
        char when[RFC3339_MAX];

        if (!l->active)
                return json_null();
        return json_pack("{s:s, s:s, s:I}", "operation_id", l->operation_id, "expires_at",
                         format_rfc3339_ms(l->expires_usec, when), "lease_seconds",
                         (json_int_t)l->seconds);
}

/* The journal's form: the document's plus what a restart needs (lease.h). */
json_t *lease_journal_json(const struct lease *l)
{
        json_t *j = lease_json(l);

        if (json_is_object(j)) {
                json_object_set_new(j, "boot_id", json_string(l->boot_id));
                json_object_set_new(j, "expires_usec", json_integer((json_int_t)l->expires_usec));
        }
        return j;
}

static void lease_arm_locked(struct agent *a)
{
        struct lease *l = &a->lease;
        uint64_t due = UINT64_MAX;

        if (l->active) {
                uint64_t now_real = now_real_usec(), now_mono = now_mono_usec();
                due = now_mono + (l->expires_usec > now_real ? l->expires_usec - now_real : 0);
        }
        atomic_store(&l->due_mono, due);
        /*
         * Not loop_rearm() here: it asks every timer client for its deadline, and the
         * long-poll's takes lp.lock, which is taken before agent.lock (lock order). Every
         * change of the lease appends a record, so the listener below rearms once the
         * lock is released.
         */
        atomic_store(&l->rearm, true);
}

/* An agent listener: called after agent.lock is released, with the new index. */
static void lease_changed(void *userdata, uint64_t index)
{
        struct agent *a = userdata;

        (void)index;
        if (atomic_exchange(&a->lease.rearm, false) && a->lease.loop)
                loop_rearm(a->lease.loop);
}

static int lease_record_locked(struct agent *a, const char *cause, bool must_persist)
{
        json_t *rec = json_pack("{s:o}", "lease", lease_journal_json(&a->lease));

        if (!rec)
                return -ENOMEM;
        if (cause)
                json_object_set_new(rec, "cause", json_string(cause));
        return agent_record_kind_locked(a, "lease", rec, must_persist);
}

int lease_start_locked(struct agent *a, const char *operation_id, uint64_t seconds)
{
        struct lease *l = &a->lease;

        l->active = true;
        snprintf(l->operation_id, sizeof(l->operation_id), "%s", operation_id);
        snprintf(l->boot_id, sizeof(l->boot_id), "%s", a->info.boot_id);
        l->seconds = seconds;
        l->expires_usec = now_real_usec() + seconds * 1000000u;
        lease_arm_locked(a);
        log_info("Lease of %llu s for prepare %s", (unsigned long long)seconds, operation_id);
        return lease_record_locked(a, NULL, false);
}

int lease_end_locked(struct agent *a, const char *cause)
{
        struct lease *l = &a->lease;

        if (!l->active)
                return 0;
        log_info("Lease of prepare %s ended (%s)", l->operation_id, cause);
        l->active = false;
        lease_arm_locked(a);
        return lease_record_locked(a, cause, false);
}

void lease_load(struct agent *a, json_t *j)
{
        struct lease *l = &a->lease;
        const char *id = json_string_value(json_object_get(j, "operation_id"));
        const char *boot = json_string_value(json_object_get(j, "boot_id"));
        json_t *exp = json_object_get(j, "expires_usec"),
               *sec = json_object_get(j, "lease_seconds");

        l->active = false;
        if (!json_is_object(j) || !id || !boot || !json_is_integer(exp) ||
            json_integer_value(exp) < 0)
                return;
        snprintf(l->operation_id, sizeof(l->operation_id), "%s", id);
        snprintf(l->boot_id, sizeof(l->boot_id), "%s", boot);
        l->expires_usec = (uint64_t)json_integer_value(exp);
        l->seconds = json_is_integer(sec) && json_integer_value(sec) > 0
                             ? (uint64_t)json_integer_value(sec)
                             : 0;
        l->active = true;
}

void lease_reconcile_locked(struct agent *a, bool rebooted)
{
        struct lease *l = &a->lease;

        if (!l->active)
                return;
        if (rebooted || strcmp(l->boot_id, a->info.boot_id) != 0) {
                /* The reboot record says it all: a lease never outlives its boot. */
                l->active = false;
                lease_arm_locked(a);
                return;
        }
        if (a->state != LUO_STATE_PREPARED && a->state != LUO_STATE_FROZEN) {
                lease_end_locked(a, "lease-void");
                return;
        }
        uint64_t now = now_real_usec();
        if (l->expires_usec <= now)
                log_warning("Lease of prepare %s ran out while the agent was down: cancelling",
                            l->operation_id);
        else
                log_info("Lease of prepare %s re-armed: %llu ms left", l->operation_id,
                         (unsigned long long)((l->expires_usec - now) / 1000));
        lease_arm_locked(a);
}

/* ---- expiry (loop thread) ------------------------------------------------ */

static void lease_expire(struct agent *a)
{
        struct lease *l = &a->lease;
        struct http_reply rep = { 0 };
        struct op_job *job = NULL;
        struct op_request rq = { .action = OP_CANCEL, .has_reason = true };
        char prep[LEASE_ID_MAX + 1];
        const char *code;
        uint64_t idx;
        int r;

        agent_lock(a);
        if (!l->active) {
                agent_unlock(a);
                return;
        }
        snprintf(prep, sizeof(prep), "%s", l->operation_id);
        agent_unlock(a);

        /* "lease-expired:" + the prepare's id; a long id is cut (ids are unique per prepare). */
        snprintf(rq.id, sizeof(rq.id), "lease-expired:%.*s", OP_ID_MAX - 14, prep);
        snprintf(rq.reason, sizeof(rq.reason), "lease expired");
        snprintf(rq.requested_by, sizeof(rq.requested_by), "agent");
        snprintf(rq.source, sizeof(rq.source), "agent");

        r = agent_op_begin(a, &rq, &rep, &job);
        code = rep.problem ? json_string_value(json_object_get(rep.json, "code")) : NULL;
        if (r < 0 ||
            (r == 0 && code &&
             (strcmp(code, "operation-in-progress") == 0 || strcmp(code, "journal-full") == 0 ||
              strcmp(code, "journal-error") == 0 || strcmp(code, "state-dir-read-only") == 0 ||
              strcmp(code, "internal-error") == 0))) {
                /* Not now (a reboot or another operation runs, the journal is stuck, out of
                 * memory): again in a second, the loop re-arms after this fire. */
                atomic_store(&l->due_mono, now_mono_usec() + LEASE_RETRY_USEC);
                http_reply_clear(&rep);
                return;
        }
        if (r == 0 && code && strcmp(code, "shutting-down") == 0) {
                /* The next start re-arms it from the journal. */
                http_reply_clear(&rep);
                return;
        }
        if (r == 0)
                log_warning("Lease of prepare %s expired; no cancel needed (%s)", prep,
                            code ? code : "replayed");
        else
                log_warning("Lease of prepare %s expired: cancelling (operation %s)", prep, rq.id);
        agent_lock(a);
        lease_end_locked(a, "lease-expired");
        idx = a->index;
        agent_unlock(a);
        agent_notify_index(a, idx);
        http_reply_clear(&rep);
        if (job && (!l->worker || worker_submit(l->worker, job) < 0))
                agent_op_execute(job); /* no worker: here, rather than leave it running */
}

static uint64_t lease_next(void *userdata)
{
        struct agent *a = userdata;

        return atomic_load(&a->lease.due_mono);
}

static void lease_fire(void *userdata, uint64_t now)
{
        struct agent *a = userdata;

        /* Fired with every other client's deadline too: only when due. */
        if (now < atomic_load(&a->lease.due_mono))
                return;
        atomic_store(&a->lease.due_mono, UINT64_MAX);
        lease_expire(a);
}

int lease_attach(struct agent *a, struct loop *l)
{
        int r;

        if (!a->lease.worker) {
                r = worker_new(&a->lease.worker);
                if (r < 0)
                        return r;
        }
        r = loop_add_timer_client(l, &(struct loop_timer_client){ lease_next, lease_fire, a });
        if (r < 0)
                return r;
        a->lease.loop = l;
        agent_add_listener(a, lease_changed, a);
        atomic_store(&a->lease.rearm, false);
        loop_rearm(l);
        return 0;
}

void lease_detach(struct agent *a)
{
        a->lease.worker = worker_free(a->lease.worker);
}

/* ---- requests (MHD thread) ----------------------------------------------- */

int lease_parse_seconds(json_t *body, uint64_t max_seconds, uint64_t *ret, struct http_reply *rep)
{
        json_t *v = json_object_get(body, "lease_seconds");

        *ret = 0;
        if (!v)
                return 1;
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            (uint64_t)json_integer_value(v) > max_seconds) {
                http_reply_problem(rep, 400, "invalid-field",
                                   "lease_seconds must be an integer from 1 to %llu",
                                   (unsigned long long)max_seconds);
                json_object_set_new(rep->json, "field", json_string("lease_seconds"));
                return 0;
        }
        *ret = (uint64_t)json_integer_value(v);
        return 1;
}

uint64_t lease_max_seconds(const struct agent *a)
{
        uint64_t ms = a->cfg ? a->cfg->max_lease_ms : 24ull * 3600 * 1000;
        return MAX(ms / 1000, 1u);
}

static int lease_renew(struct http_req *req, struct http_reply *rep, char *id, size_t id_size)
{
        static const char *const fields[] = { "operation_id", "lease_seconds", NULL };
        struct agent *a = req->agent;
        struct lease *l = &a->lease;
        uint64_t old_seconds, old_expires;
        json_t *body = NULL;
        uint64_t secs = 0, idx;
        bool present = false;
        char eb[16];
        int r;

        if (!body_parse(req, rep, true, &body))
                return 0;
        r = body_only_fields(body, fields, NULL, rep) &&
            body_string(body, "operation_id", 1, LEASE_ID_MAX, id, id_size, &present, rep) &&
            lease_parse_seconds(body, lease_max_seconds(a), &secs, rep);
        json_decref(body);
        if (!r)
                return 0;
        if (!present) {
                http_reply_problem(rep, 400, "invalid-field", "operation_id is required");
                json_object_set_new(rep->json, "field", json_string("operation_id"));
                return 0;
        }

        agent_lock(a);
        if (req->if_match && !op_if_match_ok(req->if_match, a->index)) {
                http_reply_problem(rep, 412, "precondition-failed",
                                   "If-Match %s does not match the current index %llu",
                                   req->if_match, (unsigned long long)a->index);
                json_object_set_new(rep->json, "current_index", json_integer((json_int_t)a->index));
                agent_unlock(a);
                return 0;
        }
        if (!l->active) {
                agent_unlock(a);
                return http_reply_problem(rep, 404, "no-lease",
                                          "there is no lease to renew (none was given, or it "
                                          "ended: see the history)");
        }
        if (strcmp(l->operation_id, id) != 0) {
                http_reply_problem(rep, 409, "lease-mismatch",
                                   "the lease belongs to prepare %s, not %s", l->operation_id, id);
                json_object_set_new(rep->json, "operation_id", json_string(l->operation_id));
                agent_unlock(a);
                return 0;
        }
        old_seconds = l->seconds;
        old_expires = l->expires_usec;
        if (secs)
                l->seconds = secs;
        l->expires_usec = now_real_usec() + l->seconds * 1000000u;
        /* Durable before it is promised: a restart must not bring back the old deadline. */
        r = lease_record_locked(a, NULL, true);
        if (r < 0) {
                l->seconds = old_seconds;
                l->expires_usec = old_expires;
                agent_unlock(a);
                if (r == -ENOSPC || r == -EDQUOT || r == -EFBIG)
                        http_reply_problem(rep, 507, "journal-full",
                                           "the renewal cannot be journaled (%s)",
                                           errno_name(r, eb));
                else
                        http_reply_problem(rep, 503, "journal-error",
                                           "the renewal cannot be journaled (%s)",
                                           errno_name(r, eb));
                return 0;
        }
        lease_arm_locked(a);
        json_t *doc = lease_json(l);
        idx = a->index;
        agent_unlock(a);
        agent_notify_index(a, idx);
        if (!doc)
                return -ENOMEM;
        return http_reply_json(rep, 200, doc);
}

int h_lease_post(struct http_req *req, struct http_reply *rep)
{
        char id[LEASE_ID_MAX + 1] = "";
        int r = lease_renew(req, rep, id, sizeof(id));
        struct audit_entry e = {
                .who = &req->who,
                .source = req->peer[0] ? req->peer : "unknown",
                .action = "lease",
                .operation_id = id,
                .if_match = req->if_match,
                .status = r < 0 ? 500 : rep->status,
                .code = r < 0          ? "internal-error"
                        : rep->problem ? json_string_value(json_object_get(rep->json, "code"))
                                       : "ok",
        };

        /* A 404 is audited by server.c like every refusal of a mutating request's path. */
        if (r < 0 || !rep->problem || rep->status != 404)
                agent_audit(req->agent, &e);
        return r;
}
