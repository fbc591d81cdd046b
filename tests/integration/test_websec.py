#!/usr/bin/env python3
"""test_websec.py: the agent's HTTP and socket surface against the attacks of issue 12,
items 3, 6 and 8, each reproduced against a running agent:

- 3: a symlink swapped in for the Unix socket while the agent (root, --unix-group) starts
  never gets a root-only file's mode or group changed; the socket itself gets them.
- 6: browsers. Every mutating request needs Content-Type: application/json, a body-less one
  too (415 unsupported-media-type, audited); an Origin header not given with --allowed-origin
  is refused (403 origin-not-allowed); on a loopback listener a Host that does not name the
  loopback (DNS rebinding) is refused (403 host-not-allowed) unless --allowed-host names it.
- 8: credentials are checked before the body is read: an unauthenticated upload gets its 401
  before the client sent any of the body, and a thousand of them cost no memory.

Refusals go to the agent directly where the request is one Prism would rewrite (Host) or
cannot send (no Content-Type on a POST); the others go through the contract proxy, which
checks the new problem codes against api/openapi.yaml."""

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import AgentTestCase, raw_http  # noqa: E402

setUpModule, tearDownModule = harness.module_fixtures(__file__)

JSON = {"Content-Type": "application/json"}
SCALE = harness.SCALE

MUTATING = (("POST", "/v1/prepare"), ("POST", "/v1/cancel"), ("POST", "/v1/reboot"),
            ("POST", "/v1/rollback"), ("POST", "/v1/finish"), ("POST", "/v1/lease"),
            ("PUT", "/v1/kernel"), ("DELETE", "/v1/kernel"))


def make_token(name, role):
    p = subprocess.run([harness.agent_path(), "token", name, role], capture_output=True,
                       timeout=10)
    if p.returncode != 0:
        raise AssertionError("token command failed: %r" % (p,))
    return p.stdout.decode().strip(), p.stderr.decode().strip()


def write_tokens(path, lines):
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))
    os.chmod(path, 0o600)


def raw(port, head, body=b""):
    """One hand-written request (head without the final blank line): a Response."""
    return raw_http("127.0.0.1", port, head.encode() + b"\r\n\r\n" + body)


def audits(agent, headers=None):
    """The agent's audit records (their own journal), oldest first."""
    r = agent.direct().get("/v1/history?kind=audit&limit=1000", headers=headers)
    if r.status != 200:
        raise AssertionError("GET /v1/history?kind=audit: %r" % r)
    return r.json["records"]


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


# ---------------------------------------------------------------------------------------------
# Item 6: cross-site requests and DNS rebinding


