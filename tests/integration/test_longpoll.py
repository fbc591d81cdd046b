#!/usr/bin/env python3
"""test_longpoll.py: blocking queries on GET /v1/state?index=N&wait=D: wake-up latency,
the timeout path, indexes from the future, 1000 concurrent waiters on raw sockets, the
waiter cap (503 too-many-waiters) and the waiter gauge in /metrics."""

import errno
import json
import os
import resource
import selectors
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import AgentTestCase, Background, wait_for  # noqa: E402

setUpModule, tearDownModule = harness.module_fixtures(__file__)


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        want = n if hard == resource.RLIM_INFINITY else min(n, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class RawLongPolls:
    """n long-polls on raw non-blocking sockets (HTTP/1.1 written by hand, Connection:
    close), driven by one selector: connect, send, then read each answer to EOF."""

    def __init__(self, port, path, n):
        self.sel = selectors.DefaultSelector()
        self.req = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n"
                    "User-Agent: luofleet-it-longpoll\r\n\r\n" % (path, port)).encode()
        self.conns = []
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            rc = s.connect_ex(("127.0.0.1", port))
            if rc not in (0, errno.EINPROGRESS):
                raise OSError(rc, os.strerror(rc))
            st = {"sock": s, "out": self.req, "in": bytearray(), "done": False, "at": None}
            self.conns.append(st)
            self.sel.register(s, selectors.EVENT_WRITE, st)

    def pump(self, until, timeout):
        """Run the selector until until() is true; raises on timeout."""
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("raw long-polls: timed out (%d of %d done)"
                                     % (self.n_done(), len(self.conns)))
            for key, ev in self.sel.select(min(left, 0.05)):
                st = key.data
                s = st["sock"]
                if ev & selectors.EVENT_WRITE and st["out"]:
                    try:
                        k = s.send(st["out"])
                    except (BlockingIOError, InterruptedError):
                        continue
                    st["out"] = st["out"][k:]
                    if not st["out"]:
                        self.sel.modify(s, selectors.EVENT_READ, st)
                elif ev & selectors.EVENT_READ:
                    try:
                        b = s.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except ConnectionResetError:
                        b = b""
                    if b:
                        st["in"] += b
                    else:
                        st["done"] = True
                        st["at"] = time.monotonic()
                        self.sel.unregister(s)
                        s.close()

    def all_sent(self):
        return all(not st["out"] for st in self.conns)

    def n_done(self):
        return sum(1 for st in self.conns if st["done"])

    def all_done(self):
        return self.n_done() == len(self.conns)

    def answers(self):
        """[(status, headers dict (lower-case names), body bytes)] of the finished ones."""
        out = []
        for st in self.conns:
            if not st["done"]:
                continue
            raw = bytes(st["in"])
            head, _, body = raw.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1]) if lines and lines[0] else 0
            hdrs = {}
            for ln in lines[1:]:
                k, _, v = ln.partition(":")
                hdrs[k.strip().lower()] = v.strip()
            out.append((status, hdrs, body))
        return out

    def close(self):
        for st in self.conns:
            if not st["done"]:
                try:
                    self.sel.unregister(st["sock"])
                except (KeyError, ValueError):
                    pass
                st["sock"].close()
        self.sel.close()


