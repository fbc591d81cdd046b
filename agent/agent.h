/*
 * agent.h: the host's live-update model: the state document, its index, the
 * journal that makes both durable, the table of operations (idempotency),
 * and start-up reconciliation with the kernel.
 *
 * Threads: agent_kernel_changed() from the loop thread, operation begin from
 * MHD's thread, operation execution on the worker thread, everything under
 * agent.lock. Listeners (longpoll, sse) are notified after the lock is
 * released, with the new index.
 */
#pragma once

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "auth.h"
#include "config.h"
#include "lease.h"
#include "luofleet/backend.h"
#include "snapshot.h"

struct journal;
struct http_reply;

enum op_action {
        OP_PREPARE,
        OP_CANCEL,
        OP_REBOOT,
        OP_FINISH,
        OP_STAGE,
        OP_UNSTAGE,
        OP_ROLLBACK,
        _OP_ACTION_MAX,
};

const char *op_action_to_string(enum op_action a);
int op_action_from_string(const char *s);

#define OP_ID_MAX 64
#define OP_REASON_MAX 256
#define OPS_TABLE_MAX 1024
/* An audit record keeps at most this much of an If-Match header. */
#define AUDIT_PRECONDITION_MAX 128

/* A validated action request (from h_actions.c / h_kernel.c). */
struct op_request {
        enum op_action action;
        char id[OP_ID_MAX + 1]; /* "" = generate */
        char reason[OP_REASON_MAX + 1];
        bool has_reason;
        const char *if_match; /* raw header or NULL */
        char requested_by[96];
        /* stage only */
        char kernel_path[4096];
        char kernel_sha256[65];
        char initrd_path[4096]; /* "" = none */
        char initrd_sha256[65];
        char cmdline[2048];
        /* stage from URLs (download.c): the URLs, "" = by path; the paths are then filled */
        char kernel_url[4096];
        char initrd_url[4096];
        char signed_by[65]; /* key id of the verified signature, "" = unsigned */
        /* For the audit record written when the job ends (agent_op_execute). */
        struct auth_identity who;
        char source[64];
        char precondition[AUDIT_PRECONDITION_MAX + 1]; /* sanitized If-Match, "" = none */
        bool has_precondition;
        /* prepare only: the dead-man lease asked for (lease.h), 0 = none */
        uint64_t lease_seconds;
        /* stage only: the release the new kernel must report (verify.c), "" = none */
        char expected_release[128];
        /* finish only: go on although a post-update hook fails (hooks.c); audited */
        bool force;
};

typedef void (*agent_listener_fn)(void *userdata, uint64_t index);

struct agent {
        pthread_mutex_t lock;
        const struct agent_config *cfg;
        struct backend *backend;
        struct journal *journal;
        int state_dir_fd;

        /* the state document */
        enum luo_state state;
        uint64_t index;
        uint64_t changed_at; /* realtime usec */
        struct backend_info info;
        char hostname[256];
        json_t *staged; /* NULL = nothing staged */
        /*
         * Rollback (docs/staging.md): rollback_target is the "previous" of the
         * staged record the last reboot consumed, with that record's cmdline
         * (NULL = none); booted is the staged record the last reboot booted
         * when the verification matched (its files name the running kernel).
         */
        json_t *rollback_target;
        json_t *booted;
        json_t *operation; /* current or last operation, NULL = none yet */
        bool op_running;
        struct doc_snapshot *snap;

        /* operation id -> {"operation": {...}, "http_status": N} */
        json_t *ops;
        json_t *ops_order; /* ids, oldest first, for the bound */

        /*
         * Kernel reads race: the watcher and the worker each read the state
         * without the lock and apply it under the lock. A ticket taken before
         * each read orders them; a read older than the last applied one is
         * stale and is not applied (the watcher reads again).
         */
        atomic_uint_fast64_t read_ticket;
        uint64_t applied_ticket;

