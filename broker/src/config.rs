//! The broker's TOML configuration. Every section and key is known: an unknown key or a bad value
//! stops the broker at start with the key's name and the reason.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use shard::{Limits, SubscribeRules};

/// `[auth]`, `[auth.jwt]` (see `shard/auth/src/config.rs` for every key).
pub use auth::{AclConfig, AuthConfig};

/// The configuration compiled in: what `ringmq` runs with no arguments.
pub const EMBEDDED_DEFAULT: &str = include_str!("../ringmq.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Plain MQTT/TCP listeners. Each shard binds each with SO_REUSEPORT. Absent (or empty)
    /// with no `[[listener]]` either: `0.0.0.0:1883`.
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// `[[listener]]`: TCP, TLS, WebSocket listeners, with PROXY protocol if asked (see
    /// `examples/secure.toml`; the keys are `shard::edge::ListenerConfig`'s).
    #[serde(default, rename = "listener")]
    pub listeners: Vec<shard::edge::ListenerConfig>,
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
    /// `[auth]`: `allow_anonymous`, `password_file`, `[auth.jwt]`.
    #[serde(default)]
    pub auth: AuthConfig,
    /// `[acl]`: `file` (Mosquitto acl_file syntax) and `deny` (filters nobody may subscribe to
    /// or receive).
    #[serde(default)]
    pub acl: AclConfig,
    #[serde(default)]
    pub bridge: BridgeSection,
    #[serde(default)]
    pub overload: OverloadConfig,
    /// `[cluster]`: join other ringmq nodes as one broker (see docs/cluster.md). Absent: this
    /// process runs alone.
    #[serde(default)]
    pub cluster: Option<cluster_gossip::ClusterConfig>,
}

/// `[overload]`: protection against connect floods, flapping clients and heavy publishers. See
/// the ops guide (`tuning/README.md`, "Overload protection") for every key.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OverloadConfig {
    /// Connections the broker holds (accepted, handshaking or live). Unset: the host's open-file
    /// limit minus the broker's own descriptors; 0: no bound.
    pub max_connections: Option<u32>,
    /// Connections accepted but not CONNACKed yet (TLS handshake, CONNECT, authentication).
    /// Unset: half of `max_connections`, so connections that never finish a handshake can hold
    /// at most half the descriptors; 0: no bound.
    pub max_handshakes: Option<u32>,
    /// CONNECTs admitted per second, whole broker (v5 CONNACK 0x9F, 3.1.1 closed beyond it).
    /// 0 (default): no limit.
    pub max_connection_rate: u32,
    /// CONNECTs admitted at once after a quiet time. 0 (default): the rate itself (one second's
    /// worth).
    pub connection_rate_burst: u32,
    /// PUBLISH packets per second one client may send; over it its reading pauses. 0 (default):
    /// no limit.
    pub publish_rate_per_client: u32,
    /// PUBLISH bytes per second one client may send; over it its reading pauses. 0 (default): no
    /// limit.
    pub publish_bytes_per_client: u32,
    /// Per listener, by its address as configured (`"0.0.0.0:1883" = 10000`): connections from
    /// it the broker holds. A `[[listener]]` may say `max_connections` itself instead.
    pub listener_max_connections: BTreeMap<String, u32>,
    pub flapping: FlappingConfig,
    pub ban: BanConfig,
}

/// `[overload.flapping]`: a client id (or address) that connects more than `max_connects`
/// times within `window_secs` is refused for `ban_secs` (v5 CONNACK 0x8A, 3.1.1 return code 5).
/// On by default with EMQX's `flapping_detect` figures (15 per minute, 5 minutes).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FlappingConfig {
    pub enabled: bool,
    /// Per client id.
    pub max_connects: u32,
    /// Per client address, all client ids together (each shard counts its own share); 0
    /// (default): off, as many vehicles may share one address behind carrier NAT.
    pub max_connects_per_address: u32,
    pub window_secs: u32,
    pub ban_secs: u32,
}

impl Default for FlappingConfig {
    fn default() -> Self {
        FlappingConfig {
            enabled: true,
            max_connects: 15,
            max_connects_per_address: 0,
            window_secs: 60,
            ban_secs: 300,
        }
    }
}

