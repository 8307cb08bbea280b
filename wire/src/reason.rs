//! MQTT v5 reason codes (section 2.4) and the v3.x return code mappings.

use crate::error::DecodeError;
use crate::framing::packet_type;

macro_rules! reason_codes {
    ($($(#[$meta:meta])* $name:ident = $value:literal,)*) => {
        /// Every MQTT v5 reason code by its specification name. Codes shared by several names
        /// (0x00) are one variant; the aliases are associated constants.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        #[repr(u8)]
        pub enum ReasonCode {
            #[default]
            $($(#[$meta])* $name = $value,)*
        }

        impl ReasonCode {
            /// Every reason code, in numeric order.
            pub const ALL: &'static [ReasonCode] = &[$(ReasonCode::$name,)*];
        }

        impl TryFrom<u8> for ReasonCode {
            type Error = u8;
            /// Returns the byte back when it is not a reason code at all.
            fn try_from(value: u8) -> Result<Self, u8> {
                match value {
                    $($value => Ok(ReasonCode::$name),)*
                    other => Err(other),
                }
            }
        }
    };
}

reason_codes! {
    Success = 0x00,
    GrantedQoS1 = 0x01,
    GrantedQoS2 = 0x02,
    DisconnectWithWillMessage = 0x04,
    NoMatchingSubscribers = 0x10,
    NoSubscriptionExisted = 0x11,
    ContinueAuthentication = 0x18,
    ReAuthenticate = 0x19,
    UnspecifiedError = 0x80,
    MalformedPacket = 0x81,
    ProtocolError = 0x82,
    ImplementationSpecificError = 0x83,
    UnsupportedProtocolVersion = 0x84,
    ClientIdentifierNotValid = 0x85,
    BadUserNameOrPassword = 0x86,
    NotAuthorized = 0x87,
    ServerUnavailable = 0x88,
    ServerBusy = 0x89,
    Banned = 0x8A,
    ServerShuttingDown = 0x8B,
    BadAuthenticationMethod = 0x8C,
    KeepAliveTimeout = 0x8D,
    SessionTakenOver = 0x8E,
    TopicFilterInvalid = 0x8F,
    TopicNameInvalid = 0x90,
    PacketIdentifierInUse = 0x91,
    PacketIdentifierNotFound = 0x92,
    ReceiveMaximumExceeded = 0x93,
    TopicAliasInvalid = 0x94,
    PacketTooLarge = 0x95,
    MessageRateTooHigh = 0x96,
    QuotaExceeded = 0x97,
    AdministrativeAction = 0x98,
    PayloadFormatInvalid = 0x99,
    RetainNotSupported = 0x9A,
    QoSNotSupported = 0x9B,
    UseAnotherServer = 0x9C,
    ServerMoved = 0x9D,
    SharedSubscriptionsNotSupported = 0x9E,
    ConnectionRateExceeded = 0x9F,
    MaximumConnectTime = 0xA0,
    SubscriptionIdentifiersNotSupported = 0xA1,
    WildcardSubscriptionsNotSupported = 0xA2,
}

// Spec names of 0x00 in the packets where it is not called "Success". Named like variants so
// callers can write `ReasonCode::NormalDisconnection` and match on them.
#[allow(non_upper_case_globals)]
impl ReasonCode {
    /// 0x00 in DISCONNECT.
    pub const NormalDisconnection: ReasonCode = ReasonCode::Success;
    /// 0x00 in SUBACK.
    pub const GrantedQoS0: ReasonCode = ReasonCode::Success;
}

/// Reason codes a v5 packet may carry, per the tables of each packet's section.
const CONNACK_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_CODES: &[u8] = &[0x00, 0x92];
const SUBACK_CODES: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const UNSUBACK_CODES: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];
/// v3.x SUBACK return codes: granted QoS 0/1/2 or failure.
const SUBACK_V3_CODES: &[u8] = &[0x00, 0x01, 0x02, 0x80];

impl ReasonCode {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Codes 0x80 and above report failure.
    pub fn is_error(self) -> bool {
        self.code() >= 0x80
    }

    /// The codes the v5 specification allows in the given packet type (fixed header type number).
    pub fn allowed_codes(packet_type: u8) -> &'static [u8] {
        match packet_type {
            packet_type::CONNACK => CONNACK_CODES,
            packet_type::PUBACK | packet_type::PUBREC => PUBACK_CODES,
            packet_type::PUBREL | packet_type::PUBCOMP => PUBREL_CODES,
            packet_type::SUBACK => SUBACK_CODES,
            packet_type::UNSUBACK => UNSUBACK_CODES,
            packet_type::DISCONNECT => DISCONNECT_CODES,
            packet_type::AUTH => AUTH_CODES,
            _ => &[],
        }
    }

    /// Whether a v5 packet of `packet_type` may carry this code.
    pub fn is_allowed_in(self, packet_type: u8) -> bool {
        Self::allowed_codes(packet_type).contains(&self.code())
    }

    /// The codes a v3.x SUBACK can carry.
    pub fn v3_suback_codes() -> &'static [u8] {
        SUBACK_V3_CODES
    }

    /// Maps to a v3.1/v3.1.1 CONNACK return code: 0 accepted, 1 unacceptable protocol version,
    /// 2 identifier rejected, 3 server unavailable, 4 bad user name or password, 5 not authorized.
    /// Codes with no v3 equivalent become 3 (server unavailable), the generic refusal.
    pub fn to_v3_connack(self) -> u8 {
        match self {
            ReasonCode::Success => 0,
            ReasonCode::UnsupportedProtocolVersion => 1,
            ReasonCode::ClientIdentifierNotValid => 2,
            ReasonCode::BadUserNameOrPassword | ReasonCode::BadAuthenticationMethod => 4,
            ReasonCode::NotAuthorized | ReasonCode::Banned => 5,
            _ => 3,
        }
    }

    /// Inverse of [`ReasonCode::to_v3_connack`] for the six defined return codes.
    pub fn from_v3_connack(code: u8) -> Option<ReasonCode> {
        Some(match code {
            0 => ReasonCode::Success,
            1 => ReasonCode::UnsupportedProtocolVersion,
            2 => ReasonCode::ClientIdentifierNotValid,
            3 => ReasonCode::ServerUnavailable,
            4 => ReasonCode::BadUserNameOrPassword,
            5 => ReasonCode::NotAuthorized,
            _ => return None,
        })
    }

    /// Maps to a v3.x SUBACK return code: granted QoS or 0x80 failure.
    pub fn to_v3_suback(self) -> u8 {
        match self {
            ReasonCode::Success => 0x00,
            ReasonCode::GrantedQoS1 => 0x01,
            ReasonCode::GrantedQoS2 => 0x02,
            _ => 0x80,
        }
    }
}

/// Parses a reason code byte and checks that `packet_type` allows it.
pub(crate) fn decode_reason(packet_type: u8, code: u8) -> Result<ReasonCode, DecodeError> {
    match ReasonCode::try_from(code) {
        Ok(reason) if reason.is_allowed_in(packet_type) => Ok(reason),
        _ => Err(DecodeError::InvalidReasonCode { packet_type, code }),
    }
}
