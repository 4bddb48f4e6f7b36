"""keyplaned as a process: command line, control endpoints, metrics, the data
directory lock, graceful shutdown, hostile HTTP and what reaches the logs.

Each test starts its own node on port 0 through the harness and stops it in
cleanup. Nothing here waits by sleeping: every wait is a condition with a
deadline (harness.wait_until), so the tests pass or fail the same way on a
fast laptop and on a loaded CI runner.
"""

import json
import os
import re
import signal
import unittest

from harness import (Harness, RawConn, http, http_json, log_lines, metric_value, raw_http,
                     assert_no_secrets, wait_equal, wait_until)

SECRET_KEY = "sk-test-AAAAAAAAAAAAAAAAAAAAAAAAAAAA"
VERSION_RE = re.compile(r"keyplaned\S*\s+v?(\d+\.\d+\.\d+\S*)")
LEVELS = {"debug", "info", "warn", "error"}

# Long HTTP timeouts, so that only the behaviour under test (drain deadline,
# limits) can end a connection while a test holds it open.
PATIENT_HTTP = {"header_timeout_ms": 600000, "body_timeout_ms": 600000,
                "idle_timeout_ms": 600000}


def open_connections(node, listener):
    """Open connections on @listener from /metrics (all listeners when the
    gauge has no listener label)."""
    text = node.metrics()
    v = metric_value(text, "keyplane_http_open_connections", listener=listener)
    if v is None:
        v = metric_value(text, "keyplane_http_open_connections")
    return v or 0


def hold_gateway_request(node):
    """A request the gateway has accepted but not finished reading: headers
    sent, body cut short. Returns the open connection once the node counts it."""
    conn = RawConn(node.gateway_addr, timeout=60)
    conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\n"
              b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":")
    try:
        wait_until(lambda: open_connections(node, "gateway") >= 1, interval=0.2,
                   what="the gateway to count the held connection", alive=node)
    except BaseException:
        conn.close()
        raise
    return conn


class CommandLineTest(unittest.TestCase):
    def setUp(self):
        self.h = Harness(self)

    def test_version_prints_name_and_version(self):
        cp = self.h.run(["keyplaned", "--version"])
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertRegex(cp.stdout, VERSION_RE)

    def test_help_lists_options(self):
        cp = self.h.run(["keyplaned", "--help"])
        self.assertEqual(cp.returncode, 0, cp.stderr)
        for flag in ("--config", "--data-dir", "--gateway-listen", "--control-listen",
                     "--raft-listen", "--join", "--master-key-file", "--check-config",
                     "--version", "--help"):
            self.assertIn(flag, cp.stdout)

    def test_unknown_flag_is_a_usage_error(self):
        cp = self.h.run(["keyplaned", "--no-such-flag"])
        self.assertEqual(cp.returncode, 2, cp.stderr)
        self.assertIn("--no-such-flag", cp.stderr)

    def test_flag_without_value_is_a_usage_error(self):
        cp = self.h.run(["keyplaned", "--data-dir"])
        self.assertEqual(cp.returncode, 2, cp.stderr)
        self.assertIn("--data-dir", cp.stderr)

    def test_check_config_accepts_a_good_file(self):
        path = self.h.write_config("good.yaml", {
            "data_dir": self.h.path("data"), "workers": 2, "log_level": "info",
            "max_body_bytes": 1048576, "drain_timeout_ms": 5000})
        cp = self.h.run(["keyplaned", "--config", path, "--check-config"])
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertRegex(cp.stdout, re.compile(r"^\s*workers:\s*2\s*$", re.M))
        self.assertFalse(os.path.exists(self.h.path("data", "listen.json")),
                         "--check-config must not start the node")

    def test_check_config_names_file_line_and_field(self):
        path = self.h.write_config("bad.yaml", "# a bad config\nlog_level: info\nworkers: many\n")
        cp = self.h.run(["keyplaned", "--config", path, "--check-config"])
        self.assertEqual(cp.returncode, 2, cp.stderr)
        self.assertRegex(cp.stderr, r"bad\.yaml\D{0,10}3\b", "file and line of the error")
        self.assertIn("workers", cp.stderr)

    def test_check_config_rejects_broken_yaml(self):
        path = self.h.write_config("broken.yaml", "workers: [1,\nlog_level: info\n")
        cp = self.h.run(["keyplaned", "--config", path, "--check-config"])
        self.assertEqual(cp.returncode, 2, cp.stderr)
        self.assertIn("broken.yaml", cp.stderr)


