//! The bytes of a `PeerFrame::Forward`: the publishes one node sends another in one loop turn.
//!
//! A batch is a run of records, each `len u32 BE | origin_time_us u64 BE | flags u8 | groups u16 BE |
//! groups × (filter_len u16 BE, filter, group_len u16 BE, group) | MQTT v5 PUBLISH`, where `len`
//! counts the bytes after it, `origin_time_us` is the wall-clock time (µs since the Unix epoch)
//! the origin node accepted the message (retained updates of one topic are ordered by it on every
//! node), and the groups are the shared groups the origin picked this destination for (each
//! group gets a message once cluster-wide). Flag bit 0 ([`FLAG_RETAINED_SYNC`]): a retained
//! message handed over when the link came up, to be stored and delivered to nobody. The PUBLISH is the wire crate's own v5 encoding (a v3 publisher's message
//! simply has no properties), so the receiver decodes it with the same validated decoder as
//! client input. Per-delivery fields are not carried: the packet id is a placeholder (1) for
//! QoS 1/2, DUP is clear, no topic alias, no subscription identifier.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf as _, Bytes, BytesMut};
use engine::message::{GroupPick, Message};
use wire::{Packet, ProtocolVersion, Publish};

/// Bytes of a record's fixed header: its length, the origin time and the group count.
pub const RECORD_HEADER_BYTES: usize = 4 + 8 + 1 + 2;
/// Record flag: store the retained message, deliver it to nobody.
pub const FLAG_RETAINED_SYNC: u8 = 1;
/// Shared-group picks one record may carry; more are dropped (counted as `too_large`).
pub const RECORD_GROUPS_MAX: usize = 64;
/// A batch is sent as one frame once it reaches this size (the frame limit is 1 MiB).
pub const FORWARD_BATCH_MAX_BYTES: usize = 512 * 1024;
/// A single record larger than this cannot be forwarded (dropped and counted `too_large`).
pub const FORWARD_RECORD_MAX_BYTES: usize = FORWARD_BATCH_MAX_BYTES;
const _: () = assert!(FORWARD_BATCH_MAX_BYTES < cluster_gossip::codec::FORWARD_PAYLOAD_MAX);

/// Why a batch from a peer could not be read (the peer is authenticated, so this is a bug or a
/// version mismatch; the rest of the batch is dropped and counted).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ForwardError {
    #[error("forwarded record truncated: {needed} bytes announced, {left} left")]
    Truncated { needed: usize, left: usize },
    #[error("forwarded record is not a valid v5 PUBLISH: {0}")]
    Decode(String),
    #[error("forwarded record is too large to send ({len} bytes, at most {max})")]
    TooLarge { len: usize, max: usize },
}

/// Microseconds since the Unix epoch now.
pub fn unix_time_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Encodes `message` as the record body (the v5 PUBLISH) into `out` (cleared first); returns its
/// origin time for [`append_record`].
pub fn encode_publish(
    message: &Message,
    now: Instant,
    now_us: u64,
    out: &mut BytesMut,
) -> Result<u64, ForwardError> {
    out.clear();
    let mut publish: Publish = message.publish.clone();
    publish.dup = false;
    publish.packet_id = match publish.qos {
        wire::QoS::AtMostOnce => None,
        _ => std::num::NonZeroU16::new(1),
    };
    publish.properties.topic_alias = None;
    publish.properties.subscription_identifiers.clear();
    if let Some(expires_at) = message.expires_at {
        let left = expires_at.saturating_duration_since(now).as_secs().max(1);
        publish.properties.message_expiry_interval = Some(u32::try_from(left).unwrap_or(u32::MAX));
    }
    let age_us = u64::try_from(
        now.saturating_duration_since(message.received_at)
            .as_micros(),
    )
    .unwrap_or(u64::MAX);
    let origin_us = now_us.saturating_sub(age_us);
    let packet = Packet::Publish(publish);
    wire::encode(&packet, ProtocolVersion::V5, out)
        .map_err(|e| ForwardError::Decode(e.to_string()))?;
    if out.len() + RECORD_HEADER_BYTES > FORWARD_RECORD_MAX_BYTES {
        return Err(ForwardError::TooLarge {
            len: out.len(),
            max: FORWARD_RECORD_MAX_BYTES,
        });
    }
    Ok(origin_us)
}

/// Appends one record (header, `groups`, the encoded `publish`) to `batch`. Group names are MQTT
/// strings (at most 65535 bytes), so their u16 lengths cannot overflow.
pub fn append_record(
    batch: &mut Vec<u8>,
    origin_us: u64,
    flags: u8,
    groups: &[&GroupPick],
    publish: &[u8],
) -> Result<(), ForwardError> {
    let groups = groups.get(..RECORD_GROUPS_MAX).unwrap_or(groups);
    let group_bytes: usize = groups.iter().map(|(f, g)| 4 + f.len() + g.len()).sum();
    let len = RECORD_HEADER_BYTES - 4 + group_bytes + publish.len();
    let too_large = ForwardError::TooLarge {
        len,
        max: FORWARD_RECORD_MAX_BYTES,
    };
    if len > FORWARD_RECORD_MAX_BYTES {
        return Err(too_large);
    }
    let len = u32::try_from(len).map_err(|_| too_large)?;
    batch.extend_from_slice(&len.to_be_bytes());
    batch.extend_from_slice(&origin_us.to_be_bytes());
    batch.push(flags);
    batch.extend_from_slice(&(groups.len() as u16).to_be_bytes());
    for (filter, group) in groups {
        for s in [filter, group] {
            let n = u16::try_from(s.len()).unwrap_or(u16::MAX);
            batch.extend_from_slice(&n.to_be_bytes());
            batch.extend_from_slice(s.as_bytes().get(..usize::from(n)).unwrap_or_default());
        }
    }
    batch.extend_from_slice(publish);
    Ok(())
}

