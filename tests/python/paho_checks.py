"""Independent-client checks against a running ringmq, with Eclipse Paho (paho-mqtt 2.x).

Usage: python3 paho_checks.py HOST PORT
Prints one line per check and exits non-zero on the first failure. Every wait is bounded.
"""
import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HOST, PORT = sys.argv[1], int(sys.argv[2])
# "--no-race": skip the two checks that publish right after another client's SUBSCRIBE.
RACE = "--no-race" not in sys.argv[3:]
WAIT = 10.0


def client(version, client_id=None, **kw):
    c = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or f"paho-{uuid.uuid4().hex[:8]}",
        protocol=version,
        **kw,
    )
    return c


class Inbox:
    def __init__(self):
        self.messages = []
        self.cond = threading.Condition()

    def on_message(self, _client, _userdata, message):
        with self.cond:
            self.messages.append(message)
            self.cond.notify_all()

    def wait_for(self, n):
        deadline = time.monotonic() + WAIT
        with self.cond:
            while len(self.messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"got {len(self.messages)} of {n} messages")
                self.cond.wait(left)
            return list(self.messages)


def connect(c, clean=True):
    if c._protocol == mqtt.MQTTv5:
        rc = c.connect(HOST, PORT, keepalive=30, clean_start=clean)
    else:
        rc = c.connect(HOST, PORT, keepalive=30)
    assert rc == 0, f"connect rc {rc}"
    c.loop_start()


def subscribe(c, topic, qos):
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    c.subscribe(topic, qos)
    assert done.wait(WAIT), "no SUBACK"


def check(name, fn):
    fn()
    print(f"ok {name}", flush=True)


def qos_levels(version):
    def run():
        topic = f"paho/{uuid.uuid4().hex}"
        inbox = Inbox()
        sub = client(version)
        sub.on_message = inbox.on_message
        connect(sub)
        subscribe(sub, topic + "/#", 2)
        pub = client(version)
        connect(pub)
        for qos in (0, 1, 2):
            pub.publish(f"{topic}/{qos}", f"q{qos}".encode(), qos=qos).wait_for_publish(WAIT)
        got = inbox.wait_for(3)
        assert sorted((m.topic, m.payload, m.qos) for m in got) == [
            (f"{topic}/0", b"q0", 0),
            (f"{topic}/1", b"q1", 1),
            (f"{topic}/2", b"q2", 2),
        ], got
        for c in (sub, pub):
            c.disconnect()
            c.loop_stop()
    return run


def retained():
    topic = f"paho/ret/{uuid.uuid4().hex}"
    pub = client(mqtt.MQTTv311)
    connect(pub)
    pub.publish(topic, b"kept", qos=1, retain=True).wait_for_publish(WAIT)
    inbox = Inbox()
    sub = client(mqtt.MQTTv311)
    sub.on_message = inbox.on_message
    connect(sub)
    subscribe(sub, topic, 1)
    got = inbox.wait_for(1)
    assert got[0].payload == b"kept" and got[0].retain, got
    pub.publish(topic, b"", qos=1, retain=True).wait_for_publish(WAIT)
    for c in (sub, pub):
        c.disconnect()
        c.loop_stop()


def v5_properties():
    topic = f"paho/v5/{uuid.uuid4().hex}"
    inbox = Inbox()
    sub = client(mqtt.MQTTv5)
    sub.on_message = inbox.on_message
    connect(sub)
    subscribe(sub, topic, 1)
    pub = client(mqtt.MQTTv5)
    connect(pub)
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("vin", "WVW123"), ("unit", "kmh")]
    props.ResponseTopic = "paho/replies"
    props.CorrelationData = b"\x01\x02"
    props.ContentType = "application/json"
    pub.publish(topic, b"{}", qos=1, properties=props).wait_for_publish(WAIT)
    got = inbox.wait_for(1)[0]
    p = got.properties
    assert p.UserProperty == [("vin", "WVW123"), ("unit", "kmh")], p
    assert p.ResponseTopic == "paho/replies" and p.CorrelationData == b"\x01\x02", p
    assert p.ContentType == "application/json", p
    for c in (sub, pub):
        c.disconnect()
        c.loop_stop()


