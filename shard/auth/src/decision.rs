//! Outcomes of authentication and authorization, and the CONNACK codes the engine sends for them.
//!
//! | [`Refusal`]          | MQTT 5.0 CONNACK reason code   | MQTT 3.1.1 CONNACK return code        |
//! |----------------------|--------------------------------|---------------------------------------|
//! | `BadCredentials`     | 0x86 Bad User Name or Password | 4 bad user name or password           |
//! | `NotAuthorized`      | 0x87 Not authorized            | 5 not authorized                      |
//! | `Banned`             | 0x8A Banned                    | 5 not authorized (3.1.1 has no "banned") |
//! | `ServerBusy`         | 0x89 Server busy               | 3 server unavailable                  |
//! | `QuotaExceeded`      | 0x97 Quota exceeded            | 3 server unavailable                  |
//!
//! An ACL refusal ([`Access::Deny`]) is SUBACK 0x80 (3.1.1) / 0x87 (5.0) for SUBSCRIBE, and
//! PUBACK/PUBREC 0x87 (5.0) or a silent drop (QoS 0, and 3.1.1 as Mosquitto does) for PUBLISH.

use std::sync::Arc;
use std::time::SystemTime;

use crate::acl::ClaimAcl;

/// The verdict of an ACL check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Allow,
    Deny,
}

impl Access {
    pub fn is_allowed(self) -> bool {
        self == Access::Allow
    }
}

/// Why a CONNECT is refused; the engine maps it to a CONNACK code per protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The credentials were checked and are wrong (or missing where required).
    #[error("bad user name or password ({0})")]
    BadCredentials(FailureReason),
    /// The client is known but may not connect (e.g. anonymous when anonymous is off).
    #[error("not authorized ({0})")]
    NotAuthorized(FailureReason),
    /// The client id or address is banned (static ban list or flapping detection).
    #[error("banned")]
    Banned,
    /// The auth worker queue is full: try again later.
    #[error("server busy")]
    ServerBusy,
    /// The shard already waits on its most authentications at once: try again later.
    #[error("quota exceeded (too many authentications in flight)")]
    QuotaExceeded,
}

impl Refusal {
    /// The MQTT 5.0 CONNACK reason code.
    pub fn v5_reason_code(self) -> u8 {
        match self {
            Refusal::BadCredentials(_) => 0x86,
            Refusal::NotAuthorized(_) => 0x87,
            Refusal::Banned => 0x8A,
            Refusal::ServerBusy => 0x89,
            Refusal::QuotaExceeded => 0x97,
        }
    }

    /// The MQTT 3.1.1 CONNACK return code (3.1.1 section 3.2.2.3).
    pub fn v311_return_code(self) -> u8 {
        match self {
            Refusal::BadCredentials(_) => 4,
            Refusal::NotAuthorized(_) | Refusal::Banned => 5,
            Refusal::ServerBusy | Refusal::QuotaExceeded => 3,
        }
    }

    /// The failure reason for counters, if the refusal came from a credential check.
    pub fn reason(self) -> Option<FailureReason> {
        match self {
            Refusal::BadCredentials(reason) | Refusal::NotAuthorized(reason) => Some(reason),
            Refusal::Banned | Refusal::ServerBusy | Refusal::QuotaExceeded => None,
        }
    }
}

/// Why a credential check failed; one counter each. Never carries the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// No username/password/token while anonymous clients are refused.
    AnonymousRefused,
    /// A username but no password (or token) while credentials are required.
    MissingPassword,
    /// The username is in no password file and no token source is configured.
    UnknownUser,
    /// The password does not match the stored hash.
    WrongPassword,
    /// The token is not a well-formed JWT or its claims are not JSON of the expected shape.
    TokenMalformed,
    /// The token's signature does not verify, its algorithm is not allowed, or no key fits.
    TokenSignature,
    /// `exp` is in the past (beyond the leeway), or missing where required.
    TokenExpired,
    /// `nbf` is in the future (beyond the leeway).
    TokenNotYetValid,
    /// `iss` / `aud` or a configured claim (`sub = "%u"`) does not match.
    TokenClaimMismatch,
    /// The client id or username cannot be used safely in a pattern (`+`, `#`, `/`).
    UnsafeIdentity,
}

impl FailureReason {
    /// Every reason, for registering counters.
    pub const ALL: [FailureReason; 10] = [
        FailureReason::AnonymousRefused,
        FailureReason::MissingPassword,
        FailureReason::UnknownUser,
        FailureReason::WrongPassword,
        FailureReason::TokenMalformed,
        FailureReason::TokenSignature,
        FailureReason::TokenExpired,
        FailureReason::TokenNotYetValid,
        FailureReason::TokenClaimMismatch,
        FailureReason::UnsafeIdentity,
    ];

    /// A stable snake_case name for metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::AnonymousRefused => "anonymous_refused",
            FailureReason::MissingPassword => "missing_password",
            FailureReason::UnknownUser => "unknown_user",
            FailureReason::WrongPassword => "wrong_password",
            FailureReason::TokenMalformed => "token_malformed",
            FailureReason::TokenSignature => "token_signature",
            FailureReason::TokenExpired => "token_expired",
            FailureReason::TokenNotYetValid => "token_not_yet_valid",
            FailureReason::TokenClaimMismatch => "token_claim_mismatch",
            FailureReason::UnsafeIdentity => "unsafe_identity",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a connection is, once authenticated: what every ACL check takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The client id the session runs under (after the broker assigned one, if it did).
    pub client_id: String,
    /// The username from CONNECT or mapped from the certificate; `None` for anonymous clients.
    pub username: Option<String>,
    /// Allow rules carried by the token's ACL claim; when set, the identity is default-deny.
    pub claim_acl: Option<Arc<ClaimAcl>>,
    /// When the broker closes the connection (the token's `exp` with `close_on_expiry`).
    pub expires_at: Option<SystemTime>,
    /// When the credentials stop being valid (the token's `exp`), whether or not the broker
    /// closes then: a cached verification is not reused past it.
    pub valid_until: Option<SystemTime>,
}

impl Identity {
    /// An identity without token data, e.g. for password or certificate authentication.
    pub fn new(client_id: impl Into<String>, username: Option<String>) -> Identity {
        Identity {
            client_id: client_id.into(),
            username,
            claim_acl: None,
            expires_at: None,
            valid_until: None,
        }
    }
}

/// What a CONNECT presents; the input of [`crate::Authenticator::authenticate`].
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub client_id: String,
    pub username: Option<String>,
    /// The password field (binary in MQTT); a JWT when token authentication is used.
    pub password: Option<Vec<u8>>,
    /// Set when `username` was taken from a client certificate the TLS layer verified: no
    /// password is needed then.
    pub username_from_certificate: bool,
}

impl std::fmt::Debug for Credentials {
    // The password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("username_from_certificate", &self.username_from_certificate)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reason_indexes_follow_all() {
        for (position, reason) in FailureReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), position, "{reason}");
        }
    }
}
