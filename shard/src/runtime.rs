//! The runtime seam: starts one glommio executor per shard, gives each its own io_uring data
//! plane ([`uring::Ring`]) and its engine ([`engine::Engine`]), wires the N×N cross-shard
//! channels (flume, announced by ring kicks), and runs the shard loop ([`data_plane_loop`])
//! beside a few housekeeping tasks (metrics, `$SYS`, the Kafka bridge loops, shutdown).
//!
//! One loop turn: (1) batches from other shards (route changes first, so a subscription made
//! there is seen by the publishes read in this turn), (2) the ring's completions (accepts,
//! received bytes, sends done, closes), (3) due timers, (4) `Engine::process` drives every
//! connection with work once, (5) its outputs become ring sends/closes/hand-offs, (6) one batch
//! per destination shard (and a kick of its ring), (7) one `io_uring_enter` for everything.
//! While busy that enter also sleeps until the next completion (`Ring::submit_and_wait`); idle,
//! the loop sleeps through glommio on the ring's eventfd (docs/architecture.md, "Waiting").

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::{OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU16, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use engine::message::{ShardId, ShardMsg, SHARDS_MAX};
use engine::{ConnId, Engine, Output};
use glommio::{LocalExecutorBuilder, Placement};
use tracing::{debug, error, info, warn};
use uring::{ConnKey, Event, Ring, RingConfig};

use crate::config::{Limits, SubscribeRules};
use crate::metrics::{Exporter, Gauges};
use crate::ShardError;

/// Batches a channel between two shards holds before the sender keeps its outbox for the next
/// turn (the outbox, bounded by `Limits::cross_shard_outbox_len_max`, absorbs bursts meanwhile).
pub const CROSS_SHARD_CHANNEL_BATCHES: usize = 1024;
/// io_uring registered-buffer memory glommio locks per shard. The data plane's own ring does not
/// register buffers (its provided buffer ring is ordinary memory), so glommio's rings only need
/// a little: with an 8 MiB RLIMIT_MEMLOCK this keeps many shards inside the limit.
pub const IO_MEMORY_PER_SHARD_BYTES: usize = 256 * 1024;
/// glommio's own ring depth: it now serves only timers, channels and the data plane's eventfd.
pub const GLOMMIO_RING_DEPTH: usize = 256;
/// Receive buffers in the data plane's provided buffer ring, and their size: what one receive
/// completion carries at most. 512 × 16 KiB = 8 MiB of ordinary memory per shard.
pub const RECV_BUFFERS: u16 = 512;
pub const RECV_BUFFER_BYTES: u32 = 16 * 1024;
/// Housekeeping tick: the shutdown flag.
const TICK: Duration = Duration::from_millis(100);
/// How often the engine's deadlines are checked (keepalive is enforced at 1.5× its interval, so
/// this precision is ample).
const TIMER_TICK: Duration = Duration::from_millis(10);
/// While the shard is busy it sleeps in its own ring (`Ring::submit_and_wait`: one
/// io_uring_enter submits the turn's sends and waits for the next completion) instead of going
/// through glommio's reactor, which costs several syscalls and a membarrier per sleep. Other
/// glommio tasks (Kafka answers, `$SYS`, metrics, glommio timers) run when the loop yields to
/// glommio, at least this often.
const GLOMMIO_YIELD_PERIOD: Duration = Duration::from_millis(1);
/// After this long with nothing to do the loop sleeps through glommio instead
/// (`wait_for_work`), which has no periodic wake-up of its own.
const DEEP_SLEEP_AFTER: Duration = Duration::from_millis(20);
/// How long shutdown waits for connections to be told and outboxes to drain.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);

/// Everything a shard needs to start.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Plain TCP listeners (listener ids `0..listen.len()`).
    pub listen: Vec<SocketAddr>,
    /// `[[listener]]` entries (TLS, WebSocket, PROXY protocol), ids following `listen`'s.
    pub listeners: Vec<crate::edge::Listener>,
    pub shards: u16,
    /// Pin shard i to CPU i (when there are that many CPUs).
    pub pin: bool,
    pub listen_backlog: u32,
    pub limits: Limits,
    pub rules: SubscribeRules,
    /// `[cluster]`: shard 0 drives the cluster node (see [`crate::cluster`]); None runs alone.
    pub cluster: Option<crate::cluster::ClusterSetup>,
    /// Authentication and the compiled ACL (`crate::auth`); `None`: anonymous, `rules` only.
    pub auth: Option<Arc<crate::auth::AuthService>>,
}

