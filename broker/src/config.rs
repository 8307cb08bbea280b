//! The broker's TOML configuration. Every section and key is known: an unknown key or a bad value
//! stops the broker at start with the key's name and the reason.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;
use shard::{Limits, SubscribeRules};

/// The configuration compiled in: what `ringmq` runs with no arguments.
pub const EMBEDDED_DEFAULT: &str = include_str!("../ringmq.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// MQTT listeners (TCP). Each shard binds each with SO_REUSEPORT.
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    /// Number of shards (one executor thread each). 0 = one per CPU core.
    #[serde(default)]
    pub shards: u16,
    /// Pin shard i to CPU i.
    #[serde(default = "default_true")]
    pub pin_shards: bool,
    /// Listen backlog asked of the kernel (capped by net.core.somaxconn).
    #[serde(default = "default_backlog")]
    pub listen_backlog: u32,
    /// Where Prometheus scrapes `/metrics`; empty string disables it.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: String,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub acl: SubscribeRules,
    #[serde(default)]
    pub bridge: BridgeSection,
}

/// `[bridge]`: bridges to other systems. Only Kafka so far.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeSection {
    /// `[bridge.kafka]`: see `examples/kafka-bridge.toml`.
    pub kafka: Option<bridge_kafka::BridgeConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// "text" or "json".
    pub format: String,
    /// A tracing filter, e.g. "info" or "ringmq_shard=debug,info". RUST_LOG overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([0, 0, 0, 0], 1883))]
}
fn default_true() -> bool {
    true
}
fn default_backlog() -> u32 {
    4096
}
fn default_metrics_listen() -> String {
    "0.0.0.0:9883".into()
}

impl Config {
    /// Parses and validates a configuration text. `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Config> {
        // toml's message names the key (or the unknown one) and shows the line.
        let config: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        config
            .validate()
            .with_context(|| format!("{origin}: invalid configuration"))?;
        Ok(config)
    }

    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Config::parse(&text, &path.display().to_string())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.listen.is_empty() {
            bail!("listen: at least one address is needed");
        }
        if self.listen_backlog == 0 {
            bail!("listen_backlog: must be at least 1");
        }
        if !self.metrics_listen.is_empty() {
            self.metrics_listen.parse::<SocketAddr>().with_context(|| {
                format!(
                    "metrics_listen: {:?} is not an address:port",
                    self.metrics_listen
                )
            })?;
        }
        match self.log.format.as_str() {
            "text" | "json" => {}
            other => bail!("log.format: {other:?} is not one of \"text\", \"json\""),
        }
        self.limits.validate()?;
        self.acl.validate()?;
        if let Some(kafka) = &self.bridge.kafka {
            kafka
                .validate()
                .map_err(|e| anyhow::anyhow!("bridge.kafka: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::parse(EMBEDDED_DEFAULT, "embedded").expect("embedded default parses");
        assert_eq!(c.listen, default_listen());
        assert_eq!(c.shards, 0);
    }

    #[test]
    fn empty_config_is_the_default() {
        let c = Config::parse("", "empty").expect("empty parses");
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[limits]\nmax_pakcet_size_bytes = 5\n", "t.toml").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("max_pakcet_size_bytes"), "{text}");
    }

    #[test]
    fn shipped_kafka_example_is_valid() {
        let text = include_str!("../../examples/kafka-bridge.toml");
        let c = Config::parse(text, "examples/kafka-bridge.toml").expect("example parses");
        assert!(c.bridge.kafka.is_some());
    }

    #[test]
    fn bad_bridge_rule_is_named() {
        let text = "[bridge.kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n[[bridge.kafka.rule]]\nfilter = \"a/#\"\nkafka_topic = \"t\"\nkey = \"vin\"\n";
        let err = Config::parse(text, "t.toml").unwrap_err();
        assert!(format!("{err:#}").contains("key"), "{err:#}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = Config::parse("[limits]\nreceive_maximum = 0\n", "t.toml").unwrap_err();
        assert!(
            format!("{err:#}").contains("limits.receive_maximum"),
            "{err:#}"
        );
        let err = Config::parse("[acl]\ndeny = [\"a/#/b\"]\n", "t.toml").unwrap_err();
        assert!(format!("{err:#}").contains("acl.deny"), "{err:#}");
        let err = Config::parse("listen = [\"nope\"]\n", "t.toml").unwrap_err();
        assert!(format!("{err:#}").contains("listen"), "{err:#}");
        let err = Config::parse("[log]\nformat = \"xml\"\n", "t.toml").unwrap_err();
        assert!(format!("{err:#}").contains("log.format"), "{err:#}");
    }
}
