//! `ShardState`: everything one shard owns — sessions, the local subscription trie, the replicated
//! route table, retained messages, timers, outboxes to other shards and counters. No I/O and no
//! awaits: the connection machines ([`crate::conn`]) and the engine call into it.
//!
//! One file per concern: sessions and takeover here; [`subscriptions`]; [`routes`] (the route
//! table, barriers and cross-shard outboxes); [`delivery`] (publishing, fan-out and the frame
//! cache); [`retained`]; [`timers`]; [`handover`] (a session leaving for or arriving from a
//! peer node); [`remote`] (peer nodes' routes, this node's export and
//! forwards to peer nodes, when the broker runs in a cluster).

mod acl;
mod delivery;
mod handover;
mod remote;
mod retained;
mod routes;
mod subscriptions;
mod timers;

pub use acl::AuthCounters;
pub use delivery::Merged;
pub use handover::{Installed, SessionImage, HANDED_OVER_KEEP};
pub use remote::{ClusterShard, ExportChange, CLUSTER_FORWARDS_MAX};
pub use retained::RetainedOrder;
pub use subscriptions::{FilterEntry, LocalGroup, SUBSCRIBERS_INDEXED_MIN};
pub use timers::{TRAFFIC_SWEEP_INTERVAL, TRAFFIC_SWEEP_SLOTS_MAX};

use std::cell::Cell;
#[allow(unused_imports)]
use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;
use wire::{ProtocolVersion, QoS, ReasonCode, RetainHandling, SubscriptionOptions, Utf8Bytes};

use crate::config::{Limits, SubscribeAuthorizer};
use crate::counters::Counters;
use crate::ids::{BarrierId, ConnId, ReadyQueue};
use crate::message::{
    Message, RouteChange, SessionKey, ShardId, ShardMsg, ShardStats, SharedPick, SHARDS_MAX,
};
use crate::session::{
    CloseReason, ConnectionLink, Delivery, DropReason, Outbound, PeerLimits, Session,
    SessionSubscription, Will,
};
use crate::trie::{HasName, TopicMap, TopicTrie};

/// Recently cleared retained topics remembered per shard (see `ShardState::retained_cleared`).
/// Beyond it a clear is not remembered and a crossing older set may survive on one shard.
pub const RETAINED_TOMBSTONES_MAX: usize = 4096;
/// How long a clear is remembered: far longer than a cross-shard batch takes to arrive, and
/// long enough to outlast a network partition between cluster nodes, whose link-up hands the
/// clears over with the retained set (`ShardState::sync_retained_to`). Pruned only when
/// [`RETAINED_TOMBSTONES_MAX`] are held.
pub const RETAINED_TOMBSTONE_KEEP: Duration = Duration::from_secs(3600);

/// One bit per shard.
pub type ShardMask = u64;
const _: () = assert!(SHARDS_MAX <= ShardMask::BITS as usize);

/// A subscriber as the trie stores it.
#[derive(Debug, Clone, Copy)]
pub struct Subscriber {
    pub slot: u32,
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
}

/// A shared group as the route table sees it: which shards have members.
#[derive(Debug)]
pub struct GroupRoute {
    pub group: Arc<str>,
    pub shards: ShardMask,
    pub next: Cell<u32>,
}

/// What the route table stores per filter: which shards have normal subscribers, and groups.
#[derive(Debug, Default)]
pub struct RouteEntry {
    /// The filter, kept only while shared groups exist (a [`SharedPick`] names it).
    pub filter: Option<Arc<str>>,
    pub shards: ShardMask,
    pub groups: Vec<GroupRoute>,
}

/// A retained message, keyed by its topic in the retained trie.
#[derive(Debug, Clone)]
pub struct Retained(pub Arc<Message>);

