#!/usr/bin/env bash
# What "one session per client id in the cluster" costs at connect (issue 9): every CONNECT
# with a client id on a clustered node waits until each peer answered its claim.
#
# Part "storm": N clean-session clients (ids tk-0..) connect, CONC handshakes in flight, to
# Mosquitto, to a lone ringmq, and to node 1 of a two-node ringmq cluster (each CONNECT claims
# its id from node 2). Part "move": N persistent clients connect and hold (a first loadgen); then
# the same N ids connect again (a second loadgen): to the same broker for Mosquitto and the lone
# ringmq (local takeovers), to node 2 of the cluster (every session moves from node 1). Part
# "failover": N persistent clients with --reconnect spread round robin over the two nodes; once
# all are connected node 1 is killed (SIGKILL) and its clients reconnect to node 2 (reconnect
# time from the loss to the new CONNACK, per client). Figures:
# the (second) loadgen's connect latency and time to its last CONNACK, and the brokers'
# utime+stime over that run (both nodes for the cluster). Brokers on BROKER_CPU (both nodes
# there, one shard each), loadgens on LOADGEN_CPU.
#
# usage: bench/takeover.sh [--no-docs]
# env: LOADGEN, RINGMQ (release binaries), BROKER_CPU (0), LOADGEN_CPU (1), N (10000),
#      CONC (500), PARTS ("storm move failover"), PERF=NAME (perf record the brokers during run NAME,
#      e.g. storm-cluster, into /tmp/ringmq-takeover-NAME.perf), KEEP_WORK=1
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
COMMAND="bench/takeover.sh${*:+ $*}"
WRITE_DOCS=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-docs) WRITE_DOCS=0 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

LOADGEN=${LOADGEN:-$ROOT/target/release/ringmq-loadgen}
RINGMQ=${RINGMQ:-$ROOT/target/release/ringmq}
BROKER_CPU=${BROKER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
N=${N:-10000}
CONC=${CONC:-500}
PARTS=${PARTS:-storm move failover}
WORK=$(mktemp -d /tmp/ringmq-takeover-bench.XXXXXX)
PIDS=()
ulimit -n "$(ulimit -Hn)"

log() { echo "[takeover-bench $(date +%H:%M:%S)] $*" >&2; }

stop_all() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    PIDS=()
}
HOLDER=
cleanup() {
    [[ -n $HOLDER ]] && kill "$HOLDER" 2>/dev/null || true
    stop_all
    if [[ ${KEEP_WORK:-0} != 1 ]]; then rm -rf "$WORK"; else echo "work dir kept: $WORK"; fi
}
trap cleanup EXIT

metric() {
    curl -s --max-time 2 "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 ~ "^"n {s += $2} END {print s + 0}'
}

start_mosquitto() { # sets port
    port=$(free_port)
    mosquitto_conf "$WORK/mosquitto.conf" "$port"
    taskset -c "$BROKER_CPU" mosquitto -c "$WORK/mosquitto.conf" 2>> "$WORK/mosquitto.log" &
    PIDS+=($!)
    wait_port "$port"
}

start_ringmq() { # start_ringmq PORT METRICS_PORT [config]
    local args=(--listen "127.0.0.1:$1" --shards 1 --metrics-listen "127.0.0.1:$2")
    [[ -n "${3:-}" ]] && args+=(--config "$3")
    taskset -c "$BROKER_CPU" "$RINGMQ" "${args[@]}" > "$WORK/ringmq-$1.log" 2>&1 &
    PIDS+=($!)
    wait_port "$1"
}

start_cluster() { # two one-shard nodes; sets ports[] and metrics[]
    head -c 48 /dev/urandom | base64 > "$WORK/cluster.key"
    ports=() metrics=()
    local gossip=() peer=() i
    for i in 0 1; do
        ports+=("$(free_port)"); metrics+=("$(free_port)"); gossip+=("$(free_port)"); peer+=("$(free_port)")
    done
    for i in 0 1; do
        cat > "$WORK/node$i.toml" <<TOML
[cluster]
node_id = $(( i + 1 ))
gossip_listen = "127.0.0.1:${gossip[$i]}"
peer_listen = "127.0.0.1:${peer[$i]}"
seeds = ["127.0.0.1:${gossip[0]}", "127.0.0.1:${gossip[1]}"]
secret_file = "$WORK/cluster.key"
TOML
        start_ringmq "${ports[$i]}" "${metrics[$i]}" "$WORK/node$i.toml"
    done
    for _ in $(seq 1 150); do
        [[ $(metric "${metrics[0]}" ringmq_cluster_link_up) -ge 1 && $(metric "${metrics[1]}" ringmq_cluster_link_up) -ge 1 ]] && return 0
        sleep 0.2
    done
    log "the two nodes did not link up"
}

