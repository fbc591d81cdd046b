/*
 * hooks.c: workload hooks (docs/hooks.md). The runner: scan DIR/<phase>.d,
 * spawn each hook with a clean environment and no inherited fd in its own
 * process group, keep the tail of its output, enforce the timeout on the
 * whole group. The glue: run a phase for an operation and journal one "hook"
 * record per hook; keep the post-update (health check) result.
 *
 * Threads: the worker (phases of an operation) and the main thread at
 * start-up (post-update after reconciliation). Never MHD's thread: a hook
 * blocks for up to its timeout. Takes agent.lock only to read the document
 * and to append records, never across a hook.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "hooks.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"

static const char *const phase_names[_HOOK_PHASE_MAX] = {
        [HOOK_PRE_PREPARE] = "pre-prepare", [HOOK_POST_PREPARE] = "post-prepare",
        [HOOK_PRE_REBOOT] = "pre-reboot",   [HOOK_POST_UPDATE] = "post-update",
        [HOOK_PRE_FINISH] = "pre-finish",   [HOOK_POST_FINISH] = "post-finish",
        [HOOK_ON_CANCEL] = "on-cancel",
};

const char *hook_phase_to_string(enum hook_phase p)
{
        return (unsigned)p < _HOOK_PHASE_MAX ? phase_names[p] : NULL;
}

int hook_phase_from_string(const char *s)
{
        for (int i = 0; s && i < _HOOK_PHASE_MAX; i++)
                if (strcmp(phase_names[i], s) == 0)
                        return i;
        return -EINVAL;
}

bool hook_result_ok(const struct hook_result *r)
{
        return r->spawn_error == 0 && !r->timed_out && r->signal == 0 && r->exit_code == 0;
}

void hook_result_done(struct hook_result *r)
{
        if (r) {
                free(r->output);
                r->output = NULL;
                r->output_len = 0;
        }
}

char **hooks_names_free(char **names)
{
        for (size_t i = 0; names && names[i]; i++)
                free(names[i]);
        free(names);
        return NULL;
}

static bool ends_with(const char *s, const char *suffix)
{
        size_t n = strlen(s), m = strlen(suffix);
        return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Left behind by editors and package managers: never a hook, never worth a warning. */
static bool name_ignored(const char *n)
{
        return n[0] == '.' || n[0] == '#' || ends_with(n, "~") || strstr(n, ".dpkg-") ||
               ends_with(n, ".rpmnew") || ends_with(n, ".rpmsave") || ends_with(n, ".rpmorig") ||
               ends_with(n, ".swp");
}

static bool owner_ok(uid_t uid)
{
        return uid == 0 || uid == geteuid();
}

static int cmp_names(const void *x, const void *y)
{
        return strcmp(*(char *const *)x, *(char *const *)y);
}

