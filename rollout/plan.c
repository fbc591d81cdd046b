/*
 * plan.c: RolloutSpec validation and defaulting, Count and Duration values,
 * and the cutting of the selected hosts into waves (plan.h). Pure functions:
 * no I/O, no clock, no global state; called from the HTTP threads (create,
 * dry_run) and the engine thread alike. Every input is hostile: nothing here
 * trusts a type, a length or a range it has not checked, and a string with
 * an embedded NUL is refused rather than silently cut.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "plan.h"
#include "window.h"

/* Hard limits on what a client can make us allocate or loop over. */
#define COUNT_INT_MAX 1000000
#define SELECTOR_MAX 64
#define SELECTOR_VALUE_MAX 255
#define HOSTS_MAX 100000
#define TARGET_STRING_MAX 4095
#define DURATION_DAY_MS (24LL * 3600 * 1000)

/* The plan's time estimate per round (see plan.h). */
#define EST_ROUND_S (5 + 2 + 15 + 2)

static const struct {
        const char *name;
        int64_t def_ms;
} timeouts[] = {
        { "stage", 10 * 60 * 1000 },
        { "prepare", 2 * 60 * 1000 },
        { "reboot", 10 * 60 * 1000 },
        { "finish", 2 * 60 * 1000 },
};

/* A member name without an embedded NUL (jansson allows them, strcmp would
 * see only the part before it). k comes from json_object_foreach. */
static bool key_plain(const char *k)
{
        return strlen(k) == json_object_iter_key_len(json_object_key_to_iter(k));
}

/* A member path for an error: cut when too long (a human reads it), never overflowed. */
_printf_(3, 4) static void field_fmt(char *buf, size_t size, const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        (void)vsnprintf(buf, size, fmt, ap);
        va_end(ap);
}

_printf_(5, 6) static int problem(struct ctl_problem *p, int status, const char *code,
                                  const char *field, const char *fmt, ...)
{
        va_list ap;

        if (!p)
                return -1;
        p->status = status;
        /* Truncation is acceptable in these human-facing buffers (a long
         * member name is cut, never overflowed). */
        (void)snprintf(p->code, sizeof(p->code), "%s", code);
        (void)snprintf(p->field, sizeof(p->field), "%s", field ? field : "");
        va_start(ap, fmt);
        (void)vsnprintf(p->detail, sizeof(p->detail), fmt, ap);
        va_end(ap);
        return -1;
}

#define invalid(p, field, ...) problem(p, 400, "invalid-field", field, __VA_ARGS__)

/* A JSON string without embedded NUL, 1..max bytes; NULL otherwise. */
static const char *plain_string(const json_t *v, size_t max)
{
        if (!json_is_string(v))
                return NULL;
        const char *s = json_string_value(v);
        size_t n = json_string_length(v);
        if (n == 0 || n > max || strlen(s) != n)
                return NULL;
        return s;
}

/* Every byte of s in [A-Za-z0-9] or extra, length 1..max. */
static bool name_ok(const char *s, size_t max, const char *extra)
{
        size_t n = 0;

        if (!s)
                return false;
        for (; s[n]; n++) {
                char c = s[n];
                if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      strchr(extra, c)))
                        return false;
                if (n >= max)
                        return false;
        }
        return n > 0;
}

static bool id_ok(const json_t *v)
{
        return name_ok(plain_string(v, ROLLOUT_ID_MAX), ROLLOUT_ID_MAX, "._-");
}

/* ---- Count and Duration ------------------------------------------------ */

/* A Count's syntax: 0 or "N%" with 0 <= N <= 100; the number (and percent flag). */
static int count_parse(const json_t *count, unsigned *ret_n, bool *ret_pct)
{
        if (json_is_integer(count)) {
                json_int_t v = json_integer_value(count);
                if (v < 0 || v > COUNT_INT_MAX)
                        return -EINVAL;
                *ret_n = (unsigned)v;
                *ret_pct = false;
                return 0;
        }
        const char *s = plain_string(count, 4);
        if (!s)
                return -EINVAL;
        unsigned n = 0;
        size_t i = 0;
        for (; s[i] >= '0' && s[i] <= '9'; i++)
                n = n * 10 + (unsigned)(s[i] - '0'); /* at most 3 digits: no overflow */
        if (i == 0 || s[i] != '%' || s[i + 1] != 0 || n > 100)
                return -EINVAL;
        *ret_n = n;
        *ret_pct = true;
        return 0;
}

