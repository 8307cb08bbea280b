//! A deterministic simulator for `ClusterNode`s: a fake clock, in-memory lossy and delaying
//! datagram and link transport, partitions, kill and restart. Every random choice comes from one
//! seed, printed at the start, so a failure replays with `SIM_SEED=<seed>`.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt as _, SeedableRng};
use ringmq_cluster_gossip::{
    ClusterConfig, ClusterEvent, ClusterNode, Generation, LinkCommand, LinkId, NodeId,
    NodeIdentity, RouteEntry, Secret,
};

pub const SECRET: &[u8] = b"sim-cluster-secret-0123456789abcdef";
pub const WRONG_SECRET: &[u8] = b"not-the-cluster-secret-at-all-000000";

/// Seeds a scenario runs with: `SIM_SEED` alone if set, else `SIM_SEEDS` (default 8) seeds
/// from the test's default. A run is milliseconds, so several seeds are cheap.
pub fn seeds(default: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let count: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    (default..default + count).collect()
}

/// Announces the seed so a failure can be replayed.
fn announce_seed(seed: u64) {
    eprintln!("sim seed = {seed} (replay with SIM_SEED={seed})");
    // SIM_TRACE=foca=debug (any env-filter) shows the protocol's own logs of a replay.
    if let Ok(filter) = std::env::var("SIM_TRACE") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .without_time()
            .try_init();
    }
}

pub fn gossip_addr(slot: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, slot as u8 + 1], 7946))
}

pub fn peer_addr(slot: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, slot as u8 + 1], 7947))
}

#[derive(Debug)]
enum Delivery {
    Datagram {
        from: SocketAddr,
        to: SocketAddr,
        bytes: Vec<u8>,
    },
    LinkData {
        slot: usize,
        link: LinkId,
        bytes: Vec<u8>,
    },
    LinkOpened {
        slot: usize,
        link: LinkId,
    },
    LinkClosed {
        slot: usize,
        link: LinkId,
    },
}

pub struct SimNode {
    pub node: Option<ClusterNode>,
    pub config: ClusterConfig,
    pub generation: u64,
    pub secret: &'static [u8],
    /// Every event this node emitted, with the sim time.
    pub events: Vec<(Duration, ClusterEvent)>,
}

pub struct Sim {
    pub seed: u64,
    rng: SmallRng,
    base: Instant,
    pub now: Duration,
    pub nodes: Vec<SimNode>,
    queue: BTreeMap<(Duration, u64), Delivery>,
    queue_seq: u64,
    /// (slot, link) -> (peer slot, peer link).
    pairs: BTreeMap<(usize, LinkId), (usize, LinkId)>,
    /// Last delivery time per directed link, so a link stays FIFO like TCP.
    link_clock: BTreeMap<(usize, LinkId), Duration>,
    /// Probability a gossip datagram is lost.
    pub gossip_loss: f64,
    /// Probability a peer-link frame is lost (a stand-in for bugs, reconnects and overflowing
    /// queues: TCP itself does not lose frames).
    pub link_loss: f64,
    pub delay_ms: (u64, u64),
    /// Group per slot while partitioned.
    partition: Option<Vec<usize>>,
}

impl Sim {
    /// `n` nodes with ids 1..=n, each seeded with node 0's and node 1's gossip addresses.
    pub fn new(n: usize, seed: u64) -> Self {
        announce_seed(seed);
        let mut sim = Self {
            seed,
            rng: SmallRng::seed_from_u64(seed),
            base: Instant::now(),
            now: Duration::ZERO,
            nodes: Vec::new(),
            queue: BTreeMap::new(),
            queue_seq: 0,
            pairs: BTreeMap::new(),
            link_clock: BTreeMap::new(),
            gossip_loss: 0.0,
            link_loss: 0.0,
            delay_ms: (1, 5),
            partition: None,
        };
        for slot in 0..n {
            sim.add_node(slot as u64 + 1, SECRET);
        }
        sim
    }

