//! Malformed packets and protocol violations: the broker closes the offending connection (v5
//! with a DISCONNECT carrying the right reason code), keeps serving others and never crashes.

use ringmq_tests::*;

/// A healthy client that must still be served after each bad one.
async fn bystander(broker: &BrokerProcess) -> RawClient {
    let (c, _) = RawClient::connected(broker.addr, connect_v4(&unique("bystander"))).await;
    c
}

/// Connects with `version`, sends `bytes` and checks the close (v5: DISCONNECT `code`).
async fn violation(
    broker: &BrokerProcess,
    version: ProtocolVersion,
    bytes: &[u8],
    code: ReasonCode,
) {
    let (mut c, _) =
        RawClient::connected(broker.addr, connect(version, &unique("bad"), true, 60)).await;
    c.send_bytes(bytes).await;
    if version == ProtocolVersion::V5 {
        c.expect_disconnect(code).await;
    } else {
        let before = c.expect_closed().await;
        assert!(before.is_empty(), "3.1.1 gets no reply: {before:?}");
    }
}

async fn both(broker: &mut BrokerProcess, bytes: &[u8], code: ReasonCode) {
    let mut other = bystander(broker).await;
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        violation(broker, version, bytes, code).await;
    }
    assert_eq!(other.ping().await, 0, "other clients keep being served");
    broker.assert_alive();
}

/// A PUBLISH frame (QoS 0) with the given raw topic bytes, v3.1.1 layout.
fn raw_publish_v4(topic: &[u8]) -> Vec<u8> {
    let mut body = vec![0, topic.len() as u8];
    body.extend_from_slice(topic);
    body.extend_from_slice(b"p");
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

/// The same for v5 (an empty property section after the topic).
fn raw_publish_v5(topic: &[u8]) -> Vec<u8> {
    let mut body = vec![0, topic.len() as u8];
    body.extend_from_slice(topic);
    body.push(0);
    body.extend_from_slice(b"p");
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

async fn publish_topic(broker: &mut BrokerProcess, topic: &[u8], code: ReasonCode) {
    let mut other = bystander(broker).await;
    violation(
        broker,
        ProtocolVersion::V3_1_1,
        &raw_publish_v4(topic),
        code,
    )
    .await;
    violation(broker, ProtocolVersion::V5, &raw_publish_v5(topic), code).await;
    assert_eq!(other.ping().await, 0);
    broker.assert_alive();
}

#[tokio::test]
async fn bad_fixed_header_flags() {
    let mut broker = BrokerProcess::start(&[]);
    // [MQTT-3.8.1-1] SUBSCRIBE flags must be 0010; here 0000.
    both(
        &mut broker,
        &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00],
        ReasonCode::MalformedPacket,
    )
    .await;
    // [MQTT-2.2.2-2] PINGREQ with a flag bit set.
    both(&mut broker, &[0xC1, 0x00], ReasonCode::MalformedPacket).await;
    // [MQTT-3.3.1-4] PUBLISH with QoS 3.
    both(
        &mut broker,
        &[0x36, 0x06, 0x00, 0x01, b'a', 0x00, 0x01, b'p'],
        ReasonCode::MalformedPacket,
    )
    .await;
}

#[tokio::test]
async fn invalid_utf8_in_topic() {
    let mut broker = BrokerProcess::start(&[]);
    // [MQTT-1.5.4-1] ill-formed UTF-8 (0xC3 0x28).
    publish_topic(
        &mut broker,
        &[b'a', 0xC3, 0x28],
        ReasonCode::MalformedPacket,
    )
    .await;
    // [MQTT-1.5.4-1] UTF-16 surrogate encoded in UTF-8 (U+D800).
    publish_topic(
        &mut broker,
        &[0xED, 0xA0, 0x80],
        ReasonCode::MalformedPacket,
    )
    .await;
}

#[tokio::test]
async fn null_character_in_topic() {
    let mut broker = BrokerProcess::start(&[]);
    // [MQTT-1.5.4-2] U+0000 in a UTF-8 string.
    publish_topic(&mut broker, b"a\0b", ReasonCode::MalformedPacket).await;
}

#[tokio::test]
async fn wildcard_in_publish_topic() {
    let mut broker = BrokerProcess::start(&[]);
    // [MQTT-3.3.2-2] a topic name must not contain wildcards.
    publish_topic(&mut broker, b"a/+/b", ReasonCode::TopicNameInvalid).await;
    publish_topic(&mut broker, b"a/#", ReasonCode::TopicNameInvalid).await;
}

#[tokio::test]
async fn five_byte_remaining_length() {
    let mut broker = BrokerProcess::start(&[]);
    // [MQTT-1.5.5-1] a variable byte integer has at most 4 bytes.
    both(
        &mut broker,
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x00],
        ReasonCode::MalformedPacket,
    )
    .await;
}

