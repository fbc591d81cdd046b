#!/usr/bin/env python3
"""Doc tests: run the command blocks of a Markdown document and compare their output with
the output the document shows (docs/testing.md, "Doc tests").

    doctest.py RULES [--keep] [--list]

RULES is a small rules file (tests/doc/*.rules) naming the document, the sections to run
and what legitimately varies in its outputs. Python 3 standard library only.

The Markdown convention:
  - a ```sh (or ```bash) block in a selected section is run; ```sh-example, or a block
    preceded by the comment line <!-- doc-test: skip REASON -->, is illustrative only;
  - the fenced block right after a run block (only blank lines or doc-test comments in
    between) with no language is its expected output (standard output and standard error
    as a terminal shows them);
  - a line `...` in an expected output stands for any number of lines (also none);
  - comments before a run block: <!-- doc-test: status N --> (expected exit status of the
    block's last command, default 0), <!-- doc-test: timeout SECONDS -->,
    <!-- doc-test: cleanup --> (run at the end even when an earlier block failed),
    <!-- doc-test: normalize REGEX => REPLACEMENT --> (this block's output only),
    <!-- doc-test: any-order REGEX --> (consecutive output lines matching REGEX may come in
    any order: written by concurrent threads).

The blocks of one document run in order in one bash session, in a fresh scratch directory
(the working directory, and TMPDIR below it), with PATH starting with the build's bin
directory. The session is the leader of its own process group: after the last block every
process the document started must have been stopped by the document itself (its clean-up
block kills the PIDs it recorded); anything left fails the test, and is then killed.
"""

import argparse
import difflib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
SCALE = float(os.environ.get("LUOFLEET_TEST_TIMEOUT_SCALE", "1") or "1")
MARK = "__DOC_TEST_BLOCK_END__"

