#!/usr/bin/env bash
# Broadcast side by side: `loadgen/scenarios/broadcast.toml` (15,000 subscribers of one topic,
# one 100 B QoS 0 publish a second) against Mosquitto and ringmq, in rounds that alternate the
# brokers, so every ratio compares runs made minutes apart on the same machine. Optionally a
# second ringmq binary (RINGMQ_BEFORE) runs in each round too: before/after in one run.
# Same pinning as bench/run.sh (broker on core 0, one loadgen thread on core 1); fresh broker
# per run. Prints one table; with --docs also appends it to docs/benchmarks.md.
#
# usage: bench/broadcast.sh [--rounds N] [--duration S] [--docs]
# env: LOADGEN, RINGMQ, RINGMQ_BEFORE (binaries), BROKER_CPU (0), LOADGEN_CPU (1), PERF=1
#      (perf record -g of the ringmq broker while it broadcasts, kept in the work dir), KEEP_WORK=1
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/bench/lib.sh"
COMMAND="bench/broadcast.sh${*:+ $*}"
ROUNDS=2
DURATION=5
WRITE_DOCS=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift ;;
        --duration) DURATION="$2"; shift ;;
        --docs) WRITE_DOCS=1 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

LOADGEN=${LOADGEN:-$ROOT/target/release/ringmq-loadgen}
RINGMQ=${RINGMQ:-$ROOT/target/release/ringmq}
RINGMQ_BEFORE=${RINGMQ_BEFORE:-}
BROKER_CPU=${BROKER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
IFADDR=127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5
WORK=$(mktemp -d /tmp/ringmq-broadcast.XXXXXX)
BROKER_PID=""

cleanup() {
    stop_broker
    if [[ ${KEEP_WORK:-0} != 1 && ${PERF:-0} != 1 ]]; then rm -rf "$WORK"; else echo "work dir kept: $WORK" >&2; fi
}
trap cleanup EXIT

log() { echo "[broadcast $(date +%H:%M:%S)] $*" >&2; }

start_broker() {
    local broker=$1
    PORT=$(free_port)
    ulimit -n "$(ulimit -Hn)"
    case "$broker" in
        mosquitto)
            mosquitto_conf "$WORK/mosquitto.conf" "$PORT"
            taskset -c "$BROKER_CPU" mosquitto -c "$WORK/mosquitto.conf" 2>> "$WORK/mosquitto.log" &
            ;;
        ringmq|ringmq-before)
            local bin=$RINGMQ
            [[ $broker == ringmq-before ]] && bin=$RINGMQ_BEFORE
            taskset -c "$BROKER_CPU" "$bin" --listen "127.0.0.1:$PORT" --shards 1 \
                --metrics-listen "127.0.0.1:$(free_port)" > "$WORK/$broker.log" 2>&1 &
            ;;
    esac
    BROKER_PID=$!
    wait_port "$PORT"
}

stop_broker() {
    stop_pid "$BROKER_PID"
    BROKER_PID=""
}

run_one() {
    local broker=$1 json=$2
    start_broker "$broker"
    local perf_pid=""
    if [[ ${PERF:-0} == 1 && $broker == ringmq ]]; then
        # Starts after the connections (about 3 s for 15,000), stops before the drain ends.
        (sleep 4; exec perf record -e cpu-clock -F 2000 -g -o "${json%.json}.perf" \
            -p "$BROKER_PID" -- sleep "$DURATION") > "${json%.json}.perf.log" 2>&1 &
        perf_pid=$!
    fi
    if ! taskset -c "$LOADGEN_CPU" "$LOADGEN" --threads 1 --host 127.0.0.1 --port "$PORT" \
        --broker-pid "$BROKER_PID" --quiet --json "$json" --duration "$DURATION" \
        --ifaddr "$IFADDR" scenario "$ROOT/loadgen/scenarios/broadcast.toml" \
        > "${json%.json}.txt" 2>&1; then
        log "loadgen failed for $json (see ${json%.json}.txt)"
        tail -5 "${json%.json}.txt" >&2 || true
    fi
    [[ -n "$perf_pid" ]] && wait "$perf_pid" 2>/dev/null || true
    stop_broker
}

