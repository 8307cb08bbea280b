//! Deterministic simulation harness for `ringmq-engine`: N engines (the shards of one broker), a
//! fake clock and in-memory links, driven the way the runtime drives them, with no socket,
//! thread or real time.
//!
//! - A simulated client ([`Client`]) is a handle to an engine connection plus the bytes the engine
//!   transmitted to it. When the engine hands the connection to its home shard
//!   ([`Output::HandOff`]) the harness re-opens it there with `open_handed_off`; the client keeps
//!   its handle.
//! - Cross-shard batches from `poll_outbox` travel on a link per (from, to) pair and are handed in
//!   at a later [`Sim::step`]; with a seed, each batch waits a random number of extra steps, but a
//!   link stays FIFO (the runtime's channels are FIFO per pair), so only different links reorder.
//! - Each transmit is reported as fully taken (`handle_sent(conn, 0)`) unless the client is
//!   [`Sim::stall`]ed, which simulates a slow consumer.
//!
//! Everything is deterministic given the seed; a failing test prints it (see [`Sim`]'s `Drop`).
//! Set `SIM_SEED` to rerun one seed, `SIM_SEEDS=N` to try seeds `0..N`.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringmq_engine::bridge::Bridge;
use ringmq_engine::message::{ShardId, ShardMsg};
use ringmq_engine::state::home_shard;
use ringmq_engine::{ConnId, Engine, Limits, Output, SubscribeRules};
use wire::{
    ConnAck, Connect, ConnectProperties, Disconnect, DisconnectProperties, Framing, Packet,
    ProtocolVersion, PubAck, Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe,
    SubscribeProperties, SubscriptionOptions, Utf8Bytes,
};

/// Steps [`Sim::run_until_idle`] takes before it declares the engines live-locked.
pub const IDLE_STEPS_MAX: u32 = 10_000;
/// Timer firings one [`Sim::advance`] handles before it declares a timer loop.
pub const TIMER_FIRINGS_MAX: u32 = 100_000;
/// Largest frame a simulated client accepts from the engine.
pub const CLIENT_FRAME_MAX: u32 = 16 * 1024 * 1024;

/// A small deterministic generator (splitmix64): the harness needs no more, and no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max`.
    pub fn upto(&mut self, max: u64) -> u64 {
        if max == 0 {
            0
        } else {
            self.next_u64() % (max + 1)
        }
    }
}

/// The seeds a randomized case runs with: `SIM_SEED` alone if set, else `0..count`, or
/// `0..SIM_SEEDS` when that is set (for a longer search).
pub fn seeds(count: u64) -> Vec<u64> {
    let var = |name: &str| std::env::var(name).ok().and_then(|s| s.parse().ok());
    match (var("SIM_SEED"), var("SIM_SEEDS")) {
        (Some(seed), _) => vec![seed],
        (None, Some(count)) => (0..count).collect(),
        (None, None) => (0..count).collect(),
    }
}

/// A simulated client connection, stable across hand-offs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Client(usize);

#[derive(Debug)]
struct ClientState {
    /// The shard serving the connection now.
    shard: ShardId,
    /// The engine's id for it on `shard`; None once the engine closed it (or while handed off).
    conn: Option<ConnId>,
    /// The version the client speaks (from the CONNECT it sent), to decode what it receives.
    version: ProtocolVersion,
    /// Bytes the engine transmitted and the test has not read yet.
    received: BytesMut,
    /// The engine asked to close the connection (after everything transmitted before).
    closed: bool,
    /// The engine paused reading: the client's sends wait in `unread`.
    paused: bool,
    unread: Vec<u8>,
    /// The peer closed its side. A socket at EOF stays at EOF: if the engine hands the
    /// connection to another shard afterwards (it had a whole CONNECT), that shard sees the EOF
    /// too.
    peer_closed: bool,
    /// Set while the transport does not report progress (a slow consumer).
    stalled: bool,
    /// Every output of the engine about this connection, for assertions on the order.
    events: Vec<Event>,
}

