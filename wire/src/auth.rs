//! AUTH (section 3.15, v5 only): length, decode and encode.

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::framing::packet_type;
use crate::primitives::Reader;
use crate::properties::AuthProperties;
use crate::reason::{decode_reason, ReasonCode};

/// AUTH (v5 only; decoding a type-15 packet on v3.x is an invalid packet type).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    pub reason_code: ReasonCode,
    pub properties: AuthProperties,
}

impl Auth {
    pub(crate) fn decode(reader: &mut Reader) -> Result<Auth, DecodeError> {
        if reader.is_empty() {
            // 3.15.2.1: remaining length 0 means Success with no properties.
            return Ok(Auth::default());
        }
        let reason_code = decode_reason(packet_type::AUTH, reader.u8()?)?;
        let properties = if reader.is_empty() {
            AuthProperties::default()
        } else {
            AuthProperties::decode(reader, packet_type::AUTH)?
        };
        Ok(Auth {
            reason_code,
            properties,
        })
    }

    pub(crate) fn body_len(&self) -> Result<usize, EncodeError> {
        if !self.reason_code.is_allowed_in(packet_type::AUTH) {
            return Err(EncodeError::ReasonCodeNotAllowed {
                packet_type: packet_type::AUTH,
                code: self.reason_code.code(),
            });
        }
        if self.properties.is_empty() {
            return Ok(usize::from(self.reason_code != ReasonCode::Success));
        }
        Ok(1 + self.properties.wire_len()?)
    }

    pub(crate) fn write_body(&self, out: &mut BytesMut) {
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
