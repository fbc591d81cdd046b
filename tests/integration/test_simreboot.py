#!/usr/bin/env python3
"""test_simreboot.py: the simulated kexec as a fleet test sees a real machine's reboot.

--sim-downtime=DURATION: at the kexec every listener and connection closes, the port refuses
connections (ECONNREFUSED, not a hang) for DURATION, then the same process (execve keeps the
pid) comes back on the same port with a new boot id, updated, and a blackout that includes
the downtime (blackout_ms and kexec_ms >= DURATION); the simulated machine carried out one
kexec. SIGTERM while the machine is down stops the agent cleanly. --sim-downtime=never: the
agent exits 0 at the kexec and the port stays refused; the next start boots the machine.
--sim-boot-release: the machine comes back with another kernel than the staged one, which the
agent's verification flags (readyz 503 "kernel-verified", last_update.verification mismatch).
Bad values exit 2 with a message."""

import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import AgentTestCase, make_file, run_agent, wait_for  # noqa: E402

setUpModule, tearDownModule = harness.module_fixtures(__file__)

SCALE = harness.SCALE
VERSION = "6.99.1-next (ci@build) #7 SMP PREEMPT_DYNAMIC Wed Nov 25 12:00:00 UTC 2026"
DOWNTIME_S = 2.0


