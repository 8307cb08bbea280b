//! Overload protection, with no I/O: what a shard lets in when clients arrive faster, in larger
//! numbers or more often than it should serve them.
//!
//! - **At accept** ([`Admission::admit`], called by the runtime before `Engine::open_on`): the
//!   shard's share of `max_connections`, of each listener's maximum, and of `max_handshakes`
//!   (connections accepted but not CONNACKed yet). A refused socket is closed at once by the
//!   runtime and never costs an engine connection.
//! - **At CONNECT, on the accepting shard** ([`Admission::take_connect_token`]): the connect rate
//!   (a token bucket with a burst). Refused: v5 CONNACK 0x9F, 3.1.1 closed without CONNACK (it
//!   has no return code for it).
//! - **At CONNECT, on the client id's home shard** ([`Admission::check_connect`]): the static ban
//!   list (client ids, usernames, addresses and CIDR blocks) and flapping detection (too many
//!   connects of one client id, or of one address, within a window → a timed ban). Refused: v5
//!   CONNACK 0x8A Banned, 3.1.1 return code 5 Not authorized.
//! - **While live** ([`PublishBudget`]): per-client publish message and byte rates. Over budget,
//!   the connection stops handling input and its reading pauses (`Output::PauseReading`) until
//!   the budget refills ([`Admission::next_deadline`]); nothing is dropped.
//!
//! **Shares, not a global count.** Each shard enforces `ceil(total / shards)` of a process-wide
//! bound on what it holds itself. SO_REUSEPORT spreads accepts and the client-id hash spreads
//! sessions evenly, so the shares add up to the total within a few connections, and no shard
//! ever reads another's counter (no cross-core traffic on the accept path). The price: one shard
//! may refuse while another still has room, so the process may refuse slightly below the total;
//! and hand-offs land on the home shard unchecked (they were admitted where they were accepted),
//! so a shard may hold a few more than its share. Rates are shared the same way (each shard
//! refills `rate / shards` per second).
//!
//! Every refusal is counted ([`AdmissionCounters`], exported as
//! `ringmq_connections_refused_total{reason}`) and logged at most once per [`LOG_INTERVAL`] per
//! reason ([`LogLimiter`]), with how many were not logged.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::conn::meta::ListenerId;
use crate::ids::ConnId;

