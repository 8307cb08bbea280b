//! Per-shard limits and behaviour switches, read from the broker's TOML `[mqtt]` and `[limits]`
//! sections. Every bound the shard enforces is named here, with its overflow policy.

use serde::Deserialize;

/// MQTT behaviour and limits every shard applies. All fields have defaults, so an empty config file
/// (or none) is a working broker.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest whole packet accepted from a client; bigger ones close the connection (v5: 0x95).
    /// Announced to v5 clients as Maximum Packet Size.
    pub max_packet_size_bytes: u32,
    /// How many QoS 1/2 publishes a client may have unacknowledged towards us (v5 Receive Maximum).
    /// Exceeding it is a protocol error: DISCONNECT 0x93.
    pub receive_maximum: u16,
    /// How many QoS 1/2 deliveries we keep in flight to a client that did not state a Receive
    /// Maximum (v3.x clients, v5 without the property). The rest wait in the session queue.
    pub inflight_max: u16,
    /// Messages a session may have waiting (online: not yet written; offline: QoS 1/2 stored).
    /// Overflow policy: QoS 0 beyond the limit is dropped (`reason="queue_full"`); QoS 1/2 beyond the
    /// limit is dropped too and counted the same way (Mosquitto and EMQX do the same) so a dead
    /// consumer can never grow the broker without bound.
    pub session_queue_len_max: u32,
    /// Whether offline persistent sessions also queue QoS 0 messages (Mosquitto's
    /// `queue_qos0_messages`). Off by default, as in Mosquitto.
    pub queue_qos0_offline: bool,
    /// Largest keepalive a client may ask for; a larger one is lowered and, for v5, announced as
    /// Server Keep Alive. 0 = no limit. Clients asking for 0 (no keepalive) get this value when set.
    pub keepalive_max_secs: u16,
    /// Topic aliases a v5 client may use towards us (announced as Topic Alias Maximum).
    pub topic_alias_maximum: u16,
    /// Upper bound on a session's expiry interval; also the expiry given to v3.1.1 persistent sessions
    /// (which have no expiry of their own). Seconds.
    pub session_expiry_max_secs: u32,
    /// Retained messages kept per shard (each shard holds the whole retained set). New topics beyond
    /// this are not retained (counted as `reason="retained_full"`); replacing or clearing always works.
    pub retained_max: u32,
    /// Retained messages delivered to one subscriber per loop turn, so a wildcard over a huge
    /// retained set never stalls the shard.
    pub retained_slice_len: u16,
    /// Whether a v3.1.1 client may connect with an empty client id and clean session (it is then
    /// assigned one). v5 clients always may (Assigned Client Identifier).
    pub allow_empty_client_id: bool,
    /// Seconds between `$SYS/broker/...` refreshes. 0 disables `$SYS`.
    pub sys_interval_secs: u32,
    /// Messages one shard may have waiting for another shard's channel (beyond the channel's own
    /// capacity). Overflow: the message is dropped for that shard and counted
    /// (`reason="cross_shard_full"`).
    pub cross_shard_outbox_len_max: u32,
    /// Connections one shard accepts; beyond it new connections are refused (v5: CONNACK 0x97 Quota
    /// exceeded). 0 = bounded only by the process's open-file limit.
    pub connections_per_shard_max: u32,
    /// Time a new TCP connection has to send CONNECT before it is closed.
    pub connect_timeout_secs: u16,
    /// Sessions (online and offline) one shard holds. A CONNECT that would create one more is
    /// refused (v5 CONNACK 0x97 Quota exceeded, 3.1.1 return code 3 Server unavailable) and
    /// counted (`ringmq_sessions_refused_total`). 0 = no limit but memory.
    pub sessions_per_shard_max: u32,
    /// Subscriptions one session may hold. A SUBSCRIBE filter beyond it is refused in its SUBACK
    /// (v5 0x97 Quota exceeded, 3.1.1 0x80) and counted (`ringmq_subscriptions_over_limit_total`).
    pub subscriptions_per_session_max: u32,
    /// No longer used: idle connections cost only their session since the io_uring data plane
    /// (there is nothing to park). Still accepted so existing configuration files load.
    pub park_after_idle_secs: u32,
    /// Overload protection (connection bounds, rates, flapping, bans). Not a `[limits]` key: the
    /// broker fills it from its own `[overload]` section; every protection is off by default here.
    #[serde(skip)]
    pub overload: crate::admission::Overload,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_packet_size_bytes: 1024 * 1024,
            receive_maximum: 128,
            inflight_max: 32,
            session_queue_len_max: 1000,
            queue_qos0_offline: false,
            keepalive_max_secs: 0,
            topic_alias_maximum: 64,
            session_expiry_max_secs: 7 * 24 * 3600,
            retained_max: 1_000_000,
            retained_slice_len: 256,
            allow_empty_client_id: true,
            sys_interval_secs: 10,
            cross_shard_outbox_len_max: 65_536,
            connections_per_shard_max: 0,
            connect_timeout_secs: 10,
            sessions_per_shard_max: 0,
            subscriptions_per_session_max: 1024,
            park_after_idle_secs: 0,
            overload: crate::admission::Overload::default(),
        }
    }
}

