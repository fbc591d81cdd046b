/*
 * main.c: luofleet-agent's process: flags, signals, the state directory and
 * its lock, the backend, the journal, reconciliation, the HTTP server, and
 * the orderly stop. Signals are blocked in every thread and read from a
 * signalfd here, so no code runs in a signal handler.
 *
 * Privilege separation (docs/privsep.md): before any thread exists, the
 * privileged helper is forked (kernel/privsep.c) and the backend the agent
 * sees is its proxy; started as root, this process then loads the TLS
 * credentials and the tokens file and binds every listener (still root:
 * root-only files, ports below 1024), hands the state directory to the run
 * user (--user) and becomes that user, with no capabilities, before it
 * reads a journal record or a byte from the network. Later opens of those
 * files (SIGHUP) and of staged kernels go through the helper.
 *
 * The simulated kexec (--backend=sim) ends here too: sim_jump() re-executes
 * the agent in place (or exits), and with --sim-downtime the new image first
 * stays offline for that long (sim_downtime_wait()) before it binds again.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "auth.h"
#include "config.h"
#include "hooks.h"
#include "journal.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "luofleet/privsep.h"
#include "luofleet/util.h"
#include "notify.h"
#include "secfile.h"
#include "server.h"
#include "sessions.h"
#include <systemd/sd-daemon.h>

enum {
        EXIT_RUNTIME = 1,
        EXIT_USAGE = 2,
        EXIT_NO_BACKEND = 3,
        EXIT_BUSY = 4,
};

/* The run user when --user is not given: it must exist (no silent fallback to nobody). */
#define RUN_USER_DEFAULT "luofleet"
#define RUN_USER_FALLBACK "nobody"
/* How long the simulated kexec waits for the old helper to be gone. */
#define HELPER_STOP_MS 5000
/* How long a new helper retries a busy backend (its predecessor may still be exiting). */
#define HELPER_BUSY_RETRY_MS 3000
/*
 * --sim-downtime across the simulated kexec's re-execution: the CLOCK_MONOTONIC
 * microsecond at which the simulated machine is back up. Set by sim_jump() for
 * the new image only, taken (and removed from the environment, so hooks never
 * see it) by main() before any thread exists.
 */
#define SIM_DOWN_UNTIL_ENV "LUOFLEET_SIM_DOWN_UNTIL"

static struct agent_config cfg;
static struct server *the_server;
static struct backend *the_backend; /* set before any thread starts */
static pid_t helper_pid;
static uint64_t sim_down_until; /* SIM_DOWN_UNTIL_ENV, 0 = not coming from a downtime */

/*
 * The privileged helper is gone (killed, crashed) or broke the protocol
 * (privsep.h's lost hook; any thread). What was in flight has an unknown
 * outcome, so nothing more may be recorded: the process ends here, exit
 * status 1, as a crash would, and the next start reconciles the journal's
 * "running" operation with the kernel (never redoing it). An orderly stop
 * would have to let the worker record a result nobody knows.
 */
static void privsep_lost(void *userdata, const char *why)
{
        static atomic_flag once = ATOMIC_FLAG_INIT;
        char how[96] = "is gone";
        int status;

        (void)userdata;
        if (atomic_flag_test_and_set(&once))
                for (;;)
                        pause(); /* the first thread to notice ends the process */
        for (int i = 0; helper_pid > 0 && i < 200; i++) {
                pid_t w = waitpid(helper_pid, &status, WNOHANG);
                if (w == helper_pid) {
                        if (WIFSIGNALED(status))
                                snprintf(how, sizeof(how), "was killed by signal %d (%s)",
                                         WTERMSIG(status), strsignal(WTERMSIG(status)));
                        else if (WIFEXITED(status))
                                snprintf(how, sizeof(how), "exited with status %d",
                                         WEXITSTATUS(status));
                        break;
                }
                if (w < 0)
                        break;
                usleep(5000);
        }
        log_error("The privileged helper (pid %d) %s (%s): stopping now; the next start "
                  "reconciles with the kernel",
                  (int)helper_pid, how, why);
        exit_now(EXIT_RUNTIME);
}

/*
 * Before the simulated kexec: the old helper must be gone before the new
 * process forks its own, so two helpers never share the simulated kernel.
 */
static void sim_jump_stop_helper(void)
{
        if (privsep_is_proxy(the_backend))
                (void)privsep_proxy_stop(the_backend, HELPER_STOP_MS);
}