/// Listeners whose connections are counted separately (`Overload::listener_max_connections`);
/// connections of listeners beyond it count only towards the global maximum.
pub const LISTENERS_MAX: usize = 64;
/// Client ids (and, separately, addresses) whose recent connects one shard remembers for flapping
/// detection. Overflow: the longest-tracked entry is forgotten (an active ban with it, counted in
/// `ringmq_flapping_evicted_total`); entries whose window and ban are over go first.
pub const FLAPPING_TRACKED_MAX: usize = 65_536;
/// At most one log line per refusal reason per shard in this interval; the lines in between are
/// counted and reported with the next one.
pub const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Why a connection was refused, as the `reason` label of `ringmq_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The shard holds its share of `overload.max_connections`.
    MaxConnections,
    /// The shard holds its share of the listener's `max_connections`.
    ListenerMaxConnections,
    /// The shard has its share of `overload.max_handshakes` connections not CONNACKed yet.
    MaxHandshakes,
    /// The connect rate's bucket is empty.
    ConnectionRate,
    /// The client id, username or address is on the static ban list.
    Banned,
    /// The client id or address connected too often within the flapping window (or is banned
    /// for it).
    Flapping,
}

/// Every [`Refusal`], in the order of [`AdmissionCounters::refused`].
pub const REFUSALS: [Refusal; 6] = [
    Refusal::MaxConnections,
    Refusal::ListenerMaxConnections,
    Refusal::MaxHandshakes,
    Refusal::ConnectionRate,
    Refusal::Banned,
    Refusal::Flapping,
];

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::ListenerMaxConnections => "listener_max_connections",
            Refusal::MaxHandshakes => "max_handshakes",
            Refusal::ConnectionRate => "connection_rate",
            Refusal::Banned => "banned",
            Refusal::Flapping => "flapping",
        }
    }

    fn index(self) -> usize {
        REFUSALS.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// What the shard protects itself with. All zero (every protection off) by default: the broker
/// fills it from its `[overload]` section, which has the operator defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overload {
    /// Connections the whole process holds (accepted, handshaking or live); 0 = no bound.
    pub max_connections: u32,
    /// Per listener (by [`ListenerId`]): connections the process holds from it; 0 or missing =
    /// no bound of its own.
    pub listener_max_connections: Vec<u32>,
    /// Connections accepted but not CONNACKed yet (TLS handshake, PROXY header, CONNECT,
    /// authentication), whole process; 0 = no bound.
    pub max_handshakes: u32,
    /// CONNECTs admitted per second, whole process; 0 = no limit.
    pub max_connection_rate: u32,
    /// CONNECTs admitted at once beyond the rate after a quiet time (the bucket's size); at
    /// least 1 when the rate is on.
    pub connection_rate_burst: u32,
    /// PUBLISH packets one client may send per second; 0 = no limit.
    pub publish_rate_per_client: u32,
    /// PUBLISH bytes (whole packets) one client may send per second; 0 = no limit.
    pub publish_bytes_per_client: u32,
    pub flapping: Flapping,
    pub ban: BanList,
}

/// Flapping detection: more than `max_connects` CONNECTs within `window` bans for `ban`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Flapping {
    /// Per client id; 0 = off.
    pub max_connects: u32,
    /// Per client address (all client ids together); 0 = off. Counted on each shard separately:
    /// an address whose connects carry many client ids may make up to `shards ×` this many.
    pub max_connects_per_address: u32,
    pub window: Duration,
    pub ban: Duration,
}

/// The static ban list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BanList {
    pub client_ids: Vec<String>,
    pub usernames: Vec<String>,
    pub addresses: Vec<IpNet>,
}

/// An address block: `addr` with its first `prefix_len` bits significant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// An address or CIDR block that does not parse.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error(
    "{text:?} is not an IP address or CIDR block (like 192.0.2.7, 10.0.0.0/8 or 2001:db8::/32)"
)]
pub struct IpNetError {
    pub text: String,
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(text: &str) -> Result<IpNet, IpNetError> {
        let error = || IpNetError {
            text: text.to_string(),
        };
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| error())?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| error())?,
            None => bits,
        };
        if prefix_len > bits {
            return Err(error());
        }
        Ok(IpNet { addr, prefix_len })
    }
}

impl IpNet {
    /// Whether `ip` is inside the block (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(u32::from(net)),
                u128::from(u32::from(ip)),
                32,
                self.prefix_len,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), 128, self.prefix_len)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, bits: u32, prefix_len: u8) -> bool {
    let prefix_len = u32::from(prefix_len).min(bits);
    if prefix_len == 0 {
        return true;
    }
    let shift = bits - prefix_len;
    (a >> shift) == (b >> shift)
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener's IPv4 clients) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Plain counters of this module, bumped on the shard's thread and exported once a second.
#[derive(Debug, Default, Clone)]
pub struct AdmissionCounters {
    /// By [`REFUSALS`] order.
    pub refused: [u64; REFUSALS.len()],
    /// Flapping bans started (client ids and addresses).
    pub flapping_bans: u64,
    /// Flapping entries forgotten because the table was full.
    pub flapping_evicted: u64,
    /// Times a connection's reading paused because it published over its rate.
    pub publish_rate_pauses: u64,
}

/// Says whether a log line may go out now; counts the ones that may not.
#[derive(Debug, Default, Clone)]
pub struct LogLimiter {
    next_at: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// `Some(suppressed since the last line)` if a line may be logged now.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.next_at.is_some_and(|at| now < at) {
            self.suppressed += 1;
            return None;
        }
        self.next_at = Some(now + LOG_INTERVAL);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone)]
struct TokenBucket {
    rate_per_sec: f64,
    burst: f64,
    tokens: f64,
    refilled_at: Option<Instant>,
}

impl TokenBucket {
    fn new(rate_per_sec: f64, burst: f64) -> TokenBucket {
        TokenBucket {
            rate_per_sec,
            burst,
            tokens: burst,
            refilled_at: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(at) = self.refilled_at {
            let elapsed = now.saturating_duration_since(at).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate_per_sec).min(self.burst);
        }
        self.refilled_at = Some(now);
    }

    /// Takes one token if there is one.
    fn take_one(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes `cost` while the bucket is not in debt (it may go into debt by one packet, so a
    /// packet larger than the burst still passes); how long until it is out of debt otherwise.
    fn take_debt(&mut self, now: Instant, cost: f64) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 0.0 {
            self.tokens -= cost;
            return Ok(());
        }
        Err(self.wait_for(0.0))
    }

    /// Time until the bucket holds `level`.
    fn wait_for(&self, level: f64) -> Duration {
        if self.rate_per_sec <= 0.0 {
            return Duration::from_secs(1);
        }
        let secs = ((level - self.tokens) / self.rate_per_sec).max(0.0);
        // At least a millisecond: a zero wait would spin the loop.
        Duration::from_secs_f64(secs).max(Duration::from_millis(1))
    }
}

/// One client's publish budget (only for connections of a broker with a per-client rate; the
/// connection holds it behind an `Option<Box<..>>`, one allocation at CONNACK).
#[derive(Debug, Clone)]
pub struct PublishBudget {
    messages: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
    /// Set while the client is over its budget: no input is handled before it.
    blocked_until: Option<Instant>,
}

/// Whether a PUBLISH may be handled now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    Granted,
    /// Over budget until the instant; `newly` is true when this PUBLISH started the wait (the
    /// caller registers the connection's wake-up once).
    Blocked {
        until: Instant,
        newly: bool,
    },
}

impl PublishBudget {
    /// Charges one PUBLISH of `frame_len` bytes.
    pub fn take(&mut self, frame_len: usize, now: Instant) -> Budget {
        if let Some(until) = self.blocked_until {
            if now < until {
                return Budget::Blocked {
                    until,
                    newly: false,
                };
            }
            self.blocked_until = None;
        }
        let mut wait = Duration::ZERO;
        if let Some(m) = &mut self.messages {
            m.refill(now);
            if m.tokens < 1.0 {
                wait = wait.max(m.wait_for(1.0));
            }
        }
        if let Some(b) = &mut self.bytes {
            b.refill(now);
            if b.tokens < 0.0 {
                wait = wait.max(b.wait_for(0.0));
            }
        }
        if wait > Duration::ZERO {
            let until = now + wait;
            self.blocked_until = Some(until);
            return Budget::Blocked { until, newly: true };
        }
        if let Some(m) = &mut self.messages {
            let _ = m.take_one(now);
        }
        if let Some(b) = &mut self.bytes {
            let _ = b.take_debt(now, frame_len as f64);
        }
        Budget::Granted
    }

    /// Whether the client waits for its budget at `now`.
    pub fn blocked(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|until| now < until)
    }
}

/// What one client id or address did lately. 24 bytes (times in milliseconds after the table's
/// epoch, not 16-byte `Instant`s): a connection storm fills the table with one entry per client.
#[derive(Debug, Clone, Copy)]
struct FlapEntry {
    window_start_ms: u64,
    /// 0 = not banned.
    banned_until_ms: u64,
    connects: u32,
}

impl FlapEntry {
    fn banned_at(&self, now_ms: u64) -> bool {
        now_ms < self.banned_until_ms
    }
}

/// Recent connects by key, bounded by [`FLAPPING_TRACKED_MAX`]: keys in the order they were
/// first tracked; the oldest goes when the table is full or its window and ban are over.
struct FlapTable<K> {
    entries: hashbrown::HashMap<K, FlapEntry, ahash::RandomState>,
    order: VecDeque<K>,
    /// What entry times count from.
    epoch: Instant,
}

/// Whole milliseconds of `d`, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What flapping detection says about one connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flap {
    Allowed,
    /// Banned already, or this connect was one too many (`started`).
    Banned {
        started: bool,
    },
}

impl<K: Hash + Eq + Copy> FlapTable<K> {
    fn new() -> FlapTable<K> {
        FlapTable {
            entries: hashbrown::HashMap::with_hasher(ahash::RandomState::new()),
            order: VecDeque::new(),
            epoch: Instant::now(),
        }
    }

    /// `now` on the table's clock (0 before its epoch, which a real `now` never is).
    fn ms(&self, now: Instant) -> u64 {
        millis(now.saturating_duration_since(self.epoch))
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Counts a connect of `key` at `now` against `max` per `window`.
    fn record(
        &mut self,
        key: K,
        now: Instant,
        max: u32,
        window: Duration,
        ban: Duration,
        evicted: &mut u64,
    ) -> Flap {
        let now_ms = self.ms(now);
        let (window_ms, ban_ms) = (millis(window), millis(ban));
        if let Some(e) = self.entries.get_mut(&key) {
            if e.banned_at(now_ms) {
                return Flap::Banned { started: false };
            }
            if now_ms.saturating_sub(e.window_start_ms) >= window_ms {
                e.window_start_ms = now_ms;
                e.connects = 0;
                e.banned_until_ms = 0;
            }
            e.connects += 1;
            if e.connects > max {
                // At least 1: 0 means "not banned".
                e.banned_until_ms = now_ms.saturating_add(ban_ms).max(1);
                e.connects = 0;
                return Flap::Banned { started: true };
            }
            return Flap::Allowed;
        }
        self.make_room(now_ms, window_ms, evicted);
        self.entries.insert(
            key,
            FlapEntry {
                window_start_ms: now_ms,
                banned_until_ms: 0,
                connects: 1,
            },
        );
        self.order.push_back(key);
        Flap::Allowed
    }

    /// Forgets stale entries from the front, and the oldest one if the table is still full.
    /// Amortized O(1): each key is pushed once and popped once.
    fn make_room(&mut self, now_ms: u64, window_ms: u64, evicted: &mut u64) {
        while let Some(front) = self.order.front().copied() {
            let stale = self.entries.get(&front).is_none_or(|e| {
                now_ms.saturating_sub(e.window_start_ms) >= window_ms && !e.banned_at(now_ms)
            });
            let full = self.entries.len() >= FLAPPING_TRACKED_MAX;
            if !stale && !full {
                break;
            }
            self.order.pop_front();
            self.entries.remove(&front);
            if !stale {
                *evicted += 1;
            }
        }
    }

    fn banned_count(&self, now: Instant) -> usize {
        let now_ms = self.ms(now);
        self.entries
            .values()
            .filter(|e| e.banned_at(now_ms))
            .count()
    }
}

/// The shard's share of a process-wide bound (0 stays 0: no bound).
fn share(total: u32, shards: u16) -> u32 {
    if total == 0 {
        return 0;
    }
    total.div_ceil(u32::from(shards.max(1)))
}

/// One shard's admission state.
pub struct Admission {
    config: Overload,
    max_connections_share: u32,
    listener_shares: Vec<u32>,
    max_handshakes_share: u32,
    /// Connections this shard holds (from `opened` to `closed`), all and by listener.
    connections: u32,
    by_listener: [u32; LISTENERS_MAX],
    /// Connections this shard holds that are not CONNACKed yet.
    handshaking: u32,
    connect_bucket: Option<TokenBucket>,
    by_client: FlapTable<u64>,
    by_address: FlapTable<IpAddr>,
    /// Hashes client ids for `by_client` (fixed per shard; 64-bit keys, so no id is copied).
    id_hasher: ahash::RandomState,
    banned_client_ids: ahash::AHashSet<String>,
    banned_usernames: ahash::AHashSet<String>,
    /// Connections over their publish budget, by when it refills. One entry per connection at
    /// most (an entry is added only when a wait starts), so bounded by the connection table.
    budget_waits: BinaryHeap<Reverse<(Instant, ConnId)>>,
    pub counters: AdmissionCounters,
    logs: [LogLimiter; REFUSALS.len()],
}

impl Admission {
    pub fn new(config: Overload, shards: u16) -> Admission {
        let connect_bucket = (config.max_connection_rate > 0).then(|| {
            let shards = f64::from(shards.max(1));
            let burst = f64::from(share(config.connection_rate_burst.max(1), shards as u16));
            TokenBucket::new(f64::from(config.max_connection_rate) / shards, burst)
        });
        Admission {
            max_connections_share: share(config.max_connections, shards),
            listener_shares: config
                .listener_max_connections
                .iter()
                .map(|m| share(*m, shards))
                .collect(),
            max_handshakes_share: share(config.max_handshakes, shards),
            connections: 0,
            by_listener: [0; LISTENERS_MAX],
            handshaking: 0,
            connect_bucket,
            by_client: FlapTable::new(),
            by_address: FlapTable::new(),
            id_hasher: ahash::RandomState::with_seeds(0x6f76, 0x6c64, 0x6661, 0x7069),
            banned_client_ids: config.ban.client_ids.iter().cloned().collect(),
            banned_usernames: config.ban.usernames.iter().cloned().collect(),
            budget_waits: BinaryHeap::new(),
            counters: AdmissionCounters::default(),
            logs: Default::default(),
            config,
        }
    }

    pub fn config(&self) -> &Overload {
        &self.config
    }

    /// Replaces the static ban list (a reload); connections already up stay up.
    pub fn set_ban_list(&mut self, ban: BanList) {
        self.banned_client_ids = ban.client_ids.iter().cloned().collect();
        self.banned_usernames = ban.usernames.iter().cloned().collect();
        self.config.ban = ban;
    }

    /// Whether any rule looks at the client's address (the runtime then finds the peer address
    /// of every accepted socket).
    pub fn wants_peer_address(&self) -> bool {
        !self.config.ban.addresses.is_empty() || self.config.flapping.max_connects_per_address > 0
    }

    /// Connections this shard holds that are not CONNACKed yet.
    pub fn handshaking(&self) -> u32 {
        self.handshaking
    }

    /// Client ids and addresses banned for flapping right now (a gauge; walks the tables, so
    /// call it from the metrics tick, not per connection).
    pub fn flapping_banned(&self, now: Instant) -> usize {
        self.by_client.banned_count(now) + self.by_address.banned_count(now)
    }

    /// Entries the flapping tables hold.
    pub fn flapping_tracked(&self) -> usize {
        self.by_client.len() + self.by_address.len()
    }

    fn refuse(&mut self, reason: Refusal, now: Instant) -> Refusal {
        self.counters.refused[reason.index()] += 1;
        if let Some(suppressed) = self.logs[reason.index()].allow(now) {
            warn!(
                reason = reason.label(),
                suppressed, "connection refused: overload protection"
            );
        }
        reason
    }

    /// A socket was accepted on `listener`: may the shard take it?
    pub fn admit(&mut self, listener: ListenerId, now: Instant) -> Result<(), Refusal> {
        if self.max_connections_share > 0 && self.connections >= self.max_connections_share {
            return Err(self.refuse(Refusal::MaxConnections, now));
        }
        let listener_share = self
            .listener_shares
            .get(usize::from(listener))
            .copied()
            .unwrap_or(0);
        let on_listener = self
            .by_listener
            .get(usize::from(listener))
            .copied()
            .unwrap_or(0);
        if listener_share > 0 && on_listener >= listener_share {
            return Err(self.refuse(Refusal::ListenerMaxConnections, now));
        }
        if self.max_handshakes_share > 0 && self.handshaking >= self.max_handshakes_share {
            return Err(self.refuse(Refusal::MaxHandshakes, now));
        }
        Ok(())
    }

    /// Whether the runtime should stop accepting: the shard holds its share of
    /// `max_handshakes`, so a socket accepted now would be closed at once. New connections wait
    /// in the kernel's listen backlog instead (a slow connect rather than a refusal) until
    /// [`Admission::accepts_may_resume`].
    pub fn accepts_should_pause(&self) -> bool {
        self.max_handshakes_share > 0 && self.handshaking >= self.max_handshakes_share
    }

    /// Whether accepting may start again: an eighth of the share (at least one) is free, so a
    /// storm at the bound does not pause and resume every loop turn.
    pub fn accepts_may_resume(&self) -> bool {
        let slack = (self.max_handshakes_share / 8).max(1);
        self.max_handshakes_share == 0 || self.handshaking + slack <= self.max_handshakes_share
    }

    /// The engine opened a connection (accepted here or handed off here).
    pub(crate) fn opened(&mut self, listener: ListenerId) {
        self.connections += 1;
        self.handshaking += 1;
        if let Some(n) = self.by_listener.get_mut(usize::from(listener)) {
            *n += 1;
        }
    }

    /// A connection left the handshake (CONNACKed, refused, handed off or closed).
    pub(crate) fn handshake_done(&mut self) {
        debug_assert!(self.handshaking > 0, "more handshakes ended than began");
        self.handshaking = self.handshaking.saturating_sub(1);
    }

    /// The engine forgot a connection (closed or handed off).
    pub(crate) fn closed(&mut self, listener: ListenerId) {
        debug_assert!(self.connections > 0, "more connections closed than opened");
        self.connections = self.connections.saturating_sub(1);
        if let Some(n) = self.by_listener.get_mut(usize::from(listener)) {
            *n = n.saturating_sub(1);
        }
    }

    /// The runtime named the connection's listener after it was opened.
    pub(crate) fn moved_listener(&mut self, from: ListenerId, to: ListenerId) {
        if let Some(n) = self.by_listener.get_mut(usize::from(from)) {
            *n = n.saturating_sub(1);
        }
        if let Some(n) = self.by_listener.get_mut(usize::from(to)) {
            *n += 1;
        }
    }

    /// A CONNECT arrived on the shard that accepted it: is there a token for it?
    pub fn take_connect_token(&mut self, now: Instant) -> Result<(), Refusal> {
        let granted = self
            .connect_bucket
            .as_mut()
            .is_none_or(|bucket| bucket.take_one(now));
        if granted {
            Ok(())
        } else {
            Err(self.refuse(Refusal::ConnectionRate, now))
        }
    }

    /// A CONNECT on the client id's home shard: the ban list, then flapping detection. Every
    /// connect that is not banned already counts towards its client id's and address's window.
    pub fn check_connect(
        &mut self,
        client_id: &str,
        username: Option<&str>,
        peer: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), Refusal> {
        let peer = peer.map(canonical);
        let shown = |p: Option<IpAddr>| p.map_or_else(String::new, |ip| ip.to_string());
        let banned = (!client_id.is_empty() && self.banned_client_ids.contains(client_id))
            || username.is_some_and(|u| self.banned_usernames.contains(u))
            || peer.is_some_and(|ip| self.config.ban.addresses.iter().any(|n| n.contains(ip)));
        if banned {
            if let Some(suppressed) = self.logs[Refusal::Banned.index()].allow(now) {
                warn!(
                    client_id,
                    username = username.unwrap_or(""),
                    peer = %shown(peer),
                    suppressed,
                    "connection refused: on the ban list"
                );
            }
            self.counters.refused[Refusal::Banned.index()] += 1;
            return Err(Refusal::Banned);
        }
        let f = &self.config.flapping;
        let (window, ban) = (f.window, f.ban);
        let mut verdict = Flap::Allowed;
        if f.max_connects > 0 && !client_id.is_empty() {
            let key = self.id_hasher.hash_one(client_id);
            let max = f.max_connects;
            verdict = self.by_client.record(
                key,
                now,
                max,
                window,
                ban,
                &mut self.counters.flapping_evicted,
            );
        }
        let per_address = self.config.flapping.max_connects_per_address;
        if let (Some(ip), true, Flap::Allowed) = (peer, per_address > 0, verdict) {
            verdict = self.by_address.record(
                ip,
                now,
                per_address,
                window,
                ban,
                &mut self.counters.flapping_evicted,
            );
        }
        match verdict {
            Flap::Allowed => Ok(()),
            Flap::Banned { started } => {
                if started {
                    self.counters.flapping_bans += 1;
                }
                self.counters.refused[Refusal::Flapping.index()] += 1;
                if let Some(suppressed) = self.logs[Refusal::Flapping.index()].allow(now) {
                    warn!(
                        client_id,
                        peer = %shown(peer),
                        ban_secs = ban.as_secs(),
                        started,
                        suppressed,
                        "connection refused: flapping"
                    );
                }
                Err(Refusal::Flapping)
            }
        }
    }

    /// A publish budget for a client that just connected, if per-client rates are on.
    pub fn publish_budget(&self) -> Option<Box<PublishBudget>> {
        let c = &self.config;
        if c.publish_rate_per_client == 0 && c.publish_bytes_per_client == 0 {
            return None;
        }
        // One second's worth saved up at most: a burst of one second, then the steady rate.
        let bucket =
            |rate: u32| (rate > 0).then(|| TokenBucket::new(f64::from(rate), f64::from(rate)));
        Some(Box::new(PublishBudget {
            messages: bucket(c.publish_rate_per_client),
            bytes: bucket(c.publish_bytes_per_client),
            blocked_until: None,
        }))
    }

    /// `conn` published over its budget and waits until `until`.
    pub(crate) fn budget_wait(&mut self, conn: ConnId, until: Instant) {
        self.counters.publish_rate_pauses += 1;
        self.budget_waits.push(Reverse((until, conn)));
    }

    /// When the earliest budget wait ends.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.budget_waits.peek().map(|Reverse((at, _))| *at)
    }

    /// Connections whose budget wait ended by `now`, into `out`.
    pub(crate) fn budget_waits_due(&mut self, now: Instant, out: &mut Vec<ConnId>) {
        while let Some(Reverse((at, conn))) = self.budget_waits.peek().copied() {
            if at > now {
                break;
            }
            self.budget_waits.pop();
            out.push(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks_contain_their_addresses() {
        let net: IpNet = "10.1.0.0/16".parse().expect("parses");
        assert!(net.contains("10.1.200.3".parse().expect("ip")));
        assert!(!net.contains("10.2.0.1".parse().expect("ip")));
        let one: IpNet = "192.0.2.7".parse().expect("parses");
        assert!(one.contains("192.0.2.7".parse().expect("ip")));
        assert!(one.contains("::ffff:192.0.2.7".parse().expect("ip")));
        assert!(!one.contains("192.0.2.8".parse().expect("ip")));
        let v6: IpNet = "2001:db8::/32".parse().expect("parses");
        assert!(v6.contains("2001:db8:1::1".parse().expect("ip")));
        assert!(!v6.contains("2001:db9::1".parse().expect("ip")));
        let all: IpNet = "0.0.0.0/0".parse().expect("parses");
        assert!(all.contains("203.0.113.1".parse().expect("ip")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn shares_round_up() {
        assert_eq!(share(0, 4), 0);
        assert_eq!(share(10, 4), 3);
        assert_eq!(share(1, 4), 1);
        assert_eq!(share(8, 0), 8);
    }

    fn flapping_only(max_connects: u32) -> Overload {
        Overload {
            flapping: Flapping {
                max_connects,
                max_connects_per_address: 0,
                window: Duration::from_secs(60),
                ban: Duration::from_secs(300),
            },
            ..Overload::default()
        }
    }

    /// The flapping table stays within its bound under a flood of distinct client ids (the
    /// oldest entries go, counted), and entries whose window is over are swept as new ones come.
    #[test]
    fn flapping_table_is_bounded() {
        let t0 = Instant::now();
        let mut a = Admission::new(flapping_only(3), 1);
        for n in 0..FLAPPING_TRACKED_MAX + 1000 {
            assert!(a.check_connect(&format!("id-{n}"), None, None, t0).is_ok());
        }
        assert_eq!(a.flapping_tracked(), FLAPPING_TRACKED_MAX);
        assert_eq!(a.counters.flapping_evicted, 1000);
        // A window later, the next new id sweeps every stale entry before it.
        let later = t0 + Duration::from_secs(61);
        assert!(a.check_connect("fresh", None, None, later).is_ok());
        assert_eq!(a.flapping_tracked(), 1);
    }

    /// A ban outlives its window and is kept through the sweep; it ends after `ban`.
    #[test]
    fn a_ban_survives_the_sweep_until_it_ends() {
        let t0 = Instant::now();
        let mut a = Admission::new(flapping_only(1), 1);
        assert!(a.check_connect("car", None, None, t0).is_ok());
        assert_eq!(
            a.check_connect("car", None, None, t0),
            Err(Refusal::Flapping)
        );
        assert_eq!(a.flapping_banned(t0), 1);
        let later = t0 + Duration::from_secs(120);
        assert!(a.check_connect("other", None, None, later).is_ok());
        assert_eq!(
            a.check_connect("car", None, None, later),
            Err(Refusal::Flapping)
        );
        let after = t0 + Duration::from_secs(301);
        assert!(a.check_connect("car", None, None, after).is_ok());
        assert_eq!(a.counters.flapping_bans, 1);
    }

    #[test]
    fn log_limiter_counts_what_it_holds_back() {
        let t0 = Instant::now();
        let mut log = LogLimiter::default();
        assert_eq!(log.allow(t0), Some(0));
        assert_eq!(log.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(log.allow(t0 + Duration::from_secs(2)), None);
        assert_eq!(log.allow(t0 + LOG_INTERVAL), Some(2));
    }
}
