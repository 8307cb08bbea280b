//! mTLS identity mapping at CONNECT: the verified certificate's names become the username or the
//! client id as the listener says (`identity_as_username`, `identity_as_client_id`,
//! `require_client_id_match`), before the home shard is chosen.

mod sim;

use ringmq_engine::state::home_shard;
use ringmq_engine::{ConnMeta, IdentityMapping, IdentitySource, PeerIdentity};
use sim::*;
use wire::{Packet, ProtocolVersion, ReasonCode};

fn meta(cn: Option<&str>, mapping: IdentityMapping) -> ConnMeta {
    ConnMeta {
        peer: Some("192.0.2.9:50000".parse().expect("address")),
        listener: 1,
        identity: Some(PeerIdentity {
            common_name: cn.map(str::to_owned),
            dns_names: vec!["car.fleet.example".into()],
            uris: vec!["urn:vin:WVW123".into()],
        }),
        mapping,
    }
}

fn client_id_from(source: IdentitySource, require_match: bool) -> IdentityMapping {
    IdentityMapping {
        as_client_id: source,
        require_client_id_match: require_match,
        ..Default::default()
    }
}

/// Connects `client_id` with `meta` on shard 0 and returns the client and its CONNACK code.
fn connect_with(
    sim: &mut Sim,
    version: ProtocolVersion,
    client_id: &str,
    meta: ConnMeta,
) -> (Client, ReasonCode) {
    let c = sim.open(0);
    sim.set_meta(c, meta);
    sim.send(c, &Packet::Connect(Box::new(connect(version, client_id))));
    sim.run_until_idle();
    let code = sim.expect_connack(c).reason_code;
    (c, code)
}

/// The certificate's CN replaces the client's own id, so the session lives on the CN's home
/// shard, and a second connection with the same certificate takes that session over whatever
/// id it sent.
#[test]
fn certificate_cn_becomes_the_client_id() {
    let mut sim = Sim::new(2);
    let cn = sim.client_id_on(1, "vin");
    assert_eq!(home_shard(&cn, 2), 1);
    let mapping = client_id_from(IdentitySource::Cn, false);
    let (first, code) = connect_with(
        &mut sim,
        ProtocolVersion::V5,
        "whatever",
        meta(Some(&cn), mapping),
    );
    assert_eq!(code, ReasonCode::Success);
    assert_eq!(sim.shard_of(first), 1);
    let second = sim.open(0);
    sim.set_meta(second, meta(Some(&cn), mapping));
    sim.send(
        second,
        &Packet::Connect(Box::new(connect(ProtocolVersion::V5, ""))),
    );
    sim.run_until_idle();
    let ack = sim.expect_connack(second);
    assert_eq!(ack.reason_code, ReasonCode::Success);
    // [MQTT-3.2.2-16] an empty client id gets the id it was given: the certificate's.
    assert_eq!(
        ack.properties
            .assigned_client_identifier
            .as_ref()
            .map(|id| id.as_str()),
        Some(cn.as_str())
    );
    assert_eq!(sim.shard_of(second), 1);
    // [MQTT-3.1.4-3] the same client id: the first connection is taken over.
    assert_eq!(
        sim.expect_disconnect(first).reason_code,
        ReasonCode::SessionTakenOver
    );
}

/// SAN DNS and SAN URI entries can stand for the client id too.
#[test]
fn san_entries_become_the_client_id() {
    for (source, name) in [
        (IdentitySource::SanDns, "car.fleet.example"),
        (IdentitySource::SanUri, "urn:vin:WVW123"),
    ] {
        let mut sim = Sim::new(2);
        let (c, code) = connect_with(
            &mut sim,
            ProtocolVersion::V3_1_1,
            "",
            meta(Some("cn"), client_id_from(source, false)),
        );
        assert_eq!(code, ReasonCode::Success);
        assert_eq!(sim.shard_of(c), home_shard(name, 2));
    }
}

/// With `require_client_id_match` a client id other than the certificate's is refused: CONNACK
/// 0x85 for v5, return code 2 for 3.1.1 [MQTT-3.2.2-5]; the certificate's own id and an empty
/// one are accepted.
#[test]
fn mismatched_client_id_is_refused_when_required() {
    let mapping = client_id_from(IdentitySource::Cn, true);
    for version in [ProtocolVersion::V5, ProtocolVersion::V3_1_1] {
        let mut sim = Sim::new(1);
        let (c, code) = connect_with(&mut sim, version, "car-2", meta(Some("car-1"), mapping));
        assert_eq!(code, ReasonCode::ClientIdentifierNotValid);
        sim.run_until_idle();
        assert!(sim.is_closed(c));
        let (_, code) = connect_with(&mut sim, version, "car-1", meta(Some("car-1"), mapping));
        assert_eq!(code, ReasonCode::Success);
        let (_, code) = connect_with(&mut sim, version, "", meta(Some("car-1"), mapping));
        assert_eq!(code, ReasonCode::Success);
    }
    // The v3.1.1 refusal on the wire: CONNACK return code 2.
    let mut sim = Sim::new(1);
    let c = sim.open(0);
    sim.set_meta(c, meta(Some("car-1"), mapping));
    // CONNECT level 4, clean session, keepalive 60, client id "c1".
    sim.send_bytes(c, &hex("10 0e 00 04 4d 51 54 54 04 02 00 3c 00 02 63 31"));
    sim.run_until_idle();
    assert_eq!(to_hex(&sim.take_bytes(c)), "20 02 00 02");
}

/// A certificate without the name the listener maps is refused like bad credentials when it
/// should become the username (Mosquitto's `use_identity_as_username`), and as an invalid client
/// id when it should become the client id.
#[test]
fn missing_certificate_name_is_refused() {
    let mut sim = Sim::new(1);
    let as_username = IdentityMapping {
        as_username: IdentitySource::Cn,
        ..Default::default()
    };
    let (_, code) = connect_with(&mut sim, ProtocolVersion::V5, "a", meta(None, as_username));
    assert_eq!(code, ReasonCode::BadUserNameOrPassword);
    let (_, code) = connect_with(
        &mut sim,
        ProtocolVersion::V5,
        "b",
        meta(Some("b"), as_username),
    );
    assert_eq!(code, ReasonCode::Success);
    let as_client_id = client_id_from(IdentitySource::Cn, false);
    let (_, code) = connect_with(&mut sim, ProtocolVersion::V5, "c", meta(None, as_client_id));
    assert_eq!(code, ReasonCode::ClientIdentifierNotValid);
    // No certificate at all (client_auth = "optional" and none was sent) is the same.
    let mut no_cert = meta(None, as_username);
    no_cert.identity = None;
    let (_, code) = connect_with(&mut sim, ProtocolVersion::V3_1_1, "d", no_cert);
    assert_eq!(code, ReasonCode::BadUserNameOrPassword);
}
