//! The receiver side: one origin's exported set as this node last learned it.

use std::collections::HashSet;

use super::{RouteChange, RouteEntry, RouteOp, RouteSummary, ROUTE_ENTRIES_PER_ORIGIN_MAX};
use crate::identity::{Generation, NodeId};

/// Why an op or snapshot from a peer was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RemoteRoutesError {
    #[error("origin {origin} exports more than {max} route entries, refusing the rest")]
    TooManyEntries { origin: NodeId, max: usize },
    #[error("op for origin {got} applied to the routes of origin {expected}")]
    WrongOrigin { expected: NodeId, got: NodeId },
}

/// What applying one op did.
#[derive(Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The op was the next one and is applied.
    Applied,
    /// Next in order but it did not change the set (an add of a present entry): our copy had
    /// drifted; the set is right again, the digest check will confirm.
    AppliedDrift,
    /// Already applied (seq not above ours): ignored.
    Duplicate,
    /// From an older generation: ignored.
    Stale,
    /// Ops are missing; ask the owner for everything after `have_seq` (a delta or a snapshot).
    Gap { have_seq: u64 },
}

/// What one snapshot chunk did.
#[derive(Debug, PartialEq, Eq)]
pub enum SnapshotOutcome {
    /// Chunk staged, more to come.
    Staged,
    /// Last chunk arrived, digest verified, set replaced.
    Installed,
    /// Older than what we have: ignored.
    Stale,
    /// A chunk is missing or the digest did not verify: staging dropped, ask again.
    Broken,
}

/// A snapshot being received chunk by chunk; it replaces the set only once complete and verified.
#[derive(Debug)]
struct Staging {
    generation: Generation,
    seq: u64,
    digest: u64,
    next_index: u32,
    entries: Vec<RouteEntry>,
}

/// One snapshot chunk as it travels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    pub origin: NodeId,
    pub generation: Generation,
    /// The seq the snapshot is taken at.
    pub seq: u64,
    /// Digest of the whole snapshot.
    pub digest: u64,
    /// 0, 1, ... in order.
    pub index: u32,
    /// Set on the final chunk.
    pub last: bool,
    pub entries: Vec<RouteEntry>,
}

/// One origin's set as seen here. Changes to the set are reported to the caller so the matcher
/// follows them.
#[derive(Debug)]
pub struct RemoteRoutes {
    origin: NodeId,
    generation: Generation,
    /// Seq of the last op applied (or of the installed snapshot).
    seq: u64,
    entries: HashSet<RouteEntry>,
    /// XOR of the hashes of `entries`.
    digest: u64,
    /// Set while a snapshot is arriving.
    staging: Option<Staging>,
}

impl RemoteRoutes {
    /// An empty set for `origin` at seq 0 of `generation`.
    pub fn new(origin: NodeId, generation: Generation) -> Self {
        Self {
            origin,
            generation,
            seq: 0,
            entries: HashSet::new(),
            digest: 0,
            staging: None,
        }
    }

    /// Empties the set for a newer generation: everything the old incarnation exported is gone.
    fn reset(&mut self, generation: Generation, changes: &mut Vec<RouteChange>) {
        changes.extend(self.entries.drain().map(RouteChange::Remove));
        self.generation = generation;
        self.seq = 0;
        self.digest = 0;
        self.staging = None;
    }

    /// Removes every entry (the origin went down), reporting them.
    pub fn clear(&mut self, changes: &mut Vec<RouteChange>) {
        changes.extend(self.entries.drain().map(RouteChange::Remove));
        self.digest = 0;
        self.staging = None;
    }

