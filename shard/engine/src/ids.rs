//! Typed identifiers the engine hands out, and the shard's queue of connections with work.

use std::cell::RefCell;
use std::rc::Rc;

/// One transport connection known to the engine: an index into its connection table and the
/// generation of that entry, so an id of a closed connection never names its successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub index: u32,
    pub generation: u32,
}

impl ConnId {
    /// Packs the id into the `u64` a transport carries as its per-connection token.
    pub fn to_u64(self) -> u64 {
        u64::from(self.index) << 32 | u64::from(self.generation)
    }

    pub fn from_u64(token: u64) -> ConnId {
        ConnId {
            index: (token >> 32) as u32,
            generation: token as u32,
        }
    }
}

/// A route barrier this shard started: answered once every other shard applied what this one
/// sent it before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BarrierId(pub u64);

/// Connections that have work this loop turn (output to write, a close decided). Shared by the
/// engine and every session link of its shard (never across threads); a connection is on it at
/// most once (`ConnectionLink::woken`), so its length is bounded by the connection count.
#[derive(Debug, Clone, Default)]
pub struct ReadyQueue(Rc<RefCell<Vec<ConnId>>>);

impl ReadyQueue {
    pub fn push(&self, conn: ConnId) {
        self.0.borrow_mut().push(conn);
    }

    /// Moves the queued ids into `into` (kept allocation on both sides).
    pub fn drain_into(&self, into: &mut Vec<ConnId>) {
        into.append(&mut self.0.borrow_mut());
    }

    pub fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }
}
