//! Authentication and ACL in the engine: CONNECT held for the runtime's answer
//! (`Output::Authenticate` → `Engine::handle_auth_result`, here a fake authenticator answering
//! after a few steps), CONNACK codes per version, takeover only after authentication, token
//! expiry, and ACL checks at SUBSCRIBE, PUBLISH and delivery (live, shared, retained).

mod sim;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ringmq_engine::{Authenticated, Limits};
use sim::*;
use wire::{Packet, ProtocolVersion, QoS, ReasonCode, Utf8Bytes};

/// Accepts username "good" with password "secret"; refuses everything else as bad credentials,
/// except username "blocked" (banned) and "nobody" (not authorized).
fn passwords() -> FakeAuthenticator {
    Box::new(|request| {
        let c = &request.credentials;
        match (c.username.as_deref(), c.password.as_deref()) {
            (Some("good"), Some(b"secret")) => Ok(Authenticated {
                identity: auth::Identity::new(c.client_id.clone(), c.username.clone()),
                close_at: None,
            }),
            (Some("blocked"), _) => Err(auth::Refusal::Banned),
            (Some("nobody"), _) => Err(auth::Refusal::NotAuthorized(
                auth::FailureReason::AnonymousRefused,
            )),
            _ => Err(auth::Refusal::BadCredentials(
                auth::FailureReason::WrongPassword,
            )),
        }
    })
}

fn with_credentials(
    version: ProtocolVersion,
    client_id: &str,
    username: &str,
    password: &[u8],
) -> wire::Connect {
    let mut c = connect(version, client_id);
    c.username = Some(Utf8Bytes::from(username));
    c.password = Some(Bytes::copy_from_slice(password));
    c
}

/// The CONNECT waits for the answer: nothing is sent before it, then CONNACK; a SUBSCRIBE sent
/// right behind the CONNECT is handled after the CONNACK, in order [MQTT-3.1.4-5] (no packet
/// other than CONNECT is processed before the connection is accepted).
#[test]
fn connect_waits_for_the_answer() {
    let mut sim = Sim::new(1);
    sim.set_authenticator(5, passwords());
    let c = sim.open(0);
    sim.send(
        c,
        &Packet::Connect(Box::new(with_credentials(
            ProtocolVersion::V5,
            "car-1",
            "good",
            b"secret",
        ))),
    );
    sim.send(c, &subscribe(1, &[("t", QoS::AtLeastOnce)]));
    for _ in 0..3 {
        sim.step();
    }
    assert_eq!(sim.auth_pending(), 1);
    assert!(sim.take_bytes(c).is_empty(), "nothing before the answer");
    assert_eq!(sim.engine(0).state.sessions_total(), 0);
    sim.run_until_idle();
    assert_eq!(sim.expect_connack(c).reason_code, ReasonCode::Success);
    assert_eq!(sim.expect_suback(c).reason_codes, [ReasonCode::GrantedQoS1]);
    let request = &sim.auth_requests[0];
    assert_eq!(request.credentials.client_id, "car-1");
    assert_eq!(
        request.credentials.password.as_deref(),
        Some(&b"secret"[..])
    );
    assert_eq!(sim.engine(0).state.counters.auth.accepted, 1);
}

