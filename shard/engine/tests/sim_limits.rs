//! Bounds and bad input: subscriptions per session, malformed packets (DISCONNECT with the reason
//! code, then the close), and a slow consumer (reading paused, the session queue bound drops
//! QoS 0 and counts it).

mod sim;

use ringmq_engine::conn::{TRANSPORT_QUEUED_MAX_BYTES, WRITE_BATCH_BYTES};
use ringmq_engine::counters::DROP_REASONS;
use ringmq_engine::session::DropReason;
use ringmq_engine::Limits;
use sim::*;
use wire::{Packet, ProtocolVersion, QoS, ReasonCode};

fn three_filters() -> Packet {
    subscribe(
        1,
        &[
            ("a", QoS::AtMostOnce),
            ("b", QoS::AtLeastOnce),
            ("c", QoS::AtMostOnce),
        ],
    )
}

/// `subscriptions_per_session_max`: the filter beyond it is refused in the SUBACK — v5 0x97
/// Quota exceeded, 3.1.1 0x80 Failure [MQTT-3.9.3-2] — and counted; replacing a subscription the
/// session holds is still allowed [MQTT-3.8.4-3].
#[test]
fn subscriptions_per_session_max() {
    let limits = Limits {
        subscriptions_per_session_max: 2,
        ..Limits::default()
    };
    for (version, refused) in [
        (ProtocolVersion::V5, ReasonCode::QuotaExceeded),
        (ProtocolVersion::V3_1_1, ReasonCode::UnspecifiedError),
    ] {
        let mut sim = Sim::with_limits(2, limits.clone());
        let (c, _) = sim.connect(1, connect(version, &sim.client_id_on(1, "c")));
        sim.send(c, &three_filters());
        sim.run_until_idle();
        assert_eq!(
            sim.expect_suback(c).reason_codes,
            [ReasonCode::Success, ReasonCode::GrantedQoS1, refused],
            "{version:?}"
        );
        assert_eq!(sim.engine(1).state.counters.subscriptions_over_limit, 1);
        assert_eq!(
            sim.subscribe(c, "b", QoS::ExactlyOnce).reason_codes,
            [ReasonCode::GrantedQoS2]
        );
        // The refused filter is really not subscribed.
        let (publisher, _) = sim.connect(0, connect(version, &sim.client_id_on(0, "p")));
        sim.send(publisher, &publish("c", b"no", QoS::AtMostOnce, None));
        sim.send(publisher, &publish("a", b"yes", QoS::AtMostOnce, None));
        sim.run_until_idle();
        assert_eq!(&sim.expect_publish(c).payload[..], b"yes");
        sim.expect_nothing(c);
    }
}

/// Sends `bytes` on a fresh v5 connection and returns the DISCONNECT reason it got; the
/// connection must be closed after it (4.13: on a malformed packet or protocol error the server
/// sends DISCONNECT with the reason code, then closes).
fn v5_disconnect_for(bytes: &[u8]) -> ReasonCode {
    let mut sim = Sim::new(1);
    let (c, _) = sim.connect(0, v5("bad"));
    sim.send_bytes(c, bytes);
    sim.run_until_idle();
    let d = sim.expect_disconnect(c);
    assert!(sim.is_closed(c), "not closed after DISCONNECT");
    sim.expect_nothing(c);
    d.reason_code
}

/// Malformed packets [MQTT-4.13.1-1]: 0x81 Malformed Packet.
#[test]
fn malformed_packets_v5() {
    // PUBLISH with both QoS bits set [MQTT-3.3.1-4].
    assert_eq!(
        v5_disconnect_for(&hex("36 06 00 01 74 00 01 00")),
        ReasonCode::MalformedPacket
    );
    // SUBSCRIBE with reserved header flags 0000 instead of 0010 [MQTT-3.8.1-1].
    assert_eq!(
        v5_disconnect_for(&hex("80 06 00 01 00 00 01 74")),
        ReasonCode::MalformedPacket
    );
    // PINGREQ with a body.
    assert_eq!(
        v5_disconnect_for(&hex("c0 01 00")),
        ReasonCode::MalformedPacket
    );
    // A remaining length over four bytes.
    assert_eq!(
        v5_disconnect_for(&hex("30 ff ff ff ff 01")),
        ReasonCode::MalformedPacket
    );
}

