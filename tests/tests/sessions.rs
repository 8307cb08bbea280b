//! Persistent sessions: offline queueing, the queue bound, v5 session and message expiry,
//! and takeover.

use std::time::Duration;

use ringmq_tests::*;

#[tokio::test]
async fn offline_messages_delivered_on_reconnect() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("sess/offline");
    let id = unique("offline");
    let persistent = connect(ProtocolVersion::V3_1_1, &id, false, 60);
    let (mut sub, _) = RawClient::connected(broker.addr, persistent.clone()).await;
    sub.subscribe(&topic, QoS::ExactlyOnce).await;
    sub.disconnect().await;
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v4(&unique("pub"))).await;
    publisher
        .publish(&topic, b"q0", QoS::AtMostOnce, false)
        .await;
    publisher
        .publish(&topic, b"q1", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish(&topic, b"q2", QoS::ExactlyOnce, false)
        .await;
    // [MQTT-3.1.2-4] the subscription survived and QoS 1/2 were stored; QoS 0 is not queued
    // offline by default (queue_qos0_offline = false).
    let (mut sub, ack) = RawClient::connected(broker.addr, persistent).await;
    assert!(ack.session_present);
    let a = sub.next_publish().await;
    assert_eq!((&a.payload[..], a.qos), (&b"q1"[..], QoS::AtLeastOnce));
    sub.ack(&a).await;
    let b = sub.next_publish().await;
    assert_eq!((&b.payload[..], b.qos), (&b"q2"[..], QoS::ExactlyOnce));
    sub.ack(&b).await;
    sub.expect_silence(Duration::from_millis(300)).await;
    broker.assert_alive();
}

#[tokio::test]
async fn rumqttc_persistent_session() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("sess/rumqttc");
    let id = unique("rq-persist");
    let mut options = rumqttc::MqttOptions::new(&id, "127.0.0.1", broker.port);
    options.set_clean_session(false);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options.clone(), 10);
    client
        .subscribe(&topic, rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    bounded(RECV_TIMEOUT, "suback", async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) =
                eventloop.poll().await.expect("loop")
            {
                break;
            }
        }
    })
    .await;
    client.disconnect().await.expect("disconnect");
    bounded(RECV_TIMEOUT, "disconnect", async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v4(&unique("pub"))).await;
    publisher
        .publish(&topic, b"stored", QoS::AtLeastOnce, false)
        .await;
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    let payload = bounded(RECV_TIMEOUT, "stored message", async {
        loop {
            match eventloop.poll().await.expect("loop") {
                rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)) => {
                    assert!(ack.session_present)
                }
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => return p.payload,
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(&payload[..], b"stored");
    broker.assert_alive();
}

#[tokio::test]
async fn offline_queue_is_bounded() {
    // One shard: the bound is per session, and with two shards a publish acknowledged on the
    // publisher's shard may still be crossing to the subscriber's when it reconnects (then it
    // lands in a queue that has room again, which is correct but makes the count racy).
    let mut broker = BrokerProcess::start_with_config(
        "[limits]\nsession_queue_len_max = 5\n",
        &["--shards", "1"],
    );
    let topic = unique("sess/bounded");
    let id = unique("bounded");
    let persistent = connect(ProtocolVersion::V3_1_1, &id, false, 60);
    let (mut sub, _) = RawClient::connected(broker.addr, persistent.clone()).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v4(&unique("pub"))).await;
    for i in 0..12u8 {
        publisher
            .publish(&topic, &[i], QoS::AtLeastOnce, false)
            .await;
    }
    let (mut sub, _) = RawClient::connected(broker.addr, persistent).await;
    // Overflow policy: beyond the limit new messages are dropped, the oldest kept.
    for i in 0..5u8 {
        let p = sub.next_publish().await;
        assert_eq!(&p.payload[..], &[i]);
        sub.ack(&p).await;
    }
    sub.expect_silence(Duration::from_millis(500)).await;
    broker.assert_alive();
}

