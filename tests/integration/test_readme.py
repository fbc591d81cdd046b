#!/usr/bin/env python3
"""The README's "The agent in five minutes", run as written.

The shell block is taken from README.md itself, so the guide cannot drift from the agent:
the agent is started with exactly the command line of the Makefile's `run` target (what the
block's `make run &` starts once built), in a scratch directory that stands for the checkout,
and every other line of the block runs unchanged in bash, except:
  - `make run &` itself (the agent is already running, built by the build under test),
  - `localhost:8421` becomes the test's own port,
  - the block's "a moment later" (after the 202 of the reboot) becomes a poll until the new
    boot answers, as a reader would wait.
Each step's output is checked against what the README's comments say it shows."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

README = os.path.join(harness.REPO_ROOT, "README.md")
MAKEFILE = os.path.join(harness.REPO_ROOT, "Makefile")


def five_minutes_block():
    """The first ```sh block of the README's "## The agent in five minutes" section."""
    with open(README) as f:
        text = f.read()
    section = text.split("## The agent in five minutes", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"```sh\n(.*?)```", section, re.S)
    if not m:
        raise AssertionError("README: no sh block in 'The agent in five minutes'")
    return m.group(1)


def make_run_recipe():
    """The `run` target's recipe lines, joined (backslash continuations undone)."""
    with open(MAKEFILE) as f:
        text = f.read()
    m = re.search(r"^run:.*\n((?:\t.*\n)+)", text, re.M)
    if not m:
        raise AssertionError("Makefile: no run target")
    lines = m.group(1).replace("\\\n", " ").splitlines()
    return [ln.strip() for ln in lines if ln.strip()]


class ReadmeFiveMinutesTest(harness.AgentTestCase):

    def start_make_run_agent(self, checkout, port):
        """What `make run` runs after its build: its recipe with CURDIR and LISTEN set, the
        agent binary the one under test. Returns the process, listening."""
        agent = None
        for line in make_run_recipe():
            line = line.replace("$(CURDIR)", checkout).replace("$(LISTEN)",
                                                               "127.0.0.1:%d" % port)
            # RUN_AS: --user=$(RUN_USER) (default nobody) when make runs as root, else nothing
            line = line.replace("$(RUN_AS)", "--user=nobody" if os.geteuid() == 0 else "")
            words = shlex.split(line)
            if words[0] == "exec":
                agent = words[1:]
                continue
            subprocess.run(line, shell=True, cwd=checkout, check=True)
        self.assertIsNotNone(agent, "the run target runs no agent")
        self.assertEqual(agent[0], "build/bin/luofleet-agent")
        agent[0] = harness.agent_path()
        out = open(os.path.join(self.tmp, "make-run.stdout"), "wb")
        err = open(os.path.join(self.tmp, "make-run.stderr"), "wb")
        self.addCleanup(out.close)
        self.addCleanup(err.close)
        p = subprocess.Popen(agent, cwd=checkout, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=err)
        self.addCleanup(self.stop, p)
        line = b"luofleet-agent: listening on http://127.0.0.1:%d\n" % port
        harness.wait_for(lambda: line in open(out.name, "rb").read() or p.poll() is not None,
                         timeout=10, what="the agent of make run")
        self.assertIsNone(p.poll(), open(err.name, "rb").read().decode())
        return p

    def stop(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            self.assertEqual(p.wait(10 * harness.SCALE), 0)

    def test_the_agent_in_five_minutes(self):
        block = five_minutes_block()
        self.assertIn("make run &", block)
        checkout = os.path.join(self.tmp, "checkout")
        os.mkdir(checkout)
        port = harness.free_port()
        self.start_make_run_agent(checkout, port)

        script = ["set -eu"]
        mark = 0
        for line in block.splitlines():
            if line.startswith("make run &"):
                continue
            line = line.replace("localhost:8421", "127.0.0.1:%d" % port)
            if line.startswith("# 202:"):
                # "a moment later": wait for the new boot as a reader would.
                line = ("for i in $(seq 200); do curl -s 127.0.0.1:%d/v1/state | "
                        "grep -q '\"state\":\"updated\"' && break; sleep 0.05; done" % port)
            if line and not line.startswith((" ", "#")) and not script[-1].endswith("\\"):
                mark += 1
                script.append("echo; echo '---- step %d'" % mark)
            script.append(line)
        r = subprocess.run(["bash", "-c", "\n".join(script)], cwd=checkout,
                           capture_output=True, timeout=60 * harness.SCALE)
        out = r.stdout.decode()
        self.assertEqual(r.returncode, 0, "stdout:\n%s\nstderr:\n%s" % (out, r.stderr.decode()))
        steps = [s.strip() for s in re.split(r"^---- step \d+\n", out, flags=re.M)[1:]]
        # 1 state, 2 head (no output), 3 stage, 4 prepare, 5 reboot, 6 the wait, 7 state,
        # 8 blackout, 9 finish.
        self.assertEqual(len(steps), 9, out)
        first = json.loads(steps[0])
        self.assertEqual((first["state"], first["index"]), ("normal", 1))  # as commented
        self.assertEqual(steps[1], "")
        staged = json.loads(steps[2])
        self.assertEqual(staged["staged"]["kernel"]["path"],
                         os.path.join(checkout, "run-staging", "vmlinuz"), staged)
        self.assertEqual(staged["operation"]["status"], "succeeded")
        self.assertEqual(json.loads(steps[3])["state"], "prepared")
        self.assertEqual(json.loads(steps[4])["operation"]["action"], "reboot")
        after = json.loads(steps[6])
        self.assertEqual(sorted(after), ["boot_id", "index", "state"])
        self.assertEqual(after["state"], "updated")
        self.assertNotEqual(after["boot_id"], first["boot_id"])
        self.assertRegex(steps[7], r"^[0-9]+$")  # blackout_ms of the reboot record
        self.assertEqual(json.loads(steps[8])["state"], "normal")


if __name__ == "__main__":
    harness.main()