/// Refusals per version: v5 CONNACK 0x86 / 0x87 / 0x8A / 0x97, 3.1.1 return codes 4 / 5 / 5 / 3
/// [MQTT-3.2.2-6] (session present 0 with a non-zero code), then close [MQTT-3.2.2-5].
#[test]
fn refusal_codes_per_version() {
    let cases: [(&str, ReasonCode, &str); 3] = [
        ("wrong", ReasonCode::BadUserNameOrPassword, "20 02 00 04"),
        ("nobody", ReasonCode::NotAuthorized, "20 02 00 05"),
        ("blocked", ReasonCode::Banned, "20 02 00 05"),
    ];
    for (user, v5_code, v311_bytes) in cases {
        let mut sim = Sim::new(1);
        sim.set_authenticator(1, passwords());
        let (c, ack) = sim.connect(
            0,
            with_credentials(ProtocolVersion::V5, "c5", user, b"nope"),
        );
        assert_eq!(ack.reason_code, v5_code, "{user}");
        assert!(!ack.session_present);
        assert!(sim.is_closed(c));
        let c = sim.open(0);
        sim.send(
            c,
            &Packet::Connect(Box::new(with_credentials(
                ProtocolVersion::V3_1_1,
                "c3",
                user,
                b"nope",
            ))),
        );
        sim.run_until_idle();
        assert_eq!(to_hex(&sim.take_bytes(c)), v311_bytes, "{user}");
        assert!(sim.is_closed(c));
        assert_eq!(sim.engine(0).state.sessions_total(), 0);
    }
    let mut sim = Sim::new(1);
    sim.set_authenticator(0, Box::new(|_| Err(auth::Refusal::QuotaExceeded)));
    let (_, ack) = sim.connect(0, v5("q"));
    assert_eq!(ack.reason_code, ReasonCode::QuotaExceeded);
    assert_eq!(sim.engine(0).state.counters.auth.refused_quota, 1);
}

/// A CONNECT with a connected client's id and a wrong password does not take the session over
/// [MQTT-3.1.4-3 applies only to an accepted connection]: the owner stays connected and gets its
/// messages.
#[test]
fn refused_connect_does_not_take_over() {
    let mut sim = Sim::new(2);
    sim.set_authenticator(2, passwords());
    let id = sim.client_id_on(1, "victim");
    let (owner, ack) = sim.connect(
        0,
        with_credentials(ProtocolVersion::V5, &id, "good", b"secret"),
    );
    assert_eq!(ack.reason_code, ReasonCode::Success);
    sim.subscribe(owner, "v/status", QoS::AtMostOnce);
    let (thief, ack) = sim.connect(
        0,
        with_credentials(ProtocolVersion::V5, &id, "good", b"guess"),
    );
    assert_eq!(ack.reason_code, ReasonCode::BadUserNameOrPassword);
    assert!(sim.is_closed(thief));
    assert!(!sim.is_closed(owner));
    // Both were handed to the id's home shard and decided there.
    assert_eq!(sim.engine(1).state.counters.auth.requested, 2);
    assert_eq!(sim.engine(0).state.counters.auth.requested, 0);
    let (publisher, _) = sim.connect(
        1,
        with_credentials(ProtocolVersion::V5, "pub", "good", b"secret"),
    );
    sim.send(
        publisher,
        &publish("v/status", b"ok", QoS::AtMostOnce, None),
    );
    sim.run_until_idle();
    assert_eq!(&sim.expect_publish(owner).payload[..], b"ok");
    assert_eq!(sim.engine(1).state.counters.takeovers, 0);
}

/// An answer that never comes costs the connection only: the connect timeout closes it, and a
/// late answer for it is ignored.
#[test]
fn connect_timeout_while_authenticating() {
    let limits = Limits {
        connect_timeout_secs: 2,
        ..Limits::default()
    };
    let mut sim = Sim::with_limits(1, limits);
    sim.set_authenticator(u64::MAX / 2, passwords());
    let c = sim.open(0);
    sim.send(
        c,
        &Packet::Connect(Box::new(with_credentials(
            ProtocolVersion::V5,
            "slow",
            "good",
            b"secret",
        ))),
    );
    for _ in 0..3 {
        sim.step();
    }
    let conn = sim.conn_of(c);
    sim.tick(Duration::from_secs(3));
    let now = sim.now();
    sim.engines[0].handle_timeout(now);
    sim.step();
    assert!(sim.is_closed(c));
    assert!(sim.take_bytes(c).is_empty());
    if let Some(conn) = conn {
        let late = Ok(Authenticated {
            identity: auth::Identity::new("slow", None),
            close_at: None,
        });
        sim.engines[0].handle_auth_result(conn, late, now);
    }
    assert_eq!(sim.engine(0).state.sessions_total(), 0);
    assert_eq!(sim.engine(0).connection_count(), 0);
}

