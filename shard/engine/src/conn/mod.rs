//! One client connection's protocol machine, with no I/O: bytes in ([`Conn::input`]), frames out
//! (into [`Conn::out`], taken by the engine as a transmit). One file per packet family:
//! [`connect`] (the handshake and CONNACK), [`publish`] (inbound PUBLISH), [`packets`] (acks,
//! SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT).
//!
//! Must run on the shard that owns the client id's session (see `state::home_shard`); a
//! connection accepted elsewhere is handed off before it touches any session.

pub mod auth;
mod connect;
pub mod meta;
mod packets;
mod publish;

use std::num::NonZeroU16;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tracing::{debug, warn};
use wire::{
    AckProperties, Disconnect, DisconnectProperties, Framing, Packet, ProtocolVersion, PubAck, QoS,
    ReasonCode,
};

use crate::admission::{Admission, Budget, PublishBudget};
use crate::bridge::Bridge;
use crate::ids::{BarrierId, ConnId};
use crate::message::{SessionKey, ShardId};
use crate::session::{CloseReason, InboundAliases, NextFrame};
use crate::state::ShardState;

/// Bytes encoded from the session queue per drive of one connection; more waits for the next
/// pass (the connection is queued again), so one busy subscriber cannot hog a loop turn.
pub const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// Frames handled per drive of one connection before it yields to the others.
pub const FRAMES_PER_DRIVE_MAX: u32 = 64;
/// Output a connection may have queued in the transport (sent to the socket layer, not yet taken
/// by the kernel). Beyond it the engine stops encoding its session queue (which absorbs the rest,
/// dropping per policy) and stops reading from it: a slow consumer. 1 MiB: at 256 KiB a full-rate
/// one-to-one stream stalled on sends reaped once per turn and dropped half its messages.
pub const TRANSPORT_QUEUED_MAX_BYTES: usize = 16 * WRITE_BATCH_BYTES;
const _: () = assert!(WRITE_BATCH_BYTES < TRANSPORT_QUEUED_MAX_BYTES);

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a whole CONNECT frame (in `partial`).
    Handshake { handed_off: bool },
    /// CONNACK sent; bound to session (`slot`, `generation`).
    Live,
    /// Closed: the engine frees it after emitting its last output.
    Closed,
}

/// What the shard shares with every connection machine while one is driven.
pub(crate) struct Shared<'a> {
    /// The connection being driven (a [`Conn`] does not store its own id: the table knows it).
    pub conn: ConnId,
    pub state: &'a mut ShardState,
    pub bridge: Option<&'a mut (dyn Bridge + 'static)>,
    /// Where the driven connection encodes its output: the engine's buffer, empty when a drive
    /// starts and taken as one transmit when it ends (so no connection holds an output buffer).
    pub out: &'a mut BytesMut,
    /// Overload protection: bans, flapping, connect rate, publish budgets.
    pub admission: &'a mut Admission,
}

/// What one drive asks of the engine besides the bytes in [`Conn::out`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing more this pass.
    Idle,
    /// More work is ready (budget used up): drive again later this turn.
    Again,
    /// Its session lives on another shard: hand the socket and these bytes there.
    HandOff { home: ShardId, buffered: Bytes },
    /// The CONNECT needs the runtime's authentication decision; the connection waits for it.
    Authenticate(Box<auth::AuthRequest>),
    /// Closed: emit the last output, then close the transport.
    Closed,
}

/// A connected client. Small while idle: no buffer is allocated unless a partial frame, unsent
/// output or a held reply exists.
pub struct Conn {
    phase: Phase,
    version: ProtocolVersion,
    /// The link generation of its session's connection (see `ConnectionLink::generation`).
    generation: u32,
    /// The session it serves (`key.slot` is its slot on this shard), set at CONNACK.
    key: SessionKey,
    /// Bytes received but not yet handled: a partial frame, or frames held back while a reply
    /// waits for its route barrier. Empty (no allocation) for an idle client.
    partial: BytesMut,
    /// Output handed to the transport and not yet taken by the kernel, as last reported.
    pub(crate) transport_queued: u32,
    /// Set while reading is paused because `transport_queued` is over its bound.
    pub(crate) reading_paused: bool,
    /// What few connections have, behind one pointer (`None` while all of it is unset, which
    /// is an idle plain-TCP client's normal state): every idle connection pays this struct.
    extra: Option<Box<ConnExtra>>,
    /// The reason chosen when the broker decided to close.
    closing: Option<CloseReason>,
    /// Publish the will even though the close is a DISCONNECT (v5 reason 0x04).
    will_on_disconnect: bool,
    /// The peer closed its side (or the transport failed).
    eof: bool,
    /// The listener it is counted under (`Overload::listener_max_connections`).
    pub(crate) listener: meta::ListenerId,
}

