//! A bounded pool of worker threads for the expensive checks (password hashing, signatures).
//!
//! Shard threads call [`AuthPool::try_submit`], which never blocks: when the queue is full the
//! request comes back and the caller answers CONNACK "server busy" (v5 0x89, 3.1.1 rc 3). A
//! worker sends the [`AuthReply`] on the channel the caller passed (one per shard). That channel
//! should be unbounded or hold at least `queue_len_max` replies: a worker blocks on a full one,
//! which throttles the pool rather than losing a reply.
//!
//! Successful verifications are cached, keyed by HMAC-SHA256 under a random per-pool key over
//! (client id, username, password): the cache never holds a password or an unkeyed hash of one.
//! Replacing the authenticator (reload) empties the cache.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::SystemTime;

use ahash::AHashMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::authenticator::Authenticator;
use crate::decision::{Credentials, FailureReason, Identity, Refusal};

/// Most worker threads: the machine has few cores and each check is CPU-bound.
pub const WORKERS_MAX: usize = 64;
/// Longest request queue.
pub const QUEUE_LEN_MAX: usize = 1 << 20;
/// Most cached verifications.
pub const CACHE_LEN_MAX: usize = 1 << 20;

/// Why the pool could not start.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("workers = {requested}: must be 1..={max}")]
    Workers { requested: usize, max: usize },
    #[error("queue_len_max = {requested}: must be 1..={max}")]
    QueueLen { requested: usize, max: usize },
    #[error("cache_len_max = {requested}: must be at most {max}")]
    CacheLen { requested: usize, max: usize },
    #[error("cannot seed the cache key from the OS: {0}")]
    Random(getrandom::Error),
    #[error("cannot spawn auth worker: {0}")]
    Spawn(std::io::Error),
}

/// One CONNECT to decide.
#[derive(Debug, Clone)]
pub struct AuthRequest {
    /// The caller's handle for the connection (e.g. slot and generation); echoed in the reply.
    pub connection: u64,
    pub credentials: Credentials,
}

/// The decision for one [`AuthRequest`].
#[derive(Debug, Clone)]
pub struct AuthReply {
    pub connection: u64,
    pub result: Result<Identity, Refusal>,
}

/// A point-in-time copy of the pool's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Requests accepted into the queue.
    pub submitted: u64,
    /// Requests handed back because the queue was full.
    pub queue_full: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Requests accepted (identity returned).
    pub accepted: u64,
    /// Refusals by reason, in [`FailureReason::ALL`] order.
    pub failures: Vec<(FailureReason, u64)>,
    /// Checks that panicked (counted, answered as bad credentials, the worker lives on).
    pub panics: u64,
}

#[derive(Default)]
struct Counters {
    submitted: AtomicU64,
    queue_full: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    accepted: AtomicU64,
    failures: [AtomicU64; FailureReason::ALL.len()],
    panics: AtomicU64,
}

type CacheKey = [u8; 32];

/// Recent successes; FIFO eviction at `len_max`.
struct Cache {
    len_max: usize,
    /// Bumped by each authenticator swap; a result computed under an older one is not stored.
    generation: u64,
    entries: AHashMap<CacheKey, Identity>,
    /// Insertion order; holds exactly the keys of `entries`.
    order: VecDeque<CacheKey>,
}

impl Cache {
    fn get(&self, key: &CacheKey, now: SystemTime) -> Option<Identity> {
        let identity = self.entries.get(key)?;
        // `valid_until` is set for every token with `exp`; `expires_at` only when the broker
        // closes at expiry. Either passed: verify again (and refuse the expired token).
        let ended = [identity.valid_until, identity.expires_at]
            .into_iter()
            .flatten()
            .any(|at| at <= now);
        if ended {
            None
        } else {
            Some(identity.clone())
        }
    }

    fn insert(&mut self, generation: u64, key: CacheKey, identity: Identity) {
        if self.len_max == 0 || generation != self.generation {
            return;
        }
        if self.entries.insert(key, identity).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > self.len_max {
            if let Some(old) = self.order.pop_front() {
                self.entries.remove(&old);
            }
        }
        debug_assert_eq!(self.order.len(), self.entries.len());
    }

    fn clear(&mut self) {
        self.generation += 1;
        self.entries.clear();
        self.order.clear();
    }
}

struct Shared {
    authenticator: RwLock<Arc<Authenticator>>,
    cache: Mutex<Cache>,
    cache_key: [u8; 32],
    counters: Counters,
}

struct Job {
    request: AuthRequest,
    reply_to: flume::Sender<AuthReply>,
}

/// The worker pool. Dropping it closes the queue and joins the workers after they drain it.
pub struct AuthPool {
    sender: Option<flume::Sender<Job>>,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl AuthPool {
    /// Starts `workers` threads behind a queue of `queue_len_max` requests, caching up to
    /// `cache_len_max` successes (0 disables the cache).
    pub fn start(
        authenticator: Authenticator,
        workers: usize,
        queue_len_max: usize,
        cache_len_max: usize,
    ) -> Result<AuthPool, PoolError> {
        if workers == 0 || workers > WORKERS_MAX {
            return Err(PoolError::Workers {
                requested: workers,
                max: WORKERS_MAX,
            });
        }
        if queue_len_max == 0 || queue_len_max > QUEUE_LEN_MAX {
            return Err(PoolError::QueueLen {
                requested: queue_len_max,
                max: QUEUE_LEN_MAX,
            });
        }
        if cache_len_max > CACHE_LEN_MAX {
            return Err(PoolError::CacheLen {
                requested: cache_len_max,
                max: CACHE_LEN_MAX,
            });
        }
        let mut cache_key = [0u8; 32];
        getrandom::getrandom(&mut cache_key).map_err(PoolError::Random)?;
        let shared = Arc::new(Shared {
            authenticator: RwLock::new(Arc::new(authenticator)),
            cache: Mutex::new(Cache {
                len_max: cache_len_max,
                generation: 0,
                entries: AHashMap::new(),
                order: VecDeque::new(),
            }),
            cache_key,
            counters: Counters::default(),
        });
        let (sender, receiver) = flume::bounded::<Job>(queue_len_max);
        let mut handles = Vec::with_capacity(workers);
        for index in 0..workers {
            let receiver = receiver.clone();
            let shared = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("ringmq-auth-{index}"))
                .spawn(move || worker(&shared, &receiver))
                .map_err(PoolError::Spawn)?;
            handles.push(handle);
        }
        Ok(AuthPool {
            sender: Some(sender),
            shared,
            workers: handles,
        })
    }

