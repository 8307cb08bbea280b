//! SWIM membership over `foca`, without I/O: datagrams and time in, datagrams, a deadline and
//! up/down edges out.
//!
//! foca's notifications are hints: after each one, and every `reconcile_period_ms`, the member
//! list is re-read and compared with the view we last reported, so each change produces exactly
//! one `MemberUp` / `MemberDown` edge even if a notification was missed or reordered. The view is
//! keyed by [`NodeId`]: of several live identities with one id the highest generation is the
//! member, and a replaced identity is reported down before its successor is reported up.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::{Duration, Instant};

use foca::{Codec as _, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec, Timer};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::auth::Secret;
use crate::codec::{self, CodecError, GOSSIP_PAYLOAD_MAX};
use crate::config::ClusterConfig;
use crate::identity::{NodeId, NodeIdentity};

/// Datagrams waiting for the runtime to send; past this they are dropped and counted (UDP would
/// lose them anyway, SWIM retries).
pub const DATAGRAM_QUEUE_MAX: usize = 4096;
/// foca timers pending; foca keeps O(members) of them, this only guards against a bug.
pub const TIMER_QUEUE_MAX: usize = 65_536;
/// Events waiting for the caller; past this the oldest is dropped (the view is still reconciled).
pub const EVENT_QUEUE_MAX: usize = 4096;
/// Seed announce rounds, while alone, before `SeedsUnreachable` is reported (once).
pub const SEED_ATTEMPTS_BEFORE_REPORT: u32 = 5;
/// Remembered identities announced to per round while not connected.
pub const ANNOUNCE_ROUND_MEMBERS_MAX: usize = 64;
/// Distinct addresses remembered as duplicates of our own id (each reported once).
pub const SELF_DUPLICATES_MAX: usize = 64;

/// What the membership driver tells the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A member (this identity, this generation) is up.
    MemberUp(NodeIdentity),
    /// A member identity is down: it died, left, or was replaced by a higher generation.
    MemberDown(NodeIdentity),
    /// Two live processes use one `node_id` from different addresses: an operator error.
    DuplicateNodeId {
        node_id: NodeId,
        addrs: Vec<SocketAddr>,
    },
    /// The cluster had declared us down; we rejoined with this new identity (next generation).
    Rejoined(NodeIdentity),
    /// No seed answered after several rounds: we run alone until one does.
    SeedsUnreachable {
        seeds: Vec<SocketAddr>,
        attempts: u32,
    },
}

/// Counters for metrics; they only grow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MembershipStats {
    /// Datagrams whose tag did not verify (no or wrong secret), dropped.
    pub datagrams_bad_tag: u64,
    /// Authenticated datagrams foca refused.
    pub datagrams_refused: u64,
    /// Datagrams dropped because the send queue was full.
    pub datagrams_dropped_queue_full: u64,
    pub datagrams_received: u64,
    pub datagrams_sent: u64,
    pub timers_dropped: u64,
    pub events_dropped: u64,
}

/// Collects what foca asks for during one call.
struct Collector<'a> {
    secret: &'a Secret,
    now: Instant,
    datagrams: &'a mut VecDeque<(SocketAddr, Vec<u8>)>,
    timers: &'a mut BTreeMap<(Instant, u64), Timer<NodeIdentity>>,
    timer_seq: &'a mut u64,
    notifications: &'a mut Vec<OwnedNotification<NodeIdentity>>,
    stats: &'a mut MembershipStats,
}

impl foca::Runtime<NodeIdentity> for Collector<'_> {
    fn notify(&mut self, notification: foca::Notification<'_, NodeIdentity>) {
        self.notifications.push(notification.to_owned());
    }

    fn send_to(&mut self, to: NodeIdentity, data: &[u8]) {
        if self.datagrams.len() >= DATAGRAM_QUEUE_MAX {
            self.stats.datagrams_dropped_queue_full += 1;
            return;
        }
        match codec::seal_datagram(self.secret, data) {
            Ok(datagram) => {
                self.stats.datagrams_sent += 1;
                self.datagrams.push_back((to.gossip_addr, datagram));
            }
            Err(error) => tracing::warn!(%error, "gossip payload does not fit a datagram"),
        }
    }

    fn submit_after(&mut self, event: Timer<NodeIdentity>, after: Duration) {
        if self.timers.len() >= TIMER_QUEUE_MAX {
            self.stats.timers_dropped += 1;
            return;
        }
        *self.timer_seq += 1;
        self.timers
            .insert((self.now + after, *self.timer_seq), event);
    }
}

