//! The io_uring variants: one multishot receive (RecvMulti) per publisher for its whole life,
//! data landing in a provided buffer ring, buffers recycled as soon as their bytes are cut into
//! records; per turn at most one Send per sink, all of a turn's SQEs submitted by the same
//! io_uring_enter that waits for the next completions.
//!
//! The ring is set up SINGLE_ISSUER + DEFER_TASKRUN (completions are produced only when this
//! thread enters the ring, never by interrupting it), falling back to COOP_TASKRUN when the kernel
//! refuses. In `uring-eventfd` mode the thread instead sleeps in poll(2) on an eventfd registered
//! with the ring, the way an executor with its own reactor would be woken.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use anyhow::{bail, Context, Result};
use io_uring::cqueue;
use io_uring::squeue;
use io_uring::types::{BufRingEntry, Fd};
use io_uring::{opcode, IoUring, SubmissionQueue, Submitter};

use crate::net::Accepted;
use crate::record::Reassembly;
use crate::report::{LocalStats, LoopStats};
use crate::sink::SinkQueues;

/// Submission queue slots: arming 5,000 receives takes a few submits at start, a turn needs at
/// most one per sink plus re-arms.
pub const SQ_ENTRIES: u32 = 4096;
/// Completion queue slots: above the publisher count, so a turn's completions never overflow.
pub const CQ_ENTRIES: u32 = 16384;
/// The single buffer group all receives draw from.
pub const BUFFER_GROUP: u16 = 0;
/// How long one eventfd wait may last before the loop checks the ring itself; a wait that ends
/// this way and finds completions is a missed wake-up.
const EVENTFD_WAIT_MS: i32 = 100;
/// `IORING_ENTER_GETEVENTS`: run deferred task work and reap completions.
const IORING_ENTER_GETEVENTS: u32 = 1;

const _: () = assert!(CQ_ENTRIES as usize > 5000 + 64);

/// user_data tags: the high half says which operation, the low half the connection index.
const TAG_RECV: u64 = 1 << 32;
const TAG_SEND: u64 = 2 << 32;

/// How the ring was set up, for the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskRun {
    /// SINGLE_ISSUER + DEFER_TASKRUN + TASKRUN_FLAG.
    Defer,
    /// SINGLE_ISSUER + COOP_TASKRUN + TASKRUN_FLAG.
    Coop,
}

/// Builds the ring; with `force_coop` false it tries DEFER_TASKRUN first.
pub fn build_ring(force_coop: bool) -> Result<(IoUring, TaskRun)> {
    if !force_coop {
        match IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(CQ_ENTRIES)
            .build(SQ_ENTRIES)
        {
            Ok(ring) => return Ok((ring, TaskRun::Defer)),
            Err(error) => eprintln!("floor: DEFER_TASKRUN refused ({error}), using COOP_TASKRUN"),
        }
    }
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_cqsize(CQ_ENTRIES)
        .build(SQ_ENTRIES)
        .context("io_uring setup")?;
    Ok((ring, TaskRun::Coop))
}

/// Anonymous, page-aligned memory the kernel reads or writes while we hold no reference to it.
struct Mapping {
    address: *mut u8,
    length: usize,
}

