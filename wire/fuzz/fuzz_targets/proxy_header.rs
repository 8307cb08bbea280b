//! PROXY protocol headers on arbitrary bytes, in every mode: a complete header lies within the
//! input and the bounds, its TLV block reads back exactly, and "need more" asks for more.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringmq_wire::proxy::{check, tlvs, ProxyCheck, ProxyMode, V2_HEADER_LEN_MAX};

fuzz_target!(|data: &[u8]| {
    for mode in [ProxyMode::V1, ProxyMode::V2, ProxyMode::Any] {
        match check(data, mode) {
            Ok(ProxyCheck::Complete { header_len, info }) => {
                assert!(header_len <= data.len() && header_len <= V2_HEADER_LEN_MAX);
                let block_end = usize::from(info.tlv_offset) + usize::from(info.tlv_len);
                assert!(block_end <= header_len);
                let tlv_bytes: usize = tlvs(&data[..header_len], &info)
                    .map(|tlv| 3 + tlv.value.len())
                    .sum();
                assert_eq!(tlv_bytes, usize::from(info.tlv_len));
                assert_eq!(info.source.is_some(), info.destination.is_some());
            }
            Ok(ProxyCheck::Incomplete { needed_at_least }) => {
                assert!(needed_at_least > data.len())
            }
            Err(_) => {}
        }
    }
});
