//! A TLS 1.3 record layer for application data (RFC 8446 section 5.2), for a session whose
//! handshake rustls completed and whose traffic keys were extracted
//! (`ServerConfig::enable_secret_extraction`, `dangerous_extract_secrets`). Per connection it
//! keeps only [`RecordKeys`]: per direction the suite, the raw key bytes, the IV and the
//! sequence number (112 bytes for both directions), no AEAD key schedule. The ring
//! `LessSafeKey` is built on the stack for each batch of records sealed or opened
//! ([`seal`], [`open`]) and dropped after it.
//!
//! What this layer does not follow: a KeyUpdate from the peer (the extraction gives keys, not
//! traffic secrets, so the next generation cannot be derived): [`open`] returns
//! [`RecordError::KeyUpdate`] and the caller closes with an `unexpected_message` alert. Any
//! record that fails authentication is [`RecordError::BadRecordMac`]. Sequence numbers never
//! wrap (RFC 8446 5.3): application data may use them up to `u64::MAX - 2`; the last one,
//! `u64::MAX - 1`, is kept for the closing alert, and then the direction is exhausted
//! ([`RecordError::SequenceExhausted`]; the caller closes the connection).
//!
//! Only TLS 1.3 secrets fit here (the nonce and AAD of TLS 1.2 differ): the caller checks the
//! negotiated protocol version before it extracts.

use bytes::BytesMut;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets};
use thiserror::Error;

/// Most plaintext bytes in one record (RFC 8446 5.1, 2^14).
pub const RECORD_PLAINTEXT_MAX: usize = 16_384;
/// Most ciphertext bytes after the header of a received record (RFC 8446 5.2, 2^14 + 256).
pub const RECORD_CIPHERTEXT_MAX: usize = RECORD_PLAINTEXT_MAX + 256;
/// Record header: content type, legacy version (2), length (2).
pub const HEADER_LEN: usize = 5;
/// AEAD tag of every suite handled here.
pub const TAG_LEN: usize = 16;

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;
const HANDSHAKE_KEY_UPDATE: u8 = 24;
const ALERT_WARNING: u8 = 1;
const ALERT_FATAL: u8 = 2;

/// Alert descriptions this layer sends (RFC 8446 6).
pub const ALERT_CLOSE_NOTIFY: u8 = 0;
pub const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
pub const ALERT_BAD_RECORD_MAC: u8 = 20;
pub const ALERT_RECORD_OVERFLOW: u8 = 22;
pub const ALERT_INTERNAL_ERROR: u8 = 80;

/// The AEAD of a TLS 1.3 cipher suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Suite {
    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Suite::Aes128Gcm => &aead::AES_128_GCM,
            Suite::Aes256Gcm => &aead::AES_256_GCM,
            Suite::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    fn key_len(self) -> usize {
        match self {
            Suite::Aes128Gcm => 16,
            Suite::Aes256Gcm | Suite::Chacha20Poly1305 => 32,
        }
    }
}

/// One direction's traffic key: raw bytes only, expanded for each batch of records.
pub struct DirectionKeys {
    suite: Suite,
    /// The first `suite.key_len()` bytes are the key.
    key: [u8; 32],
    iv: [u8; aead::NONCE_LEN],
    /// Sequence number of the next record.
    seq: u64,
}

impl std::fmt::Debug for DirectionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectionKeys")
            .field("suite", &self.suite)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Drop for DirectionKeys {
    fn drop(&mut self) {
        self.key = [0; 32];
        self.iv = [0; aead::NONCE_LEN];
    }
}