        int journal_error; /* last append error, 0 = writable */

        /*
         * The audit trail (agent_audit): its own journal file ("audit"), index
         * sequence and lock, so that a flood of refused requests neither moves
         * the state index (If-Match, long-poll, SSE ids) nor pushes state
         * history out through compaction, nor waits on agent.lock. Lock order:
         * agent.lock is never taken while audit_lock is held.
         */
        pthread_mutex_t audit_lock;
        struct journal *audit;  /* NULL when there is no state directory (unit tests) */
        int audit_error;        /* last audit append error, 0 = fine */
        uint64_t audit_dropped; /* audit records that could not be written */
        bool shutting_down;
        uint64_t transitions[_LUO_STATE_MAX][_LUO_STATE_MAX];
        uint64_t ops_done[_OP_ACTION_MAX][2]; /* [action][0 ok, 1 failed] */
        uint64_t last_blackout_ms;
        json_t *last_start;   /* the last journaled start record's facts */
        char self_check[160]; /* "" = GET_STATE and sysfs agreed at start-up */
        struct lease lease;   /* the dead-man lease of a prepared host (lease.h) */
        /* The reboot into this boot: blackout and verification (verify.h), NULL = none. */
        json_t *last_update;
        /* The failing post-update hook ({hook, phase, exit_code, ...}), NULL = healthy. */
        json_t *hooks_failing;

        /*
         * The session broker (sessions.c): its document (without events),
         * the broker instance and the last event journaled, and what the
         * backend says of its kernel interface (describe). sessions_lock
         * serialises refreshes (before agent.lock).
         */
        pthread_mutex_t sessions_lock;
        json_t *sessions_doc;     /* the latest (GET /v1/sessions, metrics) */
        json_t *sessions_summary; /* the state document's: moves with session records only */
        char sessions_broker_id[40];
        uint64_t sessions_seq;
        char interface[256];

        agent_listener_fn listeners[8];
        void *listener_data[8];
        unsigned n_listeners;

        /* called on the worker thread after a successful simulated reboot */
        void (*sim_jump)(void *userdata);
        void *sim_jump_data;
};

int agent_new(const struct agent_config *cfg, struct backend *b, struct journal *j,
              int state_dir_fd, struct agent **ret);
struct agent *agent_free(struct agent *a);
void agent_add_listener(struct agent *a, agent_listener_fn fn, void *userdata);

/* Reconcile the journal with the kernel; writes the records that says. */
int agent_reconcile(struct agent *a);

/* A new reference to the current serialized document. */
struct doc_snapshot *agent_snapshot(struct agent *a);
uint64_t agent_index(struct agent *a);

/* Take a ticket just before reading the kernel's state. */
uint64_t agent_read_ticket(struct agent *a);
/*
 * The watcher read state s with ticket t (a re-read: may be unchanged).
 * Returns 0 when applied, -ESTALE when a newer read was applied meanwhile
 * (read again).
 */
int agent_kernel_observed(struct agent *a, uint64_t ticket, enum luo_state s);

/*
 * Begin an operation: idempotent replay, If-Match, in-progress and
 * transition checks. Returns 1 with *ret_job when the operation was accepted
 * (the "running" record is durable), 0 when rep holds the answer already
 * (refusal or replay), -errno on internal failure.
 */
int agent_op_begin(struct agent *a, const struct op_request *rq, struct http_reply *rep,
                   struct op_job **ret_job);

/* Run the job's kernel calls and record the end (worker thread). */
void agent_op_execute(struct op_job *job);

/* Allowed actions from a state (for invalid-transition answers). */
json_t *agent_allowed_actions(enum luo_state s);

/* Build the document as JSON (lock held), with op in place of the operation. */
json_t *agent_doc_locked(struct agent *a, json_t *op);

/* Helpers for handlers that read the journal (history, events). */
void agent_lock(struct agent *a);
void agent_unlock(struct agent *a);

