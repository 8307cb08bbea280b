//! Metric names (`ringmq_bridge_kafka_*`) and the handles the bridge thread records into.

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

pub const PRODUCED_TOTAL: &str = "ringmq_bridge_kafka_produced_total";
pub const ACKNOWLEDGED_TOTAL: &str = "ringmq_bridge_kafka_acknowledged_total";
pub const FAILED_TOTAL: &str = "ringmq_bridge_kafka_failed_total";
pub const DROPPED_TOTAL: &str = "ringmq_bridge_kafka_dropped_total";
pub const REFUSED_TOTAL: &str = "ringmq_bridge_kafka_refused_total";
pub const BUFFERED: &str = "ringmq_bridge_kafka_buffered";
pub const UP: &str = "ringmq_bridge_kafka_up";
pub const BATCH_SIZE: &str = "ringmq_bridge_kafka_batch_size";
pub const PRODUCE_LATENCY_SECONDS: &str = "ringmq_bridge_kafka_produce_latency_seconds";
pub const CONSUMER_LAG: &str = "ringmq_bridge_kafka_consumer_lag";
pub const INBOUND_DELIVERED_TOTAL: &str = "ringmq_bridge_kafka_inbound_delivered_total";
pub const INBOUND_COMMITTED_TOTAL: &str = "ringmq_bridge_kafka_inbound_committed_total";

/// Reasons for `dropped_total` / `refused_total`.
pub mod reason {
    pub const BUFFER_FULL: &str = "buffer_full";
    pub const CHANNEL_FULL: &str = "channel_full";
    pub const BRIDGE_STOPPED: &str = "bridge_stopped";
    pub const DELIVERY_FAILED: &str = "delivery_failed";
    pub const INVALID_RECORD: &str = "invalid_record";
    pub const INVALID_KEY: &str = "invalid_key";
}

/// Handles registered once at start so the hot path does not look names up.
#[derive(Clone)]
pub struct Metrics {
    pub produced: Counter,
    pub acknowledged: Counter,
    pub failed: Counter,
    pub dropped_buffer_full: Counter,
    pub dropped_channel_full: Counter,
    pub dropped_bridge_stopped: Counter,
    pub dropped_delivery_failed: Counter,
    pub dropped_invalid_record: Counter,
    pub dropped_invalid_key: Counter,
    pub refused_channel_full: Counter,
    pub refused_bridge_stopped: Counter,
    pub buffered: Gauge,
    pub up: Gauge,
    pub batch_size: Histogram,
    pub produce_latency_seconds: Histogram,
    pub inbound_delivered: Counter,
    pub inbound_committed: Counter,
}

impl Metrics {
    pub fn register() -> Self {
        Self {
            produced: counter!(PRODUCED_TOTAL),
            acknowledged: counter!(ACKNOWLEDGED_TOTAL),
            failed: counter!(FAILED_TOTAL),
            dropped_buffer_full: counter!(DROPPED_TOTAL, "reason" => reason::BUFFER_FULL),
            dropped_channel_full: counter!(DROPPED_TOTAL, "reason" => reason::CHANNEL_FULL),
            dropped_bridge_stopped: counter!(DROPPED_TOTAL, "reason" => reason::BRIDGE_STOPPED),
            dropped_delivery_failed: counter!(DROPPED_TOTAL, "reason" => reason::DELIVERY_FAILED),
            dropped_invalid_record: counter!(DROPPED_TOTAL, "reason" => reason::INVALID_RECORD),
            dropped_invalid_key: counter!(DROPPED_TOTAL, "reason" => reason::INVALID_KEY),
            refused_channel_full: counter!(REFUSED_TOTAL, "reason" => reason::CHANNEL_FULL),
            refused_bridge_stopped: counter!(REFUSED_TOTAL, "reason" => reason::BRIDGE_STOPPED),
            buffered: gauge!(BUFFERED),
            up: gauge!(UP),
            batch_size: histogram!(BATCH_SIZE),
            produce_latency_seconds: histogram!(PRODUCE_LATENCY_SECONDS),
            inbound_delivered: counter!(INBOUND_DELIVERED_TOTAL),
            inbound_committed: counter!(INBOUND_COMMITTED_TOTAL),
        }
    }

    pub fn consumer_lag(group: &str, topic: &str) -> Gauge {
        gauge!(CONSUMER_LAG, "group" => group.to_owned(), "topic" => topic.to_owned())
    }
}
