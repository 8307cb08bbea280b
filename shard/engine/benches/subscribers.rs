//! One filter with many subscribers, as a broadcast has them: the engine's cost of 15,000
//! clients subscribing to it, and of all of them disconnecting again (each disconnect removes
//! one subscriber from the filter's list). Engine-level: one shard, raw MQTT 3.1.1 bytes in,
//! outputs drained, no sockets. `cargo bench -p ringmq-engine --bench subscribers`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use ringmq_engine::{ConnId, Engine, Limits, SubscribeRules};

/// Subscribers of the one filter: the broadcast bench's fleet.
const SUBSCRIBERS: usize = 15_000;
const FILTER: &str = "fleet/all/command";

fn string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn frame(first: u8, body: &[u8], out: &mut Vec<u8>) {
    assert!(body.len() < 128, "one-byte remaining length only");
    out.push(first);
    out.push(body.len() as u8);
    out.extend_from_slice(body);
}

/// CONNECT (clean session, keepalive 0) and SUBSCRIBE QoS 1 to `FILTER`, as one read.
fn connect_and_subscribe(i: usize) -> Vec<u8> {
    let mut connect = Vec::new();
    string("MQTT", &mut connect);
    connect.extend_from_slice(&[4, 0x02, 0, 0]);
    string(&format!("vehicle-{i:06}"), &mut connect);
    let mut subscribe = vec![0, 1];
    string(FILTER, &mut subscribe);
    subscribe.push(1);
    let mut out = Vec::new();
    frame(0x10, &connect, &mut out);
    frame(0x82, &subscribe, &mut out);
    out
}

fn engine() -> Engine {
    Engine::new(
        0,
        1,
        Limits::default(),
        Arc::new(SubscribeRules::default()),
        None,
    )
}

/// Processes and takes every output, reporting each transmit as sent (as the ring would).
fn drain(engine: &mut Engine, now: Instant) {
    loop {
        engine.process(now);
        let mut any = false;
        while let Some(output) = engine.poll_output() {
            any = true;
            if let ringmq_engine::Output::Transmit { conn, .. } = output {
                engine.handle_sent(conn, 0);
            }
        }
        if !any && !engine.has_work() {
            return;
        }
    }
}

/// `SUBSCRIBERS` connections subscribed to `FILTER`; returns how long that took.
fn subscribe_all(engine: &mut Engine, inputs: &[Vec<u8>]) -> (Vec<ConnId>, Duration) {
    let now = Instant::now();
    let start = Instant::now();
    let mut conns = Vec::with_capacity(inputs.len());
    for input in inputs {
        let conn = engine.open(now);
        engine.handle_input(conn, input, now);
        conns.push(conn);
    }
    drain(engine, now);
    (conns, start.elapsed())
}

fn bench(c: &mut Criterion) {
    let inputs: Vec<Vec<u8>> = (0..SUBSCRIBERS).map(connect_and_subscribe).collect();
    let mut group = c.benchmark_group("one_filter_15k");
    group.sample_size(10);
    group.bench_function("subscribe", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut engine = engine();
                total += subscribe_all(&mut engine, &inputs).1;
                assert_eq!(engine.stats().subscriptions, SUBSCRIBERS as u64);
            }
            total
        })
    });
    group.bench_function("disconnect", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut engine = engine();
                let (conns, _) = subscribe_all(&mut engine, &inputs);
                let now = Instant::now();
                let start = Instant::now();
                for conn in conns {
                    engine.handle_closed(conn, now);
                }
                drain(&mut engine, now);
                total += start.elapsed();
                assert_eq!(engine.stats().subscriptions, 0);
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
