//! The receiver's outbound side: round-robin choice of a sink per record and the per-sink buffer
//! that coalesces a loop turn's records into one write.

/// Bytes queued for one sink before records are dropped. Loopback sinks drain far faster than the
/// driver's rates fill them; the bound exists so a stalled sink cannot grow the receiver.
pub const SINK_PENDING_MAX_BYTES: usize = 4 << 20;

const _: () = assert!(SINK_PENDING_MAX_BYTES >= 64 * crate::record::RECORD_LEN);

/// Records waiting for the sinks, one buffer per sink.
pub struct SinkQueues {
    /// Bytes to write to each sink at the end of this turn, appended in arrival order.
    pub pending: Vec<Vec<u8>>,
    /// Index of the sink that receives the next record.
    next: usize,
    /// Records forwarded (queued for a sink) since start.
    pub forwarded: u64,
    /// Records refused because their sink's queue was at `SINK_PENDING_MAX_BYTES`.
    pub dropped: u64,
}

impl SinkQueues {
    pub fn new(sink_count: usize) -> Self {
        assert!(sink_count > 0, "at least one sink is needed");
        Self {
            pending: (0..sink_count)
                .map(|_| Vec::with_capacity(64 << 10))
                .collect(),
            next: 0,
            forwarded: 0,
            dropped: 0,
        }
    }

    /// Queues one record for the next sink in round-robin order.
    #[inline]
    pub fn push(&mut self, record: &[u8]) {
        let sink_count = self.pending.len();
        let queue = &mut self.pending[self.next];
        self.next += 1;
        if self.next == sink_count {
            self.next = 0;
        }
        if queue.len() + record.len() > SINK_PENDING_MAX_BYTES {
            self.dropped += 1;
            return;
        }
        queue.extend_from_slice(record);
        self.forwarded += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RECORD_LEN;

    #[test]
    fn spreads_records_round_robin() {
        let mut queues = SinkQueues::new(4);
        for _ in 0..10 {
            queues.push(&[0u8; RECORD_LEN]);
        }
        let lens: Vec<usize> = queues
            .pending
            .iter()
            .map(|q| q.len() / RECORD_LEN)
            .collect();
        assert_eq!(lens, vec![3, 3, 2, 2]);
        assert_eq!(queues.forwarded, 10);
    }

    #[test]
    fn drops_beyond_the_bound() {
        let mut queues = SinkQueues::new(1);
        let per_queue = SINK_PENDING_MAX_BYTES / RECORD_LEN;
        for _ in 0..per_queue + 5 {
            queues.push(&[0u8; RECORD_LEN]);
        }
        assert_eq!(queues.forwarded as usize, per_queue);
        assert_eq!(queues.dropped, 5);
    }
}
