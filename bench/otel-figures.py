#!/usr/bin/env python3
"""Trace export figures: gateway latency with no exporter, a collector that
is down, and (optionally) one that is up, in one run.

    bench/otel-figures.py [--json] [--rate R] [--duration S] [--rounds N] [--with-up]

One keyplane-mock and one keyplaned per setting, each node with one router
worker, in front of the same mock:

  off   no otlp_endpoint, no access log: the trace context only (ids, the
        traceparent headers), as every node has;
  down  otlp_endpoint at a loopback port nothing listens on,
        trace_sample_ratio 1: every call builds and hands over its spans,
        the queue fills, the thread's exports fail and are retried, the
        rest is dropped and counted;
  up    (--with-up) a small OTLP/HTTP receiver in this process that accepts
        everything, trace_sample_ratio 1.

keyplane-bench runs open loop at R requests per second (chat_small) against
each node in turn, the settings interleaved (off, down, [up,] then the
reverse order, N times), so drift on a shared machine falls on all alike.
It prints p50, p99 and p99.9 per round and their means, the statuses, and
the down node's drop and failure counters.

Binaries come from KEYPLANE_BIN_DIR, else build-release/bin (built when
missing). Python 3 standard library only.
"""

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from figures_common import DEFAULT_BIN_DIR, REPO, Owner, load_harness, log  # noqa: E402
MASTER_KEY = "d" * 64


class Receiver:
    """Accepts every OTLP/HTTP export and counts the spans."""

    def __init__(self):
        self.spans = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.spans += sum(len(ss["spans"]) for rs in body["resourceSpans"]
                                   for ss in rs["scopeSpans"])
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def refused_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def admin(H, node, method, path, body=None):
    hdrs = {"Authorization": "Bearer " + node.admin_token}
    status, _, raw = H.http(method, node.control_url + "/admin/v1" + path, body=body,
                            headers=hdrs)
    if status not in (200, 201):
        raise RuntimeError(f"{method} {path}: {status} {raw[:200]!r}")
    return json.loads(raw) if raw else None


def start_node(H, h, name, mock, extra):
    cfg = dict({"workers": 1, "log_level": "warn"}, **extra)
    node = h.start_node(name, config=cfg, env={"KEYPLANE_MASTER_KEY": MASTER_KEY})
    H.wait_until(lambda: node.admin_token, what="admin.token")
    admin(H, node, "PUT", "/providers/mock", {"kind": "openai-compatible",
                                              "base_url": mock.url + "/v1",
                                              "allow_insecure": True})
    admin(H, node, "PUT", "/keys/key-a", {"provider": "mock", "secret": "sk-bench-otel-0001"})
    admin(H, node, "PUT", "/pools/default", {"members": [{"key": "key-a"}]})
    admin(H, node, "PUT", "/tenants/acme", {"display_name": "Acme"})
    node.app_token = admin(H, node, "POST", "/tokens",
                           {"role": "app", "tenant": "acme", "name": "bench"})["token"]
    return node


def bench(bin_dir, node, rate, duration, warmup):
    out = subprocess.run(
        [os.path.join(bin_dir, "keyplane-bench"), "--url", node.gateway_url + "/v1/chat/completions",
         "--token", node.app_token, "--rate", str(rate), "-c", "64", "-d", str(duration),
         "--warmup", str(warmup), "--json", "--quiet"],
        stdout=subprocess.PIPE, text=True, timeout=duration + warmup + 60, check=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--warmup", type=float, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--with-up", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    bin_dir = os.environ.get("KEYPLANE_BIN_DIR", DEFAULT_BIN_DIR)
    if not os.path.exists(os.path.join(bin_dir, "keyplaned")):
        log("building Release into build-release/")
        subprocess.run(["cmake", "-S", REPO, "-B", os.path.join(REPO, "build-release"),
                        "-DCMAKE_BUILD_TYPE=Release", "-DKP_TESTS=OFF"], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", os.path.join(REPO, "build-release"), "-j2"],
                       check=True, stdout=subprocess.DEVNULL)
    os.environ["KEYPLANE_BIN_DIR"] = bin_dir
    H = load_harness()
    owner = Owner("otel-figures")
    try:
        h = H.Harness(owner, check_sanitizers=False)
        mock = h.start_mock(extra_args=["--workers", "1"])
        nodes = {"off": start_node(H, h, "off", mock, {}),
                 "down": start_node(H, h, "down", mock, {
                     "otlp_endpoint": f"http://127.0.0.1:{refused_port()}",
                     "trace_sample_ratio": 1})}
        receiver = None
        if args.with_up:
            receiver = Receiver()
            nodes["up"] = start_node(H, h, "up", mock, {"otlp_endpoint": receiver.url,
                                                        "trace_sample_ratio": 1})
        order = list(nodes)
        runs = {k: [] for k in nodes}
        for i in range(args.rounds):
            for name in (order if i % 2 == 0 else list(reversed(order))):
                r = bench(bin_dir, nodes[name], args.rate, args.duration, args.warmup)
                lat = r["latency_ms"]
                runs[name].append({"p50": lat["p50"], "p99": lat["p99"], "p99_9": lat["p99_9"],
                                   "max": lat["max"], "throughput": r["throughput_rps"],
                                   "status": r.get("status", {}), "errors": r.get("errors", {})})
                log(f"round {i + 1} {name}: p50 {lat['p50']:.3f} p99 {lat['p99']:.3f} "
                    f"p99.9 {lat['p99_9']:.3f} ms, {r['throughput_rps']:.0f} req/s, "
                    f"{r.get('status', {})}")
        m = nodes["down"].metrics()
        counters = {k: H.metric_value(m, k) for k in (
            "keyplane_trace_spans_exported_total", "keyplane_trace_spans_dropped_total",
            "keyplane_trace_spans_failed_total", "keyplane_trace_export_failures_total")}
        result = {"rate": args.rate, "duration_s": args.duration, "rounds": runs,
                  "mean": {k: {q: sum(r[q] for r in v) / len(v) for q in ("p50", "p99", "p99_9")}
                           for k, v in runs.items()},
                  "median": {k: {q: median([r[q] for r in v]) for q in ("p50", "p99", "p99_9")}
                             for k, v in runs.items()},
                  "down_node_counters": counters,
                  "up_receiver_spans": receiver.spans if receiver else None,
                  "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                              "processor": platform.processor() or platform.machine()}}
    finally:
        owner.close()
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"open loop, {args.rate} req/s, {args.duration:g} s per round after "
          f"{args.warmup:g} s warm-up, {args.rounds} rounds per setting")
    print("| setting | median p50 ms | median p99 ms | median p99.9 ms | mean p99 ms | "
          "p99 of each round |")
    print("|---|---:|---:|---:|---:|---|")
    for k, v in runs.items():
        med, mean = result["median"][k], result["mean"][k]
        print(f"| {k} | {med['p50']:.3f} | {med['p99']:.3f} | {med['p99_9']:.3f} | "
              f"{mean['p99']:.3f} | " + ", ".join(f"{r['p99']:.3f}" for r in v) + " |")
    print("down node:", counters)
    if receiver:
        print("up receiver got", receiver.spans, "spans")


if __name__ == "__main__":
    main()
