#!/usr/bin/env bash
# Cross-node delivery cost (issue 9, "bench"): what a message costs the brokers when its
# subscriber is on another node, against the same load delivered on one node.
#
# Two ringmq nodes form a cluster on loopback (one shard each, both pinned to BROKER_CPU), and
# one loadgen (one thread, LOADGEN_CPU) connects PAIRS publisher/subscriber pairs, each pair on its
# own topic (`p2p/%g`), 100 B QoS 0 at RATE msgs/s in total, clients spread round robin over the
# two nodes by their position: subscribers first, then publishers. With an even PAIRS every pair
# lands on one node (all local); with PAIRS+1 (odd) every pair is split (all forwarded). The
# figure is the brokers' utime+stime (both nodes, /proc/PID/stat) per million delivered messages.
# The same load on a single ringmq and on Mosquitto (one process each) is the reference.
# Then a broadcast to 15,000 subscribers spread over 3 nodes, against one node and Mosquitto.
#
# usage: bench/cluster.sh [--no-docs]
# env: LOADGEN, RINGMQ (release binaries), BROKER_CPU (0), LOADGEN_CPU (1), PAIRS (1000),
#      RATE (20000), DURATION_S (10), KEEP_WORK=1
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/bench/lib.sh"
COMMAND="bench/cluster.sh${*:+ $*}"
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
PAIRS=${PAIRS:-1000}
RATE=${RATE:-20000}
DURATION_S=${DURATION_S:-10}
(( PAIRS % 2 == 0 )) || { echo "PAIRS must be even (the split case uses PAIRS+1)" >&2; exit 2; }
WORK=$(mktemp -d /tmp/ringmq-cluster-bench.XXXXXX)
PIDS=()

log() { echo "[cluster-bench $(date +%H:%M:%S)] $*" >&2; }

stop_all() {
    # All signalled first, so their graceful shutdowns overlap.
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    PIDS=()
}
cleanup() {
    stop_all
    if [[ ${KEEP_WORK:-0} != 1 ]]; then rm -rf "$WORK"; else echo "work dir kept: $WORK"; fi
}
trap cleanup EXIT

metric() {
    curl -s --max-time 2 "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 ~ "^"n {s += $2} END {print s + 0}'
}

scenario() {
    local pairs=$1 file=$WORK/p2p-$1.toml
    cat > "$file" <<TOML
name = "p2p-$pairs"
description = "$pairs pairs, 100 B QoS 0, $RATE msgs/s in total"
[connection]
keepalive_s = 60
conn_concurrency = 1000
[run]
duration_s = $DURATION_S
drain_ms = 2000
[[group]]
name = "receivers"
count = $pairs
role = "sub"
filter = "p2p/%g"
qos = 0
[[group]]
name = "senders"
count = $pairs
role = "pub"
topic = "p2p/%g"
qos = 0
payload_size = 100
rate = $RATE
TOML
    echo "$file"
}

# run_load NAME SCENARIO BROKERS PID...: one loadgen run; prints "delivered cpu_s".
run_load() {
    local name=$1 file=$2 brokers=$3
    shift 3
    local before=() after=() i
    for pid in "$@"; do before+=("$(cpu_ticks "$pid")"); done
    local target=(--host "$brokers")
    # One broker is --host/--port; a comma list is several brokers.
    [[ $brokers == *,* ]] || target=(--host "${brokers%:*}" --port "${brokers##*:}")
    taskset -c "$LOADGEN_CPU" "$LOADGEN" --threads 1 "${target[@]}" --quiet \
        --json "$WORK/$name.json" scenario "$file" > "$WORK/$name.txt" 2>&1 ||
        { log "loadgen failed for $name"; tail -5 "$WORK/$name.txt" >&2; }
    for pid in "$@"; do after+=("$(cpu_ticks "$pid")"); done
    local hz cpu=0
    hz=$(getconf CLK_TCK)
    for i in "${!before[@]}"; do cpu=$(( cpu + ${after[$i]} - ${before[$i]} )); done
    python3 - "$WORK/$name.json" "$cpu" "$hz" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
m = s["messages"]
print(int(m["received"]), int(sys.argv[2]) / int(sys.argv[3]), int(m["lost"]), int(m["expected"]))
PY
}

