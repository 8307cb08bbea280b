//! ringmq-shard: the per-core runtime around the engine.
//!
//! **Owns**: starting one glommio executor per CPU core ([`runtime::start`]), each with its own
//! SO_REUSEPORT listeners, its io_uring data plane (`ringmq-uring`'s `Ring`: multishot accept and
//! receive into a provided buffer ring, batched sends, one `io_uring_enter` per loop turn) and its
//! [`engine::Engine`]; the shard loop that feeds the engine bytes, time and other shards'
//! messages and carries out its outputs; the N×N cross-shard channels (glommio shared channels,
//! one [`runtime::Batch`] per destination per turn, handed-off sockets travelling beside the
//! engine's messages); the Kafka bridge glue ([`bridge`]); authentication and the ACL's reload
//! ([`auth`]: ringmq-auth's worker pool, never hashing on a shard thread); publishing the
//! shards' counters into the process's metrics recorder ([`metrics`]); closing sockets the
//! engine's admission refuses at accept ([`overload`]); on shard 0 of a clustered broker, the
//! cluster node's sockets, peer links and forwarding ([`cluster`]); the byte-stream layer of
//! `[[listener]]`s ([`edge`]: PROXY protocol, TLS with rustls, WebSocket) between the ring and
//! the engine.
//!
//! **Must not touch**: MQTT behaviour (the engine's, in `shard/engine`), configuration parsing
//! or logging setup (the `broker` binary's), another shard's state (only batches cross).
//!
//! **Main types**: [`runtime::start`] → [`runtime::Broker`]; per shard a [`runtime::ShardCtx`]
//! holding the `Engine`, the `Ring` and the links between the engine's connection ids and the
//! ring's keys.

pub mod auth;
pub mod bridge;
pub mod cluster;
pub mod edge;
pub mod metrics;
pub mod overload;
pub mod reload;
pub mod runtime;

pub use engine::admission;
pub use engine::config;
pub use engine::{ConfigError, Limits, SubscribeAuthorizer, SubscribeRules};
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
    #[error("cannot listen on {addr}: another process already listens there (another ringmq?); stop it or choose another address")]
    AddressInUse { addr: std::net::SocketAddr },
    #[error("{requested} shards requested but at most {max} are supported")]
    TooManyShards { requested: usize, max: usize },
    #[error("runtime: {0}")]
    Runtime(String),
}
