#!/usr/bin/env bash
# A private RabbitMQ cluster on this machine, without Docker, for fault tests and demos: three
# nodes docproc-a@localhost, docproc-b@localhost, docproc-c@localhost, each with its own ports,
# config, data and logs, bound to 127.0.0.1, with the management and prometheus plugins,
# clustered (b, c, ... join a). Written for Debian's rabbitmq-server package (3.10); where
# rabbitmq-server is the plain script (Homebrew) it should work as the user, but is untested.
# The machine's own node (rabbit@localhost, 5672/15672/15692/25672, infra/rabbitmq/local.sh) is
# never addressed: every command here names a docproc-* node.
#
#   infra/rabbitmq/cluster.sh start          start what is not running, cluster, wait, print URLs
#   infra/rabbitmq/cluster.sh stop           stop every node of the cluster (data kept)
#   infra/rabbitmq/cluster.sh stop-node b    stop one node (fault injection); data kept
#   infra/rabbitmq/cluster.sh start-node b   start it again: it rejoins with its data
#   infra/rabbitmq/cluster.sh status         which nodes run, cluster_status, the URLs
#   infra/rabbitmq/cluster.sh reset          stop, then delete the base directory
#
# `start` (and `start-node`, `status`) print shell lines on stdout, everything else goes to stderr:
#   eval "$(infra/rabbitmq/cluster.sh start)"
#   -> DOCPROC_BROKER_URL='amqp://guest:guest@127.0.0.1:5701//;amqp://...:5702//;amqp://...:5703//'
#      DOCPROC_MANAGEMENT_URL='http://127.0.0.1:15701;http://127.0.0.1:15702;http://127.0.0.1:15703'
# guest/guest works: it is the default user, and every client is on localhost.
#
# Ports, node i = 0, 1, 2 (a, b, c), overridable by environment variables:
#   DOCPROC_CLUSTER_AMQP_PORT        5701 + i    AMQP
#   DOCPROC_CLUSTER_MANAGEMENT_PORT  15701 + i   management API and UI
#   DOCPROC_CLUSTER_PROMETHEUS_PORT  15791 + i   prometheus /metrics
#   DOCPROC_CLUSTER_DIST_PORT        25701 + i   Erlang distribution (epmd stays the shared 4369)
# Other variables:
#   DOCPROC_CLUSTER_DIR      /tmp/docproc-cluster   base directory; node a's config, enabled
#                            plugins, data (mnesia) and logs are in <dir>/a/
#   DOCPROC_CLUSTER_NODES    3     how many nodes (1 to 9)
#   DOCPROC_CLUSTER_TIMEOUT  60    seconds each wait (boot, cluster, management API, stop) may take
#   DOCPROC_CLUSTER_LISTEN   (none)  more IPv4 addresses of this machine, space-separated, where each
#                            node's AMQP port listens too (say a veth's, for a client in another
#                            network namespace: tests/faults); guest still connects from
#                            loopback only, so such a client needs a user of its own
#
# consumer_timeout and disk_free_limit come from infra/rabbitmq/rabbitmq.conf. Debian: run as root.
# The nodes then run as the rabbitmq user and share its Erlang cookie, so a plain
# `rabbitmqctl -n docproc-a@localhost cluster_status` works as root. Log: <dir>/a/log/.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
base="${DOCPROC_CLUSTER_DIR:-/tmp/docproc-cluster}"
count="${DOCPROC_CLUSTER_NODES:-3}"
amqp_port="${DOCPROC_CLUSTER_AMQP_PORT:-5701}"
management_port="${DOCPROC_CLUSTER_MANAGEMENT_PORT:-15701}"
prometheus_port="${DOCPROC_CLUSTER_PROMETHEUS_PORT:-15791}"
dist_port="${DOCPROC_CLUSTER_DIST_PORT:-25701}"
timeout="${DOCPROC_CLUSTER_TIMEOUT:-60}"
read -r -a listen <<<"${DOCPROC_CLUSTER_LISTEN:-}"
letters=(a b c d e f g h i)
marker=".docproc-cluster"   # reset deletes only a directory that this script made
pids=()                     # the nodes this run started
setsid="$(command -v setsid || true)"

