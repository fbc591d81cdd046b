#!/usr/bin/env python3
"""test_tls.py: HTTPS and mutual TLS. Certificates are made at test time with
the openssl command (a throwaway CA, server and client certificates). Checks:
TLS 1.2 and 1.3 only (1.0/1.1 refused), AEAD ciphers, the certificate and key
reloaded on SIGHUP without dropping open connections (a long-poll started
before the reload is answered after it), a bad reload keeps the running
certificate, client certificates required and verified (CA, key purpose),
the certificate's CN as the caller's identity, and start-up refusals (key
readable by others, key of another certificate, half a pair). TLS answers go
to the agent directly: the contract proxy speaks plain HTTP."""

import hashlib
import http.client
import json
import os
import re
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

setUpModule, tearDownModule = harness.module_fixtures(__file__)


def openssl(*args, cwd):
    p = subprocess.run(["openssl"] + list(args), cwd=cwd, capture_output=True, timeout=60)
    if p.returncode != 0:
        raise AssertionError("openssl %s failed: %s" % (" ".join(args), p.stderr.decode()))


class PKI:
    """A CA and the certificates the tests need, in one directory."""

    def __init__(self, d):
        self.d = d
        self.ca("ca")
        self.ca("other-ca")
        self.leaf("server", "ca", "localhost", "serverAuth", san="IP:127.0.0.1,DNS:localhost")
        self.leaf("server2", "ca", "localhost", "serverAuth", san="IP:127.0.0.1,DNS:localhost")
        self.leaf("client", "ca", "rollout-1", "clientAuth")
        self.leaf("client-wrong-ca", "other-ca", "mallory", "clientAuth")
        self.leaf("client-server-only", "ca", "not-a-client", "serverAuth")

    def path(self, name):
        return os.path.join(self.d, name)

    def ca(self, name):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", name + ".key", "-out", name + ".pem", "-days", "2", "-subj",
                "/CN=" + name, cwd=self.d)

    def leaf(self, name, ca, cn, eku, san=None):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + cn,
                cwd=self.d)
        ext = "extendedKeyUsage=%s\n" % eku
        if san:
            ext += "subjectAltName=%s\n" % san
        with open(self.path(name + ".ext"), "w") as f:
            f.write(ext)
        openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
                "-CAcreateserial", "-out", name + ".pem", "-days", "2", "-extfile",
                name + ".ext", cwd=self.d)
        os.chmod(self.path(name + ".key"), 0o600)


def fingerprint_of(pem_path):
    der = ssl.PEM_cert_to_DER_cert(open(pem_path).read())
    return hashlib.sha256(der).hexdigest()


