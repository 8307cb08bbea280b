use super::routes::pick_shard;
use super::*;

use crate::message::GroupPick;

/// What [`ShardState::deliver_local_counted`] did.
struct LocalDelivery {
    /// Filters with subscribers and shared picks that matched here.
    matched: usize,
    /// Sessions that took the message.
    delivered: usize,
}

/// Several overlapping subscriptions of one session merged into one delivery: the highest QoS,
/// retain-as-published if any asked, every subscription identifier, no-local only if all asked.
pub type Merged = (QoS, bool, SmallVec<[u32; 1]>, bool);

/// Publishes accepted on this shard that are kept for replay to a shard whose subscription
/// arrives after them (see `RouteChange::since`): at most this many...
pub const RECENT_PUBLISHES_MAX: usize = 4096;
/// ...and at most this old. Covers the cross-shard channel's latency with a wide margin.
pub const RECENT_PUBLISH_WINDOW: Duration = Duration::from_millis(200);

/// A publish accepted here, and the shards it was forwarded to for normal subscribers.
#[derive(Debug)]
pub struct RecentPublish {
    pub message: Arc<Message>,
    pub forwarded: ShardMask,
}

impl ShardState {
    // ----- publishing -----------------------------------------------------------------------

    /// Remembers a publish for [`ShardState::replay_recent`], dropping the oldest beyond the
    /// bounds.
    fn remember(&mut self, message: &Arc<Message>, forwarded: ShardMask, now: Instant) {
        while self.recent.len() >= RECENT_PUBLISHES_MAX
            || self.recent.front().is_some_and(|r| {
                now.saturating_duration_since(r.message.received_at) > RECENT_PUBLISH_WINDOW
            })
        {
            self.recent.pop_front();
        }
        self.recent.push_back(RecentPublish {
            message: message.clone(),
            forwarded,
        });
    }

    /// A connection handed to this shard subscribed (`filter`, not shared) with input that
    /// arrived at `since` on the accepting shard: publishes accepted here after that, before the
    /// subscription existed, go to this session alone (the others that match already got them).
    pub(super) fn replay_local(
        &mut self,
        slot: u32,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
        since: Instant,
    ) {
        let owed: SmallVec<[Arc<Message>; 4]> = self
            .recent
            .iter()
            .filter(|r| {
                !r.message.publish.retain
                    && r.message.received_at > since
                    && wire::topic::matches(filter, r.message.publish.topic.as_str())
            })
            .map(|r| r.message.clone())
            .collect();
        for message in owed {
            self.counters.publishes_replayed += 1;
            let mut frames = FrameCache::default();
            self.sink().enqueue(
                slot,
                &message,
                options.qos,
                options.retain_as_published,
                options.no_local,
                id.into_iter().collect(),
                &mut frames,
            );
        }
    }

    /// Shard `change.shard` now has a subscriber for `change.filter`, since `change.since`.
    /// Publishes accepted here at or after that time that matched it but were not forwarded to
    /// that shard (the route had not arrived yet) are forwarded now.
    ///
    /// Retained ones too: that shard's store may have had no copy yet when the subscription
    /// scanned it (the `ShardMsg::Retain` was in flight), and then nothing else delivers them.
    /// When the store did have it, the subscriber still owes it from that scan while its SUBACK
    /// waits for this shard's `RouteAck` (which follows this replay), and `Sink::enqueue` skips
    /// the copy, so it arrives once either way.
    pub(super) fn replay_recent(&mut self, change: &RouteChange) {
        let b = bit(change.shard);
        let mut owed: SmallVec<[Arc<Message>; 4]> = SmallVec::new();
        for r in self.recent.iter_mut() {
            if r.forwarded & b == 0
                && r.message.received_at > change.since
                && wire::topic::matches(&change.filter, r.message.publish.topic.as_str())
            {
                r.forwarded |= b;
                owed.push(r.message.clone());
            }
        }
        for message in owed {
            self.counters.publishes_replayed += 1;
            self.send_to(
                change.shard,
                ShardMsg::Publish {
                    message,
                    normal: true,
                    shared: SmallVec::new(),
                },
            );
        }
    }

    /// Routes a message accepted on this shard: retained store, local subscribers, other shards.
    /// Returns the number of subscriptions matched here plus shards it was sent to (0 = no
    /// matching subscribers, for v5 PUBACK 0x10).
    pub fn publish(&mut self, message: Arc<Message>, now: Instant) -> usize {
        self.route_publish(message, None, now)
    }

