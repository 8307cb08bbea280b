//! The bytes of a session image (`engine::state::SessionImage`) as it travels in a
//! `SessionMsg::Image` from the node that gives a session up to the node its client connected
//! to. The client id is not repeated (the message carries it).
//!
//! Layout, all integers big-endian: `version u8 (1) | expiry_secs u32 | next_packet_id u16 |
//! subscriptions u16 × (filter_len u16, filter, qos u8, flags u8, retain_handling u8, id u32) |
//! incoming_qos2 u16 × u16 | inflight u32 × (packet_id u16, state u8, delivery) | queue u32 ×
//! delivery`, where a delivery is `qos u8 | retain u8 | ids u8 × u32 | origin_time_us u64 |
//! publish_len u32 | MQTT v5 PUBLISH` (the same encoding as a forwarded record, [`forward`]).
//! Flags: bit 0 no-local, bit 1 retain-as-published; an id of 0 is "no subscription identifier"
//! (identifiers start at 1). Messages keep their remaining expiry and their origin time.
//!
//! An image over [`IMAGE_MAX_BYTES`] (the peer frame's payload limit) keeps every subscription,
//! inbound QoS 2 id and in-flight message, and as many queued messages, oldest first, as fit;
//! the rest are dropped and counted (`ImageStats::queued_dropped`). In-flight messages alone
//! over the limit: the image is refused and the claim ends without it (counted).

use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes, BytesMut};
use engine::message::Message;
use engine::session::{Delivery, Inflight, InflightState, SessionSubscription};
use engine::state::SessionImage;
use smallvec::SmallVec;
use wire::{Packet, ProtocolVersion, QoS, RetainHandling, SubscriptionOptions, Utf8Bytes};

use super::forward;

const IMAGE_VERSION: u8 = 1;
/// The largest image: what a `PeerFrame::Session` carries, less the session message's header
/// (kind, claim id, the client id of up to 65535 bytes).
pub const IMAGE_MAX_BYTES: usize = cluster_gossip::codec::FORWARD_PAYLOAD_MAX - 11 - 65_535;

/// Why an image could not be read or written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("session image truncated at byte {at}")]
    Truncated { at: usize },
    #[error("session image version {0} is not known")]
    Version(u8),
    #[error("session image field {0} is invalid")]
    Invalid(&'static str),
    #[error("session image message: {0}")]
    Message(String),
    #[error("session image in-flight messages alone take {len} bytes, over {max}")]
    TooLarge { len: usize, max: usize },
}

/// What encoding had to leave out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ImageStats {
    /// Queued messages over [`IMAGE_MAX_BYTES`], dropped.
    pub queued_dropped: u64,
}

/// Encodes `image` (its client id aside) into `out`.
pub fn encode(
    image: &SessionImage,
    now: Instant,
    now_us: u64,
    out: &mut Vec<u8>,
) -> Result<ImageStats, ImageError> {
    out.clear();
    let mut stats = ImageStats::default();
    let mut scratch = BytesMut::new();
    out.push(IMAGE_VERSION);
    out.extend_from_slice(&image.expiry_secs.to_be_bytes());
    out.extend_from_slice(&image.next_packet_id.to_be_bytes());
    let subs = image
        .subscriptions
        .get(..usize::from(u16::MAX))
        .unwrap_or(&image.subscriptions);
    out.extend_from_slice(&(subs.len() as u16).to_be_bytes());
    for sub in subs {
        put_str(out, &sub.filter);
        let o = sub.options;
        out.push(o.qos as u8);
        out.push(u8::from(o.no_local) | u8::from(o.retain_as_published) << 1);
        out.push(o.retain_handling as u8);
        out.extend_from_slice(&sub.id.unwrap_or(0).to_be_bytes());
    }
    let qos2 = image
        .incoming_qos2
        .get(..usize::from(u16::MAX))
        .unwrap_or(&image.incoming_qos2);
    out.extend_from_slice(&(qos2.len() as u16).to_be_bytes());
    for id in qos2 {
        out.extend_from_slice(&id.to_be_bytes());
    }
    out.extend_from_slice(&(image.inflight.len() as u32).to_be_bytes());
    for inflight in &image.inflight {
        out.extend_from_slice(&inflight.packet_id.get().to_be_bytes());
        out.push(match inflight.state {
            InflightState::AwaitPubAck => 0,
            InflightState::AwaitPubRec => 1,
            InflightState::AwaitPubComp => 2,
        });
        put_delivery(out, &inflight.delivery, now, now_us, &mut scratch)?;
    }
    if out.len() > IMAGE_MAX_BYTES {
        return Err(ImageError::TooLarge {
            len: out.len(),
            max: IMAGE_MAX_BYTES,
        });
    }
    let count_at = out.len();
    out.extend_from_slice(&0u32.to_be_bytes());
    let mut count = 0u32;
    for delivery in &image.queue {
        let before = out.len();
        put_delivery(out, delivery, now, now_us, &mut scratch)?;
        if out.len() > IMAGE_MAX_BYTES {
            out.truncate(before);
            stats.queued_dropped = (image.queue.len() - count as usize) as u64;
            break;
        }
        count += 1;
    }
    if let Some(at) = out.get_mut(count_at..count_at + 4) {
        at.copy_from_slice(&count.to_be_bytes());
    }
    Ok(stats)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // MQTT strings: at most 65535 bytes, so the u16 length cannot overflow.
    let n = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(s.as_bytes().get(..usize::from(n)).unwrap_or_default());
}

