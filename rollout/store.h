/*
 * store.h: the controller's durable store (SQLite): hosts, rollouts, the
 * per-rollout host records and the per-rollout event log. Non-logging; every
 * function returns 0 or a negative errno (-EIO for an SQLite error, with the
 * message in store_errmsg()).
 *
 * Not thread-safe by itself: the controller serialises every use of a store
 * behind its own lock (controller.c). Writes happen between store_begin()
 * and store_commit() (or store_rollback()), so that a change and the events
 * that describe it reach the disk in one transaction.
 *
 * Schema (PRAGMA user_version = STORE_SCHEMA_VERSION): see store.c.
 * Times are wall-clock milliseconds since the epoch; 0 (or a negative
 * blackout) is stored as NULL.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#define STORE_SCHEMA_VERSION 1

#define STORE_NAME_MAX 254  /* host names (DNS names fit), with the NUL */
#define STORE_ID_MAX 65     /* rollout ids, with the NUL */
#define STORE_OPID_MAX 65   /* agent operation ids (at most 64 characters) */
#define STORE_BOOTID_MAX 37 /* a UUID */
#define STORE_KERNEL_MAX 128

struct store;

/* One host of the fleet view. */
struct store_host {
        char name[STORE_NAME_MAX];
        char *url;         /* owned */
        json_t *labels;    /* owned, an object */
        bool from_api;     /* source "api" (else "inventory") */
        json_t *state;     /* owned: last state document seen, or NULL */
        bool reachable;    /* the last contact worked */
        int64_t last_seen; /* ms, 0: never */
        char *error;       /* owned: last contact error, or NULL */
};

/* One rollout's row (its hosts are struct store_rhost). */
struct store_rollout {
        char id[STORE_ID_MAX];
        int64_t created_seq; /* creation order (list order) */
        json_t *spec;        /* owned, normalised */
        json_t *plan;        /* owned */
        char status[16];
        json_t *reason; /* owned, NULL or {"code", "detail", ...} */
        int64_t created_at, updated_at, finished_at;
        int current_wave;         /* -1: none yet */
        int64_t wave_finished_at; /* 0: the current wave has not ended */
        int budget_baseline;      /* failed hosts accepted by a resume */
        bool aborting;            /* abort asked: winding down */
        int64_t last_seq;         /* the newest event's seq */
};

/* One host inside a rollout. */
struct store_rhost {
        char name[STORE_NAME_MAX];
        int wave;
        char phase[16];
        char step[16]; /* "" (none), stage, prepare, reboot, finish, cancel, rollback */
        bool step_done;
        char op_id[STORE_OPID_MAX];
        int64_t step_at; /* when the step's intent was recorded */
        int attempts;
        char boot_id_before[STORE_BOOTID_MAX];
        char boot_id_after[STORE_BOOTID_MAX];
        char kernel[STORE_KERNEL_MAX];
        int64_t blackout_ms; /* -1: unknown */
        int64_t started_at, finished_at;
        int64_t updated_at; /* when the new boot was seen (finish timeout) */
        json_t *error;      /* owned, NULL or {"code", "detail"} */
        int64_t last_index; /* -1: unknown */
};

int store_open(const char *path, struct store **ret, char *err, size_t err_size);
struct store *store_close(struct store *s);
const char *store_errmsg(struct store *s);

int store_begin(struct store *s);
int store_commit(struct store *s);
void store_rollback(struct store *s);
uint64_t store_commits(struct store *s);

/* ---- hosts ---- */
int store_host_save(struct store *s, const struct store_host *h);
int store_host_delete(struct store *s, const char *name);
/* Every host, by name; cb gets a borrowed record (copy what you keep). */
int store_hosts_load(struct store *s, int (*cb)(void *ud, const struct store_host *h), void *ud);
void store_host_clear(struct store_host *h);

/* ---- rollouts ---- */
int store_rollout_save(struct store *s, const struct store_rollout *r);
int store_rhost_save(struct store *s, const char *rollout, const struct store_rhost *h);
/* Every rollout in creation order, then its hosts (in plan order). */
int store_rollouts_load(struct store *s, int (*rollout_cb)(void *ud, const struct store_rollout *r),
                        int (*rhost_cb)(void *ud, const char *rollout, const struct store_rhost *h),
                        void *ud);
int64_t store_rollout_next_seq(struct store *s);
void store_rollout_clear(struct store_rollout *r);
void store_rhost_clear(struct store_rhost *h);

/* ---- events ---- */
/* Append one event: data is the Event document without "seq" (added here). */
int store_event_append(struct store *s, const char *rollout, int64_t seq, int64_t time_ms,
                       const char *type, const json_t *data);
/* Events with seq > after, oldest first, at most max: a JSON array of Event documents. */
int store_events_get(struct store *s, const char *rollout, int64_t after, unsigned max,
                     json_t **ret);
