/*
 * controller.h: the seam between luofleet-rollout's HTTP side (api.c,
 * main.c: libmicrohttpd threads) and its core (engine.c, store.c, plan.c,
 * window.c, agentclient.c: one engine thread driving libcurl's multi
 * interface, SQLite as the durable store).
 *
 * Every function here is thread-safe: the HTTP threads call them while the
 * engine runs. Results are jansson documents whose shapes are the ones of
 * api/rollout.yaml (summarised below); the caller owns (json_decref) what it
 * gets. Errors come back as a struct ctl_problem that api.c turns into
 * application/problem+json with the same status and code.
 *
 * ---- Shapes (api/rollout.yaml is the normative text) ----------------------
 *
 * Host (GET /v1/hosts, GET/PUT /v1/hosts/{name}):
 *   {"name", "url", "labels": {k: v}, "source": "inventory"|"api",
 *    "reachable": bool, "last_seen": RFC 3339 UTC ms | null,
 *    "state": normal|prepared|frozen|updated|undefined | null (never seen),
 *    "index": int|null, "boot_id": str|null, "kernel": str|null,
 *    "blackout_ms": int|null (the agent's last_update.blackout_ms),
 *    "rollout": id|null and "phase": HostPhase|null (the newest rollout
 *    that includes the host), "error": str|null (last contact error)}
 *
 * RolloutSpec (POST /v1/rollouts body):
 *   {"id"?: [A-Za-z0-9._-]{1,64} (default: generated "r-YYYYMMDD-HHMMSS-xxxx";
 *            the same id with the same spec again answers the existing rollout,
 *            200; with another spec 409 rollout-exists),
 *    "target": StageRequest of the agent (kernel {url|path, sha256}, initrd?,
 *              cmdline?, signature?, release?) forwarded to PUT /v1/kernel
 *              with an operation_id added; required,
 *    "selector"?: {label: value} all must match (absent/{}: every host),
 *    "hosts"?: [name] explicit list (intersected with the selector),
 *    "strategy"?: {"mode": "rolling"|"two-phase" (default rolling),
 *                  "canary": Count (default 1), "batch": Count (default "10%"),
 *                  "max_unavailable": Count (default 1),
 *                  "max_failures": Count (default 0),
 *                  "soak": Duration (default "0s")},
 *    "timeouts"?: {"stage", "prepare", "reboot", "finish": Duration}
 *                 (defaults 10m, 2m, 10m, 2m),
 *    "lease_seconds"?: int 0..86400 (0: none; default 0),
 *    "windows"?: [{"days": ["mon".."sun"] (default every day),
 *                  "start": "HH:MM", "end": "HH:MM" (end <= start: past
 *                  midnight), "time_zone": IANA name (default "UTC")}]
 *                (absent or []: always open),
 *    "auto_rollback"?: bool (default false),
 *    "dry_run"?: bool}
 *   Count = int >= 0 or "N%" (of the selected hosts, rounded up, at least 1
 *   when N > 0). Duration = "250ms", "30s", "5m", "2h" or an int of seconds.
 *
 * Plan (dry_run, and the "plan" member of a Rollout):
 *   {"hosts": n, "waves": [{"index": 0, "canary": true, "hosts": [name]}, ...],
 *    "expected_duration_s": number (per wave: stage+prepare+reboot+finish
 *    estimates, soak between waves), "skipped": [{"host", "reason"}]}
 *
 * Rollout (GET /v1/rollouts/{id}, and the answer to create/pause/resume/abort):
 *   {"id", "spec": RolloutSpec as stored (with defaults filled in),
 *    "status": RolloutStatus, "created_at", "updated_at", "finished_at"|null,
 *    "reason": null | {"code": str, "detail": str} (why paused, blocked,
 *              failed or aborted: codes below),
 *    "current_wave": int | null, "waves": n,
 *    "counters": {"total", "pending", "in_progress", "unavailable",
 *                 "done", "failed", "cancelled", "skipped"},
 *    "plan": Plan,
 *    "hosts": [{"name", "wave", "phase": HostPhase, "step": str|null
 *               (the step whose intent is recorded), "attempts": int,
 *               "boot_id_before": str|null, "boot_id_after": str|null,
 *               "kernel": str|null, "blackout_ms": int|null,
 *               "started_at"|null, "finished_at"|null,
 *               "error": null | {"code", "detail"}}]}
 *   GET /v1/rollouts lists the same without "hosts" and "plan".
 *
 * RolloutStatus: pending (created, not started), running, paused, blocked
 *   (running but waiting: window closed, budget exhausted by unavailable
 *   hosts; reason says which), completed, failed (a wave could not go on and
 *   resuming is pointless), aborted.
 * HostPhase: pending, staging, prepared, rebooting, updated, verifying,
 *   finishing, done, failed, cancelled, skipped.
 * Reason codes: "paused-by-user", "failure-budget-exhausted",
 *   "outside-window" (detail names the next opening; "next_window_at" in
 *   the reason object), "unavailable-budget" (too many hosts down already),
 *   "aborted-by-user", "two-phase-prepare-failed", "no-hosts".
 *
 * Event (SSE, GET /v1/rollouts/{id}/events; "id:" is seq, "event:" is type):
 *   {"seq": int (per rollout, from 1), "time", "rollout", "type",
 *    "host"?: name, "phase"?: HostPhase, "wave"?: int, "detail"?: str,
 *    "status"?: RolloutStatus, "blackout_ms"?: int}
 *   types: rollout-created, rollout-status (status change), wave-started,
 *   wave-finished, host-phase (host moved to a phase), host-action (an
 *   action sent: detail "stage"/"prepare"/..., with the operation id),
 *   host-error (a failed attempt, retried or not).
 */
