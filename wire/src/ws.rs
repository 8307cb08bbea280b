//! Server side of RFC 6455 (WebSocket) for MQTT over WebSocket (MQTT 5.0 / 3.1.1 section 6).
//! No I/O, and no buffer of its own: everything works on byte buffers the caller owns.
//!
//! Two layers, used one after the other on a connection:
//! - the opening handshake: [`check_request`] finds the end of the HTTP/1.1 Upgrade request
//!   ("need more" is a normal outcome, the request is bounded by [`REQUEST_LEN_MAX`]),
//!   [`parse_request`] validates it and returns an [`UpgradeRequest`] whose
//!   [`write_response`](UpgradeRequest::write_response) writes the `101`; a refusal is a
//!   [`HandshakeError`] whose [`write_response`](HandshakeError::write_response) writes the
//!   400/404/426/431;
//!   clients (the load generator, tests) use [`write_client_request`] and [`parse_response`];
//! - frames: [`FrameDecoder`] turns the client's masked frames into the MQTT byte stream (the
//!   payloads of binary frames, concatenated: MQTT packets may span frames or share one
//!   [MQTT-6.0.0-2]) and reports ping/pong/close; [`encode_binary`] and friends write the
//!   server's unmasked frames.
//!
//! Not supported: extensions (permessage-deflate is never negotiated, so RSV bits stay 0) and
//! text frames (MQTT is binary only [MQTT-6.0.0-1]).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use sha1::{Digest, Sha1};
use thiserror::Error;

/// Longest opening handshake request accepted, request line and headers included. Browsers
/// send well under 2 KiB; cookies for the same origin are what makes requests big.
pub const REQUEST_LEN_MAX: usize = 8 * 1024;
/// Most header lines accepted in the opening handshake.
pub const REQUEST_HEADERS_MAX: usize = 64;
/// Largest payload of a control frame (RFC 6455 5.5).
pub const CONTROL_PAYLOAD_LEN_MAX: usize = 125;
/// Largest frame header: 2 bytes, 8 bytes of extended length, 4 bytes of mask.
pub const FRAME_HEADER_LEN_MAX: usize = 14;
/// A sensible [`FrameDecoder`] message bound when the listener sets none; MQTT's own packet
/// bound applies on top of it.
pub const MESSAGE_LEN_MAX_DEFAULT: u32 = 1024 * 1024;
/// Appended to the client's key before hashing (RFC 6455 1.3).
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Length of a `Sec-WebSocket-Accept` value: base64 of a 20-byte SHA-1.
pub const ACCEPT_KEY_LEN: usize = 28;

const _: () = assert!(CONTROL_PAYLOAD_LEN_MAX + FRAME_HEADER_LEN_MAX < REQUEST_LEN_MAX);

// ---------------------------------------------------------------------------------------------
// Opening handshake
// ---------------------------------------------------------------------------------------------

/// Result of [`check_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// The end of the request has not arrived. Pass `scanned_len` to the next call so the bytes
    /// already searched are not searched again.
    Incomplete { scanned_len: usize },
    /// The buffer starts with a whole request of `request_len` bytes (its blank line included).
    /// Bytes after it are already WebSocket frames.
    Complete { request_len: usize },
}

/// Finds the blank line that ends the HTTP request at the start of `buf`. `scanned_len` is the
/// value the previous call returned (0 the first time). Refuses a request that does not start
/// with `GET ` as soon as that is visible, and one longer than [`REQUEST_LEN_MAX`].
pub fn check_request(buf: &[u8], scanned_len: usize) -> Result<RequestFraming, HandshakeError> {
    const METHOD: &[u8] = b"GET ";
    let prefix_len = buf.len().min(METHOD.len());
    if buf[..prefix_len] != METHOD[..prefix_len] {
        return Err(HandshakeError::MethodNotGet);
    }
    // The terminator may straddle the previous call's end.
    let from = scanned_len.saturating_sub(3).min(buf.len());
    let window = &buf[..buf.len().min(REQUEST_LEN_MAX)];
    match find(&window[from.min(window.len())..], b"\r\n\r\n") {
        Some(at) => Ok(RequestFraming::Complete {
            request_len: from + at + 4,
        }),
        None if buf.len() >= REQUEST_LEN_MAX => Err(HandshakeError::RequestTooLarge {
            limit: REQUEST_LEN_MAX,
        }),
        None => Ok(RequestFraming::Incomplete {
            scanned_len: buf.len(),
        }),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What the listener accepts.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeConfig<'a> {
    /// The request path (without query string) the listener serves, e.g. `/mqtt`.
    pub path: &'a str,
}

/// The MQTT WebSocket subprotocols (MQTT 5.0 / 3.1.1 section 6; 3.1 used `mqttv3.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subprotocol {
    Mqtt,
    MqttV31,
}

