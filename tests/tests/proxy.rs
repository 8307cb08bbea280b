//! PROXY protocol listeners: a real HAProxy (`send-proxy-v2`) in front of the broker hands it
//! the client's address; a header by hand (v1) works from a trusted peer; a connection from an
//! untrusted peer, or without a header, is closed without a byte in reply (haproxy
//! `doc/proxy-protocol.txt` section 2: the receiver must not guess) and counted by reason.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringmq_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// CONNECT, MQTT 3.1.1, clean session, keepalive 60, client id "px".
const CONNECT: &[u8] = &[
    0x10, 0x0e, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x02, b'p', b'x',
];
const CONNACK_OK: &[u8] = &[0x20, 0x02, 0x00, 0x00];

const CONFIG: &str = "[[listener]]\nkind = \"tcp\"\naddr = \"127.0.0.1:0\"\nproxy_protocol = \"any\"\ntrusted_proxies = [\"127.0.0.1\"]\n\
     [[listener]]\nkind = \"tcp\"\naddr = \"127.0.0.1:0\"\nproxy_protocol = \"v2\"\ntrusted_proxies = [\"192.0.2.0/24\"]\n";

/// Reads until the peer closes or `want` bytes arrived (bounded by RECV_TIMEOUT).
async fn read_some(stream: &mut TcpStream, want: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    let deadline = Instant::now() + RECV_TIMEOUT;
    while buf.len() < want {
        let mut chunk = [0u8; 256];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("neither bytes nor a close within {RECV_TIMEOUT:?}"),
        }
    }
    buf
}

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn haproxy(front: u16, backend: SocketAddr, dir: &std::path::Path) -> Option<Haproxy> {
    if Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("\n!!!!! SKIPPED: haproxy not found (apt-get install -y haproxy) !!!!!\n");
        return None;
    }
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend f\n  bind 127.0.0.1:{front}\n  default_backend b\n\
             backend b\n  server s1 {backend} send-proxy-v2\n"
        ),
    )
    .expect("haproxy config");
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("haproxy starts");
    Some(Haproxy(child))
}

/// A client connects through HAProxy from 127.0.0.2; the broker's socket peer is HAProxy
/// (127.0.0.1), and the address it takes is the client's, from the v2 header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_send_proxy_v2_brings_the_client_address() {
    let broker =
        BrokerProcess::start_with_config_logging(CONFIG, &[], "info,ringmq_shard::edge=debug");
    let dir = std::env::temp_dir().join(unique("ringmq-haproxy"));
    std::fs::create_dir_all(&dir).expect("dir");
    let front = free_port();
    let Some(_haproxy) = haproxy(front, broker.listener("tcp", 0), &dir) else {
        return;
    };
    // HAProxy is up once it accepts; until then connects are refused.
    let front_addr: SocketAddr = ([127, 0, 0, 1], front).into();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(([127, 0, 0, 2], 0).into())
            .expect("bind 127.0.0.2");
        match socket.connect(front_addr).await {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("haproxy does not accept: {e}"),
        }
    };
    let client_port = stream.local_addr().expect("local").port();
    stream.write_all(CONNECT).await.expect("send connect");
    assert_eq!(read_some(&mut stream, 4).await, CONNACK_OK);
    let log = broker.log();
    let line = log
        .lines()
        .find(|l| {
            l.contains("proxy protocol header accepted")
                && l.contains(&format!("127.0.0.2:{client_port}"))
        })
        .unwrap_or_else(|| {
            panic!(
                "no accepted header for 127.0.0.2:{client_port}:\n{}",
                broker.log_tail()
            )
        });
    assert!(
        line.contains("127.0.0.1:"),
        "the socket peer was haproxy: {line}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A v1 header by hand from a trusted peer, split over two writes, then MQTT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_header_from_a_trusted_peer() {
    let broker = BrokerProcess::start_with_config(CONFIG, &[]);
    let mut stream = TcpStream::connect(broker.listener("tcp", 0))
        .await
        .expect("connect");
    stream
        .write_all(b"PROXY TCP4 198.51.100.7 192.0.2.1 ")
        .await
        .expect("send");
    stream.flush().await.expect("flush");
    let mut rest = b"51000 1883\r\n".to_vec();
    rest.extend_from_slice(CONNECT);
    stream.write_all(&rest).await.expect("send");
    assert_eq!(read_some(&mut stream, 4).await, CONNACK_OK);
}

/// From a peer outside `trusted_proxies`, and without a header from a trusted one: closed,
/// nothing sent back, counted by reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_peer_and_missing_header_are_closed_quietly() {
    let metrics = free_port();
    let broker = BrokerProcess::start_with_config(
        CONFIG,
        &["--metrics-listen", &format!("127.0.0.1:{metrics}")],
    );
    // 127.0.0.1 is not in 192.0.2.0/24.
    let mut untrusted = TcpStream::connect(broker.listener("tcp", 1))
        .await
        .expect("connect");
    let _ = untrusted.write_all(CONNECT).await;
    assert!(read_some(&mut untrusted, 1).await.is_empty());
    // Trusted, but MQTT without a header.
    let mut headerless = TcpStream::connect(broker.listener("tcp", 0))
        .await
        .expect("connect");
    headerless.write_all(CONNECT).await.expect("send");
    assert!(read_some(&mut headerless, 1).await.is_empty());
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut untrusted_n, mut header_n) = (0, 0);
    while (untrusted_n < 1 || header_n < 1) && Instant::now() < deadline {
        let text = scrape_metrics(metrics);
        let count = |reason: &str| -> u64 {
            text.lines()
                .filter(|l| {
                    l.starts_with("ringmq_edge_handshake_failures_total") && l.contains(reason)
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        untrusted_n = count("reason=\"proxy_untrusted\"");
        header_n = count("reason=\"proxy_header\"");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!((untrusted_n, header_n), (1, 1));
}