impl HasName for Retained {
    fn name(&self) -> &str {
        self.0.publish.topic.as_str()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerKind {
    KeepAlive,
    WillDelay,
    SessionExpiry,
    /// The connection's credentials (a token) expire: close it (per its link generation).
    CredentialsExpiry,
}

impl TimerKind {
    const ALL: [TimerKind; 4] = [
        TimerKind::KeepAlive,
        TimerKind::WillDelay,
        TimerKind::SessionExpiry,
        TimerKind::CredentialsExpiry,
    ];

    /// Whether the timer belongs to one connection of the session (checked by its link
    /// generation) rather than to the session (checked by the slot's generation).
    fn is_link_timer(self) -> bool {
        matches!(self, TimerKind::KeepAlive | TimerKind::CredentialsExpiry)
    }
}

/// 16 bytes, as the timer heap holds one per idle connection (its keepalive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct TimerEntry {
    /// Nanoseconds after `ShardState::timer_epoch` (62 bits: 146 years) shifted left by 2, and
    /// the [`TimerKind`] index in the low 2 bits; ordered by due time first.
    at_and_kind: u64,
    slot: u32,
    /// Which incarnation the timer is for: a session timer holds the slot's generation, a
    /// connection timer ([`TimerKind::is_link_timer`]) the link generation of the connection it
    /// watches (link generations are shard-wide, so it ends with that connection and takeovers
    /// do not pile up timers).
    stamp: u32,
}

const _: () = assert!(
    TimerKind::ALL.len() <= 4,
    "the kind has 2 bits in a TimerEntry"
);

impl TimerEntry {
    fn new(at_ns: u64, kind: TimerKind, slot: u32, stamp: u32) -> TimerEntry {
        let at_ns = at_ns.min((1 << 62) - 1);
        TimerEntry {
            at_and_kind: (at_ns << 2) | kind as u64,
            slot,
            stamp,
        }
    }

    fn at_ns(&self) -> u64 {
        self.at_and_kind >> 2
    }

    fn kind(&self) -> TimerKind {
        TimerKind::ALL[(self.at_and_kind & 3) as usize]
    }
}

/// Slab slot: the session (if any) and the slot's generation counter.
#[derive(Debug, Default)]
struct Slot {
    /// Boxed so the slab's spare capacity costs a pointer per slot, not a whole session.
    session: Option<Box<Session>>,
    generation: u32,
}

/// Client id → session slot. Stores only the slot (4 bytes per session, no copy of the id):
/// the id is read from the session it names.
struct ClientIndex {
    table: hashbrown::HashTable<u32>,
    hasher: ahash::RandomState,
}

fn client_id_at(slots: &[Slot], slot: u32) -> &str {
    slots
        .get(slot as usize)
        .and_then(|s| s.session.as_deref())
        .map_or("", |s| s.client_id.as_str())
}

impl ClientIndex {
    fn new() -> Self {
        ClientIndex {
            table: hashbrown::HashTable::new(),
            hasher: ahash::RandomState::new(),
        }
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    fn get(&self, slots: &[Slot], client_id: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(client_id);
        self.table
            .find(hash, |&slot| client_id_at(slots, slot) == client_id)
            .copied()
    }

    /// Adds `slot`, whose session (already in `slots`) has `client_id`.
    fn insert(&mut self, slots: &[Slot], client_id: &str, slot: u32) {
        let hash = self.hasher.hash_one(client_id);
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, slot, |&s| hasher.hash_one(client_id_at(slots, s)));
    }

