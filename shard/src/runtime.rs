//! The glommio seam: the only module (with `connection`'s stream type) that knows the runtime.
//! Starts one executor per shard, each with its own SO_REUSEPORT listener, wires the N×N
//! cross-shard channels, and runs the shard's housekeeping tasks (channel receivers, flushers,
//! timers, metrics, `$SYS`).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use tracing::{debug, error, info, warn};

use crate::config::{Limits, SubscribeRules};
use crate::message::{ShardId, ShardMsg, SHARDS_MAX};
use crate::metrics::{Exporter, Gauges};
use crate::park::{self, ParkSet};
use crate::session::{CloseReason, InboundAliases, ParkedConn};
use crate::state::ShardState;
use crate::ShardError;

/// The socket type connections use.
pub type Stream = TcpStream;

/// Batches a channel between two shards holds before the sender waits (the outbox, bounded by
/// `Limits::cross_shard_outbox_len_max`, absorbs bursts meanwhile).
pub const CROSS_SHARD_CHANNEL_BATCHES: usize = 1024;
/// io_uring registered-buffer memory per shard. glommio locks it; with an 8 MiB RLIMIT_MEMLOCK
/// and up to 3 rings per executor this keeps a 2-shard broker well inside the limit.
pub const IO_MEMORY_PER_SHARD_BYTES: usize = 512 * 1024;
/// io_uring submission queue depth per ring. Deeper than glommio's default because the kernel
/// sizes a ring's poll/cancel hash table from it (64 buckets at depth 1024, 256 from 8192 on):
/// with tens of thousands of idle sockets polled in one ring, every cancel glommio issues when
/// the shard parks and wakes walks a bucket. perf showed `io_poll_find` at 24% of a fan-in
/// run's samples at 1024; 8192 cut the shard's CPU by ~5-10% in an A/B on the same load.
pub const RING_DEPTH: usize = 8192;
/// Housekeeping tick: timers, shutdown flag.
const TICK: Duration = Duration::from_millis(100);

/// Everything a shard needs to start.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub listen: Vec<SocketAddr>,
    pub shards: u16,
    /// Pin shard i to CPU i (when there are that many CPUs).
    pub pin: bool,
    pub listen_backlog: u32,
    pub limits: Limits,
    pub rules: SubscribeRules,
}

/// Per-shard context shared by the shard's tasks (never across threads).
pub struct ShardCtx {
    pub state: RefCell<ShardState>,
    /// Where every connection's read lands first (`READ_CHUNK_BYTES`).
    pub read_scratch: RefCell<Box<[u8]>>,
    /// Frames are split off this buffer as `Bytes`; empty between reads.
    pub read_buf: RefCell<BytesMut>,
    /// Reused by every connection's writes; empty between writes.
    pub write_buf: RefCell<BytesMut>,
    /// This shard's link to the Kafka bridge, when one is configured.
    pub bridge: Option<crate::bridge::ShardBridge>,
    /// Where idle connections park; None when parking is off.
    pub park: Option<ParkSet>,
}

