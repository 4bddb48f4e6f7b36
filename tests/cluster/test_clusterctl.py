"""clusterctl as operators run it: usage errors, unreachable servers, the
status/health/metrics commands against a real keyplaned, and the contexts
file.

Answers a real node cannot give on demand (a 503 from /readyz, a 401 from the
status endpoint) come from a stub HTTP server on loopback that also records
what clusterctl sent, which is how the tests check the token handling. Every
clusterctl run gets HOME and KEYPLANE_CONFIG_DIR inside the harness's temporary
directory, so no test reads or writes the real ~/.config/keyplane.
"""

import json
import os
import re
import socket
import stat
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness import Harness

TOKEN = "kp_test_0123456789abcdefSECRET"


class StubServer:
    """A loopback HTTP server answering GETs from a table
    {path: (status, body, content_type)} and recording the requests."""

    def __init__(self, testcase, routes):
        self.routes = routes
        self.requests = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                stub.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                status, body, ctype = stub.routes.get(
                    self.path, (404, '{"error":{"message":"no route","type":"x","code":"y"}}',
                                "application/json"))
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        testcase.addCleanup(thread.join, 10)
        testcase.addCleanup(self.server.server_close)
        testcase.addCleanup(self.server.shutdown)

    def auth_headers(self):
        return [h.get("authorization") for _, h in self.requests]


