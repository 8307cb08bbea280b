//! QoS 0/1/2 in both directions, packet identifiers, QoS downgrade, overlapping subscriptions,
//! the v5 Receive Maximum and redelivery on resume.

use std::collections::HashSet;
use std::time::Duration;

use ringmq_tests::*;

#[tokio::test]
async fn raw_qos_matrix_both_directions() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("qos/matrix");
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        for granted in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let (mut sub, _) =
                RawClient::connected(broker.addr, connect(version, &unique("sub"), true, 60)).await;
            let codes = sub.subscribe(&topic, granted).await;
            assert_eq!(codes.len(), 1);
            assert_eq!(codes[0].code(), granted as u8, "granted QoS");
            let (mut publisher, _) =
                RawClient::connected(broker.addr, connect(version, &unique("pub"), true, 60)).await;
            for sent in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                let payload = format!("{sent:?}->{granted:?}");
                publisher
                    .publish(&topic, payload.as_bytes(), sent, false)
                    .await;
                let got = sub.next_publish().await;
                assert_eq!(got.payload, payload.as_bytes());
                assert_eq!(got.topic.as_str(), topic);
                // [MQTT-3.8.4-8] delivered at min(published, granted).
                assert_eq!(got.qos, sent.min(granted));
                // [MQTT-2.2.1-2] QoS 0 has no packet id; QoS 1/2 have one.
                assert_eq!(got.packet_id.is_some(), got.qos != QoS::AtMostOnce);
                assert!(!got.dup);
                sub.ack(&got).await;
            }
            sub.disconnect().await;
            publisher.disconnect().await;
        }
    }
    broker.assert_alive();
}

#[tokio::test]
async fn inflight_packet_ids_are_distinct() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("qos/ids");
    let (mut sub, _) = RawClient::connected(broker.addr, connect_v4(&unique("sub"))).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v4(&unique("pub"))).await;
    for i in 0..10u8 {
        publisher
            .publish(&topic, &[i], QoS::AtLeastOnce, false)
            .await;
    }
    let mut ids = HashSet::new();
    for i in 0..10u8 {
        let p = sub.next_publish().await;
        assert_eq!(&p.payload[..], &[i], "in order [MQTT-4.6.0-5]");
        // [MQTT-2.2.1-3] an id in use is not reused before its ack.
        assert!(ids.insert(p.packet_id.expect("id")), "duplicate packet id");
    }
    broker.assert_alive();
}

#[tokio::test]
async fn rumqttc_qos1_and_qos2_round_trip() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("qos/rumqttc");
    let mut options = rumqttc::MqttOptions::new(unique("rq-sub"), "127.0.0.1", broker.port);
    options.set_keep_alive(Duration::from_secs(30));
    let (sub, mut sub_loop) = rumqttc::AsyncClient::new(options, 10);
    sub.subscribe(&topic, rumqttc::QoS::ExactlyOnce)
        .await
        .expect("subscribe");
    bounded(RECV_TIMEOUT, "suback", async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(ack)) =
                sub_loop.poll().await.expect("sub loop")
            {
                assert_eq!(
                    ack.return_codes,
                    vec![rumqttc::SubscribeReasonCode::Success(
                        rumqttc::QoS::ExactlyOnce
                    )]
                );
                break;
            }
        }
    })
    .await;
    let options = rumqttc::MqttOptions::new(unique("rq-pub"), "127.0.0.1", broker.port);
    let (publisher, mut pub_loop) = rumqttc::AsyncClient::new(options, 10);
    publisher
        .publish(&topic, rumqttc::QoS::AtLeastOnce, false, "one")
        .await
        .expect("publish");
    publisher
        .publish(&topic, rumqttc::QoS::ExactlyOnce, false, "two")
        .await
        .expect("publish");
    let pub_task = tokio::spawn(async move {
        let mut acked = 0;
        while acked < 2 {
            match pub_loop.poll().await.expect("pub loop") {
                rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))
                | rumqttc::Event::Incoming(rumqttc::Packet::PubComp(_)) => acked += 1,
                _ => {}
            }
        }
    });
    let got = bounded(RECV_TIMEOUT, "two publishes", async {
        let mut got = Vec::new();
        while got.len() < 2 {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) =
                sub_loop.poll().await.expect("sub loop")
            {
                got.push((p.qos, p.payload.to_vec()));
            }
        }
        got
    })
    .await;
    assert_eq!(
        got,
        vec![
            (rumqttc::QoS::AtLeastOnce, b"one".to_vec()),
            (rumqttc::QoS::ExactlyOnce, b"two".to_vec())
        ]
    );
    bounded(RECV_TIMEOUT, "publisher acks", pub_task)
        .await
        .expect("publisher task");
    broker.assert_alive();
}

#[tokio::test]
async fn overlapping_subscriptions_one_copy_highest_qos_all_ids() {
    let mut broker = BrokerProcess::start(&[]);
    let base = unique("overlap");
    let (mut sub, _) = RawClient::connected(broker.addr, connect_v5(&unique("sub"))).await;
    let f1 = format!("{base}/+");
    let f2 = format!("{base}/#");
    assert_eq!(
        sub.subscribe_with(vec![(&f1, opts(QoS::AtLeastOnce))], Some(1))
            .await,
        vec![ReasonCode::GrantedQoS1]
    );
    assert_eq!(
        sub.subscribe_with(vec![(&f2, opts(QoS::ExactlyOnce))], Some(2))
            .await,
        vec![ReasonCode::GrantedQoS2]
    );
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v5(&unique("pub"))).await;
    publisher
        .publish(&format!("{base}/x"), b"once", QoS::ExactlyOnce, false)
        .await;
    let got = sub.next_publish().await;
    // [MQTT-3.3.4-2] one copy at the maximum QoS; [MQTT-3.3.4-3] every subscription identifier.
    assert_eq!(got.qos, QoS::ExactlyOnce);
    let mut ids = got.properties.subscription_identifiers.to_vec();
    ids.sort();
    assert_eq!(ids, vec![1, 2]);
    sub.ack(&got).await;
    sub.expect_silence(Duration::from_millis(300)).await;
    broker.assert_alive();
}

