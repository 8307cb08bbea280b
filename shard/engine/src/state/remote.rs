//! The cluster's side of a shard: which peer nodes want which topics (a per-shard replica of the
//! cluster route table, fed by shard 0), the node-level export of this process's own routes
//! (shard 0 only), and publishes waiting to be forwarded to peer nodes (shard 0 only).
//!
//! No I/O: shard 0's runtime (`shard/src/cluster`) drains [`ShardState::take_cluster_exports`]
//! and [`ShardState::take_cluster_forwards`] every turn into `ClusterNode`, and feeds remote route
//! changes and forwarded publishes back in. A forwarded publish is re-matched here against local
//! subscribers only ([`ShardState::publish_from_peer`]) and never forwarded again, so a message
//! crosses at most one peer link.

use super::*;
use crate::message::{ClusterForward, GroupPick, PeerNode};

/// Publishes waiting on shard 0 for the runtime to take them at the end of its turn. The runtime
/// drains the queue every turn, so it only fills when other shards hand over more than this in
/// one turn; beyond it a forward is dropped and counted (`reason="cross_shard_full"`).
pub const CLUSTER_FORWARDS_MAX: usize = 65_536;

/// Which peer nodes have a plain subscriber for one filter, and which have members of each
/// shared group on it.
#[derive(Debug, Default)]
pub struct RemoteInterest {
    pub nodes: SmallVec<[PeerNode; 4]>,
    pub groups: Vec<RemoteGroup>,
}

/// A shared group's members on peer nodes (presence per node; member counts stay local).
#[derive(Debug)]
pub struct RemoteGroup {
    pub filter: Arc<str>,
    pub group: Arc<str>,
    pub nodes: SmallVec<[PeerNode; 4]>,
    /// Round-robin cursor over `nodes`.
    pub next: Cell<u32>,
}

/// Adds or removes `node` in a list that holds each node once. True if the list changed.
fn set_node(nodes: &mut SmallVec<[PeerNode; 4]>, node: PeerNode, present: bool) -> bool {
    match (nodes.iter().position(|n| *n == node), present) {
        (None, true) => {
            nodes.push(node);
            true
        }
        (Some(pos), false) => {
            nodes.swap_remove(pos);
            true
        }
        _ => false,
    }
}

/// A 0<->1 change of this node's interest in a filter (or a shared group on it), for export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportChange {
    pub filter: Arc<str>,
    pub group: Option<Arc<str>>,
    pub present: bool,
}

/// Per-shard cluster state; present only when the broker runs in a cluster (boxed in
/// `ShardState::cluster`, so a lone broker pays one pointer).
#[derive(Default)]
pub struct ClusterShard {
    /// Peer nodes' plain interest, by filter. Changes come from shard 0 only, on the cluster
    /// table's add/remove edges, so an entry's node list has no duplicates.
    remote: TopicMap<RemoteInterest>,
    /// Shard 0 only: which shards have local interest in each (filter, group), so the node
    /// exports an entry on its node-level 0<->1 edges, not on every shard's.
    exported: AHashMap<(Arc<str>, Option<Arc<str>>), ShardMask>,
    /// Shard 0 only: export edges since the runtime last took them. Never dropped: bounded by the
    /// distinct filters of this node's sessions (`subscriptions_per_session_max` each).
    exports: Vec<ExportChange>,
    /// Shard 0 only: publishes to forward, bounded by [`CLUSTER_FORWARDS_MAX`].
    forwards: Vec<ClusterForward>,
    /// Shard 0 only: session claims and answers for the runtime (`state::handover`). Bounded by
    /// the connects in flight (`overload.handshakes_max`) and the peers' claims in flight
    /// (`cluster_gossip::handover::CLAIMS_PENDING_MAX` each); taken every turn.
    pub(super) claims: Vec<crate::message::ClaimRequest>,
    /// This node's `[cluster] node_id`: assigned client ids carry it, so they are unique in the
    /// cluster and need no claim.
    pub node_id: u64,
    /// Remote filters installed, for metrics.
    pub remote_filters: u64,
}

impl ShardState {
    /// Turns on cluster routing for this shard (every shard of a clustered broker, at start).
    pub fn enable_cluster(&mut self, node_id: u64) {
        self.cluster.get_or_insert_with(Default::default).node_id = node_id;
    }

