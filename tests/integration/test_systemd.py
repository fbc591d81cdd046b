#!/usr/bin/env python3
"""test_systemd.py: the systemd integration (docs/systemd.md).

- The unit file, deploy/systemd/luofleet-agent.service: `systemd-analyze verify` passes without
  a word about the unit (on a copy whose ExecStart is the agent under test, since verify wants
  the binary to exist), and catches a broken copy; `systemd-analyze security --offline=true`
  scores it exactly as docs/systemd.md says (a regression fails, and so does an improvement
  nobody wrote down); the directives the agent's design depends on are there with their values.
- deploy/systemd/luofleet.sysusers.conf creates the luofleet system user, and
  luofleet.tmpfiles.conf a /run/luofleet that user owns (systemd-sysusers and systemd-tmpfiles
  into a scratch root).
- The sd_notify protocol, as a service manager sees it: the test binds the AF_UNIX datagram
  socket systemd would (NOTIFY_SOCKET, abstract, SO_PASSCRED so each message carries its
  sender's pid) and starts the agent (sim backend, 127.0.0.1 port 0) on it. READY=1 arrives
  once, from the main process, when the HTTP port already answers; WATCHDOG=1 every half
  WATCHDOG_USEC from the event-loop thread, and none without a watchdog or when WATCHDOG_PID
  names another process; STOPPING=1 at SIGTERM, then exit 0.
- The unit's CapabilityBoundingSet=, rehearsed without systemd (as root, with setpriv): the
  agent with privilege separation starts inside exactly that bounding set and
  NoNewPrivileges, drops its network process to `nobody`, drives the helper, stops with 0,
  and starts again once the state directory is root's again (what StateDirectory= does).

The agents here listen on kernel-chosen ports and are talked to directly: /healthz is all the
HTTP these tests need, so the suite runs no contract proxy. A case is skipped (with the reason)
only when systemd-analyze, systemd-sysusers or systemd-tmpfiles is not installed at all (the rehearsal also
when not root or without setpriv).
"""

import http.client
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

DEPLOY = os.path.join(harness.REPO_ROOT, "deploy", "systemd")
UNIT = os.path.join(DEPLOY, "luofleet-agent.service")
SYSUSERS = os.path.join(DEPLOY, "luofleet.sysusers.conf")
TMPFILES = os.path.join(DEPLOY, "luofleet.tmpfiles.conf")
DEFAULTS = os.path.join(DEPLOY, "luofleet-agent.default")
DOC = os.path.join(harness.REPO_ROOT, "docs", "systemd.md")
SHIPPED_EXEC_START = "/usr/local/bin/luofleet-agent $LUOFLEET_AGENT_ARGS"

ANALYZE = shutil.which("systemd-analyze")
SYSUSERS_BIN = shutil.which("systemd-sysusers")
TMPFILES_BIN = shutil.which("systemd-tmpfiles")

SCORE_RE = re.compile(r"Overall exposure level for luofleet-agent\.service: (\d+\.\d+) (\w+)")
# docs/systemd.md states the score once, as: Score: **2.9 OK**
DOC_SCORE_RE = re.compile(r"Score: \*\*(\d+\.\d+) (\w+)\*\*")


def unit_directives(text):
    """{(section, key): [values]} of a unit file (comments and blank lines skipped)."""
    out, section = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault((section, key.strip()), []).append(value.strip())
    return out


def unit_copy(tmp, exec_start, extra=""):
    """The shipped unit under its own name in tmp, ExecStart= pointing at exec_start."""
    with open(UNIT) as f:
        text = f.read()
    line = "ExecStart=" + SHIPPED_EXEC_START
    if text.count(line + "\n") != 1:
        raise AssertionError("%s: expected exactly one line %r" % (UNIT, line))
    text = text.replace(line + "\n", "ExecStart=%s $LUOFLEET_AGENT_ARGS\n" % exec_start)
    if extra:
        text = text.replace("[Service]\n", "[Service]\n" + extra, 1)
    path = os.path.join(tmp, "luofleet-agent.service")
    with open(path, "w") as f:
        f.write(text)
    return path


def run(cmd, cwd=None):
    p = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