/// Protocol errors in well-formed packets: 0x82, topic names with wildcards 0x90
/// [MQTT-3.3.2-2], a topic alias above the maximum 0x94 [MQTT-3.3.2-9], a packet over Maximum
/// Packet Size 0x95 [MQTT-3.2.2-15 server side].
#[test]
fn protocol_errors_v5() {
    // A client must not send PINGRESP.
    assert_eq!(v5_disconnect_for(&hex("d0 00")), ReasonCode::ProtocolError);
    // PUBLISH "a/+" QoS 0, no properties.
    assert_eq!(
        v5_disconnect_for(&hex("30 06 00 03 61 2f 2b 00")),
        ReasonCode::TopicNameInvalid
    );
    // PUBLISH "t" with Topic Alias (0x23) 65535, above our Topic Alias Maximum.
    assert_eq!(
        v5_disconnect_for(&hex("30 07 00 01 74 03 23 ff ff")),
        ReasonCode::TopicAliasInvalid
    );
    // A frame announcing 2 MiB, over the 1 MiB maximum: refused from the header alone.
    assert_eq!(
        v5_disconnect_for(&hex("30 80 80 80 01")),
        ReasonCode::PacketTooLarge
    );
}

/// 3.1.1 has no DISCONNECT from the server: a malformed packet just closes [MQTT-4.8.0-1].
#[test]
fn malformed_packet_v311_closes_silently() {
    let mut sim = Sim::new(1);
    let (c, _) = sim.connect(0, v311("bad"));
    sim.send_bytes(c, &hex("36 06 00 01 74 00 01 00"));
    sim.run_until_idle();
    assert!(sim.is_closed(c));
    assert!(sim.take_bytes(c).is_empty());
}

/// A message whose only subscriber drops it (its queue is full) is counted once, as
/// `queue_full`, not also as `no_subscribers`: one shard, so the publish matches only locally.
#[test]
fn a_full_queue_is_not_also_counted_as_no_subscribers() {
    let queue_max = 10u32;
    let limits = Limits {
        session_queue_len_max: queue_max,
        ..Limits::default()
    };
    let mut sim = Sim::with_limits(1, limits);
    let (slow, _) = sim.connect(0, v311("slow"));
    let (publisher, _) = sim.connect(0, v311("p"));
    sim.subscribe(slow, "firehose", QoS::AtMostOnce);
    sim.stall(slow);
    sim.report_sent(slow, TRANSPORT_QUEUED_MAX_BYTES + 1);
    let sent = queue_max + 5;
    for i in 0..sent {
        sim.send(
            publisher,
            &publish("firehose", &i.to_be_bytes(), QoS::AtMostOnce, None),
        );
    }
    // And one to a topic nobody subscribed: that one is `no_subscribers`.
    sim.send(publisher, &publish("nobody", b"x", QoS::AtMostOnce, None));
    sim.run_until_idle();
    let index = |reason| {
        DROP_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(usize::MAX)
    };
    let dropped = &sim.engine(0).state.counters.messages_dropped[0];
    assert_eq!(
        dropped[index(DropReason::QueueFull)],
        u64::from(sent - queue_max)
    );
    assert_eq!(dropped[index(DropReason::NoSubscribers)], 1);
}