# Named normalizations a rules file may ask for with `normalize NAME`.
NAMED = {
    "timestamps": (r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z\b", "<TIME>"),
    "milliseconds": (r"\b\d+ ?ms\b", "<N>ms"),
    "boot-ids": (r"\b[0-9a-f]{8}(?:-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})?\b",
                 "<BOOT-ID>"),
    "sha256": (r"\b[0-9a-f]{64}\b", "<SHA256>"),
    "mktemp": (r"/tmp/tmp\.[A-Za-z0-9]{10}\b", "<MKTEMP>"),
}


class RulesError(Exception):
    pass


class Rules:
    def __init__(self, path):
        self.path = path
        self.doc = None
        self.sections = []
        self.ports = []
        self.uname_r = None
        self.normalize = []  # (compiled regex, replacement)
        self.links = []
        self.block_timeout = 120.0
        with open(path) as f:
            for n, raw in enumerate(f, 1):
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                key, _, value = line.partition(" ")
                value = value.strip()
                try:
                    self._set(key, value)
                except (ValueError, re.error) as e:
                    raise RulesError("%s:%d: %s" % (path, n, e))
        if not self.doc:
            raise RulesError("%s: no `doc` line" % path)
        if not self.sections:
            raise RulesError("%s: no `section` line" % path)

    def _set(self, key, value):
        if key == "doc":
            self.doc = value
        elif key == "section":
            self.sections.append(value)
        elif key == "ports":
            self.ports = [int(p) for p in value.split()]
            if any(not 1 <= p <= 65535 for p in self.ports):
                raise ValueError("a port out of range")
        elif key == "uname-r":
            self.uname_r = value
        elif key == "link":
            self.links.append(value)
        elif key == "block-timeout":
            self.block_timeout = float(value)
        elif key == "normalize":
            self.normalize.append(parse_normalize(value))
        else:
            raise ValueError("unknown key %r" % key)


def parse_normalize(value):
    """`NAME` (see NAMED) or `REGEX => REPLACEMENT` (Python syntax)."""
    if "=>" not in value:
        if value not in NAMED:
            raise ValueError("unknown normalization %r (known: %s; or REGEX => TEXT)"
                             % (value, ", ".join(sorted(NAMED))))
        pat, repl = NAMED[value]
    else:
        pat, _, repl = value.partition("=>")
        pat, repl = pat.strip(), repl.strip()
    return re.compile(pat, re.M), repl


# ---------------------------------------------------------------------------------------
# Markdown


class Block:
    def __init__(self, lang, text, line, section, directives):
        self.lang = lang
        self.text = text
        self.line = line          # 1-based line of the opening fence
        self.section = section
        self.directives = directives
        self.expected = None      # the output Block, for run blocks
        self.skip = None          # reason, for illustrative blocks

    def directive(self, name):
        for d in self.directives:
            word, _, rest = d.partition(" ")
            if word == name:
                return rest.strip()
        return None


DIRECTIVE = re.compile(r"^\s*<!--\s*doc-test:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(```+)\s*([A-Za-z0-9_+-]*)\s*$")
HEADING = re.compile(r"^(#{2,6})\s+(.*?)\s*$")


def parse_markdown(text):
    """Every fenced block, with the level-2 section it sits in and the doc-test comments
    right before it. Whether a block directly follows the previous one (nothing but blank
    lines and comments in between) is recorded as .follows."""
    blocks = []
    headings = []
    lines = text.split("\n")
    section = None
    pending = []
    gap_clean = False  # since the last block ended: only blank lines and comments
    i = 0
    while i < len(lines):
        line = lines[i]
        m = FENCE.match(line)
        if m:
            fence, lang = m.group(1), m.group(2)
            body = []
            j = i + 1
            while j < len(lines) and not lines[j].startswith(fence):
                body.append(lines[j])
                j += 1
            if j == len(lines):
                raise RulesError("line %d: unterminated code block" % (i + 1))
            b = Block(lang, "\n".join(body) + "\n" if body else "", i + 1, section, pending)
            b.follows = gap_clean and bool(blocks)
            blocks.append(b)
            pending = []
            gap_clean = True
            i = j + 1
            continue
        h = HEADING.match(line)
        if h and len(h.group(1)) == 2:  # deeper headings stay in their section
            section = h.group(2)
            headings.append(section)
        d = DIRECTIVE.match(line)
        if d:
            pending.append(d.group(1))
        elif line.strip():
            gap_clean = False  # prose or a heading: the next block stands alone
            pending = []
        i += 1
    return blocks, headings


def select_blocks(blocks, rules):
    """The run blocks of the selected sections, each with its expected output."""
    runs = []
    last_run = None
    for b in blocks:
        in_scope = b.section in rules.sections
        if b.lang == "" and last_run is not None and b.follows:
            last_run.expected = b
            last_run = None
            continue
        last_run = None
        if not in_scope:
            continue
        if b.lang in ("sh", "bash"):
            skip = b.directive("skip")
            if skip is not None:
                b.skip = skip or "marked illustrative"
            runs.append(b)
            if b.skip is None:
                last_run = b
        elif b.lang == "sh-example":
            b.skip = "sh-example"
            runs.append(b)
    return runs


# ---------------------------------------------------------------------------------------
# Normalising outputs


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def sub_words(text, mapping):
    """Replace whole-word numbers by others (ports)."""
    if not mapping:
        return text
    pat = re.compile(r"(?<![0-9A-Za-z.])(%s)(?![0-9A-Za-z])" % "|".join(
        str(k) for k in sorted(mapping, key=lambda p: -len(str(p)))))
    return pat.sub(lambda m: str(mapping[int(m.group(1))]), text)


def collapse(line):
    return re.sub(r" {2,}", "  ", line.rstrip())


def normalize(text, rules, extra, env, any_order=()):
    """What both sides go through: uname -r, the rules' patterns, alignment padding, then
    runs of consecutive lines matching an any-order pattern sorted (written by concurrent
    threads, their order is not the document's to promise)."""
    if env.get("uname_r"):
        text = re.sub(r"(?<![\w.-])%s(?![\w.-])" % re.escape(env["uname_r"]), "<UNAME-R>",
                      text)
    for pat, repl in list(rules.normalize) + list(extra):
        text = pat.sub(repl, text)
    lines = [collapse(ln) for ln in text.rstrip("\n").split("\n")] if text.strip() else []
    for pat in any_order:
        i = 0
        while i < len(lines):
            j = i
            while j < len(lines) and pat.search(lines[j]):
                j += 1
            lines[i:j] = sorted(lines[i:j])
            i = j + 1
    return lines


def match_lines(expected, actual):
    """expected may hold `...` lines (any number of lines, also none)."""
    memo = {}

    def m(i, j):
        key = (i, j)
        if key in memo:
            return memo[key]
        if i == len(expected):
            r = j == len(actual)
        elif expected[i] == "...":
            r = any(m(i + 1, k) for k in range(j, len(actual) + 1))
        else:
            r = j < len(actual) and expected[i] == actual[j] and m(i + 1, j + 1)
        memo[key] = r
        return r

    sys.setrecursionlimit(max(10000, 4 * (len(expected) + len(actual))))
    return m(0, 0)


# ---------------------------------------------------------------------------------------
# The shell session


class Session:
    def __init__(self, scratch, env, log):
        self.scratch = scratch
        self.log = log
        self.errf = open(os.path.join(scratch, ".doc-test", "bash.stderr"), "wb")
        self.p = subprocess.Popen(["bash", "--noprofile", "--norc"], cwd=scratch, env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.errf, start_new_session=True)
        self.pgid = self.p.pid
        self.n = 0

    def run(self, text, timeout):
        """Run text in the session; (exit status or None on timeout, output)."""
        self.n += 1
        d = os.path.join(self.scratch, ".doc-test")
        script = os.path.join(d, "block-%d.sh" % self.n)
        out = os.path.join(d, "block-%d.out" % self.n)
        with open(script, "w") as f:
            f.write(text)
        cmd = "{ source %s; } >%s 2>&1 </dev/null; echo \"%s $?\"\n" % (
            shq(script), shq(out), MARK)
        self.p.stdin.write(cmd.encode())
        self.p.stdin.flush()
        status = self._read_mark(timeout)
        with open(out, "rb") as f:
            output = f.read().decode("utf-8", "replace")
        return status, output

    def _read_mark(self, timeout):
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self.p.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        buf = b""
        fd = self.p.stdout.fileno()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if not sel.select(left):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                return -1  # the shell exited (a block ran `exit`)
            buf += chunk
            m = re.search((r"%s (\d+)\n" % MARK).encode(), buf)
            if m:
                return int(m.group(1))

    def members(self):
        """(pid, state, command line) of the processes in the session's group but the shell."""
        found = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == self.pgid:
                continue
            try:
                with open("/proc/%s/stat" % pid) as f:
                    stat = f.read()
                fields = stat[stat.rindex(")") + 2:].split()
                state, pgrp = fields[0], int(fields[2])
                if pgrp != self.pgid or state == "Z":
                    continue
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except (OSError, ValueError):
                continue
            found.append((int(pid), state, cmd))
        return found

    def close(self):
        """Stop the shell and kill whatever is left of its group. Returns what was left."""
        try:
            self.p.stdin.close()
        except OSError:
            pass
        try:
            self.p.wait(timeout=5 * SCALE)
        except subprocess.TimeoutExpired:
            pass
        left = self.members()
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.errf.close()
        return left


def shq(s):
    return "'" + s.replace("'", "'\\''") + "'"


def wait_gone(session, timeout):
    deadline = time.monotonic() + timeout
    while True:
        left = session.members()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------


def bin_dir():
    d = os.environ.get("LUOFLEET_BIN_DIR")
    if d:
        return d
    for var in ("LUOFLEET_CTL", "LUOFLEET_AGENT", "LUOFLEET_ROLLOUT"):
        if os.environ.get(var):
            return os.path.dirname(os.environ[var])
    return os.path.join(REPO_ROOT, "build", "bin")


def main():
    ap = argparse.ArgumentParser(description="Run a document's command blocks.")
    ap.add_argument("rules")
    ap.add_argument("--keep", action="store_true",
                    help="keep the scratch directory (also LUOFLEET_TEST_KEEP=1)")
    ap.add_argument("--list", action="store_true", help="list the blocks and exit")
    args = ap.parse_args()
    keep = args.keep or os.environ.get("LUOFLEET_TEST_KEEP") == "1"

    try:
        rules = Rules(args.rules)
        with open(os.path.join(REPO_ROOT, rules.doc)) as f:
            blocks, headings = parse_markdown(f.read())
    except (OSError, RulesError) as e:
        print("doc-test: %s" % e, file=sys.stderr)
        return 2
    runs = select_blocks(blocks, rules)
    for s in rules.sections:
        if s not in headings:
            print("doc-test: %s: no section %r (rules %s)" % (rules.doc, s, args.rules),
                  file=sys.stderr)
            return 1
    runnable = [b for b in runs if b.skip is None]
    if args.list:
        for b in runs:
            print("%s:%d [%s] %s%s" % (rules.doc, b.line, b.section,
                                       "skip: " + b.skip if b.skip else "run",
                                       ", output checked" if b.expected else ""))
        return 0
    if not runnable:
        print("doc-test: %s: no block to run in %s" % (rules.doc, rules.sections),
              file=sys.stderr)
        return 1
    bdir = bin_dir()
    for tool in ("luofleet-agent", "luofleet-rollout", "luofleetctl"):
        if not os.access(os.path.join(bdir, tool), os.X_OK):
            print("doc-test: %s not built (LUOFLEET_BIN_DIR or LUOFLEET_CTL)" %
                  os.path.join(bdir, tool), file=sys.stderr)
            return 1

    # Ports: the document's own numbers are replaced by free ones (same in the commands
    # and, back, in the outputs), unless LUOFLEET_DOC_PORTS=doc asks for the document's.
    ports = {}
    if os.environ.get("LUOFLEET_DOC_PORTS") == "doc":
        busy = [p for p in rules.ports if not port_free(p)]
        if busy:
            print("doc-test: LUOFLEET_DOC_PORTS=doc but port(s) %s on 127.0.0.1 are in use" %
                  ", ".join(map(str, busy)), file=sys.stderr)
            return 1
    else:
        taken = set()
        for p in rules.ports:
            q = free_port()
            while q in taken or q in rules.ports:
                q = free_port()
            taken.add(q)
            ports[p] = q
    back = {v: k for k, v in ports.items()}

    # Under /tmp, not the build tree: the documents make Unix sockets below it, and a
    # checkout at a deep path would take them past the 107-byte limit of a socket's path.
    base = os.environ.get("LUOFLEET_DOC_TMP") or None
    if base:
        os.makedirs(base, exist_ok=True)
    name = os.path.splitext(os.path.basename(rules.doc))[0]
    scratch = os.path.realpath(tempfile.mkdtemp(prefix="doc-%s-" % name, dir=base))
    os.makedirs(os.path.join(scratch, ".doc-test"))
    os.makedirs(os.path.join(scratch, "tmp"))
    for rel in rules.links:
        dst = os.path.join(scratch, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.symlink(os.path.join(REPO_ROOT, rel), dst)

    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LUOFLEET_") and k not in ("TMPDIR", "CDPATH", "BASH_ENV",
                                                          "ENV", "NO_COLOR")}
    env["PATH"] = bdir + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin")
    env["TMPDIR"] = os.path.join(scratch, "tmp")
    env["HOME"] = scratch
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["LC_ALL"] = "C.UTF-8"
    uname_r = os.uname().release

    print("doc-test: %s: %d blocks to run, %d illustrative; scratch %s; ports %s" % (
        rules.doc, len(runnable), len(runs) - len(runnable), scratch,
        ", ".join("%d->%d" % kv for kv in ports.items()) or "the document's"))
    sys.stdout.flush()

    failures = []
    session = Session(scratch, env, sys.stdout)
    t0 = time.monotonic()
    failed = False
    try:
        for b in runnable:
            cleanup = b.directive("cleanup") is not None
            if failed and not cleanup:
                continue
            where = "%s:%d" % (rules.doc, b.line)
            timeout = float(b.directive("timeout") or rules.block_timeout) * SCALE
            t = time.monotonic()
            status, out = session.run(sub_words(b.text, ports), timeout)
            print("doc-test: %s [%s] exit %s in %.1f s" % (
                where, b.section, "timeout" if status is None else status,
                time.monotonic() - t))
            sys.stdout.flush()
            problems = []
            want = int(b.directive("status") or 0)
            if status is None:
                problems.append("did not finish within %.0f s" % timeout)
            elif status == -1:
                problems.append("the shell exited")
            elif status != want:
                problems.append("exit status %d, the document expects %d" % (status, want))
            if b.expected is not None and status is not None:
                actual = sub_words(out.replace(env["TMPDIR"], "/tmp"), back)
                extra = [parse_normalize(d.partition(" ")[2]) for d in b.directives
                         if d.startswith("normalize ")]
                order = [re.compile(d.partition(" ")[2].strip()) for d in b.directives
                         if d.startswith("any-order ")]
                exp = normalize(b.expected.text, rules, extra, {"uname_r": rules.uname_r},
                                order)
                act = normalize(actual, rules, extra, {"uname_r": uname_r}, order)
                if not match_lines(exp, act):
                    diff = "\n".join(difflib.unified_diff(
                        exp, act, "the document (%s:%d, normalised)" % (rules.doc,
                                                                      b.expected.line),
                        "the output (normalised)", lineterm=""))
                    problems.append("output differs:\n" + diff)
            if problems:
                failed = True
                failures.append((where, problems, out))
            if status is None or status == -1:
                break  # the shell is stuck or gone: nothing more can run in it
        left = [] if failed else wait_gone(session, 10 * SCALE)
        if left:
            failures.append(("%s (the document's clean-up)" % rules.doc,
                             ["processes the document started are still running (it must "
                              "stop exactly what it started):\n" + "\n".join(
                                  "  %d %s %s" % x for x in left)], ""))
    finally:
        leftover = session.close()
    elapsed = time.monotonic() - t0
    for where, problems, out in failures:
        print("\ndoc-test: FAIL %s" % where)
        for p in problems:
            print("  " + p.replace("\n", "\n  "))
        if out:
            print("  its output, as run:\n    " + out.rstrip("\n").replace("\n", "\n    "))
    if leftover and failed:
        print("doc-test: killed what the failed run left: %s" %
              ", ".join("%d %s" % (x[0], x[2].split(" ")[0]) for x in leftover))
    if failures:
        print("doc-test: %s: FAILED (%.1f s); scratch kept: %s" % (rules.doc, elapsed, scratch))
        return 1
    print("doc-test: %s: %d blocks passed (%.1f s)" % (rules.doc, len(runnable), elapsed))
    if keep:
        print("doc-test: scratch kept: %s" % scratch)
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