    /// Removes `slot`, whose session had `client_id` (it may be gone from `slots` already).
    fn remove(&mut self, client_id: &str, slot: u32) {
        let hash = self.hasher.hash_one(client_id);
        if let Ok(entry) = self.table.find_entry(hash, |&s| s == slot) {
            entry.remove();
        }
    }
}

/// Result of [`ShardState::attach`].
#[derive(Debug)]
pub struct Attached {
    pub slot: u32,
    pub generation: u32,
    pub session_present: bool,
}

/// Result of subscribing one filter.
#[derive(Debug)]
pub enum SubscribeResult {
    Granted { qos: QoS, route_changed: bool },
    Refused(ReasonCode),
}

/// The whole state of one shard.
pub struct ShardState {
    pub id: ShardId,
    pub shard_count: u16,
    pub limits: Limits,
    /// The subscription authorization hook.
    pub authorizer: Arc<dyn SubscribeAuthorizer>,
    /// The compiled ACL, when one is configured (`[acl]` or `[auth]`): replaces `authorizer`
    /// and is checked at SUBSCRIBE, PUBLISH and delivery. Swapped whole on reload.
    pub acl: Option<Arc<auth::Acl>>,
    /// Whether a CONNECT waits for the runtime's authentication (`Output::Authenticate`).
    pub authenticate: bool,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    by_client_id: ClientIndex,
    subs: TopicMap<FilterEntry>,
    routes: TopicMap<RouteEntry>,
    retained: TopicTrie<Retained>,
    /// When each recently cleared retained topic was cleared, so a set from another shard that
    /// is older than the clear (it crossed the clear on the way) is not stored: without it one
    /// shard keeps the stale message for good. Bounded by [`RETAINED_TOMBSTONES_MAX`]; entries
    /// older than [`RETAINED_TOMBSTONE_KEEP`] are pruned.
    retained_cleared: AHashMap<Box<str>, RetainedOrder>,
    timers: BinaryHeap<Reverse<TimerEntry>>,
    /// Per destination shard, messages waiting for this loop turn's flush. Bounded by
    /// `limits.cross_shard_outbox_len_max` per destination.
    pub outboxes: Vec<Vec<ShardMsg>>,
    /// Scratch for merging overlapping subscriptions of one session; cleared per publish, keeps
    /// its capacity.
    merge: AHashMap<u32, Merged>,
    pub counters: Counters,
    pub connections: u32,
    /// Latest stats of every shard (kept on shard 0 for `$SYS`).
    pub stats_by_shard: Vec<ShardStats>,
    /// Route barriers this shard is waiting on: id → (acks still missing, the connection whose
    /// reply waits). An entry leaves when its last ack arrives and the connection takes its reply,
    /// or when that connection closes first (`forget_barrier`). Bounded by the connections (each
    /// waits on at most one).
    pub barriers: AHashMap<BarrierId, (u16, ConnId)>,
    next_barrier: u64,
    /// Set once shutdown began: no new connections, sessions keep no longer.
    pub shutting_down: bool,
    /// Counter for assigned client identifiers.
    next_assigned_id: u64,
    /// Connection generations are shard-wide, not per session: a slot freed by a clean-start
    /// takeover is reused at once by the new session, and a per-session counter would hand the
    /// new connection the old one's generation, so the old task would keep serving.
    next_link_generation: u32,
    pub started_at: Instant,
    /// What timer due times count from (a [`TimerEntry`] holds an offset, not an `Instant`).
    timer_epoch: Instant,
    /// When the traffic sweep runs next ([`ShardState::sweep_traffic`]).
    traffic_sweep_at: Instant,
    /// The session slot the next traffic sweep starts at.
    traffic_sweep_cursor: u32,
    /// PUBACK/PUBRECs owed once Kafka acknowledges, by bridge token. Bounded by the clients'
    /// inflight windows (a client cannot have more unacknowledged publishes than its window).
    pub kafka_pending: AHashMap<u64, crate::bridge::PendingKafkaAck>,
    pub next_kafka_token: u64,
    /// Connections with work this loop turn; every session link holds a handle to it.
    pub ready: ReadyQueue,
    /// Recent publishes accepted here, oldest first, for replay to a shard whose subscription
    /// arrives after them. Bounded by `RECENT_PUBLISHES_MAX` and `RECENT_PUBLISH_WINDOW`; empty on
    /// a single-shard broker.
    recent: VecDeque<delivery::RecentPublish>,
    /// The time the previous loop turn handled its inputs at (set by `Engine::process`): before
    /// anything this turn reads arrived.
    pub previous_turn_at: Instant,
    /// Set while a handed-off connection's first input is handled: when it arrived on the
    /// accepting shard (see `ShardState::replay_local`).
    pub replay_local_since: Option<Instant>,
    /// Set exactly when the broker runs in a cluster: peer nodes' routes and, on shard 0, the
    /// node's export and forwards (see [`remote`]). Boxed: a lone broker pays a pointer.
    pub cluster: Option<Box<ClusterShard>>,
}

/// Which shard owns a client id's session. Fixed seeds: every shard must agree.
pub fn home_shard(client_id: &str, shard_count: u16) -> ShardId {
    let state = ahash::RandomState::with_seeds(
        0x7269_6e67_6d71_0001,
        0x7269_6e67_6d71_0002,
        0x7269_6e67_6d71_0003,
        0x7269_6e67_6d71_0004,
    );
    let hash = state.hash_one(client_id);
    (hash % u64::from(shard_count.max(1))) as ShardId
}

fn bit(shard: ShardId) -> ShardMask {
    1u64 << (shard as u32 % ShardMask::BITS)
}

impl ShardState {
    pub fn new(
        id: ShardId,
        shard_count: u16,
        limits: Limits,
        authorizer: Arc<dyn SubscribeAuthorizer>,
    ) -> Self {
        ShardState {
            id,
            shard_count,
            limits,
            authorizer,
            acl: None,
            authenticate: false,
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_client_id: ClientIndex::new(),
            subs: TopicMap::new(),
            routes: TopicMap::new(),
            retained: TopicTrie::new(),
            retained_cleared: AHashMap::new(),
            timers: BinaryHeap::new(),
            outboxes: (0..shard_count).map(|_| Vec::new()).collect(),
            merge: AHashMap::new(),
            counters: Counters::default(),
            connections: 0,
            stats_by_shard: vec![ShardStats::default(); usize::from(shard_count)],
            barriers: AHashMap::new(),
            next_barrier: 1,
            shutting_down: false,
            next_assigned_id: 0,
            next_link_generation: 1,
            started_at: Instant::now(),
            timer_epoch: Instant::now(),
            traffic_sweep_at: Instant::now() + TRAFFIC_SWEEP_INTERVAL,
            traffic_sweep_cursor: 0,
            kafka_pending: AHashMap::new(),
            next_kafka_token: 0,
            ready: ReadyQueue::default(),
            recent: VecDeque::new(),
            previous_turn_at: Instant::now(),
            replay_local_since: None,
            cluster: None,
        }
    }

