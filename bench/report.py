#!/usr/bin/env python3
"""Turns the loadgen JSON summaries of one bench/run.sh run into a markdown section.

usage: report.py WORKDIR --date D --command C [...]; WORKDIR/<broker>/<test>.json
"""
import argparse
import glob
import json
import os
import platform
import re


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def step_held(s):
    m, lg = s["messages"], s["loadgen"]
    return (m["sent"] > 0 and m["lost"] == 0 and m["duplicated"] == 0
            and lg["backlog_growing_seconds"] == 0
            and lg.get("delivery_backlog_growing_seconds", 0) == 0
            and s["connections"]["failed"] == 0)


def broker_cpu(s):
    b = s.get("broker_process") or {}
    return b.get("cpu_s_publishing")


def flags(s):
    lg = s["loadgen"]
    out = []
    if lg["cpu_saturated_seconds"] > 0:
        out.append("loadgen CPU-saturated")
    if lg.get("cpu_saturated_seconds_connecting", 0) > 0 and s["messages"]["sent"] == 0:
        out.append("loadgen CPU-saturated while connecting")
    if lg["backlog_growing_seconds"] > 0:
        out.append("send backlog grew")
    if lg.get("delivery_backlog_growing_seconds", 0) > 0:
        out.append(f"delivery backlog grew (max {lg['delivery_backlog_max']} undelivered)")
    if lg.get("cpu_starved_seconds", 0) > 0:
        out.append(f"loadgen starved of CPU by other processes (wait up to {lg['cpu_wait_max_percent']:.0f}%)")
    return out


def figures(workdir, broker):
    """{metric key: (value, note)} for one broker."""
    d = os.path.join(workdir, broker)
    if not os.path.isdir(d):
        return None
    f, notes = {}, []
    steps = []
    for path in glob.glob(os.path.join(d, "telemetry-*.json")):
        rate = int(re.search(r"telemetry-(\d+)\.json", path).group(1))
        s = load(path)
        if s:
            steps.append((rate, s))
    steps.sort(key=lambda item: item[0])
    held = [(r, s) for r, s in steps if step_held(s)]
    if held:
        rate, s = held[-1]
        m = s["messages"]
        f["tele_rate"] = m["receive_rate_per_s"]
        f["tele_p99"] = m["latency_ms"]["p99"]
        cpu = broker_cpu(s)
        if cpu is not None and m["received"] > 0:
            f["tele_cpu_per_m"] = cpu / (m["received"] / 1e6)
        rss = (s.get("broker_process") or {}).get("rss_kb_max")
        if rss:
            f["tele_rss_mb"] = rss / 1024
    failed = [(r, s) for r, s in steps if not step_held(s)]
    if failed:
        r, s = failed[0]
        m = s["messages"]
        why = ", ".join(flags(s) + ([f"lost {m['lost']}"] if m["lost"] else []) +
                        ([f"dup {m['duplicated']}"] if m["duplicated"] else [])) or "connect failures"
        notes.append(f"telemetry: {r} msgs/s not held ({why})")
    elif steps:
        notes.append(f"telemetry: every step held up to {steps[-1][0]} msgs/s (the step list's top; real limit is higher)")
    for r, s in held:
        if flags(s):
            notes.append(f"telemetry {r} msgs/s: " + ", ".join(flags(s)))
    s = load(os.path.join(d, "broadcast.json"))
    if s:
        m = s["messages"]
        last = m.get("last_delivery_ms") or {}
        f["bc_p50"], f["bc_p99"], f["bc_max"] = last.get("p50"), last.get("p99"), last.get("max")
        cpu = broker_cpu(s)
        if cpu:
            f["bc_per_cpu_s"] = m["received"] / cpu
        f["bc_lost"] = m["lost"]
        if flags(s):
            notes.append("broadcast: " + ", ".join(flags(s)))
    s = load(os.path.join(d, "conn-storm.json"))
    if s:
        if flags(s):
            notes.append("conn-storm: " + ", ".join(flags(s)))
        c = s["connections"]
        f["storm_last"] = c["time_to_last_connack_ms"]
        f["storm_failed"] = c["failed"]
        f["storm_p99"] = c["connect_latency_ms"]["p99"]
        if c["failures"]:
            notes.append(f"conn-storm failures: {c['failures']}")
    s = load(os.path.join(d, "p2p-qos0.json"))
    if s:
        m = s["messages"]
        f["p0_rate"] = m["receive_rate_per_s"]
        f["p0_lost_pct"] = 100.0 * m["lost"] / m["expected"] if m["expected"] else None
        f["p0_p99"] = m["latency_ms"]["p99"]
        if flags(s):
            notes.append("one-to-one QoS0: " + ", ".join(flags(s)))
    s = load(os.path.join(d, "p2p-qos2.json"))
    if s:
        m = s["messages"]
        f["p2_rate"] = m["receive_rate_per_s"]
        f["p2_p50"], f["p2_p99"] = m["latency_ms"]["p50"], m["latency_ms"]["p99"]
        f["p2_lost"] = m["lost"]
        if flags(s):
            notes.append("one-to-one QoS2: " + ", ".join(flags(s)))
    s = load(os.path.join(d, "idle.json"))
    if s:
        if flags(s):
            notes.append("idle: " + ", ".join(flags(s)))
        b = s.get("broker_process") or {}
        conns = s["connections"]["connected"]
        if b.get("rss_kb_ready") and b.get("rss_kb_start") and conns:
            f["idle_bytes_ready"] = (b["rss_kb_ready"] - b["rss_kb_start"]) * 1024 / conns
        # Held idle for the whole run: what an idle fleet costs (ringmq parks idle connections
        # after park_after_idle_secs, 10 s by default).
        if b.get("rss_kb_drained") and b.get("rss_kb_start") and conns:
            f["idle_bytes"] = (b["rss_kb_drained"] - b["rss_kb_start"]) * 1024 / conns
            f["idle_rss_mb"] = b["rss_kb_drained"] / 1024
        f["idle_conns"] = conns
    return f, notes


