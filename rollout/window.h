/*
 * window.h: maintenance windows with a time zone. A window is
 * {"days": ["mon".."sun"], "start": "HH:MM", "end": "HH:MM", "time_zone"}:
 * open from start to end local time on each listed day (an end at or before
 * the start runs past midnight into the next day; the day named is the day
 * the window opens). Local time is the zone's (IANA tz database,
 * /usr/share/zoneinfo), daylight saving included. Thread-safe.
 */
#pragma once

#include <stdbool.h>
#include <time.h>

#include <jansson.h>

#include "controller.h"

/* Validate a "windows" array and return the normalised copy (defaults:
 * every day, time_zone "UTC"). -1 with p filled (400 invalid-field). */
/* Clarifications: at most 32 windows; unknown members refused; p->field is
 * "windows", "windows[i]" or "windows[i].member"; "days" come out in the
 * order mon..sun; start and end are "HH:MM" 00:00..23:59; time_zone is
 * "UTC" or a name [A-Za-z0-9_+/-] (no "..", no leading "/") of a TZif file
 * under /usr/share/zoneinfo. Normalising the output again gives it back. */
int windows_normalize(const json_t *in, json_t **ret, struct ctl_problem *p);

/*
 * At wall-clock time now: 1 when some window is open (*closes_at = when the
 * open window ends), 0 when none is (*next_open = the next opening, within
 * 8 days; 0 if none can be found), an empty or NULL array is always open
 * (*closes_at = 0). Negative errno on a broken array.
 *
 * Clarifications: the end is excluded (open on [start, end)). Windows that
 * overlap or touch are one stretch: *closes_at is the end of the stretch
 * (looked at up to 8 days ahead). A start or end at a local time skipped by a
 * daylight saving change means the instant the clocks jump (02:30-03:30 on
 * the spring-forward day in Europe/Berlin is open 03:00-03:30 CEST); a local
 * time that occurs twice means its first occurrence. A window whose days list
 * is empty (only possible unnormalised) never opens. next_open and closes_at
 * may be NULL.
 */
int windows_check(const json_t *windows, time_t now, time_t *next_open, time_t *closes_at);
