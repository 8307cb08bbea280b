//! The whole path against a real Kafka-protocol broker: MQTT clients → the `ringmq` binary with
//! `[bridge.kafka]` → tansu → kafka-python (`scripts/kafka/check_topic.py`), which checks every
//! message arrived exactly once with the right key and headers. Skipped loudly when tansu or
//! kafka-python is missing (`scripts/test.sh` installs both).

use std::path::{Path, PathBuf};
use std::process::Command;

use ringmq_tests::*;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn tansu_bin() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/tansu"));
    std::env::var_os("TANSU_BIN")
        .map(PathBuf::from)
        .into_iter()
        .chain(home)
        .find(|p| p.exists())
}

fn python_has_kafka() -> bool {
    Command::new("python3")
        .args(["-c", "import kafka"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Kills the tansu process on drop.
struct Tansu {
    pid: String,
    bootstrap: String,
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(&self.pid).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_telemetry_reaches_tansu_once_with_key_and_headers() {
    let Some(tansu) = tansu_bin() else {
        eprintln!("\n*** SKIPPED tansu broker test: no tansu binary (scripts/kafka/start-tansu.sh installs it) ***\n");
        return;
    };
    if !python_has_kafka() {
        eprintln!("\n*** SKIPPED tansu broker test: python3 with kafka-python missing ***\n");
        return;
    }
    let port = free_port();
    let root = tansu.parent().and_then(Path::parent).expect("tansu root");
    let started = Command::new(repo_root().join("scripts/kafka/start-tansu.sh"))
        .arg(port.to_string())
        .env("TANSU_ROOT", root)
        .output()
        .expect("start-tansu.sh runs");
    assert!(
        started.status.success(),
        "start-tansu.sh: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    let kafka = Tansu {
        pid: String::from_utf8_lossy(&started.stdout).trim().to_string(),
        bootstrap: format!("127.0.0.1:{port}"),
    };
    let created = Command::new("python3")
        .arg(repo_root().join("scripts/kafka/create_topics.py"))
        .args(["--bootstrap", &kafka.bootstrap, "telemetry"])
        .output()
        .expect("create_topics.py runs");
    assert!(
        created.status.success(),
        "create_topics.py: {}",
        String::from_utf8_lossy(&created.stderr)
    );

    let config = format!(
        r#"
[bridge.kafka]
bootstrap_servers = "{}"
[bridge.kafka.producer]
"linger.ms" = 5
[[bridge.kafka.rule]]
filter = "vehicle/+/telemetry"
kafka_topic = "telemetry"
key = "client_id"
"#,
        kafka.bootstrap
    );
    let mut broker = BrokerProcess::start_with_config(&config, &[]);
    const PER_CAR: usize = 25;
    let mut expectations = Vec::new();
    for i in 0..4 {
        let version = if i % 2 == 0 {
            ProtocolVersion::V3_1_1
        } else {
            ProtocolVersion::V5
        };
        let id = format!("tansu-car-{i}");
        let (mut car, _) = RawClient::connected(broker.addr, connect(version, &id, true, 60)).await;
        for m in 0..PER_CAR {
            let payload = format!("{id}:{m}");
            // QoS 1: the PUBACK says the broker took it; the bridge then owns delivery.
            car.publish(
                &format!("vehicle/{id}/telemetry"),
                payload.as_bytes(),
                QoS::AtLeastOnce,
                false,
            )
            .await;
            expectations.push(format!(
                r#"{{"payload": "{payload}", "key": "{id}", "headers": {{"mqtt_topic": "vehicle/{id}/telemetry", "mqtt_client_id": "{id}", "mqtt_qos": "1"}}}}"#
            ));
        }
        car.disconnect().await;
    }
    let expect_path =
        std::env::temp_dir().join(format!("{}.json", unique("ringmq-broker-tansu-expect")));
    std::fs::write(&expect_path, format!("[{}]", expectations.join(",")))
        .expect("write expectations");
    let checked = Command::new("python3")
        .arg(repo_root().join("scripts/kafka/check_topic.py"))
        .args([
            "--bootstrap",
            &kafka.bootstrap,
            "--topic",
            "telemetry",
            "--expect",
        ])
        .arg(&expect_path)
        .output()
        .expect("check_topic.py runs");
    let _ = std::fs::remove_file(&expect_path);
    let report = String::from_utf8_lossy(&checked.stdout).to_string()
        + &String::from_utf8_lossy(&checked.stderr);
    assert!(checked.status.success(), "check_topic.py: {report}");
    assert!(
        report.contains(&format!("\"ok\": {}", 4 * PER_CAR)),
        "check_topic.py: {report}"
    );
    broker.assert_alive();
}
