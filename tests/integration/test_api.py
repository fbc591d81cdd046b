#!/usr/bin/env python3
"""test_api.py: every endpoint of luofleet-agent's HTTP API and every request error, with
exact status codes, problem codes, Content-Types, headers and body members."""

import http.client
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import AgentTestCase, raw_http  # noqa: E402

JSON = {"Content-Type": "application/json"}

setUpModule, tearDownModule = harness.module_fixtures(__file__)


def agent_version():
    rc, out, _ = harness.run_agent(["--version"])
    assert rc == 0, out
    m = re.match(r"^luofleet-agent (\S+)\n$", out)
    assert m, repr(out)
    return m.group(1)


class StateDocumentTest(AgentTestCase):

    def test_get_state_fields_and_types(self):
        a = self.agent("--hostname=it-host", "--sim-release=6.99.1-it")
        r = a.client().get("/v1/state")
        d = self.assertStateDoc(r)
        self.assertEqual(r.header("Cache-Control"), "no-store")
        self.assertEqual(d["state"], "normal")
        self.assertEqual(d["index"], 1)  # the "start" record of a fresh journal
        self.assertEqual(d["hostname"], "it-host")
        self.assertEqual(d["kernel"], "6.99.1-it")
        self.assertEqual(d["backend"], "sim")
        self.assertEqual(d["agent_version"], agent_version())
        self.assertIsNone(d["staged"])
        self.assertIsNone(d["operation"])
        self.assertEqual(d["boot_id"], a.sim_kernel()["boot_id"])
        self.assertEqual(int(r.header("Content-Length")), len(r.body))

    def test_etag_and_if_none_match(self):
        a = self.agent()
        c = a.client()
        d = c.state()
        etag = '"%d"' % d["index"]
        for inm in (etag, "W/" + etag, "*", '"999", ' + etag, etag + ', "999"'):
            with self.subTest(if_none_match=inm):
                r = c.get("/v1/state", headers={"If-None-Match": inm})
                self.assertEqual(r.status, 304, r)
                self.assertEqual(r.body, b"")
                self.assertEqual(r.header("ETag"), etag)
        for inm in ('"999"', '"%d"' % (d["index"] + 1), "%d" % d["index"]):
            with self.subTest(if_none_match=inm):
                r = c.get("/v1/state", headers={"If-None-Match": inm})
                self.assertStateDoc(r)
        # After a change the old ETag no longer matches.
        self.assertEqual(c.post("/v1/prepare").status, 200)
        r = c.get("/v1/state", headers={"If-None-Match": etag})
        d2 = self.assertStateDoc(r)
        self.assertGreater(d2["index"], d["index"])
        self.assertEqual(r.header("ETag"), '"%d"' % d2["index"])

    def test_head_state(self):
        a = self.agent()
        c = a.direct()  # HEAD: Prism fails on it (500 FetchError)
        d = c.state()
        r = c.head("/v1/state")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, b"")
        self.assertEqual(r.content_type, "application/json")
        self.assertEqual(r.header("ETag"), '"%d"' % d["index"])
        r = c.head("/v1/state", headers={"If-None-Match": '"%d"' % d["index"]})
        self.assertEqual(r.status, 304, r)
        self.assertEqual(r.body, b"")


EMPTY_SESSIONS_SUMMARY = {"sessions": 0, "fds": 0, "bytes": 0, "outgoing": 0, "incoming": 0,
                          "retrieved": 0, "finished": 0, "workloads": 0}


class SessionsTest(AgentTestCase):
    """GET /v1/sessions and the state document's `interface` and `sessions` members on a sim
    agent without workloads, through the contract proxy (with workloads: test_sessions.py)."""

    def test_get_sessions_without_workloads(self):
        a = self.agent()
        c = a.client()
        r = c.get("/v1/sessions")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.content_type, "application/json")
        self.assertEqual(r.header("Cache-Control"), "no-store")
        d = dict(r.json)
        broker_id = d.pop("broker_id")
        self.assertRegex(broker_id, harness.UUID_RE)
        self.assertEqual(d, {"interface": "sessions", "sessions": [], "workloads": [],
                             "summary": EMPTY_SESSIONS_SUMMARY, "last_round": None,
                             "events_dropped": 0, "index": 1, "backend": "sim"})
        self.assertEqual(list(r.json), ["broker_id", "interface", "sessions", "workloads",
                                        "summary", "last_round", "events_dropped", "index",
                                        "backend"])
        # Nothing happened to journal, nothing moved the index.
        self.assertEqual(c.history("kind=session")["records"], [])
        self.assertEqual(c.state()["index"], 1)
        # A prepare asks the registered workloads (none): a round confirmed by all 0 of them;
        # index and backend are the state document's.
        self.assertEqual(c.post("/v1/prepare").status, 200)
        r = c.get("/v1/sessions")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["broker_id"], broker_id)  # the same broker all along
        self.assertEqual(r.json["last_round"], {"event_id": 1, "result": "confirmed", "asked": 0,
                                                "pending": [], "vetoed": [], "gone": []})
        self.assertEqual(r.json["summary"], EMPTY_SESSIONS_SUMMARY)
        self.assertEqual(r.json["index"], c.state()["index"])
        self.assertEqual(c.history("kind=session")["records"], [])

    def test_sessions_head_and_methods(self):
        a = self.agent()
        d = a.direct()  # HEAD and 405: Prism fails on the one and answers the other itself
        body = d.get("/v1/sessions").body
        r = d.head("/v1/sessions")
        self.assertEqual((r.status, r.body), (200, b""), r)
        self.assertEqual(r.content_type, "application/json")
        self.assertEqual(r.header("Cache-Control"), "no-store")
        self.assertEqual(int(r.header("Content-Length")), len(body))
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            with self.subTest(method=method):
                r = d.request(method, "/v1/sessions")
                self.assertProblem(r, 405, "method-not-allowed")
                self.assertEqual(r.header("Allow"), "GET, HEAD")

    def test_state_document_session_members(self):
        a = self.agent()
        c = a.client()
        r = c.get("/v1/state")  # checked against StateDocument by the proxy
        self.assertEqual(r.status, 200, r)
        d = r.json
        self.assertEqual(list(d)[-2:], ["interface", "sessions"])
        # Free text from the backend (describe): what it says may change, that it says it not.
        self.assertIsInstance(d["interface"], str)
        self.assertRegex(d["interface"], r"^sim\b")
        self.assertEqual(d["sessions"], EMPTY_SESSIONS_SUMMARY)
        self.assertEqual(d["sessions"], c.get("/v1/sessions").json["summary"])
        # The members stay through a cycle, in every state document.
        for path in ("/v1/prepare", "/v1/cancel"):
            r = c.post(path)
            self.assertEqual(r.status, 200, r)
            self.assertEqual((r.json["interface"], r.json["sessions"]),
                             (d["interface"], EMPTY_SESSIONS_SUMMARY))