int hooks_scan(const char *dir, enum hook_phase phase, char ***ret_names, size_t *ret_n)
{
        char path[4096];
        char **names = NULL;
        size_t n = 0;
        struct stat st;
        struct dirent *de;
        DIR *d;
        int dfd, r;

        r = snprintf(path, sizeof(path), "%s/%s.d", dir, hook_phase_to_string(phase));
        if (r < 0 || (size_t)r >= sizeof(path))
                return -ENAMETOOLONG;
        names = calloc(1, sizeof(*names));
        if (!names)
                return -ENOMEM;
        dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0) {
                r = -errno;
                if (r == -ENOENT) {
                        *ret_names = names;
                        *ret_n = 0;
                        return 0;
                }
                hooks_names_free(names);
                return log_warning_errno(r, "Hooks: cannot open %s: %m", path);
        }
        if (fstat(dfd, &st) < 0 || !owner_ok(st.st_uid) || (st.st_mode & 022)) {
                log_warning("Hooks: %s is writable by group or others, or not owned by root or "
                            "uid %u: its hooks are refused",
                            path, (unsigned)geteuid());
                close(dfd);
                hooks_names_free(names);
                return -EPERM;
        }
        d = fdopendir(dfd);
        if (!d) {
                r = -errno;
                close(dfd);
                hooks_names_free(names);
                return r;
        }
        while ((errno = 0, de = readdir(d))) {
                const char *nm = de->d_name;
                char **nn;

                if (name_ignored(nm))
                        continue;
                if (strlen(nm) > HOOK_NAME_MAX) {
                        log_warning("Hooks: %s/%.32s...: name too long, ignored", path, nm);
                        continue;
                }
                /* Symlinks are followed (run-parts does too): the target is what runs. */
                if (fstatat(dfd, nm, &st, 0) < 0) {
                        log_warning_errno(errno, "Hooks: %s/%s: %m, ignored", path, nm);
                        continue;
                }
                if (S_ISDIR(st.st_mode))
                        continue;
                if (!S_ISREG(st.st_mode)) {
                        log_warning("Hooks: %s/%s is not a regular file, ignored", path, nm);
                        continue;
                }
                if (!(st.st_mode & 0111) || faccessat(dfd, nm, X_OK, AT_EACCESS) < 0) {
                        log_warning("Hooks: %s/%s is not executable, ignored", path, nm);
                        continue;
                }
                if (st.st_mode & 022) {
                        log_warning("Hooks: %s/%s is writable by group or others (mode %04o), "
                                    "ignored",
                                    path, nm, (unsigned)(st.st_mode & 07777));
                        continue;
                }
                if (!owner_ok(st.st_uid)) {
                        log_warning("Hooks: %s/%s is owned by uid %u, not root or uid %u, "
                                    "ignored",
                                    path, nm, (unsigned)st.st_uid, (unsigned)geteuid());
                        continue;
                }
                if (n >= HOOKS_PER_PHASE_MAX) {
                        log_warning("Hooks: more than %d hooks in %s, %s and later ignored",
                                    HOOKS_PER_PHASE_MAX, path, nm);
                        continue;
                }
                nn = realloc(names, (n + 2) * sizeof(*names));
                if (!nn)
                        goto oom;
                names = nn;
                names[n] = strdup(nm);
                if (!names[n])
                        goto oom;
                names[++n] = NULL;
        }
        closedir(d);
        qsort(names, n, sizeof(*names), cmp_names);
        *ret_names = names;
        *ret_n = n;
        return 0;
oom:
        closedir(d);
        hooks_names_free(names);
        return -ENOMEM;
}

/* ---- the runner ------------------------------------------------------------ */

static uint64_t ms_since(uint64_t start_usec)
{
        return (now_mono_usec() - start_usec) / 1000;
}

/*
 * The tail of a byte stream: a ring of cap bytes. Everything is read (the
 * pipe must drain or the hook blocks), only the last cap bytes stay.
 */
struct tail {
        char *buf;
        size_t cap, head, len;
        uint64_t total;
};

static void tail_add(struct tail *t, const char *p, size_t n)
{
        t->total += n;
        if (t->cap == 0)
                return;
        if (n >= t->cap) {
                memcpy(t->buf, p + n - t->cap, t->cap);
                t->head = 0;
                t->len = t->cap;
                return;
        }
        for (size_t i = 0; i < n; i++) {
                t->buf[(t->head + t->len) % t->cap] = p[i];
                if (t->len < t->cap)
                        t->len++;
                else
                        t->head = (t->head + 1) % t->cap;
        }
}

/*
 * Valid UTF-8 only, for JSON: invalid bytes (a sequence cut by the tail's
 * start, binary output) and control characters other than \n and \t become
 * '?'. Returns the number of bytes written to out (at most n).
 */
static size_t utf8_sanitize(const unsigned char *in, size_t n, char *out)
{
        size_t i = 0, o = 0;

        while (i < n) {
                unsigned char c = in[i];
                size_t len = 0;
                uint32_t cp = 0, min = 0;

                if (c < 0x80) {
                        out[o++] =
                                (c < 0x20 && c != '\n' && c != '\t') || c == 0x7f ? '?' : (char)c;
                        i++;
                        continue;
                }
                if ((c & 0xe0) == 0xc0)
                        len = 2, cp = c & 0x1f, min = 0x80;
                else if ((c & 0xf0) == 0xe0)
                        len = 3, cp = c & 0x0f, min = 0x800;
                else if ((c & 0xf8) == 0xf0)
                        len = 4, cp = c & 0x07, min = 0x10000;
                bool ok = len > 0 && i + len <= n;
                for (size_t k = 1; ok && k < len; k++) {
                        if ((in[i + k] & 0xc0) != 0x80)
                                ok = false;
                        else
                                cp = (cp << 6) | (in[i + k] & 0x3f);
                }
                if (ok && (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)))
                        ok = false;
                if (!ok) {
                        out[o++] = '?';
                        i++;
                        continue;
                }
                memcpy(out + o, in + i, len);
                o += len;
                i += len;
        }
        return o;
}

