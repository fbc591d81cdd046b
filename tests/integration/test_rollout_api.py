#!/usr/bin/env python3
"""test_rollout_api.py: luofleet-rollout's HTTP side and daemon shell, against real processes
on loopback: the controller (port 0, a temporary SQLite store, an --inventory file) in front of
simulated agents (harness.Agent).

Checks: flags, config file and exit codes (2 for usage and configuration, 1 for a store that
cannot be opened), IPv6 loopback, /healthz and /metrics, the generic errors (404, 405 with
Allow, 413, 415, invalid-json with duplicate members, invalid-query), hosts (inventory, PUT 201
then 200, GET, DELETE, 404, invalid names), rollout validation (code and field), the dry-run
plan (3 hosts, canary 1, batch 2 -> [[a], [b, c]]), a real rolling rollout to completion
(staged by path from the test's directory), idempotent create and 409 rollout-exists, pause /
resume / abort and 409 on a finished rollout, the Server-Sent Events stream (framing,
Last-Event-ID and ?after resume, keepalive comments, the end of the stream), bearer tokens
(401/403, WWW-Authenticate, SIGHUP reload), and SIGTERM/SIGINT stops with exit 0 (ASan: no
leak).

Contract mode (LUOFLEET_CONTRACT != "0", the default): the module runs one Prism validating
proxy against api/rollout.yaml (not scripts/contract-proxy, which serves the agent's
api/openapi.yaml) in front of a port reserved for the controller, and every answer a test
reads through Controller.client() must come back without an `sl-violations` header. Requests
Prism cannot carry or answers itself (unknown paths and methods, HEAD, malformed or
non-JSON bodies, live event streams) go to the controller directly (Controller.direct()).

Environment: LUOFLEET_ROLLOUT (the controller binary), LUOFLEET_AGENT, LUOFLEET_CONTRACT,
LUOFLEET_TEST_TMP, LUOFLEET_TEST_KEEP, LUOFLEET_TEST_TIMEOUT_SCALE (harness.py).
"""

import hashlib
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SPEC = os.path.join(harness.REPO_ROOT, "api", "rollout.yaml")
LISTEN_RE = re.compile(rb"luofleet-rollout: listening on (https?)://(\S+):(\d+)\n")
SCALE = harness.SCALE
ROLLOUT_TIMEOUT = 90.0 * SCALE
REALM = 'Bearer realm="luofleet-rollout"'


def rollout_path():
    p = os.environ.get("LUOFLEET_ROLLOUT")
    if p:
        return p
    return os.path.join(harness.REPO_ROOT, "build", "bin", "luofleet-rollout")


def run_rollout(args, env=None, timeout=harness.START_TIMEOUT):
    """Run the controller to completion (flag errors, refusals): (rc, stdout, stderr)."""
    e = dict(os.environ)
    e.pop("LUOFLEET_ROLLOUT_CONFIG", None)
    e.pop("LUOFLEET_TEST_TIME_OFFSET", None)
    e.update(env or {})
    p = subprocess.run([rollout_path()] + list(args), stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout, env=e)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# The contract proxy: Prism against api/rollout.yaml


class RolloutProxy(harness.ContractProxy):
    """harness.ContractProxy, but Prism validates against api/rollout.yaml."""

    def start(self, timeout=harness.PRISM_START_TIMEOUT):
        subprocess.run([os.path.join(harness.REPO_ROOT, "scripts", "contract-tools")],
                       check=True)
        for attempt in range(3):
            self.port = harness.free_port()
            cmd = [harness.PRISM_BIN, "proxy", SPEC, "http://127.0.0.1:%d" % self.upstream_port,
                   "--errors", "--host", "127.0.0.1", "--port", str(self.port),
                   "--validate-request", "false", "-v", "warn"]
            with open(self.log_path, "ab") as log:
                log.write(("---- test: %s\n" % " ".join(cmd)).encode())
                log.flush()
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, close_fds=True)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return self
                except OSError:
                    pass
                if self.proc.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    self.stop()
                    raise harness.ContractError("Prism did not listen within %.0fs:\n%s"
                                                % (timeout, self.log()[-4000:]))
                time.sleep(0.02)
            if "EADDRINUSE" not in self.log() or attempt == 2:
                raise harness.ContractError("Prism exited with code %d before listening:\n%s"
                                            % (self.proc.returncode, self.log()[-4000:]))
        raise AssertionError("unreachable")


_proxy = None
_reservation = None
_upstream = None


def setUpModule():
    global _proxy, _reservation, _upstream
    if not harness.contract_wanted():
        sys.stderr.write("test_rollout_api: LUOFLEET_CONTRACT=0: responses are NOT checked "
                         "against api/rollout.yaml\n")
        return
    _reservation, _upstream = harness.reserve_port()
    tmp = harness._module_tmp("rollout_api-prism")
    try:
        _proxy = RolloutProxy(tmp, _upstream).start()
    except BaseException:
        _reservation.close()
        _reservation = _upstream = None
        raise


def tearDownModule():
    global _proxy, _reservation, _upstream
    p = _proxy
    if p is None:
        return
    _proxy = None
    p.stop()
    _reservation.close()
    _reservation = _upstream = None
    sys.stderr.write("test_rollout_api: %d requests through the contract proxy "
                     "(api/rollout.yaml; %d method/path/status combinations): %d contract "
                     "violations; %d more sent directly\n"
                     % (p.proxied, len(p.seen), p.violations, p.direct))


# ---------------------------------------------------------------------------------------------
# The controller process


class Controller:
    """One luofleet-rollout process (and its restarts) on one store."""

    def __init__(self, workdir, args=(), port=0, name="rollout", env=None, host="127.0.0.1"):
        self.workdir = workdir
        self.name = name
        self.args = list(args)
        self.port = port
        self.host = host
        self.env = env or {}
        self.db = os.path.join(workdir, name + "-store", "rollout.db")
        self.stdout_path = os.path.join(workdir, name + ".stdout")
        self.stderr_path = os.path.join(workdir, name + ".stderr")
        self.proc = None
        self.scheme = "http"

    @property
    def base_url(self):
        h = "[%s]" % self.host if ":" in self.host else self.host
        return "%s://%s:%d" % (self.scheme, h, self.port)

    def client(self, timeout=10.0):
        """Through the contract proxy when this controller listens on its upstream port."""
        p = _proxy
        if p is not None and p.running() and self.host == "127.0.0.1" and \
                self.port == p.upstream_port:
            c = harness.Client(p.url, timeout=timeout)
            c.proxy = p
            return c
        return self.direct(timeout)

    def direct(self, timeout=10.0):
        c = harness.Client(self.base_url, timeout=timeout)
        c.proxy = None
        return c

    def log(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stdout(self):
        try:
            with open(self.stdout_path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def command(self):
        cmd = [rollout_path(), "--db=" + self.db]
        if not any(a.startswith("--listen") for a in self.args):
            cmd.append("--listen=%s:%d" % (self.host if ":" not in self.host
                                           else "[%s]" % self.host, self.port))
        return cmd + self.args

    def start(self, timeout=harness.START_TIMEOUT):
        offset = len(self.stdout())
        env = dict(os.environ)
        env.pop("LUOFLEET_ROLLOUT_CONFIG", None)
        env.update(self.env)
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            err.write(("---- test: start: %s\n" % " ".join(self.command())).encode())
            err.flush()
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=err, close_fds=True, env=env)
        deadline = time.monotonic() + timeout
        while True:
            m = None
            for m in LISTEN_RE.finditer(self.stdout(), offset):
                break
            if m:
                self.scheme = m.group(1).decode()
                self.port = int(m.group(3))
                return self
            if self.proc.poll() is not None:
                raise AssertionError("%s exited with code %d before listening; stderr:\n%s"
                                     % (self.name, self.proc.returncode, self.log()))
            if time.monotonic() > deadline:
                raise AssertionError("%s did not listen within %.0fs; stderr:\n%s"
                                     % (self.name, timeout, self.log()))
            time.sleep(0.01)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=harness.STOP_TIMEOUT):
        """The signal; the process must exit 0 (a sanitizer report or a leak fails it)."""
        if not self.running():
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("%s did not stop within %.0fs; stderr:\n%s"
                                 % (self.name, timeout, self.log()))
        if rc != 0:
            raise AssertionError("%s exited with code %d after %s; stderr:\n%s"
                                 % (self.name, rc, signal.Signals(sig).name, self.log()))
        return rc


