//! Parked connections: a client idle for `park_after_idle_secs` gives up its task and poll and
//! waits in the shard's epoll set. Parking must be invisible to clients: everything the protocol
//! promises still happens to a parked client — deliveries, acknowledgements, PINGRESP, keepalive
//! expiry and its will, takeover, inbound topic aliases, shutdown.

use std::time::Duration;

use ringmq_tests::*;

/// A 2-shard broker that parks after one idle second, with its metrics port.
fn parking_broker() -> (BrokerProcess, u16) {
    let port = free_port();
    let broker = BrokerProcess::start_with_config(
        "[limits]\npark_after_idle_secs = 1\n",
        &["--metrics-listen", &format!("127.0.0.1:{port}")],
    );
    (broker, port)
}

fn metric(port: u16, name: &str) -> f64 {
    metric_total(&scrape_metrics(port), name, &[])
}

/// Waits until the broker has parked connections at least `total` times in all.
async fn parks_reach(port: u16, total: f64) {
    for _ in 0..60 {
        if metric(port, "ringmq_connections_parked_total") >= total {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!(
        "parks did not reach {total} within 15 s: {}",
        metric(port, "ringmq_connections_parked_total")
    );
}

/// Waits until at least `n` connections are parked (the gauge is published once a second).
async fn parked_at_least(port: u16, n: usize) {
    for _ in 0..60 {
        if metric(port, "ringmq_connections_parked") >= n as f64 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!(
        "{n} connections did not park within 15 s: {} parked",
        metric(port, "ringmq_connections_parked")
    );
}

#[tokio::test]
async fn parked_clients_still_publish_receive_and_ping() {
    let (mut broker, port) = parking_broker();
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let parked_before = metric(port, "ringmq_connections_parked_total");
        let topic = unique("park/deliver");
        let (mut sub, _) =
            RawClient::connected(broker.addr, connect(version, &unique("psub"), true, 60)).await;
        sub.subscribe(&topic, QoS::AtLeastOnce).await;
        let (mut publisher, _) =
            RawClient::connected(broker.addr, connect(version, &unique("ppub"), true, 60)).await;
        parks_reach(port, parked_before + 2.0).await;
        // A parked publisher is read again and acknowledged; a parked subscriber is written to.
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            publisher
                .publish(&topic, b"to a parked car", qos, false)
                .await;
            let got = sub.next_publish().await;
            assert_eq!(&got.payload[..], b"to a parked car");
            sub.ack(&got).await;
        }
        // Both park again, and a PINGREQ from a parked client gets its PINGRESP.
        parks_reach(port, parked_before + 4.0).await;
        assert_eq!(
            sub.ping().await,
            0,
            "nothing else arrives before the PINGRESP"
        );
        assert!(metric(port, "ringmq_connections_unparked_total") > 0.0);
        sub.disconnect().await;
        publisher.disconnect().await;
    }
    broker.assert_alive();
}

#[tokio::test]
async fn many_parked_subscribers_all_get_a_broadcast() {
    let (mut broker, port) = parking_broker();
    const CARS: usize = 200;
    let topic = unique("park/ota");
    let mut cars = Vec::new();
    for i in 0..CARS {
        let (mut c, _) =
            RawClient::connected(broker.addr, connect_v4(&unique(&format!("car{i}")))).await;
        c.subscribe(&topic, QoS::AtLeastOnce).await;
        cars.push(c);
    }
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v4(&unique("ota"))).await;
    parked_at_least(port, CARS).await;
    publisher
        .publish(&topic, b"firmware 2.1", QoS::AtLeastOnce, false)
        .await;
    for car in cars.iter_mut() {
        let got = car.next_publish().await;
        assert_eq!(&got.payload[..], b"firmware 2.1");
        car.ack(&got).await;
    }
    broker.assert_alive();
}

#[tokio::test]
async fn keepalive_expiry_of_a_parked_client_publishes_its_will() {
    let (mut broker, port) = parking_broker();
    let topic = unique("park/will-ka");
    let (mut watcher, _) = RawClient::connected(broker.addr, connect_v5(&unique("watch"))).await;
    watcher.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut c = connect(ProtocolVersion::V3_1_1, &unique("silent"), true, 3);
    c.will = Some(will(&topic, b"gone", QoS::AtLeastOnce, false));
    let (mut silent, _) = RawClient::connected(broker.addr, c).await;
    parked_at_least(port, 2).await;
    // [MQTT-3.1.2-24] closed after 1.5 × keepalive without a packet, parked or not; the will
    // goes out [MQTT-3.1.2-8].
    let got = match watcher.recv_within(Duration::from_secs(10)).await {
        Recv::Packet(Packet::Publish(p)) => p,
        other => panic!("expected the will after the keepalive timeout, got {other:?}"),
    };
    assert_eq!(&got.payload[..], b"gone");
    silent.expect_closed().await;
    broker.assert_alive();
}

