use super::*;

impl ShardState {
    // ----- the route table ------------------------------------------------------------------

    /// Applies a 0↔1 transition of this shard locally and tells every other shard.
    pub(super) fn change_route(
        &mut self,
        filter: Arc<str>,
        group: Option<Arc<str>>,
        present: bool,
    ) {
        let change = RouteChange {
            shard: self.id,
            filter,
            group,
            present,
            since: self.previous_turn_at,
        };
        self.apply_route(&change);
        for shard in 0..self.shard_count {
            if shard != self.id {
                self.send_to(shard, ShardMsg::Route(change.clone()));
            }
        }
    }

    /// Applies a route change from any shard (including this one).
    pub fn apply_route(&mut self, change: &RouteChange) {
        // Shard 0 sees every shard's changes (its own too): the node-level export follows them.
        self.export_route(change);
        // Local normal subscribers are found through `subs`; the route table only needs other
        // shards' interest (and every shard's shared groups, to pick one), which saves an entry
        // per filter.
        if change.group.is_none() && change.shard == self.id {
            return;
        }
        if change.present && change.group.is_none() {
            self.replay_recent(change);
        }
        let b = bit(change.shard);
        let entry = self
            .routes
            .get_or_insert_with(&change.filter, RouteEntry::default);
        if change.group.is_some() {
            entry.filter.get_or_insert_with(|| change.filter.clone());
        }
        match &change.group {
            None => {
                if change.present {
                    entry.shards |= b;
                } else {
                    entry.shards &= !b;
                }
            }
            Some(group) => {
                let pos = entry.groups.iter().position(|g| g.group == *group);
                match (pos, change.present) {
                    (Some(p), true) => entry.groups[p].shards |= b,
                    (None, true) => entry.groups.push(GroupRoute {
                        group: group.clone(),
                        shards: b,
                        next: Cell::new(0),
                    }),
                    (Some(p), false) => {
                        entry.groups[p].shards &= !b;
                        if entry.groups[p].shards == 0 {
                            entry.groups.remove(p);
                        }
                    }
                    (None, false) => {}
                }
            }
        }
        if entry.groups.is_empty() {
            entry.filter = None;
        }
        if entry.shards == 0 && entry.groups.is_empty() {
            self.routes.remove(&change.filter);
        }
    }

    /// Starts a barrier: every other shard acknowledges once it has applied what this shard sent
    /// it before. Returns None on a single-shard broker.
    pub fn start_barrier(&mut self, waiting: ConnId) -> Option<BarrierId> {
        if self.shard_count <= 1 {
            return None;
        }
        let barrier = BarrierId(self.next_barrier);
        self.next_barrier += 1;
        self.barriers
            .insert(barrier, (self.shard_count - 1, waiting));
        for shard in 0..self.shard_count {
            if shard != self.id {
                self.send_to(
                    shard,
                    ShardMsg::RouteBarrier {
                        from: self.id,
                        barrier: barrier.0,
                    },
                );
            }
        }
        Some(barrier)
    }

    /// One more shard acknowledged `barrier`; the waiting connection is queued once all did.
    pub fn ack_barrier(&mut self, barrier: BarrierId) {
        let Some((missing, conn)) = self.barriers.get_mut(&barrier) else {
            return; // its connection closed while waiting (see `forget_barrier`)
        };
        debug_assert!(*missing > 0, "more acks than shards for a barrier");
        *missing -= 1;
        if *missing == 0 {
            self.ready.push(*conn);
        }
    }

    /// Whether every shard acknowledged `barrier`; removes the entry when it did.
    pub fn barrier_done(&mut self, barrier: BarrierId) -> bool {
        match self.barriers.get(&barrier) {
            Some((0, _)) | None => {
                self.barriers.remove(&barrier);
                true
            }
            Some(_) => false,
        }
    }

    /// The connection waiting on `barrier` closed: its acks no longer matter.
    pub fn forget_barrier(&mut self, barrier: BarrierId) {
        self.barriers.remove(&barrier);
    }

    // ----- cross-shard sends ----------------------------------------------------------------

    /// Queues `msg` for shard `to`, flushed at the end of this loop turn. Returns false (and
    /// drops it) when that outbox is at its limit.
    pub fn send_to(&mut self, to: ShardId, msg: ShardMsg) -> bool {
        let limit = self.limits.cross_shard_outbox_len_max as usize;
        let Some(outbox) = self.outboxes.get_mut(usize::from(to)) else {
            return false;
        };
        // Route changes, barriers and hand-offs must never be dropped: only publishes are.
        let droppable = matches!(
            msg,
            ShardMsg::Publish { .. } | ShardMsg::Stats { .. } | ShardMsg::ClusterForward(_)
        );
        if droppable && outbox.len() >= limit {
            if let ShardMsg::Publish { message, .. }
            | ShardMsg::ClusterForward(crate::message::ClusterForward { message, .. }) = &msg
            {
                self.counters
                    .drop(message.publish.qos, DropReason::CrossShardFull);
            }
            return false;
        }
        outbox.push(msg);
        self.counters.cross_shard_sent += 1;
        true
    }
}

pub(super) fn pick_shard(mask: ShardMask, cursor: &Cell<u32>) -> Option<ShardId> {
    let count = mask.count_ones();
    if count == 0 {
        return None;
    }
    let n = cursor.get();
    cursor.set(n.wrapping_add(1));
    let mut skip = n % count;
    let mut m = mask;
    loop {
        let shard = m.trailing_zeros();
        if skip == 0 {
            return Some(shard as ShardId);
        }
        skip -= 1;
        m &= m - 1;
    }
}
