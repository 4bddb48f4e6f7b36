#!/usr/bin/env bash
# keyplaned's memory at rest and with N streams open through its gateway
# (the router issue's "RSS at rest and with 10,000 open streams").
#
# usage: bench/stream-rss.sh [--streams N] [--workers W]
#
# Starts keyplane-mock and one keyplaned (Release binaries from
# BENCH_BIN_DIR, default build-release/bin) on loopback, routes the gateway
# to the mock (bench/gateway-setup.sh), makes the mock send one stream
# event per second (so every stream stays open for about 16 s), opens N
# streaming chat calls at once with keyplane-bench, and reads keyplaned's
# VmRSS from /proc at rest and while all N are open. Each stream holds two
# descriptors in keyplaned (app and provider), so N is bounded by
# `ulimit -n` / 2; the script says so when it is too low. Every process it
# starts is stopped by its PID at exit.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
streams=9000 workers=2
while [ $# -gt 0 ]; do
  case "$1" in
  --streams) streams=$2; shift 2 ;;
  --workers) workers=$2; shift 2 ;;
  -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "stream-rss.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
bin=${BENCH_BIN_DIR:-$root/build-release/bin}
for b in keyplaned keyplane-mock keyplane-bench clusterctl; do
  [ -x "$bin/$b" ] || { echo "stream-rss.sh: no $bin/$b; build Release first (cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DKP_TESTS=OFF && cmake --build build-release)" >&2; exit 1; }
done
limit=$(ulimit -n)
if [ $((streams * 2 + 200)) -gt "$limit" ]; then
  echo "stream-rss.sh: $streams streams need about $((streams * 2 + 200)) descriptors, ulimit -n is $limit" >&2
  exit 1
fi

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mock_port=$(free_port) gw=$(free_port) ctl=$(free_port) raft=$(free_port)

"$bin/keyplane-mock" --listen "127.0.0.1:$mock_port" >"$tmp/mock.out" 2>"$tmp/mock.log" &
pids+=($!)
KEYPLANE_MASTER_KEY=$(openssl rand -hex 32) "$bin/keyplaned" --data-dir "$tmp/node" \
  --gateway-listen "127.0.0.1:$gw" --control-listen "127.0.0.1:$ctl" \
  --raft-listen "127.0.0.1:$raft" --workers "$workers" --log-level warn \
  >"$tmp/node.out" 2>"$tmp/node.log" &
node_pid=$!
pids+=($node_pid)
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$ctl/readyz" 2>/dev/null && break
  sleep 0.1
done
app=$(KEYPLANE_SERVER="http://127.0.0.1:$ctl" KEYPLANE_TOKEN=$(cat "$tmp/node/admin.token") \
  MOCK_URL="http://127.0.0.1:$mock_port" CLUSTERCTL="$bin/clusterctl" "$root/bench/gateway-setup.sh")
curl -fsS -X POST "http://127.0.0.1:$mock_port/mock/faults" \
  -d '{"key":"sk-bench-mock-0000000000000000","faults":"slow_chunks=1000"}' >/dev/null
rss() { awk '/VmRSS/ {print $2}' "/proc/$node_pid/status"; }
rest=$(rss)
"$bin/keyplane-bench" --url "http://127.0.0.1:$gw/v1" --mix chat_stream=1 --token "$app" \
  --connections "$streams" --duration 12s --timeout 40s --quiet --json >"$tmp/bench.json" &
bench_pid=$!
pids+=($bench_pid)
# Wait until every stream is open (two descriptors each), then read.
for _ in $(seq 1 200); do
  open=$(ls "/proc/$node_pid/fd" | wc -l)
  [ "$open" -ge $((streams * 2)) ] && break
  sleep 0.1
done
sleep 1
busy=$(rss)
open=$(ls "/proc/$node_pid/fd" | wc -l)
echo "keyplaned ($workers workers): RSS at rest $((rest / 1024)) MiB; with $streams streams open ($open descriptors) $((busy / 1024)) MiB; $(((busy - rest) * 10 / streams / 10)).$(((busy - rest) * 10 / streams % 10)) KiB per stream"
