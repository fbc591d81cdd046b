#!/usr/bin/env python3
"""test_rollback.py: POST /v1/rollback (docs/staging.md). The simulated kernel boots into the
release its image's bzImage header names: the agent first boots image A (6.1.0-old) itself,
so that staging B (6.99.1-next) records A's file as `previous` (no /boot in the tests), then
B; the rollback from `updated` finishes, stages A again, prepares and kexecs: the new boot
runs A (state document `kernel`, verification `match`). Also: a replayed operation_id answers
202 without a second kexec (sim `applied.kexec`), also across the jump; the target kept across
an agent restart (a second rollback goes forward again); a pre-reboot hook veto; If-Match 412; refused
states 409 invalid-transition with allowed_actions; no recorded image 409 no-rollback-target;
the audit record; a viewer token 403. Every response through the contract proxy, except the
polling through the blackout."""

import hashlib
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import AgentTestCase  # noqa: E402

setUpModule, tearDownModule = harness.module_fixtures(__file__)

SCALE = float(os.environ.get("LUOFLEET_TEST_TIMEOUT_SCALE", "1"))
OLD = "6.1.0-old (ci@build) #1 SMP PREEMPT_DYNAMIC Mon Nov 23 12:00:00 UTC 2026"
NEW = "6.99.1-next (ci@build) #7 SMP PREEMPT_DYNAMIC Wed Nov 25 12:00:00 UTC 2026"


def make_bzimage(directory, name, version):
    return harness.make_bzimage(directory, name, version)



