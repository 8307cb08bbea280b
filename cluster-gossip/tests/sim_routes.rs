//! Route sync in the deterministic simulator: loss, partitions, shared groups.

mod sim;

use std::collections::BTreeSet;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt as _, SeedableRng};
use ringmq_cluster_gossip::routes::matcher::filter_matches;
use ringmq_cluster_gossip::{NodeId, RouteEntry};
use sim::{filter, Sim};

const SECOND: Duration = Duration::from_secs(1);

/// What each owner exports, tracked by the test as the ground truth.
struct Truth {
    sets: Vec<BTreeSet<String>>,
}

impl Truth {
    fn new(n: usize) -> Self {
        Self {
            sets: vec![BTreeSet::new(); n],
        }
    }

    /// One random subscribe or unsubscribe on a random live node.
    fn step(&mut self, sim: &mut Sim, rng: &mut SmallRng, slots: &[usize]) {
        let slot = slots[rng.random_range(0..slots.len())];
        let name = format!(
            "t/{}/{}",
            rng.random_range(0..6u32),
            rng.random_range(0..4u32)
        );
        if self.sets[slot].remove(&name) {
            sim.unsubscribe(slot, &filter(&name));
        } else {
            self.sets[slot].insert(name.clone());
            sim.subscribe(slot, filter(&name));
        }
    }

    /// The matcher of every node agrees with the owners' sets.
    fn check_matchers(&self, sim: &Sim, slots: &[usize], seed: u64) {
        for topic_a in 0..6 {
            for topic_b in 0..4 {
                let topic = format!("t/{topic_a}/{topic_b}");
                for &holder in slots {
                    let want: Vec<NodeId> = slots
                        .iter()
                        .filter(|o| **o != holder)
                        .filter(|o| self.sets[**o].iter().any(|f| filter_matches(f, &topic)))
                        .map(|o| sim.node_id(*o))
                        .collect();
                    let got = sim.node(holder).interested_nodes(&topic).to_vec();
                    assert_eq!(got, want, "seed {seed}: node {holder} topic {topic}");
                }
            }
        }
    }
}

#[test]
fn routes_converge_under_twenty_percent_loss() {
    for seed in sim::seeds(0x1055) {
        routes_converge_under_twenty_percent_loss_seeded(seed);
    }
}

fn routes_converge_under_twenty_percent_loss_seeded(seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed ^ 1);
    let mut sim = Sim::new(5, seed);
    let all = sim.alive();
    assert!(
        sim.run_until(30 * SECOND, SECOND / 4, |s| s.all_up(&all)),
        "seed {seed}"
    );
    // 20% of everything lost while routes churn: SWIM itself then flaps (false downs, rejoins
    // with new generations), which the route table must also survive.
    sim.set_loss(0.2);
    let mut truth = Truth::new(5);
    for _ in 0..300 {
        truth.step(&mut sim, &mut rng, &all);
        sim.run_for(Duration::from_millis(rng.random_range(0..100)));
    }
    // Route-sync frames keep losing 20%; gossip drops to 5%, where SWIM with the default
    // timeouts no longer flaps, so a quiet moment to check convergence exists.
    sim.gossip_loss = 0.05;
    let converged = sim.run_until(120 * SECOND, SECOND / 2, |s| {
        s.all_up(&all) && s.routes_converged(&all)
    });
    assert!(
        converged,
        "seed {seed}: not converged under loss: mismatches {:?}, all up {}, links {:?}",
        sim.route_mismatches(&all),
        sim.all_up(&all),
        all.iter()
            .map(|&s| sim.node(s).links_up().count())
            .collect::<Vec<_>>()
    );
    truth.check_matchers(&sim, &all, seed);
}

#[test]
fn partition_then_heal_converges_and_removed_routes_stay_removed() {
    for seed in sim::seeds(0x9a27) {
        partition_then_heal_converges_and_removed_routes_stay_removed_seeded(seed);
    }
}