    /// [`ShardState::publish`]. `from_peer` is set for a publish a peer node forwarded: it goes
    /// to local normal subscribers and only to the shared groups the peer picked this node for,
    /// and never to a peer again (it crosses one peer link at most).
    pub(super) fn route_publish(
        &mut self,
        message: Arc<Message>,
        from_peer: Option<&[GroupPick]>,
        now: Instant,
    ) -> usize {
        if message.publish.retain {
            if from_peer.is_some() {
                // A peer's clear may be older than what this node stored since (last writer
                // wins by the origin's time).
                self.apply_retain(&message);
            } else {
                self.store_retained(&message);
            }
            for shard in 0..self.shard_count {
                if shard != self.id {
                    self.send_to(shard, ShardMsg::Retain(message.clone()));
                }
            }
        }
        let topic = message.publish.topic.clone();
        // Remote interest and shared-group picks from the route table.
        let me = self.id;
        let mut remote: ShardMask = 0;
        let mut picks: SmallVec<[(ShardId, SharedPick); 2]> = SmallVec::new();
        self.routes.for_each_match(topic.as_str(), |entry| {
            remote |= entry.shards & !bit(me);
            for g in &entry.groups {
                if let (Some(named), Some(filter)) = (from_peer, &entry.filter) {
                    if !named.iter().any(|(f, n)| f == filter && *n == g.group) {
                        continue;
                    }
                }
                if let Some(shard) = pick_shard(g.shards, &g.next) {
                    if let Some(filter) = &entry.filter {
                        picks.push((
                            shard,
                            SharedPick {
                                filter: filter.clone(),
                                group: g.group.clone(),
                                hops: 0,
                            },
                        ));
                    }
                }
            }
        });
        let mut matched = 0usize;
        let mut local_picks: SmallVec<[SharedPick; 1]> = SmallVec::new();
        for shard in 0..self.shard_count {
            let normal = remote & bit(shard) != 0;
            let mut shared: SmallVec<[SharedPick; 1]> = SmallVec::new();
            for (s, pick) in picks.iter() {
                if *s == shard {
                    shared.push(pick.clone());
                }
            }
            if shard == me {
                local_picks = shared;
                continue;
            }
            if normal || !shared.is_empty() {
                matched += 1;
                self.send_to(
                    shard,
                    ShardMsg::Publish {
                        message: message.clone(),
                        normal,
                        shared,
                    },
                );
            }
        }
        if self.shard_count > 1 {
            self.remember(&message, remote, now);
        }
        let local = self.deliver_local_counted(&message, true, &local_picks);
        matched += local.delivered;
        if from_peer.is_none() {
            let here: SmallVec<[GroupPick; 2]> = picks
                .iter()
                .map(|(_, p)| (p.filter.clone(), p.group.clone()))
                .collect();
            matched += self.forward_to_cluster(&message, &here);
        }
        // Only when nothing matched at all: a subscriber that matched and dropped it (queue
        // full, ACL, no-local, offline QoS 0) counted its own reason already.
        if matched == 0 && local.matched == 0 {
            self.counters
                .drop(message.publish.qos, DropReason::NoSubscribers);
        }
        matched
    }

    /// Delivers a message to this shard's subscribers: normal ones when `normal`, plus one member
    /// of each picked group. Returns how many sessions got it.
    pub fn deliver_local(
        &mut self,
        message: &Arc<Message>,
        normal: bool,
        picks: &[SharedPick],
    ) -> usize {
        self.deliver_local_counted(message, normal, picks).delivered
    }

