//! TLS for `tls` and `wss` listeners with rustls' unbuffered API ([`TlsSession`]) over byte
//! slices: received records in, plaintext out, records to send out. mTLS verifies client certificates against
//! `ca_file` (`WebPkiClientVerifier`) and takes the certificate's CN and subjectAltNames into
//! `ConnMeta::identity`. A session that fails hands out the fatal alert rustls chose
//! ([`read`] appends it to the records to send) before the connection is closed.
//!
//! Certificates, key, CA and CRL reload atomically ([`TlsSource`]): one thread per process
//! ([`spawn_reloader`]) rebuilds the `ServerConfig` on SIGHUP (`crate::reload::generation`) or
//! when a file's modification time changes, and keeps the previous set when the new one fails
//! to load (logged). Shards pick the new set up at their next accept on the listener;
//! established connections keep the configuration they started with.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use engine::{IdentityMapping, IdentitySource, PeerIdentity};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::UnbufferedServerConnection;
use rustls::server::WebPkiClientVerifier;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{CertificateError, ServerConfig};
use tracing::{info, warn};

use super::record::{self, RecordError, RecordKeys};
use super::{invalid, ClientAuth, EdgeConfigError, Failure, Listener, TlsConfig};

/// How often the reloader looks at the files' modification times and the reload generation.
pub const TLS_RELOAD_POLL: Duration = Duration::from_secs(2);
/// Most subjectAltName entries of each kind taken from a client certificate.
pub const IDENTITY_NAMES_MAX: usize = 16;

/// The identity mapping of a `[listener.tls]`, checked against its `client_auth`.
pub fn mapping_of(cfg: &TlsConfig, key: &str) -> Result<IdentityMapping, EdgeConfigError> {
    let uses_identity = cfg.identity_as_username != IdentitySource::None
        || cfg.identity_as_client_id != IdentitySource::None;
    if uses_identity && cfg.client_auth == ClientAuth::None {
        return Err(invalid(
            format!("{key}.client_auth"),
            "identity_as_username / identity_as_client_id need client certificates: set client_auth = \"required\" (or \"optional\")",
        ));
    }
    if cfg.require_client_id_match && cfg.identity_as_client_id == IdentitySource::None {
        return Err(invalid(
            format!("{key}.require_client_id_match"),
            "needs identity_as_client_id = \"cn\", \"san_dns\" or \"san_uri\"",
        ));
    }
    Ok(IdentityMapping {
        as_username: cfg.identity_as_username,
        as_client_id: cfg.identity_as_client_id,
        require_client_id_match: cfg.require_client_id_match,
    })
}

fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, EdgeConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(key, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            key,
            format!("{}: no PEM certificate in it", path.display()),
        ));
    }
    Ok(certs)
}

fn read_crls(
    path: &Path,
    key: &str,
) -> Result<Vec<CertificateRevocationListDer<'static>>, EdgeConfigError> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(key, format!("{}: {e}", path.display())))?;
    if crls.is_empty() {
        return Err(invalid(
            key,
            format!("{}: no PEM X509 CRL in it", path.display()),
        ));
    }
    Ok(crls)
}