impl DirectionKeys {
    fn from_secret(seq: u64, secret: ConnectionTrafficSecrets) -> Option<DirectionKeys> {
        let (suite, key, iv) = match secret {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Suite::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Suite::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (Suite::Chacha20Poly1305, key, iv)
            }
            _ => return None,
        };
        let (key, iv) = (key.as_ref(), iv.as_ref());
        if key.len() != suite.key_len() || iv.len() != aead::NONCE_LEN {
            return None;
        }
        let mut out = DirectionKeys {
            suite,
            key: [0; 32],
            iv: [0; aead::NONCE_LEN],
            seq,
        };
        out.key[..key.len()].copy_from_slice(key);
        out.iv.copy_from_slice(iv);
        Some(out)
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// Sequence number of the next record.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The key schedule for one batch of records (an AES key expansion, or a ChaCha20 copy).
    fn expand(&self) -> Result<LessSafeKey, RecordError> {
        // The length matches the algorithm (checked in `from_secret`); ring refusing it is
        // still an error, not a panic.
        UnboundKey::new(self.suite.algorithm(), &self.key[..self.suite.key_len()])
            .map(LessSafeKey::new)
            .map_err(|_| RecordError::Crypto)
    }

    /// The nonce of the next record (RFC 8446 5.3), and the sequence number advanced.
    fn next_nonce(&mut self) -> Result<Nonce, RecordError> {
        if self.seq == u64::MAX {
            return Err(RecordError::SequenceExhausted);
        }
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq += 1;
        Ok(Nonce::assume_unique_for_key(nonce))
    }

    #[cfg(test)]
    pub(crate) fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }
}

/// Both directions of a connection whose record layer is ours.
#[derive(Debug)]
pub struct RecordKeys {
    /// Server to client.
    pub tx: DirectionKeys,
    /// Client to server.
    pub rx: DirectionKeys,
}

impl RecordKeys {
    /// The keys of a TLS 1.3 session; `None` for a suite this layer does not handle.
    pub fn from_secrets(secrets: ExtractedSecrets) -> Option<RecordKeys> {
        let ExtractedSecrets {
            tx: (tx_seq, tx),
            rx: (rx_seq, rx),
        } = secrets;
        Some(RecordKeys {
            tx: DirectionKeys::from_secret(tx_seq, tx)?,
            rx: DirectionKeys::from_secret(rx_seq, rx)?,
        })
    }
}

/// Why a connection on our record layer ends.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    #[error("a record failed authentication")]
    BadRecordMac,
    #[error("a record is longer than 2^14 + 256 bytes")]
    RecordOverflow,
    #[error("the peer sent a KeyUpdate, which ringmq does not follow")]
    KeyUpdate,
    #[error("unexpected record or message after the handshake")]
    UnexpectedMessage,
    #[error("the peer sent fatal alert {0}")]
    PeerAlert(u8),
    #[error("the record sequence numbers of a direction are used up")]
    SequenceExhausted,
    #[error("ring refused a traffic key or a record to seal")]
    Crypto,
}

impl RecordError {
    /// The alert to send before closing (`None`: the peer already ended the session, or the
    /// direction cannot seal any more).
    pub fn alert(self) -> Option<u8> {
        match self {
            RecordError::BadRecordMac => Some(ALERT_BAD_RECORD_MAC),
            RecordError::RecordOverflow => Some(ALERT_RECORD_OVERFLOW),
            RecordError::KeyUpdate | RecordError::UnexpectedMessage => {
                Some(ALERT_UNEXPECTED_MESSAGE)
            }
            RecordError::Crypto => Some(ALERT_INTERNAL_ERROR),
            RecordError::PeerAlert(_) | RecordError::SequenceExhausted => None,
        }
    }
}

/// Seals one record of `content_type` holding `data` (at most [`RECORD_PLAINTEXT_MAX`]).
fn seal_record(
    key: &LessSafeKey,
    dir: &mut DirectionKeys,
    content_type: u8,
    data: &[u8],
    out: &mut BytesMut,
) -> Result<(), RecordError> {
    let nonce = dir.next_nonce()?;
    let len = data.len() + 1 + TAG_LEN;
    let header = [
        CONTENT_APPLICATION_DATA,
        0x03,
        0x03,
        (len >> 8) as u8,
        len as u8,
    ];
    out.reserve(HEADER_LEN + len);
    out.extend_from_slice(&header);
    let body = out.len();
    out.extend_from_slice(data);
    out.extend_from_slice(&[content_type]);
    let tag = key
        .seal_in_place_separate_tag(nonce, Aad::from(header), &mut out[body..])
        .map_err(|_| RecordError::Crypto)?;
    out.extend_from_slice(tag.as_ref());
    Ok(())
}