class RoutingTest(AgentTestCase):

    def test_unknown_routes_404(self):
        a = self.agent()
        c = a.direct()  # Prism answers unknown paths itself
        for path in ("/", "/v1", "/v1/", "/v1/nope", "/v1/state/", "/v1/state/x", "/v2/state",
                     "/V1/STATE", "/healthz/", "/metrics.txt"):
            with self.subTest(path=path):
                self.assertProblem(c.get(path), 404, "not-found")
        self.assertProblem(c.post("/v1/nope", json_body={}), 404, "not-found")
        r = c.head("/v1/nope")
        self.assertEqual(r.status, 404, r)
        self.assertEqual(r.body, b"")

    def test_wrong_method_405_with_allow(self):
        a = self.agent()
        c = a.direct()  # Prism answers undocumented methods
        cases = [
            ("POST", "/v1/state", "GET, HEAD"),
            ("PUT", "/v1/state", "GET, HEAD"),
            ("DELETE", "/v1/state", "GET, HEAD"),
            ("PATCH", "/v1/state", "GET, HEAD"),
            ("POST", "/v1/events", "GET, HEAD"),
            ("GET", "/v1/prepare", "POST"),
            ("PUT", "/v1/prepare", "POST"),
            ("GET", "/v1/cancel", "POST"),
            ("DELETE", "/v1/reboot", "POST"),
            ("GET", "/v1/finish", "POST"),
            ("POST", "/v1/kernel", "PUT, GET, HEAD, DELETE"),
            ("PATCH", "/v1/kernel", "PUT, GET, HEAD, DELETE"),
            ("POST", "/v1/history", "GET, HEAD"),
            ("POST", "/healthz", "GET, HEAD"),
            ("PUT", "/readyz", "GET, HEAD"),
            ("DELETE", "/metrics", "GET, HEAD"),
        ]
        for method, path, allow in cases:
            with self.subTest(method=method, path=path):
                r = c.request(method, path)
                self.assertProblem(r, 405, "method-not-allowed")
                self.assertEqual(r.header("Allow"), allow, r)
        for method in ("OPTIONS", "TRACE", "FOO"):
            with self.subTest(method=method):
                r = c.request(method, "/v1/state")
                self.assertProblem(r, 405, "method-not-allowed")
                self.assertEqual(r.header("Allow"), "GET, HEAD", r)
                cases.append((method, "/v1/state", "GET, HEAD"))
        # The detail names the method actually sent (also one the agent does not know).
        for method, path, allow in cases:
            with self.subTest(method=method, path=path, member="detail"):
                r = c.request(method, path)
                self.assertEqual(r.json["detail"], "%s is not allowed on %s (allowed: %s)"
                                 % (method, path, allow), r)
        r = c.head("/v1/prepare")
        self.assertEqual(r.status, 405, r)
        self.assertEqual(r.header("Allow"), "POST")
        self.assertEqual(r.body, b"")
        # Nothing acted.
        self.assertEqual(c.state()["index"], 1)

    def test_absolute_form_request_target(self):
        # RFC 9112 3.2.2: a server must accept the absolute form (what a client sends to a
        # proxy); it names the same resource as the origin form.
        a = self.agent()
        c = a.direct()  # the absolute form needs hand-written requests anyway
        d = c.state()

        def absolute(target, method="GET"):
            req = ("%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n"
                   % (method, target, a.port)).encode()
            return raw_http("127.0.0.1", a.port, req, method=method)

        base = "http://127.0.0.1:%d" % a.port
        r = absolute(base + "/v1/state")
        self.assertEqual(self.assertStateDoc(r), d)
        r = absolute(base + "/v1/history?kind=start&limit=1")
        self.assertEqual(r.status, 200, r)
        self.assertEqual([x["kind"] for x in r.json["records"]], ["start"])
        r = absolute("HTTP://127.0.0.1:%d/healthz" % a.port)  # the scheme is case-insensitive
        self.assertEqual((r.status, r.json), (200, {"status": "ok"}), r)
        self.assertProblem(absolute(base + "/v1/nope"), 404, "not-found")
        r = absolute(base + "/v1/state", method="DELETE")
        self.assertProblem(r, 405, "method-not-allowed")
        self.assertEqual(r.json["detail"],
                         "DELETE is not allowed on /v1/state (allowed: GET, HEAD)")
        self.assertProblem(absolute(base), 404, "not-found")  # no path: "/"
        self.assertEqual(c.state()["index"], d["index"])


