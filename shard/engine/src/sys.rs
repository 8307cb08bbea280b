//! `$SYS/broker/...` statistics, refreshed every `Limits::sys_interval_secs` (the runtime calls
//! [`Engine::sys_tick`]). Every shard sends its figures to shard 0, which publishes the totals as
//! retained messages (so a new `$SYS/#` subscriber gets the latest at once, as with Mosquitto).

use std::time::Instant;

use bytes::Bytes;
use wire::QoS;

use crate::message::{ShardMsg, ShardStats};
use crate::Engine;

impl Engine {
    /// Sends this shard's figures to shard 0; on shard 0, publishes the totals.
    pub fn sys_tick(&mut self, now: Instant) {
        let state = &mut self.state;
        let stats = state.stats();
        let id = state.id;
        if id != 0 {
            state.send_to(0, ShardMsg::Stats { from: id, stats });
            return;
        }
        if let Some(own) = state.stats_by_shard.get_mut(0) {
            *own = stats;
        }
        let total = state
            .stats_by_shard
            .iter()
            .fold(ShardStats::default(), |mut t, s| {
                t.connections += s.connections;
                t.sessions_offline += s.sessions_offline;
                t.subscriptions += s.subscriptions;
                t.retained = t.retained.max(s.retained);
                t.messages_received += s.messages_received;
                t.messages_sent += s.messages_sent;
                t.messages_dropped += s.messages_dropped;
                t.bytes_received += s.bytes_received;
                t.bytes_sent += s.bytes_sent;
                t
            });
        let uptime = now.duration_since(state.started_at).as_secs();
        let shards = state.shard_count;
        let topics: [(&str, String); 12] = [
            (
                "$SYS/broker/version",
                format!("ringmq {}", env!("CARGO_PKG_VERSION")),
            ),
            ("$SYS/broker/uptime", format!("{uptime} seconds")),
            ("$SYS/broker/shards", shards.to_string()),
            (
                "$SYS/broker/clients/connected",
                total.connections.to_string(),
            ),
            (
                "$SYS/broker/clients/disconnected",
                total.sessions_offline.to_string(),
            ),
            (
                "$SYS/broker/subscriptions/count",
                total.subscriptions.to_string(),
            ),
            (
                "$SYS/broker/retained messages/count",
                total.retained.to_string(),
            ),
            (
                "$SYS/broker/messages/received",
                total.messages_received.to_string(),
            ),
            ("$SYS/broker/messages/sent", total.messages_sent.to_string()),
            (
                "$SYS/broker/messages/dropped",
                total.messages_dropped.to_string(),
            ),
            (
                "$SYS/broker/bytes/received",
                total.bytes_received.to_string(),
            ),
            ("$SYS/broker/bytes/sent", total.bytes_sent.to_string()),
        ];
        for (topic, value) in topics {
            self.publish_sys(topic, value, now);
        }
    }

    /// Publishes one `$SYS` figure as a retained QoS 0 message (for the runtime's own views,
    /// such as the cluster's, beside [`Engine::sys_tick`]'s). Call on shard 0.
    pub fn publish_sys(&mut self, topic: &str, value: String, now: Instant) {
        debug_assert!(topic.starts_with("$SYS/"));
        let published = self.publish_inbound(
            topic,
            QoS::AtMostOnce,
            true,
            Bytes::from(value),
            Vec::new(),
            now,
        );
        debug_assert!(published, "not a valid topic name: {topic}");
    }
}
