#!/usr/bin/env python3
"""test_badinput.py: hostile and broken input against the running agent: malformed HTTP
(request lines, versions, Host, NUL bytes, folded headers, conflicting Content-Length /
Transfer-Encoding smuggling attempts, chunk sizes), invalid UTF-8, huge, negative and
overflowing numbers, duplicate JSON keys, deep nesting, wrong types for every body field,
path traversal in kernel staging paths and header injection. Each gets a clear answer
(problem+json with a stable code where the agent answers; libmicrohttpd's own early answers
are HTML: their status is asserted), and after each the agent still answers GET /v1/state
and its process is alive.

Requests with bodies or framing Prism cannot carry go to the agent directly (raw sockets or
Agent.direct()); well-formed JSON requests go through the contract proxy."""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import AgentTestCase, raw_http  # noqa: E402

setUpModule, tearDownModule = harness.module_fixtures(__file__)

JSON = {"Content-Type": "application/json"}
SHA0 = "0" * 64
SCALE = harness.SCALE
# Started as root, the agent runs its network side as an unprivileged user, which cannot
# reach the test's private temporary directories: keep root there (the kernel calls are
# still separated) where a test needs its files read.
AS_ROOT = ["--user=root"] if os.geteuid() == 0 else []


def raw_exchange(port, data, timeout=5.0):
    """Send bytes, read until the agent closes (or timeout): everything it sent."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    out = b""
    try:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            out += b
    finally:
        s.close()
    return out


def head_lines(raw):
    """The header lines of the first answer in raw bytes."""
    head = raw.split(b"\r\n\r\n", 1)[0]
    return head.split(b"\r\n")[1:]


class BadInputTestCase(AgentTestCase):

    def assertAlive(self, a):
        """The agent still serves, and its process runs."""
        r = a.direct().get("/v1/state")
        self.assertEqual(r.status, 200, r)
        self.assertIsNone(a.proc.poll(), "the agent exited")

    def assertNoInjectedHeader(self, r):
        names = [k.lower() for k, _ in r.header_list]
        self.assertNotIn("x-injected", names, r)
        for k, v in r.header_list:
            self.assertNotIn("\r", v, r)
            self.assertNotIn("\n", v, r)


class MalformedHTTPTest(BadInputTestCase):

    def test_answered_by_libmicrohttpd(self):
        # Refused before the agent sees a request: MHD's own answer, an HTML body.
        a = self.agent()
        post = b"POST /v1/finish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        cases = [
            ("bad version", b"GET /v1/state HTTP/9.9\r\nHost: x\r\n\r\n", 505),
            ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
            ("no Host on HTTP/1.1", b"GET /v1/state HTTP/1.1\r\n\r\n", 400),
            ("header without colon", b"GET /v1/state HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n",
             400),
            ("bare CR", b"GET /v1/state HTTP/1.1\rHost: x\r\n\r\n", 400),
            ("whitespace before the first header",
             b"GET /v1/state HTTP/1.1\r\n Host: x\r\n\r\n", 400),
            ("negative Content-Length", post + b"Content-Length: -1\r\n\r\n{}", 400),
            ("Content-Length with junk", post + b"Content-Length: 2x\r\n\r\n{}", 400),
            ("Content-Length with a sign", post + b"Content-Length: +2\r\n\r\n{}", 400),
            ("Content-Length past 2^64",
             post + b"Content-Length: 99999999999999999999999\r\n\r\n{}", 413),
            ("chunk size past 2^64", post + b"Transfer-Encoding: chunked\r\n\r\n"
             b"FFFFFFFFFFFFFFFFFF\r\n{}\r\n0\r\n\r\n", 413),
            ("chunk size not hex", post + b"Transfer-Encoding: chunked\r\n\r\n"
             b"zz\r\n{}\r\n0\r\n\r\n", 400),
            ("head past --max-header-bytes",
             b"GET /v1/state HTTP/1.1\r\nHost: x\r\nX-Pad: %s\r\n\r\n" % (b"p" * 20000), 431),
        ]
        for name, data, status in cases:
            with self.subTest(case=name):
                r = raw_http("127.0.0.1", a.port, data)
                self.assertEqual(r.status, status, r)
                self.assertEqual(r.header("Connection"), "close", r)
                self.assertAlive(a)
        # HTTP/1.0 needs no Host.
        self.assertEqual(raw_http("127.0.0.1", a.port,
                                  b"GET /v1/state HTTP/1.0\r\n\r\n").status, 200)
        # Counted from MHD's log line (it calls nothing of ours): the 400s, the 413s, the 431.
        for reason, n in (("malformed", 8), ("body_too_large", 2), ("header_too_large", 1)):
            self.assertEqual(a.direct().metric(
                'luofleet_http_rejected_total{reason="%s"}' % reason), n, reason)

    def test_framing_refused_by_the_agent(self):
        # RFC 9112 framing MHD lets through but a proxy may frame differently (request
        # smuggling): 400 malformed-request before the body is read, then the connection
        # closes, so nothing the client sent after the head is ever taken as a request.
        a = self.agent()
        post = b"POST /v1/finish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        smuggled = b"GET /v1/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        cases = [
            ("two Content-Length", post + b"Content-Length: 2\r\nContent-Length: 45\r\n\r\n{}"
             + smuggled),
            ("two equal Content-Length", post + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n"
             b"{}" + smuggled),
            ("Content-Length and Transfer-Encoding", post + b"Content-Length: 45\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n" + smuggled),
            ("gzip, chunked", post + b"Transfer-Encoding: gzip, chunked\r\n\r\n"
             b"2\r\n{}\r\n0\r\n\r\n"),
            ("unknown coding", post + b"Transfer-Encoding: xchunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"),
            ("identity", post + b"Transfer-Encoding: identity\r\n\r\n{}"),
            ("two Transfer-Encoding", post + b"Transfer-Encoding: chunked\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"),
            ("two Host", b"GET /v1/state HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"),
            ("space before colon", b"GET /v1/state HTTP/1.1\r\nHost: x\r\n"
             b"Content-Length : 45\r\n\r\n" + smuggled),
            ("space in a name", b"GET /v1/state HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n"),
            ("folded Content-Length", post + b"Content-Length:\r\n 2\r\n\r\n{}" + smuggled),
            ("folded Transfer-Encoding", post + b"Transfer-Encoding:\r\n chunked\r\n\r\n"
             b"2\r\n{}\r\n0\r\n\r\n" + smuggled),
            ("control character in a value", b"GET /v1/state HTTP/1.1\r\nHost: x\r\n"
             b"X-A: a\x01b\r\n\r\n"),
            ("DEL in a value", b"GET /v1/state HTTP/1.1\r\nHost: x\r\nX-A: a\x7fb\r\n\r\n"),
        ]
        for name, data in cases:
            with self.subTest(case=name):
                out = raw_exchange(a.port, data)
                self.assertEqual(out.count(b"HTTP/1.1 "), 1, out)
                status, body = out.split(b"\r\n", 1)[0], out.split(b"\r\n\r\n", 1)[1]
                self.assertEqual(status, b"HTTP/1.1 400 Bad Request", out)
                self.assertIn(b"Connection: close", head_lines(out), out)
                self.assertIn(b"Content-Type: application/problem+json", head_lines(out))
                p = json.loads(body)
                self.assertEqual((p["status"], p["code"]), (400, "malformed-request"), p)
                self.assertAlive(a)
        # Each counted, none routed: /v1/finish in state normal would have been 409.
        self.assertEqual(a.direct().metric(
            'luofleet_http_rejected_total{reason="malformed"}'), len(cases))
        self.assertEqual(a.direct().metric(
            'luofleet_http_requests_total{route="unmatched",method="POST",code="400"}'), 9)
        # Plain chunked is fine.
        r = a.direct().request("POST", "/v1/finish", body=b"{}", headers=JSON, chunked=True)
        self.assertProblem(r, 409, "invalid-transition")

    def test_folded_if_match_is_not_dropped(self):
        # MHD 0.9.75 appends a folded line to the header's name: a folded If-Match would
        # vanish and the request would run without its precondition. Refused instead.
        a = self.agent()
        self.assertEqual(a.direct().post("/v1/prepare").status, 200)
        for value in (b'"999"\r\n x', b'\r\n "999"', b'"999"\r\n\t"998"'):
            with self.subTest(value=value):
                out = raw_exchange(a.port, b"POST /v1/cancel HTTP/1.1\r\nHost: x\r\n"
                                   b"If-Match: " + value + b"\r\nContent-Length: 0\r\n\r\n")
                self.assertTrue(out.startswith(b"HTTP/1.1 400 "), out)
                self.assertEqual(json.loads(out.split(b"\r\n\r\n", 1)[1])["code"],
                                 "malformed-request")
        self.assertEqual(a.direct().state()["state"], "prepared")
        self.assertAlive(a)

    def test_unparseable_request_lines(self):
        a = self.agent("--header-timeout=1s")
        # No space to split at: MHD closes the connection without an answer.
        for data in (b"GET\t/v1/state\tHTTP/1.1\r\nHost: x\r\n\r\n", b"garbage\r\n\r\n"):
            with self.subTest(data=data):
                self.assertEqual(raw_exchange(a.port, data), b"")
                self.assertAlive(a)
        # Leading NUL bytes read as empty lines: the head never completes, and the
        # request deadline cuts the connection.
        t = time.monotonic()
        self.assertEqual(raw_exchange(a.port, b"\x00\x01\x02garbage\r\n\r\n", timeout=10), b"")
        self.assertLess(time.monotonic() - t, 3 * SCALE)
        self.assertAlive(a)

    def test_nul_bytes(self):
        a = self.agent()
        d = a.direct()
        n = d.state()["index"]
        cases = [
            # MHD cuts the request target at a raw NUL.
            (b"GET /v1/st\x00ate HTTP/1.1\r\nHost: x\r\n\r\n", 404, "not-found"),
            # A percent-encoded NUL stays encoded (a decoded one would cut the string).
            (b"GET /v1/state%00 HTTP/1.1\r\nHost: x\r\n\r\n", 404, "not-found"),
            (b"GET /v1/state%00junk HTTP/1.1\r\nHost: x\r\n\r\n", 404, "not-found"),
            (b"GET /v1/state?index=%d%%00&wait=1s HTTP/1.1\r\nHost: x\r\n\r\n" % n, 400,
             "invalid-query"),
            (b"GET /v1/history?kind=transition%00x HTTP/1.1\r\nHost: x\r\n\r\n", 400,
             "invalid-query"),
            # A NUL in a header value: MHD keeps what precedes it; the precondition holds.
            (b"POST /v1/prepare HTTP/1.1\r\nHost: x\r\nIf-Match: \"999\"\x00\"%d\"\r\n"
             b"Content-Type: application/json\r\nContent-Length: 0\r\n\r\n" % n, 412,
             "precondition-failed"),
        ]
        for data, status, code in cases:
            with self.subTest(data=data):
                r = raw_http("127.0.0.1", a.port, data)
                self.assertProblem(r, status, code)
                self.assertAlive(a)
        # JSON: \u0000 is refused by the parser.
        r = d.post("/v1/prepare", body=b'{"reason":"a\\u0000b"}', headers=JSON)
        self.assertProblem(r, 400, "malformed-json")
        self.assertEqual(d.state()["state"], "normal")

    def test_methods_and_targets(self):
        a = self.agent()
        cases = [
            (b"get /v1/state HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method-not-allowed"),
            (b"A" * 300 + b" /v1/state HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method-not-allowed"),
            (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 404, "not-found"),
            (b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: x\r\n\r\n", 404, "not-found"),
            (b"GET /v1/../v1/state HTTP/1.1\r\nHost: x\r\n\r\n", 404, "not-found"),
            (b"GET /v1/%2e%2e/v1/state HTTP/1.1\r\nHost: x\r\n\r\n", 404, "not-found"),
            (b"GET //v1/state HTTP/1.1\r\nHost: x\r\n\r\n", 404, "not-found"),
        ]
        for data, status, code in cases:
            with self.subTest(data=data[:40]):
                self.assertProblem(raw_http("127.0.0.1", a.port, data), status, code)
                self.assertAlive(a)


class EncodingTest(BadInputTestCase):

    def test_invalid_utf8(self):
        a = self.agent()
        d = a.direct()
        r = raw_http("127.0.0.1", a.port, b"GET /v1/st\xffate HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertProblem(r, 404, "not-found")
        for q in (b"index=\xff", b"index=%ff", b"index=1&wait=\xc3\x28", b"since=%c0%80"):
            with self.subTest(query=q):
                r = raw_http("127.0.0.1", a.port,
                             b"GET /v1/%s?%s HTTP/1.1\r\nHost: x\r\n\r\n"
                             % (b"history" if q.startswith(b"since") else b"state", q))
                self.assertProblem(r, 400, "invalid-query")
                self.assertAlive(a)
        bodies = [b'{"reason":"\xff"}', b'{"reason":"\xc0\xaf"}', b'{"reason":"\xed\xa0\x80"}',
                  b'{"operation_id":"a\xfeb"}', b'{"\xff":1}', b'{"reason":"\\ud800"}',
                  b'{"reason":"\\udc00\\ud800"}']
        for body in bodies:
            with self.subTest(body=body):
                r = d.post("/v1/prepare", body=body, headers=JSON)
                self.assertProblem(r, 400, "malformed-json")
                self.assertAlive(a)
        r = d.put("/v1/kernel", body=b'{"kernel":{"path":"/boot/\xff","sha256":"%s"}}'
                  % SHA0.encode(), headers=JSON)
        self.assertProblem(r, 400, "malformed-json")
        self.assertEqual(d.state()["state"], "normal")


class NumberTest(BadInputTestCase):

    def test_query_numbers(self):
        a = self.agent()
        c = a.client()
        n = c.state()["index"]
        bad = [
            "index=99999999999999999999999", "index=18446744073709551616",
            "index=18446744073709551615", "index=9223372036854775808", "index=-1",
            "index=-9223372036854775808", "index=+1", "index=-0", "index=1e3", "index=0x10",
            "index=1.0", "index=", "index=%20" + "1", "index=1%20",
            "index=%d&wait=1e309" % n, "index=%d&wait=-1s" % n, "index=%d&wait=-0" % n,
            "index=%d&wait=99999999999999999999s" % n,
            "index=%d&wait=18446744073709551616ms" % n, "index=%d&wait=18446744073709551615" % n,
            "index=%d&wait=1.5s" % n, "index=%d&wait=" % n, "index=%d&wait=NaN" % n,
            "index=%d&wait=inf" % n, "index=1&index=2", "wait=1s",
        ]
        for q in bad:
            with self.subTest(query=q):
                r = a.direct().get("/v1/state?" + q)
                self.assertProblem(r, 400, "invalid-query")
                self.assertAlive(a)
        # The largest index answers at once (a client from the future); wait=0 too.
        self.assertStateDoc(c.get("/v1/state?index=9223372036854775807"))
        self.assertStateDoc(c.get("/v1/state?index=%d&wait=0" % n))
        for q in ("since=99999999999999999999999", "since=-1", "since=18446744073709551616",
                  "limit=0", "limit=-1", "limit=18446744073709551617", "limit=1001"):
            with self.subTest(query=q):
                self.assertProblem(a.direct().get("/v1/history?" + q), 400, "invalid-query")
        for v in ("99999999999999999999999", "-1", "18446744073709551616", "1e3", ""):
            with self.subTest(last_event_id=v):
                r = a.direct().get("/v1/events", headers={"Last-Event-ID": v})
                self.assertProblem(r, 400, "invalid-query")
        self.assertAlive(a)

    def test_json_numbers(self):
        a = self.agent()
        d = a.direct()
        for body in (b'{"reason":1e309}', b'{"reason":-1e309}',
                     b'{"reason":99999999999999999999999}',
                     b'{"reason":18446744073709551616}', b'{"operation_id":-99999999999999999999}'):
            with self.subTest(body=body):
                self.assertProblem(d.post("/v1/prepare", body=body, headers=JSON), 400,
                                   "malformed-json")
        for body in ({"reason": 2 ** 63 - 1}, {"operation_id": -1}, {"reason": 1.5e300}):
            with self.subTest(body=body):
                # (Directly: the contract proxy would turn 2^63-1 into a float.)
                r = d.post("/v1/prepare", body=json.dumps(body).encode(), headers=JSON)
                self.assertProblem(r, 400, "invalid-field", field=list(body)[0])
        self.assertEqual(d.state()["state"], "normal")
        self.assertAlive(a)


class JSONTest(BadInputTestCase):

    def test_duplicate_keys(self):
        a = self.agent()
        d = a.direct()
        for path, body in (("/v1/prepare", b'{"reason":"a","reason":"b"}'),
                           ("/v1/prepare", b'{"operation_id":"x","reason":"r","operation_id":"y"}'),
                           ("/v1/kernel", b'{"kernel":{"path":"/boot/a","path":"/etc/shadow",'
                                          b'"sha256":"%s"}}' % SHA0.encode()),
                           ("/v1/kernel", b'{"kernel":{"path":"/boot/a","sha256":"%s"},'
                                          b'"kernel":{"path":"/etc/shadow","sha256":"%s"}}'
                                          % (SHA0.encode(), SHA0.encode()))):
            with self.subTest(body=body):
                method = "PUT" if path == "/v1/kernel" else "POST"
                r = d.request(method, path, body=body, headers=JSON)
                self.assertProblem(r, 400, "malformed-json")
                self.assertIn("duplicate", r.json["detail"])
        self.assertEqual(d.state()["state"], "normal")
        self.assertProblem(d.get("/v1/kernel"), 404, "no-kernel-staged")
        self.assertAlive(a)

    def test_deep_nesting(self):
        # 100000 levels: within a 1 MiB body limit, refused by the parser's depth limit
        # (no recursion on our side); with the default 64 KiB limit, refused as too large.
        a = self.agent("--max-body-bytes=1048576")
        d = a.direct()
        deep = [b"[" * 100000 + b"]" * 100000,
                b'{"a":' * 100000 + b"1" + b"}" * 100000,
                b'{"reason":' + b"[" * 100000 + b"]" * 100000 + b"}",
                b'{"kernel":' + b'{"path":' * 50000 + b'"x"' + b"}" * 50001]
        for body in deep:
            with self.subTest(body=body[:12]):
                method, path = ("PUT", "/v1/kernel") if b"kernel" in body else ("POST",
                                                                                 "/v1/prepare")
                r = d.request(method, path, body=body, headers=JSON)
                self.assertProblem(r, 400, "malformed-json")
                self.assertIn("depth", r.json["detail"])
                self.assertAlive(a)
        a.stop()
        b = self.agent()
        r = b.direct().post("/v1/prepare", body=deep[0], headers=JSON)
        self.assertProblem(r, 413, "body-too-large")
        self.assertAlive(b)

    def test_not_an_object(self):
        a = self.agent()
        d = a.direct()
        for body in (b"[]", b'"x"', b"null", b"1", b"true", b"{", b"{}{}", b'{"a":1}x', b" ",
                     b"\xef\xbb\xbf{}"):
            with self.subTest(body=body):
                self.assertProblem(d.post("/v1/prepare", body=body, headers=JSON), 400,
                                   "malformed-json")
        self.assertAlive(a)


class WrongTypeTest(BadInputTestCase):

    WRONG = [1, 1.5, True, False, None, [], {}, ["x"], {"x": "y"}]

    def test_every_body_field(self):
        a = self.agent()
        c = a.client()
        records = len(c.all_records())
        good_kernel = {"path": "/boot/vmlinuz", "sha256": SHA0}
        cases = []
        for action in ("prepare", "cancel", "finish", "reboot"):
            for field in ("operation_id", "reason"):
                for v in self.WRONG:
                    cases.append(("POST", "/v1/" + action, {field: v}, field))
        for field in ("operation_id", "reason"):
            for v in self.WRONG:
                cases.append(("DELETE", "/v1/kernel", {field: v}, field))
                cases.append(("PUT", "/v1/kernel", {"kernel": good_kernel, field: v}, field))
        for v in self.WRONG + ["/boot/vmlinuz"]:
            if not isinstance(v, dict) or not v:
                cases.append(("PUT", "/v1/kernel", {"kernel": v}, "kernel"))
                cases.append(("PUT", "/v1/kernel", {"kernel": good_kernel, "initrd": v},
                              "initrd"))
        for which in ("kernel", "initrd"):
            for member in ("path", "sha256"):
                for v in self.WRONG:
                    f = dict(good_kernel, **{member: v})
                    body = {"kernel": f} if which == "kernel" else {"kernel": good_kernel,
                                                                    "initrd": f}
                    cases.append(("PUT", "/v1/kernel", body, member))
        for v in self.WRONG:
            cases.append(("PUT", "/v1/kernel", {"kernel": good_kernel, "cmdline": v}, "cmdline"))
        for method, path, body, field in cases:
            with self.subTest(method=method, path=path, body=body):
                r = c.request(method, path, json_body=body)
                self.assertProblem(r, 400, "invalid-field", field=field)
        self.assertEqual(c.state()["state"], "normal")
        self.assertProblem(c.get("/v1/kernel"), 404, "no-kernel-staged")
        self.assertEqual(len(c.all_records()), records)  # nothing was admitted
        self.assertAlive(a)


class StagingPathTest(BadInputTestCase):

    def setUp(self):
        super().setUp()
        self.allowed = os.path.join(self.tmp, "allowed")
        self.outside = os.path.join(self.tmp, "outside")
        os.mkdir(self.allowed)
        os.mkdir(self.outside)

    def file(self, directory, name, data):
        p = os.path.join(directory, name)
        with open(p, "wb") as f:
            f.write(data)
        return p, hashlib.sha256(data).hexdigest()

    @staticmethod
    def staging_dirs(a):
        """The --staging-dir values of the agent's command line, in order."""
        return [x.split("=", 1)[1] for x in a.command() if x.startswith("--staging-dir=")]

    def test_paths_must_be_inside_an_allowed_directory(self):
        a = self.agent("--staging-dir=" + self.allowed, *AS_ROOT)
        c = a.client()
        kpath, ksha = self.file(self.allowed, "vmlinuz", b"kernel image")
        opath, osha = self.file(self.outside, "secret", b"not a kernel")
        os.symlink(opath, os.path.join(self.allowed, "escape"))
        os.symlink(self.outside, os.path.join(self.allowed, "outdir"))
        os.symlink("vmlinuz", os.path.join(self.allowed, "current"))
        os.mkdir(os.path.join(self.allowed, "sub"))
        # Literally malformed: 400 before anything runs.
        literal = [
            "vmlinuz", "allowed/vmlinuz", "./vmlinuz", self.allowed + "/../outside/secret",
            self.allowed + "/./vmlinuz", self.allowed + "//vmlinuz", self.allowed + "/.",
            self.allowed + "/..", self.allowed + "/sub/../vmlinuz", "/", "",
            self.allowed + "/a\nb", self.allowed + "/a\rb", self.allowed + "/a\tb",
            self.allowed + "/" + "k" * 4100,
        ]
        for p in literal:
            with self.subTest(path=p[:80]):
                r = c.put("/v1/kernel", json_body={"kernel": {"path": p, "sha256": ksha}})
                self.assertProblem(r, 400, "invalid-field")
        # Outside once symlinks are resolved: 422 path-not-allowed, nothing read.
        outside = [
            opath, os.path.join(self.outside, "missing"), "/etc/passwd", "/dev/zero",
            os.path.join(self.allowed, "escape"), os.path.join(self.allowed, "outdir", "secret"),
            "/proc/self/root" + opath, "/proc/self/exe", self.allowed,
            self.allowed + "-sibling/vmlinuz",
        ] + ["/proc/self/fd/%d" % i for i in range(8)]
        for p in outside:
            with self.subTest(path=p):
                r = c.put("/v1/kernel", json_body={"kernel": {"path": p, "sha256": osha}})
                self.assertProblem(r, 422, "path-not-allowed", field="kernel")
                self.assertNotIn("actual_sha256", r.json)
        r = c.put("/v1/kernel", json_body={"kernel": {"path": kpath, "sha256": ksha},
                                           "initrd": {"path": opath, "sha256": osha}})
        self.assertProblem(r, 422, "path-not-allowed", field="initrd")
        # The problem names the allowed directories and the flag that sets them.
        self.assertEqual(r.json["allowed_dirs"], self.staging_dirs(a))
        self.assertEqual(r.json["detail"],
                         "initrd: %s is not inside an allowed staging directory (symbolic "
                         "links are not followed); allowed: %s (the agent's --staging-dir)"
                         % (opath, ", ".join(self.staging_dirs(a))))
        # A NUL cannot even be said in JSON.
        r = a.direct().put("/v1/kernel", body=b'{"kernel":{"path":"%s\\u0000x","sha256":"%s"}}'
                           % (kpath.encode(), ksha.encode()), headers=JSON)
        self.assertProblem(r, 400, "malformed-json")
        # Inside: a missing file is not found, a directory is not a regular file.
        r = c.put("/v1/kernel", json_body={"kernel": {"path": os.path.join(self.allowed, "no"),
                                                      "sha256": ksha}})
        self.assertProblem(r, 422, "file-not-found", field="kernel")
        r = c.put("/v1/kernel", json_body={"kernel": {"path": os.path.join(self.allowed, "sub"),
                                                      "sha256": ksha}})
        self.assertProblem(r, 422, "not-a-regular-file", field="kernel")
        self.assertProblem(c.get("/v1/kernel"), 404, "no-kernel-staged")
        # A refused path is a failed operation: replayed as such by its id.
        body = {"kernel": {"path": opath, "sha256": osha}, "operation_id": "outside-1"}
        self.assertProblem(c.put("/v1/kernel", json_body=body), 422, "path-not-allowed")
        r = c.put("/v1/kernel", json_body=body)
        self.assertProblem(r, 422, "path-not-allowed", replayed=True, operation_id="outside-1")
        # A symlink inside to a file inside is fine; the path is reported as given.
        cur = os.path.join(self.allowed, "current")
        d = self.assertStateDoc(c.put("/v1/kernel", json_body={"kernel": {"path": cur,
                                                                         "sha256": ksha}}))
        self.assertEqual(d["staged"]["kernel"], {"path": cur, "sha256": ksha, "size": 12})
        self.assertAlive(a)

    def test_default_directories(self):
        # Without --staging-dir: /boot and STATE_DIR/kernels; the test's files are in neither.
        class DefaultStagingAgent(harness.Agent):
            def command(self, args=None):
                return [x for x in super().command(args) if not x.startswith("--staging-dir=")]

        state = os.path.join(self.tmp, "st")
        kernels = os.path.join(state, "kernels")
        os.makedirs(kernels)
        k_path, k_sha = self.file(kernels, "vmlinuz", b"kernel")
        b_path, b_sha = self.file(self.outside, "vmlinuz", b"kernel")
        a = DefaultStagingAgent(self.tmp, state_dir=state, name="defaults",
                                port=harness.upstream_port())
        self._agents.append(a)
        a.start(args=AS_ROOT)
        self.assertNotIn("--staging-dir", " ".join(a.command()))
        c = a.client()
        self.assertProblem(c.put("/v1/kernel", json_body={"kernel": {"path": b_path,
                                                                     "sha256": b_sha}}),
                           422, "path-not-allowed")
        self.assertStateDoc(c.put("/v1/kernel", json_body={"kernel": {"path": k_path,
                                                                      "sha256": k_sha}}))
        self.assertAlive(a)


