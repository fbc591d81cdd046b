/*
 * luo_state.h: the live-update state machine of the kernel's orchestrator
 * (kernel-abi.md section A), shared by the kernel backends, the agent and the
 * controller.
 *
 * The numeric values of enum luo_state and enum luo_event are the kernel's
 * ABI values: they go into and come out of the GET_STATE / SET_EVENT ioctls
 * unchanged. The strings are exactly the enum strings of api/openapi.yaml.
 * Pure functions, no state, callable from any thread.
 */
#pragma once

#include <stdbool.h>

enum luo_state {
        LUO_STATE_UNDEFINED = 0,
        LUO_STATE_NORMAL = 1,
        LUO_STATE_PREPARED = 2,
        LUO_STATE_FROZEN = 3,
        LUO_STATE_UPDATED = 4,
        _LUO_STATE_MAX,
};

enum luo_event {
        LUO_EVENT_PREPARE = 0,
        LUO_EVENT_FREEZE = 1,
        LUO_EVENT_FINISH = 2,
        LUO_EVENT_CANCEL = 3,
        _LUO_EVENT_MAX,
};

/* "normal", ...; NULL for out-of-range values. */
const char *luo_state_to_string(enum luo_state s);
/* Returns the state (>= 0) or -EINVAL. Accepts a trailing newline (sysfs). */
int luo_state_from_string(const char *s);
/* Like luo_state_from_string() but for a buffer that is not NUL-terminated. */
int luo_state_from_buf(const char *buf, unsigned long len);

const char *luo_event_to_string(enum luo_event e);
int luo_event_from_string(const char *s);

/*
 * The kernel's SET_EVENT rules: PREPARE only from NORMAL, FINISH only from
 * UPDATED, CANCEL from PREPARED or FROZEN, FREEZE never (only the reboot call
 * freezes). Returns 0 and the target state, or -EINVAL exactly where the
 * kernel answers EINVAL.
 */
int luo_state_apply_event(enum luo_state from, enum luo_event ev, enum luo_state *ret_to);
