//! The route barrier: on a multi-shard broker a SUBACK that added a route waits until every other
//! shard applied it, so a publish that starts anywhere after the SUBACK reaches the subscriber.
//! And the barrier's entry never outlives the connection waiting on it.

mod sim;

use std::time::Duration;

use ringmq_engine::Limits;
use sim::*;
use wire::{Packet, QoS, ReasonCode};

/// Step by step on two shards with next-step links: the SUBACK leaves only on the third turn
/// (turn 1: route change and barrier out; turn 2: shard 1 applies them and acks; turn 3: the ack
/// arrives, SUBACK), and a publish on shard 1 right after it is delivered.
#[test]
fn suback_waits_for_other_shard() {
    let mut sim = Sim::new(2);
    let (sub, _) = sim.connect(0, v311(&sim.client_id_on(0, "s")));
    let (publisher, _) = sim.connect(1, v311(&sim.client_id_on(1, "p")));
    sim.send(sub, &subscribe(1, &[("fleet/+/cmd", QoS::AtLeastOnce)]));
    sim.step();
    sim.expect_nothing(sub);
    assert_eq!(sim.barriers_pending(), 1);
    sim.step();
    sim.expect_nothing(sub);
    sim.step();
    assert_eq!(
        sim.expect_suback(sub).reason_codes,
        [ReasonCode::GrantedQoS1]
    );
    assert_eq!(sim.barriers_pending(), 0);

    sim.send(
        publisher,
        &publish("fleet/7/cmd", b"go", QoS::AtLeastOnce, Some(1)),
    );
    sim.run_until_idle();
    assert_eq!(&sim.expect_publish(sub).payload[..], b"go");
}

/// A subscription that changes no route (the shard already has the filter) is answered at once,
/// even with the other shard unreachable.
#[test]
fn suback_without_route_change_is_immediate() {
    let mut sim = Sim::new(2);
    let (first, _) = sim.connect(0, v311(&sim.client_id_on(0, "a")));
    sim.subscribe(first, "t", QoS::AtMostOnce);
    sim.hold_link(1, 0);
    let (second, _) = sim.connect(0, v311(&sim.client_id_on(0, "b")));
    sim.send(second, &subscribe(1, &[("t", QoS::AtMostOnce)]));
    sim.step();
    assert!(matches!(sim.expect(second), Packet::SubAck(_)));
    assert_eq!(sim.barriers_pending(), 0);
}

/// With random link delays and three shards: once the subscriber has its SUBACK, a publish read
/// on any shard — handed in on the very next turn — reaches it.
#[test]
fn publish_after_suback_reaches_subscriber_seeded() {
    for seed in seeds(32) {
        let mut sim = Sim::seeded(3, Limits::default(), seed, 4);
        let sub_shard = (seed % 3) as u16;
        let (sub, _) = sim.connect(sub_shard, v5(&sim.client_id_on(sub_shard, "s")));
        let publishers: Vec<Client> = (0..3)
            .map(|shard| {
                sim.connect(shard, v5(&sim.client_id_on(shard, "p")).clone())
                    .0
            })
            .collect();
        sim.send(sub, &subscribe(1, &[("news", QoS::AtMostOnce)]));
        let mut turns = 0;
        let suback = loop {
            sim.step();
            turns += 1;
            assert!(turns < 1000, "no SUBACK");
            if let Some(p) = sim.recv(sub) {
                break p;
            }
        };
        assert!(matches!(suback, Packet::SubAck(_)), "{suback:?}");
        for (i, p) in publishers.iter().enumerate() {
            sim.send(*p, &publish("news", &[i as u8], QoS::AtMostOnce, None));
        }
        sim.run_until_idle();
        let mut got: Vec<u8> = sim
            .recv_all(sub)
            .into_iter()
            .map(|p| match p {
                Packet::Publish(p) => p.payload[0],
                other => panic!("expected PUBLISH, got {other:?}"),
            })
            .collect();
        got.sort_unstable();
        assert_eq!(got, [0, 1, 2], "seed {seed}");
        assert_eq!(sim.barriers_pending(), 0);
    }
}

/// The peer goes away while its SUBACK waits for the barrier: once the barrier completes the
/// connection is closed and no barrier entry is left behind.
#[test]
fn connection_lost_while_suback_waits() {
    let mut sim = Sim::new(2);
    let (sub, _) = sim.connect(0, v311(&sim.client_id_on(0, "s")));
    sim.hold_link(1, 0);
    sim.send(sub, &subscribe(1, &[("t", QoS::AtMostOnce)]));
    sim.run_until_idle();
    assert_eq!(sim.barriers_pending(), 1);
    sim.drop_connection(sub);
    sim.run_until_idle();
    sim.release_link(1, 0);
    sim.run_until_idle();
    assert!(sim.is_closed(sub));
    assert_eq!(sim.barriers_pending(), 0);
    assert_eq!(sim.engine(0).state.sessions_total(), 0);
    assert_eq!(sim.engine(0).connection_count(), 0);
}

