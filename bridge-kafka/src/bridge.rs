//! The bridge thread: shard→Kafka producing, link-state tracking, and the handle the broker holds.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};
use rdkafka::statistics::Statistics;

use crate::config::{AckMode, OutboundRule};
use crate::headers;
use crate::inbound::InboundSide;
use crate::metrics_names::Metrics;
use crate::template::{is_valid_kafka_topic, TemplateInput};
use crate::{
    AckToken, BridgeAck, BridgeConfig, BridgeError, BridgeRecord, DeliveryError, InboundMessage,
    RuleIndex,
};

/// Most QoS0 records handed to librdkafka and not yet reported; the rest wait in the bridge's own
/// queue where the drop-oldest policy can reach them. Also capped at half of `buffer_max_messages`.
pub const QOS0_HANDOFF_MAX: usize = 50_000;
/// Most `ack = "kafka"` records the bridge holds that librdkafka refused with "queue full"; at this
/// bound the bridge stops reading the acknowledged channel, so shards see `try_send` fail and refuse.
pub const ACKED_PENDING_MAX: usize = 100_000;
/// At most one "dropped records" warning per interval, with the counts since the previous one.
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Records taken from one channel per loop turn, so neither direction starves the other.
const DRAIN_BATCH_MAX: usize = 4_096;
/// Wait when idle with work in flight (delivery reports and consumer messages are polled this often).
const BUSY_WAIT: Duration = Duration::from_millis(2);
/// Wait when nothing at all is in flight.
const IDLE_WAIT: Duration = Duration::from_millis(50);
/// librdkafka statistics period, used to see brokers come back and to export consumer lag.
const STATISTICS_INTERVAL_MS: &str = "1000";
/// How long shutdown waits for outstanding deliveries before failing them.
const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

const QOS_TEXT: [&str; 3] = ["0", "1", "2"];

const LINK_UNKNOWN: u8 = 0;
const LINK_UP: u8 = 1;
const LINK_DOWN: u8 = 2;

/// Counters shared by the bridge thread, the librdkafka callbacks and the shards' senders.
pub(crate) struct Shared {
    pub(crate) metrics: Metrics,
    shutdown: AtomicBool,
    link: AtomicU8,
    produced: AtomicU64,
    acknowledged: AtomicU64,
    failed: AtomicU64,
    dropped_buffer_full: AtomicU64,
    dropped_channel_full: AtomicU64,
    dropped_delivery_failed: AtomicU64,
    pub(crate) dropped_invalid: AtomicU64,
    refused: AtomicU64,
    buffered: AtomicUsize,
    qos0_in_flight: AtomicUsize,
    acked_in_flight: AtomicUsize,
    pub(crate) inbound_delivered: AtomicU64,
    pub(crate) inbound_accepted: AtomicU64,
    pub(crate) inbound_committed: AtomicU64,
}

impl Shared {
    fn new() -> Self {
        Self {
            metrics: Metrics::register(),
            shutdown: AtomicBool::new(false),
            link: AtomicU8::new(LINK_UNKNOWN),
            produced: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped_buffer_full: AtomicU64::new(0),
            dropped_channel_full: AtomicU64::new(0),
            dropped_delivery_failed: AtomicU64::new(0),
            dropped_invalid: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            buffered: AtomicUsize::new(0),
            qos0_in_flight: AtomicUsize::new(0),
            acked_in_flight: AtomicUsize::new(0),
            inbound_delivered: AtomicU64::new(0),
            inbound_accepted: AtomicU64::new(0),
            inbound_committed: AtomicU64::new(0),
        }
    }

    pub(crate) fn mark_up(&self) {
        let previous = self.link.swap(LINK_UP, Ordering::Relaxed);
        if previous != LINK_UP {
            self.metrics.up.set(1.0);
            if previous == LINK_DOWN {
                tracing::info!("kafka reachable again");
            } else {
                tracing::info!("kafka reachable");
            }
        }
    }

    pub(crate) fn mark_down(&self, reason: &str) {
        if self.link.swap(LINK_DOWN, Ordering::Relaxed) != LINK_DOWN {
            self.metrics.up.set(0.0);
            tracing::warn!(reason, "kafka unreachable");
        }
    }

