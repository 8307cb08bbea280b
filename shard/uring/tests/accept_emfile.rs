//! Accept under fd exhaustion: EMFILE is counted, the accept retried after a delay, and
//! connections are accepted once fds are available again. Its own test binary, because it
//! lowers RLIMIT_NOFILE for the whole process.

mod common;

use std::time::Instant;

use common::*;
use ringmq_uring::Ring;

fn set_nofile(soft: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    let old = lim.rlim_cur;
    lim.rlim_cur = soft;
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    old
}

fn highest_open_fd() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .expect("proc fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

#[test]
fn emfile_is_counted_and_accept_recovers() {
    let mut ring = Ring::new(small_config()).expect("ring");
    let (listener, addr) = listener();
    // Client sockets first (they need fds too and complete in the backlog), then no fd left
    // for accept. The kernel reads RLIMIT_NOFILE when the accept SQE is prepared, so the
    // limit is lowered before the listener is armed.
    let clients: Vec<_> = (0..3).map(|_| connect(addr)).collect();
    let old = set_nofile(highest_open_fd() + 1);
    // Fill the gaps below the limit: fds are allocated lowest first.
    let mut fillers = Vec::new();
    loop {
        let fd = unsafe { libc::dup(0) };
        if fd < 0 {
            break;
        }
        fillers.push(fd);
    }
    ring.add_listener(listener).expect("listener");
    let start = Instant::now();
    while ring.stats().accept_errors == 0 {
        check_deadline(start, "emfile");
        let events = step(&mut ring);
        assert!(
            events.is_empty(),
            "nothing accepted without fds: {events:?}"
        );
    }
    for fd in fillers {
        unsafe { libc::close(fd) };
    }
    set_nofile(old);
    let mut accepted = 0;
    while accepted < clients.len() {
        check_deadline(start, "recovery");
        for ev in step(&mut ring) {
            if let Owned::Accepted { .. } = ev {
                accepted += 1;
            }
        }
    }
    let stats = ring.stats();
    assert!(stats.accept_errors >= 1);
    assert_eq!(stats.accepts, 3);
}