    // ----- sessions -------------------------------------------------------------------------

    pub fn session(&self, slot: u32) -> Option<&Session> {
        self.slots.get(slot as usize)?.session.as_deref()
    }

    pub fn session_mut(&mut self, slot: u32) -> Option<&mut Session> {
        self.slots.get_mut(slot as usize)?.session.as_deref_mut()
    }

    /// The session bound to connection (`slot`, `generation`), if that connection is still the
    /// session's current one.
    pub fn linked_session_mut(&mut self, slot: u32, generation: u32) -> Option<&mut Session> {
        let session = self.session_mut(slot)?;
        match &session.link {
            Some(link) if link.generation == generation => Some(session),
            _ => None,
        }
    }

    pub fn sessions_online(&self) -> u64 {
        self.connections as u64
    }

    pub fn sessions_total(&self) -> u64 {
        self.by_client_id.len() as u64
    }

    pub fn subscription_count(&self) -> u64 {
        self.slots
            .iter()
            .filter_map(|s| s.session.as_deref())
            .map(|s| s.subscriptions.len() as u64)
            .sum()
    }

    pub fn retained_count(&self) -> u64 {
        self.retained.len() as u64
    }

    pub fn queued_messages(&self) -> u64 {
        self.slots
            .iter()
            .filter_map(|s| s.session.as_deref())
            .map(|s| s.held_len() as u64)
            .sum()
    }

    /// Whether a CONNECT of `client_id` may go on: it resumes or takes over a session this shard
    /// has, or the shard holds fewer than `limits.sessions_per_shard_max` sessions.
    pub fn may_create_session(&self, client_id: &str) -> bool {
        let max = self.limits.sessions_per_shard_max as usize;
        max == 0
            || self.by_client_id.len() < max
            || (!client_id.is_empty() && self.by_client_id.get(&self.slots, client_id).is_some())
    }

    /// A fresh client identifier whose session lives on this shard, for v5 Assigned Client
    /// Identifier and for v3.1.1 clients connecting with an empty one.
    pub fn assign_client_id(&mut self) -> Utf8Bytes {
        loop {
            self.next_assigned_id += 1;
            // In a cluster the node id makes it unique cluster-wide: no other node can hold
            // a session of it, so its connect claims nothing.
            let candidate = Utf8Bytes::from(match self.cluster.as_deref() {
                Some(c) => format!(
                    "ringmq-{}-{}-{:x}",
                    c.node_id, self.id, self.next_assigned_id
                ),
                None => format!("ringmq-{}-{:x}", self.id, self.next_assigned_id),
            });
            if home_shard(candidate.as_str(), self.shard_count) == self.id
                && self
                    .by_client_id
                    .get(&self.slots, candidate.as_str())
                    .is_none()
            {
                return candidate;
            }
        }
    }

