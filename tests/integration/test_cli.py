#!/usr/bin/env python3
"""test_cli.py: luofleetctl (docs/cli.md) against real simulated agents and a fake controller.

- Host commands against sim agents (talking to them directly): the state table's exact
  content, --output=json equal to the agent's document, stage with a digest computed from the
  local file, the prepare/cancel/reboot --wait/finish cycle with exact exit codes and lines,
  a 409 refusal (exit 1, "luofleetctl: HOST: 409 invalid-transition: <detail>"), If-Match
  (412), an unreachable host (exit 6), several hosts with one failing (exit 1, all attempted),
  history, state --watch, usage errors (exit 2), host names resolved by the controller.
- Rollout commands against a FAKE controller written here (http.server on 127.0.0.1
  answering canned documents shaped as rollout/controller.h describes, recording every
  request): the exact JSON `rollout create` sends for a spec file merged with flags, the plan
  and status tables, hosts, pause/resume/abort, watch over canned SSE streams ending in
  completed (0), paused (4), aborted (5) and failed (3), resuming with Last-Event-ID, the live
  display on a pseudo-terminal.
- Configuration precedence (config file < environment < flags), the config file's errors,
  the bearer token's sources and the refusal of a world-readable token file.
The real controller end to end is tested elsewhere (tests/fleet/)."""

import http.server
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import AgentTestCase, make_bzimage, make_file, wait_for  # noqa: E402

setUpModule, tearDownModule = harness.module_fixtures(__file__)

SCALE = float(os.environ.get("LUOFLEET_TEST_TIMEOUT_SCALE", "1") or "1")


def ctl_path():
    p = os.environ.get("LUOFLEET_CTL")
    if p:
        return p
    return os.path.join(os.path.dirname(harness.agent_path()), "luofleetctl")


def ctl_argv(*args):
    """The command line; LUOFLEET_CTL_WRAPPER (e.g. "valgrind --quiet --log-file=...") is put in
    front when set, to run the whole suite under a checker."""
    wrapper = os.environ.get("LUOFLEET_CTL_WRAPPER", "").split()
    return wrapper + [ctl_path()] + list(args)


def table(rows):
    """The exact text luofleetctl prints for rows (the first the headers): columns padded to
    the widest cell, two spaces apart, the last one unpadded."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = ""
    for r in rows:
        cells = [c.ljust(widths[i]) for i, c in enumerate(r[:-1])] + [r[-1]]
        out += "  ".join(cells) + "\n"
    return out


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class CtlMixin:
    """Runs luofleetctl with a clean environment: no LUOFLEET_* variables from outside, HOME
    and XDG_CONFIG_HOME in the test's directory (so no config file is found by accident)."""

    def ctl_env(self, extra=None):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("LUOFLEET") or k in ("LUOFLEET_TEST_TMP",)}
        home = os.path.join(self.tmp, "home")
        os.makedirs(home, exist_ok=True)
        env["HOME"] = home
        env["XDG_CONFIG_HOME"] = os.path.join(home, ".config")
        env.pop("LUOFLEETCTL_CONFIG", None)
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=1"
        if extra:
            env.update(extra)
        return env

    def ctl(self, *args, env=None, input=None, timeout=30, cwd=None):
        p = subprocess.run(ctl_argv(*args), input=input, capture_output=True,
                           env=self.ctl_env(env), timeout=timeout * SCALE, cwd=cwd or self.tmp)
        return p.returncode, p.stdout.decode(), p.stderr.decode()

    def ok(self, *args, **kw):
        rc, out, err = self.ctl(*args, **kw)
        self.assertEqual(rc, 0, "luofleetctl %s: rc %d, stderr:\n%s" % (args, rc, err))
        self.assertEqual(err, "")
        return out


def state_row(host, d):
    staged = "-"
    if d["staged"]:
        rel = (d["staged"].get("expected") or {}).get("release")
        staged = rel or os.path.basename(d["staged"]["kernel"]["path"])
        if d["staged"]["loaded"] is False:
            staged += " (not loaded)"
    op = "-"
    if d["operation"]:
        op = "%s/%s" % (d["operation"]["action"], d["operation"]["status"])
    return [host, d["state"], str(d["index"]), d["kernel"], staged, op, d["boot_id"][:8]]


STATE_HEADERS = ["HOST", "STATE", "INDEX", "KERNEL", "STAGED", "OPERATION", "BOOT"]


