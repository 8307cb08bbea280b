//! Peer links as TCP connections (glommio `TcpStream`: a handful per node, not the client data
//! path). Each link has a reader task that feeds `ClusterNode::handle_link_data`, and a writer
//! task on a duplicate of the socket's descriptor that writes everything queued since its last
//! write in one go: frames are batched per link per turn without a lock between the two halves.

use std::cell::{Cell, RefCell};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd as _, FromRawFd as _};
use std::rc::Rc;
use std::time::{Duration, Instant};

use cluster_gossip::{LinkId, NodeId};
use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};
use glommio::net::TcpStream;
use tracing::{debug, warn};

use super::{ClusterRuntime, Notify, DIAL_TIMEOUT};
use crate::runtime::ShardCtx;

/// Peer links at once, authenticated or not. An unauthenticated one is closed after its
/// handshake timeout; this keeps a flood of connections to `peer_listen` from holding memory.
pub const PEER_LINKS_MAX: usize = 256;
/// Bytes read from a link per call.
const LINK_READ_BYTES: usize = 64 * 1024;

/// The write side of one link as the runtime sees it.
#[derive(Default)]
pub struct LinkIo {
    /// Frames queued since the writer last took them.
    out: RefCell<Vec<u8>>,
    /// Bytes the writer took and has not finished writing.
    in_flight: Cell<usize>,
    ready: Notify,
    /// Set once the link is to be closed (by the node, or because a side failed).
    closed: Cell<bool>,
    /// The authenticated peer, once the handshake finished.
    peer: Cell<Option<NodeId>>,
}

impl LinkIo {
    pub fn push(&self, bytes: &[u8]) {
        self.out.borrow_mut().extend_from_slice(bytes);
        self.ready.notify();
    }

    /// Bytes queued or being written: what the overflow policy looks at.
    pub fn unwritten(&self) -> usize {
        self.out.borrow().len() + self.in_flight.get()
    }

    pub fn close(&self) {
        self.closed.set(true);
        self.ready.notify();
    }

    pub fn peer(&self) -> Option<NodeId> {
        self.peer.get()
    }

    pub fn set_peer(&self, peer: NodeId) {
        self.peer.set(Some(peer));
    }
}

/// Accepts peer links until the process ends.
pub(super) async fn accept_loop(rt: Rc<ClusterRuntime>, ctx: Rc<ShardCtx>) {
    loop {
        match rt.listener.accept().await {
            Ok(stream) => {
                if rt.io.borrow().links.len() >= PEER_LINKS_MAX {
                    warn!(
                        limit = PEER_LINKS_MAX,
                        "peer link refused: too many links open"
                    );
                    continue;
                }
                let link = rt.node.borrow_mut().accept_link(Instant::now());
                start_link(&rt, &ctx, link, stream);
                rt.pump(&ctx);
            }
            Err(error) => {
                warn!(%error, "peer link accept failed");
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Opens the link the node asked for and reports the outcome.
pub(super) async fn dial(
    rt: Rc<ClusterRuntime>,
    ctx: Rc<ShardCtx>,
    link: LinkId,
    addr: SocketAddr,
) {
    match TcpStream::connect_timeout(addr, DIAL_TIMEOUT).await {
        Ok(stream) => {
            start_link(&rt, &ctx, link, stream);
            rt.node.borrow_mut().link_opened(link, Instant::now());
        }
        Err(error) => {
            debug!(link = link.0, %addr, %error, "peer dial failed");
            rt.node.borrow_mut().link_closed(link, Instant::now());
        }
    }
    rt.pump(&ctx);
}

fn start_link(rt: &Rc<ClusterRuntime>, ctx: &Rc<ShardCtx>, link: LinkId, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // SAFETY: dup(2) of a descriptor this stream owns; the duplicate is owned by the writer.
    let dup = unsafe { libc::dup(stream.as_raw_fd()) };
    if dup < 0 {
        warn!(link = link.0, "cannot duplicate a peer link's socket");
        rt.node.borrow_mut().link_closed(link, Instant::now());
        return;
    }
    // SAFETY: `dup` is a fresh descriptor nobody else owns.
    let writer = unsafe { TcpStream::from_raw_fd(dup) };
    let io = Rc::new(LinkIo::default());
    rt.register_link(link, io.clone());
    glommio::spawn_local(write_loop(io, writer)).detach();
    glommio::spawn_local(read_loop(rt.clone(), ctx.clone(), link, stream)).detach();
}

async fn read_loop(rt: Rc<ClusterRuntime>, ctx: Rc<ShardCtx>, link: LinkId, mut stream: TcpStream) {
    let mut buf = vec![0u8; LINK_READ_BYTES];
    loop {
        let closed = rt.link_io(link).is_none_or(|io| io.closed.get());
        if closed {
            break;
        }
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                let data = buf.get(..n).unwrap_or_default();
                rt.node
                    .borrow_mut()
                    .handle_link_data(link, data, Instant::now());
                rt.pump(&ctx);
            }
            Err(error) => {
                debug!(link = link.0, %error, "peer link read failed");
                break;
            }
        }
    }
    if let Some(io) = rt.link_io(link) {
        io.close();
    }
    if rt.forget_link(link) {
        rt.node.borrow_mut().link_closed(link, Instant::now());
        rt.pump(&ctx);
    }
}

async fn write_loop(io: Rc<LinkIo>, mut stream: TcpStream) {
    let mut chunk = Vec::new();
    loop {
        if io.closed.get() {
            break;
        }
        if io.out.borrow().is_empty() {
            io.ready.wait().await;
            continue;
        }
        std::mem::swap(&mut *io.out.borrow_mut(), &mut chunk);
        io.in_flight.set(chunk.len());
        let result = stream.write_all(&chunk).await;
        io.in_flight.set(0);
        chunk.clear();
        if let Err(error) = result {
            debug!(%error, "peer link write failed");
            break;
        }
    }
    io.close();
    // Wakes the reader (its read returns 0) so the link ends on both halves.
    let _ = stream.shutdown(Shutdown::Both).await;
}
