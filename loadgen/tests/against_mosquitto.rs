//! End-to-end runs of the loadgen binary against a private Mosquitto instance on a free
//! loopback port. Skipped (with a message) when mosquitto is not installed.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_ringmq-loadgen");
/// Upper bound for any single loadgen run in these tests.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

struct Mosquitto {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn mosquitto_binary() -> Option<PathBuf> {
    [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|path| path.exists())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringmq-loadgen-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn start_mosquitto(name: &str) -> Option<Mosquitto> {
    let Some(binary) = mosquitto_binary() else {
        eprintln!(
            "SKIPPED: mosquitto is not installed (apt-get install -y mosquitto mosquitto-clients)"
        );
        return None;
    };
    let dir = scratch_dir(name);
    let port = free_port();
    let config = dir.join("mosquitto.conf");
    std::fs::write(
        &config,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\nmax_connections -1\n"
        ),
    )
    .expect("write config");
    let child = Command::new(binary)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto");
    let broker = Mosquitto { child, port, dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "mosquitto did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(broker)
}

fn wait_with_timeout(mut child: Child, what: &str) -> Output {
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "{what} timed out; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the loadgen with `args` and returns its JSON summary.
fn run_loadgen(broker: &Mosquitto, name: &str, args: &[&str]) -> Value {
    let json = broker.dir.join(format!("{name}.json"));
    let child = Command::new(LOADGEN)
        .args([
            "--port",
            &broker.port.to_string(),
            "--quiet",
            "--threads",
            "2",
        ])
        .arg("--json")
        .arg(&json)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loadgen");
    let output = wait_with_timeout(child, name);
    assert!(
        output.status.success(),
        "loadgen {name} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("summary written");
    serde_json::from_str(&text).expect("summary is JSON")
}

fn field(summary: &Value, path: &str) -> u64 {
    path.split('.')
        .fold(summary, |value, key| &value[key])
        .as_u64()
        .unwrap_or_else(|| panic!("{path} missing in {summary}"))
}

#[test]
fn pub_sub_counts_agree_with_an_independent_subscriber() {
    let Some(broker) = start_mosquitto("pubsub") else {
        return;
    };
    const MESSAGES: u64 = 1000;
    // The independent witness: mosquitto_sub prints one line per message (its topic only:
    // the binary payload could contain newlines) and exits after N.
    let mut witness = Command::new("mosquitto_sub")
        .args([
            "-p",
            &broker.port.to_string(),
            "-h",
            "127.0.0.1",
            "-F",
            "%t",
            "-t",
            "bench/#",
        ])
        .args(["-C", &MESSAGES.to_string(), "-W", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto_sub");
    // Let the witness subscribe before publishing starts.
    std::thread::sleep(Duration::from_millis(500));
    let summary = run_loadgen(
        &broker,
        "pubsub",
        &[
            "pub",
            "-c",
            "20",
            "--limit",
            "1000",
            "--rate",
            "2000",
            "--subscribers",
            "3",
        ],
    );
    let stdout = witness.stdout.take().expect("piped");
    let lines = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .filter(|line| line.starts_with("bench/"))
        .count() as u64;
    let _ = witness.kill();
    let _ = witness.wait();

    assert_eq!(field(&summary, "messages.sent"), MESSAGES);
    assert_eq!(
        lines,
        field(&summary, "messages.sent"),
        "witness saw a different count"
    );
    // 3 ordinary subscribers on bench/+ each get every message.
    assert_eq!(field(&summary, "messages.expected"), 3 * MESSAGES);
    assert_eq!(field(&summary, "messages.received"), 3 * MESSAGES);
    assert_eq!(field(&summary, "messages.lost"), 0);
    assert_eq!(field(&summary, "messages.duplicated"), 0);
    assert_eq!(field(&summary, "connections.connected"), 23);
    assert_eq!(field(&summary, "messages.latency_ms.count"), 3 * MESSAGES);
}

#[test]
fn shared_group_counts_each_message_once() {
    let Some(broker) = start_mosquitto("shared") else {
        return;
    };
    let summary = run_loadgen(
        &broker,
        "shared",
        &[
            "pub",
            "-c",
            "10",
            "--limit",
            "500",
            "--qos",
            "1",
            "--subscribers",
            "3",
            "--sub-filter",
            "$share/g/bench/+",
            "--sub-qos",
            "1",
        ],
    );
    assert_eq!(field(&summary, "messages.sent"), 500);
    assert_eq!(field(&summary, "messages.acked"), 500);
    assert_eq!(field(&summary, "messages.expected"), 500);
    assert_eq!(field(&summary, "messages.unique"), 500);
    assert_eq!(field(&summary, "messages.lost"), 0);
}

#[test]
fn holds_500_connections() {
    let Some(broker) = start_mosquitto("conn") else {
        return;
    };
    let summary = run_loadgen(
        &broker,
        "conn",
        &[
            "--duration",
            "1",
            "--conn-rate",
            "2000",
            "conn",
            "-c",
            "500",
        ],
    );
    assert_eq!(field(&summary, "connections.planned"), 500);
    assert_eq!(field(&summary, "connections.connected"), 500);
    assert_eq!(field(&summary, "connections.failed"), 0);
    assert_eq!(field(&summary, "connections.connect_latency_ms.count"), 500);
    assert!(summary["connections"]["unexpected_disconnects"]
        .as_object()
        .is_some_and(|map| map.is_empty()));
}

#[test]
fn refused_connections_are_counted_by_reason() {
    let port = free_port();
    let dir = scratch_dir("refused");
    let json = dir.join("refused.json");
    let child = Command::new(LOADGEN)
        .args([
            "--port",
            &port.to_string(),
            "--quiet",
            "--duration",
            "0.1",
            "--json",
        ])
        .arg(&json)
        .args(["conn", "-c", "5"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start loadgen");
    let output = wait_with_timeout(child, "refused");
    assert!(output.status.success());
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("json");
    assert_eq!(field(&summary, "connections.failed"), 5);
    assert_eq!(field(&summary, "connections.failures.refused"), 5);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn scenario_file_runs() {
    let Some(broker) = start_mosquitto("scenario") else {
        return;
    };
    let scenario = broker.dir.join("small.toml");
    std::fs::write(
        &scenario,
        r#"
        name = "small-fanin"
        [connection]
        ifaddr = ["127.0.0.2", "127.0.0.3"]
        [run]
        duration_s = 0.0
        [[group]]
        name = "ingest"
        count = 2
        role = "sub"
        filter = "$share/ingest/vehicle/+/telemetry"
        [[group]]
        name = "vehicles"
        count = 30
        role = "pub"
        topic = "vehicle/%i/telemetry"
        rate = 600.0
        limit = 300
        [[group]]
        name = "idle"
        count = 70
        role = "conn"
        "#,
    )
    .expect("write scenario");
    let summary = run_loadgen(
        &broker,
        "scenario",
        &["scenario", scenario.to_str().expect("utf8 path")],
    );
    assert_eq!(field(&summary, "connections.connected"), 102);
    assert_eq!(field(&summary, "messages.sent"), 300);
    assert_eq!(field(&summary, "messages.expected"), 300);
    assert_eq!(field(&summary, "messages.received"), 300);
    assert_eq!(field(&summary, "messages.lost"), 0);
}

#[test]
fn mqtt5_qos2_round_trip() {
    let Some(broker) = start_mosquitto("v5") else {
        return;
    };
    let summary = run_loadgen(
        &broker,
        "v5",
        &[
            "--mqtt-version",
            "5",
            "pub",
            "-c",
            "4",
            "--qos",
            "2",
            "--limit",
            "400",
            "--rate",
            "800",
            "--subscribers",
            "2",
            "--sub-qos",
            "2",
            "--payload-size",
            "1024",
        ],
    );
    assert_eq!(summary["mqtt_version"], "5");
    assert_eq!(field(&summary, "messages.sent"), 400);
    assert_eq!(field(&summary, "messages.acked"), 400);
    assert_eq!(field(&summary, "messages.received"), 800);
    assert_eq!(field(&summary, "messages.lost"), 0);
    assert_eq!(field(&summary, "messages.duplicated"), 0);
}

#[test]
fn shipped_scenarios_parse_via_cli() {
    // Parsing only: running 15,000 connections is the bench's job, not a unit test's.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    assert!(dir.join("telemetry-fanin.toml").exists());
    assert!(dir.join("broadcast.toml").exists());
    assert!(dir.join("conn-storm.toml").exists());
    assert!(dir.join("one-to-one.toml").exists());
    assert!(dir.join("idle.toml").exists());
}

/// Runs the loadgen with `args` (no --port: the test names every broker) and returns its JSON.
fn run_loadgen_free(dir: &Path, name: &str, args: &[&str]) -> Value {
    let json = dir.join(format!("{name}.json"));
    let child = Command::new(LOADGEN)
        .args(["--quiet", "--threads", "2", "--json"])
        .arg(&json)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loadgen");
    let output = wait_with_timeout(child, name);
    assert!(
        output.status.success(),
        "loadgen {name} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&json).expect("summary written"))
        .expect("summary is JSON")
}

fn broker_connects(summary: &Value, port: u16) -> u64 {
    summary["connections"]["connects_per_broker"][format!("127.0.0.1:{port}")]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn host_list_spreads_clients_round_robin_and_broker_flag_adds_more() {
    let (Some(a), Some(b)) = (start_mosquitto("rr-a"), start_mosquitto("rr-b")) else {
        return;
    };
    let hosts = format!("127.0.0.1:{},127.0.0.1:{}", a.port, b.port);
    let summary = run_loadgen_free(
        &a.dir,
        "rr",
        &["--host", &hosts, "--duration", "0.3", "conn", "-c", "10"],
    );
    assert_eq!(field(&summary, "connections.connected"), 10);
    assert_eq!(broker_connects(&summary, a.port), 5);
    assert_eq!(broker_connects(&summary, b.port), 5);
    assert_eq!(summary["broker"], hosts.as_str());

    // The repeated --broker form with a random pick: every client lands on one of the two.
    let summary = run_loadgen_free(
        &a.dir,
        "random",
        &[
            "--broker",
            &format!("127.0.0.1:{}", a.port),
            "--broker",
            &format!("127.0.0.1:{}", b.port),
            "--broker-pick",
            "random",
            "--duration",
            "0.3",
            "conn",
            "-c",
            "40",
        ],
    );
    assert_eq!(field(&summary, "connections.connected"), 40);
    let on_a = broker_connects(&summary, a.port);
    let on_b = broker_connects(&summary, b.port);
    assert_eq!(on_a + on_b, 40);
    assert!(on_a > 0 && on_b > 0, "random pick used one broker only");
}

#[test]
fn one_write_per_message_still_delivers_everything_and_counts_reads() {
    let Some(broker) = start_mosquitto("perwrite") else {
        return;
    };
    let summary = run_loadgen(
        &broker,
        "perwrite",
        &[
            "--publishes-per-write",
            "1",
            "pub",
            "-c",
            "10",
            "--limit",
            "500",
            "--subscribers",
            "2",
        ],
    );
    assert_eq!(field(&summary, "messages.sent"), 500);
    assert_eq!(field(&summary, "messages.received"), 1000);
    assert_eq!(field(&summary, "messages.lost"), 0);
    // Every delivery came through some read of a subscriber socket.
    let reads = field(&summary, "messages.publishes_per_read.count");
    assert!(reads > 0 && reads <= 1000, "reads {reads}");
    assert!(summary["loadgen"]["cpu_us_per_message"].as_f64().is_some());
}

#[test]
fn reconnects_to_the_next_broker_after_one_dies() {
    let (Some(a), Some(b)) = (start_mosquitto("fail-a"), start_mosquitto("fail-b")) else {
        return;
    };
    let (port_a, port_b) = (a.port, b.port);
    let dir = b.dir.clone();
    let json = dir.join("failover.json");
    let hosts = format!("127.0.0.1:{port_a},127.0.0.1:{port_b}");
    let child = Command::new(LOADGEN)
        .args(["--quiet", "--threads", "2", "--host", &hosts])
        .args(["--reconnect", "--reconnect-backoff-ms", "20,200"])
        .args(["--duration", "4", "--json"])
        .arg(&json)
        .args(["conn", "-c", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loadgen");
    // Let every client connect, then kill the first broker under its 10 clients.
    std::thread::sleep(Duration::from_millis(1500));
    drop(a);
    let output = wait_with_timeout(child, "failover");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("json");
    assert_eq!(field(&summary, "connections.connected"), 20);
    assert_eq!(field(&summary, "connections.reconnects"), 10);
    assert_eq!(field(&summary, "connections.reconnect_time_ms.count"), 10);
    let lost: u64 = summary["connections"]["unexpected_disconnects"]
        .as_object()
        .expect("map")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(lost, 10);
    // Round robin: the 10 clients of the dead broker went to the next one.
    assert_eq!(broker_connects(&summary, port_a), 10);
    assert_eq!(broker_connects(&summary, port_b), 20);
}
