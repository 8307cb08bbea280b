//! Interoperability with Debian's mosquitto_pub / mosquitto_sub (skipped loudly if missing).

use std::time::Duration;

use ringmq_tests::mosquitto;
use ringmq_tests::*;

const TOOL_WAIT: Duration = Duration::from_secs(15);

fn port(broker: &BrokerProcess) -> String {
    broker.port.to_string()
}

/// Starts mosquitto_sub and waits until its subscription is in place (it subscribes right after
/// CONNACK; a retained probe published by us tells when it is live).
fn subscriber(
    broker: &BrokerProcess,
    topic: &str,
    count: usize,
    extra: &[&str],
) -> mosquitto::Tool {
    let p = port(broker);
    let count = count.to_string();
    let mut args = vec![
        "-h",
        "127.0.0.1",
        "-p",
        &p,
        "-t",
        topic,
        "-C",
        &count,
        "-W",
        "15",
        "-i",
    ];
    let id = unique("msub");
    args.push(&id);
    args.extend_from_slice(extra);
    mosquitto::spawn("mosquitto_sub", &args)
}

async fn wait_subscribed(broker: &BrokerProcess) {
    // mosquitto_sub gives no signal when subscribed; a short pause is the best available and
    // every assertion below is on what arrives, not on timing.
    let _ = broker;
    tokio::time::sleep(Duration::from_millis(700)).await;
}

#[tokio::test]
async fn pub_sub_qos_0_1_2() {
    if !mosquitto::available() {
        return;
    }
    let mut broker = BrokerProcess::start(&[]);
    for qos in ["0", "1", "2"] {
        let topic = unique("mosq/qos");
        let sub = subscriber(&broker, &topic, 1, &["-q", qos]);
        wait_subscribed(&broker).await;
        let p = port(&broker);
        let message = format!("hello at qos {qos}");
        mosquitto::run(
            "mosquitto_pub",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &p,
                "-t",
                &topic,
                "-q",
                qos,
                "-m",
                &message,
            ],
            TOOL_WAIT,
        );
        let (status, lines) = sub.finish(TOOL_WAIT);
        assert!(
            status.is_some_and(|s| s.success()),
            "mosquitto_sub: {status:?}"
        );
        assert_eq!(lines, vec![message]);
    }
    broker.assert_alive();
}

#[tokio::test]
async fn retained_with_r() {
    if !mosquitto::available() {
        return;
    }
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("mosq/retained");
    let p = port(&broker);
    mosquitto::run(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-t",
            &topic,
            "-q",
            "1",
            "-r",
            "-m",
            "kept",
        ],
        TOOL_WAIT,
    );
    // A later subscriber gets it at once; -R would skip retained, so plain -C 1 suffices.
    let lines = mosquitto::run(
        "mosquitto_sub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-t",
            &topic,
            "-C",
            "1",
            "-W",
            "10",
            "-v",
        ],
        TOOL_WAIT,
    );
    assert_eq!(lines, vec![format!("{topic} kept")]);
    broker.assert_alive();
}

#[tokio::test]
async fn v5_pub_sub_with_user_property() {
    if !mosquitto::available() {
        return;
    }
    let mut broker = BrokerProcess::start(&[]);
    let topic = unique("mosq/v5");
    let sub = subscriber(
        &broker,
        &topic,
        1,
        &["-V", "mqttv5", "-q", "1", "-F", "%t|%p|%P"],
    );
    wait_subscribed(&broker).await;
    let p = port(&broker);
    mosquitto::run(
        "mosquitto_pub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-V",
            "mqttv5",
            "-t",
            &topic,
            "-q",
            "1",
            "-m",
            "five",
            "-D",
            "publish",
            "user-property",
            "fleet",
            "eu",
        ],
        TOOL_WAIT,
    );
    let (status, lines) = sub.finish(TOOL_WAIT);
    assert!(
        status.is_some_and(|s| s.success()),
        "mosquitto_sub: {status:?}"
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with(&format!("{topic}|five|")), "{lines:?}");
    assert!(
        lines[0].contains("fleet") && lines[0].contains("eu"),
        "{lines:?}"
    );
    broker.assert_alive();
}

#[tokio::test]
async fn will_of_killed_mosquitto_sub() {
    if !mosquitto::available() {
        return;
    }
    let mut broker = BrokerProcess::start(&[]);
    let will_topic = unique("mosq/will");
    let (mut watcher, _) = RawClient::connected(broker.addr, connect_v4(&unique("watch"))).await;
    watcher.subscribe(&will_topic, QoS::AtLeastOnce).await;
    let p = port(&broker);
    let id = unique("doomed");
    let doomed = mosquitto::spawn(
        "mosquitto_sub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &p,
            "-i",
            &id,
            "-t",
            "mosq/nothing",
            "--will-topic",
            &will_topic,
            "--will-payload",
            "vehicle offline",
            "--will-qos",
            "1",
        ],
    );
    // Wait until its session exists (it connected), then SIGKILL: no DISCONNECT is sent.
    tokio::time::sleep(Duration::from_millis(700)).await;
    doomed.kill();
    let got = watcher.next_publish().await;
    assert_eq!(&got.payload[..], b"vehicle offline");
    broker.assert_alive();
}
