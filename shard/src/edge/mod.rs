//! The byte-stream layer between the ring and the engine, for listeners that are more than plain
//! TCP: PROXY protocol headers, TLS (rustls) and WebSocket framing, in that order on the wire.
//!
//! Per connection an optional [`Layer`] lives in the shard's side table ([`Edge`], indexed by
//! `ConnId`): received bytes go in, plaintext MQTT bytes go to `Engine::handle_input`, and the
//! bytes a stage must answer with (TLS handshake records, the HTTP `101`, pongs) go to the ring.
//! The engine's `Output::Transmit` is framed and encrypted on the way out. Plain TCP connections
//! have no layer and pay one vector lookup per receive; a `tcp` listener with PROXY protocol has
//! a layer only until its header is read.
//!
//! A layered connection handed to another shard takes its [`Layer`] along (`HandOff::edge`);
//! bytes the ring reports while it is being detached wait in the layer ([`Layer::stash`]) and
//! are fed on the home shard first.
//!
//! Owns: listener configuration ([`ListenerConfig`], the operators' contract), its runtime form
//! ([`Listener`]), TLS material and its reload ([`tls::TlsSource`]), handshake deadlines,
//! failure counters and their rate-limited log, the TLS alert of a failed session. Must not
//! touch: MQTT (the engine's), sockets (the ring's).

pub mod proxy;
pub mod record;
pub mod tls;
pub mod ws;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use engine::admission::LogLimiter;
use engine::{ConnId, ConnMeta, Engine, IdentityMapping, IdentitySource, ListenerId};
use serde::Deserialize;
use tracing::{debug, warn};
use uring::{ConnKey, Ring};

/// Handshake timeout when a listener sets none: PROXY header, TLS handshake and WebSocket
/// upgrade together must finish within it (the engine's `connect_timeout_secs` then bounds the
/// wait for CONNECT).
pub const HANDSHAKE_TIMEOUT_SECS_DEFAULT: u32 = 10;
/// Default WebSocket path.
pub const WS_PATH_DEFAULT: &str = "/mqtt";

/// `kind` of a `[[listener]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl ListenerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }
    fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::Wss)
    }
    fn is_ws(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }
}

/// `proxy_protocol` of a `[[listener]]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    #[default]
    Off,
    V1,
    V2,
    Any,
}

/// `client_auth` of a `[listener.tls]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// Asked for; a connection without one is served, one with an invalid one is refused.
    Optional,
    /// A valid client certificate (signed by `ca_file`) is needed.
    Required,
}

/// One `[[listener]]` entry as operators write it (these key names are a contract).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub kind: ListenerKind,
    pub addr: SocketAddr,
    /// A PROXY protocol header is required first on every connection when not `off`.
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    /// Addresses or CIDRs (`10.0.0.0/8`, `::1`) allowed to send a PROXY header; any other peer
    /// is closed quietly. Required when `proxy_protocol` is on.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The HTTP path WebSocket clients connect to (ws/wss only; default `/mqtt`).
    pub path: Option<String>,
    /// Seconds for the PROXY header, TLS handshake and WebSocket upgrade together.
    #[serde(default = "default_handshake_timeout_secs")]
    pub handshake_timeout_secs: u32,
    /// `[listener.tls]`: required for tls/wss.
    pub tls: Option<TlsConfig>,
    /// Connections from this listener the broker holds; beyond it new sockets are closed at
    /// accept (`ringmq_connections_refused_total{reason="listener_max_connections"}`). 0
    /// (default): no bound of its own. Enforced by `engine::admission` like `[overload]`.
    #[serde(default)]
    pub max_connections: u32,
}

fn default_handshake_timeout_secs() -> u32 {
    HANDSHAKE_TIMEOUT_SECS_DEFAULT
}

/// `[listener.tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM: the server certificate, then its chain.
    pub cert_file: std::path::PathBuf,
    /// PEM: the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: std::path::PathBuf,
    /// PEM: the CAs client certificates are verified against (needed unless `client_auth` is
    /// `none`).
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM: certificate revocation lists issued by the CAs of `ca_file`. A client certificate
    /// listed in one is refused; one whose issuer has no CRL here is refused too (OpenSSL's
    /// `X509_V_FLAG_CRL_CHECK`, as Mosquitto's `crlfile`). Only the client's own certificate is
    /// checked, not its intermediates.
    pub crl_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub client_auth: ClientAuth,
    #[serde(default)]
    pub identity_as_username: IdentitySource,
    #[serde(default)]
    pub identity_as_client_id: IdentitySource,
    /// Refuse a CONNECT whose client id is not the certificate's (`identity_as_client_id`)
    /// instead of replacing it.
    #[serde(default)]
    pub require_client_id_match: bool,
}