    /// [`ShardState::deliver_local`], also saying how many filters and shared picks matched
    /// (whether or not their sessions took the message).
    ///
    /// No allocation per message in the common case: the matching filters' subscriber lists are
    /// walked where the index keeps them (the index is borrowed apart from the sessions), the
    /// merge map for overlapping filters is the shard's and keeps its capacity, and a filter
    /// list spills to the heap only past `MATCHED_FILTERS_INLINE` overlapping filters.
    fn deliver_local_counted(
        &mut self,
        message: &Arc<Message>,
        normal: bool,
        picks: &[SharedPick],
    ) -> LocalDelivery {
        let mut frames = FrameCache::default();
        let mut delivered = 0usize;
        let mut matched_entries = 0usize;
        if normal {
            let queue_len_max = self.limits.session_queue_len_max as usize;
            let queue_qos0_offline = self.limits.queue_qos0_offline;
            let ShardState {
                subs,
                slots,
                counters,
                acl,
                ready,
                merge,
                ..
            } = self;
            let mut sink = Sink {
                slots,
                counters,
                acl: acl.as_deref(),
                ready,
                queue_len_max,
                queue_qos0_offline,
            };
            let mut entries: SmallVec<[&FilterEntry; MATCHED_FILTERS_INLINE]> = SmallVec::new();
            subs.for_each_match(message.publish.topic.as_str(), |entry| {
                if !entry.subscribers().is_empty() {
                    entries.push(entry);
                }
            });
            matched_entries = entries.len();
            if let [only] = entries.as_slice() {
                // The common case: one filter matched, no overlap to merge.
                for s in only.subscribers() {
                    delivered += sink.enqueue(
                        s.slot,
                        message,
                        s.options.qos,
                        s.options.retain_as_published,
                        s.options.no_local,
                        s.id.into_iter().collect(),
                        &mut frames,
                    );
                }
            } else if !entries.is_empty() {
                merge.clear();
                for entry in &entries {
                    merge_into(merge, entry);
                }
                for (slot, (qos, rap, ids, no_local)) in merge.drain() {
                    delivered += sink.enqueue(slot, message, qos, rap, no_local, ids, &mut frames);
                }
            }
        }
        for pick in picks {
            delivered += self.deliver_shared(message, pick, &mut frames);
        }
        LocalDelivery {
            matched: matched_entries + picks.len(),
            delivered,
        }
    }

    fn deliver_shared(
        &mut self,
        message: &Arc<Message>,
        pick: &SharedPick,
        frames: &mut FrameCache,
    ) -> usize {
        let member = self.subs.get(&pick.filter).and_then(|entry| {
            let g = entry.groups().iter().find(|g| g.group == pick.group)?;
            if g.members.is_empty() {
                return None;
            }
            let n = g.next.get();
            g.next.set(n.wrapping_add(1));
            Some(g.members[n as usize % g.members.len()])
        });
        match member {
            Some(m) => self.sink().enqueue(
                m.slot,
                message,
                m.options.qos,
                m.options.retain_as_published,
                false,
                m.id.into_iter().collect(),
                frames,
            ),
            None => {
                // The member left after the publisher picked this shard: pass the pick on to
                // another shard that still has members, at most once per shard.
                let shards = self
                    .routes
                    .get(&pick.filter)
                    .and_then(|e| e.groups.iter().find(|g| g.group == pick.group))
                    .map(|g| (g.shards & !bit(self.id), &g.next));
                let next = shards.and_then(|(mask, cursor)| pick_shard(mask, cursor));
                match next {
                    Some(shard) if usize::from(pick.hops) < usize::from(self.shard_count) => {
                        let mut forwarded = pick.clone();
                        forwarded.hops += 1;
                        let mut shared = SmallVec::new();
                        shared.push(forwarded);
                        self.send_to(
                            shard,
                            ShardMsg::Publish {
                                message: message.clone(),
                                normal: false,
                                shared,
                            },
                        );
                        1
                    }
                    _ => 0,
                }
            }
        }
    }

    /// The delivery sink over this shard's sessions, for a delivery outside a fan-out walk.
    fn sink(&mut self) -> Sink<'_> {
        Sink {
            queue_len_max: self.limits.session_queue_len_max as usize,
            queue_qos0_offline: self.limits.queue_qos0_offline,
            slots: &mut self.slots,
            counters: &mut self.counters,
            acl: self.acl.as_deref(),
            ready: &self.ready,
        }
    }
}

/// Overlapping filters one publish matches, kept on the stack (beyond it the list spills to
/// the heap: a publish matching more than this many filters with subscribers is rare).
const MATCHED_FILTERS_INLINE: usize = 8;

/// What putting a delivery on a session's queue touches, borrowed apart from the subscription
/// index so a publish walks the index's subscriber lists in place.
struct Sink<'a> {
    slots: &'a mut Vec<Slot>,
    counters: &'a mut Counters,
    acl: Option<&'a auth::Acl>,
    ready: &'a ReadyQueue,
    queue_len_max: usize,
    queue_qos0_offline: bool,
}