    pub fn cluster_enabled(&self) -> bool {
        self.cluster.is_some()
    }

    /// Shard 0: a route change of any local shard (this one included). Records a node-level
    /// export edge when the first shard gains or the last shard loses the entry.
    pub(super) fn export_route(&mut self, change: &RouteChange) {
        if self.id != 0 {
            return;
        }
        let Some(cluster) = self.cluster.as_deref_mut() else {
            return;
        };
        let key = (change.filter.clone(), change.group.clone());
        let mask = cluster.exported.entry(key.clone()).or_insert(0);
        let before = *mask;
        if change.present {
            *mask |= bit(change.shard);
        } else {
            *mask &= !bit(change.shard);
        }
        let after = *mask;
        if after == 0 {
            cluster.exported.remove(&key);
        }
        if (before == 0) != (after == 0) {
            cluster.exports.push(ExportChange {
                filter: key.0,
                group: key.1,
                present: after != 0,
            });
        }
    }

    /// Applies a peer node's interest change here; on shard 0 also passes it to every other
    /// shard (route messages are never dropped).
    pub fn apply_remote_route(
        &mut self,
        node: PeerNode,
        filter: Arc<str>,
        group: Option<Arc<str>>,
        present: bool,
    ) {
        let Some(cluster) = self.cluster.as_deref_mut() else {
            return;
        };
        let changed = if present {
            let entry = cluster
                .remote
                .get_or_insert_with(&filter, RemoteInterest::default);
            match &group {
                None => set_node(&mut entry.nodes, node, true),
                Some(name) => match entry.groups.iter_mut().find(|g| g.group == *name) {
                    Some(g) => set_node(&mut g.nodes, node, true),
                    None => {
                        let mut nodes = SmallVec::new();
                        nodes.push(node);
                        entry.groups.push(RemoteGroup {
                            filter: filter.clone(),
                            group: name.clone(),
                            nodes,
                            next: Cell::new(0),
                        });
                        true
                    }
                },
            }
        } else if let Some(entry) = cluster.remote.get_mut(&filter) {
            let changed = match &group {
                None => set_node(&mut entry.nodes, node, false),
                Some(name) => {
                    let changed = entry
                        .groups
                        .iter_mut()
                        .find(|g| g.group == *name)
                        .is_some_and(|g| set_node(&mut g.nodes, node, false));
                    entry.groups.retain(|g| !g.nodes.is_empty());
                    changed
                }
            };
            if entry.nodes.is_empty() && entry.groups.is_empty() {
                cluster.remote.remove(&filter);
            }
            changed
        } else {
            false
        };
        if changed {
            if present {
                cluster.remote_filters += 1;
            } else {
                cluster.remote_filters = cluster.remote_filters.saturating_sub(1);
            }
        }
        if self.id == 0 {
            for shard in 1..self.shard_count {
                self.send_to(
                    shard,
                    ShardMsg::RemoteRoute {
                        node,
                        filter: filter.clone(),
                        group: group.clone(),
                        present,
                    },
                );
            }
        }
    }

    /// A publish accepted on this node: hands it to shard 0 for the peer nodes that want it (and
    /// for every peer when it is retained). A shared group with no member on this node (not in
    /// `here`, the groups this node delivered to) is given to one peer node with members.
    /// Returns how many peer nodes matched.
    pub(super) fn forward_to_cluster(
        &mut self,
        message: &Arc<Message>,
        here: &[GroupPick],
    ) -> usize {
        let Some(cluster) = self.cluster.as_deref() else {
            return 0;
        };
        // `$` topics ($SYS) describe this node only [MQTT-4.7.2-1 keeps them out of `#`].
        if message.publish.topic.as_str().starts_with('$') {
            return 0;
        }
        let mut nodes: SmallVec<[PeerNode; 4]> = SmallVec::new();
        let mut shared: SmallVec<[(PeerNode, GroupPick); 1]> = SmallVec::new();
        cluster
            .remote
            .for_each_match(message.publish.topic.as_str(), |entry| {
                for node in &entry.nodes {
                    if !nodes.contains(node) {
                        nodes.push(*node);
                    }
                }
                for g in &entry.groups {
                    if here.iter().any(|(f, n)| *f == g.filter && *n == g.group) {
                        continue; // delivered to a member on this node
                    }
                    let n = g.next.get();
                    g.next.set(n.wrapping_add(1));
                    if let Some(node) = g.nodes.get(n as usize % g.nodes.len().max(1)) {
                        shared.push((*node, (g.filter.clone(), g.group.clone())));
                    }
                }
            });
        let all_nodes = message.publish.retain;
        if nodes.is_empty() && shared.is_empty() && !all_nodes {
            return 0;
        }
        let matched = nodes.len() + shared.len();
        let forward = ClusterForward {
            message: message.clone(),
            nodes,
            shared,
            all_nodes,
            retained_sync: false,
        };
        if self.id == 0 {
            self.queue_cluster_forward(forward);
        } else {
            self.send_to(0, ShardMsg::ClusterForward(forward));
        }
        matched
    }

