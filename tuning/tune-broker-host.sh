#!/usr/bin/env bash
# Proposes (and optionally applies) kernel settings for a ringmq broker host
# that must hold --connections concurrent MQTT connections (default 1,000,000).
# Default is a dry run. The reasoning for every value is in tuning/README.md.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib.sh"

# Broker shards lock this much io memory each (glommio io_memory); only used
# for the memlock advice row. Keep in step with the broker's default config.
readonly IO_MEMORY_PER_SHARD_MIB=2
# glommio registers each shard's io memory with its main, poll and latency rings,
# and the kernel charges every registration against RLIMIT_MEMLOCK.
readonly IO_MEMORY_REGISTRATIONS_PER_SHARD=3
# Kernel bytes per idle established TCP socket on x86-64 Linux 6.x, from
# /proc/slabinfo object sizes: TCP 2368 + sock_inode_cache 832 + filp 192 +
# dentry 192 + one pending io_uring request (io_kiocb) 256.
readonly KERNEL_BYTES_PER_IDLE_SOCKET=3840
readonly CONNTRACK_BYTES_PER_ENTRY=256

tune_parse_args "Tunes a ringmq broker host for many concurrent, mostly idle MQTT connections." "$@"
n=$TUNE_CONNECTIONS

tune_propose_file_limits "$n"

tune_propose at-least net.core.somaxconn "$(tune_clamp "$(tune_pow2_at_least $((n / 16)))" 4096 65535)" \
    "caps every listen() backlog; the broker's requested backlog is silently cut to this"
tune_propose at-least net.ipv4.tcp_max_syn_backlog "$(tune_clamp "$(tune_pow2_at_least $((n / 8)))" 8192 262144)" \
    "half-open handshakes per listener while a fleet reconnects after a broker restart"
tune_propose exact net.ipv4.tcp_syncookies 1 \
    "when the SYN queue is full, answer with cookies instead of dropping"

tune_propose exact net.ipv4.tcp_rmem "4096 16384 1048576" \
    "idle sockets hold no buffer; a 16 KiB initial window bounds what a burst can queue per socket"
tune_propose exact net.ipv4.tcp_wmem "4096 16384 4194304" \
    "16 KiB initial send buffer; autotuning up to 4 MiB for the few fan-out subscribers"
tune_propose exact net.core.rmem_default 65536 \
    "non-TCP sockets only (gossip UDP); TCP uses tcp_rmem[1]"
tune_propose exact net.core.wmem_default 65536 \
    "non-TCP sockets only (gossip UDP); TCP uses tcp_wmem[1]"

tune_propose_tcp_common "$n"
tune_propose_conntrack "$n"

shards=$(nproc)
memlock_min_mib=$((shards * IO_MEMORY_REGISTRATIONS_PER_SHARD * IO_MEMORY_PER_SHARD_MIB))
tune_advise limit.memlock "$(ulimit -l) KiB" "unlimited" \
    "LimitMEMLOCK=infinity; at least ${memlock_min_mib} MiB = ${shards} shards x ${IO_MEMORY_REGISTRATIONS_PER_SHARD} rings x ${IO_MEMORY_PER_SHARD_MIB} MiB io memory"

tune_print_table "ringmq broker host tuning"

socket_mib=$((n * KERNEL_BYTES_PER_IDLE_SOCKET / 1048576))
conntrack_mib=$((n * CONNTRACK_BYTES_PER_ENTRY / 1048576))
echo
echo "kernel memory for $(tune_group "$n") idle connections: about $(tune_group "$socket_mib") MiB of socket structures" \
    "(${KERNEL_BYTES_PER_IDLE_SOCKET} B each) + $(tune_group "$conntrack_mib") MiB conntrack if loaded, before any queued data."
echo "broker user space target: at most 1 KiB per idle connection, i.e. $(tune_group $((n / 1024))) MiB."

tune_finish