/// Reads a u16-length-prefixed string of a record.
fn take_string(record: &mut Bytes) -> Result<Arc<str>, ForwardError> {
    if record.len() < 2 {
        return Err(ForwardError::Truncated {
            needed: 2,
            left: record.len(),
        });
    }
    let n = usize::from(record.get_u16());
    if n > record.len() {
        return Err(ForwardError::Truncated {
            needed: n,
            left: record.len(),
        });
    }
    let bytes = record.split_to(n);
    std::str::from_utf8(&bytes)
        .map(Arc::from)
        .map_err(|_| ForwardError::Decode("shared group name is not UTF-8".into()))
}

/// One decoded record: the publish, how long ago its origin accepted it, and the shared groups
/// this node was picked for.
#[derive(Debug)]
pub struct ForwardedPublish {
    pub publish: Publish,
    pub origin_age: Duration,
    pub groups: Vec<GroupPick>,
    /// [`FLAG_RETAINED_SYNC`] was set.
    pub retained_sync: bool,
}

/// Reads every record of a batch. Records before a bad one are returned with the error.
pub fn decode_batch(
    batch: Bytes,
    now_us: u64,
    out: &mut Vec<ForwardedPublish>,
) -> Result<(), ForwardError> {
    let mut rest = batch;
    while !rest.is_empty() {
        if rest.len() < RECORD_HEADER_BYTES {
            return Err(ForwardError::Truncated {
                needed: RECORD_HEADER_BYTES,
                left: rest.len(),
            });
        }
        let len = rest.get_u32() as usize;
        if len < RECORD_HEADER_BYTES - 4 || len > rest.len() {
            return Err(ForwardError::Truncated {
                needed: len,
                left: rest.len(),
            });
        }
        let mut record = rest.split_to(len);
        let origin_us = record.get_u64();
        let flags = record.get_u8();
        let count = usize::from(record.get_u16()).min(RECORD_GROUPS_MAX);
        let mut groups = Vec::new();
        for _ in 0..count {
            let filter = take_string(&mut record)?;
            let group = take_string(&mut record)?;
            groups.push((filter, group));
        }
        let publish = match wire::decode(record, ProtocolVersion::V5) {
            Ok(Packet::Publish(publish)) => publish,
            Ok(other) => {
                return Err(ForwardError::Decode(format!(
                    "packet type {}",
                    other.packet_type()
                )))
            }
            Err(error) => return Err(ForwardError::Decode(error.to_string())),
        };
        out.push(ForwardedPublish {
            publish,
            origin_age: Duration::from_micros(now_us.saturating_sub(origin_us)),
            groups,
            retained_sync: flags & FLAG_RETAINED_SYNC != 0,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{QoS, Utf8Bytes};

    fn message(topic: &str, qos: QoS, retain: bool, payload: &'static [u8]) -> Message {
        Message {
            publish: Publish {
                dup: true,
                qos,
                retain,
                topic: Utf8Bytes::from(topic),
                packet_id: std::num::NonZeroU16::new(7).filter(|_| qos != QoS::AtMostOnce),
                properties: Default::default(),
                payload: Bytes::from_static(payload),
            },
            origin: None,
            expires_at: None,
            received_at: Instant::now(),
        }
    }

    #[test]
    fn records_round_trip_in_one_batch() {
        let now = Instant::now();
        let now_us = unix_time_us();
        let mut batch = Vec::new();
        let mut scratch = BytesMut::new();
        let sent = [
            message("a/b", QoS::AtMostOnce, false, b"zero"),
            message("c", QoS::AtLeastOnce, true, b"one"),
            message("d/e/f", QoS::ExactlyOnce, false, b""),
        ];
        let pick: GroupPick = (Arc::from("d/+/f"), Arc::from("g1"));
        for (i, m) in sent.iter().enumerate() {
            let origin = encode_publish(m, now, now_us, &mut scratch).expect("encodes");
            let groups: Vec<&GroupPick> = if i == 2 { vec![&pick] } else { vec![] };
            let flags = if i == 1 { FLAG_RETAINED_SYNC } else { 0 };
            append_record(&mut batch, origin, flags, &groups, &scratch).expect("fits");
        }
        let mut got = Vec::new();
        decode_batch(Bytes::from(batch), now_us, &mut got).expect("decodes");
        assert_eq!(got.len(), 3);
        for (m, g) in sent.iter().zip(&got) {
            assert_eq!(g.publish.topic, m.publish.topic);
            assert_eq!(g.publish.qos, m.publish.qos);
            assert_eq!(g.publish.retain, m.publish.retain);
            assert_eq!(g.publish.payload, m.publish.payload);
            assert!(!g.publish.dup);
        }
        assert!(got[0].groups.is_empty());
        assert_eq!(got[2].groups, vec![pick]);
        assert!(got[1].retained_sync && !got[0].retained_sync);
    }

    #[test]
    fn truncated_batch_is_an_error_not_a_panic() {
        let now = Instant::now();
        let mut scratch = BytesMut::new();
        let origin = encode_publish(
            &message("a", QoS::AtLeastOnce, false, b"x"),
            now,
            1,
            &mut scratch,
        )
        .expect("encodes");
        let pick: GroupPick = (Arc::from("a"), Arc::from("g"));
        let mut batch = Vec::new();
        append_record(&mut batch, origin, 0, &[&pick], &scratch).expect("fits");
        for cut in 0..batch.len() {
            let mut got = Vec::new();
            let result = decode_batch(Bytes::copy_from_slice(&batch[..cut]), 1, &mut got);
            assert!(cut == 0 || result.is_err(), "cut at {cut} decoded");
        }
    }
}