/// A socket on its way to the shard that owns its client id's session.
#[derive(Debug)]
pub struct HandOff {
    pub fd: OwnedFd,
    /// The bytes received so far, CONNECT first.
    pub buffered: Bytes,
    /// When the bytes after CONNECT arrived at the earliest (`Output::HandOff::since`).
    pub since: Instant,
    /// The connection's transport facts (`Output::HandOff::meta`).
    pub meta: Option<Box<engine::ConnMeta>>,
    /// Its TLS/WebSocket state, with raw bytes received during the detach.
    pub edge: Option<Box<crate::edge::Layer>>,
}

/// What one shard sends another per loop turn: the engine's messages and handed-off sockets
/// (the engine holds no descriptor, so sockets travel beside its messages).
#[derive(Debug, Default)]
pub struct Batch {
    pub msgs: Vec<ShardMsg>,
    pub handoffs: Vec<HandOff>,
}

/// A connection on its way out of the ring for a hand-off.
struct Detaching {
    home: ShardId,
    /// Received so far (CONNECT first); bytes the ring still reports are appended.
    buffered: BytesMut,
    since: Instant,
    meta: Option<Box<engine::ConnMeta>>,
    edge: Option<Box<crate::edge::Layer>>,
}

/// Which ring connection serves which engine connection.
#[derive(Default)]
struct Links {
    /// By `ConnId::index`: the ring key of that engine connection and its generation.
    by_conn: Vec<Option<(u32, ConnKey)>>,
    /// Connections being detached from the ring for a hand-off: destination shard and the
    /// bytes to pass on (received ones are appended until the ring lets go).
    detaching: ahash::AHashMap<u64, Detaching>,
    /// Sockets ready to go to each shard with this turn's batch.
    handoffs: Vec<Vec<HandOff>>,
    /// Connections added to the ring recently, by ring user: their first bytes may have waited
    /// in the kernel until the receive was armed, so they are handed in with this floor
    /// (`Engine::handle_input_since`) until a poll has reported everything from before the arm.
    armed: ahash::AHashMap<u64, ArmedFloor>,
    /// Sockets the ring accepted while the shard holds its share of `overload.max_handshakes`:
    /// they go in, oldest first, as handshakes finish (accepting is paused meanwhile, see
    /// `overload::pace_accepts`). Bounded by what one burst of the multishot accept reports
    /// before its cancel takes effect: the listen backlog plus the ring's completion queue.
    pending_accepts: std::collections::VecDeque<(usize, OwnedFd)>,
}

/// See `Links::armed`.
struct ArmedFloor {
    /// The earliest its bytes can have arrived at.
    floor: Instant,
    /// When its receive was queued.
    added_at: Instant,
}

impl Links {
    fn insert(&mut self, conn: ConnId, key: ConnKey) {
        let i = conn.index as usize;
        if self.by_conn.len() <= i {
            self.by_conn.resize(i + 1, None);
        }
        self.by_conn[i] = Some((conn.generation, key));
    }

    fn get(&self, conn: ConnId) -> Option<ConnKey> {
        match self.by_conn.get(conn.index as usize) {
            Some(Some((generation, key))) if *generation == conn.generation => Some(*key),
            _ => None,
        }
    }

    fn remove(&mut self, conn: ConnId) -> Option<ConnKey> {
        let key = self.get(conn)?;
        self.by_conn[conn.index as usize] = None;
        Some(key)
    }
}

/// Per-shard context shared by the shard's tasks (never across threads).
pub struct ShardCtx {
    pub engine: RefCell<Engine>,
    ring: RefCell<Ring>,
    links: RefCell<Links>,
    /// TLS, WebSocket and PROXY layers of the connections that have one.
    edge: RefCell<crate::edge::Edge>,
    /// Batches from other shards (`receivers[from]`), applied at the start of each turn. A
    /// sender kicks this shard's ring after it sent (`Ring::kick`), which wakes the loop.
    receivers: Vec<Option<flume::Receiver<Batch>>>,
    /// Other shards' ring fds, by shard id (own entry unused): targets of `Ring::kick`.
    peer_rings: Vec<RawFd>,
    /// Set when another task gave the engine work (a batch, a Kafka answer, `$SYS`).
    kicked: Cell<bool>,
    loop_waker: Cell<Option<Waker>>,
    /// Shard 0 of a clustered broker: the cluster driver, handed each turn's forwards.
    cluster: Option<Rc<crate::cluster::ClusterRuntime>>,
    /// This shard's end of authentication, when configured.
    pub auth: Option<crate::auth::ShardAuth>,
}