class HostCommandTest(CtlMixin, AgentTestCase):

    def hostarg(self, a):
        return "127.0.0.1:%d" % a.port

    def doc(self, a):
        r = a.direct().get("/v1/state")
        self.assertEqual(r.status, 200)
        return r.json

    def test_state_table_and_json(self):
        a = self.agent()
        b = self.agent()
        ha, hb = self.hostarg(a), "http://127.0.0.1:%d" % b.port
        out = self.ok("state", ha, hb)
        self.assertEqual(out, table([STATE_HEADERS, state_row(ha, self.doc(a)),
                                     state_row(hb, self.doc(b))]))
        # json: each agent's document, one per line, in argument order
        out = self.ok("state", ha, hb, "--output=json")
        lines = out.splitlines()
        self.assertEqual(len(lines), 2)
        self.assertEqual(json.loads(lines[0]), self.doc(a))
        self.assertEqual(json.loads(lines[1]), self.doc(b))
        # global options before the command work as well
        out = self.ok("--output=json", "state", ha)
        self.assertEqual(json.loads(out), self.doc(a))

    def test_stage_computed_digest(self):
        a = self.agent()
        h = self.hostarg(a)
        path, sha = make_bzimage(self.tmp, "vmlinuz-next", "6.99.1-next")
        # a relative PATH to a local file: made absolute, digest computed here
        out = self.ok("stage", h, "--kernel=vmlinuz-next", "--cmdline=quiet ro",
                      "--operation-id=st1", "--reason=cli test", cwd=self.tmp)
        d = self.doc(a)
        self.assertEqual(d["staged"]["kernel"]["sha256"], sha)
        self.assertEqual(d["staged"]["kernel"]["path"], os.path.realpath(path))
        self.assertEqual(d["staged"]["cmdline"], "quiet ro")
        self.assertEqual((d["operation"]["id"], d["operation"]["reason"]), ("st1", "cli test"))
        self.assertEqual(out, table([STATE_HEADERS, state_row(h, d)]))
        self.assertEqual(state_row(h, d)[4], "6.99.1-next")
        # a wrong digest given explicitly is the agent's refusal: exit 1 and its problem
        rc, out, err = self.ctl("stage", h, "--kernel=" + path, "--kernel-sha256=" + "0" * 64)
        self.assertEqual(rc, 1, err)
        self.assertRegex(err, r"^luofleetctl: %s: \d{3} [a-z-]+: .+\n$" % re.escape(h))
        # usage errors: a URL or a missing file without a digest, a bad digest, no --kernel
        for args, msg in (
                (["--kernel=https://127.0.0.1:1/vmlinuz"], "--kernel-sha256 is needed"),
                (["--kernel=/nonexistent/vmlinuz"], "No such file or directory"),
                (["--kernel=" + path, "--kernel-sha256=abc"], "expected 64 hex digits"),
                (["--cmdline=x"], "--kernel=URL|PATH is required"),
                (["--kernel=" + path, "--signature=/nonexistent"], "signature file")):
            rc, out, err = self.ctl("stage", h, *args)
            self.assertEqual(rc, 2, (args, err))
            self.assertIn(msg, err)
            self.assertEqual(out, "")

    def test_stage_signature_file(self):
        a = self.agent()
        h = self.hostarg(a)
        path, sha = make_bzimage(self.tmp, "vmlinuz-sig", "6.99.2")
        sig = os.path.join(self.tmp, "sig.json")
        with open(sig, "w") as f:
            json.dump({"key_id": "nokey", "ed25519": "A" * 86 + "=="}, f)
        # The agent has no trusted keys: it refuses a signature it cannot check, or ignores
        # it; either way the CLI sent it and reports the answer with the right exit code.
        rc, out, err = self.ctl("stage", h, "--kernel=" + path, "--signature=" + sig)
        d = self.doc(a)
        if rc == 0:
            self.assertEqual(d["staged"]["kernel"]["sha256"], sha)
        else:
            self.assertEqual(rc, 1, err)
            self.assertRegex(err, r"^luofleetctl: %s: \d{3} [a-z-]+: " % re.escape(h))

    def test_cycle(self):
        a = self.agent()
        h = self.hostarg(a)
        path, _ = make_bzimage(self.tmp, "vmlinuz-cycle", "6.99.3-cycle")
        self.ok("stage", h, "--kernel=" + path, "--release=6.99.3-cycle")

        out = self.ok("prepare", h, "--lease=120", "--operation-id=cli-p1", "--reason=try")
        d = self.doc(a)
        self.assertEqual(d["state"], "prepared")
        self.assertEqual((d["operation"]["id"], d["operation"]["reason"]), ("cli-p1", "try"))
        self.assertIsNotNone(d["lease"])
        self.assertEqual(out, table([STATE_HEADERS, state_row(h, d)]))

        # a repeated operation id answers the first result: exit 0, nothing new happens
        self.ok("prepare", h, "--operation-id=cli-p1")
        self.assertEqual(self.doc(a)["index"], d["index"])

        # 409: exit 1 and the problem line, exactly
        problem = a.direct().post("/v1/prepare", json_body={}).json
        rc, out, err = self.ctl("prepare", h)
        self.assertEqual((rc, out), (1, ""))
        # ... with the API's hint of what the state allows now
        self.assertEqual(problem["allowed_actions"], ["reboot", "cancel"])
        self.assertEqual(err, "luofleetctl: %s: 409 invalid-transition: %s (allowed now: "
                         "reboot, cancel)\n" % (h, problem["detail"]))

        # If-Match with a stale index: 412, exit 1
        rc, out, err = self.ctl("cancel", h, '--if-match="1"')
        self.assertEqual(rc, 1)
        self.assertRegex(err, r"^luofleetctl: %s: 412 precondition-failed: .+\n$" % re.escape(h))
        self.assertEqual(self.doc(a)["state"], "prepared")

        out = self.ok("cancel", h, '--if-match="%d"' % self.doc(a)["index"])
        d = self.doc(a)
        self.assertEqual(d["state"], "normal")
        self.assertEqual(out, table([STATE_HEADERS, state_row(h, d)]))

        self.ok("prepare", h)
        before = self.doc(a)
        out = self.ok("reboot", h, "--wait", "--reason=cli reboot", timeout=60)
        after = self.doc(a)
        self.assertNotEqual(after["boot_id"], before["boot_id"])
        self.assertEqual(after["state"], "updated")
        m = re.fullmatch(r"(\S+): rebooted into (\S+) \(boot ([0-9a-f]{8}) -> ([0-9a-f]{8})\): "
                         r"blackout (\d+)ms \(agent\), no answer here for (\d+)ms; "
                         r"state updated\n", out)
        self.assertIsNotNone(m, out)
        self.assertEqual(m.group(1), h)
        self.assertEqual(m.group(2), after["kernel"])
        self.assertEqual((m.group(3), m.group(4)), (before["boot_id"][:8], after["boot_id"][:8]))
        self.assertEqual(int(m.group(5)), after["last_update"]["blackout_ms"])
        self.assertEqual(after["operation"]["reason"], "cli reboot")

        # finish: exit 0, normal; then a second finish is refused
        out = self.ok("finish", h)
        d = self.doc(a)
        self.assertEqual(d["state"], "normal")
        self.assertEqual(out, table([STATE_HEADERS, state_row(h, d)]))
        rc, _, err = self.ctl("finish", h, "--force")
        self.assertEqual(rc, 1)
        self.assertIn(": 409 invalid-transition: ", err)
        # rollback from normal: refused as well
        rc, _, err = self.ctl("rollback", h)
        self.assertEqual(rc, 1)
        self.assertRegex(err, r"^luofleetctl: %s: 409 " % re.escape(h))

    def test_converge(self):
        a = self.agent()
        h = self.hostarg(a)
        rel = "6.99.5-conv"
        path, sha = make_bzimage(self.tmp, "vmlinuz-conv", rel)
        before = self.doc(a)
        prefix = "converge:%s:%s" % (before["boot_id"][:8], sha[:12])
        # Stage, prepare, reboot; then exit 7: under way (the release from the file's header).
        rc, out, err = self.ctl("converge", h, "--kernel=" + path, "--lease=300", timeout=60)
        self.assertEqual((rc, err), (7, ""), out)
        self.assertEqual(out, "%s: staged %s (%s)\n%s: prepared\n%s: reboot into %s requested\n"
                         "%s: under way: run converge again once the host is back\n"
                         % (h, rel, sha[:12], h, h, rel, h))
        ops = []
        for r in a.direct().all_records():
            if r.get("kind") == "operation" and r["operation"]["id"] not in ops:
                ops.append(r["operation"]["id"])
        self.assertEqual(ops, [prefix + ":stage", prefix + ":prepare", prefix + ":reboot"])
        # The host comes back in its new boot (wait_ready polls through the simulated kexec's
        # blackout): converge finishes it, then says converged.
        wait_for(lambda: a.wait_ready(timeout=30)["boot_id"] != before["boot_id"] or None,
                 timeout=30, what="the simulated kexec")
        after = a.wait_ready(timeout=30)
        self.assertEqual(after["state"], "updated")
        self.assertEqual(after["kernel"], rel)
        out = self.ok("converge", h, "--kernel=" + path, timeout=60)
        self.assertEqual(out, "%s: finished the update to %s\n%s: runs %s, state normal: "
                         "converged\n" % (h, rel, h, rel))
        d = self.doc(a)
        self.assertEqual((d["state"], d["kernel"], d["operation"]["id"]),
                         ("normal", rel, "converge:%s:%s:finish" % (after["boot_id"][:8], sha[:12])))
        # Converged: a third run sends nothing.
        out = self.ok("converge", h, "--kernel=" + path, "--release=" + rel)
        self.assertEqual(out, "%s: runs %s, state normal: converged\n" % (h, rel))
        self.assertEqual(self.doc(a)["index"], d["index"])

    def test_converge_waits_and_refuses(self):
        a = self.agent()
        h = self.hostarg(a)
        path, sha = make_bzimage(self.tmp, "vmlinuz-cw", "6.99.6-cw")
        other, _ = make_bzimage(self.tmp, "vmlinuz-other", "6.99.7-other")
        # Prepared for another kernel by someone else: left alone, exit 1.
        self.ok("stage", h, "--kernel=" + other)
        self.ok("prepare", h, "--operation-id=theirs")
        rc, out, err = self.ctl("converge", h, "--kernel=" + path)
        self.assertEqual((rc, out), (1, ""))
        self.assertEqual(err, "luofleetctl: %s: prepared for another kernel (staged %s, operation "
                         "theirs): cancel it first (luofleetctl cancel %s)\n"
                         % (h, self.doc(a)["staged"]["kernel"]["sha256"][:12], h))
        self.assertEqual(self.doc(a)["state"], "prepared")
        self.ok("cancel", h)
        # --wait: the whole way in one run.
        rc, out, err = self.ctl("converge", h, "--kernel=" + path, "--wait", timeout=90)
        self.assertEqual((rc, err), (0, ""), out)
        lines = out.splitlines()
        self.assertEqual(lines[:3], ["%s: staged 6.99.6-cw (%s)" % (h, sha[:12]),
                                     "%s: prepared" % h,
                                     "%s: reboot into 6.99.6-cw requested" % h])
        self.assertRegex(lines[3], r"^%s: rebooted into 6\.99\.6-cw " % re.escape(h))
        self.assertEqual(lines[4:], ["%s: finished the update to 6.99.6-cw" % h,
                                     "%s: runs 6.99.6-cw, state normal: converged" % h])
        d = self.doc(a)
        self.assertEqual((d["state"], d["kernel"]), ("normal", "6.99.6-cw"))
        # Usage errors: exit 2, nothing sent.
        idx = d["index"]
        for args, msg in [
                ([h], "--kernel=URL|PATH is required"),
                ([h, h, "--kernel=" + path], "one HOST at a time (2 given)"),
                ([h, "--kernel=https://127.0.0.1:1/vmlinuz",
                  "--kernel-sha256=" + "0" * 64], "--release is required with a URL"),
                ([h, "--kernel=" + path, "--wait-timeout=5m"], "--wait-timeout without --wait"),
                ([h, "--kernel=" + path, "--lease=x"], "--lease: expected seconds"),
                ([h, "--kernel=" + os.path.join(self.tmp, "missing")], "missing")]:
            with self.subTest(args=args):
                rc, out, err = self.ctl("converge", *args)
                self.assertEqual((rc, out), (2, ""), err)
                self.assertIn(msg, err)
        self.assertEqual(self.doc(a)["index"], idx)

    def test_reboot_json(self):
        a = self.agent()
        h = self.hostarg(a)
        path, _ = make_bzimage(self.tmp, "vmlinuz-j", "6.99.4")
        self.ok("stage", h, "--kernel=" + path)
        self.ok("prepare", h)
        out = self.ok("reboot", h, "--output=json")
        d = json.loads(out)
        self.assertEqual((d["operation"]["action"], d["operation"]["status"]),
                         ("reboot", "running"))
        a.wait_ready(after_index=d["index"], timeout=20 * SCALE)
        wait_for(lambda: self.doc(a)["state"] == "updated", timeout=10)
        out = self.ok("finish", h, "--output=json")
        self.assertEqual(json.loads(out)["state"], "normal")

    def test_unreachable_and_partial(self):
        a = self.agent()
        h = self.hostarg(a)
        dead = "127.0.0.1:%d" % closed_port()
        rc, out, err = self.ctl("state", dead)
        self.assertEqual((rc, out), (6, ""))
        self.assertTrue(err.startswith("luofleetctl: %s: could not connect: " % dead), err)
        self.assertEqual(err.count("\n"), 1)
        rc, out, err = self.ctl("prepare", dead, dead)
        self.assertEqual(rc, 6)
        self.assertEqual(err.count("could not connect"), 2)
        # one good host, one dead: exit 1, the good one done and printed
        rc, out, err = self.ctl("prepare", dead, h)
        self.assertEqual(rc, 1)
        d = self.doc(a)
        self.assertEqual(d["state"], "prepared")
        self.assertEqual(out, table([STATE_HEADERS, state_row(h, d)]))
        self.assertIn("luofleetctl: %s: could not connect" % dead, err)
        # refused on one (409), fine on the other (cancel): exit 1, both attempted
        b = self.agent()
        hb = self.hostarg(b)
        rc, out, err = self.ctl("cancel", hb, h)
        self.assertEqual(rc, 1)
        self.assertEqual(self.doc(a)["state"], "normal")
        self.assertRegex(err, r"^luofleetctl: %s: 409 invalid-transition: .+\n$" % re.escape(hb))

    def test_usage_errors(self):
        a = self.agent()
        h = self.hostarg(a)
        cases = [
            ([], "Usage: luofleetctl"),
            (["bogus"], "unknown command 'bogus'"),
            (["state"], "which host?"),
            (["state", h, "--bogus"], "unknown option '--bogus'"),
            (["state", "not a host"], "is not a host"),
            (["state", "web1"], "needs a controller"),
            (["state", "h:99999"], "is not a host"),
            (["prepare", h, "--lease=abc"], "--lease"),
            (["prepare", h, "--force"], "for finish only"),
            (["cancel", h, "--wait"], "for reboot or rollback only"),
            (["state", h, "--output=xml"], "expected table or json"),
            (["state", h, "--timeout=soon"], "timeout 'soon'"),
            (["history", h, h], "exactly one HOST"),
            (["history", h, "--limit=0"], "--limit"),
            (["state", h, "--cert=/x.pem"], "needs its key"),
            (["--controller=ftp://x", "state", h], "expected an http:// or https:// URL"),
            (["stage", h, "--kernel=/no/such/vmlinuz"],
             "--kernel=/no/such/vmlinuz: No such file or directory (a file that is on the host "
             "only needs --kernel-sha256)"),
            (["stage", h, "--kernel=/no/such/vmlinuz", "--kernel-sha256=12"], "64 hex digits"),
        ]
        for args, msg in cases:
            rc, out, err = self.ctl(*args)
            self.assertEqual(rc, 2, (args, out, err))
            self.assertIn(msg, err, args)
            self.assertEqual(out, "", args)
        # help: exit 0 on stdout, also per command
        for args in (["--help"], ["state", "--help"], ["--help", "rollout"],
                     ["rollout", "create", "--help"], ["history", "-h"]):
            rc, out, err = self.ctl(*args)
            self.assertEqual((rc, err), (0, ""), args)
            self.assertIn("Usage: luofleetctl", out)
        out = self.ok("--help")
        for code in range(7):
            self.assertRegex(out, r"\n  %d  " % code)
        self.assertIn("luofleetctl sign", out)
        self.assertRegex(self.ok("--version"), r"^luofleetctl \d+\.\d+\.\d+\n$")
        self.assertEqual(self.doc(a)["index"], 1)  # nothing reached the agent

    def test_history(self):
        a = self.agent()
        h = self.hostarg(a)
        self.ok("prepare", h, "--operation-id=hist-p")
        self.ok("cancel", h, "--operation-id=hist-c")
        out = self.ok("history", h, "--limit=3", "--output=json")
        self.assertEqual(json.loads(out), a.direct().get("/v1/history?limit=3").json)
        out = self.ok("history", h, "--kind=operation")
        page = a.direct().get("/v1/history?kind=operation").json
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["INDEX", "TIME", "KIND", "STATE", "DETAIL"])
        self.assertEqual(len(lines), 1 + len(page["records"]))
        last = page["records"][-1]
        self.assertEqual(lines[-1].split(), [str(last["index"]), last["time"], "operation",
                                             "normal", "cancel", "succeeded", "hist-c"])
        out = self.ok("history", h, "--kind=transition", "--limit=1")
        self.assertTrue(out.splitlines()[1].endswith("prepared -> normal (operation hist-c)"),
                        out)

    def test_state_watch(self):
        a = self.agent()
        h = self.hostarg(a)
        dead = "127.0.0.1:%d" % closed_port()
        p = subprocess.Popen(ctl_argv("state", "--watch", h, dead), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=self.ctl_env())
        try:
            first = p.stdout.readline().decode()
            self.assertRegex(first, r"^\S+Z %s normal index=1 kernel=\S+ staged=- "
                             r"operation=- boot=[0-9a-f]{8}\n$" % re.escape(h))
            a.direct().post("/v1/prepare", json_body={"operation_id": "watch-p"})
            seen = []
            while True:
                line = p.stdout.readline().decode()
                self.assertTrue(line, "watch ended early")
                seen.append(line)
                if " prepared " in line and "operation=prepare/succeeded" in line:
                    break
            idx = int(re.search(r"index=(\d+)", seen[-1]).group(1))
            self.assertEqual(idx, self.doc(a)["index"])
        finally:
            p.send_signal(signal.SIGINT)
            rc = p.wait(10 * SCALE)
            err = p.stderr.read().decode()
            p.stdout.close()
            p.stderr.close()
        self.assertEqual(rc, 0, err)
        # the dead host is reported once, not once per retry
        self.assertEqual(err.count("luofleetctl: %s: could not connect" % dead), 1, err)

    def test_name_resolved_by_controller(self):
        a = self.agent()
        fc = FakeController(self)
        fc.routes[("GET", "/v1/hosts/web1")] = (200, {"name": "web1", "url": a.base_url})
        fc.routes[("GET", "/v1/hosts/nope")] = (404, problem(404, "not-found",
                                                             "no host named nope"))
        out = self.ok("state", "web1", "--controller=" + fc.url)
        self.assertEqual(out, table([STATE_HEADERS, state_row("web1", self.doc(a))]))
        rc, out, err = self.ctl("state", "nope", "--controller=" + fc.url)
        self.assertEqual((rc, out), (1, ""))
        self.assertEqual(err, "luofleetctl: nope: 404 not-found: no host named nope\n")

    def test_token_never_in_clear_text_off_loopback(self):
        # A controller's operator points a name at a listener of theirs, over plain http: the
        # CLI's token does not go there. [::ffff:127.0.0.1] is loopback traffic, but not a
        # loopback literal, which is what the CLI trusts (as it does not trust 127.evil.example).
        evil = FakeController(self)
        evil.routes[("GET", "/v1/state")] = (401, problem(401, "authentication-required",
                                                          "a token, please"))
        port = int(evil.url.rsplit(":", 1)[1].split("/")[0])
        fc = FakeController(self)
        mapped = "http://[::ffff:127.0.0.1]:%d" % port
        fc.routes[("GET", "/v1/hosts/web2")] = (200, {"name": "web2", "url": mapped})
        env = {"LUOFLEET_TOKEN": "cli-secret-token"}
        rc, out, err = self.ctl("state", "web2", "--controller=" + fc.url, env=env)
        self.assertEqual((rc, out), (1, ""))
        self.assertIn("luofleetctl: not sending the token to %s/v1/state: plain http off "
                      "loopback (use https://)\n" % mapped, err)
        self.assertEqual([r["headers"].get("Authorization") for r in evil.requests], [None])
        # The controller on a loopback literal does get it (the control).
        self.assertEqual([r["headers"].get("Authorization") for r in fc.requests],
                         ["Bearer cli-secret-token"])