    fn count_dropped_invalid(&self, reason: &DeliveryError) {
        self.dropped_invalid.fetch_add(1, Ordering::Relaxed);
        self.metrics.dropped_invalid_record.increment(1);
        tracing::debug!(%reason, "qos0 record not bridged");
    }
}

/// Routes librdkafka's callbacks into the bridge's counters and link state.
pub(crate) fn handle_client_error(shared: &Shared, error: &KafkaError, reason: &str) {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::AllBrokersDown) => shared.mark_down(reason),
        // Per-connection failures repeat on every reconnect attempt; the transition above is the
        // once-only signal, the rest is detail.
        _ => tracing::debug!(%error, reason, "kafka client error"),
    }
}

pub(crate) fn handle_client_log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
            tracing::error!(facility, message, "librdkafka")
        }
        _ => tracing::debug!(facility, message, "librdkafka"),
    }
}

/// Carried through librdkafka with each record to its delivery report.
pub(crate) struct Delivery {
    ack: Option<AckToken>,
    handed_at: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ProducerRole {
    Qos0,
    Acked,
}

pub(crate) struct ProducerCtx {
    shared: Arc<Shared>,
    acks: Arc<[flume::Sender<BridgeAck>]>,
    role: ProducerRole,
}

impl ClientContext for ProducerCtx {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        handle_client_log(level, facility, message);
    }

    fn stats(&self, statistics: Statistics) {
        if statistics
            .brokers
            .values()
            .any(|broker| broker.state == "UP")
        {
            self.shared.mark_up();
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        handle_client_error(&self.shared, &error, reason);
    }
}

impl ProducerContext for ProducerCtx {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, delivery: Box<Delivery>) {
        let shared = &self.shared;
        match self.role {
            ProducerRole::Qos0 => shared.qos0_in_flight.fetch_sub(1, Ordering::Relaxed),
            ProducerRole::Acked => shared.acked_in_flight.fetch_sub(1, Ordering::Relaxed),
        };
        let outcome = match result {
            Ok(_) => {
                shared.mark_up();
                shared.acknowledged.fetch_add(1, Ordering::Relaxed);
                shared.metrics.acknowledged.increment(1);
                shared
                    .metrics
                    .produce_latency_seconds
                    .record(delivery.handed_at.elapsed().as_secs_f64());
                Ok(())
            }
            Err((error, _)) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                shared.metrics.failed.increment(1);
                if self.role == ProducerRole::Qos0 {
                    shared
                        .dropped_delivery_failed
                        .fetch_add(1, Ordering::Relaxed);
                    shared.metrics.dropped_delivery_failed.increment(1);
                }
                Err(delivery_error(error))
            }
        };
        if let Some(token) = delivery.ack {
            send_ack(&self.acks, token, outcome);
        }
    }
}

fn delivery_error(error: &KafkaError) -> DeliveryError {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight) => {
            DeliveryError::ShutDown
        }
        _ => DeliveryError::Kafka(error.to_string()),
    }
}

/// Sends an ack to its shard. Blocks if that shard's ack channel is full: the shard sized it for its
/// inflight windows and drains it, and stalling the bridge is the backpressure we want then.
fn send_ack(
    acks: &[flume::Sender<BridgeAck>],
    token: AckToken,
    outcome: Result<(), DeliveryError>,
) {
    match acks.get(token.shard) {
        Some(sender) => {
            if sender
                .send(BridgeAck {
                    token: token.token,
                    outcome,
                })
                .is_err()
            {
                tracing::debug!(shard = token.shard, "shard ack channel closed, ack dropped");
            }
        }
        None => tracing::error!(
            shard = token.shard,
            shards = acks.len(),
            "kafka bridge record names an unknown shard, ack dropped"
        ),
    }
}

/// Which rule matched, and what the shard must do about acknowledgements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleMatch {
    pub rule: RuleIndex,
    pub ack: AckMode,
}

