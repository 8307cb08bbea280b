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
