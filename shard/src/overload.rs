//! The accept path's overload hook: asks the engine's admission ([`engine::admission`]) whether
//! the shard takes a just-accepted socket, before it costs an engine connection or a ring
//! record. A refused socket is closed here at once (the client sees the connection closed; it has
//! sent nothing, so there is nothing to answer). Everything else about overload (rates, flapping,
//! bans, publish budgets) is the engine's.

use std::os::fd::OwnedFd;
use std::time::Instant;

use engine::{ConnId, ConnMeta, Engine, ListenerId};
use tracing::debug;

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
