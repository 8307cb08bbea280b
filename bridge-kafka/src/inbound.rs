//! Kafka→MQTT: consumers polled on the bridge thread, messages handed to the broker, offsets
//! committed only after the broker accepted every message below them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use metrics::Gauge;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};

use crate::bridge::{default_setting, handle_client_error, handle_client_log, Shared};
use crate::config::{InboundRule, ValidatedConfig};
use crate::metrics_names::Metrics;
use crate::template::TemplateInput;
use crate::{BridgeError, InboundMessage};

/// Most messages of one inbound rule handed to the broker and not yet accepted. At this bound the
/// bridge stops polling that consumer (librdkafka's own prefetch queue is bounded by
/// `queued.max.messages.kbytes`). A broker that stays stalled longer than `max.poll.interval.ms`
/// makes the consumer leave its group; its messages are then redelivered (at least once).
pub const INBOUND_INFLIGHT_MAX: usize = 1_024;
/// A message the broker rejected is offered again after this delay.
pub const INBOUND_RETRY_DELAY: Duration = Duration::from_millis(500);
/// Messages polled from one consumer per loop turn.
const INBOUND_POLL_BATCH: usize = 256;

/// What the broker did with an [`InboundMessage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundOutcome {
    /// The broker took responsibility: the offset may be committed.
    Accepted,
    /// Not now: the bridge offers the message again later.
    Rejected,
}

/// Sent by [`InboundMessage::accept`] / [`InboundMessage::reject`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundReply {
    pub id: u64,
    pub outcome: InboundOutcome,
}

pub(crate) struct ConsumerCtx {
    shared: Arc<Shared>,
    lag: Gauge,
    topic: String,
}

impl ClientContext for ConsumerCtx {
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
        if let Some(topic) = statistics.topics.get(&self.topic) {
            let lag: i64 = topic
                .partitions
                .values()
                .map(|partition| partition.consumer_lag)
                .filter(|lag| *lag >= 0)
                .sum();
            self.lag.set(lag as f64);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        handle_client_error(&self.shared, &error, reason);
    }
}

impl ConsumerContext for ConsumerCtx {
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                self.shared
                    .inbound_committed
                    .fetch_add(1, Ordering::Relaxed);
                self.shared.metrics.inbound_committed.increment(1);
            }
            // Typically a revoked partition; its messages are redelivered to the new owner.
            Err(error) => {
                tracing::debug!(%error, partitions = offsets.count(), "kafka offset commit failed")
            }
        }
    }
}

struct InboundConsumer {
    rule: InboundRule,
    consumer: BaseConsumer<ConsumerCtx>,
    /// Per partition: offsets handed out, and whether the broker accepted them.
    partitions: HashMap<i32, BTreeMap<i64, bool>>,
    outstanding: usize,
    /// A message the broker's channel had no room for; nothing else is polled until it goes.
    stalled: Option<InboundMessage>,
}

struct Outstanding {
    consumer: usize,
    partition: i32,
    offset: i64,
    message: InboundMessage,
}

pub(crate) struct InboundSide {
    consumers: Vec<InboundConsumer>,
    to_broker: flume::Sender<InboundMessage>,
    reply_tx: flume::Sender<InboundReply>,
    reply_rx: flume::Receiver<InboundReply>,
    outstanding: HashMap<u64, Outstanding>,
    retry: VecDeque<(Instant, u64)>,
    next_id: u64,
    shared: Arc<Shared>,
}

impl InboundSide {
    pub(crate) fn new(
        config: &ValidatedConfig,
        shared: &Arc<Shared>,
        to_broker: flume::Sender<InboundMessage>,
    ) -> Result<Self, BridgeError> {
        let mut consumers = Vec::with_capacity(config.inbound.len());
        for rule in &config.inbound {
            let mut client_config = config.raw.consumer_client_config(&rule.group_id);
            default_setting(&mut client_config, "statistics.interval.ms", "1000");
            let consumer: BaseConsumer<ConsumerCtx> = client_config
                .create_with_context(ConsumerCtx {
                    shared: Arc::clone(shared),
                    lag: Metrics::consumer_lag(&rule.group_id, &rule.kafka_topic),
                    topic: rule.kafka_topic.clone(),
                })
                .map_err(|source| BridgeError::Client {
                    role: "consumer",
                    source,
                })?;
            consumer
                .subscribe(&[rule.kafka_topic.as_str()])
                .map_err(|source| BridgeError::Subscribe {
                    topic: rule.kafka_topic.clone(),
                    source,
                })?;
            consumers.push(InboundConsumer {
                rule: rule.clone(),
                consumer,
                partitions: HashMap::new(),
                outstanding: 0,
                stalled: None,
            });
        }
        // Sized for every message that can be outstanding, so the broker's reply never blocks.
        let (reply_tx, reply_rx) = flume::bounded(INBOUND_INFLIGHT_MAX * consumers.len().max(1));
        Ok(Self {
            consumers,
            to_broker,
            reply_tx,
            reply_rx,
            outstanding: HashMap::new(),
            retry: VecDeque::new(),
            next_id: 0,
            shared: Arc::clone(shared),
        })
    }

