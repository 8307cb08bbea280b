//! SUBSCRIBE (section 3.8): length, decode and encode.

use std::num::NonZeroU16;

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::framing::packet_type;
use crate::primitives::{put_binary, string_len, ProtocolVersion, QoS, Reader, Utf8Bytes};
use crate::properties::SubscribeProperties;
use crate::topic;

/// Decoded filters are pushed one by one; the initial capacity is capped so a huge frame cannot
/// make us reserve more than this up front (growth stays proportional to the frame).
const FILTERS_INITIAL_CAPACITY_MAX: usize = 8;

/// v5 Retain Handling (3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum RetainHandling {
    #[default]
    SendAtSubscribe = 0,
    SendAtSubscribeIfNew = 1,
    DoNotSend = 2,
}

/// Subscription options byte. On v3.x only `qos` is on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    pub(crate) fn decode(byte: u8, version: ProtocolVersion) -> Result<Self, DecodeError> {
        // [MQTT-3.8.3-5] (v5) / [MQTT-3-8.3-4] (3.1.1): reserved bits must be 0.
        let reserved = if version.is_v5() {
            0b1100_0000
        } else {
            0b1111_1100
        };
        if byte & reserved != 0 {
            return Err(DecodeError::ReservedBitsSet(byte));
        }
        let qos = QoS::try_from(byte & 0b11)?;
        let retain_handling = match (byte >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendAtSubscribeIfNew,
            2 => RetainHandling::DoNotSend,
            // 3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3".
            _ => return Err(DecodeError::InvalidRetainHandling),
        };
        Ok(SubscriptionOptions {
            qos,
            no_local: byte & 0b0100 != 0,
            retain_as_published: byte & 0b1000 != 0,
            retain_handling,
        })
    }

    pub(crate) fn encode(&self, version: ProtocolVersion) -> u8 {
        let mut byte = self.qos as u8;
        if version.is_v5() {
            if self.no_local {
                byte |= 0b0100;
            }
            if self.retain_as_published {
                byte |= 0b1000;
            }
            byte |= (self.retain_handling as u8) << 4;
        }
        byte
    }
}

/// SUBSCRIBE. Filters are validated (syntax and `$share/` form) while decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: NonZeroU16,
    pub filters: Vec<(Utf8Bytes, SubscriptionOptions)>,
    /// v5 only.
    pub properties: SubscribeProperties,
}

impl Subscribe {
    pub(crate) fn decode(
        reader: &mut Reader,
        version: ProtocolVersion,
    ) -> Result<Subscribe, DecodeError> {
        let packet_id = reader.packet_id()?;
        let properties = if version.is_v5() {
            SubscribeProperties::decode(reader, packet_type::SUBSCRIBE)?
        } else {
            SubscribeProperties::default()
        };
        // Each entry takes at least 4 bytes: 2 length, 1 filter byte, 1 options byte.
        let mut filters =
            Vec::with_capacity((reader.remaining() / 4).min(FILTERS_INITIAL_CAPACITY_MAX));
        while !reader.is_empty() {
            let filter = reader.utf8()?;
            let options = SubscriptionOptions::decode(reader.u8()?, version)?;
            let shared = topic::parse_shared(filter.as_str())
                .map_err(|_| DecodeError::InvalidTopicFilter)?;
            if shared.is_none() {
                topic::validate_filter(filter.as_str())
                    .map_err(|_| DecodeError::InvalidTopicFilter)?;
            } else if options.no_local {
                // [MQTT-3.8.3-4]
                return Err(DecodeError::NoLocalOnSharedSubscription);
            }
            filters.push((filter, options));
        }
        if filters.is_empty() {
            // [MQTT-3.8.3-3]
            return Err(DecodeError::EmptySubscription);
        }
        Ok(Subscribe {
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
            len += self.properties.wire_len()?;
        }
        for (filter, _) in &self.filters {
            len += string_len(filter.len())? + 1;
        }
        Ok(len)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, out: &mut BytesMut) {
        out.put_u16(self.packet_id.get());
        if version.is_v5() {
            self.properties.write(out);
        }
        for (filter, options) in &self.filters {
            put_binary(out, filter.as_bytes());
            out.put_u8(options.encode(version));
        }
    }
}
