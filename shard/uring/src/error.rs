//! Typed errors of the ring driver.

use bytes::Bytes;

/// Why a [`crate::Ring`] could not be created or a resource could not be added.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The configuration is inconsistent; fix the named field.
    #[error("invalid ring config: {field} = {value}: {reason}")]
    InvalidConfig {
        field: &'static str,
        value: u64,
        reason: &'static str,
    },
    /// io_uring or a feature we need (provided buffer rings, multishot) is missing.
    #[error("kernel too old or io_uring disabled: {what} failed ({source}); need linux 6.0+ with io_uring enabled (sysctl kernel.io_uring_disabled=0)")]
    KernelTooOld {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Locked memory for the rings ran out.
    #[error("out of locked memory for {what} ({source}); raise RLIMIT_MEMLOCK (ulimit -l) or lower RingConfig entries/buffer_count")]
    Memlock {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The connection table is full.
    #[error(
        "connection limit reached: {limit} connections on this ring; raise RingConfig::conns_max"
    )]
    ConnLimit { limit: u32 },
    /// The listener table is full.
    #[error("listener limit reached: {limit} listeners on this ring")]
    ListenerLimit { limit: usize },
    /// Any other system call failure, with the call named.
    #[error("{what} failed: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Why [`crate::Ring::send`] refused bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendErrorKind {
    /// The key is stale or was never valid.
    UnknownConn,
    /// The connection is closing, detaching or dead; nothing more is sent.
    NotWritable,
    /// The connection's queue would exceed the bound; apply backpressure upstream.
    QueueFull { limit: usize, queued: usize },
}

/// A refused send hands the bytes back.
#[derive(Debug, thiserror::Error)]
#[error("send refused: {kind:?}")]
pub struct SendError {
    pub kind: SendErrorKind,
    pub data: Bytes,
}
