//! Session state: everything MQTT says survives a connection (subscriptions, queued and in-flight
//! messages, packet identifiers) plus the per-connection view of the peer's limits. No I/O: the
//! connection's protocol machine ([`crate::conn`]) asks it for frames to write and feeds it
//! acknowledgements.

use std::collections::VecDeque;
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Instant;

use ahash::AHashMap;
use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;
use wire::{ProtocolVersion, Publish, QoS, SubscriptionOptions, Utf8Bytes};

use crate::ids::{ConnId, ReadyQueue};
use crate::message::{Message, SessionKey};

/// Why the broker is closing a connection; becomes a v5 DISCONNECT reason code and a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent DISCONNECT.
    ClientDisconnect,
    /// Read returned EOF or an error without a DISCONNECT.
    ConnectionLost,
    KeepAliveTimeout,
    SessionTakenOver,
    ProtocolError(wire::ReasonCode),
    ServerShuttingDown,
    /// The client stopped reading and its pending writes hit the limit.
    SlowConsumer,
    /// The credentials the connection authenticated with expired (a token's `exp`).
    CredentialsExpired,
}

impl CloseReason {
    /// Label for `ringmq_connections_closed_total{reason}`.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ClientDisconnect => "client_disconnect",
            CloseReason::ConnectionLost => "connection_lost",
            CloseReason::KeepAliveTimeout => "keepalive_timeout",
            CloseReason::SessionTakenOver => "session_taken_over",
            CloseReason::ProtocolError(_) => "protocol_error",
            CloseReason::ServerShuttingDown => "server_shutting_down",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::CredentialsExpired => "credentials_expired",
        }
    }

    /// Whether the session's will is published when the connection ends this way
    /// [MQTT-3.1.2-8], [MQTT-3.14.4-3].
    pub fn publishes_will(self) -> bool {
        !matches!(self, CloseReason::ClientDisconnect)
    }
}

/// One message on its way to one subscriber.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// The QoS it is delivered at: min(publish QoS, granted QoS).
    pub qos: QoS,
    /// The RETAIN flag as sent: set for retained messages sent on subscribe, otherwise the
    /// publisher's flag only when the subscription asked for retain-as-published.
    pub retain: bool,
    /// Identifiers of every matching subscription that carried one (v5).
    pub subscription_ids: SmallVec<[u32; 1]>,
}

/// An entry of the session queue.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A QoS 0 PUBLISH already encoded for this session's protocol version, shared by every
    /// subscriber of the same shape (encode once, write many).
    Frame(Bytes),
    Deliver(Delivery),
    /// An acknowledgement owed from elsewhere (e.g. a PUBACK once Kafka acknowledged). Never
    /// dropped, not a message.
    Control(Bytes),
}

