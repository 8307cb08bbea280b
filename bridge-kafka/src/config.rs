//! `[bridge.kafka]` configuration: parsing (serde) and validation into compiled rules.

use std::collections::BTreeMap;
use std::fmt;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::BaseProducer;
use serde::Deserialize;

use crate::template::{is_valid_kafka_topic, Template, TemplateKind};
use crate::topic::{filter_depth, validate_filter};

/// Default QoS0 buffer bound (records held by the bridge while Kafka is slow or down).
pub const DEFAULT_BUFFER_MAX_MESSAGES: usize = 100_000;
/// Upper bound accepted for `buffer_max_messages`, so a typo cannot ask for unbounded memory.
pub const BUFFER_MAX_MESSAGES_LIMIT: usize = 10_000_000;
/// Default capacity of the shard→bridge channels (each of the QoS0 and the acknowledged one).
pub const DEFAULT_CHANNEL_CAPACITY: usize = 65_536;
/// Upper bound accepted for `channel_capacity`.
pub const CHANNEL_CAPACITY_LIMIT: usize = 4_194_304;

/// Settings the bridge owns itself; setting them in the pass-through tables is a configuration error
/// because the bridge would silently override them.
const PRODUCER_RESERVED: &[&str] = &["bootstrap.servers", "metadata.broker.list"];
const CONSUMER_RESERVED: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
];

/// A librdkafka setting value as written in TOML (strings, numbers and booleans are all accepted).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum SettingValue {
    Bool(bool),
    Integer(i64),
    Float(f64),
    String(String),
}

impl fmt::Display for SettingValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool(value) => write!(f, "{value}"),
            Self::Integer(value) => write!(f, "{value}"),
            Self::Float(value) => write!(f, "{value}"),
            Self::String(value) => f.write_str(value),
        }
    }
}

/// The broker's `[bridge.kafka]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// librdkafka producer settings passed through (acks, compression.type, linger.ms, ...).
    #[serde(default)]
    pub producer: BTreeMap<String, SettingValue>,
    /// librdkafka consumer settings passed through (session.timeout.ms, auto.offset.reset, ...).
    #[serde(default)]
    pub consumer: BTreeMap<String, SettingValue>,
    /// Bound on QoS0 (ack = "none") records held by the bridge; beyond it the oldest are dropped.
    #[serde(default = "default_buffer_max_messages")]
    pub buffer_max_messages: usize,
    /// Capacity of each shard→bridge channel; a full channel is reported to the shard by `try_send`.
    #[serde(default = "default_channel_capacity")]
    pub channel_capacity: usize,
    /// MQTT→Kafka rules, first match wins.
    #[serde(default, rename = "rule")]
    pub rules: Vec<OutboundRuleConfig>,
    /// Kafka→MQTT rules.
    #[serde(default)]
    pub inbound: Vec<InboundRuleConfig>,
}

fn default_buffer_max_messages() -> usize {
    DEFAULT_BUFFER_MAX_MESSAGES
}

fn default_channel_capacity() -> usize {
    DEFAULT_CHANNEL_CAPACITY
}

/// When an MQTT publisher is acknowledged for a bridged message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// Fire and forget: the shard acknowledges the publisher at once; records may be dropped under
    /// buffer pressure (counted and logged).
    #[default]
    None,
    /// The shard acknowledges a QoS1/2 publisher only after Kafka acknowledged the record.
    Kafka,
}

/// `[[bridge.kafka.rule]]`: MQTT→Kafka.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundRuleConfig {
    /// MQTT topic filter.
    pub filter: String,
    /// Kafka topic template: `{1}`, `{2}`... (topic levels) and `{client_id}`.
    pub kafka_topic: String,
    /// "client_id" (default), "topic" or "level:N".
    #[serde(default = "default_key")]
    pub key: String,
    #[serde(default)]
    pub ack: AckMode,
}

fn default_key() -> String {
    "client_id".to_owned()
}

/// `[[bridge.kafka.inbound]]`: Kafka→MQTT.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundRuleConfig {
    pub kafka_topic: String,
    pub group_id: String,
    /// MQTT topic template; `{key}` is the Kafka record key.
    pub mqtt_topic: String,
    #[serde(default)]
    pub qos: u8,
}

/// How the Kafka record key is derived from an MQTT publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    ClientId,
    Topic,
    /// 1-based topic level; a topic without that level produces a record without key.
    Level(usize),
}

