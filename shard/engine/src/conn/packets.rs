//! Every packet after CONNECT other than PUBLISH: acknowledgements of our deliveries, QoS 2
//! release, SUBSCRIBE/UNSUBSCRIBE, PINGREQ, DISCONNECT, and the packets a client must not send.

use std::time::Instant;

use wire::{AckProperties, Packet, ProtocolVersion, QoS, ReasonCode, SubAck, Subscribe, UnsubAck};

use super::{ack_packet, Conn, Flow, Shared};
use crate::session::{CloseReason, InflightState};
use crate::state::SubscribeResult;

impl Conn {
    pub(super) fn handle_packet(
        &mut self,
        sh: &mut Shared<'_>,
        packet: Packet,
        now: Instant,
    ) -> Flow {
        let protocol_error = Flow::Close(CloseReason::ProtocolError(ReasonCode::ProtocolError));
        if let Some(link) = sh
            .state
            .linked_session_mut(self.key.slot, self.generation)
            .and_then(|s| s.link.as_mut())
        {
            link.last_activity = now;
        }
        match packet {
            Packet::Publish(publish) => self.handle_publish(sh, publish, now),
            Packet::PubAck(ack) => {
                if let Some(s) = sh.state.linked_session_mut(self.key.slot, self.generation) {
                    s.complete(ack.packet_id, InflightState::AwaitPubAck);
                }
                Flow::Continue
            }
            Packet::PubRec(ack) => {
                let known = match sh.state.linked_session_mut(self.key.slot, self.generation) {
                    Some(s) if ack.reason_code as u8 >= 0x80 => {
                        // Only a PUBREC below 0x80 gets a PUBREL [MQTT-4.3.3-4]: a failure
                        // ends the exchange and frees the id.
                        s.complete(ack.packet_id, InflightState::AwaitPubRec);
                        return Flow::Continue;
                    }
                    Some(s) => s.received(ack.packet_id),
                    None => false,
                };
                let code = if known {
                    ReasonCode::Success
                } else {
                    ReasonCode::PacketIdentifierNotFound
                };
                self.write_packet(sh.out, &Packet::PubRel(ack_packet(ack.packet_id, code)));
                Flow::Continue
            }
            Packet::PubRel(ack) => {
                let code = if sh.state.release_qos2(self.key.slot, ack.packet_id) {
                    ReasonCode::Success
                } else {
                    ReasonCode::PacketIdentifierNotFound
                };
                self.write_packet(sh.out, &Packet::PubComp(ack_packet(ack.packet_id, code)));
                Flow::Continue
            }
            Packet::PubComp(ack) => {
                if let Some(s) = sh.state.linked_session_mut(self.key.slot, self.generation) {
                    s.complete(ack.packet_id, InflightState::AwaitPubComp);
                }
                Flow::Continue
            }
            Packet::Subscribe(subscribe) => self.handle_subscribe(sh, subscribe, now),
            Packet::Unsubscribe(unsubscribe) => {
                let codes = unsubscribe
                    .filters
                    .iter()
                    .map(|f| {
                        if sh.state.unsubscribe(self.key.slot, f.as_str()) {
                            ReasonCode::Success
                        } else {
                            ReasonCode::NoSubscriptionExisted
                        }
                    })
                    .collect::<Vec<_>>();
                // 3.1.1 UNSUBACK carries no reason codes.
                let reason_codes = if self.version == ProtocolVersion::V5 {
                    codes
                } else {
                    Vec::new()
                };
                self.write_packet(
                    sh.out,
                    &Packet::UnsubAck(UnsubAck {
                        packet_id: unsubscribe.packet_id,
                        reason_codes,
                        properties: AckProperties::default(),
                    }),
                );
                Flow::Continue
            }
            Packet::PingReq => {
                self.write_packet(sh.out, &Packet::PingResp);
                Flow::Continue
            }
            Packet::Disconnect(disconnect) => {
                if self.version == ProtocolVersion::V5 {
                    if let Some(expiry) = disconnect.properties.session_expiry_interval {
                        let max = sh.state.limits.session_expiry_max_secs;
                        if let Some(s) = sh.state.linked_session_mut(self.key.slot, self.generation)
                        {
                            // [MQTT-3.14.2-2] cannot turn a 0 expiry into a non-zero one.
                            if s.expiry_secs == 0 && expiry != 0 {
                                return protocol_error;
                            }
                            s.expiry_secs = expiry.min(max);
                        }
                    }
                    if disconnect.reason_code == ReasonCode::DisconnectWithWillMessage {
                        self.will_on_disconnect = true;
                    }
                }
                Flow::Close(CloseReason::ClientDisconnect)
            }
            // A second CONNECT is a protocol violation [MQTT-3.1.0-2].
            Packet::Connect(_) => protocol_error,
            // No enhanced authentication was agreed, so AUTH is a protocol error [MQTT-4.12.0-1].
            Packet::Auth(_) => protocol_error,
            // Server-to-client packets from a client.
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                protocol_error
            }
        }
    }

    fn handle_subscribe(
        &mut self,
        sh: &mut Shared<'_>,
        subscribe: Subscribe,
        now: Instant,
    ) -> Flow {
        let id = subscribe.properties.subscription_identifier;
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut route_changed = false;
        for (filter, options) in &subscribe.filters {
            let result = sh
                .state
                .subscribe(self.key.slot, filter.as_str(), *options, id, now);
            codes.push(match result {
                SubscribeResult::Granted {
                    qos,
                    route_changed: changed,
                } => {
                    route_changed |= changed;
                    match qos {
                        QoS::AtMostOnce => ReasonCode::Success,
                        QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                        QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
                    }
                }
                // v3.1.1 has a single failure code 0x80 [MQTT-3.9.3-2].
                SubscribeResult::Refused(_) if self.version != ProtocolVersion::V5 => {
                    ReasonCode::UnspecifiedError
                }
                SubscribeResult::Refused(code) => code,
            });
        }
        let suback = Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            reason_codes: codes,
            properties: AckProperties::default(),
        });
        // The SUBACK waits until every shard routes the new subscriptions, so a publish that
        // starts after it anywhere reaches the subscriber.
        if route_changed {
            if let Some(barrier) = sh.state.start_barrier(sh.conn) {
                self.hold_reply(barrier, suback);
                return Flow::Barrier;
            }
        }
        self.write_packet(sh.out, &suback);
        Flow::Continue
    }
}