/// The parts of a [`Conn`] that most idle connections do not have.
#[derive(Default)]
pub(crate) struct ConnExtra {
    /// Inbound topic aliases (v5), created on first use.
    aliases_in: InboundAliases,
    /// A reply held until every other shard has applied what this one sent before it: a SUBACK
    /// until the new subscriptions are routed everywhere, a PUBACK/PUBREC of a retained message
    /// until every shard stores it.
    pending_reply: Option<Box<(BarrierId, Packet)>>,
    /// Transport facts (peer address, listener, certificate names); `None` when the runtime gave
    /// none.
    pub(crate) meta: Option<Box<meta::ConnMeta>>,
    /// Per-client publish rates, when the broker has them: set at CONNACK.
    pub(crate) publish_budget: Option<Box<PublishBudget>>,
    /// Set while authenticating: waiting for the runtime's answer, or holding it for the next
    /// drive. `None` once connected and for connections nobody authenticates.
    pub(crate) auth: Option<Box<auth::ConnAuth>>,
    /// Set while the cluster claims the client id from peer nodes (`connect::ConnClaim`).
    pub(crate) claim: Option<Box<connect::ConnClaim>>,
}

impl ConnExtra {
    fn is_empty(&self) -> bool {
        self.aliases_in.is_none()
            && self.pending_reply.is_none()
            && self.meta.is_none()
            && self.publish_budget.is_none()
            && self.auth.is_none()
            && self.claim.is_none()
    }
}

impl Conn {
    pub(crate) fn new(handed_off: bool) -> Conn {
        Conn {
            phase: Phase::Handshake { handed_off },
            version: ProtocolVersion::V3_1_1,
            generation: 0,
            key: SessionKey {
                shard: 0,
                slot: 0,
                generation: 0,
            },
            partial: BytesMut::new(),
            transport_queued: 0,
            reading_paused: false,
            extra: None,
            closing: None,
            will_on_disconnect: false,
            eof: false,
            listener: 0,
        }
    }

    /// Output handed to the transport and not yet taken by the kernel, as last reported.
    pub(crate) fn transport_queued(&self) -> usize {
        self.transport_queued as usize
    }

    /// Sets [`Conn::transport_queued`] (saturating: past 4 GiB the bound was passed long ago).
    pub(crate) fn set_transport_queued(&mut self, bytes: usize) {
        self.transport_queued = u32::try_from(bytes).unwrap_or(u32::MAX);
    }

    /// The rare parts, created on first use.
    pub(crate) fn extra_mut(&mut self) -> &mut ConnExtra {
        self.extra.get_or_insert_with(Default::default)
    }

    /// Frees the rare parts once none is set (after authentication, a held reply...).
    fn trim_extra(&mut self) {
        if self.extra.as_deref().is_some_and(ConnExtra::is_empty) {
            self.extra = None;
        }
    }

    /// The transport facts the runtime gave, if any.
    pub fn meta(&self) -> Option<&meta::ConnMeta> {
        self.extra.as_deref().and_then(|e| e.meta.as_deref())
    }

    /// Takes the transport facts (for a hand-off).
    pub(crate) fn take_meta(&mut self) -> Option<Box<meta::ConnMeta>> {
        self.extra.as_deref_mut().and_then(|e| e.meta.take())
    }

    /// The authentication state, while there is one.
    pub(crate) fn auth(&self) -> Option<&auth::ConnAuth> {
        self.extra.as_deref().and_then(|e| e.auth.as_deref())
    }

