//! ringmq-loadgen: an MQTT load generator and meter (emqtt-bench class) that works against any
//! MQTT broker, itself thread-per-core (one glommio executor per core, each client a task).
//!
//! Owns: the scenario format ([`plan::Scenario`]: groups of idle / subscribing / publishing
//! clients), the run ([`runner::run`]: connection pacing, open-loop publishing, phases), the
//! measurement ([`header::PayloadHeader`] in every payload, [`seq::SeqTracker`] for loss,
//! duplicates and reordering, HDR histograms in [`stats`]) and self-observation
//! ([`monitor`]: per-thread CPU and send backlog, so a run where the loadgen was the
//! bottleneck says so).
//!
//! Must not touch: MQTT encoding/decoding (that is `wire`'s; this crate only calls it) or
//! anything of the broker.
//!
//! Transports ([`transport`]): plain TCP, TLS (rustls), MQTT over WebSocket and over
//! WebSocket + TLS, as byte-stream layers ([`transport::Stream`]) under the one MQTT client, so
//! every scenario runs over any of them.
//!
//! Several brokers and reconnecting ([`failover`]: [`failover::BrokerPick`] round robin or
//! random per client, [`failover::Backoff`] exponential with jitter) let a run drive and
//! measure failover across cluster nodes.
//!
//! Main types: [`plan::Scenario`], [`runner::RunOptions`], [`stats::Summary`],
//! [`transport::Edge`].

pub mod client;
pub mod failover;
pub mod header;
pub mod monitor;
pub mod net;
pub mod plan;
pub mod runner;
pub mod seq;
pub mod stats;
pub mod transport;
