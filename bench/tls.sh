#!/usr/bin/env bash
# TLS side by side (issue 10, "Benchmarks"): Mosquitto 2 (Debian, /usr/sbin/mosquitto) and ringmq
# with a TLS listener on the same ECDSA P-256 server certificate (made here with openssl), each
# also with a plain listener, driven by the same ringmq-loadgen in one run. Broker pinned to
# core BROKER_CPU (0), loadgen to LOADGEN_CPU (1) with one thread, like bench/run.sh; every
# measurement on a fresh broker process.
#
#   1. connection storm: loadgen/scenarios/conn-storm.toml (15,000 clients, all at once), over TLS
#      and plain, and over TLS with 2,000 handshakes in flight at most: time to the last CONNACK,
#      failures, broker CPU while connecting (ringmq's refusals from its metrics);
#   2. telemetry fan-in: loadgen/scenarios/telemetry-fanin.toml (15,000 connections, 4,500
#      publishing 100 B QoS 0, 4 subscribers in a $share group) at FANIN_RATE msgs/s for
#      FANIN_S s, plain (with and without a TLS listener configured) and TLS: broker CPU-s per
#      million messages (utime+stime from
#      /proc/PID/stat, publishing start to drain end, via the loadgen's --broker-pid);
#   3. idle memory: loadgen/scenarios/idle.toml scaled to IDLE_CLIENTS (5,000) clients with one
#      subscription each, plain and TLS: broker RSS delta per connection (VmRSS before the
#      first connection and when all are subscribed).
# The loadgen stays under the 20,000 open-file cap per process (15,000 sockets + its own).
#
# usage: bench/tls.sh [--no-docs] [--only mosquitto|ringmq]
# env: LOADGEN, RINGMQ (binaries; the header names the profile from RINGMQ's path, and the
#      revision from RINGMQ_REV, else the worktree's HEAD, marked -dirty with local changes), BROKER_CPU, LOADGEN_CPU, FANIN_RATE (5000),
#      FANIN_S (20), IDLE_CLIENTS (5000), PARTS ("storm fanin idle"), KEEP_WORK=1,
#      REPORT_ONLY=DIR
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/bench/lib.sh"
COMMAND="bench/tls.sh${*:+ $*}"
WRITE_DOCS=1
ONLY=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-docs) WRITE_DOCS=0 ;;
        --only) ONLY="$2"; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

