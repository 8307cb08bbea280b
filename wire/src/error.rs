//! Decode and encode errors, and how each decode error maps to an MQTT v5 reason code.

use crate::reason::ReasonCode;

/// Why a frame could not be decoded. Each variant carries the numbers that explain it so that a
/// log line is enough to understand what the peer sent.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A variable byte integer used more than 4 bytes or was not minimally encoded [MQTT-1.5.5-1].
    #[error("malformed variable byte integer")]
    MalformedVariableByteInteger,
    #[error("packet of {size} bytes exceeds the limit of {limit} bytes")]
    PacketTooLarge { limit: u32, size: u64 },
    #[error("invalid packet type {0}")]
    InvalidPacketType(u8),
    #[error("invalid fixed header flags {flags:#06b} for packet type {packet_type}")]
    InvalidFixedHeaderFlags { packet_type: u8, flags: u8 },
    /// The frame ended (or a length field pointed) past the available bytes.
    #[error("unexpected end of packet, needed {needed} more bytes")]
    UnexpectedEof { needed: usize },
    #[error("string is not well-formed utf-8")]
    InvalidUtf8,
    /// [MQTT-1.5.4-2]
    #[error("string contains U+0000")]
    NullCharacter,
    #[error("invalid protocol name")]
    InvalidProtocolName,
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    #[error("invalid qos {0}")]
    InvalidQoS(u8),
    #[error("packet identifier is zero")]
    ZeroPacketIdentifier,
    #[error("invalid topic name")]
    InvalidTopicName,
    /// v5: a PUBLISH with a zero-length topic must carry a topic alias.
    #[error("empty topic name without topic alias")]
    EmptyTopicWithoutAlias,
    #[error("invalid topic filter")]
    InvalidTopicFilter,
    /// [MQTT-3.8.3-3]
    #[error("subscribe packet without topic filters")]
    EmptySubscription,
    /// [MQTT-3.10.3-2]
    #[error("unsubscribe packet without topic filters")]
    EmptyUnsubscription,
    #[error("property {0:#04x} included more than once")]
    DuplicateProperty(u8),
    #[error("unknown property identifier {0:#x}")]
    UnknownProperty(u32),
    #[error("property {property:#04x} not allowed in packet type {packet_type}")]
    PropertyNotAllowed { packet_type: u8, property: u8 },
    #[error("property {property:#04x} has invalid value {value}")]
    InvalidPropertyValue { property: u8, value: u32 },
    #[error("reason code {code:#04x} not allowed in packet type {packet_type}")]
    InvalidReasonCode { packet_type: u8, code: u8 },
    #[error("{0} bytes left over after the packet")]
    TrailingBytes(usize),
    /// [MQTT-3.1.2-3]
    #[error("connect reserved flag is set")]
    ConnectReservedFlag,
    /// [MQTT-3.1.2-11], [MQTT-3.1.2-13], [MQTT-3.1.2-15]
    #[error("will qos/retain set without will flag")]
    WillFlagsInconsistent,
    /// v3.1.1 [MQTT-3.1.2-22]
    #[error("password flag set without user name flag")]
    PasswordWithoutUsername,
    /// [MQTT-3.3.1-2]
    #[error("dup flag set on a qos 0 publish")]
    DupWithQoS0,
    /// Reserved bits of a CONNACK flags byte or subscription options byte [MQTT-3.8.3-5].
    #[error("reserved bits set: {0:#010b}")]
    ReservedBitsSet(u8),
    #[error("retain handling 3 is reserved")]
    InvalidRetainHandling,
    /// [MQTT-3.8.3-4]
    #[error("no local set on a shared subscription")]
    NoLocalOnSharedSubscription,
    /// 3.8.2.1.2: a SUBSCRIBE subscription identifier of 0 is a Malformed Packet.
    #[error("subscription identifier 0 in subscribe")]
    ZeroSubscriptionIdentifier,
}

impl DecodeError {
    /// The v5 reason code a receiver uses in CONNACK/DISCONNECT for this error, following how the
    /// specification classifies each case ("is a Malformed Packet" vs "is a Protocol Error").
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            // 3.1.2.1 lets the server refuse a wrong protocol name like an unknown level.
            UnsupportedProtocolVersion(_) | InvalidProtocolName => {
                ReasonCode::UnsupportedProtocolVersion
            }
            InvalidTopicName => ReasonCode::TopicNameInvalid,
            InvalidTopicFilter => ReasonCode::TopicFilterInvalid,
            EmptyTopicWithoutAlias
            | EmptySubscription
            | EmptyUnsubscription
            | DuplicateProperty(_)
            | InvalidPropertyValue { .. }
            | InvalidRetainHandling
            | NoLocalOnSharedSubscription => ReasonCode::ProtocolError,
            MalformedVariableByteInteger
            | InvalidPacketType(_)
            | InvalidFixedHeaderFlags { .. }
            | UnexpectedEof { .. }
            | InvalidUtf8
            | NullCharacter
            | InvalidQoS(_)
            | ZeroPacketIdentifier
            | UnknownProperty(_)
            | PropertyNotAllowed { .. }
            | InvalidReasonCode { .. }
            | TrailingBytes(_)
            | ConnectReservedFlag
            | WillFlagsInconsistent
            | PasswordWithoutUsername
            | DupWithQoS0
            | ReservedBitsSet(_)
            | ZeroSubscriptionIdentifier => ReasonCode::MalformedPacket,
        }
    }
}

/// Why a packet could not be encoded. Nothing is written to the output buffer on error.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// UTF-8 strings and binary data are limited to 65,535 bytes by their 2-byte length prefix.
    #[error("string or binary field of {len} bytes exceeds 65535")]
    StringTooLong { len: usize },
    /// The remaining length would exceed 268,435,455 bytes.
    #[error("packet of {size} bytes cannot be represented")]
    PacketTooLarge { size: usize },
    /// A variable byte integer value above 268,435,455 (e.g. a subscription identifier).
    #[error("value {value} does not fit a variable byte integer")]
    VariableByteIntegerTooLarge { value: u32 },
    /// PUBLISH `packet_id` must be `Some` exactly when qos > 0.
    #[error("packet identifier presence does not match qos")]
    PacketIdMismatch,
    #[error("reason code {code:#04x} cannot be sent in packet type {packet_type}")]
    ReasonCodeNotAllowed { packet_type: u8, code: u8 },
    /// The packet type does not exist in the requested version (AUTH before v5).
    #[error("packet type {packet_type} does not exist in protocol level {level}")]
    PacketNotSupported { packet_type: u8, level: u8 },
    /// A PUBLISH topic may be empty only in v5 with a topic alias; the peer would reject it.
    #[error("empty topic name without a v5 topic alias")]
    EmptyTopic,
    /// v3.x CONNECT cannot carry a password without a user name [MQTT-3.1.2-22].
    #[error("password without user name before v5")]
    PasswordWithoutUsername,
    /// SUBSCRIBE/UNSUBSCRIBE need at least one filter; an empty list would be rejected by the peer.
    #[error("subscribe/unsubscribe without topic filters")]
    EmptyFilterList,
}
