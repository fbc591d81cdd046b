#!/usr/bin/env python3
"""test_openapi_enums.py: api/openapi.yaml and the C code agree on enum strings.

The STYLE rule: every enum has a foo_to_string()/foo_from_string() pair whose
strings are exactly the enum strings of api/openapi.yaml. This test checks it
from both sides, without knowing in advance where each C table lives:

1. It reads the contract as JSON (tools/yaml2json.mjs with the pinned `yaml`
   package: there is no PyYAML here) and collects every string enum in it.
2. It finds every C string table in the source tree: the initializer of an
   array (`names[] = { [X] = "a", ... }`, plain lists, or arrays of structs),
   and keeps its token-like strings (`luo-v3`, `not-found`, `prepared`).
3. A table whose strings are mostly (Jaccard >= 0.5) those of one contract
   enum is that enum's C table and must equal it exactly. The kernel's event
   table (the one with "freeze") is special: its events other than freeze are
   the transition actions, each with its POST /v1/<event> path.
4. The enums that must have a C table (State now; Action, ProblemCode,
   Backend, OperationStatus once the agent has them) are reported when no
   table claims them: exit 77 (CTest SKIP) while any is missing, exit 1 with
   --strict. A C array whose declaration line carries the comment
   `contract-enums: ignore` is not considered.

It also checks the contract against itself: problem codes used in responses
are in ProblemCode, each problem response's `status` matches the HTTP status
it is listed under, errors are application/problem+json, examples have
type == urn:luofleet:problem:<code>, every code is documented, and so on.

Usage: test_openapi_enums.py [--strict] [--root DIR]
Standard library only. Exit 0: pass, 1: fail, 77: passed but tables missing.
"""

import argparse
import json
import os
import re
import subprocess
import sys

TOKEN = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
PROBLEM_URN = "urn:luofleet:problem:"
SOURCE_DIRS = ("agent", "common", "kernel", "include", "rollout", "cli", "libsession", "broker")

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg)


def ok(msg):
    print("ok:   " + msg)


# ----------------------------------------------------------------------------
# The contract


def load_contract(root):
    yaml2json = os.path.join(root, "tools", "yaml2json.mjs")
    spec = os.path.join(root, "api", "openapi.yaml")
    if not os.path.isdir(os.path.join(root, "tools", "node_modules", "yaml")):
        subprocess.run([os.path.join(root, "scripts", "contract-tools")], check=True)
    r = subprocess.run(["node", yaml2json, spec], capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stderr, file=sys.stderr)
        sys.exit("cannot read %s as YAML" % spec)
    return json.loads(r.stdout)


def resolve(spec, node):
    seen = 0
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        node = spec
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        seen += 1
        assert seen < 50, "reference loop at " + ref
    return node


def walk(node, path=""):
    """Yield (path, dict) for every mapping in the document."""
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from walk(v, path + "." + k if path else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, "%s[%d]" % (path, i))


def contract_enums(spec):
    """Every string enum of the contract: {location: set of strings}."""
    out = {}
    for path, node in walk(spec):
        if ".examples" in path or ".example" in path:
            continue
        enum = node.get("enum")
        if isinstance(enum, list) and enum and all(isinstance(e, str) for e in enum):
            if len(enum) != len(set(enum)):
                fail("%s: duplicate enum values %r" % (path, enum))
            out[path] = set(enum)
    return out


# ----------------------------------------------------------------------------
# The C tables


def strip_comments(src):
    """Remove comments, keep string literals (and line count) intact."""
    pat = re.compile(r'("(?:\\.|[^"\\])*")|/\*.*?\*/|//[^\n]*', re.S)
    return pat.sub(lambda m: m.group(1) if m.group(1) else re.sub(r"[^\n]", " ", m.group(0)), src)


ARRAY_DECL = re.compile(r"\b(\w+)\s*\[[^\]\[]*\]\s*=\s*\{")
STRING = re.compile(r'"((?:\\.|[^"\\])*)"')


