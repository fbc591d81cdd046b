/*
 * store.c: the controller's durable store on SQLite (store.h). One
 * connection, WAL journal, synchronous=FULL (a commit is on the disk when
 * store_commit() returns: the engine records an action's intent before it
 * sends it), busy_timeout, the file created 0600. Prepared statements are
 * made once at open. Called under the controller's lock only.
 *
 * Schema version 1 (user_version):
 *   hosts(name PK, url, labels JSON, source 'inventory'|'api', state JSON,
 *         reachable, last_seen, error)
 *   rollouts(id PK, created_seq, spec JSON, plan JSON, status, reason JSON,
 *            created_at, updated_at, finished_at, current_wave,
 *            wave_finished_at, budget_baseline, aborting, last_seq)
 *   rollout_hosts(rollout, host, ord, wave, phase, step, step_done, op_id,
 *                 step_at, attempts, boot_id_before, boot_id_after, kernel,
 *                 blackout_ms, started_at, finished_at, updated_at,
 *                 error JSON, last_index; PK (rollout, host))
 *   events(rollout, seq, time, type, data JSON; PK (rollout, seq))
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "store.h"

enum {
        ST_HOST_SAVE,
        ST_HOST_DELETE,
        ST_HOSTS_LOAD,
        ST_ROLLOUT_SAVE,
        ST_RHOST_SAVE,
        ST_ROLLOUTS_LOAD,
        ST_RHOSTS_LOAD,
        ST_EVENT_APPEND,
        ST_EVENTS_GET,
        ST_NEXT_SEQ,
        ST_BEGIN,
        ST_COMMIT,
        ST_ROLLBACK,
        _ST_MAX,
};

static const char *const stmt_sql[_ST_MAX] = {
        [ST_HOST_SAVE] = "INSERT OR REPLACE INTO hosts(name, url, labels, source, state, reachable,"
                         " last_seen, error) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        [ST_HOST_DELETE] = "DELETE FROM hosts WHERE name = ?1",
        [ST_HOSTS_LOAD] = "SELECT name, url, labels, source, state, reachable, last_seen, error"
                          " FROM hosts ORDER BY name",
        [ST_ROLLOUT_SAVE] =
                "INSERT OR REPLACE INTO rollouts(id, created_seq, spec, plan, status, reason,"
                " created_at, updated_at, finished_at, current_wave, wave_finished_at,"
                " budget_baseline, aborting, last_seq)"
                " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        [ST_RHOST_SAVE] =
                "INSERT INTO rollout_hosts(rollout, host, ord, wave, phase, step, step_done,"
                " op_id, step_at, attempts, boot_id_before, boot_id_after, kernel, blackout_ms,"
                " started_at, finished_at, updated_at, error, last_index)"
                " VALUES(?1, ?2, (SELECT COUNT(*) FROM rollout_hosts WHERE rollout = ?1), ?3, ?4,"
                " ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)"
                " ON CONFLICT(rollout, host) DO UPDATE SET wave = ?3, phase = ?4, step = ?5,"
                " step_done = ?6, op_id = ?7, step_at = ?8, attempts = ?9, boot_id_before = ?10,"
                " boot_id_after = ?11, kernel = ?12, blackout_ms = ?13, started_at = ?14,"
                " finished_at = ?15, updated_at = ?16, error = ?17, last_index = ?18",
        [ST_ROLLOUTS_LOAD] = "SELECT id, created_seq, spec, plan, status, reason, created_at,"
                             " updated_at, finished_at, current_wave, wave_finished_at,"
                             " budget_baseline, aborting, last_seq FROM rollouts"
                             " ORDER BY created_seq",
        [ST_RHOSTS_LOAD] = "SELECT host, wave, phase, step, step_done, op_id, step_at, attempts,"
                           " boot_id_before, boot_id_after, kernel, blackout_ms, started_at,"
                           " finished_at, updated_at, error, last_index FROM rollout_hosts"
                           " WHERE rollout = ?1 ORDER BY ord",
        [ST_EVENT_APPEND] = "INSERT INTO events(rollout, seq, time, type, data)"
                            " VALUES(?1, ?2, ?3, ?4, ?5)",
        [ST_EVENTS_GET] = "SELECT seq, data FROM events WHERE rollout = ?1 AND seq > ?2"
                          " ORDER BY seq LIMIT ?3",
        [ST_NEXT_SEQ] = "SELECT COALESCE(MAX(created_seq), 0) + 1 FROM rollouts",
        [ST_BEGIN] = "BEGIN IMMEDIATE",
        [ST_COMMIT] = "COMMIT",
        [ST_ROLLBACK] = "ROLLBACK",
};

static const char schema_sql[] =
        "CREATE TABLE IF NOT EXISTS hosts("
        " name TEXT PRIMARY KEY, url TEXT NOT NULL, labels TEXT NOT NULL,"
        " source TEXT NOT NULL CHECK(source IN ('inventory', 'api')), state TEXT,"
        " reachable INTEGER NOT NULL DEFAULT 0, last_seen INTEGER, error TEXT);"
        "CREATE TABLE IF NOT EXISTS rollouts("
        " id TEXT PRIMARY KEY, created_seq INTEGER NOT NULL, spec TEXT NOT NULL,"
        " plan TEXT NOT NULL, status TEXT NOT NULL, reason TEXT, created_at INTEGER NOT NULL,"
        " updated_at INTEGER NOT NULL, finished_at INTEGER, current_wave INTEGER,"
        " wave_finished_at INTEGER, budget_baseline INTEGER NOT NULL DEFAULT 0,"
        " aborting INTEGER NOT NULL DEFAULT 0, last_seq INTEGER NOT NULL DEFAULT 0);"
        "CREATE TABLE IF NOT EXISTS rollout_hosts("
        " rollout TEXT NOT NULL REFERENCES rollouts(id), host TEXT NOT NULL,"
        " ord INTEGER NOT NULL, wave INTEGER NOT NULL, phase TEXT NOT NULL, step TEXT,"
        " step_done INTEGER NOT NULL DEFAULT 0, op_id TEXT, step_at INTEGER,"
        " attempts INTEGER NOT NULL DEFAULT 0, boot_id_before TEXT, boot_id_after TEXT,"
        " kernel TEXT, blackout_ms INTEGER, started_at INTEGER, finished_at INTEGER,"
        " updated_at INTEGER, error TEXT, last_index INTEGER, PRIMARY KEY(rollout, host));"
        "CREATE TABLE IF NOT EXISTS events("
        " rollout TEXT NOT NULL, seq INTEGER NOT NULL, time INTEGER NOT NULL,"
        " type TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY(rollout, seq));";

struct store {
        sqlite3 *db;
        sqlite3_stmt *stmt[_ST_MAX];
        uint64_t commits;
};

const char *store_errmsg(struct store *s)
{
        return s && s->db ? sqlite3_errmsg(s->db) : "no store";
}

struct store *store_close(struct store *s)
{
        if (!s)
                return NULL;
        for (size_t i = 0; i < _ST_MAX; i++)
                sqlite3_finalize(s->stmt[i]);
        sqlite3_close(s->db);
        free(s);
        return NULL;
}

static int exec_simple(struct store *s, const char *sql)
{
        return sqlite3_exec(s->db, sql, NULL, NULL, NULL) == SQLITE_OK ? 0 : -EIO;
}

int store_open(const char *path, struct store **ret, char *err, size_t err_size)
{
        struct store *s = calloc(1, sizeof(*s));
        bool memory = strcmp(path, ":memory:") == 0;
        int version = -1;

        if (!s)
                return -ENOMEM;
        if (!memory) {
                /* Create the file 0600 ourselves: SQLite would use the umask. */
                int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
                if (fd < 0) {
                        int r = negative_errno();
                        snprintf(err, err_size, "cannot open %s: %s", path, strerror(-r));
                        free(s);
                        return r;
                }
                (void)fchmod(fd, 0600);
                close(fd);
        }
        if (sqlite3_open_v2(path, &s->db,
                            SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                            NULL) != SQLITE_OK)
                goto fail;
        sqlite3_busy_timeout(s->db, 5000);
        if (exec_simple(s, memory ? "PRAGMA journal_mode=MEMORY" : "PRAGMA journal_mode=WAL") < 0 ||
            exec_simple(s, "PRAGMA synchronous=FULL") < 0 ||
            exec_simple(s, "PRAGMA foreign_keys=ON") < 0)
                goto fail;

        sqlite3_stmt *v;
        if (sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &v, NULL) != SQLITE_OK)
                goto fail;
        if (sqlite3_step(v) == SQLITE_ROW)
                version = sqlite3_column_int(v, 0);
        sqlite3_finalize(v);
        if (version > STORE_SCHEMA_VERSION) {
                snprintf(err, err_size, "%s: schema version %d is newer than this program's %d",
                         path, version, STORE_SCHEMA_VERSION);
                store_close(s);
                return -EPROTO;
        }
        if (version < STORE_SCHEMA_VERSION) {
                char sql[sizeof(schema_sql) + 96];
                int n = snprintf(sql, sizeof(sql),
                                 "BEGIN IMMEDIATE;%sPRAGMA user_version = %d;COMMIT;", schema_sql,
                                 STORE_SCHEMA_VERSION);
                if (n < 0 || (size_t)n >= sizeof(sql) || exec_simple(s, sql) < 0) {
                        (void)exec_simple(s, "ROLLBACK");
                        goto fail;
                }
        }
        for (size_t i = 0; i < _ST_MAX; i++)
                if (sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
                                       &s->stmt[i], NULL) != SQLITE_OK)
                        goto fail;
        *ret = s;
        return 0;