class ControlEndpointsTest(unittest.TestCase):
    def setUp(self):
        self.h = Harness(self)
        self.node = self.h.start_node(config={"workers": 2})

    def test_healthz(self):
        status, headers, body = http_json("GET", self.node.control_url + "/healthz")
        self.assertEqual(status, 200)
        self.assertTrue(headers.get("content-type", "").startswith("application/json"), headers)
        self.assertEqual(body.get("status") if isinstance(body, dict) else body, "ok")

    def test_listen_json_names_every_listener(self):
        with open(self.node.listen_path) as f:
            listen = json.load(f)
        self.assertEqual(listen["pid"], self.node.pid)
        # The raft listener (and its entry) arrives with the raftstore issue.
        for key in ("gateway", "control"):
            self.assertRegex(listen.get(key, ""), r"^127\.0\.0\.1:[1-9]\d*$", key)

    def test_readyz_when_ready(self):
        status, _, _ = http("GET", self.node.control_url + "/readyz")
        self.assertEqual(status, 200)

    def test_metrics_count_requests(self):
        for _ in range(3):
            self.assertEqual(http("GET", self.node.control_url + "/healthz")[0], 200)
        status, headers, body = http("GET", self.node.control_url + "/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers.get("content-type", "").startswith("text/plain; version=0.0.4"),
                        headers)
        text = body.decode()
        self.assertIn("keyplane_build_info{", text)
        self.assertIn("# TYPE keyplane_http_requests_total counter", text)
        self.assertIn("# TYPE keyplane_http_request_duration_seconds histogram", text)
        self.assertIn("# TYPE keyplane_http_open_connections gauge", text)
        # A one-node cluster: this node leads, knows it, and has applied
        # what it committed.
        self.assertEqual(metric_value(text, "keyplane_raft_leader"), 1.0)
        self.assertEqual(metric_value(text, "keyplane_raft_leader_known"), 1.0)
        self.assertEqual(metric_value(text, "keyplane_raft_servers"), 1.0)
        self.assertGreaterEqual(metric_value(text, "keyplane_raft_term"), 1.0)
        self.assertGreater(metric_value(text, "keyplane_raft_applied_index"), 0.0)
        # A request is counted when it finishes, which may be just after the
        # client read the answer: wait for the count to settle at exactly 3.
        wait_equal(lambda: metric_value(self.node.metrics(), "keyplane_http_requests_total",
                                        listener="control", route="/healthz", code="200"),
                   3.0, what='keyplane_http_requests_total{listener="control",'
                             'route="/healthz",code="200"}')
        text = self.node.metrics()
        self.assertIsNotNone(metric_value(text, "keyplane_http_request_duration_seconds_bucket",
                                          le="+Inf"), "histogram buckets with le=\"+Inf\"")
        self.assertIsNotNone(metric_value(text, "keyplane_http_open_connections"))

    def test_admin_status(self):
        version = VERSION_RE.search(self.h.run(["keyplaned", "--version"]).stdout).group(1)
        status, headers, body = self.node.control("GET", "/admin/v1/status")
        self.assertEqual(status, 200, body)
        self.assertTrue(headers.get("content-type", "").startswith("application/json"), headers)
        info = json.loads(body)
        for key in ("version", "node", "ready", "workers"):
            self.assertIn(key, info)
        self.assertEqual(info["version"], version)
        self.assertEqual(info["node"], "n1")
        self.assertIs(info["ready"], True)
        self.assertEqual(info["workers"], 2)

    def test_unknown_control_path_is_a_json_404(self):
        status, headers, body = http_json("GET", self.node.control_url + "/no/such/path")
        self.assertEqual(status, 404)
        self.assertTrue(headers.get("content-type", "").startswith("application/json"), headers)
        error = body["error"]
        for key in ("message", "type", "code"):
            self.assertIn(key, error)
        self.assertTrue(error["message"])

    def test_gateway_answers_with_an_openai_shaped_error(self):
        status, headers, body = http_json(
            "POST", self.node.gateway_url + "/v1/chat/completions",
            body={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        self.assertGreaterEqual(status, 400)
        self.assertIsInstance(body, dict, "a JSON body")
        self.assertIn("message", body["error"])
        self.assertTrue(headers.get("x-request-id"), headers)


class ConfigSourcesTest(unittest.TestCase):
    def test_environment_sets_workers(self):
        h = Harness(self)
        node = h.start_node(env={"KEYPLANE_WORKERS": "3"})
        status, _, body = node.control("GET", "/admin/v1/status")
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["workers"], 3)

    def test_flag_wins_over_config_file(self):
        h = Harness(self)
        node = h.start_node(config={"workers": 1}, args=["--workers", "2"])
        status, _, body = node.control("GET", "/admin/v1/status")
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["workers"], 2)


