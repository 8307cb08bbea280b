#!/usr/bin/env bash
# Self-test of the tuning scripts. Never changes the host: it runs the dry run,
# --write-sysctl-d into a temp dir and --apply against a scratch copy of
# /proc/sys, then checks that every key it knows still has the value it had.
# Exit 0 = all checks passed.
set -euo pipefail

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT

failures=0
pass() { printf 'ok    %s\n' "$1"; }
fail() {
    printf 'FAIL  %s\n' "$1" >&2
    failures=$((failures + 1))
}
check() {
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

broker_keys=(
    fs.nr_open fs.file-max net.core.somaxconn net.ipv4.tcp_max_syn_backlog
    net.ipv4.tcp_syncookies net.ipv4.tcp_rmem net.ipv4.tcp_wmem net.core.rmem_default
    net.core.wmem_default net.ipv4.tcp_mem net.ipv4.tcp_max_tw_buckets
    net.ipv4.tcp_fin_timeout net.core.netdev_max_backlog
)
loadgen_keys=(
    fs.nr_open fs.file-max net.ipv4.ip_local_port_range net.ipv4.tcp_tw_reuse
    net.ipv4.tcp_rmem net.ipv4.tcp_wmem net.core.rmem_default net.core.wmem_default
    net.ipv4.tcp_mem net.ipv4.tcp_max_tw_buckets net.ipv4.tcp_fin_timeout
    net.core.netdev_max_backlog
)
conntrack_keys=(
    net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_buckets
    net.netfilter.nf_conntrack_tcp_timeout_established
    net.netfilter.nf_conntrack_tcp_timeout_time_wait
    net.netfilter.nf_conntrack_tcp_timeout_fin_wait
)
all_keys=("${broker_keys[@]}" "${loadgen_keys[@]}" "${conntrack_keys[@]}" net.ipv4.ip_local_port_range)

snapshot() {
    local key path
    for key in "${all_keys[@]}"; do
        path=/proc/sys/${key//.//}
        if [[ -r $path ]]; then
            printf '%s = %s\n' "$key" "$(tr -s '[:space:]' ' ' <"$path")"
        else
            printf '%s absent\n' "$key"
        fi
    done | sort -u
    printf 'nofile %s/%s memlock %s\n' "$(ulimit -Sn)" "$(ulimit -Hn)" "$(ulimit -l)"
}

has_row() { grep -Eq "^(change|ok|absent) +$2 " "$1"; }
has_all_rows() {
    local out=$1 key
    shift
    for key in "$@"; do
        has_row "$out" "$key" || {
            echo "missing row for $key in $out" >&2
            return 1
        }
    done
}
has_setting() { grep -Eq "^${2//./\\.} = [0-9]" "$1"; }
has_all_settings() {
    local file=$1 key
    shift
    for key in "$@"; do
        has_setting "$file" "$key" || {
            echo "missing setting for $key in $file" >&2
            return 1
        }
    done
}
# The proposed value of a single-field key in a table printed by a script.
proposed() { awk -v key="$2" '$2 == key { print $5 }' "$1"; }
proposed_is() { [[ $(proposed "$1" "$2") == "$3" ]]; }
proposed_at_least() { (($(proposed "$1" "$2") >= $3)); }
# Only comments, blank lines and "key = numbers" in a sysctl.d file.
lacks_other_lines() { ! grep -Ev '^(#.*|[a-z0-9_.-]+ = [0-9 ]+|)$' "$1"; }
lacks() { ! grep -Eq "$1" "$2"; }
conntrack_loaded() { [[ -e /proc/sys/net/netfilter/nf_conntrack_max ]]; }

snapshot >"$work/before"

# Dry runs.
"$here/tune-broker-host.sh" >"$work/broker.out"
"$here/tune-loadgen-host.sh" >"$work/loadgen.out"
check "broker dry run lists its keys" has_all_rows "$work/broker.out" "${broker_keys[@]}" "${conntrack_keys[@]}"
check "loadgen dry run lists its keys" has_all_rows "$work/loadgen.out" "${loadgen_keys[@]}" "${conntrack_keys[@]}"
check "broker dry run says it changes nothing" grep -q "dry run: nothing is changed" "$work/broker.out"
check "broker dry run advises nofile and memlock" grep -Eq "^advice +limit.memlock .*unlimited" "$work/broker.out"
check "loadgen dry run says how many source IPs" grep -Eq "^advice +addressing .*→ 16 source IPs" "$work/loadgen.out"
check "rows use the key current → proposed (why) layout" \
    grep -Eq "^(change|ok) +net.ipv4.tcp_fin_timeout +[0-9]+ +→ 15 +\(" "$work/broker.out"

# An explicit --dry-run is the default, said out loud: same output, nothing changed.
"$here/tune-broker-host.sh" --dry-run >"$work/broker-explicit.out"
"$here/tune-loadgen-host.sh" --dry-run --connections 1_000_000 >"$work/loadgen-explicit.out"
check "broker --dry-run prints what the default dry run prints" \
    diff -u "$work/broker.out" "$work/broker-explicit.out"
check "loadgen --dry-run prints what the default dry run prints" \
    diff -u "$work/loadgen.out" "$work/loadgen-explicit.out"
check "--help documents --dry-run" grep -q -- "--dry-run" <("$here/tune-broker-host.sh" --help)

# Scaling with --connections.
"$here/tune-broker-host.sh" --connections 3_000_000 >"$work/broker3m.out"
check "--connections 3_000_000 scales nr_open to 4194304" \
    proposed_is "$work/broker3m.out" fs.nr_open 4194304
check "--connections 3_000_000 proposes tcp_max_tw_buckets >= 3000000" \
    proposed_at_least "$work/broker3m.out" net.ipv4.tcp_max_tw_buckets 3000000
check "--connections 3_000_000 asks for 4194304 open files" grep -q "LimitNOFILE=4194304" "$work/broker3m.out"

# Bad arguments are refused with exit status 2.
bad_args() {
    local rc=0
    "$here/tune-broker-host.sh" "$@" >/dev/null 2>&1 || rc=$?
    [[ $rc -eq 2 ]]
}
check "unknown option is refused" bad_args --frobnicate
check "non-numeric --connections is refused" bad_args --connections many
check "--apply with --write-sysctl-d is refused" bad_args --apply --write-sysctl-d "$work/x.conf"
check "--dry-run with --apply is refused" bad_args --dry-run --apply
check "--write-sysctl-d with --dry-run is refused" bad_args --write-sysctl-d "$work/x.conf" --dry-run

# --write-sysctl-d writes a loadable file and applies nothing.
"$here/tune-broker-host.sh" --write-sysctl-d "$work/60-ringmq-broker.conf" >"$work/broker-write.out"
"$here/tune-loadgen-host.sh" --write-sysctl-d "$work/60-ringmq-loadgen.conf" >"$work/loadgen-write.out"
check "broker sysctl.d file has its keys" has_all_settings "$work/60-ringmq-broker.conf" "${broker_keys[@]}"
check "loadgen sysctl.d file has its keys" has_all_settings "$work/60-ringmq-loadgen.conf" "${loadgen_keys[@]}"
if conntrack_loaded; then
    check "conntrack keys are written when the module is loaded" \
        has_all_settings "$work/60-ringmq-broker.conf" "${conntrack_keys[@]}"
else
    check "conntrack keys are commented out when the module is absent" \
        grep -q "^# -net.netfilter.nf_conntrack_max = " "$work/60-ringmq-broker.conf"
fi
check "broker sysctl.d file has no stray lines" \
    lacks_other_lines "$work/60-ringmq-broker.conf"

# --apply against a scratch /proc/sys without conntrack: absent keys are
# reported, not errors; changed keys land in the scratch tree.
fake=$work/proc-sys
for key in "${all_keys[@]}"; do
    [[ $key == net.netfilter.* ]] && continue
    src=/proc/sys/${key//.//}
    dst=$fake/${key//.//}
    mkdir -p -- "$(dirname -- "$dst")"
    if [[ -r $src ]]; then cat -- "$src" >"$dst"; else echo 0 >"$dst"; fi
done
echo 60 >"$fake/net/ipv4/tcp_fin_timeout"
TUNE_SYSCTL_ROOT=$fake "$here/tune-broker-host.sh" --apply >"$work/broker-apply.out"
check "absent conntrack is reported as absent" \
    grep -Eq "^absent +net.netfilter.nf_conntrack_max +absent" "$work/broker-apply.out"
check "--apply wrote tcp_fin_timeout into the scratch tree" grep -qx 15 "$fake/net/ipv4/tcp_fin_timeout"
check "--apply wrote tcp_rmem into the scratch tree" grep -qx "4096 16384 1048576" "$fake/net/ipv4/tcp_rmem"
TUNE_SYSCTL_ROOT=$fake "$here/tune-broker-host.sh" >"$work/broker-reapply.out"
check "after --apply the scratch tree needs no changes" \
    lacks "^change " "$work/broker-reapply.out"

if command -v shellcheck >/dev/null; then
    check "shellcheck is clean" shellcheck -x "$here/lib.sh" "$here/tune-broker-host.sh" \
        "$here/tune-loadgen-host.sh" "$here/test.sh"
else
    echo "skip  shellcheck (not installed)"
fi

json_ok() { python3 -m json.tool "$1" >/dev/null; }
check "grafana dashboard is valid JSON" json_ok "$here/grafana-dashboard.json"
metrics=(
    ringmq_connections ringmq_connections_accepted_total ringmq_connections_closed_total
    ringmq_messages_received_total ringmq_messages_sent_total ringmq_messages_dropped_total
    ringmq_bytes_received_total ringmq_bytes_sent_total ringmq_subscriptions
    ringmq_retained_messages ringmq_sessions ringmq_session_queue_messages
    ringmq_cross_shard_sent_total ringmq_cross_shard_queue_depth ringmq_shard_busy_ratio
    ringmq_bridge_kafka_produced_total ringmq_bridge_kafka_acknowledged_total
    ringmq_bridge_kafka_failed_total ringmq_bridge_kafka_dropped_total ringmq_bridge_kafka_buffered
)
shows_all_metrics() {
    local metric
    for metric in "${metrics[@]}"; do
        grep -q "${metric}{" "$here/grafana-dashboard.json" || {
            echo "dashboard does not show $metric" >&2
            return 1
        }
    done
}
check "grafana dashboard shows every ringmq metric" shows_all_metrics
check "grafana dashboard uses the DS_PROMETHEUS datasource variable" \
    grep -qF "\"uid\": \"\${DS_PROMETHEUS}\"" "$here/grafana-dashboard.json"

snapshot >"$work/after"
check "no host setting changed" diff -u "$work/before" "$work/after"

if ((failures > 0)); then
    echo "$failures check(s) failed" >&2
    exit 1
fi
echo "all tuning checks passed"