# ---------------------------------------------------------------------------------------------
# The fake controller

def workload_path():
    return os.path.join(os.path.dirname(harness.agent_path()), "luofleet-memfd-workload")


class SessionCommandTest(CtlMixin, AgentTestCase):
    """`session list|show` against sim agents: without workloads (exact output, a missing
    name, usage errors), and with the example workload (the table, one session, two owners
    with the same session name)."""

    def setUp(self):
        # First in, so last out: once the harness stopped the agents, a privileged helper that
        # still holds the workloads' sessions waits for the next agent (by design): end it.
        self.addCleanup(self._end_helpers)
        super().setUp()

    def _helpers(self):
        """Pids of the privileged helpers (luofleet-priv) of this test's agents."""
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open("/proc/%s/status" % d) as f:
                    st = f.read()
                if "Name:\tluofleet-priv\n" not in st or re.search(r"\nState:\t[ZX]", st):
                    continue  # not a helper, or one that has ended (a zombie)
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    if ("--state-dir=" + self.tmp + "/").encode() in f.read():
                        out.append(int(d))
            except OSError:
                pass
        return out

    def _end_helpers(self):
        left = self._helpers()
        for pid in left:
            os.kill(pid, signal.SIGTERM)
        try:
            wait_for(lambda: not self._helpers(), timeout=5, what="helpers to end")
        except AssertionError:
            for pid in self._helpers():
                os.kill(pid, signal.SIGKILL)

    def hostarg(self, a):
        return "127.0.0.1:%d" % a.port

    def sessions_doc(self, a):
        r = a.direct().get("/v1/sessions")
        self.assertEqual(r.status, 200, r)
        return r.json

    def test_list_without_workloads(self):
        a = self.agent()
        h = self.hostarg(a)
        self.assertEqual(self.ok("session", "list", h),
                         "sessions: 0, files: 0, bytes: 0 B, workloads: 0 connected\n")
        self.assertEqual(self.ok("session", "list", h, "--owner=1000"),
                         "sessions: 0, files: 0, bytes: 0 B, workloads: 0 connected\n")
        out = self.ok("session", "list", h, "--output=json")
        self.assertEqual(out.count("\n"), 1)
        self.assertEqual(json.loads(out), self.sessions_doc(a))
        # global options before the command too
        self.assertEqual(json.loads(self.ok("--output=json", "session", "list", h)),
                         self.sessions_doc(a))

    def test_show_missing(self):
        a = self.agent()
        h = self.hostarg(a)
        rc, out, err = self.ctl("session", "show", h, "vm9")
        self.assertEqual((rc, out, err), (1, "", "luofleetctl: %s: no session named 'vm9'\n" % h))
        rc, out, err = self.ctl("session", "show", h, "vm9", "--owner=1000", "--output=json")
        self.assertEqual((rc, out, err),
                         (1, "", "luofleetctl: %s: no session named 'vm9' owned by uid 1000\n"
                          % h))

    def test_usage_and_errors(self):
        a = self.agent()
        h = self.hostarg(a)
        for args, msg in (
                (["session"], "expected a subcommand: list or show"),
                (["session", "lst", h], "unknown subcommand 'lst' (list, show)"),
                (["session", "list"], "list: expected exactly one HOST"),
                (["session", "list", h, h], "list: expected exactly one HOST"),
                (["session", "show", h], "show: expected HOST NAME"),
                (["session", "show", h, "a", "b"], "show: expected HOST NAME"),
                (["session", "list", "h:0"], "is not a host"),
                (["session", "list", h, "--owner=abc"], "--owner: expected a uid"),
                (["session", "list", h, "--owner=4294967295"], "--owner: expected a uid"),
                (["session", "list", h, "--lease=3"], "unknown option '--lease=3'")):
            with self.subTest(args=args):
                rc, out, err = self.ctl(*args)
                self.assertEqual((rc, out), (2, ""), (args, err))
                self.assertTrue(err.startswith("luofleetctl session: "), err)
                self.assertIn(msg, err)
                self.assertTrue(err.endswith("Try 'luofleetctl session --help'.\n"), err)
        for args in (["session", "--help"], ["session", "list", "--help"], ["--help", "session"]):
            with self.subTest(args=args):
                out = self.ok(*args)
                self.assertTrue(out.startswith("Usage: luofleetctl session list HOST"), out)
        self.assertIn("  session list HOST ", self.ok("--help"))
        # an agent that does not answer: 6; one that refuses (an old agent: 404): 1
        rc, out, err = self.ctl("session", "list", "127.0.0.1:%d" % closed_port())
        self.assertEqual((rc, out), (6, ""), err)
        self.assertEqual(self.doc_index(a), 1)  # nothing reached the agent

    def doc_index(self, a):
        return a.direct().get("/v1/state").json["index"]

    def start_workload(self, a, name, session, mib, uid=None):
        """The example workload preserving one memfd of mib MiB, registered; stopped at the
        end of the test. As uid (root only) through setpriv."""
        argv = [workload_path(), "--socket=" + os.path.join(a.state_dir, "sessions.sock"),
                "--name=" + name, "--session=" + session, "--mib=%d" % mib, "preserve"]
        if uid is not None:
            argv = ["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups"] + argv
        log = open(os.path.join(self.tmp, name + ".out"), "wb")
        self.addCleanup(log.close)
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             cwd=self.tmp)

        def stop():
            if p.poll() is None:
                p.terminate()
            p.wait(10 * SCALE)
        self.addCleanup(stop)

        def preserved():
            self.assertIsNone(p.poll(), "workload %s exited" % name)
            return any(s["name"] == session and s["workload"] == name and s["fds"] == 1
                       for s in self.sessions_doc(a)["sessions"])
        wait_for(preserved, timeout=20, what="workload %s's session" % name)
        return p

    def test_with_workloads(self):
        if not os.path.exists(workload_path()):
            self.skipTest("%s is not built" % workload_path())
        # 0666: the socket stays root's as bound (its mode and group say who may connect);
        # a second owner (nobody) connects below.
        a = self.agent("--sessions-socket-mode=0666")
        h = self.hostarg(a)
        me = os.getuid()
        self.start_workload(a, "it-one", "vm1", 2)
        self.start_workload(a, "it-one-b", "disk", 1)
        doc = self.sessions_doc(a)
        rows = [["NAME", "OWNER", "WORKLOAD", "PHASE", "FDS", "BYTES"]]
        rows += [[s["name"], str(me), s["workload"], "outgoing", "1",
                  "2 MiB" if s["name"] == "vm1" else "1 MiB"] for s in doc["sessions"]]
        self.assertEqual(self.ok("session", "list", h), table(rows) +
                         "sessions: 2 (2 outgoing), files: 2, bytes: 3 MiB, "
                         "workloads: 2 connected (2 registered)\n")
        pid = [w["pid"] for w in doc["workloads"] if w["name"] == "it-one"][0]
        self.assertEqual(self.ok("session", "show", h, "vm1"),
                         "name:         vm1\n"
                         "kernel name:  lf:%d:vm1\n"
                         "owner:        uid %d\n"
                         "workload:     it-one (connected, pid %d, registered)\n"
                         "phase:        outgoing\n"
                         "files:        1, 2 MiB\n"
                         "\n" % (me, me, pid)
                         + table([["TOKEN", "KERNEL-TOKEN", "BYTES", "RETRIEVED"],
                                  ["1", "1", "2 MiB", "no"]]))
        vm1 = [s for s in self.sessions_doc(a)["sessions"] if s["name"] == "vm1"][0]
        self.assertEqual(json.loads(self.ok("session", "show", h, "vm1", "--output=json")), vm1)
        if os.geteuid() != 0:
            return  # a second owner needs another uid
        # nobody (65534) may connect: mode 0666, and the state directory is nobody's
        self.start_workload(a, "it-two", "vm1", 1, uid=65534)
        rc, out, err = self.ctl("session", "show", h, "vm1")
        self.assertEqual((rc, out), (2, ""), err)
        self.assertEqual(err, "luofleetctl session: %s: several owners have a session named "
                              "'vm1'; choose one with --owner=UID:\n"
                              "  --owner=0  (workload it-one, outgoing)\n"
                              "  --owner=65534  (workload it-two, outgoing)\n" % h)
        out = self.ok("session", "show", h, "vm1", "--owner=65534")
        self.assertIn("kernel name:  lf:65534:vm1\nowner:        uid 65534\n", out)
        self.assertIn("files:        1, 1 MiB\n", out)
        out = self.ok("session", "list", h, "--owner=65534")
        self.assertEqual(out.splitlines()[:2],
                         table([["NAME", "OWNER", "WORKLOAD", "PHASE", "FDS", "BYTES"],
                                ["vm1", "65534", "it-two", "outgoing", "1", "1 MiB"]])
                         .splitlines())