impl RuleMatch {
    /// True if the shard must attach an [`AckToken`] and wait for Kafka before PUBACK/PUBREC.
    /// QoS0 publishes never wait: there is nothing to acknowledge.
    pub fn wants_kafka_ack(&self, qos: u8) -> bool {
        self.ack == AckMode::Kafka && qos > 0
    }
}

/// Decides which publishes are bridged. Cheap to clone (shared rule list); one per shard.
#[derive(Debug, Clone)]
pub struct RuleMatcher {
    rules: Arc<[(String, AckMode)]>,
}

impl RuleMatcher {
    fn new(rules: &[OutboundRule]) -> Self {
        Self {
            rules: rules
                .iter()
                .map(|rule| (rule.filter.clone(), rule.ack))
                .collect(),
        }
    }

    /// The first rule (in configuration order) whose filter matches the topic name.
    pub fn matches(&self, topic: &str) -> Option<RuleMatch> {
        self.rules
            .iter()
            .position(|(filter, _)| crate::topic::matches(filter, topic))
            .map(|rule| RuleMatch {
                rule,
                ack: self.rules[rule].1,
            })
    }

    /// True if there are no outbound rules (the shard can skip matching altogether).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// Why [`BridgeSender::try_send`] did not take a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendErrorReason {
    /// The channel to the bridge is full (Kafka slow or down and buffers at their bounds).
    Full,
    /// The bridge has stopped.
    Stopped,
}

/// A record the bridge did not take. For QoS0 records it has already been counted as dropped; for
/// acknowledged records (counted as refused) the shard must not acknowledge the publisher.
#[derive(Debug, Clone, PartialEq)]
pub struct SendError {
    pub reason: SendErrorReason,
    pub record: Box<BridgeRecord>,
}

/// The shard side of the bridge channels. Cheap to clone; never blocks.
#[derive(Clone)]
pub struct BridgeSender {
    qos0: flume::Sender<BridgeRecord>,
    acked: flume::Sender<BridgeRecord>,
    shared: Arc<Shared>,
}

impl BridgeSender {
    /// Offers a record to the bridge without blocking. Records with an [`AckToken`] go to the
    /// acknowledged channel (never dropped once taken), the others to the QoS0 channel.
    pub fn try_send(&self, record: BridgeRecord) -> Result<(), SendError> {
        let acked = record.ack.is_some();
        let channel = if acked { &self.acked } else { &self.qos0 };
        let (reason, record) = match channel.try_send(record) {
            Ok(()) => return Ok(()),
            Err(flume::TrySendError::Full(record)) => (SendErrorReason::Full, record),
            Err(flume::TrySendError::Disconnected(record)) => (SendErrorReason::Stopped, record),
        };
        let metrics = &self.shared.metrics;
        match (acked, reason) {
            (false, SendErrorReason::Full) => {
                self.shared
                    .dropped_channel_full
                    .fetch_add(1, Ordering::Relaxed);
                metrics.dropped_channel_full.increment(1);
            }
            (false, SendErrorReason::Stopped) => metrics.dropped_bridge_stopped.increment(1),
            (true, SendErrorReason::Full) => {
                self.shared.refused.fetch_add(1, Ordering::Relaxed);
                metrics.refused_channel_full.increment(1);
            }
            (true, SendErrorReason::Stopped) => metrics.refused_bridge_stopped.increment(1),
        }
        Err(SendError {
            reason,
            record: Box::new(record),
        })
    }
}

