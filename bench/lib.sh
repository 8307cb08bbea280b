# Shell functions the bench scripts share: ports, stopping a broker, CPU ticks and the Mosquitto
# configuration every side-by-side run uses. Sourced, not run:
#   source "$ROOT/bench/lib.sh"
# Nothing here reads the calling script's variables except where a function says so.

# A TCP port free on 127.0.0.1 now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_port PORT: returns once something accepts on 127.0.0.1:PORT, fails after 10 s.
wait_port() {
    local port=$1
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing listens on $port" >&2
    return 1
}

# stop_pid PID: SIGTERM, up to 10 s for a graceful shutdown, then SIGKILL; reaps it.
stop_pid() {
    local pid=$1
    [[ -n "$pid" ]] || return 0
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# cpu_ticks PID: utime+stime of a process, in clock ticks (getconf CLK_TCK per second).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# The Mosquitto settings of every plain side-by-side run, for the reports.
MOSQUITTO_SETTINGS="listener PORT 127.0.0.1; allow_anonymous true; allow_duplicate_messages true; max_connections -1; persistence false; other settings default (max_queued_messages 1000, max_inflight_messages 20, no max_queued_bytes)"

# mosquitto_conf FILE PORT: writes the configuration MOSQUITTO_SETTINGS describes. Mosquitto
# drops root privileges, so it logs to stderr (redirect it) rather than into a work dir.
mosquitto_conf() {
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nallow_duplicate_messages true\nmax_connections -1\npersistence false\nlog_dest stderr\n' \
        "$2" > "$1"
}
