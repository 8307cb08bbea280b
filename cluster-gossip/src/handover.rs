//! One session per client id in the cluster: the claim protocol that moves a session to the node
//! a client connects to, without I/O.
//!
//! When a client connects to node B with a client id, B's home shard for that id holds the CONNECT
//! and B claims the id from every peer whose link is up ([`SessionMsg::Claim`]). Each peer answers
//! once: it has no session ([`SessionMsg::NoSession`]), it hands its session over
//! ([`SessionMsg::Image`]: its old connection is closed with DISCONNECT 0x8E and the session's
//! subscriptions, queued and in-flight messages travel as an opaque image), or it refuses because
//! it is itself claiming the id with a later stamp ([`SessionMsg::Refused`]). When every asked
//! peer answered, went down, or [`ClaimBook`]'s timeout passed, the claim is done and the held
//! CONNECT goes on, resuming the image if one came.
//!
//! **Concurrent connects**: a claim carries a [`ClaimStamp`] (the claimer's wall clock in µs and
//! its node id). A node that receives a claim for an id it is claiming too compares the stamps:
//! the greater one wins on both nodes, as both compare the same pair, so exactly one connect
//! succeeds (the loser's client is refused and may retry). A claim that lost keeps collecting
//! answers: an image that still arrives is handed up ([`ClaimEvent::Orphan`]) to be kept as an
//! offline session, never dropped, and the winner's claim then takes it.
//!
//! The image bytes are the broker's business (`shard/src/cluster/handover.rs` encodes them); this
//! module only carries them. Answers travel on the same ordered peer link as the claim, so an
//! image always precedes anything its sender does later for the same id.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::identity::NodeId;

/// Claims one node may have outstanding; beyond it a new claim is not sent and the connect goes
/// on as if no peer had the session (counted, `ClaimStats::overflowed`). Bounded by connects in
/// flight, which the broker bounds with its concurrent-handshake limit.
pub const CLAIMS_PENDING_MAX: usize = 65_536;
/// Client ids are MQTT strings.
pub const CLIENT_ID_MAX_BYTES: usize = u16::MAX as usize;
/// Default for `[cluster] takeover_timeout_ms`.
pub const TAKEOVER_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);

/// Orders concurrent claims of one client id cluster-wide: wall-clock time first, then node id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClaimStamp {
    pub at_us: u64,
    pub node: NodeId,
}

/// A message of the hand-over protocol, carried in a `PeerFrame::Session`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionMsg {
    /// "A client connected here with `client_id`: close yours and send me its session."
    Claim {
        claim: u64,
        client_id: String,
        clean_start: bool,
        at_us: u64,
    },
    /// "I have no session for it" (or it ended: a clean start discards it).
    NoSession { claim: u64, client_id: String },
    /// "Here it is": the session, in the broker's encoding. The sender no longer has it.
    Image {
        claim: u64,
        client_id: String,
        image: Vec<u8>,
    },
    /// "I am claiming it too, with a later stamp": the claim lost.
    Refused { claim: u64, client_id: String },
}

const MSG_CLAIM: u8 = 1;
const MSG_NO_SESSION: u8 = 2;
const MSG_IMAGE: u8 = 3;
const MSG_REFUSED: u8 = 4;

/// A session message that could not be read (the peer is authenticated: a bug or a version
/// mismatch; the message is dropped, the claim it answers times out).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SessionMsgError {
    #[error("session message truncated at byte {at}")]
    Truncated { at: usize },
    #[error("unknown session message kind {0}")]
    UnknownKind(u8),
    #[error("client id is not UTF-8")]
    ClientId,
    #[error("client id of {len} bytes is over {max}")]
    ClientIdTooLong { len: usize, max: usize },
}

impl SessionMsg {
    pub fn claim_id(&self) -> u64 {
        match self {
            SessionMsg::Claim { claim, .. }
            | SessionMsg::NoSession { claim, .. }
            | SessionMsg::Image { claim, .. }
            | SessionMsg::Refused { claim, .. } => *claim,
        }
    }