/// Converts our config to foca's, with the extensions the design needs turned on.
fn foca_config(config: &ClusterConfig) -> foca::Config {
    let ms = Duration::from_millis;
    let members = |n| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
    foca::Config {
        probe_period: ms(config.probe_period_ms),
        probe_rtt: ms(config.probe_rtt_ms),
        num_indirect_probes: members(3),
        max_transmissions: NonZeroU8::new(8).unwrap_or(NonZeroU8::MIN),
        suspect_to_down_after: ms(config.suspect_timeout_ms),
        // Down identities are remembered a day so announces to them can heal long partitions.
        remove_down_after: Some(Duration::from_secs(24 * 3600)),
        max_packet_size: members(GOSSIP_PAYLOAD_MAX),
        notify_down_members: true,
        periodic_announce: Some(foca::PeriodicParams {
            frequency: ms(config.announce_period_ms),
            num_members: members(1),
        }),
        periodic_announce_to_down_members: Some(foca::PeriodicParams {
            frequency: ms(config.announce_down_period_ms),
            num_members: members(2),
        }),
        periodic_gossip: Some(foca::PeriodicParams {
            frequency: ms(config.gossip_period_ms),
            num_members: members(3),
        }),
    }
}

/// The SWIM driver. One per node; runs on one shard.
pub struct Membership {
    foca: Foca<NodeIdentity, PostcardCodec, SmallRng, NoCustomBroadcast>,
    secret: Secret,
    seeds: Vec<SocketAddr>,
    probe_period: Duration,
    reconcile_period: Duration,
    /// How long two live identities may share an id before we call it a duplicate: longer than
    /// a dead process's identity takes to be declared down.
    duplicate_after: Duration,
    datagrams: VecDeque<(SocketAddr, Vec<u8>)>,
    timers: BTreeMap<(Instant, u64), Timer<NodeIdentity>>,
    timer_seq: u64,
    notifications: Vec<OwnedNotification<NodeIdentity>>,
    /// The members we last reported up, by id; edges are emitted against it.
    view: BTreeMap<NodeId, NodeIdentity>,
    /// Ids seen live at several addresses: since when, and whether it was reported.
    conflicts: BTreeMap<NodeId, (Instant, bool)>,
    self_duplicates: BTreeSet<SocketAddr>,
    next_reconcile: Instant,
    next_seed_announce: Instant,
    seed_attempts: u32,
    /// foca's connection state as its notifications tell it (it has no getter): false at start,
    /// after `Idle`, and after a rejoin, where foca keeps its members but stops its timers
    /// until some member answers the new identity.
    connected: bool,
    events: VecDeque<MembershipEvent>,
    stats: MembershipStats,
}

impl Membership {
    /// `seed` makes foca's random choices reproducible (the simulation prints it).
    pub fn new(
        identity: NodeIdentity,
        config: &ClusterConfig,
        secret: Secret,
        seed: u64,
        now: Instant,
    ) -> Self {
        let foca = Foca::new(
            identity,
            foca_config(config),
            SmallRng::seed_from_u64(seed),
            PostcardCodec,
        );
        Self {
            foca,
            secret,
            seeds: config.other_seeds().collect(),
            probe_period: Duration::from_millis(config.probe_period_ms),
            reconcile_period: Duration::from_millis(config.reconcile_period_ms),
            duplicate_after: Duration::from_millis(
                config.suspect_timeout_ms + 2 * config.probe_period_ms,
            ),
            datagrams: VecDeque::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            notifications: Vec::new(),
            view: BTreeMap::new(),
            conflicts: BTreeMap::new(),
            self_duplicates: BTreeSet::new(),
            next_reconcile: now + Duration::from_millis(config.reconcile_period_ms),
            next_seed_announce: now,
            seed_attempts: 0,
            connected: false,
            events: VecDeque::new(),
            stats: MembershipStats::default(),
        }
    }

