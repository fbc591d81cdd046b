#!/usr/bin/env python3
"""test_stage_race.py: staging opens without races (issue 12, item 2, and the file:// part of
item 10), through the agent's API: the privileged helper opens staged kernels as root
(OPEN_STAGING, common/stagepath.c), so everything the confinement to --staging-dir refuses
must stay refused whatever a user who can write inside a staging directory does meanwhile.

- The swap race: a process exchanges a real directory inside the staging directory with a
  symlink to a root-only directory outside (renameat2(RENAME_EXCHANGE), in a loop, 10 s)
  while the test stages the kernel through that directory, asking for the digest of the
  file outside: it is never staged, and its digest never comes back (before the fix it did,
  after some 80 requests).
- A hard link of a root-only file made in a directory of the run user's: refused like a
  path outside (its digest never comes back); a hard link root made in root's directory is
  fine.
- A staging directory that is (or becomes) the run user's symlink to a root-only directory:
  nothing in it is taken.
- file:/// URLs name files the network process reads itself: only inside the staging
  directories, refused otherwise with the 422 path-not-allowed a path gets, before any
  operation exists, so that neither the answer nor a replay tells the size or the digest of
  a file the run user can read.

Run as root, the agent drops its network process to nobody (the harness's default); the
cases that need another owner skip otherwise."""

import hashlib
import os
import pwd
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import AgentTestCase, make_file  # noqa: E402

setUpModule, tearDownModule = harness.module_fixtures(__file__)

IS_ROOT = os.geteuid() == 0
ROOT_ONLY = "needs root: files of another owner, and the helper as root"
RACE_SECONDS = 10
NEUTRAL = "ab" * 32  # asked for where the file's own digest must not appear anywhere

# The swapper: exchanges two names as fast as it can for SECONDS, then prints the count.
SWAPPER = r"""
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
a, b, seconds = sys.argv[1].encode(), sys.argv[2].encode(), float(sys.argv[3])
AT_FDCWD, RENAME_EXCHANGE = -100, 2
swaps = 0
end = time.monotonic() + seconds
print("ready", flush=True)
while time.monotonic() < end:
    for _ in range(256):
        if libc.renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) == 0:
            swaps += 1
print(swaps, flush=True)
"""


def write(path, data, mode=0o600):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return hashlib.sha256(data).hexdigest()


