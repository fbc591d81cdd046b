#!/usr/bin/env python3
"""test_auth.py: who may do what. Bearer tokens (the tokens file, its mode
check, `luofleet-agent token`, roles, 401 with WWW-Authenticate, 403,
SIGHUP reload), anonymous reads by configuration, SO_PEERCRED on the Unix
socket, and secure defaults (a non-loopback listener without TLS and auth is
refused unless --insecure, which /readyz then reports). Plain-HTTP answers go
through the module's contract proxy like every suite's."""

import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

setUpModule, tearDownModule = harness.module_fixtures(__file__)

CHALLENGE = 'Bearer realm="luofleet-agent"'
CHALLENGE_INVALID = 'Bearer realm="luofleet-agent", error="invalid_token"'


def make_token(name, role=None):
    """Run `luofleet-agent token NAME [ROLE]`: returns (token, tokens-file line)."""
    args = [harness.agent_path(), "token", name] + ([role] if role else [])
    p = subprocess.run(args, capture_output=True, timeout=10)
    if p.returncode != 0:
        raise AssertionError("token command failed: %r" % (p,))
    return p.stdout.decode().strip(), p.stderr.decode().strip()


def write_tokens(path, lines, mode=0o600):
    with open(path, "w") as f:
        f.write("# luofleet-agent tokens (test)\n")
        for line in lines:
            f.write(line + "\n")
    os.chmod(path, mode)


def bearer(token):
    return {"Authorization": "Bearer " + token}


class TokenCommandTest(unittest.TestCase):
    def test_generates_a_token_and_its_line(self):
        token, line = make_token("ci-bot", "operator")
        self.assertRegex(token, r"^lfa_[A-Za-z0-9_-]{43}$")
        self.assertEqual(line, "ci-bot operator " + hashlib.sha256(token.encode()).hexdigest())
        token2, line2 = make_token("dash")
        self.assertNotEqual(token, token2)
        self.assertTrue(line2.startswith("dash operator "))  # default role

    def test_refuses_bad_arguments(self):
        a = harness.agent_path()
        for args, msg in (
            (["token"], "Usage: luofleet-agent token NAME [viewer|operator|admin]"),
            (["token", "bad/name"], "invalid name 'bad/name'"),
            (["token", "ok", "root"], "invalid role 'root': expected viewer, operator or admin"),
            (["token", "a", "viewer", "extra"], "Usage:"),
        ):
            p = subprocess.run([a] + args, capture_output=True, timeout=10)
            self.assertEqual(p.returncode, 2, args)
            self.assertEqual(p.stdout, b"", args)
            self.assertIn(msg, p.stderr.decode(), args)
        p = subprocess.run([a, "token", "--help"], capture_output=True, timeout=10)
        self.assertEqual(p.returncode, 0)
        self.assertIn(b"Usage: luofleet-agent token NAME", p.stdout)


