//! The published message as it travels between sessions and shards, and the cross-shard envelope.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use smallvec::SmallVec;
use wire::Publish;

/// Index of a shard (one per core). At most [`SHARDS_MAX`].
pub type ShardId = u16;
/// Route masks are one bit per shard.
pub const SHARDS_MAX: usize = 64;

/// Identifies one session incarnation process-wide; used for no-local [MQTT-3.8.3-3] and for
/// telling a message's publisher apart from its subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub shard: ShardId,
    pub slot: u32,
    pub generation: u32,
}

/// A message accepted from a publisher (or a will), decoded once and shared by every subscriber on
/// every shard. `publish` holds the publisher's QoS and RETAIN; per-delivery fields (packet id,
/// DUP, subscription identifiers, topic alias) are set when a copy is encoded.
#[derive(Debug)]
pub struct Message {
    pub publish: Publish,
    pub origin: Option<SessionKey>,
    /// When the Message Expiry Interval runs out.
    pub expires_at: Option<Instant>,
    /// Orders concurrent retained updates of one topic across shards (last writer wins).
    pub received_at: Instant,
}

impl Message {
    /// A copy whose topic and payload own their memory, for messages kept long (retained, offline
    /// queues): a slice of a shard's read buffer would otherwise pin the whole buffer chunk.
    pub fn compacted(&self) -> Message {
        let mut publish = self.publish.clone();
        publish.topic = wire::Utf8Bytes::from(publish.topic.as_str());
        publish.payload = Bytes::copy_from_slice(&publish.payload);
        Message {
            publish,
            origin: self.origin,
            expires_at: self.expires_at,
            received_at: self.received_at,
        }
    }
}

/// A shared-subscription group chosen by the publishing shard to receive one copy.
#[derive(Debug, Clone)]
pub struct SharedPick {
    /// The topic filter after `$share/group/`.
    pub filter: Arc<str>,
    pub group: Arc<str>,
    /// Times this pick was forwarded because the chosen shard had no member left. Bounded by the
    /// number of shards so a pick never circulates.
    pub hops: u8,
}

/// A route change: a shard's local subscriber count for a filter (or a shared group on it) went
/// 0→1 (`present`) or 1→0. Only these transitions cross shards.
#[derive(Debug, Clone)]
pub struct RouteChange {
    pub shard: ShardId,
    pub filter: Arc<str>,
    pub group: Option<Arc<str>>,
    pub present: bool,
    /// For an added normal filter: when the subscribing shard last polled before it read the
    /// SUBSCRIBE. A shard that accepted a matching publish at or after this time and did not
    /// forward it (the route had not reached it yet) replays it to `shard`
    /// (`ShardState::replay_recent`), so a publish read right after a subscription on another
    /// shard is not missed.
    pub since: Instant,
}

/// A peer node of the cluster as the engine knows it: the `[cluster] node_id` of another ringmq
/// process (the engine does not link the cluster crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerNode(pub u64);

/// A shared group by its filter (after `$share/group/`) and name.
pub type GroupPick = (Arc<str>, Arc<str>);

/// A publish accepted on this node that peer nodes want, on its way to shard 0, which owns the
/// peer links and sends it once per destination node.
#[derive(Debug, Clone)]
pub struct ClusterForward {
    pub message: Arc<Message>,
    /// Peer nodes with a matching plain subscription, each once.
    pub nodes: SmallVec<[PeerNode; 4]>,
    /// Shared groups with no member on this node, each given to one peer node that has members
    /// (round-robin), so a group gets each message once cluster-wide.
    pub shared: SmallVec<[(PeerNode, GroupPick); 1]>,
    /// A retained message goes to every peer node (each keeps the retained set), whether or not
    /// it has a subscriber.
    pub all_nodes: bool,
    /// Set for the retained set handed to a peer whose link just came up: the peer stores it
    /// (last writer wins) and delivers it to nobody.
    pub retained_sync: bool,
}

/// A connection waiting for its claim: its shard and its id there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClaimToken {
    pub shard: ShardId,
    pub conn: crate::ids::ConnId,
}

/// A home shard's answer to a peer's claim: the session image if it had one.
#[derive(Debug)]
pub struct ClaimAnswer {
    pub to: PeerNode,
    pub claim: u64,
    pub client_id: Arc<str>,
    pub image: Option<Box<crate::state::SessionImage>>,
}

/// What shard 0's engine hands its cluster runtime about session claims (taken with
/// `ShardState::take_cluster_claims` every turn).
#[derive(Debug)]
pub enum ClaimRequest {
    /// Claim `client_id` from the peer nodes for the held connection `token`.
    Start {
        token: ClaimToken,
        client_id: Arc<str>,
        clean_start: bool,
    },
    /// Send this answer to a peer's claim.
    Answer(ClaimAnswer),
}

/// Per-shard statistics sent to shard 0 for `$SYS`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShardStats {
    pub connections: u64,
    pub sessions_offline: u64,
    pub subscriptions: u64,
    pub retained: u64,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

/// What shards' engines send each other. Sent in batches (`Vec<ShardMsg>`), one batch per
/// destination per loop turn. (Sockets handed between shards travel beside these, in the
/// runtime's envelope: the engine holds no file descriptor.)
#[derive(Debug)]
pub enum ShardMsg {
    /// Deliver to this shard's matching normal subscribers (`normal`) and to one member of each
    /// picked shared group.
    Publish {
        message: Arc<Message>,
        normal: bool,
        shared: SmallVec<[SharedPick; 1]>,
    },
    Route(RouteChange),
    /// Acknowledges a batch of route changes, so a SUBACK is sent only once every shard routes the
    /// new subscription.
    RouteAck {
        barrier: u64,
    },
    /// Asks for a [`ShardMsg::RouteAck`] once everything sent before it is applied.
    RouteBarrier {
        from: ShardId,
        barrier: u64,
    },
    /// Store (or clear, for an empty payload) a retained message.
    Retain(Arc<Message>),
    Stats {
        from: ShardId,
        stats: ShardStats,
    },
    /// A peer node's plain interest in `filter` appeared or went (shard 0 to every other shard,
    /// so each matches publishes against the cluster's routes in its own trie, without a lock).
    RemoteRoute {
        node: PeerNode,
        filter: Arc<str>,
        /// A shared group on `filter` rather than a plain subscription.
        group: Option<Arc<str>>,
        present: bool,
    },
    /// A publish for peer nodes (any shard to shard 0).
    ClusterForward(ClusterForward),
    /// A connection on its home shard holds its CONNECT until peer nodes give up the client id
    /// (home shard to shard 0, whose cluster runtime claims it; `state::handover`).
    ClusterClaim {
        token: ClaimToken,
        client_id: Arc<str>,
        clean_start: bool,
    },
    /// The claim ended (shard 0 to the home shard): install the images, then resume (`won`) or
    /// refuse the held connection. `conn: None`: images that came after their claim ended,
    /// kept as offline sessions.
    ClaimDone {
        conn: Option<crate::ids::ConnId>,
        won: bool,
        images: Vec<crate::state::SessionImage>,
    },
    /// Peer node `from` claims `client_id` (shard 0 to the id's home shard): hand the session
    /// over and answer with [`ShardMsg::PeerClaimAnswer`].
    PeerClaim {
        from: PeerNode,
        claim: u64,
        client_id: Arc<str>,
        clean_start: bool,
    },
    /// The home shard's answer to a [`ShardMsg::PeerClaim`] (to shard 0, which sends it on).
    PeerClaimAnswer(ClaimAnswer),
    Shutdown,
}