impl ShardCtx {
    /// Wakes the shard loop: the engine has inputs that did not come from the ring.
    pub fn kick(&self) {
        self.kicked.set(true);
        if let Some(w) = self.loop_waker.take() {
            w.wake();
        }
    }
}

/// A running broker: the shard threads and the means to stop them.
pub struct Broker {
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
    shutdown: Arc<AtomicBool>,
    /// Bound addresses (port 0 resolved), filled in by shard 0.
    pub local_addrs: Vec<SocketAddr>,
}

impl Broker {
    /// Asks every shard to stop: listeners close, v5 clients get DISCONNECT 0x8B, wills go out.
    pub fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
    }

    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        self.shutdown.clone()
    }

    /// Waits for every shard thread to finish.
    pub fn join(self) -> Result<(), ShardError> {
        for handle in self.handles {
            handle
                .join()
                .map_err(|e| ShardError::Runtime(e.to_string()))?;
        }
        Ok(())
    }
}

/// Binds a listening socket with SO_REUSEPORT so every shard gets its own accept queue.
fn bind_listener(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// Fails if another socket (another broker) already listens on `addr`. SO_REUSEPORT would
/// otherwise let this process bind beside it silently and the kernel would split new clients
/// between two brokers with separate sessions. A probe bind without SO_REUSEPORT conflicts with
/// any listener on the address.
fn ensure_address_free(addr: SocketAddr) -> Result<(), ShardError> {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() == 0 {
        return Ok(()); // the kernel picks a free port
    }
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let probe = || -> std::io::Result<()> {
        let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        // TIME_WAIT leftovers of an earlier run must not count as a listener.
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())
    };
    match probe() {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
            Err(ShardError::AddressInUse { addr })
        }
        Err(source) => Err(ShardError::Bind { addr, source }),
    }
}