    /// `kind u8 | claim u64 | client_id_len u16 | client_id | kind-specific`: a claim adds
    /// `clean_start u8 | at_us u64`, an image the rest of the message.
    pub fn encode(&self) -> Result<Vec<u8>, SessionMsgError> {
        let (kind, client_id) = match self {
            SessionMsg::Claim { client_id, .. } => (MSG_CLAIM, client_id),
            SessionMsg::NoSession { client_id, .. } => (MSG_NO_SESSION, client_id),
            SessionMsg::Image { client_id, .. } => (MSG_IMAGE, client_id),
            SessionMsg::Refused { client_id, .. } => (MSG_REFUSED, client_id),
        };
        let id_len =
            u16::try_from(client_id.len()).map_err(|_| SessionMsgError::ClientIdTooLong {
                len: client_id.len(),
                max: CLIENT_ID_MAX_BYTES,
            })?;
        let mut out = Vec::with_capacity(11 + client_id.len() + 9);
        out.push(kind);
        out.extend_from_slice(&self.claim_id().to_be_bytes());
        out.extend_from_slice(&id_len.to_be_bytes());
        out.extend_from_slice(client_id.as_bytes());
        match self {
            SessionMsg::Claim {
                clean_start, at_us, ..
            } => {
                out.push(u8::from(*clean_start));
                out.extend_from_slice(&at_us.to_be_bytes());
            }
            SessionMsg::Image { image, .. } => out.extend_from_slice(image),
            SessionMsg::NoSession { .. } | SessionMsg::Refused { .. } => {}
        }
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<SessionMsg, SessionMsgError> {
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8], SessionMsgError> {
            let part = bytes
                .get(at..at + n)
                .ok_or(SessionMsgError::Truncated { at })?;
            at += n;
            Ok(part)
        };
        let kind = take(1)?[0];
        let claim = u64::from_be_bytes(take(8)?.try_into().unwrap_or_default());
        let id_len = usize::from(u16::from_be_bytes(take(2)?.try_into().unwrap_or_default()));
        let client_id = std::str::from_utf8(take(id_len)?)
            .map_err(|_| SessionMsgError::ClientId)?
            .to_owned();
        Ok(match kind {
            MSG_CLAIM => {
                let clean_start = take(1)?[0] != 0;
                let at_us = u64::from_be_bytes(take(8)?.try_into().unwrap_or_default());
                SessionMsg::Claim {
                    claim,
                    client_id,
                    clean_start,
                    at_us,
                }
            }
            MSG_NO_SESSION => SessionMsg::NoSession { claim, client_id },
            MSG_REFUSED => SessionMsg::Refused { claim, client_id },
            MSG_IMAGE => SessionMsg::Image {
                claim,
                client_id,
                image: bytes.get(11 + id_len..).unwrap_or_default().to_vec(),
            },
            other => return Err(SessionMsgError::UnknownKind(other)),
        })
    }
}

/// How a claim ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimOutcome {
    /// False when a concurrent claim with a greater stamp won: refuse the held CONNECT.
    pub won: bool,
    /// Images that arrived (normally at most one; one session per id in the cluster). Resumed
    /// (won) or kept offline (lost) by the home shard, never dropped.
    pub images: Vec<(NodeId, Vec<u8>)>,
    /// Peers that did not answer within the timeout (the connect went on without them).
    pub timed_out: Vec<NodeId>,
}

/// What the book asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimEvent<T> {
    /// Send `msg` to peer `to`.
    Send { to: NodeId, msg: SessionMsg },
    /// A peer claims `client_id`: the home shard hands its session over (or says it has none)
    /// and the answer goes back with [`ClaimBook::answer`].
    PeerClaim {
        from: NodeId,
        claim: u64,
        client_id: String,
        clean_start: bool,
    },
    /// One of our claims ended: resume the held connection `token` (or refuse it).
    Done {
        token: T,
        client_id: String,
        outcome: ClaimOutcome,
    },
    /// An image for a claim that had already ended: keep it as an offline session.
    Orphan {
        from: NodeId,
        client_id: String,
        image: Vec<u8>,
    },
}

