//! The runtime seam of clustering: shard 0 drives `cluster_gossip::ClusterNode` over a glommio
//! UDP socket (SWIM gossip), TCP peer links (route sync and forwarded publishes) and a timer, and
//! connects it to the engines.
//!
//! - **Out of the engines** (end of every shard-0 turn, [`ClusterRuntime::after_turn`]): the
//!   node-level export edges (`ShardState::take_cluster_exports`) become
//!   `ClusterNode::subscribe/unsubscribe`; the publishes other shards and shard 0 matched against
//!   peer nodes (`take_cluster_forwards`) are encoded once each ([`forward`]) and appended to one
//!   batch per destination node, sent as one `Forward` frame per node per turn.
//! - **Into the engines** ([`ClusterRuntime::pump`], after every input to the node): remote route
//!   changes go to shard 0's engine, which installs them in its remote trie and passes them to
//!   every other shard (`ShardMsg::RemoteRoute`); forwarded batches are decoded and published on
//!   shard 0 with `Engine::publish_from_peer` (local subscribers and retained store only, never
//!   forwarded again).
//! - **Bounds**: a link's unwritten bytes ([`links::LinkIo`]) are bounded. Over
//!   [`LINK_QOS0_MAX_BYTES`] new QoS 0 forwards to that peer are dropped; QoS 1/2 forwards are
//!   held until [`LINK_OUT_MAX_BYTES`], then dropped too; route frames over the hard bound are
//!   dropped and repaired by anti-entropy. Every drop is counted per peer and reason
//!   (`ringmq_cluster_forward_dropped_total`). Outgoing datagrams wait in a queue of
//!   [`UDP_OUT_MAX`], oldest dropped (SWIM tolerates loss).
//!
//! Nothing here runs on shards other than 0, and nothing here is on a client's data path except
//! the per-turn hand-over of forwards.

pub mod forward;
pub mod handover;
mod links;
mod metrics;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cluster_gossip::{
    ClaimBook, ClaimEvent, ClusterConfig, ClusterEvent, ClusterNode, Generation, LinkCommand,
    LinkId, MembershipEvent, NodeId, RouteChange, RouteEntry, Secret, SessionMsg,
};
use engine::message::{ClaimRequest, ClaimToken, GroupPick, PeerNode};
use engine::Engine;
use tracing::{debug, error, info, warn};
use wire::QoS;

use crate::runtime::ShardCtx;

pub use links::LinkIo;

/// Above this many unwritten bytes on a peer link, new QoS 0 forwards to that peer are dropped.
pub const LINK_QOS0_MAX_BYTES: usize = 4 * 1024 * 1024;
/// A peer link's hard bound on unwritten bytes: over it QoS 1/2 forwards and route frames are
/// dropped too (route frames are repaired by anti-entropy once the link drains).
pub const LINK_OUT_MAX_BYTES: usize = 16 * 1024 * 1024;
const _: () = assert!(LINK_QOS0_MAX_BYTES < LINK_OUT_MAX_BYTES);
const _: () = assert!(forward::FORWARD_BATCH_MAX_BYTES < LINK_QOS0_MAX_BYTES);
/// Gossip datagrams waiting for the UDP socket; beyond it the oldest is dropped.
pub const UDP_OUT_MAX: usize = 1024;
/// Longest the driver sleeps without checking the node's deadline.
const DRIVER_TICK_MAX: Duration = Duration::from_millis(100);
/// A dial that has not connected by then fails (the node redials after `link_retry_ms`).
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// What `[cluster]` gives the runtime: the section and its loaded secret.
#[derive(Debug, Clone)]
pub struct ClusterSetup {
    pub config: ClusterConfig,
    pub secret: Secret,
}

/// Turns cluster routing on for shard `id`'s engine and, on shard 0, binds the cluster's
/// sockets. A bind failure is logged and the broker serves local clients alone.
pub fn start_on_shard(
    id: engine::message::ShardId,
    setup: Option<ClusterSetup>,
    engine: &mut Engine,
) -> Option<Rc<ClusterRuntime>> {
    let setup = setup?;
    let node_id = setup.config.node_id;
    if id != 0 {
        // Remote routes only ever come from shard 0, so this costs nothing if shard 0 fails.
        // (If it does, connects still claim their ids; shard 0's engine answers them, as won.)
        engine.state.enable_cluster(node_id);
        return None;
    }
    match ClusterRuntime::bind(setup, Instant::now()) {
        Ok(runtime) => {
            engine.state.enable_cluster(node_id);
            Some(runtime)
        }
        Err(error) => {
            error!(%error, "cluster disabled: serving local clients alone");
            None
        }
    }
}