    /// True while consumers exist (they need regular polling) or messages are outstanding.
    pub(crate) fn is_active(&self) -> bool {
        !self.consumers.is_empty()
    }

    /// One loop turn; returns true if anything moved.
    pub(crate) fn turn(&mut self) -> bool {
        if self.consumers.is_empty() {
            return false;
        }
        let mut progressed = self.handle_replies();
        progressed |= self.send_retries();
        for index in 0..self.consumers.len() {
            progressed |= self.poll_consumer(index);
        }
        progressed
    }

    fn handle_replies(&mut self) -> bool {
        let mut progressed = false;
        while let Ok(reply) = self.reply_rx.try_recv() {
            progressed = true;
            match reply.outcome {
                InboundOutcome::Accepted => {
                    let Some(done) = self.outstanding.remove(&reply.id) else {
                        continue;
                    };
                    self.shared.inbound_accepted.fetch_add(1, Ordering::Relaxed);
                    self.settle(done.consumer, done.partition, done.offset);
                }
                InboundOutcome::Rejected => {
                    if self.outstanding.contains_key(&reply.id) {
                        self.retry
                            .push_back((Instant::now() + INBOUND_RETRY_DELAY, reply.id));
                    }
                }
            }
        }
        progressed
    }

    fn send_retries(&mut self) -> bool {
        let mut progressed = false;
        while let Some(&(due, id)) = self.retry.front() {
            if due > Instant::now() {
                break;
            }
            let Some(outstanding) = self.outstanding.get(&id) else {
                self.retry.pop_front();
                continue;
            };
            match self.to_broker.try_send(outstanding.message.clone()) {
                Ok(()) => {
                    self.retry.pop_front();
                    self.count_delivered();
                    progressed = true;
                }
                Err(_) => break,
            }
        }
        progressed
    }

    /// Marks an offset done and commits the partition up to the first offset not yet accepted.
    fn settle(&mut self, consumer_index: usize, partition: i32, offset: i64) {
        let Some(consumer) = self.consumers.get_mut(consumer_index) else {
            return;
        };
        consumer.outstanding = consumer.outstanding.saturating_sub(1);
        let offsets = consumer.partitions.entry(partition).or_default();
        if let Some(accepted) = offsets.get_mut(&offset) {
            *accepted = true;
        }
        let mut commit_to = None;
        while let Some(entry) = offsets.first_entry() {
            if !*entry.get() {
                break;
            }
            commit_to = Some(*entry.key() + 1);
            entry.remove();
        }
        if let Some(next) = commit_to {
            let mut list = TopicPartitionList::with_capacity(1);
            let committed = list
                .add_partition_offset(&consumer.rule.kafka_topic, partition, Offset::Offset(next))
                .and_then(|()| consumer.consumer.commit(&list, CommitMode::Async));
            if let Err(error) = committed {
                tracing::debug!(%error, partition, offset = next, "kafka offset commit not sent");
            }
        }
    }