/// What happened to a connection, as the runtime saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Transmit(usize),
    PauseReading,
    ResumeReading,
    Close,
    HandOff { from: ShardId, to: ShardId },
}

/// A batch on its way between two shards.
struct InFlight {
    due_step: u64,
    batch: Vec<ShardMsg>,
}

/// A connection on its way to its home shard.
struct HandOff {
    client: Client,
    home: ShardId,
    buffered: Bytes,
    meta: Option<Box<ringmq_engine::ConnMeta>>,
}

/// A fake authenticator: decides an `Output::Authenticate` request (answered after
/// [`Sim::set_authenticator`]'s delay in steps).
pub type FakeAuthenticator = Box<
    dyn FnMut(&ringmq_engine::AuthRequest) -> Result<ringmq_engine::Authenticated, auth::Refusal>,
>;

/// An authentication request waiting for its answer.
struct PendingAuth {
    due_step: u64,
    shard: ShardId,
    conn: ConnId,
    request: Box<ringmq_engine::AuthRequest>,
}

/// N engines, a fake clock and the links between them.
pub struct Sim {
    pub engines: Vec<Engine>,
    base: Instant,
    offset: Duration,
    seed: u64,
    rng: Rng,
    /// Extra steps a batch may wait on its link, chosen per batch (0 = the next step).
    delay_steps_max: u64,
    step_no: u64,
    /// `links[from][to]`, FIFO.
    links: Vec<Vec<VecDeque<InFlight>>>,
    /// Links whose delivery the test holds back (`hold_link`).
    held: Vec<(ShardId, ShardId)>,
    handoffs: Vec<HandOff>,
    clients: Vec<ClientState>,
    by_conn: HashMap<(ShardId, ConnId), Client>,
    /// Answers `Output::Authenticate` after `auth_delay_steps`; requests wait in `auth_pending`.
    authenticator: Option<FakeAuthenticator>,
    auth_delay_steps: u64,
    auth_pending: Vec<PendingAuth>,
    /// Every request the engines made, for assertions.
    pub auth_requests: Vec<ringmq_engine::AuthRequest>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "sim failed with seed {} (rerun with SIM_SEED={}) at step {} t={:?}",
                self.seed, self.seed, self.step_no, self.offset
            );
        }
    }
}

impl Sim {
    /// `shards` engines with default limits; cross-shard batches arrive on the next step.
    pub fn new(shards: u16) -> Sim {
        Sim::build(shards, Limits::default(), 0, 0)
    }

    pub fn with_limits(shards: u16, limits: Limits) -> Sim {
        Sim::build(shards, limits, 0, 0)
    }

    /// Batches wait 0..=`delay_steps_max` extra steps, chosen by `seed` (FIFO per link).
    pub fn seeded(shards: u16, limits: Limits, seed: u64, delay_steps_max: u64) -> Sim {
        Sim::build(shards, limits, seed, delay_steps_max)
    }

    /// Like [`Sim::with_limits`], with a Kafka bridge per shard from `bridge`.
    pub fn with_bridges(
        shards: u16,
        limits: Limits,
        bridge: impl FnMut(ShardId) -> Option<Box<dyn Bridge>>,
    ) -> Sim {
        Sim::build_with(shards, limits, 0, 0, bridge)
    }

    fn build(shards: u16, limits: Limits, seed: u64, delay_steps_max: u64) -> Sim {
        Sim::build_with(shards, limits, seed, delay_steps_max, |_| None)
    }

    /// Like [`Sim::with_limits`], with subscription rules other than the default (allow all).
    pub fn with_rules(shards: u16, limits: Limits, rules: SubscribeRules) -> Sim {
        let mut sim = Sim::build(shards, limits.clone(), 0, 0);
        let rules = Arc::new(rules);
        sim.engines = (0..shards)
            .map(|id| Engine::new(id, shards, limits.clone(), rules.clone(), None))
            .collect();
        sim
    }

