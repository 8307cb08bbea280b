//! What a subscriber's PUBLISH carries: message expiry counted down on the fake clock, one copy
//! for overlapping subscriptions with every subscription identifier, no-local, topic aliases.

mod sim;

use std::time::Duration;

use sim::*;
use wire::{Packet, QoS, SubscribeProperties, SubscriptionOptions, Utf8Bytes};

fn expiring(topic: &str, payload: &[u8], packet_id: u16, expiry_secs: u32) -> Packet {
    match publish(topic, payload, QoS::AtLeastOnce, Some(packet_id)) {
        Packet::Publish(mut p) => {
            p.properties.message_expiry_interval = Some(expiry_secs);
            Packet::Publish(p)
        }
        other => other,
    }
}

/// [MQTT-3.3.2-6] a stored message is forwarded with its expiry interval less the time it
/// waited; [MQTT-3.3.2-5] once expired it is not delivered (counted as expired).
#[test]
fn message_expiry_counts_down_while_offline() {
    let mut sim = Sim::new(2);
    let id = sim.client_id_on(1, "sleeper");
    let (s, _) = sim.connect(1, v5_persistent(&id, 3600));
    sim.subscribe(s, "m", QoS::AtLeastOnce);
    sim.drop_connection(s);
    let (publisher, _) = sim.connect(0, v5(&sim.client_id_on(0, "p")));
    sim.send(publisher, &expiring("m", b"soon", 1, 10));
    sim.send(publisher, &expiring("m", b"later", 2, 100));
    sim.advance(Duration::from_secs(4));
    let (s, _) = sim.connect(1, v5_persistent(&id, 3600));
    let first = sim.expect_publish(s);
    assert_eq!(&first.payload[..], b"soon");
    assert_eq!(first.properties.message_expiry_interval, Some(6));
    let second = sim.expect_publish(s);
    assert_eq!(second.properties.message_expiry_interval, Some(96));
    sim.send(s, &puback(packet_id_of(&first)));
    sim.send(s, &puback(packet_id_of(&second)));
    sim.drop_connection(s);

    sim.send(publisher, &expiring("m", b"too late", 3, 5));
    sim.advance(Duration::from_secs(6));
    let (s, _) = sim.connect(1, v5_persistent(&id, 3600));
    sim.expect_nothing(s);
    let expired = ringmq_engine::counters::DROP_REASONS
        .iter()
        .position(|r| *r == ringmq_engine::session::DropReason::Expired)
        .unwrap_or(usize::MAX);
    assert_eq!(sim.engine(1).state.counters.messages_dropped[1][expired], 1);
}

/// A retained message with an expiry is not sent on subscribe once expired [MQTT-3.3.2-5].
#[test]
fn expired_retained_not_sent() {
    let mut sim = Sim::new(1);
    let (publisher, _) = sim.connect(0, v5("p"));
    let retained = match expiring("r", b"brief", 1, 3) {
        Packet::Publish(mut p) => {
            p.retain = true;
            Packet::Publish(p)
        }
        other => other,
    };
    sim.send(publisher, &retained);
    sim.advance(Duration::from_secs(2));
    let (early, _) = sim.connect(0, v5("early"));
    sim.subscribe(early, "r", QoS::AtLeastOnce);
    let p = sim.expect_publish(early);
    assert_eq!(p.properties.message_expiry_interval, Some(1));
    sim.advance(Duration::from_secs(2));
    let (late, _) = sim.connect(0, v5("late"));
    sim.subscribe(late, "r", QoS::AtLeastOnce);
    sim.expect_nothing(late);
}

