use super::*;

/// How often the shard's traffic sweep runs (`ShardState::sweep_traffic`): it frees the
/// `session::Traffic` of sessions that are idle again, so an idle connection that once received
/// a message costs what one that never did costs.
pub const TRAFFIC_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Session slots one sweep visits (a cursor walks the slot table round-robin), so a sweep costs
/// the same however many sessions the shard holds; a slot is visited every
/// `ceil(slots / TRAFFIC_SWEEP_SLOTS_MAX)` sweeps.
pub const TRAFFIC_SWEEP_SLOTS_MAX: usize = 4096;

impl ShardState {
    // ----- timers ---------------------------------------------------------------------------

    pub(super) fn schedule(&mut self, kind: TimerKind, slot: u32, at: Instant) {
        self.push_timer(kind, slot, 0, at);
    }

    /// The keepalive timer of connection `link` (its link generation) of session `slot`.
    pub(super) fn schedule_keepalive(&mut self, slot: u32, link: u32, at: Instant) {
        self.push_timer(TimerKind::KeepAlive, slot, link, at);
    }

    /// Closes connection `link` of session `slot` at `at`, when its credentials expire.
    pub fn schedule_credentials_expiry(&mut self, slot: u32, link: u32, at: Instant) {
        self.push_timer(TimerKind::CredentialsExpiry, slot, link, at);
    }

    fn push_timer(&mut self, kind: TimerKind, slot: u32, link: u32, at: Instant) {
        let stamp = if kind.is_link_timer() {
            link
        } else {
            self.slots
                .get(slot as usize)
                .map(|s| s.generation)
                .unwrap_or(0)
        };
        // u64 nanoseconds last 584 years; a time before the epoch (there is none: `at` is
        // derived from a `now` after start-up) would run at the first turn.
        let at_ns = u64::try_from(at.saturating_duration_since(self.timer_epoch).as_nanos())
            .unwrap_or(u64::MAX);
        self.timers
            .push(Reverse(TimerEntry::new(at_ns, kind, slot, stamp)));
    }

    /// Timers waiting, live or not yet found stale (for tests and metrics).
    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }

    /// When the next timer is due: the heap's first, or the traffic sweep while the shard holds
    /// sessions.
    pub fn next_deadline(&self) -> Option<Instant> {
        let timer = self
            .timers
            .peek()
            .map(|Reverse(t)| self.timer_epoch + Duration::from_nanos(t.at_ns()));
        let sweep = (self.slots.len() > self.free_slots.len()).then_some(self.traffic_sweep_at);
        timer.into_iter().chain(sweep).min()
    }

    /// Visits the next `TRAFFIC_SWEEP_SLOTS_MAX` session slots once the sweep is due, freeing
    /// the traffic of sessions idle since the last visit ([`Session::sweep_traffic`]): after
    /// its deliveries an idle connection costs no more than before them, and nothing is freed
    /// or allocated per message.
    pub(super) fn sweep_traffic(&mut self, now: Instant) {
        if now < self.traffic_sweep_at {
            return;
        }
        self.traffic_sweep_at = now + TRAFFIC_SWEEP_INTERVAL;
        let slots = self.slots.len();
        if slots == 0 {
            return;
        }
        let mut at = self.traffic_sweep_cursor as usize % slots;
        for _ in 0..slots.min(TRAFFIC_SWEEP_SLOTS_MAX) {
            if let Some(session) = self.slots[at].session.as_deref_mut() {
                if session.sweep_traffic() {
                    self.counters.traffic_released += 1;
                }
            }
            at = (at + 1) % slots;
        }
        self.traffic_sweep_cursor = at as u32;
    }

    /// Runs every due timer: keepalive expiry closes connections, delayed wills are published,
    /// expired sessions end.
    pub fn run_timers(&mut self, now: Instant) {
        let now_ns = u64::try_from(now.saturating_duration_since(self.timer_epoch).as_nanos())
            .unwrap_or(u64::MAX);
        let ready = self.ready.clone();
        while let Some(Reverse(entry)) = self.timers.peek().copied() {
            if entry.at_ns() > now_ns {
                break;
            }
            self.timers.pop();
            let kind = entry.kind();
            if !kind.is_link_timer() {
                let current = self.slots.get(entry.slot as usize).map(|s| s.generation);
                if current != Some(entry.stamp) {
                    continue; // the slot was reused: this timer belonged to an ended session.
                }
            }
            match kind {
                TimerKind::KeepAlive => {
                    let mut reschedule = None;
                    if let Some(session) = self.session_mut(entry.slot) {
                        // A timer of an earlier connection (taken over) ends here.
                        if let Some(link) = session
                            .link
                            .as_mut()
                            .filter(|l| l.generation == entry.stamp)
                        {
                            if link.keepalive_secs > 0 {
                                let due = link.last_activity + keepalive_grace(link.keepalive_secs);
                                if due <= now {
                                    // [MQTT-3.1.2-24] close after 1.5× keepalive without a packet.
                                    link.close.get_or_insert(CloseReason::KeepAliveTimeout);
                                    link.wake(&ready);
                                } else {
                                    reschedule = Some(due);
                                }
                            }
                        }
                    }
                    if let Some(at) = reschedule {
                        self.schedule_keepalive(entry.slot, entry.stamp, at);
                    }
                }
                TimerKind::CredentialsExpiry => {
                    let link = self
                        .session_mut(entry.slot)
                        .and_then(|s| s.link.as_mut())
                        .filter(|l| l.generation == entry.stamp);
                    if let Some(link) = link {
                        link.close.get_or_insert(CloseReason::CredentialsExpired);
                        link.wake(&ready);
                        self.counters.auth.expired += 1;
                    }
                }
                TimerKind::WillDelay => {
                    let due = self.session_mut(entry.slot).and_then(|s| {
                        if s.link.is_none() && s.will_at().is_some_and(|at| at <= now) {
                            s.set_will_at(None);
                            s.will.take()
                        } else {
                            None
                        }
                    });
                    if let Some(will) = due {
                        self.publish_will(will, now);
                    }
                }
                TimerKind::SessionExpiry => {
                    let expired = self.session(entry.slot).is_some_and(|s| {
                        s.link.is_none() && s.expires_at().is_some_and(|at| at <= now)
                    });
                    if expired {
                        self.counters.sessions_expired += 1;
                        self.end_session(entry.slot, now);
                    }
                }
            }
        }
        self.sweep_traffic(now);
    }
}
