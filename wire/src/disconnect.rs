//! DISCONNECT (section 3.14): length, decode and encode.

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::framing::packet_type;
use crate::primitives::{ProtocolVersion, Reader};
use crate::properties::DisconnectProperties;
use crate::reason::{decode_reason, ReasonCode};

/// DISCONNECT. On v3.x the packet has no body: decoding yields `NormalDisconnection`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    pub reason_code: ReasonCode,
    pub properties: DisconnectProperties,
}

impl Disconnect {
    pub(crate) fn decode(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Disconnect, DecodeError> {
        // v3.x: anything after the fixed header is rejected by the trailing-bytes check.
        if !version.is_v5() || reader.is_empty() {
            // 3.14.2.1: remaining length 0 means Normal disconnection.
            return Ok(Disconnect::default());
        }
        let reason_code = decode_reason(packet_type::DISCONNECT, reader.u8()?)?;
        // 3.14.2.2.1: remaining length 1 means no properties.
        let properties = if reader.is_empty() {
            DisconnectProperties::default()
        } else {
            DisconnectProperties::decode(reader, packet_type::DISCONNECT)?
        };
        Ok(Disconnect {
            reason_code,
            properties,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if !version.is_v5() {
            return Ok(0);
        }
        if !self.reason_code.is_allowed_in(packet_type::DISCONNECT) {
            return Err(EncodeError::ReasonCodeNotAllowed {
                packet_type: packet_type::DISCONNECT,
                code: self.reason_code.code(),
            });
        }
        if self.properties.is_empty() {
            return Ok(usize::from(
                self.reason_code != ReasonCode::NormalDisconnection,
            ));
        }
        Ok(1 + self.properties.wire_len()?)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, out: &mut BytesMut) {
        if !version.is_v5() {
            return;
        }
        if self.properties.is_empty() {
            if self.reason_code != ReasonCode::NormalDisconnection {
                out.put_u8(self.reason_code.code());
            }
            return;
        }
        out.put_u8(self.reason_code.code());
        self.properties.write(out);
    }
}
