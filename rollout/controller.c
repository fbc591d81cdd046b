/*
 * controller.c: the thread-safe functions of controller.h. The HTTP threads
 * call them; every one takes c->lock, reads or changes the in-memory model
 * (engine.h) and, for a change, commits it to the store before it answers
 * (then wakes the engine with ac_wakeup()). GETs are answered from the model:
 * consistent (the engine changes it only under the same lock, committing
 * before it lets go) and fast (no SQL). Only the event log is read from the
 * store (controller_events).
 *
 * Why one SQLite connection under the model's lock rather than a second
 * read connection: every read the API needs is in the model already, and
 * the engine's commits are batched per pass, so the lock is held for one
 * fsync at most per pass.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "controller.h"
#include "engine.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "plan.h"

#define INVENTORY_MAX_BYTES (16u << 20)

static void problem(struct ctl_problem *p, int status, const char *code, const char *field,
                    const char *fmt, ...) _printf_(5, 6);

static void problem(struct ctl_problem *p, int status, const char *code, const char *field,
                    const char *fmt, ...)
{
        va_list ap;

        if (!p)
                return;
        memset(p, 0, sizeof(*p));
        p->status = status;
        snprintf(p->code, sizeof(p->code), "%s", code);
        if (field)
                snprintf(p->field, sizeof(p->field), "%s", field);
        va_start(ap, fmt);
        vsnprintf(p->detail, sizeof(p->detail), fmt, ap);
        va_end(ap);
}

static json_t *time_json(int64_t ms)
{
        char buf[RFC3339_MAX];
        if (ms <= 0)
                return json_null();
        return json_string(format_rfc3339_ms((uint64_t)ms * 1000, buf));
}

static json_t *str_or_null(const char *s)
{
        return s && *s ? json_string(s) : json_null();
}

/* ---- JSON views of the model ------------------------------------------------- */

static json_t *host_json(const struct host *h)
{
        const json_t *st = h->rec.state;
        const json_t *bo = json_object_get(json_object_get(st, "last_update"), "blackout_ms");
        const struct rhost *rh = h->active ? h->active : h->newest;
        json_t *o = json_object();

        json_object_set_new(o, "name", json_string(h->rec.name));
        json_object_set_new(o, "url", json_string(h->rec.url ? h->rec.url : ""));
        json_object_set_new(o, "labels",
                            h->rec.labels ? json_deep_copy(h->rec.labels) : json_object());
        json_object_set_new(o, "source", json_string(h->rec.from_api ? "api" : "inventory"));
        json_object_set_new(o, "reachable", json_boolean(h->rec.reachable));
        json_object_set_new(o, "last_seen", time_json(h->rec.last_seen));
        json_object_set_new(o, "state",
                            str_or_null(json_string_value(json_object_get(st, "state"))));
        json_t *idx = json_object_get(st, "index");
        json_object_set_new(o, "index", json_is_integer(idx) ? json_incref(idx) : json_null());
        json_object_set_new(o, "boot_id",
                            str_or_null(json_string_value(json_object_get(st, "boot_id"))));
        json_object_set_new(o, "kernel",
                            str_or_null(json_string_value(json_object_get(st, "kernel"))));
        json_object_set_new(o, "blackout_ms",
                            json_is_integer(bo) ? json_incref((json_t *)bo) : json_null());
        json_object_set_new(o, "rollout", rh ? json_string(rh->ro->rec.id) : json_null());
        json_object_set_new(o, "phase", rh ? json_string(phase_to_string(rh->phase)) : json_null());
        json_object_set_new(o, "error", str_or_null(h->rec.error));
        return o;
}

/*
 * The host as the controller sees it now (its fleet view, not the rollout's record): the
 * state and the kernel it runs, and whether the rollout's target kernel is staged there,
 * so that a failed host says what it runs and whether a retry would stage again. null when
 * the host left the inventory or was never seen.
 */
static json_t *rhost_now_json(const struct rhost *rh)
{
        const json_t *st = rh->host ? rh->host->rec.state : NULL;
        if (!json_is_object(st))
                return json_null();
        const char *want = json_string_value(json_object_get(
                json_object_get(json_object_get(rh->ro->rec.spec, "target"), "kernel"), "sha256"));
        const char *staged = json_string_value(json_object_get(
                json_object_get(json_object_get(st, "staged"), "kernel"), "sha256"));
        /* copies ("s?"), never the host's own JSON values: jansson objects are not shared
         * across threads (the answer is written after the lock is released) */
        return json_pack("{s:b, s:s?, s:s?, s:b}", "reachable", rh->host->rec.reachable, "state",
                         json_string_value(json_object_get(st, "state")), "kernel",
                         json_string_value(json_object_get(st, "kernel")), "target_staged",
                         want && staged && strcasecmp(want, staged) == 0);
}

static json_t *rhost_json(const struct rhost *rh)
{
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(rh->rec.name));
        json_object_set_new(o, "wave", json_integer(rh->rec.wave));
        json_object_set_new(o, "phase", json_string(phase_to_string(rh->phase)));
        json_object_set_new(o, "step", str_or_null(rh->rec.step));
        json_object_set_new(o, "attempts", json_integer(rh->rec.attempts));
        json_object_set_new(o, "boot_id_before", str_or_null(rh->rec.boot_id_before));
        json_object_set_new(o, "boot_id_after", str_or_null(rh->rec.boot_id_after));
        json_object_set_new(o, "kernel", str_or_null(rh->rec.kernel));
        json_object_set_new(o, "blackout_ms",
                            rh->rec.blackout_ms >= 0 ? json_integer(rh->rec.blackout_ms)
                                                     : json_null());
        json_object_set_new(o, "started_at", time_json(rh->rec.started_at));
        json_object_set_new(o, "finished_at", time_json(rh->rec.finished_at));
        json_object_set_new(o, "error",
                            rh->rec.error && phase_terminal(rh->phase)
                                    ? json_deep_copy(rh->rec.error)
                                    : json_null());
        json_object_set_new(o, "now", rhost_now_json(rh));
        return o;
}

