/*
 * hooks.h: workload hooks (docs/hooks.md): executables in
 * --hooks-dir=DIR/<phase>.d/ run in lexical order around the actions.
 *
 * The runner (hooks_scan, hook_run) is pure: no agent, no lock, unit-tested
 * on its own. The agent glue (hooks_phase, hooks_post_update*) runs a phase
 * for an operation and journals one "hook" record per hook; it runs on the
 * worker thread (pre-* before the kernel call, post-* after), or on the main
 * thread at start-up for post-update (before any other thread serves).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct agent;

enum hook_phase {
        HOOK_PRE_PREPARE,
        HOOK_POST_PREPARE,
        HOOK_PRE_REBOOT,
        HOOK_POST_UPDATE,
        HOOK_PRE_FINISH,
        HOOK_POST_FINISH,
        HOOK_ON_CANCEL,
        _HOOK_PHASE_MAX,
};

const char *hook_phase_to_string(enum hook_phase p);
int hook_phase_from_string(const char *s);

/* After SIGTERM to a timed-out hook's process group, SIGKILL this much later. */
#define HOOK_KILL_GRACE_MS 2000
/* After a hook exited, how long its output pipe may stay open (a background child). */
#define HOOK_DRAIN_MS 1000
#define HOOK_NAME_MAX 255
/* Hooks per phase directory: more are refused (logged). */
#define HOOKS_PER_PHASE_MAX 256

/* The five variables passed to a hook (and PATH), nothing else. */
struct hook_env {
        enum hook_phase phase;
        uint64_t index;           /* the state document's index before the hook */
        const char *operation_id; /* "" = none (post-update at start-up) */
        const char *target_kernel;
        const char *boot_id;
};

struct hook_result {
        char name[HOOK_NAME_MAX + 1];
        int exit_code; /* -1 when killed by a signal or not run */
        int signal;    /* 0 = not killed */
        bool timed_out;
        int spawn_error; /* -errno when it could not be started, else 0 */
        uint64_t duration_ms;
        char *output; /* the tail, sanitized UTF-8, NUL-terminated; owned */
        size_t output_len;
        uint64_t output_total; /* bytes the hook wrote, kept or not */
};

bool hook_result_ok(const struct hook_result *r);
void hook_result_done(struct hook_result *r);

/*
 * The hooks of DIR/<phase>.d: regular executable files owned by root or
 * this process's user, not group/world-writable, sorted by name (strcmp).
 * Dotfiles and editor/package-manager leftovers (`*~`, `#*#`, `*.dpkg-*`,
 * `*.rpmnew`, `*.rpmsave`, `*.swp`) are skipped silently; anything else that
 * does not qualify is skipped with a warning. A missing directory is no
 * hooks. A phase directory writable by group/others or owned by someone else
 * is refused as a whole (warning, no hooks, -EPERM). *ret_names: a
 * NULL-terminated array of malloc'ed names (free with hooks_names_free).
 */
int hooks_scan(const char *dir, enum hook_phase phase, char ***ret_names, size_t *ret_n);
/*
 * The hooks tree, checked as this process sees it: dir (NULL: no hooks) can be opened, is
 * not writable by group or others, and every existing <phase>.d can be read. 0, or a
 * negative errno with msg saying what is wrong and where. At start-up (refused: a
 * configuration error) and, through hooks_phase(), before each phase.
 */
int hooks_check(const char *dir, char *msg, size_t size);
char **hooks_names_free(char **names);

/*
 * Run one hook (path) with env, a clean environment, stdin /dev/null,
 * stdout+stderr into one pipe of which the last output_max bytes are kept,
 * no other fd, its own process group. timeout_ms: SIGTERM to the group,
 * SIGKILL after HOOK_KILL_GRACE_MS. Blocks. Returns 0 with *ret filled
 * (also when the hook failed: see hook_result_ok), -errno when the runner
 * itself failed (no pipe, no memory).
 */
int hook_run(const char *path, const char *name, const struct hook_env *env, uint64_t timeout_ms,
             size_t output_max, struct hook_result *ret);

/* "exit status 3", "killed by SIGKILL", "timed out after 5000 ms", ... */
void hook_result_describe(const struct hook_result *r, char *buf, size_t size);

/* ---- agent glue ---------------------------------------------------------- */

/*
 * Run a phase for an operation (op_id "" = none): each hook journaled (kind
 * "hook"), index moved, listeners notified. With stop_on_failure, the first
 * failing hook ends the phase and is returned in *ret_failed (caller calls
 * hook_result_done); returns 1 then, 0 when every hook succeeded (or there
 * are none), -errno on an internal failure or when the phase's directory
 * cannot be read (fail closed: hooks_check() says why). Without
 * stop_on_failure every hook runs and failures are only logged and journaled
 * (returns 0, or that -errno when the directory cannot be read).
 */
int hooks_phase(struct agent *a, enum hook_phase phase, const char *op_id, bool stop_on_failure,
                struct hook_result *ret_failed);

/*
 * The problem members of a failed hook: {"hook", "phase", "exit_code" |
 * "signal", "timed_out", "output_tail"}.
 */
json_t *hooks_problem_extra(enum hook_phase phase, const struct hook_result *r);

/*
 * post-update (the host's health checks): run the phase, keep the result in
 * the agent (a->hooks_health). Any thread but MHD's; takes agent.lock briefly.
 */
void hooks_post_update(struct agent *a, const char *op_id);
/* For /readyz and finish: true when no post-update hook is failing; detail says which. */
bool hooks_health(struct agent *a, char *detail, size_t size);
