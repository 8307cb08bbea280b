//! Retained messages: set, replace, clear, v5 retain handling and retain-as-published, and a
//! wildcard subscription over 100k retained topics that must not starve other clients.

use std::time::Duration;

use ringmq_tests::*;

/// Subscribes (again and again, bounded) until the retained message carrying `payload` arrives:
/// retained updates reach the other shard asynchronously, after the publisher's PUBACK.
async fn retained_eventually(sub: &mut RawClient, topic: &str, payload: &[u8]) -> Publish {
    bounded(RECV_TIMEOUT, "retained message visible", async {
        loop {
            sub.subscribe(topic, QoS::AtLeastOnce).await;
            match sub.recv_within(Duration::from_millis(200)).await {
                Recv::Packet(Packet::Publish(p)) => {
                    sub.ack(&p).await;
                    if &p.payload[..] == payload {
                        return p;
                    }
                }
                Recv::Timeout => {}
                other => panic!("{other:?}"),
            }
        }
    })
    .await
}

#[tokio::test]
async fn set_replace_clear() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("ret/set");
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v4(&unique("pub"))).await;
    publisher
        .publish(&topic, b"first", QoS::AtLeastOnce, true)
        .await;
    let (mut sub, _) = RawClient::connected(broker.addr, connect_v4(&unique("s1"))).await;
    let got = retained_eventually(&mut sub, &topic, b"first").await;
    // [MQTT-3.3.1-9] sent on subscribe with RETAIN=1.
    assert!(got.retain);
    // [MQTT-3.3.1-5] a new retained message replaces the old one.
    publisher
        .publish(&topic, b"second", QoS::AtLeastOnce, true)
        .await;
    let live = sub.next_publish().await;
    // [MQTT-3.3.1-12] forwarded live to an existing subscription: RETAIN=0 (v3.1.1).
    assert!(!live.retain);
    assert_eq!(&live.payload[..], b"second");
    sub.ack(&live).await;
    let (mut sub2, _) = RawClient::connected(broker.addr, connect_v4(&unique("s2"))).await;
    retained_eventually(&mut sub2, &topic, b"second").await;
    // [MQTT-3.3.1-10] an empty retained payload clears it.
    publisher.publish(&topic, b"", QoS::AtLeastOnce, true).await;
    let (mut sub3, _) = RawClient::connected(broker.addr, connect_v4(&unique("s3"))).await;
    bounded(RECV_TIMEOUT, "retained message cleared everywhere", async {
        loop {
            sub3.subscribe(&topic, QoS::AtMostOnce).await;
            match sub3.recv_within(Duration::from_millis(300)).await {
                Recv::Timeout => break,
                Recv::Packet(Packet::Publish(_)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
    broker.assert_alive();
}

#[tokio::test]
async fn retained_visible_from_every_shard() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("ret/shards");
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v4(&unique("pub"))).await;
    publisher
        .publish(&topic, b"everywhere", QoS::AtLeastOnce, true)
        .await;
    // Clients hash to both shards; each must see the retained message.
    for i in 0..8 {
        let (mut sub, _) =
            RawClient::connected(broker.addr, connect_v4(&unique(&format!("s{i}")))).await;
        let got = bounded(RECV_TIMEOUT, "retained on this shard", async {
            loop {
                sub.subscribe(&topic, QoS::AtMostOnce).await;
                match sub.recv_within(Duration::from_millis(200)).await {
                    Recv::Packet(Packet::Publish(p)) => return p,
                    Recv::Timeout => {}
                    other => panic!("{other:?}"),
                }
            }
        })
        .await;
        assert_eq!(&got.payload[..], b"everywhere");
    }
    broker.assert_alive();
}

#[tokio::test]
async fn retained_visible_right_after_puback() {
    let mut broker = BrokerProcess::start(&[]);
    for round in 0..20 {
        let topic = unique("ret/now");
        let (mut publisher, _) =
            RawClient::connected(broker.addr, connect_v4(&unique("pub"))).await;
        publisher
            .publish(&topic, b"now", QoS::AtLeastOnce, true)
            .await;
        for i in 0..4 {
            let (mut sub, _) =
                RawClient::connected(broker.addr, connect_v4(&unique(&format!("s{i}")))).await;
            sub.subscribe(&topic, QoS::AtMostOnce).await;
            match sub.recv_within(Duration::from_secs(1)).await {
                Recv::Packet(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"now"),
                other => panic!("round {round}, subscriber {i}: {other:?}"),
            }
        }
    }
    broker.assert_alive();
}

#[tokio::test]
async fn v5_retain_handling() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("ret/rh");
    // Everyone on the publisher's shard, so the retained store is already there when it acks.
    let (mut publisher, shard) = assigned(broker.addr).await;
    publisher
        .publish(&topic, b"kept", QoS::AtLeastOnce, true)
        .await;
    let on_shard = |broker: &BrokerProcess| {
        let addr = broker.addr;
        let shard = shard.clone();
        async move {
            for _ in 0..40 {
                let (c, s) = assigned(addr).await;
                if s == shard {
                    return c;
                }
            }
            panic!("no client landed on shard {shard}");
        }
    };
    let with = |rh| SubscriptionOptions {
        qos: QoS::AtMostOnce,
        retain_handling: rh,
        ..SubscriptionOptions::default()
    };
    let mut sub = on_shard(&broker).await;
    // 0: send at every subscribe [MQTT-3.3.1-9].
    for _ in 0..2 {
        sub.subscribe_with(vec![(&topic, with(RetainHandling::SendAtSubscribe))], None)
            .await;
        assert_eq!(&sub.next_publish().await.payload[..], b"kept");
    }
    sub.disconnect().await;
    // 1: only if the subscription is new [MQTT-3.3.1-10].
    let mut sub = on_shard(&broker).await;
    sub.subscribe_with(
        vec![(&topic, with(RetainHandling::SendAtSubscribeIfNew))],
        None,
    )
    .await;
    assert_eq!(&sub.next_publish().await.payload[..], b"kept");
    sub.subscribe_with(
        vec![(&topic, with(RetainHandling::SendAtSubscribeIfNew))],
        None,
    )
    .await;
    sub.expect_silence(Duration::from_millis(400)).await;
    sub.disconnect().await;
    // 2: never [MQTT-3.3.1-11].
    let mut sub = on_shard(&broker).await;
    sub.subscribe_with(vec![(&topic, with(RetainHandling::DoNotSend))], None)
        .await;
    sub.expect_silence(Duration::from_millis(400)).await;
    broker.assert_alive();
}

#[tokio::test]
async fn v5_retain_as_published() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("ret/rap");
    let (mut keep, _) = RawClient::connected(broker.addr, connect_v5(&unique("rap1"))).await;
    keep.subscribe_with(
        vec![(
            &topic,
            SubscriptionOptions {
                qos: QoS::AtMostOnce,
                retain_as_published: true,
                ..SubscriptionOptions::default()
            },
        )],
        None,
    )
    .await;
    let (mut clear, _) = RawClient::connected(broker.addr, connect_v5(&unique("rap0"))).await;
    clear.subscribe(&topic, QoS::AtMostOnce).await;
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v5(&unique("pub"))).await;
    publisher
        .publish(&topic, b"live", QoS::AtLeastOnce, true)
        .await;
    // [MQTT-3.3.1-13] RETAIN as published; [MQTT-3.3.1-12] otherwise 0.
    assert!(keep.next_publish().await.retain);
    assert!(!clear.next_publish().await.retain);
    broker.assert_alive();
}