#[tokio::test]
async fn v5_receive_maximum_exceeded_0x93() {
    let mut broker = BrokerProcess::start_with_config("[limits]\nreceive_maximum = 2\n", &[]);
    let (mut c, ack) = RawClient::connected(broker.addr, connect_v5(&unique("rm"))).await;
    assert_eq!(ack.properties.receive_maximum, Some(2));
    let topic = unique("rm/t");
    for id in 1..=2u16 {
        let mut p = publish(&topic, b"x", QoS::ExactlyOnce, false);
        p.packet_id = Some(pid(id));
        c.send_packet(&Packet::Publish(p)).await;
        assert!(matches!(c.next().await, Packet::PubRec(a) if a.packet_id == pid(id)));
    }
    // [MQTT-3.3.4-9] a third unacknowledged QoS 2 PUBLISH exceeds Receive Maximum.
    let mut p = publish(&topic, b"x", QoS::ExactlyOnce, false);
    p.packet_id = Some(pid(3));
    c.send_packet(&Packet::Publish(p)).await;
    c.expect_disconnect(ReasonCode::ReceiveMaximumExceeded)
        .await;
    broker.assert_alive();
}

#[tokio::test]
async fn v5_receive_maximum_not_exceeded_when_released() {
    let mut broker = BrokerProcess::start_with_config("[limits]\nreceive_maximum = 2\n", &[]);
    let (mut c, _) = RawClient::connected(broker.addr, connect_v5(&unique("rm-ok"))).await;
    let topic = unique("rm/t");
    for id in 1..=6u16 {
        let mut p = publish(&topic, b"x", QoS::ExactlyOnce, false);
        p.packet_id = Some(pid(id));
        c.publish_packet(p).await;
    }
    c.disconnect().await;
    broker.assert_alive();
}

#[tokio::test]
async fn qos2_duplicate_not_delivered_twice() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("qos2/dup");
    let (mut sub, _) = RawClient::connected(broker.addr, connect_v4(&unique("sub"))).await;
    sub.subscribe(&topic, QoS::ExactlyOnce).await;
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v4(&unique("pub"))).await;
    let p = publish(&topic, b"exactly", QoS::ExactlyOnce, false);
    publisher.send_packet(&Packet::Publish(p.clone())).await;
    assert!(matches!(publisher.next().await, Packet::PubRec(_)));
    // Retransmission with DUP before PUBREL [MQTT-4.3.3-9]: acknowledged, not delivered again.
    let mut again = p;
    again.dup = true;
    publisher.send_packet(&Packet::Publish(again)).await;
    assert!(matches!(publisher.next().await, Packet::PubRec(_)));
    publisher
        .send_packet(&Packet::PubRel(PubAck::new(pid(1))))
        .await;
    assert!(matches!(publisher.next().await, Packet::PubComp(_)));
    let got = sub.next_publish().await;
    assert_eq!(&got.payload[..], b"exactly");
    sub.ack(&got).await;
    sub.expect_silence(Duration::from_millis(300)).await;
    broker.assert_alive();
}

#[tokio::test]
async fn unacknowledged_redelivered_with_dup_on_resume() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("resume");
    let id = unique("resumer");
    let persistent = connect(ProtocolVersion::V3_1_1, &id, false, 60);
    let (mut sub, _) = RawClient::connected(broker.addr, persistent.clone()).await;
    sub.subscribe(&topic, QoS::ExactlyOnce).await;
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v4(&unique("pub"))).await;
    publisher
        .publish(&topic, b"q1", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish(&topic, b"q2", QoS::ExactlyOnce, false)
        .await;
    publisher
        .publish(&topic, b"q2-rec", QoS::ExactlyOnce, false)
        .await;
    let first = sub.next_publish().await;
    let second = sub.next_publish().await;
    let third = sub.next_publish().await;
    // PUBREC the third only, then drop the connection without acking anything else.
    sub.send_packet(&Packet::PubRec(PubAck::new(third.packet_id.expect("id"))))
        .await;
    assert!(matches!(sub.next().await, Packet::PubRel(_)));
    drop(sub);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut sub, ack) = RawClient::connected(broker.addr, persistent).await;
    assert!(ack.session_present);
    // [MQTT-4.4.0-1] unacknowledged PUBLISH resent with DUP=1 [MQTT-3.3.1-1]; PUBREL resent.
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(sub.next().await);
    }
    let mut dup_payloads = Vec::new();
    let mut pubrels = Vec::new();
    for packet in &seen {
        match packet {
            Packet::Publish(p) => {
                assert!(p.dup, "resent PUBLISH has DUP: {p:?}");
                dup_payloads.push((p.packet_id, p.payload.to_vec()));
            }
            Packet::PubRel(r) => pubrels.push(r.packet_id),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        dup_payloads,
        vec![
            (first.packet_id, b"q1".to_vec()),
            (second.packet_id, b"q2".to_vec())
        ]
    );
    assert_eq!(pubrels, vec![third.packet_id.expect("id")]);
    broker.assert_alive();
}
