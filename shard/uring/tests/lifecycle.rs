//! Connection lifecycle: peer close, reset, detach hand-off, close after a large send, pause.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use ringmq_uring::{ConnKey, Ring, RingConfig};

/// Accepts exactly one connection on a fresh ring and registers it as `user`.
fn one_conn(ring: &mut Ring, user: u64) -> (TcpStream, ConnKey) {
    let (listener, addr) = listener();
    ring.add_listener(listener).expect("listener");
    let client = connect(addr);
    let start = Instant::now();
    loop {
        check_deadline(start, "accept");
        for ev in step(ring) {
            if let Owned::Accepted { fd, .. } = ev {
                let key = ring.add_conn(fd, user).expect("add_conn");
                return (client, key);
            }
        }
    }
}

#[test]
fn peer_close_reports_closed_without_error() {
    let mut ring = Ring::new(small_config()).expect("ring");
    let (mut client, _key) = one_conn(&mut ring, 7);
    write_all(&mut client, b"bye");
    drop(client);
    let start = Instant::now();
    let mut got = Vec::new();
    loop {
        check_deadline(start, "closed");
        for ev in step(&mut ring) {
            match ev {
                Owned::Received { user: 7, data } => got.extend(data),
                Owned::Closed { user: 7, error } => {
                    assert!(error.is_none(), "{error:?}");
                    assert_eq!(got, b"bye", "bytes before EOF are delivered first");
                    assert_eq!(ring.stats().conns_live, 0);
                    return;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

#[test]
fn peer_reset_reports_closed_with_error() {
    let mut ring = Ring::new(small_config()).expect("ring");
    let (client, _key) = one_conn(&mut ring, 8);
    // SO_LINGER 0: close sends RST instead of FIN.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&client),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    assert_eq!(rc, 0);
    drop(client);
    let start = Instant::now();
    loop {
        check_deadline(start, "reset");
        for ev in step(&mut ring) {
            if let Owned::Closed { user: 8, error } = ev {
                let error = error.expect("a reset is an error");
                assert_eq!(error.raw_os_error(), Some(libc::ECONNRESET));
                return;
            }
        }
    }
}

/// Detach while the peer streams: bytes received on the first ring before Detached plus bytes
/// read on the second ring are the whole stream, in order; the fd still works afterwards.
#[test]
fn detach_delivers_received_before_detached_and_fd_moves_to_second_ring() {
    const TOTAL: usize = 2 * 1024 * 1024;
    let mut ring1 = Ring::new(small_config()).expect("ring1");
    let mut ring2 = Ring::new(small_config()).expect("ring2");
    let (client, key) = one_conn(&mut ring1, 1);
    let mut writer = client.try_clone().expect("clone");
    let sender = thread::spawn(move || {
        for chunk in 0..TOTAL / 4096 {
            write_all(&mut writer, &pattern(3, chunk * 4096, 4096));
        }
    });
    let mut got = Vec::with_capacity(TOTAL);
    let start = Instant::now();
    // Receive a little, then detach mid-stream.
    let mut fd: Option<OwnedFd> = None;
    let mut detach_sent = false;
    while fd.is_none() {
        check_deadline(start, "detach");
        for ev in step(&mut ring1) {
            match ev {
                Owned::Received { user: 1, data } => {
                    assert!(fd.is_none(), "Received after Detached");
                    got.extend(data);
                }
                Owned::Detached { user: 1, fd: f } => fd = Some(f),
                other => panic!("unexpected {other:?}"),
            }
        }
        if !detach_sent && got.len() >= 64 * 1024 {
            ring1.detach(key);
            detach_sent = true;
        }
    }
    assert_eq!(ring1.stats().conns_live, 0);
    let before = got.len();
    let key2 = ring2
        .add_conn(fd.expect("fd"), 2)
        .expect("add_conn on ring2");
    while got.len() < TOTAL {
        check_deadline(start, "second ring");
        for ev in step(&mut ring2) {
            match ev {
                Owned::Received { user: 2, data } => got.extend(data),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    sender.join().expect("sender");
    assert!(before < TOTAL, "detach happened mid-stream");
    assert_eq!(
        got,
        pattern(3, 0, TOTAL),
        "no loss or reordering across the hand-off"
    );
    // The moved fd is fully usable: send through ring2, read on the client.
    ring2
        .send(key2, Bytes::from_static(b"moved"))
        .expect("send");
    let mut client = client;
    let start = Instant::now();
    let reader = thread::spawn(move || read_exact_n(&mut client, 5));
    while !reader.is_finished() {
        check_deadline(start, "reply");
        step(&mut ring2);
    }
    assert_eq!(reader.join().expect("reader"), b"moved");
}

#[test]
fn close_after_large_send_drains_everything() {
    const TOTAL: usize = 8 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let cfg = RingConfig {
        send_queue_bytes_max: 16 * 1024 * 1024,
        ..small_config()
    };
    let mut ring = Ring::new(cfg).expect("ring");
    let (mut client, key) = one_conn(&mut ring, 5);
    for i in 0..TOTAL / CHUNK {
        ring.send(key, Bytes::from(pattern(9, i * CHUNK, CHUNK)))
            .expect("send");
    }
    ring.close(key);
    // The peer starts reading late, so the close really has to wait for the queue.
    let reader = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        let mut all = Vec::with_capacity(TOTAL);
        client.read_to_end(&mut all).expect("read to EOF");
        all
    });
    let start = Instant::now();
    let mut closed = false;
    while !closed {
        check_deadline(start, "close drain");
        for ev in step(&mut ring) {
            match ev {
                Owned::Closed { user: 5, error } => {
                    assert!(error.is_none(), "{error:?}");
                    closed = true;
                }
                other => panic!("only Closed is reported after close(): {other:?}"),
            }
        }
    }
    let all = reader.join().expect("reader");
    assert_eq!(all.len(), TOTAL);
    assert!(all == pattern(9, 0, TOTAL), "content intact");
    assert_eq!(ring.stats().sent_bytes, TOTAL as u64);
}

#[test]
fn close_linger_bound_closes_hard_when_peer_never_reads() {
    let cfg = RingConfig {
        linger_ms: 200,
        send_queue_bytes_max: 64 * 1024 * 1024,
        ..small_config()
    };
    let mut ring = Ring::new(cfg).expect("ring");
    let (_client, key) = one_conn(&mut ring, 6);
    // Far more than the socket buffers hold; the peer never reads.
    for _ in 0..512 {
        ring.send(key, Bytes::from(vec![0u8; 64 * 1024]))
            .expect("send");
    }
    ring.close(key);
    let start = Instant::now();
    loop {
        check_deadline(start, "linger");
        for ev in step(&mut ring) {
            if let Owned::Closed { user: 6, error } = ev {
                assert_eq!(error.map(|e| e.kind()), Some(std::io::ErrorKind::TimedOut));
                assert_eq!(ring.stats().conns_live, 0);
                return;
            }
        }
    }
}

#[test]
fn pause_stops_and_resume_restarts_receiving() {
    let mut ring = Ring::new(small_config()).expect("ring");
    let (mut client, key) = one_conn(&mut ring, 4);
    ring.pause_recv(key);
    ring.flush().expect("flush");
    write_all(&mut client, b"held");
    let start = Instant::now();
    // Give the kernel many chances to (wrongly) deliver.
    for _ in 0..50 {
        let events = step(&mut ring);
        assert!(events.is_empty(), "nothing while paused: {events:?}");
    }
    ring.resume_recv(key);
    let mut got = Vec::new();
    while got.len() < 4 {
        check_deadline(start, "resume");
        for ev in step(&mut ring) {
            if let Owned::Received { user: 4, data } = ev {
                got.extend(data);
            }
        }
    }
    assert_eq!(got, b"held");
    // Stale keys are refused, not confused with a new occupant of the slot.
    ring.close_now(key);
    loop {
        check_deadline(start, "close_now");
        if step(&mut ring)
            .iter()
            .any(|ev| matches!(ev, Owned::Closed { user: 4, .. }))
        {
            break;
        }
    }
    let refused = ring
        .send(key, Bytes::from_static(b"x"))
        .expect_err("stale key");
    assert_eq!(refused.kind, ringmq_uring::SendErrorKind::UnknownConn);
}