    fn pending_reply(&self) -> Option<&(BarrierId, Packet)> {
        self.extra
            .as_deref()
            .and_then(|e| e.pending_reply.as_deref())
    }

    fn take_pending_reply(&mut self) -> Option<Box<(BarrierId, Packet)>> {
        self.extra
            .as_deref_mut()
            .and_then(|e| e.pending_reply.take())
    }

    /// Holds `reply` until `barrier` completes.
    fn hold_reply(&mut self, barrier: BarrierId, reply: Packet) {
        self.extra_mut().pending_reply = Some(Box::new((barrier, reply)));
    }

    /// From open until CONNACK (what `overload.max_handshakes` bounds).
    pub fn is_handshaking(&self) -> bool {
        matches!(self.phase, Phase::Handshake { .. })
    }

    /// Whether it waits for its publish budget to refill (its input is not handled meanwhile).
    pub(crate) fn budget_blocked(&self, now: Instant) -> bool {
        self.extra
            .as_deref()
            .and_then(|e| e.publish_budget.as_deref())
            .is_some_and(|b| b.blocked(now))
    }

    /// Bytes from the transport. Handled on the next drive.
    pub(crate) fn input(&mut self, data: &[u8]) {
        self.partial.extend_from_slice(data);
    }

    /// Input for a connection with none buffered: a view of the engine's read chunk, no copy.
    pub(crate) fn take_input(&mut self, data: BytesMut) {
        debug_assert!(self.partial.is_empty());
        self.partial = data;
    }

    /// Received bytes not handled yet.
    pub(crate) fn input_buffered(&self) -> usize {
        self.partial.len()
    }

    /// Whether the buffered input starts with a frame a drive can handle now (complete, or one
    /// to refuse). False while the first frame is still arriving: only reading more lets it be
    /// handled, so pausing reading for it would stall the connection for good (a publish
    /// larger than `INPUT_BUFFERED_MAX_BYTES` and within the maximum packet size).
    pub(crate) fn input_ready(&self, max_packet_size: u32) -> bool {
        !matches!(
            wire::check(&self.partial, max_packet_size),
            Ok(Framing::Incomplete { .. })
        )
    }

    pub(crate) fn set_eof(&mut self) {
        self.eof = true;
    }

    /// Asks the connection to close with `reason` on its next drive.
    pub(crate) fn close_with(&mut self, reason: CloseReason) {
        self.closing.get_or_insert(reason);
    }

    /// `out_len`: what this drive encoded so far (`Shared::out`).
    fn write_blocked(&self, out_len: usize) -> bool {
        self.transport_queued() + out_len > TRANSPORT_QUEUED_MAX_BYTES
    }

    /// Runs the connection as far as it can go now: close decisions, a reply whose barrier
    /// completed, buffered frames, then what the session owes the client.
    pub(crate) fn drive(&mut self, sh: &mut Shared<'_>, now: Instant) -> Step {
        let step = match self.phase {
            Phase::Closed => Step::Closed,
            Phase::Handshake { handed_off } => self.drive_handshake(sh, handed_off, now),
            Phase::Live => self.drive_live(sh, now),
        };
        self.trim_extra();
        step
    }

