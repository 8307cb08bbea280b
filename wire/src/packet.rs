//! The `Packet` enum and the top-level decode / encode entry points.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::ack::PubAck;
use crate::auth::Auth;
use crate::connack::ConnAck;
use crate::connect::Connect;
use crate::disconnect::Disconnect;
use crate::error::{DecodeError, EncodeError};
use crate::framing::{check_flags, first_byte, packet_type};
use crate::primitives::{put_vbi, read_vbi, vbi_len, ProtocolVersion, Reader, VbiRead, VBI_MAX};
use crate::publish::Publish;
use crate::suback::SubAck;
use crate::subscribe::Subscribe;
use crate::unsuback::UnsubAck;
use crate::unsubscribe::Unsubscribe;

/// One MQTT control packet.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubAck),
    PubRec(PubAck),
    PubRel(PubAck),
    PubComp(PubAck),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    /// The fixed header packet type number.
    pub fn packet_type(&self) -> u8 {
        match self {
            Packet::Connect(_) => packet_type::CONNECT,
            Packet::ConnAck(_) => packet_type::CONNACK,
            Packet::Publish(_) => packet_type::PUBLISH,
            Packet::PubAck(_) => packet_type::PUBACK,
            Packet::PubRec(_) => packet_type::PUBREC,
            Packet::PubRel(_) => packet_type::PUBREL,
            Packet::PubComp(_) => packet_type::PUBCOMP,
            Packet::Subscribe(_) => packet_type::SUBSCRIBE,
            Packet::SubAck(_) => packet_type::SUBACK,
            Packet::Unsubscribe(_) => packet_type::UNSUBSCRIBE,
            Packet::UnsubAck(_) => packet_type::UNSUBACK,
            Packet::PingReq => packet_type::PINGREQ,
            Packet::PingResp => packet_type::PINGRESP,
            Packet::Disconnect(_) => packet_type::DISCONNECT,
            Packet::Auth(_) => packet_type::AUTH,
        }
    }
}

/// Decodes exactly one complete frame (the `frame_len` bytes [`crate::check`] reported),
/// zero-copy: strings and payloads are slices of `frame`. CONNECT is decodable with any
/// `version` (it carries its own); later packets use the version learned from CONNECT.
pub fn decode(mut frame: Bytes, version: ProtocolVersion) -> Result<Packet, DecodeError> {
    let Some(&first) = frame.first() else {
        return Err(DecodeError::UnexpectedEof { needed: 2 });
    };
    let (remaining, used) = match read_vbi(&frame[1..])? {
        VbiRead::Value(remaining, used) => (remaining as usize, used),
        VbiRead::Incomplete => return Err(DecodeError::UnexpectedEof { needed: 1 }),
    };
    let header_len = 1 + used;
    let body_len = frame.len() - header_len;
    if body_len < remaining {
        return Err(DecodeError::UnexpectedEof {
            needed: remaining - body_len,
        });
    }
    if body_len > remaining {
        return Err(DecodeError::TrailingBytes(body_len - remaining));
    }
    frame.advance(header_len);
    let kind = first >> 4;
    let flags = first & 0x0F;
    let mut reader = Reader::new(frame);
    let packet = match kind {
        packet_type::PUBLISH => {
            // The hot path: the payload takes the rest of the frame, so there is nothing left
            // to check, and returning directly lets the packet be built in the return slot.
            return Ok(Packet::Publish(Publish::decode(
                &mut reader,
                flags,
                version,
            )?));
        }
        packet_type::CONNECT => {
            check_flags(kind, flags)?;
            Packet::Connect(Box::new(Connect::decode(&mut reader)?))
        }
        packet_type::AUTH if !version.is_v5() => return Err(DecodeError::InvalidPacketType(kind)),
        0 => return Err(DecodeError::InvalidPacketType(kind)),
        _ => {
            check_flags(kind, flags)?;
            match kind {
                packet_type::CONNACK => Packet::ConnAck(ConnAck::decode(&mut reader, version)?),
                packet_type::PUBACK => Packet::PubAck(PubAck::decode(&mut reader, kind, version)?),
                packet_type::PUBREC => Packet::PubRec(PubAck::decode(&mut reader, kind, version)?),
                packet_type::PUBREL => Packet::PubRel(PubAck::decode(&mut reader, kind, version)?),
                packet_type::PUBCOMP => {
                    Packet::PubComp(PubAck::decode(&mut reader, kind, version)?)
                }
                packet_type::SUBSCRIBE => {
                    Packet::Subscribe(Subscribe::decode(&mut reader, version)?)
                }
                packet_type::SUBACK => Packet::SubAck(SubAck::decode(&mut reader, version)?),
                packet_type::UNSUBSCRIBE => {
                    Packet::Unsubscribe(Unsubscribe::decode(&mut reader, version)?)
                }
                packet_type::UNSUBACK => Packet::UnsubAck(UnsubAck::decode(&mut reader, version)?),
                packet_type::PINGREQ => Packet::PingReq,
                packet_type::PINGRESP => Packet::PingResp,
                packet_type::DISCONNECT => {
                    Packet::Disconnect(Disconnect::decode(&mut reader, version)?)
                }
                _ => Packet::Auth(Auth::decode(&mut reader)?),
            }
        }
    };
    reader.finish()?;
    Ok(packet)
}