class LongPollTest(AgentTestCase):

    def wait_waiters(self, c, n, timeout=10.0):
        wait_for(lambda: c.metric("luofleet_longpoll_waiters") == n, timeout=timeout,
                 interval=0.02, what="luofleet_longpoll_waiters == %d" % n)

    def test_wakes_within_100ms_of_a_transition(self):
        a = self.agent()
        c = a.client()
        n = c.state()["index"]
        # The timed long-poll goes to the agent itself (no proxy latency in the measure).
        lp = Background(a.direct().get, "/v1/state?index=%d&wait=30s" % n, timeout=40)
        self.wait_waiters(c, 1)
        r = c.post("/v1/prepare")
        t_post_done = time.monotonic()
        self.assertEqual(r.status, 200, r)
        res = lp.get()
        d = self.assertStateDoc(res)
        self.assertGreater(d["index"], n)
        self.assertLessEqual(lp.done_at, t_post_done + 0.1,
                             "the long-poll answered %.3fs after the POST returned"
                             % (lp.done_at - t_post_done))
        self.assertEqual(c.metric("luofleet_longpoll_waiters"), 0)
        self.assertEqual(c.metric('luofleet_longpoll_wakeups_total{reason="change"}'), 1)

    def test_chained_long_polls_see_every_change(self):
        # A watcher looping on index never misses a change and never sees the index go back.
        a = self.agent()
        c = a.client()
        seen = []

        def watch(until):
            idx = c.state()["index"]
            seen.append(idx)
            while idx < until:
                r = c.get("/v1/state?index=%d&wait=10s" % idx, timeout=15)
                d = r.json
                assert r.status == 200 and d["index"] > idx, r
                idx = d["index"]
                seen.append(idx)
            return idx

        w = Background(watch, 13)
        self.wait_waiters(c, 1)
        for path in ("/v1/prepare", "/v1/cancel", "/v1/prepare", "/v1/cancel"):
            self.assertEqual(c.post(path).status, 200)
        self.assertEqual(w.get(), 13)
        self.assertEqual(seen, sorted(set(seen)))
        self.assertEqual(seen[0], 1)
        self.assertEqual(seen[-1], 13)

    def test_timeout_returns_the_unchanged_document(self):
        a = self.agent()
        c = a.client()
        plain = c.get("/v1/state")
        n = plain.json["index"]
        for wait, secs in (("500ms", 0.5), ("1", 1.0)):
            with self.subTest(wait=wait):
                t = time.monotonic()
                r = c.get("/v1/state?index=%d&wait=%s" % (n, wait))
                elapsed = time.monotonic() - t
                self.assertStateDoc(r)
                self.assertEqual(r.body, plain.body)
                self.assertEqual(r.header("ETag"), plain.header("ETag"))
                self.assertGreaterEqual(elapsed, secs - 0.02)
                self.assertLess(elapsed, secs + 1.0)
        t = time.monotonic()
        r = c.get("/v1/state?index=%d&wait=0" % n)
        self.assertEqual(r.body, plain.body)
        self.assertLess(time.monotonic() - t, 0.5)
        self.assertEqual(c.metric('luofleet_longpoll_wakeups_total{reason="timeout"}'), 2)
        self.assertEqual(c.metric("luofleet_longpoll_waiters"), 0)

    def test_each_waiter_keeps_its_own_deadline(self):
        a = self.agent()
        c = a.client()
        n = c.state()["index"]
        t0 = time.monotonic()
        # Registered longest first, so that every later one moves the timer earlier.
        polls = [(ms, Background(c.get, "/v1/state?index=%d&wait=%dms" % (n, ms)))
                 for ms in (1000, 600, 300, 100)]
        for ms, p in polls:
            self.assertEqual(p.get().status, 200)
            took = p.done_at - t0
            self.assertGreaterEqual(took, ms / 1000.0 - 0.02, ms)
            self.assertLess(took, ms / 1000.0 + 0.5, ms)

    def test_many_timeouts_at_once(self):
        a = self.agent()
        c = a.client()
        n = c.state()["index"]
        polls = RawLongPolls(a.port, "/v1/state?index=%d&wait=300ms" % n, 50)
        try:
            t = time.monotonic()
            polls.pump(polls.all_done, 10)
            elapsed = time.monotonic() - t
            answers = polls.answers()
        finally:
            polls.close()
        self.assertGreaterEqual(elapsed, 0.28)
        self.assertLess(elapsed, 3.0)
        self.assertEqual(len(answers), 50)
        for status, hdrs, body in answers:
            self.assertEqual(status, 200)
            self.assertEqual(hdrs.get("etag"), '"%d"' % n)
            self.assertEqual(json.loads(body)["index"], n)
        self.assertEqual(c.metric('luofleet_longpoll_wakeups_total{reason="timeout"}'), 50)

    def test_index_from_the_future_or_past_answers_at_once(self):
        a = self.agent()
        c = a.client()
        self.assertEqual(c.post("/v1/prepare").status, 200)
        n = c.state()["index"]
        for idx in (n + 1, n + 100, 9223372036854775807, n - 1, 0):
            with self.subTest(index=idx):
                t = time.monotonic()
                r = c.get("/v1/state?index=%d&wait=30s" % idx, timeout=35)
                self.assertLess(time.monotonic() - t, 0.5)
                d = self.assertStateDoc(r)
                self.assertEqual(d["index"], n)

    def test_keep_alive_after_a_long_poll(self):
        a = self.agent()
        c = a.direct()  # the agent's own keep-alive, not the proxy's
        n = c.state()["index"]
        conn = c.connection()
        try:
            for q in ("/v1/state?index=%d&wait=200ms" % n, "/v1/state", "/healthz",
                      "/v1/state?index=%d&wait=100ms" % n):
                conn.request("GET", q)
                r = conn.getresponse()
                self.assertEqual(r.status, 200)
                r.read()
        finally:
            conn.close()

    def test_1000_concurrent_long_polls_wake_on_one_transition(self):
        if raise_nofile(2200) < 1100:
            self.skipTest("RLIMIT_NOFILE too low for 1000 sockets")
        a = self.agent()
        c = a.client()
        n = c.state()["index"]
        polls = RawLongPolls(a.port, "/v1/state?index=%d&wait=30s" % n, 1000)
        try:
            polls.pump(polls.all_sent, 20)
            # Keep pumping (nothing to read yet) until the agent holds all of them.
            deadline = time.monotonic() + 20
            while c.metric("luofleet_longpoll_waiters") != 1000:
                self.assertLess(time.monotonic(), deadline, "waiters never reached 1000")
                polls.pump(lambda: True, 1)
                time.sleep(0.05)
            self.assertEqual(polls.n_done(), 0)
            t = time.monotonic()
            r = c.post("/v1/prepare")
            self.assertEqual(r.status, 200, r)
            final = r.json["index"]
            polls.pump(polls.all_done, 20)
            elapsed = time.monotonic() - t
            answers = polls.answers()
        finally:
            polls.close()
        self.assertEqual(len(answers), 1000)
        for status, hdrs, body in answers:
            self.assertEqual(status, 200, body[:300])
            d = json.loads(body)
            self.assertGreater(d["index"], n)
            self.assertLessEqual(d["index"], final)
            self.assertEqual(hdrs.get("etag"), '"%d"' % d["index"])
            self.assertEqual(hdrs.get("content-type"), "application/json")
        self.assertLess(elapsed, 10.0)
        self.assertEqual(c.metric("luofleet_longpoll_waiters"), 0)
        self.assertEqual(c.metric('luofleet_longpoll_wakeups_total{reason="change"}'), 1000)
        self.assertEqual(c.metric("luofleet_longpoll_rejected_total"), 0)

    def test_waiter_cap(self):
        a = self.agent("--max-waiters=5")
        c = a.client()
        n = c.state()["index"]
        self.assertEqual(c.metric("luofleet_longpoll_waiters_max"), 5)
        polls = RawLongPolls(a.port, "/v1/state?index=%d&wait=30s" % n, 5)
        try:
            polls.pump(polls.all_sent, 10)
            self.wait_waiters(c, 5)
            t = time.monotonic()
            r = c.get("/v1/state?index=%d&wait=30s" % n)
            self.assertLess(time.monotonic() - t, 1.0)
            self.assertProblem(r, 503, "too-many-waiters", retry_after_ms=1000)
            self.assertEqual(r.header("Retry-After"), "1")
            self.assertEqual(c.metric("luofleet_longpoll_rejected_total"), 1)
            self.assertEqual(c.metric("luofleet_longpoll_waiters"), 5)
            # Requests that do not wait are not limited.
            self.assertStateDoc(c.get("/v1/state"))
            self.assertStateDoc(c.get("/v1/state?index=%d&wait=30s" % (n - 1)))
            self.assertEqual(c.post("/v1/prepare").status, 200)
            polls.pump(polls.all_done, 10)
            answers = polls.answers()
        finally:
            polls.close()
        self.assertEqual([x[0] for x in answers], [200] * 5)
        self.assertEqual(c.metric("luofleet_longpoll_waiters"), 0)
        # Room again.
        m = c.state()["index"]
        lp = Background(c.get, "/v1/state?index=%d&wait=30s" % m, timeout=40)
        self.wait_waiters(c, 1)
        self.assertEqual(c.post("/v1/cancel").status, 200)
        self.assertEqual(lp.get().status, 200)

    def test_waiters_that_hang_up(self):
        a = self.agent()
        c = a.client()
        n = c.state()["index"]
        polls = RawLongPolls(a.port, "/v1/state?index=%d&wait=30s" % n, 20)
        polls.pump(polls.all_sent, 10)
        self.wait_waiters(c, 20)
        polls.close()  # every client goes away while suspended
        self.assertEqual(c.post("/v1/prepare").status, 200)
        wait_for(lambda: c.metric("luofleet_longpoll_waiters") == 0, what="waiters gone")
        # Still serving, and a new long-poll works.
        m = c.state()["index"]
        lp = Background(c.get, "/v1/state?index=%d&wait=30s" % m, timeout=40)
        self.wait_waiters(c, 1)
        self.assertEqual(c.post("/v1/cancel").status, 200)
        self.assertEqual(lp.get().status, 200)

    def test_shutdown_with_waiters_many_times(self):
        # SIGTERM while long-polls wait, some of whose clients already hung up: the agent
        # exits 0 every time (libmicrohttpd's quiesce once raced its own thread here and
        # aborted the process: "Failed to remove listen FD from epoll set").
        for i in range(12):
            a = self.agent(port=0, name="stop%d" % i)
            c = a.client()
            n = c.state()["index"]
            polls = RawLongPolls(a.port, "/v1/state?index=%d&wait=30s" % n, 8)
            polls.pump(polls.all_sent, 10)
            self.wait_waiters(c, 8)
            for st in polls.conns[: 4 + i % 4]:
                st["sock"].close()
            self.assertEqual(a.stop(), 0, a.log())
            polls.close()


if __name__ == "__main__":
    harness.main()
