//! check + decode for every protocol version; whatever decodes must encode and decode back equal.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use ringmq_wire::{check, decode, encode, encoded_len, Framing, ProtocolVersion};

/// Small enough that the oversize path is exercised too.
const FUZZ_MAX_PACKET_SIZE: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    for version in [ProtocolVersion::V3_1, ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let frame_len = match check(data, FUZZ_MAX_PACKET_SIZE) {
            Ok(Framing::Complete { frame_len }) => frame_len,
            _ => continue,
        };
        let frame = Bytes::copy_from_slice(&data[..frame_len]);
        let Ok(packet) = decode(frame, version) else { continue };
        let mut out = BytesMut::new();
        encode(&packet, version, &mut out).expect("a decoded packet must encode");
        assert_eq!(encoded_len(&packet, version), Ok(out.len()));
        let again = decode(out.freeze(), version).expect("an encoded packet must decode");
        assert_eq!(again, packet);
    }
});
