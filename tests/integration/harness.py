"""harness.py: run the real luofleet-agent on 127.0.0.1 and talk HTTP to it, through the
Prism validating proxy so that every response is checked against api/openapi.yaml.

Python 3 standard library only (plus Prism, a Node.js program, when contract mode is on).
Used by every tests/integration/test_*.py.

- Agent: starts `luofleet-agent --backend=sim --state-dir=DIR --listen=127.0.0.1:PORT
  [--staging-dir=TEST_TMP] [flags]` (the test's temporary directory is the one staging
  directory unless the flags name their own --staging-dir),
  learns the port from the stdout line `luofleet-agent: listening on http://127.0.0.1:PORT`,
  keeps stdout and stderr in files under the test's temporary directory, stops with SIGTERM
  and insists on exit code 0 (under ASan/UBSan a leak or a sanitizer report makes it
  non-zero), kills with SIGKILL, restarts on the same state directory and port.
- Contract proxy: each suite module starts ONE Prism 5.14.2 (`scripts/contract-proxy UPSTREAM
  LISTEN --validate-request false -v warn`, by setUpModule; see module_fixtures()) in front of
  a fixed upstream port that the module reserves for its whole run (reserve_port()); every
  agent a test starts listens on that port (one at a time; restarts keep it), so
  Agent.client() reaches it through Prism. Client asserts that every proxied response has no
  `sl-violations` header (any severity), with the violations in the failure message, and
  refuses answers Prism made up itself (its own 404/405/400/422: a request that should have
  gone to agent.direct()). tearDownModule prints how many requests went through Prism.
- Client: every HTTP request of the suites goes through Client(base_url).request(); the
  base URL comes from Agent.client(), which passes it through route_base_url(): the proxy
  when the agent listens on the module's upstream port, the agent itself otherwise.
  Requests Prism cannot carry or answers itself (HEAD, unknown paths and methods, malformed,
  duplicate-member or non-JSON bodies, GET /v1/events streams, polling through a simulated
  kexec, timing measurements) use Agent.direct(); raw sockets (SSE, 1000 concurrent
  long-polls, hand-written requests) use Agent.direct_url.
- AgentTestCase: a unittest.TestCase whose agents are stopped (exit code checked, and no
  spurious state transition in their journals) at the end of each test, and whose agents'
  stderr is printed when the test fails.

Environment:
  LUOFLEET_AGENT             the agent binary (CTest sets it); default build/bin/luofleet-agent
  LUOFLEET_CONTRACT          "0": no contract proxy, talk to the agents directly. Otherwise
                             the proxy is used, and a missing Prism (tools/node_modules/.bin/prism;
                             install it with scripts/contract-tools) fails every suite
  LUOFLEET_TEST_TMP          where the per-test temporary directories go (default: $TMPDIR)
  LUOFLEET_TEST_KEEP=1       keep the temporary directories (state dirs, logs) for inspection
  LUOFLEET_TEST_TIMEOUT_SCALE  multiply start/stop/reboot timeouts (e.g. 3 under valgrind)
"""

import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LISTEN_RE = re.compile(rb"luofleet-agent: listening on https?://127\.0\.0\.1:(\d+)\n")
SCALE = float(os.environ.get("LUOFLEET_TEST_TIMEOUT_SCALE", "1") or "1")
START_TIMEOUT = 10.0 * SCALE
STOP_TIMEOUT = 10.0 * SCALE

RFC3339_MS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
STATES = ("normal", "prepared", "frozen", "updated", "undefined")


def agent_path():
    p = os.environ.get("LUOFLEET_AGENT")
    if p:
        return p
    return os.path.join(REPO_ROOT, "build", "bin", "luofleet-agent")


def free_port():
    """A TCP port that was free a moment ago (for tests that need to know it up front)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reserve_port():
    """(socket, port): a port chosen like free_port(), kept reserved by a bound socket that
    never listens. SO_REUSEADDR on both sides lets an agent (which sets it) bind and listen
    on the port while the reservation holds, and keeps everyone else off it in between:
    other processes' plain binds fail, and the kernel never hands it out as an ephemeral
    port (for a --listen=...:0 agent or an outgoing connection)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# The contract proxy (Prism 5.14.2, --errors): every response checked against api/openapi.yaml

PRISM_BIN = os.path.join(REPO_ROOT, "tools", "node_modules", ".bin", "prism")
CONTRACT_PROXY = os.path.join(REPO_ROOT, "scripts", "contract-proxy")
PRISM_START_TIMEOUT = 60.0 * SCALE
PRISM_ERRORS = "https://stoplight.io/prism/errors#"


class ContractViolation(AssertionError):
    """A response that Prism found in violation of api/openapi.yaml (sl-violations header)."""


class ContractError(AssertionError):
    """Contract mode is on but the proxy cannot run (Prism missing, did not start)."""