def will_on_abnormal_close():
    topic = f"paho/will/{uuid.uuid4().hex}"
    inbox = Inbox()
    watcher = client(mqtt.MQTTv311)
    watcher.on_message = inbox.on_message
    connect(watcher)
    subscribe(watcher, topic, 1)
    car = client(mqtt.MQTTv311)
    car.will_set(topic, b"offline", qos=1)
    connect(car)
    time.sleep(0.2)
    # Drop the TCP connection without DISCONNECT.
    car.loop_stop()
    car.socket().close()
    got = inbox.wait_for(1)
    assert got[0].payload == b"offline", got
    watcher.disconnect()
    watcher.loop_stop()


def publish_right_after_subscribe():
    """Another client publishes right after one subscribes, without waiting for its SUBACK (as
    the Paho interop tests test_subscribe_options and test_request_response do). On a broker with
    several shards the two clients may sit on different shards."""
    for _ in range(20):
        topic = f"paho/race/{uuid.uuid4().hex}"
        inbox = Inbox()
        sub = client(mqtt.MQTTv5)
        sub.on_message = inbox.on_message
        assert sub.connect(HOST, PORT, keepalive=30) == 0
        pub = client(mqtt.MQTTv5)
        connect(pub)
        # Write SUBSCRIBE from this thread (the Paho interop clients write synchronously), then
        # publish at once: no wait for SUBACK.
        sub.subscribe(topic, 1)
        while sub.want_write():
            sub.loop_write()
        pub.publish(topic, b"right after", qos=1).wait_for_publish(WAIT)
        sub.loop_start()
        got = inbox.wait_for(1)
        assert got[0].payload == b"right after", got
        for c in (sub, pub):
            c.disconnect()
            c.loop_stop()


def request_response():
    """v5 request/response: the responder subscribes, the requester subscribes to its response
    topic and publishes a request at once (no wait for either SUBACK); the responder answers on
    Response Topic with the Correlation Data [MQTT-4.10]."""
    requests = f"paho/req/{uuid.uuid4().hex}"
    responses = f"paho/resp/{uuid.uuid4().hex}"
    responder = client(mqtt.MQTTv5)

    def answer(c, _userdata, message):
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = message.properties.CorrelationData
        c.publish(message.properties.ResponseTopic, b"response", qos=1, properties=props)

    responder.on_message = answer
    assert responder.connect(HOST, PORT, keepalive=30) == 0
    inbox = Inbox()
    requester = client(mqtt.MQTTv5)
    requester.on_message = inbox.on_message
    assert requester.connect(HOST, PORT, keepalive=30) == 0
    # Both SUBSCRIBEs written from this thread, then the request at once.
    for c, topic in ((responder, requests), (requester, responses)):
        c.subscribe(topic, 1)
        while c.want_write():
            c.loop_write()
    for c in (responder, requester):
        c.loop_start()
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = responses
    props.CorrelationData = b"req-1"
    requester.publish(requests, b"request", qos=1, properties=props)
    got = inbox.wait_for(1)
    assert got[0].payload == b"response", got
    assert got[0].properties.CorrelationData == b"req-1", got
    for c in (responder, requester):
        c.disconnect()
        c.loop_stop()


check("qos 0/1/2 with MQTT 3.1.1", qos_levels(mqtt.MQTTv311))
check("qos 0/1/2 with MQTT 5", qos_levels(mqtt.MQTTv5))
check("retained set and clear", retained)
check("v5 properties passed through", v5_properties)
check("will on abnormal close", will_on_abnormal_close)
if RACE:
    check("publish right after another client subscribes", publish_right_after_subscribe)
    check("request/response without waiting for SUBACK", request_response)
print("all paho checks passed")
