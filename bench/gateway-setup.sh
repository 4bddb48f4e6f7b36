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
# Exit status: 0 with the token printed; 3 when this build cannot route yet
# (no provider commands); anything else when a step failed.
#
# The commands below follow DESIGN.md's registry (provider -> key -> pool ->
# token). The router issue that lands the gateway owns their exact spelling:
# keep this script in step with `clusterctl --help` when it does.
set -euo pipefail
# KEYPLANE_TOKEN may be empty: a build that does not bootstrap an admin
# token yet cannot route either, and the check below says so.
: "${KEYPLANE_SERVER:?}" "${KEYPLANE_TOKEN?}" "${MOCK_URL:?}" "${CLUSTERCTL:?}"
export KEYPLANE_SERVER KEYPLANE_TOKEN

if ! "$CLUSTERCTL" --help 2>&1 | grep -qE '^\s+provider\b'; then
  echo "this build's clusterctl has no 'provider' command yet, so the gateway cannot be pointed at the mock" >&2
  exit 3
fi

ctl() { "$CLUSTERCTL" "$@" >/dev/null; }
ctl provider add bench-mock --kind openai --base-url "$MOCK_URL/v1"
printf 'sk-bench-mock-0000000000000000\n' | ctl key add bench-key --provider bench-mock --secret-stdin
ctl pool add bench-pool --member bench-key
"$CLUSTERCTL" -o json token create bench --role app --pool bench-pool |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