fail:
        snprintf(err, err_size, "%s: %s", path, s->db ? sqlite3_errmsg(s->db) : "cannot open");
        store_close(s);
        return -EIO;
}

static int run(struct store *s, sqlite3_stmt *st)
{
        int rc = sqlite3_step(st);
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : -EIO;
        (void)s;
}

int store_begin(struct store *s)
{
        return run(s, s->stmt[ST_BEGIN]);
}

int store_commit(struct store *s)
{
        int r = run(s, s->stmt[ST_COMMIT]);
        if (r >= 0)
                s->commits++;
        else
                store_rollback(s);
        return r;
}

void store_rollback(struct store *s)
{
        if (!sqlite3_get_autocommit(s->db))
                (void)run(s, s->stmt[ST_ROLLBACK]);
}

uint64_t store_commits(struct store *s)
{
        return s->commits;
}

/* ---- binding helpers ---- */

static int bind_text(sqlite3_stmt *st, int i, const char *v)
{
        if (!v || !*v)
                return sqlite3_bind_null(st, i);
        return sqlite3_bind_text(st, i, v, -1, SQLITE_TRANSIENT);
}

static int bind_json(sqlite3_stmt *st, int i, const json_t *v)
{
        if (!v || json_is_null(v))
                return sqlite3_bind_null(st, i);
        char *txt = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!txt)
                return SQLITE_NOMEM;
        return sqlite3_bind_text(st, i, txt, -1, free);
}

