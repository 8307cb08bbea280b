use super::*;

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
                if let Some(s) = entry.subscribers.iter_mut().find(|s| s.slot == slot) {
                    *s = subscriber;
                    existed = true;
                } else {
                    entry.subscribers.push(subscriber);
                    if entry.subscribers.len() == 1 {
                        route_change = Some(None);
                    }
                }
            }
            Some((group, _)) => {
                let pos = entry.groups.iter().position(|g| g.group == *group);
                let g = match pos {
                    Some(p) => &mut entry.groups[p],
                    None => {
                        entry.groups.push(LocalGroup {
                            group: group.clone(),
                            members: SmallVec::new(),
                            next: Cell::new(0),
                        });
                        let last = entry.groups.len() - 1;
                        &mut entry.groups[last]
                    }
                };
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
        let mut route_change = None;
        match &shared {
            None => {
                let before = entry.subscribers.len();
                entry.subscribers.retain(|s| s.slot != slot);
                if before > 0 && entry.subscribers.is_empty() {
                    route_change = Some(None);
                }
            }
            Some((group, _)) => {
                if let Some(pos) = entry
                    .groups
                    .iter()
                    .position(|g| &*g.group == group.as_str())
                {
                    let g = &mut entry.groups[pos];
                    let before = g.members.len();
                    g.members.retain(|m| m.slot != slot);
                    if before > 0 && g.members.is_empty() {
                        route_change = Some(Some(g.group.clone()));
                        entry.groups.remove(pos);
                    }
                }
            }
        }
        if entry.subscribers.is_empty() && entry.groups.is_empty() {
            self.subs.remove(topic_filter);
        }
        if let Some(group) = route_change {
            self.change_route(Arc::from(topic_filter), group, false);
        }
    }
}
