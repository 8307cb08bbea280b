//! WebSocket listeners (RFC 6455, MQTT section 6): Python paho-mqtt with
//! `transport="websockets"` over ws:// and wss://, MQTT.js in Node and in a browser page
//! (headless Chromium), and byte transcripts of the upgrade and the
//! framing rules the real clients do not exercise (packets spanning and sharing frames,
//! ping/pong, close, a wrong path).

use std::time::Duration;

use bytes::BytesMut;
use ringmq_tests::certs::Pki;
use ringmq_tests::mosquitto;
use ringmq_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wire::ws::{self, Decoded, FrameDecoder};

const WS_CONFIG: &str = "[[listener]]\nkind = \"ws\"\naddr = \"127.0.0.1:0\"\n";

fn paho_script(port: u16, tls: &str, id: &str) -> String {
    format!(
        r#"
import paho.mqtt.client as mqtt, threading, sys
done = threading.Event()
got = []
def on_connect(c, u, f, rc, p):
    c.subscribe("{id}/t", qos=1)
def on_subscribe(c, u, mid, codes, p):
    # Larger than one frame of most clients and than one TLS record: spans both.
    c.publish("{id}/t", b"w" * 70000, qos=1)
    c.publish("{id}/t", b"small", qos=0)
def on_message(c, u, m):
    got.append(len(m.payload))
    if len(got) == 2: done.set()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="{id}", transport="websockets", protocol=mqtt.MQTTv311)
c.ws_set_options(path="/mqtt")
{tls}
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect("127.0.0.1", {port})
c.loop_start()
ok = done.wait(10)
c.disconnect(); c.loop_stop()
print(got); sys.exit(0 if ok and got == [70000, 5] else 1)
"#
    )
}

fn run_python(script: &str) {
    let (status, lines) =
        mosquitto::spawn("python3", &["-c", script]).finish(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "paho: {lines:?}");
}

/// paho-mqtt over ws:// subscribes and receives its own publishes (one of 70 kB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_over_ws() {
    let broker = BrokerProcess::start_with_config(WS_CONFIG, &[]);
    let port = broker.listener("ws", 0).port();
    run_python(&paho_script(port, "", &unique("paho-ws")));
}

/// paho-mqtt over wss:// (TLS, server certificate only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_over_wss() {
    let pki = Pki::new();
    let config = format!(
        "[[listener]]\nkind = \"wss\"\naddr = \"127.0.0.1:0\"\npath = \"/mqtt\"\n[listener.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        pki.path("server.pem"),
        pki.path("server.key")
    );
    let broker = BrokerProcess::start_with_config(&config, &[]);
    let port = broker.listener("wss", 0).port();
    let tls = format!("c.tls_set(ca_certs={:?})", pki.path("ca.pem"));
    run_python(&paho_script(port, &tls, &unique("paho-wss")));
}

/// A raw WebSocket client: the upgrade, then masked frames out and server frames in.
struct WsClient {
    stream: TcpStream,
    input: BytesMut,
    decoder: FrameDecoder,
    mqtt: BytesMut,
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

impl WsClient {
    async fn connect(addr: std::net::SocketAddr, path: &str) -> (WsClient, String) {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut request = BytesMut::new();
        ws::write_client_request("127.0.0.1", path, KEY, &mut request);
        stream.write_all(&request).await.expect("send upgrade");
        let mut input = BytesMut::new();
        let head_len = loop {
            if let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let n = tokio::time::timeout(RECV_TIMEOUT, stream.read_buf(&mut input))
                .await
                .expect("response in time")
                .expect("read");
            if n == 0 {
                break input.len();
            }
        };
        let head = String::from_utf8_lossy(&input[..head_len]).into_owned();
        let _ = input.split_to(head_len);
        let client = WsClient {
            stream,
            input,
            decoder: FrameDecoder::new_client_side(ws::MESSAGE_LEN_MAX_DEFAULT),
            mqtt: BytesMut::new(),
        };
        (client, head)
    }

    async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let mut out = BytesMut::new();
        ws::encode_client_frame(fin, opcode, payload, [0x12, 0x34, 0x56, 0x78], &mut out);
        self.stream.write_all(&out).await.expect("send frame");
    }

    /// The next control frame, or MQTT bytes until `mqtt_len` of them arrived.
    async fn read_until(&mut self, mqtt_len: usize) -> Option<Decoded> {
        loop {
            match self.decoder.decode(&mut self.input, &mut self.mqtt) {
                Ok(Decoded::NeedMore { .. }) if self.mqtt.len() >= mqtt_len && mqtt_len > 0 => {
                    return None
                }
                Ok(Decoded::NeedMore { .. }) => {}
                Ok(other) => return Some(other),
                Err(err) => panic!("server frame refused: {err}"),
            }
            let n = tokio::time::timeout(RECV_TIMEOUT, self.stream.read_buf(&mut self.input))
                .await
                .expect("server frame in time")
                .expect("read");
            assert!(n > 0, "closed while waiting");
        }
    }
}

fn encode(packets: &[Packet]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for p in packets {
        wire::encode(p, ProtocolVersion::V3_1_1, &mut out).expect("encode");
    }
    out.to_vec()
}

