use super::*;

/// Orders retained updates of one topic the same way on every shard: by the turn they were
/// accepted in, then by the shard that accepted them. Updates with equal keys come from one shard
/// and one turn, and every shard applies those in the same (FIFO) order, so the later applied
/// wins a tie. Messages with no publisher ($SYS, Kafka) count as shard 0's.
pub type RetainedOrder = (Instant, ShardId);

fn order_of(message: &Message) -> RetainedOrder {
    (message.received_at, message.origin.map_or(0, |k| k.shard))
}

impl ShardState {
    // ----- retained -------------------------------------------------------------------------

    /// Stores, replaces or (empty payload [MQTT-3.3.1-10]) clears a retained message.
    pub fn store_retained(&mut self, message: &Arc<Message>) {
        let topic = message.publish.topic.as_str();
        if message.publish.payload.is_empty() {
            self.retained.remove(topic);
            self.remember_clear(topic, order_of(message));
            return;
        }
        // A set ordered before a clear seen here lost to it.
        if let Some(&cleared) = self.retained_cleared.get(topic) {
            if cleared > order_of(message) {
                return;
            }
            self.retained_cleared.remove(topic);
        }
        if let Some(existing) = self.retained.get_mut(topic) {
            // Last writer wins across shards.
            if order_of(&existing.0) <= order_of(message) {
                *existing = Retained(Arc::new(message.compacted()));
            }
            return;
        }
        if self.retained.len() >= self.limits.retained_max as usize {
            self.counters
                .drop(message.publish.qos, DropReason::QueueFull);
            self.counters.retained_refused += 1;
            return;
        }
        self.retained
            .insert(topic, Retained(Arc::new(message.compacted())));
    }

    /// Applies a retained update from another shard.
    pub fn apply_retain(&mut self, message: &Arc<Message>) {
        let topic = message.publish.topic.as_str();
        if message.publish.payload.is_empty() {
            let newer = self
                .retained
                .get(topic)
                .is_some_and(|r| order_of(&r.0) > order_of(message));
            if !newer {
                self.retained.remove(topic);
                self.remember_clear(topic, order_of(message));
            }
            return;
        }
        self.store_retained(message);
    }

    /// Records that `topic` was cleared by an update ordered `at`, within
    /// [`RETAINED_TOMBSTONES_MAX`].
    fn remember_clear(&mut self, topic: &str, at: RetainedOrder) {
        let cleared = &mut self.retained_cleared;
        if cleared.len() >= RETAINED_TOMBSTONES_MAX {
            cleared.retain(|_, t| at.0.saturating_duration_since(t.0) < RETAINED_TOMBSTONE_KEEP);
        }
        if cleared.len() < RETAINED_TOMBSTONES_MAX || cleared.contains_key(topic) {
            let entry = cleared.entry(topic.into()).or_insert(at);
            *entry = (*entry).max(at);
        }
    }

    /// A snapshot of this shard's figures for `$SYS`.
    pub fn stats(&self) -> ShardStats {
        ShardStats {
            connections: u64::from(self.connections),
            sessions_offline: self
                .sessions_total()
                .saturating_sub(u64::from(self.connections)),
            subscriptions: self.subscription_count(),
            retained: self.retained_count(),
            messages_received: self.counters.messages_received.iter().sum(),
            messages_sent: self.counters.messages_sent.iter().sum(),
            messages_dropped: self.counters.dropped_total(),
            bytes_received: self.counters.bytes_received,
            bytes_sent: self.counters.bytes_sent,
        }
    }
}
