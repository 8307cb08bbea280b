//! Authentication at CONNECT, without deciding on the shard: the engine asks
//! ([`crate::Output::Authenticate`] with an [`AuthRequest`]), holds the connection, and resumes it
//! when the runtime answers ([`crate::Engine::handle_auth_result`]).
//!
//! Where: on the client id's **home shard**, after the hand-off and before `ShardState::attach`.
//! So the verdict and the session it unlocks are on one thread (no verdict travels between
//! shards or has to be trusted in transit), and a takeover of an existing session happens only
//! for a client that authenticated: a CONNECT with a stolen client id and a wrong password never
//! touches the victim's session. The price is a hand-off for a bad client whose id hashes
//! elsewhere (no more than a good one costs).
//!
//! While waiting, the connection handles no packet: bytes received after CONNECT stay in
//! `Conn::partial` (reading pauses beyond `INPUT_BUFFERED_MAX_BYTES`) and the connect timeout
//! (`limits.connect_timeout_secs`) still runs, so a result that never comes costs the connection,
//! not the shard. A result for a connection that is gone is ignored (its `ConnId` is stale).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use wire::{ConnAck, ConnAckProperties, Connect, Packet, ReasonCode};

use super::meta::PeerIdentity;
use super::Conn;

/// What the runtime must decide for one CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRequest {
    /// Client id (as sent; empty when the broker will assign one), username, password bytes.
    /// `username_from_certificate` is set when the edge mapped a verified certificate name to
    /// the username (`identity_as_username`).
    pub credentials: auth::Credentials,
    /// The client's address as the edge saw it (after a PROXY header), if the runtime gave one.
    pub peer: Option<SocketAddr>,
    /// The verified client certificate's names, if any (mTLS).
    pub identity: Option<PeerIdentity>,
}

/// A successful authentication: who the connection is for the ACL, and when it must end.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// Username, client id and the token's ACL claim the ACL checks against.
    pub identity: auth::Identity,
    /// Close the connection then (the token's `exp`, converted to the shard's clock by the
    /// runtime), if configured.
    pub close_at: Option<Instant>,
}

/// Where a connection is in authentication (boxed in `Conn`: nothing for connections that are
/// not authenticating).
#[derive(Debug)]
pub(crate) enum ConnAuth {
    /// `Output::Authenticate` went out; the answer has not come back.
    Pending,
    /// The answer, taken by the next drive of the handshake.
    Done(Result<Authenticated, auth::Refusal>),
}

/// What the handshake does after asking about a CONNECT.
pub(super) enum AuthStep {
    /// Go on with the connect; the principal is set when authentication ran.
    Proceed(Option<Authenticated>),
    /// Ask the runtime and wait.
    Ask(Box<AuthRequest>),
    /// Refused: the CONNACK is written; close.
    Refused,
}

/// The CONNACK reason for a refusal (the codec maps it to the 3.1.1 return code: 4 for bad
/// credentials, 5 for not authorized and banned, 3 for busy and quota).
pub(crate) fn refusal_code(refusal: auth::Refusal) -> ReasonCode {
    match refusal {
        auth::Refusal::BadCredentials(_) => ReasonCode::BadUserNameOrPassword,
        auth::Refusal::NotAuthorized(_) => ReasonCode::NotAuthorized,
        auth::Refusal::Banned => ReasonCode::Banned,
        auth::Refusal::ServerBusy => ReasonCode::ServerBusy,
        auth::Refusal::QuotaExceeded => ReasonCode::QuotaExceeded,
    }
}

impl Conn {
    /// Waiting for an authentication result.
    pub(super) fn auth_pending(&self) -> bool {
        matches!(self.auth(), Some(ConnAuth::Pending))
    }

    /// The runtime answered; the next handshake drive takes the answer.
    pub(super) fn auth_answered(&self) -> bool {
        matches!(self.auth(), Some(ConnAuth::Done(_)))
    }

    /// Stores the runtime's answer; false if the connection was not waiting for one.
    pub(crate) fn set_auth_result(&mut self, result: Result<Authenticated, auth::Refusal>) -> bool {
        if !self.auth_pending() {
            return false;
        }
        self.extra_mut().auth = Some(Box::new(ConnAuth::Done(result)));
        true
    }

    /// Asks for a decision the first time this CONNECT is seen, or takes the answer.
    pub(super) fn authenticate(
        &mut self,
        state: &mut crate::state::ShardState,
        out: &mut bytes::BytesMut,
        connect: &Connect,
    ) -> AuthStep {
        if !state.authenticate {
            return AuthStep::Proceed(None);
        }
        match self
            .extra
            .as_deref_mut()
            .and_then(|e| e.auth.take())
            .map(|a| *a)
        {
            None | Some(ConnAuth::Pending) => {
                self.extra_mut().auth = Some(Box::new(ConnAuth::Pending));
                state.counters.auth.requested += 1;
                let meta = self.meta();
                AuthStep::Ask(Box::new(AuthRequest {
                    credentials: auth::Credentials {
                        client_id: connect.client_id.as_str().to_owned(),
                        username: connect.username.as_ref().map(|u| u.as_str().to_owned()),
                        password: connect.password.as_ref().map(|p| p.to_vec()),
                        // `apply_identity` replaced the username by the verified certificate's
                        // name: it needs no password (Mosquitto's use_identity_as_username).
                        username_from_certificate: meta
                            .is_some_and(|m| m.mapping.as_username != crate::IdentitySource::None),
                    },
                    peer: meta.and_then(|m| m.peer),
                    identity: meta.and_then(|m| m.identity.clone()),
                }))
            }
            Some(ConnAuth::Done(Ok(authenticated))) => {
                state.counters.auth.accepted += 1;
                AuthStep::Proceed(Some(authenticated))
            }
            Some(ConnAuth::Done(Err(refusal))) => {
                let counters = &mut state.counters.auth;
                match refusal {
                    auth::Refusal::BadCredentials(_) => counters.refused_bad_credentials += 1,
                    auth::Refusal::NotAuthorized(_) => counters.refused_not_authorized += 1,
                    auth::Refusal::Banned => counters.refused_banned += 1,
                    auth::Refusal::ServerBusy => counters.refused_busy += 1,
                    auth::Refusal::QuotaExceeded => counters.refused_quota += 1,
                }
                tracing::debug!(
                    client_id = %connect.client_id.as_str(),
                    reason = %refusal,
                    "connect refused by authentication"
                );
                // [MQTT-3.2.2-6] a refusing CONNACK has session present 0; [MQTT-3.1.4-6] close.
                let packet = Packet::ConnAck(ConnAck {
                    session_present: false,
                    reason_code: refusal_code(refusal),
                    properties: ConnAckProperties::default(),
                });
                let _ = wire::encode(&packet, connect.protocol, out);
                AuthStep::Refused
            }
        }
    }
}

/// The principal an ACL checks a session as: the authenticated identity (with the client id
/// the session really runs under), or the CONNECT's names when nothing authenticated it.
pub(super) fn principal_for(
    authenticated: Option<&Authenticated>,
    client_id: &str,
    connect: &Connect,
) -> Arc<auth::Identity> {
    let mut identity = match authenticated {
        Some(a) => a.identity.clone(),
        None => auth::Identity::new(
            client_id,
            connect.username.as_ref().map(|u| u.as_str().to_owned()),
        ),
    };
    if identity.client_id != client_id {
        client_id.clone_into(&mut identity.client_id);
    }
    Arc::new(identity)
}
