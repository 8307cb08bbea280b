//! The engine's side of the Kafka bridge, behind an interface: the engine never links the Kafka
//! client. The runtime implements [`Bridge`] with `bridge-kafka` and feeds Kafka's answers back
//! through [`crate::Engine::handle_bridge_ack`] and records consumed from Kafka through
//! [`crate::Engine::publish_inbound`].

use std::num::NonZeroU16;

use wire::{QoS, Utf8Bytes};

use crate::ids::ConnId;
use crate::message::Message;

/// Where accepted publishes go besides MQTT subscribers.
pub trait Bridge {
    /// Offers a publish accepted from `client_id`. `packet_id` is set for QoS 1/2; if a rule
    /// wants Kafka's acknowledgement before the client is answered, the bridge tags the record
    /// with `token` and returns [`Offer::AckLater`].
    fn offer(
        &mut self,
        client_id: &Utf8Bytes,
        message: &Message,
        packet_id: Option<NonZeroU16>,
        token: u64,
    ) -> Offer;
}

/// What offering a publish to the bridge decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Not bridged, or bridged without waiting for Kafka: acknowledge the client as usual.
    AckNow,
    /// Bridged with `ack = "kafka"` under the offered token: the PUBACK/PUBREC goes out when
    /// Kafka acknowledges.
    AckLater,
    /// The bridge refused a record that needs Kafka's acknowledgement (its buffer is full): do
    /// not acknowledge and do not route, so the client's inflight window backpressures it.
    Refused,
}

/// A PUBACK/PUBREC owed once Kafka acknowledges.
#[derive(Debug, Clone, Copy)]
pub struct PendingKafkaAck {
    pub conn: ConnId,
    pub slot: u32,
    pub generation: u32,
    pub packet_id: NonZeroU16,
    pub qos: QoS,
}
