//! Per-shard counters. The hot path bumps plain `u64` fields owned by the shard (no atomics shared
//! between cores); once a second the shard publishes the deltas into the process-wide `metrics`
//! recorder, which the broker renders as Prometheus text.

use metrics::{counter, gauge, Counter, Gauge};

use engine::admission::{Admission, AdmissionCounters, REFUSALS};
use engine::counters::{Counters, CLOSE_REASONS, DROP_REASONS};

/// Gauge values sampled at publish time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    pub connections: u64,
    pub sessions_online: u64,
    pub sessions_offline: u64,
    pub subscriptions: u64,
    pub retained: u64,
    pub queued: u64,
    pub cross_shard_queue_depth: u64,
    pub busy_ratio: f64,
}

/// The shard's registered metric handles and the counter values last published.
pub struct Exporter {
    last: Counters,
    accepted: Counter,
    closed: Vec<Counter>,
    received: Vec<Counter>,
    sent: Vec<Counter>,
    dropped: Vec<Vec<Counter>>,
    bytes_received: Counter,
    bytes_sent: Counter,
    cross_shard_sent: Counter,
    wills: Counter,
    expired: Counter,
    takeovers: Counter,
    /// Cluster session hand-over on this shard, by event: `claimed` (a CONNECT held for its
    /// claim), `claim_lost`, `handed_in`, `handed_out`, `image_discarded`.
    handover: [Counter; 5],
    refused: Counter,
    handoffs: Counter,
    sessions_refused: Counter,
    subscriptions_over_limit: Counter,
    publishes_replayed: Counter,
    /// Idle sessions' traffic state freed by the sweep (`Counters::traffic_released`).
    traffic_released: Counter,
    /// The data plane ring's counters, and their values last published.
    ring_last: uring::RingStats,
    ring_enters: Counter,
    ring_cqes: Counter,
    ring_recv_enobufs: Counter,
    ring_send_refused: Counter,
    ring_accept_errors: Counter,
    ring_accept_pauses: Counter,
    g_connections: Gauge,
    g_online: Gauge,
    g_offline: Gauge,
    g_subscriptions: Gauge,
    g_retained: Gauge,
    g_queued: Gauge,
    g_cross_depth: Gauge,
    g_busy: Gauge,
    /// Overload protection's counters (`engine::admission`), and their values last published.
    admission_last: AdmissionCounters,
    connections_refused: Vec<Counter>,
    flapping_bans: Counter,
    flapping_evicted: Counter,
    publish_rate_pauses: Counter,
    g_handshakes: Gauge,
    g_flapping_banned: Gauge,
    g_flapping_tracked: Gauge,
}

const QOS_LABELS: [&str; 3] = ["0", "1", "2"];

