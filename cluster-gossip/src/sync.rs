//! Route sync over one peer link: handshake, ordered ops, repair by delta or snapshot, and
//! anti-entropy by summary comparison.
//!
//! Links are direct: each node sends only its own set, so the sender of every op, snapshot and
//! summary on a link is the owner of what it describes, and anything claiming another origin is
//! refused.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::auth::{Secret, DOMAIN_LINK};
use crate::codec::{identity_bytes, PeerFrame, FRAME_BODY_BUDGET};
use crate::identity::{Generation, NodeId, NodeIdentity};
use crate::routes::{
    ApplyOutcome, LocalRoutes, RemoteRoutes, RemoteRoutesError, RouteChange, RouteEntry,
    RouteMatcher, RouteOp, RouteSummary, SharedGroupNodes, SnapshotChunk, SnapshotOutcome,
};

/// What a peer link hands up to the node's caller, opaque to route sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkPayload {
    /// A batch of forwarded publishes.
    Forward(Vec<u8>),
    /// A session hand-over message.
    Session(Vec<u8>),
}

/// Why a link must be closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SyncError {
    #[error("peer sent {frame} before proving it holds the cluster secret")]
    NotAuthenticated { frame: &'static str },
    #[error("peer's link proof does not verify (wrong or missing cluster secret)")]
    BadProof,
    #[error("peer claims our own node id {0}")]
    OwnNodeId(NodeId),
    #[error("peer sent a second hello")]
    RepeatedHello,
    #[error("peer {peer} sent routes of origin {origin}; only owners send their routes")]
    ForeignOrigin { peer: NodeId, origin: NodeId },
    #[error(transparent)]
    Routes(#[from] RemoteRoutesError),
}

/// Every remote origin's set plus the matcher over all of them, kept in step.
#[derive(Debug, Default)]
pub struct RemoteTable {
    origins: BTreeMap<NodeId, RemoteRoutes>,
    matcher: RouteMatcher,
    changes: Vec<RouteChange>,
    /// Set while the runtime mirrors the table elsewhere (the broker's per-shard remote tries):
    /// every applied change, in order, until [`RemoteTable::take_applied`]. Its length is bounded
    /// by what one input can change (one frame's ops, one snapshot, or one origin dropped): the
    /// runtime drains it after every call into the node.
    applied: Option<Vec<(NodeId, RouteChange)>>,
}

impl RemoteTable {
    fn follow(&mut self, origin: NodeId) {
        for change in self.changes.drain(..) {
            match &change {
                RouteChange::Add(entry) => self.matcher.insert(origin, entry),
                RouteChange::Remove(entry) => self.matcher.remove(origin, entry),
            }
            if let Some(applied) = &mut self.applied {
                applied.push((origin, change));
            }
        }
    }

    /// Starts recording applied changes for [`RemoteTable::take_applied`].
    pub fn record_applied(&mut self) {
        self.applied.get_or_insert_with(Vec::new);
    }

    /// The changes applied since the last call, oldest first (empty unless recording).
    pub fn take_applied(&mut self) -> Vec<(NodeId, RouteChange)> {
        match &mut self.applied {
            Some(applied) => std::mem::take(applied),
            None => Vec::new(),
        }
    }

    fn origin_mut(&mut self, origin: NodeId, generation: Generation) -> &mut RemoteRoutes {
        self.origins
            .entry(origin)
            .or_insert_with(|| RemoteRoutes::new(origin, generation))
    }

    fn apply_op(&mut self, op: &RouteOp) -> Result<ApplyOutcome, RemoteRoutesError> {
        let mut changes = std::mem::take(&mut self.changes);
        let outcome = self
            .origin_mut(op.origin, op.generation)
            .apply_op(op, &mut changes);
        self.changes = changes;
        self.follow(op.origin);
        outcome
    }

    fn apply_chunk(&mut self, chunk: SnapshotChunk) -> Result<SnapshotOutcome, RemoteRoutesError> {
        let origin = chunk.origin;
        let mut changes = std::mem::take(&mut self.changes);
        let outcome = self
            .origin_mut(origin, chunk.generation)
            .apply_snapshot_chunk(chunk, &mut changes);
        self.changes = changes;
        self.follow(origin);
        outcome
    }

    /// Drops the routes of `origin` if they are of `generation` or older (the member went down).
    pub fn drop_origin(&mut self, origin: NodeId, generation: Generation) {
        let Some(remote) = self.origins.get(&origin) else {
            return;
        };
        if remote.generation() > generation {
            return;
        }
        if let Some(mut remote) = self.origins.remove(&origin) {
            let mut changes = std::mem::take(&mut self.changes);
            remote.clear(&mut changes);
            self.changes = changes;
            self.follow(origin);
        }
    }

    pub fn summary(&self, origin: NodeId) -> Option<RouteSummary> {
        self.origins.get(&origin).map(RemoteRoutes::summary)
    }

    pub fn origins(&self) -> impl Iterator<Item = &RemoteRoutes> {
        self.origins.values()
    }

    pub fn get(&self, origin: NodeId) -> Option<&RemoteRoutes> {
        self.origins.get(&origin)
    }

    pub fn interested_nodes(&self, topic: &str) -> smallvec::SmallVec<[NodeId; 8]> {
        self.matcher.interested_nodes(topic)
    }

    pub fn shared_groups(&self, topic: &str) -> Vec<SharedGroupNodes> {
        self.matcher.shared_groups(topic)
    }

    pub fn matcher(&self) -> &RouteMatcher {
        &self.matcher
    }
}

/// Counters of one link; they only grow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub ops_sent: u64,
    pub ops_applied: u64,
    pub repairs_requested: u64,
    pub snapshots_sent: u64,
    pub snapshots_installed: u64,
    /// Frames dropped because the link's queue was full (route frames are repaired by
    /// anti-entropy; forwarded QoS 0 publishes are lost).
    pub frames_dropped_queue_full: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Handshake {
    /// Waiting for the peer's hello (and then its proof).
    AwaitingHello,
    /// We know who the peer says it is; waiting for its proof.
    AwaitingProof {
        peer: NodeIdentity,
    },
    Up {
        peer: NodeIdentity,
    },
}

/// The route-sync state machine of one peer link.
#[derive(Debug)]
pub struct RouteSync {
    me: NodeIdentity,
    my_nonce: u64,
    handshake: Handshake,
    outbox: VecDeque<PeerFrame>,
    outbox_max: usize,
    /// Set while a delta/snapshot request for the peer's origin is outstanding.
    repair_requested_at: Option<Instant>,
    /// How long an unanswered request is waited for before it is sent again.
    repair_timeout: Duration,
    stats: LinkStats,
}

impl RouteSync {
    /// A new link; `my_nonce` must be fresh and unpredictable in production.
    pub fn new(
        me: NodeIdentity,
        my_nonce: u64,
        outbox_max: usize,
        repair_timeout: Duration,
    ) -> Self {
        let mut link = Self {
            me,
            my_nonce,
            handshake: Handshake::AwaitingHello,
            outbox: VecDeque::new(),
            outbox_max: outbox_max.max(1),
            repair_requested_at: None,
            repair_timeout,
            stats: LinkStats::default(),
        };
        link.queue(PeerFrame::Hello {
            identity: me,
            nonce: my_nonce,
        });
        link
    }

    /// Queues a frame; a full queue hands the frame back.
    fn try_queue(&mut self, frame: PeerFrame) -> Result<(), PeerFrame> {
        if self.outbox.len() >= self.outbox_max {
            self.stats.frames_dropped_queue_full += 1;
            return Err(frame);
        }
        self.outbox.push_back(frame);
        Ok(())
    }

    /// Queues a route frame: on overflow it is dropped, the peer's gap or digest check repairs.
    fn queue(&mut self, frame: PeerFrame) {
        let _ = self.try_queue(frame);
    }

    /// The authenticated peer, once the handshake finished.
    pub fn peer(&self) -> Option<&NodeIdentity> {
        match &self.handshake {
            Handshake::Up { peer } => Some(peer),
            _ => None,
        }
    }

    pub fn is_up(&self) -> bool {
        self.peer().is_some()
    }

    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    pub fn queue_len(&self) -> usize {
        self.outbox.len()
    }

    pub fn poll_frame(&mut self) -> Option<PeerFrame> {
        self.outbox.pop_front()
    }

    /// A publish to forward; a full queue hands it back (the caller applies the QoS policy).
    pub fn queue_forward(&mut self, payload: Vec<u8>) -> Result<(), Vec<u8>> {
        self.queue_opaque(LinkPayload::Forward(payload))
    }

    /// A session hand-over message; a full queue hands it back (the claim then times out).
    pub fn queue_session(&mut self, payload: Vec<u8>) -> Result<(), Vec<u8>> {
        self.queue_opaque(LinkPayload::Session(payload))
    }

    fn queue_opaque(&mut self, payload: LinkPayload) -> Result<(), Vec<u8>> {
        let frame = match payload {
            LinkPayload::Forward(bytes) if self.is_up() => PeerFrame::Forward(bytes),
            LinkPayload::Session(bytes) if self.is_up() => PeerFrame::Session(bytes),
            LinkPayload::Forward(bytes) | LinkPayload::Session(bytes) => return Err(bytes),
        };
        self.try_queue(frame).map_err(|frame| match frame {
            PeerFrame::Forward(bytes) | PeerFrame::Session(bytes) => bytes,
            _ => Vec::new(),
        })
    }

    /// A local change to send on (nothing before the link is up: the summary covers it).
    pub fn on_local_op(&mut self, op: &RouteOp) {
        if self.is_up() {
            self.stats.ops_sent += 1;
            self.queue(PeerFrame::Ops(vec![op.clone()]));
        }
    }

    /// Periodic anti-entropy: tell the peer where our set stands.
    pub fn anti_entropy(&mut self, local: &LocalRoutes) {
        if self.is_up() {
            self.queue(PeerFrame::Summary(vec![local.summary()]));
        }
    }

    /// One frame from the peer. `Ok(Some(data))` hands a forwarded publish or a session
    /// message up; an error means the link must be closed.
    pub fn handle_frame(
        &mut self,
        frame: PeerFrame,
        secret: &Secret,
        local: &LocalRoutes,
        table: &mut RemoteTable,
        now: Instant,
    ) -> Result<Option<LinkPayload>, SyncError> {
        let peer = match (&self.handshake, frame) {
            (Handshake::AwaitingHello, PeerFrame::Hello { identity, nonce }) => {
                if identity.node_id == self.me.node_id {
                    return Err(SyncError::OwnNodeId(identity.node_id));
                }
                let tag = secret.tag(
                    DOMAIN_LINK,
                    &[&nonce.to_be_bytes(), &identity_bytes(&self.me)],
                );
                self.queue(PeerFrame::Proof { tag });
                self.handshake = Handshake::AwaitingProof { peer: identity };
                return Ok(None);
            }
            (Handshake::AwaitingProof { peer }, PeerFrame::Proof { tag }) => {
                let peer = *peer;
                let parts: [&[u8]; 2] = [&self.my_nonce.to_be_bytes(), &identity_bytes(&peer)];
                if !secret.verify(DOMAIN_LINK, &parts, &tag) {
                    return Err(SyncError::BadProof);
                }
                self.handshake = Handshake::Up { peer };
                self.queue(PeerFrame::Summary(vec![local.summary()]));
                return Ok(None);
            }
            (Handshake::Up { .. }, PeerFrame::Hello { .. })
            | (Handshake::AwaitingProof { .. }, PeerFrame::Hello { .. }) => {
                return Err(SyncError::RepeatedHello)
            }
            (Handshake::Up { peer }, frame) => (*peer, frame),
            (_, frame) => {
                return Err(SyncError::NotAuthenticated {
                    frame: frame_name(&frame),
                })
            }
        };
        let (peer, frame) = peer;
        match frame {
            PeerFrame::Summary(summaries) => {
                for summary in summaries {
                    self.check_origin(&peer, summary.origin)?;
                    self.compare_summary(&summary, table, now);
                }
            }
            PeerFrame::Ops(ops) => self.apply_ops(&peer, &ops, table, now)?,
            PeerFrame::SyncRequest {
                origin,
                generation,
                have_seq,
                snapshot,
            } => {
                if origin == self.me.node_id {
                    self.serve(local, generation, have_seq, snapshot);
                }
            }
            PeerFrame::Snapshot(chunk) => {
                self.check_origin(&peer, chunk.origin)?;
                match table.apply_chunk(chunk)? {
                    SnapshotOutcome::Installed => {
                        self.stats.snapshots_installed += 1;
                        self.repair_requested_at = None;
                    }
                    SnapshotOutcome::Broken => self.request_repair(&peer, table, true, now),
                    SnapshotOutcome::Staged | SnapshotOutcome::Stale => {}
                }
            }
            PeerFrame::Forward(payload) => return Ok(Some(LinkPayload::Forward(payload))),
            PeerFrame::Session(payload) => return Ok(Some(LinkPayload::Session(payload))),
            PeerFrame::Hello { .. } | PeerFrame::Proof { .. } => {}
        }
        Ok(None)
    }

    fn check_origin(&self, peer: &NodeIdentity, origin: NodeId) -> Result<(), SyncError> {
        if origin != peer.node_id {
            return Err(SyncError::ForeignOrigin {
                peer: peer.node_id,
                origin,
            });
        }
        Ok(())
    }

    fn apply_ops(
        &mut self,
        peer: &NodeIdentity,
        ops: &[RouteOp],
        table: &mut RemoteTable,
        now: Instant,
    ) -> Result<(), SyncError> {
        for op in ops {
            self.check_origin(peer, op.origin)?;
            match table.apply_op(op)? {
                ApplyOutcome::Applied | ApplyOutcome::AppliedDrift => {
                    self.stats.ops_applied += 1;
                }
                ApplyOutcome::Gap { .. } => {
                    self.request_repair(peer, table, false, now);
                    break;
                }
                ApplyOutcome::Duplicate | ApplyOutcome::Stale => {}
            }
        }
        Ok(())
    }

    /// Compares the owner's summary with our copy and asks for what is missing.
    fn compare_summary(&mut self, theirs: &RouteSummary, table: &RemoteTable, now: Instant) {
        let ours = table.summary(theirs.origin);
        let need = match ours {
            // An owner with nothing yet: there is nothing to fetch.
            None if theirs.seq == 0 => None,
            None => Some(false),
            Some(ours) if theirs.generation > ours.generation => Some(false),
            Some(ours) if theirs.generation < ours.generation => None,
            Some(ours) if theirs.seq > ours.seq => Some(false),
            // Same version, different content, or we are "ahead" of the owner: our copy drifted.
            Some(ours) if theirs.seq < ours.seq || theirs.digest != ours.digest => Some(true),
            Some(_) => {
                self.repair_requested_at = None;
                None
            }
        };
        if let Some(snapshot) = need {
            self.send_repair(theirs.origin, theirs.generation, ours, snapshot, now);
        }
    }

    fn request_repair(
        &mut self,
        peer: &NodeIdentity,
        table: &RemoteTable,
        snapshot: bool,
        now: Instant,
    ) {
        let ours = table.summary(peer.node_id);
        let generation = ours.map_or(peer.generation, |s| s.generation);
        self.send_repair(peer.node_id, generation, ours, snapshot, now);
    }

    fn send_repair(
        &mut self,
        origin: NodeId,
        generation: Generation,
        ours: Option<RouteSummary>,
        snapshot: bool,
        now: Instant,
    ) {
        if let Some(at) = self.repair_requested_at {
            if now.duration_since(at) < self.repair_timeout {
                return;
            }
        }
        let have_seq = match ours {
            Some(ours) if ours.generation == generation => ours.seq,
            _ => 0,
        };
        self.repair_requested_at = Some(now);
        self.stats.repairs_requested += 1;
        self.queue(PeerFrame::SyncRequest {
            origin,
            generation,
            have_seq,
            snapshot,
        });
    }

    /// Answers a request for our own set: a delta from the log when it reaches back far enough,
    /// else a snapshot.
    fn serve(
        &mut self,
        local: &LocalRoutes,
        generation: Generation,
        have_seq: u64,
        snapshot: bool,
    ) {
        if !snapshot && generation == local.generation() {
            if let Some(ops) = local.ops_after(have_seq) {
                let mut batch = Vec::new();
                let mut bytes = 0;
                for op in ops {
                    bytes += op.change.entry().encoded_len() + 32;
                    batch.push(op.clone());
                    if bytes >= FRAME_BODY_BUDGET {
                        self.stats.ops_sent += batch.len() as u64;
                        self.queue(PeerFrame::Ops(std::mem::take(&mut batch)));
                        bytes = 0;
                    }
                }
                if !batch.is_empty() {
                    self.stats.ops_sent += batch.len() as u64;
                    self.queue(PeerFrame::Ops(batch));
                }
                return;
            }
        }
        self.send_snapshot(local);
    }

    fn send_snapshot(&mut self, local: &LocalRoutes) {
        self.stats.snapshots_sent += 1;
        let summary = local.summary();
        let chunk = |index, last, entries| {
            PeerFrame::Snapshot(SnapshotChunk {
                origin: summary.origin,
                generation: summary.generation,
                seq: summary.seq,
                digest: summary.digest,
                index,
                last,
                entries,
            })
        };
        let mut index = 0;
        let mut entries: Vec<RouteEntry> = Vec::new();
        let mut bytes = 0;
        for entry in local.snapshot_entries() {
            if bytes + entry.encoded_len() > FRAME_BODY_BUDGET && !entries.is_empty() {
                self.queue(chunk(index, false, std::mem::take(&mut entries)));
                index += 1;
                bytes = 0;
            }
            bytes += entry.encoded_len();
            entries.push(entry);
        }
        self.queue(chunk(index, true, entries));
    }
}

fn frame_name(frame: &PeerFrame) -> &'static str {
    match frame {
        PeerFrame::Hello { .. } => "hello",
        PeerFrame::Proof { .. } => "proof",
        PeerFrame::Summary(_) => "summary",
        PeerFrame::Ops(_) => "ops",
        PeerFrame::SyncRequest { .. } => "sync request",
        PeerFrame::Snapshot(_) => "snapshot",
        PeerFrame::Forward(_) => "forward",
        PeerFrame::Session(_) => "session",
    }
}
