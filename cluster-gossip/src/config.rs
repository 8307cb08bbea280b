//! The `[cluster]` section of the broker's TOML config. A config with no such section means the
//! node runs alone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Upper bound on `seeds`: a handful is enough, every node gossips the rest.
pub const SEEDS_MAX: usize = 64;
/// Upper bound on any per-link queue setting, so a typo cannot size a queue at 10^12.
pub const LINK_QUEUE_FRAMES_LIMIT: usize = 1 << 20;
/// Upper bound on the per-origin op log.
pub const OP_LOG_LEN_LIMIT: usize = 1 << 20;

/// Why a `[cluster]` section was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("[cluster] section does not parse: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("[cluster] {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

/// `[cluster]`: the five operator keys are the contract with operators' configs; the tunables
/// have defaults for a LAN of a few to a few dozen nodes.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Unique and stable across restarts; 0 is reserved.
    pub node_id: u64,
    /// UDP address for SWIM.
    pub gossip_listen: SocketAddr,
    /// TCP address for route sync and forwarded messages.
    pub peer_listen: SocketAddr,
    /// Gossip addresses of some other nodes; our own address may be listed (it is skipped), so
    /// every node can share one list.
    #[serde(default)]
    pub seeds: Vec<SocketAddr>,
    /// File holding the shared secret.
    pub secret_file: PathBuf,

    /// How often a random member is probed.
    #[serde(default = "default_probe_period_ms")]
    pub probe_period_ms: u64,
    /// How long to wait for a direct ack before asking others to probe indirectly.
    #[serde(default = "default_probe_rtt_ms")]
    pub probe_rtt_ms: u64,
    /// How long a member stays suspect before it is declared down.
    #[serde(default = "default_suspect_timeout_ms")]
    pub suspect_timeout_ms: u64,
    /// How often membership updates are pushed to a few members besides the probe cycle.
    #[serde(default = "default_gossip_period_ms")]
    pub gossip_period_ms: u64,
    /// How often we ask a member for its member list (also re-announces to seeds when alone).
    #[serde(default = "default_announce_period_ms")]
    pub announce_period_ms: u64,
    /// How often we announce to members we consider down: this is what heals a partition.
    #[serde(default = "default_announce_down_period_ms")]
    pub announce_down_period_ms: u64,
    /// How often foca's member list is re-read, since notifications are only hints.
    #[serde(default = "default_reconcile_period_ms")]
    pub reconcile_period_ms: u64,
    /// How often route summaries are exchanged on every peer link to repair drift.
    #[serde(default = "default_anti_entropy_period_ms")]
    pub anti_entropy_period_ms: u64,
    /// How long to wait before re-dialing a member whose peer link failed.
    #[serde(default = "default_link_retry_ms")]
    pub link_retry_ms: u64,
    /// Frames held for one peer link before the overflow policy applies.
    #[serde(default = "default_link_queue_frames_max")]
    pub link_queue_frames_max: usize,
    /// Route ops kept per generation to serve deltas; a peer further behind gets a snapshot.
    #[serde(default = "default_op_log_len_max")]
    pub op_log_len_max: usize,
    /// How long a connect waits for peers to hand over (or deny having) the client's session
    /// before it goes on without the silent ones. Below the broker's connect timeout.
    #[serde(default = "default_takeover_timeout_ms")]
    pub takeover_timeout_ms: u64,
}

fn default_probe_period_ms() -> u64 {
    1_000
}
fn default_probe_rtt_ms() -> u64 {
    300
}
fn default_suspect_timeout_ms() -> u64 {
    3_000
}
fn default_gossip_period_ms() -> u64 {
    200
}
fn default_announce_period_ms() -> u64 {
    10_000
}
fn default_announce_down_period_ms() -> u64 {
    5_000
}
fn default_reconcile_period_ms() -> u64 {
    500
}
fn default_anti_entropy_period_ms() -> u64 {
    2_000
}
fn default_link_retry_ms() -> u64 {
    1_000
}
fn default_link_queue_frames_max() -> usize {
    4_096
}
fn default_op_log_len_max() -> usize {
    4_096
}
fn default_takeover_timeout_ms() -> u64 {
    crate::handover::TAKEOVER_TIMEOUT_DEFAULT.as_millis() as u64
}

impl ClusterConfig {
    /// Parses a whole broker config file and returns its `[cluster]` section, if any.
    pub fn from_broker_toml(text: &str) -> Result<Option<Self>, ConfigError> {
        let mut table: toml::Table = toml::from_str(text)?;
        let Some(section) = table.remove("cluster") else {
            return Ok(None);
        };
        let config = Self::deserialize(section)?;
        config.validate()?;
        Ok(Some(config))
    }

    /// A config with the given addresses and every tunable at its default (tests, tools).
    pub fn with_defaults(
        node_id: u64,
        gossip_listen: SocketAddr,
        peer_listen: SocketAddr,
        seeds: Vec<SocketAddr>,
    ) -> Self {
        Self {
            node_id,
            gossip_listen,
            peer_listen,
            seeds,
            secret_file: PathBuf::new(),
            probe_period_ms: default_probe_period_ms(),
            probe_rtt_ms: default_probe_rtt_ms(),
            suspect_timeout_ms: default_suspect_timeout_ms(),
            gossip_period_ms: default_gossip_period_ms(),
            announce_period_ms: default_announce_period_ms(),
            announce_down_period_ms: default_announce_down_period_ms(),
            reconcile_period_ms: default_reconcile_period_ms(),
            anti_entropy_period_ms: default_anti_entropy_period_ms(),
            link_retry_ms: default_link_retry_ms(),
            link_queue_frames_max: default_link_queue_frames_max(),
            op_log_len_max: default_op_log_len_max(),
            takeover_timeout_ms: default_takeover_timeout_ms(),
        }
    }