impl Sink<'_> {
    /// Puts one delivery on a session's queue, applying no-local, QoS downgrade and the queue
    /// bound. Returns 1 if the session took it.
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &mut self,
        slot: u32,
        message: &Arc<Message>,
        granted: QoS,
        retain_as_published: bool,
        no_local: bool,
        subscription_ids: SmallVec<[u32; 1]>,
        frames: &mut FrameCache,
    ) -> usize {
        let Some(entry) = self.slots.get_mut(slot as usize) else {
            return 0;
        };
        let Some(session) = entry.session.as_deref_mut() else {
            return 0;
        };
        // [MQTT-3.8.3-3] no-local: not to the publisher's own session.
        if no_local && message.origin == Some(session.key) {
            return 0;
        }
        // A retained publish that raced a new subscription: once, not both from the retained
        // scan and as the publishing shard's replay (`ShardState::replay_recent`).
        if message.publish.retain && session.owes_retained(message) {
            return 0;
        }
        // The read check per delivered topic, as Mosquitto does for every message: covers
        // wildcard and shared subscriptions and grants changed by a reload.
        if !super::acl::may_receive(
            self.acl,
            session.principal.as_deref(),
            message.publish.topic.as_str(),
        ) {
            self.counters.auth.deliver_denied += 1;
            return 0;
        }
        let qos = message.publish.qos.min(granted);
        // [MQTT-3.3.1-12]/[MQTT-3.3.1-13]: RETAIN as published only when asked for.
        let retain = retain_as_published && message.publish.retain;
        let online = session.link.is_some();
        if !online && qos == QoS::AtMostOnce && !self.queue_qos0_offline {
            self.counters.drop(qos, DropReason::Offline);
            return 0;
        }
        if session.queue_len() >= self.queue_len_max {
            self.counters.drop(qos, DropReason::QueueFull);
            return 0;
        }
        let shape_is_shared = qos == QoS::AtMostOnce
            && subscription_ids.is_empty()
            && message.expires_at.is_none()
            && (session.peer.version != ProtocolVersion::V5 || session.peer.topic_alias_max == 0);
        let outbound = if shape_is_shared {
            match frames.get(message, session.peer.version, retain) {
                Some(frame) => Outbound::Frame(frame),
                None => {
                    self.counters.drop(qos, DropReason::EncodeFailed);
                    return 0;
                }
            }
        } else {
            let message = if online {
                message.clone()
            } else {
                frames.compacted(message)
            };
            Outbound::Deliver(Delivery {
                message,
                qos,
                retain,
                subscription_ids,
            })
        };
        session.traffic_mut().queue.push_back(outbound);
        session.wake(self.ready);
        1
    }
}

fn merge_into(merge: &mut AHashMap<u32, Merged>, entry: &FilterEntry) {
    for s in entry.subscribers() {
        let slot = merge
            .entry(s.slot)
            .or_insert((QoS::AtMostOnce, false, SmallVec::new(), true));
        // One copy at the highest granted QoS, carrying every subscription identifier
        // [MQTT-3.3.4-2], [MQTT-3.3.4-3].
        slot.0 = slot.0.max(s.options.qos);
        slot.1 |= s.options.retain_as_published;
        slot.3 &= s.options.no_local;
        if let Some(id) = s.id {
            slot.2.push(id);
        }
    }
}

/// What one routed message needs once however many sessions get it: QoS 0 frames encoded per
/// (protocol family, RETAIN), and the compacted copy offline sessions store.
#[derive(Default)]
struct FrameCache {
    frames: [Option<Bytes>; 4],
    compacted: Option<Arc<Message>>,
}

impl FrameCache {
    /// The copy kept by offline sessions, made once per routed message rather than per session.
    pub(super) fn compacted(&mut self, message: &Message) -> Arc<Message> {
        self.compacted
            .get_or_insert_with(|| Arc::new(message.compacted()))
            .clone()
    }

    pub(super) fn get(
        &mut self,
        message: &Message,
        version: ProtocolVersion,
        retain: bool,
    ) -> Option<Bytes> {
        let index = usize::from(version == ProtocolVersion::V5) * 2 + usize::from(retain);
        if let Some(f) = &self.frames[index] {
            return Some(f.clone());
        }
        let mut publish = message.publish.clone();
        publish.qos = QoS::AtMostOnce;
        publish.dup = false;
        publish.retain = retain;
        publish.packet_id = None;
        let packet = wire::Packet::Publish(publish);
        let len = wire::encoded_len(&packet, version).ok()?;
        let mut out = BytesMut::with_capacity(len);
        wire::encode(&packet, version, &mut out).ok()?;
        let frame = out.freeze();
        self.frames[index] = Some(frame.clone());
        Some(frame)
    }
}
