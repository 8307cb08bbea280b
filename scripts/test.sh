#!/usr/bin/env bash
# Runs ringmq's whole test suite on a fresh Debian machine, installing what it needs first:
#   mosquitto + mosquitto-clients (independent MQTT clients, and the comparison broker),
#   openssl (test certificates), haproxy (a real PROXY protocol v2 sender), nodejs + npm
#   (MQTT.js over WebSocket; the test installs mqtt@5 into a temp dir), chromium (MQTT.js in a
#   headless browser page),
#   cmake (librdkafka's build), kafka-python and paho-mqtt (independent Kafka / MQTT clients),
#   tansu (a real Kafka-protocol broker; ~11 minutes to build the first time, then reused),
#   iproute2 (`ip netns` for the cluster partition tests, which need root and skip without it).
# Then: rustfmt and clippy (warnings are errors), unit, property, simulation and end-to-end tests
# for every crate, and the tuning scripts' self-test.
#
# Environment: RINGMQ_SKIP_INSTALL=1 skips the install steps (for a machine already set up).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
say() { printf '\n==> %s (+%ss)\n' "$*" "$(( $(date +%s) - started ))"; }

if [[ "${RINGMQ_SKIP_INSTALL:-0}" != 1 ]]; then
    say "system packages"
    need=()
    # make and gcc build jemalloc (the broker's allocator) and librdkafka.
    for pair in mosquitto:mosquitto mosquitto_sub:mosquitto-clients openssl:openssl haproxy:haproxy node:nodejs npm:npm chromium:chromium cmake:cmake curl:curl make:make gcc:gcc ip:iproute2; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
    done
    if ((${#need[@]})); then
        sudo_cmd=()
        [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
        "${sudo_cmd[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    say "python packages"
    python3 -c 'import kafka, paho.mqtt' 2>/dev/null || python3 -m pip install -q kafka-python paho-mqtt
    if ! command -v tansu >/dev/null 2>&1 && [[ ! -x "$HOME/.cargo/bin/tansu" ]]; then
        say "tansu (Kafka-protocol broker for the bridge tests; first time only)"
        cargo install tansu --locked --features dynostore --root "$HOME/.cargo" --quiet
    fi
fi

# A one-shot run gains nothing from incremental caches, and they are a large part of the disk a
# clean CI build uses.
[[ "${CI:-}" != true ]] || export CARGO_INCREMENTAL=0
say "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
say "build (broker binary first: the end-to-end tests run it)"
cargo build --workspace --bins
say "tests"
cargo test --workspace --no-fail-fast -- --test-threads=4
say "tuning scripts (dry runs change nothing)"
bash tuning/test.sh
say "done"
