//! ringmq-bridge-kafka: the dedicated bridge shard between ringmq (MQTT) and Kafka.
//!
//! # What this crate owns
//! One thread (named `ringmq-bridge-kafka`, no tokio, no MQTT listeners) that receives matching
//! publishes from every shard over bounded flume channels, batches them into librdkafka producers
//! (`BaseProducer`, polled on that thread, delivery reports through a `ProducerContext`), and
//! consumes Kafka topics with `BaseConsumer`s polled on the same thread, handing records to the
//! broker as [`InboundMessage`]s and committing offsets only after the broker accepted them.
//!
//! It must not touch MQTT sessions, sockets or the routing table: the shard decides what to do with
//! a refused record or a failed [`BridgeAck`], and the broker publishes [`InboundMessage`]s.
//! The seam uses plain types (`Bytes`, `u8` for QoS); the shard converts from the codec types.
//!
//! # Main types
//! - [`BridgeConfig`]: the `[bridge.kafka]` TOML section; [`BridgeConfig::validate`] names the bad
//!   field (`bridge.kafka.rule[1].key: unknown key kind ...`).
//! - [`Bridge::start`] → [`BridgeHandle`]: [`BridgeHandle::matcher`] (a [`RuleMatcher`], cheap to
//!   clone, one per shard), [`BridgeHandle::sender`] (a [`BridgeSender`], one per shard),
//!   [`BridgeHandle::stats`], [`BridgeHandle::shutdown`].
//! - [`BridgeRecord`] (shard → bridge), [`BridgeAck`] (bridge → originating shard),
//!   [`InboundMessage`] / [`InboundReply`] (bridge ↔ broker for Kafka → MQTT).
//!
//! # How the shard uses it
//! 1. On every PUBLISH, `matcher.matches(topic)`; `None` means not bridged.
//! 2. If it matches, the rule's [`AckMode`] and the publish QoS decide:
//!    - `AckMode::None`, or any QoS0 publish: build a record with `ack: None`, `try_send` it, and
//!      acknowledge the client as usual. If the channel is full the sender drops the record and
//!      counts it (`dropped_total{reason="channel_full"}`); it never blocks.
//!    - `AckMode::Kafka` with QoS 1/2: build a record with `ack: Some(AckToken { shard, token })`;
//!      if `try_send` returns an error the record was refused (counted as
//!      `refused_total{reason="channel_full"}`): the shard must NOT send PUBACK/PUBREC, so the
//!      client's inflight window backpressures and the client resends after reconnecting. If
//!      accepted, the shard waits for the [`BridgeAck`] with that token on its `acks` channel, then
//!      sends PUBACK/PUBREC (`Ok`) or, on a definitive failure (`Err`), either disconnects the client
//!      with reason 0x80 (so it resends the message) or sends PUBACK with an error reason code
//!      (0x80 Unspecified error, v5 only). Every accepted token is answered exactly once, including at
//!      shutdown (`DeliveryError::ShutDown`).
//!
//! # Delivery guarantees and bounds
//! - QoS0 path (`ack = "none"`): the bridge holds at most `buffer_max_messages` such records
//!   (its own queue plus the part already handed to librdkafka). When full, the OLDEST queued record
//!   is dropped, counted in `ringmq_bridge_kafka_dropped_total{reason="buffer_full"}` and reported by
//!   a warning at most once per [`DROP_LOG_INTERVAL`] with the counts since the previous line.
//! - `ack = "kafka"`: never dropped for buffer pressure. A separate producer runs with
//!   `message.timeout.ms = 0` (librdkafka retries forever), so while Kafka is down these records
//!   stay in flight, bounded by the shards' inflight windows and [`ACKED_PENDING_MAX`].
//! - Kafka → MQTT: at least once. Offsets are committed per partition up to the highest offset below
//!   which every message was accepted by the broker; rejected messages are offered again after
//!   [`INBOUND_RETRY_DELAY`].
//! - [`Bridge::start`] never waits for Kafka; librdkafka reconnects on its own. The transitions are
//!   logged once each ("kafka unreachable" / "kafka reachable again") and exported as the gauge
//!   `ringmq_bridge_kafka_up`.
//!
//! # Metrics (install the recorder before [`Bridge::start`]: handles are registered at start)
//! `ringmq_bridge_kafka_produced_total`, `_acknowledged_total`, `_failed_total`,
//! `_dropped_total{reason}` (`buffer_full`, `channel_full`, `delivery_failed`, `invalid_record`,
//! `invalid_key`), `_refused_total{reason}`, `_buffered` (gauge), `_up` (gauge),
//! `_batch_size` (histogram, records handed to librdkafka per loop turn),
//! `_produce_latency_seconds` (histogram), `_consumer_lag{group,topic}` (gauge),
//! `_inbound_delivered_total`, `_inbound_committed_total`.

mod bridge;
mod config;
mod inbound;
mod metrics_names;
mod template;
pub mod topic;