impl ShardCtx {
    /// Passes an accepted connection to the shard owning its client id.
    pub fn hand_off(&self, stream: &TcpStream, home: ShardId, buffered: Bytes) {
        // SAFETY: dup returns a new descriptor we own; the original closes when the accepting
        // task drops its stream.
        let fd = unsafe { libc::dup(stream.as_raw_fd()) };
        if fd < 0 {
            warn!(error = %std::io::Error::last_os_error(), "could not duplicate a socket for hand-off");
            return;
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut state = self.state.borrow_mut();
        state.counters.handoffs += 1;
        state.send_to(home, ShardMsg::HandOff { fd, buffered });
    }

    /// Parks connection (`slot`, `generation`): its socket moves to the shard's epoll set and the
    /// caller's task may end (dropping `stream` closes only the task's descriptor). On failure
    /// (parking off, no descriptor left for the duplicate) the caller keeps serving.
    pub fn park(
        &self,
        stream: &Stream,
        slot: u32,
        generation: u32,
        aliases_in: InboundAliases,
    ) -> Result<(), InboundAliases> {
        let Some(set) = &self.park else {
            return Err(aliases_in);
        };
        let id = park::conn_id(slot, generation);
        let fd = match set.park(stream.as_raw_fd(), id) {
            Ok(fd) => fd,
            Err(err) => {
                // Typically EMFILE: the open-files limit, not the code. The connection stays
                // served (it costs its task) and is asked again next sweep.
                debug!(error = %err, "could not park an idle connection");
                return Err(aliases_in);
            }
        };
        let conn = ParkedConn { fd, aliases_in };
        let mut state = self.state.borrow_mut();
        match state.set_parked(slot, generation, conn, park::parked_waker(id)) {
            Ok(()) => Ok(()),
            Err(conn) => {
                set.forget(&conn.fd);
                Err(conn.aliases_in)
            }
        }
    }

    /// Serves parked connection `id` again, if it still is parked.
    fn unpark(self: &Rc<Self>, id: u64) {
        let (slot, generation) = park::split_id(id);
        let Some(unparked) = self.state.borrow_mut().take_parked(slot, generation) else {
            return;
        };
        if let Some(set) = &self.park {
            set.forget(&unparked.fd);
        }
        glommio::spawn_local(crate::connection::resume(self.clone(), unparked)).detach();
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
    for addr in &config.listen {
        let l = bind_listener(*addr, config.listen_backlog).map_err(|source| ShardError::Bind {
            addr: *addr,
            source,
        })?;
        let bound = l.local_addr().map_err(|source| ShardError::Bind {
            addr: *addr,
            source,
        })?;
        listen.push(bound);
        first_listeners.push(l);
    }
    // senders[from][to], receivers[to][from]
    let mut senders: Vec<Vec<Option<SharedSender<Vec<ShardMsg>>>>> = (0..count)
        .map(|_| (0..count).map(|_| None).collect())
        .collect();
    let mut receivers: Vec<Vec<Option<SharedReceiver<Vec<ShardMsg>>>>> = (0..count)
        .map(|_| (0..count).map(|_| None).collect())
        .collect();
    for from in 0..count {
        for to in 0..count {
            if from != to {
                let (tx, rx) = shared_channel::new_bounded(CROSS_SHARD_CHANNEL_BATCHES);
                senders[from][to] = Some(tx);
                receivers[to][from] = Some(rx);
            }
        }
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicU16::new(0));
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut handles = Vec::new();
    let mut first_listeners = first_listeners.into_iter().map(Some).collect::<Vec<_>>();
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
            let l = match first_listeners.get_mut(i).and_then(Option::take) {
                Some(l) if id == 0 => l,
                other => {
                    if let Some(l) = other {
                        first_listeners[i] = Some(l);
                    }
                    bind_listener(*addr, config.listen_backlog).map_err(|source| {
                        ShardError::Bind {
                            addr: *addr,
                            source,
                        }
                    })?
                }
            };
            own_listeners.push(l);
        }
        let cfg = config.clone();
        let shard_bridge = bridges.get_mut(id).and_then(Option::take);
        let shard_inbound = inbound.clone();
        let shutdown_flag = shutdown.clone();
        let started_count = started.clone();
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("ringmq-shard-{id}"))
            .io_memory(IO_MEMORY_PER_SHARD_BYTES)
            .ring_depth(RING_DEPTH)
            .spawn(move || async move {
                run_shard(
                    id as ShardId,
                    count as u16,
                    cfg,
                    own_listeners,
                    tx_row,
                    rx_row,
                    shutdown_flag,
                    started_count,
                    shard_bridge,
                    shard_inbound,
                )
                .await;
            })
            .map_err(|e| ShardError::Runtime(format!("shard {id} did not start: {e}")))?;
        handles.push(handle);
    }
    // Wait until every shard listens. glommio's join handle cannot be polled for a thread that
    // died early, so a shard that never reports in is caught by the deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    while usize::from(started.load(Ordering::Acquire)) < count {
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

