#!/usr/bin/env bash
# Measures keyplane beside the two things it should be judged against, in one
# run on one machine: keyplane-mock called directly (no proxy), nginx as a
# plain keep-alive proxy_pass in front of the mock (the cost of one proxy hop
# here), and keyplaned's gateway in front of the mock (once it routes; until
# then its column is left out with the reason).
#
# For each of 1, 16 and 64 connections, non-streaming and streaming, the
# targets are measured in interleaved rounds (A B C, C B A, ...), so drift in
# the machine (frequency, other load) falls on all of them alike. It prints,
# and writes into bench/README.md between the compare markers:
#   - each proxy's added latency over direct (p50 and p99),
#   - throughput, and the ratio keyplane/nginx,
#   - CPU seconds per 1,000 requests and peak RSS of each proxy,
#   - keyplane-bench's ceiling against the mock beside wrk's (64 connections).
#
# usage: bench/compare.sh [--quick] [--duration S] [--warmup S] [--rounds N]
#                         [--connections "1 16 64"] [--no-readme] [--keep]
#   --quick      2 s per measurement, about two minutes in all
#   (default)    5 s per measurement, about five minutes in all
#   --no-readme  print the table only; leave bench/README.md alone
#   --keep       keep the temporary directory (logs, JSON of every run)
# Environment: BENCH_BIN_DIR (binaries to use; default build/bin when it
# holds an optimised build, else a Release build made in build-bench/).
#
# Everything listens on 127.0.0.1 ports picked free at start; nginx runs from
# a private config in the temporary directory (no system config is read or
# changed); every process started here is stopped by its PID at exit.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
duration=5
warmup=1
rounds=2
conns_list="1 16 64"
write_readme=1
keep=0

while [ $# -gt 0 ]; do
  case "$1" in
  --quick) duration=2; warmup=0.5; shift ;;
  --duration) duration=$2; shift 2 ;;
  --warmup) warmup=$2; shift 2 ;;
  --rounds) rounds=$2; shift 2 ;;
  --connections) conns_list=$2; shift 2 ;;
  --no-readme) write_readme=0; shift ;;
  --keep) keep=1; shift ;;
  -h | --help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "compare.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

say() { printf '== %s\n' "$*" >&2; }
die() { printf 'compare.sh: %s\n' "$*" >&2; exit 1; }

for tool in wrk nginx taskset curl python3 cmake; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] ||
    die "'$tool' is missing; run ./deploy/install-deps.sh"
done
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

# --- binaries ---------------------------------------------------------------

optimised_build() { # dir: a build tree configured without sanitizers, optimised
  local cache=$1/CMakeCache.txt
  [ -f "$cache" ] || return 1
  grep -qE '^CMAKE_BUILD_TYPE:[A-Z]+=(Release|RelWithDebInfo)$' "$cache" || return 1
  ! grep -qE '^KP_(ASAN|TSAN):BOOL=ON$' "$cache"
}

pick_bin_dir() {
  if [ -n "${BENCH_BIN_DIR:-}" ]; then
    echo "$BENCH_BIN_DIR"
    return
  fi
  if [ -x "$root/build/bin/keyplane-bench" ] && [ -x "$root/build/bin/keyplane-mock" ] &&
    optimised_build "$root/build"; then
    echo "$root/build/bin"
    return
  fi
  say "building keyplane (Release) in build-bench/"
  cmake -S "$root" -B "$root/build-bench" -DCMAKE_BUILD_TYPE=Release -DKP_TESTS=OFF >/dev/null
  cmake --build "$root/build-bench" -j"$(nproc)" --target keyplane-bench keyplane-mock >/dev/null
  # The gateway and its admin tool are optional here: their column is left
  # out when they do not build.
  cmake --build "$root/build-bench" -j"$(nproc)" --target keyplaned clusterctl >/dev/null 2>&1 ||
    say "keyplaned or clusterctl did not build; the keyplane column will be left out"
  echo "$root/build-bench/bin"
}
bin=$(pick_bin_dir)
for b in keyplane-bench keyplane-mock; do
  [ -x "$bin/$b" ] || die "$bin/$b is missing"
done
say "binaries from $bin"

# --- processes, ports, cleanup ----------------------------------------------