class UnitFileTest(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        base = os.environ.get("LUOFLEET_TEST_TMP") or None
        if base:
            os.makedirs(base, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix="lf-it-unit-", dir=base)
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def verify(self, path):
        rc, out, err = run([ANALYZE, "verify", path], cwd=self.tmp)
        # verify may say things about the host's other units; what concerns us names ours.
        ours = [ln for ln in (out + err).splitlines()
                if "luofleet" in ln or self.tmp in ln]
        return rc, ours, out + err

    @unittest.skipUnless(ANALYZE, "systemd-analyze is not installed (Debian package systemd)")
    def test_verify_passes(self):
        binary = os.path.abspath(harness.agent_path())
        self.assertTrue(os.access(binary, os.X_OK), "the agent under test: %s" % binary)
        rc, ours, everything = self.verify(unit_copy(self.tmp, binary))
        self.assertEqual(ours, [], "systemd-analyze verify has something to say about the "
                                   "unit:\n%s" % everything)
        self.assertEqual(rc, 0, everything)

    @unittest.skipUnless(ANALYZE, "systemd-analyze is not installed (Debian package systemd)")
    def test_verify_catches_a_broken_unit(self):
        # The check above can fail: a misspelt directive and a bad value are reported.
        binary = os.path.abspath(harness.agent_path())
        rc, ours, everything = self.verify(unit_copy(
            self.tmp, binary, extra="ProtectSystm=strict\nWatchdogSec=soon\n"))
        text = "\n".join(ours)
        self.assertIn("ProtectSystm", text, everything)
        self.assertIn("soon", text, everything)
        # And a missing binary is an error.
        os.remove(os.path.join(self.tmp, "luofleet-agent.service"))
        rc, ours, everything = self.verify(unit_copy(self.tmp, "/nonexistent/luofleet-agent"))
        self.assertNotEqual(rc, 0, everything)
        self.assertIn("/nonexistent/luofleet-agent", "\n".join(ours), everything)

    @unittest.skipUnless(ANALYZE, "systemd-analyze is not installed (Debian package systemd)")
    def test_security_score_is_the_documented_one(self):
        with open(DOC) as f:
            documented = DOC_SCORE_RE.findall(f.read())
        self.assertEqual(len(documented), 1,
                         "docs/systemd.md must state the score exactly once as "
                         "'Score: **N.N RATING**'; found %r" % documented)
        rc, out, err = run([ANALYZE, "security", "--offline=true", "--no-pager", UNIT],
                           cwd=self.tmp)
        self.assertEqual(rc, 0, out + err)
        m = SCORE_RE.search(out + err)
        self.assertIsNotNone(m, "no overall exposure level in:\n%s" % (out + err))
        self.assertEqual((m.group(1), m.group(2)), documented[0],
                         "systemd-analyze security --offline=true scores the unit %s %s; "
                         "docs/systemd.md says %s %s. A higher figure is a regression; a "
                         "lower one belongs in the docs.\n%s"
                         % (m.group(1), m.group(2), documented[0][0], documented[0][1], out))

    def test_directives_the_design_depends_on(self):
        with open(UNIT) as f:
            d = unit_directives(f.read())
        want = {
            "Type": ["notify"],
            "NotifyAccess": ["all"],
            "FileDescriptorStoreMax": ["4096"],
            "ExecStart": [SHIPPED_EXEC_START],
            "ExecReload": ["/bin/kill -HUP $MAINPID"],
            "EnvironmentFile": ["-/etc/default/luofleet-agent"],
            "Restart": ["on-failure"],
            "WatchdogSec": ["30s"],
            "StateDirectory": ["luofleet"],
            "StateDirectoryMode": ["0700"],
            "ReadWritePaths": ["-/run/luofleet"],
            "UMask": ["0077"],
            "NoNewPrivileges": ["yes"],
            "ProtectSystem": ["strict"],
            "DevicePolicy": ["closed"],
            "DeviceAllow": ["/dev/liveupdate rw"],
            "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
            "SystemCallArchitectures": ["native"],
            "SystemCallFilter": ["@system-service kexec_file_load reboot"],
            "MemoryDenyWriteExecute": ["yes"],
        }
        got = {k: d.get(("Service", k)) for k in want}
        self.assertEqual(got, want)
        self.assertEqual(sorted(d[("Service", "CapabilityBoundingSet")][0].split()),
                         sorted(["CAP_SYS_BOOT", "CAP_SYS_ADMIN", "CAP_SETUID", "CAP_SETGID",
                                 "CAP_CHOWN", "CAP_SETPCAP"]))
        self.assertNotIn(("Service", "User"), d, "the agent starts as root and drops itself")
        nofile = int(d[("Service", "LimitNOFILE")][0])
        self.assertGreaterEqual(nofile, 10000 + 1000 + 64, "10k long-polls, 1k streams")
        # The defaults file sets the variable ExecStart= expands.
        with open(DEFAULTS) as f:
            self.assertRegex(f.read(), re.compile(r"^LUOFLEET_AGENT_ARGS=\"[^\"]*\"$", re.M))

    @unittest.skipUnless(SYSUSERS_BIN, "systemd-sysusers is not installed (Debian package "
                                       "systemd)")
    def test_sysusers_creates_the_system_user(self):
        root = os.path.join(self.tmp, "root")
        os.makedirs(os.path.join(root, "etc"))
        rc, out, err = run([SYSUSERS_BIN, "--root=" + root, SYSUSERS])
        self.assertEqual(rc, 0, out + err)
        with open(os.path.join(root, "etc", "passwd")) as f:
            users = [ln.split(":") for ln in f.read().splitlines()]
        self.assertEqual(len(users), 1, users)
        name, _, uid, gid, _, home, shell = users[0]
        self.assertEqual(name, "luofleet")
        self.assertLess(int(uid), 1000, "a system user")
        self.assertEqual(shell, "/usr/sbin/nologin")
        with open(os.path.join(root, "etc", "group")) as f:
            groups = [ln.split(":") for ln in f.read().splitlines()]
        self.assertEqual([(g[0], g[2]) for g in groups], [("luofleet", gid)])

    @unittest.skipUnless(SYSUSERS_BIN and TMPFILES_BIN, "systemd-sysusers or systemd-tmpfiles is "
                                                        "not installed (Debian package systemd)")
    def test_tmpfiles_creates_the_runtime_directory_for_the_user(self):
        root = os.path.join(self.tmp, "root")
        os.makedirs(os.path.join(root, "etc"))
        rc, out, err = run([SYSUSERS_BIN, "--root=" + root, SYSUSERS])
        self.assertEqual(rc, 0, out + err)
        with open(os.path.join(root, "etc", "passwd")) as f:
            uid, gid = [int(x) for x in f.read().split(":")[2:4]]
        rc, out, err = run([TMPFILES_BIN, "--create", "--root=" + root, TMPFILES])
        self.assertEqual(rc, 0, out + err)
        st = os.lstat(os.path.join(root, "run", "luofleet"))
        self.assertTrue(stat.S_ISDIR(st.st_mode))
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid), (0o755, uid, gid))
        # The unit lets the agent write there, and nowhere else in /run.
        with open(UNIT) as f:
            d = unit_directives(f.read())
        self.assertEqual(d[("Service", "ReadWritePaths")], ["-/run/luofleet"])


