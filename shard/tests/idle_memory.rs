//! Heap held per idle connection, counted by a wrapping global allocator: a broker on one shard,
//! `N` raw MQTT 3.1.1 clients that each CONNECT and SUBSCRIBE to their own topic, then the live
//! heap before and after, divided by `N`, right after they connected (there is no parking: an
//! idle connection is its session and the ring's small per-connection record), and again once
//! each received one QoS 0 and one QoS 1 message and is idle again. Run with `--nocapture` to
//! see where the bytes go (live allocations by size). The check is a memory budget, not a
//! timing.
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

struct Counting;

/// Live bytes as malloc accounts them (usable size plus its 8-byte chunk header).
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static LIVE_COUNT: AtomicI64 = AtomicI64::new(0);
const BUCKETS: usize = 130;
/// Live allocations by malloc chunk size, in 32-byte steps (last bucket: larger).
static BY_SIZE: [AtomicI64; BUCKETS] = [const { AtomicI64::new(0) }; BUCKETS];

fn chunk(ptr: *mut u8) -> i64 {
    // SAFETY: ptr came from the system allocator and is live.
    (unsafe { libc::malloc_usable_size(ptr.cast()) } + 8) as i64
}

/// Allocations of at least this many bytes (the shard's tables) are listed one by one.
const LARGE_BYTES: usize = 16 * 1024;
const LARGE_MAX: usize = 512;
/// Live large allocations: (address, chunk size); address 0 = free entry.
static LARGE: [(AtomicUsize, AtomicUsize); LARGE_MAX] =
    [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; LARGE_MAX];