impl KeyKind {
    /// Parses "client_id", "topic" or "level:N".
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "client_id" => Some(Self::ClientId),
            "topic" => Some(Self::Topic),
            other => other
                .strip_prefix("level:")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n > 0)
                .map(Self::Level),
        }
    }

    /// The key for a record published on `topic` by `client_id`.
    pub fn extract<'a>(&self, topic: &'a str, client_id: &'a str) -> Option<&'a str> {
        match self {
            Self::ClientId => Some(client_id),
            Self::Topic => Some(topic),
            Self::Level(level) => crate::topic::level(topic, *level),
        }
    }
}

/// A validated MQTT→Kafka rule.
#[derive(Debug, Clone)]
pub struct OutboundRule {
    pub filter: String,
    pub kafka_topic: Template,
    pub key: KeyKind,
    pub ack: AckMode,
}

/// A validated Kafka→MQTT rule.
#[derive(Debug, Clone)]
pub struct InboundRule {
    pub kafka_topic: String,
    pub group_id: String,
    pub mqtt_topic: Template,
    pub qos: u8,
}

/// A configuration error, naming the section, rule and field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bridge.kafka.{location}: {reason}")]
pub struct ConfigError {
    /// E.g. `rule[2].filter`, `producer."linger.ms"`, `buffer_max_messages`.
    pub location: String,
    pub reason: String,
}

impl ConfigError {
    fn new(location: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self {
            location: location.into(),
            reason: reason.to_string(),
        }
    }
}

/// The configuration after validation, as the bridge uses it.
#[derive(Debug, Clone)]
pub struct ValidatedConfig {
    pub raw: BridgeConfig,
    pub rules: Vec<OutboundRule>,
    pub inbound: Vec<InboundRule>,
}

impl BridgeConfig {
    /// Validates everything that can be checked without reaching Kafka: rule filters and templates,
    /// key kinds, and every librdkafka setting (each one is applied to a fresh librdkafka
    /// configuration, which rejects unknown names and bad values, then the clients are created
    /// once, which rejects inconsistent combinations). Creating a client does not connect.
    pub fn validate(&self) -> Result<ValidatedConfig, ConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::new("bootstrap_servers", "must not be empty"));
        }
        if self.buffer_max_messages == 0 || self.buffer_max_messages > BUFFER_MAX_MESSAGES_LIMIT {
            return Err(ConfigError::new(
                "buffer_max_messages",
                format!("must be between 1 and {BUFFER_MAX_MESSAGES_LIMIT}"),
            ));
        }
        if self.channel_capacity == 0 || self.channel_capacity > CHANNEL_CAPACITY_LIMIT {
            return Err(ConfigError::new(
                "channel_capacity",
                format!("must be between 1 and {CHANNEL_CAPACITY_LIMIT}"),
            ));
        }
        check_settings("producer", &self.producer, PRODUCER_RESERVED)?;
        check_settings("consumer", &self.consumer, CONSUMER_RESERVED)?;

        let rules = self
            .rules
            .iter()
            .enumerate()
            .map(|(index, rule)| compile_outbound(index, rule))
            .collect::<Result<Vec<_>, _>>()?;
        let inbound = self
            .inbound
            .iter()
            .enumerate()
            .map(|(index, rule)| compile_inbound(index, rule))
            .collect::<Result<Vec<_>, _>>()?;

        // Combination checks (e.g. enable.idempotence with acks=1) only happen at client creation.
        self.producer_client_config()
            .create::<BaseProducer>()
            .map_err(|error| ConfigError::new("producer", error))?;
        if let Some(rule) = inbound.first() {
            self.consumer_client_config(&rule.group_id)
                .create::<BaseConsumer>()
                .map_err(|error| ConfigError::new("consumer", error))?;
        }
        Ok(ValidatedConfig {
            raw: self.clone(),
            rules,
            inbound,
        })
    }

    /// The producer settings as the bridge applies them (pass-through table plus bootstrap).
    pub(crate) fn producer_client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        for (name, value) in &self.producer {
            config.set(name, value.to_string());
        }
        config
    }

    /// The consumer settings for one inbound rule's group.
    pub(crate) fn consumer_client_config(&self, group_id: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        for (name, value) in &self.consumer {
            config.set(name, value.to_string());
        }
        config
            .set("group.id", group_id)
            // Offsets are committed only once the broker accepted a message.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        config
    }
}