impl Subprotocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Subprotocol::Mqtt => "mqtt",
            Subprotocol::MqttV31 => "mqttv3.1",
        }
    }

    fn from_token(token: &str) -> Option<Self> {
        // Subprotocol names are compared exactly: the client checks the reply against its offer.
        match token {
            "mqtt" => Some(Subprotocol::Mqtt),
            "mqttv3.1" => Some(Subprotocol::MqttV31),
            _ => None,
        }
    }
}

/// A valid Upgrade request. Borrows the request bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest<'a> {
    /// Request target as sent, query string included.
    pub target: &'a str,
    pub host: &'a str,
    /// The first subprotocol the client offered that we speak; `None` when it offered none
    /// (accepted: some MQTT clients omit the header).
    pub subprotocol: Option<Subprotocol>,
    /// `Origin` (browsers send it; the listener may check it against an allow-list).
    pub origin: Option<&'a str>,
    /// `X-Forwarded-For` as sent, for a listener behind an HTTP proxy that trusts it.
    pub forwarded_for: Option<&'a str>,
    /// `Sec-WebSocket-Accept` value for the reply.
    accept_key: [u8; ACCEPT_KEY_LEN],
}

impl UpgradeRequest<'_> {
    /// The `Sec-WebSocket-Accept` value (RFC 6455 4.2.2 item 5.4).
    pub fn accept_key(&self) -> &str {
        // Base64 output is ASCII.
        std::str::from_utf8(&self.accept_key).unwrap_or_default()
    }

    /// Appends the `101 Switching Protocols` response.
    pub fn write_response(&self, out: &mut BytesMut) {
        out.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
        );
        out.extend_from_slice(b"Sec-WebSocket-Accept: ");
        out.extend_from_slice(&self.accept_key);
        out.extend_from_slice(b"\r\n");
        if let Some(subprotocol) = self.subprotocol {
            out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
            out.extend_from_slice(subprotocol.as_str().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// `base64(SHA-1(key + GUID))` (RFC 6455 1.3), `key` being the `Sec-WebSocket-Key` value.
pub fn accept_key(key: &[u8]) -> [u8; ACCEPT_KEY_LEN] {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(ACCEPT_GUID);
    let digest = sha1.finalize();
    let mut out = [0u8; ACCEPT_KEY_LEN];
    // 20 bytes always encode to exactly 28; a short write would leave zeros, never panic.
    let _ = BASE64.encode_slice(digest, &mut out);
    out
}

/// Why an opening handshake is refused. [`status`](Self::status) is the HTTP status to answer
/// with; then close the connection.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("request is longer than {limit} bytes")]
    RequestTooLarge { limit: usize },
    #[error("request has more than {limit} header lines")]
    TooManyHeaders { limit: usize },
    #[error("websocket handshake must be a GET request")]
    MethodNotGet,
    #[error("malformed http request: {reason}")]
    Malformed { reason: &'static str },
    #[error("websocket handshake needs HTTP/1.1")]
    HttpVersion,
    #[error("request has no Host header")]
    MissingHost,
    #[error("no websocket endpoint at this path")]
    PathNotFound,
    #[error("request is not a websocket upgrade (Upgrade: websocket and Connection: Upgrade)")]
    NotUpgrade,
    #[error("unsupported Sec-WebSocket-Version (only 13 is)")]
    UnsupportedVersion,
    #[error("missing or invalid Sec-WebSocket-Key")]
    BadKey,
    #[error("header {name} given more than once")]
    DuplicateHeader { name: &'static str },
    #[error("client offers no subprotocol this server speaks (mqtt, mqttv3.1)")]
    NoSubprotocol,
}

impl HandshakeError {
    /// HTTP status code of the refusal.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::RequestTooLarge { .. } | HandshakeError::TooManyHeaders { .. } => 431,
            HandshakeError::PathNotFound => 404,
            HandshakeError::NotUpgrade | HandshakeError::UnsupportedVersion => 426,
            _ => 400,
        }
    }

    /// Appends the refusal response; the connection is to be closed after it is written.
    pub fn write_response(&self, out: &mut BytesMut) {
        let status_line: &[u8] = match self.status() {
            431 => b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
            404 => b"HTTP/1.1 404 Not Found\r\n",
            426 => b"HTTP/1.1 426 Upgrade Required\r\n",
            _ => b"HTTP/1.1 400 Bad Request\r\n",
        };
        out.extend_from_slice(status_line);
        if self.status() == 426 {
            // RFC 6455 4.4: tell the client which version we speak.
            out.extend_from_slice(
                b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
            );
        }
        out.extend_from_slice(b"Content-Length: 0\r\nConnection: close\r\n\r\n");
    }
}

/// Validates an Upgrade request (RFC 6455 4.2.1); `request` is `&buf[..request_len]` from
/// [`check_request`].
pub fn parse_request<'a>(
    request: &'a [u8],
    config: &HandshakeConfig<'_>,
) -> Result<UpgradeRequest<'a>, HandshakeError> {
    if !request.ends_with(b"\r\n\r\n") {
        return Err(HandshakeError::Malformed {
            reason: "request does not end with a blank line",
        });
    }
    // Without the final LF, the last line is the blank line's lone CR.
    let head = &request[..request.len() - 1];
    // Every line, the last included, ends in CRLF; a bare LF is refused (no smuggling).
    let mut lines = head.split(|&b| b == b'\n').map(|line| {
        line.strip_suffix(b"\r").ok_or(HandshakeError::Malformed {
            reason: "line ends in a bare LF",
        })
    });
    let request_line = lines.next().unwrap_or(Ok(b""))?;
    let target = parse_request_line(request_line)?;
    let mut headers = Headers::default();
    for (count, line) in lines.enumerate() {
        let line = line?;
        // The blank line that ends the head.
        if line.is_empty() {
            break;
        }
        if count >= REQUEST_HEADERS_MAX {
            return Err(HandshakeError::TooManyHeaders {
                limit: REQUEST_HEADERS_MAX,
            });
        }
        headers.add(line)?;
    }
    let host = headers.host.ok_or(HandshakeError::MissingHost)?;
    if request_path(target) != config.path {
        return Err(HandshakeError::PathNotFound);
    }
    if !headers.upgrade_websocket || !headers.connection_upgrade {
        return Err(HandshakeError::NotUpgrade);
    }
    if headers.version != Some("13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = headers.key.ok_or(HandshakeError::BadKey)?;
    // "a base64-encoded value that, when decoded, is 16 bytes in length" (4.2.1 item 5).
    let mut decoded = [0u8; 18];
    match BASE64.decode_slice(key, &mut decoded) {
        Ok(16) if key.len() == 24 => {}
        _ => return Err(HandshakeError::BadKey),
    }
    if headers.protocol_offered && headers.subprotocol.is_none() {
        return Err(HandshakeError::NoSubprotocol);
    }
    Ok(UpgradeRequest {
        target,
        host,
        subprotocol: headers.subprotocol,
        origin: headers.origin,
        forwarded_for: headers.forwarded_for,
        accept_key: accept_key(key.as_bytes()),
    })
}

