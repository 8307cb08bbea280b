use super::*;

impl ShardState {
    // ----- retained -------------------------------------------------------------------------

    /// Stores, replaces or (empty payload [MQTT-3.3.1-10]) clears a retained message.
    pub fn store_retained(&mut self, message: &Arc<Message>) {
        let topic = message.publish.topic.as_str();
        if message.publish.payload.is_empty() {
            self.retained.remove(topic);
            return;
        }
        if let Some(existing) = self.retained.get_mut(topic) {
            // Last writer wins across shards.
            if existing.0.received_at <= message.received_at {
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
            if self
                .retained
                .get(topic)
                .is_some_and(|r| r.0.received_at <= message.received_at)
            {
                self.retained.remove(topic);
            }
            return;
        }
        self.store_retained(message);
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
