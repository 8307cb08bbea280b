//! PROXY protocol v1 (text) and v2 (binary) headers, as sent by HAProxy and cloud load balancers
//! in front of a listener (haproxy `doc/proxy-protocol.txt`). No I/O.
//!
//! Two-phase like [`crate::check`]: [`check`] looks at the first bytes of a connection and says
//! "need N more bytes" or "the header is `header_len` bytes and carried this [`ProxyInfo`]". The
//! bytes after the header are MQTT (or a WebSocket handshake). The address parsing itself is the
//! `ppp` crate's; this module adds the framing, the length bounds, early rejection of anything
//! that cannot become a header, and a small owned result.
//!
//! Whether a header is *required* and which peers may send one is the listener's policy, not
//! this module's.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use thiserror::Error;

/// Longest v1 line including its CRLF ("PROXY UNKNOWN" with two full IPv6 addresses).
pub const V1_HEADER_LEN_MAX: usize = 107;
/// Fixed part of a v2 header: 12-byte signature, version/command, family/protocol, length.
pub const V2_FIXED_LEN: usize = 16;
/// Longest v2 header accepted (fixed part + addresses + TLVs). The format allows 16 + 65535;
/// load balancers send well under this (AWS NLB and HAProxy with SSL TLVs stay below ~300
/// bytes), and a connection should not make us wait for 64 KiB before its first MQTT byte.
pub const V2_HEADER_LEN_MAX: usize = 1024;
/// The v2 signature (section 2.2).
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";

// Every v2 header with IPv6 addresses must fit, or the bound would refuse valid peers.
const _: () = assert!(V2_HEADER_LEN_MAX >= V2_FIXED_LEN + 216);

/// Which header versions a listener accepts (`proxy_protocol = "v1" | "v2" | "any"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    V1,
    V2,
    /// Either, told apart by the first byte (section 2.3 of the spec).
    Any,
}

/// Header version that was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
}

/// What the proxy says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyCommand {
    /// A relayed client connection; `source` is the client as the proxy saw it.
    Proxy,
    /// The proxy's own connection (health check, v2 LOCAL): use the socket's addresses.
    Local,
}

/// Transport of the proxied connection, as the v2 header states it (v1 only knows TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyTransport {
    Stream,
    Datagram,
    Unspecified,
}

/// Result of a header that was read whole. Small and `Copy`: it outlives the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyInfo {
    pub version: ProxyVersion,
    pub command: ProxyCommand,
    pub transport: ProxyTransport,
    /// The client's address. `None` for LOCAL, v1 UNKNOWN, v2 UNSPEC and AF_UNIX, where the
    /// spec says to use the socket's own peer address.
    pub source: Option<SocketAddr>,
    /// The address the client connected to (the proxy's listener). `None` whenever `source` is.
    pub destination: Option<SocketAddr>,
    /// Offset of the v2 TLV block within the header (0 with `tlv_len` 0 when there is none).
    pub tlv_offset: u16,
    /// Length of the v2 TLV block; read it with [`tlvs`].
    pub tlv_len: u16,
}

/// Result of [`check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyCheck {
    /// More bytes are needed; the buffer must hold at least `needed_at_least` bytes in total
    /// before calling again makes sense.
    Incomplete { needed_at_least: usize },
    /// The buffer starts with a whole header of `header_len` bytes; what follows is payload.
    Complete { header_len: usize, info: ProxyInfo },
}