impl Exporter {
    pub fn new(shard: u16) -> Self {
        let s = shard.to_string();
        Exporter {
            last: Counters::default(),
            accepted: counter!("ringmq_connections_accepted_total", "shard" => s.clone()),
            closed: CLOSE_REASONS
                .iter()
                .map(|r| counter!("ringmq_connections_closed_total", "shard" => s.clone(), "reason" => *r))
                .collect(),
            received: QOS_LABELS
                .iter()
                .map(|q| counter!("ringmq_messages_received_total", "shard" => s.clone(), "qos" => *q))
                .collect(),
            sent: QOS_LABELS
                .iter()
                .map(|q| counter!("ringmq_messages_sent_total", "shard" => s.clone(), "qos" => *q))
                .collect(),
            dropped: QOS_LABELS
                .iter()
                .map(|q| {
                    DROP_REASONS
                        .iter()
                        .map(|r| {
                            counter!("ringmq_messages_dropped_total", "shard" => s.clone(), "qos" => *q, "reason" => r.label())
                        })
                        .collect()
                })
                .collect(),
            bytes_received: counter!("ringmq_bytes_received_total", "shard" => s.clone()),
            bytes_sent: counter!("ringmq_bytes_sent_total", "shard" => s.clone()),
            cross_shard_sent: counter!("ringmq_cross_shard_sent_total", "shard" => s.clone()),
            wills: counter!("ringmq_wills_published_total", "shard" => s.clone()),
            expired: counter!("ringmq_sessions_expired_total", "shard" => s.clone()),
            takeovers: counter!("ringmq_session_takeovers_total", "shard" => s.clone()),
            handover: ["claimed", "claim_lost", "handed_in", "handed_out", "image_discarded"]
                .map(|e| counter!("ringmq_session_handover_total", "shard" => s.clone(), "event" => e)),
            refused: counter!("ringmq_subscriptions_refused_total", "shard" => s.clone()),
            handoffs: counter!("ringmq_connection_handoffs_total", "shard" => s.clone()),
            sessions_refused: counter!("ringmq_sessions_refused_total", "shard" => s.clone()),
            subscriptions_over_limit: counter!(
                "ringmq_subscriptions_over_limit_total",
                "shard" => s.clone()
            ),
            publishes_replayed: counter!(
                "ringmq_cross_shard_replayed_total",
                "shard" => s.clone()
            ),
            traffic_released: counter!(
                "ringmq_session_traffic_released_total",
                "shard" => s.clone()
            ),
            ring_last: uring::RingStats::default(),
            ring_enters: counter!("ringmq_ring_enters_total", "shard" => s.clone()),
            ring_cqes: counter!("ringmq_ring_completions_total", "shard" => s.clone()),
            ring_recv_enobufs: counter!(
                "ringmq_ring_recv_buffers_exhausted_total",
                "shard" => s.clone()
            ),
            ring_send_refused: counter!("ringmq_ring_send_refused_total", "shard" => s.clone()),
            ring_accept_errors: counter!("ringmq_accept_errors_total", "shard" => s.clone()),
            ring_accept_pauses: counter!("ringmq_accept_pauses_total", "shard" => s.clone()),
            g_connections: gauge!("ringmq_connections", "shard" => s.clone()),
            g_online: gauge!("ringmq_sessions", "shard" => s.clone(), "state" => "online"),
            g_offline: gauge!("ringmq_sessions", "shard" => s.clone(), "state" => "offline"),
            g_subscriptions: gauge!("ringmq_subscriptions", "shard" => s.clone()),
            g_retained: gauge!("ringmq_retained_messages", "shard" => s.clone()),
            g_queued: gauge!("ringmq_session_queue_messages", "shard" => s.clone()),
            g_cross_depth: gauge!("ringmq_cross_shard_queue_depth", "shard" => s.clone()),
            g_busy: gauge!("ringmq_shard_busy_ratio", "shard" => s.clone()),
            admission_last: AdmissionCounters::default(),
            connections_refused: REFUSALS
                .iter()
                .map(|r| {
                    counter!("ringmq_connections_refused_total", "shard" => s.clone(), "reason" => r.label())
                })
                .collect(),
            flapping_bans: counter!("ringmq_flapping_bans_total", "shard" => s.clone()),
            flapping_evicted: counter!("ringmq_flapping_evicted_total", "shard" => s.clone()),
            publish_rate_pauses: counter!(
                "ringmq_publish_rate_pauses_total",
                "shard" => s.clone()
            ),
            g_handshakes: gauge!("ringmq_handshakes_in_progress", "shard" => s.clone()),
            g_flapping_banned: gauge!("ringmq_flapping_banned", "shard" => s.clone()),
            g_flapping_tracked: gauge!("ringmq_flapping_tracked", "shard" => s),
        }
    }