/// A token's expiry closes the connection: v5 DISCONNECT 0x87, counted.
#[test]
fn token_expiry_closes_the_connection() {
    let mut sim = Sim::new(1);
    let base = sim.now();
    sim.set_authenticator(
        1,
        Box::new(move |request| {
            Ok(Authenticated {
                identity: auth::Identity::new(request.credentials.client_id.clone(), None),
                close_at: Some(base + Duration::from_secs(60)),
            })
        }),
    );
    let (c, ack) = sim.connect(0, v5("token-car"));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    sim.advance(Duration::from_secs(59));
    assert!(!sim.is_closed(c));
    sim.advance(Duration::from_secs(2));
    assert_eq!(
        sim.expect_disconnect(c).reason_code,
        ReasonCode::NotAuthorized
    );
    assert!(sim.is_closed(c));
    assert_eq!(sim.engine(0).state.counters.auth.expired, 1);
}

fn fleet_acl() -> Arc<auth::Acl> {
    let acl = auth::Acl::parse("pattern readwrite vehicle/%c/#\nuser ops\ntopic read vehicle/#\n")
        .expect("acl parses");
    Arc::new(acl)
}

/// `vehicle/%c/#`: a vehicle reaches its own data only. SUBSCRIBE through `+`, `#` or
/// `$share/...` is refused (v5 0x87, 3.1.1 0x80 [MQTT-3.9.3-1]); PUBLISH to another vehicle is
/// refused (v5 PUBACK 0x87; 3.1.1 PUBACK as Mosquitto does, not routed); retained messages of
/// other vehicles are not delivered on a wildcard the ACL grants (ops).
#[test]
fn acl_keeps_vehicles_apart() {
    for version in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
        let refused = if version == ProtocolVersion::V5 {
            ReasonCode::NotAuthorized
        } else {
            ReasonCode::UnspecifiedError
        };
        let mut sim = Sim::new(2);
        sim.set_acl(Some(fleet_acl()));
        let a_id = sim.client_id_on(0, "a");
        let b_id = sim.client_id_on(1, "b");
        let (a, _) = sim.connect(0, connect(version, &a_id));
        let (b, _) = sim.connect(1, connect(version, &b_id));
        sim.send(
            b,
            &publish_retained(
                &format!("vehicle/{b_id}/pos"),
                b"b-secret",
                QoS::AtLeastOnce,
                Some(1),
            ),
        );
        sim.run_until_idle();
        assert!(matches!(sim.expect(b), Packet::PubAck(_)));
        let own = format!("vehicle/{a_id}/#");
        let other = format!("vehicle/{b_id}/#");
        let share = format!("$share/g/vehicle/{b_id}/pos");
        sim.send(
            a,
            &subscribe(
                1,
                &[
                    ("vehicle/+/pos", QoS::AtMostOnce),
                    ("vehicle/#", QoS::AtMostOnce),
                    ("#", QoS::AtMostOnce),
                    (share.as_str(), QoS::AtMostOnce),
                    (other.as_str(), QoS::AtMostOnce),
                    ("$share/g/vehicle/#", QoS::AtMostOnce),
                    (own.as_str(), QoS::AtLeastOnce),
                ],
            ),
        );
        sim.run_until_idle();
        let codes = sim.expect_suback(a).reason_codes;
        assert_eq!(codes[..6], [refused; 6], "{version:?}");
        assert_eq!(codes[6], ReasonCode::GrantedQoS1, "{version:?}");
        // a writes into b's topics: refused, never reaches b.
        sim.subscribe(b, &format!("vehicle/{b_id}/cmd"), QoS::AtLeastOnce);
        sim.send(
            a,
            &publish(
                &format!("vehicle/{b_id}/cmd"),
                b"unlock",
                QoS::AtLeastOnce,
                Some(7),
            ),
        );
        sim.send(
            a,
            &publish(&format!("vehicle/{b_id}/cmd"), b"q0", QoS::AtMostOnce, None),
        );
        sim.run_until_idle();
        let Packet::PubAck(ack) = sim.expect(a) else {
            panic!("expected PUBACK")
        };
        let expected = if version == ProtocolVersion::V5 {
            ReasonCode::NotAuthorized
        } else {
            ReasonCode::Success
        };
        assert_eq!(ack.reason_code, expected, "{version:?}");
        sim.expect_nothing(b);
        assert_eq!(sim.engine(0).state.counters.auth.publish_denied, 2);

        // ops may read vehicle/#; its retained delivery and live traffic pass the read check.
        let mut ops_connect = connect(version, "ops-console");
        ops_connect.username = Some(Utf8Bytes::from("ops"));
        let (ops, _) = sim.connect(0, ops_connect);
        sim.send(ops, &subscribe(1, &[("vehicle/#", QoS::AtMostOnce)]));
        sim.run_until_idle();
        assert_eq!(sim.expect_suback(ops).reason_codes, [ReasonCode::Success]);
        assert_eq!(&sim.expect_publish(ops).payload[..], b"b-secret");
    }
}

