//! Byte formats: authenticated gossip datagrams (foca's postcard payload inside a MAC envelope)
//! and length-prefixed peer-link frames.
//!
//! Peer frames are hand-written rather than rkyv: they come from other processes, so rkyv would
//! need its validation layer and aligned receive buffers, while the frame set is seven small
//! variants whose every length we want to bound explicitly. Big-endian integers; strings and
//! lists carry a u32 length that is checked against what is left before anything is allocated.
//!
//! Frame: `len: u32` (bytes after this field, at most [`FRAME_LEN_MAX`]) then `kind: u8`, body.
//! Datagram: `version: u8 = 1`, foca payload, 32-byte HMAC-SHA256 tag over the payload.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::auth::{Secret, DOMAIN_GOSSIP, TAG_LEN};
use crate::identity::{Generation, NodeId, NodeIdentity};
use crate::routes::{RouteChange, RouteEntry, RouteOp, RouteSummary, ENTRY_STRING_LEN_MAX};

pub use crate::routes::SnapshotChunk;

/// Largest UDP datagram we send or accept: below a 1500-byte Ethernet MTU with IP/UDP headers.
pub const DATAGRAM_LEN_MAX: usize = 1400;
const DATAGRAM_VERSION: u8 = 1;
/// Bytes the envelope adds to foca's payload.
pub const DATAGRAM_OVERHEAD: usize = 1 + TAG_LEN;
/// What foca may put in one datagram.
pub const GOSSIP_PAYLOAD_MAX: usize = DATAGRAM_LEN_MAX - DATAGRAM_OVERHEAD;

/// Largest peer-link frame after its length field.
pub const FRAME_LEN_MAX: usize = 1 << 20;
/// Bytes of entries the sender puts in one snapshot chunk or op batch; leaves room for headers.
pub const FRAME_BODY_BUDGET: usize = 256 * 1024;
/// Largest opaque forwarded payload.
pub const FORWARD_PAYLOAD_MAX: usize = FRAME_LEN_MAX - 16;
/// Most summaries in one frame.
pub const SUMMARIES_PER_FRAME_MAX: usize = 4096;
const FRAME_HEADER_LEN: usize = 4;

// One maximal entry must fit a batch, and a full batch with its headers must fit a frame.
const _: () = assert!(2 * (ENTRY_STRING_LEN_MAX + 8) + 64 < FRAME_BODY_BUDGET);
const _: () = assert!(FRAME_BODY_BUDGET + 2 * (ENTRY_STRING_LEN_MAX + 8) + 64 < FRAME_LEN_MAX);
const _: () = assert!(SUMMARIES_PER_FRAME_MAX * 32 + 8 < FRAME_LEN_MAX);

/// Why bytes did not decode (or a frame could not be built).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("frame of {len} bytes is over the limit of {max}")]
    FrameTooLong { len: usize, max: usize },
    #[error("frame ends early")]
    Truncated,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("{what} of {len} is over the limit of {max}")]
    TooMany {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("string is not utf-8")]
    BadUtf8,
    #[error("{0} trailing bytes after the frame body")]
    Trailing(usize),
    #[error("bad value for {0}")]
    BadValue(&'static str),
    #[error("datagram of {len} bytes, expected {min}..={max}")]
    DatagramLength { len: usize, min: usize, max: usize },
    #[error("datagram version {0} is not understood")]
    DatagramVersion(u8),
    #[error("datagram authentication failed (wrong or missing cluster secret)")]
    BadTag,
}

/// One message on a peer link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerFrame {
    /// First frame each way: who we are and a fresh nonce the other side must sign.
    Hello { identity: NodeIdentity, nonce: u64 },
    /// HMAC over the peer's nonce and our identity: proves we hold the secret.
    Proof { tag: [u8; TAG_LEN] },
    /// Anti-entropy: the sender's view of each origin it owns.
    Summary(Vec<RouteSummary>),
    /// Ordered route ops of one or more origins.
    Ops(Vec<RouteOp>),
    /// Ask the owner for everything after `have_seq` of `generation`, or (with `snapshot`, or
    /// when its log is too short) a full snapshot.
    SyncRequest {
        origin: NodeId,
        generation: Generation,
        have_seq: u64,
        snapshot: bool,
    },
    /// A piece of a snapshot.
    Snapshot(SnapshotChunk),
    /// A publish forwarded to the peer, opaque here.
    Forward(Vec<u8>),
    /// A session hand-over message ([`crate::handover::SessionMsg`], encoded), opaque here.
    Session(Vec<u8>),
}

