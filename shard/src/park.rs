//! Parking idle connections. A connection that stayed idle for a whole sweep period
//! (`Limits::park_after_idle_secs`) gives up its task, its io_uring poll and every buffer: its
//! socket waits in the shard's epoll set and only the session remains in memory. That is what
//! keeps an idle vehicle under 1 KiB of broker memory.
//!
//! A parked connection comes back when its socket turns readable (or hangs up), reported by the
//! shard's park thread, or when the shard wakes it (a message to deliver, keepalive expiry,
//! takeover, shutdown), through a [`parked_waker`] that names the connection and queues it on
//! this thread.
//!
//! Owns: the epoll set, the park thread (blocked in `epoll_wait`, it only forwards which
//! connections are ready) and the thread-local queue of woken connections. Must not touch:
//! sessions or sockets' contents — `runtime` and `connection` turn an id back into a task.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
use std::thread::JoinHandle;

use tracing::warn;

use crate::message::ShardId;

/// Batches of ready connection ids the park thread may have waiting for its shard. Overflow
/// policy: the park thread waits; the readiness stays in the kernel (each registration is
/// one-shot, so nothing is lost or repeated).
pub const PARK_READY_BATCHES: usize = 256;
/// Events taken per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 1024;
/// How often the park thread checks whether its shard stopped.
const WAIT_MS: i32 = 200;

// A connection id travels as a waker's data pointer.
const _: () = assert!(usize::BITS >= 64);

/// Names a parked connection: session slot and connection generation.
pub fn conn_id(slot: u32, generation: u32) -> u64 {
    u64::from(slot) | (u64::from(generation) << 32)
}

/// The (slot, generation) a [`conn_id`] names.
pub fn split_id(id: u64) -> (u32, u32) {
    (id as u32, (id >> 32) as u32)
}

/// One shard's epoll set and the thread that waits on it.
pub struct ParkSet {
    epoll: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    thread: RefCell<Option<JoinHandle<()>>>,
    ready: flume::Receiver<Vec<u64>>,
}

impl ParkSet {
    /// Creates the epoll set and starts the park thread.
    pub fn new(shard: ShardId) -> io::Result<ParkSet> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let epoll = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, ready) = flume::bounded(PARK_READY_BATCHES);
        let thread = std::thread::Builder::new()
            .name(format!("ringmq-park-{shard}"))
            .spawn({
                let epoll = epoll.clone();
                let stop = stop.clone();
                move || wait_loop(&epoll, &stop, &tx)
            })?;
        Ok(ParkSet {
            epoll,
            stop,
            thread: RefCell::new(Some(thread)),
            ready,
        })
    }

    /// Moves a socket into the set: returns a duplicate descriptor registered one-shot for
    /// readability (the caller closes its own). Readiness already pending is reported at once.
    pub fn park(&self, socket: RawFd, id: u64) -> io::Result<OwnedFd> {
        // SAFETY: duplicating a descriptor the caller keeps open for this call.
        let dup = unsafe { libc::fcntl(socket, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let dup = unsafe { OwnedFd::from_raw_fd(dup) };
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: id,
        };
        // SAFETY: both descriptors are open; the event is a valid epoll_event.
        let rc = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                dup.as_raw_fd(),
                &mut event,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(dup)
    }

    /// Takes a parked socket out of the set before it is served again.
    pub fn forget(&self, socket: &OwnedFd) {
        // SAFETY: both descriptors are open. Failure (already gone) changes nothing.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                socket.as_raw_fd(),
                std::ptr::null_mut(),
            );
        }
    }

    /// Batches of ids of parked connections whose sockets turned readable.
    pub fn ready(&self) -> &flume::Receiver<Vec<u64>> {
        &self.ready
    }

    /// Stops the park thread and waits for it (at most `WAIT_MS`).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.borrow_mut().take() {
            let _ = thread.join();
        }
    }
}

fn wait_loop(epoll: &OwnedFd, stop: &AtomicBool, tx: &flume::Sender<Vec<u64>>) {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
    while !stop.load(Ordering::Acquire) {
        // SAFETY: the buffer holds EVENTS_PER_WAIT events.
        let n = unsafe {
            libc::epoll_wait(
                epoll.as_raw_fd(),
                events.as_mut_ptr(),
                EVENTS_PER_WAIT as i32,
                WAIT_MS,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            warn!(error = %err, "epoll_wait failed; parked connections now wait for the shard to wake them");
            return;
        }
        if n == 0 {
            continue;
        }
        let batch: Vec<u64> = events[..n as usize].iter().map(|e| e.u64).collect();
        if tx.send(batch).is_err() {
            return; // the shard stopped.
        }
    }
}

/// Connections woken on this thread while parked, and the task that resumes them.
struct Woken {
    ids: Vec<u64>,
    task: Option<Waker>,
}

thread_local! {
    static WOKEN: RefCell<Woken> = const { RefCell::new(Woken { ids: Vec::new(), task: None }) };
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(clone_raw, wake_raw, wake_raw, drop_raw);

fn clone_raw(data: *const ()) -> RawWaker {
    RawWaker::new(data, &VTABLE)
}

fn wake_raw(data: *const ()) {
    let id = data as usize as u64;
    let task = WOKEN
        .try_with(|w| {
            let mut w = w.try_borrow_mut().ok()?;
            w.ids.push(id);
            w.task.take()
        })
        .ok()
        .flatten();
    if let Some(task) = task {
        task.wake();
    }
}

fn drop_raw(_: *const ()) {}

/// A waker for parked connection `id`: waking it queues the connection to be resumed on this
/// thread. It holds no memory (the id is its data), so a parked connection costs nothing here.
/// Woken on another thread it does nothing; sessions are only touched on their own shard.
pub fn parked_waker(id: u64) -> Waker {
    // SAFETY: the vtable's functions never dereference the data pointer (it is the id) and are
    // safe to call from any thread.
    unsafe { Waker::from_raw(RawWaker::new(id as usize as *const (), &VTABLE)) }
}

/// The ids of parked connections woken on this thread since the last call.
pub fn poll_woken(cx: &mut Context<'_>) -> Poll<Vec<u64>> {
    WOKEN.with(|w| {
        let mut w = w.borrow_mut();
        if w.ids.is_empty() {
            w.task = Some(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(std::mem::take(&mut w.ids))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for (slot, generation) in [(0, 0), (1, 2), (u32::MAX, u32::MAX), (7, u32::MAX - 1)] {
            assert_eq!(split_id(conn_id(slot, generation)), (slot, generation));
        }
    }

    #[test]
    fn a_parked_waker_queues_its_connection_once_per_wake() {
        let waker = parked_waker(conn_id(3, 9));
        let copy = waker.clone();
        waker.wake();
        copy.wake_by_ref();
        let mut cx = Context::from_waker(Waker::noop());
        match poll_woken(&mut cx) {
            Poll::Ready(ids) => assert_eq!(ids, vec![conn_id(3, 9), conn_id(3, 9)]),
            Poll::Pending => panic!("woken ids expected"),
        }
        assert!(poll_woken(&mut cx).is_pending());
    }

    #[test]
    fn a_socket_parked_with_data_waiting_is_reported_ready() {
        let set = ParkSet::new(0).expect("epoll");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let parked = set.park(server.as_raw_fd(), conn_id(5, 1)).expect("park");
        drop(server); // the parked duplicate keeps the socket open
        std::io::Write::write_all(&mut client, b"x").unwrap();
        let batch = set
            .ready()
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("readiness");
        assert_eq!(batch, vec![conn_id(5, 1)]);
        set.forget(&parked);
        set.stop();
    }
}
