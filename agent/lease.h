/*
 * lease.h: the dead-man lease of a prepared host (docs/leases.md). A prepare
 * may carry lease_seconds; the controller renews it with POST /v1/lease; when
 * it runs out the agent cancels on its own (operation
 * "lease-expired:<prepare id>", requested_by "agent").
 *
 * Threads: the lease itself (struct lease minus the runtime members) lives in
 * struct agent under agent.lock and is written by ops.c (MHD's thread, the
 * worker), the renewal handler (MHD's thread) and reconciliation (main). The
 * expiry is an event-loop timer client (loop thread); its deadline is an
 * atomic so that loop_rearm() never takes agent.lock (it may be called with
 * agent.lock held). The cancel it starts runs on the lease's own worker
 * thread: agent_op_begin() admits one operation at a time, so the kernel
 * still sees one call at a time.
 */
#pragma once

#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct agent;
struct loop;
struct worker;
struct http_req;
struct http_reply;

#define LEASE_ID_MAX 64

struct lease {
        /* under agent.lock; journaled as "lease" records */
        bool active;
        char operation_id[LEASE_ID_MAX + 1]; /* the prepare's id */
        char boot_id[40];                    /* the boot the lease was given in */
        uint64_t expires_usec;               /* CLOCK_REALTIME */
        uint64_t seconds;                    /* the last lease_seconds granted */

        /* runtime */
        atomic_uint_fast64_t due_mono; /* CLOCK_MONOTONIC usec, UINT64_MAX = not armed */
        atomic_bool rearm;             /* due_mono changed: loop_rearm() once unlocked */
        struct loop *loop;             /* NULL until lease_attach() */
        struct worker *worker;
};

/* The state document's "lease": {operation_id, expires_at, lease_seconds} or null. */
json_t *lease_json(const struct lease *l);

/* The journal's form (records, snapshots): the document's plus boot_id and expires_usec. */
json_t *lease_journal_json(const struct lease *l);

/*
 * Journal records (agent.lock held). Start: when a prepare with
 * lease_seconds is admitted. End: cause "lease-expired", "lease-cancelled"
 * (a cancel succeeded) or "lease-void" (the prepare failed, or the host is no
 * longer prepared); nothing when there is no lease.
 */
int lease_start_locked(struct agent *a, const char *operation_id, uint64_t seconds);
int lease_end_locked(struct agent *a, const char *cause);

/* Replay of a "lease" record or a snapshot's "lease" member (journal load). */
void lease_load(struct agent *a, json_t *lease);

/*
 * Start-up (agent.lock held): a lease of another boot, or of a host that is
 * not prepared or frozen any more, is void; otherwise it is armed (a passed
 * deadline fires as soon as the event loop runs).
 */
void lease_reconcile_locked(struct agent *a, bool rebooted);

/*
 * The event loop exists (loop_new): the timer client, an agent listener (it
 * re-arms the timer after a change, outside agent.lock) and the worker. Main
 * thread.
 */
int lease_attach(struct agent *a, struct loop *l);
/*
 * Stop the lease's worker (a cancel under way finishes first); from
 * loop_stop(), while the server's listeners still exist, and agent_free().
 */
void lease_detach(struct agent *a);

/* The longest lease_seconds accepted: --max-lease in seconds (at least 1). */
uint64_t lease_max_seconds(const struct agent *a);

/*
 * lease_seconds of a request body: absent (1, *ret 0), valid (1, 1..max),
 * or 0 with a 400 invalid-field in rep.
 */
int lease_parse_seconds(json_t *body, uint64_t max_seconds, uint64_t *ret, struct http_reply *rep);

/* POST /v1/lease {operation_id, lease_seconds?}: renew. */
int h_lease_post(struct http_req *req, struct http_reply *rep);
