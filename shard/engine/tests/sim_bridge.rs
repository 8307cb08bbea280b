//! The engine's side of the Kafka bridge with a fake [`Bridge`]: with `ack = "kafka"` the
//! PUBACK/PUBREC waits for Kafka's answer, a failure is reported (v5) or closes (v3.1.1), a full
//! bridge holds the publish back, and a QoS 2 retransmission is not stored twice.

mod sim;

use std::cell::RefCell;
use std::num::NonZeroU16;
use std::rc::Rc;

use ringmq_engine::bridge::{Bridge, Offer};
use ringmq_engine::message::Message;
use ringmq_engine::Limits;
use sim::*;
use wire::{Packet, QoS, ReasonCode, Utf8Bytes};

/// One offer the fake bridge saw.
#[derive(Debug, Clone)]
struct Offered {
    client_id: String,
    topic: String,
    packet_id: Option<u16>,
    token: u64,
}

/// Topics under `k/` want Kafka's acknowledgement, `full/` is refused (buffer full), the rest is
/// bridged without waiting.
#[derive(Default, Clone)]
struct FakeBridge {
    offers: Rc<RefCell<Vec<Offered>>>,
}

impl Bridge for FakeBridge {
    fn offer(
        &mut self,
        client_id: &Utf8Bytes,
        message: &Message,
        packet_id: Option<NonZeroU16>,
        token: u64,
    ) -> Offer {
        let topic = message.publish.topic.as_str();
        self.offers.borrow_mut().push(Offered {
            client_id: client_id.as_str().to_owned(),
            topic: topic.to_owned(),
            packet_id: packet_id.map(NonZeroU16::get),
            token,
        });
        if topic.starts_with("k/") {
            Offer::AckLater
        } else if topic.starts_with("full/") {
            Offer::Refused
        } else {
            Offer::AckNow
        }
    }
}

fn sim_with_bridge() -> (Sim, FakeBridge) {
    let bridge = FakeBridge::default();
    let shared = bridge.clone();
    let sim = Sim::with_bridges(1, Limits::default(), move |_| {
        Some(Box::new(shared.clone()) as Box<dyn Bridge>)
    });
    (sim, bridge)
}

fn last_token(bridge: &FakeBridge) -> u64 {
    bridge.offers.borrow().last().map_or(0, |o| o.token)
}

