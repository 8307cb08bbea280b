//! TLS and mTLS listeners through independent clients: mosquitto_pub/sub with
//! `--cafile/--cert/--key`, Python paho-mqtt with `tls_set`. Certificates are made by the test
//! with openssl (`ringmq_tests::certs`). Refusals (expired, wrong CA, missing client
//! certificate) are checked by the client's failure and the broker's failure counter by reason,
//! and by the TLS alert the client reports (`openssl s_client`, Python's `ssl`);
//! identity mapping by which client ids are accepted; reload by a client that stays connected
//! while the server certificate changes under it.

use std::time::{Duration, Instant};

use ringmq_tests::certs::Pki;
use ringmq_tests::mosquitto;
use ringmq_tests::*;

const TOOL_WAIT: Duration = Duration::from_secs(15);
/// Longest wait for something the broker does on its own clock (metrics each second, the
/// reloader every 2 s).
const SETTLE: Duration = Duration::from_secs(15);

fn tls_config(pki: &Pki, tls_extra: &str) -> String {
    format!(
        "[[listener]]\nkind = \"tls\"\naddr = \"127.0.0.1:0\"\n[listener.tls]\ncert_file = {:?}\nkey_file = {:?}\nca_file = {:?}\n{tls_extra}",
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    )
}

/// mosquitto_pub/sub arguments for the broker's TLS listener with client certificate `client`
/// (none when empty), trusting `ca`.
fn tls_args(broker: &BrokerProcess, pki: &Pki, ca: &str, client: &str) -> Vec<String> {
    let addr = broker.listener("tls", 0);
    let mut args = vec![
        "-h".to_owned(),
        "127.0.0.1".to_owned(),
        "-p".to_owned(),
        addr.port().to_string(),
        "--cafile".to_owned(),
        pki.path(&format!("{ca}.pem")),
    ];
    if !client.is_empty() {
        args.extend([
            "--cert".to_owned(),
            pki.path(&format!("{client}.pem")),
            "--key".to_owned(),
            pki.path(&format!("{client}.key")),
        ]);
    }
    args
}

fn run(tool: &str, args: &[String], extra: &[&str]) -> (bool, Vec<String>) {
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    let (status, lines) = mosquitto::spawn(tool, &all).finish(TOOL_WAIT);
    (status.is_some_and(|s| s.success()), lines)
}

/// Publishes a retained message and reads it back with a new subscriber: no race with the
/// subscription, each step is an independent TLS connection.
fn retained_round_trip(args: &[String], topic: &str, id: &str) -> Option<String> {
    let (ok, _) = run(
        "mosquitto_pub",
        args,
        &[
            "-t",
            topic,
            "-m",
            "hello",
            "-r",
            "-q",
            "1",
            "-i",
            &format!("{id}-pub"),
        ],
    );
    if !ok {
        return None;
    }
    let (ok, lines) = run(
        "mosquitto_sub",
        args,
        &[
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            "10",
            "-i",
            &format!("{id}-sub"),
        ],
    );
    ok.then(|| lines.join("\n"))
}

