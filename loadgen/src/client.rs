//! One MQTT client: handshake, then a writer loop (publishes, acks, pings) in the client's
//! own task and a reader task (deliveries, acks). All MQTT encoding/decoding is `wire`'s.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::future::Future;
use std::net::IpAddr;
use std::num::NonZeroU16;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::io::{ReadHalf, WriteHalf};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use wire::{
    ConnAck, Connect, ConnectProperties, Disconnect, Framing, Packet, ProtocolVersion, PubAck,
    Publish, QoS, ReasonCode, SubAck, Subscribe, SubscriptionOptions, Utf8Bytes,
};

use crate::failover::{mix64, pick_broker};
use crate::header::{realtime_ns, PayloadHeader, HEADER_LEN};
use crate::plan::{self, MqttVersion, Role, Schedule};
use crate::runner::{Phase, ThreadCtx};
use crate::seq::SeqTracker;
use crate::stats::{record_count, record_us, LiveCounters};
use crate::transport::Stream;

/// Largest inbound frame accepted from the broker.
pub const INBOUND_FRAME_MAX: u32 = 32 * 1024 * 1024;
/// Read sizes adapt between these: idle clients keep tiny buffers, busy subscribers big ones.
const READ_CHUNK_MIN: usize = 256;
const READ_CHUNK_MAX: usize = 64 * 1024;
/// Bytes encoded before a write is issued regardless of the batch count.
const WRITE_BATCH_BYTES_MAX: usize = 256 * 1024;
/// Max-rate publishers yield to the executor after this many writes so others get a turn.
const WRITES_BEFORE_YIELD: u32 = 4;
/// How long a closing client waits for the broker to close its side.
const CLOSE_WAIT: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub enum ClientError {
    Io(std::io::Error),
    Timeout,
    Closed,
    Decode(wire::DecodeError),
    Encode(wire::EncodeError),
    Refused(ReasonCode),
    SubscribeRefused(ReasonCode),
    Protocol(&'static str),
}

impl ClientError {
    pub fn reason(&self) -> String {
        match self {
            ClientError::Io(err) => crate::net::io_reason(err),
            ClientError::Timeout => "timeout".into(),
            ClientError::Closed => "closed_by_broker".into(),
            ClientError::Decode(err) => format!("decode_error:{err}"),
            ClientError::Encode(err) => format!("encode_error:{err:?}"),
            ClientError::Refused(code) => format!("connack_{code:?}"),
            ClientError::SubscribeRefused(code) => format!("suback_{code:?}"),
            ClientError::Protocol(what) => format!("protocol:{what}"),
        }
    }
}

impl From<std::io::Error> for ClientError {
    fn from(err: std::io::Error) -> Self {
        ClientError::Io(err)
    }
}
impl From<wire::DecodeError> for ClientError {
    fn from(err: wire::DecodeError) -> Self {
        ClientError::Decode(err)
    }
}
impl From<wire::EncodeError> for ClientError {
    fn from(err: wire::EncodeError) -> Self {
        ClientError::Encode(err)
    }
}

/// Single-waiter wakeup flag; cheap enough to have one per client.
#[derive(Default)]
pub struct Notify {
    flag: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    pub fn notify(&self) {
        self.flag.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    pub fn notified(&self) -> Notified<'_> {
        Notified { notify: self }
    }
}

pub struct Notified<'a> {
    notify: &'a Notify,
}

impl Future for Notified<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.flag.replace(false) {
            return Poll::Ready(());
        }
        *self.notify.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

pub enum Tracker {
    Own(RefCell<SeqTracker>),
    Shared(Arc<Mutex<SeqTracker>>),
    None,
}

/// State shared by a client's reader task and its writer loop.
struct ClientState {
    /// Acks and pings waiting for the writer.
    outbox: RefCell<BytesMut>,
    inflight: RefCell<HashSet<u16>>,
    notify: Rc<Notify>,
    /// Set by the reader when the connection ends.
    closed: RefCell<Option<String>>,
    tracker: Tracker,
}

