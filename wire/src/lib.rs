//! ringmq-wire: the MQTT 3.1, 3.1.1 and 5.0 codec. No I/O.
//!
//! Owns the byte-level representation of every control packet: framing ([`check`]), zero-copy
//! decoding ([`decode`]: strings and payloads are slices of the input frame), encoding
//! ([`encode`], [`encoded_len`], [`encode_publish_header`] for fan-out without copying payloads),
//! v5 properties and reason codes, and topic name/filter rules ([`topic`]).
//! The edge codecs in front of MQTT are here too, equally without I/O: [`ws`] (RFC 6455 opening
//! handshake and frames, MQTT over WebSocket) and [`proxy`] (PROXY protocol v1/v2 headers).
//!
//! It must not touch sockets, sessions, timers or broker policy (e.g. whether an empty client id
//! is accepted, topic alias bookkeeping, maximum QoS enforcement): those belong to the shard.
//!
//! Main types: [`Packet`] and one struct per packet ([`Connect`], [`Publish`], ...),
//! [`ProtocolVersion`], [`QoS`], [`ReasonCode`], [`Utf8Bytes`], the property structs
//! ([`ConnectProperties`], [`PublishProperties`], ...), [`DecodeError`] / [`EncodeError`].
//!
//! Variable byte integers must be minimally encoded ([MQTT-1.5.5-1]); a non-minimal encoding is
//! rejected as [`DecodeError::MalformedVariableByteInteger`].

mod ack;
mod auth;
mod connack;
mod connect;
mod disconnect;
mod error;
pub mod framing;
mod packet;
mod primitives;
pub mod properties;
pub mod proxy;
mod publish;
mod reason;
mod suback;
mod subscribe;
pub mod topic;
mod unsuback;
mod unsubscribe;
pub mod ws;

pub use ack::PubAck;
pub use auth::Auth;
pub use connack::ConnAck;
pub use connect::{Connect, LastWill};
pub use disconnect::Disconnect;
pub use error::{DecodeError, EncodeError};
pub use framing::{check, packet_type, Framing, FRAME_LEN_MAX};
pub use packet::{decode, encode, encode_publish_header, encoded_len, Packet};
pub use primitives::{
    put_vbi, validate_utf8, vbi_len, ProtocolVersion, QoS, Utf8Bytes, STRING_LEN_MAX, VBI_MAX,
};
pub use properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PropertyType, PublishProperties, SubscribeProperties, UserProperties, WillProperties,
};
pub use publish::Publish;
pub use reason::ReasonCode;
pub use suback::SubAck;
pub use subscribe::{RetainHandling, Subscribe, SubscriptionOptions};
pub use topic::TopicError;
pub use unsuback::UnsubAck;
pub use unsubscribe::Unsubscribe;
