"""keyplane-mock as a real process on loopback: every route, streams, faults,
scripted per-key faults, stats and shutdown.

The binary comes from $KEYPLANE_BIN_DIR (default /work/main/build/bin). Each
mock listens on port 0 and the port is read from the line it prints. Nothing
waits on a sleep: tests wait on conditions with generous deadlines, and the
only timing assertions are lower bounds that a fault promises (latency=MS
means at least MS). The mock's stderr is printed when a test fails.
"""

import hashlib
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

BIN_DIR = os.environ.get("KEYPLANE_BIN_DIR", "/work/main/build/bin")
MOCK = os.path.join(BIN_DIR, "keyplane-mock")
START_DEADLINE = 15.0


class MockProcess:
    """A keyplane-mock process on 127.0.0.1:0 (self-contained on purpose)."""

    def __init__(self, *args):
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [MOCK, "--listen", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
        )
        self.port = self._read_port()
        self.base = "http://127.0.0.1:%d" % self.port

    def _read_port(self):
        deadline = time.monotonic() + START_DEADLINE
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                text = self.stderr_text()
                self.close()
                raise RuntimeError("keyplane-mock did not start:\n" + text)
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 1)
                if not chunk:
                    continue
                line += chunk
        text = line.decode().strip()
        prefix = "keyplane-mock listening on http://127.0.0.1:"
        if not text.startswith(prefix):
            raise RuntimeError("unexpected first line: %r" % text)
        return int(text[len(prefix):])

    def stderr_text(self):
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")

    def stop(self, timeout=10.0):
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError("keyplane-mock did not exit %.0f s after SIGTERM" % timeout)
        self.proc.stdout.close()
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self):
        """Release the pipes and the stderr file (after stop or kill)."""
        self.kill()
        if not self.proc.stdout.closed:
            self.proc.stdout.close()
        self.stderr.close()


def fingerprint(key):
    return "fp_" + hashlib.sha256(key.encode()).hexdigest()[:12]


def wait_for(predicate, what, deadline=10.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("timed out waiting for " + what)


OPENAI = {"Authorization": "Bearer sk-test-openai"}
ANTHROPIC = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
GEMINI = {"x-goog-api-key": "g-test"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "x"}]}]}


def sse_events(raw):
    """[(event name or None, data string)] from an SSE body."""
    events = []
    for block in raw.replace("\r\n", "\n").split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        events.append((name, "\n".join(data)))
    return events


class MockTest(unittest.TestCase):
    mock = None
    mock_args = ("--workers", "2")

    @classmethod
    def setUpClass(cls):
        if not os.access(MOCK, os.X_OK):
            raise unittest.SkipTest("no keyplane-mock at %s (set KEYPLANE_BIN_DIR)" % MOCK)
        cls.mock = MockProcess(*cls.mock_args)

    @classmethod
    def tearDownClass(cls):
        if cls.mock is not None:
            code = None
            try:
                code = cls.mock.stop()
                if code != 0:
                    sys.stderr.write(cls.mock.stderr_text())
            finally:
                cls.mock.close()
            assert code == 0, "keyplane-mock exited %r" % code

    def run(self, result=None):
        result = result if result is not None else self.defaultTestResult()
        before = len(result.failures) + len(result.errors)
        super().run(result)
        if self.mock is not None and len(result.failures) + len(result.errors) > before:
            sys.stderr.write("\n--- keyplane-mock stderr (%s) ---\n%s\n"
                             % (self.id(), self.mock.stderr_text()))
        return result

    def setUp(self):
        self.conns = []
        self.request("POST", "/mock/reset")

    def tearDown(self):
        for c in self.conns:
            c.close()

    # --- helpers ---------------------------------------------------------

    def conn(self, timeout=30):
        c = http.client.HTTPConnection("127.0.0.1", self.mock.port, timeout=timeout)
        self.conns.append(c)
        return c

    def request(self, method, path, body=None, headers=None, conn=None):
        """(status, headers, body bytes); one connection per call unless given."""
        c = conn or self.conn()
        payload = None
        if body is not None:
            payload = body if isinstance(body, (bytes, str)) else json.dumps(body)
        h = dict(headers or {})
        if payload is not None:
            h.setdefault("Content-Type", "application/json")
        c.request(method, path, body=payload, headers=h)
        r = c.getresponse()
        return r.status, r, r.read()

    def json_request(self, method, path, body=None, headers=None):
        status, r, data = self.request(method, path, body, headers)
        return status, r, json.loads(data)

    def chat_with_fault(self, spec, body=CHAT):
        """A chat completion carrying X-Mock-Fault: SPEC; (status, response, body)."""
        return self.request("POST", "/v1/chat/completions", body, {**OPENAI, "X-Mock-Fault": spec})

    def stats(self):
        status, _, data = self.json_request("GET", "/mock/stats")
        self.assertEqual(status, 200)
        return data


