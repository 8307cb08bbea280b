#!/usr/bin/env bash
# fanin-shared, shortened to 8 s, with the broker's syscalls, context switches and CPU counted by
# `perf stat` over 4 s of steady publishing (issue 8: where a wake-up's cost goes). Broker on core
# 0, loadgen on core 1. Usage: bench/fanin-syscalls.sh <ringmq binary | mosquitto> <label>
# (RINGMQ_LOADGEN overrides the loadgen binary). Prints syscalls, context switches, task clock,
# then the loadgen's latency and CPU-s per million.
set -u
BIN=$1; LABEL=$2
LG=${RINGMQ_LOADGEN:-$(dirname "$0")/../target/release/ringmq-loadgen}
SC=/tmp/fanin-short-$$.toml
sed 's/duration_s = 20.0/duration_s = 8.0/; s/drain_ms = 5000/drain_ms = 2000/' \
  "$(dirname "$0")/../loadgen/scenarios/fanin-shared.toml" > "$SC"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
if [[ $BIN == mosquitto ]]; then
  printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_connections -1\npersistence false\n' "$PORT" > /tmp/mosq-sc-$$.conf
  taskset -c 0 mosquitto -c /tmp/mosq-sc-$$.conf > /dev/null 2>&1 &
else
  taskset -c 0 "$BIN" --listen 127.0.0.1:$PORT --shards 1 --metrics-listen "" > /dev/null 2>&1 &
fi
PID=$!
sleep 1
taskset -c 1 "$LG" --threads 1 --host 127.0.0.1 --port "$PORT" --broker-pid "$PID" \
  --json /tmp/sc-$LABEL.json scenario "$SC" > /dev/null 2>&1 &
LGPID=$!
sleep 4
perf stat -e raw_syscalls:sys_enter,context-switches,task-clock -p $PID -- sleep 4 2>&1 \
  | grep -E "sys_enter|context|task-clock" | awk -v l="$LABEL" '{print l, $1, $2}'
wait $LGPID
kill $PID; wait $PID 2>/dev/null
rm -f "$SC" /tmp/mosq-sc-$$.conf
python3 - "$LABEL" <<'PY'
import json, sys
label = sys.argv[1]
d = json.load(open(f"/tmp/sc-{label}.json"))
m, b = d["messages"], d["broker_process"]
print(label, "received", m["received"], "lost", m["lost"], "p50_ms", m["latency_ms"]["p50"],
      "p99_ms", m["latency_ms"]["p99"], "cpu_s", b["cpu_s_publishing"],
      "cpu_s_per_million", round(b["cpu_s_publishing"] / m["received"] * 1e6, 2),
      "publishes_per_read", round(m["publishes_per_read"]["mean"], 2),
      "loadgen_wait_pct", round(d["loadgen"]["cpu_wait_max_percent"]))
PY