tmp=$(mktemp -d /tmp/keyplane-compare.XXXXXX)
pids=()
cleanup() {
  local status=$?
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ "$keep" = 1 ] || [ "$status" != 0 ]; then
    echo "compare.sh: logs and results kept in $tmp" >&2
  else
    rm -rf "$tmp"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_200() { # url pid log [header]
  for _ in $(seq 1 200); do
    code=$(curl -s -o /dev/null -w '%{http_code}' ${4:+-H "$4"} "$1" || true)
    [ "$code" = 200 ] && return 0
    kill -0 "$2" 2>/dev/null || { tail -n 20 "$3" >&2; return 1; }
    sleep 0.05
  done
  return 1
}

# CPU seconds (user + system) of a list of PIDs, from /proc/PID/stat.
cpu_seconds() {
  python3 - "$@" <<'PY'
import os, sys
tick = os.sysconf("SC_CLK_TCK")
total = 0
for pid in sys.argv[1:]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    except OSError:
        pass
print(total / tick)
PY
}

# Peak resident set (VmHWM, kB) summed over a list of PIDs.
peak_rss_kb() {
  local total=0 pid v
  for pid in "$@"; do
    v=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

# --- pinning ----------------------------------------------------------------

read -r -a cpus <<<"$(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0)))')"
ncpu=${#cpus[@]}
join_cpus() { local IFS=,; echo "$*"; }
if [ "$ncpu" -ge 3 ]; then
  ngen=$((ncpu / 4 > 0 ? ncpu / 4 : 1))
  gen_cpus=$(join_cpus "${cpus[@]:ncpu-ngen}")
  mock_cpus=${cpus[0]}
  proxy_cpus=$(join_cpus "${cpus[@]:1:ncpu-ngen-1}")
  nproxy=$((ncpu - ngen - 1))
  pinning="load generator on CPU $gen_cpus, keyplane-mock on CPU $mock_cpus, proxies on CPU $proxy_cpus"
elif [ "$ncpu" -eq 2 ]; then
  ngen=1
  gen_cpus=${cpus[1]}
  mock_cpus=${cpus[0]}
  proxy_cpus=${cpus[0]}
  nproxy=1
  pinning="load generator on CPU $gen_cpus; keyplane-mock and the proxy share CPU $mock_cpus (2 CPUs: the generator never competes with the servers)"
else
  ngen=1
  gen_cpus=${cpus[0]}
  mock_cpus=${cpus[0]}
  proxy_cpus=${cpus[0]}
  nproxy=1
  pinning="not pinned: one CPU, so generator and servers share it and every figure is pessimistic"
fi
say "pinning: $pinning"
# Prefixes that pin a command. Arrays, not a function: a backgrounded
# function runs in a subshell, and $! would then be the subshell's PID, not
# the server's. taskset execs the command, so $! is the server itself.
gen_pin=() mock_pin=() proxy_pin=()
if [ "$ncpu" -ge 2 ]; then
  gen_pin=(taskset -c "$gen_cpus")
  mock_pin=(taskset -c "$mock_cpus")
  proxy_pin=(taskset -c "$proxy_cpus")
fi

# --- keyplane-mock ----------------------------------------------------------

"${mock_pin[@]}" "$bin/keyplane-mock" --listen 127.0.0.1:0 --workers 1 --log-level warn \
  >"$tmp/mock.out" 2>"$tmp/mock.log" &
mock_pid=$!
pids+=("$mock_pid")
for _ in $(seq 1 100); do
  mock_url=$(grep -o 'http://[0-9.]*:[0-9]*' "$tmp/mock.out" 2>/dev/null | head -n 1 || true)
  [ -n "$mock_url" ] && break
  sleep 0.05
done
[ -n "$mock_url" ] || die "keyplane-mock did not start: $(tail -n 5 "$tmp/mock.log")"
wait_200 "$mock_url/v1/models" "$mock_pid" "$tmp/mock.log" "Authorization: Bearer bench" ||
  die "keyplane-mock does not answer GET /v1/models"
say "keyplane-mock at $mock_url"

# --- nginx ------------------------------------------------------------------

nginx_port=$(free_port)
mkdir -p "$tmp/nginx"
cat >"$tmp/nginx/nginx.conf" <<CONF
# A plain reverse proxy with upstream keep-alive: the least one HTTP hop costs.
worker_processes $nproxy;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 10000000;
  client_body_buffer_size 1m;
  client_body_temp_path $tmp/nginx/body;
  proxy_temp_path $tmp/nginx/proxy;
  fastcgi_temp_path $tmp/nginx/fastcgi;
  uwsgi_temp_path $tmp/nginx/uwsgi;
  scgi_temp_path $tmp/nginx/scgi;
  upstream mock {
    server ${mock_url#http://};
    keepalive 256;
    keepalive_requests 10000000;
  }
  server {
    listen 127.0.0.1:$nginx_port;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # Pass answers on as they come, as a gateway must for streams.
      proxy_buffering off;
    }
  }
}
CONF
"${proxy_pin[@]}" "$nginx_bin" -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" \
  -g 'daemon off;' >"$tmp/nginx/stdout.log" 2>"$tmp/nginx/stderr.log" &
nginx_pid=$!
pids+=("$nginx_pid")
nginx_url="http://127.0.0.1:$nginx_port"
wait_200 "$nginx_url/v1/models" "$nginx_pid" "$tmp/nginx/error.log" "Authorization: Bearer bench" ||
  die "nginx does not proxy to the mock; see $tmp/nginx/error.log"
nginx_pids() { echo "$nginx_pid" "$(pgrep -P "$nginx_pid" | tr '\n' ' ')"; }
say "nginx at $nginx_url (pid $nginx_pid, $nproxy worker(s))"

# --- keyplaned ----------------------------------------------------------------

kp_url=""
kp_pid=""
kp_token=""
kp_note=""
start_keyplaned() {
  if [ ! -x "$bin/keyplaned" ]; then
    kp_note="no keyplaned binary in $bin"
    return 1
  fi
  local data=$tmp/keyplaned
  mkdir -p "$data"
  "${proxy_pin[@]}" "$bin/keyplaned" --data-dir "$data" --gateway-listen 127.0.0.1:0 \
    --control-listen 127.0.0.1:0 --raft-listen 127.0.0.1:0 --workers "$nproxy" \
    --log-level warn >"$tmp/keyplaned.out" 2>"$tmp/keyplaned.log" &
  kp_pid=$!
  pids+=("$kp_pid")
  for _ in $(seq 1 200); do
    [ -s "$data/listen.json" ] && break
    kill -0 "$kp_pid" 2>/dev/null || break
    sleep 0.05
  done
  if [ ! -s "$data/listen.json" ]; then
    local st=0
    if kill -0 "$kp_pid" 2>/dev/null; then
      kp_note="keyplaned did not write $data/listen.json within 10 s"
    else
      wait "$kp_pid" || st=$?
      kp_note="keyplaned exited at start with status $st$( [ "$st" -gt 128 ] && echo " (signal $((st - 128)))"): $(tail -n 2 "$tmp/keyplaned.log" | tr '\n' ' ')"
    fi
    return 1
  fi
  local gw ctl
  gw=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["gateway"])' "$data/listen.json")
  ctl=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["control"])' "$data/listen.json")
  kp_url="http://$gw"
  wait_200 "http://$ctl/readyz" "$kp_pid" "$tmp/keyplaned.log" || {
    kp_note="keyplaned at http://$ctl did not become ready"
    return 1
  }
  local admin=""
  [ -r "$data/admin.token" ] && admin=$(cat "$data/admin.token")
  if ! kp_token=$(KEYPLANE_SERVER="http://$ctl" KEYPLANE_TOKEN="$admin" MOCK_URL="$mock_url" \
    CLUSTERCTL="$bin/clusterctl" "$root/bench/gateway-setup.sh" 2>"$tmp/gateway-setup.log"); then
    kp_note="gateway setup failed: $(tail -n 1 "$tmp/gateway-setup.log")"
  fi
  # The test that matters: a chat completion through the gateway answers 200.
  local code body
  body=$(curl -s -o "$tmp/probe.json" -w '%{http_code}' -H "Authorization: Bearer ${kp_token:-none}" \
    -H 'Content-Type: application/json' \
    -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":8}' \
    "$kp_url/v1/chat/completions" || true)
  code=$body
  if [ "$code" != 200 ]; then
    local msg
    msg=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["error"]["message"])' \
      "$tmp/probe.json" 2>/dev/null || head -c 200 "$tmp/probe.json")
    kp_note="keyplaned's gateway at $kp_url answered $code to POST /v1/chat/completions (${msg}); ${kp_note:-}"
    return 1
  fi
  return 0
}
targets="direct nginx"
if start_keyplaned; then
  targets="direct nginx keyplane"
  say "keyplaned gateway at $kp_url (pid $kp_pid)"
