"""Fleet suite: luofleet-rollout driving real sim agents on 127.0.0.1 (tests/fleet/fleet.py).

Every assertion about what happened on a host is read from that agent's own journal and its
simulated kernel's counters (kexecs actually carried out), not from the controller; the
controller's API is checked against them.
"""

import json
import os
import random
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fleet  # noqa: E402
from fleet import Fleet, TARGET_RELEASE  # noqa: E402

CTL = fleet.binary("LUOFLEET_CTL", "luofleetctl")


def spec(f, **kw):
    s = {"target": f.target(), "strategy": {"canary": 1, "batch": 2, "max_unavailable": 1,
                                            "max_failures": 0, "soak": "0s"},
         "timeouts": {"stage": "30s", "prepare": "30s", "reboot": "30s", "finish": "30s"}}
    for k, v in kw.items():
        if k == "strategy":
            s["strategy"].update(v)
        elif k == "timeouts":
            s["timeouts"].update(v)
        else:
            s[k] = v
    return s


def hosts_by_name(doc):
    return {h["name"]: h for h in doc["hosts"]}


class FleetTest(unittest.TestCase):
    maxDiff = None

    def fleet(self, n, **kw):
        f = Fleet(self.id().rsplit(".", 1)[-1], n, **kw)
        self.addCleanup(self._stop, f)
        return f.start()

    def _stop(self, f):
        failed = any(e for e in (self._outcome.errors if hasattr(self._outcome, "errors") else [])
                     if e[1] is not None) if hasattr(self, "_outcome") else False
        if failed or os.environ.get("LUOFLEET_TEST_VERBOSE"):
            for c in f.controllers:
                sys.stderr.write("--- controller %s log ---\n%s\n" % (c.name, c.log()))
        f.stop()
        for c in f.controllers:
            for rc in c.returncodes:
                self.assertIn(rc, (0, -9), "controller exit status %s:\n%s" % (rc, c.log()))
        # Every agent stopped cleanly at SIGTERM: a sanitizer report, a leak or a crash
        # anywhere in the fleet fails the test that ran it.
        for a in f.agents:
            for rc in a.returncodes:
                self.assertEqual(rc, 0, "agent %s exit status %s:\n%s" % (a.name, rc, a.log()))

    def assert_done(self, f, doc, agents=None):
        agents = agents if agents is not None else f.agents
        hosts = hosts_by_name(doc)
        for a in agents:
            h = hosts[a.name]
            self.assertEqual(h["phase"], "done", json.dumps(h))
            self.assertEqual(h["kernel"], TARGET_RELEASE)
            self.assertIsNone(h["error"])
            self.assertIsInstance(h["blackout_ms"], int)
            self.assertNotEqual(h["boot_id_before"], h["boot_id_after"])
            st = a.state()
            self.assertEqual(st["state"], "normal")
            self.assertEqual(st["kernel"], TARGET_RELEASE)
            self.assertEqual(st["boot_id"], h["boot_id_after"])
            self.assertEqual(a.applied("kexec"), 1, a.name)

    # ---------------------------------------------------------------------------------

    def test_rolling_canary_first_and_unavailable_budget(self):
        f = self.fleet(7, downtime="1s")
        ctl = f.controller().start()
        doc = ctl.create(spec(f, strategy={"canary": 1, "batch": 3, "max_unavailable": 2}))
        rid = doc["id"]
        doc = ctl.wait(rid)
        self.assertEqual(doc["status"], "completed", json.dumps(doc)[:3000])
        self.assertEqual(doc["counters"]["done"], 7)
        self.assertEqual(doc["counters"]["failed"], 0)
        self.assert_done(f, doc)
        for h in doc["hosts"]:
            self.assertGreaterEqual(h["blackout_ms"], 1000, h)
        # The plan: one canary, then waves of 3.
        waves = [w["hosts"] for w in doc["plan"]["waves"]]
        self.assertEqual([len(w) for w in waves], [1, 3, 3])
        self.assertTrue(doc["plan"]["waves"][0]["canary"])
        # Canary first: it finished before any other host was even prepared.
        canary = next(a for a in f.agents if a.name == waves[0][0])
        canary_done = canary.unavailable_interval()[1]
        for a in f.agents:
            if a is canary:
                continue
            first_prepare = fleet.parse_time(a.operations("prepare")[0]["requested_at"])
            self.assertGreater(first_prepare, canary_done, a.name)
        # Waves in order: no host of wave k+1 prepared before every host of wave k finished.
        for k in range(1, len(waves) - 1):
            end_k = max(f.agents[int(n[1:])].unavailable_interval()[1] for n in waves[k])
            for n in waves[k + 1]:
                a = f.agents[int(n[1:])]
                self.assertGreater(fleet.parse_time(a.operations("prepare")[0]["requested_at"]),
                                   end_k, n)
        # The unavailable budget, from the agents' own journals.
        self.assertLessEqual(f.unavailable_overlap(), 2)
        self.assertGreaterEqual(f.unavailable_overlap(), 1)
        # Every action carried the controller's operation id, one per step per host.
        for a in f.agents:
            ids = [o["id"] for o in a.operations()]
            self.assertEqual(len(ids), len(set(ids)), ids)
            self.assertEqual(sorted(o["action"] for o in a.operations()),
                             ["finish", "prepare", "reboot", "stage"], a.name)
            for o in a.operations():
                self.assertIn(":%s:%s:" % (rid, a.name), o["id"])
        # The fleet view knows the new kernel and blackout of every host.
        status, body = ctl.request("GET", "/v1/hosts")
        self.assertEqual(status, 200)
        view = {h["name"]: h for h in body["hosts"]}
        for a in f.agents:
            self.assertEqual(view[a.name]["kernel"], TARGET_RELEASE)
            self.assertEqual(view[a.name]["state"], "normal")
            self.assertGreaterEqual(view[a.name]["blackout_ms"], 1000)
        self.assertEqual(ctl.stop(), 0)

    def test_failure_budget_pauses_then_resume(self):
        # h001 and h003 refuse to prepare (the kernel's EIO); budget: one failure.
        f = self.fleet(6, downtime="200ms",
                       faults={1: ["--sim-fault=prepare=EIO"], 3: ["--sim-fault=prepare=EIO"]})
        ctl = f.controller().start()
        rid = ctl.create(spec(f, strategy={"canary": 0, "batch": 1, "max_failures": 1}))["id"]
        doc = ctl.wait(rid, ("paused",))
        self.assertEqual(doc["reason"]["code"], "failure-budget-exhausted")
        self.assertEqual(doc["counters"]["failed"], 2)
        hosts = hosts_by_name(doc)
        for n in ("h001", "h003"):
            self.assertEqual(hosts[n]["phase"], "failed")
            self.assertEqual(hosts[n]["error"]["code"], "kernel-error", hosts[n])
            self.assertEqual(f[int(n[1:])].state()["state"], "normal")
        # Paused: nothing new starts.
        time.sleep(1.0)
        still = ctl.rollout(rid)
        self.assertEqual(still["status"], "paused")
        self.assertEqual(still["counters"]["done"], doc["counters"]["done"])
        pending = [h["name"] for h in still["hosts"] if h["phase"] == "pending"]
        self.assertTrue(pending)
        for n in pending:
            self.assertEqual(f[int(n[1:])].operations(), [])
        status, body = ctl.action(rid, "resume", "accepted: two bad hosts")
        self.assertEqual(status, 200, body)
        doc = ctl.wait(rid)
        self.assertEqual(doc["status"], "completed", json.dumps(doc)[:3000])
        self.assertEqual(doc["counters"]["done"], 4)
        self.assertEqual(doc["counters"]["failed"], 2)
        self.assert_done(f, doc, [a for a in f.agents if a.index not in (1, 3)])
        for i in (1, 3):
            self.assertEqual(f[i].applied("kexec"), 0)
        status, body = ctl.action(rid, "pause")
        self.assertEqual(status, 409)
        self.assertEqual(body["code"], "invalid-transition")

    def test_abort(self):
        f = self.fleet(5, downtime="2s")
        ctl = f.controller().start()
        rid = ctl.create(spec(f, strategy={"canary": 1, "batch": 2, "max_unavailable": 1}))["id"]
        # Abort while the canary is down in its reboot.
        ctl.wait(rid, cond=lambda d: any(h["phase"] == "rebooting" for h in d["hosts"]))
        status, body = ctl.action(rid, "abort", "test")
        self.assertEqual(status, 200, body)
        doc = ctl.wait(rid)
        self.assertEqual(doc["status"], "aborted")
        self.assertEqual(doc["reason"]["code"], "aborted-by-user")
        hosts = hosts_by_name(doc)
        # The rebooting canary completes (a kexec cannot be called back); the rest is skipped.
        rebooted = [n for n, h in hosts.items() if h["phase"] == "done"]
        self.assertEqual(len(rebooted), 1, hosts)
        for a in f.agents:
            self.assertEqual(a.state()["state"], "normal", a.name)
            self.assertEqual(a.applied("kexec"), 1 if a.name in rebooted else 0, a.name)
            if a.name not in rebooted:
                self.assertIn(hosts[a.name]["phase"], ("skipped", "cancelled"))
        status, body = ctl.action(rid, "resume")
        self.assertEqual(status, 409)

    def test_two_phase_cancels_the_wave(self):
        # Waves of 3 (interleaved over 3 zones: h000 h001 h002, then h003 h004 h005); h002
        # refuses to prepare (EBUSY); h000's cancel takes 1.5 s: the rollout pauses only when
        # the wave's hosts are back to normal (docs/rollout.md), as an abort waits.
        f = self.fleet(6, downtime="300ms", faults={0: ["--sim-fault=cancel=1500ms"],
                                                     2: ["--sim-fault=prepare=EBUSY"]})
        ctl = f.controller().start()
        rid = ctl.create(spec(f, strategy={"mode": "two-phase", "canary": 0, "batch": 3,
                                           "max_unavailable": 3, "max_failures": 0}))["id"]
        doc = ctl.wait(rid, ("paused",))
        self.assertEqual([w["hosts"] for w in doc["plan"]["waves"]],
                         [["h000", "h001", "h002"], ["h003", "h004", "h005"]])
        self.assertEqual(doc["reason"]["code"], "two-phase-prepare-failed", doc["reason"])
        hosts = hosts_by_name(doc)
        self.assertEqual(hosts["h002"]["phase"], "failed")
        self.assertEqual(hosts["h002"]["error"]["code"], "kernel-busy")
        for a in f.agents:
            self.assertEqual(a.applied("kexec"), 0, a.name)
            self.assertEqual(a.state()["state"], "normal", a.name)
        for a in f.agents[:2]:
            self.assertEqual(hosts[a.name]["phase"], "cancelled", hosts[a.name])
            # Prepared, then cancelled by the controller (the agent's own journal).
            moves = [(t["from"], t["to"]) for t in a.transitions()]
            self.assertEqual(moves, [("normal", "prepared"), ("prepared", "normal")], a.name)
            self.assertEqual(len(a.operations("cancel")), 1)
        for a in f.agents[3:]:
            self.assertEqual(hosts[a.name]["phase"], "pending")
            self.assertEqual(a.operations(), [], a.name)
        # Resume accepts the lost wave; the next one goes through.
        status, body = ctl.action(rid, "resume")
        self.assertEqual(status, 200, body)
        doc = ctl.wait(rid)
        self.assertEqual(doc["status"], "completed", json.dumps(doc)[:2000])
        self.assertEqual({k: doc["counters"][k] for k in ("done", "failed", "cancelled")},
                         {"done": 3, "failed": 1, "cancelled": 2})
        self.assert_done(f, doc, f.agents[3:])

    def test_two_phase_single_wave_fails(self):
        f = self.fleet(2, downtime="300ms", faults={1: ["--sim-fault=prepare=EIO"]})
        ctl = f.controller().start()
        rid = ctl.create(spec(f, strategy={"mode": "two-phase", "canary": 0, "batch": 2,
                                           "max_unavailable": 2}))["id"]
        doc = ctl.wait(rid)
        self.assertEqual(doc["status"], "failed")
        self.assertEqual(doc["reason"]["code"], "two-phase-prepare-failed")
        self.assertEqual([h["phase"] for h in doc["hosts"]], ["cancelled", "failed"])
        self.assertEqual(f[0].applied("cancel"), 1)

    def test_two_phase_reboots_a_wave_at_once(self):
        f = self.fleet(4, downtime="1s")
        ctl = f.controller().start()
        rid = ctl.create(spec(f, strategy={"mode": "two-phase", "canary": 0, "batch": 2,
                                           "max_unavailable": 2}))["id"]
        doc = ctl.wait(rid)
        self.assertEqual(doc["status"], "completed", json.dumps(doc)[:2000])
        self.assert_done(f, doc)
        self.assertEqual(f.unavailable_overlap(), 2)
        # Each wave prepared entirely before its first reboot.
        for w in doc["plan"]["waves"]:
            agents = [f[int(n[1:])] for n in w["hosts"]]
            last_prepare = max(fleet.parse_time(a.operations("prepare")[0]["finished_at"])
                               for a in agents)
            first_reboot = min(fleet.parse_time(a.operations("reboot")[0]["requested_at"])
                               for a in agents)
            # (Millisecond timestamps of different agents' journals: the controller may
            # send the first reboot within the millisecond the last prepare finished.)
            self.assertLessEqual(last_prepare, first_reboot)

    def test_lease_renewed_while_waiting(self):
        # Two-phase, a 2 s dead-man lease; h001 takes 3 s to prepare. h000, prepared at once,
        # waits for it: the controller renews its lease, so it does not cancel itself.
        f = self.fleet(2, downtime="200ms", faults={1: ["--sim-fault=prepare=3000ms"]})
        ctl = f.controller().start()
        rid = ctl.create(spec(f, strategy={"mode": "two-phase", "canary": 0, "batch": 2,
                                           "max_unavailable": 2},
                              lease_seconds=2))["id"]
        doc = ctl.wait(rid)
        self.assertEqual(doc["status"], "completed", json.dumps(doc)[:2000])
        self.assert_done(f, doc)
        leases = [r for r in f[0].journal() if r.get("kind") == "lease"]
        causes = [r.get("cause") for r in leases]
        self.assertNotIn("lease-expired", causes)
        # granted by the prepare, renewed at least 3 times (every ~0.67 s for ~3 s), ended
        # by the reboot
        self.assertGreaterEqual(causes.count(None), 4, leases)
        self.assertEqual(f[0].applied("cancel"), 0)

    def test_lease_expired_while_controller_down(self):
        # A host prepared and its controller gone for longer than the lease: the
        # host cancels itself; the restarted controller sees the lease gone (lease-expired)
        # instead of failing later on a refused reboot.
        f = self.fleet(2, downtime="200ms", faults={1: ["--sim-fault=prepare=2500ms"]})
        ctl = f.controller().start()
        rid = ctl.create(spec(f, strategy={"mode": "two-phase", "canary": 0, "batch": 2,
                                           "max_unavailable": 2, "max_failures": 2},
                              lease_seconds=1))["id"]
        ctl.wait(rid, cond=lambda d: hosts_by_name(d)["h000"]["phase"] == "prepared")
        ctl.kill9()
        deadline = time.monotonic() + 20 * fleet.SCALE
        while f[0].state()["state"] != "normal":
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.1)
        ctl.start()
        doc = ctl.wait(rid, ("paused", "completed", "failed"))
        h = hosts_by_name(doc)["h000"]
        self.assertEqual(h["phase"], "failed", h)
        self.assertEqual(h["error"]["code"], "lease-expired", h)
        self.assertEqual(f[0].applied("kexec"), 0)

    def test_kill9_controller_resumes_with_one_reboot_per_host(self):
        f = self.fleet(6, downtime="1s")
        ctl = f.controller().start()
        rid = ctl.create(spec(f, strategy={"canary": 1, "batch": 2, "max_unavailable": 2}))["id"]
        # kill -9 at pseudo-random moments (fixed seed) until the rollout is over: the
        # kills land in every phase (intent written, action sent, answer lost, host down).
        rng = random.Random(6)
        kills = 0
        phases_killed = set()
        deadline = time.monotonic() + 120 * fleet.SCALE
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.2, 0.9))
            doc = ctl.rollout(rid)
            if doc["status"] in fleet.TERMINAL:
                break
            phases_killed |= {h["phase"] for h in doc["hosts"]}
            ctl.kill9()
            kills += 1
            ctl.start()
        doc = ctl.wait(rid)
        self.assertEqual(doc["status"], "completed", json.dumps(doc)[:3000])
        self.assertGreaterEqual(kills, 3)
        self.assertTrue({"staging", "rebooting"} & phases_killed, phases_killed)
        self.assert_done(f, doc)
        for a in f.agents:
            self.assertEqual(a.applied("kexec"), 1, a.name)
            self.assertEqual(a.applied("prepare"), 1, a.name)
            self.assertEqual(a.applied("finish"), 1, a.name)
        self.assertLessEqual(f.unavailable_overlap(), 2)

    def test_windows_are_honoured(self):
        f = self.fleet(3, downtime="200ms")
        # A window every day 02:00-03:00 UTC; the controller's clock put at 12:00 UTC.
        now = time.time()
        day = now - now % 86400
        offset_closed = int(day + 12 * 3600 - now)
        ctl = f.controller(env={"LUOFLEET_TEST_TIME_OFFSET": str(offset_closed)}).start()
        rid = ctl.create(spec(f, windows=[{"start": "02:00", "end": "03:00",
                                           "time_zone": "UTC"}]))["id"]
        doc = ctl.wait(rid, ("blocked",), timeout=20)
        self.assertEqual(doc["reason"]["code"], "outside-window")
        # next_window_at is real time: 02:00 on the controller's (shifted) clock, tomorrow.
        want = time.strftime("%Y-%m-%dT%H:%M:%S.000Z",
                             time.gmtime(day + 86400 + 2 * 3600 - offset_closed))
        self.assertEqual(doc["reason"]["next_window_at"], want, doc["reason"])
        time.sleep(1.0)
        for a in f.agents:
            self.assertEqual(a.operations(), [], a.name)
        ctl.stop()
        ctl.start(env={"LUOFLEET_TEST_TIME_OFFSET": str(int(day + 2 * 3600 + 600 - now))})
        doc = ctl.wait(rid)
        self.assertEqual(doc["status"], "completed")
        self.assert_done(f, doc)

    def test_wrong_kernel_fails_and_auto_rollback(self):
        # h001 boots a wrong kernel whenever it kexecs into 6.19.0-lf2 (TARGET_RELEASE).
        f = self.fleet(3, downtime="200ms",
                       faults={1: ["--sim-boot-release=%s=6.1.0-wrong" % TARGET_RELEASE]})
        ctl = f.controller().start()
        # First every host goes to 6.19.0-lf1, so each has a rollback target on record.
        path, sha = fleet.harness.make_bzimage(f.kernel_dir, "vmlinuz-lf1",
                                               "6.19.0-lf1 (fleet@luofleet) #1 SMP")
        os.chmod(path, 0o644)
        first = ctl.create(spec(f, target={"kernel": {"path": path, "sha256": sha},
                                           "release": "6.19.0-lf1"},
                                strategy={"canary": 0, "batch": 3, "max_unavailable": 3}))
        self.assertEqual(ctl.wait(first["id"])["status"], "completed")
        rid = ctl.create(spec(f, strategy={"canary": 0, "batch": 1, "max_failures": 1},
                              auto_rollback=True))["id"]
        doc = ctl.wait(rid)
        self.assertEqual(doc["status"], "completed", json.dumps(doc)[:3000])
        self.assertEqual(doc["counters"]["failed"], 1)
        hosts = hosts_by_name(doc)
        self.assertEqual(hosts["h001"]["phase"], "failed")
        self.assertEqual(hosts["h001"]["error"]["code"], "kernel-verification-failed",
                         hosts["h001"])
        self.assertIn("6.1.0-wrong", hosts["h001"]["error"]["detail"])
        # Rolled back by the controller, and the boot it rolled back into finished: the host
        # is normal again on the kernel it ran before.
        st = f[1].state()
        self.assertEqual((st["state"], st["kernel"]), ("normal", "6.19.0-lf1"))
        self.assertEqual(f[1].applied("kexec"), 3)
        ops = [o["id"].rsplit(":", 2)[1:] for o in f[1].operations()
               if o["id"].startswith("lf:%s:" % rid)]
        self.assertEqual([o[1] for o in ops],
                         ["stage", "prepare", "reboot", "rollback", "rollback-finish"])
        for a in (f[0], f[2]):
            self.assertEqual(a.applied("kexec"), 2)
            self.assertEqual(a.state()["kernel"], TARGET_RELEASE)
        types = [e for e in self.events(ctl, rid) if e.get("host") == "h001"]
        self.assertIn("host-rolled-back", [e["type"] for e in types])

    def events(self, ctl, rid):
        """The rollout's events as the SSE stream gives them (it ends with the rollout)."""
        import urllib.request
        with urllib.request.urlopen(ctl.url + "/v1/rollouts/%s/events" % rid, timeout=30) as r:
            out = []
            for block in r.read().decode().split("\n\n"):
                for line in block.splitlines():
                    if line.startswith("data: "):
                        out.append(json.loads(line[6:]))
            return out

    def test_host_that_never_comes_back(self):
        f = self.fleet(3, downtime="200ms", faults={0: ["--sim-downtime=never"]})
        ctl = f.controller().start()
        rid = ctl.create(spec(f, strategy={"canary": 1, "batch": 1, "max_failures": 1},
                              timeouts={"reboot": "3s"}))["id"]
        doc = ctl.wait(rid, ("blocked", "paused", "completed", "failed"), timeout=60)
        hosts = hosts_by_name(doc)
        self.assertEqual(hosts["h000"]["phase"], "failed")
        self.assertEqual(hosts["h000"]["error"]["code"], "timeout-reboot")
        # The dead host is unavailable for good: with max_unavailable 1 nothing else may go.
        self.assertEqual(doc["status"], "blocked", doc)
        self.assertEqual(doc["reason"]["code"], "unavailable-budget")
        for a in f.agents[1:]:
            self.assertEqual(a.applied("kexec"), 0)

    def test_slow_reboot_within_timeout(self):
        f = self.fleet(2, downtime="300ms", faults={1: ["--sim-downtime=3s"]})
        ctl = f.controller().start()
        rid = ctl.create(spec(f, strategy={"canary": 0, "batch": 2, "max_unavailable": 2},
                              timeouts={"reboot": "20s"}))["id"]
        doc = ctl.wait(rid)
        self.assertEqual(doc["status"], "completed")
        self.assert_done(f, doc)
        self.assertGreaterEqual(hosts_by_name(doc)["h001"]["blackout_ms"], 3000)

    def test_failure_after_prepare_is_cancelled(self):
        # h000 prepares, then its kexec is refused (EPERM): the controller cancels it.
        f = self.fleet(2, downtime="200ms", faults={0: ["--sim-fault=reboot=EPERM"]})
        ctl = f.controller().start()
        rid = ctl.create(spec(f, strategy={"canary": 1, "batch": 1, "max_failures": 1}))["id"]
        doc = ctl.wait(rid)
        self.assertEqual(doc["status"], "completed", json.dumps(doc)[:2000])
        h = hosts_by_name(doc)["h000"]
        self.assertEqual(h["phase"], "failed")
        self.assertEqual(h["error"]["code"], "kernel-permission-denied", h)
        self.assertEqual([o["action"] for o in f[0].operations()],
                         ["stage", "prepare", "reboot", "cancel"])
        self.assertEqual([(t["from"], t["to"]) for t in f[0].transitions()],
                         [("normal", "prepared"), ("prepared", "normal")])
        self.assertEqual(f[0].applied("kexec"), 0)
        self.assert_done(f, doc, [f[1]])

    def test_secured_agents(self):
        # Agents on HTTPS with bearer tokens; the controller trusts their CA and has a token.
        f = self.fleet(3, downtime="200ms", secure=True)
        ctl = f.controller(args=["--agent-ca-bundle=%s/ca.pem" % f.pki,
                                 "--agent-token-file=%s/token" % f.pki]).start()
        rid = ctl.create(spec(f, strategy={"canary": 1, "batch": 2, "max_unavailable": 2}))["id"]
        doc = ctl.wait(rid)
        self.assertEqual(doc["status"], "completed", json.dumps(doc)[:2000])
        self.assert_done(f, doc)
        for a in f.agents:
            for o in a.operations():
                self.assertEqual(o["requested_by"], "token:rollout")
        # Mutual TLS instead of a token: the controller's client certificate.
        m = self.fleet(2, downtime="200ms", mtls=True)
        c = m.controller(args=["--agent-ca-bundle=%s/ca.pem" % m.pki,
                               "--agent-cert=%s/client.pem" % m.pki,
                               "--agent-key=%s/client.key" % m.pki], name="mtls")
        c.start()
        rid = c.create(spec(m, strategy={"canary": 0, "batch": 2, "max_unavailable": 2}))["id"]
        doc = c.wait(rid)
        self.assertEqual(doc["status"], "completed", json.dumps(doc)[:2000])
        self.assert_done(m, doc)
        for a in m.agents:
            self.assertEqual({o["requested_by"] for o in a.operations()}, {"cert:rollout-ctl"})
        # Without the token, or without the CA: the controller cannot read the agents; they
        # count as unavailable and the rollout waits (blocked), saying why in the fleet view.
        for name, args, why in (("no-token", ["--agent-ca-bundle=%s/ca.pem"], "HTTP 401"),
                                ("no-ca", [], "certificate")):
            g = self.fleet(1, downtime="200ms", secure=True)
            c = g.controller(args=[a % g.pki if "%s" in a else a for a in args], name=name)
            c.start()
            # (Once the controller's first read of the host failed; before, the stage
            # itself would fail with the same cause and the rollout end failed.)
            deadline = time.monotonic() + 20 * fleet.SCALE
            while c.request("GET", "/v1/hosts/h000")[1].get("error") is None:
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.05)
            rid = c.create(spec(g, strategy={"canary": 0, "batch": 1}))["id"]
            doc = c.wait(rid, ("blocked",), timeout=30)
            self.assertEqual(doc["reason"]["code"], "unavailable-budget", doc["reason"])
            status, host = c.request("GET", "/v1/hosts/h000")
            self.assertEqual(status, 200)
            self.assertFalse(host["reachable"])
            self.assertIn(why, host["error"])
            self.assertEqual(g[0].operations(), [])

    def test_cli_drives_a_rollout(self):
        f = self.fleet(3, downtime="200ms")
        ctl = f.controller().start()
        env = dict(os.environ, LUOFLEET_CONTROLLER=ctl.url)
        env.pop("LUOFLEETCTL_CONFIG", None)
        spec_path = os.path.join(f.dir, "spec.json")
        with open(spec_path, "w") as fh:
            json.dump(spec(f), fh)
        p = subprocess.run([CTL, "rollout", "create", "-f", spec_path, "--id=cli-1"], env=env,
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        p = subprocess.run([CTL, "rollout", "watch", "cli-1"], env=env, capture_output=True,
                           text=True, timeout=120 * fleet.SCALE)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("completed", p.stdout)
        p = subprocess.run([CTL, "rollout", "status", "cli-1", "--output=json"], env=env,
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout)["status"], "completed")
        p = subprocess.run([CTL, "hosts"], env=env, capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        for a in f.agents:
            self.assertIn(a.name, p.stdout)
        self.assertEqual(p.stdout.count(TARGET_RELEASE), 3, p.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
