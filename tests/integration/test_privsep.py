#!/usr/bin/env python3
"""test_privsep.py: privilege separation (docs/privsep.md) with real processes: the
network-facing agent and its privileged helper (a child named luofleet-priv). Who holds what
(the simulated /dev/liveupdate lock in the helper, the state-directory lock in the network
process); started as root, the network process runs as the run user without capabilities
and the helper as uid 0 with exactly CAP_SYS_BOOT, through a full prepare -> reboot ->
finish cycle; kill -9 of the helper (idle, and with an operation in flight) makes the agent
exit 1 within 2 s, and the restart reports the kernel's state, never moves the index back and
never carries an operation out twice (kernel.json "applied"); kill -9 of the network process
takes the helper with it, cutting a stalled kernel call; the helper's backend_open() errors
keep their exit codes and sentences.

Root-only cases skip with a message when not run as root (CI runs as root)."""

import fcntl
import os
import pwd
import signal
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import AgentTestCase, Background, make_file, run_agent, wait_for  # noqa: E402

setUpModule, tearDownModule = harness.module_fixtures(__file__)

CAP_SYS_BOOT = 22
IS_ROOT = os.geteuid() == 0
ROOT_ONLY = "needs root: the privilege drop is only done when started as uid 0"


def status(pid):
    """/proc/PID/status as a dict of strings."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def ids(st, key):
    return [int(x) for x in st[key].split()]


def caps(st, key):
    return int(st[key], 16)


def children(pid):
    """Pids whose parent is pid."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if int(status(int(d))["PPid"]) == pid:
                out.append(int(d))
        except (OSError, KeyError, ValueError):
            pass
    return out


def helper_of(agent):
    """The agent's privileged helper: its one child named luofleet-priv."""
    found = [p for p in children(agent.pid) if status(p).get("Name") == "luofleet-priv"]
    if len(found) != 1:
        raise AssertionError("agent %d has helpers %r" % (agent.pid, found))
    return found[0]


def alive(pid):
    """Running (a zombie or a vanished pid is not)."""
    try:
        return status(pid).get("State", "Z")[0] not in "ZX"
    except OSError:
        return False


def fd_targets(pid):
    out = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            out.add(os.readlink("/proc/%d/fd/%s" % (pid, fd)))
        except OSError:
            pass
    return out


def applied(a):
    """What the simulated machine carried out (kernel.json "applied")."""
    return a.sim_kernel()["applied"]