LOADGEN=${LOADGEN:-$ROOT/target/release/ringmq-loadgen}
RINGMQ=${RINGMQ:-$ROOT/target/release/ringmq}
BROKER_CPU=${BROKER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
# 5,000 msgs/s keeps the one loadgen thread below saturation (about 50 us of its CPU per
# message sent plus received); 20 s gives 100,000 messages.
FANIN_RATE=${FANIN_RATE:-5000}
FANIN_S=${FANIN_S:-20}
IDLE_CLIENTS=${IDLE_CLIENTS:-5000}
SCENARIOS=$ROOT/loadgen/scenarios
# REPORT_ONLY=DIR: no runs, only the report of the JSON files a KEEP_WORK=1 run left in DIR.
if [[ -n "${REPORT_ONLY:-}" ]]; then WORK=$REPORT_ONLY; KEEP_WORK=1; else WORK=$(mktemp -d /tmp/ringmq-bench-tls.XXXXXX); fi
# Mosquitto drops root privileges: its user must reach the certificates.
chmod 755 "$WORK"
BROKER_PID=""
PLAIN_PORT=""
TLS_PORT=""

cleanup() {
    stop_broker
    if [[ ${KEEP_WORK:-0} != 1 ]]; then rm -rf "$WORK"; else echo "work dir kept: $WORK"; fi
}
trap cleanup EXIT

log() { echo "[bench-tls $(date +%H:%M:%S)] $*" >&2; }


make_certs() {
    local ossl=(openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    (
        cd "$WORK"
        "${ossl[@]}" -x509 -keyout ca.key -out ca.pem -days 2 -subj /CN=bench-ca 2>/dev/null
        "${ossl[@]}" -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -out server.pem -days 2 -extfile server.ext 2>/dev/null
        chmod 644 ca.pem server.pem server.key
    )
}

MOSQUITTO_SETTINGS="listener PLAIN 127.0.0.1; listener TLS 127.0.0.1 with certfile/keyfile (no client certificates); allow_anonymous true; max_connections -1; persistence false; other settings default"
RINGMQ_SETTINGS='--listen 127.0.0.1:PLAIN --shards 1 (pinned); [[listener]] kind = "tls" with cert_file/key_file (client_auth none); defaults otherwise (max_handshakes 10000)'
export MOSQUITTO_SETTINGS RINGMQ_SETTINGS

# PLAIN_ONLY=1: the broker gets its plain listener only (the fan-in control row).
PLAIN_ONLY=0

start_broker() {
    local broker=$1
    PLAIN_PORT=$(free_port)
    TLS_PORT=$(free_port)
    ulimit -n "$(ulimit -Hn)"
    case "$broker" in
        mosquitto)
            cat > "$WORK/mosquitto.conf" <<CONF
per_listener_settings false
allow_anonymous true
persistence false
log_dest stderr
listener $PLAIN_PORT 127.0.0.1
max_connections -1
CONF
            if [[ $PLAIN_ONLY == 0 ]]; then
                printf 'listener %s 127.0.0.1\nmax_connections -1\ncertfile %s\nkeyfile %s\n' \
                    "$TLS_PORT" "$WORK/server.pem" "$WORK/server.key" >> "$WORK/mosquitto.conf"
            fi
            taskset -c "$BROKER_CPU" mosquitto -c "$WORK/mosquitto.conf" 2>> "$WORK/mosquitto.log" &
            BROKER_PID=$!
            ;;
        ringmq)
            cat > "$WORK/ringmq.toml" <<CONF
[[listener]]
kind = "tls"
addr = "127.0.0.1:$TLS_PORT"
[listener.tls]
cert_file = "$WORK/server.pem"
key_file = "$WORK/server.key"
CONF
            METRICS_PORT=$(free_port)
            if [[ $PLAIN_ONLY == 1 ]]; then : > "$WORK/ringmq.toml"; fi
            taskset -c "$BROKER_CPU" "$RINGMQ" --config "$WORK/ringmq.toml" \
                --listen "127.0.0.1:$PLAIN_PORT" --shards 1 --metrics-listen "127.0.0.1:$METRICS_PORT" \
                > "$WORK/ringmq.log" 2>&1 &
            BROKER_PID=$!
            ;;
    esac
    wait_port "$PLAIN_PORT"
    if [[ $PLAIN_ONLY == 0 ]]; then wait_port "$TLS_PORT"; fi
}

stop_broker() {
    stop_pid "$BROKER_PID"
    BROKER_PID=""
}

# run_one BROKER NAME tls|tcp LOADGEN-ARGS...: one loadgen run against a fresh broker.
run_one() {
    local broker=$1 name=$2 transport=$3
    shift 3
    local json=$WORK/$broker-$name.json
    start_broker "$broker"
    local port=$PLAIN_PORT
    local edge=()
    if [[ $transport == tls ]]; then
        port=$TLS_PORT
        edge=(--transport tls --cafile "$WORK/ca.pem")
    fi
    # The broker's own start-up is done before the first connection (RSS baseline).
    sleep 1
    log "$broker: $name"
    if ! taskset -c "$LOADGEN_CPU" "$LOADGEN" --threads 1 --host 127.0.0.1 --port "$port" \
        "${edge[@]}" --broker-pid "$BROKER_PID" --quiet --json "$json" "$@" \
        > "${json%.json}.txt" 2>&1; then
        log "loadgen failed for $json (see ${json%.json}.txt)"
        tail -5 "${json%.json}.txt" >&2 || true
    fi
    # ringmq says why it refused connections (overload protection, TLS handshake failures).
    if [[ $broker == ringmq ]]; then
        curl -s --max-time 2 "http://127.0.0.1:$METRICS_PORT/metrics" > "${json%.json}.prom" || true
    fi
    stop_broker
}

# PARTS selects measurements (default all three): e.g. PARTS=fanin to repeat the fan-in only.
PARTS=${PARTS:-storm fanin idle}
export PARTS
part() { [[ " $PARTS " == *" $1 "* ]]; }