impl Mapping {
    fn new(length: usize) -> Result<Self> {
        // SAFETY: anonymous private mapping; checked for MAP_FAILED below.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                length,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(io::Error::last_os_error()).context("mmap");
        }
        Ok(Self {
            address: address.cast(),
            length,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in `new`.
        unsafe { libc::munmap(self.address.cast(), self.length) };
    }
}

/// A provided buffer ring (IORING_REGISTER_PBUF_RING) and the buffers it hands out.
///
/// Must outlive the ring it is registered with: declare it before the `IoUring`.
pub struct BufRing {
    /// `count` BufRingEntry slots; the kernel reads them, we write them and bump the tail.
    entries: Mapping,
    /// `count * size` bytes of buffer memory the kernel writes received data into.
    buffers: Mapping,
    count: u16,
    size: u32,
    /// Our copy of the tail; published to the kernel by `publish`.
    tail: u16,
}

impl BufRing {
    /// `count` must be a power of two no larger than 32768.
    pub fn new(count: u16, size: u32) -> Result<Self> {
        if !count.is_power_of_two() || count > 32768 || size == 0 {
            bail!("buffer count must be a power of two up to 32768 and size non-zero, got {count} x {size}");
        }
        let entries = Mapping::new(count as usize * std::mem::size_of::<BufRingEntry>())?;
        let buffers = Mapping::new(count as usize * size as usize)?;
        let mut ring = Self {
            entries,
            buffers,
            count,
            size,
            tail: 0,
        };
        for bid in 0..count {
            ring.recycle(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// Registers the ring with `submitter` as group `group`.
    pub fn register(&self, submitter: &Submitter<'_>, group: u16) -> Result<()> {
        // SAFETY: the entry memory stays mapped until `self` drops, which happens after the ring
        // is closed (see the type's doc).
        unsafe {
            submitter.register_buf_ring_with_flags(
                self.entries.address as u64,
                self.count,
                group,
                0,
            )
        }
        .context("register_buf_ring")
    }

    /// Hands buffer `bid` back to the kernel (visible after the next `publish`).
    pub fn recycle(&mut self, bid: u16) {
        debug_assert!(bid < self.count);
        let slot = (self.tail & (self.count - 1)) as usize;
        // SAFETY: `slot < count`, inside the entry mapping; the kernel only reads slots between
        // its head and the published tail, and this slot is past the published tail.
        let entry = unsafe { &mut *(self.entries.address as *mut BufRingEntry).add(slot) };
        // SAFETY: `bid < count`, so the address is inside the buffer mapping.
        let address = unsafe { self.buffers.address.add(bid as usize * self.size as usize) };
        entry.set_addr(address as u64);
        entry.set_len(self.size);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every recycled buffer visible to the kernel.
    pub fn publish(&self) {
        // SAFETY: the tail lives in the first entry's reserved field, inside the mapping, and is
        // read by the kernel concurrently, hence the atomic release store.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.address as *const BufRingEntry)
                as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }

    /// The first `len` bytes of buffer `bid`, as the kernel filled them.
    pub fn data(&self, bid: u16, len: usize) -> Result<&[u8]> {
        if bid >= self.count || len > self.size as usize {
            bail!("kernel reported buffer {bid} with {len} bytes, outside the ring");
        }
        // SAFETY: bounds checked above; the kernel has finished writing this buffer (its CQE was
        // posted) and will not reuse it until we recycle it.
        Ok(unsafe {
            std::slice::from_raw_parts(
                self.buffers.address.add(bid as usize * self.size as usize),
                len,
            )
        })
    }
}

/// Parameters of the io_uring variants.
pub struct UringConfig {
    pub eventfd: bool,
    pub force_coop: bool,
    pub buf_count: u16,
    pub buf_size: u32,
}

/// One sink's send in flight.
struct SinkSend {
    fd: RawFd,
    /// Bytes handed to the kernel; never touched while `busy`.
    inflight: Vec<u8>,
    /// How much of `inflight` the kernel has confirmed sent.
    sent: usize,
    /// A Send SQE for this sink is outstanding: exactly while the kernel may read `inflight`.
    busy: bool,
    /// The sink failed (the driver closed it); its records are dropped.
    dead: bool,
}

/// Everything the completion handlers change, apart from the ring.
struct Receiver {
    buffers: BufRing,
    publishers: Vec<Option<TcpStream>>,
    reassembly: Vec<Reassembly>,
    open: usize,
    queues: SinkQueues,
    sinks: Vec<SinkSend>,
    local: LocalStats,
}

/// Pushes one SQE, submitting first if the queue is full.
fn push(
    submission: &mut SubmissionQueue<'_>,
    submitter: &Submitter<'_>,
    entry: &squeue::Entry,
    local: &mut LocalStats,
) -> Result<()> {
    loop {
        // SAFETY: every buffer an entry points to (provided buffers, `SinkSend::inflight`) stays
        // valid until its completion is reaped.
        if unsafe { submission.push(entry) }.is_ok() {
            return Ok(());
        }
        submission.sync();
        submitter.submit().context("io_uring submit")?;
        local.syscalls += 1;
        submission.sync();
    }
}

fn recv_entry(fd: RawFd, index: usize) -> squeue::Entry {
    opcode::RecvMulti::new(Fd(fd), BUFFER_GROUP)
        .build()
        .user_data(TAG_RECV | index as u64)
}

impl Receiver {
    fn on_recv(
        &mut self,
        index: usize,
        result: i32,
        flags: u32,
        submission: &mut SubmissionQueue<'_>,
        submitter: &Submitter<'_>,
    ) -> Result<()> {
        let Some(fd) = self
            .publishers
            .get(index)
            .and_then(|s| s.as_ref().map(|s| s.as_raw_fd()))
        else {
            return Ok(());
        };
        self.local.recv_cqes += 1;
        if result > 0 {
            let Some(bid) = cqueue::buffer_select(flags) else {
                bail!("receive completion without a buffer id");
            };
            let data = self.buffers.data(bid, result as usize)?;
            let queues = &mut self.queues;
            self.reassembly[index].feed(data, |record| queues.push(record));
            self.buffers.recycle(bid);
        }
        if cqueue::more(flags) {
            return Ok(());
        }
        // The multishot receive has ended: on a full buffer ring it is re-armed (the data waits in
        // the socket), at end of stream or on an error the publisher is gone.
        if result > 0 || result == -libc::ENOBUFS {
            if result == -libc::ENOBUFS {
                self.local.rearms_for_no_buffer += 1;
            }
            push(
                submission,
                submitter,
                &recv_entry(fd, index),
                &mut self.local,
            )?;
        } else {
            self.publishers[index] = None;
            self.open -= 1;
        }
        Ok(())
    }

    fn on_send(
        &mut self,
        index: usize,
        result: i32,
        submission: &mut SubmissionQueue<'_>,
        submitter: &Submitter<'_>,
    ) -> Result<()> {
        self.local.send_cqes += 1;
        let Some(sink) = self.sinks.get_mut(index) else {
            bail!("send completion for unknown sink {index}");
        };
        if result < 0 && result != -libc::EINTR && result != -libc::EAGAIN {
            sink.busy = false;
            sink.dead = true;
            sink.inflight.clear();
            return Ok(());
        }
        sink.sent += result.max(0) as usize;
        if sink.sent < sink.inflight.len() {
            let rest = &sink.inflight[sink.sent..];
            let entry = opcode::Send::new(Fd(sink.fd), rest.as_ptr(), rest.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(TAG_SEND | index as u64);
            return push(submission, submitter, &entry, &mut self.local);
        }
        sink.busy = false;
        sink.inflight.clear();
        Ok(())
    }

    /// Starts one Send per idle sink with the records this turn queued for it.
    fn start_sends(
        &mut self,
        submission: &mut SubmissionQueue<'_>,
        submitter: &Submitter<'_>,
    ) -> Result<()> {
        for (index, (sink, pending)) in self
            .sinks
            .iter_mut()
            .zip(self.queues.pending.iter_mut())
            .enumerate()
        {
            if sink.dead {
                pending.clear();
                continue;
            }
            if sink.busy || pending.is_empty() {
                continue;
            }
            std::mem::swap(&mut sink.inflight, pending);
            sink.sent = 0;
            sink.busy = true;
            let entry = opcode::Send::new(
                Fd(sink.fd),
                sink.inflight.as_ptr(),
                sink.inflight.len() as u32,
            )
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(TAG_SEND | index as u64);
            push(submission, submitter, &entry, &mut self.local)?;
        }
        Ok(())
    }
}

/// Runs deferred task work and submits queued SQEs without waiting.
fn enter_nowait(submitter: &Submitter<'_>, to_submit: u32) -> io::Result<usize> {
    // SAFETY: no argument struct is passed; flags and counts are plain integers.
    unsafe { submitter.enter::<libc::sigset_t>(to_submit, 0, IORING_ENTER_GETEVENTS, None) }
}

/// Waits for `eventfd` to become readable, at most `timeout_ms`; returns whether it did.
pub fn poll_eventfd(eventfd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut poll_fd = libc::pollfd {
        fd: eventfd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut poll_fd, 1, timeout_ms) };
    if ready < 0 {
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(error);
    }
    Ok(ready > 0)
}

/// Resets a non-blocking eventfd; returns the count it held (0 if none).
pub fn drain_eventfd(eventfd: RawFd) -> u64 {
    let mut count = 0u64;
    // SAFETY: reads 8 bytes into a live u64.
    let n = unsafe { libc::read(eventfd, (&mut count as *mut u64).cast(), 8) };
    if n == 8 {
        count
    } else {
        0
    }
}

/// A non-blocking eventfd registered with the ring.
pub fn register_eventfd(submitter: &Submitter<'_>) -> Result<OwnedFd> {
    // SAFETY: plain syscall; ownership is taken right after.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("eventfd");
    }
    // SAFETY: fresh fd nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    submitter
        .register_eventfd(fd)
        .context("IORING_REGISTER_EVENTFD")?;
    Ok(owned)
}

pub fn run(accepted: Accepted, config: UringConfig, stats: &LoopStats) -> Result<()> {
    let buffers = BufRing::new(config.buf_count, config.buf_size)?;
    let sinks = accepted
        .sinks
        .iter()
        .map(|stream| SinkSend {
            fd: stream.as_raw_fd(),
            inflight: Vec::with_capacity(64 << 10),
            sent: 0,
            busy: false,
            dead: false,
        })
        .collect();
    let mut receiver = Receiver {
        buffers,
        reassembly: accepted
            .publishers
            .iter()
            .map(|_| Reassembly::default())
            .collect(),
        open: accepted.publishers.len(),
        publishers: accepted.publishers.into_iter().map(Some).collect(),
        queues: SinkQueues::new(accepted.sinks.len()),
        sinks,
        local: LocalStats::default(),
    };
    // Declared after the buffers and sink streams it points into, so it is closed first.
    let (mut ring, task_run) = build_ring(config.force_coop)?;
    eprintln!(
        "floor recv: io_uring task_run={task_run:?} eventfd={} bufs={}x{}",
        config.eventfd, config.buf_count, config.buf_size
    );
    receiver.buffers.register(&ring.submitter(), BUFFER_GROUP)?;
    let eventfd = if config.eventfd {
        Some(register_eventfd(&ring.submitter())?)
    } else {
        None
    };
    let (submitter, mut submission, mut completion) = ring.split();
    for index in 0..receiver.publishers.len() {
        let Some(fd) = receiver.publishers[index].as_ref().map(|s| s.as_raw_fd()) else {
            continue;
        };
        push(
            &mut submission,
            &submitter,
            &recv_entry(fd, index),
            &mut receiver.local,
        )?;
    }
    submission.sync();
    submitter.submit().context("arm receives")?;

    while receiver.open > 0 || receiver.sinks.iter().any(|s| s.busy) {
        completion.sync();
        for cqe in &mut completion {
            let index = (cqe.user_data() & u32::MAX as u64) as usize;
            match cqe.user_data() & !(u32::MAX as u64) {
                TAG_RECV => receiver.on_recv(
                    index,
                    cqe.result(),
                    cqe.flags(),
                    &mut submission,
                    &submitter,
                )?,
                TAG_SEND => receiver.on_send(index, cqe.result(), &mut submission, &submitter)?,
                other => bail!("completion with unknown tag {other:#x}"),
            }
        }
        receiver.buffers.publish();
        receiver.start_sends(&mut submission, &submitter)?;
        submission.sync();
        stats.publish(
            &receiver.local,
            receiver.queues.forwarded,
            receiver.queues.dropped,
        );
        receiver.local.turns += 1;
        match &eventfd {
            None => {
                // Loopback sends usually complete inside this very enter; waiting for one CQE
                // more than the sends in flight makes the enter return on the next receive
                // instead of on our own send completions.
                let sends_in_flight = receiver.sinks.iter().filter(|s| s.busy).count();
                receiver.local.syscalls += 1;
                match submitter.submit_and_wait(1 + sends_in_flight) {
                    Ok(_) => {}
                    Err(error)
                        if matches!(error.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                    Err(error) => return Err(error).context("io_uring_enter"),
                }
            }
            Some(eventfd) => wait_on_eventfd(
                &submitter,
                &mut submission,
                &mut completion,
                eventfd.as_raw_fd(),
                &mut receiver.local,
            )?,
        }
    }
    Ok(())
}

/// The eventfd variant's wait: submit and run task work without blocking; if that produced
/// nothing, sleep in poll(2) on the eventfd, then reset it.
fn wait_on_eventfd(
    submitter: &Submitter<'_>,
    submission: &mut SubmissionQueue<'_>,
    completion: &mut io_uring::CompletionQueue<'_>,
    eventfd: RawFd,
    local: &mut LocalStats,
) -> Result<()> {
    local.syscalls += 1;
    match enter_nowait(submitter, submission.len() as u32) {
        Ok(_) => {}
        Err(error) if matches!(error.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
        Err(error) => return Err(error).context("io_uring_enter"),
    }
    submission.sync();
    completion.sync();
    if !io_uring::CompletionQueue::is_empty(completion) || submission.taskrun() {
        return Ok(());
    }
    local.syscalls += 1;
    let signalled = poll_eventfd(eventfd, EVENTFD_WAIT_MS).context("poll eventfd")?;
    if !signalled {
        local.eventfd_timeouts += 1;
        local.syscalls += 1;
        enter_nowait(submitter, 0).context("io_uring_enter")?;
        completion.sync();
        if !io_uring::CompletionQueue::is_empty(completion) {
            local.missed_wakeups += 1;
        }
        return Ok(());
    }
    local.syscalls += 1;
    drain_eventfd(eventfd);
    Ok(())
}
