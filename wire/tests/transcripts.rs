//! Raw-byte transcripts: well-formed packets as laid out in the specification, and malformed
//! ones, each naming the normative statement it exercises.

use bytes::{Bytes, BytesMut};
use ringmq_wire::*;

const V3_1: ProtocolVersion = ProtocolVersion::V3_1;
const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn ok(bytes: &[u8], version: ProtocolVersion) -> Packet {
    let frame = Bytes::copy_from_slice(bytes);
    assert_eq!(
        check(&frame, u32::MAX),
        Ok(Framing::Complete {
            frame_len: bytes.len()
        })
    );
    let packet = decode(frame, version).unwrap_or_else(|error| panic!("{bytes:02x?}: {error}"));
    let mut out = BytesMut::new();
    encode(&packet, version, &mut out).unwrap();
    assert_eq!(&out[..], bytes, "re-encoding differs");
    packet
}

fn bad(bytes: &[u8], version: ProtocolVersion, expected: DecodeError, reason: ReasonCode) {
    let result = decode(Bytes::copy_from_slice(bytes), version);
    assert_eq!(result, Err(expected.clone()), "{bytes:02x?}");
    assert_eq!(expected.reason_code(), reason);
}

#[test]
fn connect_v3_1_1_minimal() {
    // 3.1.2: "MQTT", level 4, clean session, keep alive 60, empty client id (accepted by the
    // codec; [MQTT-3.1.3-7] is the broker's rule).
    let packet = ok(
        &[
            0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 0,
        ],
        V4,
    );
    let Packet::Connect(connect) = packet else {
        panic!()
    };
    assert_eq!(connect.protocol, V4);
    assert!(connect.clean_start);
    assert_eq!(connect.keep_alive_secs, 60);
    assert!(connect.client_id.is_empty());
}

#[test]
fn connect_v3_1_protocol_name() {
    // MQTT 3.1: protocol name "MQIsdp", level 3; decodable whatever version the caller passes.
    let bytes = [
        0x10, 0x0F, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0, 10, 0, 1, b'c',
    ];
    let Packet::Connect(connect) = ok(&bytes, V5) else {
        panic!()
    };
    assert_eq!(connect.protocol, V3_1);
    assert_eq!(connect.client_id, "c");
}

#[test]
fn connect_v5_full() {
    // v5 CONNECT with session expiry, will (with delay property), user name and password.
    let bytes = [
        0x10,
        0x25,
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        5,
        0b1110_1110,
        0,
        30, // header, flags
        5,
        0x11,
        0,
        0,
        0,
        10, // properties: session expiry 10
        0,
        1,
        b'c', // client id
        5,
        0x18,
        0,
        0,
        0,
        5, // will properties: delay 5
        0,
        1,
        b'w',
        0,
        1,
        b'x', // will topic, payload
        0,
        1,
        b'u',
        0,
        1,
        b'p', // user name, password
    ];
    let Packet::Connect(connect) = ok(&bytes, V4) else {
        panic!()
    };
    assert_eq!(connect.properties.session_expiry_interval, Some(10));
    let will = connect.will.as_ref().unwrap();
    assert_eq!(will.qos, QoS::AtLeastOnce);
    assert!(will.retain);
    assert_eq!(will.properties.will_delay_interval, Some(5));
    assert_eq!(connect.password.as_deref(), Some(&b"p"[..]));
}

