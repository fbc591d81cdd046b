/*
 * spec.c: building a RolloutSpec (rollout/controller.h) from flags: counts
 * ("3", "25%"), durations, maintenance windows ("mon-fri 02:00-05:00
 * Europe/Berlin") and dotted member paths into the JSON document.
 * Non-logging, no state: unit-tested by tests/unit/test_cli_spec.c.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#include "luofleet/macro.h"
#include "luofleet/util.h"

static const char *const days[7] = { "mon", "tue", "wed", "thu", "fri", "sat", "sun" };

json_t *spec_count(const char *s)
{
        uint64_t v;
        size_t n = s ? strlen(s) : 0;
        char num[24];

        if (n > 1 && s[n - 1] == '%') {
                if (n - 1 >= sizeof(num))
                        return NULL;
                memcpy(num, s, n - 1);
                num[n - 1] = 0;
                if (parse_u64(num, 100, &v) < 0)
                        return NULL;
                return json_string(s);
        }
        if (parse_u64(s, 1000000, &v) < 0)
                return NULL;
        return json_integer((json_int_t)v);
}

bool spec_duration_valid(const char *s)
{
        uint64_t ms;

        /* the one grammar of every luofleet program (luofleet/util.h): 90s, 1h30m, 500ms */
        return s && parse_duration_ms(s, UINT64_MAX, &ms) == 0;
}

static int day_index(const char *s, size_t n)
{
        for (int i = 0; i < 7; i++)
                if (n == 3 && strncmp(s, days[i], 3) == 0)
                        return i;
        return -1;
}

/* "mon-fri,sun" -> bit set of days (bit 0 monday); -1 when invalid. */
static int parse_days(const char *s)
{
        int set = 0;

        while (*s) {
                const char *end = strchr(s, ',');
                size_t n = end ? (size_t)(end - s) : strlen(s);
                const char *dash = memchr(s, '-', n);
                int a, b;

                if (dash) {
                        a = day_index(s, (size_t)(dash - s));
                        b = day_index(dash + 1, n - (size_t)(dash - s) - 1);
                } else
                        a = b = day_index(s, n);
                if (a < 0 || b < 0)
                        return -1;
                for (int i = a;; i = (i + 1) % 7) {
                        set |= 1 << i;
                        if (i == b)
                                break;
                }
                s += n;
                if (*s == ',') {
                        s++;
                        if (!*s)
                                return -1;
                }
        }
        return set;
}

static bool hhmm_valid(const char *s, size_t n)
{
        return n == 5 && s[0] >= '0' && s[0] <= '2' && s[1] >= '0' && s[1] <= '9' && s[2] == ':' &&
               s[3] >= '0' && s[3] <= '5' && s[4] >= '0' && s[4] <= '9' &&
               (s[0] < '2' || s[1] <= '3');
}

json_t *spec_window(const char *s, char *err, size_t err_size)
{
        _cleanup_free_ char *copy = strdup(s ? s : "");
        char *tok[4], *save = NULL, *p;
        size_t n = 0, t = 0;
        json_t *w;
        int set = 0x7f;

        if (!copy) {
                snprintf(err, err_size, "out of memory");
                return NULL;
        }
        for (p = strtok_r(copy, " \t", &save); p; p = strtok_r(NULL, " \t", &save)) {
                if (n == ELEMENTSOF(tok)) {
                        snprintf(err, err_size, "too many words");
                        return NULL;
                }
                tok[n++] = p;
        }
        /* [DAYS] HH:MM-HH:MM [TIME_ZONE] */
        if (n > 0 && !strchr(tok[0], ':')) {
                if (strcmp(tok[0], "daily") != 0 && strcmp(tok[0], "*") != 0) {
                        set = parse_days(tok[0]);
                        if (set <= 0) {
                                snprintf(err, err_size,
                                         "'%s': expected days like mon-fri or sat,sun", tok[0]);
                                return NULL;
                        }
                }
                t = 1;
        }
        if (t >= n || strlen(tok[t]) != 11 || tok[t][5] != '-' || !hhmm_valid(tok[t], 5) ||
            !hhmm_valid(tok[t] + 6, 5)) {
                snprintf(err, err_size, "expected \"[DAYS] HH:MM-HH:MM [TIME_ZONE]\"");
                return NULL;
        }
        if (n > t + 2) {
                snprintf(err, err_size, "expected \"[DAYS] HH:MM-HH:MM [TIME_ZONE]\"");
                return NULL;
        }
        tok[t][5] = 0;
        w = json_pack("{s:s, s:s}", "start", tok[t], "end", tok[t] + 6);
        if (!w) {
                snprintf(err, err_size, "out of memory");
                return NULL;
        }
        if (set != 0x7f) {
                json_t *a = json_array();
                for (int i = 0; i < 7; i++)
                        if (set & (1 << i))
                                json_array_append_new(a, json_string(days[i]));
                json_object_set_new(w, "days", a);
        }
        if (n == t + 2)
                json_object_set_new(w, "time_zone", json_string(tok[t + 1]));
        return w;
}

int spec_set(json_t *spec, const char *path, json_t *value)
{
        const char *dot = strchr(path, '.');
        char key[64];
        json_t *child;

        if (!value)
                return -ENOMEM;
        if (!dot) {
                if (json_object_set_new(spec, path, value) < 0)
                        return -ENOMEM;
                return 0;
        }
        if ((size_t)(dot - path) >= sizeof(key)) {
                json_decref(value);
                return -EINVAL;
        }
        memcpy(key, path, (size_t)(dot - path));
        key[dot - path] = 0;
        child = json_object_get(spec, key);
        if (!json_is_object(child)) {
                child = json_object();
                if (!child || json_object_set_new(spec, key, child) < 0) {
                        json_decref(value);
                        return -ENOMEM;
                }
        }
        return spec_set(child, dot + 1, value);
}
