/*
 * window.c: maintenance windows in a time zone (window.h): validation and
 * normalisation of a "windows" array, and "is one open now, else when does
 * the next one open". Called from the HTTP threads (validation) and the
 * engine thread (checks). Owns one global mutex, tz_lock, which guards the
 * process's TZ variable while a check converts local times; nothing else is
 * locked while it is held.
 *
 * Why TZ + tzset() under a mutex rather than a TZif reader of our own: a
 * correct reader must also interpret the POSIX TZ footer string that modern
 * ("slim") zoneinfo files rely on for every date past their last explicit
 * transition, i.e. it reimplements half of glibc's tzfile.c and tzset.c; the C
 * library already does this well, and the cost of a window check (a few dozen
 * conversions, a few times a minute from one engine thread) is negligible.
 * The price is that TZ is briefly changed process-wide: no other code of
 * luofleet-rollout depends on the local zone (every timestamp we print is UTC
 * via gmtime_r), and we restore TZ before unlocking. We never unsetenv():
 * once TZ exists, glibc's setenv() only swaps the entry's pointer (it never
 * frees strings it made), so a getenv() in another thread (libcurl's proxy
 * variables) sees the old or the new value, never freed memory; an unset TZ
 * is restored as ":/etc/localtime", which is what glibc reads when TZ is
 * unset. "UTC" windows never take the lock at all.
 *
 * Local times that do not exist or exist twice (daylight saving changes):
 * a window edge at a time that is skipped (02:30 on a spring-forward day in
 * Europe/Berlin) is taken as the instant the clocks jump (03:00 CEST), so
 * the part of the window that exists is honoured (02:30-03:30 is open from
 * 03:00 to 03:30 that day) and a window starting in the gap still opens; a
 * time that occurs twice (autumn) is taken at its first occurrence.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "luofleet/macro.h"
#include "window.h"

#define WINDOWS_MAX 32
#define TZ_NAME_MAX 128
#define ZONEINFO_DIR "/usr/share/zoneinfo/"
/* How far ahead next_open is searched (window.h). */
#define SEARCH_DAYS 8

static const char *const day_names[7] = { "mon", "tue", "wed", "thu", "fri", "sat", "sun" };

static pthread_mutex_t tz_lock = PTHREAD_MUTEX_INITIALIZER;

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

static int invalid(struct ctl_problem *p, const char *field, const char *detail)
{
        if (p) {
                p->status = 400;
                (void)snprintf(p->code, sizeof(p->code), "invalid-field");
                (void)snprintf(p->field, sizeof(p->field), "%s", field);
                (void)snprintf(p->detail, sizeof(p->detail), "%s", detail);
        }
        return -1;
}

/* ---- validation ---------------------------------------------------------- */

/* "HH:MM", 00:00..23:59 -> minutes of the day; -1 otherwise. */
static int parse_hhmm(const json_t *v)
{
        const char *s = json_string_value(v);

        if (!s || json_string_length(v) != 5 || s[2] != ':')
                return -1;
        for (int i = 0; i < 5; i++)
                if (i != 2 && (s[i] < '0' || s[i] > '9'))
                        return -1;
        int h = (s[0] - '0') * 10 + (s[1] - '0'), m = (s[3] - '0') * 10 + (s[4] - '0');
        if (h > 23 || m > 59)
                return -1;
        return h * 60 + m;
}

static bool is_utc(const char *tz)
{
        return strcmp(tz, "UTC") == 0;
}

/* A zone name we accept: UTC, or a TZif file under /usr/share/zoneinfo. */
static bool tz_valid(const json_t *v)
{
        const char *s = json_string_value(v);
        char path[sizeof(ZONEINFO_DIR) + TZ_NAME_MAX], magic[4];

        if (!s || json_string_length(v) == 0 || json_string_length(v) > TZ_NAME_MAX ||
            strlen(s) != json_string_length(v))
                return false;
        if (is_utc(s))
                return true;
        for (const char *c = s; *c; c++)
                if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                      (*c >= '0' && *c <= '9') || strchr("_+/-", *c)))
                        return false;
        if (s[0] == '/' || strstr(s, "..") || strstr(s, "//"))
                return false;
        int n = snprintf(path, sizeof(path), ZONEINFO_DIR "%s", s);
        if (n < 0 || (size_t)n >= sizeof(path))
                return false;
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0)
                return false;
        ssize_t r;
        do
                r = read(fd, magic, sizeof(magic));
        while (r < 0 && errno == EINTR);
        return r == (ssize_t)sizeof(magic) && memcmp(magic, "TZif", 4) == 0;
}

