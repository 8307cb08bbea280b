//! Who a cluster member is: its configured id, its incarnation and where to reach it.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A node's configured id (`[cluster] node_id`): unique in the cluster and stable across restarts.
/// Zero is reserved for "not yet known" (the placeholder identity of a seed address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One incarnation of a node: set at boot (start time in ns or a random u64) and bumped by one when
/// the node learns the cluster declared it down and rejoins. A higher generation of the same
/// `NodeId` replaces the lower one, and with it every route the lower one exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Generation(pub u64);

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The membership identity gossiped by SWIM (and sent in the peer-link hello).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// Configured, stable id.
    pub node_id: NodeId,
    /// Incarnation; see [`Generation`].
    pub generation: Generation,
    /// UDP address SWIM datagrams go to; foca's `Addr`, so one live identity per address.
    pub gossip_addr: SocketAddr,
    /// TCP address of the route-sync and forwarding link.
    pub peer_addr: SocketAddr,
}

impl NodeIdentity {
    /// The identity used to announce to a seed whose id is not known yet: foca accepts an
    /// announce addressed to any identity with the receiver's gossip address.
    pub fn seed_placeholder(gossip_addr: SocketAddr) -> Self {
        Self {
            node_id: NodeId(0),
            generation: Generation(0),
            gossip_addr,
            peer_addr: gossip_addr,
        }
    }

    /// True for identities made by [`NodeIdentity::seed_placeholder`].
    pub fn is_placeholder(&self) -> bool {
        self.node_id == NodeId(0)
    }
}

impl fmt::Display for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}@{}",
            self.node_id, self.generation, self.gossip_addr
        )
    }
}

impl foca::Identity for NodeIdentity {
    type Addr = SocketAddr;

    /// Rejoin after being declared down with the next generation: peers then drop the routes of
    /// the old incarnation and resync the new one from seq 0.
    fn renew(&self) -> Option<Self> {
        Some(Self {
            generation: Generation(self.generation.0.wrapping_add(1)),
            ..*self
        })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.generation, self.node_id) > (adversary.generation, adversary.node_id)
    }
}
