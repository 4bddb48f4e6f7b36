#!/usr/bin/env bash
# The meter's figures for issue 7: events/s ingested and compacted on one
# core, bytes per event on disk, and a 30-day group-by query over 10 million
# events (time and memory).
#
#   bench/meter-figures.sh [BUILD_DIR] [EVENTS]     (defaults: build-release, 10000000)
#
# Generates 30 sealed segments (one per day from 2026-01-01, `kpseg gen`),
# then runs keyplane-meter-bench on CPU 0 with a fresh meter store.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-release}
events=${2:-10000000}
days=30
work=$(mktemp -d /tmp/kp-meter-bench-XXXXXX)
trap 'rm -rf "$work"' EXIT
per_day=$(( (events + days - 1) / days ))
start_ms=1767225600000
segs=()
for d in $(seq 0 $((days - 1))); do
  n=$per_day
  if [ $((d * per_day + n)) -gt "$events" ]; then n=$((events - d * per_day)); fi
  f="$work/seg-$d.kpseg"
  "$build/bin/kpseg" gen "$f" --events "$n" --seed "$((d + 1))" --node bench-router \
    --seq "$((d + 1))" --created-ms "$((start_ms + d * 86400000))"
  segs+=("$f")
done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "command: taskset -c 0 $build/bin/keyplane-meter-bench --dir STORE ${#segs[@]} segments"
taskset -c 0 "$build/bin/keyplane-meter-bench" --dir "$work/store" "${segs[@]}" | tee "$work/ingest.json"
from=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["from_ms"])' "$work/ingest.json")
to=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["to_ms"])' "$work/ingest.json")
echo "command: taskset -c 0 $build/bin/keyplane-meter-bench --dir STORE --query $from $to"
taskset -c 0 "$build/bin/keyplane-meter-bench" --dir "$work/store" --query "$from" "$to"
