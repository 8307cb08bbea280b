//! CONNECT authentication: anonymous, certificate identity, password file, JWT.
//!
//! Order of checks for one CONNECT:
//! 1. a username the TLS layer took from a verified client certificate is accepted as is;
//! 2. no username and no password: anonymous, accepted only when `allow_anonymous`;
//! 3. no auth source configured: accepted with the username as given (Mosquitto's behaviour
//!    when it has no password file: the username is then a label, not a proof);
//! 4. a username present in the password file: the password must verify against it;
//! 5. otherwise, when `[auth.jwt]` is set, the password must be a valid token;
//! 6. otherwise: bad credentials (after the same hashing work, to hide which users exist).

use std::sync::Arc;
use std::time::SystemTime;

use crate::decision::{Credentials, FailureReason, Identity, Refusal};
use crate::jwt::JwtVerifier;
use crate::password::{PasswordCheck, PasswordFile};

/// The authentication policy. Immutable: a reload builds a new one and the caller (or
/// [`crate::AuthPool::replace_authenticator`]) swaps it in.
#[derive(Debug, Default)]
pub struct Authenticator {
    allow_anonymous: bool,
    passwords: Option<PasswordFile>,
    jwt: Option<JwtVerifier>,
}

impl Authenticator {
    pub fn new(
        allow_anonymous: bool,
        passwords: Option<PasswordFile>,
        jwt: Option<JwtVerifier>,
    ) -> Authenticator {
        Authenticator {
            allow_anonymous,
            passwords,
            jwt,
        }
    }

    pub fn allow_anonymous(&self) -> bool {
        self.allow_anonymous
    }

    fn has_source(&self) -> bool {
        self.passwords.is_some() || self.jwt.is_some()
    }

    /// Whether [`Authenticator::authenticate`] would hash or verify a signature for these
    /// credentials; when false it is cheap enough to call on a shard thread.
    pub fn is_expensive(&self, credentials: &Credentials) -> bool {
        !(credentials.username_from_certificate && credentials.username.is_some())
            && self.has_source()
            && credentials.password.is_some()
    }

    /// Decides a CONNECT. Expensive when [`Authenticator::is_expensive`] says so.
    pub fn authenticate(
        &self,
        credentials: &Credentials,
        now: SystemTime,
    ) -> Result<Identity, Refusal> {
        let client_id = credentials.client_id.as_str();
        let username = credentials.username.as_deref();
        if credentials.username_from_certificate && username.is_some() {
            return Ok(Identity::new(client_id, credentials.username.clone()));
        }
        let Some(password) = credentials.password.as_deref() else {
            return match username {
                None if self.allow_anonymous => Ok(Identity::new(client_id, None)),
                None => Err(Refusal::NotAuthorized(FailureReason::AnonymousRefused)),
                Some(_) if !self.has_source() && self.allow_anonymous => {
                    Ok(Identity::new(client_id, credentials.username.clone()))
                }
                Some(_) => Err(Refusal::BadCredentials(FailureReason::MissingPassword)),
            };
        };
        if !self.has_source() {
            return if self.allow_anonymous {
                Ok(Identity::new(client_id, credentials.username.clone()))
            } else {
                Err(Refusal::NotAuthorized(FailureReason::AnonymousRefused))
            };
        }
        if let (Some(passwords), Some(name)) = (&self.passwords, username) {
            if passwords.contains(name) || self.jwt.is_none() {
                return match passwords.verify(name, password) {
                    PasswordCheck::Valid => {
                        Ok(Identity::new(client_id, credentials.username.clone()))
                    }
                    PasswordCheck::WrongPassword => {
                        Err(Refusal::BadCredentials(FailureReason::WrongPassword))
                    }
                    PasswordCheck::UnknownUser => {
                        Err(Refusal::BadCredentials(FailureReason::UnknownUser))
                    }
                };
            }
        }
        let Some(jwt) = &self.jwt else {
            return Err(Refusal::BadCredentials(FailureReason::UnknownUser));
        };
        match jwt.verify(password, client_id, username, now) {
            Ok(grant) => Ok(Identity {
                client_id: client_id.to_owned(),
                username: credentials.username.clone(),
                claim_acl: grant.claim_acl.map(Arc::new),
                expires_at: grant.expires_at,
                valid_until: grant.valid_until,
            }),
            // The token is genuine but issued for another client.
            Err(FailureReason::TokenClaimMismatch) => {
                Err(Refusal::NotAuthorized(FailureReason::TokenClaimMismatch))
            }
            Err(reason) => Err(Refusal::BadCredentials(reason)),
        }
    }
}