const KIND_HELLO: u8 = 1;
const KIND_PROOF: u8 = 2;
const KIND_SUMMARY: u8 = 3;
const KIND_OPS: u8 = 4;
const KIND_SYNC_REQUEST: u8 = 5;
const KIND_SNAPSHOT: u8 = 6;
const KIND_FORWARD: u8 = 7;
const KIND_SESSION: u8 = 8;

/// Outcome of the cheap first phase: how much of a frame is buffered.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameCheck {
    /// Need at least this many more bytes.
    Incomplete { needed: usize },
    /// A whole frame of `len` bytes (length field included) is at the front.
    Complete { len: usize },
}

/// Phase one: is a whole frame buffered? An announced length over the limit is an error at once.
pub fn check_frame(buf: &[u8]) -> Result<FrameCheck, CodecError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Ok(FrameCheck::Incomplete {
            needed: FRAME_HEADER_LEN - buf.len(),
        });
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > FRAME_LEN_MAX {
        return Err(CodecError::FrameTooLong {
            len,
            max: FRAME_LEN_MAX,
        });
    }
    if buf.len() < FRAME_HEADER_LEN + len {
        return Ok(FrameCheck::Incomplete {
            needed: FRAME_HEADER_LEN + len - buf.len(),
        });
    }
    Ok(FrameCheck::Complete {
        len: FRAME_HEADER_LEN + len,
    })
}

/// Both phases: the frame at the front of `buf` and its length, or `None` if incomplete.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(PeerFrame, usize)>, CodecError> {
    let len = match check_frame(buf)? {
        FrameCheck::Incomplete { .. } => return Ok(None),
        FrameCheck::Complete { len } => len,
    };
    let mut reader = Reader {
        buf: &buf[FRAME_HEADER_LEN..len],
    };
    let frame = reader.frame()?;
    if !reader.buf.is_empty() {
        return Err(CodecError::Trailing(reader.buf.len()));
    }
    Ok(Some((frame, len)))
}

/// Appends `frame` with its length prefix to `out`; on error `out` is left as it was.
pub fn encode_frame(frame: &PeerFrame, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    let mut w = Writer { out };
    w.frame(frame);
    let len = out.len() - start - FRAME_HEADER_LEN;
    if len > FRAME_LEN_MAX {
        out.truncate(start);
        return Err(CodecError::FrameTooLong {
            len,
            max: FRAME_LEN_MAX,
        });
    }
    out[start..start + FRAME_HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Wraps foca's payload in the authenticated envelope.
pub fn seal_datagram(secret: &Secret, payload: &[u8]) -> Result<Vec<u8>, CodecError> {
    let len = payload.len() + DATAGRAM_OVERHEAD;
    if len > DATAGRAM_LEN_MAX {
        return Err(CodecError::DatagramLength {
            len,
            min: DATAGRAM_OVERHEAD,
            max: DATAGRAM_LEN_MAX,
        });
    }
    let mut out = Vec::with_capacity(len);
    out.push(DATAGRAM_VERSION);
    out.extend_from_slice(payload);
    out.extend_from_slice(&secret.tag(DOMAIN_GOSSIP, &[payload]));
    Ok(out)
}

/// Checks the envelope and returns foca's payload. Nothing of the payload is looked at before
/// the tag verifies.
pub fn open_datagram<'a>(secret: &Secret, datagram: &'a [u8]) -> Result<&'a [u8], CodecError> {
    if datagram.len() < DATAGRAM_OVERHEAD || datagram.len() > DATAGRAM_LEN_MAX {
        return Err(CodecError::DatagramLength {
            len: datagram.len(),
            min: DATAGRAM_OVERHEAD,
            max: DATAGRAM_LEN_MAX,
        });
    }
    if datagram[0] != DATAGRAM_VERSION {
        return Err(CodecError::DatagramVersion(datagram[0]));
    }
    let (payload, tag) = datagram[1..].split_at(datagram.len() - DATAGRAM_OVERHEAD);
    if !secret.verify(DOMAIN_GOSSIP, &[payload], tag) {
        return Err(CodecError::BadTag);
    }
    Ok(payload)
}

