//! The runtime's side of authentication and the ACL: [`AuthService`] (one per process) owns
//! ringmq-auth's [`AuthPool`] (the worker threads that hash passwords and verify signatures,
//! never a shard thread), the compiled [`Acl`] every shard shares read-only, and the reload of
//! the password file, JWT keys and ACL file on SIGHUP. Per shard, [`ShardAuth`] carries the
//! engine's `Output::Authenticate` to the pool ([`submit`]), bounds the shard's authentications
//! in flight ([`AUTH_IN_FLIGHT_PER_SHARD_MAX`]) and feeds the answers back
//! ([`reply_loop`] → `Engine::handle_auth_result`, then a kick of the shard loop, as the Kafka
//! bridge's `ack_loop` does).
//!
//! Reload: a thread of the service (not a shard: it reads files) polls
//! [`crate::reload::generation`]; on a new generation it loads the files again and swaps the
//! pool's authenticator and the shared ACL; a file that fails to load keeps the old set (logged,
//! counted as `ringmq_auth_reloads_total{result="failed"}`). Shards pick up a new ACL on their
//! next [`acl_watch_loop`] tick (one relaxed atomic read every `ACL_WATCH_TICK`).

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use auth::{Acl, AclConfig, AuthConfig, AuthPool, AuthReply, AuthRequest, Refusal};
use engine::{Authenticated, ConnId, Engine};
use metrics::{counter, gauge};
use tracing::{info, warn};

use crate::runtime::ShardCtx;

/// Authentications one shard may wait on at once. Beyond it a CONNECT is refused at once
/// (v5 CONNACK 0x97 Quota exceeded, 3.1.1 return code 3) and counted
/// (`ringmq_auth_refused_total{reason="quota_exceeded"}`): a storm of connects cannot queue
/// without bound behind the workers.
pub const AUTH_IN_FLIGHT_PER_SHARD_MAX: usize = 1024;
/// Answers waiting for one shard. Each in-flight request has exactly one answer, so the channel
/// never fills and a worker never blocks on it.
pub const AUTH_REPLY_CHANNEL_CAPACITY: usize = AUTH_IN_FLIGHT_PER_SHARD_MAX;
const _: () = assert!(AUTH_REPLY_CHANNEL_CAPACITY >= AUTH_IN_FLIGHT_PER_SHARD_MAX);
/// Requests waiting for a worker, all shards together. Full: CONNACK 0x89 Server busy / rc 3
/// (`reason="server_busy"`).
pub const AUTH_QUEUE_LEN_MAX: usize = 8192;
/// Successful verifications remembered (a reconnecting vehicle is not hashed again); FIFO.
pub const AUTH_CACHE_LEN_MAX: usize = 65_536;
/// Worker threads at most (each check is CPU-bound; they share the cores with the shards).
pub const AUTH_WORKERS_MAX: usize = 4;
/// How often the reload thread looks at the SIGHUP generation.
const RELOAD_POLL: Duration = Duration::from_millis(200);
/// How often each shard looks for a reloaded ACL.
const ACL_WATCH_TICK: Duration = Duration::from_millis(200);

