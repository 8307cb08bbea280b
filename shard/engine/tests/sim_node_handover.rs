//! A session moving between two nodes of a cluster, at the engine level: node A's home shard
//! gives the session up (`ShardState::hand_over`) and node B's installs it
//! (`ShardState::install_image`) before the client's CONNECT attaches there. Two `Sim`s stand
//! for the two nodes; the claim protocol that carries the image between them is tested in
//! `cluster-gossip` (`handover.rs`).

mod sim;

use sim::*;
use wire::{QoS, ReasonCode};

/// [MQTT-3.1.4-3] the old connection on A gets DISCONNECT 0x8E; on B the client sees session
/// present [MQTT-3.2.2-3], the unacknowledged QoS 1 message again with DUP and its packet id
/// [MQTT-4.4.0-1], and a queued one after it; its subscription works on B.
#[test]
fn session_moves_with_inflight_and_queued_messages() {
    let mut a = Sim::new(2);
    let mut b = Sim::new(2);
    let id = a.client_id_on(1, "vehicle");
    let home = 1;
    let (first, _) = a.connect(0, v5_persistent(&id, 300));
    let granted = a.subscribe(first, "cmd/#", QoS::AtLeastOnce);
    assert_eq!(granted.reason_codes, [ReasonCode::GrantedQoS1]);
    let (ops, _) = a.connect(0, v5(&a.client_id_on(0, "ops")));
    a.send(ops, &publish("cmd/unlock", b"1", QoS::AtLeastOnce, Some(1)));
    a.run_until_idle();
    let original = a.expect_publish(first);
    let packet_id = packet_id_of(&original);

    let now = a.now();
    let image = a
        .engine_mut(home)
        .state
        .hand_over(&id, false, now)
        .expect("A has the session");
    a.run_until_idle();
    assert_eq!(
        a.expect_disconnect(first).reason_code,
        ReasonCode::SessionTakenOver
    );
    assert!(a.is_closed(first));
    assert_eq!(a.engine(home).state.sessions_total(), 0);
    assert_eq!(image.inflight.len(), 1);
    assert_eq!(image.subscriptions.len(), 1);

    let now = b.now();
    let installed = b.engine_mut(home).state.install_image(image, now);
    assert_eq!(installed, ringmq_engine::state::Installed::Session);
    let (second, ack) = b.connect(0, v5_persistent(&id, 300));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(ack.session_present);
    let again = b.expect_publish(second);
    assert!(again.dup);
    assert_eq!(packet_id_of(&again), packet_id);
    assert_eq!(&again.payload[..], b"1");
    b.send(second, &puback(packet_id));
    b.run_until_idle();
    assert_eq!(b.engine(home).state.queued_messages(), 0);

    // The subscription came along: a publish on B reaches the new connection.
    let (ops_b, _) = b.connect(0, v5(&b.client_id_on(0, "ops")));
    b.send(ops_b, &publish("cmd/lock", b"2", QoS::AtLeastOnce, Some(1)));
    b.run_until_idle();
    let p = b.expect_publish(second);
    assert_eq!(&p.payload[..], b"2");
    assert_eq!(b.engine(home).state.counters.sessions_handed_in, 1);
}

