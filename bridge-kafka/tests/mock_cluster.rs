//! Fault tests against librdkafka's in-process mock cluster: broker down at start, broker lost
//! mid-stream, slow acknowledgements, and the inbound (Kafka→MQTT) commit discipline.
//!
//! Waits are bounded by deadlines (the test fails with a message if a condition never holds);
//! nothing asserts on how long something took.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::{Offset, TopicPartitionList};
use ringmq_bridge_kafka::{
    AckToken, Bridge, BridgeAck, BridgeConfig, BridgeHandle, BridgeRecord, InboundMessage,
};

const WAIT_LIMIT: Duration = Duration::from_secs(60);

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_LIMIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "ringmq_bridge_kafka=info".into()),
        )
        .with_test_writer()
        .try_init();
}

fn cluster() -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("telemetry", 1, 1).expect("topic");
    cluster.create_topic("commands", 1, 1).expect("topic");
    cluster
}

fn config(bootstrap: &str, buffer_max_messages: usize, extra: &str) -> BridgeConfig {
    let text = format!(
        r#"
bootstrap_servers = "{bootstrap}"
buffer_max_messages = {buffer_max_messages}
[producer]
"linger.ms" = 5
"enable.idempotence" = true
"reconnect.backoff.ms" = 50
"reconnect.backoff.max.ms" = 200
[[rule]]
filter = "vehicle/+/telemetry"
kafka_topic = "telemetry"
key = "client_id"
[[rule]]
filter = "vehicle/+/event"
kafka_topic = "telemetry"
key = "level:2"
ack = "kafka"
{extra}
"#
    );
    toml::from_str(&text).expect("config parses")
}

struct Harness {
    bridge: BridgeHandle,
    acks: flume::Receiver<BridgeAck>,
    _inbound: flume::Receiver<InboundMessage>,
}

fn start(config: BridgeConfig) -> Harness {
    init_tracing();
    let (ack_tx, acks) = flume::bounded(100_000);
    let (inbound_tx, inbound) = flume::bounded(1_024);
    let bridge = Bridge::start(config, vec![ack_tx], inbound_tx).expect("bridge starts");
    Harness {
        bridge,
        acks,
        _inbound: inbound,
    }
}

fn record(
    bridge: &BridgeHandle,
    topic: &str,
    client_id: &str,
    seq: u64,
    ack: bool,
) -> BridgeRecord {
    let matched = bridge.matcher().matches(topic).expect("topic is bridged");
    let qos = if ack { 1 } else { 0 };
    assert_eq!(matched.wants_kafka_ack(qos), ack);
    BridgeRecord {
        rule: matched.rule,
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        client_id: Bytes::copy_from_slice(client_id.as_bytes()),
        qos,
        payload: Bytes::from(format!("payload-{seq}")),
        user_properties: vec![(Bytes::from_static(b"seq"), Bytes::from(seq.to_string()))],
        publish_time_ms: 1_700_000_000_000 + seq,
        ack: ack.then_some(AckToken {
            shard: 0,
            token: seq,
        }),
    }
}

fn send(bridge: &BridgeHandle, record: BridgeRecord) {
    bridge.sender().try_send(record).expect("channel has room");
}

/// Collects acks until `expected` distinct tokens arrived; fails on a duplicate or an error.
fn collect_acks(acks: &flume::Receiver<BridgeAck>, expected: usize) -> BTreeMap<u64, usize> {
    let mut seen = BTreeMap::new();
    let deadline = Instant::now() + WAIT_LIMIT;
    while seen.len() < expected {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let ack = acks
            .recv_timeout(remaining)
            .unwrap_or_else(|_| panic!("only {} of {expected} acks arrived", seen.len()));
        assert_eq!(ack.outcome, Ok(()), "token {} failed", ack.token);
        *seen.entry(ack.token).or_insert(0) += 1;
    }
    // A late duplicate would show up now.
    std::thread::sleep(Duration::from_millis(200));
    while let Ok(ack) = acks.try_recv() {
        *seen.entry(ack.token).or_insert(0) += 1;
    }
    assert!(
        seen.values().all(|count| *count == 1),
        "every token acked exactly once"
    );
    seen
}

