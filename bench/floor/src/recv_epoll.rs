//! The epoll variant: level-triggered, one `epoll_wait` per turn, each ready publisher read until
//! EAGAIN (or, with `stop_on_short_read`, until a read shorter than the buffer), then one `send`
//! per sink with that turn's records.

use std::io;
use std::os::fd::AsRawFd;

use anyhow::{Context, Result};

use crate::net::Accepted;
use crate::record::Reassembly;
use crate::report::{LocalStats, LoopStats};
use crate::sink::SinkQueues;
use crate::sys;

/// Ready sockets taken from one `epoll_wait`; more wait for the next turn (level-triggered).
const EVENTS_PER_WAIT: usize = 1024;
/// Bytes read per `recv`: several hundred records, far more than an idle publisher has queued.
const READ_BUFFER_BYTES: usize = 64 << 10;
/// How long to wait before retrying a sink whose socket buffer was full.
const SINK_RETRY_MS: i32 = 1;

pub fn run(accepted: Accepted, stop_on_short_read: bool, stats: &LoopStats) -> Result<()> {
    // SAFETY: plain syscall; the fd is closed when `epoll` drops.
    let epoll_fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll_fd < 0 {
        return Err(io::Error::last_os_error()).context("epoll_create1");
    }
    // SAFETY: `epoll_fd` is a fresh fd nobody else owns.
    let epoll = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(epoll_fd) };
    let mut publishers: Vec<Option<std::net::TcpStream>> =
        accepted.publishers.into_iter().map(Some).collect();
    for (index, stream) in publishers.iter().enumerate() {
        let Some(stream) = stream else { continue };
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: index as u64,
        };
        // SAFETY: both fds are open; `event` is a live local.
        let rc = unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                stream.as_raw_fd(),
                &mut event,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error()).context("epoll_ctl add");
        }
    }
    let sinks = accepted.sinks;
    let mut reassembly: Vec<Reassembly> =
        publishers.iter().map(|_| Reassembly::default()).collect();
    let mut queues = SinkQueues::new(sinks.len());
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_WAIT];
    let mut read_buffer = vec![0u8; READ_BUFFER_BYTES];
    let mut local = LocalStats::default();
    let mut open = publishers.len();
    let mut sink_backlog = false;

    while open > 0 {
        let timeout_ms = if sink_backlog { SINK_RETRY_MS } else { -1 };
        // SAFETY: `events` is valid for EVENTS_PER_WAIT entries.
        let ready = unsafe {
            libc::epoll_wait(
                epoll.as_raw_fd(),
                events.as_mut_ptr(),
                EVENTS_PER_WAIT as i32,
                timeout_ms,
            )
        };
        local.turns += 1;
        local.syscalls += 1;
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error).context("epoll_wait");
        }
        for event in &events[..ready as usize] {
            let index = event.u64 as usize;
            let Some(stream) = publishers[index].as_ref() else {
                continue;
            };
            let fd = stream.as_raw_fd();
            let closed = loop {
                local.syscalls += 1;
                match sys::recv(fd, &mut read_buffer) {
                    Ok(0) => break true,
                    Ok(n) => {
                        reassembly[index].feed(&read_buffer[..n], |record| queues.push(record));
                        if stop_on_short_read && n < read_buffer.len() {
                            break false;
                        }
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break false,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break true,
                }
            };
            if closed {
                // Closing the fd also removes it from the epoll set.
                publishers[index] = None;
                open -= 1;
            }
        }
        sink_backlog = flush(&sinks, &mut queues, &mut local)?;
        stats.publish(&local, queues.forwarded, queues.dropped);
    }
    Ok(())
}

/// One `send` per sink with queued records; returns whether any sink still has bytes queued.
fn flush(
    sinks: &[std::net::TcpStream],
    queues: &mut SinkQueues,
    local: &mut LocalStats,
) -> Result<bool> {
    let mut backlog = false;
    for (sink, queue) in sinks.iter().zip(queues.pending.iter_mut()) {
        if queue.is_empty() {
            continue;
        }
        local.syscalls += 1;
        match sys::send(sink.as_raw_fd(), queue) {
            Ok(n) if n == queue.len() => queue.clear(),
            Ok(n) => {
                queue.drain(..n);
                backlog = true;
            }
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                backlog = true
            }
            // The driver closes the sinks when its run ends; the records are dropped with them.
            Err(_) => queue.clear(),
        }
    }
    Ok(backlog)
}
