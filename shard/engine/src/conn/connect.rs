//! The handshake: a whole CONNECT frame, where the client's session lives, the checks, the
//! session bound, CONNACK.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tracing::debug;
use wire::{
    ConnAck, ConnAckProperties, Connect, Framing, Packet, ProtocolVersion, Publish, ReasonCode,
    Utf8Bytes,
};

use super::auth::{principal_for, AuthStep, Authenticated};
use super::{Conn, Phase, Shared, Step};
use crate::message::Message;
use crate::session::{PeerLimits, Will};
use crate::state::home_shard;

/// What a CONNECT was found to ask for, once checked.
struct Accepted {
    client_id: Utf8Bytes,
    keepalive_secs: u16,
    expiry_secs: u32,
    peer: PeerLimits,
}

impl Conn {
    pub(super) fn drive_handshake(
        &mut self,
        sh: &mut Shared<'_>,
        handed_off: bool,
        now: Instant,
    ) -> Step {
        if self.auth_pending() || self.claim_pending() {
            // Held until the runtime answers (or the connect timeout closes it).
            return if self.eof {
                self.close_unattached()
            } else {
                Step::Idle
            };
        }
        let max = sh.state.limits.max_packet_size_bytes;
        let frame_len = match wire::check(&self.partial, max) {
            Ok(Framing::Complete { frame_len }) => frame_len,
            Ok(Framing::Incomplete { .. }) => {
                if self.eof {
                    return self.close_unattached();
                }
                return Step::Idle;
            }
            Err(err) => {
                debug!(error = %err, "malformed connect frame");
                // Close without CONNACK: the version is unknown [MQTT-4.8.0-1].
                return self.close_unattached();
            }
        };
        let all = std::mem::take(&mut self.partial).freeze();
        let mut connect = match wire::decode(all.slice(..frame_len), ProtocolVersion::V3_1_1) {
            Ok(Packet::Connect(c)) => c,
            Ok(_) => {
                // [MQTT-3.1.0-1] the first packet must be CONNECT.
                debug!("first packet was not connect");
                return self.close_unattached();
            }
            Err(err) => {
                debug!(error = %err, "connect rejected");
                self.refuse_undecodable(sh.out, &all, err.reason_code());
                return self.close_unattached();
            }
        };
        // The connect rate is charged where the socket was accepted, before the hand-off, so a
        // flood is refused without crossing shards (a handed-off CONNECT paid already).
        // A CONNECT seen again with its authentication or claim answer was admitted the first
        // time.
        let claimed = self.take_claim_result();
        let answered = self.auth_answered() || claimed.is_some();
        if !handed_off && !answered && sh.admission.take_connect_token(now).is_err() {
            if connect.protocol == ProtocolVersion::V5 {
                refuse(
                    sh.out,
                    ReasonCode::ConnectionRateExceeded,
                    ProtocolVersion::V5,
                );
            }
            // 3.1.1 has no return code for it: closed without CONNACK. (EMQX instead stops
            // accepting while over its rate; refusing keeps the accept queue from filling.)
            return self.close_unattached();
        }
        // Before the home shard is chosen: a certificate's client id decides where it lives.
        if let Err(code) = self.apply_identity(&mut connect) {
            debug!(client_id = %connect.client_id.as_str(), reason = ?code, "certificate identity refused");
            refuse(sh.out, code, connect.protocol);
            return self.close_unattached();
        }
        if !connect.client_id.is_empty() {
            let home = home_shard(connect.client_id.as_str(), sh.state.shard_count);
            if home != sh.state.id && !handed_off {
                self.phase = Phase::Closed;
                sh.state.counters.handoffs += 1;
                return Step::HandOff {
                    home,
                    buffered: all,
                };
            }
        }
        self.version = connect.protocol;
        // One session per client id in the cluster: a connect with an id claims it from the
        // peer nodes (below). An assigned id is unique in the cluster and claims nothing.
        let claims = sh.state.cluster_enabled() && !connect.client_id.is_empty();
        if (sh.state.authenticate || claims) && !answered {
            // Bans, quotas and the CONNECT's own validity before the costly steps
            // (authentication, the claim).
            let peer = self.meta().and_then(|m| m.peer).map(|a| a.ip());
            if let Err(code) = Self::check_connect(sh, &connect, peer, now, false) {
                self.refuse_checked(sh, &connect, code);
                return self.close_unattached();
            }
        }
        let was_claimed = claimed.is_some();
        let authenticated = match claimed {
            Some((false, _)) => {
                // A concurrent connect of this id on a peer node won [one session per id in the
                // cluster]: refused as busy (3.1.1 return code 3), so the client may retry.
                sh.state.counters.takeover_claims_lost += 1;
                debug!(client_id = %connect.client_id.as_str(), "connect lost to a concurrent one on a peer node");
                refuse(sh.out, ReasonCode::ServerBusy, connect.protocol);
                return self.close_unattached();
            }
            Some((true, authenticated)) => authenticated,
            None => match self.authenticate(sh.state, sh.out, &connect) {
                AuthStep::Proceed(authenticated) => authenticated,
                AuthStep::Ask(request) => {
                    // The CONNECT and what followed it stay buffered; decoded again on the answer.
                    self.partial = bytes::BytesMut::from(all);
                    return Step::Authenticate(request);
                }
                AuthStep::Refused => return self.close_unattached(),
            },
        };
        if claims && !was_claimed {
            // A peer node holding this id's session closes its connection and hands the session
            // here first. Only a client that passed the checks and authentication claims, so a
            // refused CONNECT never touches a session elsewhere.
            self.partial = bytes::BytesMut::from(all);
            self.extra_mut().claim = Some(Box::new(ConnClaim::Pending { authenticated }));
            sh.state
                .request_claim(sh.conn, connect.client_id.as_str(), connect.clean_start);
            return Step::Idle;
        }
        let admitted = authenticated.is_some() || was_claimed;
        if !self.accept_connect(sh, *connect, authenticated, admitted, now) {
            return self.close_unattached();
        }
        self.partial.extend_from_slice(&all[frame_len..]);
        self.phase = Phase::Live;
        self.drive_live(sh, now)
    }

