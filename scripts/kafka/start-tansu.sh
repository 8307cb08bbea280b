#!/usr/bin/env bash
# Installs tansu (a Kafka-protocol broker) if missing and starts it in memory on a loopback port.
# Usage: scripts/kafka/start-tansu.sh [PORT]   (default 9092)
# Prints the broker pid on stdout; stop it with `kill PID`. Logs go to ${TANSU_LOG:-/tmp/tansu-PORT.log}.
set -euo pipefail

port="${1:-9092}"
root="${TANSU_ROOT:-$HOME/.cargo}"
bin="$root/bin/tansu"
log="${TANSU_LOG:-/tmp/tansu-$port.log}"

if [[ ! -x "$bin" ]]; then
    echo "installing tansu into $root (takes about 11 minutes)" >&2
    nice -n 19 cargo install tansu --locked --features dynostore --root "$root" >&2
fi

"$bin" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "memory://tansu/" \
    >"$log" 2>&1 &
pid=$!

# Ready when the port accepts connections.
for _ in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "tansu exited; see $log" >&2
        exit 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "$pid"
        exit 0
    fi
    sleep 0.1
done
echo "tansu did not open port $port within 10 s; see $log" >&2
kill "$pid" 2>/dev/null || true
exit 1
