/*
 * test_config.c: the agent's command line: defaults, every flag's accepted
 * and refused values, listen address forms. config_parse() prints its
 * refusals on stderr; the exit decision is in its return value.
 */
#include <check.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "luofleet/log.h"
#include "testutil.h"

static int parse(struct agent_config *cfg, const char *a1, const char *a2)
{
        char *argv[4] = { (char *)"luofleet-agent", (char *)a1, (char *)a2, NULL };
        int argc = a2 ? 3 : a1 ? 2 : 1;
        int r = config_parse(cfg, argc, argv);
        return r;
}

START_TEST(test_defaults)
{
        struct agent_config cfg;

        ck_assert_int_eq(parse(&cfg, NULL, NULL), 0);
        ck_assert_int_eq(cfg.backend.kind, BACKEND_AUTO);
        ck_assert_str_eq(cfg.backend.root, "/");
        ck_assert_str_eq(cfg.state_dir, "/var/lib/luofleet");
        ck_assert_uint_eq(cfg.n_listen, 1);
        ck_assert(!cfg.listen[0].is_unix);
        ck_assert_str_eq(cfg.listen[0].host, "127.0.0.1");
        ck_assert_str_eq(cfg.listen[0].port, "8421");
        ck_assert_uint_eq(cfg.max_wait_ms, 600000);
        ck_assert_uint_eq(cfg.max_waiters, 10000);
        ck_assert_uint_eq(cfg.max_streams, 1000);
        ck_assert_uint_eq(cfg.sse_heartbeat_ms, 15000);
        ck_assert_uint_eq(cfg.reboot_delay_ms, 100);
        ck_assert_uint_eq(cfg.http_threads, 1);
        ck_assert_uint_eq(cfg.journal_max_bytes, 8 * 1024 * 1024);
        ck_assert_int_eq(cfg.sim_reboot, SIM_REBOOT_EXEC);
        ck_assert_uint_eq(cfg.sim_downtime_ms, 0);
        ck_assert_ptr_null(cfg.backend.sim_boot_release);
        ck_assert_int_eq(cfg.log_level, LOG_LEVEL_INFO);
        config_done(&cfg);
}
END_TEST

START_TEST(test_values)
{
        static const struct {
                const char *arg;
                int r;
        } cases[] = {
                { "--backend=sim", 0 },
                { "--backend=luo-v3", 0 },
                { "--backend=mainline", -EINVAL },
                { "--root=relative", -EINVAL },
                { "--max-wait=90s", 0 },
                { "--max-wait=0", -EINVAL },
                { "--max-wait=25h", -EINVAL },
                { "--max-wait=1500m", -EINVAL },
                { "--max-waiters=0", -EINVAL },
                { "--max-waiters=1000001", -EINVAL },
                { "--max-waiters=12", 0 },
                { "--max-streams=-1", -EINVAL },
                { "--sse-heartbeat=50ms", -EINVAL },
                { "--sse-heartbeat=200ms", 0 },
                { "--reboot-delay=61s", -EINVAL },
                { "--journal-max-bytes=65535", -EINVAL },
                { "--journal-max-bytes=1073741825", -EINVAL },
                { "--journal-max-bytes=65536", 0 },
                { "--http-threads=0", -EINVAL },
                { "--http-threads=65", -EINVAL },
                { "--http-threads=4", 0 },
                { "--sim-fault=prepare=EBUSY", 0 },
                { "--sim-fault=prepare=EBOGUS", -EINVAL },
                { "--sim-fault=explode=EIO", -EINVAL },
                { "--sim-reboot=exit", 0 },
                { "--sim-reboot=maybe", -EINVAL },
                { "--sim-downtime=2s", 0 },
                { "--sim-downtime=500ms", 0 },
                { "--sim-downtime=1m", 0 },
                { "--sim-downtime=0", 0 },
                { "--sim-downtime=never", 0 },
                { "--sim-downtime=61m", -EINVAL },
                { "--sim-downtime=2h", -EINVAL },
                { "--sim-downtime=soon", -EINVAL },
                { "--sim-downtime=-1s", -EINVAL },
                { "--sim-downtime=", -EINVAL },
                { "--sim-downtime=Never", -EINVAL },
                { "--sim-boot-release=6.66.6-wrong", 0 },
                { "--sim-boot-release=", -EINVAL },
                { "--sim-boot-release=6.19.0-lf2=6.1.0-wrong", 0 },
                { "--sim-boot-release==6.1.0", -EINVAL },
                { "--sim-boot-release=6.1.0=", -EINVAL },
                { "--sim-boot-release=a=b=c", -EINVAL },
                { "--log-level=debug", 0 },
                { "--log-level=loud", -EINVAL },
                { "--listen=unix:relative", -EINVAL },
                { "--listen=127.0.0.1", -EINVAL },
                { "--listen=127.0.0.1:65536", -EINVAL },
                { "--listen=[::1:8421", -EINVAL },
                { "--no-such-flag", -EINVAL },
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                struct agent_config cfg;
                ck_assert_msg(parse(&cfg, cases[i].arg, NULL) == cases[i].r, "%s", cases[i].arg);
                config_done(&cfg);
        }
        struct agent_config cfg;
        ck_assert_int_eq(parse(&cfg, "--sim-fault=finish=EIO:250ms", "--max-wait=90s"), 0);
        ck_assert_int_eq(cfg.backend.faults[SIM_FAULT_FINISH].error, EIO);
        ck_assert_uint_eq(cfg.backend.faults[SIM_FAULT_FINISH].delay_ms, 250);
        ck_assert_uint_eq(cfg.max_wait_ms, 90000);
        config_done(&cfg);
        ck_assert_int_eq(parse(&cfg, "--sim-downtime=1500ms", "--sim-boot-release=6.6.6-x"), 0);
        ck_assert_uint_eq(cfg.sim_downtime_ms, 1500);
        ck_assert_str_eq(cfg.backend.sim_boot_release, "6.6.6-x");
        config_done(&cfg);
        ck_assert_int_eq(parse(&cfg, "--sim-downtime=never", NULL), 0);
        ck_assert_uint_eq(cfg.sim_downtime_ms, SIM_DOWNTIME_NEVER);
        config_done(&cfg);
        ck_assert_int_eq(parse(&cfg, "--sim-downtime=1m", "--sim-reboot=exec"), 0);
        ck_assert_uint_eq(cfg.sim_downtime_ms, 60000);
        config_done(&cfg);
        /* the downtime is the re-executed agent's: refused with --sim-reboot=exit */
        ck_assert_int_eq(parse(&cfg, "--sim-downtime=2s", "--sim-reboot=exit"), -EINVAL);
        config_done(&cfg);
        ck_assert_int_eq(parse(&cfg, "--sim-reboot=exit", "--sim-downtime=never"), -EINVAL);
        config_done(&cfg);
        ck_assert_int_eq(parse(&cfg, "--sim-reboot=exit", "--sim-downtime=0"), 0);
        config_done(&cfg);
        /* a stray argument */
        ck_assert_int_eq(parse(&cfg, "--backend=sim", "extra"), -EINVAL);
        config_done(&cfg);
        /* --help and --version ask to exit 0 */
        ck_assert_int_eq(parse(&cfg, "--version", NULL), 1);
        config_done(&cfg);
}
END_TEST

