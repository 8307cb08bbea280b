//! `probe-eventfd`: does a registered eventfd fire when a multishot receive completes on a ring
//! set up with DEFER_TASKRUN, while the owning thread is outside the ring?
//!
//! Three cases, on a DEFER_TASKRUN ring and, for reference, a COOP_TASKRUN ring:
//! 1. `first`: a record arrives on an armed RecvMulti; is the eventfd readable within 1 s, and
//!    are there CQEs before the thread enters the ring?
//! 2. `again`: the same after a full round (eventfd reset, task work run, CQEs reaped).
//! 3. `unrun`: a record arrives, the eventfd is reset but the ring is NOT entered, a second
//!    record arrives: is the eventfd signalled again? (An executor that resets the eventfd and
//!    goes back to sleep without entering the ring would otherwise hang.)

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

use anyhow::{Context, Result};
use io_uring::{cqueue, opcode, types::Fd, IoUring};

use crate::record::RECORD_LEN;
use crate::recv_uring::{
    build_ring, drain_eventfd, poll_eventfd, register_eventfd, BufRing, TaskRun, BUFFER_GROUP,
};

/// How long each case waits for the eventfd before calling it "not signalled".
const SIGNAL_WAIT_MS: i32 = 1000;
/// Shorter wait for case 3's second signal, which is expected to be absent on some kernels.
const SECOND_SIGNAL_WAIT_MS: i32 = 300;

struct Pair {
    client: TcpStream,
    server: TcpStream,
}

fn loopback_pair() -> Result<Pair> {
    let listener = TcpListener::bind("127.0.0.1:0").context("probe listen")?;
    let client = TcpStream::connect(listener.local_addr()?).context("probe connect")?;
    let (server, _) = listener.accept().context("probe accept")?;
    client.set_nodelay(true)?;
    Ok(Pair { client, server })
}

/// Runs task work and reaps every CQE, recycling buffers; returns how many CQEs there were and
/// the bytes they carried.
fn enter_and_reap(ring: &mut IoUring, buffers: &mut BufRing) -> Result<(usize, i64)> {
    // SAFETY: plain flags, no argument struct.
    unsafe { ring.submitter().enter::<libc::sigset_t>(0, 0, 1, None) }.context("enter")?;
    let mut reaped = 0;
    let mut bytes = 0i64;
    for cqe in ring.completion() {
        reaped += 1;
        bytes += i64::from(cqe.result().max(0));
        if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
            buffers.recycle(bid);
        }
    }
    buffers.publish();
    Ok((reaped, bytes))
}

fn probe_one(force_coop: bool) -> Result<()> {
    let pair = loopback_pair()?;
    let mut client = &pair.client;
    let mut buffers = BufRing::new(16, 4096)?;
    let (mut ring, task_run) = build_ring(force_coop)?;
    let label = match task_run {
        TaskRun::Defer => "defer_taskrun",
        TaskRun::Coop => "coop_taskrun",
    };
    buffers.register(&ring.submitter(), BUFFER_GROUP)?;
    let eventfd = register_eventfd(&ring.submitter())?;
    let efd = eventfd.as_raw_fd();
    let recv = opcode::RecvMulti::new(Fd(pair.server.as_raw_fd()), BUFFER_GROUP)
        .build()
        .user_data(1);
    // SAFETY: the provided buffers outlive the ring.
    unsafe { ring.submission().push(&recv) }.context("sq full")?;
    ring.submit().context("arm")?;
    enter_and_reap(&mut ring, &mut buffers)?;
    drain_eventfd(efd);
    let record = [7u8; RECORD_LEN];

    for case in ["first", "again"] {
        client.write_all(&record)?;
        let signalled = poll_eventfd(efd, SIGNAL_WAIT_MS)?;
        let cqes_before = ring.completion().len();
        let taskrun_flag = ring.submission().taskrun();
        let count = drain_eventfd(efd);
        let (cqes_after, _) = enter_and_reap(&mut ring, &mut buffers)?;
        // Does posting the CQEs inside the enter signal the eventfd once more?
        let signalled_by_enter = poll_eventfd(efd, 0)?;
        let count_after = drain_eventfd(efd);
        println!(
            "PROBE setup={label} case={case} eventfd_signalled={signalled} eventfd_count={count} \
             cqes_before_enter={cqes_before} sq_taskrun_flag={taskrun_flag} \
             cqes_after_enter={cqes_after} signalled_again_by_enter={signalled_by_enter} \
             count_after_enter={count_after}"
        );
    }

    client.write_all(&record)?;
    let first_signal = poll_eventfd(efd, SIGNAL_WAIT_MS)?;
    drain_eventfd(efd);
    client.write_all(&record)?;
    let second_signal = poll_eventfd(efd, SECOND_SIGNAL_WAIT_MS)?;
    let taskrun_flag = ring.submission().taskrun();
    drain_eventfd(efd);
    let (cqes_after, bytes_after) = enter_and_reap(&mut ring, &mut buffers)?;
    println!(
        "PROBE setup={label} case=unrun first_signalled={first_signal} \
         second_signalled_without_entering={second_signal} sq_taskrun_flag={taskrun_flag} \
         cqes_after_enter={cqes_after} bytes_after_enter={bytes_after}"
    );
    Ok(())
}

pub fn run() -> Result<()> {
    probe_one(false)?;
    probe_one(true)?;
    Ok(())
}
