#!/usr/bin/env python3
"""test_download.py: PUT /v1/kernel with URLs (agent/download.c, docs/staging.md): a real HTTPS
artifact server on 127.0.0.1 (nginx, with a CA and certificate made here), file:// and plain
http (only with --allow-http), and a small Python server (TLS, same certificate) that
misbehaves on purpose: stalls, truncates, answers 500 before the file, trickles slowly.
Wrong digests, the size cap, retries, progress in a long-poll, detached Ed25519 signatures
(luofleetctl sign, --trusted-keys, --require-signature), and the previous kernel in the staged
record. After every failure nothing is staged and STATE_DIR/kernels holds no file."""

import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import AgentTestCase, make_file, wait_for  # noqa: E402

setUpModule_h, tearDownModule_h = harness.module_fixtures(__file__)

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

_srv = {}  # module-wide servers and files


def luofleetctl():
    return os.path.join(os.path.dirname(harness.agent_path()), "luofleetctl")


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def make_pki(d):
    """A test CA and a server certificate for 127.0.0.1 and localhost, made now."""
    ca_key, ca = os.path.join(d, "ca.key"), os.path.join(d, "ca.pem")
    key, csr, crt = (os.path.join(d, n) for n in ("server.key", "server.csr", "server.pem"))
    ext = os.path.join(d, "ext.cnf")
    run(OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=luofleet test CA")
    run(OPENSSL, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run(OPENSSL, "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", crt, "-days", "2", "-extfile", ext)
    # The agent's network process (nobody) reads the bundle at download time.
    os.chmod(ca, 0o644)
    return ca, crt, key


class Misbehaving(http.server.BaseHTTPRequestHandler):
    """/stall/NAME, /truncate/NAME, /flaky/NAME (500 until the second request), /slow/NAME
    (64 KiB every 100 ms), /big (announces no length, never ends), /file/NAME."""

    protocol_version = "HTTP/1.1"
    counts = {}
    lock = threading.Lock()

    def log_message(self, fmt, *args):
        pass

    def _file(self, name):
        with open(os.path.join(_srv["files"], name), "rb") as f:
            return f.read()

    def do_GET(self):
        parts = self.path.strip("/").split("/")
        kind, name = parts[0], parts[-1]
        with Misbehaving.lock:
            Misbehaving.counts[self.path] = Misbehaving.counts.get(self.path, 0) + 1
            n = Misbehaving.counts[self.path]
        try:
            if kind == "flaky" and n < 2:
                body = b"try again\n"
                self.send_response(500)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if kind == "big":
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                chunk = b"x" * 65536
                for _ in range(400):
                    self.wfile.write(chunk)
                return
            data = self._file(name)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if kind == "stall":
                self.wfile.write(data[:1000])
                self.wfile.flush()
                time.sleep(8)
            elif kind == "truncate":
                self.wfile.write(data[:len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            elif kind == "slow":
                for i in range(0, len(data), 65536):
                    self.wfile.write(data[i:i + 65536])
                    self.wfile.flush()
                    time.sleep(0.1)
            else:
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            pass


def start_python_server(crt, key):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Misbehaving)
    srv.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def start_nginx(d, files, crt, key):
    """nginx on two loopback ports: https (files) and plain http (files)."""
    https_port, http_port = harness.free_port(), harness.free_port()
    conf = os.path.join(d, "nginx.conf")
    user = "user root root;\n" if os.geteuid() == 0 else ""
    with open(conf, "w") as f:
        f.write("""%(user)sworker_processes 1;
pid %(d)s/nginx.pid;
error_log %(d)s/nginx-error.log warn;
daemon off;
events { worker_connections 64; }
http {
    access_log %(d)s/nginx-access.log;
    client_body_temp_path %(d)s/body;
    proxy_temp_path %(d)s/proxy;
    fastcgi_temp_path %(d)s/fastcgi;
    uwsgi_temp_path %(d)s/uwsgi;
    scgi_temp_path %(d)s/scgi;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:%(https)d ssl;
        ssl_certificate %(crt)s;
        ssl_certificate_key %(key)s;
        root %(files)s;
        location /limited/ { alias %(files)s/; limit_rate 256k; }
    }
    server {
        listen 127.0.0.1:%(http)d;
        root %(files)s;
    }
}
""" % {"user": user, "d": d, "https": https_port, "http": http_port, "crt": crt, "key": key,
       "files": files})
    err = open(os.path.join(d, "nginx.stderr"), "wb")
    with err:
        proc = subprocess.Popen([NGINX, "-p", d, "-e", os.path.join(d, "nginx-error.log"),
                                 "-c", conf], stdout=err, stderr=err)

    def up():
        if proc.poll() is not None:
            raise AssertionError("nginx exited: %s" % open(os.path.join(d, "nginx-error.log"))
                                 .read())
        try:
            socket.create_connection(("127.0.0.1", https_port), timeout=0.2).close()
            return True
        except OSError:
            return False
    wait_for(up, timeout=10, what="nginx listening")
    return proc, https_port, http_port


def setUpModule():
    setUpModule_h()
    base = os.environ.get("LUOFLEET_TEST_TMP") or None
    if base:
        os.makedirs(base, exist_ok=True)
    import tempfile
    d = tempfile.mkdtemp(prefix="lf-it-download-srv-", dir=base)
    os.chmod(d, 0o755)
    harness.traversable(d)
    os.chmod(d, 0o755)
    files = os.path.join(d, "files")
    os.mkdir(files)
    os.chmod(files, 0o755)
    _srv["dir"], _srv["files"] = d, files
    _srv["ca"], crt, key = make_pki(d)
    _srv["kernel"] = make_file(files, "vmlinuz", 300000)
    _srv["initrd"] = make_file(files, "initrd.img", 70000)
    _srv["slowk"] = make_file(files, "vmlinuz-slow", 1300000)
    for n in os.listdir(files):
        os.chmod(os.path.join(files, n), 0o644)
    _srv["nginx"], _srv["https"], _srv["http"] = start_nginx(d, files, crt, key)
    _srv["py"] = start_python_server(crt, key)
    _srv["py_port"] = _srv["py"].server_address[1]


def tearDownModule():
    try:
        if _srv.get("py"):
            _srv["py"].shutdown()
        if _srv.get("nginx"):
            _srv["nginx"].terminate()
            _srv["nginx"].wait(10)
        if _srv.get("dir") and not os.environ.get("LUOFLEET_TEST_KEEP"):
            shutil.rmtree(_srv["dir"], ignore_errors=True)
    finally:
        tearDownModule_h()


def nginx_url(path):
    return "https://127.0.0.1:%d/%s" % (_srv["https"], path)


def py_url(path):
    return "https://127.0.0.1:%d/%s" % (_srv["py_port"], path)


class DownloadTest(AgentTestCase):

    def doc(self, r, status=200):
        """A state document answer. (Its members are checked by assertStateDoc in the other
        suites; here only what staging concerns, so that new document members elsewhere do
        not fail this suite.)"""
        self.assertEqual(r.status, status, r)
        self.assertEqual(r.content_type, "application/json", r)
        self.assertEqual(r.header("ETag"), '"%d"' % r.json["index"], r)
        return r.json

    def dl_agent(self, *args):
        return self.agent("--ca-bundle=%s" % _srv["ca"], *args)

    def kernels_dir(self, a):
        return os.path.join(a.state_dir, "kernels")

    def stage(self, c, body, op_id):
        body = dict(body, operation_id=op_id)
        r = c.put("/v1/kernel", json_body=body)
        self.assertEqual(r.status, 202, r)
        d = self.doc(r, status=202)
        self.assertEqual(d["operation"]["id"], op_id)
        self.assertEqual(d["operation"]["status"], "running")
        return self.wait_done(c, op_id)

    def wait_done(self, c, op_id, timeout=30):
        def done():
            op = c.state()["operation"]
            return op if op and op["id"] == op_id and op["status"] != "running" else None
        op = wait_for(done, timeout=timeout, interval=0.05, what="operation %s" % op_id)
        self.assertOperation(op, action="stage", id=op_id)
        return op

    def assertNothingLeft(self, a, c):
        self.assertIsNone(c.state()["staged"])
        kd = self.kernels_dir(a)
        left = os.listdir(kd) if os.path.isdir(kd) else []
        self.assertEqual(left, [], "files left in %s" % kd)

    def assertFailed(self, a, c, op, code, op_id=None):
        self.assertEqual(op["status"], "failed", op)
        self.assertEqual(op["error"]["code"], code, op)
        self.assertNothingLeft(a, c)
        if op_id:
            # A replay answers the stored problem, nothing tried again.
            r = c.put("/v1/kernel", json_body={"kernel": {"url": "https://127.0.0.1:1/x",
                                                          "sha256": "0" * 64},
                                               "operation_id": op_id})
            return self.assertProblem(r, r.status, code, replayed=True)
        return None

    # -- success paths

    def test_https_kernel_and_initrd(self):
        a = self.dl_agent()
        c = a.client()
        kpath, ksha = _srv["kernel"]
        ipath, isha = _srv["initrd"]
        op = self.stage(c, {"kernel": {"url": nginx_url("vmlinuz"), "sha256": ksha.upper()},
                            "initrd": {"url": nginx_url("initrd.img"), "sha256": isha},
                            "cmdline": "console=ttyS0"}, "dl-1")
        self.assertEqual(op["status"], "succeeded", op)
        st = c.state()["staged"]
        kd = os.path.realpath(self.kernels_dir(a))
        self.assertEqual(st["kernel"], {"path": os.path.join(kd, "vmlinuz-" + ksha),
                                        "sha256": ksha, "size": 300000,
                                        "url": nginx_url("vmlinuz")})
        self.assertEqual(st["initrd"]["url"], nginx_url("initrd.img"))
        self.assertEqual(st["initrd"]["path"], os.path.join(kd, "initrd-" + isha))
        self.assertEqual(sorted(os.listdir(kd)), sorted(["vmlinuz-" + ksha, "initrd-" + isha]))
        self.assertEqual(harness.sha256_file(st["kernel"]["path"]), ksha)
        self.assertIsNone(st["signed_by"])
        # The kernel that runs now: the rollback target.
        self.assertEqual(st["previous"]["release"], c.state()["kernel"])
        self.assertIn("image_sha256", st["previous"])
        k = a.sim_kernel()["kexec"]
        self.assertEqual((k["kernel_sha256"], k["initrd_sha256"], k["cmdline"]),
                         (ksha, isha, "console=ttyS0"))
        # Progress records went to the journal; the finished operation has none.
        recs = c.history("kind=operation")["records"]
        prog = [x["operation"]["progress"] for x in recs if "progress" in x["operation"]]
        self.assertIn({"file": "kernel", "bytes": 300000, "total": 300000}, prog)
        self.assertIn({"file": "initrd", "bytes": 70000, "total": 70000}, prog)
        self.assertNotIn("progress", op)
        # One audit record for the request: its answer, the 202 (the end is in the journal).
        audits = [x for x in c.history("kind=audit")["records"] if x["action"] == "stage"]
        self.assertEqual([(x["result"]["status"], x["result"]["code"], x.get("operation_id"))
                          for x in audits], [(202, "accepted", "dl-1")])
        # A replay of the finished operation answers 200 with the document.
        r = c.put("/v1/kernel", json_body={"kernel": {"url": nginx_url("vmlinuz"),
                                                      "sha256": ksha}, "operation_id": "dl-1"})
        self.doc(r)

        # Staging again (by path) removes the superseded download.
        other, osha = make_file(self.tmp, "local-vmlinuz", 1000)
        d = self.doc(c.put("/v1/kernel", json_body={"kernel": {"path": other,
                                                                          "sha256": osha}}))
        self.assertEqual(d["staged"]["kernel"]["path"], other)
        self.assertEqual(os.listdir(kd), [])

    def test_file_url(self):
        a = self.dl_agent()
        c = a.client()
        served, ksha = _srv["kernel"]
        # file:/// is read only inside the staging directories (the test's folder): a file
        # elsewhere is refused like a path elsewhere, before any operation exists.
        r = c.put("/v1/kernel", json_body={"kernel": {"url": "file://" + served, "sha256": ksha}})
        self.assertProblem(r, 422, "path-not-allowed", field="kernel")
        self.assertIsNone(c.state()["operation"])
        kpath = shutil.copy(served, os.path.join(self.tmp, "vmlinuz-file-url"))
        op = self.stage(c, {"kernel": {"url": "file://" + kpath, "sha256": ksha}}, "dl-file")
        self.assertEqual(op["status"], "succeeded", op)
        self.assertEqual(c.state()["staged"]["kernel"]["url"], "file://" + kpath)
        op = self.stage(c, {"kernel": {"url": "file://" + kpath + ".missing",
                                       "sha256": ksha}}, "dl-file-2")
        self.assertEqual(op["error"]["code"], "download-failed", op)
        # The earlier staging is untouched by a failed one.
        self.assertEqual(c.state()["staged"]["kernel"]["sha256"], ksha)

    def test_http_needs_allow_http(self):
        kpath, ksha = _srv["kernel"]
        url = "http://127.0.0.1:%d/vmlinuz" % _srv["http"]
        a = self.dl_agent()
        c = a.client()
        r = c.put("/v1/kernel", json_body={"kernel": {"url": url, "sha256": ksha}})
        self.assertProblem(r, 400, "url-not-allowed", field="kernel")
        for bad in ("ftp://127.0.0.1/x", "gopher://x", "/just/a/path", "file://host/x"):
            r = c.put("/v1/kernel", json_body={"kernel": {"url": bad, "sha256": ksha}})
            self.assertProblem(r, 400, "url-not-allowed", field="kernel")
        self.assertIsNone(c.state()["operation"])  # refused before any operation
        a.stop()
        a2 = self.dl_agent("--allow-http")
        c2 = a2.client()
        op = self.stage(c2, {"kernel": {"url": url, "sha256": ksha}}, "dl-http")
        self.assertEqual(op["status"], "succeeded", op)

    def test_request_shape(self):
        a = self.dl_agent()
        c = a.client()
        kpath, ksha = _srv["kernel"]
        for body in ({"kernel": {"url": nginx_url("vmlinuz"), "path": kpath, "sha256": ksha}},
                     {"kernel": {"sha256": ksha}},
                     {"kernel": {"url": nginx_url("vmlinuz"), "sha256": ksha},
                      "initrd": {"path": kpath, "sha256": ksha}},
                     {"kernel": {"url": "https://127.0.0.1/a b", "sha256": ksha}},
                     {"kernel": {"url": nginx_url("vmlinuz"), "sha256": "12"}}):
            self.assertProblem(c.put("/v1/kernel", json_body=body), 400, "invalid-field")

    # -- failures: nothing staged, nothing left

    def test_wrong_digest(self):
        a = self.dl_agent()
        c = a.client()
        kpath, ksha = _srv["kernel"]
        wrong = "ab" * 32
        op = self.stage(c, {"kernel": {"url": nginx_url("vmlinuz"), "sha256": wrong}}, "dl-bad")
        p = self.assertFailed(a, c, op, "digest-mismatch", "dl-bad")
        self.assertEqual((p["expected_sha256"], p["actual_sha256"], p["field"]),
                         (wrong, ksha, "kernel"))
        self.assertEqual(p["status"], 422)
        # The kernel fine, the initrd wrong: the kernel goes too.
        isha = _srv["initrd"][1]
        op = self.stage(c, {"kernel": {"url": nginx_url("vmlinuz"), "sha256": ksha},
                            "initrd": {"url": nginx_url("vmlinuz"), "sha256": isha}}, "dl-bad2")
        p = self.assertFailed(a, c, op, "digest-mismatch", "dl-bad2")
        self.assertEqual(p["field"], "initrd")

    def test_server_errors(self):
        a = self.dl_agent("--download-retries=0")
        c = a.client()
        ksha = _srv["kernel"][1]
        op = self.stage(c, {"kernel": {"url": nginx_url("nope"), "sha256": ksha}}, "dl-404")
        p = self.assertFailed(a, c, op, "download-failed", "dl-404")
        self.assertEqual((p["status"], p["http_status"], p["attempts"]), (502, 404, 1))
        self.assertIsInstance(p["curl_error"], str)
        # The certificate is checked: without the CA bundle it fails.
        a.stop()
        a2 = self.agent("--download-retries=2")
        c2 = a2.client()
        op = self.stage(c2, {"kernel": {"url": nginx_url("vmlinuz"), "sha256": ksha}}, "dl-ca")
        p = self.assertFailed(a2, c2, op, "download-failed", "dl-ca")
        self.assertEqual(p["attempts"], 1)  # not retried: a certificate does not heal
        self.assertIsNone(p["http_status"])

    def test_truncated(self):
        a = self.dl_agent("--download-retries=0")
        c = a.client()
        ksha = _srv["kernel"][1]
        op = self.stage(c, {"kernel": {"url": py_url("truncate/vmlinuz"), "sha256": ksha}},
                        "dl-trunc")
        p = self.assertFailed(a, c, op, "download-failed", "dl-trunc")
        self.assertEqual(p["field"], "kernel")

    def test_stalled(self):
        a = self.dl_agent("--download-retries=0", "--download-timeout=2s",
                          "--download-connect-timeout=1s")
        c = a.client()
        ksha = _srv["kernel"][1]
        t = time.monotonic()
        op = self.stage(c, {"kernel": {"url": py_url("stall/vmlinuz"), "sha256": ksha}},
                        "dl-stall")
        self.assertLess(time.monotonic() - t, 7)
        p = self.assertFailed(a, c, op, "download-failed", "dl-stall")
        self.assertIn("timed out", p["curl_error"].lower() + " " + p["detail"].lower())

    def test_retry_after_500(self):
        a = self.dl_agent("--download-retries=2")
        c = a.client()
        ksha = _srv["kernel"][1]
        op = self.stage(c, {"kernel": {"url": py_url("flaky/vmlinuz"), "sha256": ksha}},
                        "dl-flaky")
        self.assertEqual(op["status"], "succeeded", op)
        self.assertEqual(Misbehaving.counts["/flaky/vmlinuz"], 2)
        # Without retries the 500 is the answer.
        a.stop()
        a2 = self.dl_agent("--download-retries=0")
        c2 = a2.client()
        Misbehaving.counts.pop("/flaky/vmlinuz", None)
        op = self.stage(c2, {"kernel": {"url": py_url("flaky/vmlinuz"), "sha256": ksha}},
                        "dl-flaky0")
        p = self.assertFailed(a2, c2, op, "download-failed", "dl-flaky0")
        self.assertEqual(p["http_status"], 500)

    def test_too_large(self):
        a = self.dl_agent("--download-max-bytes=100000", "--download-retries=0")
        c = a.client()
        ksha = _srv["kernel"][1]
        # Announced (Content-Length) and unannounced (a body without a length).
        op = self.stage(c, {"kernel": {"url": nginx_url("vmlinuz"), "sha256": ksha}}, "dl-big")
        p = self.assertFailed(a, c, op, "download-too-large", "dl-big")
        self.assertEqual(p["status"], 422)
        op = self.stage(c, {"kernel": {"url": py_url("big"), "sha256": ksha}}, "dl-big2")
        self.assertFailed(a, c, op, "download-too-large")

    def test_progress_in_long_poll(self):
        a = self.dl_agent()
        c = a.client()
        ksha = _srv["slowk"][1]
        events = harness.SSEStream(a.direct_url)
        self.addCleanup(events.close)
        r = c.put("/v1/kernel", json_body={"kernel": {"url": py_url("slow/vmlinuz-slow"),
                                                      "sha256": ksha},
                                           "operation_id": "dl-slow"})
        d = self.doc(r, status=202)
        index, seen = d["index"], []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = c.get("/v1/state?index=%d&wait=5s" % index, timeout=10)
            self.assertEqual(r.status, 200, r)
            d = r.json
            index = d["index"]
            op = d["operation"]
            if op["status"] != "running":
                break
            if "progress" in op:
                seen.append(op["progress"])
        self.assertEqual(op["status"], "succeeded", op)
        self.assertNotIn("progress", op)
        mid = [p for p in seen if 0 < p["bytes"] < 1300000]
        self.assertTrue(mid, seen)
        for p in seen:
            self.assertEqual(p["file"], "kernel", p)
            if p["bytes"]:
                self.assertEqual(p["total"], 1300000, p)
        self.assertEqual([p["bytes"] for p in seen], sorted(p["bytes"] for p in seen))
        # Throttled: ~1.3 MB over ~2 s does not make a record per 64 KiB chunk.
        self.assertLess(len(seen), 12, seen)
        # And in the event stream: operation events carrying progress, then the end.
        streamed = []
        while True:
            ev = events.next_event(timeout=10)
            op = ev["json"].get("operation") if ev.get("event") == "operation" else None
            if not op or op.get("id") != "dl-slow":
                continue
            if op["status"] != "running":
                break
            if "progress" in op:
                streamed.append(op["progress"]["bytes"])
        self.assertTrue([b for b in streamed if 0 < b < 1300000], streamed)
        recs = c.history("kind=operation")["records"]
        self.assertTrue(any("progress" in x["operation"] for x in recs))

    # -- signatures

    def make_keys(self):
        keys = os.path.join(self.tmp, "trusted")
        os.mkdir(keys)
        os.chmod(keys, 0o755)
        priv = os.path.join(self.tmp, "release.key")
        run(OPENSSL, "genpkey", "-algorithm", "ed25519", "-out", priv)
        run(OPENSSL, "pkey", "-in", priv, "-pubout", "-out", os.path.join(keys, "release.pem"))
        os.chmod(os.path.join(keys, "release.pem"), 0o644)
        other = os.path.join(self.tmp, "other.key")
        run(OPENSSL, "genpkey", "-algorithm", "ed25519", "-out", other)
        return keys, priv, other

    def sign(self, key, ksha, cmdline, isha=None, key_id="release"):
        cmd = [luofleetctl(), "sign", "--key=" + key, "--kernel-sha256=" + ksha,
               "--cmdline=" + cmdline, "--key-id=" + key_id]
        if isha:
            cmd.append("--initrd-sha256=" + isha)
        return json.loads(run(*cmd).stdout)

    def test_signatures(self):
        keys, priv, other = self.make_keys()
        a = self.dl_agent("--trusted-keys=%s" % keys, "--require-signature")
        c = a.client()
        ksha, isha = _srv["kernel"][1], _srv["initrd"][1]
        body = {"kernel": {"url": nginx_url("vmlinuz"), "sha256": ksha},
                "initrd": {"url": nginx_url("initrd.img"), "sha256": isha},
                "cmdline": "ro quiet"}
        self.assertProblem(c.put("/v1/kernel", json_body=body), 422, "signature-required",
                           field="signature")
        sig = self.sign(priv, ksha, "ro quiet", isha)
        self.assertEqual(set(sig), {"key_id", "ed25519"})
        self.assertEqual(sig["key_id"], "release")
        # Signed over something else (another command line, no initrd, another key).
        for bad in (self.sign(priv, ksha, "ro quiet init=/bin/sh", isha),
                    self.sign(priv, ksha, "ro quiet"),
                    self.sign(other, ksha, "ro quiet", isha)):
            r = c.put("/v1/kernel", json_body=dict(body, signature=bad))
            self.assertProblem(r, 422, "signature-invalid", field="signature")
        r = c.put("/v1/kernel", json_body=dict(body, signature=dict(sig, key_id="nobody")))
        self.assertProblem(r, 422, "signature-invalid", field="signature")
        r = c.put("/v1/kernel", json_body=dict(body, signature={"key_id": "../x",
                                                                "ed25519": sig["ed25519"]}))
        self.assertProblem(r, 400, "invalid-field", field="signature")
        self.assertIsNone(c.state()["operation"])  # no refusal started anything
        op = self.stage(c, dict(body, signature=sig), "dl-signed")
        self.assertEqual(op["status"], "succeeded", op)
        self.assertEqual(c.state()["staged"]["signed_by"], "release")

        # By path too; the digest's case does not matter.
        kpath, _ = _srv["kernel"]
        a.stop()
        a2 = self.dl_agent("--trusted-keys=%s" % keys, "--require-signature",
                           "--staging-dir=%s" % os.path.realpath(_srv["files"]),
                           "--staging-dir=%s" % os.path.realpath(self.tmp))
        c2 = a2.client()
        pbody = {"kernel": {"path": kpath, "sha256": ksha.upper()}, "cmdline": "",
                 "signature": self.sign(priv, ksha, "")}
        d = self.doc(c2.put("/v1/kernel", json_body=pbody))
        self.assertEqual(d["staged"]["signed_by"], "release")

    def test_signature_without_trusted_keys(self):
        keys, priv, _ = self.make_keys()
        a = self.dl_agent()
        c = a.client()
        ksha = _srv["kernel"][1]
        body = {"kernel": {"url": nginx_url("vmlinuz"), "sha256": ksha}, "cmdline": "x",
                "signature": self.sign(priv, ksha, "x")}
        self.assertProblem(c.put("/v1/kernel", json_body=body), 422, "signature-invalid")

    def test_luofleetctl(self):
        r = subprocess.run([luofleetctl(), "--help"], stdout=subprocess.PIPE)
        self.assertEqual(r.returncode, 0)
        self.assertIn(b"luofleetctl sign", r.stdout)
        r = subprocess.run([luofleetctl(), "sign", "--key=/nonexistent"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.assertEqual(r.returncode, 2)
        _, priv, _ = self.make_keys()
        r = subprocess.run([luofleetctl(), "sign", "--key=" + priv, "--kernel-sha256=12",
                            "--cmdline="], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.assertEqual(r.returncode, 2)
        sig = json.loads(run(luofleetctl(), "sign", "--key=" + priv,
                             "--kernel-sha256=" + "a" * 64, "--cmdline=").stdout)
        self.assertEqual(sig["key_id"], "release")  # the key file's name without .key
        self.assertEqual(len(sig["ed25519"]), 88)


if __name__ == "__main__":
    harness.main()
