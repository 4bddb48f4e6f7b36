#!/usr/bin/env bash
# A three-node keyplane cluster on loopback, behind HAProxy, for trying
# failover, metering with two meters and the operator tools on one machine.
#
#   deploy/local-cluster.sh up              start (or complete) the cluster
#   deploy/local-cluster.sh status          processes, /readyz, clusterctl cluster
#   deploy/local-cluster.sh restart [kp-N ...]
#                                           rolling restart (all nodes by default), one
#                                           node at a time, under load without a failed call
#   deploy/local-cluster.sh down [--purge]  stop everything; --purge also deletes the state
#
# What runs (ports for the default base 7600; everything binds 127.0.0.1):
#
#   HAProxy      gateway 7600 -> the three gateways, control 7601 -> the three
#                control ports, stats page 7602
#   kp-1         gateway 7610, control 7611, raft 7612   bootstraps; meter (auto)
#   kp-2         gateway 7620, control 7621, raft 7622   joins; meter: yes
#   kp-3         gateway 7630, control 7631, raft 7632   joins; router only
#   keyplane-mock 7700                                   the fake provider
#
# Environment:
#   KEYPLANE_LOCAL_DIR        state directory (default REPO/.local-cluster):
#                             data directories, configs, logs, pid files,
#                             master.key, app.token
#   KEYPLANE_LOCAL_BASE_PORT  base port (default 7600); node N uses base+10N..
#                             base+10N+2, the mock base+100. Recorded on the
#                             first `up`: a state directory keeps its ports.
#   KEYPLANE_BIN_DIR          directory holding keyplaned, keyplane-mock and
#                             clusterctl (default REPO/build-release/bin, built
#                             with CMake when a binary is missing there)
#   KEYPLANE_LOCAL_WORKERS    router worker threads per node (default 2)
#   KEYPLANE_LOCAL_TIMEOUT    seconds to wait for each process (default 60)
#   HAPROXY                   the haproxy binary (default: haproxy on PATH, or /usr/sbin/haproxy)
#
# Exit status: 0 on success; `status` exits 3 when something is not running
# or not ready.
set -euo pipefail
umask 077
cd "$(dirname "$0")/.."
root=$(pwd)
. "$root/deploy/demo-data.sh"

state=${KEYPLANE_LOCAL_DIR:-$root/.local-cluster}
workers=${KEYPLANE_LOCAL_WORKERS:-2}
wait_s=${KEYPLANE_LOCAL_TIMEOUT:-60}
haproxy_bin=${HAPROXY:-haproxy}
# Debian puts it in /usr/sbin, which a user's PATH may lack.
if [ -z "${HAPROXY:-}" ] && ! command -v haproxy >/dev/null 2>&1 && [ -x /usr/sbin/haproxy ]; then
  haproxy_bin=/usr/sbin/haproxy
fi
nodes=(1 2 3)
marker=.keyplane-local-cluster

die() {
  echo "local-cluster: $*" >&2
  exit 1
}
say() { echo "== $*"; }

# --- ports: fixed for the life of a state directory (raft addresses are) ---

load_ports() {
  local want=${KEYPLANE_LOCAL_BASE_PORT:-}
  if [ -f "$state/ports.env" ]; then
    # shellcheck disable=SC1091
    . "$state/ports.env"
    if [ -n "$want" ] && [ "$want" != "$BASE_PORT" ]; then
      die "$state was created with KEYPLANE_LOCAL_BASE_PORT=$BASE_PORT, not $want (raft addresses cannot change): use another KEYPLANE_LOCAL_DIR, or run 'down --purge' first"
    fi
  else
    BASE_PORT=${want:-7600}
  fi
  case $BASE_PORT in
    '' | *[!0-9]*) die "KEYPLANE_LOCAL_BASE_PORT must be a number, got '$BASE_PORT'" ;;
  esac
  if [ "$BASE_PORT" -lt 1024 ] || [ "$BASE_PORT" -gt 65400 ]; then
    die "KEYPLANE_LOCAL_BASE_PORT must be from 1024 to 65400, got $BASE_PORT"
  fi
  lb_gw=$BASE_PORT
  lb_ctl=$((BASE_PORT + 1))
  lb_stats=$((BASE_PORT + 2))
  mock_port=$((BASE_PORT + 100))
}
gw_port() { echo $((BASE_PORT + 10 * $1)); }
ctl_port() { echo $((BASE_PORT + 10 * $1 + 1)); }
raft_port() { echo $((BASE_PORT + 10 * $1 + 2)); }