/// A snapshot of the bridge counters (the same figures as the metrics, for tests and admin output).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BridgeStats {
    /// Records handed to librdkafka.
    pub produced: u64,
    /// Records Kafka acknowledged.
    pub acknowledged: u64,
    /// Records librdkafka definitively failed.
    pub failed: u64,
    /// QoS0 records dropped because the buffer was at `buffer_max_messages` (oldest first).
    pub dropped_buffer_full: u64,
    /// QoS0 records the shards dropped because the channel was full.
    pub dropped_channel_full: u64,
    /// QoS0 records librdkafka failed (e.g. `message.timeout.ms` expired while Kafka was down).
    pub dropped_delivery_failed: u64,
    /// QoS0 records or inbound messages that could not be mapped (bad UTF-8, bad topic, bad key).
    pub dropped_invalid: u64,
    /// Acknowledged records refused at `try_send` because the channel was full.
    pub refused: u64,
    /// QoS0 records held (queued in the bridge plus in librdkafka).
    pub buffered: usize,
    /// Acknowledged records handed to librdkafka and not yet reported.
    pub acked_in_flight: usize,
    /// Whether the last link signal said Kafka is reachable.
    pub kafka_up: bool,
    /// Kafka records handed to the broker (retries included).
    pub inbound_delivered: u64,
    /// Kafka records the broker accepted.
    pub inbound_accepted: u64,
    /// Offset commits Kafka confirmed.
    pub inbound_committed: u64,
}

/// Held by the broker. Dropping it shuts the bridge down (like [`BridgeHandle::shutdown`]).
pub struct BridgeHandle {
    sender: BridgeSender,
    matcher: RuleMatcher,
    shared: Arc<Shared>,
    wake: flume::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl BridgeHandle {
    /// A sender for one shard.
    pub fn sender(&self) -> BridgeSender {
        self.sender.clone()
    }

    /// The rule matcher for one shard.
    pub fn matcher(&self) -> RuleMatcher {
        self.matcher.clone()
    }

    pub fn stats(&self) -> BridgeStats {
        let shared = &self.shared;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        BridgeStats {
            produced: load(&shared.produced),
            acknowledged: load(&shared.acknowledged),
            failed: load(&shared.failed),
            dropped_buffer_full: load(&shared.dropped_buffer_full),
            dropped_channel_full: load(&shared.dropped_channel_full),
            dropped_delivery_failed: load(&shared.dropped_delivery_failed),
            dropped_invalid: load(&shared.dropped_invalid),
            refused: load(&shared.refused),
            buffered: shared.buffered.load(Ordering::Relaxed),
            acked_in_flight: shared.acked_in_flight.load(Ordering::Relaxed),
            kafka_up: shared.link.load(Ordering::Relaxed) == LINK_UP,
            inbound_delivered: load(&shared.inbound_delivered),
            inbound_accepted: load(&shared.inbound_accepted),
            inbound_committed: load(&shared.inbound_committed),
        }
    }

    /// Stops the bridge: hands what it holds to librdkafka, waits up to 5 s for deliveries, then
    /// answers every outstanding [`AckToken`] (`DeliveryError::ShutDown` for the undelivered).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Relaxed);
        // A full wake channel already holds a wake-up, so ignoring the error is right.
        let _ = self.wake.try_send(());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("kafka bridge thread panicked");
            }
        }
    }
}

impl Drop for BridgeHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Entry point.
pub struct Bridge;

