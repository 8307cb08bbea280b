//! One client connection: a task that reads, decodes and handles packets, and writes what its
//! session owes the client. It holds no buffer while idle: reads go into the shard's read buffer
//! and writes come from the shard's write buffer; only a partial frame or an unsent tail is kept
//! per connection, and only while it exists.
//!
//! Must run on the shard that owns the client id's session (see `state::home_shard`); a connection
//! accepted elsewhere is handed off before it touches any session.

use std::future::Future;
use std::num::NonZeroU16;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};
use wire::{
    AckProperties, ConnAck, ConnAckProperties, Connect, Disconnect, DisconnectProperties, Framing,
    Packet, ProtocolVersion, PubAck, Publish, QoS, ReasonCode, SubAck, UnsubAck, Utf8Bytes,
};

use crate::message::{Message, SessionKey};
use crate::runtime::{ShardCtx, Stream};
use crate::session::{CloseReason, InboundAliases, InflightState, NextFrame, PeerLimits, Will};
use crate::state::{home_shard, SubscribeResult};

/// Bytes read per read call.
pub const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Bytes encoded from the session queue before they are sent.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// Work units (frames handled or writes done) before the task yields to others on the shard.
const POLL_BUDGET: u32 = 64;
/// A connection that cannot take this much pending output is a slow consumer; its queue (bounded
/// by `session_queue_len_max`) absorbs the rest, dropping per policy.
const PENDING_WRITE_MAX_BYTES: usize = 4 * WRITE_BATCH_BYTES;
const _: () = assert!(WRITE_BATCH_BYTES < PENDING_WRITE_MAX_BYTES);

/// What happened to a connection before it had a session.
pub enum Handshake {
    /// Serve it here.
    Attached,
    /// Its session lives on another shard: hand the socket there.
    HandOff { home: u16, buffered: Bytes },
    /// Closed during the handshake.
    Closed,
}

/// A connected client after CONNECT.
struct Conn {
    version: ProtocolVersion,
    slot: u32,
    generation: u32,
    key: SessionKey,
    /// Bytes read but not yet a whole frame, or left unhandled while a SUBACK waits for a route
    /// barrier. Empty (no allocation) for an idle client.
    partial: BytesMut,
    /// Encoded output the socket did not take yet. Empty for an idle client.
    pending_write: BytesMut,
    /// Inbound topic aliases (v5), created on first use.
    aliases_in: InboundAliases,
    /// A reply held until every other shard has applied what this one sent before it: a SUBACK
    /// until the new subscriptions are routed everywhere, a PUBACK/PUBREC of a retained message
    /// until every shard stores it (so a subscriber anywhere sees it once the publisher is acked).
    pending_reply: Option<Box<(u64, Packet)>>,
    /// The reason chosen when the broker decided to close.
    closing: Option<CloseReason>,
    /// Publish the will even though the close is a DISCONNECT (v5 reason 0x04).
    will_on_disconnect: bool,
    eof: bool,
}

/// Runs a connection from accept (or hand-off) to close (or parking).
///
/// The handshake runs as a boxed future and the close as another, so the state kept for the
/// connection's life is only the stream and [`Conn`]: memory per connection is a design target.
/// (An async fn would keep its arguments for its whole life; this keeps one box pointer.)
pub fn serve(
    ctx: Rc<ShardCtx>,
    stream: Stream,
    buffered: Bytes,
    handed_off: bool,
) -> impl Future<Output = ()> {
    Serve::Handshake(Box::pin(handshake_owned(ctx, stream, buffered, handed_off)))
}

/// [`serve`]'s future: the boxed handshake, then the connection's life in the same place (an
/// async block would keep both side by side).
enum Serve<H, L> {
    Handshake(Pin<Box<H>>),
    Live(L),
    Done,
}

impl<H, L> Future for Serve<H, L>
where
    H: Future<Output = Option<L>>,
    L: Future<Output = ()>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: the `Live` future is never moved once it is in place: it is only polled
        // pinned there and dropped in place (by the assignment) when it has completed.
        let this = unsafe { self.get_unchecked_mut() };
        loop {
            match this {
                Serve::Handshake(handshake) => match handshake.as_mut().poll(cx) {
                    Poll::Ready(Some(live)) => *this = Serve::Live(live),
                    Poll::Ready(None) => {
                        *this = Serve::Done;
                        return Poll::Ready(());
                    }
                    Poll::Pending => return Poll::Pending,
                },
                Serve::Live(live) => {
                    // SAFETY: see above; `live` stays where it is until it is dropped.
                    let done = unsafe { Pin::new_unchecked(live) }.poll(cx);
                    if done.is_ready() {
                        *this = Serve::Done;
                    }
                    return done;
                }
                Serve::Done => return Poll::Ready(()),
            }
        }
    }
}

/// The handshake, then the connection's life as a future not started yet.
async fn handshake_owned(
    ctx: Rc<ShardCtx>,
    mut stream: Stream,
    buffered: Bytes,
    handed_off: bool,
) -> Option<impl Future<Output = ()>> {
    let conn = handshake(&ctx, &mut stream, buffered, handed_off).await?;
    Some(live(ctx, stream, conn))
}

/// Serves a parked connection again (its socket turned readable, or the shard woke it). Must
/// be called on the connection's shard.
pub fn resume(ctx: Rc<ShardCtx>, unparked: crate::state::Unparked) -> impl Future<Output = ()> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: a connected TCP socket the session kept while parked; we own it now.
    let stream = unsafe { Stream::from_raw_fd(unparked.fd.into_raw_fd()) };
    let conn = Conn {
        version: unparked.version,
        slot: unparked.slot,
        generation: unparked.generation,
        key: unparked.key,
        partial: BytesMut::new(),
        pending_write: BytesMut::new(),
        aliases_in: unparked.aliases_in,
        pending_reply: None,
        closing: unparked.closing,
        will_on_disconnect: false,
        eof: false,
    };
    live(ctx, stream, conn)
}

