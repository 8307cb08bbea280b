# shellcheck shell=bash
# Shared mechanics for tune-broker-host.sh and tune-loadgen-host.sh.
#
# The host scripts only decide *what* to propose (and why); this file owns how a
# proposal is compared with the running kernel, printed, applied or written to a
# sysctl.d file. Sourced, never executed. The caller has already set
# `set -euo pipefail`.
#
# Proposal kinds:
#   at-least  the kernel value is raised to the wanted value, never lowered
#             (multi-field values such as tcp_mem are compared field by field);
#   at-most   the kernel value is lowered to the wanted value, never raised;
#   exact     the kernel value is set to the wanted value.
# A key whose /proc/sys file does not exist (e.g. conntrack not loaded) is
# reported as "absent"; it is neither applied nor an error.

# Overridable so that test.sh can exercise --apply against a scratch tree
# instead of the real kernel. Anything other than /proc/sys is written with
# plain file writes instead of `sysctl -w`.
TUNE_SYSCTL_ROOT=${TUNE_SYSCTL_ROOT:-/proc/sys}

TUNE_MODE=dry-run           # dry-run | apply | write
TUNE_MODE_OPTION=""         # the option that chose TUNE_MODE; empty = the default
TUNE_SYSCTL_D_FILE=""
TUNE_CONNECTIONS=1000000

TUNE_KEYS=()
TUNE_CURRENT=()
TUNE_PROPOSED=()
TUNE_STATUS=()              # change | ok | absent | advice
TUNE_WHY=()

tune_die() {
    printf '%s: error: %s\n' "${0##*/}" "$1" >&2
    exit 2
}

