//! Sessions across shards: a connection accepted on the wrong shard is handed to the client id's
//! home shard; a second connection with the same id takes the session over; a resumed session
//! gets its unacknowledged messages again with DUP.

mod sim;

use sim::*;
use wire::{Packet, QoS, ReasonCode};

/// A client whose id is homed on shard 1 connects to shard 0: the engine hands the connection
/// (with the CONNECT it read) to shard 1, which answers; shard 0 keeps no session.
#[test]
fn connect_on_wrong_shard_is_handed_off() {
    let mut sim = Sim::new(2);
    let id = sim.client_id_on(1, "car");
    let (c, ack) = sim.connect(0, v5(&id));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert_eq!(
        sim.events(c).first(),
        Some(&Event::HandOff { from: 0, to: 1 })
    );
    assert_eq!(sim.shard_of(c), 1);
    assert_eq!(sim.engine(0).state.counters.handoffs, 1);
    assert_eq!(sim.engine(0).state.sessions_total(), 0);
    assert_eq!(sim.engine(0).connection_count(), 0);
    assert_eq!(sim.engine(1).state.sessions_total(), 1);
    // It works from its new shard.
    sim.send(c, &Packet::PingReq);
    sim.run_until_idle();
    assert_eq!(sim.expect(c), Packet::PingResp);
}

/// Bytes that followed CONNECT in the same read travel with the hand-off.
#[test]
fn handoff_carries_bytes_after_connect() {
    let mut sim = Sim::new(2);
    let id = sim.client_id_on(1, "eager");
    let c = sim.open(0);
    let version = wire::ProtocolVersion::V3_1_1;
    let read = encode_all(
        version,
        &[
            Packet::Connect(Box::new(v311(&id))),
            subscribe(4, &[("x", QoS::AtMostOnce)]),
            Packet::PingReq,
        ],
    );
    sim.set_version(c, version);
    sim.send_bytes(c, &read);
    sim.run_until_idle();
    assert!(matches!(sim.expect(c), Packet::ConnAck(_)));
    let suback = sim.expect_suback(c);
    assert_eq!(suback.packet_id, pid(4));
    assert_eq!(sim.expect(c), Packet::PingResp);
    assert_eq!(sim.shard_of(c), 1);
}

/// [MQTT-3.1.4-3] a second connection with the same client id takes over: the first gets
/// DISCONNECT 0x8E Session taken over (v5) and is closed; the new one gets session present
/// [MQTT-3.2.2-3]; the QoS 1 message the first did not acknowledge is sent again with DUP=1
/// and its packet id [MQTT-4.4.0-1] [MQTT-3.3.1-1].
#[test]
fn takeover_across_shards_resends_inflight_with_dup() {
    for seed in seeds(8) {
        let mut sim = Sim::seeded(2, Default::default(), seed, 2);
        let id = sim.client_id_on(1, "vehicle");
        let (first, ack) = sim.connect(0, v5_persistent(&id, 300));
        assert!(!ack.session_present);
        assert_eq!(
            sim.subscribe(first, "cmd", QoS::AtLeastOnce).reason_codes,
            [ReasonCode::GrantedQoS1]
        );
        let (publisher, _) = sim.connect(0, v5(&sim.client_id_on(0, "ops")));
        sim.send(
            publisher,
            &publish("cmd", b"unlock", QoS::AtLeastOnce, Some(1)),
        );
        sim.run_until_idle();
        let original = sim.expect_publish(first);
        assert!(!original.dup);
        let packet_id = packet_id_of(&original);

        // The same client connects again, to shard 0 again, without acknowledging.
        let (second, ack) = sim.connect(0, v5_persistent(&id, 300));
        assert_eq!(ack.reason_code, ReasonCode::Success);
        assert!(ack.session_present);
        assert_eq!(sim.shard_of(second), 1);
        let again = sim.expect_publish(second);
        assert!(again.dup, "resent without DUP");
        assert_eq!(packet_id_of(&again), packet_id);
        assert_eq!(&again.payload[..], b"unlock");

        let d = sim.expect_disconnect(first);
        assert_eq!(d.reason_code, ReasonCode::SessionTakenOver);
        assert!(sim.is_closed(first));
        sim.expect_nothing(first);

        sim.send(second, &puback(packet_id));
        sim.run_until_idle();
        assert_eq!(sim.engine(1).state.queued_messages(), 0);
        assert_eq!(sim.engine(1).state.counters.takeovers, 1);
        assert_eq!(sim.engine(1).state.sessions_online(), 1);
        // The session's subscription survived: a new publish reaches the new connection.
        sim.send(
            publisher,
            &publish("cmd", b"lock", QoS::AtLeastOnce, Some(2)),
        );
        sim.run_until_idle();
        let p = sim.expect_publish(second);
        assert!(!p.dup);
        assert_eq!(&p.payload[..], b"lock");
    }
}

