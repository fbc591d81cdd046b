#!/usr/bin/env python3
"""test_transitions.py: the action endpoints against the simulated kernel: the transition
table, If-Match, idempotent operation ids (also across a restart), kernel errno faults,
one operation at a time, and kernel staging (PUT/GET/DELETE /v1/kernel)."""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import AgentTestCase, Background, make_file, wait_for  # noqa: E402

setUpModule, tearDownModule = harness.module_fixtures(__file__)


def transitions_to(records, state):
    return [r for r in records if r["kind"] == "transition" and r["to"] == state]


class TransitionTableTest(AgentTestCase):

    def test_prepare_cancel_and_refusals(self):
        a = self.agent()
        c = a.client()
        r = c.post("/v1/prepare", json_body={"operation_id": "t-prepare-1", "reason": "it test"})
        d = self.assertStateDoc(r)
        self.assertEqual(d["state"], "prepared")
        self.assertEqual(d["index"], 4)  # operation running, transition, operation succeeded
        op = d["operation"]
        self.assertOperation(op, action="prepare", status="succeeded", id="t-prepare-1")
        self.assertEqual(op["reason"], "it test")
        self.assertEqual(op["requested_by"], "anonymous", op)  # no authentication configured
        self.assertEqual(c.state(), d)
        recs = c.history("since=1")["records"]
        self.assertEqual([(x["index"], x["kind"]) for x in recs],
                         [(2, "operation"), (3, "transition"), (4, "operation")])
        self.assertEqual(recs[0]["operation"]["status"], "running")
        self.assertEqual(recs[0]["http_status"], 0)
        self.assertEqual(recs[1]["operation_id"], "t-prepare-1")
        self.assertEqual(recs[2]["http_status"], 200)
        self.assertEqual(recs[2]["operation"], op)

        # prepare again: refused, nothing recorded.
        r = c.post("/v1/prepare", json_body={"operation_id": "t-prepare-2"})
        self.assertProblem(r, 409, "invalid-transition", state="prepared",
                           allowed_actions=["reboot", "cancel"])
        self.assertProblem(c.post("/v1/finish"), 409, "invalid-transition", state="prepared",
                           allowed_actions=["reboot", "cancel"])
        self.assertEqual(c.state()["index"], 4)

        r = c.post("/v1/cancel", json_body={"operation_id": "t-cancel-1"})
        d = self.assertStateDoc(r)
        self.assertEqual(d["state"], "normal")
        self.assertEqual(d["index"], 7)
        self.assertOperation(d["operation"], action="cancel", status="succeeded", id="t-cancel-1")
        self.assertIsNone(d["operation"]["reason"])

        for path in ("/v1/finish", "/v1/cancel", "/v1/reboot"):
            with self.subTest(path=path):
                self.assertProblem(c.post(path), 409, "invalid-transition", state="normal",
                                   allowed_actions=["prepare"])
        self.assertEqual(c.state()["index"], 7)
        self.assertEqual(a.sim_kernel()["state"], "normal")

    def test_generated_operation_id(self):
        a = self.agent()
        r = a.client().post("/v1/prepare")
        d = self.assertStateDoc(r)
        self.assertRegex(d["operation"]["id"], harness.UUID_RE)

    def test_reboot_needs_a_staged_kernel(self):
        a = self.agent()
        c = a.client()
        self.assertEqual(c.post("/v1/prepare").status, 200)
        before = c.state()
        r = c.post("/v1/reboot", json_body={"operation_id": "rb-nothing"})
        self.assertProblem(r, 409, "no-kernel-staged", state="prepared")
        self.assertEqual(c.state(), before)
        self.assertEqual(a.sim_kernel()["state"], "prepared")
        # The refused id was not used up.
        r = c.post("/v1/cancel", json_body={"operation_id": "rb-nothing"})
        self.assertEqual(r.status, 200, r)

    def test_if_match(self):
        a = self.agent()
        c = a.client()
        n = c.state()["index"]
        for im in ('"%d"' % (n - 1), '"%d"' % (n + 1), "%d" % (n + 7), 'W/"0"', '"x"', '""',
                   '"%d0"' % n):
            with self.subTest(if_match=im):
                r = c.post("/v1/prepare", headers={"If-Match": im})
                self.assertProblem(r, 412, "precondition-failed", current_index=n)
        self.assertEqual(c.state()["index"], n)
        self.assertEqual(a.sim_kernel()["state"], "normal")
        r = c.post("/v1/prepare", headers={"If-Match": '"%d"' % n},
                   json_body={"operation_id": "im-1"})
        d = self.assertStateDoc(r)
        self.assertEqual(d["state"], "prepared")
        n = d["index"]
        r = c.post("/v1/cancel", headers={"If-Match": 'W/"%d"' % n})
        self.assertEqual(self.assertStateDoc(r)["state"], "normal")
        n = c.state()["index"]
        r = c.post("/v1/prepare", headers={"If-Match": '"1", %d, "2"' % n})
        self.assertEqual(self.assertStateDoc(r)["state"], "prepared")
        r = c.post("/v1/cancel", headers={"If-Match": "*"})
        self.assertEqual(self.assertStateDoc(r)["state"], "normal")
        # A replay is answered before If-Match is looked at.
        r = c.post("/v1/prepare", headers={"If-Match": '"2"'}, json_body={"operation_id": "im-1"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["operation"]["id"], "im-1")
        # Stale If-Match on staging, too.
        r = c.delete("/v1/kernel", headers={"If-Match": '"1"'})
        self.assertProblem(r, 412, "precondition-failed", current_index=c.state()["index"])


class WatcherTest(AgentTestCase):

    def test_every_transition_is_the_operations_own(self):
        # 100 prepare/cancel cycles: exactly 200 transitions, all caused by the operation
        # that ran, in its direction; the document never shows a state the kernel left
        # (kernel reads are ordered by tickets: a stale watcher read is never applied).
        a = self.agent()
        c = a.client()
        n = 100
        for i in range(n):
            self.assertEqual(c.post("/v1/prepare").json["state"], "prepared")
            self.assertEqual(c.post("/v1/cancel").json["state"], "normal")
        lines = c.metrics().splitlines()
        self.assertIn('luofleet_transitions_total{from="normal",to="prepared"} %d' % n, lines)
        self.assertIn('luofleet_transitions_total{from="prepared",to="normal"} %d' % n, lines)
        self.assertEqual(c.state()["index"], 1 + 6 * n)
        self.assertEqual(harness.spurious_transitions(a), [])


class IdempotencyTest(AgentTestCase):

    def test_same_operation_id_acts_once(self):
        a = self.agent()
        c = a.client()
        r1 = c.post("/v1/prepare", json_body={"operation_id": "idem-1", "reason": "first"})
        d1 = self.assertStateDoc(r1)
        last = c.history()["last_index"]
        self.assertEqual(last, d1["index"])
        # The replay carries another reason: body members other than the id are not compared.
        r2 = c.post("/v1/prepare", json_body={"operation_id": "idem-1", "reason": "second"})
        d2 = self.assertStateDoc(r2)
        self.assertEqual(r2.status, r1.status)
        self.assertEqual(d2["operation"], d1["operation"])
        self.assertEqual(d2, d1)
        self.assertEqual(c.history()["last_index"], last)
        self.assertEqual(len(transitions_to(c.all_records(), "prepared")), 1)

        r = c.post("/v1/cancel", json_body={"operation_id": "idem-1"})
        self.assertProblem(r, 409, "operation-id-conflict", operation_id="idem-1")
        self.assertEqual(c.history()["last_index"], last)
        self.assertEqual(a.sim_kernel()["state"], "prepared")

        # After other operations the replay still answers with the first outcome.
        self.assertEqual(c.post("/v1/cancel", json_body={"operation_id": "idem-2"}).status, 200)
        now = c.state()
        r3 = c.post("/v1/prepare", json_body={"operation_id": "idem-1"})
        self.assertEqual(r3.status, 200, r3)
        self.assertEqual(r3.json["operation"], d1["operation"])
        self.assertEqual(r3.json["state"], "normal")
        self.assertEqual(r3.json["index"], now["index"])
        self.assertEqual(c.state(), now)
        self.assertEqual(a.sim_kernel()["state"], "normal")

    def test_failed_operation_replays_its_failure(self):
        a = self.agent()
        c = a.client()
        with open(a.sim_path("faults"), "w") as f:
            f.write("prepare=EBUSY\n")
        r = c.post("/v1/prepare", json_body={"operation_id": "idem-fail"})
        self.assertProblem(r, 409, "kernel-busy", errno="EBUSY", state="normal")
        last = c.history()["last_index"]
        os.unlink(a.sim_path("faults"))
        r = c.post("/v1/prepare", json_body={"operation_id": "idem-fail"})
        self.assertProblem(r, 409, "kernel-busy", errno="EBUSY", operation_id="idem-fail",
                           replayed=True)
        self.assertEqual(c.history()["last_index"], last)
        self.assertEqual(c.state()["state"], "normal")
        self.assertEqual(a.sim_kernel()["state"], "normal")
        # A new id acts.
        self.assertEqual(c.post("/v1/prepare", json_body={"operation_id": "idem-ok"}).status, 200)

    def test_idempotency_across_restart(self):
        a = self.agent()
        c = a.client()
        r1 = c.post("/v1/prepare", json_body={"operation_id": "restart-1"})
        d1 = self.assertStateDoc(r1)
        with open(a.sim_path("faults"), "w") as f:
            f.write("cancel=EIO\n")
        rf = c.post("/v1/cancel", json_body={"operation_id": "restart-fail"})
        self.assertProblem(rf, 500, "kernel-error", errno="EIO")
        os.unlink(a.sim_path("faults"))
        before = c.state()
        a.stop()
        a.restart()
        c = a.client()
        after = c.state()
        self.assertEqual(after["index"], before["index"])  # same boot, nothing changed
        self.assertEqual(after["boot_id"], before["boot_id"])
        r2 = c.post("/v1/prepare", json_body={"operation_id": "restart-1"})
        d2 = self.assertStateDoc(r2)
        self.assertEqual(r2.status, r1.status)
        self.assertEqual(d2["operation"], d1["operation"])
        r = c.post("/v1/cancel", json_body={"operation_id": "restart-fail"})
        self.assertProblem(r, 500, "kernel-error", errno="EIO", operation_id="restart-fail",
                           replayed=True)
        r = c.post("/v1/finish", json_body={"operation_id": "restart-1"})
        self.assertProblem(r, 409, "operation-id-conflict", operation_id="restart-1")
        self.assertEqual(c.state()["index"], before["index"])
        self.assertEqual(len(transitions_to(c.all_records(), "prepared")), 1)
        self.assertEqual(a.sim_kernel()["state"], "prepared")


class KernelFaultTest(AgentTestCase):

    def check_fault(self, spec, status, code, errno_name):
        a = self.agent("--sim-fault=prepare=%s" % spec)
        c = a.client()
        r = c.post("/v1/prepare", json_body={"operation_id": "fault-" + spec})
        self.assertProblem(r, status, code, errno=errno_name, state="normal")
        d = c.state()
        self.assertEqual(d["state"], "normal")
        self.assertOperation(d["operation"], action="prepare", status="failed",
                             id="fault-" + spec)
        self.assertEqual(d["operation"]["error"]["code"], code)
        self.assertEqual(d["operation"]["error"]["errno"], errno_name)
        self.assertEqual(a.sim_kernel()["state"], "normal")
        self.assertEqual(transitions_to(c.all_records(), "prepared"), [])
        recs = c.history("kind=operation")["records"]
        self.assertEqual(recs[-1]["http_status"], status)
        return a

    def test_ebusy(self):
        self.check_fault("EBUSY", 409, "kernel-busy", "EBUSY")

    def test_eio(self):
        self.check_fault("EIO", 500, "kernel-error", "EIO")

    def test_eagain(self):
        self.check_fault("EAGAIN", 503, "kernel-interrupted", "EAGAIN")

    def test_eperm(self):
        self.check_fault("EPERM", 500, "kernel-permission-denied", "EPERM")

    def test_runtime_faults_file(self):
        a = self.agent()
        c = a.client()
        with open(a.sim_path("faults"), "w") as f:
            f.write("# injected by test_runtime_faults_file\n\nprepare=EIO\nfinish=EBUSY\n")
        r = c.post("/v1/prepare")
        self.assertProblem(r, 500, "kernel-error", errno="EIO", state="normal")
        with open(a.sim_path("faults"), "w") as f:
            f.write("prepare=EAGAIN\n")
        self.assertProblem(c.post("/v1/prepare"), 503, "kernel-interrupted", errno="EAGAIN")
        os.unlink(a.sim_path("faults"))
        self.assertEqual(self.assertStateDoc(c.post("/v1/prepare"))["state"], "prepared")
        # The file overrides a flag, op by op.
        with open(a.sim_path("faults"), "w") as f:
            f.write("cancel=EBUSY\n")
        self.assertProblem(c.post("/v1/cancel"), 409, "kernel-busy", errno="EBUSY",
                           state="prepared")
        os.unlink(a.sim_path("faults"))
        self.assertEqual(self.assertStateDoc(c.post("/v1/cancel"))["state"], "normal")

    def test_malformed_faults_file_fails_the_operation(self):
        a = self.agent()
        c = a.client()
        with open(a.sim_path("faults"), "w") as f:
            f.write("prepare=NOSUCHERRNO\n")
        r = c.post("/v1/prepare")
        self.assertProblem(r, 500, "kernel-error", errno="EBADMSG", state="normal")
        self.assertEqual(a.sim_kernel()["state"], "normal")


class OneAtATimeTest(AgentTestCase):

    def test_operation_in_progress(self):
        a = self.agent("--sim-fault=prepare=1500ms")
        c = a.client()
        t0 = time.monotonic()
        bg = Background(c.post, "/v1/prepare", json_body={"operation_id": "slow-1"})
        d = wait_for(lambda: (lambda s: s if s["operation"] and
                              s["operation"]["status"] == "running" else None)(c.state()),
                     what="the slow prepare to be running")
        self.assertOperation(d["operation"], action="prepare", status="running", id="slow-1")
        self.assertEqual(d["state"], "normal")
        r = c.post("/v1/cancel", json_body={"operation_id": "slow-cancel"})
        self.assertProblem(r, 409, "operation-in-progress", operation_id="slow-1")
        r = c.post("/v1/prepare", json_body={"operation_id": "slow-2"})
        self.assertProblem(r, 409, "operation-in-progress", operation_id="slow-1")
        r = c.put("/v1/kernel", json_body={"kernel": {"path": "/nonexistent", "sha256": "0" * 64}})
        self.assertProblem(r, 409, "operation-in-progress", operation_id="slow-1")
        # The same id while it runs: 202 and the running operation, nothing done again.
        r = c.post("/v1/prepare", json_body={"operation_id": "slow-1"})
        self.assertEqual(r.status, 202, r)
        self.assertOperation(r.json["operation"], action="prepare", status="running", id="slow-1")
        # The health endpoints answer at once meanwhile.
        t = time.monotonic()
        self.assertEqual(c.get("/healthz").status, 200)
        self.assertLess(time.monotonic() - t, 0.5)
        r = bg.get()
        self.assertGreaterEqual(time.monotonic() - t0, 1.4)
        d = self.assertStateDoc(r)
        self.assertEqual(d["state"], "prepared")
        self.assertOperation(d["operation"], action="prepare", status="succeeded", id="slow-1")
        # The refused ids were not used up.
        self.assertEqual(c.post("/v1/cancel", json_body={"operation_id": "slow-cancel"}).status,
                         200)
        self.assertEqual(len(transitions_to(c.all_records(), "prepared")), 1)


class StagingTest(AgentTestCase):

    def setUp(self):
        super().setUp()
        self.files = os.path.join(self.tmp, "files")
        os.mkdir(self.files)

    def test_stage_get_delete(self):
        a = self.agent()
        c = a.client()
        self.assertProblem(c.get("/v1/kernel"), 404, "no-kernel-staged")
        kpath, ksha = make_file(self.files, "vmlinuz", 100003)
        ipath, isha = make_file(self.files, "initrd.img", 4097)
        r = c.put("/v1/kernel", json_body={
            "kernel": {"path": kpath, "sha256": ksha.upper()},
            "initrd": {"path": ipath, "sha256": isha},
            "cmdline": "console=ttyS0 quiet", "operation_id": "stage-1", "reason": "new kernel"})
        d = self.assertStateDoc(r)
        st = d["staged"]
        self.assertEqual(set(st), {"kernel", "initrd", "cmdline", "staged_at", "loaded",
                                   "signed_by", "previous", "expected"})
        self.assertIsNone(st["signed_by"])
        self.assertEqual(st["previous"]["release"], d["kernel"])
        self.assertEqual(st["kernel"], {"path": kpath, "sha256": ksha, "size": 100003})
        self.assertEqual(st["initrd"], {"path": ipath, "sha256": isha, "size": 4097})
        self.assertEqual(st["cmdline"], "console=ttyS0 quiet")
        self.assertRegex(st["staged_at"], harness.RFC3339_MS_RE)
        self.assertIs(st["loaded"], True)
        self.assertEqual(d["state"], "normal")
        self.assertOperation(d["operation"], action="stage", status="succeeded", id="stage-1")
        k = a.sim_kernel()["kexec"]
        self.assertEqual(k, {"kernel_sha256": ksha, "initrd_sha256": isha,
                             "cmdline": "console=ttyS0 quiet", "kernel_size": 100003})
        self.assertEqual(c.history("kind=staging")["records"][-1]["staged"], st)
        r = c.get("/v1/kernel")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.content_type, "application/json")
        self.assertEqual(r.json, st)
        r = a.direct().head("/v1/kernel")  # HEAD: not through Prism
        self.assertEqual((r.status, r.body), (200, b""))

        # Staging again replaces it.
        k2, s2 = make_file(self.files, "vmlinuz-2", 777)
        d = self.assertStateDoc(c.put("/v1/kernel", json_body={"kernel": {"path": k2,
                                                                          "sha256": s2}}))
        self.assertEqual(d["staged"]["kernel"], {"path": k2, "sha256": s2, "size": 777})
        self.assertIsNone(d["staged"]["initrd"])
        self.assertEqual(d["staged"]["cmdline"], "")

        r = c.delete("/v1/kernel", json_body={"operation_id": "unstage-1"})
        d = self.assertStateDoc(r)
        self.assertIsNone(d["staged"])
        self.assertOperation(d["operation"], action="unstage", status="succeeded", id="unstage-1")
        self.assertIsNone(a.sim_kernel()["kexec"])
        self.assertProblem(c.get("/v1/kernel"), 404, "no-kernel-staged")
        self.assertIsNone(c.history("kind=staging")["records"][-1]["staged"])
        # Unstaging nothing succeeds, too.
        d = self.assertStateDoc(c.delete("/v1/kernel"))
        self.assertIsNone(d["staged"])

    def test_digest_mismatch(self):
        a = self.agent()
        c = a.client()
        kpath, ksha = make_file(self.files, "vmlinuz", 5000)
        wrong = "0123456789abcdef" * 4
        r = c.put("/v1/kernel", json_body={"kernel": {"path": kpath, "sha256": wrong},
                                           "operation_id": "stage-bad"})
        self.assertProblem(r, 422, "digest-mismatch", expected_sha256=wrong, actual_sha256=ksha,
                           field="kernel")
        d = c.state()
        self.assertIsNone(d["staged"])
        self.assertOperation(d["operation"], action="stage", status="failed", id="stage-bad")
        self.assertEqual(d["operation"]["error"]["code"], "digest-mismatch")
        self.assertIsNone(a.sim_kernel()["kexec"])
        self.assertProblem(c.get("/v1/kernel"), 404, "no-kernel-staged")
        self.assertEqual(c.history("kind=staging")["records"], [])
        # A wrong initrd digest refuses the whole stage.
        ipath, isha = make_file(self.files, "initrd", 300)
        r = c.put("/v1/kernel", json_body={"kernel": {"path": kpath, "sha256": ksha},
                                           "initrd": {"path": ipath, "sha256": ksha}})
        self.assertProblem(r, 422, "digest-mismatch", expected_sha256=ksha, actual_sha256=isha,
                           field="initrd")
        self.assertIsNone(c.state()["staged"])
        # The failed id replays its failure (directly: through the contract proxy the replay
        # is a violation, see test_digest_mismatch_replay_keeps_the_digests).
        r = a.direct().put("/v1/kernel", json_body={"kernel": {"path": kpath, "sha256": ksha},
                                                    "operation_id": "stage-bad"})
        self.assertProblem(r, 422, "digest-mismatch", replayed=True, operation_id="stage-bad")
        self.assertIsNone(c.state()["staged"])

    def test_digest_mismatch_replay_keeps_the_digests(self):
        # BUG (agent/ops.c op_replay_locked): a replayed failure is rebuilt from the stored
        # operation's error (code, detail, errno) only, so the replay of a failed stage
        # answers 422 digest-mismatch without expected_sha256, actual_sha256 and field, which
        # api/openapi.yaml requires of every digest-mismatch problem (Problem, the if/then
        # on code); Prism reports it as a violation. Expected: the first answer's members.
        a = self.agent()
        c = a.client()
        kpath, ksha = make_file(self.files, "vmlinuz", 5000)
        wrong = "0123456789abcdef" * 4
        body = {"kernel": {"path": kpath, "sha256": wrong}, "operation_id": "stage-bad"}
        r = c.put("/v1/kernel", json_body=body)
        self.assertProblem(r, 422, "digest-mismatch", expected_sha256=wrong, actual_sha256=ksha,
                           field="kernel")
        r = a.direct().put("/v1/kernel", json_body=body)
        self.assertProblem(r, 422, "digest-mismatch", replayed=True, operation_id="stage-bad",
                           expected_sha256=wrong, actual_sha256=ksha, field="kernel")
        r = c.put("/v1/kernel", json_body=body)  # and the contract proxy agrees
        self.assertProblem(r, 422, "digest-mismatch", replayed=True)

    def test_missing_file_and_directory(self):
        a = self.agent()
        c = a.client()
        sha = "ab" * 32
        missing = os.path.join(self.files, "no-such-vmlinuz")
        r = c.put("/v1/kernel", json_body={"kernel": {"path": missing, "sha256": sha}})
        self.assertProblem(r, 422, "file-not-found", field="kernel")
        r = c.put("/v1/kernel", json_body={"kernel": {"path": missing + "/x", "sha256": sha}})
        self.assertProblem(r, 422, "file-not-found", field="kernel")
        r = c.put("/v1/kernel", json_body={"kernel": {"path": self.files, "sha256": sha}})
        self.assertProblem(r, 422, "not-a-regular-file", field="kernel")
        kpath, ksha = make_file(self.files, "vmlinuz", 10)
        r = c.put("/v1/kernel", json_body={"kernel": {"path": kpath, "sha256": ksha},
                                           "initrd": {"path": missing, "sha256": sha}})
        self.assertProblem(r, 422, "file-not-found", field="initrd")
        self.assertIsNone(c.state()["staged"])
        self.assertIsNone(a.sim_kernel()["kexec"])

    def test_bad_paths(self):
        a = self.agent()
        c = a.client()  # valid JSON: forwarded by the proxy (--validate-request false)
        kpath, ksha = make_file(self.files, "vmlinuz", 10)
        rel = os.path.relpath(kpath)
        for p in (rel, "vmlinuz", "./vmlinuz", self.files + "/../files/vmlinuz",
                  "/..", self.files + "/..", "/tmp/a\nb"):
            with self.subTest(path=p):
                r = c.put("/v1/kernel", json_body={"kernel": {"path": p, "sha256": ksha}})
                self.assertProblem(r, 400, "invalid-field", field="kernel")
        # '..' inside a name is not a '..' component.
        odd, osha = make_file(self.files, "vmlinuz..old", 10)
        d = self.assertStateDoc(c.put("/v1/kernel", json_body={"kernel": {"path": odd,
                                                                          "sha256": osha}}))
        self.assertEqual(d["staged"]["kernel"]["path"], odd)

    def test_empty_image_refused_by_kexec(self):
        a = self.agent()
        c = a.client()
        kpath, ksha = make_file(self.files, "empty", 0)
        r = c.put("/v1/kernel", json_body={"kernel": {"path": kpath, "sha256": ksha}})
        self.assertProblem(r, 422, "kernel-error", errno="ENOEXEC")
        self.assertIsNone(c.state()["staged"])


if __name__ == "__main__":
    harness.main()