# --- processes ---------------------------------------------------------------

# alive PID: the process exists and is not a zombie (the processes started
# here are reparented to init, which may reap them a while after they exit).
alive() {
  local st
  st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  case $st in Z*) return 1 ;; esac
}

# pid_of NAME: the pid in STATE/NAME.pid when that process is alive and is
# the program we started (a recycled pid is not ours: not even another
# local cluster's keyplaned or HAProxy, whose command line names another
# state directory).
pid_of() {
  local f="$state/$1.pid" pid comm args
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  case $pid in '' | *[!0-9]*) return 1 ;; esac
  alive "$pid" || return 1
  comm=$(ps -o comm= -p "$pid" 2>/dev/null) || return 1
  args=$(ps -o args= -p "$pid" 2>/dev/null) || return 1
  case $1 in
    mock) [ "$comm" = keyplane-mock ] ;;
    haproxy) [ "$comm" = haproxy ] && [[ $args == *"$state/haproxy.cfg"* ]] ;;
    *) [ "$comm" = keyplaned ] && [[ $args == *"$state/$1.yaml"* ]] ;;
  esac || return 1
  echo "$pid"
}

# The children get no KEYPLANE_* variable of this shell (KEYPLANE_TRACE
# excepted): the files written here configure them, and a stray
# KEYPLANE_WORKERS or KEYPLANE_JOIN in a developer's shell must not.
clean_env=(env)
while IFS= read -r v; do
  case $v in KEYPLANE_*) [ "$v" = KEYPLANE_TRACE ] || clean_env+=(-u "$v") ;; esac
done < <(compgen -e)

# spawn NAME LOG CMD...: start CMD in its own session (so it outlives this
# script and a Ctrl-C here), output appended to STATE/NAME.out and LOG (a
# restarted process adds to its predecessor's), pid to STATE/NAME.pid.
spawn() {
  local name=$1 log=$2
  shift 2
  "${clean_env[@]}" setsid "$@" </dev/null >>"$state/$name.out" 2>>"$log" &
  echo $! >"$state/$name.pid"
}

# wait_for WHAT NAME LOG CMD...: poll CMD until it succeeds; give up when
# the process NAME exited (showing LOG) or after $wait_s seconds.
wait_for() {
  local what=$1 name=$2 log=$3 i
  shift 3
  for ((i = 0; i < wait_s * 10; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if ! pid_of "$name" >/dev/null; then
      echo "local-cluster: $name exited while waiting for $what; the end of $log:" >&2
      tail -n 20 "$log" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
  die "gave up after ${wait_s}s waiting for $what (see $log)"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_free() { # NAME PORT...
  local name=$1 p
  shift
  for p in "$@"; do
    if port_busy "$p"; then
      die "cannot start $name: 127.0.0.1:$p is already in use (another cluster or quickstart? set KEYPLANE_LOCAL_BASE_PORT)"
    fi
  done
}

http_ok() { curl -fsS -m 2 -o /dev/null "$1"; }

# --- binaries ------------------------------------------------------------------

find_bins() {
  if [ -n "${KEYPLANE_BIN_DIR:-}" ]; then
    bin=$KEYPLANE_BIN_DIR
    for b in keyplaned keyplane-mock clusterctl; do
      [ -x "$bin/$b" ] || die "$bin/$b not found (KEYPLANE_BIN_DIR=$bin): build it, or unset KEYPLANE_BIN_DIR to build into build-release/"
    done
    return
  fi
  bin=$root/build-release/bin
  local missing=0
  for b in keyplaned keyplane-mock clusterctl; do [ -x "$bin/$b" ] || missing=1; done
  if [ $missing -eq 1 ]; then
    say "building keyplane (Release) into build-release/"
    cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DKP_TESTS=OFF >/dev/null
    cmake --build build-release -j"$(nproc)" >/dev/null
  fi
}

# --- files written once per state directory --------------------------------------

write_node_config() { # N
  local n=$1 f="$state/kp-$1.yaml"
  [ -f "$f" ] && return 0
  {
    echo "# kp-$n of the local cluster (deploy/local-cluster.sh). Edit and run"
    echo "# 'local-cluster.sh down && local-cluster.sh up' to apply; the listen"
    echo "# addresses must stay as they are (the raft address is in the cluster)."
    echo "node_name: kp-$n"
    echo "data_dir: $state/kp-$n"
    echo "gateway_listen: 127.0.0.1:$(gw_port "$n")"
    echo "control_listen: 127.0.0.1:$(ctl_port "$n")"
    echo "raft_listen: 127.0.0.1:$(raft_port "$n")"
    echo "master_key_file: $state/master.key"
    if [ "$n" != 1 ]; then
      echo "join:                 # joined on the first start; checked on later ones"
      echo "  - 127.0.0.1:$(ctl_port 1)"
      [ "$n" = 3 ] && echo "  - 127.0.0.1:$(ctl_port 2)"
    fi
    case $n in
      1) echo "meter: auto          # the bootstrapping node is a meter" ;;
      2) echo "meter: yes           # the second meter" ;;
      *) echo "meter: no            # not a meter: ships its usage to kp-1 and kp-2" ;;
    esac
    echo "workers: $workers"
    echo "log_level: info"
    echo "# On SIGTERM, /readyz turns 503 at once while the gateway keeps"
    echo "# serving for drain_delay_ms: HAProxy (checks every 500ms, down after"
    echo "# 2 failures) stops sending first, then in-flight calls finish."
    echo "drain_delay_ms: 2s"
    echo "drain_timeout_ms: 30s"
  } >"$f"
}