    /// Queues a request without blocking; hands it back when the queue is full.
    pub fn try_submit(
        &self,
        request: AuthRequest,
        reply_to: &flume::Sender<AuthReply>,
    ) -> Result<(), AuthRequest> {
        let Some(sender) = &self.sender else {
            return Err(request);
        };
        let job = Job {
            request,
            reply_to: reply_to.clone(),
        };
        match sender.try_send(job) {
            Ok(()) => {
                self.shared
                    .counters
                    .submitted
                    .fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(flume::TrySendError::Full(job)) | Err(flume::TrySendError::Disconnected(job)) => {
                self.shared
                    .counters
                    .queue_full
                    .fetch_add(1, Ordering::Relaxed);
                Err(job.request)
            }
        }
    }

    /// Swaps in a reloaded authenticator and empties the cache; queued requests use the new one.
    pub fn replace_authenticator(&self, authenticator: Authenticator) {
        let mut cache = self
            .shared
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *self
            .shared
            .authenticator
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(authenticator);
        cache.clear();
    }

    /// The current authenticator, for the cheap decisions ([`Authenticator::is_expensive`] false)
    /// a shard may take inline without queueing.
    pub fn authenticator(&self) -> Arc<Authenticator> {
        Arc::clone(
            &self
                .shared
                .authenticator
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    pub fn stats(&self) -> PoolStats {
        let counters = &self.shared.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        PoolStats {
            submitted: load(&counters.submitted),
            queue_full: load(&counters.queue_full),
            cache_hits: load(&counters.cache_hits),
            cache_misses: load(&counters.cache_misses),
            accepted: load(&counters.accepted),
            failures: FailureReason::ALL
                .iter()
                .map(|reason| (*reason, load(&counters.failures[reason.index()])))
                .collect(),
            panics: load(&counters.panics),
        }
    }
}

impl Drop for AuthPool {
    fn drop(&mut self) {
        self.sender = None;
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}

fn worker(shared: &Shared, receiver: &flume::Receiver<Job>) {
    while let Ok(job) = receiver.recv() {
        let result = decide(shared, &job.request.credentials);
        let counters = &shared.counters;
        match &result {
            Ok(_) => counters.accepted.fetch_add(1, Ordering::Relaxed),
            Err(refusal) => match refusal.reason() {
                Some(reason) => counters.failures[reason.index()].fetch_add(1, Ordering::Relaxed),
                None => 0,
            },
        };
        if let Err(refusal) = &result {
            tracing::debug!(
                client_id = %job.request.credentials.client_id,
                reason = %refusal,
                "authentication refused"
            );
        }
        // A shard that went away no longer needs the answer.
        let _ = job.reply_to.send(AuthReply {
            connection: job.request.connection,
            result,
        });
    }
}

fn decide(shared: &Shared, credentials: &Credentials) -> Result<Identity, Refusal> {
    let now = SystemTime::now();
    let (authenticator, generation) = {
        let cache = shared.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let authenticator = Arc::clone(
            &shared
                .authenticator
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        );
        (authenticator, cache.generation)
    };
    let key = if authenticator.is_expensive(credentials) {
        cache_key(&shared.cache_key, credentials)
    } else {
        None
    };
    if let Some(key) = &key {
        let cache = shared.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.generation == generation {
            if let Some(identity) = cache.get(key, now) {
                shared.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(identity);
            }
        }
        shared.counters.cache_misses.fetch_add(1, Ordering::Relaxed);
    }
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        authenticator.authenticate(credentials, now)
    }));
    let result = match outcome {
        Ok(result) => result,
        Err(_) => {
            shared.counters.panics.fetch_add(1, Ordering::Relaxed);
            tracing::error!(client_id = %credentials.client_id, "authentication check panicked");
            Err(Refusal::BadCredentials(FailureReason::TokenMalformed))
        }
    };
    if let (Some(key), Ok(identity)) = (key, &result) {
        let mut cache = shared.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.insert(generation, key, identity.clone());
    }
    result
}

/// HMAC-SHA256 over length-prefixed fields, so ("ab", "c") and ("a", "bc") differ.
/// `None` only if HMAC refused the key, which it never does for 32 bytes; then nothing caches.
fn cache_key(secret: &[u8; 32], credentials: &Credentials) -> Option<CacheKey> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).ok()?;
    let mut field = |bytes: Option<&[u8]>| match bytes {
        Some(bytes) => {
            mac.update(&[1]);
            mac.update(&(bytes.len() as u64).to_be_bytes());
            mac.update(bytes);
        }
        None => mac.update(&[0]),
    };
    field(Some(credentials.client_id.as_bytes()));
    field(credentials.username.as_deref().map(str::as_bytes));
    field(credentials.password.as_deref());
    Some(mac.finalize().into_bytes().into())
}
