#!/usr/bin/env python3
"""test_cycle.py: the full simulated live-update cycle: stage a kernel, prepare, reboot (202,
then the simulated kexec: the agent re-executes itself, or exits 0 for a supervisor with
--sim-reboot=exit), the new boot (state updated, new boot_id, one atomic planned `reboot`
record with its blackout and the reboot operation's end), finish. Indexes never go
backwards; a repeated reboot id answers 202 without a second reboot. Also failed kexecs,
where the same agent stays up."""

import http.client
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import AgentTestCase, make_file, wait_for  # noqa: E402

setUpModule, tearDownModule = harness.module_fixtures(__file__)


class Watcher(threading.Thread):
    """Follows the agent with chained long-polls through the reboot, tolerating the blackout;
    records every (index, boot_id, state) it is answered with. Talks to the agent directly:
    through the blackout the contract proxy would only answer 500 FetchError."""

    def __init__(self, agent, start_index):
        super().__init__(daemon=True)
        self.agent = agent
        self.index = start_index
        self.seen = []
        self.errors = 0
        self.stopping = threading.Event()
        self.start()

    def run(self):
        while not self.stopping.is_set():
            try:
                r = self.agent.direct(timeout=8).get("/v1/state?index=%d&wait=2s" % self.index)
            except (OSError, http.client.HTTPException):
                self.errors += 1
                time.sleep(0.02)
                continue
            if r.status != 200 or r.json is None:
                self.errors += 1
                time.sleep(0.02)
                continue
            d = r.json
            self.seen.append((d["index"], d["boot_id"], d["state"], time.monotonic()))
            self.index = d["index"]

    def stop(self):
        self.stopping.set()
        self.join(15)