/// A listener configuration that cannot work, named by its key (`listener[1].tls.cert_file`).
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct EdgeConfigError {
    pub key: String,
    pub reason: String,
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> EdgeConfigError {
    EdgeConfigError {
        key: key.into(),
        reason: reason.into(),
    }
}

/// A `[[listener]]` ready to serve: files loaded, addresses parsed.
#[derive(Debug, Clone)]
pub struct Listener {
    pub kind: ListenerKind,
    pub addr: SocketAddr,
    /// Set when `proxy_protocol` is on.
    pub proxy: Option<proxy::ProxyPolicy>,
    /// Set for ws/wss.
    pub ws_path: Option<String>,
    /// Set for tls/wss.
    pub tls: Option<Arc<tls::TlsSource>>,
    pub mapping: IdentityMapping,
    pub handshake_timeout: Duration,
}

impl Listener {
    /// Validates `cfg` and loads its TLS files; `key` names the entry in errors (`listener[0]`).
    pub fn from_config(cfg: &ListenerConfig, key: &str) -> Result<Listener, EdgeConfigError> {
        let proxy = proxy::ProxyPolicy::from_config(cfg, key)?;
        let ws_path = match (cfg.kind.is_ws(), &cfg.path) {
            (true, Some(p)) if p.starts_with('/') => Some(p.clone()),
            (true, Some(p)) => {
                return Err(invalid(
                    format!("{key}.path"),
                    format!("{p:?} must start with /"),
                ))
            }
            (true, None) => Some(WS_PATH_DEFAULT.to_owned()),
            (false, Some(_)) => {
                return Err(invalid(
                    format!("{key}.path"),
                    "only ws and wss listeners have a path",
                ))
            }
            (false, None) => None,
        };
        let (tls, mapping) = match (cfg.kind.is_tls(), &cfg.tls) {
            (true, Some(t)) => {
                let mapping = tls::mapping_of(t, &format!("{key}.tls"))?;
                (
                    Some(tls::TlsSource::load(t, &format!("{key}.tls"))?),
                    mapping,
                )
            }
            (true, None) => {
                return Err(invalid(
                    format!("{key}.tls"),
                    format!(
                        "a {} listener needs [listener.tls] cert_file and key_file",
                        cfg.kind.as_str()
                    ),
                ))
            }
            (false, Some(_)) => {
                return Err(invalid(
                    format!("{key}.tls"),
                    format!(
                        "a {} listener does not take [listener.tls]; use kind = \"tls\" or \"wss\"",
                        cfg.kind.as_str()
                    ),
                ))
            }
            (false, None) => (None, IdentityMapping::default()),
        };
        if cfg.handshake_timeout_secs == 0 {
            return Err(invalid(
                format!("{key}.handshake_timeout_secs"),
                "must be at least 1",
            ));
        }
        Ok(Listener {
            kind: cfg.kind,
            addr: cfg.addr,
            proxy,
            ws_path,
            tls,
            mapping,
            handshake_timeout: Duration::from_secs(u64::from(cfg.handshake_timeout_secs)),
        })
    }

    /// Whether connections need a [`Layer`] (anything but a plain `tcp` listener).
    fn layered(&self) -> bool {
        self.proxy.is_some() || self.tls.is_some() || self.ws_path.is_some()
    }
}

/// Why a layered connection was closed before MQTT: `ringmq_edge_handshake_failures_total`'s
/// `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The handshake did not finish within the listener's timeout.
    Timeout,
    /// A PROXY header from a peer not in `trusted_proxies`.
    ProxyUntrusted,
    /// No (or a malformed) PROXY header where one is required.
    ProxyHeader,
    /// No client certificate where `client_auth = "required"`.
    TlsNoCertificate,
    /// The client certificate has expired or is not yet valid.
    TlsCertificateExpired,
    /// The client certificate is not signed by `ca_file`.
    TlsUnknownCa,
    /// The client certificate is listed in `crl_file`.
    TlsCertificateRevoked,
    /// Another certificate problem (bad usage, bad encoding, no CRL for its issuer).
    TlsBadCertificate,
    /// A TLS protocol error (no shared version or cipher, bad record, alert from the peer).
    TlsProtocol,
    /// A TLS 1.3 client sent a KeyUpdate, which ringmq's record layer cannot follow (closed
    /// with `unexpected_message`).
    TlsKeyUpdate,
    /// A TLS record on ringmq's record layer failed authentication (`bad_record_mac`).
    TlsBadRecordMac,
    /// The peer ended the session with a fatal alert (any but close_notify; RFC 8446 6.2).
    TlsPeerAlert,
    /// ringmq's record layer used up the sequence numbers of its sending direction (RFC 8446
    /// 5.3: they must not wrap; KeyUpdate, which would renew them, is not followed): the
    /// connection ends with close_notify.
    TlsSequenceExhausted,
    /// Not a valid WebSocket upgrade request (answered with its HTTP status).
    WsRequest,
    /// A WebSocket framing error after the upgrade.
    WsFrame,
}