static json_t *rollout_json(const struct rollout *ro, bool full)
{
        struct rollout_counts n;
        json_t *o = json_object();

        engine_count(ro, -1, &n);
        json_object_set_new(o, "id", json_string(ro->rec.id));
        json_object_set_new(o, "spec", json_deep_copy(ro->rec.spec));
        json_object_set_new(o, "status", json_string(rstatus_to_string(ro->status)));
        json_object_set_new(o, "created_at", time_json(ro->rec.created_at));
        json_object_set_new(o, "updated_at", time_json(ro->rec.updated_at));
        json_object_set_new(o, "finished_at", time_json(ro->rec.finished_at));
        json_object_set_new(o, "reason",
                            ro->rec.reason ? json_deep_copy(ro->rec.reason) : json_null());
        json_object_set_new(o, "current_wave",
                            ro->rec.current_wave >= 0 ? json_integer(ro->rec.current_wave)
                                                      : json_null());
        json_object_set_new(o, "waves", json_integer(ro->nwaves));
        unsigned in_progress = n.by_phase[PH_STAGING] + n.by_phase[PH_PREPARED] +
                               n.by_phase[PH_REBOOTING] + n.by_phase[PH_UPDATED] +
                               n.by_phase[PH_VERIFYING] + n.by_phase[PH_FINISHING];
        json_object_set_new(
                o, "counters",
                json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "total",
                          (json_int_t)ro->nhosts, "pending", (json_int_t)n.by_phase[PH_PENDING],
                          "in_progress", (json_int_t)in_progress, "unavailable",
                          (json_int_t)n.unavailable, "done", (json_int_t)n.by_phase[PH_DONE],
                          "failed", (json_int_t)n.by_phase[PH_FAILED], "cancelled",
                          (json_int_t)n.by_phase[PH_CANCELLED], "skipped",
                          (json_int_t)n.by_phase[PH_SKIPPED], "already_current",
                          (json_int_t)n.by_phase[PH_CURRENT]));
        if (full) {
                json_object_set_new(o, "plan", json_deep_copy(ro->rec.plan));
                json_t *hosts = json_array();
                for (size_t i = 0; i < ro->nhosts; i++)
                        json_array_append_new(hosts, rhost_json(&ro->hosts[i]));
                json_object_set_new(o, "hosts", hosts);
        }
        return o;
}

/* ---- model building ---------------------------------------------------------------- */

static int host_add(struct controller *c, struct host *h)
{
        void *n = realloc(c->hosts, (c->nhosts + 1) * sizeof(*c->hosts));
        if (!n)
                return -ENOMEM;
        c->hosts = n;
        c->hosts[c->nhosts++] = h;
        h->ctl = c;
        return 0;
}

static int rollout_add(struct controller *c, struct rollout *ro)
{
        void *n = realloc(c->rollouts, (c->nrollouts + 1) * sizeof(*c->rollouts));
        if (!n)
                return -ENOMEM;
        c->rollouts = n;
        c->rollouts[c->nrollouts++] = ro;
        ro->ctl = c;
        return 0;
}

static int load_host_cb(void *ud, const struct store_host *rec)
{
        struct controller *c = ud;
        struct host *h = calloc(1, sizeof(*h));
        if (!h)
                return -ENOMEM;
        h->rec = *rec;
        h->rec.url = strdup(rec->url);
        h->rec.labels = json_deep_copy(rec->labels);
        h->rec.state = rec->state ? json_deep_copy(rec->state) : NULL;
        h->rec.error = rec->error ? strdup(rec->error) : NULL;
        /* Until it answers again, the view does not claim it is reachable. */
        if (!h->rec.url || !h->rec.labels || host_add(c, h) < 0) {
                store_host_clear(&h->rec);
                free(h);
                return -ENOMEM;
        }
        return 0;
}

static int load_rollout_cb(void *ud, const struct store_rollout *rec)
{
        struct controller *c = ud;
        struct rollout *ro = calloc(1, sizeof(*ro));
        if (!ro)
                return -ENOMEM;
        ro->rec = *rec;
        ro->rec.spec = json_deep_copy(rec->spec);
        ro->rec.plan = json_deep_copy(rec->plan);
        ro->rec.reason = rec->reason ? json_deep_copy(rec->reason) : NULL;
        ro->status = rstatus_from_string(rec->status);
        if (rollout_add(c, ro) < 0) {
                engine_rollout_free(ro);
                return -ENOMEM;
        }
        return 0;
}

static int load_rhost_cb(void *ud, const char *rollout, const struct store_rhost *rec)
{
        struct controller *c = ud;
        struct rollout *ro = engine_rollout_find(c, rollout);
        if (!ro)
                return 0;
        void *n = realloc(ro->hosts, (ro->nhosts + 1) * sizeof(*ro->hosts));
        if (!n)
                return -ENOMEM;
        ro->hosts = n;
        struct rhost *rh = &ro->hosts[ro->nhosts++];
        memset(rh, 0, sizeof(*rh));
        rh->rec = *rec;
        rh->rec.error = rec->error ? json_deep_copy(rec->error) : NULL;
        return 0;
}