static int tail_take(struct tail *t, char **ret, size_t *ret_len)
{
        _cleanup_free_ unsigned char *lin = malloc(t->len + 1);
        char *out = malloc(t->len + 1);

        if (!lin || !out) {
                free(out);
                return -ENOMEM;
        }
        for (size_t i = 0; i < t->len; i++)
                lin[i] = (unsigned char)t->buf[(t->head + i) % t->cap];
        *ret_len = utf8_sanitize(lin, t->len, out);
        out[*ret_len] = 0;
        *ret = out;
        return 0;
}

static void sleep_ms(uint64_t ms)
{
        struct timespec ts = { .tv_sec = (time_t)(ms / 1000),
                               .tv_nsec = (long)(ms % 1000) * 1000000 };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/* Reap pid within ms; true when it was reaped (status in *st). */
static bool reap_within(pid_t pid, uint64_t ms, int *st)
{
        uint64_t start = now_mono_usec();

        for (;;) {
                pid_t w = waitpid(pid, st, WNOHANG);
                if (w == pid || (w < 0 && errno != EINTR))
                        return w == pid;
                if (ms_since(start) >= ms)
                        return false;
                sleep_ms(10);
        }
}

static int spawn_hook(const char *path, char *const envp[], int out_fd, pid_t *ret_pid)
{
        posix_spawn_file_actions_t fa;
        posix_spawnattr_t at;
        sigset_t none, all;
        char *const argv[] = { (char *)path, NULL };
        int r;

        sigemptyset(&none);
        sigfillset(&all);
        r = posix_spawn_file_actions_init(&fa);
        if (r)
                return -r;
        r = posix_spawnattr_init(&at);
        if (r) {
                posix_spawn_file_actions_destroy(&fa);
                return -r;
        }
        /* stdin /dev/null, stdout and stderr the pipe, nothing else, cwd "/". */
        if (!(r = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0)) &&
            !(r = posix_spawn_file_actions_adddup2(&fa, out_fd, 1)) &&
            !(r = posix_spawn_file_actions_adddup2(&fa, out_fd, 2)) &&
            !(r = posix_spawn_file_actions_addclosefrom_np(&fa, 3)) &&
            !(r = posix_spawn_file_actions_addchdir_np(&fa, "/")) &&
            /* Own process group (the timeout kills it whole); signals as a new program expects:
             * the agent blocks SIGTERM/SIGHUP and ignores SIGPIPE, a hook must not inherit that. */
            !(r = posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                                        POSIX_SPAWN_SETSIGDEF)) &&
            !(r = posix_spawnattr_setpgroup(&at, 0)) &&
            !(r = posix_spawnattr_setsigmask(&at, &none)) &&
            !(r = posix_spawnattr_setsigdefault(&at, &all)))
                r = posix_spawn(ret_pid, path, &fa, &at, argv, envp);
        posix_spawnattr_destroy(&at);
        posix_spawn_file_actions_destroy(&fa);
        return -r;
}

