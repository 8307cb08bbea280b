//! [`ClusterNode`]: membership and route sync of one node wired together, still without I/O.
//!
//! The runtime seam feeds it datagrams, link bytes, link open/close and time, and drains
//! datagrams, link bytes, [`LinkCommand`]s and [`ClusterEvent`]s. Links are dialed by the member
//! with the lower `NodeId`, so each pair has one link.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt as _, SeedableRng};

use crate::auth::Secret;
use crate::codec::{self, CodecError, FrameCheck, FRAME_LEN_MAX};
use crate::config::ClusterConfig;
use crate::identity::{Generation, NodeId, NodeIdentity};
use crate::membership::{Membership, MembershipEvent, MembershipStats};
use crate::routes::{LocalRoutes, LocalRoutesError, RouteEntry, RouteSummary, SharedGroupNodes};
use crate::sync::{LinkPayload, LinkStats, RemoteTable, RouteSync, SyncError};

/// Bytes buffered per link while a frame is incomplete: one maximal frame and its header.
pub const LINK_READ_BUFFER_MAX: usize = FRAME_LEN_MAX + 4;
/// Events waiting for the caller; past this the oldest is dropped and counted.
pub const CLUSTER_EVENT_QUEUE_MAX: usize = 4096;
/// Commands waiting for the runtime; one per link open/close, bounded by the member count.
pub const LINK_COMMAND_QUEUE_MAX: usize = 4096;

/// A peer link as the runtime knows it (a TCP connection); allocated by the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(pub u64);

/// What the runtime should do with its links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkCommand {
    /// Open a TCP connection to `peer.peer_addr` and report `link_opened(link)` or
    /// `link_closed(link)`.
    Connect { link: LinkId, peer: NodeIdentity },
    /// Close the connection; the node has already forgotten it.
    Close { link: LinkId },
}

/// What the node tells the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterEvent {
    Membership(MembershipEvent),
    /// A peer link finished its handshake.
    LinkUp {
        link: LinkId,
        peer: NodeIdentity,
    },
    /// A peer link closed (by us, because of `reason`, or by the runtime).
    LinkDown {
        link: LinkId,
        reason: String,
    },
    /// A forwarded publish arrived from `from`.
    Forwarded {
        from: NodeId,
        payload: Vec<u8>,
    },
    /// A session hand-over message arrived from `from` ([`crate::handover::SessionMsg`]).
    Session {
        from: NodeId,
        payload: Vec<u8>,
    },
}

/// Counters for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub links_refused: u64,
    pub frames_malformed: u64,
    pub events_dropped: u64,
}

#[derive(Debug)]
struct Link {
    sync: RouteSync,
    read_buffer: Vec<u8>,
    /// Set for links we dialed, until the runtime reports them open.
    connecting: bool,
    /// A link whose handshake has not finished by then is closed (a silent or lossy peer).
    handshake_deadline: Instant,
    /// The member we dialed, for links we opened.
    dialed: Option<NodeId>,
}

/// One cluster node's protocol state.
pub struct ClusterNode {
    secret: Secret,
    membership: Membership,
    local: LocalRoutes,
    table: RemoteTable,
    links: BTreeMap<LinkId, Link>,
    next_link_id: u64,
    /// When to dial a member again after its link failed.
    redial_at: BTreeMap<NodeId, Instant>,
    link_retry: Duration,
    /// How long a link may take to authenticate.
    handshake_timeout: Duration,
    anti_entropy_period: Duration,
    next_anti_entropy: Instant,
    link_queue_frames_max: usize,
    nonces: SmallRng,
    datagrams: VecDeque<(SocketAddr, Vec<u8>)>,
    transmits: VecDeque<(LinkId, Vec<u8>)>,
    commands: VecDeque<LinkCommand>,
    events: VecDeque<ClusterEvent>,
    stats: NodeStats,
}

