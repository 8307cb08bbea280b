//! The measurement header the loadgen writes at the start of every payload it publishes.
//!
//! Layout (big endian, 24 bytes): magic `u32`, publisher index `u32`, sequence `u64`,
//! send timestamp `u64` in nanoseconds of `CLOCK_REALTIME`. CLOCK_REALTIME rather than a
//! process-local monotonic base so that a subscriber in another process on the same host can
//! still compute end-to-end latency.

/// "RMQB": lets a subscriber ignore foreign messages on the same topics.
pub const HEADER_MAGIC: u32 = 0x524D_5142;
/// Encoded size of [`PayloadHeader`]; payloads shorter than this carry no header.
pub const HEADER_LEN: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadHeader {
    pub publisher_index: u32,
    pub sequence: u64,
    pub sent_at_ns: u64,
}

impl PayloadHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&HEADER_MAGIC.to_be_bytes());
        out[4..8].copy_from_slice(&self.publisher_index.to_be_bytes());
        out[8..16].copy_from_slice(&self.sequence.to_be_bytes());
        out[16..24].copy_from_slice(&self.sent_at_ns.to_be_bytes());
        out
    }

    /// `None` if the payload is too short or was not written by a loadgen.
    pub fn decode(payload: &[u8]) -> Option<Self> {
        let bytes: &[u8; HEADER_LEN] = payload.get(..HEADER_LEN)?.try_into().ok()?;
        let word = |range: std::ops::Range<usize>| {
            let mut buf = [0u8; 8];
            let len = range.len();
            buf[8 - len..].copy_from_slice(&bytes[range]);
            u64::from_be_bytes(buf)
        };
        if word(0..4) != u64::from(HEADER_MAGIC) {
            return None;
        }
        Some(Self {
            publisher_index: u32::try_from(word(4..8)).ok()?,
            sequence: word(8..16),
            sent_at_ns: word(16..24),
        })
    }
}

/// Nanoseconds since the Unix epoch from CLOCK_REALTIME (vDSO, cheap).
pub fn realtime_ns() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(now.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let header = PayloadHeader {
            publisher_index: 4_000_000_001,
            sequence: u64::MAX - 3,
            sent_at_ns: 1_700_000_000_123_456_789,
        };
        let mut payload = header.encode().to_vec();
        payload.extend_from_slice(&[0u8; 76]);
        assert_eq!(PayloadHeader::decode(&payload), Some(header));
    }

    #[test]
    fn short_or_foreign_payload_has_no_header() {
        let header = PayloadHeader {
            publisher_index: 1,
            sequence: 2,
            sent_at_ns: 3,
        };
        let encoded = header.encode();
        assert_eq!(PayloadHeader::decode(&encoded[..HEADER_LEN - 1]), None);
        let mut foreign = encoded;
        foreign[0] ^= 0xFF;
        assert_eq!(PayloadHeader::decode(&foreign), None);
        assert_eq!(PayloadHeader::decode(b""), None);
    }
}