    /// Applies one op from the owner, in the rules of the protocol: higher generation drops the
    /// old set; next seq applies; a gap asks for repair; older or duplicate ops are ignored.
    pub fn apply_op(
        &mut self,
        op: &RouteOp,
        changes: &mut Vec<RouteChange>,
    ) -> Result<ApplyOutcome, RemoteRoutesError> {
        if op.origin != self.origin {
            return Err(RemoteRoutesError::WrongOrigin {
                expected: self.origin,
                got: op.origin,
            });
        }
        if op.generation < self.generation {
            return Ok(ApplyOutcome::Stale);
        }
        if op.generation > self.generation {
            self.reset(op.generation, changes);
        }
        if op.seq <= self.seq {
            return Ok(ApplyOutcome::Duplicate);
        }
        if op.seq > self.seq + 1 {
            return Ok(ApplyOutcome::Gap { have_seq: self.seq });
        }
        self.seq = op.seq;
        let changed = match &op.change {
            RouteChange::Add(entry) => {
                if self.entries.len() >= ROUTE_ENTRIES_PER_ORIGIN_MAX
                    && !self.entries.contains(entry)
                {
                    return Err(RemoteRoutesError::TooManyEntries {
                        origin: self.origin,
                        max: ROUTE_ENTRIES_PER_ORIGIN_MAX,
                    });
                }
                self.entries.insert(entry.clone())
            }
            RouteChange::Remove(entry) => self.entries.remove(entry),
        };
        if !changed {
            return Ok(ApplyOutcome::AppliedDrift);
        }
        self.digest ^= op.change.entry().digest_hash();
        changes.push(op.change.clone());
        Ok(ApplyOutcome::Applied)
    }

    /// Takes one snapshot chunk; the set is replaced when the last one verifies.
    pub fn apply_snapshot_chunk(
        &mut self,
        chunk: SnapshotChunk,
        changes: &mut Vec<RouteChange>,
    ) -> Result<SnapshotOutcome, RemoteRoutesError> {
        if chunk.origin != self.origin {
            return Err(RemoteRoutesError::WrongOrigin {
                expected: self.origin,
                got: chunk.origin,
            });
        }
        if chunk.generation < self.generation
            || (chunk.generation == self.generation && chunk.seq < self.seq)
        {
            return Ok(SnapshotOutcome::Stale);
        }
        if chunk.index == 0 {
            self.staging = Some(Staging {
                generation: chunk.generation,
                seq: chunk.seq,
                digest: chunk.digest,
                next_index: 0,
                entries: Vec::new(),
            });
        }
        let Some(staging) = self.staging.as_mut() else {
            return Ok(SnapshotOutcome::Broken);
        };
        if staging.next_index != chunk.index
            || staging.generation != chunk.generation
            || staging.seq != chunk.seq
        {
            self.staging = None;
            return Ok(SnapshotOutcome::Broken);
        }
        if staging.entries.len() + chunk.entries.len() > ROUTE_ENTRIES_PER_ORIGIN_MAX {
            self.staging = None;
            return Err(RemoteRoutesError::TooManyEntries {
                origin: self.origin,
                max: ROUTE_ENTRIES_PER_ORIGIN_MAX,
            });
        }
        staging.entries.extend(chunk.entries);
        staging.next_index += 1;
        if !chunk.last {
            return Ok(SnapshotOutcome::Staged);
        }
        let Some(staging) = self.staging.take() else {
            return Ok(SnapshotOutcome::Broken);
        };
        let new: HashSet<RouteEntry> = staging.entries.into_iter().collect();
        let digest = new.iter().fold(0u64, |acc, e| acc ^ e.digest_hash());
        if digest != staging.digest {
            return Ok(SnapshotOutcome::Broken);
        }
        if staging.generation > self.generation {
            self.reset(staging.generation, changes);
        }
        for old in self.entries.iter().filter(|e| !new.contains(*e)) {
            changes.push(RouteChange::Remove(old.clone()));
        }
        for added in new.iter().filter(|e| !self.entries.contains(*e)) {
            changes.push(RouteChange::Add(added.clone()));
        }
        self.entries = new;
        self.digest = digest;
        self.seq = staging.seq;
        Ok(SnapshotOutcome::Installed)
    }

