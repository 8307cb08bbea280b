//! Framing (`check`) and robustness of `check` + `decode` on arbitrary bytes.

mod common;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use ringmq_wire::*;

#[test]
fn incomplete_headers() {
    assert_eq!(
        check(&[], 100),
        Ok(Framing::Incomplete { needed_at_least: 2 })
    );
    assert_eq!(
        check(&[0x30], 100),
        Ok(Framing::Incomplete { needed_at_least: 2 })
    );
    assert_eq!(
        check(&[0x30, 0x80], 100),
        Ok(Framing::Incomplete { needed_at_least: 3 })
    );
    assert_eq!(
        check(&[0x30, 0x80, 0x80, 0x80], 1 << 30),
        Ok(Framing::Incomplete { needed_at_least: 5 })
    );
    assert_eq!(
        check(&[0x30, 0x05, 0, 1], 100),
        Ok(Framing::Incomplete { needed_at_least: 7 })
    );
    assert_eq!(
        check(&[0xC0, 0x00, 0xFF], 100),
        Ok(Framing::Complete { frame_len: 2 })
    );
}

#[test]
fn malformed_remaining_length() {
    // [MQTT-1.5.5-1] at most 4 bytes: a fifth byte is malformed.
    assert_eq!(
        check(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], u32::MAX),
        Err(DecodeError::MalformedVariableByteInteger)
    );
    assert_eq!(
        check(&[0x30, 0x80, 0x80, 0x80, 0x80], u32::MAX),
        Err(DecodeError::MalformedVariableByteInteger)
    );
    // [MQTT-1.5.5-1] minimum number of bytes: 0x80 0x00 encodes 0 non-minimally.
    assert_eq!(
        check(&[0xC0, 0x80, 0x00], u32::MAX),
        Err(DecodeError::MalformedVariableByteInteger)
    );
    assert_eq!(
        DecodeError::MalformedVariableByteInteger.reason_code(),
        ReasonCode::MalformedPacket
    );
}

#[test]
fn oversize_is_rejected_from_the_header() {
    // Rejected before the body has arrived: 1 + 1 + 10 = 12 bytes > 11.
    let error = check(&[0x30, 0x0A], 11).unwrap_err();
    assert_eq!(
        error,
        DecodeError::PacketTooLarge {
            limit: 11,
            size: 12
        }
    );
    assert_eq!(error.reason_code(), ReasonCode::PacketTooLarge);
    assert_eq!(
        check(&[0x30, 0x0A], 12),
        Ok(Framing::Incomplete {
            needed_at_least: 12
        })
    );
    assert_eq!(
        check(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], u32::MAX),
        Ok(Framing::Incomplete {
            needed_at_least: FRAME_LEN_MAX
        })
    );
}

fn decode_any(bytes: &[u8]) {
    for version in [
        ProtocolVersion::V3_1,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V5,
    ] {
        if let Ok(Framing::Complete { frame_len }) = check(bytes, u32::MAX) {
            let frame = Bytes::copy_from_slice(&bytes[..frame_len]);
            if let Ok(packet) = decode(frame, version) {
                let mut out = BytesMut::new();
                encode(&packet, version, &mut out).unwrap();
                assert_eq!(decode(out.freeze(), version), Ok(packet));
            }
        }
        // decode never panics even on frames check would not have delivered.
        let _ = decode(Bytes::copy_from_slice(bytes), version);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        decode_any(&bytes);
    }

    #[test]
    fn plausible_frames_never_panic(
        first in any::<u8>(),
        body in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        // A correct length makes decoding go past the fixed header far more often.
        let mut bytes = vec![first];
        let mut length = BytesMut::new();
        put_vbi(&mut length, body.len() as u32);
        bytes.extend_from_slice(&length);
        bytes.extend_from_slice(&body);
        decode_any(&bytes);
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        packet in common::packet(ProtocolVersion::V5),
        position in any::<prop::sample::Index>(),
        value in any::<u8>(),
    ) {
        let mut out = BytesMut::new();
        encode(&packet, ProtocolVersion::V5, &mut out).unwrap();
        let index = position.index(out.len());
        out[index] = value;
        decode_any(&out);
    }

    #[test]
    fn every_prefix_is_incomplete(packet in common::packet(ProtocolVersion::V5)) {
        let mut out = BytesMut::new();
        encode(&packet, ProtocolVersion::V5, &mut out).unwrap();
        for cut in 0..out.len() {
            match check(&out[..cut], u32::MAX) {
                Ok(Framing::Incomplete { needed_at_least }) => {
                    prop_assert!(needed_at_least > cut && needed_at_least <= out.len());
                }
                other => prop_assert!(false, "cut {}: {:?}", cut, other),
            }
        }
        prop_assert_eq!(check(&out, u32::MAX), Ok(Framing::Complete { frame_len: out.len() }));
    }
}