class PrivsepTest(AgentTestCase):

    def setUp(self):
        super().setUp()
        # A dropped network process (and a re-executed one) must reach the state directory
        # and the staged files by path: this test's directory readable, the directory of
        # all the tests' directories (the unit suites create it 0700) at least traversable.
        os.chmod(self.tmp, 0o755)
        base = os.path.dirname(self.tmp)
        mode = os.stat(base).st_mode
        if IS_ROOT and not mode & 0o001:
            os.chmod(base, (mode & 0o7777) | 0o011)

    def stage(self, a, op_id="p-stage"):
        files = os.path.join(self.tmp, "files")
        os.makedirs(files, mode=0o755, exist_ok=True)
        kpath, ksha = make_file(files, "vmlinuz", 4096)
        os.chmod(kpath, 0o644)
        r = a.client().put("/v1/kernel", json_body={"kernel": {"path": kpath, "sha256": ksha},
                                                    "cmdline": "quiet", "operation_id": op_id})
        self.assertEqual(r.status, 200, r)
        return r.json

    def records_ok(self, a, before_index):
        """The journal after a restart: 1..N without a gap, N >= before_index."""
        d = a.client().state()
        self.assertGreaterEqual(d["index"], before_index)
        recs = a.client().all_records()
        self.assertEqual([r["index"] for r in recs], list(range(1, d["index"] + 1)))
        return d, recs

    # -- the two processes

    def test_helper_holds_the_kernel_the_agent_holds_the_state_dir(self):
        a = self.agent()
        h = helper_of(a)
        d = a.client().state()
        self.assertEqual(d["backend"], "sim")  # from the helper's HELLO
        self.assertEqual(d["state"], "normal")
        self.assertIn("Privilege separation", a.log())
        lock = os.path.realpath(a.sim_path("lock"))
        agent_lock = os.path.realpath(os.path.join(a.state_dir, "agent.lock"))
        self.assertIn(lock, fd_targets(h))
        self.assertNotIn(lock, fd_targets(a.pid))
        # The helper must not keep the state directory's lock (the re-exec would deadlock),
        # nor anything else of the network side's: the channels and the simulator only.
        self.assertIn(agent_lock, fd_targets(a.pid))
        self.assertNotIn(agent_lock, fd_targets(h))
        self.assertFalse([t for t in fd_targets(h) if t.startswith(os.path.realpath(
            a.state_dir)) and not t.startswith(os.path.realpath(a.sim_path()))],
            fd_targets(h))
        hs, ns = status(h), status(a.pid)
        self.assertEqual(hs["NoNewPrivs"], "1")
        self.assertEqual(ns["NoNewPrivs"], "1")
        # The agent works through it.
        self.assertEqual(a.client().post("/v1/prepare").json["state"], "prepared")
        self.assertEqual(a.client().post("/v1/cancel").json["state"], "normal")
        self.assertEqual(applied(a)["prepare"], 1)
        self.assertEqual(applied(a)["cancel"], 1)

    def test_privsep_no_keeps_the_backend_in_process(self):
        a = self.agent("--privsep=no")
        self.assertEqual([p for p in children(a.pid)
                          if status(p).get("Name") == "luofleet-priv"], [])
        self.assertIn(os.path.realpath(a.sim_path("lock")), fd_targets(a.pid))
        self.assertEqual(a.client().post("/v1/prepare").json["state"], "prepared")

    def test_sigterm_stops_the_helper(self):
        a = self.agent()
        h = helper_of(a)
        self.assertEqual(a.stop(), 0)
        wait_for(lambda: not alive(h), timeout=2, what="the helper to exit")
        a.restart()
        self.assertNotEqual(helper_of(a), h)

    # -- root: the drop

    @unittest.skipUnless(IS_ROOT, ROOT_ONLY)
    def test_root_drops_the_network_process(self):
        nobody = pwd.getpwnam("nobody")
        a = self.agent("--user=nobody")
        h = helper_of(a)
        ns, hs = status(a.pid), status(h)
        self.assertEqual(ids(ns, "Uid"), [nobody.pw_uid] * 4, ns)
        self.assertEqual(ids(ns, "Gid"), [nobody.pw_gid] * 4, ns)
        self.assertEqual(caps(ns, "CapEff"), 0, ns)
        self.assertEqual(caps(ns, "CapPrm"), 0, ns)
        self.assertEqual(caps(ns, "CapInh"), 0, ns)
        self.assertEqual(caps(ns, "CapAmb"), 0, ns)
        # The helper: uid 0, exactly CAP_SYS_BOOT (and nothing an exec could give back); its
        # file system identity is the run user's.
        self.assertEqual(ids(hs, "Uid"), [0, 0, 0, nobody.pw_uid], hs)
        self.assertEqual(ids(hs, "Gid"), [0, 0, 0, nobody.pw_gid], hs)
        self.assertEqual(caps(hs, "CapEff"), 1 << CAP_SYS_BOOT, hs)
        self.assertEqual(caps(hs, "CapPrm"), 1 << CAP_SYS_BOOT, hs)
        self.assertEqual(caps(hs, "CapBnd"), 1 << CAP_SYS_BOOT, hs)
        self.assertEqual(caps(hs, "CapInh"), 0, hs)
        self.assertEqual(hs["NoNewPrivs"], "1")
        self.assertEqual(hs["Groups"], "")
        # The state directory and the simulator's files were handed to the run user.
        for p in (a.state_dir, os.path.join(a.state_dir, "journal"), a.sim_path(),
                  a.sim_path("kernel.json")):
            self.assertEqual(os.stat(p).st_uid, nobody.pw_uid, p)
        self.assertIn("this process runs as nobody", a.log())

        # A full cycle through the helper, across the simulated kexec.
        pid = a.pid
        c = a.client()
        self.stage(a, op_id="r-stage")
        self.assertEqual(c.post("/v1/prepare", json_body={"operation_id": "r-prep"})
                         .json["state"], "prepared")
        before = c.state()
        r = a.direct().post("/v1/reboot", json_body={"operation_id": "r-reboot"})
        self.assertEqual(r.status, 202, r)
        d = a.wait_ready(timeout=10 * harness.SCALE)
        deadline = time.monotonic() + 10 * harness.SCALE
        while d["boot_id"] == before["boot_id"]:
            self.assertLess(time.monotonic(), deadline, "no new boot")
            time.sleep(0.02)
            d = a.wait_ready(timeout=10 * harness.SCALE)
        self.assertEqual(a.pid, pid)
        self.assertEqual(d["state"], "updated")
        self.assertGreater(d["index"], before["index"])
        self.assertFalse(alive(h), "the old helper outlived the simulated kexec")
        h2 = helper_of(a)
        self.assertNotEqual(h2, h)
        # Documented: re-executed after the drop, both processes are the run user's now.
        self.assertEqual(ids(status(a.pid), "Uid")[0], nobody.pw_uid)
        self.assertEqual(ids(status(h2), "Uid")[0], nobody.pw_uid)
        self.assertEqual(a.client().post("/v1/finish", json_body={"operation_id": "r-fin"})
                         .json["state"], "normal")
        k = a.sim_kernel()
        self.assertEqual(k["boots"], 2)
        self.assertEqual({n: k["applied"][n] for n in ("load", "prepare", "freeze", "kexec",
                                                          "finish")},
                         {"load": 1, "prepare": 1, "freeze": 1, "kexec": 1, "finish": 1})
        self.records_ok(a, d["index"])

    @unittest.skipUnless(IS_ROOT, ROOT_ONLY)
    def test_root_default_user(self):
        try:
            want = pwd.getpwnam("luofleet")
        except KeyError:
            want = pwd.getpwnam("nobody")
        # --privsep=yes: a run without --user (the harness may add --user=root otherwise).
        a = self.agent("--privsep=yes")
        self.assertEqual(ids(status(a.pid), "Uid"), [want.pw_uid] * 4)
        if want.pw_name == "nobody":
            self.assertIn("No user luofleet on this host", a.log())

    @unittest.skipUnless(IS_ROOT, ROOT_ONLY)
    def test_root_refuses_an_unknown_user(self):
        sd = os.path.join(self.tmp, "st")
        rc, out, err = run_agent(["--backend=sim", "--state-dir=%s" % sd,
                                  "--listen=127.0.0.1:0", "--user=no-such-user-lf"])
        self.assertEqual(rc, 1, err)
        self.assertIn("no-such-user-lf", err)
        self.assertNotIn("listening on", out)

    # -- kill -9 of the helper

    def kill_helper_and_wait(self, a):
        h = helper_of(a)
        t = time.monotonic()
        os.kill(h, signal.SIGKILL)
        rc = a.wait_exit(timeout=2)
        self.assertLess(time.monotonic() - t, 2.0)
        self.assertEqual(rc, 1, a.log())
        self.assertIn("The privileged helper (pid %d) was killed by signal 9" % h, a.log())
        return rc

    def test_kill_helper_idle(self):
        a = self.agent()
        self.stage(a)
        r = a.client().post("/v1/prepare", json_body={"operation_id": "k-prep"})
        self.assertEqual(r.json["state"], "prepared")
        before = r.json["index"]
        self.kill_helper_and_wait(a)
        k = a.sim_kernel()
        a.restart()
        d, recs = self.records_ok(a, before)
        self.assertEqual(d["state"], k["state"])
        self.assertEqual(d["state"], "prepared")
        self.assertEqual(d["operation"], r.json["operation"])
        # The prepare replays without acting: still carried out once.
        r2 = a.client().post("/v1/prepare", json_body={"operation_id": "k-prep"})
        self.assertEqual(r2.status, 200, r2)
        self.assertEqual(r2.json["operation"], r.json["operation"])
        self.assertEqual(applied(a)["prepare"], 1)
        self.assertEqual(applied(a)["load"], 1)
        self.assertEqual(sum(1 for x in recs if x["kind"] == "transition"
                             and x["to"] == "prepared"), 1)

    def test_kill_helper_with_an_operation_in_flight(self):
        a = self.agent("--sim-fault=prepare=1500ms")
        c = a.client()
        bg = Background(lambda: c.post("/v1/prepare", json_body={"operation_id": "k-slow"}))
        d = wait_for(lambda: (lambda s: s if s["operation"] and
                              s["operation"]["status"] == "running" else None)(c.state()),
                     what="the slow prepare to run")
        time.sleep(0.2)  # inside the simulated kernel's stall
        self.kill_helper_and_wait(a)
        try:
            bg.get(timeout=5)
        except OSError:
            pass  # the connection died with the agent
        k = a.sim_kernel()
        self.assertEqual(k["state"], "normal")  # the stall was cut with the helper
        self.assertEqual(k["applied"]["prepare"], 0)
        a.restart(args=[])
        d2, recs = self.records_ok(a, d["index"])
        self.assertEqual(d2["state"], "normal")
        op = d2["operation"]
        self.assertOperation(op, action="prepare", status="failed", id="k-slow")
        self.assertEqual(op["error"]["code"], "kernel-error")
        ends = [x for x in recs if x["kind"] == "operation" and x["operation"]["id"] == "k-slow"]
        self.assertEqual([x["operation"]["status"] for x in ends], ["running", "failed"])
        # Nothing recorded the failure before the helper's loss ended the agent: the end
        # record is the restart's judgement.
        self.assertEqual(ends[-1]["http_status"], 500)
        r = a.client().post("/v1/prepare", json_body={"operation_id": "k-slow"})
        self.assertProblem(r, 500, "kernel-error", replayed=True, operation_id="k-slow")
        self.assertEqual(applied(a)["prepare"], 0)
        # The host goes on.
        self.assertEqual(a.client().post("/v1/prepare").json["state"], "prepared")
        self.assertEqual(applied(a)["prepare"], 1)

    def test_kill_helper_during_a_slow_reboot(self):
        a = self.agent()
        self.stage(a)
        self.assertEqual(a.client().post("/v1/prepare").json["state"], "prepared")
        with open(a.sim_path("faults"), "w") as f:
            f.write("reboot=1500ms\n")
        os.chmod(a.sim_path("faults"), 0o644)
        r = a.direct().post("/v1/reboot", json_body={"operation_id": "k-reboot"})
        self.assertEqual(r.status, 202, r)
        time.sleep(0.5)  # inside the stall, before the freeze
        self.kill_helper_and_wait(a)
        k = a.sim_kernel()
        self.assertEqual((k["state"], k["reboot_pending"]), ("prepared", False))
        os.unlink(a.sim_path("faults"))
        a.restart()
        d, recs = self.records_ok(a, r.json["index"])
        self.assertEqual(d["state"], "prepared")
        self.assertEqual(d["boot_id"], k["boot_id"])
        self.assertOperation(d["operation"], action="reboot", status="failed", id="k-reboot")
        self.assertEqual((applied(a)["freeze"], applied(a)["kexec"]), (0, 0))

    # -- kill -9 of the network process

    def test_kill_network_process_takes_the_helper(self):
        a = self.agent()
        h = helper_of(a)
        a.kill9()
        wait_for(lambda: not alive(h), timeout=2, what="the helper to exit with its agent")
        a.restart()
        self.assertEqual(a.client().state()["state"], "normal")

    def test_kill_network_process_cuts_the_kernel_call(self):
        a = self.agent("--sim-fault=prepare=2000ms")
        c = a.client()
        h = helper_of(a)
        bg = Background(lambda: c.post("/v1/prepare", json_body={"operation_id": "n-slow"}))
        d = wait_for(lambda: (lambda s: s if s["operation"] and
                              s["operation"]["status"] == "running" else None)(c.state()),
                     what="the slow prepare to run")
        time.sleep(0.2)
        a.kill9()
        wait_for(lambda: not alive(h), timeout=2, what="the helper to exit with its agent")
        try:
            bg.get(timeout=5)
        except OSError:
            pass
        time.sleep(2.0)  # past the end of the stall: nothing may land late
        k = a.sim_kernel()
        self.assertEqual(k["state"], "normal")
        self.assertEqual(k["applied"]["prepare"], 0)
        a.restart(args=[])
        d2, _ = self.records_ok(a, d["index"])
        self.assertEqual(d2["state"], "normal")
        self.assertOperation(d2["operation"], action="prepare", status="failed", id="n-slow")

    # -- exit codes and sentences from the helper's backend_open()

    def test_busy_backend_keeps_exit_code_4(self):
        a = self.agent(start=False)
        os.makedirs(a.sim_path(), exist_ok=True)
        with open(a.sim_path("lock"), "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            rc, out, err = run_agent(a.command()[1:])
        self.assertEqual(rc, 4, err)
        self.assertIn("another live-update agent holds the simulated /dev/liveupdate", err)
        self.assertNotIn("listening on", out)

    def test_no_backend_keeps_exit_code_3(self):
        root = os.path.join(self.tmp, "fake-root")
        os.makedirs(root)
        rc, out, err = run_agent(["--backend=luo-v3", "--root=%s" % root,
                                  "--state-dir=%s" % os.path.join(self.tmp, "st"),
                                  "--listen=127.0.0.1:0"])
        self.assertEqual(rc, 3, err)
        self.assertIn(root, err)
        self.assertIn("--backend=sim", err)
        self.assertNotIn("listening on", out)


if __name__ == "__main__":
    harness.main()
