//! What to run: the scenario file format, the single-group plans the `conn`/`sub`/`pub` modes
//! build, topic templating, and the publish schedule (which the monitor also uses to compute
//! how many messages should have been sent by now).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::failover::{Backoff, BrokerEndpoint, BrokerPick, EndpointError};
use crate::transport::{EdgeSettings, TransportKind};

/// Largest payload the loadgen will build; keeps a per-thread zero buffer bounded.
pub const PAYLOAD_SIZE_MAX: usize = 16 * 1024 * 1024;
/// QoS 1/2 inflight window upper bound (packet identifiers are u16).
pub const INFLIGHT_MAX: u16 = 65_000;
/// Publishes a publisher encodes into one write when it is behind schedule or runs at max
/// rate, unless its group says fewer (`publishes_per_write_max = 1`: one write per message,
/// the way a vehicle sends).
pub const PUBLISHES_PER_WRITE_MAX: u32 = 64;
/// Longest reconnect backoff a scenario may ask for (one hour).
pub const RECONNECT_BACKOFF_MAX_MS: u64 = 3_600_000;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid scenario TOML: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("group {group}: {problem}")]
    Group { group: String, problem: String },
    #[error("scenario: {0}")]
    Invalid(String),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum MqttVersion {
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    #[serde(rename = "5")]
    V5,
}

impl std::str::FromStr for MqttVersion {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "3.1.1" | "4" | "311" => Ok(Self::V311),
            "5" | "5.0" => Ok(Self::V5),
            other => Err(format!("unsupported mqtt version {other:?} (3.1.1 or 5)")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Connect and hold (keepalive only).
    Conn,
    Sub,
    Pub,
}

/// Connection settings shared by every group of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionSettings {
    pub host: String,
    pub port: u16,
    pub mqtt_version: MqttVersion,
    pub keepalive_s: u16,
    pub clean_session: bool,
    /// MQTT 5 session expiry for persistent sessions (ignored with 3.1.1).
    pub session_expiry_s: u32,
    /// Connection attempts per second across the whole run; `None` = as fast as
    /// `conn_concurrency` allows.
    pub conn_rate: Option<f64>,
    /// Handshakes (TCP + CONNECT/CONNACK + SUBSCRIBE/SUBACK) in flight at once, whole run.
    pub conn_concurrency: usize,
    /// Uniform random extra delay before each connection attempt.
    pub start_jitter_ms: u64,
    pub connect_timeout_ms: u64,
    pub client_id_prefix: String,
    /// Added to every client index so several loadgen instances never collide.
    pub index_start: u64,
    /// Source addresses, bound before connect in round robin (past the ephemeral-port limit).
    pub ifaddr: Vec<IpAddr>,
    /// Several brokers (`host`, `host:port`, `[v6]:port`; `port` is the default port). Empty:
    /// the one broker `host`:`port`.
    pub brokers: Vec<String>,
    /// How each client chooses among `brokers` (first connection and every reconnect).
    pub broker_pick: BrokerPick,
    /// Reconnect after an unexpected loss (broker closed, reset, write error) until the run
    /// stops, instead of counting the client as dropped for the rest of the run. A failed
    /// first connection is not retried: it is a connection figure.
    pub reconnect: bool,
    /// Backoff before reconnect attempt k: jittered within [d/2, d], d = min(min·2^k, max).
    pub reconnect_backoff_min_ms: u64,
    pub reconnect_backoff_max_ms: u64,
    /// The layers under MQTT: `tcp`, `tls`, `ws` (MQTT over WebSocket) or `wss`.
    pub transport: TransportKind,
    /// PEM CA the broker's certificate is verified against (`tls`/`wss` need it).
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate and key for mTLS (both or neither); every client presents it.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Name sent as SNI and checked against the broker's certificate; default: each broker's
    /// host as written (an IP address is checked against the certificate's IP SANs).
    pub tls_server_name: Option<String>,
    /// HTTP path of the WebSocket upgrade (`ws`/`wss`).
    pub ws_path: String,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            mqtt_version: MqttVersion::V311,
            keepalive_s: 60,
            clean_session: true,
            session_expiry_s: 0,
            conn_rate: None,
            conn_concurrency: 1000,
            start_jitter_ms: 0,
            connect_timeout_ms: 10_000,
            client_id_prefix: "lg".into(),
            index_start: 0,
            ifaddr: Vec::new(),
            brokers: Vec::new(),
            broker_pick: BrokerPick::RoundRobin,
            reconnect: false,
            reconnect_backoff_min_ms: 100,
            reconnect_backoff_max_ms: 5_000,
            transport: TransportKind::Tcp,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_server_name: None,
            ws_path: "/mqtt".into(),
        }
    }
}