/// `[overload.ban]`: refused at CONNECT (v5 CONNACK 0x8A, 3.1.1 return code 5).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BanConfig {
    pub client_ids: Vec<String>,
    pub usernames: Vec<String>,
    /// Addresses and CIDR blocks: `"192.0.2.7"`, `"10.0.0.0/8"`, `"2001:db8::/32"`.
    pub addresses: Vec<String>,
}

impl OverloadConfig {
    fn validate(&self) -> anyhow::Result<()> {
        let f = &self.flapping;
        if f.enabled && (f.max_connects > 0 || f.max_connects_per_address > 0) {
            if f.window_secs == 0 {
                bail!("overload.flapping.window_secs: must be at least 1");
            }
            if f.ban_secs == 0 {
                bail!("overload.flapping.ban_secs: must be at least 1");
            }
        }
        for a in &self.ban.addresses {
            a.parse::<shard::admission::IpNet>()
                .map_err(|e| anyhow::anyhow!("overload.ban.addresses: {e}"))?;
        }
        for key in self.listener_max_connections.keys() {
            key.parse::<SocketAddr>().with_context(|| {
                format!("overload.listener_max_connections: {key:?} is not an address:port")
            })?;
        }
        Ok(())
    }

    /// What the shards enforce. `listeners`: each listener's address and own `max_connections`
    /// (0 for `listen` entries), in listener-id order; `connection_ceiling`: what the host's
    /// open-file limit allows (for the unset defaults).
    pub fn resolve(
        &self,
        listeners: &[(SocketAddr, u32)],
        connection_ceiling: u64,
    ) -> anyhow::Result<shard::admission::Overload> {
        use shard::admission::{Flapping, Overload};
        self.validate()?;
        let ceiling = u32::try_from(connection_ceiling).unwrap_or(u32::MAX).max(1);
        let max_connections = self.max_connections.unwrap_or(ceiling);
        let max_handshakes = self.max_handshakes.unwrap_or((max_connections / 2).max(1));
        let mut listener_max_connections: Vec<u32> = listeners.iter().map(|l| l.1).collect();
        for (key, max) in &self.listener_max_connections {
            let addr: SocketAddr = key.parse().with_context(|| {
                format!("overload.listener_max_connections: {key:?} is not an address:port")
            })?;
            let Some(i) = listeners.iter().position(|l| l.0 == addr) else {
                bail!("overload.listener_max_connections: {key:?} is not a listener address");
            };
            if listener_max_connections[i] != 0 {
                bail!("overload.listener_max_connections: {key:?} has max_connections in its [[listener]] entry already; keep one");
            }
            listener_max_connections[i] = *max;
        }
        let f = &self.flapping;
        let on = |n: u32| if f.enabled { n } else { 0 };
        Ok(Overload {
            max_connections,
            listener_max_connections,
            max_handshakes,
            max_connection_rate: self.max_connection_rate,
            connection_rate_burst: match self.connection_rate_burst {
                0 => self.max_connection_rate,
                n => n,
            },
            publish_rate_per_client: self.publish_rate_per_client,
            publish_bytes_per_client: self.publish_bytes_per_client,
            flapping: Flapping {
                max_connects: on(f.max_connects),
                max_connects_per_address: on(f.max_connects_per_address),
                window: Duration::from_secs(u64::from(f.window_secs)),
                ban: Duration::from_secs(u64::from(f.ban_secs)),
            },
            ban: self.ban_list()?,
        })
    }

    /// The static ban list as the shards take it (also on a reload).
    pub fn ban_list(&self) -> anyhow::Result<shard::admission::BanList> {
        let mut addresses = Vec::new();
        for a in &self.ban.addresses {
            addresses.push(
                a.parse()
                    .map_err(|e| anyhow::anyhow!("overload.ban.addresses: {e}"))?,
            );
        }
        Ok(shard::admission::BanList {
            client_ids: self.ban.client_ids.clone(),
            usernames: self.ban.usernames.clone(),
            addresses,
        })
    }
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
    /// The `[acl] deny` filters as the engine's plain subscribe rule (used when no ACL file and
    /// no authentication is configured; otherwise they are part of the compiled ACL).
    pub fn subscribe_rules(&self) -> SubscribeRules {
        SubscribeRules {
            deny: self.acl.deny.clone(),
        }
    }

