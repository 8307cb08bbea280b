//! The driver: plays a fleet of mostly idle publishers at a fixed total rate and reads the sinks.
//!
//! Pacing: a timerfd ticks every `tick`; at each tick the driver sends the records due since the
//! start (rate × elapsed − sent), each with its own `send` on a randomly chosen publisher, stamped
//! just before the send. Latency is sink-read time minus that stamp, recorded for records stamped
//! inside the measured window.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

use crate::record::{self, Reassembly, RECORD_LEN};
use crate::sys::{self, CpuSample};

/// Sends made in one tick at most, as a multiple of the nominal per-tick count: a driver that fell
/// behind catches up gradually instead of starving its own sink reads (which would show up as
/// latency); if it cannot catch up, the rate is not met and `lagged_ticks` says so.
const CATCH_UP_FACTOR: u64 = 4;
/// Floor of the per-tick cap, for very low rates.
const SENDS_PER_TICK_MIN_CAP: u64 = 64;
/// Bytes read per `recv` from a sink.
const SINK_READ_BYTES: usize = 256 << 10;
/// After sending stops, how long to wait for the last records to reach the sinks.
const DRAIN_MAX: Duration = Duration::from_secs(2);
/// How long the first connect may keep failing while the receiver starts.
const CONNECT_RETRY_MAX: Duration = Duration::from_secs(10);
/// epoll key of the pacing timer; sinks use their index.
const TIMER_KEY: u64 = u64::MAX;
/// Latencies above this are clamped into the top bucket.
const LATENCY_MAX_NS: u64 = 60_000_000_000;

pub struct DriveConfig {
    pub pub_addr: SocketAddr,
    pub sink_addr: SocketAddr,
    pub publishers: usize,
    pub sinks: usize,
    pub rate: u64,
    pub warmup: Duration,
    pub measure: Duration,
    pub tail: Duration,
    pub tick: Duration,
    pub seed: u64,
}

/// xorshift64*: enough to spread sends over publishers, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn connect_with_retry(addr: SocketAddr) -> Result<TcpStream> {
    let started = Instant::now();
    loop {
        match TcpStream::connect(addr) {
            Ok(stream) => return Ok(stream),
            Err(error) if started.elapsed() < CONNECT_RETRY_MAX => {
                let _ = error;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(error) => return Err(error).with_context(|| format!("connect {addr}")),
        }
    }
}

fn epoll_add(epoll: &OwnedFd, fd: i32, key: u64) -> Result<()> {
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: key,
    };
    // SAFETY: both fds are open; `event` is a live local.
    if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
        return Err(io::Error::last_os_error()).context("epoll_ctl add");
    }
    Ok(())
}

fn pacing_timer(tick: Duration) -> Result<OwnedFd> {
    // SAFETY: plain syscall; ownership is taken right after.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("timerfd_create");
    }
    // SAFETY: fresh fd nobody else owns.
    let timer = unsafe { OwnedFd::from_raw_fd(fd) };
    let interval = libc::timespec {
        tv_sec: tick.as_secs() as libc::time_t,
        tv_nsec: tick.subsec_nanos() as libc::c_long,
    };
    let spec = libc::itimerspec {
        it_interval: interval,
        it_value: interval,
    };
    // SAFETY: `spec` is a live local; no old value is requested.
    if unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) } < 0 {
        return Err(io::Error::last_os_error()).context("timerfd_settime");
    }
    Ok(timer)
}

/// What the driver saw, printed as one `RESULT drive` line.
#[derive(Default)]
struct Tally {
    sent: u64,
    received: u64,
    sent_in_window: u64,
    received_in_window: u64,
    lagged_ticks: u64,
    /// The driver's own CPU at the window's start and end: on loopback the sender's CPU also
    /// runs the receiving socket's TCP input, so this is where that part of the floor shows.
    cpu_start: Option<CpuSample>,
    cpu_end: Option<CpuSample>,
}

