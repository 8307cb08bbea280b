//! Shared subscriptions (`$share/{group}/{filter}`, MQTT 5 4.8.2): each message goes to exactly
//! one member of each group, across shards, in turn.

mod sim;

use std::collections::HashMap;

use ringmq_engine::Limits;
use sim::*;
use wire::{Packet, QoS};

/// Connects one member per entry of `shards` (on that shard) and subscribes it to `filter`.
fn members(sim: &mut Sim, shards: &[u16], filter: &str, qos: QoS) -> Vec<Client> {
    shards
        .iter()
        .enumerate()
        .map(|(i, &shard)| {
            let id = sim.client_id_on(shard, &format!("member{i}"));
            let (m, _) = sim.connect(shard, v5(&id));
            sim.subscribe(m, filter, qos);
            m
        })
        .collect()
}

/// Payloads each member received (acknowledging QoS 1 as it goes).
fn drain(sim: &mut Sim, clients: &[Client]) -> Vec<Vec<u32>> {
    clients
        .iter()
        .map(|&c| {
            let mut got = Vec::new();
            loop {
                let packets = sim.recv_all(c);
                if packets.is_empty() {
                    break;
                }
                for p in packets {
                    let Packet::Publish(p) = p else {
                        panic!("expected PUBLISH, got {p:?}");
                    };
                    if let Some(id) = p.packet_id {
                        sim.send(c, &puback(id.get()));
                    }
                    let bytes: [u8; 4] = p.payload[..].try_into().unwrap_or_default();
                    got.push(u32::from_be_bytes(bytes));
                }
                sim.run_until_idle();
            }
            got
        })
        .collect()
}

/// MQTT 5 4.8.2: a message to a shared group is sent to only one member. Two members on two
/// shards, one publisher: each message reaches exactly one member, and they take turns.
#[test]
fn one_member_per_message_round_robin_across_shards() {
    let mut sim = Sim::new(2);
    let group = members(&mut sim, &[0, 1], "$share/g/telemetry/#", QoS::AtMostOnce);
    let (publisher, _) = sim.connect(0, v5(&sim.client_id_on(0, "car")));
    for i in 0..10u32 {
        sim.send(
            publisher,
            &publish("telemetry/speed", &i.to_be_bytes(), QoS::AtMostOnce, None),
        );
        sim.run_until_idle();
    }
    let got = drain(&mut sim, &group);
    assert_eq!(got[0].len() + got[1].len(), 10, "{got:?}");
    assert_eq!(got[0].len(), 5, "{got:?}");
    assert_eq!(got[1].len(), 5, "{got:?}");
    // Turns alternate: consecutive messages go to different members.
    let mut owner = [0usize; 10];
    for (m, list) in got.iter().enumerate() {
        for &i in list {
            owner[i as usize] = m;
        }
    }
    assert!(owner.windows(2).all(|w| w[0] != w[1]), "{owner:?}");
}

/// Four members on three shards, publishers on every shard, random link delays, QoS 1: every
/// message is delivered exactly once in the group; a normal subscriber beside the group gets
/// every message too.
#[test]
fn exactly_once_in_group_seeded() {
    for seed in seeds(16) {
        let mut sim = Sim::seeded(3, Limits::default(), seed, 3);
        let group = members(
            &mut sim,
            &[0, 1, 1, 2],
            "$share/workers/jobs",
            QoS::AtLeastOnce,
        );
        let (audit, _) = sim.connect(2, v5(&sim.client_id_on(2, "audit")));
        sim.subscribe(audit, "jobs", QoS::AtMostOnce);
        let publishers: Vec<Client> = (0..3)
            .map(|shard| sim.connect(shard, v5(&sim.client_id_on(shard, "pub"))).0)
            .collect();
        let total = 60u32;
        for i in 0..total {
            let p = publishers[(sim.rng().next_u64() % 3) as usize];
            sim.send(
                p,
                &publish(
                    "jobs",
                    &i.to_be_bytes(),
                    QoS::AtLeastOnce,
                    Some(1 + i as u16),
                ),
            );
            if sim.rng().upto(2) == 0 {
                sim.step();
            }
        }
        sim.run_until_idle();
        let got = drain(&mut sim, &group);
        let mut seen: HashMap<u32, usize> = HashMap::new();
        for list in &got {
            for &i in list {
                *seen.entry(i).or_default() += 1;
            }
        }
        assert_eq!(
            seen.len(),
            total as usize,
            "seed {seed}: lost messages {got:?}"
        );
        assert!(
            seen.values().all(|&n| n == 1),
            "seed {seed}: duplicates {got:?}"
        );
        assert!(
            got.iter().all(|l| !l.is_empty()),
            "seed {seed}: idle member {got:?}"
        );
        assert_eq!(drain(&mut sim, &[audit])[0].len(), total as usize);
    }
}

/// A member leaves on its shard before the publishing shard learns of it: the pick for that shard
/// is passed on to a shard that still has a member, so the message is not lost.
#[test]
fn pick_for_a_shard_whose_member_left_is_passed_on() {
    let mut sim = Sim::new(2);
    let group = members(&mut sim, &[0, 1], "$share/g/t", QoS::AtMostOnce);
    let (publisher, _) = sim.connect(0, v5(&sim.client_id_on(0, "p")));
    // Shard 1's route removal is held, so shard 0 still picks shard 1.
    sim.hold_link(1, 0);
    sim.send(group[1], &disconnect(wire::ReasonCode::Success));
    sim.run_until_idle();
    assert!(sim.is_closed(group[1]));
    for i in 0..4u32 {
        sim.send(
            publisher,
            &publish("t", &i.to_be_bytes(), QoS::AtMostOnce, None),
        );
        sim.run_until_idle();
    }
    sim.release_link(1, 0);
    sim.run_until_idle();
    let got = drain(&mut sim, &group[..1]);
    let mut all = got[0].clone();
    all.sort_unstable();
    assert_eq!(all, [0, 1, 2, 3]);
}

/// No-local on a shared subscription is a Protocol Error [MQTT-3.8.3-4]: DISCONNECT 0x82, close.
#[test]
fn no_local_on_shared_is_protocol_error() {
    let mut sim = Sim::new(1);
    let (c, _) = sim.connect(0, v5("c"));
    let sub = match subscribe(1, &[("$share/g/t", QoS::AtMostOnce)]) {
        Packet::Subscribe(mut s) => {
            s.filters[0].1.no_local = true;
            Packet::Subscribe(s)
        }
        other => other,
    };
    sim.send(c, &sub);
    sim.run_until_idle();
    assert_eq!(
        sim.expect_disconnect(c).reason_code,
        wire::ReasonCode::ProtocolError
    );
    assert!(sim.is_closed(c));
}

/// Retained messages are not sent to a new shared subscription (4.8.2).
#[test]
fn no_retained_for_shared_subscription() {
    let mut sim = Sim::new(2);
    let (publisher, _) = sim.connect(0, v5(&sim.client_id_on(0, "p")));
    sim.send(
        publisher,
        &publish_retained("t", b"r", QoS::AtMostOnce, None),
    );
    sim.run_until_idle();
    let group = members(&mut sim, &[1], "$share/g/t", QoS::AtMostOnce);
    sim.expect_nothing(group[0]);
}