tune_usage() {
    cat <<EOF
usage: ${0##*/} [--connections N] [--dry-run | --apply | --write-sysctl-d FILE]

$1

  --connections N         size the proposals for N concurrent MQTT connections
                          (default 1000000; underscores and commas allowed)
  --dry-run               print what would change and why, change nothing
                          (the default; accepted so scripts can say it)
  --apply                 apply the changed keys now with sysctl -w (needs root;
                          not persistent across reboots)
  --write-sysctl-d FILE   write every proposed key to FILE (e.g.
                          /etc/sysctl.d/60-ringmq.conf) instead of applying
  -h, --help              show this help

Without --apply or --write-sysctl-d (or with --dry-run) nothing is changed:
the script prints "key  current -> proposed  (why)" for every key it cares
about. The three modes are exclusive.
EOF
}

# Records the mode an option asks for; two different modes are a usage error.
tune_set_mode() {
    local mode=$1 option=$2
    if [[ -n $TUNE_MODE_OPTION && $TUNE_MODE != "$mode" ]]; then
        tune_die "$TUNE_MODE_OPTION and $option are exclusive"
    fi
    TUNE_MODE=$mode
    TUNE_MODE_OPTION=$option
}

tune_parse_args() {
    local description=$1
    shift
    while (($# > 0)); do
        case $1 in
            --connections)
                (($# >= 2)) || tune_die "--connections needs a value"
                TUNE_CONNECTIONS=${2//[_,]/}
                shift 2
                ;;
            --connections=*)
                TUNE_CONNECTIONS=${1#--connections=}
                TUNE_CONNECTIONS=${TUNE_CONNECTIONS//[_,]/}
                shift
                ;;
            --dry-run)
                tune_set_mode dry-run --dry-run
                shift
                ;;
            --apply)
                tune_set_mode apply --apply
                shift
                ;;
            --write-sysctl-d)
                (($# >= 2)) || tune_die "--write-sysctl-d needs a file name"
                [[ -z $TUNE_SYSCTL_D_FILE || $TUNE_SYSCTL_D_FILE == "$2" ]] ||
                    tune_die "--write-sysctl-d given twice with different files"
                tune_set_mode write --write-sysctl-d
                TUNE_SYSCTL_D_FILE=$2
                shift 2
                ;;
            -h | --help)
                tune_usage "$description"
                exit 0
                ;;
            *)
                tune_usage "$description" >&2
                exit 2
                ;;
        esac
    done
    [[ $TUNE_CONNECTIONS =~ ^[0-9]+$ ]] || tune_die "--connections must be a positive integer"
    # Leading zeros would make bash read the number as octal.
    TUNE_CONNECTIONS=$((10#$TUNE_CONNECTIONS))
    ((TUNE_CONNECTIONS > 0)) || tune_die "--connections must be a positive integer"
}

# 1234567 -> 1,234,567 (for humans; values written to the kernel stay plain).
tune_group() {
    local n=$1 out=""
    while ((${#n} > 3)); do
        out=",${n: -3}$out"
        n=${n:0:${#n}-3}
    done
    printf '%s%s' "$n" "$out"
}

tune_min() { if (($1 < $2)); then echo "$1"; else echo "$2"; fi; }
tune_max() { if (($1 > $2)); then echo "$1"; else echo "$2"; fi; }

# Smallest power of two >= $1.
tune_pow2_at_least() {
    local p=1
    while ((p < $1)); do p=$((p * 2)); done
    echo "$p"
}

tune_clamp() { tune_min "$(tune_max "$1" "$2")" "$3"; }

# File descriptors a process needs for N connections: one per socket, 10 %
# headroom for reconnect churn (a closing socket still holds its fd until the
# close completes) and a fixed reserve for listeners, rings, logs, metrics.
tune_fds_needed() { echo $(($1 + $1 / 10 + 65536)); }

# The per-process open-files target (LimitNOFILE): a round power of two.
tune_nofile_target() { tune_pow2_at_least "$(tune_fds_needed "$1")"; }

tune_mem_total_kib() {
    local kib
    kib=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo 2>/dev/null || true)
    echo "${kib:-0}"
}

# net.ipv4.tcp_mem (in pages) for N connections: 2 / 4 / 8 KiB of socket
# buffers per connection for low / pressure / high, capped at 25 / 37.5 / 50 %
# of RAM so that a buffer flood degrades into TCP back-pressure instead of the
# OOM killer.
tune_tcp_mem_pages() {
    local n=$1 page_kib mem_pages low pressure high
    page_kib=$(($(getconf PAGESIZE) / 1024))
    mem_pages=$(($(tune_mem_total_kib) / page_kib))
    low=$((n * 2 / page_kib))
    pressure=$((n * 4 / page_kib))
    high=$((n * 8 / page_kib))
    if ((mem_pages > 0)); then
        low=$(tune_min "$low" $((mem_pages / 4)))
        pressure=$(tune_min "$pressure" $((mem_pages * 3 / 8)))
        high=$(tune_min "$high" $((mem_pages / 2)))
    fi
    echo "$low $pressure $high"
}

tune_key_path() { echo "$TUNE_SYSCTL_ROOT/${1//.//}"; }

# Prints the current value of a sysctl key with runs of whitespace collapsed
# to one space; returns 1 if the key does not exist.
tune_read_key() {
    local path value
    path=$(tune_key_path "$1")
    [[ -r $path ]] || return 1
    value=$(<"$path") || return 1
    # shellcheck disable=SC2086 # word splitting is the point: normalise tabs.
    set -- $value
    echo "$*"
}

# Field-wise max or min of two equally long space-separated integer lists.
tune_fieldwise() {
    local op=$1 current=$2 wanted=$3 out=() i
    local -a c w
    read -r -a c <<<"$current"
    read -r -a w <<<"$wanted"
    if ((${#c[@]} != ${#w[@]})); then
        echo "$wanted"
        return
    fi
    for i in "${!c[@]}"; do
        if [[ $op == max ]]; then
            out+=("$(tune_max "${c[i]}" "${w[i]}")")
        else
            out+=("$(tune_min "${c[i]}" "${w[i]}")")
        fi
    done
    echo "${out[*]}"
}

# tune_propose KIND KEY WANTED WHY
tune_propose() {
    local kind=$1 key=$2 wanted=$3 why=$4 current proposed status
    if current=$(tune_read_key "$key"); then
        case $kind in
            at-least) proposed=$(tune_fieldwise max "$current" "$wanted") ;;
            at-most) proposed=$(tune_fieldwise min "$current" "$wanted") ;;
            exact) proposed=$wanted ;;
            *) tune_die "unknown proposal kind $kind for $key" ;;
        esac
        if [[ $proposed == "$current" ]]; then status=ok; else status=change; fi
    else
        current=absent
        proposed=$wanted
        status=absent
    fi
    TUNE_KEYS+=("$key")
    TUNE_CURRENT+=("$current")
    TUNE_PROPOSED+=("$proposed")
    TUNE_STATUS+=("$status")
    TUNE_WHY+=("$why")
}

# A row for something that is not a sysctl (rlimits, addressing): printed,
# never applied.
tune_advise() {
    TUNE_KEYS+=("$1")
    TUNE_CURRENT+=("$2")
    TUNE_PROPOSED+=("$3")
    TUNE_STATUS+=(advice)
    TUNE_WHY+=("$4")
}

tune_print_table() {
    local title=$1 i
    local mode_note
    case $TUNE_MODE in
        dry-run) mode_note="dry run: nothing is changed" ;;
        apply) mode_note="applying changed keys with sysctl -w" ;;
        write) mode_note="writing $TUNE_SYSCTL_D_FILE" ;;
    esac
    printf '%s for %s connections (%s)\n\n' "$title" "$(tune_group "$TUNE_CONNECTIONS")" "$mode_note"
    printf '%-7s %-55s %-22s   %-22s  %s\n' status key current proposed why
    for i in "${!TUNE_KEYS[@]}"; do
        printf '%-7s %-55s %-22s → %-22s  (%s)\n' "${TUNE_STATUS[i]}" "${TUNE_KEYS[i]}" \
            "${TUNE_CURRENT[i]}" "${TUNE_PROPOSED[i]}" "${TUNE_WHY[i]}"
    done
}

tune_apply() {
    local i key value failures=0 path
    if [[ $TUNE_SYSCTL_ROOT == /proc/sys && $EUID -ne 0 ]]; then
        tune_die "--apply needs root (try: sudo $0 --apply)"
    fi
    echo
    for i in "${!TUNE_KEYS[@]}"; do
        [[ ${TUNE_STATUS[i]} == change ]] || continue
        key=${TUNE_KEYS[i]}
        value=${TUNE_PROPOSED[i]}
        if [[ $TUNE_SYSCTL_ROOT == /proc/sys ]]; then
            if sysctl -q -w "$key=$value"; then
                echo "applied $key = $value"
            else
                echo "FAILED  $key = $value" >&2
                failures=$((failures + 1))
            fi
        else
            path=$(tune_key_path "$key")
            if printf '%s\n' "$value" >"$path"; then
                echo "applied $key = $value (to $TUNE_SYSCTL_ROOT)"
            else
                failures=$((failures + 1))
            fi
        fi
    done
    echo "sysctl changes are lost at reboot; use --write-sysctl-d /etc/sysctl.d/60-ringmq.conf to persist them."
    echo "advice rows (limit.*, addressing) are not applied: see tuning/README.md."
    if ((failures > 0)); then
        echo "${failures} key(s) could not be applied" >&2
        return 1
    fi
}

tune_write_sysctl_d() {
    local file=$TUNE_SYSCTL_D_FILE tmp i
    local dir
    dir=$(dirname -- "$file")
    [[ -d $dir ]] || tune_die "directory $dir does not exist"
    # Written next to the target and renamed so a reader never sees half a file.
    tmp=$(mktemp "$dir/.${file##*/}.XXXXXX")
    {
        echo "# Generated by tuning/${0##*/} for $(tune_group "$TUNE_CONNECTIONS") connections on $(hostname) at $(date -u +%Y-%m-%dT%H:%M:%SZ)."
        echo "# The reasoning for every value is in tuning/README.md of ringmq."
        echo "# Load with: sysctl --system   (or: sysctl -p $file)"
        for i in "${!TUNE_KEYS[@]}"; do
            case ${TUNE_STATUS[i]} in
                change | ok)
                    echo
                    echo "# ${TUNE_WHY[i]}"
                    echo "${TUNE_KEYS[i]} = ${TUNE_PROPOSED[i]}"
                    ;;
                absent)
                    echo
                    echo "# ${TUNE_KEYS[i]} was absent when this file was generated (module not loaded)."
                    echo "# If it gets loaded, uncomment (a leading '-' tells systemd-sysctl to ignore a missing key):"
                    echo "# -${TUNE_KEYS[i]} = ${TUNE_PROPOSED[i]}"
                    ;;
                advice)
                    echo
                    echo "# not a sysctl: ${TUNE_KEYS[i]} should be ${TUNE_PROPOSED[i]} (${TUNE_WHY[i]})"
                    ;;
            esac
        done
    } >"$tmp"
    chmod 0644 "$tmp"
    mv -f -- "$tmp" "$file"
    echo
    echo "wrote $file (nothing was applied; load it with: sysctl -p $file)"
}

# ---- proposals both hosts share ---------------------------------------------

# fs.file-max, fs.nr_open and the nofile rlimit advice.
tune_propose_file_limits() {
    local n=$1 nofile soft hard
    nofile=$(tune_nofile_target "$n")
    tune_propose at-least fs.nr_open "$nofile" \
        "per-process fd ceiling; LimitNOFILE / ulimit -n cannot exceed it"
    tune_propose at-least fs.file-max $((nofile + 262144)) \
        "system-wide open files: one process at LimitNOFILE plus 256k for the rest"
    soft=$(ulimit -Sn)
    hard=$(ulimit -Hn)
    tune_advise limit.nofile "$soft/$hard" "$nofile" \
        "this shell's soft/hard; set LimitNOFILE=$nofile in the unit, one fd per connection"
}

# Socket buffer accounting, TIME_WAIT, backlog of the NIC input queue.
tune_propose_tcp_common() {
    local n=$1
    tune_propose at-least net.ipv4.tcp_mem "$(tune_tcp_mem_pages "$n")" \
        "pages of TCP buffer for all sockets: 2/4/8 KiB per connection, capped at 25/37.5/50 % of RAM"
    tune_propose at-least net.ipv4.tcp_max_tw_buckets "$n" \
        "a mass disconnect parks up to one TIME_WAIT (256 B) per connection; beyond this they are killed early"
    tune_propose at-most net.ipv4.tcp_fin_timeout 15 \
        "orphaned FIN_WAIT_2 sockets of vanished cellular peers are reclaimed after 15 s, not 60"
    tune_propose at-least net.core.netdev_max_backlog 16384 \
        "per-CPU queue of received packets before the stack; a reconnect storm overflows 1000"
}

# Connection tracking: only when the module is loaded (otherwise "absent").
tune_propose_conntrack() {
    local n=$1 entries
    entries=$((n + n / 4))
    tune_propose at-least net.netfilter.nf_conntrack_max "$entries" \
        "one entry (256 B) per connection + 25 % churn; a full table drops new SYNs"
    tune_propose at-least net.netfilter.nf_conntrack_buckets "$entries" \
        "hash buckets (8 B each) 1:1 with entries keeps lookups short"
    tune_propose at-most net.netfilter.nf_conntrack_tcp_timeout_established 86400 \
        "5 days by default; 1 day still outlives any MQTT keepalive x 1.5 (max 65535 s)"
    tune_propose at-most net.netfilter.nf_conntrack_tcp_timeout_time_wait 30 \
        "closed connections give their entry back after 30 s instead of 120"
    tune_propose at-most net.netfilter.nf_conntrack_tcp_timeout_fin_wait 30 \
        "half-closed connections of vanished peers give their entry back sooner"
}

tune_finish() {
    case $TUNE_MODE in
        dry-run) ;;
        apply) tune_apply ;;
        write) tune_write_sysctl_d ;;
    esac
}
