# shellcheck shell=bash
# Sourced by quickstart.sh and local-cluster.sh: the demo registry entries
# that point a keyplane at keyplane-mock. Every PUT is idempotent, so a
# second start changes nothing.
#
#   kp_seed_demo ADMIN_FN MOCK_PORT OWNER
#     ADMIN_FN: a shell function "ADMIN_FN METHOD PATH [JSON]" that calls the
#     control API with an admin token and fails on an error status.
#   kp_demo_app_token CONTROL_URL ADMIN_TOKEN NAME FILE
#     writes a new app token (tenant demo) to FILE (0600) unless FILE exists;
#     the API shows a token once, so the file is what keeps it.

kp_seed_demo() {
  local admin=$1 mock_port=$2 owner=$3
  # The mock as a provider, two keys in the default pool (the second takes
  # over when the first fails), a tenant with a project, and a price (an
  # override of the built-in one, as an operator enters a contract price).
  "$admin" PUT /admin/v1/providers/mock \
    "{\"kind\":\"openai-compatible\",\"base_url\":\"http://127.0.0.1:$mock_port/v1\",\"allow_insecure\":true}"
  "$admin" PUT /admin/v1/tenants/demo '{"display_name":"Demo tenant"}'
  "$admin" PUT /admin/v1/projects/demo-app '{"tenant":"demo","display_name":"Demo app"}'
  local i
  for i in 1 2; do
    "$admin" PUT "/admin/v1/keys/mock-key-$i" \
      "{\"provider\":\"mock\",\"name\":\"mock key $i\",\"owner\":\"$owner\",\"secret\":\"sk-mock-$owner-000$i\"}"
  done
  "$admin" PUT /admin/v1/pools/default \
    '{"strategy":"priority","members":[{"key":"mock-key-1","priority":0},{"key":"mock-key-2","priority":1}]}'
  "$admin" PUT /admin/v1/prices/gpt-4o-mini \
    '{"input_per_mtok":150000000,"cached_input_per_mtok":75000000,"output_per_mtok":600000000}'
}

kp_demo_app_token() {
  local ctl=$1 token=$2 name=$3 file=$4
  [ -s "$file" ] && return 0
  (umask 077 && curl -fsS -m 10 -X POST "$ctl/admin/v1/tokens" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' \
    -d "{\"name\":\"$name\",\"role\":\"app\",\"tenant\":\"demo\"}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' >"$file.tmp" &&
    mv "$file.tmp" "$file")
}
