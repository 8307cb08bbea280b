//! The accept path's overload hook: asks the engine's admission ([`engine::admission`]) whether
//! the shard takes a just-accepted socket, before it costs an engine connection or a ring
//! record. A refused socket is closed here at once (the client sees the connection closed; it has
//! sent nothing, so there is nothing to answer). Everything else about overload (rates, flapping,
//! bans, publish budgets) is the engine's.
//!
//! Also the hand-over of a reloaded ban list: the broker publishes it ([`publish_ban_list`]) and
//! each shard's [`reload_loop`] gives it to its engine within [`RELOAD_TICK`].

use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::admission::BanList;
use engine::{ConnId, ConnMeta, Engine, ListenerId};
use tracing::{debug, info, warn};

use crate::runtime::ShardCtx;

/// How often a shard looks for a new ban list (one relaxed load when there is none).
pub const RELOAD_TICK: Duration = Duration::from_secs(1);

/// Bumped by every [`publish_ban_list`]; shards compare it with the one they applied.
static BAN_GENERATION: AtomicU64 = AtomicU64::new(0);
/// The latest published ban list (read by each shard once per publish, never on a hot path).
static BAN_LIST: Mutex<Option<Arc<BanList>>> = Mutex::new(None);

/// Gives every shard a new static ban list (the broker calls it after a reload).
pub fn publish_ban_list(ban: BanList) {
    if let Ok(mut slot) = BAN_LIST.lock() {
        *slot = Some(Arc::new(ban));
        BAN_GENERATION.fetch_add(1, Ordering::AcqRel);
    }
}

/// Applies published ban lists to the shard's engine.
pub async fn reload_loop(ctx: Rc<ShardCtx>) {
    let mut applied = BAN_GENERATION.load(Ordering::Acquire);
    loop {
        glommio::timer::sleep(RELOAD_TICK).await;
        let generation = BAN_GENERATION.load(Ordering::Acquire);
        if generation == applied {
            continue;
        }
        applied = generation;
        let ban = BAN_LIST.lock().ok().and_then(|slot| slot.clone());
        if let Some(ban) = ban {
            let mut engine = ctx.engine.borrow_mut();
            engine.set_ban_list((*ban).clone());
            info!(
                shard = engine.id(),
                client_ids = ban.client_ids.len(),
                usernames = ban.usernames.len(),
                addresses = ban.addresses.len(),
                "ban list reloaded"
            );
        }
    }
}

thread_local! {
    /// When this shard last logged an accept pause (at most one line per `LOG_INTERVAL`).
    static PAUSE_LOGGED_AT: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// End of a turn: accepting pauses while the shard holds its share of
/// `overload.max_handshakes` and resumes when an eighth of it is free
/// (`Admission::accepts_should_pause` / `accepts_may_resume`) and no accepted socket waits
/// (`runtime::Links::pending_accepts`, which the turn fills instead of refusing at the bound).
/// Paused, new connections wait in the kernel's listen backlog (`listen_backlog`) and are
/// accepted as handshakes finish, where they would otherwise be accepted and closed: a storm is
/// slowed, not refused. Counted as `ringmq_accept_pauses_total`.
pub fn pace_accepts(ring: &mut uring::Ring, engine: &Engine, none_pending: bool, now: Instant) {
    let admission = engine.admission();
    if !ring.accepts_paused() {
        if admission.accepts_should_pause() {
            ring.pause_accepts();
            let quiet = PAUSE_LOGGED_AT
                .get()
                .is_some_and(|at| now.duration_since(at) < engine::admission::LOG_INTERVAL);
            if !quiet {
                PAUSE_LOGGED_AT.set(Some(now));
                warn!(
                    shard = engine.id(),
                    "accepting paused: the shard holds its share of overload.max_handshakes; new connections wait in the listen backlog"
                );
            }
        }
    } else if none_pending && admission.accepts_may_resume() {
        ring.resume_accepts();
    }
}

/// Admits and opens a connection for `fd`, accepted on ring listener `listener` (the ring adds
/// listeners in configuration order, so its index is the [`ListenerId`]). `None` if refused: the
/// socket is closed and the refusal counted by the engine.
pub fn accept(
    engine: &mut Engine,
    listener: usize,
    fd: OwnedFd,
    now: Instant,
) -> Option<(ConnId, OwnedFd)> {
    let listener = ListenerId::try_from(listener).unwrap_or(ListenerId::MAX);
    if let Err(reason) = engine.admit(listener, now) {
        debug!(reason = reason.label(), "accepted socket closed at once");
        drop(fd);
        return None;
    }
    let conn = engine.open_on(listener, now);
    // Address rules need the peer address; one getpeername per accept only when some exist.
    if engine.admission().wants_peer_address() {
        let peer = socket2::SockRef::from(&fd)
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket());
        if peer.is_some() {
            engine.set_meta(
                conn,
                ConnMeta {
                    peer,
                    listener,
                    ..Default::default()
                },
            );
        }
    }
    Some((conn, fd))
}
