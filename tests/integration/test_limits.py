#!/usr/bin/env python3
"""test_limits.py: the limits against hostile or broken clients (docs/limits.md), one test
per limit with its exact outcome and metric: connections per address and in total (also
with several HTTP threads racing), request head size (MHD's 431), body size (413
body-too-large), the request deadline against slowloris clients, the idle timeout (and that
long-polls and event streams are not subject to it), the long-poll waiter cap (503
too-many-waiters), the event-stream cap (503 too-many-streams), the limit gauges, and every
limit flag's bad values refused at start with exit status 2."""

import os
import shutil
import socket
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import AgentTestCase, SSEStream, raw_http, wait_for  # noqa: E402

setUpModule, tearDownModule = harness.module_fixtures(__file__)

SCALE = harness.SCALE
GET_STATE = b"GET /v1/state HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def connect(port, source="127.0.0.1", timeout=5.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def read_answer(s, timeout=5.0):
    """One HTTP answer on s (status, raw bytes), or (None, b"") when the agent closed the
    connection without answering."""
    s.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            b = s.recv(65536)
            if not b:
                break
            data += b
    except ConnectionResetError:
        pass
    if not data:
        return None, b""
    return int(data.split(b" ", 2)[1]), data


def closed_without_answer(s, timeout=5.0):
    """The agent closes (or resets) s before sending a byte."""
    try:
        s.sendall(GET_STATE)
    except (BrokenPipeError, ConnectionResetError):
        return True
    status, data = read_answer(s, timeout)
    return status is None and data == b""


def wait_closed(s, timeout):
    """Seconds until the agent closes s (EOF or reset); fails after timeout."""
    t = time.monotonic()
    s.settimeout(timeout)
    try:
        while True:
            b = s.recv(4096)
            if not b:
                break
    except ConnectionResetError:
        pass
    return time.monotonic() - t


def metrics_text(port, source="127.0.0.1"):
    s = connect(port, source)
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), data[:300]
    return body.decode()


class LimitTestCase(AgentTestCase):

    def metric(self, a, name, source="127.0.0.1"):
        """A metric read directly (the contract proxy keeps connections of its own, which
        count against the limits measured here), from a source address of the test's choice
        (another address than the one at its per-address limit)."""
        for line in metrics_text(a.port, source).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return None

    def rejected(self, a, reason, source="127.0.0.1"):
        return self.metric(a, 'luofleet_http_rejected_total{reason="%s"}' % reason, source)

    def wait_connections(self, a, n, source):
        """n open connections besides the metrics request itself."""
        wait_for(lambda: self.metric(a, "luofleet_http_connections", source) == n + 1,
                 timeout=5 * SCALE, what="%d open connections" % n)

    def assertServes(self, a, source="127.0.0.1"):
        s = connect(a.port, source)
        try:
            s.sendall(GET_STATE)
            self.assertEqual(read_answer(s)[0], 200)
        finally:
            s.close()
        self.assertIsNone(a.proc.poll())


