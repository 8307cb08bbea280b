//! The writer side: this node's exported set with a bounded op log for serving deltas.

use std::collections::{HashMap, VecDeque};

use super::{RouteChange, RouteEntry, RouteOp, RouteSummary, ENTRY_STRING_LEN_MAX};
use crate::identity::{Generation, NodeId};

/// Why a local change was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocalRoutesError {
    #[error("route entry of {len} bytes is over the limit of {max}")]
    EntryTooLong { len: usize, max: usize },
    #[error("route entry is not exported, it cannot be removed")]
    NotExported,
}

/// This node's exported routes. Only this node writes them; every change gets the next seq of the
/// current generation.
#[derive(Debug)]
pub struct LocalRoutes {
    origin: NodeId,
    generation: Generation,
    /// Seq of the last op of this generation (0: none yet).
    seq: u64,
    /// Entry -> local subscriber count (always >= 1 while present).
    entries: HashMap<RouteEntry, u32>,
    /// XOR of the hashes of the keys of `entries`.
    digest: u64,
    /// The last ops of this generation, oldest first; `log_len_max` bounds it.
    log: VecDeque<RouteOp>,
    log_len_max: usize,
}

impl LocalRoutes {
    pub fn new(origin: NodeId, generation: Generation, log_len_max: usize) -> Self {
        assert!(log_len_max > 0, "op log needs room for one op");
        Self {
            origin,
            generation,
            seq: 0,
            entries: HashMap::new(),
            digest: 0,
            log: VecDeque::with_capacity(log_len_max.min(1024)),
            log_len_max,
        }
    }

    fn check_len(entry: &RouteEntry) -> Result<(), LocalRoutesError> {
        let len = match entry {
            RouteEntry::Filter(filter) => filter.len(),
            RouteEntry::Shared { group, filter } => group.len().max(filter.len()),
        };
        if len > ENTRY_STRING_LEN_MAX {
            return Err(LocalRoutesError::EntryTooLong {
                len,
                max: ENTRY_STRING_LEN_MAX,
            });
        }
        Ok(())
    }

    /// One more local subscriber (or shared-group member) for `entry`. Returns the op to send
    /// when the entry went 0 -> 1.
    pub fn subscribe(&mut self, entry: RouteEntry) -> Result<Option<RouteOp>, LocalRoutesError> {
        Self::check_len(&entry)?;
        if let Some(count) = self.entries.get_mut(&entry) {
            *count = count.saturating_add(1);
            return Ok(None);
        }
        self.digest ^= entry.digest_hash();
        self.entries.insert(entry.clone(), 1);
        Ok(Some(self.push(RouteChange::Add(entry))))
    }

    /// One local subscriber fewer. Returns the op to send when the entry went 1 -> 0.
    pub fn unsubscribe(&mut self, entry: &RouteEntry) -> Result<Option<RouteOp>, LocalRoutesError> {
        let Some(count) = self.entries.get_mut(entry) else {
            return Err(LocalRoutesError::NotExported);
        };
        debug_assert!(*count >= 1, "present entries have a subscriber");
        *count -= 1;
        if *count > 0 {
            return Ok(None);
        }
        self.entries.remove(entry);
        self.digest ^= entry.digest_hash();
        Ok(Some(self.push(RouteChange::Remove(entry.clone()))))
    }

    fn push(&mut self, change: RouteChange) -> RouteOp {
        self.seq += 1;
        let op = RouteOp {
            origin: self.origin,
            generation: self.generation,
            seq: self.seq,
            change,
        };
        if self.log.len() == self.log_len_max {
            self.log.pop_front();
        }
        self.log.push_back(op.clone());
        op
    }

    /// Starts a new generation (after this node was declared down and rejoined): the set is kept
    /// and re-logged as adds from seq 1, since every generation starts empty at seq 0.
    pub fn renew(&mut self, generation: Generation) {
        assert!(generation > self.generation, "generations only grow");
        self.generation = generation;
        self.seq = 0;
        self.log.clear();
        let mut entries: Vec<RouteEntry> = self.entries.keys().cloned().collect();
        entries.sort();
        for entry in entries {
            self.push(RouteChange::Add(entry));
        }
    }

