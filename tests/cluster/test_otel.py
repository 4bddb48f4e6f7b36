"""Traces and the access log end to end (docs/observability.md).

keyplaned in front of keyplane-mock, exporting to a tiny OTLP/HTTP
receiver run by the test (http.server on 127.0.0.1:0 keeping every POST
/v1/traces body). Spans are found by trace id, which the gateway returns in
its traceparent answer header; every wait is a condition.
"""

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness import Harness, assert_no_secrets, http, log_lines, metric_value, wait_until

ADMIN = "/admin/v1"
KEY_A = "sk-mock-otel-key-a-00000001"
KEY_B = "sk-mock-otel-key-b-00000002"
COLLECTOR_SECRET = "collector-secret-5b1e7d0c9a"
PROMPT = "hello there PROMPT-7f3a9c"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
SERVER, CLIENT, INTERNAL = 2, 3, 1


def fp(key):
    return "fp_" + hashlib.sha256(key.encode()).hexdigest()[:12]


class Collector:
    """An OTLP/HTTP receiver that keeps what it is sent."""

    def __init__(self, test):
        self.bodies, self.headers = [], []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer.lock:
                    outer.raw.append(data)
                    outer.bodies.append(json.loads(data))
                    outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                ok = self.path == "/v1/traces"
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.raw = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        test.addCleanup(self.close)

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def spans(self, trace_id=None):
        out = []
        with self.lock:
            bodies = list(self.bodies)
        for body in bodies:
            for rs in body["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    for sp in ss["spans"]:
                        if trace_id is None or sp["traceId"] == trace_id:
                            out.append(sp)
        return out

    def wait_spans(self, trace_id, count, what):
        return wait_until(lambda: len(self.spans(trace_id)) >= count and self.spans(trace_id),
                          what=what)


def value_of(v):
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return int(v["intValue"])
    if "boolValue" in v:
        return v["boolValue"]
    if "arrayValue" in v:
        return [value_of(x) for x in v["arrayValue"].get("values", [])]
    raise AssertionError(f"unexpected value {v!r}")


def attrs(span):
    return {a["key"]: value_of(a["value"]) for a in span.get("attributes", [])}


def trace_of(headers):
    """The trace id and parent id of a traceparent header."""
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    return trace_id, span_id


def refused_port():
    """A loopback port nothing listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Gateway:
    def __init__(self, test, config):
        self.h = Harness(test)
        self.mock = self.h.start_mock()
        self.node = self.h.start_node(config=config,
                                      env={"KEYPLANE_MASTER_KEY": secrets.token_hex(32)},
                                      args=["--workers", "2"])
        wait_until(lambda: self.node.admin_token, what="admin.token", alive=self.node)
        self.admin("PUT", "/providers/mock", {"kind": "openai-compatible",
                                             "base_url": self.mock.url + "/v1",
                                             "allow_insecure": True})
        self.admin("PUT", "/tenants/acme", {"display_name": "Acme"})
        self.admin("PUT", "/projects/search", {"tenant": "acme"})
        self.admin("PUT", "/keys/key-a", {"provider": "mock", "secret": KEY_A})
        self.admin("PUT", "/keys/key-b", {"provider": "mock", "secret": KEY_B})
        self.admin("PUT", "/pools/default", {"members": [{"key": "key-a", "priority": 0},
                                                         {"key": "key-b", "priority": 1}]})
        self.admin("PUT", "/prices/gpt-4o-mini", {"input_per_mtok": 150_000_000,
                                                  "output_per_mtok": 600_000_000})
        status, _, body = self.node.control(
            "POST", ADMIN + "/tokens", body={"role": "app", "tenant": "acme", "name": "app"})
        assert status == 201, body
        self.token = json.loads(body)["token"]
        http("POST", self.mock.url + "/mock/reset")

    def admin(self, method, path, body=None, headers=None):
        status, _, raw = self.node.control(method, ADMIN + path, body=body, headers=headers)
        assert status in (200, 201), (method, path, status, raw)
        return json.loads(raw) if raw else None

    def call(self, body=CHAT, headers=None, token=None, path="/v1/chat/completions"):
        hdrs = {"Authorization": "Bearer " + (token or self.token),
                "Content-Type": "application/json"}
        hdrs.update(headers or {})
        return http("POST", self.node.gateway_url + path, body=body, headers=hdrs, timeout=30)

    def fault(self, key, faults, times=0):
        http("POST", self.mock.url + "/mock/faults",
             body={"key": key, "faults": faults, "times": times})

    def mock_stats(self):
        return json.loads(http("GET", self.mock.url + "/mock/stats")[2])

    def usage(self, rid):
        events = self.admin("GET", "/usage/recent?limit=1000")["events"]
        return next((e for e in events if e["request_id"] == rid), None)


class SpansTest(unittest.TestCase):
    def setUp(self):
        self.collector = Collector(self)
        self.g = Gateway(self, {
            "otlp_endpoint": self.collector.url,
            "otlp_headers": {"Authorization": "Bearer " + COLLECTOR_SECRET},
            "trace_sample_ratio": 1,
        })

    def test_failover_yields_a_server_span_and_sibling_client_spans(self):
        g = self.g
        g.fault(KEY_A, "500")
        status, h, body = g.call(headers={"X-Request-Id": "r-fo", "X-Project": "search",
                                          "X-Feature": "summaries"})
        self.assertEqual((status, h["x-keyplane-key"]), (200, "key-b"), body)
        trace_id, server_id = trace_of(h)
        spans = self.collector.wait_spans(trace_id, 4, "1 server and 3 client spans")
        servers = [s for s in spans if s["kind"] == SERVER]
        clients = sorted((s for s in spans if s["kind"] == CLIENT),
                         key=lambda s: int(s["startTimeUnixNano"]))
        self.assertEqual((len(servers), len(clients)), (1, 3), spans)
        server = servers[0]
        self.assertEqual(server["spanId"], server_id)
        self.assertNotIn("parentSpanId", server)  # a new trace
        self.assertEqual(server["name"], "POST /v1/chat/completions")
        sa = attrs(server)
        self.assertEqual(sa["http.response.status_code"], 200)
        self.assertEqual(sa["gen_ai.operation.name"], "chat")
        self.assertEqual(sa["gen_ai.request.model"], "gpt-4o-mini")
        self.assertEqual(sa["gen_ai.response.model"], "gpt-4o-mini")
        self.assertEqual(sa["gen_ai.system"], "_OTHER")
        self.assertGreater(sa["gen_ai.usage.input_tokens"], 0)
        self.assertEqual(sa["gen_ai.usage.output_tokens"], 16)
        self.assertEqual(sa["gen_ai.response.finish_reasons"], ["stop"])
        self.assertEqual((sa["keyplane.tenant"], sa["keyplane.project"], sa["keyplane.feature"]),
                         ("acme", "search", "summaries"))
        self.assertEqual((sa["keyplane.key_id"], sa["keyplane.pool"]), ("key-b", "default"))
        self.assertEqual(sa["keyplane.request_id"], "r-fo")
        self.assertEqual(sa["keyplane.attempts"], 3)
        self.assertGreater(sa["keyplane.cost_nanousd"], 0)
        self.assertNotIn("keyplane.budget", sa)
        self.assertNotEqual(server.get("status", {}).get("code"), 2)
        for c in clients:
            self.assertEqual(c["parentSpanId"], server["spanId"])
            self.assertEqual(c["traceId"], trace_id)
            self.assertEqual(c["name"], "chat gpt-4o-mini")
            ca = attrs(c)
            self.assertEqual((ca["server.address"], ca["server.port"]),
                             ("127.0.0.1", g.mock.port))
            self.assertEqual(ca["gen_ai.request.model"], "gpt-4o-mini")
            self.assertEqual(ca["keyplane.pool"], "default")
        a1, a2, b = (attrs(c) for c in clients)
        self.assertEqual((a1["keyplane.key_id"], a1["http.response.status_code"],
                          a1["keyplane.error_class"]), ("key-a", 500, "server"))
        self.assertEqual(clients[0]["status"]["code"], 2)
        self.assertTrue(a2["keyplane.retry"])
        self.assertEqual((a2["keyplane.key_id"], clients[1]["status"]["code"]), ("key-a", 2))
        self.assertEqual((b["keyplane.key_id"], b["http.response.status_code"]), ("key-b", 200))
        self.assertNotIn("keyplane.error_class", b)
        self.assertNotEqual(clients[2].get("status", {}).get("code"), 2)
        self.assertEqual(b["gen_ai.usage.output_tokens"], 16)
        # The provider saw the last attempt's span as its parent.
        tp = g.mock_stats()["last_traceparent"]
        self.assertEqual(tp.split("-")[1:3], [trace_id, clients[2]["spanId"]])
        # The usage event carries the trace id.
        ev = wait_until(lambda: g.usage("r-fo"), what="the usage event")
        self.assertEqual(ev["trace_id"], trace_id)
        # The collector got its credentials; the node never logged them.
        self.assertEqual(self.collector.headers[0]["authorization"], "Bearer " + COLLECTOR_SECRET)
        self.assertEqual(self.collector.bodies[0]["resourceSpans"][0]["resource"]["attributes"][0],
                         {"key": "service.name", "value": {"stringValue": "keyplane"}})
        assert_no_secrets([g.node.log_path], [COLLECTOR_SECRET])

    def test_the_apps_traceparent_is_continued(self):
        g = self.g
        app_trace, app_span = secrets.token_hex(16), secrets.token_hex(8)
        status, h, body = g.call(headers={"traceparent": f"00-{app_trace}-{app_span}-01",
                                          "tracestate": "vendor=abc,other=x-1"})
        self.assertEqual(status, 200, body)
        trace_id, server_id = trace_of(h)
        self.assertEqual(trace_id, app_trace)
        self.assertTrue(h["traceparent"].endswith("-01"))
        spans = self.collector.wait_spans(app_trace, 2, "the spans of the app's trace")
        server = next(s for s in spans if s["kind"] == SERVER)
        client = next(s for s in spans if s["kind"] == CLIENT)
        self.assertEqual((server["spanId"], server["parentSpanId"]), (server_id, app_span))
        self.assertEqual(server["traceState"], "vendor=abc,other=x-1")
        self.assertEqual(client["parentSpanId"], server_id)
        tp = g.mock_stats()["last_traceparent"]
        self.assertEqual(tp, f"00-{app_trace}-{client['spanId']}-01")
        # A malformed traceparent (upper-case hex) is ignored: a new trace.
        bad = f"00-{app_trace.upper()}-{app_span}-01"
        status, h, _ = g.call(headers={"traceparent": bad})
        self.assertEqual(status, 200)
        self.assertNotEqual(trace_of(h)[0], app_trace)
        self.assertNotEqual(g.mock_stats()["last_traceparent"].split("-")[1], app_trace)

    def test_a_stream_has_a_first_token_event_and_finish_reasons(self):
        g = self.g
        status, h, raw = g.call(body=dict(CHAT, stream=True))
        self.assertEqual(status, 200, raw)
        trace_id, _ = trace_of(h)
        spans = self.collector.wait_spans(trace_id, 2, "the stream's spans")
        server = next(s for s in spans if s["kind"] == SERVER)
        client = next(s for s in spans if s["kind"] == CLIENT)
        for s in (server, client):
            self.assertEqual([e["name"] for e in s.get("events", [])], ["gen_ai.first_token"], s)
            t = int(s["events"][0]["timeUnixNano"])
            self.assertTrue(int(s["startTimeUnixNano"]) <= t <= int(s["endTimeUnixNano"]), s)
        sa, ca = attrs(server), attrs(client)
        self.assertTrue(sa["keyplane.streamed"])
        self.assertEqual(ca["gen_ai.response.finish_reasons"], ["stop"])
        self.assertEqual(ca["gen_ai.usage.output_tokens"], 16)

    def test_errors_carry_the_trace_id_and_export_an_error_span(self):
        g = self.g
        g.fault(KEY_A, "500")
        g.fault(KEY_B, "503")
        status, h, body = g.call()
        self.assertEqual(status, 502, body)
        trace_id, _ = trace_of(h)
        self.assertEqual(json.loads(body)["error"]["trace_id"], trace_id)
        spans = self.collector.wait_spans(trace_id, 5, "the failed call's spans")
        server = next(s for s in spans if s["kind"] == SERVER)
        self.assertEqual(server["status"]["code"], 2)
        self.assertEqual(attrs(server)["keyplane.error_class"], "server")
        self.assertTrue(all(s["status"]["code"] == 2 for s in spans if s["kind"] == CLIENT))
        # A refusal before any provider: one server span, the 4xx left unset.
        status, h, body = g.call(token="kp_nope")
        self.assertEqual(status, 401, body)
        trace_id, _ = trace_of(h)
        self.assertEqual(json.loads(body)["error"]["trace_id"], trace_id)
        spans = self.collector.wait_spans(trace_id, 1, "the refusal's span")
        self.assertEqual(len(spans), 1)
        self.assertNotIn("status", spans[0])
        self.assertEqual(attrs(spans[0])["http.response.status_code"], 401)
        # Unknown paths answer with a trace id too (and export nothing).
        status, h, body = http("GET", g.node.gateway_url + "/v1/nope")
        self.assertEqual(status, 404)
        self.assertEqual(json.loads(body)["error"]["trace_id"], trace_of(h)[0])

    def test_an_admin_write_has_a_span_with_its_raft_commit(self):
        g = self.g
        app_trace, app_span = secrets.token_hex(16), secrets.token_hex(8)
        g.admin("PUT", "/tenants/globex", {"display_name": "Globex"},
                headers={"traceparent": f"00-{app_trace}-{app_span}-01"})
        spans = self.collector.wait_spans(app_trace, 2, "the admin write's spans")
        server = next(s for s in spans if s["kind"] == SERVER)
        commit = next(s for s in spans if s["kind"] == INTERNAL)
        self.assertEqual(server["name"], "PUT /admin/v1/{kind}/{id}")
        self.assertEqual(server["parentSpanId"], app_span)
        self.assertEqual(attrs(server)["http.response.status_code"], 201)
        self.assertEqual(commit["name"], "raft.commit")
        self.assertEqual(commit["parentSpanId"], server["spanId"])
        self.assertEqual(attrs(commit)["keyplane.raft.applied"], 1)

    def test_no_secret_and_no_prompt_in_any_span(self):
        g = self.g
        g.fault(KEY_A, "401")
        rids = []
        for i, body in enumerate((CHAT, dict(CHAT, stream=True), CHAT)):
            status, h, raw = g.call(body=body, headers={"X-Request-Id": f"r-s{i}"})
            self.assertEqual(status, 200, raw)
            rids.append(trace_of(h)[0])
        for t in rids:
            self.collector.wait_spans(t, 2, "the spans of " + t)
        dump = g.h.write_file("collected.json", b"\n".join(self.collector.raw))
        assert_no_secrets([dump], [KEY_A, KEY_B, g.token, PROMPT, "PROMPT-7f3a9c",
                                   COLLECTOR_SECRET])
        with open(dump, encoding="utf-8") as f:
            text = f.read()
        self.assertNotIn("mock0 mock1", text)  # no completion text either


    def test_content_capture_follows_the_tenants_flag(self):
        g = self.g

        def call(rid, body=CHAT):
            status, h, raw = g.call(body=body, headers={"X-Request-Id": rid})
            self.assertEqual(status, 200, raw)
            spans = self.collector.wait_spans(trace_of(h)[0], 2, "the spans of " + rid)
            server = next(s for s in spans if s["kind"] == SERVER)
            return server, json.dumps(spans), raw

        def set_capture(on):
            g.admin("PUT", "/tenants/acme", {"display_name": "Acme", "capture_content": on})
            wait_until(lambda: g.admin("GET", "/tenants/acme")["capture_content"] is on,
                       what=f"capture_content {on} in the node's view")

        content_keys = ("gen_ai.input.messages", "gen_ai.output.messages",
                        "gen_ai.system_instructions")
        self.assertIs(g.admin("GET", "/tenants/acme")["capture_content"], False)  # the default
        server, dump, _ = call("r-cap-off")
        self.assertFalse(set(content_keys) & set(attrs(server)), attrs(server))
        self.assertNotIn("PROMPT-7f3a9c", dump)

        set_capture(True)
        server, dump, raw = call("r-cap-on")
        sa = attrs(server)
        self.assertEqual(json.loads(sa["gen_ai.input.messages"]),
                         [{"role": "user", "parts": [{"type": "text", "content": PROMPT}]}])
        answer = json.loads(raw)["choices"][0]["message"]["content"]
        self.assertTrue(answer)
        self.assertEqual(json.loads(sa["gen_ai.output.messages"]),
                         [{"role": "assistant", "parts": [{"type": "text", "content": answer}],
                           "finish_reason": "stop"}])
        self.assertNotIn("keyplane.content_truncated", sa)
        # A stream's request is captured, its answer is not.
        server, _, raw = call("r-cap-stream", dict(CHAT, stream=True))
        sa = attrs(server)
        self.assertIn("PROMPT-7f3a9c", sa["gen_ai.input.messages"])
        self.assertNotIn("gen_ai.output.messages", sa)
        # The prompt goes on the server span only.
        clients = [s for s in self.collector.spans(server["traceId"]) if s["kind"] == CLIENT]
        self.assertNotIn("PROMPT-7f3a9c", json.dumps(clients))

        set_capture(False)
        server, dump, raw = call("r-cap-off-again")
        self.assertFalse(set(content_keys) & set(attrs(server)), attrs(server))
        self.assertNotIn("PROMPT-7f3a9c", dump)
        self.assertNotIn(json.loads(raw)["choices"][0]["message"]["content"], dump)

        # Keys, the app's token and the collector's credential are in no
        # span, captured or not.
        collected = g.h.write_file("collected.json", b"\n".join(self.collector.raw))
        assert_no_secrets([collected], [KEY_A, KEY_B, g.token, COLLECTOR_SECRET])


SDK_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sdk"))

# The official SDKs read a gateway error with the extra trace_id member as
# any other: the error class, status, code and message (OpenAI), the error
# type and message (Anthropic, on /anthropic/v1/messages).
SDK_ERRORS = r"""
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
const [base, token] = process.argv.slice(1);
const out = {};
try {
  await new OpenAI({ baseURL: base + '/v1', apiKey: token, maxRetries: 0 }).chat.completions.create(
    { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'x' }] });
} catch (e) {
  out.openai = { cls: e.constructor.name, status: e.status, code: e.code, message: e.message,
                 trace_id: e.error?.trace_id };
}
try {
  await new Anthropic({ baseURL: base + '/anthropic', apiKey: token, maxRetries: 0 }).messages.create(
    { model: 'gpt-4o-mini', max_tokens: 8, messages: [{ role: 'user', content: 'x' }] });
} catch (e) {
  out.anthropic = { cls: e.constructor.name, status: e.status, type: e.error?.error?.type,
                    trace_id: e.error?.error?.trace_id };
}
console.log(JSON.stringify(out));
"""


class SdkErrorTest(unittest.TestCase):
    def test_the_sdks_read_errors_that_carry_a_trace_id(self):
        node = shutil.which("node")
        if node is None or not os.path.isdir(os.path.join(SDK_DIR, "node_modules")):
            self.skipTest("needs node and tests/sdk/node_modules (npm ci in tests/sdk)")
        g = Gateway(self, {})
        g.fault(KEY_A, "500")
        g.fault(KEY_B, "500")
        r = subprocess.run([node, "--input-type=module", "-e", SDK_ERRORS, g.node.gateway_url,
                            g.token], cwd=SDK_DIR, capture_output=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr.decode(errors="replace"))
        out = json.loads(r.stdout)
        o, a = out["openai"], out["anthropic"]
        self.assertEqual((o["cls"], o["status"], o["code"]),
                         ("InternalServerError", 502, "upstream_error"), o)
        self.assertIn("tried 2 keys of pool default", o["message"])
        self.assertRegex(o["trace_id"], r"^[0-9a-f]{32}$")
        self.assertEqual((a["cls"], a["status"], a["type"]), ("InternalServerError", 502,
                                                              "api_error"), a)
        self.assertRegex(a["trace_id"], r"^[0-9a-f]{32}$")


class SamplingTest(unittest.TestCase):
    def test_ratio_zero_keeps_failed_calls_and_sampled_parents_only(self):
        collector = Collector(self)
        g = Gateway(self, {"otlp_endpoint": collector.url, "trace_sample_ratio": 0})
        status, h, _ = g.call()
        self.assertEqual(status, 200)
        quiet = trace_of(h)[0]
        app_trace = secrets.token_hex(16)
        status, h, _ = g.call(headers={"traceparent": f"00-{app_trace}-{secrets.token_hex(8)}-01"})
        self.assertEqual(status, 200)
        self.assertTrue(h["traceparent"].endswith("-01"))
        unsampled = secrets.token_hex(16)
        status, h, _ = g.call(headers={"traceparent": f"00-{unsampled}-{secrets.token_hex(8)}-00"})
        self.assertEqual(status, 200)
        self.assertTrue(h["traceparent"].endswith("-00"))
        # A failover is kept whatever the ratio says.
        g.fault(KEY_A, "401")
        status, h, _ = g.call()
        self.assertEqual((status, h["x-keyplane-key"]), (200, "key-b"))
        failed = trace_of(h)[0]
        collector.wait_spans(failed, 3, "the failover's spans")
        collector.wait_spans(app_trace, 2, "the sampled parent's spans")
        # Spans are exported in the order calls end: the earlier calls'
        # would be there by now.
        self.assertEqual(collector.spans(quiet), [])
        self.assertEqual(collector.spans(unsampled), [])


class DeadCollectorTest(unittest.TestCase):
    def test_calls_succeed_and_the_loss_is_counted(self):
        port = refused_port()
        g = Gateway(self, {"otlp_endpoint": f"http://127.0.0.1:{port}",
                           "trace_queue_spans": 64, "otlp_timeout_ms": "1s"})
        for i in range(60):
            status, _, body = g.call(headers={"X-Request-Id": f"r-dead-{i}"})
            self.assertEqual(status, 200, body)
        wait_until(lambda: (metric_value(g.node.metrics(), "keyplane_trace_spans_dropped_total")
                            or 0) > 0, what="spans dropped on a full queue")
        wait_until(lambda: (metric_value(g.node.metrics(), "keyplane_trace_export_failures_total")
                            or 0) > 0, what="failed export requests")
        wait_until(lambda: (metric_value(g.node.metrics(), "keyplane_trace_spans_failed_total")
                            or 0) > 0, what="spans given up after the retries")
        # The queue drains, so new calls' spans are queued again.
        wait_until(lambda: metric_value(g.node.metrics(), "keyplane_trace_queue_spans") == 0,
                   what="the queue to drain")
        self.assertEqual(g.call()[0], 200)
        self.assertEqual(g.node.stop(), 0)


class AccessLogTest(unittest.TestCase):
    def test_one_line_per_call_and_sighup_reopens(self):
        h0 = Harness(self)
        path = h0.path("access.log")
        g = Gateway(self, {"access_log": path})
        g.fault(KEY_A, "429", times=1)
        traces = {}
        for rid in ("r-a1", "r-a2", "r-a3"):
            status, h, body = g.call(headers={"X-Request-Id": rid, "X-Project": "search"})
            self.assertEqual(status, 200, body)
            traces[rid] = trace_of(h)[0]

        def lines(p):
            return log_lines(p, strict=True) if os.path.exists(p) else []

        got = wait_until(lambda: len(lines(path)) >= 3 and lines(path), what="3 access lines")
        # One line each; a call ends just after its answer is written, so
        # the next call (on another worker) may end first.
        self.assertEqual(sorted(ln["request_id"] for ln in got), ["r-a1", "r-a2", "r-a3"])
        by_rid = {ln["request_id"]: ln for ln in got}
        first = by_rid["r-a1"]
        self.assertEqual(first["trace_id"], traces["r-a1"])
        self.assertEqual((first["tenant"], first["project"], first["route"]),
                         ("acme", "search", "/v1/chat/completions"))
        self.assertEqual((first["key_id"], first["pool"], first["status"], first["attempts"]),
                         ("key-b", "default", 200, 2))
        self.assertEqual((first["model_requested"], first["model_served"]),
                         ("gpt-4o-mini", "gpt-4o-mini"))
        self.assertEqual(first["tokens_out"], 16)
        self.assertGreater(first["cost_nanousd"], 0)
        self.assertGreater(first["duration_us"], 0)
        self.assertFalse(first["streamed"])
        self.assertEqual(by_rid["r-a2"]["attempts"], 1)
        # logrotate: rename, SIGHUP, the next line goes to a new file.
        os.rename(path, path + ".1")
        g.node.send_signal(signal.SIGHUP)
        wait_until(lambda: any("access log reopened" in ln.get("msg", "")
                               for ln in log_lines(g.node.log_path)), what="the reopen")
        status, _, _ = g.call(headers={"X-Request-Id": "r-a4"})
        self.assertEqual(status, 200)
        got = wait_until(lambda: lines(path), what="a line in the new file")
        self.assertEqual([ln["request_id"] for ln in got], ["r-a4"])
        self.assertEqual(len(lines(path + ".1")), 3)
        # No token, key or prompt in the log.
        assert_no_secrets([path, path + ".1"], [KEY_A, KEY_B, g.token, "PROMPT-7f3a9c"])

    def test_access_log_on_stderr(self):
        g = Gateway(self, {"access_log": "stderr"})
        status, _, _ = g.call(headers={"X-Request-Id": "r-err"})
        self.assertEqual(status, 200)
        line = wait_until(lambda: next((ln for ln in log_lines(g.node.log_path)
                                        if ln.get("request_id") == "r-err"), None),
                          what="the access line on stderr")
        self.assertEqual(line["status"], 200)


if __name__ == "__main__":
    unittest.main()