#[tokio::test]
async fn oversize_packet() {
    let mut broker =
        BrokerProcess::start_with_config("[limits]\nmax_packet_size_bytes = 1024\n", &[]);
    let mut other = bystander(&broker).await;
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let (mut c, _) =
            RawClient::connected(broker.addr, connect(version, &unique("big"), true, 60)).await;
        let p = publish("big/one", &[7u8; 4000], QoS::AtMostOnce, false);
        c.send_packet(&Packet::Publish(p)).await;
        if version == ProtocolVersion::V5 {
            // [MQTT-3.2.2-?] / 4.13: beyond the announced Maximum Packet Size: DISCONNECT 0x95.
            c.expect_disconnect(ReasonCode::PacketTooLarge).await;
        } else {
            c.expect_closed().await;
        }
    }
    // A packet just within the limit is fine.
    let (mut c, _) = RawClient::connected(broker.addr, connect_v5(&unique("fits"))).await;
    c.publish("big/ok", &[1u8; 900], QoS::AtLeastOnce, false)
        .await;
    assert_eq!(other.ping().await, 0);
    broker.assert_alive();
}

#[tokio::test]
async fn truncated_packets() {
    let mut broker = BrokerProcess::start(&[]);
    let mut other = bystander(&broker).await;
    // Remaining length promises more than is ever sent, then the client goes away.
    let (mut c, _) = RawClient::connected(broker.addr, connect_v4(&unique("trunc"))).await;
    c.send_bytes(&[0x30, 0x20, 0x00, 0x03, b'a']).await;
    drop(c);
    // A SUBSCRIBE whose remaining length cuts through the topic filter string: the string's
    // length prefix overruns the packet [MQTT-1.5.4] → malformed.
    both(
        &mut broker,
        &[0x82, 0x05, 0x00, 0x01, 0x00, 0x05, b'a'],
        ReasonCode::MalformedPacket,
    )
    .await;
    // A CONNECT cut short then EOF: no crash, nothing sent.
    let mut raw = RawClient::connect(broker.addr).await;
    raw.send_bytes(&[0x10, 0x10, 0x00, 0x04, b'M', b'Q']).await;
    drop(raw);
    // A 3.1.1 PUBACK has exactly 2 bytes after the fixed header; a third is malformed (in 5.0
    // it would be a valid reason code).
    violation(
        &broker,
        ProtocolVersion::V3_1_1,
        &[0x40, 0x03, 0x00, 0x01, 0x00],
        ReasonCode::MalformedPacket,
    )
    .await;
    assert_eq!(other.ping().await, 0);
    broker.assert_alive();
}

#[tokio::test]
async fn reserved_packet_type_and_client_only_packets() {
    let mut broker = BrokerProcess::start(&[]);
    // Packet type 0 is reserved.
    both(&mut broker, &[0x00, 0x00], ReasonCode::MalformedPacket).await;
    // CONNACK from a client is a protocol error (5.0 layout: flags, code, no properties).
    both(
        &mut broker,
        &[0x20, 0x03, 0x00, 0x00, 0x00],
        ReasonCode::ProtocolError,
    )
    .await;
}

#[tokio::test]
async fn garbage_storm_never_crashes() {
    let mut broker = BrokerProcess::start(&[]);
    let mut other = bystander(&broker).await;
    // Deterministic pseudo-random bytes after a valid CONNECT, many connections.
    let mut seed: u32 = 0x1234_5678;
    for _ in 0..50 {
        let (mut c, _) = RawClient::connected(broker.addr, connect_v5(&unique("fuzz"))).await;
        let mut junk = Vec::with_capacity(64);
        for _ in 0..64 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            junk.push(seed as u8);
        }
        c.send_bytes(&junk).await;
        drop(c);
    }
    assert_eq!(other.ping().await, 0);
    broker.assert_alive();
}
