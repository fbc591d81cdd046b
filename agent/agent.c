/*
 * agent.c: the state document, its index, its journal records, and start-up
 * reconciliation with the kernel. See agent.h for the threads.
 *
 * Every change is: take agent.lock, apply it in memory, append one journal
 * record (fsync'ed) with index + 1, rebuild the cached snapshot, release the
 * lock, notify the listeners (long-poll, SSE) with the new index. Listeners
 * are called without the lock so they may take their own locks and call
 * MHD_resume_connection freely.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "agent.h"
#include "hooks.h"
#include "journal.h"
#include "lease.h"
#include "metrics.h"
#include "luofleet/privsep.h"
#include "sessions.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "verify.h"

static const char *const action_names[_OP_ACTION_MAX] = {
        [OP_PREPARE] = "prepare",   [OP_CANCEL] = "cancel", [OP_REBOOT] = "reboot",
        [OP_FINISH] = "finish",     [OP_STAGE] = "stage",   [OP_UNSTAGE] = "unstage",
        [OP_ROLLBACK] = "rollback",
};

const char *op_action_to_string(enum op_action a)
{
        return (unsigned)a < _OP_ACTION_MAX ? action_names[a] : NULL;
}

int op_action_from_string(const char *s)
{
        for (int i = 0; s && i < _OP_ACTION_MAX; i++)
                if (strcmp(action_names[i], s) == 0)
                        return i;
        return -EINVAL;
}

void agent_lock(struct agent *a)
{
        pthread_mutex_lock(&a->lock);
}

void agent_unlock(struct agent *a)
{
        pthread_mutex_unlock(&a->lock);
}

int agent_new(const struct agent_config *cfg, struct backend *b, struct journal *j,
              int state_dir_fd, struct agent **ret)
{
        struct agent *a = calloc(1, sizeof(*a));
        int r;

        if (!a)
                return -ENOMEM;
        pthread_mutex_init(&a->lock, NULL);
        a->cfg = cfg;
        a->backend = b;
        a->journal = j;
        a->state_dir_fd = state_dir_fd;
        pthread_mutex_init(&a->audit_lock, NULL);
        pthread_mutex_init(&a->sessions_lock, NULL);
        atomic_init(&a->lease.due_mono, UINT64_MAX);
        a->ops = json_object();
        a->ops_order = json_array();
        if (!a->ops || !a->ops_order) {
                agent_free(a);
                return -ENOMEM;
        }
        if (state_dir_fd >= 0) {
                struct journal_load_report rep = { 0 };
                r = journal_open(state_dir_fd, "audit", cfg ? cfg->journal_max_bytes : 0, &a->audit,
                                 &rep);
                if (r < 0) {
                        log_error_errno(r, "Failed to open the audit journal: %m");
                        agent_free(a);
                        return r;
                }
                if (rep.dropped_bytes)
                        log_warning("Audit journal: dropped %s of %llu bytes at offset %llu, "
                                    "kept %zu records",
                                    rep.torn ? "a torn tail" : "invalid data",
                                    (unsigned long long)rep.dropped_bytes,
                                    (unsigned long long)rep.first_bad_offset, rep.records);
        }
        if (cfg && cfg->hostname[0])
                snprintf(a->hostname, sizeof(a->hostname), "%s", cfg->hostname);
        else if (gethostname(a->hostname, sizeof(a->hostname) - 1) < 0)
                snprintf(a->hostname, sizeof(a->hostname), "localhost");
        r = b->ops->get_info(b, &a->info);
        if (r < 0) {
                agent_free(a);
                return r;
        }
        if (b->ops->describe && b->ops->describe(b, a->interface, sizeof(a->interface)) < 0)
                a->interface[0] = 0;
        *ret = a;
        return 0;
}

struct agent *agent_free(struct agent *a)
{
        if (!a)
                return NULL;
        /* First: the lease's worker may still be finishing a cancel that uses the rest. */
        lease_detach(a);
        json_decref(a->last_update);
        json_decref(a->staged);
        json_decref(a->rollback_target);
        json_decref(a->booted);
        json_decref(a->operation);
        json_decref(a->ops);
        json_decref(a->ops_order);
        json_decref(a->last_start);
        json_decref(a->hooks_failing);
        json_decref(a->sessions_doc);
        json_decref(a->sessions_summary);
        doc_snapshot_unref(a->snap);
        journal_free(a->audit);
        pthread_mutex_destroy(&a->audit_lock);
        pthread_mutex_destroy(&a->sessions_lock);
        pthread_mutex_destroy(&a->lock);
        free(a);
        return NULL;
}

void agent_add_listener(struct agent *a, agent_listener_fn fn, void *userdata)
{
        /* A fixed set registered at start-up: running out is a programming error. */
        if (a->n_listeners >= ELEMENTSOF(a->listeners)) {
                log_error("BUG: more than %zu agent listeners", ELEMENTSOF(a->listeners));
                abort();
        }
        a->listeners[a->n_listeners] = fn;
        a->listener_data[a->n_listeners] = userdata;
        a->n_listeners++;
}

