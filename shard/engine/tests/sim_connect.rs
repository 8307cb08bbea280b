//! The handshake: byte transcripts for CONNECT/CONNACK, SUBSCRIBE/SUBACK and PINGREQ, CONNACK
//! fields for v3.1.1 and v5, assigned client ids, refusals and the session quota.

mod sim;

use std::time::Duration;

use ringmq_engine::Limits;
use sim::*;
use wire::{Packet, ReasonCode};

/// Exact bytes in, exact bytes out, on one shard: CONNECT → CONNACK, SUBSCRIBE → SUBACK,
/// PUBLISH QoS 1 → PUBACK plus the delivery back to the subscriber, PINGREQ → PINGRESP,
/// DISCONNECT → close.
#[test]
fn transcript_v311_connect_subscribe_publish_ping() {
    let mut sim = Sim::new(1);
    let c = sim.open(0);
    // CONNECT "MQTT" level 4, clean session, keepalive 60, client id "c1".
    sim.send_bytes(c, &hex("10 0e 00 04 4d 51 54 54 04 02 00 3c 00 02 63 31"));
    sim.run_until_idle();
    // [MQTT-3.2.2-1] [MQTT-3.2.2-2] session present 0 with clean session, return code 0.
    assert_eq!(to_hex(&sim.take_bytes(c)), "20 02 00 00");

    // SUBSCRIBE id 1, "a/b" QoS 1 → SUBACK id 1 granted QoS 1 [MQTT-3.8.4-1] [MQTT-3.9.3-1].
    sim.send_bytes(c, &hex("82 08 00 01 00 03 61 2f 62 01"));
    sim.run_until_idle();
    assert_eq!(to_hex(&sim.take_bytes(c)), "90 03 00 01 01");

    // PUBLISH QoS 1 id 2 "a/b" "hi": PUBACK id 2 [MQTT-4.3.2-2], then our own copy with the
    // session's first packet id (1).
    sim.send_bytes(c, &hex("32 09 00 03 61 2f 62 00 02 68 69"));
    sim.run_until_idle();
    assert_eq!(
        to_hex(&sim.take_bytes(c)),
        "40 02 00 02 32 09 00 03 61 2f 62 00 01 68 69"
    );
    sim.send_bytes(c, &hex("40 02 00 01"));

    // PINGREQ → PINGRESP [MQTT-3.12.4-1].
    sim.send_bytes(c, &hex("c0 00"));
    sim.run_until_idle();
    assert_eq!(to_hex(&sim.take_bytes(c)), "d0 00");

    // DISCONNECT: the server closes without sending anything [MQTT-3.14.4-1].
    sim.send_bytes(c, &hex("e0 00"));
    sim.run_until_idle();
    assert!(sim.is_closed(c));
    assert!(sim.take_bytes(c).is_empty());
    assert_eq!(sim.engine(0).state.sessions_total(), 0);
}

/// A CONNECT split over three reads is handled once it is whole.
#[test]
fn transcript_connect_in_pieces() {
    let mut sim = Sim::new(1);
    let c = sim.open(0);
    let connect = hex("10 0e 00 04 4d 51 54 54 04 02 00 3c 00 02 63 31");
    for piece in [&connect[..1], &connect[1..7], &connect[7..]] {
        assert!(sim.take_bytes(c).is_empty());
        sim.send_bytes(c, piece);
        sim.run_until_idle();
    }
    assert_eq!(to_hex(&sim.take_bytes(c)), "20 02 00 00");
}

/// v5 CONNECT with no properties; CONNACK announces what the server supports (3.2.2.3).
#[test]
fn v5_connack_fields() {
    let mut sim = Sim::new(1);
    let (_, ack) = sim.connect(0, v5("car-1"));
    let limits = Limits::default();
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(!ack.session_present);
    let p = &ack.properties;
    assert_eq!(p.receive_maximum, Some(limits.receive_maximum));
    assert_eq!(p.maximum_packet_size, Some(limits.max_packet_size_bytes));
    assert_eq!(p.topic_alias_maximum, Some(limits.topic_alias_maximum));
    assert_eq!(p.retain_available, Some(1));
    assert_eq!(p.wildcard_subscription_available, Some(1));
    assert_eq!(p.subscription_identifiers_available, Some(1));
    assert_eq!(p.shared_subscription_available, Some(1));
    // [MQTT-3.2.2-16] the client id is its own: none assigned.
    assert_eq!(p.assigned_client_identifier, None);
    // Keepalive not lowered: no Server Keep Alive [MQTT-3.2.2-21].
    assert_eq!(p.server_keep_alive, None);
    assert_eq!(p.session_expiry_interval, None);
}

/// The server lowers a keepalive above its maximum and says so (v5 Server Keep Alive), and caps
/// the session expiry interval in CONNACK.
#[test]
fn v5_connack_server_keepalive_and_expiry_cap() {
    let limits = Limits {
        keepalive_max_secs: 30,
        session_expiry_max_secs: 100,
        ..Limits::default()
    };
    let mut sim = Sim::with_limits(1, limits);
    let mut connect = v5_persistent("car-2", 1000);
    connect.keep_alive_secs = 600;
    let (_, ack) = sim.connect(0, connect);
    // [MQTT-3.2.2-21] the client must use the Server Keep Alive.
    assert_eq!(ack.properties.server_keep_alive, Some(30));
    assert_eq!(ack.properties.session_expiry_interval, Some(100));
}

