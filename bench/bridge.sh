#!/usr/bin/env bash
# Kafka bridge benchmark: MQTT publishers -> ringmq (1 shard, core 0) -> bridge thread -> tansu.
# Measures bridged msgs/s of 100 B QoS0 telemetry and the broker's CPU-seconds per million bridged
# messages, then QoS1 with ack = "kafka" at a fixed offered rate (acknowledged msgs/s).
# Appends a section to docs/benchmarks.md (--no-docs: print only).
#
# Then the end-to-end latency of ack = "kafka" QoS1 (publish → PUBACK) from a Paho client.
# usage: bench/bridge.sh [--no-docs]
# env: RATE_QOS0 (200000), RATE_QOS1 (5000), DURATION (10), RATE_LATENCY (1000), COUNT_LATENCY (5000)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WRITE_DOCS=1; [[ "${1:-}" == "--no-docs" ]] && WRITE_DOCS=0
RATE_QOS0=${RATE_QOS0:-200000}; RATE_QOS1=${RATE_QOS1:-5000}; DURATION=${DURATION:-10}
LOADGEN=$ROOT/target/release/ringmq-loadgen; RINGMQ=$ROOT/target/release/ringmq
[[ -x $LOADGEN && -x $RINGMQ ]] || { echo "build first: cargo build --release -p ringmq-broker -p ringmq-loadgen" >&2; exit 2; }
WORK=$(mktemp -d /tmp/ringmq-bridge-bench.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
KPORT=$(free_port); MPORT=$(free_port); PORT=$(free_port); MQPORT=$(free_port)
TANSU_PID=$("$ROOT/scripts/kafka/start-tansu.sh" "$KPORT")
BROKER_PID=""
cleanup() { [[ -n $BROKER_PID ]] && kill "$BROKER_PID" 2>/dev/null; kill "$TANSU_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
python3 "$ROOT/scripts/kafka/create_topics.py" --bootstrap "127.0.0.1:$KPORT" telemetry events >/dev/null
cat > "$WORK/ringmq.toml" <<TOML
[bridge.kafka]
bootstrap_servers = "127.0.0.1:$KPORT"
buffer_max_messages = 1000000
[bridge.kafka.producer]
"linger.ms" = 5
"batch.size" = 1000000
[[bridge.kafka.rule]]
filter = "vehicle/+/telemetry"
kafka_topic = "telemetry"
key = "client_id"
[[bridge.kafka.rule]]
filter = "vehicle/+/event"
kafka_topic = "events"
key = "client_id"
ack = "kafka"
TOML
taskset -c 0 "$RINGMQ" --config "$WORK/ringmq.toml" --listen "127.0.0.1:$PORT" --shards 1 \
    --metrics-listen "127.0.0.1:$MPORT" >/dev/null 2>"$WORK/broker.log" &
BROKER_PID=$!
sleep 1
cpu() { awk '{print $14+$15}' "/proc/$BROKER_PID/stat"; }
metric() { curl -s "127.0.0.1:$MPORT/metrics" | awk -v m="$1" '$1 ~ "^"m"({|$)" {s+=$2} END {printf "%d", s}'; }
run() { # qos topic rate
    taskset -c 1 "$LOADGEN" --threads 1 pub -p "$PORT" -c 100 -q "$1" -t "$2" --rate "$3" \
        --duration "$DURATION" --inflight 64 --json "$WORK/run.json" >"$WORK/run.log" 2>&1 || true
}
# Waits until Kafka has acknowledged everything it is going to (the counter stops moving), at
# most 60 s, so one run's drain is not counted in the next.
settle() {
    local last now
    last=$(metric ringmq_bridge_kafka_acknowledged_total)
    for _ in $(seq 1 60); do
        sleep 1
        now=$(metric ringmq_bridge_kafka_acknowledged_total)
        [[ $now == "$last" ]] && return
        last=$now
    done
}
tick=$(getconf CLK_TCK)
a0=$(metric ringmq_bridge_kafka_acknowledged_total); c0=$(cpu)
run 0 'vehicle/%i/telemetry' "$RATE_QOS0"; settle
a1=$(metric ringmq_bridge_kafka_acknowledged_total); c1=$(cpu)
d1=$(metric ringmq_bridge_kafka_dropped_total)
sent0=$(python3 -c "import json;print(json.load(open('$WORK/run.json'))['messages']['sent'])" 2>/dev/null || echo 0)
bridged0=$((a1 - a0)); cpus0=$(python3 -c "print(round(($c1-$c0)/$tick,2))")
run 1 'vehicle/%i/event' "$RATE_QOS1"; settle
a2=$(metric ringmq_bridge_kafka_acknowledged_total); c2=$(cpu)
acked1=$(python3 -c "import json;print(json.load(open('$WORK/run.json'))['messages']['acked'])" 2>/dev/null || echo 0)
bridged1=$((a2 - a1)); cpus1=$(python3 -c "print(round(($c2-$c1)/$tick,2))")
# End-to-end latency of ack = "kafka": publish → PUBACK (sent only once Kafka stored the record),
# from an independent client at a fixed rate.
lat=$(taskset -c 1 python3 "$ROOT/bench/puback_latency.py" 127.0.0.1 "$PORT" vehicle/lat/event "${RATE_LATENCY:-1000}" "${COUNT_LATENCY:-5000}" 2>/dev/null || echo '{}')
latcol() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d.get(sys.argv[2], '–'))" "$lat" "$1"; }
table=$(cat <<MD
| Run | offered | sent (loadgen) | acknowledged by Kafka | dropped | bridged msgs/s | broker CPU-s | CPU-s per million bridged |
|---|---:|---:|---:|---:|---:|---:|---:|
| QoS0 100 B, ack = "none" | $RATE_QOS0/s × ${DURATION}s | $sent0 | $bridged0 | $d1 | $((bridged0 / DURATION)) | $cpus0 | $(python3 -c "print(round($cpus0*1e6/max($bridged0,1),2))") |
| QoS1 100 B, ack = "kafka" | $RATE_QOS1/s × ${DURATION}s | $acked1 PUBACKed | $bridged1 | – | $((bridged1 / DURATION)) | $cpus1 | $(python3 -c "print(round($cpus1*1e6/max($bridged1,1),2))") |

QoS1 ack = "kafka" end to end (publish → PUBACK, which waits for Kafka), Paho client at ${RATE_LATENCY:-1000} msgs/s, ${COUNT_LATENCY:-5000} messages: acked $(latcol acked), p50 $(latcol p50_ms) ms, p90 $(latcol p90_ms) ms, p99 $(latcol p99_ms) ms, max $(latcol max_ms) ms.
MD
)
echo "$table"
if [[ $WRITE_DOCS == 1 ]]; then
    {
        printf '\n## %s — `bench/bridge.sh` (Kafka bridge into tansu)\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
        printf -- '- ringmq 1 shard on core 0 with the bridge thread unpinned; loadgen (100 publishers, 1 thread) on core 1; %s in memory on the same host, unpinned (it shares the cores: figures are lower bounds). CPU-s cover the broker process (shard and bridge thread) until Kafka acknowledged the last record.\n' "$("$HOME/.cargo/bin/tansu" --version 2>/dev/null || echo tansu)"
        printf -- '- Host load at start: %s. Commit %s.\n\n' "$(cut -d' ' -f1-3 /proc/loadavg)" "$(git -C "$ROOT" rev-parse --short HEAD)"
        echo "$table"
    } >> "$ROOT/docs/benchmarks.md"
fi