    pub fn config(node_id: u64, slot: usize) -> ClusterConfig {
        ClusterConfig::with_defaults(
            node_id,
            gossip_addr(slot),
            peer_addr(slot),
            vec![gossip_addr(0), gossip_addr(1)],
        )
    }

    /// Adds and starts a node; returns its slot.
    pub fn add_node(&mut self, node_id: u64, secret: &'static [u8]) -> usize {
        let slot = self.nodes.len();
        let config = Self::config(node_id, slot);
        self.nodes.push(SimNode {
            node: None,
            config,
            generation: 1_000 * (slot as u64 + 1),
            secret,
            events: Vec::new(),
        });
        self.start(slot);
        slot
    }

    fn instant(&self) -> Instant {
        self.base + self.now
    }

    fn start(&mut self, slot: usize) {
        let now = self.instant();
        let seed = self.rng.random();
        let n = &mut self.nodes[slot];
        let secret = Secret::from_file_bytes(n.secret).expect("sim secret is long enough");
        let mut node = ClusterNode::new(&n.config, secret, Generation(n.generation), seed, now);
        node.join(now);
        n.node = Some(node);
        self.pump(slot);
    }

    /// kill -9: the process and its sockets vanish; peers see their links close.
    pub fn kill(&mut self, slot: usize) {
        self.nodes[slot].node = None;
        let links: Vec<((usize, LinkId), (usize, LinkId))> = self
            .pairs
            .iter()
            .filter(|((s, _), _)| *s == slot)
            .map(|(a, b)| (*a, *b))
            .collect();
        for (mine, (peer_slot, peer_link)) in links {
            self.pairs.remove(&mine);
            self.pairs.remove(&(peer_slot, peer_link));
            self.schedule(Delivery::LinkClosed {
                slot: peer_slot,
                link: peer_link,
            });
        }
    }

    /// Starts the node again with a new, higher generation (a new boot id).
    pub fn restart(&mut self, slot: usize) {
        assert!(self.nodes[slot].node.is_none(), "kill before restart");
        self.nodes[slot].generation += 1_000_000;
        self.start(slot);
    }

    pub fn partition(&mut self, groups: &[&[usize]]) {
        let mut of = vec![usize::MAX; self.nodes.len()];
        for (g, slots) in groups.iter().enumerate() {
            for &s in *slots {
                of[s] = g;
            }
        }
        self.partition = Some(of);
    }

    pub fn heal(&mut self) {
        self.partition = None;
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        match &self.partition {
            None => true,
            Some(of) => of[a] == of[b],
        }
    }

