//! decode(encode(p)) == p for generated packets of every kind and version.

mod common;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use ringmq_wire::*;

fn roundtrip(packet: &Packet, version: ProtocolVersion) -> Result<(), TestCaseError> {
    let mut out = BytesMut::new();
    encode(packet, version, &mut out).map_err(|error| TestCaseError::fail(error.to_string()))?;
    prop_assert_eq!(out.len(), encoded_len(packet, version).unwrap());
    let frame: Bytes = out.freeze();
    prop_assert_eq!(
        check(&frame, u32::MAX).unwrap(),
        Framing::Complete {
            frame_len: frame.len()
        }
    );
    let decoded = decode(frame.clone(), version);
    prop_assert_eq!(decoded.as_ref(), Ok(packet), "frame {:02x?}", &frame[..]);
    // Re-encoding gives identical bytes (one canonical encoding per packet).
    let mut again = BytesMut::new();
    encode(&decoded.unwrap(), version, &mut again).unwrap();
    prop_assert_eq!(&again[..], &frame[..]);
    if let Packet::Publish(publish) = packet {
        let mut header = BytesMut::new();
        encode_publish_header(publish, version, &mut header).unwrap();
        header.extend_from_slice(&publish.payload);
        prop_assert_eq!(&header[..], &frame[..]);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn roundtrip_v5(packet in common::packet(ProtocolVersion::V5)) {
        roundtrip(&packet, ProtocolVersion::V5)?;
    }

    #[test]
    fn roundtrip_v3_1_1(packet in common::packet(ProtocolVersion::V3_1_1)) {
        roundtrip(&packet, ProtocolVersion::V3_1_1)?;
    }

    #[test]
    fn roundtrip_v3_1(packet in common::packet(ProtocolVersion::V3_1)) {
        roundtrip(&packet, ProtocolVersion::V3_1)?;
    }
}

#[test]
fn decoded_strings_share_the_frame() {
    let frame = Bytes::from_static(&[0x30, 0x08, 0x00, 0x03, b'a', b'/', b'b', b'x', b'y', b'z']);
    let Ok(Packet::Publish(publish)) = decode(frame.clone(), ProtocolVersion::V3_1_1) else {
        panic!("publish expected");
    };
    let range = frame.as_ptr_range();
    assert!(range.contains(&publish.topic.as_bytes().as_ptr()));
    assert!(range.contains(&publish.payload.as_ptr()));
    assert_eq!(&publish.payload[..], b"xyz");
}
