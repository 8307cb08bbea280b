//! `ringmq-loadgen` over TLS, mTLS, WebSocket and WebSocket + TLS, against the real broker
//! binary (its `[[listener]]` kinds `tls`, `ws`, `wss`) and against Mosquitto configured with
//! the same certificates: every message counted through, handshake refusals named in the
//! loadgen's failure table. Certificates are made by the test (`ringmq_tests::certs`).
//!
//! Needs `cargo build -p ringmq-broker -p ringmq-loadgen` first (the README's test command
//! builds every binary).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ringmq_tests::certs::Pki;
use ringmq_tests::*;
use serde_json::Value;

/// Upper bound for one loadgen run here.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);
/// Messages per pub/sub run.
const MESSAGES: u64 = 400;

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

/// Runs the loadgen against `port` with `args` and returns its JSON summary.
fn loadgen(port: u16, name: &str, args: &[&str]) -> Value {
    let bin = loadgen_bin();
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p ringmq-loadgen` first (or set RINGMQ_LOADGEN_BIN)",
        bin.display()
    );
    let json = std::env::temp_dir().join(format!("{}.json", unique(name)));
    let child = Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--quiet", "--threads", "2", "--connect-timeout-ms", "20000"])
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
    let _ = std::fs::remove_file(&json);
    serde_json::from_str(&text).expect("summary is JSON")
}

fn field(summary: &Value, path: &str) -> u64 {
    path.split('.')
        .fold(summary, |value, key| &value[key])
        .as_u64()
        .unwrap_or_else(|| panic!("{path} missing in {summary}"))
}

fn failures(summary: &Value) -> Vec<String> {
    summary["connections"]["failures"]
        .as_object()
        .map(|map| map.keys().cloned().collect())
        .unwrap_or_default()
}

/// 4 publishers, MESSAGES in total, measured by 2 subscribers of the same run.
fn pub_sub_args<'a>(transport: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--transport", transport];
    args.extend_from_slice(extra);
    args.extend([
        "pub",
        "-c",
        "4",
        "--limit",
        "400",
        "--rate",
        "2000",
        "--subscribers",
        "2",
    ]);
    args
}

fn assert_every_message_arrived(summary: &Value, transport: &str) {
    assert_eq!(summary["transport"], transport, "{summary}");
    assert_eq!(field(summary, "connections.connected"), 6, "{summary}");
    assert_eq!(field(summary, "connections.failed"), 0, "{summary}");
    assert_eq!(field(summary, "messages.sent"), MESSAGES);
    assert_eq!(field(summary, "messages.received"), 2 * MESSAGES);
    assert_eq!(field(summary, "messages.lost"), 0);
    assert_eq!(field(summary, "messages.duplicated"), 0);
    assert!(
        summary["connections"]["unexpected_disconnects"]
            .as_object()
            .is_none_or(|map| map.is_empty()),
        "{summary}"
    );
}

fn edge_config(pki: &Pki) -> String {
    let tls = format!(
        "cert_file = {:?}\nkey_file = {:?}\n",
        pki.path("server.pem"),
        pki.path("server.key")
    );
    format!(
        "[[listener]]\nkind = \"tls\"\naddr = \"127.0.0.1:0\"\n[listener.tls]\n{tls}\n\
         [[listener]]\nkind = \"tls\"\naddr = \"127.0.0.1:0\"\n[listener.tls]\n{tls}ca_file = {:?}\nclient_auth = \"required\"\n\n\
         [[listener]]\nkind = \"ws\"\naddr = \"127.0.0.1:0\"\npath = \"/mqtt\"\n\n\
         [[listener]]\nkind = \"wss\"\naddr = \"127.0.0.1:0\"\npath = \"/mqtt\"\n[listener.tls]\n{tls}",
        pki.path("ca.pem"),
    )
}

/// The same pub/sub run over each of the broker's edge listeners, every message through.
/// Over ws/wss the loadgen's masked binary frames are what the broker's RFC 6455 decoder
/// accepts [MQTT-6.0.0-1], and its `101` selected "mqtt" [MQTT-6.0.0-4].
#[test]
fn pub_sub_over_tls_ws_and_wss() {
    let pki = Pki::new();
    let broker = BrokerProcess::start_with_config(&edge_config(&pki), &[]);
    let ca = pki.path("ca.pem");
    for (transport, port) in [
        ("tls", broker.listener("tls", 0).port()),
        ("ws", broker.listener("ws", 0).port()),
        ("wss", broker.listener("wss", 0).port()),
    ] {
        let summary = loadgen(
            port,
            &format!("edge-{transport}"),
            &pub_sub_args(transport, &["--cafile", &ca, "--mqtt-version", "5"]),
        );
        assert_every_message_arrived(&summary, transport);
    }
}

/// A small TLS connection storm: 300 full handshakes held and closed cleanly.
#[test]
fn tls_connection_storm_holds_every_client() {
    let pki = Pki::new();
    let broker = BrokerProcess::start_with_config(&edge_config(&pki), &[]);
    let summary = loadgen(
        broker.listener("tls", 0).port(),
        "edge-storm",
        &[
            "--transport",
            "tls",
            "--cafile",
            &pki.path("ca.pem"),
            "--duration",
            "1",
            "conn",
            "-c",
            "300",
        ],
    );
    assert_eq!(field(&summary, "connections.connected"), 300, "{summary}");
    assert_eq!(field(&summary, "connections.failed"), 0, "{summary}");
}

/// mTLS: with the client certificate every client connects; without it every client fails
/// (in TLS 1.3 the client's handshake is done before the broker judges its certificate, so the
/// loadgen sees the broker close the connection, or its alert); trusting another CA than the
/// one that signed the broker's certificate fails every client with the rustls reason.
#[test]
fn mtls_and_refusals_are_named() {
    let pki = Pki::new();
    pki.client("ca", "car", "car-1", 30);
    let broker = BrokerProcess::start_with_config(&edge_config(&pki), &[]);
    let port = broker.listener("tls", 1).port();
    let ca = pki.path("ca.pem");
    let (cert, key) = (pki.path("car.pem"), pki.path("car.key"));
    let summary = loadgen(
        port,
        "edge-mtls",
        &pub_sub_args("tls", &["--cafile", &ca, "--cert", &cert, "--key", &key]),
    );
    assert_every_message_arrived(&summary, "tls");

    let hold = ["--duration", "0.5", "conn", "-c", "5"];
    let mut args = vec!["--transport", "tls", "--cafile", &ca];
    args.extend(hold);
    let summary = loadgen(port, "edge-mtls-nocert", &args);
    assert_eq!(field(&summary, "connections.connected"), 0, "{summary}");
    assert_eq!(field(&summary, "connections.failed"), 5, "{summary}");
    assert!(
        failures(&summary)
            .iter()
            .all(|r| r.starts_with("tls_") || r == "closed_by_broker" || r == "reset"),
        "{summary}"
    );

    let other = pki.path("other-ca.pem");
    let mut args = vec!["--transport", "tls", "--cafile", &other];
    args.extend(hold);
    let summary = loadgen(broker.listener("tls", 0).port(), "edge-wrong-ca", &args);
    assert_eq!(field(&summary, "connections.failed"), 5, "{summary}");
    assert_eq!(
        failures(&summary),
        vec!["tls_invalidcertificate(unknownissuer)".to_owned()],
        "{summary}"
    );
}

/// A server name the certificate does not carry is refused; the right one (`localhost`, a
/// DNS SAN of the server certificate) works though the address is 127.0.0.1.
#[test]
fn server_name_is_checked() {
    let pki = Pki::new();
    let broker = BrokerProcess::start_with_config(&edge_config(&pki), &[]);
    let port = broker.listener("tls", 0).port();
    let ca = pki.path("ca.pem");
    let hold = ["--duration", "0.5", "conn", "-c", "3"];
    let mut args = vec![
        "--transport",
        "tls",
        "--cafile",
        &ca,
        "--server-name",
        "localhost",
    ];
    args.extend(hold);
    let summary = loadgen(port, "edge-sni-ok", &args);
    assert_eq!(field(&summary, "connections.connected"), 3, "{summary}");
    let mut args = vec![
        "--transport",
        "tls",
        "--cafile",
        &ca,
        "--server-name",
        "elsewhere.example",
    ];
    args.extend(hold);
    let summary = loadgen(port, "edge-sni-bad", &args);
    assert_eq!(field(&summary, "connections.failed"), 3, "{summary}");
    assert!(
        failures(&summary)
            .iter()
            .all(|r| r.starts_with("tls_invalidcertificate(notvalidforname")),
        "{summary}"
    );
}

/// A wrong WebSocket path is the broker's 404, named as such.
#[test]
fn ws_wrong_path_is_named() {
    let pki = Pki::new();
    let broker = BrokerProcess::start_with_config(&edge_config(&pki), &[]);
    let summary = loadgen(
        broker.listener("ws", 0).port(),
        "edge-ws-path",
        &[
            "--transport",
            "ws",
            "--ws-path",
            "/elsewhere",
            "--duration",
            "0.5",
            "conn",
            "-c",
            "2",
        ],
    );
    assert_eq!(
        failures(&summary),
        vec!["ws_refused_404".to_owned()],
        "{summary}"
    );
}

// ----- Mosquitto with the same certificates -------------------------------------------------

struct Mosquitto {
    child: Child,
    dir: PathBuf,
    plain: u16,
    tls: u16,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_mosquitto(pki: &Pki) -> Option<Mosquitto> {
    let binary = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists());
    let Some(binary) = binary else {
        eprintln!("SKIPPED: mosquitto is not installed (apt-get install -y mosquitto)");
        return None;
    };
    let dir = std::env::temp_dir().join(unique("loadgen-edge-mosquitto"));
    std::fs::create_dir_all(&dir).expect("mosquitto dir");
    // Mosquitto started as root drops to its own user, which cannot read the test's 0600 key:
    // it gets world-readable copies in its own directory.
    use std::os::unix::fs::PermissionsExt;
    let readable = std::fs::Permissions::from_mode(0o644);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    for name in ["ca.pem", "server.pem", "server.key"] {
        let copy = dir.join(name);
        std::fs::copy(pki.path(name), &copy).expect("copy certificate");
        std::fs::set_permissions(&copy, readable.clone()).expect("chmod certificate");
    }
    let (plain, tls) = (free_port(), free_port());
    let config = format!(
        "per_listener_settings false\nallow_anonymous true\nmax_queued_messages 100000\n\
         listener {plain} 127.0.0.1\n\
         listener {tls} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n",
        ca = dir.join("ca.pem").display(),
        cert = dir.join("server.pem").display(),
        key = dir.join("server.key").display(),
    );
    let path = dir.join("mosquitto.conf");
    std::fs::write(&path, config).expect("mosquitto config");
    let child = Command::new(binary)
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto");
    let broker = Mosquitto {
        child,
        dir,
        plain,
        tls,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    for port in [plain, tls] {
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Some(broker)
}

/// Mosquitto's TLS listener (OpenSSL: a TLS implementation independent of ours) takes the
/// loadgen's TLS; a mosquitto_sub on the plain listener witnesses every message published over
/// TLS. (Debian's mosquitto 2.0.11 here cannot open a websockets listener, so WebSocket is
/// checked against ringmq only.)
#[test]
fn mosquitto_over_tls() {
    let pki = Pki::new();
    let Some(broker) = start_mosquitto(&pki) else {
        return;
    };
    let mut witness = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.plain.to_string()])
        .args(["-F", "%t", "-t", "bench/#", "-C", &MESSAGES.to_string()])
        .args(["-W", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto_sub");
    // The witness subscribes before publishing starts; the loadgen's own subscribers count
    // the same messages independently of it.
    std::thread::sleep(Duration::from_millis(500));
    let ca = pki.path("ca.pem");
    let summary = loadgen(
        broker.tls,
        "mosquitto-tls",
        &pub_sub_args("tls", &["--cafile", &ca]),
    );
    let stdout = witness.stdout.take().expect("piped");
    let seen = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .filter(|line| line.starts_with("bench/"))
        .count() as u64;
    let _ = witness.kill();
    let _ = witness.wait();
    assert_every_message_arrived(&summary, "tls");
    assert_eq!(seen, MESSAGES, "the witness saw a different count");
}