impl ClusterNode {
    /// `generation` is this boot's id; `seed` seeds foca's choices and link nonces (production
    /// passes a random seed, the simulation a printed one).
    pub fn new(
        config: &ClusterConfig,
        secret: Secret,
        generation: Generation,
        seed: u64,
        now: Instant,
    ) -> Self {
        let identity = NodeIdentity {
            node_id: NodeId(config.node_id),
            generation,
            gossip_addr: config.gossip_listen,
            peer_addr: config.peer_listen,
        };
        let membership = Membership::new(identity, config, secret.clone(), seed, now);
        let anti_entropy_period = Duration::from_millis(config.anti_entropy_period_ms);
        Self {
            secret,
            membership,
            local: LocalRoutes::new(identity.node_id, generation, config.op_log_len_max),
            table: RemoteTable::default(),
            links: BTreeMap::new(),
            next_link_id: 1,
            redial_at: BTreeMap::new(),
            link_retry: Duration::from_millis(config.link_retry_ms),
            handshake_timeout: 2 * anti_entropy_period,
            anti_entropy_period,
            next_anti_entropy: now + anti_entropy_period,
            link_queue_frames_max: config.link_queue_frames_max,
            nonces: SmallRng::seed_from_u64(seed ^ 0x5eed_11fe),
            datagrams: VecDeque::new(),
            transmits: VecDeque::new(),
            commands: VecDeque::new(),
            events: VecDeque::new(),
            stats: NodeStats::default(),
        }
    }

    pub fn identity(&self) -> NodeIdentity {
        *self.membership.identity()
    }

    /// Starts announcing to the seeds.
    pub fn join(&mut self, now: Instant) {
        self.membership.join(now);
        self.after_input(now);
    }

    pub fn handle_datagram(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) {
        self.membership.handle_datagram(from, datagram, now);
        self.after_input(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.membership.handle_timeout(now);
        if now >= self.next_anti_entropy {
            self.next_anti_entropy = now + self.anti_entropy_period;
            for link in self.links.values_mut() {
                link.sync.anti_entropy(&self.local);
            }
            self.ensure_links(now);
        }
        let stuck: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| !l.sync.is_up() && l.handshake_deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for link in stuck {
            self.close_link(link, "handshake timed out".into());
        }
        let due: Vec<NodeId> = self
            .redial_at
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| *id)
            .collect();
        for node_id in due {
            self.redial_at.remove(&node_id);
            if let Some(peer) = self.membership.member(node_id).copied() {
                self.dial(peer, now);
            }
        }
        self.after_input(now);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = self.next_anti_entropy;
        if let Some(at) = self.membership.poll_timeout() {
            next = next.min(at);
        }
        if let Some(at) = self.redial_at.values().min() {
            next = next.min(*at);
        }
        if let Some(at) = self
            .links
            .values()
            .filter(|l| !l.sync.is_up())
            .map(|l| l.handshake_deadline)
            .min()
        {
            next = next.min(at);
        }
        Some(next)
    }

    /// Drains membership output and turns edges into link and route actions.
    fn after_input(&mut self, now: Instant) {
        while let Some(datagram) = self.membership.poll_datagram() {
            self.datagrams.push_back(datagram);
        }
        while let Some(event) = self.membership.poll_event() {
            match &event {
                MembershipEvent::MemberUp(peer) => {
                    let peer = *peer;
                    if self.identity().node_id < peer.node_id && !self.has_link_to(peer.node_id) {
                        self.dial(peer, now);
                    }
                }
                MembershipEvent::MemberDown(peer) => {
                    self.table.drop_origin(peer.node_id, peer.generation);
                    self.redial_at.remove(&peer.node_id);
                    let node_id = peer.node_id;
                    self.close_links(|_, link| link_peer_id(link) == Some(node_id), "member down");
                }
                MembershipEvent::Rejoined(identity) => {
                    // Our old incarnation's links and routes are void everywhere: start over.
                    self.local.renew(identity.generation);
                    self.close_links(|_, _| true, "rejoined with a new generation");
                }
                MembershipEvent::DuplicateNodeId { .. }
                | MembershipEvent::SeedsUnreachable { .. } => {}
            }
            self.push_event(ClusterEvent::Membership(event));
        }
        self.flush_links();
    }

