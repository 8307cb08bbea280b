//! CONNECT / CONNACK: clean session, session present, client ids, keepalive, announced limits and
//! the protocol errors around CONNECT.

use std::time::Duration;

use ringmq_tests::*;

#[tokio::test]
async fn v4_clean_session_and_session_present() {
    let mut broker = BrokerProcess::start(&[]);
    let id = unique("persist");
    // [MQTT-3.2.2-3] no session yet: session present 0.
    let (c, ack) = RawClient::connected(
        broker.addr,
        connect(ProtocolVersion::V3_1_1, &id, false, 60),
    )
    .await;
    assert!(!ack.session_present);
    c.disconnect().await;
    // [MQTT-3.2.2-2] resumed: session present 1.
    let (c, ack) = RawClient::connected(
        broker.addr,
        connect(ProtocolVersion::V3_1_1, &id, false, 60),
    )
    .await;
    assert!(ack.session_present);
    c.disconnect().await;
    // [MQTT-3.2.2-1] clean session: session present 0, and the old one is gone.
    let (c, ack) = RawClient::connected(broker.addr, connect_v4(&id)).await;
    assert!(!ack.session_present);
    c.disconnect().await;
    let (c, ack) = RawClient::connected(
        broker.addr,
        connect(ProtocolVersion::V3_1_1, &id, false, 60),
    )
    .await;
    assert!(!ack.session_present);
    c.disconnect().await;
    broker.assert_alive();
}

#[tokio::test]
async fn v5_clean_start_and_session_present() {
    let mut broker = BrokerProcess::start(&[]);
    let id = unique("persist5");
    let mut c = connect(ProtocolVersion::V5, &id, true, 60);
    c.properties.session_expiry_interval = Some(300);
    let (client, ack) = RawClient::connected(broker.addr, c.clone()).await;
    assert!(!ack.session_present);
    client.disconnect().await;
    c.clean_start = false;
    let (client, ack) = RawClient::connected(broker.addr, c.clone()).await;
    assert!(ack.session_present);
    client.disconnect().await;
    c.clean_start = true;
    let (client, ack) = RawClient::connected(broker.addr, c).await;
    assert!(!ack.session_present);
    client.disconnect().await;
    broker.assert_alive();
}

#[tokio::test]
async fn rumqttc_v4_and_v5_connect() {
    let mut broker = BrokerProcess::start(&[]);
    let options = rumqttc::MqttOptions::new(unique("rumq4"), "127.0.0.1", broker.port);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    let event = bounded(RECV_TIMEOUT, "rumqttc v4 connack", eventloop.poll())
        .await
        .expect("v4 connect");
    match event {
        rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack)) => {
            assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success)
        }
        other => panic!("expected ConnAck, got {other:?}"),
    }
    client.disconnect().await.expect("disconnect");

    let options = rumqttc::v5::MqttOptions::new(unique("rumq5"), "127.0.0.1", broker.port);
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 10);
    let event = bounded(RECV_TIMEOUT, "rumqttc v5 connack", eventloop.poll())
        .await
        .expect("v5 connect");
    match event {
        rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(ack)) => {
            assert_eq!(
                ack.code,
                rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
            );
        }
        other => panic!("expected ConnAck, got {other:?}"),
    }
    client.disconnect().await.expect("disconnect");
    broker.assert_alive();
}

#[tokio::test]
async fn v4_empty_client_id_needs_clean_session() {
    let mut broker = BrokerProcess::start(&[]);
    // Accepted with clean session (the broker assigns an id internally).
    let (c, ack) = RawClient::connected(broker.addr, connect_v4("")).await;
    assert!(!ack.session_present);
    c.disconnect().await;
    // [MQTT-3.1.3-8] empty id without clean session: CONNACK 0x02 then close.
    let (mut c, ack) =
        RawClient::handshake(broker.addr, connect(ProtocolVersion::V3_1_1, "", false, 60)).await;
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
    c.expect_closed().await;
    broker.assert_alive();
}