# conn_run NAME PORT [loadgen options...]: one loadgen `conn` run holding for 1 s; prints
# "connected p50 p99 last_connack_ms broker_cpu_s" (CPU of every process in PIDS).
conn_run() {
    local name=$1 port=$2
    shift 2
    local before=() after=() i cpu=0 hz
    for pid in "${PIDS[@]}"; do before+=("$(cpu_ticks "$pid")"); done
    local perf=
    if [[ ${PERF:-} == "$name" ]]; then
        perf record -q -e cpu-clock -F 2000 -g -o "/tmp/ringmq-takeover-$name.perf" -p "$(IFS=,; echo "${PIDS[*]}")" 2> /dev/null &
        perf=$!
        sleep 0.5
    fi
    taskset -c "$LOADGEN_CPU" "$LOADGEN" --threads 1 --quiet --host 127.0.0.1 --port "$port" \
        --conn-concurrency "$CONC" --client-id-prefix tk- --json "$WORK/$name.json" \
        conn -c "$N" --duration 1 "$@" > "$WORK/$name.txt" 2>&1 ||
        { log "loadgen failed for $name"; tail -5 "$WORK/$name.txt" >&2; }
    for pid in "${PIDS[@]}"; do after+=("$(cpu_ticks "$pid")"); done
    if [[ -n $perf ]]; then kill -INT "$perf"; wait "$perf" 2> /dev/null || true; fi
    hz=$(getconf CLK_TCK)
    for i in "${!before[@]}"; do cpu=$(( cpu + ${after[$i]} - ${before[$i]} )); done
    python3 - "$WORK/$name.json" "$cpu" "$hz" <<'PY'
import json, sys
try:
    c = json.load(open(sys.argv[1]))["connections"]
    l = c["connect_latency_ms"]
    print(c["connected"], f'{l["p50"]:.1f}', f'{l["p99"]:.1f}', f'{c["time_to_last_connack_ms"]:.0f}',
          f'{int(sys.argv[2]) / int(sys.argv[3]):.2f}')
except Exception as e:
    print("0 – – – –")
PY
}

# hold PORT: N persistent clients connect and stay (background); returns once all connected.
hold() {
    taskset -c "$LOADGEN_CPU" "$LOADGEN" --threads 1 --host 127.0.0.1 --port "$1" \
        --conn-concurrency "$CONC" --client-id-prefix tk- --persistent \
        conn -c "$N" --duration 60 > "$WORK/hold-$1.txt" 2>&1 &
    HOLDER=$!
    for _ in $(seq 1 600); do
        grep -q "conn $N/$N" "$WORK/hold-$1.txt" 2>/dev/null && return 0
        sleep 0.1
    done
    log "the holding loadgen did not connect all $N clients"
}
unhold() { kill "$HOLDER" 2>/dev/null || true; wait "$HOLDER" 2>/dev/null || true; HOLDER=; }

rows=()
row() { # row PART SETUP FIGURES
    rows+=("$1|$2|$3")
    log "$1 / $2: connected p50 p99 last-CONNACK-ms CPU-s = $3"
}