impl Failure {
    pub const ALL: [Failure; 15] = [
        Failure::Timeout,
        Failure::ProxyUntrusted,
        Failure::ProxyHeader,
        Failure::TlsNoCertificate,
        Failure::TlsCertificateExpired,
        Failure::TlsUnknownCa,
        Failure::TlsCertificateRevoked,
        Failure::TlsBadCertificate,
        Failure::TlsProtocol,
        Failure::TlsKeyUpdate,
        Failure::TlsBadRecordMac,
        Failure::TlsPeerAlert,
        Failure::TlsSequenceExhausted,
        Failure::WsRequest,
        Failure::WsFrame,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::ProxyUntrusted => "proxy_untrusted",
            Failure::ProxyHeader => "proxy_header",
            Failure::TlsNoCertificate => "tls_no_certificate",
            Failure::TlsCertificateExpired => "tls_certificate_expired",
            Failure::TlsUnknownCa => "tls_unknown_ca",
            Failure::TlsCertificateRevoked => "tls_certificate_revoked",
            Failure::TlsBadCertificate => "tls_bad_certificate",
            Failure::TlsProtocol => "tls_protocol",
            Failure::TlsKeyUpdate => "tls_key_update",
            Failure::TlsBadRecordMac => "tls_bad_record_mac",
            Failure::TlsPeerAlert => "tls_peer_alert",
            Failure::TlsSequenceExhausted => "tls_sequence_exhausted",
            Failure::WsRequest => "ws_request",
            Failure::WsFrame => "ws_frame",
        }
    }
}

/// The shard's edge counters (plain fields, published by the metrics loop).
#[derive(Debug, Default, Clone)]
pub struct EdgeCounters {
    /// Handshakes that finished, by listener kind (tcp = PROXY only).
    pub handshakes: [u64; 4],
    /// Failures by [`Failure`], in [`Failure::ALL`] order.
    pub failures: [u64; Failure::ALL.len()],
}

impl EdgeCounters {
    fn fail(&mut self, failure: Failure) {
        self.failures[failure.index()] += 1;
    }
}

impl Failure {
    /// Its place in [`Failure::ALL`].
    fn index(self) -> usize {
        Failure::ALL.iter().position(|f| *f == self).unwrap_or(0)
    }
}

/// Counts a failure and logs it, at most once per `engine::admission::LOG_INTERVAL` per reason
/// on this shard, with how many were held back since: a storm of bad handshakes costs one line
/// per reason every few seconds, not one per client.
#[derive(Debug, Default)]
struct FailureLog {
    /// By [`Failure::ALL`] order.
    limiters: [LogLimiter; Failure::ALL.len()],
}

impl FailureLog {
    fn note(
        &mut self,
        counters: &mut EdgeCounters,
        failure: Failure,
        peer: Option<SocketAddr>,
        (id, listener): (usize, &Listener),
        now: Instant,
    ) {
        counters.fail(failure);
        if let Some(suppressed) = self.limiters[failure.index()].allow(now) {
            let peer = peer.map(|p| p.to_string());
            warn!(
                reason = failure.label(),
                peer = peer.as_deref().unwrap_or("unknown"),
                listener = id,
                addr = %listener.addr,
                kind = listener.kind.as_str(),
                suppressed,
                "edge handshake failed"
            );
        }
    }
}

