//! Loss, duplicate and reordering accounting per publisher sequence.
//!
//! One [`SeqTracker`] per delivery stream: per subscriber for ordinary subscriptions, per
//! shared-subscription group for `$share/..` (the group as a whole should see every message
//! exactly once). For each publisher it keeps the next expected sequence plus a ring bitmap of
//! the last [`SEQ_WINDOW`] sequences so duplicates and late (reordered) arrivals are told apart.
//! Overflow policy: a sequence older than the window cannot be classified; it is counted in
//! `out_of_window` and treated as a late unique arrival.

use std::collections::HashMap;

/// Sequences remembered per publisher, in bits (16 words = 128 bytes per publisher).
pub const SEQ_WINDOW: u64 = 1024;
const WINDOW_WORDS: usize = (SEQ_WINDOW / 64) as usize;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SeqCounts {
    /// Every message seen, duplicates included.
    pub received: u64,
    /// Distinct (publisher, sequence) pairs seen.
    pub unique: u64,
    pub duplicates: u64,
    /// Arrived after a higher sequence of the same publisher had already arrived.
    pub reordered: u64,
    /// Older than the window: cannot tell a duplicate from a late arrival.
    pub out_of_window: u64,
    /// Sequences skipped and not (yet) filled in; at the end of a run these are losses
    /// in the middle of a stream (tail losses only show up against the sent count).
    pub gaps_open: u64,
}

impl SeqCounts {
    pub fn add(&mut self, other: &SeqCounts) {
        self.received += other.received;
        self.unique += other.unique;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.out_of_window += other.out_of_window;
        self.gaps_open += other.gaps_open;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    InOrder,
    /// In order relative to the highest seen so far, but this many sequences were skipped.
    AfterGap(u64),
    Reordered,
    Duplicate,
    OutOfWindow,
}

#[derive(Debug, Clone)]
struct PublisherWindow {
    /// One past the highest sequence seen.
    next: u64,
    seen: [u64; WINDOW_WORDS],
}

impl PublisherWindow {
    fn slot(sequence: u64) -> (usize, u64) {
        let bit = sequence % SEQ_WINDOW;
        ((bit / 64) as usize, 1u64 << (bit % 64))
    }
}

#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    publishers: HashMap<u32, PublisherWindow>,
    counts: SeqCounts,
}

impl SeqTracker {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn counts(&self) -> SeqCounts {
        self.counts
    }

    /// Publishers number their messages from 0, so a first arrival above 0 opens a gap.
    pub fn observe(&mut self, publisher_index: u32, sequence: u64) -> Arrival {
        self.counts.received += 1;
        let window = self
            .publishers
            .entry(publisher_index)
            .or_insert(PublisherWindow {
                next: 0,
                seen: [0; WINDOW_WORDS],
            });
        if sequence >= window.next {
            let skipped = sequence - window.next;
            if sequence + 1 - window.next >= SEQ_WINDOW {
                window.seen = [0; WINDOW_WORDS];
            } else {
                // The slots of the sequences we move past held sequences that now leave the window.
                for passed in window.next..sequence {
                    let (word, mask) = PublisherWindow::slot(passed);
                    window.seen[word] &= !mask;
                }
            }
            let (word, mask) = PublisherWindow::slot(sequence);
            window.seen[word] |= mask;
            window.next = sequence + 1;
            self.counts.unique += 1;
            self.counts.gaps_open += skipped;
            return if skipped == 0 {
                Arrival::InOrder
            } else {
                Arrival::AfterGap(skipped)
            };
        }
        if window.next - sequence > SEQ_WINDOW {
            self.counts.out_of_window += 1;
            self.counts.unique += 1;
            self.counts.gaps_open = self.counts.gaps_open.saturating_sub(1);
            return Arrival::OutOfWindow;
        }
        let (word, mask) = PublisherWindow::slot(sequence);
        if window.seen[word] & mask != 0 {
            self.counts.duplicates += 1;
            return Arrival::Duplicate;
        }
        window.seen[word] |= mask;
        self.counts.unique += 1;
        self.counts.reordered += 1;
        self.counts.gaps_open = self.counts.gaps_open.saturating_sub(1);
        Arrival::Reordered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_has_no_anomalies() {
        let mut tracker = SeqTracker::new();
        for seq in 0..5000 {
            assert_eq!(tracker.observe(7, seq), Arrival::InOrder);
        }
        let counts = tracker.counts();
        assert_eq!(counts.received, 5000);
        assert_eq!(counts.unique, 5000);
        assert_eq!(counts.duplicates + counts.reordered + counts.gaps_open, 0);
    }

    #[test]
    fn loss_shows_as_open_gap() {
        let mut tracker = SeqTracker::new();
        tracker.observe(1, 0);
        assert_eq!(tracker.observe(1, 3), Arrival::AfterGap(2));
        assert_eq!(tracker.counts().gaps_open, 2);
        assert_eq!(tracker.counts().unique, 2);
    }

    #[test]
    fn late_arrival_is_reordered_and_closes_gap() {
        let mut tracker = SeqTracker::new();
        tracker.observe(1, 0);
        tracker.observe(1, 2);
        assert_eq!(tracker.observe(1, 1), Arrival::Reordered);
        let counts = tracker.counts();
        assert_eq!(counts.reordered, 1);
        assert_eq!(counts.gaps_open, 0);
        assert_eq!(counts.unique, 3);
    }

    #[test]
    fn duplicates_detected_in_order_and_late() {
        let mut tracker = SeqTracker::new();
        tracker.observe(1, 0);
        assert_eq!(tracker.observe(1, 0), Arrival::Duplicate);
        tracker.observe(1, 5);
        tracker.observe(1, 3);
        assert_eq!(tracker.observe(1, 3), Arrival::Duplicate);
        assert_eq!(tracker.observe(1, 5), Arrival::Duplicate);
        let counts = tracker.counts();
        assert_eq!(counts.duplicates, 3);
        assert_eq!(counts.unique, 3);
        assert_eq!(counts.received, 6);
    }

    #[test]
    fn publishers_are_independent() {
        let mut tracker = SeqTracker::new();
        tracker.observe(1, 0);
        assert_eq!(tracker.observe(2, 0), Arrival::InOrder);
        assert_eq!(tracker.observe(1, 1), Arrival::InOrder);
        assert_eq!(tracker.counts().duplicates, 0);
    }

    #[test]
    fn window_slides_without_false_duplicates() {
        let mut tracker = SeqTracker::new();
        // Every sequence reuses a ring slot used SEQ_WINDOW earlier; none may look duplicated.
        for seq in 0..SEQ_WINDOW * 3 {
            tracker.observe(9, seq);
        }
        tracker.observe(9, SEQ_WINDOW * 3 + 10);
        assert_eq!(tracker.observe(9, SEQ_WINDOW * 3 + 2), Arrival::Reordered);
        assert_eq!(tracker.counts().duplicates, 0);
        // A jump larger than the window clears it entirely.
        tracker.observe(9, SEQ_WINDOW * 10);
        assert_eq!(tracker.observe(9, SEQ_WINDOW * 10 - 1), Arrival::Reordered);
        assert_eq!(tracker.observe(9, 0), Arrival::OutOfWindow);
    }
}