impl Bridge {
    /// Validates the configuration, creates the Kafka clients and starts the bridge thread.
    /// Does not wait for Kafka: an unreachable cluster only shows up later in the link state.
    ///
    /// `acks[i]` receives the [`BridgeAck`]s for records whose `AckToken::shard == i`; size those
    /// channels for the shard's total inflight window (the bridge blocks when one is full).
    /// `inbound` receives Kafka→MQTT messages; the broker answers each with
    /// [`InboundMessage::accept`] or [`InboundMessage::reject`].
    pub fn start(
        config: BridgeConfig,
        acks: Vec<flume::Sender<BridgeAck>>,
        inbound: flume::Sender<InboundMessage>,
    ) -> Result<BridgeHandle, BridgeError> {
        let validated = config.validate()?;
        let shared = Arc::new(Shared::new());
        shared.metrics.up.set(0.0);
        let acks: Arc<[flume::Sender<BridgeAck>]> = acks.into();

        let mut qos0_config = validated.raw.producer_client_config();
        default_setting(
            &mut qos0_config,
            "statistics.interval.ms",
            STATISTICS_INTERVAL_MS,
        );
        let mut acked_config = qos0_config.clone();
        // Acknowledged records are never given up by time: librdkafka retries until Kafka takes
        // them or fails them definitively; the shards' inflight windows bound how many wait.
        acked_config.set("message.timeout.ms", "0");
        let qos0_producer = create_producer(&qos0_config, &shared, &acks, ProducerRole::Qos0)?;
        let acked_producer = create_producer(&acked_config, &shared, &acks, ProducerRole::Acked)?;
        let inbound_side = InboundSide::new(&validated, &shared, inbound)?;

        let capacity = validated.raw.channel_capacity;
        let (qos0_tx, qos0_rx) = flume::bounded(capacity);
        let (acked_tx, acked_rx) = flume::bounded(capacity);
        let (wake_tx, wake_rx) = flume::bounded(1);
        let buffer_max = validated.raw.buffer_max_messages;
        let worker = Worker {
            qos0_handoff_max: (buffer_max / 2).clamp(1, QOS0_HANDOFF_MAX),
            buffer_max,
            rules: validated.rules.clone(),
            qos0_rx,
            acked_rx,
            wake_rx,
            qos0_open: true,
            acked_open: true,
            qos0_producer,
            acked_producer,
            qos0_buffer: VecDeque::with_capacity(buffer_max.min(DRAIN_BATCH_MAX)),
            acked_pending: VecDeque::new(),
            acks,
            shared: Arc::clone(&shared),
            inbound: inbound_side,
            topic_buffer: String::new(),
            drop_log: DropLog::new(),
        };
        let thread = std::thread::Builder::new()
            .name("ringmq-bridge-kafka".to_owned())
            .spawn(move || worker.run())?;
        tracing::info!(
            bootstrap_servers = %validated.raw.bootstrap_servers,
            rules = validated.rules.len(),
            inbound_rules = validated.inbound.len(),
            "kafka bridge started"
        );
        Ok(BridgeHandle {
            sender: BridgeSender {
                qos0: qos0_tx,
                acked: acked_tx,
                shared: Arc::clone(&shared),
            },
            matcher: RuleMatcher::new(&validated.rules),
            shared,
            wake: wake_tx,
            thread: Some(thread),
        })
    }
}

/// Sets `name` unless the operator already did.
pub(crate) fn default_setting(config: &mut ClientConfig, name: &str, value: &str) {
    if config.get(name).is_none() {
        config.set(name, value);
    }
}

fn create_producer(
    config: &ClientConfig,
    shared: &Arc<Shared>,
    acks: &Arc<[flume::Sender<BridgeAck>]>,
    role: ProducerRole,
) -> Result<BaseProducer<ProducerCtx>, BridgeError> {
    config
        .create_with_context(ProducerCtx {
            shared: Arc::clone(shared),
            acks: Arc::clone(acks),
            role,
        })
        .map_err(|source| BridgeError::Client {
            role: match role {
                ProducerRole::Qos0 => "producer",
                ProducerRole::Acked => "acknowledged producer",
            },
            source,
        })
}

enum ProduceError {
    /// librdkafka's queue is full: keep the record and retry later.
    QueueFull,
    /// Definitive: the record cannot be produced.
    Rejected(DeliveryError),
}

