#!/usr/bin/env bash
# Side-by-side benchmark: the scaled reference IoV tests against Mosquitto and ringmq, with
# the same loadgen and the same pinning (broker on core 0, loadgen on core 1, one loadgen
# thread). Appends a dated section with both brokers' figures and their ratio to
# docs/benchmarks.md.
#
# usage: bench/run.sh [--quick] [--no-docs] [--only mosquitto|ringmq]
#   --quick    ~2 minutes instead of ~10 (shorter runs, fewer rate steps)
#   --no-docs  print the table only
# env: LOADGEN, RINGMQ (binaries), BROKER_CPU (0), LOADGEN_CPU (1), KEEP_WORK=1,
#      RINGMQ_SHARDS (1; e.g. RINGMQ_SHARDS=2 BROKER_CPU=0,1 for ringmq on all cores)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/bench/lib.sh"
COMMAND="bench/run.sh${*:+ $*}"
QUICK=0
WRITE_DOCS=1
ONLY=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --no-docs) WRITE_DOCS=0 ;;
        --only) ONLY="$2"; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

LOADGEN=${LOADGEN:-$ROOT/target/release/ringmq-loadgen}
RINGMQ=${RINGMQ:-$ROOT/target/release/ringmq}
BROKER_CPU=${BROKER_CPU:-0}
RINGMQ_SHARDS=${RINGMQ_SHARDS:-1}
LOADGEN_CPU=${LOADGEN_CPU:-1}
IFADDR=127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5
SCENARIOS=$ROOT/loadgen/scenarios
WORK=$(mktemp -d /tmp/ringmq-bench.XXXXXX)
BROKER_PID=""
PORT=""

if [[ $QUICK == 1 ]]; then
    TELEMETRY_RATES=(10000 40000 80000)
    STEP_S=4; BROADCAST_S=5; P2P_S=4; IDLE_S=30
else
    TELEMETRY_RATES=(5000 10000 20000 30000 40000 60000 80000 120000 160000)
    STEP_S=10; BROADCAST_S=10; P2P_S=10; IDLE_S=30
fi

cleanup() {
    stop_broker
    if [[ ${KEEP_WORK:-0} != 1 ]]; then rm -rf "$WORK"; else echo "work dir kept: $WORK"; fi
}
trap cleanup EXIT

log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }

RINGMQ_SETTINGS="--listen 127.0.0.1:PORT --shards $RINGMQ_SHARDS (CPUs $BROKER_CPU) --metrics-listen 127.0.0.1:MPORT, defaults otherwise (session_queue_len_max 1000 like Mosquitto's max_queued_messages, inflight_max 32)"

start_broker() {
    local broker=$1
    PORT=$(free_port)
    ulimit -n "$(ulimit -Hn)"
    case "$broker" in
        mosquitto)
            mosquitto_conf "$WORK/mosquitto.conf" "$PORT"
            taskset -c "$BROKER_CPU" mosquitto -c "$WORK/mosquitto.conf" 2>> "$WORK/mosquitto.log" &
            BROKER_PID=$!
            ;;
        ringmq)
            METRICS_PORT=$(free_port)
            taskset -c "$BROKER_CPU" "$RINGMQ" --listen "127.0.0.1:$PORT" --shards "$RINGMQ_SHARDS" \
                --metrics-listen "127.0.0.1:$METRICS_PORT" > "$WORK/ringmq.log" 2>&1 &
            BROKER_PID=$!
            ;;
    esac
    wait_port "$PORT"
}

stop_broker() {
    if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
        if [[ -n "${METRICS_PORT:-}" ]] && [[ -n "${CURRENT_JSON:-}" ]]; then
            curl -s --max-time 2 "http://127.0.0.1:$METRICS_PORT/metrics" > "${CURRENT_JSON%.json}.prom" 2>/dev/null || true
        fi
    fi
    stop_pid "$BROKER_PID"
    BROKER_PID=""
}

# One loadgen run against a fresh broker: run_one BROKER JSON ARGS...
run_one() {
    local broker=$1 json=$2
    shift 2
    CURRENT_JSON=$json
    start_broker "$broker"
    if ! taskset -c "$LOADGEN_CPU" "$LOADGEN" --threads 1 --host 127.0.0.1 --port "$PORT" \
        --broker-pid "$BROKER_PID" --quiet --json "$json" "$@" > "${json%.json}.txt" 2>&1; then
        log "loadgen failed for $json (see ${json%.json}.txt)"
        tail -5 "${json%.json}.txt" >&2 || true
    fi
    stop_broker
}

step_ok() {
    # A telemetry step is held when nothing was lost or duplicated, the loadgen's send
    # backlog never grew (it sent everything on schedule) and the delivery backlog (sent but
    # not yet received) never kept growing (the broker kept up).
    python3 - "$1" <<'PY'
import json, sys
try:
    s = json.load(open(sys.argv[1]))
except Exception:
    sys.exit(1)
m, lg = s["messages"], s["loadgen"]
ok = (m["sent"] > 0 and m["lost"] == 0 and m["duplicated"] == 0
      and lg["backlog_growing_seconds"] == 0
      and lg.get("delivery_backlog_growing_seconds", 0) == 0
      and s["connections"]["failed"] == 0)
sys.exit(0 if ok else 1)
PY
}