pub fn run(config: DriveConfig) -> Result<()> {
    let mut sinks = Vec::with_capacity(config.sinks);
    for _ in 0..config.sinks {
        let stream = connect_with_retry(config.sink_addr)?;
        stream.set_nonblocking(true)?;
        sinks.push(stream);
    }
    // Publishers stay blocking: a 100-byte send to a mostly idle socket never waits, and a partial
    // send would break the framing.
    let mut publishers = Vec::with_capacity(config.publishers);
    for _ in 0..config.publishers {
        let stream = connect_with_retry(config.pub_addr)?;
        stream.set_nodelay(true)?;
        publishers.push(stream);
    }
    eprintln!(
        "floor drive: connected publishers={} sinks={} rate={}",
        publishers.len(),
        sinks.len(),
        config.rate
    );
    // SAFETY: plain syscall; ownership is taken right after.
    let epoll_fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll_fd < 0 {
        return Err(io::Error::last_os_error()).context("epoll_create1");
    }
    // SAFETY: fresh fd nobody else owns.
    let epoll = unsafe { OwnedFd::from_raw_fd(epoll_fd) };
    for (index, sink) in sinks.iter().enumerate() {
        epoll_add(&epoll, sink.as_raw_fd(), index as u64)?;
    }
    let timer = pacing_timer(config.tick)?;
    epoll_add(&epoll, timer.as_raw_fd(), TIMER_KEY)?;

    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_NS, 3).context("latency histogram")?;
    let mut reassembly: Vec<Reassembly> = sinks.iter().map(|_| Reassembly::default()).collect();
    let mut read_buffer = vec![0u8; SINK_READ_BYTES];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 16];
    let mut rng = Rng(config.seed | 1);
    let mut tally = Tally::default();
    let mut record_bytes = [0u8; RECORD_LEN];

    let start_ns = record::now_ns();
    let window_start_ns = start_ns + config.warmup.as_nanos() as u64;
    let window_end_ns = window_start_ns + config.measure.as_nanos() as u64;
    let send_end_ns = window_end_ns + config.tail.as_nanos() as u64;
    let drain_end_ns = send_end_ns + DRAIN_MAX.as_nanos() as u64;
    let nominal_per_tick = (config.rate as u128 * config.tick.as_nanos() / 1_000_000_000) as u64;
    let sends_per_tick_cap = (nominal_per_tick * CATCH_UP_FACTOR).max(SENDS_PER_TICK_MIN_CAP);
    // Set when a sink reaches end of stream: the receiver has exited, the run is over.
    let mut receiver_gone = false;

    loop {
        // SAFETY: `events` is valid for its length.
        let ready = unsafe {
            libc::epoll_wait(
                epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                -1,
            )
        };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error).context("epoll_wait");
        }
        for event in &events[..ready as usize] {
            if event.u64 == TIMER_KEY {
                let mut expirations = [0u8; 8];
                let _ = sys::recv_timer(timer.as_raw_fd(), &mut expirations);
                let now_ns = record::now_ns();
                if now_ns >= send_end_ns {
                    continue;
                }
                let due_total =
                    ((now_ns - start_ns) as u128 * config.rate as u128 / 1_000_000_000) as u64;
                if tally.cpu_start.is_none() && now_ns >= window_start_ns {
                    tally.cpu_start = Some(CpuSample::now());
                }
                if tally.cpu_end.is_none() && now_ns >= window_end_ns {
                    tally.cpu_end = Some(CpuSample::now());
                }
                let mut due = due_total.saturating_sub(tally.sent);
                if due > sends_per_tick_cap {
                    due = sends_per_tick_cap;
                    tally.lagged_ticks += 1;
                }
                for _ in 0..due {
                    let index = (rng.next() % publishers.len() as u64) as usize;
                    record::encode(&mut record_bytes, index as u32);
                    let stamp = record::sent_ns(&record_bytes);
                    publishers[index]
                        .write_all(&record_bytes)
                        .context("publisher send")?;
                    tally.sent += 1;
                    if (window_start_ns..window_end_ns).contains(&stamp) {
                        tally.sent_in_window += 1;
                    }
                }
            } else {
                let index = event.u64 as usize;
                let fd = sinks[index].as_raw_fd();
                loop {
                    match sys::recv(fd, &mut read_buffer) {
                        Ok(0) => {
                            receiver_gone = true;
                            break;
                        }
                        Ok(n) => {
                            let now_ns = record::now_ns();
                            reassembly[index].feed(&read_buffer[..n], |record| {
                                let stamp = record::sent_ns(record);
                                tally.received += 1;
                                if (window_start_ns..window_end_ns).contains(&stamp) {
                                    tally.received_in_window += 1;
                                    histogram
                                        .saturating_record(now_ns.saturating_sub(stamp).max(1));
                                }
                            });
                        }
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                        Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                        Err(error) => return Err(error).context("sink recv"),
                    }
                }
            }
        }
        let now_ns = record::now_ns();
        if receiver_gone {
            eprintln!("floor drive: a sink closed before the run ended");
            break;
        }
        if now_ns >= send_end_ns && (tally.received >= tally.sent || now_ns >= drain_end_ns) {
            break;
        }
    }
    print_result(&config, &tally, &histogram);
    Ok(())
}

fn print_result(config: &DriveConfig, tally: &Tally, histogram: &Histogram<u64>) {
    let us = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
    let driver_cpu_s = match (tally.cpu_start, tally.cpu_end) {
        (Some(start), Some(end)) => (end.user_s + end.sys_s) - (start.user_s + start.sys_s),
        _ => f64::NAN,
    };
    let driver_per_million = driver_cpu_s * 1e6 / tally.sent_in_window.max(1) as f64;
    println!(
        "RESULT drive rate={} publishers={} window_s={:.1} sent={} received={} lost={} \
         window_sent={} window_received={} p50_us={:.1} p90_us={:.1} p99_us={:.1} \
         p999_us={:.1} max_us={:.1} lagged_ticks={} window_rate={:.0} driver_cpu_s={:.3} \
         driver_cpu_s_per_million={:.3}",
        config.rate,
        config.publishers,
        config.measure.as_secs_f64(),
        tally.sent,
        tally.received,
        tally.sent.saturating_sub(tally.received),
        tally.sent_in_window,
        tally.received_in_window,
        us(0.5),
        us(0.9),
        us(0.99),
        us(0.999),
        histogram.max() as f64 / 1000.0,
        tally.lagged_ticks,
        tally.sent_in_window as f64 / config.measure.as_secs_f64(),
        driver_cpu_s,
        driver_per_million,
    );
}