/// A receiver that stops taking its output: once the transport holds more than
/// `TRANSPORT_QUEUED_MAX_BYTES` the engine stops encoding for it and pauses its reading; its
/// session queue keeps `session_queue_len_max` QoS 0 messages and drops the rest, counted as
/// `queue_full`; when the transport drains, reading resumes and the queue is delivered in order.
#[test]
fn slow_consumer_pauses_and_bounds_queue() {
    let queue_max = 100u32;
    let limits = Limits {
        session_queue_len_max: queue_max,
        ..Limits::default()
    };
    let mut sim = Sim::with_limits(2, limits);
    let (slow, _) = sim.connect(0, v311(&sim.client_id_on(0, "slow")));
    let (publisher, _) = sim.connect(1, v311(&sim.client_id_on(1, "p")));
    sim.subscribe(slow, "firehose", QoS::AtMostOnce);
    sim.stall(slow);
    sim.report_sent(slow, TRANSPORT_QUEUED_MAX_BYTES + 1);

    let sent = queue_max + 25;
    for i in 0..sent {
        sim.send(
            publisher,
            &publish("firehose", &i.to_be_bytes(), QoS::AtMostOnce, None),
        );
    }
    sim.run_until_idle();
    assert!(sim.is_paused(slow));
    assert!(sim.events(slow).contains(&Event::PauseReading));
    assert!(
        sim.take_bytes(slow).is_empty(),
        "wrote past the transport bound"
    );
    let queue_full = DROP_REASONS
        .iter()
        .position(|r| *r == DropReason::QueueFull)
        .unwrap_or(usize::MAX);
    let dropped = sim.engine(0).state.counters.messages_dropped[0][queue_full];
    assert_eq!(dropped, u64::from(sent - queue_max));

    // While paused its own packets wait in the transport.
    sim.send(slow, &Packet::PingReq);
    sim.run_until_idle();
    assert!(sim.take_bytes(slow).is_empty());

    sim.report_sent(slow, 0);
    sim.run_until_idle();
    assert!(!sim.is_paused(slow));
    assert!(sim.events(slow).contains(&Event::ResumeReading));
    let packets = sim.recv_all(slow);
    let payloads: Vec<u32> = packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => {
                let bytes: [u8; 4] = p.payload[..].try_into().unwrap_or_default();
                Some(u32::from_be_bytes(bytes))
            }
            _ => None,
        })
        .collect();
    assert_eq!(payloads, (0..queue_max).collect::<Vec<_>>());
    assert!(packets.contains(&Packet::PingResp));
}

/// A stalled consumer that is not reported at all: its own transmits fill the transport bound.
#[test]
fn unreported_transmits_fill_the_transport_bound() {
    let mut sim = Sim::new(1);
    let (slow, _) = sim.connect(0, v311("slow"));
    let (publisher, _) = sim.connect(0, v311("p"));
    sim.subscribe(slow, "big", QoS::AtMostOnce);
    sim.stall(slow);
    let payload = vec![7u8; 16 * 1024];
    let count = 2 * TRANSPORT_QUEUED_MAX_BYTES / payload.len();
    for _ in 0..count {
        sim.send(publisher, &publish("big", &payload, QoS::AtMostOnce, None));
        sim.run_until_idle();
    }
    assert!(sim.is_paused(slow));
    let written = sim.take_bytes(slow).len();
    // One drive may start below the bound and add a write batch (plus the frame that crossed
    // it) before it stops.
    let frame_max = payload.len() + 16;
    assert!(
        written <= TRANSPORT_QUEUED_MAX_BYTES + WRITE_BATCH_BYTES + frame_max,
        "{written}"
    );
    assert!(
        written < count * payload.len(),
        "nothing held back: {written}"
    );
}

