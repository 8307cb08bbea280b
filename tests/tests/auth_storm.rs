//! A storm of CONNECTs with wrong passwords against slow `$7$` PBKDF2 hashes must not stall the
//! shards: hashing runs on the auth worker pool, never on a shard thread. While several threads
//! keep hundreds of bad CONNECTs in flight, a mosquitto_sub with a live subscription receives
//! every one of N messages a mosquitto_pub sends (in chunks, the storm refusing another batch
//! before each), and a new good client gets its CONNACK; both happen while the storm is still
//! going (shown by the storm's own counters, not by a clock).
//! The pool's counters on /metrics account for the storm.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ringmq_tests::{free_port, metric_total, mosquitto, unique, wait_for_metric, BrokerProcess};

/// PBKDF2 iterations of the storm's target user: mosquitto_passwd writes 101, which costs too
/// little to load the pool; Mosquitto and ringmq read any count from the file.
const SLOW_ITERATIONS: u32 = 20_000;
/// Storm threads, and CONNECTs each keeps in flight at once.
const STORM_THREADS: usize = 4;
const STORM_BATCH: usize = 25;
/// The storm stops when told, or after this many CONNECTs (which would fail the test).
const STORM_CONNECTS_MAX: u64 = 20_000;
/// Refused CONNECTs before the well-behaved clients act: the storm is under way.
const STORM_WARMUP: u64 = 100;
/// Messages published during the storm; every one must arrive.
const MESSAGES: usize = 200;
/// Messages per chunk; the storm refuses another batch between chunks.
const CHUNK: usize = 20;
const _: () = assert!(MESSAGES % CHUNK == 0);
const TOOL_WAIT: Duration = Duration::from_secs(120);
const SOCKET_WAIT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct StormCounts {
    /// CONNACK return code 4 (bad user name or password).
    refused_bad_credentials: AtomicU64,
    /// Any other CONNACK return code (3 = busy / quota), or 0 (a wrong password accepted).
    other_connack: AtomicU64,
    /// Closed or timed out without a CONNACK.
    no_connack: AtomicU64,
    attempts: AtomicU64,
}

/// A 3.1.1 CONNECT with username and password, as bytes [MQTT-3.1].
fn connect_bytes(client_id: &str, username: &str, password: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60];
    for field in [client_id, username, password] {
        body.extend((field.len() as u16).to_be_bytes());
        body.extend(field.as_bytes());
    }
    assert!(body.len() < 128, "one-byte remaining length");
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}