fn check_settings(
    section: &str,
    settings: &BTreeMap<String, SettingValue>,
    reserved: &[&str],
) -> Result<(), ConfigError> {
    for (name, value) in settings {
        let location = format!("{section}.\"{name}\"");
        if reserved.contains(&name.as_str()) {
            return Err(ConfigError::new(
                location,
                "is set by the bridge itself and must not be given here",
            ));
        }
        let mut single = ClientConfig::new();
        single.set(name, value.to_string());
        single
            .create_native_config()
            .map_err(|error| ConfigError::new(location, error))?;
    }
    Ok(())
}

fn compile_outbound(index: usize, rule: &OutboundRuleConfig) -> Result<OutboundRule, ConfigError> {
    let at = |field: &str| format!("rule[{index}].{field}");
    validate_filter(&rule.filter)
        .map_err(|error| ConfigError::new(at("filter"), format!("{:?}: {error}", rule.filter)))?;
    let kafka_topic =
        Template::parse(&rule.kafka_topic, TemplateKind::Outbound).map_err(|error| {
            ConfigError::new(
                at("kafka_topic"),
                format!("{:?}: {error}", rule.kafka_topic),
            )
        })?;
    let (depth, open_ended) = filter_depth(&rule.filter);
    if !open_ended && kafka_topic.max_level() > depth {
        return Err(ConfigError::new(
            at("kafka_topic"),
            format!(
                "{:?} uses level {{{}}} but filter {:?} matches only {depth} levels",
                rule.kafka_topic,
                kafka_topic.max_level(),
                rule.filter
            ),
        ));
    }
    if kafka_topic.is_literal() && !is_valid_kafka_topic(&rule.kafka_topic) {
        return Err(ConfigError::new(
            at("kafka_topic"),
            format!(
                "{:?} is not a legal Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)",
                rule.kafka_topic
            ),
        ));
    }
    let key = KeyKind::parse(&rule.key).ok_or_else(|| {
        ConfigError::new(
            at("key"),
            format!(
                "unknown key kind {:?}: expected \"client_id\", \"topic\" or \"level:N\" (N >= 1)",
                rule.key
            ),
        )
    })?;
    if let KeyKind::Level(level) = key {
        if !open_ended && level > depth {
            return Err(ConfigError::new(
                at("key"),
                format!(
                    "level {level} but filter {:?} matches only {depth} levels",
                    rule.filter
                ),
            ));
        }
    }
    Ok(OutboundRule {
        filter: rule.filter.clone(),
        kafka_topic,
        key,
        ack: rule.ack,
    })
}