impl Outbound {
    pub fn qos(&self) -> QoS {
        match self {
            Outbound::Frame(_) | Outbound::Control(_) => QoS::AtMostOnce,
            Outbound::Deliver(d) => d.qos,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflightState {
    /// QoS 1 PUBLISH sent, waiting for PUBACK.
    AwaitPubAck,
    /// QoS 2 PUBLISH sent, waiting for PUBREC.
    AwaitPubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitPubComp,
}

/// An outbound QoS 1/2 message the client has not finished acknowledging.
#[derive(Debug, Clone)]
pub struct Inflight {
    pub packet_id: NonZeroU16,
    pub delivery: Delivery,
    pub state: InflightState,
}

/// A subscription as the session remembers it (to remove it from the trie when the session ends
/// and to report it).
#[derive(Debug, Clone)]
pub struct SessionSubscription {
    /// The filter as subscribed, including any `$share/group/` prefix (shared with the trie's
    /// key when it has none).
    pub filter: Arc<str>,
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
}

/// The last will, kept until the connection ends normally or it is published.
#[derive(Debug, Clone)]
pub struct Will {
    /// The will as a message; its expiry is set when it is published.
    pub message: Arc<Message>,
    pub delay_secs: u32,
    /// Message Expiry Interval of the will, counted from publication.
    pub expiry_secs: Option<u32>,
}

/// The live connection bound to a session. `None` in [`Session::link`] means offline.
#[derive(Debug)]
pub struct ConnectionLink {
    /// Which connection of this session this is; a connection holding an older generation has
    /// been taken over and must close without touching the session.
    pub generation: u32,
    /// The engine connection serving this link, queued on the shard's `ReadyQueue` when it has
    /// work (something to write, or a close decided).
    pub conn: ConnId,
    /// Set exactly while `conn` is queued on the ready queue (so it is queued once).
    pub woken: bool,
    /// Set when the broker decided to close this connection.
    pub close: Option<CloseReason>,
    pub last_activity: Instant,
    /// Keepalive as granted, 0 = none. The connection is closed after 1.5× without a packet.
    pub keepalive_secs: u16,
}

impl ConnectionLink {
    /// Queues the connection on the shard's `ready` queue to be driven this loop turn (once,
    /// however often it is woken).
    pub fn wake(&mut self, ready: &ReadyQueue) {
        if !self.woken {
            self.woken = true;
            ready.push(self.conn);
        }
    }
}

/// Inbound topic aliases of a v5 connection (index = alias − 1), created on first use.
pub type InboundAliases = Option<Box<[Option<Utf8Bytes>]>>;

/// Per-connection facts about the peer that shape what we send.
#[derive(Debug, Clone)]
pub struct PeerLimits {
    pub version: ProtocolVersion,
    /// Client's Receive Maximum (v5) or our `inflight_max`.
    pub inflight_max: u16,
    /// Client's Maximum Packet Size (v5), else unlimited.
    pub max_packet_size: u32,
    /// Client's Topic Alias Maximum (v5), 0 = we must not use aliases.
    pub topic_alias_max: u16,
    /// Whether the client asked for reason strings / user properties on errors (v5 Request Problem
    /// Information); not used for PUBLISH.
    pub problem_information: bool,
}

/// The deadlines of an offline session (see [`Session::expires_at`], [`Session::will_at`]).
#[derive(Debug, Default)]
struct OfflineTimes {
    expires_at: Option<Instant>,
    will_at: Option<Instant>,
}

/// A session, owned by the shard its client id hashes to.
#[derive(Debug)]
pub struct Session {
    pub client_id: Utf8Bytes,
    pub key: SessionKey,
    pub peer: PeerLimits,
    pub subscriptions: SmallVec<[SessionSubscription; 1]>,
    /// Messages and packet ids in progress; None while there are none (most idle sessions), so
    /// an idle session does not pay for four empty queues.
    pub traffic: Option<Box<Traffic>>,
    /// Next packet identifier to try.
    pub next_packet_id: u16,
    pub link: Option<ConnectionLink>,
    /// Generation to hand the next connection.
    pub next_generation: u32,
    pub will: Option<Will>,
    /// Session expiry interval in seconds as granted; 0 = ends with the connection.
    pub expiry_secs: u32,
    /// When an offline session expires and its delayed will is due; `None` while online (most
    /// sessions), so online ones do not carry two `Instant`s.
    offline: Option<Box<OfflineTimes>>,
    /// Outbound topic aliases in use (v5), created on first use.
    pub aliases_out: Option<Box<AHashMap<Utf8Bytes, u16>>>,
    /// Who the ACL checks this session as (set at every attach while an ACL is configured, kept
    /// offline for deliveries queued meanwhile); `None` without an ACL: nothing is checked.
    pub principal: Option<Arc<auth::Identity>>,
}

/// A session's messages and packet identifiers in progress.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Waiting to be written (online) or stored for later (offline). Bounded by
    /// `Limits::session_queue_len_max`.
    pub queue: VecDeque<Outbound>,
    /// Retained messages owed to a new subscription, fed into writes a slice at a time.
    pub retained_pending: VecDeque<Delivery>,
    /// Outbound QoS 1/2 awaiting acknowledgement, in send order. At most `peer.inflight_max`.
    pub inflight: VecDeque<Inflight>,
    /// Inbound QoS 2 packet ids received and PUBREC'd, awaiting PUBREL. At most our
    /// Receive Maximum.
    pub incoming_qos2: SmallVec<[u16; 4]>,
    /// Set by every [`Session::traffic_mut`], cleared by each visit of the shard's traffic
    /// sweep: a box is freed only when a visit finds it empty and unused since the last one, so
    /// a stream of messages keeps its box (and its queues' capacity) instead of allocating them
    /// again after every drive that emptied them.
    used_since_sweep: bool,
}

impl Traffic {
    fn is_empty(&self) -> bool {
        self.queue.is_empty()
            && self.retained_pending.is_empty()
            && self.inflight.is_empty()
            && self.incoming_qos2.is_empty()
    }
}

/// What [`Session::next_frame`] did.
pub enum NextFrame {
    /// Encoded one message into the buffer.
    Wrote,
    /// Encoded an acknowledgement (not a message).
    WroteControl,
    /// Dropped a message that could not be sent (expired, or bigger than the client accepts).
    Dropped(DropReason),
    /// Nothing can be written now (queue empty, or inflight window full).
    Idle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Expired,
    PacketTooLarge,
    QueueFull,
    NoSubscribers,
    CrossShardFull,
    EncodeFailed,
    /// QoS 0 for an offline session that does not queue QoS 0.
    Offline,
}

impl DropReason {
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Expired => "expired",
            DropReason::PacketTooLarge => "packet_too_large",
            DropReason::QueueFull => "queue_full",
            DropReason::NoSubscribers => "no_subscribers",
            DropReason::CrossShardFull => "cross_shard_full",
            DropReason::EncodeFailed => "encode_failed",
            DropReason::Offline => "offline",
        }
    }
}