write_haproxy_config() {
  local f="$state/haproxy.cfg" n
  {
    cat <<EOF
# HAProxy in front of the local keyplane cluster (deploy/local-cluster.sh).
# Rewritten by every 'up'; a running HAProxy keeps the file it started with.
global
    log stderr format raw local0 info
    maxconn 4096

defaults
    mode http
    log global
    option httplog
    option dontlognull
    # A connection refused (a node stopped or restarting) or a connection
    # closed before any answer is retried, on another node each time.
    # Retrying an empty response repeats a call a node may have started
    # before it crashed; SIGTERM drains and never does that.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response
    timeout connect 2s
    timeout client 10m
    # Long: a completion can think for minutes before its first byte, and a
    # stream stays open as long as the model writes.
    timeout server 10m
    timeout tunnel 1h
    timeout http-request 30s
    timeout http-keep-alive 60s
    timeout queue 30s
    timeout check 2s
    # Checks every 500ms: a node is out after 2 failed checks (its /readyz
    # answers 503 as soon as it drains), back after 2 good ones.
    default-server inter 500ms fastinter 250ms downinter 1s fall 2 rise 2

frontend keyplane_gateway
    bind 127.0.0.1:$lb_gw
    default_backend keyplane_gateways

frontend keyplane_control
    bind 127.0.0.1:$lb_ctl
    default_backend keyplane_controls

backend keyplane_gateways
    balance leastconn
    # A gateway is healthy when its node's control port says ready.
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
EOF
    for n in "${nodes[@]}"; do
      echo "    server kp-$n 127.0.0.1:$(gw_port "$n") check port $(ctl_port "$n")"
    done
    cat <<EOF

backend keyplane_controls
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
EOF
    for n in "${nodes[@]}"; do
      echo "    server kp-$n 127.0.0.1:$(ctl_port "$n") check"
    done
    cat <<EOF

# Server states: http://127.0.0.1:$lb_stats/ (CSV: /;csv)
listen stats
    bind 127.0.0.1:$lb_stats
    stats enable
    stats uri /
    stats refresh 5s
EOF
  } >"$f"
}

# --- up ------------------------------------------------------------------------------

admin_token() { cat "$state/kp-1/admin.token"; }

# admin METHOD PATH [JSON]: a control API call through HAProxy, retried while
# the cluster answers 503 (an election) or a node is restarting.
admin() {
  curl -fsS -m 10 --retry 20 --retry-delay 1 --retry-all-errors -o /dev/null \
    -X "$1" "http://127.0.0.1:$lb_ctl$2" -H "Authorization: Bearer $(admin_token)" \
    -H 'Content-Type: application/json' ${3:+-d "$3"}
}