    fn slot_of_gossip(&self, addr: SocketAddr) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.config.gossip_listen == addr && n.node.is_some())
    }

    fn slot_of_peer(&self, addr: SocketAddr) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.config.peer_listen == addr && n.node.is_some())
    }

    fn delay(&mut self) -> Duration {
        let (lo, hi) = self.delay_ms;
        Duration::from_millis(self.rng.random_range(lo..=hi))
    }

    fn lost(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random_bool(p)
    }

    /// The same loss on datagrams and link frames.
    pub fn set_loss(&mut self, p: f64) {
        self.gossip_loss = p;
        self.link_loss = p;
    }

    fn schedule_at(&mut self, at: Duration, delivery: Delivery) {
        self.queue_seq += 1;
        self.queue.insert((at, self.queue_seq), delivery);
    }

    fn schedule(&mut self, delivery: Delivery) {
        let at = self.now + self.delay();
        self.schedule_at(at, delivery);
    }

    /// Drains one node's output into the network.
    fn pump(&mut self, slot: usize) {
        loop {
            let Some(node) = self.nodes[slot].node.as_mut() else {
                return;
            };
            let mut progressed = false;
            let mut datagrams = Vec::new();
            while let Some(d) = node.poll_datagram() {
                datagrams.push(d);
            }
            let mut transmits = Vec::new();
            while let Some(t) = node.poll_transmit() {
                transmits.push(t);
            }
            let mut commands = Vec::new();
            while let Some(c) = node.poll_command() {
                commands.push(c);
            }
            let mut events = Vec::new();
            while let Some(event) = node.poll_event() {
                events.push((self.now, event));
            }
            self.nodes[slot].events.extend(events);
            let from = self.nodes[slot].config.gossip_listen;
            for (to, bytes) in datagrams {
                progressed = true;
                if self.lost(self.gossip_loss) {
                    continue;
                }
                self.schedule(Delivery::Datagram { from, to, bytes });
            }
            for (link, bytes) in transmits {
                progressed = true;
                self.transmit(slot, link, bytes);
            }
            for command in commands {
                progressed = true;
                self.command(slot, command);
            }
            if !progressed {
                return;
            }
        }
    }

    fn transmit(&mut self, slot: usize, link: LinkId, bytes: Vec<u8>) {
        let Some(&(peer_slot, peer_link)) = self.pairs.get(&(slot, link)) else {
            return;
        };
        if !self.reachable(slot, peer_slot) || self.lost(self.link_loss) {
            return;
        }
        let at = (self.now + self.delay()).max(
            self.link_clock
                .get(&(slot, link))
                .copied()
                .unwrap_or_default(),
        );
        self.link_clock.insert((slot, link), at);
        self.schedule_at(
            at,
            Delivery::LinkData {
                slot: peer_slot,
                link: peer_link,
                bytes,
            },
        );
    }

    fn command(&mut self, slot: usize, command: LinkCommand) {
        match command {
            LinkCommand::Connect { link, peer } => {
                let target = self.slot_of_peer(peer.peer_addr);
                match target {
                    Some(peer_slot) if self.reachable(slot, peer_slot) => {
                        let now = self.instant();
                        let Some(peer_node) = self.nodes[peer_slot].node.as_mut() else {
                            return;
                        };
                        let peer_link = peer_node.accept_link(now);
                        self.pairs.insert((slot, link), (peer_slot, peer_link));
                        self.pairs.insert((peer_slot, peer_link), (slot, link));
                        self.schedule(Delivery::LinkOpened { slot, link });
                        self.pump(peer_slot);
                    }
                    _ => self.schedule(Delivery::LinkClosed { slot, link }),
                }
            }
            LinkCommand::Close { link } => {
                if let Some((peer_slot, peer_link)) = self.pairs.remove(&(slot, link)) {
                    self.pairs.remove(&(peer_slot, peer_link));
                    self.schedule(Delivery::LinkClosed {
                        slot: peer_slot,
                        link: peer_link,
                    });
                }
            }
        }
    }

    fn deliver(&mut self, delivery: Delivery) {
        let now = self.instant();
        match delivery {
            Delivery::Datagram { from, to, bytes } => {
                let Some(slot) = self.slot_of_gossip(to) else {
                    return;
                };
                let Some(from_slot) = self
                    .nodes
                    .iter()
                    .position(|n| n.config.gossip_listen == from)
                else {
                    return;
                };
                if !self.reachable(from_slot, slot) {
                    return;
                }
                if let Some(node) = self.nodes[slot].node.as_mut() {
                    node.handle_datagram(from, &bytes, now);
                }
                self.pump(slot);
            }
            Delivery::LinkData { slot, link, bytes } => {
                if let Some(node) = self.nodes[slot].node.as_mut() {
                    node.handle_link_data(link, &bytes, now);
                }
                self.pump(slot);
            }
            Delivery::LinkOpened { slot, link } => {
                if let Some(node) = self.nodes[slot].node.as_mut() {
                    node.link_opened(link, now);
                }
                self.pump(slot);
            }
            Delivery::LinkClosed { slot, link } => {
                self.pairs.remove(&(slot, link));
                if let Some(node) = self.nodes[slot].node.as_mut() {
                    node.link_closed(link, now);
                }
                self.pump(slot);
            }
        }
    }

    /// Advances the fake clock by `d`, delivering messages and firing timers in time order.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next_delivery = self.queue.keys().next().map(|(at, _)| *at);
            let next_timer = self
                .nodes
                .iter()
                .filter_map(|n| n.node.as_ref()?.poll_timeout())
                .min()
                .map(|at| at.duration_since(self.base));
            let next = match (next_delivery, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(end),
            };
            if next > end {
                self.now = end;
                return;
            }
            self.now = self.now.max(next);
            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let delivery = entry.remove();
                self.deliver(delivery);
            }
            let now = self.instant();
            for slot in 0..self.nodes.len() {
                let due = self.nodes[slot]
                    .node
                    .as_ref()
                    .and_then(|n| n.poll_timeout())
                    .is_some_and(|at| at <= now);
                if due {
                    if let Some(node) = self.nodes[slot].node.as_mut() {
                        node.handle_timeout(now);
                    }
                    self.pump(slot);
                }
            }
        }
    }

    /// Runs in steps of `step` until `done` holds or `limit` passes; returns whether it held.
    pub fn run_until(
        &mut self,
        limit: Duration,
        step: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.run_for(step);
        }
        done(self)
    }

    pub fn node(&self, slot: usize) -> &ClusterNode {
        self.nodes[slot].node.as_ref().expect("node is running")
    }

    pub fn node_mut(&mut self, slot: usize) -> &mut ClusterNode {
        self.nodes[slot].node.as_mut().expect("node is running")
    }

    pub fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|s| self.nodes[*s].node.is_some())
            .collect()
    }

    pub fn identity(&self, slot: usize) -> NodeIdentity {
        self.node(slot).identity()
    }

    pub fn subscribe(&mut self, slot: usize, entry: RouteEntry) {
        self.node_mut(slot)
            .subscribe(entry)
            .expect("entry is valid");
        self.pump(slot);
    }

    pub fn forward(&mut self, slot: usize, to: NodeId, payload: Vec<u8>) {
        self.node_mut(slot)
            .forward(to, payload)
            .expect("link is up and has room");
        self.pump(slot);
    }

    pub fn unsubscribe(&mut self, slot: usize, entry: &RouteEntry) {
        self.node_mut(slot)
            .unsubscribe(entry)
            .expect("entry is exported");
        self.pump(slot);
    }

    /// Every node among `slots` sees exactly the others of `slots` up, at their current identity.
    pub fn all_up(&self, slots: &[usize]) -> bool {
        slots.iter().all(|&s| {
            let seen: BTreeSet<NodeIdentity> = self.node(s).members().copied().collect();
            let want: BTreeSet<NodeIdentity> = slots
                .iter()
                .filter(|o| **o != s)
                .map(|&o| self.identity(o))
                .collect();
            seen == want
        })
    }

    /// Every node among `slots` holds every other one's exact current route set.
    pub fn routes_converged(&self, slots: &[usize]) -> bool {
        self.route_mismatches(slots).is_empty()
    }

    /// (holder, origin) pairs whose copy differs from the owner's.
    pub fn route_mismatches(&self, slots: &[usize]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for &owner in slots {
            let local = self.node(owner).local_summary();
            for &holder in slots.iter().filter(|h| **h != owner) {
                let ok = match self.node(holder).remote_summary(local.origin) {
                    Some(remote) => remote == local,
                    None => local.digest == 0 && local.seq == 0,
                };
                if !ok {
                    out.push((holder, owner));
                }
            }
        }
        out
    }

    /// Events of one node so far.
    pub fn events(&self, slot: usize) -> &[(Duration, ClusterEvent)] {
        &self.nodes[slot].events
    }

    pub fn node_id(&self, slot: usize) -> NodeId {
        NodeId(self.nodes[slot].config.node_id)
    }
}

pub fn filter(s: &str) -> RouteEntry {
    RouteEntry::Filter(s.to_string())
}
