//! `ringmq-loadgen`: command line front end. See the crate docs of `ringmq_loadgen`.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use ringmq_loadgen::failover::BrokerPick;
use ringmq_loadgen::plan::{
    ConnectionSettings, GroupSpec, MqttVersion, Role, RunSettings, Scenario,
};
use ringmq_loadgen::runner::{self, RunOptions};
use ringmq_loadgen::transport::TransportKind;

#[derive(Parser, Debug)]
#[command(
    name = "ringmq-loadgen",
    version,
    about = "MQTT load generator and latency/loss meter"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Args, Debug)]
struct Common {
    /// Broker host, or a comma list of host[:port] (several brokers, e.g. cluster nodes).
    #[arg(long, global = true)]
    host: Option<String>,
    /// Broker port (the default for every broker address without one).
    #[arg(long, short = 'p', global = true)]
    port: Option<u16>,
    /// A broker host:port; repeat for several (added after those of --host).
    #[arg(long = "broker", global = true)]
    brokers: Vec<String>,
    /// How each client chooses among several brokers: round-robin or random.
    #[arg(long, global = true)]
    broker_pick: Option<BrokerPick>,
    /// Reconnect after an unexpected loss, with exponential backoff and jitter.
    #[arg(long, global = true)]
    reconnect: bool,
    /// Reconnect backoff bounds: MIN,MAX in ms (attempt k waits within [d/2, d],
    /// d = min(MIN * 2^k, MAX)).
    #[arg(long, global = true, value_delimiter = ',', value_name = "MIN,MAX")]
    reconnect_backoff_ms: Vec<u64>,
    /// Most publishes per write for every publishing group (1 = one write per message).
    #[arg(long, global = true)]
    publishes_per_write: Option<u32>,
    /// Executors (one per core); default: every CPU this process may use.
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Connection attempts per second (default: as fast as --conn-concurrency allows).
    #[arg(long, global = true)]
    conn_rate: Option<f64>,
    /// Handshakes in flight at once.
    #[arg(long, global = true)]
    conn_concurrency: Option<usize>,
    /// Uniform random delay added before each connection, ms.
    #[arg(long, global = true)]
    start_jitter_ms: Option<u64>,
    #[arg(long, global = true)]
    connect_timeout_ms: Option<u64>,
    #[arg(long, global = true)]
    client_id_prefix: Option<String>,
    /// First client index (so several instances never collide).
    #[arg(long, global = true)]
    index_start: Option<u64>,
    /// Source addresses to bind, round robin, e.g. 127.0.0.2,127.0.0.3.
    #[arg(long, global = true, value_delimiter = ',')]
    ifaddr: Vec<IpAddr>,
    /// Keepalive, seconds.
    #[arg(long, global = true)]
    keepalive: Option<u16>,
    /// Persistent sessions (clean session / clean start = false).
    #[arg(long, global = true)]
    persistent: bool,
    /// MQTT 5 session expiry for --persistent, seconds.
    #[arg(long, global = true)]
    session_expiry: Option<u32>,
    /// 3.1.1 or 5.
    #[arg(long, global = true)]
    mqtt_version: Option<MqttVersion>,
    /// Publishing window / holding time, seconds (0 = until --limit).
    #[arg(long, global = true)]
    duration: Option<f64>,
    /// Max wait for in-flight deliveries after publishing, ms.
    #[arg(long, global = true)]
    drain_ms: Option<u64>,
    /// Write the summary as JSON here.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Layers under MQTT: tcp, tls, ws (MQTT over WebSocket) or wss (WebSocket over TLS).
    #[arg(long, global = true)]
    transport: Option<TransportKind>,
    /// PEM CA file the broker's certificate is verified against (tls, wss).
    #[arg(long, global = true)]
    cafile: Option<PathBuf>,
    /// PEM client certificate for mTLS (with --key); every client presents it.
    #[arg(long, global = true)]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, global = true)]
    key: Option<PathBuf>,
    /// TLS server name (SNI, and the name the broker's certificate must carry); default: the
    /// broker host as given.
    #[arg(long, global = true)]
    server_name: Option<String>,
    /// HTTP path of the WebSocket upgrade (ws, wss); default /mqtt.
    #[arg(long, global = true)]
    ws_path: Option<String>,
    /// Broker process id on this host: report its CPU seconds and RSS per phase.
    #[arg(long, global = true)]
    broker_pid: Option<u32>,
    /// No per-second progress line.
    #[arg(long, global = true)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct CountArg {
    /// Number of clients.
    #[arg(long, short = 'c', default_value_t = 1)]
    count: u64,
}