def split_top(body):
    """Split an initializer body at the commas of its top level."""
    items, depth, cur, i = [], 0, [], 0
    while i < len(body):
        c = body[i]
        if c == '"':
            j = i + 1
            while j < len(body) and body[j] != '"':
                j += 2 if body[j] == "\\" else 1
            cur.append(body[i:j + 1])
            i = j + 1
            continue
        if c in "{(":
            depth += 1
        elif c in "})":
            depth -= 1
        if c == "," and depth == 0:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    if "".join(cur).strip():
        items.append("".join(cur))
    return [x.strip() for x in items if x.strip()]


def source_files(root):
    for d in SOURCE_DIRS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, d)):
            dirnames[:] = sorted(n for n in dirnames if n != "emul")
            for fn in sorted(filenames):
                if fn.endswith((".c", ".h")):
                    full = os.path.join(dirpath, fn)
                    with open(full, encoding="utf-8", errors="replace") as f:
                        raw = f.read()
                    yield os.path.relpath(full, root), raw, strip_comments(raw)


def c_tables(files):
    """{(file, array, line): [[string literals of element 0], [... element 1], ...]}"""
    tables = {}
    for rel, raw, src in files:
        raw_lines = raw.split("\n")
        for m in ARRAY_DECL.finditer(src):
            name = m.group(1)
            line = src.count("\n", 0, m.start())
            if "contract-enums: ignore" in raw_lines[line]:
                continue
            depth, i = 1, m.end()
            while i < len(src) and depth:
                c = src[i]
                if c == '"':
                    j = i + 1
                    while j < len(src) and src[j] != '"':
                        j += 2 if src[j] == "\\" else 1
                    i = j
                elif c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                i += 1
            elements = []
            for item in split_top(src[m.end():i - 1]):
                item = re.sub(r"^\[[^\]]*\]\s*=\s*", "", item)  # designator
                elements.append(STRING.findall(item))
            if any(elements):
                tables[(rel, name, line + 1)] = elements
    return tables


def column(elements, col):
    """The strings of a table: element-wise literal number `col` (None: all)."""
    out = []
    for e in elements:
        if col is None:
            out.extend(e)
        elif len(e) > col:
            out.append(e[col])
    return out


def jaccard(a, b):
    return len(a & b) / len(a | b) if a | b else 0.0


# Where each contract enum lives in C. `equal`: the table's strings are the
# enum (minus `extra`, strings the C table has for other purposes); `subset`:
# every string of the table is in the enum. The file is where to look first;
# an array of that name anywhere in the tree is accepted too (files move).
TABLES = [
    ("components.schemas.State", "common/luo_state.c", "state_names", None, "equal", set()),
    ("components.schemas.Action", "agent/agent.c", "action_names", None, "equal", set()),
    ("components.schemas.ProblemCode", "agent/problem.c", "titles", 0, "equal", set()),
    ("components.schemas.ProblemCode", "agent/problem.c", "errno_map", None, "subset", set()),
    # "auto" is a --backend value that picks one of the others; never reported.
    ("components.schemas.Backend", "kernel/backend.c", "kind_names", None, "equal", {"auto"}),
    # The phase of a workload session (GET /v1/sessions), lfs_phase_to_string().
    ("components.schemas.SessionPhase", "libsession/proto.c", "phase_names", None, "equal", set()),
    # luofleetctl's session summary line names the phases too.
    ("components.schemas.SessionPhase", "cli/cmd_session.c", "summary_phases", None, "equal",
     set()),
]
# The session broker's events: the string literals event_emit() is called with.
BROKER_EVENTS = ("broker/broker.c", "components.schemas.SessionEvent")
KERNEL_EVENTS = ("common/luo_state.c", "event_names")
# Request schemas whose member names the handlers list in `fields[]` arrays.
REQUEST_SCHEMAS = ("ActionRequest", "StageRequest", "StageFile", "StageSignature",
                   "PrepareRequest", "LeaseRequest")


def find_table(tables, rel, name):
    """(key, elements) of the array `name`: in file `rel`, else the only one in the tree."""
    for where in (lambda f: f == rel, lambda f: True):
        hits = [(k, t) for k, t in tables.items() if k[1] == name and where(k[0])]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            return None, None
    return None, None