fn partition_then_heal_converges_and_removed_routes_stay_removed_seeded(seed: u64) {
    let mut sim = Sim::new(5, seed);
    let all = sim.alive();
    for &slot in &all {
        sim.subscribe(slot, filter(&format!("keep/{slot}")));
        sim.subscribe(slot, filter(&format!("drop/{slot}")));
    }
    assert!(
        sim.run_until(30 * SECOND, SECOND / 4, |s| s.all_up(&all)
            && s.routes_converged(&all)),
        "seed {seed}"
    );

    sim.partition(&[&[0, 1], &[2, 3, 4]]);
    // Changes on both sides while they cannot talk.
    sim.unsubscribe(0, &filter("drop/0"));
    sim.unsubscribe(3, &filter("drop/3"));
    sim.subscribe(1, filter("new/1"));
    let bound = sim.nodes[0].config.down_detection_bound(5);
    sim.run_for(bound);
    assert!(
        sim.all_up(&[0, 1]) && sim.all_up(&[2, 3, 4]),
        "seed {seed}: sides did not split"
    );
    // Each side serves its own: the other side's routes are gone, its own are in step.
    assert!(sim.node(0).interested_nodes("keep/3").is_empty());
    assert!(sim.routes_converged(&[0, 1]) && sim.routes_converged(&[2, 3, 4]));

    sim.heal();
    let healed = sim.run_until(120 * SECOND, SECOND / 2, |s| {
        s.all_up(&all) && s.routes_converged(&all)
    });
    assert!(
        healed,
        "seed {seed}: no convergence after heal: mismatches {:?}, members {:?}",
        sim.route_mismatches(&all),
        all.iter()
            .map(|&s| sim
                .node(s)
                .members()
                .map(|m| (m.node_id.0, m.generation.0))
                .collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );
    for &slot in &all {
        let node = sim.node(slot);
        assert!(
            node.interested_nodes("drop/0").is_empty(),
            "seed {seed}: removed route came back at {slot}"
        );
        assert!(
            node.interested_nodes("drop/3").is_empty(),
            "seed {seed}: removed route came back at {slot}"
        );
        if slot != 1 {
            assert_eq!(node.interested_nodes("new/1").as_slice(), &[NodeId(2)]);
        }
        if slot != 4 {
            assert_eq!(node.interested_nodes("keep/4").as_slice(), &[NodeId(5)]);
        }
    }
}

#[test]
fn shared_groups_are_seen_across_nodes() {
    for seed in sim::seeds(0x54a) {
        shared_groups_are_seen_across_nodes_seeded(seed);
    }
}

fn shared_groups_are_seen_across_nodes_seeded(seed: u64) {
    let mut sim = Sim::new(3, seed);
    let all = sim.alive();
    let shared = |g: &str| RouteEntry::Shared {
        group: g.into(),
        filter: "jobs/+".into(),
    };
    sim.subscribe(1, shared("workers"));
    sim.subscribe(2, shared("workers"));
    sim.subscribe(2, shared("workers")); // a second local member: no new export
    sim.subscribe(2, shared("audit"));
    assert!(
        sim.run_until(30 * SECOND, SECOND / 4, |s| s.all_up(&all)
            && s.routes_converged(&all)),
        "seed {seed}"
    );
    let groups = sim.node(0).shared_groups("jobs/7");
    assert_eq!(groups.len(), 2);
    assert_eq!(
        (groups[0].group.as_str(), groups[0].nodes.clone()),
        ("audit", vec![NodeId(3)])
    );
    assert_eq!(
        (groups[1].group.as_str(), groups[1].nodes.clone()),
        ("workers", vec![NodeId(2), NodeId(3)])
    );
    // Shared entries are not plain interest.
    assert!(sim.node(0).interested_nodes("jobs/7").is_empty());
    // 2 -> 1 members on node 2 exports nothing; 1 -> 0 removes it.
    sim.unsubscribe(2, &shared("workers"));
    sim.run_for(SECOND);
    assert_eq!(
        sim.node(0).shared_groups("jobs/7")[1].nodes,
        vec![NodeId(2), NodeId(3)]
    );
    sim.unsubscribe(2, &shared("workers"));
    assert!(sim.run_until(10 * SECOND, SECOND / 4, |s| s.routes_converged(&all)));
    assert_eq!(
        sim.node(0).shared_groups("jobs/7")[1].nodes,
        vec![NodeId(2)]
    );
}

#[test]
fn forwarded_publishes_reach_the_peer_once() {
    for seed in sim::seeds(0xf0d) {
        forwarded_publishes_reach_the_peer_once_seeded(seed);
    }
}

fn forwarded_publishes_reach_the_peer_once_seeded(seed: u64) {
    let mut sim = Sim::new(3, seed);
    let all = sim.alive();
    assert!(sim.run_until(30 * SECOND, SECOND / 4, |s| s.all_up(&all)
        && s.routes_converged(&all)));
    assert!(
        sim.run_until(10 * SECOND, SECOND / 4, |s| s.node(0).links_up().count()
            == 2)
    );
    sim.forward(0, NodeId(3), b"publish 1".to_vec());
    sim.forward(0, NodeId(3), b"publish 2".to_vec());
    // No link to an unknown node: the payload comes back.
    assert_eq!(
        sim.node_mut(0).forward(NodeId(42), b"x".to_vec()),
        Err(b"x".to_vec())
    );
    sim.run_for(SECOND);
    let got: Vec<Vec<u8>> = sim
        .events(2)
        .iter()
        .filter_map(|(_, e)| match e {
            ringmq_cluster_gossip::ClusterEvent::Forwarded {
                from: NodeId(1),
                payload,
            } => Some(payload.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        got,
        vec![b"publish 1".to_vec(), b"publish 2".to_vec()],
        "seed {seed}"
    );
}
