//! Retained messages: stored, replaced, cleared by an empty payload, sent on subscribe with
//! RETAIN=1, the v5 Retain Handling and Retain As Published options, and across shards.

mod sim;

use sim::*;
use std::time::Duration;

use wire::{Packet, QoS, RetainHandling};

/// 3.1.1 [MQTT-3.3.1-5] stored; [MQTT-3.3.1-6] sent to a new subscription; [MQTT-3.3.1-8] with
/// RETAIN=1; [MQTT-3.3.1-9] a live delivery to an existing subscription has RETAIN=0.
#[test]
fn stored_and_sent_on_subscribe_with_retain_flag() {
    for (pub_shard, sub_shard) in [(0, 0), (0, 1), (1, 0)] {
        let mut sim = Sim::new(2);
        let (publisher, _) = sim.connect(pub_shard, v311(&sim.client_id_on(pub_shard, "p")));
        sim.send(
            publisher,
            &publish_retained("r/1", b"v1", QoS::AtMostOnce, None),
        );
        sim.send(
            publisher,
            &publish_retained("r/1", b"v2", QoS::AtMostOnce, None),
        );
        sim.send(
            publisher,
            &publish_retained("r/2", b"w", QoS::AtMostOnce, None),
        );
        sim.run_until_idle();
        for shard in 0..2 {
            assert_eq!(sim.engine(shard).state.retained_count(), 2, "shard {shard}");
        }

        let (sub, _) = sim.connect(sub_shard, v311(&sim.client_id_on(sub_shard, "s")));
        sim.send(sub, &subscribe(1, &[("r/#", QoS::AtLeastOnce)]));
        sim.run_until_idle();
        // SUBACK first, then the retained messages.
        assert!(matches!(sim.expect(sub), Packet::SubAck(_)));
        let mut got: Vec<(String, Vec<u8>, bool)> = sim
            .recv_all(sub)
            .into_iter()
            .map(|p| match p {
                Packet::Publish(p) => (p.topic.as_str().to_owned(), p.payload.to_vec(), p.retain),
                other => panic!("expected PUBLISH, got {other:?}"),
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("r/1".to_owned(), b"v2".to_vec(), true),
                ("r/2".to_owned(), b"w".to_vec(), true)
            ]
        );

        // A retained publish to the existing subscription: delivered with RETAIN=0.
        sim.send(
            publisher,
            &publish_retained("r/1", b"v3", QoS::AtMostOnce, None),
        );
        sim.run_until_idle();
        let p = sim.expect_publish(sub);
        assert_eq!(&p.payload[..], b"v3");
        assert!(!p.retain);
    }
}

/// 3.1.1 [MQTT-3.3.1-10] an empty retained payload removes the retained message (it is still
/// delivered to current subscribers); [MQTT-3.3.1-11] and it is not stored itself.
#[test]
fn empty_payload_clears() {
    let mut sim = Sim::new(2);
    let (publisher, _) = sim.connect(0, v311(&sim.client_id_on(0, "p")));
    let (watcher, _) = sim.connect(1, v311(&sim.client_id_on(1, "w")));
    sim.subscribe(watcher, "r/x", QoS::AtMostOnce);
    sim.send(
        publisher,
        &publish_retained("r/x", b"set", QoS::AtMostOnce, None),
    );
    sim.send(
        publisher,
        &publish_retained("r/x", b"", QoS::AtMostOnce, None),
    );
    sim.run_until_idle();
    assert_eq!(&sim.expect_publish(watcher).payload[..], b"set");
    assert!(sim.expect_publish(watcher).payload.is_empty());
    for shard in 0..2 {
        assert_eq!(sim.engine(shard).state.retained_count(), 0, "shard {shard}");
    }
    for shard in 0..2 {
        let (sub, _) = sim.connect(shard, v311(&sim.client_id_on(shard, "late")));
        sim.subscribe(sub, "r/#", QoS::AtMostOnce);
        sim.expect_nothing(sub);
    }
}