for part in $PARTS; do
    case $part in
        storm)
            log "storm: mosquitto"
            start_mosquitto
            row storm "Mosquitto" "$(conn_run storm-mosquitto "$port")"
            stop_all
            log "storm: ringmq, one node"
            port=$(free_port)
            start_ringmq "$port" "$(free_port)"
            row storm "ringmq, one node" "$(conn_run storm-lone "$port")"
            stop_all
            log "storm: ringmq, node 1 of two"
            start_cluster
            row storm "ringmq, node 1 of a two-node cluster (each connect claims)" "$(conn_run storm-cluster "${ports[0]}")"
            stop_all
            ;;
        move)
            log "move: mosquitto (local takeovers)"
            start_mosquitto
            hold "$port"
            row move "Mosquitto, same broker (local takeover)" "$(conn_run move-mosquitto "$port" --persistent)"
            unhold; stop_all
            log "move: ringmq, one node (local takeovers)"
            port=$(free_port)
            start_ringmq "$port" "$(free_port)"
            hold "$port"
            row move "ringmq, one node (local takeover)" "$(conn_run move-lone "$port" --persistent)"
            unhold; stop_all
            log "move: ringmq, node 1 to node 2"
            start_cluster
            hold "${ports[0]}"
            row move "ringmq, held on node 1, reconnect to node 2 (every session moves)" "$(conn_run move-cluster "${ports[1]}" --persistent)"
            sleep 1.5 # the cluster metrics are exported once a second
            moved=$(metric "${metrics[1]}" 'ringmq_cluster_sessions_moved_total{direction="in"')
            log "sessions moved in on node 2: $moved"
            unhold; stop_all
            ;;
        failover)
            log "failover: kill -9 node 1 of two"
            start_cluster
            taskset -c "$LOADGEN_CPU" "$LOADGEN" --threads 1 \
                --host "127.0.0.1:${ports[0]},127.0.0.1:${ports[1]}" --reconnect \
                --reconnect-backoff-ms 100,2000 --conn-concurrency "$CONC" --client-id-prefix fo- \
                --persistent --json "$WORK/failover.json" conn -c "$N" --duration 20 \
                > "$WORK/failover.txt" 2>&1 &
            HOLDER=$!
            for _ in $(seq 1 600); do
                grep -q "conn $N/$N" "$WORK/failover.txt" 2>/dev/null && break
                sleep 0.1
            done
            kill -9 "${PIDS[0]}"
            wait "$HOLDER" 2>/dev/null || log "the failover loadgen failed"
            HOLDER=
            failover=$(python3 - "$WORK/failover.json" <<'PY'
import json, sys
try:
    c = json.load(open(sys.argv[1]))["connections"]
    r = c["reconnect_time_ms"]
    print(f'{c["reconnects"]} reconnects (failed: {sum(c["reconnect_failures"].values())}); '
          f'reconnect time p50 {r["p50"]:.0f} ms, p99 {r["p99"]:.0f} ms, max {r["max"]:.0f} ms; '
          f'CONNACKs per broker {c["connects_per_broker"]}')
except Exception as e:
    print(f"no summary ({e})")
PY
)
            log "failover: $failover"
            stop_all
            ;;
        *) echo "unknown part $part" >&2; exit 2 ;;
    esac
done

START=$(date -u '+%Y-%m-%d %H:%M UTC')
LOAD="loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
{
    echo
    echo "## $START — session claim cost at connect (\`$COMMAND\`)"
    echo
    echo "- Mosquitto: $MOSQUITTO_SETTINGS."
    echo "- \`$("$RINGMQ" --version 2>/dev/null | head -1)\` from \`$RINGMQ\` (tree at $REV); $N clients, $CONC handshakes in flight, 3.1.1; brokers on CPU $BROKER_CPU (one shard per node), loadgen (one thread) on CPU $LOADGEN_CPU; $LOAD at the end."
    [[ -n ${moved:-} ]] && echo "- move: node 2 counted $moved sessions moved in (\`ringmq_cluster_sessions_moved_total{direction=\"in\"}\`)."
    [[ -n ${failover:-} ]] && echo "- failover (node 1 of two killed with SIGKILL once $N clients were connected, half on each; \`--reconnect --reconnect-backoff-ms 100,2000\`): $failover."
    echo
    echo "| part | setup | connected | connect p50, ms | p99, ms | last CONNACK, ms | broker CPU-s |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    for r in "${rows[@]}"; do
        IFS='|' read -r part what figures <<< "$r"
        read -r n p50 p99 last cpu <<< "$figures"
        echo "| $part | $what | $n | $p50 | $p99 | $last | $cpu |"
    done
} > "$WORK/section.md"
cat "$WORK/section.md"
if [[ $WRITE_DOCS == 1 ]]; then cat "$WORK/section.md" >> "$ROOT/docs/benchmarks.md"; fi