/// The last sequence number application data may use: the one after it is kept for the alert
/// that closes the connection ([`alert`]), and `u64::MAX` is never used (RFC 8446 5.3: the
/// sequence number must not wrap).
pub const DATA_SEQ_LAST: u64 = u64::MAX - 2;

/// Encrypts `data` into application data records of up to 2^14 bytes appended to `out`; one
/// key expansion for the whole batch. All or nothing: when the batch would use a sequence
/// number past [`DATA_SEQ_LAST`] nothing is sealed and the direction is
/// [`RecordError::SequenceExhausted`] (the caller sends its close_notify and closes).
pub fn seal(dir: &mut DirectionKeys, data: &[u8], out: &mut BytesMut) -> Result<(), RecordError> {
    if data.is_empty() {
        return Ok(());
    }
    let records = data.len().div_ceil(RECORD_PLAINTEXT_MAX) as u64;
    if DATA_SEQ_LAST.saturating_sub(dir.seq) < records - 1 || dir.seq > DATA_SEQ_LAST {
        return Err(RecordError::SequenceExhausted);
    }
    let key = dir.expand()?;
    for chunk in data.chunks(RECORD_PLAINTEXT_MAX) {
        seal_record(&key, dir, CONTENT_APPLICATION_DATA, chunk, out)?;
    }
    Ok(())
}

/// Appends an encrypted alert record: `close_notify` as a warning, anything else fatal.
pub fn alert(
    dir: &mut DirectionKeys,
    description: u8,
    out: &mut BytesMut,
) -> Result<(), RecordError> {
    let level = if description == ALERT_CLOSE_NOTIFY {
        ALERT_WARNING
    } else {
        ALERT_FATAL
    };
    let key = dir.expand()?;
    seal_record(&key, dir, CONTENT_ALERT, &[level, description], out)
}

/// Opens the records in `pending` followed by `input`: application data is appended to
/// `plain`; records are decrypted in place in `work` (the shard's scratch). A record whose
/// end has not arrived is left in `pending` (allocated only then). `Ok(true)`: the peer sent
/// close_notify (anything after it is ignored).
pub fn open(
    dir: &mut DirectionKeys,
    pending: &mut BytesMut,
    input: &[u8],
    work: &mut BytesMut,
    plain: &mut BytesMut,
) -> Result<bool, RecordError> {
    work.clear();
    work.extend_from_slice(pending);
    work.extend_from_slice(input);
    *pending = BytesMut::new();
    let mut key: Option<LessSafeKey> = None;
    let mut start = 0;
    while work.len() - start >= HEADER_LEN {
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&work[start..start + HEADER_LEN]);
        if header[0] != CONTENT_APPLICATION_DATA {
            // After the handshake every TLS 1.3 record is protected (RFC 8446 5).
            return Err(RecordError::UnexpectedMessage);
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len > RECORD_CIPHERTEXT_MAX {
            return Err(RecordError::RecordOverflow);
        }
        if len < TAG_LEN + 1 {
            return Err(RecordError::BadRecordMac);
        }
        let end = start + HEADER_LEN + len;
        if end > work.len() {
            break;
        }
        let nonce = dir.next_nonce()?;
        let key = match &mut key {
            Some(key) => key,
            None => key.insert(dir.expand()?),
        };
        let inner = key
            .open_in_place(nonce, Aad::from(header), &mut work[start + HEADER_LEN..end])
            .map_err(|_| RecordError::BadRecordMac)?;
        // RFC 8446 5.4: the inner plaintext (content, type, padding) is at most 2^14 + 1.
        if inner.len() > RECORD_PLAINTEXT_MAX + 1 {
            return Err(RecordError::RecordOverflow);
        }
        // TLSInnerPlaintext: content || type || zeros.
        let Some(type_at) = inner.iter().rposition(|&b| b != 0) else {
            return Err(RecordError::UnexpectedMessage);
        };
        let content = &inner[..type_at];
        match inner[type_at] {
            CONTENT_APPLICATION_DATA => plain.extend_from_slice(content),
            CONTENT_ALERT => {
                return match content {
                    [_, ALERT_CLOSE_NOTIFY] => Ok(true),
                    [_, description] => Err(RecordError::PeerAlert(*description)),
                    _ => Err(RecordError::UnexpectedMessage),
                };
            }
            CONTENT_HANDSHAKE if content.first() == Some(&HANDSHAKE_KEY_UPDATE) => {
                return Err(RecordError::KeyUpdate)
            }
            _ => return Err(RecordError::UnexpectedMessage),
        }
        start = end;
    }
    if start < work.len() {
        *pending = BytesMut::from(&work[start..]);
    }
    Ok(false)
}