/// What a client is, derived from its group and index.
pub struct ClientSpec {
    pub group: usize,
    pub member: u64,
    pub global_index: u64,
    pub client_id: String,
    pub source: Option<IpAddr>,
    /// Position in the run (all groups, in order): the round-robin broker pick.
    pub position: u64,
}

fn version_of(version: MqttVersion) -> ProtocolVersion {
    match version {
        MqttVersion::V311 => ProtocolVersion::V3_1_1,
        MqttVersion::V5 => ProtocolVersion::V5,
    }
}

fn packet_id(counter: &mut u16) -> NonZeroU16 {
    loop {
        *counter = counter.wrapping_add(1);
        if let Some(id) = NonZeroU16::new(*counter) {
            return id;
        }
    }
}

async fn read_packet(
    reader: &mut ReadHalf<Stream>,
    buf: &mut BytesMut,
    chunk: &mut usize,
    version: ProtocolVersion,
    reads: &mut u64,
) -> Result<Packet, ClientError> {
    loop {
        match wire::check(buf, INBOUND_FRAME_MAX)? {
            Framing::Complete { frame_len } => {
                let frame = buf.split_to(frame_len).freeze();
                return Ok(wire::decode(frame, version)?);
            }
            Framing::Incomplete { needed_at_least } => {
                let filled = buf.len();
                let want = (*chunk).max(needed_at_least.saturating_sub(filled));
                buf.resize(filled + want, 0);
                let read = reader.read(&mut buf[filled..]).await;
                let read = match read {
                    Ok(read) => read,
                    Err(err) => {
                        buf.truncate(filled);
                        return Err(err.into());
                    }
                };
                buf.truncate(filled + read);
                if read == 0 {
                    return Err(ClientError::Closed);
                }
                *reads += 1;
                *chunk = if read == want {
                    (*chunk * 2).min(READ_CHUNK_MAX)
                } else {
                    (*chunk / 2).max(READ_CHUNK_MIN)
                };
            }
        }
    }
}

fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), ClientError> {
    wire::encode(packet, version, out)?;
    Ok(())
}

struct Handshake {
    reader: ReadHalf<Stream>,
    writer: WriteHalf<Stream>,
    buf: BytesMut,
    chunk: usize,
}