start_node() { # N
  local n=$1 pid fresh=0
  if pid=$(pid_of "kp-$n"); then
    echo "   kp-$n already running (pid $pid)"
    return 0
  fi
  [ -d "$state/kp-$n/raft" ] && [ -n "$(ls -A "$state/kp-$n/raft" 2>/dev/null)" ] || fresh=1
  check_free "kp-$n" "$(gw_port "$n")" "$(ctl_port "$n")" "$(raft_port "$n")"
  mkdir -p "$state/kp-$n"
  spawn "kp-$n" "$state/kp-$n.log" "$bin/keyplaned" --config "$state/kp-$n.yaml"
  echo "   kp-$n started (pid $(cat "$state/kp-$n.pid"))$([ $fresh = 1 ] && echo ", new")"
  # A new node joins through a ready cluster, one at a time (Raft makes one
  # membership change at a time); restarting nodes are waited for together.
  if [ $fresh = 1 ]; then
    wait_for "kp-$n /readyz" "kp-$n" "$state/kp-$n.log" http_ok "http://127.0.0.1:$(ctl_port "$n")/readyz"
  fi
}

cmd_up() {
  command -v "$haproxy_bin" >/dev/null 2>&1 ||
    die "haproxy not found: install it (deploy/install-deps.sh, or apt-get install haproxy), or set HAPROXY"
  command -v curl >/dev/null 2>&1 || die "curl not found (deploy/install-deps.sh)"
  find_bins
  mkdir -p "$state"  # 0700: umask 077
  touch "$state/$marker"
  [ -f "$state/ports.env" ] || echo "BASE_PORT=$BASE_PORT" >"$state/ports.env"
  if [ ! -s "$state/master.key" ]; then
    (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$state/master.key.tmp" &&
      echo >>"$state/master.key.tmp" && mv "$state/master.key.tmp" "$state/master.key")
  fi
  for n in "${nodes[@]}"; do write_node_config "$n"; done
  write_haproxy_config

  say "starting the local cluster in $state (base port $BASE_PORT)"
  local pid n
  if pid=$(pid_of mock); then
    echo "   keyplane-mock already running (pid $pid)"
  else
    check_free keyplane-mock "$mock_port"
    spawn mock "$state/mock.log" "$bin/keyplane-mock" --listen "127.0.0.1:$mock_port"
    echo "   keyplane-mock started (pid $(cat "$state/mock.pid"))"
  fi
  wait_for "keyplane-mock" mock "$state/mock.log" http_ok "http://127.0.0.1:$mock_port/healthz"
  for n in "${nodes[@]}"; do start_node "$n"; done
  for n in "${nodes[@]}"; do
    wait_for "kp-$n /readyz" "kp-$n" "$state/kp-$n.log" http_ok "http://127.0.0.1:$(ctl_port "$n")/readyz"
  done

  if pid=$(pid_of haproxy); then
    echo "   haproxy already running (pid $pid)"
  else
    "$haproxy_bin" -c -q -f "$state/haproxy.cfg" || die "HAProxy refuses $state/haproxy.cfg (above)"
    check_free haproxy "$lb_gw" "$lb_ctl" "$lb_stats"
    spawn haproxy "$state/haproxy.log" "$haproxy_bin" -db -f "$state/haproxy.cfg"
    echo "   haproxy started (pid $(cat "$state/haproxy.pid"))"
  fi
  wait_for "HAProxy to reach a ready node" haproxy "$state/haproxy.log" \
    http_ok "http://127.0.0.1:$lb_ctl/readyz"

  # Demo registry entries (deploy/demo-data.sh, as quickstart.sh), and an
  # app token kept in app.token.
  say "demo provider, keys, pool, tenant and app token"
  kp_seed_demo admin "$mock_port" local-cluster
  local app_file="$state/app.token"
  kp_demo_app_token "http://127.0.0.1:$lb_ctl" "$(admin_token)" "local-cluster app" "$app_file"
  local app
  app=$(cat "$app_file")
  # Every node serves the token once it has the entries above (they reach
  # the followers a moment after the leader commits them).
  for n in "${nodes[@]}"; do
    wait_for "kp-$n to accept the app token" "kp-$n" "$state/kp-$n.log" \
      curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$(gw_port "$n")/v1/models" -H "Authorization: Bearer $app"
  done
  wait_for "HAProxy to serve the gateway" haproxy "$state/haproxy.log" \
    curl -fsS -m 5 -o /dev/null "http://127.0.0.1:$lb_gw/v1/models" -H "Authorization: Bearer $app"

  cat <<MSG

The local keyplane cluster is up (state, logs and pid files in $state).

  gateway (apps)       http://127.0.0.1:$lb_gw/v1   HAProxy over kp-1..kp-3 gateways $(gw_port 1), $(gw_port 2), $(gw_port 3)
  control (operators)  http://127.0.0.1:$lb_ctl       HAProxy over control ports $(ctl_port 1), $(ctl_port 2), $(ctl_port 3)
  web console          http://127.0.0.1:$lb_ctl/ui/   through HAProxy: a session works on every node
  HAProxy stats        http://127.0.0.1:$lb_stats/
  mock provider        http://127.0.0.1:$mock_port/v1
  meters               kp-1 and kp-2 (kp-3 is not a meter)

App token (tenant demo), kept in $app_file:
  $app

Admin token: $state/kp-1/admin.token (mode 0600)

  curl -s http://127.0.0.1:$lb_gw/v1/chat/completions -H "Authorization: Bearer \$(cat $app_file)" \\
    -H 'Content-Type: application/json' -H 'X-Project: demo-app' \\
    -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}'

  export KEYPLANE_SERVER=http://127.0.0.1:$lb_ctl
  export KEYPLANE_TOKEN=\$(cat $state/kp-1/admin.token)
  $bin/clusterctl cluster
  $bin/clusterctl usage --group-by tenant,project,model

