//! `ShardState`: everything one shard owns — sessions, the local subscription trie, the replicated
//! route table, retained messages, timers, outboxes to other shards and counters. No I/O and no
//! awaits: the connection tasks and the runtime call into it and act on what it returns.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;
use wire::{ProtocolVersion, QoS, ReasonCode, RetainHandling, SubscriptionOptions, Utf8Bytes};

use crate::config::{Limits, SubscribeAuthorizer, SubscribeRules};
use crate::message::{
    Message, RouteChange, SessionKey, ShardId, ShardMsg, ShardStats, SharedPick, SHARDS_MAX,
};
use crate::metrics::Counters;
use crate::session::{
    CloseReason, ConnectionLink, Delivery, DropReason, InboundAliases, Outbound, ParkedConn,
    PeerLimits, Session, SessionSubscription, Will,
};
use crate::trie::{HasName, TopicMap, TopicTrie};

/// One bit per shard.
pub type ShardMask = u64;
const _: () = assert!(SHARDS_MAX <= ShardMask::BITS as usize);

/// Several overlapping subscriptions of one session merged into one delivery: the highest QoS,
/// retain-as-published if any asked, every subscription identifier, no-local only if all asked.
pub type Merged = (QoS, bool, SmallVec<[u32; 1]>, bool);

/// A subscriber as the trie stores it.
#[derive(Debug, Clone, Copy)]
pub struct Subscriber {
    pub slot: u32,
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
}

/// A shared-subscription group's members on this shard.
#[derive(Debug)]
pub struct LocalGroup {
    pub group: Arc<str>,
    pub members: SmallVec<[Subscriber; 2]>,
    /// Round-robin cursor.
    pub next: Cell<u32>,
}