/// A connected client's life after CONNACK: served until it closes or parks. (A plain fn
/// returning an async block: an async fn would store its arguments twice.)
#[allow(clippy::manual_async_fn)] // deliberate: see above
fn live(ctx: Rc<ShardCtx>, mut stream: Stream, mut conn: Conn) -> impl Future<Output = ()> {
    async move {
        loop {
            let exit = std::future::poll_fn(|cx| conn.poll(cx, &ctx, &mut stream)).await;
            match exit {
                Exit::Close(reason) => {
                    Box::pin(conn.finish(&ctx, &mut stream, reason)).await;
                    return;
                }
                Exit::Park => {
                    let aliases = conn.aliases_in.take();
                    match ctx.park(&stream, conn.slot, conn.generation, aliases) {
                        // Dropping the stream closes this task's descriptor; the parked
                        // duplicate keeps the connection.
                        Ok(()) => return,
                        Err(aliases) => conn.aliases_in = aliases,
                    }
                }
            }
        }
    }
}

/// Reads and answers CONNECT. None if the connection was refused, closed or handed off.
async fn handshake(
    ctx: &Rc<ShardCtx>,
    stream: &mut Stream,
    buffered: Bytes,
    handed_off: bool,
) -> Option<Conn> {
    let connect_timeout = {
        let state = ctx.state.borrow();
        Duration::from_secs(u64::from(state.limits.connect_timeout_secs))
    };
    let mut inbox = BytesMut::from(&buffered[..]);
    // Read until the CONNECT frame is whole.
    let frame = {
        let max = ctx.state.borrow().limits.max_packet_size_bytes;
        let read_connect = async {
            loop {
                match wire::check(&inbox, max) {
                    Ok(Framing::Complete { frame_len }) => return Ok(frame_len),
                    Ok(Framing::Incomplete { .. }) => {}
                    Err(err) => return Err(Some(err)),
                }
                let mut chunk = [0u8; 1024];
                match futures_lite::AsyncReadExt::read(&mut *stream, &mut chunk).await {
                    Ok(0) | Err(_) => return Err(None),
                    Ok(n) => inbox.extend_from_slice(&chunk[..n]),
                }
            }
        };
        match glommio::timer::timeout(connect_timeout, async { Ok(read_connect.await) }).await {
            Ok(Ok(frame_len)) => frame_len,
            Ok(Err(Some(err))) => {
                debug!(error = %err, "malformed connect frame");
                // Close without CONNACK: the version is unknown [MQTT-4.8.0-1].
                return None;
            }
            Ok(Err(None)) => return None,
            Err(_) => {
                debug!("no connect within the connect timeout");
                return None;
            }
        }
    };
    let all = inbox.freeze();
    let connect_frame = all.slice(..frame);
    let rest = all.slice(frame..);
    let connect = match wire::decode(connect_frame, ProtocolVersion::V3_1_1) {
        Ok(Packet::Connect(c)) => c,
        Ok(_) => {
            // [MQTT-3.1.0-1] the first packet must be CONNECT.
            debug!("first packet was not connect");
            return None;
        }
        Err(err) => {
            let code = err.reason_code();
            debug!(error = %err, "connect rejected");
            refuse_undecodable_connect(stream, &all, code).await;
            return None;
        }
    };

    // Where does this client's session live?
    let (shard_id, shard_count) = {
        let s = ctx.state.borrow();
        (s.id, s.shard_count)
    };
    if !connect.client_id.is_empty() {
        let home = home_shard(connect.client_id.as_str(), shard_count);
        if home != shard_id && !handed_off {
            // The home shard gets a duplicate of the socket; ours closes when this task ends.
            ctx.hand_off(stream, home, all);
            return None;
        }
    }
    let mut conn = accept_connect(ctx, stream, *connect).await?;
    conn.partial.extend_from_slice(&rest);
    Some(conn)
}

/// Answers a CONNECT that could not be decoded: a CONNACK where the spec asks for one.
async fn refuse_undecodable_connect(stream: &mut Stream, frame: &[u8], code: ReasonCode) {
    // Protocol level byte sits after the fixed header and the protocol name.
    let level = protocol_level(frame);
    let out = match (level, code) {
        // [MQTT-3.1.2-2] unsupported protocol level: CONNACK 0x01 then close.
        (_, ReasonCode::UnsupportedProtocolVersion) => {
            let mut out = BytesMut::new();
            let packet = Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: ReasonCode::UnsupportedProtocolVersion,
                properties: ConnAckProperties::default(),
            });
            if wire::encode(&packet, ProtocolVersion::V3_1_1, &mut out).is_err() {
                return;
            }
            out
        }
        (Some(5), code) => {
            let mut out = BytesMut::new();
            let packet = Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: code,
                properties: ConnAckProperties::default(),
            });
            if wire::encode(&packet, ProtocolVersion::V5, &mut out).is_err() {
                return;
            }
            out
        }
        _ => return,
    };
    let _ = futures_lite::AsyncWriteExt::write_all(stream, &out).await;
}

fn protocol_level(frame: &[u8]) -> Option<u8> {
    let mut i = 1;
    while i < frame.len() && i < 5 && frame[i] & 0x80 != 0 {
        i += 1;
    }
    let name_len_at = i + 1;
    let hi = *frame.get(name_len_at)? as usize;
    let lo = *frame.get(name_len_at + 1)? as usize;
    frame.get(name_len_at + 2 + (hi << 8 | lo)).copied()
}

