use super::*;

/// From this many normal subscribers on, a filter's list keeps an index from session slot to
/// position, so a subscribe or a removal (every disconnect of a broadcast's fleet) finds its
/// entry without walking the list; below it a walk is cheaper than hashing.
pub const SUBSCRIBERS_INDEXED_MIN: usize = 32;
/// A list that was indexed drops its index only below this many (not at once below
/// `SUBSCRIBERS_INDEXED_MIN`), so a list at the threshold does not rebuild it on every change.
const SUBSCRIBERS_UNINDEXED_BELOW: usize = SUBSCRIBERS_INDEXED_MIN / 2;
const _: () = assert!(SUBSCRIBERS_UNINDEXED_BELOW < SUBSCRIBERS_INDEXED_MIN);

/// A shared-subscription group's members on this shard.
#[derive(Debug)]
pub struct LocalGroup {
    pub group: Arc<str>,
    pub members: SmallVec<[Subscriber; 2]>,
    /// Round-robin cursor.
    pub next: Cell<u32>,
}

/// What the local trie stores per filter. 32 bytes: the exact-filter table pays it per bucket,
/// so what most filters do not have (shared groups, the index of a long list) lives behind one
/// pointer.
#[derive(Debug, Default)]
pub struct FilterEntry {
    /// Normal subscribers, one per session, in no promised order: a removal moves the last one
    /// into the gap. Delivery walks this slice in place.
    subscribers: SmallVec<[Subscriber; 1]>,
    /// `None` while the filter has no shared group and its list is not indexed.
    // A thin 8-byte pointer on purpose: a `Vec` (24 bytes) would be paid by every filter entry.
    cold: Option<Box<FilterCold>>,
}

const _: () = assert!(std::mem::size_of::<FilterEntry>() <= 32);

#[derive(Debug, Default)]
struct FilterCold {
    groups: Vec<LocalGroup>,
    /// Session slot -> position in `FilterEntry::subscribers`. Either empty (the list is walked)
    /// or exactly one entry per subscriber.
    positions: AHashMap<u32, u32>,
}

impl FilterEntry {
    /// The filter's normal subscribers.
    pub fn subscribers(&self) -> &[Subscriber] {
        &self.subscribers
    }

    /// The filter's shared groups with members on this shard.
    pub fn groups(&self) -> &[LocalGroup] {
        self.cold.as_deref().map_or(&[], |c| c.groups.as_slice())
    }