    /// Runs `f` against foca with a collecting runtime, then turns notifications into edges.
    fn with_foca(
        &mut self,
        now: Instant,
        f: impl FnOnce(
            &mut Foca<NodeIdentity, PostcardCodec, SmallRng, NoCustomBroadcast>,
            &mut Collector<'_>,
        ) -> Result<(), foca::Error>,
    ) {
        let mut collector = Collector {
            secret: &self.secret,
            now,
            datagrams: &mut self.datagrams,
            timers: &mut self.timers,
            timer_seq: &mut self.timer_seq,
            notifications: &mut self.notifications,
            stats: &mut self.stats,
        };
        if let Err(error) = f(&mut self.foca, &mut collector) {
            self.stats.datagrams_refused += 1;
            tracing::debug!(%error, "foca refused input");
        }
        self.after_notifications(now);
    }

    fn after_notifications(&mut self, now: Instant) {
        if self.notifications.is_empty() {
            return;
        }
        for notification in std::mem::take(&mut self.notifications) {
            match notification {
                OwnedNotification::Rejoin(identity) => {
                    tracing::info!(identity = %identity, "rejoined the cluster with a new generation");
                    self.connected = false;
                    self.next_seed_announce = now;
                    self.push_event(MembershipEvent::Rejoined(identity));
                }
                OwnedNotification::Defunct => {
                    self.connected = false;
                    tracing::warn!("declared down by the cluster and cannot rejoin");
                }
                OwnedNotification::Active => {
                    self.connected = true;
                    self.seed_attempts = 0;
                }
                OwnedNotification::Idle => {
                    self.connected = false;
                    self.next_seed_announce = now;
                }
                _ => {}
            }
        }
        self.reconcile(now);
    }

