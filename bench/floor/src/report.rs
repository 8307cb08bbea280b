//! The receiver's measured window: a side thread samples CPU and the loop's counters after a
//! warm-up and again after the window, and prints one `RESULT recv` line.
//!
//! The thread sleeps between its two samples, so the CPU it adds is a few microseconds; the loop
//! publishes its counters with one relaxed store each per turn.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::sys::CpuSample;

/// Counters a receive loop publishes at the end of every turn (totals since start).
#[derive(Default)]
pub struct LoopStats {
    /// Records queued for a sink.
    pub forwarded: AtomicU64,
    /// Records refused by a full sink queue.
    pub dropped: AtomicU64,
    /// Loop turns: one blocking wait (epoll_wait, io_uring_enter or eventfd poll) each.
    pub turns: AtomicU64,
    /// System calls the loop made, counted by the loop itself.
    pub syscalls: AtomicU64,
    /// io_uring: multishot receives that ended for lack of a provided buffer and were re-armed.
    pub rearms_for_no_buffer: AtomicU64,
    /// uring-eventfd: waits on the eventfd that ended by timeout rather than by a signal.
    pub eventfd_timeouts: AtomicU64,
    /// uring-eventfd: of those timeouts, how many found completions waiting (a missed wake-up).
    pub missed_wakeups: AtomicU64,
    /// io_uring: receive completions reaped.
    pub recv_cqes: AtomicU64,
    /// io_uring: send completions reaped.
    pub send_cqes: AtomicU64,
}

/// The loop's local totals, stored into `LoopStats` once per turn.
#[derive(Default, Clone, Copy)]
pub struct LocalStats {
    pub turns: u64,
    pub syscalls: u64,
    pub rearms_for_no_buffer: u64,
    pub eventfd_timeouts: u64,
    pub missed_wakeups: u64,
    pub recv_cqes: u64,
    pub send_cqes: u64,
}

impl LoopStats {
    #[inline]
    pub fn publish(&self, local: &LocalStats, forwarded: u64, dropped: u64) {
        self.forwarded.store(forwarded, Ordering::Relaxed);
        self.dropped.store(dropped, Ordering::Relaxed);
        self.turns.store(local.turns, Ordering::Relaxed);
        self.syscalls.store(local.syscalls, Ordering::Relaxed);
        self.rearms_for_no_buffer
            .store(local.rearms_for_no_buffer, Ordering::Relaxed);
        self.eventfd_timeouts
            .store(local.eventfd_timeouts, Ordering::Relaxed);
        self.missed_wakeups
            .store(local.missed_wakeups, Ordering::Relaxed);
        self.recv_cqes.store(local.recv_cqes, Ordering::Relaxed);
        self.send_cqes.store(local.send_cqes, Ordering::Relaxed);
    }

    fn snapshot(&self) -> [u64; 9] {
        [
            self.forwarded.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed),
            self.turns.load(Ordering::Relaxed),
            self.syscalls.load(Ordering::Relaxed),
            self.rearms_for_no_buffer.load(Ordering::Relaxed),
            self.eventfd_timeouts.load(Ordering::Relaxed),
            self.missed_wakeups.load(Ordering::Relaxed),
            self.recv_cqes.load(Ordering::Relaxed),
            self.send_cqes.load(Ordering::Relaxed),
        ]
    }
}

/// When the reporter samples and when it gives up on the process.
pub struct Window {
    pub warmup: Duration,
    pub measure: Duration,
    /// After this long from the start the process exits even if publishers never disconnect, so
    /// a lost driver cannot leave a receiver behind.
    pub deadline: Duration,
}

/// Starts the reporter; `label` names the variant in the printed line.
pub fn spawn_reporter(label: String, stats: Arc<LoopStats>, window: Window) {
    std::thread::spawn(move || {
        std::thread::sleep(window.warmup);
        let cpu_start = CpuSample::now();
        let counts_start = stats.snapshot();
        std::thread::sleep(window.measure);
        let cpu_end = CpuSample::now();
        let counts_end = stats.snapshot();
        print_result(
            &label,
            window.measure,
            (cpu_start, cpu_end),
            (counts_start, counts_end),
        );
        let rest = window
            .deadline
            .saturating_sub(window.warmup + window.measure);
        std::thread::sleep(rest);
        eprintln!("floor recv: deadline reached, exiting");
        std::process::exit(3);
    });
}

fn print_result(
    label: &str,
    measure: Duration,
    (cpu_start, cpu_end): (CpuSample, CpuSample),
    (start, end): ([u64; 9], [u64; 9]),
) {
    let delta = |i: usize| end[i] - start[i];
    let user_s = cpu_end.user_s - cpu_start.user_s;
    let sys_s = cpu_end.sys_s - cpu_start.sys_s;
    let cpu_s = user_s + sys_s;
    let msgs = delta(0);
    let per_million = if msgs == 0 {
        f64::NAN
    } else {
        cpu_s * 1e6 / msgs as f64
    };
    let turns = delta(2).max(1);
    println!(
        "RESULT recv mode={label} window_s={:.1} msgs={msgs} msgs_per_s={:.0} cpu_s={cpu_s:.3} \
         user_s={user_s:.3} sys_s={sys_s:.3} cpu_s_per_million={per_million:.3} \
         cpu_share={:.3} turns={} msgs_per_turn={:.2} syscalls={} syscalls_per_msg={:.3} \
         dropped={} rearms_no_buffer={} eventfd_timeouts={} missed_wakeups={} vol_switches={} \
         invol_switches={} recv_cqes={} send_cqes={}",
        measure.as_secs_f64(),
        msgs as f64 / measure.as_secs_f64(),
        cpu_s / measure.as_secs_f64(),
        delta(2),
        msgs as f64 / turns as f64,
        delta(3),
        delta(3) as f64 / msgs.max(1) as f64,
        delta(1),
        delta(4),
        delta(5),
        delta(6),
        cpu_end.voluntary_switches - cpu_start.voluntary_switches,
        cpu_end.involuntary_switches - cpu_start.involuntary_switches,
        delta(7),
        delta(8),
    );
}
