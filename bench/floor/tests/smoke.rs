//! End-to-end smoke test: every receiver variant forwards every record the driver sends, with a
//! small fleet and short window so it stays within seconds. Also checks that the eventfd probe
//! runs and reports all its cases.

use std::net::TcpListener;
use std::process::{Command, Stdio};

const PUBLISHERS: &str = "40";
const RATE: &str = "2000";

/// Two ports that were free a moment ago (a tiny race with other tests, acceptable here).
fn free_ports() -> (u16, u16) {
    let first = TcpListener::bind("127.0.0.1:0").expect("bind");
    let second = TcpListener::bind("127.0.0.1:0").expect("bind");
    let ports = (
        first.local_addr().expect("addr").port(),
        second.local_addr().expect("addr").port(),
    );
    drop((first, second));
    ports
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|pair| pair.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

fn run_mode(mode: &str) {
    let (pub_port, sink_port) = free_ports();
    let pub_addr = format!("127.0.0.1:{pub_port}");
    let sink_addr = format!("127.0.0.1:{sink_port}");
    let window = ["--warmup-s", "0.5", "--measure-s", "1"];
    let receiver = Command::new(env!("CARGO_BIN_EXE_floor"))
        .args([
            "recv",
            "--mode",
            mode,
            "--publishers",
            PUBLISHERS,
            "--deadline-s",
            "20",
        ])
        .args(["--pub-addr", &pub_addr, "--sink-addr", &sink_addr])
        .args(window)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn receiver");
    let driver = Command::new(env!("CARGO_BIN_EXE_floor"))
        .args([
            "drive",
            "--rate",
            RATE,
            "--publishers",
            PUBLISHERS,
            "--tail-s",
            "0.2",
        ])
        .args(["--pub-addr", &pub_addr, "--sink-addr", &sink_addr])
        .args(window)
        .stderr(Stdio::null())
        .output()
        .expect("run driver");
    let receiver = receiver.wait_with_output().expect("receiver output");
    assert!(driver.status.success(), "{mode}: driver failed");
    assert!(receiver.status.success(), "{mode}: receiver failed");
    let drive_out = String::from_utf8_lossy(&driver.stdout);
    let recv_out = String::from_utf8_lossy(&receiver.stdout);
    let drive_line = drive_out
        .lines()
        .find(|l| l.starts_with("RESULT drive"))
        .expect("drive result");
    let recv_line = recv_out
        .lines()
        .find(|l| l.starts_with("RESULT recv"))
        .expect("recv result");
    assert_eq!(field(drive_line, "lost"), "0", "{mode}: {drive_line}");
    assert_ne!(field(drive_line, "received"), "0", "{mode}: {drive_line}");
    assert_eq!(field(recv_line, "dropped"), "0", "{mode}: {recv_line}");
    assert_eq!(
        field(recv_line, "missed_wakeups"),
        "0",
        "{mode}: {recv_line}"
    );
}

#[test]
fn every_mode_forwards_every_record() {
    for mode in ["epoll", "epoll-short", "uring", "uring-eventfd"] {
        run_mode(mode);
    }
}

#[test]
fn eventfd_probe_reports_every_case() {
    let output = Command::new(env!("CARGO_BIN_EXE_floor"))
        .arg("probe-eventfd")
        .output()
        .expect("run probe");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("PROBE")).collect();
    assert_eq!(lines.len(), 6, "{text}");
    // Whatever the kernel's signalling, entering the ring must deliver the first record.
    assert!(lines
        .iter()
        .filter(|l| l.contains("case=first"))
        .all(|l| field(l, "cqes_after_enter") == "1"));
}