class ConnectionLimitTest(LimitTestCase):

    def test_per_ip_limit(self):
        a = self.agent("--max-connections-per-ip=3")
        self.assertEqual(self.metric(a, "luofleet_http_connections_per_ip_max"), 3)
        held = [connect(a.port) for _ in range(3)]
        try:
            self.wait_connections(a, 3, source="127.0.0.3")
            # The 4th from the same address is closed at once, without an answer.
            s = connect(a.port)
            self.assertTrue(closed_without_answer(s))
            s.close()
            # Another address is not limited by the first one's connections.
            s = connect(a.port, source="127.0.0.2")
            s.sendall(GET_STATE)
            self.assertEqual(read_answer(s)[0], 200)
            s.close()
            # The held connections still work.
            held[0].sendall(GET_STATE)
            self.assertEqual(read_answer(held[0])[0], 200)
        finally:
            for s in held:
                s.close()
        self.wait_connections(a, 0, source="127.0.0.3")
        self.assertEqual(self.rejected(a, "per_ip", "127.0.0.3"), 1)
        self.assertEqual(self.rejected(a, "total", "127.0.0.3"), 0)
        self.assertServes(a)

    def test_total_limit(self):
        a = self.agent("--max-connections=4", "--max-connections-per-ip=100")
        self.assertEqual(self.metric(a, "luofleet_http_connections_max"), 4)
        held = [connect(a.port, source="127.0.0.%d" % (i + 1)) for i in range(4)]
        try:
            # Every slot is taken, from any address.
            for src in ("127.0.0.1", "127.0.0.9"):
                s = connect(a.port, source=src)
                self.assertTrue(closed_without_answer(s), src)
                s.close()
            held[1].sendall(GET_STATE)
            self.assertEqual(read_answer(held[1])[0], 200)
        finally:
            for s in held:
                s.close()
        # (Give the agent a moment to see the closes: an attempt too early is refused.)
        time.sleep(0.5 * SCALE)
        self.wait_connections(a, 0, source="127.0.0.1")
        self.assertEqual(self.rejected(a, "total"), 2)
        self.assertEqual(self.rejected(a, "per_ip"), 0)
        self.assertServes(a)

    def test_per_ip_limit_with_several_threads(self):
        # Four MHD threads accept at once: the limit holds exactly all the same.
        a = self.agent("--max-connections-per-ip=3", "--http-threads=4")
        socks = [connect(a.port) for _ in range(12)]
        try:
            for s in socks:
                try:
                    s.sendall(GET_STATE)
                except (BrokenPipeError, ConnectionResetError):
                    pass
            answered = [read_answer(s)[0] for s in socks]
        finally:
            for s in socks:
                s.close()
        self.assertEqual(sorted(x for x in answered if x is not None), [200, 200, 200])
        self.wait_connections(a, 0, source="127.0.0.3")
        self.assertEqual(self.rejected(a, "per_ip", "127.0.0.3"), 9)
        self.assertServes(a)

    def test_unix_peers_have_no_address(self):
        path = os.path.join(self.socket_dir(), "agent.sock")
        # (Started as root, the agent would bind as an unprivileged user: keep root, which
        # can create the socket in the test's private directory.)
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        a = self.agent("--max-connections-per-ip=1", "--listen=unix:" + path, *as_root)
        held = []
        try:
            for _ in range(3):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(5)
                s.connect(path)
                held.append(s)
            for s in held:
                s.sendall(GET_STATE)
                self.assertEqual(read_answer(s)[0], 200)
        finally:
            for s in held:
                s.close()
        self.assertEqual(self.rejected(a, "per_ip"), 0)