/// Sum of a counter over its series whose labels contain `label`.
fn counter(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn wait_for_counter(port: u16, name: &str, label: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + SETTLE;
    loop {
        let n = counter(&scrape_metrics(port), name, label);
        if n >= at_least || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// mosquitto clients over TLS with a client certificate: a retained message goes through, and
/// the handshakes are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_round_trip_with_mosquitto() {
    if !mosquitto::available() {
        return;
    }
    let pki = Pki::new();
    pki.client("ca", "car", "car-1", 30);
    let metrics = free_port();
    let broker = BrokerProcess::start_with_config(
        &tls_config(&pki, "client_auth = \"required\"\n"),
        &["--metrics-listen", &format!("127.0.0.1:{metrics}")],
    );
    let args = tls_args(&broker, &pki, "ca", "car");
    let topic = unique("tls/rt");
    assert_eq!(
        retained_round_trip(&args, &topic, &unique("m")).as_deref(),
        Some("hello")
    );
    assert!(wait_for_counter(metrics, "ringmq_edge_handshakes_total", "kind=\"tls\"", 2) >= 2);
}

/// `client_auth = "required"` refuses a connection without a client certificate, with an
/// expired one and with one from another CA; each is counted by its reason, and a good client
/// keeps working beside them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_certificates_are_refused() {
    if !mosquitto::available() {
        return;
    }
    let pki = Pki::new();
    pki.client("ca", "good", "car-1", 30);
    pki.client("ca", "expired", "car-2", -1);
    pki.client("other-ca", "stranger", "car-3", 30);
    let metrics = free_port();
    let broker = BrokerProcess::start_with_config(
        &tls_config(&pki, "client_auth = \"required\"\n"),
        &["--metrics-listen", &format!("127.0.0.1:{metrics}")],
    );
    let topic = unique("tls/refused");
    for (client, reason) in [
        ("", "tls_no_certificate"),
        ("expired", "tls_certificate_expired"),
        ("stranger", "tls_unknown_ca"),
    ] {
        let args = tls_args(&broker, &pki, "ca", client);
        let (ok, _) = run(
            "mosquitto_pub",
            &args,
            &["-t", &topic, "-m", "x", "-i", &unique("bad")],
        );
        assert!(!ok, "client {client:?} must be refused");
        let label = format!("reason=\"{reason}\"");
        assert_eq!(
            wait_for_counter(metrics, "ringmq_edge_handshake_failures_total", &label, 1),
            1,
            "{reason}"
        );
    }
    let args = tls_args(&broker, &pki, "ca", "good");
    assert_eq!(
        retained_round_trip(&args, &topic, &unique("g")).as_deref(),
        Some("hello")
    );
}

/// `identity_as_client_id = "cn"` with `require_client_id_match`: the certificate's CN is the
/// only client id accepted (CONNACK return code 2 otherwise [MQTT-3.2.2-5]), so one car cannot
/// take another's session; `client_auth = "optional"` without a certificate is refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_cn_is_the_only_client_id() {
    if !mosquitto::available() {
        return;
    }
    let pki = Pki::new();
    pki.client("ca", "car1", "car-1", 30);
    let broker = BrokerProcess::start_with_config(
        &tls_config(
            &pki,
            "client_auth = \"optional\"\nidentity_as_client_id = \"cn\"\nrequire_client_id_match = true\n"),
        &[],
    );
    let args = tls_args(&broker, &pki, "ca", "car1");
    let topic = unique("tls/id");
    let (ok, _) = run(
        "mosquitto_pub",
        &args,
        &["-t", &topic, "-m", "x", "-i", "car-1", "-V", "mqttv311"],
    );
    assert!(ok, "the certificate's own id is accepted");
    let (ok, _) = run(
        "mosquitto_pub",
        &args,
        &["-t", &topic, "-m", "x", "-i", "car-2", "-V", "mqttv311"],
    );
    assert!(!ok, "another car's id is refused");
    let (ok, _) = run(
        "mosquitto_pub",
        &args,
        &["-t", &topic, "-m", "x", "-i", "car-2", "-V", "mqttv5"],
    );
    assert!(!ok, "another car's id is refused over v5 too");
    let no_cert = tls_args(&broker, &pki, "ca", "");
    let (ok, _) = run(
        "mosquitto_pub",
        &no_cert,
        &["-t", &topic, "-m", "x", "-i", "car-1"],
    );
    assert!(!ok, "no certificate, no identity");
}