    fn push_event(&mut self, event: ClusterEvent) {
        if self.events.len() >= CLUSTER_EVENT_QUEUE_MAX {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(event);
    }

    /// The authenticated link to `node_id`, if one is up.
    fn link_to(&self, node_id: NodeId) -> Option<LinkId> {
        self.links
            .iter()
            .find(|(_, l)| link_peer_id(l) == Some(node_id))
            .map(|(id, _)| *id)
    }

    /// A link to `node_id` that is up or being dialed.
    fn has_link_to(&self, node_id: NodeId) -> bool {
        self.links
            .values()
            .any(|link| link_peer_id(link) == Some(node_id) || link.dialed == Some(node_id))
    }

    /// Links are reconciled like members: every member we should dial has a link, a dial in
    /// flight or a redial scheduled, whatever edges or failures happened before.
    fn ensure_links(&mut self, now: Instant) {
        let me = self.identity().node_id;
        let missing: Vec<NodeIdentity> = self
            .membership
            .members()
            .filter(|m| me < m.node_id)
            .filter(|m| !self.has_link_to(m.node_id) && !self.redial_at.contains_key(&m.node_id))
            .copied()
            .collect();
        for peer in missing {
            self.dial(peer, now);
        }
    }

    fn new_link(&mut self, dialed: Option<NodeId>, now: Instant) -> LinkId {
        let id = LinkId(self.next_link_id);
        self.next_link_id += 1;
        let nonce: u64 = self.nonces.random();
        let sync = RouteSync::new(
            self.identity(),
            nonce,
            self.link_queue_frames_max,
            self.anti_entropy_period,
        );
        self.links.insert(
            id,
            Link {
                sync,
                read_buffer: Vec::new(),
                connecting: dialed.is_some(),
                dialed,
                handshake_deadline: now + self.handshake_timeout,
            },
        );
        id
    }

    fn dial(&mut self, peer: NodeIdentity, _now: Instant) {
        if self.commands.len() >= LINK_COMMAND_QUEUE_MAX {
            return;
        }
        let link = self.new_link(Some(peer.node_id), _now);
        self.commands.push_back(LinkCommand::Connect { link, peer });
    }

    /// The runtime accepted an inbound connection.
    pub fn accept_link(&mut self, now: Instant) -> LinkId {
        let link = self.new_link(None, now);
        self.flush_link(link);
        link
    }

    /// An outbound connection from `LinkCommand::Connect` is open.
    pub fn link_opened(&mut self, link: LinkId, _now: Instant) {
        if let Some(l) = self.links.get_mut(&link) {
            l.connecting = false;
        }
        self.flush_link(link);
    }

    /// The runtime lost or failed a link. A member we dial is dialed again after `link_retry_ms`.
    pub fn link_closed(&mut self, link: LinkId, now: Instant) {
        let Some(removed) = self.links.remove(&link) else {
            return;
        };
        let peer = removed.sync.peer().map(|p| p.node_id).or(removed.dialed);
        self.push_event(ClusterEvent::LinkDown {
            link,
            reason: "closed by the runtime".into(),
        });
        if let Some(node_id) = peer {
            self.schedule_redial(node_id, now);
        }
    }

    fn schedule_redial(&mut self, node_id: NodeId, now: Instant) {
        if self.identity().node_id < node_id && self.membership.member(node_id).is_some() {
            self.redial_at.insert(node_id, now + self.link_retry);
        }
    }

    fn close_links(&mut self, which: impl Fn(LinkId, &Link) -> bool, reason: &str) {
        let ids: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(id, link)| which(**id, link))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.close_link(id, reason.to_string());
        }
    }

    fn close_link(&mut self, link: LinkId, reason: String) {
        if self.links.remove(&link).is_some() {
            tracing::info!(link = link.0, %reason, "peer link closed");
            if self.commands.len() < LINK_COMMAND_QUEUE_MAX {
                self.commands.push_back(LinkCommand::Close { link });
            }
            self.push_event(ClusterEvent::LinkDown { link, reason });
        }
    }

    /// Bytes read from a link's connection.
    pub fn handle_link_data(&mut self, link: LinkId, data: &[u8], now: Instant) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        // The buffer holds at most one incomplete frame; more means the peer lies about lengths
        // (check_frame already refuses announced lengths over the limit).
        if l.read_buffer.len() > LINK_READ_BUFFER_MAX {
            self.stats.frames_malformed += 1;
            self.close_link(link, "read buffer over its bound".into());
            return;
        }
        l.read_buffer.extend_from_slice(data);
        loop {
            let Some(l) = self.links.get_mut(&link) else {
                return;
            };
            let decoded = match codec::check_frame(&l.read_buffer) {
                Ok(FrameCheck::Incomplete { .. }) => break,
                Ok(FrameCheck::Complete { .. }) => codec::decode_frame(&l.read_buffer),
                Err(error) => Err(error),
            };
            match decoded {
                Ok(Some((frame, used))) => {
                    l.read_buffer.drain(..used);
                    let was_up = l.sync.is_up();
                    let result =
                        l.sync
                            .handle_frame(frame, &self.secret, &self.local, &mut self.table, now);
                    let became_up = !was_up && l.sync.is_up();
                    match result {
                        Ok(Some(payload)) => {
                            if let Some(from) = l.sync.peer().map(|p| p.node_id) {
                                self.push_event(match payload {
                                    LinkPayload::Forward(payload) => {
                                        ClusterEvent::Forwarded { from, payload }
                                    }
                                    LinkPayload::Session(payload) => {
                                        ClusterEvent::Session { from, payload }
                                    }
                                });
                            }
                        }
                        Ok(None) => {}
                        Err(error) => {
                            self.refuse(link, error);
                            return;
                        }
                    }
                    if became_up {
                        self.link_up(link);
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    self.malformed(link, error);
                    return;
                }
            }
        }
        self.flush_link(link);
    }

    fn refuse(&mut self, link: LinkId, error: SyncError) {
        self.stats.links_refused += 1;
        tracing::warn!(link = link.0, %error, "peer link refused");
        self.close_link(link, error.to_string());
    }

    fn malformed(&mut self, link: LinkId, error: CodecError) {
        self.stats.frames_malformed += 1;
        tracing::warn!(link = link.0, %error, "malformed peer frame");
        self.close_link(link, error.to_string());
    }

    /// A handshake finished: refuse a stale incarnation, and replace an older link to the peer.
    fn link_up(&mut self, link: LinkId) {
        let Some((peer, dialed)) = self
            .links
            .get(&link)
            .and_then(|l| l.sync.peer().map(|peer| (*peer, l.dialed)))
        else {
            return;
        };
        if dialed.is_some_and(|dialed| dialed != peer.node_id) {
            self.close_link(link, format!("dialed another node, {peer} answered"));
            return;
        }
        if let Some(known) = self.membership.member(peer.node_id) {
            if known.generation > peer.generation {
                self.close_link(link, format!("stale incarnation {peer}, member is {known}"));
                return;
            }
        }
        self.close_links(
            |id, l| id != link && link_peer_id(l) == Some(peer.node_id),
            "replaced by a newer link",
        );
        self.push_event(ClusterEvent::LinkUp { link, peer });
    }

    fn flush_link(&mut self, link: LinkId) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        if l.connecting {
            return;
        }
        while let Some(frame) = l.sync.poll_frame() {
            let mut bytes = Vec::new();
            match codec::encode_frame(&frame, &mut bytes) {
                Ok(()) => self.transmits.push_back((link, bytes)),
                Err(error) => tracing::warn!(link = link.0, %error, "frame not sent"),
            }
        }
    }

    fn flush_links(&mut self) {
        let ids: Vec<LinkId> = self.links.keys().copied().collect();
        for id in ids {
            self.flush_link(id);
        }
    }

    /// One more local subscriber for `entry`; a 0 -> 1 change goes to every peer.
    pub fn subscribe(&mut self, entry: RouteEntry) -> Result<(), LocalRoutesError> {
        if let Some(op) = self.local.subscribe(entry)? {
            for link in self.links.values_mut() {
                link.sync.on_local_op(&op);
            }
            self.flush_links();
        }
        Ok(())
    }

    /// One local subscriber fewer; a 1 -> 0 change goes to every peer.
    pub fn unsubscribe(&mut self, entry: &RouteEntry) -> Result<(), LocalRoutesError> {
        if let Some(op) = self.local.unsubscribe(entry)? {
            for link in self.links.values_mut() {
                link.sync.on_local_op(&op);
            }
            self.flush_links();
        }
        Ok(())
    }

    /// Queues a publish (opaque bytes) for peer `to`. Hands the payload back when there is no
    /// link up to `to` or its queue is full; the caller applies the QoS policy (drop and count a
    /// QoS 0 message, hold a QoS 1/2 one).
    pub fn forward(&mut self, to: NodeId, payload: Vec<u8>) -> Result<(), Vec<u8>> {
        self.queue_to(to, payload, RouteSync::queue_forward)
    }

    /// Queues a session hand-over message for peer `to`; hands it back when no link to `to` is
    /// up or its queue is full (the claim it belongs to then times out).
    pub fn send_session(&mut self, to: NodeId, payload: Vec<u8>) -> Result<(), Vec<u8>> {
        self.queue_to(to, payload, RouteSync::queue_session)
    }

    fn queue_to(
        &mut self,
        to: NodeId,
        payload: Vec<u8>,
        queue: fn(&mut RouteSync, Vec<u8>) -> Result<(), Vec<u8>>,
    ) -> Result<(), Vec<u8>> {
        let Some(id) = self.link_to(to) else {
            return Err(payload);
        };
        let result = match self.links.get_mut(&id) {
            Some(link) => queue(&mut link.sync, payload),
            None => Err(payload),
        };
        self.flush_link(id);
        result
    }

    /// Counters and queue depth of every authenticated link.
    pub fn link_stats(&self) -> impl Iterator<Item = (NodeId, &LinkStats, usize)> {
        self.links.values().filter_map(|l| {
            l.sync
                .peer()
                .map(|peer| (peer.node_id, l.sync.stats(), l.sync.queue_len()))
        })
    }

    pub fn poll_datagram(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.datagrams.pop_front()
    }

    pub fn poll_transmit(&mut self) -> Option<(LinkId, Vec<u8>)> {
        self.transmits.pop_front()
    }

    pub fn poll_command(&mut self) -> Option<LinkCommand> {
        self.commands.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<ClusterEvent> {
        self.events.pop_front()
    }

    /// Peer nodes with a plain subscription matching `topic`.
    pub fn interested_nodes(&self, topic: &str) -> smallvec::SmallVec<[NodeId; 8]> {
        self.table.interested_nodes(topic)
    }

    /// Shared groups matching `topic`, with the peer nodes that have members.
    pub fn shared_groups(&self, topic: &str) -> Vec<SharedGroupNodes> {
        self.table.shared_groups(topic)
    }

    pub fn local_summary(&self) -> RouteSummary {
        self.local.summary()
    }

    pub fn remote_summary(&self, origin: NodeId) -> Option<RouteSummary> {
        self.table.summary(origin)
    }

    pub fn remote_table(&self) -> &RemoteTable {
        &self.table
    }

    /// Makes [`ClusterNode::poll_route_changes`] report every change of the remote table (the
    /// broker mirrors it into each shard so publishes match remote interest without a lock).
    pub fn record_route_changes(&mut self) {
        self.table.record_applied();
    }

    /// Remote route changes applied since the last call: `(origin, Add|Remove)`, oldest first.
    pub fn poll_route_changes(&mut self) -> Vec<(NodeId, crate::routes::RouteChange)> {
        self.table.take_applied()
    }

    pub fn members(&self) -> impl Iterator<Item = &NodeIdentity> {
        self.membership.members()
    }

    pub fn membership_stats(&self) -> &MembershipStats {
        self.membership.stats()
    }

    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// Links whose handshake finished.
    pub fn links_up(&self) -> impl Iterator<Item = (LinkId, &NodeIdentity)> {
        self.links
            .iter()
            .filter_map(|(id, link)| link.sync.peer().map(|peer| (*id, peer)))
    }
}

fn link_peer_id(link: &Link) -> Option<NodeId> {
    link.sync.peer().map(|peer| peer.node_id)
}