/// `GET <target> HTTP/1.1` -> target.
fn parse_request_line(line: &[u8]) -> Result<&str, HandshakeError> {
    let line = std::str::from_utf8(line).map_err(|_| HandshakeError::Malformed {
        reason: "request line is not utf-8",
    })?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HandshakeError::Malformed {
            reason: "request line is not `method target version`",
        });
    };
    if method != "GET" {
        return Err(HandshakeError::MethodNotGet);
    }
    if version != "HTTP/1.1" {
        return Err(HandshakeError::HttpVersion);
    }
    if target.is_empty() || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(HandshakeError::Malformed {
            reason: "bad request target",
        });
    }
    Ok(target)
}

/// Path of an origin-form (`/mqtt?x`) or absolute-form (`ws://host/mqtt`) target.
fn request_path(target: &str) -> &str {
    let without_query = target.split(['?', '#']).next().unwrap_or_default();
    match without_query.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |at| &rest[at..]),
        None => without_query,
    }
}

/// The headers the handshake looks at, gathered over all lines.
#[derive(Default)]
struct Headers<'a> {
    host: Option<&'a str>,
    key: Option<&'a str>,
    version: Option<&'a str>,
    origin: Option<&'a str>,
    forwarded_for: Option<&'a str>,
    upgrade_websocket: bool,
    connection_upgrade: bool,
    /// Set when any Sec-WebSocket-Protocol header was sent, even one we cannot use.
    protocol_offered: bool,
    /// The first offered subprotocol we speak, in the client's order.
    subprotocol: Option<Subprotocol>,
}