/// Everything in `topic` partition 0, as (key, payload, headers).
fn read_topic(
    bootstrap: &str,
    topic: &str,
    expected: usize,
) -> Vec<(Option<String>, String, HashMap<String, String>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "checker")
        .set("enable.auto.commit", "false")
        .create()
        .expect("checker consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .expect("assignment");
    consumer.assign(&assignment).expect("assign");
    let mut records = Vec::new();
    let deadline = Instant::now() + WAIT_LIMIT;
    while records.len() < expected && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            let headers = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|header| {
                            (
                                header.key.to_owned(),
                                String::from_utf8_lossy(header.value.unwrap_or_default())
                                    .into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            records.push((
                message
                    .key()
                    .map(|key| String::from_utf8_lossy(key).into_owned()),
                String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
                headers,
            ));
        }
    }
    // Anything beyond `expected` would be a duplicate.
    while let Some(Ok(_)) = consumer.poll(Duration::from_millis(300)) {
        records.push((None, "unexpected extra record".to_owned(), HashMap::new()));
    }
    records
}

#[test]
fn records_carry_key_headers_and_payload() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let harness = start(config(&bootstrap, 1_000, ""));
    for seq in 0..10 {
        send(
            &harness.bridge,
            record(
                &harness.bridge,
                "vehicle/car-1/telemetry",
                "client-1",
                seq,
                false,
            ),
        );
    }
    for seq in 10..20 {
        send(
            &harness.bridge,
            record(
                &harness.bridge,
                "vehicle/car-2/event",
                "client-2",
                seq,
                true,
            ),
        );
    }
    collect_acks(&harness.acks, 10);
    let records = read_topic(&bootstrap, "telemetry", 20);
    assert_eq!(records.len(), 20);
    for (key, payload, headers) in &records {
        let seq: u64 = payload
            .strip_prefix("payload-")
            .and_then(|seq| seq.parse().ok())
            .expect("payload");
        let (topic, client, expected_key, qos) = if seq < 10 {
            ("vehicle/car-1/telemetry", "client-1", "client-1", "0")
        } else {
            ("vehicle/car-2/event", "client-2", "car-2", "1")
        };
        assert_eq!(key.as_deref(), Some(expected_key));
        assert_eq!(headers["mqtt_topic"], topic);
        assert_eq!(headers["mqtt_client_id"], client);
        assert_eq!(headers["mqtt_qos"], qos);
        assert_eq!(
            headers["mqtt_publish_time_ms"],
            (1_700_000_000_000 + seq).to_string()
        );
        assert_eq!(headers["seq"], seq.to_string());
    }
    assert!(harness.bridge.stats().kafka_up);
    harness.bridge.shutdown();
}

#[test]
fn broker_down_at_start_buffers_drops_oldest_then_delivers() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    cluster.broker_down(-1).expect("broker down");
    let buffer_max = 100;
    let harness = start(config(&bootstrap, buffer_max, ""));
    wait_until("kafka reported unreachable", || {
        // The link state starts unknown; ALL_BROKERS_DOWN is the signal.
        !harness.bridge.stats().kafka_up
    });
    let qos0_sent = 250u64;
    for seq in 0..qos0_sent {
        send(
            &harness.bridge,
            record(
                &harness.bridge,
                "vehicle/car-1/telemetry",
                "client-1",
                seq,
                false,
            ),
        );
    }
    for seq in 1_000..1_040 {
        send(
            &harness.bridge,
            record(
                &harness.bridge,
                "vehicle/car-9/event",
                "client-9",
                seq,
                true,
            ),
        );
    }
    wait_until("qos0 overflow counted as buffer_full", || {
        let stats = harness.bridge.stats();
        stats.dropped_buffer_full == qos0_sent - buffer_max as u64
            && stats.buffered == buffer_max
            && stats.acked_in_flight == 40
    });
    assert!(harness.acks.is_empty(), "nothing acked while kafka is down");

    cluster.broker_up(-1).expect("broker up");
    let acked = collect_acks(&harness.acks, 40);
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (1_000..1_040).collect::<Vec<_>>()
    );
    wait_until("buffered qos0 delivered", || {
        let stats = harness.bridge.stats();
        stats.acknowledged == buffer_max as u64 + 40 && stats.buffered == 0
    });
    let stats = harness.bridge.stats();
    assert!(stats.kafka_up);
    assert_eq!(stats.dropped_buffer_full, qos0_sent - buffer_max as u64);
    assert_eq!(stats.failed, 0);

    // Drop-oldest: whatever was already handed to librdkafka survives (it cannot be taken back),
    // and the newest records always survive; which older ones made it depends on how the arrivals
    // interleaved with the hand-off, so only the invariant is checked.
    let records = read_topic(&bootstrap, "telemetry", buffer_max + 40);
    assert_eq!(records.len(), buffer_max + 40);
    let qos0: std::collections::BTreeSet<u64> = records
        .iter()
        .filter_map(|(_, payload, _)| payload.strip_prefix("payload-")?.parse().ok())
        .filter(|seq| *seq < 1_000)
        .collect();
    assert_eq!(qos0.len(), buffer_max);
    let handoff = (buffer_max / 2) as u64;
    assert!((qos0_sent - handoff..qos0_sent).all(|seq| qos0.contains(&seq)));
    harness.bridge.shutdown();
}