    pub fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.groups().is_empty()
    }

    /// Whether the list keeps its slot index (for tests of the index's upkeep).
    pub fn is_indexed(&self) -> bool {
        self.cold
            .as_deref()
            .is_some_and(|c| !c.positions.is_empty())
    }

    fn position(&self, slot: u32) -> Option<usize> {
        match self.cold.as_deref() {
            Some(c) if !c.positions.is_empty() => c.positions.get(&slot).map(|&p| p as usize),
            _ => self.subscribers.iter().position(|s| s.slot == slot),
        }
    }

    /// Adds `subscriber`, or replaces the session's earlier subscription to this filter
    /// [MQTT-3.8.4-3]. Returns whether it is new.
    pub(super) fn upsert_subscriber(&mut self, subscriber: Subscriber) -> bool {
        if let Some(p) = self.position(subscriber.slot) {
            self.subscribers[p] = subscriber;
            return false;
        }
        let position = self.subscribers.len();
        self.subscribers.push(subscriber);
        if self.is_indexed() {
            if let Some(c) = self.cold.as_deref_mut() {
                let earlier = c.positions.insert(subscriber.slot, position as u32);
                debug_assert!(earlier.is_none(), "slot {} indexed twice", subscriber.slot);
            }
        } else if self.subscribers.len() >= SUBSCRIBERS_INDEXED_MIN {
            let cold = self.cold.get_or_insert_with(Default::default);
            cold.positions.reserve(self.subscribers.len());
            for (p, s) in self.subscribers.iter().enumerate() {
                cold.positions.insert(s.slot, p as u32);
            }
        }
        self.debug_check_index();
        true
    }

    /// Removes session `slot`'s subscriber. Returns whether it was there.
    pub(super) fn remove_subscriber(&mut self, slot: u32) -> bool {
        let Some(p) = self.position(slot) else {
            return false;
        };
        self.subscribers.swap_remove(p);
        if let Some(c) = self.cold.as_deref_mut().filter(|c| !c.positions.is_empty()) {
            c.positions.remove(&slot);
            if self.subscribers.len() < SUBSCRIBERS_UNINDEXED_BELOW {
                c.positions = AHashMap::new();
            } else if let Some(moved) = self.subscribers.get(p) {
                let was = c.positions.insert(moved.slot, p as u32);
                debug_assert_eq!(was, Some(self.subscribers.len() as u32));
            }
        }
        self.drop_cold_if_unused();
        self.debug_check_index();
        true
    }

    /// Group `group`, created empty if the filter has none of that name yet.
    pub(super) fn group_or_insert(&mut self, group: &Arc<str>) -> &mut LocalGroup {
        let groups = &mut self.cold.get_or_insert_with(Default::default).groups;
        let p = match groups.iter().position(|g| g.group == *group) {
            Some(p) => p,
            None => {
                groups.push(LocalGroup {
                    group: group.clone(),
                    members: SmallVec::new(),
                    next: Cell::new(0),
                });
                groups.len() - 1
            }
        };
        &mut groups[p]
    }

    /// Removes session `slot` from group `group`. Returns the group's name when that left it
    /// without members here (it is gone then).
    pub(super) fn remove_member(&mut self, group: &str, slot: u32) -> Option<Arc<str>> {
        let groups = &mut self.cold.as_deref_mut()?.groups;
        let p = groups.iter().position(|g| &*g.group == group)?;
        let g = &mut groups[p];
        let before = g.members.len();
        g.members.retain(|m| m.slot != slot);
        if before == 0 || !g.members.is_empty() {
            return None;
        }
        let gone = groups.remove(p).group;
        self.drop_cold_if_unused();
        Some(gone)
    }

    fn drop_cold_if_unused(&mut self) {
        if self
            .cold
            .as_deref()
            .is_some_and(|c| c.groups.is_empty() && c.positions.is_empty())
        {
            self.cold = None;
        }
    }

    /// The index covers the list (a full check per change would make debug builds quadratic;
    /// the changed entries are checked where they change).
    fn debug_check_index(&self) {
        if let Some(c) = self.cold.as_deref().filter(|c| !c.positions.is_empty()) {
            debug_assert_eq!(c.positions.len(), self.subscribers.len());
        }
    }
}

impl ShardState {
    // ----- subscriptions --------------------------------------------------------------------