class TokensTest(harness.AgentTestCase):
    def setUp(self):
        super().setUp()
        self.op_token, op_line = make_token("ci-bot", "operator")
        self.view_token, view_line = make_token("dash", "viewer")
        self.tokens = os.path.join(self.tmp, "tokens")
        write_tokens(self.tokens, [op_line, view_line])

    def assert_problem(self, r, status, code):
        self.assertEqual(r.status, status, r)
        self.assertEqual(r.content_type, "application/problem+json")
        self.assertEqual(r.json["code"], code)
        self.assertEqual(r.json["status"], status)
        self.assertEqual(r.json["type"], "urn:luofleet:problem:" + code)

    def test_roles_and_answers(self):
        a = self.agent("--tokens=" + self.tokens)
        c = a.client()

        # No credentials: 401 with the challenge, on every protected route and method.
        for method, path in (("GET", "/v1/state"), ("GET", "/v1/history"), ("GET", "/readyz"),
                             ("GET", "/metrics"), ("GET", "/v1/kernel"), ("POST", "/v1/prepare"),
                             ("GET", "/v1/nope")):
            # (an unknown path goes to the agent directly: the proxy answers those itself)
            r = (a.direct() if path == "/v1/nope" else c).request(method, path)
            self.assert_problem(r, 401, "authentication-required")
            self.assertEqual(r.header("WWW-Authenticate"), CHALLENGE)
        r = a.direct().head("/v1/state")  # (Prism cannot proxy a HEAD error answer)
        self.assertEqual(r.status, 401)
        self.assertEqual(r.body, b"")
        self.assertEqual(r.header("WWW-Authenticate"), CHALLENGE)
        # /healthz stays open.
        r = c.get("/healthz")
        self.assertEqual((r.status, r.json), (200, {"status": "ok"}))

        # Unknown or malformed credentials.
        for hdr in ({"Authorization": "Bearer lfa_not_a_known_token"},
                    {"Authorization": "Basic Y2k6Ym90"},
                    {"Authorization": "Bearer " + hashlib.sha256(
                        self.op_token.encode()).hexdigest()}):
            # (Prism answers a non-Bearer scheme itself: that one goes to the agent directly)
            cl = a.direct() if hdr["Authorization"].startswith("Basic") else c
            r = cl.post("/v1/prepare", headers=hdr)
            self.assert_problem(r, 401, "invalid-credentials")
            self.assertEqual(r.header("WWW-Authenticate"), CHALLENGE_INVALID)

        # viewer: reads yes, actions no (403, nothing done).
        r = c.get("/v1/state", headers=bearer(self.view_token))
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json["state"], "normal")
        index = r.json["index"]
        self.assertEqual(c.get("/metrics", headers=bearer(self.view_token)).status, 200)
        for path in ("/v1/prepare", "/v1/cancel", "/v1/reboot", "/v1/finish"):
            r = c.post(path, json_body={}, headers=bearer(self.view_token))
            self.assert_problem(r, 403, "forbidden")
            self.assertEqual(r.json["detail"],
                             "token:dash has role viewer; this request needs operator")
        r = c.put("/v1/kernel", json_body={}, headers=bearer(self.view_token))
        self.assert_problem(r, 403, "forbidden")
        self.assertEqual(a.sim_kernel()["state"], "normal")
        self.assertEqual(c.get("/v1/state", headers=bearer(self.view_token)).json["index"], index)

        # operator acts; the operation names the token, never the token itself.
        r = c.post("/v1/prepare", json_body={"operation_id": "auth-1"},
                   headers=bearer(self.op_token))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["state"], "prepared")
        self.assertEqual(r.json["operation"]["requested_by"], "token:ci-bot")
        self.assertEqual(a.sim_kernel()["state"], "prepared")

        m = c.get("/metrics", headers=bearer(self.view_token)).body.decode()
        self.assertIn('luofleet_auth_denied_total{code="authentication-required"} 8\n', m)
        self.assertIn('luofleet_auth_denied_total{code="invalid-credentials"} 3\n', m)
        self.assertIn('luofleet_auth_denied_total{code="forbidden"} 5\n', m)
        self.assertIn("luofleet_auth_tokens 2\n", m)

        a.stop()
        with open(a.journal_path(), "rb") as f:
            journal = f.read()
        for secret in (self.op_token, self.view_token):
            self.assertNotIn(secret.encode(), journal)
            self.assertNotIn(secret, a.log())
            self.assertNotIn(secret.encode(), a.stdout())

    def test_anonymous_reads_by_configuration(self):
        a = self.agent("--tokens=" + self.tokens, "--anonymous=state,metrics")
        c = a.client()
        self.assertEqual(c.get("/v1/state").status, 200)
        self.assertEqual(c.get("/metrics").status, 200)
        r = c.get("/v1/history")
        self.assertEqual(r.status, 401)
        self.assertEqual(c.get("/readyz").status, 401)
        r = c.post("/v1/prepare")
        self.assertEqual(r.status, 401)
        self.assertEqual(r.json["code"], "authentication-required")
        # A known token still counts on an anonymous route.
        self.assertEqual(c.get("/v1/state", headers=bearer(self.view_token)).status, 200)

    def test_tokens_file_must_be_private(self):
        for mode in (0o640, 0o604, 0o660):
            os.chmod(self.tokens, mode)
            a = self.agent("--tokens=" + self.tokens, start=False, name="m%o" % mode)
            p = subprocess.run(a.command(), capture_output=True, timeout=20)
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("has mode %04o: a tokens file must not be readable or writable by "
                          "group or others (chmod 600)" % mode, p.stderr.decode())
        # Broken content is refused with the line number.
        write_tokens(self.tokens, ["ci-bot operator abc"])
        a = self.agent("--tokens=" + self.tokens, start=False, name="broken")
        p = subprocess.run(a.command(), capture_output=True, timeout=20)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("line 2: expected the token's SHA-256 as 64 hex digits", p.stderr.decode())
        a = self.agent("--tokens=" + os.path.join(self.tmp, "missing"), start=False, name="x")
        p = subprocess.run(a.command(), capture_output=True, timeout=20)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("No such file or directory", p.stderr.decode())

    def test_sighup_reloads_tokens(self):
        a = self.agent("--tokens=" + self.tokens)
        c = a.client()
        self.assertEqual(c.get("/v1/state", headers=bearer(self.view_token)).status, 200)
        new_token, new_line = make_token("rotated", "viewer")
        write_tokens(self.tokens, [new_line])
        os.kill(a.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while c.get("/v1/state", headers=bearer(new_token)).status != 200:
            self.assertLess(time.monotonic(), deadline, "SIGHUP did not load the new token")
            time.sleep(0.05)
        self.assertEqual(c.get("/v1/state", headers=bearer(self.view_token)).status, 401)
        self.assertIn("SIGHUP: 1 tokens loaded from %s" % self.tokens, a.log())

        # A broken file on reload: the running table stays.
        write_tokens(self.tokens, ["garbage"], mode=0o600)
        os.kill(a.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "tokens not reloaded" not in a.log():
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.05)
        self.assertIn("SIGHUP: tokens not reloaded, the running table stays: %s: line 2: "
                      "expected three fields NAME ROLE SHA256, found fewer" % self.tokens, a.log())
        self.assertEqual(c.get("/v1/state", headers=bearer(new_token)).status, 200)


def unix_request(path, method, url, headers=None, body=None):
    status, _, data = harness.unix_request(path, method, url, body=body, headers=headers)
    return status, data


def run_as_nobody(code):
    """Run python code as uid/gid 65534 (nobody/nogroup); returns its stdout."""
    def demote():
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=20,
                       preexec_fn=demote)
    if p.returncode != 0:
        raise AssertionError("client as nobody failed: %r" % (p,))
    return p.stdout.decode().strip()


