#!/usr/bin/env bash
# Kernel-floor measurement: each receiver variant at each rate, receiver pinned to CPU 0 and the
# driver to CPU 1, one markdown table at the end. See README.md.
#
# Environment (all optional):
#   MODES="epoll uring uring-eventfd"  variants (also: epoll-short; append -coop to a uring mode,
#                                       e.g. uring-coop, for COOP_TASKRUN instead of DEFER_TASKRUN)
#   RATES="20000 50000"                messages per second over all publishers
#   SECS=15 WARMUP=3                   measured window and warm-up, seconds
#   REPEAT=2                           rounds; each round runs every mode once (alternating)
#   PUBLISHERS=5000 SINKS=4
#   PERF=stat|record                   also run perf on the receiver during the window
#   OUT=/tmp/floor-run.XXXX            where the raw RESULT lines and logs go
#   PRIO=-10                           nice value for receiver and driver (root only; the machine is
#                                       shared and other builds run at nice 10, so a raised priority
#                                       keeps their load from setting the figures); PRIO=0 to disable;
#                                       PRIO=rt runs both SCHED_FIFO 10 (chrt), which removes the
#                                       wake-up delays of a loaded machine; both processes sleep when
#                                       idle and the kernel's RT throttling caps them at 95 % anyway
set -euo pipefail
cd "$(dirname "$0")"

MODES=${MODES:-"epoll uring uring-eventfd"}
RATES=${RATES:-"20000 50000"}
SECS=${SECS:-15}
WARMUP=${WARMUP:-3}
REPEAT=${REPEAT:-2}
PUBLISHERS=${PUBLISHERS:-5000}
SINKS=${SINKS:-4}
PERF=${PERF:-}
PRIO=${PRIO:--10}
[[ $(id -u) == 0 ]] || PRIO=0
if [[ $PRIO == rt ]]; then
    PRIORITY=(chrt -f 10)
else
    PRIORITY=(nice -n "$PRIO")
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/target-floor}

# 5,004 sockets plus a few fds per process; the machine's cap is 20,000.
ulimit -n 20000

nice -n 10 cargo build --release --locked --quiet
BIN=$CARGO_TARGET_DIR/release/floor
OUT=${OUT:-$(mktemp -d /tmp/floor-run.XXXXXX)}
mkdir -p "$OUT"

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

field() { grep -o " $2=[^ ]*" "$1" | head -1 | cut -d= -f2; }

"$BIN" probe-eventfd > "$OUT/probe-eventfd.txt"

ROWS=()
# Below the ephemeral range (32768+), so no earlier run's client socket can hold a listen port.
port=${PORT_BASE:-23100}
for round in $(seq 1 "$REPEAT"); do
    for rate in $RATES; do
        for mode in $MODES; do
            tag="$mode-$rate-r$round"
            port=$((port + 2))
            recv_args=(--mode "${mode%-coop}")
            [[ $mode == *-coop ]] && recv_args+=(--coop)
            load_before=$(cut -d' ' -f1-3 /proc/loadavg)
            "${PRIORITY[@]}" taskset -c 0 "$BIN" recv "${recv_args[@]}" \
                --pub-addr "127.0.0.1:$port" --sink-addr "127.0.0.1:$((port + 1))" \
                --publishers "$PUBLISHERS" --sinks "$SINKS" \
                --warmup-s "$WARMUP" --measure-s "$SECS" --deadline-s $((WARMUP + SECS + 60)) \
                > "$OUT/recv-$tag.out" 2> "$OUT/recv-$tag.err" &
            recv_pid=$!
            PIDS+=("$recv_pid")
            perf_pid=
            if [[ -n $PERF ]]; then
                # Starts with the driver's connects, so the sleep covers the connect time too;
                # the window it sees is warm-up + connects + SECS, close enough for shares.
                if [[ $PERF == record ]]; then
                    perf record -q -g -p "$recv_pid" -o "$OUT/perf-$tag.data" -- sleep $((WARMUP + SECS)) \
                        > /dev/null 2> "$OUT/perf-$tag.err" &
                else
                    perf stat -e task-clock,context-switches,cpu-migrations,page-faults \
                        -p "$recv_pid" -- sleep $((WARMUP + SECS)) 2> "$OUT/perf-$tag.txt" &
                fi
                perf_pid=$!
                PIDS+=("$perf_pid")
            fi
            "${PRIORITY[@]}" taskset -c 1 "$BIN" drive --rate "$rate" \
                --pub-addr "127.0.0.1:$port" --sink-addr "127.0.0.1:$((port + 1))" \
                --publishers "$PUBLISHERS" --sinks "$SINKS" \
                --warmup-s "$WARMUP" --measure-s "$SECS" \
                > "$OUT/drive-$tag.out" 2> "$OUT/drive-$tag.err" || echo "driver failed: $tag" >&2
            wait "$recv_pid" || true
            [[ -n $perf_pid ]] && { wait "$perf_pid" || true; }
            load_after=$(cut -d' ' -f1-3 /proc/loadavg)
            r="$OUT/recv-$tag.out"
            d="$OUT/drive-$tag.out"
            if [[ ! -s $r || ! -s $d ]]; then
                ROWS+=("| $mode | $rate | $round | run failed, see $OUT/*-$tag.* | | | | | | | | |")
                continue
            fi
            ROWS+=("| $mode | $rate | $round | $(field "$r" msgs_per_s) | $(field "$r" msgs) | $(field "$r" cpu_s_per_million) | $(field "$r" cpu_share) | $(field "$r" msgs_per_turn) | $(field "$r" syscalls_per_msg) | $(field "$d" p50_us) | $(field "$d" p99_us) | $(field "$d" max_us) | $(field "$d" lost) | $(field "$d" driver_cpu_s_per_million) | $load_before → $load_after |")
            echo "done: $tag cpu_s_per_million=$(field "$r" cpu_s_per_million) p99_us=$(field "$d" p99_us)" >&2
        done
    done
done

echo
echo "Receiver CPU per million messages (RUSAGE_SELF user+sys over a ${SECS}s window after ${WARMUP}s warm-up)."
echo "$PUBLISHERS publishers, $SINKS sinks, 100-byte records, receiver and driver at priority ${PRIORITY[*]}; raw output in $OUT."
echo
echo "| mode | rate msg/s | round | achieved msg/s | msgs in window | recv CPU-s / M msgs | recv CPU share | msgs / turn | syscalls / msg | p50 µs | p99 µs | max µs | lost | driver CPU-s / M msgs | loadavg before → after |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
echo
echo "probe-eventfd:"
cat "$OUT/probe-eventfd.txt"