    /// Shard 0: a publish for the peer links, taken by the runtime at the end of the turn.
    pub fn queue_cluster_forward(&mut self, forward: ClusterForward) {
        let Some(cluster) = self.cluster.as_deref_mut() else {
            return;
        };
        if cluster.forwards.len() >= CLUSTER_FORWARDS_MAX {
            self.counters
                .drop(forward.message.publish.qos, DropReason::CrossShardFull);
            return;
        }
        cluster.forwards.push(forward);
    }

    /// Shard 0: export edges since the last call, oldest first.
    pub fn take_cluster_exports(&mut self) -> Vec<ExportChange> {
        self.cluster
            .as_deref_mut()
            .map(|c| std::mem::take(&mut c.exports))
            .unwrap_or_default()
    }

    /// Shard 0: publishes to forward since the last call, oldest first.
    pub fn take_cluster_forwards(&mut self) -> Vec<ClusterForward> {
        self.cluster
            .as_deref_mut()
            .map(|c| std::mem::take(&mut c.forwards))
            .unwrap_or_default()
    }

    /// Shard 0: queues this node's retained set for `peer`, whose link just came up (it may have
    /// joined after the messages were published). Bounded like any forward: past
    /// [`CLUSTER_FORWARDS_MAX`] or the link's bound the rest is dropped and counted.
    pub fn sync_retained_to(&mut self, peer: PeerNode) -> usize {
        let mut messages: Vec<Arc<Message>> = self.retained.values().map(|r| r.0.clone()).collect();
        // And the clears this node remembers, as the empty retained publishes they were
        // [MQTT-3.3.1-10]: a topic cleared here while the peer was cut off must not survive there
        // (the peer keeps whichever of its message and the clear is later).
        messages.extend(self.retained_cleared.iter().map(|(topic, at)| {
            Arc::new(Message {
                publish: wire::Publish {
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain: true,
                    topic: Utf8Bytes::from(&**topic),
                    packet_id: None,
                    properties: Default::default(),
                    payload: Bytes::new(),
                },
                origin: None,
                expires_at: None,
                received_at: at.0,
            })
        }));
        let count = messages.len();
        for message in messages {
            let mut nodes = SmallVec::new();
            nodes.push(peer);
            self.queue_cluster_forward(ClusterForward {
                message,
                nodes,
                shared: SmallVec::new(),
                all_nodes: false,
                retained_sync: true,
            });
        }
        count
    }

    /// A retained message a peer handed over when its link came up: stored on every shard (last
    /// writer wins by the origin's time), delivered to nobody.
    pub fn retain_from_peer(&mut self, message: Arc<Message>) {
        // A clear from the peer removes only an older message (`apply_retain`'s order).
        self.apply_retain(&message);
        for shard in 0..self.shard_count {
            if shard != self.id {
                self.send_to(shard, ShardMsg::Retain(message.clone()));
            }
        }
    }

    /// Remote filters installed on this shard (for metrics).
    pub fn remote_filter_count(&self) -> u64 {
        self.cluster.as_deref().map_or(0, |c| c.remote_filters)
    }

    /// A publish forwarded by a peer node: retained store, local shards' normal subscribers and
    /// the shared groups in `groups` (the peer picked this node for them); never forwarded to a
    /// peer again.
    pub fn publish_from_peer(
        &mut self,
        message: Arc<Message>,
        groups: &[GroupPick],
        now: Instant,
    ) -> usize {
        self.route_publish(message, Some(groups), now)
    }
}