/// A one-shot wake-up flag for one task (no cross-thread use).
#[derive(Default)]
pub struct Notify {
    set: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Notify {
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Waits until [`Notify::notify`] was called since the last wait returned.
    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// Why a forward was not sent, as the drop metric's `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ForwardDrop {
    /// No link to the destination is up (it is joining, or down and its routes are going).
    NoLink,
    /// The link's unwritten bytes are over its bound for this QoS.
    LinkFull,
    /// The encoded message is over `FORWARD_RECORD_MAX_BYTES`.
    TooLarge,
    /// A batch from a peer could not be read.
    Malformed,
}

impl ForwardDrop {
    pub fn label(self) -> &'static str {
        match self {
            ForwardDrop::NoLink => "no_link",
            ForwardDrop::LinkFull => "link_full",
            ForwardDrop::TooLarge => "too_large",
            ForwardDrop::Malformed => "malformed",
        }
    }
}

/// Counters of the cluster runtime (shard 0 only; plain integers, exported once a second).
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Messages and bytes forwarded to each peer, and received from it.
    pub forwarded_out: BTreeMap<NodeId, (u64, u64)>,
    pub forwarded_in: BTreeMap<NodeId, (u64, u64)>,
    /// Forwards dropped, by peer (0 for "unknown"), reason and QoS.
    pub dropped: BTreeMap<(NodeId, ForwardDrop, u8), u64>,
    pub links_up: u64,
    pub links_down: u64,
    pub members_down: u64,
    pub datagrams_dropped: u64,
    pub route_changes_applied: u64,
    /// Session hand-over: messages from peers that could not be read, images that could not
    /// be read (the claim went on without them) or written (too large; answered as no
    /// session), queued messages left out of images for size, and hand-over messages that
    /// found no link up (the claim they belong to times out or ends on the peer's down).
    pub session_msgs_malformed: u64,
    pub images_malformed: u64,
    pub images_too_large: u64,
    pub image_queued_dropped: u64,
    pub session_sends_failed: u64,
}

/// Forwards for one destination node built up during a turn.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    messages: u64,
    /// Highest QoS in the batch, for the drop metric if the whole batch is refused.
    qos: u8,
}

/// I/O state beside the node: links' write buffers, the datagram queue, this turn's batches.
#[derive(Default)]
struct Io {
    links: BTreeMap<LinkId, Rc<LinkIo>>,
    udp_out: VecDeque<(SocketAddr, Vec<u8>)>,
    batches: BTreeMap<NodeId, Batch>,
    scratch: BytesMut,
}

/// Shard 0's cluster driver. Every borrow of its cells is synchronous (never across an await).
pub struct ClusterRuntime {
    node: RefCell<ClusterNode>,
    /// Session claims of this node's connects and answers owed to peers' (`handover`).
    claims: RefCell<ClaimBook<ClaimToken>>,
    io: RefCell<Io>,
    stats: RefCell<ClusterStats>,
    /// Wakes the driver task: the node has new input or output.
    driver: Notify,
    /// Wakes the UDP sender.
    udp_ready: Notify,
    udp: glommio::net::UdpSocket,
    listener: glommio::net::TcpListener,
    node_id: NodeId,
    /// Every peer `sys_view` has shown, so a peer that left still gets its `down` (its retained
    /// `alive` would otherwise stay). Bounded by the node ids ever seen in this process.
    sys_peers: RefCell<BTreeSet<NodeId>>,
}