static int bind_time(sqlite3_stmt *st, int i, int64_t v)
{
        return v > 0 ? sqlite3_bind_int64(st, i, v) : sqlite3_bind_null(st, i);
}

static json_t *col_json(sqlite3_stmt *st, int i)
{
        const char *txt = (const char *)sqlite3_column_text(st, i);
        return txt ? json_loads(txt, JSON_DECODE_ANY, NULL) : NULL;
}

static void col_str(sqlite3_stmt *st, int i, char *buf, size_t size)
{
        const char *txt = (const char *)sqlite3_column_text(st, i);
        size_t n = txt ? strlen(txt) : 0;

        if (n >= size)
                n = size - 1;
        if (n)
                memcpy(buf, txt, n);
        buf[n] = 0;
}

static char *col_strdup(sqlite3_stmt *st, int i)
{
        const char *txt = (const char *)sqlite3_column_text(st, i);
        return txt ? strdup(txt) : NULL;
}

/* ---- hosts ---- */

int store_host_save(struct store *s, const struct store_host *h)
{
        sqlite3_stmt *st = s->stmt[ST_HOST_SAVE];

        if (bind_text(st, 1, h->name) || bind_text(st, 2, h->url ? h->url : "") ||
            (h->labels ? bind_json(st, 3, h->labels) : bind_text(st, 3, "{}")) ||
            bind_text(st, 4, h->from_api ? "api" : "inventory") || bind_json(st, 5, h->state) ||
            sqlite3_bind_int(st, 6, h->reachable) || bind_time(st, 7, h->last_seen) ||
            bind_text(st, 8, h->error)) {
                sqlite3_reset(st);
                sqlite3_clear_bindings(st);
                return -ENOMEM;
        }
        return run(s, st);
}