#[cfg(test)]
pub(crate) mod tests {
    //! The peer is rustls itself (a `ClientConnection` in memory), an independent
    //! implementation of the same record layer.
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
    use std::io::{Read, Write};
    use std::sync::Arc;

    /// A CA and a certificate for `localhost` it signed, made with openssl in a temp dir
    /// (removed): (the leaf, its key, the CA).
    fn cert() -> (
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
        CertificateDer<'static>,
    ) {
        let dir = std::env::temp_dir().join(format!(
            "ringmq-record-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let p = |n: &str| dir.join(n);
        let openssl = |args: &[&std::ffi::OsStr]| {
            let status = std::process::Command::new("openssl")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status()
                .expect("openssl runs");
            assert!(status.success(), "openssl {args:?}");
        };
        let o = |s: &'static str| std::ffi::OsStr::new(s);
        let (ca, ca_key, csr, leaf, key) =
            (p("ca.pem"), p("ca.key"), p("l.csr"), p("l.pem"), p("l.key"));
        let ec = [
            o("-newkey"),
            o("ec"),
            o("-pkeyopt"),
            o("ec_paramgen_curve:prime256v1"),
            o("-nodes"),
        ];
        let mut a = vec![
            o("req"),
            o("-x509"),
            o("-days"),
            o("2"),
            o("-subj"),
            o("/CN=record test CA"),
        ];
        a.extend(ec);
        a.extend([o("-keyout"), ca_key.as_os_str(), o("-out"), ca.as_os_str()]);
        openssl(&a);
        let mut a = vec![o("req"), o("-subj"), o("/CN=localhost")];
        a.extend(ec);
        a.extend([o("-keyout"), key.as_os_str(), o("-out"), csr.as_os_str()]);
        openssl(&a);
        let ext = p("ext");
        std::fs::write(
            &ext,
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )
        .expect("ext");
        openssl(&[
            o("x509"),
            o("-req"),
            o("-days"),
            o("2"),
            o("-in"),
            csr.as_os_str(),
            o("-CA"),
            ca.as_os_str(),
            o("-CAkey"),
            ca_key.as_os_str(),
            o("-CAcreateserial"),
            o("-extfile"),
            ext.as_os_str(),
            o("-out"),
            leaf.as_os_str(),
        ]);
        let certs = CertificateDer::pem_file_iter(&leaf)
            .expect("cert")
            .collect::<Result<Vec<_>, _>>()
            .expect("cert");
        let key = PrivateKeyDer::from_pem_file(&key).expect("key");
        let ca = CertificateDer::from_pem_file(&ca).expect("ca");
        std::fs::remove_dir_all(&dir).expect("remove temp dir");
        (certs, key, ca)
    }

    fn provider(
        suite: Option<rustls::SupportedCipherSuite>,
    ) -> Arc<rustls::crypto::CryptoProvider> {
        let mut p = rustls::crypto::ring::default_provider();
        if let Some(s) = suite {
            p.cipher_suites = vec![s];
        }
        Arc::new(p)
    }

    fn transfer(from: &mut dyn FnMut(&mut Vec<u8>), to: &mut dyn FnMut(&[u8])) -> usize {
        let mut buf = Vec::new();
        from(&mut buf);
        if !buf.is_empty() {
            to(&buf);
        }
        buf.len()
    }

    /// A completed handshake: the client, and the server's keys (everything the server had
    /// to send, session tickets included, already delivered to the client).
    pub(crate) fn pair(
        suite: Option<rustls::SupportedCipherSuite>,
    ) -> (ClientConnection, RecordKeys) {
        let (certs, key, ca) = cert();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).expect("root");
        let mut server_cfg = ServerConfig::builder_with_provider(provider(None))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        server_cfg.enable_secret_extraction = true;
        let client_cfg = ClientConfig::builder_with_provider(provider(suite))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut server = ServerConnection::new(Arc::new(server_cfg)).expect("server");
        let mut client = ClientConnection::new(
            Arc::new(client_cfg),
            ServerName::try_from("localhost").expect("name"),
        )
        .expect("client");
        // The large payloads are written in one go.
        client.set_buffer_limit(None);
        for _ in 0..16 {
            let c2s = transfer(
                &mut |b| {
                    while client.wants_write() {
                        client.write_tls(b).expect("write");
                    }
                },
                &mut |b| {
                    let mut r = b;
                    while !r.is_empty() {
                        server.read_tls(&mut r).expect("read");
                        server.process_new_packets().expect("server");
                    }
                },
            );
            let s2c = transfer(
                &mut |b| {
                    while server.wants_write() {
                        server.write_tls(b).expect("write");
                    }
                },
                &mut |b| {
                    let mut r = b;
                    while !r.is_empty() {
                        client.read_tls(&mut r).expect("read");
                        client.process_new_packets().expect("client");
                    }
                },
            );
            if c2s == 0 && s2c == 0 && !server.is_handshaking() && !client.is_handshaking() {
                break;
            }
        }
        let secrets = server.dangerous_extract_secrets().expect("secrets");
        (
            client,
            RecordKeys::from_secrets(secrets).expect("a suite we handle"),
        )
    }

    fn client_sends(client: &mut ClientConnection, data: &[u8]) -> Vec<u8> {
        client.writer().write_all(data).expect("write");
        let mut out = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut out).expect("write_tls");
        }
        out
    }

    fn client_receives(client: &mut ClientConnection, records: &[u8]) -> Vec<u8> {
        let mut r = records;
        let mut got = Vec::new();
        while !r.is_empty() {
            client.read_tls(&mut r).expect("read_tls");
            client
                .process_new_packets()
                .expect("client accepts our records");
            let mut buf = vec![0; 65536];
            loop {
                match client.reader().read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(_) => break,
                }
            }
        }
        got
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn round_trip(suite: Option<rustls::SupportedCipherSuite>, expect: Suite) {
        let (mut client, mut keys) = pair(suite);
        assert_eq!(keys.tx.suite(), expect);
        // Many records both ways: 200 KB is 13 records of 2^14 bytes.
        let up = payload(200_000);
        let records = client_sends(&mut client, &up);
        let (mut pending, mut work, mut plain) =
            (BytesMut::new(), BytesMut::new(), BytesMut::new());
        assert_eq!(
            open(&mut keys.rx, &mut pending, &records, &mut work, &mut plain),
            Ok(false)
        );
        assert!(pending.is_empty());
        assert_eq!(&plain[..], &up[..]);
        let down = payload(200_001);
        let mut out = BytesMut::new();
        let first = keys.tx.seq();
        seal(&mut keys.tx, &down, &mut out).expect("seal");
        assert_eq!(
            (keys.tx.seq() - first) as usize,
            down.len().div_ceil(RECORD_PLAINTEXT_MAX)
        );
        assert_eq!(client_receives(&mut client, &out), down);
    }

    #[test]
    fn aes128_gcm_both_ways_against_rustls() {
        round_trip(
            Some(rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256),
            Suite::Aes128Gcm,
        );
    }

    #[test]
    fn aes256_gcm_both_ways_against_rustls() {
        round_trip(
            Some(rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384),
            Suite::Aes256Gcm,
        );
    }

    #[test]
    fn chacha20_poly1305_both_ways_against_rustls() {
        round_trip(
            Some(rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256),
            Suite::Chacha20Poly1305,
        );
    }

    #[test]
    fn records_split_at_every_byte_keep_only_the_partial_record() {
        let (mut client, mut keys) = pair(None);
        let up = payload(40_000);
        let records = client_sends(&mut client, &up);
        let (mut pending, mut work, mut plain) =
            (BytesMut::new(), BytesMut::new(), BytesMut::new());
        for chunk in records.chunks(997) {
            assert_eq!(
                open(&mut keys.rx, &mut pending, chunk, &mut work, &mut plain),
                Ok(false)
            );
            assert!(pending.len() <= HEADER_LEN + RECORD_CIPHERTEXT_MAX);
        }
        assert!(pending.is_empty());
        assert_eq!(&plain[..], &up[..]);
    }

    #[test]
    fn a_changed_byte_is_bad_record_mac() {
        let (mut client, mut keys) = pair(None);
        let mut records = client_sends(&mut client, b"hello");
        let last = records.len() - 1;
        records[last] ^= 1;
        let (mut pending, mut work, mut plain) =
            (BytesMut::new(), BytesMut::new(), BytesMut::new());
        let err = open(&mut keys.rx, &mut pending, &records, &mut work, &mut plain);
        assert_eq!(err, Err(RecordError::BadRecordMac));
        assert_eq!(
            RecordError::BadRecordMac.alert(),
            Some(ALERT_BAD_RECORD_MAC)
        );
        assert!(plain.is_empty());
    }

    #[test]
    fn a_plaintext_or_oversized_record_is_refused() {
        let (_client, mut keys) = pair(None);
        let (mut pending, mut work, mut plain) =
            (BytesMut::new(), BytesMut::new(), BytesMut::new());
        let handshake = [22, 3, 3, 0, 4, 1, 0, 0, 0];
        assert_eq!(
            open(
                &mut keys.rx,
                &mut pending,
                &handshake,
                &mut work,
                &mut plain
            ),
            Err(RecordError::UnexpectedMessage)
        );
        let huge = [23, 3, 3, 0x41, 0x01];
        assert_eq!(
            open(&mut keys.rx, &mut pending, &huge, &mut work, &mut plain),
            Err(RecordError::RecordOverflow)
        );
    }

    #[test]
    fn close_notify_from_the_client_closes() {
        let (mut client, mut keys) = pair(None);
        client.send_close_notify();
        let mut records = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut records).expect("write_tls");
        }
        let (mut pending, mut work, mut plain) =
            (BytesMut::new(), BytesMut::new(), BytesMut::new());
        assert_eq!(
            open(&mut keys.rx, &mut pending, &records, &mut work, &mut plain),
            Ok(true)
        );
    }

    /// RFC 8446 4.6.3: a KeyUpdate must be answered; ringmq cannot follow it and closes with
    /// unexpected_message.
    #[test]
    fn a_client_key_update_is_refused_with_unexpected_message() {
        let (mut client, mut keys) = pair(None);
        client.refresh_traffic_keys().expect("key update");
        let mut records = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut records).expect("write_tls");
        }
        let (mut pending, mut work, mut plain) =
            (BytesMut::new(), BytesMut::new(), BytesMut::new());
        let err = open(&mut keys.rx, &mut pending, &records, &mut work, &mut plain);
        assert_eq!(err, Err(RecordError::KeyUpdate));
        assert_eq!(
            RecordError::KeyUpdate.alert(),
            Some(ALERT_UNEXPECTED_MESSAGE)
        );
    }

    #[test]
    fn our_fatal_alert_reaches_rustls() {
        let (mut client, mut keys) = pair(None);
        let mut out = BytesMut::new();
        alert(&mut keys.tx, ALERT_BAD_RECORD_MAC, &mut out).expect("alert");
        let mut r = &out[..];
        client.read_tls(&mut r).expect("read_tls");
        let err = client.process_new_packets().expect_err("fatal alert");
        assert_eq!(
            err,
            rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac)
        );
    }

    /// RFC 8446 5.3: the sequence number must not wrap. Data may use it up to DATA_SEQ_LAST;
    /// past it nothing more is sealed (not even part of a batch), and the number kept after
    /// it still carries the close_notify, which rustls reads as an orderly close.
    #[test]
    fn sequence_numbers_never_wrap_and_the_last_closes() {
        let (_client, mut keys) = pair(None);
        let mut out = BytesMut::new();
        // A batch of two records that would cross the last number: nothing sealed.
        keys.tx.set_seq(DATA_SEQ_LAST);
        let two = vec![b'x'; RECORD_PLAINTEXT_MAX + 1];
        assert_eq!(
            seal(&mut keys.tx, &two, &mut out),
            Err(RecordError::SequenceExhausted)
        );
        assert!(out.is_empty());
        assert_eq!(keys.tx.seq(), DATA_SEQ_LAST);
        seal(&mut keys.tx, b"last", &mut out).expect("the last data sequence number");
        assert_eq!(
            seal(&mut keys.tx, b"one more", &mut out),
            Err(RecordError::SequenceExhausted)
        );
        alert(&mut keys.tx, ALERT_CLOSE_NOTIFY, &mut out).expect("the kept number");
        assert_eq!(keys.tx.seq(), u64::MAX);
        assert_eq!(
            alert(&mut keys.tx, ALERT_CLOSE_NOTIFY, &mut BytesMut::new()),
            Err(RecordError::SequenceExhausted)
        );
    }

    /// The close_notify sealed after data is read by rustls as an orderly end.
    #[test]
    fn close_notify_after_data_reaches_rustls() {
        let (mut client, mut keys) = pair(None);
        let mut out = BytesMut::new();
        seal(&mut keys.tx, b"bye", &mut out).expect("seal");
        alert(&mut keys.tx, ALERT_CLOSE_NOTIFY, &mut out).expect("alert");
        let mut r = &out[..];
        client.read_tls(&mut r).expect("read_tls");
        let state = client.process_new_packets().expect("no error");
        assert!(state.peer_has_closed());
        let mut got = Vec::new();
        let _ = client.reader().read_to_end(&mut got);
        assert_eq!(got, b"bye");
    }

    /// A fatal alert from the peer is its own error, with its description (not a protocol
    /// error of ours): RFC 8446 6.2.
    #[test]
    fn a_peer_fatal_alert_is_reported_with_its_description() {
        let (mut client, mut keys) = pair(None);
        client.send_close_notify();
        let mut records = Vec::new();
        client.write_tls(&mut records).expect("write_tls");
        let (mut pending, mut work, mut plain) =
            (BytesMut::new(), BytesMut::new(), BytesMut::new());
        assert_eq!(
            open(&mut keys.rx, &mut pending, &records, &mut work, &mut plain),
            Ok(true),
            "close_notify is an orderly close"
        );
        // A fatal alert sealed as the client would (our own sealer, the client's direction).
        let (_client, mut keys) = pair(None);
        let rx = &keys.rx;
        let mut peer_tx = DirectionKeys {
            suite: rx.suite,
            key: rx.key,
            iv: rx.iv,
            seq: rx.seq,
        };
        let mut alert_record = BytesMut::new();
        alert(&mut peer_tx, 48, &mut alert_record).expect("unknown_ca alert");
        let err = open(
            &mut keys.rx,
            &mut pending,
            &alert_record,
            &mut work,
            &mut plain,
        );
        assert_eq!(err, Err(RecordError::PeerAlert(48)));
        assert_eq!(RecordError::PeerAlert(48).alert(), None);
    }

    #[test]
    fn per_connection_keys_are_small() {
        assert!(std::mem::size_of::<RecordKeys>() <= 112);
    }
}