/// Maps a record onto a Kafka record and hands it to librdkafka.
fn produce(
    producer: &BaseProducer<ProducerCtx>,
    rules: &[OutboundRule],
    topic_buffer: &mut String,
    record: &BridgeRecord,
) -> Result<(), ProduceError> {
    let invalid = |reason: String| ProduceError::Rejected(DeliveryError::InvalidRecord(reason));
    let rule = rules
        .get(record.rule)
        .ok_or_else(|| invalid(format!("rule {} does not exist", record.rule)))?;
    let topic = std::str::from_utf8(&record.topic)
        .map_err(|_| invalid("mqtt topic is not utf-8".to_owned()))?;
    let client_id = std::str::from_utf8(&record.client_id)
        .map_err(|_| invalid("client id is not utf-8".to_owned()))?;
    let qos = QOS_TEXT
        .get(usize::from(record.qos))
        .ok_or_else(|| invalid(format!("qos {} is not 0, 1 or 2", record.qos)))?;
    let input = TemplateInput {
        topic,
        client_id,
        key: None,
    };
    rule.kafka_topic
        .expand_into(input, topic_buffer)
        .map_err(|error| invalid(error.to_string()))?;
    if !rule.kafka_topic.is_literal() && !is_valid_kafka_topic(topic_buffer) {
        return Err(invalid(format!(
            "expanded kafka topic {topic_buffer:?} is not a legal topic name"
        )));
    }
    let publish_time_ms = record.publish_time_ms.to_string();
    let mut kafka_headers = OwnedHeaders::new_with_capacity(4 + record.user_properties.len())
        .insert(Header {
            key: headers::MQTT_TOPIC,
            value: Some(topic),
        })
        .insert(Header {
            key: headers::MQTT_CLIENT_ID,
            value: Some(client_id),
        })
        .insert(Header {
            key: headers::MQTT_QOS,
            value: Some(*qos),
        })
        .insert(Header {
            key: headers::MQTT_PUBLISH_TIME_MS,
            value: Some(publish_time_ms.as_str()),
        });
    for (name, value) in &record.user_properties {
        // MQTT guarantees UTF-8 names; a name that is not is skipped rather than failing the record.
        if let Ok(name) = std::str::from_utf8(name) {
            kafka_headers = kafka_headers.insert(Header {
                key: name,
                value: Some(&value[..]),
            });
        }
    }
    let delivery = Box::new(Delivery {
        ack: record.ack,
        handed_at: Instant::now(),
    });
    let mut kafka_record =
        BaseRecord::<str, [u8], Box<Delivery>>::with_opaque_to(topic_buffer.as_str(), delivery)
            .payload(&record.payload[..])
            .headers(kafka_headers);
    if let Some(key) = rule.key.extract(topic, client_id) {
        kafka_record = kafka_record.key(key);
    }
    match producer.send(kafka_record) {
        Ok(()) => Ok(()),
        Err((error, _)) => match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::QueueFull) => Err(ProduceError::QueueFull),
            _ => Err(ProduceError::Rejected(DeliveryError::Kafka(
                error.to_string(),
            ))),
        },
    }
}

/// Counts since the last "dropped records" line.
struct DropLog {
    last_line_at: Instant,
    last: [u64; 4],
}

impl DropLog {
    fn new() -> Self {
        Self {
            last_line_at: Instant::now(),
            last: [0; 4],
        }
    }

    fn report(&mut self, shared: &Shared) {
        if self.last_line_at.elapsed() < DROP_LOG_INTERVAL {
            return;
        }
        let now = [
            shared.dropped_buffer_full.load(Ordering::Relaxed),
            shared.dropped_channel_full.load(Ordering::Relaxed),
            shared.dropped_delivery_failed.load(Ordering::Relaxed),
            shared.dropped_invalid.load(Ordering::Relaxed),
        ];
        if now != self.last {
            tracing::warn!(
                buffer_full = now[0] - self.last[0],
                channel_full = now[1] - self.last[1],
                delivery_failed = now[2] - self.last[2],
                invalid = now[3] - self.last[3],
                interval_s = self.last_line_at.elapsed().as_secs(),
                "kafka bridge dropped records"
            );
            self.last = now;
        }
        self.last_line_at = Instant::now();
    }
}

enum Woke {
    Nothing,
    Qos0(BridgeRecord),
    Acked(BridgeRecord),
    Qos0Closed,
    AckedClosed,
}

struct Worker {
    buffer_max: usize,
    qos0_handoff_max: usize,
    rules: Vec<OutboundRule>,
    qos0_rx: flume::Receiver<BridgeRecord>,
    acked_rx: flume::Receiver<BridgeRecord>,
    wake_rx: flume::Receiver<()>,
    qos0_open: bool,
    acked_open: bool,
    qos0_producer: BaseProducer<ProducerCtx>,
    acked_producer: BaseProducer<ProducerCtx>,
    /// QoS0 records not yet handed to librdkafka; the drop-oldest policy applies here.
    qos0_buffer: VecDeque<BridgeRecord>,
    /// Acknowledged records librdkafka refused with "queue full"; bounded by [`ACKED_PENDING_MAX`].
    acked_pending: VecDeque<BridgeRecord>,
    acks: Arc<[flume::Sender<BridgeAck>]>,
    shared: Arc<Shared>,
    inbound: InboundSide,
    topic_buffer: String,
    drop_log: DropLog,
}