start_ringmq() { # start_ringmq PORT METRICS_PORT [config]
    local port=$1 mport=$2 conf=${3:-}
    local args=(--listen "127.0.0.1:$port" --shards 1 --metrics-listen "127.0.0.1:$mport")
    [[ -n "$conf" ]] && args+=(--config "$conf")
    ulimit -n "$(ulimit -Hn)"
    taskset -c "$BROKER_CPU" "$RINGMQ" "${args[@]}" > "$WORK/ringmq-$port.log" 2>&1 &
    PIDS+=($!)
    wait_port "$port"
}

results=()
record() { results+=("$1|$2|$3|$4|$5"); log "$1: $2 delivered of $5 expected ($4 lost), $3 CPU-s"; }

log "mosquitto, one process, $PAIRS pairs"
port=$(free_port)
mosquitto_conf "$WORK/mosquitto.conf" "$port"
taskset -c "$BROKER_CPU" mosquitto -c "$WORK/mosquitto.conf" 2>> "$WORK/mosquitto.log" &
PIDS+=($!)
wait_port "$port"
read -r n cpu lost expected < <(run_load mosquitto "$(scenario "$PAIRS")" "127.0.0.1:$port" "${PIDS[@]}")
record "Mosquitto, one process" "$n" "$cpu" "$lost" "$expected"
stop_all

log "ringmq, one node, $PAIRS pairs"
port=$(free_port)
start_ringmq "$port" "$(free_port)"
read -r n cpu lost expected < <(run_load single "$(scenario "$PAIRS")" "127.0.0.1:$port" "${PIDS[@]}")
record "ringmq, one node" "$n" "$cpu" "$lost" "$expected"
stop_all

log "ringmq, two-node cluster"
head -c 48 /dev/urandom | base64 > "$WORK/cluster.key"
# start_cluster N: N one-shard nodes; sets ports[] and metrics[], waits for every link.
start_cluster() {
    local n=$1 i
    ports=() metrics=() gossip=() peer=()
    for (( i = 0; i < n; i++ )); do
        ports+=("$(free_port)"); metrics+=("$(free_port)"); gossip+=("$(free_port)"); peer+=("$(free_port)")
    done
    local seeds
    seeds=$(printf '"127.0.0.1:%s", ' "${gossip[@]}")
    for (( i = 0; i < n; i++ )); do
        cat > "$WORK/node$i.toml" <<TOML
[cluster]
node_id = $(( i + 1 ))
gossip_listen = "127.0.0.1:${gossip[$i]}"
peer_listen = "127.0.0.1:${peer[$i]}"
seeds = [${seeds%, }]
secret_file = "$WORK/cluster.key"
TOML
        start_ringmq "${ports[$i]}" "${metrics[$i]}" "$WORK/node$i.toml"
    done
    local up ok
    for _ in $(seq 1 150); do
        ok=1
        for (( i = 0; i < n; i++ )); do
            up=$(metric "${metrics[$i]}" ringmq_cluster_link_up)
            [[ "${up%.*}" -ge $(( n - 1 )) ]] || ok=0
        done
        [[ $ok == 1 ]] && return 0
        sleep 0.2
    done
    log "the $n nodes did not link up"
}
start_cluster 2
brokers="127.0.0.1:${ports[0]},127.0.0.1:${ports[1]}"
read -r n cpu lost expected < <(run_load local "$(scenario "$PAIRS")" "$brokers" "${PIDS[@]}")
record "ringmq, two nodes, every pair on one node" "$n" "$cpu" "$lost" "$expected"
read -r n cpu lost expected < <(run_load split "$(scenario $(( PAIRS + 1 )))" "$brokers" "${PIDS[@]}")
sleep 1.5 # the cluster metrics are exported once a second
forwarded=$(( $(metric "${metrics[0]}" 'ringmq_cluster_forwarded_messages_total{.*direction="out"') + $(metric "${metrics[1]}" 'ringmq_cluster_forwarded_messages_total{.*direction="out"') ))
record "ringmq, two nodes, every pair split (forwarded)" "$n" "$cpu" "$lost" "$expected"
stop_all

