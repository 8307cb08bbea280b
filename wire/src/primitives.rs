//! Data representations of MQTT section 1.5: integers, variable byte integers, UTF-8 strings,
//! binary data; plus the protocol version and QoS enums and the zero-copy read cursor.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};

/// Largest value a variable byte integer can carry (4 bytes, 7 bits each).
pub const VBI_MAX: u32 = 268_435_455;
/// Largest UTF-8 string / binary data length (2-byte length prefix).
pub const STRING_LEN_MAX: usize = 65_535;

/// The protocol level byte in CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ProtocolVersion {
    /// MQTT 3.1, protocol name "MQIsdp".
    V3_1 = 3,
    /// MQTT 3.1.1, protocol name "MQTT".
    V3_1_1 = 4,
    /// MQTT 5.0, protocol name "MQTT".
    V5 = 5,
}

impl ProtocolVersion {
    pub fn level(self) -> u8 {
        self as u8
    }

    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

impl TryFrom<u8> for ProtocolVersion {
    type Error = DecodeError;
    fn try_from(level: u8) -> Result<Self, DecodeError> {
        match level {
            3 => Ok(ProtocolVersion::V3_1),
            4 => Ok(ProtocolVersion::V3_1_1),
            5 => Ok(ProtocolVersion::V5),
            other => Err(DecodeError::UnsupportedProtocolVersion(other)),
        }
    }
}

/// Quality of service level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl TryFrom<u8> for QoS {
    type Error = DecodeError;
    fn try_from(value: u8) -> Result<Self, DecodeError> {
        match value {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            other => Err(DecodeError::InvalidQoS(other)),
        }
    }
}