impl ConnectionSettings {
    /// Every broker of the run, in order (one entry when `brokers` is empty).
    pub fn broker_endpoints(&self) -> Result<Vec<BrokerEndpoint>, EndpointError> {
        if self.brokers.is_empty() {
            return Ok(vec![BrokerEndpoint {
                host: self.host.clone(),
                port: self.port,
            }]);
        }
        BrokerEndpoint::parse_list(self.brokers.iter().map(String::as_str), self.port)
    }

    /// The transport settings as [`crate::transport::Edge::new`] takes them.
    pub fn edge_settings(&self) -> EdgeSettings<'_> {
        EdgeSettings {
            kind: self.transport,
            ca_file: self.tls_ca_file.as_deref(),
            cert_file: self.tls_cert_file.as_deref(),
            key_file: self.tls_key_file.as_deref(),
            server_name: self.tls_server_name.as_deref(),
            ws_path: &self.ws_path,
        }
    }

    pub fn reconnect_backoff(&self) -> Backoff {
        Backoff {
            min: Duration::from_millis(self.reconnect_backoff_min_ms),
            max: Duration::from_millis(self.reconnect_backoff_max_ms),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunSettings {
    /// Publishing window (and holding time for connection-only runs). 0 = until every
    /// publisher reached its limit.
    pub duration_s: f64,
    /// After publishing stops, how long to wait at most for in-flight deliveries.
    pub drain_ms: u64,
    /// Publishing starts once every client is connected and subscribed, or after this.
    pub ready_timeout_s: f64,
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            duration_s: 10.0,
            drain_ms: 3000,
            ready_timeout_s: 120.0,
        }
    }
}

/// One group of identical clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub name: String,
    pub count: u64,
    pub role: Role,
    /// Publish topic template (`%i` global client index, `%c` client id, `%g` member index
    /// within the group).
    #[serde(default)]
    pub topic: Option<String>,
    /// Subscription filter template (same placeholders); may be `$share/group/filter`.
    #[serde(default)]
    pub filter: Option<String>,
    #[serde(default)]
    pub qos: u8,
    #[serde(default = "default_payload_size")]
    pub payload_size: usize,
    /// Per-client publish interval.
    #[serde(default)]
    pub interval_ms: Option<f64>,
    /// Total publish rate of the group (msgs/s); overrides `interval_ms`.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Total messages for the whole group; `None` = until the run duration ends.
    #[serde(default)]
    pub limit: Option<u64>,
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    #[serde(default)]
    pub retain: bool,
    /// Most publishes encoded into one write (1..=[`PUBLISHES_PER_WRITE_MAX`]); `None` = the
    /// maximum. 1 = one write syscall per message even when catching up.
    #[serde(default)]
    pub publishes_per_write_max: Option<u32>,
}

fn default_payload_size() -> usize {
    100
}
fn default_inflight() -> u16 {
    64
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub connection: ConnectionSettings,
    #[serde(default)]
    pub run: RunSettings,
    #[serde(rename = "group")]
    pub groups: Vec<GroupSpec>,
}

impl Scenario {
    pub fn from_file(path: &Path) -> Result<Self, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<Self, PlanError> {
        let scenario: Scenario = toml::from_str(text)?;
        scenario.validate()?;
        Ok(scenario)
    }

