//! MQTT 5 features: topic aliases both ways, subscription identifiers, no-local, properties
//! passed through, server-initiated DISCONNECT, AUTH, and subscription authorization.

use std::time::Duration;

use ringmq_tests::*;

#[tokio::test]
async fn inbound_topic_alias() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("v5/alias-in");
    let (mut sub, _) = RawClient::connected(broker.addr, connect_v5(&unique("sub"))).await;
    sub.subscribe(&topic, QoS::AtMostOnce).await;
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v5(&unique("pub"))).await;
    let mut first = publish(&topic, b"1", QoS::AtLeastOnce, false);
    first.properties.topic_alias = Some(1);
    publisher.publish_packet(first).await;
    // [MQTT-3.3.2-12] an empty topic with a known alias uses the mapped topic.
    let mut second = publish("", b"2", QoS::AtLeastOnce, false);
    second.properties.topic_alias = Some(1);
    publisher.publish_packet(second).await;
    for payload in [b"1", b"2"] {
        let got = sub.next_publish().await;
        assert_eq!(got.topic.as_str(), topic);
        assert_eq!(&got.payload[..], payload);
    }
    broker.assert_alive();
}

#[tokio::test]
async fn inbound_topic_alias_errors() {
    let mut broker = BrokerProcess::start_with_config("[limits]\ntopic_alias_maximum = 4\n", &[]);
    // [MQTT-3.3.2-9] an alias above our Topic Alias Maximum: DISCONNECT 0x94.
    let (mut c, _) = RawClient::connected(broker.addr, connect_v5(&unique("big"))).await;
    let mut p = publish("a/b", b"x", QoS::AtMostOnce, false);
    p.properties.topic_alias = Some(5);
    c.send_packet(&Packet::Publish(p)).await;
    c.expect_disconnect(ReasonCode::TopicAliasInvalid).await;
    // An alias never set, with an empty topic: protocol error.
    let (mut c, _) = RawClient::connected(broker.addr, connect_v5(&unique("unknown"))).await;
    let mut p = publish("", b"x", QoS::AtMostOnce, false);
    p.properties.topic_alias = Some(2);
    c.send_packet(&Packet::Publish(p)).await;
    c.expect_disconnect(ReasonCode::ProtocolError).await;
    broker.assert_alive();
}

#[tokio::test]
async fn outbound_topic_aliases_when_client_allows() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("v5/alias-out");
    let mut c = connect_v5(&unique("aliased"));
    c.properties.topic_alias_maximum = Some(3);
    let (mut sub, _) = RawClient::connected(broker.addr, c).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v5(&unique("pub"))).await;
    publisher
        .publish(&topic, b"1", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish(&topic, b"2", QoS::AtLeastOnce, false)
        .await;
    let first = sub.next_publish().await;
    sub.ack(&first).await;
    let alias = first
        .properties
        .topic_alias
        .expect("alias set on first use");
    assert!(
        (1..=3).contains(&alias),
        "[MQTT-3.3.2-10] alias within our maximum"
    );
    assert_eq!(first.topic.as_str(), topic);
    let second = sub.next_publish().await;
    sub.ack(&second).await;
    assert_eq!(second.properties.topic_alias, Some(alias));
    assert!(
        second.topic.is_empty(),
        "later deliveries use the alias alone"
    );
    // A client that did not allow aliases never gets one [MQTT-3.3.2-11].
    let (mut plain, _) = RawClient::connected(broker.addr, connect_v5(&unique("plain"))).await;
    plain.subscribe(&topic, QoS::AtLeastOnce).await;
    publisher
        .publish(&topic, b"3", QoS::AtLeastOnce, false)
        .await;
    let got = plain.next_publish().await;
    assert_eq!(got.properties.topic_alias, None);
    assert_eq!(got.topic.as_str(), topic);
    broker.assert_alive();
}

#[tokio::test]
async fn subscription_identifier_and_no_local() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("v5/nolocal");
    let (mut me, _) = RawClient::connected(broker.addr, connect_v5(&unique("me"))).await;
    let no_local = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        no_local: true,
        ..SubscriptionOptions::default()
    };
    me.subscribe_with(vec![(&topic, no_local)], Some(42)).await;
    // [MQTT-3.8.3-3] not sent back to the publishing connection.
    me.publish(&topic, b"mine", QoS::AtLeastOnce, false).await;
    me.expect_silence(Duration::from_millis(400)).await;
    let (mut other, _) = RawClient::connected(broker.addr, connect_v5(&unique("other"))).await;
    other
        .publish(&topic, b"theirs", QoS::AtLeastOnce, false)
        .await;
    let got = me.next_publish().await;
    assert_eq!(&got.payload[..], b"theirs");
    // [MQTT-3.3.4-3] the subscription identifier comes along.
    assert_eq!(got.properties.subscription_identifiers.to_vec(), vec![42]);
    broker.assert_alive();
}

