/*
 * test_hooks.c: the workload hook runner (hooks.c) without an agent: the
 * directory scan (order, ignored and refused files, refused directory, a
 * missing directory) and one hook's run (exit status, the exact
 * environment, no inherited descriptor, the timeout killing the whole
 * process group, the output cap keeping the tail, UTF-8 sanitizing, a
 * signal, a hook that cannot be started). Every test leaves as many
 * descriptors open as it found (also checked under valgrind).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hooks.h"
#include "luofleet/log.h"
#include "testutil.h"

static char tmpdir[256];
static int fds_before;

static void setup(void)
{
        log_set_max_level(LOG_LEVEL_ERR);
        fds_before = testutil_count_fds();
        testutil_mkdtemp(tmpdir, sizeof(tmpdir), "hooks");
        ck_assert_int_eq(chmod(tmpdir, 0755), 0);
}

static void teardown(void)
{
        testutil_rm_rf(tmpdir);
        ck_assert_int_eq(testutil_count_fds(), fds_before);
}

static void write_file(const char *dir, const char *name, const char *text, mode_t mode)
{
        char p[512];
        FILE *f;

        ck_assert_int_lt(snprintf(p, sizeof(p), "%s/%s", dir, name), (int)sizeof(p));
        f = fopen(p, "we");
        ck_assert_ptr_nonnull(f);
        fputs(text, f);
        ck_assert_int_eq(fclose(f), 0);
        ck_assert_int_eq(chmod(p, mode), 0);
}

static void phase_dir(const char *phase, char *buf, size_t size)
{
        ck_assert_int_lt(snprintf(buf, size, "%s/%s.d", tmpdir, phase), (int)size);
        ck_assert_int_eq(mkdir(buf, 0755), 0);
        ck_assert_int_eq(chmod(buf, 0755), 0);
}

START_TEST(scan_missing_dir_is_no_hooks)
{
        char **names = NULL;
        size_t n = 99;

        ck_assert_int_eq(hooks_scan(tmpdir, HOOK_PRE_PREPARE, &names, &n), 0);
        ck_assert_uint_eq(n, 0);
        ck_assert_ptr_null(names[0]);
        hooks_names_free(names);
}
END_TEST

START_TEST(scan_order_and_refusals)
{
        char d[400], sub[500], **names = NULL;
        size_t n = 0;

        phase_dir("pre-prepare", d, sizeof(d));
        write_file(d, "b", "#!/bin/sh\n", 0755);
        write_file(d, "a", "#!/bin/sh\n", 0755);
        write_file(d, "10-x", "#!/bin/sh\n", 0755);
        write_file(d, "2-y", "#!/bin/sh\n", 0700);
        write_file(d, ".hidden", "#!/bin/sh\n", 0755);
        write_file(d, "a~", "#!/bin/sh\n", 0755);
        write_file(d, "c.dpkg-old", "#!/bin/sh\n", 0755);
        write_file(d, "not-exec", "#!/bin/sh\n", 0644);
        write_file(d, "world-writable", "#!/bin/sh\n", 0757);
        write_file(d, "group-writable", "#!/bin/sh\n", 0775);
        ck_assert_int_lt(snprintf(sub, sizeof(sub), "%s/subdir", d), (int)sizeof(sub));
        ck_assert_int_eq(mkdir(sub, 0755), 0);

        ck_assert_int_eq(hooks_scan(tmpdir, HOOK_PRE_PREPARE, &names, &n), 0);
        ck_assert_uint_eq(n, 4);
        ck_assert_str_eq(names[0], "10-x");
        ck_assert_str_eq(names[1], "2-y");
        ck_assert_str_eq(names[2], "a");
        ck_assert_str_eq(names[3], "b");
        ck_assert_ptr_null(names[4]);
        hooks_names_free(names);

        /* Another phase's directory is not this one's. */
        ck_assert_int_eq(hooks_scan(tmpdir, HOOK_POST_PREPARE, &names, &n), 0);
        ck_assert_uint_eq(n, 0);
        hooks_names_free(names);
}
END_TEST

START_TEST(scan_refuses_writable_dir)
{
        char d[400], **names = NULL;
        size_t n = 0;

        phase_dir("on-cancel", d, sizeof(d));
        write_file(d, "a", "#!/bin/sh\n", 0755);
        ck_assert_int_eq(chmod(d, 0777), 0);
        ck_assert_int_eq(hooks_scan(tmpdir, HOOK_ON_CANCEL, &names, &n), -EPERM);
}
END_TEST

static void run_script(const char *text, uint64_t timeout_ms, size_t max, struct hook_result *hr)
{
        char p[512];
        struct hook_env env = { .phase = HOOK_PRE_FINISH,
                                .index = 42,
                                .operation_id = "op-1",
                                .target_kernel = "/boot/vmlinuz-new",
                                .boot_id = "0b6b0d1e-6c1f-4d0a-9a51-6c2a3f1f9f10" };

        write_file(tmpdir, "hook", text, 0755);
        ck_assert_int_lt(snprintf(p, sizeof(p), "%s/hook", tmpdir), (int)sizeof(p));
        ck_assert_int_eq(hook_run(p, "hook", &env, timeout_ms, max, hr), 0);
}