/// Why a connection's first bytes are not an acceptable header. Every variant means: close the
/// connection without a reply (the spec asks for an abort, and a reply would tell a scanner
/// what listens here).
#[derive(Debug, Error, PartialEq)]
pub enum ProxyError {
    #[error("connection does not start with a proxy protocol {expected} header")]
    NotProxyProtocol { expected: &'static str },
    #[error(
        "proxy protocol header longer than {limit} bytes ({len}); raise the bound or fix the proxy"
    )]
    HeaderTooLong { limit: usize, len: usize },
    #[error("proxy protocol v1 line must end in CRLF")]
    V1BadLineEnd,
    #[error("malformed proxy protocol v1 header")]
    V1Malformed(#[source] ppp::v1::BinaryParseError),
    #[error("malformed proxy protocol v2 header")]
    V2Malformed(#[source] ppp::v2::ParseError),
    #[error("malformed proxy protocol v2 tlv block")]
    V2MalformedTlv(#[source] ppp::v2::ParseError),
}

/// Looks for a PROXY header at the start of `buf`. Rejects bytes that cannot start a header as
/// soon as they are seen, and a header longer than the bound before its end has arrived.
pub fn check(buf: &[u8], mode: ProxyMode) -> Result<ProxyCheck, ProxyError> {
    let Some(&first) = buf.first() else {
        return Ok(ProxyCheck::Incomplete { needed_at_least: 1 });
    };
    match mode {
        ProxyMode::V1 => check_v1(buf),
        ProxyMode::V2 => check_v2(buf),
        ProxyMode::Any if first == V2_SIGNATURE[0] => check_v2(buf),
        ProxyMode::Any if first == V1_PREFIX[0] => check_v1(buf),
        ProxyMode::Any => Err(ProxyError::NotProxyProtocol {
            expected: "v1 or v2",
        }),
    }
}

fn check_v1(buf: &[u8]) -> Result<ProxyCheck, ProxyError> {
    let prefix_len = buf.len().min(V1_PREFIX.len());
    if buf[..prefix_len] != V1_PREFIX[..prefix_len] {
        return Err(ProxyError::NotProxyProtocol { expected: "v1" });
    }
    let window = &buf[..buf.len().min(V1_HEADER_LEN_MAX)];
    // The spec forbids ending the line with a lone CR or LF, so the first of either decides.
    match window.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(at) if window[at] == b'\n' => Err(ProxyError::V1BadLineEnd),
        Some(at) if at + 1 == window.len() && window.len() < V1_HEADER_LEN_MAX => {
            Ok(ProxyCheck::Incomplete {
                needed_at_least: at + 2,
            })
        }
        Some(at) if window.get(at + 1) == Some(&b'\n') => parse_v1(&buf[..at + 2]),
        Some(_) => Err(ProxyError::V1BadLineEnd),
        None if window.len() >= V1_HEADER_LEN_MAX => Err(ProxyError::HeaderTooLong {
            limit: V1_HEADER_LEN_MAX,
            len: buf.len(),
        }),
        None => Ok(ProxyCheck::Incomplete {
            needed_at_least: buf.len() + 1,
        }),
    }
}

fn parse_v1(line: &[u8]) -> Result<ProxyCheck, ProxyError> {
    use ppp::v1::Addresses;
    let header = ppp::v1::Header::try_from(line).map_err(ProxyError::V1Malformed)?;
    let (source, destination) = match header.addresses {
        Addresses::Tcp4(a) => (
            Some(SocketAddr::V4(SocketAddrV4::new(
                a.source_address,
                a.source_port,
            ))),
            Some(SocketAddr::V4(SocketAddrV4::new(
                a.destination_address,
                a.destination_port,
            ))),
        ),
        Addresses::Tcp6(a) => (
            Some(SocketAddr::V6(SocketAddrV6::new(
                a.source_address,
                a.source_port,
                0,
                0,
            ))),
            Some(SocketAddr::V6(SocketAddrV6::new(
                a.destination_address,
                a.destination_port,
                0,
                0,
            ))),
        ),
        // "the receiver must ignore anything presented before the CRLF" and use the socket's.
        Addresses::Unknown => (None, None),
    };
    let info = ProxyInfo {
        version: ProxyVersion::V1,
        // v1 has no LOCAL; UNKNOWN is how old health checks were sent, and means the same.
        command: if source.is_some() {
            ProxyCommand::Proxy
        } else {
            ProxyCommand::Local
        },
        transport: if source.is_some() {
            ProxyTransport::Stream
        } else {
            ProxyTransport::Unspecified
        },
        source,
        destination,
        tlv_offset: 0,
        tlv_len: 0,
    };
    Ok(ProxyCheck::Complete {
        header_len: line.len(),
        info,
    })
}

fn check_v2(buf: &[u8]) -> Result<ProxyCheck, ProxyError> {
    let signature_len = buf.len().min(V2_SIGNATURE.len());
    if buf[..signature_len] != V2_SIGNATURE[..signature_len] {
        return Err(ProxyError::NotProxyProtocol { expected: "v2" });
    }
    let Some(fixed) = buf.get(..V2_FIXED_LEN) else {
        return Ok(ProxyCheck::Incomplete {
            needed_at_least: V2_FIXED_LEN,
        });
    };
    let header_len = V2_FIXED_LEN + usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if header_len > V2_HEADER_LEN_MAX {
        return Err(ProxyError::HeaderTooLong {
            limit: V2_HEADER_LEN_MAX,
            len: header_len,
        });
    }
    match buf.get(..header_len) {
        Some(header) => parse_v2(header),
        None => Ok(ProxyCheck::Incomplete {
            needed_at_least: header_len,
        }),
    }
}

fn parse_v2(bytes: &[u8]) -> Result<ProxyCheck, ProxyError> {
    use ppp::v2::{Addresses, Command, Protocol};
    let header = ppp::v2::Header::try_from(bytes).map_err(ProxyError::V2Malformed)?;
    let tlv_len = header.tlv_bytes().len();
    if let Some(Err(e)) = header.tlvs().find(Result::is_err) {
        return Err(ProxyError::V2MalformedTlv(e));
    }
    let command = match header.command {
        Command::Proxy => ProxyCommand::Proxy,
        Command::Local => ProxyCommand::Local,
    };
    let transport = match header.protocol {
        Protocol::Stream => ProxyTransport::Stream,
        Protocol::Datagram => ProxyTransport::Datagram,
        Protocol::Unspecified => ProxyTransport::Unspecified,
    };
    // LOCAL: "the receiver must accept the connection and ignore any address information".
    let addresses = match (command, header.addresses) {
        (ProxyCommand::Local, _) => None,
        (_, Addresses::IPv4(a)) => Some((
            SocketAddr::V4(SocketAddrV4::new(a.source_address, a.source_port)),
            SocketAddr::V4(SocketAddrV4::new(a.destination_address, a.destination_port)),
        )),
        (_, Addresses::IPv6(a)) => Some((
            SocketAddr::V6(SocketAddrV6::new(a.source_address, a.source_port, 0, 0)),
            SocketAddr::V6(SocketAddrV6::new(
                a.destination_address,
                a.destination_port,
                0,
                0,
            )),
        )),
        (_, Addresses::Unspecified | Addresses::Unix(_)) => None,
    };
    let info = ProxyInfo {
        version: ProxyVersion::V2,
        command,
        transport,
        source: addresses.map(|(s, _)| s),
        destination: addresses.map(|(_, d)| d),
        // Both fit in u16: the header is at most V2_HEADER_LEN_MAX bytes.
        tlv_offset: u16::try_from(bytes.len() - tlv_len).unwrap_or(0),
        tlv_len: u16::try_from(tlv_len).unwrap_or(0),
    };
    const _: () = assert!(V2_HEADER_LEN_MAX <= u16::MAX as usize);
    Ok(ProxyCheck::Complete {
        header_len: bytes.len(),
        info,
    })
}

/// v2 TLV type numbers (section 2.2.1).
pub mod tlv_type {
    pub const ALPN: u8 = 0x01;
    pub const AUTHORITY: u8 = 0x02;
    pub const CRC32C: u8 = 0x03;
    pub const NOOP: u8 = 0x04;
    pub const UNIQUE_ID: u8 = 0x05;
    pub const SSL: u8 = 0x20;
    pub const NETNS: u8 = 0x30;
}

/// One v2 TLV: its type and a slice of the header holding its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub kind: u8,
    pub value: &'a [u8],
}

/// Iterator over the TLVs of a header that [`check`] accepted; `header` is the header's bytes
/// (`&buf[..header_len]`). Yields nothing for v1 headers. No allocation.
pub fn tlvs<'a>(header: &'a [u8], info: &ProxyInfo) -> Tlvs<'a> {
    let start = usize::from(info.tlv_offset);
    let end = start + usize::from(info.tlv_len);
    Tlvs {
        rest: header.get(start..end).unwrap_or_default(),
    }
}

/// See [`tlvs`].
#[derive(Debug, Clone)]
pub struct Tlvs<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Tlvs<'a> {
    type Item = Tlv<'a>;

    fn next(&mut self) -> Option<Tlv<'a>> {
        let (&[kind, len_high, len_low], after) = self.rest.split_first_chunk::<3>()?;
        let len = usize::from(u16::from_be_bytes([len_high, len_low]));
        // check() already rejected a truncated block; stop rather than yield half a value.
        let Some(value) = after.get(..len) else {
            self.rest = &[];
            return None;
        };
        self.rest = &after[len..];
        Some(Tlv { kind, value })
    }
}
