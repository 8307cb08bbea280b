//! Measurements: live counters the monitor thread reads every second (atomics, one slot per
//! executor so executors never contend), and the per-executor [`ThreadReport`] with HDR
//! histograms that is merged into the final [`Summary`] once executors finish.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::seq::SeqCounts;

/// Histograms record microseconds up to this bound; larger values are clamped.
pub const LATENCY_MAX_US: u64 = 3_600_000_000;
/// Messages per executor whose "last subscriber got it" time is tracked for fan-out runs;
/// beyond this, messages are counted in `spread_untracked` instead (bounded memory).
pub const SPREAD_TRACKED_MAX: usize = 400_000;
/// Largest count the per-read histogram records (a 64 KiB read holds at most ~2,700
/// minimal PUBLISH frames).
pub const PUBLISHES_PER_READ_MAX: u64 = 1_000_000;

/// Counters one executor updates and the monitor reads. Padded to its own cache lines.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct LiveCounters {
    pub connected: AtomicU64,
    pub connect_failed: AtomicU64,
    /// Connected and, for subscribers, subscribed.
    pub ready: AtomicU64,
    pub sent: AtomicU64,
    /// QoS 1/2 publishes (each should end in a PUBACK / PUBCOMP).
    pub sent_needing_ack: AtomicU64,
    /// PUBACK / PUBCOMP received for QoS 1/2 publishes.
    pub acked: AtomicU64,
    pub received: AtomicU64,
    /// Deliveries the messages sent so far should produce (planned subscribers).
    pub expected: AtomicU64,
    pub publishers_done: AtomicU64,
    pub clients_done: AtomicU64,
    pub dropped: AtomicU64,
    /// Connections re-established after a loss (`--reconnect`).
    pub reconnects: AtomicU64,
    /// QoS 1/2 publishes whose ack can no longer come: their connection was lost.
    pub abandoned: AtomicU64,
    /// Kernel thread id, for the CPU monitor.
    pub tid: AtomicU64,
}

impl LiveCounters {
    pub fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LiveTotals {
    pub connected: u64,
    pub connect_failed: u64,
    pub ready: u64,
    pub sent: u64,
    pub sent_needing_ack: u64,
    pub acked: u64,
    pub received: u64,
    pub expected: u64,
    pub publishers_done: u64,
    pub clients_done: u64,
    pub dropped: u64,
    pub reconnects: u64,
    pub abandoned: u64,
}

pub fn totals(slots: &[LiveCounters]) -> LiveTotals {
    let mut out = LiveTotals::default();
    for slot in slots {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        out.connected += get(&slot.connected);
        out.connect_failed += get(&slot.connect_failed);
        out.ready += get(&slot.ready);
        out.sent += get(&slot.sent);
        out.sent_needing_ack += get(&slot.sent_needing_ack);
        out.acked += get(&slot.acked);
        out.received += get(&slot.received);
        out.expected += get(&slot.expected);
        out.publishers_done += get(&slot.publishers_done);
        out.clients_done += get(&slot.clients_done);
        out.dropped += get(&slot.dropped);
        out.reconnects += get(&slot.reconnects);
        out.abandoned += get(&slot.abandoned);
    }
    out
}

pub fn new_histogram() -> Histogram<u64> {
    // 3 significant figures over 1 µs .. 1 h: a few hundred KiB per histogram.
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("constant histogram bounds are valid")
}

/// Histogram of small counts (1 ..= [`PUBLISHES_PER_READ_MAX`]).
pub fn new_count_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, PUBLISHES_PER_READ_MAX, 3)
        .expect("constant histogram bounds are valid")
}

pub fn record_count(histogram: &mut Histogram<u64>, count: u64) {
    histogram.saturating_record(count.clamp(1, PUBLISHES_PER_READ_MAX));
}

pub fn record_us(histogram: &mut Histogram<u64>, micros: u64) {
    histogram.saturating_record(micros.clamp(1, LATENCY_MAX_US));
}

