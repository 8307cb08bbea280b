//! Overload protection with the fake clock: connection and handshake bounds at accept, the
//! connect rate (v5 CONNACK 0x9F, 3.1.1 closed without CONNACK), flapping bans by client id and
//! by address and the static ban list (v5 CONNACK 0x8A, 3.1.1 return code 5), and per-client
//! publish rates that pause reading without dropping anything.

mod sim;

use std::net::SocketAddr;
use std::time::Duration;

use ringmq_engine::admission::{BanList, Flapping, Overload, Refusal, REFUSALS};
use ringmq_engine::{ConnMeta, Limits};
use sim::*;
use wire::{Packet, ProtocolVersion, QoS, ReasonCode};

fn limits(overload: Overload) -> Limits {
    Limits {
        overload,
        ..Limits::default()
    }
}

fn refused(sim: &Sim, shard: u16, reason: Refusal) -> u64 {
    let i = REFUSALS.iter().position(|r| *r == reason).unwrap_or(0);
    sim.engine(shard).admission().counters.refused[i]
}

/// Sends CONNECT on a fresh accepted connection and returns the CONNACK's reason code, or None
/// when the engine closed without one.
fn try_connect(sim: &mut Sim, shard: u16, connect: wire::Connect) -> (Client, Option<ReasonCode>) {
    let c = sim.open(shard);
    sim.send(c, &Packet::Connect(Box::new(connect)));
    sim.run_until_idle();
    match sim.recv(c) {
        Some(Packet::ConnAck(a)) => (c, Some(a.reason_code)),
        None => {
            assert!(sim.is_closed(c), "neither CONNACK nor close");
            (c, None)
        }
        Some(other) => panic!("expected CONNACK, got {other:?}"),
    }
}

fn with_peer(sim: &mut Sim, shard: u16, peer: &str, connect: wire::Connect) -> Option<ReasonCode> {
    let c = sim.open(shard);
    let peer: SocketAddr = peer.parse().expect("test address");
    sim.set_meta(
        c,
        ConnMeta {
            peer: Some(peer),
            ..ConnMeta::default()
        },
    );
    sim.send(c, &Packet::Connect(Box::new(connect)));
    sim.run_until_idle();
    match sim.recv(c) {
        Some(Packet::ConnAck(a)) => {
            if a.reason_code == ReasonCode::Success {
                sim.send(c, &disconnect(ReasonCode::Success));
                sim.run_until_idle();
            }
            Some(a.reason_code)
        }
        None => None,
        Some(other) => panic!("expected CONNACK, got {other:?}"),
    }
}

/// `max_connections` is shared between the shards (each takes `ceil(total / shards)`); a refused
/// socket never becomes an engine connection; a close makes room again.
#[test]
fn max_connections_is_a_per_shard_share() {
    let mut sim = Sim::with_limits(
        2,
        limits(Overload {
            max_connections: 4,
            ..Overload::default()
        }),
    );
    let a = sim.accept(0, 0).expect("first");
    let _b = sim.accept(0, 0).expect("second");
    assert_eq!(sim.accept(0, 0).err(), Some(Refusal::MaxConnections));
    assert_eq!(sim.engine(0).connection_count(), 2);
    // The other shard has its own share.
    sim.accept(1, 0).expect("shard 1 first");
    sim.accept(1, 0).expect("shard 1 second");
    assert_eq!(sim.accept(1, 0).err(), Some(Refusal::MaxConnections));
    assert_eq!(refused(&sim, 0, Refusal::MaxConnections), 1);
    assert_eq!(refused(&sim, 1, Refusal::MaxConnections), 1);
    sim.drop_connection(a);
    sim.run_until_idle();
    sim.accept(0, 0).expect("room after a close");
}