/* Bit i set for day_names[i]; -1 for an unknown name. */
static int day_bit(const json_t *v)
{
        const char *s = json_string_value(v);

        if (!s || json_string_length(v) != 3)
                return -1;
        for (int i = 0; i < 7; i++)
                if (strcmp(s, day_names[i]) == 0)
                        return i;
        return -1;
}

static int normalize_one(const json_t *w, size_t idx, json_t **ret, struct ctl_problem *p)
{
        char field[64];
        const char *k;
        json_t *v;
        unsigned mask = 0;

#define FIELD(member) field_fmt(field, sizeof(field), "windows[%zu]%s", idx, member)
        FIELD("");
        if (!json_is_object(w))
                return invalid(p, field, "a window is an object {days, start, end, time_zone}");
        json_object_foreach ((json_t *)w, k, v) {
                if (!key_plain(k) || (strcmp(k, "days") != 0 && strcmp(k, "start") != 0 &&
                                      strcmp(k, "end") != 0 && strcmp(k, "time_zone") != 0)) {
                        field_fmt(field, sizeof(field), "windows[%zu].%s", idx, k);
                        return invalid(p, field, "unknown member");
                }
        }
        const json_t *days = json_object_get(w, "days");
        if (days) {
                size_t i;
                FIELD(".days");
                if (!json_is_array(days) || json_array_size(days) == 0 || json_array_size(days) > 7)
                        return invalid(p, field, "days is a non-empty array of mon..sun");
                json_array_foreach (days, i, v) {
                        int b = day_bit(v);
                        if (b < 0)
                                return invalid(p, field,
                                               "days are \"mon\", \"tue\", \"wed\", \"thu\", "
                                               "\"fri\", \"sat\", \"sun\"");
                        if (mask & (1u << b))
                                return invalid(p, field, "a day is listed twice");
                        mask |= 1u << b;
                }
        } else {
                mask = 0x7f;
        }
        FIELD(".start");
        if (!json_object_get(w, "start"))
                return invalid(p, field, "start is required (\"HH:MM\")");
        if (parse_hhmm(json_object_get(w, "start")) < 0)
                return invalid(p, field, "start is \"HH:MM\" from 00:00 to 23:59");
        FIELD(".end");
        if (!json_object_get(w, "end"))
                return invalid(p, field, "end is required (\"HH:MM\")");
        if (parse_hhmm(json_object_get(w, "end")) < 0)
                return invalid(p, field, "end is \"HH:MM\" from 00:00 to 23:59");
        const json_t *tz = json_object_get(w, "time_zone");
        FIELD(".time_zone");
        if (tz && !tz_valid(tz))
                return invalid(p, field, "time_zone is not a known IANA time zone name");
#undef FIELD

        json_t *out = json_object(), *dout = json_array();
        if (!out || !dout) {
                json_decref(out);
                json_decref(dout);
                return -ENOMEM;
        }
        for (int i = 0; i < 7; i++)
                if ((mask & (1u << i)) && json_array_append_new(dout, json_string(day_names[i])))
                        goto oom;
        if (json_object_set_new(out, "days", dout) < 0 ||
            json_object_set_new(out, "start",
                                json_string(json_string_value(json_object_get(w, "start")))) < 0 ||
            json_object_set_new(out, "end",
                                json_string(json_string_value(json_object_get(w, "end")))) < 0 ||
            json_object_set_new(out, "time_zone",
                                tz ? json_string(json_string_value(tz)) : json_string("UTC")) < 0)
                goto oom_out;
        *ret = out;
        return 0;
oom:
        json_decref(dout);
oom_out:
        json_decref(out);
        return -ENOMEM;
}