def check_c_tables(spec, enums, tables):
    schemas = spec["components"]["schemas"]
    paths = spec["paths"]
    used = set()

    for loc, rel, name, col, rel_kind, extra in TABLES:
        key, elements = find_table(tables, rel, name)
        if key is None:
            fail("C table %s[] (%s) not found, or found twice: update TABLES in %s"
                 % (name, loc, os.path.basename(__file__)))
            continue
        used.add(key)
        where = "%s:%d:%s[]" % (key[0], key[2], name)
        c = set(column(elements, col)) - extra
        e = enums[loc]
        if rel_kind == "equal" and c != e:
            fail("%s differs from %s: only in C: %s; only in the contract: %s"
                 % (where, loc, sorted(c - e) or "-", sorted(e - c) or "-"))
        elif rel_kind == "subset" and not c <= e:
            fail("%s has strings that are not in %s: %s" % (where, loc, sorted(c - e)))
        else:
            ok("%s %s %s" % (where, "equals" if rel_kind == "equal" else "is within", loc))

    # The kernel's SET_EVENT events: all but freeze are transition actions with a POST path.
    key, elements = find_table(tables, *KERNEL_EVENTS)
    if key is None:
        fail("C table %s[] (kernel events) not found" % KERNEL_EVENTS[1])
    else:
        f = key[0]
        used.add(key)
        events = set(column(elements, None))
        transition = set(schemas["TransitionAction"]["enum"])
        for ev in sorted(events - {"freeze"}):
            if ev not in transition:
                fail("kernel event %r is not a transition action in the contract" % ev)
            elif "post" not in paths.get("/v1/" + ev, {}):
                fail("kernel event %r has no POST /v1/%s" % (ev, ev))
        if "freeze" not in events:
            fail("%s:%s[] has no freeze event" % (f, KERNEL_EVENTS[1]))
        if "/v1/freeze" in paths or "freeze" in schemas["Action"]["enum"]:
            fail("freeze must not be an API action (only the reboot freezes)")
        ok("%s:%s[]: events %s are POST actions, freeze only through reboot"
           % (f, KERNEL_EVENTS[1], sorted(events - {"freeze"})))

    # Request member lists: each fields[] array is the member set of a request schema.
    props = {n: set(schemas[n]["properties"]) for n in REQUEST_SCHEMAS}
    matched = set()
    for key, elements in sorted(tables.items()):
        f, name, line = key
        if name != "fields" or not f.startswith("agent/"):
            continue
        used.add(key)
        got = set(column(elements, None))
        hit = [n for n, pr in props.items() if pr == got]
        if hit:
            matched.update(hit)
        else:
            fail("%s:%d: fields[] %s is the member list of no request schema (%s)"
                 % (f, line, sorted(got),
                    ", ".join("%s=%s" % (n, sorted(p)) for n, p in props.items())))
    if matched == set(REQUEST_SCHEMAS):
        ok("request member lists in agent/ match %s" % ", ".join(REQUEST_SCHEMAS))
    elif matched:
        print("note: no fields[] array found for %s" % sorted(set(REQUEST_SCHEMAS) - matched))

    # Other tables that look like a contract enum: a hint, not a failure.
    for key, elements in sorted(tables.items()):
        f, name, line = key
        if key in used:
            continue
        s = {x for x in column(elements, None) if TOKEN.match(x)}
        for loc, e in enums.items():
            if len(s & e) >= 2 and jaccard(s, e) >= 0.5 and s != e:
                print("note: %s:%d:%s[] resembles %s (only in C: %s, only in the contract: %s);"
                      " mark its line `contract-enums: ignore` if unrelated"
                      % (f, line, name, loc, sorted(s - e) or "-", sorted(e - s) or "-"))
                break


