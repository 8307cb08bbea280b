//! PUBLISH (section 3.3): length, decode and encode.

use std::num::NonZeroU16;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::framing::packet_type;
use crate::primitives::{put_binary, string_len, ProtocolVersion, QoS, Reader, Utf8Bytes};
use crate::properties::PublishProperties;

const FLAG_DUP: u8 = 0b1000;
const FLAG_RETAIN: u8 = 0b0001;

/// PUBLISH. `topic` may be empty only in v5 with a topic alias property.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: Utf8Bytes,
    /// `Some` exactly when `qos` > 0.
    pub packet_id: Option<NonZeroU16>,
    /// v5 only; empty for v3.x.
    pub properties: PublishProperties,
    pub payload: Bytes,
}

impl Publish {
    // Inlined so the packet is built in place in the caller's return slot.
    #[inline]
    pub(crate) fn decode(
        reader: &mut Reader,
        flags: u8,
        version: ProtocolVersion,
    ) -> Result<Publish, DecodeError> {
        // [MQTT-3.3.1-4]: both QoS bits set is malformed.
        let qos = QoS::try_from((flags >> 1) & 0b11)?;
        let dup = flags & FLAG_DUP != 0;
        // [MQTT-3.3.1-2]
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::DupWithQoS0);
        }
        let topic = reader.topic_name()?;
        let packet_id = if qos == QoS::AtMostOnce {
            None
        } else {
            Some(reader.packet_id()?)
        };
        let properties = if version.is_v5() {
            PublishProperties::decode(reader, packet_type::PUBLISH)?
        } else {
            PublishProperties::default()
        };
        if topic.is_empty() {
            if !version.is_v5() {
                // [MQTT-4.7.3-1]
                return Err(DecodeError::InvalidTopicName);
            }
            if properties.topic_alias.is_none() {
                return Err(DecodeError::EmptyTopicWithoutAlias);
            }
        }
        Ok(Publish {
            dup,
            qos,
            retain: flags & FLAG_RETAIN != 0,
            topic,
            packet_id,
            properties,
            payload: reader.rest(),
        })
    }

    pub(crate) fn first_byte(&self) -> u8 {
        let mut byte = (packet_type::PUBLISH << 4) | ((self.qos as u8) << 1);
        if self.dup {
            byte |= FLAG_DUP;
        }
        if self.retain {
            byte |= FLAG_RETAIN;
        }
        byte
    }

    /// Remaining length including the payload.
    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if (self.qos == QoS::AtMostOnce) != self.packet_id.is_none() {
            return Err(EncodeError::PacketIdMismatch);
        }
        if self.topic.is_empty() && !(version.is_v5() && self.properties.topic_alias.is_some()) {
            return Err(EncodeError::EmptyTopic);
        }
        let mut len = string_len(self.topic.len())?;
        if self.packet_id.is_some() {
            len += 2;
        }
        if version.is_v5() {
            len += self.properties.wire_len()?;
        }
        Ok(len + self.payload.len())
    }

    /// Variable header and properties, not the payload.
    pub(crate) fn write_header(&self, version: ProtocolVersion, out: &mut BytesMut) {
        put_binary(out, self.topic.as_bytes());
        if let Some(packet_id) = self.packet_id {
            out.put_u16(packet_id.get());
        }
        if version.is_v5() {
            self.properties.write(out);
        }
    }
}
