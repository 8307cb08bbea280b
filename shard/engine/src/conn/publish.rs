//! An inbound PUBLISH: topic aliases, checks, QoS 2 de-duplication, the Kafka bridge, routing,
//! and the acknowledgement (held for a route barrier when the message is retained).

use std::sync::Arc;
use std::time::{Duration, Instant};

use wire::{Packet, ProtocolVersion, Publish, QoS, ReasonCode, Utf8Bytes};

use super::{ack_packet, Conn, Flow, Shared};
use crate::bridge::{Offer, PendingKafkaAck};
use crate::message::Message;
use crate::session::CloseReason;

impl Conn {
    /// Resolves a v5 topic alias [MQTT-3.3.2-7..12]; the close reason if the alias is invalid.
    fn resolve_alias(
        &mut self,
        publish: &mut Publish,
        topic_alias_maximum: u16,
    ) -> Result<(), CloseReason> {
        let protocol_error = CloseReason::ProtocolError(ReasonCode::ProtocolError);
        let Some(alias) = publish.properties.topic_alias.take() else {
            return if publish.topic.is_empty() {
                Err(protocol_error)
            } else {
                Ok(())
            };
        };
        if alias == 0 || alias > topic_alias_maximum {
            return Err(CloseReason::ProtocolError(ReasonCode::TopicAliasInvalid));
        }
        let table = self
            .extra_mut()
            .aliases_in
            .get_or_insert_with(|| vec![None; usize::from(topic_alias_maximum)].into_boxed_slice());
        let index = usize::from(alias - 1);
        if publish.topic.is_empty() {
            match table.get(index).and_then(|t| t.clone()) {
                Some(topic) => publish.topic = topic,
                None => return Err(protocol_error),
            }
        } else if let Some(slot) = table.get_mut(index) {
            *slot = Some(Utf8Bytes::from(publish.topic.as_str()));
        }
        Ok(())
    }

    pub(super) fn handle_publish(
        &mut self,
        sh: &mut Shared<'_>,
        mut publish: Publish,
        now: Instant,
    ) -> Flow {
        let topic_alias_maximum = sh.state.limits.topic_alias_maximum;
        let receive_maximum = sh.state.limits.receive_maximum;
        if let Err(reason) = self.resolve_alias(&mut publish, topic_alias_maximum) {
            return Flow::Close(reason);
        }
        if wire::topic::validate_name(publish.topic.as_str()).is_err() {
            // [MQTT-3.3.2-2] no wildcards in a topic name.
            return Flow::Close(CloseReason::ProtocolError(ReasonCode::TopicNameInvalid));
        }
        // A client must not send subscription identifiers [MQTT-3.3.4-6].
        if !publish.properties.subscription_identifiers.is_empty() {
            return Flow::Close(CloseReason::ProtocolError(ReasonCode::ProtocolError));
        }
        let qos = publish.qos;
        let packet_id = publish.packet_id;
        let retain = publish.retain;
        sh.state.counters.messages_received[qos as usize] += 1;
        if !sh.state.may_publish(self.key.slot, publish.topic.as_str()) {
            return self.refuse_publish(sh, qos, packet_id);
        }
        if qos == QoS::ExactlyOnce {
            let Some(id) = packet_id else {
                return Flow::Close(CloseReason::ProtocolError(ReasonCode::ProtocolError));
            };
            let in_flight = sh
                .state
                .session(self.key.slot)
                .and_then(|s| s.traffic.as_deref())
                .map_or(0, |t| t.incoming_qos2.len());
            match sh.state.incoming_qos2(self.key.slot, id) {
                Some(true) => {
                    if in_flight >= usize::from(receive_maximum) {
                        // [MQTT-3.3.4-9] more unacknowledged QoS 2 than our Receive Maximum.
                        return Flow::Close(CloseReason::ProtocolError(
                            ReasonCode::ReceiveMaximumExceeded,
                        ));
                    }
                }
                Some(false) => {
                    // A retransmission awaiting PUBREL: acknowledge again, do not deliver twice
                    // [MQTT-4.3.3-9]. If Kafka has not acknowledged the first copy yet
                    // (ack = "kafka"), the PUBREC still waits for it — and goes to this
                    // connection, which may have resumed the session since the first copy.
                    let mut awaiting_kafka = false;
                    for p in sh.state.kafka_pending.values_mut() {
                        if p.slot == self.key.slot && p.packet_id == id {
                            p.conn = sh.conn;
                            p.generation = self.generation;
                            awaiting_kafka = true;
                        }
                    }
                    if !awaiting_kafka {
                        self.write_packet(
                            sh.out,
                            &Packet::PubRec(ack_packet(id, ReasonCode::Success)),
                        );
                    }
                    return Flow::Continue;
                }
                None => return Flow::Close(CloseReason::SessionTakenOver),
            }
        }
        let expires_at = publish
            .properties
            .message_expiry_interval
            .map(|secs| now + Duration::from_secs(u64::from(secs)));
        publish.dup = false;
        publish.packet_id = None;
        let message = Arc::new(Message {
            publish,
            origin: Some(self.key),
            expires_at,
            received_at: now,
        });
        let offer = self.offer_to_bridge(sh, &message, packet_id);
        if offer == Offer::Refused {
            // Not acknowledged, not routed: the client's inflight window holds it back, and it
            // resends after reconnecting. A QoS 2 id must be usable again for that resend.
            if let (QoS::ExactlyOnce, Some(id)) = (qos, packet_id) {
                sh.state.release_qos2(self.key.slot, id);
            }
            return Flow::Continue;
        }
        let matched = sh.state.publish(message, now);
        if offer == Offer::AckLater {
            return Flow::Continue;
        }
        let code = if matched == 0 && self.version == ProtocolVersion::V5 {
            ReasonCode::NoMatchingSubscribers
        } else {
            ReasonCode::Success
        };
        let reply = match (qos, packet_id) {
            (QoS::AtLeastOnce, Some(id)) => Packet::PubAck(ack_packet(id, code)),
            (QoS::ExactlyOnce, Some(id)) => Packet::PubRec(ack_packet(id, code)),
            _ => return Flow::Continue,
        };
        // A retained QoS 1/2 message is acknowledged once every shard stores it, so a subscriber
        // anywhere sees it after the publisher got its answer.
        if retain {
            if let Some(barrier) = sh.state.start_barrier(sh.conn) {
                self.hold_reply(barrier, reply);
                return Flow::Barrier;
            }
        }
        self.write_packet(sh.out, &reply);
        Flow::Continue
    }

