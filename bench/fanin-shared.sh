#!/usr/bin/env bash
# fanin-shared side by side (issue 8 "measure first" scenario: 5,000 publishers, 20k msgs/s, one
# message per write, shared group of 4): broker on core 0, loadgen on core 1. Prints the
# loadgen progress; the JSON reports go to /tmp/fanin-{mosquitto,ringmq}.json.
set -u
LG=${LOADGEN:-$(dirname "$0")/../target/release/ringmq-loadgen}
RM=${RINGMQ:-$(dirname "$0")/../target/release/ringmq}
SC=$(dirname "$0")/../loadgen/scenarios/fanin-shared.toml
for broker in mosquitto ringmq; do
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  if [[ $broker == mosquitto ]]; then
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nallow_duplicate_messages true\nmax_connections -1\npersistence false\n' "$PORT" > /tmp/mosq-fanin.conf
    taskset -c 0 mosquitto -c /tmp/mosq-fanin.conf > /tmp/mosq-fanin.log 2>&1 &
  else
    taskset -c 0 "$RM" --listen 127.0.0.1:$PORT --shards 1 --metrics-listen "" > /tmp/ringmq-fanin.log 2>&1 &
  fi
  PID=$!
  sleep 1
  echo "== $broker (loadavg $(cut -d' ' -f1-3 /proc/loadavg))"
  taskset -c 1 "$LG" --threads 1 --host 127.0.0.1 --port "$PORT" --broker-pid "$PID" --json /tmp/fanin-$broker.json scenario "$SC" 2>&1 | grep -iE "latency|cpu|lost|received|sent|per read" | head -20
  kill $PID; wait $PID 2>/dev/null
done