/// QoS 1 with ack = kafka: routed at once, PUBACK only when Kafka answers.
#[test]
fn puback_waits_for_kafka() {
    let (mut sim, bridge) = sim_with_bridge();
    let (sub, _) = sim.connect(0, v5("sub"));
    sim.subscribe(sub, "k/#", QoS::AtMostOnce);
    let (car, _) = sim.connect(0, v5("car"));
    sim.send(car, &publish("k/speed", b"88", QoS::AtLeastOnce, Some(4)));
    sim.run_until_idle();
    sim.expect_nothing(car);
    assert_eq!(&sim.expect_publish(sub).payload[..], b"88");
    {
        let offers = bridge.offers.borrow();
        assert_eq!(offers.len(), 1);
        assert_eq!(offers[0].client_id, "car");
        assert_eq!(offers[0].topic, "k/speed");
        assert_eq!(offers[0].packet_id, Some(4));
    }
    sim.engines[0].handle_bridge_ack(last_token(&bridge), Ok(()));
    sim.run_until_idle();
    match sim.expect(car) {
        Packet::PubAck(a) => {
            assert_eq!(a.packet_id, pid(4));
            assert_eq!(a.reason_code, ReasonCode::Success);
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
    // Topics that do not wait are acknowledged at once.
    sim.send(car, &publish("other", b"x", QoS::AtLeastOnce, Some(5)));
    sim.run_until_idle();
    assert!(matches!(sim.expect(car), Packet::PubAck(a) if a.packet_id == pid(5)));
}

/// Kafka failed: a v5 client gets PUBACK 0x80; a 3.1.1 client (no failure code) is disconnected
/// so it resends.
#[test]
fn kafka_failure() {
    let (mut sim, bridge) = sim_with_bridge();
    let (v5_car, _) = sim.connect(0, v5("car5"));
    sim.send(v5_car, &publish("k/a", b"x", QoS::AtLeastOnce, Some(1)));
    sim.run_until_idle();
    sim.engines[0].handle_bridge_ack(last_token(&bridge), Err("broker down".into()));
    sim.run_until_idle();
    assert!(matches!(
        sim.expect(v5_car),
        Packet::PubAck(a) if a.reason_code == ReasonCode::UnspecifiedError
    ));

    let (v3_car, _) = sim.connect(0, v311("car3"));
    sim.send(v3_car, &publish("k/a", b"x", QoS::AtLeastOnce, Some(1)));
    sim.run_until_idle();
    sim.engines[0].handle_bridge_ack(last_token(&bridge), Err("broker down".into()));
    sim.run_until_idle();
    assert!(sim.is_closed(v3_car));
    assert!(sim.take_bytes(v3_car).is_empty());
}

/// A full bridge: the publish is neither acknowledged nor routed; the client's window holds it.
#[test]
fn refused_publish_is_not_routed() {
    let (mut sim, _bridge) = sim_with_bridge();
    let (sub, _) = sim.connect(0, v5("sub"));
    sim.subscribe(sub, "full/#", QoS::AtMostOnce);
    let (car, _) = sim.connect(0, v5("car"));
    sim.send(car, &publish("full/a", b"x", QoS::AtLeastOnce, Some(1)));
    sim.run_until_idle();
    sim.expect_nothing(car);
    sim.expect_nothing(sub);
}

/// QoS 2 with ack = kafka: PUBREC after Kafka's answer; a retransmission before it is neither
/// offered again nor answered early [MQTT-4.3.3-9]; one PUBREC, one delivery.
#[test]
fn qos2_retransmission_waits_for_kafka() {
    let (mut sim, bridge) = sim_with_bridge();
    let (sub, _) = sim.connect(0, v5("sub"));
    sim.subscribe(sub, "k/#", QoS::AtMostOnce);
    let (car, _) = sim.connect(0, v5("car"));
    sim.send(car, &publish("k/q2", b"once", QoS::ExactlyOnce, Some(9)));
    sim.run_until_idle();
    sim.send(
        car,
        &dup(publish("k/q2", b"once", QoS::ExactlyOnce, Some(9))),
    );
    sim.run_until_idle();
    sim.expect_nothing(car);
    assert_eq!(bridge.offers.borrow().len(), 1);
    sim.engines[0].handle_bridge_ack(last_token(&bridge), Ok(()));
    sim.run_until_idle();
    assert!(matches!(sim.expect(car), Packet::PubRec(a) if a.packet_id == pid(9)));
    sim.expect_nothing(car);
    assert_eq!(&sim.expect_publish(sub).payload[..], b"once");
    sim.expect_nothing(sub);
}

/// The client reconnects (resuming its session) and resends its QoS 2 PUBLISH while Kafka has
/// not answered the first copy: Kafka's answer must reach the new connection as the PUBREC
/// (the packet id is session state [MQTT-4.3.3-9]), or the client waits for it forever.
#[test]
fn qos2_pubrec_reaches_resumed_connection() {
    let (mut sim, bridge) = sim_with_bridge();
    let (car, _) = sim.connect(0, v5_persistent("car", 300));
    sim.send(car, &publish("k/q2", b"once", QoS::ExactlyOnce, Some(9)));
    sim.run_until_idle();
    sim.drop_connection(car);
    sim.run_until_idle();

    let (car, ack) = sim.connect(0, v5_persistent("car", 300));
    assert!(ack.session_present);
    sim.send(
        car,
        &dup(publish("k/q2", b"once", QoS::ExactlyOnce, Some(9))),
    );
    sim.run_until_idle();
    sim.expect_nothing(car);
    assert_eq!(bridge.offers.borrow().len(), 1, "stored in Kafka twice");
    sim.engines[0].handle_bridge_ack(last_token(&bridge), Ok(()));
    sim.run_until_idle();
    assert!(matches!(sim.expect(car), Packet::PubRec(a) if a.packet_id == pid(9)));
    sim.send(car, &pubrel(9));
    sim.run_until_idle();
    assert!(matches!(
        sim.expect(car),
        Packet::PubComp(a) if a.reason_code == ReasonCode::Success
    ));
}

/// Kafka answers for a connection that is gone (clean session ended): nothing happens.
#[test]
fn late_kafka_answer_for_gone_connection() {
    let (mut sim, bridge) = sim_with_bridge();
    let (car, _) = sim.connect(0, v5("car"));
    sim.send(car, &publish("k/a", b"x", QoS::AtLeastOnce, Some(1)));
    sim.run_until_idle();
    sim.drop_connection(car);
    sim.run_until_idle();
    let (other, _) = sim.connect(0, v5("other"));
    sim.engines[0].handle_bridge_ack(last_token(&bridge), Ok(()));
    sim.engines[0].handle_bridge_ack(12345, Ok(()));
    sim.run_until_idle();
    sim.expect_nothing(other);
}

fn dup(packet: Packet) -> Packet {
    match packet {
        Packet::Publish(mut p) => {
            p.dup = true;
            Packet::Publish(p)
        }
        other => other,
    }
}
