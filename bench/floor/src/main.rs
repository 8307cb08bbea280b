//! `floor`: the kernel-floor measurement for ringmq (issue 8, step 1).
//!
//! What it owns: a receiver with no broker logic (5,000 mostly idle publisher connections in,
//! 100-byte records cut from each stream, forwarded round robin to 4 sink connections with one
//! write per sink per loop turn), in four variants (`epoll`, `epoll-short`, `uring`,
//! `uring-eventfd`); a paced driver that plays the fleet and measures publish-to-sink latency; and
//! `probe-eventfd`, which answers whether a registered eventfd is signalled when a multishot
//! receive completes on a DEFER_TASKRUN ring. What it must not do: anything MQTT beyond framing,
//! so its CPU figure is the floor a broker's receive path is judged against.
//!
//! Main types: `record::Reassembly` (stream to records), `sink::SinkQueues` (round robin and
//! per-turn coalescing), `report::LoopStats` (counters the measured window reads),
//! `recv_uring::BufRing` (the provided buffer ring), `drive::DriveConfig`.

mod drive;
mod net;
mod probe;
mod record;
mod recv_epoll;
mod recv_uring;
mod report;
mod sink;
mod sys;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "floor",
    about = "kernel-floor CPU of a fleet-telemetry receiver"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Level-triggered epoll, each ready socket read until EAGAIN.
    Epoll,
    /// Level-triggered epoll, a read shorter than the buffer ends that socket's turn.
    EpollShort,
    /// io_uring multishot receive + provided buffer ring, one io_uring_enter per turn.
    Uring,
    /// As `uring`, but the thread sleeps on an eventfd registered with the ring.
    UringEventfd,
}

#[derive(Subcommand)]
enum Command {
    /// Accept the publishers and sinks, then forward records until every publisher has gone.
    Recv {
        #[arg(long, value_enum)]
        mode: Mode,
        /// Use COOP_TASKRUN instead of DEFER_TASKRUN (uring modes), for comparison.
        #[arg(long)]
        coop: bool,
        #[arg(long, default_value = "127.0.0.1:47181")]
        pub_addr: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:47182")]
        sink_addr: SocketAddr,
        #[arg(long, default_value_t = 5000)]
        publishers: usize,
        #[arg(long, default_value_t = 4)]
        sinks: usize,
        #[arg(long, default_value_t = 3.0)]
        warmup_s: f64,
        #[arg(long, default_value_t = 15.0)]
        measure_s: f64,
        /// Exit after this long whatever happens, so no receiver outlives its run.
        #[arg(long, default_value_t = 120.0)]
        deadline_s: f64,
        /// Provided buffers in the ring (power of two, uring modes).
        #[arg(long, default_value_t = 2048)]
        bufs: u16,
        /// Bytes per provided buffer (uring modes).
        #[arg(long, default_value_t = 1024)]
        buf_size: u32,
    },
    /// Open the publishers and sinks, send paced records, read the sinks, report latency.
    Drive {
        /// Messages per second over all publishers.
        #[arg(long)]
        rate: u64,
        #[arg(long, default_value = "127.0.0.1:47181")]
        pub_addr: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:47182")]
        sink_addr: SocketAddr,
        #[arg(long, default_value_t = 5000)]
        publishers: usize,
        #[arg(long, default_value_t = 4)]
        sinks: usize,
        #[arg(long, default_value_t = 3.0)]
        warmup_s: f64,
        #[arg(long, default_value_t = 15.0)]
        measure_s: f64,
        /// Keep sending this long after the window so the receiver's window is fully loaded.
        #[arg(long, default_value_t = 1.0)]
        tail_s: f64,
        /// Pacing tick: the sends due are made in one burst per tick.
        #[arg(long, default_value_t = 1000)]
        tick_us: u64,
        #[arg(long, default_value_t = 0x5eed)]
        seed: u64,
    },
    /// Answer: with DEFER_TASKRUN, is a registered eventfd signalled when a recv completes?
    ProbeEventfd,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Recv {
            mode,
            coop,
            pub_addr,
            sink_addr,
            publishers,
            sinks,
            warmup_s,
            measure_s,
            deadline_s,
            bufs,
            buf_size,
        } => {
            let accepted = net::accept_all(pub_addr, sink_addr, publishers, sinks)?;
            let stats = Arc::new(report::LoopStats::default());
            let mut label = match mode {
                Mode::Epoll => "epoll",
                Mode::EpollShort => "epoll-short",
                Mode::Uring => "uring",
                Mode::UringEventfd => "uring-eventfd",
            }
            .to_string();
            if coop {
                label.push_str("-coop");
            }
            report::spawn_reporter(
                label,
                stats.clone(),
                report::Window {
                    warmup: Duration::from_secs_f64(warmup_s),
                    measure: Duration::from_secs_f64(measure_s),
                    deadline: Duration::from_secs_f64(deadline_s),
                },
            );
            match mode {
                Mode::Epoll => recv_epoll::run(accepted, false, &stats),
                Mode::EpollShort => recv_epoll::run(accepted, true, &stats),
                Mode::Uring | Mode::UringEventfd => recv_uring::run(
                    accepted,
                    recv_uring::UringConfig {
                        eventfd: mode == Mode::UringEventfd,
                        force_coop: coop,
                        buf_count: bufs,
                        buf_size,
                    },
                    &stats,
                ),
            }
        }
        Command::Drive {
            rate,
            pub_addr,
            sink_addr,
            publishers,
            sinks,
            warmup_s,
            measure_s,
            tail_s,
            tick_us,
            seed,
        } => drive::run(drive::DriveConfig {
            pub_addr,
            sink_addr,
            publishers,
            sinks,
            rate,
            warmup: Duration::from_secs_f64(warmup_s),
            measure: Duration::from_secs_f64(measure_s),
            tail: Duration::from_secs_f64(tail_s),
            tick: Duration::from_micros(tick_us.max(50)),
            seed,
        }),
        Command::ProbeEventfd => probe::run(),
    }
}
