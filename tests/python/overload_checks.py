"""Overload protection as Eclipse Paho (paho-mqtt 2.x, MQTT 5.0) sees it, against a running ringmq.

Usage:
  python3 overload_checks.py HOST PORT rate N         N connects in a row: prints the reason codes
  python3 overload_checks.py HOST PORT flap ID N      N connect/disconnects of client id ID
  python3 overload_checks.py HOST PORT one ID [BIND] [USERNAME]   one connect

Each connect prints one line "connack <code>" (the CONNACK reason code's value) or "closed" (the
broker closed without CONNACK). Every wait is bounded.
"""
import sys
import threading
import time

import paho.mqtt.client as mqtt

HOST, PORT = sys.argv[1], int(sys.argv[2])
WAIT = 10.0


def try_connect(client_id, bind="", username=None):
    """The CONNACK reason code's value, or None if the broker closed without CONNACK."""
    result = {}
    done = threading.Event()
    c = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
    )
    if username:
        c.username_pw_set(username)

    def on_connect(_c, _u, _flags, reason_code, _props):
        result["rc"] = reason_code.value
        done.set()

    def on_disconnect(_c, _u, _flags, _reason_code, _props):
        done.set()

    c.on_connect = on_connect
    c.on_disconnect = on_disconnect
    try:
        c.connect(HOST, PORT, keepalive=30, bind_address=bind)
    except OSError:
        return None
    deadline = time.monotonic() + WAIT
    while not done.is_set() and time.monotonic() < deadline:
        c.loop(timeout=0.05)
    if not done.is_set():
        raise AssertionError(f"{client_id}: neither CONNACK nor close within {WAIT} s")
    if result.get("rc") == 0:
        c.disconnect()
        c.loop(timeout=0.05)
    try:
        c._sock_close()  # paho keeps the socket otherwise; the test opens many
    except OSError:
        pass
    return result.get("rc")


def show(rc):
    print("closed" if rc is None else f"connack {rc}", flush=True)


def main():
    mode = sys.argv[3]
    if mode == "rate":
        n = int(sys.argv[4])
        for i in range(n):
            show(try_connect(f"paho-rate-{i}"))
    elif mode == "flap":
        client_id, n = sys.argv[4], int(sys.argv[5])
        for _ in range(n):
            show(try_connect(client_id))
    elif mode == "one":
        client_id = sys.argv[4]
        bind = sys.argv[5] if len(sys.argv) > 5 else ""
        username = sys.argv[6] if len(sys.argv) > 6 else None
        show(try_connect(client_id, bind=bind, username=username))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