command -v mosquitto >/dev/null || { echo "mosquitto is not installed" >&2; exit 1; }
[[ -x "$LOADGEN" && -x "$RINGMQ" ]] || { echo "build first: cargo build --release -p ringmq-broker -p ringmq-loadgen" >&2; exit 1; }
BROKERS=(mosquitto ringmq)
[[ -n "$RINGMQ_BEFORE" ]] && BROKERS=(mosquitto ringmq-before ringmq)

START=$(date -u '+%Y-%m-%d %H:%M UTC')
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg); busiest: $(ps -eo pcpu,comm --sort=-pcpu | sed -n '2,4p' | awk '{printf "%s %s%%, ", $2, $1}' | sed 's/, $//')"
SECONDS=0
for round in $(seq 1 "$ROUNDS"); do
    for broker in "${BROKERS[@]}"; do
        log "round $round: $broker"
        run_one "$broker" "$WORK/$round-$broker.json"
    done
done

TABLE=$(python3 - "$WORK" "$ROUNDS" "${BROKERS[*]}" <<'PY'
import json, os, sys
work, rounds, brokers = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
def fig(path):
    try:
        s = json.load(open(path))
    except Exception:
        return None
    m, b = s["messages"], s.get("broker_process") or {}
    last = m.get("last_delivery_ms") or {}
    cpu = b.get("cpu_s_publishing")
    return {
        "received": m["received"], "expected": m["expected"], "lost": m["lost"],
        "cpu": cpu, "per_cpu": (m["received"] / cpu) if cpu else None,
        "p50": last.get("p50"), "p99": last.get("p99"),
        "wait": s["loadgen"].get("cpu_wait_max_percent", 0),
    }
def f(v, spec):
    return "–" if v is None else format(v, spec)
rows = ["| round | broker | delivered / expected | broker CPU-s | deliveries per broker CPU-s | × Mosquitto | last subscriber p50, ms | p99, ms | × Mosquitto (p50) | loadgen CPU wait max, % |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
for r in range(1, rounds + 1):
    base = fig(os.path.join(work, f"{r}-mosquitto.json"))
    for b in brokers:
        x = fig(os.path.join(work, f"{r}-{b}.json"))
        if x is None:
            rows.append(f"| {r} | {b} | failed | | | | | | | |")
            continue
        ratio = (x["per_cpu"] / base["per_cpu"]) if base and base["per_cpu"] and x["per_cpu"] else None
        tratio = (x["p50"] / base["p50"]) if base and base["p50"] and x["p50"] else None
        rows.append(f"| {r} | {b} | {x['received']} / {x['expected']} | {f(x['cpu'], '.2f')} | "
                    f"{f(x['per_cpu'], '.0f')} | {f(ratio, '.2f')}× | {f(x['p50'], '.1f')} | {f(x['p99'], '.1f')} | "
                    f"{f(tratio, '.2f')}× | {x['wait']:.0f} |")
print("\n".join(rows))
PY
)
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
REV="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
OUT="## $START — broadcast side by side (\`$COMMAND\`)

- Source: commit $REV; ringmq binary built $(date -u -r "$RINGMQ" '+%H:%M UTC')${RINGMQ_BEFORE:+, ringmq-before = $RINGMQ_BEFORE}; run took ${SECONDS} s.
- \`loadgen/scenarios/broadcast.toml\` for ${DURATION} s: 15,000 subscribers of \`ota/broadcast\`, one 100 B QoS 0 publish a second; broker \`taskset -c $BROKER_CPU\` (ringmq \`--shards 1\`), loadgen \`taskset -c $LOADGEN_CPU --threads 1\`. Broker CPU-s: utime+stime from publishing start to the end of the drain.
- Load: loadavg $LOAD_BEFORE before, $LOAD_AFTER after.

$TABLE"
echo "$OUT"
if [[ $WRITE_DOCS == 1 ]]; then
    printf '\n%s\n' "$OUT" >> "$ROOT/docs/benchmarks.md"
    log "appended to docs/benchmarks.md"
fi
