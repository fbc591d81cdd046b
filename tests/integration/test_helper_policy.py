"""test_helper_policy.py: the privileged helper enforces the policy itself (issue 12, item 1).

The attack, as a test: an attacker who has taken over the agent's network process (the
unprivileged run user, nobody) holds its end of the helper's command channel and writes
whatever it likes there. The test gets that end the way such code has it, a duplicate of
the network process's own descriptor (pidfd_getfd(2), as root), hands it to a child that
runs as nobody, and that child speaks the wire protocol (kernel/privsep.c,
docs/privsep.md) directly: KEXEC_LOAD with a descriptor, with a path outside the staging
directories (by name and through a symlink), with a digest that is not the file's, with a
command line that is not printable; REBOOT and REBOOT_EX while the host is normal. Each is
refused with its exact errno, the helper logs why, and the simulated host stays normal
with nothing carried out (kernel.json "applied"). A well-formed load of a staged image is
the control that shows the channel works: it loads, and the reboot from normal after it is
still refused.

The channel is then out of step with the agent's own count (the attacker took numbers);
the agent is not asked for another command before it stops. Its query channel is left
alone, so GET /v1/state still answers.

Signatures: with --require-signature the helper must refuse an unsigned (or wrongly signed)
kernel itself. That needs the agent's main.c to pass --trusted-keys and
--require-signature to the helper at its fork (privsep_files.trusted_keys_dir,
require_signature); until it does, that case is an expected failure (an unexpected success
then says the decorator can go). The signed normal flow (stage, prepare, reboot, finish)
runs through the new KEXEC_LOAD either way.

Root only (the drop to nobody, and pidfd_getfd of another user's descriptor)."""

import array
import ctypes
import errno
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import AgentTestCase, make_file  # noqa: E402

setUpModule, tearDownModule = harness.module_fixtures(__file__)

IS_ROOT = os.geteuid() == 0
ROOT_ONLY = "needs root: the network process drops to nobody only when started as uid 0"
OPENSSL = shutil.which("openssl")
SYS_pidfd_getfd = 438  # the same number on every architecture (the generic table)


def luofleetctl():
    return os.path.join(os.path.dirname(harness.agent_path()), "luofleetctl")


def helper_of(agent):
    """The agent's privileged helper: its one child named luofleet-priv."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % pid) as f:
                st = f.read()
        except OSError:
            continue
        comm = st[st.index("(") + 1:st.rindex(")")]
        ppid = int(st[st.rindex(")") + 2:].split()[1])
        if ppid == agent.pid and comm == "luofleet-priv":
            found.append(int(pid))
    if len(found) != 1:
        raise AssertionError("agent %d has helpers %r" % (agent.pid, found))
    return found[0]


def seqpacket_fds(pid):
    """Duplicates of pid's AF_UNIX SOCK_SEQPACKET descriptors (pidfd_getfd), by number:
    the network process's ends of the helper's three channels, command first (they are
    made in that order, each taking the lowest free numbers)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    out = []
    try:
        for name in sorted(os.listdir("/proc/%d/fd" % pid), key=int):
            try:
                if not os.readlink("/proc/%d/fd/%s" % (pid, name)).startswith("socket:"):
                    continue
            except OSError:
                continue
            fd = libc.syscall(SYS_pidfd_getfd, pidfd, int(name), 0)
            if fd < 0:
                e = ctypes.get_errno()
                raise OSError(e, "pidfd_getfd(%d, %s): %s" % (pid, name, os.strerror(e)))
            s = socket.socket(fileno=fd)
            if s.family == socket.AF_UNIX and s.type == socket.SOCK_SEQPACKET:
                out.append((int(name), s))
            else:
                s.detach()
                os.close(fd)
    finally:
        os.close(pidfd)
    return out