START_TEST(run_exit_status_and_output)
{
        struct hook_result hr;

        run_script("#!/bin/sh\necho out\necho err >&2\nexit 3\n", 5000, 4096, &hr);
        ck_assert(!hook_result_ok(&hr));
        ck_assert_int_eq(hr.exit_code, 3);
        ck_assert_int_eq(hr.signal, 0);
        ck_assert(!hr.timed_out);
        ck_assert_str_eq(hr.output, "out\nerr\n");
        ck_assert_str_eq(hr.name, "hook");
        hook_result_done(&hr);

        run_script("#!/bin/sh\nexit 0\n", 5000, 4096, &hr);
        ck_assert(hook_result_ok(&hr));
        ck_assert_str_eq(hr.output, "");
        hook_result_done(&hr);
}
END_TEST

START_TEST(run_environment_exactly)
{
        struct hook_result hr;

        struct hook_env env = { .phase = HOOK_PRE_FINISH,
                                .index = 42,
                                .operation_id = "op-1",
                                .target_kernel = "/boot/vmlinuz-new",
                                .boot_id = "0b6b0d1e-6c1f-4d0a-9a51-6c2a3f1f9f10" };

        /* env(1) itself, not a shell script: a shell would add PWD of its own. */
        setenv("LUOFLEET_TEST_LEAK", "1", 1);
        ck_assert_int_eq(hook_run("/usr/bin/env", "env", &env, 5000, 4096, &hr), 0);
        unsetenv("LUOFLEET_TEST_LEAK");
        ck_assert(hook_result_ok(&hr));
        ck_assert_str_eq(hr.output, "LUOFLEET_PHASE=pre-finish\n"
                                    "LUOFLEET_INDEX=42\n"
                                    "LUOFLEET_OPERATION_ID=op-1\n"
                                    "LUOFLEET_TARGET_KERNEL=/boot/vmlinuz-new\n"
                                    "LUOFLEET_BOOT_ID=0b6b0d1e-6c1f-4d0a-9a51-6c2a3f1f9f10\n"
                                    "PATH=/usr/sbin:/usr/bin:/sbin:/bin\n");
        hook_result_done(&hr);
}
END_TEST

START_TEST(run_no_inherited_fds)
{
        struct hook_result hr;
        int leak = open("/dev/null", O_RDONLY); /* no O_CLOEXEC, on purpose */

        ck_assert_int_ge(leak, 3);
        /* ls is a fresh exec: what it finds open was inherited, but for its own fd 3. */
        run_script("#!/bin/sh\nexec /bin/ls /proc/self/fd\n", 5000, 4096, &hr);
        close(leak);
        ck_assert(hook_result_ok(&hr));
        ck_assert_str_eq(hr.output, "0\n1\n2\n3\n");
        hook_result_done(&hr);
}
END_TEST

static bool pid_gone(pid_t pid)
{
        char p[64], st[256];
        FILE *f;

        for (int i = 0; i < 200; i++) {
                snprintf(p, sizeof(p), "/proc/%d/stat", (int)pid);
                f = fopen(p, "re");
                if (!f)
                        return true;
                size_t n = fread(st, 1, sizeof(st) - 1, f);
                fclose(f);
                st[n] = 0;
                const char *rp = strrchr(st, ')');
                if (rp && rp[1] == ' ' && rp[2] == 'Z')
                        return true; /* dead, waiting for a reaper */
                usleep(10000);
        }
        return false;
}

START_TEST(run_timeout_kills_the_group)
{
        struct hook_result hr;
        char script[700], pidfile[400], buf[32] = "";
        uint64_t t0 = now_mono_usec();

        ck_assert_int_lt(snprintf(pidfile, sizeof(pidfile), "%s/bg.pid", tmpdir),
                         (int)sizeof(pidfile));
        ck_assert_int_lt(snprintf(script, sizeof(script),
                                  "#!/bin/sh\nsleep 60 &\necho $! > %s\necho started\nsleep 60\n",
                                  pidfile),
                         (int)sizeof(script));
        run_script(script, 500, 4096, &hr);
        ck_assert(hr.timed_out);
        ck_assert(!hook_result_ok(&hr));
        ck_assert_int_eq(hr.exit_code, -1);
        ck_assert_int_eq(hr.signal, SIGTERM);
        ck_assert_str_eq(hr.output, "started\n");
        ck_assert_uint_lt(now_mono_usec() - t0, 5 * 1000 * 1000);
        hook_result_done(&hr);

        FILE *f = fopen(pidfile, "re");
        ck_assert_ptr_nonnull(f);
        ck_assert_ptr_nonnull(fgets(buf, sizeof(buf), f));
        fclose(f);
        ck_assert(pid_gone((pid_t)strtol(buf, NULL, 10)));
}
END_TEST