int store_host_delete(struct store *s, const char *name)
{
        sqlite3_stmt *st = s->stmt[ST_HOST_DELETE];

        if (bind_text(st, 1, name))
                return -ENOMEM;
        return run(s, st);
}

void store_host_clear(struct store_host *h)
{
        free(h->url);
        json_decref(h->labels);
        json_decref(h->state);
        free(h->error);
        h->url = NULL;
        h->labels = h->state = NULL;
        h->error = NULL;
}

int store_hosts_load(struct store *s, int (*cb)(void *ud, const struct store_host *h), void *ud)
{
        sqlite3_stmt *st = s->stmt[ST_HOSTS_LOAD];
        int rc, r = 0;

        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                struct store_host h = { 0 };
                const char *src = (const char *)sqlite3_column_text(st, 3);

                col_str(st, 0, h.name, sizeof(h.name));
                h.url = col_strdup(st, 1);
                h.labels = col_json(st, 2);
                h.from_api = src && strcmp(src, "api") == 0;
                h.state = col_json(st, 4);
                h.reachable = sqlite3_column_int(st, 5);
                h.last_seen = sqlite3_column_int64(st, 6);
                h.error = col_strdup(st, 7);
                if (!h.labels)
                        h.labels = json_object();
                r = h.url && h.labels ? cb(ud, &h) : -ENOMEM;
                store_host_clear(&h);
                if (r < 0)
                        break;
        }
        if (r >= 0 && rc != SQLITE_DONE)
                r = -EIO;
        sqlite3_reset(st);
        return r;
}

/* ---- rollouts ---- */

int store_rollout_save(struct store *s, const struct store_rollout *r)
{
        sqlite3_stmt *st = s->stmt[ST_ROLLOUT_SAVE];

        if (bind_text(st, 1, r->id) || sqlite3_bind_int64(st, 2, r->created_seq) ||
            bind_json(st, 3, r->spec) || bind_json(st, 4, r->plan) || bind_text(st, 5, r->status) ||
            bind_json(st, 6, r->reason) || sqlite3_bind_int64(st, 7, r->created_at) ||
            sqlite3_bind_int64(st, 8, r->updated_at) || bind_time(st, 9, r->finished_at) ||
            (r->current_wave >= 0 ? sqlite3_bind_int(st, 10, r->current_wave)
                                  : sqlite3_bind_null(st, 10)) ||
            bind_time(st, 11, r->wave_finished_at) ||
            sqlite3_bind_int(st, 12, r->budget_baseline) || sqlite3_bind_int(st, 13, r->aborting) ||
            sqlite3_bind_int64(st, 14, r->last_seq)) {
                sqlite3_reset(st);
                sqlite3_clear_bindings(st);
                return -ENOMEM;
        }
        return run(s, st);
}

