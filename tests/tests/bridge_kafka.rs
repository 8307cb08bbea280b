//! The `ringmq` binary with a `[bridge.kafka]` section against librdkafka's mock cluster, which
//! speaks the Kafka protocol on a loopback port (the real-broker test against tansu lives in
//! `bridge-kafka/tests/tansu.rs`). MQTT side through the raw client; Kafka side through an
//! independent rdkafka consumer/producer in this test process.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use ringmq_tests::*;

fn cluster() -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("telemetry", 1, 1).expect("topic");
    cluster.create_topic("events", 1, 1).expect("topic");
    cluster.create_topic("commands", 1, 1).expect("topic");
    cluster
}

fn broker_config(bootstrap: &str) -> String {
    format!(
        r#"
[bridge.kafka]
bootstrap_servers = "{bootstrap}"
buffer_max_messages = 10000
[bridge.kafka.producer]
"linger.ms" = 5
"reconnect.backoff.ms" = 50
"reconnect.backoff.max.ms" = 200
[bridge.kafka.consumer]
"auto.offset.reset" = "earliest"
[[bridge.kafka.rule]]
filter = "vehicle/+/telemetry"
kafka_topic = "telemetry"
key = "client_id"
[[bridge.kafka.rule]]
filter = "vehicle/+/event"
kafka_topic = "events"
key = "level:2"
ack = "kafka"
[[bridge.kafka.inbound]]
kafka_topic = "commands"
group_id = "ringmq-commands"
mqtt_topic = "vehicle/{{key}}/command"
qos = 1
"#
    )
}

/// A consumed Kafka record: key, payload, headers.
type Record = (Option<Vec<u8>>, Vec<u8>, Vec<(String, Vec<u8>)>);

fn consume(bootstrap: &str, topic: &str, want: usize) -> Vec<Record> {
    consume_until(bootstrap, topic, want, Duration::from_secs(60))
}