class DataDirLockTest(unittest.TestCase):
    def test_second_node_on_the_same_data_dir_refuses_to_start(self):
        h = Harness(self)
        first = h.start_node("n1")
        second = h.start_node("n2", data_dir=first.data_dir, wait_listen=False)
        self.assertEqual(second.wait_exit(timeout=30), 1, second.stderr_text())
        self.assertRegex(second.stderr_text(), re.compile(r"in use|lock", re.I))
        with open(first.listen_path) as f:
            self.assertEqual(json.load(f)["pid"], first.pid, "listen.json is the first node's")
        self.assertEqual(http("GET", first.control_url + "/healthz")[0], 200)
        self.assertTrue(first.running())

    def test_raft_port_in_use_exits_with_a_reason(self):
        # The raft listener cannot bind: the node says so and exits (it
        # used to hang with the health queue's handle keeping the loop up).
        h = Harness(self)
        first = h.start_node("n1")
        raft = first.listen["raft"]
        second = h.start_node("n2", args=["--raft-listen", raft], wait_listen=False)
        self.assertEqual(second.wait_exit(timeout=30), 1, second.stderr_text())
        self.assertIn("cannot start on " + raft, second.stderr_text())
        # The reason, not raft_uv's bare "I/O error".
        self.assertIn("cannot listen on %s: Address already in use" % raft, second.stderr_text())
        self.assertTrue(first.running())


class ShutdownTest(unittest.TestCase):
    def setUp(self):
        self.h = Harness(self)

    def test_sigterm_exits_0(self):
        node = self.h.start_node()
        self.assertEqual(node.stop(signal.SIGTERM, timeout=30), 0)

    def test_sigint_exits_0(self):
        node = self.h.start_node()
        self.assertEqual(node.stop(signal.SIGINT, timeout=30), 0)

    def test_stop_right_after_a_burst_of_writes_exits_0(self):
        # Denied writes are audited asynchronously (their 403 comes first),
        # so the stop finds Raft entries still in flight. raft_close with
        # entries in flight crashes canonical/raft 0.15 (quirk 4,
        # tests/unit/test_raft_quirks.c); the store waits for them first.
        node = self.h.start_node(config={"workers": 1})
        wait_until(lambda: node.admin_token, what="admin.token", alive=node)
        admin = {"Authorization": "Bearer " + node.admin_token}
        status, _, raw = node.control("POST", "/admin/v1/tokens", body={
            "role": "finance", "name": "f"}, headers=admin)
        self.assertEqual(status, 201, raw)
        finance = {"Authorization": "Bearer " + json.loads(raw)["token"]}
        for i in range(15):
            status, _, raw = node.control("PUT", f"/admin/v1/tenants/t{i}",
                                          body={"display_name": "x"}, headers=finance)
            self.assertEqual(status, 403, raw)
        self.assertEqual(node.stop(signal.SIGTERM, timeout=30), 0)

    def test_readyz_is_503_while_draining(self):
        node = self.h.start_node(config={"drain_timeout_ms": 60000, **PATIENT_HTTP})
        held = hold_gateway_request(node)
        self.addCleanup(held.close)
        node.send_signal(signal.SIGTERM)
        wait_until(lambda: http("GET", node.control_url + "/readyz", timeout=5)[0] == 503,
                   what="GET /readyz == 503 while a gateway request holds the drain open",
                   alive=node)
        # The held request ends (client gone), so the drain has nothing left.
        held.close()
        self.assertEqual(node.wait_exit(timeout=30), 0)

    def test_drain_delay_keeps_accepting_while_readyz_is_503(self):
        node = self.h.start_node(config={"drain_delay_ms": 600000})
        node.send_signal(signal.SIGTERM)
        wait_until(lambda: http("GET", node.control_url + "/readyz", timeout=5)[0] == 503,
                   what="GET /readyz == 503 after SIGTERM", alive=node)
        # Within the delay the gateway still takes new connections and answers.
        status, headers, _ = http("GET", node.gateway_url + "/v1/models", timeout=5)
        self.assertIn("x-request-id", headers)
        self.assertGreaterEqual(status, 400)
        # A second signal ends the wait.
        node.send_signal(signal.SIGTERM)
        self.assertEqual(node.wait_exit(timeout=30), 0)

    def test_keep_alive_connections_are_told_to_close_once_draining(self):
        # A client on a keep-alive connection (a load balancer's pooled
        # connection, an SDK) is answered with Connection: close from the
        # SIGTERM on, so its next request opens a connection elsewhere.
        node = self.h.start_node(config={"drain_delay_ms": 600000})
        request = b"GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n"
        with RawConn(node.gateway_addr) as conn:
            conn.send(request)
            self.assertNotEqual(conn.read_response().headers.get("connection"), "close")
            node.send_signal(signal.SIGTERM)
            wait_until(lambda: http("GET", node.control_url + "/readyz", timeout=5)[0] == 503,
                       what="GET /readyz == 503 after SIGTERM", alive=node)
            conn.send(request)
            self.assertEqual(conn.read_response().headers.get("connection"), "close")
            self.assertTrue(conn.wait_closed(), "the server closes the connection")
        node.send_signal(signal.SIGTERM)
        self.assertEqual(node.wait_exit(timeout=30), 0)

    def test_drain_gives_up_at_its_deadline(self):
        node = self.h.start_node(config={"drain_timeout_ms": 2000, **PATIENT_HTTP})
        held = hold_gateway_request(node)
        self.addCleanup(held.close)
        node.send_signal(signal.SIGTERM)
        # A request that never completes must not keep the node alive past the
        # 2 s drain deadline; 30 s is only the test's patience.
        self.assertEqual(node.wait_exit(timeout=30), 0)
        self.assertTrue(held.wait_closed(timeout=10), "the held connection is closed")


