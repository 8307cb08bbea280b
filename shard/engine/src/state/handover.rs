//! A session leaving for, or arriving from, a peer node (one session per client id in the
//! cluster; the claim protocol is `cluster_gossip::handover`).
//!
//! On the node that has the session, its home shard answers a peer's claim with
//! [`ShardState::hand_over`]: the connection is closed as taken over (v5 DISCONNECT 0x8E), the
//! will is handled as a local takeover would, and the session leaves as a [`SessionImage`]
//! (subscriptions, queued and in-flight messages with their packet ids, inbound QoS 2 ids). On
//! the claiming node, [`ShardState::install_image`] makes it an offline session before the held
//! CONNECT attaches to it, so the client sees session present and its in-flight messages again
//! [MQTT-4.4.0-1].

use super::*;
use crate::message::{ClaimAnswer, ClaimRequest, ClaimToken, PeerNode};
use crate::session::Inflight;

/// A session as it travels between nodes. QoS 0 frames already encoded for the old connection
/// and acknowledgements owed to it stay behind (QoS 0 may be lost; the client resends an
/// unacknowledged publish).
#[derive(Debug, Clone)]
pub struct SessionImage {
    pub client_id: Utf8Bytes,
    /// Session expiry interval as granted on the old node.
    pub expiry_secs: u32,
    pub next_packet_id: u16,
    pub subscriptions: Vec<SessionSubscription>,
    /// Queued messages, oldest first, then retained messages still owed to a subscription.
    pub queue: Vec<Delivery>,
    /// Outbound QoS 1/2 not yet acknowledged, in send order.
    pub inflight: Vec<Inflight>,
    /// Inbound QoS 2 packet ids awaiting PUBREL [MQTT-4.3.3-9].
    pub incoming_qos2: Vec<u16>,
}

/// What [`ShardState::install_image`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// The image is this shard's session for its client id now.
    Session,
    /// Refused: the shard is shutting down or at `sessions_per_shard_max` (counted).
    Refused,
}

impl ShardState {
    /// A peer node claims `client_id`: closes this node's connection of it (taken over), handles
    /// its will as [`ShardState::attach`] would, and gives the session up. `None` when there is no
    /// session, or `clean_start` ends it here.
    pub fn hand_over(
        &mut self,
        client_id: &str,
        clean_start: bool,
        now: Instant,
    ) -> Option<SessionImage> {
        debug_assert_eq!(home_shard(client_id, self.shard_count), self.id);
        let slot = self.by_client_id.get(&self.slots, client_id)?;
        self.take_over_link(slot, clean_start, now);
        if clean_start {
            self.end_session(slot, now);
            return None;
        }
        let image = self.session_mut(slot).map(|s| image_of(s));
        self.end_session(slot, now);
        image
    }

    /// Makes `image` this shard's (offline) session for its client id, replacing a local one
    /// (which a peer's hand-over supersedes: the client connected there last). Its subscriptions
    /// go into the trie unchecked (they were checked where they were made; deliveries are
    /// checked again here), and no retained message is sent for them.
    pub fn install_image(&mut self, image: SessionImage, now: Instant) -> Installed {
        debug_assert_eq!(
            home_shard(image.client_id.as_str(), self.shard_count),
            self.id
        );
        if let Some(slot) = self.by_client_id.get(&self.slots, image.client_id.as_str()) {
            if self.session(slot).is_some_and(|s| s.is_online()) {
                // A local connect attached meanwhile (after its claim timed out): it is newer.
                self.counters.takeover_images_discarded += 1;
                return Installed::Refused;
            }
            self.end_session(slot, now);
        }
        if self.shutting_down || !self.may_create_session(image.client_id.as_str()) {
            self.counters.takeover_images_discarded += 1;
            return Installed::Refused;
        }
        let peer = PeerLimits {
            version: ProtocolVersion::V5,
            inflight_max: self.limits.inflight_max,
            max_packet_size: u32::MAX,
            topic_alias_max: 0,
            problem_information: true,
        };
        let slot = self.create_session(image.client_id, peer);
        for sub in &image.subscriptions {
            let shared = match wire::topic::parse_shared(&sub.filter) {
                Ok(s) => s.map(|s| (Arc::<str>::from(s.group), s.filter)),
                Err(_) => continue,
            };
            self.insert_subscription(slot, &sub.filter, shared.as_ref(), sub.options, sub.id);
        }
        let expiry_max = self.limits.session_expiry_max_secs;
        let queue_max = self.limits.session_queue_len_max as usize;
        if let Some(session) = self.session_mut(slot) {
            session.expiry_secs = image.expiry_secs.min(expiry_max);
            session.next_packet_id = image.next_packet_id.max(1);
            let busy = !image.queue.is_empty()
                || !image.inflight.is_empty()
                || !image.incoming_qos2.is_empty();
            if busy {
                let t = session.traffic_mut();
                t.inflight.extend(image.inflight);
                t.incoming_qos2.extend(image.incoming_qos2);
                let room = queue_max.saturating_sub(t.queue.len());
                t.queue
                    .extend(image.queue.into_iter().take(room).map(Outbound::Deliver));
            }
        }
        // Offline until the held CONNECT attaches; expires as any offline session would if it
        // never does (the client went away meanwhile).
        let expiry_secs = self.session(slot).map_or(0, |s| s.expiry_secs);
        let keep = match expiry_secs {
            // Ends with its connection: kept only for the CONNECT about to attach.
            0 => Some(HANDED_OVER_KEEP),
            u32::MAX => None,
            secs => Some(Duration::from_secs(u64::from(secs))),
        };
        if let Some(keep) = keep {
            if let Some(session) = self.session_mut(slot) {
                session.set_expires_at(Some(now + keep));
            }
            self.schedule(TimerKind::SessionExpiry, slot, now + keep);
        }
        self.counters.sessions_handed_in += 1;
        Installed::Session
    }
}

