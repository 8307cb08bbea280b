//! Echo benchmark: the same closed-loop ping-pong clients against a `Ring` shard loop or a
//! plain glommio `TcpStream` echo, reporting messages/s and the server thread's CPU time per
//! message (user + system, RUSAGE_THREAD: includes the kernel's socket work done in our
//! thread).
//!
//! cargo run --release -p ringmq-uring --example echo_bench -- ring 16 100 5
//! cargo run --release -p ringmq-uring --example echo_bench -- glommio 16 100 5
//! (mode, connections, message bytes, seconds)

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::LocalExecutorBuilder;
use ringmq_uring::{Event, Ring, RingConfig};

fn thread_cpu() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(us(ru.ru_utime) + us(ru.ru_stime))
}

fn client(addr: SocketAddr, size: usize, stop: Arc<AtomicBool>, count: Arc<AtomicU64>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let msg = vec![7u8; size];
    let mut buf = vec![0u8; size];
    while !stop.load(Ordering::Relaxed) {
        if s.write_all(&msg).is_err() || s.read_exact(&mut buf).is_err() {
            return;
        }
        count.fetch_add(1, Ordering::Relaxed);
    }
}

async fn serve_ring(listener: TcpListener, stop: Rc<Cell<bool>>) -> (u64, String) {
    let mut ring = Ring::new(RingConfig::default()).expect("ring");
    ring.add_listener(listener).expect("listener");
    let mut keys = HashMap::new();
    let mut echoes = Vec::new();
    let mut accepted = Vec::new();
    let mut messages = 0u64;
    while !stop.get() {
        ring.flush().expect("flush");
        let n = ring.poll(|ev| match ev {
            Event::Accepted { fd, .. } => accepted.push(fd),
            Event::Received { user, data } => echoes.push((user, Bytes::copy_from_slice(data))),
            _ => {}
        });
        for fd in accepted.drain(..) {
            let user = keys.len() as u64;
            keys.insert(user, ring.add_conn(fd, user).expect("add"));
        }
        for (user, data) in echoes.drain(..) {
            messages += 1;
            let _ = ring.send(keys[&user], data);
        }
        // A shard loop shares the thread with glommio's timers and channels.
        glommio::yield_if_needed().await;
        if n == 0 {
            let timer = glommio::timer::sleep(Duration::from_millis(50));
            futures_lite::future::or(ring.wait(), timer).await;
        }
    }
    (messages, format!("{:?}", ring.stats()))
}

async fn serve_glommio(listener: TcpListener, stop: Rc<Cell<bool>>) -> (u64, String) {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
    let messages = Rc::new(Cell::new(0u64));
    let m = messages.clone();
    let accept = glommio::spawn_local(async move {
        loop {
            let Ok(mut s) = listener.accept().await else {
                break;
            };
            let m = m.clone();
            glommio::spawn_local(async move {
                let mut buf = vec![0u8; 16384];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            m.set(m.get() + 1);
                        }
                    }
                }
            })
            .detach();
        }
    })
    .detach();
    while !stop.get() {
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    drop(accept);
    (messages.get(), String::new())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).cloned().unwrap_or_else(|| "ring".into());
    let conns: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(16);
    let size: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(100);
    let secs: u64 = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(5);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop_clients = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let server = LocalExecutorBuilder::default()
        .spawn(move || async move {
            let stop = Rc::new(Cell::new(false));
            let s = stop.clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(Duration::from_secs(secs + 1)).await;
                s.set(true);
            })
            .detach();
            // Measure from after warm-up (1 s) to the end.
            let cpu0 = Rc::new(Cell::new(Duration::ZERO));
            let c0 = cpu0.clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(Duration::from_secs(1)).await;
                c0.set(thread_cpu());
            })
            .detach();
            let (messages, stats) = if mode == "glommio" {
                serve_glommio(listener, stop).await
            } else {
                serve_ring(listener, stop).await
            };
            (thread_cpu() - cpu0.get(), messages, stats)
        })
        .expect("executor");
    let clients: Vec<_> = (0..conns)
        .map(|_| {
            let (stop, count) = (stop_clients.clone(), count.clone());
            std::thread::spawn(move || client(addr, size, stop, count))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let start_count = count.load(Ordering::Relaxed);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let measured = count.load(Ordering::Relaxed) - start_count;
    let elapsed = start.elapsed();
    let (cpu, messages, stats) = server.join().expect("server");
    stop_clients.store(true, Ordering::Relaxed);
    drop(clients); // detached: they exit on the server's close
    let rate = measured as f64 / elapsed.as_secs_f64();
    println!(
        "{} conns={conns} size={size}: {:.0} msg/s, server thread cpu {:.2} us/msg ({:.0}% of a core)",
        std::env::args().nth(1).unwrap_or_default(),
        rate,
        cpu.as_secs_f64() * 1e6 / measured as f64,
        cpu.as_secs_f64() / elapsed.as_secs_f64() * 100.0
    );
    // For `perf stat -e raw_syscalls:sys_enter`: the clients make 2 syscalls per message.
    println!("server echoed {messages} messages in total");
    if !stats.is_empty() {
        println!("{stats}");
    }
}