/// Per-connection state of the stages a listener puts in front of MQTT.
pub struct Layer {
    /// The engine connection's generation: the side table is indexed by `ConnId::index`.
    generation: u32,
    listener: ListenerId,
    kind: ListenerKind,
    /// Set while the PROXY header has not arrived whole.
    proxy: Option<proxy::ProxyStage>,
    tls: Option<Box<tls::TlsSession>>,
    ws: Option<ws::WsStage>,
    /// Transport facts, given to the engine once every handshake is done (before any MQTT byte).
    meta: Option<Box<ConnMeta>>,
    /// Raw bytes received while the connection was being detached for a hand-off (bounded by
    /// the engine's input bound: the ring stops reading at detach).
    stashed: BytesMut,
    /// Set once the layer failed: further input is ignored until the ring reports the close.
    failed: bool,
}

impl std::fmt::Debug for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Layer")
            .field("listener", &self.listener)
            .field("kind", &self.kind)
            .field("proxy_pending", &self.proxy.is_some())
            .field("tls", &self.tls.is_some())
            .field("ws", &self.ws.is_some())
            .field("stashed", &self.stashed.len())
            .finish()
    }
}

impl Layer {
    /// Appends raw bytes that arrived while the connection was being handed off.
    pub fn stash(&mut self, data: &[u8]) {
        self.stashed.extend_from_slice(data);
    }

    /// True until the PROXY header, the TLS handshake and the WebSocket upgrade are all done.
    fn handshaking(&self) -> bool {
        self.proxy.is_some()
            || self.tls.as_ref().is_some_and(|t| t.is_handshaking())
            || self.ws.as_ref().is_some_and(|w| !w.upgraded())
    }

    /// Whether the layer still has work once the handshakes are done (TLS or WebSocket framing).
    fn persistent(&self) -> bool {
        self.tls.is_some() || self.ws.is_some()
    }
}

/// Shard-wide buffers the stages work in, reused by every connection (no per-connection
/// buffer for an idle connection).
#[derive(Default)]
struct Scratch {
    /// Bytes for the ring (handshake records, HTTP responses, pongs, encrypted output).
    tx: BytesMut,
    /// Decrypted bytes (TLS plaintext: WebSocket frames or MQTT).
    plain: BytesMut,
    /// MQTT bytes for the engine.
    mqtt: BytesMut,
    /// WebSocket input being decoded (a partial frame left over plus new bytes).
    ws_in: BytesMut,
    /// WebSocket replies (HTTP response, pongs, close) before encryption.
    reply: BytesMut,
    /// Received TLS records being decrypted (a partial record left over plus new bytes).
    records: BytesMut,
}

/// What the ring must do for an edge decision made inside its poll.
enum Action {
    Send(ConnId, Bytes),
    Close(ConnId),
}

/// A listener as the shard serves it.
struct ShardListener {
    spec: Listener,
    /// The TLS configuration in use and the source's version it came from (checked at accept).
    tls: Option<(u64, Arc<rustls::ServerConfig>)>,
}

/// The shard's edge: listeners by `ListenerId` and the side table of layered connections.
pub struct Edge {
    /// By `ListenerId`; `None` for the plain `listen` entries.
    listeners: Vec<Option<ShardListener>>,
    /// By `ConnId::index`.
    conns: Vec<Option<Box<Layer>>>,
    /// Handshake deadlines in accept order (listeners' timeouts are few, so nearly FIFO; one
    /// entry per layered connection accepted within the longest timeout).
    deadlines: VecDeque<(Instant, ConnId)>,
    actions: Vec<Action>,
    scratch: Scratch,
    pub counters: EdgeCounters,
    log: FailureLog,
    /// Handshakes ended (finished or failed) when the allocator was last asked to return freed
    /// memory ([`set_memory_trim`]), and when.
    trimmed_through: u64,
    trimmed_at: Option<Instant>,
}

/// Least time between two calls of the memory trim hook on one shard.
pub const MEMORY_TRIM_INTERVAL: Duration = Duration::from_millis(200);

/// What the binary's allocator does to return the calling thread's freed pages to the kernel.
static MEMORY_TRIM: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Registers the allocator's trim (the broker binary: a jemalloc purge of the calling thread's
/// arena). A shard calls it after handshakes ended, at most every [`MEMORY_TRIM_INTERVAL`]:
/// a TLS handshake allocates and frees several KiB that the allocator would otherwise keep
/// resident for its decay time, so idle TLS connections would show in RSS at about 3x their
/// heap right after a connection burst. Set once; later calls are ignored.
pub fn set_memory_trim(trim: fn()) {
    let _ = MEMORY_TRIM.set(trim);
}