/// What one executor measured; merged after the run.
#[derive(Debug)]
pub struct ThreadReport {
    pub connect_latency_us: Histogram<u64>,
    pub e2e_latency_us: Histogram<u64>,
    /// How late each publish left compared to its open-loop schedule.
    pub send_lag_us: Histogram<u64>,
    pub connect_failures: BTreeMap<String, u64>,
    pub disconnects: BTreeMap<String, u64>,
    pub subscribe_failures: u64,
    pub seq: SeqCounts,
    /// Received messages without a loadgen header (foreign or too small payload).
    pub unmeasured: u64,
    /// (publisher, sequence) -> latency of the slowest delivery so far, µs.
    pub spread_us: HashMap<(u32, u64), u64>,
    pub spread_untracked: u64,
    /// Deliveries expected from fixed-fanout subscriptions (shared groups).
    pub expected_fixed: u64,
    /// Per subscriber group: deliveries expected per subscribed member.
    pub expected_per_member: Vec<u64>,
    /// Per subscriber group: members that subscribed successfully.
    pub ready_per_group: Vec<u64>,
    pub sent: u64,
    pub acked: u64,
    /// Earliest/latest CONNACK, ns after the run started.
    pub first_connack_ns: Option<u64>,
    pub last_connack_ns: Option<u64>,
    /// From the loss of a connection until it was connected (and subscribed) again.
    pub reconnect_us: Histogram<u64>,
    pub reconnects: u64,
    /// Failed reconnect attempts by reason.
    pub reconnect_failures: BTreeMap<String, u64>,
    /// Successful CONNACKs per broker address (first connections and reconnects).
    pub connects_per_broker: BTreeMap<String, u64>,
    /// PUBLISH frames completed by each read of a subscriber socket that carried any.
    pub publishes_per_read: Histogram<u64>,
    /// QoS 1/2 publishes left unacknowledged by a lost connection.
    pub inflight_abandoned: u64,
}

impl ThreadReport {
    pub fn new(groups: usize) -> Self {
        Self {
            connect_latency_us: new_histogram(),
            e2e_latency_us: new_histogram(),
            send_lag_us: new_histogram(),
            connect_failures: BTreeMap::new(),
            disconnects: BTreeMap::new(),
            subscribe_failures: 0,
            seq: SeqCounts::default(),
            unmeasured: 0,
            spread_us: HashMap::new(),
            spread_untracked: 0,
            expected_fixed: 0,
            expected_per_member: vec![0; groups],
            ready_per_group: vec![0; groups],
            sent: 0,
            acked: 0,
            first_connack_ns: None,
            last_connack_ns: None,
            reconnect_us: new_histogram(),
            reconnects: 0,
            reconnect_failures: BTreeMap::new(),
            connects_per_broker: BTreeMap::new(),
            publishes_per_read: new_count_histogram(),
            inflight_abandoned: 0,
        }
    }

    pub fn note_connack(&mut self, at_ns: u64) {
        self.first_connack_ns = Some(self.first_connack_ns.map_or(at_ns, |v| v.min(at_ns)));
        self.last_connack_ns = Some(self.last_connack_ns.map_or(at_ns, |v| v.max(at_ns)));
    }

    pub fn note_spread(&mut self, key: (u32, u64), latency_us: u64) {
        if let Some(slowest) = self.spread_us.get_mut(&key) {
            *slowest = (*slowest).max(latency_us);
        } else if self.spread_us.len() < SPREAD_TRACKED_MAX {
            self.spread_us.insert(key, latency_us);
        } else {
            self.spread_untracked += 1;
        }
    }

    /// Folds `other` into `self`.
    pub fn merge(&mut self, other: ThreadReport) {
        let _ = self.connect_latency_us.add(&other.connect_latency_us);
        let _ = self.e2e_latency_us.add(&other.e2e_latency_us);
        let _ = self.send_lag_us.add(&other.send_lag_us);
        for (reason, count) in other.connect_failures {
            *self.connect_failures.entry(reason).or_default() += count;
        }
        for (reason, count) in other.disconnects {
            *self.disconnects.entry(reason).or_default() += count;
        }
        self.subscribe_failures += other.subscribe_failures;
        self.seq.add(&other.seq);
        self.unmeasured += other.unmeasured;
        for (key, latency) in other.spread_us {
            let slot = self.spread_us.entry(key).or_default();
            *slot = (*slot).max(latency);
        }
        self.spread_untracked += other.spread_untracked;
        self.expected_fixed += other.expected_fixed;
        for (mine, theirs) in self
            .expected_per_member
            .iter_mut()
            .zip(other.expected_per_member)
        {
            *mine += theirs;
        }
        for (mine, theirs) in self.ready_per_group.iter_mut().zip(other.ready_per_group) {
            *mine += theirs;
        }
        self.sent += other.sent;
        self.acked += other.acked;
        if let Some(at) = other.first_connack_ns {
            self.first_connack_ns = Some(self.first_connack_ns.map_or(at, |v| v.min(at)));
        }
        if let Some(at) = other.last_connack_ns {
            self.last_connack_ns = Some(self.last_connack_ns.map_or(at, |v| v.max(at)));
        }
        let _ = self.reconnect_us.add(&other.reconnect_us);
        self.reconnects += other.reconnects;
        for (reason, count) in other.reconnect_failures {
            *self.reconnect_failures.entry(reason).or_default() += count;
        }
        for (broker, count) in other.connects_per_broker {
            *self.connects_per_broker.entry(broker).or_default() += count;
        }
        let _ = self.publishes_per_read.add(&other.publishes_per_read);
        self.inflight_abandoned += other.inflight_abandoned;
    }
}