/// A listener's own maximum counts only its connections; other listeners are not limited by it.
#[test]
fn listener_max_connections() {
    let mut sim = Sim::with_limits(
        1,
        limits(Overload {
            listener_max_connections: vec![0, 2],
            ..Overload::default()
        }),
    );
    let first = sim.accept(0, 1).expect("listener 1, first");
    sim.accept(0, 1).expect("listener 1, second");
    assert_eq!(
        sim.accept(0, 1).err(),
        Some(Refusal::ListenerMaxConnections)
    );
    for _ in 0..5 {
        sim.accept(0, 0)
            .expect("listener 0 has no bound of its own");
    }
    assert_eq!(refused(&sim, 0, Refusal::ListenerMaxConnections), 1);
    // A connection keeps counting for its listener once live, and stops when it closes.
    sim.send(first, &Packet::Connect(Box::new(v311("on-listener-1"))));
    sim.run_until_idle();
    assert_eq!(sim.expect_connack(first).reason_code, ReasonCode::Success);
    assert_eq!(
        sim.accept(0, 1).err(),
        Some(Refusal::ListenerMaxConnections)
    );
    sim.send(first, &disconnect(ReasonCode::Success));
    sim.run_until_idle();
    sim.accept(0, 1)
        .expect("room on listener 1 after the close");
}

/// A connection on listener 1 handed off to its home shard counts for listener 1 there.
#[test]
fn listener_count_follows_a_hand_off() {
    let mut sim = Sim::with_limits(
        2,
        limits(Overload {
            listener_max_connections: vec![0, 2],
            ..Overload::default()
        }),
    );
    let id = sim.client_id_on(1, "moved");
    let c = sim.accept(0, 1).expect("accepted on shard 0");
    sim.send(c, &Packet::Connect(Box::new(v311(&id))));
    sim.run_until_idle();
    assert_eq!(sim.expect_connack(c).reason_code, ReasonCode::Success);
    assert_eq!(sim.shard_of(c), 1);
    // Shard 1's share of listener 1 is 1, and the handed-off connection holds it.
    assert_eq!(
        sim.accept(1, 1).err(),
        Some(Refusal::ListenerMaxConnections)
    );
    sim.accept(0, 1).expect("shard 0 let it go");
}

/// `max_handshakes` bounds connections accepted and not CONNACKed yet: a CONNACK, a refusal or
/// the connect timeout makes room.
#[test]
fn max_handshakes_bounds_connections_before_connack() {
    let mut sim = Sim::with_limits(
        1,
        limits(Overload {
            max_handshakes: 2,
            ..Overload::default()
        }),
    );
    let slow = sim.accept(0, 0).expect("first handshake");
    let quick = sim.accept(0, 0).expect("second handshake");
    assert_eq!(sim.accept(0, 0).err(), Some(Refusal::MaxHandshakes));
    assert_eq!(sim.engine(0).admission().handshaking(), 2);
    sim.send(quick, &Packet::Connect(Box::new(v5("quick"))));
    sim.run_until_idle();
    assert_eq!(sim.expect_connack(quick).reason_code, ReasonCode::Success);
    assert_eq!(sim.engine(0).admission().handshaking(), 1);
    let third = sim.accept(0, 0).expect("room after a CONNACK");
    assert_eq!(sim.accept(0, 0).err(), Some(Refusal::MaxHandshakes));
    // The connect timeout closes the silent ones and frees their places.
    sim.advance(Duration::from_secs(11));
    assert!(sim.is_closed(slow) && sim.is_closed(third));
    assert_eq!(sim.engine(0).admission().handshaking(), 0);
    assert_eq!(refused(&sim, 0, Refusal::MaxHandshakes), 2);
    sim.accept(0, 0).expect("room after the timeouts");
}