    fn build_with(
        shards: u16,
        limits: Limits,
        seed: u64,
        delay_steps_max: u64,
        mut bridge: impl FnMut(ShardId) -> Option<Box<dyn Bridge>>,
    ) -> Sim {
        let rules = Arc::new(SubscribeRules::default());
        let engines = (0..shards)
            .map(|id| Engine::new(id, shards, limits.clone(), rules.clone(), bridge(id)))
            .collect();
        let n = usize::from(shards);
        Sim {
            engines,
            base: Instant::now(),
            offset: Duration::ZERO,
            seed,
            rng: Rng::new(seed),
            delay_steps_max,
            step_no: 0,
            links: (0..n)
                .map(|_| (0..n).map(|_| VecDeque::new()).collect())
                .collect(),
            held: Vec::new(),
            handoffs: Vec::new(),
            clients: Vec::new(),
            by_conn: HashMap::new(),
            authenticator: None,
            auth_delay_steps: 0,
            auth_pending: Vec::new(),
            auth_requests: Vec::new(),
        }
    }

    /// Every engine asks before accepting a CONNECT; `decide` answers each request
    /// `delay_steps` steps later (held requests count as work for `run_until_idle`).
    pub fn set_authenticator(&mut self, delay_steps: u64, decide: FakeAuthenticator) {
        for engine in &mut self.engines {
            engine.set_authentication(true);
        }
        self.authenticator = Some(decide);
        self.auth_delay_steps = delay_steps;
    }

    /// Sets the compiled ACL on every engine.
    pub fn set_acl(&mut self, acl: Option<Arc<auth::Acl>>) {
        for engine in &mut self.engines {
            engine.set_acl(acl.clone());
        }
    }

    /// Authentication requests not answered yet.
    pub fn auth_pending(&self) -> usize {
        self.auth_pending.len()
    }

