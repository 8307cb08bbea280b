//! ringmq-tests: black-box tests of the `ringmq` binary through independent clients (rumqttc,
//! mosquitto_pub/sub, paho-mqtt) and raw-byte transcripts. This library holds only the harness:
//! starting a broker on a free port, raw socket helpers. Must not link the broker's internals.
