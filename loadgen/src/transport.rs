//! Byte-stream layers under the MQTT client: plain TCP, TLS (rustls client), MQTT over
//! WebSocket (RFC 6455 client: masked binary frames, subprotocol `mqtt`) and WebSocket over TLS.
//! Every scenario runs over any of them; the client only sees [`Stream`] (an `AsyncRead +
//! AsyncWrite`), so the MQTT code is the same for all four.
//!
//! Plain TCP stays what it was: [`Stream::Tcp`] forwards each poll to glommio's stream.
//!
//! Writes buffer a little inside the TLS and WebSocket layers (a record or a frame that the
//! socket did not take at once), so the client flushes after each batch of writes.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection};
use serde::{Deserialize, Serialize};
use wire::ws::{self, Decoded, FrameDecoder};

/// Largest WebSocket message the loadgen accepts from a broker (MQTT's own bound applies
/// inside it).
pub const WS_MESSAGE_LEN_MAX: u32 = crate::client::INBOUND_FRAME_MAX;
/// Largest payload the loadgen puts in one WebSocket frame; a longer write takes several.
pub const WS_FRAME_PAYLOAD_MAX: usize = 64 * 1024;
/// Bytes read from the socket at once by the WebSocket layer while it waits for the `101`.
const WS_RESPONSE_READ: usize = 1024;
/// Bytes read from the socket at most per read under the WebSocket layer.
const WS_READ_CHUNK_MAX: usize = 64 * 1024;
/// Smallest read under the WebSocket layer (a frame header and a small packet).
const WS_READ_CHUNK_MIN: usize = 256;

const _: () = assert!(WS_READ_CHUNK_MIN > ws::FRAME_HEADER_LEN_MAX);
const _: () = assert!(WS_RESPONSE_READ < ws::REQUEST_LEN_MAX);

/// The layers between TCP and MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    #[default]
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl TransportKind {
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Tls => "tls",
            TransportKind::Ws => "ws",
            TransportKind::Wss => "wss",
        }
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, TransportKind::Tls | TransportKind::Wss)
    }

    pub fn uses_ws(self) -> bool {
        matches!(self, TransportKind::Ws | TransportKind::Wss)
    }
}

impl std::str::FromStr for TransportKind {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "tcp" => Ok(Self::Tcp),
            "tls" => Ok(Self::Tls),
            "ws" => Ok(Self::Ws),
            "wss" => Ok(Self::Wss),
            other => Err(format!("unknown transport {other:?} (tcp, tls, ws or wss)")),
        }
    }
}

/// Why the transport of a run cannot be set up (at start, before any client connects).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("transport {kind:?} needs tls_ca_file (--cafile): the CA the broker's certificate is verified against")]
    MissingCa { kind: TransportKind },
    #[error("tls_cert_file and tls_key_file (--cert, --key) go together")]
    HalfClientIdentity,
    #[error("reading {what} {path}: {problem}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("invalid tls server name {name:?}: {problem}")]
    ServerName { name: String, problem: String },
    #[error("ws_path {path:?} must start with '/'")]
    WsPath { path: String },
}

/// What every client of a run shares to open its transport: built once, read by all
/// executors.
pub struct Edge {
    pub kind: TransportKind,
    /// Set exactly when `kind` uses TLS.
    tls: Option<Arc<ClientConfig>>,
    /// Per broker target (same order as the run's targets): the TLS server name (SNI and the
    /// name the certificate must carry) and the WebSocket `Host` header.
    names: Vec<TargetNames>,
    ws_path: String,
}

struct TargetNames {
    server_name: ServerName<'static>,
    ws_host: String,
}

/// The TLS and WebSocket settings of a run (from the scenario's connection settings).
pub struct EdgeSettings<'a> {
    pub kind: TransportKind,
    pub ca_file: Option<&'a Path>,
    pub cert_file: Option<&'a Path>,
    pub key_file: Option<&'a Path>,
    /// Overrides the server name of every target (default: the host as written).
    pub server_name: Option<&'a str>,
    pub ws_path: &'a str,
}

fn read_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TransportError::Pem {
            what,
            path: path.to_path_buf(),
            problem: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TransportError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// A rustls client configuration: trusts the CA file, presents the client certificate if one
/// is given, and makes a full handshake on every connection (no session resumption: each
/// loadgen client stands for a different device, and a connection storm measures handshakes).
fn client_config(settings: &EdgeSettings<'_>) -> Result<ClientConfig, TransportError> {
    let ca_file = settings.ca_file.ok_or(TransportError::MissingCa {
        kind: settings.kind,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca_file, "CA file")? {
        roots.add(cert)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match (settings.cert_file, settings.key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert_file), Some(key_file)) => {
            let certs = read_certs(cert_file, "client certificate")?;
            let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TransportError::Pem {
                what: "client key",
                path: key_file.to_path_buf(),
                problem: e.to_string(),
            })?;
            builder.with_client_auth_cert(certs, key)?
        }
        _ => return Err(TransportError::HalfClientIdentity),
    };
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

fn server_name(name: &str) -> Result<ServerName<'static>, TransportError> {
    // "[::1]" as written for an endpoint is the address ::1.
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_owned()).map_err(|e| TransportError::ServerName {
        name: name.to_owned(),
        problem: e.to_string(),
    })
}

