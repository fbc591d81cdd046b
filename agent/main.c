/*
 * main.c: luofleet-agent's process: flags, signals, the state directory and
 * its lock, the backend, the journal, reconciliation, the HTTP server, and
 * the orderly stop. Signals are blocked in every thread and read from a
 * signalfd here, so no code runs in a signal handler.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"
#include "auth.h"
#include "config.h"
#include "journal.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "server.h"

enum {
        EXIT_RUNTIME = 1,
        EXIT_USAGE = 2,
        EXIT_NO_BACKEND = 3,
        EXIT_BUSY = 4,
};

static struct agent_config cfg;
static struct server *the_server;

/*
 * The simulated kexec (worker thread): the process ends like a kernel would.
 * The new image gets the same flags, with every --listen replaced by the
 * address actually bound, so a port chosen by the kernel (port 0) survives.
 */
static void sim_jump(void *userdata)
{
        static char specs[CONFIG_MAX_LISTEN][160], flags[CONFIG_MAX_LISTEN][200];
        static char *argv[512];
        size_t n = 0;

        (void)userdata;
        if (cfg.sim_reboot == SIM_REBOOT_EXIT) {
                log_notice("Simulated kexec: exiting for the supervisor to start the new boot");
                _exit(0);
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
        log_notice("Simulated kexec: re-executing the agent");
        execv("/proc/self/exe", argv);
        log_error_errno(errno, "Failed to re-execute /proc/self/exe: %m; exiting instead");
        _exit(0);
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

static int run(void)
{
        _cleanup_close_ int dir_fd = -1, lock_fd = -1, sig_fd = -1;
        struct backend *backend = NULL;
        struct journal *journal = NULL;
        struct agent *agent = NULL;
        struct server *server = NULL;
        struct journal_load_report rep = { 0 };
        char msg[512] = "", abs_dir[PATH_MAX];
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

        r = backend_open(&cfg.backend, &backend, msg, sizeof(msg));
        if (r < 0) {
                log_error("%s", msg[0] ? msg : "failed to open the kernel backend");
                if (!msg[0])
                        log_error_errno(r, "backend_open: %m");
                return r == -EBUSY ? EXIT_BUSY : EXIT_NO_BACKEND;
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
                        (void)server_reload(server);
                        continue;
                }
                log_info("Received %s, stopping", strsignal((int)si.ssi_signo));
                break;
        }
        ret = 0;
out:
        the_server = NULL;
        server = server_free(server);
        agent = agent_free(agent);
        journal = journal_free(journal);
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
        r = run();
        config_done(&cfg);
        return r;
}
