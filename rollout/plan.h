/*
 * plan.h: rollout specs and plans, pure functions (no I/O, no clock): the
 * validation and defaulting of a RolloutSpec, Count and Duration values, and
 * the cutting of the selected hosts into waves. Shapes: controller.h and
 * api/rollout.yaml.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "controller.h"

#define ROLLOUT_ID_MAX 64

enum rollout_mode {
        ROLLOUT_ROLLING,
        ROLLOUT_TWO_PHASE,
};

/*
 * Validate a RolloutSpec and return the normalised copy: every default filled
 * in, Durations as integers of milliseconds in members with an "_ms" suffix
 * ("soak_ms", "timeouts": {"stage_ms", ...}), Counts kept as given (int or
 * "N%"), "windows" validated (window.h), "dry_run" removed, "force" kept only when true, "id" kept
 * only when given. Unknown members are refused (400 invalid-field, p->field names the member).
 * Returns 0, or -1 with p filled (status 400 or 422).
 *
 * Clarifications: a missing "target" or "target.kernel" is 400 missing-field;
 * everything else wrong is 400 invalid-field with p->field the dotted member
 * ("strategy.batch", "hosts[3]", "windows[0].start", "target.kernel.sha256").
 * target members: kernel and initrd {url | path (exactly one), sha256 (64
 * lower-case hex)}, cmdline, signature (an object, passed through), release;
 * others are refused (the agent would refuse them at stage time). batch and
 * max_unavailable must be at least 1 (0 and "0%" are refused); soak is 0..24h,
 * timeouts 1s..24h. The output is not meant to be normalised again (stored
 * specs are normalised once, on create).
 */
int rollout_spec_normalize(const json_t *in, json_t **ret, struct ctl_problem *p);

/* A Count (int >= 0 or "N%", 0 <= N <= 100) of total: N% rounds up and is
 * at least 1 when N > 0 and total > 0. -EINVAL for anything else. */
int rollout_count_resolve(const json_t *count, unsigned total, unsigned *ret);
/* "250ms", "30s", "5m", "2h", "1h30m" or a JSON integer of seconds -> ms. -EINVAL. */
int rollout_duration_parse(const json_t *v, int64_t *ret_ms);

/* Does a host's labels object match the selector ({} or NULL matches all)? */
bool rollout_selector_match(const json_t *selector, const json_t *labels);

/*
 * Cut the hosts into waves. spec is a normalised spec; hosts is an array of
 * {"name", "labels"} (the inventory; other members ignored). Selection: the
 * selector, intersected with spec "hosts" when given (names there that are
 * not in the inventory go to "skipped" with reason "unknown-host"). Order:
 * by name, then interleaved across the "zone" label (round robin over zones
 * sorted by name) so a wave spreads over zones. Wave 0 holds the canaries
 * (resolved "canary" count; no canary wave when 0), then waves of "batch"
 * (at least 1). In two-phase mode a wave is at most max_unavailable hosts
 * (the whole wave reboots at once). Returns the Plan document
 * ({"hosts", "waves": [{"index", "canary", "hosts": [..]}], "skipped",
 * "expected_duration_s"}); 422 no-hosts when nothing is selected.
 *
 * Clarifications: hosts without a "zone" label form one zone named "" (first
 * in the round robin). Inventory entries without a string "name", and repeated
 * names after the first, are ignored. In two-phase mode the canaries too are
 * cut into waves of at most max_unavailable hosts, each with "canary": true
 * (the canary count is kept; waves 0..k are then canary waves).
 * expected_duration_s is an estimate, not a timeout: a "round" costs 24 s
 * (5 s stage + 2 s prepare + 15 s reboot + 2 s finish); a wave of n hosts
 * takes ceil(n / max_unavailable) rounds in rolling mode and 1 round in
 * two-phase mode; the soak is added between waves (not after the last). An
 * integer when whole, else a real (soak in ms).
 */
int rollout_plan(const json_t *spec, const json_t *hosts, json_t **ret, struct ctl_problem *p);

/* The resolved numbers a running rollout needs (from a normalised spec). */
struct rollout_limits {
        enum rollout_mode mode;
        unsigned canary, batch, max_unavailable, max_failures; /* resolved against total */
        int64_t soak_ms, stage_ms, prepare_ms, reboot_ms, finish_ms;
        unsigned lease_seconds;
        bool auto_rollback;
};
int rollout_limits_get(const json_t *spec, unsigned total, struct rollout_limits *ret);
