//! Echo over many connections: every byte comes back, in order, with nothing lost.

mod common;

use std::collections::HashMap;
use std::thread;
use std::time::Instant;

use bytes::Bytes;
use common::*;
use ringmq_uring::{ConnKey, Ring, RingConfig, TaskrunMode};

const CONNS: usize = 64;
const MESSAGES_PER_CONN: usize = 200;

fn message_len(i: usize) -> usize {
    1 + (i * 37) % 1500
}

fn stream_len() -> usize {
    (0..MESSAGES_PER_CONN).map(message_len).sum()
}

#[test]
fn echo_many_messages_many_connections() {
    echo_with(TaskrunMode::DeferTaskrun);
}

#[test]
fn echo_with_coop_taskrun() {
    echo_with(TaskrunMode::CoopTaskrun);
}

#[test]
fn echo_with_default_taskrun() {
    echo_with(TaskrunMode::Default);
}

fn echo_with(mode: TaskrunMode) {
    let (listener, addr) = listener();
    let cfg = RingConfig {
        taskrun_preferred: mode,
        ..small_config()
    };
    let mut ring = Ring::new(cfg).expect("ring");
    assert_eq!(ring.features().taskrun, mode);
    ring.add_listener(listener).expect("listener");

    let clients: Vec<_> = (0..CONNS as u64)
        .map(|seed| {
            thread::spawn(move || {
                let mut s = connect(addr);
                let mut r = s.try_clone().expect("clone");
                let reader = thread::spawn(move || read_exact_n(&mut r, stream_len()));
                let mut offset = 0;
                for i in 0..MESSAGES_PER_CONN {
                    let len = message_len(i);
                    write_all(&mut s, &pattern(seed, offset, len));
                    offset += len;
                }
                let echoed = reader.join().expect("reader");
                assert_eq!(echoed, pattern(seed, 0, stream_len()), "stream {seed}");
            })
        })
        .collect();

    let mut keys: HashMap<u64, ConnKey> = HashMap::new();
    let mut next_user = 0u64;
    let mut echoed = 0usize;
    let mut closed = 0;
    let start = Instant::now();
    // A client closes once it has its whole stream back, so Closed may come before the end.
    while closed < CONNS {
        check_deadline(start, "echo");
        for ev in step(&mut ring) {
            match ev {
                Owned::Accepted { fd, .. } => {
                    let key = ring.add_conn(fd, next_user).expect("add_conn");
                    keys.insert(next_user, key);
                    next_user += 1;
                }
                Owned::Received { user, data } => {
                    echoed += data.len();
                    ring.send(keys[&user], Bytes::from(data)).expect("send");
                }
                Owned::Closed { user, error } => {
                    assert!(error.is_none(), "conn {user}: {error:?}");
                    closed += 1;
                }
                Owned::Sent { .. } => {}
                Owned::Detached { .. } => panic!("unexpected detach"),
                Owned::Kicked { .. } => panic!("unexpected kick"),
            }
        }
    }
    for c in clients {
        c.join().expect("client");
    }
    assert_eq!(echoed, CONNS * stream_len());
    let stats = ring.stats();
    assert_eq!(stats.conns_live, 0);
    assert_eq!(stats.accepts, CONNS as u64);
    assert_eq!(stats.recv_bytes, (CONNS * stream_len()) as u64);
    println!("features {:?}", ring.features());
    println!("stats {stats:?}");
}