say() { printf 'cluster: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

[[ "$count" =~ ^[1-9]$ ]] || die "DOCPROC_CLUSTER_NODES=$count: expected 1 to 9"
for n in "$amqp_port" "$management_port" "$prometheus_port" "$dist_port" "$timeout"; do
  [[ "$n" =~ ^[0-9]+$ ]] || die "not a number: $n (check the DOCPROC_CLUSTER_* variables)"
done
command -v rabbitmq-server >/dev/null 2>&1 ||
  die "rabbitmq-server is not installed: apt-get install rabbitmq-server (or brew install rabbitmq)"
for a in "${listen[@]}"; do
  [[ "$a" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || die "DOCPROC_CLUSTER_LISTEN: $a is not an IPv4 address"
done
[[ "$base" = /* ]] || base="$PWD/$base"

# Debian's /usr/sbin/rabbitmq* wrapper runs the real scripts as the rabbitmq user when called by
# root (su keeps the environment, so the RABBITMQ_* variables below get through), and refuses
# anyone else. Called as rabbitmq it would write the system node's /var/log/rabbitmq/startup_log.
owner="$(id -un)"
if [[ "$(readlink -f "$(command -v rabbitmq-server)")" == */rabbitmq-script-wrapper ]]; then
  [[ "$(id -u)" = 0 ]] || die "run as root: Debian's rabbitmq scripts start nodes as the rabbitmq user only for root"
  owner=rabbitmq
fi

name() { printf 'docproc-%s@localhost' "${letters[$1]}"; }
dir() { printf '%s/%s' "$base" "${letters[$1]}"; }
ctl() { local node="$1"; shift; rabbitmqctl -q -n "$node" "$@"; }
running() { [[ "$(epmd -names 2>/dev/null || true)" == *"name docproc-${letters[$1]} at port "* ]]; }
port_taken() { (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
index_of() {
  local i
  for ((i = 0; i < count; i++)); do [[ "${letters[$i]}" = "$1" ]] && { echo "$i"; return; }; done
  die "no node '$1' in a ${count}-node cluster: use one of ${letters[*]:0:$count}"
}

urls() {
  local i amqp="" management=""
  for ((i = 0; i < count; i++)); do
    amqp+="${amqp:+;}amqp://guest:guest@127.0.0.1:$((amqp_port + i))//"
    management+="${management:+;}http://127.0.0.1:$((management_port + i))"
  done
  printf "export DOCPROC_BROKER_URL='%s'\nexport DOCPROC_MANAGEMENT_URL='%s'\n" "$amqp" "$management"
}

prepare() {  # the base directory and node $1's files, rewritten at every start
  local d
  d="$(dir "$1")"
  if [[ -d "$base" && ! -e "$base/$marker" && -n "$(ls -A "$base")" ]]; then
    die "$base exists and was not made by this script: set DOCPROC_CLUSTER_DIR to another directory"
  fi
  mkdir -p "$d/mnesia" "$d/log"
  touch "$base/$marker"
  # Our own env file, so that /etc/rabbitmq/rabbitmq-env.conf (NODENAME=rabbit@localhost) is not
  # read; Erlang distribution on loopback like the system node's.
  printf '%s\n' 'ERL_EPMD_ADDRESS=127.0.0.1' \
    'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"' >"$base/rabbitmq-env.conf"
  {
    echo "# Written by infra/rabbitmq/cluster.sh at each start of $(name "$1")."
    echo "cluster_name = docproc-cluster"
    echo "listeners.tcp.local = 127.0.0.1:$((amqp_port + $1))"
    for k in "${!listen[@]}"; do echo "listeners.tcp.extra$k = ${listen[$k]}:$((amqp_port + $1))"; done
    echo "management.tcp.ip = 127.0.0.1"
    echo "management.tcp.port = $((management_port + $1))"
    echo "prometheus.tcp.ip = 127.0.0.1"
    echo "prometheus.tcp.port = $((prometheus_port + $1))"
    grep -E '^(consumer_timeout|disk_free_limit)' "$here/rabbitmq.conf"
  } >"$d/rabbitmq.conf"
  echo '[rabbitmq_management,rabbitmq_prometheus].' >"$d/enabled_plugins"
  if [[ "$owner" != "$(id -un)" ]]; then
    chown -R "$owner:" "$base"
    runuser -u "$owner" -- test -w "$d/mnesia" ||
      die "the $owner user cannot write $d: set DOCPROC_CLUSTER_DIR to a directory it can reach"
  fi
}

check_ports() {  # node $1's ports are free, unless it runs
  local i="$1" p
  running "$i" && return 0
  for p in $((amqp_port + i)) $((management_port + i)) $((prometheus_port + i)) $((dist_port + i)); do
    if port_taken "$p"; then
      die "port $p (for $(name "$i")) is already in use: stop what listens there (ss -ltnp 'sport = :$p') or set DOCPROC_CLUSTER_*_PORT"
    fi
  done
}

launch() {  # start node $1 in the background, unless it runs
  local i="$1" d
  running "$i" && return 0
  d="$(dir "$i")"
  prepare "$i"
  say "starting $(name "$i") (AMQP $((amqp_port + i)), management $((management_port + i)))"
  (
    export RABBITMQ_NODENAME RABBITMQ_CONF_ENV_FILE RABBITMQ_CONFIG_FILE RABBITMQ_ENABLED_PLUGINS_FILE \
      RABBITMQ_MNESIA_BASE RABBITMQ_LOG_BASE RABBITMQ_DIST_PORT ERL_CRASH_DUMP
    RABBITMQ_NODENAME="$(name "$i")"
    RABBITMQ_CONF_ENV_FILE="$base/rabbitmq-env.conf"
    RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
    RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
    RABBITMQ_MNESIA_BASE="$d/mnesia"
    RABBITMQ_LOG_BASE="$d/log"
    RABBITMQ_DIST_PORT=$((dist_port + i))
    ERL_CRASH_DUMP="$d/log/erl_crash.dump"
    # Not -detached: that throws the console (where a boot error is written) away, and a node that
    # dies early could only be noticed at the deadline. A session of its own, as if detached.
    exec ${setsid} rabbitmq-server >"$d/log/startup.log" 2>&1 </dev/null
  ) &
  pids[i]=$!
}

await() {  # node $1 has booted (await_startup fails at once for a node not yet in epmd)
  local i="$1" deadline=$((SECONDS + timeout)) log
  log="$(dir "$i")/log/startup.log"
  until running "$i"; do
    if [[ -z "${pids[i]:-}" ]] || ! kill -0 "${pids[i]}" 2>/dev/null; then
      die "$(name "$i") exited at boot: $(boot_error "$log") (all of it: $log)"
    fi
    ((SECONDS < deadline)) || die "$(name "$i") did not start within ${timeout} s: see $log"
    sleep 0.5
  done
  # await_startup can give up before its timeout (rabbitmqctl losing the node for a moment while
  # a node of a restarted cluster waits for its peers' tables): asked again until the deadline,
  # while the node lives and its log shows no failed boot (which it writes a moment after).
  until ctl "$(name "$i")" await_startup --timeout "$((deadline > SECONDS ? deadline - SECONDS : 1))" \
    >/dev/null 2>&1; do
    if grep -qE '^ERROR|init terminating' "$log" \
      || { [[ -n "${pids[i]:-}" ]] && ! kill -0 "${pids[i]}" 2>/dev/null; }; then
      die "$(name "$i") exited at boot: $(boot_error "$log") (all of it: $log)"
    fi
    ((SECONDS < deadline)) \
      || die "$(name "$i") did not boot within ${timeout} s: see $log and $(dir "$i")/log/$(name "$i").log"
    sleep 0.5
  done
}

boot_error() { grep -m1 -E '^ERROR|^\{"init terminating' "$1" | cut -c1-300 || tail -n1 "$1"; }

running_nodes() {  # how many nodes node $1 sees running
  ctl "$(name "$1")" cluster_status --formatter json 2>/dev/null |
    grep -o '"running_nodes":\[[^]]*\]' | grep -o '@' | wc -l || true
}

join() {  # make node $1 a member of the cluster of the first other node that runs
  local i="$1" j peer log step
  for ((j = 0; j < count; j++)); do
    [[ "$j" != "$i" ]] && running "$j" && { peer="$(name "$j")"; break; }
  done
  [[ -n "${peer:-}" ]] || return 0
  [[ "$(ctl "$peer" cluster_status --formatter json)" == *"\"$(name "$i")\""* ]] && return 0
  say "joining $(name "$i") to $peer"
  log="$(dir "$i")/log/join.log"   # 3.10's CLI prints feature-flag warnings while it joins
  for step in stop_app reset "join_cluster $peer" start_app; do
    # shellcheck disable=SC2086 # "join_cluster $peer" is two words
    ctl "$(name "$i")" $step >>"$log" 2>&1 || die "rabbitmqctl $step failed on $(name "$i"): see $log"
  done
}

wait_for() {  # node $1 sees $2 running nodes and its management API answers
  local i="$1" want="$2" deadline=$((SECONDS + timeout))
  until [[ "$(running_nodes "$i")" -ge "$want" ]]; do
    ((SECONDS < deadline)) || die "$(name "$i") does not see $want running nodes after ${timeout} s: cluster.sh status"
    sleep 1
  done
  until curl -fsS -o /dev/null -u guest:guest "http://127.0.0.1:$((management_port + i))/api/overview" 2>/dev/null; do
    ((SECONDS < deadline)) || die "the management API of $(name "$i") (port $((management_port + i))) did not answer within ${timeout} s"
    sleep 1
  done
}

halt() {  # stop node $1 and wait until it is gone
  local i="$1" deadline=$((SECONDS + timeout))
  running "$i" || return 0
  say "stopping $(name "$i")"
  ctl "$(name "$i")" shutdown --timeout "$timeout" >/dev/null 2>&1 || true
  while running "$i"; do
    ((SECONDS < deadline)) || die "$(name "$i") is still running after ${timeout} s: see $(dir "$i")/log/"
    sleep 1
  done
}

halt_all() {  # all at once: one node takes some 8 s to stop
  local i pid rc=0 jobs=()
  for ((i = count - 1; i >= 0; i--)); do halt "$i" & jobs+=("$!"); done
  for pid in "${jobs[@]}"; do wait "$pid" || rc=1; done
  return "$rc"
}

start_all() {
  local i started=$SECONDS
  # All at once: a node that was not the last to stop waits at boot for the others.
  for ((i = 0; i < count; i++)); do check_ports "$i"; done
  for ((i = 0; i < count; i++)); do launch "$i"; done
  for ((i = 0; i < count; i++)); do await "$i"; done
  for ((i = 1; i < count; i++)); do join "$i"; done
  for ((i = 0; i < count; i++)); do wait_for "$i" "$count"; done
  say "ready: $count nodes in $((SECONDS - started)) s; logs in $base/*/log/"
}

live_count() {
  local i n=0
  for ((i = 0; i < count; i++)); do running "$i" && n=$((n + 1)); done
  echo "$n"
}

case "${1:-}" in
  start) start_all; urls ;;
  stop) halt_all ;;
  start-node)
    i="$(index_of "${2:-}")"
    check_ports "$i"; launch "$i"; await "$i"; join "$i"; wait_for "$i" "$(live_count)"; urls ;;
  stop-node) i="$(index_of "${2:-}")"; halt "$i" ;;   # not halt "$(...)": set -e would not stop
  status)
    for ((i = 0; i < count; i++)); do
      if running "$i"; then say "$(name "$i") running"; else say "$(name "$i") stopped"; fi
    done
    for ((i = 0; i < count; i++)); do
      running "$i" && { ctl "$(name "$i")" cluster_status >&2 || true; break; }
    done
    urls ;;
  reset)
    halt_all
    if [[ -d "$base" ]]; then
      [[ -e "$base/$marker" ]] || die "$base was not made by this script: not deleting it"
      rm -rf "$base"
      say "deleted $base"
    fi ;;
  *) die "usage: $0 start|stop|status|reset|start-node X|stop-node X (X = ${letters[*]:0:$count})" ;;
esac