/// TCP connect, CONNECT/CONNACK and (for subscribers) SUBSCRIBE/SUBACK. The connect
/// latency is recorded at CONNACK.
async fn handshake(
    ctx: &ThreadCtx,
    spec: &ClientSpec,
    target_index: usize,
    filter: Option<&str>,
    started: Instant,
    first: bool,
) -> Result<Handshake, ClientError> {
    let settings = &ctx.shared.scenario.connection;
    let group = &ctx.shared.scenario.groups[spec.group];
    let version = version_of(settings.mqtt_version);
    let target = ctx.shared.targets[target_index % ctx.shared.targets.len()];
    let tcp = crate::net::start_connect(target, spec.source)?;
    // TLS and WebSocket handshakes (nothing for plain TCP), inside the connect timeout.
    let stream = ctx
        .shared
        .edge
        .open(tcp, target_index, spec.global_index)
        .await?;
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let mut properties = ConnectProperties::default();
    if version == ProtocolVersion::V5 && !settings.clean_session {
        properties.session_expiry_interval = Some(settings.session_expiry_s);
    }
    let connect = Packet::Connect(Box::new(Connect {
        protocol: version,
        clean_start: settings.clean_session,
        keep_alive_secs: settings.keepalive_s,
        client_id: Utf8Bytes::from(spec.client_id.as_str()),
        will: None,
        username: None,
        password: None,
        properties,
    }));
    let mut out = BytesMut::with_capacity(64);
    encode(&connect, version, &mut out)?;
    writer.write_all(&out).await?;
    writer.flush().await?;
    let mut buf = BytesMut::new();
    let mut chunk = READ_CHUNK_MIN;
    let mut reads = 0;
    match read_packet(&mut reader, &mut buf, &mut chunk, version, &mut reads).await? {
        Packet::ConnAck(ConnAck { reason_code, .. }) => {
            if reason_code != ReasonCode::Success {
                return Err(ClientError::Refused(reason_code));
            }
        }
        _ => return Err(ClientError::Protocol("expected connack")),
    }
    let connected_at = Instant::now();
    {
        let mut report = ctx.report.borrow_mut();
        *report
            .connects_per_broker
            .entry(target.to_string())
            .or_default() += 1;
        if first {
            record_us(
                &mut report.connect_latency_us,
                (connected_at - started).as_micros() as u64,
            );
            let offset = connected_at.saturating_duration_since(ctx.shared.run_start);
            report.note_connack(offset.as_nanos() as u64);
        }
    }
    if first {
        LiveCounters::add(&ctx.live().connected, 1);
    }
    if let Some(filter) = filter {
        let qos = QoS::try_from(group.qos).map_err(|_| ClientError::Protocol("bad qos"))?;
        let subscribe = Packet::Subscribe(Subscribe {
            packet_id: NonZeroU16::MIN,
            filters: vec![(
                Utf8Bytes::from(filter),
                SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            )],
            properties: Default::default(),
        });
        out.clear();
        encode(&subscribe, version, &mut out)?;
        writer.write_all(&out).await?;
        writer.flush().await?;
        loop {
            match read_packet(&mut reader, &mut buf, &mut chunk, version, &mut reads).await? {
                Packet::SubAck(SubAck { reason_codes, .. }) => {
                    if let Some(&code) = reason_codes.iter().find(|code| code.code() >= 0x80) {
                        return Err(ClientError::SubscribeRefused(code));
                    }
                    break;
                }
                // Retained messages may arrive before the SUBACK is parsed; nothing else should.
                Packet::Publish(_) => continue,
                _ => return Err(ClientError::Protocol("expected suback")),
            }
        }
    }
    Ok(Handshake {
        reader,
        writer,
        buf,
        chunk,
    })
}

fn on_publish(ctx: &ThreadCtx, state: &ClientState, publish: &Publish) {
    LiveCounters::add(&ctx.live().received, 1);
    let Some(header) = PayloadHeader::decode(&publish.payload) else {
        ctx.report.borrow_mut().unmeasured += 1;
        return;
    };
    let latency_us = realtime_ns().saturating_sub(header.sent_at_ns) / 1000;
    let mut report = ctx.report.borrow_mut();
    record_us(&mut report.e2e_latency_us, latency_us);
    if ctx.shared.track_spread {
        report.note_spread((header.publisher_index, header.sequence), latency_us);
    }
    drop(report);
    match &state.tracker {
        Tracker::Own(tracker) => {
            tracker
                .borrow_mut()
                .observe(header.publisher_index, header.sequence);
        }
        Tracker::Shared(tracker) => {
            if let Ok(mut tracker) = tracker.lock() {
                tracker.observe(header.publisher_index, header.sequence);
            }
        }
        Tracker::None => {}
    }
}

fn queue(state: &ClientState, packet: &Packet, version: ProtocolVersion) {
    // The outbox is bounded by what the broker sends us between two writer turns; acks are
    // tiny and the writer drains the whole outbox each turn.
    let _ = wire::encode(packet, version, &mut state.outbox.borrow_mut());
    state.notify.notify();
}

fn ack(packet_id: NonZeroU16) -> PubAck {
    PubAck {
        packet_id,
        reason_code: ReasonCode::Success,
        properties: Default::default(),
    }
}