fn put_delivery(
    out: &mut Vec<u8>,
    d: &Delivery,
    now: Instant,
    now_us: u64,
    scratch: &mut BytesMut,
) -> Result<(), ImageError> {
    let origin_us = forward::encode_publish(&d.message, now, now_us, scratch)
        .map_err(|e| ImageError::Message(e.to_string()))?;
    out.push(d.qos as u8);
    out.push(u8::from(d.retain));
    let ids = d.subscription_ids.get(..255).unwrap_or(&d.subscription_ids);
    out.push(ids.len() as u8);
    for id in ids {
        out.extend_from_slice(&id.to_be_bytes());
    }
    out.extend_from_slice(&origin_us.to_be_bytes());
    out.extend_from_slice(&(scratch.len() as u32).to_be_bytes());
    out.extend_from_slice(scratch);
    Ok(())
}

/// Reads an image for `client_id`.
pub fn decode(
    client_id: &str,
    bytes: &[u8],
    now: Instant,
    now_us: u64,
) -> Result<SessionImage, ImageError> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.u8()?;
    if version != IMAGE_VERSION {
        return Err(ImageError::Version(version));
    }
    let expiry_secs = r.u32()?;
    let next_packet_id = r.u16()?;
    let mut subscriptions = Vec::new();
    for _ in 0..r.u16()? {
        let filter: Arc<str> = Arc::from(r.str()?);
        let qos = QoS::try_from(r.u8()?).map_err(|_| ImageError::Invalid("subscription qos"))?;
        let flags = r.u8()?;
        let retain_handling = match r.u8()? {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendAtSubscribeIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(ImageError::Invalid("retain handling")),
        };
        let id = r.u32()?;
        subscriptions.push(SessionSubscription {
            filter,
            options: SubscriptionOptions {
                qos,
                no_local: flags & 1 != 0,
                retain_as_published: flags & 2 != 0,
                retain_handling,
            },
            id: (id != 0).then_some(id),
        });
    }
    let mut incoming_qos2 = Vec::new();
    for _ in 0..r.u16()? {
        incoming_qos2.push(r.u16()?);
    }
    let mut inflight = Vec::new();
    for _ in 0..r.u32()? {
        let packet_id = NonZeroU16::new(r.u16()?).ok_or(ImageError::Invalid("packet id 0"))?;
        let state = match r.u8()? {
            0 => InflightState::AwaitPubAck,
            1 => InflightState::AwaitPubRec,
            2 => InflightState::AwaitPubComp,
            _ => return Err(ImageError::Invalid("in-flight state")),
        };
        let delivery = r.delivery(now, now_us)?;
        inflight.push(Inflight {
            packet_id,
            delivery,
            state,
        });
    }
    let mut queue = Vec::new();
    for _ in 0..r.u32()? {
        queue.push(r.delivery(now, now_us)?);
    }
    Ok(SessionImage {
        client_id: Utf8Bytes::from(client_id),
        expiry_secs,
        next_packet_id,
        subscriptions,
        queue,
        inflight,
        incoming_qos2,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ImageError> {
        let part = self
            .bytes
            .get(self.at..self.at.saturating_add(n))
            .ok_or(ImageError::Truncated { at: self.at })?;
        self.at += n;
        Ok(part)
    }

    fn u8(&mut self) -> Result<u8, ImageError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, ImageError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, ImageError> {
        let mut b = self.take(4)?;
        Ok(b.get_u32())
    }

    fn u64(&mut self) -> Result<u64, ImageError> {
        let mut b = self.take(8)?;
        Ok(b.get_u64())
    }

    fn str(&mut self) -> Result<&str, ImageError> {
        let n = usize::from(self.u16()?);
        std::str::from_utf8(self.take(n)?).map_err(|_| ImageError::Invalid("filter not UTF-8"))
    }

    fn delivery(&mut self, now: Instant, now_us: u64) -> Result<Delivery, ImageError> {
        let qos = QoS::try_from(self.u8()?).map_err(|_| ImageError::Invalid("delivery qos"))?;
        let retain = self.u8()? != 0;
        let mut subscription_ids = SmallVec::new();
        for _ in 0..self.u8()? {
            subscription_ids.push(self.u32()?);
        }
        let origin_us = self.u64()?;
        let len = self.u32()? as usize;
        let frame = Bytes::copy_from_slice(self.take(len)?);
        let publish = match wire::decode(frame, ProtocolVersion::V5) {
            Ok(Packet::Publish(publish)) => publish,
            Ok(_) => return Err(ImageError::Message("not a PUBLISH".into())),
            Err(error) => return Err(ImageError::Message(error.to_string())),
        };
        let expires_at = publish
            .properties
            .message_expiry_interval
            .map(|secs| now + Duration::from_secs(u64::from(secs)));
        let age = Duration::from_micros(now_us.saturating_sub(origin_us));
        Ok(Delivery {
            message: Arc::new(Message {
                publish,
                origin: None,
                expires_at,
                received_at: now.checked_sub(age).unwrap_or(now),
            }),
            qos,
            retain,
            subscription_ids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::Publish;

    fn delivery(topic: &str, qos: QoS, payload: &[u8]) -> Delivery {
        Delivery {
            message: Arc::new(Message {
                publish: Publish {
                    dup: false,
                    qos,
                    retain: false,
                    topic: Utf8Bytes::from(topic),
                    packet_id: NonZeroU16::new(9).filter(|_| qos != QoS::AtMostOnce),
                    properties: Default::default(),
                    payload: Bytes::copy_from_slice(payload),
                },
                origin: None,
                expires_at: None,
                received_at: Instant::now(),
            }),
            qos,
            retain: true,
            subscription_ids: SmallVec::from_slice(&[7]),
        }
    }

    fn image(queued: usize, payload: usize) -> SessionImage {
        SessionImage {
            client_id: Utf8Bytes::from("car-1"),
            expiry_secs: 3600,
            next_packet_id: 42,
            subscriptions: vec![
                SessionSubscription {
                    filter: Arc::from("fleet/+/cmd"),
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: true,
                        retain_as_published: false,
                        retain_handling: RetainHandling::DoNotSend,
                    },
                    id: Some(5),
                },
                SessionSubscription {
                    filter: Arc::from("$share/g/ota/#"),
                    options: SubscriptionOptions::default(),
                    id: None,
                },
            ],
            queue: (0..queued)
                .map(|i| delivery(&format!("q/{i}"), QoS::AtLeastOnce, &vec![1; payload]))
                .collect(),
            inflight: vec![
                Inflight {
                    packet_id: NonZeroU16::MIN.saturating_add(40),
                    delivery: delivery("in/1", QoS::AtLeastOnce, b"one"),
                    state: InflightState::AwaitPubAck,
                },
                Inflight {
                    packet_id: NonZeroU16::MIN.saturating_add(39),
                    delivery: delivery("in/2", QoS::ExactlyOnce, b"two"),
                    state: InflightState::AwaitPubComp,
                },
            ],
            incoming_qos2: vec![3, 4],
        }
    }

    #[test]
    fn image_round_trips() {
        let now = Instant::now();
        let sent = image(3, 10);
        let mut bytes = Vec::new();
        let stats = encode(&sent, now, 1_000_000, &mut bytes).expect("encodes");
        assert_eq!(stats.queued_dropped, 0);
        let got = decode("car-1", &bytes, now, 1_000_000).expect("decodes");
        assert_eq!(got.client_id, sent.client_id);
        assert_eq!((got.expiry_secs, got.next_packet_id), (3600, 42));
        assert_eq!(got.subscriptions.len(), 2);
        for (a, b) in got.subscriptions.iter().zip(&sent.subscriptions) {
            assert_eq!((&a.filter, a.options, a.id), (&b.filter, b.options, b.id));
        }
        assert_eq!(got.incoming_qos2, vec![3, 4]);
        assert_eq!(got.inflight.len(), 2);
        for (a, b) in got.inflight.iter().zip(&sent.inflight) {
            assert_eq!((a.packet_id, a.state), (b.packet_id, b.state));
            assert_eq!(a.delivery.qos, b.delivery.qos);
            assert_eq!(
                a.delivery.message.publish.payload,
                b.delivery.message.publish.payload
            );
        }
        let topics: Vec<&str> = got
            .queue
            .iter()
            .map(|d| d.message.publish.topic.as_str())
            .collect();
        assert_eq!(topics, ["q/0", "q/1", "q/2"]);
        assert!(got.queue[0].retain);
        assert_eq!(got.queue[0].subscription_ids.as_slice(), &[7]);
    }

    #[test]
    fn an_oversize_queue_keeps_the_oldest_that_fit_and_counts_the_rest() {
        let now = Instant::now();
        // 4 × 300 KiB queued: about three fit under the limit.
        let sent = image(4, 300 * 1024);
        let mut bytes = Vec::new();
        let stats = encode(&sent, now, 1, &mut bytes).expect("encodes");
        assert!(bytes.len() <= IMAGE_MAX_BYTES);
        let got = decode("car-1", &bytes, now, 1).expect("decodes");
        assert_eq!(got.inflight.len(), 2, "in-flight messages always travel");
        assert_eq!(got.queue.len() as u64 + stats.queued_dropped, 4);
        assert!(stats.queued_dropped >= 1);
        assert_eq!(got.queue[0].message.publish.topic.as_str(), "q/0");
    }

    #[test]
    fn truncated_or_garbled_images_are_errors_not_panics() {
        let now = Instant::now();
        let mut bytes = Vec::new();
        encode(&image(2, 5), now, 1, &mut bytes).expect("encodes");
        for cut in 0..bytes.len() {
            assert!(decode("c", &bytes[..cut], now, 1).is_err(), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert_eq!(
            decode("c", &bad, now, 1).err(),
            Some(ImageError::Version(9))
        );
    }
}