/// A v3.1.1 takeover: the old connection is closed without a DISCONNECT (3.1.1 servers send
/// none); with clean session the new one starts afresh (session present 0, no subscriptions).
#[test]
fn v311_takeover_clean_session_starts_afresh() {
    let mut sim = Sim::new(2);
    let id = sim.client_id_on(0, "old");
    let mut persistent = v311(&id);
    persistent.clean_start = false;
    let (first, _) = sim.connect(1, persistent);
    sim.subscribe(first, "t", QoS::AtLeastOnce);
    let (second, ack) = sim.connect(1, v311(&id));
    assert!(!ack.session_present);
    assert!(sim.is_closed(first));
    assert!(sim.take_bytes(first).is_empty());
    let (publisher, _) = sim.connect(0, v311(&sim.client_id_on(0, "p")));
    sim.send(publisher, &publish("t", b"x", QoS::AtLeastOnce, Some(1)));
    sim.run_until_idle();
    assert!(matches!(sim.expect(publisher), Packet::PubAck(_)));
    sim.expect_nothing(second);
}

/// A QoS 2 delivery that got its PUBREC before the connection went away resumes with PUBREL,
/// not the PUBLISH [MQTT-4.4.0-1]; messages published while offline follow.
#[test]
fn resume_sends_pubrel_then_queued() {
    let mut sim = Sim::new(2);
    let id = sim.client_id_on(1, "q2");
    let (first, _) = sim.connect(1, v5_persistent(&id, 300));
    sim.subscribe(first, "q", QoS::ExactlyOnce);
    let (publisher, _) = sim.connect(0, v5(&sim.client_id_on(0, "p")));
    sim.send(publisher, &publish("q", b"a", QoS::ExactlyOnce, Some(1)));
    sim.send(publisher, &pubrel(1));
    sim.run_until_idle();
    let p = sim.expect_publish(first);
    sim.send(first, &pubrec(packet_id_of(&p)));
    sim.run_until_idle();
    assert!(matches!(sim.expect(first), Packet::PubRel(_)));
    sim.drop_connection(first);
    sim.run_until_idle();
    assert!(sim.is_closed(first));

    sim.send(publisher, &publish("q", b"b", QoS::AtLeastOnce, Some(2)));
    sim.run_until_idle();
    let (second, ack) = sim.connect(0, v5_persistent(&id, 300));
    assert!(ack.session_present);
    match sim.expect(second) {
        Packet::PubRel(a) => assert_eq!(a.packet_id, p.packet_id.unwrap_or(pid(1))),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    let queued = sim.expect_publish(second);
    assert_eq!(&queued.payload[..], b"b");
    assert!(!queued.dup);
}

/// The peer sends CONNECT and closes before the accepting shard handled it: the engine still
/// hands the connection off (it has a whole CONNECT) and the home shard, whose read of the same
/// socket sees the EOF too, connects and at once disconnects it: the will goes out, a clean
/// session ends.
#[test]
fn peer_closed_before_handoff() {
    let mut sim = Sim::new(2);
    let (w, _) = sim.connect(0, v311(&sim.client_id_on(0, "watch")));
    sim.subscribe(w, "status", QoS::AtMostOnce);
    let id = sim.client_id_on(1, "brief");
    let mut connect = v311(&id);
    connect.will = Some(wire::LastWill {
        topic: "status".into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let c = sim.open(0);
    sim.send(c, &Packet::Connect(Box::new(connect)));
    sim.drop_connection(c);
    sim.run_until_idle();
    assert!(sim.is_closed(c));
    assert_eq!(
        sim.events(c).first(),
        Some(&Event::HandOff { from: 0, to: 1 })
    );
    assert_eq!(&sim.expect_publish(w).payload[..], b"gone");
    assert_eq!(sim.engine(1).state.sessions_total(), 0);
    assert_eq!(sim.engine(1).connection_count(), 0);
}

/// Inbound QoS 2 state is session state: the client PUBREC'd on one connection, reconnects and
/// resends the PUBLISH (DUP) because it never saw the PUBREC — it is acknowledged, not delivered
/// again [MQTT-4.3.3-9] [MQTT-4.4.0-1]; PUBREL on the new connection completes it.
#[test]
fn inbound_qos2_survives_reconnect() {
    let mut sim = Sim::new(2);
    let (sub, _) = sim.connect(0, v5(&sim.client_id_on(0, "s")));
    sim.subscribe(sub, "q", QoS::AtMostOnce);
    let id = sim.client_id_on(1, "pub");
    let (first, _) = sim.connect(0, v5_persistent(&id, 300));
    sim.send(first, &publish("q", b"once", QoS::ExactlyOnce, Some(3)));
    sim.drop_connection(first);
    sim.run_until_idle();
    assert_eq!(&sim.expect_publish(sub).payload[..], b"once");

    let (second, ack) = sim.connect(0, v5_persistent(&id, 300));
    assert!(ack.session_present);
    let resend = match publish("q", b"once", QoS::ExactlyOnce, Some(3)) {
        Packet::Publish(mut p) => {
            p.dup = true;
            Packet::Publish(p)
        }
        other => other,
    };
    sim.send(second, &resend);
    sim.run_until_idle();
    assert!(matches!(sim.expect(second), Packet::PubRec(a) if a.packet_id == pid(3)));
    sim.expect_nothing(sub);
    sim.send(second, &pubrel(3));
    sim.run_until_idle();
    assert!(matches!(
        sim.expect(second),
        Packet::PubComp(a) if a.reason_code == ReasonCode::Success
    ));
}

/// A clean-start connection ends the session it takes over: the old connection's will goes out
/// at once even with a will delay, since the session it belonged to ended (3.1.2.5, 3.1.3.2.2).
#[test]
fn clean_start_takeover_publishes_delayed_will() {
    let mut sim = Sim::new(2);
    let (w, _) = sim.connect(0, v5(&sim.client_id_on(0, "w")));
    sim.subscribe(w, "status", QoS::AtMostOnce);
    let id = sim.client_id_on(1, "car");
    let mut connect = v5_persistent(&id, 300);
    connect.will = Some(wire::LastWill {
        topic: "status".into(),
        payload: bytes::Bytes::from_static(b"ended"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: wire::WillProperties {
            will_delay_interval: Some(60),
            ..Default::default()
        },
    });
    let (first, _) = sim.connect(1, connect);
    let (_second, ack) = sim.connect(1, v5(&id));
    assert!(!ack.session_present);
    assert_eq!(
        sim.expect_disconnect(first).reason_code,
        ReasonCode::SessionTakenOver
    );
    assert_eq!(&sim.expect_publish(w).payload[..], b"ended");
}

/// The transport facts the runtime gave at accept (peer address, listener, certificate names)
/// travel with the hand-off to the session's shard.
#[test]
fn connection_meta_travels_with_a_hand_off() {
    let mut sim = Sim::new(2);
    let id = sim.client_id_on(1, "car");
    let meta = ringmq_engine::ConnMeta {
        peer: Some("192.0.2.7:40001".parse().expect("address")),
        listener: 2,
        identity: Some(ringmq_engine::PeerIdentity {
            common_name: Some(id.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let c = sim.open(0);
    sim.set_meta(c, meta.clone());
    sim.send(c, &Packet::Connect(Box::new(v5(&id))));
    sim.run_until_idle();
    assert_eq!(sim.expect_connack(c).reason_code, ReasonCode::Success);
    assert_eq!(sim.shard_of(c), 1);
    let conn = sim.conn_of(c).expect("connected on shard 1");
    assert_eq!(sim.engine(1).meta(conn), Some(&meta));
}