/// The bytes of an identity that a link proof signs.
pub(crate) fn identity_bytes(identity: &NodeIdentity) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    Writer { out: &mut out }.identity(identity);
    out
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.out.extend_from_slice(v);
    }
    fn addr(&mut self, addr: &SocketAddr) {
        match addr.ip() {
            IpAddr::V4(ip) => {
                self.u8(4);
                self.out.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                self.u8(6);
                self.out.extend_from_slice(&ip.octets());
            }
        }
        self.out.extend_from_slice(&addr.port().to_be_bytes());
    }
    fn identity(&mut self, id: &NodeIdentity) {
        self.u64(id.node_id.0);
        self.u64(id.generation.0);
        self.addr(&id.gossip_addr);
        self.addr(&id.peer_addr);
    }
    fn entry(&mut self, entry: &RouteEntry) {
        match entry {
            RouteEntry::Filter(filter) => {
                self.u8(0);
                self.bytes(filter.as_bytes());
            }
            RouteEntry::Shared { group, filter } => {
                self.u8(1);
                self.bytes(group.as_bytes());
                self.bytes(filter.as_bytes());
            }
        }
    }
    fn summary(&mut self, s: &RouteSummary) {
        self.u64(s.origin.0);
        self.u64(s.generation.0);
        self.u64(s.seq);
        self.u64(s.digest);
    }
    fn frame(&mut self, frame: &PeerFrame) {
        match frame {
            PeerFrame::Hello { identity, nonce } => {
                self.u8(KIND_HELLO);
                self.identity(identity);
                self.u64(*nonce);
            }
            PeerFrame::Proof { tag } => {
                self.u8(KIND_PROOF);
                self.out.extend_from_slice(tag);
            }
            PeerFrame::Summary(summaries) => {
                self.u8(KIND_SUMMARY);
                self.u32(summaries.len() as u32);
                summaries.iter().for_each(|s| self.summary(s));
            }
            PeerFrame::Ops(ops) => {
                self.u8(KIND_OPS);
                self.u32(ops.len() as u32);
                for op in ops {
                    self.u64(op.origin.0);
                    self.u64(op.generation.0);
                    self.u64(op.seq);
                    match &op.change {
                        RouteChange::Add(entry) => {
                            self.u8(0);
                            self.entry(entry);
                        }
                        RouteChange::Remove(entry) => {
                            self.u8(1);
                            self.entry(entry);
                        }
                    }
                }
            }
            PeerFrame::SyncRequest {
                origin,
                generation,
                have_seq,
                snapshot,
            } => {
                self.u8(KIND_SYNC_REQUEST);
                self.u64(origin.0);
                self.u64(generation.0);
                self.u64(*have_seq);
                self.u8(u8::from(*snapshot));
            }
            PeerFrame::Snapshot(chunk) => {
                self.u8(KIND_SNAPSHOT);
                self.u64(chunk.origin.0);
                self.u64(chunk.generation.0);
                self.u64(chunk.seq);
                self.u64(chunk.digest);
                self.u32(chunk.index);
                self.u8(u8::from(chunk.last));
                self.u32(chunk.entries.len() as u32);
                chunk.entries.iter().for_each(|e| self.entry(e));
            }
            PeerFrame::Forward(payload) => {
                self.u8(KIND_FORWARD);
                self.bytes(payload);
            }
            PeerFrame::Session(payload) => {
                self.u8(KIND_SESSION);
                self.bytes(payload);
            }
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(CodecError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, CodecError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn bool(&mut self, what: &'static str) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(CodecError::BadValue(what)),
        }
    }
    /// A list count, refused when even minimal items could not fit in what is left: no
    /// allocation is ever sized by an unchecked count.
    fn count(
        &mut self,
        what: &'static str,
        item_len_min: usize,
        max: usize,
    ) -> Result<usize, CodecError> {
        let len = self.u32()? as usize;
        if len > max || len.saturating_mul(item_len_min) > self.buf.len() {
            return Err(CodecError::TooMany {
                what,
                len,
                max: max.min(self.buf.len() / item_len_min.max(1)),
            });
        }
        Ok(len)
    }
    fn string(&mut self) -> Result<String, CodecError> {
        let len = self.u32()? as usize;
        if len > ENTRY_STRING_LEN_MAX {
            return Err(CodecError::TooMany {
                what: "string length",
                len,
                max: ENTRY_STRING_LEN_MAX,
            });
        }
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| CodecError::BadUtf8)
    }
    fn addr(&mut self) -> Result<SocketAddr, CodecError> {
        let ip = match self.u8()? {
            4 => {
                let b = self.take(4)?;
                IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            }
            6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(self.take(16)?);
                IpAddr::V6(Ipv6Addr::from(a))
            }
            _ => return Err(CodecError::BadValue("address family")),
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }
    fn identity(&mut self) -> Result<NodeIdentity, CodecError> {
        Ok(NodeIdentity {
            node_id: NodeId(self.u64()?),
            generation: Generation(self.u64()?),
            gossip_addr: self.addr()?,
            peer_addr: self.addr()?,
        })
    }
    fn entry(&mut self) -> Result<RouteEntry, CodecError> {
        match self.u8()? {
            0 => Ok(RouteEntry::Filter(self.string()?)),
            1 => Ok(RouteEntry::Shared {
                group: self.string()?,
                filter: self.string()?,
            }),
            _ => Err(CodecError::BadValue("route entry kind")),
        }
    }
    fn summary(&mut self) -> Result<RouteSummary, CodecError> {
        Ok(RouteSummary {
            origin: NodeId(self.u64()?),
            generation: Generation(self.u64()?),
            seq: self.u64()?,
            digest: self.u64()?,
        })
    }
    fn frame(&mut self) -> Result<PeerFrame, CodecError> {
        match self.u8()? {
            KIND_HELLO => Ok(PeerFrame::Hello {
                identity: self.identity()?,
                nonce: self.u64()?,
            }),
            KIND_PROOF => {
                let mut tag = [0u8; TAG_LEN];
                tag.copy_from_slice(self.take(TAG_LEN)?);
                Ok(PeerFrame::Proof { tag })
            }
            KIND_SUMMARY => {
                let n = self.count("summaries", 32, SUMMARIES_PER_FRAME_MAX)?;
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    out.push(self.summary()?);
                }
                Ok(PeerFrame::Summary(out))
            }
            KIND_OPS => {
                let n = self.count("ops", 30, FRAME_LEN_MAX)?;
                let mut ops = Vec::with_capacity(n);
                for _ in 0..n {
                    let origin = NodeId(self.u64()?);
                    let generation = Generation(self.u64()?);
                    let seq = self.u64()?;
                    let change = match self.u8()? {
                        0 => RouteChange::Add(self.entry()?),
                        1 => RouteChange::Remove(self.entry()?),
                        _ => return Err(CodecError::BadValue("route change kind")),
                    };
                    ops.push(RouteOp {
                        origin,
                        generation,
                        seq,
                        change,
                    });
                }
                Ok(PeerFrame::Ops(ops))
            }
            KIND_SYNC_REQUEST => Ok(PeerFrame::SyncRequest {
                origin: NodeId(self.u64()?),
                generation: Generation(self.u64()?),
                have_seq: self.u64()?,
                snapshot: self.bool("snapshot flag")?,
            }),
            KIND_SNAPSHOT => {
                let origin = NodeId(self.u64()?);
                let generation = Generation(self.u64()?);
                let seq = self.u64()?;
                let digest = self.u64()?;
                let index = self.u32()?;
                let last = self.bool("last flag")?;
                let n = self.count("snapshot entries", 5, FRAME_LEN_MAX)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push(self.entry()?);
                }
                Ok(PeerFrame::Snapshot(SnapshotChunk {
                    origin,
                    generation,
                    seq,
                    digest,
                    index,
                    last,
                    entries,
                }))
            }
            kind @ (KIND_FORWARD | KIND_SESSION) => {
                let len = self.u32()? as usize;
                if len > FORWARD_PAYLOAD_MAX {
                    return Err(CodecError::TooMany {
                        what: "forwarded payload",
                        len,
                        max: FORWARD_PAYLOAD_MAX,
                    });
                }
                let payload = self.take(len)?.to_vec();
                Ok(if kind == KIND_FORWARD {
                    PeerFrame::Forward(payload)
                } else {
                    PeerFrame::Session(payload)
                })
            }
            kind => Err(CodecError::UnknownKind(kind)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secret() -> Secret {
        Secret::from_file_bytes(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn datagram_with_other_secret_is_refused() {
        let sealed = seal_datagram(&secret(), b"payload").unwrap();
        assert_eq!(open_datagram(&secret(), &sealed).unwrap(), b"payload");
        let other = Secret::from_file_bytes(b"another secret of enough length").unwrap();
        assert_eq!(open_datagram(&other, &sealed), Err(CodecError::BadTag));
        let mut flipped = sealed.clone();
        flipped[3] ^= 1;
        assert_eq!(open_datagram(&secret(), &flipped), Err(CodecError::BadTag));
        assert!(open_datagram(&secret(), &[1, 2]).is_err());
        assert!(seal_datagram(&secret(), &[0; GOSSIP_PAYLOAD_MAX + 1]).is_err());
    }

    #[test]
    fn oversized_length_is_an_error_before_buffering() {
        let len = (FRAME_LEN_MAX as u32 + 1).to_be_bytes();
        assert!(matches!(
            check_frame(&len),
            Err(CodecError::FrameTooLong { .. })
        ));
        assert_eq!(
            check_frame(&[0, 0]),
            Ok(FrameCheck::Incomplete { needed: 2 })
        );
    }

    #[test]
    fn huge_counts_do_not_allocate() {
        // An ops frame announcing 2^32-1 ops in a 9-byte body.
        let bytes = [0, 0, 0, 5, KIND_OPS, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            decode_frame(&bytes),
            Err(CodecError::TooMany { .. })
        ));
    }

    #[test]
    fn too_long_forward_is_refused_on_encode() {
        let mut out = vec![7];
        let err = encode_frame(&PeerFrame::Forward(vec![0; FRAME_LEN_MAX]), &mut out).unwrap_err();
        assert!(matches!(err, CodecError::FrameTooLong { .. }));
        assert_eq!(out, vec![7]);
    }

    fn addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        ]
    }

    fn entry() -> impl Strategy<Value = RouteEntry> {
        prop_oneof![
            ".{0,12}".prop_map(RouteEntry::Filter),
            (".{0,6}", ".{0,12}").prop_map(|(group, filter)| RouteEntry::Shared { group, filter }),
        ]
    }

    fn frame() -> impl Strategy<Value = PeerFrame> {
        let identity =
            (any::<u64>(), any::<u64>(), addr(), addr()).prop_map(|(n, g, a, b)| NodeIdentity {
                node_id: NodeId(n),
                generation: Generation(g),
                gossip_addr: a,
                peer_addr: b,
            });
        let summary = any::<[u64; 4]>().prop_map(|[o, g, s, d]| RouteSummary {
            origin: NodeId(o),
            generation: Generation(g),
            seq: s,
            digest: d,
        });
        let op =
            (any::<[u64; 3]>(), any::<bool>(), entry()).prop_map(|([o, g, s], add, e)| RouteOp {
                origin: NodeId(o),
                generation: Generation(g),
                seq: s,
                change: if add {
                    RouteChange::Add(e)
                } else {
                    RouteChange::Remove(e)
                },
            });
        let chunk = (
            any::<[u64; 4]>(),
            any::<u32>(),
            any::<bool>(),
            prop::collection::vec(entry(), 0..5),
        )
            .prop_map(|([o, g, s, d], index, last, entries)| SnapshotChunk {
                origin: NodeId(o),
                generation: Generation(g),
                seq: s,
                digest: d,
                index,
                last,
                entries,
            });
        prop_oneof![
            (identity, any::<u64>())
                .prop_map(|(identity, nonce)| PeerFrame::Hello { identity, nonce }),
            any::<[u8; 32]>().prop_map(|tag| PeerFrame::Proof { tag }),
            prop::collection::vec(summary, 0..4).prop_map(PeerFrame::Summary),
            prop::collection::vec(op, 0..6).prop_map(PeerFrame::Ops),
            (any::<[u64; 3]>(), any::<bool>()).prop_map(|([o, g, h], snapshot)| {
                PeerFrame::SyncRequest {
                    origin: NodeId(o),
                    generation: Generation(g),
                    have_seq: h,
                    snapshot,
                }
            }),
            chunk.prop_map(PeerFrame::Snapshot),
            prop::collection::vec(any::<u8>(), 0..64).prop_map(PeerFrame::Forward),
            prop::collection::vec(any::<u8>(), 0..64).prop_map(PeerFrame::Session),
        ]
    }

    proptest! {
        // encode then decode is the identity, also with bytes of a following frame buffered.
        #[test]
        fn encode_decode_roundtrip(frame in frame(), tail in prop::collection::vec(any::<u8>(), 0..8)) {
            let mut bytes = Vec::new();
            encode_frame(&frame, &mut bytes).unwrap();
            let len = bytes.len();
            bytes.extend_from_slice(&tail);
            let (decoded, used) = decode_frame(&bytes).unwrap().unwrap();
            prop_assert_eq!(used, len);
            prop_assert_eq!(decoded, frame);
            // Every strict prefix is incomplete, never an error or a panic.
            for cut in 0..len {
                prop_assert_eq!(decode_frame(&bytes[..cut]), Ok(None));
            }
        }

        // Arbitrary bytes never panic the decoder.
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_frame(&bytes);
        }
    }
}
