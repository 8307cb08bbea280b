//! Last will: published on abnormal close, keepalive timeout and protocol error; not on normal
//! DISCONNECT; v5 DISCONNECT 0x04; v5 Will Delay Interval.

use std::time::Duration;

use ringmq_tests::*;

async fn watcher(broker: &BrokerProcess, topic: &str) -> RawClient {
    let (mut w, _) = RawClient::connected(broker.addr, connect_v5(&unique("watch"))).await;
    w.subscribe(topic, QoS::AtLeastOnce).await;
    w
}

fn with_will(mut c: Connect, topic: &str, delay: Option<u32>) -> Connect {
    let mut w = will(topic, b"gone", QoS::AtLeastOnce, false);
    w.properties.will_delay_interval = delay;
    c.will = Some(w);
    c
}

async fn expect_will(w: &mut RawClient) {
    let got = w.next_publish().await;
    assert_eq!(&got.payload[..], b"gone");
    w.ack(&got).await;
}

#[tokio::test]
async fn will_on_abnormal_close() {
    let mut broker = BrokerProcess::start(&[]);
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let topic = unique("will/abnormal");
        let mut w = watcher(&broker, &topic).await;
        let (c, _) = RawClient::connected(
            broker.addr,
            with_will(connect(version, &unique("dies"), true, 60), &topic, None),
        )
        .await;
        // [MQTT-3.1.2-8] the network connection closes without DISCONNECT.
        drop(c);
        expect_will(&mut w).await;
    }
    broker.assert_alive();
}

#[tokio::test]
async fn rumqttc_will_on_abnormal_close() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("will/rumqttc");
    let mut w = watcher(&broker, &topic).await;
    let mut options = rumqttc::MqttOptions::new(unique("rq-dies"), "127.0.0.1", broker.port);
    options.set_last_will(rumqttc::LastWill::new(
        &topic,
        "gone",
        rumqttc::QoS::AtLeastOnce,
        false,
    ));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    bounded(RECV_TIMEOUT, "connack", async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) =
                eventloop.poll().await.expect("loop")
            {
                break;
            }
        }
    })
    .await;
    // Dropping the event loop drops the socket without DISCONNECT.
    drop(eventloop);
    drop(client);
    expect_will(&mut w).await;
    broker.assert_alive();
}

#[tokio::test]
async fn will_on_keepalive_timeout() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("will/ka");
    let mut w = watcher(&broker, &topic).await;
    let (_silent, _) = RawClient::connected(
        broker.addr,
        with_will(
            connect(ProtocolVersion::V3_1_1, &unique("silent"), true, 1),
            &topic,
            None,
        ),
    )
    .await;
    let got = match w.recv_within(Duration::from_secs(6)).await {
        Recv::Packet(Packet::Publish(p)) => p,
        other => panic!("expected the will after the keepalive timeout, got {other:?}"),
    };
    assert_eq!(&got.payload[..], b"gone");
    broker.assert_alive();
}

#[tokio::test]
async fn will_on_protocol_error_close() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("will/proto");
    let mut w = watcher(&broker, &topic).await;
    let (mut c, _) = RawClient::connected(
        broker.addr,
        with_will(connect_v4(&unique("bad")), &topic, None),
    )
    .await;
    // Packet type 0 is reserved: malformed, the server closes [MQTT-4.8.0-1] and publishes the will.
    c.send_bytes(&[0x00, 0x00]).await;
    c.expect_closed().await;
    expect_will(&mut w).await;
    broker.assert_alive();
}

#[tokio::test]
async fn no_will_on_normal_disconnect() {
    let mut broker = BrokerProcess::start(&[]);
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let topic = unique("will/normal");
        let mut w = watcher(&broker, &topic).await;
        let (c, _) = RawClient::connected(
            broker.addr,
            with_will(connect(version, &unique("polite"), true, 60), &topic, None),
        )
        .await;
        // [MQTT-3.1.2-10] DISCONNECT removes the will.
        c.disconnect().await;
        w.expect_silence(Duration::from_millis(700)).await;
    }
    broker.assert_alive();
}

#[tokio::test]
async fn v5_disconnect_with_will_message() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("will/0x04");
    let mut w = watcher(&broker, &topic).await;
    let (mut c, _) = RawClient::connected(
        broker.addr,
        with_will(connect_v5(&unique("wants-will")), &topic, None),
    )
    .await;
    // 3.14.2.1: reason 0x04 disconnects normally but the will is published.
    c.send_packet(&Packet::Disconnect(Disconnect {
        reason_code: ReasonCode::DisconnectWithWillMessage,
        properties: DisconnectProperties::default(),
    }))
    .await;
    c.expect_closed().await;
    expect_will(&mut w).await;
    broker.assert_alive();
}

#[tokio::test]
async fn v5_will_delay_publishes_later() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("will/delay");
    let mut w = watcher(&broker, &topic).await;
    let mut c = with_will(connect_v5(&unique("delayed")), &topic, Some(2));
    c.properties.session_expiry_interval = Some(60);
    let (client, _) = RawClient::connected(broker.addr, c).await;
    drop(client);
    // [MQTT-3.1.3-9] not before the delay...
    w.expect_silence(Duration::from_millis(800)).await;
    // ...but after it.
    match w.recv_within(Duration::from_secs(6)).await {
        Recv::Packet(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"gone"),
        other => panic!("expected the delayed will, got {other:?}"),
    }
    broker.assert_alive();
}

#[tokio::test]
async fn v5_will_delay_cancelled_by_reconnect() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("will/cancel");
    let mut w = watcher(&broker, &topic).await;
    let id = unique("back-soon");
    let mut c = with_will(connect_v5(&id), &topic, Some(2));
    c.properties.session_expiry_interval = Some(60);
    let (client, _) = RawClient::connected(broker.addr, c).await;
    drop(client);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut resume = connect(ProtocolVersion::V5, &id, false, 60);
    resume.properties.session_expiry_interval = Some(60);
    let (back, ack) = RawClient::connected(broker.addr, resume).await;
    assert!(ack.session_present);
    // [MQTT-3.1.3-9] reconnecting before the delay cancels the will.
    w.expect_silence(Duration::from_secs(3)).await;
    drop(back);
    broker.assert_alive();
}

#[tokio::test]
async fn v5_will_goes_out_when_session_ends_first() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("will/expiry");
    let mut w = watcher(&broker, &topic).await;
    let mut c = with_will(connect_v5(&unique("short-session")), &topic, Some(30));
    c.properties.session_expiry_interval = Some(1);
    let (client, _) = RawClient::connected(broker.addr, c).await;
    drop(client);
    // 3.1.3.2.2: published when the delay elapses or the session ends, whichever first.
    match w.recv_within(Duration::from_secs(8)).await {
        Recv::Packet(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"gone"),
        other => panic!("expected the will at session end, got {other:?}"),
    }
    broker.assert_alive();
}
