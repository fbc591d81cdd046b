"""fleet.py: a fleet of real luofleet-agent processes on 127.0.0.1 and a real luofleet-rollout
controller in front of them, for the fleet suites (tests/fleet/test_*.py) and the 1,000-agent
benchmark (bench/fleet).

Python 3 standard library only.

- FleetAgent: one `luofleet-agent --backend=sim` on its own reserved 127.0.0.1 port and state
  directory, with `--sim-downtime` (the simulated kexec closes every socket, stays offline for
  the downtime and comes back on the same port with a new boot id) and per-agent fault flags
  (`--sim-fault=prepare=EIO`, `--sim-downtime=never`, `--sim-boot-release=...`). The port is
  held by a bound, never-listening socket for the whole run (harness.reserve_port), so nobody
  else takes it while the agent is down. Agents run without privilege separation (one process
  each) and, started as root, as root (--user=root): a thousand of them are a thousand
  processes, not two thousand.
- Fleet: N agents started in parallel, an inventory file with labels (group, zone, rack), a
  kernel image to roll out (a bzImage-like file whose header names the release), and
  assertions read from the agents' own journals: kexecs per host, unavailable intervals
  (reboot requested -> finish done) and their maximum overlap, action order.
- Controller: `luofleet-rollout --listen=127.0.0.1:0 --db=... --inventory=...`, learns its port
  from the stdout line, JSON requests (urllib), kill -9 and restart on the same store.

Environment: LUOFLEET_AGENT, LUOFLEET_ROLLOUT, LUOFLEET_CTL (binaries; default build/bin/...),
LUOFLEET_TEST_TMP, LUOFLEET_TEST_KEEP=1, LUOFLEET_TEST_TIMEOUT_SCALE (as tests/integration).
"""

import json
import os
import re
import ssl  # noqa: F401  (contexts for HTTPS agents)
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO_ROOT, "tests", "integration"))

import harness  # noqa: E402  (reserve_port, make_bzimage, sha256_file)

SCALE = harness.SCALE
CTL_LISTEN_RE = re.compile(rb"luofleet-rollout: listening on http://127\.0\.0\.1:(\d+)\n")
TARGET_RELEASE = "6.19.0-lf2"
TARGET_VERSION = TARGET_RELEASE + " (fleet@luofleet) #1 SMP PREEMPT_DYNAMIC"
TERMINAL = ("completed", "failed", "aborted")


def binary(env, name):
    p = os.environ.get(env)
    return p if p else os.path.join(REPO_ROOT, "build", "bin", name)


def workdir(name):
    base = os.environ.get("LUOFLEET_TEST_TMP") or None
    if base:
        os.makedirs(base, exist_ok=True)
    d = tempfile.mkdtemp(prefix="fleet-%s-" % name, dir=base)
    os.chmod(d, 0o711)
    return d


def is_root():
    return os.geteuid() == 0


def parse_time(s):
    """RFC 3339 with milliseconds and Z -> seconds since the epoch (float)."""
    t = time.strptime(s[:19], "%Y-%m-%dT%H:%M:%S")
    frac = float(s[19:-1]) if len(s) > 20 else 0.0
    import calendar
    return calendar.timegm(t) + frac


