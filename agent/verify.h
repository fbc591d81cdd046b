/*
 * verify.h: after the jump: what the blackout was, and whether the kernel
 * that runs is the one that was staged (docs/leases.md, "After the jump").
 *
 * At staging (worker thread) the expectation is written into the Staged
 * object: the release the request named, the version string of the image's
 * bzImage header. At start-up in a new boot (main thread, agent.lock held by
 * the caller where said) the reboot record gets the blackout members and the
 * verification, and the state document's "last_update" shows both until the
 * next prepare. No state of its own.
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct agent;
struct op_request;

/* Longest kernel version string kept. */
#define VERIFY_VERSION_MAX 256

/*
 * Worker, after a successful staging: staged gets "expected": {release,
 * version} (each null when unknown): rq's expected release, the image's
 * version string (opened like staging opens it: through the privileged
 * helper, or here).
 */
void verify_stage_expectation(struct agent *a, const struct op_request *rq, json_t *staged);

/*
 * The verification of the running kernel against a Staged object's
 * "expected" (NULL: nothing was staged): {status: match | mismatch | unknown,
 * expected, running: {release, version, build_id}}. Reads /proc/version and
 * /sys/kernel/notes (under --root) for the luo-v3 backend.
 */
json_t *verify_running(struct agent *a, json_t *staged);

/* The document's "last_update" from a reboot record (journal replay); NULL when none. */
json_t *verify_last_update_from_record(json_t *rec);

/* /readyz "kernel-verified": false with a detail after a mismatch. agent.lock taken. */
bool verify_health(struct agent *a, char *detail, size_t size);