    /// The ops after `have_seq`, or `None` when the log no longer reaches back that far (the
    /// peer then needs a snapshot).
    pub fn ops_after(&self, have_seq: u64) -> Option<impl Iterator<Item = &RouteOp>> {
        if have_seq > self.seq {
            return None;
        }
        let first_logged = self.log.front().map_or(self.seq + 1, |op| op.seq);
        if have_seq + 1 < first_logged {
            return None;
        }
        let skip = (have_seq + 1 - first_logged) as usize;
        Some(self.log.iter().skip(skip))
    }

    pub fn summary(&self) -> RouteSummary {
        RouteSummary {
            origin: self.origin,
            generation: self.generation,
            seq: self.seq,
            digest: self.digest,
        }
    }

    /// The entries, sorted so snapshots are reproducible.
    pub fn snapshot_entries(&self) -> Vec<RouteEntry> {
        let mut entries: Vec<RouteEntry> = self.entries.keys().cloned().collect();
        entries.sort();
        entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn generation(&self) -> Generation {
        self.generation
    }

    pub fn origin(&self) -> NodeId {
        self.origin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(s: &str) -> RouteEntry {
        RouteEntry::Filter(s.to_string())
    }

    #[test]
    fn exported_on_zero_one_transitions_only() {
        let mut local = LocalRoutes::new(NodeId(1), Generation(7), 16);
        assert!(local.subscribe(filter("a/+")).unwrap().is_some());
        assert!(local.subscribe(filter("a/+")).unwrap().is_none());
        assert!(local.unsubscribe(&filter("a/+")).unwrap().is_none());
        let op = local.unsubscribe(&filter("a/+")).unwrap().unwrap();
        assert_eq!(op.seq, 2);
        assert_eq!(op.change, RouteChange::Remove(filter("a/+")));
        assert_eq!(local.summary().digest, 0);
        assert_eq!(
            local.unsubscribe(&filter("a/+")),
            Err(LocalRoutesError::NotExported)
        );
    }

    #[test]
    fn digest_is_order_independent() {
        let mut a = LocalRoutes::new(NodeId(1), Generation(1), 16);
        let mut b = LocalRoutes::new(NodeId(1), Generation(1), 16);
        for f in ["x", "y/#", "z/+/q"] {
            a.subscribe(filter(f)).unwrap();
        }
        for f in ["z/+/q", "x", "y/#"] {
            b.subscribe(filter(f)).unwrap();
        }
        assert_eq!(a.summary().digest, b.summary().digest);
        assert_ne!(a.summary().digest, 0);
    }

    #[test]
    fn log_serves_deltas_until_it_wraps() {
        let mut local = LocalRoutes::new(NodeId(1), Generation(1), 4);
        for i in 0..6 {
            local.subscribe(filter(&format!("t/{i}"))).unwrap();
        }
        // seqs 3..=6 are logged
        assert!(local.ops_after(1).is_none());
        let seqs: Vec<u64> = local.ops_after(2).unwrap().map(|op| op.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5, 6]);
        assert_eq!(local.ops_after(6).unwrap().count(), 0);
        assert!(local.ops_after(7).is_none());
    }

    #[test]
    fn renew_relogs_the_set_from_seq_one() {
        let mut local = LocalRoutes::new(NodeId(1), Generation(1), 16);
        local.subscribe(filter("a")).unwrap();
        local.subscribe(filter("b")).unwrap();
        local.unsubscribe(&filter("a")).unwrap();
        let digest = local.summary().digest;
        local.renew(Generation(2));
        let summary = local.summary();
        assert_eq!(
            (summary.generation, summary.seq, summary.digest),
            (Generation(2), 1, digest)
        );
        assert_eq!(local.ops_after(0).unwrap().count(), 1);
    }
}