/// Taken over while waiting: the old connection closes at once (DISCONNECT 0x8E) and its
/// barrier entry goes with it, before the ack ever arrives; the late ack is ignored.
#[test]
fn taken_over_while_suback_waits() {
    let mut sim = Sim::new(2);
    let id = sim.client_id_on(0, "s");
    let (first, _) = sim.connect(0, v5_persistent(&id, 60));
    sim.hold_link(1, 0);
    sim.send(first, &subscribe(1, &[("t", QoS::AtMostOnce)]));
    sim.run_until_idle();
    assert_eq!(sim.barriers_pending(), 1);
    let (second, ack) = sim.connect(0, v5_persistent(&id, 60));
    assert!(ack.session_present);
    assert_eq!(
        sim.expect_disconnect(first).reason_code,
        ReasonCode::SessionTakenOver
    );
    assert!(sim.is_closed(first));
    assert_eq!(
        sim.barriers_pending(),
        0,
        "barrier entry outlived its connection"
    );
    sim.release_link(1, 0);
    sim.run_until_idle();
    assert_eq!(sim.barriers_pending(), 0);
    sim.expect_nothing(second);
    // The subscription was made before the takeover and belongs to the session.
    let (publisher, _) = sim.connect(1, v5(&sim.client_id_on(1, "p")));
    sim.send(publisher, &publish("t", b"x", QoS::AtMostOnce, None));
    sim.run_until_idle();
    assert_eq!(&sim.expect_publish(second).payload[..], b"x");
}

/// Keepalive runs out while waiting: closed with DISCONNECT 0x8D, the barrier entry removed.
#[test]
fn keepalive_timeout_while_suback_waits() {
    let mut sim = Sim::new(2);
    let mut c = v5(&sim.client_id_on(0, "s"));
    c.keep_alive_secs = 2;
    let (sub, _) = sim.connect(0, c);
    sim.hold_link(1, 0);
    sim.send(sub, &subscribe(1, &[("t", QoS::AtMostOnce)]));
    sim.advance(Duration::from_secs(3));
    assert_eq!(
        sim.expect_disconnect(sub).reason_code,
        ReasonCode::KeepAliveTimeout
    );
    assert!(sim.is_closed(sub));
    assert_eq!(
        sim.barriers_pending(),
        0,
        "barrier entry outlived its connection"
    );
    sim.release_link(1, 0);
    sim.run_until_idle();
    assert_eq!(sim.barriers_pending(), 0);
}

/// Shutdown while waiting: DISCONNECT 0x8B, the barrier entry removed.
#[test]
fn shutdown_while_suback_waits() {
    let mut sim = Sim::new(2);
    let (sub, _) = sim.connect(0, v5(&sim.client_id_on(0, "s")));
    sim.hold_link(1, 0);
    sim.send(sub, &subscribe(1, &[("t", QoS::AtMostOnce)]));
    sim.run_until_idle();
    sim.engines[0].begin_shutdown();
    sim.run_until_idle();
    assert_eq!(
        sim.expect_disconnect(sub).reason_code,
        ReasonCode::ServerShuttingDown
    );
    assert!(sim.is_closed(sub));
    assert_eq!(sim.barriers_pending(), 0);
}

/// Frames after a SUBSCRIBE that waits are held back in order: a PINGREQ sent with it is
/// answered after the SUBACK [MQTT-3.8.4-1 ordering; 4.6 message ordering].
#[test]
fn frames_after_waiting_subscribe_keep_their_order() {
    let mut sim = Sim::new(2);
    let (sub, _) = sim.connect(0, v311(&sim.client_id_on(0, "s")));
    sim.hold_link(1, 0);
    sim.send(sub, &subscribe(1, &[("t", QoS::AtMostOnce)]));
    sim.send(sub, &Packet::PingReq);
    sim.run_until_idle();
    sim.expect_nothing(sub);
    sim.release_link(1, 0);
    sim.run_until_idle();
    assert!(matches!(sim.expect(sub), Packet::SubAck(_)));
    assert_eq!(sim.expect(sub), Packet::PingResp);
}

/// Paho's `test_subscribe_options` shape: a publish read on another shard one turn after the
/// SUBSCRIBE was read (the subscriber has no SUBACK yet) already reaches the subscriber, because
/// a shard applies the batch that carries the route change before the client input of the same
/// turn (with links that deliver on the next turn).
#[test]
fn publish_one_turn_after_subscribe_reaches_subscriber() {
    let mut sim = Sim::new(2);
    let (sub, _) = sim.connect(0, v5(&sim.client_id_on(0, "s")));
    let (publisher, _) = sim.connect(1, v5(&sim.client_id_on(1, "p")));
    sim.send(sub, &subscribe(1, &[("opts", QoS::AtMostOnce)]));
    sim.step();
    sim.expect_nothing(sub);
    sim.send(publisher, &publish("opts", b"early", QoS::AtMostOnce, None));
    sim.run_until_idle();
    assert!(matches!(sim.expect(sub), Packet::SubAck(_)));
    assert_eq!(&sim.expect_publish(sub).payload[..], b"early");
}