    /// Adds (or replaces [MQTT-3.8.4-3]) one subscription of session `slot`. Retained messages
    /// owed are queued on the session per the retain handling option.
    pub fn subscribe(
        &mut self,
        slot: u32,
        full_filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
        now: Instant,
    ) -> SubscribeResult {
        if wire::topic::validate_filter(full_filter).is_err() {
            return SubscribeResult::Refused(ReasonCode::TopicFilterInvalid);
        }
        let shared = match wire::topic::parse_shared(full_filter) {
            Ok(s) => s.map(|s| (Arc::<str>::from(s.group), s.filter)),
            Err(_) => return SubscribeResult::Refused(ReasonCode::TopicFilterInvalid),
        };
        let topic_filter: &str = match &shared {
            Some((_, f)) => f,
            None => full_filter,
        };
        let subscriptions_max = self.limits.subscriptions_per_session_max as usize;
        let over_limit = self.session(slot).is_some_and(|s| {
            s.subscriptions.len() >= subscriptions_max
                && !s.subscriptions.iter().any(|x| &*x.filter == full_filter)
        });
        if over_limit {
            self.counters.subscriptions_over_limit += 1;
            return SubscribeResult::Refused(ReasonCode::QuotaExceeded);
        }
        if !self.may_subscribe(slot, full_filter, topic_filter) {
            self.counters.subscriptions_refused += 1;
            return SubscribeResult::Refused(ReasonCode::NotAuthorized);
        }
        // No-local on a shared subscription is a protocol error [MQTT-3.8.3-4].
        if shared.is_some() && options.no_local {
            return SubscribeResult::Refused(ReasonCode::ProtocolError);
        }
        let (existed, route_changed) =
            self.insert_subscription(slot, full_filter, shared.as_ref(), options, id);
        // Retained messages: not for shared subscriptions; per retain handling otherwise.
        let send_retained = shared.is_none()
            && match options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendAtSubscribeIfNew => !existed,
                RetainHandling::DoNotSend => false,
            };
        if send_retained {
            self.queue_retained(slot, topic_filter, options.qos, id, now);
        }
        if let (Some(since), None, false) = (self.replay_local_since, &shared, existed) {
            self.replay_local(slot, topic_filter, options, id, since);
        }
        SubscribeResult::Granted {
            qos: options.qos,
            route_changed,
        }
    }

    /// Puts one subscription in the trie and the session, with no check (the caller checked,
    /// or it comes from a session handed over by a peer node, checked there and at delivery).
    /// Returns whether it existed already and whether the shard's route changed.
    pub(super) fn insert_subscription(
        &mut self,
        slot: u32,
        full_filter: &str,
        shared: Option<&(Arc<str>, &str)>,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) -> (bool, bool) {
        let topic_filter: &str = match shared {
            Some((_, f)) => f,
            None => full_filter,
        };
        let subscriber = Subscriber { slot, options, id };
        // One allocation of the filter for the trie key, the session and the route change (the
        // session keeps the whole `$share/...` filter, so a shared one has its own).
        let filter: Arc<str> = Arc::from(topic_filter);
        let entry = self.subs.get_or_insert_with(&filter, FilterEntry::default);
        let mut existed = false;
        let mut route_change = None;
        match shared {
            None => {
                existed = !entry.upsert_subscriber(subscriber);
                if !existed && entry.subscribers().len() == 1 {
                    route_change = Some(None);
                }
            }
            Some((group, _)) => {
                let g = entry.group_or_insert(group);
                if let Some(m) = g.members.iter_mut().find(|m| m.slot == slot) {
                    *m = subscriber;
                    existed = true;
                } else {
                    g.members.push(subscriber);
                    if g.members.len() == 1 {
                        route_change = Some(Some(group.clone()));
                    }
                }
            }
        }
        let route_changed = route_change.is_some();
        if let Some(group) = route_change {
            self.change_route(filter.clone(), group, true);
        }
        if let Some(session) = self.session_mut(slot) {
            match session
                .subscriptions
                .iter_mut()
                .find(|s| &*s.filter == full_filter)
            {
                Some(s) => {
                    s.options = options;
                    s.id = id;
                }
                None => session.subscriptions.push(SessionSubscription {
                    filter: match shared {
                        None => filter,
                        Some(_) => Arc::from(full_filter),
                    },
                    options,
                    id,
                }),
            }
        }
        (existed, route_changed)
    }

    pub(super) fn queue_retained(
        &mut self,
        slot: u32,
        filter: &str,
        granted: QoS,
        id: Option<u32>,
        now: Instant,
    ) {
        let mut owed: Vec<Delivery> = Vec::new();
        // A retained message is a delivery like any other: the ACL's read check applies per
        // topic, so `vehicle/+/speed`-style wildcards that SUBSCRIBE let through (or a grant
        // narrowed on reload) cannot return another client's retained data.
        let acl = self.acl.as_deref();
        let principal = self.session(slot).and_then(|s| s.principal.as_deref());
        let mut denied = 0u64;
        self.retained.for_each_name_matching(filter, |_, r| {
            if r.0.expires_at.is_some_and(|at| at <= now) {
                return;
            }
            if !super::acl::may_receive(acl, principal, r.0.publish.topic.as_str()) {
                denied += 1;
                return;
            }
            owed.push(Delivery {
                message: r.0.clone(),
                qos: r.0.publish.qos.min(granted),
                // [MQTT-3.3.1-9]: retained messages sent on subscribe carry RETAIN=1.
                retain: true,
                subscription_ids: id.into_iter().collect(),
            });
        });
        self.counters.auth.deliver_denied += denied;
        if owed.is_empty() {
            return;
        }
        let ready = self.ready.clone();
        if let Some(session) = self.session_mut(slot) {
            session.traffic_mut().retained_pending.extend(owed);
            session.wake(&ready);
        }
    }

    /// Removes one subscription of session `slot`. Returns whether it existed.
    pub fn unsubscribe(&mut self, slot: u32, full_filter: &str) -> bool {
        let existed = match self.session_mut(slot) {
            Some(session) => {
                let before = session.subscriptions.len();
                session.subscriptions.retain(|s| &*s.filter != full_filter);
                before != session.subscriptions.len()
            }
            None => false,
        };
        if existed {
            self.remove_subscription(slot, full_filter);
        }
        existed
    }

    pub(super) fn remove_subscription(&mut self, slot: u32, full_filter: &str) {
        let shared = wire::topic::parse_shared(full_filter)
            .ok()
            .flatten()
            .map(|s| (s.group.to_owned(), s.filter.to_owned()));
        let topic_filter: &str = match &shared {
            Some((_, f)) => f,
            None => full_filter,
        };
        let Some(entry) = self.subs.get_mut(topic_filter) else {
            return;
        };
        let route_change = match &shared {
            None => {
                (entry.remove_subscriber(slot) && entry.subscribers().is_empty()).then_some(None)
            }
            Some((group, _)) => entry.remove_member(group, slot).map(Some),
        };
        if entry.is_empty() {
            self.subs.remove(topic_filter);
        }
        if let Some(group) = route_change {
            self.change_route(Arc::from(topic_filter), group, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn subscriber(slot: u32, qos: u8) -> Subscriber {
        Subscriber {
            slot,
            options: SubscriptionOptions {
                qos: QoS::try_from(qos % 3).unwrap_or(QoS::AtMostOnce),
                ..Default::default()
            },
            id: Some(u32::from(qos)),
        }
    }

    /// Every slot the reference holds is found at its real position, with its latest
    /// subscription, and nothing else is in the list.
    fn check(entry: &FilterEntry, reference: &BTreeMap<u32, u8>) {
        assert_eq!(entry.subscribers().len(), reference.len());
        for (p, s) in entry.subscribers().iter().enumerate() {
            assert_eq!(entry.position(s.slot), Some(p));
            assert_eq!(s.id, reference.get(&s.slot).map(|&q| u32::from(q)));
        }
        if entry.subscribers().len() >= SUBSCRIBERS_INDEXED_MIN {
            assert!(entry.is_indexed());
        }
        if entry.subscribers().len() < SUBSCRIBERS_UNINDEXED_BELOW {
            assert!(!entry.is_indexed());
            assert!(
                entry.cold.is_none(),
                "nothing cold left without groups or index"
            );
        }
    }

    proptest! {
        /// Adds, replacements and removals across the index thresholds, both ways, against a
        /// map: the list holds each session once with its latest options [MQTT-3.8.4-3].
        #[test]
        fn subscriber_list_matches_a_map(ops in prop::collection::vec((any::<bool>(), 0u32..80, any::<u8>()), 0..600)) {
            let mut entry = FilterEntry::default();
            let mut reference = BTreeMap::new();
            for (add, slot, qos) in ops {
                if add {
                    let new = entry.upsert_subscriber(subscriber(slot, qos));
                    prop_assert_eq!(new, reference.insert(slot, qos).is_none());
                } else {
                    prop_assert_eq!(entry.remove_subscriber(slot), reference.remove(&slot).is_some());
                }
                check(&entry, &reference);
            }
        }
    }

    #[test]
    fn a_long_list_is_indexed_until_it_is_short_again() {
        let mut entry = FilterEntry::default();
        for slot in 0..SUBSCRIBERS_INDEXED_MIN as u32 {
            assert!(!entry.is_indexed());
            entry.upsert_subscriber(subscriber(slot, 1));
        }
        assert!(entry.is_indexed());
        for slot in 0..(SUBSCRIBERS_INDEXED_MIN - SUBSCRIBERS_UNINDEXED_BELOW) as u32 {
            assert!(
                entry.is_indexed(),
                "kept down to {SUBSCRIBERS_UNINDEXED_BELOW}"
            );
            entry.remove_subscriber(slot);
        }
        entry.remove_subscriber(SUBSCRIBERS_INDEXED_MIN as u32 - 1);
        assert!(!entry.is_indexed());
        assert!(entry.cold.is_none());
    }
}