impl ClusterRuntime {
    /// Binds the gossip socket and the peer listener. An error is logged by the caller, and the
    /// broker serves its local clients alone.
    pub fn bind(setup: ClusterSetup, now: Instant) -> std::io::Result<Rc<ClusterRuntime>> {
        let config = &setup.config;
        let udp = glommio::net::UdpSocket::bind(config.gossip_listen)
            .map_err(|e| annotate(e, "gossip_listen", config.gossip_listen))?;
        let listener = glommio::net::TcpListener::bind(config.peer_listen)
            .map_err(|e| annotate(e, "peer_listen", config.peer_listen))?;
        // The boot id: a restarted process is a new incarnation whose old routes die with it.
        let generation = Generation(
            forward::unix_time_us()
                .wrapping_mul(1000)
                .max(1)
                .wrapping_add(u64::from(std::process::id())),
        );
        let seed = generation.0 ^ 0x9e37_79b9_7f4a_7c15;
        let mut node = ClusterNode::new(config, setup.secret.clone(), generation, seed, now);
        node.record_route_changes();
        info!(
            node_id = config.node_id,
            generation = generation.0,
            gossip = %config.gossip_listen,
            peer = %config.peer_listen,
            seeds = ?config.seeds,
            "cluster node starting"
        );
        let claims = ClaimBook::new(
            NodeId(config.node_id),
            Duration::from_millis(config.takeover_timeout_ms),
        );
        Ok(Rc::new(ClusterRuntime {
            node: RefCell::new(node),
            claims: RefCell::new(claims),
            io: RefCell::new(Io::default()),
            stats: RefCell::new(ClusterStats::default()),
            driver: Notify::default(),
            udp_ready: Notify::default(),
            udp,
            listener,
            node_id: NodeId(config.node_id),
            sys_peers: RefCell::new(BTreeSet::new()),
        }))
    }

    /// The node's view of the cluster as `$SYS` topics and values (published by shard 0's
    /// `$SYS` loop beside the broker's own figures; never forwarded to other nodes):
    /// `$SYS/broker/cluster/node_id`, `.../members/alive` (this node and the peers SWIM sees
    /// alive), `.../links/up`, and per peer ever seen `.../nodes/<id>/state` (`alive` or `down`),
    /// `.../nodes/<id>/link` (`up` or `down`), `.../nodes/<id>/routes` (its routes held here)
    /// and `.../nodes/<id>/forwarded/sent|received` (messages).
    pub fn sys_view(&self) -> Vec<(String, String)> {
        let node = self.node.borrow();
        let stats = self.stats.borrow();
        let alive: BTreeSet<NodeId> = node.members().map(|m| m.node_id).collect();
        let linked: BTreeSet<NodeId> = node.links_up().map(|(_, p)| p.node_id).collect();
        let mut peers = self.sys_peers.borrow_mut();
        peers.extend(alive.union(&linked).copied());
        peers.extend(node.remote_table().origins().map(|o| o.summary().origin));
        peers.remove(&self.node_id);
        let base = "$SYS/broker/cluster";
        let mut view = vec![
            (format!("{base}/node_id"), self.node_id.0.to_string()),
            (
                format!("{base}/members/alive"),
                (alive.iter().filter(|n| **n != self.node_id).count() + 1).to_string(),
            ),
            (format!("{base}/links/up"), linked.len().to_string()),
        ];
        for &peer in peers.iter() {
            let at = format!("{base}/nodes/{}", peer.0);
            let state = if alive.contains(&peer) {
                "alive"
            } else {
                "down"
            };
            let link = if linked.contains(&peer) { "up" } else { "down" };
            let routes = node.remote_table().get(peer).map_or(0, |o| o.len());
            let sent = stats.forwarded_out.get(&peer).map_or(0, |(m, _)| *m);
            let received = stats.forwarded_in.get(&peer).map_or(0, |(m, _)| *m);
            view.push((format!("{at}/state"), state.to_string()));
            view.push((format!("{at}/link"), link.to_string()));
            view.push((format!("{at}/routes"), routes.to_string()));
            view.push((format!("{at}/forwarded/sent"), sent.to_string()));
            view.push((format!("{at}/forwarded/received"), received.to_string()));
        }
        view
    }

    /// Spawns the driver, gossip and accept tasks on shard 0.
    pub fn spawn(self: &Rc<Self>, ctx: &Rc<ShardCtx>) {
        self.node.borrow_mut().join(Instant::now());
        glommio::spawn_local(driver_loop(self.clone(), ctx.clone())).detach();
        glommio::spawn_local(udp_recv_loop(self.clone(), ctx.clone())).detach();
        glommio::spawn_local(udp_send_loop(self.clone())).detach();
        glommio::spawn_local(links::accept_loop(self.clone(), ctx.clone())).detach();
        glommio::spawn_local(metrics::metrics_loop(self.clone())).detach();
    }

