//! [`Engine`]: one shard's whole MQTT behaviour behind `handle_*` (bytes, time, cross-shard
//! messages, Kafka answers in) and `poll_*` (transmits, closes, hand-offs, cross-shard batches,
//! the next deadline out). The runtime owns the sockets and the clock; the engine owns
//! everything else and never blocks.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::debug;
use wire::{Packet, ProtocolVersion, PubAck, Publish, QoS, ReasonCode, Utf8Bytes};

use crate::admission::{Admission, Refusal};
use crate::bridge::Bridge;
use crate::config::{Limits, SubscribeAuthorizer};
use crate::conn::auth::{AuthRequest, Authenticated};
use crate::conn::meta::{ConnMeta, ListenerId};
use crate::conn::{Conn, Shared, Step, TRANSPORT_QUEUED_MAX_BYTES};
use crate::ids::{BarrierId, ConnId};
use crate::message::{ClaimRequest, ClaimToken, Message, ShardId, ShardMsg, ShardStats};
use crate::session::{CloseReason, Outbound};
use crate::state::{home_shard, SessionImage, ShardState};

/// What the runtime must do, in order, for the engine.
#[derive(Debug)]
pub enum Output {
    /// Write these bytes to the connection (after everything transmitted before).
    Transmit { conn: ConnId, data: Bytes },
    /// Stop reading from the connection: it does not take its output (slow consumer).
    PauseReading { conn: ConnId },
    /// Read from it again.
    ResumeReading { conn: ConnId },
    /// Close the connection once what was transmitted before is written (bounded by the
    /// runtime's linger).
    Close { conn: ConnId },
    /// Its session lives on shard `home`: give that shard the socket and `buffered` (the bytes
    /// received so far, CONNECT first). The engine has forgotten the connection.
    HandOff {
        conn: ConnId,
        home: ShardId,
        buffered: Bytes,
        /// A lower bound on when the bytes after CONNECT arrived (for cross-shard replay; pass it
        /// to `Engine::open_handed_off_since` on `home`).
        since: Instant,
        /// The connection's transport facts; give them back with `Engine::set_meta` on `home`.
        meta: Option<Box<ConnMeta>>,
    },
    /// Decide this CONNECT (off the shard thread: hashing and signatures are expensive) and
    /// answer with [`Engine::handle_auth_result`]. The connection waits, handling nothing,
    /// until then or until its connect timeout.
    Authenticate {
        conn: ConnId,
        request: Box<AuthRequest>,
    },
}

/// Passes of [`Engine::process`] per call: between them the runtime reaps the ring again, so a
/// connection's sends complete (and free its transport bound) before more input is handled.
pub const PROCESS_PASSES_MAX: u32 = 4;
/// Received bytes a connection may have waiting to be handled; beyond it reading pauses (TCP
/// backpressure to the client) until half of it is handled.
pub const INPUT_BUFFERED_MAX_BYTES: usize = 256 * 1024;

/// One entry of the connection table: 16 bytes, as the table's capacity is paid per connection.
#[derive(Default)]
struct ConnSlot {
    generation: u32,
    /// The `Engine::pass` that last drove this connection: a connection queued several times is
    /// driven once per pass, in the order it was first queued (arrival order matters: a SUBSCRIBE
    /// read before a PUBLISH on another connection must be handled first). Passes count from 1
    /// and every slot is reset to 0 when the counter wraps, so a stale value never matches.
    driven_in_pass: u32,
    /// Boxed: the table's spare capacity costs a pointer per entry, not a connection.
    conn: Option<Box<Conn>>,
}

