"""clusterctl's usage commands (usage, usage events, usage export) and
reconcile, against FakeUsage: an in-memory stand-in for GET /admin/v1/usage,
/admin/v1/usage/events (docs/usage-api.md), /admin/v1/providers and
/admin/v1/keys (docs/control-api.md) that answers from a list of facts and
records every request. The tests check what clusterctl sends (parameters,
chunks), what it makes of the answers (tables, JSON lines, the CSV file, the
reconciliation) and its exit codes; tests against a real meter come with the
server side. Every run gets HOME and KEYPLANE_CONFIG_DIR inside the harness's
temporary directory.
"""

import csv
import io
import json
import os
import socket
import threading
import unittest
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness import Harness

TOKEN = "kp_test_usage_0123456789"
DAY = 86_400_000
JAN1 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DIMS = ("tenant", "project", "feature", "provider", "model", "key", "status_class", "kind")
BUCKETS = {"minute": 60_000, "hour": 3_600_000, "day": DAY}


def iso(ms):
    import datetime
    t = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def usd(nano):
    sign = "-" if nano < 0 else ""
    nano = abs(nano)
    return f"{sign}{nano // 1_000_000_000}.{nano % 1_000_000_000:09d}"


def fact(day, model, cost, provider="openai-main", project="web", key="k-1", requests=1,
         hour=0):
    f = dict.fromkeys(DIMS, "")
    f.update(time_ms=JAN1 + day * DAY + hour * 3_600_000, model=model, cost_nanousd=cost,
             provider=provider, project=project, key=key, tenant="acme", feature="chat",
             status_class="2xx", kind="app", requests=requests, errors=0,
             tokens_in=100 * requests, tokens_out=50 * requests)
    return f