NOBODY_CLIENT = r"""
import http.client, socket, sys, json
class C(http.client.HTTPConnection):
    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(%r); self.sock = s
out = []
for method, url in (("GET", "/v1/state"), ("POST", "/v1/prepare")):
    c = C("localhost", timeout=10); c.request(method, url); r = c.getresponse()
    body = json.loads(r.read())
    out.append("%%s %%s %%d %%s" %% (method, url, r.status, body.get("code", body.get("state"))))
print(";".join(out))
"""


@unittest.skipUnless(os.geteuid() == 0, "SO_PEERCRED roles need root to run a client as nobody")
class UnixPeerCredTest(harness.AgentTestCase):
    def test_root_is_operator_others_viewers(self):
        sock = os.path.join(self.socket_dir(), "agent.sock")
        tokens = os.path.join(self.tmp, "tokens")
        write_tokens(tokens, [make_token("ci-bot")[1]])
        # The agent's own user is an operator on the socket too: run it as another user
        # than the nobody client below (started as root it drops to nobody by default).
        user = ["--user=daemon"] if os.geteuid() == 0 else []
        a = self.agent("--listen=unix:" + sock, "--tokens=" + tokens, *user)
        # Root needs no token on the Unix socket: operator by SO_PEERCRED.
        status, body = unix_request(sock, "POST", "/v1/prepare")
        self.assertEqual(status, 200, body)
        doc = json.loads(body)
        self.assertEqual(doc["operation"]["requested_by"], "uid:0")
        status, body = unix_request(sock, "POST", "/v1/cancel")
        self.assertEqual(status, 200, body)
        # An unknown token on the socket is refused, not ignored.
        status, body = unix_request(sock, "POST", "/v1/prepare",
                                    headers={"Authorization": "Bearer lfa_wrong"})
        self.assertEqual(status, 401)
        self.assertEqual(json.loads(body)["code"], "invalid-credentials")
        # Another user who can reach the socket reads, but may not act.
        os.chmod(sock, 0o666)
        out = run_as_nobody(NOBODY_CLIENT % sock)
        self.assertEqual(out, "GET /v1/state 200 normal;POST /v1/prepare 403 forbidden")
        self.assertEqual(a.sim_kernel()["state"], "normal")

    def test_unix_group_members_are_operators(self):
        sock = os.path.join(self.socket_dir(), "agent.sock")
        a = self.agent("--listen=unix:" + sock, "--unix-group=65534")
        st = os.stat(sock)
        self.assertEqual(st.st_gid, 65534)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o660)
        out = run_as_nobody(NOBODY_CLIENT % sock)
        self.assertEqual(out, "GET /v1/state 200 normal;POST /v1/prepare 200 prepared")
        self.assertEqual(a.sim_kernel()["state"], "prepared")
        ops = [r for r in a.journal_records()
               if r.get("kind") == "operation" and r["operation"]["status"] == "succeeded"]
        self.assertEqual(ops[-1]["operation"]["requested_by"], "uid:65534")

    def test_unknown_unix_group_is_refused(self):
        a = self.agent("--unix-group=no-such-group-lf", start=False)
        p = subprocess.run(a.command(), capture_output=True, timeout=20)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("--unix-group=no-such-group-lf: no such group", p.stderr.decode())


