//! PUBACK, PUBREC, PUBREL and PUBCOMP (sections 3.4-3.7): one layout, length, decode and encode.

use std::num::NonZeroU16;

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::primitives::{ProtocolVersion, Reader};
use crate::properties::AckProperties;
use crate::reason::{decode_reason, ReasonCode};

/// PUBACK / PUBREC / PUBREL / PUBCOMP. On v3.x only `packet_id` is on the wire; decoding yields
/// `Success` and empty properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubAck {
    pub packet_id: NonZeroU16,
    pub reason_code: ReasonCode,
    pub properties: AckProperties,
}

impl PubAck {
    /// A success acknowledgement without properties.
    pub fn new(packet_id: NonZeroU16) -> PubAck {
        PubAck {
            packet_id,
            reason_code: ReasonCode::Success,
            properties: AckProperties::default(),
        }
    }

    pub(crate) fn decode(
        reader: &mut Reader,
        kind: u8,
        version: ProtocolVersion,
    ) -> Result<PubAck, DecodeError> {
        let packet_id = reader.packet_id()?;
        if !version.is_v5() || reader.is_empty() {
            // 3.4.2.1: a remaining length of 2 means Success with no properties.
            return Ok(PubAck::new(packet_id));
        }
        let reason_code = decode_reason(kind, reader.u8()?)?;
        // 3.4.2.2.1: no property length byte means no properties.
        let properties = if reader.is_empty() {
            AckProperties::default()
        } else {
            AckProperties::decode(reader, kind)?
        };
        Ok(PubAck {
            packet_id,
            reason_code,
            properties,
        })
    }

    pub(crate) fn body_len(
        &self,
        kind: u8,
        version: ProtocolVersion,
    ) -> Result<usize, EncodeError> {
        if !version.is_v5() {
            return Ok(2);
        }
        if !self.reason_code.is_allowed_in(kind) {
            return Err(EncodeError::ReasonCodeNotAllowed {
                packet_type: kind,
                code: self.reason_code.code(),
            });
        }
        // Shortest form the spec allows: omit properties, then the reason code if Success.
        if self.properties.is_empty() {
            return Ok(if self.reason_code == ReasonCode::Success {
                2
            } else {
                3
            });
        }
        Ok(3 + self.properties.wire_len()?)
    }

    pub(crate) fn write_body(&self, _kind: u8, version: ProtocolVersion, out: &mut BytesMut) {
        out.put_u16(self.packet_id.get());
        if !version.is_v5() {
            return;
        }
        if self.properties.is_empty() {
            if self.reason_code != ReasonCode::Success {
                out.put_u8(self.reason_code.code());
            }
            return;
        }
        out.put_u8(self.reason_code.code());
        self.properties.write(out);
    }
}