impl<'a> Headers<'a> {
    /// Takes one header line (without its CRLF). Values may hold any non-control bytes
    /// (RFC 9110 obs-text, e.g. UTF-8 cookies); only the values used here must be UTF-8.
    fn add(&mut self, line: &'a [u8]) -> Result<(), HandshakeError> {
        // RFC 9110 5.5: obsolete line folding may be refused; refusing it avoids smuggling.
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            return Err(HandshakeError::Malformed {
                reason: "obsolete line folding",
            });
        }
        let colon = line.iter().position(|&b| b == b':');
        let Some(colon) = colon else {
            return Err(HandshakeError::Malformed {
                reason: "header line without a colon",
            });
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().copied().all(is_token_byte) {
            return Err(HandshakeError::Malformed {
                reason: "bad header name",
            });
        }
        if value
            .iter()
            .any(|&b| (b.is_ascii_control() && b != b'\t') || b == 0x7F)
        {
            return Err(HandshakeError::Malformed {
                reason: "control character in a header value",
            });
        }
        // Token characters are ASCII, so the name is UTF-8.
        let name = std::str::from_utf8(name).unwrap_or_default();
        const USED: [&str; 8] = [
            "host",
            "sec-websocket-key",
            "sec-websocket-version",
            "origin",
            "x-forwarded-for",
            "upgrade",
            "connection",
            "sec-websocket-protocol",
        ];
        if !USED.iter().any(|used| name.eq_ignore_ascii_case(used)) {
            return Ok(());
        }
        let value = std::str::from_utf8(value).map_err(|_| HandshakeError::Malformed {
            reason: "websocket header value is not utf-8",
        })?;
        let value = value.trim_matches([' ', '\t']);
        let is = |wanted: &str| name.eq_ignore_ascii_case(wanted);
        if is("host") {
            set_once(&mut self.host, value, "Host")?;
        } else if is("sec-websocket-key") {
            set_once(&mut self.key, value, "Sec-WebSocket-Key")?;
        } else if is("sec-websocket-version") {
            set_once(&mut self.version, value, "Sec-WebSocket-Version")?;
        } else if is("origin") {
            set_once(&mut self.origin, value, "Origin")?;
        } else if is("x-forwarded-for") {
            // Several proxies may each have appended a line; the first is the client's side.
            self.forwarded_for.get_or_insert(value);
        } else if is("upgrade") {
            self.upgrade_websocket |= tokens(value).any(|t| t.eq_ignore_ascii_case("websocket"));
        } else if is("connection") {
            self.connection_upgrade |= tokens(value).any(|t| t.eq_ignore_ascii_case("upgrade"));
        } else if is("sec-websocket-protocol") {
            self.protocol_offered = true;
            if self.subprotocol.is_none() {
                self.subprotocol = tokens(value).find_map(Subprotocol::from_token);
            }
        }
        Ok(())
    }
}

fn set_once<'a>(
    slot: &mut Option<&'a str>,
    value: &'a str,
    name: &'static str,
) -> Result<(), HandshakeError> {
    if slot.replace(value).is_some() {
        return Err(HandshakeError::DuplicateHeader { name });
    }
    Ok(())
}

/// Elements of a comma-separated header value, empty elements skipped (RFC 9110 5.6.1).
fn tokens(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(',')
        .map(|t| t.trim_matches([' ', '\t']))
        .filter(|t| !t.is_empty())
}

/// `tchar` of RFC 9110 5.6.2.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

// ---------------------------------------------------------------------------------------------
// Client side of the opening handshake (load generators, tests)
// ---------------------------------------------------------------------------------------------

/// Appends an Upgrade request offering the `mqtt` subprotocol. `key` is the base64 of 16 random
/// bytes (RFC 6455 4.1 item 7), chosen fresh per connection by the caller.
pub fn write_client_request(host: &str, path: &str, key: &str, out: &mut BytesMut) {
    for part in [
        "GET ",
        path,
        " HTTP/1.1\r\nHost: ",
        host,
        "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
        "Sec-WebSocket-Protocol: mqtt\r\nSec-WebSocket-Key: ",
        key,
        "\r\n\r\n",
    ] {
        out.extend_from_slice(part.as_bytes());
    }
}

/// Why a server's answer to the Upgrade request is not an accepted WebSocket.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ClientHandshakeError {
    #[error("response head is longer than {limit} bytes")]
    ResponseTooLarge { limit: usize },
    #[error("malformed http response")]
    Malformed,
    #[error("server refused the upgrade with status {status}")]
    Refused { status: u16 },
    #[error("Sec-WebSocket-Accept missing or not the one for our key")]
    BadAccept,
    #[error("server selected no subprotocol or one we did not offer")]
    BadSubprotocol,
}