/// The connect rate: a burst passes, then v5 gets CONNACK 0x9F Connection rate exceeded
/// [MQTT-3.2.2.2 reason codes] and 3.1.1 is closed without CONNACK; the bucket refills.
#[test]
fn connection_rate_with_burst() {
    let mut sim = Sim::with_limits(
        1,
        limits(Overload {
            max_connection_rate: 10,
            connection_rate_burst: 3,
            ..Overload::default()
        }),
    );
    for n in 0..3 {
        let (_, code) = try_connect(&mut sim, 0, v5(&format!("burst-{n}")));
        assert_eq!(code, Some(ReasonCode::Success), "burst connect {n}");
    }
    let (c, code) = try_connect(&mut sim, 0, v5("over"));
    assert_eq!(code, Some(ReasonCode::ConnectionRateExceeded));
    assert!(sim.is_closed(c));
    let (c, code) = try_connect(&mut sim, 0, v311("over-v3"));
    assert_eq!(code, None, "3.1.1 is closed without CONNACK");
    assert!(sim.is_closed(c));
    assert_eq!(refused(&sim, 0, Refusal::ConnectionRate), 2);
    // 10 per second: one token after 100 ms.
    sim.advance(Duration::from_millis(100));
    let (_, code) = try_connect(&mut sim, 0, v311("refilled"));
    assert_eq!(code, Some(ReasonCode::Success));
    let (_, code) = try_connect(&mut sim, 0, v311("empty-again"));
    assert_eq!(code, None);
    assert_eq!(sim.engine(0).admission().handshaking(), 0);
}

/// The rate is charged on the accepting shard; a handed-off CONNECT is not charged again.
#[test]
fn connection_rate_is_charged_once_across_a_hand_off() {
    let mut sim = Sim::with_limits(
        2,
        limits(Overload {
            max_connection_rate: 2,
            connection_rate_burst: 2,
            ..Overload::default()
        }),
    );
    // Each shard's bucket holds one (burst 2 over two shards).
    let id = sim.client_id_on(1, "far");
    let (c, code) = try_connect(&mut sim, 0, v5(&id));
    assert_eq!(code, Some(ReasonCode::Success));
    assert_eq!(sim.shard_of(c), 1);
    let near = sim.client_id_on(1, "near");
    let (_, code) = try_connect(&mut sim, 1, v5(&near));
    assert_eq!(
        code,
        Some(ReasonCode::Success),
        "shard 1's token was not spent"
    );
    let x = sim.client_id_on(0, "x");
    let (_, code) = try_connect(&mut sim, 0, v5(&x));
    assert_eq!(code, Some(ReasonCode::ConnectionRateExceeded));
}

fn flapping(max_connects: u32, per_address: u32) -> Overload {
    Overload {
        flapping: Flapping {
            max_connects,
            max_connects_per_address: per_address,
            window: Duration::from_secs(60),
            ban: Duration::from_secs(300),
        },
        ..Overload::default()
    }
}

/// Flapping by client id: the connect beyond `max_connects` within the window is refused and
/// starts a ban (v5 CONNACK 0x8A Banned, 3.1.1 return code 5); other ids are not affected; the
/// ban ends after `ban`. Connects accepted on either shard count on the id's home shard.
#[test]
fn flapping_client_id_is_banned_for_a_while() {
    for version in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
        let mut sim = Sim::with_limits(2, limits(flapping(3, 0)));
        let id = sim.client_id_on(1, "flappy");
        for n in 0..3u16 {
            let (c, code) = try_connect(&mut sim, n % 2, connect(version, &id));
            assert_eq!(code, Some(ReasonCode::Success), "{version:?} connect {n}");
            sim.send(c, &disconnect(ReasonCode::Success));
            sim.run_until_idle();
        }
        let expected = match version {
            ProtocolVersion::V5 => ReasonCode::Banned,
            _ => ReasonCode::NotAuthorized,
        };
        let (c, code) = try_connect(&mut sim, 0, connect(version, &id));
        assert_eq!(code, Some(expected), "{version:?}: the fourth connect");
        assert!(sim.is_closed(c));
        let calm = sim.client_id_on(1, "calm");
        let (_, code) = try_connect(&mut sim, 1, connect(version, &calm));
        assert_eq!(code, Some(ReasonCode::Success));
        let admission = sim.engine(1).admission();
        assert_eq!(admission.counters.flapping_bans, 1);
        // Still banned later in the window and after it, until the ban ends.
        sim.advance(Duration::from_secs(120));
        let (_, code) = try_connect(&mut sim, 1, connect(version, &id));
        assert_eq!(code, Some(expected), "{version:?}: during the ban");
        assert_eq!(refused(&sim, 1, Refusal::Flapping), 2);
        sim.advance(Duration::from_secs(181));
        let (_, code) = try_connect(&mut sim, 1, connect(version, &id));
        assert_eq!(
            code,
            Some(ReasonCode::Success),
            "{version:?}: after the ban"
        );
        assert_eq!(sim.engine(0).admission().handshaking(), 0);
        assert_eq!(sim.engine(1).admission().handshaking(), 0);
    }
}

