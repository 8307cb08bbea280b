"""Authentication seen by Eclipse Paho (paho-mqtt 2.x): one CONNECT per run, driven by the Rust
tests in tests/tests/auth_jwt.rs and auth_paho.rs.

Usage:
  python3 auth_checks.py HOST PORT connack VERSION CLIENT_ID USERNAME PASSWORD
      Prints "connack N": the 3.1.1 CONNACK return code or the 5.0 reason code, as numbers.
  python3 auth_checks.py HOST PORT roundtrip VERSION CLIENT_ID USERNAME PASSWORD TOPIC
      Connects, subscribes to TOPIC (QoS 1), publishes one message to it and prints "received"
      when it comes back.
  python3 auth_checks.py HOST PORT expiry VERSION CLIENT_ID USERNAME PASSWORD
      Connects, then waits for the broker to end the connection; prints
      "disconnect N from_server=B" (N: the DISCONNECT reason code when the server sent one).
VERSION is 311 or 5; "-" as USERNAME or PASSWORD leaves the field out. Every wait is bounded
(WAIT seconds); exit status 2 means a wait ran out.
"""
import sys
import threading
import uuid

import paho.mqtt.client as mqtt

WAIT = 15.0


def make_client(version, client_id):
    if version == "5":
        c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
        )
    else:
        # VERSION1 callbacks hand over the raw 3.1.1 return code (VERSION2 maps it to a 5.0
        # reason code).
        c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION1,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
        )
    c.reconnect_delay_set(min_delay=60, max_delay=60)
    return c


def credentials(c, username, password):
    if username != "-":
        c.username_pw_set(username, None if password == "-" else password)


def connack_code(version, rc):
    return rc.value if version == "5" else int(rc)


class Connection:
    """A client whose CONNACK, messages and disconnect are waited on with bounds."""

    def __init__(self, host, port, version, client_id, username, password):
        self.version = version
        self.connack = None
        self.disconnect = None
        self.messages = []
        self.subscribed = False
        self.cond = threading.Condition()
        c = make_client(version, client_id)
        credentials(c, username, password)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self.client = c
        c.connect(host, port, keepalive=30)
        c.loop_start()

    def _on_connect(self, _c, _u, _flags, rc, *_props):
        with self.cond:
            self.connack = connack_code(self.version, rc)
            self.cond.notify_all()

    def _on_disconnect(self, _c, _u, *args):
        # VERSION2: (flags, reason_code, properties); VERSION1 / 3.1.1: (rc,)
        with self.cond:
            if self.version == "5":
                flags, reason = args[0], args[1]
                self.disconnect = (reason.value, flags.is_disconnect_packet_from_server)
            else:
                self.disconnect = (int(args[0]), False)
            self.cond.notify_all()

    def _on_message(self, _c, _u, message):
        with self.cond:
            self.messages.append(message)
            self.cond.notify_all()

    def _on_subscribe(self, *_args):
        with self.cond:
            self.subscribed = True
            self.cond.notify_all()

    def wait(self, what, predicate):
        with self.cond:
            if not self.cond.wait_for(predicate, WAIT):
                print(f"timeout waiting for {what}", flush=True)
                self.client.loop_stop()
                sys.exit(2)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def main():
    host, port, command = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    version, client_id, username, password = sys.argv[4:8]
    if client_id == "-":
        client_id = f"paho-{uuid.uuid4().hex[:8]}"
    conn = Connection(host, port, version, client_id, username, password)
    # A refused CONNECT is followed by the broker closing: wait for the CONNACK either way.
    conn.wait("connack", lambda: conn.connack is not None or conn.disconnect is not None)
    if conn.connack is None:
        print(f"closed before connack {conn.disconnect}", flush=True)
        sys.exit(1)
    print(f"connack {conn.connack}", flush=True)
    if command == "connack":
        conn.close()
        return
    if conn.connack != 0:
        sys.exit(1)
    if command == "roundtrip":
        topic = sys.argv[8]
        conn.client.subscribe(topic, qos=1)
        conn.wait("suback", lambda: conn.subscribed)
        conn.client.publish(topic, b"hello", qos=1)
        conn.wait("message", lambda: len(conn.messages) > 0)
        print("received", flush=True)
        conn.close()
    elif command == "expiry":
        conn.wait("disconnect", lambda: conn.disconnect is not None)
        code, from_server = conn.disconnect
        print(f"disconnect {code} from_server={from_server}", flush=True)
        conn.client.loop_stop()
    else:
        print(f"unknown command {command}", flush=True)
        sys.exit(64)


if __name__ == "__main__":
    main()