#[tokio::test]
async fn v5_session_expiry() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("sess/expiry");
    let id = unique("expires");
    let mut c = connect_v5(&id);
    c.properties.session_expiry_interval = Some(1);
    let (mut sub, _) = RawClient::connected(broker.addr, c).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    sub.disconnect().await;
    // Within the expiry the session is there.
    let mut resume = connect(ProtocolVersion::V5, &id, false, 60);
    resume.properties.session_expiry_interval = Some(1);
    let (sub, ack) = RawClient::connected(broker.addr, resume.clone()).await;
    assert!(ack.session_present);
    sub.disconnect().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v5(&unique("pub"))).await;
    publisher
        .publish(&topic, b"late", QoS::AtLeastOnce, false)
        .await;
    // [MQTT-3.1.2-23] after the interval the session is gone.
    let (mut sub, ack) = RawClient::connected(broker.addr, resume).await;
    assert!(!ack.session_present);
    sub.expect_silence(Duration::from_millis(400)).await;
    broker.assert_alive();
}

#[tokio::test]
async fn v5_message_expiry() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("sess/msg-expiry");
    let id = unique("msg-expiry");
    let mut c = connect_v5(&id);
    c.properties.session_expiry_interval = Some(60);
    let (mut sub, _) = RawClient::connected(broker.addr, c).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v5(&unique("pub"))).await;
    let mut short = publish(&topic, b"short", QoS::AtLeastOnce, false);
    short.properties.message_expiry_interval = Some(1);
    publisher.publish_packet(short).await;
    let mut long = publish(&topic, b"long", QoS::AtLeastOnce, false);
    long.properties.message_expiry_interval = Some(60);
    publisher.publish_packet(long).await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut resume = connect(ProtocolVersion::V5, &id, false, 60);
    resume.properties.session_expiry_interval = Some(60);
    let (mut sub, _) = RawClient::connected(broker.addr, resume).await;
    // [MQTT-3.3.2-5] the expired one is dropped; [MQTT-3.3.2-6] the other carries what is left.
    let got = sub.next_publish().await;
    assert_eq!(&got.payload[..], b"long");
    let left = got
        .properties
        .message_expiry_interval
        .expect("remaining expiry");
    assert!(left < 60 && left > 0, "remaining interval {left}");
    sub.ack(&got).await;
    sub.expect_silence(Duration::from_millis(300)).await;
    broker.assert_alive();
}

#[tokio::test]
async fn takeover_v4_closes_old_connection() {
    let mut broker = BrokerProcess::start(&[]);
    let id = unique("twin");
    let (mut first, _) = RawClient::connected(broker.addr, connect_v4(&id)).await;
    let (mut second, _) = RawClient::connected(broker.addr, connect_v4(&id)).await;
    // [MQTT-3.1.4-3] the existing connection is closed.
    first.expect_closed().await;
    assert_eq!(second.ping().await, 0);
    broker.assert_alive();
}

#[tokio::test]
async fn takeover_v5_disconnect_0x8e_no_loss() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("sess/takeover");
    let id = unique("twin5");
    let mut c = connect_v5(&id);
    c.properties.session_expiry_interval = Some(60);
    let (mut first, _) = RawClient::connected(broker.addr, c).await;
    first.subscribe(&topic, QoS::AtLeastOnce).await;
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v5(&unique("pub"))).await;
    for i in 0..5u8 {
        publisher
            .publish(&topic, &[i], QoS::AtLeastOnce, false)
            .await;
    }
    // The first connection receives but does not acknowledge.
    for i in 0..5u8 {
        assert_eq!(&first.next_publish().await.payload[..], &[i]);
    }
    let mut resume = connect(ProtocolVersion::V5, &id, false, 60);
    resume.properties.session_expiry_interval = Some(60);
    let (mut second, ack) = RawClient::connected(broker.addr, resume).await;
    assert!(ack.session_present);
    first.expect_disconnect(ReasonCode::SessionTakenOver).await;
    for i in 5..8u8 {
        publisher
            .publish(&topic, &[i], QoS::AtLeastOnce, false)
            .await;
    }
    let mut got = Vec::new();
    for _ in 0..8 {
        let p = second.next_publish().await;
        got.push(p.payload[0]);
        second.ack(&p).await;
    }
    assert_eq!(got, (0..8u8).collect::<Vec<_>>(), "nothing lost, in order");
    second.expect_silence(Duration::from_millis(300)).await;
    broker.assert_alive();
}