/// Connects spread over more than the window are not flapping.
#[test]
fn slow_reconnects_are_not_flapping() {
    let mut sim = Sim::with_limits(1, limits(flapping(3, 0)));
    for n in 0..10 {
        let (c, code) = try_connect(&mut sim, 0, v5("steady"));
        assert_eq!(code, Some(ReasonCode::Success), "connect {n}");
        sim.send(c, &disconnect(ReasonCode::Success));
        sim.advance(Duration::from_secs(21));
    }
    assert_eq!(sim.engine(0).admission().counters.flapping_bans, 0);
}

/// Flapping by address counts every client id from it; other addresses are not affected.
#[test]
fn flapping_address_is_banned() {
    let mut sim = Sim::with_limits(1, limits(flapping(0, 2)));
    assert!(sim.engine(0).admission().wants_peer_address());
    for n in 0..2 {
        let code = with_peer(&mut sim, 0, "198.51.100.9:4000", v5(&format!("car-{n}")));
        assert_eq!(code, Some(ReasonCode::Success));
    }
    let code = with_peer(&mut sim, 0, "198.51.100.9:4001", v5("car-2"));
    assert_eq!(code, Some(ReasonCode::Banned));
    let code = with_peer(&mut sim, 0, "198.51.100.10:4000", v5("car-3"));
    assert_eq!(code, Some(ReasonCode::Success));
    // IPv4-mapped IPv6 is the same address.
    let code = with_peer(&mut sim, 0, "[::ffff:198.51.100.9]:4002", v311("car-4"));
    assert_eq!(code, Some(ReasonCode::NotAuthorized));
}

/// The static ban list: client ids, usernames, addresses and CIDR blocks.
#[test]
fn static_ban_list() {
    let overload = Overload {
        ban: BanList {
            client_ids: vec!["stolen-car".into()],
            usernames: vec!["mallory".into()],
            addresses: vec![
                "203.0.113.0/24".parse().expect("cidr"),
                "2001:db8::1".parse().expect("ip"),
            ],
        },
        ..Overload::default()
    };
    let mut sim = Sim::with_limits(1, limits(overload));
    let (_, code) = try_connect(&mut sim, 0, v5("stolen-car"));
    assert_eq!(code, Some(ReasonCode::Banned));
    let (_, code) = try_connect(&mut sim, 0, v311("stolen-car"));
    assert_eq!(code, Some(ReasonCode::NotAuthorized), "3.1.1 return code 5");
    let mut c = v5("honest");
    c.username = Some("mallory".into());
    let (_, code) = try_connect(&mut sim, 0, c);
    assert_eq!(code, Some(ReasonCode::Banned));
    let code = with_peer(&mut sim, 0, "203.0.113.77:1234", v5("from-banned-net"));
    assert_eq!(code, Some(ReasonCode::Banned));
    let code = with_peer(&mut sim, 0, "[2001:db8::1]:1234", v5("from-banned-ip"));
    assert_eq!(code, Some(ReasonCode::Banned));
    let code = with_peer(&mut sim, 0, "[2001:db8::2]:1234", v5("next-door"));
    assert_eq!(code, Some(ReasonCode::Success));
    let (_, code) = try_connect(&mut sim, 0, v5("honest"));
    assert_eq!(code, Some(ReasonCode::Success));
    assert_eq!(refused(&sim, 0, Refusal::Banned), 5);
}

