//! CONNECT (section 3.1): length, decode and encode.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::framing::packet_type;
use crate::primitives::{put_binary, string_len, ProtocolVersion, QoS, Reader, Utf8Bytes};
use crate::properties::{ConnectProperties, WillProperties};
use crate::topic;

const PROTOCOL_NAME_V3_1: &[u8] = b"MQIsdp";
const PROTOCOL_NAME: &[u8] = b"MQTT";

const FLAG_USERNAME: u8 = 0x80;
const FLAG_PASSWORD: u8 = 0x40;
const FLAG_WILL_RETAIN: u8 = 0x20;
const FLAG_WILL_QOS_SHIFT: u8 = 3;
const FLAG_WILL: u8 = 0x04;
const FLAG_CLEAN_START: u8 = 0x02;
const FLAG_RESERVED: u8 = 0x01;

/// The Will Message stored with a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    pub topic: Utf8Bytes,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// v5 only; empty for v3.x.
    pub properties: WillProperties,
}

/// CONNECT. `clean_start` is "Clean Session" in v3.x. The client id may be empty; whether that
/// is acceptable (v3.1.1 requires clean session) is the broker's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: ProtocolVersion,
    pub clean_start: bool,
    pub keep_alive_secs: u16,
    pub client_id: Utf8Bytes,
    pub will: Option<LastWill>,
    pub username: Option<Utf8Bytes>,
    pub password: Option<Bytes>,
    /// v5 only; empty for v3.x.
    pub properties: ConnectProperties,
}

impl Connect {
    pub(crate) fn decode(reader: &mut Reader) -> Result<Connect, DecodeError> {
        let name = reader.binary()?;
        let level = reader.u8()?;
        let protocol = match (&name[..], level) {
            (PROTOCOL_NAME, 4) => ProtocolVersion::V3_1_1,
            (PROTOCOL_NAME, 5) => ProtocolVersion::V5,
            (PROTOCOL_NAME_V3_1, 3) => ProtocolVersion::V3_1,
            (PROTOCOL_NAME | PROTOCOL_NAME_V3_1, other) => {
                return Err(DecodeError::UnsupportedProtocolVersion(other))
            }
            _ => return Err(DecodeError::InvalidProtocolName),
        };
        let flags = reader.u8()?;
        // [MQTT-3.1.2-3]
        if flags & FLAG_RESERVED != 0 {
            return Err(DecodeError::ConnectReservedFlag);
        }
        let will_flag = flags & FLAG_WILL != 0;
        let will_qos_bits = (flags >> FLAG_WILL_QOS_SHIFT) & 0b11;
        let will_retain = flags & FLAG_WILL_RETAIN != 0;
        if !will_flag && (will_qos_bits != 0 || will_retain) {
            // [MQTT-3.1.2-11] [MQTT-3.1.2-13] (3.1.1) / [MQTT-3.1.2-15] (v5)
            return Err(DecodeError::WillFlagsInconsistent);
        }
        // [MQTT-3.1.2-14] (3.1.1): will qos 3 is not allowed; v5 calls it malformed.
        let will_qos = QoS::try_from(will_qos_bits)?;
        let has_username = flags & FLAG_USERNAME != 0;
        let has_password = flags & FLAG_PASSWORD != 0;
        // [MQTT-3.1.2-22] (3.1.1); v5 allows a password without a user name.
        if !protocol.is_v5() && has_password && !has_username {
            return Err(DecodeError::PasswordWithoutUsername);
        }
        let keep_alive_secs = reader.u16()?;
        let properties = if protocol.is_v5() {
            ConnectProperties::decode(reader, packet_type::CONNECT)?
        } else {
            ConnectProperties::default()
        };
        let client_id = reader.utf8()?;
        let will = if will_flag {
            let will_properties = if protocol.is_v5() {
                WillProperties::decode(reader, packet_type::CONNECT)?
            } else {
                WillProperties::default()
            };
            let topic = reader.utf8()?;
            // [MQTT-3.1.3-11]: the will topic is published later, so it must be a topic name.
            topic::validate_name(topic.as_str()).map_err(|_| DecodeError::InvalidTopicName)?;
            let payload = reader.binary()?;
            Some(LastWill {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties: will_properties,
            })
        } else {
            None
        };
        let username = if has_username {
            Some(reader.utf8()?)
        } else {
            None
        };
        let password = if has_password {
            Some(reader.binary()?)
        } else {
            None
        };
        Ok(Connect {
            protocol,
            clean_start: flags & FLAG_CLEAN_START != 0,
            keep_alive_secs,
            client_id,
            will,
            username,
            password,
            properties,
        })
    }

    fn protocol_name(&self) -> &'static [u8] {
        match self.protocol {
            ProtocolVersion::V3_1 => PROTOCOL_NAME_V3_1,
            _ => PROTOCOL_NAME,
        }
    }

    pub(crate) fn body_len(&self) -> Result<usize, EncodeError> {
        let v5 = self.protocol.is_v5();
        if !v5 && self.password.is_some() && self.username.is_none() {
            return Err(EncodeError::PasswordWithoutUsername);
        }
        // name + level + flags + keep alive
        let mut len = 2 + self.protocol_name().len() + 1 + 1 + 2;
        if v5 {
            len += self.properties.wire_len()?;
        }
        len += string_len(self.client_id.len())?;
        if let Some(will) = &self.will {
            if v5 {
                len += will.properties.wire_len()?;
            }
            len += string_len(will.topic.len())? + string_len(will.payload.len())?;
        }
        if let Some(username) = &self.username {
            len += string_len(username.len())?;
        }
        if let Some(password) = &self.password {
            len += string_len(password.len())?;
        }
        Ok(len)
    }

    pub(crate) fn write_body(&self, out: &mut BytesMut) {
        let v5 = self.protocol.is_v5();
        put_binary(out, self.protocol_name());
        out.put_u8(self.protocol.level());
        let mut flags = 0;
        if self.username.is_some() {
            flags |= FLAG_USERNAME;
        }
        if self.password.is_some() {
            flags |= FLAG_PASSWORD;
        }
        if let Some(will) = &self.will {
            flags |= FLAG_WILL | ((will.qos as u8) << FLAG_WILL_QOS_SHIFT);
            if will.retain {
                flags |= FLAG_WILL_RETAIN;
            }
        }
        if self.clean_start {
            flags |= FLAG_CLEAN_START;
        }
        out.put_u8(flags);
        out.put_u16(self.keep_alive_secs);
        if v5 {
            self.properties.write(out);
        }
        put_binary(out, self.client_id.as_bytes());
        if let Some(will) = &self.will {
            if v5 {
                will.properties.write(out);
            }
            put_binary(out, will.topic.as_bytes());
            put_binary(out, &will.payload);
        }
        if let Some(username) = &self.username {
            put_binary(out, username.as_bytes());
        }
        if let Some(password) = &self.password {
            put_binary(out, password);
        }
    }
}
