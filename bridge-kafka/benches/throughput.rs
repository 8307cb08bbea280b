//! Records per second through the bridge into librdkafka's mock cluster, 100-byte payloads.
//!
//! `cargo bench -p ringmq-bridge-kafka --bench throughput` (optionally `-- RECORDS`).
//! Measures both paths: QoS0 (ack = "none") and acknowledged (ack = "kafka", one token per record),
//! from the first `try_send` to the last Kafka acknowledgement.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::mocking::MockCluster;
use ringmq_bridge_kafka::{AckToken, Bridge, BridgeConfig, BridgeRecord};

const PAYLOAD_BYTES: usize = 100;
const DEFAULT_RECORDS: u64 = 300_000;
const WAIT_LIMIT: Duration = Duration::from_secs(300);

fn main() {
    let records: u64 = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(DEFAULT_RECORDS);
    for acked in [false, true] {
        let (elapsed, acks) = run(records, acked);
        let rate = records as f64 / elapsed.as_secs_f64();
        println!(
            "bridge-kafka {} path: {records} records of {PAYLOAD_BYTES} B in {:.3} s = {:.0} records/s ({acks} acks)",
            if acked { "ack=kafka" } else { "qos0" },
            elapsed.as_secs_f64(),
            rate
        );
    }
}

fn run(records: u64, acked: bool) -> (Duration, u64) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("telemetry", 4, 1).expect("topic");
    let config: BridgeConfig = toml::from_str(&format!(
        r#"
bootstrap_servers = "{}"
buffer_max_messages = {}
[producer]
"linger.ms" = 5
"batch.num.messages" = 10000
[[rule]]
filter = "vehicle/+/telemetry"
kafka_topic = "telemetry"
key = "client_id"
ack = "{}"
"#,
        cluster.bootstrap_servers(),
        records,
        if acked { "kafka" } else { "none" }
    ))
    .expect("config");
    let (ack_tx, ack_rx) = flume::bounded(records as usize);
    let (inbound_tx, _inbound_rx) = flume::bounded(1);
    let bridge = Bridge::start(config, vec![ack_tx], inbound_tx).expect("bridge");
    let sender = bridge.sender();
    let matched = bridge
        .matcher()
        .matches("vehicle/car-1/telemetry")
        .expect("bridged");
    let payload = Bytes::from(vec![b'x'; PAYLOAD_BYTES]);
    let topic = Bytes::from_static(b"vehicle/car-1/telemetry");
    let clients: Vec<Bytes> = (0..64).map(|n| Bytes::from(format!("car-{n}"))).collect();

    let started = Instant::now();
    for seq in 0..records {
        let mut record = BridgeRecord {
            rule: matched.rule,
            topic: topic.clone(),
            client_id: clients[(seq % 64) as usize].clone(),
            qos: u8::from(acked),
            payload: payload.clone(),
            user_properties: Vec::new(),
            publish_time_ms: seq,
            ack: acked.then_some(AckToken {
                shard: 0,
                token: seq,
            }),
        };
        // A benchmark wants every record through, so it retries where a shard would drop/refuse
        // (the sender still counts each full-channel attempt as dropped/refused).
        loop {
            match sender.try_send(record) {
                Ok(()) => break,
                Err(error) => {
                    record = *error.record;
                    std::thread::yield_now();
                }
            }
        }
    }
    let deadline = started + WAIT_LIMIT;
    while bridge.stats().acknowledged < records {
        assert!(
            Instant::now() < deadline,
            "bench timed out: {:?}",
            bridge.stats()
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let elapsed = started.elapsed();
    bridge.shutdown();
    (elapsed, ack_rx.len() as u64)
}