static bool name_valid(const char *s, size_t max)
{
        size_t n = strlen(s);
        if (n == 0 || n > max)
                return false;
        for (const char *p = s; *p; p++)
                if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                      (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' || *p == '-'))
                        return false;
        return true;
}

static bool labels_valid(const json_t *l)
{
        const char *k;
        const json_t *v;
        if (!json_is_object(l))
                return false;
        json_object_foreach ((json_t *)l, k, v)
                if (!json_is_string(v))
                        return false;
        return true;
}

static int load_inventory(struct controller *c, const char *path, char *err, size_t err_size)
{
        json_error_t je;
        json_t *doc = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
        const json_t *arr = json_object_get(doc, "hosts");
        size_t i;
        const json_t *e;
        int r = 0;

        if (!doc) {
                snprintf(err, err_size, "%s:%d: %s", path, je.line, je.text);
                return -EINVAL;
        }
        if (!json_is_array(arr)) {
                snprintf(err, err_size, "%s: no \"hosts\" array", path);
                json_decref(doc);
                return -EINVAL;
        }
        json_array_foreach (arr, i, e) {
                const char *name = json_string_value(json_object_get(e, "name"));
                const char *url = json_string_value(json_object_get(e, "url"));
                const json_t *labels = json_object_get(e, "labels");
                char why[320];
                if (!name || !name_valid(name, STORE_NAME_MAX - 1) ||
                    (labels && !labels_valid(labels))) {
                        snprintf(err, err_size, "%s: host %zu: needs a valid name and url", path,
                                 i);
                        json_decref(doc);
                        return -EINVAL;
                }
                if (host_url_check(&c->host_policy, url, why, sizeof(why)) < 0) {
                        snprintf(err, err_size, "%s: host %s: %s", path, name, why);
                        json_decref(doc);
                        return -EINVAL;
                }
        }
        r = engine_txn(c);
        /* Inventory hosts that left the file go (unless a rollout still drives them). */
        for (size_t k = 0; r >= 0 && k < c->nhosts;) {
                struct host *h = c->hosts[k];
                bool keep = h->rec.from_api || h->active;
                json_array_foreach (arr, i, e)
                        if (strcmp(json_string_value(json_object_get(e, "name")), h->rec.name) == 0)
                                keep = true;
                if (keep) {
                        k++;
                        continue;
                }
                r = store_host_delete(c->st, h->rec.name);
                for (size_t j = 0; j < c->nrollouts; j++)
                        for (size_t m = 0; m < c->rollouts[j]->nhosts; m++)
                                if (c->rollouts[j]->hosts[m].host == h)
                                        c->rollouts[j]->hosts[m].host = NULL;
                c->hosts[k] = c->hosts[--c->nhosts];
                engine_host_free(c, h);
        }
        json_array_foreach (arr, i, e) {
                if (r < 0)
                        break;
                const char *name = json_string_value(json_object_get(e, "name"));
                const char *url = json_string_value(json_object_get(e, "url"));
                const json_t *labels = json_object_get(e, "labels");
                struct host *h = engine_host_find(c, name);
                if (!h) {
                        h = calloc(1, sizeof(*h));
                        if (!h || host_add(c, h) < 0) {
                                free(h);
                                r = -ENOMEM;
                                break;
                        }
                        snprintf(h->rec.name, sizeof(h->rec.name), "%s", name);
                }
                if (h->rec.from_api)
                        continue; /* an API host of that name keeps its own definition */
                free(h->rec.url);
                h->rec.url = strdup(url);
                json_decref(h->rec.labels);
                h->rec.labels = labels ? json_deep_copy(labels) : json_object();
                h->dirty = true;
        }
        json_decref(doc);
        if (r >= 0)
                r = engine_commit(c);
        if (r < 0)
                snprintf(err, err_size, "%s: cannot store the inventory: %s", path, strerror(-r));
        return r;
}

/* ---- lifecycle -------------------------------------------------------------------- */

/*
 * One line per unfinished rollout at start-up, from the store (before any
 * agent was asked): where it resumes. Waves are numbered from 1, as luofleetctl
 * prints them. The current wave's hosts that have not ended are named with
 * their phase and, when one is recorded, their step: "done" when the store
 * says it completed (the agent's answer; for a reboot, the new boot seen),
 * "to confirm" when only its intent is stored (the engine reads the host's
 * state first, and sends the step again with the same operation id only if it
 * did not happen). At most RESUME_NAMES hosts are named: the line stays short
 * on big waves.
 */
#define RESUME_NAMES 8

static void log_resumed(const struct rollout *ro)
{
        char hosts[1024] = "";
        size_t len = 0;
        unsigned named = 0, unnamed = 0, ended = 0, later = 0;
        int wave = ro->rec.current_wave;

        for (size_t i = 0; i < ro->nhosts; i++) {
                const struct rhost *rh = &ro->hosts[i];
                char step[64] = "";
                int n;

                if (phase_terminal(rh->phase)) {
                        ended++;
                        continue;
                }
                if (wave < 0 || rh->rec.wave > wave) {
                        later++;
                        continue;
                }
                if (named >= RESUME_NAMES) {
                        unnamed++;
                        continue;
                }
                if (rh->step != STEP_NONE)
                        snprintf(step, sizeof(step), " (%s %s)", step_to_string(rh->step),
                                 rh->rec.step_done ? "done" : "to confirm");
                n = snprintf(hosts + len, sizeof(hosts) - len, "%s%s %s%s", named ? ", " : "",
                             rh->rec.name, phase_to_string(rh->phase), step);
                if (n < 0 || (size_t)n >= sizeof(hosts) - len) {
                        hosts[len] = '\0'; /* cut before this host: counted below */
                        unnamed++;
                        named = RESUME_NAMES;
                        continue;
                }
                len += (size_t)n;
                named++;
        }
        const char *reason = json_string_value(json_object_get(ro->rec.reason, "code"));
        char where[64];
        if (wave < 0)
                snprintf(where, sizeof(where), "before wave 1/%d", ro->nwaves);
        else
                snprintf(where, sizeof(where), "at wave %d/%d", wave + 1, ro->nwaves);
        char more[64] = "";
        if (unnamed)
                snprintf(more, sizeof(more), " and %u more", unnamed);
        log_info("Resuming rollout %s (%s%s%s%s) %s: %s%s%s%u of %zu hosts ended, %u in later "
                 "waves",
                 ro->rec.id, rstatus_to_string(ro->status), reason ? ": " : "",
                 reason ? reason : "", ro->rec.aborting ? ", aborting" : "", where, hosts, more,
                 named || unnamed ? "; " : "", ended, ro->nhosts, later);
}

static void controller_free(struct controller *c)
{
        if (!c)
                return;
        for (size_t i = 0; i < c->nrollouts; i++)
                engine_rollout_free(c->rollouts[i]);
        for (size_t i = 0; i < c->nhosts; i++)
                engine_host_free(c, c->hosts[i]);
        for (size_t i = 0; i < c->ngraveyard; i++)
                engine_host_free(c, c->graveyard[i]);
        free(c->rollouts);
        free(c->hosts);
        free(c->graveyard);
        free(c->sendq);
        c->ac = ac_free(c->ac);
        c->st = store_close(c->st);
        free(c->db_path);
        free(c->inventory_path);
        pthread_cond_destroy(&c->ev_cond);
        pthread_mutex_destroy(&c->lock);
        free(c);
}

int controller_start(const struct ctl_options *opts, struct controller **ret, char *err,
                     size_t err_size)
{
        struct controller *c = calloc(1, sizeof(*c));
        pthread_condattr_t ca;
        int r;

        if (!c) {
                snprintf(err, err_size, "out of memory");
                return -ENOMEM;
        }
        pthread_mutex_init(&c->lock, NULL);
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&c->ev_cond, &ca);
        pthread_condattr_destroy(&ca);
        snprintf(c->name, sizeof(c->name), "%s", opts->name && *opts->name ? opts->name : "lf");
        c->poll_wait_ms = opts->poll_wait_ms ? opts->poll_wait_ms : 30000;
        c->retry_min_ms = opts->retry_min_ms ? opts->retry_min_ms : 500;
        c->retry_max_ms = opts->retry_max_ms ? opts->retry_max_ms : 10000;
        if (c->retry_max_ms < c->retry_min_ms)
                c->retry_max_ms = c->retry_min_ms;
        c->time_offset_s = opts->time_offset_s;
        c->host_policy = opts->hosts;
        c->store_ok = true;
        srandom((unsigned)(now_real_usec() ^ (uint64_t)getpid()));

        r = store_open(opts->db_path ? opts->db_path : ":memory:", &c->st, err, err_size);
        if (r < 0)
                goto fail;
        r = store_hosts_load(c->st, load_host_cb, c);
        if (r >= 0)
                r = store_rollouts_load(c->st, load_rollout_cb, load_rhost_cb, c);
        if (r < 0) {
                snprintf(err, err_size, "cannot load the store: %s", store_errmsg(c->st));
                goto fail;
        }
        struct ac_options ao = {
                .tls = opts->agent,
                .connect_timeout_ms = opts->connect_timeout_ms,
                .request_timeout_ms = opts->request_timeout_ms,
                .max_connections = opts->max_connections,
        };
        r = ac_new(&ao, &c->ac, err, err_size);
        if (r < 0)
                goto fail;
        /* Link first (which hosts unfinished rollouts drive: the inventory keeps those),
         * load the inventory, then link again (hosts it added). */
        for (size_t i = 0; i < c->nrollouts; i++)
                engine_attach(c, c->rollouts[i], true);
        if (opts->inventory_path) {
                r = load_inventory(c, opts->inventory_path, err, err_size);
                if (r < 0)
                        goto fail;
                for (size_t i = 0; i < c->nrollouts; i++)
                        engine_attach(c, c->rollouts[i], true);
        }
        for (size_t i = 0; i < c->nrollouts; i++)
                if (!rstatus_finished(c->rollouts[i]->status))
                        log_resumed(c->rollouts[i]);
        atomic_store(&c->last_pass_ms, engine_now_mono_ms(c));
        r = -pthread_create(&c->thread, NULL, engine_thread, c);
        if (r < 0) {
                snprintf(err, err_size, "cannot start the engine thread: %s", strerror(-r));
                goto fail;
        }
        c->thread_started = true;
        *ret = c;
        return 0;
fail:
        controller_free(c);
        return r;
}

