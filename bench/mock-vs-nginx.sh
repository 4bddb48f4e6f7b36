#!/usr/bin/env bash
# keyplane-mock's ceiling beside nginx answering a static 200, measured with
# wrk in one run: the Foundation issue's figure ("keyplane-mock, with as many
# worker threads as nginx has worker processes, should reach at least
# nginx's figure").
#
# usage: bench/mock-vs-nginx.sh [--workers N] [--connections C] [--duration S] [--rounds R]
# Both servers get N workers (default 1) pinned to CPU 0; wrk runs on the other
# CPUs (or shares when there is only one). Rounds alternate A B, B A, ... so
# machine drift falls on both. The mock answers a non-streaming chat
# completion (JSON parsed, usage computed, ~560-byte answer); nginx answers
# `return 200` with a body of the same size.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
workers=1 conns=64 duration=5 rounds=2
while [ $# -gt 0 ]; do
  case "$1" in
  --workers) workers=$2; shift 2 ;;
  --connections) conns=$2; shift 2 ;;
  --duration) duration=$2; shift 2 ;;
  --rounds) rounds=$2; shift 2 ;;
  -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "mock-vs-nginx.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
for t in wrk taskset python3 cmake; do
  command -v "$t" >/dev/null || { echo "mock-vs-nginx.sh: $t missing; run ./deploy/install-deps.sh" >&2; exit 1; }
done
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

bin=${BENCH_BIN_DIR:-$root/build-bench/bin}
if [ ! -x "$bin/keyplane-mock" ]; then
  cmake -S "$root" -B "$root/build-bench" -DCMAKE_BUILD_TYPE=Release -DKP_TESTS=OFF >/dev/null
  cmake --build "$root/build-bench" -j"$(nproc)" --target keyplane-mock >/dev/null
fi

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
ncpu=$(nproc)
srv_cpu=0
gen_cpus=$([ "$ncpu" -gt 1 ] && echo "1-$((ncpu - 1))" || echo 0)

mock_port=$(free_port)
taskset -c $srv_cpu "$bin/keyplane-mock" --listen "127.0.0.1:$mock_port" --workers "$workers" \
  >"$tmp/mock.out" 2>"$tmp/mock.log" &
pids+=($!)

body_json='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short sentence."}]}'
printf '%s' "$body_json" >"$tmp/body.json"
for _ in $(seq 1 100); do
  curl -fs -o "$tmp/answer.json" "http://127.0.0.1:$mock_port/v1/chat/completions" \
    -H 'Authorization: Bearer sk-mock-bench' -H 'Content-Type: application/json' \
    --data-binary @"$tmp/body.json" && break
  sleep 0.1
done
size=$(wc -c <"$tmp/answer.json")
python3 - "$size" >"$tmp/static.txt" <<'PY'
import sys
print("x" * int(sys.argv[1]), end="")
PY

nginx_port=$(free_port)
cat >"$tmp/nginx.conf" <<CONF
worker_processes $workers;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$nginx_port reuseport;
    location / { default_type application/json; return 200 '$(cat "$tmp/static.txt")'; }
  }
}
CONF
taskset -c $srv_cpu "$nginx_bin" -c "$tmp/nginx.conf" -g 'daemon off;' &
pids+=($!)
for _ in $(seq 1 100); do curl -fs -o /dev/null "http://127.0.0.1:$nginx_port/" && break; sleep 0.1; done

cat >"$tmp/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body_json'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-mock-bench"
LUA

run() { # name url [script]
  local out
  out=$(taskset -c "$gen_cpus" wrk -t2 -c"$conns" -d"${duration}s" --latency ${3:+-s "$3"} "$2")
  local rps p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  echo "$1 $rps $p99" >>"$tmp/results"
}

echo "== $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')); servers pinned to CPU $srv_cpu with $workers worker(s) each, wrk -t2 -c$conns on CPUs $gen_cpus, ${duration}s x $rounds rounds"
for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) -eq 1 ]; then
    run mock "http://127.0.0.1:$mock_port/v1/chat/completions" "$tmp/post.lua"
    run nginx "http://127.0.0.1:$nginx_port/"
  else
    run nginx "http://127.0.0.1:$nginx_port/"
    run mock "http://127.0.0.1:$mock_port/v1/chat/completions" "$tmp/post.lua"
  fi
done
python3 - "$tmp/results" <<'PY'
import sys, collections
rows = collections.defaultdict(list)
def ms(v):
    return float(v[:-2]) if v.endswith("ms") else float(v[:-2]) / 1000 if v.endswith("us") else float(v[:-1]) * 1000
for line in open(sys.argv[1]):
    name, rps, p99 = line.split()
    rows[name].append((float(rps), ms(p99)))
print("| server | req/s (mean of rounds) | p99 ms (worst round) |")
print("|---|---:|---:|")
for name in ("mock", "nginx"):
    r = rows[name]
    print(f"| {name} | {sum(x for x, _ in r) / len(r):,.0f} | {max(p for _, p in r):.3f} |")
m = sum(x for x, _ in rows["mock"]) / len(rows["mock"])
n = sum(x for x, _ in rows["nginx"]) / len(rows["nginx"])
print(f"\nmock / nginx throughput: {m / n:.2f}")
PY