class SecureDefaultsTest(harness.AgentTestCase):
    def test_non_loopback_needs_tls_and_auth(self):
        # Refused before anything is bound: no socket exists outside loopback at any time.
        for extra in ([], ["--tokens=/nonexistent"]):
            a = self.agent(start=False, name="n%d" % len(extra))
            cmd = [x for x in a.command() if not x.startswith("--listen=")]
            cmd += ["--listen=0.0.0.0:0"] + extra
            p = subprocess.run(cmd, capture_output=True, timeout=20)
            self.assertEqual(p.returncode, 2, p)
            self.assertIn("refusing to listen on 0.0.0.0:0: a non-loopback address needs TLS "
                          "(--tls-cert, --tls-key) and authentication (--tokens or "
                          "--tls-client-ca); --insecure overrides this", p.stderr.decode())

    def test_loopback_forms_are_allowed(self):
        a = self.agent("--listen=127.0.0.2:0", "--listen=[::1]:0")
        r = a.client().get("/readyz")
        self.assertEqual(r.status, 200)
        sec = [c for c in r.json["checks"] if c["name"] == "security"][0]
        self.assertEqual(sec, {"name": "security", "ok": True,
                               "detail": "plain HTTP on loopback and the Unix socket only, no "
                                         "authentication"})

    def test_anonymous_without_auth_is_refused(self):
        a = self.agent(start=False)
        p = subprocess.run(a.command() + ["--anonymous=state"], capture_output=True, timeout=20)
        self.assertEqual(p.returncode, 2)
        self.assertIn("--anonymous has no effect without --tokens or --tls-client-ca",
                      p.stderr.decode())

    @unittest.skipUnless(os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip"),
                         "needs root, unshare and ip for a private network namespace")
    def test_insecure_says_so(self):
        """--insecure on 0.0.0.0, inside a network namespace of the test's own (only its
        loopback exists there): the agent starts, logs a warning and /readyz says INSECURE."""
        a = self.agent(start=False)
        port = harness.free_port()
        cmd = [x for x in a.command() if not x.startswith("--listen=")]
        cmd += ["--listen=0.0.0.0:%d" % port, "--insecure"]
        probe = ("import json,urllib.request,time\n"
                 "for i in range(200):\n"
                 "    try:\n"
                 "        r=urllib.request.urlopen('http://127.0.0.1:%d/readyz',timeout=2);break\n"
                 "    except Exception: time.sleep(0.05)\n"
                 "print('PROBE ' + json.dumps(json.load(r)), flush=True)\n" % port)
        script = ('ip link set lo up && { %s & } && pid=$! && %s -c "$PROBE"; s=$?; '
                  'kill -TERM $pid; wait $pid; exit $s') % (
                      " ".join("'%s'" % x for x in cmd), sys.executable)
        p = subprocess.run(["unshare", "--net", "sh", "-c", script], capture_output=True,
                           timeout=60, env=dict(os.environ, PROBE=probe))
        self.assertEqual(p.returncode, 0, p)
        # The probe's line, wherever the agent's own stdout lines fall around it.
        probe_lines = [ln for ln in p.stdout.decode().splitlines() if ln.startswith("PROBE ")]
        self.assertEqual(len(probe_lines), 1, p.stdout)
        # (the first JSON value on it: an agent's line written meanwhile may follow it)
        doc, _ = json.JSONDecoder().raw_decode(probe_lines[0][len("PROBE "):])
        sec = [c for c in doc["checks"] if c["name"] == "security"][0]
        self.assertEqual(sec["detail"], "INSECURE (--insecure): a non-loopback listener without "
                                        "TLS and authentication")
        self.assertIn("--insecure: non-loopback listeners may serve without TLS or "
                      "authentication", p.stderr.decode())


if __name__ == "__main__":
    unittest.main(verbosity=2)