int windows_normalize(const json_t *in, json_t **ret, struct ctl_problem *p)
{
        size_t i;
        json_t *w;

        if (!json_is_array(in))
                return invalid(p, "windows", "windows is an array of windows");
        if (json_array_size(in) > WINDOWS_MAX)
                return invalid(p, "windows", "at most 32 windows");
        json_t *out = json_array();
        if (!out)
                goto oom;
        json_array_foreach (in, i, w) {
                json_t *one = NULL;
                int r = normalize_one(w, i, &one, p);
                if (r == -ENOMEM) {
                        json_decref(out);
                        goto oom;
                }
                if (r < 0 || json_array_append_new(out, one) < 0) {
                        json_decref(out);
                        return r < 0 ? -1 : invalid(p, "windows", "out of memory");
                }
        }
        *ret = out;
        return 0;
oom:
        if (p) {
                p->status = 500;
                (void)snprintf(p->code, sizeof(p->code), "internal-error");
                (void)snprintf(p->field, sizeof(p->field), "windows");
                (void)snprintf(p->detail, sizeof(p->detail), "out of memory");
        }
        return -1;
}

/* ---- checks -------------------------------------------------------------- */

/*
 * Local-time conversions in one zone. For "UTC" they are timegm/gmtime_r;
 * otherwise the caller holds tz_lock with TZ set to the zone.
 */
struct zone {
        bool utc;
};

static bool to_local(const struct zone *z, time_t t, struct tm *tm)
{
        return z->utc ? gmtime_r(&t, tm) != NULL : localtime_r(&t, tm) != NULL;
}

/* The local wall clock of t as seconds of a proleptic UTC-like count. */
static bool local_naive(const struct zone *z, time_t t, time_t *ret)
{
        struct tm tm;

        if (!to_local(z, t, &tm))
                return false;
        *ret = timegm(&tm);
        return true;
}

/*
 * The instant of local date y-mo-d h:mi in zone z: its first occurrence, or
 * when it does not exist (skipped by a DST change), the first instant after
 * the jump. false when out of range.
 */
static bool local_to_utc(const struct zone *z, int y, int mo, int d, int h, int mi, time_t *ret)
{
        struct tm want = {
                .tm_year = y - 1900, .tm_mon = mo, .tm_mday = d, .tm_hour = h, .tm_min = mi
        };
        time_t naive = timegm(&want), best = 0;
        bool found = false;

        if (naive == (time_t)-1)
                return false;
        if (z->utc) {
                *ret = naive;
                return true;
        }
        /* Try each interpretation (DST unknown, standard, daylight) and keep
         * the earliest that round-trips to exactly this wall-clock time. */
        for (int isdst = -1; isdst <= 1; isdst++) {
                struct tm tm = want;
                tm.tm_isdst = isdst;
                time_t t = mktime(&tm), n;
                if (t == (time_t)-1 || !local_naive(z, t, &n) || n != naive)
                        continue;
                if (!found || t < best)
                        best = t;
                found = true;
        }
        if (!found) {
                /* In a gap: the first instant whose wall clock is at or past the
                 * wanted one. UTC offsets are within +-26 h, and the wall clock is
                 * monotonic around a gap, so a binary search over that span finds
                 * the jump. */
                time_t lo = naive - 26 * 3600, hi = naive + 26 * 3600, n;
                while (lo < hi) {
                        time_t mid = lo + (hi - lo) / 2;
                        if (!local_naive(z, mid, &n))
                                return false;
                        if (n >= naive)
                                hi = mid;
                        else
                                lo = mid + 1;
                }
                best = lo;
        }
        *ret = best;
        return true;
}

struct interval {
        time_t open, close;
};

/*
 * The openings of window w whose opening day lies from the day before now
 * (one may still be open past midnight) to SEARCH_DAYS days after, local to
 * its zone. Appends to iv (room for SEARCH_DAYS + 2 per window).
 */