START_TEST(run_timeout_sigterm_ignored)
{
        struct hook_result hr;

        /* The grace is HOOK_KILL_GRACE_MS, then SIGKILL. */
        run_script("#!/bin/sh\ntrap '' TERM\nwhile :; do sleep 1; done\n", 300, 4096, &hr);
        ck_assert(hr.timed_out);
        ck_assert_int_eq(hr.signal, SIGKILL);
        hook_result_done(&hr);
}
END_TEST

START_TEST(run_background_child_holding_the_pipe)
{
        struct hook_result hr;

        /* The hook is done; its child keeps stdout: HOOK_DRAIN_MS more, then not waited for. */
        run_script("#!/bin/sh\nsleep 3 &\necho hi\nexit 0\n", 10000, 4096, &hr);
        ck_assert(hook_result_ok(&hr));
        ck_assert(!hr.timed_out);
        ck_assert_str_eq(hr.output, "hi\n");
        ck_assert_uint_lt(hr.duration_ms, HOOK_DRAIN_MS + 1500);
        hook_result_done(&hr);
}
END_TEST

START_TEST(run_output_capped_keeps_tail)
{
        struct hook_result hr;

        run_script("#!/bin/sh\ni=0\nwhile [ $i -lt 2000 ]; do echo "
                   "0123456789012345678901234567890123456789012345678; i=$((i+1)); done\n"
                   "echo END\n",
                   10000, 100, &hr);
        ck_assert(hook_result_ok(&hr));
        ck_assert_uint_eq(hr.output_len, 100);
        ck_assert_uint_eq(hr.output_total, 2000 * 50 + 4);
        ck_assert_str_eq(hr.output + 96, "END\n");
        hook_result_done(&hr);

        run_script("#!/bin/sh\necho hello\n", 10000, 0, &hr);
        ck_assert_str_eq(hr.output, "");
        ck_assert_uint_eq(hr.output_total, 6);
        hook_result_done(&hr);
}
END_TEST

START_TEST(run_output_sanitized)
{
        struct hook_result hr;

        run_script("#!/bin/sh\nprintf 'a\\377\\001b\\303\\251\\n'\n", 5000, 4096, &hr);
        ck_assert_str_eq(hr.output, "a??b\xc3\xa9\n");
        hook_result_done(&hr);
        /* A tail that starts inside a multi-byte sequence. */
        run_script("#!/bin/sh\nprintf '\\303\\251x'\n", 5000, 2, &hr);
        ck_assert_str_eq(hr.output, "?x");
        hook_result_done(&hr);
}
END_TEST

START_TEST(run_signal_and_spawn_error)
{
        struct hook_result hr;
        struct hook_env env = { .phase = HOOK_POST_UPDATE };
        char what[96];

        run_script("#!/bin/sh\nkill -KILL $$\n", 5000, 4096, &hr);
        ck_assert_int_eq(hr.signal, SIGKILL);
        ck_assert_int_eq(hr.exit_code, -1);
        hook_result_describe(&hr, what, sizeof(what));
        ck_assert_str_eq(what, "killed by SIGKILL");
        hook_result_done(&hr);

        ck_assert_int_eq(hook_run("/nonexistent/hook", "hook", &env, 1000, 100, &hr), 0);
        /* (valgrind runs posix_spawn's vfork as a fork: the exec error is an exit 127) */
        ck_assert(hr.spawn_error == -ENOENT || (hr.spawn_error == 0 && hr.exit_code == 127));
        ck_assert(!hook_result_ok(&hr));
        hook_result_done(&hr);
}
END_TEST

START_TEST(phase_names)
{
        for (int i = 0; i < _HOOK_PHASE_MAX; i++)
                ck_assert_int_eq(hook_phase_from_string(hook_phase_to_string(i)), i);
        ck_assert_int_eq(hook_phase_from_string("pre-cancel"), -EINVAL);
        ck_assert_ptr_null(hook_phase_to_string(_HOOK_PHASE_MAX));
}
END_TEST

static Suite *hooks_suite(void)
{
        Suite *s = suite_create("hooks");
        TCase *tc = tcase_create("hooks");

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, scan_missing_dir_is_no_hooks);
        tcase_add_test(tc, scan_order_and_refusals);
        tcase_add_test(tc, scan_refuses_writable_dir);
        tcase_add_test(tc, run_exit_status_and_output);
        tcase_add_test(tc, run_environment_exactly);
        tcase_add_test(tc, run_no_inherited_fds);
        tcase_add_test(tc, run_timeout_kills_the_group);
        tcase_add_test(tc, run_timeout_sigterm_ignored);
        tcase_add_test(tc, run_background_child_holding_the_pipe);
        tcase_add_test(tc, run_output_capped_keeps_tail);
        tcase_add_test(tc, run_output_sanitized);
        tcase_add_test(tc, run_signal_and_spawn_error);
        tcase_add_test(tc, phase_names);
        suite_add_tcase(s, tc);
        return s;
}

TESTUTIL_MAIN(hooks_suite)