impl Edge {
    /// `hosts`: each target's host as written and its port, in the run's target order.
    pub fn new(
        settings: &EdgeSettings<'_>,
        hosts: &[(String, u16)],
    ) -> Result<Edge, TransportError> {
        let tls = if settings.kind.uses_tls() {
            Some(Arc::new(client_config(settings)?))
        } else {
            None
        };
        if settings.kind.uses_ws() && !settings.ws_path.starts_with('/') {
            return Err(TransportError::WsPath {
                path: settings.ws_path.to_owned(),
            });
        }
        let mut names = Vec::with_capacity(hosts.len());
        for (host, port) in hosts {
            let server_name = match settings.server_name {
                Some(name) => server_name(name)?,
                // Unused without TLS; any valid name will do.
                None if tls.is_none() => {
                    ServerName::try_from("localhost").map_err(|e| TransportError::ServerName {
                        name: "localhost".into(),
                        problem: e.to_string(),
                    })?
                }
                None => server_name(host)?,
            };
            let ws_host = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            names.push(TargetNames {
                server_name,
                ws_host,
            });
        }
        Ok(Edge {
            kind: settings.kind,
            tls,
            names,
            ws_path: settings.ws_path.to_owned(),
        })
    }

    /// Puts the run's layers over a freshly started TCP connection to target `target` and
    /// completes their handshakes (TLS, then the WebSocket upgrade). `seed` varies the
    /// WebSocket key and masks between clients.
    pub async fn open(&self, tcp: TcpStream, target: usize, seed: u64) -> io::Result<Stream> {
        let names = &self.names[target % self.names.len()];
        match (self.kind, &self.tls) {
            (TransportKind::Tcp, _) => Ok(Stream::Tcp(tcp)),
            (TransportKind::Ws, _) => {
                let ws = WsStream::connect(tcp, &names.ws_host, &self.ws_path, seed).await?;
                Ok(Stream::Ws(Box::new(ws)))
            }
            (TransportKind::Tls, Some(config)) => {
                let tls =
                    TlsStream::connect(tcp, config.clone(), names.server_name.clone()).await?;
                Ok(Stream::Tls(Box::new(tls)))
            }
            (TransportKind::Wss, Some(config)) => {
                let tls =
                    TlsStream::connect(tcp, config.clone(), names.server_name.clone()).await?;
                let ws = WsStream::connect(tls, &names.ws_host, &self.ws_path, seed).await?;
                Ok(Stream::Wss(Box::new(ws)))
            }
            // `Edge::new` sets `tls` for every kind that uses it.
            (TransportKind::Tls | TransportKind::Wss, None) => Err(io::Error::other(
                "tls transport without a tls configuration",
            )),
        }
    }
}