async fn reader_loop(
    ctx: Rc<ThreadCtx>,
    state: Rc<ClientState>,
    mut reader: ReadHalf<Stream>,
    mut buf: BytesMut,
    mut chunk: usize,
    version: ProtocolVersion,
) {
    // PUBLISH frames completed by the latest read, recorded when the next read happens.
    let mut reads: u64 = 0;
    let mut reads_counted: u64 = 0;
    let mut publishes_in_read: u64 = 0;
    let record_read = |count: u64| {
        if count > 0 {
            record_count(&mut ctx.report.borrow_mut().publishes_per_read, count);
        }
    };
    let reason = loop {
        let packet = read_packet(&mut reader, &mut buf, &mut chunk, version, &mut reads).await;
        if reads != reads_counted {
            reads_counted = reads;
            record_read(std::mem::take(&mut publishes_in_read));
        }
        let packet = match packet {
            Ok(packet) => packet,
            Err(err) => break err.reason(),
        };
        match packet {
            Packet::Publish(publish) => {
                publishes_in_read += 1;
                on_publish(&ctx, &state, &publish);
                match (publish.qos, publish.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => {
                        queue(&state, &Packet::PubAck(ack(id)), version)
                    }
                    (QoS::ExactlyOnce, Some(id)) => {
                        queue(&state, &Packet::PubRec(ack(id)), version)
                    }
                    _ => {}
                }
            }
            Packet::PubAck(done) | Packet::PubComp(done)
                if state.inflight.borrow_mut().remove(&done.packet_id.get()) =>
            {
                LiveCounters::add(&ctx.live().acked, 1);
                ctx.report.borrow_mut().acked += 1;
                state.notify.notify();
            }
            Packet::PubRec(received) => {
                queue(&state, &Packet::PubRel(ack(received.packet_id)), version)
            }
            Packet::PubRel(released) => {
                queue(&state, &Packet::PubComp(ack(released.packet_id)), version)
            }
            Packet::Disconnect(Disconnect { reason_code, .. }) => {
                break format!("server_disconnect_{reason_code:?}");
            }
            _ => {}
        }
    };
    record_read(publishes_in_read);
    *state.closed.borrow_mut() = Some(reason);
    state.notify.notify();
}

/// Publishing state of a publisher client.
struct Publisher {
    schedule: Schedule,
    topic: Utf8Bytes,
    qos: QoS,
    retain: bool,
    inflight_max: usize,
    payload_size: usize,
    /// Publishes encoded into one write at most (1 = one write per message).
    per_write_max: usize,
    publisher_index: u32,
    sent: u64,
    /// Deliveries each publish should produce: (fixed, per-member per group).
    fanout: Vec<plan::Fanout>,
    fanout_total: u64,
    start: Option<Instant>,
    next_packet_id: u16,
    done: bool,
}

impl Publisher {
    fn due_at(&self, start: Instant) -> Option<Instant> {
        let interval = self.schedule.interval?;
        Some(start + self.schedule.offset + interval.mul_f64(self.sent as f64))
    }

    fn finish(&mut self, ctx: &ThreadCtx) {
        if self.done {
            return;
        }
        self.done = true;
        LiveCounters::add(&ctx.live().publishers_done, 1);
        let mut report = ctx.report.borrow_mut();
        report.sent += self.sent;
        for fanout in &self.fanout {
            if fanout.per_member {
                report.expected_per_member[fanout.group] += self.sent * fanout.deliveries;
            } else {
                report.expected_fixed += self.sent * fanout.deliveries;
            }
        }
    }