# ---------------------------------------------------------------------------------------------
# sd_notify


class NotifySocket:
    """The service manager's end: an abstract AF_UNIX datagram socket with SO_PASSCRED."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.name = "luofleet-test-notify-%d-%d" % (os.getpid(), time.monotonic_ns())
        self.sock.bind("\0" + self.name)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages = []  # (monotonic time, sender pid, {key: value}, raw text)

    @property
    def env(self):
        return "@" + self.name

    def close(self):
        self.sock.close()

    def receive(self, timeout):
        """One datagram within timeout (appended to messages and returned), or None."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            return None
        pid = None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
        text = data.decode("utf-8", "replace")
        fields = dict(ln.partition("=")[::2] for ln in text.split("\n") if ln)
        msg = (time.monotonic(), pid, fields, text)
        self.messages.append(msg)
        return msg

    def wait_for(self, key, value, timeout, proc=None, log=lambda: ""):
        """The first new message with key=value; fails on timeout or if proc exits."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no %s=%s within %.1fs; got %r; agent stderr:\n%s"
                                     % (key, value, timeout,
                                        [m[3] for m in self.messages], log()))
            m = self.receive(min(left, 0.1))
            if m and m[2].get(key) == value:
                return m
            if m is None and proc is not None and proc.poll() is not None:
                # Anything it sent before exiting is queued: one last look.
                m = self.receive(0.001)
                if m and m[2].get(key) == value:
                    return m
                raise AssertionError("the agent exited (%d) before %s=%s; stderr:\n%s"
                                     % (proc.returncode, key, value, log()))

    def collect(self, seconds):
        """Every message of the next `seconds`."""
        out, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            m = self.receive(deadline - time.monotonic())
            if m:
                out.append(m)
        return out

    def drain(self):
        out = []
        while True:
            m = self.receive(0.001)
            if not m:
                return out
            out.append(m)


def watchdogs(msgs):
    return [m for m in msgs if m[2].get("WATCHDOG") == "1"]


class NotifyTest(harness.AgentTestCase):
    def start(self, **env_extra):
        """An agent on 127.0.0.1:0 under our NOTIFY_SOCKET (not yet known to be listening)."""
        ns = NotifySocket()
        self.addCleanup(ns.close)
        env = {k: v for k, v in os.environ.items()
               if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
                            "LISTEN_PID")}
        env["NOTIFY_SOCKET"] = ns.env
        env.update({k: str(v) for k, v in env_extra.items()})
        a = self.agent(start=False, port=0)
        with open(a.stdout_path, "ab") as out, open(a.stderr_path, "ab") as err:
            err.write(("---- test_systemd: NOTIFY_SOCKET=%s %s: %s\n"
                       % (ns.env, " ".join("%s=%s" % kv for kv in env_extra.items()),
                          " ".join(a.command()))).encode())
            err.flush()
            a.proc = subprocess.Popen(a.command(), stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=err, env=env, close_fds=True)
        a.starts += 1
        return a, ns

    def wait_ready(self, a, ns):
        """READY=1 from the agent's main process; the port answers by then. Returns it."""
        m = ns.wait_for("READY", "1", harness.START_TIMEOUT, a.proc, a.log)
        # The listening line was printed before READY=1 ...
        found = harness.LISTEN_RE.search(a.stdout())
        self.assertIsNotNone(found, "READY=1 arrived before the agent printed its listening "
                                    "line; stdout: %r" % a.stdout())
        a.port = int(found.group(1))
        # ... and the port answers now, not a moment later.
        c = http.client.HTTPConnection("127.0.0.1", a.port, timeout=5)
        try:
            c.request("GET", "/healthz")
            r = c.getresponse()
            r.read()
        finally:
            c.close()
        self.assertEqual(r.status, 200, "GET /healthz right after READY=1")
        self.assertEqual(m[1], a.pid, "READY=1 must come from the main process "
                                      "(the helper sends only FDSTORE): %r" % (m,))
        return m

    def test_ready_once_listening_then_stopping_at_sigterm(self):
        a, ns = self.start()
        ready = self.wait_ready(a, ns)
        self.assertIn("backend sim", ready[2].get("STATUS", ""), ready)
        self.assertEqual([m[3] for m in ns.messages], [ready[3]],
                         "READY=1 is the first and only message before it")
        # No watchdog: no keep-alive, not even a timer.
        later = ns.collect(1.0)
        self.assertEqual(later, [], "without WATCHDOG_USEC the agent sends nothing")

        a.proc.send_signal(signal.SIGTERM)
        stopping = ns.wait_for("STOPPING", "1", harness.STOP_TIMEOUT, a.proc, a.log)
        self.assertEqual(stopping[1], a.pid)
        self.assertEqual(a.wait_exit(), 0, a.log())
        rest = ns.drain()
        self.assertEqual([m for m in rest if "READY" in m[2] or "STOPPING" in m[2]], [],
                         "nothing after STOPPING=1")
        self.assertEqual(sum(1 for m in ns.messages if m[2].get("READY") == "1"), 1)

    def test_watchdog_pings_at_half_the_interval(self):
        a, ns = self.start(WATCHDOG_USEC=400000)
        ready = self.wait_ready(a, ns)
        window = ns.collect(1.5)
        pings = watchdogs(window)
        # Every 200 ms: 7 or 8 in 1.5 s; at least 3 even on a loaded machine, and not a
        # timer gone wild.
        self.assertGreaterEqual(len(pings), 3, [m[3] for m in window])
        self.assertLessEqual(len(pings), 10, [m[3] for m in window])
        self.assertEqual({m[1] for m in pings}, {a.pid}, "keep-alives from the main process")
        times = [ready[0]] + [m[0] for m in pings]
        gaps = [b - t for t, b in zip(times, times[1:])]
        self.assertLess(max(gaps), 0.4 * harness.SCALE,
                        "a gap as long as WATCHDOG_USEC would get the agent killed: %r" % gaps)
        self.assertEqual([m for m in window if m not in pings], [], "nothing but keep-alives")
        a.stop()
        self.assertTrue(any(m[2].get("STOPPING") == "1" for m in ns.drain()))

    def test_no_watchdog_for_another_pid(self):
        # WATCHDOG_PID names the process the watchdog is for: here not the agent.
        a, ns = self.start(WATCHDOG_USEC=400000, WATCHDOG_PID=os.getpid())
        self.wait_ready(a, ns)
        self.assertEqual(watchdogs(ns.collect(1.0)), [])
        a.stop()

    def test_reload_is_bracketed(self):
        a, ns = self.start()
        self.wait_ready(a, ns)
        a.proc.send_signal(signal.SIGHUP)
        m = ns.wait_for("RELOADING", "1", 5.0, a.proc, a.log)
        self.assertRegex(m[2].get("MONOTONIC_USEC", ""), r"^\d+$")
        ns.wait_for("READY", "1", 5.0, a.proc, a.log)
        a.stop()