# ---------------------------------------------------------------------------------------------
# Helpers


_contract = None


def contract():
    """api/rollout.yaml as JSON (tools/yaml2json.mjs: no PyYAML here), or None without Node."""
    global _contract
    if _contract is None:
        y2j = os.path.join(harness.REPO_ROOT, "tools", "yaml2json.mjs")
        if not shutil.which("node") or not os.path.isdir(
                os.path.join(harness.REPO_ROOT, "tools", "node_modules", "yaml")):
            return None
        p = subprocess.run(["node", y2j, SPEC], capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise AssertionError("api/rollout.yaml does not load: " + p.stderr)
        _contract = json.loads(p.stdout)
    return _contract


def write_inventory(path, agents, labels=None):
    """{"hosts": [{"name", "url", "labels"}]} for (name, agent) pairs."""
    hosts = []
    for name, a in agents:
        hosts.append({"name": name, "url": a.base_url if hasattr(a, "base_url") else a,
                      "labels": (labels or {}).get(name, {"zone": "z1"})})
    with open(path, "w") as f:
        json.dump({"hosts": hosts}, f)
    return path


def make_token(name):
    token = hashlib.sha256(("token-" + name + str(time.time())).encode()).hexdigest()[:43]
    return token, hashlib.sha256(token.encode()).hexdigest()


def write_tokens(path, entries):
    with open(path, "w") as f:
        f.write("# luofleet-rollout tokens (test)\n")
        for name, role, digest in entries:
            f.write("%s %s %s\n" % (name, role, digest))
    os.chmod(path, 0o600)


class RolloutTestCase(harness.AgentTestCase):
    """Agents (harness) and controllers: all stopped at the end, exit code 0 required."""

    def setUp(self):
        super().setUp()
        self._controllers = []
        self.addCleanup(self._stop_controllers)

    def controller(self, *args, start=True, **kw):
        """A controller, by default on the contract proxy's upstream port (unless busy)."""
        if "port" not in kw:
            busy = any(c.running() and c.port == _upstream for c in self._controllers)
            kw["port"] = 0 if (busy or not _upstream) else _upstream
        kw.setdefault("name", "rollout%d" % (len(self._controllers) + 1))
        c = Controller(self.tmp, args=args, **kw)
        self._controllers.append(c)
        if start:
            c.start()
        return c

    def _stop_controllers(self):
        errors = []
        for c in self._controllers:
            try:
                c.stop()
            except AssertionError as e:
                errors.append(str(e))
        if self._failed():
            for c in self._controllers:
                sys.stderr.write("\n==== %s stderr (%s) ====\n%s\n"
                                 % (c.name, c.stderr_path, c.log()[-20000:]))
        if errors:
            raise AssertionError("\n".join(errors))

    def sim_agents(self, n=3):
        """n simulated agents on kernel-chosen ports (the controller talks to them)."""
        return [self.agent(port=0, name="agent-%s" % chr(ord("a") + i)) for i in range(n)]

    def fleet(self, n=3, *args, labels=None):
        """n agents named a, b, c... in an inventory, and a controller over them."""
        agents = self.sim_agents(n)
        names = [chr(ord("a") + i) for i in range(n)]
        inv = write_inventory(os.path.join(self.tmp, "inventory.json"),
                              list(zip(names, agents)), labels)
        ctl = self.controller("--inventory=" + inv, "--retry-min=50ms", "--retry-max=500ms",
                              "--poll-wait=2s", *args)
        return ctl, agents, names

    def target(self, release="6.99.0-luo-test"):
        path, digest = harness.make_bzimage(os.path.realpath(self.tmp), "vmlinuz-" + release,
                                            release)
        return {"kernel": {"path": path, "sha256": digest}, "release": release}

    def wait_rollout(self, c, rid, statuses=("completed", "failed", "aborted"),
                     timeout=ROLLOUT_TIMEOUT):
        last = [None]

        def done():
            r = c.get("/v1/rollouts/" + rid)
            self.assertEqual(r.status, 200, r)
            last[0] = r.json
            return r.json if r.json["status"] in statuses else None
        try:
            return harness.wait_for(done, timeout=timeout, interval=0.1,
                                    what="rollout %s to be %s" % (rid, "/".join(statuses)))
        except AssertionError:
            raise AssertionError("rollout %s: last seen %s" % (rid, json.dumps(last[0],
                                                                               indent=1)))

    def assertEventsInContract(self, events):
        """Each event's data is an Event of api/rollout.yaml (Prism cannot see inside a
        stream): members, required ones, enums, integers."""
        spec = contract()
        if spec is None:
            return
        schemas = spec["components"]["schemas"]
        ev = schemas["Event"]
        enums = {"type": schemas["EventType"]["enum"], "phase": schemas["HostPhase"]["enum"],
                 "status": schemas["RolloutStatus"]["enum"]}
        for e in events:
            d = e["json"]
            self.assertLessEqual(set(ev["required"]), set(d), d)
            self.assertLessEqual(set(d), set(ev["properties"]), d)
            for k, allowed in enums.items():
                if k in d:
                    self.assertIn(d[k], allowed, d)
            for k in ("seq", "wave", "blackout_ms"):
                if k in d:
                    self.assertIsInstance(d[k], int, d)
            for k in ("host", "detail", "operation_id"):
                if k in d:
                    self.assertIsInstance(d[k], str, d)

    def assertProblem(self, r, status, code, **fields):
        p = super().assertProblem(r, status, code, **fields)
        self.assertEqual(r.header("Cache-Control"), "no-store", r)
        return p


# ---------------------------------------------------------------------------------------------
# The daemon shell


class TestDaemon(RolloutTestCase):

    def test_help_version_and_bad_flags(self):
        rc, out, err = run_rollout(["--help"])
        self.assertEqual(rc, 0, err)
        self.assertTrue(out.startswith("Usage: luofleet-rollout [OPTIONS]\n"), out)
        for flag in ("--listen=", "--db=", "--inventory=", "--agent-ca-bundle=", "--agent-cert=",
                     "--agent-key=", "--agent-token-file=", "--tls-cert=", "--tls-key=",
                     "--tokens=", "--insecure", "--poll-wait=", "--retry-min=", "--retry-max=",
                     "--connect-timeout=", "--request-timeout=", "--max-agent-connections=",
                     "--name=", "--config=", "LUOFLEET_ROLLOUT_CONFIG",
                     "LUOFLEET_TEST_TIME_OFFSET"):
            self.assertIn(flag, out)
        rc, out, err = run_rollout(["-h"])
        self.assertEqual(rc, 0, err)
        rc, out, err = run_rollout(["--version"])
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"^luofleet-rollout \S+\n$")

        cases = [
            (["--bogus"], "unrecognized option"),
            (["--poll-wait=soon"], "invalid --poll-wait=soon"),
            (["--retry-min=5s", "--retry-max=1s"], "--retry-min"),
            (["--max-agent-connections=0"], "invalid --max-agent-connections=0"),
            (["--listen=nowhere"], "invalid --listen=nowhere"),
            (["--name=a b"], "invalid --name=a b"),
            (["--tls-cert=/x.pem"], "--tls-cert and --tls-key go together"),
            (["--agent-cert=/x.pem"], "--agent-cert and --agent-key go together"),
            (["extra"], "unexpected argument 'extra'"),
            (["--listen=0.0.0.0:0"], "refusing to listen on 0.0.0.0:0"),
            (["--listen=[::]:0"], "refusing to listen on :::0"),
            (["--config=" + os.path.join(self.tmp, "missing.conf")], "cannot read config file"),
        ]
        for args, msg in cases:
            with self.subTest(args=args):
                rc, out, err = run_rollout(args + ["--db=" + os.path.join(self.tmp, "x.db")])
                self.assertEqual(rc, 2, (out, err))
                self.assertIn(msg, err)
                self.assertEqual(out, "")
        rc, out, err = run_rollout(["--db=" + os.path.join(self.tmp, "x.db")],
                                   env={"LUOFLEET_TEST_TIME_OFFSET": "soon"})
        self.assertEqual(rc, 2, err)
        self.assertIn("invalid LUOFLEET_TEST_TIME_OFFSET=soon", err)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "x.db")))

    def test_non_loopback_with_insecure(self):
        # 0.0.0.0 without TLS and tokens only with --insecure (then served, with a warning).
        c = self.controller("--listen=0.0.0.0:0", "--insecure", port=0)
        self.assertIn("--insecure", c.log())
        r = harness.Client("http://127.0.0.1:%d" % c.port).get("/healthz")
        self.assertEqual(r.status, 200, r)

    def test_config_file_and_precedence(self):
        conf = os.path.join(self.tmp, "rollout.conf")
        db = os.path.join(self.tmp, "conf-store", "r.db")
        with open(conf, "w") as f:
            f.write("# a comment\n\n"
                    "listen = 127.0.0.1:0   # inline comment\n"
                    "db = \"%s\"\n"
                    "poll-wait = 5s\n"
                    "insecure = no\n"
                    "log-level = debug\n" % db)
        # From --config; the store's directory is created 0700.
        c = Controller(self.tmp, args=["--config=" + conf], name="conf")
        c.command = lambda: [rollout_path(), "--config=" + conf]
        self._controllers.append(c)
        c.start()
        self.assertEqual(c.direct().get("/healthz").status, 200)
        c.stop()
        self.assertEqual(os.stat(os.path.dirname(db)).st_mode & 0o777, 0o700)
        self.assertTrue(os.path.exists(db))
        # From $LUOFLEET_ROLLOUT_CONFIG; the command line's --listen replaces the file's.
        c2 = Controller(self.tmp, name="env", env={"LUOFLEET_ROLLOUT_CONFIG": conf})
        c2.command = lambda: [rollout_path(), "--listen=[::1]:0"]
        self._controllers.append(c2)
        c2.start()
        self.assertIn(b"listening on http://[::1]:", c2.stdout())
        self.assertNotIn(b"127.0.0.1", c2.stdout())
        c2.stop()
        # Errors name the file and line; exit 2.
        for text, msg in (("bogus = 1\n", ":1: unknown key 'bogus'"),
                          ("\n\npoll-wait = never\n", ":3: invalid poll-wait = never"),
                          ("db\n", ":1: expected 'db = VALUE'"),
                          ("help = yes\n", ":1: unknown key 'help'")):
            with self.subTest(text=text):
                with open(conf, "w") as f:
                    f.write(text)
                rc, out, err = run_rollout(["--config=" + conf])
                self.assertEqual(rc, 2, err)
                self.assertIn(conf + msg, err)
                rc, out, err = run_rollout([], env={"LUOFLEET_ROLLOUT_CONFIG": conf})
                self.assertEqual(rc, 2, err)

    def test_store_cannot_open(self):
        blocker = os.path.join(self.tmp, "file")
        with open(blocker, "w") as f:
            f.write("x")
        rc, out, err = run_rollout(["--listen=127.0.0.1:0", "--db=" + blocker + "/r.db"])
        self.assertEqual(rc, 1, err)
        self.assertIn("is not a directory", err)
        os.mkdir(os.path.join(self.tmp, "adir"))
        rc, out, err = run_rollout(["--listen=127.0.0.1:0",
                                    "--db=" + os.path.join(self.tmp, "adir")])
        self.assertEqual(rc, 1, err)
        self.assertRegex(err, r"Cannot start the controller: .*%s"
                         % re.escape(os.path.join(self.tmp, "adir")))
        self.assertNotIn("listening on", out)
        # A broken inventory is a configuration error: 2.
        inv = os.path.join(self.tmp, "inv.json")
        with open(inv, "w") as f:
            f.write('{"hosts": [{"name": "a"}]}')
        rc, out, err = run_rollout(["--listen=127.0.0.1:0", "--inventory=" + inv,
                                    "--db=" + os.path.join(self.tmp, "r.db")])
        self.assertEqual(rc, 2, err)
        self.assertIn("Cannot start the controller: " + inv, err)

    def test_ipv6_loopback_and_sigint(self):
        c = self.controller(host="::1", port=0)
        self.assertIn(b"luofleet-rollout: listening on http://[::1]:%d\n" % c.port, c.stdout())
        r = c.direct().get("/healthz")
        self.assertEqual(r.status, 200, r)
        c.stop(sig=signal.SIGINT)

    def test_two_listeners(self):
        c = self.controller("--listen=127.0.0.1:0", "--listen=[::1]:0", port=0)
        ports = [int(m.group(3)) for m in LISTEN_RE.finditer(c.stdout())]
        self.assertEqual(len(ports), 2, c.stdout())
        for host, port in (("127.0.0.1", ports[0]), ("[::1]", ports[1])):
            r = harness.Client("http://%s:%d" % (host, port)).get("/healthz")
            self.assertEqual(r.status, 200, r)