/// One shard's engine.
pub struct Engine {
    pub state: ShardState,
    bridge: Option<Box<dyn Bridge>>,
    conns: Vec<ConnSlot>,
    free: Vec<u32>,
    /// Connections without a CONNACK yet, by deadline (accepts are in time order, so a FIFO);
    /// connected ones leave from the front each turn (`prune_handshakes`).
    handshakes: VecDeque<(Instant, ConnId)>,
    outputs: VecDeque<Output>,
    /// Scratch for the ready queue's ids; keeps its capacity.
    ready_scratch: Vec<ConnId>,
    /// Counts passes of `process`, for `ConnSlot::driven_in_pass`; never 0.
    pass: u32,
    /// Received bytes land here first and connections take views of it: one allocation per
    /// `READ_CHUNK_BYTES` of input rather than one per message. Frames split off it stay
    /// zero-copy `Bytes`.
    read_buf: bytes::BytesMut,
    /// Connections whose buffered input arrived before this turn's floor
    /// (`set_input_floor`), with the earliest instant it can have arrived at: a handed-off
    /// connection's input (it arrived on the accepting shard), input the runtime handed in with
    /// `handle_input_since` (a socket whose bytes waited before its receive was armed), input
    /// left buffered by an earlier drive. Sparse: a connection is here only while that holds.
    input_floors: ahash::AHashMap<ConnId, Instant>,
    /// The driven connection's output (`Shared::out`); split off as one transmit after each
    /// drive, so its capacity is shared by every connection like `read_buf`'s.
    out: bytes::BytesMut,
    /// Overload protection: connection and handshake counts, rates, flapping and bans.
    admission: Admission,
}

/// Size of the chunks `Engine::read_buf` allocates.
const READ_CHUNK_BYTES: usize = 64 * 1024;

impl Engine {
    pub fn new(
        id: ShardId,
        shard_count: u16,
        limits: Limits,
        authorizer: Arc<dyn SubscribeAuthorizer>,
        bridge: Option<Box<dyn Bridge>>,
    ) -> Engine {
        let admission = Admission::new(limits.overload.clone(), shard_count);
        Engine {
            state: ShardState::new(id, shard_count, limits, authorizer),
            bridge,
            conns: Vec::new(),
            free: Vec::new(),
            handshakes: VecDeque::new(),
            outputs: VecDeque::new(),
            ready_scratch: Vec::new(),
            pass: 0,
            read_buf: bytes::BytesMut::new(),
            input_floors: ahash::AHashMap::new(),
            out: bytes::BytesMut::new(),
            admission,
        }
    }

    pub fn id(&self) -> ShardId {
        self.state.id
    }

    /// Connections the engine knows (handshaking, live, or closing this turn).
    pub fn connection_count(&self) -> usize {
        self.conns.len() - self.free.len()
    }

    // ----- inputs ---------------------------------------------------------------------------

    /// Overload protection's state and counters.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Replaces the static ban list (SIGHUP); connections already up stay up.
    pub fn set_ban_list(&mut self, ban: crate::admission::BanList) {
        self.admission.set_ban_list(ban);
    }

    /// A socket was just accepted on `listener`: may this shard take it (its share of the
    /// connection and handshake bounds)? On `Err` the runtime closes the socket at once, without
    /// opening a connection; the refusal is counted and logged.
    pub fn admit(&mut self, listener: ListenerId, now: Instant) -> Result<(), Refusal> {
        self.admission.admit(listener, now)
    }

    /// A new transport connection (accepted here on listener 0). It must send CONNECT within
    /// `limits.connect_timeout_secs`.
    pub fn open(&mut self, now: Instant) -> ConnId {
        self.open_on(0, now)
    }

    /// A new transport connection accepted here on `listener` (see [`Engine::admit`]).
    pub fn open_on(&mut self, listener: ListenerId, now: Instant) -> ConnId {
        self.open_conn(false, listener, now)
    }

    /// A connection another shard accepted and handed here, with what it had received.
    pub fn open_handed_off(&mut self, buffered: &[u8], now: Instant) -> ConnId {
        let since = self.state.previous_turn_at;
        self.open_handed_off_since(buffered, since, now)
    }

    /// Like [`Engine::open_handed_off`], with the accepting shard's lower bound on when the bytes
    /// after CONNECT arrived (`Output::HandOff::since`): a subscription they make counts from
    /// then, so publishes that raced it on other shards are replayed to it.
    pub fn open_handed_off_since(
        &mut self,
        buffered: &[u8],
        since: Instant,
        now: Instant,
    ) -> ConnId {
        let id = self.open_conn(true, 0, now);
        self.input_floors.insert(id, since);
        self.handle_input(id, buffered, now);
        id
    }