/// Frames the engine already received stay received when the peer closes while its reading is
/// paused (a slow consumer): a DISCONNECT among them still discards the will [MQTT-3.1.2-10]
/// and a PUBLISH among them is still routed, as they would be without the pause.
#[test]
fn frames_received_before_eof_are_handled_while_paused() {
    let mut sim = Sim::new(1);
    let (watcher, _) = sim.connect(0, v311("w"));
    sim.subscribe(watcher, "status/#", QoS::AtMostOnce);
    let mut connect = v311("slow");
    connect.will = Some(wire::LastWill {
        topic: "status/slow".into(),
        payload: bytes::Bytes::from_static(b"lost"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let (slow, _) = sim.connect(0, connect);
    sim.stall(slow);
    sim.report_sent(slow, TRANSPORT_QUEUED_MAX_BYTES + 1);
    let read = encode_all(
        ProtocolVersion::V3_1_1,
        &[
            publish("status/last", b"words", QoS::AtMostOnce, None),
            disconnect(ReasonCode::Success),
        ],
    );
    sim.send_bytes(slow, &read);
    sim.run_until_idle();
    assert!(sim.is_paused(slow));
    sim.drop_connection(slow);
    sim.run_until_idle();
    assert!(sim.is_closed(slow));
    let got: Vec<Vec<u8>> = sim
        .recv_all(watcher)
        .into_iter()
        .map(|p| match p {
            Packet::Publish(p) => p.payload.to_vec(),
            other => panic!("expected PUBLISH, got {other:?}"),
        })
        .collect();
    assert_eq!(got, [b"words".to_vec()], "will published or publish lost");
}

/// [MQTT-3.3.4-9] more unacknowledged QoS 2 publishes than our Receive Maximum: DISCONNECT
/// 0x93 Receive Maximum exceeded.
#[test]
fn v5_receive_maximum_exceeded() {
    let limits = Limits {
        receive_maximum: 3,
        ..Limits::default()
    };
    let mut sim = Sim::with_limits(1, limits);
    let (c, ack) = sim.connect(0, v5("eager"));
    assert_eq!(ack.properties.receive_maximum, Some(3));
    for id in 1..=3 {
        sim.send(c, &publish("t", b"x", QoS::ExactlyOnce, Some(id)));
    }
    sim.run_until_idle();
    assert_eq!(sim.recv_all(c).len(), 3);
    sim.send(c, &publish("t", b"x", QoS::ExactlyOnce, Some(4)));
    sim.run_until_idle();
    assert_eq!(
        sim.expect_disconnect(c).reason_code,
        ReasonCode::ReceiveMaximumExceeded
    );
    assert!(sim.is_closed(c));
}

/// [MQTT-3.1.2-25] a message bigger than the client's Maximum Packet Size is not sent to it
/// (dropped as if delivered, counted `packet_too_large`); smaller ones are.
#[test]
fn v5_client_maximum_packet_size() {
    let mut sim = Sim::new(1);
    let mut connect = v5("small");
    connect.properties.maximum_packet_size = Some(64);
    let (c, _) = sim.connect(0, connect);
    sim.subscribe(c, "t", QoS::AtLeastOnce);
    let (p, _) = sim.connect(0, v5("p"));
    sim.send(p, &publish("t", &[1u8; 100], QoS::AtMostOnce, None));
    sim.send(p, &publish("t", &[2u8; 100], QoS::AtLeastOnce, Some(1)));
    sim.send(p, &publish("t", b"fits", QoS::AtLeastOnce, Some(2)));
    sim.run_until_idle();
    let got = sim.expect_publish(c);
    assert_eq!(&got.payload[..], b"fits");
    sim.expect_nothing(c);
    let too_large = DROP_REASONS
        .iter()
        .position(|r| *r == DropReason::PacketTooLarge)
        .unwrap_or(usize::MAX);
    let counters = &sim.engine(0).state.counters;
    assert_eq!(counters.messages_dropped[0][too_large], 1);
    assert_eq!(counters.messages_dropped[1][too_large], 1);
}

/// A PUBLISH larger than `INPUT_BUFFERED_MAX_BYTES` but within the maximum packet size
/// (1 MiB by default) arrives in 16 KiB reads: reading must not pause on a frame still
/// arriving (its end can only come by reading), or the connection stalls for good. It is
/// delivered whole, and reading is not left paused.
#[test]
fn a_publish_larger_than_the_input_bound_is_read_to_its_end() {
    let mut sim = Sim::new(1);
    let (sub, _) = sim.connect(0, v311("sub"));
    sim.subscribe(sub, "big", QoS::AtMostOnce);
    let (publisher, _) = sim.connect(0, v311("pub"));
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    // INPUT_BUFFERED_MAX_BYTES is 256 KiB.
    assert!(payload.len() > 256 * 1024);
    let bytes = encode_all(
        ProtocolVersion::V3_1_1,
        &[publish("big", &payload, QoS::AtMostOnce, None)],
    );
    for chunk in bytes.chunks(16 * 1024) {
        sim.send_bytes(publisher, chunk);
        sim.run_until_idle();
    }
    assert!(!sim.is_paused(publisher), "reading left paused");
    let got = sim.expect_publish(sub);
    assert_eq!(got.payload.len(), payload.len());
    assert!(got.payload[..] == payload[..]);
}
