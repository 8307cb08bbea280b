//! TLS for `tls` and `wss` listeners with rustls' `ServerConnection` over byte slices: received
//! records in, plaintext out, records to send out. mTLS verifies client certificates against
//! `ca_file` (`WebPkiClientVerifier`) and takes the certificate's CN and subjectAltNames into
//! `ConnMeta::identity`.
//!
//! Certificates, key and CA reload atomically ([`TlsSource`]): one thread per process
//! ([`spawn_reloader`]) rebuilds the `ServerConfig` on SIGHUP (`crate::reload::generation`) or
//! when a file's modification time changes, and keeps the previous set when the new one fails
//! to load (logged). Shards pick the new set up at their next accept on the listener;
//! established connections keep the configuration they started with.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::{BufMut, BytesMut};
use engine::{IdentityMapping, IdentitySource, PeerIdentity};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ServerConfig, ServerConnection};
use tracing::{info, warn};

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
            let verifier = verifier
                .build()
                .map_err(|e| invalid(&ca_key, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, private_key).map_err(|e| {
        invalid(
            format!("{key}.key_file"),
            format!("does not fit cert_file: {e}"),
        )
    })?;
    Ok(Arc::new(config))
}

/// Modification times of the files a configuration was built from.
type Stamps = [Option<SystemTime>; 3];

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
        rustls::Error::InvalidCertificate(_) => Failure::TlsBadCertificate,
        _ => Failure::TlsProtocol,
    }
}

/// Feeds received records; plaintext is appended to `plain`, records to answer with to `tx`
/// (alerts included when it fails).
pub fn read(
    tls: &mut ServerConnection,
    input: &[u8],
    plain: &mut BytesMut,
    tx: &mut BytesMut,
) -> Result<(), Failure> {
    let mut rest = input;
    loop {
        if !rest.is_empty() {
            match tls.read_tls(&mut rest) {
                Ok(0) => return Err(Failure::TlsProtocol),
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(error = %err, "tls record refused");
                    return Err(Failure::TlsProtocol);
                }
            }
        }
        let state = match tls.process_new_packets() {
            Ok(state) => state,
            Err(err) => {
                tracing::debug!(error = %err, "tls session failed");
                write_records(tls, tx);
                return Err(failure_of(&err));
            }
        };
        let n = state.plaintext_bytes_to_read();
        if n > 0 {
            let start = plain.len();
            plain.resize(start + n, 0);
            let got = tls.reader().read(&mut plain[start..]).unwrap_or(0);
            plain.truncate(start + got);
        }
        if rest.is_empty() {
            break;
        }
    }
    write_records(tls, tx);
    Ok(())
}

/// Encrypts `data` into records appended to `tx`.
pub fn write_plaintext(tls: &mut ServerConnection, data: &[u8], tx: &mut BytesMut) {
    let mut rest = data;
    while !rest.is_empty() {
        let n = tls.writer().write(rest).unwrap_or(0);
        rest = &rest[n..];
        write_records(tls, tx);
        if n == 0 {
            // Only a closed session refuses plaintext: what is left cannot go out.
            break;
        }
    }
}

/// Appends the records rustls has ready to `tx`.
pub fn write_records(tls: &mut ServerConnection, tx: &mut BytesMut) {
    while tls.wants_write() {
        match tls.write_tls(&mut (&mut *tx).writer()) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// The verified client certificate's names (`None` without a client certificate).
pub fn identity_of(tls: &ServerConnection) -> Option<PeerIdentity> {
    let cert = tls.peer_certificates()?.first()?;
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