impl Worker {
    fn run(mut self) {
        while !self.shared.shutdown.load(Ordering::Relaxed) {
            let mut progressed = self.drain_acked();
            progressed |= self.drain_qos0();
            let handed = self.hand_off_acked() + self.hand_off_qos0();
            if handed > 0 {
                self.shared.metrics.batch_size.record(handed as f64);
                progressed = true;
            }
            self.acked_producer.poll(Duration::ZERO);
            self.qos0_producer.poll(Duration::ZERO);
            progressed |= self.inbound.turn();
            self.publish_gauges();
            self.drop_log.report(&self.shared);
            if !progressed {
                self.wait();
            }
        }
        self.finish();
    }

    fn publish_gauges(&self) {
        let buffered = self.qos0_buffer.len() + self.shared.qos0_in_flight.load(Ordering::Relaxed);
        self.shared.buffered.store(buffered, Ordering::Relaxed);
        self.shared.metrics.buffered.set(buffered as f64);
    }

    fn in_flight(&self) -> bool {
        !self.qos0_buffer.is_empty()
            || !self.acked_pending.is_empty()
            || self.shared.qos0_in_flight.load(Ordering::Relaxed) > 0
            || self.shared.acked_in_flight.load(Ordering::Relaxed) > 0
            || self.inbound.is_active()
    }

    /// Sleeps until a record or a wake-up arrives, or the poll period passes.
    fn wait(&mut self) {
        let timeout = if self.in_flight() {
            BUSY_WAIT
        } else {
            IDLE_WAIT
        };
        let mut selector = flume::Selector::new().recv(&self.wake_rx, |_| Woke::Nothing);
        if self.qos0_open {
            selector = selector.recv(&self.qos0_rx, |received| match received {
                Ok(record) => Woke::Qos0(record),
                Err(_) => Woke::Qos0Closed,
            });
        }
        if self.acked_open && self.acked_pending.len() < ACKED_PENDING_MAX {
            selector = selector.recv(&self.acked_rx, |received| match received {
                Ok(record) => Woke::Acked(record),
                Err(_) => Woke::AckedClosed,
            });
        }
        match selector.wait_timeout(timeout) {
            Ok(Woke::Qos0(record)) => self.enqueue_qos0(record),
            Ok(Woke::Acked(record)) => self.acked_pending.push_back(record),
            Ok(Woke::Qos0Closed) => self.qos0_open = false,
            Ok(Woke::AckedClosed) => self.acked_open = false,
            Ok(Woke::Nothing) | Err(_) => {}
        }
    }

    fn drain_acked(&mut self) -> bool {
        let mut taken = 0;
        while taken < DRAIN_BATCH_MAX && self.acked_pending.len() < ACKED_PENDING_MAX {
            match self.acked_rx.try_recv() {
                Ok(record) => {
                    self.acked_pending.push_back(record);
                    taken += 1;
                }
                Err(flume::TryRecvError::Empty) => break,
                Err(flume::TryRecvError::Disconnected) => {
                    self.acked_open = false;
                    break;
                }
            }
        }
        taken > 0
    }

    fn drain_qos0(&mut self) -> bool {
        let mut taken = 0;
        while taken < DRAIN_BATCH_MAX {
            match self.qos0_rx.try_recv() {
                Ok(record) => {
                    self.enqueue_qos0(record);
                    taken += 1;
                }
                Err(flume::TryRecvError::Empty) => break,
                Err(flume::TryRecvError::Disconnected) => {
                    self.qos0_open = false;
                    break;
                }
            }
        }
        taken > 0
    }

