//! Shared subscriptions `$share/{group}/{filter}` for 3.1.1 and 5.0 members.

use std::time::Duration;

use ringmq_tests::*;

async fn drain(c: &mut RawClient) -> Vec<u8> {
    let mut got = Vec::new();
    loop {
        match c.recv_within(Duration::from_millis(500)).await {
            Recv::Packet(Packet::Publish(p)) => {
                c.ack(&p).await;
                got.push(p.payload[0]);
            }
            Recv::Timeout => return got,
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn shared_group_balances_v4_and_v5_members() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("shared/t");
    let filter = format!("$share/workers/{topic}");
    let mut members = Vec::new();
    for (i, version) in [
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V5,
        ProtocolVersion::V5,
    ]
    .into_iter()
    .enumerate()
    {
        let (mut c, _) = RawClient::connected(
            broker.addr,
            connect(version, &unique(&format!("m{i}")), true, 60),
        )
        .await;
        assert_eq!(
            c.subscribe(&filter, QoS::AtLeastOnce).await,
            vec![ReasonCode::GrantedQoS1]
        );
        members.push(c);
    }
    let (mut plain, _) = RawClient::connected(broker.addr, connect_v4(&unique("plain"))).await;
    plain.subscribe(&topic, QoS::AtLeastOnce).await;
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v5(&unique("pub"))).await;
    const N: u8 = 60;
    for i in 0..N {
        publisher
            .publish(&topic, &[i], QoS::AtLeastOnce, false)
            .await;
    }
    let mut all = Vec::new();
    for m in members.iter_mut() {
        let got = drain(m).await;
        // Balanced: every member gets a share.
        assert!(!got.is_empty(), "a member got nothing");
        all.extend(got);
    }
    // [MQTT-4.8.2-?] each message goes to exactly one member of the group.
    all.sort();
    assert_eq!(all, (0..N).collect::<Vec<_>>());
    // A normal subscription on the same topic still gets every message.
    assert_eq!(drain(&mut plain).await, (0..N).collect::<Vec<_>>());
    broker.assert_alive();
}

#[tokio::test]
async fn remaining_members_get_everything_after_one_leaves() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("shared/leave");
    let filter = format!("$share/g/{topic}");
    let mut members = Vec::new();
    for i in 0..3 {
        let (mut c, _) =
            RawClient::connected(broker.addr, connect_v5(&unique(&format!("m{i}")))).await;
        c.subscribe(&filter, QoS::AtLeastOnce).await;
        members.push(c);
    }
    let leaving = members.remove(0);
    leaving.disconnect().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v4(&unique("pub"))).await;
    const N: u8 = 30;
    for i in 0..N {
        publisher
            .publish(&topic, &[i], QoS::AtLeastOnce, false)
            .await;
    }
    let mut all = Vec::new();
    for m in members.iter_mut() {
        all.extend(drain(m).await);
    }
    all.sort();
    assert_eq!(
        all,
        (0..N).collect::<Vec<_>>(),
        "nothing lost after a member left"
    );
    broker.assert_alive();
}

#[tokio::test]
async fn rumqttc_shared_subscription() {
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("shared/rq");
    let options = rumqttc::MqttOptions::new(unique("rq-m"), "127.0.0.1", broker.port);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    client
        .subscribe(format!("$share/rq/{topic}"), rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    bounded(RECV_TIMEOUT, "suback", async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) =
                eventloop.poll().await.expect("loop")
            {
                break;
            }
        }
    })
    .await;
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v4(&unique("pub"))).await;
    publisher
        .publish(&topic, b"one", QoS::AtLeastOnce, false)
        .await;
    let got = bounded(RECV_TIMEOUT, "shared delivery", async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) =
                eventloop.poll().await.expect("loop")
            {
                return p;
            }
        }
    })
    .await;
    // The delivered topic is the real one, not the $share filter.
    assert_eq!(got.topic, topic);
    broker.assert_alive();
}
