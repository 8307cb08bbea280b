//! End to end against a real Kafka-protocol broker (tansu) with an independent consumer
//! (kafka-python via scripts/kafka/check_topic.py).
//!
//! Skipped, loudly, when the tansu binary (`$TANSU_BIN`, `~/.cargo/bin/tansu` or on `PATH`) or
//! python3 with kafka-python is missing. Install with scripts/kafka/start-tansu.sh and
//! `pip install kafka-python`. The broker is started on a free loopback port and killed at the end.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use ringmq_bridge_kafka::{AckToken, Bridge, BridgeConfig, BridgeRecord};

const WAIT_LIMIT: Duration = Duration::from_secs(60);
const RECORDS: u64 = 200;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn find_tansu() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TANSU_BIN") {
        return Some(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo/bin/tansu"));
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("tansu"))
            .find(|path| path.is_file())
    });
    home.filter(|path| path.is_file()).or(on_path)
}

fn python_has_kafka() -> bool {
    Command::new("python3")
        .args(["-c", "import kafka"])
        .status()
        .map(|status| status.success())
        .unwrap_or(false)
}

/// Kills the broker this test started, by pid, when the test ends (pass or fail).
struct Tansu {
    pid: String,
    bootstrap: String,
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(&self.pid).status();
    }
}

fn start_tansu(tansu: &Path) -> Tansu {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let bin_dir = tansu.parent().and_then(Path::parent).expect("tansu root");
    let output = Command::new(repo_root().join("scripts/kafka/start-tansu.sh"))
        .arg(port.to_string())
        .env("TANSU_ROOT", bin_dir)
        .output()
        .expect("start-tansu.sh runs");
    assert!(
        output.status.success(),
        "start-tansu.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Tansu {
        pid: String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        bootstrap: format!("127.0.0.1:{port}"),
    }
}