    /// End of a shard-0 turn: export edges and this turn's forwards go into the node and the
    /// per-node batches, one `Forward` frame per destination. Runs inside the turn (the engine
    /// is borrowed by the caller), so it only touches the node and the I/O buffers.
    /// True if the engine got work (a claim that ended at once resumes its connection).
    pub fn after_turn(&self, engine: &mut Engine, now: Instant) -> bool {
        let exports = engine.state.take_cluster_exports();
        let forwards = engine.state.take_cluster_forwards();
        let claims = engine.state.take_cluster_claims();
        if exports.is_empty() && forwards.is_empty() && claims.is_empty() {
            return false;
        }
        let mut node = self.node.borrow_mut();
        let claimed = !claims.is_empty();
        if claimed {
            self.start_claims(&mut node, engine, claims, now);
        }
        for export in exports {
            let entry = match &export.group {
                None => RouteEntry::Filter(export.filter.to_string()),
                Some(group) => RouteEntry::Shared {
                    group: group.to_string(),
                    filter: export.filter.to_string(),
                },
            };
            let result = if export.present {
                node.subscribe(entry)
            } else {
                node.unsubscribe(&entry)
            };
            if let Err(error) = result {
                warn!(%error, filter = %export.filter, "route not exported");
            }
        }
        if !forwards.is_empty() {
            let peers: Vec<(NodeId, LinkId)> =
                node.links_up().map(|(link, p)| (p.node_id, link)).collect();
            let mut io = self.io.borrow_mut();
            let mut stats = self.stats.borrow_mut();
            let now_us = forward::unix_time_us();
            for f in &forwards {
                let qos = f.message.publish.qos;
                let mut scratch = std::mem::take(&mut io.scratch);
                let encoded = forward::encode_publish(&f.message, now, now_us, &mut scratch);
                let origin_us = match encoded {
                    Ok(origin_us) => origin_us,
                    Err(error) => {
                        debug!(%error, "publish not forwarded");
                        *stats
                            .dropped
                            .entry((NodeId(0), ForwardDrop::TooLarge, qos as u8))
                            .or_default() += 1;
                        io.scratch = scratch;
                        continue;
                    }
                };
                let wanted = f.nodes.iter().map(|n| NodeId(n.0));
                let everyone = peers.iter().map(|(n, _)| *n);
                let mut targets: smallvec::SmallVec<[NodeId; 8]> = if f.all_nodes {
                    everyone.collect()
                } else {
                    wanted.collect()
                };
                for (node, _) in &f.shared {
                    if !targets.contains(&NodeId(node.0)) {
                        targets.push(NodeId(node.0));
                    }
                }
                for to in targets {
                    let groups: smallvec::SmallVec<[&GroupPick; 2]> = f
                        .shared
                        .iter()
                        .filter(|(n, _)| n.0 == to.0)
                        .map(|(_, g)| g)
                        .collect();
                    let link = peers.iter().find(|(n, _)| *n == to).map(|(_, l)| *l);
                    let verdict = match link.and_then(|l| io.links.get(&l)) {
                        None => Err(ForwardDrop::NoLink),
                        Some(l) => admit(l.unwritten(), qos),
                    };
                    if let Err(reason) = verdict {
                        *stats.dropped.entry((to, reason, qos as u8)).or_default() += 1;
                        continue;
                    }
                    let group_bytes: usize =
                        groups.iter().map(|(f, g)| 4 + f.len() + g.len()).sum();
                    let record_len = forward::RECORD_HEADER_BYTES + group_bytes + scratch.len();
                    let batch = io.batches.entry(to).or_default();
                    if batch.bytes.len() + record_len > forward::FORWARD_BATCH_MAX_BYTES {
                        let full = std::mem::take(batch);
                        send_batch(&mut node, &mut stats, to, full);
                    }
                    let batch = io.batches.entry(to).or_default();
                    let flags = if f.retained_sync {
                        forward::FLAG_RETAINED_SYNC
                    } else {
                        0
                    };
                    let appended = forward::append_record(
                        &mut batch.bytes,
                        origin_us,
                        flags,
                        &groups,
                        &scratch,
                    );
                    match appended {
                        Ok(()) => {
                            batch.messages += 1;
                            batch.qos = batch.qos.max(qos as u8);
                        }
                        Err(_) => {
                            *stats
                                .dropped
                                .entry((to, ForwardDrop::TooLarge, qos as u8))
                                .or_default() += 1;
                        }
                    }
                }
                io.scratch = scratch;
            }
            let batches = std::mem::take(&mut io.batches);
            for (to, batch) in batches {
                send_batch(&mut node, &mut stats, to, batch);
            }
        }
        drop(node);
        self.driver.notify();
        claimed
    }

