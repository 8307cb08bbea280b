//! The run: one glommio executor per core, clients spread round robin across them, and the
//! calling thread acting as the monitor (phases, progress line, self-saturation warnings,
//! final summary).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use glommio::sync::Semaphore;
use glommio::{LocalExecutorBuilder, Placement};

use crate::client::{self, ClientSpec, Notify};
use crate::monitor::{BacklogWatch, CpuSampler};
use crate::plan::{self, Matcher, Role, Scenario, Schedule};
use crate::stats::{
    self, ConnectionSummary, CountPercentiles, LiveCounters, LoadgenHealth, MessageSummary,
    Percentiles, Summary, ThreadReport,
};

/// glommio's io_uring registered memory per executor; memlock is only 8 MiB.
pub const IO_MEMORY_BYTES: usize = 1 << 20;
/// How often executors look at the phase the monitor set.
const PHASE_POLL: Duration = Duration::from_millis(5);
/// Monitor tick (phase decisions); the progress line is printed every second.
const MONITOR_TICK: Duration = Duration::from_millis(50);
/// Draining ends early once nothing arrived for this long.
const DRAIN_IDLE: Duration = Duration::from_millis(700);
/// Publishing starts this long after the monitor decides, so every executor sees it first.
const PUBLISH_START_DELAY: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    Connecting = 0,
    Publishing = 1,
    Draining = 2,
    Stopping = 3,
}

impl Phase {
    fn from_u8(value: u8) -> Phase {
        match value {
            0 => Phase::Connecting,
            1 => Phase::Publishing,
            2 => Phase::Draining,
            _ => Phase::Stopping,
        }
    }
}

/// Read-only run description plus the few atomics the monitor writes.
pub struct Shared {
    pub scenario: Scenario,
    pub matcher: Matcher,
    /// Every broker of the run, resolved once; clients pick among them.
    pub targets: Vec<SocketAddr>,
    /// The transport layers every connection gets (TLS configuration, WebSocket path).
    pub edge: crate::transport::Edge,
    pub run_start: Instant,
    pub live: Vec<LiveCounters>,
    pub phase: AtomicU8,
    /// ns after `run_start` when publishing starts.
    pub publish_start_ns: AtomicU64,
    pub shared_trackers: HashMap<String, Arc<Mutex<crate::seq::SeqTracker>>>,
    /// Fan-out run: track per message when its slowest subscriber got it.
    pub track_spread: bool,
    pub threads: usize,
}

/// Per-executor context.
pub struct ThreadCtx {
    pub shared: Arc<Shared>,
    pub thread: usize,
    pub phase: Cell<Phase>,
    pub report: RefCell<ThreadReport>,
    pub connect_slots: Rc<Semaphore>,
    pub zeros: Bytes,
    waiters: RefCell<Vec<Weak<Notify>>>,
}

impl ThreadCtx {
    pub fn live(&self) -> &LiveCounters {
        &self.shared.live[self.thread]
    }

    pub fn register(&self, notify: &Rc<Notify>) {
        self.waiters.borrow_mut().push(Rc::downgrade(notify));
    }

    pub fn publish_start(&self) -> Instant {
        self.shared.run_start
            + Duration::from_nanos(self.shared.publish_start_ns.load(Ordering::Acquire))
    }

    fn wake_all(&self) {
        self.waiters
            .borrow_mut()
            .retain(|weak| match weak.upgrade() {
                Some(notify) => {
                    notify.notify();
                    true
                }
                None => false,
            });
    }
}

