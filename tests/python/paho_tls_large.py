"""A 1 MB message over TLS 1.3 both ways through ringmq's own record layer, with Eclipse Paho.

Usage: python3 paho_tls_large.py HOST PORT CAFILE
The publisher sends 1,000,000 bytes at QoS 1 (client to broker: 62 records of up to 2^14 bytes,
RFC 8446 5.1), the subscriber receives it (broker to client), each on its own TLS 1.3
connection; the payload must arrive byte for byte, and the PUBACK must come back. Every wait is
bounded. Prints "paho tls large passed" on success.
"""
import ssl
import sys
import threading
import uuid

import paho.mqtt.client as mqtt

HOST, PORT, CAFILE = sys.argv[1], int(sys.argv[2]), sys.argv[3]
WAIT = 30.0
SIZE = 1_000_000


def tls_client(name):
    c = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"paho-tls-{name}-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv311,
    )
    ctx = ssl.create_default_context(cafile=CAFILE)
    # TLS 1.3 only: after its handshake ringmq drops rustls and runs its own record layer.
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    c.tls_set_context(ctx)
    return c


def connected(c):
    ready = threading.Event()
    c.on_connect = lambda _c, _u, _f, rc, _p: ready.set() if rc == 0 else None
    assert c.connect(HOST, PORT, keepalive=30) == 0
    c.loop_start()
    assert ready.wait(WAIT), "no CONNACK over TLS"
    version = c.socket().version()
    assert version == "TLSv1.3", f"negotiated {version}"


def main():
    topic = f"paho/tls/large/{uuid.uuid4().hex[:8]}"
    payload = bytes((i * 7 + i // 251) % 256 for i in range(SIZE))

    sub = tls_client("sub")
    got = []
    arrived = threading.Event()

    def on_message(_c, _u, message):
        got.append(message.payload)
        arrived.set()

    sub.on_message = on_message
    subscribed = threading.Event()
    sub.on_subscribe = lambda *_a: subscribed.set()
    connected(sub)
    sub.subscribe(topic, qos=1)
    assert subscribed.wait(WAIT), "no SUBACK"

    pub = tls_client("pub")
    connected(pub)
    info = pub.publish(topic, payload, qos=1)
    info.wait_for_publish(timeout=WAIT)
    assert info.is_published(), "no PUBACK for the 1 MB publish"

    assert arrived.wait(WAIT), "the 1 MB message did not arrive"
    assert len(got[0]) == SIZE, f"received {len(got[0])} bytes of {SIZE}"
    assert got[0] == payload, "the 1 MB message arrived altered"

    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()
    print("paho tls large passed")


if __name__ == "__main__":
    main()