/// One storm thread: batches of CONNECTs for `victim` with wrong passwords, until `stop`.
fn storm(port: u16, thread: usize, stop: Arc<AtomicBool>, counts: Arc<StormCounts>) {
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed)
        && counts.attempts.load(Ordering::Relaxed) < STORM_CONNECTS_MAX
    {
        let mut sockets = Vec::with_capacity(STORM_BATCH);
        for i in 0..STORM_BATCH {
            counts.attempts.fetch_add(1, Ordering::Relaxed);
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                counts.no_connack.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let id = format!("storm-{thread}-{round}-{i}");
            let packet = connect_bytes(&id, "victim", &format!("guess-{round}-{i}"));
            if s.write_all(&packet).is_err() {
                counts.no_connack.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            sockets.push(s);
        }
        for mut s in sockets {
            let _ = s.set_read_timeout(Some(SOCKET_WAIT));
            let mut connack = [0u8; 4];
            match s.read_exact(&mut connack) {
                Ok(()) if connack[..3] == [0x20, 2, 0] && connack[3] == 4 => {
                    counts
                        .refused_bad_credentials
                        .fetch_add(1, Ordering::Relaxed);
                }
                Ok(()) => {
                    counts.other_connack.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    counts.no_connack.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        round += 1;
    }
}

/// A `$7$` line for `user` with [`SLOW_ITERATIONS`], computed by Python's hashlib (stdlib).
fn slow_entry(user: &str, password: &str) -> String {
    let script = format!(
        "import base64,hashlib,os\n\
         salt=os.urandom(12)\n\
         h=hashlib.pbkdf2_hmac('sha512',{password:?}.encode(),salt,{SLOW_ITERATIONS},64)\n\
         print('{user}:$7${SLOW_ITERATIONS}$'+base64.b64encode(salt).decode()+'$'+base64.b64encode(h).decode())\n"
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A mosquitto tool under `stdbuf -oL` (its -d lines are not flushed otherwise), stdout lines
/// sent to a channel.
fn spawn_line_buffered(args: &[&str], stdin: Stdio) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new("stdbuf")
        .arg("-oL")
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn stdbuf");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Reads lines until one contains `needle`; panics after [`TOOL_WAIT`].
fn wait_line(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + TOOL_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no line containing {needle:?}"));
        if line.contains(needle) {
            return line;
        }
    }
}

struct Cleanup {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn bad_password_storm_does_not_stall_the_shards() {
    if !mosquitto::available() {
        return;
    }
    let dir = std::env::temp_dir().join(unique("ringmq-storm"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut cleanup = Cleanup {
        dir: dir.clone(),
        children: Vec::new(),
    };
    let passwd = dir.join("passwd");
    mosquitto::passwd_file(
        &passwd,
        &[("good", "pw-good"), ("sub", "pw-sub"), ("pub", "pw-pub")],
    );
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&passwd)
        .expect("open passwd");
    file.write_all(slow_entry("victim", "the-real-one").as_bytes())
        .expect("append victim");
    drop(file);
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let config = format!(
        "[auth]\npassword_file = {:?}\n",
        passwd.to_str().expect("utf-8")
    );
    let mut broker = BrokerProcess::start_with_config(&config, &["--metrics-listen", &metrics]);
    let port = broker.port.to_string();

    // The well-behaved clients, connected before the storm.
    let count = MESSAGES.to_string();
    let (sub, sub_lines) = spawn_line_buffered(
        &[
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-u",
            "sub",
            "-P",
            "pw-sub",
            "-i",
            "storm-sub",
            "-t",
            "telemetry/#",
            "-q",
            "1",
            "-d",
            "-C",
            &count,
            "-W",
            "300",
        ],
        Stdio::null(),
    );
    cleanup.children.push(sub);
    wait_line(&sub_lines, "Subscribed");
    let (mut publisher, pub_lines) = spawn_line_buffered(
        &[
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-u",
            "pub",
            "-P",
            "pw-pub",
            "-i",
            "storm-pub",
            "-t",
            "telemetry/car1",
            "-q",
            "1",
            "-l",
            "-d",
        ],
        Stdio::piped(),
    );
    let mut pub_stdin = publisher.stdin.take().expect("publisher stdin");
    cleanup.children.push(publisher);
    assert!(wait_line(&pub_lines, "received CONNACK").contains("CONNACK (0)"));

    // The storm.
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(StormCounts::default());
    let threads: Vec<_> = (0..STORM_THREADS)
        .map(|t| {
            let (stop, counts) = (stop.clone(), counts.clone());
            let port = broker.port;
            std::thread::spawn(move || storm(port, t, stop, counts))
        })
        .collect();
    let deadline = Instant::now() + TOOL_WAIT;
    while counts.refused_bad_credentials.load(Ordering::Relaxed) < STORM_WARMUP {
        assert!(Instant::now() < deadline, "storm never got going");
        std::thread::sleep(Duration::from_millis(50));
    }

    // During the storm: N messages through the live subscription, in chunks, each chunk sent
    // only after the storm has had another batch refused and received before the next.
    let refused_before = counts.refused_bad_credentials.load(Ordering::Relaxed);
    let mut received = 0;
    let deadline = Instant::now() + TOOL_WAIT;
    for chunk in 0..MESSAGES / CHUNK {
        let seen = counts.refused_bad_credentials.load(Ordering::Relaxed);
        while counts.refused_bad_credentials.load(Ordering::Relaxed) < seen + STORM_BATCH as u64 {
            assert!(Instant::now() < deadline, "the storm stalled");
            std::thread::sleep(Duration::from_millis(10));
        }
        for i in chunk * CHUNK..(chunk + 1) * CHUNK {
            writeln!(pub_stdin, "m{i}").expect("publisher stdin");
        }
        pub_stdin.flush().expect("flush");
        while received < (chunk + 1) * CHUNK {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = sub_lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("subscriber got {received} of {MESSAGES} messages"));
            if line.starts_with('m') {
                assert_eq!(line, format!("m{received}"), "order on one topic at QoS 1");
                received += 1;
            }
        }
    }
    let refused_after_messages = counts.refused_bad_credentials.load(Ordering::Relaxed);

    // During the storm: a client that was not connected before gets in.
    let (good, good_lines) = spawn_line_buffered(
        &[
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-u",
            "good",
            "-P",
            "pw-good",
            "-i",
            "storm-good",
            "-t",
            "telemetry/good",
            "-m",
            "hi",
            "-q",
            "1",
            "-d",
        ],
        Stdio::null(),
    );
    cleanup.children.push(good);
    let connack = wait_line(&good_lines, "received CONNACK");
    let storm_running = !stop.load(Ordering::Relaxed)
        && counts.attempts.load(Ordering::Relaxed) < STORM_CONNECTS_MAX;
    let refused_at_good = counts.refused_bad_credentials.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("storm thread");
    }
    drop(pub_stdin);
    broker.assert_alive();

    assert!(connack.contains("CONNACK (0)"), "good client: {connack}");
    assert!(
        storm_running,
        "the storm ended before the good client's CONNACK"
    );
    let refused = counts.refused_bad_credentials.load(Ordering::Relaxed);
    let other = counts.other_connack.load(Ordering::Relaxed);
    let none = counts.no_connack.load(Ordering::Relaxed);
    eprintln!(
        "storm: {} attempts, {refused} refused rc 4 ({refused_before} before the messages, \
         {refused_after_messages} after them, {refused_at_good} at the good CONNACK), \
         {other} other CONNACKs, {none} without CONNACK",
        counts.attempts.load(Ordering::Relaxed)
    );
    assert!(
        refused >= 200,
        "a storm of hundreds: only {refused} refused"
    );
    assert_eq!(
        other, 0,
        "a wrong password accepted, or the pool refused as busy"
    );
    assert_eq!(
        none, 0,
        "storm CONNECTs closed without CONNACK (connect timeout?)"
    );

    // The pool accounts for the storm: every attempt hashed on a worker, each refused as a
    // wrong password, none turned away as busy.
    let text = wait_for_metric(
        metrics_port,
        "ringmq_auth_failures_total",
        &["reason=\"wrong_password\""],
        refused as f64,
    );
    let submitted = metric_total(&text, "ringmq_auth_pool_submitted_total", &[]);
    assert!(
        submitted >= refused as f64 + 3.0,
        "pool submitted {submitted}"
    );
    assert_eq!(
        metric_total(&text, "ringmq_auth_pool_queue_full_total", &[]),
        0.0
    );
    assert_eq!(
        metric_total(
            &text,
            "ringmq_auth_refused_total",
            &["reason=\"quota_exceeded\""]
        ),
        0.0
    );
    // Each shard exports its own refusal counter once a second.
    wait_for_metric(
        metrics_port,
        "ringmq_auth_refused_total",
        &["reason=\"bad_credentials\""],
        refused as f64,
    );
    drop(cleanup);
}
