//! Fixed header (section 2.1): packet types, flag rules, and the cheap framing check that runs
//! before any parsing.

use crate::error::DecodeError;
use crate::primitives::{read_vbi, VbiRead, VBI_MAX};

/// Control packet type numbers (upper nibble of the first byte).
pub mod packet_type {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
    pub const AUTH: u8 = 15;
}

/// Largest frame the protocol can express: 1 type byte + 4 length bytes + VBI_MAX.
pub const FRAME_LEN_MAX: usize = 1 + 4 + VBI_MAX as usize;

/// Result of [`check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The buffer starts with a whole frame of `frame_len` bytes.
    Complete { frame_len: usize },
    /// More bytes are needed; the buffer must hold at least `needed_at_least` bytes in total
    /// before calling again makes sense.
    Incomplete { needed_at_least: usize },
}

/// Looks at the fixed header only. `max_packet_size` is the whole-frame limit this side accepts
/// (v5 "Maximum Packet Size" counts the entire packet). Rejects a too large frame as soon as its
/// remaining length is known, before its body has arrived.
pub fn check(buf: &[u8], max_packet_size: u32) -> Result<Framing, DecodeError> {
    let Some(length_bytes) = buf.get(1..) else {
        return Ok(Framing::Incomplete { needed_at_least: 2 });
    };
    match read_vbi(length_bytes)? {
        VbiRead::Incomplete => Ok(Framing::Incomplete {
            needed_at_least: buf.len() + 1,
        }),
        VbiRead::Value(remaining, used) => {
            let frame_len = 1 + used + remaining as usize;
            if frame_len as u64 > u64::from(max_packet_size) {
                return Err(DecodeError::PacketTooLarge {
                    limit: max_packet_size,
                    size: frame_len as u64,
                });
            }
            if buf.len() < frame_len {
                Ok(Framing::Incomplete {
                    needed_at_least: frame_len,
                })
            } else {
                Ok(Framing::Complete { frame_len })
            }
        }
    }
}

/// Checks the fixed header flag nibble [MQTT-2.1.3-1]. PUBLISH flags are checked by its decoder.
pub(crate) fn check_flags(kind: u8, flags: u8) -> Result<(), DecodeError> {
    let expected = match kind {
        packet_type::PUBLISH => return Ok(()),
        packet_type::PUBREL | packet_type::SUBSCRIBE | packet_type::UNSUBSCRIBE => 0b0010,
        _ => 0,
    };
    if flags == expected {
        Ok(())
    } else {
        Err(DecodeError::InvalidFixedHeaderFlags {
            packet_type: kind,
            flags,
        })
    }
}

/// First byte of a fixed header for a packet type whose flags are fixed.
pub(crate) fn first_byte(kind: u8) -> u8 {
    let flags = match kind {
        packet_type::PUBREL | packet_type::SUBSCRIBE | packet_type::UNSUBSCRIBE => 0b0010,
        _ => 0,
    };
    (kind << 4) | flags
}
