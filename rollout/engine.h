/*
 * engine.h: the rollout engine's model and its decisions. The model (fleet
 * hosts, rollouts, their per-host state machines) lives in struct controller
 * behind c->lock; the engine thread (engine_thread) is the only one that
 * talks to agents, and the HTTP threads read and change the model under the
 * same lock (controller.c). The decisions that need no network are pure
 * functions (engine_observe, engine_classify, engine_count, ...) so the unit
 * tests can exercise them without HTTP.
 *
 * Lock order: c->lock only (the store and the agent client have no locks of
 * their own; ac_wakeup() may be called without it).
 */
#pragma once

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "agentclient.h"
#include "controller.h"
#include "plan.h"
#include "store.h"

enum phase {
        PH_PENDING,
        PH_STAGING,
        PH_PREPARED,
        PH_REBOOTING,
        PH_UPDATED,
        PH_VERIFYING,
        PH_FINISHING,
        PH_DONE,
        PH_FAILED,
        PH_CANCELLED,
        PH_SKIPPED,
        PH_CURRENT, /* "already-current": ran the target already, left alone */
        _PH_MAX,
};

enum step {
        STEP_NONE,
        STEP_STAGE,
        STEP_PREPARE,
        STEP_REBOOT,
        STEP_FINISH,
        STEP_CANCEL,
        STEP_ROLLBACK,
        STEP_ROLLBACK_FINISH, /* finish the boot the rollback kexec'ed into */
        _STEP_MAX,
};

enum rstatus {
        RS_PENDING,
        RS_RUNNING,
        RS_PAUSED,
        RS_BLOCKED,
        RS_COMPLETED,
        RS_FAILED,
        RS_ABORTED,
        _RS_MAX,
};

const char *phase_to_string(enum phase p);
enum phase phase_from_string(const char *s); /* PH_PENDING for unknown */
const char *step_to_string(enum step s);     /* "" for STEP_NONE */
enum step step_from_string(const char *s);
const char *rstatus_to_string(enum rstatus s);
enum rstatus rstatus_from_string(const char *s);
bool phase_terminal(enum phase p);
bool phase_unavailable(enum phase p); /* rebooting, updated, verifying, finishing */

/*
 * Does a host whose last state document is state already run the target of the
 * normalised spec: at rest ("normal") on the kernel release the target names? Never
 * with "force": true, without a target release, or without a state. (The agent
 * verifies a new boot by release, version and build id; it does not keep the image's
 * digest, so the release decides.)
 */
bool engine_host_current(const json_t *spec, const json_t *state);
bool rstatus_finished(enum rstatus s);

struct rhost;
struct rollout;

/* A host of the fleet view. */
struct host {
        struct store_host rec;
        struct controller *ctl;
        struct rhost *active; /* its host record in an unfinished rollout, or NULL */
        struct rhost *newest; /* its record in the newest rollout that includes it */
        struct ac_req *watch; /* outstanding GET /v1/state (long-poll or plain) */
        int64_t watch_at;     /* monotonic ms: start the next watch not before */
        unsigned watch_backoff;
        bool watch_lp;      /* the outstanding watch is a long-poll... */
        int64_t watch_idx;  /* ...from this index */
        int64_t refresh_at; /* monotonic ms: idle refresh of the fleet view */
        bool dirty;         /* rec to be saved */
};

/* A host inside a rollout: the state machine. */
struct rhost {
        struct store_rhost rec;
        enum phase phase;
        enum step step;
        struct rollout *ro;
        struct host *host;     /* NULL when the host was deleted (finished rollouts only) */
        struct ac_req *action; /* outstanding action, state read or readyz */
        enum ac_kind action_kind;
        bool resync;      /* read the state before deciding (restart, 412) */
        bool send_queued; /* the recorded step goes out after the commit */
        bool waiting_op;  /* the agent runs our operation: its end comes by long-poll */
        int64_t retry_at; /* monotonic ms: resend the step / next readyz (0: none) */
        unsigned backoff;
        int precond_failures;
        bool dirty;
        /* Prepared with a lease: when it was last granted (wall ms; 0 after a restart:
         * renew at once) and the renewal under way. */
        int64_t lease_at;
        struct ac_req *lease_req;
};

struct rollout {
        struct store_rollout rec;
        struct controller *ctl;
        enum rstatus status;
        struct rollout_limits lim;
        struct rhost *hosts;
        size_t nhosts;
        int nwaves;
        /* Blackout the hosts of this rollout took so far (EWMA of their agents'
         * blackout_ms; 0: none back yet): when to look for a rebooting host. */
        int64_t blackout_est_ms;
        bool dirty;
};

struct controller {
        pthread_mutex_t lock;
        pthread_cond_t ev_cond; /* broadcast after every commit that added events */
        pthread_t thread;
        bool thread_started;
        pthread_t engine_self; /* set by the engine thread itself (under lock) */
        bool engine_known;
        atomic_bool stop;
        atomic_int_fast64_t last_pass_ms; /* monotonic, for controller_healthy */
        /* Long-polls that ran out of wait with nothing new (metrics, bench). */
        atomic_uint_fast64_t lp_renewals;

        /* options (strings copied) */
        char name[32];
        char *db_path, *inventory_path;
        struct host_policy host_policy; /* patterns owned by the caller (ctl_options) */
        unsigned poll_wait_ms, retry_min_ms, retry_max_ms;
        int64_t time_offset_s;