Try failover: kill -TERM \$(cat $state/kp-1.pid), keep calling the gateway,
then 'deploy/local-cluster.sh up' starts kp-1 again.
  deploy/local-cluster.sh status
  deploy/local-cluster.sh down            # stop, keep the data
  deploy/local-cluster.sh down --purge    # stop and delete $state
MSG
}

# --- restart ---------------------------------------------------------------------------

# haproxy_state N: HAProxy's status of kp-N in the gateway backend (UP, DOWN,
# "DOWN 1/2", ...), from the stats CSV.
haproxy_state() {
  curl -fsS -m 2 "http://127.0.0.1:$lb_stats/;csv" 2>/dev/null |
    awk -F, -v s="kp-$1" '$1 == "keyplane_gateways" && $2 == s { print $18 }'
}

haproxy_up() { [ "$(haproxy_state "$1")" = UP ]; }

# The rolling restart of docs/operations.md, one node at a time:
#   SIGTERM: /readyz turns 503 at once, HAProxy takes the node out after 2
#     failed checks, the gateway keeps serving for drain_delay_ms (2 s) and
#     answers with Connection: close, a leader hands its leadership over;
#     then the listeners close, calls in flight finish, the process exits 0;
#   start it again with the same data directory: it restarts as the member
#     it was, and /readyz turns 200 once it has applied what the leader had
#     committed (it is caught up);
#   wait until HAProxy has it back (2 good checks) before the next node, so
#     that no more than one node is ever out of the rotation.
restart_node() { # N
  local n=$1 pid i
  pid=$(pid_of "kp-$n") || die "kp-$n is not running (start it with: $0 up)"
  say "restarting kp-$n (pid $pid)"
  kill -TERM "$pid"
  for ((i = 0; i < wait_s * 10; i++)); do
    alive "$pid" || break
    sleep 0.1
  done
  alive "$pid" && die "kp-$n (pid $pid) did not stop within ${wait_s}s"
  echo "   kp-$n stopped"
  check_free "kp-$n" "$(gw_port "$n")" "$(ctl_port "$n")" "$(raft_port "$n")"
  spawn "kp-$n" "$state/kp-$n.log" "$bin/keyplaned" --config "$state/kp-$n.yaml"
  wait_for "kp-$n /readyz (caught up with the leader)" "kp-$n" "$state/kp-$n.log" \
    http_ok "http://127.0.0.1:$(ctl_port "$n")/readyz"
  echo "   kp-$n started (pid $(cat "$state/kp-$n.pid")) and caught up"
  wait_for "HAProxy to take kp-$n back" haproxy "$state/haproxy.log" haproxy_up "$n"
  echo "   kp-$n back in HAProxy's rotation"
}