bench_broker() {
    local broker=$1
    local scale
    scale=$(python3 -c "print($FANIN_RATE/5000)")
    local idle_scale
    idle_scale=$(python3 -c "print($IDLE_CLIENTS/15000)")
    if part storm; then
        run_one "$broker" storm-tls tls scenario "$SCENARIOS/conn-storm.toml"
        run_one "$broker" storm-tls-c2000 tls --conn-concurrency 2000 scenario "$SCENARIOS/conn-storm.toml"
        run_one "$broker" storm-plain tcp scenario "$SCENARIOS/conn-storm.toml"
    fi
    if part fanin; then
        PLAIN_ONLY=1
        run_one "$broker" fanin-plain-only tcp --duration "$FANIN_S" \
            scenario "$SCENARIOS/telemetry-fanin.toml" --rate-scale "$scale"
        PLAIN_ONLY=0
        run_one "$broker" fanin-plain tcp --duration "$FANIN_S" \
            scenario "$SCENARIOS/telemetry-fanin.toml" --rate-scale "$scale"
        run_one "$broker" fanin-tls tls --duration "$FANIN_S" \
            scenario "$SCENARIOS/telemetry-fanin.toml" --rate-scale "$scale"
    fi
    if part idle; then
        run_one "$broker" idle-plain tcp scenario "$SCENARIOS/idle.toml" --count-scale "$idle_scale"
        run_one "$broker" idle-tls tls scenario "$SCENARIOS/idle.toml" --count-scale "$idle_scale"
    fi
}

[[ -x "$LOADGEN" ]] || { echo "missing $LOADGEN: cargo build --release -p ringmq-loadgen" >&2; exit 1; }
command -v mosquitto >/dev/null || { echo "mosquitto is not installed" >&2; exit 1; }
if [[ $(nproc) -lt 2 ]]; then LOADGEN_CPU=$BROKER_CPU; log "one CPU only: broker and loadgen share it"; fi
[[ -n "${REPORT_ONLY:-}" ]] || make_certs

