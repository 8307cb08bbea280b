"""PUBACK latency at a fixed rate, measured by an independent client (Eclipse Paho).

For topics bridged with ack = "kafka" the PUBACK comes only after Kafka stored the record, so this
is the end-to-end latency from MQTT publish to "Kafka has it".

Usage: puback_latency.py HOST PORT TOPIC RATE COUNT   (prints one JSON line)
"""
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt

host, port, topic, rate, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
sent = {}
latencies = []
done = threading.Event()
lock = threading.Lock()


def on_publish(_client, _userdata, mid, _reason_code, _properties):
    now = time.perf_counter()
    with lock:
        start = sent.pop(mid, None)
        if start is not None:
            latencies.append(now - start)
        if len(latencies) >= count:
            done.set()


client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="puback-latency")
client.max_inflight_messages_set(1000)
client.on_publish = on_publish
client.connect(host, port, keepalive=30)
client.loop_start()
payload = b"x" * 100
interval = 1.0 / rate
next_at = time.perf_counter()
for i in range(count):
    next_at += interval
    delay = next_at - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
    with lock:
        info = client.publish(topic, payload, qos=1)
        sent[info.mid] = time.perf_counter()
done.wait(60)
client.disconnect()
client.loop_stop()
lat = sorted(latencies)


def pct(p):
    return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None


print(json.dumps({"acked": len(lat), "count": count, "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99), "max_ms": pct(1.0)}))