    fn drive_live(&mut self, sh: &mut Shared<'_>, now: Instant) -> Step {
        if let Some(reason) = self.closing {
            return self.finish(sh, reason, now);
        }
        // 1. Did the shard decide to close us (takeover, keepalive, shutdown)?
        match sh.state.linked_session_mut(self.key.slot, self.generation) {
            None => return self.finish(sh, CloseReason::SessionTakenOver, now),
            Some(session) => {
                if let Some(link) = &mut session.link {
                    link.woken = false;
                    if let Some(reason) = link.close {
                        return self.finish(sh, reason, now);
                    }
                }
            }
        }
        // 2. A reply whose barrier completed goes out; retained messages for the new
        // subscriptions were queued already and follow it.
        if let Some(pending) = self.pending_reply() {
            if !sh.state.barrier_done(pending.0) {
                return Step::Idle;
            }
            if let Some(pending) = self.take_pending_reply() {
                self.write_packet(sh.out, &pending.1);
            }
        }
        // 3. Frames already received. Once the peer is gone they are handled even while its
        // reading is paused: a DISCONNECT or PUBLISH it sent still counts, and its replies go
        // nowhere, so the transport bound no longer matters.
        let mut step = Step::Idle;
        if !self.partial.is_empty() && (!self.write_blocked(sh.out.len()) || self.eof) {
            match self.handle_frames(sh, now) {
                Ok(more) => {
                    if more {
                        step = Step::Again;
                    }
                }
                Err(reason) => return self.finish(sh, reason, now),
            }
        }
        // 4. What the session owes, unless the transport is full or a reply waits for its
        // barrier (retained messages for a new subscription follow its SUBACK, as clients expect).
        if self.pending_reply().is_none()
            && !self.write_blocked(sh.out.len())
            && self.write_session(sh, now)
        {
            step = Step::Again;
        }
        if self.eof && self.partial.is_empty() && self.pending_reply().is_none() {
            return self.finish(sh, CloseReason::ConnectionLost, now);
        }
        if self.eof && step == Step::Idle && self.pending_reply().is_none() {
            // A partial frame that can never complete.
            return self.finish(sh, CloseReason::ConnectionLost, now);
        }
        step
    }

    /// Encodes queued deliveries into `out`, up to [`WRITE_BATCH_BYTES`]. True if more may be
    /// writable (the batch filled up).
    fn write_session(&mut self, sh: &mut Shared<'_>, now: Instant) -> bool {
        let state = &mut *sh.state;
        let retained_slice = usize::from(state.limits.retained_slice_len);
        let mut sent = [0u64; 3];
        let mut dropped: smallvec::SmallVec<[(QoS, crate::session::DropReason); 2]> =
            Default::default();
        let mut full = false;
        {
            let Some(session) = state.linked_session_mut(self.key.slot, self.generation) else {
                return false;
            };
            let start = sh.out.len();
            let mut retained_budget = retained_slice;
            loop {
                if sh.out.len() - start >= WRITE_BATCH_BYTES || retained_budget == 0 {
                    full = true;
                    break;
                }
                let Some(t) = session.traffic.as_deref() else {
                    break;
                };
                let from_retained = t.queue.is_empty();
                let qos = t
                    .queue
                    .front()
                    .map(|o| o.qos())
                    .or_else(|| t.retained_pending.front().map(|d| d.qos));
                match session.next_frame(now, sh.out) {
                    NextFrame::Wrote => {
                        if let Some(q) = qos {
                            sent[q as usize] += 1;
                        }
                    }
                    NextFrame::WroteControl => {}
                    NextFrame::Dropped(reason) => {
                        if let Some(q) = qos {
                            dropped.push((q, reason));
                        }
                    }
                    NextFrame::Idle => break,
                }
                if from_retained {
                    retained_budget -= 1;
                }
            }
        }
        for (q, s) in sent.iter().enumerate() {
            state.counters.messages_sent[q] += s;
        }
        for (q, reason) in dropped {
            state.counters.drop(q, reason);
        }
        full
    }

