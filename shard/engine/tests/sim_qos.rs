//! QoS 0, 1 and 2 in both directions (client → broker and broker → client), on one shard and
//! across two.

mod sim;

use sim::*;
use wire::{Packet, ProtocolVersion, QoS, ReasonCode};

/// A subscriber on shard `sub_shard` and a publisher on `pub_shard`, both connected with
/// `version` (client ids homed there, so no hand-off).
fn pair(
    sim: &mut Sim,
    version: ProtocolVersion,
    sub_shard: u16,
    pub_shard: u16,
) -> (Client, Client) {
    let sub_id = sim.client_id_on(sub_shard, "sub");
    let pub_id = sim.client_id_on(pub_shard, "pub");
    let (sub, _) = sim.connect(sub_shard, connect(version, &sub_id));
    let (publisher, _) = sim.connect(pub_shard, connect(version, &pub_id));
    (sub, publisher)
}

/// QoS 0 is delivered once with no acknowledgement [MQTT-4.3.1-1], downgraded to the granted
/// QoS [MQTT-3.8.4-8]: a QoS 2 publish to a QoS 0 subscription arrives as QoS 0.
#[test]
fn qos0_both_ways() {
    for (sub_shard, pub_shard) in [(0, 0), (0, 1), (1, 0)] {
        let mut sim = Sim::new(2);
        let (sub, publisher) = pair(&mut sim, ProtocolVersion::V3_1_1, sub_shard, pub_shard);
        assert_eq!(
            sim.subscribe(sub, "t/#", QoS::AtMostOnce).reason_codes,
            [ReasonCode::Success]
        );
        sim.send(publisher, &publish("t/a", b"zero", QoS::AtMostOnce, None));
        sim.run_until_idle();
        sim.expect_nothing(publisher);
        let p = sim.expect_publish(sub);
        assert_eq!(
            (p.qos, p.packet_id, &p.payload[..]),
            (QoS::AtMostOnce, None, &b"zero"[..])
        );
        sim.expect_nothing(sub);

        sim.send(
            publisher,
            &publish("t/b", b"two", QoS::ExactlyOnce, Some(9)),
        );
        sim.run_until_idle();
        assert!(matches!(sim.expect(publisher), Packet::PubRec(a) if a.packet_id == pid(9)));
        let p = sim.expect_publish(sub);
        assert_eq!((p.qos, &p.payload[..]), (QoS::AtMostOnce, &b"two"[..]));
    }
}