/// Builds a server configuration from the files; errors name the key of the file at fault.
pub fn build(cfg: &TlsConfig, key: &str) -> Result<Arc<ServerConfig>, EdgeConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&cfg.cert_file, &format!("{key}.cert_file"))?;
    let private_key = PrivateKeyDer::from_pem_file(&cfg.key_file).map_err(|e| {
        invalid(
            format!("{key}.key_file"),
            format!("{}: {e}", cfg.key_file.display()),
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(key, e.to_string()))?;
    let builder = match cfg.client_auth {
        ClientAuth::None if cfg.crl_file.is_some() => {
            return Err(invalid(
                format!("{key}.crl_file"),
                "a CRL needs client certificates: set client_auth = \"required\" (or \"optional\")",
            ));
        }
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional | ClientAuth::Required => {
            let ca_key = format!("{key}.ca_file");
            let Some(ca_file) = &cfg.ca_file else {
                return Err(invalid(
                    ca_key,
                    "client_auth needs the CA client certificates are verified against",
                ));
            };
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca_file, &ca_key)? {
                roots
                    .add(cert)
                    .map_err(|e| invalid(&ca_key, format!("{}: {e}", ca_file.display())))?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            if cfg.client_auth == ClientAuth::Optional {
                verifier = verifier.allow_unauthenticated();
            }
            if let Some(crl_file) = &cfg.crl_file {
                let crls = read_crls(crl_file, &format!("{key}.crl_file"))?;
                verifier = verifier.with_crls(crls).only_check_end_entity_revocation();
            }
            let verifier = verifier
                .build()
                .map_err(|e| invalid(&ca_key, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, private_key).map_err(|e| {
        invalid(
            format!("{key}.key_file"),
            format!("does not fit cert_file: {e}"),
        )
    })?;
    // TLS 1.3 sessions move to our record layer after the handshake (`TlsSession::take_keys`).
    config.enable_secret_extraction = true;
    Ok(Arc::new(config))
}

/// Modification times of the files a configuration was built from.
type Stamps = [Option<SystemTime>; 4];

/// A listener's TLS material, shared by every shard; replaced whole on reload.
pub struct TlsSource {
    /// The config key it came from (`listener[1].tls`), for logs.
    key: String,
    files: TlsConfig,
    /// Bumped on every successful reload; shards compare it at accept (one relaxed load of a
    /// line nobody writes between reloads).
    version: AtomicU64,
    current: Mutex<Arc<ServerConfig>>,
    stamps: Mutex<Stamps>,
}

impl std::fmt::Debug for TlsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSource")
            .field("key", &self.key)
            .field("version", &self.version.load(Ordering::Relaxed))
            .finish()
    }
}

fn stamps_of(cfg: &TlsConfig) -> Stamps {
    let mtime = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    [
        mtime(&cfg.cert_file),
        mtime(&cfg.key_file),
        cfg.ca_file.as_ref().and_then(mtime),
        cfg.crl_file.as_ref().and_then(mtime),
    ]
}

impl TlsSource {
    pub fn load(cfg: &TlsConfig, key: &str) -> Result<Arc<TlsSource>, EdgeConfigError> {
        let stamps = stamps_of(cfg);
        let config = build(cfg, key)?;
        Ok(Arc::new(TlsSource {
            key: key.to_owned(),
            files: cfg.clone(),
            version: AtomicU64::new(0),
            current: Mutex::new(config),
            stamps: Mutex::new(stamps),
        }))
    }

    /// The configuration in use and its version.
    pub fn current(&self) -> (u64, Arc<ServerConfig>) {
        let version = self.version.load(Ordering::Acquire);
        let config = match self.current.lock() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        (version, config)
    }

    /// Replaces a shard's copy when a reload happened since it was taken.
    pub fn refresh(&self, copy: &mut (u64, Arc<ServerConfig>)) {
        if self.version.load(Ordering::Relaxed) != copy.0 {
            *copy = self.current();
        }
    }

    /// Rebuilds from the files when `force` (SIGHUP) or a file changed. True if it reloaded.
    pub fn reload_if_changed(&self, force: bool) -> bool {
        let stamps = stamps_of(&self.files);
        {
            let Ok(mut last) = self.stamps.lock() else {
                return false;
            };
            if !force && *last == stamps {
                return false;
            }
            // Remembered even when the load fails: the next attempt waits for another change.
            *last = stamps;
        }
        match build(&self.files, &self.key) {
            Ok(config) => {
                if let Ok(mut current) = self.current.lock() {
                    *current = config;
                }
                let version = self.version.fetch_add(1, Ordering::AcqRel) + 1;
                info!(listener = %self.key, version, "tls certificates reloaded");
                true
            }
            Err(err) => {
                warn!(listener = %self.key, error = %err, "tls reload failed; keeping the previous certificates");
                false
            }
        }
    }
}

/// Starts the thread that reloads every TLS listener's files; it ends when `shutdown` is set.
pub fn spawn_reloader(listeners: &[Listener], shutdown: Arc<AtomicBool>) -> std::io::Result<()> {
    let sources: Vec<Arc<TlsSource>> = listeners.iter().filter_map(|l| l.tls.clone()).collect();
    if sources.is_empty() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("ringmq-tls-reload".into())
        .spawn(move || {
            let mut generation = crate::reload::generation();
            while !shutdown.load(Ordering::Acquire) {
                std::thread::sleep(TLS_RELOAD_POLL);
                let now = crate::reload::generation();
                let force = now != generation;
                generation = now;
                for source in &sources {
                    source.reload_if_changed(force);
                }
            }
        })
        .map(|_| ())
}

/// Why a TLS session failed, for the failure counter.
pub fn failure_of(err: &rustls::Error) -> Failure {
    match err {
        rustls::Error::NoCertificatesPresented => Failure::TlsNoCertificate,
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => Failure::TlsCertificateExpired,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => Failure::TlsUnknownCa,
        rustls::Error::InvalidCertificate(CertificateError::Revoked) => {
            Failure::TlsCertificateRevoked
        }
        rustls::Error::InvalidCertificate(_) => Failure::TlsBadCertificate,
        rustls::Error::AlertReceived(_) => Failure::TlsPeerAlert,
        _ => Failure::TlsProtocol,
    }
}

/// A TLS session: rustls' unbuffered API during the handshake, then, for a TLS 1.3 session with
/// a suite [`record`] handles, our own record layer over the extracted traffic keys (the rustls
/// connection is dropped: an idle connection keeps 112 bytes of keys instead of rustls' state).
/// TLS 1.2 sessions keep rustls throughout. Received records are decrypted from the shard's
/// scratch buffer, so an idle session keeps no record buffer; only a record that arrived in
/// part waits in `pending` (at most one record, 16 KiB plus its header and tag).
pub struct TlsSession {
    engine: Engine,
    /// The start of a record whose end has not arrived; empty (no allocation) otherwise.
    pending: BytesMut,
    /// The client certificate's names, kept from the rustls session for [`identity_of`].
    identity: Option<Box<PeerIdentity>>,
}

enum Engine {
    Rustls(Box<UnbufferedServerConnection>),
    Own(RecordKeys),
    /// Only while the rustls session is being replaced.
    Gone,
}

impl TlsSession {
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsSession, rustls::Error> {
        Ok(TlsSession {
            engine: Engine::Rustls(Box::new(UnbufferedServerConnection::new(config)?)),
            pending: BytesMut::new(),
            identity: None,
        })
    }

    pub fn is_handshaking(&self) -> bool {
        match &self.engine {
            Engine::Rustls(conn) => conn.is_handshaking(),
            Engine::Own(_) | Engine::Gone => false,
        }
    }

    /// After the handshake of a TLS 1.3 session whose records rustls has all handed out
    /// (session tickets included: `wants_write` is false), takes the traffic keys and drops
    /// the rustls session. Anything else keeps rustls.
    fn take_keys(&mut self) -> Result<(), Failure> {
        let Engine::Rustls(conn) = &self.engine else {
            return Ok(());
        };
        let ours = !conn.is_handshaking()
            && !conn.wants_write()
            && conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3)
            && conn.negotiated_cipher_suite().is_some_and(|s| {
                matches!(
                    s.suite(),
                    rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                        | rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
                        | rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
                )
            });
        if !ours {
            return Ok(());
        }
        self.identity = identity_of_conn(conn).map(Box::new);
        let Engine::Rustls(conn) = std::mem::replace(&mut self.engine, Engine::Gone) else {
            return Ok(());
        };
        // The kernel connection (for kTLS's key updates) is not kept: KeyUpdates are refused.
        let keys = conn
            .dangerous_into_kernel_connection()
            .ok()
            .and_then(|(secrets, _)| RecordKeys::from_secrets(secrets));
        match keys {
            Some(keys) => {
                self.engine = Engine::Own(keys);
                Ok(())
            }
            None => Err(Failure::TlsProtocol),
        }
    }
}

/// Why a connection on our record layer failed, for the failure counter.
fn record_failure(err: RecordError) -> Failure {
    match err {
        RecordError::KeyUpdate => Failure::TlsKeyUpdate,
        RecordError::BadRecordMac => Failure::TlsBadRecordMac,
        RecordError::PeerAlert(_) => Failure::TlsPeerAlert,
        RecordError::SequenceExhausted => Failure::TlsSequenceExhausted,
        _ => Failure::TlsProtocol,
    }
}

/// Lets `write` fill the end of `tx`, growing it to the size it asks for (`Err(required)`;
/// `Err(0)`: it cannot write at all). False if nothing could be written.
fn append(
    tx: &mut BytesMut,
    first_guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, usize>,
) -> bool {
    let mut want = first_guess.max(64);
    // Two rounds suffice: the second has the size rustls asked for.
    for _ in 0..3 {
        let start = tx.len();
        tx.resize(start + want, 0);
        match write(&mut tx[start..]) {
            Ok(n) => {
                tx.truncate(start + n);
                return true;
            }
            Err(required) => {
                tx.truncate(start);
                if required <= want {
                    return false;
                }
                want = required;
            }
        }
    }
    false
}

fn encode_error(e: EncodeError) -> usize {
    match e {
        EncodeError::InsufficientSize(i) => i.required_size,
        _ => 0,
    }
}

fn encrypt_error(e: EncryptError) -> usize {
    match e {
        EncryptError::InsufficientSize(i) => i.required_size,
        _ => 0,
    }
}

/// Room for `len` bytes of application data in records (16 KiB each, 5-byte header, type byte
/// and a 16-byte tag, rounded up).
fn records_len(len: usize) -> usize {
    len + (len / 16_384 + 1) * 64
}

/// Feeds received records: plaintext is appended to `plain`, records to answer with (handshake
/// flights, session tickets) to `tx`. `work` is the shard's scratch. True when the peer closed
/// the session (close_notify).
pub fn read(
    s: &mut TlsSession,
    input: &[u8],
    work: &mut BytesMut,
    plain: &mut BytesMut,
    tx: &mut BytesMut,
) -> Result<bool, Failure> {
    let conn = match &mut s.engine {
        Engine::Rustls(conn) => conn,
        Engine::Own(keys) => {
            return record::open(&mut keys.rx, &mut s.pending, input, work, plain).map_err(|err| {
                tracing::debug!(error = %err, "tls record layer failed");
                if let Some(alert) = err.alert() {
                    // Best effort: the connection is closed after it either way.
                    let _ = record::alert(&mut keys.tx, alert, tx);
                }
                s.pending = BytesMut::new();
                record_failure(err)
            });
        }
        Engine::Gone => return Err(Failure::TlsProtocol),
    };
    work.clear();
    work.extend_from_slice(&s.pending);
    work.extend_from_slice(input);
    s.pending = BytesMut::new();
    let mut start = 0;
    let mut closed = false;
    // Each round consumes input or produces output; the bound only guards against a stall.
    for _ in 0..1024 {
        let UnbufferedStatus { mut discard, state } = conn.process_tls_records(&mut work[start..]);
        let state = match state {
            Ok(state) => state,
            Err(err) => {
                tracing::debug!(error = %err, "tls session failed");
                alert_after_error(conn, tx);
                return Err(failure_of(&err));
            }
        };
        let mut more = true;
        match state {
            ConnectionState::ReadTraffic(mut records) => {
                while let Some(record) = records.next_record() {
                    match record {
                        Ok(record) => {
                            discard += record.discard;
                            plain.extend_from_slice(record.payload);
                        }
                        Err(err) => {
                            let failure = failure_of(&err);
                            alert_after_error(conn, tx);
                            return Err(failure);
                        }
                    }
                }
            }
            ConnectionState::ReadEarlyData(mut records) => {
                // Early data is not enabled (max_early_data_size 0): nothing should come here.
                while let Some(record) = records.next_record() {
                    discard += record.map_err(|err| failure_of(&err))?.discard;
                }
            }
            ConnectionState::EncodeTlsData(mut flight) => {
                if !append(tx, 4096, |buf| flight.encode(buf).map_err(encode_error)) {
                    return Err(Failure::TlsProtocol);
                }
            }
            // `tx` goes to the ring right after this read.
            ConnectionState::TransmitTlsData(sent) => sent.done(),
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                closed = true;
                more = false;
            }
            // BlockedHandshake, WriteTraffic: everything whole has been read.
            _ => more = false,
        }
        start += discard;
        if !more {
            break;
        }
    }
    if !closed && start < work.len() {
        s.pending = BytesMut::from(&work[start..]);
    }
    if !closed {
        s.take_keys()?;
    }
    Ok(closed)
}

