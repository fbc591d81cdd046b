#!/usr/bin/env python3
"""test_sessions.py: workload sessions through the session broker (docs/sessions.md,
docs/session-protocol.md, docs/design/session-broker.md) with real processes: the agent on
the simulated kernel, its privileged helper (where the broker runs), the example workload
luofleet-memfd-workload and a pure-Python client of the wire protocol (sessions_client.py).

- The full cycle, 64 MiB: a registered workload preserves a memfd, GET /v1/sessions and the
  state document show it, the prepare waits for its confirm, the journal has the session
  records in order (consecutive broker seq), the reboot's note reaches the next boot, the
  session comes back incoming, finish is refused (409 sessions-unfinished) until the
  workload's restore retrieved it bit-exact and finished it; then the list is empty.
- Prepare rounds: a registered workload that never answers (409 workloads-not-confirmed
  after --workload-confirm-timeout, nothing prepared), a veto (409 workload-veto with the
  reason), a late confirm (ESTALE), unregistered connections that block nothing.
- Owners (root: a second workload runs as nobody): neither sees nor touches the other's
  sessions (ENOENT), the same name in two owners coexists; the socket's mode and group.
- Quotas (EDQUOT for sessions, files and bytes per owner; EUSERS beyond the clients).
- Kernel errnos through the broker (a pipe ENOENT, a file twice EBUSY, a token twice EEXIST),
  malformed datagrams (closed, or EINVAL answered; the broker serves the others, the helper
  leaks no descriptor).
- kill -9 (and the orderly stop) of the network process: the helper keeps the sessions, the
  next agent attaches, journals what changes after, and the data still crosses the kexec;
  without sessions the helper goes with it. The socket's directory, a second agent on a live
  broker's socket, a socket outside the state directory across the simulated kexec.
- Cancel keeps the sessions; finish with force frees what was never retrieved; one audit
  record per session change (identity peercred, uid=N); the session gauges in /metrics; the
  state document's index moves whenever its sessions summary does.

The broker's socket: STATE_DIR/sessions.sock by default; a workload reaches it through
"/proc/self/fd/N/sessions.sock" (N an O_PATH descriptor of the state directory it inherits)
when the path is too long for a Unix socket address. Root-only parts skip with a message
when not run as root (CI runs as root). Responses go through the contract proxy once
api/openapi.yaml describes the sessions, directly to the agent before that
(ContractTest says which)."""

import grp
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import sessions_client as sc  # noqa: E402
from harness import AgentTestCase, make_file, wait_for  # noqa: E402

setUpModule, tearDownModule = harness.module_fixtures(__file__)

SCALE = harness.SCALE
MIB = 1 << 20
IS_ROOT = os.geteuid() == 0
UID = os.geteuid()
ROOT_ONLY = ("needs root: a second workload uid (nobody) is only possible when the suite runs "
             "as root")
HERE = os.path.dirname(os.path.abspath(__file__))
SIM_INTERFACE = "sim (sessions: mainline rules; global state: v3)"
AUDIT_KEYS = {"index", "time", "boot_id", "kind", "state", "state_index", "identity", "source",
              "action", "precondition", "result"}
PEERCRED = {"method": "peercred", "name": "uid=%d" % UID, "role": "none"}
# The members of GET /v1/sessions (the broker's document without version/next_seq/events,
# plus the agent's index and backend); previous_boot only in a boot that came from an update.
SESSIONS_DOC_KEYS = {"broker_id", "interface", "sessions", "workloads", "summary", "last_round",
                     "events_dropped", "index", "backend"}
# A prepare event's note (the operation and the journal index, as the reboot's).
ANY_OP = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def prep_note(op_id=ANY_OP):
    return r'note="operation=%s index=\d+"' % op_id


SUMMARY_ZERO = {"sessions": 0, "fds": 0, "bytes": 0, "outgoing": 0, "incoming": 0,
                "retrieved": 0, "finished": 0, "workloads": 0}


def known_bug(when=True):
    """unittest.expectedFailure while a product bug (described at the test) stands; `when`
    limits it to where the bug shows (e.g. root only). Remove it with the fix."""
    return unittest.expectedFailure if when else (lambda f: f)


def workload_path():
    p = os.environ.get("LUOFLEET_MEMFD_WORKLOAD")
    if p:
        return p
    return os.path.join(os.path.dirname(harness.agent_path()), "luofleet-memfd-workload")


def _contract_describes_sessions():
    """Does api/openapi.yaml describe GET /v1/sessions and the broker's problems yet? Until
    it does, every answer carrying the new members would be a contract violation: the
    functional tests then talk to the agent directly and ContractTest fails alone."""
    try:
        with open(os.path.join(harness.REPO_ROOT, "api", "openapi.yaml")) as f:
            text = f.read()
    except OSError:
        return False
    return all(s in text for s in ("/v1/sessions:", "workloads-not-confirmed",
                                   "workload-veto", "sessions-unfinished"))


CONTRACT_DESCRIBES_SESSIONS = _contract_describes_sessions()


def proc_status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def alive(pid):
    """Running (a zombie or a vanished pid is not)."""
    try:
        return proc_status(pid).get("State", "Z")[0] not in "ZX"
    except OSError:
        return False


def helper_of(agent):
    """The agent's privileged helper: its one child named luofleet-priv."""
    found = []
    for task in os.listdir("/proc/%d/task" % agent.pid):
        try:
            with open("/proc/%d/task/%s/children" % (agent.pid, task)) as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            continue
        found += [k for k in kids if proc_status(k).get("Name") == "luofleet-priv"]
    if len(found) != 1:
        raise AssertionError("agent %d has helpers %r" % (agent.pid, found))
    return found[0]


def fd_kinds(pid, memfd_name="py-memfd"):
    """(this test's memfds, sockets) open in pid: what a refused message could leak."""
    memfds = sockets = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            t = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        memfds += t.startswith("/memfd:%s " % memfd_name)
        sockets += t.startswith("socket:")
    return memfds, sockets


def demote(uid, gid):
    def fn():
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    return fn