impl Session {
    pub fn new(client_id: Utf8Bytes, key: SessionKey, peer: PeerLimits) -> Self {
        Session {
            client_id,
            key,
            peer,
            subscriptions: SmallVec::new(),
            traffic: None,
            next_packet_id: 1,
            link: None,
            next_generation: 1,
            will: None,
            expiry_secs: 0,
            offline: None,
            aliases_out: None,
            principal: None,
        }
    }

    pub fn is_online(&self) -> bool {
        self.link.is_some()
    }

    /// When the offline session expires, if it does.
    pub fn expires_at(&self) -> Option<Instant> {
        self.offline.as_deref().and_then(|o| o.expires_at)
    }

    /// When the offline session's delayed will is due, if one is.
    pub fn will_at(&self) -> Option<Instant> {
        self.offline.as_deref().and_then(|o| o.will_at)
    }

    pub fn set_expires_at(&mut self, at: Option<Instant>) {
        self.offline_times().expires_at = at;
        self.trim_offline();
    }

    pub fn set_will_at(&mut self, at: Option<Instant>) {
        self.offline_times().will_at = at;
        self.trim_offline();
    }

    fn offline_times(&mut self) -> &mut OfflineTimes {
        self.offline.get_or_insert_with(Default::default)
    }

    fn trim_offline(&mut self) {
        if self
            .offline
            .as_deref()
            .is_some_and(|o| o.expires_at.is_none() && o.will_at.is_none())
        {
            self.offline = None;
        }
    }

    /// Queues the connection, if any, to write or close this loop turn.
    pub fn wake(&mut self, ready: &ReadyQueue) {
        if let Some(link) = &mut self.link {
            link.wake(ready);
        }
    }

    /// [`Session::wake`] for a caller that holds the session through the shard state, apart
    /// from its ready queue: marks the connection queued and returns the id to push (None if
    /// offline or queued already).
    pub fn wake_deferred(&mut self) -> Option<ConnId> {
        let link = self.link.as_mut()?;
        if link.woken {
            return None;
        }
        link.woken = true;
        Some(link.conn)
    }

    /// Whether the publish `message` waits among the retained messages owed to a new
    /// subscription. The store keeps its own compacted copy, so it is recognised by what
    /// identifies the publish (its acceptance time and publisher, topic and payload), not by
    /// pointer.
    pub fn owes_retained(&self, message: &Message) -> bool {
        self.traffic.as_deref().is_some_and(|t| {
            t.retained_pending.iter().any(|d| {
                let m = &d.message;
                m.received_at == message.received_at
                    && m.origin == message.origin
                    && m.publish.topic == message.publish.topic
                    && m.publish.payload == message.publish.payload
            })
        })
    }

    /// The session's traffic, created on first use.
    pub fn traffic_mut(&mut self) -> &mut Traffic {
        let traffic = self.traffic.get_or_insert_with(Default::default);
        traffic.used_since_sweep = true;
        traffic
    }

    /// One visit of the shard's traffic sweep: frees the traffic box when nothing is in progress
    /// (queue, retained owed, in flight, inbound QoS 2 all empty) and nothing was queued on it
    /// since the previous visit. Returns whether it freed it.
    pub fn sweep_traffic(&mut self) -> bool {
        let Some(traffic) = self.traffic.as_deref_mut() else {
            return false;
        };
        if traffic.is_empty() && !traffic.used_since_sweep {
            self.traffic = None;
            return true;
        }
        traffic.used_since_sweep = false;
        false
    }

    /// Frees the traffic box when nothing is in progress (an idle session keeps none).
    pub fn shed_traffic(&mut self) {
        if self.traffic.as_deref().is_some_and(Traffic::is_empty) {
            self.traffic = None;
        }
    }

