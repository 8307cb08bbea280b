//! ringmq-tests: black-box tests of the `ringmq` binary through independent clients (rumqttc,
//! mosquitto_pub/sub) and raw-byte transcripts. This library holds only the harness: starting a
//! broker on a free port ([`BrokerProcess`]), a raw MQTT socket that speaks through the `wire`
//! codec ([`RawClient`]) and wrappers around the Mosquitto command-line clients
//! ([`mosquitto`]) and the Paho auth script ([`paho`]), and network namespaces for partition
//! tests ([`netns`]). It must not link the broker's internals
//! (`shard`, `broker`): everything is observed over TCP, as a client would.
//!
//! Every wait is bounded: [`RECV_TIMEOUT`] for one packet, [`START_TIMEOUT`] for the broker to
//! listen, [`STOP_GRACE`] before SIGKILL.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
pub use wire::{
    AckProperties, Auth, ConnAck, ConnAckProperties, Connect, ConnectProperties, Disconnect,
    DisconnectProperties, LastWill, Packet, ProtocolVersion, PubAck, Publish, PublishProperties,
    QoS, ReasonCode, RetainHandling, SubAck, Subscribe, SubscribeProperties, SubscriptionOptions,
    UnsubAck, Unsubscribe, Utf8Bytes, WillProperties,
};

/// How long the broker has to print its `listening` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// SIGTERM to SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// Default wait for one packet (or for a close).
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a periodically exported metric to reach a value.
pub const METRIC_WAIT: Duration = Duration::from_secs(15);
/// Largest frame the raw client accepts from the broker.
const FRAME_MAX_BYTES: u32 = 64 * 1024 * 1024;

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A name unique within this test process (and across processes via the pid), for client ids,
/// topics and temp files.
pub fn unique(prefix: &str) -> String {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Path of the broker binary: `$RINGMQ_BIN`, else `<workspace>/target/debug/ringmq`.
pub fn broker_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("RINGMQ_BIN") {
        return PathBuf::from(path);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits inside the workspace")
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    target.join("debug").join("ringmq")
}

/// Path of the load generator: `$RINGMQ_LOADGEN_BIN`, else next to the broker binary
/// (`cargo build -p ringmq-loadgen` puts it there).
pub fn loadgen_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("RINGMQ_LOADGEN_BIN") {
        return PathBuf::from(path);
    }
    broker_bin().with_file_name("ringmq-loadgen")
}

/// A running `ringmq` process on a free loopback port. Dropping it stops the broker (SIGTERM,
/// SIGKILL after [`STOP_GRACE`]); if the broker had died on its own during the test, the drop
/// panics with the tail of its log, so a crash never goes unnoticed.
pub struct BrokerProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub port: u16,
    /// `[[listener]]` entries as the broker printed them (`listener KIND ADDR`), in order.
    pub listeners: Vec<(String, SocketAddr)>,
    log_path: PathBuf,
    config_path: Option<PathBuf>,
}

impl BrokerProcess {
    /// Starts `ringmq --listen 127.0.0.1:0 --shards 2 --metrics-listen 127.0.0.1:0` plus `extra`
    /// (later flags win, so `extra` may override `--shards`).
    pub fn start(extra: &[&str]) -> BrokerProcess {
        Self::spawn(extra, None)
    }

    /// Like [`BrokerProcess::start`] with `config` (TOML) written to a temp file and passed as
    /// `--config`.
    pub fn start_with_config(config: &str, extra: &[&str]) -> BrokerProcess {
        let path = std::env::temp_dir().join(format!("{}.toml", unique("ringmq-test-config")));
        std::fs::write(&path, config).expect("write temp config");
        Self::spawn(extra, Some(path))
    }

    /// Like [`BrokerProcess::start_with_config`] with `RUST_LOG` set to `log_filter` (e.g.
    /// `info,ringmq_shard::edge=debug`), for tests that read a debug line from the log.
    pub fn start_with_config_logging(
        config: &str,
        extra: &[&str],
        log_filter: &str,
    ) -> BrokerProcess {
        let path = std::env::temp_dir().join(format!("{}.toml", unique("ringmq-test-config")));
        std::fs::write(&path, config).expect("write temp config");
        Self::spawn_with(extra, Some(path), Some(log_filter), &[])
    }

    /// Like [`BrokerProcess::start_with_config`], run through `prefix` (e.g. `ip netns exec NS`,
    /// which execs the broker, so the child's pid is the broker's and kill/stop reach it).
    pub fn start_with_config_prefixed(
        config: &str,
        extra: &[&str],
        prefix: &[String],
    ) -> BrokerProcess {
        let path = std::env::temp_dir().join(format!("{}.toml", unique("ringmq-test-config")));
        std::fs::write(&path, config).expect("write temp config");
        Self::spawn_with(extra, Some(path), None, prefix)
    }