def check_c_problem_literals(spec, files):
    """Every `STATUS, "code"` pair in agent/ C code is a status the contract gives that code."""
    statuses = {}
    for name, resp in spec["components"]["responses"].items():
        sch = resp.get("content", {}).get("application/problem+json", {}).get("schema")
        if not sch:
            continue
        for part in sch.get("allOf", []):
            pr = part.get("properties", {})
            if "status" in pr and "code" in pr:
                c = pr["code"]
                for v in ([c["const"]] if "const" in c else c.get("enum", [])):
                    statuses.setdefault(v, set()).add(pr["status"]["const"])
    pat = re.compile(r'\b([1-5][0-9][0-9])\s*,\s*(?:[^,;(){}"]*\?\s*)?"([a-z][a-z-]*)"'
                     r'(?:\s*:\s*"([a-z][a-z-]*)")?')
    n = 0
    for rel, raw, src in files:
        if not rel.startswith("agent/"):
            continue
        for m in pat.finditer(src):
            st = int(m.group(1))
            for code in filter(None, (m.group(2), m.group(3))):
                if code not in statuses:
                    continue
                n += 1
                if st not in statuses[code]:
                    line = src.count("\n", 0, m.start()) + 1
                    fail("%s:%d: status %d with code %r; the contract gives %r only %s"
                         % (rel, line, st, code, code, sorted(statuses[code])))
    for rel, raw, src in files:
        if rel.startswith("agent/"):
            for m in re.finditer(r'http_reply_problem\(\s*\w+\s*,[^,]*,\s*"([^"]+)"', src):
                if m.group(1) not in statuses:
                    line = src.count("\n", 0, m.start()) + 1
                    fail("%s:%d: problem code %r is not in the contract" % (rel, line, m.group(1)))
    ok("%d (status, problem code) pairs in agent/ match the contract" % n)


def check_c_broker_events(spec, files):
    """The events the broker emits (event_emit(k, "name", ...), also `cond ? "a" : "b"`) are
    the contract's SessionEvent enum, which journal records of kind session carry."""
    rel, loc = BROKER_EVENTS
    enum = set(spec["components"]["schemas"][loc.rsplit(".", 1)[1]]["enum"])
    for f, raw, src in files:
        if f != rel:
            continue
        got = set()
        for m in re.finditer(r"\bevent_emit\s*\(\s*\w+\s*,([^,]*(?:\?[^,:]*:[^,]*)?),", src):
            got.update(STRING.findall(m.group(1)))
        if not got:
            fail("%s: no event_emit() call with a literal event name found" % rel)
        elif got != enum:
            fail("%s: event_emit() names differ from %s: only in C: %s; only in the contract: %s"
                 % (rel, loc, sorted(got - enum) or "-", sorted(enum - got) or "-"))
        else:
            ok("%s: the %d event_emit() names equal %s" % (rel, len(got), loc))
        return
    print("note: %s not found; broker events not checked" % rel)


def check_c_allowed_actions(spec, files):
    """agent_allowed_actions() (allowed_actions of invalid-transition) = the info table."""
    info = spec["info"]["description"]
    header = None
    table = {}
    for line in info.split("\n"):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.strip().startswith("| state |"):
            header = cells[1:]
        elif header and line.strip().startswith("| `"):
            st = cells[0].strip("`")
            table[st] = {a for a, v in zip(header, cells[1:]) if v.startswith("yes")}
    for rel, raw, src in files:
        m = re.search(r"\bagent_allowed_actions\s*\([^)]*\)\s*\{", src)
        if not m or not rel.endswith(".c"):
            continue
        body = src[m.end():src.index("\n}", m.end())]
        c = {}
        pending = []
        for tok in re.finditer(r'case\s+LUO_STATE_(\w+)\s*:|json_string\("([a-z]+)"\)|\bbreak\b', body):
            if tok.group(1):
                pending.append(tok.group(1).lower())
                for p in pending:
                    c.setdefault(p, set())
            elif tok.group(2):
                for p in pending:
                    c[p].add(tok.group(2))
            else:
                pending = []
        for st in sorted(set(table) | set(c)):
            if table.get(st, set()) != c.get(st, set()):
                fail("allowed actions in %s: contract table %s, %s:agent_allowed_actions() %s"
                     % (st, sorted(table.get(st, set())), rel, sorted(c.get(st, set()))))
        ok("%s:agent_allowed_actions() matches the contract's action table" % rel)
        return
    print("note: agent_allowed_actions() not found; action table not checked against C")