/// Why authentication could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuthStartError {
    #[error(transparent)]
    Load(#[from] auth::LoadError),
    #[error("auth workers: {0}")]
    Pool(#[from] auth::PoolError),
    #[error("cannot start the auth reload thread: {0}")]
    Spawn(std::io::Error),
}

/// What the broker configured.
#[derive(Debug, Clone, Default)]
pub struct AuthSetup {
    pub auth: AuthConfig,
    pub acl: AclConfig,
    /// Relative file paths resolve against this (the config file's directory).
    pub base_dir: PathBuf,
    /// Some listener takes the username from client certificates: anonymous then defaults off.
    pub certificate_identity: bool,
}

impl AuthSetup {
    /// Whether CONNECTs wait for the authenticator: an auth source is configured, or anonymous
    /// clients are refused.
    pub fn authenticates(&self) -> bool {
        self.auth.has_source()
            || !self
                .auth
                .allow_anonymous_effective(self.certificate_identity)
    }

    /// Whether the engine checks a compiled ACL: an ACL file, or authentication (whose tokens may
    /// carry an ACL claim). Without either, `[acl] deny` stays the engine's plain subscribe rule.
    pub fn uses_acl(&self) -> bool {
        self.acl.file.is_some() || self.authenticates()
    }

    /// Whether there is anything for [`AuthService`] to do.
    pub fn is_active(&self) -> bool {
        self.uses_acl()
    }
}

/// Authentication and ACL for the whole process.
pub struct AuthService {
    setup: AuthSetup,
    pool: Option<AuthPool>,
    /// The ACL every shard uses; replaced whole on reload.
    acl: RwLock<Option<Arc<Acl>>>,
    /// Bumped each time `acl` is replaced; shards compare it with the one they hold.
    acl_generation: AtomicU64,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService")
            .field("authenticates", &self.pool.is_some())
            .field(
                "acl_generation",
                &self.acl_generation.load(Ordering::Relaxed),
            )
            .finish()
    }
}

impl AuthService {
    /// Loads the files, starts the workers and the reload thread.
    pub fn start(setup: AuthSetup) -> Result<Arc<AuthService>, AuthStartError> {
        let pool = if setup.authenticates() {
            let authenticator = setup
                .auth
                .load(&setup.base_dir, setup.certificate_identity)?;
            let workers = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .clamp(1, AUTH_WORKERS_MAX);
            Some(AuthPool::start(
                authenticator,
                workers,
                AUTH_QUEUE_LEN_MAX,
                AUTH_CACHE_LEN_MAX,
            )?)
        } else {
            None
        };
        let acl = if setup.uses_acl() {
            Some(Arc::new(setup.acl.load(&setup.base_dir)?))
        } else {
            None
        };
        let service = Arc::new(AuthService {
            setup,
            pool,
            acl: RwLock::new(acl),
            acl_generation: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&service);
        std::thread::Builder::new()
            .name("ringmq-auth-reload".into())
            .spawn(move || reload_thread(weak))
            .map_err(AuthStartError::Spawn)?;
        Ok(service)
    }

    /// Whether CONNECTs wait for an authentication decision.
    pub fn authenticates(&self) -> bool {
        self.pool.is_some()
    }

    /// The ACL shards use now, and its generation.
    pub fn acl(&self) -> (Option<Arc<Acl>>, u64) {
        let generation = self.acl_generation.load(Ordering::Acquire);
        let acl = self
            .acl
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        (acl, generation)
    }

    fn acl_generation(&self) -> u64 {
        self.acl_generation.load(Ordering::Acquire)
    }

    /// Loads every file again; whatever fails keeps its previous version.
    fn reload(&self) {
        let setup = &self.setup;
        if let Some(pool) = &self.pool {
            match setup.auth.load(&setup.base_dir, setup.certificate_identity) {
                Ok(authenticator) => {
                    pool.replace_authenticator(authenticator);
                    counter!("ringmq_auth_reloads_total", "file" => "auth", "result" => "ok")
                        .increment(1);
                    info!("auth: password file and token keys reloaded");
                }
                Err(err) => {
                    counter!("ringmq_auth_reloads_total", "file" => "auth", "result" => "failed")
                        .increment(1);
                    warn!(error = %err, "auth: reload failed; keeping the previous credentials");
                }
            }
        }
        if setup.uses_acl() {
            match setup.acl.load(&setup.base_dir) {
                Ok(acl) => {
                    *self.acl.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(acl));
                    self.acl_generation.fetch_add(1, Ordering::AcqRel);
                    counter!("ringmq_auth_reloads_total", "file" => "acl", "result" => "ok")
                        .increment(1);
                    info!("acl: reloaded");
                }
                Err(err) => {
                    counter!("ringmq_auth_reloads_total", "file" => "acl", "result" => "failed")
                        .increment(1);
                    warn!(error = %err, "acl: reload failed; keeping the previous acl");
                }
            }
        }
    }