class RequestSizeTest(LimitTestCase):

    def test_header_too_large(self):
        a = self.agent("--max-header-bytes=4096")
        self.assertEqual(self.metric(a, "luofleet_http_header_max_bytes"), 4096)
        # Within the limit: served.
        req = b"GET /v1/state HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: %s\r\n\r\n" % (b"p" * 2500)
        self.assertEqual(raw_http("127.0.0.1", a.port, req).status, 200)
        # Past it: MHD's own 431 (an HTML body), and the connection is closed.
        req = b"GET /v1/state HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: %s\r\n\r\n" % (b"p" * 5000)
        r = raw_http("127.0.0.1", a.port, req)
        self.assertEqual(r.status, 431, r)
        self.assertEqual(r.header("Connection"), "close")
        # Many small headers add up the same way.
        req = (b"GET /v1/state HTTP/1.1\r\nHost: 127.0.0.1\r\n" +
               b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 40) for i in range(200)) + b"\r\n")
        self.assertEqual(raw_http("127.0.0.1", a.port, req).status, 431)
        # A request line past it: 414.
        req = b"GET /v1/state?%s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % (b"x" * 6000)
        self.assertEqual(raw_http("127.0.0.1", a.port, req).status, 414)
        self.assertEqual(self.rejected(a, "header_too_large"), 3)
        self.assertServes(a)

    def test_header_default_limit(self):
        a = self.agent()
        self.assertEqual(self.metric(a, "luofleet_http_header_max_bytes"), 16384)
        req = b"GET /v1/state HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: %s\r\n\r\n" % (b"p" * 12000)
        self.assertEqual(raw_http("127.0.0.1", a.port, req).status, 200)
        req = b"GET /v1/state HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: %s\r\n\r\n" % (b"p" * 17000)
        self.assertEqual(raw_http("127.0.0.1", a.port, req).status, 431)

    def test_body_too_large(self):
        a = self.agent("--max-body-bytes=1024")
        self.assertEqual(self.metric(a, "luofleet_http_body_max_bytes"), 1024)
        c = a.client()
        # Exactly the limit is read (and judged on its content).
        body = b'{"reason":"' + b"a" * (1024 - 13) + b'"}'
        self.assertEqual(len(body), 1024)
        r = a.direct().post("/v1/finish", body=body, headers={"Content-Type": "application/json"})
        self.assertProblem(r, 400, "invalid-field", field="reason")
        # One byte more: announced, refused from the header; through the contract proxy.
        r = c.post("/v1/finish", json_body={"reason": "a" * 1012})
        self.assertProblem(r, 413, "body-too-large")
        self.assertEqual(r.json["detail"], "the request body exceeds 1024 bytes")
        # Chunked, no length up front: read, discarded, refused at the end.
        r = a.direct().request("POST", "/v1/finish", body=b'{"reason":"' + b"b" * 3000 + b'"}',
                               headers={"Content-Type": "application/json"}, chunked=True)
        self.assertProblem(r, 413, "body-too-large")
        self.assertEqual(r.header("Connection"), "close")
        self.assertEqual(self.rejected(a, "body_too_large"), 2)
        self.assertServes(a)