/// Checks the server's response to [`write_client_request`] with `key`. `Ok(None)`: the head
/// has not fully arrived; `Ok(Some(len))`: a valid `101` of `len` bytes, frames follow.
pub fn parse_response(buf: &[u8], key: &str) -> Result<Option<usize>, ClientHandshakeError> {
    let window = &buf[..buf.len().min(REQUEST_LEN_MAX)];
    let Some(at) = find(window, b"\r\n\r\n") else {
        if buf.len() >= REQUEST_LEN_MAX {
            return Err(ClientHandshakeError::ResponseTooLarge {
                limit: REQUEST_LEN_MAX,
            });
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..at]).map_err(|_| ClientHandshakeError::Malformed)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let status = match (parts.next(), parts.next()) {
        (Some("HTTP/1.1"), Some(code)) => code
            .parse::<u16>()
            .map_err(|_| ClientHandshakeError::Malformed)?,
        _ => return Err(ClientHandshakeError::Malformed),
    };
    if status != 101 {
        return Err(ClientHandshakeError::Refused { status });
    }
    let expected = accept_key(key.as_bytes());
    let (mut accept_ok, mut subprotocol_ok) = (false, false);
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or(ClientHandshakeError::Malformed)?;
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("sec-websocket-accept") {
            accept_ok = value.as_bytes() == expected;
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            subprotocol_ok = value == Subprotocol::Mqtt.as_str();
        }
    }
    if !accept_ok {
        return Err(ClientHandshakeError::BadAccept);
    }
    // [MQTT-6.0.0-4]: the server selects "mqtt".
    if !subprotocol_ok {
        return Err(ClientHandshakeError::BadSubprotocol);
    }
    Ok(Some(at + 4))
}

// ---------------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------------

/// Frame opcodes (RFC 6455 5.2).
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// A close status code (RFC 6455 7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    pub const NORMAL: CloseCode = CloseCode(1000);
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);

    /// Whether a peer may send this code in a close frame (7.4.1, 7.4.2, and the IANA registry:
    /// 1004-1006 and 1015 are reserved, below 1000 and 1016-2999 unassigned).
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// A frame that is a protocol violation. Answer with a close frame carrying
/// [`close_code`](Self::close_code), then close the connection.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("client frame is not masked")]
    Unmasked,
    #[error("server frame is masked")]
    Masked,
    #[error("reserved bits set ({bits:#x}) without a negotiated extension")]
    ReservedBits { bits: u8 },
    #[error("reserved opcode {opcode:#x}")]
    ReservedOpcode { opcode: u8 },
    #[error("text frame; mqtt over websocket is binary only")]
    TextFrame,
    #[error("fragmented control frame")]
    ControlFragmented,
    #[error("control frame payload of {len} bytes (at most 125)")]
    ControlTooLong { len: u64 },
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    #[error("new data frame while a fragmented message is unfinished")]
    ExpectedContinuation,
    #[error("payload length not in its minimal encoding")]
    NonMinimalLength,
    #[error("64-bit payload length with its most significant bit set")]
    LengthHighBit,
    #[error("message of at least {size} bytes exceeds the limit of {limit}")]
    MessageTooBig { limit: u32, size: u64 },
    #[error("close frame with a 1-byte payload")]
    CloseTooShort,
    #[error("close frame with invalid status code {code}")]
    InvalidCloseCode { code: u16 },
    #[error("close frame reason is not utf-8")]
    CloseReasonNotUtf8,
    #[error("data after the peer's close frame")]
    DataAfterClose,
}