/// The server certificate is replaced on disk while a subscriber stays connected: a broken
/// file is refused (the old set stays, logged), a valid new one from another CA is taken up
/// without SIGHUP (mtime), and SIGHUP reloads too; the subscriber connected before receives a
/// message published through the new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_connections_and_the_old_set_on_failure() {
    if !mosquitto::available() {
        return;
    }
    let pki = Pki::new();
    pki.client("ca", "car", "car-1", 30);
    // Clients trust both CAs: the server certificate moves from one to the other.
    let both = format!(
        "{}\n{}",
        std::fs::read_to_string(pki.path("ca.pem")).expect("ca"),
        std::fs::read_to_string(pki.path("other-ca.pem")).expect("other ca")
    );
    std::fs::write(pki.path("both-ca.pem"), both).expect("both");
    let broker =
        BrokerProcess::start_with_config(&tls_config(&pki, "client_auth = \"required\"\n"), &[]);
    let topic = unique("tls/reload");
    let old_args = tls_args(&broker, &pki, "ca", "car");
    let mut sub_args: Vec<&str> = old_args.iter().map(String::as_str).collect();
    let sub_id = unique("stay");
    sub_args.extend([
        "-t", &topic, "-C", "2", "-W", "40", "-q", "1", "-i", &sub_id,
    ]);
    let sub = mosquitto::spawn("mosquitto_sub", &sub_args);
    // The subscriber is live once a retained probe reaches it.
    let (ok, _) = run(
        "mosquitto_pub",
        &old_args,
        &["-t", &topic, "-m", "probe", "-r", "-q", "1"],
    );
    assert!(ok);
    assert_eq!(sub.line(TOOL_WAIT).as_deref(), Some("probe"));

    // A broken certificate file: refused, the old set stays.
    let good_cert = std::fs::read(pki.path("server.pem")).expect("cert");
    std::fs::write(
        pki.path("server.pem"),
        "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let deadline = Instant::now() + SETTLE;
    while !broker.log().contains("tls reload failed") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        broker.log().contains("tls reload failed"),
        "{}",
        broker.log_tail()
    );
    let (ok, _) = run(
        "mosquitto_pub",
        &old_args,
        &["-t", &unique("tls/x"), "-m", "x"],
    );
    assert!(ok, "the previous certificate still serves");
    std::fs::write(pki.path("server.pem"), &good_cert).expect("restore");

    // A new server certificate from the other CA, taken up by the mtime poll.
    pki.issue(
        "other-ca",
        "server2",
        "/CN=localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        30,
    );
    std::fs::copy(pki.path("server2.key"), pki.path("server.key")).expect("key");
    std::fs::copy(pki.path("server2.pem"), pki.path("server.pem")).expect("cert");
    let new_args = tls_args(&broker, &pki, "other-ca", "car");
    let deadline = Instant::now() + SETTLE;
    let mut switched = false;
    while !switched && Instant::now() < deadline {
        switched = run(
            "mosquitto_pub",
            &new_args,
            &["-t", &unique("tls/y"), "-m", "y"],
        )
        .0;
    }
    assert!(switched, "new certificate served: {}", broker.log_tail());
    broker.signal(libc::SIGHUP);
    let (ok, _) = run(
        "mosquitto_pub",
        &new_args,
        &["-t", &topic, "-m", "after", "-q", "1"],
    );
    assert!(ok);
    // The subscriber connected under the old certificate is still served.
    assert_eq!(sub.line(TOOL_WAIT).as_deref(), Some("after"));
    let (status, _) = sub.finish(TOOL_WAIT);
    assert!(status.is_some_and(|s| s.success()));
}

/// Python paho-mqtt with `tls_set` and a client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_over_mtls() {
    let pki = Pki::new();
    pki.client("ca", "car", "car-9", 30);
    let broker =
        BrokerProcess::start_with_config(&tls_config(&pki, "client_auth = \"required\"\n"), &[]);
    let addr = broker.listener("tls", 0);
    let script = format!(
        r#"
import paho.mqtt.client as mqtt, threading, sys
done = threading.Event()
got = []
def on_connect(c, u, f, rc, p):
    c.subscribe("paho/tls/t", qos=1)
def on_subscribe(c, u, mid, codes, p):
    c.publish("paho/tls/t", b"x" * 40000, qos=1)
def on_message(c, u, m):
    got.append(len(m.payload)); done.set()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-tls", protocol=mqtt.MQTTv5)
c.tls_set(ca_certs={ca:?}, certfile={cert:?}, keyfile={key:?})
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect("127.0.0.1", {port})
c.loop_start()
ok = done.wait(10)
c.disconnect(); c.loop_stop()
print(got); sys.exit(0 if ok and got == [40000] else 1)
"#,
        ca = pki.path("ca.pem"),
        cert = pki.path("car.pem"),
        key = pki.path("car.key"),
        port = addr.port()
    );
    let (status, lines) =
        mosquitto::spawn("python3", &["-c", &script]).finish(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "paho over mtls: {lines:?}"
    );
}