ROWS = [
    # (test, metric, key, format, better)
    ("1. telemetry fan-in", "highest rate held, msgs/s", "tele_rate", "{:.0f}", "higher"),
    ("", "p99 latency at that rate, ms", "tele_p99", "{:.2f}", "lower"),
    ("", "broker CPU-s per million msgs", "tele_cpu_per_m", "{:.2f}", "lower"),
    ("", "broker RSS max, MiB", "tele_rss_mb", "{:.1f}", "lower"),
    ("2. broadcast 15k subs", "last subscriber has it p50, ms", "bc_p50", "{:.1f}", "lower"),
    ("", "last subscriber has it p99, ms", "bc_p99", "{:.1f}", "lower"),
    ("", "last subscriber has it max, ms", "bc_max", "{:.1f}", "lower"),
    ("", "deliveries per broker CPU-s", "bc_per_cpu_s", "{:.0f}", "higher"),
    ("", "lost deliveries", "bc_lost", "{}", "lower"),
    ("3. connection storm 15k", "time to last CONNACK, ms", "storm_last", "{:.0f}", "lower"),
    ("", "connect latency p99, ms", "storm_p99", "{:.1f}", "lower"),
    ("", "failed connections", "storm_failed", "{}", "lower"),
    ("4. one-to-one 1 KB", "QoS0 max rate received, msgs/s", "p0_rate", "{:.0f}", "higher"),
    ("", "QoS0 lost, %", "p0_lost_pct", "{:.2f}", "lower"),
    ("", "QoS0 p99 latency, ms", "p0_p99", "{:.2f}", "lower"),
    ("", "QoS2 at 2,000 msgs/s: received/s", "p2_rate", "{:.0f}", "higher"),
    ("", "QoS2 latency p50, ms", "p2_p50", "{:.2f}", "lower"),
    ("", "QoS2 latency p99, ms", "p2_p99", "{:.2f}", "lower"),
    ("", "QoS2 lost", "p2_lost", "{}", "lower"),
    ("5. idle memory", "broker RSS per connection just after connecting, bytes", "idle_bytes_ready", "{:.0f}", "lower"),
    ("", "broker RSS per connection held idle 30 s, bytes", "idle_bytes", "{:.0f}", "lower"),
    ("", "broker RSS with 15k idle, MiB", "idle_rss_mb", "{:.1f}", "lower"),
]


def fmt(value, pattern):
    if value is None:
        return "–"
    return pattern.format(value)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("workdir")
    p.add_argument("--date", required=True)
    p.add_argument("--command", required=True)
    p.add_argument("--elapsed", default="")
    p.add_argument("--mosquitto-settings", default="")
    p.add_argument("--ringmq-settings", default="")
    p.add_argument("--mosquitto-version", default="")
    p.add_argument("--note", default="")
    p.add_argument("--quick", default="0")
    p.add_argument("--load", default="")
    p.add_argument("--revision", default="")
    a = p.parse_args()
    mq = figures(a.workdir, "mosquitto")
    rq = figures(a.workdir, "ringmq")
    cpu_model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = [f"## {a.date} — `{a.command}`", ""]
    out.append(f"- Machine: {os.cpu_count()} CPUs ({cpu_model}), Linux {platform.release()}; "
               f"run took {a.elapsed} s{' (quick mode: short runs, 3 rate steps)' if a.quick == '1' else ''}.")
    if a.revision:
        out.append(f"- Source: commit {a.revision}.")
    if a.load:
        out.append(f"- Host load when the run started (other work on the machine): {a.load}.")
    out.append("- Pinning: broker `taskset -c 0`, loadgen `taskset -c 1` with `--threads 1`; "
               "15,000-connection tests bind source addresses 127.0.0.2–5. Fresh broker per run.")
    out.append(f"- Mosquitto ({a.mosquitto_version}): {a.mosquitto_settings}.")
    out.append(f"- ringmq: {a.ringmq_settings}." + (f" **{a.note}**" if a.note else ""))
    out.append("- Scenarios: `loadgen/scenarios/*.toml`; telemetry steps the total rate until loss, "
               "duplicates or a growing send backlog appear. CPU-seconds are the broker's utime+stime "
               "from publishing start to the end of the drain.")
    out.append("")
    out.append("| Test | Metric | Mosquitto | ringmq | ringmq / Mosquitto |")
    out.append("|---|---|---:|---:|---:|")
    for test, metric, key, pattern, better in ROWS:
        mv = mq[0].get(key) if mq else None
        rv = rq[0].get(key) if rq else None
        ratio = "–"
        if isinstance(mv, (int, float)) and isinstance(rv, (int, float)) and mv:
            ratio = f"{rv / mv:.2f}× ({better} is better)"
        out.append(f"| {test} | {metric} | {fmt(mv, pattern)} | {fmt(rv, pattern)} | {ratio} |")
    notes = []
    for name, res in (("Mosquitto", mq), ("ringmq", rq)):
        if res:
            notes += [f"{name}: {n}" for n in res[1]]
    if notes:
        out.append("")
        out.append("Notes:")
        out += [f"- {n}" for n in notes]
    print("\n".join(out))


if __name__ == "__main__":
    main()
