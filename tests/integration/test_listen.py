#!/usr/bin/env python3
"""test_listen.py: the listeners besides the default TCP one: a Unix socket
(--listen=unix:PATH) and IPv6 loopback ([::1]:PORT), several at once, and
the care taken with the socket path (a stale socket is replaced, anything
else is left alone and refused; the socket is removed at a clean stop).
Requests on these listeners go directly to the agent (Prism only proxies TCP
to the module's upstream port)."""

import http.client
import json
import os
import re
import socket
import stat
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

setUpModule, tearDownModule = harness.module_fixtures(__file__)


unix_request = harness.unix_request


class UnixSocketTest(harness.AgentTestCase):
    def test_state_and_actions_over_the_unix_socket(self):
        sock = os.path.join(self.socket_dir(), "agent.sock")
        a = self.agent("--listen=unix:" + sock)
        self.assertIn("luofleet-agent: listening on unix:%s" % sock, a.stdout().decode())
        st = os.stat(sock)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o660)

        status, hdrs, body = unix_request(sock, "GET", "/v1/state")
        self.assertEqual(status, 200)
        self.assertEqual(hdrs["content-type"], "application/json")
        doc = json.loads(body)
        tcp = a.direct().state()
        self.assertEqual(doc, tcp)
        self.assertEqual(hdrs["etag"], '"%d"' % doc["index"])

        status, hdrs, body = unix_request(
            sock, "POST", "/v1/prepare", body=b'{"operation_id":"over-unix"}',
            headers={"Content-Type": "application/json"})
        self.assertEqual(status, 200)
        doc = json.loads(body)
        self.assertEqual(doc["state"], "prepared")
        self.assertEqual(doc["operation"]["id"], "over-unix")
        self.assertEqual(doc["operation"]["requested_by"], "uid:%d" % os.getuid())

        status, hdrs, body = unix_request(sock, "GET", "/v1/nope")
        self.assertEqual(status, 404)
        self.assertEqual(hdrs["content-type"], "application/problem+json")
        self.assertEqual(json.loads(body)["code"], "not-found")

        a.stop()
        self.assertFalse(os.path.exists(sock), "the socket is removed at a clean stop")

    def test_stale_socket_is_replaced(self):
        sock = os.path.join(self.socket_dir(), "stale.sock")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(sock)
        s.close()  # a socket file nobody listens on: what a killed agent leaves
        self.assertTrue(os.path.exists(sock))
        a = self.agent("--listen=unix:" + sock)
        status, _, body = unix_request(sock, "GET", "/healthz")
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body), {"status": "ok"})
        a.stop()

    def test_a_regular_file_at_the_path_is_left_alone(self):
        path = os.path.join(self.socket_dir(), "not-a-socket")
        with open(path, "w") as f:
            f.write("precious\n")
        # TCP on a port of the kernel's choosing: only the Unix listener may fail here.
        a = self.agent("--listen=unix:" + path, start=False, port=0)
        proc = harness.subprocess.run(a.command(), stdin=harness.subprocess.DEVNULL,
                                      stdout=harness.subprocess.PIPE,
                                      stderr=harness.subprocess.PIPE, timeout=20)
        self.assertEqual(proc.returncode, 1, proc.stderr.decode())
        self.assertIn("Failed to listen on %s" % path, proc.stderr.decode())
        with open(path) as f:
            self.assertEqual(f.read(), "precious\n")

    def test_relative_unix_path_is_a_usage_error(self):
        a = self.agent("--listen=unix:relative.sock", start=False, port=0)
        proc = harness.subprocess.run(a.command(), stdin=harness.subprocess.DEVNULL,
                                      stdout=harness.subprocess.PIPE,
                                      stderr=harness.subprocess.PIPE, timeout=20)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("invalid --listen=unix:relative.sock", proc.stderr.decode())


    def test_too_long_unix_path_is_a_usage_error_that_names_the_limit(self):
        path = "/tmp/" + "d" * 100 + "/agent.sock"  # 116 bytes; sun_path holds 107
        a = self.agent("--listen=unix:" + path, start=False, port=0)
        proc = harness.subprocess.run(a.command(), stdin=harness.subprocess.DEVNULL,
                                      stdout=harness.subprocess.PIPE,
                                      stderr=harness.subprocess.PIPE, timeout=20)
        self.assertEqual(proc.returncode, 2)
        self.assertEqual(proc.stdout, b"")
        self.assertIn("luofleet-agent: invalid --listen=unix:%s: the socket path is 116 bytes, "
                      "the limit is 107 (put the socket in a shorter directory, e.g. "
                      "/run/luofleet)\n" % path, proc.stderr.decode())
        self.assertFalse(os.path.exists(os.path.dirname(path)))


def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@unittest.skipUnless(ipv6_loopback(), "no IPv6 loopback on this machine")
class IPv6Test(harness.AgentTestCase):
    def test_ipv6_loopback_listener(self):
        a = self.agent("--listen=[::1]:0")
        # The harness is ready at the first listening line; the second one follows.
        pat = re.compile(r"listening on http://\[::1\]:(\d+)")
        harness.wait_for(lambda: pat.search(a.stdout().decode()), timeout=10,
                         what="the IPv6 listening line")
        m = pat.search(a.stdout().decode())
        c = http.client.HTTPConnection("::1", int(m.group(1)), timeout=10)
        c.request("GET", "/v1/state")
        r = c.getresponse()
        body = r.read()
        c.close()
        self.assertEqual(r.status, 200)
        self.assertEqual(json.loads(body)["state"], "normal")
        c = http.client.HTTPConnection("::1", int(m.group(1)), timeout=10)
        c.request("POST", "/v1/prepare", headers={"Content-Type": "application/json"})
        r = c.getresponse()
        doc = json.loads(r.read())
        c.close()
        self.assertEqual(r.status, 200)
        self.assertEqual(doc["operation"]["requested_by"], "anonymous")


if __name__ == "__main__":
    unittest.main(verbosity=2)