/// What the local trie stores per filter.
#[derive(Debug, Default)]
pub struct FilterEntry {
    pub subscribers: SmallVec<[Subscriber; 1]>,
    pub groups: Vec<LocalGroup>,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct TimerEntry {
    at: Instant,
    kind: TimerKind,
    slot: u32,
    generation: u32,
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
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    by_client_id: ClientIndex,
    subs: TopicMap<FilterEntry>,
    routes: TopicMap<RouteEntry>,
    retained: TopicTrie<Retained>,
    timers: BinaryHeap<Reverse<TimerEntry>>,
    /// Per destination shard, messages waiting for this loop turn's flush. Bounded by
    /// `limits.cross_shard_outbox_len_max` per destination.
    pub outboxes: Vec<Vec<ShardMsg>>,
    /// Per destination shard, the flusher task to wake when its outbox becomes non-empty.
    pub flushers: Vec<Option<std::task::Waker>>,
    /// Scratch for merging overlapping subscriptions of one session; cleared per publish, keeps
    /// its capacity.
    merge: AHashMap<u32, Merged>,
    pub counters: Counters,
    pub connections: u32,
    /// Latest stats of every shard (kept on shard 0 for `$SYS`).
    pub stats_by_shard: Vec<ShardStats>,
    /// Route barriers this shard is waiting on: id → acks still missing.
    pub barriers: AHashMap<u64, (u16, Option<std::task::Waker>)>,
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
    /// PUBACK/PUBRECs owed once Kafka acknowledges, by bridge token. Bounded by the clients'
    /// inflight windows (a client cannot have more unacknowledged publishes than its window).
    pub kafka_pending: AHashMap<u64, crate::bridge::PendingKafkaAck>,
    pub next_kafka_token: u64,
    /// Connections parked now (see `park`), including taken-over ones not yet closed.
    pub parked: u32,
    /// Parked connections whose session was taken over: resumed only to be told so and closed.
    /// At most one per takeover, gone once the shard resumes them (the next loop turn).
    orphans: Vec<OrphanConn>,
    /// Where the idle sweep continues, and how much of a sweep period it has not covered yet.
    sweep_cursor: usize,
    sweep_owed: Duration,
}

/// A parked connection whose session was taken over.
struct OrphanConn {
    slot: u32,
    generation: u32,
    key: SessionKey,
    version: ProtocolVersion,
    conn: ParkedConn,
}

/// A parked connection taken out of its session to be served again.
pub struct Unparked {
    pub slot: u32,
    pub generation: u32,
    pub key: SessionKey,
    pub version: ProtocolVersion,
    pub fd: std::os::fd::OwnedFd,
    pub aliases_in: InboundAliases,
    /// Set when the session was taken over while parked: close with this reason.
    pub closing: Option<CloseReason>,
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
    pub fn new(id: ShardId, shard_count: u16, limits: Limits, rules: SubscribeRules) -> Self {
        ShardState {
            id,
            shard_count,
            limits,
            authorizer: Arc::new(rules),
            slots: Vec::new(),
            free_slots: Vec::new(),
            by_client_id: ClientIndex::new(),
            subs: TopicMap::new(),
            routes: TopicMap::new(),
            retained: TopicTrie::new(),
            timers: BinaryHeap::new(),
            outboxes: (0..shard_count).map(|_| Vec::new()).collect(),
            flushers: (0..shard_count).map(|_| None).collect(),
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
            kafka_pending: AHashMap::new(),
            next_kafka_token: 0,
            parked: 0,
            orphans: Vec::new(),
            sweep_cursor: 0,
            sweep_owed: Duration::ZERO,
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

    /// A fresh client identifier whose session lives on this shard, for v5 Assigned Client
    /// Identifier and for v3.1.1 clients connecting with an empty one.
    pub fn assign_client_id(&mut self) -> Utf8Bytes {
        loop {
            self.next_assigned_id += 1;
            let candidate =
                Utf8Bytes::from(format!("ringmq-{}-{:x}", self.id, self.next_assigned_id));
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
        now: Instant,
    ) -> Attached {
        debug_assert_eq!(home_shard(client_id.as_str(), self.shard_count), self.id);
        let mut session_present = false;
        if let Some(slot) = self.by_client_id.get(&self.slots, client_id.as_str()) {
            // Take over the existing connection, if any [MQTT-3.1.4-3].
            let mut old_will = None;
            let mut was_online = false;
            let mut orphan = None;
            if let Some(session) = self.session_mut(slot) {
                let version = session.peer.version;
                let key = session.key;
                if let Some(mut link) = session.link.take() {
                    was_online = true;
                    link.close = Some(CloseReason::SessionTakenOver);
                    if let Some(conn) = link.parked.take() {
                        // Its parked waker brings it back to be told (v5: DISCONNECT 0x8E).
                        orphan = Some(OrphanConn {
                            slot,
                            generation: link.generation,
                            key,
                            version,
                            conn,
                        });
                    }
                    if let Some(w) = link.waker.take() {
                        w.wake();
                    }
                }
                old_will = session.will.take().map(|w| (w, was_online));
            }
            self.orphans.extend(orphan);
            if was_online {
                self.connections = self.connections.saturating_sub(1);
                self.counters.takeovers += 1;
            }
            if let Some((old, was_online)) = old_will {
                // A will with no delay goes out now; a delayed one is cancelled by the session
                // resuming [MQTT-3.1.3-9], unless this connect ends the session (clean start).
                if (was_online && old.delay_secs == 0) || clean_start {
                    self.publish_will(old, now);
                }
            }
            if clean_start {
                self.end_session(slot, now);
            } else if let Some(session) = self.session_mut(slot) {
                session_present = true;
                session.expires_at = None;
                session.will_at = None;
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
                waker: None,
                close: None,
                last_activity: now,
                keepalive_secs,
                idle_mark: false,
                park_requested: false,
                parked: None,
            });
            session.expiry_secs = expiry_secs.min(max_expiry);
            session.will = will;
        }
        self.connections += 1;
        if keepalive_secs > 0 {
            self.schedule(
                TimerKind::KeepAlive,
                slot,
                now + keepalive_grace(keepalive_secs),
            );
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
                session.will_at = Some(now + Duration::from_secs(u64::from(delay)));
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
                session.expires_at = Some(at);
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
        if session.will_at.is_some() {
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

    // ----- timers ---------------------------------------------------------------------------

    fn schedule(&mut self, kind: TimerKind, slot: u32, at: Instant) {
        let generation = self
            .slots
            .get(slot as usize)
            .map(|s| s.generation)
            .unwrap_or(0);
        self.timers.push(Reverse(TimerEntry {
            at,
            kind,
            slot,
            generation,
        }));
    }

    /// When the next timer is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse(t)| t.at)
    }

    /// Runs every due timer: keepalive expiry closes connections, delayed wills are published,
    /// expired sessions end.
    pub fn run_timers(&mut self, now: Instant) {
        while let Some(Reverse(entry)) = self.timers.peek().copied() {
            if entry.at > now {
                break;
            }
            self.timers.pop();
            let current = self.slots.get(entry.slot as usize).map(|s| s.generation);
            if current != Some(entry.generation) {
                continue; // the slot was reused: this timer belonged to an ended session.
            }
            match entry.kind {
                TimerKind::KeepAlive => {
                    let mut reschedule = None;
                    if let Some(session) = self.session_mut(entry.slot) {
                        if let Some(link) = &mut session.link {
                            if link.keepalive_secs > 0 {
                                let due = link.last_activity + keepalive_grace(link.keepalive_secs);
                                if due <= now {
                                    // [MQTT-3.1.2-24] close after 1.5× keepalive without a packet.
                                    link.close.get_or_insert(CloseReason::KeepAliveTimeout);
                                    if let Some(w) = link.waker.take() {
                                        w.wake();
                                    }
                                } else {
                                    reschedule = Some(due);
                                }
                            }
                        }
                    }
                    if let Some(at) = reschedule {
                        self.schedule(TimerKind::KeepAlive, entry.slot, at);
                    }
                }
                TimerKind::WillDelay => {
                    let due = self.session_mut(entry.slot).and_then(|s| {
                        if s.link.is_none() && s.will_at.is_some_and(|at| at <= now) {
                            s.will_at = None;
                            s.will.take()
                        } else {
                            None
                        }
                    });
                    if let Some(will) = due {
                        self.publish_will(will, now);
                    }
                }
                TimerKind::SessionExpiry => {
                    let expired = self.session(entry.slot).is_some_and(|s| {
                        s.link.is_none() && s.expires_at.is_some_and(|at| at <= now)
                    });
                    if expired {
                        self.counters.sessions_expired += 1;
                        self.end_session(entry.slot, now);
                    }
                }
            }
        }
    }

    // ----- subscriptions --------------------------------------------------------------------

    /// Adds (or replaces [MQTT-3.8.4-3]) one subscription of session `slot`. Retained messages
    /// owed are queued on the session per the retain handling option.
    pub fn subscribe(
        &mut self,
        slot: u32,
        full_filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
        now: Instant,
    ) -> SubscribeResult {
        if wire::topic::validate_filter(full_filter).is_err() {
            return SubscribeResult::Refused(ReasonCode::TopicFilterInvalid);
        }
        let shared = match wire::topic::parse_shared(full_filter) {
            Ok(s) => s.map(|s| (Arc::<str>::from(s.group), s.filter.to_owned())),
            Err(_) => return SubscribeResult::Refused(ReasonCode::TopicFilterInvalid),
        };
        let topic_filter: &str = match &shared {
            Some((_, f)) => f,
            None => full_filter,
        };
        // Borrowed, not cloned: cloning the id would add a shared-ownership header to it.
        let client_id = self.session(slot).map_or("", |s| s.client_id.as_str());
        if !self
            .authorizer
            .may_subscribe(client_id, topic_filter, full_filter)
        {
            self.counters.subscriptions_refused += 1;
            return SubscribeResult::Refused(ReasonCode::NotAuthorized);
        }
        // No-local on a shared subscription is a protocol error [MQTT-3.8.3-4].
        if shared.is_some() && options.no_local {
            return SubscribeResult::Refused(ReasonCode::ProtocolError);
        }
        let subscriber = Subscriber { slot, options, id };
        let entry = self
            .subs
            .get_or_insert_with(topic_filter, FilterEntry::default);
        let mut existed = false;
        let mut route_change = None;
        match &shared {
            None => {
                if let Some(s) = entry.subscribers.iter_mut().find(|s| s.slot == slot) {
                    *s = subscriber;
                    existed = true;
                } else {
                    entry.subscribers.push(subscriber);
                    if entry.subscribers.len() == 1 {
                        route_change = Some(None);
                    }
                }
            }
            Some((group, _)) => {
                let pos = entry.groups.iter().position(|g| g.group == *group);
                let g = match pos {
                    Some(p) => &mut entry.groups[p],
                    None => {
                        entry.groups.push(LocalGroup {
                            group: group.clone(),
                            members: SmallVec::new(),
                            next: Cell::new(0),
                        });
                        let last = entry.groups.len() - 1;
                        &mut entry.groups[last]
                    }
                };
                if let Some(m) = g.members.iter_mut().find(|m| m.slot == slot) {
                    *m = subscriber;
                    existed = true;
                } else {
                    g.members.push(subscriber);
                    if g.members.len() == 1 {
                        route_change = Some(Some(group.clone()));
                    }
                }
            }
        }
        let route_changed = route_change.is_some();
        if let Some(group) = route_change {
            self.change_route(Arc::from(topic_filter), group, true);
        }
        if let Some(session) = self.session_mut(slot) {
            match session
                .subscriptions
                .iter_mut()
                .find(|s| &*s.filter == full_filter)
            {
                Some(s) => {
                    s.options = options;
                    s.id = id;
                }
                None => session.subscriptions.push(SessionSubscription {
                    filter: full_filter.into(),
                    options,
                    id,
                }),
            }
        }
        // Retained messages: not for shared subscriptions; per retain handling otherwise.
        let send_retained = shared.is_none()
            && match options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendAtSubscribeIfNew => !existed,
                RetainHandling::DoNotSend => false,
            };
        if send_retained {
            self.queue_retained(slot, topic_filter, options.qos, id, now);
        }
        SubscribeResult::Granted {
            qos: options.qos,
            route_changed,
        }
    }

    fn queue_retained(
        &mut self,
        slot: u32,
        filter: &str,
        granted: QoS,
        id: Option<u32>,
        now: Instant,
    ) {
        let mut owed: Vec<Delivery> = Vec::new();
        self.retained.for_each_name_matching(filter, |_, r| {
            if r.0.expires_at.is_some_and(|at| at <= now) {
                return;
            }
            owed.push(Delivery {
                message: r.0.clone(),
                qos: r.0.publish.qos.min(granted),
                // [MQTT-3.3.1-9]: retained messages sent on subscribe carry RETAIN=1.
                retain: true,
                subscription_ids: id.into_iter().collect(),
            });
        });
        if owed.is_empty() {
            return;
        }
        if let Some(session) = self.session_mut(slot) {
            session.traffic_mut().retained_pending.extend(owed);
            session.wake();
        }
    }

    /// Removes one subscription of session `slot`. Returns whether it existed.
    pub fn unsubscribe(&mut self, slot: u32, full_filter: &str) -> bool {
        let existed = match self.session_mut(slot) {
            Some(session) => {
                let before = session.subscriptions.len();
                session.subscriptions.retain(|s| &*s.filter != full_filter);
                before != session.subscriptions.len()
            }
            None => false,
        };
        if existed {
            self.remove_subscription(slot, full_filter);
        }
        existed
    }

    fn remove_subscription(&mut self, slot: u32, full_filter: &str) {
        let shared = wire::topic::parse_shared(full_filter)
            .ok()
            .flatten()
            .map(|s| (s.group.to_owned(), s.filter.to_owned()));
        let topic_filter: &str = match &shared {
            Some((_, f)) => f,
            None => full_filter,
        };
        let Some(entry) = self.subs.get_mut(topic_filter) else {
            return;
        };
        let mut route_change = None;
        match &shared {
            None => {
                let before = entry.subscribers.len();
                entry.subscribers.retain(|s| s.slot != slot);
                if before > 0 && entry.subscribers.is_empty() {
                    route_change = Some(None);
                }
            }
            Some((group, _)) => {
                if let Some(pos) = entry
                    .groups
                    .iter()
                    .position(|g| &*g.group == group.as_str())
                {
                    let g = &mut entry.groups[pos];
                    let before = g.members.len();
                    g.members.retain(|m| m.slot != slot);
                    if before > 0 && g.members.is_empty() {
                        route_change = Some(Some(g.group.clone()));
                        entry.groups.remove(pos);
                    }
                }
            }
        }
        if entry.subscribers.is_empty() && entry.groups.is_empty() {
            self.subs.remove(topic_filter);
        }
        if let Some(group) = route_change {
            self.change_route(Arc::from(topic_filter), group, false);
        }
    }

    // ----- the route table ------------------------------------------------------------------

    /// Applies a 0↔1 transition of this shard locally and tells every other shard.
    fn change_route(&mut self, filter: Arc<str>, group: Option<Arc<str>>, present: bool) {
        let change = RouteChange {
            shard: self.id,
            filter,
            group,
            present,
        };
        self.apply_route(&change);
        for shard in 0..self.shard_count {
            if shard != self.id {
                self.send_to(shard, ShardMsg::Route(change.clone()));
            }
        }
    }

    /// Applies a route change from any shard (including this one).
    pub fn apply_route(&mut self, change: &RouteChange) {
        // Local normal subscribers are found through `subs`; the route table only needs other
        // shards' interest (and every shard's shared groups, to pick one), which saves an entry
        // per filter.
        if change.group.is_none() && change.shard == self.id {
            return;
        }
        let b = bit(change.shard);
        let entry = self
            .routes
            .get_or_insert_with(&change.filter, RouteEntry::default);
        if change.group.is_some() {
            entry.filter.get_or_insert_with(|| change.filter.clone());
        }
        match &change.group {
            None => {
                if change.present {
                    entry.shards |= b;
                } else {
                    entry.shards &= !b;
                }
            }
            Some(group) => {
                let pos = entry.groups.iter().position(|g| g.group == *group);
                match (pos, change.present) {
                    (Some(p), true) => entry.groups[p].shards |= b,
                    (None, true) => entry.groups.push(GroupRoute {
                        group: group.clone(),
                        shards: b,
                        next: Cell::new(0),
                    }),
                    (Some(p), false) => {
                        entry.groups[p].shards &= !b;
                        if entry.groups[p].shards == 0 {
                            entry.groups.remove(p);
                        }
                    }
                    (None, false) => {}
                }
            }
        }
        if entry.groups.is_empty() {
            entry.filter = None;
        }
        if entry.shards == 0 && entry.groups.is_empty() {
            self.routes.remove(&change.filter);
        }
    }

    /// Starts a barrier: every other shard acknowledges once it has applied what this shard sent
    /// it before. Returns None on a single-shard broker.
    pub fn start_barrier(&mut self) -> Option<u64> {
        if self.shard_count <= 1 {
            return None;
        }
        let barrier = self.next_barrier;
        self.next_barrier += 1;
        self.barriers.insert(barrier, (self.shard_count - 1, None));
        for shard in 0..self.shard_count {
            if shard != self.id {
                self.send_to(
                    shard,
                    ShardMsg::RouteBarrier {
                        from: self.id,
                        barrier,
                    },
                );
            }
        }
        Some(barrier)
    }

    pub fn ack_barrier(&mut self, barrier: u64) {
        if let Some((missing, waker)) = self.barriers.get_mut(&barrier) {
            *missing = missing.saturating_sub(1);
            if *missing == 0 {
                if let Some(w) = waker.take() {
                    w.wake();
                }
            }
        }
    }

    // ----- cross-shard sends ----------------------------------------------------------------

    /// Queues `msg` for shard `to`, flushed at the end of this loop turn. Returns false (and
    /// drops it) when that outbox is at its limit.
    pub fn send_to(&mut self, to: ShardId, msg: ShardMsg) -> bool {
        let limit = self.limits.cross_shard_outbox_len_max as usize;
        let Some(outbox) = self.outboxes.get_mut(usize::from(to)) else {
            return false;
        };
        // Route changes, barriers and hand-offs must never be dropped: only publishes are.
        let droppable = matches!(msg, ShardMsg::Publish { .. } | ShardMsg::Stats { .. });
        if droppable && outbox.len() >= limit {
            if let ShardMsg::Publish { message, .. } = &msg {
                self.counters
                    .drop(message.publish.qos, DropReason::CrossShardFull);
            }
            return false;
        }
        outbox.push(msg);
        self.counters.cross_shard_sent += 1;
        if let Some(w) = self
            .flushers
            .get_mut(usize::from(to))
            .and_then(Option::take)
        {
            w.wake();
        }
        true
    }

    // ----- publishing -----------------------------------------------------------------------

    /// Routes a message accepted on this shard: retained store, local subscribers, other shards.
    /// Returns the number of subscriptions matched here plus shards it was sent to (0 = no
    /// matching subscribers, for v5 PUBACK 0x10).
    pub fn publish(&mut self, message: Arc<Message>, now: Instant) -> usize {
        if message.publish.retain {
            self.store_retained(&message);
            for shard in 0..self.shard_count {
                if shard != self.id {
                    self.send_to(shard, ShardMsg::Retain(message.clone()));
                }
            }
        }
        let topic = message.publish.topic.clone();
        // Remote interest and shared-group picks from the route table.
        let me = self.id;
        let mut remote: ShardMask = 0;
        let mut picks: SmallVec<[(ShardId, SharedPick); 2]> = SmallVec::new();
        self.routes.for_each_match(topic.as_str(), |entry| {
            remote |= entry.shards & !bit(me);
            for g in &entry.groups {
                if let Some(shard) = pick_shard(g.shards, &g.next) {
                    if let Some(filter) = &entry.filter {
                        picks.push((
                            shard,
                            SharedPick {
                                filter: filter.clone(),
                                group: g.group.clone(),
                                hops: 0,
                            },
                        ));
                    }
                }
            }
        });
        let mut matched = 0usize;
        let mut local_picks: SmallVec<[SharedPick; 1]> = SmallVec::new();
        for shard in 0..self.shard_count {
            let normal = remote & bit(shard) != 0;
            let mut shared: SmallVec<[SharedPick; 1]> = SmallVec::new();
            for (s, pick) in picks.iter() {
                if *s == shard {
                    shared.push(pick.clone());
                }
            }
            if shard == me {
                local_picks = shared;
                continue;
            }
            if normal || !shared.is_empty() {
                matched += 1;
                self.send_to(
                    shard,
                    ShardMsg::Publish {
                        message: message.clone(),
                        normal,
                        shared,
                    },
                );
            }
        }
        matched += self.deliver_local(&message, true, &local_picks, now);
        if matched == 0 {
            self.counters
                .drop(message.publish.qos, DropReason::NoSubscribers);
        }
        matched
    }

    /// Delivers a message to this shard's subscribers: normal ones when `normal`, plus one member
    /// of each picked group. Returns how many sessions got it.
    pub fn deliver_local(
        &mut self,
        message: &Arc<Message>,
        normal: bool,
        picks: &[SharedPick],
        now: Instant,
    ) -> usize {
        let topic = message.publish.topic.clone();
        self.merge.clear();
        let mut single: SmallVec<[Subscriber; 1]> = SmallVec::new();
        let mut matched_entries = 0usize;
        let merge = &mut self.merge;
        if normal {
            let mut first: Option<&FilterEntry> = None;
            self.subs.for_each_match(topic.as_str(), |entry| {
                if entry.subscribers.is_empty() {
                    return;
                }
                matched_entries += 1;
                if matched_entries == 1 {
                    first = Some(entry);
                    return;
                }
                if let Some(f) = first.take() {
                    merge_into(merge, f);
                }
                merge_into(merge, entry);
            });
            if let Some(f) = first {
                // The common case: one filter matched, no overlap to merge.
                single.extend(f.subscribers.iter().copied());
            }
        }
        let mut delivered = 0usize;
        let mut frames = FrameCache::default();
        for s in single.drain(..) {
            delivered += self.enqueue(
                s.slot,
                message,
                s.options.qos,
                s.options.retain_as_published,
                s.options.no_local,
                s.id.into_iter().collect(),
                &mut frames,
                now,
            );
        }
        let merged: Vec<(u32, Merged)> = self.merge.drain().collect();
        for (slot, (qos, rap, ids, no_local)) in merged {
            delivered += self.enqueue(slot, message, qos, rap, no_local, ids, &mut frames, now);
        }
        for pick in picks {
            delivered += self.deliver_shared(message, pick, &mut frames, now);
        }
        delivered
    }

    fn deliver_shared(
        &mut self,
        message: &Arc<Message>,
        pick: &SharedPick,
        frames: &mut FrameCache,
        now: Instant,
    ) -> usize {
        let member = self.subs.get(&pick.filter).and_then(|entry| {
            let g = entry.groups.iter().find(|g| g.group == pick.group)?;
            if g.members.is_empty() {
                return None;
            }
            let n = g.next.get();
            g.next.set(n.wrapping_add(1));
            Some(g.members[n as usize % g.members.len()])
        });
        match member {
            Some(m) => self.enqueue(
                m.slot,
                message,
                m.options.qos,
                m.options.retain_as_published,
                false,
                m.id.into_iter().collect(),
                frames,
                now,
            ),
            None => {
                // The member left after the publisher picked this shard: pass the pick on to
                // another shard that still has members, at most once per shard.
                let shards = self
                    .routes
                    .get(&pick.filter)
                    .and_then(|e| e.groups.iter().find(|g| g.group == pick.group))
                    .map(|g| (g.shards & !bit(self.id), &g.next));
                let next = shards.and_then(|(mask, cursor)| pick_shard(mask, cursor));
                match next {
                    Some(shard) if usize::from(pick.hops) < usize::from(self.shard_count) => {
                        let mut forwarded = pick.clone();
                        forwarded.hops += 1;
                        let mut shared = SmallVec::new();
                        shared.push(forwarded);
                        self.send_to(
                            shard,
                            ShardMsg::Publish {
                                message: message.clone(),
                                normal: false,
                                shared,
                            },
                        );
                        1
                    }
                    _ => 0,
                }
            }
        }
    }

    /// Puts one delivery on a session's queue, applying no-local, QoS downgrade and the queue
    /// bound. Returns 1 if the session took it.
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &mut self,
        slot: u32,
        message: &Arc<Message>,
        granted: QoS,
        retain_as_published: bool,
        no_local: bool,
        subscription_ids: SmallVec<[u32; 1]>,
        frames: &mut FrameCache,
        now: Instant,
    ) -> usize {
        let queue_max = self.limits.session_queue_len_max as usize;
        let queue_qos0_offline = self.limits.queue_qos0_offline;
        let Some(entry) = self.slots.get_mut(slot as usize) else {
            return 0;
        };
        let Some(session) = entry.session.as_deref_mut() else {
            return 0;
        };
        // [MQTT-3.8.3-3] no-local: not to the publisher's own session.
        if no_local && message.origin == Some(session.key) {
            return 0;
        }
        let qos = message.publish.qos.min(granted);
        // [MQTT-3.3.1-12]/[MQTT-3.3.1-13]: RETAIN as published only when asked for.
        let retain = retain_as_published && message.publish.retain;
        let online = session.link.is_some();
        if !online && qos == QoS::AtMostOnce && !queue_qos0_offline {
            self.counters.drop(qos, DropReason::Offline);
            return 0;
        }
        if session.queue_len() >= queue_max {
            self.counters.drop(qos, DropReason::QueueFull);
            return 0;
        }
        let shape_is_shared = qos == QoS::AtMostOnce
            && subscription_ids.is_empty()
            && message.expires_at.is_none()
            && (session.peer.version != ProtocolVersion::V5 || session.peer.topic_alias_max == 0);
        let outbound = if shape_is_shared {
            match frames.get(message, session.peer.version, retain) {
                Some(frame) => Outbound::Frame(frame),
                None => {
                    self.counters.drop(qos, DropReason::EncodeFailed);
                    return 0;
                }
            }
        } else {
            let message = if online {
                message.clone()
            } else {
                frames.compacted(message)
            };
            Outbound::Deliver(Delivery {
                message,
                qos,
                retain,
                subscription_ids,
            })
        };
        session.traffic_mut().queue.push_back(outbound);
        session.wake();
        let _ = now;
        1
    }

    // ----- retained -------------------------------------------------------------------------

    /// Stores, replaces or (empty payload [MQTT-3.3.1-10]) clears a retained message.
    pub fn store_retained(&mut self, message: &Arc<Message>) {
        let topic = message.publish.topic.as_str();
        if message.publish.payload.is_empty() {
            self.retained.remove(topic);
            return;
        }
        if let Some(existing) = self.retained.get_mut(topic) {
            // Last writer wins across shards.
            if existing.0.received_at <= message.received_at {
                *existing = Retained(Arc::new(message.compacted()));
            }
            return;
        }
        if self.retained.len() >= self.limits.retained_max as usize {
            self.counters
                .drop(message.publish.qos, DropReason::QueueFull);
            self.counters.retained_refused += 1;
            return;
        }
        self.retained
            .insert(topic, Retained(Arc::new(message.compacted())));
    }

    /// Applies a retained update from another shard.
    pub fn apply_retain(&mut self, message: &Arc<Message>) {
        let topic = message.publish.topic.as_str();
        if message.publish.payload.is_empty() {
            if self
                .retained
                .get(topic)
                .is_some_and(|r| r.0.received_at <= message.received_at)
            {
                self.retained.remove(topic);
            }
            return;
        }
        self.store_retained(message);
    }

    /// A snapshot of this shard's figures for `$SYS`.
    pub fn stats(&self) -> ShardStats {
        ShardStats {
            connections: u64::from(self.connections),
            sessions_offline: self
                .sessions_total()
                .saturating_sub(u64::from(self.connections)),
            subscriptions: self.subscription_count(),
            retained: self.retained_count(),
            messages_received: self.counters.messages_received.iter().sum(),
            messages_sent: self.counters.messages_sent.iter().sum(),
            messages_dropped: self.counters.dropped_total(),
            bytes_received: self.counters.bytes_received,
            bytes_sent: self.counters.bytes_sent,
        }
    }

    // ----- parking -----------------------------------------------------------------------

    /// Takes parked connection (`slot`, `generation`) out of its session (or out of the
    /// taken-over list) to be served again. None if it is not parked (already resumed, closed).
    pub fn take_parked(&mut self, slot: u32, generation: u32) -> Option<Unparked> {
        if let Some(i) = self
            .orphans
            .iter()
            .position(|o| o.slot == slot && o.generation == generation)
        {
            let o = self.orphans.swap_remove(i);
            self.parked = self.parked.saturating_sub(1);
            self.counters.unparks += 1;
            return Some(Unparked {
                slot,
                generation,
                key: o.key,
                version: o.version,
                fd: o.conn.fd,
                aliases_in: o.conn.aliases_in,
                closing: Some(CloseReason::SessionTakenOver),
            });
        }
        let session = self.linked_session_mut(slot, generation)?;
        let version = session.peer.version;
        let key = session.key;
        let link = session.link.as_mut()?;
        let conn = link.parked.take()?;
        // The resumed task registers its own waker on its first poll.
        link.waker = None;
        link.idle_mark = false;
        self.parked = self.parked.saturating_sub(1);
        self.counters.unparks += 1;
        Some(Unparked {
            slot,
            generation,
            key,
            version,
            fd: conn.fd,
            aliases_in: conn.aliases_in,
            closing: None,
        })
    }

    /// Records connection (`slot`, `generation`) as parked; false (nothing kept) if it is no
    /// longer the session's connection.
    pub fn set_parked(
        &mut self,
        slot: u32,
        generation: u32,
        conn: ParkedConn,
        waker: std::task::Waker,
    ) -> Result<(), ParkedConn> {
        let Some(session) = self.linked_session_mut(slot, generation) else {
            return Err(conn);
        };
        session.shed_traffic();
        let Some(link) = session.link.as_mut() else {
            return Err(conn);
        };
        link.parked = Some(conn);
        link.waker = Some(waker);
        link.park_requested = false;
        self.parked += 1;
        self.counters.parks += 1;
        Ok(())
    }

    /// The idle sweep: walks the share of the sessions that `elapsed` owes (a whole pass per
    /// `limits.park_after_idle_secs`). A connection without a read or write since the sweep last
    /// marked it is asked to park, so it parks after one to two periods of silence.
    pub fn sweep_idle(&mut self, elapsed: Duration) {
        let period = Duration::from_secs(u64::from(self.limits.park_after_idle_secs));
        if period.is_zero() || self.slots.is_empty() {
            return;
        }
        self.sweep_owed += elapsed;
        let total = self.slots.len();
        let due = (total as u128 * self.sweep_owed.as_micros() / period.as_micros().max(1))
            .min(total as u128) as usize;
        if due == 0 {
            return;
        }
        self.sweep_owed = Duration::ZERO;
        for _ in 0..due {
            if self.sweep_cursor >= total {
                self.sweep_cursor = 0;
            }
            let slot = &mut self.slots[self.sweep_cursor];
            self.sweep_cursor += 1;
            let Some(link) = slot.session.as_deref_mut().and_then(|s| s.link.as_mut()) else {
                continue;
            };
            if link.parked.is_some() || link.close.is_some() {
                continue;
            }
            if !link.idle_mark {
                link.idle_mark = true;
            } else if !link.park_requested {
                link.park_requested = true;
                if let Some(w) = link.waker.take() {
                    w.wake();
                }
            }
        }
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

fn pick_shard(mask: ShardMask, cursor: &Cell<u32>) -> Option<ShardId> {
    let count = mask.count_ones();
    if count == 0 {
        return None;
    }
    let n = cursor.get();
    cursor.set(n.wrapping_add(1));
    let mut skip = n % count;
    let mut m = mask;
    loop {
        let shard = m.trailing_zeros();
        if skip == 0 {
            return Some(shard as ShardId);
        }
        skip -= 1;
        m &= m - 1;
    }
}

fn merge_into(merge: &mut AHashMap<u32, Merged>, entry: &FilterEntry) {
    for s in &entry.subscribers {
        let slot = merge
            .entry(s.slot)
            .or_insert((QoS::AtMostOnce, false, SmallVec::new(), true));
        // One copy at the highest granted QoS, carrying every subscription identifier
        // [MQTT-3.3.4-2], [MQTT-3.3.4-3].
        slot.0 = slot.0.max(s.options.qos);
        slot.1 |= s.options.retain_as_published;
        slot.3 &= s.options.no_local;
        if let Some(id) = s.id {
            slot.2.push(id);
        }
    }
}

/// What one routed message needs once however many sessions get it: QoS 0 frames encoded per
/// (protocol family, RETAIN), and the compacted copy offline sessions store.
#[derive(Default)]
struct FrameCache {
    frames: [Option<Bytes>; 4],
    compacted: Option<Arc<Message>>,
}

impl FrameCache {
    /// The copy kept by offline sessions, made once per routed message rather than per session.
    fn compacted(&mut self, message: &Message) -> Arc<Message> {
        self.compacted
            .get_or_insert_with(|| Arc::new(message.compacted()))
            .clone()
    }

    fn get(&mut self, message: &Message, version: ProtocolVersion, retain: bool) -> Option<Bytes> {
        let index = usize::from(version == ProtocolVersion::V5) * 2 + usize::from(retain);
        if let Some(f) = &self.frames[index] {
            return Some(f.clone());
        }
        let mut publish = message.publish.clone();
        publish.qos = QoS::AtMostOnce;
        publish.dup = false;
        publish.retain = retain;
        publish.packet_id = None;
        let packet = wire::Packet::Publish(publish);
        let len = wire::encoded_len(&packet, version).ok()?;
        let mut out = BytesMut::with_capacity(len);
        wire::encode(&packet, version, &mut out).ok()?;
        let frame = out.freeze();
        self.frames[index] = Some(frame.clone());
        Some(frame)
    }
}