pub struct RunOptions {
    pub scenario: Scenario,
    pub threads: Option<usize>,
    pub mode: String,
    pub progress: bool,
    /// Broker process to sample (CPU time and RSS per phase), when on the same host.
    pub broker_pid: Option<u32>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Deterministic per-client jitter in [0, max).
fn jitter(index: u64, max_ms: u64) -> Duration {
    if max_ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_micros(crate::failover::mix64(index) % (max_ms * 1000))
}

async fn thread_main(shared: Arc<Shared>, thread: usize) -> ThreadReport {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u64;
    shared.live[thread].tid.store(tid, Ordering::Relaxed);
    let scenario = &shared.scenario;
    let max_payload = scenario
        .groups
        .iter()
        .filter(|g| g.role == Role::Pub)
        .map(|g| g.payload_size)
        .max()
        .unwrap_or(0);
    let permits = (scenario.connection.conn_concurrency / shared.threads).max(1);
    let ctx = Rc::new(ThreadCtx {
        shared: shared.clone(),
        thread,
        phase: Cell::new(Phase::Connecting),
        report: RefCell::new(ThreadReport::new(scenario.groups.len())),
        connect_slots: Rc::new(Semaphore::new(permits as u64)),
        zeros: client::zero_payload(max_payload),
        waiters: RefCell::new(Vec::new()),
    });

    // Phase watcher: turns the monitor's atomic into local wakeups.
    let watcher_ctx = ctx.clone();
    let watcher = glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(PHASE_POLL).await;
            let phase = Phase::from_u8(watcher_ctx.shared.phase.load(Ordering::Acquire));
            if phase != watcher_ctx.phase.get() {
                watcher_ctx.phase.set(phase);
                watcher_ctx.wake_all();
            }
            if phase == Phase::Stopping {
                break;
            }
        }
    });

    let settings = &scenario.connection;
    let mut tasks = Vec::new();
    let mut order: u64 = 0;
    for (group_index, group) in scenario.groups.iter().enumerate() {
        for member in 0..group.count {
            let position = order;
            order += 1;
            if (position as usize) % shared.threads != thread {
                continue;
            }
            let global_index = settings.index_start + position;
            let connect_at = settings
                .conn_rate
                .map(|rate| Duration::from_secs_f64(position as f64 / rate))
                .unwrap_or_default()
                + jitter(global_index, settings.start_jitter_ms);
            let source = if settings.ifaddr.is_empty() {
                None
            } else {
                Some(settings.ifaddr[(position as usize) % settings.ifaddr.len()])
            };
            let spec = ClientSpec {
                group: group_index,
                member,
                global_index,
                client_id: plan::client_id(&settings.client_id_prefix, global_index),
                source,
                position,
            };
            tasks.push(glommio::spawn_local(client::run_client(
                ctx.clone(),
                spec,
                connect_at,
            )));
        }
    }
    for task in tasks {
        task.await;
    }
    watcher.await;
    ctx.report.replace(ThreadReport::new(0))
}

/// Messages due by now across all publishing groups (open-loop schedule), for the backlog.
struct DueCounter {
    schedules: Vec<Schedule>,
}

impl DueCounter {
    fn new(scenario: &Scenario) -> Self {
        let mut schedules = Vec::new();
        for group in scenario.groups.iter().filter(|g| g.role == Role::Pub) {
            if group.member_interval().is_none() {
                continue;
            }
            for member in 0..group.count {
                schedules.push(group.schedule(member));
            }
        }
        Self { schedules }
    }

    fn due_by(&self, elapsed: Duration) -> u64 {
        self.schedules.iter().map(|s| s.due_by(elapsed)).sum()
    }

    fn rate_per_s(&self) -> f64 {
        self.schedules
            .iter()
            .filter_map(|s| s.interval)
            .map(|i| 1.0 / i.as_secs_f64())
            .sum()
    }
}