    /// Checks relations between keys; each error names the key to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(invalid(
                "node_id",
                "must not be 0 (reserved), pick a unique positive id",
            ));
        }
        if self.gossip_listen.port() == 0 {
            return Err(invalid(
                "gossip_listen",
                "needs a fixed port, peers dial it",
            ));
        }
        if self.peer_listen.port() == 0 {
            return Err(invalid("peer_listen", "needs a fixed port, peers dial it"));
        }
        if self.seeds.len() > SEEDS_MAX {
            return Err(invalid(
                "seeds",
                format!("{} entries, at most {SEEDS_MAX}", self.seeds.len()),
            ));
        }
        if self.secret_file.as_os_str().is_empty() {
            return Err(invalid("secret_file", "must name the shared secret file"));
        }
        let periods = [
            ("probe_period_ms", self.probe_period_ms),
            ("probe_rtt_ms", self.probe_rtt_ms),
            ("suspect_timeout_ms", self.suspect_timeout_ms),
            ("gossip_period_ms", self.gossip_period_ms),
            ("announce_period_ms", self.announce_period_ms),
            ("announce_down_period_ms", self.announce_down_period_ms),
            ("reconcile_period_ms", self.reconcile_period_ms),
            ("anti_entropy_period_ms", self.anti_entropy_period_ms),
            ("link_retry_ms", self.link_retry_ms),
            ("takeover_timeout_ms", self.takeover_timeout_ms),
        ];
        for (key, value) in periods {
            if value == 0 || value > 3_600_000 {
                return Err(invalid(key, format!("{value} ms, must be 1..=3600000")));
            }
        }
        if self.probe_rtt_ms >= self.probe_period_ms {
            return Err(invalid(
                "probe_rtt_ms",
                format!(
                    "{} ms must be below probe_period_ms ({} ms), the indirect probe needs the rest",
                    self.probe_rtt_ms, self.probe_period_ms
                ),
            ));
        }
        if self.link_queue_frames_max == 0 || self.link_queue_frames_max > LINK_QUEUE_FRAMES_LIMIT {
            return Err(invalid(
                "link_queue_frames_max",
                format!(
                    "{}, must be 1..={LINK_QUEUE_FRAMES_LIMIT}",
                    self.link_queue_frames_max
                ),
            ));
        }
        if self.op_log_len_max == 0 || self.op_log_len_max > OP_LOG_LEN_LIMIT {
            return Err(invalid(
                "op_log_len_max",
                format!("{}, must be 1..={OP_LOG_LEN_LIMIT}", self.op_log_len_max),
            ));
        }
        Ok(())
    }

    /// Seeds other than ourselves.
    pub fn other_seeds(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.seeds
            .iter()
            .copied()
            .filter(move |seed| *seed != self.gossip_listen)
    }

    /// Worst-case time from a node's death until every member has reported it down, for a
    /// cluster of `cluster_size`: foca probes members round-robin (each at most two rounds of
    /// `cluster_size` probe periods apart), then the suspicion timeout runs, then our reconcile
    /// tick turns it into an edge. Tests assert against this bound.
    pub fn down_detection_bound(&self, cluster_size: usize) -> Duration {
        let probe = self.probe_period_ms * 2 * cluster_size.max(1) as u64;
        Duration::from_millis(
            probe + self.suspect_timeout_ms + self.gossip_period_ms + 2 * self.reconcile_period_ms,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        [listen]
        mqtt = "0.0.0.0:1883"

        [cluster]
        node_id = 1
        gossip_listen = "0.0.0.0:7946"
        peer_listen = "0.0.0.0:7947"
        seeds = ["10.0.0.2:7946"]
        secret_file = "/etc/ringmq/cluster.key"
    "#;

    #[test]
    fn issue_example_parses_with_defaults() {
        let config = ClusterConfig::from_broker_toml(EXAMPLE).unwrap().unwrap();
        assert_eq!(config.node_id, 1);
        assert_eq!(config.seeds.len(), 1);
        assert_eq!(config.suspect_timeout_ms, 3_000);
    }

    #[test]
    fn no_section_means_alone() {
        assert_eq!(
            ClusterConfig::from_broker_toml("[listen]\nmqtt = \"x\"\n").unwrap(),
            None
        );
    }

    #[test]
    fn errors_name_the_key() {
        let text = EXAMPLE.replace("node_id = 1", "node_id = 0");
        let err = ClusterConfig::from_broker_toml(&text).unwrap_err();
        assert!(err.to_string().contains("node_id"), "{err}");

        let text = EXAMPLE.replace("seeds", "seedz");
        let err = ClusterConfig::from_broker_toml(&text).unwrap_err();
        assert!(err.to_string().contains("seedz"), "{err}");

        let text = EXAMPLE.replace("[cluster]", "[cluster]\nprobe_rtt_ms = 5000");
        let err = ClusterConfig::from_broker_toml(&text).unwrap_err();
        assert!(err.to_string().contains("probe_rtt_ms"), "{err}");
    }

    #[test]
    fn own_address_is_not_a_seed() {
        let me: SocketAddr = "127.0.0.1:7946".parse().unwrap();
        let other: SocketAddr = "127.0.0.2:7946".parse().unwrap();
        let config =
            ClusterConfig::with_defaults(1, me, "127.0.0.1:7947".parse().unwrap(), vec![me, other]);
        assert_eq!(config.other_seeds().collect::<Vec<_>>(), vec![other]);
    }
}