/* Is e ("NAME=VALUE") the environment variable name? */
static bool env_named(const char *e, const char *name)
{
        size_t n = strlen(name);

        return strncmp(e, name, n) == 0 && e[n] == '=';
}

/*
 * The simulated kexec (worker thread): the process ends like a kernel would.
 * The new image gets the same flags, with every --listen replaced by the
 * address actually bound, so a port chosen by the kernel (port 0) survives.
 *
 * With --sim-downtime=DURATION the machine goes down for real: the
 * listening sockets are not handed on, so execve() closes them with every
 * connection (all O_CLOEXEC), and the new image sleeps through the rest of
 * the downtime (sim_downtime_wait()) before it binds its --listen addresses
 * again (SO_REUSEADDR: at once, despite the old connections' TIME_WAIT).
 * Sleeping in the new image rather than in this one is what a kexec is:
 * every thread of the old boot gone at one instant, none left to answer,
 * journal or notice the helper's absence while the machine is down.
 */
static void sim_jump(void *userdata)
{
        static char specs[CONFIG_MAX_LISTEN][160], flags[CONFIG_MAX_LISTEN][200];
        static char fds_env[64 + CONFIG_MAX_LISTEN * 16];
        static char *argv[512], *envp[512];
        bool down = cfg.sim_downtime_ms > 0;
        size_t n = 0, m = 0, len;

        (void)userdata;
        sim_jump_stop_helper();
        if (cfg.sim_reboot == SIM_REBOOT_EXIT) {
                log_notice("Simulated kexec: exiting for the supervisor to start the new boot");
                exit_now(0);
        }
        if (cfg.sim_downtime_ms == SIM_DOWNTIME_NEVER) {
                log_notice("Simulated kexec with --sim-downtime=never: the machine does not come "
                           "back; exiting");
                exit_now(0);
        }
        for (char **p = cfg.argv; *p && n < ELEMENTSOF(argv) - CONFIG_MAX_LISTEN - 1; p++) {
                if (p != cfg.argv && strcmp(*p, "--listen") == 0 && p[1]) {
                        p++;
                        continue;
                }
                if (p != cfg.argv && strncmp(*p, "--listen=", 9) == 0)
                        continue;
                argv[n++] = *p;
        }
        for (unsigned i = 0; the_server && i < CONFIG_MAX_LISTEN; i++) {
                if (server_listen_spec(the_server, i, specs[i], sizeof(specs[i])) < 0)
                        break;
                snprintf(flags[i], sizeof(flags[i]), "--listen=%.159s", specs[i]);
                argv[n++] = flags[i];
        }
        argv[n] = NULL;
        /*
         * The listening sockets themselves go along (SERVER_LISTEN_FDS_ENV): the
         * re-executed process is the run user's and may not bind them again (a
         * port below 1024, a Unix socket in a root-only directory). --listen
         * still names each, should one not be taken. Not after a downtime: the
         * machine was off, nothing survived it (the new process binds anew).
         */
        if (down)
                len = (size_t)snprintf(
                        fds_env, sizeof(fds_env), "%s=%llu", SIM_DOWN_UNTIL_ENV,
                        (unsigned long long)(now_mono_usec() + cfg.sim_downtime_ms * 1000));
        else
                len = (size_t)snprintf(fds_env, sizeof(fds_env), "%s=", SERVER_LISTEN_FDS_ENV);
        for (unsigned i = 0; !down && the_server && i < CONFIG_MAX_LISTEN; i++) {
                int fd = server_listen_fd(the_server, i);
                int k;
                if (fd < 0 || fcntl(fd, F_SETFD, 0) < 0)
                        continue;
                k = snprintf(fds_env + len, sizeof(fds_env) - len, "%s%u:%d",
                             fds_env[len - 1] == '=' ? "" : ",", i, fd);
                if (k < 0 || (size_t)k >= sizeof(fds_env) - len)
                        break;
                len += (size_t)k;
        }
        envp[m++] = fds_env;
        for (char **e = environ; *e && m < ELEMENTSOF(envp) - 1; e++)
                if (!env_named(*e, SERVER_LISTEN_FDS_ENV) && !env_named(*e, SIM_DOWN_UNTIL_ENV))
                        envp[m++] = *e;
        envp[m] = NULL;
        if (down)
                log_notice("Simulated kexec: the machine goes down for %llu ms, every listener "
                           "and connection closed; re-executing the agent",
                           (unsigned long long)cfg.sim_downtime_ms);
        else
                log_notice("Simulated kexec: re-executing the agent");
        leak_check_now();
        execve("/proc/self/exe", argv, envp);
        log_error_errno(errno, "Failed to re-execute /proc/self/exe: %m; exiting instead");
        _exit(0);
}