# The attacker: runs as nobody with the command channel as the descriptor argv[2]; reads a
# list of requests (JSON) on stdin, speaks the wire protocol, prints the helper's answers.
ATTACKER = r'''
import array, json, os, socket, struct, sys

MAGIC, VERSION = 0x5350464c, 2
TYPES = {"GET_STATE": 2, "KEXEC_LOAD": 7, "KEXEC_UNLOAD": 8, "REBOOT": 9, "REBOOT_EX": 15,
         "SET_EVENT": 6}
s = socket.socket(fileno=int(sys.argv[2]))
s.settimeout(float(sys.argv[1]))

def field(v, n):
    b = v.encode() if isinstance(v, str) else v
    assert len(b) < n
    return b + b"\0" * (n - len(b))

def req(seq, r):
    cmd = r.get("cmdline", "").encode()
    head = struct.pack("<IHHQIIQ", MAGIC, VERSION, TYPES[r["type"]], seq, r.get("arg", 0),
                       len(cmd), 0)
    return (head + field(cmd, 2048) + field(r.get("kernel", ""), 4096)
            + field(r.get("initrd", ""), 4096) + field(r.get("kernel_sha256", ""), 72)
            + field(r.get("initrd_sha256", ""), 72) + field(r.get("key_id", ""), 72)
            + field(r.get("signature", ""), 96))

def call(data, fds=()):
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    s.sendmsg([data], anc)
    data, anc, flags, _ = s.recvmsg(4096, socket.CMSG_SPACE(16))
    magic, version, typ, seq, result = struct.unpack_from("<IHHQi", data)
    msg = data[744 - 512:].split(b"\0", 1)[0].decode("utf-8", "replace")
    return {"len": len(data), "magic": magic, "version": version, "type": typ, "seq": seq,
            "result": result, "msg": msg}

out = {"uid": os.getuid(), "euid": os.geteuid()}
# Any datagram takes a number: a malformed one tells us the helper's count.
out["probe"] = call(b"\0" * 16)
seq = out["probe"]["seq"]
# A query on this channel is refused (EPROTO) only if it is the command channel.
seq += 1
out["which"] = call(req(seq, {"type": "GET_STATE"}))
out["results"] = []
for r in json.load(sys.stdin):
    fds = [os.open(p, os.O_RDONLY | os.O_CLOEXEC) for p in r.get("fds", [])]
    seq += 1
    out["results"].append(call(req(seq, r), fds))
    for fd in fds:
        os.close(fd)
print(json.dumps(out))
'''


