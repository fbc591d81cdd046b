#!/usr/bin/env python3
"""test_faults.py: nothing lost, nothing done twice, nothing done blind.

- A full state directory (a small tmpfs, filled): mutating requests answer 507 journal-full
  before the kernel is touched, reads keep working, /readyz says why, and once space is freed
  the same requests (same operation ids) work without a restart.
- A state directory turned read-only by a file-system error (ext4 errors=remount-ro on a loop
  device, with the kernel's trigger_fs_error) and one shut down with EIO: 503
  state-dir-read-only / journal-error before the kernel is touched, reads keep working;
  after a repair and a restart, everything recorded before is there.
- kill -9 in the middle of a journal write (the LUOFLEET_TEST_CRASH_POINT test hook writes half
  a record and kills the process): the torn tail is dropped at the restart, the journal is
  intact up to the last acknowledged record, the index never goes back, no operation runs
  twice (the simulated kernel counts what it carried out: kernel.json "applied") and the
  reported state is the kernel's.

The mounts need root (CI runs the suites as root); without it those tests are skipped. The
simulated kernel's directory (<state-dir>/sim) is bind-mounted from an ordinary directory, so
that the full or read-only file system is the journal's only: the kernel itself could act, and
the test checks that the agent did not ask it to."""

import errno
import fcntl
import os
import shutil
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import AgentTestCase, make_file  # noqa: E402

setUpModule, tearDownModule = harness.module_fixtures(__file__)

# Without privilege separation: the journal is the network process's, and as root privsep
# would drop it to a user that cannot read the test's files.
BASE_ARGS = ("--privsep=no",)
CRASH_ENV = "LUOFLEET_TEST_CRASH_POINT"