impl Edge {
    /// `plain` is the number of `listen` entries (listener ids `0..plain`), `listeners` the
    /// `[[listener]]` entries that follow them.
    pub fn new(plain: usize, listeners: &[Listener]) -> Edge {
        let mut all: Vec<Option<ShardListener>> = (0..plain).map(|_| None).collect();
        for l in listeners {
            let tls = l.tls.as_ref().map(|s| s.current());
            all.push(Some(ShardListener {
                spec: l.clone(),
                tls,
            }));
        }
        Edge {
            listeners: all,
            conns: Vec::new(),
            deadlines: VecDeque::new(),
            actions: Vec::new(),
            scratch: Scratch::default(),
            counters: EdgeCounters::default(),
            log: FailureLog::default(),
            trimmed_through: 0,
            trimmed_at: None,
        }
    }

    fn layer_mut(&mut self, conn: ConnId) -> Option<&mut Layer> {
        match self.conns.get_mut(conn.index as usize) {
            Some(Some(l)) if l.generation == conn.generation => Some(l),
            _ => None,
        }
    }

    /// Takes a connection's layer out (hand-off or close).
    pub fn take(&mut self, conn: ConnId) -> Option<Box<Layer>> {
        let slot = self.conns.get_mut(conn.index as usize)?;
        if slot
            .as_ref()
            .is_some_and(|l| l.generation == conn.generation)
        {
            slot.take()
        } else {
            None
        }
    }

    fn insert(&mut self, conn: ConnId, mut layer: Box<Layer>) {
        layer.generation = conn.generation;
        let i = conn.index as usize;
        if self.conns.len() <= i {
            self.conns.resize_with(i + 1, || None);
        }
        self.conns[i] = Some(layer);
    }

