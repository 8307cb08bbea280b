//! SUBACK (section 3.9): length, decode and encode.

use std::num::NonZeroU16;

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::framing::packet_type;
use crate::primitives::{ProtocolVersion, Reader};
use crate::properties::AckProperties;
use crate::reason::{decode_reason, ReasonCode};

/// Initial capacity cap for the reason code list; it grows with the frame beyond that.
const CODES_INITIAL_CAPACITY_MAX: usize = 16;

/// SUBACK. On v3.x codes are limited to 0x00, 0x01, 0x02 and 0x80; any other failure code is
/// sent as 0x80.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: NonZeroU16,
    pub reason_codes: Vec<ReasonCode>,
    /// v5 only.
    pub properties: AckProperties,
}

impl SubAck {
    pub(crate) fn decode(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<SubAck, DecodeError> {
        let packet_id = reader.packet_id()?;
        let properties = if version.is_v5() {
            AckProperties::decode(reader, packet_type::SUBACK)?
        } else {
            AckProperties::default()
        };
        let mut reason_codes =
            Vec::with_capacity(reader.remaining().min(CODES_INITIAL_CAPACITY_MAX));
        while !reader.is_empty() {
            let code = reader.u8()?;
            let reason = if version.is_v5() {
                decode_reason(packet_type::SUBACK, code)?
            } else if ReasonCode::v3_suback_codes().contains(&code) {
                ReasonCode::try_from(code).map_err(|code| DecodeError::InvalidReasonCode {
                    packet_type: packet_type::SUBACK,
                    code,
                })?
            } else {
                return Err(DecodeError::InvalidReasonCode {
                    packet_type: packet_type::SUBACK,
                    code,
                });
            };
            reason_codes.push(reason);
        }
        Ok(SubAck {
            packet_id,
            reason_codes,
            properties,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if !version.is_v5() {
            return Ok(2 + self.reason_codes.len());
        }
        if let Some(bad) = self
            .reason_codes
            .iter()
            .find(|code| !code.is_allowed_in(packet_type::SUBACK))
        {
            return Err(EncodeError::ReasonCodeNotAllowed {
                packet_type: packet_type::SUBACK,
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
        } else {
            for code in &self.reason_codes {
                out.put_u8(code.to_v3_suback());
            }
        }
    }
}
