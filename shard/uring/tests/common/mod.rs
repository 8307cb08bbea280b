//! Helpers shared by the ring tests: loopback listeners, owned copies of events, bounded loops.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use ringmq_uring::{Event, Ring, RingConfig};

/// Upper bound of any single test scenario.
pub const TEST_DEADLINE: Duration = Duration::from_secs(60);

/// An owned copy of an [`Event`], so the test can act on the ring after `poll` returns.
#[derive(Debug)]
pub enum Owned {
    Accepted {
        listener: usize,
        fd: OwnedFd,
    },
    Received {
        user: u64,
        data: Vec<u8>,
    },
    Closed {
        user: u64,
        error: Option<std::io::Error>,
    },
    Sent {
        user: u64,
        queued_bytes: usize,
    },
    Detached {
        user: u64,
        fd: OwnedFd,
    },
    Kicked {
        from: u32,
    },
}

pub fn own(ev: Event<'_>) -> Owned {
    match ev {
        Event::Accepted { listener, fd } => Owned::Accepted { listener, fd },
        Event::Received { user, data } => Owned::Received {
            user,
            data: data.to_vec(),
        },
        Event::Closed { user, error } => Owned::Closed { user, error },
        Event::Sent { user, queued_bytes } => Owned::Sent { user, queued_bytes },
        Event::Detached { user, fd } => Owned::Detached { user, fd },
        Event::Kicked { from } => Owned::Kicked { from },
    }
}

/// A loopback listener with a backlog large enough for the many-connection test.
pub fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    // Re-listening updates the backlog (std uses 128).
    let rc = unsafe { libc::listen(l.as_raw_fd(), 4096) };
    assert_eq!(rc, 0, "listen backlog");
    let addr = l.local_addr().expect("local addr");
    (l, addr)
}

/// flush + poll once, outside an executor; sleeps briefly when idle so tests do not spin.
pub fn step(ring: &mut Ring) -> Vec<Owned> {
    ring.flush().expect("flush");
    let mut out = Vec::new();
    ring.poll(|ev| out.push(own(ev)));
    if out.is_empty() {
        std::thread::sleep(Duration::from_millis(1));
        ring.flush().expect("flush");
        ring.poll(|ev| out.push(own(ev)));
    }
    out
}

/// flush + poll, then wait() when there was nothing: the shard loop shape, inside glommio.
pub async fn step_wait(ring: &mut Ring) -> Vec<Owned> {
    ring.flush().expect("flush");
    let mut out = Vec::new();
    ring.poll(|ev| out.push(own(ev)));
    if out.is_empty() {
        ring.wait().await;
        ring.flush().expect("flush");
        ring.poll(|ev| out.push(own(ev)));
    }
    out
}

pub fn small_config() -> RingConfig {
    RingConfig {
        entries: 256,
        cq_entries: 4096,
        buffer_count: 64,
        buffer_size: 4096,
        conns_max: 4096,
        ..RingConfig::default()
    }
}

pub fn check_deadline(start: Instant, what: &str) {
    assert!(start.elapsed() < TEST_DEADLINE, "timed out: {what}");
}

/// Deterministic payload: byte `i` of stream `seed` (detects loss and reordering).
pub fn pattern(seed: u64, offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| ((i as u64).wrapping_mul(31).wrapping_add(seed * 7) % 251) as u8)
        .collect()
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TEST_DEADLINE)).expect("timeout");
    s.set_write_timeout(Some(TEST_DEADLINE)).expect("timeout");
    s
}

pub fn read_exact_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).expect("read_exact");
    buf
}

pub fn write_all(s: &mut TcpStream, data: &[u8]) {
    s.write_all(data).expect("write_all");
}