/// v5 Retain Handling: 0 sends on every subscribe [MQTT-3.3.1-9], 1 only when the subscription is
/// new [MQTT-3.3.1-10], 2 never [MQTT-3.3.1-11].
#[test]
fn v5_retain_handling() {
    let mut sim = Sim::new(1);
    let (publisher, _) = sim.connect(0, v5("p"));
    sim.send(
        publisher,
        &publish_retained("rh", b"kept", QoS::AtMostOnce, None),
    );
    sim.run_until_idle();
    let (sub, _) = sim.connect(0, v5("s"));

    let cases = [
        (RetainHandling::SendAtSubscribe, [true, true]),
        (RetainHandling::SendAtSubscribeIfNew, [true, false]),
        (RetainHandling::DoNotSend, [false, false]),
    ];
    let mut packet_id = 1;
    for (handling, expected) in cases {
        for (round, want) in expected.into_iter().enumerate() {
            sim.send(
                sub,
                &subscribe_with(packet_id, "rh", QoS::AtMostOnce, handling, false),
            );
            packet_id += 1;
            sim.run_until_idle();
            assert!(matches!(sim.expect(sub), Packet::SubAck(_)));
            let got = sim.recv_all(sub);
            assert_eq!(
                got.len(),
                usize::from(want),
                "{handling:?} round {round}: {got:?}"
            );
            if let Some(Packet::Publish(p)) = got.first() {
                assert!(p.retain);
            }
        }
        sim.send(
            sub,
            &Packet::Unsubscribe(wire::Unsubscribe {
                packet_id: pid(100),
                filters: vec!["rh".into()],
                properties: Default::default(),
            }),
        );
        sim.run_until_idle();
        assert!(matches!(sim.expect(sub), Packet::UnsubAck(_)));
    }
}

/// v5 Retain As Published: with it a live delivery keeps the publisher's RETAIN=1
/// [MQTT-3.3.1-13]; without it RETAIN is 0 [MQTT-3.3.1-12].
#[test]
fn v5_retain_as_published() {
    let mut sim = Sim::new(1);
    let (publisher, _) = sim.connect(0, v5("p"));
    let (rap, _) = sim.connect(0, v5("rap"));
    let (plain, _) = sim.connect(0, v5("plain"));
    let dont_send = RetainHandling::DoNotSend;
    sim.send(
        rap,
        &subscribe_with(1, "live", QoS::AtMostOnce, dont_send, true),
    );
    sim.send(
        plain,
        &subscribe_with(1, "live", QoS::AtMostOnce, dont_send, false),
    );
    sim.run_until_idle();
    sim.expect_suback(rap);
    sim.expect_suback(plain);
    sim.send(
        publisher,
        &publish_retained("live", b"now", QoS::AtMostOnce, None),
    );
    sim.run_until_idle();
    assert!(sim.expect_publish(rap).retain);
    assert!(!sim.expect_publish(plain).retain);
}

/// Across shards, a retained QoS 1 publish is acknowledged only once every shard stores it, so
/// a subscriber anywhere that subscribes after the PUBACK gets it.
#[test]
fn retained_qos1_acked_after_every_shard_stores() {
    for seed in seeds(16) {
        let mut sim = Sim::seeded(3, Default::default(), seed, 3);
        let (publisher, _) = sim.connect(0, v5(&sim.client_id_on(0, "p")));
        // Hold shard 2's answers: the PUBACK must wait for them.
        sim.hold_link(2, 0);
        sim.send(
            publisher,
            &publish_retained("cfg", b"on", QoS::AtLeastOnce, Some(3)),
        );
        sim.run_until_idle();
        sim.expect_nothing(publisher);
        assert_eq!(sim.engine(2).state.retained_count(), 1);
        sim.release_link(2, 0);
        sim.run_until_idle();
        assert!(matches!(sim.expect(publisher), Packet::PubAck(a) if a.packet_id == pid(3)));
        for shard in 0..3 {
            let (sub, _) = sim.connect(shard, v5(&sim.client_id_on(shard, "s")));
            sim.subscribe(sub, "cfg", QoS::AtLeastOnce);
            let p = sim.expect_publish(sub);
            assert!(p.retain && &p.payload[..] == b"on", "shard {shard}: {p:?}");
        }
        assert_eq!(sim.barriers_pending(), 0);
    }
}

/// The retained message a subscriber gets on `shard` for `topic` (None if none).
fn retained_on(sim: &mut Sim, shard: u16, topic: &str) -> Option<Vec<u8>> {
    let id = sim.client_id_on(shard, &format!("probe-{}", sim.elapsed().as_nanos()));
    let (probe, _) = sim.connect(shard, v311(&id));
    sim.subscribe(probe, topic, QoS::AtMostOnce);
    let got = sim.recv(probe).map(|p| match p {
        Packet::Publish(p) => p.payload.to_vec(),
        other => panic!("expected PUBLISH, got {other:?}"),
    });
    sim.send(probe, &disconnect(wire::ReasonCode::Success));
    sim.run_until_idle();
    got
}