/// RFC 6455 4.2.2: `101` with the accept key and the `mqtt` subprotocol; then MQTT packets
/// sharing one frame and one packet spanning three (fragmented) frames [MQTT-6.0.0-2]; a ping
/// is answered with a pong carrying its payload (RFC 6455 5.5.2); a close is echoed (5.5.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcript_upgrade_frames_ping_close() {
    let broker = BrokerProcess::start_with_config(WS_CONFIG, &[]);
    let addr = broker.listener("ws", 0);
    let (mut c, head) = WsClient::connect(addr, "/mqtt").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    assert!(head.contains("Sec-WebSocket-Protocol: mqtt"), "{head}");

    // CONNECT and SUBSCRIBE in one binary frame.
    let id = unique("wsraw");
    let topic = unique("ws/t");
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: std::num::NonZeroU16::new(1).expect("id"),
        filters: vec![(topic.as_str().into(), SubscriptionOptions::default())],
        properties: Default::default(),
    });
    let both = encode(&[Packet::Connect(Box::new(connect_v4(&id))), subscribe]);
    c.send_frame(true, 0x2, &both).await;
    // CONNACK (4 bytes) + SUBACK (5 bytes).
    assert!(c.read_until(9).await.is_none());
    assert_eq!(
        &c.mqtt[..],
        &[0x20, 0x02, 0x00, 0x00, 0x90, 0x03, 0x00, 0x01, 0x00]
    );
    c.mqtt.clear();

    // A PUBLISH split over a binary frame and two continuations.
    let publish = encode(&[Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: topic.as_str().into(),
        packet_id: None,
        properties: Default::default(),
        payload: bytes::Bytes::from_static(b"spanning frames"),
    })]);
    let (a, rest) = publish.split_at(3);
    let (b, d) = rest.split_at(5);
    c.send_frame(false, 0x2, a).await;
    c.send_frame(false, 0x0, b).await;
    c.send_frame(true, 0x0, d).await;
    assert!(c.read_until(publish.len()).await.is_none());
    assert_eq!(&c.mqtt[..], &publish[..]);

    // Ping → pong with the same payload.
    c.send_frame(true, 0x9, b"are you there").await;
    match c.read_until(0).await {
        Some(Decoded::Pong(payload)) => assert_eq!(&payload[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }

    // Close 1000 → the server echoes it and closes.
    c.send_frame(true, 0x8, &1000u16.to_be_bytes()).await;
    match c.read_until(0).await {
        Some(Decoded::Close { code, .. }) => assert_eq!(code, Some(ws::CloseCode::NORMAL)),
        other => panic!("expected a close, got {other:?}"),
    }
}

/// A request for another path gets `404` and the connection closes (RFC 6455 4.2.2: the
/// server may refuse with any HTTP status).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_path_is_refused() {
    let broker = BrokerProcess::start_with_config(WS_CONFIG, &[]);
    let (_c, head) = WsClient::connect(broker.listener("ws", 0), "/other").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

/// A directory with MQTT.js installed (`npm install mqtt@5`, once per machine); `None` (the test
/// skips loudly) without node/npm or the registry.
fn mqtt_js() -> Option<std::path::PathBuf> {
    let dir = std::env::temp_dir().join("ringmq-tests-mqttjs");
    if dir.join("node_modules/mqtt/package.json").exists() {
        return Some(dir);
    }
    std::fs::create_dir_all(&dir).ok()?;
    let (status, _) = mosquitto::spawn(
        "npm",
        &[
            "install",
            "--prefix",
            &dir.display().to_string(),
            "--silent",
            "--no-audit",
            "--no-fund",
            "mqtt@5",
        ],
    )
    .finish(Duration::from_secs(180));
    if status.is_some_and(|s| s.success()) && dir.join("node_modules/mqtt/package.json").exists() {
        Some(dir)
    } else {
        eprintln!("\n!!!!! SKIPPED: MQTT.js not installable (npm install mqtt) !!!!!\n");
        None
    }
}

/// A broker with a ws:// and a wss:// listener (the test CA's server certificate).
fn ws_and_wss_broker(pki: &Pki) -> BrokerProcess {
    let config = format!(
        "{WS_CONFIG}[[listener]]\nkind = \"wss\"\naddr = \"127.0.0.1:0\"\n[listener.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        pki.path("server.pem"),
        pki.path("server.key")
    );
    BrokerProcess::start_with_config(&config, &[])
}

/// The broker's ws:// and wss:// MQTT URLs, each with a fresh client id from `prefix`.
fn ws_and_wss_urls(broker: &BrokerProcess, prefix: &str) -> [(String, String); 2] {
    [
        (
            format!("ws://127.0.0.1:{}/mqtt", broker.listener("ws", 0).port()),
            unique(&format!("{prefix}-ws")),
        ),
        (
            format!("wss://localhost:{}/mqtt", broker.listener("wss", 0).port()),
            unique(&format!("{prefix}-wss")),
        ),
    ]
}

/// MQTT.js in Node over ws:// and wss://, unchanged: connect, subscribe, receive its own
/// QoS 1 publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_js_over_ws_and_wss() {
    let Some(dir) = mqtt_js() else { return };
    let pki = Pki::new();
    let broker = ws_and_wss_broker(&pki);
    for (url, id) in ws_and_wss_urls(&broker, "mqttjs") {
        let script = format!(
            r#"
const mqtt = require({module:?});
const fs = require("fs");
const c = mqtt.connect({url:?}, {{ clientId: {id:?}, ca: fs.readFileSync({ca:?}), protocolVersion: 5 }});
const timer = setTimeout(() => {{ console.log("timeout"); process.exit(1); }}, 10000);
c.on("connect", () => c.subscribe({id:?} + "/t", {{ qos: 1 }}, () => c.publish({id:?} + "/t", "from mqtt.js", {{ qos: 1 }})));
let got = null;
c.on("message", (t, m) => {{ console.log(m.toString()); got = m.toString(); clearTimeout(timer); c.end(false, () => process.exit(got === "from mqtt.js" ? 0 : 1)); }});
// After the message the broker closes on DISCONNECT; a late write of mqtt.js's own close may then
// fail with EPIPE, which says nothing about the exchange.
c.on("error", (e) => {{ console.log("error " + e.message); if (got === null) process.exit(1); else process.exit(got === "from mqtt.js" ? 0 : 1); }});
"#,
            module = dir.join("node_modules/mqtt").display().to_string(),
            ca = pki.path("ca.pem"),
        );
        let (status, lines) =
            mosquitto::spawn("node", &["-e", &script]).finish(Duration::from_secs(20));
        assert!(
            status.is_some_and(|s| s.success()),
            "mqtt.js over {url}: {lines:?}"
        );
    }
}