void controller_stop(struct controller *c)
{
        if (!c)
                return;
        if (c->thread_started) {
                atomic_store(&c->stop, true);
                ac_wakeup(c->ac);
                pthread_join(c->thread, NULL);
        }
        pthread_mutex_lock(&c->lock);
        (void)engine_commit(c);
        pthread_mutex_unlock(&c->lock);
        controller_free(c);
}

static void kick(struct controller *c)
{
        if (c->ac)
                ac_wakeup(c->ac);
}

/* ---- hosts ---------------------------------------------------------------------- */

json_t *controller_hosts(struct controller *c, const json_t *selector)
{
        json_t *arr = json_array();

        pthread_mutex_lock(&c->lock);
        for (size_t i = 0; arr && i < c->nhosts; i++)
                if (!selector || rollout_selector_match(selector, c->hosts[i]->rec.labels))
                        json_array_append_new(arr, host_json(c->hosts[i]));
        pthread_mutex_unlock(&c->lock);
        return arr;
}

int controller_host_get(struct controller *c, const char *name, json_t **ret)
{
        int r = -ENOENT;

        pthread_mutex_lock(&c->lock);
        struct host *h = engine_host_find(c, name);
        if (h) {
                *ret = host_json(h);
                r = *ret ? 0 : -ENOMEM;
        }
        pthread_mutex_unlock(&c->lock);
        return r;
}

