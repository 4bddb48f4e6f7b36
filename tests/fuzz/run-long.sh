#!/usr/bin/env bash
# Runs the libFuzzer drivers for a long time (hours), locally. CI runs each
# for a bounded count instead (tests/fuzz/CMakeLists.txt, KP_FUZZ_RUNS).
#
#   tests/fuzz/run-long.sh                      every driver, 1h each, one at a time
#   tests/fuzz/run-long.sh -t 4h fuzz_http      one driver for 4 hours
#   tests/fuzz/run-long.sh -t 10m -j 2          two drivers at once, 10 minutes each
#   tests/fuzz/run-long.sh -m                   afterwards, merge new coverage into
#                                               the seed corpora in the repository
#
# Work (the growing corpus, logs) goes to build-fuzz/long/NAME/; a crash,
# leak or timeout is written to tests/fuzz/crashes/NAME/ and makes the
# script exit 1. Every crash becomes a regression seed: fix the bug, then
# add the (minimised: DRIVER -minimize_crash=1 FILE) input to
# tests/fuzz/corpus/NAME/ named regress-WHAT, so that CI replays it on
# every run. The last line per driver is "NAME: N execs in S s (R/s),
# corpus C, crashes K", the figures docs/reliability.md quotes.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)

time_spec=1h
jobs=1
merge=0
while getopts "t:j:mh" opt; do
  case $opt in
    t) time_spec=$OPTARG ;;
    j) jobs=$OPTARG ;;
    m) merge=1 ;;
    *) sed -n '2,17p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))

seconds() {
  local v=$1
  case $v in
    *h) echo $(( ${v%h} * 3600 )) ;;
    *m) echo $(( ${v%m} * 60 )) ;;
    *s) echo "${v%s}" ;;
    *) echo "$v" ;;
  esac
}
max_time=$(seconds "$time_spec")

build=$root/build-fuzz
if [ ! -d "$build" ]; then
  cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DKP_FUZZ=ON \
    -DKP_TESTS=OFF -DKP_WERROR=ON >/dev/null
fi
nice cmake --build "$build" -j"$(nproc)" >/dev/null

drivers=("$@")
if [ ${#drivers[@]} -eq 0 ]; then
  mapfile -t drivers < <(sed -n 's/^kp_fuzzer(\([a-z_0-9]*\) .*/\1/p' tests/fuzz/CMakeLists.txt)
fi

corpus_of() {
  sed -n "s/^kp_fuzzer($1 .*CORPUS \([a-z_0-9]*\)).*/\1/p" tests/fuzz/CMakeLists.txt
}

run_one() {
  local name=$1 corpus work crashes log
  corpus=$root/tests/fuzz/corpus/$(corpus_of "$name")
  work=$build/long/$name
  crashes=$root/tests/fuzz/crashes/$name
  log=$work/fuzz.log
  mkdir -p "$work/corpus" "$crashes"
  local status=0
  # fuzz_config: full stacks, so that lsan.supp can name libfyaml's leak.
  local asan=detect_leaks=1
  [ "$name" = fuzz_config ] && asan=$asan:fast_unwind_on_malloc=0
  ASAN_OPTIONS=$asan LSAN_OPTIONS=suppressions=$root/tests/fuzz/lsan.supp nice "$build/bin/$name" -max_total_time="$max_time" \
    -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$crashes/" "$work/corpus" "$corpus" >"$log" 2>&1 || status=$?
  local execs secs corp
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  secs=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  corp=$(find "$work/corpus" -type f | wc -l)
  local found
  found=$(find "$crashes" -type f | wc -l)
  echo "$name: ${execs:-0} execs in $max_time s (${secs:-0}/s), corpus $corp, crashes $found"
  if [ "$merge" = 1 ]; then
    "$build/bin/$name" -merge=1 "$corpus" "$work/corpus" >/dev/null 2>&1 || true
  fi
  [ "$status" = 0 ] && [ "$found" = 0 ]
}

failed=0
running=0
for d in "${drivers[@]}"; do
  if [ ! -x "$build/bin/$d" ]; then
    echo "$d: no such driver in $build/bin" >&2
    failed=1
    continue
  fi
  run_one "$d" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || failed=1
    running=$((running - 1))
  fi
done
while [ "$running" -gt 0 ]; do
  wait -n || failed=1
  running=$((running - 1))
done
if [ "$failed" != 0 ]; then
  echo "crashes or failures: see tests/fuzz/crashes/ and build-fuzz/long/*/fuzz.log" >&2
fi
exit $failed