def check_contract(spec, enums):
    comps = spec["components"]
    schemas = comps["schemas"]
    codes = set(schemas["ProblemCode"]["enum"])
    state = set(schemas["State"]["enum"])
    actions = set(schemas["Action"]["enum"])
    transition = set(schemas["TransitionAction"]["enum"])
    paths = spec["paths"]

    # The enums that several places must share.
    if state != {"normal", "prepared", "frozen", "updated", "undefined"}:
        fail("State enum is %s" % sorted(state))
    if not transition <= actions:
        fail("TransitionAction %s not within Action %s" % (sorted(transition), sorted(actions)))
    for a in sorted(transition):
        if "post" not in paths.get("/v1/" + a, {}):
            fail("transition action %r has no POST /v1/%s" % (a, a))
    ok("State, Action, TransitionAction consistent with the paths")

    # Problem schema: every extension documented, code is the ProblemCode enum.
    problem = schemas["Problem"]
    if resolve(spec, problem["properties"]["code"]) is not schemas["ProblemCode"]:
        fail("Problem.code must be a $ref to ProblemCode")
    for ext in ("state", "allowed_actions", "errno", "operation_id", "current_index",
                "expected_sha256", "actual_sha256", "field", "retry_after_ms", "instance"):
        if ext not in problem["properties"]:
            fail("Problem has no member %r" % ext)
    if problem.get("additionalProperties") is not False:
        fail("Problem must have additionalProperties: false")
    desc = schemas["ProblemCode"].get("description", "")
    for c in sorted(codes):
        if "`%s`" % c not in desc:
            fail("ProblemCode description does not give the status of %r" % c)
    ok("Problem schema has the extension members; ProblemCode documents %d codes" % len(codes))

    # Every problem code used anywhere (const or enum on a `code` property) is a ProblemCode.
    used = set()
    for path, node in walk(comps.get("responses", {}), "components.responses"):
        props = node.get("properties")
        if isinstance(props, dict) and "code" in props:
            c = props["code"]
            vals = [c["const"]] if "const" in c else c.get("enum", [])
            for v in vals:
                used.add(v)
                if v not in codes:
                    fail("%s: code %r is not in ProblemCode" % (path, v))
    unused = codes - used
    # Codes that no response lists: only those returned by an operation's error member.
    if unused:
        fail("problem codes no response can carry: %s" % sorted(unused))
    ok("all %d problem codes are used by responses, all used codes are defined" % len(codes))

    # Examples: type is the URN of code, status within the response's status.
    for path, node in walk(spec):
        if isinstance(node.get("code"), str) and isinstance(node.get("type"), str) \
                and node["type"].startswith(("urn:", "http")):
            if node["type"] != PROBLEM_URN + node["code"]:
                fail("%s: example type %r does not match code %r" % (path, node["type"], node["code"]))
            if node["code"] not in codes:
                fail("%s: example code %r is not a ProblemCode" % (path, node["code"]))

    # Every operation's error responses: problem+json whose status const equals the key.
    n = 0
    for p, item in paths.items():
        for method, op in item.items():
            if method not in ("get", "put", "post", "delete", "head", "patch"):
                continue
            for status, resp in op.get("responses", {}).items():
                resp = resolve(spec, resp)
                content = resp.get("content", {})
                code = int(status)
                if method == "head":
                    if content:
                        fail("HEAD %s %s: a HEAD response has no body" % (p, status))
                    continue
                if code >= 400 and p != "/readyz":
                    if list(content) != ["application/problem+json"]:
                        fail("%s %s %s: errors must be application/problem+json only, not %s"
                             % (method.upper(), p, status, list(content)))
                        continue
                    sch = content["application/problem+json"]["schema"]
                    parts = [resolve(spec, s) for s in sch.get("allOf", [sch])]
                    if not any(x is schemas["Problem"] for x in parts):
                        fail("%s %s %s: schema is not Problem" % (method.upper(), p, status))
                    consts = [x.get("properties", {}).get("status", {}).get("const") for x in parts]
                    consts = [c for c in consts if c is not None]
                    if consts != [code]:
                        fail("%s %s %s: problem status must be const %d, is %s"
                             % (method.upper(), p, status, code, consts))
                    n += 1
            if method == "get" and "head" not in item:
                fail("GET %s has no HEAD twin (HEAD is allowed on every GET route)" % p)
            if method != "head" and "405" not in op.get("responses", {}):
                fail("%s %s does not list the generic 405" % (method.upper(), p))
    ok("%d error responses are problem+json with a matching status" % n)

    # Mutating operations take If-Match; state documents carry an ETag.
    for p, item in paths.items():
        for method in ("post", "put", "delete"):
            if method in item:
                names = [resolve(spec, x)["name"] for x in item[method].get("parameters", [])]
                if "If-Match" not in names:
                    fail("%s %s has no If-Match parameter" % (method.upper(), p))
    for name, resp in comps["responses"].items():
        sch = resp.get("content", {}).get("application/json", {}).get("schema")
        if sch and resolve(spec, sch) is schemas["StateDocument"] and "ETag" not in resp.get("headers", {}):
            fail("response %s returns a StateDocument without ETag" % name)
    ok("mutations take If-Match, state documents carry ETag")

    # SSE event types = journal kinds, each described in GET /v1/events.
    kinds = set(schemas["JournalRecord"]["properties"]["kind"]["enum"])
    if kinds != {"transition", "operation", "staging", "reboot", "start", "snapshot", "hook",
                 "lease", "session"}:
        fail("JournalRecord.kind is %s" % sorted(kinds))
    ev_desc = paths["/v1/events"]["get"]["description"]
    for k in sorted(kinds):
        if "`%s`" % k not in ev_desc:
            fail("GET /v1/events does not describe event type %r" % k)
    ok("event types = journal kinds %s" % sorted(kinds))

    # The action table in info.description names every state.
    info = spec["info"]["description"]
    for s in sorted(state):
        if "| `%s` |" % s not in info:
            fail("info.description's action table has no row for state %r" % s)
    ok("info.description's action table has a row per state")

    if spec.get("servers", [{}])[0].get("url") != "http://127.0.0.1:8421":
        fail("servers[0] must be http://127.0.0.1:8421")