    /// Messages waiting in the queue.
    pub fn queue_len(&self) -> usize {
        self.traffic.as_deref().map_or(0, |t| t.queue.len())
    }

    /// Whether a write pass could produce something.
    pub fn has_writable(&self) -> bool {
        let Some(t) = self.traffic.as_deref() else {
            return false;
        };
        let window_open = t.inflight.len() < usize::from(self.peer.inflight_max);
        t.queue
            .front()
            .is_some_and(|o| o.qos() == QoS::AtMostOnce || window_open)
            || (!t.retained_pending.is_empty()
                && (window_open
                    || t.retained_pending
                        .front()
                        .is_some_and(|d| d.qos == QoS::AtMostOnce)))
    }

    fn allocate_packet_id(&mut self) -> Option<NonZeroU16> {
        // At most inflight_max (≤ 65535) ids are in use, so a free one exists within 65535 tries.
        for _ in 0..u16::MAX {
            let candidate = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            let id = NonZeroU16::new(candidate)?;
            let in_use = self
                .traffic
                .as_deref()
                .is_some_and(|t| t.inflight.iter().any(|i| i.packet_id == id));
            if !in_use {
                return Some(id);
            }
        }
        None
    }

    /// Encodes the next writable queued message (or retained message owed) into `out`.
    pub fn next_frame(&mut self, now: Instant, out: &mut BytesMut) -> NextFrame {
        let max_packet_size = self.peer.max_packet_size as usize;
        let inflight_max = usize::from(self.peer.inflight_max);
        let Some(t) = self.traffic.as_deref_mut() else {
            return NextFrame::Idle;
        };
        let window_open = t.inflight.len() < inflight_max;
        let from_queue = match t.queue.front() {
            Some(o) => o.qos() == QoS::AtMostOnce || window_open,
            None => false,
        };
        let delivery = if from_queue {
            match t.queue.pop_front() {
                Some(Outbound::Frame(bytes)) => {
                    if bytes.len() > max_packet_size {
                        return NextFrame::Dropped(DropReason::PacketTooLarge);
                    }
                    out.extend_from_slice(&bytes);
                    return NextFrame::Wrote;
                }
                Some(Outbound::Control(bytes)) => {
                    out.extend_from_slice(&bytes);
                    return NextFrame::WroteControl;
                }
                Some(Outbound::Deliver(d)) => d,
                None => return NextFrame::Idle,
            }
        } else {
            match t.retained_pending.front() {
                Some(d) if d.qos == QoS::AtMostOnce || window_open => {}
                _ => return NextFrame::Idle,
            }
            match t.retained_pending.pop_front() {
                Some(d) => d,
                None => return NextFrame::Idle,
            }
        };
        self.write_delivery(delivery, now, out)
    }

    fn write_delivery(
        &mut self,
        delivery: Delivery,
        now: Instant,
        out: &mut BytesMut,
    ) -> NextFrame {
        let Some(mut publish) = self.publish_for(&delivery, now) else {
            return NextFrame::Dropped(DropReason::Expired);
        };
        if delivery.qos != QoS::AtMostOnce {
            let Some(packet_id) = self.allocate_packet_id() else {
                return NextFrame::Dropped(DropReason::QueueFull);
            };
            publish.packet_id = Some(packet_id);
        }
        let mark = out.len();
        if let Err(reason) = self.encode_checked(&publish, out) {
            out.truncate(mark);
            return NextFrame::Dropped(reason);
        }
        if let Some(packet_id) = publish.packet_id {
            let state = if delivery.qos == QoS::AtLeastOnce {
                InflightState::AwaitPubAck
            } else {
                InflightState::AwaitPubRec
            };
            self.traffic_mut().inflight.push_back(Inflight {
                packet_id,
                delivery,
                state,
            });
        }
        NextFrame::Wrote
    }

    fn encode_checked(&mut self, publish: &Publish, out: &mut BytesMut) -> Result<(), DropReason> {
        let mark = out.len();
        if wire::encode_publish_header(publish, self.peer.version, out).is_err() {
            return Err(DropReason::EncodeFailed);
        }
        out.extend_from_slice(&publish.payload);
        if out.len() - mark > self.peer.max_packet_size as usize {
            // [MQTT-3.1.2-25]: discard a packet bigger than the client's Maximum Packet Size as if
            // delivered.
            return Err(DropReason::PacketTooLarge);
        }
        Ok(())
    }

