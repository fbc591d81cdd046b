#!/usr/bin/env python3
"""test_events.py: GET /v1/events (Server-Sent Events): the retry hint, the initial state
event, one event per journal record with consecutive ids, Last-Event-ID replay (header and
query), heartbeats, the stream cap (503 too-many-streams) and streams at shutdown."""

import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import AgentTestCase, SSEStream, make_file, wait_for  # noqa: E402

setUpModule, tearDownModule = harness.module_fixtures(__file__)


class EventStreamTest(AgentTestCase):

    def open(self, a, headers=None, path="/v1/events"):
        s = SSEStream(a.direct_url, path=path, headers=headers)
        self.addCleanup(s.close)
        return s

    def expect_retry(self, s):
        b = s.read_block()
        self.assertEqual(b, {"comments": [], "retry": "2000"})

    def expect_events(self, s, first_id, kinds, records=None):
        """The next len(kinds) events: ids first_id, first_id+1, ..., with these names;
        each data is the journal record with that index."""
        got = []
        for i, kind in enumerate(kinds):
            e = s.next_event()
            self.assertEqual((e["id"], e["event"]), (str(first_id + i), kind), e)
            self.assertEqual(e["json"]["index"], first_id + i)
            self.assertEqual(e["json"]["kind"], kind)
            if records is not None:
                self.assertEqual(e["json"], records[first_id + i - 1])
            got.append(e)
        return got

    def test_initial_state_then_one_event_per_change(self):
        a = self.agent()
        c = a.client()
        s = self.open(a)
        self.assertEqual(s.status, 200)
        self.assertEqual(s.header("Content-Type"), "text/event-stream")
        self.assertEqual(s.header("Cache-Control"), "no-store")
        self.expect_retry(s)
        e = s.next_event()
        doc = c.state()
        self.assertEqual((e["id"], e["event"]), (str(doc["index"]), "state"))
        self.assertEqual(e["json"], doc)
        self.assertEqual(c.metric("luofleet_sse_clients"), 1)

        self.assertEqual(c.post("/v1/prepare", json_body={"operation_id": "ev-1"}).status, 200)
        files = os.path.join(self.tmp, "files")
        os.mkdir(files)
        kpath, ksha = make_file(files, "vmlinuz", 1234)
        self.assertEqual(c.put("/v1/kernel", json_body={"kernel": {"path": kpath,
                                                                   "sha256": ksha}}).status, 200)
        self.assertEqual(c.post("/v1/cancel").status, 200)
        records = c.all_records()
        evs = self.expect_events(s, 2, ["operation", "transition", "operation",
                                        "operation", "staging", "operation",
                                        "operation", "transition", "operation"], records)
        self.assertEqual(evs[0]["json"]["operation"]["id"], "ev-1")
        self.assertEqual(evs[0]["json"]["operation"]["status"], "running")
        self.assertEqual((evs[1]["json"]["from"], evs[1]["json"]["to"]), ("normal", "prepared"))
        self.assertEqual(evs[2]["json"]["operation"]["status"], "succeeded")
        self.assertEqual(evs[4]["json"]["staged"]["kernel"]["sha256"], ksha)
        self.assertEqual((evs[7]["json"]["from"], evs[7]["json"]["to"]), ("prepared", "normal"))
        # Nothing more is pending.
        with self.assertRaises(socket.timeout):
            s.next_event(timeout=0.3)
        self.assertEqual(c.metric("luofleet_sse_events_total"), 10)

    def test_several_streams_get_the_same_events(self):
        a = self.agent()
        c = a.client()
        streams = [self.open(a) for _ in range(3)]
        for s in streams:
            self.expect_retry(s)
            self.assertEqual(s.next_event()["event"], "state")
        self.assertEqual(c.metric("luofleet_sse_clients"), 3)
        self.assertEqual(c.post("/v1/prepare").status, 200)
        records = c.all_records()
        for s in streams:
            self.expect_events(s, 2, ["operation", "transition", "operation"], records)

    def test_last_event_id_replays_after_n(self):
        a = self.agent()
        c = a.client()
        for path in ("/v1/prepare", "/v1/cancel", "/v1/prepare", "/v1/cancel"):
            self.assertEqual(c.post(path).status, 200)
        records = c.all_records()
        self.assertEqual(len(records), 13)
        kinds = [r["kind"] for r in records]
        cases = [({"Last-Event-ID": "5"}, "/v1/events", 6),
                 ({}, "/v1/events?last_event_id=5", 6),
                 ({"Last-Event-ID": "10"}, "/v1/events?last_event_id=2", 11),  # header wins
                 ({"Last-Event-ID": "0"}, "/v1/events", 1),
                 ({"Last-Event-ID": "12"}, "/v1/events", 13)]
        for headers, path, first in cases:
            with self.subTest(headers=headers, path=path):
                s = self.open(a, headers=headers, path=path)
                self.assertEqual(s.status, 200)
                self.expect_retry(s)
                self.expect_events(s, first, kinds[first - 1:], records)
                with self.assertRaises(socket.timeout):
                    s.next_event(timeout=0.2)
                s.close()
        # Caught up: a resumed stream then goes live.
        s = self.open(a, headers={"Last-Event-ID": "13"})
        self.expect_retry(s)
        with self.assertRaises(socket.timeout):
            s.next_event(timeout=0.2)
        self.assertEqual(c.post("/v1/prepare").status, 200)
        self.expect_events(s, 14, ["operation", "transition", "operation"], c.all_records())

    def test_last_event_id_from_the_future_starts_over(self):
        # An id greater than the current index (the client saw a journal this agent does not
        # have, e.g. after its state directory was reset): the stream starts over like a new
        # subscription, with a `state` event at the current index, then goes live.
        a = self.agent()
        c = a.client()
        self.assertEqual(c.post("/v1/prepare").status, 200)
        doc = c.state()
        self.assertEqual(doc["index"], 4)
        for headers, path in (({"Last-Event-ID": "5"}, "/v1/events"),
                              ({"Last-Event-ID": "1000"}, "/v1/events"),
                              ({}, "/v1/events?last_event_id=9223372036854775807"),
                              ({"Last-Event-ID": "99"}, "/v1/events?last_event_id=2")):
            with self.subTest(headers=headers, path=path):
                s = self.open(a, headers=headers, path=path)
                self.assertEqual(s.status, 200)
                self.expect_retry(s)
                e = s.next_event()
                self.assertEqual((e["id"], e["event"]), ("4", "state"), e)
                self.assertEqual(e["json"], doc)
                with self.assertRaises(socket.timeout):
                    s.next_event(timeout=0.2)
                s.close()
        # ... and then goes live from there.
        s = self.open(a, headers={"Last-Event-ID": "50"})
        self.expect_retry(s)
        self.assertEqual(s.next_event()["event"], "state")
        self.assertEqual(c.post("/v1/cancel").status, 200)
        self.expect_events(s, 5, ["operation", "transition", "operation"], c.all_records())
        # The current index itself is not the future: a plain resume, no state event.
        s = self.open(a, headers={"Last-Event-ID": "7"})
        self.expect_retry(s)
        with self.assertRaises(socket.timeout):
            s.next_event(timeout=0.2)

    def test_bad_last_event_id(self):
        a = self.agent()
        c = a.client()  # error answers are whole: the proxy carries (and checks) them
        for headers, path in (({"Last-Event-ID": "abc"}, "/v1/events"),
                              ({"Last-Event-ID": "-1"}, "/v1/events"),
                              ({}, "/v1/events?last_event_id=1.5"),
                              ({}, "/v1/events?last_event_id=1&last_event_id=2")):
            with self.subTest(headers=headers, path=path):
                self.assertProblem(c.get(path, headers=headers), 400, "invalid-query")

    def test_heartbeat(self):
        a = self.agent("--sse-heartbeat=200ms")
        s = self.open(a)
        self.expect_retry(s)
        self.assertEqual(s.next_event()["event"], "state")
        times = []
        t0 = time.monotonic()
        for _ in range(2):
            b = s.read_block(timeout=2.0)
            self.assertEqual(b, {"comments": ["heartbeat"]})
            times.append(time.monotonic() - t0)
        self.assertLess(times[0], 0.6)
        self.assertGreater(times[1] - times[0], 0.1)
        self.assertLess(times[1] - times[0], 0.8)

    def test_stream_cap(self):
        a = self.agent("--max-streams=2", "--sse-heartbeat=200ms")
        c = a.client()
        s1, s2 = self.open(a), self.open(a)
        for s in (s1, s2):
            self.expect_retry(s)
            self.assertEqual(s.next_event()["event"], "state")
        r = c.get("/v1/events")
        self.assertProblem(r, 503, "too-many-streams")
        self.assertEqual(r.header("Retry-After"), "5")
        self.assertEqual(c.metric("luofleet_sse_rejected_total"), 1)
        self.assertEqual(c.metric("luofleet_sse_clients"), 2)
        # A client that leaves frees its slot (noticed at the latest on the next heartbeat).
        s1.close()
        wait_for(lambda: c.metric("luofleet_sse_clients") == 1, timeout=5,
                 what="the closed stream to be dropped")
        s3 = self.open(a)
        self.assertEqual(s3.status, 200)
        self.expect_retry(s3)
        self.assertEqual(s3.next_event()["event"], "state")

    def test_streams_end_at_shutdown(self):
        a = self.agent()
        s = self.open(a)
        self.expect_retry(s)
        self.assertEqual(s.next_event()["event"], "state")
        t = time.monotonic()
        a.stop()  # exit code 0 with a stream open
        self.assertLess(time.monotonic() - t, 5)
        with self.assertRaises((EOFError, ConnectionError, socket.timeout)):
            s.read_block(timeout=2)


if __name__ == "__main__":
    harness.main()