/* main(), before any thread: SIM_DOWN_UNTIL_ENV, which sim_jump() left for this image. */
static void take_sim_down_until(void)
{
        const char *e = getenv(SIM_DOWN_UNTIL_ENV);
        uint64_t v;

        if (e && parse_u64(e, UINT64_MAX, &v) == 0)
                sim_down_until = v;
        (void)unsetenv(SIM_DOWN_UNTIL_ENV);
}

/*
 * The rest of a --sim-downtime, in the re-executed image, before anything is
 * opened or bound: nothing listens, so clients are refused. Never longer than
 * the configured downtime, whatever the environment says. SIGTERM, SIGINT and
 * SIGQUIT stop the agent cleanly meanwhile (returns 1); SIGHUP is ignored.
 * Returns 0 to go on booting, -errno on a failure.
 */
static int sim_downtime_wait(int sig_fd)
{
        uint64_t now = now_mono_usec(), until = sim_down_until;

        if (!until || cfg.backend.kind != BACKEND_SIM || !cfg.sim_downtime_ms ||
            cfg.sim_downtime_ms == SIM_DOWNTIME_NEVER)
                return 0;
        if (until > now + cfg.sim_downtime_ms * 1000)
                until = now + cfg.sim_downtime_ms * 1000;
        log_notice("Simulated kexec: the machine is down for another %llu ms",
                   (unsigned long long)(until > now ? (until - now) / 1000 : 0));
        while ((now = now_mono_usec()) < until) {
                struct pollfd p = { .fd = sig_fd, .events = POLLIN };
                struct signalfd_siginfo si;
                uint64_t left_ms = (until - now + 999) / 1000;
                int k = poll(&p, 1, (int)MIN(left_ms, (uint64_t)INT_MAX));

                if (k < 0 && errno != EINTR)
                        return log_error_errno(errno, "poll() failed: %m");
                if (k <= 0)
                        continue;
                if (read(sig_fd, &si, sizeof(si)) != (ssize_t)sizeof(si))
                        continue;
                if (si.ssi_signo == SIGHUP)
                        continue;
                log_info("Received %s while the simulated machine is down, stopping",
                         strsignal((int)si.ssi_signo));
                return 1;
        }
        log_notice("Simulated kexec: the machine is back up after its downtime");
        return 0;
}

static void raise_fd_limit(void)
{
        struct rlimit rl;

        /* Every suspended long-poll is a socket: take what we are allowed. */
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                (void)setrlimit(RLIMIT_NOFILE, &rl);
        }
}