/// Counters for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimStats {
    pub started: u64,
    /// Claims that ended with a session image.
    pub sessions_moved_in: u64,
    /// Peer claims answered with an image.
    pub sessions_moved_out: u64,
    pub won: u64,
    pub lost: u64,
    /// Claims that ended because some peer did not answer in time.
    pub timed_out: u64,
    /// Claims not sent because [`CLAIMS_PENDING_MAX`] were outstanding.
    pub overflowed: u64,
    /// Claims that did not wait for a silent peer (one that let an earlier claim time out).
    pub silent_skipped: u64,
    /// Answers for claims this node no longer knows (late, after a timeout), not images.
    pub stale_answers: u64,
}

#[derive(Debug)]
struct Pending<T> {
    token: T,
    client_id: String,
    stamp: ClaimStamp,
    waiting: BTreeSet<NodeId>,
    deadline: Instant,
    images: Vec<(NodeId, Vec<u8>)>,
}

/// The claims one node has outstanding and the answers it owes, driven by shard 0's cluster
/// runtime. `T` identifies the held connection (its shard and connection id).
#[derive(Debug)]
pub struct ClaimBook<T> {
    me: NodeId,
    timeout: Duration,
    next_claim: u64,
    pending: BTreeMap<u64, Pending<T>>,
    /// Outstanding claim ids per client id, for concurrent-claim checks.
    by_client: BTreeMap<String, BTreeSet<u64>>,
    /// Claims of ours that ended, whose answers may still come: an image then is an orphan.
    /// Bounded by [`CLAIMS_PENDING_MAX`] (oldest forgotten first).
    ended: BTreeMap<u64, String>,
    /// The newest claim's deadline.
    last_deadline: Option<Instant>,
    /// Peers that let a claim time out and sent nothing since: asked, not waited for.
    silent: BTreeSet<NodeId>,
    stats: ClaimStats,
}

impl<T: Clone> ClaimBook<T> {
    pub fn new(me: NodeId, timeout: Duration) -> Self {
        ClaimBook {
            me,
            timeout,
            next_claim: 1,
            pending: BTreeMap::new(),
            by_client: BTreeMap::new(),
            ended: BTreeMap::new(),
            last_deadline: None,
            silent: BTreeSet::new(),
            stats: ClaimStats::default(),
        }
    }

