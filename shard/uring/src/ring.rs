//! The ring driver: setup, SQE queueing, completion handling and the connection lifecycle.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::marker::PhantomData;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use bytes::Bytes;
use io_uring::types::{CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};

use crate::bufring::{BufRing, BUFFER_COUNT_MAX};
use crate::conn::{flag, Conn, SendState};
use crate::token::{OpKind, Token};
use crate::waker::Waker;
use crate::{RingError, SendError, SendErrorKind};

/// Most listeners per ring (the shard has a handful: TCP, TLS, WebSocket...).
pub const LISTENERS_MAX: usize = 64;
/// CQEs copied out of the completion queue per batch.
const CQE_BATCH_MAX: usize = 256;
/// Drained send states kept for reuse instead of freeing them.
const SEND_STATE_POOL_MAX: usize = 256;
/// Most `Bytes` queued on one connection, whatever their size.
pub const SEND_QUEUE_ENTRIES_MAX: usize = 4096;
/// Delay before re-arming an accept that failed (EMFILE, ENFILE, ENOMEM...).
static ACCEPT_RETRY_DELAY: Timespec = Timespec::new().nsec(100_000_000);
/// At most one accept-failure warning per this interval; the rest are counted.
const ACCEPT_WARN_INTERVAL: Duration = Duration::from_secs(10);
/// The buffer group of the provided buffer ring.
const BUFFER_GROUP_ID: u16 = 0;
/// Rounds of 10 ms that Drop waits for in-flight operations to be cancelled.
const DROP_WAIT_ROUNDS: u32 = 200;
/// Largest `user_data` slot index; bounds `conns_max`.
const CONNS_MAX_LIMIT: u32 = 1 << 24;

const _: () = assert!(SEND_STATE_POOL_MAX <= SEND_QUEUE_ENTRIES_MAX);
const _: () = assert!(LISTENERS_MAX < u32::MAX as usize);

/// Sizes and bounds of a [`Ring`]. All resources are sized from this at start-up.
#[derive(Clone, Debug)]
pub struct RingConfig {
    /// Submission queue entries (power of two, the kernel rounds up).
    pub entries: u32,
    /// Completion queue entries; multishot ops post many CQEs per SQE, so keep it large.
    pub cq_entries: u32,
    /// Buffers in the provided buffer ring (power of two, at most 32768).
    pub buffer_count: u16,
    /// Bytes per receive buffer: the most one `Received` event carries.
    pub buffer_size: u32,
    /// Ring-wide bound on send ops in flight; more connections with output wait their turn.
    pub sends_in_flight_max: u32,
    /// Per-connection bound on queued output; `send` refuses beyond it (a single `Bytes`
    /// larger than the bound is accepted into an empty queue).
    pub send_queue_bytes_max: usize,
    /// Connections this ring can hold at once.
    pub conns_max: u32,
    /// How long `close`/`detach` wait for queued output to drain before closing hard.
    pub linger_ms: u32,
    /// The most preferred task-work mode to try; setup falls back from it (DeferTaskrun ->
    /// CoopTaskrun -> Default). Lower it only to test or work around a kernel problem.
    pub taskrun_preferred: TaskrunMode,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            entries: 1024,
            cq_entries: 8192,
            buffer_count: 512,
            buffer_size: 16 * 1024,
            sends_in_flight_max: 4096,
            send_queue_bytes_max: 4 * 1024 * 1024,
            conns_max: 65536,
            linger_ms: 5000,
            taskrun_preferred: TaskrunMode::DeferTaskrun,
        }
    }
}

/// Handle of a connection on a ring: (slot, generation). Stale handles are ignored.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Debug)]
pub struct ConnKey(u32, u32);

impl ConnKey {
    pub fn slot(self) -> u32 {
        self.0
    }
    pub fn generation(self) -> u32 {
        self.1
    }
}

/// What [`Ring::poll`] reports.
#[derive(Debug)]
pub enum Event<'a> {
    /// A connection accepted on listener `listener` (the index `add_listener` returned).
    Accepted { listener: usize, fd: OwnedFd },
    /// Bytes for a connection, in order; the slice is only valid during the callback.
    Received { user: u64, data: &'a [u8] },
    /// The connection left the ring and its fd is closed. `error` is `None` for peer EOF and
    /// for `close`/`close_now`, `TimedOut` when the linger bound expired.
    Closed { user: u64, error: Option<io::Error> },
    /// A send finished; `queued_bytes` are still queued for this connection.
    Sent { user: u64, queued_bytes: usize },
    /// Answer to [`Ring::detach`]: nothing is in flight any more and the fd is the caller's.
    Detached { user: u64, fd: OwnedFd },
    /// Another ring's [`Ring::kick`] arrived; `from` is the id it passed.
    Kicked { from: u32 },
}

/// How the kernel runs completion task work for this ring.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TaskrunMode {
    /// SINGLE_ISSUER | DEFER_TASKRUN: only when this thread enters the ring.
    DeferTaskrun,
    /// COOP_TASKRUN: at the next kernel/user transition, without an IPI.
    CoopTaskrun,
    /// Default: signalling task work.
    Default,
}

/// The setup the kernel accepted.
#[derive(Copy, Clone, Debug)]
pub struct RingFeatures {
    pub taskrun: TaskrunMode,
    /// IORING_SETUP_TASKRUN_FLAG: pending task work is visible in the SQ flags, so `flush`
    /// and `wait` can skip a syscall.
    pub taskrun_flag: bool,
    /// IOSQE_CQE_SKIP_SUCCESS is used for cancels.
    pub skip_cqe_on_success: bool,
    pub sq_entries: u32,
    pub cq_entries: u32,
}