int controller_host_put(struct controller *c, const char *name, const json_t *body, json_t **ret,
                        bool *created, struct ctl_problem *p)
{
        const char *key;
        const json_t *v;

        if (!name_valid(name, STORE_NAME_MAX - 1)) {
                problem(p, 400, "invalid-field", "name",
                        "a host name is 1 to 253 characters of A-Z a-z 0-9 . _ -");
                return -1;
        }
        if (!json_is_object(body)) {
                problem(p, 400, "invalid-field", "", "the body must be a JSON object");
                return -1;
        }
        json_object_foreach ((json_t *)body, key, v) {
                if (strcmp(key, "url") != 0 && strcmp(key, "labels") != 0 &&
                    strcmp(key, "name") != 0) {
                        problem(p, 400, "invalid-field", key, "unknown member \"%s\"", key);
                        return -1;
                }
        }
        const char *url = json_string_value(json_object_get(body, "url"));
        const json_t *labels = json_object_get(body, "labels");
        const char *bname = json_string_value(json_object_get(body, "name"));
        char why[320];
        if (host_url_check(&c->host_policy, url, why, sizeof(why)) < 0) {
                problem(p, 400, "invalid-field", "url", "%s", why);
                return -1;
        }
        if (labels && !labels_valid(labels)) {
                problem(p, 400, "invalid-field", "labels",
                        "labels must be an object of string values");
                return -1;
        }
        if (bname && strcmp(bname, name) != 0) {
                problem(p, 400, "invalid-field", "name", "the name differs from the path's");
                return -1;
        }

        pthread_mutex_lock(&c->lock);
        struct host *h = engine_host_find(c, name);
        bool is_new = !h;
        if (is_new) {
                h = calloc(1, sizeof(*h));
                if (!h || host_add(c, h) < 0) {
                        free(h);
                        pthread_mutex_unlock(&c->lock);
                        problem(p, 500, "internal-error", NULL, "out of memory");
                        return -1;
                }
                snprintf(h->rec.name, sizeof(h->rec.name), "%s", name);
                /* Link it to rollouts that name it (finished ones: for the record). */
                for (size_t i = 0; i < c->nrollouts; i++)
                        for (size_t j = 0; j < c->rollouts[i]->nhosts; j++)
                                if (strcmp(c->rollouts[i]->hosts[j].rec.name, name) == 0) {
                                        c->rollouts[i]->hosts[j].host = h;
                                        h->newest = &c->rollouts[i]->hosts[j];
                                }
        }
        bool url_changed = !h->rec.url || strcmp(h->rec.url, url) != 0;
        free(h->rec.url);
        h->rec.url = strdup(url);
        json_decref(h->rec.labels);
        h->rec.labels = labels ? json_deep_copy(labels) : json_object();
        h->rec.from_api = true;
        if (url_changed) {
                /* A new address: what we knew is about another endpoint. */
                h->rec.reachable = false;
                free(h->rec.error);
                h->rec.error = NULL;
        }
        h->refresh_at = 0;
        h->watch_at = 0;
        h->dirty = true;
        int r = engine_commit(c);
        if (r >= 0)
                *ret = host_json(h);
        pthread_mutex_unlock(&c->lock);
        if (r < 0) {
                problem(p, 500, "internal-error", NULL, "cannot store the host: %s", strerror(-r));
                return -1;
        }
        *created = is_new;
        kick(c);
        return 0;
}

int controller_host_delete(struct controller *c, const char *name, struct ctl_problem *p)
{
        pthread_mutex_lock(&c->lock);
        struct host *h = engine_host_find(c, name);
        if (!h) {
                pthread_mutex_unlock(&c->lock);
                problem(p, 404, "not-found", NULL, "no host %s", name);
                return -1;
        }
        if (h->active) {
                problem(p, 409, "host-in-rollout", NULL, "rollout %s still includes host %s",
                        h->active->ro->rec.id, name);
                pthread_mutex_unlock(&c->lock);
                return -1;
        }
        void *g = realloc(c->graveyard, (c->ngraveyard + 1) * sizeof(*c->graveyard));
        int r = g ? engine_txn(c) : -ENOMEM;
        if (g)
                c->graveyard = g;
        if (r >= 0)
                r = store_host_delete(c->st, name);
        if (r >= 0)
                r = engine_commit(c);
        else if (c->txn) {
                store_rollback(c->st);
                c->txn = false;
        }
        if (r >= 0) {
                for (size_t i = 0; i < c->nhosts; i++)
                        if (c->hosts[i] == h) {
                                c->hosts[i] = c->hosts[--c->nhosts];
                                break;
                        }
                for (size_t i = 0; i < c->nrollouts; i++)
                        for (size_t j = 0; j < c->rollouts[i]->nhosts; j++)
                                if (c->rollouts[i]->hosts[j].host == h)
                                        c->rollouts[i]->hosts[j].host = NULL;
                /* The engine frees it: only its thread may cancel the watch. */
                c->graveyard[c->ngraveyard++] = h;
        }
        pthread_mutex_unlock(&c->lock);
        if (r < 0) {
                problem(p, 500, "internal-error", NULL, "cannot delete the host: %s", strerror(-r));
                return -1;
        }
        kick(c);
        return 0;
}

/* ---- rollouts ------------------------------------------------------------------- */

static void make_id(struct controller *c, char buf[static STORE_ID_MAX])
{
        time_t t = (time_t)(engine_now_wall_ms(c) / 1000);
        struct tm tm;
        gmtime_r(&t, &tm);
        for (;;) {
                snprintf(buf, STORE_ID_MAX, "r-%04d%02d%02d-%02d%02d%02d-%04lx", tm.tm_year + 1900,
                         tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                         (unsigned long)(random() & 0xffff));
                if (!engine_rollout_find(c, buf))
                        return;
        }
}

/*
 * The plan's "already_current": [{"host", "kernel"}], the selected hosts that the controller
 * last saw at rest on the target's release (engine_host_current): the rollout leaves them
 * alone (phase already-current). Hosts not known to be current then are checked again when
 * their wave starts. Called with c->lock held.
 */
static int plan_already_current(struct controller *c, const json_t *spec, json_t *plan)
{
        json_t *list = json_array(), *wv, *hn;
        size_t i, j;

        if (!list || json_object_set_new(plan, "already_current", list) < 0)
                return -ENOMEM;
        json_array_foreach (json_object_get(plan, "waves"), i, wv)
                json_array_foreach (json_object_get(wv, "hosts"), j, hn) {
                        struct host *h = engine_host_find(c, json_string_value(hn));
                        if (!h || !h->rec.reachable || !engine_host_current(spec, h->rec.state))
                                continue;
                        /* copies: the plan outlives this lock, the host's state does not */
                        if (json_array_append_new(
                                    list,
                                    json_pack("{s:s, s:s}", "host", json_string_value(hn), "kernel",
                                              json_string_value(json_object_get(h->rec.state,
                                                                                "kernel")))) < 0)
                                return -ENOMEM;
                }
        return 0;
}