static int open_state_dir(const char *path, int *ret_fd, int *ret_lock)
{
        _cleanup_close_ int dfd = -1, lfd = -1;
        int r;

        r = mkdir_p(path, 0700);
        if (r < 0)
                return log_error_errno(r, "Failed to create the state directory %s: %m", path);
        dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return log_error_errno(errno, "Failed to open the state directory %s: %m", path);
        lfd = openat(dfd, "agent.lock", O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (lfd < 0)
                return log_error_errno(errno, "Failed to open %s/agent.lock: %m", path);
        if (flock(lfd, LOCK_EX | LOCK_NB) < 0) {
                if (errno == EWOULDBLOCK)
                        return log_error_errno(
                                EBUSY, "another luofleet-agent uses the state directory %s", path);
                return log_error_errno(errno, "Failed to lock %s/agent.lock: %m", path);
        }
        *ret_fd = TAKE_FD(dfd);
        *ret_lock = TAKE_FD(lfd);
        return 0;
}

/*
 * The run user's ids (root only, before the helper is forked: it needs them
 * too). Returns 0 to drop, 1 when --user names root itself (an explicit
 * choice, for tests and debugging: the kernel calls are still separated, the
 * network process keeps root), -errno.
 */
static int resolve_run_user(uid_t *ret_uid, gid_t *ret_gid, char *name, size_t name_size)
{
        const char *want = cfg.run_user;
        struct passwd *pw;

        errno = 0;
        if (want) {
                uint64_t id;
                pw = getpwnam(want);
                /* --user takes a name or a numeric id (which must have a passwd entry). */
                if (!pw && parse_u64(want, UINT32_MAX - 1, &id) == 0) {
                        errno = 0;
                        pw = getpwuid((uid_t)id);
                }
        } else {
                want = RUN_USER_DEFAULT;
                pw = getpwnam(want);
                /*
                 * No silent fallback to nobody: an identity other daemons share could
                 * signal the network process or write its files. The user is created by the
                 * package (sysusers); elsewhere say which one.
                 */
                if (!pw)
                        return log_error_errno(errno ? errno : ENOENT,
                                               "No user %s on this host: refusing to run the "
                                               "network process as %s, an identity other "
                                               "daemons share. Create the user (systemd-sysusers "
                                               "luofleet.sysusers.conf, or useradd --system "
                                               "%s), or choose one with --user=NAME "
                                               "(--user=%s if you accept sharing it)",
                                               RUN_USER_DEFAULT, RUN_USER_FALLBACK,
                                               RUN_USER_DEFAULT, RUN_USER_FALLBACK);
        }
        /* Refused rather than staying root unasked: create the user, or choose one. */
        if (!pw)
                return log_error_errno(errno ? errno : ENOENT,
                                       "Cannot drop privileges: no user %s (create it, or pass "
                                       "--user=NAME; --user=root keeps root's privileges in the "
                                       "network process): %m",
                                       want);
        if (pw->pw_uid == 0) {
                if (!cfg.run_user)
                        return log_error_errno(EINVAL,
                                               "Refusing to run the network process "
                                               "as %s (uid 0): pass --user=NAME",
                                               want);
                log_warning("--user=%s: the network process keeps root's privileges; only the "
                            "kernel calls are separated",
                            want);
                return 1;
        }
        if (snprintf(name, name_size, "%s", pw->pw_name) >= (int)name_size)
                return log_error_errno(ENAMETOOLONG, "User name %s is too long", pw->pw_name);
        *ret_uid = pw->pw_uid;
        *ret_gid = pw->pw_gid;
        return 0;
}

/*
 * Hand the state directory (created by root, 0700, so every entry is ours)
 * to the run user: the directory, its files and its subdirectories (the
 * simulated kernel's), symlinks themselves, never followed.
 */
static int chown_tree(int dfd, uid_t uid, gid_t gid, unsigned depth)
{
        struct dirent *de;
        DIR *d;
        int fd, r = 0;

        /* The directory itself last: root without CAP_DAC_* (the systemd unit's
         * bounding set) cannot read a 0700 directory it has given away already. */
        fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                return negative_errno();
        d = fdopendir(fd);
        if (!d) {
                r = negative_errno();
                close(fd);
                return r;
        }
        while (r == 0 && (de = readdir(d))) {
                struct stat st;
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;
                if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
                        if (errno != ENOENT)
                                r = negative_errno();
                        continue;
                }
                /*
                 * Sockets are the helper's (sessions.sock, helper.sock): their owner and
                 * group say who may connect (--sessions-group), they stay as bound.
                 */
                if (S_ISSOCK(st.st_mode))
                        continue;
                if (S_ISDIR(st.st_mode) && depth < 8) {
                        int sub = openat(dirfd(d), de->d_name,
                                         O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                        if (sub < 0) {
                                r = negative_errno();
                                continue;
                        }
                        r = chown_tree(sub, uid, gid, depth + 1);
                        close(sub);
                } else if (fchownat(dirfd(d), de->d_name, uid, gid, AT_SYMLINK_NOFOLLOW) < 0 &&
                           errno != ENOENT)
                        r = negative_errno();
        }
        closedir(d);
        if (r == 0 && fchown(dfd, uid, gid) < 0)
                r = negative_errno();
        return r;
}

/*
 * Become the run user for good: groups, gid, uid (all three ids), then
 * prove it: setuid(0) must fail, and no capability may be left.
 */
static int drop_privileges(const char *user, uid_t uid, gid_t gid)
{
        struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
        struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};

        /* The user's own groups: --unix-group may name one of them (the socket's chown). */
        if (initgroups(user, gid) < 0)
                return log_error_errno(errno, "initgroups(%s) failed: %m", user);
        if (setresgid(gid, gid, gid) < 0)
                return log_error_errno(errno, "setresgid(%u) failed: %m", (unsigned)gid);
        if (setresuid(uid, uid, uid) < 0)
                return log_error_errno(errno, "setresuid(%u) failed: %m", (unsigned)uid);
        if (setuid(0) == 0 || errno != EPERM)
                return log_error_errno(EPERM, "Dropping privileges did not stick: setuid(0) "
                                              "still works");
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
                return log_error_errno(errno, "PR_SET_NO_NEW_PRIVS failed: %m");
        if (syscall(SYS_capget, &hdr, data) < 0)
                return log_error_errno(errno, "capget() failed: %m");
        for (unsigned i = 0; i < _LINUX_CAPABILITY_U32S_3; i++)
                if (data[i].effective || data[i].permitted || data[i].inheritable)
                        return log_error_errno(EPERM, "Capabilities left after dropping "
                                                      "privileges");
        return 0;
}