class Workload:
    """One luofleet-memfd-workload process; its stdout lines as they come."""

    def __init__(self, args, user=None, pass_fds=()):
        self.args = list(args)
        self.lines = []
        self.err = []
        self.cond = threading.Condition()
        kw = {}
        if user is not None:
            kw["preexec_fn"] = demote(user.pw_uid, user.pw_gid)
        self.proc = subprocess.Popen([workload_path()] + self.args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     pass_fds=tuple(pass_fds), close_fds=True, **kw)
        self.pid = self.proc.pid
        self._threads = [threading.Thread(target=self._read, args=(self.proc.stdout, self.lines),
                                          daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self.err),
                                          daemon=True)]
        for t in self._threads:
            t.start()

    def _read(self, f, into):
        for raw in iter(f.readline, b""):
            with self.cond:
                into.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.cond.notify_all()
        f.close()

    def output(self):
        with self.cond:
            return "\n".join(self.lines)

    def stderr(self):
        with self.cond:
            return "\n".join(self.err)

    def wait_line(self, regex, timeout=10.0):
        """The first stdout line matching regex (re.fullmatch); waits for it."""
        rx = re.compile(regex)
        deadline = time.monotonic() + timeout * SCALE
        with self.cond:
            while True:
                for line in self.lines:
                    m = rx.fullmatch(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and
                                 not any(t.is_alive() for t in self._threads)):
                    raise AssertionError("workload %s: no line matching %r within %.0fs; "
                                         "stdout:\n%s\nstderr:\n%s"
                                         % (self.args, regex, timeout * SCALE,
                                            "\n".join(self.lines), "\n".join(self.err)))
                self.cond.wait(min(left, 0.1))

    def wait(self, timeout=10.0):
        rc = self.proc.wait(timeout * SCALE)
        for t in self._threads:
            t.join(5)
        return rc

    def terminate(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


NOBODY_SNIPPET = r"""
import json, os, sys
sys.path.insert(0, %(here)r)
import sessions_client as sc
out = {}
c = sc.Client(%(sock)r)
out["hello"] = [c.hello(%(name)r).errno, c.hello_answer.token]
%(body)s
print(json.dumps(out))
"""


class SessionsCase(AgentTestCase):
    """Helpers shared by the classes below."""

    def setUp(self):
        # First in, so last out: after the harness stopped the agents (a helper that still
        # holds sessions outlives its network process by design).
        self.addCleanup(self._end_helpers)
        super().setUp()
        self.held_fds = []
        self.used_nobody = False
        self.addCleanup(self._close_held)

    def agent(self, *args, **kw):
        """An agent whose workloads' sessions are released before it stops (release_all)."""
        a = super().agent(*args, **kw)
        self.addCleanup(self.release_all, a)
        return a

    def our_helpers(self):
        """Pids of the privileged helpers of this test's agents (their command line names
        this test's directory), whoever their parent is now."""
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                if proc_status(int(d)).get("Name") != "luofleet-priv" or not alive(int(d)):
                    continue
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    if ("--state-dir=" + self.tmp).encode() in f.read():
                        out.append(int(d))
            except OSError:
                pass
        return out

    def _end_helpers(self):
        """A helper left waiting for the next agent: SIGTERM ends it (then SIGKILL)."""
        left = self.our_helpers()
        for pid in left:
            os.kill(pid, signal.SIGTERM)
        try:
            wait_for(lambda: not any(alive(p) for p in left), timeout=5)
        except AssertionError:
            for pid in left:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)

    def _close_held(self):
        for fd in self.held_fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def api(self, a, timeout=30.0):
        """The agent's API: through the contract proxy once the contract describes sessions."""
        return a.client(timeout) if CONTRACT_DESCRIBES_SESSIONS else a.direct(timeout)

    def short_dir(self):
        """A directory with a short path (a Unix socket's path must fit 108 bytes), which
        other users may traverse."""
        d = tempfile.mkdtemp(prefix="lfs-", dir="/tmp")
        os.chmod(d, 0o711)
        if IS_ROOT:
            # The run user's, as the unit's /run/luofleet is: after a simulated kexec the agent
            # starts again as that user and binds the sockets there again.
            nobody = pwd.getpwnam("nobody")
            os.chown(d, nobody.pw_uid, nobody.pw_gid)
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def sock_of(self, a):
        """The socket the agent's broker listens on (its --sessions-socket, else the default
        STATE_DIR/sessions.sock)."""
        for arg in a.args:
            if arg.startswith("--sessions-socket="):
                return arg.split("=", 1)[1]
        return os.path.join(a.state_dir, "sessions.sock")

    def wl_socket(self, path):
        """(--socket= value, pass_fds) for a workload: the path itself when it fits a Unix
        socket address, else /proc/self/fd/N/NAME through an inherited O_PATH descriptor of
        its directory (libluofleet-session's lfs_connect does not do that itself)."""
        if len(path.encode()) <= sc.SUN_PATH_MAX:
            return path, ()
        d, name = os.path.split(path)
        fd = os.open(d, os.O_PATH | os.O_DIRECTORY)
        self.held_fds.append(fd)
        return "/proc/self/fd/%d/%s" % (fd, name), (fd,)

    def workload(self, a, mode, *args, user=None, sock=None):
        """Start luofleet-memfd-workload MODE against agent a's broker (killed at the end)."""
        path, fds = self.wl_socket(sock or self.sock_of(a))
        if user is not None and user.pw_uid != UID:
            self.used_nobody = True
        w = Workload(["--socket=%s" % path] + list(args) + [mode], user=user, pass_fds=fds)
        self.addCleanup(w.kill)
        return w

    def run_workload(self, a, mode, *args, user=None, sock=None, timeout=30.0):
        """Run it to completion: (rc, stdout, stderr)."""
        w = self.workload(a, mode, *args, user=user, sock=sock)
        rc = w.wait(timeout)
        return rc, w.output(), w.stderr()

    def client(self, a, name="py-client", flags=0, sock=None):
        """A Python wire client, HELLO said (closed at the end)."""
        c = sc.Client(sock or self.sock_of(a))
        self.addCleanup(c.close)
        m = c.hello(name, flags)
        self.assertEqual(m.errno, 0, m)
        return c

    def run_as_nobody(self, a, body, name="py-nobody", sock=None):
        """Run Python code as nobody with a connected client c; returns its JSON `out`. The
        client module is copied where nobody may read it (the checkout may not be)."""
        nobody = pwd.getpwnam("nobody")
        self.used_nobody = True
        if not os.path.isdir(getattr(self, "_nobody_dir", None) or "/nonexistent"):
            self._nobody_dir = self.short_dir()
            os.chmod(self._nobody_dir, 0o755)  # (imports list the directory)
            shutil.copy(os.path.join(HERE, "sessions_client.py"), self._nobody_dir)
            os.chmod(os.path.join(self._nobody_dir, "sessions_client.py"), 0o644)
        code = NOBODY_SNIPPET % {"here": self._nobody_dir, "sock": sock or self.sock_of(a),
                                 "name": name, "body": body}
        # Debian's interpreter (CTest's): a pyenv one under /root is not nobody's to run.
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
        p = subprocess.run([python, "-B", "-c", code], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=30 * SCALE,
                           preexec_fn=demote(nobody.pw_uid, nobody.pw_gid))
        self.assertEqual(p.returncode, 0, p.stderr.decode())
        return json.loads(p.stdout)

    def sessions(self, a):
        r = self.api(a).get("/v1/sessions")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.content_type, "application/json", r)
        return r.json

    def wait_sessions(self, a, pred, what, timeout=10.0):
        """GET /v1/sessions until pred(doc) (the agent refreshes it when the broker rings)."""
        last = {}

        def check():
            last["doc"] = self.sessions(a)
            return last["doc"] if pred(last["doc"]) else None
        try:
            return wait_for(check, timeout=timeout, interval=0.05, what=what)
        except AssertionError as e:
            raise AssertionError("%s; last GET /v1/sessions: %s"
                                 % (e, json.dumps(last.get("doc"), indent=1)))

    def state(self, a):
        r = self.api(a).get("/v1/state")
        self.assertEqual(r.status, 200, r)
        return r.json

    def records(self, a, kind):
        """Every journal record of this kind (oldest first)."""
        out, since = [], 0
        while True:
            h = self.api(a).history("kind=%s&since=%d&limit=1000" % (kind, since))
            out.extend(h["records"])
            if not h["more"]:
                return out
            since = h["records"][-1]["index"]

    def session_records(self, a, boot_id=None):
        recs = self.records(a, "session")
        for r in recs:
            self.assertEqual(r["kind"], "session", r)
        return [r for r in recs if boot_id is None or r["boot_id"] == boot_id]

    def wait_records(self, a, events, boot_id=None, timeout=10.0):
        """Session records until their events start with this list (the agent journals the
        broker's events asynchronously); returns them."""
        last = {}

        def check():
            recs = self.session_records(a, boot_id)
            last["events"] = [r["event"] for r in recs]
            return recs if last["events"][:len(events)] == events else None
        try:
            return wait_for(check, timeout=timeout, interval=0.05,
                            what="session records %r" % events)
        except AssertionError as e:
            raise AssertionError("%s; journaled: %r" % (e, last.get("events")))

    def audits(self, a):
        return self.records(a, "audit")

    def wait_events(self, a, event, n, timeout=10.0):
        """Exactly n session records of this event, once they are journaled."""
        got = lambda: [r for r in self.session_records(a) if r["event"] == event]  # noqa
        wait_for(lambda: len(got()) >= n, timeout=timeout, interval=0.05,
                 what="%d %s records" % (n, event))
        time.sleep(0.2)  # no more than n
        recs = got()
        self.assertEqual(len(recs), n, recs)
        return recs

    def wait_audits(self, a, action, n, timeout=10.0):
        """Exactly n audit records of this action, once they are written."""
        got = lambda: [r for r in self.audits(a) if r["action"] == action]  # noqa: E731
        wait_for(lambda: len(got()) >= n, timeout=timeout, interval=0.05,
                 what="%d %s audit records" % (n, action))
        time.sleep(0.2)
        recs = got()
        self.assertEqual(len(recs), n, recs)
        return recs

    def stage(self, a, op_id="s-stage"):
        files = os.path.join(self.tmp, "files")
        os.makedirs(files, exist_ok=True)
        kpath, ksha = make_file(files, "vmlinuz", 4096)
        r = self.api(a).put("/v1/kernel", json_body={"kernel": {"path": kpath, "sha256": ksha},
                                                     "operation_id": op_id})
        self.assertEqual(r.status, 200, r)
        return r.json

    def post(self, a, action, body=None, direct=False):
        c = a.direct(30 * SCALE) if direct else self.api(a, 30 * SCALE)
        return c.post("/v1/" + action, json_body=body or {})

    def wait_new_boot(self, a, before_boot, timeout=20.0):
        """Poll the agent directly through the simulated kexec until it answers from a new
        boot; returns the state document. Fails at once when the agent process ended."""
        deadline = time.monotonic() + timeout * SCALE
        last = None
        while True:
            if not a.running():
                a.wait_exit()
                self.fail("the agent exited (code %d) instead of coming back from the "
                          "simulated kexec; its log ends:\n%s"
                          % (a.returncodes[-1], a.log()[-2000:]))
            try:
                r = a.direct(timeout=2).get("/v1/state")
                if r.status == 200 and r.json["boot_id"] != before_boot:
                    return r.json
                last = r
            except (OSError, http.client.HTTPException) as e:
                last = e
            if time.monotonic() > deadline:
                self.fail("no new boot within %.0fs (last: %r); log:\n%s"
                          % (timeout * SCALE, last, a.log()[-2000:]))
            time.sleep(0.02)

    def assertEtagHonest(self, earlier, later):
        """Two state documents: the same index (the ETag) means the same document, or a
        conditional GET and a long-poll on the index miss the change."""
        if earlier["index"] == later["index"]:
            self.assertEqual(earlier, later, "the state document changed without a new "
                             "index (ETag \"%d\" names two documents)" % later["index"])

    def assertNoDetail(self, rec, keys):
        """A session record: exactly the common members and these."""
        self.assertEqual(set(rec), {"index", "time", "boot_id", "kind", "state", "event",
                                    "broker"} | set(keys), rec)

    def release_all(self, a):
        """Close every outgoing session and finish every incoming one of these uids, so that
        the helper holds nothing and the agent stops at once (a helper holding sessions
        waits for the next agent; its network process reaps it 5 s later)."""
        if not a.running() or not os.path.exists(self.sock_of(a)):
            return
        uids = (UID, pwd.getpwnam("nobody").pw_uid) if self.used_nobody else (UID,)
        body = (
            "m, lst = c.list()\n"
            "out['done'] = []\n"
            "for name, phase, _, _ in lst:\n"
            "    if phase == 'outgoing':\n"
            "        out['done'].append([name, c.close_session(name).errno])\n"
            "    elif phase in ('incoming', 'retrieved'):\n"
            "        out['done'].append([name, c.finish(name).errno])\n")
        for uid in uids:
            try:
                if uid == UID:
                    out = {}
                    c = sc.Client(self.sock_of(a))
                    try:
                        c.hello("cleanup")
                        exec(body, {"c": c, "out": out})
                    finally:
                        c.close()
                else:
                    self.run_as_nobody(a, body, name="cleanup")
            except (OSError, AssertionError):
                pass  # no broker (any more), or not this uid's to reach: nothing to release
            except sc.ProtocolError as e:
                sys.stderr.write("release_all: uid %d: %s\n" % (uid, e))


