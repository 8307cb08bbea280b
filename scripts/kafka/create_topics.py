#!/usr/bin/env python3
"""Creates Kafka topics (tansu does not auto-create them). Existing topics are left alone.

Usage: create_topics.py --bootstrap 127.0.0.1:9092 [--partitions 1] TOPIC...
"""
import argparse
import sys
import time

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("topics", nargs="+")
    args = parser.parse_args()

    deadline = time.monotonic() + 30
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=args.bootstrap, request_timeout_ms=10000)
            break
        except KafkaError as error:
            if time.monotonic() > deadline:
                print(f"create_topics: cannot reach {args.bootstrap}: {error}", file=sys.stderr)
                return 2
            time.sleep(0.5)
    for topic in args.topics:
        try:
            admin.create_topics(
                [NewTopic(name=topic, num_partitions=args.partitions, replication_factor=1)]
            )
            print(f"create_topics: created {topic}")
        except TopicAlreadyExistsError:
            print(f"create_topics: {topic} exists")
    admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