class CycleTest(AgentTestCase):

    def stage_and_prepare(self, a):
        c = a.client()
        files = os.path.join(self.tmp, "files")
        os.makedirs(files, exist_ok=True)
        kpath, ksha = make_file(files, "vmlinuz-next", 65537)
        r = c.put("/v1/kernel", json_body={"kernel": {"path": kpath, "sha256": ksha},
                                           "cmdline": "quiet", "operation_id": "cycle-stage"})
        d = self.assertStateDoc(r)
        self.assertIs(d["staged"]["loaded"], True)
        d = self.assertStateDoc(c.post("/v1/prepare", json_body={"operation_id": "cycle-prep"}))
        self.assertEqual(d["state"], "prepared")
        return d

    def post_reboot(self, a, before, direct=False):
        """POST /v1/reboot: through the contract proxy, or directly to see the agent's own
        `Connection: close` (a proxy answers with its own connection headers)."""
        c = a.direct() if direct else a.client()
        t = time.monotonic()
        r = c.post("/v1/reboot", json_body={"operation_id": "cycle-reboot", "reason": "it"})
        self.assertEqual(r.status, 202, r)
        if direct:
            self.assertEqual(r.header("Connection"), "close")
            self.assertEqual(r.content_type, "application/json")
        d = self.assertStateDoc(r, status=202)
        self.assertEqual(d["state"], "prepared")
        self.assertEqual(d["boot_id"], before["boot_id"])
        self.assertGreater(d["index"], before["index"])
        self.assertOperation(d["operation"], action="reboot", status="running",
                             id="cycle-reboot")
        self.assertEqual(d["operation"]["reason"], "it")
        self.assertIsNotNone(d["staged"])
        return d, t

    def check_new_boot(self, a, before, accepted):
        """The agent on the new boot: document, history, sim, metrics."""
        c = a.client()
        d = c.state()
        self.assertEqual(d["state"], "updated")
        self.assertNotEqual(d["boot_id"], before["boot_id"])
        k = a.sim_kernel()
        self.assertEqual(d["boot_id"], k["boot_id"])
        self.assertEqual(k["boots"], 2)
        self.assertEqual(k["state"], "updated")
        self.assertIsNone(k["kexec"])
        self.assertIs(k["reboot_pending"], False)
        self.assertIsNone(d["staged"])
        self.assertGreater(d["index"], accepted["index"])
        self.assertOperation(d["operation"], action="reboot", status="succeeded",
                             id="cycle-reboot")
        self.assertEqual(d["operation"]["requested_at"],
                         accepted["operation"]["requested_at"])

        recs = c.all_records()
        self.assertEqual([r["index"] for r in recs], list(range(1, d["index"] + 1)))
        after = [r for r in recs if r["index"] > accepted["index"]]
        # The old boot's freeze, then ONE record for the whole jump (boot change, state
        # change across it, end of the reboot operation): no separate operation record, no
        # reconcile transition, no start record (same kernel release).
        kinds = [(r["kind"], r.get("from"), r.get("to")) for r in after]
        self.assertEqual(kinds, [("transition", "prepared", "frozen"), ("reboot", None, None)])
        frz, rb = after
        self.assertEqual(frz["boot_id"], before["boot_id"])
        self.assertEqual(frz["state"], "frozen")
        self.assertEqual((frz["cause"], frz["operation_id"]), ("operation", "cycle-reboot"))
        self.check_reboot_record(rb, before["boot_id"], d)
        self.assertEqual(rb["index"], d["index"])
        self.assertEqual(c.metric("luofleet_last_blackout_seconds"),
                         round(rb["blackout_ms"] / 1000.0, 3))
        lines = c.metrics().splitlines()
        self.assertIn('luofleet_transitions_total{from="frozen",to="updated"} 1', lines)
        self.assertEqual(a.journal_records(), recs)
        return d, rb

    def check_reboot_record(self, rb, old_boot, d, op_id="cycle-reboot"):
        """A planned reboot record: the new boot's id and state, where it came from, and the
        reboot operation's end (as the state document shows it)."""
        self.assertEqual(set(rb), {"index", "time", "boot_id", "kind", "state", "from_state",
                                   "from_boot_id", "to_boot_id", "blackout_ms", "planned",
                                   "operation_id", "operation", "http_status",
                                   "kernel_uptime_ms_at_start", "kexec_ms", "verification"}, rb)
        self.assertEqual(rb["kind"], "reboot")
        self.assertEqual(rb["boot_id"], d["boot_id"])
        self.assertEqual(rb["state"], "updated")
        self.assertEqual(rb["from_state"], "frozen")
        self.assertEqual(rb["from_boot_id"], old_boot)
        self.assertEqual(rb["to_boot_id"], d["boot_id"])
        self.assertIs(rb["planned"], True)
        self.assertEqual(rb["operation_id"], op_id)
        self.assertIsInstance(rb["blackout_ms"], int)
        self.assertGreaterEqual(rb["blackout_ms"], 0)
        self.assertLess(rb["blackout_ms"], 30000)
        self.assertOperation(rb["operation"], action="reboot", status="succeeded", id=op_id)
        self.assertEqual(rb["operation"], d["operation"])
        self.assertLessEqual(rb["operation"]["finished_at"], rb["time"])  # RFC 3339, UTC
        self.assertEqual(rb["http_status"], 202)

    def replay_reboot_and_finish(self, a, d):
        c = a.client()
        # The lost answer to the reboot, asked again after the reboot: 202, no second reboot.
        r = c.post("/v1/reboot", json_body={"operation_id": "cycle-reboot"})
        self.assertEqual(r.status, 202, r)
        self.assertOperation(r.json["operation"], action="reboot", status="succeeded",
                             id="cycle-reboot")
        self.assertEqual(r.json["index"], d["index"])
        self.assertEqual(a.sim_kernel()["boots"], 2)
        # A new reboot is refused in updated.
        self.assertProblem(c.post("/v1/reboot"), 409, "invalid-transition", state="updated",
                           allowed_actions=["finish", "rollback"])
        r = c.post("/v1/finish", json_body={"operation_id": "cycle-finish"})
        f = self.assertStateDoc(r)
        self.assertEqual(f["state"], "normal")
        self.assertEqual(f["boot_id"], d["boot_id"])
        self.assertOperation(f["operation"], action="finish", status="succeeded",
                             id="cycle-finish")
        self.assertEqual(a.sim_kernel()["state"], "normal")
        self.assertEqual(c.history("kind=transition")["records"][-1]["to"], "normal")

    def test_cycle_reexec(self):
        a = self.agent()
        port = a.port
        pid = a.pid
        before = self.stage_and_prepare(a)
        w = Watcher(a, before["index"])
        wait_for(lambda: a.client().metric("luofleet_longpoll_waiters") == 1,
                 what="the watcher's long-poll")
        accepted, t = self.post_reboot(a, before, direct=True)
        d = a.wait_ready(timeout=10)
        while d["boot_id"] == before["boot_id"]:
            self.assertLess(time.monotonic() - t, 10, "no new boot within 10 s")
            time.sleep(0.02)
            d = a.wait_ready(timeout=10)
        # Same process, same port: the simulated kexec re-executed the agent in place.
        self.assertTrue(a.running())
        self.assertEqual(a.pid, pid)
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            self.assertIn(b"--listen=127.0.0.1:%d" % port, f.read())
        # The listening socket survives the exec, so the new image answers queued requests
        # before it prints its listening line: wait for the line, do not read it once.
        wait_for(lambda: len(harness.LISTEN_RE.findall(a.stdout())) >= 2, timeout=10,
                 what="the re-executed agent's listening line")
        self.assertEqual([int(m.group(1)) for m in harness.LISTEN_RE.finditer(a.stdout())],
                         [port, port])
        d, rb = self.check_new_boot(a, before, accepted)
        # The watcher followed through the blackout; indexes never went backwards.
        wait_for(lambda: w.seen and w.seen[-1][1] == d["boot_id"], timeout=10,
                 what="the watcher to see the new boot")
        w.stop()
        idx = [s[0] for s in w.seen]
        self.assertEqual(idx, sorted(idx), w.seen)
        self.assertGreaterEqual(idx[0], accepted["index"])
        first_new = min(s[3] for s in w.seen if s[1] == d["boot_id"])
        # Connections open at the kexec are closed, not leaked into the new image: the
        # watcher's long-poll fails fast and the next one reaches the new boot.
        self.assertLess(first_new - t, 3.0 * harness.SCALE, w.seen)
        boots = [s[1] for s in w.seen]
        self.assertEqual(boots, sorted(boots, key=lambda b: b == d["boot_id"]))
        self.assertIn("Simulated kexec: re-executing the agent", a.log())
        self.replay_reboot_and_finish(a, d)

    def test_cycle_exit_for_the_supervisor(self):
        a = self.agent("--sim-reboot=exit")
        port = a.port
        pid = a.pid
        before = self.stage_and_prepare(a)
        accepted, t = self.post_reboot(a, before)
        self.assertEqual(a.wait_exit(timeout=10), 0)
        self.assertIs(a.sim_kernel()["reboot_pending"], True)
        a.restart()
        self.assertEqual(a.port, port)
        self.assertNotEqual(a.pid, pid)
        d, rb = self.check_new_boot(a, before, accepted)
        self.assertGreater(rb["blackout_ms"], 0)
        self.assertIn("Simulated kexec: exiting for the supervisor", a.log())
        self.replay_reboot_and_finish(a, d)

    def test_event_stream_through_the_reboot(self):
        # The stream closes at the kexec; resuming with the last id seen replays the new
        # boot's records exactly, then goes live.
        a = self.agent()
        before = self.stage_and_prepare(a)
        s = harness.SSEStream(a.direct_url, headers={"Last-Event-ID": str(before["index"])})
        self.addCleanup(s.close)
        self.assertEqual(s.read_block(), {"comments": [], "retry": "2000"})
        accepted, t = self.post_reboot(a, before)
        last = before["index"]
        with self.assertRaises(EOFError):
            while True:
                e = s.next_event(timeout=5)
                self.assertEqual(int(e["id"]), last + 1)
                last += 1
        self.assertLess(time.monotonic() - t, 5)
        self.assertGreaterEqual(last, accepted["index"])
        s.close()
        d = a.wait_ready(timeout=10)
        while d["state"] != "updated":
            d = a.wait_ready(timeout=10)
        records = a.client().all_records()
        s = harness.SSEStream(a.direct_url, headers={"Last-Event-ID": str(last)})
        self.addCleanup(s.close)
        self.assertEqual(s.read_block(), {"comments": [], "retry": "2000"})
        for rec in records[last:]:
            e = s.next_event()
            self.assertEqual((int(e["id"]), e["event"]), (rec["index"], rec["kind"]))
            self.assertEqual(e["json"], rec)
        self.assertIn("reboot", [r["kind"] for r in records[last:]])
        self.assertEqual(a.client().post("/v1/finish").status, 200)
        e = s.next_event()
        self.assertEqual((int(e["id"]), e["event"]), (d["index"] + 1, "operation"))

    def test_failed_kexec_keeps_the_agent(self):
        # A reboot fault fails the call before anything happens: still prepared, same boot.
        a = self.agent("--sim-fault=reboot=EPERM")
        c = a.client()
        before = self.stage_and_prepare(a)
        accepted, t = self.post_reboot(a, before)
        d = wait_for(lambda: (lambda s: s if s["operation"]["status"] != "running" else None)(
            c.state()), timeout=10, what="the reboot operation to end")
        self.assertEqual(d["state"], "prepared")
        self.assertEqual(d["boot_id"], before["boot_id"])
        self.assertOperation(d["operation"], action="reboot", status="failed", id="cycle-reboot")
        self.assertEqual(d["operation"]["error"]["code"], "kernel-permission-denied")
        self.assertEqual(d["operation"]["error"]["errno"], "EPERM")
        self.assertIs(d["staged"]["loaded"], True)
        self.assertTrue(a.running())
        self.assertEqual(a.sim_kernel()["boots"], 1)
        self.assertEqual(len(list(harness.LISTEN_RE.finditer(a.stdout()))), 1)
        r = c.post("/v1/reboot", json_body={"operation_id": "cycle-reboot"})
        self.assertProblem(r, 500, "kernel-permission-denied", errno="EPERM", replayed=True,
                           operation_id="cycle-reboot")
        self.assertEqual(self.assertStateDoc(c.post("/v1/cancel"))["state"], "normal")

    def test_failed_freeze_goes_back_to_normal(self):
        a = self.agent("--sim-fault=freeze=EIO")
        c = a.client()
        before = self.stage_and_prepare(a)
        accepted, t = self.post_reboot(a, before)
        d = wait_for(lambda: (lambda s: s if s["operation"]["status"] != "running" else None)(
            c.state()), timeout=10, what="the reboot operation to end")
        self.assertEqual(d["state"], "normal")
        self.assertEqual(d["boot_id"], before["boot_id"])
        self.assertOperation(d["operation"], action="reboot", status="failed", id="cycle-reboot")
        self.assertEqual(d["operation"]["error"]["code"], "kernel-error")
        self.assertEqual(d["operation"]["error"]["errno"], "EIO")
        self.assertEqual(a.sim_kernel()["state"], "normal")
        self.assertTrue(a.running())

    def test_reexec_keeps_the_port_chosen_for_port_0(self):
        # --listen=127.0.0.1:0: the simulated kexec re-executes the agent with the address
        # actually bound, so clients (and the controller) find it again on the same port.
        a = self.agent(port=0)  # a kernel-chosen port: not the proxy's upstream, direct
        port = a.port
        self.assertNotEqual(port, 0)
        pid = a.pid
        before = self.stage_and_prepare(a)
        offset = len(a.stdout())
        self.post_reboot(a, before, direct=True)
        new_port = a.wait_listening(offset, timeout=10 * harness.SCALE)
        a.port = new_port  # so that cleanup can still talk to it
        self.assertEqual(new_port, port)
        self.assertEqual(a.pid, pid)
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
        self.assertIn(b"--listen=127.0.0.1:%d" % port, argv)
        self.assertNotIn(b"--listen=127.0.0.1:0", argv)
        d = wait_for(lambda: (lambda s: s if s["state"] == "updated" else None)(a.wait_ready()),
                     timeout=10 * harness.SCALE, what="the new boot")
        self.assertNotEqual(d["boot_id"], before["boot_id"])

    def test_new_release_writes_a_start_record_after_the_reboot(self):
        # The new boot runs another kernel release: the reboot record, then a start record.
        a = self.agent("--sim-reboot=exit", "--sim-release=6.99.1-old")
        before = self.stage_and_prepare(a)
        self.assertEqual(before["kernel"], "6.99.1-old")
        accepted, t = self.post_reboot(a, before)
        self.assertEqual(a.wait_exit(timeout=10 * harness.SCALE), 0)
        a.restart(args=["--sim-reboot=exit", "--sim-release=6.99.2-new"])
        c = a.client()
        d = c.state()
        self.assertEqual((d["state"], d["kernel"]), ("updated", "6.99.2-new"))
        after = [r for r in c.all_records() if r["index"] > accepted["index"]]
        self.assertEqual([r["kind"] for r in after], ["transition", "reboot", "start"])
        frz, rb, st = after
        self.check_reboot_record(rb, before["boot_id"], d)
        self.assertEqual(rb["index"], d["index"] - 1)
        self.assertEqual(st["kind"], "start")
        self.assertEqual((st["boot_id"], st["state"]), (d["boot_id"], "updated"))
        self.assertEqual((st["kernel"], st["backend"], st["agent_version"]),
                         ("6.99.2-new", "sim", d["agent_version"]))
        self.assertEqual(st["index"], d["index"])
        # The same release again: nothing to record.
        a.stop()
        a.restart()
        self.assertEqual(a.client().state()["index"], d["index"])
        r = a.client().post("/v1/reboot", json_body={"operation_id": "cycle-reboot"})
        self.assertEqual(r.status, 202, r)
        self.assertEqual(r.json["operation"], rb["operation"])


if __name__ == "__main__":
    harness.main()
