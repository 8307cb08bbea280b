//! Send completions (`Engine::handle_sent`): a connection whose output was held back for the
//! transport bound, or whose reading is paused, is driven again once the transport has taken
//! enough; one that held nothing back is not queued again (a broadcast's subscribers would each
//! be driven a second time per message for nothing).

mod sim;

use ringmq_engine::conn::TRANSPORT_QUEUED_MAX_BYTES;
use sim::*;
use wire::QoS;

fn payloads(sim: &mut Sim, client: Client) -> Vec<Vec<u8>> {
    sim.recv_all(client)
        .into_iter()
        .filter_map(|p| match p {
            wire::Packet::Publish(p) => Some(p.payload.to_vec()),
            _ => None,
        })
        .collect()
}

/// Subscribers that held nothing back: their send completions (all taken, or some bytes still
/// in the transport under the bound) leave the engine with nothing to do.
#[test]
fn a_completion_that_unblocks_nothing_queues_nothing() {
    let mut sim = Sim::new(1);
    let subscribers: Vec<Client> = (0..40)
        .map(|i| {
            let (c, _) = sim.connect(0, v311(&format!("vehicle-{i}")));
            sim.subscribe(c, "fleet/all/command", QoS::AtMostOnce);
            sim.stall(c);
            c
        })
        .collect();
    let (publisher, _) = sim.connect(0, v311("ota"));
    sim.send(
        publisher,
        &publish("fleet/all/command", b"update", QoS::AtMostOnce, None),
    );
    sim.run_until_idle();
    for (i, &c) in subscribers.iter().enumerate() {
        assert_eq!(payloads(&mut sim, c), vec![b"update".to_vec()]);
        let transmits = sim.events(c).len();
        // Half report everything taken, half a remainder well under the bound.
        let queued = if i % 2 == 0 { 0 } else { 100 };
        sim.report_sent(c, queued);
        assert!(
            !sim.engine(0).has_work(),
            "subscriber {i} queued again by a completion that unblocked nothing"
        );
        sim.run_until_idle();
        assert_eq!(
            sim.events(c).len(),
            transmits,
            "subscriber {i} driven again"
        );
    }
}

/// A subscriber over the transport bound: its deliveries wait in the session queue and its
/// reading is paused. A completion that leaves it at the bound changes nothing; one that takes
/// it under the bound queues it, and its drive writes the held-back messages in order with no
/// other input to wake it. Reading stays paused until the transport is under half the bound, so
/// a later completion that unblocks no output still queues it, and that drive resumes reading.
#[test]
fn a_held_back_connection_is_driven_again_when_its_send_completes() {
    let mut sim = Sim::new(1);
    let (slow, _) = sim.connect(0, v311("slow"));
    let (publisher, _) = sim.connect(0, v311("p"));
    sim.subscribe(slow, "firehose", QoS::AtMostOnce);
    sim.stall(slow);
    sim.report_sent(slow, TRANSPORT_QUEUED_MAX_BYTES + 1);
    let sent: Vec<Vec<u8>> = (0u8..5).map(|i| vec![i; 8]).collect();
    for payload in &sent {
        sim.send(
            publisher,
            &publish("firehose", payload, QoS::AtMostOnce, None),
        );
    }
    sim.run_until_idle();
    assert!(sim.is_paused(slow), "reading paused over the bound");
    assert!(
        sim.take_bytes(slow).is_empty(),
        "wrote past the transport bound"
    );

    sim.report_sent(slow, TRANSPORT_QUEUED_MAX_BYTES);
    assert!(
        !sim.engine(0).has_work(),
        "still at the bound: nothing to drive"
    );
    sim.run_until_idle();
    assert!(sim.take_bytes(slow).is_empty());

    sim.report_sent(slow, TRANSPORT_QUEUED_MAX_BYTES * 3 / 4);
    assert!(
        sim.engine(0).has_work(),
        "the held-back connection is queued"
    );
    sim.run_until_idle();
    assert_eq!(payloads(&mut sim, slow), sent);
    assert!(
        sim.is_paused(slow),
        "over half the bound: still not reading"
    );

    sim.report_sent(slow, TRANSPORT_QUEUED_MAX_BYTES / 4);
    assert!(
        sim.engine(0).has_work(),
        "a paused reader is queued to resume"
    );
    sim.run_until_idle();
    assert!(!sim.is_paused(slow));
    assert_eq!(sim.events(slow).last(), Some(&Event::ResumeReading));
    assert!(sim.take_bytes(slow).is_empty());
}