    /// Handles the complete frames in `partial`. Ok(true) if the budget ran out with frames left.
    fn handle_frames(&mut self, sh: &mut Shared<'_>, now: Instant) -> Result<bool, CloseReason> {
        let max = sh.state.limits.max_packet_size_bytes;
        let mut data = std::mem::take(&mut self.partial);
        let mut handled = 0;
        let mut result = Ok(false);
        while !data.is_empty() {
            let blocked = self.write_blocked(sh.out.len()) && !self.eof;
            if handled >= FRAMES_PER_DRIVE_MAX || blocked {
                result = Ok(!blocked);
                break;
            }
            let frame_len = match wire::check(&data, max) {
                Ok(Framing::Complete { frame_len }) => frame_len,
                Ok(Framing::Incomplete { .. }) => break,
                Err(err) => {
                    debug!(error = %err, "bad frame");
                    result = Err(CloseReason::ProtocolError(err.reason_code()));
                    break;
                }
            };
            // Over its publish budget the client waits with its input unhandled, and its reading
            // pauses (the engine sees `budget_blocked`): it is slowed, nothing is dropped. Once
            // the peer is gone its last frames are handled at once.
            let budget = self
                .extra
                .as_deref_mut()
                .and_then(|e| e.publish_budget.as_deref_mut());
            if let (Some(budget), false) = (budget, self.eof) {
                if data.first().is_some_and(|b| b >> 4 == 3) {
                    if let Budget::Blocked { until, newly } = budget.take(frame_len, now) {
                        if newly {
                            sh.admission.budget_wait(sh.conn, until);
                        }
                        break;
                    }
                }
            }
            let frame = data.split_to(frame_len).freeze();
            let packet = match wire::decode(frame, self.version) {
                Ok(p) => p,
                Err(err) => {
                    debug!(error = %err, "malformed packet");
                    result = Err(CloseReason::ProtocolError(err.reason_code()));
                    break;
                }
            };
            handled += 1;
            match self.handle_packet(sh, packet, now) {
                Flow::Continue => {}
                Flow::Barrier => break,
                Flow::Close(reason) => {
                    result = Err(reason);
                    break;
                }
            }
        }
        if !data.is_empty() {
            // Keep only the unhandled tail, compactly: a whole read's chunk is not pinned by it.
            self.partial = BytesMut::from(&data[..]);
        }
        result
    }

    fn write_packet(&self, out: &mut BytesMut, packet: &Packet) {
        if let Err(err) = wire::encode(packet, self.version, out) {
            warn!(error = %err, "could not encode a reply");
        }
    }

    /// Sends the last words (v5 DISCONNECT with a reason where the spec allows one) and updates
    /// the session: the will per the reason, expiry.
    fn finish(&mut self, sh: &mut Shared<'_>, reason: CloseReason, now: Instant) -> Step {
        self.phase = Phase::Closed;
        if let Some(pending) = self.take_pending_reply() {
            sh.state.forget_barrier(pending.0);
        }
        let code = match reason {
            CloseReason::SessionTakenOver => Some(ReasonCode::SessionTakenOver),
            CloseReason::KeepAliveTimeout => Some(ReasonCode::KeepAliveTimeout),
            CloseReason::ProtocolError(code) => Some(code),
            CloseReason::ServerShuttingDown => Some(ReasonCode::ServerShuttingDown),
            CloseReason::SlowConsumer => Some(ReasonCode::QuotaExceeded),
            // DISCONNECT 0x87: the token the connection authenticated with expired.
            CloseReason::CredentialsExpired => Some(ReasonCode::NotAuthorized),
            CloseReason::ClientDisconnect | CloseReason::ConnectionLost => None,
        };
        if let (Some(code), ProtocolVersion::V5, false) = (code, self.version, self.eof) {
            self.write_packet(
                sh.out,
                &Packet::Disconnect(Disconnect {
                    reason_code: code,
                    properties: DisconnectProperties::default(),
                }),
            );
        }
        let state = &mut *sh.state;
        state.counters.closed(reason);
        if reason != CloseReason::SessionTakenOver {
            let reason = if self.will_on_disconnect {
                // v5 DISCONNECT 0x04: disconnect normally but publish the will.
                CloseReason::ConnectionLost
            } else {
                reason
            };
            state.detach(self.key.slot, self.generation, reason, now);
        }
        debug!(
            slot = self.key.slot,
            reason = reason.label(),
            "client disconnected"
        );
        Step::Closed
    }

    /// Closes a connection that never got a session (refused, timed out, malformed CONNECT).
    fn close_unattached(&mut self) -> Step {
        self.phase = Phase::Closed;
        Step::Closed
    }
}

/// What handling one packet asks the loop to do next.
pub(crate) enum Flow {
    Continue,
    /// Stop handling input until the reply's route barrier completes.
    Barrier,
    Close(CloseReason),
}

pub(crate) fn ack_packet(packet_id: NonZeroU16, code: ReasonCode) -> PubAck {
    PubAck {
        packet_id,
        reason_code: code,
        properties: AckProperties::default(),
    }
}
