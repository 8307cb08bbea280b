//! Overload protection through the real binary: a connect flood and a flapping client are
//! limited while a well-behaved publisher/subscriber pair keeps exchanging messages; banned
//! client ids, usernames and addresses are refused; a per-client publish rate slows a publisher
//! without dropping anything. Reason codes as Eclipse Paho (v5), mosquitto_pub (3.1.1 and 5.0)
//! and raw transcripts see them.

use std::process::Command;
use std::time::Duration;

use ringmq_tests::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/overload_checks.py");

/// Runs the Paho script (bounded: it bounds each of its waits) and returns its output lines:
/// "connack N" or "closed" per connect.
fn paho(port: u16, args: &[&str]) -> Vec<String> {
    let mut command = Command::new("timeout");
    command
        .args(["120", "python3", SCRIPT, "127.0.0.1", &port.to_string()])
        .args(args);
    let out = command.output().expect("python3 runs");
    assert!(
        out.status.success(),
        "paho {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// `mosquitto_pub` once (bounded); returns its exit code and stderr. Its exit code is the
/// CONNACK's return/reason code when the broker refused it.
fn mosquitto_pub(port: u16, args: &[&str]) -> (i32, String) {
    let out = Command::new("timeout")
        .args([
            "30",
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .args(["-t", "overload/x", "-m", "x"])
        .args(args)
        .output()
        .expect("mosquitto_pub runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `/metrics` until `check` holds (counters are published once a second), bounded.
async fn metrics_until(port: u16, what: &str, check: impl Fn(&str) -> bool) -> String {
    for _ in 0..60 {
        let text = tokio::task::spawn_blocking(move || scrape_metrics(port))
            .await
            .expect("scrape");
        if check(&text) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("metrics never showed {what}");
}

fn refused(text: &str, reason: &str) -> f64 {
    metric_total(
        text,
        "ringmq_connections_refused_total",
        &[&format!("reason=\"{reason}\"")],
    )
}

/// One raw handshake: the CONNACK's reason code, or None if the broker closed without one.
async fn raw_attempt(addr: std::net::SocketAddr, connect: Connect) -> Option<ReasonCode> {
    let mut c = RawClient::connect(addr).await;
    let version = connect.protocol;
    c.version = version;
    c.send(&Packet::Connect(Box::new(connect)), version).await;
    match c.recv_within(RECV_TIMEOUT).await {
        Recv::Packet(Packet::ConnAck(ack)) => Some(ack.reason_code),
        Recv::Closed => None,
        other => panic!("expected CONNACK or a close, got {other:?}"),
    }
}

/// The scenario: a connect flood (hundreds of raw v5 and 3.1.1 connects at once, then
/// Paho connecting in a row) is held to the connect rate — v5 CONNACK 0x9F Connection rate
/// exceeded, 3.1.1 closed without CONNACK — and a flapping client id is banned — v5 CONNACK 0x8A
/// Banned, 3.1.1 return code 5 — while a publisher and a subscriber that connected before keep
/// exchanging messages: every one arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_flood_and_flapping_client_are_limited_while_others_keep_working() {
    let metrics = free_port();
    let config = "\
[overload]
max_connection_rate = 2
connection_rate_burst = 60
[overload.flapping]
max_connects = 5
window_secs = 60
ban_secs = 300
";
    let mut broker = BrokerProcess::start_with_config(
        config,
        &["--metrics-listen", &format!("127.0.0.1:{metrics}")],
    );
    let addr = broker.addr;
    let port = broker.port;
    let topic = unique("overload/pair");
    let (mut sub, _) = RawClient::connected(addr, connect_v5(&unique("pair-sub"))).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await;
    let (mut publisher, _) = RawClient::connected(addr, connect_v5(&unique("pair-pub"))).await;

    // The flapping client id, first (the flood empties the connect-rate bucket afterwards).
    let flapper = unique("flapper");
    let paho_on = paho::available();
    if paho_on {
        let lines = paho(port, &["flap", &flapper, "7"]);
        assert_eq!(
            lines[..5],
            ["connack 0"; 5],
            "five connects allowed: {lines:?}"
        );
        // 0x8A Banned, from the sixth connect on.
        assert_eq!(lines[5..], ["connack 138"; 2], "{lines:?}");
    } else {
        for n in 0..5 {
            let code = raw_attempt(addr, connect_v5(&flapper)).await;
            assert_eq!(code, Some(ReasonCode::Success), "connect {n}");
        }
        let code = raw_attempt(addr, connect_v5(&flapper)).await;
        assert_eq!(code, Some(ReasonCode::Banned));
    }
    if mosquitto::available() {
        // 3.1.1: return code 5 (not authorised), which mosquitto_pub exits with.
        let (code, stderr) = mosquitto_pub(port, &["-V", "mqttv311", "-i", &flapper]);
        assert_eq!(code, 5, "{stderr}");
        assert!(stderr.contains("not authorised"), "{stderr}");
        let (code, stderr) = mosquitto_pub(port, &["-V", "5", "-i", &flapper]);
        assert_eq!(code, 0x8A, "{stderr}");
        assert!(stderr.contains("Banned"), "{stderr}");
    }

    // The well-behaved pair keeps going through the flood.
    const MESSAGES: u16 = 200;
    let pair_topic = topic.clone();
    let publishing = tokio::spawn(async move {
        for n in 1..=MESSAGES {
            let mut p = publish(
                &pair_topic,
                n.to_string().as_bytes(),
                QoS::AtLeastOnce,
                false,
            );
            p.packet_id = Some(pid(n));
            let code = publisher.publish_packet(p).await;
            assert_eq!(code, ReasonCode::Success, "message {n}");
        }
        publisher
    });
    let receiving = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < usize::from(MESSAGES) {
            let p = sub.next_publish().await;
            sub.ack(&p).await;
            got.push(
                String::from_utf8_lossy(&p.payload)
                    .parse::<u16>()
                    .unwrap_or(0),
            );
        }
        (sub, got)
    });

    // 300 v5 and 100 3.1.1 connects at once.
    let mut flood = Vec::new();
    for n in 0..400 {
        let connect = if n % 4 == 3 {
            connect_v4(&unique("flood"))
        } else {
            connect_v5(&unique("flood"))
        };
        let v5 = connect.protocol == ProtocolVersion::V5;
        flood.push(tokio::spawn(async move {
            (v5, raw_attempt(addr, connect).await)
        }));
    }
    let (mut v5_ok, mut v5_rate, mut v3_ok, mut v3_closed) = (0, 0, 0, 0);
    for task in flood {
        let (v5, outcome) = bounded(Duration::from_secs(60), "flood connect", task)
            .await
            .expect("flood task");
        match (v5, outcome) {
            (true, Some(ReasonCode::Success)) => v5_ok += 1,
            // [MQTT-3.2.2.2] 0x9F Connection rate exceeded.
            (true, Some(ReasonCode::ConnectionRateExceeded)) => v5_rate += 1,
            // 3.1.1 has no return code for it: closed without CONNACK.
            (false, None) => v3_closed += 1,
            (false, Some(ReasonCode::Success)) => v3_ok += 1,
            other => panic!("unexpected flood outcome {other:?}"),
        }
    }
    assert!(v5_ok + v3_ok > 0, "the burst lets some in");
    assert!(
        v5_rate > 0 && v3_closed > 0,
        "v5 refused {v5_rate}, v3 closed {v3_closed}"
    );
    eprintln!("flood: v5 {v5_ok} in, {v5_rate} refused; v3.1.1 {v3_ok} in, {v3_closed} closed");

    // Paho, connecting in a row right after the flood, sees 0x9F too.
    if paho_on {
        let lines = paho(port, &["rate", "100"]);
        assert!(
            lines.iter().all(|l| l == "connack 0" || l == "connack 159"),
            "{lines:?}"
        );
        assert!(lines.iter().any(|l| l == "connack 159"), "{lines:?}");
    }

    let publisher = bounded(Duration::from_secs(60), "publisher", publishing)
        .await
        .expect("publisher task");
    let (sub, got) = bounded(Duration::from_secs(60), "subscriber", receiving)
        .await
        .expect("subscriber task");
    assert_eq!(got, (1..=MESSAGES).collect::<Vec<_>>(), "all, in order");

    let text = metrics_until(metrics, "the refusals", |t| {
        refused(t, "connection_rate") >= f64::from(v5_rate + v3_closed)
            && refused(t, "flapping") >= 1.0
    })
    .await;
    assert!(metric_total(&text, "ringmq_flapping_bans_total", &[]) >= 1.0);
    publisher.disconnect().await;
    sub.disconnect().await;
    broker.assert_alive();
}

/// The static ban list: a client id, a username and an address block, for 5.0 (CONNACK 0x8A) and
/// 3.1.1 (return code 5); clients not on it connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banned_client_id_username_and_address_are_refused() {
    let metrics = free_port();
    // 127.0.0.2 is a loopback address too: clients bind it to connect "from elsewhere".
    let config = "\
[overload.ban]
client_ids = [\"stolen-car\"]
usernames = [\"mallory\"]
addresses = [\"127.0.0.2/32\"]
";
    let mut broker = BrokerProcess::start_with_config(
        config,
        &["--metrics-listen", &format!("127.0.0.1:{metrics}")],
    );
    let (addr, port) = (broker.addr, broker.port);
    assert_eq!(
        raw_attempt(addr, connect_v5("stolen-car")).await,
        Some(ReasonCode::Banned)
    );
    // 3.1.1 return code 5 reads back as Not authorized.
    assert_eq!(
        raw_attempt(addr, connect_v4("stolen-car")).await,
        Some(ReasonCode::NotAuthorized)
    );
    let mut c = connect_v5(&unique("honest"));
    c.username = Some(Utf8Bytes::from("mallory"));
    assert_eq!(raw_attempt(addr, c).await, Some(ReasonCode::Banned));
    let mut expected_bans = 3.0;
    if paho::available() {
        assert_eq!(paho(port, &["one", "stolen-car"]), ["connack 138"]);
        assert_eq!(
            paho(port, &["one", &unique("p"), "127.0.0.2"]),
            ["connack 138"]
        );
        assert_eq!(
            paho(port, &["one", &unique("p"), "", "mallory"]),
            ["connack 138"]
        );
        assert_eq!(
            paho(port, &["one", &unique("p"), "127.0.0.1"]),
            ["connack 0"]
        );
        expected_bans += 3.0;
    }
    if mosquitto::available() {
        let (code, stderr) = mosquitto_pub(port, &["-V", "mqttv311", "-i", "stolen-car"]);
        assert_eq!(code, 5, "{stderr}");
        let id = unique("m");
        let (code, stderr) = mosquitto_pub(port, &["-V", "5", "-i", &id, "-A", "127.0.0.2"]);
        assert_eq!(code, 0x8A, "{stderr}");
        let (code, stderr) = mosquitto_pub(port, &["-V", "mqttv311", "-i", &id, "-u", "mallory"]);
        assert_eq!(code, 5, "{stderr}");
        let (code, stderr) = mosquitto_pub(port, &["-V", "5", "-i", &id]);
        assert_eq!(code, 0, "not banned: {stderr}");
        expected_bans += 3.0;
    }
    assert_eq!(
        raw_attempt(addr, connect_v4(&unique("fine"))).await,
        Some(ReasonCode::Success)
    );
    metrics_until(metrics, "the bans", |t| {
        refused(t, "banned") >= expected_bans
    })
    .await;
    broker.assert_alive();
}

/// A per-client publish rate: a publisher that sends far more than its rate at once is slowed
/// (its reading pauses, counted) and every message still arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rate_per_client_slows_the_publisher_and_drops_nothing() {
    let metrics = free_port();
    let config = "\
[overload]
publish_rate_per_client = 50
";
    let mut broker = BrokerProcess::start_with_config(
        config,
        &["--metrics-listen", &format!("127.0.0.1:{metrics}")],
    );
    let topic = unique("overload/rate");
    let (mut sub, _) = RawClient::connected(broker.addr, connect_v4(&unique("rsub"))).await;
    sub.subscribe(&topic, QoS::AtMostOnce).await;
    let (mut publisher, _) = RawClient::connected(broker.addr, connect_v4(&unique("rpub"))).await;
    const MESSAGES: u16 = 150;
    // All of them in one write: three seconds' worth at 50 a second.
    let mut bytes = Vec::new();
    for n in 1..=MESSAGES {
        let p = publish(&topic, n.to_string().as_bytes(), QoS::AtMostOnce, false);
        let mut out = bytes::BytesMut::new();
        wire::encode(&Packet::Publish(p), ProtocolVersion::V3_1_1, &mut out).expect("encode");
        bytes.extend_from_slice(&out);
    }
    publisher.send_bytes(&bytes).await;
    let mut got = Vec::new();
    bounded(Duration::from_secs(60), "rate-limited messages", async {
        while got.len() < usize::from(MESSAGES) {
            let p = sub.next_publish().await;
            got.push(
                String::from_utf8_lossy(&p.payload)
                    .parse::<u16>()
                    .unwrap_or(0),
            );
        }
    })
    .await;
    assert_eq!(got, (1..=MESSAGES).collect::<Vec<_>>(), "all, in order");
    let text = metrics_until(metrics, "the pauses", |t| {
        metric_total(t, "ringmq_publish_rate_pauses_total", &[]) >= 1.0
    })
    .await;
    assert_eq!(
        metric_total(&text, "ringmq_messages_dropped_total", &[]),
        0.0
    );
    // The publisher is still served normally afterwards.
    let mut p = publish(&topic, b"after", QoS::AtLeastOnce, false);
    p.packet_id = Some(pid(1));
    assert_eq!(publisher.publish_packet(p).await, ReasonCode::Success);
    broker.assert_alive();
}

/// SIGHUP reloads `[overload.ban]` from the configuration file: a client id added to it is
/// refused from then on; a file that no longer parses keeps the previous list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ban_list_reloads_on_sighup() {
    let mut broker = BrokerProcess::start_with_config("[overload.ban]\nclient_ids = []\n", &[]);
    let addr = broker.addr;
    let car = unique("stolen");
    assert_eq!(
        raw_attempt(addr, connect_v5(&car)).await,
        Some(ReasonCode::Success)
    );
    let path = broker.config_path().expect("config file").to_path_buf();
    std::fs::write(&path, format!("[overload.ban]\nclient_ids = [\"{car}\"]\n")).expect("rewrite");
    broker.signal(libc::SIGHUP);
    let mut banned = false;
    for _ in 0..40 {
        if raw_attempt(addr, connect_v5(&car)).await == Some(ReasonCode::Banned) {
            banned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        banned,
        "not banned after the reload; log:\n{}",
        broker.log_tail()
    );
    std::fs::write(&path, "[overload.ban]\nclient_ids = 5\n").expect("rewrite");
    broker.signal(libc::SIGHUP);
    let mut failed = false;
    for _ in 0..40 {
        if broker.log().contains("reload failed") {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(failed, "no reload failure logged:\n{}", broker.log_tail());
    assert_eq!(
        raw_attempt(addr, connect_v5(&car)).await,
        Some(ReasonCode::Banned),
        "the previous list stays"
    );
    assert_eq!(
        raw_attempt(addr, connect_v5(&unique("other"))).await,
        Some(ReasonCode::Success)
    );
    broker.assert_alive();
}

/// At its share of `[overload] max_handshakes` the shard stops accepting instead of accepting
/// and closing: a client that connects meanwhile waits in the listen backlog and is served once
/// a handshake slot frees (EMQX's acceptor throttling, where a storm is slowed, not refused).
#[test]
fn at_max_handshakes_new_clients_wait_instead_of_being_refused() {
    if !mosquitto::available() {
        return;
    }
    let metrics = free_port();
    let config = "[overload]\nmax_handshakes = 2\n[overload.flapping]\nenabled = false\n";
    // One shard: the share is the whole bound (on several, SO_REUSEPORT spreads the sockets).
    let broker = BrokerProcess::start_with_config(
        config,
        &[
            "--shards",
            "1",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
        ],
    );
    // Two sockets that never send CONNECT hold both handshake slots.
    let silent: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(broker.addr).expect("connect"))
        .collect();
    let deadline = std::time::Instant::now() + METRIC_WAIT;
    loop {
        let text = scrape_metrics(metrics);
        if metric_total(&text, "ringmq_handshakes_in_progress", &[]) == 2.0
            && metric_total(&text, "ringmq_accept_pauses_total", &[]) >= 1.0
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "accepting never paused with both slots held:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A real client now: its TCP connect completes in the kernel's backlog, its CONNECT waits.
    let port = broker.port.to_string();
    let mut publisher = mosquitto::spawn(
        "mosquitto_pub",
        &[
            "-p",
            &port,
            "-t",
            "overload/waiting",
            "-m",
            "x",
            "-q",
            "1",
            "-d",
        ],
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        publisher.is_running(),
        "the client was answered while accepting was paused"
    );
    // One silent socket goes: a slot frees, accepting resumes, the waiting client is served.
    drop(silent.into_iter().next());
    let (status, lines) = publisher.finish(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "the waiting client was not served: {status:?} {lines:?}"
    );
    assert!(lines.iter().any(|l| l.contains("CONNACK")), "{lines:?}");
    let text = scrape_metrics(metrics);
    assert_eq!(
        metric_total(
            &text,
            "ringmq_connections_refused_total",
            &["reason=\"max_handshakes\""]
        ),
        0.0,
        "nobody is refused for max_handshakes while accepting pauses"
    );
}