    /// This turn's claims and answers from the engine into the claim book.
    fn start_claims(
        &self,
        node: &mut ClusterNode,
        engine: &mut Engine,
        requests: Vec<ClaimRequest>,
        now: Instant,
    ) {
        let peers: Vec<NodeId> = node.links_up().map(|(_, p)| p.node_id).collect();
        let now_us = forward::unix_time_us();
        let mut events = Vec::new();
        for request in requests {
            match request {
                ClaimRequest::Start {
                    token,
                    client_id,
                    clean_start,
                } => events.extend(self.claims.borrow_mut().start(
                    token,
                    client_id.to_string(),
                    clean_start,
                    &peers,
                    now,
                    now_us,
                )),
                ClaimRequest::Answer(answer) => {
                    let image = answer.image.and_then(|image| {
                        let mut bytes = Vec::new();
                        let mut stats = self.stats.borrow_mut();
                        match handover::encode(&image, now, now_us, &mut bytes) {
                            Ok(dropped) => {
                                stats.image_queued_dropped += dropped.queued_dropped;
                                if dropped.queued_dropped > 0 {
                                    warn!(
                                        client_id = %answer.client_id,
                                        dropped = dropped.queued_dropped,
                                        "session handed over without its newest queued messages: the image is over the peer frame limit"
                                    );
                                }
                                Some(bytes)
                            }
                            Err(error) => {
                                stats.images_too_large += 1;
                                warn!(client_id = %answer.client_id, %error, "session not handed over");
                                None
                            }
                        }
                    });
                    events.push(self.claims.borrow_mut().answer(
                        NodeId(answer.to.0),
                        answer.claim,
                        answer.client_id.to_string(),
                        image,
                    ));
                }
            }
        }
        self.claim_events(node, engine, events, now);
    }

    /// Carries out what the claim book asked for.
    fn claim_events(
        &self,
        node: &mut ClusterNode,
        engine: &mut Engine,
        events: Vec<ClaimEvent<ClaimToken>>,
        now: Instant,
    ) {
        let now_us = forward::unix_time_us();
        for event in events {
            match event {
                ClaimEvent::Send { to, msg } => {
                    let sent = match msg.encode() {
                        Ok(bytes) => node.send_session(to, bytes).is_ok(),
                        Err(error) => {
                            warn!(%error, "session message not sent");
                            false
                        }
                    };
                    if !sent {
                        self.stats.borrow_mut().session_sends_failed += 1;
                    }
                }
                ClaimEvent::PeerClaim {
                    from,
                    claim,
                    client_id,
                    clean_start,
                } => {
                    debug!(peer = %from, %client_id, "peer claims a client id");
                    engine.state.peer_claim(
                        PeerNode(from.0),
                        claim,
                        Arc::from(client_id),
                        clean_start,
                        now,
                    );
                }
                ClaimEvent::Done {
                    token,
                    client_id,
                    outcome,
                } => {
                    if !outcome.timed_out.is_empty() {
                        warn!(
                            %client_id,
                            peers = ?outcome.timed_out,
                            "session claim timed out; the connect goes on without those peers"
                        );
                    }
                    let images = self.decode_images(&client_id, outcome.images, now, now_us);
                    engine.claim_done(token, outcome.won, images, now);
                }
                ClaimEvent::Orphan {
                    from,
                    client_id,
                    image,
                } => {
                    debug!(peer = %from, %client_id, "session arrived after its claim ended; kept offline");
                    for image in self.decode_images(&client_id, vec![(from, image)], now, now_us) {
                        engine.install_orphan(image, now);
                    }
                }
            }
        }
        // What went into the node's link queues goes out with the driver's next pump.
        self.driver.notify();
    }