/// Counters since the ring was created.
#[derive(Copy, Clone, Debug, Default)]
pub struct RingStats {
    pub sqes_queued: u64,
    pub sqes_submitted: u64,
    /// io_uring_enter calls.
    pub enters: u64,
    pub cqes: u64,
    pub recv_bytes: u64,
    pub recv_completions: u64,
    /// Multishot recvs armed (first arm plus every re-arm).
    pub recv_arms: u64,
    /// Multishot recvs that ended with ENOBUFS (buffer ring empty).
    pub recv_enobufs: u64,
    pub sent_bytes: u64,
    pub send_ops: u64,
    /// Sends that wrote less than was offered and were continued.
    pub send_partial: u64,
    /// `send` calls refused because the queue was at its bound.
    pub send_refused_full: u64,
    /// Connections that had to wait for `sends_in_flight_max`.
    pub send_bound_waits: u64,
    pub accepts: u64,
    pub accept_errors: u64,
    /// Times accepting was paused ([`Ring::pause_accepts`]).
    pub accept_pauses: u64,
    pub conns_live: u64,
    /// Completions for a slot's previous occupant (ignored).
    pub cqes_stale: u64,
    /// Ops whose final completion is still due (accepts, recvs, sends, timers).
    pub ops_in_flight: u64,
    /// SQEs parked because the SQ was full and could not be submitted.
    pub sqes_backlogged: u64,
    pub waits: u64,
    /// `wait` calls that slept on the eventfd.
    pub wait_sleeps: u64,
    /// [`Ring::submit_and_wait`] calls that blocked in the kernel, and those that ended with
    /// their timeout.
    pub direct_waits: u64,
    pub direct_wait_timeouts: u64,
    /// Kicks sent to other rings, received from them, and sends that failed.
    pub kicks_sent: u64,
    pub kicks_received: u64,
    pub kick_errors: u64,
}

struct Listener {
    sock: TcpListener,
    /// A multishot accept (or its retry timer) is in flight.
    armed: bool,
    /// The caller paused accepting ([`Ring::pause_accepts`]): new connections wait in the
    /// kernel's listen backlog.
    paused: bool,
}

/// One io_uring per shard thread. `!Send`: it must be created, driven and dropped on the
/// thread that owns it (the ring is SINGLE_ISSUER).
pub struct Ring {
    // Declared first so it is dropped first: the kernel lets go of our buffers before they are
    // unmapped (Drop has already waited for every op to finish).
    uring: IoUring,
    /// Dropped by hand in Drop, only once no op can touch the buffers any more.
    bufring: std::mem::ManuallyDrop<BufRing>,
    waker: Waker,
    features: RingFeatures,
    cfg: RingConfig,
    /// Connection slab; grows up to `cfg.conns_max`.
    conns: Vec<Conn>,
    free_slots: Vec<u32>,
    listeners: Vec<Listener>,
    /// Slots whose terminal event is due (each slot at most once: flag::FINISHED).
    finished: Vec<u32>,
    /// Slots whose recv ended with ENOBUFS (flag::NOBUFS_WAIT marks the valid entries).
    nobufs: Vec<u32>,
    /// Slots waiting for the ring-wide send bound (flag::SEND_READY_WAIT marks valid entries).
    send_ready: VecDeque<u32>,
    /// Boxed on purpose: a SendState moves in and out of `Conn::send` without its address
    /// (which the kernel may hold) changing.
    #[allow(clippy::vec_box)]
    send_pool: Vec<Box<SendState>>,
    /// SQEs that found the SQ full and could not be submitted yet; bounded by the ops a
    /// connection can have at once (recv, send, two cancels, linger) times `conns_max`.
    backlog: VecDeque<squeue::Entry>,
    cqe_scratch: Vec<cqueue::Entry>,
    sends_in_flight: u32,
    /// Ops whose final completion is still due (cancels excluded); Drop waits for zero.
    ops_in_flight: u64,
    linger: Box<Timespec>,
    stats: RingStats,
    waits: Cell<u64>,
    wait_sleeps: Cell<u64>,
    accept_warned_at: Option<Instant>,
    accept_warn_suppressed: u64,
    /// When the kernel last had nothing completed outside the CQ: taken just before an
    /// io_uring_enter that ran deferred completion work (GETEVENTS), or when the SQ flags showed
    /// none pending. Everything that arrived before it is in the CQ or already reported.
    drained_at: Instant,
    /// Everything that arrived before this instant has been reported by `poll` (see
    /// [`Ring::reported_through`]).
    reported_through: Instant,
    /// Set by Drop: nothing is re-armed any more.
    shutting_down: bool,
    _not_send: PhantomData<*const ()>,
}

