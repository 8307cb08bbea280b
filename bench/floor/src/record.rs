//! The wire format of the measurement: fixed 100-byte records, no MQTT.
//!
//! Layout: bytes [0, 8) are the driver's send time in nanoseconds on CLOCK_MONOTONIC (little
//! endian; both processes run on this machine, so the clocks agree), [8, 12) the publisher index,
//! the rest filler. The receiver never looks inside a record; it only cuts the byte stream at
//! record boundaries, which is the least framing work any broker must do.

/// Bytes in one message, the size of a typical fleet telemetry PUBLISH.
pub const RECORD_LEN: usize = 100;

/// Nanoseconds on CLOCK_MONOTONIC.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Fills `out` with a record stamped now.
pub fn encode(out: &mut [u8; RECORD_LEN], publisher_index: u32) {
    out[0..8].copy_from_slice(&now_ns().to_le_bytes());
    out[8..12].copy_from_slice(&publisher_index.to_le_bytes());
}

/// The send time carried by a record.
pub fn sent_ns(record: &[u8]) -> u64 {
    let mut stamp = [0u8; 8];
    stamp.copy_from_slice(&record[0..8]);
    u64::from_le_bytes(stamp)
}

/// Cuts one connection's byte stream into records, carrying a partial record between reads.
pub struct Reassembly {
    /// Bytes of a record whose tail has not arrived yet; only `[0, carry_len)` is meaningful.
    carry: [u8; RECORD_LEN],
    /// Always below `RECORD_LEN`: a whole record is emitted as soon as it is complete.
    carry_len: u8,
}

impl Default for Reassembly {
    fn default() -> Self {
        Self {
            carry: [0; RECORD_LEN],
            carry_len: 0,
        }
    }
}

impl Reassembly {
    /// Calls `emit` once per whole record in the carried bytes followed by `data`, in order, and
    /// keeps the incomplete tail for the next call.
    pub fn feed(&mut self, mut data: &[u8], mut emit: impl FnMut(&[u8])) {
        let carried = self.carry_len as usize;
        if carried > 0 {
            let take = (RECORD_LEN - carried).min(data.len());
            self.carry[carried..carried + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            if carried + take < RECORD_LEN {
                self.carry_len = (carried + take) as u8;
                return;
            }
            emit(&self.carry);
            self.carry_len = 0;
        }
        let mut records = data.chunks_exact(RECORD_LEN);
        for record in &mut records {
            emit(record);
        }
        let tail = records.remainder();
        self.carry[..tail.len()].copy_from_slice(tail);
        self.carry_len = tail.len() as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(count: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for index in 0..count {
            let mut record = [0u8; RECORD_LEN];
            record[8..12].copy_from_slice(&(index as u32).to_le_bytes());
            bytes.extend_from_slice(&record);
        }
        bytes
    }

    #[test]
    fn cuts_at_record_boundaries_whatever_the_read_sizes() {
        let bytes = stream(7);
        for step in [1, 3, 99, 100, 101, 250, 700] {
            let mut reassembly = Reassembly::default();
            let mut seen = Vec::new();
            for chunk in bytes.chunks(step) {
                reassembly.feed(chunk, |record| {
                    assert_eq!(record.len(), RECORD_LEN);
                    let mut index = [0u8; 4];
                    index.copy_from_slice(&record[8..12]);
                    seen.push(u32::from_le_bytes(index));
                });
            }
            assert_eq!(seen, (0..7).collect::<Vec<u32>>(), "step {step}");
            assert_eq!(reassembly.carry_len, 0);
        }
    }

    #[test]
    fn stamp_round_trips() {
        let mut record = [0u8; RECORD_LEN];
        let before = now_ns();
        encode(&mut record, 42);
        assert!(sent_ns(&record) >= before);
    }
}