/// Most bytes of the records a failed session may still send: its fatal alert (a 2-byte alert in
/// one record, 5-byte header plus type byte and a 16-byte tag when encrypted), with room to
/// spare; anything longer is not sent.
pub const ALERT_LEN_MAX: usize = 64;
/// Rounds of the failed session's state machine drained for its alert.
const ALERT_ROUNDS_MAX: usize = 4;

/// After `process_tls_records` returned an error, the fatal alert rustls decided on (`unknown_ca`,
/// `certificate_required`, `certificate_revoked`, `handshake_failure`, `decode_error`, ...) is
/// queued in the session (`wants_write`), already encrypted when handshake keys were in use;
/// the next `process_tls_records` hands queued records out as `EncodeTlsData` before it looks at
/// any input. It is only called while something is queued: with nothing queued it would go on
/// to deframe, and after an error the deframer's state no longer fits any buffer we could pass
/// (rustls panics on an empty one when a record was left half-read, and queues a second fatal
/// alert on more input). At most [`ALERT_LEN_MAX`] bytes are appended to `tx`; the caller
/// closes the connection once they are written.
fn alert_after_error(conn: &mut UnbufferedServerConnection, tx: &mut BytesMut) {
    let start = tx.len();
    for _ in 0..ALERT_ROUNDS_MAX {
        if !conn.wants_write() {
            break;
        }
        let UnbufferedStatus { state, .. } = conn.process_tls_records(&mut []);
        let Ok(ConnectionState::EncodeTlsData(mut flight)) = state else {
            break;
        };
        let room = ALERT_LEN_MAX - (tx.len() - start);
        if !append(tx, room, |buf| {
            flight.encode(&mut buf[..room]).map_err(|_| 0)
        }) {
            break;
        }
    }
}