/// A v5 client with an assigned id; the id tells which shard accepted it ("ringmq-SHARD-...").
async fn assigned(addr: std::net::SocketAddr) -> (RawClient, String) {
    let (c, ack) = RawClient::connected(addr, connect_v5("")).await;
    let id = ack
        .properties
        .assigned_client_identifier
        .expect("assigned id")
        .to_string();
    let shard = id
        .split('-')
        .nth(1)
        .expect("shard in assigned id")
        .to_string();
    (c, shard)
}

#[tokio::test]
async fn wildcard_over_100k_retained_keeps_shard_responsive() {
    const TOPICS: usize = 100_000;
    let mut broker = BrokerProcess::start(&[]);
    let base = unique("flood");
    // Store 100k retained messages, pipelined, then a QoS 1 marker (acked after the rest).
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v5(&unique("pub"))).await;
    let mut bytes = bytes::BytesMut::new();
    for i in 0..TOPICS {
        let p = publish(&format!("{base}/t/{i}"), b"r", QoS::AtMostOnce, true);
        wire::encode(&Packet::Publish(p), ProtocolVersion::V5, &mut bytes).expect("encode");
    }
    publisher.send_bytes(&bytes).await;
    let marker = format!("{base}/t/marker");
    bounded(
        Duration::from_secs(60),
        "storing 100k retained",
        publisher.publish(&marker, b"m", QoS::AtLeastOnce, true),
    )
    .await;
    let (mut sub, shard) = assigned(broker.addr).await;
    // Another client on the same shard as the subscriber.
    let mut other = None;
    for _ in 0..40 {
        let (c, s) = assigned(broker.addr).await;
        if s == shard {
            other = Some(c);
            break;
        }
    }
    let mut other = other.expect("a second client on the subscriber's shard");
    // Retained updates reach the other shard asynchronously, in order: wait for the marker.
    bounded(Duration::from_secs(60), "marker replicated", async {
        loop {
            sub.subscribe(&marker, QoS::AtMostOnce).await;
            let got = matches!(
                sub.recv_within(Duration::from_millis(300)).await,
                Recv::Packet(Packet::Publish(_))
            );
            sub.send_packet(&Packet::Unsubscribe(Unsubscribe {
                packet_id: pid(7),
                filters: vec![Utf8Bytes::from(marker.as_str())],
                properties: AckProperties::default(),
            }))
            .await;
            assert!(matches!(sub.next().await, Packet::UnsubAck(_)));
            if got {
                break;
            }
        }
    })
    .await;
    let filter = format!("{base}/#");
    sub.send_packet(&Packet::Subscribe(Subscribe {
        packet_id: pid(9),
        filters: vec![(Utf8Bytes::from(filter.as_str()), opts(QoS::AtMostOnce))],
        properties: SubscribeProperties::default(),
    }))
    .await;
    let reader = tokio::spawn(async move {
        let mut count = 0usize;
        let mut suback = false;
        while count < TOPICS + 1 {
            match sub.recv_within(Duration::from_secs(30)).await {
                Recv::Packet(Packet::Publish(p)) => {
                    assert!(p.retain);
                    count += 1;
                }
                Recv::Packet(Packet::SubAck(_)) => suback = true,
                other => panic!("after {count} retained: {other:?}"),
            }
        }
        (count, suback, sub)
    });
    // While the flood is delivered, the neighbour is still served.
    bounded(
        Duration::from_secs(30),
        "neighbour ping during flood",
        other.ping(),
    )
    .await;
    let (count, suback, mut sub) = bounded(Duration::from_secs(120), "100k retained", reader)
        .await
        .expect("reader task");
    assert_eq!(count, TOPICS + 1);
    assert!(suback);
    sub.expect_silence(Duration::from_millis(200)).await;
    broker.assert_alive();
}