def refusing_port(testcase):
    """A loopback port that refuses connections for the whole test: bound but
    not listening, so nothing else can take it meanwhile."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    testcase.addCleanup(sock.close)
    return sock.getsockname()[1]


class ClusterctlTestCase(unittest.TestCase):
    def setUp(self):
        self.h = Harness(self)
        self.config_dir = self.h.path("ctl-config")

    def ctl(self, *args, env=None, config_dir=True):
        full_env = {"KEYPLANE_CONFIG_DIR": self.config_dir} if config_dir else {}
        full_env.update(env or {})
        return self.h.run(["clusterctl", *args], env=full_env)

    def assertExit(self, cp, code):
        self.assertEqual(cp.returncode, code,
                         f"exit {cp.returncode}, wanted {code}\nstdout: {cp.stdout}\n"
                         f"stderr: {cp.stderr}")


class UsageTest(ClusterctlTestCase):
    def test_usage_errors_exit_2(self):
        cases = [
            [],
            ["no-such-command"],
            ["--no-such-option", "status"],
            ["status", "--no-such-option"],
            ["status", "extra-argument"],
            ["--output", "yaml", "status"],
            ["--server"],
            ["--server", "ftp://127.0.0.1:1", "status"],
            ["config"],
            ["config", "no-such-subcommand"],
            ["config", "use-context"],
            ["config", "use-context", "a", "b"],
            ["config", "set-context", "a"],
            ["config", "set-context", "a", "--server", "not-a-url"],
            ["config", "set-context", "a", "--server", "http://x", "--token", "t",
             "--token-file", "/nonexistent"],
        ]
        for args in cases:
            with self.subTest(args=args):
                cp = self.ctl(*args)
                self.assertExit(cp, 2)
                self.assertTrue(cp.stderr.strip(), "a message on stderr")

    def test_help_lists_commands(self):
        cp = self.ctl("--help")
        self.assertExit(cp, 0)
        for word in ("status", "health", "metrics", "config", "version", "--server", "--token",
                     "--output"):
            self.assertIn(word, cp.stdout)
        cp = self.ctl("config", "--help")
        self.assertExit(cp, 0)
        for word in ("use-context", "set-context", "get-contexts"):
            self.assertIn(word, cp.stdout)
        self.assertExit(self.ctl("status", "--help"), 0)

    def test_version(self):
        cp = self.ctl("version")
        self.assertExit(cp, 0)
        self.assertRegex(cp.stdout, r"clusterctl \d+\.\d+\.\d+")
        cp = self.ctl("-o", "json", "version")
        self.assertExit(cp, 0)
        self.assertRegex(json.loads(cp.stdout)["clusterctl"]["version"], r"^\d+\.\d+\.\d+")


class UnreachableTest(ClusterctlTestCase):
    def test_unreachable_server_exits_3_with_a_helpful_message(self):
        url = f"http://127.0.0.1:{refusing_port(self)}"
        for command in ("status", "health", "metrics"):
            with self.subTest(command=command):
                cp = self.ctl("--server", url, command)
                self.assertExit(cp, 3)
                self.assertIn(url, cp.stderr)
                self.assertIn("--server", cp.stderr)
                self.assertIn("start keyplaned", cp.stderr)

    def test_message_names_where_the_server_came_from(self):
        url = f"http://127.0.0.1:{refusing_port(self)}"
        cp = self.ctl("status", env={"KEYPLANE_SERVER": url})
        self.assertExit(cp, 3)
        self.assertIn(url, cp.stderr)
        self.assertIn("KEYPLANE_SERVER", cp.stderr)


class StubServerTest(ClusterctlTestCase):
    """What clusterctl does with answers a healthy node does not give."""

    def test_health_not_ready_exits_1_and_says_why(self):
        stub = StubServer(self, {"/readyz": (503, '{"status":"draining"}', "application/json")})
        cp = self.ctl("--server", stub.url, "health")
        self.assertExit(cp, 1)
        self.assertRegex(cp.stdout, r"not ready.*503.*draining")

    def test_refused_status_exits_1_and_never_prints_the_token(self):
        stub = StubServer(self, {
            "/admin/v1/status": (401, '{"error":{"message":"invalid token","type":"auth",'
                                      '"code":"unauthorized"}}', "application/json"),
            "/healthz": (200, '{"status":"ok"}', "application/json"),
            "/readyz": (200, '{"status":"ready"}', "application/json"),
        })
        cp = self.ctl("--server", stub.url + "/", "--token", TOKEN, "status")
        self.assertExit(cp, 1)
        self.assertIn("401", cp.stderr)
        self.assertIn("invalid token", cp.stderr)
        self.assertIn("Bearer " + TOKEN, stub.auth_headers())
        self.assertNotIn(TOKEN, cp.stdout + cp.stderr)

    def test_token_from_the_environment_is_sent(self):
        stub = StubServer(self, {"/readyz": (200, '{"status":"ready"}', "application/json")})
        cp = self.ctl("--server", stub.url, "health", env={"KEYPLANE_TOKEN": TOKEN})
        self.assertExit(cp, 0)
        self.assertEqual(stub.auth_headers(), ["Bearer " + TOKEN])

    def test_context_token_is_not_sent_to_another_server(self):
        ours = StubServer(self, {"/readyz": (200, "{}", "application/json")})
        other = StubServer(self, {"/readyz": (200, "{}", "application/json")})
        self.assertExit(self.ctl("config", "set-context", "a", "--server", ours.url,
                                 "--token", TOKEN), 0)
        self.assertExit(self.ctl("health"), 0)
        self.assertEqual(ours.auth_headers(), ["Bearer " + TOKEN])
        self.assertExit(self.ctl("--server", other.url, "health"), 0)
        self.assertEqual(other.auth_headers(), [None])


class ContextsTest(ClusterctlTestCase):
    def test_contexts_round_trip(self):
        stub = StubServer(self, {"/readyz": (200, "{}", "application/json")})
        dead = f"http://127.0.0.1:{refusing_port(self)}"
        cp = self.ctl("config", "set-context", "local", "--server", stub.url, "--token", TOKEN)
        self.assertExit(cp, 0)
        self.assertNotIn(TOKEN, cp.stdout + cp.stderr)
        self.assertExit(self.ctl("config", "set-context", "dead", "--server", dead), 0)

        path = os.path.join(self.config_dir, "config.yaml")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(self.ctl("config", "current-context").stdout.strip(), "local",
                         "the first context becomes current")

        cp = self.ctl("-o", "json", "config", "get-contexts")
        self.assertExit(cp, 0)
        listing = json.loads(cp.stdout)
        self.assertEqual(listing["current-context"], "local")
        self.assertEqual([(c["name"], c["server"], c["token_set"]) for c in listing["contexts"]],
                         [("local", stub.url, True), ("dead", dead, False)])
        cp = self.ctl("config", "get-contexts")
        self.assertExit(cp, 0)
        self.assertRegex(cp.stdout, r"\*\s+local\s+set\s+" + re.escape(stub.url))
        self.assertNotIn(TOKEN, cp.stdout + cp.stderr)

        self.assertExit(self.ctl("config", "use-context", "dead"), 0)
        cp = self.ctl("health")
        self.assertExit(cp, 3)
        self.assertIn("context dead", cp.stderr)
        self.assertExit(self.ctl("health", env={"KEYPLANE_SERVER": stub.url}), 0)

        cp = self.ctl("config", "use-context", "missing")
        self.assertExit(cp, 1)
        self.assertIn("missing", cp.stderr)
        self.assertEqual(self.ctl("config", "current-context").stdout.strip(), "dead")

        self.assertExit(self.ctl("config", "use-context", "local"), 0)
        self.assertExit(self.ctl("health"), 0)
        self.assertEqual(stub.auth_headers()[-1], "Bearer " + TOKEN)

    def test_update_keeps_other_fields_and_unknown_keys(self):
        path = self.h.write_file("ctl-config/config.yaml",
                                 "# written by hand\ncurrent-context: a\nextra: kept\n"
                                 "contexts:\n- name: a\n  server: http://127.0.0.1:1\n"
                                 "  token: old\n  note: mine\n")
        self.assertExit(self.ctl("config", "set-context", "a", "--token-file",
                                 self.h.write_file("tok", TOKEN + "\n")), 0)
        with open(path) as f:
            text = f.read()
        self.assertIn("extra: kept", text)
        self.assertIn("note: mine", text)
        self.assertIn("server: http://127.0.0.1:1", text)
        self.assertIn(TOKEN, text)
        self.assertNotIn("old", text)

    def test_default_location_is_under_home(self):
        cp = self.ctl("config", "set-context", "h", "--server", "http://127.0.0.1:1",
                      config_dir=False)
        self.assertExit(cp, 0)
        self.assertTrue(os.path.exists(os.path.join(self.h.home, ".config", "keyplane",
                                                    "config.yaml")))

    def test_broken_file_is_a_configuration_error(self):
        self.h.write_file("ctl-config/config.yaml", "contexts: [\n  {name: a,\n")
        cp = self.ctl("status")
        self.assertExit(cp, 2)
        self.assertIn("config.yaml", cp.stderr)
        cp = self.ctl("config", "set-context", "b", "--server", "http://127.0.0.1:1")
        self.assertExit(cp, 2)


class AgainstNodeTest(ClusterctlTestCase):
    def setUp(self):
        super().setUp()
        self.node = self.h.start_node(config={"workers": 2})
        self.env = {"KEYPLANE_SERVER": self.node.control_url}
        if self.node.admin_token:
            self.env["KEYPLANE_TOKEN"] = self.node.admin_token

    def test_status_table(self):
        cp = self.ctl("status", env=self.env)
        self.assertExit(cp, 0)
        self.assertIn(self.node.control_url, cp.stdout)
        self.assertRegex(cp.stdout, r"(?m)^NODE\s+n1$")
        self.assertRegex(cp.stdout, r"(?m)^READY\s+yes$")
        self.assertRegex(cp.stdout, r"(?m)^WORKERS\s+2$")
        self.assertRegex(cp.stdout, r"(?m)^HEALTHZ\s+200 OK$")
        self.assertRegex(cp.stdout, r"(?m)^READYZ\s+200 OK$")

    def test_status_json(self):
        cp = self.ctl("status", "-o", "json", env=self.env)
        self.assertExit(cp, 0)
        out = json.loads(cp.stdout)
        self.assertEqual(out["server"], self.node.control_url)
        self.assertIs(out["status"]["ready"], True)
        self.assertEqual(out["status"]["node"], "n1")
        self.assertEqual(out["healthz"]["code"], 200)
        self.assertEqual(out["readyz"]["code"], 200)

    def test_health_ready(self):
        cp = self.ctl("health", env=self.env)
        self.assertExit(cp, 0)
        self.assertTrue(cp.stdout.startswith("ready"), cp.stdout)

    def test_metrics_raw(self):
        cp = self.ctl("metrics", env=self.env)
        self.assertExit(cp, 0)
        self.assertIn("keyplane_build_info{", cp.stdout)

    def test_status_through_a_context(self):
        args = ["config", "set-context", "n1", "--server", self.node.control_url]
        if self.node.admin_token:
            args += ["--token-file", os.path.join(self.node.data_dir, "admin.token")]
        self.assertExit(self.ctl(*args), 0)
        cp = self.ctl("status")
        self.assertExit(cp, 0)
        self.assertRegex(cp.stdout, r"(?m)^NODE\s+n1$")


if __name__ == "__main__":
    unittest.main()
