//! Kicks between rings (IORING_OP_MSG_RING) and sleeping in the ring itself
//! (`Ring::submit_and_wait`): the two halves of a shard loop that does not go through glommio's
//! reactor while it is busy.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use ringmq_uring::{Event, Ring, TaskrunMode};

/// Bounds one wait so a lost kick fails the test instead of hanging it.
const WAIT_BOUND: Duration = Duration::from_secs(10);

#[test]
fn a_kick_wakes_a_ring_sleeping_in_submit_and_wait() {
    kick_with(TaskrunMode::DeferTaskrun);
}

#[test]
fn a_kick_wakes_a_ring_with_coop_taskrun() {
    kick_with(TaskrunMode::CoopTaskrun);
}

/// Ring B sleeps in `submit_and_wait` on its own thread; ring A (another thread, as shards are)
/// kicks it; B wakes before its timeout and reports who kicked.
fn kick_with(mode: TaskrunMode) {
    let (fd_tx, fd_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let sleeper = std::thread::spawn(move || {
        let cfg = ringmq_uring::RingConfig {
            taskrun_preferred: mode,
            ..small_config()
        };
        let mut ring = Ring::new(cfg).expect("ring");
        fd_tx.send(ring.ring_fd()).expect("send fd");
        let start = Instant::now();
        let mut from = None;
        while from.is_none() {
            check_deadline(start, "kick test");
            ring.submit_and_wait(WAIT_BOUND).expect("wait");
            ring.poll(|ev| {
                if let Event::Kicked { from: f } = ev {
                    from = Some(f);
                }
            });
        }
        done_tx.send(()).expect("done");
        (from, ring.stats().kicks_received)
    });
    let target = fd_rx.recv().expect("fd");
    let mut kicker = Ring::new(small_config()).expect("ring");
    // Give the sleeper time to be blocked in the kernel (not required for correctness: a kick
    // that arrives first is simply reported by its next wait).
    std::thread::sleep(Duration::from_millis(100));
    kicker.kick(target, 1, 7);
    kicker.flush().expect("flush");
    done_rx
        .recv_timeout(WAIT_BOUND * 2)
        .expect("the kicked ring woke up");
    let (from, received) = sleeper.join().expect("sleeper");
    assert_eq!(from, Some(7));
    assert_eq!(received, 1);
    assert_eq!(kicker.stats().kicks_sent, 1);
    assert_eq!(kicker.stats().kick_errors, 0);
}

/// With nothing to complete, `submit_and_wait` ends with its timeout and says so.
#[test]
fn submit_and_wait_times_out_when_nothing_completes() {
    let mut ring = Ring::new(small_config()).expect("ring");
    let woke = ring
        .submit_and_wait(Duration::from_millis(20))
        .expect("wait");
    assert!(!woke);
    assert_eq!(ring.stats().direct_wait_timeouts, 1);
}

/// A kick to a descriptor that is not a ring fails on the kicker's side, counted, nothing else.
#[test]
fn a_kick_to_a_stale_descriptor_is_counted_not_fatal() {
    let mut ring = Ring::new(small_config()).expect("ring");
    let (listener, _addr) = listener();
    use std::os::fd::AsRawFd;
    ring.kick(listener.as_raw_fd(), 3, 0);
    ring.flush().expect("flush");
    let start = Instant::now();
    while ring.stats().kick_errors == 0 {
        check_deadline(start, "stale kick");
        ring.submit_and_wait(Duration::from_millis(50))
            .expect("wait");
        ring.poll(|_| {});
    }
    assert_eq!(ring.stats().kick_errors, 1);
}