    /// An accepted socket on ring listener `listener`, already admitted and opened as `conn`:
    /// gives it its metadata and its layer. False when the connection is refused before any
    /// byte (an untrusted peer on a PROXY listener): the caller closes it.
    pub fn accepted(
        &mut self,
        listener: usize,
        fd: &OwnedFd,
        conn: ConnId,
        engine: &mut Engine,
        now: Instant,
    ) -> bool {
        let Some(Some(l)) = self.listeners.get_mut(listener) else {
            return true;
        };
        let peer = socket2::SockRef::from(fd)
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket());
        if let Some(policy) = &l.spec.proxy {
            if !peer.is_some_and(|p| policy.trusts(p.ip())) {
                self.log.note(
                    &mut self.counters,
                    Failure::ProxyUntrusted,
                    peer,
                    (listener, &l.spec),
                    now,
                );
                return false;
            }
        }
        let meta = Box::new(ConnMeta {
            peer,
            listener: listener as ListenerId,
            identity: None,
            mapping: l.spec.mapping,
        });
        if !l.spec.layered() {
            engine.set_meta(conn, *meta);
            return true;
        }
        let tls = match (&l.spec.tls, &mut l.tls) {
            (Some(source), Some(current)) => {
                source.refresh(current);
                match tls::TlsSession::new(current.1.clone()) {
                    Ok(c) => Some(Box::new(c)),
                    Err(err) => {
                        // Never serve a TLS listener without TLS: refuse the connection.
                        debug!(error = %err, "cannot start a tls session; closed");
                        let at = (listener, &l.spec);
                        self.log
                            .note(&mut self.counters, Failure::TlsProtocol, peer, at, now);
                        return false;
                    }
                }
            }
            _ => None,
        };
        let layer = Box::new(Layer {
            generation: conn.generation,
            listener: listener as ListenerId,
            kind: l.spec.kind,
            proxy: l
                .spec
                .proxy
                .as_ref()
                .map(|p| proxy::ProxyStage::new(p.mode)),
            tls,
            ws: l.spec.ws_path.as_ref().map(|_| ws::WsStage::new()),
            meta: Some(meta),
            stashed: BytesMut::new(),
            failed: false,
        });
        self.deadlines
            .push_back((now + l.spec.handshake_timeout, conn));
        self.insert(conn, layer);
        true
    }

    /// A handed-off connection's layer arrives with it: bytes stashed during the detach are fed.
    pub fn adopt(
        &mut self,
        conn: ConnId,
        layer: Option<Box<Layer>>,
        engine: &mut Engine,
        now: Instant,
    ) {
        let Some(mut layer) = layer else { return };
        let stashed = std::mem::take(&mut layer.stashed);
        self.insert(conn, layer);
        if !stashed.is_empty() {
            self.input(conn, &stashed, engine, now);
        }
    }

    /// Received bytes: through the connection's layer when it has one, else straight to the
    /// engine.
    pub fn input(&mut self, conn: ConnId, data: &[u8], engine: &mut Engine, now: Instant) {
        let Edge {
            listeners,
            conns,
            scratch,
            actions,
            counters,
            log,
            ..
        } = self;
        let layer = match conns.get_mut(conn.index as usize) {
            Some(Some(l)) if l.generation == conn.generation => l,
            _ => return engine.handle_input(conn, data, now),
        };
        if layer.failed {
            return;
        }
        let spec = match listeners.get(usize::from(layer.listener)) {
            Some(Some(l)) => &l.spec,
            _ => return,
        };
        scratch.tx.clear();
        scratch.mqtt.clear();
        let was_handshaking = layer.handshaking();
        let result = feed(layer, spec, data, scratch);
        if !scratch.tx.is_empty() {
            actions.push(Action::Send(conn, scratch.tx.split().freeze()));
        }
        let peer_closed = match result {
            Ok(closed) => closed,
            Err(failure) => {
                // The peer as the PROXY header gave it, when there was one.
                let peer = layer.meta.as_ref().and_then(|m| m.peer);
                let at = (usize::from(layer.listener), spec);
                log.note(counters, failure, peer, at, now);
                layer.failed = true;
                actions.push(Action::Close(conn));
                return;
            }
        };
        if was_handshaking && !layer.handshaking() {
            counters.handshakes[layer.kind as usize] += 1;
            if let Some(tls) = &mut layer.tls {
                if let Some(meta) = layer.meta.as_deref_mut() {
                    meta.identity = tls::identity_of(tls);
                }
            }
            if let Some(meta) = layer.meta.take() {
                engine.set_meta(conn, *meta);
            }
        }
        let persistent = layer.persistent();
        if !scratch.mqtt.is_empty() {
            engine.handle_input(conn, &scratch.mqtt, now);
        }
        if peer_closed {
            layer.failed = true;
            actions.push(Action::Close(conn));
            return;
        }
        if !persistent && !self.layer_mut(conn).is_some_and(|l| l.handshaking()) {
            // A PROXY-only connection is plain TCP from here on.
            self.take(conn);
        }
    }

    /// The engine's output for `conn`, framed and encrypted, to the ring.
    pub fn transmit(&mut self, ring: &mut Ring, key: ConnKey, conn: ConnId, data: Bytes) {
        let Edge {
            conns,
            scratch,
            counters,
            ..
        } = self;
        let layer = match conns.get_mut(conn.index as usize) {
            Some(Some(l)) if l.generation == conn.generation => l,
            _ => return send(ring, key, data),
        };
        if layer.failed {
            // Being closed: a failed TLS session must not be driven again (its state machine
            // is done, and only its alert goes out).
            return;
        }
        scratch.tx.clear();
        match (&mut layer.ws, &mut layer.tls) {
            (None, None) => send(ring, key, data),
            (Some(_), None) => {
                wire::ws::encode_frame_header(true, 0x2, data.len(), None, &mut scratch.tx);
                send(ring, key, scratch.tx.split().freeze());
                send(ring, key, data);
            }
            (ws, Some(tls)) => {
                let mut sealed = Ok(());
                if ws.is_some() {
                    scratch.plain.clear();
                    wire::ws::encode_frame_header(true, 0x2, data.len(), None, &mut scratch.plain);
                    sealed = tls::write_plaintext(tls, &scratch.plain, &mut scratch.tx);
                }
                if sealed.is_ok() {
                    sealed = tls::write_plaintext(tls, &data, &mut scratch.tx);
                }
                send(ring, key, scratch.tx.split().freeze());
                if let Err(failure) = sealed {
                    // The session cannot send any more: what was sealed (and its close_notify)
                    // goes out, then the connection closes rather than lose output.
                    counters.fail(failure);
                    layer.failed = true;
                    ring.close(key);
                }
            }
        }
    }

    /// The engine closes `conn`: a WebSocket close frame and a TLS close_notify go first.
    pub fn closing(&mut self, ring: &mut Ring, key: ConnKey, conn: ConnId) {
        let Edge { conns, scratch, .. } = self;
        let Some(Some(layer)) = conns.get_mut(conn.index as usize) else {
            return;
        };
        if layer.generation != conn.generation || layer.failed || layer.handshaking() {
            return;
        }
        scratch.tx.clear();
        scratch.plain.clear();
        if layer.ws.is_some() {
            wire::ws::encode_close(Some(wire::ws::CloseCode::NORMAL), "", &mut scratch.plain);
        }
        match &mut layer.tls {
            Some(tls) => {
                // Closing either way: a session that cannot send has appended its close_notify.
                if tls::write_plaintext(tls, &scratch.plain, &mut scratch.tx).is_ok() {
                    tls::close_notify(tls, &mut scratch.tx);
                }
            }
            None => scratch.tx.extend_from_slice(&scratch.plain),
        }
        if !scratch.tx.is_empty() {
            send(ring, key, scratch.tx.split().freeze());
        }
    }

    /// Handshakes that ended on this shard, finished or failed.
    fn handshakes_ended(&self) -> u64 {
        self.counters.handshakes.iter().sum::<u64>() + self.counters.failures.iter().sum::<u64>()
    }

    /// Whether the trim hook is due: handshakes ended since the last trim, and the last one
    /// was at least [`MEMORY_TRIM_INTERVAL`] ago. Marks it done when it is.
    fn trim_due(&mut self, now: Instant) -> bool {
        let ended = self.handshakes_ended();
        if ended == self.trimmed_through {
            return false;
        }
        if self
            .trimmed_at
            .is_some_and(|at| now.saturating_duration_since(at) < MEMORY_TRIM_INTERVAL)
        {
            return false;
        }
        self.trimmed_through = ended;
        self.trimmed_at = Some(now);
        true
    }

    /// Closes layered connections whose handshake outlived its listener's timeout, and asks
    /// the allocator to return what ended handshakes freed ([`set_memory_trim`]).
    pub fn handle_timeouts(&mut self, now: Instant) {
        if self.trim_due(now) {
            if let Some(trim) = MEMORY_TRIM.get() {
                trim();
            }
        }
        while let Some(&(at, conn)) = self.deadlines.front() {
            if at > now {
                break;
            }
            self.deadlines.pop_front();
            let Some(layer) = self.layer_mut(conn) else {
                continue;
            };
            if layer.failed || !layer.handshaking() {
                continue;
            }
            layer.failed = true;
            let peer = layer.meta.as_ref().and_then(|m| m.peer);
            let listener = usize::from(layer.listener);
            if let Some(Some(l)) = self.listeners.get(listener) {
                let at = (listener, &l.spec);
                self.log
                    .note(&mut self.counters, Failure::Timeout, peer, at, now);
            } else {
                self.counters.fail(Failure::Timeout);
            }
            self.actions.push(Action::Close(conn));
        }
    }

    /// Carries out what the edge decided during the ring's poll: sends, then closes.
    pub fn flush(&mut self, ring: &mut Ring, key_of: impl Fn(ConnId) -> Option<ConnKey>) {
        for action in self.actions.drain(..) {
            match action {
                Action::Send(conn, data) => {
                    if let Some(key) = key_of(conn) {
                        send(ring, key, data);
                    }
                }
                Action::Close(conn) => {
                    if let Some(key) = key_of(conn) {
                        ring.close(key);
                    }
                }
            }
        }
    }

    /// The connection is gone.
    pub fn closed(&mut self, conn: ConnId) {
        self.take(conn);
    }
}