fn build_uring(cfg: &RingConfig) -> Result<(IoUring, TaskrunMode, bool), RingError> {
    let attempts = [
        (TaskrunMode::DeferTaskrun, true),
        (TaskrunMode::DeferTaskrun, false),
        (TaskrunMode::CoopTaskrun, true),
        (TaskrunMode::CoopTaskrun, false),
        (TaskrunMode::Default, false),
    ];
    let mut last = io::Error::from_raw_os_error(libc::EINVAL);
    let preferred = attempts
        .iter()
        .position(|(mode, _)| *mode == cfg.taskrun_preferred)
        .unwrap_or(0);
    for &(mode, taskrun_flag) in &attempts[preferred..] {
        let mut builder = IoUring::builder();
        builder.setup_cqsize(cfg.cq_entries).setup_submit_all();
        match mode {
            TaskrunMode::DeferTaskrun => {
                builder.setup_single_issuer().setup_defer_taskrun();
            }
            TaskrunMode::CoopTaskrun => {
                builder.setup_coop_taskrun();
            }
            TaskrunMode::Default => {}
        }
        if taskrun_flag {
            builder.setup_taskrun_flag();
        }
        match builder.build(cfg.entries) {
            Ok(uring) => return Ok((uring, mode, taskrun_flag)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = e,
            Err(source) => {
                return Err(match source.raw_os_error() {
                    Some(libc::ENOMEM) => RingError::Memlock {
                        what: "io_uring rings",
                        source,
                    },
                    Some(libc::ENOSYS) | Some(libc::EPERM) => RingError::KernelTooOld {
                        what: "io_uring_setup",
                        source,
                    },
                    _ => RingError::Io {
                        what: "io_uring_setup",
                        source,
                    },
                })
            }
        }
    }
    Err(RingError::KernelTooOld {
        what: "io_uring_setup",
        source: last,
    })
}

fn validate(cfg: &RingConfig) -> Result<(), RingError> {
    let bad = |field, value: u64, reason| {
        Err(RingError::InvalidConfig {
            field,
            value,
            reason,
        })
    };
    if cfg.entries == 0 || cfg.entries > 32768 {
        return bad("entries", cfg.entries.into(), "must be 1..=32768");
    }
    if cfg.cq_entries < cfg.entries {
        return bad("cq_entries", cfg.cq_entries.into(), "must be >= entries");
    }
    if !cfg.buffer_count.is_power_of_two() || cfg.buffer_count > BUFFER_COUNT_MAX {
        return bad(
            "buffer_count",
            cfg.buffer_count.into(),
            "must be a power of two <= 32768",
        );
    }
    if cfg.buffer_size == 0 || cfg.buffer_size > 1 << 20 {
        return bad("buffer_size", cfg.buffer_size.into(), "must be 1..=1 MiB");
    }
    if cfg.sends_in_flight_max == 0 {
        return bad("sends_in_flight_max", 0, "must be > 0");
    }
    if cfg.conns_max == 0 || cfg.conns_max > CONNS_MAX_LIMIT {
        return bad("conns_max", cfg.conns_max.into(), "must be 1..=2^24");
    }
    Ok(())
}

fn errno_of(res: i32) -> i32 {
    res.checked_neg().unwrap_or(libc::EIO)
}

impl Ring {
    /// Creates the ring (SINGLE_ISSUER|DEFER_TASKRUN, else COOP_TASKRUN, else plain; see
    /// [`Ring::features`]), registers the buffer ring and the wake-up eventfd.
    pub fn new(cfg: RingConfig) -> Result<Ring, RingError> {
        validate(&cfg)?;
        let (mut uring, taskrun, taskrun_flag) = build_uring(&cfg)?;
        let bufring = BufRing::new(&uring, cfg.buffer_count, cfg.buffer_size, BUFFER_GROUP_ID)?;
        let waker = Waker::new()?;
        uring
            .submitter()
            .register_eventfd(waker.raw())
            .map_err(|source| RingError::KernelTooOld {
                what: "IORING_REGISTER_EVENTFD",
                source,
            })?;
        // Only wait() wants the signal; see the crate docs.
        uring.completion().disable_eventfd();
        let params = uring.params();
        let features = RingFeatures {
            taskrun,
            taskrun_flag,
            skip_cqe_on_success: params.is_feature_skip_cqe_on_success(),
            sq_entries: params.sq_entries(),
            cq_entries: params.cq_entries(),
        };
        tracing::debug!(?features, "io_uring ready");
        let linger = Box::new(
            Timespec::new()
                .sec(u64::from(cfg.linger_ms / 1000))
                .nsec((cfg.linger_ms % 1000) * 1_000_000),
        );
        Ok(Ring {
            uring,
            bufring: std::mem::ManuallyDrop::new(bufring),
            waker,
            features,
            conns: Vec::new(),
            free_slots: Vec::new(),
            listeners: Vec::new(),
            finished: Vec::new(),
            nobufs: Vec::new(),
            send_ready: VecDeque::new(),
            send_pool: Vec::new(),
            backlog: VecDeque::new(),
            cqe_scratch: Vec::with_capacity(CQE_BATCH_MAX),
            sends_in_flight: 0,
            ops_in_flight: 0,
            linger,
            stats: RingStats::default(),
            waits: Cell::new(0),
            wait_sleeps: Cell::new(0),
            accept_warned_at: None,
            drained_at: Instant::now(),
            reported_through: Instant::now(),
            accept_warn_suppressed: 0,
            shutting_down: false,
            cfg,
            _not_send: PhantomData,
        })
    }

    pub fn features(&self) -> RingFeatures {
        self.features
    }

    pub fn stats(&self) -> RingStats {
        RingStats {
            waits: self.waits.get(),
            wait_sleeps: self.wait_sleeps.get(),
            ops_in_flight: self.ops_in_flight,
            ..self.stats
        }
    }

    /// Starts a multishot accept on `listener`; returns its index for [`Event::Accepted`].
    pub fn add_listener(&mut self, listener: TcpListener) -> Result<usize, RingError> {
        if self.listeners.len() >= LISTENERS_MAX {
            return Err(RingError::ListenerLimit {
                limit: LISTENERS_MAX,
            });
        }
        let index = self.listeners.len();
        self.listeners.push(Listener {
            sock: listener,
            armed: false,
            paused: false,
        });
        self.arm_accept(index);
        Ok(index)
    }

    /// Stops accepting on every listener: new connections wait in the kernel's listen backlog
    /// (clients see a slow connect, not a refusal) until [`Ring::resume_accepts`]. Accepts the
    /// kernel completed already are still reported. Idempotent.
    pub fn pause_accepts(&mut self) {
        let mut paused = false;
        for index in 0..self.listeners.len() {
            let listener = &mut self.listeners[index];
            if listener.paused {
                continue;
            }
            listener.paused = true;
            paused = true;
            if listener.armed {
                self.push_cancel(Token::new(OpKind::Accept, index as u32, 0));
            }
        }
        if paused {
            self.stats.accept_pauses += 1;
        }
    }

    /// Accepts again after [`Ring::pause_accepts`]. Idempotent.
    pub fn resume_accepts(&mut self) {
        for index in 0..self.listeners.len() {
            if std::mem::replace(&mut self.listeners[index].paused, false) {
                self.arm_accept(index);
            }
        }
    }

    /// Whether accepting is paused.
    pub fn accepts_paused(&self) -> bool {
        self.listeners.iter().any(|l| l.paused)
    }

    /// Takes ownership of a connected socket and starts receiving from it.
    pub fn add_conn(&mut self, fd: OwnedFd, user: u64) -> Result<ConnKey, RingError> {
        let slot = match self.free_slots.pop() {
            Some(slot) => slot,
            None if self.conns.len() < self.cfg.conns_max as usize => {
                self.conns.push(Conn::vacant());
                (self.conns.len() - 1) as u32
            }
            None => {
                return Err(RingError::ConnLimit {
                    limit: self.cfg.conns_max,
                })
            }
        };
        let conn = &mut self.conns[slot as usize];
        debug_assert!(!conn.has(flag::LIVE), "free slot still live");
        conn.fd = Some(fd);
        conn.user = user;
        conn.flags = flag::LIVE | flag::RECV_WANTED;
        conn.close_errno = 0;
        let key = ConnKey(slot, conn.generation);
        self.stats.conns_live += 1;
        self.arm_recv(slot);
        Ok(key)
    }

    /// Backpressure: stop receiving (cancels the multishot recv). Bytes already completed by
    /// the kernel may still be reported.
    pub fn pause_recv(&mut self, key: ConnKey) {
        let Some(slot) = self.live(key) else { return };
        let conn = &mut self.conns[slot as usize];
        conn.clear(flag::RECV_WANTED | flag::NOBUFS_WAIT);
        self.cancel_recv(slot);
    }

    /// Restarts receiving after [`Ring::pause_recv`].
    pub fn resume_recv(&mut self, key: ConnKey) {
        let Some(slot) = self.live(key) else { return };
        let conn = &mut self.conns[slot as usize];
        if conn.has(flag::CLOSING | flag::DETACHING | flag::ABORTING) {
            return;
        }
        conn.set(flag::RECV_WANTED);
        // If a cancel is still in flight, the recv is re-armed when it ends.
        if !conn.has(flag::RECV_ARMED) {
            self.arm_recv(slot);
        }
    }

    /// Queues `data`; returns the bytes now queued for the connection.
    pub fn send(&mut self, key: ConnKey, data: Bytes) -> Result<usize, SendError> {
        let Some(slot) = self.live(key) else {
            return Err(SendError {
                kind: SendErrorKind::UnknownConn,
                data,
            });
        };
        let limit = self.cfg.send_queue_bytes_max;
        let conn = &mut self.conns[slot as usize];
        if conn.has(flag::CLOSING | flag::DETACHING | flag::ABORTING) {
            return Err(SendError {
                kind: SendErrorKind::NotWritable,
                data,
            });
        }
        let queued = conn.queued_bytes();
        if data.is_empty() {
            return Ok(queued);
        }
        let entries = conn.send.as_ref().map_or(0, |s| s.queue.len());
        if (queued > 0 && queued + data.len() > limit) || entries >= SEND_QUEUE_ENTRIES_MAX {
            self.stats.send_refused_full += 1;
            return Err(SendError {
                kind: SendErrorKind::QueueFull { limit, queued },
                data,
            });
        }
        let state = conn.send.get_or_insert_with(|| {
            self.send_pool
                .pop()
                .unwrap_or_else(|| Box::new(SendState::new()))
        });
        state.queued_bytes += data.len();
        state.queue.push_back(data);
        let queued = state.queued_bytes;
        if !conn.has(flag::SEND_IN_FLIGHT | flag::SEND_READY_WAIT) {
            self.start_send(slot);
        }
        Ok(queued)
    }

    /// Stops receiving, drains queued output, then reports [`Event::Detached`] with the fd.
    /// Bytes received before the recv ended are reported first.
    pub fn detach(&mut self, key: ConnKey) {
        let Some(slot) = self.live(key) else { return };
        let conn = &mut self.conns[slot as usize];
        if conn.has(flag::CLOSING | flag::DETACHING | flag::ABORTING) {
            return;
        }
        conn.set(flag::DETACHING);
        self.stop_for_exit(slot);
    }

    /// Drains queued output (at most `linger_ms`), then closes; ends in [`Event::Closed`].
    pub fn close(&mut self, key: ConnKey) {
        let Some(slot) = self.live(key) else { return };
        let conn = &mut self.conns[slot as usize];
        if conn.has(flag::CLOSING | flag::ABORTING) {
            return;
        }
        conn.clear(flag::DETACHING);
        conn.set(flag::CLOSING);
        self.stop_for_exit(slot);
    }

    /// Cancels everything and closes; ends in [`Event::Closed`] once the kernel let go.
    pub fn close_now(&mut self, key: ConnKey) {
        if let Some(slot) = self.live(key) {
            self.abort(slot, 0);
        }
    }

    /// Submits everything queued this turn in one io_uring_enter (which also runs deferred
    /// task work). No syscall when there is nothing to submit and no task work is pending.
    pub fn flush(&mut self) -> io::Result<()> {
        self.drain_backlog();
        let pending = self.uring.submission().len();
        let checked_at = Instant::now();
        let getevents = self.needs_getevents();
        if !getevents && self.features.taskrun_flag {
            // The flag is clear: no completion work was deferred at `checked_at`.
            self.drained_at = checked_at;
        }
        if pending == 0 && !getevents {
            return Ok(());
        }
        self.enter(getevents)
    }

    /// This ring's file descriptor, for other threads' [`Ring::kick`]. Valid while the ring
    /// lives.
    pub fn ring_fd(&self) -> RawFd {
        self.uring.as_raw_fd()
    }

    /// Queues a wake-up for another ring (IORING_OP_MSG_RING, submitted with the next
    /// [`Ring::flush`] / [`Ring::submit_and_wait`]: no syscall of its own). The target reports
    /// [`Event::Kicked`] with `from`, which wakes it from [`Ring::submit_and_wait`] or
    /// [`Ring::wait`]. `target` must be a live ring's fd ([`Ring::ring_fd`]); a stale one fails
    /// harmlessly (counted in `kick_errors`).
    pub fn kick(&mut self, target: RawFd, target_id: u32, from: u32) {
        self.stats.kicks_sent += 1;
        let mut entry = opcode::MsgRingData::new(
            Fd(target),
            0,
            Token::new(OpKind::Kick, from, 0).encode(),
            None,
        )
        .build()
        .user_data(Token::new(OpKind::KickSent, target_id, 0).encode());
        if self.features.skip_cqe_on_success {
            entry = entry.flags(squeue::Flags::SKIP_SUCCESS);
        }
        self.push(entry);
    }

    /// Submits what is queued and, unless work is already waiting, blocks in the kernel until a
    /// completion arrives or `timeout` passes — one io_uring_enter for both. For a shard loop
    /// that is the only runnable task of its executor: it sleeps here instead of going through
    /// the executor's reactor (see [`Ring::wait`] for sleeping inside it). Returns false when the
    /// timeout ended the wait with nothing completed.
    pub fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<bool> {
        self.drain_backlog();
        if !self.backlog.is_empty() || !self.finished.is_empty() || !self.nobufs.is_empty() {
            self.flush()?;
            return Ok(true);
        }
        if !self.uring.completion().is_empty() {
            self.flush()?;
            return Ok(true);
        }
        self.stats.direct_waits += 1;
        let ts = Timespec::new()
            .sec(timeout.as_secs())
            .nsec(timeout.subsec_nanos());
        let args = SubmitArgs::new().timespec(&ts);
        let flags = if self.uring.params().is_feature_no_iowait() {
            io_uring::EnterFlags::NO_IOWAIT
        } else {
            io_uring::EnterFlags::empty()
        };
        let started = Instant::now();
        let result = self
            .uring
            .submitter()
            .submit_with_args_and_flags(1, &args, flags);
        self.stats.enters += 1;
        match result {
            Ok(submitted) => {
                self.stats.sqes_submitted += submitted as u64;
                self.drained_at = started;
                Ok(true)
            }
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => {
                self.drained_at = started;
                self.stats.direct_wait_timeouts += 1;
                Ok(!self.uring.completion().is_empty())
            }
            // A signal, or CQ overflow backlog (reaping makes room): the caller polls again.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// Reaps every available completion (never blocks) and reports it; returns how many CQEs
    /// were handled. Call [`Ring::flush`] afterwards: handling queues re-arms and sends.
    pub fn poll(&mut self, mut f: impl FnMut(Event<'_>)) -> usize {
        let mut handled = 0;
        if !self.features.taskrun_flag {
            // Without the flag we cannot tell what is deferred; completion work then runs on
            // the way back to user space (signalled or cooperative), so now is close enough.
            self.drained_at = Instant::now();
        }
        let drained_at = self.drained_at;
        let mut emptied = false;
        self.rearm_nobufs();
        self.report_finished(&mut f);
        // Bound one poll so a flood of completions cannot starve the rest of the shard loop.
        let budget = self.features.cq_entries as usize * 2;
        while handled < budget {
            let mut batch = std::mem::take(&mut self.cqe_scratch);
            batch.clear();
            batch.extend(self.uring.completion().take(CQE_BATCH_MAX));
            let count = batch.len();
            for cqe in &batch {
                self.handle_cqe(cqe, &mut f);
            }
            self.cqe_scratch = batch;
            if count == 0 {
                emptied = true;
                break;
            }
            handled += count;
            self.stats.cqes += count as u64;
            self.rearm_nobufs();
            self.report_finished(&mut f);
        }
        if emptied {
            self.reported_through = drained_at;
        }
        handled
    }

    /// A lower bound on when anything reported by later `poll`s arrived: every completion the
    /// kernel produced for arrivals before this instant has been reported already. With
    /// DEFER_TASKRUN a receive becomes a CQE only at the next io_uring_enter with GETEVENTS, so
    /// this is the start of the last such enter before the last poll that emptied the CQ — not
    /// the time of that poll. The shard loop gives it to the engine as the earliest arrival of
    /// the turn's input (cross-shard replay, `RouteChange::since`).
    pub fn reported_through(&self) -> Instant {
        self.reported_through
    }

    /// Inside a glommio executor: resolves when the ring has work for `flush`/`poll` (see the
    /// crate docs for the protocol). May resolve spuriously.
    pub async fn wait(&self) {
        self.waits.set(self.waits.get() + 1);
        // SAFETY: `&self` is held for the whole wait, so no `&mut` queue borrow can coexist;
        // the flag word is atomic.
        let cq = unsafe { self.uring.completion_shared() };
        cq.enable_eventfd();
        if !self.has_work() {
            self.wait_sleeps.set(self.wait_sleeps.get() + 1);
            self.waker.wait_signal().await;
        }
        // SAFETY: as above.
        unsafe { self.uring.completion_shared() }.disable_eventfd();
    }

    fn has_work(&self) -> bool {
        if !self.backlog.is_empty() || !self.finished.is_empty() || !self.nobufs.is_empty() {
            return true;
        }
        // SAFETY: see wait(); shared views are read-only here.
        let sq = unsafe { self.uring.submission_shared() };
        if !sq.is_empty() || sq.cq_overflow() || sq.taskrun() {
            return true;
        }
        if self.features.taskrun == TaskrunMode::DeferTaskrun && !self.features.taskrun_flag {
            // Without TASKRUN_FLAG, deferred work is invisible: run it so CQEs show.
            // SAFETY: no SQEs are passed; GETEVENTS with min_complete 0 never blocks.
            let _ = unsafe {
                self.uring.submitter().enter::<libc::sigset_t>(
                    0,
                    0,
                    io_uring::EnterFlags::GETEVENTS.bits(),
                    None,
                )
            };
        }
        // SAFETY: see wait().
        !unsafe { self.uring.completion_shared() }.is_empty()
    }

    fn live(&self, key: ConnKey) -> Option<u32> {
        let conn = self.conns.get(key.0 as usize)?;
        (conn.has(flag::LIVE) && !conn.has(flag::FINISHED) && conn.generation == key.1)
            .then_some(key.0)
    }

    /// Common part of close/detach: stop receiving, bound the drain, finish if idle.
    fn stop_for_exit(&mut self, slot: u32) {
        let conn = &mut self.conns[slot as usize];
        conn.clear(flag::RECV_WANTED | flag::NOBUFS_WAIT);
        let draining = conn.queued_bytes() > 0 && !conn.has(flag::LINGER_ARMED);
        self.cancel_recv(slot);
        if draining {
            self.arm_linger(slot);
        }
        self.maybe_finish(slot);
    }

    /// close_now, EOF, errors, linger expiry: cancel all in flight, then finish.
    fn abort(&mut self, slot: u32, errno: i32) {
        let conn = &mut self.conns[slot as usize];
        if conn.has(flag::FINISHED) {
            return;
        }
        if conn.close_errno == 0 {
            conn.close_errno = errno;
        }
        conn.set(flag::ABORTING);
        conn.clear(flag::RECV_WANTED | flag::NOBUFS_WAIT);
        let cancel_send = conn.has(flag::SEND_IN_FLIGHT) && !conn.has(flag::SEND_CANCELLING);
        if cancel_send {
            conn.set(flag::SEND_CANCELLING);
            let target = Token::new(OpKind::Send, slot, conn.generation);
            self.push_cancel(target);
        }
        self.cancel_recv(slot);
        self.maybe_finish(slot);
    }

    /// Queues the terminal event once nothing is in flight (and output drained, unless
    /// aborting).
    fn maybe_finish(&mut self, slot: u32) {
        let conn = &mut self.conns[slot as usize];
        if !conn.has(flag::LIVE)
            || conn.has(flag::FINISHED)
            || !conn.has(flag::CLOSING | flag::DETACHING | flag::ABORTING)
            || conn.has(flag::RECV_ARMED | flag::SEND_IN_FLIGHT)
        {
            return;
        }
        if !conn.has(flag::ABORTING) && conn.queued_bytes() > 0 {
            if !conn.has(flag::SEND_READY_WAIT) {
                self.start_send(slot);
            }
            return;
        }
        conn.set(flag::FINISHED);
        let generation = conn.generation;
        let linger = conn.has(flag::LINGER_ARMED);
        self.finished.push(slot);
        if linger {
            let target = Token::new(OpKind::Linger, slot, generation).encode();
            let entry = opcode::TimeoutRemove::new(target)
                .build()
                .user_data(Token::new(OpKind::Cancel, slot, generation).encode());
            self.push(entry);
        }
    }

    fn report_finished(&mut self, f: &mut impl FnMut(Event<'_>)) {
        if self.finished.is_empty() {
            return;
        }
        let mut finished = std::mem::take(&mut self.finished);
        for &slot in &finished {
            let conn = &mut self.conns[slot as usize];
            let fd = conn.fd.take();
            let user = conn.user;
            let detached = conn.has(flag::DETACHING) && !conn.has(flag::ABORTING);
            let errno = conn.close_errno;
            if let Some(mut state) = conn.send.take() {
                if self.send_pool.len() < SEND_STATE_POOL_MAX {
                    state.reset();
                    self.send_pool.push(state);
                }
            }
            conn.flags = 0;
            conn.close_errno = 0;
            conn.generation = conn.generation.wrapping_add(1);
            self.free_slots.push(slot);
            self.stats.conns_live -= 1;
            match (detached, fd) {
                (true, Some(fd)) => f(Event::Detached { user, fd }),
                (_, fd) => {
                    drop(fd);
                    let error = (errno != 0).then(|| io::Error::from_raw_os_error(errno));
                    f(Event::Closed { user, error });
                }
            }
        }
        finished.clear();
        // Keep the capacity; events reported above may not have queued new ones.
        finished.append(&mut self.finished);
        self.finished = finished;
    }

    fn raw_fd(&self, slot: u32) -> i32 {
        self.conns[slot as usize]
            .fd
            .as_ref()
            .map_or(-1, |fd| fd.as_raw_fd())
    }

    fn arm_accept(&mut self, index: usize) {
        let listener = &mut self.listeners[index];
        if self.shutting_down || listener.paused || listener.armed {
            return;
        }
        listener.armed = true;
        let fd = listener.sock.as_raw_fd();
        let entry = opcode::AcceptMulti::new(Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(Token::new(OpKind::Accept, index as u32, 0).encode());
        self.ops_in_flight += 1;
        self.push(entry);
    }

    fn arm_accept_retry(&mut self, index: usize) {
        if self.shutting_down || self.listeners[index].armed {
            return;
        }
        // Counts as armed: the timer re-arms the accept (unless paused meanwhile).
        self.listeners[index].armed = true;
        let entry = opcode::Timeout::new(&ACCEPT_RETRY_DELAY)
            .build()
            .user_data(Token::new(OpKind::AcceptRetry, index as u32, 0).encode());
        self.ops_in_flight += 1;
        self.push(entry);
    }

    fn arm_recv(&mut self, slot: u32) {
        let fd = self.raw_fd(slot);
        let conn = &mut self.conns[slot as usize];
        conn.set(flag::RECV_ARMED);
        conn.clear(flag::RECV_CANCELLING | flag::NOBUFS_WAIT);
        let entry = opcode::RecvMulti::new(Fd(fd), self.bufring.group_id)
            .build()
            .user_data(Token::new(OpKind::Recv, slot, conn.generation).encode());
        self.ops_in_flight += 1;
        self.stats.recv_arms += 1;
        self.push(entry);
    }

    fn cancel_recv(&mut self, slot: u32) {
        let conn = &mut self.conns[slot as usize];
        if conn.has(flag::RECV_ARMED) && !conn.has(flag::RECV_CANCELLING) {
            conn.set(flag::RECV_CANCELLING);
            let target = Token::new(OpKind::Recv, slot, conn.generation);
            self.push_cancel(target);
        }
    }

    fn push_cancel(&mut self, target: Token) {
        let mut entry = opcode::AsyncCancel::new(target.encode())
            .build()
            .user_data(Token::new(OpKind::Cancel, target.index, target.generation).encode());
        if self.features.skip_cqe_on_success {
            entry = entry.flags(squeue::Flags::SKIP_SUCCESS);
        }
        self.push(entry);
    }

    fn arm_linger(&mut self, slot: u32) {
        let conn = &mut self.conns[slot as usize];
        conn.set(flag::LINGER_ARMED);
        let entry = opcode::Timeout::new(&*self.linger)
            .build()
            .user_data(Token::new(OpKind::Linger, slot, conn.generation).encode());
        self.ops_in_flight += 1;
        self.push(entry);
    }

    /// Starts the one send of a connection from its queue head.
    fn start_send(&mut self, slot: u32) {
        if self.sends_in_flight >= self.cfg.sends_in_flight_max {
            let conn = &mut self.conns[slot as usize];
            if !conn.has(flag::SEND_READY_WAIT) {
                conn.set(flag::SEND_READY_WAIT);
                self.send_ready.push_back(slot);
                self.stats.send_bound_waits += 1;
            }
            return;
        }
        let fd = self.raw_fd(slot);
        let conn = &mut self.conns[slot as usize];
        let Some(state) = conn.send.as_mut() else {
            return;
        };
        let count = state.fill_iovecs();
        if count == 0 {
            return;
        }
        let token = Token::new(OpKind::Send, slot, conn.generation).encode();
        // The pointers below live in the boxed SendState and in the queued Bytes, neither of
        // which is touched until this send's completion is reaped.
        let entry = if count == 1 {
            let iov = state.iovecs[0];
            let len = u32::try_from(iov.iov_len).unwrap_or(u32::MAX);
            opcode::Send::new(Fd(fd), iov.iov_base as *const u8, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        } else {
            opcode::SendMsg::new(Fd(fd), &state.msghdr)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
        };
        conn.set(flag::SEND_IN_FLIGHT);
        self.sends_in_flight += 1;
        self.ops_in_flight += 1;
        self.push(entry.user_data(token));
    }

    /// Lets connections waiting for the ring-wide send bound go, oldest first.
    fn pump_send_ready(&mut self) {
        while self.sends_in_flight < self.cfg.sends_in_flight_max {
            let Some(slot) = self.send_ready.pop_front() else {
                return;
            };
            let conn = &mut self.conns[slot as usize];
            if !conn.has(flag::SEND_READY_WAIT) {
                continue;
            }
            conn.clear(flag::SEND_READY_WAIT);
            if conn.has(flag::LIVE)
                && !conn.has(flag::ABORTING | flag::FINISHED | flag::SEND_IN_FLIGHT)
            {
                self.start_send(slot);
            }
        }
    }

    fn rearm_nobufs(&mut self) {
        if self.nobufs.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut self.nobufs);
        for &slot in &waiting {
            let conn = &self.conns[slot as usize];
            if conn.has(flag::NOBUFS_WAIT) && conn.has(flag::RECV_WANTED) {
                self.arm_recv(slot);
            }
        }
        self.nobufs = waiting;
        self.nobufs.clear();
    }

    fn handle_cqe(&mut self, cqe: &cqueue::Entry, f: &mut impl FnMut(Event<'_>)) {
        let (res, cflags) = (cqe.result(), cqe.flags());
        let Some(token) = Token::decode(cqe.user_data()) else {
            self.stats.cqes_stale += 1;
            return;
        };
        match token.kind {
            OpKind::Accept => self.on_accept(token.index as usize, res, cflags, f),
            OpKind::AcceptRetry => {
                self.ops_in_flight -= 1;
                if let Some(listener) = self.listeners.get_mut(token.index as usize) {
                    listener.armed = false;
                    self.arm_accept(token.index as usize);
                }
            }
            OpKind::Recv => self.on_recv(token, res, cflags, f),
            OpKind::Kick => {
                self.stats.kicks_received += 1;
                f(Event::Kicked { from: token.index });
            }
            OpKind::KickSent => {
                // Only failures complete (SKIP_SUCCESS): the target ring is gone (shutdown).
                if res < 0 {
                    self.stats.kick_errors += 1;
                    tracing::debug!(errno = errno_of(res), target = token.index, "kick failed");
                }
            }
            OpKind::Send => self.on_send(token, res, f),
            OpKind::Cancel => {
                // ENOENT/EALREADY: the op ended on its own first; its own CQE tells us.
                if res < 0 && ![libc::ENOENT, libc::EALREADY].contains(&errno_of(res)) {
                    tracing::debug!(errno = errno_of(res), "io_uring cancel failed");
                }
            }
            OpKind::Linger => {
                self.ops_in_flight -= 1;
                let slot = token.index;
                let expired = self.conns.get(slot as usize).is_some_and(|c| {
                    c.has(flag::LIVE) && !c.has(flag::FINISHED) && token.matches(c.generation)
                });
                if expired && res == -libc::ETIME {
                    self.conns[slot as usize].clear(flag::LINGER_ARMED);
                    tracing::debug!(slot, "linger bound expired, closing hard");
                    self.abort(slot, libc::ETIMEDOUT);
                }
            }
        }
    }

    fn on_accept(&mut self, index: usize, res: i32, cflags: u32, f: &mut impl FnMut(Event<'_>)) {
        let more = cqueue::more(cflags);
        if !more {
            self.ops_in_flight -= 1;
        }
        if index >= self.listeners.len() {
            return;
        }
        if !more {
            self.listeners[index].armed = false;
        }
        if res >= 0 {
            self.stats.accepts += 1;
            // SAFETY: the kernel just created this fd for us.
            let fd = unsafe { OwnedFd::from_raw_fd(res) };
            f(Event::Accepted {
                listener: index,
                fd,
            });
            if !more {
                self.arm_accept(index);
            }
            return;
        }
        let errno = errno_of(res);
        if errno == libc::ECANCELED {
            // Paused (or shutting down); resumed meanwhile, it starts again (arm_accept checks).
            self.arm_accept(index);
            return;
        }
        self.stats.accept_errors += 1;
        self.warn_accept(index, errno);
        if !more {
            if errno == libc::ECONNABORTED || errno == libc::EINTR {
                self.arm_accept(index);
            } else {
                self.arm_accept_retry(index);
            }
        }
    }

    fn warn_accept(&mut self, listener: usize, errno: i32) {
        let now = Instant::now();
        let quiet = self
            .accept_warned_at
            .is_some_and(|at| now.duration_since(at) < ACCEPT_WARN_INTERVAL);
        if quiet {
            self.accept_warn_suppressed += 1;
            return;
        }
        tracing::warn!(
            listener,
            errno,
            error = %io::Error::from_raw_os_error(errno),
            suppressed = self.accept_warn_suppressed,
            "accept failed, retrying after a delay"
        );
        self.accept_warned_at = Some(now);
        self.accept_warn_suppressed = 0;
    }

    fn on_recv(&mut self, token: Token, res: i32, cflags: u32, f: &mut impl FnMut(Event<'_>)) {
        let more = cqueue::more(cflags);
        if !more {
            self.ops_in_flight -= 1;
        }
        let bid = cqueue::buffer_select(cflags);
        let slot = token.index;
        let valid = self
            .conns
            .get(slot as usize)
            .is_some_and(|c| c.has(flag::LIVE) && token.matches(c.generation));
        if !valid {
            if let Some(bid) = bid {
                self.bufring.recycle(bid);
            }
            self.stats.cqes_stale += 1;
            return;
        }
        let conn = &self.conns[slot as usize];
        let quiet = conn.has(flag::CLOSING | flag::ABORTING);
        if res > 0 {
            self.stats.recv_bytes += res as u64;
            self.stats.recv_completions += 1;
            match bid.and_then(|b| self.bufring.data(b, res as usize)) {
                Some(data) if !quiet => f(Event::Received {
                    user: conn.user,
                    data,
                }),
                Some(_) => {}
                None => {
                    tracing::error!(slot, res, ?bid, "recv completion without a valid buffer");
                    self.abort(slot, libc::EIO);
                }
            }
        }
        if let Some(bid) = bid {
            self.bufring.recycle(bid);
        }
        if more {
            return;
        }
        self.on_recv_ended(slot, res);
    }

    /// The multishot recv of `slot` ended (no F_MORE): re-arm unless EOF/error/cancelled.
    fn on_recv_ended(&mut self, slot: u32, res: i32) {
        let conn = &mut self.conns[slot as usize];
        conn.clear(flag::RECV_ARMED | flag::RECV_CANCELLING);
        let exiting = conn.has(flag::CLOSING | flag::DETACHING | flag::ABORTING);
        match res {
            // Ended with data (e.g. CQ overflow): just re-arm below.
            r if r > 0 => {}
            // EOF. A detaching socket keeps it: the next owner reads EOF again.
            0 => {
                if !exiting {
                    self.abort(slot, 0);
                }
            }
            r if r == -libc::ENOBUFS => {
                self.stats.recv_enobufs += 1;
                if conn.has(flag::RECV_WANTED) {
                    conn.set(flag::NOBUFS_WAIT);
                    self.nobufs.push(slot);
                }
            }
            r if r == -libc::ECANCELED => {}
            r => {
                if !conn.has(flag::CLOSING) {
                    self.abort(slot, errno_of(r));
                }
            }
        }
        let conn = &self.conns[slot as usize];
        let rearm = conn.has(flag::RECV_WANTED)
            && !conn.has(flag::NOBUFS_WAIT | flag::RECV_ARMED)
            && !conn.has(flag::CLOSING | flag::DETACHING | flag::ABORTING);
        if rearm {
            self.arm_recv(slot);
        }
        self.maybe_finish(slot);
    }

    fn on_send(&mut self, token: Token, res: i32, f: &mut impl FnMut(Event<'_>)) {
        self.ops_in_flight -= 1;
        let slot = token.index;
        let valid = self.conns.get(slot as usize).is_some_and(|c| {
            c.has(flag::LIVE) && c.has(flag::SEND_IN_FLIGHT) && token.matches(c.generation)
        });
        if !valid {
            self.stats.cqes_stale += 1;
            return;
        }
        self.sends_in_flight -= 1;
        let conn = &mut self.conns[slot as usize];
        conn.clear(flag::SEND_IN_FLIGHT | flag::SEND_CANCELLING);
        let user = conn.user;
        let quiet = conn.has(flag::CLOSING | flag::ABORTING);
        let aborting = conn.has(flag::ABORTING);
        match (res, conn.send.as_mut()) {
            (sent, Some(state)) if sent > 0 => {
                let offered = state.offered;
                state.advance(sent as usize);
                let queued = state.queued_bytes;
                self.stats.sent_bytes += sent as u64;
                self.stats.send_ops += 1;
                if (sent as usize) < offered {
                    self.stats.send_partial += 1;
                }
                if queued == 0 {
                    if let Some(mut state) = conn.send.take() {
                        if self.send_pool.len() < SEND_STATE_POOL_MAX {
                            state.reset();
                            self.send_pool.push(state);
                        }
                    }
                }
                if !quiet {
                    f(Event::Sent {
                        user,
                        queued_bytes: queued,
                    });
                }
                if queued > 0 && !aborting {
                    self.start_send(slot);
                }
            }
            (r, _) if r == -libc::EAGAIN || r == -libc::EINTR => {
                if !aborting {
                    self.start_send(slot);
                }
            }
            (r, _) if r == -libc::ECANCELED => {}
            // A 0-byte write of a non-empty queue: treat as a broken socket rather than spin.
            (0, _) => self.abort(slot, libc::EIO),
            (r, _) => self.abort(slot, errno_of(r)),
        }
        self.pump_send_ready();
        self.maybe_finish(slot);
    }

    /// Queues one SQE; if the SQ is full, submits first; if that fails, parks it in order.
    fn push(&mut self, entry: squeue::Entry) {
        self.stats.sqes_queued += 1;
        if self.backlog.is_empty() {
            // SAFETY: every pointer in our SQEs outlives the op: buffers (BufRing), send state
            // (boxed, freed only after the send's CQE), timespecs (static or boxed in Ring).
            if unsafe { self.uring.submission().push(&entry) }.is_ok() {
                return;
            }
            if let Err(error) = self.enter(false) {
                tracing::warn!(%error, "io_uring submit failed with a full queue");
            }
            // SAFETY: as above.
            if unsafe { self.uring.submission().push(&entry) }.is_ok() {
                return;
            }
        }
        self.stats.sqes_backlogged += 1;
        self.backlog.push_back(entry);
    }

    fn drain_backlog(&mut self) {
        while let Some(entry) = self.backlog.front() {
            // SAFETY: see push().
            if unsafe { self.uring.submission().push(entry) }.is_ok() {
                self.backlog.pop_front();
                continue;
            }
            if self.enter(false).is_err() || self.uring.submission().is_full() {
                return;
            }
        }
    }

    fn needs_getevents(&mut self) -> bool {
        if self.features.taskrun == TaskrunMode::DeferTaskrun && !self.features.taskrun_flag {
            return true;
        }
        let sq = self.uring.submission();
        sq.taskrun() || sq.cq_overflow()
    }

    /// One io_uring_enter for what is queued; GETEVENTS also runs deferred task work.
    fn enter(&mut self, getevents: bool) -> io::Result<()> {
        let flags = if getevents {
            io_uring::EnterFlags::GETEVENTS.bits()
        } else {
            0
        };
        loop {
            let pending = self.uring.submission().len() as u32;
            let started = Instant::now();
            // SAFETY: no signal mask argument; SQEs were validated at push.
            let result = unsafe {
                self.uring
                    .submitter()
                    .enter::<libc::sigset_t>(pending, 0, flags, None)
            };
            self.stats.enters += 1;
            match result {
                Ok(submitted) => {
                    self.stats.sqes_submitted += submitted as u64;
                    if getevents {
                        self.drained_at = started;
                    }
                    return Ok(());
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // CQ overflow backlog: the SQEs stay queued; reaping CQEs makes room.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN)) => {
                    return Ok(())
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Ring {
    /// Drop's first step: abort every connection (cancels its recv, send and linger timer),
    /// cancel the accepts and their retry timers, then a catch-all cancel.
    fn cancel_everything(&mut self) {
        self.shutting_down = true;
        for slot in 0..self.conns.len() as u32 {
            if self.conns[slot as usize].has(flag::LIVE) {
                self.abort(slot, libc::ECANCELED);
            }
        }
        for index in 0..self.listeners.len() as u32 {
            self.push_cancel(Token::new(OpKind::Accept, index, 0));
            let retry = Token::new(OpKind::AcceptRetry, index, 0).encode();
            let entry = opcode::TimeoutRemove::new(retry)
                .build()
                .user_data(Token::new(OpKind::Cancel, index, 0).encode());
            self.push(entry);
        }
        let entry = opcode::AsyncCancel2::new(CancelBuilder::any())
            .build()
            .user_data(Token::new(OpKind::Cancel, 0, 0).encode());
        self.push(entry);
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if self.ops_in_flight > 0 {
            self.cancel_everything();
            let timeout = Timespec::new().nsec(10_000_000);
            for _ in 0..DROP_WAIT_ROUNDS {
                self.drain_backlog();
                let args = SubmitArgs::new().timespec(&timeout);
                let _ = self.uring.submitter().submit_with_args(1, &args);
                self.poll(|_| {});
                if self.ops_in_flight == 0 {
                    break;
                }
            }
        }
        if self.ops_in_flight == 0 {
            // SAFETY: no op is in flight, so the kernel no longer reads or writes the buffers;
            // the field is not used after this.
            unsafe { std::mem::ManuallyDrop::drop(&mut self.bufring) };
            return;
        }
        // The kernel may still write into our buffers or read queued Bytes: leak them rather
        // than free memory it uses.
        tracing::error!(
            ops_in_flight = self.ops_in_flight,
            "io_uring ops still in flight at drop, leaking their memory"
        );
        std::mem::forget(std::mem::take(&mut self.conns));
    }
}