    fn decode_images(
        &self,
        client_id: &str,
        images: Vec<(NodeId, Vec<u8>)>,
        now: Instant,
        now_us: u64,
    ) -> Vec<engine::state::SessionImage> {
        images
            .into_iter()
            .filter_map(
                |(from, bytes)| match handover::decode(client_id, &bytes, now, now_us) {
                    Ok(image) => Some(image),
                    Err(error) => {
                        self.stats.borrow_mut().images_malformed += 1;
                        warn!(peer = %from, %client_id, %error, "session image unreadable; dropped");
                        None
                    }
                },
            )
            .collect()
    }

    /// Ends claims whose deadline passed and claims waiting on `down` peers. True if the
    /// engine got work.
    fn claims_due(&self, ctx: &Rc<ShardCtx>, down: &[NodeId], now: Instant) -> bool {
        let mut events = Vec::new();
        {
            let mut book = self.claims.borrow_mut();
            for peer in down {
                events.extend(book.peer_down(*peer));
            }
            if book.poll_timeout().is_some_and(|at| at <= now) {
                events.extend(book.handle_timeout(now));
            }
        }
        self.run_claim_events(ctx, events, now)
    }

    /// [`ClusterRuntime::claim_events`] outside a turn (borrows the engine); true if there were
    /// any (the engine got work).
    fn run_claim_events(
        &self,
        ctx: &Rc<ShardCtx>,
        events: Vec<ClaimEvent<ClaimToken>>,
        now: Instant,
    ) -> bool {
        if events.is_empty() {
            return false;
        }
        let mut node = self.node.borrow_mut();
        let mut engine = ctx.engine.borrow_mut();
        self.claim_events(&mut node, &mut engine, events, now);
        true
    }

    /// Drains everything the node produced: datagrams, link commands and bytes, events, remote
    /// route changes. Must not run inside a shard turn (it borrows the engine).
    fn pump(self: &Rc<Self>, ctx: &Rc<ShardCtx>) {
        let now = Instant::now();
        let mut events = Vec::new();
        let changes;
        {
            let mut node = self.node.borrow_mut();
            let mut io = self.io.borrow_mut();
            let mut datagrams = false;
            while let Some(datagram) = node.poll_datagram() {
                if io.udp_out.len() >= UDP_OUT_MAX {
                    io.udp_out.pop_front();
                    self.stats.borrow_mut().datagrams_dropped += 1;
                }
                io.udp_out.push_back(datagram);
                datagrams = true;
            }
            if datagrams {
                self.udp_ready.notify();
            }
            while let Some(command) = node.poll_command() {
                match command {
                    LinkCommand::Connect { link, peer } => {
                        debug!(link = link.0, peer = %peer, "dialing peer");
                        glommio::spawn_local(links::dial(
                            self.clone(),
                            ctx.clone(),
                            link,
                            peer.peer_addr,
                        ))
                        .detach();
                    }
                    LinkCommand::Close { link } => {
                        if let Some(l) = io.links.remove(&link) {
                            l.close();
                        }
                    }
                }
            }
            while let Some((link, bytes)) = node.poll_transmit() {
                if let Some(l) = io.links.get(&link) {
                    if l.unwritten() + bytes.len() > LINK_OUT_MAX_BYTES {
                        // Only a stalled peer gets here: route frames are repaired by the
                        // digest check once it drains, forwards were admitted below the bound.
                        *self
                            .stats
                            .borrow_mut()
                            .dropped
                            .entry((l.peer().unwrap_or(NodeId(0)), ForwardDrop::LinkFull, 0))
                            .or_default() += 1;
                        continue;
                    }
                    l.push(&bytes);
                }
            }
            while let Some(event) = node.poll_event() {
                events.push(event);
            }
            changes = node.poll_route_changes();
        }
        let mut touched_engine = false;
        if !changes.is_empty() {
            let mut engine = ctx.engine.borrow_mut();
            let mut stats = self.stats.borrow_mut();
            for (origin, change) in changes {
                let present = matches!(change, RouteChange::Add(_));
                let (filter, group) = match change.entry() {
                    RouteEntry::Filter(filter) => (filter.as_str().into(), None),
                    RouteEntry::Shared { group, filter } => {
                        (filter.as_str().into(), Some(group.as_str().into()))
                    }
                };
                stats.route_changes_applied += 1;
                engine
                    .state
                    .apply_remote_route(PeerNode(origin.0), filter, group, present);
            }
            touched_engine = true;
        }
        let mut down = Vec::new();
        for event in events {
            if let ClusterEvent::Membership(MembershipEvent::MemberDown(peer)) = &event {
                down.push(peer.node_id);
            }
            touched_engine |= self.handle_event(ctx, event, now, &mut down);
        }
        touched_engine |= self.claims_due(ctx, &down, now);
        if touched_engine {
            ctx.kick();
        }
    }

