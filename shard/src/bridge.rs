//! The shard's side of the Kafka bridge: offering matching publishes to the bridge shard,
//! answering clients once Kafka acknowledged (rules with `ack = "kafka"`), and publishing records
//! the bridge consumed from Kafka into MQTT.
//!
//! The bridge runs on its own thread (`bridge-kafka`); everything here runs on the shard.

use std::num::NonZeroU16;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bridge_kafka::{AckToken, BridgeAck, BridgeRecord, BridgeSender, InboundMessage, RuleMatcher};
use bytes::{Bytes, BytesMut};
use tracing::{debug, warn};
use wire::{Packet, ProtocolVersion, PubAck, Publish, QoS, ReasonCode, Utf8Bytes};

use crate::message::{Message, ShardId};
use crate::runtime::ShardCtx;
use crate::session::{CloseReason, Outbound};

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

/// A PUBACK/PUBREC owed once Kafka acknowledges.
#[derive(Debug, Clone, Copy)]
pub struct PendingKafkaAck {
    pub slot: u32,
    pub generation: u32,
    pub packet_id: NonZeroU16,
    pub qos: QoS,
}

/// What offering a publish to the bridge decided.
pub enum Offer {
    /// Not bridged, or bridged without waiting for Kafka: acknowledge the client as usual.
    AckNow,
    /// Bridged with `ack = "kafka"`: the PUBACK/PUBREC goes out when Kafka acknowledges.
    AckLater,
    /// The bridge refused a record that needs Kafka's acknowledgement (its channel is full): do not
    /// acknowledge and do not route, so the client's inflight window backpressures it.
    Refused,
}

/// Offers a publish accepted from a client to the bridge, if a rule matches its topic.
pub fn offer(
    ctx: &ShardCtx,
    slot: u32,
    generation: u32,
    message: &Message,
    packet_id: Option<NonZeroU16>,
) -> Offer {
    let Some(bridge) = &ctx.bridge else {
        return Offer::AckNow;
    };
    if bridge.matcher.is_empty() {
        return Offer::AckNow;
    }
    let publish = &message.publish;
    let Some(rule) = bridge.matcher.matches(publish.topic.as_str()) else {
        return Offer::AckNow;
    };
    let qos = publish.qos as u8;
    let wants_ack = rule.wants_kafka_ack(qos) && packet_id.is_some();
    let mut state = ctx.state.borrow_mut();
    let shard: ShardId = state.id;
    let client_id = state
        .session(slot)
        .map(|s| s.client_id.as_bytes().clone())
        .unwrap_or_default();
    let token = if wants_ack {
        state.next_kafka_token += 1;
        Some(state.next_kafka_token)
    } else {
        None
    };
    let record = BridgeRecord {
        rule: rule.rule,
        topic: publish.topic.as_bytes().clone(),
        client_id,
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
        ack: token.map(|token| AckToken {
            shard: usize::from(shard),
            token,
        }),
    };
    match (bridge.sender.try_send(record), token, packet_id) {
        (Ok(()), Some(token), Some(packet_id)) => {
            state.kafka_pending.insert(
                token,
                PendingKafkaAck {
                    slot,
                    generation,
                    packet_id,
                    qos: publish.qos,
                },
            );
            Offer::AckLater
        }
        (Ok(()), _, _) => Offer::AckNow,
        // The sender counted the drop (QoS0 / ack = "none") or the refusal itself.
        (Err(_), Some(_), _) => Offer::Refused,
        (Err(_), None, _) => Offer::AckNow,
    }
}

/// Answers clients whose bridged publishes Kafka acknowledged (or definitively failed).
pub async fn ack_loop(ctx: Rc<ShardCtx>, acks: flume::Receiver<BridgeAck>) {
    while let Ok(ack) = acks.recv_async().await {
        let mut state = ctx.state.borrow_mut();
        let Some(pending) = state.kafka_pending.remove(&ack.token) else {
            continue;
        };
        let failed = ack.outcome.is_err();
        if let Err(err) = &ack.outcome {
            debug!(error = %err, "kafka did not take a bridged publish");
        }
        if failed && pending.qos == QoS::ExactlyOnce {
            // Let a retransmission of this packet id be processed afresh.
            state.release_qos2(pending.slot, pending.packet_id);
        }
        let Some(session) = state.linked_session_mut(pending.slot, pending.generation) else {
            // The connection is gone; the client resends on reconnect (at least once).
            continue;
        };
        let version = session.peer.version;
        if failed && version != ProtocolVersion::V5 {
            // v3 has no failure code for PUBACK: close so the client resends.
            if let Some(link) = &mut session.link {
                link.close
                    .get_or_insert(CloseReason::ProtocolError(ReasonCode::UnspecifiedError));
            }
            session.wake();
            continue;
        }
        let code = if failed {
            ReasonCode::UnspecifiedError
        } else {
            ReasonCode::Success
        };
        let ack_packet = PubAck {
            packet_id: pending.packet_id,
            reason_code: code,
            properties: Default::default(),
        };
        let packet = match pending.qos {
            QoS::ExactlyOnce => Packet::PubRec(ack_packet),
            _ => Packet::PubAck(ack_packet),
        };
        let mut out = BytesMut::new();
        if wire::encode(&packet, version, &mut out).is_ok() {
            session
                .traffic_mut()
                .queue
                .push_back(Outbound::Control(out.freeze()));
            session.wake();
        }
    }
}

/// Publishes records the bridge consumed from Kafka into MQTT, then tells the bridge it may
/// commit their offsets.
pub async fn inbound_loop(ctx: Rc<ShardCtx>, inbound: flume::Receiver<InboundMessage>) {
    while let Ok(record) = inbound.recv_async().await {
        if wire::topic::validate_name(&record.topic).is_err() {
            warn!(topic = %record.topic, "kafka record maps to an invalid mqtt topic; skipped");
            // Accepted so the offset moves on: it can never be published.
            record.accept();
            continue;
        }
        let qos = QoS::try_from(record.qos).unwrap_or(QoS::AtLeastOnce);
        let mut publish = Publish {
            dup: false,
            qos,
            retain: false,
            topic: Utf8Bytes::from(record.topic.as_str()),
            packet_id: None,
            properties: Default::default(),
            payload: Bytes::copy_from_slice(&record.payload),
        };
        for (name, value) in &record.headers {
            if let Ok(value) = std::str::from_utf8(value) {
                publish
                    .properties
                    .user_properties
                    .push((Utf8Bytes::from(name.as_str()), Utf8Bytes::from(value)));
            }
        }
        let now = Instant::now();
        let message = Arc::new(Message {
            publish,
            origin: None,
            expires_at: None,
            received_at: now,
        });
        ctx.state.borrow_mut().publish(message, now);
        record.accept();
    }
}