class FakeUsage:
    def __init__(self, testcase, facts, providers=None, keys=None, events=None):
        self.facts = facts
        self.providers = providers if providers is not None else [
            {"id": "anthropic-main", "kind": "anthropic"},
            {"id": "openai-main", "kind": "openai"},
            {"id": "openai-eu", "kind": "openai"},
        ]
        self.keys = keys or [{"id": "k-1", "provider": "openai-main"}]
        self.events = events or []
        self.requests = []
        self.refuse = {}  # request number (0-based, usage only) -> (status, body)
        self.max_rows = 100_000
        self.csv_headers = {}  # request number -> a different header line
        self.csv_type = "text/csv; charset=utf-8"
        self.usage_requests = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                parts = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
                fake.requests.append((parts.path, query, self.headers.get("Authorization")))
                status, ctype, body = fake.dispatch(parts.path, query)
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

    def usage_queries(self):
        return [q for p, q, _ in self.requests if p == "/admin/v1/usage"]

    @staticmethod
    def error(status, code, message):
        return status, "application/json", json.dumps(
            {"error": {"message": message, "type": "invalid_request_error", "code": code}})

    def dispatch(self, path, query):
        if path in ("/admin/v1/providers", "/admin/v1/keys"):
            items = self.providers if path.endswith("providers") else self.keys
            return 200, "application/json", json.dumps({"items": items, "applied_index": 1})
        if path == "/admin/v1/usage/events":
            return self.answer_events(query)
        if path == "/admin/v1/usage":
            n = self.usage_requests
            self.usage_requests += 1
            if n in self.refuse:
                return self.refuse[n]
            return self.answer_usage(query, n)
        return self.error(404, "not_found", "no route")

    def answer_events(self, query):
        events = [e for e in self.events
                  if "request_id" not in query or e["request_id"] == query["request_id"][0]]
        limit = int(query.get("limit", ["100"])[0])
        return 200, "application/json", json.dumps(
            {"events": events[:limit], "truncated": len(events) > limit, "segments_scanned": 1,
             "meter": "fake"})

    def answer_usage(self, query, n):
        to = int(query.get("to", [str(JAN1 + DAY)])[0])
        frm = int(query.get("from", [str(to - DAY)])[0])
        gran = query.get("granularity", ["day"])[0]
        group = [d for d in DIMS if d in ",".join(query.get("group_by", [""])).split(",")]
        filters = {}
        for f in query.get("filter", []):
            for pair in f.split(","):
                dim, _, value = pair.partition(":")
                filters.setdefault(dim, set()).add(value)
        rows = {}
        for f in self.facts:
            if not frm <= f["time_ms"] < to:
                continue
            if any(f[d] not in vals for d, vals in filters.items()):
                continue
            start = frm if gran == "total" else f["time_ms"] // BUCKETS[gran] * BUCKETS[gran]
            k = (start,) + tuple(f[d] for d in group)
            r = rows.setdefault(k, dict(requests=0, errors=0, tokens_in=0, tokens_out=0,
                                        cost_nanousd=0))
            for field in r:
                r[field] += f[field]
        if len(rows) > self.max_rows:
            return self.error(400, "too_many_rows",
                              f"the answer would have {len(rows)} rows, more than "
                              f"{self.max_rows}")
        out = []
        for k in sorted(rows):
            row = {"start": iso(k[0])}
            row.update(zip(group, k[1:]))
            row.update(rows[k], errors_by_class={}, retries=0, streamed=0, tokens_cached=0,
                       cost_usd=usd(rows[k]["cost_nanousd"]),
                       latency_ms={"p50": 120.5, "p95": 310.25, "p99": 402.0})
            out.append(row)
        if query.get("format", ["json"])[0] == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\r\n")
            header = ["start", *group, "requests", "errors", "retries", "streamed", "tokens_in",
                      "tokens_out", "tokens_cached", "cost_usd", "latency_p50_ms",
                      "latency_p95_ms", "latency_p99_ms"]
            w.writerow(self.csv_headers.get(n, header))
            for r in out:
                w.writerow([r["start"], *[r[d] for d in group], r["requests"], r["errors"], 0, 0,
                            r["tokens_in"], r["tokens_out"], 0, r["cost_usd"], "120.500",
                            "310.250", "402.000"])
            return 200, self.csv_type, buf.getvalue()
        totals = {f: sum(r[f] for r in out) for f in
                  ("requests", "errors", "tokens_in", "tokens_out", "cost_nanousd")}
        totals.update(cost_usd=usd(totals["cost_nanousd"]), latency_ms={"p50": 120.5})
        return 200, "application/json", json.dumps(
            {"from": iso(frm), "to": iso(to), "granularity": gran, "group_by": group,
             "meter": "fake", "rows": out, "totals": totals})


OPENAI_HEADER = ("start_time,end_time,start_time_iso,end_time_iso,amount_value,amount_currency,"
                 "line_item,project_id,project_name,organization_id,organization_name\n")


def openai_row(day, amount, line_item, project="web"):
    start = (JAN1 + day * DAY) // 1000
    return (f"{start},{start + 86400},{iso(start * 1000)[:-1]}+00:00,"
            f"{iso((start + 86400) * 1000)[:-1]}+00:00,{amount},usd,\"{line_item}\",proj_x,"
            f"{project},org-1,Acme\n")