int store_rhost_save(struct store *s, const char *rollout, const struct store_rhost *h)
{
        sqlite3_stmt *st = s->stmt[ST_RHOST_SAVE];

        if (bind_text(st, 1, rollout) || bind_text(st, 2, h->name) ||
            sqlite3_bind_int(st, 3, h->wave) || bind_text(st, 4, h->phase) ||
            bind_text(st, 5, h->step) || sqlite3_bind_int(st, 6, h->step_done) ||
            bind_text(st, 7, h->op_id) || bind_time(st, 8, h->step_at) ||
            sqlite3_bind_int(st, 9, h->attempts) || bind_text(st, 10, h->boot_id_before) ||
            bind_text(st, 11, h->boot_id_after) || bind_text(st, 12, h->kernel) ||
            (h->blackout_ms >= 0 ? sqlite3_bind_int64(st, 13, h->blackout_ms)
                                 : sqlite3_bind_null(st, 13)) ||
            bind_time(st, 14, h->started_at) || bind_time(st, 15, h->finished_at) ||
            bind_time(st, 16, h->updated_at) || bind_json(st, 17, h->error) ||
            (h->last_index >= 0 ? sqlite3_bind_int64(st, 18, h->last_index)
                                : sqlite3_bind_null(st, 18))) {
                sqlite3_reset(st);
                sqlite3_clear_bindings(st);
                return -ENOMEM;
        }
        return run(s, st);
}

void store_rollout_clear(struct store_rollout *r)
{
        json_decref(r->spec);
        json_decref(r->plan);
        json_decref(r->reason);
        r->spec = r->plan = r->reason = NULL;
}

void store_rhost_clear(struct store_rhost *h)
{
        json_decref(h->error);
        h->error = NULL;
}

static int load_rhosts(struct store *s, const char *rollout,
                       int (*rhost_cb)(void *ud, const char *rollout, const struct store_rhost *h),
                       void *ud)
{
        sqlite3_stmt *st = s->stmt[ST_RHOSTS_LOAD];
        int rc, r = 0;

        if (bind_text(st, 1, rollout))
                return -ENOMEM;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                struct store_rhost h = { 0 };

                col_str(st, 0, h.name, sizeof(h.name));
                h.wave = sqlite3_column_int(st, 1);
                col_str(st, 2, h.phase, sizeof(h.phase));
                col_str(st, 3, h.step, sizeof(h.step));
                h.step_done = sqlite3_column_int(st, 4);
                col_str(st, 5, h.op_id, sizeof(h.op_id));
                h.step_at = sqlite3_column_int64(st, 6);
                h.attempts = sqlite3_column_int(st, 7);
                col_str(st, 8, h.boot_id_before, sizeof(h.boot_id_before));
                col_str(st, 9, h.boot_id_after, sizeof(h.boot_id_after));
                col_str(st, 10, h.kernel, sizeof(h.kernel));
                h.blackout_ms = sqlite3_column_type(st, 11) == SQLITE_NULL
                                        ? -1
                                        : sqlite3_column_int64(st, 11);
                h.started_at = sqlite3_column_int64(st, 12);
                h.finished_at = sqlite3_column_int64(st, 13);
                h.updated_at = sqlite3_column_int64(st, 14);
                h.error = col_json(st, 15);
                h.last_index = sqlite3_column_type(st, 16) == SQLITE_NULL
                                       ? -1
                                       : sqlite3_column_int64(st, 16);
                r = rhost_cb(ud, rollout, &h);
                store_rhost_clear(&h);
                if (r < 0)
                        break;
        }
        if (r >= 0 && rc != SQLITE_DONE)
                r = -EIO;
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        return r;
}