class UnixSocketTest(AgentTestCase):

    def test_tcp_and_unix_listeners_serve_one_agent(self):
        sock_path = os.path.join(self.socket_dir(), "agent.sock")
        a = self.agent("--listen=unix:%s" % sock_path)
        line = b"luofleet-agent: listening on unix:%s\n" % sock_path.encode()
        harness.wait_for(lambda: line in a.stdout(), what="the Unix listener's line")
        self.assertEqual(os.stat(sock_path).st_mode & 0o777, 0o660)

        class UnixConnection(http.client.HTTPConnection):
            def connect(self):
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(10)
                self.sock.connect(sock_path)

        def unix(method, path):
            conn = UnixConnection("localhost", timeout=10)
            try:
                conn.request(method, path)
                r = conn.getresponse()
                return harness.Response(r.status, r.reason, r.getheaders(), r.read())
            finally:
                conn.close()

        c = a.client()
        n = c.state()["index"]
        self.assertEqual(self.assertStateDoc(unix("GET", "/v1/state")), c.state())
        # A long-poll on the Unix socket wakes on a change made over TCP, and back.
        lp = harness.Background(unix, "GET", "/v1/state?index=%d&wait=30s" % n)
        harness.wait_for(lambda: c.metric("luofleet_longpoll_waiters") == 1, what="waiter")
        self.assertEqual(c.post("/v1/prepare").status, 200)
        self.assertGreater(self.assertStateDoc(lp.get())["index"], n)
        r = unix("POST", "/v1/cancel")
        d = self.assertStateDoc(r)
        # Who, not where from: the peer's uid (SO_PEERCRED); the address is in the audit record.
        self.assertEqual(d["operation"]["requested_by"], "uid:%d" % os.getuid())
        self.assertEqual(c.state(), d)
        a.stop()
        self.assertFalse(os.path.exists(sock_path))