class FleetAgent:
    def __init__(self, fleet, index, name, labels, flags):
        self.fleet = fleet
        self.index = index
        self.name = name
        self.labels = labels
        self.flags = list(flags)
        self.state_dir = os.path.join(fleet.dir, "agents", name)
        self.sock, self.port = harness.reserve_port()
        self.proc = None
        self.returncodes = []
        self.log_path = os.path.join(fleet.dir, "agents", name + ".log")

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % (self.fleet.scheme, self.port)

    def command(self):
        cmd = [self.fleet.agent_bin, "--backend=sim", "--state-dir=%s" % self.state_dir,
               "--listen=127.0.0.1:%d" % self.port, "--privsep=no",
               "--staging-dir=%s" % self.fleet.kernel_dir,
               "--sim-release=6.1.0-lf1"]
        if is_root():
            cmd.append("--user=root")
        if not any(f.startswith("--sim-downtime") for f in self.flags):
            cmd.append("--sim-downtime=%s" % self.fleet.downtime)
        return cmd + self.fleet.agent_args + self.flags

    def spawn(self):
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, close_fds=True)
        finally:
            log.close()

    def wait_ready(self, deadline):
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("agent %s exited with %s at start:\n%s"
                                     % (self.name, self.proc.returncode, self.log()))
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2,
                                            context=self.fleet.ssl_context) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        raise AssertionError("agent %s did not come up:\n%s" % (self.name, self.log()))

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10 * SCALE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.returncodes.append(self.proc.returncode)
        self.proc = None

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-4000:]
        except FileNotFoundError:
            return ""

    # -- what the agent itself recorded

    def sim_kernel(self):
        with open(os.path.join(self.state_dir, "sim", "kernel.json")) as f:
            return json.load(f)

    def applied(self, kind):
        return self.sim_kernel().get("applied", {}).get(kind, 0)

    def journal(self):
        out = []
        try:
            with open(os.path.join(self.state_dir, "journal"), "rb") as f:
                for line in f:
                    if line.endswith(b"\n"):
                        out.append(json.loads(line))
        except FileNotFoundError:
            pass
        return out

    def operations(self, action=None, status=None):
        """The operations of the journal (their last record each), in order."""
        ops = {}
        order = []
        for r in self.journal():
            if r.get("kind") != "operation":
                continue
            op = r["operation"]
            if op["id"] not in ops:
                order.append(op["id"])
            ops[op["id"]] = op
        out = [ops[i] for i in order]
        if action:
            out = [o for o in out if o["action"] == action]
        if status:
            out = [o for o in out if o["status"] == status]
        return out

    def transitions(self):
        return [r for r in self.journal() if r.get("kind") == "transition"]

    def unavailable_interval(self):
        """(reboot requested, finish done) in epoch seconds, or None without a reboot. A host
        that never finished counts as unavailable to the end of time."""
        reboots = self.operations("reboot")
        if not reboots:
            return None
        start = parse_time(reboots[0]["requested_at"])
        end = float("inf")
        for t in self.transitions():
            if t.get("from") == "updated" and t.get("to") == "normal":
                end = parse_time(t["time"])
        return (start, end)

    def state(self, timeout=5):
        req = urllib.request.Request(self.url + "/v1/state", headers=self.fleet.auth_headers)
        with urllib.request.urlopen(req, timeout=timeout, context=self.fleet.ssl_context) as r:
            return json.loads(r.read())


def max_overlap(intervals):
    """The largest number of intervals open at one instant."""
    points = []
    for s, e in intervals:
        points.append((s, 1))
        points.append((e, -1))
    points.sort(key=lambda p: (p[0], p[1]))  # ends before starts at the same instant
    cur = best = 0
    for _, d in points:
        cur += d
        best = max(best, cur)
    return best