    fn answer_auth(&mut self, now: Instant) {
        let step = self.step_no;
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.auth_pending)
            .into_iter()
            .partition(|p| p.due_step <= step);
        self.auth_pending = rest;
        for p in due {
            let Some(decide) = self.authenticator.as_mut() else {
                continue;
            };
            let result = decide(&p.request);
            self.engines[usize::from(p.shard)].handle_auth_result(p.conn, result, now);
        }
    }

    pub fn now(&self) -> Instant {
        self.base + self.offset
    }

    pub fn elapsed(&self) -> Duration {
        self.offset
    }

    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    pub fn engine(&self, shard: ShardId) -> &Engine {
        &self.engines[usize::from(shard)]
    }

    pub fn engine_mut(&mut self, shard: ShardId) -> &mut Engine {
        &mut self.engines[usize::from(shard)]
    }

    /// A client id whose session lives on `shard` (`prefix-N` for the first N that hashes there).
    pub fn client_id_on(&self, shard: ShardId, prefix: &str) -> String {
        let count = self.engines.len() as u16;
        (0u32..)
            .map(|n| format!("{prefix}-{n}"))
            .find(|id| home_shard(id, count) == shard)
            .unwrap_or_default()
    }

    // ----- clients --------------------------------------------------------------------------

    /// A new transport connection accepted by `shard` (nothing sent yet).
    pub fn open(&mut self, shard: ShardId) -> Client {
        let now = self.now();
        let conn = self.engines[usize::from(shard)].open(now);
        self.track(shard, conn)
    }

    /// A socket accepted by `shard` on `listener`, as the runtime takes it: `Engine::admit`
    /// first (the refusal if the shard will not take it), then `Engine::open_on`.
    pub fn accept(
        &mut self,
        shard: ShardId,
        listener: ringmq_engine::ListenerId,
    ) -> Result<Client, ringmq_engine::admission::Refusal> {
        let now = self.now();
        self.engines[usize::from(shard)].admit(listener, now)?;
        let conn = self.engines[usize::from(shard)].open_on(listener, now);
        Ok(self.track(shard, conn))
    }

    fn track(&mut self, shard: ShardId, conn: ConnId) -> Client {
        let client = Client(self.clients.len());
        self.clients.push(ClientState {
            shard,
            conn: Some(conn),
            version: ProtocolVersion::V3_1_1,
            received: BytesMut::new(),
            closed: false,
            paused: false,
            unread: Vec::new(),
            peer_closed: false,
            stalled: false,
            events: Vec::new(),
        });
        self.by_conn.insert((shard, conn), client);
        client
    }

    /// Opens a connection on `shard`, sends `connect`, runs until idle and returns the CONNACK.
    pub fn connect(&mut self, shard: ShardId, connect: Connect) -> (Client, ConnAck) {
        let client = self.open(shard);
        self.send(client, &Packet::Connect(Box::new(connect)));
        self.run_until_idle();
        let ack = self.expect_connack(client);
        (client, ack)
    }

    /// Encodes `packet` in the client's version and hands it to the engine.
    /// Gives the client's connection transport facts (as the runtime does at accept).
    pub fn set_meta(&mut self, client: Client, meta: ringmq_engine::ConnMeta) {
        let c = &self.clients[client.0];
        if let Some(conn) = c.conn {
            self.engines[usize::from(c.shard)].set_meta(conn, meta);
        }
    }

    pub fn send(&mut self, client: Client, packet: &Packet) {
        if let Packet::Connect(c) = packet {
            self.clients[client.0].version = c.protocol;
        }
        let version = self.clients[client.0].version;
        let mut out = BytesMut::new();
        if let Err(err) = wire::encode(packet, version, &mut out) {
            panic!("test packet does not encode: {err} ({packet:?})");
        }
        self.send_bytes(client, &out);
    }

    /// The version the client decodes what it receives with (set by `send` of a CONNECT).
    pub fn set_version(&mut self, client: Client, version: ProtocolVersion) {
        self.clients[client.0].version = version;
    }

    /// Hands raw bytes to the engine as one read (or keeps them while reading is paused).
    pub fn send_bytes(&mut self, client: Client, data: &[u8]) {
        let now = self.now();
        let c = &mut self.clients[client.0];
        assert!(
            !c.closed,
            "client {client:?} sends on a connection the engine closed"
        );
        // Paused, or on its way to its home shard: the bytes wait in the transport.
        let Some(conn) = c.conn.filter(|_| !c.paused) else {
            c.unread.extend_from_slice(data);
            return;
        };
        let shard = c.shard;
        self.engines[usize::from(shard)].handle_input(conn, data, now);
    }

    /// The peer closed its side or the transport failed (no DISCONNECT).
    pub fn drop_connection(&mut self, client: Client) {
        let now = self.now();
        let c = &mut self.clients[client.0];
        c.peer_closed = true;
        if let Some(conn) = c.conn {
            let shard = c.shard;
            self.engines[usize::from(shard)].handle_closed(conn, now);
        }
    }

    /// From now on transmits to `client` are not reported as taken (a slow consumer).
    pub fn stall(&mut self, client: Client) {
        self.clients[client.0].stalled = true;
    }

    /// The transport reports `queued_bytes` of the client's output still waiting.
    pub fn report_sent(&mut self, client: Client, queued_bytes: usize) {
        let c = &mut self.clients[client.0];
        c.stalled = queued_bytes > 0;
        if let Some(conn) = c.conn {
            let shard = c.shard;
            self.engines[usize::from(shard)].handle_sent(conn, queued_bytes);
        }
    }

    /// Clients whose connection `shard` serves now (not closed, not on their way elsewhere).
    pub fn open_clients_on(&self, shard: ShardId) -> usize {
        self.clients
            .iter()
            .filter(|c| c.shard == shard && c.conn.is_some())
            .count()
    }

    pub fn is_closed(&self, client: Client) -> bool {
        self.clients[client.0].closed
    }

    pub fn is_paused(&self, client: Client) -> bool {
        self.clients[client.0].paused
    }

    /// The shard serving the client now.
    pub fn shard_of(&self, client: Client) -> ShardId {
        self.clients[client.0].shard
    }

    pub fn conn_of(&self, client: Client) -> Option<ConnId> {
        self.clients[client.0].conn
    }

    pub fn events(&self, client: Client) -> &[Event] {
        &self.clients[client.0].events
    }

    /// Every byte the engine transmitted to the client and the test has not read, taken.
    pub fn take_bytes(&mut self, client: Client) -> Vec<u8> {
        self.clients[client.0].received.split().to_vec()
    }

    /// The next whole packet the client received, decoded in its version.
    pub fn recv(&mut self, client: Client) -> Option<Packet> {
        let c = &mut self.clients[client.0];
        let frame_len = match wire::check(&c.received, CLIENT_FRAME_MAX) {
            Ok(Framing::Complete { frame_len }) => frame_len,
            Ok(Framing::Incomplete { .. }) => return None,
            Err(err) => panic!("engine sent a bad frame: {err}"),
        };
        let frame = c.received.split_to(frame_len).freeze();
        match wire::decode(frame.clone(), c.version) {
            Ok(packet) => Some(packet),
            Err(err) => panic!("engine sent an undecodable packet: {err} ({frame:02x?})"),
        }
    }

    /// Every packet received so far.
    pub fn recv_all(&mut self, client: Client) -> Vec<Packet> {
        std::iter::from_fn(|| self.recv(client)).collect()
    }

    /// Asserts the client has nothing more to read.
    pub fn expect_nothing(&mut self, client: Client) {
        let rest = self.recv_all(client);
        assert!(
            rest.is_empty(),
            "expected nothing for {client:?}, got {rest:?}"
        );
    }

    pub fn expect(&mut self, client: Client) -> Packet {
        match self.recv(client) {
            Some(p) => p,
            None => panic!("expected a packet for {client:?}, got nothing"),
        }
    }

    pub fn expect_connack(&mut self, client: Client) -> ConnAck {
        match self.expect(client) {
            Packet::ConnAck(a) => a,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub fn expect_suback(&mut self, client: Client) -> SubAck {
        match self.expect(client) {
            Packet::SubAck(a) => a,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub fn expect_publish(&mut self, client: Client) -> Publish {
        match self.expect(client) {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    pub fn expect_disconnect(&mut self, client: Client) -> Disconnect {
        match self.expect(client) {
            Packet::Disconnect(d) => d,
            other => panic!("expected DISCONNECT, got {other:?}"),
        }
    }

    /// Subscribes (`packet_id` 1 unless the test picks one), runs until idle, returns the SUBACK.
    pub fn subscribe(&mut self, client: Client, filter: &str, qos: QoS) -> SubAck {
        self.send(client, &subscribe(1, &[(filter, qos)]));
        self.run_until_idle();
        self.expect_suback(client)
    }

    // ----- links ----------------------------------------------------------------------------

    /// Batches from `from` to `to` stay on the link until [`Sim::release_link`].
    pub fn hold_link(&mut self, from: ShardId, to: ShardId) {
        self.held.push((from, to));
    }

    pub fn release_link(&mut self, from: ShardId, to: ShardId) {
        self.held.retain(|l| *l != (from, to));
    }

    /// Batches on their way (including held links).
    pub fn batches_in_flight(&self) -> usize {
        self.links.iter().flatten().map(VecDeque::len).sum()
    }

    // ----- driving --------------------------------------------------------------------------

    /// One loop turn of every shard: due cross-shard batches and hand-offs are handed in, each
    /// engine processes, outputs and outboxes are drained.
    pub fn step(&mut self) {
        self.step_no += 1;
        let now = self.now();
        self.deliver_batches(now);
        self.answer_auth(now);
        for h in std::mem::take(&mut self.handoffs) {
            let conn = self.engines[usize::from(h.home)].open_handed_off(&h.buffered, now);
            if let Some(meta) = h.meta {
                self.engines[usize::from(h.home)].set_meta(conn, *meta);
            }
            let c = &mut self.clients[h.client.0];
            c.shard = h.home;
            c.conn = Some(conn);
            let unread = std::mem::take(&mut c.unread);
            self.by_conn.insert((h.home, conn), h.client);
            let eof = c.peer_closed;
            if !unread.is_empty() {
                self.engines[usize::from(h.home)].handle_input(conn, &unread, now);
            }
            if eof {
                self.engines[usize::from(h.home)].handle_closed(conn, now);
            }
        }
        for shard in 0..self.engines.len() {
            self.engines[shard].process(now);
            self.drain_outputs(shard as ShardId);
        }
        for from in 0..self.engines.len() {
            self.drain_outboxes(from as ShardId);
        }
    }

    fn deliver_batches(&mut self, now: Instant) {
        let n = self.engines.len();
        // Links are visited in a seeded order: batches of different links reorder freely.
        let mut order: Vec<(usize, usize)> = (0..n)
            .flat_map(|f| (0..n).map(move |t| (f, t)))
            .filter(|(f, t)| f != t)
            .collect();
        if self.delay_steps_max > 0 {
            for i in (1..order.len()).rev() {
                let j = self.rng.upto(i as u64) as usize;
                order.swap(i, j);
            }
        }
        for (from, to) in order {
            if self.held.contains(&(from as ShardId, to as ShardId)) {
                continue;
            }
            while self.links[from][to]
                .front()
                .is_some_and(|b| b.due_step <= self.step_no)
            {
                if let Some(b) = self.links[from][to].pop_front() {
                    self.engines[to].handle_shard_msgs(b.batch, now);
                }
            }
        }
    }

    fn drain_outboxes(&mut self, from: ShardId) {
        for to in 0..self.engines.len() as ShardId {
            let Some(batch) = self.engines[usize::from(from)].poll_outbox(to) else {
                continue;
            };
            let link = &mut self.links[usize::from(from)][usize::from(to)];
            let delay = self.rng.upto(self.delay_steps_max);
            // FIFO per link: never due before the batch ahead of it.
            let due_step = link
                .back()
                .map_or(0, |b| b.due_step)
                .max(self.step_no + 1 + delay);
            link.push_back(InFlight { due_step, batch });
        }
    }

    fn drain_outputs(&mut self, shard: ShardId) {
        while let Some(output) = self.engines[usize::from(shard)].poll_output() {
            let conn = match &output {
                Output::Transmit { conn, .. }
                | Output::PauseReading { conn }
                | Output::ResumeReading { conn }
                | Output::Close { conn }
                | Output::HandOff { conn, .. }
                | Output::Authenticate { conn, .. } => *conn,
            };
            let Some(&client) = self.by_conn.get(&(shard, conn)) else {
                panic!("shard {shard} output for a connection it never had: {output:?}");
            };
            let now = self.now();
            let c = &mut self.clients[client.0];
            match output {
                Output::Transmit { data, .. } => {
                    assert!(!c.closed, "transmit after close to {client:?}");
                    c.events.push(Event::Transmit(data.len()));
                    c.received.extend_from_slice(&data);
                    if !c.stalled {
                        self.engines[usize::from(shard)].handle_sent(conn, 0);
                    }
                }
                Output::PauseReading { .. } => {
                    c.events.push(Event::PauseReading);
                    c.paused = true;
                }
                Output::ResumeReading { .. } => {
                    c.events.push(Event::ResumeReading);
                    c.paused = false;
                    let unread = std::mem::take(&mut c.unread);
                    if !unread.is_empty() {
                        self.engines[usize::from(shard)].handle_input(conn, &unread, now);
                    }
                }
                Output::Close { .. } => {
                    c.events.push(Event::Close);
                    c.closed = true;
                    c.conn = None;
                    self.by_conn.remove(&(shard, conn));
                }
                Output::Authenticate { request, .. } => {
                    self.auth_requests.push((*request).clone());
                    self.auth_pending.push(PendingAuth {
                        due_step: self.step_no + self.auth_delay_steps,
                        shard,
                        conn,
                        request,
                    });
                }
                Output::HandOff {
                    home,
                    buffered,
                    meta,
                    ..
                } => {
                    c.events.push(Event::HandOff {
                        from: shard,
                        to: home,
                    });
                    c.conn = None;
                    self.by_conn.remove(&(shard, conn));
                    self.handoffs.push(HandOff {
                        client,
                        home,
                        buffered,
                        meta,
                    });
                }
            }
        }
    }

    /// Whether anything is left to do without the clock moving.
    pub fn is_idle(&self) -> bool {
        let links_idle = self.links.iter().enumerate().all(|(from, row)| {
            row.iter().enumerate().all(|(to, link)| {
                link.is_empty() || self.held.contains(&(from as ShardId, to as ShardId))
            })
        });
        links_idle
            && self.handoffs.is_empty()
            && self.auth_pending.is_empty()
            && self.engines.iter().all(|e| !e.has_work())
    }

    /// Steps until no engine has work and no batch or hand-off is on its way (held links
    /// excepted). Returns the steps taken.
    pub fn run_until_idle(&mut self) -> u32 {
        let mut steps = 0;
        loop {
            self.step();
            steps += 1;
            if self.is_idle() {
                return steps;
            }
            assert!(steps < IDLE_STEPS_MAX, "engines did not go idle");
        }
    }

    /// Runs until idle, then moves the clock by `by`, firing every timer at its own deadline on
    /// the way (and running until idle after each), then runs until idle at the end.
    pub fn advance(&mut self, by: Duration) {
        // What was handed in before the clock moves happens now, not at the first deadline.
        self.run_until_idle();
        let target = self.offset + by;
        let mut firings = 0;
        loop {
            let next = self
                .engines
                .iter()
                .filter_map(Engine::poll_timeout)
                .min()
                .map(|at| at.saturating_duration_since(self.base));
            let Some(next) = next.filter(|n| *n <= target) else {
                break;
            };
            self.offset = self.offset.max(next);
            let now = self.now();
            for e in &mut self.engines {
                if e.poll_timeout().is_some_and(|at| at <= now) {
                    e.handle_timeout(now);
                }
            }
            self.run_until_idle();
            firings += 1;
            assert!(firings < TIMER_FIRINGS_MAX, "timers keep firing");
        }
        self.offset = target;
        self.run_until_idle();
    }

    /// Moves the clock without driving anything: what is sent next is handled later than every
    /// engine's last turn (as real input arrives between two turns).
    pub fn tick(&mut self, by: Duration) {
        self.offset += by;
    }

    /// Sum of the engines' barrier tables: every barrier still waited on.
    pub fn barriers_pending(&self) -> usize {
        self.engines.iter().map(|e| e.state.barriers.len()).sum()
    }
}

// ----- packets, as a client writes them -----------------------------------------------------

pub fn pid(n: u16) -> NonZeroU16 {
    NonZeroU16::new(n).unwrap_or(NonZeroU16::MIN)
}

/// CONNECT with clean start/session and keepalive 0; tests adjust the fields.
pub fn connect(version: ProtocolVersion, client_id: &str) -> Connect {
    Connect {
        protocol: version,
        clean_start: true,
        keep_alive_secs: 0,
        client_id: Utf8Bytes::from(client_id),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

pub fn v311(client_id: &str) -> Connect {
    connect(ProtocolVersion::V3_1_1, client_id)
}

pub fn v5(client_id: &str) -> Connect {
    connect(ProtocolVersion::V5, client_id)
}

/// A v5 CONNECT that keeps its session `expiry_secs` after the connection ends.
pub fn v5_persistent(client_id: &str, expiry_secs: u32) -> Connect {
    let mut c = v5(client_id);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(expiry_secs);
    c
}

pub fn publish(topic: &str, payload: &[u8], qos: QoS, packet_id: Option<u16>) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: Utf8Bytes::from(topic),
        packet_id: packet_id.map(pid),
        properties: Default::default(),
        payload: Bytes::copy_from_slice(payload),
    })
}

pub fn publish_retained(topic: &str, payload: &[u8], qos: QoS, packet_id: Option<u16>) -> Packet {
    match publish(topic, payload, qos, packet_id) {
        Packet::Publish(mut p) => {
            p.retain = true;
            Packet::Publish(p)
        }
        other => other,
    }
}

pub fn subscribe(packet_id: u16, filters: &[(&str, QoS)]) -> Packet {
    let filters = filters
        .iter()
        .map(|(f, qos)| {
            let options = SubscriptionOptions {
                qos: *qos,
                ..Default::default()
            };
            (Utf8Bytes::from(*f), options)
        })
        .collect();
    Packet::Subscribe(Subscribe {
        packet_id: pid(packet_id),
        filters,
        properties: SubscribeProperties::default(),
    })
}

/// One v5 subscription with every option.
pub fn subscribe_with(
    packet_id: u16,
    filter: &str,
    qos: QoS,
    retain_handling: RetainHandling,
    retain_as_published: bool,
) -> Packet {
    let options = SubscriptionOptions {
        qos,
        no_local: false,
        retain_as_published,
        retain_handling,
    };
    Packet::Subscribe(Subscribe {
        packet_id: pid(packet_id),
        filters: vec![(Utf8Bytes::from(filter), options)],
        properties: SubscribeProperties::default(),
    })
}

fn ack(packet_id: u16) -> PubAck {
    PubAck {
        packet_id: pid(packet_id),
        reason_code: ReasonCode::Success,
        properties: Default::default(),
    }
}

pub fn puback(packet_id: u16) -> Packet {
    Packet::PubAck(ack(packet_id))
}

pub fn pubrec(packet_id: u16) -> Packet {
    Packet::PubRec(ack(packet_id))
}

pub fn pubrel(packet_id: u16) -> Packet {
    Packet::PubRel(ack(packet_id))
}

pub fn pubcomp(packet_id: u16) -> Packet {
    Packet::PubComp(ack(packet_id))
}

pub fn disconnect(reason_code: ReasonCode) -> Packet {
    Packet::Disconnect(Disconnect {
        reason_code,
        properties: DisconnectProperties::default(),
    })
}

/// The packet id of a QoS 1/2 PUBLISH the engine sent (0 if it has none, which fails the test's
/// later acknowledgement visibly).
pub fn packet_id_of(p: &Publish) -> u16 {
    p.packet_id.map_or(0, NonZeroU16::get)
}

/// Bytes from hex pairs separated by spaces ("10 0e 00 04"), for byte transcripts.
pub fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .map(|pair| match u8::from_str_radix(pair, 16) {
            Ok(b) => b,
            Err(err) => panic!("bad hex {pair:?} in a transcript: {err}"),
        })
        .collect()
}

/// Hex pairs of `bytes`, to compare transcripts readably.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The bytes of `packets` back to back, as one read of a client that sends them together.
pub fn encode_all(version: ProtocolVersion, packets: &[Packet]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for packet in packets {
        if let Err(err) = wire::encode(packet, version, &mut out) {
            panic!("test packet does not encode: {err} ({packet:?})");
        }
    }
    out.to_vec()
}