class MalformedHttpTest(unittest.TestCase):
    def setUp(self):
        self.h = Harness(self)
        self.node = self.h.start_node(config={"max_body_bytes": 1024})
        self.addCleanup(self.assert_node_survived)

    def assert_node_survived(self):
        self.assertTrue(self.node.running(), self.node.describe_exit())
        self.assertEqual(http("GET", self.node.control_url + "/healthz")[0], 200)

    def test_garbage_gets_400_and_close(self):
        cases = {
            "tls hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
            "not http": b"NOT HTTP AT ALL\r\n\r\n",
            "header without colon": b"GET /healthz HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n",
            "bad chunk size": b"POST /healthz HTTP/1.1\r\nHost: t\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        }
        for name, data in cases.items():
            with self.subTest(name), RawConn(self.node.control_addr) as conn:
                conn.send(data)
                self.assertEqual(conn.read_response().status, 400)
                self.assertTrue(conn.wait_closed(), "the server closes the connection")

    def test_oversized_header_gets_431(self):
        data = (b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n")
        self.assertEqual(raw_http(self.node.control_addr, data)[0].status, 431)

    def test_oversized_body_gets_413(self):
        # The gateway holds to max_body_bytes; the control listener to at
        # least what a sealed usage segment needs (docs/configuration.md).
        data = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n"
                b"Content-Type: application/json\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000)
        self.assertEqual(raw_http(self.node.gateway_addr, data)[0].status, 413)
        big = 2 * 2 * 1024 * 1024 + 65536 + 1
        data = (b"POST /admin/v1/status HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % big + b"x" * big)
        self.assertEqual(raw_http(self.node.control_addr, data)[0].status, 413)

    def test_content_length_with_transfer_encoding_gets_400(self):
        data = (b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        self.assertEqual(raw_http(self.node.control_addr, data)[0].status, 400)

    def test_pipelined_requests_are_answered_in_order(self):
        get = b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n"
        two = raw_http(self.node.control_addr, get % b"/healthz" * 2, responses=2)
        self.assertEqual([r.status for r in two], [200, 200])
        three = raw_http(self.node.control_addr,
                         get % b"/healthz" + get % b"/no/such/path" + get % b"/readyz",
                         responses=3)
        self.assertEqual([r.status for r in three], [200, 404, 200])


class LoggingTest(unittest.TestCase):
    def test_logs_are_json_lines_without_secrets(self):
        h = Harness(self)
        node = h.start_node(config={"log_level": "debug"})
        auth = {"Authorization": "Bearer " + SECRET_KEY, "X-Api-Key": SECRET_KEY}
        for path in ("/healthz", "/readyz", "/metrics", "/admin/v1/status",
                     "/no/such/path?api_key=" + SECRET_KEY):
            http("GET", node.control_url + path, headers=auth)
        http("POST", node.gateway_url + "/v1/chat/completions", headers=auth,
             body={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
        with RawConn(node.control_addr) as conn:  # a parse error with the key in it
            conn.send(b"GET /x HTTP/1.1\r\nAuthorization: Bearer " + SECRET_KEY.encode() +
                      b"\r\nno colon here\r\n\r\n")
            conn.wait_closed()
        self.assertEqual(node.stop(), 0)

        lines = log_lines(node.log_path, strict=True)
        self.assertTrue(lines, "the node logged something")
        for line in lines:
            for key in ("ts", "level", "comp", "msg"):
                self.assertIn(key, line)
            self.assertIn(line["level"], LEVELS, line)
        assert_no_secrets([node.log_path, node.stdout_path, node.data_dir], [SECRET_KEY])


if __name__ == "__main__":
    unittest.main()