    /// Logs and counts one node event; a forwarded batch goes to the engine. True if the engine
    /// got work.
    fn handle_event(
        &self,
        ctx: &Rc<ShardCtx>,
        event: ClusterEvent,
        now: Instant,
        down: &mut Vec<NodeId>,
    ) -> bool {
        match event {
            ClusterEvent::Forwarded { from, payload } => {
                let len = payload.len() as u64;
                let mut records = Vec::new();
                let result = forward::decode_batch(
                    Bytes::from(payload),
                    forward::unix_time_us(),
                    &mut records,
                );
                let mut stats = self.stats.borrow_mut();
                let entry = stats.forwarded_in.entry(from).or_default();
                entry.0 += records.len() as u64;
                entry.1 += len;
                if let Err(error) = result {
                    warn!(peer = %from, %error, "forwarded batch cut short");
                    *stats
                        .dropped
                        .entry((from, ForwardDrop::Malformed, 0))
                        .or_default() += 1;
                }
                drop(stats);
                let mut engine = ctx.engine.borrow_mut();
                for record in records {
                    engine.publish_from_peer(
                        record.publish,
                        record.origin_age,
                        &record.groups,
                        record.retained_sync,
                        now,
                    );
                }
                true
            }
            ClusterEvent::LinkUp { link, peer } => {
                self.stats.borrow_mut().links_up += 1;
                if let Some(l) = self.io.borrow().links.get(&link) {
                    l.set_peer(peer.node_id);
                }
                // The peer may have joined after our retained messages were published: hand
                // it the set (it keeps the newer of each topic). Sent at the end of the next turn.
                let retained = ctx
                    .engine
                    .borrow_mut()
                    .state
                    .sync_retained_to(PeerNode(peer.node_id.0));
                info!(link = link.0, peer = %peer, retained, "peer link up");
                retained > 0
            }
            ClusterEvent::LinkDown { link, reason } => {
                self.stats.borrow_mut().links_down += 1;
                if let Some(l) = self.io.borrow_mut().links.remove(&link) {
                    // Claims waiting on this peer end without it: its answer cannot come.
                    down.extend(l.peer());
                    l.close();
                }
                debug!(link = link.0, %reason, "peer link down");
                false
            }
            ClusterEvent::Membership(event) => {
                self.log_membership(event);
                false
            }
            ClusterEvent::Session { from, payload } => {
                let msg = match SessionMsg::decode(&payload) {
                    Ok(msg) => msg,
                    Err(error) => {
                        self.stats.borrow_mut().session_msgs_malformed += 1;
                        warn!(peer = %from, %error, "session hand-over message unreadable");
                        return false;
                    }
                };
                let events = self.claims.borrow_mut().handle(from, msg);
                self.run_claim_events(ctx, events, now)
            }
        }
    }

