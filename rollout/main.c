/*
 * main.c: luofleet-rollout's process: flags and config file (config.c),
 * signals, the store's directory, the controller core (controller.h), the
 * HTTP server (httpd.c, api.c), readiness for systemd, and the orderly stop.
 * Signals are blocked in every thread and read from a signalfd here, so no
 * code runs in a signal handler.
 *
 * Order at start: TLS credentials and tokens are loaded and every listener
 * bound first (a bad certificate or a port in use fails before the store is
 * touched), then the controller opens the store and resumes its rollouts,
 * then the HTTP daemons start serving. At the stop, the reverse: the HTTP
 * side first (no handler calls into a stopped controller), then the core.
 */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api.h"
#include "config.h"
#include "controller.h"
#include "httpd.h"
#include "luofleet/log.h"
#include "luofleet/macro.h"
#include "luofleet/util.h"
#include "notify.h"

enum {
        EXIT_RUNTIME = 1,
        EXIT_USAGE = 2,
};

static struct rollout_config cfg;

/* The store's directory (mode 0700 when we create it). */
static int make_db_dir(const char *db_path)
{
        char buf[PATH_MAX];
        struct stat st;
        const char *dir;

        if (strcmp(db_path, ":memory:") == 0)
                return 0;
        if (strlen(db_path) >= sizeof(buf))
                return log_error_errno(ENAMETOOLONG, "--db=%s: path too long", db_path);
        memcpy(buf, db_path, strlen(db_path) + 1);
        dir = dirname(buf);
        if (stat(dir, &st) == 0) {
                if (!S_ISDIR(st.st_mode))
                        return log_error_errno(ENOTDIR,
                                               "Cannot open the store %s: %s is not a "
                                               "directory",
                                               db_path, dir);
                return 0;
        }
        int r = mkdir_p(dir, 0700);
        if (r < 0)
                return log_error_errno(r, "Cannot create the store's directory %s: %m", dir);
        return 0;
}

static int run(void)
{
        _cleanup_close_ int sig_fd = -1;
        struct controller *ctl = NULL;
        struct httpd *httpd = NULL;
        struct api api;
        char err[512] = "";
        sigset_t mask;
        int r, ret = EXIT_RUNTIME;

        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
        /* Blocked before any thread exists, so every thread inherits it. */
        pthread_sigmask(SIG_BLOCK, &mask, NULL);
        signal(SIGPIPE, SIG_IGN);
        sig_fd = signalfd(-1, &mask, SFD_CLOEXEC);
        if (sig_fd < 0)
                return log_error_errno(errno, "signalfd() failed: %m"), EXIT_RUNTIME;

        r = httpd_new(&(struct httpd_options){ .listen = cfg.listen,
                                               .n_listen = cfg.n_listen,
                                               .tls_cert = cfg.tls_cert,
                                               .tls_key = cfg.tls_key,
                                               .tls_client_ca = cfg.tls_client_ca,
                                               .tokens_file = cfg.tokens_file,
                                               .insecure = cfg.insecure,
                                               .max_connections = cfg.max_connections,
                                               .idle_timeout_ms = 60 * 1000 },
                      &httpd);
        if (r < 0)
                return r == -EINVAL ? EXIT_USAGE : EXIT_RUNTIME;

        if (make_db_dir(cfg.db_path) < 0)
                goto out;
        struct ctl_options opts = {
                .db_path = cfg.db_path,
                .inventory_path = cfg.inventory_path,
                .agent = { .ca_bundle = cfg.agent_ca_bundle,
                           .client_cert = cfg.agent_cert,
                           .client_key = cfg.agent_key,
                           .token_file = cfg.agent_token_file },
                .hosts = { .allow_http = cfg.allow_http_agents,
                           .allow = cfg.agent_allow,
                           .n_allow = cfg.n_agent_allow },
                .poll_wait_ms = (unsigned)cfg.poll_wait_ms,
                .retry_min_ms = (unsigned)cfg.retry_min_ms,
                .retry_max_ms = (unsigned)cfg.retry_max_ms,
                .connect_timeout_ms = (unsigned)cfg.connect_timeout_ms,
                .request_timeout_ms = (unsigned)cfg.request_timeout_ms,
                .max_connections = cfg.max_agent_connections,
                .time_offset_s = cfg.time_offset_s,
                .name = cfg.name,
        };
        if (cfg.time_offset_s)
                log_warning("%s=%lld: the wall clock for maintenance windows is shifted (a test "
                            "hook)",
                            ROLLOUT_TIME_OFFSET_ENV, (long long)cfg.time_offset_s);
        r = controller_start(&opts, &ctl, err, sizeof(err));
        if (r < 0) {
                /* err names the file: the store, or the inventory. */
                log_error_errno(r, "Cannot start the controller: %s", err[0] ? err : strerror(-r));
                ctl = NULL;
                /* A bad inventory file is a configuration error; the rest is at run time. */
                if (r == -EINVAL)
                        ret = EXIT_USAGE;
                goto out;
        }

        /* Event streams may take half of the connections: the API stays reachable. */
        api_init(&api, ctl, MAX(cfg.max_connections / 2, 1u), cfg.sse_keepalive_ms);
        r = httpd_start(httpd, &api);
        if (r < 0)
                goto out;
        log_info("luofleet-rollout %s ready: store %s%s%s", LUOFLEET_VERSION, cfg.db_path,
                 cfg.inventory_path ? ", inventory " : "",
                 cfg.inventory_path ? cfg.inventory_path : "");
        notify_ready("Serving: store %s", cfg.db_path);

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
                        (void)httpd_reload(httpd);
                        notify_ready("Serving: store %s (reloaded)", cfg.db_path);
                        continue;
                }
                log_info("Received %s, stopping", strsignal((int)si.ssi_signo));
                break;
        }
        notify_stopping();
        ret = 0;
out:
        httpd = httpd_free(httpd);
        if (ctl)
                controller_stop(ctl);
        return ret;
}

int main(int argc, char **argv)
{
        int r;

        r = rollout_config_parse(&cfg, argc, argv);
        if (r != 0) {
                rollout_config_done(&cfg);
                if (r == -ENOMEM)
                        fprintf(stderr, "luofleet-rollout: out of memory\n");
                return r > 0 ? 0 : r == -ENOMEM ? EXIT_RUNTIME : EXIT_USAGE;
        }
        log_set_max_level(cfg.log_level);
        r = run();
        rollout_config_done(&cfg);
        return r;
}