/// Validates a CONNECT, binds the session and sends CONNACK. None if the connection was refused.
async fn accept_connect(ctx: &Rc<ShardCtx>, stream: &mut Stream, connect: Connect) -> Option<Conn> {
    let version = connect.protocol;
    let now = Instant::now();
    let refuse = |code: ReasonCode| -> BytesMut {
        let mut out = BytesMut::new();
        let packet = Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: code,
            properties: ConnAckProperties::default(),
        });
        let _ = wire::encode(&packet, version, &mut out);
        out
    };
    let mut ack_props = ConnAckProperties::default();
    let decision: Result<(Utf8Bytes, u16, u32, PeerLimits), ReasonCode> = (|| {
        let state = ctx.state.borrow();
        let limits = &state.limits;
        if state.shutting_down {
            return Err(ReasonCode::ServerUnavailable);
        }
        if limits.connections_per_shard_max > 0
            && state.connections >= limits.connections_per_shard_max
        {
            return Err(if version == ProtocolVersion::V5 {
                ReasonCode::QuotaExceeded
            } else {
                ReasonCode::ServerUnavailable
            });
        }
        // Enhanced authentication is not configured: any method is refused [MQTT-4.12.0-1].
        if connect.properties.authentication_method.is_some() {
            return Err(ReasonCode::BadAuthenticationMethod);
        }
        let client_id = if connect.client_id.is_empty() {
            match version {
                // [MQTT-3.1.3-8] v3.1.1 empty id needs clean session.
                ProtocolVersion::V3_1_1 if connect.clean_start && limits.allow_empty_client_id => {
                    Utf8Bytes::from_static("")
                }
                ProtocolVersion::V5 => Utf8Bytes::from_static(""),
                _ => return Err(ReasonCode::ClientIdentifierNotValid),
            }
        } else {
            if version == ProtocolVersion::V3_1 && connect.client_id.len() > 23 {
                return Err(ReasonCode::ClientIdentifierNotValid);
            }
            // Own copy: a slice would pin the whole CONNECT frame for the session's life.
            Utf8Bytes::from(connect.client_id.as_str())
        };
        let mut keepalive = connect.keep_alive_secs;
        if limits.keepalive_max_secs > 0
            && (keepalive == 0 || keepalive > limits.keepalive_max_secs)
        {
            keepalive = limits.keepalive_max_secs;
        }
        let expiry = match version {
            ProtocolVersion::V5 => connect.properties.session_expiry_interval.unwrap_or(0),
            _ if connect.clean_start => 0,
            _ => limits.session_expiry_max_secs,
        };
        // The client's Receive Maximum bounds what we keep in flight to it; we may use fewer.
        let inflight_max = match connect.properties.receive_maximum {
            Some(0) => return Err(ReasonCode::ProtocolError),
            Some(n) => n.min(limits.inflight_max),
            None => limits.inflight_max,
        };
        let max_packet_size = match connect.properties.maximum_packet_size {
            Some(0) => return Err(ReasonCode::ProtocolError),
            Some(n) => n,
            None => u32::MAX,
        };
        let peer = PeerLimits {
            version,
            inflight_max,
            max_packet_size,
            topic_alias_max: connect.properties.topic_alias_maximum.unwrap_or(0),
            problem_information: connect.properties.request_problem_information != Some(0),
        };
        Ok((client_id, keepalive, expiry, peer))
    })();
    let (mut client_id, keepalive, expiry, peer) = match decision {
        Ok(d) => d,
        Err(code) => {
            debug!(client_id = %connect.client_id.as_str(), reason = ?code, "connect refused");
            let out = refuse(code);
            let _ = futures_lite::AsyncWriteExt::write_all(stream, &out).await;
            return None;
        }
    };
    let mut state = ctx.state.borrow_mut();
    if client_id.is_empty() {
        client_id = state.assign_client_id();
        if version == ProtocolVersion::V5 {
            ack_props.assigned_client_identifier = Some(client_id.clone());
        }
    }
    let will = connect.will.as_ref().map(|w| {
        let mut publish = Publish {
            dup: false,
            qos: w.qos,
            retain: w.retain,
            topic: Utf8Bytes::from(w.topic.as_str()),
            packet_id: None,
            properties: Default::default(),
            payload: Bytes::copy_from_slice(&w.payload),
        };
        let p = &w.properties;
        publish.properties.payload_format_indicator = p.payload_format_indicator;
        publish.properties.content_type = p.content_type.clone();
        publish.properties.response_topic = p.response_topic.clone();
        publish.properties.correlation_data = p.correlation_data.clone();
        publish.properties.user_properties = p.user_properties.clone();
        (
            publish,
            p.message_expiry_interval,
            p.will_delay_interval.unwrap_or(0),
        )
    });
    let will = will.map(|(publish, expiry_secs, delay_secs)| Will {
        message: Arc::new(Message {
            publish,
            origin: None,
            expires_at: None,
            received_at: now,
        }),
        delay_secs,
        expiry_secs,
    });
    // Moved, not cloned: a clone would give the session's id a shared-ownership header, 32 more
    // bytes for every session.
    let attached = state.attach(
        client_id,
        connect.clean_start,
        expiry,
        peer,
        keepalive,
        None,
        now,
    );
    let key = match state.session(attached.slot) {
        Some(s) => s.key,
        None => return None,
    };
    // The will carries its publisher's identity (for no-local), known only now.
    if let Some(mut w) = will {
        if let Some(message) = Arc::get_mut(&mut w.message) {
            message.origin = Some(key);
        }
        if let Some(session) = state.session_mut(attached.slot) {
            session.will = Some(w);
        }
    }
    state.counters.connections_accepted += 1;
    if version == ProtocolVersion::V5 {
        let limits = &state.limits;
        ack_props.receive_maximum = Some(limits.receive_maximum);
        ack_props.maximum_packet_size = Some(limits.max_packet_size_bytes);
        ack_props.topic_alias_maximum = Some(limits.topic_alias_maximum);
        ack_props.retain_available = Some(1);
        ack_props.wildcard_subscription_available = Some(1);
        ack_props.subscription_identifiers_available = Some(1);
        ack_props.shared_subscription_available = Some(1);
        if keepalive != connect.keep_alive_secs {
            ack_props.server_keep_alive = Some(keepalive);
        }
        let requested = connect.properties.session_expiry_interval.unwrap_or(0);
        if requested > limits.session_expiry_max_secs {
            ack_props.session_expiry_interval = Some(limits.session_expiry_max_secs);
        }
    }
    let connack = Packet::ConnAck(ConnAck {
        session_present: attached.session_present,
        reason_code: ReasonCode::Success,
        properties: ack_props,
    });
    let mut conn = Conn {
        version,
        slot: attached.slot,
        generation: attached.generation,
        key,
        partial: BytesMut::new(),
        pending_write: BytesMut::new(),
        aliases_in: None,
        pending_reply: None,
        closing: None,
        will_on_disconnect: false,
        eof: false,
    };
    let mut out = BytesMut::new();
    if wire::encode(&connack, version, &mut out).is_err() {
        return None;
    }
    // Resume: unacknowledged messages go out again first [MQTT-4.4.0-1].
    if attached.session_present {
        if let Some(session) = state.session_mut(attached.slot) {
            session.resend_inflight(now, &mut out);
        }
    }
    debug!(
        client_id = %state.session(attached.slot).map_or("", |s| s.client_id.as_str()),
        slot = attached.slot,
        "client connected"
    );
    drop(state);
    conn.pending_write = out;
    Some(conn)
}