#[test]
fn connect_malformed() {
    let header = |flags: u8| {
        vec![
            0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60, 0, 0,
        ]
    };
    // [MQTT-3.1.2-3] reserved flag must be 0.
    bad(
        &header(0x03),
        V4,
        DecodeError::ConnectReservedFlag,
        ReasonCode::MalformedPacket,
    );
    // [MQTT-3.1.2-11] (v5 [MQTT-3.1.2-11]/3.1.1 [MQTT-3.1.2-13]) will qos without will flag.
    bad(
        &header(0x0A),
        V4,
        DecodeError::WillFlagsInconsistent,
        ReasonCode::MalformedPacket,
    );
    // [MQTT-3.1.2-15] (3.1.1) will retain without will flag.
    bad(
        &header(0x22),
        V4,
        DecodeError::WillFlagsInconsistent,
        ReasonCode::MalformedPacket,
    );
    // [MQTT-3.1.2-14] will qos 3.
    bad(
        &header(0x1E),
        V4,
        DecodeError::InvalidQoS(3),
        ReasonCode::MalformedPacket,
    );
    // [MQTT-3.1.2-22] (3.1.1) password without user name.
    bad(
        &header(0x42),
        V4,
        DecodeError::PasswordWithoutUsername,
        ReasonCode::MalformedPacket,
    );
    // [MQTT-3.1.2-2] unsupported level.
    let mut level = header(0x02);
    level[8] = 6;
    bad(
        &level,
        V4,
        DecodeError::UnsupportedProtocolVersion(6),
        ReasonCode::UnsupportedProtocolVersion,
    );
    // [MQTT-3.1.2-1] wrong protocol name.
    let mut name = header(0x02);
    name[7] = b'X';
    bad(
        &name,
        V4,
        DecodeError::InvalidProtocolName,
        ReasonCode::UnsupportedProtocolVersion,
    );
    // [MQTT-2.1.3-1] CONNECT flags nibble must be 0.
    let mut flags = header(0x02);
    flags[0] = 0x11;
    bad(
        &flags,
        V4,
        DecodeError::InvalidFixedHeaderFlags {
            packet_type: 1,
            flags: 1,
        },
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn connect_v5_password_without_username_is_allowed() {
    // v5 3.1.2.9 drops [MQTT-3.1.2-22]: a password may come without a user name.
    let bytes = [
        0x10, 0x10, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x42, 0, 0, 0, 0, 0, 0, 1, b'p',
    ];
    let Packet::Connect(connect) = ok(&bytes, V5) else {
        panic!()
    };
    assert!(connect.username.is_none());
    assert!(connect.password.is_some());
}

#[test]
fn connack() {
    // 3.2.2: session present, return code 0.
    let Packet::ConnAck(connack) = ok(&[0x20, 0x02, 0x01, 0x00], V4) else {
        panic!()
    };
    assert!(connack.session_present);
    assert_eq!(connack.reason_code, ReasonCode::Success);
    // v3.1.1 return code 5 = not authorized.
    let Packet::ConnAck(connack) = ok(&[0x20, 0x02, 0x00, 0x05], V4) else {
        panic!()
    };
    assert_eq!(connack.reason_code, ReasonCode::NotAuthorized);
    bad(
        &[0x20, 0x02, 0x00, 0x06],
        V4,
        DecodeError::InvalidReasonCode {
            packet_type: 2,
            code: 6,
        },
        ReasonCode::MalformedPacket,
    );
    // [MQTT-3.2.2-1] reserved acknowledge flags.
    bad(
        &[0x20, 0x02, 0x02, 0x00],
        V4,
        DecodeError::ReservedBitsSet(2),
        ReasonCode::MalformedPacket,
    );
    // v5 with topic alias maximum 10 and maximum qos 1.
    let Packet::ConnAck(connack) = ok(&[0x20, 0x08, 0x00, 0x00, 0x05, 0x24, 1, 0x22, 0, 10], V5)
    else {
        panic!()
    };
    assert_eq!(connack.properties.topic_alias_maximum, Some(10));
    assert_eq!(connack.properties.maximum_qos, Some(1));
    // 3.2.2.3.4: maximum qos 2 is a protocol error.
    bad(
        &[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 2],
        V5,
        DecodeError::InvalidPropertyValue {
            property: 0x24,
            value: 2,
        },
        ReasonCode::ProtocolError,
    );
    // 0x04 is not a CONNACK reason code.
    bad(
        &[0x20, 0x03, 0x00, 0x04, 0x00],
        V5,
        DecodeError::InvalidReasonCode {
            packet_type: 2,
            code: 4,
        },
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn reason_code_mapping_v3() {
    assert_eq!(ReasonCode::Success.to_v3_connack(), 0);
    assert_eq!(ReasonCode::UnsupportedProtocolVersion.to_v3_connack(), 1);
    assert_eq!(ReasonCode::ClientIdentifierNotValid.to_v3_connack(), 2);
    assert_eq!(ReasonCode::ServerBusy.to_v3_connack(), 3);
    assert_eq!(ReasonCode::BadUserNameOrPassword.to_v3_connack(), 4);
    assert_eq!(ReasonCode::NotAuthorized.to_v3_connack(), 5);
    assert_eq!(ReasonCode::NormalDisconnection, ReasonCode::Success);
    assert_eq!(ReasonCode::GrantedQoS0.code(), 0);
    for &code in ReasonCode::ALL {
        assert_eq!(ReasonCode::try_from(code.code()), Ok(code));
    }
}

#[test]
fn publish() {
    // 3.3: QoS 0, topic "a/b", payload "hi".
    let Packet::Publish(publish) = ok(&[0x30, 0x07, 0, 3, b'a', b'/', b'b', b'h', b'i'], V4) else {
        panic!()
    };
    assert_eq!(publish.topic, "a/b");
    assert_eq!(publish.packet_id, None);
    assert_eq!(&publish.payload[..], b"hi");
    // QoS 1, retain, packet id 10.
    let Packet::Publish(publish) = ok(&[0x33, 0x05, 0, 1, b'a', 0, 10], V4) else {
        panic!()
    };
    assert_eq!(publish.qos, QoS::AtLeastOnce);
    assert!(publish.retain);
    assert_eq!(publish.packet_id.map(|id| id.get()), Some(10));
    // Non-ASCII topics take the full UTF-8 check and are fine when well-formed.
    let Packet::Publish(publish) = ok(&[0x30, 0x05, 0, 3, 0xC3, 0xA4, b'x'], V4) else {
        panic!()
    };
    assert_eq!(publish.topic, "äx");
    // v5: empty topic with topic alias 1 (3.3.2.3.4).
    let Packet::Publish(publish) = ok(&[0x30, 0x06, 0, 0, 3, 0x23, 0, 1], V5) else {
        panic!()
    };
    assert_eq!(publish.properties.topic_alias, Some(1));
    assert!(publish.topic.is_empty());
}

#[test]
fn publish_malformed() {
    // [MQTT-3.3.1-4] both QoS bits set.
    bad(
        &[0x36, 0x05, 0, 1, b'a', 0, 1],
        V4,
        DecodeError::InvalidQoS(3),
        ReasonCode::MalformedPacket,
    );
    // [MQTT-3.3.1-2] DUP on QoS 0.
    bad(
        &[0x38, 0x03, 0, 1, b'a'],
        V4,
        DecodeError::DupWithQoS0,
        ReasonCode::MalformedPacket,
    );
    // [MQTT-3.3.2-2] wildcard in topic name.
    bad(
        &[0x30, 0x05, 0, 3, b'a', b'/', b'+'],
        V4,
        DecodeError::InvalidTopicName,
        ReasonCode::TopicNameInvalid,
    );
    bad(
        &[0x30, 0x04, 0, 1, b'#', 0],
        V5,
        DecodeError::InvalidTopicName,
        ReasonCode::TopicNameInvalid,
    );
    // [MQTT-4.7.3-1] v3: empty topic name.
    bad(
        &[0x30, 0x02, 0, 0],
        V4,
        DecodeError::InvalidTopicName,
        ReasonCode::TopicNameInvalid,
    );
    // v5 3.3.2.1: empty topic without alias is a protocol error.
    bad(
        &[0x30, 0x03, 0, 0, 0],
        V5,
        DecodeError::EmptyTopicWithoutAlias,
        ReasonCode::ProtocolError,
    );
    // [MQTT-3.3.2-8] topic alias 0.
    bad(
        &[0x30, 0x07, 0, 1, b'a', 3, 0x23, 0, 0],
        V5,
        DecodeError::InvalidPropertyValue {
            property: 0x23,
            value: 0,
        },
        ReasonCode::ProtocolError,
    );
    // 3.3.2.3.8 subscription identifier 0 in PUBLISH: protocol error.
    bad(
        &[0x30, 0x06, 0, 1, b'a', 2, 0x0B, 0],
        V5,
        DecodeError::InvalidPropertyValue {
            property: 0x0B,
            value: 0,
        },
        ReasonCode::ProtocolError,
    );
    // [MQTT-2.2.1-3] packet identifier 0.
    bad(
        &[0x32, 0x05, 0, 1, b'a', 0, 0],
        V4,
        DecodeError::ZeroPacketIdentifier,
        ReasonCode::MalformedPacket,
    );
    // 3.3.2.3: duplicate payload format indicator is a protocol error.
    bad(
        &[0x30, 0x08, 0, 1, b'a', 4, 0x01, 0, 0x01, 1],
        V5,
        DecodeError::DuplicateProperty(0x01),
        ReasonCode::ProtocolError,
    );
    // 2.2.2.2: session expiry is not a PUBLISH property: malformed.
    bad(
        &[0x30, 0x09, 0, 1, b'a', 5, 0x11, 0, 0, 0, 1],
        V5,
        DecodeError::PropertyNotAllowed {
            packet_type: 3,
            property: 0x11,
        },
        ReasonCode::MalformedPacket,
    );
    // 2.2.2.2: unknown property identifier.
    bad(
        &[0x30, 0x06, 0, 1, b'a', 2, 0x7F, 0],
        V5,
        DecodeError::UnknownProperty(0x7F),
        ReasonCode::MalformedPacket,
    );
    // Property length running past the packet.
    bad(
        &[0x30, 0x05, 0, 1, b'a', 9, 0x01],
        V5,
        DecodeError::UnexpectedEof { needed: 8 },
        ReasonCode::MalformedPacket,
    );
    // [MQTT-1.5.4-1] ill-formed UTF-8 (overlong NUL, then a UTF-16 surrogate).
    bad(
        &[0x30, 0x04, 0, 2, 0xC0, 0x80],
        V4,
        DecodeError::InvalidUtf8,
        ReasonCode::MalformedPacket,
    );
    bad(
        &[0x30, 0x05, 0, 3, 0xED, 0xA0, 0x80],
        V4,
        DecodeError::InvalidUtf8,
        ReasonCode::MalformedPacket,
    );
    // [MQTT-1.5.4-2] U+0000.
    bad(
        &[0x30, 0x04, 0, 2, b'a', 0],
        V4,
        DecodeError::NullCharacter,
        ReasonCode::MalformedPacket,
    );
    // String length beyond the packet.
    bad(
        &[0x30, 0x03, 0, 5, b'a'],
        V4,
        DecodeError::UnexpectedEof { needed: 4 },
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn publish_acks() {
    let Packet::PubAck(ack) = ok(&[0x40, 0x02, 0, 1], V4) else {
        panic!()
    };
    assert_eq!(ack.packet_id.get(), 1);
    assert!(matches!(ok(&[0x50, 0x02, 0, 1], V4), Packet::PubRec(_)));
    // [MQTT-3.6.1-1] PUBREL flags 0b0010.
    assert!(matches!(ok(&[0x62, 0x02, 0, 1], V4), Packet::PubRel(_)));
    assert!(matches!(ok(&[0x70, 0x02, 0, 1], V4), Packet::PubComp(_)));
    bad(
        &[0x60, 0x02, 0, 1],
        V4,
        DecodeError::InvalidFixedHeaderFlags {
            packet_type: 6,
            flags: 0,
        },
        ReasonCode::MalformedPacket,
    );
    // [MQTT-2.1.3-1] PUBACK flags must be 0.
    bad(
        &[0x42, 0x02, 0, 1],
        V4,
        DecodeError::InvalidFixedHeaderFlags {
            packet_type: 4,
            flags: 2,
        },
        ReasonCode::MalformedPacket,
    );
    // v3.1.1 PUBACK has exactly 2 bytes.
    bad(
        &[0x40, 0x03, 0, 1, 0],
        V4,
        DecodeError::TrailingBytes(1),
        ReasonCode::MalformedPacket,
    );
    // v5 3.4.2.1: remaining length 2 means Success; 3 means reason code without properties.
    let Packet::PubAck(ack) = ok(&[0x40, 0x02, 0, 1], V5) else {
        panic!()
    };
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let Packet::PubAck(ack) = ok(&[0x40, 0x03, 0, 1, 0x10], V5) else {
        panic!()
    };
    assert_eq!(ack.reason_code, ReasonCode::NoMatchingSubscribers);
    // A Success code with an empty property section decodes, and re-encodes shorter.
    let packet = decode(Bytes::from_static(&[0x40, 0x04, 0, 1, 0, 0]), V5).unwrap();
    assert_eq!(
        packet,
        Packet::PubAck(PubAck::new(std::num::NonZeroU16::MIN))
    );
    // 0x92 is only valid in PUBREL/PUBCOMP.
    bad(
        &[0x40, 0x03, 0, 1, 0x92],
        V5,
        DecodeError::InvalidReasonCode {
            packet_type: 4,
            code: 0x92,
        },
        ReasonCode::MalformedPacket,
    );
    let Packet::PubRel(rel) = ok(&[0x62, 0x03, 0, 1, 0x92], V5) else {
        panic!()
    };
    assert_eq!(rel.reason_code, ReasonCode::PacketIdentifierNotFound);
}

#[test]
fn subscribe() {
    // 3.8.3 example shape: packet id 10, "a/b" QoS 1, "c/d" QoS 2.
    let bytes = [
        0x82, 0x0E, 0, 10, 0, 3, b'a', b'/', b'b', 1, 0, 3, b'c', b'/', b'd', 2,
    ];
    let Packet::Subscribe(subscribe) = ok(&bytes, V4) else {
        panic!()
    };
    assert_eq!(subscribe.filters.len(), 2);
    assert_eq!(subscribe.filters[1].1.qos, QoS::ExactlyOnce);
    // v5 options: no local, retain as published, retain handling 2, QoS 1; subscription id 5.
    let bytes = [0x82, 0x0A, 0, 1, 2, 0x0B, 5, 0, 2, b'a', b'b', 0b0010_1101];
    let Packet::Subscribe(subscribe) = ok(&bytes, V5) else {
        panic!()
    };
    let options = subscribe.filters[0].1;
    assert!(options.no_local && options.retain_as_published);
    assert_eq!(options.retain_handling, RetainHandling::DoNotSend);
    assert_eq!(subscribe.properties.subscription_identifier, Some(5));
}

#[test]
fn subscribe_malformed() {
    // [MQTT-3.8.1-1] flags must be 0b0010.
    bad(
        &[0x80, 0x06, 0, 1, 0, 1, b'a', 0],
        V4,
        DecodeError::InvalidFixedHeaderFlags {
            packet_type: 8,
            flags: 0,
        },
        ReasonCode::MalformedPacket,
    );
    // [MQTT-3.8.3-3] no topic filter.
    bad(
        &[0x82, 0x02, 0, 1],
        V4,
        DecodeError::EmptySubscription,
        ReasonCode::ProtocolError,
    );
    bad(
        &[0x82, 0x03, 0, 1, 0],
        V5,
        DecodeError::EmptySubscription,
        ReasonCode::ProtocolError,
    );
    // 3.1.1 [MQTT-3-8.3-4]: upper 6 bits of the requested QoS byte are reserved.
    bad(
        &[0x82, 0x06, 0, 1, 0, 1, b'a', 0x04],
        V4,
        DecodeError::ReservedBitsSet(0x04),
        ReasonCode::MalformedPacket,
    );
    // [MQTT-3.8.3-5] v5 reserved bits 6-7.
    bad(
        &[0x82, 0x07, 0, 1, 0, 0, 1, b'a', 0xC0],
        V5,
        DecodeError::ReservedBitsSet(0xC0),
        ReasonCode::MalformedPacket,
    );
    // 3.8.3.1: QoS 3 requested is malformed.
    bad(
        &[0x82, 0x06, 0, 1, 0, 1, b'a', 0x03],
        V4,
        DecodeError::InvalidQoS(3),
        ReasonCode::MalformedPacket,
    );
    // 3.8.3.1: retain handling 3 ("It is a Protocol Error to send a Retain Handling value of 3").
    bad(
        &[0x82, 0x07, 0, 1, 0, 0, 1, b'a', 0x30],
        V5,
        DecodeError::InvalidRetainHandling,
        ReasonCode::ProtocolError,
    );
    // 3.8.2.1.2: subscription identifier 0 is malformed.
    bad(
        &[0x82, 0x09, 0, 1, 2, 0x0B, 0, 0, 1, b'a', 0],
        V5,
        DecodeError::ZeroSubscriptionIdentifier,
        ReasonCode::MalformedPacket,
    );
    // [MQTT-4.7.1-1] '#' not last.
    bad(
        &[0x82, 0x08, 0, 1, 0, 3, b'#', b'/', b'a', 0],
        V4,
        DecodeError::InvalidTopicFilter,
        ReasonCode::TopicFilterInvalid,
    );
    // [MQTT-4.7.1-2] '+' not alone in its level.
    bad(
        &[0x82, 0x07, 0, 1, 0, 2, b'a', b'+', 0],
        V4,
        DecodeError::InvalidTopicFilter,
        ReasonCode::TopicFilterInvalid,
    );
    // [MQTT-3.8.3-4] no local on a shared subscription.
    let mut shared = vec![0x82, 0x00, 0, 1, 0, 0, 11];
    shared.extend_from_slice(b"$share/g/ab");
    shared.push(0x04);
    shared[1] = (shared.len() - 2) as u8;
    bad(
        &shared,
        V5,
        DecodeError::NoLocalOnSharedSubscription,
        ReasonCode::ProtocolError,
    );
    // [MQTT-4.8.2-2] share name with a wildcard.
    let mut group = vec![0x82, 0x00, 0, 1, 0, 11];
    group.extend_from_slice(b"$share/+/ab");
    group.push(0x00);
    group[1] = (group.len() - 2) as u8;
    bad(
        &group,
        V4,
        DecodeError::InvalidTopicFilter,
        ReasonCode::TopicFilterInvalid,
    );
}

#[test]
fn suback_unsubscribe_unsuback() {
    // 3.9.3: return codes 0, 1, 2 and failure 0x80.
    let Packet::SubAck(suback) = ok(&[0x90, 0x06, 0, 1, 0, 1, 2, 0x80], V4) else {
        panic!()
    };
    assert_eq!(suback.reason_codes[3], ReasonCode::UnspecifiedError);
    // [MQTT-3.9.3-2] other v3 return codes are reserved.
    bad(
        &[0x90, 0x03, 0, 1, 0x87],
        V4,
        DecodeError::InvalidReasonCode {
            packet_type: 9,
            code: 0x87,
        },
        ReasonCode::MalformedPacket,
    );
    let Packet::SubAck(suback) = ok(&[0x90, 0x04, 0, 1, 0, 0x87], V5) else {
        panic!()
    };
    assert_eq!(suback.reason_codes, vec![ReasonCode::NotAuthorized]);
    // [MQTT-3.10.1-1] UNSUBSCRIBE flags.
    let Packet::Unsubscribe(unsubscribe) = ok(&[0xA2, 0x05, 0, 1, 0, 1, b'a'], V4) else {
        panic!()
    };
    assert_eq!(unsubscribe.filters, vec![Utf8Bytes::from("a")]);
    bad(
        &[0xA0, 0x05, 0, 1, 0, 1, b'a'],
        V4,
        DecodeError::InvalidFixedHeaderFlags {
            packet_type: 10,
            flags: 0,
        },
        ReasonCode::MalformedPacket,
    );
    // [MQTT-3.10.3-2] at least one filter.
    bad(
        &[0xA2, 0x02, 0, 1],
        V4,
        DecodeError::EmptyUnsubscription,
        ReasonCode::ProtocolError,
    );
    // 3.10.2.1: UNSUBSCRIBE carries user properties only.
    bad(
        &[0xA2, 0x0A, 0, 1, 4, 0x1F, 0, 1, b'x', 0, 1, b'a'],
        V5,
        DecodeError::PropertyNotAllowed {
            packet_type: 10,
            property: 0x1F,
        },
        ReasonCode::MalformedPacket,
    );
    // v3.1.1 UNSUBACK: packet id only.
    let Packet::UnsubAck(unsuback) = ok(&[0xB0, 0x02, 0, 1], V4) else {
        panic!()
    };
    assert!(unsuback.reason_codes.is_empty());
    let Packet::UnsubAck(unsuback) = ok(&[0xB0, 0x04, 0, 1, 0, 0x11], V5) else {
        panic!()
    };
    assert_eq!(
        unsuback.reason_codes,
        vec![ReasonCode::NoSubscriptionExisted]
    );
}

#[test]
fn ping_disconnect_auth() {
    assert_eq!(ok(&[0xC0, 0x00], V4), Packet::PingReq);
    assert_eq!(ok(&[0xD0, 0x00], V5), Packet::PingResp);
    // [MQTT-2.1.3-1]
    bad(
        &[0xC1, 0x00],
        V4,
        DecodeError::InvalidFixedHeaderFlags {
            packet_type: 12,
            flags: 1,
        },
        ReasonCode::MalformedPacket,
    );
    bad(
        &[0xC0, 0x01, 0x00],
        V4,
        DecodeError::TrailingBytes(1),
        ReasonCode::MalformedPacket,
    );
    // 3.14.2.1: remaining length 0 means normal disconnection.
    assert_eq!(
        ok(&[0xE0, 0x00], V4),
        Packet::Disconnect(Disconnect::default())
    );
    let Packet::Disconnect(disconnect) = ok(&[0xE0, 0x01, 0x8E], V5) else {
        panic!()
    };
    assert_eq!(disconnect.reason_code, ReasonCode::SessionTakenOver);
    let Packet::Disconnect(disconnect) = ok(&[0xE0, 0x07, 0x04, 0x05, 0x11, 0, 0, 0, 9], V5) else {
        panic!()
    };
    assert_eq!(
        disconnect.reason_code,
        ReasonCode::DisconnectWithWillMessage
    );
    assert_eq!(disconnect.properties.session_expiry_interval, Some(9));
    bad(
        &[0xE0, 0x01, 0x00],
        V4,
        DecodeError::TrailingBytes(1),
        ReasonCode::MalformedPacket,
    );
    // AUTH exists only in v5; packet type 0 is reserved.
    let Packet::Auth(auth) = ok(&[0xF0, 0x05, 0x18, 0x03, 0x15, 0, 0], V5) else {
        panic!()
    };
    assert_eq!(auth.reason_code, ReasonCode::ContinueAuthentication);
    bad(
        &[0xF0, 0x00],
        V4,
        DecodeError::InvalidPacketType(15),
        ReasonCode::MalformedPacket,
    );
    bad(
        &[0x00, 0x00],
        V5,
        DecodeError::InvalidPacketType(0),
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn remaining_length_examples() {
    // 1.5.5 table: boundaries of each encoded size.
    for (value, encoded) in [
        (0u32, &[0x00][..]),
        (127, &[0x7F]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xFF, 0x7F]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xFF, 0xFF, 0x7F]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
    ] {
        let mut out = BytesMut::new();
        put_vbi(&mut out, value);
        assert_eq!(&out[..], encoded);
        assert_eq!(vbi_len(value as usize), encoded.len());
        let mut frame = vec![0x30];
        frame.extend_from_slice(encoded);
        let frame_len = 1 + encoded.len() + value as usize;
        let expected = if value == 0 {
            Framing::Complete { frame_len }
        } else {
            Framing::Incomplete {
                needed_at_least: frame_len,
            }
        };
        assert_eq!(check(&frame, u32::MAX), Ok(expected));
    }
}

#[test]
fn encode_errors() {
    let long = Utf8Bytes::from("x".repeat(70_000));
    let publish = Publish {
        topic: long,
        ..Publish::default()
    };
    let mut out = BytesMut::new();
    assert_eq!(
        encode(&Packet::Publish(publish), V4, &mut out),
        Err(EncodeError::StringTooLong { len: 70_000 })
    );
    assert!(out.is_empty());
    let missing_id = Publish {
        topic: "a".into(),
        qos: QoS::AtLeastOnce,
        ..Publish::default()
    };
    assert_eq!(
        encoded_len(&Packet::Publish(missing_id), V4),
        Err(EncodeError::PacketIdMismatch)
    );
    assert!(matches!(
        encode(&Packet::Auth(Auth::default()), V4, &mut out),
        Err(EncodeError::PacketNotSupported { .. })
    ));
    // A v3 subscriber needs the real topic: an alias-only PUBLISH cannot be sent to it.
    let alias_only = Publish {
        properties: PublishProperties {
            topic_alias: Some(1),
            ..PublishProperties::default()
        },
        ..Publish::default()
    };
    assert_eq!(
        encoded_len(&Packet::Publish(alias_only.clone()), V4),
        Err(EncodeError::EmptyTopic)
    );
    assert_eq!(encoded_len(&Packet::Publish(alias_only), V5), Ok(8));
    // [MQTT-3.1.2-22]
    let connect = Connect {
        protocol: V4,
        clean_start: true,
        keep_alive_secs: 0,
        client_id: Utf8Bytes::default(),
        will: None,
        username: None,
        password: Some(Bytes::from_static(b"p")),
        properties: ConnectProperties::default(),
    };
    assert_eq!(
        encoded_len(&Packet::Connect(Box::new(connect.clone())), V4),
        Err(EncodeError::PasswordWithoutUsername)
    );
    let v5_connect = Connect {
        protocol: V5,
        ..connect
    };
    assert!(encoded_len(&Packet::Connect(Box::new(v5_connect)), V5).is_ok());
    let disconnect = Disconnect {
        reason_code: ReasonCode::GrantedQoS1,
        ..Disconnect::default()
    };
    assert!(matches!(
        encode(&Packet::Disconnect(disconnect), V5, &mut out),
        Err(EncodeError::ReasonCodeNotAllowed { .. })
    ));
}