class BodyErrorTest(AgentTestCase):
    """Body validation on the action endpoints. POST /v1/finish from `normal` answers
    409 invalid-transition once a body passed validation, so it proves acceptance without
    changing anything. Well-formed JSON bodies go through the contract proxy (started with
    --validate-request false, it forwards them and checks the agent's error answers);
    malformed, duplicate-member and non-JSON bodies, and Content-Type variations, go to the
    agent directly (Prism would refuse them itself, or re-serialize them)."""

    def setUp(self):
        super().setUp()
        self.a = self.agent()
        self.c = self.a.client()
        self.d = self.a.direct()

    def tearDown(self):
        # No error may have changed the document.
        self.assertEqual(self.c.state()["index"], 1)

    def accepted(self, r):
        self.assertProblem(r, 409, "invalid-transition", state="normal",
                           allowed_actions=["prepare"])

    def test_media_type(self):
        for ct in ("text/plain", "application/x-www-form-urlencoded", "application/jsonx",
                   "application/problem+json"):
            with self.subTest(content_type=ct):
                r = self.d.post("/v1/finish", body=b"{}", headers={"Content-Type": ct})
                self.assertProblem(r, 415, "unsupported-media-type")
        r = self.d.post("/v1/finish", body=b"{}")  # no Content-Type at all
        self.assertProblem(r, 415, "unsupported-media-type")
        r = self.d.put("/v1/kernel", body=b"{}", headers={"Content-Type": "text/plain"})
        self.assertProblem(r, 415, "unsupported-media-type")
        for ct in ("application/json", "application/json; charset=utf-8", "Application/JSON"):
            with self.subTest(content_type=ct):
                self.accepted(self.d.post("/v1/finish", body=b"{}",
                                          headers={"Content-Type": ct}))
        # An empty body needs Content-Type: application/json too (a browser can send a
        # body-less text/plain POST cross-site without asking first: docs/security.md).
        self.accepted(self.c.post("/v1/finish"))  # the harness sends the JSON type
        r = self.d.post("/v1/finish", body=b"", headers={"Content-Type": "text/plain"})
        self.assertProblem(r, 415, "unsupported-media-type")
        self.assertEqual(r.json["detail"], "a POST request needs Content-Type: "
                                           "application/json, also without a body (not "
                                           "text/plain)")
        self.accepted(self.d.post("/v1/finish", body=b"",
                                  headers={"Content-Type": "application/json"}))

    def test_malformed_json(self):
        for body in (b"{", b'{"reason":', b"nul", b"{}x", b"[]", b'"x"', b"1", b"null",
                     b"{'reason': 'x'}", b'{"reason":"a",}'):
            with self.subTest(body=body):
                r = self.d.post("/v1/finish", body=body, headers=JSON)
                self.assertProblem(r, 400, "malformed-json")

    def test_duplicate_keys(self):
        r = self.d.post("/v1/finish", body=b'{"reason":"a","reason":"b"}', headers=JSON)
        self.assertProblem(r, 400, "malformed-json")
        r = self.d.post("/v1/finish", body=b'{"operation_id":"x1","operation_id":"x1"}',
                        headers=JSON)
        self.assertProblem(r, 400, "malformed-json")

    def test_invalid_utf8(self):
        for body in (b'{"reason":"\xff"}', b'{"reason":"\xc3"}', b'{"reason":"\xed\xa0\x80"}',
                     b'{"\xfe":1}'):
            with self.subTest(body=body):
                r = self.d.post("/v1/finish", body=body, headers=JSON)
                self.assertProblem(r, 400, "malformed-json")
        # Valid UTF-8 in a reason is fine.
        self.accepted(self.c.post("/v1/finish", json_body={"reason": "mise à jour ✓"}))

    def test_unknown_field(self):
        # "force" is a member of finish only (workload hooks, docs/hooks.md).
        r = self.c.post("/v1/prepare", json_body={"reason": "x", "force": True})
        self.assertProblem(r, 400, "unknown-field", field="force")
        r = self.c.post("/v1/prepare", json_body={"Operation_id": "a"})
        self.assertProblem(r, 400, "unknown-field", field="Operation_id")
        r = self.c.delete("/v1/kernel", json_body={"kernel": {}})
        self.assertProblem(r, 400, "unknown-field", field="kernel")

    def test_wrong_types(self):
        for body, field in (({"reason": 5}, "reason"), ({"reason": None}, "reason"),
                            ({"reason": ["x"]}, "reason"), ({"operation_id": 5}, "operation_id"),
                            ({"operation_id": None}, "operation_id"),
                            ({"operation_id": {"a": 1}}, "operation_id"),
                            ({"operation_id": True}, "operation_id")):
            with self.subTest(body=body):
                r = self.c.post("/v1/finish", json_body=body)
                self.assertProblem(r, 400, "invalid-field", field=field)

    def test_operation_id_characters_and_length(self):
        for oid in ("", "a b", "a/b", "a\\b", "é", "a\tb", "a+b", "a@b", "a,b", "x" * 65):
            with self.subTest(operation_id=oid):
                r = self.c.post("/v1/finish", json_body={"operation_id": oid})
                self.assertProblem(r, 400, "invalid-field", field="operation_id")
        # jansson refuses the \u0000 escape outright: malformed-json, not invalid-field.
        r = self.d.post("/v1/finish", json_body={"operation_id": "a\u0000b"})
        self.assertProblem(r, 400, "malformed-json")
        for oid in ("x" * 64, "a", "r1:h7:prepare", "A-Z_a.z:0-9"):
            with self.subTest(operation_id=oid):
                self.accepted(self.c.post("/v1/finish", json_body={"operation_id": oid}))

    def test_reason_length(self):
        self.accepted(self.c.post("/v1/finish", json_body={"reason": "r" * 256}))
        self.accepted(self.c.post("/v1/finish", json_body={"reason": ""}))
        r = self.c.post("/v1/finish", json_body={"reason": "r" * 257})
        self.assertProblem(r, 400, "invalid-field", field="reason")

    def test_stage_request_validation(self):
        sha = "ab" * 32
        r = self.d.put("/v1/kernel")  # no body at all: Prism would ask for one
        self.assertProblem(r, 400, "malformed-json")
        cases = [
            ({}, "invalid-field", "kernel"),
            ({"kernel": "/boot/vmlinuz"}, "invalid-field", "kernel"),
            ({"kernel": {"path": "boot/vmlinuz", "sha256": sha}}, "invalid-field", "kernel"),
            ({"kernel": {"path": "/boot/../vmlinuz", "sha256": sha}}, "invalid-field", "kernel"),
            ({"kernel": {"path": "/boot/..", "sha256": sha}}, "invalid-field", "kernel"),
            ({"kernel": {"path": "", "sha256": sha}}, "invalid-field", "path"),
            ({"kernel": {"sha256": sha}}, "invalid-field", "kernel"),
            ({"kernel": {"path": "/boot/vmlinuz"}}, "invalid-field", "kernel"),
            ({"kernel": {"path": "/boot/vmlinuz", "sha256": "ab" * 31}}, "invalid-field",
             "sha256"),
            ({"kernel": {"path": "/boot/vmlinuz", "sha256": "zz" * 32}}, "invalid-field",
             "kernel"),
            ({"kernel": {"path": "/boot/vmlinuz", "sha256": sha, "mode": 1}}, "unknown-field",
             "mode"),
            ({"kernel": {"path": "/boot/vmlinuz", "sha256": sha}, "initrd": {"path": "x",
                                                                           "sha256": sha}},
             "invalid-field", "initrd"),
            ({"kernel": {"path": "/boot/vmlinuz", "sha256": sha}, "cmdline": 7},
             "invalid-field", "cmdline"),
            ({"kernel": {"path": "/boot/vmlinuz", "sha256": sha}, "append": "x"},
             "unknown-field", "append"),
        ]
        for body, code, field in cases:
            with self.subTest(body=body):
                r = self.c.put("/v1/kernel", json_body=body)
                self.assertProblem(r, 400, code, field=field)
        self.assertProblem(self.c.get("/v1/kernel"), 404, "no-kernel-staged")

    def test_body_too_large_content_length(self):
        body = b'{"reason":"' + b"a" * 70000 + b'"}'
        req = (b"POST /v1/finish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body)) + body
        r = raw_http("127.0.0.1", self.a.port, req)
        self.assertProblem(r, 413, "body-too-large")
        self.assertEqual(r.header("Connection"), "close")
        # Refused from the header alone: no need to send the body.
        req = (b"PUT /v1/kernel HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: 65537\r\n\r\n")
        self.assertProblem(raw_http("127.0.0.1", self.a.port, req), 413, "body-too-large")
        # Exactly 64 KiB is read (and then judged on its content).
        body = b'{"reason":"' + b"a" * (65536 - 13) + b'"}'
        self.assertEqual(len(body), 65536)
        r = self.d.post("/v1/finish", body=body, headers=JSON)
        self.assertProblem(r, 400, "invalid-field", field="reason")
        # The same answers through the contract proxy (it forwards valid JSON as it is).
        r = self.c.post("/v1/finish", json_body={"reason": "a" * 70000})
        self.assertProblem(r, 413, "body-too-large")
        r = self.c.put("/v1/kernel", json_body={"kernel": {"path": "/" + "k" * 70000,
                                                           "sha256": "ab" * 32}})
        self.assertProblem(r, 413, "body-too-large")

    def test_body_too_large_chunked(self):
        # Chunked: no length up front. The agent discards the rest of the body (memory stays
        # bounded) and answers 413 once the request is complete, then closes the connection.
        body = b'{"reason":"' + b"a" * 70000 + b'"}'
        r = self.d.request("POST", "/v1/finish", body=body, headers=JSON, chunked=True)
        self.assertProblem(r, 413, "body-too-large")
        self.assertEqual(r.header("Connection"), "close")
        # Far beyond the limit, on a kept-alive connection: answered, then closed.
        conn = self.d.connection()
        try:
            big = b'{"reason":"' + b"b" * (4 << 20) + b'"}'
            pieces = [big[i:i + 65536] for i in range(0, len(big), 65536)]
            conn.request("PUT", "/v1/kernel", body=iter(pieces), headers=JSON,
                         encode_chunked=True)
            resp = conn.getresponse()
            r = harness.Response(resp.status, resp.reason, resp.getheaders(), resp.read())
            self.assertProblem(r, 413, "body-too-large")
            self.assertEqual(r.header("Connection"), "close")
            self.assertTrue(resp.will_close)
        finally:
            conn.close()
        # The agent goes on serving.
        self.accepted(self.d.post("/v1/finish", body=b"{}", headers=JSON))

    def test_chunked_body_within_limit(self):
        r = self.d.request("POST", "/v1/finish", body=b'{"reason":"chunked"}', headers=JSON,
                           chunked=True)
        self.accepted(r)
        body = b'{"reason":"' + b"a" * (65536 - 13) + b'"}'
        r = self.d.request("POST", "/v1/finish", body=body, headers=JSON, chunked=True)
        self.assertProblem(r, 400, "invalid-field", field="reason")


class QueryErrorTest(AgentTestCase):

    def test_state_query_errors(self):
        a = self.agent()
        c = a.client()  # forwarded by the proxy (--validate-request false), answers checked
        for q in ("index=-1", "index=abc", "index=99999999999999999999",
                  "index=9223372036854775808",
                  "index=", "index=1.5", "index=0x10", "index=+1", "index=1&wait=10x",
                  "index=1&wait=-1s", "index=1&wait=1d", "index=1&wait=30m1h",
                  "index=1&wait=1.5s", "index=1&wait=",
                  "wait=1s", "index=1&index=2", "index=1&wait=1s&wait=2s",
                  "index=1&wait=99999999999999999999999m"):
            with self.subTest(query=q):
                t = time.monotonic()
                self.assertProblem(c.get("/v1/state?" + q), 400, "invalid-query")
                self.assertLess(time.monotonic() - t, 1.0)
        many = "&".join("x%d=1" % i for i in range(17))
        self.assertProblem(c.get("/v1/state?" + many), 400, "invalid-query")
        # Unknown parameters are ignored.
        self.assertStateDoc(c.get("/v1/state?foo=bar"))
        self.assertStateDoc(c.get("/v1/state?index=9223372036854775807&wait=0"))

    def test_wait_clamped_to_max_wait(self):
        a = self.agent("--max-wait=1s")
        c = a.client()
        d = c.state()
        for q in ("index=%d&wait=60m" % d["index"], "index=%d&wait=86400" % d["index"],
                  "index=%d" % d["index"]):
            with self.subTest(query=q):
                t = time.monotonic()
                r = c.get("/v1/state?" + q, timeout=10)
                elapsed = time.monotonic() - t
                d2 = self.assertStateDoc(r)
                self.assertEqual(d2, d)
                self.assertEqual(r.header("ETag"), '"%d"' % d["index"])
                self.assertGreaterEqual(elapsed, 0.95)
                self.assertLess(elapsed, 3.0)


class HistoryTest(AgentTestCase):

    def make_history(self):
        a = self.agent()
        c = a.client()
        for path in ("/v1/prepare", "/v1/cancel", "/v1/prepare", "/v1/cancel"):
            self.assertEqual(c.post(path).status, 200)
        return a, c

    def test_history_shapes(self):
        a, c = self.make_history()
        last = c.state()["index"]
        # start, then per action: operation running, transition, operation done.
        self.assertEqual(last, 13)
        h = c.history()
        r = c.get("/v1/history")
        self.assertEqual(r.content_type, "application/json")
        self.assertEqual(set(h), {"records", "first_index", "last_index", "more"})
        self.assertEqual(h["first_index"], 1)
        self.assertEqual(h["last_index"], last)
        self.assertIs(h["more"], False)
        self.assertEqual([x["index"] for x in h["records"]], list(range(1, last + 1)))
        for rec in h["records"]:
            for k in ("index", "time", "boot_id", "kind", "state"):
                self.assertIn(k, rec)
            self.assertRegex(rec["time"], harness.RFC3339_MS_RE)
            self.assertRegex(rec["boot_id"], harness.UUID_RE)
            self.assertIn(rec["state"], harness.STATES)
        self.assertEqual([x["kind"] for x in h["records"]],
                         ["start"] + ["operation", "transition", "operation"] * 4)
        self.assertEqual(h["records"][0]["kind"], "start")
        t = h["records"][2]
        self.assertEqual((t["from"], t["to"], t["cause"], t["state"]),
                         ("normal", "prepared", "operation", "prepared"))
        self.assertEqual(t["operation_id"], h["records"][1]["operation"]["id"])
        self.assertEqual(h["records"][1]["operation"]["status"], "running")
        self.assertEqual(h["records"][3]["operation"]["status"], "succeeded")
        # The journal file holds the same records.
        self.assertEqual(a.journal_records(), h["records"])

    def test_history_paging(self):
        a, c = self.make_history()
        last = c.state()["index"]
        h = c.history("limit=3")
        self.assertEqual([x["index"] for x in h["records"]], [last - 2, last - 1, last])
        self.assertIs(h["more"], True)
        self.assertEqual((h["first_index"], h["last_index"]), (1, last))
        h = c.history("since=0&limit=5")
        self.assertEqual([x["index"] for x in h["records"]], [1, 2, 3, 4, 5])
        self.assertIs(h["more"], True)
        h = c.history("since=5&limit=5")
        self.assertEqual([x["index"] for x in h["records"]], [6, 7, 8, 9, 10])
        self.assertIs(h["more"], True)
        h = c.history("since=10&limit=5")
        self.assertEqual([x["index"] for x in h["records"]], [11, 12, 13])
        self.assertIs(h["more"], False)
        h = c.history("since=%d" % last)
        self.assertEqual(h["records"], [])
        self.assertIs(h["more"], False)
        h = c.history("since=%d" % (last + 100))
        self.assertEqual(h["records"], [])
        h = c.history("since=10&limit=3")
        self.assertEqual([x["index"] for x in h["records"]], [11, 12, 13])
        self.assertIs(h["more"], False)
        h = c.history("limit=1000")
        self.assertEqual(len(h["records"]), last)
        self.assertIs(h["more"], False)
        self.assertEqual(c.all_records(), c.history()["records"])

    def test_history_kind_filter(self):
        a, c = self.make_history()
        h = c.history("kind=transition")
        self.assertEqual([(x["from"], x["to"]) for x in h["records"]],
                         [("normal", "prepared"), ("prepared", "normal")] * 2)
        self.assertTrue(all(x["kind"] == "transition" for x in h["records"]))
        self.assertIs(h["more"], False)
        h = c.history("kind=transition&limit=1")
        self.assertEqual(len(h["records"]), 1)
        self.assertEqual(h["records"][0]["to"], "normal")
        self.assertIs(h["more"], True)
        h = c.history("kind=transition&since=0&limit=3")
        self.assertEqual([x["to"] for x in h["records"]], ["prepared", "normal", "prepared"])
        self.assertIs(h["more"], True)
        h = c.history("kind=start,transition")
        self.assertEqual([x["kind"] for x in h["records"]], ["start"] + ["transition"] * 4)
        h = c.history("kind=reboot")
        self.assertEqual(h["records"], [])
        self.assertIs(h["more"], False)

    def test_history_query_errors(self):
        a = self.agent()
        c = a.client()  # forwarded by the proxy (--validate-request false), answers checked
        for q in ("limit=0", "limit=1001", "limit=-1", "limit=abc", "limit=", "since=-1",
                  "since=x", "since=99999999999999999999", "kind=", "kind=Transition",
                  "kind=a;b", "since=1&since=2", "limit=1&limit=2", "kind=a&kind=b",
                  "kind=reboots", "kind=transition,nope", "kind=,", "kind=transition,"):
            with self.subTest(query=q):
                self.assertProblem(c.get("/v1/history?" + q), 400, "invalid-query")
        # A typo is named, with the kinds there are (it answered 200 with no records).
        r = c.get("/v1/history?kind=operation,reboots")
        self.assertProblem(r, 400, "invalid-query")
        self.assertEqual(r.json["detail"],
                         "kind: reboots is no record kind; the kinds: transition, operation, "
                         "staging, reboot, start, snapshot, hook, lease, session, audit")
        # Every kind of the contract is accepted.
        for kind in ("transition", "operation", "staging", "reboot", "start", "snapshot", "hook",
                     "lease", "session", "audit"):
            with self.subTest(kind=kind):
                self.assertEqual(c.get("/v1/history?kind=" + kind).status, 200)


class HealthTest(AgentTestCase):

    def test_healthz(self):
        a = self.agent()
        r = a.client().get("/healthz")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.content_type, "application/json")
        self.assertEqual(r.json, {"status": "ok"})
        r = a.direct().head("/healthz")  # HEAD: not through Prism
        self.assertEqual((r.status, r.body), (200, b""))

    def test_readyz(self):
        a = self.agent()
        r = a.client().get("/readyz")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.content_type, "application/json")
        self.assertEqual(set(r.json), {"status", "checks"})
        self.assertEqual(r.json["status"], "ready")
        self.assertEqual([x["name"] for x in r.json["checks"]],
                         ["backend", "journal", "kernel-consistent", "accepting", "security",
                          "kernel-verified"])
        for chk in r.json["checks"]:
            self.assertEqual(set(chk), {"name", "ok", "detail"})
            self.assertIs(chk["ok"], True)
            self.assertIsInstance(chk["detail"], str)
        self.assertEqual(r.json["checks"][0]["detail"], "sim backend open, kernel state normal")
        self.assertEqual(r.json["checks"][1]["detail"], "writable")
        self.assertEqual(r.json["checks"][2]["detail"], "GET_STATE and sysfs agreed at start-up")
        self.assertEqual(r.json["checks"][3]["detail"], "accepting operations")
        self.assertEqual(r.json["checks"][4]["detail"],
                         "plain HTTP on loopback and the Unix socket only, no authentication")