# ---------------------------------------------------------------------------------------------


class CycleTest(SessionsCase):
    """Preserve, prepare, reboot, retrieve bit-exact, finish: the whole life cycle."""

    def test_full_cycle_64mib(self):
        a = self.agent()
        sock = self.sock_of(a)
        self.assertEqual(sock, os.path.join(a.state_dir, "sessions.sock"))
        st = os.stat(sock)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o660)
        before = self.state(a)
        self.assertEqual(before["interface"], SIM_INTERFACE)
        self.assertEqual(before["sessions"], SUMMARY_ZERO)
        empty = self.sessions(a)
        self.assertEqual(set(empty), SESSIONS_DOC_KEYS, empty)
        self.assertEqual((empty["sessions"], empty["workloads"], empty["summary"],
                          empty["last_round"], empty["interface"], empty["backend"]),
                         ([], [], SUMMARY_ZERO, None, "sessions", "sim"))
        old_broker = empty["broker_id"]

        size = 64 * MIB
        state_file = os.path.join(self.tmp, "vm42.state")
        reboot_file = os.path.join(self.tmp, "vm42.reboot")
        common = ["--name=vm-42", "--session=vm42-ram", "--mib=64", "--seed=7",
                  "--state-file=%s" % state_file, "--reboot-time=%s" % reboot_file]
        w = self.workload(a, "preserve", *common)
        filled = w.wait_line(r"filled 64 MiB, seed 7, checksum ([0-9a-f]{16})")
        w.wait_line(r"preserved %d bytes in session vm42-ram under token 1" % size)

        session = {"name": "vm42-ram", "kernel_name": "lf:%d:vm42-ram" % UID,
                   "owner_uid": UID, "workload": "vm-42", "phase": "outgoing", "fds": 1,
                   "bytes": size, "tokens": [{"token": 1, "kernel_token": 1, "bytes": size,
                                              "retrieved": False}]}
        summary = dict(SUMMARY_ZERO, sessions=1, fds=1, bytes=size, outgoing=1, workloads=1)
        doc = self.wait_sessions(a, lambda d: d["sessions"] and d["summary"] == summary,
                                 "the preserved session")
        self.assertEqual(set(doc), SESSIONS_DOC_KEYS, doc)
        self.assertEqual(doc["sessions"], [session])
        self.assertEqual(doc["workloads"], [{"name": "vm-42", "uid": UID, "pid": w.pid,
                                             "registered": True}])
        self.assertEqual(doc["broker_id"], old_broker)
        self.assertIsNone(doc["last_round"])
        d = self.state(a)
        self.assertEqual(d["sessions"], summary)

        # Prepare: the registered workload is asked, confirms, then the kernel is prepared.
        self.stage(a)
        self.assertEqual(a.sim_kernel()["applied"]["prepare"], 0)
        r = self.post(a, "prepare", {"operation_id": "s-prep"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["state"], "prepared")
        self.assertEqual((r.json["operation"]["id"], r.json["operation"]["status"]),
                         ("s-prep", "succeeded"))
        self.assertEqual(a.sim_kernel()["applied"]["prepare"], 1)
        ev = w.wait_line(r'event prepare id=(\d+) deadline-ms=30000 %s -> confirmed'
                         % prep_note("s-prep"))
        round_id = int(ev.group(1))
        doc = self.wait_sessions(a, lambda d: d["last_round"] is not None, "the last round")
        self.assertEqual(doc["last_round"], {"event_id": round_id, "result": "confirmed",
                                             "asked": 1, "pending": [], "vetoed": [],
                                             "gone": []})

        # The journal: connected, created, preserved, confirmed, numbered 1..4 by the broker.
        recs = self.wait_records(a, ["connected", "created", "preserved", "confirmed"])[:4]
        self.assertEqual([r["broker"] for r in recs],
                         [{"id": old_broker, "seq": n} for n in (1, 2, 3, 4)])
        self.assertEqual([r["index"] for r in recs], sorted(r["index"] for r in recs))
        who = {"owner_uid": UID, "workload": "vm-42", "pid": w.pid}
        self.assertNoDetail(recs[0], list(who) + ["detail"])
        self.assertEqual(recs[0]["detail"], "registered")
        self.assertNoDetail(recs[1], list(who) + ["session"])
        self.assertNoDetail(recs[2], list(who) + ["session", "token", "bytes"])
        self.assertEqual((recs[2]["session"], recs[2]["token"], recs[2]["bytes"]),
                         ("vm42-ram", 1, size))
        self.assertNoDetail(recs[3], list(who))
        for rec in recs:
            for k, v in who.items():
                self.assertEqual(rec[k], v, rec)
            self.assertEqual(rec["boot_id"], before["boot_id"])

        # Reboot: the workload hears it with the operation's note, and exits 0.
        r = self.post(a, "reboot", {"operation_id": "s-reboot"}, direct=True)
        self.assertEqual(r.status, 202, r)
        rb = w.wait_line(r'event reboot id=\d+ note="operation=s-reboot index=(\d+)" '
                         r'at-usec=\d+')
        note = "operation=s-reboot index=%s" % rb.group(1)
        self.assertGreaterEqual(int(rb.group(1)), r.json["index"])
        self.assertEqual(w.wait(), 0, w.stderr())
        d = self.wait_new_boot(a, before["boot_id"])
        self.assertEqual(d["state"], "updated")
        k = a.sim_kernel()
        self.assertEqual((k["boots"], k["applied"]["kexec"]), (2, 1))

        # The new boot: the session is incoming, the document names the reboot.
        incoming = dict(session, phase="incoming")
        summary = dict(SUMMARY_ZERO, sessions=1, fds=1, bytes=size, incoming=1)
        doc = self.wait_sessions(a, lambda d: d["summary"] == summary, "the incoming session")
        self.assertEqual(set(doc), SESSIONS_DOC_KEYS | {"previous_boot"}, doc)
        self.assertNotEqual(doc["broker_id"], old_broker)
        self.assertEqual(doc["sessions"], [incoming])
        self.assertEqual(doc["workloads"], [])
        self.assertEqual(doc["previous_boot"], {"note": note, "boot_id": before["boot_id"]})
        self.assertEqual(self.state(a)["sessions"], summary)
        new_broker = doc["broker_id"]
        recs = self.wait_records(a, ["incoming"], boot_id=d["boot_id"])
        self.assertNoDetail(recs[0], ["session", "owner_uid", "workload", "bytes", "detail"])
        self.assertEqual((recs[0]["broker"], recs[0]["session"], recs[0]["owner_uid"],
                          recs[0]["workload"], recs[0]["bytes"], recs[0]["detail"]),
                         ({"id": new_broker, "seq": 1}, "vm42-ram", UID, "vm-42", size, note))

        # Finish is refused while the session is unfinished; nothing reaches the kernel.
        r = self.post(a, "finish", {"operation_id": "s-fin-1"})
        p = self.assertProblem(r, 409, "sessions-unfinished")
        self.assertEqual(p["sessions"], [{"name": "vm42-ram", "owner_uid": UID,
                                          "workload": "vm-42", "phase": "incoming"}])
        self.assertEqual(p["detail"], "1 workload session is not finished: vm42-ram (uid %d, "
                         "incoming) (finish them, or finish with force: their data is freed)"
                         % UID)
        d = self.state(a)
        self.assertEqual(d["state"], "updated")
        self.assertEqual((d["operation"]["id"], d["operation"]["status"],
                          d["operation"]["error"]["code"]),
                         ("s-fin-1", "failed", "sessions-unfinished"))
        self.assertEqual(a.sim_kernel()["applied"]["finish"], 0)

        # The workload's next incarnation: retrieve, check every byte, finish its session.
        rc, out, err = self.run_workload(a, "restore", *common)
        self.assertEqual(rc, 0, err)
        # (The example also prints timings of its own: only the lines that matter here.)
        lines = out.splitlines()
        self.assertEqual(len([ln for ln in lines if re.fullmatch(
            r"restored 64 MiB in \d+\.\d ms, checksum ok \(%s\)" % filled.group(1), ln)]), 1,
            out)
        self.assertEqual(len([ln for ln in lines if re.fullmatch(
            r"blackout-to-data-ms=\d+\.\d", ln)]), 1, out)
        self.assertEqual(lines[-1], "finished session vm42-ram", out)
        finished = dict(session, phase="finished",
                        tokens=[{"token": 1, "kernel_token": 1, "bytes": size,
                                 "retrieved": True}])
        doc = self.wait_sessions(a, lambda d: d["summary"]["finished"] == 1, "finished")
        self.assertEqual(doc["sessions"], [finished])
        recs = self.wait_records(a, ["incoming", "connected", "retrieved", "fd-retrieved",
                                     "finished", "disconnected"], boot_id=d["boot_id"])
        self.assertEqual([r["broker"]["seq"] for r in recs], list(range(1, len(recs) + 1)))
        self.assertEqual({r["broker"]["id"] for r in recs}, {new_broker})
        self.assertEqual((recs[3]["token"], recs[3]["bytes"]), (1, size))

        # Now the update finishes, and the sessions are gone.
        r = self.post(a, "finish", {"operation_id": "s-fin-2"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["state"], "normal")
        doc = self.wait_sessions(a, lambda d: d["summary"] == SUMMARY_ZERO, "no sessions")
        self.assertEqual(doc["sessions"], [])
        self.assertEqual(self.state(a)["sessions"], SUMMARY_ZERO)
        self.assertEqual(a.sim_kernel()["applied"]["finish"], 1)
        # The simulated kernel freed the handover.
        left = os.listdir(a.sim_path("sessions")) if os.path.isdir(a.sim_path("sessions")) \
            else []
        self.assertEqual(left, [])

    def test_the_index_moves_with_the_sessions_summary(self):
        # The state document's ETag is its index: a document that changes (its sessions
        # summary when the finish drops the update's sessions) must change it, or a
        # conditional GET and a long-poll on the index never see the change. Whether the
        # finish's own answer already has the new summary depends on timing (about half of
        # the time here): up to six updates, each must be consistent.
        a = self.agent()
        fd = sc.memfd(4096)
        self.held_fds.append(fd)
        self.stage(a)
        for attempt in range(6):
            c = self.client(a, "etag")
            name = "e%d" % attempt
            self.assertEqual(c.create(name).errno, 0)
            self.assertEqual(c.preserve(name, fd, 1).errno, 0)
            before = self.state(a)
            self.assertEqual(self.post(a, "prepare").status, 200)
            self.assertEqual(self.post(a, "reboot", direct=True).status, 202)
            self.wait_new_boot(a, before["boot_id"])
            self.wait_sessions(a, lambda d: d["summary"]["incoming"] == 1, "the incoming one")
            c2 = self.client(a, "etag")
            self.assertEqual(c2.retrieve(name).errno, 0)
            self.assertEqual(c2.finish(name).errno, 0)
            self.wait_sessions(a, lambda d: d["summary"]["finished"] == 1, "finished")
            r = self.post(a, "finish")
            self.assertEqual(r.status, 200, r)
            self.wait_sessions(a, lambda d: d["summary"]["sessions"] == 0, "no sessions")
            d = self.state(a)
            self.assertEqual(d["sessions"], dict(SUMMARY_ZERO, workloads=1))
            self.assertEtagHonest(r.json, d)
            c2.close()
            self.stage(a, "s-stage-%d" % attempt)

    def test_reboot_with_the_socket_outside_the_state_directory(self):
        # --sessions-socket in a directory of its own (short paths for deep CI trees; the
        # system agent's /run/luofleet): the simulated kexec re-executes the agent, which must
        # come back (as root: as the run user, which cannot connect to root's helper.sock).
        d0 = self.short_dir()
        a = self.agent("--sessions-socket=%s/s.sock" % d0)
        w = self.workload(a, "preserve", "--name=vm-7", "--session=ram7", "--mib=4",
                          "--seed=3")
        w.wait_line(r"preserved %d bytes in session ram7 under token 1" % (4 * MIB))
        before = self.state(a)
        self.stage(a)
        self.assertEqual(self.post(a, "prepare").status, 200)
        r = self.post(a, "reboot", {"operation_id": "s-rb-out"}, direct=True)
        self.assertEqual(r.status, 202, r)
        self.assertEqual(w.wait(), 0, w.stderr())
        d = self.wait_new_boot(a, before["boot_id"])
        self.assertEqual(d["state"], "updated")
        rc, out, err = self.run_workload(a, "restore", "--name=vm-7", "--session=ram7",
                                         "--mib=4", "--seed=3")
        self.assertEqual(rc, 0, err)
        self.assertIn("finished session ram7", out)
        self.assertEqual(self.post(a, "finish").status, 200)


# ---------------------------------------------------------------------------------------------


class PrepareRoundTest(SessionsCase):
    """Every registered workload confirms a prepare, or nothing is prepared."""

    def test_not_confirmed(self):
        a = self.agent("--workload-confirm-timeout=1s")
        self.stage(a)
        # An unregistered connection with a preserved file: no prepare waits for it.
        tool = self.client(a, "a-tool")
        self.assertEqual(tool.create("tool-s").errno, 0)
        fd = sc.memfd(4096)
        self.held_fds.append(fd)
        self.assertEqual(tool.preserve("tool-s", fd, 1).errno, 0)
        w = self.workload(a, "preserve", "--name=vm-silent", "--session=silent", "--mib=4",
                          "--no-confirm")
        w.wait_line(r"preserved 4194304 bytes in session silent under token 1")
        self.wait_sessions(a, lambda d: len(d["workloads"]) == 2, "two workloads")

        t0 = time.monotonic()
        r = self.post(a, "prepare", {"operation_id": "r-silent"})
        took = time.monotonic() - t0
        p = self.assertProblem(r, 409, "workloads-not-confirmed")
        self.assertGreaterEqual(took, 0.95)
        self.assertLess(took, 5 * SCALE)
        self.assertEqual(p["workloads"], [{"name": "vm-silent", "uid": UID, "pid": w.pid,
                                           "reason": ""}])
        self.assertEqual(p["detail"], "workloads did not confirm within 1000 ms: vm-silent "
                         "(uid %d, pid %d): nothing was prepared" % (UID, w.pid))
        ev = w.wait_line(r'event prepare id=(\d+) deadline-ms=1000 %s -> not answered'
                         % prep_note("r-silent"))
        w.wait_line(r'event cancel id=\d+ note="the prepare failed"')
        # The unregistered client heard nothing.
        with self.assertRaises(socket.timeout):
            tool.recv(timeout=0.3)
        d = self.state(a)
        self.assertEqual(d["state"], "normal")
        self.assertEqual((d["operation"]["id"], d["operation"]["status"],
                          d["operation"]["error"]["code"]),
                         ("r-silent", "failed", "workloads-not-confirmed"))
        self.assertEqual(a.sim_kernel()["applied"]["prepare"], 0)
        ops = [x for x in self.records(a, "operation")
               if x["operation"]["id"] == "r-silent"]
        self.assertEqual([x["operation"]["status"] for x in ops], ["running", "failed"], ops)
        doc = self.wait_sessions(a, lambda x: x["last_round"], "the last round")
        self.assertEqual(doc["last_round"], {
            "event_id": int(ev.group(1)), "result": "timeout", "asked": 1,
            "pending": [{"name": "vm-silent", "uid": UID, "pid": w.pid, "reason": ""}],
            "vetoed": [], "gone": []})
        refused = self.wait_events(a, "prepare-refused", 1)
        self.assertEqual(refused[0]["errno"], "ETIMEDOUT")
        self.assertEqual(refused[0]["detail"], "workloads did not confirm within 1000 ms: "
                         "vm-silent (uid %d, pid %d)" % (UID, w.pid))

        # The silent workload goes; the unregistered tool blocks nothing.
        self.assertEqual(w.terminate(), 0)
        self.wait_sessions(a, lambda d: [x["name"] for x in d["workloads"]] == ["a-tool"],
                           "vm-silent to disconnect")
        r = self.post(a, "prepare", {"operation_id": "r-ok"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["state"], "prepared")
        self.assertEqual(a.sim_kernel()["applied"]["prepare"], 1)
        self.wait_sessions(a, lambda x: x["last_round"]["asked"] == 0, "a round of nobody")
        self.assertEqual(self.post(a, "cancel").status, 200)

    def test_veto_and_late_confirm(self):
        # Long enough for an on-time confirm from Python on a loaded machine.
        timeout_ms = int(2000 * SCALE)
        a = self.agent("--workload-confirm-timeout=%dms" % timeout_ms)
        self.stage(a)
        w = self.workload(a, "preserve", "--name=vm-veto", "--session=v", "--mib=4",
                          "--veto=migration in progress")
        w.wait_line(r"preserved 4194304 bytes in session v under token 1")
        r = self.post(a, "prepare", {"operation_id": "r-veto"})
        p = self.assertProblem(r, 409, "workload-veto")
        self.assertEqual(p["workloads"], [{"name": "vm-veto", "uid": UID, "pid": w.pid,
                                           "reason": "migration in progress"}])
        # The operator reads why in the detail (design: "workload vm-1 (...) vetoed: <reason>").
        self.assertIn("vm-veto (uid %d, pid %d)" % (UID, w.pid), p["detail"])
        self.assertIn("migration in progress", p["detail"])
        w.wait_line(r'event prepare id=\d+ deadline-ms=%d %s -> vetoed'
                    % (timeout_ms, prep_note("r-veto")))
        w.wait_line(r'event cancel id=\d+ note="the prepare failed"')
        d = self.state(a)
        self.assertEqual((d["state"], d["operation"]["status"], d["operation"]["error"]["code"]),
                         ("normal", "failed", "workload-veto"))
        self.assertEqual(a.sim_kernel()["applied"]["prepare"], 0)
        # (The broker's thread emits "vetoed" after the round saw the veto: the round's
        # "prepare-refused" may be journaled first.)
        vetoed = self.wait_events(a, "vetoed", 1)[0]
        self.assertEqual((vetoed["workload"], vetoed["pid"], vetoed["detail"]),
                         ("vm-veto", w.pid, "migration in progress"))
        refused = self.wait_events(a, "prepare-refused", 1)[0]
        self.assertEqual(refused["errno"], "ECANCELED")
        self.assertEqual(refused["detail"], p["detail"][:-len(": nothing was prepared")])
        self.assertEqual(w.terminate(), 0)

        # A registered Python client that answers after the deadline gets ESTALE.
        late = self.client(a, "vm-late", sc.HELLO_REGISTER)
        self.wait_sessions(a, lambda d: [x["name"] for x in d["workloads"]] == ["vm-late"],
                           "vm-veto to go")
        r = self.post(a, "prepare", {"operation_id": "r-late"})
        self.assertProblem(r, 409, "workloads-not-confirmed")
        ev = late.next_event()
        self.assertEqual((ev.token, ev.arg2), (sc.EV_PREPARE, timeout_ms))
        self.assertRegex(ev.text, r"^operation=r-late index=\d+$")
        cancel = late.next_event()
        self.assertEqual((cancel.token, cancel.text), (sc.EV_CANCEL, "the prepare failed"))
        m = late.confirm(ev.arg)
        self.assertEqual(m.errno_name, "ESTALE", m)
        self.assertEqual(m.text, "no prepare of that id is waiting for this workload")
        # On time it counts: the next round is confirmed by the same connection.
        bg = harness.Background(lambda: self.post(a, "prepare", {"operation_id": "r-now"}))
        ev = late.next_event()
        self.assertEqual(ev.token, sc.EV_PREPARE)
        self.assertEqual(late.confirm(ev.arg).errno, 0)
        r = bg.get(timeout=15 * SCALE)
        self.assertEqual(r.status, 200, r)
        self.wait_sessions(a, lambda x: x["last_round"]["result"] == "confirmed", "confirmed")
        self.assertEqual(self.post(a, "cancel").status, 200)
        self.assertEqual(late.next_event().token, sc.EV_CANCEL)


# ---------------------------------------------------------------------------------------------


class OwnersTest(SessionsCase):
    """Sessions are private to their owner uid."""

    @unittest.skipUnless(IS_ROOT, ROOT_ONLY)
    def test_two_uids(self):
        d0 = self.short_dir()
        a = self.agent("--sessions-socket=%s/s.sock" % d0, "--sessions-socket-mode=0666")
        nobody = pwd.getpwnam("nobody")
        nb = nobody.pw_uid
        self.assertEqual(stat.S_IMODE(os.stat(self.sock_of(a)).st_mode), 0o666)
        # The same session name in two owners.
        w_root = self.workload(a, "preserve", "--name=wl-root", "--session=vm1", "--mib=4",
                               "--seed=1")
        w_nb = self.workload(a, "preserve", "--name=wl-nobody", "--session=vm1", "--mib=4",
                             "--seed=2", user=nobody)
        w_root.wait_line(r"preserved 4194304 bytes in session vm1 under token 1")
        w_nb.wait_line(r"preserved 4194304 bytes in session vm1 under token 1")
        mine = self.client(a, "py-root")
        self.assertEqual(mine.create("root-only").errno, 0)
        fd = sc.memfd(8192)
        self.held_fds.append(fd)
        self.assertEqual(mine.preserve("root-only", fd, 5).arg, 8192)

        # nobody: sees its own only, and another owner's name is ENOENT for everything.
        out = self.run_as_nobody(a, r"""
m, lst = c.list()
out["list"] = [m.errno, lst]
out["ops"] = {
    "retrieve": c.retrieve("root-only").errno_name,
    "finish": c.finish("root-only").errno_name,
    "close": c.close_session("root-only").errno_name,
    "show": c.show("root-only")[0].errno_name,
    "unpreserve": c.unpreserve("root-only", 5).errno_name,
    "retrieve-fd": c.retrieve_fd("root-only", 5).errno_name,
    "preserve": c.preserve("root-only", sc.memfd(4096), 9).errno_name,
}
out["create-same-name"] = c.create("root-only").errno_name
out["close-it"] = c.close_session("root-only").errno_name
out["create-own"] = c.create("nb-only").errno_name
out["preserve-own"] = c.preserve("nb-only", sc.memfd(4096), 1).errno_name
""")
        self.assertEqual(out["hello"], [0, nb])
        self.assertEqual(out["list"], [0, [["vm1", "outgoing", 4 * MIB, 1]]])
        self.assertEqual(out["ops"], {k: "ENOENT" for k in out["ops"]})
        self.assertEqual((out["create-same-name"], out["close-it"], out["create-own"],
                          out["preserve-own"]), ("OK", "OK", "OK", "OK"))
        # root: the same, the other way round.
        for op, fn in (("retrieve", lambda: mine.retrieve("nb-only")),
                       ("finish", lambda: mine.finish("nb-only")),
                       ("close", lambda: mine.close_session("nb-only")),
                       ("show", lambda: mine.show("nb-only")[0]),
                       ("unpreserve", lambda: mine.unpreserve("nb-only", 1)),
                       ("retrieve-fd", lambda: mine.retrieve_fd("nb-only", 1))):
            m = fn()
            self.assertEqual(m.errno_name, "ENOENT", (op, m))
            # (a retrieve asks the kernel for this uid's own name: no probing either way)
            self.assertEqual(m.text, "the kernel refused RETRIEVE_SESSION lf:%d:nb-only: No "
                             "such file or directory (ENOENT)" % UID if op == "retrieve" else
                             "no session nb-only of uid %d" % UID, (op, m))
        m, lst = mine.list()
        self.assertEqual(lst, [("vm1", "outgoing", 4 * MIB, 1), ("root-only", "outgoing", 8192,
                                                                  1)])
        # The example's list mode, as each owner.
        rc, out_root, err = self.run_workload(a, "list")
        self.assertEqual(rc, 0, err)
        self.assertEqual([ln.split() for ln in out_root.splitlines()],
                         [["SESSION", "PHASE", "FDS", "BYTES"],
                          ["vm1", "outgoing", "1", str(4 * MIB)],
                          ["token", "1:", str(4 * MIB), "bytes"],
                          ["root-only", "outgoing", "1", "8192"],
                          ["token", "5:", "8192", "bytes"]])
        rc, out_nb, err = self.run_workload(a, "list", user=nobody)
        self.assertEqual(rc, 0, err)
        self.assertEqual([ln.split() for ln in out_nb.splitlines()],
                         [["SESSION", "PHASE", "FDS", "BYTES"],
                          ["vm1", "outgoing", "1", str(4 * MIB)],
                          ["token", "1:", str(4 * MIB), "bytes"],
                          ["nb-only", "outgoing", "1", "4096"],
                          ["token", "1:", "4096", "bytes"]])
        # The operator sees all of them, by owner.
        doc = self.wait_sessions(a, lambda d: len(d["sessions"]) == 4, "four sessions")
        self.assertEqual(sorted((s["owner_uid"], s["name"], s["kernel_name"], s["workload"])
                                for s in doc["sessions"]),
                         sorted([(UID, "vm1", "lf:%d:vm1" % UID, "wl-root"),
                                 (nb, "vm1", "lf:%d:vm1" % nb, "wl-nobody"),
                                 (UID, "root-only", "lf:%d:root-only" % UID, "py-root"),
                                 (nb, "nb-only", "lf:%d:nb-only" % nb, "py-nobody")]))
        # Both registered workloads confirm one prepare; both hear the cancel.
        self.stage(a)
        r = self.post(a, "prepare", {"operation_id": "o-prep"})
        self.assertEqual(r.status, 200, r)
        doc = self.wait_sessions(a, lambda x: x["last_round"], "the round")
        self.assertEqual((doc["last_round"]["asked"], doc["last_round"]["result"]),
                         (2, "confirmed"))
        for w in (w_root, w_nb):
            w.wait_line(r'event prepare id=\d+ deadline-ms=30000 %s -> confirmed'
                        % prep_note("o-prep"))
        self.assertEqual(self.post(a, "cancel").status, 200)
        for w in (w_root, w_nb):
            w.wait_line(r'event cancel id=\d+ note="cancelled"')
            self.assertEqual(w.terminate(), 0)

    def test_socket_directory_and_a_second_agent(self):
        # The socket's directory is made 0755 when missing; a live broker's socket is never
        # taken over: a second agent on it fails at once, saying why.
        d0 = self.short_dir()
        sock = os.path.join(d0, "run", "s.sock")
        a = self.agent("--sessions-socket=%s" % sock)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(sock)).st_mode), 0o755)
        self.assertTrue(stat.S_ISSOCK(os.stat(sock).st_mode))
        t0 = time.monotonic()
        rc, out, err = harness.run_agent(
            ["--backend=sim", "--state-dir=%s" % os.path.join(self.tmp, "second-state"),
             "--listen=127.0.0.1:0", "--sessions-socket=%s" % sock], timeout=30 * SCALE)
        took = time.monotonic() - t0
        self.assertNotEqual(rc, 0, err)
        # The first agent's helper turns the second one away at its rendezvous at once.
        self.assertIn("another agent serves it", err)
        self.assertLess(took, 3 * SCALE, err)
        # The first one goes on serving.
        c = self.client(a, "still-there")
        self.assertEqual(c.list()[0].errno, 0)

    @unittest.skipUnless(IS_ROOT, "needs root: the socket's group and another user kept out "
                                  "(EACCES) need users to switch to")
    def test_socket_group(self):
        # --sessions-group: members of the group may connect (mode 0660), others may not.
        d0 = self.short_dir()
        nobody = pwd.getpwnam("nobody")
        group = grp.getgrgid(nobody.pw_gid).gr_name
        a = self.agent("--sessions-socket=%s/s.sock" % d0, "--sessions-group=%s" % group)
        st = os.stat(self.sock_of(a))
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_gid, st.st_uid),
                         (0o660, nobody.pw_gid, 0))
        out = self.run_as_nobody(a, "")
        self.assertEqual(out["hello"], [0, nobody.pw_uid])
        # A user outside the group: EACCES at connect (the example says so and exits 1).
        other = pwd.getpwnam("daemon")
        w = self.workload(a, "list", user=other)
        self.assertEqual(w.wait(), 1)
        self.assertEqual(w.stderr(), "memfd-workload: connect: Permission denied")
        # The default socket (in the state directory, handed to the run user with it) keeps
        # the group it was asked to have too.
        b = self.agent("--sessions-group=%s" % grp.getgrgid(0).gr_name, port=0, name="agent-b")
        st = os.stat(self.sock_of(b))
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_gid), (0o660, 0),
                         "STATE_DIR/sessions.sock with --sessions-group=root")