class Fleet:
    """N agents. faults: {agent index: [extra flags]}. labels(i) -> dict."""

    def __init__(self, name, n, downtime="1s", faults=None, labels=None, keep=None,
                 secure=False, mtls=False):
        self.name = name
        self.dir = workdir(name)
        self.scheme = "http"
        self.agent_args = []
        self.ssl_context = None
        self.auth_headers = {}
        self.agent_bin = binary("LUOFLEET_AGENT", "luofleet-agent")
        self.downtime = downtime
        self.kernel_dir = os.path.join(self.dir, "kernels")
        os.makedirs(self.kernel_dir)
        os.chmod(self.kernel_dir, 0o755)
        self.kernel_path, self.kernel_sha = harness.make_bzimage(self.kernel_dir, "vmlinuz-lf2",
                                                                 TARGET_VERSION)
        os.chmod(self.kernel_path, 0o644)
        faults = faults or {}
        labels = labels or (lambda i: {"group": "hv", "zone": "z%d" % (i % 3),
                                       "rack": "r%d" % (i // 4)})
        self.agents = [FleetAgent(self, i, "h%03d" % i, labels(i), faults.get(i, ()))
                       for i in range(n)]
        self.keep = os.environ.get("LUOFLEET_TEST_KEEP") == "1" if keep is None else keep
        self.controllers = []
        if secure or mtls:
            self.secure(mtls)

    def __getitem__(self, i):
        return self.agents[i]

    def secure(self, mtls=False):
        """Agents on HTTPS (a throwaway CA) with bearer tokens: pki/ca.pem, pki/token (an
        operator token the controller may use), pki/viewer-token; with mtls, the agents also
        verify client certificates from that CA (pki/client.pem and .key, CN rollout-ctl)."""
        import ssl
        d = os.path.join(self.dir, "pki")
        os.makedirs(d)

        def openssl(*args):
            p = subprocess.run(["openssl"] + list(args), cwd=d, capture_output=True, timeout=60)
            if p.returncode != 0:
                raise AssertionError("openssl %s: %s" % (args, p.stderr.decode()))
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=fleet-ca")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", "agent.key", "-out", "agent.csr", "-subj", "/CN=localhost")
        with open(os.path.join(d, "agent.ext"), "w") as f:
            f.write("extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
        openssl("x509", "-req", "-in", "agent.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", "agent.pem", "-days", "2", "-extfile", "agent.ext")
        os.chmod(os.path.join(d, "agent.key"), 0o600)
        if mtls:
            openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=rollout-ctl")
            with open(os.path.join(d, "client.ext"), "w") as f:
                f.write("extendedKeyUsage=clientAuth\n")
            openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                    "-CAcreateserial", "-out", "client.pem", "-days", "2", "-extfile",
                    "client.ext")
            os.chmod(os.path.join(d, "client.key"), 0o600)
        lines = []
        for name, role, out in (("rollout", "operator", "token"),
                                ("dashboard", "viewer", "viewer-token")):
            p = subprocess.run([self.agent_bin, "token", name, role], capture_output=True,
                               text=True, timeout=30)
            if p.returncode != 0:
                raise AssertionError("luofleet-agent token: %s" % p.stderr)
            with open(os.path.join(d, out), "w") as f:
                f.write(p.stdout.strip() + "\n")
            os.chmod(os.path.join(d, out), 0o600)
            lines.append(p.stderr.strip().splitlines()[-1])
        with open(os.path.join(d, "tokens"), "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(os.path.join(d, "tokens"), 0o600)
        self.pki = d
        self.scheme = "https"
        self.agent_args = ["--tls-cert=%s/agent.pem" % d, "--tls-key=%s/agent.key" % d,
                           "--tokens=%s/tokens" % d]
        if mtls:
            self.agent_args.append("--tls-client-ca=%s/ca.pem" % d)
        self.ssl_context = ssl.create_default_context(cafile=os.path.join(d, "ca.pem"))
        if mtls:
            self.ssl_context.load_cert_chain(os.path.join(d, "client.pem"),
                                             os.path.join(d, "client.key"))
        with open(os.path.join(d, "viewer-token")) as f:
            self.auth_headers = {"Authorization": "Bearer " + f.read().strip()}

    def start(self, batch=64):
        deadline = time.monotonic() + (20 + len(self.agents) * 0.05) * SCALE
        for k in range(0, len(self.agents), batch):
            group = self.agents[k:k + batch]
            for a in group:
                a.spawn()
            for a in group:
                a.wait_ready(deadline)
        return self

    def inventory(self, path=None, agents=None):
        path = path or os.path.join(self.dir, "inventory.json")
        hosts = [{"name": a.name, "url": a.url, "labels": a.labels}
                 for a in (agents if agents is not None else self.agents)]
        with open(path, "w") as f:
            json.dump({"hosts": hosts}, f, indent=1)
        return path

    def target(self):
        return {"kernel": {"path": self.kernel_path, "sha256": self.kernel_sha},
                "cmdline": "console=ttyS0 liveupdate=on", "release": TARGET_RELEASE}

    def controller(self, args=(), env=None, name="ctl", fast=True):
        c = Controller(self, args=args, env=env, name=name, fast=fast)
        self.controllers.append(c)
        return c

    def stop(self):
        for c in self.controllers:
            c.stop(check=False)
        for a in self.agents:
            a.stop()
        for a in self.agents:
            a.sock.close()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- assertions over the agents' own records

    def kexecs(self):
        return {a.name: a.applied("kexec") for a in self.agents}

    def unavailable_overlap(self, agents=None):
        iv = [a.unavailable_interval() for a in (agents or self.agents)]
        return max_overlap([i for i in iv if i is not None])

    def states(self):
        return {a.name: a.state()["state"] for a in self.agents if a.running()}


class ControllerError(AssertionError):
    pass


class Controller:
    def __init__(self, fleet, args=(), env=None, name="ctl", fast=True):
        self.fleet = fleet
        self.fast = fast  # shorter long-polls and retries than the defaults (tests)
        self.name = name
        self.bin = binary("LUOFLEET_ROLLOUT", "luofleet-rollout")
        self.db = os.path.join(fleet.dir, name + ".db")
        self.args = list(args)
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.log_path = os.path.join(fleet.dir, name + ".log")
        self.out_path = os.path.join(fleet.dir, name + ".out")
        self.proc = None
        self.port = None
        self.returncodes = []

    def command(self):
        cmd = [self.bin, "--listen=127.0.0.1:0", "--db=%s" % self.db]
        if self.fast:
            cmd += ["--poll-wait=10s", "--retry-min=200ms", "--retry-max=1s"]
        if not any(a.startswith("--inventory") for a in self.args):
            cmd.append("--inventory=%s" % self.fleet.inventory())
        return cmd + self.args

    def start(self, env=None):
        if env is not None:
            self.env.update(env)
        out = open(self.out_path, "wb")
        err = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=err, env=self.env, close_fds=True)
        finally:
            out.close()
            err.close()
        deadline = time.monotonic() + 15 * SCALE
        while time.monotonic() < deadline:
            with open(self.out_path, "rb") as f:
                m = CTL_LISTEN_RE.search(f.read())
            if m:
                self.port = int(m.group(1))
                return self
            if self.proc.poll() is not None:
                raise ControllerError("controller exited with %s:\n%s"
                                      % (self.proc.returncode, self.log()))
            time.sleep(0.05)
        raise ControllerError("controller did not listen:\n" + self.log())

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-6000:]
        except FileNotFoundError:
            return ""

    def kill9(self):
        self.proc.kill()
        self.proc.wait()
        self.returncodes.append(self.proc.returncode)
        self.proc = None

    def stop(self, check=True):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15 * SCALE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.returncodes.append(rc)
        self.proc = None
        if check and rc != 0:
            raise ControllerError("controller exited with %s:\n%s" % (rc, self.log()))
        return rc

    def request(self, method, path, body=None, timeout=30):
        data = None
        headers = {}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw

    def create(self, spec):
        status, body = self.request("POST", "/v1/rollouts", spec)
        if status not in (200, 201):
            raise ControllerError("create: %s %s" % (status, body))
        return body

    def rollout(self, rid):
        status, body = self.request("GET", "/v1/rollouts/" + rid)
        if status != 200:
            raise ControllerError("get %s: %s %s" % (rid, status, body))
        return body

    def action(self, rid, action, reason=None):
        return self.request("POST", "/v1/rollouts/%s/%s" % (rid, action),
                            {"reason": reason} if reason else {})

    def wait(self, rid, statuses=TERMINAL, timeout=120, cond=None):
        """Poll GET /v1/rollouts/{id} until its status is one of statuses (or cond(doc))."""
        deadline = time.monotonic() + timeout * SCALE
        doc = None
        while time.monotonic() < deadline:
            doc = self.rollout(rid)
            if (cond(doc) if cond else doc["status"] in statuses):
                return doc
            if self.proc is not None and self.proc.poll() is not None:
                raise ControllerError("controller died:\n" + self.log())
            time.sleep(0.1)
        raise ControllerError("rollout %s: still %s after %ss (wanted %s):\n%s\n%s"
                              % (rid, doc and doc["status"], timeout, statuses,
                                 json.dumps(doc, indent=1)[:4000], self.log()))

    def metrics(self):
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            return r.read().decode()


def metric_sum(text, name):
    """Sum of every sample of a metric family in Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total