    /// What the runtime's auth service needs; relative paths resolve against `base_dir`.
    pub fn auth_setup(&self, base_dir: &Path) -> shard::auth::AuthSetup {
        shard::auth::AuthSetup {
            auth: self.auth.clone(),
            acl: self.acl.clone(),
            base_dir: base_dir.to_path_buf(),
            // A listener that takes the username from certificates: anonymous defaults off.
            certificate_identity: self.listeners.iter().any(|l| {
                l.tls
                    .as_ref()
                    .is_some_and(|t| t.identity_as_username != Default::default())
            }),
        }
    }

    /// Parses and validates a configuration text. `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Config> {
        // toml's message names the key (or the unknown one) and shows the line.
        let mut config: Config =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        if config.listen.is_empty() && config.listeners.is_empty() {
            config.listen = default_listen();
        }
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

    /// Every listener's address and own `max_connections`, by listener id (`listen` entries
    /// first, then `[[listener]]` entries, in file order).
    pub fn listener_bounds(&self) -> Vec<(SocketAddr, u32)> {
        self.listen
            .iter()
            .map(|a| (*a, 0))
            .chain(self.listeners.iter().map(|l| (l.addr, l.max_connections)))
            .collect()
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.listen.is_empty() && self.listeners.is_empty() {
            bail!("listen: at least one address (or a [[listener]]) is needed");
        }
        // Loads the certificate files too, so `--check-config` finds a bad PEM.
        crate::listeners::build(self)?;
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
        // Each names its key (`auth.password_file: ...`, `acl.deny: rule 0 ...`).
        self.auth.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        self.acl.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        self.overload.validate()?;
        if let Some(kafka) = &self.bridge.kafka {
            kafka
                .validate()
                .map_err(|e| anyhow::anyhow!("bridge.kafka: {e}"))?;
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
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
    fn overload_defaults_follow_the_host() {
        let c = Config::parse("", "empty").expect("empty parses");
        let listen: Vec<_> = c.listen.iter().map(|a| (*a, 0)).collect();
        let o = c.overload.resolve(&listen, 19_872).expect("resolves");
        assert_eq!(o.max_connections, 19_872);
        assert_eq!(o.max_handshakes, 9_936);
        assert_eq!(o.max_connection_rate, 0);
        assert_eq!(o.publish_rate_per_client, 0);
        assert_eq!(o.flapping.max_connects, 15);
        assert_eq!(o.flapping.max_connects_per_address, 0);
        assert_eq!(o.flapping.window, Duration::from_secs(60));
        assert_eq!(o.flapping.ban, Duration::from_secs(300));
    }

    #[test]
    fn overload_keys_resolve() {
        let text = r#"
listen = ["127.0.0.1:1883", "127.0.0.1:1884"]
[overload]
max_connections = 0
max_handshakes = 100
max_connection_rate = 50
publish_rate_per_client = 20
publish_bytes_per_client = 65536
listener_max_connections = { "127.0.0.1:1884" = 10 }
[overload.flapping]
enabled = false
[overload.ban]
client_ids = ["stolen"]
usernames = ["mallory"]
addresses = ["10.0.0.0/8", "2001:db8::1"]
"#;
        let c = Config::parse(text, "t.toml").expect("parses");
        let listen: Vec<_> = c.listen.iter().map(|a| (*a, 0)).collect();
        let o = c.overload.resolve(&listen, 1000).expect("resolves");
        assert_eq!(o.max_connections, 0, "0 turns the bound off");
        assert_eq!(o.max_handshakes, 100);
        assert_eq!(o.connection_rate_burst, 50, "burst defaults to the rate");
        assert_eq!(o.listener_max_connections, vec![0, 10]);
        assert_eq!(o.flapping.max_connects, 0, "disabled");
        assert_eq!(o.ban.addresses.len(), 2);
        let bad = "[overload]\nlistener_max_connections = { \"127.0.0.1:9\" = 1 }\n";
        let c = Config::parse(bad, "t.toml").expect("parses");
        let listen: Vec<_> = c.listen.iter().map(|a| (*a, 0)).collect();
        let err = c.overload.resolve(&listen, 1000).unwrap_err();
        assert!(format!("{err:#}").contains("not a listener"), "{err:#}");
    }

    #[test]
    fn listener_entries_carry_their_own_maximum() {
        let text = r#"
listen = ["127.0.0.1:1883"]
[[listener]]
kind = "tcp"
addr = "127.0.0.1:1885"
max_connections = 7
"#;
        let c = Config::parse(text, "t.toml").expect("parses");
        let o = c
            .overload
            .resolve(&c.listener_bounds(), 1000)
            .expect("resolves");
        assert_eq!(o.listener_max_connections, vec![0, 7]);
        let twice =
            format!("{text}[overload]\nlistener_max_connections = {{ \"127.0.0.1:1885\" = 3 }}\n");
        let c = Config::parse(&twice, "t.toml").expect("parses");
        let err = c.overload.resolve(&c.listener_bounds(), 1000).unwrap_err();
        assert!(format!("{err:#}").contains("keep one"), "{err:#}");
    }

    #[test]
    fn bad_overload_values_are_named() {
        let err =
            Config::parse("[overload.ban]\naddresses = [\"10.0.0.0/40\"]\n", "t.toml").unwrap_err();
        assert!(
            format!("{err:#}").contains("overload.ban.addresses"),
            "{err:#}"
        );
        let err = Config::parse("[overload.flapping]\nwindow_secs = 0\n", "t.toml").unwrap_err();
        assert!(
            format!("{err:#}").contains("overload.flapping.window_secs"),
            "{err:#}"
        );
        let err = Config::parse("[overload]\nmax_conections = 5\n", "t.toml").unwrap_err();
        assert!(format!("{err:#}").contains("max_conections"), "{err:#}");
    }

    #[test]
    fn bad_bridge_rule_is_named() {
        let text = "[bridge.kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n[[bridge.kafka.rule]]\nfilter = \"a/#\"\nkafka_topic = \"t\"\nkey = \"vin\"\n";
        let err = Config::parse(text, "t.toml").unwrap_err();
        assert!(format!("{err:#}").contains("key"), "{err:#}");
    }

    fn listener_error(text: &str) -> String {
        format!("{:#}", Config::parse(text, "t.toml").unwrap_err())
    }

    #[test]
    fn listener_entries_parse_and_plain_listen_stays() {
        let c = Config::parse(
            "[[listener]]\nkind = \"ws\"\naddr = \"127.0.0.1:0\"\n[[listener]]\nkind = \"tcp\"\naddr = \"127.0.0.1:0\"\nproxy_protocol = \"v2\"\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\n",
            "t.toml",
        )
        .expect("parses");
        assert!(
            c.listen.is_empty(),
            "no default plain listener beside [[listener]]"
        );
        let built = crate::listeners::build(&c).expect("builds");
        assert_eq!(built[0].ws_path.as_deref(), Some("/mqtt"));
        assert!(built[1].proxy.is_some());
        let c = Config::parse("listen = [\"127.0.0.1:0\"]\n[[listener]]\nkind = \"ws\"\naddr = \"127.0.0.1:0\"\npath = \"/ws\"\n", "t.toml").expect("parses");
        assert_eq!(c.listen.len(), 1);
    }

    #[test]
    fn shipped_secure_example_parses() {
        // Its files are an operator's (/etc/ringmq/...): parsed here, not loaded.
        let text = include_str!("../../examples/secure.toml");
        let c: Config = toml::from_str(text).expect("examples/secure.toml parses");
        assert_eq!(c.listeners.len(), 3);
        assert!(c.listen.is_empty());
        c.overload.validate().expect("overload keys valid");
        let o = c
            .overload
            .resolve(&c.listener_bounds(), 100_000)
            .expect("overload resolves");
        assert_eq!(o.listener_max_connections, vec![0, 20_000, 0]);
        assert_eq!(o.max_connection_rate, 2000);
        c.auth.validate().expect("[auth] keys valid");
        c.acl.validate().expect("[acl] keys valid");
        assert!(c.auth.password_file.is_some() && c.acl.file.is_some());
        let jwt = c.auth.jwt.as_ref().expect("[auth.jwt]");
        assert!(jwt.jwks_file.is_some() && jwt.close_on_expiry);
        assert!(!c.auth.allow_anonymous_effective(true));
    }

    #[test]
    fn bad_listener_is_named() {
        let text = listener_error("[[listener]]\nkind = \"quic\"\naddr = \"127.0.0.1:0\"\n");
        assert!(text.contains("kind") && text.contains("quic"), "{text}");
        let text = listener_error("[[listener]]\nkind = \"tls\"\naddr = \"127.0.0.1:0\"\n");
        assert!(text.contains("listener[0].tls"), "{text}");
        let text = listener_error("[[listener]]\nkind = \"tls\"\naddr = \"127.0.0.1:0\"\n[listener.tls]\ncert_file = \"/nonexistent/c.pem\"\nkey_file = \"/nonexistent/k.pem\"\n");
        assert!(text.contains("listener[0].tls.cert_file"), "{text}");
        let text = listener_error(
            "[[listener]]\nkind = \"tcp\"\naddr = \"127.0.0.1:0\"\nproxy_protocol = \"v1\"\n",
        );
        assert!(text.contains("listener[0].trusted_proxies"), "{text}");
        let text = listener_error("[[listener]]\nkind = \"tcp\"\naddr = \"127.0.0.1:0\"\nproxy_protocol = \"v1\"\ntrusted_proxies = [\"10.0.0.0/40\"]\n");
        assert!(text.contains("listener[0].trusted_proxies[0]"), "{text}");
        let text = listener_error(
            "[[listener]]\nkind = \"tcp\"\naddr = \"127.0.0.1:0\"\npath = \"/mqtt\"\n",
        );
        assert!(text.contains("listener[0].path"), "{text}");
        let text = listener_error(
            "[[listener]]\nkind = \"tcp\"\naddr = \"127.0.0.1:0\"\nproxy = \"v1\"\n",
        );
        assert!(text.contains("proxy"), "{text}");
        let dir = std::env::temp_dir().join(format!("ringmq-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let bad = dir.join("bad.pem");
        std::fs::write(&bad, "not a pem\n").expect("write");
        let text = listener_error(&format!("[[listener]]\nkind = \"wss\"\naddr = \"127.0.0.1:0\"\n[listener.tls]\ncert_file = {:?}\nkey_file = {:?}\n", bad, bad));
        assert!(
            text.contains("listener[0].tls.cert_file") && text.contains("no PEM"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cluster_section_parses_and_is_checked() {
        let text = "[cluster]\nnode_id = 1\ngossip_listen = \"127.0.0.1:7946\"\npeer_listen = \"127.0.0.1:7947\"\nseeds = [\"127.0.0.1:7956\"]\nsecret_file = \"/etc/ringmq/cluster.key\"\n";
        let c = Config::parse(text, "t.toml").expect("cluster section parses");
        let cluster = c.cluster.expect("section kept");
        assert_eq!(cluster.node_id, 1);
        assert_eq!(cluster.seeds.len(), 1);
        assert!(Config::parse("", "t.toml")
            .expect("empty")
            .cluster
            .is_none());
        let typo = text.replace("seeds", "seed");
        let err = Config::parse(&typo, "t.toml").unwrap_err();
        assert!(format!("{err:#}").contains("seed"), "{err:#}");
        let zero = text.replace("node_id = 1", "node_id = 0");
        let err = Config::parse(&zero, "t.toml").unwrap_err();
        assert!(format!("{err:#}").contains("node_id"), "{err:#}");
    }

    #[test]
    fn auth_keys() {
        let c = Config::parse(EMBEDDED_DEFAULT, "embedded").expect("embedded");
        let setup = c.auth_setup(Path::new("."));
        assert!(!setup.is_active(), "the embedded default stays anonymous");
        let text = "[auth]\npassword_file = \"passwd\"\n[auth.jwt]\nsecret_file = \"s\"\n[acl]\nfile = \"acl\"\ndeny = [\"secret/#\"]\n";
        let c = Config::parse(text, "t.toml").expect("auth config parses");
        let setup = c.auth_setup(Path::new("/etc/ringmq"));
        assert!(setup.authenticates() && setup.uses_acl());
        assert!(!c.auth.allow_anonymous_effective(false));
        assert_eq!(c.subscribe_rules().deny, ["secret/#"]);
        let c = Config::parse("[auth]\nallow_anonymous = false\n", "t.toml").expect("parses");
        assert!(c.auth_setup(Path::new(".")).authenticates());
        let err = Config::parse("[auth]\npasword_file = \"p\"\n", "t.toml").unwrap_err();
        assert!(format!("{err:#}").contains("pasword_file"), "{err:#}");
        let err = Config::parse(
            "[auth.jwt]\nsecret_file = \"s\"\nalgorithms = [\"none\"]\n",
            "t.toml",
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("auth.jwt.algorithms"),
            "{err:#}"
        );
        let err = Config::parse("[acl]\nfile = \"\"\n", "t.toml").unwrap_err();
        assert!(format!("{err:#}").contains("acl.file"), "{err:#}");
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