# ---------------------------------------------------------------------------------------------


class QuotaTest(SessionsCase):

    def test_quotas(self):
        a = self.agent("--session-max-per-owner=1", "--session-max-fds-per-owner=2",
                       "--session-max-bytes-per-owner=6M", "--session-max-clients=1")
        # Bytes: 8 MiB do not fit 6 MiB (the example creates its session, then fails).
        rc, out, err = self.run_workload(a, "preserve", "--name=big", "--session=big",
                                         "--mib=8")
        self.assertEqual(rc, 1, err)
        self.assertEqual(err, "memfd-workload: preserve: Disk quota exceeded (uid %d would "
                         "preserve 8388608 bytes, the limit is 6291456)" % UID)
        # Sessions: "big" (empty) is the one this uid may have.
        self.wait_sessions(a, lambda d: not d["workloads"], "the example to disconnect")
        c = self.client(a, "quota")
        m = c.create("q2")
        self.assertEqual((m.errno_name, m.text),
                         ("EDQUOT", "uid %d has 1 sessions, the limit is 1" % UID))
        self.assertEqual(c.close_session("big").errno, 0)
        self.assertEqual(c.create("q1").errno, 0)
        fds = [sc.memfd(n) for n in (4 * MIB, 4 * MIB, MIB, 4096)]
        self.held_fds.extend(fds)
        self.assertEqual(c.preserve("q1", fds[0], 1).arg, 4 * MIB)
        m = c.preserve("q1", fds[1], 2)
        self.assertEqual((m.errno_name, m.text),
                         ("EDQUOT", "uid %d would preserve 8388608 bytes, the limit is 6291456"
                          % UID))
        self.assertEqual(c.preserve("q1", fds[2], 2).errno, 0)
        m = c.preserve("q1", fds[3], 3)
        self.assertEqual((m.errno_name, m.text),
                         ("EDQUOT", "uid %d preserves 2 files, the limit is 2" % UID))
        m, lst = c.list()
        self.assertEqual(lst, [("q1", "outgoing", 5 * MIB, 2)])
        # Clients: one is connected; the next is answered EUSERS and disconnected.
        extra = sc.Client(self.sock_of(a))
        self.addCleanup(extra.close)
        m = extra.hello("extra")
        self.assertEqual((m.errno_name, m.text), ("EUSERS", "too many workloads are connected "
                                                            "to the session broker"))
        self.assertTrue(extra.closed_by_peer())
        rc, out, err = self.run_workload(a, "list")
        self.assertEqual(rc, 1)
        self.assertEqual(err, "memfd-workload: connect: Too many users")
        # Refusals are journaled and audited with their errno.
        refused = self.wait_events(a, "refused", 4)
        self.assertEqual([(r["errno"], r.get("token")) for r in refused],
                         [("EDQUOT", 1), ("EDQUOT", None), ("EDQUOT", 2), ("EDQUOT", 3)],
                         refused)
        au = self.wait_audits(a, "session-refused", 4)
        self.assertEqual([(r["result"]["status"], r["result"]["code"]) for r in au],
                         [(409, "EDQUOT")] * 4)
        # The first client goes: the next one is served.
        c.close()
        again = wait_for(lambda: (lambda cl: cl if cl.hello("again").errno == 0 else
                                  cl.close())(sc.Client(self.sock_of(a))),
                         timeout=5 * SCALE, interval=0.1, what="a client to be accepted")
        self.addCleanup(again.close)
        self.assertEqual(again.list()[1], [("q1", "outgoing", 5 * MIB, 2)])