        struct store *st;
        bool txn;      /* a transaction is open (under lock) */
        bool store_ok; /* the last commit worked */
        bool ev_added; /* events in the open transaction */
        struct agentclient *ac;

        struct host **hosts;
        size_t nhosts;
        struct rollout **rollouts;
        size_t nrollouts;
        struct host **graveyard; /* deleted hosts: the engine frees them (their watch) */
        size_t ngraveyard;

        struct rhost **sendq; /* steps recorded in the open transaction, sent after commit */
        size_t nsendq, capq;

        /* Tests: record sends instead of doing HTTP (engine unit tests). */
        void (*send_hook)(struct controller *c, struct rhost *rh, enum ac_kind kind);
        int64_t test_now_wall_ms, test_now_mono_ms; /* > 0: fixed clocks */
};

/* ---- clocks ---- */
int64_t engine_now_wall_ms(struct controller *c);
int64_t engine_now_mono_ms(struct controller *c);

/* ---- pure decisions ---- */

/* What a state document says about the host's recorded step. */
enum obs_verdict {
        OBS_NOT_SEEN,  /* nothing about our step: (re)send it */
        OBS_RUNNING,   /* our operation runs: wait */
        OBS_SUCCEEDED, /* our operation succeeded */
        OBS_FAILED,    /* our operation failed (error in the document's operation) */
        OBS_REBOOTED,  /* step reboot: the boot id changed */
};
enum obs_verdict engine_observe(const struct store_rhost *h, enum step step, const json_t *state);

/* What an action's answer means. */
enum resp_verdict {
        RESP_OK,      /* done (200; 202 of reboot/rollback: accepted) */
        RESP_RUNNING, /* 202 of stage/prepare/finish: wait for the operation's end */
        RESP_REREAD,  /* 412: read the state and decide again */
        RESP_WAIT,    /* 409 operation-in-progress: wait and resend */
        RESP_RETRY,   /* transport error, 5xx: resend with the same id after a backoff */
        RESP_FAIL,    /* a definitive refusal */
};
enum resp_verdict engine_classify(enum step step, int status, const json_t *body);

/* Counters of a rollout: by phase, plus "unavailable" as the budget counts it. */
struct rollout_counts {
        unsigned by_phase[_PH_MAX];
        unsigned unavailable; /* rebooting..finishing + unreachable + failed-and-not-normal */
        unsigned in_flight;   /* staging + prepared (reserved budget) */
        unsigned failed;
};
void engine_count(const struct rollout *ro, int wave /* -1: all */, struct rollout_counts *ret);
/* Is the host unavailable for the budget (selected hosts only)? */
bool engine_host_unavailable(const struct rhost *rh);

/* The operation id of a step: "<name>:<rollout>:<host>:<step>" (hashed when > 64). */
int engine_op_id(const char *name, const char *rollout, const char *host, enum step step,
                 char buf[static STORE_OPID_MAX]);

/* Backoff: next delay after cur (0: first), between min and max, x2, +-20% jitter. */
unsigned engine_backoff(unsigned cur, unsigned min_ms, unsigned max_ms);
/*
 * When to look again for a host in its reboot that did not answer, since_ms
 * after its reboot was sent, given the rollout's blackout estimate est_ms (0:
 * none yet). Without an estimate: the backoff (*backoff, from min_ms to
 * max_ms). With one: nothing until 90% of it has passed, then every
 * min_ms / 2 until twice the estimate, then the backoff again. Returns ms.
 */
int64_t engine_reboot_retry_ms(int64_t since_ms, int64_t est_ms, unsigned *backoff, unsigned min_ms,
                               unsigned max_ms);
/* Fold one observed blackout into the estimate. */
int64_t engine_blackout_estimate(int64_t est_ms, int64_t blackout_ms);

/* ---- model helpers (under c->lock) ---- */
struct host *engine_host_find(struct controller *c, const char *name);
struct rollout *engine_rollout_find(struct controller *c, const char *id);
/* Append an event to the open transaction. data: extra members (stolen, may be NULL). */
int engine_event(struct controller *c, struct rollout *ro, const char *type, struct rhost *rh,
                 json_t *data);
int engine_txn(struct controller *c);
/* Save what is dirty, commit, wake event waiters, send the queued steps. */
int engine_commit(struct controller *c);
void engine_set_status(struct controller *c, struct rollout *ro, enum rstatus s, const char *code,
                       const char *detail, json_t *extra);
void engine_set_phase(struct controller *c, struct rhost *rh, enum phase p, const char *detail);
/* Link the hosts of unfinished rollouts, mark resumes. */
void engine_attach(struct controller *c, struct rollout *ro, bool resume);

/* One pass over a rollout: start, advance, finish (engine thread or tests). */
void engine_tick(struct controller *c, struct rollout *ro);
/* A state document was seen for host (engine thread or tests). */
void engine_on_state(struct controller *c, struct host *h, json_t *doc);
/* An action's answer, a GET /readyz's, a resync read's (engine thread or tests). */
void engine_on_action(struct controller *c, struct rhost *rh, const struct ac_result *res);
void engine_on_readyz(struct controller *c, struct rhost *rh, const struct ac_result *res);
void engine_on_resync(struct controller *c, struct rhost *rh, const struct ac_result *res);

void engine_host_free(struct controller *c, struct host *h);
void engine_rollout_free(struct rollout *ro);
void *engine_thread(void *arg);