#pragma once

#include "hostpolicy.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct controller;

/* What the HTTP side answers with when a call fails. */
struct ctl_problem {
        int status;       /* HTTP status: 400, 404, 409, 422, 500, 503 */
        char code[48];    /* stable machine-readable code: "invalid-field", "not-found", ... */
        char detail[256]; /* one sentence for humans */
        char field[64];   /* for invalid-field: the JSON pointer-ish member ("strategy.batch") */
};

/* How the controller reaches the agents (from the configuration). */
struct ctl_agent_tls {
        const char *ca_bundle;   /* NULL: the system's CAs */
        const char *client_cert; /* PEM, or NULL */
        const char *client_key;  /* PEM, or NULL */
        const char *token_file;  /* a file whose first line is the bearer token, or NULL */
};

struct ctl_options {
        const char *db_path;        /* SQLite file (created 0600); ":memory:" for unit tests */
        const char *inventory_path; /* hosts file (JSON, see docs/rollout.md) or NULL */
        struct ctl_agent_tls agent;
        /* Which agent URLs are accepted (hostpolicy.h; the patterns are not copied: they
         * must outlive the controller). */
        struct host_policy hosts;
        /* Long-poll wait asked of the agents (ms; default 30000). */
        unsigned poll_wait_ms;
        /* Unreachable-host retry backoff: first and cap (ms; defaults 500 and 10000). */
        unsigned retry_min_ms, retry_max_ms;
        /* Connect and non-long-poll request timeouts (ms; defaults 3000, 15000). */
        unsigned connect_timeout_ms, request_timeout_ms;
        /* Parallel HTTP connections to agents in total (default 1024). */
        unsigned max_connections;
        /* Added to the wall clock for window checks (tests: LUOFLEET_TEST_TIME_OFFSET). */
        int64_t time_offset_s;
        /* "controller" name put into operation ids: "<name>:<rollout>:<host>:<step>" (default
         * "lf"). */
        const char *name;
};

/*
 * Open the store (creating the schema), load the inventory, start the
 * engine thread, which resumes every rollout that was running. Returns 0 or
 * a negative errno with a sentence in err.
 */
int controller_start(const struct ctl_options *opts, struct controller **ret, char *err,
                     size_t err_size);
/* Stop the engine (in-flight requests are abandoned; the store is consistent). */
void controller_stop(struct controller *c);

/* ---- hosts ---------------------------------------------------------------- */
json_t *controller_hosts(struct controller *c, const json_t *selector /* or NULL */);
/* 0 or -ENOENT */
int controller_host_get(struct controller *c, const char *name, json_t **ret);
/* Create or replace ({"url", "labels"?}); *created tells 201 from 200. */
int controller_host_put(struct controller *c, const char *name, const json_t *body, json_t **ret,
                        bool *created, struct ctl_problem *p);
/* 409 host-in-rollout while an unfinished rollout includes it. */
int controller_host_delete(struct controller *c, const char *name, struct ctl_problem *p);

/* ---- rollouts ------------------------------------------------------------- */
/*
 * Validate, plan, and (unless dry_run) store and start. *status_code is 201
 * (created), 200 (an identical rollout with this id exists, or dry_run: then
 * *ret is the Plan). Returns 0 or -1 with p filled.
 */
int controller_rollout_create(struct controller *c, const json_t *spec, json_t **ret,
                              int *status_code, struct ctl_problem *p);
json_t *controller_rollouts(struct controller *c);
int controller_rollout_get(struct controller *c, const char *id, json_t **ret,
                           struct ctl_problem *p);
/* action: "pause", "resume", "abort"; reason may be NULL. 409 invalid-transition
 * when the rollout is finished (completed/failed/aborted). */
int controller_rollout_action(struct controller *c, const char *id, const char *action,
                              const char *reason, json_t **ret, struct ctl_problem *p);

/*
 * Events with seq > after, at most max, oldest first, as a JSON array; waits
 * up to timeout_ms for the first one when there is none (0: don't wait).
 * *finished is set when the rollout has ended and every event was given out
 * (the SSE stream may then close). -ENOENT for an unknown rollout.
 */
int controller_events(struct controller *c, const char *id, int64_t after, unsigned max,
                      unsigned timeout_ms, json_t **ret, bool *finished);

/* Prometheus text exposition of the controller's metrics, appended to *buf (malloc'ed). */
int controller_metrics(struct controller *c, char **buf, size_t *len);
/* For /healthz: engine alive and store writable. */
bool controller_healthy(struct controller *c, char *detail, size_t size);