    fn poll_consumer(&mut self, index: usize) -> bool {
        let mut progressed = false;
        if let Some(message) = self.consumers[index].stalled.take() {
            match self.to_broker.try_send(message) {
                Ok(()) => {
                    self.count_delivered();
                    progressed = true;
                }
                Err(flume::TrySendError::Full(message))
                | Err(flume::TrySendError::Disconnected(message)) => {
                    self.consumers[index].stalled = Some(message);
                    return false;
                }
            }
        }
        for _ in 0..INBOUND_POLL_BATCH {
            if self.consumers[index].outstanding >= INBOUND_INFLIGHT_MAX {
                break;
            }
            let polled = match self.consumers[index].consumer.poll(Duration::ZERO) {
                None => break,
                Some(Err(error)) => {
                    tracing::debug!(%error, "kafka consumer error");
                    continue;
                }
                Some(Ok(message)) => RawMessage::copy_from(&message),
            };
            let polled = self.take_message(index, polled);
            progressed = true;
            let Some(message) = polled else {
                continue;
            };
            match self.to_broker.try_send(message) {
                Ok(()) => self.count_delivered(),
                Err(flume::TrySendError::Full(message))
                | Err(flume::TrySendError::Disconnected(message)) => {
                    self.consumers[index].stalled = Some(message);
                    break;
                }
            }
        }
        progressed
    }

    fn count_delivered(&self) {
        self.shared
            .inbound_delivered
            .fetch_add(1, Ordering::Relaxed);
        self.shared.metrics.inbound_delivered.increment(1);
    }

    /// Records a polled Kafka message as outstanding and builds the broker's message, or settles
    /// it at once when it cannot be mapped to an MQTT topic.
    fn take_message(&mut self, index: usize, raw: RawMessage) -> Option<InboundMessage> {
        let RawMessage {
            partition,
            offset,
            key,
            payload,
            headers,
        } = raw;
        let consumer = &mut self.consumers[index];
        consumer
            .partitions
            .entry(partition)
            .or_default()
            .insert(offset, false);
        consumer.outstanding += 1;
        let key_text = key.as_deref().map(std::str::from_utf8);
        let topic = match key_text {
            Some(Ok(key)) if is_safe_topic_level(key) => {
                consumer.rule.mqtt_topic.expand(TemplateInput {
                    key: Some(key),
                    ..TemplateInput::default()
                })
            }
            None => consumer.rule.mqtt_topic.expand(TemplateInput::default()),
            Some(_) => Err(crate::ExpandError::MissingKey),
        };
        let topic = match topic {
            Ok(topic) if !topic.is_empty() => topic,
            _ => {
                // A key that would change the topic structure ('/', wildcards) or is missing is
                // never published; it is skipped and its offset settled, so the partition moves on.
                self.shared.dropped_invalid.fetch_add(1, Ordering::Relaxed);
                self.shared.metrics.dropped_invalid_key.increment(1);
                tracing::debug!(
                    partition,
                    offset,
                    "kafka record key cannot form an mqtt topic"
                );
                self.settle(index, partition, offset);
                return None;
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let message = InboundMessage {
            id,
            rule: index,
            topic,
            key,
            payload,
            qos: consumer.rule.qos,
            headers,
            reply: self.reply_tx.clone(),
        };
        self.outstanding.insert(
            id,
            Outstanding {
                consumer: index,
                partition,
                offset,
                message: message.clone(),
            },
        );
        Some(message)
    }
}

/// The parts of a polled Kafka message the bridge keeps (copied out of librdkafka's buffer).
struct RawMessage {
    partition: i32,
    offset: i64,
    key: Option<Bytes>,
    payload: Bytes,
    headers: Vec<(String, Bytes)>,
}

impl RawMessage {
    fn copy_from(message: &BorrowedMessage<'_>) -> Self {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| {
                        (
                            header.key.to_owned(),
                            Bytes::copy_from_slice(header.value.unwrap_or_default()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(Bytes::copy_from_slice),
            payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
            headers,
        }
    }
}

/// A key may fill one topic level: non-empty, no separator, no wildcard, no U+0000.
fn is_safe_topic_level(key: &str) -> bool {
    !key.is_empty() && !key.contains(['/', '+', '#', '\0'])
}

#[cfg(test)]
mod tests {
    use super::is_safe_topic_level;

    #[test]
    fn key_must_fill_exactly_one_level() {
        assert!(is_safe_topic_level("vin-123"));
        assert!(!is_safe_topic_level(""));
        assert!(!is_safe_topic_level("a/b"));
        // [MQTT-3.3.2-2] the resulting topic name must not contain wildcards.
        assert!(!is_safe_topic_level("+"));
        assert!(!is_safe_topic_level("#"));
        assert!(!is_safe_topic_level("a\0"));
    }
}
