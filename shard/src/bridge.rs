//! The runtime's side of the Kafka bridge: [`KafkaBridge`] implements the engine's
//! [`engine::bridge::Bridge`] with `bridge-kafka`'s sender and rule matcher, and two loops feed
//! Kafka's answers and consumed records back into the engine.
//!
//! The bridge runs on its own thread (`bridge-kafka`); everything here runs on the shard.

use std::num::NonZeroU16;
use std::rc::Rc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bridge_kafka::{AckToken, BridgeAck, BridgeRecord, BridgeSender, InboundMessage, RuleMatcher};
use bytes::Bytes;
use engine::bridge::{Bridge, Offer};
use engine::message::{Message, ShardId};
use tracing::warn;
use wire::{QoS, Utf8Bytes};

use crate::runtime::ShardCtx;

/// Acknowledgements one shard may have waiting in its channel from the bridge. The bridge waits
/// when it is full, so it is sized for many clients' whole inflight windows.
pub const ACK_CHANNEL_CAPACITY: usize = 65_536;
/// Kafka records waiting to be published into MQTT.
pub const INBOUND_CHANNEL_CAPACITY: usize = 4096;

/// What one shard holds of the bridge.
pub struct ShardBridge {
    pub sender: BridgeSender,
    pub matcher: RuleMatcher,
    pub acks: flume::Receiver<BridgeAck>,
}

/// The bridge as handed to [`crate::runtime::start`]: one [`ShardBridge`] per shard, and the
/// Kafka → MQTT records, which any shard may take.
pub struct BridgeLink {
    pub shards: Vec<ShardBridge>,
    pub inbound: flume::Receiver<InboundMessage>,
}

/// The engine's bridge on one shard.
pub struct KafkaBridge {
    pub shard: ShardId,
    pub sender: BridgeSender,
    pub matcher: RuleMatcher,
}

impl Bridge for KafkaBridge {
    fn offer(
        &mut self,
        client_id: &Utf8Bytes,
        message: &Message,
        packet_id: Option<NonZeroU16>,
        token: u64,
    ) -> Offer {
        if self.matcher.is_empty() {
            return Offer::AckNow;
        }
        let publish = &message.publish;
        let Some(rule) = self.matcher.matches(publish.topic.as_str()) else {
            return Offer::AckNow;
        };
        let qos = publish.qos as u8;
        let wants_ack = rule.wants_kafka_ack(qos) && packet_id.is_some();
        let record = BridgeRecord {
            rule: rule.rule,
            topic: publish.topic.as_bytes().clone(),
            client_id: client_id.as_bytes().clone(),
            qos,
            payload: publish.payload.clone(),
            user_properties: publish
                .properties
                .user_properties
                .iter()
                .map(|(k, v)| (k.as_bytes().clone(), v.as_bytes().clone()))
                .collect(),
            publish_time_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            ack: wants_ack.then_some(AckToken {
                shard: usize::from(self.shard),
                token,
            }),
        };
        match (self.sender.try_send(record), wants_ack) {
            (Ok(()), true) => Offer::AckLater,
            (Ok(()), false) => Offer::AckNow,
            // The sender counted the refusal (a record that needs Kafka's ack).
            (Err(_), true) => Offer::Refused,
            // The sender counted the drop (QoS 0 / ack = "none").
            (Err(_), false) => Offer::AckNow,
        }
    }
}

/// Answers clients whose bridged publishes Kafka acknowledged (or definitively failed).
pub async fn ack_loop(ctx: Rc<ShardCtx>, acks: flume::Receiver<BridgeAck>) {
    while let Ok(ack) = acks.recv_async().await {
        let outcome = ack.outcome.map_err(|e| e.to_string());
        ctx.engine
            .borrow_mut()
            .handle_bridge_ack(ack.token, outcome);
        ctx.kick();
    }
}

/// Publishes records the bridge consumed from Kafka into MQTT, then tells the bridge it may
/// commit their offsets.
pub async fn inbound_loop(ctx: Rc<ShardCtx>, inbound: flume::Receiver<InboundMessage>) {
    while let Ok(record) = inbound.recv_async().await {
        let qos = QoS::try_from(record.qos).unwrap_or(QoS::AtLeastOnce);
        let user_properties = record
            .headers
            .iter()
            .filter_map(|(name, value)| {
                let value = std::str::from_utf8(value).ok()?;
                Some((Utf8Bytes::from(name.as_str()), Utf8Bytes::from(value)))
            })
            .collect();
        let published = ctx.engine.borrow_mut().publish_inbound(
            &record.topic,
            qos,
            false,
            Bytes::copy_from_slice(&record.payload),
            user_properties,
            Instant::now(),
        );
        if !published {
            warn!(topic = %record.topic, "kafka record maps to an invalid mqtt topic; skipped");
        }
        ctx.kick();
        // Accepted either way so the offset moves on: an invalid topic can never be published.
        record.accept();
    }
}