/// Runs the session until it may encrypt (encoding whatever flight it still owes), then lets
/// `write` encrypt into `tx`. False if the session cannot send.
fn with_write_traffic(
    conn: &mut UnbufferedServerConnection,
    tx: &mut BytesMut,
    mut write: impl FnMut(
        &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
        &mut BytesMut,
    ) -> bool,
) -> bool {
    for _ in 0..8 {
        let UnbufferedStatus { state, .. } = conn.process_tls_records(&mut []);
        match state {
            Ok(ConnectionState::WriteTraffic(mut traffic)) => return write(&mut traffic, tx),
            Ok(ConnectionState::EncodeTlsData(mut flight)) => {
                if !append(tx, 4096, |buf| flight.encode(buf).map_err(encode_error)) {
                    return false;
                }
            }
            Ok(ConnectionState::TransmitTlsData(sent)) => sent.done(),
            _ => return false,
        }
    }
    false
}

/// Encrypts `data` into records appended to `tx`. An error means the session cannot send any
/// more (on ringmq's record layer: the sequence numbers are used up, RFC 8446 5.3, and the
/// close_notify that ends the session is appended instead): the caller closes the connection,
/// as dropping the output would leave a hole in the MQTT stream.
pub fn write_plaintext(s: &mut TlsSession, data: &[u8], tx: &mut BytesMut) -> Result<(), Failure> {
    if data.is_empty() {
        return Ok(());
    }
    let result = match &mut s.engine {
        Engine::Rustls(conn) => {
            let ok = with_write_traffic(conn, tx, |traffic, tx| {
                append(tx, records_len(data.len()), |buf| {
                    traffic.encrypt(data, buf).map_err(encrypt_error)
                })
            });
            if ok {
                Ok(())
            } else {
                Err(Failure::TlsProtocol)
            }
        }
        Engine::Own(keys) => record::seal(&mut keys.tx, data, tx).map_err(|err| {
            let _ = record::alert(&mut keys.tx, record::ALERT_CLOSE_NOTIFY, tx);
            record_failure(err)
        }),
        Engine::Gone => Err(Failure::TlsProtocol),
    };
    if let Err(failure) = result {
        tracing::debug!(
            len = data.len(),
            reason = failure.label(),
            "tls session cannot send; closing"
        );
    }
    result
}