#[allow(clippy::too_many_arguments)]
async fn run_shard(
    id: ShardId,
    count: u16,
    config: RuntimeConfig,
    listeners: Vec<std::net::TcpListener>,
    tx_row: Vec<Option<SharedSender<Vec<ShardMsg>>>>,
    rx_row: Vec<Option<SharedReceiver<Vec<ShardMsg>>>>,
    shutdown: Arc<AtomicBool>,
    started: Arc<AtomicU16>,
    bridge: Option<crate::bridge::ShardBridge>,
    inbound: Option<flume::Receiver<bridge_kafka::InboundMessage>>,
) {
    let acks = bridge.as_ref().map(|b| b.acks.clone());
    let ctx = Rc::new(ShardCtx {
        state: RefCell::new(ShardState::new(
            id,
            count,
            config.limits.clone(),
            config.rules.clone(),
        )),
        read_scratch: RefCell::new(
            vec![0u8; crate::connection::READ_CHUNK_BYTES].into_boxed_slice(),
        ),
        read_buf: RefCell::new(BytesMut::with_capacity(32 * 1024)),
        write_buf: RefCell::new(BytesMut::with_capacity(128 * 1024)),
        bridge,
        park: if config.limits.park_after_idle_secs > 0 {
            match ParkSet::new(id) {
                Ok(set) => Some(set),
                Err(err) => {
                    warn!(shard = id, error = %err, "cannot park idle connections (epoll or thread creation failed); each keeps its task");
                    None
                }
            }
        } else {
            None
        },
    });
    if ctx.park.is_some() {
        glommio::spawn_local(ready_loop(ctx.clone())).detach();
        glommio::spawn_local(woken_loop(ctx.clone())).detach();
    }
    if let Some(acks) = acks {
        glommio::spawn_local(crate::bridge::ack_loop(ctx.clone(), acks)).detach();
    }
    if let Some(inbound) = inbound {
        glommio::spawn_local(crate::bridge::inbound_loop(ctx.clone(), inbound)).detach();
    }
    // Connect the channel ends (each side awaits its peer).
    let mut connected_tx: Vec<Option<Rc<ConnectedSender<Vec<ShardMsg>>>>> = Vec::new();
    let mut pending_rx = Vec::new();
    let connect_rx = async {
        let mut out = Vec::new();
        for rx in rx_row.into_iter().flatten() {
            out.push(rx.connect().await);
        }
        out
    };
    let connect_tx = async {
        let mut out = Vec::new();
        for tx in tx_row {
            match tx {
                Some(tx) => out.push(Some(Rc::new(tx.connect().await))),
                None => out.push(None),
            }
        }
        out
    };
    let (rx, tx) = futures_lite::future::zip(connect_rx, connect_tx).await;
    pending_rx.extend(rx);
    connected_tx.extend(tx);

    // One flusher per destination shard: sends that destination's outbox once per loop turn.
    for (to, tx) in connected_tx.iter().enumerate() {
        if let Some(tx) = tx.clone() {
            glommio::spawn_local(flush_loop(ctx.clone(), to, tx)).detach();
        }
    }
    for rx in pending_rx {
        glommio::spawn_local(receive_loop(ctx.clone(), rx)).detach();
    }
    let mut listener_tasks = Vec::new();
    for l in listeners {
        let fd = l.into_raw_fd();
        // SAFETY: the descriptor is a bound, listening, non-blocking socket we own.
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        listener_tasks.push(glommio::spawn_local(accept_loop(ctx.clone(), listener)));
    }
    started.fetch_add(1, Ordering::AcqRel);
    info!(shard = id, "shard started");
    glommio::spawn_local(metrics_loop(ctx.clone())).detach();
    if ctx.state.borrow().limits.sys_interval_secs > 0 {
        glommio::spawn_local(crate::sys::sys_loop(ctx.clone())).detach();
    }
    // Housekeeping: timers, the idle sweep and the shutdown flag.
    let mut last_sweep = Instant::now();
    loop {
        let wait = {
            let state = ctx.state.borrow();
            let now = Instant::now();
            state
                .next_deadline()
                .map(|d| d.saturating_duration_since(now))
                .unwrap_or(TICK)
                .min(TICK)
        };
        glommio::timer::sleep(wait.max(Duration::from_millis(1))).await;
        let now = Instant::now();
        let mut state = ctx.state.borrow_mut();
        state.run_timers(now);
        if now.duration_since(last_sweep) >= TICK {
            state.sweep_idle(now.duration_since(last_sweep));
            last_sweep = now;
        }
        drop(state);
        if shutdown.load(Ordering::Acquire) {
            break;
        }
    }
    // Shutdown: stop accepting, close every connection (wills go out per spec), let the last
    // cross-shard messages flush.
    for task in listener_tasks {
        drop(task.cancel());
    }
    {
        let mut state = ctx.state.borrow_mut();
        state.shutting_down = true;
        for slot in state.online_slots() {
            if let Some(session) = state.session_mut(slot) {
                if let Some(link) = &mut session.link {
                    link.close.get_or_insert(CloseReason::ServerShuttingDown);
                }
                session.wake();
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let busy = {
            let state = ctx.state.borrow();
            state.connections > 0 || state.outboxes.iter().any(|o| !o.is_empty())
        };
        if !busy {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    // Give other shards a moment to deliver wills we sent them.
    glommio::timer::sleep(Duration::from_millis(100)).await;
    if let Some(set) = &ctx.park {
        set.stop();
    }
    info!(shard = id, "shard stopped");
}

async fn accept_loop(ctx: Rc<ShardCtx>, listener: TcpListener) {
    let mut last_error_log: Option<Instant> = None;
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                ctx.state.borrow_mut().counters.connections_accepted += 0;
                glommio::spawn_local(crate::connection::serve(
                    ctx.clone(),
                    stream,
                    Bytes::new(),
                    false,
                ))
                .detach();
            }
            Err(err) => {
                // EMFILE/ENFILE: a limit, not the code, caps us. Say so at most every 10 s.
                let now = Instant::now();
                if last_error_log.is_none_or(|t| now.duration_since(t) > Duration::from_secs(10)) {
                    let text = err.to_string();
                    if text.contains("Too many open files") {
                        error!(error = %err, "accept failed: the open-files limit caps connections; raise LimitNOFILE / ulimit -n (see tuning/README.md)");
                    } else {
                        warn!(error = %err, "accept failed");
                    }
                    last_error_log = Some(now);
                }
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Sends the outbox for shard `to` as one batch per loop turn.
async fn flush_loop(ctx: Rc<ShardCtx>, to: usize, tx: Rc<ConnectedSender<Vec<ShardMsg>>>) {
    loop {
        // Wait until there is something to send.
        std::future::poll_fn(|cx| {
            let mut state = ctx.state.borrow_mut();
            if state.outboxes[to].is_empty() {
                state.flushers[to] = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        // Let the rest of this loop turn add to the batch.
        glommio::executor().yield_now().await;
        let batch = std::mem::take(&mut ctx.state.borrow_mut().outboxes[to]);
        if batch.is_empty() {
            continue;
        }
        if let Err(err) = tx.send(batch).await {
            warn!(to, error = %err, "cross-shard channel closed");
            return;
        }
    }
}

/// Applies what another shard sent.
async fn receive_loop(ctx: Rc<ShardCtx>, rx: ConnectedReceiver<Vec<ShardMsg>>) {
    while let Some(batch) = rx.recv().await {
        let now = Instant::now();
        for msg in batch {
            match msg {
                ShardMsg::Publish {
                    message,
                    normal,
                    shared,
                } => {
                    ctx.state
                        .borrow_mut()
                        .deliver_local(&message, normal, &shared, now);
                }
                ShardMsg::Route(change) => ctx.state.borrow_mut().apply_route(&change),
                ShardMsg::RouteBarrier { from, barrier } => {
                    ctx.state
                        .borrow_mut()
                        .send_to(from, ShardMsg::RouteAck { barrier });
                }
                ShardMsg::RouteAck { barrier } => ctx.state.borrow_mut().ack_barrier(barrier),
                ShardMsg::Retain(message) => ctx.state.borrow_mut().apply_retain(&message),
                ShardMsg::HandOff { fd, buffered } => {
                    // SAFETY: the fd is a connected TCP socket handed to us by its accepting shard.
                    let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
                    glommio::spawn_local(crate::connection::serve(
                        ctx.clone(),
                        stream,
                        buffered,
                        true,
                    ))
                    .detach();
                }
                ShardMsg::Stats { from, stats } => {
                    let mut state = ctx.state.borrow_mut();
                    if let Some(slot) = state.stats_by_shard.get_mut(usize::from(from)) {
                        *slot = stats;
                    }
                }
                ShardMsg::Shutdown => {}
            }
        }
    }
    debug!("cross-shard channel closed");
}

/// Resumes parked connections whose sockets the park thread saw turn readable.
async fn ready_loop(ctx: Rc<ShardCtx>) {
    let Some(ready) = ctx.park.as_ref().map(|p| p.ready().clone()) else {
        return;
    };
    while let Ok(batch) = ready.recv_async().await {
        for id in batch {
            ctx.unpark(id);
        }
    }
}

/// Resumes parked connections the shard woke (a message for them, keepalive expiry, takeover,
/// shutdown).
async fn woken_loop(ctx: Rc<ShardCtx>) {
    loop {
        let ids = std::future::poll_fn(park::poll_woken).await;
        for id in ids {
            ctx.unpark(id);
        }
    }
}

/// Publishes counter deltas and gauges into the process-wide metrics recorder once a second.
async fn metrics_loop(ctx: Rc<ShardCtx>) {
    let id = ctx.state.borrow().id;
    let mut exporter = Exporter::new(id);
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
        let state = ctx.state.borrow();
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
            parked: u64::from(state.parked),
        };
        exporter.publish(&state.counters, gauges);
    }
}