class HeaderInjectionTest(BadInputTestCase):

    def test_crlf_never_becomes_a_header(self):
        a = self.agent()
        c = a.client()
        d = a.direct()
        inj = "x\r\nX-Injected: 1\r\n\r\n"
        # operation_id: refused (its alphabet has no CR/LF).
        r = c.post("/v1/prepare", json_body={"operation_id": inj})
        self.assertProblem(r, 400, "invalid-field", field="operation_id")
        self.assertNoInjectedHeader(r)
        # reason: free text, accepted, and only ever JSON-escaped in bodies.
        r = c.post("/v1/prepare", json_body={"reason": inj, "operation_id": "inj-1"})
        self.assertStateDoc(r)
        self.assertNoInjectedHeader(r)
        self.assertEqual(r.json["operation"]["reason"], inj)
        r = c.post("/v1/prepare", json_body={"reason": inj, "operation_id": "inj-1"})
        self.assertNoInjectedHeader(r)
        for path in ("/v1/state", "/v1/history", "/v1/kernel", "/healthz", "/readyz"):
            with self.subTest(path=path):
                self.assertNoInjectedHeader(d.get(path))
        # Percent-encoded CR/LF in the target and the query.
        for target in (b"/v1/state%0d%0aX-Injected:%201", b"/v1/state?index=1%0d%0aX-Injected:%201",
                       b"/v1/state?x=%0d%0aX-Injected:%201&index=1%0d%0a",
                       b"/v1/history?kind=%0d%0aX-Injected:%201"):
            with self.subTest(target=target):
                out = raw_exchange(a.port, b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close"
                                   b"\r\n\r\n" % target)
                self.assertTrue(out.startswith(b"HTTP/1.1 "), out)
                self.assertFalse(any(h.lower().startswith(b"x-injected")
                                     for h in head_lines(out)), out)
        # If-Match, Last-Event-ID, Content-Type with control characters: refused whole.
        for name, value in ((b"If-Match", b'"1"\x0bX-Injected: 1'),
                            (b"Last-Event-ID", b"1\x0cX-Injected: 1"),
                            (b"Content-Type", b"application/json\x1b")):
            with self.subTest(header=name):
                out = raw_exchange(a.port, b"POST /v1/cancel HTTP/1.1\r\nHost: x\r\n%s: %s\r\n"
                                   b"Content-Length: 0\r\n\r\n" % (name, value))
                self.assertTrue(out.startswith(b"HTTP/1.1 400 "), out)
                self.assertFalse(any(h.lower().startswith(b"x-injected")
                                     for h in head_lines(out)), out)
        # An If-Match that does not match is echoed in the problem's detail, JSON-escaped.
        r = d.post("/v1/finish", headers={"If-Match": '"1", W/"x\\"y"'})
        self.assertProblem(r, 412, "precondition-failed")
        self.assertNoInjectedHeader(r)
        self.assertAlive(a)

    def test_metrics_count_the_refusals(self):
        a = self.agent()
        raw_exchange(a.port, b"GET /v1/state HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n")
        raw_http("127.0.0.1", a.port, b"GET /v1/state HTTP/1.1\r\n\r\n")
        d = a.direct()
        self.assertEqual(d.metric('luofleet_http_rejected_total{reason="malformed"}'), 2)
        body = a.client().get("/metrics").body
        if shutil.which("promtool"):
            p = subprocess.run(["promtool", "check", "metrics"], input=body,
                                       capture_output=True, timeout=30)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)


if __name__ == "__main__":
    harness.main()