/// Reads `topic` from the start until `want` records arrived or `wait` passed.
fn consume_until(bootstrap: &str, topic: &str, want: usize, wait: Duration) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("check-{topic}-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = Instant::now() + wait;
    while out.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            out.push((
                m.key().map(<[u8]>::to_vec),
                m.payload().unwrap_or_default().to_vec(),
                headers,
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_reaches_kafka_with_key_and_headers_and_commands_come_back() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let broker = BrokerProcess::start_with_config(&broker_config(&bootstrap), &[]);

    // Commands: Kafka → MQTT. The vehicle subscribes first.
    let (mut vehicle, _) = RawClient::connected(broker.addr, connect_v5("car-42")).await;
    vehicle
        .subscribe("vehicle/car-42/command", QoS::AtLeastOnce)
        .await;

    // Telemetry: MQTT → Kafka, 200 messages from 4 vehicles (3.1.1 and 5.0, with user properties).
    let mut cars = Vec::new();
    for i in 0..4 {
        let version = if i % 2 == 0 {
            ProtocolVersion::V3_1_1
        } else {
            ProtocolVersion::V5
        };
        let (c, _) =
            RawClient::connected(broker.addr, connect(version, &format!("car-{i}"), true, 60))
                .await;
        cars.push((i, version, c));
    }
    for m in 0..50 {
        for (i, version, c) in cars.iter_mut() {
            let mut p = publish(
                &format!("vehicle/car-{i}/telemetry"),
                format!("{i}:{m}").as_bytes(),
                QoS::AtMostOnce,
                false,
            );
            if *version == ProtocolVersion::V5 {
                p.properties
                    .user_properties
                    .push((Utf8Bytes::from("unit"), Utf8Bytes::from("kmh")));
            }
            c.publish_packet(p).await;
        }
    }
    let bootstrap_c = bootstrap.clone();
    let records = tokio::task::spawn_blocking(move || consume(&bootstrap_c, "telemetry", 200))
        .await
        .expect("consumer");
    assert_eq!(
        records.len(),
        200,
        "every telemetry message reached kafka once"
    );
    let mut seen = std::collections::HashSet::new();
    for (key, payload, headers) in &records {
        let text = String::from_utf8(payload.clone()).expect("utf8");
        assert!(seen.insert(text.clone()), "duplicate {text}");
        let (i, _) = text.split_once(':').expect("i:m");
        assert_eq!(
            key.as_deref(),
            Some(format!("car-{i}").as_bytes()),
            "key is the client id"
        );
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            header("mqtt_topic").as_deref(),
            Some(format!("vehicle/car-{i}/telemetry").as_bytes())
        );
        assert_eq!(
            header("mqtt_client_id").as_deref(),
            Some(format!("car-{i}").as_bytes())
        );
        assert_eq!(header("mqtt_qos").as_deref(), Some(&b"0"[..]));
        assert!(header("mqtt_publish_time_ms").is_some());
        if i == "1" || i == "3" {
            assert_eq!(
                header("unit").as_deref(),
                Some(&b"kmh"[..]),
                "v5 user property as a header"
            );
        }
    }

    // A command produced to Kafka arrives on the vehicle's command topic.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");
    producer
        .send(BaseRecord::to("commands").key("car-42").payload("unlock"))
        .map_err(|(e, _)| e)
        .expect("produce command");
    producer.flush(Duration::from_secs(10)).expect("flush");
    let command = vehicle.next_publish().await;
    assert_eq!(command.topic.as_str(), "vehicle/car-42/command");
    assert_eq!(&command.payload[..], b"unlock");
    vehicle.ack(&command).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_with_kafka_ack_is_acknowledged_only_once_kafka_stored_it() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let broker = BrokerProcess::start_with_config(&broker_config(&bootstrap), &[]);
    let (mut car, _) = RawClient::connected(broker.addr, connect_v5("car-7")).await;

    // Kafka up: PUBACK arrives (after Kafka acknowledged).
    assert_eq!(
        car.publish_packet(publish(
            "vehicle/car-7/event",
            b"door-open",
            QoS::AtLeastOnce,
            false
        ))
        .await,
        ReasonCode::Success
    );
    // Kafka down: no PUBACK; the publisher is held by its inflight window instead of losing data.
    cluster.broker_down(1).expect("broker down");
    let mut p = publish(
        "vehicle/car-7/event",
        b"door-closed",
        QoS::AtLeastOnce,
        false,
    );
    p.packet_id = Some(pid(2));
    car.send_packet(&Packet::Publish(p)).await;
    car.expect_silence(Duration::from_secs(2)).await;
    // Kafka back: the PUBACK follows.
    cluster.broker_up(1).expect("broker up");
    match car.next().await {
        Packet::PubAck(ack) => {
            assert_eq!(ack.packet_id, pid(2));
            assert_eq!(ack.reason_code, ReasonCode::Success);
        }
        other => panic!("expected PUBACK after kafka came back, got {other:?}"),
    }
    let bootstrap_c = bootstrap.clone();
    let records = tokio::task::spawn_blocking(move || consume(&bootstrap_c, "events", 2))
        .await
        .expect("consumer");
    let payloads: Vec<_> = records.iter().map(|r| r.1.clone()).collect();
    assert!(
        payloads.contains(&b"door-open".to_vec()) && payloads.contains(&b"door-closed".to_vec()),
        "{payloads:?}"
    );
    // Key is topic level 2.
    assert!(records
        .iter()
        .all(|r| r.0.as_deref() == Some(&b"car-7"[..])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_serves_mqtt_while_kafka_is_unreachable() {
    // Nothing listens on this port: the bridge keeps retrying, MQTT works meanwhile.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let broker =
        BrokerProcess::start_with_config(&broker_config(&format!("127.0.0.1:{port}")), &[]);
    let (mut sub, _) = RawClient::connected(broker.addr, connect_v4("dash")).await;
    sub.subscribe("vehicle/+/telemetry", QoS::AtMostOnce).await;
    let (mut car, _) = RawClient::connected(broker.addr, connect_v4("car-9")).await;
    for m in 0..20 {
        car.publish(
            "vehicle/car-9/telemetry",
            format!("{m}").as_bytes(),
            QoS::AtMostOnce,
            false,
        )
        .await;
    }
    for m in 0..20 {
        let p = sub.next_publish().await;
        assert_eq!(p.payload, format!("{m}").into_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_with_kafka_ack_holds_pubrec_even_for_a_retransmission() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let broker = BrokerProcess::start_with_config(&broker_config(&bootstrap), &[]);
    let (mut car, _) = RawClient::connected(broker.addr, connect_v5("car-8")).await;
    cluster.broker_down(1).expect("broker down");
    let mut p = publish("vehicle/car-8/event", b"crash", QoS::ExactlyOnce, false);
    p.packet_id = Some(pid(5));
    car.send_packet(&Packet::Publish(p.clone())).await;
    car.expect_silence(Duration::from_secs(1)).await;
    // The client retransmits (DUP); Kafka still has not stored it, so still no PUBREC.
    p.dup = true;
    car.send_packet(&Packet::Publish(p)).await;
    car.expect_silence(Duration::from_secs(1)).await;
    cluster.broker_up(1).expect("broker up");
    match car.next().await {
        Packet::PubRec(ack) => assert_eq!(
            (ack.packet_id, ack.reason_code),
            (pid(5), ReasonCode::Success)
        ),
        other => panic!("expected PUBREC once kafka stored it, got {other:?}"),
    }
    car.send_packet(&Packet::PubRel(PubAck::new(pid(5)))).await;
    match car.next().await {
        Packet::PubComp(ack) => assert_eq!(ack.packet_id, pid(5)),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    // Exactly one record in Kafka: the retransmission was not bridged again (read for 5 s).
    let records = tokio::task::spawn_blocking(move || {
        consume_until(&bootstrap, "events", 2, Duration::from_secs(5))
    })
    .await
    .expect("consumer");
    assert_eq!(records.len(), 1, "one record for one QoS 2 message");
}