/// `crl_file`: a client certificate its CA has revoked is refused at the handshake and counted
/// as `tls_certificate_revoked`, while a good one from the same CA connects; a revocation added
/// later (the CRL file replaced, then SIGHUP) refuses new connections with that certificate and
/// leaves the established ones up, as the other TLS files reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_client_certificates_are_refused() {
    if !mosquitto::available() {
        return;
    }
    let pki = Pki::new();
    pki.client("ca", "good", "car-1", 30);
    pki.client("ca", "stolen", "car-2", 30);
    pki.client("ca", "later", "car-3", 30);
    pki.revoke("ca", "stolen");
    let crl = pki.crl("ca", "good");
    let metrics = free_port();
    let broker = BrokerProcess::start_with_config(
        &tls_config(
            &pki,
            &format!("client_auth = \"required\"\ncrl_file = {crl:?}\n"),
        ),
        &["--metrics-listen", &format!("127.0.0.1:{metrics}")],
    );
    let topic = unique("tls/crl");
    let (ok, _) = run(
        "mosquitto_pub",
        &tls_args(&broker, &pki, "ca", "stolen"),
        &["-t", &topic, "-m", "x", "-i", &unique("stolen")],
    );
    assert!(!ok, "a revoked certificate must be refused");
    assert_eq!(
        wait_for_counter(
            metrics,
            "ringmq_edge_handshake_failures_total",
            "reason=\"tls_certificate_revoked\"",
            1
        ),
        1
    );

    // A subscriber with the certificate that is revoked next stays connected across the reload.
    let later_args = tls_args(&broker, &pki, "ca", "later");
    let mut sub_args: Vec<&str> = later_args.iter().map(String::as_str).collect();
    let sub_id = unique("later");
    sub_args.extend([
        "-t", &topic, "-C", "2", "-W", "40", "-q", "1", "-i", &sub_id,
    ]);
    let sub = mosquitto::spawn("mosquitto_sub", &sub_args);
    let good_args = tls_args(&broker, &pki, "ca", "good");
    let (ok, _) = run(
        "mosquitto_pub",
        &good_args,
        &["-t", &topic, "-m", "probe", "-r", "-q", "1"],
    );
    assert!(ok, "a good certificate from the same CA connects");
    assert_eq!(sub.line(TOOL_WAIT).as_deref(), Some("probe"));

    pki.revoke("ca", "later");
    pki.crl("ca", "good");
    broker.signal(libc::SIGHUP);
    let deadline = Instant::now() + SETTLE;
    let mut refused = false;
    while !refused && Instant::now() < deadline {
        refused = !run(
            "mosquitto_pub",
            &later_args,
            &["-t", &unique("tls/z"), "-m", "z", "-i", &unique("again")],
        )
        .0;
        if !refused {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    assert!(refused, "new revocation taken up: {}", broker.log_tail());
    let (ok, _) = run(
        "mosquitto_pub",
        &good_args,
        &["-t", &topic, "-m", "after", "-q", "1"],
    );
    assert!(ok);
    assert_eq!(sub.line(TOOL_WAIT).as_deref(), Some("after"));
    let (status, _) = sub.finish(TOOL_WAIT);
    assert!(status.is_some_and(|s| s.success()));

    // A CRL without client certificates to check is a configuration error naming the key.
    let path = std::env::temp_dir().join(format!("{}.toml", unique("ringmq-crl-config")));
    std::fs::write(
        &path,
        tls_config(
            &pki,
            &format!("client_auth = \"none\"\ncrl_file = {crl:?}\n"),
        ),
    )
    .expect("config");
    let out = std::process::Command::new(broker_bin())
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .expect("broker runs");
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("listener[0].tls.crl_file"), "{text}");
}