    fn export_pool_stats(&self, last: &mut auth::PoolStats) {
        let Some(pool) = &self.pool else { return };
        let now = pool.stats();
        let delta = |a: u64, b: u64| a.saturating_sub(b);
        counter!("ringmq_auth_pool_submitted_total")
            .increment(delta(now.submitted, last.submitted));
        counter!("ringmq_auth_pool_queue_full_total")
            .increment(delta(now.queue_full, last.queue_full));
        counter!("ringmq_auth_cache_hits_total").increment(delta(now.cache_hits, last.cache_hits));
        counter!("ringmq_auth_cache_misses_total")
            .increment(delta(now.cache_misses, last.cache_misses));
        counter!("ringmq_auth_pool_panics_total").increment(delta(now.panics, last.panics));
        for (reason, count) in &now.failures {
            let before = last
                .failures
                .iter()
                .find(|(r, _)| r == reason)
                .map_or(0, |(_, c)| *c);
            counter!("ringmq_auth_failures_total", "reason" => reason.as_str())
                .increment(delta(*count, before));
        }
        *last = now;
    }
}

/// Polls the SIGHUP generation and reloads; ends when the service is dropped.
fn reload_thread(service: Weak<AuthService>) {
    let mut seen = crate::reload::generation();
    loop {
        std::thread::sleep(RELOAD_POLL);
        let Some(service) = service.upgrade() else {
            return;
        };
        let generation = crate::reload::generation();
        if generation != seen {
            seen = generation;
            service.reload();
        }
    }
}

/// One shard's end of the service.
pub struct ShardAuth {
    service: Arc<AuthService>,
    replies: flume::Sender<AuthReply>,
    /// Requests submitted and not answered yet; at most [`AUTH_IN_FLIGHT_PER_SHARD_MAX`].
    in_flight: Cell<usize>,
}

impl ShardAuth {
    /// The shard's end and the receiver [`reply_loop`] drains. Sets the engine up: whether it
    /// asks before accepting a CONNECT, and the current ACL.
    pub fn new(
        service: Arc<AuthService>,
        engine: &mut Engine,
    ) -> (ShardAuth, flume::Receiver<AuthReply>) {
        let (replies, receiver) = flume::bounded(AUTH_REPLY_CHANNEL_CAPACITY);
        engine.set_authentication(service.authenticates());
        engine.set_acl(service.acl().0);
        let shard = ShardAuth {
            service,
            replies,
            in_flight: Cell::new(0),
        };
        (shard, receiver)
    }
}

/// Hands one `Output::Authenticate` to the pool. Answers at once, without the pool, when the
/// shard is at its in-flight bound (0x97) or the pool's queue is full (0x89).
pub fn submit(
    shard: Option<&ShardAuth>,
    engine: &mut Engine,
    conn: ConnId,
    request: engine::AuthRequest,
    now: Instant,
) {
    let Some(shard) = shard else {
        // Nothing configured authentication, yet the engine asked: refuse rather than admit.
        engine.handle_auth_result(conn, Err(Refusal::ServerBusy), now);
        return;
    };
    let Some(pool) = &shard.service.pool else {
        engine.handle_auth_result(conn, Err(Refusal::ServerBusy), now);
        return;
    };
    if shard.in_flight.get() >= AUTH_IN_FLIGHT_PER_SHARD_MAX {
        engine.handle_auth_result(conn, Err(Refusal::QuotaExceeded), now);
        return;
    }
    let request = AuthRequest {
        connection: conn.to_u64(),
        credentials: request.credentials,
    };
    match pool.try_submit(request, &shard.replies) {
        Ok(()) => shard.in_flight.set(shard.in_flight.get() + 1),
        Err(_) => engine.handle_auth_result(conn, Err(Refusal::ServerBusy), now),
    }
}

/// The engine's form of an answer: the token's wall-clock expiry becomes a shard `Instant`.
fn to_engine(
    result: Result<auth::Identity, Refusal>,
    now: Instant,
) -> Result<Authenticated, Refusal> {
    let identity = result?;
    let close_at = identity.expires_at.map(|at| {
        let left = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        now + left
    });
    Ok(Authenticated { identity, close_at })
}