class UsageCommandsTest(unittest.TestCase):
    def setUp(self):
        self.h = Harness(self)
        self.facts = [
            fact(0, "gpt-4o-2024-08-06", 2_000_000_000, requests=3),
            fact(0, "gpt-4o-mini-2024-07-18", 4_500),
            fact(1, "gpt-4o-2024-08-06", 3_000_000_000, requests=2),
            fact(1, "gpt-4o-2024-08-06", 1_000_000_000, provider="openai-eu", key="k-2",
                 project="batch"),
            fact(2, "claude-sonnet-4-5-20250929", 7_000_000_000, provider="anthropic-main",
                 key="k-9"),
        ]
        self.fake = FakeUsage(self, self.facts, events=[
            {"time": "2026-01-01T00:00:01.000Z", "request_id": "req-1", "model_served": "gpt-4o"},
            {"time": "2026-01-01T00:00:02.000Z", "request_id": "req-2", "model_served": "gpt-4o"},
        ])

    def ctl(self, *args, server=None, input=None):
        env = {"KEYPLANE_CONFIG_DIR": self.h.path("ctl-config"),
               "KEYPLANE_SERVER": server or self.fake.url, "KEYPLANE_TOKEN": TOKEN}
        return self.h.run(["clusterctl", *args], env=env, input=input)

    def assertExit(self, cp, code):
        self.assertEqual(cp.returncode, code,
                         f"exit {cp.returncode}, wanted {code}\nstdout: {cp.stdout}\n"
                         f"stderr: {cp.stderr}")

    def write(self, name, text):
        path = self.h.path(name)
        with open(path, "w", newline="") as f:
            f.write(text)
        return path

    # -- usage ----------------------------------------------------------------

    def test_usage_table_with_totals(self):
        cp = self.ctl("usage", "--from", "2026-01-01", "--to", "2026-01-03", "--group-by",
                      "model", "--group-by", "provider", "--filter", "provider:openai-main")
        self.assertExit(cp, 0)
        lines = cp.stdout.splitlines()
        self.assertEqual(lines[0].split(), ["START", "PROVIDER", "MODEL", "REQUESTS", "ERRORS",
                                            "TOKENS_IN", "TOKENS_OUT", "COST_USD", "P50_MS",
                                            "P95_MS"])
        self.assertEqual(lines[1].split(), ["2026-01-01T00:00:00Z", "openai-main",
                                            "gpt-4o-2024-08-06", "3", "0", "300", "150", "$2.00",
                                            "120.5", "310.2"])
        self.assertEqual(lines[-1].split()[:2], ["TOTAL", "-"])
        self.assertIn("$5.0000045", lines[-1])
        (path, query, auth), = self.fake.requests
        self.assertEqual(auth, "Bearer " + TOKEN)
        self.assertEqual(query["from"], [str(JAN1)])
        self.assertEqual(query["to"], [str(JAN1 + 2 * DAY)])
        self.assertEqual(query["group_by"], ["provider,model"])  # table order
        self.assertEqual(query["filter"], ["provider:openai-main"])

    def test_usage_json_is_the_answer(self):
        cp = self.ctl("usage", "--from", "2026-01-01", "--to", "2026-01-02", "-o", "json")
        self.assertExit(cp, 0)
        doc = json.loads(cp.stdout)
        self.assertEqual(doc["totals"]["cost_nanousd"], 2_000_004_500)

    def test_usage_argument_errors_send_nothing(self):
        for args in (["--group-by", "model,colour"], ["--filter", "model"],
                     ["--filter", "region:eu"], ["--granularity", "week"],
                     ["--from", "tomorrow"], ["--from", "2026-01-02", "--to", "2026-01-01"],
                     ["stray"], ["--nope"]):
            with self.subTest(args=args):
                cp = self.ctl("usage", *args)
                self.assertExit(cp, 2)
                self.assertIn("clusterctl usage --help", cp.stderr)
        self.assertEqual(self.fake.requests, [])

    def test_usage_refused_and_unreachable(self):
        self.fake.refuse[0] = FakeUsage.error(400, "too_many_rows", "more than 100000 rows")
        cp = self.ctl("usage", "--granularity", "minute", "--group-by", "key")
        self.assertExit(cp, 1)
        self.assertIn("400 Bad Request: more than 100000 rows", cp.stderr)
        self.assertIn("narrow the range", cp.stderr)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.addCleanup(sock.close)
        cp = self.ctl("usage", server=f"http://127.0.0.1:{sock.getsockname()[1]}")
        self.assertExit(cp, 3)

    # -- usage events ---------------------------------------------------------

    def test_events_as_json_lines(self):
        cp = self.ctl("usage", "events", "--model", "gpt-4o", "--limit", "1", "--from",
                      "2026-01-01")
        self.assertExit(cp, 0)
        lines = cp.stdout.splitlines()
        self.assertEqual(len(lines), 1)
        self.assertEqual(json.loads(lines[0])["request_id"], "req-1")
        self.assertIn("more match", cp.stderr)
        path, query, _ = self.fake.requests[0]
        self.assertEqual(path, "/admin/v1/usage/events")
        self.assertEqual(query["model"], ["gpt-4o"])
        self.assertEqual(query["from"], [str(JAN1)])
        cp = self.ctl("usage", "events", "--request-id", "req-2")
        self.assertExit(cp, 0)
        self.assertEqual([json.loads(x)["request_id"] for x in cp.stdout.splitlines()], ["req-2"])
        for limit in ("0", "10001", "x"):
            self.assertExit(self.ctl("usage", "events", "--limit", limit), 2)

    # -- usage export ---------------------------------------------------------

    def test_export_chunks_into_one_file(self):
        out = self.h.path("usage.csv")
        cp = self.ctl("usage", "export", "--from", "2026-01-01", "--to", "2026-01-04",
                      "--group-by", "model", "--chunk", "1d", "-o", out)
        self.assertExit(cp, 0)
        queries = self.fake.usage_queries()
        self.assertEqual([(q["from"], q["to"]) for q in queries],
                         [([str(JAN1 + i * DAY)], [str(JAN1 + (i + 1) * DAY)]) for i in range(3)])
        self.assertTrue(all(q["format"] == ["csv"] for q in queries))
        with open(out, newline="") as f:
            text = f.read()
        rows = list(csv.reader(io.StringIO(text)))
        self.assertEqual(rows[0][:3], ["start", "model", "requests"])
        self.assertEqual([r[1] for r in rows[1:]],
                         ["gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18", "gpt-4o-2024-08-06",
                          "claude-sonnet-4-5-20250929"])
        self.assertEqual(text.count("start,"), 1)
        self.assertTrue(text.endswith("\r\n"))
        self.assertFalse(os.path.exists(out + ".tmp"))
        # Not a terminal: one line per chunk, then the summary.
        self.assertEqual(cp.stderr.count("usage export: chunk "), 3)
        self.assertIn("4 rows in 3 requests written to", cp.stderr)

    def test_export_default_chunks_follow_granularity(self):
        cp = self.ctl("usage", "export", "--from", "2026-01-01", "--to", "2026-01-03",
                      "--granularity", "hour", "-q", "-o", "-")
        self.assertExit(cp, 0)
        self.assertEqual(cp.stderr, "")
        self.assertEqual(len(self.fake.usage_queries()), 1)  # a week of hours per request
        self.assertEqual(len(cp.stdout.splitlines()), 3)  # header and two hours
        cp = self.ctl("usage", "export", "--from", "2026-01-01T12:00:00Z", "--to",
                      "2026-01-02T12:00:00Z", "--granularity", "minute", "-q", "-o", "-")
        self.assertExit(cp, 0)
        self.assertEqual([q["to"] for q in self.fake.usage_queries()[1:]],
                         [[str(JAN1 + DAY)], [str(JAN1 + DAY + DAY // 2)]])

    def test_export_failure_leaves_no_file(self):
        out = self.h.path("usage.csv")
        self.write("usage.csv", "previous export\n")
        self.fake.refuse[1] = FakeUsage.error(503, "no_meter", "no meter answered")
        cp = self.ctl("usage", "export", "--from", "2026-01-01", "--to", "2026-01-04",
                      "--chunk", "1d", "-o", out)
        self.assertExit(cp, 1)
        self.assertIn("503", cp.stderr)
        with open(out) as f:
            self.assertEqual(f.read(), "previous export\n")
        self.assertFalse(os.path.exists(out + ".tmp"))

    def test_export_refuses_answers_off_contract(self):
        out = self.h.path("usage.csv")
        self.fake.csv_headers[1] = ["start", "model", "something_else"]
        cp = self.ctl("usage", "export", "--from", "2026-01-01", "--to", "2026-01-03",
                      "--chunk", "1d", "-o", out)
        self.assertExit(cp, 1)
        self.assertIn("the CSV header differs from the first chunk's", cp.stderr)
        self.fake.csv_type = "application/json"
        cp = self.ctl("usage", "export", "--from", "2026-01-01", "--to", "2026-01-03", "-o", out)
        self.assertExit(cp, 1)
        self.assertIn("the answer is not CSV", cp.stderr)
        self.assertFalse(os.path.exists(out))
        self.assertFalse(os.path.exists(out + ".tmp"))

    def test_export_argument_errors(self):
        cases = [
            ["--from", "2026-01-01", "-o", "x.csv"],
            ["--from", "2026-01-01", "--to", "2026-01-02"],
            ["--from", "2026-01-01", "--to", "2026-01-02", "--format", "json", "-o", "x.csv"],
            ["--from", "2026-01-01", "--to", "2026-01-02", "--chunk", "90m", "-o", "x.csv"],
            ["--from", "2026-01-01", "--to", "2026-01-02", "--granularity", "total", "--chunk",
             "1d", "-o", "x.csv"],
            ["--from", "2026-01-01", "--to", "2026-01-02", "-o", "/nonexistent/dir/x.csv"],
        ]
        for args in cases:
            with self.subTest(args=args):
                self.assertExit(self.ctl("usage", "export", *args), 2)
        self.assertEqual(self.fake.usage_queries(), [])

    # -- reconcile --------------------------------------------------------------

    def openai_export(self, scale_day1=1.0):
        """The OpenAI export of the facts above; @scale_day1 scales one line item of
        January 2nd (1.03: +3% on it, 2.2% on the day's gpt-4o total)."""
        return self.write("openai.csv", OPENAI_HEADER
                          + openai_row(0, "1.5000000000000000", "gpt-4o-2024-08-06, input")
                          + openai_row(0, "0.5", "gpt-4o-2024-08-06, output")
                          + openai_row(0, "0.0000045", "gpt-4o-mini-2024-07-18, input")
                          + openai_row(0, "0.02", "web search tool calls")
                          + openai_row(1, f"{3.0 * scale_day1:.6f}", "gpt-4o-2024-08-06, output")
                          + openai_row(1, "1.0", "gpt-4o-2024-08-06, output", project="batch"))

    def test_reconcile_matching_export_exits_0(self):
        cp = self.ctl("reconcile", "--vendor", "openai", "--file", self.openai_export())
        self.assertExit(cp, 0)
        self.assertIn("openai 2026-01-01..2026-01-02 by model: 3 compared, 0 differ by more than "
                      "1.00%; export $6.0000045, metered $6.0000045, difference $0.00 (0.00%)",
                      cp.stdout)
        self.assertIn("not compared: $0.02 in 1 export rows that name no model", cp.stdout)
        # The registry's OpenAI providers, the export's days, per day and model.
        (q,) = self.fake.usage_queries()
        self.assertEqual(q["filter"], ["provider:openai-main", "provider:openai-eu"])
        self.assertEqual(q["group_by"], ["model"])
        self.assertEqual(q["granularity"], ["day"])
        self.assertEqual((q["from"], q["to"]), ([str(JAN1)], [str(JAN1 + 2 * DAY)]))

    def test_reconcile_reports_a_difference_above_the_threshold(self):
        cp = self.ctl("reconcile", "--vendor", "openai", "--file",
                      self.openai_export(scale_day1=1.03))
        self.assertExit(cp, 1)
        lines = cp.stdout.splitlines()
        self.assertEqual(lines[0].split(), ["DAY", "MODEL", "VENDOR_COST", "METERED_COST",
                                            "DIFFERENCE", "RELATIVE", "NOTE"])
        self.assertEqual(lines[1].split(), ["2026-01-02", "gpt-4o", "$4.09", "$4.00", "$0.09",
                                            "2.20%", "differs"])
        self.assertIn("1 differ by more than 1.00%", lines[2])
        # A looser threshold passes; JSON says the same.
        self.assertExit(self.ctl("reconcile", "--vendor", "openai", "--file",
                                 self.h.path("openai.csv"), "--threshold", "2.5%"), 0)
        cp = self.ctl("reconcile", "--vendor", "openai", "--file", self.h.path("openai.csv"),
                      "-o", "json")
        self.assertExit(cp, 1)
        doc = json.loads(cp.stdout)
        self.assertEqual(doc["differing"], 1)
        self.assertEqual(doc["rows"][0]["difference_nanousd"], 90_000_000)
        self.assertEqual(doc["providers"], ["openai-main", "openai-eu"])

    def test_reconcile_by_project_and_key(self):
        cp = self.ctl("reconcile", "--vendor", "openai", "--file", self.openai_export(),
                      "--by", "project", "--provider", "openai-main", "--provider", "openai-eu")
        self.assertExit(cp, 0)
        self.assertEqual(self.fake.usage_queries()[0]["group_by"], ["project,model"])
        # By key: the export's key ids against the registry keys' names.
        self.fake.keys = [{"id": "k-1", "name": "key_AAA"}, {"id": "k-2", "name": "key_BBB"}]
        export = self.write("keys.csv", "date,line_item,amount_value,api_key_id\n"
                            "2026-01-02,\"gpt-4o, output\",3,key_AAA\n"
                            "2026-01-02,\"gpt-4o, output\",1,key_BBB\n")
        cp = self.ctl("reconcile", "--vendor", "openai", "--file", export, "--by", "key",
                      "--all")
        self.assertExit(cp, 0)
        self.assertIn("key_BBB", cp.stdout)
        self.assertEqual(self.fake.usage_queries()[-1]["group_by"], ["model,key"])

    def test_reconcile_rows_on_one_side(self):
        export = self.write("anthropic.csv",
                            "usage_date_utc,model,workspace,api_key,cost_usd\n"
                            "2026-01-03,Claude Sonnet 4.5,Default,prod,7\n"
                            "2026-01-03,Claude Opus 4.1,Default,prod,2\n")
        cp = self.ctl("reconcile", "--vendor", "anthropic", "--file", export, "--from",
                      "2026-01-02", "--to", "2026-01-04")
        self.assertExit(cp, 1)
        self.assertIn("claude-opus-4-1", cp.stdout)
        self.assertIn("only in the export", cp.stdout)
        self.assertIn("(1 only in the export, 0 only metered)", cp.stdout)
        self.assertEqual(self.fake.usage_queries()[0]["filter"], ["provider:anthropic-main"])

    def test_reconcile_bad_export_files_exit_2(self):
        missing = self.write("usage-tokens.csv", "usage_date_utc,model_version,api_key\n")
        bad = self.write("bad.csv", OPENAI_HEADER + openai_row(0, "1.2.3", "gpt-4o, input"))
        cases = [
            (["--vendor", "openai", "--file", self.h.path("nope.csv")], "cannot read"),
            (["--vendor", "anthropic", "--file", missing],
             "usage-tokens.csv:1: the anthropic export has no column for an amount (cost_usd or "
             "cost); its columns are: usage_date_utc, model_version, api_key"),
            (["--vendor", "openai", "--file", bad], "bad.csv:2: amount_value: '1.2.3' is not"),
            (["--vendor", "gemini", "--file", bad], "--vendor must be one of openai, anthropic"),
            (["--file", bad], "--vendor"),
            (["--vendor", "openai", "--file", bad, "--threshold", "lots"], "--threshold"),
            (["--vendor", "openai", "--file", bad, "--by", "tenant"], "--by"),
            (["--vendor", "openai", "--file", self.openai_export(), "--from", "2026-01-05",
              "--to", "2026-01-01"], "--to must be after --from"),
            (["--vendor", "openai", "--file", self.openai_export(), "--from", "2024-01-01"],
             "more than 400"),
        ]
        for args, message in cases:
            with self.subTest(args=args):
                cp = self.ctl("reconcile", *args)
                self.assertExit(cp, 2)
                self.assertIn(message, cp.stderr)
        self.assertEqual(self.fake.requests, [])

    def test_reconcile_without_a_provider_of_the_kind(self):
        self.fake.providers = [{"id": "gemini-main", "kind": "gemini"}]
        cp = self.ctl("reconcile", "--vendor", "openai", "--file", self.openai_export())
        self.assertExit(cp, 2)
        self.assertIn("no provider of kind openai in the registry", cp.stderr)

    def test_reconcile_export_from_stdin(self):
        with open(self.openai_export()) as f:
            text = f.read()
        cp = self.ctl("reconcile", "--vendor", "openai", "--file", "-", input=text)
        self.assertExit(cp, 0)


if __name__ == "__main__":
    unittest.main()
