//! ringmq-uring: the per-shard io_uring data plane.
//!
//! # What this crate owns
//! One io_uring per shard thread ([`Ring`]), driven by the shard next to the glommio executor
//! that keeps running timers and cross-shard channels on the same thread. The ring owns:
//! - multishot accept on the shard's listeners ([`Ring::add_listener`]);
//! - one multishot receive per connection, reading into a provided buffer ring shared by all
//!   connections of the shard (no per-connection receive buffer, idle or not);
//! - a per-connection send queue of [`bytes::Bytes`], written with at most one send/sendmsg in
//!   flight per connection, partial writes continued internally;
//! - the connection's fd until it leaves the ring ([`Event::Closed`] or [`Event::Detached`]).
//!
//! # What it must not touch
//! No MQTT, no sessions, no routing, no timers of the broker: it moves bytes and reports
//! connection lifecycle, nothing else. It never blocks and never spawns tasks.
//!
//! # Main types
//! - [`RingConfig`]: sizes (SQ entries, buffer ring, send bounds, close linger bound).
//! - [`Ring`]: `!Send`, one per shard thread. The shard loop is
//!   `loop { ring.flush()?; ring.poll(|ev| ...); ring.wait().await }` (plus its other work).
//! - [`ConnKey`]: (slot, generation) handle of a connection; stale keys are ignored.
//! - [`Event`]: what [`Ring::poll`] reports.
//! - [`RingStats`], [`RingFeatures`]: counters and the setup the kernel accepted.
//! - [`RingError`], [`SendError`]: typed errors.
//!
//! # The shard loop
//! ```ignore
//! loop {
//!     ring.flush()?;                       // one io_uring_enter (none if nothing is queued)
//!     let n = ring.poll(|ev| handle(ev));  // Received slices are valid only in the callback
//!     act_on_handled_events(&mut ring);    // send / close / detach / pause_recv
//!     glommio::yield_if_needed().await;    // glommio's timers and channels share the thread
//!     if n == 0 { ring.wait().await; }     // sleep until the ring (or glommio) has work
//! }
//! ```
//! `wait()` must be awaited inside a glommio executor (it reads the eventfd through glommio's
//! ring); everything else is plain synchronous code. A busy loop can instead sleep in the ring
//! itself with [`Ring::submit_and_wait`] (one io_uring_enter that submits and waits), and rings
//! wake each other with [`Ring::kick`] (IORING_OP_MSG_RING, reported as [`Event::Kicked`]).
//! [`Ring::reported_through`] bounds from below when anything the next poll reports arrived.
//!
//! # Memory
//! An idle connection costs the ring its slot, `size_of` = 32 bytes ([`CONN_SIZE_BYTES`],
//! checked by a test): fd, generation, caller cookie, flags and an `Option<Box<_>>` send state
//! that exists only while output is queued (drained states go to a pool of at most 256). The
//! provided buffer ring is `buffer_count * buffer_size` bytes of anonymous memory (8 MiB with
//! the defaults, touched only as the kernel fills buffers) plus `16 * buffer_count` bytes of
//! ring entries pinned by the kernel.
//!
//! # Drop
//! Dropping a [`Ring`] aborts every connection, cancels accepts and timers and waits (at most
//! 2 s) until the kernel has finished every op, then closes all fds. If the kernel does not
//! let go in time, the buffers and send queues are leaked rather than freed under it (logged
//! at error level).
//!
//! # Kernel notes
//! - Accept reads RLIMIT_NOFILE when its SQE is prepared: a raised limit takes effect at the
//!   next re-arm (after EMFILE, within the 100 ms retry delay).
//! - With DEFER_TASKRUN, completions become visible only when this thread enters the ring;
//!   [`Ring::flush`] enters with GETEVENTS whenever the kernel flags pending task work.
//!
//! # Connection lifecycle
//! Every connection given to [`Ring::add_conn`] ends in exactly one [`Event::Closed`] or one
//! [`Event::Detached`]; after that its [`ConnKey`] is stale. After [`Ring::close`] or
//! [`Ring::close_now`] the only event still reported for the connection is its `Closed` (bytes
//! that arrive meanwhile are dropped). After [`Ring::pause_recv`], `Received` can still be
//! reported for bytes the kernel had completed before the cancel took effect.
//!
//! # The wake-up protocol of [`Ring::wait`]
//! An eventfd is registered with the ring (IORING_REGISTER_EVENTFD) and kept *disabled*
//! (IORING_CQ_EVENTFD_DISABLED) while the shard is busy, so the kernel does not signal it for
//! every completion. `wait()`:
//! 1. enables the eventfd;
//! 2. re-checks for work: queued SQEs, CQEs in the completion queue, CQ overflow, pending
//!    deferred task work (IORING_SQ_TASKRUN, set by the kernel with IORING_SETUP_TASKRUN_FLAG when
//!    its deferred list goes from empty to non-empty, which is also when it signals the eventfd)
//!    and internally finished connections; if any, it returns at once;
//! 3. otherwise awaits a read of (a dup of) the eventfd through glommio's own ring
//!    (`glommio::io::BufferedFile::read_at`), which completes when our ring signals it;
//! 4. disables the eventfd again.
//!
//! Any completion or deferred work that appears after step 1 signals the eventfd, and anything
//! before step 2 is seen by step 2, so no wake-up is lost. A signal left over from an earlier
//! turn can make one `wait()` return early (a spurious wake-up, harmless). The eventfd is
//! blocking on purpose: io_uring then arms an internal poll for the read instead of failing it
//! with EAGAIN. The test `wait_wakes_on_data_with_idle_executor` checks that with
//! DEFER_TASKRUN the eventfd is signalled when a receive completes.
//!
//! # Changes from the first API sketch
//! - [`Ring::send`] returns `Result<usize, SendError>` (the queued byte count, or the `Bytes`
//!   handed back when the connection is unknown/closing or its queue is at
//!   [`RingConfig::send_queue_bytes_max`]): every queue is bounded.
//! - [`Ring::close`] and [`Ring::close_now`] end in an [`Event::Closed`] (error `None`) so every
//!   connection has exactly one terminal event.
//! - [`RingConfig::taskrun_preferred`] (new) picks where the setup fallback starts, so the
//!   COOP_TASKRUN and plain modes can be tested and forced.
//! - [`Ring::detach`] also drains the send queue before handing the fd back (so bytes queued
//!   before the hand-off are written first); if that takes longer than
//!   [`RingConfig::linger_ms`] the connection is closed and reported `Closed` with
//!   `ErrorKind::TimedOut`.

mod bufring;
mod conn;
mod error;
mod ring;
mod token;
mod waker;

pub use conn::CONN_SIZE_BYTES;
pub use error::{RingError, SendError, SendErrorKind};
pub use ring::{ConnKey, Event, Ring, RingConfig, RingFeatures, RingStats, TaskrunMode};
