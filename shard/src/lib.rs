//! ringmq-shard: the per-core engine.
//!
//! **Owns**: everything one CPU core does for its clients — accepting on its own SO_REUSEPORT
//! listener, connections ([`connection`]), sessions ([`session`]), the local subscription trie and
//! the replicated route table ([`state`], [`trie`]), retained messages, timers (keepalive, will
//! delay, session expiry), cross-shard channels and the shard's counters ([`metrics`]).
//!
//! **Must not touch**: another shard's state (only messages cross, as [`message::ShardMsg`]
//! batches over bounded channels), process-wide configuration parsing or logging setup (the
//! `broker` binary's), and the MQTT byte format (that is `wire`'s). glommio is used only in
//! [`runtime`] and [`connection`] — the seam to swap the runtime. Idle connections park in an
//! epoll set ([`park`]), which holds no glommio state.
//!
//! **Main types**: [`runtime::start`] → [`runtime::Broker`]; per shard a [`state::ShardState`]
//! holding [`session::Session`]s, a [`trie::TopicTrie`] of [`state::FilterEntry`] (local
//! subscribers) and one of [`state::RouteEntry`] (which shards want which filters); messages are
//! [`message::Message`] shared by `Arc` between every subscriber on every shard.

pub mod bridge;
pub mod config;
pub mod connection;
pub mod message;
pub mod metrics;
pub mod park;
pub mod runtime;
pub mod session;
pub mod state;
pub mod sys;
pub mod trie;

pub use config::{Limits, SubscribeAuthorizer, SubscribeRules};
pub use runtime::{start, Broker, RuntimeConfig};

/// Errors starting or running shards.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("{requested} shards requested but at most {max} are supported")]
    TooManyShards { requested: usize, max: usize },
    #[error("runtime: {0}")]
    Runtime(String),
}

/// A configuration value that cannot work, named by its key.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}
