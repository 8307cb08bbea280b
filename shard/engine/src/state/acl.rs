//! Authorization on the shard: the compiled ACL ([`auth::Acl`], shared read-only, swapped whole on
//! reload with [`crate::Engine::set_acl`]) checked against each session's principal
//! ([`crate::session::Session::principal`]) at SUBSCRIBE, at PUBLISH, and for every delivery
//! (live, shared, replayed and retained), so a grant that narrows on reload or a wildcard that
//! SUBSCRIBE let through cannot leak another client's data.
//!
//! Hot path: one `Option` test when no ACL is configured; with one, a check walks the few rules
//! that apply to the identity (no allocation: `auth::Acl` matches level by level over borrowed
//! strings).

use super::*;

/// Authentication and ACL outcomes on one shard, exported as `ringmq_auth_*` /
/// `ringmq_acl_*` counters by the runtime.
#[derive(Debug, Default, Clone)]
pub struct AuthCounters {
    /// CONNECTs handed to the runtime for a decision (`Output::Authenticate`).
    pub requested: u64,
    /// CONNECTs accepted by the authenticator.
    pub accepted: u64,
    /// CONNECTs refused, by CONNACK reason: bad credentials, not authorized, banned, server busy
    /// (pool queue full), quota exceeded (in-flight authentications of the shard at their bound).
    pub refused_bad_credentials: u64,
    pub refused_not_authorized: u64,
    pub refused_banned: u64,
    pub refused_busy: u64,
    pub refused_quota: u64,
    /// Connections closed because their token expired.
    pub expired: u64,
    /// SUBSCRIBE filters the ACL refused (also counted in `subscriptions_refused`).
    pub subscribe_denied: u64,
    /// PUBLISHes the ACL refused (not routed; v5 QoS 1/2 answered 0x87).
    pub publish_denied: u64,
    /// Deliveries the ACL refused at delivery time (live and retained).
    pub deliver_denied: u64,
    /// Wills dropped at CONNECT because the client may not publish to the will topic.
    pub will_denied: u64,
}

impl ShardState {
    /// The principal the ACL checks `slot` as, when an ACL is configured.
    fn principal_of(&self, slot: u32) -> Option<(&auth::Acl, &auth::Identity)> {
        let acl = self.acl.as_deref()?;
        let principal = self.session(slot)?.principal.as_deref()?;
        Some((acl, principal))
    }

    /// Whether session `slot` may subscribe to `full_filter` (as sent, `$share/` included).
    /// Without an ACL the older [`crate::SubscribeAuthorizer`] hook decides.
    pub(super) fn may_subscribe(&mut self, slot: u32, full_filter: &str, filter: &str) -> bool {
        let allowed = match (&self.acl, self.principal_of(slot)) {
            (Some(_), Some((acl, principal))) => {
                acl.check_subscribe(principal, full_filter).is_allowed()
            }
            // An ACL without a principal cannot happen (attach sets one); refuse rather than guess.
            (Some(_), None) => false,
            (None, _) => {
                let client_id = self.session(slot).map_or("", |s| s.client_id.as_str());
                self.authorizer
                    .may_subscribe(client_id, filter, full_filter)
            }
        };
        if !allowed && self.acl.is_some() {
            self.counters.auth.subscribe_denied += 1;
        }
        allowed
    }

    /// Whether session `slot` may publish to `topic`; counts a refusal.
    pub fn may_publish(&mut self, slot: u32, topic: &str) -> bool {
        let allowed = match (&self.acl, self.principal_of(slot)) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(_), Some((acl, principal))) => acl.check_publish(principal, topic).is_allowed(),
        };
        if !allowed {
            self.counters.auth.publish_denied += 1;
        }
        allowed
    }
}

/// Whether a delivery on `topic` may reach a session with `principal` (no ACL: always).
pub(super) fn may_receive(
    acl: Option<&auth::Acl>,
    principal: Option<&auth::Identity>,
    topic: &str,
) -> bool {
    match (acl, principal) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(acl), Some(principal)) => acl.check_receive(principal, topic).is_allowed(),
    }
}