    /// A new connection (here or on a peer node) claims the session in `slot`: its connection,
    /// if any, is closed as taken over [MQTT-3.1.4-3] and its will handled: one with no delay
    /// goes out now; a delayed one is cancelled by the session resuming [MQTT-3.1.3-9], unless
    /// the claim ends the session (`clean_start`).
    fn take_over_link(&mut self, slot: u32, clean_start: bool, now: Instant) {
        let ready = self.ready.clone();
        let Some(session) = self.session_mut(slot) else {
            return;
        };
        let mut was_online = false;
        if let Some(mut link) = session.link.take() {
            was_online = true;
            // The old connection finds its link gone on its next turn and closes (v5:
            // DISCONNECT 0x8E) without touching the session.
            link.close = Some(CloseReason::SessionTakenOver);
            link.woken = false;
            link.wake(&ready);
        }
        let will = session.will.take();
        if was_online {
            self.connections = self.connections.saturating_sub(1);
            self.counters.takeovers += 1;
        }
        if let Some(will) = will {
            if (was_online && will.delay_secs == 0) || clean_start {
                self.publish_will(will, now);
            }
        }
    }

    /// Binds a new connection to the client's session, creating, resuming or taking it over.
    /// Returns the frames the old connection must not send any more (it learns of the takeover
    /// through its link) and the will of a taken-over connection, published per spec.
    #[allow(clippy::too_many_arguments)]
    pub fn attach(
        &mut self,
        client_id: Utf8Bytes,
        clean_start: bool,
        expiry_secs: u32,
        peer: PeerLimits,
        keepalive_secs: u16,
        will: Option<Will>,
        conn: ConnId,
        now: Instant,
    ) -> Attached {
        debug_assert_eq!(home_shard(client_id.as_str(), self.shard_count), self.id);
        let mut session_present = false;
        if let Some(slot) = self.by_client_id.get(&self.slots, client_id.as_str()) {
            self.take_over_link(slot, clean_start, now);
            if clean_start {
                self.end_session(slot, now);
            } else if let Some(session) = self.session_mut(slot) {
                session_present = true;
                session.set_expires_at(None);
                session.set_will_at(None);
                session.peer = peer.clone();
            }
        }
        let slot = match self.by_client_id.get(&self.slots, client_id.as_str()) {
            Some(slot) => slot,
            None => self.create_session(client_id, peer),
        };
        let generation = self.next_link_generation;
        self.next_link_generation = self.next_link_generation.wrapping_add(1).max(1);
        {
            let max_expiry = self.limits.session_expiry_max_secs;
            let Some(session) = self.session_mut(slot) else {
                // create_session always fills the slot it returns.
                return Attached {
                    slot,
                    generation: 0,
                    session_present: false,
                };
            };
            session.next_generation = generation.wrapping_add(1);
            session.link = Some(ConnectionLink {
                generation,
                conn,
                woken: false,
                close: None,
                last_activity: now,
                keepalive_secs,
            });
            session.expiry_secs = expiry_secs.min(max_expiry);
            session.will = will;
        }
        self.connections += 1;
        if keepalive_secs > 0 {
            self.schedule_keepalive(slot, generation, now + keepalive_grace(keepalive_secs));
        }
        Attached {
            slot,
            generation,
            session_present,
        }
    }

    fn create_session(&mut self, client_id: Utf8Bytes, peer: PeerLimits) -> u32 {
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot::default());
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let entry = &mut self.slots[slot as usize];
        entry.generation = entry.generation.wrapping_add(1);
        let key = SessionKey {
            shard: self.id,
            slot,
            generation: entry.generation,
        };
        entry.session = Some(Box::new(Session::new(client_id, key, peer)));
        let id = client_id_at(&self.slots, slot);
        self.by_client_id.insert(&self.slots, id, slot);
        slot
    }