    pub fn stats(&self) -> &ClaimStats {
        &self.stats
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// A client connected here with `client_id`: claim it from `peers` (the nodes whose link is
    /// up). With no peer, or over [`CLAIMS_PENDING_MAX`], the claim is done at once.
    pub fn start(
        &mut self,
        token: T,
        client_id: String,
        clean_start: bool,
        peers: &[NodeId],
        now: Instant,
        now_us: u64,
    ) -> Vec<ClaimEvent<T>> {
        let peers: BTreeSet<NodeId> = peers.iter().copied().filter(|p| *p != self.me).collect();
        if peers.is_empty() || self.pending.len() >= CLAIMS_PENDING_MAX {
            if !peers.is_empty() {
                self.stats.overflowed += 1;
            }
            return vec![won_at_once(token, client_id)];
        }
        self.stats.started += 1;
        // Never earlier than an older claim's: `pending` stays in deadline order.
        let deadline = self
            .last_deadline
            .map_or(now + self.timeout, |last| (now + self.timeout).max(last));
        self.last_deadline = Some(deadline);
        let claim = self.next_claim;
        self.next_claim += 1;
        // A peer that let a claim time out is still asked (so it closes its copy and answers
        // when it recovers) but not waited for, until it sends anything again: while a hung
        // peer's link is still up, every connect would otherwise wait the whole timeout.
        let waiting: BTreeSet<NodeId> = peers.difference(&self.silent).copied().collect();
        if waiting.len() < peers.len() {
            self.stats.silent_skipped += 1;
        }
        let events: Vec<ClaimEvent<T>> = peers
            .iter()
            .map(|&to| ClaimEvent::Send {
                to,
                msg: SessionMsg::Claim {
                    claim,
                    client_id: client_id.clone(),
                    clean_start,
                    at_us: now_us,
                },
            })
            .collect();
        if waiting.is_empty() {
            // Only silent peers: done now; an image one of them still sends is kept offline.
            self.remember_ended(claim, client_id.clone());
            self.stats.won += 1;
            let mut events = events;
            events.push(won_at_once(token, client_id));
            return events;
        }
        self.by_client
            .entry(client_id.clone())
            .or_default()
            .insert(claim);
        self.pending.insert(
            claim,
            Pending {
                token,
                client_id,
                stamp: ClaimStamp {
                    at_us: now_us,
                    node: self.me,
                },
                waiting,
                deadline,
                images: Vec::new(),
            },
        );
        events
    }

    /// A session message from peer `from`.
    pub fn handle(&mut self, from: NodeId, msg: SessionMsg) -> Vec<ClaimEvent<T>> {
        self.silent.remove(&from);
        match msg {
            SessionMsg::Claim {
                claim,
                client_id,
                clean_start,
                at_us,
            } => self.peer_claim(from, claim, client_id, clean_start, at_us),
            SessionMsg::NoSession { claim, .. } => self.answered(from, claim, None, true),
            SessionMsg::Refused { claim, .. } => self.answered(from, claim, None, false),
            SessionMsg::Image {
                claim,
                client_id,
                image,
            } => {
                if self.pending.contains_key(&claim) {
                    self.answered(from, claim, Some(image), true)
                } else {
                    self.ended.remove(&claim);
                    vec![ClaimEvent::Orphan {
                        from,
                        client_id,
                        image,
                    }]
                }
            }
        }
    }

    fn peer_claim(
        &mut self,
        from: NodeId,
        claim: u64,
        client_id: String,
        clean_start: bool,
        at_us: u64,
    ) -> Vec<ClaimEvent<T>> {
        let theirs = ClaimStamp { at_us, node: from };
        let ours: Vec<u64> = self
            .by_client
            .get(&client_id)
            .map(|c| c.iter().copied().collect())
            .unwrap_or_default();
        let mut events = Vec::new();
        for id in ours {
            let Some(p) = self.pending.get(&id) else {
                continue;
            };
            if p.stamp > theirs {
                // Ours is later: it wins on both nodes.
                events.push(ClaimEvent::Send {
                    to: from,
                    msg: SessionMsg::Refused { claim, client_id },
                });
                return events;
            }
            // Theirs is later: ours ends lost, before their claim reaches the home shard, so
            // an image ours collected is kept there first and theirs then takes it.
            events.extend(self.finish(id, false));
        }
        events.push(ClaimEvent::PeerClaim {
            from,
            claim,
            client_id,
            clean_start,
        });
        events
    }

    /// The home shard's answer to a [`ClaimEvent::PeerClaim`]: the image if it handed a
    /// session over.
    pub fn answer(
        &mut self,
        to: NodeId,
        claim: u64,
        client_id: String,
        image: Option<Vec<u8>>,
    ) -> ClaimEvent<T> {
        let msg = match image {
            Some(image) => {
                self.stats.sessions_moved_out += 1;
                SessionMsg::Image {
                    claim,
                    client_id,
                    image,
                }
            }
            None => SessionMsg::NoSession { claim, client_id },
        };
        ClaimEvent::Send { to, msg }
    }

    fn answered(
        &mut self,
        from: NodeId,
        claim: u64,
        image: Option<Vec<u8>>,
        won: bool,
    ) -> Vec<ClaimEvent<T>> {
        let Some(p) = self.pending.get_mut(&claim) else {
            self.stats.stale_answers += 1;
            return Vec::new();
        };
        let waited = p.waiting.remove(&from);
        if let Some(image) = image {
            // Also from a silent peer this claim did not wait for: the session is never dropped.
            p.images.push((from, image));
        }
        if !waited {
            return Vec::new();
        }
        if !won {
            return self.finish(claim, false);
        }
        if p.waiting.is_empty() {
            return self.finish(claim, true);
        }
        Vec::new()
    }

    /// Peer `node` went down (or its link did): it will not answer; its sessions are gone.
    pub fn peer_down(&mut self, node: NodeId) -> Vec<ClaimEvent<T>> {
        self.silent.remove(&node);
        let claims: Vec<u64> = self
            .pending
            .iter_mut()
            .filter_map(|(id, p)| (p.waiting.remove(&node) && p.waiting.is_empty()).then_some(*id))
            .collect();
        claims
            .into_iter()
            .flat_map(|id| self.finish(id, true))
            .collect()
    }

    /// The earliest claim deadline: the oldest claim's, as every claim waits the same timeout
    /// and claim ids grow with their start (a driver's `now` does not go back).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.first_key_value().map(|(_, p)| p.deadline)
    }

