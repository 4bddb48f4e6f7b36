#!/usr/bin/env python3
"""Turns the runs of bench/compare.sh into its tables, prints them, and
rewrites the results section of bench/README.md between the compare markers.

usage: compare_report.py RUNS_DIR README WRITE(0|1), with the run's facts in
CMP_* environment variables (compare.sh sets them). Each measurement is a
keyplane-bench --json file RUNS_DIR/TARGET.KIND.CONNS.ROUND.json with the
server side's CPU seconds before and after it in the matching .cpu file.
Figures of a cell are the mean over its rounds."""
import glob
import json
import os
import re
import statistics
import sys

KINDS = [("chat_small", "non-streaming"), ("chat_stream", "streaming")]
BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"


def env(name):
    return os.environ.get("CMP_" + name, "")


def mean(xs):
    return statistics.fmean(xs) if xs else float("nan")


def load(runs, target, kind, conns):
    out = []
    for path in sorted(glob.glob(f"{runs}/{target}.{kind}.{conns}.*.json")):
        with open(path) as f:
            r = json.load(f)
        with open(path[:-5] + ".cpu") as f:
            before, after = map(float, f.read().split())
        r["cpu_s"] = after - before
        out.append(r)
    return out


def summary(rs):
    bad = sum(r["errors"]["total"] for r in rs) + sum(
        n for r in rs for code, n in r["status"].items() if code != "200")
    return {
        "p50": mean([r["latency_ms"]["p50"] for r in rs]),
        "p99": mean([r["latency_ms"]["p99"] for r in rs]),
        "rps": mean([r["throughput_rps"] for r in rs]),
        "answers": sum(r["requests"] + r.get("warmup_requests", 0) for r in rs),
        "cpu_s": sum(r["cpu_s"] for r in rs),
        "bad": bad,
    }


def ms(v):
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def added(v):
    return ("+" if v >= 0 else "-") + ms(abs(v))


def table(head, rows, align):
    out = ["| " + " | ".join(head) + " |",
           "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def main_table(runs, targets, conns_list, cpu, flags):
    head = ["conns", "kind", "direct p50 / p99 ms", "direct req/s",
            "nginx adds p50 / p99 ms", "nginx req/s"]
    if "keyplane" in targets:
        head += ["keyplane adds p50 / p99 ms", "keyplane req/s", "keyplane / nginx"]
    rows = []
    for conns in conns_list:
        for kind, label in KINDS:
            s = {t: summary(load(runs, t, kind, conns)) for t in targets}
            for t in targets:
                cpu[t][0] += s[t]["cpu_s"]
                cpu[t][1] += s[t]["answers"]
                if s[t]["bad"]:
                    flags.append(f"{t}, {label}, {conns} conns: "
                                 f"{s[t]['bad']} errors or non-200 answers")
            d = s["direct"]
            row = [str(conns), label, f"{ms(d['p50'])} / {ms(d['p99'])}", f"{d['rps']:,.0f}"]
            for t in targets[1:]:
                row += [f"{added(s[t]['p50'] - d['p50'])} / {added(s[t]['p99'] - d['p99'])}",
                        f"{s[t]['rps']:,.0f}"]
            if "keyplane" in targets:
                row.append(f"{s['keyplane']['rps'] / s['nginx']['rps']:.2f}x")
            rows.append(row)
    return table(head, rows, ["r", "l"] + ["r"] * (len(head) - 2))


def resource_table(targets, cpu):
    rss = {"nginx": int(env("NGINX_RSS") or 0), "keyplane": int(env("KP_RSS") or 0)}
    rows = []
    for t in targets[1:]:
        secs, n = cpu[t]
        name = "nginx (master + workers)" if t == "nginx" else "keyplaned"
        rows.append([name, f"{secs / n * 1000:.3f}" if n else "n/a",
                     f"{rss[t] / 1024:.1f} MiB"])
    return table(["proxy", "CPU s per 1,000 requests", "peak RSS (VmHWM)"], rows,
                 ["l", "r", "r"])


def ceiling_line(runs):
    bench = [json.load(open(p))["throughput_rps"]
             for p in sorted(glob.glob(f"{runs}/ceiling.bench.*.json"))]
    wrk = []
    for p in sorted(glob.glob(f"{runs}/ceiling.wrk.*.txt")):
        m = re.search(r"Requests/sec:\s+([0-9.]+)", open(p).read())
        if m:
            wrk.append(float(m.group(1)))
    b, w = mean(bench), mean(wrk)
    return (f"Generator ceiling against keyplane-mock, 64 connections, the same body: "
            f"keyplane-bench {b:,.0f} req/s, wrk {w:,.0f} req/s, ratio {b / w:.2f} "
            f"(rounds: keyplane-bench {', '.join(f'{x:,.0f}' for x in bench)}; "
            f"wrk {', '.join(f'{x:,.0f}' for x in wrk)}).")


def report(runs):
    targets = env("TARGETS").split()
    conns_list = [int(c) for c in env("CONNS").split()]
    cpu = {t: [0.0, 0] for t in targets}
    flags = []
    main = main_table(runs, targets, conns_list, cpu, flags)
    notes = [
        f"Run {env('DATE')}, commit {env('COMMIT')}, {os.cpu_count()} CPUs "
        f"({env('CPU_MODEL')}), Linux {env('KERNEL')}; {env('DURATION')}s per measurement "
        f"after {env('WARMUP')}s warm-up, {env('ROUNDS')} interleaved rounds per cell "
        f"(figures are their mean); closed loop, keyplane-bench --connections N.",
        f"Pinning: {env('PINNING')}.",
    ]
    if "keyplane" not in targets:
        notes.append("keyplane column left out: " + env("KP_NOTE"))
    notes += ["Not clean: " + f for f in flags]
    return "\n\n".join([main, resource_table(targets, cpu), ceiling_line(runs),
                        "- " + "\n- ".join(notes)])


def rewrite(readme, text):
    with open(readme) as f:
        doc = f.read()
    if BEGIN in doc and END in doc:
        pre, rest = doc.split(BEGIN, 1)
        post = rest.split(END, 1)[1]
        doc = pre + BEGIN + "\n" + text + "\n" + END + post
    else:
        doc += "\n" + BEGIN + "\n" + text + "\n" + END + "\n"
    with open(readme, "w") as f:
        f.write(doc)


def main():
    runs, readme, write = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    text = report(runs)
    print()
    print(text)
    if write:
        rewrite(readme, text)
        print(f"\n(results written to {readme})", file=sys.stderr)


if __name__ == "__main__":
    main()