/// [MQTT-3.1.3-6] [MQTT-3.2.2-16]: an empty client id gets one assigned and returned (v5); the
/// assigned id lives on the shard that accepted the connection (no hand-off).
#[test]
fn v5_empty_client_id_is_assigned() {
    let mut sim = Sim::new(2);
    for shard in 0..2 {
        let (c, ack) = sim.connect(shard, v5(""));
        assert_eq!(ack.reason_code, ReasonCode::Success);
        let id = ack
            .properties
            .assigned_client_identifier
            .clone()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default();
        assert!(!id.is_empty(), "no assigned client identifier");
        assert_eq!(
            ringmq_engine::state::home_shard(&id, 2),
            shard,
            "assigned id {id} is not homed where it was assigned"
        );
        assert_eq!(sim.shard_of(c), shard);
        assert!(sim
            .events(c)
            .iter()
            .all(|e| !matches!(e, Event::HandOff { .. })));
    }
}

/// [MQTT-3.1.3-7] v3.1.1 empty id with clean session is accepted (no id in CONNACK);
/// [MQTT-3.1.3-8] without clean session it is refused with return code 2, then closed.
#[test]
fn v311_empty_client_id() {
    let mut sim = Sim::new(1);
    let (c, ack) = sim.connect(0, v311(""));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(!sim.is_closed(c));

    let mut connect = v311("");
    connect.clean_start = false;
    let c = sim.open(0);
    sim.send(c, &Packet::Connect(Box::new(connect)));
    sim.run_until_idle();
    assert_eq!(to_hex(&sim.take_bytes(c)), "20 02 00 02");
    assert!(sim.is_closed(c));
}

/// [MQTT-3.1.0-1] the first packet must be CONNECT: anything else closes without a reply.
#[test]
fn first_packet_not_connect_closes() {
    let mut sim = Sim::new(1);
    let c = sim.open(0);
    sim.send_bytes(c, &hex("c0 00"));
    sim.run_until_idle();
    assert!(sim.is_closed(c));
    assert!(sim.take_bytes(c).is_empty());
}

/// [MQTT-3.1.2-2] an unsupported protocol level gets CONNACK return code 1, then the close.
#[test]
fn unsupported_protocol_level() {
    let mut sim = Sim::new(1);
    let c = sim.open(0);
    // "MQTT" level 6.
    sim.send_bytes(c, &hex("10 0e 00 04 4d 51 54 54 06 02 00 3c 00 02 63 31"));
    sim.run_until_idle();
    assert_eq!(to_hex(&sim.take_bytes(c)), "20 02 00 01");
    assert!(sim.is_closed(c));
}

/// A connection that never sends CONNECT is closed after `connect_timeout_secs`.
#[test]
fn connect_timeout() {
    let mut sim = Sim::new(1);
    let c = sim.open(0);
    let timeout = u64::from(Limits::default().connect_timeout_secs);
    sim.advance(Duration::from_secs(timeout - 1));
    assert!(!sim.is_closed(c));
    sim.advance(Duration::from_secs(1));
    assert!(sim.is_closed(c));
    assert_eq!(sim.engine(0).connection_count(), 0);
}

/// `sessions_per_shard_max`: one session more is refused (v5 CONNACK 0x97 Quota exceeded,
/// v3.1.1 return code 3 Server unavailable) and counted; the client that has a session may
/// still reconnect.
#[test]
fn sessions_per_shard_max() {
    let limits = Limits {
        sessions_per_shard_max: 1,
        ..Limits::default()
    };
    let mut sim = Sim::with_limits(1, limits);
    let (first, ack) = sim.connect(0, v5_persistent("one", 60));
    assert_eq!(ack.reason_code, ReasonCode::Success);

    let (c, ack) = sim.connect(0, v5("two"));
    assert_eq!(ack.reason_code, ReasonCode::QuotaExceeded);
    sim.run_until_idle();
    assert!(sim.is_closed(c));

    let c = sim.open(0);
    sim.send(c, &Packet::Connect(Box::new(v311("three"))));
    sim.run_until_idle();
    assert_eq!(to_hex(&sim.take_bytes(c)), "20 02 00 03");
    assert!(sim.is_closed(c));
    assert_eq!(sim.engine(0).state.counters.sessions_refused, 2);

    // The existing session's client resumes it (a takeover, not a new session).
    let (_, ack) = sim.connect(0, v5_persistent("one", 60));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(ack.session_present);
    sim.run_until_idle();
    assert!(sim.is_closed(first));
}

/// v5 reason code on a v5 CONNECT with a Receive Maximum of 0: a protocol error, refused in
/// CONNACK (3.1.2.11.3).
#[test]
fn v5_receive_maximum_zero_refused() {
    let mut sim = Sim::new(1);
    let mut connect = v5("rm0");
    connect.properties.receive_maximum = Some(0);
    let c = sim.open(0);
    sim.send(c, &Packet::Connect(Box::new(connect)));
    sim.run_until_idle();
    // wire refuses to decode it (0 is invalid), so the answer is a v5 CONNACK with an error.
    let bytes = sim.take_bytes(c);
    assert!(sim.is_closed(c));
    assert_eq!(
        bytes.first(),
        Some(&0x20),
        "expected a CONNACK, got {}",
        to_hex(&bytes)
    );
    assert!(
        bytes.get(3).is_some_and(|code| *code >= 0x80),
        "{}",
        to_hex(&bytes)
    );
}