#[tokio::test]
async fn v5_empty_client_id_is_assigned() {
    let mut broker = BrokerProcess::start(&[]);
    // [MQTT-3.2.2-16] the server returns the Assigned Client Identifier.
    let (c, ack) = RawClient::connected(broker.addr, connect_v5("")).await;
    let assigned = ack
        .properties
        .assigned_client_identifier
        .expect("assigned client identifier");
    assert!(!assigned.is_empty());
    let (c2, ack2) = RawClient::connected(broker.addr, connect_v5("")).await;
    assert_ne!(
        ack2.properties.assigned_client_identifier,
        Some(assigned.clone()),
        "assigned ids must be unique"
    );
    c.disconnect().await;
    c2.disconnect().await;
    broker.assert_alive();
}

#[tokio::test]
async fn keepalive_enforced_v4() {
    let mut broker = BrokerProcess::start(&[]);
    let (mut c, _) = RawClient::connected(
        broker.addr,
        connect(ProtocolVersion::V3_1_1, &unique("ka4"), true, 1),
    )
    .await;
    // [MQTT-3.1.2-24] no packet within 1.5 × keepalive: the server closes.
    let before = c.expect_closed_within(Duration::from_secs(6)).await;
    assert!(before.is_empty(), "v3.1.1 gets no DISCONNECT: {before:?}");
    broker.assert_alive();
}

#[tokio::test]
async fn keepalive_pings_keep_the_connection() {
    let mut broker = BrokerProcess::start(&[]);
    let (mut c, _) = RawClient::connected(
        broker.addr,
        connect(ProtocolVersion::V3_1_1, &unique("ka-ping"), true, 1),
    )
    .await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(c.ping().await, 0);
    }
    c.disconnect().await;
    broker.assert_alive();
}

#[tokio::test]
async fn keepalive_enforced_v5_disconnect_0x8d() {
    let mut broker = BrokerProcess::start(&[]);
    let (mut c, _) = RawClient::connected(
        broker.addr,
        connect(ProtocolVersion::V5, &unique("ka5"), true, 1),
    )
    .await;
    let before = c.expect_closed_within(Duration::from_secs(6)).await;
    assert!(
        matches!(before.as_slice(), [Packet::Disconnect(d)] if d.reason_code == ReasonCode::KeepAliveTimeout),
        "expected DISCONNECT 0x8D, got {before:?}"
    );
    broker.assert_alive();
}

#[tokio::test]
async fn keepalive_max_announced_as_server_keep_alive() {
    let mut broker = BrokerProcess::start_with_config("[limits]\nkeepalive_max_secs = 5\n", &[]);
    let (c, ack) = RawClient::connected(
        broker.addr,
        connect(ProtocolVersion::V5, &unique("ska"), true, 60),
    )
    .await;
    // [MQTT-3.2.2-21] the client must use the Server Keep Alive.
    assert_eq!(ack.properties.server_keep_alive, Some(5));
    c.disconnect().await;
    let (c, ack) = RawClient::connected(
        broker.addr,
        connect(ProtocolVersion::V5, &unique("ska0"), true, 0),
    )
    .await;
    assert_eq!(ack.properties.server_keep_alive, Some(5));
    c.disconnect().await;
    let (c, ack) = RawClient::connected(
        broker.addr,
        connect(ProtocolVersion::V5, &unique("ska3"), true, 3),
    )
    .await;
    assert_eq!(
        ack.properties.server_keep_alive, None,
        "3 ≤ 5 is kept as asked"
    );
    c.disconnect().await;
    broker.assert_alive();
}

#[tokio::test]
async fn connack_announces_limits() {
    let mut broker = BrokerProcess::start_with_config(
        "[limits]\nreceive_maximum = 7\nmax_packet_size_bytes = 4096\ntopic_alias_maximum = 9\n",
        &[],
    );
    let (c, ack) = RawClient::connected(broker.addr, connect_v5(&unique("limits"))).await;
    assert_eq!(ack.properties.receive_maximum, Some(7));
    assert_eq!(ack.properties.maximum_packet_size, Some(4096));
    assert_eq!(ack.properties.topic_alias_maximum, Some(9));
    c.disconnect().await;
    broker.assert_alive();
}