/// One client connection with its layers.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Ws(Box<WsStream<TcpStream>>),
    Wss(Box<WsStream<TlsStream<TcpStream>>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Wss(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Wss(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Wss(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
            Stream::Ws(s) => Pin::new(s.as_mut()).poll_close(cx),
            Stream::Wss(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

/// A rustls client session over an async byte stream.
///
/// Reading never writes: the reader and the writer of a client are separate tasks sharing this
/// stream, and a read that waited on the socket's write side would take the writer's wakeup.
/// Whatever a read makes rustls want to send (a key update answer) goes out with the next write.
pub struct TlsStream<S> {
    io: S,
    tls: ClientConnection,
}

/// Lends an async stream to rustls' blocking-style `read_tls`/`write_tls`: "would block" is
/// `Pending`, with the task's waker registered by the inner poll.
struct SyncIo<'a, 'b, S> {
    io: &'a mut S,
    cx: &'a mut Context<'b>,
}

impl<S: AsyncRead + Unpin> Read for SyncIo<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_read(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<S: AsyncWrite + Unpin> Write for SyncIo<'_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut *self.io).poll_flush(self.cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

fn pending_if_would_block<T>(result: io::Result<T>) -> Poll<io::Result<T>> {
    match result {
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        other => Poll::Ready(other),
    }
}

/// A rustls error as an I/O error that keeps it (the failure table names it, see
/// [`crate::net::io_reason`]).
fn tls_error(err: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Runs the handshake to its end (the client's Finished sent).
    pub async fn connect(
        io: S,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<Self> {
        let tls = ClientConnection::new(config, name).map_err(tls_error)?;
        let mut stream = TlsStream { io, tls };
        std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            while self.tls.wants_write() {
                ready!(self.poll_write_tls(cx))?;
            }
            if !self.tls.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if ready!(self.poll_read_tls(cx))? == 0 {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Reads TLS records from the socket and processes them. `Ok(0)`: the socket is closed.
    fn poll_read_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut sync = SyncIo {
            io: &mut self.io,
            cx,
        };
        let read = ready!(pending_if_would_block(self.tls.read_tls(&mut sync)))?;
        if let Err(err) = self.tls.process_new_packets() {
            // rustls queued an alert saying why; send it if the socket takes it now.
            let _ = self.tls.write_tls(&mut sync);
            return Poll::Ready(Err(tls_error(err)));
        }
        Poll::Ready(Ok(read))
    }

    fn poll_write_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut sync = SyncIo {
            io: &mut self.io,
            cx,
        };
        match ready!(pending_if_would_block(self.tls.write_tls(&mut sync)))? {
            0 => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            written => Poll::Ready(Ok(written)),
        }
    }

    /// Writes out every record rustls holds.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tls.wants_write() {
            ready!(self.poll_write_tls(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            match this.tls.reader().read(buf) {
                Ok(read) => return Poll::Ready(Ok(read)),
                // The socket closed without close_notify: for a load generator that is the
                // broker closing the connection, like a plain TCP end of stream.
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                    return Poll::Ready(Ok(0))
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Poll::Ready(Err(err)),
            }
            // rustls reports the end of the socket through `reader()` on the next turn.
            ready!(this.poll_read_tls(cx))?;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Earlier records first, so what rustls buffers stays within one write's worth.
        ready!(this.poll_drain(cx))?;
        let accepted = this.tls.writer().write(buf)?;
        // Push them now if the socket takes them; what it does not goes on the next write or
        // flush.
        if let Poll::Ready(Err(err)) = this.poll_drain(cx) {
            return Poll::Ready(Err(err));
        }
        Poll::Ready(Ok(accepted))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.tls.send_close_notify();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_close(cx)
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------------------------

/// xorshift64*: WebSocket keys and masks. RFC 6455 wants masks an intermediary cannot predict;
/// a load generator on loopback has no such intermediary, so a fast per-connection generator
/// seeded from the client index and the clock is enough.
struct MaskSource(u64);

impl MaskSource {
    fn new(seed: u64) -> MaskSource {
        let clock = crate::header::realtime_ns();
        MaskSource(crate::failover::mix64(seed ^ clock) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn mask(&mut self) -> [u8; 4] {
        let bytes = self.next().to_le_bytes();
        [bytes[0], bytes[1], bytes[2], bytes[3]]
    }
}

/// MQTT over WebSocket, client side: every write becomes masked binary frames, reads are the
/// payloads of the broker's binary frames (packets may span or share frames [MQTT-6.0.0-2]).
/// A ping is answered with the next write; a close frame is echoed and ends the stream.
pub struct WsStream<S> {
    io: S,
    decoder: FrameDecoder,
    /// Bytes from the socket not yet decoded (partial frame headers, control frames).
    raw: BytesMut,
    /// Decoded MQTT bytes the reader has not taken yet.
    mqtt: BytesMut,
    /// Frames not yet taken by the socket (at most one write's frames plus control answers).
    out: BytesMut,
    /// Socket read size, adapting like the client's own reads.
    chunk: usize,
    masks: MaskSource,
    /// Set once the broker's close frame arrived: reads end.
    closed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// The opening handshake: the Upgrade request for `path` offering `mqtt`, and a `101` that
    /// accepts our key and selects `mqtt` [MQTT-6.0.0-3], [MQTT-6.0.0-4].
    pub async fn connect(mut io: S, host: &str, path: &str, seed: u64) -> io::Result<Self> {
        let mut masks = MaskSource::new(seed);
        let mut nonce = [0u8; 16];
        nonce[..8].copy_from_slice(&masks.next().to_le_bytes());
        nonce[8..].copy_from_slice(&masks.next().to_le_bytes());
        let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, nonce);
        let mut request = BytesMut::with_capacity(256);
        ws::write_client_request(host, path, &key, &mut request);
        io.write_all(&request).await?;
        io.flush().await?;
        let mut raw = BytesMut::new();
        let head_len = loop {
            match ws::parse_response(&raw, &key) {
                Ok(Some(len)) => break len,
                Ok(None) => {}
                Err(err) => return Err(io::Error::new(io::ErrorKind::InvalidData, err)),
            }
            let filled = raw.len();
            raw.resize(filled + WS_RESPONSE_READ, 0);
            let read = io.read(&mut raw[filled..]).await?;
            raw.truncate(filled + read);
            if read == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        };
        // Frames the broker sent right behind its 101 stay in `raw`.
        raw.advance(head_len);
        Ok(WsStream {
            io,
            decoder: FrameDecoder::new_client_side(WS_MESSAGE_LEN_MAX),
            raw,
            mqtt: BytesMut::new(),
            out: BytesMut::new(),
            chunk: WS_READ_CHUNK_MIN,
            masks,
            closed: false,
        })
    }

    /// Decodes the frames in `raw`: data into `mqtt`, control frames answered into `out`.
    fn decode(&mut self) -> io::Result<()> {
        loop {
            let decoded = self
                .decoder
                .decode(&mut self.raw, &mut self.mqtt)
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
            match decoded {
                Decoded::NeedMore { .. } => return Ok(()),
                Decoded::Ping(payload) => {
                    let mask = self.masks.mask();
                    ws::encode_client_frame(true, ws::opcode::PONG, &payload, mask, &mut self.out);
                }
                Decoded::Pong(_) => {}
                Decoded::Close { code, .. } => {
                    let body = code.map(|code| code.0.to_be_bytes());
                    let mask = self.masks.mask();
                    ws::encode_client_frame(
                        true,
                        ws::opcode::CLOSE,
                        body.as_ref().map_or(&[][..], |b| &b[..]),
                        mask,
                        &mut self.out,
                    );
                    self.closed = true;
                    return Ok(());
                }
            }
        }
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let written = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.advance(written);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if !this.mqtt.is_empty() {
                let n = this.mqtt.len().min(buf.len());
                buf[..n].copy_from_slice(&this.mqtt[..n]);
                this.mqtt.advance(n);
                return Poll::Ready(Ok(n));
            }
            if this.closed {
                return Poll::Ready(Ok(0));
            }
            this.decode()?;
            if !this.mqtt.is_empty() || this.closed {
                continue;
            }
            let filled = this.raw.len();
            let want = this.chunk.max(buf.len().min(WS_READ_CHUNK_MAX));
            this.raw.resize(filled + want, 0);
            let polled = Pin::new(&mut this.io).poll_read(cx, &mut this.raw[filled..]);
            let read = match polled {
                Poll::Ready(Ok(read)) => read,
                other => {
                    this.raw.truncate(filled);
                    return other;
                }
            };
            this.raw.truncate(filled + read);
            if read == 0 {
                return Poll::Ready(Ok(0));
            }
            this.chunk = if read == want {
                (this.chunk * 2).min(WS_READ_CHUNK_MAX)
            } else {
                (this.chunk / 2).max(WS_READ_CHUNK_MIN)
            };
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        let take = buf.len().min(WS_FRAME_PAYLOAD_MAX);
        let mask = this.masks.mask();
        ws::encode_client_frame(true, ws::opcode::BINARY, &buf[..take], mask, &mut this.out);
        if let Poll::Ready(Err(err)) = this.poll_drain(cx) {
            return Poll::Ready(Err(err));
        }
        Poll::Ready(Ok(take))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closed {
            let mask = this.masks.mask();
            let body = ws::CloseCode::NORMAL.0.to_be_bytes();
            ws::encode_client_frame(true, ws::opcode::CLOSE, &body, mask, &mut this.out);
            this.closed = true;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_differ_between_frames_and_clients() {
        let mut a = MaskSource::new(1);
        let mut b = MaskSource::new(2);
        let first = a.mask();
        assert_ne!(first, a.mask());
        assert_ne!(a.mask(), b.mask());
    }

    #[test]
    fn transport_names_parse() {
        for (text, kind) in [
            ("tcp", TransportKind::Tcp),
            ("tls", TransportKind::Tls),
            ("ws", TransportKind::Ws),
            ("wss", TransportKind::Wss),
        ] {
            assert_eq!(text.parse::<TransportKind>(), Ok(kind));
        }
        assert!("quic".parse::<TransportKind>().is_err());
    }

    #[test]
    fn tls_without_a_ca_is_refused_at_start() {
        let settings = EdgeSettings {
            kind: TransportKind::Tls,
            ca_file: None,
            cert_file: None,
            key_file: None,
            server_name: None,
            ws_path: "/mqtt",
        };
        let err = Edge::new(&settings, &[("127.0.0.1".into(), 8883)]).err();
        assert!(matches!(err, Some(TransportError::MissingCa { .. })));
    }

    #[test]
    fn ws_host_header_brackets_ipv6() {
        let settings = EdgeSettings {
            kind: TransportKind::Ws,
            ca_file: None,
            cert_file: None,
            key_file: None,
            server_name: None,
            ws_path: "/mqtt",
        };
        let edge =
            Edge::new(&settings, &[("::1".into(), 8080), ("[::1]".into(), 8081)]).expect("ws edge");
        assert_eq!(edge.names[0].ws_host, "[::1]:8080");
        assert_eq!(edge.names[1].ws_host, "[::1]:8081");
    }
}