# ---------------------------------------------------------------------------------------------


class WireTest(SessionsCase):
    """The protocol, spoken by hand: the kernel's errnos unchanged, malformed input refused."""

    def test_kernel_errnos_through_the_broker(self):
        a = self.agent()
        c = sc.Client(self.sock_of(a))
        self.addCleanup(c.close)
        m = c.hello("errnos")
        self.assertEqual((m.errno, m.token, m.arg, m.text), (0, UID, 1, ""))  # 1: normal
        self.assertEqual(c.create("e1").errno, 0)
        rfd, wfd = os.pipe()
        self.held_fds += [rfd, wfd]
        m = c.preserve("e1", rfd, 1)
        self.assertEqual(m.errno_name, "ENOENT", m)
        self.assertEqual(m.text, "the kernel refused PRESERVE_FD for token 1: No such file or "
                         "directory (ENOENT)")
        with tempfile.TemporaryFile(dir=self.tmp) as f:
            f.write(b"x" * 4096)
            f.flush()
            self.assertEqual(c.preserve("e1", f.fileno(), 1).errno_name, "ENOENT")
        m1, m2 = sc.memfd(MIB, fill=b"one"), sc.memfd(MIB, fill=b"two")
        self.held_fds += [m1, m2]
        m = c.preserve("e1", m1, 1)
        self.assertEqual((m.errno, m.arg), (0, MIB))
        m = c.preserve("e1", m1, 2)  # the same file again: EBUSY, from the kernel
        self.assertEqual(m.errno_name, "EBUSY", m)
        self.assertEqual(m.text, "the kernel refused PRESERVE_FD for token 2: Device or "
                         "resource busy (EBUSY)")
        dup = os.dup(m1)
        self.held_fds.append(dup)
        self.assertEqual(c.preserve("e1", dup, 3).errno_name, "EBUSY")
        self.assertEqual(c.create("e2").errno, 0)
        self.assertEqual(c.preserve("e2", m1, 1).errno_name, "EBUSY")  # in any session
        m = c.preserve("e1", m2, 1)  # a token twice: EEXIST
        self.assertEqual((m.errno_name, m.text), ("EEXIST", "token 1 is in use in session e1"))
        self.assertEqual(c.create("e1").errno_name, "EEXIST")
        self.assertEqual(c.show("e1")[1], [(1, MIB, False)])
        # Unpreserve frees the file for another token; unknown tokens are ENOENT.
        self.assertEqual(c.unpreserve("e1", 1).errno, 0)
        self.assertEqual(c.unpreserve("e1", 1).errno_name, "ENOENT")
        self.assertEqual(c.preserve("e1", m1, 7).errno, 0)
        self.assertEqual(c.show("e1")[1], [(7, MIB, False)])
        # Wrong phase: EINVAL; another boot's session that does not exist: ENOENT.
        self.assertEqual(c.retrieve("e1").errno_name, "EINVAL")
        self.assertEqual(c.finish("e1").errno_name, "EINVAL")
        self.assertEqual(c.retrieve_fd("e1", 7).errno_name, "EINVAL")
        self.assertEqual(c.retrieve("nothere").errno_name, "ENOENT")
        # Nothing to confirm; HELLO twice.
        m = c.confirm(12345)
        self.assertEqual(m.errno_name, "ESTALE")
        m = c.hello("again")
        self.assertEqual((m.errno_name, m.text), ("EINVAL", "HELLO was said already"))
        # The close of a session unpreserves its files: another session may take them.
        self.assertEqual(c.close_session("e1").errno, 0)
        self.assertEqual(c.preserve("e2", m1, 1).errno, 0)
        self.assertEqual(c.list()[1], [("e2", "outgoing", MIB, 1)])
        # The broker's refusals are journaled with the errno.
        def refusals():
            out = [(r["errno"], r.get("session"), r.get("token"))
                   for r in self.session_records(a) if r["event"] == "refused"]
            return out if len(out) >= 6 else None
        refused = wait_for(refusals, timeout=5, what="six refusals journaled")
        self.assertEqual(refused[:6], [("ENOENT", "e1", 1), ("ENOENT", "e1", 1),
                                       ("EBUSY", "e1", 2), ("EBUSY", "e1", 3),
                                       ("EBUSY", "e2", 1), ("EEXIST", "e1", 1)])

    def test_malformed_messages(self):
        a = self.agent()
        helper = helper_of(a)
        good = self.client(a, "good")
        self.assertEqual(good.create("keep").errno, 0)
        keep = sc.memfd(65536)
        self.held_fds.append(keep)
        self.assertEqual(good.preserve("keep", keep, 1).errno, 0)
        good.list()  # (a round trip: the broker closed the descriptor the preserve brought)
        fds_before = fd_kinds(helper)

        opened = []

        def fresh(hello=True):
            c = sc.Client(self.sock_of(a), timeout=5 * SCALE)
            self.addCleanup(c.close)
            opened.append(c)
            if hello:
                self.assertEqual(c.hello("bad").errno, 0)
            return c

        ok = sc.pack(sc.SESSION_CREATE, 2, session="x")
        closes = {
            "empty datagram": b"",
            "1 byte": b"\x53",
            "359 bytes": ok[:359],
            "361 bytes": ok + b"\0",
            "4096 bytes": ok + b"\0" * (4096 - 360),
            "bad magic": sc.pack(sc.SESSION_CREATE, 2, session="x", magic=0x53464C54),
            "version 2": sc.pack(sc.SESSION_CREATE, 2, session="x", version=2),
            "type 0": sc.pack(0, 2, session="x"),
            "type 99": sc.pack(99, 2, session="x"),
            "an event sent to the broker": sc.pack(sc.EVENT, 0, token=1, arg=1),
            "an info entry sent to the broker": sc.pack(sc.INFO, 2, session="x", arg=1),
            "seq 0": sc.pack(sc.SESSION_CREATE, 0, session="x"),
            "result in a request": sc.pack(sc.SESSION_CREATE, 2, result=-1, session="x"),
            "unused field set": sc.pack(sc.SESSION_CREATE, 2, token=5, session="x"),
            "name not NUL-terminated": sc.pack(sc.SESSION_CREATE, 2, session=b"a" * 64),
            "bytes after the NUL": sc.pack(sc.SESSION_CREATE, 2, session=b"ab\0c"),
            "text in a create": sc.pack(sc.SESSION_CREATE, 2, session="x", text="hi"),
            "preserve without a descriptor": sc.pack(sc.PRESERVE, 2, session="x", token=1),
            # (the decoder checks HELLO's flags: "used numbers are in range")
            "HELLO again with unknown flags": sc.pack(sc.HELLO, 2, arg=2, text="bad"),
        }
        for what, data in closes.items():
            with self.subTest(what):
                c = fresh()
                c.send_raw(data)
                self.assertTrue(c.closed_by_peer(), what)
        with_fds = {
            "a descriptor with a create": (sc.pack(sc.SESSION_CREATE, 2, session="x"), 1),
            "two descriptors with a preserve": (sc.pack(sc.PRESERVE, 2, session="x",
                                                        token=1), 2),
        }
        for what, (data, n) in with_fds.items():
            with self.subTest(what):
                c = fresh()
                fds = [sc.memfd(4096) for _ in range(n)]
                self.held_fds.extend(fds)
                c.send_raw(data, fds)
                self.assertTrue(c.closed_by_peer(), what)
        # Before HELLO: answered EPROTO, then closed.
        c = fresh(hello=False)
        m = c.request(sc.SESSION_CREATE, session="x")
        self.assertEqual((m.errno_name, m.text), ("EPROTO", "say HELLO first"))
        self.assertTrue(c.closed_by_peer())
        # Well-formed but outside an alphabet: EINVAL, and the connection goes on.
        c = fresh()
        einval = "a name must be 1 to 48 characters [A-Za-z0-9._-] (a workload's: 63), text " \
                 "printable ASCII"
        for name in ("a/b", ".", "..", "a b", "x" * 49, "caf\xe9"):
            with self.subTest(name=name):
                m = c.request(sc.SESSION_CREATE, session=name)
                self.assertEqual((m.errno_name, m.text), ("EINVAL", einval), name)
        m = c.request(sc.VETO, arg=1, text=b"bad\x01reason")
        self.assertEqual(m.errno_name, "EINVAL")
        self.assertEqual(c.create("y" * 48).errno, 0)  # 48 is the longest
        self.assertEqual(c.close_session("y" * 48).errno, 0)
        # HELLO with a bad workload name: EINVAL, and HELLO may be said again.
        c = fresh(hello=False)
        self.assertEqual(c.hello("n" * 64).errno_name, "EINVAL")
        self.assertEqual(c.hello("a b").errno_name, "EINVAL")
        self.assertEqual(c.hello("n" * 63).errno, 0)
        # After all that: the broker serves the good client, nothing leaked in the helper.
        self.assertEqual(good.list()[1], [("keep", "outgoing", 65536, 1)])
        self.wait_sessions(a, lambda d: [(x["name"], x["phase"]) for x in d["sessions"]] ==
                           [("keep", "outgoing")], "keep, alone")
        for c in opened:
            c.close()
        try:
            wait_for(lambda: fd_kinds(helper) == fds_before, timeout=5,
                     what="the helper's memfds and sockets")
        except AssertionError:
            self.fail("the helper holds (memfds, sockets) %r, %r before the malformed "
                      "messages" % (fd_kinds(helper), fds_before))
        self.assertTrue(a.running())
        # One disconnection each (an empty datagram reads as the end of the connection).
        want = ["closed" if k == "empty datagram" else "malformed message" for k in closes]
        want += ["malformed message"] * len(with_fds)
        details = lambda: [r.get("detail") for r in self.session_records(a)  # noqa: E731
                           if r["event"] == "disconnected" and r.get("workload") == "bad"]
        wait_for(lambda: len(details()) >= len(want), timeout=5,
                 what="the disconnections journaled")
        self.assertEqual(details()[:len(want)], want)