/*
 * "only_failed_of": ID: the hosts of rollout ID that were not updated (failed, cancelled,
 * skipped), intersected with "hosts" when given, become the spec's "hosts". 0, or -1 with
 * p (422 unknown-rollout, 422 no-hosts). Called with c->lock held.
 */
static int retry_hosts(struct controller *c, json_t *spec, struct ctl_problem *p)
{
        const char *prev = json_string_value(json_object_get(spec, "only_failed_of"));
        const json_t *given = json_object_get(spec, "hosts"), *v;
        json_t *names;
        size_t k;

        if (!prev)
                return 0;
        struct rollout *old = engine_rollout_find(c, prev);
        if (!old) {
                problem(p, 422, "unknown-rollout", "only_failed_of", "no rollout %s", prev);
                return -1;
        }
        names = json_array();
        if (!names) {
                problem(p, 500, "internal-error", NULL, "out of memory");
                return -1;
        }
        for (size_t i = 0; i < old->nhosts; i++) {
                const struct rhost *rh = &old->hosts[i];
                bool wanted = !json_is_array(given);
                if (rh->phase != PH_FAILED && rh->phase != PH_CANCELLED && rh->phase != PH_SKIPPED)
                        continue;
                json_array_foreach (given, k, v)
                        wanted = wanted || (json_is_string(v) &&
                                            strcmp(json_string_value(v), rh->rec.name) == 0);
                if (wanted && json_array_append_new(names, json_string(rh->rec.name)) < 0) {
                        json_decref(names);
                        problem(p, 500, "internal-error", NULL, "out of memory");
                        return -1;
                }
        }
        if (json_array_size(names) == 0) {
                json_decref(names);
                problem(p, 422, "no-hosts", "only_failed_of",
                        "rollout %s left no host to retry: none failed, was cancelled or "
                        "skipped%s",
                        prev, json_is_array(given) ? " among the hosts given" : "");
                return -1;
        }
        if (json_object_set_new(spec, "hosts", names) < 0) {
                problem(p, 500, "internal-error", NULL, "out of memory");
                return -1;
        }
        return 0;
}

/* The release a host of the plan's "already_current" runs, or NULL. */
static const char *current_kernel(const json_t *plan, const char *host)
{
        const json_t *e;
        size_t i;

        json_array_foreach (json_object_get(plan, "already_current"), i, e) {
                const char *n = json_string_value(json_object_get(e, "host"));
                if (n && strcmp(n, host) == 0)
                        return json_string_value(json_object_get(e, "kernel"));
        }
        return NULL;
}

int controller_rollout_create(struct controller *c, const json_t *spec, json_t **ret,
                              int *status_code, struct ctl_problem *p)
{
        json_t *norm = NULL, *plan = NULL, *inv = NULL;
        int result = -1;

        if (!json_is_object(spec)) {
                problem(p, 400, "invalid-field", "", "the rollout spec must be a JSON object");
                return -1;
        }
        bool dry_run = json_is_true(json_object_get(spec, "dry_run"));
        if (rollout_spec_normalize(spec, &norm, p) < 0)
                return -1;

        pthread_mutex_lock(&c->lock);
        if (retry_hosts(c, norm, p) < 0)
                goto out;
        inv = json_array();
        for (size_t i = 0; i < c->nhosts; i++)
                json_array_append_new(inv, json_pack("{s:s, s:O}", "name", c->hosts[i]->rec.name,
                                                     "labels", c->hosts[i]->rec.labels));
        if (rollout_plan(norm, inv, &plan, p) < 0)
                goto out;
        if (plan_already_current(c, norm, plan) < 0) {
                problem(p, 500, "internal-error", NULL, "out of memory");
                goto out;
        }
        if (dry_run) {
                *ret = TAKE_PTR(plan);
                *status_code = 200;
                result = 0;
                goto out;
        }

        char id[STORE_ID_MAX];
        const char *given = json_string_value(json_object_get(norm, "id"));
        if (given) {
                snprintf(id, sizeof(id), "%s", given);
                struct rollout *old = engine_rollout_find(c, id);
                if (old) {
                        if (json_equal(old->rec.spec, norm)) {
                                *ret = rollout_json(old, true);
                                *status_code = 200;
                                result = 0;
                        } else {
                                problem(p, 409, "rollout-exists", "id",
                                        "rollout %s exists with another spec", id);
                        }
                        goto out;
                }
        } else {
                make_id(c, id);
                json_object_set_new(norm, "id", json_string(id));
        }

        /* One unfinished rollout per host: two would fight over its state machine. */
        const json_t *waves = json_object_get(plan, "waves"), *wv, *hn;
        size_t i, j, total = 0;
        json_array_foreach (waves, i, wv)
                json_array_foreach (json_object_get(wv, "hosts"), j, hn) {
                        struct host *h = engine_host_find(c, json_string_value(hn));
                        total++;
                        if (h && h->active) {
                                problem(p, 409, "host-in-rollout", "hosts",
                                        "host %s is in the unfinished rollout %s", h->rec.name,
                                        h->active->ro->rec.id);
                                goto out;
                        }
                }

        struct rollout *ro = calloc(1, sizeof(*ro));
        if (!ro || !(ro->hosts = calloc(MAX(total, (size_t)1), sizeof(*ro->hosts)))) {
                free(ro);
                problem(p, 500, "internal-error", NULL, "out of memory");
                goto out;
        }
        int64_t now = engine_now_wall_ms(c);
        snprintf(ro->rec.id, sizeof(ro->rec.id), "%s", id);
        ro->rec.created_seq = store_rollout_next_seq(c->st);
        ro->rec.spec = json_incref(norm);
        ro->rec.plan = json_incref(plan);
        snprintf(ro->rec.status, sizeof(ro->rec.status), "pending");
        ro->status = RS_PENDING;
        ro->rec.created_at = ro->rec.updated_at = now;
        ro->rec.current_wave = -1;
        json_array_foreach (waves, i, wv) {
                const json_t *idx = json_object_get(wv, "index");
                json_array_foreach (json_object_get(wv, "hosts"), j, hn) {
                        struct rhost *rh = &ro->hosts[ro->nhosts++];
                        snprintf(rh->rec.name, sizeof(rh->rec.name), "%s", json_string_value(hn));
                        rh->rec.wave = json_is_integer(idx) ? (int)json_integer_value(idx) : (int)i;
                        snprintf(rh->rec.phase, sizeof(rh->rec.phase), "pending");
                        const char *run = current_kernel(plan, rh->rec.name);
                        if (run) {
                                snprintf(rh->rec.phase, sizeof(rh->rec.phase), "%s",
                                         phase_to_string(PH_CURRENT));
                                snprintf(rh->rec.kernel, sizeof(rh->rec.kernel), "%s", run);
                                rh->rec.finished_at = now;
                        }
                        rh->rec.blackout_ms = -1;
                        rh->rec.last_index = -1;
                        rh->dirty = true;
                }
        }
        ro->dirty = true;
        if (rollout_add(c, ro) < 0) {
                engine_rollout_free(ro);
                problem(p, 500, "internal-error", NULL, "out of memory");
                goto out;
        }
        engine_attach(c, ro, false);
        json_t *ev = json_object();
        json_object_set_new(ev, "status", json_string("pending"));
        int r = engine_txn(c);
        if (r >= 0)
                r = store_rollout_save(c->st, &ro->rec); /* the row first: events refer to it */
        if (r >= 0)
                r = engine_event(c, ro, "rollout-created", NULL, ev);
        else
                json_decref(ev);
        if (r >= 0)
                r = engine_commit(c);
        if (r < 0) {
                if (c->txn) {
                        store_rollback(c->st);
                        c->txn = false;
                }
                for (size_t k = 0; k < ro->nhosts; k++)
                        if (ro->hosts[k].host && ro->hosts[k].host->active == &ro->hosts[k])
                                ro->hosts[k].host->active = NULL;
                for (size_t k = 0; k < c->nhosts; k++)
                        if (c->hosts[k]->newest && c->hosts[k]->newest->ro == ro)
                                c->hosts[k]->newest = NULL;
                c->nrollouts--;
                engine_rollout_free(ro);
                problem(p, 500, "internal-error", NULL, "cannot store the rollout: %s",
                        strerror(-r));
                goto out;
        }
        *ret = rollout_json(ro, true);
        *status_code = 201;
        result = 0;
out:
        pthread_mutex_unlock(&c->lock);
        json_decref(inv);
        json_decref(plan);
        json_decref(norm);
        if (result == 0 && *status_code == 201)
                kick(c);
        return result;
}