    fn spawn(extra: &[&str], config_path: Option<PathBuf>) -> BrokerProcess {
        Self::spawn_with(extra, config_path, None, &[])
    }

    fn spawn_with(
        extra: &[&str],
        config_path: Option<PathBuf>,
        log_filter: Option<&str>,
        prefix: &[String],
    ) -> BrokerProcess {
        let bin = broker_bin();
        assert!(
            bin.exists(),
            "broker binary {} is missing: run `cargo build -p ringmq-broker` first (or set RINGMQ_BIN)",
            bin.display()
        );
        let log_path = std::env::temp_dir().join(format!("{}.log", unique("ringmq-test-broker")));
        let log = std::fs::File::create(&log_path).expect("create broker log file");
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&bin);
                command
            }
            None => Command::new(&bin),
        };
        if let Some(path) = &config_path {
            command.arg("--config").arg(path);
        }
        command
            .args(["--listen", "127.0.0.1:0", "--shards", "2"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if let Some(filter) = log_filter {
            command.env("RUST_LOG", filter);
        } else if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        let mut child = command.spawn().expect("spawn ringmq");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keeps draining stdout for the broker's whole life.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let mut listeners = Vec::new();
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("listener ") {
                        let mut parts = rest.split_whitespace();
                        if let (Some(kind), Some(Ok(a))) =
                            (parts.next(), parts.next().map(str::parse::<SocketAddr>))
                        {
                            listeners.push((kind.to_owned(), a));
                        }
                    }
                    if let Some(addr) = line.strip_prefix("listening ") {
                        break addr
                            .trim()
                            .parse::<SocketAddr>()
                            .expect("listening address");
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "broker did not print `listening ADDR` within {START_TIMEOUT:?}; log:\n{}",
                        read_tail(&log_path)
                    );
                }
            }
        };
        BrokerProcess {
            child: Some(child),
            addr,
            port: addr.port(),
            listeners,
            log_path,
            config_path,
        }
    }

    /// The `--config` file [`BrokerProcess::start_with_config`] wrote (to rewrite it before a
    /// reload).
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// Panics (with the log tail) if the broker process has exited.
    pub fn assert_alive(&mut self) {
        let child = self.child.as_mut().expect("broker process");
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "broker exited during the test ({status}); log:\n{}",
                read_tail(&self.log_path)
            );
        }
    }

    /// The address of the `n`th `[[listener]]` of `kind` (0-based), as the broker bound it.
    pub fn listener(&self, kind: &str, n: usize) -> SocketAddr {
        self.listeners
            .iter()
            .filter(|(k, _)| k == kind)
            .nth(n)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no {kind} listener #{n} in {:?}", self.listeners))
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the broker.
    pub fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("broker process");
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// The whole log (stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last lines of the broker's log (stderr).
    pub fn log_tail(&self) -> String {
        read_tail(&self.log_path)
    }

    /// Graceful stop: SIGTERM, wait up to [`STOP_GRACE`], then SIGKILL. Returns the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.assert_alive();
        self.terminate().expect("broker status")
    }

    /// SIGKILL, as a crash would: no DISCONNECT, no will, no goodbye to cluster peers.
    pub fn kill_hard(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let died = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        let _ = self.terminate();
        if let Some(path) = &self.config_path {
            let _ = std::fs::remove_file(path);
        }
        let tail = read_tail(&self.log_path);
        let _ = std::fs::remove_file(&self.log_path);
        if let Some(status) = died {
            if !std::thread::panicking() {
                panic!("broker exited during the test ({status}); log:\n{tail}");
            }
        }
    }
}

fn read_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(40);
    lines[start..].join("\n")
}

// ----- raw client ---------------------------------------------------------------------------

/// What one bounded read produced.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // test helper: one value per read, never stored in bulk
pub enum Recv {
    Packet(Packet),
    Closed,
    Timeout,
    /// The broker sent bytes the codec rejects: always a broker bug.
    Garbage(String),
}

/// A TCP connection that sends and parses MQTT packets with the `wire` codec, for transcripts
/// the real clients cannot produce (malformed packets, protocol violations, exact reason codes).
pub struct RawClient {
    stream: TcpStream,
    inbox: BytesMut,
    /// PUBLISHes that arrived ahead of an awaited SUBACK (allowed by the spec, 3.8.4); handed
    /// out first by the next reads.
    stash: std::collections::VecDeque<Packet>,
    /// The version packets are decoded with (set by [`RawClient::handshake`]).
    pub version: ProtocolVersion,
}

impl RawClient {
    /// Opens a TCP connection; nothing is sent yet.
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = tokio::time::timeout(RECV_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("tcp connect timed out")
            .expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        RawClient {
            stream,
            inbox: BytesMut::new(),
            stash: std::collections::VecDeque::new(),
            version: ProtocolVersion::V3_1_1,
        }
    }