else
  say "keyplane column left out: $kp_note"
  if [ -n "$kp_pid" ]; then
    kill -TERM "$kp_pid" 2>/dev/null || true
    wait "$kp_pid" 2>/dev/null || true
  fi
fi

# --- measurements -------------------------------------------------------------

mkdir -p "$tmp/runs"
url_of() {
  case $1 in
  direct) echo "$mock_url/v1/chat/completions" ;;
  nginx) echo "$nginx_url/v1/chat/completions" ;;
  keyplane) echo "$kp_url/v1/chat/completions" ;;
  esac
}
token_of() { [ "$1" = keyplane ] && echo "$kp_token" || echo bench; }
server_pids() {
  case $1 in
  nginx) nginx_pids ;;
  keyplane) echo "$kp_pid" ;;
  *) echo "$mock_pid" ;;
  esac
}

# One measurement: keyplane-bench in closed loop, its JSON beside the CPU
# the server side used meanwhile.
measure() { # target kind conns round
  local target=$1 kind=$2 conns=$3 round=$4 threads=$ngen
  [ "$conns" -lt "$threads" ] && threads=$conns
  local out=$tmp/runs/$target.$kind.$conns.$round
  local before after spids
  read -r -a spids <<<"$(server_pids "$target")"
  before=$(cpu_seconds "${spids[@]}")
  "${gen_pin[@]}" "$bin/keyplane-bench" --url "$(url_of "$target")" --token "$(token_of "$target")" \
    --mix "$kind=1" --connections "$conns" --threads "$threads" --duration "$duration" \
    --warmup "$warmup" --json --quiet >"$out.json" 2>"$out.err" ||
    die "keyplane-bench failed against $target: $(cat "$out.err")"
  after=$(cpu_seconds "${spids[@]}")
  echo "$before $after" >"$out.cpu"
}

