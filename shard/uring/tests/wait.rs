//! wait() inside a glommio executor: the executor sleeps until our ring has completions.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use glommio::LocalExecutorBuilder;
use ringmq_uring::{Ring, RingConfig, TaskrunMode};

/// Bounds a single wait() so a lost wake-up fails the test instead of hanging it.
const WAIT_BOUND: Duration = Duration::from_secs(10);

#[test]
fn wait_wakes_on_data_with_idle_executor() {
    wakes_with(TaskrunMode::DeferTaskrun);
}

#[test]
fn wait_wakes_with_coop_taskrun_fallback() {
    wakes_with(TaskrunMode::CoopTaskrun);
}

#[test]
fn wait_wakes_with_default_taskrun_fallback() {
    wakes_with(TaskrunMode::Default);
}

fn wakes_with(mode: TaskrunMode) {
    let handle = LocalExecutorBuilder::default()
        .spawn(move || async move {
            let cfg = RingConfig {
                taskrun_preferred: mode,
                ..small_config()
            };
            let mut ring = Ring::new(cfg).expect("ring");
            assert_eq!(ring.features().taskrun, mode);
            let (listener, addr) = listener();
            ring.add_listener(listener).expect("listener");
            // The peer connects and writes only after a delay, while the executor has nothing
            // else to do: only the eventfd can wake it.
            let peer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                let mut s = connect(addr);
                std::thread::sleep(Duration::from_millis(200));
                write_all(&mut s, b"ping");
                read_exact_n(&mut s, 4)
            });
            let start = Instant::now();
            let mut key = None;
            let mut replied = false;
            let mut closed = false;
            // Ends on the peer's EOF, which itself must wake the executor.
            while !(replied && closed) {
                check_deadline(start, "wait test");
                ring.flush().expect("flush");
                let mut events = Vec::new();
                ring.poll(|ev| events.push(own(ev)));
                if events.is_empty() {
                    let woke = Instant::now();
                    let timer = async {
                        glommio::timer::sleep(WAIT_BOUND).await;
                    };
                    futures_lite::future::or(ring.wait(), timer).await;
                    assert!(
                        woke.elapsed() < WAIT_BOUND,
                        "wait() missed a wake-up: key {key:?} replied {replied} stats {:?}",
                        ring.stats()
                    );
                    continue;
                }
                for ev in events {
                    match ev {
                        Owned::Accepted { fd, .. } => {
                            key = Some(ring.add_conn(fd, 1).expect("add"))
                        }
                        Owned::Received { data, .. } => {
                            assert_eq!(data, b"ping");
                            ring.send(key.expect("key"), Bytes::from_static(b"pong"))
                                .expect("send");
                        }
                        Owned::Sent { .. } => replied = true,
                        Owned::Closed { .. } => closed = true,
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            assert_eq!(peer.join().expect("peer"), b"pong");
            let stats = ring.stats();
            println!("stats {stats:?}");
            // The EOF may come in the same wake-up as the Sent, so only two sleeps are certain.
            assert!(
                stats.wait_sleeps >= 2,
                "slept for the accept and for the data"
            );
        })
        .expect("executor");
    handle.join().expect("join");
}

#[test]
fn echo_driven_by_wait_loses_nothing() {
    const CONNS: u64 = 16;
    const BYTES: usize = 128 * 1024;
    let handle = LocalExecutorBuilder::default()
        .spawn(|| async move {
            let mut ring = Ring::new(small_config()).expect("ring");
            let (listener, addr) = listener();
            ring.add_listener(listener).expect("listener");
            let clients: Vec<_> = (0..CONNS)
                .map(|seed| {
                    std::thread::spawn(move || {
                        let mut s = connect(addr);
                        let mut r = s.try_clone().expect("clone");
                        let reader = std::thread::spawn(move || read_exact_n(&mut r, BYTES));
                        for i in 0..BYTES / 512 {
                            write_all(&mut s, &pattern(seed, i * 512, 512));
                        }
                        assert!(reader.join().expect("reader") == pattern(seed, 0, BYTES));
                    })
                })
                .collect();
            let mut keys = std::collections::HashMap::new();
            let mut closed = 0;
            let start = Instant::now();
            while closed < CONNS {
                check_deadline(start, "echo with wait");
                for ev in step_wait(&mut ring).await {
                    match ev {
                        Owned::Accepted { fd, .. } => {
                            let user = keys.len() as u64;
                            keys.insert(user, ring.add_conn(fd, user).expect("add"));
                        }
                        Owned::Received { user, data } => {
                            ring.send(keys[&user], Bytes::from(data)).expect("send");
                        }
                        Owned::Closed { .. } => closed += 1,
                        Owned::Sent { .. } => {}
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            for c in clients {
                c.join().expect("client");
            }
            println!("stats {:?}", ring.stats());
        })
        .expect("executor");
    handle.join().expect("join");
}