    /// A PUBLISH the ACL refused: neither routed, retained nor bridged. As Mosquitto does: v5
    /// QoS 1/2 get PUBACK/PUBREC 0x87 Not authorized (which ends a QoS 2 exchange
    /// [MQTT-4.3.3-4]); 3.1.1 has no failure code, so QoS 1/2 get an ordinary PUBACK/PUBREC and the
    /// message is dropped (the client does not resend it forever); QoS 0 is dropped. Counted in
    /// `AuthCounters::publish_denied`.
    fn refuse_publish(
        &mut self,
        sh: &mut Shared<'_>,
        qos: QoS,
        packet_id: Option<std::num::NonZeroU16>,
    ) -> Flow {
        let code = if self.version == ProtocolVersion::V5 {
            ReasonCode::NotAuthorized
        } else {
            ReasonCode::Success
        };
        let reply = match (qos, packet_id) {
            (QoS::AtLeastOnce, Some(id)) => Packet::PubAck(ack_packet(id, code)),
            (QoS::ExactlyOnce, Some(id)) => Packet::PubRec(ack_packet(id, code)),
            (QoS::AtMostOnce, _) => return Flow::Continue,
            // QoS 1/2 without a packet id does not decode.
            _ => return Flow::Close(CloseReason::ProtocolError(ReasonCode::ProtocolError)),
        };
        self.write_packet(sh.out, &reply);
        Flow::Continue
    }

    /// Offers a publish to the Kafka bridge, if there is one, and records an acknowledgement owed
    /// once Kafka answers.
    fn offer_to_bridge(
        &mut self,
        sh: &mut Shared<'_>,
        message: &Message,
        packet_id: Option<std::num::NonZeroU16>,
    ) -> Offer {
        let Some(bridge) = sh.bridge.as_deref_mut() else {
            return Offer::AckNow;
        };
        let state = &mut *sh.state;
        let token = state.next_kafka_token + 1;
        let Some(client_id) = state.session(self.key.slot).map(|s| &s.client_id) else {
            return Offer::AckNow;
        };
        let offer = bridge.offer(client_id, message, packet_id, token);
        if let (Offer::AckLater, Some(packet_id)) = (offer, packet_id) {
            state.next_kafka_token = token;
            state.kafka_pending.insert(
                token,
                PendingKafkaAck {
                    conn: sh.conn,
                    slot: self.key.slot,
                    generation: self.generation,
                    packet_id,
                    qos: message.publish.qos,
                },
            );
        }
        offer
    }
}