START_TEST(test_listen_forms)
{
        struct listen_addr la;

        ck_assert_int_eq(config_parse_listen("127.0.0.1:0", &la), 0);
        ck_assert_str_eq(la.host, "127.0.0.1");
        ck_assert_str_eq(la.port, "0");
        ck_assert_int_eq(config_parse_listen("[::1]:8421", &la), 0);
        ck_assert_str_eq(la.host, "::1");
        ck_assert_str_eq(la.port, "8421");
        ck_assert_int_eq(config_parse_listen(":9000", &la), 0);
        ck_assert_str_eq(la.host, "0.0.0.0");
        ck_assert_int_eq(config_parse_listen("unix:/run/luofleet.sock", &la), 0);
        ck_assert(la.is_unix);
        ck_assert_str_eq(la.path, "/run/luofleet.sock");
        ck_assert_int_eq(config_parse_listen("localhost:08421", &la), 0);
        ck_assert_str_eq(la.port, "8421");
        ck_assert_int_eq(config_parse_listen("host:port", &la), -EINVAL);
        ck_assert_int_eq(config_parse_listen("host:", &la), -EINVAL);
        ck_assert_int_eq(config_parse_listen("[::1]8421", &la), -EINVAL);
        char longpath[200];
        memset(longpath, 'a', sizeof(longpath));
        memcpy(longpath, "unix:/", 6);
        longpath[sizeof(longpath) - 1] = 0;
        ck_assert_int_eq(config_parse_listen(longpath, &la), -ENAMETOOLONG);
        /* 107 bytes fit sun_path with its NUL; 108 do not. */
        longpath[5 + 107] = 0;
        ck_assert_int_eq(config_parse_listen(longpath, &la), 0);
        ck_assert_uint_eq(strlen(la.path), 107);
        longpath[5 + 107] = 'a';
        longpath[5 + 108] = 0;
        ck_assert_int_eq(config_parse_listen(longpath, &la), -ENAMETOOLONG);
        ck_assert_int_eq(config_parse_listen("unix:relative", &la), -EINVAL);
}
END_TEST

static Suite *config_suite(void)
{
        Suite *s = suite_create("config");
        TCase *tc = tcase_create("parse");

        tcase_add_test(tc, test_defaults);
        tcase_add_test(tc, test_values);
        tcase_add_test(tc, test_listen_forms);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(config_suite)