/// A validated MQTT UTF-8 string held as zero-copy [`Bytes`]: well-formed UTF-8 (so no
/// surrogates) and no U+0000 [MQTT-1.5.4-1] [MQTT-1.5.4-2].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// Validates `bytes` and wraps them without copying.
    pub fn try_from_bytes(bytes: Bytes) -> Result<Self, DecodeError> {
        validate_utf8(&bytes)?;
        Ok(Utf8Bytes(bytes))
    }

    /// Wraps a static string. A U+0000 in it is kept (the caller owns that choice); the encoder
    /// writes it as is.
    pub const fn from_static(s: &'static str) -> Self {
        Utf8Bytes(Bytes::from_static(s.as_bytes()))
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor either validated the bytes as UTF-8 or took them from a `str`.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl std::fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::ops::Deref for Utf8Bytes {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Utf8Bytes {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Utf8Bytes {
    fn from(s: &str) -> Self {
        Utf8Bytes(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for Utf8Bytes {
    fn from(s: String) -> Self {
        Utf8Bytes(Bytes::from(s))
    }
}

impl PartialEq<str> for Utf8Bytes {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Utf8Bytes {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// What one pass over a string found.
pub(crate) struct Scan {
    pub(crate) null: bool,
    pub(crate) wildcard: bool,
    pub(crate) non_ascii: bool,
}

/// Looks for U+0000, '+'/'#' and non-ASCII bytes in one pass. No early exit, so the compiler
/// vectorises it; topics are short and almost always valid, so the common case is one scan
/// instead of three (UTF-8 check, NUL search, wildcard search).
pub(crate) fn scan(bytes: &[u8]) -> Scan {
    let mut null = false;
    let mut wildcard = false;
    let mut high = 0u8;
    for &byte in bytes {
        null |= byte == 0;
        wildcard |= (byte == b'+') | (byte == b'#');
        high |= byte;
    }
    Scan {
        null,
        wildcard,
        non_ascii: high >= 0x80,
    }
}

/// MQTT UTF-8 rules: well-formed and no U+0000.
pub fn validate_utf8(bytes: &[u8]) -> Result<(), DecodeError> {
    check_scanned(bytes, &scan(bytes))
}

pub(crate) fn check_scanned(bytes: &[u8], found: &Scan) -> Result<(), DecodeError> {
    // ASCII is always well-formed UTF-8; only other input needs the full check.
    if found.non_ascii && std::str::from_utf8(bytes).is_err() {
        return Err(DecodeError::InvalidUtf8);
    }
    if found.null {
        return Err(DecodeError::NullCharacter);
    }
    Ok(())
}

/// Number of bytes `value` takes as a variable byte integer (values above the maximum are
/// reported as 4; callers check the range separately).
pub const fn vbi_len(value: usize) -> usize {
    if value < 128 {
        1
    } else if value < 16_384 {
        2
    } else if value < 2_097_152 {
        3
    } else {
        4
    }
}

/// Writes `value` (must be <= VBI_MAX) as a variable byte integer.
pub fn put_vbi(out: &mut BytesMut, value: u32) {
    let mut rest = value;
    loop {
        let mut byte = (rest % 128) as u8;
        rest /= 128;
        if rest > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if rest == 0 {
            break;
        }
    }
}

/// Outcome of reading a variable byte integer from a possibly incomplete buffer.
pub(crate) enum VbiRead {
    /// Value and the number of bytes it used.
    Value(u32, usize),
    /// The buffer ended while the continuation bit was still set.
    Incomplete,
}

/// Reads a variable byte integer from the start of `buf`. Non-minimal encodings (e.g. `0x80 0x00`
/// for 0) are rejected: [MQTT-1.5.5-1] requires the minimum number of bytes, and accepting them
/// would let one value have several encodings.
pub(crate) fn read_vbi(buf: &[u8]) -> Result<VbiRead, DecodeError> {
    let mut value: u32 = 0;
    for index in 0..4 {
        let Some(&byte) = buf.get(index) else {
            return Ok(VbiRead::Incomplete);
        };
        value |= u32::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            if index > 0 && byte == 0 {
                return Err(DecodeError::MalformedVariableByteInteger);
            }
            return Ok(VbiRead::Value(value, index + 1));
        }
    }
    Err(DecodeError::MalformedVariableByteInteger)
}

/// Zero-copy cursor over one frame; every slice it hands out shares the frame's allocation.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn need(&self, count: usize) -> Result<(), DecodeError> {
        if self.buf.len() < count {
            Err(DecodeError::UnexpectedEof {
                needed: count - self.buf.len(),
            })
        } else {
            Ok(())
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        let value = self.buf[0];
        self.buf.advance(1);
        Ok(value)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        let value = u16::from_be_bytes([self.buf[0], self.buf[1]]);
        self.buf.advance(2);
        Ok(value)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        let value = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        self.buf.advance(4);
        Ok(value)
    }

    pub(crate) fn vbi(&mut self) -> Result<u32, DecodeError> {
        match read_vbi(&self.buf)? {
            VbiRead::Value(value, used) => {
                self.buf.advance(used);
                Ok(value)
            }
            VbiRead::Incomplete => Err(DecodeError::UnexpectedEof { needed: 1 }),
        }
    }

    pub(crate) fn take(&mut self, count: usize) -> Result<Bytes, DecodeError> {
        self.need(count)?;
        Ok(self.buf.split_to(count))
    }

    /// Everything left, e.g. a PUBLISH payload.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Binary data: 2-byte length then that many bytes.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16()?);
        self.take(len)
    }

    pub(crate) fn utf8(&mut self) -> Result<Utf8Bytes, DecodeError> {
        let bytes = self.binary()?;
        Utf8Bytes::try_from_bytes(bytes)
    }

    /// A PUBLISH topic name: MQTT UTF-8 plus no wildcards [MQTT-3.3.2-2], checked in one scan.
    /// Emptiness is the caller's business (v5 topic aliases).
    pub(crate) fn topic_name(&mut self) -> Result<Utf8Bytes, DecodeError> {
        let bytes = self.binary()?;
        let found = scan(&bytes);
        check_scanned(&bytes, &found)?;
        if found.wildcard {
            return Err(DecodeError::InvalidTopicName);
        }
        Ok(Utf8Bytes(bytes))
    }

    pub(crate) fn packet_id(&mut self) -> Result<std::num::NonZeroU16, DecodeError> {
        std::num::NonZeroU16::new(self.u16()?).ok_or(DecodeError::ZeroPacketIdentifier)
    }

    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len()))
        }
    }
}

/// Encoded length of a string/binary field, checking the 65,535 limit.
pub(crate) fn string_len(len: usize) -> Result<usize, EncodeError> {
    if len > STRING_LEN_MAX {
        Err(EncodeError::StringTooLong { len })
    } else {
        Ok(2 + len)
    }
}

/// Writes a length-prefixed field; the length was checked by [`string_len`] beforehand.
pub(crate) fn put_binary(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u16(bytes.len() as u16);
    out.put_slice(bytes);
}