#[test]
fn broker_lost_mid_stream_loses_no_acknowledged_record() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let harness = start(config(&bootstrap, 10_000, ""));
    for seq in 0..300 {
        send(
            &harness.bridge,
            record(
                &harness.bridge,
                "vehicle/car-3/event",
                "client-3",
                seq,
                true,
            ),
        );
    }
    wait_until("first acks", || harness.bridge.stats().acknowledged > 0);
    cluster.broker_down(-1).expect("broker down");
    for seq in 300..600 {
        send(
            &harness.bridge,
            record(
                &harness.bridge,
                "vehicle/car-3/event",
                "client-3",
                seq,
                true,
            ),
        );
    }
    wait_until("kafka reported unreachable", || {
        !harness.bridge.stats().kafka_up
    });
    cluster.broker_up(-1).expect("broker up");
    let acked = collect_acks(&harness.acks, 600);
    assert_eq!(acked.len(), 600);
    wait_until("kafka reported reachable again", || {
        harness.bridge.stats().kafka_up
    });
    // Idempotence keeps retried batches from being stored twice.
    let records = read_topic(&bootstrap, "telemetry", 600);
    assert_eq!(records.len(), 600);
    assert_eq!(harness.bridge.stats().failed, 0);
    harness.bridge.shutdown();
}

#[test]
fn slow_acknowledgements_drop_qos0_but_never_acknowledged_records() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    cluster
        .broker_round_trip_time(-1, Duration::from_millis(300))
        .expect("rtt");
    let buffer_max = 64;
    let harness = start(config(&bootstrap, buffer_max, ""));
    let qos0_sent = 2_000u64;
    for seq in 0..qos0_sent {
        send(
            &harness.bridge,
            record(
                &harness.bridge,
                "vehicle/car-4/telemetry",
                "client-4",
                seq,
                false,
            ),
        );
        if seq % 4 == 0 {
            send(
                &harness.bridge,
                record(
                    &harness.bridge,
                    "vehicle/car-4/event",
                    "client-4",
                    10_000 + seq,
                    true,
                ),
            );
        }
    }
    let acked = collect_acks(&harness.acks, 500);
    assert_eq!(acked.len(), 500);
    wait_until("qos0 settled", || {
        let stats = harness.bridge.stats();
        stats.buffered == 0 && stats.acknowledged + stats.dropped_buffer_full == qos0_sent + 500
    });
    let stats = harness.bridge.stats();
    assert!(stats.dropped_buffer_full > 0, "{stats:?}");
    assert_eq!(stats.failed, 0);
    harness.bridge.shutdown();
}