    /// Publishes what changed since the last call.
    pub fn publish(&mut self, now: &Counters, gauges: Gauges, ring: Option<uring::RingStats>) {
        let last = &self.last;
        self.accepted
            .increment(now.connections_accepted - last.connections_accepted);
        for (i, c) in self.closed.iter().enumerate() {
            c.increment(now.connections_closed[i] - last.connections_closed[i]);
        }
        for q in 0..3 {
            self.received[q].increment(now.messages_received[q] - last.messages_received[q]);
            self.sent[q].increment(now.messages_sent[q] - last.messages_sent[q]);
            for (r, c) in self.dropped[q].iter().enumerate() {
                c.increment(now.messages_dropped[q][r] - last.messages_dropped[q][r]);
            }
        }
        self.bytes_received
            .increment(now.bytes_received - last.bytes_received);
        self.bytes_sent.increment(now.bytes_sent - last.bytes_sent);
        self.cross_shard_sent
            .increment(now.cross_shard_sent - last.cross_shard_sent);
        self.wills
            .increment(now.wills_published - last.wills_published);
        self.expired
            .increment(now.sessions_expired - last.sessions_expired);
        self.takeovers.increment(now.takeovers - last.takeovers);
        let handover = |c: &Counters| {
            [
                c.takeover_claims,
                c.takeover_claims_lost,
                c.sessions_handed_in,
                c.sessions_handed_out,
                c.takeover_images_discarded,
            ]
        };
        for ((counter, now), last) in self.handover.iter().zip(handover(now)).zip(handover(last)) {
            counter.increment(now - last);
        }
        self.refused
            .increment(now.subscriptions_refused - last.subscriptions_refused);
        self.handoffs.increment(now.handoffs - last.handoffs);
        self.sessions_refused
            .increment(now.sessions_refused - last.sessions_refused);
        self.subscriptions_over_limit
            .increment(now.subscriptions_over_limit - last.subscriptions_over_limit);
        self.publishes_replayed
            .increment(now.publishes_replayed - last.publishes_replayed);
        self.traffic_released
            .increment(now.traffic_released - last.traffic_released);
        self.g_connections.set(gauges.connections as f64);
        self.g_online.set(gauges.sessions_online as f64);
        self.g_offline.set(gauges.sessions_offline as f64);
        self.g_subscriptions.set(gauges.subscriptions as f64);
        self.g_retained.set(gauges.retained as f64);
        self.g_queued.set(gauges.queued as f64);
        self.g_cross_depth
            .set(gauges.cross_shard_queue_depth as f64);
        self.g_busy.set(gauges.busy_ratio);
        if let Some(r) = ring {
            let l = &self.ring_last;
            self.ring_enters.increment(r.enters - l.enters);
            self.ring_cqes.increment(r.cqes - l.cqes);
            self.ring_recv_enobufs
                .increment(r.recv_enobufs - l.recv_enobufs);
            self.ring_send_refused
                .increment(r.send_refused_full - l.send_refused_full);
            self.ring_accept_errors
                .increment(r.accept_errors - l.accept_errors);
            self.ring_accept_pauses
                .increment(r.accept_pauses - l.accept_pauses);
            self.ring_last = r;
        }
        self.last = now.clone();
    }

    /// Publishes overload protection's counters and gauges (refusals by reason, flapping bans,
    /// publish-rate pauses, handshakes in progress). Once a second: the banned gauge walks the
    /// flapping tables.
    pub fn publish_admission(&mut self, admission: &Admission, now: std::time::Instant) {
        let c = &admission.counters;
        let last = &self.admission_last;
        for (i, counter) in self.connections_refused.iter().enumerate() {
            counter.increment(c.refused[i] - last.refused[i]);
        }
        self.flapping_bans
            .increment(c.flapping_bans - last.flapping_bans);
        self.flapping_evicted
            .increment(c.flapping_evicted - last.flapping_evicted);
        self.publish_rate_pauses
            .increment(c.publish_rate_pauses - last.publish_rate_pauses);
        self.g_handshakes.set(f64::from(admission.handshaking()));
        self.g_flapping_banned
            .set(admission.flapping_banned(now) as f64);
        self.g_flapping_tracked
            .set(admission.flapping_tracked() as f64);
        self.admission_last = c.clone();
    }
}
