//! Time-driven behaviour on the fake clock: wills (on connection loss, not on DISCONNECT, v5 will
//! delay), session expiry, and the keepalive timeout.

mod sim;

use std::time::Duration;

use bytes::Bytes;
use sim::*;
use wire::{Connect, LastWill, Packet, QoS, ReasonCode, Utf8Bytes, WillProperties};

fn with_will(
    mut connect: Connect,
    topic: &str,
    payload: &[u8],
    delay_secs: Option<u32>,
) -> Connect {
    connect.will = Some(LastWill {
        topic: Utf8Bytes::from(topic),
        payload: Bytes::copy_from_slice(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: delay_secs,
            ..Default::default()
        },
    });
    connect
}

/// A watcher of `status/#` on `shard`.
fn watcher(sim: &mut Sim, shard: u16) -> Client {
    let (w, _) = sim.connect(shard, v5(&sim.client_id_on(shard, "watch")));
    sim.subscribe(w, "status/#", QoS::AtLeastOnce);
    w
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// [MQTT-3.1.2-8] the will is published when the connection closes without DISCONNECT — on its
/// home shard, reaching a subscriber on another.
#[test]
fn will_on_connection_loss() {
    for (car_shard, watch_shard) in [(0, 0), (1, 0), (0, 1)] {
        let mut sim = Sim::new(2);
        let w = watcher(&mut sim, watch_shard);
        let id = sim.client_id_on(car_shard, "car");
        let (car, _) = sim.connect(0, with_will(v311(&id), "status/car", b"gone", None));
        sim.drop_connection(car);
        sim.run_until_idle();
        assert!(sim.is_closed(car));
        let p = sim.expect_publish(w);
        assert_eq!(
            (p.topic.as_str(), &p.payload[..]),
            ("status/car", &b"gone"[..])
        );
        assert_eq!(p.qos, QoS::AtLeastOnce);
        assert_eq!(sim.engine(car_shard).state.counters.wills_published, 1);
    }
}

/// [MQTT-3.1.2-10] a normal DISCONNECT discards the will.
#[test]
fn no_will_on_disconnect() {
    let mut sim = Sim::new(2);
    let w = watcher(&mut sim, 0);
    let id = sim.client_id_on(1, "car");
    let (car, _) = sim.connect(1, with_will(v5(&id), "status/car", b"gone", None));
    sim.send(car, &disconnect(ReasonCode::Success));
    sim.run_until_idle();
    assert!(sim.is_closed(car));
    sim.expect_nothing(w);
    assert_eq!(sim.engine(1).state.counters.wills_published, 0);
}

/// v5 DISCONNECT 0x04 Disconnect with Will Message: closes normally but publishes the will
/// (3.14.2.1).
#[test]
fn v5_disconnect_with_will_message() {
    let mut sim = Sim::new(1);
    let w = watcher(&mut sim, 0);
    let (car, _) = sim.connect(0, with_will(v5("car"), "status/car", b"bye", None));
    sim.send(car, &disconnect(ReasonCode::DisconnectWithWillMessage));
    sim.run_until_idle();
    assert!(sim.is_closed(car));
    assert_eq!(&sim.expect_publish(w).payload[..], b"bye");
}

/// A protocol error closes the connection and publishes the will (it is not a DISCONNECT).
#[test]
fn will_on_protocol_error() {
    let mut sim = Sim::new(1);
    let w = watcher(&mut sim, 0);
    let (car, _) = sim.connect(0, with_will(v5("car"), "status/car", b"err", None));
    // [MQTT-3.1.0-2] a second CONNECT is a protocol error.
    sim.send(car, &Packet::Connect(Box::new(v5("car"))));
    sim.run_until_idle();
    assert_eq!(
        sim.expect_disconnect(car).reason_code,
        ReasonCode::ProtocolError
    );
    assert!(sim.is_closed(car));
    assert_eq!(&sim.expect_publish(w).payload[..], b"err");
}

/// v5 Will Delay Interval: the will waits for the delay after the connection is lost
/// (3.1.3.2.2), and a reconnect within it cancels it [MQTT-3.1.3-9].
#[test]
fn v5_will_delay() {
    let mut sim = Sim::new(2);
    let w = watcher(&mut sim, 0);
    let id = sim.client_id_on(1, "car");
    let connect = || with_will(v5_persistent(&id, 600), "status/car", b"late", Some(10));

    // Reconnect within the delay: no will.
    let (car, _) = sim.connect(1, connect());
    sim.drop_connection(car);
    sim.advance(secs(9));
    let (car, ack) = sim.connect(1, connect());
    assert!(ack.session_present);
    sim.advance(secs(60));
    sim.expect_nothing(w);

    // Stay away: the will goes out at 10 s, not before.
    sim.drop_connection(car);
    sim.advance(secs(9));
    sim.expect_nothing(w);
    sim.advance(secs(1));
    assert_eq!(&sim.expect_publish(w).payload[..], b"late");
    sim.advance(secs(60));
    sim.expect_nothing(w);
}

/// The will is published when the session ends, if that comes before the will delay
/// [MQTT-3.1.2-8] (3.1.3.2.2: "whichever happens first").
#[test]
fn v5_will_at_session_end_when_sooner() {
    let mut sim = Sim::new(1);
    let w = watcher(&mut sim, 0);
    let (car, _) = sim.connect(
        0,
        with_will(v5_persistent("car", 5), "status/car", b"end", Some(100)),
    );
    sim.drop_connection(car);
    sim.advance(secs(4));
    sim.expect_nothing(w);
    sim.advance(secs(1));
    assert_eq!(&sim.expect_publish(w).payload[..], b"end");
}

/// v5 session expiry: a session outlives its connection by Session Expiry Interval, keeping its
/// subscriptions and storing QoS 1 messages meanwhile [MQTT-3.1.2-23]; after it, it is gone.
#[test]
fn v5_session_expiry() {
    let mut sim = Sim::new(2);
    let id = sim.client_id_on(1, "sleeper");
    let (publisher, _) = sim.connect(0, v5(&sim.client_id_on(0, "p")));
    let (s, _) = sim.connect(0, v5_persistent(&id, 10));
    sim.subscribe(s, "e", QoS::AtLeastOnce);
    sim.drop_connection(s);
    sim.advance(secs(5));
    sim.send(publisher, &publish("e", b"kept", QoS::AtLeastOnce, Some(1)));
    sim.run_until_idle();
    let (s, ack) = sim.connect(0, v5_persistent(&id, 10));
    assert!(ack.session_present);
    assert_eq!(&sim.expect_publish(s).payload[..], b"kept");

    sim.drop_connection(s);
    sim.advance(secs(9));
    assert_eq!(sim.engine(1).state.sessions_total(), 1);
    sim.advance(secs(1));
    assert_eq!(sim.engine(1).state.sessions_total(), 0);
    assert_eq!(sim.engine(1).state.counters.sessions_expired, 1);
    let (s, ack) = sim.connect(0, v5_persistent(&id, 10));
    assert!(!ack.session_present);
    sim.send(publisher, &publish("e", b"lost", QoS::AtLeastOnce, Some(2)));
    sim.run_until_idle();
    sim.expect_nothing(s);
}

/// v5 DISCONNECT may lower the expiry to 0 (the session ends now) but not raise a 0 expiry
/// [MQTT-3.14.2-2]: that is a protocol error (DISCONNECT 0x82).
#[test]
fn v5_disconnect_changes_expiry() {
    let mut sim = Sim::new(1);
    let (s, _) = sim.connect(0, v5_persistent("s", 60));
    let mut d = wire::Disconnect {
        reason_code: ReasonCode::Success,
        properties: Default::default(),
    };
    d.properties.session_expiry_interval = Some(0);
    sim.send(s, &Packet::Disconnect(d.clone()));
    sim.run_until_idle();
    assert!(sim.is_closed(s));
    assert_eq!(sim.engine(0).state.sessions_total(), 0);

    let (s, _) = sim.connect(0, v5("t"));
    d.properties.session_expiry_interval = Some(30);
    sim.send(s, &Packet::Disconnect(d));
    sim.run_until_idle();
    assert_eq!(
        sim.expect_disconnect(s).reason_code,
        ReasonCode::ProtocolError
    );
    assert!(sim.is_closed(s));
}

/// 3.1.1 persistent session (clean session 0) keeps for `session_expiry_max_secs`.
#[test]
fn v311_persistent_session_kept_until_max() {
    let limits = ringmq_engine::Limits {
        session_expiry_max_secs: 3600,
        ..Default::default()
    };
    let mut sim = Sim::with_limits(1, limits);
    let mut c = v311("keep");
    c.clean_start = false;
    let (s, _) = sim.connect(0, c.clone());
    sim.drop_connection(s);
    sim.advance(secs(3599));
    assert_eq!(sim.engine(0).state.sessions_total(), 1);
    sim.advance(secs(1));
    assert_eq!(sim.engine(0).state.sessions_total(), 0);
}

/// [MQTT-3.1.2-24] no packet within 1.5 × keepalive closes the connection: not at 14.999 s of a
/// 10 s keepalive, at 15 s; v5 says why (DISCONNECT 0x8D); the will goes out.
#[test]
fn keepalive_timeout_at_one_and_a_half() {
    let mut sim = Sim::new(2);
    let w = watcher(&mut sim, 0);
    let id = sim.client_id_on(1, "ka");
    let mut c = with_will(v5(&id), "status/ka", b"timeout", None);
    c.keep_alive_secs = 10;
    let (s, _) = sim.connect(0, c);
    sim.advance(Duration::from_millis(14_999));
    assert!(!sim.is_closed(s));
    sim.advance(Duration::from_millis(1));
    assert_eq!(
        sim.expect_disconnect(s).reason_code,
        ReasonCode::KeepAliveTimeout
    );
    assert!(sim.is_closed(s));
    assert_eq!(&sim.expect_publish(w).payload[..], b"timeout");
}

/// Any packet restarts the keepalive period: PINGREQ at 10 s moves the deadline to 25 s; a 3.1.1
/// connection is closed without a DISCONNECT.
#[test]
fn keepalive_restarted_by_pingreq() {
    let mut sim = Sim::new(1);
    let mut c = v311("ka");
    c.keep_alive_secs = 10;
    let (s, _) = sim.connect(0, c);
    sim.advance(secs(10));
    sim.send(s, &Packet::PingReq);
    sim.run_until_idle();
    assert_eq!(sim.expect(s), Packet::PingResp);
    sim.advance(Duration::from_millis(14_999));
    assert!(!sim.is_closed(s));
    sim.advance(Duration::from_millis(1));
    assert!(sim.is_closed(s));
    assert!(sim.take_bytes(s).is_empty());
}

/// Keepalive 0 turns the mechanism off [MQTT-3.1.2-22 context, 3.1.2.10].
#[test]
fn keepalive_zero_never_times_out() {
    let mut sim = Sim::new(1);
    let (s, _) = sim.connect(0, v5("forever"));
    sim.advance(secs(24 * 3600));
    assert!(!sim.is_closed(s));
}

/// A client that keeps taking its own session over (a car whose old TCP connection is still
/// open when it reconnects) must not pile up keepalive timers: each connection's timer ends
/// with it, so the timer heap stays bounded by the sessions, not by the takeovers.
#[test]
fn takeovers_do_not_pile_up_keepalive_timers() {
    let mut sim = Sim::new(1);
    let mut c = v5_persistent("flapper", 600);
    c.keep_alive_secs = 10;
    let mut last = None;
    for _ in 0..50 {
        let (client, ack) = sim.connect(0, c.clone());
        assert_eq!(ack.reason_code, ReasonCode::Success);
        last = Some(client);
        sim.advance(secs(1));
    }
    // Past one keepalive period of the last connection: every stale timer has fired once.
    for _ in 0..3 {
        if let Some(client) = last {
            sim.send(client, &Packet::PingReq);
        }
        sim.advance(secs(10));
    }
    assert!(last.is_some_and(|client| !sim.is_closed(client)));
    let timers = sim.engine(0).state.timer_count();
    assert!(timers <= 2, "{timers} timers for one online session");
}