/// Why [`Conn::poll`] stopped.
enum Exit {
    Close(CloseReason),
    /// Idle and asked to park: the task may end, the session keeps the socket.
    Park,
}

/// What handling one packet asks the loop to do next.
enum Flow {
    Continue,
    /// Stop handling input until the SUBACK's route barrier completes.
    Barrier,
    Close(CloseReason),
}

impl Conn {
    /// The connection's whole life after CONNACK, as one poll function: close checks, writes,
    /// buffered input, then the socket.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        ctx: &Rc<ShardCtx>,
        stream: &mut Stream,
    ) -> Poll<Exit> {
        let mut budget = POLL_BUDGET;
        // One clock read per wake-up (it showed in profiles when read per loop pass); a poll is
        // bounded by POLL_BUDGET passes, so the drift is negligible.
        let now = Instant::now();
        loop {
            if let Some(reason) = self.closing {
                return Poll::Ready(Exit::Close(reason));
            }
            // 1. Did the shard decide to close us (takeover, keepalive, shutdown)?
            {
                let mut state = ctx.state.borrow_mut();
                match state.linked_session_mut(self.slot, self.generation) {
                    None => return Poll::Ready(Exit::Close(CloseReason::SessionTakenOver)),
                    Some(session) => {
                        if let Some(link) = &mut session.link {
                            if let Some(reason) = link.close {
                                return Poll::Ready(Exit::Close(reason));
                            }
                            link.waker = Some(cx.waker().clone());
                        }
                    }
                }
            }
            if budget == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            budget -= 1;
            // 2. Flush what the socket did not take last time.
            if !self.pending_write.is_empty() {
                match Pin::new(&mut *stream).poll_write(cx, &self.pending_write) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(Exit::Close(CloseReason::ConnectionLost))
                    }
                    Poll::Ready(Ok(n)) => {
                        ctx.state.borrow_mut().counters.bytes_sent += n as u64;
                        self.pending_write.advance(n);
                        if self.pending_write.is_empty() {
                            self.pending_write = BytesMut::new();
                        }
                        continue;
                    }
                    Poll::Pending => {}
                }
            }
            let write_blocked = !self.pending_write.is_empty();
            // 3. A SUBACK waiting for its route barrier holds back further input.
            if let Some(pending) = &self.pending_reply {
                let barrier = pending.0;
                let mut state = ctx.state.borrow_mut();
                let done = match state.barriers.get_mut(&barrier) {
                    Some((0, _)) | None => true,
                    Some((_, waker)) => {
                        *waker = Some(cx.waker().clone());
                        false
                    }
                };
                if done {
                    state.barriers.remove(&barrier);
                    drop(state);
                    if let Some(pending) = self.pending_reply.take() {
                        let (_, suback) = *pending;
                        let mut out = ctx.write_buf.borrow_mut();
                        let _ = wire::encode(&suback, self.version, &mut out);
                    }
                    // Retained messages for the new subscriptions were queued already.
                    self.flush(cx, ctx, stream);
                    continue;
                }
            }
            // 4. Write what the session owes, unless the socket is full or a reply waits for its
            // barrier (retained messages for a new subscription follow its SUBACK, as clients
            // expect).
            if !write_blocked && self.pending_reply.is_none() {
                let wrote = self.write_session(ctx, now);
                if wrote || !ctx.write_buf.borrow().is_empty() {
                    self.flush(cx, ctx, stream);
                    if wrote {
                        continue;
                    }
                }
            }
            if self.pending_reply.is_some() {
                return Poll::Pending;
            }
            // 5. Handle complete frames already buffered.
            if !self.partial.is_empty() {
                match self.handle_buffered(ctx, now) {
                    Ok(true) => {
                        self.flush(cx, ctx, stream);
                        continue;
                    }
                    Ok(false) => {}
                    Err(reason) => {
                        self.flush(cx, ctx, stream);
                        return Poll::Ready(Exit::Close(reason));
                    }
                }
            }
            if self.eof {
                return Poll::Ready(Exit::Close(CloseReason::ConnectionLost));
            }
            if self.pending_write.len() > PENDING_WRITE_MAX_BYTES {
                // Stop reading from a client that does not read: its queue absorbs the rest.
                return Poll::Pending;
            }
            // 6. Read from the socket into the shard's read buffer.
            // Read into the shard's zeroed scratch page, then copy just the bytes read into the
            // frame buffer: cheaper than zero-filling a fresh chunk of the frame buffer per read.
            let mut scratch = ctx.read_scratch.borrow_mut();
            let mut rb = ctx.read_buf.borrow_mut();
            debug_assert!(rb.is_empty());
            match Pin::new(&mut *stream).poll_read(cx, &mut scratch[..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    rb.clear();
                    self.eof = true;
                    // Handle what is left, then close.
                    if self.partial.is_empty() {
                        return Poll::Ready(Exit::Close(CloseReason::ConnectionLost));
                    }
                    continue;
                }
                Poll::Ready(Ok(n)) => {
                    rb.extend_from_slice(&scratch[..n]);
                    drop(rb);
                    drop(scratch);
                    {
                        let mut state = ctx.state.borrow_mut();
                        state.counters.bytes_received += n as u64;
                        if let Some(s) = state.linked_session_mut(self.slot, self.generation) {
                            if let Some(link) = &mut s.link {
                                link.last_activity = now;
                                link.idle_mark = false;
                            }
                        }
                    }
                    match self.handle_read(ctx, now) {
                        Ok(()) => {
                            self.flush(cx, ctx, stream);
                        }
                        Err(reason) => {
                            self.flush(cx, ctx, stream);
                            return Poll::Ready(Exit::Close(reason));
                        }
                    }
                }
                Poll::Pending => {
                    rb.clear();
                    drop(rb);
                    drop(scratch);
                    if self.may_park(ctx) {
                        return Poll::Ready(Exit::Park);
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Whether the sweep asked this connection to park and it has nothing in progress: no
    /// partial frame, no unsent bytes, no reply waiting, nothing to write. Each request is
    /// answered once; the sweep asks again after another idle period.
    fn may_park(&self, ctx: &Rc<ShardCtx>) -> bool {
        let mut state = ctx.state.borrow_mut();
        let Some(session) = state.linked_session_mut(self.slot, self.generation) else {
            return false;
        };
        let writable = session.has_writable();
        let Some(link) = session.link.as_mut() else {
            return false;
        };
        if !std::mem::take(&mut link.park_requested) {
            return false;
        }
        link.close.is_none()
            && !writable
            && !self.eof
            && self.partial.is_empty()
            && self.pending_write.is_empty()
            && self.pending_reply.is_none()
            && self.closing.is_none()
    }

    /// Encodes queued deliveries into the shard's write buffer. True if anything was written.
    fn write_session(&mut self, ctx: &Rc<ShardCtx>, now: Instant) -> bool {
        let mut state = ctx.state.borrow_mut();
        let mut out = ctx.write_buf.borrow_mut();
        let retained_slice = usize::from(state.limits.retained_slice_len);
        let mut wrote = false;
        let mut sent = [0u64; 3];
        let mut dropped: smallvec::SmallVec<[(QoS, crate::session::DropReason); 2]> =
            Default::default();
        {
            let Some(session) = state.linked_session_mut(self.slot, self.generation) else {
                return false;
            };
            let mut retained_budget = retained_slice;
            while out.len() < WRITE_BATCH_BYTES && retained_budget > 0 {
                let Some(t) = session.traffic.as_deref() else {
                    break;
                };
                let from_retained = t.queue.is_empty();
                let qos = t
                    .queue
                    .front()
                    .map(|o| o.qos())
                    .or_else(|| t.retained_pending.front().map(|d| d.qos));
                match session.next_frame(now, &mut out) {
                    NextFrame::Wrote => {
                        wrote = true;
                        if let Some(q) = qos {
                            sent[q as usize] += 1;
                        }
                    }
                    NextFrame::WroteControl => wrote = true,
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
        if wrote {
            if let Some(link) = state
                .linked_session_mut(self.slot, self.generation)
                .and_then(|s| s.link.as_mut())
            {
                link.idle_mark = false;
            }
        }
        for (q, s) in sent.iter().enumerate() {
            state.counters.messages_sent[q] += s;
        }
        for (q, reason) in dropped {
            state.counters.drop(q, reason);
        }
        wrote
    }

    /// Sends the shard's write buffer; what the socket does not take is kept per connection.
    fn flush(&mut self, cx: &mut Context<'_>, ctx: &Rc<ShardCtx>, stream: &mut Stream) {
        let mut out = ctx.write_buf.borrow_mut();
        if out.is_empty() {
            return;
        }
        if !self.pending_write.is_empty() {
            self.pending_write.extend_from_slice(&out);
            out.clear();
            return;
        }
        let mut written = 0;
        while written < out.len() {
            match Pin::new(&mut *stream).poll_write(cx, &out[written..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.eof = true;
                    break;
                }
                Poll::Ready(Ok(n)) => written += n,
                Poll::Pending => break,
            }
        }
        ctx.state.borrow_mut().counters.bytes_sent += written as u64;
        if written < out.len() && !self.eof {
            self.pending_write.extend_from_slice(&out[written..]);
        }
        out.clear();
    }

    /// Handles the frames in the shard's read buffer (prefixed by any partial frame); keeps the
    /// remainder in `partial`.
    fn handle_read(&mut self, ctx: &Rc<ShardCtx>, now: Instant) -> Result<(), CloseReason> {
        let mut rb = ctx.read_buf.borrow_mut();
        let mut data = if self.partial.is_empty() {
            // split_to keeps the rest of the buffer's capacity with the shard for the next read.
            let len = rb.len();
            rb.split_to(len)
        } else {
            let mut p = std::mem::take(&mut self.partial);
            p.extend_from_slice(&rb);
            rb.clear();
            p
        };
        drop(rb);
        let result = self.handle_frames(ctx, &mut data, now);
        if !data.is_empty() {
            // Keep only the unhandled tail, compactly: the shard buffer is reused.
            self.partial = BytesMut::from(&data[..]);
        }
        result.map(|_| ())
    }

    /// Handles complete frames held in `partial`. Ok(true) if any was handled.
    fn handle_buffered(&mut self, ctx: &Rc<ShardCtx>, now: Instant) -> Result<bool, CloseReason> {
        let mut data = std::mem::take(&mut self.partial);
        let before = data.len();
        let result = self.handle_frames(ctx, &mut data, now);
        let handled = data.len() != before;
        if !data.is_empty() {
            self.partial = data;
        }
        result.map(|_| handled)
    }

    fn handle_frames(
        &mut self,
        ctx: &Rc<ShardCtx>,
        data: &mut BytesMut,
        now: Instant,
    ) -> Result<(), CloseReason> {
        let max = ctx.state.borrow().limits.max_packet_size_bytes;
        let mut handled = 0;
        while !data.is_empty() {
            let frame_len = match wire::check(data, max) {
                Ok(Framing::Complete { frame_len }) => frame_len,
                Ok(Framing::Incomplete { .. }) => break,
                Err(err) => {
                    debug!(error = %err, "bad frame");
                    return Err(self.protocol_error(ctx, err.reason_code()));
                }
            };
            let frame = data.split_to(frame_len).freeze();
            let packet = match wire::decode(frame, self.version) {
                Ok(p) => p,
                Err(err) => {
                    debug!(error = %err, "malformed packet");
                    return Err(self.protocol_error(ctx, err.reason_code()));
                }
            };
            handled += 1;
            match self.handle_packet(ctx, packet, now) {
                Flow::Continue => {}
                Flow::Barrier => break,
                Flow::Close(reason) => return Err(reason),
            }
            if handled >= POLL_BUDGET {
                break;
            }
        }
        Ok(())
    }

    fn protocol_error(&mut self, ctx: &Rc<ShardCtx>, code: ReasonCode) -> CloseReason {
        let _ = ctx;
        CloseReason::ProtocolError(code)
    }

    fn write_packet(&self, ctx: &Rc<ShardCtx>, packet: &Packet) {
        let mut out = ctx.write_buf.borrow_mut();
        if let Err(err) = wire::encode(packet, self.version, &mut out) {
            warn!(error = %err, "could not encode a reply");
        }
    }

    fn handle_packet(&mut self, ctx: &Rc<ShardCtx>, packet: Packet, now: Instant) -> Flow {
        match packet {
            Packet::Publish(publish) => self.handle_publish(ctx, publish, now),
            Packet::PubAck(ack) => {
                let mut state = ctx.state.borrow_mut();
                if let Some(s) = state.linked_session_mut(self.slot, self.generation) {
                    s.complete(ack.packet_id, InflightState::AwaitPubAck);
                }
                Flow::Continue
            }
            Packet::PubRec(ack) => {
                let known = {
                    let mut state = ctx.state.borrow_mut();
                    match state.linked_session_mut(self.slot, self.generation) {
                        Some(s) => {
                            if ack.reason_code as u8 >= 0x80 {
                                // A failed PUBREC ends the exchange [MQTT-4.3.3-?]: free the id.
                                s.complete(ack.packet_id, InflightState::AwaitPubRec);
                                return Flow::Continue;
                            }
                            s.received(ack.packet_id)
                        }
                        None => false,
                    }
                };
                let code = if known {
                    ReasonCode::Success
                } else {
                    ReasonCode::PacketIdentifierNotFound
                };
                self.write_packet(ctx, &Packet::PubRel(ack_packet(ack.packet_id, code)));
                Flow::Continue
            }
            Packet::PubRel(ack) => {
                let known = ctx
                    .state
                    .borrow_mut()
                    .release_qos2(self.slot, ack.packet_id);
                let code = if known {
                    ReasonCode::Success
                } else {
                    ReasonCode::PacketIdentifierNotFound
                };
                self.write_packet(ctx, &Packet::PubComp(ack_packet(ack.packet_id, code)));
                Flow::Continue
            }
            Packet::PubComp(ack) => {
                let mut state = ctx.state.borrow_mut();
                if let Some(s) = state.linked_session_mut(self.slot, self.generation) {
                    s.complete(ack.packet_id, InflightState::AwaitPubComp);
                }
                Flow::Continue
            }
            Packet::Subscribe(subscribe) => {
                let mut state = ctx.state.borrow_mut();
                let id = subscribe.properties.subscription_identifier;
                let mut codes = Vec::with_capacity(subscribe.filters.len());
                let mut route_changed = false;
                for (filter, options) in &subscribe.filters {
                    let result = state.subscribe(self.slot, filter.as_str(), *options, id, now);
                    codes.push(match result {
                        SubscribeResult::Granted {
                            qos,
                            route_changed: changed,
                        } => {
                            route_changed |= changed;
                            match qos {
                                QoS::AtMostOnce => ReasonCode::Success,
                                QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                                QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
                            }
                        }
                        // v3.1.1 has a single failure code 0x80 [MQTT-3.9.3-2].
                        SubscribeResult::Refused(_) if self.version != ProtocolVersion::V5 => {
                            ReasonCode::UnspecifiedError
                        }
                        SubscribeResult::Refused(code) => code,
                    });
                }
                let suback = Packet::SubAck(SubAck {
                    packet_id: subscribe.packet_id,
                    reason_codes: codes,
                    properties: AckProperties::default(),
                });
                if route_changed {
                    if let Some(barrier) = state.start_barrier() {
                        self.pending_reply = Some(Box::new((barrier, suback)));
                        return Flow::Barrier;
                    }
                }
                drop(state);
                self.write_packet(ctx, &suback);
                Flow::Continue
            }
            Packet::Unsubscribe(unsubscribe) => {
                let mut state = ctx.state.borrow_mut();
                let codes = unsubscribe
                    .filters
                    .iter()
                    .map(|f| {
                        if state.unsubscribe(self.slot, f.as_str()) {
                            ReasonCode::Success
                        } else {
                            ReasonCode::NoSubscriptionExisted
                        }
                    })
                    .collect::<Vec<_>>();
                drop(state);
                let codes = if self.version == ProtocolVersion::V5 {
                    codes
                } else {
                    Vec::new()
                };
                self.write_packet(
                    ctx,
                    &Packet::UnsubAck(UnsubAck {
                        packet_id: unsubscribe.packet_id,
                        reason_codes: codes,
                        properties: AckProperties::default(),
                    }),
                );
                Flow::Continue
            }
            Packet::PingReq => {
                self.write_packet(ctx, &Packet::PingResp);
                Flow::Continue
            }
            Packet::Disconnect(disconnect) => {
                if self.version == ProtocolVersion::V5 {
                    if let Some(expiry) = disconnect.properties.session_expiry_interval {
                        let mut state = ctx.state.borrow_mut();
                        let max = state.limits.session_expiry_max_secs;
                        if let Some(s) = state.linked_session_mut(self.slot, self.generation) {
                            // [MQTT-3.14.2-2] cannot turn a 0 expiry into a non-zero one.
                            if s.expiry_secs == 0 && expiry != 0 {
                                return Flow::Close(CloseReason::ProtocolError(
                                    ReasonCode::ProtocolError,
                                ));
                            }
                            s.expiry_secs = expiry.min(max);
                        }
                    }
                    if disconnect.reason_code == ReasonCode::DisconnectWithWillMessage {
                        self.will_on_disconnect = true;
                    }
                }
                Flow::Close(CloseReason::ClientDisconnect)
            }
            // A second CONNECT is a protocol violation [MQTT-3.1.0-2].
            Packet::Connect(_) => {
                Flow::Close(CloseReason::ProtocolError(ReasonCode::ProtocolError))
            }
            // No enhanced authentication was agreed, so AUTH is a protocol error [MQTT-4.12.0-1].
            Packet::Auth(_) => Flow::Close(CloseReason::ProtocolError(ReasonCode::ProtocolError)),
            // Server-to-client packets from a client.
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Flow::Close(CloseReason::ProtocolError(ReasonCode::ProtocolError))
            }
        }
    }

    fn handle_publish(&mut self, ctx: &Rc<ShardCtx>, mut publish: Publish, now: Instant) -> Flow {
        let (topic_alias_maximum, receive_maximum) = {
            let state = ctx.state.borrow();
            (
                state.limits.topic_alias_maximum,
                state.limits.receive_maximum,
            )
        };
        // Topic alias resolution (v5) [MQTT-3.3.2-7..12].
        if let Some(alias) = publish.properties.topic_alias.take() {
            if alias == 0 || alias > topic_alias_maximum {
                return Flow::Close(CloseReason::ProtocolError(ReasonCode::TopicAliasInvalid));
            }
            let table = self.aliases_in.get_or_insert_with(|| {
                vec![None; usize::from(topic_alias_maximum)].into_boxed_slice()
            });
            let index = usize::from(alias - 1);
            if publish.topic.is_empty() {
                match table.get(index).and_then(|t| t.clone()) {
                    Some(topic) => publish.topic = topic,
                    None => {
                        return Flow::Close(CloseReason::ProtocolError(ReasonCode::ProtocolError))
                    }
                }
            } else if let Some(slot) = table.get_mut(index) {
                *slot = Some(Utf8Bytes::from(publish.topic.as_str()));
            }
        } else if publish.topic.is_empty() {
            return Flow::Close(CloseReason::ProtocolError(ReasonCode::ProtocolError));
        }
        if wire::topic::validate_name(publish.topic.as_str()).is_err() {
            // [MQTT-3.3.2-2] no wildcards in a topic name.
            return Flow::Close(CloseReason::ProtocolError(ReasonCode::TopicNameInvalid));
        }
        // A client must not send subscription identifiers [MQTT-3.3.4-6].
        if !publish.properties.subscription_identifiers.is_empty() {
            return Flow::Close(CloseReason::ProtocolError(ReasonCode::ProtocolError));
        }
        let qos = publish.qos;
        let packet_id = publish.packet_id;
        let retain = publish.retain;
        let mut state = ctx.state.borrow_mut();
        state.counters.messages_received[qos as usize] += 1;
        if qos == QoS::ExactlyOnce {
            let Some(id) = packet_id else {
                return Flow::Close(CloseReason::ProtocolError(ReasonCode::ProtocolError));
            };
            let in_flight = state
                .session(self.slot)
                .and_then(|s| s.traffic.as_deref())
                .map_or(0, |t| t.incoming_qos2.len());
            match state.incoming_qos2(self.slot, id) {
                Some(true) => {
                    if in_flight >= usize::from(receive_maximum) {
                        // [MQTT-3.3.4-9] more unacknowledged QoS 2 than our Receive Maximum.
                        return Flow::Close(CloseReason::ProtocolError(
                            ReasonCode::ReceiveMaximumExceeded,
                        ));
                    }
                }
                Some(false) => {
                    // A retransmission awaiting PUBREL: acknowledge again, do not deliver twice.
                    // If Kafka has not acknowledged the first copy yet (ack = "kafka"), the PUBREC
                    // still waits for it.
                    let awaiting_kafka = state
                        .kafka_pending
                        .values()
                        .any(|p| p.slot == self.slot && p.packet_id == id);
                    drop(state);
                    if awaiting_kafka {
                        return Flow::Continue;
                    }
                    self.write_packet(ctx, &Packet::PubRec(ack_packet(id, ReasonCode::Success)));
                    return Flow::Continue;
                }
                None => return Flow::Close(CloseReason::SessionTakenOver),
            }
        }
        let expires_at = publish
            .properties
            .message_expiry_interval
            .map(|secs| now + Duration::from_secs(u64::from(secs)));
        publish.dup = false;
        publish.packet_id = None;
        let message = Arc::new(Message {
            publish,
            origin: Some(self.key),
            expires_at,
            received_at: now,
        });
        drop(state);
        let offer = crate::bridge::offer(ctx, self.slot, self.generation, &message, packet_id);
        if let crate::bridge::Offer::Refused = offer {
            // Not acknowledged, not routed: the client's inflight window holds it back, and it
            // resends after reconnecting. A QoS 2 id must be usable again for that resend.
            if let (QoS::ExactlyOnce, Some(id)) = (qos, packet_id) {
                ctx.state.borrow_mut().release_qos2(self.slot, id);
            }
            return Flow::Continue;
        }
        let matched = ctx.state.borrow_mut().publish(message, now);
        if let crate::bridge::Offer::AckLater = offer {
            return Flow::Continue;
        }
        let code = if matched == 0 && self.version == ProtocolVersion::V5 {
            ReasonCode::NoMatchingSubscribers
        } else {
            ReasonCode::Success
        };
        if retain && qos != QoS::AtMostOnce {
            let reply = match (qos, packet_id) {
                (QoS::AtLeastOnce, Some(id)) => Some(Packet::PubAck(ack_packet(id, code))),
                (QoS::ExactlyOnce, Some(id)) => Some(Packet::PubRec(ack_packet(id, code))),
                _ => None,
            };
            if let Some(reply) = reply {
                if let Some(barrier) = ctx.state.borrow_mut().start_barrier() {
                    self.pending_reply = Some(Box::new((barrier, reply)));
                    return Flow::Barrier;
                }
            }
        }
        match (qos, packet_id) {
            (QoS::AtLeastOnce, Some(id)) => {
                self.write_packet(ctx, &Packet::PubAck(ack_packet(id, code)))
            }
            (QoS::ExactlyOnce, Some(id)) => {
                self.write_packet(ctx, &Packet::PubRec(ack_packet(id, code)))
            }
            _ => {}
        }
        Flow::Continue
    }

    /// Sends the last words (v5 DISCONNECT with a reason where the spec allows one), updates the
    /// session and closes the socket.
    async fn finish(mut self, ctx: &Rc<ShardCtx>, stream: &mut Stream, reason: CloseReason) {
        let code = match reason {
            CloseReason::SessionTakenOver => Some(ReasonCode::SessionTakenOver),
            CloseReason::KeepAliveTimeout => Some(ReasonCode::KeepAliveTimeout),
            CloseReason::ProtocolError(code) => Some(code),
            CloseReason::ServerShuttingDown => Some(ReasonCode::ServerShuttingDown),
            CloseReason::SlowConsumer => Some(ReasonCode::QuotaExceeded),
            CloseReason::ClientDisconnect | CloseReason::ConnectionLost => None,
        };
        if let (Some(code), ProtocolVersion::V5) = (code, self.version) {
            let packet = Packet::Disconnect(Disconnect {
                reason_code: code,
                properties: DisconnectProperties::default(),
            });
            let _ = wire::encode(&packet, self.version, &mut self.pending_write);
        }
        if !self.pending_write.is_empty() && !self.eof {
            let write = futures_lite::AsyncWriteExt::write_all(stream, &self.pending_write);
            let _ =
                glommio::timer::timeout(Duration::from_secs(1), async { Ok(write.await) }).await;
        }
        let now = Instant::now();
        {
            let mut state = ctx.state.borrow_mut();
            state.counters.closed(reason);
            if reason != CloseReason::SessionTakenOver {
                if self.will_on_disconnect {
                    // v5 DISCONNECT 0x04: disconnect normally but publish the will.
                    state.detach(self.slot, self.generation, CloseReason::ConnectionLost, now);
                } else {
                    state.detach(self.slot, self.generation, reason, now);
                }
            }
        }
        let _ = futures_lite::AsyncWriteExt::close(stream).await;
        debug!(
            slot = self.slot,
            reason = reason.label(),
            "client disconnected"
        );
    }
}

fn ack_packet(packet_id: NonZeroU16, code: ReasonCode) -> PubAck {
    PubAck {
        packet_id,
        reason_code: code,
        properties: AckProperties::default(),
    }
}

/// Keeps the compiler honest about the future types the runtime spawns.
pub type ServeFuture = Pin<Box<dyn Future<Output = ()>>>;
