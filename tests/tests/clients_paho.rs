//! Eclipse Paho (Python, paho-mqtt 2.x) as an independent client: QoS 0/1/2 on 3.1.1 and 5.0,
//! retained set/clear, v5 properties passed through, will on abnormal close. The checks live in
//! `tests/python/paho_checks.py`; skipped loudly when python3 or paho-mqtt is missing
//! (`scripts/test.sh` installs it).

use std::process::Command;
use std::time::{Duration, Instant};

use ringmq_tests::BrokerProcess;

fn paho_available() -> bool {
    Command::new("python3")
        .args(["-c", "import paho.mqtt.client"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn paho_clients_interoperate() {
    run_paho_checks(&[]);
}

/// The same checks with two shards: clients land on either, so a subscription made on one shard
/// must be seen by a publish read on the other right after it.
#[test]
fn paho_clients_interoperate_on_two_shards() {
    run_paho_checks(&["--shards", "2"]);
}

fn run_paho_checks(args: &[&str]) {
    if !paho_available() {
        eprintln!("\n*** SKIPPED paho tests: python3 with paho-mqtt missing (pip install paho-mqtt) ***\n");
        return;
    }
    let mut broker = BrokerProcess::start(args);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/paho_checks.py");
    let mut child = Command::new("python3")
        .args([script, "127.0.0.1", &broker.port.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("paho checks did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "paho checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all paho checks passed"), "{stdout}");
    broker.assert_alive();
}