    fn push_event(&mut self, event: MembershipEvent) {
        if self.events.len() >= EVENT_QUEUE_MAX {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(event);
    }

    /// Announces to the configured seeds (and again, while not connected, every two probe
    /// periods).
    pub fn join(&mut self, now: Instant) {
        self.next_seed_announce = now;
        self.announce_round(now);
    }

    /// While not connected: announce to the seeds and to every identity foca still remembers
    /// (an announce is accepted by whoever now holds that address, whatever its generation).
    /// This is what gets a node out of a rejoin after which everyone it knew changed identity too.
    fn announce_round(&mut self, now: Instant) {
        if now < self.next_seed_announce {
            return;
        }
        let known: Vec<NodeIdentity> = self
            .foca
            .iter_membership_state()
            .map(|member| *member.id())
            .filter(|id| !self.seeds.contains(&id.gossip_addr))
            .take(ANNOUNCE_ROUND_MEMBERS_MAX)
            .collect();
        if self.seeds.is_empty() && known.is_empty() {
            return;
        }
        self.next_seed_announce = now + 2 * self.probe_period;
        self.seed_attempts += 1;
        if self.seed_attempts == SEED_ATTEMPTS_BEFORE_REPORT && !self.seeds.is_empty() {
            tracing::warn!(seeds = ?self.seeds, attempts = self.seed_attempts, "no cluster seed answers");
            self.push_event(MembershipEvent::SeedsUnreachable {
                seeds: self.seeds.clone(),
                attempts: self.seed_attempts,
            });
        }
        for seed in self.seeds.clone() {
            self.with_foca(now, |foca, rt| {
                foca.announce(NodeIdentity::seed_placeholder(seed), rt)
            });
        }
        for member in known {
            self.with_foca(now, |foca, rt| foca.announce(member, rt));
        }
    }

    /// One UDP datagram from `from`. A datagram whose tag does not verify is dropped and counted.
    pub fn handle_datagram(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) {
        let payload = match codec::open_datagram(&self.secret, datagram) {
            Ok(payload) => payload,
            Err(CodecError::BadTag) => {
                self.stats.datagrams_bad_tag += 1;
                tracing::debug!(%from, "gossip datagram failed authentication, dropped");
                return;
            }
            Err(error) => {
                self.stats.datagrams_refused += 1;
                tracing::debug!(%from, %error, "malformed gossip datagram, dropped");
                return;
            }
        };
        self.stats.datagrams_received += 1;
        self.check_self_duplicate(payload);
        let payload = payload.to_vec();
        self.with_foca(now, |foca, rt| foca.handle_data(&payload, rt));
    }

    /// A datagram sent by a live process with our id but another address: we are alive, so it is
    /// not a restart of us, it is a second node configured with our id.
    fn check_self_duplicate(&mut self, payload: &[u8]) {
        let Ok(header) = PostcardCodec.decode_header(payload) else {
            return;
        };
        let me = *self.foca.identity();
        let src: NodeIdentity = header.src;
        if src.node_id != me.node_id || src.gossip_addr == me.gossip_addr {
            return;
        }
        if self.self_duplicates.len() >= SELF_DUPLICATES_MAX
            || !self.self_duplicates.insert(src.gossip_addr)
        {
            return;
        }
        tracing::error!(node_id = %me.node_id, other = %src.gossip_addr, "another node uses our node_id");
        self.push_event(MembershipEvent::DuplicateNodeId {
            node_id: me.node_id,
            addrs: vec![me.gossip_addr, src.gossip_addr],
        });
    }

    /// Fires due timers and periodic work.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            self.with_foca(now, |foca, rt| match foca.handle_timer(timer, rt) {
                // A probe timer that fires while we are alone is expected, not an error.
                Err(foca::Error::NotConnected) => Ok(()),
                other => other,
            });
        }
        if now >= self.next_reconcile {
            self.next_reconcile = now + self.reconcile_period;
            self.reconcile(now);
        }
        if !self.connected {
            self.announce_round(now);
        }
    }

    /// The earliest instant `handle_timeout` has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = self.next_reconcile;
        if let Some(((at, _), _)) = self.timers.first_key_value() {
            next = next.min(*at);
        }
        if !self.connected {
            next = next.min(self.next_seed_announce);
        }
        Some(next)
    }

    /// Re-reads foca's member list and emits the edges between it and our view.
    fn reconcile(&mut self, now: Instant) {
        let me = *self.foca.identity();
        let mut best: BTreeMap<NodeId, NodeIdentity> = BTreeMap::new();
        let mut addrs: BTreeMap<NodeId, BTreeSet<SocketAddr>> = BTreeMap::new();
        for member in self.foca.iter_members() {
            let id = *member.id();
            if id.node_id == me.node_id || id.is_placeholder() {
                continue;
            }
            addrs.entry(id.node_id).or_default().insert(id.gossip_addr);
            let slot = best.entry(id.node_id).or_insert(id);
            if id.generation > slot.generation {
                *slot = id;
            }
        }
        let old_view = std::mem::take(&mut self.view);
        for (node_id, old) in &old_view {
            if best.get(node_id) != Some(old) {
                tracing::info!(member = %old, "cluster member down");
                self.push_event(MembershipEvent::MemberDown(*old));
            }
        }
        for (node_id, new) in &best {
            if old_view.get(node_id) != Some(new) {
                tracing::info!(member = %new, "cluster member up");
                self.push_event(MembershipEvent::MemberUp(*new));
            }
        }
        self.view = best;
        self.track_conflicts(addrs, now);
    }

    fn track_conflicts(&mut self, addrs: BTreeMap<NodeId, BTreeSet<SocketAddr>>, now: Instant) {
        self.conflicts
            .retain(|node_id, _| addrs.get(node_id).is_some_and(|a| a.len() > 1));
        for (node_id, set) in addrs.into_iter().filter(|(_, set)| set.len() > 1) {
            let (since, reported) = self.conflicts.entry(node_id).or_insert((now, false));
            if !*reported && now.duration_since(*since) >= self.duplicate_after {
                *reported = true;
                let addrs: Vec<SocketAddr> = set.into_iter().collect();
                tracing::error!(%node_id, ?addrs, "two live nodes share one node_id");
                self.push_event(MembershipEvent::DuplicateNodeId { node_id, addrs });
            }
        }
    }

    pub fn poll_datagram(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.datagrams.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<MembershipEvent> {
        self.events.pop_front()
    }

    /// Our current identity (its generation changes on rejoin).
    pub fn identity(&self) -> &NodeIdentity {
        self.foca.identity()
    }

    /// The members last reported up, by id.
    pub fn members(&self) -> impl Iterator<Item = &NodeIdentity> {
        self.view.values()
    }

    /// The current identity of member `node_id`, if up.
    pub fn member(&self, node_id: NodeId) -> Option<&NodeIdentity> {
        self.view.get(&node_id)
    }

    pub fn stats(&self) -> &MembershipStats {
        &self.stats
    }
}