json_t *controller_rollouts(struct controller *c)
{
        json_t *arr = json_array();

        pthread_mutex_lock(&c->lock);
        for (size_t i = 0; arr && i < c->nrollouts; i++)
                json_array_append_new(arr, rollout_json(c->rollouts[i], false));
        pthread_mutex_unlock(&c->lock);
        return arr;
}

int controller_rollout_get(struct controller *c, const char *id, json_t **ret,
                           struct ctl_problem *p)
{
        int r = -1;

        pthread_mutex_lock(&c->lock);
        struct rollout *ro = engine_rollout_find(c, id);
        if (ro) {
                *ret = rollout_json(ro, true);
                r = 0;
        } else {
                problem(p, 404, "not-found", NULL, "no rollout %s", id);
        }
        pthread_mutex_unlock(&c->lock);
        return r;
}

int controller_rollout_action(struct controller *c, const char *id, const char *action,
                              const char *reason, json_t **ret, struct ctl_problem *p)
{
        char detail[300];
        int r = 0;

        if (strcmp(action, "pause") != 0 && strcmp(action, "resume") != 0 &&
            strcmp(action, "abort") != 0) {
                problem(p, 400, "invalid-field", "action", "unknown action %s", action);
                return -1;
        }
        pthread_mutex_lock(&c->lock);
        struct rollout *ro = engine_rollout_find(c, id);
        if (!ro) {
                pthread_mutex_unlock(&c->lock);
                problem(p, 404, "not-found", NULL, "no rollout %s", id);
                return -1;
        }
        if (rstatus_finished(ro->status)) {
                problem(p, 409, "invalid-transition", NULL, "rollout %s is %s already", id,
                        rstatus_to_string(ro->status));
                pthread_mutex_unlock(&c->lock);
                return -1;
        }
        if (ro->rec.aborting && strcmp(action, "abort") != 0) {
                problem(p, 409, "invalid-transition", NULL, "rollout %s is being aborted", id);
                pthread_mutex_unlock(&c->lock);
                return -1;
        }
        if (strcmp(action, "pause") == 0) {
                snprintf(detail, sizeof(detail), "%s", reason ? reason : "paused by user");
                engine_set_status(c, ro, RS_PAUSED, "paused-by-user", detail, NULL);
        } else if (strcmp(action, "resume") == 0) {
                if (ro->status == RS_PAUSED) {
                        /* "Go on, accepted": the failures so far no longer count. */
                        struct rollout_counts n;
                        engine_count(ro, -1, &n);
                        ro->rec.budget_baseline = (int)n.failed;
                        ro->dirty = true;
                        engine_set_status(c, ro, RS_RUNNING, NULL, NULL, NULL);
                }
        } else if (!ro->rec.aborting) {
                ro->rec.aborting = true;
                ro->dirty = true;
                snprintf(detail, sizeof(detail), "%s", reason ? reason : "aborted by user");
                engine_set_status(c, ro, ro->status == RS_PENDING ? RS_RUNNING : ro->status,
                                  "aborted-by-user", detail, NULL);
        }
        r = engine_commit(c);
        if (r >= 0)
                *ret = rollout_json(ro, true);
        pthread_mutex_unlock(&c->lock);
        if (r < 0) {
                problem(p, 500, "internal-error", NULL, "cannot store the change: %s",
                        strerror(-r));
                return -1;
        }
        kick(c);
        return 0;
}