    /// Encodes one PUBLISH with the measurement header into `out`.
    fn encode_one(
        &mut self,
        ctx: &ThreadCtx,
        state: &ClientState,
        version: ProtocolVersion,
        out: &mut BytesMut,
    ) -> Result<(), ClientError> {
        let packet_id = if self.qos == QoS::AtMostOnce {
            None
        } else {
            let mut inflight = state.inflight.borrow_mut();
            let mut id = packet_id(&mut self.next_packet_id);
            while inflight.contains(&id.get()) {
                id = packet_id(&mut self.next_packet_id);
            }
            inflight.insert(id.get());
            Some(id)
        };
        let payload = ctx.zeros.slice(..self.payload_size);
        let publish = Publish {
            dup: false,
            qos: self.qos,
            retain: self.retain,
            topic: self.topic.clone(),
            packet_id,
            properties: Default::default(),
            payload,
        };
        wire::encode_publish_header(&publish, version, out)?;
        if self.payload_size >= HEADER_LEN {
            let header = PayloadHeader {
                publisher_index: self.publisher_index,
                sequence: self.sent,
                sent_at_ns: realtime_ns(),
            };
            out.extend_from_slice(&header.encode());
            out.extend_from_slice(&ctx.zeros[HEADER_LEN..self.payload_size]);
        } else {
            out.extend_from_slice(&ctx.zeros[..self.payload_size]);
        }
        self.sent += 1;
        LiveCounters::add(&ctx.live().sent, 1);
        if self.qos != QoS::AtMostOnce {
            LiveCounters::add(&ctx.live().sent_needing_ack, 1);
        }
        LiveCounters::add(&ctx.live().expected, self.fanout_total);
        Ok(())
    }
}

/// How one connection of a client ended.
enum Ending {
    /// The run is stopping (or the broker closed while it did): close politely.
    Finished,
    /// Lost before the run stopped, with the reason for the failure table.
    Lost(String),
}

/// TCP connect plus MQTT handshake to broker `target_index`, bounded by the connect timeout.
/// `first` = the client's first connection (its latency is a connection figure; a
/// reconnect's is measured from the loss instead).
async fn connect(
    ctx: &ThreadCtx,
    spec: &ClientSpec,
    target_index: usize,
    filter: Option<&str>,
    first: bool,
) -> Result<Handshake, ClientError> {
    let settings = &ctx.shared.scenario.connection;
    let timeout = Duration::from_millis(settings.connect_timeout_ms.max(1));
    let started = Instant::now();
    futures_lite::future::or(
        handshake(ctx, spec, target_index, filter, started, first),
        async {
            glommio::timer::sleep(timeout).await;
            Err(ClientError::Timeout)
        },
    )
    .await
}

