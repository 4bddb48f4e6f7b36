#!/usr/bin/env python3
"""Budget figures: three keyplaned nodes and keyplane-mock on loopback, in one run.

    bench/budget-figures.py [--json] [--duration S] [--connections C] [--trials N]

What it measures (bench/README.md, "Budget figures"):

  1. Requests per second through the gateways with budgets off and on:
     keyplane-bench, closed loop, C connections spread over the three
     gateways (one keyplane-bench per node, run at the same time), chat_small
     (max_tokens 32). "On" is a hard tenant budget of $1,000,000 covering
     every call: each call reserves, settles and is reported; it is never
     exhausted. Off and on alternate (off, on, on, off) so drift falls on
     both alike.
  2. Raft commands per second caused by budget traffic during the "on"
     runs: keyplane_budget_lease_commands_total summed over the nodes,
     beside the requests per second.
  3. Overshoot over N trials (default 20): each trial puts a fresh hard
     $0.50 budget on a fresh tenant, then C connections over the three
     gateways send until it is exhausted (keyplane-bench, 4 s). What the
     provider would bill is read from the mock (/mock/stats: the usage of
     every answer it sent, at the test price) and compared with the limit:
     overshoot = max(0, billed - limit), in nano-USD, and how much of the
     limit went unspent.

Binaries come from KEYPLANE_BIN_DIR, else build-release/bin (built when
missing). Processes are started through tests/cluster/harness.py; everything
listens on 127.0.0.1 ports picked free, in temporary directories removed at
the end. Python 3 standard library only.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from figures_common import DEFAULT_BIN_DIR, REPO, Owner, load_harness, log  # noqa: E402
MASTER_KEY = "c" * 64
MODEL = "gpt-4o-mini"
PRICE = {"input_per_mtok": 10_000_000_000, "output_per_mtok": 30_000_000_000}


def http(method, url, body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Cluster:
    def __init__(self, H, bin_dir):
        self.owner = Owner("budget-figures")
        os.environ["KEYPLANE_BIN_DIR"] = bin_dir
        self.h = H.Harness(self.owner)
        self.H = H
        self.mock = self.h.start_mock(extra_args=["--workers", "1"])
        cfg = {"workers": 1, "log_level": os.environ.get("BUDGET_FIGURES_LOG_LEVEL", "warn")}
        env = {"KEYPLANE_MASTER_KEY": MASTER_KEY}
        self.n1 = self.h.start_node("n1", config=cfg, env=env)
        H.wait_until(lambda: self.n1.admin_token, what="admin.token")
        self.nodes = [self.n1] + [
            self.h.start_node(f"n{i}", config=cfg, args=["--join", self.n1.listen["control"]],
                              env=env) for i in (2, 3)]
        self.admin("PUT", "/providers/mock", {"kind": "openai-compatible",
                                             "base_url": self.mock.url + "/v1",
                                             "allow_insecure": True})
        self.admin("PUT", "/keys/key-a", {"provider": "mock", "secret": "sk-bench-budget-0001"})
        self.admin("PUT", "/pools/default", {"members": [{"key": "key-a"}]})
        self.admin("PUT", "/prices/" + MODEL, PRICE)
        self.tokens = {}

    def admin(self, method, path, body=None):
        status, raw = http(method, self.n1.control_url + "/admin/v1" + path, body,
                           self.n1.admin_token)
        if status not in (200, 201):
            raise RuntimeError(f"{method} {path}: {status} {raw[:200]!r}")
        return json.loads(raw) if raw else None

    def tenant(self, name):
        self.admin("PUT", "/tenants/" + name, {"display_name": name})
        tok = self.admin("POST", "/tokens", {"role": "app", "tenant": name, "name": name})["token"]
        for n in self.nodes:  # every node knows the token before traffic
            self.H.wait_until(lambda n=n: http("GET", n.gateway_url + "/v1/models",
                                               token=tok)[0] == 200, what="token replicated")
        return tok

    def budget(self, policy, tenant, limit):
        self.admin("PUT", "/policies/" + policy, {
            "scope_kind": "tenant", "scope_target": tenant,
            "budgets": [{"name": "daily", "window": "daily", "limit_nanousd": limit,
                         "kind": "hard"}]})
        for n in self.nodes:
            self.H.wait_until(lambda n=n: http("GET", n.control_url + "/admin/v1/budgets/" +
                                               policy + "/daily", token=self.n1.admin_token)[0]
                              == 200, what="policy replicated")

    def lease_commands(self):
        total = 0
        for n in self.nodes:
            total += self.H.metric_value(n.metrics(), "keyplane_budget_lease_commands_total") or 0
        return total

    def billed(self):
        _, raw = http("GET", self.mock.url + "/mock/stats")
        t = json.loads(raw)["tokens"]
        return (t["input"] * PRICE["input_per_mtok"]
                + t["output"] * PRICE["output_per_mtok"]) // 1_000_000

    def bench(self, token, conns, duration, warmup=0.5):
        """keyplane-bench against every gateway at once; summed answers/s and statuses."""
        per = max(1, conns // len(self.nodes))
        procs = [subprocess.Popen(
            [os.path.join(os.environ["KEYPLANE_BIN_DIR"], "keyplane-bench"),
             "--url", n.gateway_url + "/v1/chat/completions", "--token", token,
             "-c", str(per), "-d", str(duration), "--warmup", str(warmup), "--model", MODEL,
             "--json", "--quiet"], stdout=subprocess.PIPE, text=True) for n in self.nodes]
        rps, statuses = 0.0, {}
        for p in procs:
            out, _ = p.communicate(timeout=duration + 60)
            r = json.loads(out)
            rps += r["throughput_rps"]
            for k, v in r.get("status", {}).items():
                statuses[k] = statuses.get(k, 0) + v
        return rps, statuses


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--connections", type=int, default=48)
    ap.add_argument("--trials", type=int, default=20)
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
    H = load_harness()
    c = Cluster(H, bin_dir)
    try:
        result = run(c, args)
    finally:
        keep = os.environ.get("BUDGET_FIGURES_KEEP_LOGS")
        if keep:
            import shutil
            shutil.copytree(c.h.log_dir, keep, dirs_exist_ok=True)
        c.owner.close()
    result["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                         "processor": platform.processor() or platform.machine()}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result, args)


def run(c, args):
    tok = c.tenant("load")
    rounds = {"off": [], "on": []}
    commands_per_s, req_per_s_on = [], []
    for mode in ("off", "on", "on", "off"):
        if mode == "on":
            c.budget("load-budget", "load", 1_000_000_000_000_000)
        else:
            try:
                c.admin("DELETE", "/policies/load-budget")
            except RuntimeError:
                pass
        before = c.lease_commands()
        rps, st = c.bench(tok, args.connections, args.duration)
        after = c.lease_commands()
        log(f"budgets {mode}: {rps:.0f} req/s {st}; budget_lease commands {after - before}")
        rounds[mode].append(rps)
        if mode == "on":
            commands_per_s.append((after - before) / args.duration)
            req_per_s_on.append(rps)
    trials = []
    limit = 500_000_000  # $0.50
    for i in range(args.trials):
        name = f"t{i:02d}"
        tok = c.tenant(name)
        c.budget("b-" + name, name, limit)
        http("POST", c.mock.url + "/mock/reset")
        _, st = c.bench(tok, args.connections, 4, warmup=0)
        # Wait until every router reported (spent stops moving and equals
        # what the routers settled: nothing left in flight).
        prev = None
        for _ in range(100):
            b = c.admin("GET", f"/budgets/b-{name}/daily")
            cur = (b["spent_nanousd"], b["granted_nanousd"])
            if cur == prev:
                break
            prev = cur
            time.sleep(0.2)
        billed = c.billed()
        trials.append({"billed_nanousd": billed, "spent_nanousd": b["spent_nanousd"],
                       "overshoot_nanousd": max(0, billed - limit),
                       "unspent_nanousd": max(0, limit - billed),
                       "answers_200": st.get("200", 0), "answers_429": st.get("429", 0)})
        log(f"trial {i}: billed {billed} of {limit}, {st}")
    return {
        "requests_per_s": {"budgets_off": rounds["off"], "budgets_on": rounds["on"]},
        "budget_lease_commands_per_s": commands_per_s,
        "requests_per_s_during_those": req_per_s_on,
        "trials": trials,
        "overshoot_max_nanousd": max(t["overshoot_nanousd"] for t in trials) if trials else None,
        "unspent_max_nanousd": max(t["unspent_nanousd"] for t in trials) if trials else None,
        "limit_nanousd": limit,
    }


def print_table(r, args):
    off = sum(r["requests_per_s"]["budgets_off"]) / len(r["requests_per_s"]["budgets_off"])
    on = sum(r["requests_per_s"]["budgets_on"]) / len(r["requests_per_s"]["budgets_on"])
    cps = sum(r["budget_lease_commands_per_s"]) / len(r["budget_lease_commands_per_s"])
    print(f"machine: {r['machine']['cpus']} CPUs, {r['machine']['platform']}")
    print(f"3 nodes (1 worker each) + keyplane-mock + keyplane-bench on this machine; "
          f"{args.connections} connections, chat_small, {args.duration:g} s per run")
    print(f"requests/s, budgets off: {off:.0f}   ({', '.join(f'{x:.0f}' for x in r['requests_per_s']['budgets_off'])})")
    print(f"requests/s, budgets on:  {on:.0f}   ({', '.join(f'{x:.0f}' for x in r['requests_per_s']['budgets_on'])})")
    print(f"budget_lease Raft commands/s at that load: {cps:.1f} "
          f"({cps / on * 100 if on else 0:.2f}% of requests/s)")
    print(f"overshoot over {len(r['trials'])} trials of a $0.50 hard budget: "
          f"max {r['overshoot_max_nanousd']} nano-USD; unspent at most "
          f"{r['unspent_max_nanousd']} nano-USD")


if __name__ == "__main__":
    main()