    /// The connection (`slot`, `generation`) ended. Publishes or schedules the will, and ends or
    /// keeps the session per its expiry.
    pub fn detach(&mut self, slot: u32, generation: u32, reason: CloseReason, now: Instant) {
        let shutting_down = self.shutting_down;
        let Some(session) = self.linked_session_mut(slot, generation) else {
            return; // taken over: the new connection owns the session now.
        };
        session.link = None;
        session.shed_traffic();
        let will = if reason.publishes_will() || matches!(reason, CloseReason::ProtocolError(_)) {
            session.will.take()
        } else {
            // Normal DISCONNECT discards the will [MQTT-3.1.2-10]; DISCONNECT 0x04 is handled by
            // the caller publishing before detaching.
            session.will = None;
            None
        };
        let expiry_secs = if shutting_down {
            0
        } else {
            session.expiry_secs
        };
        self.connections = self.connections.saturating_sub(1);
        let mut will_now = None;
        if let Some(will) = will {
            if will.delay_secs == 0 || expiry_secs == 0 {
                will_now = Some(will);
            } else if let Some(session) = self.session_mut(slot) {
                let delay = will.delay_secs.min(expiry_secs);
                session.set_will_at(Some(now + Duration::from_secs(u64::from(delay))));
                session.will = Some(will);
                self.schedule(
                    TimerKind::WillDelay,
                    slot,
                    now + Duration::from_secs(u64::from(delay)),
                );
            }
        }
        if let Some(will) = will_now {
            self.publish_will(will, now);
        }
        if expiry_secs == 0 {
            self.end_session(slot, now);
        } else if expiry_secs != u32::MAX {
            let at = now + Duration::from_secs(u64::from(expiry_secs));
            if let Some(session) = self.session_mut(slot) {
                session.set_expires_at(Some(at));
            }
            self.schedule(TimerKind::SessionExpiry, slot, at);
        }
    }

    /// Removes a session and its subscriptions. A pending delayed will goes out now
    /// [MQTT-3.1.2-8: the will is published when the session ends if that comes first].
    pub fn end_session(&mut self, slot: u32, now: Instant) {
        let Some(entry) = self.slots.get_mut(slot as usize) else {
            return;
        };
        let Some(session) = entry.session.take() else {
            return;
        };
        self.by_client_id.remove(session.client_id.as_str(), slot);
        self.free_slots.push(slot);
        for sub in &session.subscriptions {
            self.remove_subscription(slot, &sub.filter);
        }
        if session.link.is_some() {
            self.connections = self.connections.saturating_sub(1);
        }
        if session.will_at().is_some() {
            if let Some(will) = session.will {
                self.publish_will(will, now);
            }
        }
    }

    fn publish_will(&mut self, will: Will, now: Instant) {
        self.counters.wills_published += 1;
        let message = Arc::new(Message {
            publish: will.message.publish.clone(),
            origin: will.message.origin,
            expires_at: will
                .expiry_secs
                .map(|secs| now + Duration::from_secs(u64::from(secs))),
            received_at: now,
        });
        self.publish(message, now);
    }

    /// Every session that is online: for shutdown.
    pub fn online_slots(&self) -> Vec<u32> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.session.as_ref().is_some_and(|s| s.link.is_some()))
            .map(|(i, _)| i as u32)
            .collect()
    }

    /// Packet id of an incoming QoS 2 PUBLISH: true if it is new (deliver it), false if it is a
    /// retransmission awaiting PUBREL (do not deliver twice) [MQTT-4.3.3-9].
    pub fn incoming_qos2(&mut self, slot: u32, packet_id: NonZeroU16) -> Option<bool> {
        let t = self.session_mut(slot)?.traffic_mut();
        if t.incoming_qos2.contains(&packet_id.get()) {
            return Some(false);
        }
        t.incoming_qos2.push(packet_id.get());
        Some(true)
    }

    pub fn release_qos2(&mut self, slot: u32, packet_id: NonZeroU16) -> bool {
        let Some(t) = self
            .session_mut(slot)
            .and_then(|s| s.traffic.as_deref_mut())
        else {
            return false;
        };
        let before = t.incoming_qos2.len();
        t.incoming_qos2.retain(|id| *id != packet_id.get());
        before != t.incoming_qos2.len()
    }
}

/// Keepalive is enforced at one and a half times the interval [MQTT-3.1.2-24].
pub fn keepalive_grace(keepalive_secs: u16) -> Duration {
    Duration::from_millis(u64::from(keepalive_secs) * 1500)
}