int rollout_count_resolve(const json_t *count, unsigned total, unsigned *ret)
{
        unsigned n;
        bool pct;
        int r = count_parse(count, &n, &pct);

        if (r < 0)
                return r;
        if (pct) {
                uint64_t v = ((uint64_t)n * total + 99) / 100;
                if (n > 0 && total > 0 && v == 0)
                        v = 1;
                n = (unsigned)v;
        }
        *ret = n;
        return 0;
}

int rollout_duration_parse(const json_t *v, int64_t *ret_ms)
{
        uint64_t ms;

        if (json_is_integer(v)) {
                json_int_t s = json_integer_value(v);
                if (s < 0 || s > INT64_MAX / 1000)
                        return -EINVAL;
                *ret_ms = (int64_t)s * 1000;
                return 0;
        }
        /* the one grammar of every luofleet program (luofleet/util.h parse_duration_ms) */
        const char *s = plain_string(v, 32);
        if (!s || parse_duration_ms(s, INT64_MAX, &ms) < 0)
                return -EINVAL;
        *ret_ms = (int64_t)ms;
        return 0;
}

/* ---- selector ----------------------------------------------------------- */

bool rollout_selector_match(const json_t *selector, const json_t *labels)
{
        const char *k;
        json_t *v;

        if (!selector || !json_is_object(selector) || json_object_size(selector) == 0)
                return true;
        if (!json_is_object(labels))
                return false;
        json_object_foreach ((json_t *)selector, k, v) {
                json_t *l = json_object_get(labels, k);
                if (!json_is_string(l) || !json_is_string(v) || !json_equal(l, v))
                        return false;
        }
        return true;
}

/* ---- spec validation ------------------------------------------------------ */