/*
 * secfile.h's opener (main thread) with privilege separation: the TLS files
 * and the tokens file are opened by the privileged helper, which knows them
 * by index since its start (as root first, then as the run user). At the
 * start, still root, this process opens them itself, and asks the helper
 * only when root is denied (the systemd unit's root has no
 * CAP_DAC_OVERRIDE: a tokens file the run user owns, mode 0600); after the
 * drop (SIGHUP) always the helper: this process may not read them.
 */
static int open_config_file(const char *path, void *userdata)
{
        const char *files[_PRIVSEP_CONFIG_MAX] = {
                [PRIVSEP_CONFIG_TLS_CERT] = cfg.tls_cert,
                [PRIVSEP_CONFIG_TLS_KEY] = cfg.tls_key,
                [PRIVSEP_CONFIG_TLS_CLIENT_CA] = cfg.tls_client_ca,
                [PRIVSEP_CONFIG_TOKENS] = cfg.tokens_file,
        };

        if (geteuid() == 0) {
                int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
                if (fd >= 0 || (errno != EACCES && errno != EPERM))
                        return fd >= 0 ? fd : -errno;
        }
        for (unsigned i = 0; path && i < _PRIVSEP_CONFIG_MAX; i++)
                if (files[i] && strcmp(files[i], path) == 0)
                        return privsep_proxy_open_config(userdata, (enum privsep_config_file)i);
        return -EPERM; /* not a configured file: never asked for */
}

/* What the helper may open or remove for this process: fixed now, named by index later. */
static void helper_files(struct privsep_files *f)
{
        *f = (struct privsep_files){
                .config = {
                        [PRIVSEP_CONFIG_TLS_CERT] = cfg.tls_cert,
                        [PRIVSEP_CONFIG_TLS_KEY] = cfg.tls_key,
                        [PRIVSEP_CONFIG_TLS_CLIENT_CA] = cfg.tls_client_ca,
                        [PRIVSEP_CONFIG_TOKENS] = cfg.tokens_file,
                },
                .staging_dirs = cfg.staging_dirs,
                .n_staging_dirs = cfg.n_staging_dirs,
                /* the helper checks signatures itself: a compromised network side cannot
                 * load an unsigned kernel under --require-signature */
                .trusted_keys_dir = cfg.trusted_keys_dir,
                .require_signature = cfg.require_signature,
        };
        for (unsigned i = 0; i < cfg.n_listen && i < PRIVSEP_MAX_SOCKETS; i++)
                if (cfg.listen[i].is_unix)
                        f->sockets[i] = cfg.listen[i].path;
}

/*
 * The session broker's settings (broker.h): the socket's group resolved, its
 * directory made (0755: workloads of other users must reach the socket, whose
 * own mode and group say who may connect). Returns 0 or an exit status.
 */
static int broker_settings(struct broker_config *bc)
{
        broker_config_init(bc);
        bc->max_clients = cfg.session_max_clients;
        bc->max_sessions_per_owner = cfg.session_max_per_owner;
        bc->max_fds_per_owner = cfg.session_max_fds_per_owner;
        bc->max_bytes_per_owner = cfg.session_max_bytes_per_owner;
        bc->confirm_timeout_ms = cfg.workload_confirm_timeout_ms;
        bc->reboot_timeout_ms = cfg.workload_reboot_timeout_ms;
        bc->socket_mode = (mode_t)cfg.sessions_socket_mode;
        if (cfg.sessions_disabled || !cfg.sessions_socket)
                return 0;
        bc->socket_path = cfg.sessions_socket;
        bc->socket_optional = cfg.sessions_socket_default;
        if (cfg.sessions_group) {
                struct group *gr;
                errno = 0;
                gr = getgrnam(cfg.sessions_group);
                if (!gr) {
                        log_error_errno(errno ? errno : ENOENT,
                                        "--sessions-group=%s: no such group: %m",
                                        cfg.sessions_group);
                        return EXIT_USAGE;
                }
                bc->socket_gid = gr->gr_gid;
        }
        {
                char dir[4096];
                const char *slash = strrchr(cfg.sessions_socket, '/');
                size_t n = (size_t)(slash - cfg.sessions_socket);
                if (n > 0 && n < sizeof(dir)) {
                        int r;
                        memcpy(dir, cfg.sessions_socket, n);
                        dir[n] = 0;
                        r = mkdir_p(dir, 0755);
                        if (r < 0) {
                                log_error_errno(r,
                                                "Failed to create %s for the sessions socket: "
                                                "%m",
                                                dir);
                                return EXIT_USAGE; /* a flag naming an impossible place */
                        }
                }
        }
        return 0;
}