class MediaTypeTest(AgentTestCase):
    """Every mutating request says application/json, with a body or not."""

    def test_bodyless_mutations_need_json(self):
        a = self.agent()
        for method, path in MUTATING:
            for ct in (None, "application/x-www-form-urlencoded", "text/plain",
                       "multipart/form-data; boundary=x"):
                with self.subTest(method=method, path=path, content_type=ct):
                    # What a form without fields, or fetch(..., {mode: "no-cors"}), sends.
                    r = raw(a.port, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0%s"
                            % (method, path, "\r\nContent-Type: " + ct if ct else ""))
                    p = self.assertProblem(r, 415, "unsupported-media-type")
                    self.assertEqual(p["detail"], "a %s request needs Content-Type: "
                                     "application/json, also without a body (not %s)"
                                     % (method, ct or "none"))
        self.assertEqual(a.sim_kernel()["state"], "normal")
        self.assertEqual(a.direct().state()["index"], 1)
        # Each refusal is audited with its action and code.
        recs = audits(a)
        self.assertEqual(len(recs), len(MUTATING) * 4)
        self.assertEqual({(r["action"], r["result"]["status"], r["result"]["code"])
                          for r in recs},
                         {(act, 415, "unsupported-media-type")
                          for act in ("prepare", "cancel", "reboot", "rollback", "finish",
                                      "lease", "stage", "unstage")})
        # Through the contract proxy: the 415 of a body-less request is in the contract.
        r = a.client().post("/v1/prepare", headers={"Content-Type": "text/plain"})
        self.assertProblem(r, 415, "unsupported-media-type")
        # With the media type a body-less action is served as before.
        c = a.client()
        r = c.post("/v1/prepare", headers=JSON)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["state"], "prepared")
        r = c.request("DELETE", "/v1/kernel", headers={"Content-Type": "Application/JSON"})
        self.assertEqual(r.status, 200, r)
        r = raw(a.port, "POST /v1/cancel HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
                "Content-Type: application/json; charset=utf-8")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(a.sim_kernel()["state"], "normal")

    def test_unknown_paths_and_methods_keep_their_answers(self):
        a = self.agent()
        r = raw(a.port, "POST /v1/nope HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0")
        self.assertProblem(r, 404, "not-found")
        r = raw(a.port, "DELETE /v1/state HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0")
        self.assertProblem(r, 405, "method-not-allowed")
        self.assertEqual(r.header("Allow"), "GET, HEAD")
        # A read needs no media type.
        r = raw(a.port, "GET /v1/state HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain")
        self.assertEqual(r.status, 200, r)

    def test_refused_before_the_body_is_read(self):
        # The 415 comes from the head: an announced body is never read (no 100 Continue).
        a = self.agent()
        s = socket.create_connection(("127.0.0.1", a.port), timeout=10 * SCALE)
        try:
            s.sendall(b"POST /v1/prepare HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                      b"text/plain\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n")
            r = read_response(s)
        finally:
            s.close()
        self.assertEqual(r.status, 415, r)
        self.assertEqual(r.header("Connection"), "close", r)

    @unittest.skipUnless(os.geteuid() == 0, "the Unix socket test connects as root")
    def test_unix_socket_allows_a_bodyless_request_without_content_type(self):
        # No browser reaches the Unix socket: local scripts may leave the header out
        # without a body; a header that names another type is still refused.
        sock = os.path.join(self.socket_dir(), "agent.sock")
        a = self.agent("--listen=unix:" + sock)
        status, _, body = harness.unix_request(sock, "POST", "/v1/prepare")
        self.assertEqual(status, 200, body)
        status, _, body = harness.unix_request(sock, "POST", "/v1/cancel",
                                               headers={"Content-Type": "text/plain"})
        self.assertEqual(status, 415, body)
        self.assertEqual(json.loads(body)["code"], "unsupported-media-type")
        status, _, body = harness.unix_request(sock, "POST", "/v1/cancel", body=b"{}")
        self.assertEqual(status, 415, body)
        self.assertEqual(a.sim_kernel()["state"], "prepared")


def read_response(sock):
    """One HTTP answer from a socket (http.client's parser): a harness.Response."""
    import http.client
    r = http.client.HTTPResponse(sock, method="POST")
    r.begin()
    body = r.read()
    return harness.Response(r.status, r.reason, r.getheaders(), body)


class OriginTest(AgentTestCase):
    """A web page's requests carry Origin: refused unless --allowed-origin names it."""

    def test_foreign_origins_are_refused(self):
        a = self.agent()
        d = a.direct()
        for origin in ("http://evil.example", "https://evil.example:8421", "null",
                       "http://127.0.0.1:%d" % a.port, "http://localhost:8421"):
            with self.subTest(origin=origin):
                r = d.post("/v1/prepare", headers={"Origin": origin, **JSON})
                p = self.assertProblem(r, 403, "origin-not-allowed")
                self.assertEqual(p["title"], "Origin not allowed")
                self.assertIn("--allowed-origin", p["detail"])
                r = d.get("/v1/state", headers={"Origin": origin})
                self.assertProblem(r, 403, "origin-not-allowed")
        # The detail shows a plain origin, never arbitrary bytes.
        r = d.get("/v1/state", headers={"Origin": "http://a<script>"})
        p = self.assertProblem(r, 403, "origin-not-allowed")
        self.assertNotIn("<script>", p["detail"])
        self.assertEqual(a.sim_kernel()["state"], "normal")
        recs = audits(a)
        self.assertEqual(len(recs), 5)
        self.assertTrue(all(r["result"]["code"] == "origin-not-allowed" and
                            r["result"]["status"] == 403 and r["action"] == "prepare"
                            for r in recs), recs)
        # Without Origin (curl, the CLI, the controller) nothing changes.
        self.assertEqual(a.client().post("/v1/prepare").status, 200)

    def test_allowed_origins(self):
        a = self.agent("--allowed-origin=https://dash.example:3000",
                       "--allowed-origin=HTTP://Ops.Example:80")
        d = a.direct()
        for origin in ("https://dash.example:3000", "HTTPS://DASH.EXAMPLE:3000",
                       "http://ops.example"):
            with self.subTest(origin=origin):
                self.assertEqual(d.get("/v1/state", headers={"Origin": origin}).status, 200)
        for origin in ("https://dash.example", "http://dash.example:3000",
                       "https://dash.example:3000/", "https://dash.example:30000"):
            with self.subTest(origin=origin):
                self.assertProblem(d.get("/v1/state", headers={"Origin": origin}), 403,
                                   "origin-not-allowed")
        r = d.post("/v1/prepare", headers={"Origin": "https://dash.example:3000", **JSON})
        self.assertEqual(r.status, 200, r)

    def test_through_the_contract_proxy(self):
        # The 403 is in the contract (Prism checks every proxied answer).
        a = self.agent()
        c = a.client()
        if not c.proxied:
            self.skipTest("contract mode is off")
        r = c.post("/v1/cancel", headers={"Origin": "http://evil.example"})
        self.assertProblem(r, 403, "origin-not-allowed")


class HostTest(AgentTestCase):
    """DNS rebinding: on a loopback listener, Host must name the loopback."""

    GOOD = ("127.0.0.1", "127.0.0.1:%(port)d", "127.1.2.3:80", "localhost", "LocalHost:%(port)d",
            "localhost.", "[::1]", "[::1]:%(port)d", "[::ffff:127.0.0.1]:1", "x", "myhost:8421")
    BAD = ("evil.example", "evil.example:%(port)d", "localhost.evil.example:%(port)d",
           "127.0.0.1.nip.io", "10.0.0.7:%(port)d", "0.0.0.0", "[2001:db8::1]:%(port)d",
           "::1", "127.0.0.1:99999", "127.0.0.1:8x", "[::1", "a b")

    def test_rebinding_hosts_are_refused(self):
        a = self.agent()
        port = a.port
        for host in self.GOOD:
            host = host % {"port": port}
            with self.subTest(host=host):
                r = raw(port, "GET /v1/state HTTP/1.1\r\nHost: %s" % host)
                self.assertEqual(r.status, 200, r)
        for host in self.BAD:
            host = host % {"port": port}
            with self.subTest(host=host):
                r = raw(port, "GET /v1/state HTTP/1.1\r\nHost: %s" % host)
                p = self.assertProblem(r, 403, "host-not-allowed")
                self.assertEqual(p["title"], "Host not allowed")
                r = raw(port, "POST /v1/prepare HTTP/1.1\r\nHost: %s\r\nContent-Type: "
                        "application/json\r\nContent-Length: 2" % host, b"{}")
                self.assertProblem(r, 403, "host-not-allowed")
        p = self.assertProblem(raw(port, "GET /v1/state HTTP/1.1\r\nHost: evil.example:%d"
                                   % port), 403, "host-not-allowed")
        self.assertEqual(p["detail"], "Host evil.example:%d does not name this agent: on a "
                         "loopback listener it must be localhost, a 127.0.0.0/8 or [::1] "
                         "address, a name without a dot or an --allowed-host name" % port)
        # HTTP/1.0 without Host is no browser.
        r = raw_http("127.0.0.1", port, b"GET /v1/state HTTP/1.0\r\n\r\n")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(a.sim_kernel()["state"], "normal")
        recs = audits(a)
        self.assertEqual(len(recs), len(self.BAD))
        self.assertTrue(all(r["result"]["code"] == "host-not-allowed" for r in recs), recs)

    def test_allowed_hosts(self):
        a = self.agent("--allowed-host=Agent.Example", "--allowed-host=192.0.2.7",
                       "--allowed-host=2001:db8::7")
        for host in ("agent.example", "AGENT.EXAMPLE:8421", "192.0.2.7:1",
                     "[2001:db8:0::7]:8421"):
            with self.subTest(host=host):
                r = raw(a.port, "GET /v1/state HTTP/1.1\r\nHost: %s" % host)
                self.assertEqual(r.status, 200, r)
        for host in ("other.example", "www.agent.example", "192.0.2.8", "[2001:db8::8]"):
            with self.subTest(host=host):
                r = raw(a.port, "GET /v1/state HTTP/1.1\r\nHost: %s" % host)
                self.assertProblem(r, 403, "host-not-allowed")

    def test_bad_option_values(self):
        for args, msg in (
            (["--allowed-host=evil.example:80"], "invalid --allowed-host=evil.example:80: "
             "expected a host name or an IP address, without a port"),
            (["--allowed-host="], "invalid --allowed-host=: "),
            (["--allowed-host=a/b"], "invalid --allowed-host=a/b: "),
            (["--allowed-origin=https://dash.example/"], "invalid --allowed-origin="
             "https://dash.example/: expected an origin: http:// or https://, a host and an "
             "optional port, nothing after it"),
            (["--allowed-origin=dash.example"], "invalid --allowed-origin=dash.example: "),
            (["--allowed-origin=ftp://dash.example"], "invalid --allowed-origin="),
            (["--allowed-origin=null"], "invalid --allowed-origin=null: "),
        ):
            with self.subTest(args=args):
                rc, out, err = harness.run_agent(["--backend=sim", "--state-dir=" + self.tmp]
                                                 + args)
                self.assertEqual(rc, 2, err)
                self.assertIn(msg, err)
        rc, out, _ = harness.run_agent(["--help"])
        self.assertEqual(rc, 0)
        self.assertIn("--allowed-host=NAME", out)
        self.assertIn("--allowed-origin=URL", out)


# ---------------------------------------------------------------------------------------------
# Item 8: authenticate before reading the body


class AuthBeforeBodyTest(AgentTestCase):
    def setUp(self):
        super().setUp()
        self.op_token, op_line = make_token("ci-bot", "operator")
        self.view_token, view_line = make_token("dash", "viewer")
        self.tokens = os.path.join(self.tmp, "tokens")
        write_tokens(self.tokens, [op_line, view_line])

    def start(self):
        # A long request deadline: without the early answer the agent would wait for the body.
        return self.agent("--tokens=" + self.tokens, "--header-timeout=60s")

    def head_only(self, port, extra=""):
        """Send the head of a 64 KiB upload and none of its body; the answer and whether the
        agent then closed the connection."""
        s = socket.create_connection(("127.0.0.1", port), timeout=10 * SCALE)
        try:
            s.sendall(("POST /v1/prepare HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                       "application/json\r\nContent-Length: 65536\r\n%s\r\n" % extra).encode())
            try:
                r = read_response(s)
            except socket.timeout:
                self.fail("no answer before the body was sent: the agent waits for the body "
                          "of an unauthenticated request")
            try:
                closed = s.recv(1) == b""
            except ConnectionResetError:
                closed = True
        finally:
            s.close()
        return r, closed

    def test_unauthenticated_upload_is_answered_before_its_body(self):
        a = self.start()
        r, closed = self.head_only(a.port)
        self.assertProblem(r, 401, "authentication-required")
        self.assertEqual(r.header("WWW-Authenticate"), 'Bearer realm="luofleet-agent"')
        self.assertEqual(r.header("Connection"), "close", r)
        self.assertTrue(closed, "the agent kept the connection open to read the body")
        # Expect: 100-continue gets the 401, never a 100 that asks for the body.
        r, closed = self.head_only(a.port, "Expect: 100-continue\r\n")
        self.assertProblem(r, 401, "authentication-required")
        self.assertTrue(closed)
        # An unknown token, and a viewer's (403), the same way.
        r, closed = self.head_only(a.port, "Authorization: Bearer lfa_unknown\r\n")
        self.assertProblem(r, 401, "invalid-credentials")
        self.assertTrue(closed)
        r, closed = self.head_only(a.port, "Authorization: Bearer %s\r\n" % self.view_token)
        self.assertProblem(r, 403, "forbidden")
        self.assertTrue(closed)
        self.assertEqual(a.sim_kernel()["state"], "normal")
        # The refused uploads are audited like any refused action.
        recs = audits(a, {"Authorization": "Bearer " + self.op_token})
        self.assertEqual([(x["result"]["status"], x["result"]["code"]) for x in recs],
                         [(401, "authentication-required"), (401, "authentication-required"),
                          (401, "invalid-credentials"), (403, "forbidden")])
        # An operator's upload is read and served.
        body = json.dumps({"operation_id": "auth-body", "reason": "x" * 100}).encode()
        r = raw(a.port, "POST /v1/prepare HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                "application/json\r\nAuthorization: Bearer %s\r\nContent-Length: %d"
                % (self.op_token, len(body)), body)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["operation"]["requested_by"], "token:ci-bot")

    def test_unauthenticated_uploads_cost_no_memory(self):
        # The finding: 1,000 such connections took the agent from 10 to 90 MB. Here 256
        # connections announce 64 KiB bodies and stay open, first sending only their heads
        # (what a connection costs the agent anyway), then each sending 63 KiB of its body:
        # read into the agent that would be 15.75 MiB more (several times that under the
        # sanitizers' allocator). Answered from the head, the bodies cost nothing.
        a = self.start()
        n, sent = 256, 63 * 1024
        d = a.direct()
        for _ in range(3):  # warm up the allocator
            self.assertEqual(d.get("/healthz").status, 200)

        def batch(body_bytes):
            before = rss_kib(a.pid)
            socks = []
            try:
                for _ in range(n):
                    s = socket.create_connection(("127.0.0.1", a.port), timeout=10 * SCALE)
                    socks.append(s)
                    try:
                        s.sendall(b"POST /v1/prepare HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                  b"Content-Type: application/json\r\nContent-Length: 65536"
                                  b"\r\n\r\n" + b" " * body_bytes)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # answered and closed already: what should happen
                # The agent is through with them once it answers a new connection.
                self.assertEqual(d.get("/healthz").status, 200)
                samples = []
                for _ in range(5):
                    samples.append(rss_kib(a.pid))
                    time.sleep(0.05)
                return max(samples) - before
            finally:
                for s in socks:
                    s.close()

        heads = batch(0)
        bodies = batch(sent)
        sys.stderr.write("test_websec: RSS +%d KiB for %d heads, +%d KiB for as many 63 KiB "
                         "bodies\n" % (heads, n, bodies))
        self.assertLess(bodies, heads + n * sent // 1024 // 2,
                        "the agent's RSS grew by %d KiB for %d unauthenticated uploads of %d "
                        "KiB (%d KiB for their heads alone)" % (bodies, n, sent // 1024, heads))


# ---------------------------------------------------------------------------------------------
# Item 3: the Unix socket's mode and group are set on the socket, never through a link

RACER = r"""
import ctypes, os, sys
a, b, stop = (x.encode() for x in sys.argv[1:4])
renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
n = 0
# RENAME_EXCHANGE (2) of two names, again and again, as fast as Python goes.
while True:
    renameat2(-100, a, -100, b, 2)
    n += 1
    if n % 4096 == 0 and os.path.exists(stop):
        break
"""


def the_socket(*names):
    """lstat of the one name that holds a socket while the racer keeps swapping them."""
    for _ in range(1000):
        found = []
        for p in names:
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            if stat.S_ISSOCK(st.st_mode):
                found.append(st)
        if len(found) == 1:
            return found[0]
    raise AssertionError("no socket under %s" % (names,))


@unittest.skipUnless(os.geteuid() == 0, "the race needs an agent started as root")
class SocketLinkRaceTest(AgentTestCase):
    """The agent started as root used to chmod 0660 and chown to --unix-group the socket's
    path after bind(): whoever may change what the path names in between (write the
    socket's directory) redirected both to any file through a symlink."""

    ROUNDS = 20

    def target(self):
        """A root-only file elsewhere, which a chmod 0660 / chown :65534 through a link
        would open to group nogroup."""
        tdir = tempfile.mkdtemp(prefix="lf-target-", dir="/tmp")
        self.addCleanup(shutil.rmtree, tdir, True)
        target = os.path.join(tdir, "secret")
        with open(target, "w") as f:
            f.write("root only\n")
        os.chmod(target, 0o600)
        os.chown(target, 0, 0)
        return target

    def assert_untouched(self, target, rnd):
        st = os.stat(target)
        self.assertEqual((stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid), (0o600, 0, 0),
                         "round %d: the agent changed the mode or owner of a link's target" % rnd)

    def race(self, a, racer_args, before_round, the_socket_stat):
        stop = os.path.join(self.socket_dir(), "stop")
        racer = subprocess.Popen([sys.executable, "-c", RACER] + racer_args + [stop])
        started = refused = 0
        try:
            for rnd in range(self.ROUNDS):
                before_round()
                try:
                    a.start()
                except harness.AgentError:
                    # The agent saw the name no longer held its socket (or could not bind
                    # through a swapped path): it says so and stops.
                    self.assertEqual(a.returncodes[-1], 1, a.log())
                    self.assertIn("Failed to listen on %s" % a.sock, a.log())
                    refused += 1
                else:
                    started += 1
                    self.assert_untouched(self.target_path, rnd)
                    st = the_socket_stat()
                    self.assertEqual(stat.S_IMODE(st.st_mode), 0o660, "round %d" % rnd)
                    self.assertEqual(st.st_gid, 65534, "round %d" % rnd)
                    a.stop()
                self.assert_untouched(self.target_path, rnd)
        finally:
            open(stop, "w").close()
            racer.wait(30)
        self.assertEqual(started + refused, self.ROUNDS)
        sys.stderr.write("test_websec: %d starts, %d refused to start under the race\n"
                         % (started, refused))

    def test_socket_swapped_for_a_link(self):
        # The finding's attack: the socket just bound and a planted link swapped, again and
        # again, in the socket's directory. (The window between bind() and the chmod was
        # microseconds: this one catches the old code now and then, the next one always.)
        self.target_path = self.target()
        sdir = self.socket_dir()
        sock, link = os.path.join(sdir, "agent.sock"), os.path.join(sdir, "link")
        a = self.agent("--listen=unix:" + sock, "--unix-group=65534", start=False)
        a.sock = sock

        def before_round():
            for p in (sock, link):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
            os.symlink(self.target_path, link)

        self.race(a, [sock, link], before_round, lambda: the_socket(sock, link))

    def test_socket_directory_swapped(self):
        # The same with a wide window: the directory the path goes through is swapped with
        # one whose agent.sock is a link to the target, so each of the agent's path lookups
        # (bind, chmod, chown) may land in either. The old code was caught in most rounds.
        self.target_path = self.target()
        sdir = self.socket_dir()
        real, decoy = os.path.join(sdir, "real"), os.path.join(sdir, "decoy")
        for d in (real, decoy):
            os.mkdir(d)
            os.chmod(d, 0o711)
        os.symlink("real", os.path.join(sdir, "d"))
        os.symlink("decoy", os.path.join(sdir, "e"))
        sock = os.path.join(sdir, "d", "agent.sock")
        a = self.agent("--listen=unix:" + sock, "--unix-group=65534", start=False)
        a.sock = sock

        def before_round():
            # (The stop of the round before may have removed either: the privileged
            # helper's UNLINK_SOCKET checks the path and removes it in two lookups.)
            for p in (os.path.join(real, "agent.sock"), os.path.join(decoy, "agent.sock")):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
            os.symlink(self.target_path, os.path.join(decoy, "agent.sock"))

        self.race(a, [os.path.join(sdir, "d"), os.path.join(sdir, "e")], before_round,
                  lambda: os.lstat(os.path.join(real, "agent.sock")))


if __name__ == "__main__":
    harness.main()