/// Two shards set and clear one retained topic concurrently (each learns of the other's update
/// only after its own): every shard must end up with the same retained state, whatever the
/// order — the later update wins everywhere.
#[test]
fn concurrent_set_and_clear_converge() {
    for (set_at, clear_at) in [(0u64, 1u64), (1, 0), (0, 0)] {
        let mut sim = Sim::new(2);
        let (a, _) = sim.connect(0, v311(&sim.client_id_on(0, "a")));
        let (b, _) = sim.connect(1, v311(&sim.client_id_on(1, "b")));
        sim.send(a, &publish_retained("cfg", b"old", QoS::AtMostOnce, None));
        sim.run_until_idle();
        // Handed in on the same turn, possibly at different times: neither shard has seen the
        // other's update when it handles its own.
        sim.advance(std::time::Duration::from_secs(1));
        let first = set_at.min(clear_at);
        let gap = set_at.max(clear_at) - first;
        let (earlier, later) = if set_at <= clear_at {
            ((a, b"new".as_slice()), (b, b"".as_slice()))
        } else {
            ((b, b"".as_slice()), (a, b"new".as_slice()))
        };
        sim.send(
            earlier.0,
            &publish_retained("cfg", earlier.1, QoS::AtMostOnce, None),
        );
        sim.hold_link(0, 1);
        sim.hold_link(1, 0);
        sim.step();
        if gap > 0 {
            sim.advance(std::time::Duration::from_secs(gap));
        }
        sim.send(
            later.0,
            &publish_retained("cfg", later.1, QoS::AtMostOnce, None),
        );
        sim.step();
        sim.release_link(0, 1);
        sim.release_link(1, 0);
        sim.run_until_idle();
        let on0 = retained_on(&mut sim, 0, "cfg");
        let on1 = retained_on(&mut sim, 1, "cfg");
        assert_eq!(
            on0, on1,
            "shards diverged (set at +{set_at} s, clear at +{clear_at} s)"
        );
        if gap > 0 {
            let expected = if later.1.is_empty() {
                None
            } else {
                Some(later.1.to_vec())
            };
            assert_eq!(on0, expected, "the later update did not win");
        }
    }
}

/// Within one shard and one turn (every update carries the turn's time) the order of arrival
/// decides: clear then set keeps the set, set then clear keeps nothing — on every shard.
#[test]
fn same_turn_updates_apply_in_order() {
    let mut sim = Sim::new(2);
    let (a, _) = sim.connect(0, v311(&sim.client_id_on(0, "a")));
    sim.send(a, &publish_retained("x", b"old", QoS::AtMostOnce, None));
    sim.send(a, &publish_retained("x", b"", QoS::AtMostOnce, None));
    sim.send(a, &publish_retained("x", b"kept", QoS::AtMostOnce, None));
    sim.send(a, &publish_retained("y", b"gone", QoS::AtMostOnce, None));
    sim.send(a, &publish_retained("y", b"", QoS::AtMostOnce, None));
    sim.run_until_idle();
    for shard in 0..2 {
        assert_eq!(
            retained_on(&mut sim, shard, "x"),
            Some(b"kept".to_vec()),
            "shard {shard}"
        );
        assert_eq!(retained_on(&mut sim, shard, "y"), None, "shard {shard}");
    }
}

/// Two shards set one retained topic in the same instant, each before seeing the other's: both
/// end with the same message (ties between shards break by shard id).
#[test]
fn concurrent_sets_converge() {
    for delay_first in [false, true] {
        let mut sim = Sim::new(2);
        let (a, _) = sim.connect(0, v311(&sim.client_id_on(0, "a")));
        let (b, _) = sim.connect(1, v311(&sim.client_id_on(1, "b")));
        sim.hold_link(0, 1);
        sim.hold_link(1, 0);
        sim.send(
            a,
            &publish_retained("cfg", b"from-0", QoS::AtMostOnce, None),
        );
        sim.send(
            b,
            &publish_retained("cfg", b"from-1", QoS::AtMostOnce, None),
        );
        sim.step();
        if delay_first {
            sim.release_link(1, 0);
            sim.run_until_idle();
        }
        sim.release_link(0, 1);
        sim.release_link(1, 0);
        sim.run_until_idle();
        let on0 = retained_on(&mut sim, 0, "cfg");
        let on1 = retained_on(&mut sim, 1, "cfg");
        assert_eq!(on0, on1, "shards diverged");
    }
}