case "$RINGMQ" in
    */release/*) BUILD="release build" ;;
    */debug/*) BUILD="debug (dev profile) build" ;;
    *) BUILD="build $RINGMQ (profile not known)" ;;
esac
if [[ -z "${RINGMQ_REV:-}" ]]; then
    RINGMQ_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then RINGMQ_REV="$RINGMQ_REV-dirty"; fi
fi
START=$(date -u '+%Y-%m-%d %H:%M UTC')
LOAD_BEFORE="loadavg $(cut -d' ' -f1-3 /proc/loadavg); busiest: $(ps -eo pcpu,comm --sort=-pcpu | sed -n '2,4p' | awk '{printf "%s %s%%, ", $2, $1}' | sed 's/, $//')"
SECONDS=0
if [[ -n "${REPORT_ONLY:-}" ]]; then ONLY=none; fi
if [[ -z "$ONLY" || "$ONLY" == mosquitto ]]; then bench_broker mosquitto; fi
if [[ -z "$ONLY" || "$ONLY" == ringmq ]]; then
    [[ -x "$RINGMQ" ]] || { echo "missing $RINGMQ: cargo build --release -p ringmq-broker" >&2; exit 1; }
    bench_broker ringmq
fi
ELAPSED=$SECONDS
PARTS_NOTE=""
[[ "$PARTS" == "storm fanin idle" ]] || PARTS_NOTE="PARTS='$PARTS' "
LOAD_AFTER="loadavg $(cut -d' ' -f1-3 /proc/loadavg)"

TABLE=$(python3 - "$WORK" <<PY
import json, os, sys
work = sys.argv[1]
def load(broker, name):
    try:
        return json.load(open(os.path.join(work, f"{broker}-{name}.json")))
    except Exception:
        return None
brokers = ["mosquitto", "ringmq"]
def ratio(m, r):
    return f"{m / r:.2f}" if m and r else "-"
def fails(s):
    c = s["connections"]
    if not c["failed"]:
        return "0"
    return f'{c["failed"]} ' + ", ".join(f"{k} {v}" for k, v in sorted(c["failures"].items()))
def refusals(broker, name):
    try:
        text = open(os.path.join(work, f"{broker}-{name}.prom")).read()
    except Exception:
        return "-"
    found = {}
    for line in text.splitlines():
        for metric in ("ringmq_connections_refused_total", "ringmq_edge_handshake_failures_total"):
            if line.startswith(metric + "{"):
                labels, value = line.rsplit(" ", 1)
                if float(value) > 0:
                    reason = [p.split("=")[1].strip('"') for p in labels[len(metric) + 1:-1].split(",") if p.startswith("reason=")]
                    key = f'{metric.split("_")[1]}:{reason[0] if reason else "?"}'
                    found[key] = found.get(key, 0) + int(float(value))
    return ", ".join(f"{k} {v}" for k, v in sorted(found.items())) or "none"
def lg_note(s, connecting):
    lg = s["loadgen"]
    notes = []
    if connecting and lg.get("cpu_saturated_seconds_connecting"):
        notes.append(f'loadgen CPU-saturated {lg["cpu_saturated_seconds_connecting"]} s while connecting')
    if not connecting and lg.get("saturated"):
        notes.append("loadgen saturated")
    if lg.get("cpu_starved_seconds"):
        notes.append(f'loadgen starved {lg["cpu_starved_seconds"]} s')
    if not connecting and lg.get("backlog_growing_seconds"):
        notes.append(f'send backlog grew {lg["backlog_growing_seconds"]} s')
    return "; ".join(notes) or "-"
out = []
out.append(f"## $START — TLS side by side with Mosquitto (\`${PARTS_NOTE}$COMMAND\`)")
out.append("")
out.append("Command: \`${PARTS_NOTE}$COMMAND\` (took ${ELAPSED} s). Load before: $LOAD_BEFORE; after: $LOAD_AFTER.")
out.append("Revision $RINGMQ_REV; "
           "$(mosquitto -h 2>/dev/null | head -1 || true); ringmq $BUILD, one shard. "
           "Broker on CPU $BROKER_CPU, \`ringmq-loadgen --threads 1\` on CPU $LOADGEN_CPU; a fresh broker per row. "
           "TLS: the same ECDSA P-256 server certificate for both (openssl), TLS 1.3 (rustls client, "
           "full handshake per connection, no resumption), no client certificates.")
out.append("")
out.append("Mosquitto: " + os.environ["MOSQUITTO_SETTINGS"] + ".  ")
out.append("ringmq: " + os.environ["RINGMQ_SETTINGS"] + ".")
out.append("")
marks = [("storm", len(out))]
out.append("**1. Connection storm** (\`conn-storm.toml\`: 15,000 clients, concurrency 15,000, 4 source addresses)")
out.append("")
out.append("| broker | transport, handshakes in flight | connected | failed (loadgen's reason) | broker's refusals (ringmq metrics) | time to last CONNACK | connect p50 / p99 | broker CPU-s connecting | loadgen notes |")
out.append("|---|---|---|---|---|---|---|---|---|")
storm = {}
for b in brokers:
    for t, label in [("tls", "tls, 15,000"), ("tls-c2000", "tls, 2,000"), ("plain", "plain, 15,000")]:
        s = load(b, f"storm-{t}")
        if not s:
            out.append(f"| {b} | {label} | not run | | | | | | |"); continue
        c = s["connections"]; bp = s.get("broker_process") or {}
        ms = c.get("time_to_last_connack_ms")
        storm[(b, t)] = ms
        lat = c["connect_latency_ms"]
        out.append(f'| {b} | {label} | {c["connected"]} | {fails(s)} | {refusals(b, "storm-" + t) if b == "ringmq" else "-"} | {ms/1000 if ms else 0:.2f} s | {lat["p50"]:.0f} / {lat["p99"]:.0f} ms | {bp.get("cpu_s_connecting") or 0:.2f} | {lg_note(s, True)} |')
out.append("")
out.append(f'Ratios, time to last CONNACK: TLS Mosquitto ÷ ringmq = {ratio(storm.get(("mosquitto","tls")), storm.get(("ringmq","tls")))} (15,000 in flight), '
           f'{ratio(storm.get(("mosquitto","tls-c2000")), storm.get(("ringmq","tls-c2000")))} (2,000 in flight); '
           f'plain Mosquitto ÷ ringmq = {ratio(storm.get(("mosquitto","plain")), storm.get(("ringmq","plain")))}; '
           f'ringmq TLS ÷ plain = {ratio(storm.get(("ringmq","tls")), storm.get(("ringmq","plain")))}; '
           f'Mosquitto TLS ÷ plain = {ratio(storm.get(("mosquitto","tls")), storm.get(("mosquitto","plain")))}.')
out.append("")
marks.append(("fanin", len(out)))
out.append(f"**2. Telemetry fan-in** (\`telemetry-fanin.toml\`: 15,000 connections, 4,500 publishers of 100 B QoS 0 at $FANIN_RATE msgs/s in total for $FANIN_S s, 4 subscribers in \`\$share/ingest/...\`)")
out.append("")
out.append("| broker | transport | sent | received | lost | broker CPU-s publishing | broker CPU-s per million messages | latency p50 / p99 | loadgen CPU-s | loadgen notes |")
out.append("|---|---|---|---|---|---|---|---|---|---|")
cpu = {}
for b in brokers:
    for t, label in [("plain-only", "plain, no TLS listener configured"), ("plain", "plain"), ("tls", "tls")]:
        s = load(b, f"fanin-{t}")
        if not s:
            out.append(f"| {b} | {label} | not run | | | | | | | |"); continue
        m = s["messages"]; bp = s.get("broker_process") or {}
        sec = bp.get("cpu_s_publishing")
        per_m = sec / m["sent"] * 1e6 if sec and m["sent"] else None
        cpu[(b, t)] = per_m
        lat = m["latency_ms"]
        out.append(f'| {b} | {label} | {m["sent"]} | {m["received"]} | {m["lost"]} | {sec or 0:.2f} | {per_m or 0:.1f} | {lat["p50"]:.2f} / {lat["p99"]:.2f} ms | {s["loadgen"].get("cpu_s_publishing") or 0:.1f} | {lg_note(s, False)}{"; connect failures " + fails(s) if s["connections"]["failed"] else ""} |')
out.append("")
out.append(f'Ratios, CPU-s per million: TLS Mosquitto ÷ ringmq = {ratio(cpu.get(("mosquitto","tls")), cpu.get(("ringmq","tls")))}; '
           f'plain Mosquitto ÷ ringmq = {ratio(cpu.get(("mosquitto","plain")), cpu.get(("ringmq","plain")))} '
           f'({ratio(cpu.get(("mosquitto","plain-only")), cpu.get(("ringmq","plain-only")))} without a TLS listener); '
           f'ringmq TLS ÷ plain = {ratio(cpu.get(("ringmq","tls")), cpu.get(("ringmq","plain")))}; '
           f'Mosquitto TLS ÷ plain = {ratio(cpu.get(("mosquitto","tls")), cpu.get(("mosquitto","plain")))}.')
out.append("")
marks.append(("idle", len(out)))
out.append(f"**3. Idle memory** (\`idle.toml\` scaled to $IDLE_CLIENTS clients, one subscription each; VmRSS before the first connection and when all are subscribed)")
out.append("")
out.append("| broker | transport | connected | RSS before | RSS ready | RSS per connection |")
out.append("|---|---|---|---|---|---|")
mem = {}
for b in brokers:
    for t in ["plain", "tls"]:
        s = load(b, f"idle-{t}")
        if not s:
            out.append(f"| {b} | {t} | not run | | | |"); continue
        c = s["connections"]; bp = s.get("broker_process") or {}
        start, ready = bp.get("rss_kb_start"), bp.get("rss_kb_ready")
        per = (ready - start) * 1024 / c["connected"] if start and ready and c["connected"] else None
        mem[(b, t)] = per
        out.append(f'| {b} | {t} | {c["connected"]}{" (failed " + fails(s) + ")" if c["failed"] else ""} | {start or 0:,} KiB | {ready or 0:,} KiB | {per or 0:,.0f} B |')
out.append("")
out.append(f'Ratios, RSS per connection: TLS Mosquitto ÷ ringmq = {ratio(mem.get(("mosquitto","tls")), mem.get(("ringmq","tls")))}; '
           f'plain Mosquitto ÷ ringmq = {ratio(mem.get(("mosquitto","plain")), mem.get(("ringmq","plain")))}; '
           f'ringmq TLS ÷ plain = {ratio(mem.get(("ringmq","tls")), mem.get(("ringmq","plain")))}; '
           f'Mosquitto TLS ÷ plain = {ratio(mem.get(("mosquitto","tls")), mem.get(("mosquitto","plain")))}.')
parts = "$PARTS".split()
marks.append(("end", len(out)))
kept = out[:marks[0][1]]
for (name, start), (_, end) in zip(marks, marks[1:]):
    if name in parts:
        kept += out[start:end]
print("\n".join(kept))
PY
)
echo "$TABLE"
if [[ $WRITE_DOCS == 1 ]]; then
    printf '\n%s\n' "$TABLE" >> "$ROOT/docs/benchmarks.md"
    log "appended to docs/benchmarks.md"
fi