    fn log_membership(&self, event: MembershipEvent) {
        match event {
            // The membership driver logs up/down edges itself.
            MembershipEvent::MemberUp(peer) => debug!(member = %peer, "cluster member up"),
            MembershipEvent::MemberDown(peer) => {
                self.stats.borrow_mut().members_down += 1;
                debug!(member = %peer, "cluster member down; its routes are dropped")
            }
            MembershipEvent::DuplicateNodeId { node_id, addrs } => error!(
                %node_id,
                addrs = ?addrs,
                "another live node uses this node_id; give every node a unique [cluster] node_id"
            ),
            MembershipEvent::Rejoined(identity) => warn!(
                identity = %identity,
                "the cluster had declared this node down; rejoined with a new generation"
            ),
            MembershipEvent::SeedsUnreachable { seeds, attempts } => warn!(
                seeds = ?seeds,
                attempts,
                "no cluster seed answers; serving local clients alone until one does"
            ),
        }
    }

    fn register_link(&self, link: LinkId, io: Rc<LinkIo>) {
        self.io.borrow_mut().links.insert(link, io);
    }

    fn link_io(&self, link: LinkId) -> Option<Rc<LinkIo>> {
        self.io.borrow().links.get(&link).cloned()
    }

    fn forget_link(&self, link: LinkId) -> bool {
        self.io.borrow_mut().links.remove(&link).is_some()
    }
}

/// The overflow policy of a peer link for one forward.
fn admit(unwritten: usize, qos: QoS) -> Result<(), ForwardDrop> {
    let bound = match qos {
        QoS::AtMostOnce => LINK_QOS0_MAX_BYTES,
        QoS::AtLeastOnce | QoS::ExactlyOnce => LINK_OUT_MAX_BYTES,
    };
    if unwritten > bound {
        Err(ForwardDrop::LinkFull)
    } else {
        Ok(())
    }
}

fn send_batch(node: &mut ClusterNode, stats: &mut ClusterStats, to: NodeId, batch: Batch) {
    if batch.bytes.is_empty() {
        return;
    }
    let len = batch.bytes.len() as u64;
    match node.forward(to, batch.bytes) {
        Ok(()) => {
            let entry = stats.forwarded_out.entry(to).or_default();
            entry.0 += batch.messages;
            entry.1 += len;
        }
        Err(_) => {
            // No link up, or its frame queue is full: the node's own bound.
            *stats
                .dropped
                .entry((to, ForwardDrop::LinkFull, batch.qos))
                .or_default() += batch.messages;
        }
    }
}

fn annotate(error: glommio::GlommioError<()>, key: &str, addr: SocketAddr) -> std::io::Error {
    std::io::Error::other(format!("[cluster] {key} = {addr}: cannot bind: {error}"))
}

/// Runs the node's timers and drains its output whenever anything woke it.
async fn driver_loop(rt: Rc<ClusterRuntime>, ctx: Rc<ShardCtx>) {
    loop {
        let now = Instant::now();
        let due = rt.node.borrow().poll_timeout();
        if due.is_some_and(|at| at <= now) {
            rt.node.borrow_mut().handle_timeout(now);
        }
        rt.pump(&ctx);
        let node_due = rt.node.borrow().poll_timeout();
        let claim_due = rt.claims.borrow().poll_timeout();
        let wait = node_due
            .into_iter()
            .chain(claim_due)
            .min()
            .map_or(DRIVER_TICK_MAX, |at| {
                at.saturating_duration_since(Instant::now())
            })
            .min(DRIVER_TICK_MAX)
            .max(Duration::from_millis(1));
        futures_lite::future::or(rt.driver.wait(), glommio::timer::sleep(wait)).await;
    }
}

/// Gossip datagrams in.
async fn udp_recv_loop(rt: Rc<ClusterRuntime>, ctx: Rc<ShardCtx>) {
    let mut buf = vec![0u8; 2048];
    loop {
        match rt.udp.recv_from(&mut buf).await {
            Ok((len, from)) => {
                let data = buf.get(..len).unwrap_or_default();
                rt.node
                    .borrow_mut()
                    .handle_datagram(from, data, Instant::now());
                rt.pump(&ctx);
            }
            Err(error) => {
                debug!(%error, "gossip receive failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Gossip datagrams out.
async fn udp_send_loop(rt: Rc<ClusterRuntime>) {
    loop {
        rt.udp_ready.wait().await;
        loop {
            let next = rt.io.borrow_mut().udp_out.pop_front();
            let Some((to, datagram)) = next else { break };
            if let Err(error) = rt.udp.send_to(&datagram, to).await {
                debug!(%to, %error, "gossip send failed");
            }
        }
    }
}