impl FrameError {
    /// Status code for the close frame to answer with.
    pub fn close_code(&self) -> CloseCode {
        match self {
            FrameError::TextFrame => CloseCode::UNSUPPORTED_DATA,
            FrameError::MessageTooBig { .. } => CloseCode::MESSAGE_TOO_BIG,
            FrameError::CloseReasonNotUtf8 => CloseCode::INVALID_PAYLOAD,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

/// What [`FrameDecoder::decode`] stopped at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// Everything usable in the input was consumed (data payloads went to the MQTT buffer).
    /// The input must hold at least `needed_at_least` bytes before another call makes progress.
    NeedMore { needed_at_least: usize },
    /// Answer with a pong carrying the same payload ([`encode_pong`]), then call again.
    Ping(Bytes),
    /// Unsolicited or answering; nothing to do (RFC 6455 5.5.3). Call again.
    Pong(Bytes),
    /// The peer starts the closing handshake: answer with [`encode_close`] (echoing `code`),
    /// then close the connection. Any further input is an error.
    Close {
        code: Option<CloseCode>,
        reason: Bytes,
    },
}

/// Incremental decoder of client frames. Its whole state is the position in the current data
/// frame and message; partial frame headers and unfinished control frames stay in the caller's
/// input buffer, so an idle connection holds no buffer at all. 20 bytes.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    /// Payload bytes of the current data frame still to arrive; 0 between frames.
    remaining: u32,
    /// Payload bytes of the current (possibly fragmented) message so far, this frame included.
    message_len: u32,
    /// Bound on a whole message; larger ones are refused with 1009.
    message_len_max: u32,
    /// Mask of the current data frame, rotated so that `mask[0]` applies to the next byte.
    mask: [u8; 4],
    /// [`IN_MESSAGE`], [`CLOSED`] and [`CLIENT_SIDE`] bits.
    flags: u8,
}

/// Set while a fragmented message has started and its final frame has not arrived.
const IN_MESSAGE: u8 = 1;
/// Set once the peer's close frame was reported.
const CLOSED: u8 = 2;
/// Set for a client's decoder of server frames, which must not be masked (RFC 6455 5.1).
const CLIENT_SIDE: u8 = 4;

const _: () = assert!(std::mem::size_of::<FrameDecoder>() <= 20);

/// A parsed frame header.
#[derive(Debug, Clone, Copy)]
struct Header {
    fin: bool,
    opcode: u8,
    header_len: usize,
    payload_len: u64,
    mask: [u8; 4],
}

impl FrameDecoder {
    /// `message_len_max` bounds one message (all fragments together).
    pub fn new(message_len_max: u32) -> Self {
        FrameDecoder {
            remaining: 0,
            message_len: 0,
            message_len_max,
            mask: [0; 4],
            flags: 0,
        }
    }

    /// A client's decoder of server frames (load generators, tests): frames must be unmasked.
    pub fn new_client_side(message_len_max: u32) -> Self {
        FrameDecoder {
            flags: CLIENT_SIDE,
            ..FrameDecoder::new(message_len_max)
        }
    }

    /// Consumes frames from the front of `input` (raw bytes from the socket), appends the
    /// unmasked payload of binary frames to `mqtt`, and stops at the first control frame or when
    /// `input` holds no further whole header or control frame. Call in a loop until
    /// [`Decoded::NeedMore`]; on an error, answer with a close frame and close.
    pub fn decode(
        &mut self,
        input: &mut BytesMut,
        mqtt: &mut BytesMut,
    ) -> Result<Decoded, FrameError> {
        loop {
            if self.flags & CLOSED != 0 {
                if input.is_empty() {
                    return Ok(Decoded::NeedMore { needed_at_least: 1 });
                }
                return Err(FrameError::DataAfterClose);
            }
            if self.remaining > 0 {
                if input.is_empty() {
                    return Ok(Decoded::NeedMore { needed_at_least: 1 });
                }
                self.copy_payload(input, mqtt);
                continue;
            }
            let header = match parse_header(input, self.flags & CLIENT_SIDE == 0)? {
                Ok(header) => header,
                Err(needed_at_least) => return Ok(Decoded::NeedMore { needed_at_least }),
            };
            if header.opcode & 0x8 != 0 {
                return self.control_frame(header, input);
            }
            self.start_data_frame(header)?;
            input.advance(header.header_len);
        }
    }

    /// Whether the decoder is between messages (no fragmented message is open, no frame
    /// payload pending): a clean place to stop reading.
    pub fn is_idle(&self) -> bool {
        self.remaining == 0 && self.flags & IN_MESSAGE == 0
    }

    fn copy_payload(&mut self, input: &mut BytesMut, mqtt: &mut BytesMut) {
        let n = input.len().min(self.remaining as usize);
        let start = mqtt.len();
        mqtt.extend_from_slice(&input[..n]);
        input.advance(n);
        self.mask = apply_mask(&mut mqtt[start..], self.mask);
        // n <= remaining, which is a u32.
        self.remaining -= n as u32;
    }

    fn start_data_frame(&mut self, header: Header) -> Result<(), FrameError> {
        let in_message = self.flags & IN_MESSAGE != 0;
        match header.opcode {
            opcode::CONTINUATION if !in_message => return Err(FrameError::UnexpectedContinuation),
            opcode::BINARY if in_message => return Err(FrameError::ExpectedContinuation),
            // Checked after the fragmentation rules: a text frame anywhere is unsupported data.
            opcode::TEXT if !in_message => return Err(FrameError::TextFrame),
            opcode::TEXT => return Err(FrameError::ExpectedContinuation),
            _ => {}
        }
        let size = u64::from(self.message_len) + header.payload_len;
        if size > u64::from(self.message_len_max) {
            return Err(FrameError::MessageTooBig {
                limit: self.message_len_max,
                size,
            });
        }
        // Both fit: size <= message_len_max, a u32.
        self.remaining = header.payload_len as u32;
        self.message_len = size as u32;
        self.mask = header.mask;
        if header.fin {
            self.flags &= !IN_MESSAGE;
            self.message_len = 0;
        } else {
            self.flags |= IN_MESSAGE;
        }
        Ok(())
    }