METRIC_LINE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*"'
                         r'(,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*")*\})? '
                         r'(-?[0-9.]+(e[+-]?[0-9]+)?|[+-]Inf|NaN)$')


class MetricsTest(AgentTestCase):

    def test_metrics_text(self):
        a = self.agent()
        c = a.client()
        c.get("/v1/state")
        a.direct().get("/v1/nope")  # 404/405 straight from the agent, not a proxy
        a.direct().post("/v1/state")
        r = c.get("/metrics")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.content_type, "text/plain; version=0.0.4; charset=utf-8")
        text = r.body.decode()
        self.assertTrue(text.endswith("\n"))
        lines = text.splitlines()
        self.assertIn('luofleet_state{state="normal"} 1', lines)
        for s in ("prepared", "frozen", "updated", "undefined"):
            self.assertIn('luofleet_state{state="%s"} 0' % s, lines)
        self.assertIn("luofleet_index 1", lines)
        self.assertIn("luofleet_operation_running 0", lines)
        self.assertIn("luofleet_longpoll_waiters 0", lines)
        self.assertIn("luofleet_sse_clients 0", lines)
        self.assertIn('luofleet_agent_info{version="%s",backend="sim"} 1' % agent_version(),
                      lines)
        self.assertIn("# TYPE luofleet_http_requests_total counter", lines)
        self.assertIn('luofleet_http_requests_total{route="/v1/state",method="GET",code="200"} 1',
                      lines)
        self.assertIn('luofleet_http_requests_total{route="/v1/state",method="POST",code="405"} 1',
                      lines)
        self.assertIn('luofleet_http_requests_total{route="unmatched",method="GET",code="404"} 1',
                      lines)
        for line in lines:
            if line.startswith("#"):
                self.assertRegex(line, r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$")
            else:
                self.assertRegex(line, METRIC_LINE)
        # After a prepare the gauges move.
        self.assertEqual(c.post("/v1/prepare").status, 200)
        lines = c.metrics().splitlines()
        self.assertIn('luofleet_state{state="normal"} 0', lines)
        self.assertIn('luofleet_state{state="prepared"} 1', lines)
        self.assertIn("luofleet_index 4", lines)
        self.assertIn('luofleet_transitions_total{from="normal",to="prepared"} 1', lines)
        self.assertIn('luofleet_operations_total{action="prepare",result="succeeded"} 1', lines)
        self.assertIn('luofleet_http_requests_total{route="/v1/prepare",method="POST",'
                      'code="200"} 1', lines)

    def test_session_metrics_without_workloads(self):
        a = self.agent()
        c = a.client()
        text = c.metrics()
        lines = text.splitlines()
        for line in ("# TYPE luofleet_sessions gauge",
                     'luofleet_sessions{phase="outgoing"} 0',
                     'luofleet_sessions{phase="incoming"} 0',
                     'luofleet_sessions{phase="retrieved"} 0',
                     'luofleet_sessions{phase="finished"} 0',
                     "# TYPE luofleet_session_fds gauge", "luofleet_session_fds 0",
                     "# TYPE luofleet_session_bytes gauge", "luofleet_session_bytes 0",
                     "# TYPE luofleet_session_workloads gauge", "luofleet_session_workloads 0",
                     "# TYPE luofleet_session_events_dropped_total counter",
                     "luofleet_session_events_dropped_total 0"):
            self.assertIn(line, lines)
        # Exactly these samples of the session families, each once.
        samples = [l for l in lines if re.match(r"^luofleet_sessions?[_{ ]", l)]
        self.assertEqual(len(samples), 8, samples)
        # A prepare and a cancel change no session gauge.
        c.post("/v1/prepare")
        c.post("/v1/cancel")
        self.assertEqual([l for l in c.metrics().splitlines()
                          if re.match(r"^luofleet_sessions?[_{ ]", l)], samples)

    def test_promtool_check_metrics(self):
        promtool = shutil.which("promtool")
        if not promtool:
            self.skipTest("promtool is not installed: `promtool check metrics` not run "
                          "(install prometheus to enable this check)")
        a = self.agent()
        c = a.client()
        c.get("/v1/state")
        c.post("/v1/prepare")
        body = c.get("/metrics").body
        p = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                           timeout=30)
        self.assertEqual(p.returncode, 0, p.stdout.decode() + p.stderr.decode())