/// A filter with more subscribers than `SUBSCRIBERS_INDEXED_MIN` (its list is indexed) after
/// some of them disconnected, one re-subscribed at another QoS (it replaces the first
/// [MQTT-3.8.4-3]) and some unsubscribed: a publish reaches exactly the subscribers left, once
/// each, at their latest QoS.
#[test]
fn long_subscriber_list_after_disconnects_and_replacements() {
    let mut sim = Sim::new(1);
    let count = ringmq_engine::state::SUBSCRIBERS_INDEXED_MIN * 2;
    let subscribers: Vec<Client> = (0..count)
        .map(|i| {
            let (c, _) = sim.connect(0, v311(&format!("vehicle-{i}")));
            sim.subscribe(c, "fleet/all/command", QoS::AtMostOnce);
            c
        })
        .collect();
    for (i, &c) in subscribers.iter().enumerate() {
        match i % 4 {
            0 => sim.drop_connection(c),
            1 => {
                sim.subscribe(c, "fleet/all/command", QoS::AtLeastOnce);
            }
            2 if i % 8 == 2 => {
                let unsubscribe = wire::Unsubscribe {
                    packet_id: pid(9),
                    filters: vec![Utf8Bytes::from("fleet/all/command")],
                    properties: Default::default(),
                };
                sim.send(c, &Packet::Unsubscribe(unsubscribe));
                sim.run_until_idle();
                assert!(matches!(sim.expect(c), Packet::UnsubAck(_)));
            }
            _ => {}
        }
    }
    let (publisher, _) = sim.connect(0, v311("ota"));
    sim.send(
        publisher,
        &publish("fleet/all/command", b"update", QoS::AtLeastOnce, Some(1)),
    );
    sim.run_until_idle();
    for (i, &c) in subscribers.iter().enumerate() {
        let left = i % 4 != 0 && i % 8 != 2;
        if !left {
            if i % 4 != 0 {
                sim.expect_nothing(c);
            }
            continue;
        }
        let p = sim.expect_publish(c);
        let qos = if i % 4 == 1 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        assert_eq!(
            (p.qos, &p.payload[..]),
            (qos, &b"update"[..]),
            "subscriber {i}"
        );
        sim.expect_nothing(c);
    }
}

fn subscribe_id(packet_id: u16, filter: &str, qos: QoS, id: u32) -> Packet {
    Packet::Subscribe(wire::Subscribe {
        packet_id: pid(packet_id),
        filters: vec![(
            Utf8Bytes::from(filter),
            SubscriptionOptions {
                qos,
                ..Default::default()
            },
        )],
        properties: SubscribeProperties {
            subscription_identifier: Some(id),
            ..Default::default()
        },
    })
}

/// Overlapping subscriptions of one session get one copy at the highest granted QoS
/// [MQTT-3.3.4-2] carrying every matching subscription identifier [MQTT-3.3.4-3].
#[test]
fn overlapping_subscriptions_one_copy_all_identifiers() {
    let mut sim = Sim::new(2);
    let (s, _) = sim.connect(1, v5(&sim.client_id_on(1, "s")));
    sim.send(s, &subscribe_id(1, "car/#", QoS::AtMostOnce, 11));
    sim.send(s, &subscribe_id(2, "car/+/gps", QoS::AtLeastOnce, 22));
    sim.run_until_idle();
    sim.expect_suback(s);
    sim.expect_suback(s);
    let (publisher, _) = sim.connect(0, v5(&sim.client_id_on(0, "p")));
    sim.send(
        publisher,
        &publish("car/7/gps", b"52.1,4.3", QoS::AtLeastOnce, Some(1)),
    );
    sim.run_until_idle();
    let p = sim.expect_publish(s);
    assert_eq!(p.qos, QoS::AtLeastOnce);
    let mut ids = p.properties.subscription_identifiers.to_vec();
    ids.sort_unstable();
    assert_eq!(ids, [11, 22]);
    sim.expect_nothing(s);
    // Only one filter matches: only its identifier.
    sim.send(
        publisher,
        &publish("car/7/speed", b"80", QoS::AtLeastOnce, Some(2)),
    );
    sim.run_until_idle();
    let p = sim.expect_publish(s);
    assert_eq!(p.qos, QoS::AtMostOnce);
    assert_eq!(p.properties.subscription_identifiers.to_vec(), [11]);
}