fn send(ring: &mut Ring, key: ConnKey, data: Bytes) {
    if data.is_empty() {
        return;
    }
    if let Err(err) = ring.send(key, data) {
        // Bounded well above the engine's own transport bound: only a dead socket.
        debug!(error = %err, "send refused; closing");
        ring.close_now(key);
    }
}

/// Runs `data` through the layer's stages: PROXY header, TLS, WebSocket. MQTT bytes end in
/// `scratch.mqtt`, bytes to answer with in `scratch.tx`. True when the peer closed the
/// WebSocket (the connection is to be closed after the reply).
fn feed(
    layer: &mut Layer,
    spec: &Listener,
    data: &[u8],
    scratch: &mut Scratch,
) -> Result<bool, Failure> {
    let mut after_proxy = None;
    if let Some(stage) = &mut layer.proxy {
        match stage.feed(data)? {
            None => return Ok(false),
            Some((source, rest)) => {
                if let (Some(source), Some(meta)) = (source, layer.meta.as_deref_mut()) {
                    debug!(peer = %source, proxy = ?meta.peer, listener = meta.listener, "proxy protocol header accepted");
                    meta.peer = Some(source);
                }
                layer.proxy = None;
                after_proxy = Some(rest);
            }
        }
    }
    let input: &[u8] = after_proxy.as_deref().unwrap_or(data);
    let Scratch {
        tx,
        plain,
        mqtt,
        ws_in,
        reply,
        records,
    } = scratch;
    let mut tls_closed = false;
    let stream: &[u8] = match &mut layer.tls {
        Some(tls) => {
            plain.clear();
            tls_closed = tls::read(tls, input, records, plain, tx)?;
            plain
        }
        None => input,
    };
    let Some(ws) = &mut layer.ws else {
        mqtt.extend_from_slice(stream);
        return Ok(tls_closed);
    };
    reply.clear();
    let outcome = ws.feed(stream, spec, ws_in, mqtt, reply);
    match &mut layer.tls {
        Some(tls) => tls::write_plaintext(tls, reply, tx)?,
        None => tx.extend_from_slice(reply),
    }
    Ok(outcome? == ws::WsOutcome::Closing || tls_closed)
}