class ContractProxySelfTest(unittest.TestCase):
    """The harness must catch a contract violation: a fake upstream (Python http.server on
    this module's upstream port, where no agent runs during this test) answers GET
    /v1/state with documents that break api/openapi.yaml, behind this module's Prism."""

    DOC = {"state": "normal", "index": 7, "changed_at": "2026-11-25T14:33:36.604Z",
           "boot_id": "0b6b0d1e-6c1f-4d0a-9a51-6c2a3f1f9f10", "kernel": "6.99.0-fake",
           "backend": "sim", "staged": None, "operation": None, "hostname": "fake",
           "agent_version": "0.0.0"}

    def setUp(self):
        proxy = harness.contract_proxy()
        if proxy is None:
            self.skipTest("contract mode is off (LUOFLEET_CONTRACT=0): no proxy to test")
        doc = self.DOC

        class Fake(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                case = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get(
                    "case", ["valid"])[0]
                d = dict(doc)
                status, headers = 200, {"ETag": '"7"', "Cache-Control": "no-store"}
                if case == "bogus-state":
                    d["state"] = "bogus"
                elif case == "extra-member":
                    d["surprise"] = True
                elif case == "no-etag":
                    del headers["ETag"]
                elif case == "teapot":
                    status = 418
                body = json.dumps(d).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", proxy.upstream_port), Fake)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.addCleanup(self.thread.join, 5)
        self.addCleanup(self.server.server_close)
        self.addCleanup(self.server.shutdown)
        self.client = harness.Client(harness.route_base_url(
            "http://127.0.0.1:%d" % proxy.upstream_port))
        self.assertTrue(self.client.proxied)

    def test_harness_reports_contract_violations(self):
        proxy = harness.contract_proxy()
        before = proxy.violations
        r = self.client.get("/v1/state")  # a valid document passes untouched
        self.assertEqual((r.status, r.json), (200, self.DOC), r)
        for case, needle in (("bogus-state", "Error at response.body.state"),
                             ("extra-member", "Error at response.body"),
                             ("no-etag", "Error at response.header"),
                             ("teapot", "Warning at response")):
            with self.subTest(case=case):
                with self.assertRaises(harness.ContractViolation) as cm:
                    self.client.get("/v1/state?case=" + case)
                msg = str(cm.exception)
                self.assertIn("contract violation", msg)
                self.assertIn(needle, msg)
                self.assertIn("GET /v1/state?case=" + case, msg)
        self.assertIn("must be equal to one of the allowed values",
                      self._message("bogus-state"))
        self.assertEqual(proxy.violations - before, 5)
        proxy.deliberate += 5

    def _message(self, case):
        try:
            self.client.get("/v1/state?case=" + case)
        except harness.ContractViolation as e:
            return str(e)
        self.fail("no violation reported for case %s" % case)


class ContractSessionsSelfTest(unittest.TestCase):
    """The contract's session documents, through this module's Prism in front of a fake
    upstream: the shapes a sim agent without workloads never sends (a broker on luo-v3 with
    incoming sessions and a vetoed round, no broker at all, session journal and audit records,
    the 409s of the prepare round and the finish) pass; broken ones are flagged."""

    BROKER = "323661bd-54e7-46db-99a0-ab1ebddea836"
    FULL = {
        "broker_id": BROKER, "interface": "tokens",
        "sessions": [
            {"name": "vm1", "kernel_name": "lf:1000:vm1", "owner_uid": 1000, "workload": "vm-42",
             "phase": "retrieved", "fds": 2, "bytes": 3145728,
             "tokens": [{"token": 1, "kernel_token": 7, "bytes": 1048576, "retrieved": True},
                        {"token": 2, "kernel_token": 8, "bytes": 2097152, "retrieved": False}]},
            {"name": "vm1", "kernel_name": "lf:1001:vm1", "owner_uid": 1001, "workload": "vm-7",
             "phase": "incoming", "fds": 0, "bytes": 0, "tokens": []}],
        "workloads": [{"name": "vm-42", "uid": 1000, "pid": 4242, "registered": True},
                      {"name": "probe", "uid": 0, "pid": 99, "registered": False}],
        "summary": {"sessions": 2, "fds": 2, "bytes": 3145728, "outgoing": 0, "incoming": 1,
                    "retrieved": 1, "finished": 0, "workloads": 2},
        "last_round": {"event_id": 3, "result": "timeout", "asked": 2,
                       "pending": [{"name": "vm-42", "uid": 1000, "pid": 4242, "reason": ""}],
                       "vetoed": [],
                       "gone": [{"name": "vm-7", "uid": 1001, "pid": 77,
                                 "reason": "disconnected"}]},
        "events_dropped": 2,
        "previous_boot": {"note": "operation=r1:h7:reboot index=41",
                          "boot_id": "0b6b0d1e-6c1f-4d0a-9a51-6c2a3f1f9f10"},
        "index": 44, "backend": "luo-v3"}
    NONE = {"sessions": [], "workloads": [], "summary": None, "last_round": None, "index": 3,
            "backend": "luo-sessions"}
    RECORDS = [
        {"index": 42, "time": "2026-11-25T14:33:36.604Z",
         "boot_id": "0b6b0d1e-6c1f-4d0a-9a51-6c2a3f1f9f10", "kind": "session", "state": "normal",
         "event": "preserved", "broker": {"id": BROKER, "seq": 3}, "session": "vm1",
         "owner_uid": 1000, "workload": "vm-42", "pid": 4242, "token": 1, "bytes": 67108864},
        {"index": 43, "time": "2026-11-25T14:33:37.604Z",
         "boot_id": "0b6b0d1e-6c1f-4d0a-9a51-6c2a3f1f9f10", "kind": "session", "state": "normal",
         "event": "prepare-refused", "broker": {"id": BROKER, "seq": 4}, "errno": "ECANCELED",
         "detail": "workload vm-veto (uid 1000, pid 5906) vetoed: busy migrating"},
        {"index": 7, "time": "2026-11-25T14:33:37.610Z",
         "boot_id": "0b6b0d1e-6c1f-4d0a-9a51-6c2a3f1f9f10", "kind": "audit", "state": "normal",
         "state_index": 43, "identity": {"method": "peercred", "name": "uid=1000", "role": "none"},
         "source": "sessions", "action": "session-vetoed", "precondition": None,
         "result": {"status": 200, "code": "ok", "replayed": False}}]
    PROBLEMS = {
        "/v1/prepare": {"type": "urn:luofleet:problem:workload-veto",
                        "title": "A workload vetoed the prepare", "status": 409,
                        "detail": "workload vm-veto (uid 1000, pid 5906) vetoed: "
                                  "busy migrating: nothing was prepared",
                        "code": "workload-veto",
                        "workloads": [{"name": "vm-veto", "uid": 1000, "pid": 5906,
                                       "reason": "busy migrating"}]},
        "/v1/finish": {"type": "urn:luofleet:problem:sessions-unfinished",
                       "title": "Workload sessions of the update are not finished",
                       "status": 409, "detail": "vm1 (uid 1000) is incoming",
                       "code": "sessions-unfinished",
                       "sessions": [{"name": "vm1", "owner_uid": 1000, "workload": "vm-42",
                                     "phase": "incoming"}]},
        "/v1/rollback": {"type": "urn:luofleet:problem:workloads-not-confirmed",
                         "title": "Registered workloads did not confirm the prepare",
                         "status": 409, "detail": "workloads did not confirm within 30000 ms: "
                         "vm-42 (uid 1000, pid 4242): nothing was prepared",
                         "code": "workloads-not-confirmed",
                         "workloads": [{"name": "vm-42", "uid": 1000, "pid": 4242,
                                        "reason": ""}]},
    }

    def setUp(self):
        proxy = harness.contract_proxy()
        if proxy is None:
            self.skipTest("contract mode is off (LUOFLEET_CONTRACT=0): no proxy to test")
        cls = type(self)

        def docs(case):
            if case == "full":
                return cls.FULL
            if case == "none":
                return cls.NONE
            if case == "bad-phase":
                d = json.loads(json.dumps(cls.FULL))
                d["sessions"][0]["phase"] = "prepared"
                return d
            if case == "no-broker-id":  # a summary without the broker's members
                return {k: v for k, v in cls.FULL.items() if k != "broker_id"}
            raise KeyError(case)

        class Fake(http.server.BaseHTTPRequestHandler):
            def answer(self, status, ctype, doc):
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                u = urllib.parse.urlsplit(self.path)
                case = urllib.parse.parse_qs(u.query).get("case", ["full"])[0]
                if u.path == "/v1/sessions":
                    self.answer(200, "application/json", docs(case))
                elif u.path == "/v1/history":
                    recs = json.loads(json.dumps(cls.RECORDS))
                    if case == "no-broker":
                        del recs[0]["broker"]
                    self.answer(200, "application/json",
                                {"records": recs, "first_index": 1, "last_index": 43,
                                 "more": False})
                else:
                    self.answer(404, "application/problem+json", {})

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(n)
                self.answer(409, "application/problem+json", cls.PROBLEMS[self.path])

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", proxy.upstream_port), Fake)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.addCleanup(self.thread.join, 5)
        self.addCleanup(self.server.server_close)
        self.addCleanup(self.server.shutdown)
        self.client = harness.Client(harness.route_base_url(
            "http://127.0.0.1:%d" % proxy.upstream_port))
        self.assertTrue(self.client.proxied)

    def test_session_documents_against_the_contract(self):
        proxy = harness.contract_proxy()
        before = proxy.violations
        for case, doc in (("full", self.FULL), ("none", self.NONE)):
            with self.subTest(case=case):
                r = self.client.get("/v1/sessions?case=" + case)
                self.assertEqual((r.status, r.json), (200, doc), r)
        r = self.client.get("/v1/history?kind=session,audit")
        self.assertEqual((r.status, r.json["records"]), (200, self.RECORDS), r)
        for path, doc in self.PROBLEMS.items():
            with self.subTest(path=path):
                r = self.client.post(path)
                self.assertEqual((r.status, r.json), (409, doc), r)
        self.assertEqual(proxy.violations, before)
        for path, needle in (("/v1/sessions?case=bad-phase", "Error at response.body"),
                             ("/v1/sessions?case=no-broker-id", "Error at response.body"),
                             ("/v1/history?case=no-broker", "Error at response.body")):
            with self.subTest(path=path):
                with self.assertRaises(harness.ContractViolation) as cm:
                    self.client.get(path)
                self.assertIn(needle, str(cm.exception))
        self.assertEqual(proxy.violations - before, 3)
        proxy.deliberate += 3


if __name__ == "__main__":
    harness.main()