    pub fn summary(&self) -> RouteSummary {
        RouteSummary {
            origin: self.origin,
            generation: self.generation,
            seq: self.seq,
            digest: self.digest,
        }
    }

    pub fn generation(&self) -> Generation {
        self.generation
    }

    pub fn contains(&self, entry: &RouteEntry) -> bool {
        self.entries.contains(entry)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True while a snapshot is partly received.
    pub fn is_staging(&self) -> bool {
        self.staging.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(generation: u64, seq: u64, change: RouteChange) -> RouteOp {
        RouteOp {
            origin: NodeId(2),
            generation: Generation(generation),
            seq,
            change,
        }
    }

    fn add(s: &str) -> RouteChange {
        RouteChange::Add(RouteEntry::Filter(s.into()))
    }

    #[test]
    fn ordering_rules() {
        let mut remote = RemoteRoutes::new(NodeId(2), Generation(5));
        let mut changes = Vec::new();
        assert_eq!(
            remote.apply_op(&op(5, 1, add("a")), &mut changes),
            Ok(ApplyOutcome::Applied)
        );
        assert_eq!(
            remote.apply_op(&op(5, 1, add("a")), &mut changes),
            Ok(ApplyOutcome::Duplicate)
        );
        assert_eq!(
            remote.apply_op(&op(5, 3, add("c")), &mut changes),
            Ok(ApplyOutcome::Gap { have_seq: 1 })
        );
        assert_eq!(
            remote.apply_op(&op(4, 9, add("z")), &mut changes),
            Ok(ApplyOutcome::Stale)
        );
        assert_eq!(changes.len(), 1);
        // A newer generation drops the old set before anything else.
        changes.clear();
        assert_eq!(
            remote.apply_op(&op(6, 1, add("b")), &mut changes),
            Ok(ApplyOutcome::Applied)
        );
        assert_eq!(
            changes,
            vec![
                RouteChange::Remove(RouteEntry::Filter("a".into())),
                add("b")
            ]
        );
        assert!(!remote.contains(&RouteEntry::Filter("a".into())));
    }

    #[test]
    fn snapshot_replaces_after_verifying() {
        let mut remote = RemoteRoutes::new(NodeId(2), Generation(1));
        let mut changes = Vec::new();
        remote
            .apply_op(&op(1, 1, add("old")), &mut changes)
            .unwrap();
        let entries = vec![
            RouteEntry::Filter("x".into()),
            RouteEntry::Filter("y".into()),
        ];
        let digest = entries.iter().fold(0, |a, e| a ^ e.digest_hash());
        let chunk = |index, last, entries: Vec<RouteEntry>, digest| SnapshotChunk {
            origin: NodeId(2),
            generation: Generation(1),
            seq: 9,
            digest,
            index,
            last,
            entries,
        };
        // A wrong digest is refused and leaves the set alone.
        assert_eq!(
            remote.apply_snapshot_chunk(chunk(0, true, entries.clone(), digest ^ 1), &mut changes),
            Ok(SnapshotOutcome::Broken)
        );
        assert!(remote.contains(&RouteEntry::Filter("old".into())));
        // A skipped chunk is refused.
        remote
            .apply_snapshot_chunk(chunk(0, false, entries[..1].to_vec(), digest), &mut changes)
            .unwrap();
        assert_eq!(
            remote
                .apply_snapshot_chunk(chunk(2, true, entries[1..].to_vec(), digest), &mut changes),
            Ok(SnapshotOutcome::Broken)
        );
        remote
            .apply_snapshot_chunk(chunk(0, false, entries[..1].to_vec(), digest), &mut changes)
            .unwrap();
        assert_eq!(
            remote
                .apply_snapshot_chunk(chunk(1, true, entries[1..].to_vec(), digest), &mut changes),
            Ok(SnapshotOutcome::Installed)
        );
        assert_eq!(remote.summary().seq, 9);
        assert_eq!(remote.summary().digest, digest);
        assert!(!remote.contains(&RouteEntry::Filter("old".into())));
    }
}