void agent_notify_index(struct agent *a, uint64_t index)
{
        for (unsigned i = 0; i < a->n_listeners; i++)
                a->listeners[i](a->listener_data[i], index);
}

static json_t *time_json(uint64_t usec)
{
        char buf[RFC3339_MAX];
        return json_string(format_rfc3339_ms(usec, buf));
}

/*
 * Deep copies, not references: the document leaves the lock (it is
 * serialized on MHD's thread) while the worker goes on changing a->operation
 * and a->staged under the lock, and jansson objects are not thread-safe.
 */
json_t *agent_doc_locked(struct agent *a, json_t *op)
{
        json_t *doc = json_pack("{s:s, s:I, s:o, s:s, s:s, s:s, s:o, s:o, s:s, s:s}", "state",
                                luo_state_to_string(a->state), "index", (json_int_t)a->index,
                                "changed_at", time_json(a->changed_at), "boot_id", a->info.boot_id,
                                "kernel", a->info.release, "backend", a->backend->ops->name,
                                "staged", a->staged ? json_deep_copy(a->staged) : json_null(),
                                "operation", op ? json_deep_copy(op) : json_null(), "hostname",
                                a->hostname, "agent_version", LUOFLEET_VERSION);

        /* The dead-man lease (lease.c) and the reboot into this boot (verify.c). */
        if (doc) {
                json_object_set_new(doc, "lease", lease_json(&a->lease));
                json_object_set_new(doc, "last_update",
                                    a->last_update ? json_deep_copy(a->last_update) : json_null());
                /* The kernel interface found, and the workloads' sessions (sessions.c). */
                json_object_set_new(doc, "interface",
                                    a->interface[0] ? json_string(a->interface) : json_null());
                json_object_set_new(doc, "sessions", sessions_summary_locked(a));
        }
        return doc;
}