static int check_stage_file(const json_t *f, const char *field, struct ctl_problem *p)
{
        char sub[64];
        const char *k;
        json_t *v;

        if (!json_is_object(f))
                return invalid(p, field, "%s must be an object with url or path, and sha256",
                               field);
        json_object_foreach ((json_t *)f, k, v) {
                if (!key_plain(k) ||
                    (strcmp(k, "url") != 0 && strcmp(k, "path") != 0 && strcmp(k, "sha256") != 0)) {
                        field_fmt(sub, sizeof(sub), "%s.%s", field, k);
                        return invalid(p, sub, "unknown member");
                }
        }
        const json_t *url = json_object_get(f, "url"), *path = json_object_get(f, "path");
        if (!!url == !!path)
                return invalid(p, field, "%s needs exactly one of url and path", field);
        field_fmt(sub, sizeof(sub), "%s.%s", field, url ? "url" : "path");
        if (!plain_string(url ? url : path, TARGET_STRING_MAX))
                return invalid(p, sub, "must be a non-empty string of at most %d bytes",
                               TARGET_STRING_MAX);
        field_fmt(sub, sizeof(sub), "%s.sha256", field);
        const json_t *sha = json_object_get(f, "sha256");
        if (!sha)
                return problem(p, 400, "missing-field", sub, "%s is required", sub);
        const char *h = plain_string(sha, 64);
        bool ok = h && strlen(h) == 64;
        for (size_t i = 0; ok && i < 64; i++)
                ok = (h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f');
        if (!ok)
                return invalid(p, sub, "must be 64 lower-case hexadecimal digits");
        return 0;
}

static int check_target(const json_t *t, struct ctl_problem *p)
{
        const char *k;
        json_t *v;

        if (!t)
                return problem(p, 400, "missing-field", "target", "target is required");
        if (!json_is_object(t))
                return invalid(p, "target", "target must be an object");
        json_object_foreach ((json_t *)t, k, v) {
                char sub[64];
                field_fmt(sub, sizeof(sub), "target.%s", k);
                if (!key_plain(k))
                        return invalid(p, sub, "unknown member");
                if (strcmp(k, "kernel") == 0 || strcmp(k, "initrd") == 0) {
                        if (check_stage_file(v, sub, p) < 0)
                                return -1;
                } else if (strcmp(k, "cmdline") == 0) {
                        if (!json_is_string(v) || json_string_length(v) > 2047 ||
                            strlen(json_string_value(v)) != json_string_length(v))
                                return invalid(p, sub, "must be a string of at most 2047 bytes");
                } else if (strcmp(k, "release") == 0) {
                        if (!plain_string(v, 127))
                                return invalid(p, sub, "must be a string of 1 to 127 bytes");
                } else if (strcmp(k, "signature") == 0) {
                        /* Passed through: the agent checks it against its trusted keys. */
                        if (!json_is_object(v))
                                return invalid(p, sub, "must be an object");
                } else {
                        /* The agent refuses unknown members (and operation_id is ours):
                         * better to say so now than to fail every host at stage time. */
                        return invalid(p, sub, "unknown member");
                }
        }
        if (!json_object_get(t, "kernel"))
                return problem(p, 400, "missing-field", "target.kernel",
                               "target.kernel is required");
        return 0;
}

static int check_selector(const json_t *s, struct ctl_problem *p)
{
        const char *k;
        json_t *v;

        if (!json_is_object(s))
                return invalid(p, "selector", "selector must be an object of label values");
        if (json_object_size(s) > SELECTOR_MAX)
                return invalid(p, "selector", "at most %d labels", SELECTOR_MAX);
        json_object_foreach ((json_t *)s, k, v) {
                char sub[64];
                field_fmt(sub, sizeof(sub), "selector.%s", k);
                if (!key_plain(k) || !name_ok(k, 63, "._/-"))
                        return invalid(p, "selector",
                                       "label keys are 1 to 63 characters of [A-Za-z0-9._/-]");
                if (!json_is_string(v) || json_string_length(v) > SELECTOR_VALUE_MAX ||
                    strlen(json_string_value(v)) != json_string_length(v))
                        return invalid(p, sub, "label values are strings of at most %d bytes",
                                       SELECTOR_VALUE_MAX);
        }
        return 0;
}

static int check_hosts(const json_t *h, struct ctl_problem *p)
{
        size_t i;
        json_t *v;

        if (!json_is_array(h))
                return invalid(p, "hosts", "hosts must be an array of host names");
        if (json_array_size(h) > HOSTS_MAX)
                return invalid(p, "hosts", "at most %d hosts", HOSTS_MAX);
        json_t *seen = json_object();
        if (!seen)
                return problem(p, 500, "internal-error", NULL, "out of memory");
        json_array_foreach (h, i, v) {
                char sub[64];
                field_fmt(sub, sizeof(sub), "hosts[%zu]", i);
                const char *n = plain_string(v, 64);
                if (!name_ok(n, 64, "._-")) {
                        json_decref(seen);
                        return invalid(p, sub,
                                       "host names are 1 to 64 characters of [A-Za-z0-9._-]");
                }
                if (json_object_get(seen, n)) {
                        json_decref(seen);
                        return invalid(p, sub, "host %s is listed twice", n);
                }
                if (json_object_set_new(seen, n, json_true()) < 0) {
                        json_decref(seen);
                        return problem(p, 500, "internal-error", NULL, "out of memory");
                }
        }
        json_decref(seen);
        return 0;
}

static int duration_in(const json_t *v, const char *field, int64_t min_ms, int64_t max_ms,
                       int64_t *ret_ms, struct ctl_problem *p)
{
        int64_t ms;

        if (rollout_duration_parse(v, &ms) < 0)
                return invalid(p, field,
                               "a duration is \"250ms\", \"30s\", \"5m\", \"2h\", \"1h30m\" or "
                               "an integer of seconds");
        if (ms < min_ms || ms > max_ms)
                return invalid(p, field, "must be between %" PRId64 " ms and %" PRId64 " ms",
                               min_ms, max_ms);
        *ret_ms = ms;
        return 0;
}

/* Sets the normalised strategy object into out. */
/*
 * A Duration member NAME, or its normalised form NAME_ms (an integer of
 * milliseconds, as GET answers it), so that a stored spec can be posted
 * again as it is. Not both. *present tells whether either was given.
 */
static int duration_member(const json_t *obj, const char *name, const char *prefix, int64_t min_ms,
                           int64_t max_ms, int64_t *ret_ms, struct ctl_problem *p)
{
        char key[32], field[64];
        const json_t *d = obj ? json_object_get(obj, name) : NULL;

        (void)snprintf(key, sizeof(key), "%s_ms", name);
        const json_t *m = obj ? json_object_get(obj, key) : NULL;
        if (d && m) {
                field_fmt(field, sizeof(field), "%s.%s", prefix, key);
                return invalid(p, field, "give %s or %s, not both", name, key);
        }
        if (d) {
                field_fmt(field, sizeof(field), "%s.%s", prefix, name);
                return duration_in(d, field, min_ms, max_ms, ret_ms, p);
        }
        if (m) {
                field_fmt(field, sizeof(field), "%s.%s", prefix, key);
                if (!json_is_integer(m) || json_integer_value(m) < min_ms ||
                    json_integer_value(m) > max_ms)
                        return invalid(p, field, "an integer of milliseconds %" PRId64 "..%" PRId64,
                                       min_ms, max_ms);
                *ret_ms = json_integer_value(m);
        }
        return 0;
}

static int check_strategy(const json_t *s, json_t *out, struct ctl_problem *p)
{
        static const char *const counts[] = { "canary", "batch", "max_unavailable",
                                              "max_failures" };
        const char *k;
        json_t *v;

        if (s && !json_is_object(s))
                return invalid(p, "strategy", "strategy must be an object");
        json_object_foreach ((json_t *)s, k, v) {
                bool known = key_plain(k) && (strcmp(k, "mode") == 0 || strcmp(k, "soak") == 0 ||
                                              strcmp(k, "soak_ms") == 0);
                for (size_t i = 0; i < ELEMENTSOF(counts); i++)
                        known = known || (key_plain(k) && strcmp(k, counts[i]) == 0);
                if (!known) {
                        char sub[64];
                        field_fmt(sub, sizeof(sub), "strategy.%s", k);
                        return invalid(p, sub, "unknown member");
                }
        }
        const json_t *mode = s ? json_object_get(s, "mode") : NULL;
        const char *m = "rolling";
        if (mode) {
                m = plain_string(mode, 16);
                if (!m || (strcmp(m, "rolling") != 0 && strcmp(m, "two-phase") != 0))
                        return invalid(p, "strategy.mode", "mode is \"rolling\" or \"two-phase\"");
        }
        json_t *st = json_object();
        if (!st || json_object_set_new(out, "strategy", st) < 0)
                return problem(p, 500, "internal-error", NULL, "out of memory");
        if (json_object_set_new(st, "mode", json_string(m)) < 0)
                return problem(p, 500, "internal-error", NULL, "out of memory");
        for (size_t i = 0; i < ELEMENTSOF(counts); i++) {
                char sub[64];
                const json_t *c = s ? json_object_get(s, counts[i]) : NULL;
                json_t *val;
                unsigned n;
                bool pct;

                field_fmt(sub, sizeof(sub), "strategy.%s", counts[i]);
                if (c) {
                        if (count_parse(c, &n, &pct) < 0)
                                return invalid(p, sub,
                                               "a count is an integer 0..%d or \"N%%\" "
                                               "with N 0..100",
                                               COUNT_INT_MAX);
                        /* batch and max_unavailable must resolve to at least 1 host */
                        if (n == 0 && (i == 1 || i == 2))
                                return invalid(p, sub, "%s must be at least 1 (or 1%%)", counts[i]);
                        val = json_deep_copy(c);
                } else if (i == 1) {
                        val = json_string("10%");
                } else {
                        val = json_integer(i == 0 || i == 2 ? 1 : 0);
                }
                if (json_object_set_new(st, counts[i], val) < 0)
                        return problem(p, 500, "internal-error", NULL, "out of memory");
        }
        int64_t soak = 0;
        if (duration_member(s, "soak", "strategy", 0, DURATION_DAY_MS, &soak, p) < 0)
                return -1;
        if (json_object_set_new(st, "soak_ms", json_integer(soak)) < 0)
                return problem(p, 500, "internal-error", NULL, "out of memory");
        return 0;
}

static int check_timeouts(const json_t *t, json_t *out, struct ctl_problem *p)
{
        const char *k;
        json_t *v;

        if (t && !json_is_object(t))
                return invalid(p, "timeouts", "timeouts must be an object");
        json_object_foreach ((json_t *)t, k, v) {
                bool known = false;
                for (size_t i = 0; i < ELEMENTSOF(timeouts); i++) {
                        size_t n = strlen(timeouts[i].name);
                        known = known || (key_plain(k) && strncmp(k, timeouts[i].name, n) == 0 &&
                                          (k[n] == 0 || strcmp(k + n, "_ms") == 0));
                }
                if (!known) {
                        char sub[64];
                        field_fmt(sub, sizeof(sub), "timeouts.%s", k);
                        return invalid(p, sub, "unknown member");
                }
        }
        json_t *to = json_object();
        if (!to || json_object_set_new(out, "timeouts", to) < 0)
                return problem(p, 500, "internal-error", NULL, "out of memory");
        for (size_t i = 0; i < ELEMENTSOF(timeouts); i++) {
                char key[32];
                int64_t ms = timeouts[i].def_ms;

                (void)snprintf(key, sizeof(key), "%s_ms", timeouts[i].name);
                if (duration_member(t, timeouts[i].name, "timeouts", 1000, DURATION_DAY_MS, &ms,
                                    p) < 0)
                        return -1;
                if (json_object_set_new(to, key, json_integer(ms)) < 0)
                        return problem(p, 500, "internal-error", NULL, "out of memory");
        }
        return 0;
}

static const char *const spec_members[] = { "id",      "target",        "selector",
                                            "hosts",   "strategy",      "timeouts",
                                            "windows", "lease_seconds", "auto_rollback",
                                            "dry_run", "force",         "only_failed_of" };

static int normalize(const json_t *in, json_t *out, struct ctl_problem *p)
{
        const char *k;
        json_t *v;

        if (!json_is_object(in))
                return invalid(p, "", "the rollout spec must be a JSON object");
        json_object_foreach ((json_t *)in, k, v) {
                bool known = false;
                for (size_t i = 0; i < ELEMENTSOF(spec_members); i++)
                        known = known || (key_plain(k) && strcmp(k, spec_members[i]) == 0);
                if (!known)
                        return invalid(p, k, "unknown member");
        }

        v = json_object_get(in, "id");
        if (v && !id_ok(v))
                return invalid(p, "id", "id is 1 to %d characters of [A-Za-z0-9._-]",
                               ROLLOUT_ID_MAX);

        const json_t *target = json_object_get(in, "target");
        if (check_target(target, p) < 0)
                return -1;

        const json_t *sel = json_object_get(in, "selector");
        if (sel && check_selector(sel, p) < 0)
                return -1;

        const json_t *hosts = json_object_get(in, "hosts");
        if (hosts && check_hosts(hosts, p) < 0)
                return -1;

        json_t *lease = json_object_get(in, "lease_seconds");
        if (lease && (!json_is_integer(lease) || json_integer_value(lease) < 0 ||
                      json_integer_value(lease) > 86400))
                return invalid(p, "lease_seconds", "lease_seconds is an integer 0..86400");

        json_t *ar = json_object_get(in, "auto_rollback");
        if (ar && !json_is_boolean(ar))
                return invalid(p, "auto_rollback", "auto_rollback is a boolean");
        json_t *dry = json_object_get(in, "dry_run");
        if (dry && !json_is_boolean(dry))
                return invalid(p, "dry_run", "dry_run is a boolean");
        const json_t *retry = json_object_get(in, "only_failed_of");
        if (retry && !id_ok(retry))
                return invalid(p, "only_failed_of",
                               "only_failed_of is a rollout id: 1 to %d characters of "
                               "[A-Za-z0-9._-]",
                               ROLLOUT_ID_MAX);
        json_t *force = json_object_get(in, "force");
        if (force && !json_is_boolean(force))
                return invalid(p, "force", "force is a boolean");

        if (json_object_set_new(out, "target", json_deep_copy(target)) < 0 ||
            json_object_set_new(out, "selector", sel ? json_deep_copy(sel) : json_object()) < 0 ||
            (hosts && json_object_set_new(out, "hosts", json_deep_copy(hosts)) < 0))
                return problem(p, 500, "internal-error", NULL, "out of memory");

        if (check_strategy(json_object_get(in, "strategy"), out, p) < 0 ||
            check_timeouts(json_object_get(in, "timeouts"), out, p) < 0)
                return -1;

        json_t *win = json_object_get(in, "windows"), *wout = NULL;
        if (win) {
                if (windows_normalize(win, &wout, p) < 0)
                        return -1;
        } else {
                wout = json_array();
        }
        if (json_object_set_new(out, "windows", wout) < 0 ||
            json_object_set_new(out, "lease_seconds",
                                json_integer(lease ? json_integer_value(lease) : 0)) < 0 ||
            json_object_set_new(out, "auto_rollback", json_boolean(ar && json_is_true(ar))) < 0)
                return problem(p, 500, "internal-error", NULL, "out of memory");
        /* Kept only when true: specs stored before it existed stay equal to their own. */
        if (json_is_true(force) && json_object_set_new(out, "force", json_true()) < 0)
                return problem(p, 500, "internal-error", NULL, "out of memory");
        if (retry && json_object_set_new(out, "only_failed_of", json_deep_copy(retry)) < 0)
                return problem(p, 500, "internal-error", NULL, "out of memory");
        v = json_object_get(in, "id");
        if (v && json_object_set_new(out, "id", json_deep_copy(v)) < 0)
                return problem(p, 500, "internal-error", NULL, "out of memory");
        return 0;
}

int rollout_spec_normalize(const json_t *in, json_t **ret, struct ctl_problem *p)
{
        json_t *out = json_object();

        if (!out)
                return problem(p, 500, "internal-error", NULL, "out of memory");
        if (normalize(in, out, p) < 0) {
                json_decref(out);
                return -1;
        }
        *ret = out;
        return 0;
}

/* ---- limits ------------------------------------------------------------------ */

static int get_ms(const json_t *obj, const char *key, int64_t *ret)
{
        json_t *v = json_object_get(obj, key);

        if (!json_is_integer(v) || json_integer_value(v) < 0)
                return -EINVAL;
        *ret = json_integer_value(v);
        return 0;
}

int rollout_limits_get(const json_t *spec, unsigned total, struct rollout_limits *ret)
{
        struct rollout_limits l = { 0 };
        const json_t *st = json_object_get(spec, "strategy");
        const json_t *to = json_object_get(spec, "timeouts");
        const char *mode = json_string_value(json_object_get(st, "mode"));
        int r;

        if (!json_is_object(st) || !json_is_object(to) || !mode)
                return -EINVAL;
        if (strcmp(mode, "rolling") == 0)
                l.mode = ROLLOUT_ROLLING;
        else if (strcmp(mode, "two-phase") == 0)
                l.mode = ROLLOUT_TWO_PHASE;
        else
                return -EINVAL;
        if ((r = rollout_count_resolve(json_object_get(st, "canary"), total, &l.canary)) < 0 ||
            (r = rollout_count_resolve(json_object_get(st, "batch"), total, &l.batch)) < 0 ||
            (r = rollout_count_resolve(json_object_get(st, "max_unavailable"), total,
                                       &l.max_unavailable)) < 0 ||
            (r = rollout_count_resolve(json_object_get(st, "max_failures"), total,
                                       &l.max_failures)) < 0)
                return r;
        /* Validation refuses 0; a percentage of 0 hosts still means one at a time. */
        l.batch = MAX(l.batch, 1u);
        l.max_unavailable = MAX(l.max_unavailable, 1u);
        if (get_ms(st, "soak_ms", &l.soak_ms) < 0 || get_ms(to, "stage_ms", &l.stage_ms) < 0 ||
            get_ms(to, "prepare_ms", &l.prepare_ms) < 0 ||
            get_ms(to, "reboot_ms", &l.reboot_ms) < 0 || get_ms(to, "finish_ms", &l.finish_ms) < 0)
                return -EINVAL;
        json_t *lease = json_object_get(spec, "lease_seconds");
        if (lease) {
                if (!json_is_integer(lease) || json_integer_value(lease) < 0 ||
                    json_integer_value(lease) > 86400)
                        return -EINVAL;
                l.lease_seconds = (unsigned)json_integer_value(lease);
        }
        l.auto_rollback = json_is_true(json_object_get(spec, "auto_rollback"));
        *ret = l;
        return 0;
}

/* ---- plan ---------------------------------------------------------------------- */

struct sel_host {
        const char *name;
        const char *zone; /* "" when the host has no zone label */
};

static int cmp_name(const void *a, const void *b)
{
        const struct sel_host *x = a, *y = b;
        return strcmp(x->name, y->name);
}

static int cmp_zone_name(const void *a, const void *b)
{
        const struct sel_host *x = a, *y = b;
        int c = strcmp(x->zone, y->zone);
        return c ? c : strcmp(x->name, y->name);
}

/*
 * Round robin over zones sorted by name: the first host of each zone, then
 * the second of each, and so on; within a zone by name. out gets n entries.
 */
static int interleave(struct sel_host *h, size_t n, struct sel_host *out)
{
        size_t *start, *pos, zones = 0;

        qsort(h, n, sizeof(*h), cmp_zone_name);
        start = calloc(n + 1, sizeof(*start));
        pos = calloc(n + 1, sizeof(*pos));
        if (!start || !pos) {
                free(start);
                free(pos);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++)
                if (i == 0 || strcmp(h[i].zone, h[i - 1].zone) != 0)
                        start[zones++] = i;
        start[zones] = n;
        for (size_t z = 0; z < zones; z++)
                pos[z] = start[z];
        size_t k = 0;
        while (k < n)
                for (size_t z = 0; z < zones; z++)
                        if (pos[z] < start[z + 1])
                                out[k++] = h[pos[z]++];
        free(start);
        free(pos);
        return 0;
}

static int add_wave(json_t *waves, const struct sel_host *h, size_t n, bool canary)
{
        json_t *w = json_object(), *names = json_array();

        if (!w || !names || json_object_set_new(w, "index", json_integer(json_array_size(waves))) ||
            json_object_set_new(w, "canary", json_boolean(canary)) ||
            json_object_set(w, "hosts", names) || json_array_append(waves, w)) {
                json_decref(w);
                json_decref(names);
                return -ENOMEM;
        }
        json_decref(w);
        for (size_t i = 0; i < n; i++)
                if (json_array_append_new(names, json_string(h[i].name)) < 0) {
                        json_decref(names);
                        return -ENOMEM;
                }
        json_decref(names);
        return 0;
}

/* Waves of at most size hosts from h[0..n), with the canary flag given. */
static int add_waves(json_t *waves, const struct sel_host *h, size_t n, size_t size, bool canary,
                     int64_t *est_ms, const struct rollout_limits *l)
{
        for (size_t i = 0; i < n; i += size) {
                size_t m = MIN(size, n - i);
                uint64_t rounds = l->mode == ROLLOUT_TWO_PHASE
                                          ? 1
                                          : (m + l->max_unavailable - 1) / l->max_unavailable;
                if (add_wave(waves, h + i, m, canary) < 0)
                        return -ENOMEM;
                if (json_array_size(waves) > 1)
                        *est_ms += l->soak_ms;
                *est_ms += (int64_t)rounds * EST_ROUND_S * 1000;
        }
        return 0;
}

static int build_plan(const json_t *spec, const json_t *hosts, json_t *plan, struct ctl_problem *p)
{
        const json_t *selector = json_object_get(spec, "selector");
        const json_t *only = json_object_get(spec, "hosts");
        json_t *skipped = json_array(), *waves = json_array(), *seen = json_object(), *v;
        json_t *wanted = NULL;
        struct sel_host *sel = NULL, *order = NULL;
        size_t n = 0, i;
        int r = -ENOMEM;

        if (json_object_set_new(plan, "skipped", skipped) < 0 ||
            json_object_set_new(plan, "waves", waves) < 0 || !seen) {
                json_decref(seen);
                return problem(p, 500, "internal-error", NULL, "out of memory");
        }
        sel = calloc(json_array_size(hosts) + 1, sizeof(*sel));
        if (!sel)
                goto oom;
        if (json_is_array(only)) {
                wanted = json_object();
                if (!wanted)
                        goto oom;
                json_array_foreach (only, i, v)
                        if (json_is_string(v) &&
                            json_object_set_new(wanted, json_string_value(v), json_true()) < 0)
                                goto oom;
        }
        json_array_foreach (hosts, i, v) {
                const char *name = json_string_value(json_object_get(v, "name"));
                const json_t *labels = json_object_get(v, "labels");
                if (!name || !*name || json_object_get(seen, name))
                        continue; /* malformed or duplicate inventory entry */
                if (json_object_set_new(seen, name, json_true()) < 0)
                        goto oom;
                if (!rollout_selector_match(selector, labels))
                        continue;
                if (wanted && !json_object_get(wanted, name))
                        continue;
                const char *zone = json_string_value(json_object_get(labels, "zone"));
                sel[n].name = name;
                sel[n].zone = zone ? zone : "";
                n++;
        }
        if (json_is_array(only)) {
                json_array_foreach (only, i, v) {
                        if (!json_is_string(v) || json_object_get(seen, json_string_value(v)))
                                continue;
                        json_t *s = json_pack("{s:O,s:s}", "host", v, "reason", "unknown-host");
                        if (!s || json_array_append_new(skipped, s) < 0)
                                goto oom;
                }
        }
        if (n == 0) {
                r = problem(p, 422, "no-hosts", NULL,
                            "no host of the inventory matches the selector and host list");
                goto out;
        }

        struct rollout_limits l;
        if (rollout_limits_get(spec, (unsigned)MIN(n, (size_t)UINT_MAX), &l) < 0) {
                r = invalid(p, "", "the spec is not a normalised rollout spec");
                goto out;
        }
        qsort(sel, n, sizeof(*sel), cmp_name);
        order = calloc(n, sizeof(*order));
        if (!order || interleave(sel, n, order) < 0)
                goto oom;

        size_t canary = MIN((size_t)l.canary, n), batch = l.batch, canary_size = canary;
        if (l.mode == ROLLOUT_TWO_PHASE) {
                batch = MIN(batch, (size_t)l.max_unavailable);
                canary_size = MIN(canary_size, (size_t)l.max_unavailable);
        }
        int64_t est_ms = 0;
        if ((canary && add_waves(waves, order, canary, canary_size, true, &est_ms, &l) < 0) ||
            add_waves(waves, order + canary, n - canary, batch, false, &est_ms, &l) < 0)
                goto oom;
        json_t *est = est_ms % 1000 == 0 ? json_integer(est_ms / 1000)
                                         : json_real((double)est_ms / 1000.0);
        if (json_object_set_new(plan, "hosts", json_integer((json_int_t)n)) < 0 ||
            json_object_set_new(plan, "expected_duration_s", est) < 0)
                goto oom;
        r = 0;
        goto out;
oom:
        r = problem(p, 500, "internal-error", NULL, "out of memory");
out:
        free(sel);
        free(order);
        json_decref(seen);
        json_decref(wanted);
        return r;
}

int rollout_plan(const json_t *spec, const json_t *hosts, json_t **ret, struct ctl_problem *p)
{
        json_t *plan = json_object();

        if (!plan)
                return problem(p, 500, "internal-error", NULL, "out of memory");
        if (!json_is_object(spec) || (hosts && !json_is_array(hosts))) {
                json_decref(plan);
                return invalid(p, "", "bad arguments");
        }
        if (build_plan(spec, hosts, plan, p) < 0) {
                json_decref(plan);
                return -1;
        }
        *ret = plan;
        return 0;
}
