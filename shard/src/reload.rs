//! Reload requests. The broker's main thread turns SIGHUP into [`request`]; subsystems that hold
//! files (TLS certificates, password and ACL files) compare [`generation`] from their own
//! housekeeping loops and reload when it moved (and may also watch their files' modification
//! times). A reload that fails keeps the previous set and is logged by the subsystem. Not on any
//! hot path: one relaxed read per housekeeping tick.

use std::sync::atomic::{AtomicU64, Ordering};

static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Asks every subsystem to reload its files; returns the new generation.
pub fn request() -> u64 {
    GENERATION.fetch_add(1, Ordering::AcqRel) + 1
}

/// How many reloads were requested since start.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}