    /// True when the listener makes the certificate's name the client id.
    fn client_id_from_certificate(&self) -> bool {
        self.meta()
            .is_some_and(|m| m.mapping.as_client_id != crate::IdentitySource::None)
    }

    /// Replaces username and client id by the verified certificate's names as the listener's
    /// [`IdentityMapping`](crate::IdentityMapping) says (Mosquitto's `use_identity_as_username`:
    /// no certificate name refuses as bad credentials); the refusal's reason code otherwise.
    fn apply_identity(&self, connect: &mut Connect) -> Result<(), ReasonCode> {
        let Some(meta) = self.meta() else {
            return Ok(());
        };
        let mapping = meta.mapping;
        if mapping.is_none() {
            return Ok(());
        }
        let empty = crate::PeerIdentity::default();
        let identity = meta.identity.as_ref().unwrap_or(&empty);
        if mapping.as_username != crate::IdentitySource::None {
            let name = mapping
                .as_username
                .pick(identity)
                .ok_or(ReasonCode::BadUserNameOrPassword)?;
            connect.username = Some(Utf8Bytes::from(name));
        }
        if mapping.as_client_id != crate::IdentitySource::None {
            let name = mapping
                .as_client_id
                .pick(identity)
                .ok_or(ReasonCode::ClientIdentifierNotValid)?;
            let differs = !connect.client_id.is_empty() && connect.client_id.as_str() != name;
            if differs && mapping.require_client_id_match {
                return Err(ReasonCode::ClientIdentifierNotValid);
            }
            connect.client_id = Utf8Bytes::from(name);
        }
        Ok(())
    }

    /// Refuses a CONNECT that failed `check_connect`: CONNACK with `code`, counted.
    fn refuse_checked(&self, sh: &mut Shared<'_>, connect: &Connect, code: ReasonCode) {
        debug!(client_id = %connect.client_id.as_str(), reason = ?code, "connect refused");
        if code == ReasonCode::QuotaExceeded || code == ReasonCode::ServerUnavailable {
            sh.state.counters.sessions_refused += 1;
        }
        refuse(sh.out, code, connect.protocol);
    }