int hook_run(const char *path, const char *name, const struct hook_env *env, uint64_t timeout_ms,
             size_t output_max, struct hook_result *ret)
{
        char e_phase[64], e_index[48], e_op[OP_ID_MAX + 32], e_kernel[4200], e_boot[64];
        char *const envp[] = { e_phase,  e_index, e_op,
                               e_kernel, e_boot,  "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                               NULL };
        struct tail t = { .cap = output_max };
        uint64_t start = now_mono_usec();
        int pfd[2] = { -1, -1 }, st = 0, r;
        bool reaped = false, eof = false;
        uint64_t exited_usec = 0;
        pid_t pid;

        *ret = (struct hook_result){ .exit_code = -1 };
        snprintf(ret->name, sizeof(ret->name), "%s", name);
        snprintf(e_phase, sizeof(e_phase), "LUOFLEET_PHASE=%s", hook_phase_to_string(env->phase));
        snprintf(e_index, sizeof(e_index), "LUOFLEET_INDEX=%llu", (unsigned long long)env->index);
        snprintf(e_op, sizeof(e_op), "LUOFLEET_OPERATION_ID=%s",
                 env->operation_id ? env->operation_id : "");
        snprintf(e_kernel, sizeof(e_kernel), "LUOFLEET_TARGET_KERNEL=%s",
                 env->target_kernel ? env->target_kernel : "");
        snprintf(e_boot, sizeof(e_boot), "LUOFLEET_BOOT_ID=%s", env->boot_id ? env->boot_id : "");

        if (output_max) {
                t.buf = malloc(output_max);
                if (!t.buf)
                        return -ENOMEM;
        }
        if (pipe2(pfd, O_CLOEXEC) < 0) {
                r = -errno;
                free(t.buf);
                return r;
        }
        r = spawn_hook(path, envp, pfd[1], &pid);
        close(pfd[1]);
        if (r < 0) {
                close(pfd[0]);
                free(t.buf);
                ret->spawn_error = r;
                ret->duration_ms = ms_since(start);
                ret->output = strdup("");
                return ret->output ? 0 : -ENOMEM;
        }

        /*
         * Read until EOF and the hook exited. A background child may keep the
         * pipe open after the hook exited: HOOK_DRAIN_MS more, then stop reading
         * (the child is the hook's business, it is not killed).
         */
        while (!(eof && reaped)) {
                uint64_t el = ms_since(start);
                if (el >= timeout_ms) {
                        /* (an exited hook whose child holds the pipe is not late itself) */
                        ret->timed_out = !reaped;
                        break;
                }
                if (reaped && ms_since(exited_usec) >= HOOK_DRAIN_MS)
                        break;
                if (!reaped) {
                        pid_t w = waitpid(pid, &st, WNOHANG);
                        if (w == pid) {
                                reaped = true;
                                exited_usec = now_mono_usec();
                                continue;
                        }
                }
                if (eof) {
                        sleep_ms(MIN((uint64_t)10, timeout_ms - el));
                        continue;
                }
                struct pollfd p = { .fd = pfd[0], .events = POLLIN };
                int n = poll(&p, 1, (int)MIN((uint64_t)20, timeout_ms - el));
                if (n < 0 && errno != EINTR)
                        break;
                if (n > 0) {
                        char buf[4096];
                        ssize_t k = read(pfd[0], buf, sizeof(buf));
                        if (k > 0)
                                tail_add(&t, buf, (size_t)k);
                        else if (k == 0 || (errno != EINTR && errno != EAGAIN))
                                eof = true;
                }
        }
        if (ret->timed_out && !reaped) {
                (void)kill(-pid, SIGTERM);
                reaped = reap_within(pid, HOOK_KILL_GRACE_MS, &st);
                (void)kill(-pid, SIGKILL);
                if (!reaped)
                        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                                ;
                reaped = true;
        } else if (!reaped)
                /* poll() failed: the pipe is given up, the exit status is not */
                while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                        ;
        close(pfd[0]);

        if (WIFEXITED(st))
                ret->exit_code = WEXITSTATUS(st);
        else if (WIFSIGNALED(st))
                ret->signal = WTERMSIG(st);
        ret->duration_ms = ms_since(start);
        ret->output_total = t.total;
        r = tail_take(&t, &ret->output, &ret->output_len);
        free(t.buf);
        return r;
}

void hook_result_describe(const struct hook_result *r, char *buf, size_t size)
{
        char eb[16];

        if (r->spawn_error)
                snprintf(buf, size, "could not be started (%s)", errno_name(r->spawn_error, eb));
        else if (r->timed_out)
                snprintf(buf, size, "timed out after %llu ms", (unsigned long long)r->duration_ms);
        else if (r->signal)
                snprintf(buf, size, "killed by SIG%s",
                         sigabbrev_np(r->signal) ? sigabbrev_np(r->signal) : "?");
        else
                snprintf(buf, size, "exit status %d", r->exit_code);
}

/* ---- agent glue ------------------------------------------------------------ */

static json_t *signal_json(int sig)
{
        const char *s = sig ? sigabbrev_np(sig) : NULL;
        char buf[32];

        if (!sig)
                return json_null();
        snprintf(buf, sizeof(buf), "SIG%s", s ? s : "UNKNOWN");
        return json_string(buf);
}

json_t *hooks_problem_extra(enum hook_phase phase, const struct hook_result *r)
{
        json_t *o = json_pack("{s:s, s:s, s:o, s:o, s:b, s:s}", "hook", r->name, "phase",
                              hook_phase_to_string(phase), "exit_code",
                              r->exit_code >= 0 ? json_integer(r->exit_code) : json_null(),
                              "signal", signal_json(r->signal), "timed_out", r->timed_out,
                              "output_tail", r->output ? r->output : "");
        return o;
}

static json_t *hook_record(enum hook_phase phase, const struct hook_result *r, const char *op_id)
{
        json_t *rec = hooks_problem_extra(phase, r);

        if (!rec)
                return NULL;
        json_object_set_new(rec, "duration_ms", json_integer((json_int_t)r->duration_ms));
        json_object_set_new(rec, "output_bytes", json_integer((json_int_t)r->output_total));
        if (op_id && op_id[0])
                json_object_set_new(rec, "operation_id", json_string(op_id));
        return rec;
}

static void hook_env_locked(struct agent *a, enum hook_phase phase, char *kernel, size_t size,
                            uint64_t *ret_index)
{
        const char *k = NULL;

        /* Before the jump, the kernel that will run; from post-update on, the one running. */
        if (phase == HOOK_PRE_PREPARE || phase == HOOK_POST_PREPARE || phase == HOOK_PRE_REBOOT ||
            phase == HOOK_ON_CANCEL)
                k = json_string_value(
                        json_object_get(json_object_get(a->staged, "kernel"), "path"));
        else
                k = a->info.release;
        snprintf(kernel, size, "%s", k ? k : "");
        *ret_index = a->index;
}

int hooks_check(const char *dir, char *msg, size_t size)
{
        struct stat st;
        int dfd;

        if (!dir)
                return 0;
        /* The tree as this process sees it (the network side, after the drop): what it
         * cannot read, it cannot run. */
        dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0) {
                int r = -errno;
                if (r == -EACCES)
                        snprintf(msg, size,
                                 "--hooks-dir=%s: %s (this process, uid %u, cannot read it: "
                                 "make it readable and searchable for that user)",
                                 dir, strerror(-r), (unsigned)geteuid());
                else
                        snprintf(msg, size, "--hooks-dir=%s: %s", dir, strerror(-r));
                return r;
        }
        if (fstat(dfd, &st) < 0 || !owner_ok(st.st_uid) || (st.st_mode & 022)) {
                snprintf(msg, size,
                         "--hooks-dir=%s is writable by group or others, or not owned by root or "
                         "uid %u",
                         dir, (unsigned)geteuid());
                close(dfd);
                return -EPERM;
        }
        close(dfd);
        for (int p = 0; p < _HOOK_PHASE_MAX; p++) {
                char **names = NULL;
                size_t n = 0;
                int r = hooks_scan(dir, (enum hook_phase)p, &names, &n);
                hooks_names_free(names);
                if (r < 0) {
                        snprintf(msg, size, "%s/%s.d: %s: its hooks cannot run", dir,
                                 hook_phase_to_string((enum hook_phase)p),
                                 r == -EPERM ? "writable by group or others, or not owned by "
                                               "root or this user"
                                             : strerror(-r));
                        return r;
                }
        }
        return 0;
}