/// QoS 1: the publisher gets PUBACK with its packet id [MQTT-4.3.2-2]; the subscriber gets a
/// PUBLISH with its own packet id that stays in flight until its PUBACK [MQTT-4.3.2-1].
#[test]
fn qos1_both_ways() {
    for (sub_shard, pub_shard) in [(0, 0), (0, 1), (1, 0)] {
        let mut sim = Sim::new(2);
        let (sub, publisher) = pair(&mut sim, ProtocolVersion::V5, sub_shard, pub_shard);
        assert_eq!(
            sim.subscribe(sub, "t", QoS::AtLeastOnce).reason_codes,
            [ReasonCode::GrantedQoS1]
        );
        sim.send(publisher, &publish("t", b"one", QoS::AtLeastOnce, Some(5)));
        sim.run_until_idle();
        match sim.expect(publisher) {
            Packet::PubAck(a) => {
                assert_eq!(a.packet_id, pid(5));
                assert_eq!(a.reason_code, ReasonCode::Success);
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
        let p = sim.expect_publish(sub);
        assert_eq!(p.qos, QoS::AtLeastOnce);
        assert!(!p.dup);
        let id = packet_id_of(&p);
        assert_ne!(id, 0);
        let home = sim.shard_of(sub);
        assert_eq!(
            sim.engine(home).state.queued_messages(),
            1,
            "in flight until PUBACK"
        );
        sim.send(sub, &puback(id));
        sim.run_until_idle();
        assert_eq!(sim.engine(home).state.queued_messages(), 0);
        sim.expect_nothing(sub);
    }
}

/// v5 PUBACK 0x10 No matching subscribers when nobody subscribed (3.4.2.1).
#[test]
fn v5_puback_no_matching_subscribers() {
    let mut sim = Sim::new(2);
    let (publisher, _) = sim.connect(0, v5(&sim.client_id_on(0, "p")));
    sim.send(
        publisher,
        &publish("nobody/here", b"x", QoS::AtLeastOnce, Some(1)),
    );
    sim.run_until_idle();
    match sim.expect(publisher) {
        Packet::PubAck(a) => assert_eq!(a.reason_code, ReasonCode::NoMatchingSubscribers),
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

/// QoS 2 from the client: PUBREC, a retransmission of the same id (DUP) is acknowledged again
/// but not delivered twice [MQTT-4.3.3-9]; PUBREL → PUBCOMP [MQTT-4.3.3-11]; after that the id is
/// new again and a publish with it is delivered.
#[test]
fn qos2_inbound_no_duplicate_delivery() {
    for (sub_shard, pub_shard) in [(0, 0), (1, 0)] {
        let mut sim = Sim::new(2);
        let (sub, publisher) = pair(&mut sim, ProtocolVersion::V3_1_1, sub_shard, pub_shard);
        sim.subscribe(sub, "q2", QoS::AtMostOnce);

        sim.send(
            publisher,
            &publish("q2", b"first", QoS::ExactlyOnce, Some(7)),
        );
        sim.run_until_idle();
        assert!(matches!(sim.expect(publisher), Packet::PubRec(a) if a.packet_id == pid(7)));
        assert_eq!(&sim.expect_publish(sub).payload[..], b"first");

        // The client did not see PUBREC and resends with DUP.
        let resend = match publish("q2", b"first", QoS::ExactlyOnce, Some(7)) {
            Packet::Publish(mut p) => {
                p.dup = true;
                Packet::Publish(p)
            }
            other => other,
        };
        sim.send(publisher, &resend);
        sim.run_until_idle();
        assert!(matches!(sim.expect(publisher), Packet::PubRec(a) if a.packet_id == pid(7)));
        sim.expect_nothing(sub);

        sim.send(publisher, &pubrel(7));
        sim.run_until_idle();
        assert!(matches!(
            sim.expect(publisher),
            Packet::PubComp(a) if a.packet_id == pid(7) && a.reason_code == ReasonCode::Success
        ));
        // A second PUBREL for a released id: PUBCOMP, nothing delivered (v3.1.1 has no codes).
        sim.send(publisher, &pubrel(7));
        sim.run_until_idle();
        assert!(matches!(sim.expect(publisher), Packet::PubComp(_)));

        // The id is free again: a new message with it is a new message.
        sim.send(
            publisher,
            &publish("q2", b"second", QoS::ExactlyOnce, Some(7)),
        );
        sim.run_until_idle();
        assert!(matches!(sim.expect(publisher), Packet::PubRec(_)));
        assert_eq!(&sim.expect_publish(sub).payload[..], b"second");
        sim.expect_nothing(sub);
    }
}

/// QoS 2 to the client: PUBLISH → PUBREC → PUBREL (from us) → PUBCOMP; the message leaves
/// the session only with PUBCOMP [MQTT-4.3.3-1..3].
#[test]
fn qos2_outbound_flow() {
    for (sub_shard, pub_shard) in [(0, 0), (0, 1)] {
        let mut sim = Sim::new(2);
        let (sub, publisher) = pair(&mut sim, ProtocolVersion::V5, sub_shard, pub_shard);
        assert_eq!(
            sim.subscribe(sub, "q2", QoS::ExactlyOnce).reason_codes,
            [ReasonCode::GrantedQoS2]
        );
        sim.send(
            publisher,
            &publish("q2", b"exactly", QoS::ExactlyOnce, Some(1)),
        );
        sim.run_until_idle();
        assert!(matches!(sim.expect(publisher), Packet::PubRec(_)));
        sim.send(publisher, &pubrel(1));

        let p = sim.expect_publish(sub);
        assert_eq!(p.qos, QoS::ExactlyOnce);
        let id = packet_id_of(&p);
        sim.send(sub, &pubrec(id));
        sim.run_until_idle();
        assert!(matches!(sim.expect(publisher), Packet::PubComp(_)));
        match sim.expect(sub) {
            Packet::PubRel(a) => {
                assert_eq!(a.packet_id, pid(id));
                assert_eq!(a.reason_code, ReasonCode::Success);
            }
            other => panic!("expected PUBREL, got {other:?}"),
        }
        let home = sim.shard_of(sub);
        assert_eq!(
            sim.engine(home).state.queued_messages(),
            1,
            "awaiting PUBCOMP"
        );
        sim.send(sub, &pubcomp(id));
        sim.run_until_idle();
        assert_eq!(sim.engine(home).state.queued_messages(), 0);
        sim.expect_nothing(sub);
    }
}

/// A PUBREC with an error code ends the exchange: no PUBREL, the id is free [MQTT-4.3.3-4].
#[test]
fn v5_pubrec_failure_ends_exchange() {
    let mut sim = Sim::new(1);
    let (sub, _) = sim.connect(0, v5("s"));
    let (publisher, _) = sim.connect(0, v5("p"));
    sim.subscribe(sub, "q2", QoS::ExactlyOnce);
    sim.send(publisher, &publish("q2", b"x", QoS::AtLeastOnce, Some(1)));
    sim.send(publisher, &publish("q2", b"y", QoS::ExactlyOnce, Some(2)));
    sim.run_until_idle();
    let first = sim.expect_publish(sub);
    assert_eq!(first.qos, QoS::AtLeastOnce);
    let second = sim.expect_publish(sub);
    assert_eq!(second.qos, QoS::ExactlyOnce);
    sim.send(sub, &puback(packet_id_of(&first)));
    sim.send(
        sub,
        &Packet::PubRec(wire::PubAck {
            packet_id: pid(packet_id_of(&second)),
            reason_code: ReasonCode::UnspecifiedError,
            properties: Default::default(),
        }),
    );
    sim.run_until_idle();
    sim.expect_nothing(sub);
    assert_eq!(sim.engine(0).state.queued_messages(), 0);
}

/// The client's Receive Maximum bounds what we keep in flight to it [MQTT-3.3.4-7]; the rest
/// follows as acknowledgements free the window.
#[test]
fn v5_receive_maximum_bounds_inflight() {
    let mut sim = Sim::new(1);
    let mut c = v5("slowpoke");
    c.properties.receive_maximum = Some(2);
    let (sub, _) = sim.connect(0, c);
    let (publisher, _) = sim.connect(0, v5("p"));
    sim.subscribe(sub, "w", QoS::AtLeastOnce);
    for i in 1..=5u16 {
        sim.send(
            publisher,
            &publish("w", &[i as u8], QoS::AtLeastOnce, Some(i)),
        );
    }
    sim.run_until_idle();
    let window: Vec<_> = sim.recv_all(sub);
    assert_eq!(window.len(), 2, "{window:?}");
    let mut seen = Vec::new();
    let mut pending = window;
    while !pending.is_empty() {
        for packet in pending {
            let Packet::Publish(p) = packet else {
                panic!("expected PUBLISH, got {packet:?}");
            };
            seen.push(p.payload[0]);
            sim.send(sub, &puback(packet_id_of(&p)));
        }
        sim.run_until_idle();
        pending = sim.recv_all(sub);
        assert!(pending.len() <= 2);
    }
    // [MQTT-4.6.0-6] in the order published.
    assert_eq!(seen, [1, 2, 3, 4, 5]);
}