    /// Adds a QoS0 record, dropping the oldest queued one when the bridge holds `buffer_max`.
    fn enqueue_qos0(&mut self, record: BridgeRecord) {
        let held = self.qos0_buffer.len() + self.shared.qos0_in_flight.load(Ordering::Relaxed);
        if held >= self.buffer_max {
            self.shared
                .dropped_buffer_full
                .fetch_add(1, Ordering::Relaxed);
            self.shared.metrics.dropped_buffer_full.increment(1);
            // Records already inside librdkafka cannot be taken back one by one; if all held
            // records are there, the newest is the only one that can go.
            if self.qos0_buffer.pop_front().is_none() {
                return;
            }
        }
        self.qos0_buffer.push_back(record);
    }

    fn hand_off_qos0(&mut self) -> usize {
        let mut handed = 0;
        while self.shared.qos0_in_flight.load(Ordering::Relaxed) < self.qos0_handoff_max {
            let Some(record) = self.qos0_buffer.pop_front() else {
                break;
            };
            match produce(
                &self.qos0_producer,
                &self.rules,
                &mut self.topic_buffer,
                &record,
            ) {
                Ok(()) => {
                    self.shared.qos0_in_flight.fetch_add(1, Ordering::Relaxed);
                    self.count_produced();
                    handed += 1;
                }
                Err(ProduceError::QueueFull) => {
                    self.qos0_buffer.push_front(record);
                    break;
                }
                Err(ProduceError::Rejected(reason)) => self.shared.count_dropped_invalid(&reason),
            }
        }
        handed
    }

    fn hand_off_acked(&mut self) -> usize {
        let mut handed = 0;
        while let Some(record) = self.acked_pending.pop_front() {
            match produce(
                &self.acked_producer,
                &self.rules,
                &mut self.topic_buffer,
                &record,
            ) {
                Ok(()) => {
                    self.shared.acked_in_flight.fetch_add(1, Ordering::Relaxed);
                    self.count_produced();
                    handed += 1;
                }
                Err(ProduceError::QueueFull) => {
                    self.acked_pending.push_front(record);
                    break;
                }
                Err(ProduceError::Rejected(reason)) => {
                    self.shared.failed.fetch_add(1, Ordering::Relaxed);
                    self.shared.metrics.failed.increment(1);
                    tracing::debug!(%reason, "acknowledged record not bridged");
                    if let Some(token) = record.ack {
                        send_ack(&self.acks, token, Err(reason));
                    }
                }
            }
        }
        handed
    }

    fn count_produced(&self) {
        self.shared.produced.fetch_add(1, Ordering::Relaxed);
        self.shared.metrics.produced.increment(1);
    }

    /// Best effort: hand over and flush what is held, then answer every outstanding token.
    fn finish(mut self) {
        self.drain_acked();
        self.drain_qos0();
        let deadline = Instant::now() + SHUTDOWN_FLUSH_TIMEOUT;
        while Instant::now() < deadline {
            self.hand_off_acked();
            self.hand_off_qos0();
            self.acked_producer.poll(BUSY_WAIT);
            self.qos0_producer.poll(Duration::ZERO);
            let outstanding = self.acked_pending.len()
                + self.qos0_buffer.len()
                + self.shared.acked_in_flight.load(Ordering::Relaxed)
                + self.shared.qos0_in_flight.load(Ordering::Relaxed);
            if outstanding == 0 {
                break;
            }
        }
        // Records still in the acknowledged channel were accepted by try_send: answer them too.
        while let Ok(record) = self.acked_rx.try_recv() {
            self.acked_pending.push_back(record);
        }
        for record in self.acked_pending.drain(..) {
            if let Some(token) = record.ack {
                send_ack(&self.acks, token, Err(DeliveryError::ShutDown));
            }
        }
        let abandoned = self.qos0_buffer.len() + self.qos0_rx.drain().count();
        if abandoned > 0 {
            self.shared
                .metrics
                .dropped_bridge_stopped
                .increment(abandoned as u64);
            tracing::warn!(
                abandoned,
                "kafka bridge stopped with qos0 records undelivered"
            );
        }
        self.qos0_buffer.clear();
        // Dropping the producers purges what librdkafka still holds; the purge reports arrive
        // through the delivery callback as DeliveryError::ShutDown.
        self.publish_gauges();
        tracing::info!("kafka bridge stopped");
    }
}