/// A clean start on the claiming node ends the session where it was: nothing travels, and the
/// old connection's will is published there [MQTT-3.1.2-8].
#[test]
fn clean_start_claim_ends_the_session_and_publishes_the_will() {
    let mut a = Sim::new(1);
    let id = "car-clean";
    let mut connect = v5_persistent(id, 300);
    connect.will = Some(wire::LastWill {
        topic: wire::Utf8Bytes::from("status/car-clean"),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let (first, _) = a.connect(0, connect);
    let (watcher, _) = a.connect(0, v5("watcher"));
    a.subscribe(watcher, "status/#", QoS::AtMostOnce);
    let now = a.now();
    assert!(a.engine_mut(0).state.hand_over(id, true, now).is_none());
    a.run_until_idle();
    assert!(a.is_closed(first));
    assert_eq!(&a.expect_publish(watcher).payload[..], b"gone");
    assert_eq!(a.engine(0).state.sessions_total(), 1, "only the watcher's");
}

/// An image for an id whose client is connected here again (its claim timed out and it went
/// on) is not installed: the local connection is newer.
#[test]
fn an_image_does_not_replace_an_online_session() {
    let mut a = Sim::new(1);
    let mut b = Sim::new(1);
    let id = "car-late";
    let (_on_a, _) = a.connect(0, v5_persistent(id, 300));
    let now = a.now();
    let image = a
        .engine_mut(0)
        .state
        .hand_over(id, false, now)
        .expect("session");
    let (on_b, _) = b.connect(0, v5_persistent(id, 300));
    let now = b.now();
    let installed = b.engine_mut(0).state.install_image(image, now);
    assert_eq!(installed, ringmq_engine::state::Installed::Refused);
    assert_eq!(b.engine(0).state.counters.takeover_images_discarded, 1);
    assert!(!b.is_closed(on_b));
}

/// Turns on cluster mode on every shard of `sim` as node `node_id`.
fn clustered(sim: &mut Sim, shards: u16, node_id: u64) {
    for shard in 0..shards {
        sim.engine_mut(shard).state.enable_cluster(node_id);
    }
}

/// The whole claim path through the engines of two nodes, with the test standing in for the
/// cluster runtime that carries the messages (`shard/src/cluster`): on B a CONNECT accepted on
/// shard 0 for an id homed on shard 1 is held (no CONNACK) while shard 0 hands the claim to the
/// runtime; A's shard 0 passes the peer's claim to the home shard, which closes the old
/// connection (0x8E) and answers with the session; B installs it and only then answers the
/// CONNECT, with session present and the in-flight message again [MQTT-4.4.0-1].
#[test]
fn a_held_connect_resumes_the_session_its_claim_brought() {
    use ringmq_engine::message::{ClaimRequest, PeerNode};
    let mut a = Sim::new(2);
    let mut b = Sim::new(2);
    clustered(&mut a, 2, 1);
    clustered(&mut b, 2, 2);
    let id = a.client_id_on(1, "vehicle");
    // A's own connect claims too; the runtime (here: the test) finds no peer that has it.
    let first = a.open(0);
    a.send(
        first,
        &wire::Packet::Connect(Box::new(v5_persistent(&id, 300))),
    );
    a.run_until_idle();
    let Some(ClaimRequest::Start { token, .. }) = a.engine_mut(0).state.take_cluster_claims().pop()
    else {
        panic!("A's connect claims its id");
    };
    let now = a.now();
    a.engine_mut(0).claim_done(token, true, Vec::new(), now);
    a.run_until_idle();
    assert_eq!(a.expect_connack(first).reason_code, ReasonCode::Success);
    a.subscribe(first, "cmd/#", QoS::AtLeastOnce);
    // The publisher has an assigned id: no claim.
    let (ops, _) = a.connect(0, v5(""));
    a.send(ops, &publish("cmd/unlock", b"1", QoS::AtLeastOnce, Some(1)));
    a.run_until_idle();
    let packet_id = packet_id_of(&a.expect_publish(first));

    let second = b.open(0);
    b.send(
        second,
        &wire::Packet::Connect(Box::new(v5_persistent(&id, 300))),
    );
    b.run_until_idle();
    b.expect_nothing(second);
    let mut claims = b.engine_mut(0).state.take_cluster_claims();
    assert_eq!(claims.len(), 1);
    let Some(ClaimRequest::Start {
        token,
        client_id,
        clean_start,
    }) = claims.pop()
    else {
        panic!("expected a claim start, got {claims:?}");
    };
    assert_eq!(
        (&*client_id, clean_start, token.shard),
        (id.as_str(), false, 1)
    );

    let now = a.now();
    a.engine_mut(0)
        .state
        .peer_claim(PeerNode(2), 7, client_id, clean_start, now);
    a.run_until_idle();
    assert_eq!(
        a.expect_disconnect(first).reason_code,
        ReasonCode::SessionTakenOver
    );
    let mut answers = a.engine_mut(0).state.take_cluster_claims();
    let Some(ClaimRequest::Answer(answer)) = answers.pop() else {
        panic!("expected an answer, got {answers:?}");
    };
    assert_eq!((answer.to, answer.claim), (PeerNode(2), 7));
    let image = answer.image.expect("A handed the session over");
    assert_eq!(a.engine(1).state.counters.sessions_handed_out, 1);

    let now = b.now();
    b.engine_mut(0).claim_done(token, true, vec![*image], now);
    b.run_until_idle();
    let ack = b.expect_connack(second);
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(ack.session_present);
    let again = b.expect_publish(second);
    assert!(again.dup);
    assert_eq!(packet_id_of(&again), packet_id);
    assert_eq!(b.engine(1).state.counters.takeover_claims, 1);
}

/// A claim that lost to a concurrent connect on a peer refuses the held CONNECT as busy
/// (v5 0x89); an empty client id gets an id that names the node and claims nothing.
#[test]
fn a_lost_claim_refuses_the_connect_and_assigned_ids_claim_nothing() {
    use ringmq_engine::message::ClaimRequest;
    let mut b = Sim::new(1);
    clustered(&mut b, 1, 9);
    let held = b.open(0);
    b.send(held, &wire::Packet::Connect(Box::new(v5("car-twice"))));
    b.run_until_idle();
    b.expect_nothing(held);
    let Some(ClaimRequest::Start { token, .. }) = b.engine_mut(0).state.take_cluster_claims().pop()
    else {
        panic!("expected a claim");
    };
    let now = b.now();
    b.engine_mut(0).claim_done(token, false, Vec::new(), now);
    b.run_until_idle();
    assert_eq!(b.expect_connack(held).reason_code, ReasonCode::ServerBusy);
    assert!(b.is_closed(held));
    assert_eq!(b.engine(0).state.counters.takeover_claims_lost, 1);

    let (anon, ack) = b.connect(0, v5(""));
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let assigned = ack
        .properties
        .assigned_client_identifier
        .expect("[MQTT-3.2.2-16] an assigned id is returned");
    assert!(assigned.as_str().starts_with("ringmq-9-0-"), "{assigned:?}");
    assert!(b.engine_mut(0).state.take_cluster_claims().is_empty());
    b.expect_nothing(anon);
}