/// Distribution of a count (not a time): how many reads, and messages per read.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CountPercentiles {
    /// Samples (reads).
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    pub mean: f64,
}

impl CountPercentiles {
    pub fn from_histogram(histogram: &Histogram<u64>) -> Self {
        Self {
            count: histogram.len(),
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            max: histogram.max(),
            mean: histogram.mean(),
        }
    }
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn from_us(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            mean: histogram.mean() / 1000.0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectionSummary {
    pub planned: u64,
    pub connected: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub subscribe_failures: u64,
    /// Closed by the broker or the network before the run ended, by reason.
    pub unexpected_disconnects: BTreeMap<String, u64>,
    pub connect_latency_ms: Percentiles,
    /// From the first connection attempt to the last CONNACK.
    pub time_to_last_connack_ms: Option<f64>,
    pub connect_rate_per_s: Option<f64>,
    /// Connections re-established after a loss (`--reconnect`).
    pub reconnects: u64,
    /// Failed reconnect attempts by reason.
    pub reconnect_failures: BTreeMap<String, u64>,
    /// Loss of a connection to connected (and subscribed) again.
    pub reconnect_time_ms: Percentiles,
    /// Successful CONNACKs per broker address.
    pub connects_per_broker: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageSummary {
    pub sent: u64,
    pub acked: u64,
    pub received: u64,
    /// sent × matching subscribers (a shared group counts once).
    pub expected: u64,
    pub unique: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub out_of_window: u64,
    /// Received but without a loadgen header.
    pub unmeasured: u64,
    pub publish_window_s: f64,
    pub send_rate_per_s: f64,
    pub receive_rate_per_s: f64,
    pub latency_ms: Percentiles,
    /// Per message: when the slowest subscriber got it (fan-out runs only).
    pub last_delivery_ms: Option<Percentiles>,
    pub spread_untracked: u64,
    pub send_lag_ms: Percentiles,
    /// Subscribers: PUBLISH frames completed per socket read (reads that carried any). Many
    /// per read means deliveries reach the socket in bursts (or the loadgen reads late: see
    /// `loadgen.cpu_max_thread_percent`).
    pub publishes_per_read: CountPercentiles,
    /// QoS 1/2 publishes whose connection was lost before their ack came.
    pub inflight_abandoned: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct LoadgenHealth {
    pub threads: usize,
    /// Highest per-thread CPU utilisation seen in any one-second interval, percent.
    pub cpu_max_thread_percent: f64,
    /// Seconds a thread was saturated while messages flowed (or, without publishers, at all).
    pub cpu_saturated_seconds: u64,
    /// Seconds a thread was saturated while clients were connecting.
    pub cpu_saturated_seconds_connecting: u64,
    /// Highest per-thread share of wall time spent runnable but waiting for a CPU, percent.
    pub cpu_wait_max_percent: f64,
    /// Seconds a thread was starved by other processes on its core.
    pub cpu_starved_seconds: u64,
    pub backlog_max: u64,
    pub backlog_growing_seconds: u64,
    /// Sent × fan-out minus received: deliveries the broker still owes.
    pub delivery_backlog_max: u64,
    pub delivery_backlog_growing_seconds: u64,
    pub saturated: bool,
    pub warnings: Vec<String>,
    /// This process's CPU seconds (all threads) from publishing start to the end of the drain.
    pub cpu_s_publishing: Option<f64>,
    /// `cpu_s_publishing` per message sent or received, µs: what the loadgen pays per message,
    /// to compare with the broker's figure at the same fixed rate.
    pub cpu_us_per_message: Option<f64>,
}

/// Broker process figures sampled by the loadgen (`--broker-pid`).
#[derive(Debug, Clone, Serialize, Default)]
pub struct BrokerUsage {
    pub pid: u32,
    /// From the first connection attempt until every client was ready.
    pub cpu_s_connecting: Option<f64>,
    /// From publishing start until the drain ended.
    pub cpu_s_publishing: Option<f64>,
    pub rss_kb_start: Option<u64>,
    /// When every client was connected and subscribed.
    pub rss_kb_ready: Option<u64>,
    pub rss_kb_drained: Option<u64>,
    pub rss_kb_max: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub mode: String,
    pub scenario: String,
    pub broker: String,
    pub mqtt_version: String,
    /// tcp, tls, ws or wss.
    pub transport: String,
    pub connections: ConnectionSummary,
    pub messages: MessageSummary,
    pub loadgen: LoadgenHealth,
    pub broker_process: Option<BrokerUsage>,
    pub wall_s: f64,
}

pub fn spread_percentiles(report: &ThreadReport) -> Option<Percentiles> {
    if report.spread_us.is_empty() {
        return None;
    }
    let mut histogram = new_histogram();
    for &latency in report.spread_us.values() {
        record_us(&mut histogram, latency);
    }
    Some(Percentiles::from_us(&histogram))
}

impl Summary {
    pub fn print_human(&self) {
        let c = &self.connections;
        let m = &self.messages;
        println!(
            "== ringmq-loadgen summary: {} ({}) against {} (MQTT {} over {})",
            self.scenario, self.mode, self.broker, self.mqtt_version, self.transport
        );
        println!(
            "connections: planned {} connected {} failed {} {:?} subscribe failures {} unexpected disconnects {:?}",
            c.planned, c.connected, c.failed, c.failures, c.subscribe_failures, c.unexpected_disconnects
        );
        println!(
            "connect latency ms: p50 {:.3} p99 {:.3} max {:.3}; time to last CONNACK {} ms",
            c.connect_latency_ms.p50,
            c.connect_latency_ms.p99,
            c.connect_latency_ms.max,
            c.time_to_last_connack_ms
                .map_or("-".into(), |v| format!("{v:.1}"))
        );
        println!(
            "messages: sent {} acked {} received {} expected {} lost {} duplicated {} reordered {} (window {:.2} s, {:.0} sent/s, {:.0} recv/s)",
            m.sent, m.acked, m.received, m.expected, m.lost, m.duplicated, m.reordered, m.publish_window_s, m.send_rate_per_s, m.receive_rate_per_s
        );
        let l = &m.latency_ms;
        println!(
            "end-to-end latency ms: p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} (n={})",
            l.p50, l.p90, l.p99, l.p999, l.max, l.count
        );
        if let Some(s) = &m.last_delivery_ms {
            println!(
                "last-subscriber delivery ms: p50 {:.3} p99 {:.3} max {:.3} (messages={})",
                s.p50, s.p99, s.max, s.count
            );
        }
        if c.reconnects > 0 || !c.reconnect_failures.is_empty() {
            println!(
                "reconnects {} (failed attempts {:?}); loss to reconnected ms: p50 {:.1} p99 {:.1} max {:.1}",
                c.reconnects,
                c.reconnect_failures,
                c.reconnect_time_ms.p50,
                c.reconnect_time_ms.p99,
                c.reconnect_time_ms.max
            );
        }
        if c.connects_per_broker.len() > 1 {
            println!("connects per broker: {:?}", c.connects_per_broker);
        }
        let reads = &m.publishes_per_read;
        if reads.count > 0 {
            println!(
                "publishes per subscriber read: mean {:.1} p50 {} p99 {} max {} (reads={})",
                reads.mean, reads.p50, reads.p99, reads.max, reads.count
            );
        }
        if let Some(per_message) = self.loadgen.cpu_us_per_message {
            println!(
                "loadgen cpu while publishing: {:.2} s, {per_message:.2} us per message sent or received",
                self.loadgen.cpu_s_publishing.unwrap_or_default()
            );
        }
        println!(
            "loadgen: threads {} max thread cpu {:.0}% max cpu wait {:.0}% backlog max {} saturated {}",
            self.loadgen.threads,
            self.loadgen.cpu_max_thread_percent,
            self.loadgen.cpu_wait_max_percent,
            self.loadgen.backlog_max,
            self.loadgen.saturated
        );
        for warning in &self.loadgen.warnings {
            println!("WARNING: {warning}");
        }
    }
}