def connect_outcome(port, timeout=1.0):
    """'refused', 'connected' or another error's name, for a fresh TCP connection."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return type(e).__name__
    s.close()
    return "connected"


class SimRebootTest(AgentTestCase):

    def files(self):
        files = os.path.join(self.tmp, "files")
        os.makedirs(files, exist_ok=True)
        return files

    def stage_and_prepare(self, a, bzimage=False):
        c = a.client()
        if bzimage:
            kpath, ksha = harness.make_bzimage(self.files(), "vmlinuz-next", VERSION)
        else:
            kpath, ksha = make_file(self.files(), "vmlinuz-next", 65537)
        d = self.assertStateDoc(c.put("/v1/kernel", json_body={
            "kernel": {"path": kpath, "sha256": ksha}, "operation_id": "sr-stage"}))
        self.assertIs(d["staged"]["loaded"], True)
        d = self.assertStateDoc(c.post("/v1/prepare", json_body={"operation_id": "sr-prep"}))
        self.assertEqual(d["state"], "prepared")
        return d

    def post_reboot(self, a, before):
        """POST /v1/reboot directly (its answer is the last thing the old boot says)."""
        r = a.direct().post("/v1/reboot", json_body={"operation_id": "sr-reboot"})
        t = time.monotonic()
        self.assertEqual(r.status, 202, r)
        self.assertEqual(r.json["boot_id"], before["boot_id"])
        return r.json, t

    def wait_new_boot(self, a, before, timeout):
        """Poll the agent directly through the blackout until it answers from a new boot."""
        deadline = time.monotonic() + timeout
        while True:
            d = a.wait_ready(timeout=max(deadline - time.monotonic(), 0.1))
            if d["boot_id"] != before["boot_id"]:
                return d
            self.assertLess(time.monotonic(), deadline, "no new boot within %.0fs" % timeout)
            time.sleep(0.02)

    def reboot_record(self, a, d):
        rb = [r for r in a.client().all_records() if r["kind"] == "reboot"]
        self.assertEqual(len(rb), 1, rb)
        self.assertEqual(rb[0]["to_boot_id"], d["boot_id"])
        return rb[0]

    def test_downtime(self):
        a = self.agent("--sim-downtime=2s")
        port, pid = a.port, a.pid
        before = self.stage_and_prepare(a)
        self.assertEqual(connect_outcome(port), "connected")
        # An idle connection open at the kexec: closed by it, never left hanging.
        idle = socket.create_connection(("127.0.0.1", port), timeout=5 * SCALE)
        self.addCleanup(idle.close)
        offset = len(a.stdout())
        accepted, t = self.post_reboot(a, before)

        try:
            data = idle.recv(1)
        except ConnectionResetError:
            data = b""
        self.assertEqual(data, b"")
        closed_after = time.monotonic() - t
        self.assertLess(closed_after, 1.5)
        # Down: every new connection is refused at once (nothing listens, no backlog).
        wait_for(lambda: connect_outcome(port) == "refused", timeout=1.5,
                 what="the port to refuse connections")
        refusals = 0
        while time.monotonic() - t < DOWNTIME_S - 0.4:
            c0 = time.monotonic()
            self.assertEqual(connect_outcome(port), "refused")
            self.assertLess(time.monotonic() - c0, 0.5)  # refused, not a hang
            refusals += 1
            time.sleep(0.1)
        self.assertGreaterEqual(refusals, 5)
        # HTTP clients see the same: a refused connection, not a timeout.
        with self.assertRaises(ConnectionRefusedError):
            a.direct(timeout=5).get("/v1/state")

        # Back on the same port, same process (execve keeps the pid), after the downtime.
        self.assertEqual(a.wait_listening(offset, timeout=10 * SCALE, want_port=port), port)
        up = time.monotonic() - t
        self.assertGreaterEqual(up, DOWNTIME_S)
        self.assertTrue(a.running())
        self.assertEqual(a.pid, pid)
        self.assertEqual([int(m.group(1)) for m in harness.LISTEN_RE.finditer(a.stdout())],
                         [port, port])
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
        self.assertIn(b"--listen=127.0.0.1:%d" % port, argv)
        self.assertIn(b"--sim-downtime=2s", argv)
        d = self.wait_new_boot(a, before, timeout=10 * SCALE)
        d = self.assertStateDoc(a.client().get("/v1/state"))
        self.assertEqual(d["state"], "updated")
        self.assertNotEqual(d["boot_id"], before["boot_id"])
        self.assertOperation(d["operation"], action="reboot", status="succeeded", id="sr-reboot")

        # The blackout includes the downtime; the new boot's own uptime does not.
        rb = self.reboot_record(a, d)
        self.assertEqual(rb["from_boot_id"], before["boot_id"])
        self.assertIs(rb["planned"], True)
        self.assertGreaterEqual(rb["blackout_ms"], 2000)
        self.assertLess(rb["blackout_ms"], up * 1000 + 1000)
        self.assertGreaterEqual(rb["kexec_ms"], 2000)
        self.assertGreaterEqual(rb["kernel_uptime_ms_at_start"], 1)
        self.assertLess(rb["kernel_uptime_ms_at_start"], 2000)
        self.assertEqual(rb["kexec_ms"], rb["blackout_ms"] - rb["kernel_uptime_ms_at_start"])
        for k in ("blackout_ms", "kexec_ms", "kernel_uptime_ms_at_start", "to_boot_id"):
            self.assertEqual(d["last_update"][k], rb[k], k)
        self.assertEqual(a.client().metric("luofleet_last_blackout_seconds"),
                         round(rb["blackout_ms"] / 1000.0, 3))

        # The simulated machine: one kexec, one new boot.
        k = a.sim_kernel()
        self.assertEqual(k["applied"]["kexec"], 1)
        self.assertEqual(k["applied"]["freeze"], 1)
        self.assertEqual(k["boots"], 2)
        self.assertEqual((k["state"], k["boot_id"]), ("updated", d["boot_id"]))
        self.assertIs(k["reboot_pending"], False)
        log = a.log()
        self.assertIn("Simulated kexec: the machine goes down for 2000 ms", log)
        self.assertIn("Simulated kexec: the machine is back up after its downtime", log)

        f = self.assertStateDoc(a.client().post("/v1/finish", json_body={"operation_id": "sr-f"}))
        self.assertEqual(f["state"], "normal")

    def test_downtime_keeps_a_kernel_chosen_port(self):
        # --listen=127.0.0.1:0: the new image binds the port the old one had, not a new one.
        a = self.agent("--sim-downtime=500ms", port=0)  # not the proxy's upstream: direct
        port, pid = a.port, a.pid
        self.assertNotEqual(port, 0)
        before = self.stage_and_prepare(a)
        offset = len(a.stdout())
        accepted, t = self.post_reboot(a, before)
        wait_for(lambda: connect_outcome(port) == "refused", timeout=3,
                 what="the port to refuse connections")
        self.assertEqual(a.wait_listening(offset, timeout=10 * SCALE, want_port=port), port)
        self.assertGreaterEqual(time.monotonic() - t, 0.5)
        self.assertEqual(a.pid, pid)
        d = self.wait_new_boot(a, before, timeout=10 * SCALE)
        self.assertEqual(d["state"], "updated")
        self.assertGreaterEqual(self.reboot_record(a, d)["blackout_ms"], 500)

    def test_sigterm_while_down(self):
        a = self.agent("--sim-downtime=30s")
        port = a.port
        before = self.stage_and_prepare(a)
        accepted, t = self.post_reboot(a, before)
        wait_for(lambda: connect_outcome(port) == "refused", timeout=3,
                 what="the port to refuse connections")
        wait_for(lambda: "down for another" in a.log(), timeout=3,
                 what="the new image to sleep")
        t0 = time.monotonic()
        self.assertEqual(a.stop(), 0)
        self.assertLess(time.monotonic() - t0, 3 * SCALE)
        self.assertIn("while the simulated machine is down, stopping", a.log())
        k = a.sim_kernel()
        self.assertIs(k["reboot_pending"], True)  # it never came back up
        self.assertEqual(k["boots"], 1)
        # A fresh start is no jump: no downtime, the machine boots at once.
        t0 = time.monotonic()
        a.restart()
        self.assertLess(time.monotonic() - t0, 10 * SCALE)
        d = a.client().state()
        self.assertEqual(d["state"], "updated")
        self.assertNotEqual(d["boot_id"], before["boot_id"])
        self.assertEqual(a.sim_kernel()["applied"]["kexec"], 1)

    def test_never(self):
        a = self.agent("--sim-downtime=never")
        port = a.port
        before = self.stage_and_prepare(a)
        self.post_reboot(a, before)
        self.assertEqual(a.wait_exit(timeout=10 * SCALE), 0)
        self.assertEqual(connect_outcome(port), "refused")
        self.assertIn("--sim-downtime=never: the machine does not come back", a.log())
        k = a.sim_kernel()
        self.assertIs(k["reboot_pending"], True)
        self.assertEqual((k["state"], k["boots"], k["applied"]["kexec"]), ("frozen", 1, 1))
        time.sleep(0.5)
        self.assertEqual(connect_outcome(port), "refused")
        # Started again (by hand), the machine boots the staged kernel.
        a.restart(args=[])
        d = a.client().state()
        self.assertEqual(d["state"], "updated")
        self.assertNotEqual(d["boot_id"], before["boot_id"])

    def test_boot_release(self):
        a = self.agent("--sim-boot-release=6.66.6-wrong", "--sim-release=6.1.0-old")
        before = self.stage_and_prepare(a, bzimage=True)
        self.assertEqual(before["kernel"], "6.1.0-old")
        self.assertEqual(before["staged"]["expected"], {"release": "6.99.1-next",
                                                        "version": VERSION})
        self.post_reboot(a, before)
        self.wait_new_boot(a, before, timeout=10 * SCALE)
        d = self.assertStateDoc(a.client().get("/v1/state"))
        self.assertEqual((d["state"], d["kernel"]), ("updated", "6.66.6-wrong"))
        self.assertEqual(a.sim_kernel()["release"], "6.66.6-wrong")
        v = d["last_update"]["verification"]
        self.assertEqual(v, {"status": "mismatch",
                             "expected": {"release": "6.99.1-next", "version": VERSION},
                             "running": {"release": "6.66.6-wrong", "version": None,
                                         "build_id": None}})
        self.assertEqual(self.reboot_record(a, d)["verification"], v)
        r = a.client().get("/readyz")
        self.assertEqual(r.status, 503, r)
        self.assertEqual(r.json["status"], "not-ready")
        chk = [x for x in r.json["checks"] if x["name"] == "kernel-verified"]
        self.assertEqual(chk, [{"name": "kernel-verified", "ok": False,
                                "detail": "the running kernel 6.66.6-wrong is not the staged "
                                          "one (expected 6.99.1-next): see "
                                          "last_update.verification"}])
        self.assertEqual([x["name"] for x in r.json["checks"] if not x["ok"]],
                         ["kernel-verified"])

    def test_bad_values(self):
        state = os.path.join(self.tmp, "bad-state")
        base = ["--backend=sim", "--state-dir=%s" % state, "--listen=127.0.0.1:0"]
        cases = [
            (["--sim-downtime=soon"], "invalid --sim-downtime=soon: expected a duration such as "
                                      "2s, 500ms or 1m30s (at most 1h), or never"),
            (["--sim-downtime=2h"], "invalid --sim-downtime=2h: expected a duration"),
            (["--sim-downtime="], "invalid --sim-downtime=: expected a duration"),
            (["--sim-downtime=2s", "--sim-reboot=exit"],
             "--sim-downtime needs --sim-reboot=exec"),
            (["--sim-downtime=never", "--sim-reboot=exit"],
             "--sim-downtime needs --sim-reboot=exec"),
            (["--sim-boot-release="], "invalid --sim-boot-release=: expected "
                                      "[IMAGE-RELEASE=]RELEASE, 1 to 127 characters"),
            (["--sim-boot-release=6.1=6.2=6.3"], "invalid --sim-boot-release=6.1=6.2=6.3: "
                                                 "expected [IMAGE-RELEASE=]RELEASE"),
        ]
        for args, msg in cases:
            with self.subTest(args=args):
                rc, out, err = run_agent(base + args)
                self.assertEqual(rc, 2, err)
                self.assertIn(msg, err)
                self.assertEqual(out, "")
        rc, out, err = run_agent(["--help"])
        self.assertEqual(rc, 0)
        self.assertIn("--sim-downtime=DURATION|never", out)
        self.assertIn("--sim-boot-release=[IMAGE=]STRING", out)


if __name__ == "__main__":
    harness.main()