/// Sleeps for `delay` unless the run stops first (phase changes wake `notify`). False when the
/// run is stopping.
async fn sleep_unless_stopping(ctx: &ThreadCtx, notify: &Notify, delay: Duration) -> bool {
    let deadline = Instant::now() + delay;
    loop {
        if ctx.phase.get() >= Phase::Stopping {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        futures_lite::future::or(notify.notified(), async {
            glommio::timer::sleep(deadline - now).await;
        })
        .await;
    }
}

/// Dials again after a loss, with backoff, on the broker the pick policy names for each
/// attempt, until connected or the run stops (the run's end bounds the retries).
async fn reconnect(
    ctx: &ThreadCtx,
    state: &ClientState,
    spec: &ClientSpec,
    filter: Option<&str>,
    dialled: &mut u64,
) -> Option<Handshake> {
    let settings = &ctx.shared.scenario.connection;
    let backoff = settings.reconnect_backoff();
    let mut failures: u32 = 0;
    loop {
        let seed = mix64(spec.global_index) ^ *dialled;
        if !sleep_unless_stopping(ctx, &state.notify, backoff.delay(failures, seed)).await {
            return None;
        }
        let permit = ctx.connect_slots.acquire_permit(1).await;
        if ctx.phase.get() >= Phase::Stopping {
            return None;
        }
        let index = pick_broker(
            settings.broker_pick,
            spec.position,
            *dialled,
            ctx.shared.targets.len(),
        );
        *dialled += 1;
        let attempt = connect(ctx, spec, index, filter, false).await;
        drop(permit);
        match attempt {
            Ok(handshake) => return Some(handshake),
            Err(err) => {
                *ctx.report
                    .borrow_mut()
                    .reconnect_failures
                    .entry(err.reason())
                    .or_default() += 1;
                failures = failures.saturating_add(1);
            }
        }
    }
}

impl ClientState {
    /// Forgets what belonged to a lost connection: queued acks and the inflight window (its
    /// acks can never come; they are counted as abandoned so the drain does not wait for them).
    fn forget_connection(&self, ctx: &ThreadCtx) {
        self.outbox.borrow_mut().clear();
        *self.closed.borrow_mut() = None;
        let abandoned = {
            let mut inflight = self.inflight.borrow_mut();
            let count = inflight.len() as u64;
            inflight.clear();
            count
        };
        if abandoned > 0 {
            ctx.report.borrow_mut().inflight_abandoned += abandoned;
            LiveCounters::add(&ctx.live().abandoned, abandoned);
        }
    }
}

/// Everything one client does, start to finish. Never panics on broker behaviour; failures
/// are counted by reason.
pub async fn run_client(ctx: Rc<ThreadCtx>, spec: ClientSpec, connect_at: Duration) {
    let shared = ctx.shared.clone();
    let group = &shared.scenario.groups[spec.group];
    let settings = &shared.scenario.connection;
    let is_publisher = group.role == Role::Pub;
    let fail = |ctx: &ThreadCtx, reason: String| {
        *ctx.report
            .borrow_mut()
            .connect_failures
            .entry(reason)
            .or_default() += 1;
        LiveCounters::add(&ctx.live().connect_failed, 1);
        if is_publisher {
            LiveCounters::add(&ctx.live().publishers_done, 1);
        }
        LiveCounters::add(&ctx.live().clients_done, 1);
    };

    let wait = (shared.run_start + connect_at).saturating_duration_since(Instant::now());
    if !wait.is_zero() {
        glommio::timer::sleep(wait).await;
    }
    let permit = ctx.connect_slots.acquire_permit(1).await;
    if ctx.phase.get() >= Phase::Stopping {
        drop(permit);
        fail(&ctx, "not_started".into());
        return;
    }
    let filter = group.filter.as_deref().map(|template| {
        plan::expand_template(template, spec.global_index, &spec.client_id, spec.member)
    });
    let first_target = pick_broker(settings.broker_pick, spec.position, 0, shared.targets.len());
    let attempt = connect(&ctx, &spec, first_target, filter.as_deref(), true).await;
    drop(permit);
    let mut connection = match attempt {
        Ok(handshake) => handshake,
        Err(err) => {
            if matches!(err, ClientError::SubscribeRefused(_)) {
                ctx.report.borrow_mut().subscribe_failures += 1;
            }
            fail(&ctx, err.reason());
            return;
        }
    };
    // Connections dialled so far (the broker pick's attempt number).
    let mut dialled: u64 = 1;
    LiveCounters::add(&ctx.live().ready, 1);
    if group.role == Role::Sub {
        ctx.report.borrow_mut().ready_per_group[spec.group] += 1;
    }

    let version = version_of(settings.mqtt_version);
    let tracker = match filter.as_deref() {
        Some(filter) if plan::split_shared(filter).1 => match shared.shared_trackers.get(filter) {
            Some(tracker) => Tracker::Shared(tracker.clone()),
            None => Tracker::None,
        },
        Some(_) => Tracker::Own(RefCell::new(SeqTracker::new())),
        None => Tracker::None,
    };
    let notify = Rc::new(Notify::default());
    ctx.register(&notify);
    let state = Rc::new(ClientState {
        outbox: RefCell::new(BytesMut::new()),
        inflight: RefCell::new(HashSet::new()),
        notify: notify.clone(),
        closed: RefCell::new(None),
        tracker,
    });
    let mut publisher = is_publisher.then(|| new_publisher(&ctx, &spec));

    loop {
        let Handshake {
            reader,
            mut writer,
            buf,
            chunk,
        } = connection;
        let reader_task = glommio::spawn_local(reader_loop(
            ctx.clone(),
            state.clone(),
            reader,
            buf,
            chunk,
            version,
        ));
        match drive(&ctx, &state, &mut writer, publisher.as_mut(), version).await {
            Ending::Finished => {
                close_politely(&state, &mut writer, version).await;
                // Dropping the task cancels the reader if the broker never closed its side.
                drop(reader_task);
                break;
            }
            Ending::Lost(reason) => {
                drop(reader_task);
                drop(writer);
                *ctx.report
                    .borrow_mut()
                    .disconnects
                    .entry(reason)
                    .or_default() += 1;
                LiveCounters::add(&ctx.live().dropped, 1);
                state.forget_connection(&ctx);
                if !settings.reconnect {
                    break;
                }
                let lost_at = Instant::now();
                let Some(again) =
                    reconnect(&ctx, &state, &spec, filter.as_deref(), &mut dialled).await
                else {
                    break;
                };
                let mut report = ctx.report.borrow_mut();
                record_us(
                    &mut report.reconnect_us,
                    lost_at.elapsed().as_micros() as u64,
                );
                report.reconnects += 1;
                LiveCounters::add(&ctx.live().reconnects, 1);
                connection = again;
            }
        }
    }

    if let Some(publisher) = publisher.as_mut() {
        publisher.finish(&ctx);
    }
    if let Tracker::Own(tracker) = &state.tracker {
        ctx.report.borrow_mut().seq.add(&tracker.borrow().counts());
    }
    LiveCounters::add(&ctx.live().clients_done, 1);
}

fn new_publisher(ctx: &ThreadCtx, spec: &ClientSpec) -> Publisher {
    let shared = &ctx.shared;
    let group = &shared.scenario.groups[spec.group];
    let topic = plan::expand_template(
        group.topic.as_deref().unwrap_or_default(),
        spec.global_index,
        &spec.client_id,
        spec.member,
    );
    let fanout = shared.matcher.fanout(&topic);
    let fanout_total = fanout.iter().map(|f| f.deliveries).sum();
    Publisher {
        schedule: group.schedule(spec.member),
        topic: Utf8Bytes::from(topic),
        qos: QoS::try_from(group.qos).unwrap_or(QoS::AtMostOnce),
        retain: group.retain,
        inflight_max: usize::from(group.inflight),
        payload_size: group.payload_size,
        per_write_max: group.publishes_per_write() as usize,
        publisher_index: spec.global_index as u32,
        sent: 0,
        fanout,
        fanout_total,
        start: None,
        next_packet_id: 0,
        done: false,
    }
}

/// DISCONNECT, close our side, and give the reader a moment to see the broker close, so the
/// socket ends cleanly.
async fn close_politely(
    state: &ClientState,
    writer: &mut WriteHalf<Stream>,
    version: ProtocolVersion,
) {
    let mut out = BytesMut::new();
    if wire::encode(
        &Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::Success,
            properties: Default::default(),
        }),
        version,
        &mut out,
    )
    .is_ok()
    {
        let _ = writer.write_all(&out).await;
    }
    // close() flushes what the TLS/WebSocket layers still hold, then ends our side.
    let _ = writer.close().await;
    let _ = futures_lite::future::or(
        async {
            while state.closed.borrow().is_none() {
                state.notify.notified().await;
            }
        },
        glommio::timer::sleep(CLOSE_WAIT),
    )
    .await;
}