    fn control_frame(
        &mut self,
        header: Header,
        input: &mut BytesMut,
    ) -> Result<Decoded, FrameError> {
        // payload_len <= 125 was checked by parse_header.
        let frame_len = header.header_len + header.payload_len as usize;
        if input.len() < frame_len {
            return Ok(Decoded::NeedMore {
                needed_at_least: frame_len,
            });
        }
        input.advance(header.header_len);
        let mut payload = input.split_to(header.payload_len as usize);
        apply_mask(&mut payload, header.mask);
        let payload = payload.freeze();
        match header.opcode {
            opcode::PING => Ok(Decoded::Ping(payload)),
            opcode::PONG => Ok(Decoded::Pong(payload)),
            _ => {
                let decoded = parse_close(payload)?;
                self.flags |= CLOSED;
                Ok(decoded)
            }
        }
    }
}

/// Parses the header at the front of `input`. `Ok(Err(n))`: `input` must hold `n` bytes first.
/// Rules that the first two bytes decide are checked before the rest has arrived.
fn parse_header(input: &[u8], masked: bool) -> Result<Result<Header, usize>, FrameError> {
    let Some(&first) = input.first() else {
        return Ok(Err(2));
    };
    let fin = first & 0x80 != 0;
    let reserved = first & 0x70;
    let opcode = first & 0x0F;
    if reserved != 0 {
        return Err(FrameError::ReservedBits { bits: reserved });
    }
    if !matches!(opcode, 0x0..=0x2 | 0x8..=0xA) {
        return Err(FrameError::ReservedOpcode { opcode });
    }
    let is_control = opcode & 0x8 != 0;
    if is_control && !fin {
        return Err(FrameError::ControlFragmented);
    }
    let Some(&second) = input.get(1) else {
        return Ok(Err(2));
    };
    match (second & 0x80 != 0, masked) {
        (false, true) => return Err(FrameError::Unmasked),
        (true, false) => return Err(FrameError::Masked),
        _ => {}
    }
    let length_code = second & 0x7F;
    let length_bytes = match length_code {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    if is_control && length_code > CONTROL_PAYLOAD_LEN_MAX as u8 {
        return Err(FrameError::ControlTooLong {
            len: u64::from(length_code),
        });
    }
    let header_len = 2 + length_bytes + if masked { 4 } else { 0 };
    let Some(header) = input.get(..header_len) else {
        return Ok(Err(header_len));
    };
    let payload_len = match length_bytes {
        2 => {
            let len = u64::from(u16::from_be_bytes([header[2], header[3]]));
            if len < 126 {
                return Err(FrameError::NonMinimalLength);
            }
            len
        }
        8 => {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&header[2..10]);
            let len = u64::from_be_bytes(bytes);
            if len >> 63 != 0 {
                return Err(FrameError::LengthHighBit);
            }
            if len <= u64::from(u16::MAX) {
                return Err(FrameError::NonMinimalLength);
            }
            len
        }
        _ => u64::from(length_code),
    };
    let mut mask = [0u8; 4];
    // An all-zero mask leaves the payload as it is: that is how unmasked frames are read.
    if masked {
        mask.copy_from_slice(&header[header_len - 4..header_len]);
    }
    Ok(Ok(Header {
        fin,
        opcode,
        header_len,
        payload_len,
        mask,
    }))
}

/// Close frame body: nothing, or a 2-byte code and a UTF-8 reason (RFC 6455 5.5.1).
fn parse_close(payload: Bytes) -> Result<Decoded, FrameError> {
    match payload.len() {
        0 => Ok(Decoded::Close {
            code: None,
            reason: Bytes::new(),
        }),
        1 => Err(FrameError::CloseTooShort),
        _ => {
            let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
            if !code.is_valid_on_wire() {
                return Err(FrameError::InvalidCloseCode { code: code.0 });
            }
            let reason = payload.slice(2..);
            if std::str::from_utf8(&reason).is_err() {
                return Err(FrameError::CloseReasonNotUtf8);
            }
            Ok(Decoded::Close {
                code: Some(code),
                reason,
            })
        }
    }
}

/// XORs `buf` with `mask` (`mask[0]` applies to `buf[0]`) and returns the mask rotated for the byte
/// after `buf`. Masking and unmasking are the same operation (RFC 6455 5.3).
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4]) -> [u8; 4] {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // Chunks of 8 keep the mask aligned, so the tail starts at mask[0].
    let tail = chunks.into_remainder();
    for (i, byte) in tail.iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
    let mut rotated = mask;
    rotated.rotate_left(buf.len() % 4);
    rotated
}