/*
 * The service manager's fd store (docs/sessions.md): under systemd the broker
 * keeps every session there too, and what it kept comes back at this start
 * (LISTEN_FDS, LISTEN_FDNAMES) for the broker to take up. Those descriptors
 * hold workloads' memory: the network process hands them to the helper at
 * its fork and closes its own copies at once (drop_fdstore).
 */
static int fdstore_fds[PRIVSEP_RESTORE_MAX];
static char **fdstore_names;

static void take_fdstore(struct broker_config *bc)
{
        int n;

        bc->fdstore = getenv("NOTIFY_SOCKET") != NULL;
        n = sd_listen_fds_with_names(1, &fdstore_names);
        if (n <= 0)
                return;
        for (int i = 0; i < n; i++) {
                if (i < PRIVSEP_RESTORE_MAX)
                        fdstore_fds[i] = SD_LISTEN_FDS_START + i;
                else
                        close(SD_LISTEN_FDS_START + i);
        }
        bc->restore_fds = fdstore_fds;
        bc->restore_names = fdstore_names;
        bc->n_restore = (size_t)MIN(n, PRIVSEP_RESTORE_MAX);
        log_info("The service manager's fd store gave back %d descriptor%s", n, n == 1 ? "" : "s");
}

static void drop_fdstore(struct broker_config *bc)
{
        for (size_t i = 0; i < bc->n_restore; i++)
                if (bc->restore_fds[i] >= 0) {
                        close(bc->restore_fds[i]);
                        bc->restore_fds[i] = -1;
                }
        bc->n_restore = 0;
        if (fdstore_names) {
                for (char **p = fdstore_names; *p; p++)
                        free(*p);
                free(fdstore_names);
                fdstore_names = NULL;
        }
}

/*
 * The backend: in this process (--privsep=no), or the privileged helper's
 * proxy; then, still with root's privileges, the TLS credentials, the
 * tokens file and every listener; then, as root, the drop. Returns 0 or an
 * exit status; the helper's backend_open() errors keep their exit codes and
 * sentences, and come before a listener's.
 */