# ---------------------------------------------------------------------------------------------
# The unit's capability bounding set, rehearsed without systemd

SETPRIV = shutil.which("setpriv")
ROOT_UID = 0


def unit_bounding_set():
    """setpriv's --bounding-set for the unit's CapabilityBoundingSet=."""
    with open(UNIT) as f:
        caps = unit_directives(f.read())[("Service", "CapabilityBoundingSet")][0].split()
    return ",".join(["-all"] + ["+" + c.lower()[len("cap_"):] for c in caps])


def chown_tree_to_root(path):
    """What systemd does to a StateDirectory= at every start of a unit without User=."""
    os.chown(path, ROOT_UID, ROOT_UID, follow_symlinks=False)
    for top, dirs, files in os.walk(path):
        for n in dirs + files:
            os.chown(os.path.join(top, n), ROOT_UID, ROOT_UID, follow_symlinks=False)


@unittest.skipUnless(os.geteuid() == 0, "needs root: the agent's privilege separation is what "
                                         "is rehearsed")
@unittest.skipUnless(SETPRIV, "setpriv is not installed (Debian package util-linux)")
class BoundingSetTest(harness.AgentTestCase):
    """The agent as root, confined like the unit confines it (CapabilityBoundingSet= as the
    bounding set, no inheritable or ambient capabilities, NoNewPrivileges=), with privilege
    separation on: it must start, drop the network process to an unprivileged user, drive
    the helper, stop with 0, and start again after systemd gave the state directory back to
    root. A capability the agent needs and the unit lacks fails here, not on a host."""

    def start_confined(self, a):
        cmd = [SETPRIV, "--bounding-set", unit_bounding_set(), "--inh-caps=-all",
               "--ambient-caps=-all", "--no-new-privs"] + a.command()
        offset = len(a.stdout())
        with open(a.stdout_path, "ab") as out, open(a.stderr_path, "ab") as err:
            err.write(("---- test_systemd: %s\n" % " ".join(cmd)).encode())
            err.flush()
            a.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                      close_fds=True)
        a.starts += 1
        a.port = a.wait_listening(offset)

    def test_agent_runs_within_the_units_bounding_set(self):
        # The run user must reach the state directory by path: a 0711 parent.
        parent = os.path.join(self.tmp, "var-lib")
        os.mkdir(parent, 0o711)
        state = os.path.join(parent, "luofleet")
        a = self.agent("--user=nobody", "--privsep=yes", start=False, port=0,
                       state_dir=state)
        try:
            nobody = pwd.getpwnam("nobody").pw_uid
        except KeyError:
            self.skipTest("no user nobody on this machine")
        for start in (1, 2):
            self.start_confined(a)
            self.assertIn("this process runs as nobody", a.log())
            # Through the helper, both ways.
            r = a.direct().post("/v1/prepare")
            self.assertEqual((r.status, r.json and r.json["state"]), (200, "prepared"), r)
            r = a.direct().post("/v1/cancel")
            self.assertEqual((r.status, r.json and r.json["state"]), (200, "normal"), r)
            self.assertEqual(os.stat(state).st_uid, nobody, "state dir handed over")
            self.assertEqual(os.stat(a.journal_path()).st_uid, nobody)
            a.stop()
            chown_tree_to_root(state)


if __name__ == "__main__":
    harness.main()