#[derive(Args, Debug)]
struct PubArgs {
    /// Topic template: %i client index, %c client id, %g index within the group.
    #[arg(long, short = 't', default_value = "bench/%i")]
    topic: String,
    #[arg(long, short = 'q', default_value_t = 0)]
    qos: u8,
    #[arg(long, short = 's', default_value_t = 100)]
    payload_size: usize,
    /// Per-publisher interval, ms.
    #[arg(long, short = 'I')]
    interval_ms: Option<f64>,
    /// Total msgs/s across all publishers (overrides --interval-ms).
    #[arg(long)]
    rate: Option<f64>,
    /// Total messages across all publishers.
    #[arg(long, short = 'L')]
    limit: Option<u64>,
    /// QoS 1/2 unacknowledged publishes per client.
    #[arg(long, default_value_t = 64)]
    inflight: u16,
    #[arg(long)]
    retain: bool,
    /// Also run this many subscribers in the same process (for loss/latency).
    #[arg(long, default_value_t = 0)]
    subscribers: u64,
    /// Their filter (may be $share/group/filter); default: "bench/#"-style from the topic.
    #[arg(long)]
    sub_filter: Option<String>,
    #[arg(long, default_value_t = 0)]
    sub_qos: u8,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Connect N clients and hold them.
    Conn(CountArg),
    /// N subscribers.
    Sub {
        #[command(flatten)]
        count: CountArg,
        #[arg(long, short = 't')]
        filter: String,
        #[arg(long, short = 'q', default_value_t = 0)]
        qos: u8,
    },
    /// N publishers (optionally with subscribers measuring them).
    Pub {
        #[command(flatten)]
        count: CountArg,
        #[command(flatten)]
        args: PubArgs,
    },
    /// Run a scenario TOML file.
    Scenario {
        file: PathBuf,
        /// Multiply every publishing group's rate.
        #[arg(long)]
        rate_scale: Option<f64>,
        /// Override the client count of every group by this factor (rounded, >= 1).
        #[arg(long)]
        count_scale: Option<f64>,
    },
}

fn group(name: &str, count: u64, role: Role) -> GroupSpec {
    GroupSpec {
        name: name.into(),
        count,
        role,
        topic: None,
        filter: None,
        qos: 0,
        payload_size: 100,
        interval_ms: None,
        rate: None,
        limit: None,
        inflight: 64,
        retain: false,
        publishes_per_write_max: None,
    }
}

/// "bench/%i" -> "bench/+"; other placeholders likewise become one level.
fn default_filter(topic: &str) -> String {
    topic
        .split('/')
        .map(|level| if level.contains('%') { "+" } else { level })
        .collect::<Vec<_>>()
        .join("/")
}

fn apply_common(
    common: &Common,
    connection: &mut ConnectionSettings,
    run: &mut RunSettings,
) -> anyhow::Result<()> {
    // One plain host keeps the single-broker settings; a list (or --broker) names them all.
    let mut brokers: Vec<String> = Vec::new();
    if let Some(host) = &common.host {
        if host.contains(',') {
            brokers.extend(host.split(',').map(str::to_string));
        } else if common.brokers.is_empty() {
            connection.host = host.clone();
        } else {
            brokers.push(host.clone());
        }
    }
    brokers.extend(common.brokers.iter().cloned());
    if !brokers.is_empty() {
        connection.brokers = brokers;
    }
    if let Some(pick) = common.broker_pick {
        connection.broker_pick = pick;
    }
    if common.reconnect {
        connection.reconnect = true;
    }
    match common.reconnect_backoff_ms.as_slice() {
        [] => {}
        &[min, max] => {
            connection.reconnect_backoff_min_ms = min;
            connection.reconnect_backoff_max_ms = max;
        }
        other => anyhow::bail!("--reconnect-backoff-ms takes MIN,MAX (got {other:?})"),
    }
    if let Some(port) = common.port {
        connection.port = port;
    }
    if common.conn_rate.is_some() {
        connection.conn_rate = common.conn_rate;
    }
    if let Some(value) = common.conn_concurrency {
        connection.conn_concurrency = value;
    }
    if let Some(value) = common.start_jitter_ms {
        connection.start_jitter_ms = value;
    }
    if let Some(value) = common.connect_timeout_ms {
        connection.connect_timeout_ms = value;
    }
    if let Some(value) = &common.client_id_prefix {
        connection.client_id_prefix = value.clone();
    }
    if let Some(value) = common.index_start {
        connection.index_start = value;
    }
    if !common.ifaddr.is_empty() {
        connection.ifaddr = common.ifaddr.clone();
    }
    if let Some(value) = common.keepalive {
        connection.keepalive_s = value;
    }
    if common.persistent {
        connection.clean_session = false;
    }
    if let Some(value) = common.session_expiry {
        connection.session_expiry_s = value;
    }
    if let Some(value) = common.mqtt_version {
        connection.mqtt_version = value;
    }
    if let Some(value) = common.transport {
        connection.transport = value;
    }
    if let Some(value) = &common.cafile {
        connection.tls_ca_file = Some(value.clone());
    }
    if let Some(value) = &common.cert {
        connection.tls_cert_file = Some(value.clone());
    }
    if let Some(value) = &common.key {
        connection.tls_key_file = Some(value.clone());
    }
    if let Some(value) = &common.server_name {
        connection.tls_server_name = Some(value.clone());
    }
    if let Some(value) = &common.ws_path {
        connection.ws_path = value.clone();
    }
    if let Some(value) = common.duration {
        run.duration_s = value;
    }
    if let Some(value) = common.drain_ms {
        run.drain_ms = value;
    }
    Ok(())
}

