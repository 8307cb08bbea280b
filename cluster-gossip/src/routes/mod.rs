//! The owner-versioned route table: each node is the only writer of its exported set
//! ([`LocalRoutes`]); every other node holds a read-only copy per origin ([`RemoteRoutes`]) that
//! is kept in step by ordered ops, deltas, snapshots and digest comparison ([`crate::sync`]).
//! There is no multi-writer merge and no tombstone: a removed entry can only come back if its
//! owner adds it again.

mod local;
pub mod matcher;
mod remote;

pub use local::{LocalRoutes, LocalRoutesError};
pub use matcher::{RouteMatcher, SharedGroupNodes};
pub use remote::{ApplyOutcome, RemoteRoutes, RemoteRoutesError, SnapshotChunk, SnapshotOutcome};

use sha2::{Digest as _, Sha256};

use crate::identity::{Generation, NodeId};

/// Longest filter or group name accepted (MQTT strings are at most 65535 bytes).
pub const ENTRY_STRING_LEN_MAX: usize = 65_535;
/// Most entries one origin may export; a peer over it is refused (and counted), not obeyed.
pub const ROUTE_ENTRIES_PER_ORIGIN_MAX: usize = 1 << 20;

/// One exported interest: a topic filter with at least one local subscriber, or a shared group
/// (`$share/{group}/{filter}`) with at least one local member. Exported on 0<->1 only.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteEntry {
    Filter(String),
    Shared { group: String, filter: String },
}

impl RouteEntry {
    /// The topic filter this entry matches on.
    pub fn filter(&self) -> &str {
        match self {
            RouteEntry::Filter(filter) | RouteEntry::Shared { filter, .. } => filter,
        }
    }

    /// 64-bit hash of the entry that every node computes the same way whatever its build (SHA-256
    /// truncated), so XOR digests can be compared across versions.
    pub fn digest_hash(&self) -> u64 {
        let mut hasher = Sha256::new();
        match self {
            RouteEntry::Filter(filter) => {
                hasher.update([0u8]);
                hasher.update((filter.len() as u64).to_be_bytes());
                hasher.update(filter.as_bytes());
            }
            RouteEntry::Shared { group, filter } => {
                hasher.update([1u8]);
                hasher.update((group.len() as u64).to_be_bytes());
                hasher.update(group.as_bytes());
                hasher.update((filter.len() as u64).to_be_bytes());
                hasher.update(filter.as_bytes());
            }
        }
        let out = hasher.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&out[..8]);
        u64::from_be_bytes(first)
    }

    /// Bytes this entry takes on the wire (for chunking); an over-long entry is refused earlier.
    pub fn encoded_len(&self) -> usize {
        match self {
            RouteEntry::Filter(filter) => 1 + 4 + filter.len(),
            RouteEntry::Shared { group, filter } => 1 + 4 + group.len() + 4 + filter.len(),
        }
    }
}

/// An add or a remove of one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteChange {
    Add(RouteEntry),
    Remove(RouteEntry),
}

impl RouteChange {
    pub fn entry(&self) -> &RouteEntry {
        match self {
            RouteChange::Add(entry) | RouteChange::Remove(entry) => entry,
        }
    }
}

/// One versioned change of an origin's exported set. Seq 1 is the first op of a generation; a
/// generation starts empty at seq 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteOp {
    pub origin: NodeId,
    pub generation: Generation,
    pub seq: u64,
    pub change: RouteChange,
}

/// What a node says about one origin's set in anti-entropy: equal summaries mean equal sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteSummary {
    pub origin: NodeId,
    pub generation: Generation,
    pub seq: u64,
    /// XOR of [`RouteEntry::digest_hash`] over the set.
    pub digest: u64,
}
