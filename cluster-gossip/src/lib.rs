//! ringmq-cluster-gossip: the I/O-free core of clustering.
//!
//! **Owns**: the `[cluster]` config and the shared secret ([`config`], [`auth`]); who is in the
//! cluster, SWIM over `foca` with reconciled up/down edges ([`membership`]); the owner-versioned
//! route table that says which peer nodes want which topics ([`routes`]) and the per-link protocol
//! that keeps it in step ([`sync`]); the claim protocol that keeps one session per client id in
//! the cluster and moves it to the node a client connects to ([`handover`]); the byte formats of gossip datagrams and peer-link frames
//! ([`codec`]); and [`node::ClusterNode`], which wires them together.
//!
//! **Must not touch**: sockets, timers of a runtime, MQTT clients or the per-shard tries. Every
//! type here takes bytes/events and a `now: Instant` in and hands datagrams, frames, link commands,
//! events and its next deadline out (`handle_*` / `poll_*`, the quinn-proto shape). The runtime
//! seam (a glommio UDP socket, TCP peer links, a timer) drives it; the simulation tests in
//! `tests/sim_*.rs` drive it with a fake clock and lossy in-memory links.
//!
//! **Main types**: [`ClusterConfig`], [`Secret`], [`NodeIdentity`] (`NodeId` + `Generation`),
//! [`Membership`] and [`MembershipEvent`], [`LocalRoutes`], [`RemoteRoutes`], [`RouteMatcher`],
//! [`RouteSync`], [`PeerFrame`], [`ClusterNode`].

pub mod auth;
pub mod codec;
pub mod config;
pub mod handover;
pub mod identity;
pub mod membership;
pub mod node;
pub mod routes;
pub mod sync;

pub use auth::{Secret, SecretError};
pub use codec::{CodecError, PeerFrame};
pub use config::{ClusterConfig, ConfigError};
pub use handover::{ClaimBook, ClaimEvent, ClaimOutcome, ClaimStamp, SessionMsg};
pub use identity::{Generation, NodeId, NodeIdentity};
pub use membership::{Membership, MembershipEvent};
pub use node::{ClusterEvent, ClusterNode, LinkCommand, LinkId};
pub use routes::{
    LocalRoutes, RemoteRoutes, RouteChange, RouteEntry, RouteMatcher, RouteOp, RouteSummary,
};
pub use sync::RouteSync;
