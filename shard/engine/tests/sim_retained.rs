//! Retained messages: stored, replaced, cleared by an empty payload, sent on subscribe with
//! RETAIN=1, the v5 Retain Handling and Retain As Published options, and across shards.

mod sim;

use sim::*;
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
