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

What root does before the drop, or the helper does for the network process after it
(RootOnlyFilesTest): a port below 1024 (kept across the simulated kexec's re-execution as the
run user), a Unix socket in a root-only directory with --unix-group (removed at the stop by the
helper), a 0600 tokens file and a 0600 TLS key in 0700 root directories, at start and on a
SIGHUP reload (OPEN_CONFIG), and a 0600 kernel image in a 0700 staging directory
(OPEN_STAGING), with the confinement to --staging-dir applied by the helper.

Root-only cases skip with a message when not run as root (CI runs as root)."""

import fcntl
import grp
import hashlib
import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
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
        # saved ids and file system identity are the run user's (its query thread moves the
        # file system identity to 0 and back for OPEN_CONFIG and OPEN_STAGING).
        self.assertEqual(ids(hs, "Uid"), [0, 0, nobody.pw_uid, nobody.pw_uid], hs)
        self.assertEqual(ids(hs, "Gid"), [0, 0, nobody.pw_gid, nobody.pw_gid], hs)
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
        # Without --user the network process runs as luofleet, and never silently as nobody
        # (an identity other daemons share): without a luofleet user the start is refused.
        try:
            want = pwd.getpwnam("luofleet")
        except KeyError:
            want = None
        if want:
            a = self.agent("--privsep=yes", default_user=True)
            self.assertEqual(ids(status(a.pid), "Uid"), [want.pw_uid] * 4)
            return
        sd = os.path.join(self.tmp, "st-default")
        rc, out, err = run_agent(["--backend=sim", "--state-dir=%s" % sd,
                                  "--listen=127.0.0.1:0", "--privsep=yes"], default_user=True)
        self.assertEqual(rc, 2, err)
        self.assertIn("No user luofleet on this host: refusing to run the network process as "
                      "nobody, an identity other daemons share. Create the user", err)
        self.assertIn("--user=nobody if you accept sharing it", err)
        self.assertNotIn("listening on", out)

    @unittest.skipUnless(IS_ROOT, ROOT_ONLY)
    def test_root_refuses_an_unknown_user(self):
        sd = os.path.join(self.tmp, "st")
        rc, out, err = run_agent(["--backend=sim", "--state-dir=%s" % sd,
                                  "--listen=127.0.0.1:0", "--user=no-such-user-lf"])
        self.assertEqual(rc, 2, err)  # a configuration error: the unit does not restart
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


# -- root-only files and privileged addresses --------------------------------------------------

def free_low_port():
    """A free TCP port below 1024 on 127.0.0.1 (root binds it here only to look)."""
    for port in range(1023, 600, -1):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise unittest.SkipTest("no free port below 1024 on 127.0.0.1")


def unix_get(path, url):
    status, _, data = harness.unix_request(path, "GET", url)
    return status, data


def make_token(name, role):
    p = subprocess.run([harness.agent_path(), "token", name, role], capture_output=True,
                       timeout=10)
    if p.returncode != 0:
        raise AssertionError("token command failed: %r" % (p,))
    return p.stdout.decode().strip(), p.stderr.decode().strip()


def write_root_only(path, data):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def self_signed(d, name):
    """A self-signed certificate for 127.0.0.1 and its key: (cert path, key path)."""
    cert, key = os.path.join(d, name + ".pem"), os.path.join(d, name + ".key")
    p = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "2", "-subj", "/CN=" + name,
                        "-addext", "subjectAltName=IP:127.0.0.1"],
                       capture_output=True, timeout=60)
    if p.returncode != 0:
        raise AssertionError("openssl failed: %s" % p.stderr.decode())
    return cert, key


def served_fingerprint(port):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as s:
            return hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()


def pem_fingerprint(path):
    with open(path) as f:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).hexdigest()


@unittest.skipUnless(IS_ROOT, ROOT_ONLY)
class RootOnlyFilesTest(AgentTestCase):
    """Started as root, the agent's network process runs as nobody; everything below is
    root's alone (0600 files in 0700 root directories, a port below 1024)."""

    def setUp(self):
        super().setUp()
        self.nobody = pwd.getpwnam("nobody")

    def root_dir(self, name):
        d = os.path.join(self.tmp, name)
        os.mkdir(d, 0o700)
        os.chmod(d, 0o700)
        st = os.stat(d)
        self.assertEqual((st.st_uid, stat.S_IMODE(st.st_mode)), (0, 0o700))
        return d

    def assert_dropped(self, a):
        self.assertEqual(ids(status(a.pid), "Uid"), [self.nobody.pw_uid] * 4)
        self.assertEqual(caps(status(a.pid), "CapEff"), 0)

    def wait_log(self, a, text, timeout=10):
        wait_for(lambda: text in a.log(), timeout=timeout, what=repr(text))

    def test_port_below_1024_across_the_simulated_kexec(self):
        port = free_low_port()
        a = self.agent("--user=nobody", port=port)
        self.assertEqual(a.port, port)
        self.assertIn("luofleet-agent: listening on http://127.0.0.1:%d\n" % port,
                      a.stdout().decode())
        self.assert_dropped(a)
        c = a.client()
        self.assertEqual(c.state()["state"], "normal")
        # A full cycle: the re-executed agent is nobody's, and keeps the port it could not
        # bind again (the listening socket is inherited across the re-execution).
        kpath, ksha = make_file(self.tmp, "vmlinuz", 4096)
        os.chmod(kpath, 0o600)
        r = c.put("/v1/kernel", json_body={"kernel": {"path": kpath, "sha256": ksha},
                                           "cmdline": "quiet", "operation_id": "low-stage"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(c.post("/v1/prepare").json["state"], "prepared")
        before = c.state()
        pid = a.pid
        self.assertEqual(a.direct().post("/v1/reboot").status, 202)
        deadline = time.monotonic() + 10 * harness.SCALE
        d = before
        while d["boot_id"] == before["boot_id"]:
            self.assertLess(time.monotonic(), deadline, "no new boot")
            time.sleep(0.02)
            d = a.wait_ready(timeout=10 * harness.SCALE)
        self.assertEqual(d["state"], "updated")
        self.assertEqual(a.pid, pid)
        self.assertEqual(a.port, port)
        self.assertEqual(ids(status(a.pid), "Uid")[0], self.nobody.pw_uid)
        # The inherited socket answers before the new image prints its listening line.
        line = "luofleet-agent: listening on http://127.0.0.1:%d\n" % port
        harness.wait_for(lambda: a.stdout().decode().count(line) >= 2, timeout=10,
                         what="the re-executed agent's listening line")
        self.assertEqual(a.stdout().decode().count(line), 2)
        self.assertNotIn("Failed to listen", a.log())
        self.assertEqual(c.post("/v1/finish").json["state"], "normal")

    def test_unix_socket_in_a_root_only_directory(self):
        d = self.socket_dir(0o700)
        sock = os.path.join(d, "agent.sock")
        group = grp.getgrnam("daemon")  # not one of nobody's groups
        self.assertNotIn("daemon", [g.gr_name for g in grp.getgrall()
                                    if "nobody" in g.gr_mem])
        a = self.agent("--user=nobody", "--listen=unix:" + sock,
                       "--unix-group=%d" % group.gr_gid)
        self.assertIn("luofleet-agent: listening on unix:%s\n" % sock, a.stdout().decode())
        self.assert_dropped(a)
        st = os.stat(sock)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual((st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)),
                         (0, group.gr_gid, 0o660))
        status_, body = unix_get(sock, "/v1/state")
        self.assertEqual(status_, 200)
        self.assertEqual(json.loads(body)["state"], "normal")
        # nobody may not remove it from root's directory: the helper does, at the stop.
        self.assertEqual(a.stop(), 0)
        self.assertFalse(os.path.exists(sock), "the socket is removed at a clean stop")

    def test_root_only_tokens_file_and_sighup(self):
        d = self.root_dir("etc")
        tokens = os.path.join(d, "tokens")
        old_token, old_line = make_token("first", "viewer")
        write_root_only(tokens, (old_line + "\n").encode())
        a = self.agent("--user=nobody", "--tokens=" + tokens)
        self.assert_dropped(a)
        self.assertIn("Authentication: 1 bearer tokens from %s" % tokens, a.log())
        c = a.client()
        auth = {"Authorization": "Bearer " + old_token}
        self.assertEqual(c.get("/v1/state", headers=auth).status, 200)
        self.assertEqual(c.get("/v1/state").status, 401)

        new_token, new_line = make_token("rotated", "viewer")
        write_root_only(tokens, (new_line + "\n").encode())
        os.kill(a.pid, signal.SIGHUP)
        self.wait_log(a, "SIGHUP: 1 tokens loaded from %s" % tokens)
        self.assertEqual(c.get("/v1/state", headers={"Authorization": "Bearer " + new_token})
                         .status, 200)
        self.assertEqual(c.get("/v1/state", headers=auth).status, 401)
        self.assertNotIn("tokens not reloaded", a.log())

    def test_root_only_tls_key_and_sighup(self):
        pki = self.root_dir("pki")
        cert1, key1 = self_signed(pki, "one")
        cert2, key2 = self_signed(pki, "two")
        d = self.root_dir("tls")
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        shutil.copy(cert1, cert)
        shutil.copy(key1, key)
        os.chmod(key, 0o600)
        a = self.agent("--user=nobody", "--tls-cert=" + cert, "--tls-key=" + key, port=0)
        self.assertIn("luofleet-agent: listening on https://127.0.0.1:%d\n" % a.port,
                      a.stdout().decode())
        self.assert_dropped(a)
        self.assertEqual(served_fingerprint(a.port), pem_fingerprint(cert1))

        shutil.copy(cert2, cert)
        shutil.copy(key2, key)
        os.chmod(key, 0o600)
        os.kill(a.pid, signal.SIGHUP)
        want = pem_fingerprint(cert2)
        self.wait_log(a, "TLS: reloaded; certificate SHA-256 fingerprint now %s" % want)
        self.assertEqual(served_fingerprint(a.port), want)
        self.assertNotIn("TLS not reloaded", a.log())

    def test_stage_a_root_only_kernel_from_a_root_only_directory(self):
        boot = self.root_dir("boot")
        kpath, ksha = make_file(boot, "vmlinuz", 8192)
        ipath, isha = make_file(boot, "initrd.img", 4096)
        for p in (kpath, ipath):
            os.chmod(p, 0o600)
        outside, osha = make_file(self.tmp, "elsewhere", 4096)
        os.symlink(outside, os.path.join(boot, "escape"))
        a = self.agent("--user=nobody", "--staging-dir=" + boot)
        self.assert_dropped(a)
        c = a.client()
        r = c.put("/v1/kernel", json_body={"kernel": {"path": kpath, "sha256": ksha},
                                           "initrd": {"path": ipath, "sha256": isha},
                                           "cmdline": "quiet", "operation_id": "root-only"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["staged"]["kernel"],
                         {"path": kpath, "sha256": ksha, "size": 8192})
        self.assertEqual(r.json["staged"]["initrd"],
                         {"path": ipath, "sha256": isha, "size": 4096})
        self.assertEqual(a.sim_kernel()["applied"]["load"], 1)
        # Outside the staging directory, by name or through a symlink: refused.
        for path in (outside, os.path.join(boot, "escape")):
            r = c.put("/v1/kernel", json_body={"kernel": {"path": path, "sha256": osha}})
            self.assertEqual(r.status, 422, r)
            self.assertEqual(r.json["code"], "path-not-allowed", r)
        r = c.put("/v1/kernel", json_body={"kernel": {"path": os.path.join(boot, "missing"),
                                                      "sha256": ksha}})
        self.assertEqual((r.status, r.json["code"]), (422, "file-not-found"), r)
        self.assertEqual(r.json["detail"], "kernel: %s does not exist"
                         % os.path.join(boot, "missing"))


SETPRIV = shutil.which("setpriv")
UNIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy", "systemd",
                    "luofleet-agent.service")


def unit_bounding_set():
    """setpriv's --bounding-set for the unit's CapabilityBoundingSet= (no CAP_DAC_*)."""
    with open(UNIT) as f:
        for line in f:
            if line.startswith("CapabilityBoundingSet="):
                caps = line.split("=", 1)[1].split()
                return ",".join(["-all"] + ["+" + c.lower()[len("cap_"):] for c in caps])
    raise AssertionError("no CapabilityBoundingSet= in " + UNIT)


def https_get(port, path, headers=None):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


@unittest.skipUnless(IS_ROOT, ROOT_ONLY)
@unittest.skipUnless(SETPRIV, "setpriv is not installed (Debian package util-linux)")
class UnitLayoutTest(AgentTestCase):
    """docs/systemd.md's layout under the unit's bounding set, where root has no
    CAP_DAC_OVERRIDE: /run/luofleet is the run user's (the tmpfiles.d file), so root creates
    the socket there with the run user's file system identity; the tokens file is root's
    (0600, in a 0700 root directory: root owns it, no capability needed), and a TLS key the run
    user owns (0600) is opened through the helper, which falls back from uid 0 to the run
    user, at the start and on SIGHUP."""

    def test_unit_layout(self):
        nobody = pwd.getpwnam("nobody")
        # Short: a socket path has at most 107 bytes.
        run = tempfile.mkdtemp(prefix="lf-run-", dir="/tmp")
        self.addCleanup(shutil.rmtree, run, True)
        os.chmod(run, 0o755)
        os.chown(run, nobody.pw_uid, nobody.pw_gid)
        sock = os.path.join(run, "agent.sock")
        etc = os.path.join(self.tmp, "etc")
        os.mkdir(etc, 0o700)
        tokens = os.path.join(etc, "tokens")
        token, line = make_token("ops", "operator")
        write_root_only(tokens, (line + "\n").encode())
        tls = os.path.join(self.tmp, "tls")
        os.mkdir(tls, 0o750)
        os.chown(tls, 0, nobody.pw_gid)
        cert1, key1 = self_signed(tls, "one")
        cert2, key2 = self_signed(tls, "two")
        cert, key = os.path.join(tls, "cert.pem"), os.path.join(tls, "key.pem")

        def install(c, k):
            shutil.copy(c, cert)
            os.chmod(cert, 0o644)
            shutil.copy(k, key)
            os.chmod(key, 0o600)
            os.chown(key, nobody.pw_uid, nobody.pw_gid)

        install(cert1, key1)
        a = self.agent("--user=nobody", "--listen=unix:" + sock, "--tokens=" + tokens,
                       "--tls-cert=" + cert, "--tls-key=" + key, start=False, port=0)
        cmd = [SETPRIV, "--bounding-set", unit_bounding_set(), "--inh-caps=-all",
               "--ambient-caps=-all", "--no-new-privs"] + a.command()
        with open(a.stdout_path, "ab") as out, open(a.stderr_path, "ab") as err:
            a.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                      close_fds=True)
        a.port = a.wait_listening(0)
        self.assertEqual(ids(status(a.pid), "Uid"), [nobody.pw_uid] * 4)
        st = os.stat(sock)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual((st.st_uid, stat.S_IMODE(st.st_mode)), (nobody.pw_uid, 0o660))
        status_, body = unix_get(sock, "/v1/state")
        self.assertEqual(status_, 200)
        self.assertEqual(served_fingerprint(a.port), pem_fingerprint(cert1))
        auth = {"Authorization": "Bearer " + token}
        self.assertEqual(https_get(a.port, "/v1/state", auth), 200)
        self.assertEqual(https_get(a.port, "/v1/state"), 401)

        token2, line2 = make_token("ops2", "operator")
        write_root_only(tokens, (line2 + "\n").encode())
        install(cert2, key2)
        os.kill(a.pid, signal.SIGHUP)
        want = pem_fingerprint(cert2)
        wait_for(lambda: "SIGHUP: 1 tokens loaded from %s" % tokens in a.log()
                 and "fingerprint now %s" % want in a.log(), timeout=10, what="the reload")
        self.assertEqual(served_fingerprint(a.port), want)
        self.assertEqual(https_get(a.port, "/v1/state", {"Authorization": "Bearer " + token2}),
                         200)
        self.assertEqual(https_get(a.port, "/v1/state", auth), 401)
        self.assertEqual(a.stop(), 0)
        self.assertFalse(os.path.exists(sock), "the socket is removed at a clean stop")

if __name__ == "__main__":
    harness.main()