impl ShardState {
    /// The home shard holds connection `conn`'s CONNECT for `client_id` while shard 0's cluster
    /// runtime claims the id from the peer nodes; the answer comes back as
    /// `Engine::finish_claim` (here, or in a [`ShardMsg::ClaimDone`]).
    pub(crate) fn request_claim(&mut self, conn: ConnId, client_id: &str, clean_start: bool) {
        self.counters.takeover_claims += 1;
        let token = ClaimToken {
            shard: self.id,
            conn,
        };
        let client_id = Arc::<str>::from(client_id);
        if self.id == 0 {
            if let Some(cluster) = self.cluster.as_deref_mut() {
                cluster.claims.push(ClaimRequest::Start {
                    token,
                    client_id,
                    clean_start,
                });
            }
        } else {
            self.send_to(
                0,
                ShardMsg::ClusterClaim {
                    token,
                    client_id,
                    clean_start,
                },
            );
        }
    }

    /// Shard 0: claims and answers for the cluster runtime since the last call, oldest first.
    pub fn take_cluster_claims(&mut self) -> Vec<ClaimRequest> {
        self.cluster
            .as_deref_mut()
            .map(|c| std::mem::take(&mut c.claims))
            .unwrap_or_default()
    }

    /// Shard 0: a claim from a home shard (`ShardMsg::ClusterClaim`) or an answer
    /// (`ShardMsg::PeerClaimAnswer`), for the runtime.
    pub(crate) fn queue_claim_request(&mut self, request: ClaimRequest) {
        if let Some(cluster) = self.cluster.as_deref_mut() {
            cluster.claims.push(request);
        }
    }

    /// Peer node `from` claims `client_id` (shard 0, from the runtime, or the home shard from a
    /// [`ShardMsg::PeerClaim`]): its home shard hands the session over and the answer goes to
    /// shard 0.
    pub fn peer_claim(
        &mut self,
        from: PeerNode,
        claim: u64,
        client_id: Arc<str>,
        clean_start: bool,
        now: Instant,
    ) {
        let home = home_shard(&client_id, self.shard_count);
        if home != self.id {
            self.send_to(
                home,
                ShardMsg::PeerClaim {
                    from,
                    claim,
                    client_id,
                    clean_start,
                },
            );
            return;
        }
        let image = self.hand_over(&client_id, clean_start, now).map(Box::new);
        if image.is_some() {
            self.counters.sessions_handed_out += 1;
        }
        let answer = ClaimAnswer {
            to: from,
            claim,
            client_id,
            image,
        };
        if self.id == 0 {
            self.queue_claim_request(ClaimRequest::Answer(answer));
        } else {
            self.send_to(0, ShardMsg::PeerClaimAnswer(answer));
        }
    }
}

/// How long a handed-over session with expiry 0 waits for the CONNECT it was moved for.
pub const HANDED_OVER_KEEP: Duration = Duration::from_secs(30);

fn image_of(session: &Session) -> SessionImage {
    let mut queue = Vec::new();
    let mut inflight = Vec::new();
    let mut incoming_qos2 = Vec::new();
    if let Some(t) = session.traffic.as_deref() {
        queue.extend(t.queue.iter().filter_map(|o| match o {
            Outbound::Deliver(d) => Some(d.clone()),
            Outbound::Frame(_) | Outbound::Control(_) => None,
        }));
        queue.extend(t.retained_pending.iter().cloned());
        inflight.extend(t.inflight.iter().cloned());
        incoming_qos2.extend(t.incoming_qos2.iter().copied());
    }
    SessionImage {
        client_id: session.client_id.clone(),
        expiry_secs: session.expiry_secs,
        next_packet_id: session.next_packet_id,
        subscriptions: session.subscriptions.to_vec(),
        queue,
        inflight,
        incoming_qos2,
    }
}
