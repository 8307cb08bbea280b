//! Self-observation: CPU time per executor thread (from /proc/self/task/TID/stat) and the
//! open-loop send backlog, so a run where the loadgen itself was the bottleneck says so loudly.

use std::time::Duration;

/// A thread above this share of one core for [`SATURATION_SECONDS`] is considered saturated.
pub const SATURATION_CPU_PERCENT: f64 = 90.0;
pub const SATURATION_SECONDS: u64 = 2;
/// Backlog rising this many seconds in a row (and above the floor) triggers the warning.
pub const BACKLOG_GROWING_SECONDS: u64 = 3;
pub const BACKLOG_FLOOR: u64 = 100;

/// utime + stime of one thread of this process, in clock ticks.
pub fn thread_cpu_ticks(tid: u64) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    parse_stat_cpu_ticks(&text)
}

/// utime + stime of any process, in clock ticks (used by the bench script's logic too).
pub fn process_cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu_ticks(&text)
}

/// Fields 14 and 15 of a stat line; the command name may contain spaces, so count from
/// the closing parenthesis.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // after ")" come state(3) .. so utime(14) is the 12th field from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// A thread that spent this share of wall time runnable but not running (another process on
/// its core) is starved: its figures understate what the loadgen could drive.
pub const STARVED_WAIT_PERCENT: f64 = 20.0;

/// Nanoseconds a thread spent waiting on a run queue (field 2 of /proc/.../schedstat).
pub fn thread_runqueue_wait_ns(tid: u64) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// One sample of every executor thread.
#[derive(Debug, Clone, Default)]
pub struct CpuSample {
    /// Percent of one core used, per thread.
    pub busy_percent: Vec<f64>,
    /// Percent of wall time runnable but waiting for a CPU, per thread.
    pub wait_percent: Vec<f64>,
    /// A thread saturated for long enough to warn.
    pub saturated: Option<usize>,
    /// A thread starved by other processes for long enough to warn.
    pub starved: Option<usize>,
}

/// Tracks per-thread CPU between samples.
pub struct CpuSampler {
    tids: Vec<u64>,
    last: Vec<Option<u64>>,
    last_wait: Vec<Option<u64>>,
    starved_streak: Vec<u64>,
    ticks_per_second: f64,
    hot_streak: Vec<u64>,
}

impl CpuSampler {
    pub fn new(tids: Vec<u64>) -> Self {
        let last = tids.iter().map(|&tid| thread_cpu_ticks(tid)).collect();
        let count = tids.len();
        let last_wait = tids
            .iter()
            .map(|&tid| thread_runqueue_wait_ns(tid))
            .collect();
        Self {
            last_wait,
            starved_streak: vec![0; count],
            tids,
            last,
            ticks_per_second: clock_ticks_per_second(),
            hot_streak: vec![0; count],
        }
    }

    /// Percent of one core per thread since the previous sample, and whether any thread has
    /// been saturated for long enough to warn.
    pub fn sample(&mut self, wall: Duration) -> CpuSample {
        let mut percents = Vec::with_capacity(self.tids.len());
        let mut waits = Vec::with_capacity(self.tids.len());
        let mut saturated = None;
        let mut starved = None;
        for (slot, &tid) in self.tids.iter().enumerate() {
            let wait_now = thread_runqueue_wait_ns(tid);
            let wait = match (self.last_wait[slot], wait_now) {
                (Some(before), Some(after)) if wall > Duration::ZERO => {
                    after.saturating_sub(before) as f64 / wall.as_nanos() as f64 * 100.0
                }
                _ => 0.0,
            };
            self.last_wait[slot] = wait_now;
            if wait >= STARVED_WAIT_PERCENT {
                self.starved_streak[slot] += 1;
                if self.starved_streak[slot] >= SATURATION_SECONDS {
                    starved = Some(slot);
                }
            } else {
                self.starved_streak[slot] = 0;
            }
            waits.push(wait);
            let now = thread_cpu_ticks(tid);
            let percent = match (self.last[slot], now) {
                (Some(before), Some(after)) if wall > Duration::ZERO => {
                    (after.saturating_sub(before)) as f64
                        / self.ticks_per_second
                        / wall.as_secs_f64()
                        * 100.0
                }
                _ => 0.0,
            };
            self.last[slot] = now;
            if percent >= SATURATION_CPU_PERCENT {
                self.hot_streak[slot] += 1;
                if self.hot_streak[slot] >= SATURATION_SECONDS {
                    saturated = Some(slot);
                }
            } else {
                self.hot_streak[slot] = 0;
            }
            percents.push(percent);
        }
        CpuSample {
            busy_percent: percents,
            wait_percent: waits,
            saturated,
            starved,
        }
    }
}

/// Watches scheduled-but-unsent messages.
#[derive(Debug, Default)]
pub struct BacklogWatch {
    previous: u64,
    rising_streak: u64,
    pub max: u64,
    pub growing_seconds: u64,
}

impl BacklogWatch {
    /// Returns true when the backlog has grown long enough to warn.
    pub fn sample(&mut self, backlog: u64, rate_per_s: f64) -> bool {
        self.max = self.max.max(backlog);
        let floor = BACKLOG_FLOOR.max((rate_per_s * 0.05) as u64);
        if backlog > self.previous && backlog > floor {
            self.rising_streak += 1;
        } else {
            self.rising_streak = 0;
        }
        self.previous = backlog;
        if self.rising_streak >= BACKLOG_GROWING_SECONDS {
            self.growing_seconds += 1;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_name() {
        let stat =
            "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 100 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn reads_own_cpu() {
        assert!(process_cpu_ticks(std::process::id()).is_some());
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u64;
        assert!(thread_cpu_ticks(tid).is_some());
        assert!(thread_runqueue_wait_ns(tid).is_some());
    }

    #[test]
    fn backlog_warns_only_when_rising() {
        let mut watch = BacklogWatch::default();
        // Below the floor nothing counts.
        assert!(!watch.sample(50, 1000.0));
        assert!(!watch.sample(90, 1000.0));
        assert!(!watch.sample(500, 1000.0));
        assert!(!watch.sample(600, 1000.0));
        assert!(watch.sample(700, 1000.0));
        // A flat backlog is not growing.
        assert!(!watch.sample(700, 1000.0));
        assert!(!watch.sample(800, 1000.0));
        assert_eq!(watch.max, 800);
        assert_eq!(watch.growing_seconds, 1);
    }
}