/// The read check at delivery: a grant narrowed by a reload (`set_acl`) stops deliveries on the
/// subscriptions made under the old one, retained ones included, on every shard.
#[test]
fn reload_narrows_existing_subscriptions() {
    let mut sim = Sim::new(2);
    sim.set_acl(Some(fleet_acl()));
    let b_id = sim.client_id_on(1, "b");
    let mut ops_connect = v5("ops-console");
    ops_connect.username = Some(Utf8Bytes::from("ops"));
    let (ops, _) = sim.connect(0, ops_connect);
    sim.subscribe(ops, "vehicle/#", QoS::AtMostOnce);
    let (b, _) = sim.connect(1, v5(&b_id));
    let topic = format!("vehicle/{b_id}/pos");
    sim.send(b, &publish(&topic, b"before", QoS::AtMostOnce, None));
    sim.run_until_idle();
    assert_eq!(&sim.expect_publish(ops).payload[..], b"before");

    let narrowed = Arc::new(auth::Acl::parse("pattern readwrite vehicle/%c/#\n").expect("acl"));
    sim.set_acl(Some(narrowed));
    sim.send(b, &publish(&topic, b"after", QoS::AtMostOnce, None));
    sim.send(b, &publish_retained(&topic, b"kept", QoS::AtMostOnce, None));
    sim.run_until_idle();
    sim.expect_nothing(ops);
    let denied: u64 = (0..2)
        .map(|shard| sim.engine(shard).state.counters.auth.deliver_denied)
        .sum();
    assert_eq!(denied, 2);
}

/// `[acl] deny` rules are part of the ACL: a filter overlapping one is refused at SUBSCRIBE (so
/// `#` too, stricter than the older rule, which refused only filters inside it), delivery on a
/// denied topic is refused, publishing is allowed.
#[test]
fn deny_rules_join_the_acl() {
    let acl = auth::Acl::allow_all()
        .with_deny_filters(&["secret/#".to_owned()])
        .expect("deny rules");
    let mut sim = Sim::new(1);
    sim.set_acl(Some(Arc::new(acl)));
    let (c, _) = sim.connect(0, v5("c"));
    sim.send(
        c,
        &subscribe(
            1,
            &[
                ("secret/a", QoS::AtMostOnce),
                ("#", QoS::AtMostOnce),
                ("open/#", QoS::AtMostOnce),
            ],
        ),
    );
    sim.run_until_idle();
    assert_eq!(
        sim.expect_suback(c).reason_codes,
        [
            ReasonCode::NotAuthorized,
            ReasonCode::NotAuthorized,
            ReasonCode::Success
        ]
    );
    sim.send(c, &publish("secret/a", b"x", QoS::AtMostOnce, None));
    sim.send(c, &publish("open/a", b"y", QoS::AtMostOnce, None));
    sim.run_until_idle();
    assert_eq!(&sim.expect_publish(c).payload[..], b"y");
    sim.expect_nothing(c);
}