/// A publisher over its message rate: the burst is handled, then reading pauses until the budget
/// refills; every message arrives, in order, none dropped.
#[test]
fn publish_rate_pauses_reading_and_drops_nothing() {
    let mut sim = Sim::with_limits(
        2,
        limits(Overload {
            publish_rate_per_client: 10,
            ..Overload::default()
        }),
    );
    let (sub, _) = sim.connect(1, v5(&sim.client_id_on(1, "sub")));
    sim.subscribe(sub, "t", QoS::AtLeastOnce);
    let (publisher, _) = sim.connect(0, v5(&sim.client_id_on(0, "pub")));
    let frames: Vec<Packet> = (1..=35u16)
        .map(|n| publish("t", format!("{n}").as_bytes(), QoS::AtLeastOnce, Some(n)))
        .collect();
    sim.send_bytes(publisher, &encode_all(ProtocolVersion::V5, &frames));
    sim.run_until_idle();
    let first: Vec<_> = std::iter::from_fn(|| sim.recv(sub)).collect();
    assert_eq!(first.len(), 10, "one second's burst");
    assert!(sim.is_paused(publisher), "reading paused over the rate");
    assert!(sim.events(publisher).contains(&Event::PauseReading));
    let mut got: Vec<u16> = Vec::new();
    for p in first {
        if let Packet::Publish(p) = p {
            got.push(String::from_utf8_lossy(&p.payload).parse().unwrap_or(0));
            sim.send(sub, &puback(packet_id_of(&p)));
        }
    }
    // 10 per second: the other 25 take about 2.5 s of the fake clock.
    for _ in 0..40 {
        sim.advance(Duration::from_millis(100));
        while let Some(p) = sim.recv(sub) {
            if let Packet::Publish(p) = p {
                got.push(String::from_utf8_lossy(&p.payload).parse().unwrap_or(0));
                sim.send(sub, &puback(packet_id_of(&p)));
            }
        }
    }
    assert_eq!(got, (1..=35).collect::<Vec<u16>>(), "all, in order");
    assert!(!sim.is_paused(publisher), "reading resumed");
    assert!(sim.events(publisher).contains(&Event::ResumeReading));
    assert_eq!(sim.engine(0).state.counters.dropped_total(), 0);
    assert!(sim.engine(0).admission().counters.publish_rate_pauses >= 2);
    // Every PUBACK reached the publisher.
    let acks = sim
        .recv_all(publisher)
        .into_iter()
        .filter(|p| matches!(p, Packet::PubAck(_)))
        .count();
    assert_eq!(acks, 35);
}

/// The byte rate: a client over its bytes per second waits; other frames than PUBLISH (PINGREQ)
/// queued behind a waiting PUBLISH wait too (input is handled in order).
#[test]
fn publish_byte_rate() {
    let mut sim = Sim::with_limits(
        1,
        limits(Overload {
            publish_bytes_per_client: 1000,
            ..Overload::default()
        }),
    );
    let (sub, _) = sim.connect(0, v311("bsub"));
    sim.subscribe(sub, "b", QoS::AtMostOnce);
    let (publisher, _) = sim.connect(0, v311("bpub"));
    let payload = vec![b'x'; 400];
    let frames: Vec<Packet> = (0..10)
        .map(|_| publish("b", &payload, QoS::AtMostOnce, None))
        .collect();
    sim.send_bytes(publisher, &encode_all(ProtocolVersion::V3_1_1, &frames));
    sim.run_until_idle();
    // 1000 bytes saved up: three frames of ~405 bytes pass (the third goes into debt).
    assert_eq!(sim.recv_all(sub).len(), 3);
    assert!(sim.is_paused(publisher));
    sim.advance(Duration::from_secs(5));
    assert_eq!(sim.recv_all(sub).len(), 7, "the rest, nothing dropped");
    assert!(!sim.is_paused(publisher));
}

/// Without `[overload]` settings nothing is limited (the engine's defaults are all off).
#[test]
fn defaults_limit_nothing() {
    let mut sim = Sim::new(1);
    for n in 0..50 {
        let (c, code) = try_connect(&mut sim, 0, v311("same"));
        assert_eq!(code, Some(ReasonCode::Success), "connect {n}");
        sim.send(c, &disconnect(ReasonCode::Success));
        sim.run_until_idle();
    }
    assert!(sim
        .engine(0)
        .admission()
        .counters
        .refused
        .iter()
        .all(|n| *n == 0));
}