def problem(status, code, detail):
    return {"type": "urn:luofleet:problem:" + code, "title": code, "status": status,
            "detail": detail, "code": code}


class FakeController:
    """http.server on 127.0.0.1 answering canned documents. routes: (method, path without
    the query) -> (status, JSON document) or ("sse", [connection1 events, connection2...]),
    shaped as api/rollout.yaml says (lists as {"hosts": [...]}, {"rollouts": [...]}; streams
    starting with "retry: 2000")
    where each event is (id, type, data dict). Every request is recorded as a dict (method,
    path, query, headers, body (parsed JSON or None), prefix). URL prefixes in `prefixes` are
    stripped first (and recorded), to tell which configured controller URL was used."""

    def __init__(self, test, prefixes=()):
        self.routes = {}
        self.requests = []
        self.prefixes = prefixes
        self.sse_connections = {}
        fc = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *a):
                pass

            def handle_any(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                u = urllib.parse.urlsplit(self.path)
                path, prefix = u.path, None
                for p in fc.prefixes:
                    if path.startswith(p + "/"):
                        path, prefix = path[len(p):], p
                fc.requests.append({"method": self.command, "path": path, "query": u.query,
                                    "headers": dict(self.headers.items()),
                                    "body": json.loads(raw) if raw else None,
                                    "prefix": prefix})
                route = fc.routes.get((self.command, path))
                if route is None:
                    return self.send_json(404, problem(404, "not-found", "no route " + path))
                if route[0] == "sse":
                    return self.send_sse(path, route[1])
                if route[0] == "sleep":
                    time.sleep(route[1])
                    return self.send_json(200, {})
                self.send_json(route[0], route[1])

            def send_json(self, status, doc):
                body = json.dumps(doc).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/problem+json"
                                     if status >= 400 else "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (--timeout tests)

            def send_sse(self, path, connections):
                k = fc.sse_connections.get(path, 0)
                fc.sse_connections[path] = k + 1
                events = connections[min(k, len(connections) - 1)]
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(b"retry: 2000\n\n: keepalive\n\n")
                for seq, typ, data in events:
                    self.wfile.write(("id: %d\nevent: %s\ndata: %s\n\n"
                                      % (seq, typ, json.dumps(data))).encode())
                    self.wfile.flush()
                    time.sleep(0.01)

            do_GET = do_POST = do_PUT = do_DELETE = handle_any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        test.addCleanup(self.stop)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def last(self, method=None, path=None):
        for r in reversed(self.requests):
            if (method is None or r["method"] == method) and (path is None or r["path"] == path):
                return r
        raise AssertionError("no request %s %s in %r" % (method, path, self.requests))


HOSTS = [
    {"name": "web1", "url": "https://10.0.0.1:7470", "labels": {"zone": "a"},
     "source": "inventory", "reachable": True, "last_seen": "2026-11-25T10:00:00.000Z",
     "state": "normal", "index": 12, "boot_id": "b1", "kernel": "6.12.9-luo",
     "blackout_ms": 412, "rollout": "r-1", "phase": "done", "error": None},
    {"name": "web2", "url": "https://10.0.0.2:7470", "labels": {"zone": "a"},
     "source": "api", "reachable": False, "last_seen": None, "state": None, "index": None,
     "boot_id": None, "kernel": None, "blackout_ms": None, "rollout": None, "phase": None,
     "error": "connection refused"},
    {"name": "db-primary", "url": "http://127.0.0.1:7471", "labels": {"zone": "b"},
     "source": "inventory", "reachable": True, "last_seen": "2026-11-25T10:00:01.000Z",
     "state": "prepared", "index": 40, "boot_id": "b3", "kernel": "6.12.8-luo",
     "blackout_ms": None, "rollout": "r-1", "phase": "rebooting", "error": None},
]

COUNTERS = {"total": 3, "pending": 1, "in_progress": 1, "unavailable": 1, "done": 1,
            "failed": 0, "cancelled": 0, "skipped": 0, "already_current": 2}

PLAN = {"hosts": 3, "waves": [{"index": 0, "canary": True, "hosts": ["web1"]},
                              {"index": 1, "canary": False, "hosts": ["web2", "db-primary"]}],
        "expected_duration_s": 754.2, "skipped": [{"host": "old1", "reason": "unreachable"}]}


def rollout_doc(rid, status, reason=None, hosts=None):
    return {
        "id": rid,
        "spec": {"target": {"kernel": {"url": "https://dl/vmlinuz", "sha256": "a" * 64},
                            "release": "6.12.9-luo"}},
        "status": status, "created_at": "2026-11-25T10:00:00.000Z",
        "updated_at": "2026-11-25T10:05:00.000Z",
        "finished_at": None if status in ("running", "paused", "pending", "blocked")
        else "2026-11-25T10:06:00.000Z",
        "reason": reason, "current_wave": 1, "waves": 2, "counters": COUNTERS, "plan": PLAN,
        "hosts": hosts if hosts is not None else [
            {"name": "web1", "wave": 0, "phase": "done", "step": None, "attempts": 1,
             "boot_id_before": "x", "boot_id_after": "y", "kernel": "6.12.9-luo",
             "blackout_ms": 412, "started_at": None, "finished_at": None, "error": None},
            {"name": "web2", "wave": 1, "phase": "failed", "step": "prepare", "attempts": 3,
             "boot_id_before": "x", "boot_id_after": None, "kernel": "6.12.8-luo",
             "blackout_ms": None, "started_at": None, "finished_at": None,
             "error": {"code": "kernel-error", "detail": "prepare failed: EBUSY"},
             "now": {"reachable": True, "state": "normal", "kernel": "6.12.8-luo",
                     "target_staged": True}},
            {"name": "db-primary", "wave": 1, "phase": "rebooting", "step": "reboot",
             "attempts": 1, "boot_id_before": "x", "boot_id_after": None, "kernel": None,
             "blackout_ms": None, "started_at": None, "finished_at": None, "error": None}]}


def events_for(rid, final_status, reason=None):
    t = "2026-11-25T10:00:0%d.000Z"
    ev = [
        (1, "rollout-created", {"seq": 1, "time": t % 0, "rollout": rid,
                                "type": "rollout-created"}),
        (2, "rollout-status", {"seq": 2, "time": t % 1, "rollout": rid, "type": "rollout-status",
                               "status": "running"}),
        (3, "wave-started", {"seq": 3, "time": t % 2, "rollout": rid, "type": "wave-started",
                             "wave": 0}),
        (4, "host-action", {"seq": 4, "time": t % 3, "rollout": rid, "type": "host-action",
                            "host": "web1", "detail": "reboot", "wave": 0}),
        (5, "host-phase", {"seq": 5, "time": t % 4, "rollout": rid, "type": "host-phase",
                           "host": "web1", "phase": "done", "blackout_ms": 412, "wave": 0}),
        (6, "rollout-status", {"seq": 6, "time": t % 5, "rollout": rid,
                               "type": "rollout-status", "status": final_status}),
    ]
    if reason:
        ev[-1][2]["detail"] = reason
    return ev


class RolloutCommandTest(CtlMixin, AgentTestCase):

    def setUp(self):
        super().setUp()
        self.fc = FakeController(self)
        self.env = {"LUOFLEET_CONTROLLER": self.fc.url}

    def test_hosts(self):
        self.fc.routes[("GET", "/v1/hosts")] = (200, {"hosts": HOSTS})
        out = self.ok("hosts", env=self.env)
        self.assertEqual(out, table([
            ["NAME", "URL", "STATE", "KERNEL", "BLACKOUT", "REACHABLE", "ROLLOUT/PHASE"],
            ["web1", "https://10.0.0.1:7470", "normal", "6.12.9-luo", "412ms", "yes",
             "r-1/done"],
            ["web2", "https://10.0.0.2:7470", "-", "-", "-", "no", "-"],
            ["db-primary", "http://127.0.0.1:7471", "prepared", "6.12.8-luo", "-", "yes",
             "r-1/rebooting"]]))
        self.assertEqual(self.fc.last()["query"], "")
        out = self.ok("hosts", "--selector=zone=a", "--selector=rack=r 1", "--output=json",
                      env=self.env)
        self.assertEqual(json.loads(out), {"hosts": HOSTS})
        q = urllib.parse.parse_qs(self.fc.last()["query"])
        self.assertEqual(q, {"selector": ["zone=a,rack=r 1"]})
        # tolerated: a bare array (api/rollout.yaml answers {"hosts": [...]})
        self.fc.routes[("GET", "/v1/hosts")] = (200, HOSTS[:1])
        self.assertEqual(self.ok("hosts", env=self.env).splitlines()[1].split()[0], "web1")
        rc, out, err = self.ctl("hosts", "--selector=zone", env=self.env)
        self.assertEqual(rc, 2)
        rc, out, err = self.ctl("hosts")
        self.assertEqual(rc, 2)
        self.assertIn("no controller configured", err)

    def test_create_merges_file_and_flags(self):
        self.fc.routes[("POST", "/v1/rollouts")] = (201, rollout_doc("r-test", "pending"))
        spec = {"target": {"kernel": {"url": "https://dl/old", "sha256": "a" * 64},
                           "cmdline": "quiet", "release": "6.1"},
                "selector": {"group": "g1", "zone": "x"},
                "strategy": {"batch": "10%", "soak": "1m", "mode": "rolling"},
                "timeouts": {"reboot": "5m"},
                "windows": [{"start": "01:00", "end": "02:00"}],
                "dry_run": True}
        f = os.path.join(self.tmp, "spec.json")
        with open(f, "w") as fp:
            json.dump(spec, fp)
        out = self.ok("rollout", "create", "-f", f, "--kernel-sha256=" + "b" * 64,
                      "--cmdline=console=ttyS0", "--selector=zone=z1", "--selector=rack=r7",
                      "--canary=2", "--batch=25%", "--max-unavailable=1", "--max-failures=10%",
                      "--soak=30s", "--mode=two-phase", "--lease=120",
                      "--window=mon-fri 02:00-05:00 Europe/Berlin", "--window=sat,sun 22:00-06:00",
                      "--auto-rollback", "--id=r-test", "--hosts=web1,web2", env=self.env)
        self.assertEqual(out, "r-test\n")
        req = self.fc.last("POST", "/v1/rollouts")
        self.assertEqual(req["headers"].get("Content-Type"), "application/json")
        self.assertEqual(req["body"], {
            "id": "r-test",
            "target": {"kernel": {"url": "https://dl/old", "sha256": "b" * 64},
                       "cmdline": "console=ttyS0", "release": "6.1"},
            "selector": {"group": "g1", "zone": "z1", "rack": "r7"},
            "hosts": ["web1", "web2"],
            "strategy": {"mode": "two-phase", "canary": 2, "batch": "25%",
                         "max_unavailable": 1, "max_failures": "10%", "soak": "30s"},
            "timeouts": {"reboot": "5m"},
            "lease_seconds": 120,
            "windows": [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "02:00",
                         "end": "05:00", "time_zone": "Europe/Berlin"},
                        {"days": ["sat", "sun"], "start": "22:00", "end": "06:00"}],
            "auto_rollback": True})
        # spec from stdin, a path replacing the file's url, json output
        out = self.ok("rollout", "create", "-f", "-", "--kernel-url=/boot/vmlinuz-new",
                      "--output=json", env=self.env, input=json.dumps(spec).encode())
        self.assertEqual(json.loads(out), rollout_doc("r-test", "pending"))
        body = self.fc.last("POST", "/v1/rollouts")["body"]
        self.assertEqual(body["target"]["kernel"], {"path": "/boot/vmlinuz-new",
                                                    "sha256": "a" * 64})
        self.assertNotIn("dry_run", body)
        # flags only
        self.ok("rollout", "create", "--kernel-url=https://dl/k", "--kernel-sha256=" + "c" * 64,
                "--initrd-url=https://dl/i", "--initrd-sha256=" + "d" * 64, "--window=03:00-04:00",
                env=self.env)
        self.assertEqual(self.fc.last("POST", "/v1/rollouts")["body"], {
            "target": {"kernel": {"url": "https://dl/k", "sha256": "c" * 64},
                       "initrd": {"url": "https://dl/i", "sha256": "d" * 64}},
            "windows": [{"start": "03:00", "end": "04:00"}]})

    def test_retry(self):
        old = rollout_doc("r-1", "completed")
        old["spec"].update({"id": "r-1", "hosts": ["web1", "web2"], "auto_rollback": True})
        self.fc.routes[("GET", "/v1/rollouts/r-1")] = (200, old)
        self.fc.routes[("POST", "/v1/rollouts")] = (201, rollout_doc("r-2", "pending"))
        out = self.ok("rollout", "retry", "r-1", "--batch=1", "--force", env=self.env)
        self.assertEqual(out, "r-2\n")
        self.assertEqual(self.fc.last("POST", "/v1/rollouts")["body"], {
            "target": {"kernel": {"url": "https://dl/vmlinuz", "sha256": "a" * 64},
                       "release": "6.12.9-luo"},
            "auto_rollback": True, "only_failed_of": "r-1", "strategy": {"batch": 1},
            "force": True})
        n = len(self.fc.requests)
        for args, msg in (([], "which rollout? (ID)"),
                          (["r-1", "-f", "/dev/null"], "the spec is rollout r-1's"),
                          (["r-1", "r-2"], "unexpected argument 'r-2'")):
            rc, out, err = self.ctl("rollout", "retry", *args, env=self.env)
            self.assertEqual((rc, out), (2, ""), (args, err))
            self.assertIn(msg, err, args)
        self.assertEqual(len(self.fc.requests), n)
        # An unknown rollout: the controller's 404, exit 1, nothing created.
        self.fc.routes[("GET", "/v1/rollouts/r-9")] = (404, problem(404, "not-found", "no r-9"))
        rc, out, err = self.ctl("rollout", "retry", "r-9", env=self.env)
        self.assertEqual((rc, out), (1, ""), err)
        self.assertIn("404 not-found: no r-9", err)
        self.assertEqual([r for r in self.fc.requests[n:] if r["method"] == "POST"], [])

    def test_create_refused_and_usage(self):
        n = len(self.fc.requests)
        for args, msg in (
                ([], "no kernel"),
                (["--kernel-url=https://k", "--batch=abc"], "--batch"),
                (["--kernel-url=https://k", "--batch=101%"], "--batch=101%: at most 100%"),
                (["--kernel-url=https://k", "--canary=2000000"], "--canary=2000000: at most"),
                (["--kernel-url=https://k", "--soak=5 minutes"], "--soak"),
                (["--kernel-url=https://k", "--mode=yolo"], "--mode"),
                (["--kernel-url=https://k", "--window=mon-xyz 02:00-03:00"], "--window"),
                (["--kernel-url=https://k", "--window=02:00-25:00"], "--window"),
                (["--kernel-url=relative/path"], "absolute path"),
                (["--kernel-url=https://k", "--kernel-sha256=12"], "64 hex digits"),
                (["-f", "/nonexistent.json"], "spec file"),
                (["--kernel-url=https://k", "extra"], "unexpected argument")):
            rc, out, err = self.ctl("rollout", "create", *args, env=self.env)
            self.assertEqual(rc, 2, (args, err))
            self.assertIn(msg, err, args)
        self.assertEqual(len(self.fc.requests), n)  # nothing was sent
        self.fc.routes[("POST", "/v1/rollouts")] = (
            422, dict(problem(422, "invalid-field", "strategy.batch: must be at least 1"),
                      field="strategy.batch"))
        rc, out, err = self.ctl("rollout", "create", "--kernel-url=https://k",
                                "--kernel-sha256=" + "e" * 64, env=self.env)
        self.assertEqual((rc, out), (1, ""))
        self.assertEqual(err, "luofleetctl: %s: 422 invalid-field: strategy.batch: must be at "
                         "least 1\n" % self.fc.url)

    def test_plan(self):
        self.fc.routes[("POST", "/v1/rollouts")] = (200, PLAN)
        out = self.ok("rollout", "plan", "--kernel-url=https://dl/k",
                      "--kernel-sha256=" + "c" * 64, "--selector=zone=a", env=self.env)
        self.assertEqual(self.fc.last()["body"], {
            "target": {"kernel": {"url": "https://dl/k", "sha256": "c" * 64}},
            "selector": {"zone": "a"}, "dry_run": True})
        self.assertEqual(out, table([["WAVE", "CANARY", "HOSTS", "NAMES"],
                                     ["1", "yes", "1", "web1"],
                                     ["2", "no", "2", "web2,db-primary"]])
                         + "skipped: old1 (unreachable)\n"
                         + "3 hosts in 2 waves, expected duration 12m34s\n")
        out = self.ok("rollout", "plan", "--kernel-url=https://dl/k", "--output=json",
                      env=self.env)
        self.assertEqual(json.loads(out), PLAN)

    def test_status(self):
        listing = [dict(rollout_doc("r-1", "running")), dict(rollout_doc("r-2", "paused", {
            "code": "failure-budget-exhausted", "detail": "2 of 10 hosts failed"}))]
        for d in listing:
            del d["hosts"], d["plan"]
        self.fc.routes[("GET", "/v1/rollouts")] = (200, {"rollouts": listing})
        out = self.ok("rollout", "status", env=self.env)
        self.assertEqual(out, table([
            ["ID", "STATUS", "WAVE", "DONE", "FAILED", "CREATED", "REASON"],
            ["r-1", "running", "2/2", "1/3", "0", "2026-11-25T10:00:00.000Z", "-"],
            ["r-2", "paused", "2/2", "1/3", "0", "2026-11-25T10:00:00.000Z",
             "failure-budget-exhausted: 2 of 10 hosts failed"]]))
        self.fc.routes[("GET", "/v1/rollouts/r-2")] = (200, rollout_doc("r-2", "paused", {
            "code": "failure-budget-exhausted", "detail": "2 of 10 hosts failed"}))
        rc, out, err = self.ctl("rollout", "status", "r-2", env=self.env)
        self.assertEqual((rc, err), (4, ""))
        self.assertEqual(out, (
            "rollout r-2: paused, wave 2/2\n"
            "target: https://dl/vmlinuz, release 6.12.9-luo\n"
            "created 2026-11-25T10:00:00.000Z, updated 2026-11-25T10:05:00.000Z\n"
            "hosts: total 3, pending 1, in_progress 1, unavailable 1, done 1, failed 0, "
            "cancelled 0, skipped 0, already_current 2\n"
            "reason: failure-budget-exhausted: 2 of 10 hosts failed\n"
            "\n") + table([
                ["HOST", "WAVE", "PHASE", "KERNEL", "BLACKOUT", "ERROR"],
                ["web1", "1", "done", "6.12.9-luo", "412ms", "-"],
                ["web2", "2", "failed", "6.12.8-luo", "-",
                 "kernel-error: prepare failed: EBUSY (now normal on 6.12.8-luo, target staged)"],
                ["db-primary", "2", "rebooting", "-", "-", "-"]]))
        for status, code in (("completed", 0), ("running", 0), ("failed", 3), ("aborted", 5),
                             ("blocked", 4)):
            self.fc.routes[("GET", "/v1/rollouts/r-3")] = (200, rollout_doc("r-3", status))
            rc, out, _ = self.ctl("rollout", "status", "r-3", "--output=json", env=self.env)
            self.assertEqual(rc, code, status)
            self.assertEqual(json.loads(out), rollout_doc("r-3", status))
        rc, out, err = self.ctl("rollout", "status", "r-none", env=self.env)
        self.assertEqual(rc, 1)
        self.assertEqual(err, "luofleetctl: %s: 404 not-found: no route /v1/rollouts/r-none\n"
                         % self.fc.url)

    def test_pause_resume_abort(self):
        for action, status in (("pause", "paused"), ("resume", "running"),
                               ("abort", "aborted")):
            self.fc.routes[("POST", "/v1/rollouts/r-1/" + action)] = (200,
                                                                    rollout_doc("r-1", status))
            out = self.ok("rollout", action, "r-1", "--reason=maintenance", env=self.env)
            self.assertEqual(out, "rollout r-1: %s\n" % status)
            self.assertEqual(self.fc.last()["body"], {"reason": "maintenance"})
            out = self.ok("rollout", action, "r-1", env=self.env)
            self.assertEqual(self.fc.last()["body"], {})
        self.fc.routes[("POST", "/v1/rollouts/r-1/abort")] = (
            409, problem(409, "invalid-transition", "rollout r-1 is already completed"))
        rc, out, err = self.ctl("rollout", "abort", "r-1", env=self.env)
        self.assertEqual((rc, out), (1, ""))
        self.assertEqual(err, "luofleetctl: %s: 409 invalid-transition: rollout r-1 is already "
                         "completed\n" % self.fc.url)
        rc, out, err = self.ctl("rollout", "pause", env=self.env)
        self.assertEqual(rc, 2)

    def watch_setup(self, rid, final, reason=None):
        self.fc.routes[("GET", "/v1/rollouts/%s" % rid)] = (200, rollout_doc(rid, final, reason))
        self.fc.routes[("GET", "/v1/rollouts/%s/events" % rid)] = ("sse", [
            events_for(rid, final, reason and reason["detail"])])

    def test_watch_exit_codes(self):
        for rid, final, code in (("r-ok", "completed", 0), ("r-paused", "paused", 4),
                                 ("r-aborted", "aborted", 5), ("r-failed", "failed", 3)):
            self.watch_setup(rid, final)
            rc, out, err = self.ctl("rollout", "watch", rid, env=self.env)
            self.assertEqual((rc, err), (code, ""), rid)
            self.assertEqual(out, (
                "2026-11-25T10:00:00.000Z rollout-created\n"
                "2026-11-25T10:00:01.000Z rollout-status status=running\n"
                "2026-11-25T10:00:02.000Z wave-started wave=1\n"
                "2026-11-25T10:00:03.000Z host-action host=web1 wave=1 detail=\"reboot\"\n"
                "2026-11-25T10:00:04.000Z host-phase host=web1 wave=1 phase=done "
                "blackout=412ms\n"
                "2026-11-25T10:00:05.000Z rollout-status status=%s\n" % final), rid)
        # json: the events' documents, one per line
        rc, out, err = self.ctl("rollout", "watch", "r-ok", "--output=json", env=self.env)
        self.assertEqual(rc, 0)
        self.assertEqual([json.loads(x) for x in out.splitlines()],
                         [e[2] for e in events_for("r-ok", "completed")])

    def test_watch_replayed_pause_and_resume(self):
        """An old pause replayed from the stream's start does not end the watch (the rollout
        runs now); a broken stream is resumed with Last-Event-ID."""
        rid = "r-resume"
        ev = events_for(rid, "completed")
        old_pause = (3, "rollout-status", {"seq": 3, "time": "2026-11-25T10:00:02.500Z",
                                           "rollout": rid, "type": "rollout-status",
                                           "status": "paused"})
        first = ev[:2] + [old_pause]
        rest = [(s + 1, t, dict(d, seq=s + 1)) for s, t, d in ev[2:]]
        self.fc.routes[("GET", "/v1/rollouts/%s" % rid)] = (200, rollout_doc(rid, "running"))
        self.fc.routes[("GET", "/v1/rollouts/%s/events" % rid)] = ("sse", [first, rest])
        rc, out, err = self.ctl("rollout", "watch", rid, env=self.env)
        self.assertEqual((rc, err), (0, ""))
        self.assertEqual(len(out.splitlines()), 7)
        self.assertIn("status=paused", out.splitlines()[2])
        reqs = [r for r in self.fc.requests if r["path"].endswith("/events")]
        self.assertEqual(len(reqs), 2)
        self.assertNotIn("Last-Event-ID", reqs[0]["headers"])
        self.assertEqual(reqs[1]["headers"].get("Last-Event-ID"), "3")
        self.assertEqual(reqs[1]["headers"].get("Accept"), "text/event-stream")

    def watch_on_a_terminal(self, **env_extra):
        self.watch_setup("r-live", "completed")
        pid, fd = pty.fork()
        if pid == 0:
            env = self.ctl_env(self.env)
            env.update(env_extra)
            argv = ctl_argv("rollout", "watch", "r-live")
            os.execvpe(argv[0], argv, env)
        out = b""
        deadline = time.monotonic() + 20 * SCALE
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.5)
            if not r:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        _, status = os.waitpid(pid, 0)
        os.close(fd)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0, out)
        return out.decode("utf-8", "replace")

    def test_watch_live_display(self):
        text = self.watch_on_a_terminal(TERM="xterm")
        self.assertIn("\x1b[1mrollout r-live", text)   # bold, and colours
        self.assertIn("\x1b[32m web1:done", text)
        self.assertIn("\x1b[?25l", text)   # cursor hidden while drawing
        self.assertIn("\x1b[J", text)      # redrawn in place
        self.assertTrue(text.endswith("\x1b[?25h"), repr(text[-80:]))
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
        self.assertIn("rollout r-live", plain)
        self.assertIn("completed", plain)
        self.assertIn("web1:done", plain)
        self.assertIn("blackout: min 412ms, median 412ms, max 412ms (1 hosts)", plain)

    def test_watch_no_color_and_dumb_terminal(self):
        # NO_COLOR: still redrawn in place, but no colour or bold
        text = self.watch_on_a_terminal(TERM="xterm", NO_COLOR="1")
        self.assertIn("\x1b[J", text)
        self.assertEqual(re.findall(r"\x1b\[[0-9;]*m", text), [])
        self.assertIn("web1:done", text)
        # TERM=dumb: no escape sequence at all; the event lines, as into a pipe
        text = self.watch_on_a_terminal(TERM="dumb")
        self.assertNotIn("\x1b", text)
        self.assertIn("wave-started wave=1", text)
        self.assertIn("rollout-status status=completed", text)

    def test_controller_unreachable(self):
        env = {"LUOFLEET_CONTROLLER": "http://127.0.0.1:%d" % closed_port()}
        for args in (["hosts"], ["rollout", "status"], ["rollout", "watch", "r-1"],
                     ["rollout", "create", "--kernel-url=https://k"]):
            rc, out, err = self.ctl(*args, env=env)
            self.assertEqual(rc, 6, (args, err))
            self.assertIn("could not connect", err)