fn compile_inbound(index: usize, rule: &InboundRuleConfig) -> Result<InboundRule, ConfigError> {
    let at = |field: &str| format!("inbound[{index}].{field}");
    if !is_valid_kafka_topic(&rule.kafka_topic) {
        return Err(ConfigError::new(
            at("kafka_topic"),
            format!("{:?} is not a legal Kafka topic name", rule.kafka_topic),
        ));
    }
    if rule.group_id.trim().is_empty() {
        return Err(ConfigError::new(at("group_id"), "must not be empty"));
    }
    let mqtt_topic = Template::parse(&rule.mqtt_topic, TemplateKind::Inbound).map_err(|error| {
        ConfigError::new(at("mqtt_topic"), format!("{:?}: {error}", rule.mqtt_topic))
    })?;
    let has_wildcard = mqtt_topic.parts().iter().any(|part| {
        matches!(part, crate::template::TemplatePart::Literal(text) if text.contains(['+', '#', '\0']))
    });
    if has_wildcard {
        // [MQTT-3.3.2-2] a PUBLISH topic name must not contain wildcards.
        return Err(ConfigError::new(
            at("mqtt_topic"),
            format!("{:?} must not contain '+', '#' or U+0000", rule.mqtt_topic),
        ));
    }
    if rule.qos > 2 {
        return Err(ConfigError::new(
            at("qos"),
            format!("{} is not a QoS (0, 1 or 2)", rule.qos),
        ));
    }
    Ok(InboundRule {
        kafka_topic: rule.kafka_topic.clone(),
        group_id: rule.group_id.clone(),
        mqtt_topic,
        qos: rule.qos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The broker's file nests the section as `[bridge.kafka]`.
    #[derive(Deserialize)]
    struct File {
        bridge: Bridge,
    }
    #[derive(Deserialize)]
    struct Bridge {
        kafka: BridgeConfig,
    }

    fn parse(text: &str) -> Result<BridgeConfig, toml::de::Error> {
        toml::from_str::<File>(text).map(|file| file.bridge.kafka)
    }

    const BASE: &str = r#"
[bridge.kafka]
bootstrap_servers = "127.0.0.1:9092"
buffer_max_messages = 5000
[bridge.kafka.producer]
acks = "all"
"linger.ms" = 5
"enable.idempotence" = true
"compression.type" = "lz4"
[[bridge.kafka.rule]]
filter = "vehicle/+/telemetry"
kafka_topic = "telemetry"
key = "client_id"
[[bridge.kafka.rule]]
filter = "vehicle/+/alarm/#"
kafka_topic = "alarm.{2}"
key = "level:2"
ack = "kafka"
[[bridge.kafka.inbound]]
kafka_topic = "commands"
group_id = "ringmq"
mqtt_topic = "vehicle/{key}/command"
qos = 1
"#;

    fn error_of(text: &str) -> ConfigError {
        match parse(text).expect("parses").validate() {
            Ok(_) => panic!("validation should fail"),
            Err(error) => error,
        }
    }

    #[test]
    fn full_example_validates() {
        let config = parse(BASE).expect("parses");
        assert_eq!(config.buffer_max_messages, 5000);
        assert_eq!(config.channel_capacity, DEFAULT_CHANNEL_CAPACITY);
        assert_eq!(
            config.producer.get("linger.ms"),
            Some(&SettingValue::Integer(5))
        );
        let validated = config.validate().expect("valid");
        assert_eq!(validated.rules.len(), 2);
        assert_eq!(validated.rules[0].key, KeyKind::ClientId);
        assert_eq!(validated.rules[0].ack, AckMode::None);
        assert_eq!(validated.rules[1].key, KeyKind::Level(2));
        assert_eq!(validated.rules[1].ack, AckMode::Kafka);
        assert_eq!(validated.inbound[0].qos, 1);
    }

    #[test]
    fn defaults() {
        let config = parse(
            "[bridge.kafka]\nbootstrap_servers = \"k:9092\"\n[[bridge.kafka.rule]]\nfilter = \"a/#\"\nkafka_topic = \"a\"\n",
        )
        .expect("parses");
        assert_eq!(config.buffer_max_messages, DEFAULT_BUFFER_MAX_MESSAGES);
        assert_eq!(config.rules[0].key, "client_id");
        assert_eq!(config.rules[0].ack, AckMode::None);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn unknown_field_is_rejected_by_name() {
        let error =
            parse("[bridge.kafka]\nbootstrap_servers = \"k:9092\"\nbufer_max_messages = 1\n")
                .expect_err("unknown field");
        assert!(error.to_string().contains("bufer_max_messages"), "{error}");
        let error = parse(
            "[bridge.kafka]\nbootstrap_servers = \"k\"\n[[bridge.kafka.rule]]\nfilter = \"a\"\nkafka_topic = \"a\"\nakc = \"kafka\"\n",
        )
        .expect_err("unknown rule field");
        assert!(error.to_string().contains("akc"), "{error}");
    }

    #[test]
    fn unknown_ack_mode_is_rejected() {
        let error =
            parse(&BASE.replace("ack = \"kafka\"", "ack = \"always\"")).expect_err("bad ack");
        assert!(error.to_string().contains("always"), "{error}");
    }

    #[test]
    fn bad_filter_names_the_rule() {
        let error = error_of(&BASE.replace("vehicle/+/alarm/#", "vehicle/#/alarm"));
        assert_eq!(error.location, "rule[1].filter");
        assert!(error.to_string().starts_with("bridge.kafka.rule[1].filter"));
    }

    #[test]
    fn unknown_key_kind_names_the_rule() {
        let error = error_of(&BASE.replace("key = \"client_id\"", "key = \"vin\""));
        assert_eq!(error.location, "rule[0].key");
        assert!(error.reason.contains("\"vin\""), "{error}");
        let error = error_of(&BASE.replace("key = \"client_id\"", "key = \"level:0\""));
        assert_eq!(error.location, "rule[0].key");
        let error = error_of(&BASE.replace("key = \"client_id\"", "key = \"level:4\""));
        assert_eq!(error.location, "rule[0].key");
    }

    #[test]
    fn template_beyond_filter_depth_is_rejected() {
        let error =
            error_of(&BASE.replace("kafka_topic = \"telemetry\"", "kafka_topic = \"t.{4}\""));
        assert_eq!(error.location, "rule[0].kafka_topic");
        // With '#' deeper levels may exist.
        assert!(parse(&BASE.replace("alarm.{2}", "alarm.{9}"))
            .expect("parses")
            .validate()
            .is_ok());
    }

    #[test]
    fn illegal_kafka_topic_is_rejected() {
        let error = error_of(&BASE.replace(
            "kafka_topic = \"telemetry\"",
            "kafka_topic = \"tele/metry\"",
        ));
        assert_eq!(error.location, "rule[0].kafka_topic");
        let error =
            error_of(&BASE.replace("kafka_topic = \"telemetry\"", "kafka_topic = \"t{x}\""));
        assert_eq!(error.location, "rule[0].kafka_topic");
    }

    #[test]
    fn unknown_librdkafka_setting_names_it() {
        let error = error_of(&BASE.replace("acks = \"all\"", "ackz = \"all\""));
        assert_eq!(error.location, "producer.\"ackz\"");
        let error = error_of(&BASE.replace("\"linger.ms\" = 5", "\"linger.ms\" = \"soon\""));
        assert_eq!(error.location, "producer.\"linger.ms\"");
        let error = error_of(&format!(
            "{BASE}[bridge.kafka.consumer]\n\"no.such.thing\" = 1\n"
        ));
        assert_eq!(error.location, "consumer.\"no.such.thing\"");
    }

    #[test]
    fn reserved_settings_are_rejected() {
        let error = error_of(&format!(
            "{BASE}[bridge.kafka.consumer]\n\"group.id\" = \"x\"\n"
        ));
        assert_eq!(error.location, "consumer.\"group.id\"");
        let error = error_of(&BASE.replace("acks = \"all\"", "\"bootstrap.servers\" = \"x:1\""));
        assert_eq!(error.location, "producer.\"bootstrap.servers\"");
    }

    #[test]
    fn inconsistent_producer_settings_are_rejected() {
        // Idempotence requires acks=all; only client creation catches the combination.
        let error = error_of(&BASE.replace("acks = \"all\"", "acks = 1"));
        assert_eq!(error.location, "producer");
    }

    #[test]
    fn inbound_errors_name_the_field() {
        let error = error_of(&BASE.replace("qos = 1", "qos = 3"));
        assert_eq!(error.location, "inbound[0].qos");
        let error = error_of(&BASE.replace("vehicle/{key}/command", "vehicle/+/{key}"));
        assert_eq!(error.location, "inbound[0].mqtt_topic");
        let error = error_of(&BASE.replace("vehicle/{key}/command", "vehicle/{client_id}"));
        assert_eq!(error.location, "inbound[0].mqtt_topic");
        let error = error_of(&BASE.replace("group_id = \"ringmq\"", "group_id = \"\""));
        assert_eq!(error.location, "inbound[0].group_id");
        let error = error_of(&BASE.replace("kafka_topic = \"commands\"", "kafka_topic = \"a b\""));
        assert_eq!(error.location, "inbound[0].kafka_topic");
    }

    #[test]
    fn buffer_bounds() {
        let error =
            error_of(&BASE.replace("buffer_max_messages = 5000", "buffer_max_messages = 0"));
        assert_eq!(error.location, "buffer_max_messages");
    }

    #[test]
    fn key_extraction() {
        let topic = "vehicle/v42/telemetry";
        assert_eq!(KeyKind::ClientId.extract(topic, "car"), Some("car"));
        assert_eq!(KeyKind::Topic.extract(topic, "car"), Some(topic));
        assert_eq!(KeyKind::Level(2).extract(topic, "car"), Some("v42"));
        assert_eq!(KeyKind::Level(5).extract(topic, "car"), None);
        assert_eq!(KeyKind::parse("level:3"), Some(KeyKind::Level(3)));
        assert_eq!(KeyKind::parse("level:"), None);
        assert_eq!(KeyKind::parse("level:x"), None);
    }
}
