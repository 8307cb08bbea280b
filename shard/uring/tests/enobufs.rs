//! A tiny buffer ring (2 x 64 B) under lots of data: the multishot recv keeps ending with
//! ENOBUFS and is re-armed; no byte is lost or reordered.

mod common;

use std::collections::HashMap;
use std::thread;
use std::time::Instant;

use common::*;
use ringmq_uring::{Ring, RingConfig};

const CONNS: u64 = 4;
const BYTES_PER_CONN: usize = 256 * 1024;

#[test]
fn tiny_buffer_ring_loses_nothing() {
    let cfg = RingConfig {
        buffer_count: 2,
        buffer_size: 64,
        ..small_config()
    };
    let mut ring = Ring::new(cfg).expect("ring");
    let (listener, addr) = listener();
    ring.add_listener(listener).expect("listener");
    let senders: Vec<_> = (0..CONNS)
        .map(|seed| {
            thread::spawn(move || {
                let mut s = connect(addr);
                // Tell the ring which stream this is, then the stream.
                write_all(&mut s, &[seed as u8]);
                write_all(&mut s, &pattern(seed, 0, BYTES_PER_CONN));
            })
        })
        .collect();
    let mut streams: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut next_user = 0;
    let mut closed = 0;
    let start = Instant::now();
    while closed < CONNS {
        check_deadline(start, "enobufs streams");
        for ev in step(&mut ring) {
            match ev {
                Owned::Accepted { fd, .. } => {
                    ring.add_conn(fd, next_user).expect("add_conn");
                    next_user += 1;
                }
                Owned::Received { user, data } => {
                    assert!(data.len() <= 64, "a recv never exceeds the buffer size");
                    streams.entry(user).or_default().extend(data);
                }
                Owned::Closed { error, .. } => {
                    assert!(error.is_none(), "{error:?}");
                    closed += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    for s in senders {
        s.join().expect("sender");
    }
    for stream in streams.values() {
        let seed = u64::from(stream[0]);
        assert_eq!(stream.len(), 1 + BYTES_PER_CONN);
        assert!(
            stream[1..] == pattern(seed, 0, BYTES_PER_CONN),
            "stream {seed} intact"
        );
    }
    let stats = ring.stats();
    println!("stats {stats:?}");
    assert!(stats.recv_enobufs > 0, "the ENOBUFS path was exercised");
    assert!(stats.recv_arms > CONNS, "and the recv was re-armed");
}