class ConfigTest(CtlMixin, AgentTestCase):

    def setUp(self):
        super().setUp()
        self.fc = FakeController(self, prefixes=("/file", "/env", "/flag", "/xdg"))
        self.fc.routes[("GET", "/v1/hosts")] = (200, {"hosts": HOSTS[:1]})

    def write(self, name, text, mode=0o600):
        p = os.path.join(self.tmp, name)
        with open(p, "w") as f:
            f.write(text)
        os.chmod(p, mode)
        return p

    def used(self, *args, env=None):
        rc, out, err = self.ctl("hosts", *args, env=env)
        self.assertEqual(rc, 0, err)
        r = self.fc.last()
        return r["prefix"], out, r["headers"].get("Authorization")

    def test_precedence(self):
        tok1 = self.write("tok1", "token-from-file\nsecond line ignored\n")
        tok3 = self.write("tok3", "token-from-flag\n")
        conf = self.write("ctl.conf", "# luofleetctl\n\ncontroller = %s/file\n"
                          "output=json\n  token-file =  %s  \ntimeout = 5s\n"
                          % (self.fc.url, tok1))
        env = {"LUOFLEETCTL_CONFIG": conf}
        prefix, out, auth = self.used(env=env)
        self.assertEqual((prefix, auth), ("/file", "Bearer token-from-file"))
        self.assertEqual(json.loads(out), {"hosts": HOSTS[:1]})  # output = json from the file
        env.update(LUOFLEET_CONTROLLER=self.fc.url + "/env", LUOFLEET_OUTPUT="table",
                   LUOFLEET_TOKEN="token-from-env")
        prefix, out, auth = self.used(env=env)
        self.assertEqual((prefix, auth), ("/env", "Bearer token-from-env"))
        self.assertTrue(out.startswith("NAME "))
        prefix, out, auth = self.used("--controller=" + self.fc.url + "/flag", "--output=json",
                                      "--token-file=" + tok3, env=env)
        self.assertEqual((prefix, auth), ("/flag", "Bearer token-from-flag"))
        self.assertEqual(json.loads(out), {"hosts": HOSTS[:1]})
        # LUOFLEET_TOKEN_FILE (below LUOFLEET_TOKEN, above the file's token-file)
        env2 = {"LUOFLEETCTL_CONFIG": conf, "LUOFLEET_TOKEN_FILE": tok3}
        self.assertEqual(self.used(env=env2)[2], "Bearer token-from-flag")
        # global option before the command, equally
        rc, out, err = self.ctl("--controller=" + self.fc.url + "/flag", "hosts", env=env)
        self.assertEqual((rc, self.fc.last()["prefix"]), (0, "/flag"))

    def test_config_file_locations(self):
        xdg = os.path.join(self.tmp, "home", ".config", "luofleet")
        os.makedirs(xdg, exist_ok=True)
        with open(os.path.join(xdg, "luofleetctl.conf"), "w") as f:
            f.write("controller = %s/xdg\n" % self.fc.url)
        self.assertEqual(self.used()[0], "/xdg")
        other = self.write("other.conf", "controller = %s/file\n" % self.fc.url)
        # LUOFLEETCTL_CONFIG replaces the default file; --config replaces LUOFLEETCTL_CONFIG
        self.assertEqual(self.used(env={"LUOFLEETCTL_CONFIG": other})[0], "/file")
        flagconf = self.write("flag.conf", "controller = %s/flag\n" % self.fc.url)
        self.assertEqual(self.used("--config=" + flagconf,
                                   env={"LUOFLEETCTL_CONFIG": other})[0], "/flag")
        # an explicit config file must exist
        rc, out, err = self.ctl("hosts", "--config=/nonexistent.conf")
        self.assertEqual(rc, 2)
        self.assertEqual(err, "luofleetctl: config file /nonexistent.conf: No such file or "
                         "directory\n")

    def test_config_errors(self):
        for text, msg in (
                ("controller = http://x\n# ok\ncolour = blue\n",
                 ":3: unknown key 'colour' (known: controller, token-file, ca-bundle, cert, "
                 "key, output, timeout)\n"),
                ("controller\n", ":1: expected \"key = value\"\n"),
                ("output =\n", ":1: 'output' has no value\n")):
            p = self.write("bad.conf", text)
            rc, out, err = self.ctl("hosts", "--config=" + p)
            self.assertEqual((rc, out), (2, ""), text)
            self.assertEqual(err, "luofleetctl: " + p + msg)
        p = self.write("bad.conf", "output = yaml\n")
        rc, out, err = self.ctl("hosts", "--config=" + p)
        self.assertEqual(rc, 2)
        self.assertEqual(err, "luofleetctl: output 'yaml' (config file): expected table or json\n")
        rc, out, err = self.ctl("hosts", "--config=" + p, env={"LUOFLEET_OUTPUT": "xml"})
        self.assertEqual(err, "luofleetctl: output 'xml' (LUOFLEET_OUTPUT): expected table or "
                         "json\n")

    def test_token_file_permissions(self):
        tok = self.write("tok", "secret\n", mode=0o644)
        rc, out, err = self.ctl("hosts", "--controller=" + self.fc.url + "/flag",
                                "--token-file=" + tok)
        self.assertEqual((rc, out), (2, ""))
        self.assertEqual(err, "luofleetctl: token file %s is readable by every user (mode "
                         "0644): refusing to use it; run chmod o-rwx on it\n" % tok)
        os.chmod(tok, 0o640)
        self.assertEqual(self.used("--controller=" + self.fc.url + "/flag",
                                   "--token-file=" + tok)[2], "Bearer secret")
        empty = self.write("empty", "\n")
        rc, out, err = self.ctl("hosts", "--controller=" + self.fc.url, "--token-file=" + empty)
        self.assertEqual(rc, 2)
        self.assertIn("the first line is empty", err)

    def test_timeout(self):
        self.fc.routes[("GET", "/v1/hosts")] = ("sleep", 3)
        t = time.monotonic()
        rc, out, err = self.ctl("hosts", "--controller=" + self.fc.url, "--timeout=300ms")
        self.assertEqual(rc, 6, err)
        self.assertIn("no answer in time", err)
        self.assertLess(time.monotonic() - t, 2.5 * SCALE)


if __name__ == "__main__":
    harness.main()
