#!/usr/bin/env python3
"""Independent check of what the ringmq Kafka bridge wrote to a topic.

Reads every record of TOPIC from the beginning with kafka-python (not librdkafka) and compares
it with an expectations file: a JSON list of {"payload": str, "key": str|null, "headers": {name: value}}.
Each expected payload must arrive exactly once, with that key and at least those headers.

Prints one summary line `check_topic: {"expected": N, "ok": N, "missing": 0, ...}` and exits 0 only
if every expected record arrived exactly once and correct.

Usage: check_topic.py --bootstrap 127.0.0.1:9092 --topic telemetry --expect expect.json [--timeout-s 30]
"""
import argparse
import json
import sys
import time

from kafka import KafkaConsumer, TopicPartition


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--expect", required=True, help="JSON file of expected records")
    parser.add_argument("--timeout-s", type=float, default=30.0)
    args = parser.parse_args()

    with open(args.expect, encoding="utf-8") as file:
        expected = {item["payload"]: item for item in json.load(file)}

    consumer = KafkaConsumer(
        bootstrap_servers=args.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=1000,
    )
    deadline = time.monotonic() + args.timeout_s
    partitions = None
    while partitions is None and time.monotonic() < deadline:
        partitions = consumer.partitions_for_topic(args.topic)
        if partitions is None:
            time.sleep(0.2)
    if partitions is None:
        print(f"check_topic: topic {args.topic!r} not found", file=sys.stderr)
        return 2
    assignment = [TopicPartition(args.topic, partition) for partition in sorted(partitions)]
    consumer.assign(assignment)
    consumer.seek_to_beginning(*assignment)

    seen = {}
    unexpected = 0
    wrong = []
    idle_rounds = 0
    while time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=500)
        records = [record for part in batch.values() for record in part]
        if not records:
            # Everything arrived: wait a little longer for duplicates, then stop.
            if len(seen) >= len(expected):
                idle_rounds += 1
                if idle_rounds >= 3:
                    break
            continue
        idle_rounds = 0
        for record in records:
            payload = record.value.decode("utf-8", "replace") if record.value is not None else ""
            want = expected.get(payload)
            if want is None:
                unexpected += 1
                continue
            seen[payload] = seen.get(payload, 0) + 1
            key = record.key.decode("utf-8", "replace") if record.key is not None else None
            headers = {name: value.decode("utf-8", "replace") for name, value in record.headers or []}
            problems = []
            if key != want.get("key"):
                problems.append(f"key {key!r} != {want.get('key')!r}")
            for name, value in want.get("headers", {}).items():
                if headers.get(name) != value:
                    problems.append(f"header {name}={headers.get(name)!r} != {value!r}")
            if problems:
                wrong.append({"payload": payload, "problems": problems})
    consumer.close()

    summary = {
        "expected": len(expected),
        "ok": sum(1 for payload, count in seen.items() if count == 1)
        - len({item["payload"] for item in wrong}),
        "missing": sum(1 for payload in expected if payload not in seen),
        "duplicate": sum(1 for count in seen.values() if count > 1),
        "wrong": len(wrong),
        "unexpected": unexpected,
    }
    print("check_topic: " + json.dumps(summary, sort_keys=True))
    for item in wrong[:10]:
        print(f"wrong: {item}", file=sys.stderr)
    success = (
        summary["ok"] == len(expected)
        and summary["missing"] == 0
        and summary["duplicate"] == 0
        and summary["wrong"] == 0
    )
    return 0 if success else 1


if __name__ == "__main__":
    sys.exit(main())