class RouteTests(MockTest):
    def test_chat_completion_usage_is_derived_from_the_request(self):
        status, r, data = self.json_request("POST", "/v1/chat/completions", CHAT, OPENAI)
        self.assertEqual(status, 200)
        self.assertTrue(r.getheader("Content-Type").startswith("application/json"))
        self.assertEqual(data["object"], "chat.completion")
        self.assertEqual(data["model"], "gpt-4o-mini")
        self.assertEqual(data["choices"][0]["message"]["content"].split()[:2], ["mock0", "mock1"])
        usage = data["usage"]
        self.assertEqual((usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]),
                         (7, 16, 23))

    def test_every_route_answers_in_shape(self):
        _, _, d = self.json_request("POST", "/v1/completions",
                                    {"model": "m", "prompt": "abcd", "max_tokens": 2}, OPENAI)
        self.assertEqual((d["object"], d["choices"][0]["text"], d["usage"]["prompt_tokens"]),
                         ("text_completion", "mock0 mock1", 1))
        _, _, d = self.json_request("POST", "/v1/embeddings",
                                    {"model": "text-embedding-3-small", "input": ["a", "b"]}, OPENAI)
        self.assertEqual([len(e["embedding"]) for e in d["data"]], [8, 8])
        self.assertEqual(d["usage"], {"prompt_tokens": 2, "total_tokens": 2})
        _, _, d = self.json_request("POST", "/v1/responses", {"model": "gpt-4o", "input": "hi"}, OPENAI)
        self.assertEqual((d["object"], d["status"], d["usage"]["output_tokens"]),
                         ("response", "completed", 16))
        self.assertEqual(d["output"][0]["content"][0]["type"], "output_text")
        _, _, d = self.json_request("GET", "/v1/models", None, OPENAI)
        ids = {m["id"] for m in d["data"]}
        for want in ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "claude-3-5-haiku-latest",
                     "gemini-1.5-flash"):
            self.assertIn(want, ids)
        _, _, d = self.json_request(
            "POST", "/v1/messages",
            {"model": "claude-3-5-haiku-latest", "max_tokens": 3,
             "messages": [{"role": "user", "content": "hi"}]},
            ANTHROPIC)
        self.assertEqual((d["type"], d["stop_reason"], d["usage"]["output_tokens"]),
                         ("message", "max_tokens", 3))
        self.assertEqual(d["content"][0]["text"], "mock0 mock1 mock2")
        _, _, d = self.json_request(
            "POST", "/v1beta/models/gemini-1.5-flash:generateContent",
            {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, GEMINI)
        self.assertEqual(d["candidates"][0]["finishReason"], "STOP")
        self.assertEqual(d["usageMetadata"]["candidatesTokenCount"], 16)
        self.assertEqual(d["modelVersion"], "gemini-1.5-flash")

    def test_keep_alive_serves_many_requests_on_one_connection(self):
        c = self.conn()
        for _ in range(20):
            status, _, _ = self.request("POST", "/v1/chat/completions", CHAT, OPENAI, conn=c)
            self.assertEqual(status, 200)
        self.assertEqual(self.stats()["routes"]["/v1/chat/completions"], 20)

    def test_missing_key_is_401_in_each_provider_shape(self):
        status, _, d = self.json_request("POST", "/v1/chat/completions", CHAT)
        self.assertEqual(status, 401)
        self.assertIn("type", d["error"])
        status, _, d = self.json_request("POST", "/v1/messages", {}, {"anthropic-version": "2023-06-01"})
        self.assertEqual((status, d["type"], d["error"]["type"]), (401, "error", "authentication_error"))
        status, _, d = self.json_request("POST", "/v1beta/models/g:generateContent", {})
        self.assertEqual((status, d["error"]["status"]), (401, "UNAUTHENTICATED"))

    def test_bad_requests(self):
        status, _, _ = self.request("GET", "/v1/nothing", None, OPENAI)
        self.assertEqual(status, 404)
        status, r, _ = self.request("GET", "/v1/chat/completions", None, OPENAI)
        self.assertEqual((status, r.getheader("Allow")), (405, "POST"))
        status, _, d = self.json_request("POST", "/v1/chat/completions", "{not json", OPENAI)
        self.assertEqual(status, 400)
        self.assertEqual(d["error"]["type"], "invalid_request_error")
        no_max_tokens = {"model": "c", "messages": [{"role": "user", "content": "x"}]}
        status, _, d = self.json_request("POST", "/v1/messages", no_max_tokens, ANTHROPIC)
        self.assertEqual((status, d["error"]["type"]), (400, "invalid_request_error"))
        status, _, d = self.json_request(
            "POST", "/v1beta/models/g:generateContent?key=AIzaSecret", GEMINI_BODY, GEMINI)
        self.assertEqual(status, 400)
        self.assertIn("x-goog-api-key", d["error"]["message"])
        self.assertNotIn("AIzaSecret", d["error"]["message"])


class StreamTests(MockTest):
    def stream(self, path, body, headers):
        status, r, data = self.request("POST", path, body, headers)
        self.assertEqual(status, 200)
        self.assertTrue(r.getheader("Content-Type").startswith("text/event-stream"))
        return sse_events(data.decode())

    def test_chat_stream_usage_only_with_include_usage(self):
        events = self.stream("/v1/chat/completions", {**CHAT, "stream": True, "max_tokens": 4}, OPENAI)
        self.assertEqual(events[-1][1], "[DONE]")
        chunks = [json.loads(d) for _, d in events[:-1]]
        self.assertEqual(chunks[0]["choices"][0]["delta"]["role"], "assistant")
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        self.assertEqual(text, "mock0 mock1 mock2 mock3")
        self.assertTrue(all("usage" not in c for c in chunks))

        with_usage = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        events = self.stream("/v1/chat/completions", with_usage, OPENAI)
        chunks = [json.loads(d) for _, d in events[:-1]]
        self.assertEqual(chunks[-1]["choices"], [])
        self.assertEqual(chunks[-1]["usage"]["completion_tokens"], 16)
        self.assertEqual(chunks[-1]["usage"]["prompt_tokens"], 7)
        self.assertTrue(all(c["usage"] is None for c in chunks[:-1]))

    def test_anthropic_stream_event_sequence(self):
        events = self.stream(
            "/v1/messages",
            {"model": "c", "max_tokens": 2, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
            ANTHROPIC)
        self.assertEqual([n for n, _ in events], [
            "message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta",
            "content_block_stop", "message_delta", "message_stop"])
        for name, data in events:
            self.assertEqual(json.loads(data)["type"], name)
        self.assertEqual(json.loads(events[6][1])["usage"]["output_tokens"], 2)

    def test_responses_and_completions_and_gemini_streams(self):
        events = self.stream("/v1/responses", {"model": "m", "input": "hi", "stream": True}, OPENAI)
        self.assertEqual(events[0][0], "response.created")
        self.assertEqual(events[-1][0], "response.completed")
        self.assertEqual(json.loads(events[-1][1])["response"]["usage"]["output_tokens"], 16)
        events = self.stream("/v1/completions",
                             {"model": "m", "prompt": "x", "stream": True, "max_tokens": 2}, OPENAI)
        self.assertEqual(events[-1][1], "[DONE]")
        events = self.stream(
            "/v1beta/models/gemini-1.5-flash:streamGenerateContent?alt=sse",
            {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"maxOutputTokens": 3}}, GEMINI)
        objs = [json.loads(d) for _, d in events]
        self.assertEqual(len(objs), 3)
        self.assertNotIn("usageMetadata", objs[0])
        self.assertEqual(objs[-1]["usageMetadata"]["candidatesTokenCount"], 3)


class BackpressureTests(StreamTests):
    """The stream tests again with a 16-byte write watermark: every event
    leaves the stream unwritable, so each one waits for the drain callback."""

    mock_args = ("--write-watermark", "16")

    def test_slow_reader_gets_every_event(self):
        body = json.dumps({**CHAT, "stream": True}).encode()
        data = b""
        with socket.create_connection(("127.0.0.1", self.mock.port), timeout=30) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
                      b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            while True:
                chunk = s.recv(7)  # a few bytes at a time
                if not chunk:
                    break
                data += chunk
        self.assertTrue(data.startswith(b"HTTP/1.1 200"))
        self.assertEqual(data.count(b"data: "), 1 + 16 + 1 + 1)
        self.assertTrue(data.endswith(b"0\r\n\r\n"))


class FaultTests(MockTest):
    def test_429_with_retry_after(self):
        status, r, data = self.chat_with_fault("429")
        self.assertEqual((status, r.getheader("Retry-After"), json.loads(data)["error"]["code"]),
                         (429, "1", "rate_limit_exceeded"))
        status, r, _ = self.chat_with_fault("429:retry_after=12")
        self.assertEqual((status, r.getheader("Retry-After")), (429, "12"))

    def test_error_statuses_in_provider_shapes(self):
        status, _, data = self.chat_with_fault("quota")
        self.assertEqual((status, json.loads(data)["error"]["code"]), (429, "insufficient_quota"))
        for code in ("401", "403", "404", "500", "502", "503"):
            status, _, data = self.chat_with_fault(code)
            self.assertEqual(status, int(code))
            self.assertIn("message", json.loads(data)["error"])
        status, _, d = self.json_request("POST", "/v1/messages", {}, {**ANTHROPIC, "X-Mock-Fault": "529"})
        self.assertEqual((status, d["error"]["type"]), (529, "overloaded_error"))
        status, _, data = self.chat_with_fault("bogus")
        self.assertEqual(status, 400)
        self.assertIn("bogus", json.loads(data)["error"]["message"])

    # libuv timers run on a coarse millisecond clock that may trail Python's
    # CLOCK_MONOTONIC by a few milliseconds, so each delay is checked with that
    # slack: enough to tell a delay applied from one ignored.
    TIMER_SLACK = 0.01

    def test_latency_and_slow_first_byte_are_at_least_as_long_as_asked(self):
        for spec in ("latency=300", "slow_first_byte=300"):
            start = time.monotonic()
            status, _, _ = self.chat_with_fault(spec)
            self.assertEqual(status, 200)
            self.assertGreaterEqual(time.monotonic() - start, 0.3 - self.TIMER_SLACK, spec)

    def test_slow_chunks_spaces_stream_events(self):
        start = time.monotonic()
        status, _, data = self.request(
            "POST", "/v1/chat/completions", {**CHAT, "stream": True, "max_tokens": 2},
            {**OPENAI, "X-Mock-Fault": "slow_chunks=60"})
        self.assertEqual(status, 200)
        events = sse_events(data.decode())
        self.assertEqual(len(events), 5)
        gaps = len(events) - 1
        self.assertGreaterEqual(time.monotonic() - start, (0.06 - self.TIMER_SLACK) * gaps)

    def test_reset_mid_stream_breaks_the_stream(self):
        c = self.conn()
        c.request("POST", "/v1/chat/completions", body=json.dumps({**CHAT, "stream": True}),
                  headers={**OPENAI, "X-Mock-Fault": "reset_mid_stream=2"})
        r = c.getresponse()
        self.assertEqual(r.status, 200)
        broken = (http.client.IncompleteRead, ConnectionResetError, http.client.RemoteDisconnected)
        with self.assertRaises(broken):
            r.read()
        self.assertEqual(wait_for(lambda: self.stats()["resets"], "the reset in stats"), 1)

    def test_malformed_json(self):
        status, _, data = self.chat_with_fault("malformed_json")
        self.assertEqual(status, 200)
        with self.assertRaises(ValueError):
            json.loads(data)
        status, _, data = self.chat_with_fault("malformed_json", {**CHAT, "stream": True})
        bad = 0
        for _, d in sse_events(data.decode())[:-1]:
            try:
                json.loads(d)
            except ValueError:
                bad += 1
        self.assertEqual(bad, 1)

    def test_client_going_away_is_counted_as_aborted(self):
        body = json.dumps(CHAT).encode()
        with socket.create_connection(("127.0.0.1", self.mock.port)) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-a\r\n"
                      b"X-Mock-Fault: latency=30000\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            wait_for(lambda: self.stats()["requests"] == 1, "the request to arrive")
        self.assertEqual(wait_for(lambda: self.stats()["aborted"], "the abort in stats"), 1)


class ScriptTests(MockTest):
    def test_scripted_fault_applies_times_then_clears(self):
        key = "sk-scripted-1"
        status, _, d = self.json_request("POST", "/mock/faults", {"key": key, "faults": "503", "times": 2})
        self.assertEqual((status, d["key_fp"]), (200, fingerprint(key)))
        _, _, listed = self.json_request("GET", "/mock/faults")
        self.assertEqual(listed["faults"][0]["key_fp"], fingerprint(key))
        self.assertNotIn(key, json.dumps(listed))
        auth = {"Authorization": "Bearer " + key}
        got = [self.request("POST", "/v1/chat/completions", CHAT, auth)[0] for _ in range(3)]
        self.assertEqual(got, [503, 503, 200])
        self.assertEqual(self.json_request("GET", "/mock/faults")[2]["faults"], [])

    def test_scripted_fault_matches_each_providers_key_header(self):
        self.json_request("POST", "/mock/faults", {"key": "sk-ant-test", "faults": "529"})
        self.json_request("POST", "/mock/faults", {"key": "g-test", "faults": "429"})
        body = {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
        for _ in range(2):
            self.assertEqual(self.request("POST", "/v1/messages", body, ANTHROPIC)[0], 529)
        status, _, _ = self.request("POST", "/v1beta/models/g:generateContent", GEMINI_BODY, GEMINI)
        self.assertEqual(status, 429)
        self.assertEqual(self.json_request("DELETE", "/mock/faults")[2], {"cleared": 2})
        self.assertEqual(self.request("POST", "/v1/messages", body, ANTHROPIC)[0], 200)

    def test_bad_script_is_refused(self):
        status, _, d = self.json_request("POST", "/mock/faults", {"key": "k", "faults": "latency=soon"})
        self.assertEqual(status, 400)
        self.assertIn("latency=soon", d["error"]["message"])

    def test_stats_count_per_key_fingerprint_route_and_status(self):
        for _ in range(3):
            self.request("POST", "/v1/chat/completions", CHAT, {"Authorization": "Bearer sk-key-a"})
        for _ in range(2):
            self.request("POST", "/v1/embeddings", {"model": "e", "input": "x"},
                         {"Authorization": "Bearer sk-key-b"})
        self.request("POST", "/v1/chat/completions", CHAT,
                     {"Authorization": "Bearer sk-key-b", "X-Mock-Fault": "500"})
        s = self.stats()
        self.assertEqual(s["requests"], 6)
        self.assertEqual(s["keys"], {fingerprint("sk-key-a"): 3, fingerprint("sk-key-b"): 3})
        self.assertEqual(s["routes"], {"/v1/chat/completions": 4, "/v1/embeddings": 2})
        self.assertEqual(s["statuses"], {"200": 5, "500": 1})
        self.assertNotIn("sk-key", json.dumps(s))
        self.request("POST", "/mock/reset")
        self.assertEqual(self.stats()["requests"], 0)


class ProcessTests(unittest.TestCase):
    def setUp(self):
        if not os.access(MOCK, os.X_OK):
            self.skipTest("no keyplane-mock at %s (set KEYPLANE_BIN_DIR)" % MOCK)

    def test_sigterm_exits_0_promptly_even_with_requests_in_flight(self):
        mock = MockProcess("--workers", "2")
        try:
            with socket.create_connection(("127.0.0.1", mock.port)) as s:
                s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
                          b"X-Mock-Fault: latency=60000\r\n\r\n")
                c = http.client.HTTPConnection("127.0.0.1", mock.port, timeout=10)
                try:
                    wait_for(lambda: (c.request("GET", "/mock/stats"),
                                      json.loads(c.getresponse().read()))[1]["requests"] == 1,
                             "the slow request to arrive")
                finally:
                    c.close()
                self.assertEqual(mock.stop(timeout=10), 0)
        except BaseException:
            mock.kill()
            sys.stderr.write(mock.stderr_text())
            raise
        finally:
            mock.close()

    def test_bad_arguments_exit_2(self):
        for args in (["--workers", "0"], ["--bogus"], ["--listen", "nonsense"]):
            r = subprocess.run([MOCK, *args], capture_output=True, timeout=10)
            self.assertEqual(r.returncode, 2, args)
            self.assertTrue(r.stderr, args)

    def test_help_and_version(self):
        r = subprocess.run([MOCK, "--help"], capture_output=True, timeout=10)
        self.assertEqual(r.returncode, 0)
        self.assertIn(b"--listen", r.stdout)
        r = subprocess.run([MOCK, "--version"], capture_output=True, timeout=10)
        self.assertEqual(r.returncode, 0)
        self.assertTrue(r.stdout.startswith(b"keyplane-mock "))


if __name__ == "__main__":
    unittest.main()
