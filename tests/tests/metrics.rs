//! The Prometheus endpoint, scraped while traffic flows: counters move consistently with what the
//! clients sent and received, gauges reflect the connections, names follow Prometheus conventions.

use std::collections::HashMap;
use std::time::Duration;

use ringmq_tests::*;

async fn settled(port: u16, check: impl Fn(&str) -> bool) -> String {
    // Shards publish their counters once a second.
    for _ in 0..40 {
        let text = scrape_metrics(port);
        if check(&text) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    scrape_metrics(port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_follow_the_traffic() {
    let port = free_port();
    let broker = BrokerProcess::start(&["--metrics-listen", &format!("127.0.0.1:{port}")]);
    const SUBSCRIBERS: usize = 10;
    const PUBLISHERS: usize = 5;
    const MESSAGES: usize = 100; // per publisher, half QoS 0, half QoS 1
    let topic = unique("metrics/t");
    let mut subs = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let (mut c, _) = RawClient::connected(broker.addr, connect_v4(&unique("msub"))).await;
        c.subscribe(&topic, QoS::AtLeastOnce).await;
        subs.push(c);
    }
    let mut pubs = Vec::new();
    for _ in 0..PUBLISHERS {
        let (c, _) = RawClient::connected(broker.addr, connect_v4(&unique("mpub"))).await;
        pubs.push(c);
    }
    // Scrape while the publishers are sending, too: the endpoint answers under load.
    let mid = tokio::task::spawn_blocking(move || scrape_metrics(port));
    for c in pubs.iter_mut() {
        for m in 0..MESSAGES {
            let qos = if m % 2 == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            c.publish(&topic, b"0123456789", qos, false).await;
        }
    }
    assert!(mid
        .await
        .expect("scrape task")
        .contains("ringmq_connections"));
    for c in subs.iter_mut() {
        for _ in 0..PUBLISHERS * MESSAGES {
            let p = c.next_publish().await;
            c.ack(&p).await;
        }
    }
    let sent = (PUBLISHERS * MESSAGES) as f64;
    let delivered = sent * SUBSCRIBERS as f64;
    let text = settled(port, |t| {
        metric_total(t, "ringmq_messages_sent_total", &[]) >= delivered
            && metric_total(t, "ringmq_messages_received_total", &[]) >= sent
    })
    .await;
    assert_eq!(
        metric_total(&text, "ringmq_messages_received_total", &["qos=\"0\""]),
        sent / 2.0
    );
    assert_eq!(
        metric_total(&text, "ringmq_messages_received_total", &["qos=\"1\""]),
        sent / 2.0
    );
    assert_eq!(
        metric_total(&text, "ringmq_messages_sent_total", &["qos=\"0\""]),
        delivered / 2.0
    );
    assert_eq!(
        metric_total(&text, "ringmq_messages_sent_total", &["qos=\"1\""]),
        delivered / 2.0
    );
    assert_eq!(
        metric_total(
            &text,
            "ringmq_messages_dropped_total",
            &["reason=\"queue_full\""]
        ),
        0.0
    );
    assert_eq!(
        metric_total(&text, "ringmq_connections", &[]),
        (SUBSCRIBERS + PUBLISHERS) as f64
    );
    assert_eq!(
        metric_total(&text, "ringmq_connections_accepted_total", &[]),
        (SUBSCRIBERS + PUBLISHERS) as f64
    );
    assert_eq!(
        metric_total(&text, "ringmq_subscriptions", &[]),
        SUBSCRIBERS as f64
    );
    let bytes_in = metric_total(&text, "ringmq_bytes_received_total", &[]);
    assert!(
        bytes_in >= sent * 10.0,
        "bytes received cover the payloads: {bytes_in}"
    );
    assert!(metric_total(&text, "ringmq_bytes_sent_total", &[]) >= delivered * 10.0);
    // Per-shard labels and the busy ratio exist for both shards.
    let shards: HashMap<&str, f64> = ["0", "1"]
        .iter()
        .map(|s| {
            (
                *s,
                metric_total(
                    &text,
                    "ringmq_shard_busy_ratio",
                    &[&format!("shard=\"{s}\"")],
                ),
            )
        })
        .collect();
    assert!(
        shards.values().all(|r| (0.0..=1.0).contains(r)),
        "{shards:?}"
    );
    assert!(
        text.contains("ringmq_shard_busy_ratio{shard=\"1\"}"),
        "per-shard gauge"
    );

    // Closing connections moves the close counters by reason.
    for c in pubs {
        c.disconnect().await;
    }
    let text = settled(port, |t| {
        metric_total(
            t,
            "ringmq_connections_closed_total",
            &["reason=\"client_disconnect\""],
        ) >= PUBLISHERS as f64
    })
    .await;
    assert_eq!(
        metric_total(
            &text,
            "ringmq_connections_closed_total",
            &["reason=\"client_disconnect\""]
        ),
        PUBLISHERS as f64
    );
    assert_eq!(
        metric_total(&text, "ringmq_connections", &[]),
        SUBSCRIBERS as f64
    );
}
