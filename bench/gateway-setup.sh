#!/usr/bin/env bash
# Makes a fresh one-node keyplaned route /v1/chat/completions and
# /v1/embeddings to keyplane-mock, and prints an app token (kp_...) for it on
# stdout. bench/compare.sh calls it after starting keyplaned; when it fails,
# compare.sh leaves the keyplane column out and says why.
#
# Environment (set by compare.sh):
#   KEYPLANE_SERVER  control URL of the node (http://127.0.0.1:PORT)
#   KEYPLANE_TOKEN   its admin token (DATA_DIR/admin.token)
#   MOCK_URL         keyplane-mock's base URL (http://127.0.0.1:PORT)
#   CLUSTERCTL       path of the clusterctl binary
#
# Exit status: 0 with the token printed; anything else when a step failed.
set -euo pipefail
: "${KEYPLANE_SERVER:?}" "${KEYPLANE_TOKEN:?}" "${MOCK_URL:?}" "${CLUSTERCTL:?}"
export KEYPLANE_SERVER KEYPLANE_TOKEN

ctl() { "$CLUSTERCTL" "$@" >/dev/null; }
spec=$(mktemp)
trap 'rm -f "$spec"' EXIT
printf '{"kind":"openai-compatible","base_url":"%s/v1","allow_insecure":true}\n' "$MOCK_URL" >"$spec"
ctl put providers bench-mock -f "$spec"
printf 'sk-bench-mock-0000000000000000\n' | ctl keys add bench-key --provider bench-mock
printf '{"members":[{"key":"bench-key"}]}\n' >"$spec"
ctl put pools default -f "$spec"
"$CLUSTERCTL" tokens create --role app --name bench 2>/dev/null | tail -n 1