static int open_backend(int dir_fd, struct backend **ret)
{
        struct privsep_hooks hooks = { .lost = privsep_lost };
        struct privsep_spawn_config pc = {
                .backend = &cfg.backend,
                .busy_retry_ms = HELPER_BUSY_RETRY_MS,
        };
        struct broker_config bc;
        static char rendezvous[4200];
        char msg[512] = "", user[64] = "";
        bool root = geteuid() == 0;
        int r;

        r = broker_settings(&bc);
        if (r != 0)
                return r;
        take_fdstore(&bc);
        pc.broker = &bc;
        if (bc.socket_path) {
                /* Beside the workloads' socket: a directory root owns (or ours, not root). */
                const char *slash = strrchr(bc.socket_path, '/');
                int n = snprintf(rendezvous, sizeof(rendezvous), "%.*s/helper.sock",
                                 (int)(slash - bc.socket_path), bc.socket_path);
                if (n > 0 && (size_t)n < sizeof(rendezvous))
                        pc.rendezvous = rendezvous;
        }
        helper_files(&pc.files);
        if (!cfg.privsep) {
                if (root)
                        log_notice("--privsep=no: the network process keeps root's privileges");
                r = backend_open(&cfg.backend, ret, msg, sizeof(msg));
                /* The broker runs where the backend runs: here. */
                if (r >= 0) {
                        struct backend *inner = *ret;
                        *ret = NULL;
                        r = broker_new(inner, &bc, ret, msg, sizeof(msg));
                }
                drop_fdstore(&bc); /* what the broker did not take */
        } else {
                if (root) {
                        r = resolve_run_user(&pc.drop_uid, &pc.drop_gid, user, sizeof(user));
                        if (r < 0) /* no such user, or none chosen: configuration */
                                return r == -ENOMEM ? EXIT_RUNTIME : EXIT_USAGE;
                        pc.drop = r == 0;
                } else if (cfg.run_user)
                        log_notice("--user=%s has no effect: not started as root", cfg.run_user);
                /*
                 * A helper that outlived the previous agent (it keeps workloads'
                 * sessions) waits at the rendezvous: take it over instead of
                 * forking another one (docs/sessions.md, "crashes").
                 */
                r = privsep_attach(pc.rendezvous, &hooks, ret, msg, sizeof(msg));
                if (r != 0)
                        drop_fdstore(&bc); /* the helper that waited has its own */
                if (r > 0) {
                        log_notice("Attached to the privileged helper (pid %d) that kept the "
                                   "workloads' sessions of the previous agent",
                                   (int)privsep_proxy_helper(*ret));
                        r = 0;
                } else if (r == 0) {
                        r = privsep_spawn(&pc, &hooks, ret, msg, sizeof(msg));
                        /* The helper has them now; this process must never hold them. */
                        drop_fdstore(&bc);
                }
        }
        if (r < 0) {
                log_error("%s", msg[0] ? msg : "failed to open the kernel backend");
                if (!msg[0])
                        log_error_errno(r, "backend_open: %m");
                return r == -EBUSY ? EXIT_BUSY : EXIT_NO_BACKEND;
        }
        /* Root-only files and ports below 1024 while this process is root. */
        if (cfg.privsep)
                secfile_set_opener(open_config_file, *ret);
        if (pc.drop)
                server_set_bind_user(pc.drop_uid, pc.drop_gid);
        /* A TLS or tokens file refused (owner, mode, content) is a configuration error:
         * exit 2, which the unit does not restart on; a port in use is not. */
        r = server_security_setup(&cfg);
        bool config_error = r < 0 && r != -ENOMEM;
        if (r >= 0)
                r = server_bind(&cfg);
        if (r < 0) {
                secfile_set_opener(NULL, NULL);
                server_unbind();
                *ret = backend_free(*ret);
                return config_error ? EXIT_USAGE : EXIT_RUNTIME;
        }
        if (!cfg.privsep)
                return 0;
        helper_pid = privsep_proxy_helper(*ret);
        if (pc.drop) {
                r = chown_tree(dir_fd, pc.drop_uid, pc.drop_gid, 0);
                if (r < 0)
                        log_error_errno(r, "Failed to hand the state directory %s to %s: %m",
                                        cfg.state_dir, user);
                if (r >= 0)
                        r = drop_privileges(user, pc.drop_uid, pc.drop_gid);
                if (r < 0) {
                        secfile_set_opener(NULL, NULL);
                        server_unbind();
                        *ret = backend_free(*ret);
                        return EXIT_RUNTIME;
                }
                log_info("Privilege separation: this process runs as %s (uid %u), without "
                         "capabilities; the helper (pid %d) keeps CAP_SYS_BOOT",
                         user, (unsigned)pc.drop_uid, (int)helper_pid);
        } else {
                (void)prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                log_info("Privilege separation: kernel calls go through the helper (pid %d)",
                         (int)helper_pid);
        }
        return 0;
}