int controller_events(struct controller *c, const char *id, int64_t after, unsigned max,
                      unsigned timeout_ms, json_t **ret, bool *finished)
{
        struct timespec deadline;
        json_t *arr = NULL;
        int r;

        clock_gettime(CLOCK_MONOTONIC, &deadline);
        deadline.tv_sec += timeout_ms / 1000;
        deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) {
                deadline.tv_sec++;
                deadline.tv_nsec -= 1000000000L;
        }
        if (max == 0)
                max = 1000;
        pthread_mutex_lock(&c->lock);
        for (;;) {
                struct rollout *ro = engine_rollout_find(c, id);
                if (!ro) {
                        r = -ENOENT;
                        break;
                }
                if (ro->rec.last_seq > after || timeout_ms == 0 || rstatus_finished(ro->status)) {
                        r = store_events_get(c->st, id, after, max, &arr);
                        if (r >= 0) {
                                size_t n = json_array_size(arr);
                                int64_t last = n ? json_integer_value(json_object_get(
                                                           json_array_get(arr, n - 1), "seq"))
                                                 : after;
                                *finished =
                                        rstatus_finished(ro->status) && last >= ro->rec.last_seq;
                        }
                        break;
                }
                if (pthread_cond_timedwait(&c->ev_cond, &c->lock, &deadline) == ETIMEDOUT)
                        timeout_ms = 0;
        }
        pthread_mutex_unlock(&c->lock);
        if (r < 0)
                return r;
        *ret = arr;
        return 0;
}

/* ---- metrics, health ------------------------------------------------------------ */

int controller_metrics(struct controller *c, char **buf, size_t *len)
{
        char *mem = NULL;
        size_t mlen = 0;
        FILE *f = open_memstream(&mem, &mlen);

        if (!f)
                return -ENOMEM;
        fputs("# HELP luofleet_rollout_agent_requests_total Requests sent to agents.\n"
              "# TYPE luofleet_rollout_agent_requests_total counter\n",
              f);
        for (int k = 0; k < _AC_KIND_MAX; k++)
                fprintf(f, "luofleet_rollout_agent_requests_total{kind=\"%s\"} %" PRIu64 "\n",
                        ac_kind_to_string(k), ac_requests(c->ac, k));
        fprintf(f,
                "# HELP luofleet_rollout_agent_longpoll_renewals_total Long-polls of agents that "
                "ran out of wait with nothing new (renewed).\n"
                "# TYPE luofleet_rollout_agent_longpoll_renewals_total counter\n"
                "luofleet_rollout_agent_longpoll_renewals_total %" PRIu64 "\n",
                (uint64_t)atomic_load(&c->lp_renewals));
        fputs("# HELP luofleet_rollout_agent_errors_total Requests to agents that failed "
              "(no answer or 5xx).\n"
              "# TYPE luofleet_rollout_agent_errors_total counter\n",
              f);
        for (int k = 0; k < _AC_KIND_MAX; k++)
                fprintf(f, "luofleet_rollout_agent_errors_total{kind=\"%s\"} %" PRIu64 "\n",
                        ac_kind_to_string(k), ac_errors(c->ac, k));

        unsigned by_status[_RS_MAX] = { 0 }, by_phase[_PH_MAX] = { 0 };
        uint64_t commits;
        pthread_mutex_lock(&c->lock);
        for (size_t i = 0; i < c->nrollouts; i++) {
                struct rollout *ro = c->rollouts[i];
                by_status[ro->status]++;
                if (ro->status != RS_RUNNING && ro->status != RS_BLOCKED && ro->status != RS_PAUSED)
                        continue;
                for (size_t j = 0; j < ro->nhosts; j++)
                        by_phase[ro->hosts[j].phase]++;
        }
        commits = store_commits(c->st);
        pthread_mutex_unlock(&c->lock);
        fputs("# HELP luofleet_rollouts Rollouts by status.\n# TYPE luofleet_rollouts gauge\n", f);
        for (int s = 0; s < _RS_MAX; s++)
                fprintf(f, "luofleet_rollouts{status=\"%s\"} %u\n", rstatus_to_string(s),
                        by_status[s]);
        fputs("# HELP luofleet_rollout_hosts Hosts of unfinished rollouts by phase.\n"
              "# TYPE luofleet_rollout_hosts gauge\n",
              f);
        for (int ph = 0; ph < _PH_MAX; ph++)
                fprintf(f, "luofleet_rollout_hosts{phase=\"%s\"} %u\n", phase_to_string(ph),
                        by_phase[ph]);
        fprintf(f,
                "# HELP luofleet_rollout_store_commits_total Store transactions committed.\n"
                "# TYPE luofleet_rollout_store_commits_total counter\n"
                "luofleet_rollout_store_commits_total %" PRIu64 "\n",
                commits);
        if (fclose(f) != 0) {
                free(mem);
                return -ENOMEM;
        }
        char *nb = realloc(*buf, (*buf ? *len : 0) + mlen + 1);
        if (!nb) {
                free(mem);
                return -ENOMEM;
        }
        size_t off = *buf ? *len : 0;
        memcpy(nb + off, mem, mlen + 1);
        *buf = nb;
        *len = off + mlen;
        free(mem);
        return 0;
}

bool controller_healthy(struct controller *c, char *detail, size_t size)
{
        int64_t last = atomic_load(&c->last_pass_ms);
        int64_t age = engine_now_mono_ms(c) - last;
        bool store_ok;

        pthread_mutex_lock(&c->lock);
        store_ok = c->store_ok;
        pthread_mutex_unlock(&c->lock);
        if (age > 10000) {
                snprintf(detail, size, "the engine has not run for %" PRId64 " ms", age);
                return false;
        }
        if (!store_ok) {
                snprintf(detail, size, "the store cannot commit");
                return false;
        }
        snprintf(detail, size, "engine running, store writable");
        return true;
}