/// `openssl s_client` against the TLS listener, bounded by [`TOOL_WAIT`] (coreutils
/// `timeout`): stdout and stderr together. `-ign_eof` keeps it reading after its side of the
/// handshake, so a TLS 1.3 alert that follows the client's Finished is read and printed.
fn s_client(port: u16, pki: &Pki, client: &str, extra: &[&str]) -> String {
    let mut cmd = std::process::Command::new("timeout");
    cmd.arg(TOOL_WAIT.as_secs().to_string())
        .args(["openssl", "s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-CAfile")
        .arg(pki.path("ca.pem"))
        .arg("-ign_eof");
    if !client.is_empty() {
        cmd.arg("-cert")
            .arg(pki.path(&format!("{client}.pem")))
            .arg("-key")
            .arg(pki.path(&format!("{client}.key")));
    }
    let out = cmd
        .args(extra)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Python's ssl module as a client without a certificate: the `ssl.SSLError` it raises.
fn python_ssl_error(port: u16, pki: &Pki) -> String {
    let script = format!(
        r#"
import socket, ssl
ctx = ssl.create_default_context(cafile={ca:?})
ctx.check_hostname = False
try:
    with socket.create_connection(("127.0.0.1", {port}), timeout=10) as raw:
        with ctx.wrap_socket(raw) as s:
            s.recv(1)
    print("no error")
except ssl.SSLError as e:
    print("SSLError", e.reason)
"#,
        ca = pki.path("ca.pem"),
    );
    let out = std::process::Command::new("timeout")
        .arg(TOOL_WAIT.as_secs().to_string())
        .args(["python3", "-c", &script])
        .output()
        .expect("python3 runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Sends `bytes` on a new TCP connection and reads until the broker closes it.
fn raw_exchange(port: u16, bytes: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(TOOL_WAIT)).expect("timeout");
    s.write_all(bytes).expect("write");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

/// Bytes that are not TLS (an HTTP request on the TLS port).
const NOT_TLS: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// A failed handshake ends with the TLS alert rustls decided on, so clients report the cause
/// (RFC 8446 section 6.2: a fatal alert is sent before the connection is closed), not a
/// connection reset: a missing client certificate (`certificate_required`), a certificate from
/// another CA (`unknown_ca`), an expired one (`certificate_expired`), a revoked one
/// (`certificate_revoked`), TLS 1.1 only (`handshake_failure`) and bytes that are not TLS
/// (`decode_error`, as a plaintext alert record). A good client is served afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_failures_send_the_tls_alert() {
    if !mosquitto::available() {
        return;
    }
    let pki = Pki::new();
    pki.client("ca", "good", "car-1", 30);
    pki.client("ca", "expired", "car-2", -1);
    pki.client("ca", "stolen", "car-3", 30);
    pki.client("other-ca", "stranger", "car-4", 30);
    pki.revoke("ca", "stolen");
    let crl = pki.crl("ca", "good");
    let metrics = free_port();
    let broker = BrokerProcess::start_with_config(
        &tls_config(
            &pki,
            &format!("client_auth = \"required\"\ncrl_file = {crl:?}\n"),
        ),
        &["--metrics-listen", &format!("127.0.0.1:{metrics}")],
    );
    let port = broker.listener("tls", 0).port();
    for (client, extra, alert, reason) in [
        (
            "",
            &[][..],
            "tlsv13 alert certificate required",
            "tls_no_certificate",
        ),
        ("stranger", &[][..], "alert unknown ca", "tls_unknown_ca"),
        (
            "expired",
            &[][..],
            "alert certificate expired",
            "tls_certificate_expired",
        ),
        (
            "stolen",
            &[][..],
            "alert certificate revoked",
            "tls_certificate_revoked",
        ),
        (
            "good",
            &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"][..],
            // rustls answers a ClientHello without TLS 1.2 or 1.3 with handshake_failure.
            "sslv3 alert handshake failure",
            "tls_protocol",
        ),
    ] {
        let out = s_client(port, &pki, client, extra);
        assert!(
            out.contains(alert),
            "client {client:?}: expected {alert:?} in\n{out}"
        );
        let label = format!("reason=\"{reason}\"");
        assert!(
            wait_for_counter(metrics, "ringmq_edge_handshake_failures_total", &label, 1) >= 1,
            "{reason}"
        );
    }

    // mosquitto_pub sends CONNECT right behind its Finished, so the broker fails the session
    // with a record left unread (rustls must not be driven again then: it panicked once).
    let mut pub_args = tls_args(&broker, &pki, "ca", "");
    pub_args.extend(["-d", "-t", "tls/x", "-m", "x"].map(str::to_owned));
    for _ in 0..4 {
        let out = std::process::Command::new("timeout")
            .arg(TOOL_WAIT.as_secs().to_string())
            .arg("mosquitto_pub")
            .args(&pub_args)
            .output()
            .expect("mosquitto_pub runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success() && text.contains("tlsv13 alert certificate required"),
            "mosquitto_pub: {text}"
        );
    }

    let py = python_ssl_error(port, &pki);
    assert!(
        py.contains("SSLError TLSV13_ALERT_CERTIFICATE_REQUIRED"),
        "python ssl: {py}"
    );

    // A fatal alert record in plaintext: type 21, version 3.x, length 2, level 2 (fatal),
    // description 50 (decode_error).
    let got = raw_exchange(port, NOT_TLS);
    assert!(
        got.len() == 7 && got[0] == 21 && got[1] == 3 && got[3..] == [0, 2, 2, 50],
        "expected a decode_error alert, got {got:?}"
    );

    let args = tls_args(&broker, &pki, "ca", "good");
    assert_eq!(
        retained_round_trip(&args, &unique("tls/alert"), &unique("g")).as_deref(),
        Some("hello")
    );
    assert!(
        !broker.log().contains("panicked"),
        "a shard panicked: {}",
        broker.log_tail()
    );
}

/// A burst of bad handshakes (bytes that are not TLS, each answered with its alert) is counted
/// one by one, logged at most once per `LOG_INTERVAL` (5 s) per reason per shard with the count
/// held back, each line naming the reason, the peer and the listener, and the broker serves a
/// good client meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_bad_handshakes_is_counted_and_logged_sparingly() {
    if !mosquitto::available() {
        return;
    }
    const BAD: usize = 300;
    const SHARDS: u64 = 2;
    const LOG_INTERVAL_SECS: u64 = 5;
    let pki = Pki::new();
    pki.client("ca", "good", "car-1", 30);
    let metrics = free_port();
    let mut broker = BrokerProcess::start_with_config(
        &tls_config(&pki, "client_auth = \"required\"\n"),
        &["--metrics-listen", &format!("127.0.0.1:{metrics}")],
    );
    let tls = broker.listener("tls", 0);
    let started = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                (0..BAD / 4)
                    .filter(|_| raw_exchange(tls.port(), NOT_TLS).first() == Some(&21))
                    .count()
            })
        })
        .collect();
    let args = tls_args(&broker, &pki, "ca", "good");
    assert_eq!(
        retained_round_trip(&args, &unique("tls/burst"), &unique("g")).as_deref(),
        Some("hello"),
        "a good client is served during the burst"
    );
    let alerted: usize = workers
        .into_iter()
        .map(|w| w.join().expect("burst worker"))
        .sum();
    let elapsed_secs = started.elapsed().as_secs();
    assert_eq!(alerted, BAD, "every bad handshake gets its alert");
    assert_eq!(
        wait_for_counter(
            metrics,
            "ringmq_edge_handshake_failures_total",
            "reason=\"tls_protocol\"",
            BAD as u64
        ),
        BAD as u64
    );
    broker.assert_alive();

    let log = strip_ansi(&broker.log());
    assert!(!log.contains("panicked"), "a shard panicked: {log}");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("edge handshake failed"))
        .collect();
    assert!(
        !lines.is_empty(),
        "no failure logged: {}",
        broker.log_tail()
    );
    for line in &lines {
        assert!(
            line.contains("reason=\"tls_protocol\"")
                && line.contains("peer=\"127.0.0.1:")
                && line.contains("listener=")
                && line.contains("kind=\"tls\""),
            "{line}"
        );
    }
    let reported: u64 = lines
        .iter()
        .map(|l| {
            let held = l
                .split("suppressed=")
                .nth(1)
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok());
            1 + held.unwrap_or(0)
        })
        .sum();
    assert!(reported <= BAD as u64, "{lines:?}");
    // One line per reason per shard per interval, however long the burst took.
    let allowed = SHARDS * (elapsed_secs / LOG_INTERVAL_SECS + 2);
    assert!(
        lines.len() as u64 <= allowed,
        "{} lines: {lines:?}",
        lines.len()
    );
}

/// The log without terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