def contract_wanted():
    """Contract mode: on unless LUOFLEET_CONTRACT=0. Raises ContractError when it is on and
    Prism is not installed."""
    if os.environ.get("LUOFLEET_CONTRACT", "") == "0":
        return False
    if not os.access(PRISM_BIN, os.X_OK):
        raise ContractError(
            "contract mode: Prism is not installed (%s is missing). Install the pinned contract "
            "tools with scripts/contract-tools (CTest does it through the contract/tools "
            "fixture), or set LUOFLEET_CONTRACT=0 to talk to the agents directly, without "
            "checking the responses against api/openapi.yaml" % PRISM_BIN)
    return True


class ContractProxy:
    """One Prism process in front of one upstream port (started by the module fixture)."""

    def __init__(self, workdir, upstream_port, name="prism"):
        self.workdir = workdir
        self.upstream_port = upstream_port
        self.log_path = os.path.join(workdir, name + ".log")
        self.port = None
        self.proc = None
        self.lock = threading.Lock()
        self.proxied = 0      # requests sent through Prism (Client)
        self.violations = 0   # answers with an sl-violations header
        self.deliberate = 0   # of those, provoked on purpose (the harness's self-test)
        self.direct = 0       # requests a Client sent to an agent directly meanwhile
        self.seen = set()     # (method, path without query, status) that went through

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout=PRISM_START_TIMEOUT):
        for attempt in range(3):
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                log.write(("---- harness: %s %d %d --validate-request false -v warn\n"
                           % (CONTRACT_PROXY, self.upstream_port, self.port)).encode())
                log.flush()
                # scripts/contract-proxy execs Prism: this pid is Prism's node process.
                self.proc = subprocess.Popen(
                    [CONTRACT_PROXY, str(self.upstream_port), str(self.port),
                     "--validate-request", "false", "-v", "warn"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    close_fds=True)
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
                    raise ContractError("Prism did not listen on 127.0.0.1:%d within %.0fs; "
                                        "log %s:\n%s" % (self.port, timeout, self.log_path,
                                                         self.log()[-4000:]))
                time.sleep(0.02)
            if "EADDRINUSE" not in self.log() or attempt == 2:
                raise ContractError("Prism exited with code %d before listening; log %s:\n%s"
                                    % (self.proc.returncode, self.log_path,
                                       self.log()[-4000:]))
        raise AssertionError("unreachable")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def count(self, proxied, method=None, path=None, status=None):
        with self.lock:
            if proxied:
                self.proxied += 1
                self.seen.add((method, path.partition("?")[0], status))
            else:
                self.direct += 1


_proxy = None          # the ContractProxy of the running suite module, when contract mode is on
_upstream_port = None  # the port agents listen on so that _proxy reaches them
_upstream_reservation = None


def contract_proxy():
    """The running module's ContractProxy, or None (contract mode off)."""
    return _proxy


def upstream_port():
    """The port this module's agents listen on by default (0: kernel-chosen, no proxy)."""
    return _upstream_port or 0


def route_base_url(base_url):
    """The base URL test traffic for an agent at base_url goes to: the module's Prism when
    the agent listens on the port Prism forwards to, the agent itself otherwise."""
    p = _proxy
    if p is None or not p.running():
        return base_url
    u = urllib.parse.urlsplit(base_url)
    if u.hostname == "127.0.0.1" and u.port == p.upstream_port:
        return p.url
    return base_url


def traversable(path):
    """Run as root, the agent's network process drops to nobody, and the simulated kexec
    re-executes it as nobody, which then opens the state directory by its path: the test's
    directory and the ones above it (mkdtemp makes them 0700; the unit suites create the
    base 0700 too) must let others through, as /var/lib does. Listing stays root's: 0711.
    Everything else (staged kernels, tokens, TLS keys, sockets) is opened as root, before
    the drop or by the privileged helper, and may stay root-only."""
    os.chmod(path, 0o711)
    d = os.path.dirname(path)
    while d and d != "/":
        mode = os.stat(d).st_mode
        if not mode & 0o001:
            os.chmod(d, (mode & 0o7777) | 0o001)
        d = os.path.dirname(d)


def _module_tmp(name):
    base = os.environ.get("LUOFLEET_TEST_TMP") or None
    if base:
        os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(prefix="lf-it-%s-" % name, dir=base)


def module_fixtures(module_file):
    """(setUpModule, tearDownModule) for a suite file: one Prism for the whole module, in
    front of a port reserved for the module's agents. Use as
        setUpModule, tearDownModule = harness.module_fixtures(__file__)"""
    name = os.path.splitext(os.path.basename(module_file))[0]
    state = {}

    def setUpModule():
        global _proxy, _upstream_port, _upstream_reservation
        if not contract_wanted():
            sys.stderr.write("harness: %s: LUOFLEET_CONTRACT=0: responses are NOT checked "
                             "against the contract\n" % name)
            return
        _upstream_reservation, _upstream_port = reserve_port()
        state["tmp"] = _module_tmp(name + "-prism")
        t = time.monotonic()
        try:
            _proxy = ContractProxy(state["tmp"], _upstream_port).start()
        except BaseException:
            _upstream_reservation.close()
            _upstream_reservation = _upstream_port = None
            raise
        state["t"] = time.monotonic() - t

    def tearDownModule():
        global _proxy, _upstream_port, _upstream_reservation
        p = _proxy
        if p is None:
            return
        _proxy = None
        p.stop()
        _upstream_reservation.close()
        _upstream_reservation = _upstream_port = None
        sys.stderr.write("harness: %s: %d requests through the contract proxy (Prism started "
                         "in %.1fs, upstream port %d; %d method/path/status combinations): "
                         "%d contract violations%s; %d more sent directly with Client (raw "
                         "sockets not counted)\n"
                         % (name, p.proxied, state.get("t", 0), p.upstream_port, len(p.seen),
                            p.violations - p.deliberate,
                            " (and %d provoked by the self-test)" % p.deliberate
                            if p.deliberate else "", p.direct))
        # (Prism's log at -v warn holds nothing the violation messages do not.)
        if os.environ.get("LUOFLEET_TEST_KEEP"):
            sys.stderr.write("harness: kept %s (Prism log)\n" % state["tmp"])
        else:
            shutil.rmtree(state["tmp"], ignore_errors=True)

    return setUpModule, tearDownModule


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(65536), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# HTTP


class Headers:
    """Response headers as received, with case-insensitive lookups."""

    def __init__(self, items):
        self.items = list(items)

    def get(self, name, default=None):
        name = name.lower()
        for k, v in self.items:
            if k.lower() == name:
                return v
        return default

    def __getitem__(self, name):
        v = self.get(name)
        if v is None:
            raise KeyError(name)
        return v

    def __contains__(self, name):
        return self.get(name) is not None

    def __repr__(self):
        return repr(self.items)


class Response:
    """One HTTP answer: status, headers (case-insensitive lookups), raw body, parsed JSON.
    Unpacks as (status, headers, body, json)."""

    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.header_list = headers  # [(name, value)] as received
        self.headers = Headers(headers)
        self.body = body
        self.json = None
        self.json_error = None
        ct = self.header("Content-Type") or ""
        if body and ("json" in ct):
            try:
                self.json = json.loads(body.decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                self.json_error = e

    def header(self, name):
        name = name.lower()
        for k, v in self.header_list:
            if k.lower() == name:
                return v
        return None

    def headers_named(self, name):
        name = name.lower()
        return [v for k, v in self.header_list if k.lower() == name]

    @property
    def content_type(self):
        return self.header("Content-Type")

    def __iter__(self):
        # status, headers, body, json = client.get(...)
        return iter((self.status, self.headers, self.body, self.json))

    def __repr__(self):
        b = self.body[:600]
        return "<Response %d %r headers=%r body=%r>" % (self.status, self.reason,
                                                        self.header_list, b)


_MISSING = object()


class Client:
    """HTTP/1.1 to one base URL (http://HOST:PORT). One connection per request."""

    def __init__(self, base_url, timeout=10.0):
        u = urllib.parse.urlsplit(base_url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError("unsupported base URL %r" % base_url)
        self.base_url = base_url
        self.host = u.hostname
        self.port = u.port or 80
        self.prefix = u.path.rstrip("/")
        self.timeout = timeout
        # The module's contract proxy when this client talks to it (checked answers).
        p = _proxy
        self.proxy = p if p is not None and base_url.rstrip("/") == p.url else None

    @property
    def proxied(self):
        return self.proxy is not None

    def connection(self, timeout=None):
        return http.client.HTTPConnection(self.host, self.port,
                                          timeout=self.timeout if timeout is None else timeout)

    def request(self, method, path, body=None, headers=None, json_body=_MISSING, timeout=None,
                chunked=False):
        """Send one request; returns a Response. json_body is serialized as application/json."""
        hdrs = dict(headers or {})
        if json_body is not _MISSING:
            body = json.dumps(json_body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        elif (body is None and method in ("POST", "PUT", "DELETE", "PATCH") and
              not any(k.lower() == "content-type" for k in hdrs)):
            # The agent wants application/json on every mutating TCP request, a body-less one
            # too (against cross-site requests from browsers: docs/security.md).
            hdrs["Content-Type"] = "application/json"
        if isinstance(body, str):
            body = body.encode()
        conn = self.connection(timeout)
        try:
            if chunked:
                data = body or b""
                pieces = [data[i:i + 8192] for i in range(0, len(data), 8192)]
                conn.request(method, self.prefix + path, body=iter(pieces), headers=hdrs,
                             encode_chunked=True)
            else:
                conn.request(method, self.prefix + path, body=body, headers=hdrs)
            r = conn.getresponse()
            data = r.read()
            resp = Response(r.status, r.reason, r.getheaders(), data)
        finally:
            conn.close()
        if self.proxy is not None:
            self.proxy.count(True, method, path, resp.status)
            self.check_contract(method, path, resp)
        elif _proxy is not None:
            _proxy.count(False)
        return resp

    def check_contract(self, method, path, r):
        """A proxied answer must carry no sl-violations header (errors and warnings alike)
        and must come from the agent, not from Prism itself."""
        v = r.header("sl-violations")
        if v is not None:
            with self.proxy.lock:
                self.proxy.violations += 1
            try:
                items = ["%s at %s: %s%s" % (x.get("severity"),
                                             ".".join(str(k) for k in x.get("location", [])),
                                             x.get("message"),
                                             " (%s)" % x["code"] if x.get("code") else "")
                         for x in json.loads(v)]
            except (ValueError, AttributeError, TypeError):
                items = [v]
            raise ContractViolation(
                "contract violation: Prism (api/openapi.yaml) flagged the agent's answer to "
                "%s %s:\n  %s\nanswer as Prism passed it on (a violation replaces the agent's "
                "status and body with Prism's 500): %r" % (method, path, "\n  ".join(items), r))
        t = r.json.get("type") if isinstance(r.json, dict) else None
        if ((isinstance(t, str) and t.startswith(PRISM_ERRORS)) or
                (isinstance(r.json, dict) and isinstance(r.json.get("error"), dict) and
                 r.json["error"].get("code") == "invalid_json")):
            raise AssertionError(
                "Prism answered %s %s itself instead of forwarding it to the agent (send "
                "requests it cannot carry with agent.direct()): %r" % (method, path, r))

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def head(self, path, **kw):
        return self.request("HEAD", path, **kw)

    def post(self, path, json_body=_MISSING, **kw):
        return self.request("POST", path, json_body=json_body, **kw)

    def put(self, path, json_body=_MISSING, **kw):
        return self.request("PUT", path, json_body=json_body, **kw)

    def delete(self, path, json_body=_MISSING, **kw):
        return self.request("DELETE", path, json_body=json_body, **kw)

    # helpers used by every suite

    def state(self):
        r = self.get("/v1/state")
        if r.status != 200 or r.json is None:
            raise AssertionError("GET /v1/state: %r" % r)
        return r.json

    def history(self, query=""):
        r = self.get("/v1/history" + (("?" + query) if query else ""))
        if r.status != 200 or r.json is None:
            raise AssertionError("GET /v1/history?%s: %r" % (query, r))
        return r.json

    def all_records(self):
        """Every journal record still held, oldest first (pages through since/limit)."""
        out, since = [], 0
        while True:
            h = self.history("since=%d&limit=1000" % since)
            out.extend(h["records"])
            if not h["more"]:
                return out
            since = h["records"][-1]["index"]

    def metrics(self):
        r = self.get("/metrics")
        if r.status != 200:
            raise AssertionError("GET /metrics: %r" % r)
        return r.body.decode()

    def metric(self, name):
        """The value of one unlabelled (or exactly labelled) sample, e.g. 'luofleet_index'."""
        for line in self.metrics().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return None


def raw_http(host, port, data, timeout=10.0, method="GET"):
    """Write bytes on a fresh connection, read one HTTP answer. For requests no client sends."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (and close) before reading everything
        r = http.client.HTTPResponse(sock, method=method)
        r.begin()
        body = r.read()
        return Response(r.status, r.reason, r.getheaders(), body)
    finally:
        sock.close()


class SSEStream:
    """A GET /v1/events connection on a raw socket, read block by block. Decodes the chunked
    body itself so that a read timeout leaves the stream usable."""

    def __init__(self, base_url, path="/v1/events", headers=None, timeout=5.0):
        u = urllib.parse.urlsplit(base_url)
        self.sock = socket.create_connection((u.hostname, u.port or 80), timeout=timeout)
        hdrs = {"Host": "%s:%d" % (u.hostname, u.port or 80), "Accept": "text/event-stream"}
        hdrs.update(headers or {})
        req = "GET %s%s HTTP/1.1\r\n" % (u.path.rstrip("/"), path)
        req += "".join("%s: %s\r\n" % kv for kv in hdrs.items()) + "\r\n"
        self.sock.sendall(req.encode())
        self.raw = bytearray()   # received, not yet de-chunked
        self.data = bytearray()  # de-chunked body, not yet consumed
        self.eof = False
        self.body_eof = False
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.raw:
            self._recv(deadline)
            if self.eof:
                raise EOFError("connection closed before the response headers")
        head, _, rest = bytes(self.raw).partition(b"\r\n\r\n")
        self.raw = bytearray(rest)
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = Headers([(k.strip(), v.strip()) for k, _, v in
                                (ln.partition(":") for ln in lines[1:])])
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        self.chunked = "chunked" in te
        self.length = None if self.chunked else int(self.headers.get("Content-Length") or -1)
        self.body = None
        self.json = None
        if not self.chunked and self.length is not None and self.length >= 0:
            while len(self.raw) < self.length and not self.eof:
                self._recv(deadline)
            self.body = bytes(self.raw[:self.length])
            try:
                self.json = json.loads(self.body)
            except ValueError:
                pass

    def header(self, name):
        return self.headers.get(name)

    def _recv(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        self.sock.settimeout(left)
        b = self.sock.recv(65536)
        if not b:
            self.eof = True
        self.raw += b

    def _dechunk(self):
        if not self.chunked:
            self.data += self.raw
            self.raw = bytearray()
            return
        while not self.body_eof:
            i = self.raw.find(b"\r\n")
            if i < 0:
                return
            size = int(bytes(self.raw[:i]).split(b";")[0], 16)
            if size == 0:
                self.body_eof = True
                return
            if len(self.raw) < i + 2 + size + 2:
                return
            self.data += self.raw[i + 2:i + 2 + size]
            del self.raw[:i + 2 + size + 2]

    def _line(self, deadline):
        while True:
            self._dechunk()
            i = self.data.find(b"\n")
            if i >= 0:
                line = bytes(self.data[:i])
                del self.data[:i + 1]
                return line.decode("utf-8").rstrip("\r")
            if self.body_eof or self.eof:
                raise EOFError("event stream ended")
            self._recv(deadline)

    def read_block(self, timeout=5.0):
        """The next block (lines up to a blank line) as a dict: id, event, data, retry,
        comments. Raises socket.timeout (the stream stays usable) or EOFError."""
        deadline = time.monotonic() + timeout
        block = {"comments": []}
        seen = False
        while True:
            line = self._line(deadline)
            if line == "":
                if seen:
                    return block
                continue
            seen = True
            if line.startswith(":"):
                block["comments"].append(line[1:].strip())
                continue
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "data":
                block["data"] = (block["data"] + "\n" + value) if "data" in block else value
            else:
                block[field] = value

    def next_event(self, timeout=5.0):
        """The next block with an event (skips comments and retry-only blocks)."""
        deadline = time.monotonic() + timeout
        while True:
            b = self.read_block(max(deadline - time.monotonic(), 0.001))
            if "event" in b or "data" in b:
                if "data" in b:
                    b["json"] = json.loads(b["data"])
                return b

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# The agent process


def make_bzimage(directory, name, version):
    """A kernel-image-like file (8 KiB) whose x86 setup header names version: "HdrS" at
    0x202, kernel_version at 0x20E pointing to the string (+ 0x200). Returns (path, sha256)."""
    img = bytearray(os.urandom(16) * 512)
    img[0x202:0x206] = b"HdrS"
    img[0x20E:0x210] = struct.pack("<H", 0x300)
    s = version.encode() + b"\0"
    img[0x500:0x500 + len(s)] = s
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(img)
    return path, sha256_file(path)


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket (--listen=unix:PATH); Prism proxies TCP only."""

    def __init__(self, path, timeout=10.0):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


def unix_request(path, method, url, body=None, headers=None):
    """One request on the Unix socket at path: (status, {lower-case header: value}, body)."""
    c = UnixHTTPConnection(path)
    try:
        c.request(method, url, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        c.close()


class AgentError(AssertionError):
    pass


class Agent:
    """One luofleet-agent process (and its restarts) on one state directory."""

    def __init__(self, workdir, state_dir=None, args=(), port=0, backend="sim", name="agent",
                 binary=None, default_user=False):
        self.workdir = workdir
        # True: no --user=nobody added (the agent chooses its run user itself)
        self.default_user = default_user
        self.name = name
        self.state_dir = state_dir or os.path.join(workdir, name + "-state")
        self.args = list(args)
        self.backend = backend
        self.port = port
        self.binary = binary or agent_path()
        self.stdout_path = os.path.join(workdir, name + ".stdout")
        self.stderr_path = os.path.join(workdir, name + ".stderr")
        self.proc = None
        self.returncodes = []  # of every process of this agent that ended
        self.starts = 0

    # -- paths and URLs

    @property
    def base_url(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def direct_url(self):
        return self.base_url

    def client(self, timeout=10.0):
        return Client(route_base_url(self.base_url), timeout=timeout)

    def direct(self, timeout=10.0):
        """A client that always talks to the agent itself (raw/streaming tests)."""
        return Client(self.base_url, timeout=timeout)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def sim_path(self, *parts):
        return os.path.join(self.state_dir, "sim", *parts)

    def sim_kernel(self):
        with open(self.sim_path("kernel.json")) as f:
            return json.load(f)

    def journal_path(self):
        return os.path.join(self.state_dir, "journal")

    def journal_records(self):
        out = []
        with open(self.journal_path(), "rb") as f:
            for line in f:
                if line.endswith(b"\n"):
                    out.append(json.loads(line))
        return out

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

    # -- life cycle

    def command(self, args=None):
        cmd = [self.binary, "--backend=%s" % self.backend, "--state-dir=%s" % self.state_dir,
               "--listen=127.0.0.1:%d" % self.port]
        args = list(self.args if args is None else args)
        # Kernel images may be staged only from --staging-dir directories (default /boot
        # and STATE_DIR/kernels): the suites stage files from the test's temporary
        # directory, so allow that one unless the test chose its own.
        if not any(a.startswith("--staging-dir") for a in args):
            cmd.append("--staging-dir=%s" % os.path.realpath(self.workdir))
        # As root the agent needs a run user: its own (luofleet, if this machine has one) or
        # one named. The suites name nobody unless a test chooses, so that they behave the
        # same whether or not a luofleet user exists here (scripts/test-packages creates one).
        if os.geteuid() == 0 and not any(a.startswith("--user") or a == "--privsep=no"
                                         for a in args) and not self.default_user:
            cmd.append("--user=nobody")
        # Run as root, the agent drops its network process to --user (default luofleet, else
        # nobody), as in production: listeners, TLS files, tokens and staged kernels are all
        # opened with root's privileges (before the drop, or by the privileged helper).
        return cmd + args

    def start(self, args=None, timeout=START_TIMEOUT):
        """Start the process and wait for its listening line. Returns self."""
        if self.proc and self.proc.poll() is None:
            raise AgentError("%s is already running (pid %d)" % (self.name, self.proc.pid))
        if args is not None:
            self.args = list(args)
        offset = len(self.stdout())
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            err.write(("---- harness: start #%d: %s\n" % (self.starts + 1,
                                                         " ".join(self.command()))).encode())
            err.flush()
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=err, close_fds=True)
        self.starts += 1
        self.port = self.wait_listening(offset, timeout)
        return self

    def wait_listening(self, offset=0, timeout=START_TIMEOUT, want_port=None):
        """Wait for a listening line written after byte offset of stdout; return its port."""
        deadline = time.monotonic() + timeout
        while True:
            m = None
            for m in LISTEN_RE.finditer(self.stdout(), offset):
                pass
            if m:
                port = int(m.group(1))
                if want_port is None or port == want_port:
                    return port
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.returncodes.append(rc)
                raise AgentError("%s exited with code %d before listening; stderr:\n%s"
                                 % (self.name, rc, self.log()))
            if time.monotonic() > deadline:
                raise AgentError("%s did not print its listening line within %.0fs; stderr:\n%s"
                                 % (self.name, timeout, self.log()))
            time.sleep(0.01)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout=STOP_TIMEOUT):
        """Wait for the process to end by itself; returns its exit code."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AgentError("%s (pid %d) did not exit within %.0fs; stderr:\n%s"
                             % (self.name, self.proc.pid, timeout, self.log()))
        self.returncodes.append(rc)
        return rc

    def stop(self, timeout=STOP_TIMEOUT, check=True):
        """SIGTERM; the process must exit 0 within timeout (a sanitizer report fails it)."""
        if not self.proc or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AgentError("%s (pid %d) did not stop within %.0fs of SIGTERM; stderr:\n%s"
                             % (self.name, self.proc.pid, timeout, self.log()))
        self.returncodes.append(rc)
        if check and rc != 0:
            raise AgentError("%s exited with code %d after SIGTERM (sanitizer report or leak?); "
                             "stderr:\n%s" % (self.name, rc, self.log()))
        return rc

    def kill9(self):
        """SIGKILL, like a crash or an OOM kill; waits for the process to be gone."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.returncodes.append(self.proc.returncode)

    def restart(self, args=None, timeout=START_TIMEOUT):
        """Start again on the same state directory and the same port (given explicitly)."""
        if self.running():
            raise AgentError("restart: %s is still running" % self.name)
        return self.start(args=args, timeout=timeout)

    def wait_ready(self, timeout=START_TIMEOUT, after_index=None):
        """Poll GET /v1/state until the agent answers (after a reboot); returns the document.
        Polls the agent directly: through the blackout of a simulated kexec, the contract
        proxy would only answer 500 FetchError."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                r = self.direct(timeout=2).get("/v1/state")
                if r.status == 200 and (after_index is None or r.json["index"] > after_index):
                    return r.json
                last = r
            except (OSError, http.client.HTTPException) as e:
                last = e
            time.sleep(0.02)
        raise AgentError("%s did not answer GET /v1/state within %.0fs (last: %r); stderr:\n%s"
                         % (self.name, timeout, last, self.log()))


def run_agent(args, timeout=START_TIMEOUT, binary=None, default_user=False):
    """Run the binary to completion (for flag errors and refusals): (rc, stdout, stderr).
    As root, --user=nobody is added unless args choose (see Agent.command) or default_user."""
    args = list(args)
    if (os.geteuid() == 0 and not default_user and args and args[0] != "token" and
            not any(a.startswith("--user") or a == "--privsep=no" for a in args)):
        args.append("--user=nobody")
    p = subprocess.run([binary or agent_path()] + args, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# Invariants checked on every agent

_DIRECTION = {"prepare": ("normal", "prepared"), "cancel": (None, "normal"),
              "finish": ("updated", "normal")}


def spurious_transitions(agent):
    """Transitions an agent recorded that nobody made. On the simulated kernel nobody but the
    agent changes the state while it runs, so any `external` transition is one, and so is a
    transition caused by an operation against that operation's direction (what a stale
    kernel read applied late used to publish; fixed by ordering kernel reads with tickets)."""
    out = []
    for line in agent.log().splitlines():
        if line.startswith("State ") and line.endswith("(external)"):
            out.append("log: " + line)
    try:
        recs = agent.journal_records()
    except (OSError, ValueError):
        recs = []
    actions = {}
    for r in recs:
        if r.get("kind") in ("operation", "reboot") and isinstance(r.get("operation"), dict):
            actions[r["operation"]["id"]] = r["operation"]["action"]
        elif r.get("kind") == "snapshot":
            for e in r.get("operations") or []:
                actions[e["operation"]["id"]] = e["operation"]["action"]
        elif r.get("kind") == "transition" and r.get("cause") == "external":
            out.append("record %d: %s -> %s (external)" % (r["index"], r["from"], r["to"]))
        elif r.get("kind") == "transition" and r.get("cause") == "operation":
            want = _DIRECTION.get(actions.get(r.get("operation_id")))
            if want and (r["to"] != want[1] or (want[0] and r["from"] != want[0])):
                out.append("record %d: %s -> %s during %s %s" % (
                    r["index"], r["from"], r["to"], actions[r["operation_id"]],
                    r["operation_id"]))
    return out


# ---------------------------------------------------------------------------------------------
# unittest glue


class AgentTestCase(unittest.TestCase):
    """Agents started with self.agent() are stopped at the end of the test (exit code 0
    required); their stderr is printed when the test failed."""

    maxDiff = None

    def setUp(self):
        base = os.environ.get("LUOFLEET_TEST_TMP") or None
        if base:
            os.makedirs(base, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix="lf-it-%s-" % self._testMethodName[:40], dir=base)
        if os.geteuid() == 0:
            traversable(self.tmp)
        self._agents = []
        self.addCleanup(self._cleanup_tmp)
        self.addCleanup(self._stop_agents)

    def socket_dir(self, mode=0o711):
        """A short private directory in /tmp for Unix sockets, whatever the checkout's path:
        a socket's path has at most 107 bytes (sun_path), and the test's own directory sits
        under the build tree, which may be deep. 0711 by default: others may reach a socket
        inside (the agent's nobody, a client run as nobody) but not list the directory."""
        d = tempfile.mkdtemp(prefix="lf-sock-", dir="/tmp")
        os.chmod(d, mode)
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def agent(self, *args, start=True, **kw):
        """A new agent (started unless start=False), stopped at the end of the test. Without
        port=..., it listens on the module's contract-proxy upstream port (unless another
        agent of this test is running there: then on a kernel-chosen port, unproxied)."""
        name = kw.pop("name", "agent%d" % (len(self._agents) + 1))
        if "port" not in kw:
            up = upstream_port()
            busy = any(a.running() and a.port == up for a in self._agents)
            kw["port"] = 0 if busy else up
        a = Agent(self.tmp, args=args, name=name, **kw)
        self._agents.append(a)
        if start:
            a.start()
        return a

    def _failed(self):
        """Did this test (or one of its subtests) fail or error so far? (Skips and expected
        failures do not count.)"""
        outcome = getattr(self, "_outcome", None)
        result = getattr(outcome, "result", None)
        for lst in (getattr(result, "errors", []), getattr(result, "failures", [])):
            for test, _ in lst:
                if test is self or getattr(test, "test_case", None) is self:
                    return True
        return False

    def _stop_agents(self):
        errors = []
        for a in self._agents:
            try:
                a.stop()
            except AgentError as e:
                errors.append(str(e))
            if a.starts:
                spurious = spurious_transitions(a)
                if spurious:
                    errors.append("%s recorded transitions nobody made (a stale kernel read "
                                  "published?): %s" % (a.name, "; ".join(spurious[:6])))
        if self._failed():  # (a stop error carries the agent's stderr itself)
            for a in self._agents:
                sys.stderr.write("\n==== %s stderr (%s) ====\n%s\n" % (a.name, a.stderr_path,
                                                                     a.log()[-20000:]))
        if errors:
            raise AgentError("\n".join(errors))

    def _cleanup_tmp(self):
        if os.environ.get("LUOFLEET_TEST_KEEP") or self._failed():
            sys.stderr.write("harness: kept %s\n" % self.tmp)
            return
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- assertions shared by the suites

    def assertProblem(self, r, status, code, **fields):
        """An RFC 9457 problem answer with this status and code (and these members)."""
        self.assertEqual(r.status, status, r)
        self.assertEqual(r.content_type, "application/problem+json", r)
        self.assertIsInstance(r.json, dict, r)
        self.assertEqual(r.json.get("code"), code, r)
        self.assertEqual(r.json.get("status"), status, r)
        self.assertEqual(r.json.get("type"), "urn:luofleet:problem:" + code, r)
        self.assertIsInstance(r.json.get("title"), str, r)
        self.assertIsInstance(r.json.get("detail"), str, r)
        for k, v in fields.items():
            self.assertEqual(r.json.get(k), v, "member %s of %r" % (k, r))
        return r.json

    def assertStateDoc(self, r, status=200):
        """A state document answer: JSON, ETag = "index", every member with its type."""
        self.assertEqual(r.status, status, r)
        self.assertEqual(r.content_type, "application/json", r)
        d = r.json
        self.assertIsInstance(d, dict, r)
        self.assertEqual(set(d), {"state", "index", "changed_at", "boot_id", "kernel", "backend",
                                  "staged", "operation", "hostname", "agent_version", "lease",
                                  "last_update", "interface", "sessions"}, r)
        self.assertIn(d["state"], STATES)
        self.assertIsInstance(d["index"], int)
        self.assertGreaterEqual(d["index"], 1)
        self.assertRegex(d["changed_at"], RFC3339_MS_RE)
        self.assertRegex(d["boot_id"], UUID_RE)
        self.assertIsInstance(d["kernel"], str)
        self.assertEqual(d["backend"], "sim")
        self.assertIsInstance(d["hostname"], str)
        self.assertIsInstance(d["agent_version"], str)
        # The kernel interface found, and the session broker's summary (null: no broker).
        self.assertEqual(d["interface"], "sim (sessions: mainline rules; global state: v3)")
        if d["sessions"] is not None:
            self.assertEqual(set(d["sessions"]), {"sessions", "fds", "bytes", "outgoing",
                                                  "incoming", "retrieved", "finished",
                                                  "workloads"}, r)
            self.assertTrue(all(isinstance(v, int) and v >= 0 for v in d["sessions"].values()))
        self.assertEqual(r.header("ETag"), '"%d"' % d["index"], r)
        if d["operation"] is not None:
            self.assertOperation(d["operation"])
        return d

    def assertOperation(self, op, action=None, status=None, id=None):
        self.assertEqual(set(op), {"id", "action", "status", "error", "requested_at",
                                   "finished_at", "reason", "requested_by"}, op)
        self.assertIn(op["action"], ("prepare", "cancel", "reboot", "finish", "stage",
                                     "unstage", "rollback"))
        self.assertIn(op["status"], ("running", "succeeded", "failed"))
        self.assertRegex(op["requested_at"], RFC3339_MS_RE)
        if op["status"] == "running":
            self.assertIsNone(op["finished_at"], op)
        else:
            self.assertRegex(op["finished_at"], RFC3339_MS_RE)
        if op["status"] == "failed":
            self.assertIsInstance(op["error"], dict, op)
        else:
            self.assertIsNone(op["error"], op)
        if action is not None:
            self.assertEqual(op["action"], action, op)
        if status is not None:
            self.assertEqual(op["status"], status, op)
        if id is not None:
            self.assertEqual(op["id"], id, op)


def make_file(directory, name, size, seed=b"luofleet"):
    """A file of exactly size deterministic bytes; returns (path, sha256 hex)."""
    path = os.path.join(directory, name)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        block = hashlib.sha512(seed + name.encode()).digest() * 1024  # 64 KiB
        left = size
        while left > 0:
            chunk = block[:min(left, len(block))]
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return path, h.hexdigest()


def wait_for(pred, timeout=5.0, interval=0.01, what="condition"):
    """Poll pred() until it returns a true value; returns it, or raises AssertionError.
    The timeout is multiplied by LUOFLEET_TEST_TIMEOUT_SCALE (slow builds)."""
    timeout *= SCALE
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


class Background(threading.Thread):
    """Run fn(*args) in a thread; .result / .error / .done_at (monotonic) afterwards."""

    def __init__(self, fn, *args, **kw):
        super().__init__(daemon=True)
        self.fn, self.args, self.kw = fn, args, kw
        self.result = self.error = self.done_at = None
        self.start()

    def run(self):
        try:
            self.result = self.fn(*self.args, **self.kw)
        except BaseException as e:  # reported by get()
            self.error = e
        self.done_at = time.monotonic()

    def get(self, timeout=15.0):
        self.join(timeout)
        if self.is_alive():
            raise AssertionError("background call still running after %.0fs" % timeout)
        if self.error is not None:
            raise self.error
        return self.result


def main():
    """unittest.main() for a suite file, verbose by default."""
    unittest.main(verbosity=2)