impl Publisher {
    /// Encodes what is due now into `out` (at most `per_write_max` publishes); returns when the
    /// next one is due, if that is what stopped it.
    fn encode_due(
        &mut self,
        ctx: &ThreadCtx,
        state: &ClientState,
        version: ProtocolVersion,
        now: Instant,
        out: &mut BytesMut,
    ) -> Result<Option<Instant>, ClientError> {
        let start = *self.start.get_or_insert(ctx.publish_start());
        let mut wake_at = None;
        let mut batch = 0;
        while batch < self.per_write_max
            && out.len() < WRITE_BATCH_BYTES_MAX
            && self.sent < self.schedule.limit
        {
            if self.qos != QoS::AtMostOnce && state.inflight.borrow().len() >= self.inflight_max {
                break;
            }
            if let Some(due) = self.due_at(start) {
                if due > now {
                    wake_at = Some(due);
                    break;
                }
                record_us(
                    &mut ctx.report.borrow_mut().send_lag_us,
                    (now - due).as_micros() as u64,
                );
            } else if now < start {
                wake_at = Some(start);
                break;
            }
            self.encode_one(ctx, state, version, out)?;
            batch += 1;
        }
        if self.sent >= self.schedule.limit {
            self.finish(ctx);
        }
        Ok(wake_at)
    }
}

