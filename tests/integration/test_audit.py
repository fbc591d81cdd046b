#!/usr/bin/env python3
"""test_audit.py: the audit trail. Every mutating request, allowed or refused, leaves exactly
one `audit` record (GET /v1/history?kind=audit) with the exact fields: time, boot id, identity,
source, action, operation id, precondition and result; audit records have their own indexes
and never move the state document's index nor wake a long-poll; nothing secret (a bearer
token) reaches the journals, the state directory or the agent's output."""

import hashlib
import json
import os
import stat
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import (RFC3339_MS_RE, UUID_RE, AgentTestCase, Background,  # noqa: E402
                     make_file, wait_for)

setUpModule, tearDownModule = harness.module_fixtures(__file__)

AUDIT_KEYS = {"index", "time", "boot_id", "kind", "state", "state_index", "identity", "source",
              "action", "precondition", "result"}
NONE = {"method": "none", "name": None, "role": "operator"}


def audit_path(a):
    return os.path.join(a.state_dir, "audit")


def audit_file_records(a):
    out = []
    with open(audit_path(a), "rb") as f:
        for line in f:
            if line.endswith(b"\n"):
                out.append(json.loads(line))
    return out


# The agent runs without privilege separation here: the audit trail is the network process's,
# and as root privsep would drop it to a user that cannot read the test's files.
BASE_ARGS = ("--privsep=no",)


class AuditCase(AgentTestCase):

    def agent(self, *args, **kw):
        return super().agent(*(BASE_ARGS + args), **kw)

    def audits(self, c, since=0):
        """Every audit record after since (pages through the audit journal)."""
        out = []
        while True:
            h = c.history("kind=audit&since=%d&limit=1000" % since)
            out.extend(h["records"])
            if not h["more"]:
                return out
            since = h["records"][-1]["index"]

    def last_audit_index(self, c):
        return c.history("kind=audit&limit=1")["last_index"]

    def one(self, a, fn, action, status, code, op_id=None, precondition=None, replayed=False,
            identity=NONE, source="127.0.0.1"):
        """Run fn() (one request); exactly one new audit record, with these fields. Returns
        (response, record)."""
        c = a.client()
        before = self.last_audit_index(c)
        r = fn()
        self.assertEqual(r.status, status, r)
        recs = self.audits(c, before)
        self.assertEqual(len(recs), 1, recs)
        rec = recs[0]
        keys = AUDIT_KEYS | ({"operation_id"} if op_id else set())
        self.assertEqual(set(rec), keys, rec)
        self.assertEqual(rec["index"], before + 1)
        self.assertEqual(rec["kind"], "audit")
        self.assertRegex(rec["time"], RFC3339_MS_RE)
        d = c.state()
        self.assertRegex(rec["boot_id"], UUID_RE)
        self.assertEqual(rec["boot_id"], d["boot_id"])
        self.assertEqual((rec["state"], rec["state_index"]), (d["state"], d["index"]))
        self.assertEqual(rec["identity"], identity)
        self.assertEqual(rec["source"], source)
        self.assertEqual(rec["action"], action)
        if op_id:
            self.assertEqual(rec["operation_id"], op_id)
        self.assertEqual(rec["precondition"], precondition)
        self.assertEqual(rec["result"], {"status": status, "code": code, "replayed": replayed})
        return r, rec

    def stage_body(self, op_id=None, sha=None):
        files = os.path.join(self.tmp, "files")
        os.makedirs(files, exist_ok=True)
        kpath, ksha = make_file(files, "vmlinuz", 4000)
        body = {"kernel": {"path": kpath, "sha256": sha or ksha}}
        if op_id:
            body["operation_id"] = op_id
        return body