int store_rollouts_load(struct store *s, int (*rollout_cb)(void *ud, const struct store_rollout *r),
                        int (*rhost_cb)(void *ud, const char *rollout, const struct store_rhost *h),
                        void *ud)
{
        sqlite3_stmt *st = s->stmt[ST_ROLLOUTS_LOAD];
        int rc, r = 0;
        /* Collect the ids first: the host statement cannot run while this one is open
         * on the same rows without keeping it stepping; simpler to finish it. */
        char(*ids)[STORE_ID_MAX] = NULL;
        size_t n = 0;

        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                struct store_rollout ro = { 0 };

                col_str(st, 0, ro.id, sizeof(ro.id));
                ro.created_seq = sqlite3_column_int64(st, 1);
                ro.spec = col_json(st, 2);
                ro.plan = col_json(st, 3);
                col_str(st, 4, ro.status, sizeof(ro.status));
                ro.reason = col_json(st, 5);
                ro.created_at = sqlite3_column_int64(st, 6);
                ro.updated_at = sqlite3_column_int64(st, 7);
                ro.finished_at = sqlite3_column_int64(st, 8);
                ro.current_wave =
                        sqlite3_column_type(st, 9) == SQLITE_NULL ? -1 : sqlite3_column_int(st, 9);
                ro.wave_finished_at = sqlite3_column_int64(st, 10);
                ro.budget_baseline = sqlite3_column_int(st, 11);
                ro.aborting = sqlite3_column_int(st, 12);
                ro.last_seq = sqlite3_column_int64(st, 13);
                if (!ro.spec || !ro.plan) {
                        store_rollout_clear(&ro);
                        r = -EBADMSG;
                        break;
                }
                void *nids = realloc(ids, (n + 1) * sizeof(*ids));
                if (!nids) {
                        store_rollout_clear(&ro);
                        r = -ENOMEM;
                        break;
                }
                ids = nids;
                memcpy(ids[n++], ro.id, STORE_ID_MAX);
                r = rollout_cb(ud, &ro);
                store_rollout_clear(&ro);
                if (r < 0)
                        break;
        }
        if (r >= 0 && rc != SQLITE_DONE)
                r = -EIO;
        sqlite3_reset(st);
        for (size_t i = 0; r >= 0 && i < n; i++)
                r = load_rhosts(s, ids[i], rhost_cb, ud);
        free(ids);
        return r;
}

int64_t store_rollout_next_seq(struct store *s)
{
        sqlite3_stmt *st = s->stmt[ST_NEXT_SEQ];
        int64_t v = 1;

        if (sqlite3_step(st) == SQLITE_ROW)
                v = sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
        return v;
}

/* ---- events ---- */

int store_event_append(struct store *s, const char *rollout, int64_t seq, int64_t time_ms,
                       const char *type, const json_t *data)
{
        sqlite3_stmt *st = s->stmt[ST_EVENT_APPEND];

        if (bind_text(st, 1, rollout) || sqlite3_bind_int64(st, 2, seq) ||
            sqlite3_bind_int64(st, 3, time_ms) || bind_text(st, 4, type) ||
            bind_json(st, 5, data)) {
                sqlite3_reset(st);
                sqlite3_clear_bindings(st);
                return -ENOMEM;
        }
        return run(s, st);
}

int store_events_get(struct store *s, const char *rollout, int64_t after, unsigned max,
                     json_t **ret)
{
        sqlite3_stmt *st = s->stmt[ST_EVENTS_GET];
        json_t *arr = json_array();
        int rc;

        if (!arr)
                return -ENOMEM;
        if (bind_text(st, 1, rollout) || sqlite3_bind_int64(st, 2, after) ||
            sqlite3_bind_int64(st, 3, max)) {
                sqlite3_reset(st);
                json_decref(arr);
                return -ENOMEM;
        }
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                json_t *ev = col_json(st, 1);
                if (!json_is_object(ev)) {
                        json_decref(ev);
                        continue;
                }
                json_object_set_new(ev, "seq", json_integer(sqlite3_column_int64(st, 0)));
                json_array_append_new(arr, ev);
        }
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        if (rc != SQLITE_DONE) {
                json_decref(arr);
                return -EIO;
        }
        *ret = arr;
        return 0;
}
