//! The Prometheus endpoint: a tiny HTTP/1.1 server on its own thread (no tokio) that renders the
//! process-wide `metrics` registry, into which every shard publishes its counters once a second.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing::debug;

/// Installs the recorder and serves `GET /metrics` on `addr`. Returns the bound address.
pub fn serve(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the prometheus recorder")?;
    let listener = TcpListener::bind(addr)
        .with_context(|| format!("metrics_listen: cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("ringmq-metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(err) = answer(stream, &handle) {
                    debug!(error = %err, "metrics request failed");
                }
            }
        })
        .context("cannot start the metrics thread")?;
    Ok(bound)
}

fn answer(stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Skip headers (bounded: at most 100 lines).
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut stream = stream;
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    if request_line.starts_with("GET ") && (path == "/metrics" || path.starts_with("/metrics?")) {
        let body = handle.render();
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        stream.write_all(body.as_bytes())?;
    } else {
        let body = "only GET /metrics is served here\n";
        write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
    }
    stream.flush()
}