/// The writer side of one connection: publishes on schedule, acks the reader queued, pings.
/// Returns when the run stops or the connection is lost.
async fn drive(
    ctx: &ThreadCtx,
    state: &ClientState,
    writer: &mut WriteHalf<Stream>,
    mut publisher: Option<&mut Publisher>,
    version: ProtocolVersion,
) -> Ending {
    let keepalive = Duration::from_secs(u64::from(ctx.shared.scenario.connection.keepalive_s));
    let mut last_write = Instant::now();
    let mut out = BytesMut::new();
    let mut writes_since_yield = 0u32;
    loop {
        let phase = ctx.phase.get();
        if phase >= Phase::Stopping {
            return Ending::Finished;
        }
        if let Some(reason) = state.closed.borrow().clone() {
            return Ending::Lost(reason);
        }
        let now = Instant::now();
        let mut wake_at: Option<Instant> = None;
        if let Some(publisher) = publisher.as_deref_mut().filter(|p| !p.done) {
            if phase >= Phase::Draining {
                publisher.finish(ctx);
            } else if phase == Phase::Publishing {
                match publisher.encode_due(ctx, state, version, now, &mut out) {
                    Ok(at) => wake_at = at,
                    Err(err) => return Ending::Lost(err.reason()),
                }
            }
        }
        {
            let mut outbox = state.outbox.borrow_mut();
            if !outbox.is_empty() {
                out.extend_from_slice(&outbox);
                outbox.clear();
            }
        }
        if out.is_empty() && !keepalive.is_zero() && now >= last_write + keepalive.mul_f64(0.75) {
            let _ = wire::encode(&Packet::PingReq, version, &mut out);
        }
        if !out.is_empty() {
            // The flush pushes out what a TLS or WebSocket layer kept back (a no-op on TCP).
            let written = match writer.write_all(&out).await {
                Ok(()) => writer.flush().await,
                Err(err) => Err(err),
            };
            if let Err(err) = written {
                return Ending::Lost(crate::net::io_reason(&err));
            }
            out.clear();
            if out.capacity() > WRITE_BATCH_BYTES_MAX * 2 {
                out = BytesMut::new();
            }
            last_write = Instant::now();
            writes_since_yield += 1;
            if writes_since_yield >= WRITES_BEFORE_YIELD {
                writes_since_yield = 0;
                futures_lite::future::yield_now().await;
            }
            continue;
        }
        writes_since_yield = 0;
        if !keepalive.is_zero() {
            let ping_at = last_write + keepalive.mul_f64(0.75);
            wake_at = Some(wake_at.map_or(ping_at, |at| at.min(ping_at)));
        }
        match wake_at {
            Some(at) => {
                let sleep_for = at.saturating_duration_since(Instant::now());
                futures_lite::future::or(state.notify.notified(), async {
                    glommio::timer::sleep(sleep_for).await;
                })
                .await
            }
            None => state.notify.notified().await,
        }
    }
}

/// Zero bytes shared by every payload of an executor (the header is written over the start).
pub fn zero_payload(size: usize) -> Bytes {
    Bytes::from(vec![0u8; size.max(HEADER_LEN)])
}