/// Appends a close_notify alert to `tx`.
pub fn close_notify(s: &mut TlsSession, tx: &mut BytesMut) {
    match &mut s.engine {
        Engine::Rustls(conn) => {
            with_write_traffic(conn, tx, |traffic, tx| {
                append(tx, 64, |buf| {
                    traffic.queue_close_notify(buf).map_err(encrypt_error)
                })
            });
        }
        Engine::Own(keys) => {
            let _ = record::alert(&mut keys.tx, record::ALERT_CLOSE_NOTIFY, tx);
        }
        Engine::Gone => {}
    }
}

/// The verified client certificate's names (`None` without a client certificate); taken once
/// the handshake is done.
pub fn identity_of(tls: &mut TlsSession) -> Option<PeerIdentity> {
    match &tls.engine {
        Engine::Rustls(conn) => identity_of_conn(conn),
        Engine::Own(_) | Engine::Gone => tls.identity.take().map(|b| *b),
    }
}

/// The names of the verified client certificate of a rustls session.
fn identity_of_conn(conn: &UnbufferedServerConnection) -> Option<PeerIdentity> {
    let cert = conn.peer_certificates()?.first()?;
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let common_name = x509
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let mut identity = PeerIdentity {
        common_name,
        ..Default::default()
    };
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        use x509_parser::extensions::GeneralName;
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) if identity.dns_names.len() < IDENTITY_NAMES_MAX => {
                    identity.dns_names.push((*d).to_owned())
                }
                GeneralName::URI(u) if identity.uris.len() < IDENTITY_NAMES_MAX => {
                    identity.uris.push((*u).to_owned())
                }
                _ => {}
            }
        }
    }
    Some(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8446 5.3: when the sending direction's sequence numbers are used up the session
    /// does not drop output silently: `write_plaintext` fails with its own reason (the edge
    /// then closes the connection) after appending the close_notify that ends the session.
    #[test]
    fn used_up_sequence_numbers_fail_the_write_with_a_close_notify() {
        let (_client, mut keys) = record::tests::pair(None);
        keys.tx.set_seq(record::DATA_SEQ_LAST + 1);
        let mut session = TlsSession {
            engine: Engine::Own(keys),
            pending: BytesMut::new(),
            identity: None,
        };
        let mut tx = BytesMut::new();
        assert_eq!(
            write_plaintext(&mut session, b"publish", &mut tx),
            Err(Failure::TlsSequenceExhausted)
        );
        // Only the alert: header, level and description, content type, tag.
        assert_eq!(tx.len(), record::HEADER_LEN + 2 + 1 + record::TAG_LEN);
        // Nothing is left to seal with afterwards.
        let mut more = BytesMut::new();
        assert!(write_plaintext(&mut session, b"x", &mut more).is_err());
        assert!(more.is_empty());
    }

    /// A fatal alert from the peer is counted as `tls_peer_alert`, on rustls (during the
    /// handshake) as on ringmq's record layer.
    #[test]
    fn a_peer_alert_has_its_own_failure_reason() {
        assert_eq!(
            failure_of(&rustls::Error::AlertReceived(
                rustls::AlertDescription::UnknownCA
            )),
            Failure::TlsPeerAlert
        );
        assert_eq!(
            record_failure(RecordError::PeerAlert(48)),
            Failure::TlsPeerAlert
        );
        assert_eq!(Failure::TlsPeerAlert.label(), "tls_peer_alert");
    }
}