pub fn run(options: RunOptions) -> anyhow::Result<Summary> {
    let scenario = options.scenario;
    scenario.validate()?;
    let nofile = crate::net::raise_nofile_limit();
    let total = scenario.total_clients();
    if total + 64 > nofile {
        eprintln!(
            "WARNING: {total} clients but the open-files limit is {nofile}; expect too_many_open_files failures"
        );
    }
    let cpus = crate::net::allowed_cpus();
    let threads = options.threads.unwrap_or(cpus.len()).max(1);
    let mut targets = Vec::new();
    let endpoints = scenario.connection.broker_endpoints()?;
    let hosts: Vec<(String, u16)> = endpoints
        .iter()
        .map(|endpoint| (endpoint.host.clone(), endpoint.port))
        .collect();
    let edge = crate::transport::Edge::new(&scenario.connection.edge_settings(), &hosts)?;
    for endpoint in endpoints {
        let target = (endpoint.host.as_str(), endpoint.port)
            .to_socket_addrs()
            .with_context(|| format!("resolving broker address {}", endpoint.host))?
            .next()
            .with_context(|| format!("broker address {} resolves to nothing", endpoint.host))?;
        targets.push(target);
    }

    let matcher = Matcher::new(&scenario);
    let mut shared_trackers = HashMap::new();
    let mut track_spread = false;
    let mut global_index = scenario.connection.index_start;
    for group in &scenario.groups {
        if let (Role::Sub, Some(template)) = (group.role, group.filter.as_deref()) {
            for member in 0..group.count {
                let index = global_index + member;
                let id = plan::client_id(&scenario.connection.client_id_prefix, index);
                let filter = plan::expand_template(template, index, &id, member);
                if plan::split_shared(&filter).1 {
                    shared_trackers
                        .entry(filter)
                        .or_insert_with(|| Arc::new(Mutex::new(crate::seq::SeqTracker::new())));
                }
                if !template.contains('%') {
                    break;
                }
            }
        }
        global_index += group.count;
    }
    // Any publish topic reaching more than one subscriber makes this a fan-out run.
    let mut global_index = scenario.connection.index_start;
    for group in &scenario.groups {
        if group.role == Role::Pub {
            if let Some(template) = group.topic.as_deref() {
                let id = plan::client_id(&scenario.connection.client_id_prefix, global_index);
                let topic = plan::expand_template(template, global_index, &id, 0);
                let deliveries: u64 = matcher.fanout(&topic).iter().map(|f| f.deliveries).sum();
                track_spread |= deliveries > 1;
            }
        }
        global_index += group.count;
    }
    let planned_publishers: u64 = scenario
        .groups
        .iter()
        .filter(|g| g.role == Role::Pub)
        .map(|g| g.count)
        .sum();
    let due_counter = DueCounter::new(&scenario);
    let planned_rate = due_counter.rate_per_s();

    let shared = Arc::new(Shared {
        scenario,
        matcher,
        targets,
        edge,
        run_start: Instant::now(),
        live: (0..threads).map(|_| LiveCounters::default()).collect(),
        phase: AtomicU8::new(Phase::Connecting as u8),
        publish_start_ns: AtomicU64::new(0),
        shared_trackers,
        track_spread,
        threads,
    });
    install_signal_handlers();

    let mut handles = Vec::new();
    for thread in 0..threads {
        let shared = shared.clone();
        let placement = Placement::Fixed(cpus[thread % cpus.len()]);
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("loadgen-{thread}"))
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || thread_main(shared, thread))
            .map_err(|err| anyhow::anyhow!("starting executor {thread}: {err}"))?;
        handles.push(handle);
    }

    // ---- monitor ----
    let settings = &shared.scenario.run;
    let duration = Duration::from_secs_f64(settings.duration_s.max(0.0));
    let ready_timeout = Duration::from_secs_f64(settings.ready_timeout_s.max(0.0));
    let drain_max = Duration::from_millis(settings.drain_ms);
    let mut health = LoadgenHealth {
        threads,
        ..LoadgenHealth::default()
    };
    let mut cpu: Option<CpuSampler> = None;
    let mut backlog_watch = BacklogWatch::default();
    let mut delivery_watch = BacklogWatch::default();
    let mut warned_delivery = false;
    let mut phase = Phase::Connecting;
    let mut publishing_since: Option<Instant> = None;
    let mut publishing_ended: Option<Instant> = None;
    let mut draining_since: Option<Instant> = None;
    let mut last_progress = Instant::now();
    let mut last_totals = stats::totals(&shared.live);
    let mut last_received_change = Instant::now();
    let mut previous_received = 0;
    let mut warned_cpu = false;
    let mut warned_backlog = false;
    let mut warned_starved = false;
    let set_phase = |next: Phase, phase: &mut Phase| {
        *phase = next;
        shared.phase.store(next as u8, Ordering::Release);
    };
    let mut broker = options.broker_pid.map(BrokerSampler::new);
    // Our own CPU from publishing start to the end of the drain (ticks of the whole process).
    let own_pid = std::process::id();
    let mut own_ticks_ready: Option<u64> = None;
    let mut own_ticks_drained: Option<u64> = None;
    loop {
        std::thread::sleep(MONITOR_TICK);
        let now = Instant::now();
        let totals = stats::totals(&shared.live);
        if INTERRUPTED.load(Ordering::Relaxed) && phase < Phase::Draining {
            eprintln!("interrupted: draining and stopping");
            publishing_ended.get_or_insert(now);
            set_phase(Phase::Draining, &mut phase);
            draining_since = Some(now);
        }
        if totals.received != previous_received {
            previous_received = totals.received;
            last_received_change = now;
        }
        match phase {
            Phase::Connecting => {
                let settled = totals.ready + totals.connect_failed >= total;
                if settled || now - shared.run_start >= ready_timeout {
                    if !settled {
                        health.warnings.push(format!(
                            "only {} of {} clients ready after {:?}; started anyway",
                            totals.ready, total, ready_timeout
                        ));
                    }
                    let start = now + PUBLISH_START_DELAY - shared.run_start;
                    shared
                        .publish_start_ns
                        .store(start.as_nanos() as u64, Ordering::Release);
                    publishing_since = Some(now + PUBLISH_START_DELAY);
                    set_phase(Phase::Publishing, &mut phase);
                    if let Some(broker) = broker.as_mut() {
                        broker.mark_ready();
                    }
                    own_ticks_ready = crate::monitor::process_cpu_ticks(own_pid);
                }
            }
            Phase::Publishing => {
                let since = publishing_since.unwrap_or(now);
                let all_done =
                    planned_publishers > 0 && totals.publishers_done >= planned_publishers;
                let timed_out = !duration.is_zero() && now >= since + duration;
                if all_done || timed_out {
                    publishing_ended = Some(now);
                    draining_since = Some(now);
                    set_phase(Phase::Draining, &mut phase);
                }
            }
            Phase::Draining => {
                let since = draining_since.unwrap_or(now);
                let caught_up = totals.received >= totals.expected
                    && totals.acked + totals.abandoned >= totals.sent_needing_ack;
                let idle = now - last_received_change >= DRAIN_IDLE && now - since >= DRAIN_IDLE;
                if (caught_up && totals.publishers_done >= planned_publishers)
                    || idle
                    || now - since >= drain_max
                {
                    set_phase(Phase::Stopping, &mut phase);
                    if let Some(broker) = broker.as_mut() {
                        broker.mark_drained();
                    }
                    own_ticks_drained = crate::monitor::process_cpu_ticks(own_pid);
                }
            }
            Phase::Stopping => {
                if totals.clients_done >= total {
                    break;
                }
            }
        }
        if now - last_progress >= Duration::from_secs(1) {
            let wall = now - last_progress;
            last_progress = now;
            if let Some(broker) = broker.as_mut() {
                broker.sample_rss();
            }
            if cpu.is_none() {
                let tids: Vec<u64> = shared
                    .live
                    .iter()
                    .map(|l| l.tid.load(Ordering::Relaxed))
                    .collect();
                if tids.iter().all(|&tid| tid != 0) {
                    cpu = Some(CpuSampler::new(tids));
                }
            }
            let sample = cpu
                .as_mut()
                .map(|sampler| sampler.sample(wall))
                .unwrap_or_default();
            let percents = &sample.busy_percent;
            for &percent in percents {
                health.cpu_max_thread_percent = health.cpu_max_thread_percent.max(percent);
            }
            for &wait in &sample.wait_percent {
                health.cpu_wait_max_percent = health.cpu_wait_max_percent.max(wait);
            }
            if let Some(thread) = sample.starved {
                health.cpu_starved_seconds += 1;
                if !warned_starved {
                    warned_starved = true;
                    let message = format!(
                        "loadgen thread {thread} waits for CPU (>= {}% of the time runnable but not running): other processes share its core, figures understate the broker",
                        crate::monitor::STARVED_WAIT_PERCENT
                    );
                    eprintln!("\n!!!!! WARNING: {message} !!!!!");
                    health.warnings.push(message);
                }
            }
            // Saturation while connecting only matters for connection figures, so it is kept
            // apart from saturation while messages flow.
            let measuring_connections = phase == Phase::Connecting || planned_publishers == 0;
            if let Some(thread) = sample.saturated {
                if phase == Phase::Connecting {
                    health.cpu_saturated_seconds_connecting += 1;
                } else {
                    health.cpu_saturated_seconds += 1;
                }
                if !warned_cpu && (measuring_connections || phase != Phase::Connecting) {
                    warned_cpu = true;
                    let message = format!(
                        "loadgen thread {thread} is saturated (>= {}% CPU) while {}: the loadgen may be the bottleneck, not the broker",
                        crate::monitor::SATURATION_CPU_PERCENT,
                        if phase == Phase::Connecting { "connecting" } else { "messages flow" }
                    );
                    eprintln!("\n!!!!! WARNING: {message} !!!!!");
                    health.warnings.push(message);
                }
            }
            let backlog = match (phase, publishing_since) {
                (Phase::Publishing, Some(since)) if now > since => {
                    due_counter.due_by(now - since).saturating_sub(totals.sent)
                }
                _ => 0,
            };
            if phase == Phase::Publishing
                && backlog_watch.sample(backlog, planned_rate)
                && !warned_backlog
            {
                warned_backlog = true;
                let message = format!(
                    "send backlog growing ({backlog} scheduled messages not sent): the loadgen, the inflight window or the broker cannot keep up with the requested rate"
                );
                eprintln!("\n!!!!! WARNING: {message} !!!!!");
                health.warnings.push(message);
            }
            // Sent but not yet delivered: growing means the broker (or the subscribers) fall
            // behind even though the loadgen sends on schedule.
            let delivery_backlog = totals.expected.saturating_sub(totals.received);
            // Fan-out multiplies deliveries, so judge the backlog against the delivery rate.
            let delivery_rate =
                totals.expected.saturating_sub(last_totals.expected) as f64 / wall.as_secs_f64();
            if phase == Phase::Publishing
                && delivery_watch.sample(delivery_backlog, delivery_rate)
                && !warned_delivery
            {
                warned_delivery = true;
                let message = format!(
                    "delivery backlog growing ({delivery_backlog} sent messages not yet delivered): the broker or the subscribers cannot keep up"
                );
                eprintln!("\n!!!!! WARNING: {message} !!!!!");
                health.warnings.push(message);
            }
            if options.progress {
                let secs = (now - shared.run_start).as_secs();
                let sent_rate =
                    totals.sent.saturating_sub(last_totals.sent) as f64 / wall.as_secs_f64();
                let recv_rate = totals.received.saturating_sub(last_totals.received) as f64
                    / wall.as_secs_f64();
                let cpu_text: Vec<String> = percents
                    .iter()
                    .zip(&sample.wait_percent)
                    .map(|(busy, wait)| format!("{busy:.0}% (wait {wait:.0}%)"))
                    .collect();
                eprintln!(
                    "[{secs:>4}s] {phase:?} conn {}/{} fail {} drop {} reconn {} | sent {} ({:.0}/s) recv {} ({:.0}/s) acked {} backlog {} | cpu {}",
                    totals.connected,
                    total,
                    totals.connect_failed,
                    totals.dropped,
                    totals.reconnects,
                    totals.sent,
                    sent_rate,
                    totals.received,
                    recv_rate,
                    totals.acked,
                    backlog,
                    cpu_text.join(" ")
                );
            }
            last_totals = totals;
        }
    }

    let mut merged = ThreadReport::new(shared.scenario.groups.len());
    for handle in handles {
        let report = handle
            .join()
            .map_err(|err| anyhow::anyhow!("executor failed: {err}"))?;
        merged.merge(report);
    }
    health.backlog_max = backlog_watch.max;
    health.backlog_growing_seconds = backlog_watch.growing_seconds;
    health.delivery_backlog_max = delivery_watch.max;
    health.delivery_backlog_growing_seconds = delivery_watch.growing_seconds;
    if let (Some(from), Some(to)) = (own_ticks_ready, own_ticks_drained) {
        let seconds = to.saturating_sub(from) as f64 / crate::monitor::clock_ticks_per_second();
        health.cpu_s_publishing = Some(seconds);
        let messages = merged.sent + stats::totals(&shared.live).received;
        if messages > 0 {
            health.cpu_us_per_message = Some(seconds * 1e6 / messages as f64);
        }
    }
    health.saturated = health.cpu_saturated_seconds > 0
        || (planned_publishers == 0 && health.cpu_saturated_seconds_connecting > 0)
        || health.backlog_growing_seconds > 0
        || health.cpu_starved_seconds > 0;

    let totals = stats::totals(&shared.live);
    let mut seq = merged.seq;
    for tracker in shared.shared_trackers.values() {
        if let Ok(tracker) = tracker.lock() {
            seq.add(&tracker.counts());
        }
    }
    let expected = expected_deliveries(&shared.scenario, &merged);
    let window = match (publishing_since, publishing_ended) {
        (Some(start), Some(end)) if end > start => (end - start).as_secs_f64(),
        _ => 0.0,
    };
    let per_s = |count: u64| {
        if window > 0.0 {
            count as f64 / window
        } else {
            0.0
        }
    };
    let messages = MessageSummary {
        sent: merged.sent,
        acked: merged.acked,
        received: totals.received,
        expected,
        unique: seq.unique,
        lost: expected.saturating_sub(seq.unique),
        duplicated: seq.duplicates,
        reordered: seq.reordered,
        out_of_window: seq.out_of_window,
        unmeasured: merged.unmeasured,
        publish_window_s: window,
        send_rate_per_s: per_s(merged.sent),
        receive_rate_per_s: per_s(totals.received),
        latency_ms: Percentiles::from_us(&merged.e2e_latency_us),
        last_delivery_ms: if shared.track_spread {
            stats::spread_percentiles(&merged)
        } else {
            None
        },
        spread_untracked: merged.spread_untracked,
        send_lag_ms: Percentiles::from_us(&merged.send_lag_us),
        publishes_per_read: CountPercentiles::from_histogram(&merged.publishes_per_read),
        inflight_abandoned: merged.inflight_abandoned,
    };
    let failed: u64 = merged.connect_failures.values().sum();
    let time_to_last = merged.last_connack_ns.map(|ns| ns as f64 / 1e6);
    let connections = ConnectionSummary {
        planned: total,
        connected: totals.connected,
        failed,
        failures: merged.connect_failures.clone(),
        subscribe_failures: merged.subscribe_failures,
        unexpected_disconnects: merged.disconnects.clone(),
        connect_latency_ms: Percentiles::from_us(&merged.connect_latency_us),
        time_to_last_connack_ms: time_to_last,
        connect_rate_per_s: time_to_last
            .filter(|&ms| ms > 0.0)
            .map(|ms| totals.connected as f64 / (ms / 1000.0)),
        reconnects: merged.reconnects,
        reconnect_failures: merged.reconnect_failures.clone(),
        reconnect_time_ms: Percentiles::from_us(&merged.reconnect_us),
        connects_per_broker: merged.connects_per_broker.clone(),
    };
    let version = match shared.scenario.connection.mqtt_version {
        plan::MqttVersion::V311 => "3.1.1",
        plan::MqttVersion::V5 => "5",
    };
    Ok(Summary {
        mode: options.mode,
        scenario: shared.scenario.name.clone(),
        broker: shared
            .targets
            .iter()
            .map(|target| target.to_string())
            .collect::<Vec<_>>()
            .join(","),
        mqtt_version: version.into(),
        transport: shared.edge.kind.name().into(),
        connections,
        messages,
        loadgen: health,
        broker_process: broker.map(BrokerSampler::finish),
        wall_s: shared.run_start.elapsed().as_secs_f64(),
    })
}

