//! Per-shard counters. The hot path bumps plain `u64` fields owned by the shard (no atomics shared
//! between cores); the runtime publishes them into the process's metrics recorder (see the
//! `ringmq-shard` crate's `metrics` module).

use wire::QoS;

use crate::session::{CloseReason, DropReason};

pub const DROP_REASONS: [DropReason; 7] = [
    DropReason::Expired,
    DropReason::PacketTooLarge,
    DropReason::QueueFull,
    DropReason::NoSubscribers,
    DropReason::CrossShardFull,
    DropReason::EncodeFailed,
    DropReason::Offline,
];

pub const CLOSE_REASONS: [&str; 8] = [
    "client_disconnect",
    "connection_lost",
    "keepalive_timeout",
    "session_taken_over",
    "protocol_error",
    "server_shutting_down",
    "slow_consumer",
    "credentials_expired",
];

/// Plain counters, bumped on the shard's own thread.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub connections_accepted: u64,
    pub connections_closed: [u64; CLOSE_REASONS.len()],
    pub messages_received: [u64; 3],
    pub messages_sent: [u64; 3],
    pub messages_dropped: [[u64; DROP_REASONS.len()]; 3],
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub cross_shard_sent: u64,
    pub wills_published: u64,
    pub sessions_expired: u64,
    /// Idle sessions' traffic boxes freed by the traffic sweep (`ShardState::sweep_traffic`).
    pub traffic_released: u64,
    pub takeovers: u64,
    /// Sessions that arrived from a peer node (cluster takeover) and were installed here.
    pub sessions_handed_in: u64,
    /// Sessions from a peer node not installed: a newer local connection had it, or the shard
    /// was full or shutting down.
    pub takeover_images_discarded: u64,
    /// Sessions given up to a peer node that claimed their client id.
    pub sessions_handed_out: u64,
    /// CONNECTs held while the cluster claimed their client id from the peer nodes.
    pub takeover_claims: u64,
    /// Held CONNECTs refused because a concurrent connect of the same id on a peer won.
    pub takeover_claims_lost: u64,
    pub subscriptions_refused: u64,
    pub retained_refused: u64,
    pub handoffs: u64,
    /// Connections refused at CONNECT because the shard holds `limits.sessions_per_shard_max`.
    pub sessions_refused: u64,
    /// SUBSCRIBE filters refused because the session holds
    /// `limits.subscriptions_per_session_max`.
    pub subscriptions_over_limit: u64,
    /// Publishes forwarded late to a shard whose subscription arrived just after them.
    pub publishes_replayed: u64,
    /// Authentication and ACL outcomes (see `state::acl`).
    pub auth: crate::state::AuthCounters,
}

impl Counters {
    pub fn drop(&mut self, qos: QoS, reason: DropReason) {
        let r = DROP_REASONS.iter().position(|d| *d == reason).unwrap_or(0);
        self.messages_dropped[qos as usize][r] += 1;
    }

    pub fn closed(&mut self, reason: CloseReason) {
        let label = reason.label();
        let r = CLOSE_REASONS.iter().position(|c| *c == label).unwrap_or(0);
        self.connections_closed[r] += 1;
    }

    pub fn dropped_total(&self) -> u64 {
        self.messages_dropped.iter().flatten().sum()
    }
}