# ---------------------------------------------------------------------------------------------
# HTTP generics


class TestHttp(RolloutTestCase):

    def test_contract_file(self):
        """api/rollout.yaml loads, lints clean (Redocly, the project's rules) and has every
        route the controller serves."""
        if not harness.contract_wanted():
            self.skipTest("LUOFLEET_CONTRACT=0")
        spec = contract()
        self.assertIsNotNone(spec)
        self.assertEqual(set(spec["paths"]), {
            "/healthz", "/metrics", "/v1/hosts", "/v1/hosts/{name}", "/v1/rollouts",
            "/v1/rollouts/{id}", "/v1/rollouts/{id}/pause", "/v1/rollouts/{id}/resume",
            "/v1/rollouts/{id}/abort", "/v1/rollouts/{id}/events"})
        schemas = spec["components"]["schemas"]
        for name in ("Host", "RolloutSpec", "Plan", "Rollout", "RolloutSummary", "Event",
                     "Problem", "HostPhase", "RolloutStatus", "ReasonCode", "ProblemCode"):
            self.assertIn(name, schemas)
        self.assertEqual(schemas["HostPhase"]["enum"],
                         ["pending", "staging", "prepared", "rebooting", "updated", "verifying",
                          "finishing", "done", "failed", "cancelled", "skipped",
                          "already-current"])
        p = subprocess.run([os.path.join(harness.REPO_ROOT, "scripts", "contract-lint"), SPEC],
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_healthz_and_metrics(self):
        c = self.controller()
        cl = c.client()
        r = cl.get("/healthz")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.content_type, "application/json")
        self.assertEqual(r.json["status"], "ok")
        self.assertEqual(r.header("Cache-Control"), "no-store")
        r = cl.get("/metrics")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.content_type, "text/plain; version=0.0.4; charset=utf-8")
        text = r.body.decode()
        self.assertRegex(text, r"\nluofleet_rollout_http_requests_total \d+\n")
        self.assertIn("luofleet_rollout_event_streams 0\n", text)
        r = c.direct().head("/healthz")
        self.assertEqual((r.status, r.body), (200, b""), r)

    def test_generic_errors(self):
        c = self.controller()
        d = c.direct()
        self.assertProblem(d.get("/v1/nothing"), 404, "not-found", instance="/v1/nothing")
        self.assertProblem(d.get("/v1/hosts/"), 404, "not-found")
        self.assertProblem(d.get("/v1/rollouts/r1/events/x"), 404, "not-found")
        for method, path, allow in (("DELETE", "/v1/rollouts", "GET, HEAD, POST"),
                                    ("POST", "/v1/hosts/a", "GET, HEAD, PUT, DELETE"),
                                    ("GET", "/v1/rollouts/r1/pause", "POST"),
                                    ("HEAD", "/v1/rollouts/r1/events", "GET"),
                                    ("PATCH", "/healthz", "GET, HEAD")):
            with self.subTest(method=method, path=path):
                r = d.request(method, path)
                self.assertEqual(r.status, 405, r)
                self.assertEqual(r.header("Allow"), allow, r)
                if method != "HEAD":
                    self.assertProblem(r, 405, "method-not-allowed")
        put = "/v1/hosts/x"
        self.assertProblem(d.request("PUT", put, body=b'{"url": "http://h:1"}',
                                     headers={"Content-Type": "text/plain"}),
                           415, "unsupported-media-type")
        self.assertProblem(d.request("PUT", put, body=b'{"url": "http://h:1"}'),
                           415, "unsupported-media-type")
        for body in (b"{", b'{"url": "http://h:1", "url": "http://h:2"}', b"[1]", b"12",
                     b'{"url": "x"} trailing'):
            with self.subTest(body=body):
                self.assertProblem(d.request("PUT", put, body=body,
                                             headers={"Content-Type": "application/json"}),
                                   400, "invalid-json")
        self.assertProblem(d.request("PUT", put, headers={"Content-Type": "application/json"}),
                           400, "invalid-json")
        # Content-Length past the cap: refused before the body is read (the connection closes).
        r = harness.raw_http("127.0.0.1", c.port,
                             b"PUT /v1/hosts/x HTTP/1.1\r\nHost: x\r\nContent-Type: "
                             b"application/json\r\nContent-Length: 1048577\r\n\r\n{")
        self.assertProblem(r, 413, "payload-too-large")
        self.assertEqual(r.header("Connection"), "close")
        big = b'{"url": "' + b"x" * (1024 * 1024) + b'"}'
        r = d.request("POST", "/v1/rollouts", body=big, chunked=True,
                      headers={"Content-Type": "application/json"})
        self.assertProblem(r, 413, "payload-too-large")
        # A body just under the cap is read (and judged by the core).
        ok = b'{"url": "http://h:1", "labels": {"k": "' + b"y" * (1024 * 1000) + b'"}}'
        r = d.request("PUT", put, body=ok, headers={"Content-Type": "application/json"})
        self.assertNotEqual(r.status, 413, r)
        cl = c.client()
        for q in ("selector=zone", "selector=,", "selector=a=1,a=2", "selector=a=1,",
                  "selector=a=1&selector=b=2"):
            with self.subTest(q=q):
                self.assertProblem(cl.get("/v1/hosts?" + q), 400, "invalid-query",
                                   field="selector")
        self.assertProblem(cl.get("/v1/rollouts/nope"), 404, "not-found")
        self.assertProblem(cl.post("/v1/rollouts/nope/pause"), 404, "not-found")
        self.assertProblem(cl.get("/v1/rollouts/nope/events"), 404, "not-found")
        self.assertProblem(d.get("/v1/rollouts/x/events?after=-1"), 400, "invalid-query",
                           field="after")
        self.assertProblem(d.get("/v1/rollouts/x/events", headers={"Last-Event-ID": "z"}),
                           400, "invalid-query", field="Last-Event-ID")