/// MQTT.js in a browser page (headless Chromium, Debian's package) over ws:// and wss://,
/// unchanged: the page loads `mqtt.min.js`, connects, subscribes and publishes QoS 1, and
/// reports what it received by fetching a URL from a listener of this test. For wss:// the
/// browser is told to accept the test CA's server certificate (`--ignore-certificate-errors`;
/// the Node test above verifies it against the CA).
#[test]
fn mqtt_js_in_a_browser_page_over_ws_and_wss() {
    use std::io::{Read, Write};
    if std::process::Command::new("chromium")
        .arg("--version")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        eprintln!("\n!!!!! SKIPPED: chromium missing (apt-get install chromium) !!!!!\n");
        return;
    }
    let Some(dir) = mqtt_js() else { return };
    let pki = Pki::new();
    let broker = ws_and_wss_broker(&pki);
    for (url, id) in ws_and_wss_urls(&broker, "browser") {
        let report = std::net::TcpListener::bind("127.0.0.1:0").expect("report listener");
        let report_port = report.local_addr().expect("addr").port();
        let work = std::env::temp_dir().join(unique("ringmq-browser"));
        std::fs::create_dir_all(&work).expect("work dir");
        let page = work.join("page.html");
        std::fs::write(
            &page,
            format!(
                r#"<!doctype html><html><body>
<script src="file://{lib}"></script>
<script>
const report = (what) => fetch("http://127.0.0.1:{report_port}/" + encodeURIComponent(what), {{ mode: "no-cors" }});
const c = mqtt.connect({url:?}, {{ clientId: {id:?}, protocolVersion: 5, reconnectPeriod: 0 }});
c.on("connect", () => c.subscribe({id:?} + "/t", {{ qos: 1 }}, () => c.publish({id:?} + "/t", "from the browser", {{ qos: 1 }})));
c.on("message", (t, m) => {{ report("got " + t + " " + m.toString()); c.end(); }});
c.on("error", (e) => report("error " + e.message));
</script></body></html>"#,
                lib = dir.join("node_modules/mqtt/dist/mqtt.min.js").display(),
            ),
        )
        .expect("write page");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            if let Ok((mut conn, _)) = report.accept() {
                let mut buf = [0u8; 2048];
                let n = conn.read(&mut buf).unwrap_or(0);
                let _ = conn.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
                let line = String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                let _ = tx.send(line);
            }
        });
        let mut browser = std::process::Command::new("chromium");
        // Its own process group, so the renderer and helper processes go with it.
        std::os::unix::process::CommandExt::process_group(&mut browser, 0);
        let mut browser = browser
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--ignore-certificate-errors",
                "--no-first-run",
                &format!("--user-data-dir={}", work.join("profile").display()),
                &format!("file://{}", page.display()),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromium starts");
        let line = rx.recv_timeout(Duration::from_secs(30));
        // SAFETY: kill(2) on the browser's own process group; no memory is involved.
        unsafe { libc::kill(-(browser.id() as i32), libc::SIGKILL) };
        let _ = browser.wait();
        // Helpers may still be writing the profile for a moment after the group is killed.
        for _ in 0..50 {
            if std::fs::remove_dir_all(&work).is_ok() || !work.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let want = format!("GET /got%20{}%2Ft%20from%20the%20browser HTTP/1.1", id);
        assert_eq!(
            line.as_deref(),
            Ok(want.as_str()),
            "mqtt.js in the browser over {url}"
        );
    }
}