class AuditTest(AuditCase):

    def test_every_outcome_once(self):
        a = self.agent()
        c, d = a.client(), a.direct()
        idx = c.state()["index"]
        # Accepted, then replayed.
        r, rec = self.one(a, lambda: c.post("/v1/prepare", json_body={"operation_id": "a-p"}),
                          "prepare", 200, "ok", op_id="a-p")
        self.assertEqual(r.json["operation"]["requested_by"], "anonymous")
        # The operation's records come first; its request's audit record tells the answer.
        self.one(a, lambda: c.post("/v1/prepare", json_body={"operation_id": "a-p"}),
                 "prepare", 200, "replayed", op_id="a-p", replayed=True)
        # No operation_id: the agent's own id is recorded.
        before = self.last_audit_index(c)
        r = c.post("/v1/cancel")
        self.assertEqual(r.status, 200, r)
        rec = self.audits(c, before)[0]
        self.assertEqual(rec["operation_id"], r.json["operation"]["id"])
        self.assertEqual(rec["result"], {"status": 200, "code": "ok", "replayed": False})
        # Refusals of every kind.
        self.one(a, lambda: c.post("/v1/finish"), "finish", 409, "invalid-transition")
        self.one(a, lambda: c.post("/v1/cancel", json_body={"operation_id": "a-p"}), "cancel",
                 409, "operation-id-conflict", op_id="a-p")
        cur = c.state()["index"]
        self.one(a, lambda: c.post("/v1/prepare", headers={"If-Match": '"%d"' % (cur + 5)}),
                 "prepare", 412, "precondition-failed", precondition='"%d"' % (cur + 5))
        self.one(a, lambda: c.post("/v1/prepare", json_body={"operation_id": "bad id!"}),
                 "prepare", 400, "invalid-field")
        self.one(a, lambda: c.post("/v1/prepare", json_body={"frobnicate": 1}), "prepare", 400,
                 "unknown-field")
        self.one(a, lambda: d.post("/v1/prepare", body=b"{", headers={
            "Content-Type": "application/json"}), "prepare", 400, "malformed-json")
        self.one(a, lambda: d.post("/v1/prepare", body=b"{}", headers={
            "Content-Type": "text/plain"}), "prepare", 415, "unsupported-media-type")
        # Staging: refused by the worker (422), then done (200), unstaged (200).
        self.one(a, lambda: c.put("/v1/kernel", json_body=self.stage_body("a-s0", "0" * 64)),
                 "stage", 422, "digest-mismatch", op_id="a-s0")
        self.one(a, lambda: c.put("/v1/kernel", json_body=self.stage_body("a-s1")), "stage",
                 200, "ok", op_id="a-s1")
        self.one(a, lambda: c.delete("/v1/kernel", json_body={"operation_id": "a-u1"}),
                 "unstage", 200, "ok", op_id="a-u1")
        # If-Match that matches: the precondition is recorded with the success.
        cur = c.state()["index"]
        self.one(a, lambda: c.post("/v1/prepare", headers={"If-Match": 'W/"%d"' % cur},
                                   json_body={"operation_id": "a-p2"}),
                 "prepare", 200, "ok", op_id="a-p2", precondition='W/"%d"' % cur)
        self.one(a, lambda: c.post("/v1/reboot", json_body={"operation_id": "a-r"}), "reboot",
                 409, "no-kernel-staged", op_id="a-r")
        # Refused before any handler: too large, unknown path, wrong method, bad framing.
        self.one(a, lambda: d.post("/v1/prepare", body=b"x" * 70000, headers={
            "Content-Type": "application/json"}), "prepare", 413, "body-too-large")
        self.one(a, lambda: d.post("/v1/nope"), "nope", 404, "not-found")
        self.one(a, lambda: d.request("DELETE", "/v1/state"), "state", 405, "method-not-allowed")
        self.one(a, lambda: d.post("/v1/prepare?" + "&".join("a%d=1" % i for i in range(17))),
                 "prepare", 400, "invalid-query")
        # A read that is refused is not a mutating request: nothing audited.
        before = self.last_audit_index(c)
        self.assertEqual(d.get("/v1/nope").status, 404)
        self.assertEqual(self.last_audit_index(c), before)
        # The state index moved only for the operations, never for an audit record.
        ops = [x for x in c.all_records() if x["kind"] != "audit"]
        self.assertEqual(len(ops), len(c.all_records()))
        self.assertGreater(c.state()["index"], idx)
        self.assertEqual([r["index"] for r in self.audits(c)],
                         list(range(1, self.last_audit_index(c) + 1)))

    def test_kernel_failure_and_its_replay(self):
        a = self.agent("--sim-fault=prepare=EIO")
        c = a.client()
        r, rec = self.one(a, lambda: c.post("/v1/prepare", json_body={"operation_id": "k-1"}),
                          "prepare", 500, "kernel-error", op_id="k-1")
        self.assertProblem(r, 500, "kernel-error", errno="EIO")
        self.one(a, lambda: c.post("/v1/prepare", json_body={"operation_id": "k-1"}),
                 "prepare", 500, "kernel-error", op_id="k-1", replayed=True)

    def test_operation_in_progress(self):
        a = self.agent("--sim-fault=prepare=1500ms")
        c = a.client()
        bg = Background(c.post, "/v1/prepare", json_body={"operation_id": "slow"})
        wait_for(lambda: (lambda s: s["operation"] and s["operation"]["status"] == "running")(
            c.state()), what="the slow prepare to run")
        self.one(a, lambda: c.post("/v1/cancel", json_body={"operation_id": "c-2"}), "cancel",
                 409, "operation-in-progress", op_id="c-2")
        self.assertEqual(bg.get().status, 200)
        recs = self.audits(c)
        self.assertEqual([(x["action"], x["result"]["code"]) for x in recs],
                         [("cancel", "operation-in-progress"), ("prepare", "ok")])

    def test_reboot_accepted_is_audited_before_the_jump(self):
        a = self.agent("--sim-reboot=exit")
        c = a.client()
        self.assertEqual(c.put("/v1/kernel", json_body=self.stage_body()).status, 200)
        self.assertEqual(c.post("/v1/prepare").status, 200)
        r = c.post("/v1/reboot", json_body={"operation_id": "rb"})
        self.assertEqual(r.status, 202, r)
        self.assertEqual(a.wait_exit(), 0)
        recs = audit_file_records(a)
        self.assertEqual([(x["action"], x["result"]["code"], x.get("operation_id"))
                          for x in recs],
                         [("stage", "ok", recs[0].get("operation_id")), ("prepare", "ok",
                          recs[1].get("operation_id")), ("reboot", "accepted", "rb")])
        self.assertEqual(recs[-1]["result"]["status"], 202)
        # The new boot keeps the trail and appends to it; its records carry the new boot id.
        a.restart(args=list(BASE_ARGS))
        c = a.client()
        self.one(a, lambda: c.post("/v1/reboot", json_body={"operation_id": "rb"}), "reboot",
                 202, "replayed", op_id="rb", replayed=True)
        recs = self.audits(c)
        self.assertEqual(len(recs), 4)
        self.assertNotEqual(recs[-1]["boot_id"], recs[-2]["boot_id"])

    def test_history_of_the_audit_journal(self):
        a = self.agent()
        c = a.client()
        for i in range(5):
            c.post("/v1/finish")  # 409 each
        h = c.history("kind=audit")
        self.assertEqual((h["first_index"], h["last_index"], h["more"]), (1, 5, False))
        h = c.history("kind=audit&limit=2")
        self.assertEqual(([x["index"] for x in h["records"]], h["more"]), ([4, 5], True))
        h = c.history("kind=audit&since=1&limit=2")
        self.assertEqual(([x["index"] for x in h["records"]], h["more"]), ([2, 3], True))
        h = c.history("kind=audit&since=5")
        self.assertEqual((h["records"], h["more"]), ([], False))
        # Not combinable with the state journal's kinds, which hold none of them.
        r = c.get("/v1/history?kind=audit,operation")
        self.assertProblem(r, 400, "invalid-query")
        self.assertEqual([x for x in c.all_records() if x["kind"] == "audit"], [])
        self.assertEqual(audit_file_records(a), c.history("kind=audit")["records"])
        # Survives a restart (and a kill -9).
        a.kill9()
        a.restart()
        self.assertEqual(len(self.audits(a.client())), 5)

    def test_audit_records_move_no_index_and_wake_no_one(self):
        a = self.agent()
        c = a.client()
        n = c.state()["index"]
        poll = Background(a.direct().get, "/v1/state?index=%d&wait=2s" % n, timeout=10)
        wait_for(lambda: c.metric("luofleet_longpoll_waiters") == 1, what="the waiter")
        for _ in range(3):
            self.assertEqual(c.post("/v1/finish").status, 409)
        self.assertEqual(c.metric("luofleet_longpoll_waiters"), 1)
        r = poll.get()
        self.assertEqual((r.status, r.json["index"]), (200, n))
        # If-Match with the index seen before the refusals still holds.
        r = c.post("/v1/prepare", headers={"If-Match": '"%d"' % n})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(len(self.audits(c)), 4)

    def test_concurrent_requests_each_audited_once(self):
        # Several MHD threads audit at once, while operations run on the worker and a
        # long-poll waits: one record each, indexes 1..n without a gap or a duplicate.
        a = self.agent("--http-threads=4")
        c = a.client()
        poll = Background(a.direct().get, "/v1/state?index=%d&wait=20s" % c.state()["index"],
                          timeout=30)
        threads = []
        for i in range(8):
            threads.append(Background(c.post, "/v1/finish"))
            threads.append(Background(c.post, "/v1/prepare",
                                      json_body={"operation_id": "cc-%d" % (i % 2)}))
        codes = sorted(t.get().status for t in threads)
        self.assertEqual(poll.get().status, 200)
        recs = self.audits(c)
        self.assertEqual([r["index"] for r in recs], list(range(1, len(threads) + 1)))
        self.assertEqual(sorted(r["result"]["status"] for r in recs), codes)
        ok = [r for r in recs if r["result"]["code"] == "ok"]
        self.assertEqual(len(ok), 1, recs)  # one prepare acted; the rest were refused/replays
        self.assertEqual(a.sim_kernel()["applied"]["prepare"], 1)

    def test_audit_tail_torn_by_a_crash(self):
        # The test hook dies in the middle of the second audit record's write.
        env = "LUOFLEET_TEST_CRASH_POINT"
        os.environ[env] = "journal-mid-record:audit:2"
        try:
            a = self.agent()
        finally:
            del os.environ[env]
        c = a.client()
        self.assertEqual(c.post("/v1/finish").status, 409)
        with self.assertRaises(OSError):
            a.direct().post("/v1/finish")
        a.proc.wait()
        a.returncodes.append(a.proc.returncode)
        self.assertEqual(a.returncodes[-1], -9)
        self.assertIn("crash point journal-mid-record:audit reached", a.log())
        with open(audit_path(a), "rb") as f:
            self.assertFalse(f.read().endswith(b"\n"))
        a.restart()
        self.assertIn("Audit journal: dropped a torn tail", a.log())
        recs = self.audits(a.client())
        self.assertEqual([(x["index"], x["result"]["code"]) for x in recs],
                         [(1, "invalid-transition")])
        self.one(a, lambda: a.client().post("/v1/finish"), "finish", 409, "invalid-transition")