fn track_large(ptr: *mut u8, size: i64, sign: i64) {
    if (size as usize) < LARGE_BYTES {
        return;
    }
    let addr = ptr as usize;
    if sign > 0 {
        for (a, s) in &LARGE {
            if a.compare_exchange(0, addr, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                s.store(size as usize, Ordering::Relaxed);
                return;
            }
        }
    } else {
        for (a, _) in &LARGE {
            if a.compare_exchange(addr, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }
}

fn large_sizes() -> Vec<usize> {
    let mut sizes: Vec<usize> = LARGE
        .iter()
        .filter(|(a, _)| a.load(Ordering::Relaxed) != 0)
        .map(|(_, s)| s.load(Ordering::Relaxed))
        .collect();
    sizes.sort_unstable();
    sizes
}

fn account(ptr: *mut u8, sign: i64) {
    let size = chunk(ptr);
    track_large(ptr, size, sign);
    LIVE_BYTES.fetch_add(sign * size, Ordering::Relaxed);
    LIVE_COUNT.fetch_add(sign, Ordering::Relaxed);
    let bucket = ((size as usize).div_ceil(32)).min(BUCKETS - 1);
    BY_SIZE[bucket].fetch_add(sign, Ordering::Relaxed);
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() {
            account(ptr, 1);
        }
        ptr
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(ptr, -1);
        System.dealloc(ptr, layout);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        account(ptr, -1);
        let out = System.realloc(ptr, layout, new_size);
        if out.is_null() {
            account(ptr, 1);
        } else {
            account(out, 1);
        }
        out
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    let mut out = vec![first, body.len() as u8];
    out.extend_from_slice(body);
    out
}

fn idle_client(addr: std::net::SocketAddr, i: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut connect = string("MQTT");
    connect.extend_from_slice(&[4, 2, 0x02, 0x58]);
    connect.extend(string(&format!("idle-vehicle-{i:06}")));
    let mut sub = vec![0, 1];
    sub.extend(string(&format!("fleet/vehicle-{i:06}/command")));
    sub.push(1);
    let mut out = frame(0x10, &connect);
    out.extend(frame(0x82, &sub));
    s.write_all(&out).unwrap();
    // CONNACK (4 bytes) and SUBACK (5 bytes).
    let mut got = [0u8; 9];
    s.read_exact(&mut got).expect("connack and suback");
    assert_eq!(got[0], 0x20);
    assert_eq!(got[4], 0x90);
    s
}

/// A publisher that sends every idle client, on its own topic, one QoS 0 and one QoS 1
/// message, and reads its PUBACKs.
fn publish_to_each(addr: std::net::SocketAddr, clients: std::ops::Range<usize>) {
    let mut p = TcpStream::connect(addr).expect("connect");
    p.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut connect = string("MQTT");
    connect.extend_from_slice(&[4, 2, 0, 0]);
    connect.extend(string("ota-publisher"));
    p.write_all(&frame(0x10, &connect)).unwrap();
    let mut connack = [0u8; 4];
    p.read_exact(&mut connack).expect("connack");
    let mut out = Vec::new();
    for (n, i) in clients.clone().enumerate() {
        let topic = string(&format!("fleet/vehicle-{i:06}/command"));
        let mut qos0 = topic.clone();
        qos0.extend_from_slice(b"ota-0");
        out.extend(frame(0x30, &qos0));
        let mut qos1 = topic;
        qos1.extend_from_slice(&(n as u16 + 1).to_be_bytes());
        qos1.extend_from_slice(b"ota-1");
        out.extend(frame(0x32, &qos1));
    }
    p.write_all(&out).unwrap();
    let mut pubacks = vec![0u8; 4 * clients.len()];
    p.read_exact(&mut pubacks)
        .expect("pubacks to the publisher");
    // Kept open until the end: its own session is not what an idle client costs.
    std::mem::forget(p);
}

/// Reads the QoS 0 then the QoS 1 PUBLISH an idle client was sent and acknowledges the second.
fn receive_both(s: &mut TcpStream) {
    for qos in [0u8, 1] {
        let mut header = [0u8; 2];
        s.read_exact(&mut header).expect("publish");
        assert_eq!(header[0] & 0xF6, 0x30 | (qos << 1), "QoS {qos} publish");
        let mut body = vec![0u8; usize::from(header[1])];
        s.read_exact(&mut body).expect("publish body");
        if qos == 1 {
            let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
            let id = &body[2 + topic_len..4 + topic_len];
            s.write_all(&[0x40, 2, id[0], id[1]]).unwrap();
        }
    }
}

fn snapshot() -> (i64, i64, Vec<i64>) {
    (
        LIVE_BYTES.load(Ordering::Relaxed),
        LIVE_COUNT.load(Ordering::Relaxed),
        BY_SIZE.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
    )
}

#[test]
fn heap_per_idle_connection_with_one_subscription() {
    const WARM: usize = 200;
    // 4,000 after 200: the shard's tables double just before the end, the dearest point for
    // one connection. IDLE_MEMORY_CLIENTS=N measures elsewhere on the doubling cycle.
    let n: usize = std::env::var("IDLE_MEMORY_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let config = ringmq_shard::runtime::RuntimeConfig {
        listeners: Vec::new(),
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        shards: 1,
        pin: false,
        listen_backlog: 4096,
        limits: ringmq_shard::Limits {
            sys_interval_secs: 0,
            ..Default::default()
        },
        rules: Default::default(),
        cluster: None,
        auth: None,
    };
    let broker = ringmq_shard::runtime::start(config, None).expect("broker starts");
    let addr = broker.local_addrs[0];
    let mut clients: Vec<TcpStream> = (0..WARM).map(|i| idle_client(addr, i)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let (b0, c0, h0) = snapshot();
    let large0 = large_sizes();
    clients.extend((WARM..WARM + n).map(|i| idle_client(addr, i)));
    // Let the last CONNACK/SUBACK sends complete (their buffers are freed on completion).
    std::thread::sleep(Duration::from_millis(300));
    let (b1, c1, h1) = snapshot();
    let large1 = large_sizes();
    let per_conn = (b1 - b0) as f64 / n as f64;
    println!(
        "heap per idle connection: {per_conn:.0} B in {:.1} allocations",
        (c1 - c0) as f64 / n as f64
    );
    for (bucket, (before, after)) in h0.iter().zip(&h1).enumerate() {
        let delta = after - before;
        if delta.unsigned_abs() as usize >= n / 10 {
            let upper = if bucket == BUCKETS - 1 {
                "larger".to_string()
            } else {
                format!("<= {} B", bucket * 32)
            };
            println!(
                "  chunks {upper:>9}: {:+.2} per connection",
                delta as f64 / n as f64
            );
        }
    }
    // The tables (allocations of 16 KiB and more) that came or went meanwhile: they grow by
    // doubling, so what one connection costs in them depends on where N falls.
    let mut gone = large0.clone();
    let mut came = Vec::new();
    for size in &large1 {
        match gone.iter().position(|s| s == size) {
            Some(i) => {
                gone.swap_remove(i);
            }
            None => came.push(*size),
        }
    }
    let tables: i64 = came.iter().sum::<usize>() as i64 - gone.iter().sum::<usize>() as i64;
    println!(
        "  of which tables: {:.0} per connection (allocated {came:?}, freed {gone:?})",
        tables as f64 / n as f64
    );

    // Every client receives one QoS 0 and one QoS 1 message and acknowledges the second; then
    // they are idle again and the shard's traffic sweep may release what delivery needed.
    publish_to_each(addr, WARM..WARM + n);
    for s in &mut clients[WARM..] {
        receive_both(s);
    }
    // Two visits of each session's slot free an idle traffic box (one to see it unused).
    let sessions = WARM + n + 1;
    let sweeps = 2 * sessions.div_ceil(engine::state::TRAFFIC_SWEEP_SLOTS_MAX) + 1;
    std::thread::sleep(engine::state::TRAFFIC_SWEEP_INTERVAL * sweeps as u32);
    std::thread::sleep(Duration::from_millis(300));
    let (b2, c2, h2) = snapshot();
    let per_conn_delivered = (b2 - b0) as f64 / n as f64;
    println!(
        "heap per idle connection after one QoS 0 and one QoS 1 delivery: \
         {per_conn_delivered:.0} B in {:.1} allocations",
        (c2 - c0) as f64 / n as f64
    );
    for (bucket, (before, after)) in h1.iter().zip(&h2).enumerate() {
        let delta = after - before;
        if delta.unsigned_abs() as usize >= n / 10 {
            println!(
                "  chunks <= {:>5} B: {:+.2} per connection since connected",
                bucket * 32,
                delta as f64 / n as f64
            );
        }
    }
    broker.shutdown();
    drop(clients);
    broker.join().unwrap();
    // The budget: an idle client with one subscription costs at most 740 B of heap from the
    // moment it connected (the design target is 700 B, met at 688 B on 2026-12-02; the margin
    // is for allocator rounding; docs/benchmarks.md has where it stands). The heap only (the
    // kernel's socket memory is not the broker's), counted in malloc chunks.
    assert!(
        per_conn <= 740.0,
        "an idle connection holds {per_conn:.0} B of heap, over the 740 B budget"
    );
    // The same budget once it received a message of each QoS and is idle again: delivery
    // leaves nothing behind (the session's `Traffic` is released by the sweep).
    assert!(
        per_conn_delivered <= 740.0,
        "an idle connection holds {per_conn_delivered:.0} B of heap after its deliveries, \
         over the 740 B budget"
    );
}