# ---------------------------------------------------------------------------------------------


class CrashTest(SessionsCase):
    """kill -9 of the network process, with and without sessions held."""

    def test_kill9_with_sessions_the_helper_stays_and_the_next_agent_attaches(self):
        a = self.agent()
        w = self.workload(a, "preserve", "--name=vm-k", "--session=kram", "--mib=4",
                          "--seed=9")
        w.wait_line(r"preserved 4194304 bytes in session kram under token 1")
        self.stage(a)
        self.assertEqual(self.post(a, "prepare", {"operation_id": "k-prep"}).status, 200)
        w.wait_line(r'event prepare id=\d+ deadline-ms=30000 %s -> confirmed'
                    % prep_note("k-prep"))
        before = self.wait_sessions(a, lambda d: d["summary"]["fds"] == 1, "the file")
        boot = self.state(a)["boot_id"]
        helper = helper_of(a)
        self.addCleanup(lambda: alive(helper) and os.kill(helper, signal.SIGKILL))

        a.kill9()
        time.sleep(1.0)
        self.assertTrue(alive(helper), "the helper holding sessions went with its network "
                        "process")
        self.assertIn("Privileged helper: the network process is gone; workloads' sessions "
                      "live here: waiting for the next agent", a.log())
        self.assertIsNone(w.proc.poll(), "the workload lost its broker")

        a.restart()
        self.assertIn("Attached to the privileged helper (pid %d) that kept the workloads' "
                      "sessions of the previous agent" % helper, a.log())
        d = self.state(a)
        self.assertEqual((d["state"], d["boot_id"]), ("prepared", boot))
        doc = self.wait_sessions(a, lambda x: x["summary"]["fds"] == 1,
                                 "the preserved file after the restart")
        self.assertEqual(doc["broker_id"], before["broker_id"])
        self.assertEqual(doc["sessions"], before["sessions"])
        self.assertEqual(doc["workloads"], before["workloads"])
        # Every broker event journaled once across both agents.
        seqs = [r["broker"]["seq"] for r in self.session_records(a)]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))

        r = self.post(a, "reboot", {"operation_id": "k-reboot"}, direct=True)
        self.assertEqual(r.status, 202, r)
        self.assertEqual(w.wait(), 0, w.stderr())
        d = self.wait_new_boot(a, boot)
        self.assertEqual(d["state"], "updated")
        wait_for(lambda: not alive(helper), timeout=5, what="the old helper to exit")
        self.wait_sessions(a, lambda x: x["summary"]["incoming"] == 1, "the incoming session")
        rc, out, err = self.run_workload(a, "restore", "--name=vm-k", "--session=kram",
                                         "--mib=4", "--seed=9")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"restored 4 MiB in \d+\.\d ms, checksum ok")
        self.assertEqual(self.post(a, "finish").status, 200)
        # The restart said nothing was lost (the helper that kept the device kept every
        # preserved file), not that the previous agent's resources were released.
        start2 = a.log().split("---- harness: start #2")[1]
        self.assertNotIn("were released with its device handle", start2)

    def test_sigterm_with_sessions_the_helper_stays(self):
        # docs/sessions.md: the network process's SIGTERM stop loses nothing either; the
        # next agent attaches, and the broker's events after that reach its journal.
        a = self.agent()
        w = self.workload(a, "preserve", "--name=vm-t", "--session=tram", "--mib=4")
        w.wait_line(r"preserved 4194304 bytes in session tram under token 1")
        before = self.wait_sessions(a, lambda d: d["summary"]["fds"] == 1, "the file")
        helper = helper_of(a)
        self.assertEqual(a.stop(), 0)
        time.sleep(0.5)
        self.assertTrue(alive(helper), "the helper holding sessions ended with the orderly "
                        "stop of its network process")
        self.assertIsNone(w.proc.poll(), "the workload lost its broker: %s" % w.stderr())
        a.restart()
        self.assertIn("Attached to the privileged helper (pid %d)" % helper, a.log())
        doc = self.wait_sessions(a, lambda x: x["summary"]["fds"] == 1,
                                 "the preserved file after the restart")
        self.assertEqual((doc["broker_id"], doc["sessions"]),
                         (before["broker_id"], before["sessions"]))
        # A change after the attach: journaled, and the agent keeps running.
        c = self.client(a, "after-attach")
        self.assertEqual(c.create("later").errno, 0)
        self.assertEqual(c.close_session("later").errno, 0)
        def journaled():
            if not a.running():
                return True
            try:
                return any(r["event"] == "closed" for r in self.session_records(a))
            except (OSError, AssertionError):  # (the proxy answers 500 for a dead agent)
                return False
        wait_for(journaled, timeout=10, what="the closed record")
        self.assertTrue(a.running(), "the agent stopped after a session change that followed "
                        "its attach; its log ends:\n%s" % a.log()[-1500:])
        recs = self.wait_events(a, "closed", 1)
        seqs = [r["broker"]["seq"] for r in self.session_records(a)]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
        self.assertEqual(recs[0]["session"], "later")

    def test_kill9_without_sessions_the_helper_goes(self):
        a = self.agent()
        # A connected workload with an empty session holds nothing.
        c = self.client(a, "empty", sc.HELLO_REGISTER)
        self.assertEqual(c.create("nothing").errno, 0)
        helper = helper_of(a)
        self.addCleanup(lambda: alive(helper) and os.kill(helper, signal.SIGKILL))
        a.kill9()
        wait_for(lambda: not alive(helper), timeout=3,
                 what="the helper to exit with its network process")
        self.assertTrue(c.closed_by_peer())
        a.restart()
        self.assertNotIn("Attached to the privileged helper", a.log())
        self.assertNotEqual(helper_of(a), helper)
        self.assertEqual(self.state(a)["state"], "normal")


