#!/usr/bin/env bash
# Installs dependencies, builds keyplane (Release), starts one local keyplaned
# and one keyplane-mock (a fake OpenAI/Anthropic/Gemini upstream), and prints
# what to do next. Ctrl-C stops both.
#
# Environment: KEYPLANE_QUICKSTART_DIR (state, default ./keyplane-data),
# KEYPLANE_GATEWAY_PORT (7600), KEYPLANE_CONTROL_PORT (7601), MOCK_PORT (7700).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
state=${KEYPLANE_QUICKSTART_DIR:-$root/keyplane-data}
gw_port=${KEYPLANE_GATEWAY_PORT:-7600}
ctl_port=${KEYPLANE_CONTROL_PORT:-7601}
mock_port=${MOCK_PORT:-7700}

./deploy/install-deps.sh
echo "== building keyplane (Release)"
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DKP_TESTS=OFF >/dev/null
cmake --build build-release -j"$(nproc)" >/dev/null
bin=$root/build-release/bin

mkdir -p "$state"
pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "== stopping keyplaned and keyplane-mock"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  exit 0
}
trap stop INT TERM EXIT

# Each child runs in its own session, so a Ctrl-C reaches only this script,
# whose trap stops them in order (SIGTERM, which drains keyplaned).
setsid "$bin/keyplane-mock" --listen "127.0.0.1:$mock_port" >"$state/mock.out" 2>"$state/mock.log" &
pids+=($!)
setsid "$bin/keyplaned" --data-dir "$state/node1" \
  --gateway-listen "127.0.0.1:$gw_port" --control-listen "127.0.0.1:$ctl_port" \
  --raft-listen "127.0.0.1:$((ctl_port + 1))" >"$state/keyplaned.out" 2>"$state/keyplaned.log" &
pids+=($!)

wait_http() { # url what pid
  for _ in $(seq 1 200); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    if ! kill -0 "$3" 2>/dev/null; then
      echo "quickstart: $2 exited; its log:" >&2
      tail -n 20 "$4" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "quickstart: $2 did not answer $1 within 20 s" >&2
  exit 1
}
wait_http "http://127.0.0.1:$mock_port/healthz" keyplane-mock "${pids[0]}" "$state/mock.log"
wait_http "http://127.0.0.1:$ctl_port/readyz" keyplaned "${pids[1]}" "$state/keyplaned.log"

# The first start bootstrapped a one-node cluster and wrote its admin token
# (0600) into the data directory; later starts reuse it.
token=$(cat "$state/node1/admin.token")
ctl="http://127.0.0.1:$ctl_port"
admin() { # METHOD PATH [JSON]
  curl -fsS -X "$1" "$ctl$2" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' ${3:+-d "$3"} >/dev/null
}
# Demo registry entries pointing at the mock, and an app token.
. "$root/deploy/demo-data.sh"
kp_seed_demo admin "$mock_port" quickstart
app_file="$state/node1/app.token"
kp_demo_app_token "$ctl" "$token" "quickstart app" "$app_file"
app=$(cat "$app_file")

cat <<MSG

keyplane is running.

  gateway (apps)        http://127.0.0.1:$gw_port/v1   (OpenAI API; Anthropic API under /anthropic)
  control (operators)   http://127.0.0.1:$ctl_port   (/admin/v1 API, /metrics, /healthz, /readyz)
  web console           http://127.0.0.1:$ctl_port/ui/   (sign in with the admin token below)
  mock provider         http://127.0.0.1:$mock_port/v1   (OpenAI, Anthropic and Gemini shapes)
  logs                  $state/keyplaned.log, $state/mock.log

App token (tenant demo; kept in $state/node1/app.token):
  $app

Call a model through keyplane (the mock answers; the app never sees a provider key):
  curl -s http://127.0.0.1:$gw_port/v1/chat/completions -H "Authorization: Bearer $app" \\
    -H 'Content-Type: application/json' -H 'X-Project: demo-app' \\
    -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}'
  curl -sN http://127.0.0.1:$gw_port/v1/chat/completions -H "Authorization: Bearer $app" \\
    -H 'Content-Type: application/json' \\
    -d '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hello"}]}'

With the OpenAI SDK (npm install openai):
  import OpenAI from 'openai';
  const client = new OpenAI({ baseURL: 'http://127.0.0.1:$gw_port/v1', apiKey: '$app' });
  const r = await client.chat.completions.create({ model: 'gpt-4o-mini',
    messages: [{ role: 'user', content: 'hello' }] });
  console.log(r.choices[0].message.content);
  const s = await client.chat.completions.create({ model: 'gpt-4o-mini', stream: true,
    messages: [{ role: 'user', content: 'hello' }] });
  for await (const chunk of s) process.stdout.write(chunk.choices[0]?.delta?.content ?? '');

Admin token (full rights; kept in $state/node1/admin.token, mode 0600):
  $token

  export KEYPLANE_SERVER=http://127.0.0.1:$ctl_port
  export KEYPLANE_TOKEN=\$(cat $state/node1/admin.token)
  $bin/clusterctl get keys
  $bin/clusterctl cluster
  $bin/clusterctl audit list

Metered usage (a call shows up within about 10 s, when its segment is sealed
and shipped to this node, the meter; docs/meter.md):
  $bin/clusterctl usage --group-by tenant,project,model
  $bin/clusterctl usage events --limit 5
  $bin/clusterctl usage export --from \$(date -u +%F) --to \$(date -u -d tomorrow +%F) --format csv -o usage.csv

Press Ctrl-C to stop both.
MSG
wait -n "${pids[@]}" || true
echo "quickstart: a process exited unexpectedly; see $state/*.log" >&2