#[test]
fn shutdown_answers_every_outstanding_token() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    cluster.broker_down(-1).expect("broker down");
    let harness = start(config(&bootstrap, 100, ""));
    for seq in 0..25 {
        send(
            &harness.bridge,
            record(
                &harness.bridge,
                "vehicle/car-5/event",
                "client-5",
                seq,
                true,
            ),
        );
    }
    wait_until("records in flight", || {
        harness.bridge.stats().acked_in_flight == 25
    });
    harness.bridge.shutdown();
    let mut answered = BTreeMap::new();
    while let Ok(ack) = harness.acks.try_recv() {
        assert!(ack.outcome.is_err(), "nothing could be delivered");
        *answered.entry(ack.token).or_insert(0) += 1;
    }
    assert_eq!(answered.len(), 25);
    assert!(answered.values().all(|count| *count == 1));
}

fn produce_commands(bootstrap: &str, keys: &[&str]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("producer");
    for (index, key) in keys.iter().enumerate() {
        let payload = format!("command-{index}");
        producer
            .send(BaseRecord::to("commands").key(*key).payload(&payload))
            .map_err(|(error, _)| error)
            .expect("produce");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
}

fn committed(bootstrap: &str, group: &str) -> Offset {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    list.add_partition("commands", 0);
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .expect("committed offsets");
    committed
        .find_partition("commands", 0)
        .map(|element| element.offset())
        .unwrap_or(Offset::Invalid)
}

#[test]
fn inbound_commits_only_after_the_broker_accepted() {
    init_tracing();
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    // The bad key cannot fill one topic level: skipped, counted, and its offset settled.
    produce_commands(&bootstrap, &["car-1", "car-2", "a/b", "car-3", "car-4"]);
    let config = config(
        &bootstrap,
        100,
        r#"
[consumer]
"auto.offset.reset" = "earliest"
[[inbound]]
kafka_topic = "commands"
group_id = "ringmq-commands"
mqtt_topic = "vehicle/{key}/command"
qos = 1
"#,
    );
    let (ack_tx, _acks) = flume::bounded(16);
    let (inbound_tx, inbound) = flume::bounded(1_024);
    let bridge = Bridge::start(config, vec![ack_tx], inbound_tx).expect("bridge starts");

    let mut messages = Vec::new();
    let deadline = Instant::now() + WAIT_LIMIT;
    while messages.len() < 4 {
        let remaining = deadline.saturating_duration_since(Instant::now());
        messages.push(inbound.recv_timeout(remaining).expect("inbound message"));
    }
    let topics: Vec<&str> = messages
        .iter()
        .map(|message| message.topic.as_str())
        .collect();
    assert_eq!(
        topics,
        [
            "vehicle/car-1/command",
            "vehicle/car-2/command",
            "vehicle/car-3/command",
            "vehicle/car-4/command"
        ]
    );
    assert!(messages.iter().all(|message| message.qos == 1));
    assert_eq!(messages[0].payload, Bytes::from_static(b"command-0"));
    assert_eq!(messages[0].key, Some(Bytes::from_static(b"car-1")));

    // Nothing accepted yet: nothing committed.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(committed(&bootstrap, "ringmq-commands"), Offset::Invalid);

    // Accept the second only: the first still holds the commit back.
    messages[1].accept();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(committed(&bootstrap, "ringmq-commands"), Offset::Invalid);

    // Accept the first: offsets 0 and 1 are done, 2 (the bad key) is settled, 3 is pending.
    messages[0].accept();
    wait_until("commit through offset 2", || {
        committed(&bootstrap, "ringmq-commands") == Offset::Offset(3)
    });

    // A rejected message is offered again; accepting the retry completes the partition.
    messages[2].reject();
    let retried = inbound
        .recv_timeout(WAIT_LIMIT)
        .expect("rejected message offered again");
    assert_eq!(retried.id, messages[2].id);
    assert_eq!(retried.topic, "vehicle/car-3/command");
    retried.accept();
    messages[3].accept();
    wait_until("commit through the last offset", || {
        committed(&bootstrap, "ringmq-commands") == Offset::Offset(5)
    });
    let stats = bridge.stats();
    assert_eq!(stats.inbound_accepted, 4);
    assert_eq!(stats.dropped_invalid, 1);
    bridge.shutdown();
}
