//! 2,000 connections at once on one ring (4,000 fds with the client ends, well under the
//! 20,000 fd limit).

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::time::Instant;

use bytes::Bytes;
use common::*;
use ringmq_uring::{Ring, RingConfig, CONN_SIZE_BYTES};

const CONNS: usize = 2000;

#[test]
fn two_thousand_connections_at_once() {
    let cfg = RingConfig {
        buffer_count: 256,
        buffer_size: 4096,
        ..RingConfig::default()
    };
    let mut ring = Ring::new(cfg).expect("ring");
    let (listener, addr) = listener();
    ring.add_listener(listener).expect("listener");
    let client = std::thread::spawn(move || {
        let mut socks: Vec<_> = (0..CONNS).map(|_| connect(addr)).collect();
        for (i, s) in socks.iter_mut().enumerate() {
            write_all(s, format!("hello {i:05}").as_bytes());
        }
        for (i, s) in socks.iter_mut().enumerate() {
            assert_eq!(read_exact_n(s, 11), format!("hello {i:05}").as_bytes());
        }
        // All are open at once here; now close them all.
        for mut s in socks {
            let mut rest = Vec::new();
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
            s.read_to_end(&mut rest).expect("eof");
        }
    });
    let mut keys = HashMap::new();
    let mut peak_live = 0;
    let mut closed = 0;
    let start = Instant::now();
    while closed < CONNS {
        check_deadline(start, "2000 connections");
        for ev in step(&mut ring) {
            match ev {
                Owned::Accepted { fd, .. } => {
                    let user = keys.len() as u64;
                    keys.insert(user, ring.add_conn(fd, user).expect("add_conn"));
                }
                Owned::Received { user, data } => {
                    ring.send(keys[&user], Bytes::from(data)).expect("send");
                }
                Owned::Closed { error, .. } => {
                    assert!(error.is_none(), "{error:?}");
                    closed += 1;
                }
                Owned::Sent { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        peak_live = peak_live.max(ring.stats().conns_live);
    }
    client.join().expect("client");
    assert_eq!(peak_live, CONNS as u64);
    assert_eq!(ring.stats().conns_live, 0);
    println!(
        "per-connection struct {CONN_SIZE_BYTES} B; stats {:?}",
        ring.stats()
    );
}