impl Limits {
    /// Rejects combinations that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        use crate::ConfigError::Invalid;
        if self.max_packet_size_bytes < 64 {
            return Err(Invalid {
                field: "limits.max_packet_size_bytes",
                reason: "must be at least 64 bytes".into(),
            });
        }
        if self.max_packet_size_bytes > 268_435_460 {
            return Err(Invalid {
                field: "limits.max_packet_size_bytes",
                reason: "MQTT packets cannot exceed 268435460 bytes".into(),
            });
        }
        if self.receive_maximum == 0 {
            return Err(Invalid {
                field: "limits.receive_maximum",
                reason: "must be at least 1".into(),
            });
        }
        if self.inflight_max == 0 {
            return Err(Invalid {
                field: "limits.inflight_max",
                reason: "must be at least 1".into(),
            });
        }
        if self.session_queue_len_max == 0 {
            return Err(Invalid {
                field: "limits.session_queue_len_max",
                reason: "must be at least 1".into(),
            });
        }
        if self.retained_slice_len == 0 {
            return Err(Invalid {
                field: "limits.retained_slice_len",
                reason: "must be at least 1".into(),
            });
        }
        if self.subscriptions_per_session_max == 0 {
            return Err(Invalid {
                field: "limits.subscriptions_per_session_max",
                reason: "must be at least 1".into(),
            });
        }
        if self.connect_timeout_secs == 0 {
            return Err(Invalid {
                field: "limits.connect_timeout_secs",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// The built-in subscription authorization rules (the full ACL system is a later issue; this is
/// the hook's default implementation).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SubscribeRules {
    /// Topic filters no client may subscribe to. A SUBSCRIBE filter is refused (SUBACK 0x80 for
    /// 3.1.1, 0x87 Not authorized for 5.0) when it equals a rule or a rule matches it level by level
    /// (so `secret/#` refuses `secret/a` and `secret/+`).
    pub deny: Vec<String>,
}

/// The subscription authorization hook every shard calls before adding a subscription. A refusal
/// becomes SUBACK 0x80 (3.1.1) or 0x87 Not authorized (5.0). [`SubscribeRules`] is the built-in
/// implementation; the ACL system plugs in here.
pub trait SubscribeAuthorizer: Send + Sync + 'static {
    /// `filter` is the topic filter without any `$share/group/` prefix; `full_filter` is as sent.
    fn may_subscribe(&self, client_id: &str, filter: &str, full_filter: &str) -> bool;
}

impl SubscribeAuthorizer for SubscribeRules {
    fn may_subscribe(&self, _client_id: &str, filter: &str, full_filter: &str) -> bool {
        let denied = |f: &str| {
            self.deny
                .iter()
                .any(|rule| rule == f || wire::topic::matches(rule, f))
        };
        !(denied(filter) || denied(full_filter))
    }
}

impl SubscribeRules {
    pub fn validate(&self) -> Result<(), crate::ConfigError> {
        for (index, rule) in self.deny.iter().enumerate() {
            if let Err(err) = wire::topic::validate_filter(rule) {
                return Err(crate::ConfigError::Invalid {
                    field: "acl.deny",
                    reason: format!("rule {index} ({rule:?}) is not a valid topic filter: {err}"),
                });
            }
        }
        Ok(())
    }
}