    fn open_conn(&mut self, handed_off: bool, listener: ListenerId, now: Instant) -> ConnId {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.conns.push(ConnSlot::default());
                u32::try_from(self.conns.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let slot = &mut self.conns[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        let id = ConnId {
            index,
            generation: slot.generation,
        };
        let mut conn = Box::new(Conn::new(handed_off));
        conn.listener = listener;
        slot.conn = Some(conn);
        self.admission.opened(listener);
        let timeout = Duration::from_secs(u64::from(self.state.limits.connect_timeout_secs));
        self.handshakes.push_back((now + timeout, id));
        id
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        conn_in(&mut self.conns, id)
    }

    /// Sets what the transport knows about `conn` (peer address, listener, certificate names).
    /// Call right after `open*`, before its input. Unknown connections are ignored.
    pub fn set_meta(&mut self, conn: ConnId, meta: ConnMeta) {
        // A free function, not `conn_mut`: the caller also borrows other fields of `self`.
        let Some(c) = conn_in(&mut self.conns, conn) else {
            return;
        };
        if c.listener != meta.listener {
            self.admission.moved_listener(c.listener, meta.listener);
            c.listener = meta.listener;
        }
        c.extra_mut().meta = Some(Box::new(meta));
    }

    /// Whether CONNECTs wait for the runtime's authentication ([`Output::Authenticate`]).
    pub fn set_authentication(&mut self, required: bool) {
        self.state.authenticate = required;
    }

    /// Sets (or, on reload, replaces) the compiled ACL every check on this shard uses from now
    /// on; `None` keeps only the `SubscribeAuthorizer` given at start. Sessions connected
    /// before an ACL was first set have no principal and are refused by it.
    pub fn set_acl(&mut self, acl: Option<Arc<auth::Acl>>) {
        self.state.acl = acl;
    }

    /// The answer to an [`Output::Authenticate`] for `conn`: the connect goes on (session,
    /// takeover, CONNACK) or is refused with the CONNACK for the refusal. Ignored when the
    /// connection is gone or was not waiting.
    pub fn handle_auth_result(
        &mut self,
        conn: ConnId,
        result: Result<Authenticated, auth::Refusal>,
        now: Instant,
    ) {
        let _ = now;
        if let Some(c) = self.conn_mut(conn) {
            if c.set_auth_result(result) {
                self.state.ready.push(conn);
            }
        }
    }

    /// The transport facts of `conn`, if the runtime set any.
    pub fn meta(&self, conn: ConnId) -> Option<&ConnMeta> {
        let slot = self.conns.get(conn.index as usize)?;
        if slot.generation != conn.generation {
            return None;
        }
        slot.conn.as_deref()?.meta()
    }

    /// Bytes received on `conn`. Handled in [`Engine::process`], with everything else this turn.
    pub fn handle_input(&mut self, conn: ConnId, data: &[u8], now: Instant) {
        let _ = now;
        self.state.counters.bytes_received += data.len() as u64;
        // A free function, not `conn_mut`: the caller also borrows other fields of `self`.
        let Some(c) = conn_in(&mut self.conns, conn) else {
            return;
        };
        if c.input_buffered() == 0 {
            if self.read_buf.capacity() - self.read_buf.len() < data.len() {
                self.read_buf.reserve(READ_CHUNK_BYTES.max(data.len()));
            }
            self.read_buf.extend_from_slice(data);
            c.take_input(self.read_buf.split());
        } else {
            c.input(data);
        }
        let max_packet = self.state.limits.max_packet_size_bytes;
        let pause = !c.reading_paused
            && c.input_buffered() > INPUT_BUFFERED_MAX_BYTES
            && c.input_ready(max_packet);
        if pause {
            c.reading_paused = true;
        }
        self.state.ready.push(conn);
        if pause {
            self.outputs.push_back(Output::PauseReading { conn });
        }
    }

    /// Like [`Engine::handle_input`], for bytes that may have arrived before this turn's floor
    /// (`set_input_floor`), at `floor` at the earliest: a socket's first bytes, which waited in
    /// the kernel until its receive was armed. Subscriptions they make count from `floor`.
    pub fn handle_input_since(&mut self, conn: ConnId, data: &[u8], floor: Instant, now: Instant) {
        self.note_input_floor(conn, floor);
        self.handle_input(conn, data, now);
    }

    /// The next input of `conn` (until it is driven) may have arrived as early as `floor`; for
    /// a runtime whose transport layers (TLS, WebSocket) call `handle_input` themselves.
    pub fn note_input_floor(&mut self, conn: ConnId, floor: Instant) {
        if floor < self.state.previous_turn_at {
            let entry = self.input_floors.entry(conn).or_insert(floor);
            *entry = (*entry).min(floor);
        }
    }

    /// The peer closed, or the transport failed: the connection is gone (the runtime closed it).
    pub fn handle_closed(&mut self, conn: ConnId, now: Instant) {
        let _ = now;
        if let Some(c) = self.conn_mut(conn) {
            c.set_eof();
            self.state.ready.push(conn);
        }
    }

    /// The transport wrote some of the connection's output; `queued_bytes` are still waiting.
    pub fn handle_sent(&mut self, conn: ConnId, queued_bytes: usize) {
        let Some(c) = self.conn_mut(conn) else {
            return;
        };
        // A drive held anything back for the transport bound only if its output took
        // `transport_queued` over the bound (its output only grows while it runs), and reading
        // resumes only in a drive: other connections have nothing a send completion could
        // unblock, and are not driven again for it (a broadcast's 15,000 subscribers would be
        // driven twice per message).
        let held_back = c.transport_queued() >= TRANSPORT_QUEUED_MAX_BYTES || c.reading_paused;
        c.set_transport_queued(queued_bytes);
        if held_back && queued_bytes < TRANSPORT_QUEUED_MAX_BYTES {
            self.state.ready.push(conn);
        }
    }

    /// A batch from another shard. Route changes and barriers are applied at once, before the
    /// client input of the same turn is handled (the runtime hands these in first), so a
    /// subscription made on another shard is seen by a publish read after it arrived.
    pub fn handle_shard_msgs(&mut self, batch: Vec<ShardMsg>, now: Instant) {
        for msg in batch {
            match msg {
                ShardMsg::Publish {
                    message,
                    normal,
                    shared,
                } => {
                    self.state.deliver_local(&message, normal, &shared);
                }
                ShardMsg::Route(change) => self.state.apply_route(&change),
                ShardMsg::RouteBarrier { from, barrier } => {
                    self.state.send_to(from, ShardMsg::RouteAck { barrier });
                }
                ShardMsg::RouteAck { barrier } => self.state.ack_barrier(BarrierId(barrier)),
                ShardMsg::Retain(message) => self.state.apply_retain(&message),
                ShardMsg::Stats { from, stats } => {
                    if let Some(slot) = self.state.stats_by_shard.get_mut(usize::from(from)) {
                        *slot = stats;
                    }
                }
                ShardMsg::RemoteRoute {
                    node,
                    filter,
                    group,
                    present,
                } => self.state.apply_remote_route(node, filter, group, present),
                ShardMsg::ClusterForward(forward) => self.state.queue_cluster_forward(forward),
                ShardMsg::ClusterClaim {
                    token,
                    client_id,
                    clean_start,
                } => {
                    if self.state.cluster_enabled() {
                        self.state.queue_claim_request(ClaimRequest::Start {
                            token,
                            client_id,
                            clean_start,
                        });
                    } else {
                        // Shard 0 could not join the cluster (its sockets failed to bind):
                        // no peer can hold the session, the connect goes on.
                        self.claim_done(token, true, Vec::new(), now);
                    }
                }
                ShardMsg::ClaimDone { conn, won, images } => {
                    self.finish_claim(conn, won, images, now)
                }
                ShardMsg::PeerClaim {
                    from,
                    claim,
                    client_id,
                    clean_start,
                } => self
                    .state
                    .peer_claim(from, claim, client_id, clean_start, now),
                ShardMsg::PeerClaimAnswer(answer) => {
                    self.state.queue_claim_request(ClaimRequest::Answer(answer))
                }
                ShardMsg::Shutdown => {}
            }
        }
    }

    /// Shard 0: the cluster runtime ended the claim of `token` (`ClaimRequest::Start`): the
    /// images peers handed over become sessions on the id's home shard, then the held CONNECT
    /// goes on (`won`) or is refused.
    pub fn claim_done(
        &mut self,
        token: ClaimToken,
        won: bool,
        images: Vec<SessionImage>,
        now: Instant,
    ) {
        if token.shard == self.state.id {
            self.finish_claim(Some(token.conn), won, images, now);
        } else {
            self.state.send_to(
                token.shard,
                ShardMsg::ClaimDone {
                    conn: Some(token.conn),
                    won,
                    images,
                },
            );
        }
    }

    /// Shard 0: a session a peer handed over after the claim it answered had ended; kept on its
    /// home shard as an offline session (the client's next connect resumes or claims it).
    pub fn install_orphan(&mut self, image: SessionImage, now: Instant) {
        let home = home_shard(image.client_id.as_str(), self.state.shard_count);
        if home == self.state.id {
            self.finish_claim(None, false, vec![image], now);
        } else {
            self.state.send_to(
                home,
                ShardMsg::ClaimDone {
                    conn: None,
                    won: false,
                    images: vec![image],
                },
            );
        }
    }

    /// On the home shard: installs `images`, then resumes or refuses the held `conn`.
    fn finish_claim(
        &mut self,
        conn: Option<ConnId>,
        won: bool,
        images: Vec<SessionImage>,
        now: Instant,
    ) {
        for image in images {
            self.state.install_image(image, now);
        }
        let Some(conn) = conn else { return };
        let waiting = self.conn_mut(conn).is_some_and(|c| c.set_claim_result(won));
        if waiting {
            // Driven now, not at the end of the turn: a peer's claim of the same id may be the
            // next message (it came after ours ended), and must find this connection attached,
            // to take the session over from it, rather than no session (both would stay up).
            self.next_pass();
            self.drive(conn, now);
        }
    }

    /// Timers due: keepalive, will delay, session expiry, connect timeouts, publish budgets.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.state.run_timers(now);
        let mut due = std::mem::take(&mut self.ready_scratch);
        self.admission.budget_waits_due(now, &mut due);
        for id in due.drain(..) {
            self.state.ready.push(id);
        }
        self.ready_scratch = due;
        while let Some(&(at, id)) = self.handshakes.front() {
            if at > now {
                break;
            }
            self.handshakes.pop_front();
            let expired = match self.conn_mut(id) {
                Some(c) if c.is_handshaking() => {
                    c.close_with(CloseReason::ConnectionLost);
                    true
                }
                _ => false,
            };
            if expired {
                debug!("no connect within the connect timeout");
                self.close_now(id);
            }
        }
    }

    /// Kafka answered (or definitively failed) the record tagged `token`.
    pub fn handle_bridge_ack(&mut self, token: u64, outcome: Result<(), String>) {
        let state = &mut self.state;
        let Some(pending) = state.kafka_pending.remove(&token) else {
            return;
        };
        let failed = outcome.is_err();
        if let Err(err) = &outcome {
            debug!(error = %err, "kafka did not take a bridged publish");
        }
        if failed && pending.qos == QoS::ExactlyOnce {
            // Let a retransmission of this packet id be processed afresh.
            state.release_qos2(pending.slot, pending.packet_id);
        }
        let Some(session) = state.linked_session_mut(pending.slot, pending.generation) else {
            // The connection is gone; the client resends on reconnect (at least once).
            return;
        };
        let version = session.peer.version;
        if failed && version != ProtocolVersion::V5 {
            // v3 has no failure code for PUBACK: close so the client resends.
            if let Some(link) = &mut session.link {
                link.close
                    .get_or_insert(CloseReason::ProtocolError(ReasonCode::UnspecifiedError));
            }
            if let Some(conn) = session.wake_deferred() {
                state.ready.push(conn);
            }
            return;
        }
        let code = if failed {
            ReasonCode::UnspecifiedError
        } else {
            ReasonCode::Success
        };
        let ack = PubAck {
            packet_id: pending.packet_id,
            reason_code: code,
            properties: Default::default(),
        };
        let packet = match pending.qos {
            QoS::ExactlyOnce => Packet::PubRec(ack),
            _ => Packet::PubAck(ack),
        };
        let mut out = bytes::BytesMut::new();
        if wire::encode(&packet, version, &mut out).is_ok() {
            session
                .traffic_mut()
                .queue
                .push_back(Outbound::Control(out.freeze()));
            if let Some(conn) = session.wake_deferred() {
                state.ready.push(conn);
            }
        }
    }

    /// Publishes a message that did not come from an MQTT client (a Kafka record, `$SYS`).
    /// False if the topic is not a valid MQTT topic name (nothing is published).
    pub fn publish_inbound(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: Bytes,
        user_properties: Vec<(Utf8Bytes, Utf8Bytes)>,
        now: Instant,
    ) -> bool {
        if wire::topic::validate_name(topic).is_err() {
            return false;
        }
        let mut publish = Publish {
            dup: false,
            qos,
            retain,
            topic: Utf8Bytes::from(topic),
            packet_id: None,
            properties: Default::default(),
            payload,
        };
        publish.properties.user_properties = user_properties;
        let message = Arc::new(Message {
            publish,
            origin: None,
            expires_at: None,
            received_at: now,
        });
        self.state.publish(message, now);
        true
    }

    /// A publish a peer node forwarded (already decoded and validated by the runtime):
    /// `origin_age` is how long ago its origin node accepted it, so retained updates of one
    /// topic order by the origin's time on every node (last writer wins). It goes to this node's
    /// subscribers and retained store only, never to a peer again.
    /// `groups` are the shared groups the peer picked this node for; `retained_sync` marks the
    /// peer's retained set handed over when a link came up (stored, not delivered).
    pub fn publish_from_peer(
        &mut self,
        publish: Publish,
        origin_age: Duration,
        groups: &[crate::message::GroupPick],
        retained_sync: bool,
        now: Instant,
    ) {
        let expires_at = publish
            .properties
            .message_expiry_interval
            .map(|secs| now + Duration::from_secs(u64::from(secs)));
        let message = Arc::new(Message {
            publish,
            origin: None,
            expires_at,
            received_at: now.checked_sub(origin_age).unwrap_or(now),
        });
        if retained_sync {
            if message.publish.retain {
                self.state.retain_from_peer(message);
            }
            return;
        }
        self.state.publish_from_peer(message, groups, now);
    }

    /// Shutdown: no new sessions; every connection is told (v5 DISCONNECT 0x8B) and closed; wills
    /// go out (server-side close).
    pub fn begin_shutdown(&mut self) {
        self.state.shutting_down = true;
        let ready = self.state.ready.clone();
        for slot in self.state.online_slots() {
            if let Some(session) = self.state.session_mut(slot) {
                if let Some(link) = &mut session.link {
                    link.close.get_or_insert(CloseReason::ServerShuttingDown);
                }
                session.wake(&ready);
            }
        }
        let handshaking: Vec<ConnId> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, s)| s.conn.as_deref().is_some_and(Conn::is_handshaking))
            .map(|(index, s)| ConnId {
                index: index as u32,
                generation: s.generation,
            })
            .collect();
        for id in handshaking {
            self.close_now(id);
        }
    }

    /// This shard's figures, sent to shard 0 for `$SYS` (or aggregated there).
    pub fn stats(&self) -> ShardStats {
        self.state.stats()
    }

    // ----- processing and outputs -----------------------------------------------------------

    /// Drives every connection with work: handles their buffered frames, writes what their
    /// sessions owe. Call once per loop turn after handing in the turn's inputs.
    pub fn process(&mut self, now: Instant) {
        // Bounded: each pass drives each queued connection once; a connection queues itself
        // again only while it has budgeted work left, and the transport bound stops writers.
        let mut passes = 0;
        while !self.state.ready.is_empty() && passes < PROCESS_PASSES_MAX {
            passes += 1;
            self.next_pass();
            let mut ready = std::mem::take(&mut self.ready_scratch);
            self.state.ready.drain_into(&mut ready);
            for id in ready.drain(..) {
                self.drive(id, now);
            }
            self.ready_scratch = ready;
        }
        self.prune_handshakes();
        self.state.previous_turn_at = now;
    }

    /// Drops handshake deadlines from the front whose connection has connected (or gone): a
    /// connection storm's deadlines leave as the CONNACKs go out, not a connect timeout later,
    /// so the queue holds about the connections still handshaking.
    fn prune_handshakes(&mut self) {
        while let Some(&(_, id)) = self.handshakes.front() {
            if conn_in(&mut self.conns, id).is_some_and(|c| c.is_handshaking()) {
                break;
            }
            self.handshakes.pop_front();
        }
    }

    /// The earliest instant the input handed in from now on (until the next `process`) can have
    /// arrived at, as the transport knows it (`uring::Ring::reported_through` before the turn's
    /// poll). Subscriptions this input makes count from it (`message::RouteChange::since`), so
    /// publishes that other shards read after it are replayed to them. Without a call, the
    /// previous `process` time is used (right for a transport that hands bytes in as they
    /// arrive, as the simulations do).
    pub fn set_input_floor(&mut self, at: Instant) {
        self.state.previous_turn_at = at;
    }

    /// Starts a pass. On the counter's wrap (after 2^32 passes) every slot forgets its last
    /// pass, so no connection looks driven already.
    fn next_pass(&mut self) {
        self.pass = match self.pass.checked_add(1) {
            Some(pass) => pass,
            None => {
                for slot in &mut self.conns {
                    slot.driven_in_pass = 0;
                }
                1
            }
        };
    }

    fn drive(&mut self, id: ConnId, now: Instant) {
        let Some(slot) = self.conns.get_mut(id.index as usize) else {
            return;
        };
        if slot.generation != id.generation || slot.driven_in_pass == self.pass {
            return;
        }
        slot.driven_in_pass = self.pass;
        let earlier = if self.input_floors.is_empty() {
            None
        } else {
            self.input_floors.remove(&id)
        };
        let turn_floor = self.state.previous_turn_at;
        if let Some(since) = earlier {
            self.state.previous_turn_at = since.min(turn_floor);
            self.state.replay_local_since = Some(since.min(turn_floor));
        }
        let Some(conn) = slot.conn.as_deref_mut() else {
            return;
        };
        debug_assert!(self.out.is_empty());
        let was_handshaking = conn.is_handshaking();
        let mut shared = Shared {
            conn: id,
            state: &mut self.state,
            bridge: self.bridge.as_deref_mut(),
            out: &mut self.out,
            admission: &mut self.admission,
        };
        let step = conn.drive(&mut shared, now);
        if was_handshaking && !conn.is_handshaking() {
            self.admission.handshake_done();
        }
        if conn.input_buffered() > 0 && matches!(step, Step::Idle | Step::Again) {
            // Handled in a later turn, whose floor is later than this input's arrival.
            self.input_floors.insert(id, self.state.previous_turn_at);
        }
        if earlier.is_some() {
            self.state.previous_turn_at = turn_floor;
            self.state.replay_local_since = None;
        }
        if !self.out.is_empty() {
            let data = self.out.split().freeze();
            conn.set_transport_queued(conn.transport_queued() + data.len());
            self.state.counters.bytes_sent += data.len() as u64;
            self.outputs.push_back(Output::Transmit { conn: id, data });
        }
        // Reading pauses while the client does not take its output (slow consumer), its input
        // piles up faster than it is handled, or it publishes over its budget; it resumes below
        // half of either bound once the budget refilled.
        // Input counts only while it starts with a frame that can be handled: a frame larger
        // than the bound (up to the maximum packet size) must be read to its end first.
        // (The frame check runs only for a connection holding more than half the bound.)
        let budget_blocked = conn.budget_blocked(now);
        let max_packet = self.state.limits.max_packet_size_bytes;
        let buffered = conn.input_buffered();
        let input_ready = buffered > INPUT_BUFFERED_MAX_BYTES / 2 && conn.input_ready(max_packet);
        let over = conn.transport_queued() > TRANSPORT_QUEUED_MAX_BYTES
            || (buffered > INPUT_BUFFERED_MAX_BYTES && input_ready)
            || budget_blocked;
        let under = conn.transport_queued() <= TRANSPORT_QUEUED_MAX_BYTES / 2
            && (buffered <= INPUT_BUFFERED_MAX_BYTES / 2 || !input_ready)
            && !budget_blocked;
        if over && !conn.reading_paused {
            conn.reading_paused = true;
            self.outputs.push_back(Output::PauseReading { conn: id });
        } else if under && conn.reading_paused && step != Step::Closed {
            conn.reading_paused = false;
            self.outputs.push_back(Output::ResumeReading { conn: id });
        }
        match step {
            Step::Idle => {}
            Step::Again => self.state.ready.push(id),
            Step::HandOff { home, buffered } => {
                let meta = self.conn_mut(id).and_then(|c| {
                    let listener = c.listener;
                    // The listener travels in the meta (so the home shard counts it there).
                    match c.take_meta() {
                        None if listener != 0 => Some(Box::new(ConnMeta {
                            listener,
                            ..ConnMeta::default()
                        })),
                        meta => meta,
                    }
                });
                self.free_conn(id);
                let since = self.state.previous_turn_at;
                self.outputs.push_back(Output::HandOff {
                    conn: id,
                    home,
                    buffered,
                    since,
                    meta,
                });
            }
            Step::Authenticate(request) => {
                self.outputs
                    .push_back(Output::Authenticate { conn: id, request });
            }
            Step::Closed => {
                self.free_conn(id);
                self.outputs.push_back(Output::Close { conn: id });
            }
        }
    }

    /// Closes a connection that has no session to update (handshake timeout, shutdown).
    fn close_now(&mut self, id: ConnId) {
        if let Some(handshaking) = self.conn_mut(id).map(|c| c.is_handshaking()) {
            if handshaking {
                self.admission.handshake_done();
            }
            self.free_conn(id);
            self.outputs.push_back(Output::Close { conn: id });
        }
    }

    fn free_conn(&mut self, id: ConnId) {
        if !self.input_floors.is_empty() {
            self.input_floors.remove(&id);
        }
        if let Some(slot) = self.conns.get_mut(id.index as usize) {
            if slot.generation == id.generation {
                if let Some(conn) = slot.conn.take() {
                    self.admission.closed(conn.listener);
                    self.free.push(id.index);
                }
            }
        }
    }

    /// The next thing for the runtime to do, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The batch for shard `to` this turn (empty if none). The runtime sends it as one message.
    pub fn poll_outbox(&mut self, to: ShardId) -> Option<Vec<ShardMsg>> {
        let outbox = self.state.outboxes.get_mut(usize::from(to))?;
        if outbox.is_empty() {
            return None;
        }
        Some(std::mem::take(outbox))
    }

    /// Puts back a batch the channel to `to` could not take this turn (it goes first next time).
    pub fn unpoll_outbox(&mut self, to: ShardId, mut batch: Vec<ShardMsg>) {
        if let Some(outbox) = self.state.outboxes.get_mut(usize::from(to)) {
            batch.append(outbox);
            *outbox = batch;
        }
    }

    /// When [`Engine::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timers = self.state.next_deadline();
        let handshake = self.handshakes.front().map(|(at, _)| *at);
        let budgets = self.admission.next_deadline();
        [timers, handshake, budgets].into_iter().flatten().min()
    }

    /// Whether connections still wait to be driven (the runtime should not sleep).
    pub fn has_work(&self) -> bool {
        !self.state.ready.is_empty() || !self.outputs.is_empty()
    }
}

/// The live connection `id` names in `conns`, if its slot still holds that generation.
fn conn_in(conns: &mut [ConnSlot], id: ConnId) -> Option<&mut Conn> {
    let slot = conns.get_mut(id.index as usize)?;
    if slot.generation != id.generation {
        return None;
    }
    slot.conn.as_deref_mut()
}