    /// Ends every claim whose deadline passed, as won without the silent peers (oldest first,
    /// stopping at the first that is not due: no scan of every pending claim).
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<ClaimEvent<T>> {
        let due: Vec<u64> = self
            .pending
            .iter()
            .take_while(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        due.into_iter()
            .flat_map(|id| self.finish(id, true))
            .collect()
    }

    /// Peers not waited for by new claims until they send something (see [`ClaimBook::start`]).
    pub fn silent_peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.silent.iter().copied()
    }

    fn remember_ended(&mut self, claim: u64, client_id: String) {
        if self.ended.len() >= CLAIMS_PENDING_MAX {
            self.ended.pop_first();
        }
        self.ended.insert(claim, client_id);
    }

    fn finish(&mut self, claim: u64, won: bool) -> Vec<ClaimEvent<T>> {
        let Some(p) = self.pending.remove(&claim) else {
            return Vec::new();
        };
        if let Some(ids) = self.by_client.get_mut(&p.client_id) {
            ids.remove(&claim);
            if ids.is_empty() {
                self.by_client.remove(&p.client_id);
            }
        }
        if !p.waiting.is_empty() {
            if won {
                self.stats.timed_out += 1;
                self.silent.extend(p.waiting.iter().copied());
            }
            self.remember_ended(claim, p.client_id.clone());
        }
        if won {
            self.stats.won += 1;
        } else {
            self.stats.lost += 1;
        }
        if !p.images.is_empty() {
            self.stats.sessions_moved_in += 1;
        }
        vec![ClaimEvent::Done {
            token: p.token,
            client_id: p.client_id,
            outcome: ClaimOutcome {
                won,
                images: p.images,
                timed_out: p.waiting.into_iter().collect(),
            },
        }]
    }
}