int hooks_phase(struct agent *a, enum hook_phase phase, const char *op_id, bool stop_on_failure,
                struct hook_result *ret_failed)
{
        const struct agent_config *cfg = a->cfg;
        const char *pname = hook_phase_to_string(phase);
        char **names = NULL;
        size_t n = 0;
        int r;

        if (!cfg || !cfg->hooks_dir)
                return 0;
        r = hooks_scan(cfg->hooks_dir, phase, &names, &n);
        if (r < 0)
                return r; /* fail closed: a phase whose hooks cannot be read is not passed */
        for (size_t i = 0; i < n; i++) {
                char path[4096], kernel[4096], what[96];
                struct hook_result hr;
                struct hook_env env = { .phase = phase,
                                        .operation_id = op_id,
                                        .target_kernel = kernel,
                                        .boot_id = a->info.boot_id };
                uint64_t idx;

                agent_lock(a);
                hook_env_locked(a, phase, kernel, sizeof(kernel), &env.index);
                agent_unlock(a);
                r = snprintf(path, sizeof(path), "%s/%s.d/%s", cfg->hooks_dir, pname, names[i]);
                if (r < 0 || (size_t)r >= sizeof(path))
                        continue;
                log_info("Hook %s/%s running%s%s", pname, names[i],
                         op_id && op_id[0] ? " for " : "", op_id ? op_id : "");
                r = hook_run(path, names[i], &env, cfg->hook_timeout_ms, cfg->hook_output_max, &hr);
                if (r < 0) {
                        hooks_names_free(names);
                        return log_error_errno(r, "Hook %s/%s: the runner failed: %m", pname,
                                               names[i]);
                }
                hook_result_describe(&hr, what, sizeof(what));
                if (hook_result_ok(&hr))
                        log_info("Hook %s/%s succeeded in %llu ms", pname, names[i],
                                 (unsigned long long)hr.duration_ms);
                else
                        log_warning("Hook %s/%s failed: %s", pname, names[i], what);

                agent_lock(a);
                json_t *rec = hook_record(phase, &hr, op_id);
                if (rec)
                        agent_record_hook_locked(a, rec);
                idx = a->index;
                agent_unlock(a);
                agent_notify_index(a, idx);

                if (!hook_result_ok(&hr) && stop_on_failure) {
                        hooks_names_free(names);
                        *ret_failed = hr;
                        return 1;
                }
                hook_result_done(&hr);
        }
        hooks_names_free(names);
        return 0;
}

