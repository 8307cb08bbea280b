//! A session's `Traffic` (its queue, in-flight window and inbound QoS 2 ids) exists only while
//! it is used: the shard's traffic sweep frees it once the session is idle again, keeps it while
//! something is in flight, and keeps it under a stream of messages (so the stream does not
//! allocate it again after every drive that emptied the queue).

mod sim;

use std::time::Duration;

use ringmq_engine::state::TRAFFIC_SWEEP_INTERVAL;
use sim::*;
use wire::QoS;

/// Whether the session of `client_id` on shard 0 holds a traffic box.
fn has_traffic(sim: &Sim, client_id: &str) -> bool {
    let state = &sim.engine(0).state;
    (0..state.sessions_total() as u32 + 8)
        .filter_map(|slot| state.session(slot))
        .find(|s| s.client_id.as_str() == client_id)
        .map(|s| s.traffic.is_some())
        .unwrap_or_else(|| panic!("no session {client_id}"))
}

fn released(sim: &Sim) -> u64 {
    sim.engine(0).state.counters.traffic_released
}

/// An unacknowledged QoS 1 delivery keeps the box through any number of sweeps (the message
/// must be resent on reconnect [MQTT-4.4.0-1]); once acknowledged, two sweeps free it.
#[test]
fn traffic_is_kept_while_in_flight_and_freed_once_idle() {
    let mut sim = Sim::new(1);
    let (subscriber, _) = sim.connect(0, v311("car"));
    sim.subscribe(subscriber, "fleet/car/command", QoS::AtLeastOnce);
    let (publisher, _) = sim.connect(0, v311("ota"));
    sim.send(
        publisher,
        &publish("fleet/car/command", b"update", QoS::AtMostOnce, None),
    );
    sim.send(
        publisher,
        &publish("fleet/car/command", b"update", QoS::AtLeastOnce, Some(1)),
    );
    sim.run_until_idle();
    let first = sim.expect_publish(subscriber);
    assert_eq!(first.qos, QoS::AtMostOnce);
    let second = sim.expect_publish(subscriber);
    assert!(has_traffic(&sim, "car"));

    sim.advance(TRAFFIC_SWEEP_INTERVAL * 4);
    assert!(has_traffic(&sim, "car"), "freed with a message in flight");

    sim.send(subscriber, &puback(packet_id_of(&second)));
    sim.run_until_idle();
    sim.advance(TRAFFIC_SWEEP_INTERVAL * 2);
    assert!(
        !has_traffic(&sim, "car"),
        "kept after the session went idle"
    );
    assert!(
        !has_traffic(&sim, "ota"),
        "the publisher's PUBACK queue kept too"
    );
    let freed = released(&sim);

    // Idle boxes are not allocated again by the sweep, and the session still works.
    sim.advance(TRAFFIC_SWEEP_INTERVAL * 3);
    assert_eq!(released(&sim), freed);
    sim.send(
        publisher,
        &publish("fleet/car/command", b"again", QoS::AtLeastOnce, Some(2)),
    );
    sim.run_until_idle();
    assert_eq!(&sim.expect_publish(subscriber).payload[..], b"again");
}

/// A message every half sweep interval: the subscriber's box is never freed while they come,
/// and is freed within two sweeps after the last one.
#[test]
fn a_stream_keeps_its_traffic() {
    let mut sim = Sim::new(1);
    let (subscriber, _) = sim.connect(0, v311("car"));
    sim.subscribe(subscriber, "telemetry", QoS::AtMostOnce);
    let (publisher, _) = sim.connect(0, v311("ota"));
    for i in 0u8..10 {
        sim.send(
            publisher,
            &publish("telemetry", &[i], QoS::AtMostOnce, None),
        );
        sim.run_until_idle();
        assert_eq!(&sim.expect_publish(subscriber).payload[..], &[i]);
        sim.advance(TRAFFIC_SWEEP_INTERVAL / 2);
        assert_eq!(released(&sim), 0, "freed between two messages of a stream");
    }
    sim.advance(TRAFFIC_SWEEP_INTERVAL * 2 + Duration::from_millis(1));
    assert_eq!(released(&sim), 1);
    assert!(!has_traffic(&sim, "car"));
}