pub use bridge::{
    Bridge, BridgeHandle, BridgeSender, BridgeStats, RuleMatch, RuleMatcher, SendError,
    SendErrorReason, ACKED_PENDING_MAX, DROP_LOG_INTERVAL, QOS0_HANDOFF_MAX,
};
pub use config::{
    AckMode, BridgeConfig, ConfigError, InboundRuleConfig, KeyKind, OutboundRuleConfig,
    SettingValue, BUFFER_MAX_MESSAGES_LIMIT, CHANNEL_CAPACITY_LIMIT, DEFAULT_BUFFER_MAX_MESSAGES,
    DEFAULT_CHANNEL_CAPACITY,
};
pub use inbound::{InboundOutcome, InboundReply, INBOUND_INFLIGHT_MAX, INBOUND_RETRY_DELAY};
pub use template::{is_valid_kafka_topic, ExpandError, Template, TemplateError, TemplateKind};

use bytes::Bytes;

/// Index of an outbound rule in the configuration (`[[bridge.kafka.rule]]` order).
pub type RuleIndex = usize;

/// Header names the bridge sets on every Kafka record (besides one header per v5 user property).
pub mod headers {
    pub const MQTT_TOPIC: &str = "mqtt_topic";
    pub const MQTT_CLIENT_ID: &str = "mqtt_client_id";
    pub const MQTT_QOS: &str = "mqtt_qos";
    pub const MQTT_PUBLISH_TIME_MS: &str = "mqtt_publish_time_ms";
}

/// Identifies a record whose publisher waits for Kafka's acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckToken {
    /// Index into the `acks` senders given to [`Bridge::start`].
    pub shard: usize,
    /// Opaque to the bridge; echoed in [`BridgeAck::token`].
    pub token: u64,
}

/// A publish to bridge into Kafka, built by a shard after [`RuleMatcher::matches`] said yes.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeRecord {
    /// The rule that matched (from [`RuleMatch::rule`]).
    pub rule: RuleIndex,
    /// MQTT topic name, UTF-8 (the codec's `Utf8Bytes::into_bytes()`).
    pub topic: Bytes,
    /// Publishing client identifier, UTF-8.
    pub client_id: Bytes,
    /// 0, 1 or 2.
    pub qos: u8,
    pub payload: Bytes,
    /// MQTT v5 user properties (name, value), UTF-8; each becomes a Kafka header.
    pub user_properties: Vec<(Bytes, Bytes)>,
    /// When the broker received the publish, milliseconds since the Unix epoch.
    pub publish_time_ms: u64,
    /// `Some` only for `ack = "kafka"` rules with QoS 1/2 publishes.
    pub ack: Option<AckToken>,
}

/// Why a record with an [`AckToken`] was not stored by Kafka. Definitive: librdkafka has given up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    #[error("kafka did not store the record: {0}")]
    Kafka(String),
    #[error("the record cannot be mapped to kafka: {0}")]
    InvalidRecord(String),
    #[error("the bridge shut down before kafka acknowledged the record")]
    ShutDown,
}

/// The answer for one [`AckToken`], sent on `acks[token.shard]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeAck {
    pub token: u64,
    pub outcome: Result<(), DeliveryError>,
}

/// A Kafka record for the broker to publish over MQTT.
#[derive(Debug, Clone)]
pub struct InboundMessage {
    /// Unique per bridge; echoed in the [`InboundReply`].
    pub id: u64,
    /// Index of the inbound rule (`[[bridge.kafka.inbound]]` order).
    pub rule: usize,
    /// MQTT topic name (template expanded; never contains wildcards).
    pub topic: String,
    pub key: Option<Bytes>,
    pub payload: Bytes,
    /// 0, 1 or 2, from the rule.
    pub qos: u8,
    /// Kafka headers (name, value); the broker may turn them into v5 user properties.
    pub headers: Vec<(String, Bytes)>,
    reply: flume::Sender<InboundReply>,
}

impl InboundMessage {
    /// Tells the bridge the broker took responsibility for the message (routed it / stored it for
    /// its subscribers): its offset may now be committed.
    pub fn accept(&self) {
        self.send_reply(InboundOutcome::Accepted);
    }

    /// Tells the bridge the broker could not take the message now; the bridge offers it again
    /// after [`INBOUND_RETRY_DELAY`].
    pub fn reject(&self) {
        self.send_reply(InboundOutcome::Rejected);
    }

    fn send_reply(&self, outcome: InboundOutcome) {
        // The reply channel is sized for every message that can be outstanding, so try_send only
        // fails if the bridge is gone, in which case the message is redelivered after a restart.
        if self
            .reply
            .try_send(InboundReply {
                id: self.id,
                outcome,
            })
            .is_err()
        {
            tracing::debug!(id = self.id, "kafka bridge gone, inbound reply dropped");
        }
    }
}

/// Errors starting the bridge.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create kafka {role}: {source}")]
    Client {
        role: &'static str,
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot subscribe to kafka topic {topic:?}: {source}")]
    Subscribe {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot spawn the bridge thread: {0}")]
    Spawn(#[from] std::io::Error),
}
