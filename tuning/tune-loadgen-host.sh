#!/usr/bin/env bash
# Proposes (and optionally applies) kernel settings for a host that runs
# ringmq-loadgen opening --connections client connections (default 1,000,000).
# Default is a dry run. The reasoning for every value is in tuning/README.md.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

# Ephemeral ports per (source ip, destination ip, destination port) with the
# proposed ip_local_port_range "1024 65535".
readonly PORTS_PER_SOURCE=64512

tune_parse_args "Tunes a load-generator host that opens many client connections to a ringmq broker." "$@"
n=$TUNE_CONNECTIONS

tune_propose_file_limits "$n"

tune_propose exact net.ipv4.ip_local_port_range "1024 65535" \
    "64,512 ephemeral ports per (src ip, dst ip, dst port) instead of 28,232"
tune_propose exact net.ipv4.tcp_tw_reuse 1 \
    "connect() may reuse a TIME_WAIT port when the loadgen churns connections"

tune_propose exact net.ipv4.tcp_rmem "4096 16384 1048576" \
    "simulated vehicles receive little; 16 KiB initial window per socket"
tune_propose exact net.ipv4.tcp_wmem "4096 16384 1048576" \
    "simulated vehicles send small messages; 16 KiB initial send buffer per socket"
tune_propose exact net.core.rmem_default 65536 \
    "non-TCP sockets only; TCP uses tcp_rmem[1]"
tune_propose exact net.core.wmem_default 65536 \
    "non-TCP sockets only; TCP uses tcp_wmem[1]"

tune_propose_tcp_common "$n"
tune_propose_conntrack "$n"

sources=$(((n + PORTS_PER_SOURCE - 1) / PORTS_PER_SOURCE))
tune_advise addressing "1 source ip" "${sources} source IPs" \
    "ceil(connections / ${PORTS_PER_SOURCE}): give the loadgen ${sources} source IPs, or that many broker ip:port pairs"

tune_print_table "ringmq loadgen host tuning"

tune_finish