/// Bytes a frame header takes for a payload of `payload_len` bytes.
pub fn frame_header_len(payload_len: usize, masked: bool) -> usize {
    let length_bytes = match payload_len {
        0..=125 => 0,
        126..=0xFFFF => 2,
        _ => 8,
    };
    2 + length_bytes + if masked { 4 } else { 0 }
}

/// Appends a frame header. `mask` is `None` for server frames (RFC 6455 5.1: a server must not
/// mask) and `Some` for client frames, whose payload the caller must then mask with
/// [`apply_mask`].
pub fn encode_frame_header(
    fin: bool,
    opcode: u8,
    payload_len: usize,
    mask: Option<[u8; 4]>,
    out: &mut BytesMut,
) {
    out.reserve(frame_header_len(payload_len, mask.is_some()));
    out.put_u8(if fin { 0x80 } else { 0 } | (opcode & 0x0F));
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload_len {
        // The match arms bound the casts.
        0..=125 => out.put_u8(mask_bit | payload_len as u8),
        126..=0xFFFF => {
            out.put_u8(mask_bit | 126);
            out.put_u16(payload_len as u16);
        }
        _ => {
            out.put_u8(mask_bit | 127);
            out.put_u64(payload_len as u64);
        }
    }
    if let Some(mask) = mask {
        out.extend_from_slice(&mask);
    }
}

/// Appends one unmasked binary frame carrying `payload` (MQTT bytes; any number of packets or
/// part of one). For zero-copy fan-out write [`encode_frame_header`] and send the payload from
/// its own buffer.
pub fn encode_binary(payload: &[u8], out: &mut BytesMut) {
    encode_frame_header(true, opcode::BINARY, payload.len(), None, out);
    out.extend_from_slice(payload);
}

/// Appends a pong answering a ping with `payload` (at most 125 bytes, as the decoder enforces;
/// a longer one is cut so the frame stays valid).
pub fn encode_pong(payload: &[u8], out: &mut BytesMut) {
    let payload = &payload[..payload.len().min(CONTROL_PAYLOAD_LEN_MAX)];
    encode_frame_header(true, opcode::PONG, payload.len(), None, out);
    out.extend_from_slice(payload);
}

/// Appends a close frame: with no body when `code` is `None`, else the code and `reason`, the
/// reason cut at a character boundary to fit in 123 bytes.
pub fn encode_close(code: Option<CloseCode>, reason: &str, out: &mut BytesMut) {
    let Some(code) = code else {
        encode_frame_header(true, opcode::CLOSE, 0, None, out);
        return;
    };
    let mut reason_len = reason.len().min(CONTROL_PAYLOAD_LEN_MAX - 2);
    while !reason.is_char_boundary(reason_len) {
        reason_len -= 1;
    }
    encode_frame_header(true, opcode::CLOSE, 2 + reason_len, None, out);
    out.put_u16(code.0);
    out.extend_from_slice(&reason.as_bytes()[..reason_len]);
}

/// Appends a client frame (masked, as clients must): for load generators and tests.
pub fn encode_client_frame(
    fin: bool,
    opcode: u8,
    payload: &[u8],
    mask: [u8; 4],
    out: &mut BytesMut,
) {
    encode_frame_header(fin, opcode, payload.len(), Some(mask), out);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// Feeds `data` to a decoder in one piece and answers as a server would, returning the MQTT
/// bytes and the replies. The body of the `ws_frames` fuzz target; also run by the tests.
/// Never panics on any input.
pub fn decode_all(data: &[u8], message_len_max: u32) -> (BytesMut, BytesMut, Option<FrameError>) {
    let mut decoder = FrameDecoder::new(message_len_max);
    let mut input = BytesMut::from(data);
    let mut mqtt = BytesMut::new();
    let mut replies = BytesMut::new();
    loop {
        match decoder.decode(&mut input, &mut mqtt) {
            Ok(Decoded::NeedMore { .. }) => return (mqtt, replies, None),
            Ok(Decoded::Ping(payload)) => encode_pong(&payload, &mut replies),
            Ok(Decoded::Pong(_)) => {}
            Ok(Decoded::Close { code, .. }) => {
                encode_close(code, "", &mut replies);
                return (mqtt, replies, None);
            }
            Err(error) => {
                encode_close(Some(error.close_code()), "", &mut replies);
                return (mqtt, replies, Some(error));
            }
        }
    }
}
