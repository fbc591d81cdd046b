#!/usr/bin/env python3
"""test_lease.py: the dead-man lease of a prepared host (docs/leases.md): a prepare with
lease_seconds; the agent cancels on its own when nobody renews it (operation
lease-expired:<prepare id>, requested_by agent, a `lease` record with cause lease-expired;
retried while another operation runs);
POST /v1/lease renews it (and its codes: no-lease, lease-mismatch, invalid-field); the lease
survives an agent crash (re-armed before its deadline, cancelled at once after it); it ends
with a cancel and never outlives its boot."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import AgentTestCase, make_file, wait_for  # noqa: E402

setUpModule, tearDownModule = harness.module_fixtures(__file__)

SCALE = float(os.environ.get("LUOFLEET_TEST_TIMEOUT_SCALE", "1"))


def parse_time(s):
    """RFC 3339 ms UTC ("2026-11-25T14:33:36.604Z") to epoch seconds."""
    import calendar
    base, ms = s[:-1].split(".")
    return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + int(ms) / 1000.0


class LeaseTest(AgentTestCase):

    def prepare(self, a, op_id, lease=None):
        body = {"operation_id": op_id}
        if lease is not None:
            body["lease_seconds"] = lease
        d = self.assertStateDoc(a.client().post("/v1/prepare", json_body=body))
        self.assertEqual(d["state"], "prepared")
        return d

    def lease_records(self, a):
        return [r for r in a.client().all_records() if r["kind"] == "lease"]

    def check_expired(self, a, prep_id):
        """The agent cancelled on its own: document, history, audit."""
        c = a.client()
        d = c.state()
        self.assertEqual(d["state"], "normal")
        self.assertIsNone(d["lease"])
        cancel_id = "lease-expired:" + prep_id
        wait_for(lambda: c.state()["operation"]["status"] != "running", timeout=5,
                 what="the lease's cancel to end")
        op = c.state()["operation"]
        self.assertOperation(op, action="cancel", status="succeeded", id=cancel_id)
        self.assertEqual(op["requested_by"], "agent")
        self.assertEqual(op["reason"], "lease expired")
        ends = [r for r in self.lease_records(a) if r["lease"] is None]
        self.assertEqual([r["cause"] for r in ends], ["lease-expired"])
        audit = [r for r in c.history("kind=audit")["records"] if r["action"] == "cancel"]
        self.assertEqual([(r["operation_id"], r["source"], r["result"]["code"]) for r in audit],
                         [(cancel_id, "agent", "ok")])

    def test_expiry_cancels(self):
        a = self.agent()
        t = time.time()
        d = self.prepare(a, "lp-1", lease=1)
        lease = d["lease"]
        self.assertEqual(set(lease), {"operation_id", "expires_at", "lease_seconds"})
        self.assertEqual((lease["operation_id"], lease["lease_seconds"]), ("lp-1", 1))
        self.assertAlmostEqual(parse_time(lease["expires_at"]), t + 1, delta=1.0)
        start = self.lease_records(a)
        self.assertEqual(len(start), 1)
        self.assertEqual(start[0]["lease"]["operation_id"], "lp-1")
        self.assertEqual(start[0]["lease"]["boot_id"], d["boot_id"])
        wait_for(lambda: a.client().state()["state"] == "normal", timeout=5,
                 what="the lease to expire")
        # Not before the deadline (with a little slack for the clocks' granularity).
        self.assertGreaterEqual(time.time(), t + 0.9)
        self.check_expired(a, "lp-1")
        self.assertEqual(a.sim_kernel()["applied"]["cancel"], 1)

    def test_expiry_waits_for_running_operation(self):
        a = self.agent()
        c = a.client()
        files = os.path.join(self.tmp, "files")
        os.makedirs(files, exist_ok=True)
        kpath, ksha = make_file(files, "vmlinuz-slow", 4096)
        self.prepare(a, "lp-busy", lease=1)
        with open(a.sim_path("faults"), "w") as f:
            f.write("kexec-load=2500ms\n")
        t = time.monotonic()
        d = self.assertStateDoc(c.put("/v1/kernel", json_body={
            "kernel": {"path": kpath, "sha256": ksha}, "operation_id": "lp-busy-stage"}))
        self.assertGreaterEqual(time.monotonic() - t, 2.4)
        # The lease ran out during the stage: its cancel waited (retried) and then ran.
        self.assertOperation(d["operation"], action="stage", status="succeeded")
        wait_for(lambda: c.state()["state"] == "normal", timeout=5,
                 what="the cancel after the stage")
        self.check_expired(a, "lp-busy")

    def test_renewal_extends(self):
        a = self.agent()
        c = a.client()
        t0 = time.monotonic()
        self.prepare(a, "lp-renew", lease=2)
        # Renew every 0.5 s for 3.5 s: well past the first deadline, still prepared.
        last = None
        while time.monotonic() - t0 < 3.5:
            time.sleep(0.5)
            r = c.post("/v1/lease", json_body={"operation_id": "lp-renew"})
            self.assertEqual(r.status, 200, r)
            self.assertEqual(set(r.json), {"operation_id", "expires_at", "lease_seconds"})
            self.assertEqual((r.json["operation_id"], r.json["lease_seconds"]), ("lp-renew", 2))
            if last:
                self.assertGreater(r.json["expires_at"], last)
            last = r.json["expires_at"]
            self.assertEqual(c.state()["state"], "prepared")
        # A longer renewal changes lease_seconds; the document shows it.
        r = c.post("/v1/lease", json_body={"operation_id": "lp-renew", "lease_seconds": 3})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["lease_seconds"], 3)
        d = c.state()
        self.assertEqual(d["lease"], r.json)
        # Renewals are journaled (the index moves) and audited.
        renewals = [x for x in self.lease_records(a) if x["lease"] and "cause" not in x]
        self.assertGreaterEqual(len(renewals), 7)
        audit = [x for x in c.history("kind=audit")["records"] if x["action"] == "lease"]
        self.assertGreaterEqual(len(audit), 7)
        self.assertTrue(all(x["result"]["code"] == "ok" and x["operation_id"] == "lp-renew"
                            for x in audit), audit)
        # Then nobody renews: cancelled.
        wait_for(lambda: c.state()["state"] == "normal", timeout=8,
                 what="the renewed lease to expire")
        self.check_expired(a, "lp-renew")

    def test_codes(self):
        a = self.agent("--max-lease=60s")
        c = a.client()
        self.assertProblem(c.post("/v1/lease", json_body={"operation_id": "x"}), 404, "no-lease")
        # Without lease_seconds: no lease.
        d = self.prepare(a, "lp-none")
        self.assertIsNone(d["lease"])
        self.assertProblem(c.post("/v1/lease", json_body={"operation_id": "lp-none"}), 404,
                           "no-lease")
        self.assertStateDoc(c.post("/v1/cancel"))
        for bad in (0, -1, 61, "5", 1.5, True, None):
            self.assertProblem(c.post("/v1/prepare", json_body={"lease_seconds": bad}), 400,
                               "invalid-field", field="lease_seconds")
        self.assertEqual(c.state()["state"], "normal")
        # lease_seconds belongs to prepare only.
        self.assertProblem(c.post("/v1/finish", json_body={"lease_seconds": 5}), 400,
                           "unknown-field")
        self.prepare(a, "lp-2", lease=60)
        self.assertProblem(c.post("/v1/lease", json_body={"operation_id": "other"}), 409,
                           "lease-mismatch", operation_id="lp-2")
        self.assertProblem(c.post("/v1/lease", json_body={}), 400, "invalid-field",
                           field="operation_id")
        self.assertProblem(c.post("/v1/lease", json_body={"operation_id": "lp-2",
                                                          "lease_seconds": 61}),
                           400, "invalid-field", field="lease_seconds")
        self.assertProblem(c.post("/v1/lease", json_body={"operation_id": "lp-2", "x": 1}),
                           400, "unknown-field")
        idx = c.state()["index"]
        self.assertProblem(c.post("/v1/lease", json_body={"operation_id": "lp-2"},
                                  headers={"If-Match": '"%d"' % (idx - 1)}),
                           412, "precondition-failed", current_index=idx)
        r = c.post("/v1/lease", json_body={"operation_id": "lp-2"},
                   headers={"If-Match": '"%d"' % idx})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(c.state()["index"], idx + 1)
        # Refusals are audited too.
        codes = [x["result"]["code"] for x in c.history("kind=audit")["records"]
                 if x["action"] == "lease"]
        self.assertEqual(codes, ["no-lease", "no-lease", "lease-mismatch", "invalid-field",
                                 "invalid-field", "unknown-field", "precondition-failed", "ok"])
        # A cancel ends the lease.
        d = self.assertStateDoc(c.post("/v1/cancel", json_body={"operation_id": "lp-2-cancel"}))
        self.assertIsNone(d["lease"])
        self.assertEqual([r["cause"] for r in self.lease_records(a) if r["lease"] is None],
                         ["lease-cancelled"])
        self.assertProblem(c.post("/v1/lease", json_body={"operation_id": "lp-2"}), 404,
                           "no-lease")
        # A replayed prepare does not start a second lease.
        self.prepare(a, "lp-3", lease=60)
        n = len(self.lease_records(a))
        self.assertEqual(c.post("/v1/prepare", json_body={"operation_id": "lp-3",
                                                          "lease_seconds": 60}).status, 200)
        self.assertEqual(len(self.lease_records(a)), n)

    def test_restart_before_deadline(self):
        a = self.agent()
        t = time.time()
        d = self.prepare(a, "lp-crash", lease=3)
        a.kill9()
        a.restart()
        d2 = a.client().state()
        self.assertEqual(d2["state"], "prepared")
        self.assertEqual(d2["lease"], d["lease"])  # the same deadline, not a fresh one
        wait_for(lambda: a.client().state()["state"] == "normal", timeout=8,
                 what="the re-armed lease to expire")
        self.assertGreaterEqual(time.time(), t + 2.9)
        self.check_expired(a, "lp-crash")

    def test_restart_after_deadline(self):
        a = self.agent()
        self.prepare(a, "lp-late", lease=1)
        a.kill9()
        time.sleep(1.5)
        a.restart()
        # Cancelled at once: the deadline passed while the agent was down.
        wait_for(lambda: a.client().state()["state"] == "normal", timeout=3,
                 what="the cancel of a lease that ran out while the agent was down")
        self.check_expired(a, "lp-late")

    def test_void_after_reboot(self):
        a = self.agent()
        c = a.client()
        files = os.path.join(self.tmp, "files")
        os.makedirs(files, exist_ok=True)
        kpath, ksha = make_file(files, "vmlinuz-next", 4096)
        self.assertStateDoc(c.put("/v1/kernel", json_body={"kernel": {"path": kpath,
                                                                      "sha256": ksha}}))
        before = self.prepare(a, "lp-reboot", lease=2)
        r = a.direct().post("/v1/reboot", json_body={"operation_id": "lp-reboot-go"})
        self.assertEqual(r.status, 202, r)
        d = a.wait_ready(timeout=10 * SCALE)
        while d["boot_id"] == before["boot_id"]:
            time.sleep(0.02)
            d = a.wait_ready(timeout=10 * SCALE)
        self.assertEqual(d["state"], "updated")
        self.assertIsNone(d["lease"])
        # Past the old deadline: nothing fires in the new boot.
        time.sleep(2.5)
        d = a.client().state()
        self.assertEqual(d["state"], "updated")
        self.assertOperation(d["operation"], action="reboot", status="succeeded",
                             id="lp-reboot-go")
        self.assertProblem(c.post("/v1/lease", json_body={"operation_id": "lp-reboot"}), 404,
                           "no-lease")
        f = self.assertStateDoc(c.post("/v1/finish"))
        self.assertEqual(f["state"], "normal")
        self.assertIsNone(f["lease"])
        self.assertEqual(a.sim_kernel()["applied"]["cancel"], 0)


if __name__ == "__main__":
    harness.main()
