//! Topic matching (`+`, `#`, `$`-topics) and the `$SYS/broker/...` statistics.

use std::time::Duration;

use ringmq_tests::*;

async fn expect_topics(sub: &mut RawClient, mut expected: Vec<String>) {
    let mut got = Vec::new();
    for _ in 0..expected.len() {
        got.push(sub.next_publish().await.topic.to_string());
    }
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    sub.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn single_and_multi_level_wildcards() {
    let mut broker = BrokerProcess::start(&[]);
    let base = unique("wild");
    let (mut plus, _) = RawClient::connected(broker.addr, connect_v4(&unique("plus"))).await;
    plus.subscribe(&format!("{base}/+/temp"), QoS::AtMostOnce)
        .await;
    let (mut hash, _) = RawClient::connected(broker.addr, connect_v4(&unique("hash"))).await;
    hash.subscribe(&format!("{base}/#"), QoS::AtMostOnce).await;
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v4(&unique("pub"))).await;
    let topics = [
        base.clone(),
        format!("{base}/a/temp"),
        format!("{base}/b/temp"),
        format!("{base}/a/b/temp"),
        format!("{base}/a/temp/x"),
        format!("{base}//temp"),
    ];
    for t in &topics {
        publisher.publish(t, b"x", QoS::AtLeastOnce, false).await;
    }
    // `+` matches exactly one level (also an empty one) [MQTT-4.7.1-3].
    expect_topics(
        &mut plus,
        vec![
            format!("{base}/a/temp"),
            format!("{base}/b/temp"),
            format!("{base}//temp"),
        ],
    )
    .await;
    // `#` matches the parent level too [MQTT-4.7.1-2].
    expect_topics(&mut hash, topics.to_vec()).await;
    broker.assert_alive();
}

#[tokio::test]
async fn dollar_topics_not_matched_by_leading_wildcards() {
    let mut broker = BrokerProcess::start(&[]);
    let tag = unique("dollar");
    let (mut all, _) = RawClient::connected(broker.addr, connect_v4(&unique("all"))).await;
    all.subscribe("#", QoS::AtMostOnce).await;
    let (mut plus, _) = RawClient::connected(broker.addr, connect_v4(&unique("plus"))).await;
    plus.subscribe(&format!("+/{tag}"), QoS::AtMostOnce).await;
    let (mut exact, _) = RawClient::connected(broker.addr, connect_v4(&unique("exact"))).await;
    exact
        .subscribe(&format!("$app/{tag}"), QoS::AtMostOnce)
        .await;
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v4(&unique("pub"))).await;
    publisher
        .publish(&format!("$app/{tag}"), b"dollar", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish(&format!("app/{tag}"), b"plain", QoS::AtLeastOnce, false)
        .await;
    // [MQTT-4.7.2-1] `#` and `+/...` do not match topics starting with `$`.
    let got = exact.next_publish().await;
    assert_eq!(&got.payload[..], b"dollar");
    let got = plus.next_publish().await;
    assert_eq!(&got.payload[..], b"plain");
    plus.expect_silence(Duration::from_millis(300)).await;
    // `#` gets the plain one (and possibly $SYS? no: $SYS starts with $ too).
    loop {
        let got = all.next_publish().await;
        assert!(!got.topic.starts_with('$'), "`#` matched {}", got.topic);
        if &got.payload[..] == b"plain" {
            break;
        }
    }
    broker.assert_alive();
}

#[tokio::test]
async fn sys_topics_published() {
    let mut broker = BrokerProcess::start_with_config("[limits]\nsys_interval_secs = 1\n", &[]);
    let (mut sub, _) = RawClient::connected(broker.addr, connect_v4(&unique("sys"))).await;
    sub.subscribe("$SYS/broker/#", QoS::AtMostOnce).await;
    let wanted = [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
        "$SYS/broker/messages/received",
    ];
    let mut seen = std::collections::HashMap::new();
    // Figures are refreshed every second and gathered from both shards, so the first ones may
    // predate this client: wait until it is counted.
    bounded(Duration::from_secs(15), "$SYS topics", async {
        loop {
            let p = sub.next_publish().await;
            seen.insert(
                p.topic.to_string(),
                String::from_utf8_lossy(&p.payload).to_string(),
            );
            let counted = seen
                .get("$SYS/broker/clients/connected")
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|n| n >= 1);
            if counted && wanted.iter().all(|t| seen.contains_key(*t)) {
                break;
            }
        }
    })
    .await;
    assert!(seen["$SYS/broker/version"].starts_with("ringmq"));
    assert!(seen["$SYS/broker/uptime"].ends_with("seconds"));
    let received: u64 = seen["$SYS/broker/messages/received"]
        .parse()
        .expect("received count is a number");
    let _ = received;
    broker.assert_alive();
}

#[tokio::test]
async fn rumqttc_wildcard_subscription() {
    let mut broker = BrokerProcess::start(&[]);
    let base = unique("rq-wild");
    let options = rumqttc::v5::MqttOptions::new(unique("rq"), "127.0.0.1", broker.port);
    let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 10);
    client
        .subscribe(
            format!("{base}/+/x/#"),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        )
        .await
        .expect("subscribe");
    bounded(RECV_TIMEOUT, "suback", async {
        loop {
            if let rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::SubAck(_)) =
                eventloop.poll().await.expect("loop")
            {
                break;
            }
        }
    })
    .await;
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v4(&unique("pub"))).await;
    publisher
        .publish(&format!("{base}/a/y"), b"no", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish(&format!("{base}/a/x/b/c"), b"yes", QoS::AtLeastOnce, false)
        .await;
    let topic = bounded(RECV_TIMEOUT, "publish", async {
        loop {
            if let rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::Publish(p)) =
                eventloop.poll().await.expect("loop")
            {
                return (p.topic.to_vec(), p.payload.to_vec());
            }
        }
    })
    .await;
    assert_eq!(
        topic,
        (format!("{base}/a/x/b/c").into_bytes(), b"yes".to_vec())
    );
    broker.assert_alive();
}