def run(*cmd, check=True):
    p = subprocess.run(list(cmd), capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError("%s: exit %d: %s" % (" ".join(cmd), p.returncode, p.stderr))
    return p


def applied(a):
    return a.sim_kernel().get("applied", {})


class FaultCase(AgentTestCase):

    def agent(self, *args, **kw):
        return super().agent(*(BASE_ARGS + args), **kw)

    def crash_agent(self, point, *args, **kw):
        """An agent started with the crash-point test hook set (only for this start)."""
        os.environ[CRASH_ENV] = point
        try:
            return self.agent(*args, **kw)
        finally:
            del os.environ[CRASH_ENV]

    def require_root(self):
        if os.geteuid() != 0:
            self.skipTest("needs root to mount a small file system for the state directory "
                          "(CI runs the integration suites as root)")

    def umount(self, path):
        if os.path.ismount(path):
            if run("umount", path, check=False).returncode != 0:
                run("umount", "-l", path, check=False)

    def state_fs(self, mount_cmd):
        """Mount a file system (mount_cmd(mountpoint)) as a fresh state directory, with its
        sim/ bind-mounted from an ordinary directory. Returns the state directory; everything
        is unmounted at cleanup, after the agents of this test stopped."""
        self.require_root()
        mnt = os.path.join(self.tmp, "statefs")
        simdir = os.path.join(self.tmp, "sim-outside")
        os.makedirs(mnt)
        os.makedirs(simdir, mode=0o700)
        mount_cmd(mnt)
        self.addCleanup(self.umount, mnt)
        os.makedirs(os.path.join(mnt, "sim"), mode=0o700)
        run("mount", "--bind", simdir, os.path.join(mnt, "sim"))
        self.addCleanup(self.umount, os.path.join(mnt, "sim"))
        return mnt

    def stop_at_cleanup(self, a):
        # Registered after the mounts: runs before their unmounting (cleanups are LIFO).
        self.addCleanup(a.stop)

    def stage_body(self, op_id):
        files = os.path.join(self.tmp, "files")
        os.makedirs(files, exist_ok=True)
        kpath, ksha = make_file(files, "vmlinuz", 5000)
        return {"kernel": {"path": kpath, "sha256": ksha}, "operation_id": op_id}

    def assert_reads_work(self, a):
        c = a.client()
        d = c.state()
        self.assertEqual(c.get("/v1/history").status, 200)
        self.assertEqual(c.get("/v1/history?kind=audit").status, 200)
        self.assertEqual(c.get("/metrics").status, 200)
        self.assertEqual(c.get("/v1/state?index=%d&wait=10ms" % d["index"]).status, 200)
        return d

    def journal_check(self, a):
        r = a.client().get("/readyz")
        check = [x for x in r.json["checks"] if x["name"] == "journal"][0]
        return r.status, check


class DiskFullTest(FaultCase):

    def fill(self, mnt):
        """Fill the file system until ENOSPC, to the last byte; returns the filler's path."""
        path = os.path.join(mnt, "filler")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (65536, 4096, 512, 1):
                while True:
                    try:
                        os.write(fd, b"\0" * size)
                    except OSError as e:
                        self.assertEqual(e.errno, errno.ENOSPC)
                        break
        finally:
            os.close(fd)
        return path

    def test_full_state_dir_refuses_before_the_kernel_and_recovers(self):
        mnt = self.state_fs(lambda m: run("mount", "-t", "tmpfs", "-o", "size=2m,mode=0700",
                                          "tmpfs", m))
        a = self.agent(state_dir=mnt)
        self.stop_at_cleanup(a)
        c = a.client()
        self.assertEqual(c.put("/v1/kernel", json_body=self.stage_body("s-1")).status, 200)
        self.assertEqual(c.post("/v1/prepare", json_body={"operation_id": "p-1"}).status, 200)
        self.assertEqual(c.post("/v1/cancel", json_body={"operation_id": "c-1"}).status, 200)
        before = c.all_records()
        audits_before = c.history("kind=audit")["records"]
        k = a.sim_kernel()
        d0 = c.state()
        self.assertEqual(self.journal_check(a), (200, {"name": "journal", "ok": True,
                                                      "detail": "writable"}))

        filler = self.fill(mnt)
        # Every mutating request is refused with 507 before the kernel hears of it.
        for method, path, body in (("POST", "/v1/prepare", {"operation_id": "p-2"}),
                                   ("PUT", "/v1/kernel", self.stage_body("s-2")),
                                   ("DELETE", "/v1/kernel", {"operation_id": "u-2"})):
            with self.subTest(path=path, method=method):
                r = c.request(method, path, json_body=body)
                p = self.assertProblem(r, 507, "journal-full", errno="ENOSPC")
                self.assertIn("nothing was done", p["detail"])
        self.assertEqual(a.sim_kernel(), k)
        # Reads work; nothing changed; replays of recorded ids still answer.
        d = self.assert_reads_work(a)
        self.assertEqual(d, d0)
        self.assertEqual(c.all_records(), before)
        r = c.post("/v1/prepare", json_body={"operation_id": "p-1"})
        self.assertEqual((r.status, r.json["operation"]["id"]), (200, "p-1"))
        # Refusals of an operation the state does not allow stay what they are.
        self.assertProblem(c.post("/v1/finish"), 409, "invalid-transition")
        status, check = self.journal_check(a)
        self.assertEqual((status, check["ok"]), (503, False))
        self.assertIn("operations are refused (journal-full)", check["detail"])
        # The refused requests' audit records could not be written: they are in the log.
        self.assertEqual(c.history("kind=audit")["records"], audits_before)
        self.assertIn("Audit record not journaled (ENOSPC)", a.log())
        self.assertEqual(a.sim_kernel(), k)

        os.unlink(filler)
        # Without a restart: ready again, and the same requests (same ids) now act, once.
        self.assertEqual(self.journal_check(a), (200, {"name": "journal", "ok": True,
                                                      "detail": "writable"}))
        r = c.post("/v1/prepare", json_body={"operation_id": "p-2"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["state"], "prepared")
        self.assertEqual(applied(a)["prepare"], k["applied"]["prepare"] + 1)
        self.assertEqual(c.post("/v1/cancel").status, 200)
        self.assertEqual(c.request("DELETE", "/v1/kernel",
                                   json_body={"operation_id": "u-2"}).status, 200)
        recs = c.all_records()
        self.assertEqual(recs[:len(before)], before)
        self.assertEqual([r["index"] for r in recs], list(range(1, c.state()["index"] + 1)))
        codes = [x["result"]["code"] for x in c.history("kind=audit")["records"]]
        self.assertEqual(codes[len(audits_before):], ["ok", "ok", "ok"])
        a.stop()
        a.restart()
        self.assertEqual(a.client().all_records(), recs)


class ReadOnlyTest(FaultCase):

    def ext4(self):
        for tool in ("mkfs.ext4", "losetup", "e2fsck"):
            if not shutil.which(tool):
                self.skipTest("%s is not installed" % tool)
        self.require_root()
        img = os.path.join(self.tmp, "state.img")
        with open(img, "wb") as f:
            f.truncate(16 << 20)
        # No ext4 journal: an error then only turns the file system read-only.
        run("mkfs.ext4", "-q", "-F", "-O", "^has_journal", img)

        def mount(m):
            p = run("mount", "-o", "loop,errors=remount-ro", img, m, check=False)
            if p.returncode != 0:
                self.skipTest("cannot mount an ext4 image on a loop device here: %s"
                              % p.stderr.strip())
        mnt = self.state_fs(mount)
        dev = os.path.basename(run("findmnt", "-no", "SOURCE", mnt).stdout.strip())
        sysfs = "/sys/fs/ext4/%s/trigger_fs_error" % dev
        if not os.path.exists(sysfs):
            self.skipTest("%s does not exist (ext4 without the error trigger)" % sysfs)
        return img, mnt, sysfs

    def test_file_system_error_turns_the_state_dir_read_only(self):
        img, mnt, trigger = self.ext4()
        a = self.agent(state_dir=mnt)
        self.stop_at_cleanup(a)
        c = a.client()
        self.assertEqual(c.post("/v1/prepare", json_body={"operation_id": "p-1"}).status, 200)
        before = c.all_records()
        k = a.sim_kernel()
        d0 = c.state()
        with open(trigger, "w") as f:
            f.write("luofleet test: simulated file-system error\n")

        r = c.post("/v1/cancel", json_body={"operation_id": "c-1"})
        self.assertProblem(r, 503, "state-dir-read-only", errno="EROFS")
        r = c.post("/v1/reboot", json_body={"operation_id": "r-1"})
        self.assertProblem(r, 409, "no-kernel-staged")
        self.assertEqual(a.sim_kernel(), k)
        self.assertEqual(self.assert_reads_work(a), d0)
        self.assertEqual(c.all_records(), before)
        status, check = self.journal_check(a)
        self.assertEqual((status, check["ok"]), (503, False))
        self.assertIn("EROFS", check["detail"])

        # Repair (fsck) and restart: all of it is there, and the refused id is free.
        a.stop()
        self.umount(os.path.join(mnt, "sim"))
        self.umount(mnt)
        p = run("e2fsck", "-fy", img, check=False)
        self.assertIn(p.returncode, (0, 1), p.stderr)
        run("mount", "-o", "loop,errors=remount-ro", img, mnt)
        run("mount", "--bind", os.path.join(self.tmp, "sim-outside"), os.path.join(mnt, "sim"))
        a.restart()
        c = a.client()
        self.assertEqual(c.all_records(), before)
        self.assertEqual(c.state()["index"], d0["index"])
        r = c.post("/v1/cancel", json_body={"operation_id": "c-1"})
        self.assertEqual((r.status, r.json["state"]), (200, "normal"))
        self.assertEqual(applied(a)["cancel"], k["applied"]["cancel"] + 1)

    def test_io_errors(self):
        img, mnt, _ = self.ext4()
        a = self.agent(state_dir=mnt)
        self.stop_at_cleanup(a)
        c = a.client()
        k = a.sim_kernel()
        d0 = c.state()
        # EXT4_IOC_SHUTDOWN (_IOR('X', 125, __u32)), EXT4_GOING_FLAGS_NOLOGFLUSH: from now on
        # the file system answers EIO.
        fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.ioctl(fd, 0x8004587D, struct.pack("I", 2))
        finally:
            os.close(fd)
        r = c.post("/v1/prepare", json_body={"operation_id": "p-1"})
        self.assertProblem(r, 503, "journal-error", errno="EIO")
        self.assertEqual(a.sim_kernel(), k)
        self.assertEqual(self.assert_reads_work(a), d0)
        status, check = self.journal_check(a)
        self.assertEqual((status, check["ok"]), (503, False))
        self.assertIn("EIO", check["detail"])


class TornJournalTest(FaultCase):
    """kill -9 in the middle of a journal write, at each record of a prepare."""

    def check_restart(self, a, acked, k_before, expect_state, expect_applied):
        """After the crash: restart; the acknowledged records are intact, the index did not go
        back, the kernel did what was expected exactly once, and the agent says what the
        kernel says."""
        self.assertEqual(a.returncodes[-1], -9, a.log())
        with open(a.journal_path(), "rb") as f:
            self.assertFalse(f.read().endswith(b"\n"), "no torn tail left by the crash point")
        a.restart()
        self.assertIn("Journal: dropped a torn tail of", a.log())
        c = a.client()
        d = c.state()
        recs = c.all_records()
        self.assertEqual(recs[:len(acked)], acked)
        self.assertGreaterEqual(d["index"], acked[-1]["index"])
        self.assertEqual([r["index"] for r in recs], list(range(1, d["index"] + 1)))
        k = a.sim_kernel()
        self.assertEqual((d["state"], k["state"]), (expect_state, expect_state))
        for event, n in expect_applied.items():
            self.assertEqual(k["applied"][event], k_before["applied"][event] + n, event)
        return c, d

    def crash_prepare(self, point):
        a = self.crash_agent(point)
        c = a.client()
        acked = c.all_records()
        k = a.sim_kernel()
        with self.assertRaises(OSError):
            a.direct().post("/v1/prepare", json_body={"operation_id": "t-p"})
        a.proc.wait()
        a.returncodes.append(a.proc.returncode)
        self.assertIn("crash point %s reached" % ":".join(point.split(":")[:2]), a.log())
        return a, acked, k

    def test_torn_running_record(self):
        # The intent never became durable: nothing was done, the id is free.
        a, acked, k = self.crash_prepare("journal-mid-record:operation")
        c, d = self.check_restart(a, acked, k, "normal", {"prepare": 0})
        self.assertEqual(c.all_records(), acked)
        r = c.post("/v1/prepare", json_body={"operation_id": "t-p"})
        self.assertEqual((r.status, r.json["state"]), (200, "prepared"))
        self.assertEqual(a.sim_kernel()["applied"]["prepare"], k["applied"]["prepare"] + 1)

    def test_torn_transition_record(self):
        # The kernel moved, its record was torn: the restart records the transition
        # (reconcile) and judges the operation by the kernel: succeeded, never redone.
        a, acked, k = self.crash_prepare("journal-mid-record:transition")
        c, d = self.check_restart(a, acked, k, "prepared", {"prepare": 1})
        self.assertOperation(d["operation"], action="prepare", status="succeeded", id="t-p")
        new = c.all_records()[len(acked):]
        self.assertEqual([(r["kind"], r.get("cause"), (r.get("operation") or {}).get("status"))
                          for r in new],
                         [("operation", None, "running"), ("transition", "reconcile", None),
                          ("operation", None, "succeeded")])
        r = c.post("/v1/prepare", json_body={"operation_id": "t-p"})
        self.assertEqual((r.status, r.json["operation"]["status"]), (200, "succeeded"))
        self.assertEqual(a.sim_kernel()["applied"]["prepare"], k["applied"]["prepare"] + 1)

    def test_torn_end_record(self):
        # The second operation record (the end) torn: same outcome, one prepare.
        a, acked, k = self.crash_prepare("journal-mid-record:operation:2")
        c, d = self.check_restart(a, acked, k, "prepared", {"prepare": 1})
        self.assertOperation(d["operation"], action="prepare", status="succeeded", id="t-p")
        r = c.post("/v1/prepare", json_body={"operation_id": "t-p"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(a.sim_kernel()["applied"]["prepare"], k["applied"]["prepare"] + 1)

    def test_durable_but_unacknowledged_running_record(self):
        # The running record reached the disk, the kernel was never called: the restart
        # ends the operation failed (kernel-error), and its id replays that without acting.
        a, acked, k = self.crash_prepare("journal-after-record:operation")
        with open(a.journal_path(), "rb") as f:
            self.assertTrue(f.read().endswith(b"\n"))
        a.restart()
        c = a.client()
        d = c.state()
        self.assertEqual(c.all_records()[:len(acked)], acked)
        self.assertEqual((d["state"], a.sim_kernel()["state"]), ("normal", "normal"))
        self.assertOperation(d["operation"], action="prepare", status="failed", id="t-p")
        r = c.post("/v1/prepare", json_body={"operation_id": "t-p"})
        self.assertProblem(r, 500, "kernel-error", replayed=True, operation_id="t-p")
        self.assertEqual(a.sim_kernel()["applied"]["prepare"], k["applied"]["prepare"])


if __name__ == "__main__":
    harness.main()