/// [MQTT-3.8.3-3] No Local: a client's own publishes are not sent back to it on that
/// subscription; other subscribers still get them.
#[test]
fn no_local() {
    let mut sim = Sim::new(1);
    let (me, _) = sim.connect(0, v5("me"));
    let (other, _) = sim.connect(0, v5("other"));
    let sub = match subscribe(1, &[("chat", QoS::AtMostOnce)]) {
        Packet::Subscribe(mut s) => {
            s.filters[0].1.no_local = true;
            Packet::Subscribe(s)
        }
        p => p,
    };
    sim.send(me, &sub);
    sim.send(other, &sub);
    sim.run_until_idle();
    sim.expect_suback(me);
    sim.expect_suback(other);
    sim.send(me, &publish("chat", b"hi", QoS::AtMostOnce, None));
    sim.run_until_idle();
    sim.expect_nothing(me);
    assert_eq!(&sim.expect_publish(other).payload[..], b"hi");
}

/// Outbound topic aliases (v5, the client allowed them): the first PUBLISH on a topic carries
/// the topic and the alias, later ones the alias alone [MQTT-3.3.2-12 context]; a new connection
/// starts with no aliases [MQTT-3.3.2-7].
#[test]
fn outbound_topic_aliases() {
    let mut sim = Sim::new(1);
    let mut c = v5_persistent("aliased", 60);
    c.properties.topic_alias_maximum = Some(4);
    let (s, _) = sim.connect(0, c.clone());
    sim.subscribe(s, "long/topic/name", QoS::AtLeastOnce);
    let (publisher, _) = sim.connect(0, v5("p"));
    for i in 1..=2u16 {
        sim.send(
            publisher,
            &publish("long/topic/name", b"x", QoS::AtLeastOnce, Some(i)),
        );
    }
    sim.run_until_idle();
    let first = sim.expect_publish(s);
    assert_eq!(first.topic.as_str(), "long/topic/name");
    let alias = first.properties.topic_alias;
    assert!(alias.is_some());
    let second = sim.expect_publish(s);
    assert_eq!(second.topic.as_str(), "");
    assert_eq!(second.properties.topic_alias, alias);
    sim.send(s, &puback(packet_id_of(&first)));
    sim.send(s, &puback(packet_id_of(&second)));
    sim.run_until_idle();

    let (s2, _) = sim.connect(0, c);
    sim.send(
        publisher,
        &publish("long/topic/name", b"y", QoS::AtLeastOnce, Some(3)),
    );
    sim.run_until_idle();
    let again = sim.expect_publish(s2);
    assert_eq!(
        again.topic.as_str(),
        "long/topic/name",
        "alias reused on a new connection"
    );
    assert!(sim.is_closed(s));
}

/// Inbound topic aliases: a v5 client sets an alias with the topic, then publishes with the
/// alias alone [MQTT-3.3.2-12]; an unknown alias without a topic is a protocol error.
#[test]
fn inbound_topic_aliases() {
    let mut sim = Sim::new(1);
    let (s, _) = sim.connect(0, v5("s"));
    sim.subscribe(s, "a/b", QoS::AtMostOnce);
    let (p, _) = sim.connect(0, v5("p"));
    let with_alias = |topic: &str, alias: u16| match publish(topic, b"z", QoS::AtMostOnce, None) {
        Packet::Publish(mut p) => {
            p.properties.topic_alias = Some(alias);
            Packet::Publish(p)
        }
        other => other,
    };
    sim.send(p, &with_alias("a/b", 1));
    sim.send(p, &with_alias("", 1));
    sim.run_until_idle();
    assert_eq!(sim.expect_publish(s).topic.as_str(), "a/b");
    assert_eq!(sim.expect_publish(s).topic.as_str(), "a/b");
    sim.send(p, &with_alias("", 2));
    sim.run_until_idle();
    assert_eq!(
        sim.expect_disconnect(p).reason_code,
        wire::ReasonCode::ProtocolError
    );
    assert!(sim.is_closed(p));
}