static int run(void)
{
        _cleanup_close_ int dir_fd = -1, lock_fd = -1, sig_fd = -1;
        struct backend *backend = NULL;
        struct journal *journal = NULL;
        struct agent *agent = NULL;
        struct server *server = NULL;
        struct journal_load_report rep = { 0 };
        char abs_dir[PATH_MAX];
        enum luo_state ks_ioctl, ks_sysfs;
        sigset_t mask;
        int r, ret = EXIT_RUNTIME;

        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
        sigaddset(&mask, SIGQUIT);
        /* Blocked before any thread exists, so every thread inherits it. */
        pthread_sigmask(SIG_BLOCK, &mask, NULL);
        signal(SIGPIPE, SIG_IGN);
        sig_fd = signalfd(-1, &mask, SFD_CLOEXEC);
        if (sig_fd < 0)
                return log_error_errno(errno, "signalfd() failed: %m"), EXIT_RUNTIME;
        raise_fd_limit();
        r = sim_downtime_wait(sig_fd);
        if (r != 0)
                return r > 0 ? 0 : EXIT_RUNTIME;

        r = open_state_dir(cfg.state_dir, &dir_fd, &lock_fd);
        if (r < 0)
                return r == -EBUSY ? EXIT_BUSY : EXIT_RUNTIME;
        if (realpath(cfg.state_dir, abs_dir)) {
                free(cfg.state_dir);
                cfg.state_dir = strdup(abs_dir);
                if (!cfg.state_dir)
                        return log_oom(), EXIT_RUNTIME;
                cfg.backend.state_dir = cfg.state_dir;
        }

        r = open_backend(dir_fd, &backend);
        if (r != 0)
                return r;
        the_backend = backend;
        {
                /* After the drop: the hooks as the process that runs them sees them. A hooks
                 * tree it cannot read would let every veto hook be skipped: refused. */
                char why[640];
                r = hooks_check(cfg.hooks_dir, why, sizeof(why));
                if (r < 0) {
                        log_error("Refusing to start: %s", why);
                        ret = EXIT_USAGE;
                        goto out;
                }
        }
        int self = backend->ops->self_check(backend, &ks_ioctl, &ks_sysfs);

        r = journal_open(dir_fd, "journal", cfg.journal_max_bytes, &journal, &rep);
        if (r < 0) {
                log_error_errno(r, "Failed to open the journal in %s: %m", cfg.state_dir);
                goto out;
        }
        if (rep.torn)
                log_warning("Journal: dropped a torn tail of %llu bytes at offset %llu, kept %zu "
                            "records",
                            (unsigned long long)rep.dropped_bytes,
                            (unsigned long long)rep.first_bad_offset, rep.records);

        r = agent_new(&cfg, backend, journal, dir_fd, &agent);
        if (r < 0) {
                log_error_errno(r, "Failed to set up the agent: %m");
                goto out;
        }
        agent->sim_jump = sim_jump;
        if (self == -EPROTO) {
                snprintf(agent->self_check, sizeof(agent->self_check),
                         "GET_STATE says %s, sysfs says %s", luo_state_to_string(ks_ioctl),
                         luo_state_to_string(ks_sysfs));
                log_error("Kernel state mismatch at start-up: %s", agent->self_check);
        }
        r = agent_reconcile(agent);
        if (r < 0)
                goto out;
        /* What the session broker did before we asked (incoming sessions, a survived helper). */
        r = sessions_refresh(agent);
        if (r < 0)
                log_warning_errno(r, "Failed to read the session broker's document: %m");

        r = server_new(agent, &cfg, &server);
        if (r < 0) {
                log_error_errno(r, "Failed to set up the HTTP server: %m");
                goto out;
        }
        the_server = server;
        r = server_start(server);
        if (r < 0)
                goto out;
        log_info("luofleet-agent %s ready: backend %s, state dir %s", LUOFLEET_VERSION,
                 backend->ops->name, cfg.state_dir);
        notify_ready("Serving: backend %s, state dir %s", backend->ops->name, cfg.state_dir);

        for (;;) {
                struct signalfd_siginfo si;
                ssize_t n = read(sig_fd, &si, sizeof(si));
                if (n < 0 && errno == EINTR)
                        continue;
                if (n != sizeof(si)) {
                        log_error_errno(errno, "Reading signals failed: %m");
                        break;
                }
                if (si.ssi_signo == SIGHUP) {
                        /* TLS certificate and key, tokens file: the old ones stay on error. */
                        notify_reloading();
                        (void)server_reload(server);
                        notify_ready("Serving: backend %s, state dir %s (reloaded)",
                                     backend->ops->name, cfg.state_dir);
                        continue;
                }
                log_info("Received %s, stopping", strsignal((int)si.ssi_signo));
                break;
        }
        notify_stopping();
        ret = 0;
out:
        the_server = NULL;
        server = server_free(server);
        server_unbind(); /* bound and never started: a failure before server_start() */
        secfile_set_opener(NULL, NULL);
        agent = agent_free(agent);
        journal = journal_free(journal);
        the_backend = NULL;
        backend = backend_free(backend);
        return ret;
}

int main(int argc, char **argv)
{
        int r;

        if (argc > 1 && strcmp(argv[1], "token") == 0)
                return auth_token_command(argc - 1, argv + 1);
        r = config_parse(&cfg, argc, argv);
        if (r != 0) {
                config_done(&cfg);
                return r > 0 ? 0 : EXIT_USAGE;
        }
        log_set_max_level(cfg.log_level);
        take_sim_down_until();
        r = run();
        config_done(&cfg);
        return r;
}
