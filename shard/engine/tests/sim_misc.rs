//! Shutdown, subscription authorization, MQTT 3.1, retained delivery in slices and the offline
//! queue bound.

mod sim;

use ringmq_engine::counters::DROP_REASONS;
use ringmq_engine::session::DropReason;
use ringmq_engine::{Limits, SubscribeRules};
use sim::*;
use wire::{Packet, ProtocolVersion, QoS, ReasonCode};

/// Shutdown: every v5 client is told (DISCONNECT 0x8B) and closed, 3.1.1 clients are closed,
/// wills go out (a server-side close is not a DISCONNECT), new connections are refused
/// (v5 CONNACK 0x88 Server unavailable, 3.1.1 return code 3).
#[test]
fn shutdown() {
    let mut sim = Sim::new(2);
    let (watcher, _) = sim.connect(0, v311(&sim.client_id_on(0, "w")));
    sim.subscribe(watcher, "status", QoS::AtMostOnce);
    let mut connect = v5(&sim.client_id_on(1, "car"));
    connect.will = Some(wire::LastWill {
        topic: "status".into(),
        payload: bytes::Bytes::from_static(b"server gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let (car, _) = sim.connect(1, connect);
    let (old, _) = sim.connect(1, v311(&sim.client_id_on(1, "old")));
    let handshaking = sim.open(1);
    sim.engines[1].begin_shutdown();
    sim.run_until_idle();
    assert_eq!(
        sim.expect_disconnect(car).reason_code,
        ReasonCode::ServerShuttingDown
    );
    assert!(sim.is_closed(car));
    assert!(sim.is_closed(old));
    assert!(sim.take_bytes(old).is_empty());
    assert!(sim.is_closed(handshaking));
    assert_eq!(&sim.expect_publish(watcher).payload[..], b"server gone");
    assert_eq!(sim.engine(1).state.sessions_total(), 0);

    let (late, ack) = sim.connect(1, v5(&sim.client_id_on(1, "late")));
    assert_eq!(ack.reason_code, ReasonCode::ServerUnavailable);
    sim.run_until_idle();
    assert!(sim.is_closed(late));
    let c = sim.open(1);
    sim.send(
        c,
        &Packet::Connect(Box::new(v311(&sim.client_id_on(1, "late3")))),
    );
    sim.run_until_idle();
    assert_eq!(to_hex(&sim.take_bytes(c)), "20 02 00 03");
}

/// A denied filter is refused in the SUBACK: v5 0x87 Not authorized, 3.1.1 0x80 Failure; the
/// others in the same SUBSCRIBE are granted.
#[test]
fn denied_subscription() {
    let rules = SubscribeRules {
        deny: vec!["secret/#".into()],
    };
    for (version, refused) in [
        (ProtocolVersion::V5, ReasonCode::NotAuthorized),
        (ProtocolVersion::V3_1_1, ReasonCode::UnspecifiedError),
    ] {
        let mut sim = Sim::with_rules(1, Limits::default(), rules.clone());
        let (c, _) = sim.connect(0, connect(version, "c"));
        sim.send(
            c,
            &subscribe(
                1,
                &[
                    ("secret/a", QoS::AtMostOnce),
                    ("open/a", QoS::AtMostOnce),
                    ("$share/g/secret/+", QoS::AtMostOnce),
                ],
            ),
        );
        sim.run_until_idle();
        assert_eq!(
            sim.expect_suback(c).reason_codes,
            [refused, ReasonCode::Success, refused],
            "{version:?}"
        );
    }
}

/// MQTT 3.1 ("MQIsdp", level 3): accepted; a client id over 23 characters is refused with
/// return code 2 (3.1 section 3.1).
#[test]
fn mqtt_3_1() {
    let mut sim = Sim::new(1);
    let (c, ack) = sim.connect(0, connect(ProtocolVersion::V3_1, "old-device"));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(!ack.session_present);
    sim.subscribe(c, "t", QoS::AtLeastOnce);
    sim.send(c, &publish("t", b"x", QoS::AtLeastOnce, Some(1)));
    sim.run_until_idle();
    assert!(matches!(sim.expect(c), Packet::PubAck(_)));
    assert_eq!(&sim.expect_publish(c).payload[..], b"x");

    let long = connect(ProtocolVersion::V3_1, "a-client-id-of-24-chars!");
    let c = sim.open(0);
    sim.send(c, &Packet::Connect(Box::new(long)));
    sim.run_until_idle();
    assert_eq!(to_hex(&sim.take_bytes(c)), "20 02 00 02");
    assert!(sim.is_closed(c));
}

/// A wildcard over more retained messages than `retained_slice_len` gets them all, a slice per
/// turn, after its SUBACK.
#[test]
fn retained_delivered_in_slices() {
    let limits = Limits {
        retained_slice_len: 16,
        ..Limits::default()
    };
    let mut sim = Sim::with_limits(2, limits);
    let (publisher, _) = sim.connect(1, v311(&sim.client_id_on(1, "p")));
    for i in 0..100u32 {
        let topic = format!("r/{i}");
        sim.send(
            publisher,
            &publish_retained(&topic, &i.to_be_bytes(), QoS::AtMostOnce, None),
        );
    }
    sim.run_until_idle();
    let (s, _) = sim.connect(0, v311(&sim.client_id_on(0, "s")));
    sim.send(s, &subscribe(1, &[("r/#", QoS::AtMostOnce)]));
    sim.run_until_idle();
    assert!(matches!(sim.expect(s), Packet::SubAck(_)));
    let got = sim.recv_all(s);
    assert_eq!(got.len(), 100);
    assert!(got
        .iter()
        .all(|p| matches!(p, Packet::Publish(p) if p.retain)));
}

/// An offline session stores at most `session_queue_len_max` messages; the rest are dropped and
/// counted as `queue_full`; QoS 0 is not stored offline at all (counted as `offline`).
#[test]
fn offline_queue_bound() {
    let limits = Limits {
        session_queue_len_max: 10,
        ..Limits::default()
    };
    let mut sim = Sim::with_limits(2, limits);
    let id = sim.client_id_on(0, "away");
    let (s, _) = sim.connect(0, v5_persistent(&id, 600));
    sim.subscribe(s, "t", QoS::AtLeastOnce);
    sim.drop_connection(s);
    let (publisher, _) = sim.connect(1, v5(&sim.client_id_on(1, "p")));
    for i in 0..15u16 {
        sim.send(
            publisher,
            &publish("t", &i.to_be_bytes(), QoS::AtLeastOnce, Some(i + 1)),
        );
    }
    sim.send(publisher, &publish("t", b"q0", QoS::AtMostOnce, None));
    sim.run_until_idle();
    let reason = |r: DropReason| {
        DROP_REASONS
            .iter()
            .position(|d| *d == r)
            .unwrap_or(usize::MAX)
    };
    let counters = &sim.engine(0).state.counters;
    assert_eq!(
        counters.messages_dropped[1][reason(DropReason::QueueFull)],
        5
    );
    assert_eq!(counters.messages_dropped[0][reason(DropReason::Offline)], 1);
    let (s, _) = sim.connect(0, v5_persistent(&id, 600));
    let got = sim.recv_all(s);
    let payloads: Vec<u16> = got
        .iter()
        .map(|p| match p {
            Packet::Publish(p) => u16::from_be_bytes(p.payload[..].try_into().unwrap_or_default()),
            other => panic!("expected PUBLISH, got {other:?}"),
        })
        .collect();
    assert_eq!(payloads, (0..10).collect::<Vec<_>>());
}
