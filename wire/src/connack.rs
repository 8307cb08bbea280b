//! CONNACK (section 3.2): length, decode and encode.

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::framing::packet_type;
use crate::primitives::{ProtocolVersion, Reader};
use crate::properties::ConnAckProperties;
use crate::reason::{decode_reason, ReasonCode};

/// CONNACK. On v3.x the reason code travels as a v3 return code (see
/// [`ReasonCode::to_v3_connack`]) and decodes back to one of the six mapped codes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    /// Always false on v3.1, which has no session present flag.
    pub session_present: bool,
    pub reason_code: ReasonCode,
    /// v5 only.
    pub properties: ConnAckProperties,
}

impl ConnAck {
    pub(crate) fn decode(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<ConnAck, DecodeError> {
        let flags = reader.u8()?;
        // [MQTT-3.2.2-1]: bits 7-1 are reserved; v3.1 has no session present flag at all.
        let reserved = if version == ProtocolVersion::V3_1 {
            0xFF
        } else {
            0xFE
        };
        if flags & reserved != 0 {
            return Err(DecodeError::ReservedBitsSet(flags));
        }
        let code = reader.u8()?;
        if !version.is_v5() {
            let reason_code =
                ReasonCode::from_v3_connack(code).ok_or(DecodeError::InvalidReasonCode {
                    packet_type: packet_type::CONNACK,
                    code,
                })?;
            return Ok(ConnAck {
                session_present: flags & 1 != 0,
                reason_code,
                properties: ConnAckProperties::default(),
            });
        }
        let reason_code = decode_reason(packet_type::CONNACK, code)?;
        let properties = ConnAckProperties::decode(reader, packet_type::CONNACK)?;
        Ok(ConnAck {
            session_present: flags & 1 != 0,
            reason_code,
            properties,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if !version.is_v5() {
            return Ok(2);
        }
        if !self.reason_code.is_allowed_in(packet_type::CONNACK) {
            return Err(EncodeError::ReasonCodeNotAllowed {
                packet_type: packet_type::CONNACK,
                code: self.reason_code.code(),
            });
        }
        Ok(2 + self.properties.wire_len()?)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, out: &mut BytesMut) {
        let session_present = self.session_present && version != ProtocolVersion::V3_1;
        out.put_u8(u8::from(session_present));
        if version.is_v5() {
            out.put_u8(self.reason_code.code());
            self.properties.write(out);
        } else {
            out.put_u8(self.reason_code.to_v3_connack());
        }
    }
}