/* Journal check for /readyz. */
int agent_journal_status(struct agent *a);

/*
 * For ops.c: records of an operation's life, with agent.lock held, and the
 * notification of listeners once the lock is released.
 */
int agent_record_op_locked(struct agent *a, json_t *op, int http_status);
/*
 * The "running" record of an accepted operation, before any kernel call: on
 * failure nothing changes (document, index, operation table) and -errno is
 * returned; on success op is the current operation (a new reference is taken).
 */
int agent_record_op_begin_locked(struct agent *a, json_t *op);
int agent_record_op_extra_locked(struct agent *a, json_t *op, int http_status, json_t *extra);
int agent_transition_op_locked(struct agent *a, enum luo_state to, const char *op_id);
int agent_record_staging_locked(struct agent *a, json_t *staged);
/* A "hook" record (hooks.c; fields stolen): it moves the index like any record. */
int agent_record_hook_locked(struct agent *a, json_t *fields);
void agent_notify_index(struct agent *a, uint64_t index);
/*
 * Any other record kind (lease.c; fields stolen). must_persist: a failed
 * append changes nothing, not even the index, and -errno is returned.
 */
int agent_record_kind_locked(struct agent *a, const char *kind, json_t *fields, bool must_persist);
/*
 * Rebuild the served document without a record (agent.lock held): only for
 * what is no change of the host, as the sessions summary read at start-up
 * (sessions.c); every change goes through a record and moves the index.
 */
void agent_doc_refresh_locked(struct agent *a);

/*
 * Audit (agent.c): every mutating request, allowed or denied, becomes an
 * "audit" journal record with time, boot id, identity, source, action,
 * precondition and result. Never carries a secret. Any thread; takes the lock.
 */
struct audit_entry {
        const struct auth_identity *who;
        const char *source;       /* peer address, "unix" */
        const char *action;       /* "prepare", "cancel", "reboot", "finish", "stage", ... */
        const char *operation_id; /* NULL or "" = none */
        const char *if_match;     /* the raw If-Match header or NULL */
        int status;               /* HTTP status of the answer */
        const char *code;         /* problem code, or "accepted" / "ok" / "replayed" */
        bool replayed;            /* answered from an earlier request with this operation_id */
        bool force;               /* finish with "force": true (a failing post-update hook) */
};
int agent_audit(struct agent *a, const struct audit_entry *e);

/* The audit journal for readers (h_history.c), with audit_lock held; NULL when none. */
struct journal *agent_audit_lock(struct agent *a);
void agent_audit_unlock(struct agent *a);

/*
 * "token:ci-bot", "cert:CN=x", "uid:0" or "anonymous": the requested_by of
 * an operation started by who.
 */
void agent_requested_by(const struct auth_identity *who, char *buf, size_t size);

/*
 * Can the state directory take an operation's records? A probe
 * (fstatvfs), not a write: 0 when it can, -EROFS (mounted read-only),
 * -ENOSPC (fewer than reserve bytes free: an operation writes several
 * records after its kernel call, which must not be the first to fail), or
 * the probe's -errno. What a probe cannot see (EIO, a file system turned
 * read-only by an error) shows at the append itself. *ret_free: bytes free
 * (may be NULL). Any thread; no lock needed.
 */
#define AGENT_STORAGE_RESERVE ((uint64_t)64 * 1024)
int agent_storage_check(struct agent *a, uint64_t reserve, uint64_t *ret_free);
/*
 * The /readyz "journal" check: false with a detail when operations would be
 * refused (read-only or full state directory) or the last append of the
 * journal or the audit journal failed for a reason the probe cannot see
 * recovering (EIO). Takes agent.lock and audit_lock in turn, never both.
 */
bool agent_journal_health(struct agent *a, char *detail, size_t size);

/* Mark shutting down: new operations are refused. */
void agent_set_shutting_down(struct agent *a);