@unittest.skipUnless(IS_ROOT, ROOT_ONLY)
class HelperPolicyTest(AgentTestCase):

    def setUp(self):
        super().setUp()
        self.nobody = pwd.getpwnam("nobody")
        # The dropped network process (and the simulated kexec's re-executed agent) reach
        # the state directory and the files by path.
        os.chmod(self.tmp, 0o755)
        base = os.path.dirname(self.tmp)
        mode = os.stat(base).st_mode
        if not mode & 0o001:
            os.chmod(base, (mode & 0o7777) | 0o011)

    def root_dir(self, name):
        """A 0700 root directory: only root (the helper) may look inside."""
        d = os.path.join(self.tmp, name)
        os.mkdir(d, 0o700)
        os.chmod(d, 0o700)
        return d

    def attack(self, a, requests):
        """Run ATTACKER as nobody on a's command channel; its answers."""
        try:
            socks = seqpacket_fds(a.pid)
        except OSError as e:
            if e.errno in (errno.EPERM, errno.ENOSYS):
                self.skipTest("pidfd_getfd not allowed here: %s" % e)
            raise
        try:
            self.assertGreaterEqual(len(socks), 3, "the agent's channels: %r" % socks)
            cmd = socks[0][1]
            os.set_inheritable(cmd.fileno(), True)
            p = subprocess.run(
                [sys.executable, "-c", ATTACKER, str(10 * harness.SCALE), str(cmd.fileno())],
                input=json.dumps(requests).encode(), stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, user=self.nobody.pw_uid, group=self.nobody.pw_gid,
                extra_groups=[], pass_fds=(cmd.fileno(),), timeout=60 * harness.SCALE)
        finally:
            # Never keep the channels: the helper must see the agent hang up at its stop.
            for _, s in socks:
                s.close()
        self.assertEqual(p.returncode, 0, p.stderr.decode("utf-8", "replace"))
        out = json.loads(p.stdout)
        self.assertEqual((out["uid"], out["euid"]), (self.nobody.pw_uid, self.nobody.pw_uid))
        for rep in [out["probe"], out["which"]] + out["results"]:
            self.assertEqual((rep["len"], rep["magic"], rep["version"]), (744, 0x5350464c, 2),
                             rep)
        self.assertEqual(out["probe"]["result"], -errno.EPROTO, out)
        self.assertEqual(out["which"]["result"], -errno.EPROTO,
                         "not the command channel: a query was answered there (%r)" % out)
        return out["results"]

    def assert_nothing_carried_out(self, a, loads=0):
        k = a.sim_kernel()
        self.assertEqual(k["state"], "normal", k)
        self.assertFalse(k["reboot_pending"], k)
        self.assertEqual(k["boots"], 1, k)
        applied = k["applied"]
        self.assertEqual((applied["load"], applied["prepare"], applied["freeze"],
                          applied["kexec"]), (loads, 0, 0, 0), k)
        return k

    def test_attack_from_the_network_side(self):
        stage = self.root_dir("boot")
        kpath, ksha = make_file(stage, "vmlinuz", 8192)
        os.chmod(kpath, 0o600)  # root's alone, like Debian's /boot/vmlinuz-*
        # Outside: a kernel of the attacker's, readable by anyone, and a way to it from inside.
        evil, esha = make_file(self.tmp, "evil-vmlinuz", 4096)
        os.chmod(evil, 0o644)
        os.symlink(evil, os.path.join(stage, "escape"))
        a = self.agent("--user=nobody", "--staging-dir=" + stage)
        self.assertEqual(pwd.getpwuid(os.stat("/proc/%d" % a.pid).st_uid).pw_name, "nobody")
        h = helper_of(a)

        load = {"type": "KEXEC_LOAD", "cmdline": "init=/bin/sh"}
        results = self.attack(a, [
            # the old protocol: an open file passed along (any descriptor is malformed now)
            dict(load, kernel=kpath, kernel_sha256=ksha, fds=[evil]),
            # a kernel from anywhere, by name and through a symlink out of the staging dir
            dict(load, kernel=evil, kernel_sha256=esha),
            dict(load, kernel=os.path.join(stage, "escape"), kernel_sha256=esha),
            dict(load, kernel=os.path.join(stage, "..", "evil-vmlinuz"), kernel_sha256=esha),
            # the staged kernel with another digest (the attacker's), and a missing one
            dict(load, kernel=kpath, kernel_sha256=esha),
            dict(load, kernel=os.path.join(stage, "missing"), kernel_sha256=ksha),
            # a kernel with an initrd from outside
            dict(load, arg=1, kernel=kpath, kernel_sha256=ksha, initrd=evil,
                 initrd_sha256=esha),
            # a command line that is not printable
            dict(load, kernel=kpath, kernel_sha256=ksha, cmdline="quiet\ninit=/bin/sh"),
            # reboot from normal: a plain kexec nobody prepared
            {"type": "REBOOT"},
            {"type": "REBOOT_EX", "cmdline": "operation=x index=1"},
        ])
        self.assertEqual([r["result"] for r in results], [
            -errno.EPROTO,
            -errno.EXDEV, -errno.EXDEV, -errno.EXDEV,
            -errno.EBADMSG, -errno.ENOENT,
            -errno.EXDEV,
            -errno.EINVAL,
            -errno.EPERM, -errno.EPERM,
        ], results)
        self.assertEqual(results[-1]["msg"], "the kernel is normal, not prepared: a reboot now "
                         "would be a kexec no update prepared")
        # Nothing reached the simulated kernel; the helper is the same one, still serving.
        self.assert_nothing_carried_out(a)
        self.assertIsNone(a.sim_kernel()["kexec"])
        self.assertEqual(helper_of(a), h)
        self.assertEqual(a.client().state()["state"], "normal")  # the query channel is fine
        log = a.log()
        for line in (
                "Privileged helper: rejected a malformed request on the command channel "
                "(10584 bytes, 1 fds, type 7): not acted on",
                "Privileged helper: refused KEXEC_LOAD (EXDEV): the kernel %s is not inside a "
                "staging directory" % evil,
                "Privileged helper: refused KEXEC_LOAD (EBADMSG): the kernel %s has SHA-256 %s, "
                "not %s" % (kpath, ksha, esha),
                "Privileged helper: refused KEXEC_LOAD (EXDEV): the initrd %s is not inside a "
                "staging directory" % evil,
                "Privileged helper: refused KEXEC_LOAD (EINVAL): the command line has a byte "
                "0x0a at offset 5",
                "Privileged helper: refused REBOOT (EPERM): the kernel is normal, not prepared",
                "Privileged helper: refused REBOOT_EX (EPERM): the kernel is normal"):
            self.assertIn(line, log)

        # The control: the staged kernel with its digest loads (the channel works, and what
        # the helper opened as root is what got loaded), and a reboot is still refused.
        results = self.attack(a, [dict(load, kernel=kpath, kernel_sha256=ksha),
                                  {"type": "REBOOT"}])
        self.assertEqual([r["result"] for r in results], [0, -errno.EPERM], results)
        k = self.assert_nothing_carried_out(a, loads=1)
        self.assertEqual(k["kexec"]["kernel_sha256"], ksha)

    def keys(self):
        keys = os.path.join(self.tmp, "trusted")
        os.mkdir(keys, 0o755)
        priv = os.path.join(self.tmp, "release.key")
        subprocess.run([OPENSSL, "genpkey", "-algorithm", "ed25519", "-out", priv], check=True,
                       capture_output=True)
        subprocess.run([OPENSSL, "pkey", "-in", priv, "-pubout", "-out",
                        os.path.join(keys, "release.pem")], check=True, capture_output=True)
        os.chmod(os.path.join(keys, "release.pem"), 0o644)
        return keys, priv

    def sign(self, priv, ksha, cmdline):
        p = subprocess.run([luofleetctl(), "sign", "--key=" + priv, "--kernel-sha256=" + ksha,
                            "--cmdline=" + cmdline, "--key-id=release"], check=True,
                           capture_output=True)
        return json.loads(p.stdout)

    # main.c hands --trusted-keys and --require-signature to the helper at its fork
    # (privsep_files.trusted_keys_dir, .require_signature): the helper itself refuses.
    def test_unsigned_kernel_refused_when_signatures_are_required(self):
        if not OPENSSL:
            raise AssertionError("needs openssl(1)")
        keys, priv = self.keys()
        stage = self.root_dir("boot")
        kpath, ksha = make_file(stage, "vmlinuz", 8192)
        os.chmod(kpath, 0o600)
        a = self.agent("--user=nobody", "--staging-dir=" + stage, "--trusted-keys=" + keys,
                       "--require-signature")
        sig = self.sign(priv, ksha, "quiet")
        load = {"type": "KEXEC_LOAD", "kernel": kpath, "kernel_sha256": ksha}
        results = self.attack(a, [
            dict(load, cmdline="init=/bin/sh"),  # unsigned
            dict(load, cmdline="init=/bin/sh", key_id="release",
                 signature=sig["ed25519"]),  # signed over another command line
            dict(load, cmdline="quiet", key_id="release", signature=sig["ed25519"]),
        ])
        self.assertEqual([r["result"] for r in results],
                         [-errno.EKEYREJECTED, -errno.EKEYREJECTED, 0], results)
        self.assertIn("Privileged helper: refused KEXEC_LOAD (EKEYREJECTED): the kernel is not "
                      "signed and this agent loads only signed kernels", a.log())
        self.assertEqual(self.assert_nothing_carried_out(a, loads=1)["kexec"]["cmdline"],
                         "quiet")

    def test_signed_cycle_through_the_helper(self):
        """The normal flow through the helper's checks: a signed staging of a root-only kernel
        from a root-only staging directory, prepare, reboot, finish."""
        if not OPENSSL:
            self.skipTest("needs openssl(1) to make Ed25519 keys")
        keys, priv = self.keys()
        stage = self.root_dir("boot")
        kpath, ksha = make_file(stage, "vmlinuz", 8192)
        os.chmod(kpath, 0o600)
        a = self.agent("--user=nobody", "--staging-dir=" + stage, "--trusted-keys=" + keys,
                       "--require-signature")
        c = a.client()
        body = {"kernel": {"path": kpath, "sha256": ksha.upper()}, "cmdline": "ro quiet",
                "operation_id": "pol-stage"}
        r = c.put("/v1/kernel", json_body=body)
        self.assertProblem(r, 422, "signature-required", field="signature")
        # Signed, but not printable: refused before anything is opened (the helper would
        # refuse it too), nothing loaded.
        r = c.put("/v1/kernel", json_body=dict(body, cmdline="ro\tquiet", operation_id="pol-tab",
                                               signature=self.sign(priv, ksha, "ro\tquiet")))
        self.assertProblem(r, 400, "invalid-field", field="cmdline")
        self.assertIsNone(a.sim_kernel()["kexec"])
        r = c.put("/v1/kernel", json_body=dict(body, signature=self.sign(priv, ksha,
                                                                         "ro quiet")))
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["staged"]["signed_by"], "release")
        self.assertEqual(a.sim_kernel()["kexec"]["cmdline"], "ro quiet")
        before = c.state()
        self.assertEqual(c.post("/v1/prepare", json_body={"operation_id": "pol-prep"})
                         .json["state"], "prepared")
        r = a.direct().post("/v1/reboot", json_body={"operation_id": "pol-reboot"})
        self.assertEqual(r.status, 202, r)
        deadline = time.monotonic() + 10 * harness.SCALE
        d = a.wait_ready(timeout=10 * harness.SCALE)
        while d["boot_id"] == before["boot_id"]:
            self.assertLess(time.monotonic(), deadline, "no new boot")
            time.sleep(0.02)
            d = a.wait_ready(timeout=10 * harness.SCALE)
        self.assertEqual(d["state"], "updated")
        self.assertEqual(a.client().post("/v1/finish", json_body={"operation_id": "pol-fin"})
                         .json["state"], "normal")
        k = a.sim_kernel()
        self.assertEqual({n: k["applied"][n] for n in ("load", "prepare", "freeze", "kexec")},
                         {"load": 1, "prepare": 1, "freeze": 1, "kexec": 1})
        self.assertNotIn("Privileged helper: refused", a.log())


if __name__ == "__main__":
    harness.main()
