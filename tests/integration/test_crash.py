#!/usr/bin/env python3
"""test_crash.py: kill -9 between (and during) the steps of the cycle, then restart on the
same state directory: reconciliation with the simulated kernel, indexes that never go
back, operation ids that replay without acting again. StepCrashTest kills at each step of
each transition with the LUOFLEET_TEST_CRASH_POINT test hook (test_faults.py tears journal
writes). Also a torn journal tail, a second
agent on the same state directory, a missing kernel backend and bad flags."""

import json
import os
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import AgentTestCase, Background, make_file, run_agent, wait_for  # noqa: E402

setUpModule, tearDownModule = harness.module_fixtures(__file__)


def expected_state(k):
    """The state the simulated kernel will report at the agent's next start (kernel.json)."""
    if k["reboot_pending"]:
        return "updated" if k["state"] == "frozen" else "normal"
    return k["state"]


def count_to(records, state):
    return sum(1 for r in records if r["kind"] == "transition" and r["to"] == state)


class CrashTest(AgentTestCase):

    def stage(self, a, op_id="c-stage"):
        files = os.path.join(self.tmp, "files")
        os.makedirs(files, exist_ok=True)
        kpath, ksha = make_file(files, "vmlinuz", 3000)
        body = {"kernel": {"path": kpath, "sha256": ksha}, "operation_id": op_id}
        r = a.client().put("/v1/kernel", json_body=body)
        self.assertEqual(r.status, 200, r)
        return body, r

    def crash_and_restart(self, a, last_index):
        """kill -9, check the sim, restart; the document must match the sim and the index
        must not have gone back. Returns (document, kernel.json read before the restart)."""
        a.kill9()
        self.assertEqual(a.returncodes[-1], -9)
        k = a.sim_kernel()
        a.restart()
        d = a.client().state()
        self.assertEqual(d["state"], expected_state(k), (d, k))
        self.assertEqual(d["state"], a.sim_kernel()["state"])
        self.assertEqual(d["boot_id"], a.sim_kernel()["boot_id"])
        self.assertGreaterEqual(d["index"], last_index)
        recs = a.client().all_records()
        self.assertEqual([r["index"] for r in recs], list(range(1, d["index"] + 1)))
        return d, k

    def assert_replay_does_nothing(self, a, method, path, body, status):
        c = a.client()
        before = c.history()["last_index"]
        k = a.sim_kernel()
        r = c.request(method, path, json_body=body)
        self.assertEqual(r.status, status, r)
        self.assertEqual(c.history()["last_index"], before)
        self.assertEqual(a.sim_kernel(), k)
        return r

    def test_kill_after_stage(self):
        a = self.agent()
        body, r = self.stage(a)
        staged = r.json["staged"]
        d, k = self.crash_and_restart(a, r.json["index"])
        self.assertEqual(d["state"], "normal")
        self.assertEqual(d["staged"], staged)
        self.assertIsNotNone(k["kexec"])
        r2 = self.assert_replay_does_nothing(a, "PUT", "/v1/kernel", body, 200)
        self.assertEqual(r2.json["operation"], r.json["operation"])

    def test_kill_after_prepare(self):
        a = self.agent()
        self.stage(a)
        r = a.client().post("/v1/prepare", json_body={"operation_id": "c-prep"})
        self.assertEqual(r.status, 200, r)
        d, k = self.crash_and_restart(a, r.json["index"])
        self.assertEqual(d["state"], "prepared")
        self.assertEqual(d["operation"], r.json["operation"])
        self.assertIs(d["staged"]["loaded"], True)
        r2 = self.assert_replay_does_nothing(a, "POST", "/v1/prepare",
                                             {"operation_id": "c-prep"}, 200)
        self.assertEqual(r2.json["operation"], r.json["operation"])
        self.assertEqual(count_to(a.client().all_records(), "prepared"), 1)
        self.assertIn("Started while the kernel is prepared", a.log())
        # The host can go on: cancel (or reboot) from prepared.
        self.assertEqual(a.client().post("/v1/cancel").json["state"], "normal")

    def test_kill_during_a_slow_prepare(self):
        a = self.agent("--sim-fault=prepare=2000ms")
        c = a.client()
        bg = Background(lambda: c.post("/v1/prepare", json_body={"operation_id": "c-slow"}))
        d = wait_for(lambda: (lambda s: s if s["operation"] and
                              s["operation"]["status"] == "running" else None)(c.state()),
                     what="the slow prepare to run")
        time.sleep(0.2)  # inside the simulated kernel's 2 s stall
        d, k = self.crash_and_restart(a, d["index"])
        try:
            bg.get(timeout=5)
        except OSError:
            pass  # the connection died with the agent
        op = d["operation"]
        self.assertOperation(op, action="prepare", id="c-slow")
        # Judged by the kernel, never redone: consistent with the state.
        if d["state"] == "prepared":
            self.assertEqual(op["status"], "succeeded")
            want = 200
        else:
            self.assertEqual(d["state"], "normal")
            self.assertEqual(op["status"], "failed")
            self.assertEqual(op["error"]["code"], "kernel-error")
            want = 500
        recs = a.client().all_records()
        self.assertLessEqual(count_to(recs, "prepared"), 1)
        self.assertEqual(count_to(recs, "prepared"), 1 if d["state"] == "prepared" else 0)
        ends = [r for r in recs if r["kind"] == "operation" and r["operation"]["id"] == "c-slow"]
        self.assertEqual([r["operation"]["status"] for r in ends], ["running", op["status"]])
        self.assertEqual(ends[-1]["http_status"], want)
        r = self.assert_replay_does_nothing(a, "POST", "/v1/prepare",
                                            {"operation_id": "c-slow"}, want)
        if want == 500:
            self.assertProblem(r, 500, "kernel-error", replayed=True, operation_id="c-slow")
        # The stall was cut by the kill: the kernel never got the event.
        self.assertEqual(d["state"], "normal")

    def test_kill_while_the_reboot_waits(self):
        # --reboot-delay=5s: the kill lands after the 202, before the kexec.
        a = self.agent("--reboot-delay=5s")
        c = a.client()
        self.stage(a)
        self.assertEqual(c.post("/v1/prepare").status, 200)
        r = c.post("/v1/reboot", json_body={"operation_id": "c-reboot"})
        self.assertEqual(r.status, 202, r)
        boot = r.json["boot_id"]
        d, k = self.crash_and_restart(a, r.json["index"])
        self.assertEqual(d["state"], "prepared")
        self.assertEqual(d["boot_id"], boot)
        self.assertEqual(k["boots"], 1)
        self.assertOperation(d["operation"], action="reboot", status="failed", id="c-reboot")
        self.assertEqual(d["operation"]["error"]["code"], "kernel-error")
        self.assertIs(d["staged"]["loaded"], True)
        r2 = self.assert_replay_does_nothing(a, "POST", "/v1/reboot",
                                             {"operation_id": "c-reboot"}, 500)
        self.assertProblem(r2, 500, "kernel-error", replayed=True, operation_id="c-reboot")
        self.assertEqual(a.sim_kernel()["boots"], 1)
        self.assertEqual([x for x in a.client().all_records() if x["kind"] == "reboot"], [])
        # A new reboot works from here.
        a.stop()
        a.restart(args=[])
        r = a.client().post("/v1/reboot", json_body={"operation_id": "c-reboot-2"})
        self.assertEqual(r.status, 202, r)
        d = wait_for(lambda: (lambda s: s if s["boot_id"] != boot else None)(a.wait_ready()),
                     timeout=10, what="the new boot")
        self.assertEqual(d["state"], "updated")
        self.assertOperation(d["operation"], action="reboot", status="succeeded",
                             id="c-reboot-2")

    def check_planned_reboot(self, recs, d, op_id, old_boot, from_state="frozen"):
        """After a planned reboot: exactly one `reboot` record, written in the new boot,
        carrying the new boot's state and the reboot operation's successful end; no other
        record of that operation after it."""
        reboots = [x for x in recs if x["kind"] == "reboot"]
        self.assertEqual(len(reboots), 1, reboots)
        rb = reboots[0]
        self.assertEqual((rb["boot_id"], rb["to_boot_id"], rb["from_boot_id"]),
                         (d["boot_id"], d["boot_id"], old_boot))
        self.assertEqual((rb["state"], rb["from_state"]), ("updated", from_state))
        self.assertIs(rb["planned"], True)
        self.assertEqual(rb["operation_id"], op_id)
        self.assertOperation(rb["operation"], action="reboot", status="succeeded", id=op_id)
        self.assertEqual(rb["http_status"], 202)
        self.assertEqual(rb["operation"], d["operation"])
        later = [x for x in recs if x["index"] > rb["index"]]
        self.assertEqual([x for x in later if x["kind"] in ("operation", "transition")], [],
                         later)
        return rb

    def test_kill_right_after_the_reboot_answer(self):
        # Wherever the kill lands (before the kexec, during the re-exec, after it), the
        # restarted agent agrees with the simulated kernel and the reboot happened at most once;
        # in the new boot, the reboot operation is succeeded and its id replays 202.
        for delay in (0.0, 0.09, 0.13, 0.4):
            with self.subTest(delay=delay):
                a = self.agent(name="agent-%d" % int(delay * 1000))
                c = a.client()
                self.stage(a)
                self.assertEqual(c.post("/v1/prepare").status, 200)
                r = c.post("/v1/reboot", json_body={"operation_id": "c-rb"})
                self.assertEqual(r.status, 202, r)
                time.sleep(delay)
                d, k = self.crash_and_restart(a, r.json["index"])
                new_boot = d["boot_id"] != r.json["boot_id"]
                self.assertEqual(a.sim_kernel()["boots"], 2 if new_boot else 1)
                op = d["operation"]
                self.assertEqual((op["id"], op["action"]), ("c-rb", "reboot"))
                recs = a.client().all_records()
                if new_boot:
                    self.assertEqual(d["state"], "updated")
                    self.assertEqual(op["status"], "succeeded")
                    # from_state is the old boot's last recorded state: frozen, unless the
                    # kill landed between the kernel's freeze and the agent's record of it.
                    froze = [x for x in recs if x["kind"] == "transition" and
                             x["to"] == "frozen" and x["boot_id"] == r.json["boot_id"]]
                    self.check_planned_reboot(recs, d, "c-rb", r.json["boot_id"],
                                              "frozen" if froze else "prepared")
                    want = 202
                else:
                    # Before the kexec; the kernel may have frozen already (the reboot call
                    # writes the freeze and the pending kexec separately): crash_and_restart
                    # checked the state against sim/kernel.json.
                    self.assertIn(d["state"], ("prepared", "frozen"))
                    self.assertEqual(op["status"], "failed")
                    self.assertEqual([x for x in recs if x["kind"] == "reboot"], [])
                    want = 500
                r2 = self.assert_replay_does_nothing(a, "POST", "/v1/reboot",
                                                     {"operation_id": "c-rb"}, want)
                if new_boot:
                    self.assertEqual(r2.json["operation"], op)
                self.assertEqual(a.sim_kernel()["boots"], 2 if new_boot else 1)
                a.stop()

    def reboot_to_the_new_boot(self, a, op_id):
        """Stage, prepare, reboot with --sim-reboot=exit; returns the 202 document."""
        c = a.client()
        self.stage(a)
        self.assertEqual(c.post("/v1/prepare").status, 200)
        r = c.post("/v1/reboot", json_body={"operation_id": op_id})
        self.assertEqual(r.status, 202, r)
        self.assertEqual(a.wait_exit(), 0)
        self.assertIs(a.sim_kernel()["reboot_pending"], True)
        return r.json

    def test_kill_right_after_the_new_boot_started(self):
        # The reboot is told by one record, appended (and fsync'ed) in the new boot's
        # reconciliation, before the agent listens: a kill -9 right after the start cannot
        # leave half of it behind. The next start writes nothing and the reboot id replays
        # 202 with the succeeded operation.
        a = self.agent("--sim-reboot=exit")
        accepted = self.reboot_to_the_new_boot(a, "c-split")
        a.restart(args=[])
        a.kill9()  # as soon as it listens
        recs = a.journal_records()
        self.assertEqual([r["kind"] for r in recs if r["index"] > accepted["index"]],
                         ["transition", "reboot"])
        self.assertEqual(recs[-1]["kind"], "reboot")
        a.restart()
        c = a.client()
        d = c.state()
        self.assertEqual(d["state"], "updated")
        self.assertEqual(d["index"], recs[-1]["index"])  # nothing new at this start
        self.assertNotEqual(d["boot_id"], accepted["boot_id"])
        self.assertOperation(d["operation"], action="reboot", status="succeeded", id="c-split")
        self.check_planned_reboot(c.all_records(), d, "c-split", accepted["boot_id"])
        r = self.assert_replay_does_nothing(a, "POST", "/v1/reboot",
                                            {"operation_id": "c-split"}, 202)
        self.assertEqual(r.json["operation"], d["operation"])
        self.assertEqual(a.sim_kernel()["boots"], 2)

    def test_torn_reboot_record(self):
        # A crash in the middle of the reboot record's append leaves a torn line: it is
        # dropped at the next start, which finds itself in the new boot again and writes the
        # whole reboot record once more (the same as a kill just before the append).
        a = self.agent("--sim-reboot=exit")
        accepted = self.reboot_to_the_new_boot(a, "c-torn")
        a.restart(args=[])
        a.stop()
        with open(a.journal_path(), "rb") as f:
            lines = f.readlines()
        rb = json.loads(lines[-1])
        self.assertEqual(rb["kind"], "reboot")
        size = sum(len(x) for x in lines[:-1])
        with open(a.journal_path(), "r+b") as f:
            f.truncate(size + len(lines[-1]) // 2)
        a.restart()
        self.assertIn("dropped a torn tail of %d bytes at offset %d"
                      % (len(lines[-1]) // 2, size), a.log())
        c = a.client()
        d = c.state()
        self.assertEqual((d["state"], d["boot_id"]), ("updated", rb["boot_id"]))
        self.assertEqual(d["index"], rb["index"])  # the same index, written again
        rb2 = self.check_planned_reboot(c.all_records(), d, "c-torn", accepted["boot_id"])
        self.assertEqual(rb2["operation"]["requested_at"], rb["operation"]["requested_at"])
        self.assertGreaterEqual(rb2["blackout_ms"], rb["blackout_ms"])
        self.assert_replay_does_nothing(a, "POST", "/v1/reboot", {"operation_id": "c-torn"},
                                        202)
        self.assertEqual(a.sim_kernel()["boots"], 2)

    def test_torn_journal_tail(self):
        a = self.agent()
        c = a.client()
        for path in ("/v1/prepare", "/v1/cancel"):
            self.assertEqual(c.post(path).status, 200)
        before = c.all_records()
        a.stop()
        size = os.path.getsize(a.journal_path())
        torn = b'{"index":%d,"time":"2026-11-25T14:33:36.604Z","boot_id":"' % (len(before) + 1)
        with open(a.journal_path(), "ab") as f:
            f.write(torn)
        a.restart()
        c = a.client()
        self.assertEqual(c.all_records(), before)
        self.assertEqual(c.state()["index"], len(before))
        self.assertIn("Journal: dropped a torn tail of %d bytes at offset %d, kept %d records"
                      % (len(torn), size, len(before)), a.log())
        self.assertEqual(os.path.getsize(a.journal_path()), size)
        # Appends go on after the cut.
        self.assertEqual(c.post("/v1/prepare").status, 200)
        recs = c.all_records()
        self.assertEqual([r["index"] for r in recs], list(range(1, len(before) + 4)))
        self.assertEqual(a.journal_records(), recs)

    def test_zero_filled_journal_tail(self):
        # What a crash can leave after a file-system journal replay: a block of NULs.
        a = self.agent()
        c = a.client()
        self.assertEqual(c.post("/v1/prepare").status, 200)
        before = c.all_records()
        a.kill9()
        size = os.path.getsize(a.journal_path())
        with open(a.journal_path(), "ab") as f:
            f.write(b"\0" * 4096)
        a.restart()
        self.assertEqual(a.client().all_records(), before)
        self.assertIn("dropped a torn tail of 4096 bytes at offset %d" % size, a.log())
        self.assertEqual(a.client().state()["state"], "prepared")

    def test_sigterm_during_a_slow_operation(self):
        # A clean stop lets the running operation finish and answers its client before the
        # connections close (the client talks to the agent directly: a proxy would turn a
        # lost answer into its own 500).
        a = self.agent("--sim-fault=prepare=1500ms")
        c = a.client()
        bg = Background(a.direct().post, "/v1/prepare", json_body={"operation_id": "t-slow"})
        wait_for(lambda: (lambda s: s["operation"] and s["operation"]["status"] == "running")(
            c.state()), what="the slow prepare to run")
        t = time.monotonic()
        self.assertEqual(a.stop(), 0)
        self.assertLess(time.monotonic() - t, 5)
        a.restart(args=[])
        d = a.client().state()
        self.assertEqual(d["state"], "prepared")
        self.assertOperation(d["operation"], action="prepare", status="succeeded", id="t-slow")
        self.assertEqual(self.assertStateDoc(bg.get()), d)

    def test_sigterm_with_waiting_long_polls(self):
        a = self.agent()
        c = a.client()
        n = c.state()["index"]
        # Directly: the waiters' answers must reach their own sockets before the agent closes
        # them.
        polls = [Background(a.direct().get, "/v1/state?index=%d&wait=30s" % n, timeout=40)
                 for _ in range(3)]
        wait_for(lambda: c.metric("luofleet_longpoll_waiters") == 3, what="3 waiters")
        t = time.monotonic()
        self.assertEqual(a.stop(), 0)
        self.assertLess(time.monotonic() - t, 3)
        for p in polls:
            d = self.assertStateDoc(p.get(timeout=5))
            self.assertEqual(d["index"], n)
        self.assertNotIn("answers not yet delivered", a.log())

    def unplanned_reboot(self, a):
        """Power-cycle the simulated machine while the agent is down."""
        k = a.sim_kernel()
        k["reboot_pending"] = True
        with open(a.sim_path("kernel.json"), "w") as f:
            json.dump(k, f)

    def test_unplanned_reboot(self):
        a = self.agent()
        c = a.client()
        self.stage(a)
        self.assertEqual(c.post("/v1/prepare", json_body={"operation_id": "u-prep"}).status, 200)
        before = c.state()
        a.stop()
        self.unplanned_reboot(a)
        a.restart()
        d = a.client().state()
        self.assertEqual(d["state"], "normal")  # not frozen at the reboot: no handover
        self.assertNotEqual(d["boot_id"], before["boot_id"])
        self.assertIsNone(d["staged"])
        self.assertEqual(d["operation"], before["operation"])
        recs = a.client().history("since=%d" % before["index"])["records"]
        # One record: the boot change and the state change across it (prepared does not
        # survive a reboot without the handover); no operation was running.
        self.assertEqual([r["kind"] for r in recs], ["reboot"])
        rb = recs[0]
        self.assertEqual(set(rb), {"index", "time", "boot_id", "kind", "state", "from_state",
                                   "from_boot_id", "to_boot_id", "blackout_ms", "planned",
                                   "kernel_uptime_ms_at_start", "kexec_ms", "verification"}, rb)
        self.assertIs(rb["planned"], False)
        self.assertEqual((rb["state"], rb["from_state"]), ("normal", "prepared"))
        self.assertEqual((rb["from_boot_id"], rb["to_boot_id"], rb["boot_id"]),
                         (before["boot_id"], d["boot_id"], d["boot_id"]))
        self.assertEqual(rb["index"], d["index"])
        # The old prepare id still replays; the host can start over.
        r = a.client().post("/v1/prepare", json_body={"operation_id": "u-prep"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["state"], "normal")
        self.assertEqual(a.client().post("/v1/prepare").json["state"], "prepared")

    def test_unplanned_reboot_during_an_operation(self):
        a = self.agent("--sim-fault=prepare=3000ms")
        c = a.client()
        bg = Background(lambda: c.post("/v1/prepare", json_body={"operation_id": "u-slow"}))
        wait_for(lambda: (lambda s: s["operation"] and s["operation"]["status"] == "running")(
            c.state()), what="the slow prepare to run")
        a.kill9()
        self.unplanned_reboot(a)
        a.restart(args=[])
        try:
            bg.get(timeout=5)
        except OSError:
            pass
        d = a.client().state()
        self.assertEqual(d["state"], "normal")
        self.assertOperation(d["operation"], action="prepare", status="failed", id="u-slow")
        self.assertEqual(d["operation"]["error"], {"code": "kernel-error",
                                                   "detail": "interrupted by an unplanned reboot",
                                                   "errno": None})
        # The reboot record ends the interrupted operation (500); nothing follows it.
        recs = a.client().all_records()
        self.assertEqual(recs[-1]["kind"], "reboot")
        rb = recs[-1]
        self.assertIs(rb["planned"], False)
        self.assertNotIn("operation_id", rb)
        self.assertEqual((rb["state"], rb["from_state"]), ("normal", "normal"))
        self.assertEqual((rb["operation"], rb["http_status"]), (d["operation"], 500))
        self.assertEqual(rb["index"], d["index"])
        r = a.client().post("/v1/prepare", json_body={"operation_id": "u-slow"})
        self.assertProblem(r, 500, "kernel-error", replayed=True, operation_id="u-slow")
        self.assertEqual(count_to(a.client().all_records(), "prepared"), 0)

    def test_reboot_record_state_is_the_new_boots(self):
        # JournalRecord.state is "the kernel state after this record": the reboot record
        # carries the new boot's state, and the old boot's in from_state.
        a = self.agent()
        c = a.client()
        self.assertEqual(c.post("/v1/prepare").status, 200)
        a.stop()
        self.unplanned_reboot(a)
        a.restart()
        rb = a.client().history("kind=reboot")["records"][0]
        self.assertEqual(rb["state"], a.client().state()["state"])
        self.assertEqual((rb["state"], rb["from_state"]), ("normal", "prepared"))


class JournalTest(AgentTestCase):

    def fill(self, c, n):
        for i in range(n):
            self.assertEqual(c.post("/v1/prepare", json_body={"operation_id": "p%d" % i}).status,
                             200)
            self.assertEqual(c.post("/v1/cancel", json_body={"operation_id": "c%d" % i}).status,
                             200)

    def test_compaction_keeps_ids_and_indexes(self):
        a = self.agent("--journal-max-bytes=65536")
        c = a.client()
        self.fill(c, 40)
        d = c.state()
        self.assertEqual(d["index"], 1 + 40 * 6)
        self.assertLessEqual(os.path.getsize(a.journal_path()), 65536)
        h = c.history("since=0&limit=1000")
        first = h["records"][0]
        self.assertEqual(first["kind"], "snapshot")
        self.assertEqual(h["first_index"], first["index"])
        self.assertGreater(first["index"], 1)
        self.assertEqual([r["index"] for r in h["records"][1:]],
                         list(range(first["index"] + 1, d["index"] + 1)))
        self.assertEqual(h["last_index"], d["index"])
        ids = [e["operation"]["id"] for e in first["operations"]]
        self.assertEqual(ids[:2], ["p0", "c0"])
        self.assertIn("staged", first)
        # Ids from compacted records still replay, without acting.
        r = c.post("/v1/prepare", json_body={"operation_id": "p0"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["operation"]["id"], "p0")
        self.assertEqual(c.state()["index"], d["index"])
        self.assertProblem(c.post("/v1/cancel", json_body={"operation_id": "p0"}), 409,
                           "operation-id-conflict")
        # A stream resuming from a compacted index starts with the snapshot.
        s = harness.SSEStream(a.direct_url, headers={"Last-Event-ID": "1"})
        self.addCleanup(s.close)
        self.assertEqual(s.read_block(), {"comments": [], "retry": "2000"})
        e = s.next_event()
        self.assertEqual((e["id"], e["event"]), (str(first["index"]), "snapshot"))
        self.assertEqual(e["json"], first)
        e = s.next_event()
        self.assertEqual(e["id"], str(first["index"] + 1))
        s.close()
        # And all of it survives a restart.
        a.stop()
        a.restart()
        c = a.client()
        self.assertGreaterEqual(c.state()["index"], d["index"])
        self.assertEqual(c.history("since=0&limit=3")["records"][0], first)
        r = c.post("/v1/cancel", json_body={"operation_id": "c1"})
        self.assertEqual((r.status, r.json["operation"]["id"]), (200, "c1"))

    def test_restart_after_compaction_writes_nothing(self):
        # The snapshot keeps the last start's agent_version/kernel/backend, so a restart after
        # a compaction (the `start` record compacted away) has nothing to record
        # ("start: only when something changed"): the index stays, nobody is woken.
        a = self.agent("--journal-max-bytes=65536", "--sim-release=6.99.3-it")
        c = a.client()
        self.fill(c, 40)
        n = c.state()["index"]
        first = c.history("since=0&limit=1")["records"][0]
        self.assertEqual(first["kind"], "snapshot")
        self.assertEqual(first["last_start"], {"agent_version": c.state()["agent_version"],
                                               "kernel": "6.99.3-it", "backend": "sim"})
        self.assertEqual(c.history("kind=start")["records"], [])
        a.stop()
        a.restart()
        self.assertEqual(a.client().state()["index"], n)
        a.stop()
        # A boot into another release: the reboot record, then a start record.
        k = a.sim_kernel()
        k["reboot_pending"] = True
        with open(a.sim_path("kernel.json"), "w") as f:
            json.dump(k, f)
        a.restart(args=["--journal-max-bytes=65536", "--sim-release=6.99.4-it"])
        c = a.client()
        self.assertEqual(c.state()["index"], n + 2)
        self.assertEqual([(r["kind"], r.get("kernel")) for r in c.history("since=%d" % n)[
            "records"]], [("reboot", None), ("start", "6.99.4-it")])

class SnapshotStartTest(AgentTestCase):
    """The on-disk state of a crash between the two appends of a boot into a new kernel
    release (the `reboot` record, then the `start` record) when the first one triggered a
    compaction. setUp builds it and checks every precondition (a failure there is an error,
    not the expected failure below); the test restarts the agent on it."""

    LIMIT = 65536

    def cycle(self, lp=1, lc=1):
        """prepare + cancel with reasons of lp and lc characters (each reason is written twice:
        in the operation's running and finished records)."""
        c = self.a.client()
        r = c.post("/v1/prepare", json_body={"reason": "p" * lp})
        self.assertEqual(r.status, 200, r)
        r = c.post("/v1/cancel", json_body={"reason": "c" * lc})
        self.assertEqual(r.status, 200, r)

    def size(self):
        return os.path.getsize(self.a.journal_path())

    def setUp(self):
        super().setUp()
        self.a = a = self.agent("--journal-max-bytes=%d" % self.LIMIT, "--sim-release=r1")
        # Fill the journal to about 150 bytes under the limit, so that the next append (the
        # reboot record, about 330 bytes) compacts. A cycle with 1-character reasons costs C
        # bytes; longer reasons (up to 256 characters) add up to 1020 bytes per cycle, so the
        # last two cycles can absorb any remainder below 2 C.
        s0 = self.size()
        self.cycle()
        cost = self.size() - s0
        target = self.LIMIT - 150
        while True:
            left = target - self.size()
            k = left // cost
            self.assertGreaterEqual(k, 2, "overshot while filling the journal")
            if k >= 3:
                self.cycle()
                continue
            extra = left - 2 * cost  # 0 <= extra < cost <= 2 * 1020 bytes, over 2 cycles
            for _ in range(2):
                e = min(extra, 1020) // 2
                self.cycle(1 + min(e, 255), 1 + max(e - 255, 0))
                extra -= 2 * (min(e, 255) + max(e - 255, 0))
            break
        left = self.LIMIT - self.size()
        self.assertTrue(0 <= left < 300, "journal filled to %d bytes" % self.size())
        self.assertEqual(a.client().history("kind=snapshot")["records"], [])
        a.stop()
        # A boot into release r2 (unplanned: a power cycle of the simulated machine).
        k = a.sim_kernel()
        k["reboot_pending"] = True
        with open(a.sim_path("kernel.json"), "w") as f:
            json.dump(k, f)
        a.restart(args=["--journal-max-bytes=%d" % self.LIMIT, "--sim-release=r2"])
        a.stop()
        recs = a.journal_records()
        self.assertEqual(recs[0]["kind"], "snapshot")  # written at the reboot record's append
        self.assertEqual([(r["kind"], r.get("kernel")) for r in recs[-2:]],
                         [("reboot", None), ("start", "r2")])
        self.assertNotIn("start", [r["kind"] for r in recs[1:-1]])
        self.snapshot = recs[0]
        # The kill between the two appends: the start record never reached the file.
        with open(a.journal_path(), "rb") as f:
            lines = f.readlines()
        with open(a.journal_path(), "wb") as f:
            f.writelines(lines[:-1])

    def test_start_record_survives_a_crash_after_a_compaction(self):
        # BUG (agent/agent.c agent_snapshot_fn): the snapshot's last_start is the running
        # agent's version/kernel/backend, not the last `start` record's. When an append of the
        # reconciliation (here the `reboot` record of a boot into release r2) compacts, the
        # snapshot already claims r2 (last_start.kernel "r2") before the `start` record for r2
        # is appended; a crash in between loses that record for good: the next start compares
        # with the snapshot and records nothing, and no record ever tells that the host runs
        # r2. Expected: the restart writes the `start` record for r2.
        self.a.restart()
        starts = self.a.client().history("kind=start")["records"]
        self.assertEqual([r["kernel"] for r in starts], ["r2"], self.snapshot)


class StepCrashTest(AgentTestCase):
    """kill -9 at each step of each transition, with the LUOFLEET_TEST_CRASH_POINT test hook
    (docs/journal.md): op-before-kernel (the running record is durable, the kernel was not
    called) and op-after-kernel (the kernel call returned, nothing recorded yet). After the
    restart: the acknowledged records are intact, the index did not go back, the state is the
    simulated kernel's, the operation is judged by the kernel and its id replays without
    acting, and the kernel carried the action out at most once (kernel.json "applied")."""

    stage = CrashTest.stage
    crash_and_restart = CrashTest.crash_and_restart
    assert_replay_does_nothing = CrashTest.assert_replay_does_nothing

    # action -> (method, path, kernel.json "applied" counters the action bumps)
    ACTIONS = {
        "prepare": ("POST", "/v1/prepare", ("prepare",)),
        "cancel": ("POST", "/v1/cancel", ("cancel",)),
        "finish": ("POST", "/v1/finish", ("finish",)),
        "reboot": ("POST", "/v1/reboot", ("freeze", "kexec")),
        "stage": ("PUT", "/v1/kernel", ("load",)),
        "unstage": ("DELETE", "/v1/kernel", ("unload",)),
    }

    def setup_for(self, a, action):
        """Bring the host to a state where action is allowed."""
        c = a.client()
        if action in ("cancel", "reboot", "unstage"):
            self.stage(a, op_id="setup-stage")
        if action in ("cancel", "reboot"):
            self.assertEqual(c.post("/v1/prepare").status, 200)
        if action == "finish":
            # Boot into "updated": the simulated machine went down frozen.
            a.stop()
            k = a.sim_kernel()
            k.update(state="frozen", reboot_pending=True)
            with open(a.sim_path("kernel.json"), "w") as f:
                json.dump(k, f)
            a.restart()
            self.assertEqual(a.client().state()["state"], "updated")

    def body_for(self, action, op_id):
        if action != "stage":
            return {"operation_id": op_id}
        files = os.path.join(self.tmp, "files")
        os.makedirs(files, exist_ok=True)
        kpath, ksha = make_file(files, "vmlinuz-next", 3500)
        return {"kernel": {"path": kpath, "sha256": ksha}, "operation_id": op_id}

    def crash_at(self, action, point):
        # Set while the setup (re)starts the agent; none of the setup's requests is action.
        os.environ["LUOFLEET_TEST_CRASH_POINT"] = "%s:%s" % (point, action)
        try:
            a = self.agent("--privsep=no", name="agent-%s-%s" % (action, point))
            self.setup_for(a, action)
        finally:
            del os.environ["LUOFLEET_TEST_CRASH_POINT"]
        method, path, counters = self.ACTIONS[action]
        c = a.client()
        acked = c.all_records()
        before = c.state()
        k0 = a.sim_kernel()
        op_id = "step-%s" % action
        body = self.body_for(action, op_id)
        try:
            r = a.direct().request(method, path, json_body=body)
            # Only a reboot answers (202) before its kernel call.
            self.assertEqual((action, r.status), ("reboot", 202), r)
        except OSError:
            self.assertNotEqual(action, "reboot")
        a.proc.wait()
        a.returncodes.append(a.proc.returncode)
        self.assertEqual(a.returncodes[-1], -9, a.log())
        self.assertIn("crash point %s:%s reached" % (point, action), a.log())
        k = a.sim_kernel()
        for name, n in k["applied"].items():
            want = k0["applied"][name] + (1 if point == "op-after-kernel" and
                                          name in counters else 0)
            self.assertEqual(n, want, (name, k0, k))
        # The restart: crash_and_restart's checks (state = kernel, index, contiguity).
        a.kill9()
        d, _ = self.crash_and_restart(a, before["index"])
        c = a.client()
        self.assertEqual(c.all_records()[:len(acked)], acked)
        return a, d, body, k

    def test_each_step_of_each_transition(self):
        for action in ("prepare", "cancel", "finish", "stage", "unstage", "reboot"):
            for point in ("op-before-kernel", "op-after-kernel"):
                with self.subTest(action=action, point=point):
                    self.one_step(action, point)

    def one_step(self, action, point):
        a, d, body, k = self.crash_at(action, point)
        method, path, _ = self.ACTIONS[action]
        op = d["operation"]
        done = point == "op-after-kernel"
        # Judged by the kernel: succeeded when the kernel shows it done. A stage (a loaded
        # image proves nothing about which one) and a reboot in the same boot are failed.
        ok = done and action not in ("stage",)
        self.assertOperation(op, action=action, status="succeeded" if ok else "failed",
                             id=body["operation_id"])
        if not ok:
            self.assertEqual(op["error"]["code"], "kernel-error")
        want = {"prepare": "prepared", "cancel": "normal", "finish": "normal",
                "reboot": "updated"}.get(action) if done else None
        if want:
            self.assertEqual(d["state"], want)
        if action == "reboot":
            self.assertEqual(a.sim_kernel()["boots"], 2 if done else 1)
        if action == "unstage":
            self.assertEqual(d["staged"] is None, done)
        status = (202 if action == "reboot" else 200) if ok else 500
        r = self.assert_replay_does_nothing(a, method, path, body, status)
        if not ok:
            self.assertProblem(r, 500, "kernel-error", replayed=True,
                               operation_id=body["operation_id"])
        # Nothing ran again at the restart or the replay (a reboot's new boot counts nothing).
        self.assertEqual(a.sim_kernel()["applied"], k["applied"])
        a.stop()


class ProcessTest(AgentTestCase):
    """Start-up refusals: exit codes and messages."""

    def test_second_agent_on_the_same_state_dir(self):
        a = self.agent()
        rc, out, err = run_agent(["--backend=sim", "--state-dir=%s" % a.state_dir,
                                  "--listen=127.0.0.1:0"])
        self.assertEqual(rc, 4, err)
        self.assertIn("another luofleet-agent", err)
        self.assertIn(a.state_dir, err)
        self.assertNotIn("listening on", out)
        # The first one is untouched.
        self.assertEqual(a.client().post("/v1/prepare").status, 200)

    def test_no_kernel_backend(self):
        root = tempfile.mkdtemp(dir=self.tmp)
        for backend in ("luo-v3", "auto"):
            with self.subTest(backend=backend):
                sd = os.path.join(self.tmp, "st-" + backend)
                rc, out, err = run_agent(["--backend=%s" % backend, "--root=%s" % root,
                                          "--state-dir=%s" % sd, "--listen=127.0.0.1:0"])
                self.assertEqual(rc, 3, err)
                self.assertIn("--backend=sim", err)
                self.assertIn(root, err)
                self.assertNotIn("listening on", out)

    def test_bad_flags(self):
        sd = "--state-dir=%s" % os.path.join(self.tmp, "st")
        cases = [
            (["--frobnicate"], "frobnicate"),
            (["--backend=xen"], "--backend=xen"),
            (["--listen=nowhere"], "--listen=nowhere"),
            (["--listen=127.0.0.1:65536"], "--listen"),
            (["--max-wait=0"], "--max-wait=0"),
            (["--max-wait=25h"], "--max-wait"),
            (["--max-wait=10x"], "--max-wait"),
            (["--max-waiters=0"], "--max-waiters=0"),
            (["--max-waiters=many"], "--max-waiters"),
            (["--max-streams=0"], "--max-streams"),
            (["--max-connections=3"], "--max-connections"),
            (["--sse-heartbeat=50ms"], "--sse-heartbeat"),
            (["--reboot-delay=2m"], "--reboot-delay"),
            (["--journal-max-bytes=100"], "--journal-max-bytes"),
            (["--sim-fault=prepare=ENOTANERRNO"], "--sim-fault"),
            (["--sim-fault=explode=EIO"], "--sim-fault"),
            (["--sim-fault=prepare"], "--sim-fault"),
            (["--sim-reboot=maybe"], "--sim-reboot"),
            (["--sim-release="], "--sim-release"),
            (["--log-level=chatty"], "--log-level"),
            (["--root=relative/dir"], "--root"),
            (["--state-dir=relative"], "--state-dir"),
            (["--hostname="], "--hostname"),
            (["unexpected-argument"], "unexpected-argument"),
            (["--backend"], "backend"),
        ]
        for args, needle in cases:
            with self.subTest(args=args):
                rc, out, err = run_agent(["--backend=sim", sd, "--listen=127.0.0.1:0"] + args)
                self.assertEqual(rc, 2, (out, err))
                self.assertIn(needle, err)
                self.assertNotIn("listening on", out)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "st")))
        rc, out, err = run_agent(["--help"])
        self.assertEqual(rc, 0)
        self.assertTrue(out.startswith("Usage: luofleet-agent [OPTIONS]\n"))
        self.assertIn("--sim-fault", out)
        rc, out, err = run_agent(["--version"])
        self.assertEqual(rc, 0)
        self.assertRegex(out, r"^luofleet-agent \S+\n$")


if __name__ == "__main__":
    harness.main()