static int agent_rebuild_snapshot_locked(struct agent *a)
{
        json_t *doc = agent_doc_locked(a, a->operation);
        char *s;
        struct doc_snapshot *snap;

        if (!doc)
                return -ENOMEM;
        s = json_dumps(doc, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(doc);
        if (!s)
                return -ENOMEM;
        snap = doc_snapshot_new(a->index, a->state, s, strlen(s));
        free(s);
        if (!snap)
                return -ENOMEM;
        doc_snapshot_unref(a->snap);
        a->snap = snap;
        return 0;
}

struct doc_snapshot *agent_snapshot(struct agent *a)
{
        struct doc_snapshot *s;

        agent_lock(a);
        s = doc_snapshot_ref(a->snap);
        agent_unlock(a);
        return s;
}

uint64_t agent_index(struct agent *a)
{
        uint64_t i;

        agent_lock(a);
        i = a->index;
        agent_unlock(a);
        return i;
}

/*
 * Append one record (fields: stolen). For a change already applied in memory
 * (must_persist false) the index moves even when the journal cannot be
 * written: the document must keep telling the kernel's truth; /readyz
 * reports the journal failure. For an intent (must_persist true: the start
 * of an operation, before any kernel call) a failed append changes nothing,
 * not even the index, and the caller refuses to act.
 */
static int agent_append_locked(struct agent *a, const char *kind, json_t *fields, bool must_persist)
{
        uint64_t now = now_real_usec(), next = a->index + 1;
        int r;

        json_t *rec;

        /* The common members first, for people reading the journal with jq. */
        rec = json_pack("{s:I, s:o, s:s, s:s, s:s}", "index", (json_int_t)next, "time",
                        time_json(now), "boot_id", a->info.boot_id, "kind", kind, "state",
                        luo_state_to_string(a->state));
        if (rec && fields)
                json_object_update(rec, fields);
        json_decref(fields);
        r = rec ? journal_append(a->journal, rec) : -ENOMEM;
        json_decref(rec);
        if (r < 0) {
                if (a->journal_error == 0 || must_persist)
                        log_error_errno(r, "Failed to append to the journal: %m");
                a->journal_error = r;
                if (must_persist)
                        return r;
        } else
                a->journal_error = 0;
        a->index = next;
        a->changed_at = now;
        if (agent_rebuild_snapshot_locked(a) < 0)
                log_error("Out of memory rebuilding the state document");
        return r;
}

static int agent_record_locked(struct agent *a, const char *kind, json_t *fields)
{
        return agent_append_locked(a, kind, fields, false);
}

void agent_doc_refresh_locked(struct agent *a)
{
        if (agent_rebuild_snapshot_locked(a) < 0)
                log_error("Out of memory rebuilding the state document");
}

int agent_record_kind_locked(struct agent *a, const char *kind, json_t *fields, bool must_persist)
{
        return agent_append_locked(a, kind, fields, must_persist);
}

static int agent_transition_locked(struct agent *a, enum luo_state to, const char *cause,
                                   const char *op_id)
{
        enum luo_state from = a->state;
        json_t *rec;

        if (from == to)
                return 0;
        a->state = to;
        a->transitions[from][to]++;
        log_info("State %s -> %s (%s)", luo_state_to_string(from), luo_state_to_string(to), cause);
        rec = json_pack("{s:s, s:s, s:s}", "from", luo_state_to_string(from), "to",
                        luo_state_to_string(to), "cause", cause);
        if (!rec)
                return -ENOMEM;
        if (op_id)
                json_object_set_new(rec, "operation_id", json_string(op_id));
        agent_record_locked(a, "transition", rec);
        return 1;
}

uint64_t agent_read_ticket(struct agent *a)
{
        return atomic_fetch_add(&a->read_ticket, 1) + 1;
}

int agent_kernel_observed(struct agent *a, uint64_t ticket, enum luo_state s)
{
        uint64_t idx = 0;

        agent_lock(a);
        if (ticket < a->applied_ticket) {
                agent_unlock(a);
                return -ESTALE;
        }
        a->applied_ticket = ticket;
        /* While an operation runs, the change the watcher sees is (almost surely) its own. */
        const char *op_id =
                a->op_running ? json_string_value(json_object_get(a->operation, "id")) : NULL;
        if (agent_transition_locked(a, s, op_id ? "operation" : "external", op_id) > 0)
                idx = a->index;
        agent_unlock(a);
        if (idx)
                agent_notify_index(a, idx);
        return 0;
}

/* The operation table: bounded, oldest finished entries go first. */
static void agent_ops_put_locked(struct agent *a, json_t *op, int http_status, json_t *extra)
{
        const char *id = json_string_value(json_object_get(op, "id"));
        json_t *e;

        if (!id)
                return;
        if (!json_object_get(a->ops, id))
                json_array_append_new(a->ops_order, json_string(id));
        e = json_pack("{s:O, s:i}", "operation", op, "http_status", http_status);
        if (e && json_is_object(extra))
                json_object_set(e, "problem_extra", extra);
        if (e)
                json_object_set_new(a->ops, id, e);
        while (json_array_size(a->ops_order) > OPS_TABLE_MAX) {
                const char *old = json_string_value(json_array_get(a->ops_order, 0));
                json_object_del(a->ops, old);
                json_array_remove(a->ops_order, 0);
        }
}

/* Shared with ops.c. */

/*
 * extra: the problem's extension members of a failed operation (for example
 * the digests of a digest-mismatch), kept so a replay answers the same
 * document; NULL for none.
 */
int agent_record_op_extra_locked(struct agent *a, json_t *op, int http_status, json_t *extra)
{
        json_t *rec = json_pack("{s:O, s:i}", "operation", op, "http_status", http_status);

        agent_ops_put_locked(a, op, http_status, extra);
        if (!rec)
                return -ENOMEM;
        if (json_is_object(extra))
                json_object_set(rec, "problem_extra", extra);
        return agent_record_locked(a, "operation", rec);
}

int agent_record_op_begin_locked(struct agent *a, json_t *op)
{
        json_t *old = a->operation, *rec;
        bool old_running = a->op_running;
        int r;

        rec = json_pack("{s:O, s:i}", "operation", op, "http_status", 0);
        if (!rec)
                return -ENOMEM;
        /* In the document before the append, so that the rebuilt snapshot shows it. */
        a->operation = json_incref(op);
        a->op_running = true;
        r = agent_append_locked(a, "operation", rec, true);
        if (r < 0) {
                json_decref(a->operation);
                a->operation = old;
                a->op_running = old_running;
                return r;
        }
        json_decref(old);
        agent_ops_put_locked(a, op, 0, NULL);
        return 0;
}

int agent_record_op_locked(struct agent *a, json_t *op, int http_status)
{
        return agent_record_op_extra_locked(a, op, http_status, NULL);
}

int agent_transition_op_locked(struct agent *a, enum luo_state to, const char *op_id)
{
        return agent_transition_locked(a, to, "operation", op_id);
}

int agent_record_hook_locked(struct agent *a, json_t *fields)
{
        return agent_record_locked(a, "hook", fields);
}

int agent_record_staging_locked(struct agent *a, json_t *staged)
{
        return agent_record_locked(a, "staging",
                                   json_pack("{s:O}", "staged", staged ? staged : json_null()));
}

static bool same_str(json_t *obj, const char *key, const char *v);

/*
 * A reboot consumed a->staged (docs/staging.md, rollback): its "previous" is
 * the rollback target (with its command line, the one the kernel rolled back
 * from runs with), and when the new boot verified as the staged kernel, that
 * record names the files of the running kernel. Before a->staged is dropped.
 */
static void agent_note_reboot_locked(struct agent *a, json_t *verification)
{
        json_t *prev = a->staged ? json_object_get(a->staged, "previous") : NULL;

        json_decref(a->rollback_target);
        a->rollback_target = NULL;
        json_decref(a->booted);
        a->booted = NULL;
        if (json_is_object(prev) && json_is_string(json_object_get(prev, "release"))) {
                a->rollback_target = json_deep_copy(prev);
                if (a->rollback_target && json_is_string(json_object_get(a->staged, "cmdline")))
                        json_object_set(a->rollback_target, "cmdline",
                                        json_object_get(a->staged, "cmdline"));
        }
        if (a->staged && same_str(verification, "status", "match")) {
                a->booted = json_deep_copy(a->staged);
                if (a->booted)
                        json_object_del(a->booted, "previous");
        }
}

json_t *agent_allowed_actions(enum luo_state s)
{
        json_t *arr = json_array();

        switch (s) {
        case LUO_STATE_NORMAL:
                json_array_append_new(arr, json_string("prepare"));
                break;
        case LUO_STATE_PREPARED:
                json_array_append_new(arr, json_string("reboot"));
                json_array_append_new(arr, json_string("cancel"));
                break;
        case LUO_STATE_FROZEN:
                json_array_append_new(arr, json_string("reboot"));
                json_array_append_new(arr, json_string("cancel"));
                break;
        case LUO_STATE_UPDATED:
                json_array_append_new(arr, json_string("finish"));
                json_array_append_new(arr, json_string("rollback"));
                break;
        default:
                break;
        }
        return arr;
}

int agent_journal_status(struct agent *a)
{
        int r;

        agent_lock(a);
        r = a->journal_error;
        agent_unlock(a);
        return r;
}

void agent_set_shutting_down(struct agent *a)
{
        agent_lock(a);
        a->shutting_down = true;
        agent_unlock(a);
}

/* ---- reconciliation ----------------------------------------------------- */

static void op_finish_json(json_t *op, const char *status, const char *code, const char *detail,
                           const char *errno_str, uint64_t when)
{
        json_object_set_new(op, "status", json_string(status));
        json_object_del(op, "progress"); /* only while a download runs */
        if (code)
                json_object_set_new(op, "error",
                                    json_pack("{s:s, s:s, s:o}", "code", code, "detail", detail,
                                              "errno",
                                              errno_str ? json_string(errno_str) : json_null()));
        else
                json_object_set_new(op, "error", json_null());
        json_object_set_new(op, "finished_at", time_json(when));
}

static bool same_str(json_t *obj, const char *key, const char *v)
{
        const char *s = json_string_value(json_object_get(obj, key));
        return s && v && strcmp(s, v) == 0;
}

/* Rebuild the in-memory model from the journal records. */
static void agent_load_journal_locked(struct agent *a, char *ret_last_boot, size_t boot_size,
                                      enum luo_state *ret_last_state, uint64_t *ret_last_time,
                                      json_t **ret_last_start)
{
        size_t n = journal_count(a->journal);

        for (size_t i = 0; i < n; i++) {
                const struct journal_rec *jr = journal_get(a->journal, i);
                json_t *rec = json_loadb(jr->json, jr->len, 0, NULL);
                const char *kind, *s;

                if (!rec)
                        continue;
                kind = json_string_value(json_object_get(rec, "kind"));
                if ((s = json_string_value(json_object_get(rec, "boot_id"))))
                        snprintf(ret_last_boot, boot_size, "%s", s);
                if ((s = json_string_value(json_object_get(rec, "state"))) &&
                    luo_state_from_string(s) >= 0)
                        *ret_last_state = (enum luo_state)luo_state_from_string(s);
                if ((s = json_string_value(json_object_get(rec, "time"))))
                        (void)parse_rfc3339(s, ret_last_time);
                if (kind && strcmp(kind, "operation") == 0) {
                        json_t *op = json_object_get(rec, "operation");
                        int st = (int)json_integer_value(json_object_get(rec, "http_status"));
                        if (op && same_str(op, "action", "prepare") &&
                            same_str(op, "status", "running")) {
                                /* A prepare ends the last update's report (ops.c). */
                                json_decref(a->last_update);
                                a->last_update = NULL;
                        }
                        if (op) {
                                agent_ops_put_locked(a, op, st,
                                                     json_object_get(rec, "problem_extra"));
                                json_decref(a->operation);
                                a->operation = json_deep_copy(op);
                        }
                } else if (kind && strcmp(kind, "staging") == 0) {
                        json_t *st = json_object_get(rec, "staged");
                        json_decref(a->staged);
                        a->staged = json_is_object(st) ? json_deep_copy(st) : NULL;
                } else if (kind && strcmp(kind, "lease") == 0) {
                        lease_load(a, json_object_get(rec, "lease"));
                } else if (kind && strcmp(kind, "reboot") == 0) {
                        json_t *op = json_object_get(rec, "operation");
                        agent_note_reboot_locked(a, json_object_get(rec, "verification"));
                        json_decref(a->staged);
                        a->staged = NULL;
                        a->lease.active = false; /* a lease never outlives its boot */
                        json_decref(a->last_update);
                        a->last_update = verify_last_update_from_record(rec);
                        if (json_is_object(op)) {
                                agent_ops_put_locked(a, op,
                                                     (int)json_integer_value(
                                                             json_object_get(rec, "http_status")),
                                                     NULL);
                                json_decref(a->operation);
                                a->operation = json_deep_copy(op);
                        }
                } else if (kind && strcmp(kind, "snapshot") == 0) {
                        json_t *ops = json_object_get(rec, "operations"), *e, *st;
                        size_t k;
                        json_array_foreach (ops, k, e) {
                                json_t *op = json_object_get(e, "operation");
                                if (op)
                                        agent_ops_put_locked(
                                                a, op,
                                                (int)json_integer_value(
                                                        json_object_get(e, "http_status")),
                                                json_object_get(e, "problem_extra"));
                        }
                        st = json_object_get(rec, "staged");
                        json_decref(a->staged);
                        a->staged = json_is_object(st) ? json_deep_copy(st) : NULL;
                        lease_load(a, json_object_get(rec, "lease"));
                        st = json_object_get(rec, "rollback_target");
                        json_decref(a->rollback_target);
                        a->rollback_target = json_is_object(st) ? json_deep_copy(st) : NULL;
                        st = json_object_get(rec, "booted");
                        json_decref(a->booted);
                        a->booted = json_is_object(st) ? json_deep_copy(st) : NULL;
                        json_decref(a->last_update);
                        a->last_update =
                                json_is_object(json_object_get(rec, "last_update"))
                                        ? json_deep_copy(json_object_get(rec, "last_update"))
                                        : NULL;
                        if (json_is_object(json_object_get(rec, "last_start"))) {
                                json_decref(*ret_last_start);
                                *ret_last_start = json_incref(json_object_get(rec, "last_start"));
                        }
                        /* Same members as a session record's "broker". */
                        sessions_load_record(a, rec);
                        if (json_is_object(json_object_get(rec, "last_operation"))) {
                                json_decref(a->operation);
                                a->operation =
                                        json_deep_copy(json_object_get(rec, "last_operation"));
                        }
                } else if (kind && strcmp(kind, "session") == 0) {
                        sessions_load_record(a, rec);
                } else if (kind && strcmp(kind, "start") == 0) {
                        json_decref(*ret_last_start);
                        *ret_last_start = json_incref(rec);
                }
                json_decref(rec);
        }
        a->index = journal_last_index(a->journal);
}

/*
 * The journal's snapshot function: what compaction must keep of the records
 * it drops, so idempotency and the staged kernel survive.
 */
static json_t *agent_snapshot_fn(const struct journal_rec *const *dropped, size_t n, void *userdata)
{
        struct agent *a = userdata;
        json_t *ops = json_array();
        const char *id;
        json_t *e;

        /* Called with agent.lock held (from journal_append). */
        json_object_foreach (a->ops, id, e)
                json_array_append(ops, e);
        (void)dropped;
        (void)n;
        /* last_start: what the journal last recorded, not what runs now: a start
         * record still to be appended must not be claimed by the snapshot. */
        json_t *snap = json_pack("{s:o, s:O, s:O, s:O, s:o, s:O, s:O, s:O}", "operations", ops,
                                 "staged", a->staged ? a->staged : json_null(), "last_operation",
                                 a->operation ? a->operation : json_null(), "last_start",
                                 a->last_start ? a->last_start : json_null(), "lease",
                                 lease_journal_json(&a->lease), "last_update",
                                 a->last_update ? a->last_update : json_null(), "rollback_target",
                                 a->rollback_target ? a->rollback_target : json_null(), "booted",
                                 a->booted ? a->booted : json_null());
        /* "broker": where draining the session broker's events stopped (sessions.c). */
        if (snap && a->sessions_broker_id[0] && a->sessions_seq > 0)
                json_object_set_new(snap, "broker",
                                    json_pack("{s:s, s:I}", "id", a->sessions_broker_id, "seq",
                                              (json_int_t)a->sessions_seq));
        return snap;
}

static json_t *start_facts(json_t *rec)
{
        json_t *f = json_object();
        static const char *const keys[] = { "agent_version", "kernel", "backend" };

        for (size_t i = 0; f && rec && i < ELEMENTSOF(keys); i++)
                if (json_is_string(json_object_get(rec, keys[i])))
                        json_object_set(f, keys[i], json_object_get(rec, keys[i]));
        return f;
}

int agent_reconcile(struct agent *a)
{
        char last_boot[40] = "";
        enum luo_state last_state = LUO_STATE_UNDEFINED, kstate;
        uint64_t last_time = 0, now = now_real_usec(), idx;
        json_t *last_start = NULL;
        bool fresh, kexec_loaded = false, verify_mismatch = false;
        struct backend_info bi = { 0 };
        int r;

        /* The kernel's uptime at (about) the agent's first moment: the new boot's share of a
         * blackout. */
        if (a->backend->ops->get_info(a->backend, &bi) < 0)
                bi.uptime_ms = 0;
        now = now_real_usec();
        r = a->backend->ops->get_state(a->backend, &kstate);
        if (r < 0)
                return log_error_errno(r, "Failed to read the kernel's live-update state: %m");
        (void)a->backend->ops->kexec_loaded(a->backend, &kexec_loaded);

        agent_lock(a);
        journal_set_snapshot_fn(a->journal, agent_snapshot_fn, a);
        agent_load_journal_locked(a, last_boot, sizeof(last_boot), &last_state, &last_time,
                                  &last_start);
        fresh = journal_count(a->journal) == 0;
        json_decref(a->last_start);
        a->last_start = last_start ? start_facts(last_start) : NULL;
        a->state = fresh ? kstate : last_state;
        a->changed_at = last_time ? last_time : now;

        bool rebooted = !fresh && strcmp(last_boot, a->info.boot_id) != 0;
        json_t *op = a->operation;
        bool op_was_running = op && same_str(op, "status", "running");

        if (rebooted) {
                /*
                 * One record tells the whole jump: the boot change, the state change
                 * across it, and the end of the reboot operation. One append is atomic,
                 * so a crash cannot leave a half-told reboot behind (the next start
                 * would otherwise see the new boot id, take the same-boot path and
                 * judge the reboot as failed).
                 */
                bool planned = op_was_running && (same_str(op, "action", "reboot") ||
                                                  same_str(op, "action", "rollback"));
                uint64_t blackout_ms = now > last_time ? (now - last_time) / 1000 : 0;
                enum luo_state from = a->state;
                json_t *rec = json_pack("{s:s, s:s, s:s, s:I, s:b}", "from_boot_id", last_boot,
                                        "to_boot_id", a->info.boot_id, "from_state",
                                        luo_state_to_string(from), "blackout_ms",
                                        (json_int_t)blackout_ms, "planned", planned);
                int http_status = 0;
                if (planned)
                        json_object_set_new(rec, "operation_id",
                                            json_incref(json_object_get(op, "id")));
                if (op_was_running) {
                        if (planned)
                                op_finish_json(op, "succeeded", NULL, NULL, NULL, now);
                        else
                                op_finish_json(op, "failed", "kernel-error",
                                               "interrupted by an unplanned reboot", NULL, now);
                        http_status = planned ? 202 : 500;
                        a->op_running = false;
                        agent_ops_put_locked(a, op, http_status, NULL);
                        json_object_set(rec, "operation", op);
                        json_object_set_new(rec, "http_status", json_integer(http_status));
                        op_was_running = false;
                }
                /*
                 * After the jump (verify.c): the new boot's share of the blackout (the
                 * kernel's uptime when the agent came up; the rest, kexec_ms, is the old
                 * boot going down and the jump) and whether the staged kernel runs.
                 */
                if (bi.uptime_ms) {
                        json_object_set_new(rec, "kernel_uptime_ms_at_start",
                                            json_integer((json_int_t)bi.uptime_ms));
                        json_object_set_new(
                                rec, "kexec_ms",
                                json_integer((json_int_t)(blackout_ms > bi.uptime_ms
                                                                  ? blackout_ms - bi.uptime_ms
                                                                  : 0)));
                } else {
                        json_object_set_new(rec, "kernel_uptime_ms_at_start", json_null());
                        json_object_set_new(rec, "kexec_ms", json_null());
                }
                json_t *verification = verify_running(a, a->staged);
                if (verification) {
                        verify_mismatch = same_str(verification, "status", "mismatch");
                        json_object_set_new(rec, "verification", verification);
                }
                json_decref(a->last_update);
                a->last_update = verify_last_update_from_record(rec);
                if (a->last_update)
                        json_object_set_new(a->last_update, "at", time_json(now));
                agent_note_reboot_locked(a, verification);
                metrics_blackout(blackout_ms);
                /* Before the append, so that the document it rebuilds has no lease. */
                lease_reconcile_locked(a, true);
                json_decref(a->staged);
                a->staged = NULL;
                a->last_blackout_ms = blackout_ms;
                a->state = kstate;
                if (from != kstate)
                        a->transitions[from][kstate]++;
                agent_record_locked(a, "reboot", rec);
                log_notice("Rebooted from boot %s to %s, blackout %llu ms (%s), state %s -> %s",
                           last_boot, a->info.boot_id, (unsigned long long)blackout_ms,
                           planned ? "planned" : "unplanned", luo_state_to_string(from),
                           luo_state_to_string(kstate));
        }

        agent_transition_locked(a, kstate, "reconcile", NULL);

        if (op_was_running) {
                /* The agent died during an operation: judge it by the kernel, never redo it. */
                const char *act = json_string_value(json_object_get(op, "action"));
                bool ok = false;
                if (strcmp(act, "prepare") == 0)
                        ok = kstate == LUO_STATE_PREPARED;
                else if (strcmp(act, "cancel") == 0 || strcmp(act, "finish") == 0)
                        ok = kstate == LUO_STATE_NORMAL;
                else if (strcmp(act, "unstage") == 0)
                        ok = !kexec_loaded;
                /* reboot in the same boot, stage: the outcome is unknown: failed. */
                if (ok) {
                        op_finish_json(op, "succeeded", NULL, NULL, NULL, now);
                        agent_record_op_locked(a, op, 200);
                } else {
                        op_finish_json(op, "failed", "kernel-error",
                                       "the agent stopped during the operation; "
                                       "the kernel state shows it did not complete",
                                       NULL, now);
                        agent_record_op_locked(a, op, 500);
                }
                if (strcmp(act, "unstage") == 0 && ok && a->staged) {
                        json_decref(a->staged);
                        a->staged = NULL;
                        agent_record_locked(a, "staging", json_pack("{s:n}", "staged"));
                }
        }

        /* A lease of another boot is void, one whose deadline passed fires at once (lease.c). */
        lease_reconcile_locked(a, rebooted);

        /* Staged, but the kernel lost the image (or never had it after a crash). */
        if (a->staged) {
                bool was = json_is_true(json_object_get(a->staged, "loaded"));
                if (was != kexec_loaded) {
                        json_object_set_new(a->staged, "loaded", json_boolean(kexec_loaded));
                        agent_record_locked(a, "staging", json_pack("{s:O}", "staged", a->staged));
                }
        }

        if (fresh || !last_start || !same_str(last_start, "kernel", a->info.release) ||
            !same_str(last_start, "agent_version", LUOFLEET_VERSION) ||
            !same_str(last_start, "backend", a->backend->ops->name)) {
                json_t *facts =
                        json_pack("{s:s, s:s, s:s}", "agent_version", LUOFLEET_VERSION, "kernel",
                                  a->info.release, "backend", a->backend->ops->name);
                if (facts && agent_record_locked(a, "start", json_incref(facts)) >= 0) {
                        json_decref(a->last_start);
                        a->last_start = json_incref(facts);
                }
                json_decref(facts);
        }
        if (!a->snap)
                agent_rebuild_snapshot_locked(a);
        if (a->state == LUO_STATE_PREPARED && !fresh && !privsep_proxy_attached(a->backend))
                log_warning("Started while the kernel is prepared: the preserved resources of "
                            "the previous agent were released with its device handle; the host "
                            "stays prepared until a cancel or reboot (docs/operations.md)");
        idx = a->index;
        json_decref(last_start);
        agent_unlock(a);
        log_info("Reconciled: state %s, index %llu, boot %s", luo_state_to_string(kstate),
                 (unsigned long long)idx, a->info.boot_id);
        if (verify_mismatch) {
                log_error("The running kernel %s is not the one that was staged (readyz fails)",
                          a->info.release);
                agent_audit(a, &(struct audit_entry){ .source = "agent",
                                                      .action = "verify",
                                                      .status = 503,
                                                      .code = "kernel-mismatch" });
        }
        /* The host's health checks of an update, once per start in the updated state (hooks.c). */
        if (kstate == LUO_STATE_UPDATED)
                hooks_post_update(a, "");
        return 0;
}

/* ---- audit and storage ---------------------------------------------------- */

void agent_requested_by(const struct auth_identity *who, char *buf, size_t size)
{
        if (!who || !who->method[0])
                snprintf(buf, size, "anonymous");
        else
                auth_identity_string(who, buf, size);
}

int agent_storage_check(struct agent *a, uint64_t reserve, uint64_t *ret_free)
{
        struct statvfs sv;
        uint64_t avail;

        if (ret_free)
                *ret_free = UINT64_MAX;
        if (a->state_dir_fd < 0)
                return 0;
        if (fstatvfs(a->state_dir_fd, &sv) < 0)
                return negative_errno();
        if (sv.f_flag & ST_RDONLY)
                return -EROFS;
        /* Root may write into the blocks reserved for it; anyone else may not. */
        avail = (uint64_t)(geteuid() == 0 ? sv.f_bfree : sv.f_bavail) * sv.f_frsize;
        if (ret_free)
                *ret_free = avail;
        return avail < reserve ? -ENOSPC : 0;
}

/*
 * A full directory that the probe finds roomy again has recovered. Not a
 * read-only one: a file system turned read-only by an error still says
 * "rw" to statvfs, so only the next successful append tells.
 */
static bool space_errno(int r)
{
        return r == -ENOSPC || r == -EDQUOT || r == -EFBIG;
}

bool agent_journal_health(struct agent *a, char *detail, size_t size)
{
        uint64_t avail = 0;
        char eb[16];
        int probe = agent_storage_check(a, AGENT_STORAGE_RESERVE, &avail), jerr, aerr;

        agent_lock(a);
        jerr = a->journal_error;
        agent_unlock(a);
        pthread_mutex_lock(&a->audit_lock);
        aerr = a->audit_error;
        pthread_mutex_unlock(&a->audit_lock);

        if (probe == -EROFS) {
                snprintf(detail, size,
                         "the state directory is read-only: operations are refused "
                         "(state-dir-read-only)");
                return false;
        }
        if (probe == -ENOSPC) {
                snprintf(detail, size,
                         "%llu bytes free in the state directory, %llu needed: operations are "
                         "refused (journal-full)",
                         (unsigned long long)avail, (unsigned long long)AGENT_STORAGE_RESERVE);
                return false;
        }
        if (probe < 0) {
                snprintf(detail, size, "the state directory cannot be probed: %s",
                         errno_name(probe, eb));
                return false;
        }
        if (jerr && !space_errno(jerr)) {
                snprintf(detail, size, "last append failed: %s", errno_name(jerr, eb));
                return false;
        }
        if (aerr && !space_errno(aerr)) {
                snprintf(detail, size, "last audit append failed: %s", errno_name(aerr, eb));
                return false;
        }
        snprintf(detail, size, "writable");
        return true;
}

struct journal *agent_audit_lock(struct agent *a)
{
        pthread_mutex_lock(&a->audit_lock);
        return a->audit;
}

void agent_audit_unlock(struct agent *a)
{
        pthread_mutex_unlock(&a->audit_lock);
}

/*
 * Client bytes (an If-Match header, a certificate subject) for the audit
 * record: at most max bytes, control characters as '?', and if the result is
 * not UTF-8, every non-ASCII byte as '?' too. Never NULL unless out of memory.
 */
static json_t *audit_string(const char *s, size_t max)
{
        char buf[256];
        size_t n = 0;
        json_t *j;

        max = MIN(max, sizeof(buf) - 1);
        for (; s[n] && n < max; n++)
                buf[n] = (unsigned char)s[n] < 0x20 || s[n] == 0x7f ? '?' : s[n];
        buf[n] = 0;
        j = json_stringn(buf, n);
        if (j)
                return j;
        for (size_t i = 0; i < n; i++)
                if ((unsigned char)buf[i] >= 0x80)
                        buf[i] = '?';
        return json_stringn(buf, n);
}

static json_t *audit_identity(const struct auth_identity *who)
{
        bool none = !who || !who->method[0];

        return json_pack("{s:s, s:o, s:s}", "method", none ? "none" : who->method, "name",
                         none || !who->name[0] ? json_null()
                                               : audit_string(who->name, sizeof(who->name)),
                         "role", auth_role_to_string(none ? ROLE_NONE : who->role));
}

/*
 * The audit journal is written under its own lock (never while agent.lock
 * is held: the state and index are read first, under agent.lock, and the
 * lock released). Its records do not change the state document, so no
 * listener is woken. A record that cannot be written (full or read-only
 * directory, I/O error) goes to the log instead: it holds nothing secret
 * (token names, never tokens), so the log may have it.
 */
int agent_audit(struct agent *a, const struct audit_entry *e)
{
        _cleanup_free_ char *line = NULL;
        uint64_t now = now_real_usec(), state_index;
        enum luo_state state;
        json_t *rec;
        char eb[16];
        int r;

        agent_lock(a);
        state = a->state;
        state_index = a->index;
        agent_unlock(a);

        /* "o*": no operation_id member when there is none (OperationId is a string). */
        rec = json_pack(
                "{s:I, s:o, s:s, s:s, s:s, s:I, s:o, s:s, s:s, s:o*, s:o, s:{s:i, s:s, "
                "s:b}}",
                "index", (json_int_t)0, "time", time_json(now), "boot_id", a->info.boot_id, "kind",
                "audit", "state", luo_state_to_string(state), "state_index",
                (json_int_t)state_index, "identity", audit_identity(e->who), "source",
                e->source ? e->source : "unknown", "action", e->action ? e->action : "unknown",
                "operation_id",
                e->operation_id && e->operation_id[0] ? audit_string(e->operation_id, OP_ID_MAX)
                                                      : NULL,
                "precondition",
                e->if_match ? audit_string(e->if_match, AUDIT_PRECONDITION_MAX) : json_null(),
                "result", "status", e->status, "code", e->code ? e->code : "unknown", "replayed",
                e->replayed);
        if (!rec)
                return log_oom();
        if (e->force)
                json_object_set_new(rec, "force", json_true());

        pthread_mutex_lock(&a->audit_lock);
        if (!a->audit) {
                r = 0;
                goto out;
        }
        json_object_set_new(rec, "index",
                            json_integer((json_int_t)(journal_last_index(a->audit) + 1)));
        /* Half the operations' reserve: refused requests cannot eat an admitted one's room. */
        r = agent_storage_check(a, AGENT_STORAGE_RESERVE / 2, NULL);
        if (r >= 0)
                r = journal_append(a->audit, rec);
        if (r < 0) {
                a->audit_error = r;
                a->audit_dropped++;
                line = json_dumps(rec, JSON_COMPACT | JSON_PRESERVE_ORDER);
                log_warning("Audit record not journaled (%s): %s", errno_name(r, eb),
                            line ? line : "(out of memory)");
        } else
                a->audit_error = 0;
out:
        pthread_mutex_unlock(&a->audit_lock);
        json_decref(rec);
        return r;
}