def check_docs(spec, root):
    """docs/api.md has a curl example for every operation (HEAD aside)."""
    path = os.path.join(root, "docs", "api.md")
    if not os.path.exists(path):
        fail("docs/api.md is missing")
        return
    with open(path, encoding="utf-8") as f:
        curls = [l for l in f.read().split("\n") if "curl " in l]
    n = 0
    for p, item in spec["paths"].items():
        at = re.compile(re.escape(p) + r"(?=$|[\s?\"'])")
        for method in item:
            if method not in ("get", "put", "post", "delete", "patch"):
                continue
            n += 1
            flag = re.compile(r"-X\s+(\w+)")
            found = False
            for l in curls:
                if not at.search(l):
                    continue
                m = flag.search(l)
                if (m.group(1) if m else "GET").lower() == method:
                    found = True
                    break
            if not found:
                fail("docs/api.md has no curl example for %s %s" % (method.upper(), p))
    ok("docs/api.md has a curl example for each of the %d operations" % n)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
    args = ap.parse_args()

    spec = load_contract(args.root)
    enums = contract_enums(spec)
    check_contract(spec, enums)
    check_docs(spec, args.root)
    files = list(source_files(args.root))
    check_c_tables(spec, enums, c_tables(files))
    check_c_problem_literals(spec, files)
    check_c_broker_events(spec, files)
    check_c_allowed_actions(spec, files)

    if failures:
        print("contract enums: %d check(s) failed" % len(failures))
        return 1
    print("contract enums: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