# ---------------------------------------------------------------------------------------------
# Hosts


class TestHosts(RolloutTestCase):

    def test_inventory_put_get_delete(self):
        labels = {"a": {"zone": "z1", "rack": "r1"}, "b": {"zone": "z1", "rack": "r2"},
                  "c": {"zone": "z2", "rack": "r1"}}
        ctl, agents, names = self.fleet(3, labels=labels)
        cl = ctl.client()
        r = cl.get("/v1/hosts")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.content_type, "application/json")
        hosts = r.json["hosts"]
        self.assertEqual([h["name"] for h in hosts], ["a", "b", "c"])
        for h, a in zip(hosts, agents):
            self.assertEqual(h["url"], a.base_url)
            self.assertEqual(h["source"], "inventory")
            self.assertEqual(h["labels"], labels[h["name"]])
        # The engine watches them: each becomes reachable with its state and kernel.
        harness.wait_for(lambda: all(h["reachable"] and h["state"] == "normal"
                                     for h in cl.get("/v1/hosts").json["hosts"]),
                         timeout=20 * SCALE, interval=0.1, what="hosts reachable")
        r = cl.get("/v1/hosts?selector=zone=z1")
        self.assertEqual([h["name"] for h in r.json["hosts"]], ["a", "b"])
        r = cl.get("/v1/hosts?selector=zone=z1,rack=r2")
        self.assertEqual([h["name"] for h in r.json["hosts"]], ["b"])
        r = cl.get("/v1/hosts?selector=zone=nowhere")
        self.assertEqual(r.json, {"hosts": []})

        body = {"url": "http://127.0.0.1:1", "labels": {"zone": "z3"}}
        r = cl.put("/v1/hosts/d", body)
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.header("Location"), "/v1/hosts/d")
        self.assertEqual((r.json["name"], r.json["url"], r.json["source"], r.json["labels"]),
                         ("d", body["url"], "api", {"zone": "z3"}))
        r = cl.put("/v1/hosts/d", {"url": "http://127.0.0.1:2", "name": "d"})
        self.assertEqual(r.status, 200, r)
        self.assertIsNone(r.header("Location"))
        self.assertEqual(r.json["url"], "http://127.0.0.1:2")
        r = cl.get("/v1/hosts/d")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["url"], "http://127.0.0.1:2")
        self.assertEqual(r.header("Cache-Control"), "no-store")
        r = cl.delete("/v1/hosts/d")
        self.assertEqual((r.status, r.body), (204, b""), r)
        self.assertProblem(cl.get("/v1/hosts/d"), 404, "not-found")
        self.assertProblem(cl.delete("/v1/hosts/d"), 404, "not-found")

        self.assertProblem(cl.put("/v1/hosts/bad%20name", body), 400, "invalid-field",
                           field="name")
        self.assertProblem(cl.put("/v1/hosts/" + "x" * 254, body), 400, "invalid-field",
                           field="name")
        self.assertProblem(cl.get("/v1/hosts/bad%20name"), 404, "not-found")
        self.assertProblem(cl.put("/v1/hosts/e", {"url": "ftp://x"}), 400, "invalid-field",
                           field="url")
        self.assertProblem(cl.put("/v1/hosts/e", {"url": "http://x:1", "colour": "red"}),
                           400, "invalid-field", field="colour")
        self.assertProblem(cl.put("/v1/hosts/e", {"url": "http://127.0.0.1:1", "name": "f"}),
                           400, "invalid-field", field="name")
        self.assertProblem(cl.put("/v1/hosts/e", {"url": "http://127.0.0.1:1",
                                                  "labels": {"k": 1}}),
                           400, "invalid-field", field="labels")
        # Persisted: a restart on the same store still has the API's host.
        cl.put("/v1/hosts/g", {"url": "http://127.0.0.1:3"})
        ctl.stop()
        ctl.start()
        r = ctl.client().get("/v1/hosts/g")
        self.assertEqual(r.status, 200, "a host PUT through the API must survive a restart: %r"
                         % r)
        self.assertEqual(r.json["source"], "api", r)
        self.assertProblem(ctl.client().get("/v1/hosts/d"), 404, "not-found")

    def test_a_host_down_at_start_is_seen_when_it_comes_back(self):
        # An idle host (no rollout) the controller could not reach at start is retried with
        # the backoff (--retry-max), not only at the 5-minute idle refresh.
        a = self.agent(port=harness.free_port(), name="late", start=False)
        inv = write_inventory(os.path.join(self.tmp, "inventory.json"), [("late", a)])
        ctl = self.controller("--inventory=" + inv, "--retry-min=50ms", "--retry-max=500ms")
        cl = ctl.client()
        harness.wait_for(lambda: cl.get("/v1/hosts/late").json["error"] or None,
                         timeout=20 * SCALE, what="the first, failed contact")
        self.assertFalse(cl.get("/v1/hosts/late").json["reachable"])
        a.start()
        h = harness.wait_for(lambda: (lambda d: d if d["reachable"] else None)(
            cl.get("/v1/hosts/late").json), timeout=15 * SCALE, interval=0.1,
            what="the controller to see the host back")
        self.assertEqual(h["state"], "normal")

    def test_agent_urls_and_the_token(self):
        # The attack: an operator of the controller points a host at a listener of theirs to
        # collect the fleet-wide agent token. http:// is refused off loopback; with
        # --allow-http-agents it is accepted but the token does not go there.
        token = "agent-secret-" + "x" * 32
        tf = os.path.join(self.tmp, "agent.token")
        with open(tf, "w") as f:
            f.write(token + "\n")
        os.chmod(tf, 0o600)
        seen = []

        class FakeAgent(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                seen.append((self.headers.get("Host"), self.headers.get("Authorization")))
                body = json.dumps({"state": "normal", "index": 1, "boot_id": "b" * 8,
                                   "kernel": "6.1", "backend": "sim", "staged": None,
                                   "operation": None}).encode()
                time.sleep(0.05)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeAgent)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        self.addCleanup(srv.server_close)
        self.addCleanup(srv.shutdown)
        port = srv.server_address[1]
        mapped = "http://[::ffff:127.0.0.1]:%d" % port   # loopback traffic, not a loopback literal

        ctl = self.controller("--agent-token-file=" + tf, "--retry-min=50ms", "--poll-wait=1s")
        cl = ctl.client()
        r = cl.put("/v1/hosts/evil", {"url": mapped})
        self.assertProblem(r, 400, "invalid-field", field="url")
        self.assertIn("http:// only to a loopback address", r.json["detail"])
        self.assertProblem(cl.put("/v1/hosts/evil", {"url": "http://127.evil.example:1"}), 400,
                           "invalid-field", field="url")
        self.assertProblem(cl.put("/v1/hosts/evil", {"url": "https://ops:pw@agent.example"}),
                           400, "invalid-field", field="url")
        self.assertProblem(cl.get("/v1/hosts/evil"), 404, "not-found")
        ctl.stop()

        ctl = self.controller("--agent-token-file=" + tf, "--retry-min=50ms", "--poll-wait=1s",
                              "--allow-http-agents")
        cl = ctl.client()
        self.assertEqual(cl.put("/v1/hosts/evil", {"url": mapped}).status, 201)
        self.assertEqual(cl.put("/v1/hosts/lo", {"url": "http://127.0.0.1:%d" % port}).status,
                         201)
        hosts = {"[::ffff:127.0.0.1]:%d" % port: "evil", "127.0.0.1:%d" % port: "lo"}
        harness.wait_for(lambda: {hosts.get(h) for h, _ in seen} >= {"evil", "lo"} or None,
                         timeout=20 * SCALE, what="the controller to watch both hosts")
        auth = {}
        for h, a in list(seen):
            auth.setdefault(hosts.get(h), set()).add(a)
        self.assertEqual(auth["evil"], {None})
        self.assertEqual(auth["lo"], {"Bearer " + token})
        log = ctl.log()
        self.assertIn("Host evil added by anonymous: url " + mapped, log)
        self.assertNotIn(token, log)
        self.assertEqual(cl.delete("/v1/hosts/evil").status, 204)
        ctl.stop()
        self.assertIn("Host evil deleted by anonymous", ctl.log())

        # --agent-allow: only hosts that match (no DNS: a literal matches a literal).
        ctl = self.controller("--agent-allow=127.0.0.1,*.example.net", "--poll-wait=1s")
        cl = ctl.client()
        r = cl.put("/v1/hosts/x", {"url": "http://localhost:%d" % port})
        self.assertProblem(r, 400, "invalid-field", field="url")
        self.assertEqual(r.json["detail"], "url: the host localhost matches no --agent-allow "
                                           "pattern")
        self.assertEqual(cl.put("/v1/hosts/y", {"url": "https://hv1.example.net:7470"}).status,
                         201)
        self.assertEqual(cl.put("/v1/hosts/z", {"url": "http://127.0.0.1:%d" % port}).status,
                         201)
        rc, _, err = run_rollout(["--agent-allow=a b", "--db=" + os.path.join(self.tmp, "x")])
        self.assertEqual(rc, 2, err)
        self.assertIn("--agent-allow", err if isinstance(err, str) else err.decode())


