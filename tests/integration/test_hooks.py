#!/usr/bin/env python3
"""test_hooks.py: workload hooks (--hooks-dir, docs/hooks.md) against the simulated kernel:
lexical order, the exact environment and no inherited descriptor, the veto of each pre-*
phase (409 hook-veto, kernel untouched), the timeout killing the hook's process group, the
output cap, a failing post-prepare hook cancelling (on-cancel hooks run), a failing
post-update hook holding /readyz and finish back (finish with force: 200, audited), hooks
that are not executable or writable by others ignored with a log line, and a missing hooks
directory meaning no hooks.

The agents run as root and drop to nobody: hooks run as nobody, so the hooks directory is a
0755 directory under /tmp (root-owned files, 0755) and the hooks write into a 0777 "out"
directory beside it."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import AgentTestCase, make_file, wait_for  # noqa: E402

setUpModule, tearDownModule = harness.module_fixtures(__file__)

ENV_KEYS = {"LUOFLEET_PHASE", "LUOFLEET_INDEX", "LUOFLEET_OPERATION_ID", "LUOFLEET_TARGET_KERNEL",
            "LUOFLEET_BOOT_ID", "PATH"}

# A prepare whose post-prepare hook failed is cancelled inside the same operation: its
# prepared -> normal transition is not spurious (harness.spurious_transitions would say so).
_spurious = harness.spurious_transitions


def _spurious_but_hook_cancels(agent):
    try:
        recs = agent.journal_records()
    except (OSError, ValueError):
        recs = []
    cancelled = {r["operation"]["id"] for r in recs
                 if r.get("kind") == "operation" and (r["operation"].get("error") or {})
                 .get("code") == "hook-failed"}
    return [s for s in _spurious(agent)
            if not any(s.endswith("during prepare %s" % i) for i in cancelled)]


harness.spurious_transitions = _spurious_but_hook_cancels


class HooksTest(AgentTestCase):

    def setUp(self):
        super().setUp()
        # Not under the test's temporary directory: nobody must be able to traverse it.
        self.hooks = tempfile.mkdtemp(prefix="lf-hooks-", dir="/tmp")
        os.chmod(self.hooks, 0o755)
        self.out = os.path.join(self.hooks, "out")
        os.mkdir(self.out)
        os.chmod(self.out, 0o777)
        self.addCleanup(shutil.rmtree, self.hooks, True)

    def hook(self, phase, name, body, mode=0o755):
        d = os.path.join(self.hooks, phase + ".d")
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o755)
        p = os.path.join(d, name)
        with open(p, "w") as f:
            f.write("#!/bin/sh\n" + body)
        os.chmod(p, mode)
        return p

    def unhook(self, phase, name):
        os.unlink(os.path.join(self.hooks, phase + ".d", name))

    def outfile(self, name):
        return os.path.join(self.out, name)

    def read_out(self, name):
        with open(self.outfile(name)) as f:
            return f.read()

    def hooked_agent(self, *args):
        return self.agent("--hooks-dir=%s" % self.hooks, *args)

    def stage(self, a, opid="h-stage"):
        files = os.path.join(self.tmp, "files")
        os.makedirs(files, exist_ok=True)
        kpath, ksha = make_file(files, "vmlinuz-next", 4099)
        r = a.client().put("/v1/kernel", json_body={"kernel": {"path": kpath, "sha256": ksha},
                                                    "operation_id": opid})
        self.assertStateDoc(r)
        return kpath

    def reboot(self, a, opid="h-reboot"):
        """Reboot (simulated kexec: the agent re-executes itself); returns the new boot's
        document."""
        before = a.client().state()
        r = a.direct().post("/v1/reboot", json_body={"operation_id": opid})
        self.assertEqual(r.status, 202, r)
        deadline = time.monotonic() + 15 * harness.SCALE
        while True:
            d = a.wait_ready(timeout=15)
            if d["boot_id"] != before["boot_id"]:
                return d
            self.assertLess(time.monotonic(), deadline, "no new boot")
            time.sleep(0.02)

    def hook_records(self, a):
        return [r for r in a.client().all_records() if r["kind"] == "hook"]

    # -------------------------------------------------------------------------------------

    def test_order_environment_and_fds(self):
        order = self.outfile("order")
        for name in ("3-c", "20-b", "10-a"):
            self.hook("pre-prepare", name, "echo %s >> %s\n" % (name, order))
        self.hook("pre-prepare", "10-a",
                  "echo 10-a >> %s\n"
                  "tr '\\0' '\\n' < /proc/$$/environ > %s\n"
                  "exec /bin/ls /proc/self/fd > %s\n"
                  % (order, self.outfile("env"), self.outfile("fds")))
        a = self.hooked_agent()
        c = a.client()
        before = c.state()
        d = self.assertStateDoc(c.post("/v1/prepare", json_body={"operation_id": "h-order"}))
        self.assertEqual(d["state"], "prepared")
        self.assertEqual(self.read_out("order").split(), ["10-a", "20-b", "3-c"])
        env = dict(line.split("=", 1) for line in self.read_out("env").splitlines())
        self.assertEqual(set(env), ENV_KEYS, env)
        self.assertEqual(env["LUOFLEET_PHASE"], "pre-prepare")
        self.assertEqual(env["LUOFLEET_OPERATION_ID"], "h-order")
        self.assertEqual(env["LUOFLEET_BOOT_ID"], before["boot_id"])
        self.assertEqual(env["LUOFLEET_TARGET_KERNEL"], "")  # nothing staged
        self.assertEqual(int(env["LUOFLEET_INDEX"]), before["index"] + 1)  # after "running"
        self.assertEqual(env["PATH"], "/usr/sbin:/usr/bin:/sbin:/bin")
        # ls's own directory fd is 3: nothing else was inherited.
        self.assertEqual(self.read_out("fds").split(), ["0", "1", "2", "3"])
        recs = self.hook_records(a)
        self.assertEqual([(r["phase"], r["hook"], r["exit_code"]) for r in recs],
                         [("pre-prepare", "10-a", 0), ("pre-prepare", "20-b", 0),
                          ("pre-prepare", "3-c", 0)])
        for r in recs:
            self.assertEqual(r["operation_id"], "h-order")
            self.assertIs(r["timed_out"], False)
            self.assertIsNone(r["signal"])
            self.assertIsInstance(r["duration_ms"], int)
        # Each hook record moved the index: running, 3 hooks, transition, end.
        self.assertEqual(d["index"], before["index"] + 6)
        self.assertIn(self.hooks, " ".join(a.command()))

    def test_veto_of_each_pre_phase(self):
        a = self.hooked_agent()
        c = a.client()
        veto = "echo 'not now: '$LUOFLEET_PHASE\necho more >&2\nexit 7\n"

        # pre-prepare
        self.hook("pre-prepare", "50-veto", veto)
        before = c.state()
        r = c.post("/v1/prepare", json_body={"operation_id": "h-veto-prepare"})
        p = self.assertProblem(r, 409, "hook-veto", hook="50-veto", phase="pre-prepare",
                               exit_code=7, signal=None, timed_out=False,
                               output_tail="not now: pre-prepare\nmore\n")
        self.assertIn("50-veto", p["detail"])
        self.assertEqual(a.sim_kernel()["state"], "normal")
        self.assertEqual(c.state()["state"], "normal")
        op = c.state()["operation"]
        self.assertOperation(op, action="prepare", status="failed", id="h-veto-prepare")
        self.assertEqual(op["error"]["code"], "hook-veto")
        self.assertFalse(any(x["kind"] == "transition"
                             for x in c.history("since=%d" % before["index"])["records"]))
        # A replay answers the same veto, without running the hook again.
        n = len(self.hook_records(a))
        r = c.post("/v1/prepare", json_body={"operation_id": "h-veto-prepare"})
        self.assertProblem(r, 409, "hook-veto", hook="50-veto", exit_code=7, replayed=True)
        self.assertEqual(len(self.hook_records(a)), n)
        self.unhook("pre-prepare", "50-veto")

        # pre-reboot
        self.stage(a)
        self.assertStateDoc(c.post("/v1/prepare", json_body={"operation_id": "h-prep"}))
        self.hook("pre-reboot", "veto", veto)
        r = c.post("/v1/reboot", json_body={"operation_id": "h-veto-reboot"})
        self.assertProblem(r, 409, "hook-veto", hook="veto", phase="pre-reboot", exit_code=7,
                           output_tail="not now: pre-reboot\nmore\n")
        k = a.sim_kernel()
        self.assertEqual((k["state"], k["boots"]), ("prepared", 1))
        self.assertEqual(c.state()["state"], "prepared")
        self.unhook("pre-reboot", "veto")

        # pre-finish, on the new boot
        d = self.reboot(a)
        self.assertEqual(d["state"], "updated")
        self.hook("pre-finish", "veto", veto)
        r = c.post("/v1/finish", json_body={"operation_id": "h-veto-finish"})
        self.assertProblem(r, 409, "hook-veto", hook="veto", phase="pre-finish", exit_code=7)
        self.assertEqual(a.sim_kernel()["state"], "updated")
        self.unhook("pre-finish", "veto")
        self.assertEqual(self.assertStateDoc(c.post("/v1/finish"))["state"], "normal")

        # Each veto is in the audit trail with its code.
        audit = c.history("kind=audit&limit=100")["records"]
        codes = [(x["action"], x["result"]["code"]) for x in audit
                 if x.get("operation_id", "").startswith("h-veto")]
        self.assertIn(("prepare", "hook-veto"), codes)
        self.assertIn(("reboot", "hook-veto"), codes)
        self.assertIn(("finish", "hook-veto"), codes)

    def test_timeout_kills_the_process_group(self):
        bg = self.outfile("bg.pid")
        self.hook("pre-prepare", "slow",
                  "sleep 60 &\necho $! > %s\necho slow\nsleep 60\n" % bg)
        a = self.hooked_agent("--hook-timeout=1s")
        t = time.monotonic()
        r = a.client().post("/v1/prepare", json_body={"operation_id": "h-slow"})
        self.assertProblem(r, 409, "hook-veto", hook="slow", timed_out=True, exit_code=None,
                           signal="SIGTERM", output_tail="slow\n")
        self.assertLess(time.monotonic() - t, 8 * harness.SCALE)
        self.assertEqual(a.sim_kernel()["state"], "normal")
        with open(bg) as f:
            pid = int(f.read())

        def gone():
            try:
                with open("/proc/%d/stat" % pid) as f:
                    return f.read().rsplit(")", 1)[1].split()[0] == "Z"
            except FileNotFoundError:
                return True
        wait_for(gone, timeout=5, what="the hook's background child to be killed")

    def test_output_bounded(self):
        self.hook("pre-prepare", "chatty",
                  "i=0\nwhile [ $i -lt 3000 ]; do echo xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; "
                  "i=$((i+1)); done\necho TAIL-END\nexit 1\n")
        a = self.hooked_agent("--hook-output-max=256")  # the smallest cap
        r = a.client().post("/v1/prepare")
        p = self.assertProblem(r, 409, "hook-veto", hook="chatty", exit_code=1)
        self.assertEqual(len(p["output_tail"]), 256)
        self.assertTrue(p["output_tail"].endswith("\nTAIL-END\n"), p["output_tail"])
        rec = self.hook_records(a)[-1]
        self.assertEqual(rec["output_tail"], p["output_tail"])
        self.assertEqual(rec["output_bytes"], 3000 * 38 + 9)

    def test_post_prepare_failure_cancels(self):
        self.hook("post-prepare", "check", "echo 'workload did not quiesce'\nexit 3\n")
        self.hook("on-cancel", "note", "echo $LUOFLEET_PHASE $LUOFLEET_OPERATION_ID > %s\n"
                  % self.outfile("cancelled"))
        a = self.hooked_agent()
        c = a.client()
        r = c.post("/v1/prepare", json_body={"operation_id": "h-post-prep"})
        self.assertProblem(r, 409, "hook-failed", hook="check", phase="post-prepare",
                           exit_code=3, cancelled=True,
                           output_tail="workload did not quiesce\n")
        self.assertEqual(a.sim_kernel()["state"], "normal")
        wait_for(lambda: c.state()["state"] == "normal", what="the document back to normal")
        self.assertEqual(self.read_out("cancelled").split(), ["on-cancel", "h-post-prep"])
        self.assertEqual([(x["phase"], x["hook"]) for x in self.hook_records(a)],
                         [("post-prepare", "check"), ("on-cancel", "note")])

    def test_explicit_cancel_runs_on_cancel(self):
        self.hook("on-cancel", "note", "echo $LUOFLEET_PHASE > %s\n" % self.outfile("c"))
        a = self.hooked_agent()
        c = a.client()
        self.assertStateDoc(c.post("/v1/prepare"))
        self.assertStateDoc(c.post("/v1/cancel"))
        self.assertEqual(self.read_out("c").split(), ["on-cancel"])

    def test_post_update_failure_holds_readyz_and_finish(self):
        flag = self.outfile("healthy")
        self.hook("post-update", "db-check",
                  "[ -e %s ] && exit 0\necho 'db replica lagging'\nexit 2\n" % flag)
        self.hook("post-finish", "note", "echo done > %s\n" % self.outfile("finished"))
        a = self.hooked_agent()
        c = a.client()
        self.stage(a)
        self.assertStateDoc(c.post("/v1/prepare"))
        self.assertEqual(a.client().get("/readyz").status, 200)
        self.reboot(a)
        r = c.get("/readyz")
        self.assertEqual(r.status, 503, r)
        hk = [x for x in r.json["checks"] if x["name"] == "hooks"][0]
        self.assertIs(hk["ok"], False)
        self.assertIn("db-check", hk["detail"])
        recs = self.hook_records(a)
        self.assertEqual([(x["phase"], x["hook"], x["exit_code"]) for x in recs],
                         [("post-update", "db-check", 2)])
        self.assertNotIn("operation_id", recs[0])  # at start-up, no operation

        r = c.post("/v1/finish", json_body={"operation_id": "h-finish-1"})
        self.assertProblem(r, 409, "health-check-failed", hook="db-check", phase="post-update",
                           exit_code=2, output_tail="db replica lagging\n")
        self.assertEqual(a.sim_kernel()["state"], "updated")
        self.assertProblem(c.post("/v1/finish", json_body={"force": "yes"}), 400,
                           "invalid-field", field="force")

        r = c.post("/v1/finish", json_body={"operation_id": "h-finish-2", "force": True,
                                            "reason": "known issue"})
        # (not assertStateDoc: its operation check knows no "force" member)
        self.assertEqual(r.status, 200, r)
        d = r.json
        self.assertEqual(d["state"], "normal")
        self.assertEqual((d["operation"]["status"], d["operation"]["force"]), ("succeeded", True))
        self.assertEqual(a.sim_kernel()["state"], "normal")
        self.assertEqual(self.read_out("finished").strip(), "done")
        audit = [x for x in c.history("kind=audit&limit=100")["records"]
                 if x.get("operation_id") == "h-finish-2"]
        self.assertEqual(len(audit), 1, audit)
        self.assertIs(audit[0]["force"], True)
        self.assertEqual(audit[0]["result"]["code"], "ok")
        # The update is over: readiness no longer held back.
        r = c.get("/readyz")
        self.assertEqual(r.status, 200, r)

    def test_post_update_rerun_at_finish(self):
        flag = self.outfile("healthy")
        self.hook("post-update", "db-check", "[ -e %s ] && exit 0\nexit 2\n" % flag)
        a = self.hooked_agent()
        c = a.client()
        self.stage(a)
        self.assertStateDoc(c.post("/v1/prepare"))
        self.reboot(a)
        self.assertEqual(c.get("/readyz").status, 503)
        # The host recovers: the next finish runs the checks again and goes through.
        with open(flag, "w"):
            pass
        d = self.assertStateDoc(c.post("/v1/finish"))
        self.assertEqual(d["state"], "normal")
        self.assertNotIn("force", d["operation"])
        self.assertEqual([x["exit_code"] for x in self.hook_records(a)], [2, 0])
        self.assertEqual(c.get("/readyz").status, 200)

    def test_unsafe_hooks_ignored_with_a_log_line(self):
        self.hook("pre-prepare", "not-exec", "exit 1\n", mode=0o644)
        self.hook("pre-prepare", "world-writable", "exit 1\n", mode=0o757)
        self.hook("pre-prepare", "ok", "exit 0\n")
        self.hook("pre-prepare", "backup~", "exit 1\n")
        self.hook("pre-prepare", ".hidden", "exit 1\n")
        a = self.hooked_agent()
        d = self.assertStateDoc(a.client().post("/v1/prepare"))
        self.assertEqual(d["state"], "prepared")
        self.assertEqual([x["hook"] for x in self.hook_records(a)], ["ok"])
        log = a.log()
        self.assertIn("not-exec is not executable, ignored", log)
        self.assertIn("world-writable is writable by group or others", log)
        self.assertNotIn("backup~", log)

    def start_refused(self, hooks_dir, name):
        """The agent with --hooks-dir=hooks_dir: refused at start-up (exit 2); its stderr."""
        a = self.agent("--hooks-dir=" + hooks_dir, start=False, name=name)
        p = subprocess.run(a.command(), capture_output=True, timeout=30 * harness.SCALE)
        self.assertEqual(p.returncode, 2, p.stderr.decode())
        return p.stderr.decode()

    def test_writable_phase_directory_refused(self):
        # Fail closed: a veto hook in a directory anyone may write is not trusted, and the
        # phase is not passed without it.
        self.hook("pre-prepare", "veto", "exit 1\n")
        phase_dir = os.path.join(self.hooks, "pre-prepare.d")
        os.chmod(phase_dir, 0o777)
        err = self.start_refused(self.hooks, "writable")
        self.assertIn("Refusing to start: %s: writable by group or others, or not owned by root "
                      "or this user: its hooks cannot run" % phase_dir, err)
        # Made writable while the agent runs: the prepare is refused, nothing changes.
        os.chmod(phase_dir, 0o755)
        a = self.hooked_agent()
        os.chmod(phase_dir, 0o777)
        r = a.client().post("/v1/prepare", json_body={"operation_id": "h-w"})
        self.assertProblem(r, 500, "hooks-unreadable")
        self.assertIn(phase_dir, r.json["detail"])
        self.assertTrue(r.json["detail"].endswith("; prepare was not done"), r.json["detail"])
        self.assertEqual(a.client().state()["state"], "normal")
        self.assertEqual(a.sim_kernel()["state"], "normal")

    def test_unreadable_hooks_directory_refused(self):
        # The network side runs as nobody: a root-only hooks tree is one it cannot read,
        # which used to mean "no hooks" and a prepare nobody vetoed.
        if os.geteuid() != 0:
            self.skipTest("needs root: the agent drops its network side to nobody")
        self.hook("pre-prepare", "veto", "exit 1\n")
        os.chmod(self.hooks, 0o700)
        err = self.start_refused(self.hooks, "private")
        self.assertRegex(err, r"Refusing to start: --hooks-dir=%s: Permission denied \(this "
                              r"process, uid \d+, cannot read it" % re.escape(self.hooks))
        # A phase directory that becomes unreadable while the agent runs: refused.
        os.chmod(self.hooks, 0o755)
        a = self.hooked_agent()
        os.chmod(os.path.join(self.hooks, "pre-prepare.d"), 0o700)
        r = a.client().post("/v1/prepare", json_body={"operation_id": "h-u"})
        self.assertProblem(r, 500, "hooks-unreadable")
        self.assertIn("pre-prepare.d: Permission denied", r.json["detail"])
        self.assertEqual(a.client().state()["state"], "normal")

    def test_missing_hooks_directory_refused(self):
        absent = os.path.join(self.hooks, "absent")
        err = self.start_refused(absent, "absent")
        self.assertIn("Refusing to start: --hooks-dir=%s: No such file or directory" % absent,
                      err)

    def test_no_phase_directories(self):
        # An empty hooks tree: no hooks, every action goes through.
        a = self.hooked_agent()
        c = a.client()
        self.assertStateDoc(c.post("/v1/prepare"))
        self.assertStateDoc(c.post("/v1/cancel"))
        r = c.get("/readyz")
        self.assertEqual(r.status, 200, r)
        self.assertIn("hooks", [x["name"] for x in r.json["checks"]])
        self.assertEqual(self.hook_records(a), [])


if __name__ == "__main__":
    harness.main()