# ---------------------------------------------------------------------------------------------


class CancelAndForceTest(SessionsCase):

    def test_cancel_keeps_the_sessions(self):
        a = self.agent()
        w = self.workload(a, "preserve", "--name=vm-c", "--session=cram", "--mib=4")
        w.wait_line(r"preserved 4194304 bytes in session cram under token 1")
        self.stage(a)
        self.assertEqual(self.post(a, "prepare", {"operation_id": "c-prep"}).status, 200)
        first = int(w.wait_line(r'event prepare id=(\d+) deadline-ms=30000 %s -> confirmed'
                                % prep_note("c-prep")).group(1))
        r = self.post(a, "cancel", {"operation_id": "c-cancel"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["state"], "normal")
        w.wait_line(r'event cancel id=\d+ note="cancelled"')
        self.assertEqual(a.sim_kernel()["applied"]["cancel"], 1)
        doc = self.sessions(a)
        self.assertEqual([(s["name"], s["phase"], s["fds"], s["bytes"]) for s in doc["sessions"]],
                         [("cram", "outgoing", 1, 4 * MIB)])
        self.assertEqual(r.json["sessions"]["outgoing"], 1)
        # The next prepare asks again, with a new id.
        self.assertEqual(self.post(a, "prepare").status, 200)
        wait_for(lambda: len(re.findall(r"event prepare id=\d+ deadline-ms=30000 %s -> "
                                        r"confirmed" % prep_note(r"[^ ]+"), w.output())) == 2,
                 timeout=5 * SCALE, what="the second prepare, confirmed")
        ids = [int(x) for x in re.findall(r"event prepare id=(\d+)", w.output())]
        self.assertEqual(ids[0], first)
        self.assertGreater(ids[1], first)
        self.assertEqual(self.post(a, "cancel").status, 200)
        self.assertEqual(w.terminate(), 0)
        self.assertIn("terminated", w.output())

    def test_finish_with_force(self):
        a = self.agent()
        c = self.client(a, "py-force")
        pattern = b"0123456789abcdef"
        for name in ("ff", "ff2"):
            self.assertEqual(c.create(name).errno, 0)
            fd = sc.memfd(4 * MIB, fill=pattern)
            self.held_fds.append(fd)
            self.assertEqual(c.preserve(name, fd, 7).errno, 0)
        self.stage(a)
        before = self.state(a)
        self.assertEqual(self.post(a, "prepare").status, 200)  # nobody registered
        r = self.post(a, "reboot", {"operation_id": "f-reboot"}, direct=True)
        self.assertEqual(r.status, 202, r)
        self.assertTrue(c.closed_by_peer(10 * SCALE))
        d = self.wait_new_boot(a, before["boot_id"])
        self.assertEqual(d["state"], "updated")
        doc = self.wait_sessions(a, lambda x: x["summary"]["incoming"] == 2, "two incoming")
        # Retrieve one of them (not finished); the other is never retrieved.
        c2 = self.client(a, "py-force")
        self.assertEqual(c2.retrieve("ff2").errno, 0)
        m = c2.retrieve_fd("ff2", 7)
        self.assertEqual((m.errno, m.arg), (0, 4 * MIB), m)
        self.held_fds.append(m.fd)
        self.assertEqual(os.pread(m.fd, 32, 4 * MIB - 32), pattern * 2)
        r = self.post(a, "finish", {"operation_id": "f-1"})
        p = self.assertProblem(r, 409, "sessions-unfinished")
        self.assertEqual(sorted((s["name"], s["phase"]) for s in p["sessions"]),
                         [("ff", "incoming"), ("ff2", "retrieved")])
        r = self.post(a, "finish", {"operation_id": "f-force", "force": True})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["state"], "normal")
        doc = self.wait_sessions(a, lambda x: x["summary"]["sessions"] == 0, "no sessions")
        self.assertEqual(doc["sessions"], [])
        forced = self.wait_events(a, "force-finished", 2)
        self.assertEqual(sorted((x["session"], x["owner_uid"], x["workload"], x["bytes"],
                                 "errno" in x) for x in forced),
                         [("ff", UID, "py-force", 4 * MIB, False),
                          ("ff2", UID, "py-force", 4 * MIB, False)])
        au = self.wait_audits(a, "session-force-finished", 2)
        self.assertEqual({x["identity"]["name"] for x in au}, {"uid=%d" % UID})
        # The data is gone; the descriptor already retrieved stays usable.
        self.assertEqual(c2.retrieve("ff").errno_name, "ENOENT")
        self.assertEqual(c2.list()[1], [])
        self.assertEqual(os.pread(m.fd, 16, 0), pattern)
        self.assertEqual(a.sim_kernel()["applied"]["finish"], 1)