/// Starts `config.shards` shards and returns once every one is listening.
pub fn start(
    config: RuntimeConfig,
    bridge: Option<crate::bridge::BridgeLink>,
) -> Result<Broker, ShardError> {
    let count = usize::from(config.shards.max(1));
    if count > SHARDS_MAX {
        return Err(ShardError::TooManyShards {
            requested: count,
            max: SHARDS_MAX,
        });
    }
    config.limits.validate()?;
    config.rules.validate()?;
    // Resolve port 0 once, so every shard binds the same port.
    let mut listen = Vec::new();
    let mut first_listeners = Vec::new();
    let addrs: Vec<SocketAddr> = config
        .listen
        .iter()
        .copied()
        .chain(config.listeners.iter().map(|l| l.addr))
        .collect();
    for addr in &addrs {
        ensure_address_free(*addr)?;
        let l = bind_listener(*addr, config.listen_backlog).map_err(|source| ShardError::Bind {
            addr: *addr,
            source,
        })?;
        let bound = l.local_addr().map_err(|source| ShardError::Bind {
            addr: *addr,
            source,
        })?;
        listen.push(bound);
        first_listeners.push(Some(l));
    }
    // senders[from][to], receivers[to][from]
    let mut senders: Vec<Vec<Option<flume::Sender<Batch>>>> = (0..count)
        .map(|_| (0..count).map(|_| None).collect())
        .collect();
    let mut receivers: Vec<Vec<Option<flume::Receiver<Batch>>>> = (0..count)
        .map(|_| (0..count).map(|_| None).collect())
        .collect();
    for from in 0..count {
        for to in 0..count {
            if from != to {
                let (tx, rx) = flume::bounded(CROSS_SHARD_CHANNEL_BATCHES);
                senders[from][to] = Some(tx);
                receivers[to][from] = Some(rx);
            }
        }
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    crate::edge::tls::spawn_reloader(&config.listeners, shutdown.clone())
        .map_err(|e| ShardError::Runtime(format!("cannot start the tls reloader: {e}")))?;
    let started = Arc::new(AtomicU16::new(0));
    let rings: Arc<RingTable> = Arc::new(RingTable {
        fds: (0..count).map(|_| AtomicI32::new(-1)).collect(),
        ready: AtomicU16::new(0),
    });
    let failed: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut handles = Vec::new();
    let (mut bridges, inbound) = match bridge {
        Some(link) => (
            link.shards.into_iter().map(Some).collect::<Vec<_>>(),
            Some(link.inbound),
        ),
        None => (Vec::new(), None),
    };
    for (id, (tx_row, rx_row)) in senders.into_iter().zip(receivers).enumerate() {
        let placement = if config.pin && count <= cpus {
            Placement::Fixed(id)
        } else {
            Placement::Unbound
        };
        let mut own_listeners = Vec::new();
        for (i, addr) in listen.iter().enumerate() {
            let l = match first_listeners[i].take() {
                Some(l) => l,
                None => bind_listener(*addr, config.listen_backlog).map_err(|source| {
                    ShardError::Bind {
                        addr: *addr,
                        source,
                    }
                })?,
            };
            own_listeners.push(l);
        }
        let setup = ShardSetup {
            id: id as ShardId,
            count: count as u16,
            config: config.clone(),
            listeners: own_listeners,
            tx_row,
            rx_row,
            rings: rings.clone(),
            shutdown: shutdown.clone(),
            started: started.clone(),
            failed: failed.clone(),
            bridge: bridges.get_mut(id).and_then(Option::take),
            inbound: inbound.clone(),
        };
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("ringmq-shard-{id}"))
            .io_memory(IO_MEMORY_PER_SHARD_BYTES)
            .ring_depth(GLOMMIO_RING_DEPTH)
            .spawn(move || async move { run_shard(setup).await })
            .map_err(|e| ShardError::Runtime(format!("shard {id} did not start: {e}")))?;
        handles.push(handle);
    }
    // Wait until every shard listens. glommio's join handle cannot be polled for a thread that
    // died early, so a shard that never reports in is caught by the deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    while usize::from(started.load(Ordering::Acquire)) < count {
        if let Some(reason) = failed.lock().ok().and_then(|f| f.clone()) {
            shutdown.store(true, Ordering::Release);
            return Err(ShardError::Runtime(reason));
        }
        if Instant::now() > deadline {
            return Err(ShardError::Runtime(
                "shards did not start within 10 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(Broker {
        handles,
        shutdown,
        local_addrs: listen,
    })
}

/// Every shard's ring fd, published at start-up so shards can kick each other's rings.
struct RingTable {
    fds: Vec<AtomicI32>,
    /// Shards whose ring exists (their `fds` entry is set).
    ready: AtomicU16,
}

/// What one shard thread starts with.
struct ShardSetup {
    id: ShardId,
    count: u16,
    config: RuntimeConfig,
    listeners: Vec<std::net::TcpListener>,
    tx_row: Vec<Option<flume::Sender<Batch>>>,
    rx_row: Vec<Option<flume::Receiver<Batch>>>,
    rings: Arc<RingTable>,
    shutdown: Arc<AtomicBool>,
    started: Arc<AtomicU16>,
    failed: Arc<std::sync::Mutex<Option<String>>>,
    bridge: Option<crate::bridge::ShardBridge>,
    inbound: Option<flume::Receiver<bridge_kafka::InboundMessage>>,
}

fn new_ring(id: ShardId) -> Result<Ring, String> {
    let cfg = RingConfig {
        buffer_count: RECV_BUFFERS,
        buffer_size: RECV_BUFFER_BYTES,
        ..RingConfig::default()
    };
    let ring =
        Ring::new(cfg).map_err(|e| format!("shard {id}: cannot set up its io_uring: {e}"))?;
    info!(shard = id, features = ?ring.features(), "data plane ring ready");
    Ok(ring)
}

async fn run_shard(setup: ShardSetup) {
    let id = setup.id;
    let mut ring = match new_ring(id) {
        Ok(r) => r,
        Err(reason) => {
            error!(shard = id, %reason, "shard cannot start");
            if let Ok(mut f) = setup.failed.lock() {
                f.get_or_insert(reason);
            }
            return;
        }
    };
    for l in setup.listeners {
        if let Err(err) = ring.add_listener(l) {
            let reason = format!("shard {id}: cannot accept on its listener: {err}");
            error!(shard = id, %reason, "shard cannot start");
            if let Ok(mut f) = setup.failed.lock() {
                f.get_or_insert(reason);
            }
            return;
        }
    }
    // Publish this ring for the others' kicks, then wait until every shard's ring exists.
    if let Some(slot) = setup.rings.fds.get(usize::from(id)) {
        slot.store(ring.ring_fd(), Ordering::Release);
    }
    setup.rings.ready.fetch_add(1, Ordering::AcqRel);
    while setup.rings.ready.load(Ordering::Acquire) < setup.count {
        if setup.shutdown.load(Ordering::Acquire) {
            return;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    let peer_rings: Vec<RawFd> = setup
        .rings
        .fds
        .iter()
        .map(|fd| fd.load(Ordering::Acquire))
        .collect();
    let acks = setup.bridge.as_ref().map(|b| b.acks.clone());
    let bridge: Option<Box<dyn engine::bridge::Bridge>> = setup.bridge.map(|b| {
        Box::new(crate::bridge::KafkaBridge {
            shard: id,
            sender: b.sender,
            matcher: b.matcher,
        }) as Box<dyn engine::bridge::Bridge>
    });
    let mut engine = Engine::new(
        id,
        setup.count,
        setup.config.limits.clone(),
        Arc::new(setup.config.rules.clone()),
        bridge,
    );
    let cluster = crate::cluster::start_on_shard(id, setup.config.cluster.clone(), &mut engine);
    let (auth, auth_replies) = match setup.config.auth.clone() {
        Some(service) => {
            let (shard, replies) = crate::auth::ShardAuth::new(service, &mut engine);
            (Some(shard), Some(replies))
        }
        None => (None, None),
    };
    let ctx = Rc::new(ShardCtx {
        engine: RefCell::new(engine),
        ring: RefCell::new(ring),
        links: RefCell::new(Links {
            handoffs: (0..setup.count).map(|_| Vec::new()).collect(),
            ..Links::default()
        }),
        edge: RefCell::new(crate::edge::Edge::new(
            setup.config.listen.len(),
            &setup.config.listeners,
        )),
        receivers: setup.rx_row,
        peer_rings,
        kicked: Cell::new(false),
        loop_waker: Cell::new(None),
        cluster,
        auth,
    });
    if let Some(cluster) = &ctx.cluster {
        cluster.spawn(&ctx);
    }
    if let Some(replies) = auth_replies {
        glommio::spawn_local(crate::auth::reply_loop(ctx.clone(), replies)).detach();
        glommio::spawn_local(crate::auth::acl_watch_loop(ctx.clone())).detach();
    }
    if let Some(acks) = acks {
        glommio::spawn_local(crate::bridge::ack_loop(ctx.clone(), acks)).detach();
    }
    if let Some(inbound) = setup.inbound {
        glommio::spawn_local(crate::bridge::inbound_loop(ctx.clone(), inbound)).detach();
    }
    let tx = setup.tx_row;
    setup.started.fetch_add(1, Ordering::AcqRel);
    info!(shard = id, "shard started");
    glommio::spawn_local(metrics_loop(ctx.clone())).detach();
    glommio::spawn_local(timer_loop(ctx.clone())).detach();
    glommio::spawn_local(crate::overload::reload_loop(ctx.clone())).detach();
    let sys_interval = ctx.engine.borrow().state.limits.sys_interval_secs;
    if sys_interval > 0 {
        glommio::spawn_local(sys_loop(ctx.clone(), sys_interval)).detach();
    }
    let stopping = Rc::new(Cell::new(false));
    glommio::spawn_local(watch_shutdown(
        ctx.clone(),
        setup.shutdown,
        stopping.clone(),
    ))
    .detach();
    data_plane_loop(&ctx, &tx, &stopping).await;
    info!(shard = id, "shard stopped");
}

/// The shard loop: see the module docs for one turn.
async fn data_plane_loop(
    ctx: &Rc<ShardCtx>,
    tx: &[Option<flume::Sender<Batch>>],
    stopping: &Rc<Cell<bool>>,
) {
    let mut drain_until: Option<Instant> = None;
    let mut yielded_at = Instant::now();
    let mut active_at = Instant::now();
    loop {
        let now = Instant::now();
        if stopping.get() && drain_until.is_none() {
            ctx.engine.borrow_mut().begin_shutdown();
            drain_until = Some(now + SHUTDOWN_DRAIN);
        }
        if turn(ctx, tx, now) {
            active_at = now;
        }
        if let Some(until) = drain_until {
            let done = {
                let engine = ctx.engine.borrow();
                engine.connection_count() == 0 && !engine.has_work()
            };
            if done || now >= until {
                flush(ctx);
                break;
            }
        }
        // Let glommio's other tasks run now and then (and whenever they asked to).
        if now.duration_since(yielded_at) >= GLOMMIO_YIELD_PERIOD || ctx.kicked.get() {
            flush(ctx);
            futures_lite::future::yield_now().await;
            yielded_at = Instant::now();
            continue;
        }
        if has_work(ctx) {
            flush(ctx);
            continue;
        }
        if now.duration_since(active_at) < DEEP_SLEEP_AFTER {
            // Busy lately: sleep in the ring itself, until the next completion, the next
            // deadline or the next yield to glommio.
            let mut until = yielded_at + GLOMMIO_YIELD_PERIOD;
            if let Some(at) = ctx.engine.borrow().poll_timeout() {
                until = until.min(at);
            }
            let timeout = until.saturating_duration_since(now);
            if let Err(err) = ctx.ring.borrow_mut().submit_and_wait(timeout) {
                warn!(error = %err, "io_uring wait failed");
            }
            continue;
        }
        flush(ctx);
        wait_for_work(ctx).await;
        yielded_at = Instant::now();
    }
    // Give the last messages (wills sent to other shards) a moment to go out and be delivered.
    let end = Instant::now() + Duration::from_millis(100);
    while Instant::now() < end {
        turn(ctx, tx, Instant::now());
        flush(ctx);
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

/// One io_uring_enter for what the turn queued (sends, re-arms, kicks).
fn flush(ctx: &ShardCtx) {
    if let Err(err) = ctx.ring.borrow_mut().flush() {
        warn!(error = %err, "io_uring submit failed");
    }
}

/// Whether the next turn has something to do without waiting.
fn has_work(ctx: &ShardCtx) -> bool {
    ctx.kicked.get()
        || ctx.receivers.iter().flatten().any(|rx| !rx.is_empty())
        || ctx.engine.borrow().has_work()
        || (!ctx.links.borrow().pending_accepts.is_empty()
            && !ctx.engine.borrow().admission().accepts_should_pause())
}

/// One loop turn; true if anything happened (a batch, a completion, an output). The caller
/// submits what it queued.
fn turn(ctx: &ShardCtx, tx: &[Option<flume::Sender<Batch>>], now: Instant) -> bool {
    let mut active = false;
    let mut engine = ctx.engine.borrow_mut();
    let mut ring = ctx.ring.borrow_mut();
    let mut links = ctx.links.borrow_mut();
    let mut edge = ctx.edge.borrow_mut();
    ctx.kicked.set(false);
    // What this turn's poll reports arrived after this (not after the previous turn: with
    // DEFER_TASKRUN bytes that arrived during it became completions only at its enter).
    let floor = ring.reported_through();
    engine.set_input_floor(floor);
    if !links.armed.is_empty() {
        links.armed.retain(|_, a| a.added_at >= floor);
    }
    // 1. Other shards first: their route changes precede this turn's publishes.
    let batches = ctx.receivers.iter().flatten().flat_map(|rx| rx.try_iter());
    for batch in batches {
        active = true;
        engine.handle_shard_msgs(batch.msgs, now);
        for h in batch.handoffs {
            let conn = engine.open_handed_off_since(&h.buffered, h.since, now);
            if let Some(meta) = h.meta {
                engine.set_meta(conn, *meta);
            }
            match ring.add_conn(h.fd, conn.to_u64()) {
                Ok(key) => {
                    links.insert(conn, key);
                    let armed = ArmedFloor {
                        floor: h.since.min(floor),
                        added_at: Instant::now(),
                    };
                    links.armed.insert(conn.to_u64(), armed);
                    edge.adopt(conn, h.edge, &mut engine, now);
                }
                Err(err) => {
                    warn!(error = %err, "cannot serve a handed-off connection");
                    engine.handle_closed(conn, now);
                }
            }
        }
    }
    // 2. The ring's completions.
    let mut accepted: smallvec::SmallVec<[(usize, OwnedFd); 8]> = Default::default();
    let completions = ring.poll(|event| match event {
        // The batch it announces is taken at the start of the next turn (`has_work` sees it).
        Event::Kicked { .. } => {}
        Event::Accepted { listener, fd } => accepted.push((listener, fd)),
        Event::Received { user, data } => {
            if let Some(d) = links.detaching.get_mut(&user) {
                match d.edge.as_mut() {
                    Some(layer) => layer.stash(data),
                    None => d.buffered.extend_from_slice(data),
                }
            } else {
                let conn = ConnId::from_u64(user);
                if let Some(a) = links.armed.get(&user) {
                    engine.note_input_floor(conn, a.floor);
                }
                edge.input(conn, data, &mut engine, now);
            }
        }
        Event::Sent { user, queued_bytes } => {
            engine.handle_sent(ConnId::from_u64(user), queued_bytes);
        }
        Event::Closed { user, error } => {
            if let Some(err) = &error {
                debug!(error = %err, "connection closed by the transport");
            }
            links.detaching.remove(&user);
            links.armed.remove(&user);
            let conn = ConnId::from_u64(user);
            links.remove(conn);
            edge.closed(conn);
            engine.handle_closed(conn, now);
        }
        Event::Detached { user, fd } => {
            if let Some(d) = links.detaching.remove(&user) {
                if let Some(out) = links.handoffs.get_mut(usize::from(d.home)) {
                    out.push(HandOff {
                        fd,
                        buffered: d.buffered.freeze(),
                        since: d.since,
                        meta: d.meta,
                        edge: d.edge,
                    });
                }
            }
        }
    });
    links.pending_accepts.extend(accepted);
    while let Some((listener, fd)) = links.pending_accepts.pop_front() {
        // At the handshake bound a socket waits (a slow connect), it is not closed.
        if engine.admission().accepts_should_pause() {
            links.pending_accepts.push_front((listener, fd));
            ring.pause_accepts();
            break;
        }
        // Over the shard's share of a connection bound: closed before it costs a connection.
        let Some((conn, fd)) = crate::overload::accept(&mut engine, listener, fd, now) else {
            continue;
        };
        // False: refused before any byte (PROXY protocol from an untrusted peer); fd dropped.
        if !edge.accepted(listener, &fd, conn, &mut engine, now) {
            engine.handle_closed(conn, now);
            continue;
        }
        match ring.add_conn(fd, conn.to_u64()) {
            Ok(key) => {
                links.insert(conn, key);
                // It was established after this turn's floor (its accept was reported now).
                let armed = ArmedFloor {
                    floor,
                    added_at: Instant::now(),
                };
                links.armed.insert(conn.to_u64(), armed);
            }
            Err(err) => {
                warn!(error = %err, "cannot serve an accepted connection");
                engine.handle_closed(conn, now);
            }
        }
    }
    // Read after the poll: what this turn handles arrived before it (the engine orders
    // cross-shard replays by it, see `RouteChange::since`).
    let now = Instant::now();
    // 3. Timers.
    if engine.poll_timeout().is_some_and(|at| at <= now) {
        engine.handle_timeout(now);
    }
    edge.handle_timeouts(now);
    edge.flush(&mut ring, |conn| links.get(conn));
    // 4. Every connection with work, once.
    engine.process(now);
    // 5. Its outputs.
    active |= completions > 0;
    while let Some(output) = engine.poll_output() {
        active = true;
        if let Output::Authenticate { conn, request } = output {
            crate::auth::submit(ctx.auth.as_ref(), &mut engine, conn, *request, now);
            continue;
        }
        apply_output(&mut ring, &mut links, &mut edge, output);
    }
    crate::overload::pace_accepts(&mut ring, &engine, links.pending_accepts.is_empty(), now);
    if let Some(cluster) = &ctx.cluster {
        if cluster.after_turn(&mut engine, now) {
            // A claim that ended at once (no peer up) resumes its connection next turn.
            ctx.kicked.set(true);
        }
    }
    // 6. One batch per destination shard.
    for (to, sender) in tx.iter().enumerate() {
        let Some(sender) = sender else { continue };
        let msgs = engine.poll_outbox(to as ShardId).unwrap_or_default();
        let handoffs = std::mem::take(&mut links.handoffs[to]);
        if msgs.is_empty() && handoffs.is_empty() {
            continue;
        }
        match sender.try_send(Batch { msgs, handoffs }) {
            Ok(()) => {
                // Wake the destination (submitted with this turn's enter, no syscall of its own).
                if let Some(&fd) = ctx.peer_rings.get(to) {
                    ring.kick(fd, to as u32, u32::from(engine.id()));
                }
            }
            Err(flume::TrySendError::Full(batch)) => {
                // The channel is full: keep the batch for the next turn.
                engine.unpoll_outbox(to as ShardId, batch.msgs);
                links.handoffs[to].extend(batch.handoffs);
                ctx.kicked.set(true);
            }
            Err(flume::TrySendError::Disconnected(_)) => {
                debug!(to, "cross-shard channel closed; batch dropped")
            }
        }
    }
    // 7. The caller submits everything this turn queued in one io_uring_enter.
    active
}

fn apply_output(ring: &mut Ring, links: &mut Links, edge: &mut crate::edge::Edge, output: Output) {
    match output {
        Output::Transmit { conn, data } => {
            // Framed and encrypted for layered connections; a refused send closes.
            if let Some(key) = links.get(conn) {
                edge.transmit(ring, key, conn, data);
            }
        }
        Output::Close { conn } => {
            if let Some(key) = links.get(conn) {
                edge.closing(ring, key, conn);
                ring.close(key);
            }
        }
        Output::PauseReading { conn } => {
            if let Some(key) = links.get(conn) {
                ring.pause_recv(key);
            }
        }
        Output::ResumeReading { conn } => {
            if let Some(key) = links.get(conn) {
                ring.resume_recv(key);
            }
        }
        // Handled by `turn` (the engine answers it, not the ring).
        Output::Authenticate { .. } => {}
        Output::HandOff {
            conn,
            home,
            buffered,
            since,
            meta,
        } => {
            if let Some(key) = links.remove(conn) {
                let d = Detaching {
                    home,
                    buffered: BytesMut::from(&buffered[..]),
                    since,
                    meta,
                    edge: edge.take(conn),
                };
                links.detaching.insert(conn.to_u64(), d);
                ring.detach(key);
            }
        }
    }
}

/// Sleeps through glommio's reactor until the ring has completions (the ring's eventfd) or
/// another task kicked the loop; `timer_loop` bounds it for the engine's deadlines.
// The ring stays borrowed while this task sleeps in `Ring::wait`: the only mutable borrow is
// `turn`'s, on this same task, which is suspended here; the metrics task only `try_borrow`s.
#[allow(clippy::await_holding_refcell_ref)]
async fn wait_for_work(ctx: &Rc<ShardCtx>) {
    if has_work(ctx) {
        futures_lite::future::yield_now().await;
        return;
    }
    let kicked = std::future::poll_fn(|cx| {
        if ctx.kicked.get() {
            Poll::Ready(())
        } else {
            ctx.loop_waker.set(Some(cx.waker().clone()));
            Poll::Pending
        }
    });
    let ring = ctx.ring.borrow();
    futures_lite::future::or(ring.wait(), kicked).await;
}

/// Wakes the loop every `TIMER_TICK`: runs the engine's deadlines (keepalive, will delay,
/// session expiry, connect timeout) at that granularity, with one glommio timer per tick instead
/// of one armed and cancelled per sleep of the loop (at fleet rates the loop sleeps and wakes tens
/// of thousands of times a second). It is also a safety net: an end-to-end test showed a rare
/// wake-up of the loop going missing (a SUBACK held until the next wake); with this it waits at
/// most one tick. An idle turn costs no syscall on the data plane ring.
async fn timer_loop(ctx: Rc<ShardCtx>) {
    loop {
        glommio::timer::sleep(TIMER_TICK).await;
        ctx.kick();
    }
}

/// Watches the process-wide shutdown flag and kicks the loop when it is set.
async fn watch_shutdown(ctx: Rc<ShardCtx>, flag: Arc<AtomicBool>, stopping: Rc<Cell<bool>>) {
    while !flag.load(Ordering::Acquire) {
        glommio::timer::sleep(TICK).await;
    }
    stopping.set(true);
    ctx.kick();
}

/// `$SYS` every `interval_secs`.
async fn sys_loop(ctx: Rc<ShardCtx>, interval_secs: u32) {
    let interval = Duration::from_secs(u64::from(interval_secs.max(1)));
    loop {
        glommio::timer::sleep(interval).await;
        let now = Instant::now();
        let mut engine = ctx.engine.borrow_mut();
        engine.sys_tick(now);
        if let Some(cluster) = &ctx.cluster {
            for (topic, value) in cluster.sys_view() {
                engine.publish_sys(&topic, value, now);
            }
        }
        drop(engine);
        ctx.kick();
    }
}

/// Publishes counter deltas and gauges into the process-wide metrics recorder once a second.
async fn metrics_loop(ctx: Rc<ShardCtx>) {
    let id = ctx.engine.borrow().id();
    let mut exporter = Exporter::new(id);
    let mut edge_exporter = crate::edge::EdgeExporter::new(id);
    let mut last_runtime = glommio::executor().executor_stats().total_runtime();
    let mut last_at = Instant::now();
    loop {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        let runtime = glommio::executor().executor_stats().total_runtime();
        let now = Instant::now();
        let busy = (runtime.saturating_sub(last_runtime)).as_secs_f64()
            / now.duration_since(last_at).as_secs_f64().max(1e-9);
        last_runtime = runtime;
        last_at = now;
        let engine = ctx.engine.borrow();
        let state = &engine.state;
        let ring = ctx.ring.try_borrow().ok().map(|r| r.stats());
        let gauges = Gauges {
            connections: u64::from(state.connections),
            sessions_online: u64::from(state.connections),
            sessions_offline: state
                .sessions_total()
                .saturating_sub(u64::from(state.connections)),
            subscriptions: state.subscription_count(),
            retained: state.retained_count(),
            queued: state.queued_messages(),
            cross_shard_queue_depth: state.outboxes.iter().map(|o| o.len() as u64).sum(),
            busy_ratio: busy.clamp(0.0, 1.0),
        };
        exporter.publish(&state.counters, gauges, ring);
        exporter.publish_admission(engine.admission(), now);
        if let Ok(edge) = ctx.edge.try_borrow() {
            edge_exporter.publish(&edge.counters);
        }
    }
}
