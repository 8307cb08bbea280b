//! Bounds and teardown: the ring-wide send bound, the per-connection queue bound, and dropping
//! a ring with live connections and ops in flight.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::thread;
use std::time::Instant;

use bytes::Bytes;
use common::*;
use ringmq_uring::{ConnKey, Ring, RingConfig, SendErrorKind};

fn accept_n(ring: &mut Ring, n: usize) -> (Vec<TcpStream>, Vec<ConnKey>) {
    let (listener, addr) = listener();
    ring.add_listener(listener).expect("listener");
    let clients: Vec<_> = (0..n).map(|_| connect(addr)).collect();
    let mut keys = Vec::new();
    let start = Instant::now();
    while keys.len() < n {
        check_deadline(start, "accept");
        for ev in step(ring) {
            if let Owned::Accepted { fd, .. } = ev {
                let user = keys.len() as u64;
                keys.push(ring.add_conn(fd, user).expect("add_conn"));
            }
        }
    }
    (clients, keys)
}

#[test]
fn ring_wide_send_bound_delays_but_delivers_everything() {
    const CONNS: usize = 4;
    const CHUNKS: usize = 64;
    const CHUNK: usize = 16 * 1024;
    let cfg = RingConfig {
        sends_in_flight_max: 1,
        ..small_config()
    };
    let mut ring = Ring::new(cfg).expect("ring");
    let (clients, keys) = accept_n(&mut ring, CONNS);
    // Users are assigned in accept order, clients connected in order: key i <-> client i is
    // not guaranteed, so each stream carries its user id in its payload seed.
    for (user, key) in keys.iter().enumerate() {
        for c in 0..CHUNKS {
            ring.send(*key, Bytes::from(pattern(user as u64, c * CHUNK, CHUNK)))
                .expect("send");
        }
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| thread::spawn(move || read_exact_n(&mut c, CHUNKS * CHUNK)))
        .collect();
    let start = Instant::now();
    while !readers.iter().all(|r| r.is_finished()) {
        check_deadline(start, "bounded sends");
        step(&mut ring);
    }
    let mut seeds: Vec<u64> = Vec::new();
    for r in readers {
        let got = r.join().expect("reader");
        let seed = (0..CONNS as u64)
            .find(|s| got == pattern(*s, 0, CHUNKS * CHUNK))
            .expect("a stream intact");
        seeds.push(seed);
    }
    seeds.sort_unstable();
    assert_eq!(seeds, (0..CONNS as u64).collect::<Vec<_>>());
    let stats = ring.stats();
    assert!(stats.send_bound_waits > 0, "the bound was hit: {stats:?}");
}

#[test]
fn full_queue_hands_the_bytes_back() {
    let cfg = RingConfig {
        send_queue_bytes_max: 64 * 1024,
        ..small_config()
    };
    let mut ring = Ring::new(cfg).expect("ring");
    let (_clients, keys) = accept_n(&mut ring, 1);
    let mut refused = None;
    for _ in 0..1024 {
        match ring.send(keys[0], Bytes::from(vec![1u8; 8 * 1024])) {
            Ok(queued) => assert!(queued <= 64 * 1024),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("the peer never reads, so the bound is reached");
    assert!(matches!(
        e.kind,
        SendErrorKind::QueueFull { limit: 65536, .. }
    ));
    assert_eq!(e.data.len(), 8 * 1024, "the refused bytes come back");
    assert!(ring.stats().send_refused_full >= 1);
}

#[test]
fn drop_with_live_connections_cancels_and_closes_their_fds() {
    let cfg = RingConfig {
        send_queue_bytes_max: 64 * 1024 * 1024,
        ..small_config()
    };
    let mut ring = Ring::new(cfg).expect("ring");
    let (clients, keys) = accept_n(&mut ring, 3);
    // One with a blocked send, one lingering in close, one idle in recv.
    for _ in 0..64 {
        ring.send(keys[0], Bytes::from(vec![2u8; 64 * 1024]))
            .expect("send");
        ring.send(keys[1], Bytes::from(vec![3u8; 64 * 1024]))
            .expect("send");
    }
    ring.close(keys[1]);
    ring.flush().expect("flush");
    step(&mut ring);
    assert!(ring.stats().ops_in_flight >= 4, "{:?}", ring.stats());
    drop(ring);
    // The ring waited for the kernel to let go, then closed every fd: each peer reads to EOF
    // (or a reset) instead of hanging.
    for mut c in clients {
        // Bounded: a leaked fd would leave this read hanging until the timeout.
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let mut sink = Vec::new();
        match c.read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
}
