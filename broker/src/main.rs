//! `ringmq`: the broker binary. Reads configuration (embedded default, `--config FILE`, flags),
//! sets up logging and the Prometheus endpoint, reports the host limits that will cap it, starts
//! the shards and waits for SIGTERM/SIGINT to shut down gracefully (SIGHUP asks for a reload of
//! certificates, password and ACL files: see `shard::reload`).

mod ban_reload;
mod config;
mod limits;
mod listeners;
mod metrics_http;
mod trim;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tracing::{error, info};

use crate::config::Config;

/// jemalloc rather than glibc malloc: it keeps each size class in its own pages, so the memory a
/// connection frees when it parks (its task and io_uring poll) is returned to the kernel instead
/// of staying resident between the sessions that remain (glibc keeps such holes in RSS).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc options: purge freed pages from a background thread (an idle broker returns memory
/// too), dirty pages after 5 s, with MADV_DONTNEED so RSS shows it at once.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:5000,muzzy_decay_ms:0\0";

/// ringmq — a shared-nothing, thread-per-core MQTT 3.1/3.1.1/5.0 broker.
#[derive(Debug, Parser)]
// Later flags win, so wrappers can append overrides to a base command line.
#[command(name = "ringmq", version, about, args_override_self = true)]
struct Args {
    /// TOML configuration file (defaults to the embedded configuration; see `--print-default-config`).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// MQTT listen addresses, comma-separated. Overrides the config's `listen`.
    #[arg(long, value_delimiter = ',')]
    listen: Vec<SocketAddr>,
    /// Number of shards (0 = one per CPU core). Overrides the config's `shards`.
    #[arg(long)]
    shards: Option<u16>,
    /// Prometheus endpoint address ("" disables). Overrides the config's `metrics_listen`.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Log format: text or json. Overrides the config's `log.format`.
    #[arg(long)]
    log_format: Option<String>,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() {
    if let Err(err) = run() {
        // Logging may not be up yet: stderr always.
        eprintln!("ringmq: error: {err:#}");
        std::process::exit(2);
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_default_config {
        print!("{}", config::EMBEDDED_DEFAULT);
        return Ok(());
    }
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::parse(config::EMBEDDED_DEFAULT, "embedded default")?,
    };
    if !args.listen.is_empty() {
        config.listen = args.listen.clone();
    }
    if let Some(shards) = args.shards {
        config.shards = shards;
    }
    if let Some(m) = &args.metrics_listen {
        config.metrics_listen = m.clone();
    }
    if let Some(f) = &args.log_format {
        config.log.format = f.clone();
    }
    config.validate()?;
    let listeners = listeners::build(&config)?;
    if args.check_config {
        println!("configuration ok");
        return Ok(());
    }
    init_logging(&config)?;

    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let shards = if config.shards == 0 {
        u16::try_from(cpus).unwrap_or(u16::MAX)
    } else {
        config.shards
    };

    // Limits that cap the broker, said once at start.
    let _ = limits::raise_open_files_limit();
    let host = limits::HostLimits::read();
    limits::log_startup_limits(
        &host,
        usize::from(shards),
        shard::runtime::IO_MEMORY_PER_SHARD_BYTES,
        config.listen_backlog,
    );

    // Block the stop signals in every thread (shards inherit the mask) so this thread can wait
    // for them synchronously.
    let signals = block_stop_signals()?;

    if !config.metrics_listen.is_empty() {
        let addr: SocketAddr = config.metrics_listen.parse().context("metrics_listen")?;
        let bound = metrics_http::serve(addr)?;
        info!(addr = %bound, "prometheus metrics on /metrics");
    }

    // The Kafka bridge shard starts before the MQTT shards (it never waits for Kafka).
    let (bridge, bridge_link) = match config.bridge.kafka.clone() {
        Some(kafka) => {
            let (ack_senders, ack_receivers): (Vec<_>, Vec<_>) = (0..shards)
                .map(|_| flume::bounded(shard::bridge::ACK_CHANNEL_CAPACITY))
                .unzip();
            let (inbound_tx, inbound_rx) = flume::bounded(shard::bridge::INBOUND_CHANNEL_CAPACITY);
            let handle = bridge_kafka::Bridge::start(kafka, ack_senders, inbound_tx)
                .context("bridge.kafka: cannot start the kafka bridge")?;
            let link = shard::bridge::BridgeLink {
                shards: ack_receivers
                    .into_iter()
                    .map(|acks| shard::bridge::ShardBridge {
                        sender: handle.sender(),
                        matcher: handle.matcher(),
                        acks,
                    })
                    .collect(),
                inbound: inbound_rx,
            };
            info!("kafka bridge started");
            (Some(handle), Some(link))
        }
        None => (None, None),
    };

    let mut shard_limits = config.limits.clone();
    let ceiling = limits::connection_ceiling(&host, usize::from(shards));
    shard_limits.overload = config
        .overload
        .resolve(&config.listener_bounds(), ceiling)?;
    let o = &shard_limits.overload;
    info!(
        max_connections = o.max_connections,
        max_handshakes = o.max_handshakes,
        max_connection_rate = o.max_connection_rate,
        flapping_max_connects = o.flapping.max_connects,
        banned = o.ban.client_ids.len() + o.ban.usernames.len() + o.ban.addresses.len(),
        "overload protection"
    );

    let cluster = cluster_setup(&config);

    // Password file, token keys and ACL file are loaded now (a bad one stops the start, naming
    // its key); SIGHUP reloads them, keeping the old set if the new one fails.
    let base_dir = args
        .config
        .as_deref()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let auth_setup = config.auth_setup(&base_dir);
    let auth = if auth_setup.is_active() {
        let service = shard::auth::AuthService::start(auth_setup)
            .context("cannot set up authentication / acl")?;
        info!(
            authenticates = service.authenticates(),
            "authentication and acl ready"
        );
        Some(service)
    } else {
        None
    };

    // Shards return the pages TLS handshakes freed at once (at most every 200 ms each) instead
    // of after jemalloc's dirty decay: idle TLS connections would otherwise show in RSS at about
    // 3x plain ones right after a connection burst.
    shard::edge::set_memory_trim(trim::purge_thread_arena);

    let broker = shard::start(
        shard::RuntimeConfig {
            listen: config.listen.clone(),
            listeners: listeners.clone(),
            shards,
            pin: config.pin_shards,
            listen_backlog: config.listen_backlog,
            limits: shard_limits,
            rules: config.subscribe_rules(),
            cluster,
            auth,
        },
        bridge_link,
    )?;
    for addr in &broker.local_addrs {
        info!(addr = %addr, shards, "ringmq listening");
    }
    // Machine-readable lines for the `[[listener]]` entries (port 0 resolved), before the
    // `listening` line tests and scripts wait for.
    let plain = config.listen.len();
    for (listener, addr) in listeners.iter().zip(broker.local_addrs.iter().skip(plain)) {
        println!("listener {} {addr}", listener.kind.as_str());
    }
    // Machine-readable line for tests and scripts that start on port 0.
    if let Some(addr) = broker.local_addrs.first() {
        println!("listening {addr}");
    }

    if let Some(path) = &args.config {
        ban_reload::watch(path.clone())?;
    }
    let signal = wait_for_signal(&signals);
    info!(
        signal,
        "shutting down: closing connections, publishing wills"
    );
    broker.shutdown();
    broker.join().map_err(|e| {
        error!(error = %e, "a shard failed");
        anyhow::anyhow!(e)
    })?;
    if let Some(bridge) = bridge {
        // Answers every outstanding acknowledgement and flushes what Kafka will still take.
        bridge.shutdown();
    }
    info!("stopped");
    Ok(())
}

/// The `[cluster]` section with its secret loaded. A secret that cannot be used is reported and
/// the broker runs alone: local clients are served whatever the cluster's state.
fn cluster_setup(config: &Config) -> Option<shard::cluster::ClusterSetup> {
    let cluster = config.cluster.clone()?;
    match cluster_gossip::Secret::load(&cluster.secret_file) {
        Ok(secret) => Some(shard::cluster::ClusterSetup {
            config: cluster,
            secret,
        }),
        Err(err) => {
            error!(
                error = %err,
                secret_file = %cluster.secret_file.display(),
                "cluster disabled: the cluster secret cannot be used; serving local clients alone"
            );
            None
        }
    }
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .with_context(|| format!("log.level: {:?} is not a valid filter", config.log.level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if config.log.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

fn block_stop_signals() -> anyhow::Result<libc::sigset_t> {
    // SAFETY: plain libc signal-mask calls on a zeroed, initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            anyhow::bail!("cannot block SIGINT/SIGTERM/SIGHUP: error {rc}");
        }
        Ok(set)
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> &'static str {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` holds the blocked signals; sigwait writes the one received.
        let rc = unsafe { libc::sigwait(set, &mut sig) };
        if rc == 0 && sig == libc::SIGHUP {
            // Subsystems holding files (certificates, password and ACL files) reload on their
            // next housekeeping tick; each logs its own outcome.
            let generation = shard::reload::request();
            info!(
                generation,
                "SIGHUP: reloading certificates, password and ACL files"
            );
            continue;
        }
        if rc == 0 {
            return if sig == libc::SIGTERM {
                "SIGTERM"
            } else {
                "SIGINT"
            };
        }
    }
}