fn python(script: &str, args: &[&str]) -> (bool, String) {
    let output = Command::new("python3")
        .arg(repo_root().join("scripts/kafka").join(script))
        .args(args)
        .output()
        .expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn prerequisites() -> Option<PathBuf> {
    let Some(tansu) = find_tansu() else {
        eprintln!(
            "\n*** SKIPPED tansu tests: no tansu binary (set TANSU_BIN or run scripts/kafka/start-tansu.sh) ***\n"
        );
        return None;
    };
    if !python_has_kafka() {
        eprintln!("\n*** SKIPPED tansu tests: python3 with kafka-python missing (pip install kafka-python) ***\n");
        return None;
    }
    Some(tansu)
}

#[test]
fn bridged_records_arrive_once_with_key_and_headers() {
    let Some(tansu) = prerequisites() else {
        return;
    };
    let broker = start_tansu(&tansu);
    let (created, log) = python(
        "create_topics.py",
        &["--bootstrap", &broker.bootstrap, "telemetry", "events"],
    );
    assert!(created, "create_topics.py failed: {log}");

    // The two rules write to two topics. With both producers (QoS0 and acked) writing one
    // partition, tansu's in-memory engine intermittently lost one producer's records although it
    // had acknowledged them (seen once in CI-style runs: 100 of 200 missing, all acked); real
    // Kafka serialises concurrent producers per partition. Separate topics keep this a test of
    // the bridge.
    let config: BridgeConfig = toml::from_str(&format!(
        r#"
bootstrap_servers = "{}"
buffer_max_messages = 10000
[producer]
"linger.ms" = 5
[[rule]]
filter = "vehicle/+/telemetry"
kafka_topic = "telemetry"
key = "client_id"
[[rule]]
filter = "vehicle/+/event"
kafka_topic = "events"
key = "level:2"
ack = "kafka"
"#,
        broker.bootstrap
    ))
    .expect("config");
    let (ack_tx, acks) = flume::bounded(RECORDS as usize);
    let (inbound_tx, _inbound) = flume::bounded(16);
    let bridge = Bridge::start(config, vec![ack_tx], inbound_tx).expect("bridge starts");

    let mut expectations = Vec::new();
    let mut expectations_acked = Vec::new();
    let mut acked_tokens = 0;
    for seq in 0..RECORDS {
        let vehicle = format!("car-{}", seq % 7);
        let client_id = format!("client-{}", seq % 5);
        let acked = seq % 2 == 1;
        let topic = if acked {
            format!("vehicle/{vehicle}/event")
        } else {
            format!("vehicle/{vehicle}/telemetry")
        };
        let matched = bridge.matcher().matches(&topic).expect("bridged");
        let payload = format!("record-{seq}");
        let qos = u8::from(acked);
        bridge
            .sender()
            .try_send(BridgeRecord {
                rule: matched.rule,
                topic: Bytes::from(topic.clone()),
                client_id: Bytes::from(client_id.clone()),
                qos,
                payload: Bytes::from(payload.clone()),
                user_properties: vec![(Bytes::from_static(b"fleet"), Bytes::from_static(b"north"))],
                publish_time_ms: 1_700_000_000_000 + seq,
                ack: acked.then_some(AckToken {
                    shard: 0,
                    token: seq,
                }),
            })
            .expect("channel has room");
        acked_tokens += usize::from(acked);
        let key = if acked {
            vehicle.clone()
        } else {
            client_id.clone()
        };
        let expectation = format!(
            r#"{{"payload":"{payload}","key":"{key}","headers":{{"mqtt_topic":"{topic}","mqtt_client_id":"{client_id}","mqtt_qos":"{qos}","mqtt_publish_time_ms":"{}","fleet":"north"}}}}"#,
            1_700_000_000_000 + seq
        );
        if acked {
            expectations_acked.push(expectation);
        } else {
            expectations.push(expectation);
        }
    }

    let mut answered = BTreeMap::new();
    let deadline = Instant::now() + WAIT_LIMIT;
    while answered.len() < acked_tokens {
        let ack = acks
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("only {} acks: {:?}", answered.len(), bridge.stats()));
        assert_eq!(ack.outcome, Ok(()));
        *answered.entry(ack.token).or_insert(0) += 1;
    }
    assert!(answered.values().all(|count| *count == 1));
    while bridge.stats().acknowledged < RECORDS {
        assert!(
            Instant::now() < deadline,
            "not all acknowledged: {:?}",
            bridge.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    bridge.shutdown();

    for (topic, expected) in [
        ("telemetry", &expectations),
        ("events", &expectations_acked),
    ] {
        let expect_path =
            std::env::temp_dir().join(format!("ringmq-tansu-expect-{}-{topic}.json", broker.pid));
        std::fs::write(&expect_path, format!("[{}]", expected.join(","))).expect("expectations");
        let (passed, report) = python(
            "check_topic.py",
            &[
                "--bootstrap",
                &broker.bootstrap,
                "--topic",
                topic,
                "--expect",
                expect_path.to_str().expect("utf-8 path"),
            ],
        );
        let _ = std::fs::remove_file(&expect_path);
        assert!(passed, "check_topic.py {topic}: {report}");
        assert!(
            report.contains(&format!("\"ok\": {}", expected.len())),
            "check_topic.py {topic}: {report}"
        );
    }
}

#[test]
fn inbound_messages_commit_after_reply() {
    let Some(tansu) = prerequisites() else {
        return;
    };
    let broker = start_tansu(&tansu);
    let (created, log) = python(
        "create_topics.py",
        &["--bootstrap", &broker.bootstrap, "commands"],
    );
    assert!(created, "create_topics.py failed: {log}");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .expect("producer");
    for n in 0..5 {
        let key = format!("car-{n}");
        let payload = format!("unlock-{n}");
        producer
            .send(BaseRecord::to("commands").key(&key).payload(&payload))
            .map_err(|(error, _)| error)
            .expect("produce");
    }
    producer.flush(Duration::from_secs(20)).expect("flush");

    let config: BridgeConfig = toml::from_str(&format!(
        r#"
bootstrap_servers = "{}"
[consumer]
"auto.offset.reset" = "earliest"
[[inbound]]
kafka_topic = "commands"
group_id = "ringmq-commands"
mqtt_topic = "vehicle/{{key}}/command"
qos = 1
"#,
        broker.bootstrap
    ))
    .expect("config");
    let (ack_tx, _acks) = flume::bounded(1);
    let (inbound_tx, inbound) = flume::bounded(64);
    let bridge = Bridge::start(config, vec![ack_tx], inbound_tx).expect("bridge starts");
    let mut messages = Vec::new();
    let deadline = Instant::now() + WAIT_LIMIT;
    while messages.len() < 5 {
        messages.push(
            inbound
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("inbound message"),
        );
    }
    for (n, message) in messages.iter().enumerate() {
        assert_eq!(message.topic, format!("vehicle/car-{n}/command"));
        assert_eq!(message.payload, Bytes::from(format!("unlock-{n}")));
    }
    let committed = || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &broker.bootstrap)
            .set("group.id", "ringmq-commands")
            .create()
            .expect("consumer");
        let mut list = TopicPartitionList::new();
        list.add_partition("commands", 0);
        consumer
            .committed_offsets(list, Duration::from_secs(10))
            .ok()
            .and_then(|list| list.find_partition("commands", 0).map(|p| p.offset()))
            .unwrap_or(Offset::Invalid)
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !matches!(committed(), Offset::Offset(n) if n > 0),
        "nothing may be committed before the broker replied"
    );
    for message in &messages {
        message.accept();
    }
    while committed() != Offset::Offset(5) {
        assert!(Instant::now() < deadline, "offset 5 never committed");
        std::thread::sleep(Duration::from_millis(100));
    }
    bridge.shutdown();
}