/// Hands node `from`'s retained set and remembered clears to node `to`, as a peer link coming up
/// does (`ShardState::sync_retained_to` on `from`, each record into `Engine::publish_from_peer`
/// on `to`, its age carried as the forward record carries it). Both sims' clocks advance
/// together in these tests, so an age on one is the same span on the other.
fn sync_retained(from: &mut Sim, to: &mut Sim, peer: u64) -> usize {
    use ringmq_engine::message::PeerNode;
    // What `from` forwarded while cut off never arrived (the partition).
    from.engine_mut(0).state.take_cluster_forwards();
    let count = from.engine_mut(0).state.sync_retained_to(PeerNode(peer));
    let now_from = from.now();
    let now_to = to.now();
    for f in from.engine_mut(0).state.take_cluster_forwards() {
        assert!(f.retained_sync);
        let age = now_from.saturating_duration_since(f.message.received_at);
        to.engine_mut(0)
            .publish_from_peer(f.message.publish.clone(), age, &[], true, now_to);
    }
    to.run_until_idle();
    count
}

fn clustered(sim: &mut Sim, node: u64) {
    for shard in 0..2 {
        sim.engine_mut(shard).state.enable_cluster(node);
    }
}

/// A topic cleared on node A [MQTT-3.3.1-10] while node B was cut off is cleared on B when the
/// link comes up (the clear travels with A's retained set), on every shard of B; a message B
/// retained after that clear is newer and stays (last writer wins by the origin's time).
#[test]
fn a_clear_made_during_a_partition_reaches_the_peer_after_the_heal() {
    let mut a = Sim::new(2);
    let mut b = Sim::new(2);
    clustered(&mut a, 1);
    clustered(&mut b, 2);
    let (pa, _) = a.connect(0, v311(""));
    let (pb, _) = b.connect(1, v311(""));
    b.send(
        pb,
        &publish_retained("car/1/state", b"old", QoS::AtMostOnce, None),
    );
    b.send(
        pb,
        &publish_retained("car/2/state", b"old", QoS::AtMostOnce, None),
    );
    b.run_until_idle();
    a.advance(Duration::from_secs(5));
    b.advance(Duration::from_secs(5));
    // On A (cut off from B): set, then clear both topics.
    for topic in ["car/1/state", "car/2/state"] {
        a.send(pa, &publish_retained(topic, b"x", QoS::AtMostOnce, None));
        a.send(pa, &publish_retained(topic, b"", QoS::AtMostOnce, None));
    }
    a.run_until_idle();
    a.advance(Duration::from_secs(1));
    b.advance(Duration::from_secs(1));
    // B retains car/2 again after A's clear: newer, it must survive the heal.
    b.send(
        pb,
        &publish_retained("car/2/state", b"new", QoS::AtMostOnce, None),
    );
    b.run_until_idle();
    a.advance(Duration::from_secs(1));
    b.advance(Duration::from_secs(1));

    assert_eq!(
        sync_retained(&mut a, &mut b, 2),
        2,
        "two clears, nothing retained"
    );
    for shard in 0..2 {
        assert_eq!(b.engine(shard).state.retained_count(), 1, "shard {shard}");
    }
    let (sub, _) = b.connect(0, v311(""));
    b.send(sub, &subscribe(1, &[("car/#", QoS::AtMostOnce)]));
    b.run_until_idle();
    assert!(matches!(b.expect(sub), Packet::SubAck(_)));
    let got: Vec<(String, Vec<u8>)> = b
        .recv_all(sub)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((p.topic.as_str().to_owned(), p.payload.to_vec())),
            _ => None,
        })
        .collect();
    assert_eq!(got, vec![("car/2/state".to_owned(), b"new".to_vec())]);

    // And back: B's set reaches A (A's clear of car/2 is older than it).
    sync_retained(&mut b, &mut a, 1);
    assert_eq!(a.engine(0).state.retained_count(), 1);
}