    /// Connects, sends `connect` and returns the client with its CONNACK. Panics if anything
    /// else (or nothing) comes back.
    pub async fn handshake(addr: SocketAddr, connect: Connect) -> (RawClient, ConnAck) {
        let mut client = RawClient::connect(addr).await;
        client.version = connect.protocol;
        let version = connect.protocol;
        client
            .send(&Packet::Connect(Box::new(connect)), version)
            .await;
        match client.recv_within(RECV_TIMEOUT).await {
            Recv::Packet(Packet::ConnAck(ack)) => (client, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// [`RawClient::handshake`] that also asserts the CONNACK is a success.
    pub async fn connected(addr: SocketAddr, connect: Connect) -> (RawClient, ConnAck) {
        let (client, ack) = Self::handshake(addr, connect).await;
        assert_eq!(ack.reason_code, ReasonCode::Success, "CONNACK {ack:?}");
        (client, ack)
    }

    pub async fn send(&mut self, packet: &Packet, version: ProtocolVersion) {
        let mut out = BytesMut::new();
        wire::encode(packet, version, &mut out).expect("encode test packet");
        self.send_bytes(&out).await;
    }

    /// Sends `packet` in this client's version.
    pub async fn send_packet(&mut self, packet: &Packet) {
        let version = self.version;
        self.send(packet, version).await;
    }

    /// Writes raw bytes; a broker that already closed may make this fail, which is ignored (the
    /// next read tells).
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        let _ = tokio::time::timeout(RECV_TIMEOUT, self.stream.write_all(bytes)).await;
    }

    /// The next packet within `wait`, or why there is none.
    pub async fn recv_within(&mut self, wait: Duration) -> Recv {
        if let Some(packet) = self.stash.pop_front() {
            return Recv::Packet(packet);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match wire::check(&self.inbox, FRAME_MAX_BYTES) {
                Ok(wire::Framing::Complete { frame_len }) => {
                    let frame = self.inbox.split_to(frame_len).freeze();
                    return match wire::decode(frame.clone(), self.version) {
                        Ok(packet) => Recv::Packet(packet),
                        Err(err) => Recv::Garbage(format!("{err} in {:02x?}", &frame[..])),
                    };
                }
                Ok(wire::Framing::Incomplete { .. }) => {}
                Err(err) => return Recv::Garbage(err.to_string()),
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Recv::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return Recv::Closed,
                Ok(Ok(n)) => self.inbox.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next packet within [`RECV_TIMEOUT`]; None on timeout or close.
    pub async fn recv(&mut self) -> Option<Packet> {
        match self.recv_within(RECV_TIMEOUT).await {
            Recv::Packet(p) => Some(p),
            Recv::Garbage(g) => panic!("broker sent an undecodable frame: {g}"),
            _ => None,
        }
    }

    /// Asserts the next packet equals `expected`.
    pub async fn expect(&mut self, expected: Packet) {
        match self.recv_within(RECV_TIMEOUT).await {
            Recv::Packet(p) => assert_eq!(p, expected),
            other => panic!("expected {expected:?}, got {other:?}"),
        }
    }

    /// The next packet, which must arrive within [`RECV_TIMEOUT`].
    pub async fn next(&mut self) -> Packet {
        match self.recv_within(RECV_TIMEOUT).await {
            Recv::Packet(p) => p,
            other => panic!("expected a packet, got {other:?}"),
        }
    }

    /// The next PUBLISH (panics on anything else).
    pub async fn next_publish(&mut self) -> Publish {
        match self.next().await {
            Packet::Publish(p) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Asserts nothing arrives for `wait` (the connection stays open and silent).
    pub async fn expect_silence(&mut self, wait: Duration) {
        match self.recv_within(wait).await {
            Recv::Timeout => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    /// Asserts the broker closes the connection within `wait`; returns the packets it sent
    /// before closing (e.g. a v5 DISCONNECT).
    pub async fn expect_closed_within(&mut self, wait: Duration) -> Vec<Packet> {
        let deadline = Instant::now() + wait;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_within(left).await {
                Recv::Closed => return before,
                Recv::Packet(p) => before.push(p),
                // After a protocol error the broker may close mid-stream: that is a close.
                Recv::Garbage(_) => return before,
                Recv::Timeout => panic!("connection not closed within {wait:?}; got {before:?}"),
            }
        }
    }

    /// Asserts the broker closes the connection within [`RECV_TIMEOUT`].
    pub async fn expect_closed(&mut self) -> Vec<Packet> {
        self.expect_closed_within(RECV_TIMEOUT).await
    }

    /// v5: asserts a DISCONNECT with `code` and then the close.
    pub async fn expect_disconnect(&mut self, code: ReasonCode) {
        let before = self.expect_closed().await;
        let reasons: Vec<ReasonCode> = before
            .iter()
            .filter_map(|p| match p {
                Packet::Disconnect(d) => Some(d.reason_code),
                _ => None,
            })
            .collect();
        assert_eq!(
            reasons,
            vec![code],
            "expected DISCONNECT {code:?} then close, got {before:?}"
        );
    }

    /// SUBSCRIBE one filter and return the SUBACK's reason codes.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<ReasonCode> {
        self.subscribe_with(vec![(filter, opts(qos))], None).await
    }

    /// SUBSCRIBE several filters (with options and a v5 subscription identifier).
    pub async fn subscribe_with(
        &mut self,
        filters: Vec<(&str, SubscriptionOptions)>,
        id: Option<u32>,
    ) -> Vec<ReasonCode> {
        let packet_id = pid(0xABC);
        let subscribe = Subscribe {
            packet_id,
            filters: filters
                .into_iter()
                .map(|(f, o)| (Utf8Bytes::from(f), o))
                .collect(),
            properties: SubscribeProperties {
                subscription_identifier: id,
                user_properties: Vec::new(),
            },
        };
        self.send_packet(&Packet::Subscribe(subscribe)).await;
        let mut early = std::collections::VecDeque::new();
        loop {
            match self.next().await {
                Packet::SubAck(ack) => {
                    assert_eq!(ack.packet_id, packet_id);
                    early.extend(self.stash.drain(..));
                    self.stash = early;
                    return ack.reason_codes;
                }
                // "The Server is permitted to start sending PUBLISH packets matching the
                // Subscription before the Server sends the SUBACK" (3.8.4): keep them for later.
                Packet::Publish(p) => early.push_back(Packet::Publish(p)),
                other => panic!("expected SUBACK, got {other:?}"),
            }
        }
    }

    /// PUBLISH at `qos` (packet id 1 for QoS>0) and complete the handshake: QoS 1 waits for
    /// PUBACK, QoS 2 for PUBREC, sends PUBREL and waits for PUBCOMP. Returns the ack's code.
    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, retain: bool) {
        let publish = publish(topic, payload, qos, retain);
        self.publish_packet(publish).await;
    }

    /// Sends `publish` and completes its QoS handshake; returns the PUBACK/PUBREC reason code.
    pub async fn publish_packet(&mut self, publish: Publish) -> ReasonCode {
        let qos = publish.qos;
        let id = publish.packet_id;
        self.send_packet(&Packet::Publish(publish)).await;
        match (qos, id) {
            (QoS::AtLeastOnce, Some(id)) => match self.next().await {
                Packet::PubAck(ack) if ack.packet_id == id => ack.reason_code,
                other => panic!("expected PUBACK {id}, got {other:?}"),
            },
            (QoS::ExactlyOnce, Some(id)) => {
                let code = match self.next().await {
                    Packet::PubRec(ack) if ack.packet_id == id => ack.reason_code,
                    other => panic!("expected PUBREC {id}, got {other:?}"),
                };
                self.send_packet(&Packet::PubRel(PubAck::new(id))).await;
                match self.next().await {
                    Packet::PubComp(ack) if ack.packet_id == id => {}
                    other => panic!("expected PUBCOMP {id}, got {other:?}"),
                }
                code
            }
            _ => ReasonCode::Success,
        }
    }

    /// A PINGREQ/PINGRESP round trip (skipping any PUBLISH that arrives meanwhile, which is
    /// returned count of).
    pub async fn ping(&mut self) -> usize {
        self.send_packet(&Packet::PingReq).await;
        let mut skipped = 0;
        loop {
            match self.next().await {
                Packet::PingResp => return skipped,
                Packet::Publish(_) => skipped += 1,
                other => panic!("expected PINGRESP, got {other:?}"),
            }
        }
    }

    /// Sends DISCONNECT (normal) and waits for the close.
    pub async fn disconnect(mut self) {
        self.send_packet(&Packet::Disconnect(Disconnect::default()))
            .await;
        let _ = self.recv_within(RECV_TIMEOUT).await;
    }

    /// Acknowledges a received QoS 1/2 PUBLISH completely (PUBACK, or PUBREC→PUBREL→PUBCOMP).
    pub async fn ack(&mut self, publish: &Publish) {
        let Some(id) = publish.packet_id else { return };
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send_packet(&Packet::PubAck(PubAck::new(id))).await,
            QoS::ExactlyOnce => {
                self.send_packet(&Packet::PubRec(PubAck::new(id))).await;
                match self.next().await {
                    Packet::PubRel(ack) if ack.packet_id == id => {}
                    other => panic!("expected PUBREL {id}, got {other:?}"),
                }
                self.send_packet(&Packet::PubComp(PubAck::new(id))).await;
            }
        }
    }
}

// ----- packet builders ----------------------------------------------------------------------

/// A packet identifier (panics on 0).
pub fn pid(id: u16) -> NonZeroU16 {
    NonZeroU16::new(id).expect("non-zero packet id")
}

/// A CONNECT with no will, credentials or properties.
pub fn connect(version: ProtocolVersion, client_id: &str, clean: bool, keepalive: u16) -> Connect {
    Connect {
        protocol: version,
        clean_start: clean,
        keep_alive_secs: keepalive,
        client_id: Utf8Bytes::from(client_id),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

/// 3.1.1 clean-session CONNECT, keepalive 60.
pub fn connect_v4(client_id: &str) -> Connect {
    connect(ProtocolVersion::V3_1_1, client_id, true, 60)
}

/// 5.0 clean-start CONNECT, keepalive 60.
pub fn connect_v5(client_id: &str) -> Connect {
    connect(ProtocolVersion::V5, client_id, true, 60)
}

/// A will message.
pub fn will(topic: &str, payload: &[u8], qos: QoS, retain: bool) -> LastWill {
    LastWill {
        topic: Utf8Bytes::from(topic),
        payload: Bytes::copy_from_slice(payload),
        qos,
        retain,
        properties: WillProperties::default(),
    }
}

/// A PUBLISH (packet id 1 when QoS > 0).
pub fn publish(topic: &str, payload: &[u8], qos: QoS, retain: bool) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic: Utf8Bytes::from(topic),
        packet_id: (qos != QoS::AtMostOnce).then(|| pid(1)),
        properties: PublishProperties::default(),
        payload: Bytes::copy_from_slice(payload),
    }
}

/// Subscription options with only a QoS.
pub fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    }
}

/// Runs `future` with a hard bound, panicking with `what` if it does not finish.
pub async fn bounded<T>(
    wait: Duration,
    what: &str,
    future: impl std::future::Future<Output = T>,
) -> T {
    tokio::time::timeout(wait, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {wait:?}"))
}

// ----- certificates ------------------------------------------------------------------------

/// Test certificates made with the `openssl` command line in a temp directory (removed on
/// drop): a CA, a server certificate for 127.0.0.1/localhost, client certificates signed by
/// the CA, by another CA, and expired ones.
pub mod certs {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// A directory of PEM files; [`Pki::path`] names one.
    pub struct Pki {
        pub dir: PathBuf,
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    impl Pki {
        /// `ca.pem`/`ca.key`, `server.pem`/`server.key` (SAN 127.0.0.1, localhost) and
        /// `other-ca.pem`/`other-ca.key` (a CA the broker does not trust).
        pub fn new() -> Pki {
            let dir = std::env::temp_dir().join(super::unique("ringmq-pki"));
            std::fs::create_dir_all(&dir).expect("pki dir");
            let pki = Pki { dir };
            pki.make_ca("ca");
            pki.make_ca("other-ca");
            pki.issue(
                "ca",
                "server",
                "/CN=localhost",
                "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
                30,
            );
            pki
        }

        pub fn path(&self, name: &str) -> String {
            self.dir.join(name).display().to_string()
        }

        fn make_ca(&self, name: &str) {
            openssl(
                &self.dir,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.pem"),
                    "-days",
                    "30",
                    "-subj",
                    &format!("/CN={name}"),
                ],
            );
        }

        /// Issues `{name}.pem`/`{name}.key` signed by `ca`, with `subject`, the extension
        /// lines `ext` and `days` of validity (negative: already expired).
        pub fn issue(&self, ca: &str, name: &str, subject: &str, ext: &str, days: i32) {
            openssl(
                &self.dir,
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    subject,
                ],
            );
            std::fs::write(self.dir.join(format!("{name}.ext")), ext).expect("ext file");
            let (start, end) = if days < 0 {
                ("-2d".to_owned(), "-1d".to_owned())
            } else {
                ("-1d".to_owned(), format!("+{days}d"))
            };
            // `openssl x509 -not_before/-not_after` needs OpenSSL 3.4; `ca` works everywhere.
            let ca_dir = self.dir.join(format!("{ca}-db"));
            std::fs::create_dir_all(&ca_dir).expect("ca db dir");
            let index = ca_dir.join("index.txt");
            if !index.exists() {
                std::fs::write(&index, "").expect("index");
            }
            let stamp = |offset: &str| -> String {
                let days: i64 = offset
                    .trim_start_matches('+')
                    .trim_end_matches('d')
                    .parse()
                    .expect("days");
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("clock")
                    .as_secs() as i64
                    + days * 86_400;
                let out = Command::new("date")
                    .args(["-u", "-d", &format!("@{t}"), "+%Y%m%d%H%M%SZ"])
                    .output()
                    .expect("date runs");
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            };
            let conf = format!(
                "[ca]\ndefault_ca = d\n[d]\ndatabase = {db}/index.txt\nnew_certs_dir = {db}\nserial = {db}/serial\ncrlnumber = {db}/crlnumber\ndefault_crl_days = 30\ndefault_md = sha256\npolicy = p\nunique_subject = no\ncopy_extensions = none\n[p]\ncommonName = supplied\n[x]\n{ext}",
                db = ca_dir.display(),
            );
            std::fs::write(self.dir.join(format!("{name}.cnf")), conf).expect("ca conf");
            let serial = ca_dir.join("serial");
            if !serial.exists() {
                std::fs::write(&serial, "1000\n").expect("serial");
            }
            openssl(
                &self.dir,
                &[
                    "ca",
                    "-batch",
                    "-config",
                    &format!("{name}.cnf"),
                    "-extensions",
                    "x",
                    "-cert",
                    &format!("{ca}.pem"),
                    "-keyfile",
                    &format!("{ca}.key"),
                    "-in",
                    &format!("{name}.csr"),
                    "-out",
                    &format!("{name}.pem"),
                    "-notext",
                    "-startdate",
                    &stamp(&start),
                    "-enddate",
                    &stamp(&end),
                ],
            );
        }

        /// Revokes `{name}.pem` (issued by `ca` with [`Pki::issue`]) in `ca`'s database.
        pub fn revoke(&self, ca: &str, name: &str) {
            openssl(
                &self.dir,
                &[
                    "ca",
                    "-config",
                    &format!("{name}.cnf"),
                    "-cert",
                    &format!("{ca}.pem"),
                    "-keyfile",
                    &format!("{ca}.key"),
                    "-revoke",
                    &format!("{name}.pem"),
                ],
            );
        }

        /// Writes `ca`'s current CRL to `{ca}.crl.pem` (the revocations so far) and returns its
        /// path. `any` names a certificate `ca` issued, whose openssl config holds the database.
        pub fn crl(&self, ca: &str, any: &str) -> String {
            let db = self.dir.join(format!("{ca}-db")).join("crlnumber");
            if !db.exists() {
                std::fs::write(&db, "1000\n").expect("crlnumber");
            }
            let out = format!("{ca}.crl.pem.new");
            openssl(
                &self.dir,
                &[
                    "ca",
                    "-config",
                    &format!("{any}.cnf"),
                    "-cert",
                    &format!("{ca}.pem"),
                    "-keyfile",
                    &format!("{ca}.key"),
                    "-gencrl",
                    "-out",
                    &out,
                ],
            );
            // Renamed into place, so a broker watching the file never reads half of it.
            let path = self.dir.join(format!("{ca}.crl.pem"));
            std::fs::rename(self.dir.join(&out), &path).expect("crl in place");
            path.display().to_string()
        }

        /// A client certificate `{name}.pem` with CN `cn` (and SAN DNS `{cn}.fleet`, URI
        /// `urn:vin:{cn}`), signed by `ca`.
        pub fn client(&self, ca: &str, name: &str, cn: &str, days: i32) {
            let ext = format!(
                "subjectAltName=DNS:{cn}.fleet,URI:urn:vin:{cn}\nextendedKeyUsage=clientAuth\n"
            );
            self.issue(ca, name, &format!("/CN={cn}"), &ext, days);
        }
    }

    impl Default for Pki {
        fn default() -> Self {
            Self::new()
        }
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ----- mosquitto command-line clients -------------------------------------------------------

/// Wrappers for Debian's `mosquitto_pub` / `mosquitto_sub`.
pub mod mosquitto {
    use super::*;

    /// Whether both tools are installed; prints a loud notice when not (the caller skips).
    pub fn available() -> bool {
        let ok = ["mosquitto_pub", "mosquitto_sub"].iter().all(|tool| {
            Command::new(tool)
                .arg("--help")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        });
        if !ok {
            eprintln!(
                "\n!!!!! SKIPPED: mosquitto_pub/mosquitto_sub not found \
                 (apt-get install -y mosquitto-clients) !!!!!\n"
            );
        }
        ok
    }

    /// A running mosquitto_sub (or _pub) whose stdout is collected.
    pub struct Tool {
        child: Option<Child>,
        output: mpsc::Receiver<String>,
    }

    /// Starts `tool` with `args`; stdout lines are collected, stderr goes to the test's stderr.
    pub fn spawn(tool: &str, args: &[&str]) -> Tool {
        let mut child = Command::new(tool)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {tool}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        Tool {
            child: Some(child),
            output: rx,
        }
    }

    impl Tool {
        /// The next stdout line within `wait`.
        pub fn line(&self, wait: Duration) -> Option<String> {
            self.output.recv_timeout(wait).ok()
        }

        /// Waits for the tool to exit (killing it after `wait`); returns its status and the
        /// stdout lines not read yet.
        /// Whether the process has not exited yet.
        pub fn is_running(&mut self) -> bool {
            self.child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
        }

        pub fn finish(mut self, wait: Duration) -> (Option<ExitStatus>, Vec<String>) {
            let mut child = self.child.take().expect("child");
            let deadline = Instant::now() + wait;
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Some(status),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break None;
                    }
                }
            };
            let mut lines = Vec::new();
            while let Ok(line) = self.output.recv_timeout(Duration::from_millis(200)) {
                lines.push(line);
            }
            (status, lines)
        }

        /// SIGKILL: the tool dies without DISCONNECT.
        pub fn kill(mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    impl Drop for Tool {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Runs a tool to completion (bounded by `wait`) and asserts it exited 0.
    pub fn run(tool: &str, args: &[&str], wait: Duration) -> Vec<String> {
        let (status, lines) = spawn(tool, args).finish(wait);
        match status {
            Some(s) if s.success() => lines,
            other => panic!("{tool} {args:?} failed: {other:?}, output {lines:?}"),
        }
    }

    /// Writes a password file with `mosquitto_passwd -b` (its default `$7$` PBKDF2-SHA512
    /// hashes), one call per user, the first with `-c`.
    pub fn passwd_file(path: &Path, users: &[(&str, &str)]) {
        for (i, (user, pass)) in users.iter().enumerate() {
            let mut cmd = Command::new("mosquitto_passwd");
            if i == 0 {
                cmd.arg("-c");
            }
            let status = cmd
                .arg("-b")
                .arg(path)
                .args([user, pass])
                .stdout(Stdio::null())
                .status()
                .expect("mosquitto_passwd runs");
            assert!(status.success(), "mosquitto_passwd failed for {user}");
        }
    }
}

// ----- Eclipse Paho (Python) ----------------------------------------------------------------

/// `tests/python/auth_checks.py` through python3 and paho-mqtt.
pub mod paho {
    use super::*;

    /// Whether python3 can import paho-mqtt; prints a loud notice when not (the caller skips).
    pub fn available() -> bool {
        let ok = Command::new("python3")
            .args(["-c", "import paho.mqtt.client"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            eprintln!(
                "\n!!!!! SKIPPED: python3 with paho-mqtt not found (scripts/test.sh installs it) !!!!!\n"
            );
        }
        ok
    }

    /// Runs `auth_checks.py 127.0.0.1 PORT ARGS..` to completion (killed after `wait`); returns
    /// the exit code (None when killed) and its stdout lines.
    pub fn auth_check(port: u16, args: &[&str], wait: Duration) -> (Option<i32>, Vec<String>) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/auth_checks.py");
        let port = port.to_string();
        let mut all = vec![script, "127.0.0.1", port.as_str()];
        all.extend_from_slice(args);
        let (status, lines) = mosquitto::spawn("python3", &all).finish(wait);
        (status.and_then(|s| s.code()), lines)
    }

    /// The number in the script's `connack N` line, if it printed one.
    pub fn connack(lines: &[String]) -> Option<u8> {
        lines
            .iter()
            .find_map(|l| l.strip_prefix("connack "))
            .and_then(|n| n.trim().parse().ok())
    }
}

// ----- the metrics endpoint -----------------------------------------------------------------

/// A loopback port free right now, for `--metrics-listen 127.0.0.1:PORT`.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `GET /metrics` from the broker's Prometheus endpoint on `port` (bounded by a 5 s timeout).
pub fn scrape_metrics(port: u16) -> String {
    use std::io::Write;
    let mut s =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint accepts");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text
}

/// Sum of every sample of `metric` whose labels contain all of `labels` (e.g. `shard="0"`).
pub fn metric_total(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(metric))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Scrapes `/metrics` until the sum of `metric` over samples with `labels` reaches `at_least`
/// (counters exported periodically lag the event); panics with the last scrape after
/// [`METRIC_WAIT`]. Returns that scrape.
pub fn wait_for_metric(port: u16, metric: &str, labels: &[&str], at_least: f64) -> String {
    let deadline = Instant::now() + METRIC_WAIT;
    loop {
        let text = scrape_metrics(port);
        if metric_total(&text, metric, labels) >= at_least {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{metric}{labels:?} stayed below {at_least} for {METRIC_WAIT:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ----- network namespaces -------------------------------------------------------------------

/// Network namespaces for partition tests: one namespace per node, all joined by a bridge that
/// lives in a namespace of its own (nothing is added to the test's own namespace). Cutting a
/// node sets its bridge port down, so frames to and from it are lost in both directions while
/// its processes keep running; healing sets the port up again.
pub mod netns {
    use std::os::fd::AsRawFd;

    use super::*;

    /// The subnet the nodes share (inside the lab's namespaces only, so parallel labs do not
    /// collide).
    const SUBNET: &str = "10.201.0";

    /// One lab: a switch namespace with a bridge and `nodes` node namespaces, each with `lo` up
    /// and `eth0` = `10.201.0.(i+1)/24` on the bridge. Everything is removed on drop, also
    /// while a test panics. Names carry the pid, so parallel test binaries do not collide.
    pub struct Lab {
        switch: String,
        nodes: Vec<String>,
    }

    fn ip(args: &[&str]) -> Result<(), String> {
        let out = Command::new("ip")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Removes the namespaces of labs whose test process is gone (killed before its drops
    /// ran, e.g. by a CI timeout): their names are `ringmq-lab-<pid>-...`.
    fn remove_stale() {
        let Ok(entries) = std::fs::read_dir("/run/netns") else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("ringmq-lab-")
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            if let Some(pid) = pid {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = ip(&["netns", "del", &name]);
                }
            }
        }
    }

    impl Lab {
        /// Creates the lab, or says why it cannot (not root, no `ip`): the caller prints the
        /// reason and skips, as tests do when mosquitto is missing.
        pub fn new(nodes: usize) -> Result<Lab, String> {
            remove_stale();
            let base = unique("ringmq-lab");
            let mut lab = Lab {
                switch: format!("{base}-sw"),
                nodes: Vec::new(),
            };
            ip(&["netns", "add", &lab.switch])?;
            let sw = lab.switch.clone();
            ip(&["-n", &sw, "link", "set", "lo", "up"])?;
            ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
            ip(&["-n", &sw, "link", "set", "br0", "up"])?;
            for i in 0..nodes {
                let ns = format!("{base}-n{}", i + 1);
                ip(&["netns", "add", &ns])?;
                lab.nodes.push(ns.clone());
                let port = format!("p{}", i + 1);
                let addr = format!("{}/24", lab.addr(i));
                ip(&["-n", &ns, "link", "set", "lo", "up"])?;
                ip(&[
                    "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ])?;
                ip(&["-n", &sw, "link", "set", &port, "master", "br0"])?;
                ip(&["-n", &sw, "link", "set", &port, "up"])?;
                ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
                ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            }
            Ok(lab)
        }

        /// Node `i`'s namespace name.
        pub fn namespace(&self, i: usize) -> &str {
            &self.nodes[i]
        }

        /// Node `i`'s address on the bridge.
        pub fn addr(&self, i: usize) -> String {
            format!("{SUBNET}.{}", i + 1)
        }

        /// The command prefix that runs a program in node `i`'s namespace.
        pub fn prefix(&self, i: usize) -> Vec<String> {
            ["ip", "netns", "exec", &self.nodes[i]]
                .iter()
                .map(|s| s.to_string())
                .collect()
        }

        /// Starts `tool` (mosquitto_sub/pub) in node `i`'s namespace.
        pub fn spawn(&self, i: usize, tool: &str, args: &[&str]) -> mosquitto::Tool {
            let mut all: Vec<&str> = vec!["netns", "exec", &self.nodes[i], tool];
            all.extend_from_slice(args);
            mosquitto::spawn("ip", &all)
        }

        /// Cuts node `i` off: its bridge port goes down, nothing reaches it or leaves it.
        pub fn cut(&self, i: usize) {
            let port = format!("p{}", i + 1);
            ip(&["-n", &self.switch, "link", "set", &port, "down"]).expect("cut a node off");
        }

        /// Undoes [`Lab::cut`].
        pub fn heal(&self, i: usize) {
            let port = format!("p{}", i + 1);
            ip(&["-n", &self.switch, "link", "set", &port, "up"]).expect("heal a node");
        }

        /// Runs `f` on a thread that entered node `i`'s namespace (a network namespace is per
        /// thread), e.g. to scrape a metrics endpoint bound to the node's loopback.
        pub fn run_in<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> T {
            let path = format!("/run/netns/{}", self.nodes[i]);
            std::thread::scope(|scope| {
                scope
                    .spawn(move || {
                        let file = std::fs::File::open(&path)
                            .unwrap_or_else(|e| panic!("open {path}: {e}"));
                        // SAFETY: setns(2) on an fd we own, for this thread only.
                        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                        f()
                    })
                    .join()
                    .unwrap_or_else(|e| std::panic::resume_unwind(e))
            })
        }
    }

    impl Drop for Lab {
        fn drop(&mut self) {
            // Deleting a namespace deletes its veth ends (and with them their peers).
            for ns in self.nodes.iter().chain(std::iter::once(&self.switch)) {
                let _ = ip(&["netns", "del", ns]);
            }
        }
    }
}