class TLSTest(harness.AgentTestCase):
    @classmethod
    def setUpClass(cls):
        import tempfile
        base = os.environ.get("LUOFLEET_TEST_TMP") or None
        if base:
            os.makedirs(base, exist_ok=True)
        cls.pki_dir = tempfile.mkdtemp(prefix="lf-pki-", dir=base)
        cls.pki = PKI(cls.pki_dir)

    @classmethod
    def tearDownClass(cls):
        import shutil
        shutil.rmtree(cls.pki_dir, ignore_errors=True)

    def tls_agent(self, *extra, cert="server", **kw):
        p = self.pki.path
        return self.agent("--tls-cert=" + p(cert + ".pem"), "--tls-key=" + p(cert + ".key"),
                          *extra, port=0, **kw)

    def context(self, client=None, minv=None, maxv=None):
        ctx = ssl.create_default_context(cafile=self.pki.path("ca.pem"))
        if minv:
            ctx.minimum_version = minv
        if maxv:
            ctx.maximum_version = maxv
        if client:
            ctx.load_cert_chain(self.pki.path(client + ".pem"), self.pki.path(client + ".key"))
        return ctx

    def request(self, a, method, path, ctx=None, headers=None, body=None, timeout=10):
        c = http.client.HTTPSConnection("127.0.0.1", a.port, context=ctx or self.context(),
                                        timeout=timeout)
        headers = dict(headers or {})
        if method in ("POST", "PUT", "DELETE"):
            headers.setdefault("Content-Type", "application/json")  # also without a body
        try:
            c.request(method, path, body=body, headers=headers)
            r = c.getresponse()
            data = r.read()
            peer = c.sock.getpeercert(binary_form=True)
            return (r.status, {k.lower(): v for k, v in r.getheaders()}, data,
                    hashlib.sha256(peer).hexdigest(), c.sock.version(), c.sock.cipher()[0])
        finally:
            c.close()

    def test_https_versions_and_ciphers(self):
        a = self.tls_agent()
        self.assertIn("luofleet-agent: listening on https://127.0.0.1:%d" % a.port,
                      a.stdout().decode())
        status, hdrs, body, fp, version, cipher = self.request(a, "GET", "/v1/state")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["state"], "normal")
        self.assertEqual(fp, fingerprint_of(self.pki.path("server.pem")))
        self.assertEqual(version, "TLSv1.3")
        self.assertIn(cipher, ("TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256",
                               "TLS_CHACHA20_POLY1305_SHA256"))
        status, _, _, _, version, cipher = self.request(
            a, "GET", "/healthz", self.context(maxv=ssl.TLSVersion.TLSv1_2))
        self.assertEqual((status, version), (200, "TLSv1.2"))
        self.assertRegex(cipher, r"^ECDHE-(ECDSA|RSA)-(AES\d+-GCM-SHA\d+|CHACHA20-POLY1305)$")
        # TLS 1.1 and older are refused in the handshake.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        except (ValueError, ssl.SSLError):
            self.skipTest("this OpenSSL cannot offer TLS 1.1 at all")
        with self.assertRaises((ssl.SSLError, ConnectionResetError)):
            self.request(a, "GET", "/healthz", ctx)
        # A CBC-only TLS 1.2 client finds no common cipher.
        ctx = self.context(maxv=ssl.TLSVersion.TLSv1_2)
        ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA")
        with self.assertRaises((ssl.SSLError, ConnectionResetError)):
            self.request(a, "GET", "/healthz", ctx)
        # Plain HTTP to the TLS port gets no HTTP answer.
        with socket.create_connection(("127.0.0.1", a.port), timeout=5) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                data = s.recv(4096)
            except (ConnectionResetError, socket.timeout):
                data = b""
            self.assertFalse(data.startswith(b"HTTP/1.1 200"), data)

    def test_sighup_reloads_certificate_without_dropping_connections(self):
        import shutil
        d = os.path.join(self.tmp, "live")
        os.makedirs(d)
        shutil.copy(self.pki.path("server.pem"), os.path.join(d, "cert.pem"))
        shutil.copy(self.pki.path("server.key"), os.path.join(d, "key.pem"))
        os.chmod(os.path.join(d, "key.pem"), 0o600)
        a = self.agent("--tls-cert=" + os.path.join(d, "cert.pem"),
                       "--tls-key=" + os.path.join(d, "key.pem"), port=0)
        old_fp = fingerprint_of(self.pki.path("server.pem"))
        new_fp = fingerprint_of(self.pki.path("server2.pem"))
        status, _, body, fp, _, _ = self.request(a, "GET", "/v1/state")
        self.assertEqual((status, fp), (200, old_fp))
        index = json.loads(body)["index"]

        # A long-poll on a connection made with the old certificate.
        result = {}

        def longpoll():
            try:
                result["r"] = self.request(a, "GET", "/v1/state?index=%d&wait=20s" % index,
                                           timeout=30)
            except Exception as e:  # noqa: BLE001 - reported below
                result["e"] = e

        t = threading.Thread(target=longpoll)
        t.start()
        deadline = time.monotonic() + 10
        while 'luofleet_longpoll_waiters 1\n' not in self.request(a, "GET", "/metrics")[2].decode():
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.02)

        # Rotate: new certificate and key in place (as a deploy tool writes them), SIGHUP.
        shutil.copy(self.pki.path("server2.pem"), os.path.join(d, "cert.pem"))
        shutil.copy(self.pki.path("server2.key"), os.path.join(d, "key.pem"))
        os.kill(a.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while self.request(a, "GET", "/healthz")[3] != new_fp:
            self.assertLess(time.monotonic(), deadline, "SIGHUP did not load the new certificate")
            time.sleep(0.05)
        self.assertIn("TLS: reloaded; certificate SHA-256 fingerprint now %s" % new_fp, a.log())

        # The old connection is alive: the change answers the long-poll on it.
        status, _, body, _, _, _ = self.request(a, "POST", "/v1/prepare")
        self.assertEqual(status, 200)
        t.join(30)
        self.assertNotIn("e", result, result.get("e"))
        status, _, body, fp, _, _ = result["r"]
        self.assertEqual(status, 200)
        self.assertGreater(json.loads(body)["index"], index)
        self.assertEqual(fp, old_fp)  # answered on the connection made before the reload

        # A broken rotation (key of another certificate): the running one stays.
        shutil.copy(self.pki.path("server.pem"), os.path.join(d, "cert.pem"))
        os.kill(a.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "TLS not reloaded" not in a.log():
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.05)
        self.assertIn("SIGHUP: TLS not reloaded, the running certificate stays: key %s does not "
                      "belong to the certificate %s" % (os.path.join(d, "key.pem"),
                                                        os.path.join(d, "cert.pem")), a.log())
        self.assertEqual(self.request(a, "GET", "/healthz")[3], new_fp)

    def test_mutual_tls(self):
        a = self.tls_agent("--tls-client-ca=" + self.pki.path("ca.pem"), "--anonymous=readyz")
        status, hdrs, body, _, _, _ = self.request(a, "GET", "/v1/state")
        self.assertEqual(status, 401)
        self.assertEqual(json.loads(body)["code"], "client-certificate-required")
        self.assertEqual(hdrs["www-authenticate"], 'Bearer realm="luofleet-agent"')
        # Open endpoints need no certificate.
        self.assertEqual(self.request(a, "GET", "/healthz")[0], 200)
        status, _, body, _, _, _ = self.request(a, "GET", "/readyz")
        self.assertEqual(status, 200)
        sec = [c for c in json.loads(body)["checks"] if c["name"] == "security"][0]
        self.assertEqual(sec["detail"], "TLS, client certificates")

        for bad in ("client-wrong-ca", "client-server-only"):
            try:
                status, _, body, _, _, _ = self.request(a, "POST", "/v1/prepare",
                                                        self.context(client=bad))
            except (ssl.SSLError, ConnectionResetError) as e:
                self.fail("%s: the handshake should pass and the request be refused: %r"
                          % (bad, e))
            self.assertEqual(status, 401, bad)
            self.assertEqual(json.loads(body)["code"], "invalid-credentials", bad)
        self.assertEqual(a.sim_kernel()["state"], "normal")

        status, _, body, _, _, _ = self.request(a, "POST", "/v1/prepare",
                                                self.context(client="client"))
        self.assertEqual(status, 200, body)
        doc = json.loads(body)
        self.assertEqual(doc["state"], "prepared")
        self.assertEqual(doc["operation"]["requested_by"], "cert:rollout-1")

    def verifications(self, a):
        body = self.request(a, "GET", "/metrics", self.context(client="client"))[2].decode()
        m = re.search(r"^luofleet_tls_client_verifications_total (\d+)$", body, re.M)
        self.assertIsNotNone(m, body)
        return int(m.group(1))

    def test_client_certificate_verified_once_per_connection(self):
        a = self.tls_agent("--tls-client-ca=" + self.pki.path("ca.pem"))
        base = self.verifications(a)  # its own connection: one verification
        self.assertEqual(base, 1)
        c = http.client.HTTPSConnection("127.0.0.1", a.port, context=self.context(client="client"),
                                        timeout=10)
        try:
            for _ in range(5):
                c.request("GET", "/v1/state")
                r = c.getresponse()
                r.read()
                self.assertEqual(r.status, 200)
            self.assertEqual(self.verifications(a), base + 1 + 1)  # this one + the metrics read
            # A reload (new credentials generation) verifies the open connection again.
            os.kill(a.pid, signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "TLS: reloaded" not in a.log():
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.05)
            for _ in range(3):
                c.request("GET", "/v1/state")
                r = c.getresponse()
                r.read()
                self.assertEqual(r.status, 200)
            self.assertEqual(self.verifications(a), base + 2 + 1 + 1)
        finally:
            c.close()

    def test_client_certificate_role_and_tokens(self):
        tokens = os.path.join(self.tmp, "tokens")
        p = subprocess.run([harness.agent_path(), "token", "ops", "operator"],
                           capture_output=True, timeout=10)
        token = p.stdout.decode().strip()
        with open(tokens, "w") as f:
            f.write(p.stderr.decode())
        os.chmod(tokens, 0o600)
        a = self.tls_agent("--tls-client-ca=" + self.pki.path("ca.pem"),
                           "--tls-client-role=viewer", "--tokens=" + tokens)
        cctx = self.context(client="client")
        self.assertEqual(self.request(a, "GET", "/v1/state", cctx)[0], 200)
        status, _, body, _, _, _ = self.request(a, "POST", "/v1/prepare", cctx)
        self.assertEqual(status, 403)
        self.assertEqual(json.loads(body)["detail"],
                         "cert:rollout-1 has role viewer; this request needs operator")
        # Certificate and token: the token's role.
        status, _, body, _, _, _ = self.request(a, "POST", "/v1/prepare", cctx,
                                                headers={"Authorization": "Bearer " + token})
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["operation"]["requested_by"], "token:ops")

    def test_start_up_refusals(self):
        p = self.pki.path
        os.chmod(p("server2.key"), 0o644)
        try:
            cases = (
                (["--tls-cert=" + p("server.pem")], 2, "--tls-cert and --tls-key go together"),
                (["--tls-client-ca=" + p("ca.pem")], 2,
                 "--tls-client-ca needs --tls-cert and --tls-key"),
                (["--tls-cert=" + p("server.pem"), "--tls-key=" + p("client.key")], None,
                 "key %s does not belong to the certificate %s" % (p("client.key"),
                                                                    p("server.pem"))),
                (["--tls-cert=" + p("server2.pem"), "--tls-key=" + p("server2.key")], None,
                 "key %s has mode 0644: a private key must not be accessible to others"
                 % p("server2.key")),
                (["--tls-cert=" + p("server.key"), "--tls-key=" + p("server.key")], None,
                 "certificate %s:" % p("server.key")),
                (["--tls-cert=" + p("server.pem"), "--tls-key=" + p("server.key"),
                  "--tls-client-ca=" + p("server.ext")], None,
                 "client CA bundle %s:" % p("server.ext")),
            )
            for i, (args, code, msg) in enumerate(cases):
                a = self.agent(start=False, name="r%d" % i)
                r = subprocess.run(a.command() + args, capture_output=True, timeout=20)
                if code is None:
                    self.assertNotEqual(r.returncode, 0, args)
                else:
                    self.assertEqual(r.returncode, code, args)
                self.assertIn(msg, r.stderr.decode(), args)
                self.assertNotIn(b"listening on", r.stdout, args)
        finally:
            os.chmod(p("server2.key"), 0o600)


if __name__ == "__main__":
    unittest.main(verbosity=2)