/// A publish read on another shard in the same turn as a SUBSCRIBE (before the route change can
/// have arrived there) still reaches the new subscriber: the publishing shard replays it when
/// the route arrives (as the Paho interop tests expect of a publish sent right after another
/// client's SUBSCRIBE, without waiting for its SUBACK).
#[test]
fn publish_racing_a_subscribe_on_another_shard_is_replayed() {
    let mut sim = Sim::new(2);
    let (sub, _) = sim.connect(0, v5(&sim.client_id_on(0, "s")));
    let (publisher, _) = sim.connect(1, v5(&sim.client_id_on(1, "p")));
    sim.tick(Duration::from_millis(1));
    sim.send(sub, &subscribe(1, &[("race/+", QoS::AtLeastOnce)]));
    sim.send(
        publisher,
        &publish("race/1", b"right after", QoS::AtLeastOnce, Some(1)),
    );
    sim.run_until_idle();
    assert_eq!(
        sim.expect_suback(sub).reason_codes,
        [ReasonCode::GrantedQoS1]
    );
    assert_eq!(&sim.expect_publish(sub).payload[..], b"right after");
    sim.expect_nothing(sub);
}

/// A publish accepted well before the subscription existed anywhere is not replayed to it.
#[test]
fn publish_before_the_subscribe_is_not_replayed() {
    let mut sim = Sim::new(2);
    let (sub, _) = sim.connect(0, v5(&sim.client_id_on(0, "s")));
    let (publisher, _) = sim.connect(1, v5(&sim.client_id_on(1, "p")));
    sim.send(
        publisher,
        &publish("early/1", b"before", QoS::AtMostOnce, None),
    );
    sim.run_until_idle();
    sim.advance(Duration::from_millis(50));
    sim.run_until_idle();
    sim.subscribe(sub, "early/+", QoS::AtMostOnce);
    sim.run_until_idle();
    sim.expect_nothing(sub);
}

/// A retained publish read on another shard in the same turn as a SUBSCRIBE reaches the new
/// subscriber exactly once: neither from the publishing shard (the route had not arrived, and
/// retained messages are not replayed) nor from this shard's retained store at SUBSCRIBE time
/// (the store's copy was still in flight) would deliver it on their own. Seen end to end as a
/// `mosquitto_sub` missing a retained probe published right after it connected on another shard.
#[test]
fn retained_publish_racing_a_subscribe_on_another_shard_is_delivered_once() {
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut sim = Sim::new(2);
        let (sub, _) = sim.connect(0, v5(&sim.client_id_on(0, "s")));
        let (publisher, _) = sim.connect(1, v5(&sim.client_id_on(1, "p")));
        sim.tick(Duration::from_millis(1));
        sim.send(sub, &subscribe(1, &[("race/+", QoS::ExactlyOnce)]));
        let id = (qos != QoS::AtMostOnce).then_some(1);
        sim.send(publisher, &publish_retained("race/1", b"probe", qos, id));
        sim.run_until_idle();
        assert_eq!(
            sim.expect_suback(sub).reason_codes,
            [ReasonCode::GrantedQoS2],
            "{qos:?}"
        );
        assert_eq!(&sim.expect_publish(sub).payload[..], b"probe", "{qos:?}");
        sim.expect_nothing(sub);
    }
}

/// The other order of the same race: the retained store here already had the publish when the
/// subscription scanned it, but the SUBSCRIBE's bytes arrived before the publish was accepted,
/// so the publishing shard replays it too. The subscriber gets it once (from the scan, with
/// RETAIN=1 [MQTT-3.3.1-9]), not twice.
#[test]
fn retained_publish_in_the_store_and_replayed_is_delivered_once() {
    let mut sim = Sim::new(2);
    let (sub, _) = sim.connect(0, v5(&sim.client_id_on(0, "s")));
    let (publisher, _) = sim.connect(1, v5(&sim.client_id_on(1, "p")));
    sim.run_until_idle();
    let subscribe_arrived = sim.now();
    sim.tick(Duration::from_millis(1));
    sim.send(
        publisher,
        &publish_retained("race/1", b"probe", QoS::AtLeastOnce, Some(1)),
    );
    // Shard 1 accepts it and sends shard 0 its copy for the store.
    sim.step();
    // Shard 0 reads the SUBSCRIBE, which reached its socket before the publish was accepted.
    sim.engine_mut(0).set_input_floor(subscribe_arrived);
    sim.send(sub, &subscribe(1, &[("race/+", QoS::AtLeastOnce)]));
    sim.run_until_idle();
    assert_eq!(
        sim.expect_suback(sub).reason_codes,
        [ReasonCode::GrantedQoS1]
    );
    let p = sim.expect_publish(sub);
    assert_eq!(&p.payload[..], b"probe");
    assert!(p.retain, "from the retained store");
    sim.expect_nothing(sub);
    assert!(
        sim.engine(1).state.counters.publishes_replayed > 0,
        "the publishing shard replayed it (the case this test is about)"
    );
}