void hooks_post_update(struct agent *a, const char *op_id)
{
        struct hook_result hr = { 0 };
        json_t *failing = NULL;
        int r;

        r = hooks_phase(a, HOOK_POST_UPDATE, op_id, true, &hr);
        if (r > 0) {
                failing = hooks_problem_extra(HOOK_POST_UPDATE, &hr);
                hook_result_done(&hr);
        } else if (r < 0)
                failing = json_pack("{s:s, s:s, s:n, s:n, s:b, s:s}", "hook", "(runner)", "phase",
                                    "post-update", "exit_code", "signal", "timed_out", false,
                                    "output_tail", "the hook runner failed");
        agent_lock(a);
        json_decref(a->hooks_failing);
        a->hooks_failing = failing;
        agent_unlock(a);
}

bool hooks_health(struct agent *a, char *detail, size_t size)
{
        bool ok;

        agent_lock(a);
        ok = a->hooks_failing == NULL;
        if (ok)
                snprintf(detail, size, "%s",
                         a->cfg && a->cfg->hooks_dir ? "no post-update hook is failing"
                                                     : "no hooks directory");
        else {
                json_t *f = a->hooks_failing;
                json_t *ec = json_object_get(f, "exit_code");
                const char *sig = json_string_value(json_object_get(f, "signal"));
                char how[48];
                if (json_is_true(json_object_get(f, "timed_out")))
                        snprintf(how, sizeof(how), "timed out");
                else if (sig)
                        snprintf(how, sizeof(how), "killed by %s", sig);
                else
                        snprintf(how, sizeof(how), "exit status %lld",
                                 (long long)json_integer_value(ec));
                snprintf(detail, size,
                         "post-update hook %s failed (%s): finish refused without "
                         "force",
                         json_string_value(json_object_get(f, "hook")), how);
        }
        agent_unlock(a);
        return ok;
}