    /// The PUBLISH as this client must see it, or None if the message expired.
    fn publish_for(&mut self, delivery: &Delivery, now: Instant) -> Option<Publish> {
        let message = &delivery.message;
        let mut publish = message.publish.clone();
        publish.qos = delivery.qos;
        publish.retain = delivery.retain;
        publish.dup = false;
        publish.packet_id = None;
        if let Some(at) = message.expires_at {
            // [MQTT-3.3.2-5] drop expired; [MQTT-3.3.2-6] forward the remaining interval.
            let remaining = at.checked_duration_since(now)?;
            let secs = remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0);
            if secs == 0 {
                return None;
            }
            publish.properties.message_expiry_interval =
                Some(u32::try_from(secs).unwrap_or(u32::MAX));
        }
        if self.peer.version == ProtocolVersion::V5 {
            publish.properties.subscription_identifiers = delivery.subscription_ids.clone();
            if self.peer.topic_alias_max > 0 {
                self.apply_alias(&mut publish);
            }
        }
        Some(publish)
    }

    fn apply_alias(&mut self, publish: &mut Publish) {
        let max = self.peer.topic_alias_max;
        let aliases = self.aliases_out.get_or_insert_with(Default::default);
        if let Some(&alias) = aliases.get(&publish.topic) {
            publish.properties.topic_alias = Some(alias);
            publish.topic = Utf8Bytes::from_static("");
        } else if aliases.len() < usize::from(max) {
            // First use: send the topic and the alias together; later ones send the alias alone.
            let alias = u16::try_from(aliases.len() + 1).unwrap_or(max);
            aliases.insert(publish.topic.clone(), alias);
            publish.properties.topic_alias = Some(alias);
        }
    }

    /// Frames to resend when a session resumes [MQTT-4.4.0-1]: unacknowledged PUBLISHes with DUP
    /// set, PUBRELs for those already PUBREC'd.
    pub fn resend_inflight(&mut self, now: Instant, out: &mut BytesMut) {
        // Aliases do not survive a connection [MQTT-3.3.2-7].
        self.aliases_out = None;
        let entries: Vec<Inflight> = match self.traffic.as_deref_mut() {
            Some(t) => t.inflight.drain(..).collect(),
            None => return,
        };
        for mut entry in entries {
            match entry.state {
                InflightState::AwaitPubComp => {
                    let pubrel = wire::Packet::PubRel(wire::PubAck {
                        packet_id: entry.packet_id,
                        reason_code: wire::ReasonCode::Success,
                        properties: Default::default(),
                    });
                    if wire::encode(&pubrel, self.peer.version, out).is_ok() {
                        self.traffic_mut().inflight.push_back(entry);
                    }
                }
                InflightState::AwaitPubAck | InflightState::AwaitPubRec => {
                    let Some(mut publish) = self.publish_for(&entry.delivery, now) else {
                        continue;
                    };
                    publish.dup = true;
                    publish.packet_id = Some(entry.packet_id);
                    let mark = out.len();
                    if self.encode_checked(&publish, out).is_err() {
                        out.truncate(mark);
                        continue;
                    }
                    entry.state = if entry.delivery.qos == QoS::AtLeastOnce {
                        InflightState::AwaitPubAck
                    } else {
                        InflightState::AwaitPubRec
                    };
                    self.traffic_mut().inflight.push_back(entry);
                }
            }
        }
    }

    /// Handles PUBACK / PUBCOMP: frees the packet id. Returns false for an unknown id.
    pub fn complete(&mut self, packet_id: NonZeroU16, expected: InflightState) -> bool {
        let Some(t) = self.traffic.as_deref_mut() else {
            return false;
        };
        match t
            .inflight
            .iter()
            .position(|i| i.packet_id == packet_id && i.state == expected)
        {
            Some(pos) => {
                t.inflight.remove(pos);
                true
            }
            None => false,
        }
    }

    /// Handles PUBREC: moves the entry to awaiting PUBCOMP. Returns false for an unknown id.
    pub fn received(&mut self, packet_id: NonZeroU16) -> bool {
        let Some(t) = self.traffic.as_deref_mut() else {
            return false;
        };
        match t.inflight.iter_mut().find(|i| i.packet_id == packet_id) {
            Some(entry) if entry.state == InflightState::AwaitPubRec => {
                entry.state = InflightState::AwaitPubComp;
                true
            }
            Some(entry) => entry.state == InflightState::AwaitPubComp,
            None => false,
        }
    }

    /// Messages held for this session: queued plus in flight plus retained owed.
    pub fn held_len(&self) -> usize {
        self.traffic.as_deref().map_or(0, |t| {
            t.queue.len() + t.inflight.len() + t.retained_pending.len()
        })
    }
}
