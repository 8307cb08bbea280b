#!/usr/bin/env python3
"""Groups a `perf report --no-children --sort symbol` profile of the floor receiver into the
parts of the receive path, so epoll and io_uring runs can be compared by where the time goes.

usage: perf_groups.py PERF.data [PERF.data ...]

The grouping is by symbol name patterns and is approximate: a spin-unlock that re-enables
interrupts, for instance, is counted as "irq/lock" though the work it stands for is a wake-up.
"""
import re
import subprocess
import sys

# First matching group wins; order matters.
GROUPS = [
    ("user code", r"^\[\.\] (floor::|core::|alloc::|io_uring::|hdrhistogram|<)"),
    ("libc wrappers", r"^\[\.\] "),
    ("sleep/wake (scheduler)", r"(finish_task_switch|__schedule|schedule|pick_next|enqueue_|dequeue_|"
     r"update_curr|try_to_wake_up|ttwu|select_task_rq|psi_|sched_|__wake_up|autoremove_wake|"
     r"prepare_to_wait|finish_wait|hrtimer|tick_|cpuidle|switch_mm|__switch_to|rseq|do_idle|"
     r"update_load|set_next_entity|put_prev)"),
    ("io_uring core", r"(io_uring|^\[k\] io_|__io_|llist_)"),
    ("epoll core", r"(ep_|epoll|sock_poll|tcp_poll|__pollwait)"),
    ("tcp recv copy-out", r"(tcp_recvmsg|_copy_to_iter|skb_datagram|skb_copy_datagram|"
     r"tcp_rcv_space_adjust|tcp_cleanup_rbuf|__check_object_size|sock_recvmsg|inet_recvmsg|"
     r"check_heap_object|__skb_datagram_iter|tcp_recv_timestamp|sock_rfree|__kfree_skb|"
     r"skb_release|kfree_skbmem|tcp_eat_recv_skb)"),
    ("tcp send + loopback rx of sink data", r"(tcp_|ip_|__ip_|__dev_queue_xmit|dev_hard_start|"
     r"loopback|netif_|__netif|skb_|__skb|sk_|inet_|__inet|sock_def|sock_sendmsg|napi|"
     r"net_rx|__napi|process_backlog|do_softirq|__do_softirq|handle_softirqs|validate_xmit|"
     r"eth_|kmem_cache|kmalloc|__alloc_skb|memcg|refill_stock|obj_cgroup|__local_bh|"
     r"nf_hook|raw_local_deliver|__sys_sendto|__sys_recvfrom|release_sock|lock_sock|"
     r"_copy_from_iter|copy_from_user|bpf_|dst_release|csum)"),
    ("syscall entry + fd lookup", r"(do_syscall|entry_SYSCALL|syscall_|fdget|fget|fput|"
     r"sock_from_file|__x64_sys|x64_sys_call|exit_to_user|__fget|security_)"),
    ("irq/lock", r"(_raw_spin|native_|irq|__rcu|rcu_)"),
    ("clock", r"(read_tsc|ktime|clock)"),
]


def group_profile(path):
    output = subprocess.run(
        ["perf", "report", "-i", path, "--stdio", "--no-children", "--sort", "symbol",
         "-g", "none", "--percent-limit", "0"],
        capture_output=True, text=True, check=True).stdout
    totals = {name: 0.0 for name, _ in GROUPS}
    totals["other"] = 0.0
    for line in output.splitlines():
        match = re.match(r"^\s+([0-9.]+)%\s+(\[[k.]\] \S+)", line)
        if not match:
            continue
        percent, symbol = float(match.group(1)), match.group(2)
        for name, pattern in GROUPS:
            if re.search(pattern, symbol):
                totals[name] += percent
                break
        else:
            totals["other"] += percent
    return totals


def main():
    profiles = [(path, group_profile(path)) for path in sys.argv[1:]]
    names = [name for name, _ in GROUPS] + ["other"]
    print("| part | " + " | ".join(path.rsplit("/", 1)[-1] for path, _ in profiles) + " |")
    print("|---|" + "---|" * len(profiles))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{totals[name]:.1f} %" for _, totals in profiles) + " |")


if __name__ == "__main__":
    main()
