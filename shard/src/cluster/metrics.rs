//! The cluster's metrics, published once a second from shard 0 (plain counters in between).
//! Per-link figures (`ringmq_cluster_route_*`) restart from 0 when a link is replaced, which
//! Prometheus' `rate()` treats as a counter reset.

use std::collections::BTreeSet;
use std::rc::Rc;
use std::time::Duration;

use cluster_gossip::NodeId;
use metrics::{counter, gauge};

use super::ClusterRuntime;

pub(super) async fn metrics_loop(rt: Rc<ClusterRuntime>) {
    let me = rt.node_id.0.to_string();
    let mut origins_seen = BTreeSet::new();
    let mut peers_seen = BTreeSet::new();
    loop {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        publish(&rt, &me, &mut origins_seen, &mut peers_seen);
    }
}

/// `origins_seen` / `peers_seen`: every origin whose routes and every peer whose link this node
/// ever published, so that one gone since shows 0 rather than its last value.
fn publish(
    rt: &ClusterRuntime,
    me: &str,
    origins_seen: &mut BTreeSet<u64>,
    peers_seen: &mut BTreeSet<u64>,
) {
    let node = rt.node.borrow();
    let io = rt.io.borrow();
    let stats = rt.stats.borrow();
    gauge!("ringmq_cluster_members", "state" => "alive").set(node.members().count() as f64);
    counter!("ringmq_cluster_members_down_total").absolute(stats.members_down);
    let ms = node.membership_stats();
    counter!("ringmq_cluster_datagrams_total", "direction" => "in").absolute(ms.datagrams_received);
    counter!("ringmq_cluster_datagrams_total", "direction" => "out").absolute(ms.datagrams_sent);
    counter!("ringmq_cluster_datagrams_refused_total", "reason" => "bad_tag")
        .absolute(ms.datagrams_bad_tag);
    counter!("ringmq_cluster_datagrams_refused_total", "reason" => "refused")
        .absolute(ms.datagrams_refused);
    counter!("ringmq_cluster_datagrams_dropped_total")
        .absolute(stats.datagrams_dropped + ms.datagrams_dropped_queue_full);
    counter!("ringmq_cluster_links_total", "edge" => "up").absolute(stats.links_up);
    counter!("ringmq_cluster_links_total", "edge" => "down").absolute(stats.links_down);
    counter!("ringmq_cluster_links_refused_total").absolute(node.stats().links_refused);
    counter!("ringmq_cluster_route_changes_applied_total").absolute(stats.route_changes_applied);
    gauge!("ringmq_cluster_route_seq").set(node.local_summary().seq as f64);
    // The route sets' order-independent digests, this node's own and each origin's as held
    // here: converged when every node shows the same value for an origin (the low 52 bits, so
    // the gauge's f64 holds them exactly).
    let digest = |d: u64| (d & ((1 << 52) - 1)) as f64;
    gauge!("ringmq_cluster_route_digest", "origin" => me.to_string())
        .set(digest(node.local_summary().digest));
    // An origin that went down is gone from the table: it shows 0, not its last size.
    for id in origins_seen.iter() {
        if node.remote_table().get(NodeId(*id)).is_none() {
            gauge!("ringmq_cluster_remote_routes", "origin" => id.to_string()).set(0.0);
        }
    }
    for origin in node.remote_table().origins() {
        let id = origin.summary().origin.0;
        origins_seen.insert(id);
        gauge!("ringmq_cluster_remote_routes", "origin" => id.to_string()).set(origin.len() as f64);
        gauge!("ringmq_cluster_route_digest", "origin" => id.to_string())
            .set(digest(origin.summary().digest));
    }
    let up: Vec<_> = node.links_up().map(|(link, p)| (link, p.node_id)).collect();
    let mut linked = BTreeSet::new();
    for (peer, link_stats, queue_len) in node.link_stats() {
        peers_seen.insert(peer.0);
        linked.insert(peer.0);
        let peer_label = peer.0.to_string();
        let unwritten = up
            .iter()
            .find(|(_, n)| *n == peer)
            .and_then(|(link, _)| io.links.get(link))
            .map_or(0, |l| l.unwritten());
        let labels = [("peer", peer_label.clone()), ("node", me.to_string())];
        gauge!("ringmq_cluster_link_up", &labels).set(1.0);
        gauge!("ringmq_cluster_link_queue_frames", &labels).set(queue_len as f64);
        gauge!("ringmq_cluster_link_queue_bytes", &labels).set(unwritten as f64);
        counter!("ringmq_cluster_route_ops_sent_total", &labels).absolute(link_stats.ops_sent);
        counter!("ringmq_cluster_route_ops_applied_total", &labels)
            .absolute(link_stats.ops_applied);
        counter!("ringmq_cluster_digest_repairs_total", &labels)
            .absolute(link_stats.repairs_requested);
        counter!("ringmq_cluster_snapshots_installed_total", &labels)
            .absolute(link_stats.snapshots_installed);
        counter!("ringmq_cluster_link_frames_dropped_total", &labels)
            .absolute(link_stats.frames_dropped_queue_full);
    }
    // A peer whose link went away shows its link down and nothing queued (its last counters
    // stay as they were), whether or not anything was ever forwarded to or from it.
    for peer in peers_seen.iter().filter(|p| !linked.contains(p)) {
        let labels = [("peer", peer.to_string()), ("node", me.to_string())];
        gauge!("ringmq_cluster_link_up", &labels).set(0.0);
        gauge!("ringmq_cluster_link_queue_frames", &labels).set(0.0);
        gauge!("ringmq_cluster_link_queue_bytes", &labels).set(0.0);
    }
    for (peer, (messages, bytes)) in &stats.forwarded_out {
        let peer = peer.0.to_string();
        counter!("ringmq_cluster_forwarded_messages_total", "peer" => peer.clone(), "direction" => "out")
            .absolute(*messages);
        counter!("ringmq_cluster_forwarded_bytes_total", "peer" => peer, "direction" => "out")
            .absolute(*bytes);
    }
    for (peer, (messages, bytes)) in &stats.forwarded_in {
        let peer = peer.0.to_string();
        counter!("ringmq_cluster_forwarded_messages_total", "peer" => peer.clone(), "direction" => "in")
            .absolute(*messages);
        counter!("ringmq_cluster_forwarded_bytes_total", "peer" => peer, "direction" => "in")
            .absolute(*bytes);
    }
    let claims = rt.claims.borrow();
    let cs = claims.stats();
    gauge!("ringmq_cluster_claims_pending").set(claims.pending_len() as f64);
    counter!("ringmq_cluster_claims_total", "outcome" => "won").absolute(cs.won);
    counter!("ringmq_cluster_claims_total", "outcome" => "lost").absolute(cs.lost);
    counter!("ringmq_cluster_claims_timed_out_total").absolute(cs.timed_out);
    counter!("ringmq_cluster_claims_overflowed_total").absolute(cs.overflowed);
    counter!("ringmq_cluster_claims_silent_skipped_total").absolute(cs.silent_skipped);
    gauge!("ringmq_cluster_claims_silent_peers").set(claims.silent_peers().count() as f64);
    counter!("ringmq_cluster_sessions_moved_total", "direction" => "in")
        .absolute(cs.sessions_moved_in);
    counter!("ringmq_cluster_sessions_moved_total", "direction" => "out")
        .absolute(cs.sessions_moved_out);
    for (reason, count) in [
        ("malformed_message", stats.session_msgs_malformed),
        ("malformed_image", stats.images_malformed),
        ("image_too_large", stats.images_too_large),
        ("no_link", stats.session_sends_failed),
    ] {
        counter!("ringmq_cluster_handover_errors_total", "reason" => reason).absolute(count);
    }
    counter!("ringmq_cluster_handover_queued_dropped_total").absolute(stats.image_queued_dropped);
    for ((peer, reason, qos), count) in &stats.dropped {
        counter!(
            "ringmq_cluster_forward_dropped_total",
            "peer" => peer.0.to_string(),
            "reason" => reason.label(),
            "qos" => qos.to_string()
        )
        .absolute(*count);
    }
}