ncells=0
for _ in $conns_list; do ncells=$((ncells + 2)); done
ntargets=$(wc -w <<<"$targets")
say "measuring: $ncells cells x $ntargets targets x $rounds rounds, ${duration}s each after ${warmup}s warm-up"
cell=0
for conns in $conns_list; do
  for kind in chat_small chat_stream; do
    cell=$((cell + 1))
    for round in $(seq 1 "$rounds"); do
      order=$targets
      [ $((round % 2)) -eq 0 ] && order=$(tr ' ' '\n' <<<"$targets" | tac | tr '\n' ' ')
      for target in $order; do
        printf '   [%d/%d] %-11s %2s conns  round %d  %s\n' "$cell" "$ncells" "$kind" "$conns" \
          "$round" "$target" >&2
        measure "$target" "$kind" "$conns" "$round"
      done
    done
  done
done

# The generator's own ceiling: keyplane-bench beside wrk, both against the
# mock directly with 64 connections and the same body, interleaved.
body=$tmp/chat_small.json
printf '%s' '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Write one short sentence about load testing a gateway."}],"max_tokens":32}' >"$body"
cat >"$tmp/wrk.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench"
local f = io.open("$body", "rb")
wrk.body = f:read("*a")
f:close()
LUA
say "generator ceiling: keyplane-bench and wrk against the mock, 64 connections"
for round in $(seq 1 "$rounds"); do
  "${gen_pin[@]}" "$bin/keyplane-bench" --url "$mock_url/v1/chat/completions" --token bench \
    --body "$body" --connections 64 --threads "$ngen" --duration "$duration" --warmup "$warmup" \
    --json --quiet >"$tmp/runs/ceiling.bench.$round.json"
  "${gen_pin[@]}" wrk -t"$ngen" -c64 -d"${duration}s" -s "$tmp/wrk.lua" \
    "$mock_url/v1/chat/completions" >"$tmp/runs/ceiling.wrk.$round.txt"
done

# --- the report -----------------------------------------------------------------

kp_rss=0
[ "$targets" = "direct nginx keyplane" ] && kp_rss=$(peak_rss_kb "$kp_pid")
read -r -a npids <<<"$(nginx_pids)"
nginx_rss=$(peak_rss_kb "${npids[@]}")
commit=$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || echo "none")
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)

run_date=$(date -u +%Y-%m-%dT%H:%MZ)
kernel=$(uname -r)
export CMP_TARGETS="$targets" CMP_CONNS="$conns_list" CMP_NGINX_RSS="$nginx_rss" \
  CMP_KP_RSS="$kp_rss" CMP_KP_NOTE="$kp_note" CMP_PINNING="$pinning" CMP_COMMIT="$commit" \
  CMP_CPU_MODEL="$cpu_model" CMP_DURATION="$duration" CMP_WARMUP="$warmup" CMP_ROUNDS="$rounds" \
  CMP_DATE="$run_date" CMP_KERNEL="$kernel"
python3 "$root/bench/compare_report.py" "$tmp/runs" "$root/bench/README.md" "$write_readme"
