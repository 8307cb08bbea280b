//! Pausing accepts: while paused, new connections wait in the kernel's listen backlog (nothing
//! is accepted, nothing refused); resumed, every one of them is accepted.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ringmq_uring::Ring;

/// Steps the ring `turns` times and counts the accepts.
fn accepted_in(ring: &mut Ring, turns: usize) -> usize {
    let mut accepted = 0;
    for _ in 0..turns {
        for ev in step(ring) {
            if matches!(ev, Owned::Accepted { .. }) {
                accepted += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    accepted
}

#[test]
fn paused_accepts_wait_in_the_backlog_and_resume_takes_them_all() {
    let mut ring = Ring::new(small_config()).expect("ring");
    let (listener, addr) = listener();
    ring.add_listener(listener).expect("listener");
    let first = connect(addr);
    let start = Instant::now();
    let mut accepted = 0;
    while accepted == 0 {
        check_deadline(start, "first accept");
        accepted += accepted_in(&mut ring, 1);
    }

    ring.pause_accepts();
    ring.pause_accepts(); // idempotent: one pause, one cancel
    assert!(ring.accepts_paused());
    assert_eq!(ring.stats().accept_pauses, 1);
    // The kernel completes these handshakes into the backlog; the ring must not take them.
    let waiting: Vec<_> = (0..5).map(|_| connect(addr)).collect();
    assert_eq!(accepted_in(&mut ring, 20), 0, "accepted while paused");

    ring.resume_accepts();
    ring.resume_accepts();
    assert!(!ring.accepts_paused());
    let start = Instant::now();
    let mut resumed = 0;
    while resumed < waiting.len() {
        check_deadline(start, "accepts after resume");
        resumed += accepted_in(&mut ring, 1);
    }
    assert_eq!(resumed, waiting.len());
    assert_eq!(ring.stats().accept_errors, 0);
    drop(first);
}

#[test]
fn pause_and_resume_in_one_turn_keeps_one_accept_armed() {
    let mut ring = Ring::new(small_config()).expect("ring");
    let (listener, addr) = listener();
    ring.add_listener(listener).expect("listener");
    // The cancel of the first accept is still in flight when the ring resumes: exactly one
    // multishot accept is armed afterwards, so each connection is reported once.
    ring.pause_accepts();
    ring.resume_accepts();
    let clients: Vec<_> = (0..3).map(|_| connect(addr)).collect();
    let start = Instant::now();
    let mut accepted = 0;
    while accepted < clients.len() {
        check_deadline(start, "accepts");
        accepted += accepted_in(&mut ring, 1);
    }
    assert_eq!(
        accepted_in(&mut ring, 10),
        0,
        "a connection was reported twice"
    );
    assert_eq!(accepted, clients.len());
}
