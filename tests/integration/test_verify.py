#!/usr/bin/env python3
"""test_verify.py: after the simulated kexec: the blackout members (blackout_ms,
kernel_uptime_ms_at_start, kexec_ms) in the reboot record, in the state document's
last_update and in the luofleet_blackout_seconds histogram; the verification of the running
kernel against the staged one (the release a bzImage header names, or the one the staging
request names): match, mismatch (readyz 503 "kernel-verified", an audit record "verify",
kept across an agent restart), unknown (no header, no release), cleared by the next
prepare. The simulated kernel boots into the release its image's header names."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import AgentTestCase, make_file  # noqa: E402

setUpModule, tearDownModule = harness.module_fixtures(__file__)

SCALE = float(os.environ.get("LUOFLEET_TEST_TIMEOUT_SCALE", "1"))
VERSION = "6.99.1-next (ci@build) #7 SMP PREEMPT_DYNAMIC Wed Nov 25 12:00:00 UTC 2026"


def make_bzimage(directory, name, version=VERSION):
    return harness.make_bzimage(directory, name, version)



class VerifyTest(AgentTestCase):

    def cycle(self, a, stage_body, op="v"):
        """Stage, prepare, reboot (the simulated kexec re-executes the agent); returns the
        new boot's document and the document before the reboot."""
        c = a.client()
        r = c.put("/v1/kernel", json_body=stage_body)
        staged = self.assertStateDoc(r)["staged"]
        before = self.assertStateDoc(c.post("/v1/prepare", json_body={"operation_id": op + "-p"}))
        r = a.direct().post("/v1/reboot", json_body={"operation_id": op + "-r"})
        self.assertEqual(r.status, 202, r)
        d = a.wait_ready(timeout=10 * SCALE)
        t = time.monotonic()
        while d["boot_id"] == before["boot_id"]:
            self.assertLess(time.monotonic() - t, 10 * SCALE, "no new boot")
            time.sleep(0.02)
            d = a.wait_ready(timeout=10 * SCALE)
        self.assertEqual(d["state"], "updated")
        return self.assertStateDoc(c.get("/v1/state")), before, staged

    def files(self):
        files = os.path.join(self.tmp, "files")
        os.makedirs(files, exist_ok=True)
        return files

    def check_blackout(self, a, d, before):
        rb = [r for r in a.client().all_records() if r["kind"] == "reboot"][-1]
        self.assertEqual(rb["to_boot_id"], d["boot_id"])
        self.assertIsInstance(rb["blackout_ms"], int)
        self.assertIsInstance(rb["kernel_uptime_ms_at_start"], int)
        self.assertGreaterEqual(rb["kernel_uptime_ms_at_start"], 1)
        self.assertIsInstance(rb["kexec_ms"], int)
        self.assertEqual(rb["kexec_ms"], max(rb["blackout_ms"] - rb["kernel_uptime_ms_at_start"],
                                             0))
        self.assertLess(rb["blackout_ms"], 30000)
        u = d["last_update"]
        for k in ("from_boot_id", "to_boot_id", "planned", "operation_id", "blackout_ms",
                  "kernel_uptime_ms_at_start", "kexec_ms", "verification"):
            self.assertEqual(u[k], rb[k], k)
        self.assertEqual(u["from_boot_id"], before["boot_id"])
        self.assertIsInstance(u["at"], str)
        # The histogram: this process came up after one reboot.
        m = a.client().metrics().splitlines()
        self.assertIn("# TYPE luofleet_blackout_seconds histogram", m)
        self.assertIn('luofleet_blackout_seconds_bucket{le="+Inf"} 1', m)
        self.assertIn("luofleet_blackout_seconds_count 1", m)
        self.assertIn('luofleet_blackout_seconds_bucket{le="60"} 1', m)
        return rb

    def readyz(self, a):
        r = a.client().get("/readyz")
        chk = [x for x in r.json["checks"] if x["name"] == "kernel-verified"]
        self.assertEqual(len(chk), 1, r)
        return r, chk[0]

    def test_match(self):
        a = self.agent("--sim-release=6.1.0-old")
        kpath, ksha = make_bzimage(self.files(), "vmlinuz-next")
        d, before, staged = self.cycle(a, {"kernel": {"path": kpath, "sha256": ksha}})
        self.assertEqual(staged["expected"], {"release": "6.99.1-next", "version": VERSION})
        self.assertEqual(before["kernel"], "6.1.0-old")
        self.assertEqual(d["kernel"], "6.99.1-next")  # the sim booted the image's release
        rb = self.check_blackout(a, d, before)
        v = rb["verification"]
        self.assertEqual(v["status"], "match")
        self.assertEqual(v["expected"], staged["expected"])
        self.assertEqual(v["running"], {"release": "6.99.1-next", "version": None,
                                        "build_id": None})
        r, chk = self.readyz(a)
        self.assertEqual(r.status, 200, r)
        self.assertIs(chk["ok"], True)
        self.assertEqual([x for x in a.client().history("kind=audit")["records"]
                          if x["action"] == "verify"], [])
        # Kept through the finish; the next prepare starts a new update.
        f = self.assertStateDoc(a.client().post("/v1/finish"))
        self.assertEqual(f["last_update"], d["last_update"])
        p = self.assertStateDoc(a.client().post("/v1/prepare"))
        self.assertIsNone(p["last_update"])
        a.stop()
        a.restart()
        self.assertIsNone(a.client().state()["last_update"])

    def test_mismatch(self):
        a = self.agent()
        kpath, ksha = make_bzimage(self.files(), "vmlinuz-next")
        d, before, staged = self.cycle(a, {"kernel": {"path": kpath, "sha256": ksha},
                                           "release": "6.1.0-other"}, op="mm")
        self.assertEqual(staged["expected"], {"release": "6.1.0-other", "version": VERSION})
        self.assertEqual(d["kernel"], "6.99.1-next")
        rb = self.check_blackout(a, d, before)
        self.assertEqual(rb["verification"]["status"], "mismatch")
        r, chk = self.readyz(a)
        self.assertEqual(r.status, 503, r)
        self.assertEqual(r.json["status"], "not-ready")
        self.assertIs(chk["ok"], False)
        self.assertIn("6.1.0-other", chk["detail"])
        audit = [x for x in a.client().history("kind=audit")["records"]
                 if x["action"] == "verify"]
        self.assertEqual(len(audit), 1, audit)
        self.assertEqual((audit[0]["source"], audit[0]["result"]["code"],
                          audit[0]["result"]["status"], audit[0]["boot_id"]),
                         ("agent", "kernel-mismatch", 503, d["boot_id"]))
        # An agent restart in the same boot keeps the verdict (from the journal), without a
        # second audit record.
        a.stop()
        a.restart()
        r, chk = self.readyz(a)
        self.assertEqual(r.status, 503, r)
        self.assertEqual(len([x for x in a.client().history("kind=audit")["records"]
                              if x["action"] == "verify"]), 1)
        # The operator moves on: finish, then a new prepare clears it.
        self.assertStateDoc(a.client().post("/v1/finish"))
        self.assertStateDoc(a.client().post("/v1/prepare"))
        r, chk = self.readyz(a)
        self.assertEqual(r.status, 200, r)

    def test_unknown(self):
        a = self.agent()
        kpath, ksha = make_file(self.files(), "vmlinuz-plain", 4096)
        d, before, staged = self.cycle(a, {"kernel": {"path": kpath, "sha256": ksha}}, op="u")
        self.assertEqual(staged["expected"], {"release": None, "version": None})
        self.assertEqual(d["kernel"], before["kernel"])
        rb = self.check_blackout(a, d, before)
        self.assertEqual(rb["verification"]["status"], "unknown")
        r, chk = self.readyz(a)
        self.assertEqual(r.status, 200, r)


if __name__ == "__main__":
    harness.main()
