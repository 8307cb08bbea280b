//! ringmq-engine: one shard's MQTT behaviour with no I/O.
//!
//! **Owns**: the per-connection protocol machine ([`conn`]: CONNECT to DISCONNECT, for
//! 3.1/3.1.1/5.0), sessions ([`session`]: subscriptions, queued and in-flight messages, wills,
//! expiry), the shard's state ([`state::ShardState`]: the local subscription index, the route
//! table of other shards' interest, retained messages, route barriers, timers, cross-shard
//! outboxes), the topic trie ([`trie`]), `$SYS` figures ([`sys`]), plain counters
//! ([`counters`]) and overload protection ([`admission`]: connection and handshake bounds,
//! connect rate, flapping bans, the static ban list, per-client publish rates). [`Engine`] is the whole of it behind `handle_*` inputs (bytes, closes,
//! transport progress, cross-shard batches, time, Kafka answers) and `poll_*` outputs
//! ([`Output`]: transmits, closes, hand-offs; cross-shard batches; the next deadline).
//!
//! **Must not touch**: sockets, file descriptors, wakers or any runtime (glommio, io_uring): the
//! `ringmq-shard` crate drives it; another shard's state (only [`message::ShardMsg`] batches
//! cross); the Kafka client (the bridge is the [`bridge::Bridge`] trait, implemented by the
//! runtime); the MQTT byte format (that is `wire`'s). The compiler enforces the first and the
//! third: this crate depends on neither glommio nor librdkafka.
//!
//! **Main types**: [`Engine`], [`Output`], [`ids::ConnId`], [`state::ShardState`],
//! [`session::Session`], [`message::Message`] (one decoded publish, shared by `Arc` between every
//! subscriber on every shard), [`message::ShardMsg`].
//!
//! It runs on exactly one shard thread; every function assumes the caller is that thread (the
//! types are `!Send` where they hold shard-local handles).

pub mod admission;
pub mod bridge;
pub mod config;
pub mod conn;
pub mod counters;
mod engine;
pub mod ids;
pub mod message;
pub mod session;
pub mod state;
pub mod sys;
pub mod trie;

pub use config::{Limits, SubscribeAuthorizer, SubscribeRules};
pub use conn::auth::{AuthRequest, Authenticated};
pub use conn::meta::{ConnMeta, IdentityMapping, IdentitySource, ListenerId, PeerIdentity};
pub use engine::{Engine, Output};
pub use ids::ConnId;

/// A configuration value that cannot work, named by its key.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}