bench_broker() {
    local broker=$1
    local dir=$WORK/$broker
    mkdir -p "$dir"
    log "$broker: 1. telemetry fan-in, rate steps ${TELEMETRY_RATES[*]} msgs/s (${STEP_S}s each)"
    for rate in "${TELEMETRY_RATES[@]}"; do
        local json=$dir/telemetry-$rate.json
        # The scenario's base rate is 5,000 msgs/s.
        scale=$(python3 -c "print($rate/5000)")
        run_one "$broker" "$json" --duration "$STEP_S" --ifaddr "$IFADDR" \
            scenario "$SCENARIOS/telemetry-fanin.toml" --rate-scale "$scale"
        if step_ok "$json"; then
            log "$broker: telemetry $rate msgs/s held"
        else
            log "$broker: telemetry $rate msgs/s NOT held (loss/backlog); stopping the steps"
            break
        fi
    done
    log "$broker: 2. broadcast to 15,000 subscribers"
    run_one "$broker" "$dir/broadcast.json" --duration "$BROADCAST_S" --ifaddr "$IFADDR" \
        scenario "$SCENARIOS/broadcast.toml"
    log "$broker: 3. connection storm 15,000"
    run_one "$broker" "$dir/conn-storm.json" --ifaddr "$IFADDR" scenario "$SCENARIOS/conn-storm.toml"
    log "$broker: 4. one-to-one 1 KB QoS0 max rate, QoS2 fixed rate"
    run_one "$broker" "$dir/p2p-qos0.json" --duration "$P2P_S" scenario "$SCENARIOS/one-to-one.toml"
    run_one "$broker" "$dir/p2p-qos2.json" --duration "$P2P_S" scenario "$SCENARIOS/one-to-one-qos2.toml"
    log "$broker: 5. idle memory, 15,000 connections"
    run_one "$broker" "$dir/idle.json" --duration "$IDLE_S" --ifaddr "$IFADDR" scenario "$SCENARIOS/idle.toml"
}

if [[ ! -x "$LOADGEN" ]]; then
    log "building the loadgen (release)"
    (cd "$ROOT" && cargo build --release -p ringmq-loadgen)
fi
command -v mosquitto >/dev/null || { echo "mosquitto is not installed" >&2; exit 1; }
if [[ $(nproc) -lt 2 ]]; then LOADGEN_CPU=$BROKER_CPU; log "one CPU only: broker and loadgen share it"; fi

START=$(date -u '+%Y-%m-%d %H:%M UTC')
# Other processes on the pinned cores skew the figures; record what was running.
LOAD="loadavg $(cut -d' ' -f1-3 /proc/loadavg); busiest: $(ps -eo pcpu,comm --sort=-pcpu | sed -n '2,4p' | awk '{printf "%s %s%%, ", $2, $1}' | sed 's/, $//')"
SECONDS=0
if [[ -z "$ONLY" || "$ONLY" == mosquitto ]]; then
    bench_broker mosquitto
fi
RINGMQ_NOTE=""
if [[ -z "$ONLY" || "$ONLY" == ringmq ]]; then
    if [[ -x "$RINGMQ" ]]; then
        bench_broker ringmq
    else
        echo "ringmq: not built, skipped"
        RINGMQ_NOTE="ringmq: not built ($RINGMQ missing), skipped"
    fi
fi
ELAPSED=$SECONDS

TABLE=$(python3 "$ROOT/bench/report.py" "$WORK" \
    --date "$START" --command "$COMMAND" --elapsed "$ELAPSED" \
    --mosquitto-settings "$MOSQUITTO_SETTINGS" --ringmq-settings "$RINGMQ_SETTINGS" \
    --mosquitto-version "$(mosquitto -h 2>/dev/null | head -1 || true)" \
    --note "$RINGMQ_NOTE" --quick "$QUICK" --load "$LOAD" \
    --revision "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown); ringmq binary built $(date -u -r "$RINGMQ" '+%H:%M UTC' 2>/dev/null || echo -), loadgen binary built $(date -u -r "$LOADGEN" '+%H:%M UTC' 2>/dev/null || echo -)")
echo "$TABLE"
if [[ $WRITE_DOCS == 1 ]]; then
    DOC=$ROOT/docs/benchmarks.md
    mkdir -p "$ROOT/docs"
    if [[ ! -f "$DOC" ]]; then
        printf '# Benchmarks\n\nProduced by `bench/run.sh` (see the script header). Newest section last.\n' > "$DOC"
    fi
    printf '\n%s\n' "$TABLE" >> "$DOC"
    log "appended to $DOC"
fi