/// Feeds the pool's answers to the engine and kicks the shard loop.
pub async fn reply_loop(ctx: Rc<ShardCtx>, replies: flume::Receiver<AuthReply>) {
    while let Ok(reply) = replies.recv_async().await {
        if let Some(shard) = ctx.auth.as_ref() {
            let left = shard.in_flight.get();
            debug_assert!(left > 0, "an answer without a request");
            shard.in_flight.set(left.saturating_sub(1));
        }
        let now = Instant::now();
        ctx.engine.borrow_mut().handle_auth_result(
            ConnId::from_u64(reply.connection),
            to_engine(reply.result, now),
            now,
        );
        ctx.kick();
    }
}

/// Installs a reloaded ACL on this shard, and publishes the auth counters once a second.
pub async fn acl_watch_loop(ctx: Rc<ShardCtx>) {
    let Some(shard) = ctx.auth.as_ref() else {
        return;
    };
    let id = ctx.engine.borrow().id();
    let mut seen = shard.service.acl_generation();
    let mut exporter = AuthExporter::new(id);
    let mut pool_last = auth::PoolStats::default();
    let mut last_export = Instant::now();
    loop {
        glommio::timer::sleep(ACL_WATCH_TICK).await;
        let generation = shard.service.acl_generation();
        if generation != seen {
            let (acl, generation) = shard.service.acl();
            seen = generation;
            ctx.engine.borrow_mut().set_acl(acl);
            info!(shard = id, generation, "acl: new rules in use");
        }
        if last_export.elapsed() >= Duration::from_secs(1) {
            last_export = Instant::now();
            let counters = ctx.engine.borrow().state.counters.auth.clone();
            exporter.publish(&counters, shard.in_flight.get());
            if id == 0 {
                shard.service.export_pool_stats(&mut pool_last);
            }
        }
    }
}

/// The shard's `ringmq_auth_*` / `ringmq_acl_*` metrics.
struct AuthExporter {
    shard: String,
    last: engine::state::AuthCounters,
}

impl AuthExporter {
    fn new(shard: u16) -> AuthExporter {
        AuthExporter {
            shard: shard.to_string(),
            last: Default::default(),
        }
    }

    fn publish(&mut self, now: &engine::state::AuthCounters, in_flight: usize) {
        let s = self.shard.clone();
        let last = &self.last;
        counter!("ringmq_auth_requests_total", "shard" => s.clone())
            .increment(now.requested - last.requested);
        counter!("ringmq_auth_accepted_total", "shard" => s.clone())
            .increment(now.accepted - last.accepted);
        let refused = [
            (
                "bad_credentials",
                now.refused_bad_credentials,
                last.refused_bad_credentials,
            ),
            (
                "not_authorized",
                now.refused_not_authorized,
                last.refused_not_authorized,
            ),
            ("banned", now.refused_banned, last.refused_banned),
            ("server_busy", now.refused_busy, last.refused_busy),
            ("quota_exceeded", now.refused_quota, last.refused_quota),
        ];
        for (reason, a, b) in refused {
            counter!("ringmq_auth_refused_total", "shard" => s.clone(), "reason" => reason)
                .increment(a - b);
        }
        counter!("ringmq_auth_expired_total", "shard" => s.clone())
            .increment(now.expired - last.expired);
        let denied = [
            ("subscribe", now.subscribe_denied, last.subscribe_denied),
            ("publish", now.publish_denied, last.publish_denied),
            ("deliver", now.deliver_denied, last.deliver_denied),
            ("will", now.will_denied, last.will_denied),
        ];
        for (operation, a, b) in denied {
            counter!("ringmq_acl_denied_total", "shard" => s.clone(), "operation" => operation)
                .increment(a - b);
        }
        gauge!("ringmq_auth_in_flight", "shard" => s).set(in_flight as f64);
        self.last = now.clone();
    }
}