/// A claim that waits for nobody: won, nothing came.
fn won_at_once<T>(token: T, client_id: String) -> ClaimEvent<T> {
    ClaimEvent::Done {
        token,
        client_id,
        outcome: ClaimOutcome {
            won: true,
            images: Vec::new(),
            timed_out: Vec::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(id: u64) -> NodeId {
        NodeId(id)
    }

    #[test]
    fn messages_round_trip_and_truncation_is_an_error() {
        let msgs = [
            SessionMsg::Claim {
                claim: 7,
                client_id: "car-1".into(),
                clean_start: true,
                at_us: 123_456,
            },
            SessionMsg::NoSession {
                claim: 8,
                client_id: "".into(),
            },
            SessionMsg::Image {
                claim: 9,
                client_id: "car-ü".into(),
                image: vec![1, 2, 3],
            },
            SessionMsg::Refused {
                claim: u64::MAX,
                client_id: "x".into(),
            },
        ];
        for msg in msgs {
            let bytes = msg.encode().expect("encodes");
            assert_eq!(SessionMsg::decode(&bytes), Ok(msg.clone()));
            let fixed = match msg {
                SessionMsg::Image { .. } => 11 + "car-ü".len(),
                _ => bytes.len(),
            };
            for cut in 0..fixed {
                assert!(SessionMsg::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
        assert_eq!(
            SessionMsg::decode(&[9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(SessionMsgError::UnknownKind(9))
        );
    }

    fn done<T: Clone + std::fmt::Debug>(events: &[ClaimEvent<T>]) -> Option<(T, ClaimOutcome)> {
        events.iter().find_map(|e| match e {
            ClaimEvent::Done { token, outcome, .. } => Some((token.clone(), outcome.clone())),
            _ => None,
        })
    }

    #[test]
    fn a_claim_with_no_peers_is_done_at_once() {
        let mut book = ClaimBook::new(n(1), Duration::from_secs(2));
        let events = book.start(5u32, "c".into(), false, &[n(1)], Instant::now(), 1);
        let (token, outcome) = done(&events).expect("done");
        assert_eq!(token, 5);
        assert!(outcome.won && outcome.images.is_empty());
        assert_eq!(book.pending_len(), 0);
    }

    #[test]
    fn the_claim_ends_when_every_peer_answered_and_carries_the_image() {
        let now = Instant::now();
        let mut book = ClaimBook::new(n(1), Duration::from_secs(2));
        let events = book.start(1u32, "c".into(), false, &[n(2), n(3)], now, 10);
        assert_eq!(events.len(), 2);
        let claim = match &events[0] {
            ClaimEvent::Send { msg, .. } => msg.claim_id(),
            other => panic!("{other:?}"),
        };
        let image = SessionMsg::Image {
            claim,
            client_id: "c".into(),
            image: vec![42],
        };
        assert!(book.handle(n(3), image).is_empty());
        // A repeated or unasked answer changes nothing.
        let none = SessionMsg::NoSession {
            claim,
            client_id: "c".into(),
        };
        assert!(book.handle(n(3), none.clone()).is_empty());
        let (_, outcome) = done(&book.handle(n(2), none)).expect("done");
        assert!(outcome.won);
        assert_eq!(outcome.images, vec![(n(3), vec![42])]);
        assert_eq!(book.stats().sessions_moved_in, 1);
    }

    #[test]
    fn a_silent_peer_times_out_and_its_late_image_is_an_orphan() {
        let now = Instant::now();
        let mut book = ClaimBook::new(n(1), Duration::from_secs(2));
        book.start(1u32, "c".into(), false, &[n(2)], now, 10);
        assert_eq!(book.poll_timeout(), Some(now + Duration::from_secs(2)));
        assert!(book.handle_timeout(now + Duration::from_secs(1)).is_empty());
        let (_, outcome) = done(&book.handle_timeout(now + Duration::from_secs(2))).expect("done");
        assert!(outcome.won);
        assert_eq!(outcome.timed_out, vec![n(2)]);
        let late = book.handle(
            n(2),
            SessionMsg::Image {
                claim: 1,
                client_id: "c".into(),
                image: vec![1],
            },
        );
        assert_eq!(
            late,
            vec![ClaimEvent::Orphan {
                from: n(2),
                client_id: "c".into(),
                image: vec![1]
            }]
        );
    }

    #[test]
    fn a_peer_going_down_counts_as_its_answer() {
        let mut book = ClaimBook::new(n(1), Duration::from_secs(2));
        book.start(1u32, "c".into(), false, &[n(2)], Instant::now(), 10);
        let (_, outcome) = done(&book.peer_down(n(2))).expect("done");
        assert!(outcome.won && outcome.timed_out.is_empty());
    }

    /// Two nodes claim one id at once: each hands the other's claim to its book, and exactly
    /// one connect wins, whichever order the messages cross in.
    #[test]
    fn concurrent_claims_have_exactly_one_winner() {
        for (stamp_a, stamp_b) in [(10, 20), (20, 10), (15, 15)] {
            let now = Instant::now();
            let mut a = ClaimBook::new(n(1), Duration::from_secs(2));
            let mut b = ClaimBook::new(n(2), Duration::from_secs(2));
            let to_b = a.start("a", "car".into(), false, &[n(2)], now, stamp_a);
            let to_a = b.start("b", "car".into(), false, &[n(1)], now, stamp_b);
            let mut results = Vec::new();
            let mut peer_claims = 0;
            // Each side reads the other's claim, then the answers it got back.
            let mut wire_ab = Vec::new();
            let mut wire_ba = Vec::new();
            for e in to_b {
                if let ClaimEvent::Send { msg, .. } = e {
                    wire_ab.push(msg);
                }
            }
            for e in to_a {
                if let ClaimEvent::Send { msg, .. } = e {
                    wire_ba.push(msg);
                }
            }
            for _ in 0..3 {
                let (in_b, in_a) = (std::mem::take(&mut wire_ab), std::mem::take(&mut wire_ba));
                for (book, from, msgs, out) in [
                    (&mut b, n(1), in_b, &mut wire_ba),
                    (&mut a, n(2), in_a, &mut wire_ab),
                ] {
                    for msg in msgs {
                        for e in book.handle(from, msg) {
                            match e {
                                ClaimEvent::Send { msg, .. } => out.push(msg),
                                ClaimEvent::PeerClaim {
                                    claim, client_id, ..
                                } => {
                                    peer_claims += 1;
                                    if let ClaimEvent::Send { msg, .. } =
                                        book.answer(from, claim, client_id, None)
                                    {
                                        out.push(msg);
                                    }
                                }
                                ClaimEvent::Done { token, outcome, .. } => {
                                    results.push((token, outcome.won))
                                }
                                ClaimEvent::Orphan { .. } => panic!("no image was sent"),
                            }
                        }
                    }
                }
            }
            let winners: Vec<_> = results.iter().filter(|(_, won)| *won).collect();
            assert_eq!(results.len(), 2, "both claims ended: {results:?}");
            assert_eq!(winners.len(), 1, "stamps {stamp_a}/{stamp_b}: {results:?}");
            let expected = if (stamp_a, 1) > (stamp_b, 2) {
                "a"
            } else {
                "b"
            };
            assert_eq!(winners[0].0, expected);
            assert_eq!(
                peer_claims, 1,
                "only the winner's claim reaches a home shard"
            );
        }
    }

    #[test]
    fn claims_time_out_oldest_first_and_only_when_due() {
        let t = Instant::now();
        let mut book = ClaimBook::new(n(1), Duration::from_secs(2));
        book.start(1u32, "a".into(), false, &[n(2)], t, 10);
        book.start(
            2u32,
            "b".into(),
            false,
            &[n(2)],
            t + Duration::from_secs(1),
            11,
        );
        assert_eq!(book.poll_timeout(), Some(t + Duration::from_secs(2)));
        let done = book.handle_timeout(t + Duration::from_millis(2500));
        let tokens: Vec<u32> = done
            .iter()
            .filter_map(|e| match e {
                ClaimEvent::Done { token, outcome, .. } => {
                    assert!(outcome.won);
                    assert_eq!(outcome.timed_out, vec![n(2)]);
                    Some(*token)
                }
                _ => None,
            })
            .collect();
        assert_eq!(tokens, vec![1]);
        assert_eq!(book.poll_timeout(), Some(t + Duration::from_secs(3)));
        assert_eq!(book.pending_len(), 1);
    }

    /// A peer that let a claim time out is asked but not waited for by the next claims, until
    /// it answers again; its late image still reaches the claim (or the orphan path).
    #[test]
    fn a_silent_peer_is_asked_but_not_waited_for_until_it_speaks() {
        let t = Instant::now();
        let mut book = ClaimBook::new(n(1), Duration::from_secs(2));
        book.start(1u32, "a".into(), false, &[n(2), n(3)], t, 10);
        book.handle(
            n(3),
            SessionMsg::NoSession {
                claim: 1,
                client_id: "a".into(),
            },
        );
        book.handle_timeout(t + Duration::from_secs(2));
        assert_eq!(book.silent_peers().collect::<Vec<_>>(), vec![n(2)]);

        // Node 2 is still asked, node 3 is waited for.
        let events = book.start(2u32, "b".into(), false, &[n(2), n(3)], t, 11);
        let asked: Vec<NodeId> = events
            .iter()
            .filter_map(|e| match e {
                ClaimEvent::Send { to, .. } => Some(*to),
                _ => None,
            })
            .collect();
        assert_eq!(asked, vec![n(2), n(3)]);
        let done = book.handle(
            n(3),
            SessionMsg::NoSession {
                claim: 2,
                client_id: "b".into(),
            },
        );
        assert!(matches!(
            done.as_slice(),
            [ClaimEvent::Done { token: 2, .. }]
        ));
        assert_eq!(book.stats().silent_skipped, 1);

        // Only the silent peer: done at once; its late image is an orphan, not lost.
        let events = book.start(3u32, "c".into(), false, &[n(2)], t, 12);
        assert!(events
            .iter()
            .any(|e| matches!(e, ClaimEvent::Done { token: 3, .. })));
        let late = book.handle(
            n(2),
            SessionMsg::Image {
                claim: 3,
                client_id: "c".into(),
                image: vec![7],
            },
        );
        assert!(matches!(late.as_slice(), [ClaimEvent::Orphan { .. }]));
        // It spoke: waited for again.
        assert_eq!(book.silent_peers().count(), 0);
    }
}