# ---------------------------------------------------------------------------------------------
# Rollouts


class TestRollouts(RolloutTestCase):

    def test_dry_run_plan_and_validation(self):
        ctl, agents, names = self.fleet(3)
        cl = ctl.client()
        spec = {"target": self.target(), "strategy": {"canary": 1, "batch": 2},
                "dry_run": True}
        r = cl.post("/v1/rollouts", spec)
        self.assertEqual(r.status, 200, r)
        plan = r.json
        self.assertEqual(plan["hosts"], 3)
        self.assertEqual([w["hosts"] for w in plan["waves"]], [["a"], ["b", "c"]])
        self.assertEqual([w["canary"] for w in plan["waves"]], [True, False])
        self.assertEqual([w["index"] for w in plan["waves"]], [0, 1])
        self.assertEqual(plan["skipped"], [])
        self.assertEqual(plan["already_current"], [])
        self.assertGreater(plan["expected_duration_s"], 0)
        # Nothing stored.
        self.assertEqual(cl.get("/v1/rollouts").json, {"rollouts": []})
        # Percentages and the selector.
        r = cl.post("/v1/rollouts", dict(spec, strategy={"canary": "34%", "batch": "100%"}))
        self.assertEqual([w["hosts"] for w in r.json["waves"]], [["a", "b"], ["c"]], r)

        t = self.target()
        bad = [
            ({}, "missing-field", "target"),
            ({"target": {}}, "missing-field", "target.kernel"),
            ({"target": t, "strategy": {"batch": "abc"}}, "invalid-field", "strategy.batch"),
            ({"target": t, "strategy": {"mode": "sideways"}}, "invalid-field", "strategy.mode"),
            ({"target": t, "id": "bad id"}, "invalid-field", "id"),
            ({"target": t, "lease_seconds": -1}, "invalid-field", "lease_seconds"),
        ]
        for body, code, field in bad:
            with self.subTest(body=body):
                self.assertProblem(cl.post("/v1/rollouts", body), 400, code, field=field)
        self.assertProblem(cl.post("/v1/rollouts", {"target": t, "selector": {"zone": "none"}}),
                           422, "no-hosts")

    def test_rerun_leaves_current_hosts_alone(self):
        ctl, agents, names = self.fleet(3)
        cl = ctl.client()
        target = self.target("6.99.2-luo-test")
        strategy = {"canary": 0, "batch": 3, "max_unavailable": 3}
        # r1 updates a and b only.
        r = cl.post("/v1/rollouts", {"id": "r1", "target": target, "hosts": ["a", "b"],
                                     "strategy": strategy})
        self.assertEqual(r.status, 201, r)
        self.assertEqual(self.wait_rollout(cl, "r1")["status"], "completed")
        boots = {n: a.direct().state()["boot_id"] for n, a in zip(names, agents)}
        # Until the controller has seen a and b back at rest on the release, they are not
        # known to be current; its watch of them says so in a moment.
        harness.wait_for(lambda: all(
            h["state"] == "normal" and h["kernel"] == target["release"]
            for h in cl.get("/v1/hosts").json["hosts"] if h["name"] in ("a", "b")) or None,
            what="the controller to see a and b on " + target["release"])
        # The plan over all three names a and b as current; c is the only one to update.
        spec = {"target": target, "strategy": strategy}
        r = cl.post("/v1/rollouts", dict(spec, dry_run=True))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["already_current"],
                         [{"host": "a", "kernel": target["release"]},
                          {"host": "b", "kernel": target["release"]}])
        self.assertEqual(r.json["hosts"], 3)
        # force must be a boolean.
        self.assertProblem(cl.post("/v1/rollouts", dict(spec, force="yes")), 400,
                           "invalid-field", field="force")
        r = cl.post("/v1/rollouts", dict(spec, id="r2"))
        self.assertEqual(r.status, 201, r)
        self.assertNotIn("force", r.json["spec"])
        ro = self.wait_rollout(cl, "r2")
        self.assertEqual(ro["status"], "completed", json.dumps(ro, indent=1))
        self.assertEqual(ro["counters"], {"total": 3, "pending": 0, "in_progress": 0,
                                          "unavailable": 0, "done": 1, "failed": 0,
                                          "cancelled": 0, "skipped": 0, "already_current": 2})
        by_name = {h["name"]: h for h in ro["hosts"]}
        for n in ("a", "b"):
            h = by_name[n]
            self.assertEqual((h["phase"], h["kernel"], h["attempts"], h["boot_id_after"],
                              h["started_at"], h["error"]),
                             ("already-current", target["release"], 0, None, None, None), h)
        self.assertEqual(by_name["c"]["phase"], "done", by_name["c"])
        # a and b were not touched: same boot, no operation of r2 in their journals.
        for n, a in zip(names, agents):
            st = a.direct().state()
            self.assertEqual(st["kernel"], target["release"], n)
            if n != "c":
                self.assertEqual(st["boot_id"], boots[n], n)
                self.assertEqual([x for x in a.direct().all_records()
                                  if ":r2:" in json.dumps(x) or '"r2:' in json.dumps(x)], [], n)
        # Everything current: r3 completes with nothing done...
        r = cl.post("/v1/rollouts", dict(spec, id="r3"))
        self.assertEqual(r.status, 201, r)
        ro = self.wait_rollout(cl, "r3")
        self.assertEqual((ro["status"], ro["counters"]["already_current"], ro["counters"]["done"]),
                         ("completed", 3, 0), ro)
        # ...and force updates a host again.
        r = cl.post("/v1/rollouts", dict(spec, id="r4", hosts=["a"], force=True))
        self.assertEqual(r.status, 201, r)
        self.assertIs(r.json["spec"]["force"], True)
        self.assertEqual(r.json["plan"]["already_current"], [])
        ro = self.wait_rollout(cl, "r4")
        self.assertEqual((ro["status"], ro["hosts"][0]["phase"]), ("completed", "done"), ro)
        self.assertNotEqual(agents[0].direct().state()["boot_id"], boots["a"])

    def test_retry_only_the_failed_hosts(self):
        # b may stage only from a folder the target is not in: its staging fails (422).
        elsewhere = os.path.join(self.tmp, "elsewhere")
        os.mkdir(elsewhere)
        agents = [self.agent(port=0, name="agent-a"),
                  self.agent("--staging-dir=" + elsewhere, port=0, name="agent-b"),
                  self.agent(port=0, name="agent-c")]
        names = ["a", "b", "c"]
        inv = write_inventory(os.path.join(self.tmp, "inventory.json"), list(zip(names, agents)))
        ctl = self.controller("--inventory=" + inv, "--retry-min=50ms", "--retry-max=500ms",
                              "--poll-wait=2s")
        cl = ctl.client()
        target = self.target("6.99.3-luo-test")
        spec = {"id": "r1", "target": target,
                "strategy": {"canary": 0, "batch": 3, "max_unavailable": 3, "max_failures": 1}}
        self.assertEqual(cl.post("/v1/rollouts", spec).status, 201)
        ro = self.wait_rollout(cl, "r1")
        self.assertEqual(ro["status"], "completed", json.dumps(ro, indent=1))
        by_name = {h["name"]: h for h in ro["hosts"]}
        self.assertEqual([by_name[n]["phase"] for n in names], ["done", "failed", "done"])
        # The failed host says what it runs now and that the target is not staged there.
        old = agents[1].direct().state()["kernel"]
        self.assertEqual(by_name["b"]["now"], {"reachable": True, "state": "normal",
                                               "kernel": old, "target_staged": False})
        self.assertEqual(by_name["a"]["now"]["kernel"], target["release"])
        # Unknown rollout, and a retry of a rollout that left nothing to retry.
        t = {"target": target}
        self.assertProblem(cl.post("/v1/rollouts", dict(t, only_failed_of="r9")), 422,
                           "unknown-rollout", field="only_failed_of")
        self.assertProblem(cl.post("/v1/rollouts", dict(t, only_failed_of="bad id")), 400,
                           "invalid-field", field="only_failed_of")
        self.assertProblem(cl.post("/v1/rollouts", dict(t, only_failed_of="r1", hosts=["a"])),
                           422, "no-hosts", field="only_failed_of")
        # b fixed (its staging folder allows the target again): the retry takes b only.
        agents[1].stop()
        agents[1].restart(args=[])
        r = cl.post("/v1/rollouts", dict(t, id="r2", only_failed_of="r1", dry_run=True))
        self.assertEqual(r.status, 200, r)
        self.assertEqual([w["hosts"] for w in r.json["waves"]], [["b"]])
        r = cl.post("/v1/rollouts", dict(t, id="r2", only_failed_of="r1"))
        self.assertEqual(r.status, 201, r)
        self.assertEqual((r.json["spec"]["hosts"], r.json["spec"]["only_failed_of"]),
                         (["b"], "r1"))
        ro = self.wait_rollout(cl, "r2")
        self.assertEqual((ro["status"], [h["name"] for h in ro["hosts"]],
                          ro["hosts"][0]["phase"]), ("completed", ["b"], "done"), ro)
        self.assertEqual(agents[1].direct().state()["kernel"], target["release"])

    def test_rolling_rollout_to_completion_and_events(self):
        ctl, agents, names = self.fleet(3)
        cl = ctl.client()
        target = self.target("6.99.1-luo-test")
        spec = {"id": "r1", "target": target,
                "strategy": {"canary": 1, "batch": 2, "max_unavailable": 2}}
        r = cl.post("/v1/rollouts", spec)
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.header("Location"), "/v1/rollouts/r1")
        self.assertEqual(r.json["id"], "r1")
        self.assertIn(r.json["status"], ("pending", "running"))
        self.assertEqual([w["hosts"] for w in r.json["plan"]["waves"]], [["a"], ["b", "c"]])
        # The same id and spec again: the existing rollout, 200; another spec: 409.
        r = cl.post("/v1/rollouts", spec)
        self.assertEqual((r.status, r.json["id"]), (200, "r1"), r)
        self.assertProblem(cl.post("/v1/rollouts", dict(spec, strategy={"canary": 2})),
                           409, "rollout-exists")
        # A host an unfinished rollout drives cannot go.
        ro = cl.get("/v1/rollouts/r1").json
        if ro["status"] not in ("completed", "failed", "aborted"):
            self.assertProblem(cl.delete("/v1/hosts/a"), 409, "host-in-rollout")

        ro = self.wait_rollout(cl, "r1")
        self.assertEqual(ro["status"], "completed", json.dumps(ro, indent=1))
        self.assertIsNone(ro["reason"])
        self.assertIsNotNone(ro["finished_at"])
        self.assertEqual(ro["counters"], {"total": 3, "pending": 0, "in_progress": 0,
                                          "unavailable": 0, "done": 3, "failed": 0,
                                          "cancelled": 0, "skipped": 0, "already_current": 0})
        self.assertEqual(ro["waves"], 2)
        by_name = {h["name"]: h for h in ro["hosts"]}
        self.assertEqual(sorted(by_name), ["a", "b", "c"])
        for name, h in by_name.items():
            self.assertEqual(h["phase"], "done", h)
            self.assertEqual(h["wave"], 0 if name == "a" else 1, h)
            self.assertIsNone(h["error"], h)
            self.assertIsNotNone(h["boot_id_before"], h)
            self.assertIsNotNone(h["boot_id_after"], h)
            self.assertNotEqual(h["boot_id_before"], h["boot_id_after"], h)
            self.assertEqual(h["kernel"], target["release"], h)
        # The canary finished before the second wave started.
        self.assertLessEqual(by_name["a"]["finished_at"],
                             min(by_name["b"]["started_at"], by_name["c"]["started_at"]))
        # Every agent runs the new kernel.
        for a in agents:
            self.assertEqual(a.direct().state()["kernel"], target["release"])
        r = cl.get("/v1/rollouts")
        self.assertEqual(r.status, 200, r)
        self.assertEqual([x["id"] for x in r.json["rollouts"]], ["r1"])
        self.assertNotIn("hosts", r.json["rollouts"][0])
        hosts = cl.get("/v1/hosts").json["hosts"]
        for h in hosts:
            self.assertEqual((h["rollout"], h["phase"], h["kernel"]),
                             ("r1", "done", target["release"]), h)

        # Finished: pause, resume and abort answer 409.
        for action in ("pause", "resume", "abort"):
            with self.subTest(action=action):
                self.assertProblem(cl.post("/v1/rollouts/r1/" + action,
                                           {"reason": "too late"}), 409, "invalid-transition")

        # The event stream of a finished rollout: everything, then the end.
        s = harness.SSEStream(ctl.base_url, "/v1/rollouts/r1/events")
        self.assertEqual(s.status, 200)
        self.assertEqual(s.header("Content-Type"), "text/event-stream")
        self.assertEqual(s.header("Cache-Control"), "no-store")
        first = s.read_block()
        self.assertEqual(first.get("retry"), "2000")
        events = []
        try:
            while True:
                events.append(s.next_event(timeout=10))
        except EOFError:
            pass
        s.close()
        self.assertGreater(len(events), 5)
        for i, e in enumerate(events, 1):
            self.assertEqual(e["id"], str(i), e)
            self.assertEqual(e["json"]["seq"], i, e)
            self.assertEqual(e["event"], e["json"]["type"], e)
            self.assertEqual(e["json"]["rollout"], "r1", e)
            self.assertRegex(e["json"]["time"], harness.RFC3339_MS_RE)
        self.assertEventsInContract(events)
        types = [e["event"] for e in events]
        self.assertEqual(types[0], "rollout-created")
        self.assertIn("wave-started", types)
        self.assertIn("host-phase", types)
        done = [e["json"]["host"] for e in events
                if e["event"] == "host-phase" and e["json"]["phase"] == "done"]
        self.assertEqual(sorted(done), ["a", "b", "c"])
        self.assertEqual(events[-1]["json"].get("status"), "completed", events[-1])

        # Resume with Last-Event-ID (wins over ?after) and with ?after.
        n = len(events)
        for hdr, query, want in (({"Last-Event-ID": "3"}, "?after=1", 4), ({}, "?after=5", 6),
                                 ({"Last-Event-ID": str(n)}, "", None)):
            with self.subTest(hdr=hdr, query=query):
                s = harness.SSEStream(ctl.base_url, "/v1/rollouts/r1/events" + query,
                                      headers=hdr)
                got = []
                try:
                    while True:
                        got.append(s.next_event(timeout=10))
                except EOFError:
                    pass
                s.close()
                if want is None:
                    self.assertEqual(got, [])
                else:
                    self.assertEqual([int(e["id"]) for e in got], list(range(want, n + 1)))

        # Through the contract proxy too (a finished rollout's stream ends, so Prism can
        # buffer it).
        r = cl.get("/v1/rollouts/r1/events")
        self.assertEqual(r.status, 200, r)
        self.assertTrue(r.body.startswith(b"retry: 2000\n\nid: 1\nevent: rollout-created\n"),
                        r.body[:200])

    def test_pause_resume_abort_and_live_stream(self):
        agents = self.sim_agents(1)
        inv = write_inventory(os.path.join(self.tmp, "inventory.json"),
                              [("a", agents[0]), ("dead", "http://127.0.0.1:1")])
        # Retries (each a host-error event) further apart than the keepalive: a keepalive is
        # written after that much silence, which retries every 200 ms would never leave.
        ctl = self.controller("--inventory=" + inv, "--retry-min=1s", "--retry-max=2s",
                              "--poll-wait=2s", "--sse-keepalive=300ms")
        cl = ctl.client()
        # The unreachable host keeps the rollout going (retries) until we steer it.
        r = cl.post("/v1/rollouts", {"id": "r2", "target": self.target(), "hosts": ["dead"],
                                     "strategy": {"canary": 0, "batch": 1}})
        self.assertEqual(r.status, 201, r)
        s = harness.SSEStream(ctl.base_url, "/v1/rollouts/r2/events")
        self.assertEqual(s.status, 200)
        e = s.next_event()
        self.assertEqual((e["id"], e["event"]), ("1", "rollout-created"), e)
        # Keepalive comments while nothing happens (only comments may arrive in between).
        comments, seen = [], [e]
        deadline = time.monotonic() + 10
        while "keepalive" not in comments and time.monotonic() < deadline:
            b = s.read_block(timeout=5)
            comments += b["comments"]
            if "data" in b:  # (host-error events of the retries meanwhile)
                b["json"] = json.loads(b["data"])
                seen.append(b)
        self.assertIn("keepalive", comments)

        r = cl.post("/v1/rollouts/r2/pause", {"reason": "lunch"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["status"], "paused")
        self.assertEqual(r.json["reason"], {"code": "paused-by-user", "detail": "lunch"})
        r = cl.post("/v1/rollouts/r2/pause")
        self.assertEqual((r.status, r.json["status"]), (200, "paused"), r)
        self.assertProblem(cl.delete("/v1/hosts/dead"), 409, "host-in-rollout")
        r = cl.post("/v1/rollouts/r2/resume")
        self.assertEqual(r.status, 200, r)
        self.assertIn(r.json["status"], ("running", "blocked"))
        self.assertProblem(cl.post("/v1/rollouts/r2/resume", {"reason": ""}), 400,
                           "invalid-field", field="reason")
        self.assertProblem(cl.post("/v1/rollouts/r2/abort", {"why": "x"}), 400,
                           "invalid-field", field="why")
        self.assertProblem(ctl.direct().request("POST", "/v1/rollouts/r2/abort", body=b"{",
                                                headers={"Content-Type": "application/json"}),
                           400, "invalid-json")
        r = cl.post("/v1/rollouts/r2/abort", {"reason": "wrong kernel"})
        self.assertEqual((r.status, r.json["id"]), (200, "r2"), r)
        # (The engine finishes the abort: cancels what is prepared, then the status is final.)
        ro = self.wait_rollout(cl, "r2", timeout=20 * SCALE)
        self.assertEqual(ro["status"], "aborted")
        self.assertEqual(ro["reason"], {"code": "aborted-by-user", "detail": "wrong kernel"})
        for action in ("pause", "resume", "abort"):
            self.assertProblem(cl.post("/v1/rollouts/r2/" + action), 409,
                               "invalid-transition")
        # The live stream saw the status changes and ends now.
        statuses = []
        try:
            while True:
                e = s.next_event(timeout=10)
                seen.append(e)
                if e["event"] == "rollout-status":
                    statuses.append(e["json"]["status"])
        except EOFError:
            pass
        s.close()
        self.assertEventsInContract(seen)
        self.assertEqual([int(x["id"]) for x in seen], list(range(1, len(seen) + 1)))
        self.assertIn("paused", statuses)
        self.assertEqual(statuses[-1], "aborted")
        r = cl.get("/metrics")
        self.assertRegex(r.body.decode(), r"\nluofleet_rollout_event_streams_total [1-9]")
        # The host may go now.
        r = cl.delete("/v1/hosts/dead")
        self.assertEqual(r.status, 204, r)

    def test_stop_with_open_stream(self):
        inv = write_inventory(os.path.join(self.tmp, "inventory.json"),
                              [("dead", "http://127.0.0.1:1")])
        # 4 connections per listener: at most 2 event streams.
        ctl = self.controller("--inventory=" + inv, "--retry-min=50ms", "--retry-max=200ms",
                              "--max-connections=4")
        cl = ctl.client()
        r = cl.post("/v1/rollouts", {"id": "r3", "target": self.target()})
        self.assertEqual(r.status, 201, r)
        s = harness.SSEStream(ctl.base_url, "/v1/rollouts/r3/events")
        s.next_event()
        s2 = harness.SSEStream(ctl.base_url, "/v1/rollouts/r3/events?after=1")
        r = cl.get("/v1/rollouts/r3/events")
        self.assertProblem(r, 503, "too-many-streams")
        self.assertEqual(r.header("Retry-After"), "5")
        self.assertRegex(cl.get("/metrics").body.decode(), r"\nluofleet_rollout_event_streams 2\n")
        s2.close()
        # The server notices the hang-up (within a slice) and the slot is free again.
        harness.wait_for(lambda: "luofleet_rollout_event_streams 1\n" in
                         cl.get("/metrics").body.decode(), timeout=5 * SCALE, interval=0.1,
                         what="the closed stream to be noticed")
        t = time.monotonic()
        ctl.stop()  # exit 0 within the stop timeout although a stream is open
        self.assertLess(time.monotonic() - t, 5 * SCALE)
        with self.assertRaises(EOFError):
            while True:
                s.next_event(timeout=5)
        s.close()


# ---------------------------------------------------------------------------------------------
# Authentication


class TestAuth(RolloutTestCase):

    def test_tokens_roles_and_reload(self):
        tokens = os.path.join(self.tmp, "tokens")
        op, op_digest = make_token("op")
        view, view_digest = make_token("view")
        write_tokens(tokens, [("ops", "operator", op_digest), ("dash", "viewer", view_digest)])
        ctl = self.controller("--tokens=" + tokens)
        cl = ctl.client()

        def h(tok):
            return {"Authorization": "Bearer " + tok}
        self.assertEqual(cl.get("/healthz").status, 200)
        r = cl.get("/v1/hosts")
        self.assertProblem(r, 401, "authentication-required")
        self.assertEqual(r.header("WWW-Authenticate"), REALM)
        r = cl.get("/v1/hosts", headers=h("wrong"))
        self.assertProblem(r, 401, "invalid-credentials")
        self.assertEqual(r.header("WWW-Authenticate"), REALM + ', error="invalid_token"')
        # (Prism answers a non-Bearer Authorization itself: directly.)
        r = ctl.direct().get("/metrics", headers={"Authorization": "Basic eDp5"})
        self.assertProblem(r, 401, "invalid-credentials")
        self.assertEqual(cl.get("/v1/hosts", headers=h(view)).status, 200)
        self.assertEqual(cl.get("/metrics", headers=h(view)).status, 200)
        r = cl.put("/v1/hosts/x", {"url": "http://127.0.0.1:1"}, headers=h(view))
        self.assertProblem(r, 403, "forbidden")
        self.assertIn("token:dash has role viewer", r.json["detail"])
        self.assertProblem(cl.post("/v1/rollouts", {}, headers=h(view)), 403, "forbidden")
        # Refused before the body is looked at: 401 rather than 413.
        r = harness.raw_http("127.0.0.1", ctl.port,
                             b"PUT /v1/hosts/x HTTP/1.1\r\nHost: x\r\nContent-Type: "
                             b"application/json\r\nContent-Length: 1048577\r\n\r\n{")
        self.assertProblem(r, 401, "authentication-required")
        r = cl.put("/v1/hosts/x", {"url": "http://127.0.0.1:1"}, headers=h(op))
        self.assertEqual(r.status, 201, r)
        r = cl.delete("/v1/hosts/x", headers=h(op))
        self.assertEqual(r.status, 204, r)
        # SIGHUP rereads the tokens file: the old viewer goes, a new one comes.
        new, new_digest = make_token("new")
        write_tokens(tokens, [("ops", "operator", op_digest), ("new", "viewer", new_digest)])
        ctl.proc.send_signal(signal.SIGHUP)
        harness.wait_for(lambda: cl.get("/v1/hosts", headers=h(new)).status == 200,
                         timeout=5 * SCALE, interval=0.05, what="the new token")
        self.assertProblem(cl.get("/v1/hosts", headers=h(view)), 401, "invalid-credentials")
        # A broken file keeps the running table.
        write_tokens(tokens, [("broken", "emperor", "zz")])
        ctl.proc.send_signal(signal.SIGHUP)
        harness.wait_for(lambda: "tokens not reloaded" in ctl.log(), timeout=5,
                         what="the reload error")
        self.assertEqual(cl.get("/v1/hosts", headers=h(new)).status, 200)

    @unittest.skipUnless(shutil.which("openssl"), "openssl is not installed")
    def test_https_and_non_loopback_with_tls_and_tokens(self):
        cert, key = os.path.join(self.tmp, "c.pem"), os.path.join(self.tmp, "k.pem")
        p = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
                            "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
                            "subjectAltName=IP:127.0.0.1"], capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        os.chmod(key, 0o600)
        tokens = os.path.join(self.tmp, "tokens")
        op, digest = make_token("op")
        write_tokens(tokens, [("ops", "operator", digest)])
        c = self.controller("--tls-cert=" + cert, "--tls-key=" + key, "--tokens=" + tokens,
                            port=0)
        self.assertEqual(c.scheme, "https")
        self.assertIn(b"luofleet-rollout: listening on https://127.0.0.1:%d\n" % c.port,
                      c.stdout())
        ctx = ssl.create_default_context(cafile=cert)

        def get(path, headers=None):
            conn = http.client.HTTPSConnection("127.0.0.1", c.port, context=ctx, timeout=10)
            try:
                conn.request("GET", path, headers=headers or {})
                r = conn.getresponse()
                return harness.Response(r.status, r.reason, r.getheaders(), r.read())
            finally:
                conn.close()
        self.assertEqual(get("/healthz").status, 200)
        self.assertProblem(get("/v1/hosts"), 401, "authentication-required")
        r = get("/v1/hosts", {"Authorization": "Bearer " + op})
        self.assertEqual((r.status, r.json), (200, {"hosts": []}), r)
        c.stop()
        # TLS and tokens: a non-loopback listener needs no --insecure.
        c2 = self.controller("--tls-cert=" + cert, "--tls-key=" + key, "--tokens=" + tokens,
                             "--listen=0.0.0.0:0", port=0, name="any")
        self.assertIn(b"listening on https://0.0.0.0:", c2.stdout())
        self.assertNotIn("--insecure", c2.log())

    def test_bad_tokens_file_is_a_configuration_error(self):
        tokens = os.path.join(self.tmp, "tokens")
        write_tokens(tokens, [("x", "operator", "abc")])
        rc, out, err = run_rollout(["--listen=127.0.0.1:0", "--tokens=" + tokens,
                                    "--db=" + os.path.join(self.tmp, "r.db")])
        self.assertEqual(rc, 2, err)
        self.assertIn("line 2", err)
        os.chmod(tokens, 0o644)
        rc, out, err = run_rollout(["--listen=127.0.0.1:0", "--tokens=" + tokens,
                                    "--db=" + os.path.join(self.tmp, "r.db")])
        self.assertEqual(rc, 2, err)
        # Non-loopback with TLS but without tokens: still refused.
        rc, out, err = run_rollout(["--listen=0.0.0.0:0", "--tokens=" + tokens])
        self.assertEqual(rc, 2, err)
        self.assertIn("refusing to listen", err)


if __name__ == "__main__":
    harness.main()