/// Remaining length (everything after the fixed header) of `packet` in `version`.
fn remaining_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let len = match packet {
        Packet::Connect(connect) => connect.body_len()?,
        Packet::ConnAck(connack) => connack.body_len(version)?,
        Packet::Publish(publish) => publish.body_len(version)?,
        Packet::PubAck(ack) => ack.body_len(packet_type::PUBACK, version)?,
        Packet::PubRec(ack) => ack.body_len(packet_type::PUBREC, version)?,
        Packet::PubRel(ack) => ack.body_len(packet_type::PUBREL, version)?,
        Packet::PubComp(ack) => ack.body_len(packet_type::PUBCOMP, version)?,
        Packet::Subscribe(subscribe) => subscribe.body_len(version)?,
        Packet::SubAck(suback) => suback.body_len(version)?,
        Packet::Unsubscribe(unsubscribe) => unsubscribe.body_len(version)?,
        Packet::UnsubAck(unsuback) => unsuback.body_len(version)?,
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(disconnect) => disconnect.body_len(version)?,
        Packet::Auth(auth) => {
            if !version.is_v5() {
                return Err(EncodeError::PacketNotSupported {
                    packet_type: packet_type::AUTH,
                    level: version.level(),
                });
            }
            auth.body_len()?
        }
    };
    if len > VBI_MAX as usize {
        return Err(EncodeError::PacketTooLarge { size: 1 + 4 + len });
    }
    Ok(len)
}

/// Encoded size of the whole frame without encoding (for maximum packet size checks).
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let remaining = remaining_len(packet, version)?;
    Ok(1 + vbi_len(remaining) + remaining)
}

/// Encodes `packet` into `out`. CONNECT is written in its own `protocol` version. Fields the
/// version cannot carry (v5 properties and reason codes on v3.x) are omitted; nothing is written
/// on error.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let remaining = remaining_len(packet, version)?;
    out.reserve(1 + vbi_len(remaining) + remaining);
    let first = match packet {
        Packet::Publish(publish) => publish.first_byte(),
        other => first_byte(other.packet_type()),
    };
    out.put_u8(first);
    put_vbi(out, remaining as u32);
    match packet {
        Packet::Connect(connect) => connect.write_body(out),
        Packet::ConnAck(connack) => connack.write_body(version, out),
        Packet::Publish(publish) => {
            publish.write_header(version, out);
            out.put_slice(&publish.payload);
        }
        Packet::PubAck(ack) => ack.write_body(packet_type::PUBACK, version, out),
        Packet::PubRec(ack) => ack.write_body(packet_type::PUBREC, version, out),
        Packet::PubRel(ack) => ack.write_body(packet_type::PUBREL, version, out),
        Packet::PubComp(ack) => ack.write_body(packet_type::PUBCOMP, version, out),
        Packet::Subscribe(subscribe) => subscribe.write_body(version, out),
        Packet::SubAck(suback) => suback.write_body(version, out),
        Packet::Unsubscribe(unsubscribe) => unsubscribe.write_body(version, out),
        Packet::UnsubAck(unsuback) => unsuback.write_body(version, out),
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(disconnect) => disconnect.write_body(version, out),
        Packet::Auth(auth) => auth.write_body(out),
    }
    Ok(())
}

/// Fan-out helper: writes a PUBLISH's fixed header, variable header and properties but not the
/// payload, so the caller can send the header followed by the shared payload `Bytes` without
/// copying it. The remaining length accounts for `publish.payload.len()`.
pub fn encode_publish_header(
    publish: &Publish,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let remaining = publish.body_len(version)?;
    if remaining > VBI_MAX as usize {
        return Err(EncodeError::PacketTooLarge {
            size: 1 + 4 + remaining,
        });
    }
    let header_only = remaining - publish.payload.len();
    out.reserve(1 + vbi_len(remaining) + header_only);
    out.put_u8(publish.first_byte());
    put_vbi(out, remaining as u32);
    publish.write_header(version, out);
    Ok(())
}