#[tokio::test]
async fn a_parked_client_that_vanishes_publishes_its_will() {
    let (mut broker, port) = parking_broker();
    let topic = unique("park/will-lost");
    let (mut watcher, _) = RawClient::connected(broker.addr, connect_v5(&unique("watch"))).await;
    watcher.subscribe(&topic, QoS::AtLeastOnce).await;
    let mut c = connect_v5(&unique("crash"));
    c.will = Some(will(&topic, b"gone", QoS::AtLeastOnce, false));
    let (crash, _) = RawClient::connected(broker.addr, c).await;
    parked_at_least(port, 2).await;
    // [MQTT-3.1.2-8] the network connection closes without DISCONNECT.
    drop(crash);
    let got = watcher.next_publish().await;
    assert_eq!(&got.payload[..], b"gone");
    broker.assert_alive();
}

#[tokio::test]
async fn takeover_of_a_parked_v5_session_sends_disconnect_0x8e() {
    let (mut broker, port) = parking_broker();
    let topic = unique("park/takeover");
    let id = unique("twin");
    let mut c = connect_v5(&id);
    c.properties.session_expiry_interval = Some(60);
    let (mut first, _) = RawClient::connected(broker.addr, c).await;
    first.subscribe(&topic, QoS::AtLeastOnce).await;
    parked_at_least(port, 1).await;
    let mut resume = connect(ProtocolVersion::V5, &id, false, 60);
    resume.properties.session_expiry_interval = Some(60);
    let (mut second, ack) = RawClient::connected(broker.addr, resume).await;
    assert!(ack.session_present, "the parked session resumes");
    // [MQTT-3.1.4-3] the existing connection is closed; v5 says why (0x8E).
    first.expect_disconnect(ReasonCode::SessionTakenOver).await;
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v5(&unique("pub"))).await;
    publisher
        .publish(&topic, b"after takeover", QoS::AtLeastOnce, false)
        .await;
    let got = second.next_publish().await;
    assert_eq!(&got.payload[..], b"after takeover");
    broker.assert_alive();
}

#[tokio::test]
async fn a_parked_v5_client_keeps_its_inbound_topic_aliases() {
    let (mut broker, port) = parking_broker();
    let topic = unique("park/alias");
    let (mut sub, _) = RawClient::connected(broker.addr, connect_v5(&unique("sub"))).await;
    sub.subscribe(&topic, QoS::AtMostOnce).await;
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v5(&unique("pub"))).await;
    let mut first = publish(&topic, b"1", QoS::AtLeastOnce, false);
    first.properties.topic_alias = Some(1);
    publisher.publish_packet(first).await;
    assert_eq!(sub.next_publish().await.topic.as_str(), topic);
    parked_at_least(port, 2).await;
    // [MQTT-3.3.2-12] the alias set before parking still maps to the topic.
    let mut second = publish("", b"2", QoS::AtLeastOnce, false);
    second.properties.topic_alias = Some(1);
    assert_eq!(
        publisher.publish_packet(second).await,
        ReasonCode::Success,
        "alias known after parking"
    );
    let got = sub.next_publish().await;
    assert_eq!(got.topic.as_str(), topic);
    assert_eq!(&got.payload[..], b"2");
    broker.assert_alive();
}

#[tokio::test]
async fn shutdown_reaches_parked_clients() {
    let (broker, port) = parking_broker();
    let (mut c, _) = RawClient::connected(broker.addr, connect_v5(&unique("bye"))).await;
    parked_at_least(port, 1).await;
    let stopper = std::thread::spawn(move || broker.stop());
    c.expect_disconnect(ReasonCode::ServerShuttingDown).await;
    let status = stopper.join().expect("stop thread");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn mosquitto_clients_across_parking() {
    if !mosquitto::available() {
        return;
    }
    let (mut broker, port) = parking_broker();
    let topic = unique("park/mosquitto");
    let p = broker.port.to_string();
    let sub = mosquitto::spawn(
        "mosquitto_sub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-t",
            &topic,
            "-q",
            "1",
            "-k",
            "60",
            "-C",
            "2",
            "-V",
            "mqttv311",
        ],
    );
    parks_reach(port, 1.0).await;
    for (i, message) in ["first", "second"].into_iter().enumerate() {
        mosquitto::run(
            "mosquitto_pub",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &p,
                "-t",
                &topic,
                "-q",
                "1",
                "-m",
                message,
            ],
            Duration::from_secs(10),
        );
        // Let the subscriber park again before the second message.
        if i == 0 {
            parks_reach(port, 2.0).await;
        }
    }
    let (status, lines) = sub.finish(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?} {lines:?}");
    assert_eq!(lines, vec!["first", "second"]);
    broker.assert_alive();
}