# Broadcast: loadgen/scenarios/broadcast.toml (15,000 subscribers of one topic, one publisher
# every second), subscribers spread round robin over 3 nodes (the publisher on one of them),
# against one node and Mosquitto: when the last subscriber has each message.
bc=()
bc_run() { # bc_run NAME BROKERS
    local target=(--host "$2")
    [[ $2 == *,* ]] || target=(--host "${2%:*}" --port "${2##*:}")
    taskset -c "$LOADGEN_CPU" "$LOADGEN" --threads 1 "${target[@]}" --quiet --duration 10 \
        --ifaddr 127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5 --json "$WORK/bc-$1.json" \
        scenario "$ROOT/loadgen/scenarios/broadcast.toml" > "$WORK/bc-$1.txt" 2>&1 ||
        { log "loadgen failed for broadcast $1"; tail -5 "$WORK/bc-$1.txt" >&2; }
    bc+=("$1|$(python3 - "$WORK/bc-$1.json" <<'PY'
import json, sys
try:
    s = json.load(open(sys.argv[1]))
    m = s["messages"]
    last = m.get("last_delivery_ms") or {}
    f = lambda v: "–" if v is None else f"{v:.1f}"
    print(f'{m["received"]}|{m["expected"]}|{m["lost"]}|{f(last.get("p50"))}|{f(last.get("p99"))}')
except Exception as e:
    print(f"–|–|–|–|– ({e})")
PY
)")
}
log "broadcast: mosquitto"
port=$(free_port)
mosquitto_conf "$WORK/mosquitto.conf" "$port"
ulimit -n "$(ulimit -Hn)"
taskset -c "$BROKER_CPU" mosquitto -c "$WORK/mosquitto.conf" 2>> "$WORK/mosquitto.log" &
PIDS+=($!)
wait_port "$port"
bc_run "Mosquitto, one process" "127.0.0.1:$port"
stop_all
log "broadcast: ringmq, one node"
port=$(free_port)
start_ringmq "$port" "$(free_port)"
bc_run "ringmq, one node" "127.0.0.1:$port"
stop_all
log "broadcast: ringmq, three nodes"
start_cluster 3
bc_run "ringmq, three nodes (a third of the subscribers on each)" "127.0.0.1:${ports[0]},127.0.0.1:${ports[1]},127.0.0.1:${ports[2]}"
stop_all

START=$(date -u '+%Y-%m-%d %H:%M UTC')
LOAD="loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
{
    echo
    echo "## $START — cross-node delivery cost (\`$COMMAND\`)"
    echo
    echo "- $PAIRS publisher/subscriber pairs (PAIRS+1 when split), 100 B QoS 0, $RATE msgs/s in total for ${DURATION_S} s; brokers on CPU $BROKER_CPU (both nodes there), one loadgen thread on CPU $LOADGEN_CPU; $LOAD at the end."
    echo "- CPU: utime+stime of every broker process of the row over the loadgen run; forwarded messages (split run, both nodes' \`ringmq_cluster_forwarded_messages_total{direction=\"out\"}\`): $forwarded."
    echo
    echo "| setup | delivered / expected | lost | broker CPU-s | CPU-s per million delivered |"
    echo "|---|---:|---:|---:|---:|"
    for r in "${results[@]}"; do
        IFS='|' read -r what n cpu lost expected <<< "$r"
        per=$(python3 -c "n=$n; c=$cpu; print(f'{c / n * 1e6:.1f}' if n else '–')")
        echo "| $what | $n / $expected | $lost | $cpu | $per |"
    done
    echo
    echo "Broadcast (\`loadgen/scenarios/broadcast.toml\`: 15,000 subscribers of one topic, one 100 B QoS 0 message a second for 10 s; brokers on CPU $BROKER_CPU):"
    echo
    echo "| setup | delivered / expected | lost | last subscriber has it p50, ms | p99, ms |"
    echo "|---|---:|---:|---:|---:|"
    for r in "${bc[@]}"; do
        IFS='|' read -r what n expected lost p50 p99 <<< "$r"
        echo "| $what | $n / $expected | $lost | $p50 | $p99 |"
    done
} > "$WORK/section.md"
cat "$WORK/section.md"
if [[ $WRITE_DOCS == 1 ]]; then cat "$WORK/section.md" >> "$ROOT/docs/benchmarks.md"; fi