/// sent × matching subscribers, scaling "one per member" fan-outs by the members that
/// actually subscribed.
fn expected_deliveries(scenario: &Scenario, report: &ThreadReport) -> u64 {
    let mut expected = u128::from(report.expected_fixed);
    for (group, &per_member) in report.expected_per_member.iter().enumerate() {
        let planned = u128::from(scenario.groups[group].count.max(1));
        let ready = u128::from(report.ready_per_group[group]);
        expected += u128::from(per_member) * ready / planned;
    }
    u64::try_from(expected).unwrap_or(u64::MAX)
}

/// Samples a broker process on the same host: CPU seconds spent while clients connected and
/// while messages flowed (publish start to end of drain), and its resident memory.
struct BrokerSampler {
    pid: u32,
    ticks_start: Option<u64>,
    ticks_ready: Option<u64>,
    ticks_drained: Option<u64>,
    usage: stats::BrokerUsage,
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl BrokerSampler {
    fn new(pid: u32) -> Self {
        let rss = rss_kb(pid);
        Self {
            pid,
            ticks_start: crate::monitor::process_cpu_ticks(pid),
            ticks_ready: None,
            ticks_drained: None,
            usage: stats::BrokerUsage {
                pid,
                rss_kb_start: rss,
                rss_kb_max: rss,
                ..Default::default()
            },
        }
    }

    fn sample_rss(&mut self) {
        if let Some(rss) = rss_kb(self.pid) {
            self.usage.rss_kb_max = Some(self.usage.rss_kb_max.map_or(rss, |max| max.max(rss)));
        }
    }

    fn mark_ready(&mut self) {
        self.ticks_ready = crate::monitor::process_cpu_ticks(self.pid);
        self.usage.rss_kb_ready = rss_kb(self.pid);
        self.sample_rss();
    }

    fn mark_drained(&mut self) {
        self.ticks_drained = crate::monitor::process_cpu_ticks(self.pid);
        self.usage.rss_kb_drained = rss_kb(self.pid);
        self.sample_rss();
    }

    fn finish(mut self) -> stats::BrokerUsage {
        let hz = crate::monitor::clock_ticks_per_second();
        let seconds = |from: Option<u64>, to: Option<u64>| match (from, to) {
            (Some(from), Some(to)) => Some(to.saturating_sub(from) as f64 / hz),
            _ => None,
        };
        self.usage.cpu_s_connecting = seconds(self.ticks_start, self.ticks_ready);
        self.usage.cpu_s_publishing = seconds(self.ticks_ready, self.ticks_drained);
        self.usage
    }
}