class TimeoutTest(LimitTestCase):

    def test_slowloris_is_cut_off(self):
        a = self.agent("--header-timeout=1s")
        self.assertEqual(self.metric(a, "luofleet_http_header_timeout_seconds"), 1.0)
        s = connect(a.port)
        head = b"GET /v1/state HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"s" * 100
        t = time.monotonic()
        cut = None
        served_meanwhile = None
        for i in range(len(head)):
            # A byte every 200 ms: never idle, never done.
            try:
                s.sendall(head[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                cut = time.monotonic() - t
                break
            if i == 2:
                # Meanwhile a normal request is served at once.
                t1 = time.monotonic()
                served_meanwhile = a.direct().get("/v1/state").status
                self.assertLess(time.monotonic() - t1, 0.5 * SCALE)
            s.settimeout(0.2)
            try:
                if s.recv(1) == b"":
                    cut = time.monotonic() - t
                    break
            except socket.timeout:
                pass
            except ConnectionResetError:
                cut = time.monotonic() - t
                break
        s.close()
        self.assertEqual(served_meanwhile, 200)
        self.assertIsNotNone(cut, "the trickling client was never cut off")
        self.assertGreaterEqual(cut, 0.9)
        self.assertLess(cut, 2.0 * SCALE)
        self.assertEqual(self.rejected(a, "header_timeout"), 1)
        self.assertServes(a)

    def test_slow_body_is_cut_off(self):
        a = self.agent("--header-timeout=1s")
        s = connect(a.port)
        s.sendall(b"POST /v1/finish HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{")
        t = time.monotonic()
        try:
            for _ in range(30):
                s.sendall(b" ")
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.assertLess(wait_closed(s, 5), 5)
        self.assertLess(time.monotonic() - t, 2.5 * SCALE)
        s.close()
        self.assertEqual(self.rejected(a, "header_timeout"), 1)
        self.assertServes(a)

    def test_slow_second_request_on_a_kept_alive_connection(self):
        # After an answer, the next request has idle timeout + header timeout to arrive.
        a = self.agent("--header-timeout=1s", "--idle-timeout=1s")
        s = connect(a.port)
        s.sendall(GET_STATE)
        self.assertEqual(read_answer(s)[0], 200)
        t = time.monotonic()
        cut = None
        for b in b"GET /v1/state HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"s" * 100:
            try:
                s.sendall(bytes([b]))
            except (BrokenPipeError, ConnectionResetError):
                cut = time.monotonic() - t
                break
            s.settimeout(0.2)
            try:
                if s.recv(1) == b"":
                    cut = time.monotonic() - t
                    break
            except socket.timeout:
                pass
            except ConnectionResetError:
                cut = time.monotonic() - t
                break
        s.close()
        self.assertIsNotNone(cut)
        self.assertGreaterEqual(cut, 1.9)
        self.assertLess(cut, 3.0 * SCALE)
        self.assertEqual(self.rejected(a, "header_timeout"), 1)

    def test_idle_timeout(self):
        a = self.agent("--idle-timeout=1s", "--header-timeout=30s")
        self.assertEqual(self.metric(a, "luofleet_http_idle_timeout_seconds"), 1.0)
        # A connection that never sends a byte.
        s = connect(a.port)
        self.assertLess(wait_closed(s, 5), 2.5 * SCALE)
        s.close()
        # A kept-alive connection after its answer.
        s = connect(a.port)
        s.sendall(GET_STATE)
        self.assertEqual(read_answer(s)[0], 200)
        t = time.monotonic()
        wait_closed(s, 5)
        self.assertGreaterEqual(time.monotonic() - t, 0.5)
        self.assertLess(time.monotonic() - t, 2.5 * SCALE)
        s.close()
        self.assertEqual(self.rejected(a, "header_timeout"), 0)
        self.assertServes(a)

    def test_long_polls_and_streams_outlive_the_timeouts(self):
        # Answered (suspended) requests are not subject to the idle or header timeouts.
        a = self.agent("--idle-timeout=1s", "--header-timeout=1s", "--sse-heartbeat=1500ms")
        c = a.direct()
        n = c.state()["index"]
        t = time.monotonic()
        r = c.get("/v1/state?index=%d&wait=3s" % n, timeout=10)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json["index"], n)
        self.assertGreaterEqual(time.monotonic() - t, 2.9)
        s = SSEStream(a.direct_url, timeout=5)
        try:
            self.assertEqual(s.status, 200)
            self.assertEqual(s.read_block(timeout=3), {"comments": [], "retry": "2000"})
            self.assertEqual(s.next_event(timeout=3)["event"], "state")
            for _ in range(2):
                self.assertEqual(s.read_block(timeout=3), {"comments": ["heartbeat"]})
        finally:
            s.close()
        self.assertEqual(self.rejected(a, "header_timeout"), 0)


class CapTest(LimitTestCase):

    def test_waiter_cap(self):
        a = self.agent("--max-waiters=2")
        c = a.client()
        n = c.state()["index"]
        held = []
        try:
            for _ in range(2):
                s = connect(a.port)
                s.sendall(b"GET /v1/state?index=%d&wait=30s HTTP/1.1\r\nHost: x\r\n\r\n" % n)
                held.append(s)
            wait_for(lambda: self.metric(a, "luofleet_longpoll_waiters") == 2,
                     timeout=5 * SCALE, what="2 waiters")
            r = c.get("/v1/state?index=%d&wait=30s" % n)
            self.assertProblem(r, 503, "too-many-waiters", retry_after_ms=1000)
            self.assertEqual(r.header("Retry-After"), "1")
        finally:
            for s in held:
                s.close()
        self.assertEqual(self.rejected(a, "waiters"), 1)
        self.assertEqual(self.metric(a, "luofleet_longpoll_rejected_total"), 1)
        self.assertServes(a)

    def test_stream_cap(self):
        a = self.agent("--max-streams=1", "--sse-heartbeat=200ms")
        self.assertEqual(self.metric(a, "luofleet_sse_clients_max"), 1)
        s = SSEStream(a.direct_url, timeout=5)
        try:
            self.assertEqual(s.status, 200)
            r = a.client().get("/v1/events")
            self.assertProblem(r, 503, "too-many-streams")
            self.assertEqual(r.header("Retry-After"), "5")
        finally:
            s.close()
        self.assertEqual(self.rejected(a, "streams"), 1)
        self.assertServes(a)


class LimitMetricsTest(LimitTestCase):

    def test_gauges_and_counters(self):
        a = self.agent("--max-connections=100", "--max-connections-per-ip=50",
                       "--max-header-bytes=8192", "--max-body-bytes=2048",
                       "--header-timeout=2500ms", "--idle-timeout=30s", "--max-waiters=7",
                       "--max-streams=9")
        expected = {
            "luofleet_http_connections_max": 100,
            "luofleet_http_connections_per_ip_max": 50,
            "luofleet_http_header_max_bytes": 8192,
            "luofleet_http_body_max_bytes": 2048,
            "luofleet_http_header_timeout_seconds": 2.5,
            "luofleet_http_idle_timeout_seconds": 30,
            "luofleet_longpoll_waiters_max": 7,
            "luofleet_sse_clients_max": 9,
            "luofleet_http_connections": 1,
        }
        for name, v in expected.items():
            self.assertEqual(self.metric(a, name), v, name)
        for reason in ("total", "per_ip", "header_timeout", "header_too_large",
                       "body_too_large", "malformed", "waiters", "streams"):
            self.assertEqual(self.rejected(a, reason), 0, reason)
        body = a.client().get("/metrics").body.decode()
        self.assertIn("# TYPE luofleet_http_rejected_total counter\n", body)
        self.assertIn("# TYPE luofleet_http_connections gauge\n", body)

    def test_defaults(self):
        a = self.agent()
        expected = {
            "luofleet_http_connections_max": 16384,
            "luofleet_http_connections_per_ip_max": 1024,
            "luofleet_http_header_max_bytes": 16384,
            "luofleet_http_body_max_bytes": 65536,
            "luofleet_http_header_timeout_seconds": 10,
            "luofleet_http_idle_timeout_seconds": 60,
            "luofleet_longpoll_waiters_max": 10000,
            "luofleet_sse_clients_max": 1000,
        }
        for name, v in expected.items():
            self.assertEqual(self.metric(a, name), v, name)


class BadFlagTest(unittest.TestCase):

    def test_bad_values_exit_2(self):
        tmp = harness._module_tmp("badflags")
        self.addCleanup(shutil.rmtree, tmp, True)
        cases = [
            ("--max-connections", ["0", "3", "1000001", "abc", "-1", ""]),
            ("--max-connections-per-ip", ["0", "1000001", "x", "-5"]),
            ("--max-header-bytes", ["0", "4095", "1048577", "16k", "-1"]),
            ("--max-body-bytes", ["0", "1023", "16777217", "1e6"]),
            ("--header-timeout", ["0", "50ms", "2h", "soon", "-1s"]),
            ("--idle-timeout", ["0", "999ms", "25h", "forever"]),
            ("--max-waiters", ["0", "1000001", "many"]),
            ("--max-streams", ["0", "100001", "lots"]),
            ("--staging-dir", ["relative/dir", "/a/../b", "/a/..", ""]),
        ]
        for flag, values in cases:
            for v in values:
                with self.subTest(flag=flag, value=v):
                    rc, out, err = harness.run_agent(
                        ["--backend=sim", "--state-dir=%s" % os.path.join(tmp, "st"),
                         "--listen=127.0.0.1:0", "%s=%s" % (flag, v)])
                    self.assertEqual(rc, 2, (out, err))
                    self.assertIn(flag, err)
                    self.assertNotIn("listening on", out)


if __name__ == "__main__":
    harness.main()