/// Publishes the edge counters' deltas (called by the shard's metrics loop).
pub struct EdgeExporter {
    last: EdgeCounters,
    handshakes: Vec<metrics::Counter>,
    failures: Vec<metrics::Counter>,
}

impl EdgeExporter {
    pub fn new(shard: u16) -> Self {
        let s = shard.to_string();
        let kinds = [
            ListenerKind::Tcp,
            ListenerKind::Tls,
            ListenerKind::Ws,
            ListenerKind::Wss,
        ];
        EdgeExporter {
            last: EdgeCounters::default(),
            handshakes: kinds
                .iter()
                .map(|k| metrics::counter!("ringmq_edge_handshakes_total", "shard" => s.clone(), "kind" => k.as_str()))
                .collect(),
            failures: Failure::ALL
                .iter()
                .map(|f| metrics::counter!("ringmq_edge_handshake_failures_total", "shard" => s.clone(), "reason" => f.label()))
                .collect(),
        }
    }

    pub fn publish(&mut self, now: &EdgeCounters) {
        for (i, c) in self.handshakes.iter().enumerate() {
            c.increment(now.handshakes[i] - self.last.handshakes[i]);
        }
        for (i, c) in self.failures.iter().enumerate() {
            c.increment(now.failures[i] - self.last.failures[i]);
        }
        self.last = now.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trim runs once per batch of ended handshakes, never twice within
    /// [`MEMORY_TRIM_INTERVAL`], and not at all while no handshake ended. Driven by explicit
    /// instants: no clock is read.
    #[test]
    fn trim_due_is_rate_limited_and_needs_ended_handshakes() {
        let mut edge = Edge::new(1, &[]);
        let t0 = Instant::now();
        // Nothing ended yet: nothing to return.
        assert!(!edge.trim_due(t0));

        edge.counters.handshakes[1] += 1;
        assert!(edge.trim_due(t0), "first ended handshake trims at once");
        // Same handshakes: no second trim, however late.
        assert!(!edge.trim_due(t0 + MEMORY_TRIM_INTERVAL * 10));

        // More ended (a failure counts too), but within the interval of the last trim: wait.
        edge.counters.fail(Failure::TlsProtocol);
        assert!(!edge.trim_due(t0 + MEMORY_TRIM_INTERVAL / 2));
        assert!(!edge.trim_due(t0 + MEMORY_TRIM_INTERVAL - Duration::from_nanos(1)));
        // The interval passed: trims, and the next trim is an interval after this one.
        let t1 = t0 + MEMORY_TRIM_INTERVAL;
        assert!(edge.trim_due(t1));
        edge.counters.handshakes[1] += 5;
        assert!(!edge.trim_due(t1 + MEMORY_TRIM_INTERVAL / 2));
        assert!(edge.trim_due(t1 + MEMORY_TRIM_INTERVAL));
        assert!(!edge.trim_due(t1 + MEMORY_TRIM_INTERVAL * 3));
    }

    /// An instant before the last trim (not monotonic input) does not trim.
    #[test]
    fn trim_due_with_an_earlier_instant_waits() {
        let mut edge = Edge::new(1, &[]);
        let t0 = Instant::now() + MEMORY_TRIM_INTERVAL;
        edge.counters.handshakes[0] += 1;
        assert!(edge.trim_due(t0));
        edge.counters.handshakes[0] += 1;
        assert!(!edge.trim_due(t0 - MEMORY_TRIM_INTERVAL));
    }
}