    /// Answers a CONNECT that could not be decoded: a CONNACK where the spec asks for one.
    fn refuse_undecodable(&mut self, out: &mut bytes::BytesMut, frame: &[u8], code: ReasonCode) {
        let version = match (protocol_level(frame), code) {
            // [MQTT-3.1.2-2] unsupported protocol level: CONNACK 0x01 then close.
            (_, ReasonCode::UnsupportedProtocolVersion) => ProtocolVersion::V3_1_1,
            (Some(5), _) => ProtocolVersion::V5,
            _ => return,
        };
        let packet = Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: code,
            properties: ConnAckProperties::default(),
        });
        let _ = wire::encode(&packet, version, out);
    }

    /// The checks a CONNECT must pass, in the spec's order; the refusal's reason code otherwise.
    fn check_connect(
        sh: &mut Shared<'_>,
        connect: &Connect,
        peer: Option<std::net::IpAddr>,
        now: Instant,
        admitted: bool,
    ) -> Result<Accepted, ReasonCode> {
        let version = connect.protocol;
        if sh.state.shutting_down {
            return Err(ReasonCode::ServerUnavailable);
        }
        // Bans before anything costly (session lookup, authentication): v5 0x8A Banned, which
        // 3.1.1 sends as return code 5 Not authorized.
        let username = connect.username.as_ref().map(|u| u.as_str());
        // `admitted`: checked before authentication already (the admission counts each connect).
        if !admitted
            && sh
                .admission
                .check_connect(connect.client_id.as_str(), username, peer, now)
                .is_err()
        {
            return Err(ReasonCode::Banned);
        }
        let state = &*sh.state;
        let limits = &state.limits;
        let over_quota = (limits.connections_per_shard_max > 0
            && state.connections >= limits.connections_per_shard_max)
            || !state.may_create_session(connect.client_id.as_str());
        if over_quota {
            return Err(if version == ProtocolVersion::V5 {
                ReasonCode::QuotaExceeded
            } else {
                ReasonCode::ServerUnavailable
            });
        }
        // Enhanced authentication is not configured: any method is refused [MQTT-4.12.0-1].
        if connect.properties.authentication_method.is_some() {
            return Err(ReasonCode::BadAuthenticationMethod);
        }
        let client_id = if connect.client_id.is_empty() {
            match version {
                // [MQTT-3.1.3-8] v3.1.1 empty id needs clean session.
                ProtocolVersion::V3_1_1 if connect.clean_start && limits.allow_empty_client_id => {
                    Utf8Bytes::from_static("")
                }
                ProtocolVersion::V5 => Utf8Bytes::from_static(""),
                _ => return Err(ReasonCode::ClientIdentifierNotValid),
            }
        } else {
            if version == ProtocolVersion::V3_1 && connect.client_id.len() > 23 {
                return Err(ReasonCode::ClientIdentifierNotValid);
            }
            // Own copy: a slice would pin the whole CONNECT frame for the session's life.
            Utf8Bytes::from(connect.client_id.as_str())
        };
        let mut keepalive_secs = connect.keep_alive_secs;
        if limits.keepalive_max_secs > 0
            && (keepalive_secs == 0 || keepalive_secs > limits.keepalive_max_secs)
        {
            keepalive_secs = limits.keepalive_max_secs;
        }
        let expiry_secs = match version {
            ProtocolVersion::V5 => connect.properties.session_expiry_interval.unwrap_or(0),
            _ if connect.clean_start => 0,
            _ => limits.session_expiry_max_secs,
        };
        // The client's Receive Maximum bounds what we keep in flight to it; we may use fewer.
        let inflight_max = match connect.properties.receive_maximum {
            Some(0) => return Err(ReasonCode::ProtocolError),
            Some(n) => n.min(limits.inflight_max),
            None => limits.inflight_max,
        };
        let max_packet_size = match connect.properties.maximum_packet_size {
            Some(0) => return Err(ReasonCode::ProtocolError),
            Some(n) => n,
            None => u32::MAX,
        };
        let peer = PeerLimits {
            version,
            inflight_max,
            max_packet_size,
            topic_alias_max: connect.properties.topic_alias_maximum.unwrap_or(0),
            problem_information: connect.properties.request_problem_information != Some(0),
        };
        Ok(Accepted {
            client_id,
            keepalive_secs,
            expiry_secs,
            peer,
        })
    }

    /// Validates a CONNECT, binds the session and writes CONNACK. False if it was refused (the
    /// refusal's CONNACK is in `out`).
    fn accept_connect(
        &mut self,
        sh: &mut Shared<'_>,
        connect: Connect,
        authenticated: Option<Authenticated>,
        admitted: bool,
        now: Instant,
    ) -> bool {
        let version = connect.protocol;
        let peer = self.meta().and_then(|m| m.peer).map(|a| a.ip());
        let accepted = match Self::check_connect(sh, &connect, peer, now, admitted) {
            Ok(a) => a,
            Err(code) => {
                self.refuse_checked(sh, &connect, code);
                return false;
            }
        };
        let state = &mut *sh.state;
        let mut ack_props = ConnAckProperties::default();
        let mut client_id = accepted.client_id;
        if client_id.is_empty() {
            client_id = state.assign_client_id();
            if version == ProtocolVersion::V5 {
                ack_props.assigned_client_identifier = Some(client_id.clone());
            }
        } else if version == ProtocolVersion::V5 && self.client_id_from_certificate() {
            // The id is the certificate's, whatever the client sent (maybe nothing): tell it,
            // as [MQTT-3.2.2-16] asks for a server-chosen id.
            ack_props.assigned_client_identifier = Some(client_id.clone());
        }
        let principal = state
            .acl
            .is_some()
            .then(|| principal_for(authenticated.as_ref(), client_id.as_str(), &connect));
        let mut will = will_of(&connect, now);
        if let (Some(acl), Some(principal), Some(w)) = (&state.acl, &principal, &will) {
            // As a PUBLISH would be: a will to a topic the client may not write is dropped.
            if !acl
                .check_publish(principal, w.message.publish.topic.as_str())
                .is_allowed()
            {
                state.counters.auth.will_denied += 1;
                will = None;
            }
        }
        // Moved, not cloned: a clone would give the session's id a shared-ownership header, 32
        // more bytes for every session.
        let attached = state.attach(
            client_id,
            connect.clean_start,
            accepted.expiry_secs,
            accepted.peer,
            accepted.keepalive_secs,
            None,
            sh.conn,
            now,
        );
        let Some(key) = state.session(attached.slot).map(|s| s.key) else {
            return false;
        };
        self.generation = attached.generation;
        self.key = key;
        if let Some(session) = state.session_mut(attached.slot) {
            session.principal = principal;
        }
        if let Some(at) = authenticated.and_then(|a| a.close_at) {
            state.schedule_credentials_expiry(attached.slot, attached.generation, at);
        }
        // The will carries its publisher's identity (for no-local), known only now.
        if let Some(mut w) = will {
            if let Some(message) = Arc::get_mut(&mut w.message) {
                message.origin = Some(key);
            }
            if let Some(session) = state.session_mut(attached.slot) {
                session.will = Some(w);
            }
        }
        state.counters.connections_accepted += 1;
        if let Some(budget) = sh.admission.publish_budget() {
            self.extra_mut().publish_budget = Some(budget);
        }
        if version == ProtocolVersion::V5 {
            let limits = &state.limits;
            ack_props.receive_maximum = Some(limits.receive_maximum);
            ack_props.maximum_packet_size = Some(limits.max_packet_size_bytes);
            ack_props.topic_alias_maximum = Some(limits.topic_alias_maximum);
            ack_props.retain_available = Some(1);
            ack_props.wildcard_subscription_available = Some(1);
            ack_props.subscription_identifiers_available = Some(1);
            ack_props.shared_subscription_available = Some(1);
            if accepted.keepalive_secs != connect.keep_alive_secs {
                ack_props.server_keep_alive = Some(accepted.keepalive_secs);
            }
            let requested = connect.properties.session_expiry_interval.unwrap_or(0);
            if requested > limits.session_expiry_max_secs {
                ack_props.session_expiry_interval = Some(limits.session_expiry_max_secs);
            }
        }
        let connack = Packet::ConnAck(ConnAck {
            session_present: attached.session_present,
            reason_code: ReasonCode::Success,
            properties: ack_props,
        });
        if wire::encode(&connack, version, sh.out).is_err() {
            return false;
        }
        // Resume: unacknowledged messages go out again first [MQTT-4.4.0-1].
        if attached.session_present {
            if let Some(session) = state.session_mut(attached.slot) {
                session.resend_inflight(now, sh.out);
            }
        }
        debug!(
            client_id = %state.session(attached.slot).map_or("", |s| s.client_id.as_str()),
            slot = attached.slot,
            "client connected"
        );
        true
    }
}