    pub fn validate(&self) -> Result<(), PlanError> {
        if self.groups.is_empty() {
            return Err(PlanError::Invalid("no [[group]]".into()));
        }
        if self.connection.conn_concurrency == 0 {
            return Err(PlanError::Invalid("conn_concurrency must be > 0".into()));
        }
        if matches!(self.connection.conn_rate, Some(rate) if !is_positive(rate)) {
            return Err(PlanError::Invalid("conn_rate must be > 0".into()));
        }
        let connection = &self.connection;
        if connection.reconnect_backoff_min_ms == 0
            || connection.reconnect_backoff_min_ms > connection.reconnect_backoff_max_ms
            || connection.reconnect_backoff_max_ms > RECONNECT_BACKOFF_MAX_MS
        {
            return Err(PlanError::Invalid(format!(
                "reconnect backoff must satisfy 0 < min <= max <= {RECONNECT_BACKOFF_MAX_MS} ms (got {},{})",
                connection.reconnect_backoff_min_ms, connection.reconnect_backoff_max_ms
            )));
        }
        connection.broker_endpoints()?;
        for group in &self.groups {
            let bad = |problem: &str| PlanError::Group {
                group: group.name.clone(),
                problem: problem.to_string(),
            };
            if group.qos > 2 {
                return Err(bad("qos must be 0, 1 or 2"));
            }
            match group.role {
                Role::Pub => {
                    let topic = group
                        .topic
                        .as_deref()
                        .ok_or_else(|| bad("pub needs topic"))?;
                    if topic.contains(['+', '#']) {
                        return Err(bad("publish topic must not contain wildcards"));
                    }
                    if group.payload_size > PAYLOAD_SIZE_MAX {
                        return Err(bad("payload_size too large"));
                    }
                    if group.inflight == 0 || group.inflight > INFLIGHT_MAX {
                        return Err(bad("inflight must be 1..=65000"));
                    }
                    if matches!(group.rate, Some(rate) if !is_positive(rate)) {
                        return Err(bad("rate must be > 0"));
                    }
                    if matches!(group.interval_ms, Some(ms) if !is_positive(ms)) {
                        return Err(bad("interval_ms must be > 0"));
                    }
                    if matches!(group.publishes_per_write_max, Some(n) if n == 0 || n > PUBLISHES_PER_WRITE_MAX)
                    {
                        return Err(bad("publishes_per_write_max must be 1..=64"));
                    }
                }
                Role::Sub => {
                    if group.filter.is_none() {
                        return Err(bad("sub needs filter"));
                    }
                }
                Role::Conn => {}
            }
        }
        Ok(())
    }

    pub fn total_clients(&self) -> u64 {
        self.groups.iter().map(|group| group.count).sum()
    }

    /// Multiply every publishing group's rate (rate steps in benchmarks).
    pub fn scale_rates(&mut self, factor: f64) {
        for group in &mut self.groups {
            if let Some(rate) = group.rate.as_mut() {
                *rate *= factor;
            }
            if let Some(interval) = group.interval_ms.as_mut() {
                *interval /= factor;
            }
        }
    }
}

/// False for zero, negatives and NaN.
fn is_positive(value: f64) -> bool {
    value.is_finite() && value > 0.0
}