class RollbackTest(AgentTestCase):

    def files(self):
        files = os.path.join(self.tmp, "files")
        os.makedirs(files, exist_ok=True)
        return files

    def wait_boot(self, a, old_boot):
        d = a.wait_ready(timeout=10 * SCALE)
        t = time.monotonic()
        while d["boot_id"] == old_boot or d["operation"]["status"] == "running":
            self.assertLess(time.monotonic() - t, 10 * SCALE, "no new boot")
            time.sleep(0.02)
            d = a.wait_ready(timeout=10 * SCALE)
        return self.assertStateDoc(a.client().get("/v1/state"))

    def cycle(self, a, path, sha, op):
        """Stage, prepare, reboot: the new boot's document and the staged record."""
        c = a.client()
        staged = self.assertStateDoc(c.put("/v1/kernel", json_body={
            "kernel": {"path": path, "sha256": sha}, "cmdline": "quiet",
            "operation_id": op + "-s"}))["staged"]
        before = self.assertStateDoc(c.post("/v1/prepare", json_body={"operation_id": op + "-p"}))
        r = c.post("/v1/reboot", json_body={"operation_id": op + "-r"})
        self.assertEqual(r.status, 202, r)
        d = self.wait_boot(a, before["boot_id"])
        self.assertEqual(d["state"], "updated")
        return d, staged

    def updated_on_b(self, a):
        """Boot A through the agent, finish, then boot B: returns (document, A path, A sha)."""
        apath, asha = make_bzimage(self.files(), "vmlinuz-a", OLD)
        bpath, bsha = make_bzimage(self.files(), "vmlinuz-b", NEW)
        d, _ = self.cycle(a, apath, asha, "a")
        self.assertEqual(d["kernel"], "6.1.0-old")
        self.assertEqual(d["last_update"]["verification"]["status"], "match")
        self.assertStateDoc(a.client().post("/v1/finish", json_body={"operation_id": "a-f"}))
        d, staged = self.cycle(a, bpath, bsha, "b")
        self.assertEqual(d["kernel"], "6.99.1-next")
        # What ran before B: A, and the file the agent booted it from.
        self.assertEqual(staged["previous"], {"release": "6.1.0-old", "image": apath,
                                              "image_sha256": asha})
        return d, apath, asha

    def test_rollback(self):
        a = self.agent("--sim-release=6.1.0-old")
        c = a.client()
        d, apath, asha = self.updated_on_b(a)
        kexecs = a.sim_kernel()["applied"]["kexec"]
        self.assertEqual(kexecs, 2)

        # If-Match: a stale index is 412, nothing done.
        r = c.post("/v1/rollback", json_body={"operation_id": "rb"},
                   headers={"If-Match": '"%d"' % (d["index"] - 1)})
        self.assertProblem(r, 412, "precondition-failed")
        self.assertEqual(a.sim_kernel()["applied"]["kexec"], kexecs)

        r = c.post("/v1/rollback", json_body={"operation_id": "rb", "reason": "checks failed"},
                   headers={"If-Match": '"%d"' % d["index"]})
        self.assertEqual(r.status, 202, r)
        acc = self.assertStateDoc(r, status=202)
        self.assertOperation(acc["operation"], action="rollback", status="running", id="rb")
        self.assertEqual(acc["state"], "prepared")
        self.assertEqual(acc["staged"]["kernel"]["path"], apath)
        self.assertEqual(acc["staged"]["expected"]["release"], "6.1.0-old")
        self.assertEqual(acc["staged"]["previous"]["release"], "6.99.1-next")

        n = self.wait_boot(a, d["boot_id"])
        self.assertEqual(n["kernel"], "6.1.0-old")
        self.assertEqual(n["state"], "updated")
        self.assertOperation(n["operation"], action="rollback", status="succeeded", id="rb")
        self.assertEqual(n["last_update"]["verification"]["status"], "match")
        self.assertEqual(n["last_update"]["operation_id"], "rb")
        k = a.sim_kernel()
        self.assertEqual(k["applied"]["kexec"], kexecs + 1)
        self.assertEqual(k["release"], "6.1.0-old")

        # Replayed across the jump: 202, no second kexec.
        r = c.post("/v1/rollback", json_body={"operation_id": "rb", "reason": "checks failed"})
        self.assertEqual(r.status, 202, r)
        self.assertOperation(self.assertStateDoc(r, status=202)["operation"],
                             action="rollback", status="succeeded", id="rb")
        time.sleep(0.3 * SCALE)
        self.assertEqual(a.sim_kernel()["applied"]["kexec"], kexecs + 1)
        self.assertEqual(a.sim_kernel()["boots"], k["boots"])

        # Audited with its 202 (and the refusals and the replay).
        audit = [(x["action"], x["operation_id"], x["result"]["status"], x["result"]["code"])
                 for x in c.history("kind=audit")["records"] if x["action"] == "rollback"]
        self.assertEqual(audit, [("rollback", "rb", 412, "precondition-failed"),
                                 ("rollback", "rb", 202, "accepted"),
                                 ("rollback", "rb", 202, "replayed")])

        # The planned reboot record names the rollback operation.
        rb = [x for x in c.all_records() if x["kind"] == "reboot"][-1]
        self.assertIs(rb["planned"], True)
        self.assertEqual(rb["operation_id"], "rb")

        # The journal keeps the target across an agent restart: the target is now B (the
        # kernel rolled back from), so a second rollback goes forward again.
        a.stop()
        a.restart()
        r = c.post("/v1/rollback", json_body={"operation_id": "rb2"})
        self.assertEqual(r.status, 202, r)
        self.assertEqual(self.assertStateDoc(r, status=202)["staged"]["kernel"]["path"],
                         acc["staged"]["previous"]["image"])
        n2 = self.wait_boot(a, n["boot_id"])
        self.assertEqual(n2["kernel"], "6.99.1-next")
        self.assertEqual(n2["last_update"]["verification"]["status"], "match")
        self.assertEqual(a.sim_kernel()["applied"]["kexec"], kexecs + 2)
        self.assertStateDoc(c.post("/v1/finish"))

    def test_hook_veto(self):
        hooks = tempfile.mkdtemp(prefix="lf-rb-hooks-", dir="/tmp")
        self.addCleanup(shutil.rmtree, hooks, True)
        os.chmod(hooks, 0o755)
        a = self.agent("--sim-release=6.1.0-old", "--hooks-dir=%s" % hooks)
        c = a.client()
        d, _, _ = self.updated_on_b(a)
        veto = os.path.join(hooks, "pre-reboot.d")
        os.makedirs(veto)
        os.chmod(veto, 0o755)
        with open(os.path.join(veto, "veto"), "w") as f:
            f.write("#!/bin/sh\necho not now\nexit 7\n")
        os.chmod(os.path.join(veto, "veto"), 0o755)
        r = c.post("/v1/rollback", json_body={"operation_id": "rbv"})
        self.assertProblem(r, 409, "hook-veto", hook="veto", phase="pre-reboot", exit_code=7)
        # Nothing was done: still updated on B, nothing staged, no kexec.
        s = c.state()
        self.assertEqual((s["state"], s["kernel"], s["staged"]), ("updated", "6.99.1-next", None))
        self.assertEqual(a.sim_kernel()["applied"]["kexec"], 2)
        os.unlink(os.path.join(veto, "veto"))
        r = c.post("/v1/rollback", json_body={"operation_id": "rbv2"})
        self.assertEqual(r.status, 202, r)
        n = self.wait_boot(a, d["boot_id"])
        self.assertEqual(n["kernel"], "6.1.0-old")

    def test_refused(self):
        a = self.agent("--sim-release=6.1.0-old")
        c = a.client()
        # normal: invalid-transition, allowed_actions as for normal.
        r = c.post("/v1/rollback", json_body={"operation_id": "x1"})
        self.assertProblem(r, 409, "invalid-transition", state="normal",
                           allowed_actions=["prepare"])
        self.assertStateDoc(c.post("/v1/prepare"))
        r = c.post("/v1/rollback")
        self.assertProblem(r, 409, "invalid-transition", state="prepared",
                           allowed_actions=["reboot", "cancel"])
        self.assertStateDoc(c.post("/v1/cancel"))
        # updated without a recorded image (the running kernel came from nowhere the agent
        # can read): no-rollback-target; allowed_actions in updated list rollback.
        bpath, bsha = make_bzimage(self.files(), "vmlinuz-b", NEW)
        d, staged = self.cycle(a, bpath, bsha, "b")
        self.assertEqual(staged["previous"], {"release": "6.1.0-old", "image": None,
                                              "image_sha256": None})
        r = c.post("/v1/rollback", json_body={"operation_id": "x2"})
        self.assertProblem(r, 409, "no-rollback-target", state="updated")
        r = c.post("/v1/prepare")
        self.assertProblem(r, 409, "invalid-transition", state="updated",
                           allowed_actions=["finish", "rollback"])
        self.assertEqual(a.sim_kernel()["applied"]["kexec"], 1)
        self.assertEqual(c.state()["state"], "updated")

    def test_viewer_forbidden(self):
        tokens = os.path.join(self.tmp, "tokens")
        viewer = "lfa_SECRET-viewer-Rb4Rt9Yb2Nd6Ja5"
        with open(tokens, "w") as f:
            f.write("watcher viewer %s\n" % hashlib.sha256(viewer.encode()).hexdigest())
        os.chmod(tokens, 0o600)
        a = self.agent("--tokens=%s" % tokens)
        r = a.client().post("/v1/rollback", headers={"Authorization": "Bearer " + viewer})
        self.assertProblem(r, 403, "forbidden")


if __name__ == "__main__":
    harness.main()
