//! UNSUBACK (section 3.11): length, decode and encode.

use std::num::NonZeroU16;

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::framing::packet_type;
use crate::primitives::{ProtocolVersion, Reader};
use crate::properties::AckProperties;
use crate::reason::{decode_reason, ReasonCode};

/// Initial capacity cap for the reason code list; it grows with the frame beyond that.
const CODES_INITIAL_CAPACITY_MAX: usize = 16;

/// UNSUBACK. v3.x has no payload: `reason_codes` is empty when decoded and ignored when encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: NonZeroU16,
    pub reason_codes: Vec<ReasonCode>,
    pub properties: AckProperties,
}

impl UnsubAck {
    pub(crate) fn decode(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<UnsubAck, DecodeError> {
        let packet_id = reader.packet_id()?;
        if !version.is_v5() {
            return Ok(UnsubAck {
                packet_id,
                reason_codes: Vec::new(),
                properties: AckProperties::default(),
            });
        }
        let properties = AckProperties::decode(reader, packet_type::UNSUBACK)?;
        let mut reason_codes =
            Vec::with_capacity(reader.remaining().min(CODES_INITIAL_CAPACITY_MAX));
        while !reader.is_empty() {
            reason_codes.push(decode_reason(packet_type::UNSUBACK, reader.u8()?)?);
        }
        Ok(UnsubAck {
            packet_id,
            reason_codes,
            properties,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if !version.is_v5() {
            return Ok(2);
        }
        if let Some(bad) = self
            .reason_codes
            .iter()
            .find(|code| !code.is_allowed_in(packet_type::UNSUBACK))
        {
            return Err(EncodeError::ReasonCodeNotAllowed {
                packet_type: packet_type::UNSUBACK,
                code: bad.code(),
            });
        }
        Ok(2 + self.properties.wire_len()? + self.reason_codes.len())
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, out: &mut BytesMut) {
        out.put_u16(self.packet_id.get());
        if version.is_v5() {
            self.properties.write(out);
            for code in &self.reason_codes {
                out.put_u8(code.code());
            }
        }
    }
}