# ---------------------------------------------------------------------------------------------


class ObserveTest(SessionsCase):

    def test_metrics(self):
        # docs/sessions.md "Observing sessions": the gauges from the broker's summary.
        a = self.agent()
        c = self.client(a, "metered")
        fd = sc.memfd(3 * MIB)
        self.held_fds.append(fd)
        self.assertEqual(c.create("m1").errno, 0)
        self.assertEqual(c.preserve("m1", fd, 1).errno, 0)
        self.assertEqual(c.create("m2").errno, 0)
        self.wait_sessions(a, lambda d: d["summary"]["sessions"] == 2, "two sessions")
        m = self.api(a)
        self.assertEqual([m.metric('luofleet_sessions{phase="%s"}' % ph) for ph in
                          ("outgoing", "incoming", "retrieved", "finished")], [2, 0, 0, 0])
        self.assertEqual((m.metric("luofleet_session_fds"), m.metric("luofleet_session_bytes"),
                          m.metric("luofleet_session_workloads"),
                          m.metric("luofleet_session_events_dropped_total")),
                         (1, 3 * MIB, 1, 0))


class AuditTest(SessionsCase):

    def test_one_audit_record_per_session_change(self):
        a = self.agent()
        c = self.client(a, "audited")
        before = len(self.audits(a))
        fd = sc.memfd(8192)
        self.held_fds.append(fd)
        self.assertEqual(c.create("au").errno, 0)
        self.assertEqual(c.preserve("au", fd, 3).errno, 0)
        self.assertEqual(c.create("au").errno_name, "EEXIST")
        self.assertEqual(c.unpreserve("au", 3).errno, 0)
        self.assertEqual(c.close_session("au").errno, 0)
        c.close()
        want = [("session-created", 200, "ok"), ("session-preserved", 200, "ok"),
                ("session-refused", 409, "EEXIST"), ("session-unpreserved", 200, "ok"),
                ("session-closed", 200, "ok")]
        recs = wait_for(lambda: (lambda r: r if len(r) >= len(want) else None)(
            self.audits(a)[before:]), timeout=5 * SCALE, what="the audit records")
        self.wait_records(a, ["connected", "created", "preserved", "refused", "unpreserved",
                              "closed", "disconnected"])
        recs = self.audits(a)[before:]
        self.assertEqual([(r["action"], r["result"]["status"], r["result"]["code"])
                          for r in recs], want)  # none for connected/disconnected
        d = self.state(a)
        for r in recs:
            self.assertEqual(set(r), AUDIT_KEYS, r)
            self.assertEqual((r["kind"], r["source"], r["identity"], r["precondition"],
                              r["result"]["replayed"], r["boot_id"]),
                             ("audit", "sessions", PEERCRED, None, False, d["boot_id"]), r)


# ---------------------------------------------------------------------------------------------


class ContractTest(SessionsCase):
    """GET /v1/state, GET /v1/sessions and the broker's 409s through the contract proxy."""

    def test_contract_covers_sessions(self):
        if harness.contract_proxy() is None:
            self.skipTest("LUOFLEET_CONTRACT=0: no contract proxy")
        self.assertTrue(CONTRACT_DESCRIBES_SESSIONS,
                        "api/openapi.yaml does not describe GET /v1/sessions and the problems "
                        "workloads-not-confirmed, workload-veto, sessions-unfinished")
        a = self.agent("--workload-confirm-timeout=500ms")
        c = a.client()
        self.assertTrue(c.proxied)
        w = self.workload(a, "preserve", "--name=vm-ct", "--session=ct", "--mib=4",
                          "--no-confirm")
        w.wait_line(r"preserved 4194304 bytes in session ct under token 1")
        self.wait_sessions(a, lambda d: d["sessions"], "the session")
        self.assertEqual(c.get("/v1/state").status, 200)
        self.assertEqual(c.get("/v1/sessions").status, 200)
        self.stage(a)
        r = c.post("/v1/prepare", json_body={})
        self.assertProblem(r, 409, "workloads-not-confirmed")
        self.assertEqual(c.get("/v1/history?kind=session").status, 200)
        self.assertEqual(c.get("/v1/history?kind=audit").status, 200)
        w.terminate()


if __name__ == "__main__":
    harness.main()