/// Expands `%i` (global client index), `%c` (client id) and `%g` (index within the group).
pub fn expand_template(template: &str, global_index: u64, client_id: &str, member: u64) -> String {
    if !template.contains('%') {
        return template.to_string();
    }
    let mut out = String::with_capacity(template.len() + 16);
    let mut chars = template.chars();
    while let Some(ch) = chars.next() {
        if ch != '%' {
            out.push(ch);
            continue;
        }
        match chars.next() {
            Some('i') => out.push_str(&global_index.to_string()),
            Some('c') => out.push_str(client_id),
            Some('g') => out.push_str(&member.to_string()),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

pub fn client_id(prefix: &str, global_index: u64) -> String {
    format!("{prefix}-{global_index}")
}

/// Publish schedule of one member of a publishing group: open loop, members staggered
/// evenly over one interval so a group with a fixed total rate sends at a steady pace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// `None` = as fast as the connection and inflight window allow.
    pub interval: Option<Duration>,
    pub offset: Duration,
    /// Messages this member sends; `u64::MAX` = until the duration ends.
    pub limit: u64,
}

impl GroupSpec {
    /// Publishes encoded into one write at most.
    pub fn publishes_per_write(&self) -> u32 {
        self.publishes_per_write_max
            .unwrap_or(PUBLISHES_PER_WRITE_MAX)
            .clamp(1, PUBLISHES_PER_WRITE_MAX)
    }

    pub fn member_interval(&self) -> Option<Duration> {
        if let Some(rate) = self.rate {
            let count = self.count.max(1) as f64;
            return Some(Duration::from_secs_f64(count / rate));
        }
        self.interval_ms
            .map(|ms| Duration::from_secs_f64(ms / 1000.0))
    }

    pub fn schedule(&self, member: u64) -> Schedule {
        let interval = self.member_interval();
        let offset = match interval {
            Some(interval) if self.count > 0 => interval.mul_f64(member as f64 / self.count as f64),
            _ => Duration::ZERO,
        };
        let limit = match self.limit {
            Some(total) if self.count > 0 => {
                total / self.count + u64::from(member < total % self.count)
            }
            Some(_) => 0,
            None => u64::MAX,
        };
        Schedule {
            interval,
            offset,
            limit,
        }
    }
}

impl Schedule {
    /// Messages due by `elapsed` after publishing started (capped at `limit`).
    pub fn due_by(&self, elapsed: Duration) -> u64 {
        let Some(interval) = self.interval else {
            return 0;
        };
        if elapsed < self.offset {
            return 0;
        }
        let since = (elapsed - self.offset).as_nanos();
        let count = since / interval.as_nanos().max(1) + 1;
        u64::try_from(count).unwrap_or(u64::MAX).min(self.limit)
    }
}

/// How many deliveries one publish on a topic should produce, per subscriber group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    pub group: usize,
    /// Deliveries per publish if every member of `group` is subscribed; a shared group
    /// counts once.
    pub deliveries: u64,
    /// True when `deliveries` is "one per member" and should be scaled down by the
    /// members that actually subscribed.
    pub per_member: bool,
}

/// Answers "which subscriptions match this topic", built once per run from the plan.
#[derive(Debug, Default)]
pub struct Matcher {
    /// (group index, filter without `$share/g/`, shared, multiplicity)
    literal_filters: HashMap<String, Vec<(usize, bool, u64)>>,
    wildcard_filters: Vec<(usize, String, bool, u64)>,
}

/// Splits `$share/group/filter` into (filter, true); anything else into (filter, false).
pub fn split_shared(filter: &str) -> (&str, bool) {
    if let Some(rest) = filter.strip_prefix("$share/") {
        if let Some((_, inner)) = rest.split_once('/') {
            return (inner, true);
        }
    }
    (filter, false)
}

impl Matcher {
    pub fn new(scenario: &Scenario) -> Self {
        let mut matcher = Matcher::default();
        let mut global_index = scenario.connection.index_start;
        for (group_index, group) in scenario.groups.iter().enumerate() {
            let first_index = global_index;
            global_index += group.count;
            let (Role::Sub, Some(template)) = (group.role, group.filter.as_deref()) else {
                continue;
            };
            let mut instances: HashMap<String, u64> = HashMap::new();
            if template.contains('%') {
                for member in 0..group.count {
                    let index = first_index + member;
                    let id = client_id(&scenario.connection.client_id_prefix, index);
                    *instances
                        .entry(expand_template(template, index, &id, member))
                        .or_default() += 1;
                }
            } else {
                instances.insert(template.to_string(), group.count);
            }
            for (filter, members) in instances {
                let (inner, shared) = split_shared(&filter);
                let deliveries = if shared { 1 } else { members };
                if inner.contains(['+', '#']) {
                    matcher.wildcard_filters.push((
                        group_index,
                        inner.to_string(),
                        shared,
                        deliveries,
                    ));
                } else {
                    matcher
                        .literal_filters
                        .entry(inner.to_string())
                        .or_default()
                        .push((group_index, shared, deliveries));
                }
            }
        }
        matcher
    }

    pub fn fanout(&self, topic: &str) -> Vec<Fanout> {
        let mut out: Vec<Fanout> = Vec::new();
        let mut add = |group: usize, shared: bool, deliveries: u64| {
            if let Some(existing) = out.iter_mut().find(|f| f.group == group && !shared) {
                existing.deliveries += deliveries;
            } else {
                out.push(Fanout {
                    group,
                    deliveries,
                    per_member: !shared,
                });
            }
        };
        if let Some(entries) = self.literal_filters.get(topic) {
            for &(group, shared, deliveries) in entries {
                add(group, shared, deliveries);
            }
        }
        for (group, filter, shared, deliveries) in &self.wildcard_filters {
            if wire::topic::matches(filter, topic) {
                add(*group, *shared, *deliveries);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TELEMETRY: &str = r#"
        name = "telemetry"
        [connection]
        port = 18830
        conn_rate = 2000.0
        ifaddr = ["127.0.0.2", "127.0.0.3"]
        [run]
        duration_s = 5.0
        [[group]]
        name = "ingest"
        count = 3
        role = "sub"
        filter = "$share/ingest/vehicle/+/telemetry"
        [[group]]
        name = "vehicles"
        count = 300
        role = "pub"
        topic = "vehicle/%i/telemetry"
        rate = 1000.0
        [[group]]
        name = "idle"
        count = 700
        role = "conn"
    "#;

    #[test]
    fn parses_scenario_with_defaults() {
        let scenario = Scenario::from_toml(TELEMETRY).expect("valid scenario");
        assert_eq!(scenario.groups.len(), 3);
        assert_eq!(scenario.total_clients(), 1003);
        assert_eq!(scenario.connection.port, 18830);
        assert_eq!(scenario.connection.keepalive_s, 60);
        assert_eq!(scenario.connection.ifaddr.len(), 2);
        let vehicles = &scenario.groups[1];
        assert_eq!(vehicles.payload_size, 100);
        assert_eq!(vehicles.qos, 0);
        assert_eq!(vehicles.member_interval(), Some(Duration::from_millis(300)));
    }

    #[test]
    fn rejects_bad_scenarios() {
        assert!(Scenario::from_toml("[[group]]\nname='x'\ncount=1\nrole='pub'\n").is_err());
        assert!(Scenario::from_toml("[[group]]\nname='x'\ncount=1\nrole='sub'\n").is_err());
        assert!(
            Scenario::from_toml("[[group]]\nname='x'\ncount=1\nrole='pub'\ntopic='a/+'\n").is_err()
        );
        assert!(Scenario::from_toml("[[group]]\nname='x'\ncount=1\nrole='dance'\n").is_err());
        assert!(
            Scenario::from_toml("[[group]]\nname='x'\ncount=1\nrole='conn'\nbogus=1\n").is_err()
        );
        assert!(Scenario::from_toml("name='empty'\ngroup=[]\n").is_err());
    }

    #[test]
    fn ships_valid_scenarios() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).expect("scenarios dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|ext| ext == "toml") {
                Scenario::from_file(&path)
                    .unwrap_or_else(|err| panic!("{}: {err}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 5);
    }

    #[test]
    fn brokers_reconnect_and_per_write_settings_parse_and_validate() {
        let scenario = Scenario::from_toml(
            r#"
            [connection]
            port = 1900
            brokers = ["10.0.0.1", "10.0.0.2:1884", "[::1]:1885"]
            broker_pick = "random"
            reconnect = true
            reconnect_backoff_min_ms = 50
            reconnect_backoff_max_ms = 2000
            [[group]]
            name = "v"
            count = 2
            role = "pub"
            topic = "t/%i"
            publishes_per_write_max = 1
            "#,
        )
        .expect("valid");
        let endpoints = scenario.connection.broker_endpoints().expect("endpoints");
        let ports: Vec<u16> = endpoints.iter().map(|e| e.port).collect();
        assert_eq!(ports, vec![1900, 1884, 1885]);
        assert_eq!(scenario.connection.broker_pick, BrokerPick::Random);
        assert!(scenario.connection.reconnect);
        assert_eq!(
            scenario.connection.reconnect_backoff().max,
            Duration::from_secs(2)
        );
        assert_eq!(scenario.groups[0].publishes_per_write(), 1);

        // Defaults: one broker from host/port, the full batch, no reconnects.
        let plain = Scenario::from_toml(TELEMETRY).expect("valid");
        assert_eq!(
            plain.connection.broker_endpoints().expect("one"),
            vec![BrokerEndpoint {
                host: "127.0.0.1".into(),
                port: 18830
            }]
        );
        assert_eq!(
            plain.groups[1].publishes_per_write(),
            PUBLISHES_PER_WRITE_MAX
        );
        assert!(!plain.connection.reconnect);

        let group = "[[group]]\nname='x'\ncount=1\nrole='pub'\ntopic='t'\n";
        for bad in [
            "[connection]\nreconnect_backoff_min_ms = 0\n",
            "[connection]\nreconnect_backoff_min_ms = 500\nreconnect_backoff_max_ms = 100\n",
            "[connection]\nbrokers = ['host:notaport']\n",
            "[connection]\nbroker_pick = 'sideways'\n",
        ] {
            assert!(
                Scenario::from_toml(&format!("{bad}{group}")).is_err(),
                "{bad}"
            );
        }
        for per_write in [0, PUBLISHES_PER_WRITE_MAX + 1] {
            let text = format!("{group}publishes_per_write_max = {per_write}\n");
            assert!(Scenario::from_toml(&text).is_err(), "{per_write}");
        }
    }

    #[test]
    fn templates_expand() {
        assert_eq!(expand_template("v/%i/t", 42, "lg-42", 2), "v/42/t");
        assert_eq!(expand_template("c/%c/%g/%x%", 1, "id", 0), "c/id/0/%x%");
    }

    #[test]
    fn schedule_splits_limit_and_staggers() {
        let group = GroupSpec {
            name: "p".into(),
            count: 3,
            role: Role::Pub,
            topic: Some("t".into()),
            filter: None,
            qos: 0,
            payload_size: 100,
            interval_ms: None,
            rate: Some(30.0),
            limit: Some(10),
            inflight: 1,
            retain: false,
            publishes_per_write_max: None,
        };
        let limits: Vec<u64> = (0..3).map(|m| group.schedule(m).limit).collect();
        assert_eq!(limits, vec![4, 3, 3]);
        let second = group.schedule(1);
        assert_eq!(second.interval, Some(Duration::from_millis(100)));
        assert_eq!(second.due_by(Duration::ZERO), 0);
        assert_eq!(second.due_by(Duration::from_millis(34)), 1);
        assert_eq!(second.due_by(Duration::from_secs(10)), 3);
    }

    #[test]
    fn fanout_counts_shared_groups_once() {
        let scenario = Scenario::from_toml(TELEMETRY).expect("valid scenario");
        let matcher = Matcher::new(&scenario);
        let fanout = matcher.fanout("vehicle/7/telemetry");
        assert_eq!(
            fanout,
            vec![Fanout {
                group: 0,
                deliveries: 1,
                per_member: false
            }]
        );
        assert!(matcher.fanout("vehicle/7/other").is_empty());
    }

    #[test]
    fn fanout_counts_templated_and_broadcast_subscribers() {
        let scenario = Scenario::from_toml(
            r#"
            [[group]]
            name = "ota"
            count = 50
            role = "sub"
            filter = "ota/all"
            [[group]]
            name = "own"
            count = 10
            role = "sub"
            filter = "cmd/%i"
            "#,
        )
        .expect("valid");
        let matcher = Matcher::new(&scenario);
        assert_eq!(matcher.fanout("ota/all")[0].deliveries, 50);
        // The second group's members have global indices 50..60.
        assert_eq!(matcher.fanout("cmd/55")[0].deliveries, 1);
        assert!(matcher.fanout("cmd/5").is_empty());
    }
}