class StageRaceTest(AgentTestCase):

    def setUp(self):
        super().setUp()
        # The staging directory (root's, 0755 as /boot is) and a root-only directory
        # outside it whose file the helper, as root, could read.
        self.boot = os.path.join(self.tmp, "boot")
        self.vault = os.path.join(self.tmp, "vault")
        os.mkdir(self.boot, 0o755)
        os.mkdir(self.vault, 0o700)
        self.secret_sha = write(os.path.join(self.vault, "vmlinuz"), b"root's secret " * 64)
        self.secret = os.path.join(self.vault, "vmlinuz")

    def staging_agent(self, *args):
        return self.agent("--staging-dir=" + self.boot, *args)

    def stage(self, c, path, sha):
        return c.put("/v1/kernel", json_body={"kernel": {"path": path, "sha256": sha}})

    def assertNothingAbout(self, a, sha):
        """The digest is nowhere: not in the journal (operations, audit) nor in the log."""
        with open(a.journal_path(), "rb") as f:
            self.assertNotIn(sha.encode(), f.read())
        self.assertNotIn(sha, a.log())

    def test_swap_race_never_opens_the_file_outside(self):
        # boot/d: a real directory with a kernel; boot/s: a symlink to the vault. The swapper
        # exchanges them; the test stages boot/d/vmlinuz. Had the helper opened the vault's
        # file, the digest-mismatch answer would carry its digest.
        d, s = os.path.join(self.boot, "d"), os.path.join(self.boot, "s")
        os.mkdir(d, 0o755)
        kernel_sha = write(os.path.join(d, "vmlinuz"), b"the kernel in d " * 64)
        os.symlink(self.vault, s)
        path = os.path.join(d, "vmlinuz")
        a = self.staging_agent()
        c = a.direct()  # the loop's throughput is the point: not through the proxy
        # Before the race: d is a directory, the answer is the kernel's digest.
        r = self.stage(c, path, NEUTRAL)
        self.assertProblem(r, 422, "digest-mismatch", field="kernel",
                           actual_sha256=kernel_sha)
        swapper = subprocess.Popen([sys.executable, "-c", SWAPPER, d, s, str(RACE_SECONDS)],
                                   stdout=subprocess.PIPE, text=True)
        self.addCleanup(swapper.kill)
        self.assertEqual(swapper.stdout.readline(), "ready\n")
        seen = {}
        while swapper.poll() is None:
            r = self.stage(c, path, NEUTRAL)
            code = r.json.get("code") if isinstance(r.json, dict) else None
            key = (r.status, code)
            seen[key] = seen.get(key, 0) + 1
            # Never the vault file's digest.
            self.assertNotEqual(r.status, 200, r)
            self.assertNotIn(self.secret_sha, r.body.decode("utf-8", "replace"), r)
            if code == "digest-mismatch":
                self.assertEqual(r.json["actual_sha256"], kernel_sha, r)
            else:
                # d was the symlink: outside once resolved, or a symlink met on the way.
                self.assertProblem(r, 422, "path-not-allowed", field="kernel")
        swaps = int(swapper.stdout.read().strip())
        swapper.stdout.close()
        self.assertEqual(swapper.wait(), 0)
        sys.stderr.write("swap race: %d swaps, answers %s\n" % (swaps, seen))
        # The race did run: names were exchanged, both kinds of answer were seen.
        self.assertGreater(swaps, 1000)
        self.assertGreater(seen.get((422, "digest-mismatch"), 0), 0, seen)
        self.assertGreater(seen.get((422, "path-not-allowed"), 0), 0, seen)
        self.assertIsNone(a.client().state()["staged"])
        self.assertNothingAbout(a, self.secret_sha)

    @unittest.skipUnless(IS_ROOT, ROOT_ONLY)
    def test_hard_link_of_a_root_file_in_the_run_users_directory(self):
        nobody = pwd.getpwnam("nobody")
        own = os.path.join(self.boot, "runuser")
        os.mkdir(own, 0o755)
        os.chown(own, nobody.pw_uid, nobody.pw_gid)
        link = os.path.join(own, "vmlinuz")
        os.link(self.secret, link)  # what the run user does where protected_hardlinks is off
        a = self.staging_agent()
        c = a.client()
        r = self.stage(c, link, NEUTRAL)
        self.assertProblem(r, 422, "path-not-allowed", field="kernel")
        self.assertNotIn("actual_sha256", r.json)
        self.assertNothingAbout(a, self.secret_sha)
        # Asked for with its own digest: not staged either.
        r = self.stage(c, link, self.secret_sha)
        self.assertProblem(r, 422, "path-not-allowed", field="kernel")
        # A link root made in root's own directory is root's business: taken.
        kpath, ksha = make_file(self.boot, "vmlinuz-6.1", 4096)
        os.link(kpath, os.path.join(self.boot, "vmlinuz"))
        d = self.assertStateDoc(self.stage(c, os.path.join(self.boot, "vmlinuz"), ksha))
        self.assertEqual(d["staged"]["kernel"]["sha256"], ksha)

    @unittest.skipUnless(IS_ROOT, ROOT_ONLY)
    def test_staging_directory_turned_into_the_run_users_symlink(self):
        # STATE_DIR/kernels belongs to the run user: it can replace the directory with a
        # symlink to a root-only one. The helper does not follow that symlink.
        nobody = pwd.getpwnam("nobody")
        state = os.path.join(self.tmp, "state")
        os.mkdir(state, 0o755)
        os.chown(state, nobody.pw_uid, nobody.pw_gid)
        kernels = os.path.join(state, "kernels")
        os.symlink(self.vault, kernels)
        os.lchown(kernels, nobody.pw_uid, nobody.pw_gid)
        a = self.agent("--staging-dir=" + kernels)
        c = a.client()
        for path in (os.path.join(kernels, "vmlinuz"), self.secret):
            r = self.stage(c, path, NEUTRAL)
            self.assertProblem(r, 422, "path-not-allowed", field="kernel")
            self.assertNotIn("actual_sha256", r.json)
        self.assertNothingAbout(a, self.secret_sha)
        r = self.stage(c, self.secret, self.secret_sha)
        self.assertProblem(r, 422, "path-not-allowed", field="kernel")
        # root's own symlink to a directory (a linked /boot) is followed.
        a.stop()
        os.unlink(kernels)
        real = os.path.join(self.tmp, "real-kernels")
        os.mkdir(real, 0o755)
        kpath, ksha = make_file(real, "vmlinuz", 4096)
        os.symlink(real, kernels)
        a2 = self.agent("--staging-dir=" + kernels)
        d = self.assertStateDoc(self.stage(a2.client(), os.path.join(kernels, "vmlinuz"), ksha))
        self.assertEqual(d["staged"]["kernel"]["sha256"], ksha)

    def test_file_urls_only_inside_the_staging_directories(self):
        # A file the run user can read (0644 in a 0755 directory): before, file:// read it
        # and the digest-mismatch answer (and its replay) told its size and SHA-256.
        public = os.path.join(self.tmp, "public")
        os.mkdir(public, 0o755)
        ppath = os.path.join(public, "hostname")
        psha = write(ppath, b"readable by the run user\n", 0o644)
        kpath, ksha = make_file(self.boot, "vmlinuz", 4096)
        os.chmod(kpath, 0o644)
        os.symlink(ppath, os.path.join(self.boot, "escape"))
        # Downloads land in STATE_DIR/kernels and are staged from there: allowed too.
        kernels = os.path.join(self.tmp, "agent1-state", "kernels")
        a = self.staging_agent("--staging-dir=" + kernels)
        self.assertEqual(a.state_dir, os.path.dirname(kernels))
        c = a.client()
        allowed = [self.boot, kernels]
        outside = ["file://" + ppath, "file://" + self.secret, "file:///etc/passwd",
                   "file://" + os.path.join(self.boot, "escape"), "file://" + self.boot,
                   "file://" + self.boot + "-sibling/vmlinuz", "file:///proc/self/environ",
                   "FILE://" + ppath, "file:///" + ppath[1:].replace("/", "%2F")]
        for url in outside:
            with self.subTest(url=url):
                body = {"kernel": {"url": url, "sha256": NEUTRAL}, "operation_id": "f-1"}
                r = c.put("/v1/kernel", json_body=body)
                self.assertProblem(r, 422, "path-not-allowed", field="kernel",
                                   allowed_dirs=allowed)
                self.assertEqual(r.json["detail"],
                                 "kernel: %s is not inside an allowed staging directory "
                                 "(symbolic links are not followed); allowed: %s (the agent's "
                                 "--staging-dir)" % (url, ", ".join(allowed)))
                self.assertNotIn("actual_sha256", r.json)
                self.assertNotIn("size", r.json)
        # Refused before an operation exists: nothing ran, nothing to replay.
        self.assertIsNone(c.state()["operation"])
        self.assertFalse([x for x in c.history("kind=operation")["records"]
                          if x["operation"]["id"] == "f-1"])
        # Spelt so that the path would leave the directory: refused as malformed.
        for url in ("file://" + self.boot + "/../public/hostname",
                    "file://" + self.boot + "/%2e%2e/public/hostname",
                    "file://" + self.boot + "//vmlinuz", "file://" + kpath + "?x",
                    "file://" + kpath + "#x", "file://" + self.boot + "/%00", "file:///%zz"):
            with self.subTest(url=url):
                r = c.put("/v1/kernel", json_body={"kernel": {"url": url, "sha256": ksha}})
                self.assertProblem(r, 400, "invalid-field", field="kernel")
        self.assertNothingAbout(a, psha)
        # Asked for with its own digest: refused the same way, nothing staged.
        r = c.put("/v1/kernel", json_body={"kernel": {"url": "file://" + ppath, "sha256": psha}})
        self.assertProblem(r, 422, "path-not-allowed", field="kernel")
        self.assertIsNone(c.state()["staged"])
        # Inside: downloaded (percent-encoding decoded), a missing one fails as before.
        for i, url in enumerate(("file://" + kpath, "file://" + kpath.replace("vmlinuz",
                                                                              "vml%69nuz"))):
            r = c.put("/v1/kernel", json_body={"kernel": {"url": url, "sha256": ksha},
                                               "operation_id": "in-%d" % i})
            self.assertEqual(r.status, 202, r)
            op = self.wait_op(c, "in-%d" % i)
            self.assertEqual(op["status"], "succeeded", op)
        r = c.put("/v1/kernel", json_body={"kernel": {"url": "file://" + kpath + ".missing",
                                                      "sha256": ksha}, "operation_id": "m-1"})
        self.assertEqual(r.status, 202, r)
        self.assertEqual(self.wait_op(c, "m-1")["error"]["code"], "download-failed")

    def wait_op(self, c, op_id):
        def done():
            op = c.state()["operation"]
            return op if op and op["id"] == op_id and op["status"] != "running" else None
        return harness.wait_for(done, timeout=20, what="operation %s" % op_id)


if __name__ == "__main__":
    harness.main()