#[tokio::test]
async fn properties_passed_through_unchanged() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("v5/props");
    let (mut sub, _) = RawClient::connected(broker.addr, connect_v5(&unique("sub"))).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v5(&unique("pub"))).await;
    let mut p = publish(&topic, b"{}", QoS::AtLeastOnce, false);
    p.properties.user_properties = vec![
        (Utf8Bytes::from("k"), Utf8Bytes::from("v1")),
        (Utf8Bytes::from("k"), Utf8Bytes::from("v2")),
        (Utf8Bytes::from("z"), Utf8Bytes::from("last")),
    ];
    p.properties.response_topic = Some(Utf8Bytes::from("reply/here"));
    p.properties.correlation_data = Some(bytes::Bytes::from_static(b"\x00\x01corr"));
    p.properties.content_type = Some(Utf8Bytes::from("application/json"));
    p.properties.payload_format_indicator = Some(1);
    publisher.publish_packet(p.clone()).await;
    let got = sub.next_publish().await;
    // [MQTT-3.3.2-17] user properties in order; [MQTT-3.3.2-15/16] response topic and
    // correlation data unaltered; content type and payload format likewise.
    assert_eq!(got.properties.user_properties, p.properties.user_properties);
    assert_eq!(got.properties.response_topic, p.properties.response_topic);
    assert_eq!(
        got.properties.correlation_data,
        p.properties.correlation_data
    );
    assert_eq!(got.properties.content_type, p.properties.content_type);
    assert_eq!(got.properties.payload_format_indicator, Some(1));
    broker.assert_alive();
}

#[tokio::test]
async fn rumqttc_v5_user_properties_round_trip() {
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PublishProperties as Props};
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("v5/rumqttc");
    let options = rumqttc::v5::MqttOptions::new(unique("rq5"), "127.0.0.1", broker.port);
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 10);
    client
        .subscribe(&topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    bounded(RECV_TIMEOUT, "suback", async {
        loop {
            if let rumqttc::v5::Event::Incoming(P5::SubAck(_)) =
                eventloop.poll().await.expect("loop")
            {
                break;
            }
        }
    })
    .await;
    let props = Props {
        user_properties: vec![("vin".into(), "WVW123".into())],
        response_topic: Some("r/t".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"c-1")),
        ..Props::default()
    };
    client
        .publish_with_properties(
            &topic,
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "hello",
            props.clone(),
        )
        .await
        .expect("publish");
    let got = bounded(RECV_TIMEOUT, "own publish back", async {
        loop {
            if let rumqttc::v5::Event::Incoming(P5::Publish(p)) =
                eventloop.poll().await.expect("loop")
            {
                return p;
            }
        }
    })
    .await;
    let got_props = got.properties.expect("properties");
    assert_eq!(got_props.user_properties, props.user_properties);
    assert_eq!(got_props.response_topic, props.response_topic);
    assert_eq!(got_props.correlation_data, props.correlation_data);
    broker.assert_alive();
}

#[tokio::test]
async fn auth_packet_without_enhanced_auth_disconnect_0x82() {
    let mut broker = BrokerProcess::start(&[]);
    let (mut c, _) = RawClient::connected(broker.addr, connect_v5(&unique("auth"))).await;
    // [MQTT-4.12.0-1] AUTH without an agreed Authentication Method is a protocol error.
    c.send_packet(&Packet::Auth(Auth {
        reason_code: ReasonCode::ReAuthenticate,
        properties: Default::default(),
    }))
    .await;
    c.expect_disconnect(ReasonCode::ProtocolError).await;
    broker.assert_alive();
}

#[tokio::test]
async fn authentication_method_refused_connack_0x8c() {
    let mut broker = BrokerProcess::start(&[]);
    let mut c = connect_v5(&unique("scram"));
    c.properties.authentication_method = Some(Utf8Bytes::from("SCRAM-SHA-1"));
    let (mut client, ack) = RawClient::handshake(broker.addr, c).await;
    assert_eq!(ack.reason_code, ReasonCode::BadAuthenticationMethod);
    client.expect_closed().await;
    broker.assert_alive();
}

#[tokio::test]
async fn shutdown_sends_disconnect_0x8b() {
    let broker = BrokerProcess::start(&[]);
    let (mut c, _) = RawClient::connected(broker.addr, connect_v5(&unique("bye"))).await;
    let stopper = std::thread::spawn(move || broker.stop());
    // Server-initiated DISCONNECT with a reason [MQTT-3.14.0-1 is for the server too].
    c.expect_disconnect(ReasonCode::ServerShuttingDown).await;
    let status = stopper.join().expect("stop thread");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn acl_deny_suback_0x80_and_0x87() {
    let mut broker = BrokerProcess::start_with_config("[acl]\ndeny = [\"secret/#\"]\n", &[]);
    let (mut v4, _) = RawClient::connected(broker.addr, connect_v4(&unique("acl4"))).await;
    let codes = v4
        .subscribe_with(
            vec![
                ("secret/a", opts(QoS::AtLeastOnce)),
                ("open/a", opts(QoS::AtLeastOnce)),
            ],
            None,
        )
        .await;
    // [MQTT-3.9.3-2] 3.1.1 failure return code 0x80.
    assert_eq!(
        codes,
        vec![ReasonCode::UnspecifiedError, ReasonCode::GrantedQoS1]
    );
    let (mut v5, _) = RawClient::connected(broker.addr, connect_v5(&unique("acl5"))).await;
    let codes = v5
        .subscribe_with(
            vec![
                ("secret/+", opts(QoS::AtMostOnce)),
                ("$share/g/secret/x", opts(QoS::AtMostOnce)),
            ],
            None,
        )
        .await;
    assert_eq!(
        codes,
        vec![ReasonCode::NotAuthorized, ReasonCode::NotAuthorized]
    );
    // A refused subscription receives nothing.
    v5.publish("secret/x", b"s", QoS::AtLeastOnce, false).await;
    v5.expect_silence(Duration::from_millis(300)).await;
    broker.assert_alive();
}