cmd_restart() {
  [ -f "$state/$marker" ] || die "no local cluster in $state (run: $0 up)"
  pid_of haproxy >/dev/null || die "HAProxy is not running (run: $0 up)"
  find_bins
  local list=() a
  for a in "$@"; do
    case $a in
      kp-[1-3]) list+=("${a#kp-}") ;;
      *) die "restart: unknown node $a (expected kp-1, kp-2 or kp-3)" ;;
    esac
  done
  [ ${#list[@]} -gt 0 ] || list=("${nodes[@]}")
  for a in "${list[@]}"; do restart_node "$a"; done
  say "restarted: ${list[*]/#/kp-}"
}

# --- status --------------------------------------------------------------------------

cmd_status() {
  if [ ! -f "$state/$marker" ]; then
    echo "no local cluster in $state (run: deploy/local-cluster.sh up)"
    return 3
  fi
  local bad=0 name pid n body
  echo "processes ($state):"
  for name in haproxy kp-1 kp-2 kp-3 mock; do
    if pid=$(pid_of "$name"); then
      printf '  %-14s running (pid %s)\n' "$name" "$pid"
    else
      printf '  %-14s not running\n' "$name"
      bad=1
    fi
  done
  echo "readiness (GET /readyz on each control port):"
  for n in "${nodes[@]}"; do
    if body=$(curl -sS -m 2 -w ' %{http_code}' "http://127.0.0.1:$(ctl_port "$n")/readyz" 2>&1); then
      printf '  kp-%s  127.0.0.1:%s  %s\n' "$n" "$(ctl_port "$n")" "$body"
      case $body in *' 200') ;; *) bad=1 ;; esac
    else
      printf '  kp-%s  127.0.0.1:%s  unreachable\n' "$n" "$(ctl_port "$n")"
      bad=1
    fi
  done
  if pid_of haproxy >/dev/null; then
    echo "HAProxy servers (http://127.0.0.1:$lb_stats/):"
    curl -fsS -m 2 "http://127.0.0.1:$lb_stats/;csv" 2>/dev/null |
      awk -F, '$1 ~ /^keyplane_/ && $2 ~ /^kp-/ { printf "  %-18s %-5s %s\n", $1, $2, $18 }' || true
  fi
  echo "cluster (clusterctl cluster through http://127.0.0.1:$lb_ctl):"
  local ctl=${bin:-}
  [ -n "$ctl" ] || ctl=${KEYPLANE_BIN_DIR:-$root/build-release/bin}
  if [ ! -x "$ctl/clusterctl" ]; then
    echo "  ($ctl/clusterctl not found)"
    bad=1
  elif [ ! -s "$state/kp-1/admin.token" ]; then
    echo "  (no admin token in $state/kp-1/admin.token)"
    bad=1
  else
    local out
    out=$("${clean_env[@]}" "$ctl/clusterctl" --server "http://127.0.0.1:$lb_ctl" \
      --token "$(admin_token)" cluster 2>&1) || bad=1
    printf '%s\n' "$out" | sed 's/^/  /'
  fi
  [ $bad = 0 ] || return 3
}

# --- down ----------------------------------------------------------------------------

cmd_down() {
  local purge=0 arg
  for arg in "$@"; do
    case $arg in
      --purge) purge=1 ;;
      *) die "down: unknown argument $arg (expected --purge)" ;;
    esac
  done
  if [ ! -f "$state/$marker" ]; then
    echo "no local cluster in $state: nothing to stop"
    return 0
  fi
  # HAProxy first (no new calls), then the nodes together (each drains for
  # drain_delay_ms), the mock last. SIGTERM, then SIGKILL after a deadline
  # above the nodes' drain_timeout_ms.
  local group name pid i left
  for group in haproxy "kp-1 kp-2 kp-3" mock; do
    local pids=()
    for name in $group; do
      if pid=$(pid_of "$name"); then
        echo "   stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        pids+=("$name:$pid")
      fi
    done
    for ((i = 0; i < 450; i++)); do
      left=0
      for name in "${pids[@]}"; do
        if alive "${name#*:}"; then left=1; fi
      done
      [ $left = 1 ] || break
      sleep 0.1
    done
    for name in "${pids[@]}"; do
      if alive "${name#*:}"; then
        echo "   ${name%%:*} did not stop within 45 s: SIGKILL" >&2
        kill -KILL "${name#*:}" 2>/dev/null || true
      fi
    done
  done
  rm -f "$state"/*.pid
  if [ $purge = 1 ]; then
    rm -rf "$state"
    echo "stopped; deleted $state"
  else
    echo "stopped; data kept in $state ('down --purge' deletes it)"
  fi
}

case ${1:-} in
  up)
    shift
    [ $# -eq 0 ] || die "up takes no arguments"
    load_ports
    cmd_up
    ;;
  status)
    load_ports
    cmd_status
    ;;
  restart)
    shift
    load_ports
    cmd_restart "$@"
    ;;
  down)
    shift
    cmd_down "$@"
    ;;
  -h | --help | help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
    ;;
  *)
    echo "usage: $0 up | status | restart [kp-N ...] | down [--purge]" >&2
    exit 2
    ;;
esac