/// Where a held CONNECT is in its cluster claim (boxed in `ConnExtra`: only connections whose
/// claim is in flight pay it).
#[derive(Debug)]
pub(crate) enum ConnClaim {
    /// Shard 0 claims the id from the peers; the authentication result waits here.
    Pending {
        authenticated: Option<Authenticated>,
    },
    /// The claim ended; the next drive of the handshake takes it.
    Done {
        won: bool,
        authenticated: Option<Authenticated>,
    },
}

impl Conn {
    /// Waiting for its claim to end.
    pub(super) fn claim_pending(&self) -> bool {
        self.extra
            .as_deref()
            .and_then(|e| e.claim.as_deref())
            .is_some_and(|c| matches!(c, ConnClaim::Pending { .. }))
    }

    /// Stores the claim's end; false if the connection was not waiting for one.
    pub(crate) fn set_claim_result(&mut self, won: bool) -> bool {
        let Some(extra) = self.extra.as_deref_mut() else {
            return false;
        };
        match extra.claim.take().map(|c| *c) {
            Some(ConnClaim::Pending { authenticated }) => {
                extra.claim = Some(Box::new(ConnClaim::Done { won, authenticated }));
                true
            }
            other => {
                extra.claim = other.map(Box::new);
                false
            }
        }
    }

