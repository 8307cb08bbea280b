//! What the transport knows about a connection before its CONNECT arrives: the client's address
//! (after a PROXY protocol header, the address the load balancer saw), the listener that accepted
//! it, and the verified client certificate's names. Set by the runtime with
//! [`crate::Engine::set_meta`]; travels with a hand-off. Plain TCP connections that nobody
//! authorizes by address carry none (the `Conn` holds an `Option<Box<ConnMeta>>`: 8 bytes).

use std::net::SocketAddr;

/// Index of a listener in the broker's configuration (`listen` entries first, then
/// `[[listener]]` entries, in file order).
pub type ListenerId = u16;

/// A connection's transport facts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnMeta {
    /// The client's address as the broker logs, counts and authorizes it.
    pub peer: Option<SocketAddr>,
    /// The listener that accepted the connection.
    pub listener: ListenerId,
    /// Names from the client certificate, when the TLS layer verified one (mTLS).
    pub identity: Option<PeerIdentity>,
    /// The listener's rule for turning `identity` into username and client id.
    pub mapping: IdentityMapping,
}

/// Names taken from a verified client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The subject's common name (CN).
    pub common_name: Option<String>,
    /// subjectAltName DNS entries, in certificate order.
    pub dns_names: Vec<String>,
    /// subjectAltName URI entries, in certificate order.
    pub uris: Vec<String>,
}

/// Which certificate name stands for the client (`identity_as_username`,
/// `identity_as_client_id` of a `[listener.tls]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    /// The certificate does not stand in for this field.
    #[default]
    None,
    /// The subject's common name.
    Cn,
    /// The first subjectAltName DNS entry.
    SanDns,
    /// The first subjectAltName URI entry.
    SanUri,
}

impl IdentitySource {
    /// The name this source picks from `identity`; `None` when the certificate has no such name.
    pub fn pick(self, identity: &PeerIdentity) -> Option<&str> {
        match self {
            IdentitySource::None => None,
            IdentitySource::Cn => identity.common_name.as_deref(),
            IdentitySource::SanDns => identity.dns_names.first().map(String::as_str),
            IdentitySource::SanUri => identity.uris.first().map(String::as_str),
        }
    }
}

/// How a listener turns a verified client certificate into MQTT identity, applied to CONNECT
/// before anything else reads it (the home shard, authentication, the session).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdentityMapping {
    /// The username becomes this certificate name (Mosquitto's `use_identity_as_username`: the
    /// client's own username is replaced; no such name refuses the CONNECT as bad credentials).
    pub as_username: IdentitySource,
    /// The client id becomes this certificate name (like Mosquitto's `use_username_as_clientid`).
    pub as_client_id: IdentitySource,
    /// Refuse (CONNACK 0x85 / return code 2) a CONNECT whose non-empty client id differs from
    /// the certificate's, instead of replacing it: one vehicle cannot take another's session.
    pub require_client_id_match: bool,
}

impl IdentityMapping {
    /// True when the mapping changes nothing.
    pub fn is_none(&self) -> bool {
        self.as_username == IdentitySource::None && self.as_client_id == IdentitySource::None
    }
}
