use bytes::{Bytes, BytesMut};
use ringmq_wire::*;
use std::num::NonZeroU16;

fn roundtrip(packet: Packet, version: ProtocolVersion) -> Bytes {
    let mut out = BytesMut::new();
    encode(&packet, version, &mut out).unwrap();
    assert_eq!(out.len(), encoded_len(&packet, version).unwrap());
    let frame = out.freeze();
    assert_eq!(
        check(&frame, u32::MAX).unwrap(),
        Framing::Complete {
            frame_len: frame.len()
        }
    );
    assert_eq!(decode(frame.clone(), version).unwrap(), packet);
    frame
}

#[test]
fn smoke() {
    let pid = NonZeroU16::new(7).unwrap();
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut props = PublishProperties::default();
        if version.is_v5() {
            props.topic_alias = Some(3);
            props.user_properties.push(("a".into(), "b".into()));
        }
        roundtrip(
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: true,
                topic: "a/b".into(),
                packet_id: Some(pid),
                properties: props,
                payload: Bytes::from_static(b"hello"),
            }),
            version,
        );
        roundtrip(
            Packet::Connect(Box::new(Connect {
                protocol: version,
                clean_start: true,
                keep_alive_secs: 30,
                client_id: "c".into(),
                will: Some(LastWill {
                    topic: "w".into(),
                    payload: Bytes::from_static(b"x"),
                    qos: QoS::ExactlyOnce,
                    retain: false,
                    properties: WillProperties::default(),
                }),
                username: Some("u".into()),
                password: Some(Bytes::from_static(b"p")),
                properties: ConnectProperties::default(),
            })),
            version,
        );
        roundtrip(Packet::PubAck(PubAck::new(pid)), version);
        roundtrip(Packet::PingReq, version);
        roundtrip(Packet::Disconnect(Disconnect::default()), version);
        roundtrip(
            Packet::Subscribe(Subscribe {
                packet_id: pid,
                filters: vec![("a/#".into(), SubscriptionOptions::default())],
                properties: SubscribeProperties::default(),
            }),
            version,
        );
    }
}