    /// The ended claim (won, authentication result), once.
    fn take_claim_result(&mut self) -> Option<(bool, Option<Authenticated>)> {
        let extra = self.extra.as_deref_mut()?;
        match extra.claim.take().map(|c| *c) {
            Some(ConnClaim::Done { won, authenticated }) => Some((won, authenticated)),
            other => {
                extra.claim = other.map(Box::new);
                None
            }
        }
    }
}

/// A refusing CONNACK (no session).
fn refuse(out: &mut bytes::BytesMut, code: ReasonCode, version: ProtocolVersion) {
    let packet = Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code: code,
        properties: ConnAckProperties::default(),
    });
    let _ = wire::encode(&packet, version, out);
}

/// The CONNECT's will as the message it becomes, its own copy (not a slice of the frame).
fn will_of(connect: &Connect, now: Instant) -> Option<Will> {
    let w = connect.will.as_ref()?;
    let p = &w.properties;
    let mut publish = Publish {
        dup: false,
        qos: w.qos,
        retain: w.retain,
        topic: Utf8Bytes::from(w.topic.as_str()),
        packet_id: None,
        properties: Default::default(),
        payload: Bytes::copy_from_slice(&w.payload),
    };
    publish.properties.payload_format_indicator = p.payload_format_indicator;
    publish.properties.content_type = p.content_type.clone();
    publish.properties.response_topic = p.response_topic.clone();
    publish.properties.correlation_data = p.correlation_data.clone();
    publish.properties.user_properties = p.user_properties.clone();
    Some(Will {
        message: Arc::new(Message {
            publish,
            origin: None,
            expires_at: None,
            received_at: now,
        }),
        delay_secs: p.will_delay_interval.unwrap_or(0),
        expiry_secs: p.message_expiry_interval,
    })
}

/// The protocol level byte of a CONNECT frame: after the fixed header and the protocol name.
fn protocol_level(frame: &[u8]) -> Option<u8> {
    let mut i = 1;
    while i < frame.len() && i < 5 && frame[i] & 0x80 != 0 {
        i += 1;
    }
    let name_len_at = i + 1;
    let hi = *frame.get(name_len_at)? as usize;
    let lo = *frame.get(name_len_at + 1)? as usize;
    frame.get(name_len_at + 2 + (hi << 8 | lo)).copied()
}