static int window_intervals(const json_t *w, time_t now, struct interval *iv, size_t *n)
{
        const char *zone = json_string_value(json_object_get(w, "time_zone"));
        const json_t *days = json_object_get(w, "days");
        int start = parse_hhmm(json_object_get(w, "start"));
        int end = parse_hhmm(json_object_get(w, "end"));
        unsigned mask = 0;
        char *saved = NULL;
        int r = 0;

        if (!json_is_object(w) || start < 0 || end < 0)
                return -EINVAL;
        if (!zone)
                zone = "UTC";
        if (days) {
                size_t i;
                json_t *v;
                if (!json_is_array(days))
                        return -EINVAL;
                json_array_foreach (days, i, v) {
                        int b = day_bit(v);
                        if (b < 0)
                                return -EINVAL;
                        mask |= 1u << b;
                }
        } else {
                mask = 0x7f;
        }
        struct zone z = { .utc = is_utc(zone) };
        if (!z.utc) {
                if (!tz_valid(json_object_get(w, "time_zone")))
                        return -EINVAL;
                pthread_mutex_lock(&tz_lock);
                const char *old = getenv("TZ");
                saved = strdup(old ? old : ":/etc/localtime");
                if (!saved || setenv("TZ", zone, 1) < 0) {
                        r = -ENOMEM;
                        free(saved);
                        pthread_mutex_unlock(&tz_lock);
                        return r;
                }
                tzset();
        }

        struct tm today;
        if (!to_local(&z, now, &today)) {
                r = -ERANGE;
                goto out;
        }
        for (int off = -1; off <= SEARCH_DAYS; off++) {
                /* The calendar date off days from today (timegm normalises the day
                 * of the month; a naive UTC count has no DST to trip over). */
                struct tm day = { .tm_year = today.tm_year,
                                  .tm_mon = today.tm_mon,
                                  .tm_mday = today.tm_mday + off,
                                  .tm_hour = 12 };
                time_t dn = timegm(&day);
                struct tm dt;
                if (dn == (time_t)-1 || !gmtime_r(&dn, &dt)) {
                        r = -ERANGE;
                        goto out;
                }
                int wd = (dt.tm_wday + 6) % 7; /* 0 = monday */
                if (!(mask & (1u << wd)))
                        continue;
                struct interval x;
                int y = dt.tm_year + 1900, mo = dt.tm_mon, d = dt.tm_mday;
                if (!local_to_utc(&z, y, mo, d, start / 60, start % 60, &x.open) ||
                    !local_to_utc(&z, y, mo, d + (end <= start ? 1 : 0), end / 60, end % 60,
                                  &x.close)) {
                        r = -ERANGE;
                        goto out;
                }
                if (x.close > x.open) /* empty when a DST jump swallowed it */
                        iv[(*n)++] = x;
        }
out:
        if (!z.utc) {
                (void)setenv("TZ", saved, 1);
                tzset();
                free(saved);
                pthread_mutex_unlock(&tz_lock);
        }
        return r;
}

int windows_check(const json_t *windows, time_t now, time_t *next_open, time_t *closes_at)
{
        size_t nw, n = 0, i;
        json_t *w;
        int r;

        if (next_open)
                *next_open = 0;
        if (closes_at)
                *closes_at = 0;
        if (!windows || (json_is_array(windows) && json_array_size(windows) == 0))
                return 1;
        if (!json_is_array(windows) || json_array_size(windows) > WINDOWS_MAX)
                return -EINVAL;
        nw = json_array_size(windows);
        struct interval *iv = calloc(nw * (SEARCH_DAYS + 2), sizeof(*iv));
        if (!iv)
                return -ENOMEM;
        json_array_foreach (windows, i, w) {
                r = window_intervals(w, now, iv, &n);
                if (r < 0) {
                        free(iv);
                        return r;
                }
        }

        /* Open now: close at the latest end reachable through windows that
         * overlap or touch (mon 22:00-24:00 then tue 00:00-06:00 is one stretch). */
        time_t close = 0;
        bool open = false;
        for (i = 0; i < n; i++)
                if (iv[i].open <= now && now < iv[i].close) {
                        open = true;
                        close = MAX(close, iv[i].close);
                }
        if (open) {
                bool grew = true;
                while (grew) {
                        grew = false;
                        for (i = 0; i < n; i++)
                                if (iv[i].open <= close && iv[i].close > close) {
                                        close = iv[i].close;
                                        grew = true;
                                }
                }
                free(iv);
                if (closes_at)
                        *closes_at = close;
                return 1;
        }
        time_t next = 0;
        for (i = 0; i < n; i++)
                if (iv[i].open > now && iv[i].open <= now + SEARCH_DAYS * 86400 &&
                    (next == 0 || iv[i].open < next))
                        next = iv[i].open;
        free(iv);
        if (next_open)
                *next_open = next;
        return 0;
}