#[tokio::test]
async fn unsupported_protocol_level_connack_0x01() {
    let mut broker = BrokerProcess::start(&[]);
    let mut c = RawClient::connect(broker.addr).await;
    // "MQTT" with level 6. [MQTT-3.1.2-2] CONNACK return code 0x01 then close.
    c.send_bytes(&[
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x3C, 0x00, 0x01, b'a',
    ])
    .await;
    match c.next().await {
        Packet::ConnAck(ack) => {
            assert_eq!(ack.reason_code, ReasonCode::UnsupportedProtocolVersion)
        }
        other => panic!("expected CONNACK 0x01, got {other:?}"),
    }
    c.expect_closed().await;
    broker.assert_alive();
}

#[tokio::test]
async fn second_connect_closes() {
    let mut broker = BrokerProcess::start(&[]);
    // [MQTT-3.1.0-2] a second CONNECT is a protocol violation: close.
    let (mut c, _) = RawClient::connected(broker.addr, connect_v4(&unique("twice"))).await;
    c.send_packet(&Packet::Connect(Box::new(connect_v4("other"))))
        .await;
    c.expect_closed().await;
    let (mut c, _) = RawClient::connected(broker.addr, connect_v5(&unique("twice5"))).await;
    c.send_packet(&Packet::Connect(Box::new(connect_v5("other"))))
        .await;
    c.expect_disconnect(ReasonCode::ProtocolError).await;
    broker.assert_alive();
}

#[tokio::test]
async fn first_packet_not_connect_closes() {
    let mut broker = BrokerProcess::start(&[]);
    // [MQTT-3.1.0-1] the first packet must be CONNECT.
    let mut c = RawClient::connect(broker.addr).await;
    c.send_bytes(&[0xC0, 0x00]).await; // PINGREQ
    let before = c.expect_closed().await;
    assert!(before.is_empty(), "no reply expected: {before:?}");
    let mut c = RawClient::connect(broker.addr).await;
    c.send_packet(&Packet::Publish(publish(
        "a/b",
        b"x",
        QoS::AtMostOnce,
        false,
    )))
    .await;
    c.expect_closed().await;
    broker.assert_alive();
}

#[tokio::test]
async fn bad_protocol_name_closes_without_connack() {
    let mut broker = BrokerProcess::start(&[]);
    // [MQTT-3.1.2-1] a wrong protocol name: the server may close without CONNACK.
    let mut c = RawClient::connect(broker.addr).await;
    c.send_bytes(&[
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'X', b'X', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x01, b'a',
    ])
    .await;
    let before = c.expect_closed().await;
    assert!(
        before
            .iter()
            .all(|p| matches!(p, Packet::ConnAck(a) if a.reason_code.is_error())),
        "{before:?}"
    );
    broker.assert_alive();
}

#[tokio::test]
async fn graceful_shutdown_exits_zero() {
    let broker = BrokerProcess::start(&[]);
    let (c, _) = RawClient::connected(broker.addr, connect_v4(&unique("bye"))).await;
    let status = broker.stop();
    assert!(status.success(), "SIGTERM exit status {status}");
    drop(c);
}

/// A second broker on an address another process already listens on must not start (SO_REUSEPORT
/// would otherwise let the kernel split new clients between two brokers with separate sessions):
/// it exits with an error naming the address, and the first keeps serving.
#[tokio::test]
async fn second_broker_on_a_taken_address_fails_naming_it() {
    let mut first = BrokerProcess::start(&[]);
    let addr = first.addr.to_string();
    let output = std::process::Command::new(broker_bin())
        .args(["--listen", &addr, "--metrics-listen", "", "--shards", "1"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the broker binary runs");
    assert!(
        !output.status.success(),
        "a second broker started on {addr}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&addr) && stderr.contains("another process already listens"),
        "unclear error: {stderr}"
    );
    let (_client, ack) = RawClient::connected(first.addr, connect_v4(&unique("still"))).await;
    assert_eq!(ack.reason_code, wire::ReasonCode::Success);
    first.assert_alive();
}
