//! UNSUBSCRIBE (section 3.10): length, decode and encode.

use std::num::NonZeroU16;

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::framing::packet_type;
use crate::primitives::{put_binary, string_len, ProtocolVersion, Reader, Utf8Bytes};
use crate::properties::AckProperties;
use crate::topic;

/// Initial capacity cap for the filter list; it grows with the frame beyond that.
const FILTERS_INITIAL_CAPACITY_MAX: usize = 8;

/// UNSUBSCRIBE. Only user properties are allowed (v5); a `reason_string` is not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: NonZeroU16,
    pub filters: Vec<Utf8Bytes>,
    pub properties: AckProperties,
}

impl Unsubscribe {
    pub(crate) fn decode(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Unsubscribe, DecodeError> {
        let packet_id = reader.packet_id()?;
        let properties = if version.is_v5() {
            AckProperties::decode(reader, packet_type::UNSUBSCRIBE)?
        } else {
            AckProperties::default()
        };
        let mut filters =
            Vec::with_capacity((reader.remaining() / 3).min(FILTERS_INITIAL_CAPACITY_MAX));
        while !reader.is_empty() {
            let filter = reader.utf8()?;
            let shared = topic::parse_shared(filter.as_str())
                .map_err(|_| DecodeError::InvalidTopicFilter)?;
            if shared.is_none() {
                topic::validate_filter(filter.as_str())
                    .map_err(|_| DecodeError::InvalidTopicFilter)?;
            }
            filters.push(filter);
        }
        if filters.is_empty() {
            // [MQTT-3.10.3-2]
            return Err(DecodeError::EmptyUnsubscription);
        }
        Ok(Unsubscribe {
            packet_id,
            filters,
            properties,
        })
    }

    pub(crate) fn body_len(&self, version: ProtocolVersion) -> Result<usize, EncodeError> {
        if self.filters.is_empty() {
            return Err(EncodeError::EmptyFilterList);
        }
        let mut len = 2;
        if version.is_v5() {
            len += self.properties.user_only().wire_len()?;
        }
        for filter in &self.filters {
            len += string_len(filter.len())?;
        }
        Ok(len)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, out: &mut BytesMut) {
        out.put_u16(self.packet_id.get());
        if version.is_v5() {
            self.properties.user_only().write(out);
        }
        for filter in &self.filters {
            put_binary(out, filter.as_bytes());
        }
    }
}
