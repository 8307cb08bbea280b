//! MQTT v5 properties (section 2.2.2): identifiers, data types, and one typed struct per packet
//! kind holding exactly the properties that packet allows.
//!
//! Decoding rules: an unknown identifier or one not allowed in the packet is a Malformed Packet
//! (2.2.2.2); a singleton property included twice is a Protocol Error; out-of-range values the
//! spec names (receive maximum 0, topic alias 0, boolean bytes other than 0/1 ...) are Protocol
//! Errors. For v3.x nothing is read or written.

use bytes::{BufMut, Bytes, BytesMut};
use smallvec::SmallVec;

use crate::error::{DecodeError, EncodeError};
use crate::framing::packet_type;
use crate::primitives::{put_binary, put_vbi, string_len, vbi_len, Reader, Utf8Bytes, VBI_MAX};

/// Property identifiers.
pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Data type of a property value (section 2.2.2.2 table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyType {
    Byte,
    TwoByteInteger,
    FourByteInteger,
    VariableByteInteger,
    Utf8String,
    BinaryData,
    Utf8StringPair,
}

/// The data type of property `identifier`, or `None` if the identifier is not defined.
pub fn property_type(identifier: u8) -> Option<PropertyType> {
    use PropertyType::*;
    Some(match identifier {
        id::PAYLOAD_FORMAT_INDICATOR
        | id::REQUEST_PROBLEM_INFORMATION
        | id::REQUEST_RESPONSE_INFORMATION
        | id::MAXIMUM_QOS
        | id::RETAIN_AVAILABLE
        | id::WILDCARD_SUBSCRIPTION_AVAILABLE
        | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | id::SHARED_SUBSCRIPTION_AVAILABLE => Byte,
        id::SERVER_KEEP_ALIVE | id::RECEIVE_MAXIMUM | id::TOPIC_ALIAS_MAXIMUM | id::TOPIC_ALIAS => {
            TwoByteInteger
        }
        id::MESSAGE_EXPIRY_INTERVAL
        | id::SESSION_EXPIRY_INTERVAL
        | id::WILL_DELAY_INTERVAL
        | id::MAXIMUM_PACKET_SIZE => FourByteInteger,
        id::SUBSCRIPTION_IDENTIFIER => VariableByteInteger,
        id::CONTENT_TYPE
        | id::RESPONSE_TOPIC
        | id::ASSIGNED_CLIENT_IDENTIFIER
        | id::AUTHENTICATION_METHOD
        | id::RESPONSE_INFORMATION
        | id::SERVER_REFERENCE
        | id::REASON_STRING => Utf8String,
        id::CORRELATION_DATA | id::AUTHENTICATION_DATA => BinaryData,
        id::USER_PROPERTY => Utf8StringPair,
        _ => return None,
    })
}

/// A decoded property value, before it is stored in a typed field.
pub(crate) enum Value {
    Int(u32),
    Str(Utf8Bytes),
    Bin(Bytes),
    Pair(Utf8Bytes, Utf8Bytes),
}

fn read_value(reader: &mut Reader, kind: PropertyType) -> Result<Value, DecodeError> {
    Ok(match kind {
        PropertyType::Byte => Value::Int(u32::from(reader.u8()?)),
        PropertyType::TwoByteInteger => Value::Int(u32::from(reader.u16()?)),
        PropertyType::FourByteInteger => Value::Int(reader.u32()?),
        PropertyType::VariableByteInteger => Value::Int(reader.vbi()?),
        PropertyType::Utf8String => Value::Str(reader.utf8()?),
        PropertyType::BinaryData => Value::Bin(reader.binary()?),
        PropertyType::Utf8StringPair => Value::Pair(reader.utf8()?, reader.utf8()?),
    })
}

/// One typed property slot. The identifier decides the wire type, the field type the storage.
pub(crate) trait Field {
    fn put(&mut self, identifier: u8, value: Value) -> Result<(), DecodeError>;
    fn wire_len(&self, identifier: u8) -> Result<usize, EncodeError>;
    fn write(&self, identifier: u8, out: &mut BytesMut);
    fn is_absent(&self) -> bool;
}

fn type_mismatch(identifier: u8) -> DecodeError {
    // Only reachable if a struct declares the wrong Rust type for an identifier.
    DecodeError::UnknownProperty(u32::from(identifier))
}

macro_rules! int_field {
    ($ty:ty, $put:ident, $size:expr) => {
        impl Field for Option<$ty> {
            fn put(&mut self, identifier: u8, value: Value) -> Result<(), DecodeError> {
                if self.is_some() {
                    return Err(DecodeError::DuplicateProperty(identifier));
                }
                match value {
                    Value::Int(number) => {
                        *self = Some(number as $ty);
                        Ok(())
                    }
                    _ => Err(type_mismatch(identifier)),
                }
            }
            fn wire_len(&self, _identifier: u8) -> Result<usize, EncodeError> {
                Ok(if self.is_some() { 1 + $size } else { 0 })
            }
            fn write(&self, identifier: u8, out: &mut BytesMut) {
                if let Some(number) = *self {
                    out.put_u8(identifier);
                    out.$put(number);
                }
            }
            fn is_absent(&self) -> bool {
                self.is_none()
            }
        }
    };
}

int_field!(u8, put_u8, 1);
int_field!(u16, put_u16, 2);

impl Field for Option<u32> {
    fn put(&mut self, identifier: u8, value: Value) -> Result<(), DecodeError> {
        if self.is_some() {
            return Err(DecodeError::DuplicateProperty(identifier));
        }
        match value {
            Value::Int(number) => {
                *self = Some(number);
                Ok(())
            }
            _ => Err(type_mismatch(identifier)),
        }
    }
    fn wire_len(&self, identifier: u8) -> Result<usize, EncodeError> {
        let Some(number) = *self else { return Ok(0) };
        if identifier == id::SUBSCRIPTION_IDENTIFIER {
            if number > VBI_MAX {
                return Err(EncodeError::VariableByteIntegerTooLarge { value: number });
            }
            Ok(1 + vbi_len(number as usize))
        } else {
            Ok(1 + 4)
        }
    }
    fn write(&self, identifier: u8, out: &mut BytesMut) {
        if let Some(number) = *self {
            out.put_u8(identifier);
            if identifier == id::SUBSCRIPTION_IDENTIFIER {
                put_vbi(out, number);
            } else {
                out.put_u32(number);
            }
        }
    }
    fn is_absent(&self) -> bool {
        self.is_none()
    }
}

impl Field for Option<Utf8Bytes> {
    fn put(&mut self, identifier: u8, value: Value) -> Result<(), DecodeError> {
        if self.is_some() {
            return Err(DecodeError::DuplicateProperty(identifier));
        }
        match value {
            Value::Str(text) => {
                *self = Some(text);
                Ok(())
            }
            _ => Err(type_mismatch(identifier)),
        }
    }
    fn wire_len(&self, _identifier: u8) -> Result<usize, EncodeError> {
        match self {
            Some(text) => Ok(1 + string_len(text.len())?),
            None => Ok(0),
        }
    }
    fn write(&self, identifier: u8, out: &mut BytesMut) {
        if let Some(text) = self {
            out.put_u8(identifier);
            put_binary(out, text.as_bytes());
        }
    }
    fn is_absent(&self) -> bool {
        self.is_none()
    }
}

impl Field for Option<Bytes> {
    fn put(&mut self, identifier: u8, value: Value) -> Result<(), DecodeError> {
        if self.is_some() {
            return Err(DecodeError::DuplicateProperty(identifier));
        }
        match value {
            Value::Bin(data) => {
                *self = Some(data);
                Ok(())
            }
            _ => Err(type_mismatch(identifier)),
        }
    }
    fn wire_len(&self, _identifier: u8) -> Result<usize, EncodeError> {
        match self {
            Some(data) => Ok(1 + string_len(data.len())?),
            None => Ok(0),
        }
    }
    fn write(&self, identifier: u8, out: &mut BytesMut) {
        if let Some(data) = self {
            out.put_u8(identifier);
            put_binary(out, data);
        }
    }
    fn is_absent(&self) -> bool {
        self.is_none()
    }
}

/// User properties: repeatable, order preserved (3.1.2.11.8 "the same name is allowed to appear
/// more than once").
pub type UserProperties = Vec<(Utf8Bytes, Utf8Bytes)>;

impl Field for UserProperties {
    fn put(&mut self, identifier: u8, value: Value) -> Result<(), DecodeError> {
        match value {
            Value::Pair(name, text) => {
                self.push((name, text));
                Ok(())
            }
            _ => Err(type_mismatch(identifier)),
        }
    }
    fn wire_len(&self, _identifier: u8) -> Result<usize, EncodeError> {
        let mut total = 0;
        for (name, text) in self {
            total += 1 + string_len(name.len())? + string_len(text.len())?;
        }
        Ok(total)
    }
    fn write(&self, identifier: u8, out: &mut BytesMut) {
        for (name, text) in self {
            out.put_u8(identifier);
            put_binary(out, name.as_bytes());
            put_binary(out, text.as_bytes());
        }
    }
    fn is_absent(&self) -> bool {
        self.is_empty()
    }
}

/// Subscription identifiers in PUBLISH: repeatable variable byte integers (3.3.2.3.8).
impl Field for SmallVec<[u32; 1]> {
    fn put(&mut self, identifier: u8, value: Value) -> Result<(), DecodeError> {
        match value {
            Value::Int(number) => {
                self.push(number);
                Ok(())
            }
            _ => Err(type_mismatch(identifier)),
        }
    }
    fn wire_len(&self, _identifier: u8) -> Result<usize, EncodeError> {
        let mut total = 0;
        for &number in self {
            if number > VBI_MAX {
                return Err(EncodeError::VariableByteIntegerTooLarge { value: number });
            }
            total += 1 + vbi_len(number as usize);
        }
        Ok(total)
    }
    fn write(&self, identifier: u8, out: &mut BytesMut) {
        for &number in self {
            out.put_u8(identifier);
            put_vbi(out, number);
        }
    }
    fn is_absent(&self) -> bool {
        self.is_empty()
    }
}

/// Reads the property length and the properties, handing each to `store`.
pub(crate) fn decode_with(
    reader: &mut Reader,
    packet_type: u8,
    mut store: impl FnMut(u8, Value) -> Result<bool, DecodeError>,
) -> Result<(), DecodeError> {
    let length = reader.vbi()? as usize;
    let mut section = Reader::new(reader.take(length)?);
    while !section.is_empty() {
        let identifier = section.vbi()?;
        let kind = u8::try_from(identifier)
            .ok()
            .and_then(property_type)
            .ok_or(DecodeError::UnknownProperty(identifier))?;
        // Fits u8: property_type only knows identifiers below 0x80.
        let identifier = identifier as u8;
        let value = read_value(&mut section, kind)?;
        if !store(identifier, value)? {
            return Err(DecodeError::PropertyNotAllowed {
                packet_type,
                property: identifier,
            });
        }
    }
    Ok(())
}

macro_rules! property_struct {
    (
        $(#[$meta:meta])*
        $name:ident { $($(#[$field_meta:meta])* $field:ident : $ty:ty = $identifier:path,)* }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct $name {
            $($(#[$field_meta])* pub $field: $ty,)*
        }

        impl $name {
            /// True when no property is set (encodes as a single 0 length byte in v5).
            pub fn is_empty(&self) -> bool {
                true $(&& Field::is_absent(&self.$field))*
            }

            /// Stores one decoded property; `Ok(false)` if this packet does not allow it.
            pub(crate) fn store(&mut self, identifier: u8, value: Value) -> Result<bool, DecodeError> {
                $(if identifier == $identifier {
                    Field::put(&mut self.$field, identifier, value)?;
                    return Ok(true);
                })*
                let _ = value;
                Ok(false)
            }

            /// Length of the properties without the property length prefix.
            pub(crate) fn body_len(&self) -> Result<usize, EncodeError> {
                Ok(0 $(+ Field::wire_len(&self.$field, $identifier)?)*)
            }

            pub(crate) fn write_body(&self, out: &mut BytesMut) {
                $(Field::write(&self.$field, $identifier, out);)*
            }

            /// Decodes a property section (length + properties) of a packet of `packet_type`.
            pub(crate) fn decode(reader: &mut Reader, packet_type: u8) -> Result<Self, DecodeError> {
                let mut properties = Self::default();
                decode_with(reader, packet_type, |identifier, value| {
                    properties.store(identifier, value)
                })?;
                properties.validate(packet_type)?;
                Ok(properties)
            }

            /// Length of the property section including its length prefix.
            pub(crate) fn wire_len(&self) -> Result<usize, EncodeError> {
                let body = self.body_len()?;
                Ok(vbi_len(body) + body)
            }

            /// Writes the property section; `wire_len` must have succeeded first.
            pub(crate) fn write(&self, out: &mut BytesMut) {
                // body_len only fails on what wire_len already rejected.
                let body = self.body_len().unwrap_or(0);
                put_vbi(out, body as u32);
                self.write_body(out);
            }
        }
    };
}

fn check_value(
    property: u8,
    value: Option<u32>,
    valid: impl Fn(u32) -> bool,
) -> Result<(), DecodeError> {
    match value {
        Some(value) if !valid(value) => Err(DecodeError::InvalidPropertyValue { property, value }),
        _ => Ok(()),
    }
}

fn boolean(property: u8, value: Option<u8>) -> Result<(), DecodeError> {
    check_value(property, value.map(u32::from), |v| v <= 1)
}

fn non_zero(property: u8, value: Option<u32>) -> Result<(), DecodeError> {
    check_value(property, value, |v| v != 0)
}

property_struct! {
    /// CONNECT properties (3.1.2.11).
    ConnectProperties {
        session_expiry_interval: Option<u32> = id::SESSION_EXPIRY_INTERVAL,
        /// 0 is a Protocol Error.
        receive_maximum: Option<u16> = id::RECEIVE_MAXIMUM,
        /// 0 is a Protocol Error.
        maximum_packet_size: Option<u32> = id::MAXIMUM_PACKET_SIZE,
        topic_alias_maximum: Option<u16> = id::TOPIC_ALIAS_MAXIMUM,
        request_response_information: Option<u8> = id::REQUEST_RESPONSE_INFORMATION,
        request_problem_information: Option<u8> = id::REQUEST_PROBLEM_INFORMATION,
        user_properties: UserProperties = id::USER_PROPERTY,
        authentication_method: Option<Utf8Bytes> = id::AUTHENTICATION_METHOD,
        authentication_data: Option<Bytes> = id::AUTHENTICATION_DATA,
    }
}

impl ConnectProperties {
    fn validate(&self, _packet_type: u8) -> Result<(), DecodeError> {
        non_zero(id::RECEIVE_MAXIMUM, self.receive_maximum.map(u32::from))?;
        non_zero(id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size)?;
        boolean(
            id::REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        )?;
        boolean(
            id::REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        )?;
        // 3.1.2.11.10: authentication data without a method is a Protocol Error.
        if self.authentication_data.is_some() && self.authentication_method.is_none() {
            return Err(DecodeError::InvalidPropertyValue {
                property: id::AUTHENTICATION_DATA,
                value: 0,
            });
        }
        Ok(())
    }
}

property_struct! {
    /// Will properties in the CONNECT payload (3.1.3.2).
    WillProperties {
        will_delay_interval: Option<u32> = id::WILL_DELAY_INTERVAL,
        payload_format_indicator: Option<u8> = id::PAYLOAD_FORMAT_INDICATOR,
        message_expiry_interval: Option<u32> = id::MESSAGE_EXPIRY_INTERVAL,
        content_type: Option<Utf8Bytes> = id::CONTENT_TYPE,
        response_topic: Option<Utf8Bytes> = id::RESPONSE_TOPIC,
        correlation_data: Option<Bytes> = id::CORRELATION_DATA,
        user_properties: UserProperties = id::USER_PROPERTY,
    }
}

impl WillProperties {
    fn validate(&self, _packet_type: u8) -> Result<(), DecodeError> {
        boolean(id::PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator)?;
        // The will is published later with this response topic, so it must be a topic name.
        if let Some(topic) = &self.response_topic {
            if crate::topic::validate_name(topic.as_str()).is_err() {
                return Err(DecodeError::InvalidTopicName);
            }
        }
        Ok(())
    }
}

property_struct! {
    /// CONNACK properties (3.2.2.3).
    ConnAckProperties {
        session_expiry_interval: Option<u32> = id::SESSION_EXPIRY_INTERVAL,
        receive_maximum: Option<u16> = id::RECEIVE_MAXIMUM,
        maximum_qos: Option<u8> = id::MAXIMUM_QOS,
        retain_available: Option<u8> = id::RETAIN_AVAILABLE,
        maximum_packet_size: Option<u32> = id::MAXIMUM_PACKET_SIZE,
        assigned_client_identifier: Option<Utf8Bytes> = id::ASSIGNED_CLIENT_IDENTIFIER,
        topic_alias_maximum: Option<u16> = id::TOPIC_ALIAS_MAXIMUM,
        reason_string: Option<Utf8Bytes> = id::REASON_STRING,
        user_properties: UserProperties = id::USER_PROPERTY,
        wildcard_subscription_available: Option<u8> = id::WILDCARD_SUBSCRIPTION_AVAILABLE,
        subscription_identifiers_available: Option<u8> = id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        shared_subscription_available: Option<u8> = id::SHARED_SUBSCRIPTION_AVAILABLE,
        server_keep_alive: Option<u16> = id::SERVER_KEEP_ALIVE,
        response_information: Option<Utf8Bytes> = id::RESPONSE_INFORMATION,
        server_reference: Option<Utf8Bytes> = id::SERVER_REFERENCE,
        authentication_method: Option<Utf8Bytes> = id::AUTHENTICATION_METHOD,
        authentication_data: Option<Bytes> = id::AUTHENTICATION_DATA,
    }
}

impl ConnAckProperties {
    fn validate(&self, _packet_type: u8) -> Result<(), DecodeError> {
        non_zero(id::RECEIVE_MAXIMUM, self.receive_maximum.map(u32::from))?;
        non_zero(id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size)?;
        boolean(id::MAXIMUM_QOS, self.maximum_qos)?;
        boolean(id::RETAIN_AVAILABLE, self.retain_available)?;
        boolean(
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        )?;
        boolean(
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifiers_available,
        )?;
        boolean(
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        )
    }
}

property_struct! {
    /// PUBLISH properties (3.3.2.3).
    PublishProperties {
        payload_format_indicator: Option<u8> = id::PAYLOAD_FORMAT_INDICATOR,
        message_expiry_interval: Option<u32> = id::MESSAGE_EXPIRY_INTERVAL,
        /// 0 is a Protocol Error [MQTT-3.3.2-8].
        topic_alias: Option<u16> = id::TOPIC_ALIAS,
        response_topic: Option<Utf8Bytes> = id::RESPONSE_TOPIC,
        correlation_data: Option<Bytes> = id::CORRELATION_DATA,
        user_properties: UserProperties = id::USER_PROPERTY,
        /// Server to client only; each 1..=268,435,455 (0 is a Protocol Error).
        subscription_identifiers: SmallVec<[u32; 1]> = id::SUBSCRIPTION_IDENTIFIER,
        content_type: Option<Utf8Bytes> = id::CONTENT_TYPE,
    }
}

impl PublishProperties {
    fn validate(&self, _packet_type: u8) -> Result<(), DecodeError> {
        boolean(id::PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator)?;
        non_zero(id::TOPIC_ALIAS, self.topic_alias.map(u32::from))?;
        if self.subscription_identifiers.contains(&0) {
            return Err(DecodeError::InvalidPropertyValue {
                property: id::SUBSCRIPTION_IDENTIFIER,
                value: 0,
            });
        }
        // [MQTT-3.3.2-19]: a response topic must be a valid topic name.
        if let Some(topic) = &self.response_topic {
            if crate::topic::validate_name(topic.as_str()).is_err() {
                return Err(DecodeError::InvalidTopicName);
            }
        }
        Ok(())
    }
}

property_struct! {
    /// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK and UNSUBSCRIBE. In
    /// UNSUBSCRIBE only user properties are allowed; the reason string is neither read nor
    /// written there.
    AckProperties {
        reason_string: Option<Utf8Bytes> = id::REASON_STRING,
        user_properties: UserProperties = id::USER_PROPERTY,
    }
}

impl AckProperties {
    fn validate(&self, packet_type: u8) -> Result<(), DecodeError> {
        if packet_type == packet_type::UNSUBSCRIBE && self.reason_string.is_some() {
            return Err(DecodeError::PropertyNotAllowed {
                packet_type,
                property: id::REASON_STRING,
            });
        }
        Ok(())
    }

    /// The UNSUBSCRIBE variant: user properties only.
    pub(crate) fn user_only(&self) -> AckProperties {
        AckProperties {
            reason_string: None,
            user_properties: self.user_properties.clone(),
        }
    }
}

property_struct! {
    /// SUBSCRIBE properties (3.8.2.1).
    SubscribeProperties {
        /// 1..=268,435,455; 0 is a Malformed Packet (3.8.2.1.2).
        subscription_identifier: Option<u32> = id::SUBSCRIPTION_IDENTIFIER,
        user_properties: UserProperties = id::USER_PROPERTY,
    }
}

impl SubscribeProperties {
    fn validate(&self, _packet_type: u8) -> Result<(), DecodeError> {
        if self.subscription_identifier == Some(0) {
            // The spec classifies this one as malformed rather than a protocol error.
            return Err(DecodeError::ZeroSubscriptionIdentifier);
        }
        Ok(())
    }
}

property_struct! {
    /// DISCONNECT properties (3.14.2.2).
    DisconnectProperties {
        session_expiry_interval: Option<u32> = id::SESSION_EXPIRY_INTERVAL,
        reason_string: Option<Utf8Bytes> = id::REASON_STRING,
        user_properties: UserProperties = id::USER_PROPERTY,
        server_reference: Option<Utf8Bytes> = id::SERVER_REFERENCE,
    }
}

impl DisconnectProperties {
    fn validate(&self, _packet_type: u8) -> Result<(), DecodeError> {
        Ok(())
    }
}

property_struct! {
    /// AUTH properties (3.15.2.2).
    AuthProperties {
        authentication_method: Option<Utf8Bytes> = id::AUTHENTICATION_METHOD,
        authentication_data: Option<Bytes> = id::AUTHENTICATION_DATA,
        reason_string: Option<Utf8Bytes> = id::REASON_STRING,
        user_properties: UserProperties = id::USER_PROPERTY,
    }
}

impl AuthProperties {
    fn validate(&self, _packet_type: u8) -> Result<(), DecodeError> {
        Ok(())
    }
}

/// Pseudo packet type for the will properties section of CONNECT in [`allowed_in`].
pub const WILL_SECTION: u8 = 0;

/// The packet types (and [`WILL_SECTION`]) a property may appear in, per the table of 2.2.2.2.
/// Empty for an unknown identifier.
pub fn allowed_in(identifier: u8) -> &'static [u8] {
    use packet_type::*;
    match identifier {
        id::PAYLOAD_FORMAT_INDICATOR
        | id::MESSAGE_EXPIRY_INTERVAL
        | id::CONTENT_TYPE
        | id::RESPONSE_TOPIC
        | id::CORRELATION_DATA => &[PUBLISH, WILL_SECTION],
        id::SUBSCRIPTION_IDENTIFIER => &[PUBLISH, SUBSCRIBE],
        id::SESSION_EXPIRY_INTERVAL => &[CONNECT, CONNACK, DISCONNECT],
        id::ASSIGNED_CLIENT_IDENTIFIER
        | id::SERVER_KEEP_ALIVE
        | id::RESPONSE_INFORMATION
        | id::MAXIMUM_QOS
        | id::RETAIN_AVAILABLE
        | id::WILDCARD_SUBSCRIPTION_AVAILABLE
        | id::SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | id::SHARED_SUBSCRIPTION_AVAILABLE => &[CONNACK],
        id::AUTHENTICATION_METHOD | id::AUTHENTICATION_DATA => &[CONNECT, CONNACK, AUTH],
        id::REQUEST_PROBLEM_INFORMATION | id::REQUEST_RESPONSE_INFORMATION => &[CONNECT],
        id::WILL_DELAY_INTERVAL => &[WILL_SECTION],
        id::SERVER_REFERENCE => &[CONNACK, DISCONNECT],
        id::REASON_STRING => &[
            CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, DISCONNECT, AUTH,
        ],
        id::RECEIVE_MAXIMUM | id::TOPIC_ALIAS_MAXIMUM | id::MAXIMUM_PACKET_SIZE => {
            &[CONNECT, CONNACK]
        }
        id::TOPIC_ALIAS => &[PUBLISH],
        id::USER_PROPERTY => &[
            CONNECT,
            CONNACK,
            PUBLISH,
            WILL_SECTION,
            PUBACK,
            PUBREC,
            PUBREL,
            PUBCOMP,
            SUBSCRIBE,
            SUBACK,
            UNSUBSCRIBE,
            UNSUBACK,
            DISCONNECT,
            AUTH,
        ],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primitives::Reader;

    /// Decodes a one-property section in `section` and reports whether it was accepted.
    fn accepts(section: u8, identifier: u8) -> bool {
        let mut body = BytesMut::new();
        body.put_u8(identifier);
        match property_type(identifier) {
            Some(PropertyType::Byte) => body.put_u8(1),
            Some(PropertyType::TwoByteInteger) => body.put_u16(1),
            Some(PropertyType::FourByteInteger) => body.put_u32(1),
            Some(PropertyType::VariableByteInteger) => body.put_u8(1),
            Some(PropertyType::Utf8String) => put_binary(&mut body, b"a"),
            Some(PropertyType::BinaryData) => put_binary(&mut body, b"a"),
            Some(PropertyType::Utf8StringPair) => {
                put_binary(&mut body, b"a");
                put_binary(&mut body, b"b");
            }
            None => return false,
        }
        let mut section_bytes = BytesMut::new();
        put_vbi(&mut section_bytes, body.len() as u32);
        section_bytes.extend_from_slice(&body);
        let reader = &mut Reader::new(section_bytes.freeze());
        use packet_type::*;
        let result = match section {
            WILL_SECTION => WillProperties::decode(reader, CONNECT).map(drop),
            CONNECT => ConnectProperties::decode(reader, CONNECT).map(drop),
            CONNACK => ConnAckProperties::decode(reader, CONNACK).map(drop),
            PUBLISH => PublishProperties::decode(reader, PUBLISH).map(drop),
            SUBSCRIBE => SubscribeProperties::decode(reader, SUBSCRIBE).map(drop),
            DISCONNECT => DisconnectProperties::decode(reader, DISCONNECT).map(drop),
            AUTH => AuthProperties::decode(reader, AUTH).map(drop),
            other => AckProperties::decode(reader, other).map(drop),
        };
        match result {
            Ok(()) => true,
            Err(DecodeError::PropertyNotAllowed { .. } | DecodeError::UnknownProperty(_)) => false,
            // Authentication data alone is a protocol error, but the identifier is allowed.
            Err(DecodeError::InvalidPropertyValue { .. }) => true,
            Err(other) => panic!("section {section} property {identifier:#x}: {other}"),
        }
    }

    #[test]
    fn structs_follow_the_property_table() {
        let sections = [
            WILL_SECTION,
            packet_type::CONNECT,
            packet_type::CONNACK,
            packet_type::PUBLISH,
            packet_type::PUBACK,
            packet_type::PUBREC,
            packet_type::PUBREL,
            packet_type::PUBCOMP,
            packet_type::SUBSCRIBE,
            packet_type::SUBACK,
            packet_type::UNSUBSCRIBE,
            packet_type::UNSUBACK,
            packet_type::DISCONNECT,
            packet_type::AUTH,
        ];
        for identifier in 0..=0x7F_u8 {
            for section in sections {
                assert_eq!(
                    accepts(section, identifier),
                    allowed_in(identifier).contains(&section),
                    "section {section} property {identifier:#x}"
                );
            }
        }
    }
}