class NoSecretsTest(AuditCase):

    TOKEN = "lfa_SECRET-operator-Zq8xW3vK1mP0nL7"
    VIEWER = "lfa_SECRET-viewer-Hc4Rt9Yb2Nd6Ja5"
    WRONG = "lfa_SECRET-unknown-Ue1Fo3Wi8Pq2Xz9"

    def test_tokens_never_written(self):
        tokens = os.path.join(self.tmp, "tokens")
        with open(tokens, "w") as f:
            for name, role, tok in (("ci-bot", "operator", self.TOKEN),
                                    ("watcher", "viewer", self.VIEWER)):
                f.write("%s %s %s\n" % (name, role, hashlib.sha256(tok.encode()).hexdigest()))
        os.chmod(tokens, 0o600)
        a = self.agent("--tokens=%s" % tokens)
        c = a.client()

        def auth(tok):
            return {"Authorization": "Bearer " + tok}

        def audits():
            r = c.get("/v1/history?kind=audit", headers=auth(self.VIEWER))
            self.assertEqual(r.status, 200, r)
            return r.json["records"]

        op = {"method": "token", "name": "ci-bot", "role": "operator"}
        r = c.post("/v1/prepare", headers=auth(self.TOKEN), json_body={"operation_id": "t-1"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["operation"]["requested_by"], "token:ci-bot")
        self.assertEqual(c.post("/v1/finish", headers=auth(self.TOKEN)).status, 409)
        # Refused by authentication and authorization (server.c audits those).
        self.assertEqual(c.post("/v1/cancel", headers=auth(self.WRONG)).status, 401)
        self.assertEqual(c.post("/v1/cancel", headers=auth(self.VIEWER)).status, 403)
        self.assertEqual(c.post("/v1/cancel", headers=auth(self.TOKEN)).status, 200)
        recs = audits()
        self.assertEqual([(x["identity"], x["action"], x["result"]["status"],
                           x["result"]["code"]) for x in recs],
                         [(op, "prepare", 200, "ok"), (op, "finish", 409, "invalid-transition"),
                          ({"method": "none", "name": None, "role": "none"}, "cancel", 401,
                           "invalid-credentials"),
                          ({"method": "token", "name": "watcher", "role": "viewer"}, "cancel",
                           403, "forbidden"),
                          (op, "cancel", 200, "ok")])
        self.assertEqual(recs[0]["operation_id"], "t-1")
        a.stop()
        for secret in (self.TOKEN, self.VIEWER, self.WRONG):
            for root, _, files in os.walk(a.state_dir):
                for name in files:
                    # Regular files: a Unix socket (sessions.sock) holds no bytes to read.
                    if not stat.S_ISREG(os.lstat(os.path.join(root, name)).st_mode):
                        continue
                    with open(os.path.join(root, name), "rb") as f:
                        self.assertNotIn(secret.encode(), f.read(), os.path.join(root, name))
            self.assertNotIn(secret, a.log())
            self.assertNotIn(secret.encode(), a.stdout())
        self.assertIn(b"ci-bot", open(audit_path(a), "rb").read())


if __name__ == "__main__":
    harness.main()