fn build(cli: &Cli) -> anyhow::Result<(Scenario, String)> {
    let mut scenario = match &cli.mode {
        Mode::Scenario {
            file,
            rate_scale,
            count_scale,
        } => {
            let mut scenario = Scenario::from_file(file)?;
            if scenario.name.is_empty() {
                scenario.name = file.display().to_string();
            }
            if let Some(factor) = rate_scale {
                scenario.scale_rates(*factor);
            }
            if let Some(factor) = count_scale {
                for group in &mut scenario.groups {
                    group.count = ((group.count as f64 * factor).round() as u64).max(1);
                }
            }
            scenario
        }
        Mode::Conn(count) => Scenario {
            name: "conn".into(),
            description: String::new(),
            connection: ConnectionSettings::default(),
            run: RunSettings::default(),
            groups: vec![group("conn", count.count, Role::Conn)],
        },
        Mode::Sub { count, filter, qos } => {
            let mut subs = group("sub", count.count, Role::Sub);
            subs.filter = Some(filter.clone());
            subs.qos = *qos;
            Scenario {
                name: "sub".into(),
                description: String::new(),
                connection: ConnectionSettings::default(),
                run: RunSettings::default(),
                groups: vec![subs],
            }
        }
        Mode::Pub { count, args } => {
            let mut groups = Vec::new();
            if args.subscribers > 0 {
                let mut subs = group("subscribers", args.subscribers, Role::Sub);
                subs.filter = Some(
                    args.sub_filter
                        .clone()
                        .unwrap_or_else(|| default_filter(&args.topic)),
                );
                subs.qos = args.sub_qos;
                groups.push(subs);
            }
            let mut pubs = group("publishers", count.count, Role::Pub);
            pubs.topic = Some(args.topic.clone());
            pubs.qos = args.qos;
            pubs.payload_size = args.payload_size;
            pubs.interval_ms = args.interval_ms;
            pubs.rate = args.rate;
            pubs.limit = args.limit;
            pubs.inflight = args.inflight;
            pubs.retain = args.retain;
            groups.push(pubs);
            let mut run = RunSettings::default();
            if args.limit.is_some() {
                run.duration_s = 0.0;
            }
            Scenario {
                name: "pub".into(),
                description: String::new(),
                connection: ConnectionSettings::default(),
                run,
                groups,
            }
        }
    };
    apply_common(&cli.common, &mut scenario.connection, &mut scenario.run)?;
    if let Some(per_write) = cli.common.publishes_per_write {
        for group in &mut scenario.groups {
            group.publishes_per_write_max = Some(per_write);
        }
    }
    scenario.validate()?;
    let mode = match cli.mode {
        Mode::Conn(_) => "conn",
        Mode::Sub { .. } => "sub",
        Mode::Pub { .. } => "pub",
        Mode::Scenario { .. } => "scenario",
    };
    Ok((scenario, mode.to_string()))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let (scenario, mode) = build(&cli)?;
    let summary = runner::run(RunOptions {
        scenario,
        threads: cli.common.threads,
        mode,
        progress: !cli.common.quiet,
        broker_pid: cli.common.broker_pid,
    })?;
    summary.print_human();
    if let Some(path) = &cli.common.json {
        let text = serde_json::to_string_pretty(&summary)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
