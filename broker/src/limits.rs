//! Host limits that cap how many connections this broker can hold.
//!
//! Read once at start-up (rlimits via `libc`, kernel settings from `/proc/sys`),
//! turned into findings by the pure function [`assess`], and logged by
//! [`log_startup_limits`] so an operator sees *before* a benchmark which limit
//! will stop it and at what connection count. `tuning/README.md` explains the
//! fixes.

use std::io;
use std::path::Path;

/// The broker is built for this many concurrent connections per host; an
/// open-files ceiling below it is reported.
pub const TARGET_CONNECTIONS: u64 = 1_000_000;

/// File descriptors each shard keeps for things other than client sockets:
/// listeners, the io_uring instances, the metrics endpoint, log files.
pub const FD_RESERVE_PER_SHARD: u64 = 64;

/// glommio registers each shard's io memory with its main, poll and latency
/// rings; the kernel charges every registration against RLIMIT_MEMLOCK (per
/// user, shared by all shards). Measured: 2 MiB io memory pins 6 MiB.
pub const IO_MEMORY_REGISTRATIONS_PER_SHARD: u64 = 3;

/// glommio refuses to create a reactor (the shard fails to start) when the
/// memlock limit is below this.
pub const GLOMMIO_MEMLOCK_MIN_BYTES: u64 = 512 * 1024;

/// Used only if `getrlimit(RLIMIT_NOFILE)` fails, which it cannot for a valid
/// resource; the kernel's default soft limit.
const OPEN_FILES_FALLBACK: u64 = 1024;

/// What the host's limits allow, read at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLimits {
    pub open_files_soft: u64,
    pub open_files_hard: u64,
    /// `None` = unlimited.
    pub memlock_bytes: Option<u64>,
    pub somaxconn: Option<u64>,
    pub tcp_max_syn_backlog: Option<u64>,
    pub file_max: Option<u64>,
    pub local_port_range: Option<(u16, u16)>,
}

impl HostLimits {
    /// Reads rlimits and `/proc/sys`; a missing or unparsable file gives `None`.
    pub fn read() -> HostLimits {
        let (open_files_soft, open_files_hard) = rlimit_nofile()
            .map(|l| (to_u64(l.rlim_cur), to_u64(l.rlim_max)))
            .unwrap_or((OPEN_FILES_FALLBACK, OPEN_FILES_FALLBACK));
        let memlock_bytes = match rlimit_memlock() {
            Ok(l) if l.rlim_cur == libc::RLIM_INFINITY => None,
            Ok(l) => Some(to_u64(l.rlim_cur)),
            // Unknown is reported as unlimited: a finding must not be invented.
            Err(_) => None,
        };
        HostLimits {
            open_files_soft,
            open_files_hard,
            memlock_bytes,
            somaxconn: read_proc_u64("/proc/sys/net/core/somaxconn"),
            tcp_max_syn_backlog: read_proc_u64("/proc/sys/net/ipv4/tcp_max_syn_backlog"),
            file_max: read_proc_u64("/proc/sys/fs/file-max"),
            local_port_range: read_port_range("/proc/sys/net/ipv4/ip_local_port_range"),
        }
    }
}

#[allow(clippy::useless_conversion)] // rlim_t is u64 on Linux but not on every target
fn to_u64(value: libc::rlim_t) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

fn rlimit_nofile() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

fn rlimit_memlock() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

fn read_proc_u64(path: impl AsRef<Path>) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_port_range(path: impl AsRef<Path>) -> Option<(u16, u16)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u16>().ok());
    match (fields.next(), fields.next()) {
        (Some(Some(low)), Some(Some(high))) => Some((low, high)),
        _ => None,
    }
}

/// Raises the soft open-files limit to the hard limit (what every server does
/// at start); returns the new soft limit.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let mut limit = rlimit_nofile()?;
    if limit.rlim_cur >= limit.rlim_max {
        return Ok(to_u64(limit.rlim_cur));
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: `limit` is a valid rlimit; soft <= hard, so only the soft limit moves.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(to_u64(limit.rlim_cur))
}

/// One finding per limit that caps the broker below what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitFinding {
    pub limit: &'static str,
    pub value: u64,
    /// What the limit caps, e.g. "about 19,872 concurrent connections".
    pub caps: String,
    pub fix: &'static str,
}

/// Connections the broker can hold before `accept` fails with EMFILE/ENFILE:
/// the tighter of the process soft limit and the system-wide file-max, minus
/// the per-shard reserve.
pub fn connection_ceiling(limits: &HostLimits, shards: usize) -> u64 {
    let open_files = limits
        .file_max
        .map_or(limits.open_files_soft, |m| m.min(limits.open_files_soft));
    open_files.saturating_sub(fd_reserve(shards))
}

fn fd_reserve(shards: usize) -> u64 {
    FD_RESERVE_PER_SHARD.saturating_mul(u64::try_from(shards.max(1)).unwrap_or(u64::MAX))
}

/// `shards`: number of shards; `io_memory_per_shard_bytes`: glommio io memory
/// each shard locks; `listen_backlog`: backlog the broker asks for. Pure
/// function of its inputs.
pub fn assess(
    limits: &HostLimits,
    shards: usize,
    io_memory_per_shard_bytes: usize,
    listen_backlog: u32,
) -> Vec<LimitFinding> {
    let mut findings = Vec::new();
    let reserve = fd_reserve(shards);
    let shards_u64 = u64::try_from(shards.max(1)).unwrap_or(u64::MAX);

    if limits.open_files_soft.saturating_sub(reserve) < TARGET_CONNECTIONS {
        findings.push(LimitFinding {
            limit: "open_files_soft",
            value: limits.open_files_soft,
            caps: format!(
                "about {} concurrent connections ({} reserved for {} shard(s))",
                group_thousands(limits.open_files_soft.saturating_sub(reserve)),
                reserve,
                shards_u64
            ),
            fix: if limits.open_files_soft < limits.open_files_hard {
                "raise the soft limit to the hard limit at start (raise_open_files_limit)"
            } else {
                "set LimitNOFILE=2097152 in ringmq.service (needs fs.nr_open >= it; tuning/tune-broker-host.sh)"
            },
        });
    }

    if let Some(file_max) = limits.file_max {
        if file_max.saturating_sub(reserve) < TARGET_CONNECTIONS {
            findings.push(LimitFinding {
                limit: "fs.file-max",
                value: file_max,
                caps: format!(
                    "fewer than {} connections, shared with every other process on the host",
                    group_thousands(file_max.saturating_sub(reserve))
                ),
                fix: "sysctl -w fs.file-max=2359296 (tuning/tune-broker-host.sh)",
            });
        }
    }

    if let Some(memlock) = limits.memlock_bytes {
        let io_memory = u64::try_from(io_memory_per_shard_bytes).unwrap_or(u64::MAX);
        let pinned_per_shard = io_memory.saturating_mul(IO_MEMORY_REGISTRATIONS_PER_SHARD);
        let needed = pinned_per_shard.saturating_mul(shards_u64);
        if memlock < GLOMMIO_MEMLOCK_MIN_BYTES {
            findings.push(LimitFinding {
                limit: "memlock",
                value: memlock,
                caps: format!(
                    "no shard can start: glommio refuses a memlock limit below {} bytes; set it to at least {} bytes",
                    group_thousands(GLOMMIO_MEMLOCK_MIN_BYTES),
                    group_thousands(needed.max(GLOMMIO_MEMLOCK_MIN_BYTES))
                ),
                fix: "set LimitMEMLOCK=infinity in ringmq.service (or ulimit -l unlimited)",
            });
        } else if memlock < needed {
            let shards_fitting = memlock.checked_div(pinned_per_shard).unwrap_or(shards_u64);
            findings.push(LimitFinding {
                limit: "memlock",
                value: memlock,
                caps: format!(
                    "io memory of at most {} of {} shard(s): {} bytes needed ({} shards x {} rings x {} bytes); \
                     the other shards cannot lock their io memory and run with unregistered buffers \
                     (glommio warns; not enforced for root / CAP_IPC_LOCK); set memlock to at least {} bytes",
                    shards_fitting,
                    shards_u64,
                    group_thousands(needed),
                    shards_u64,
                    IO_MEMORY_REGISTRATIONS_PER_SHARD,
                    group_thousands(io_memory),
                    group_thousands(needed)
                ),
                fix: "set LimitMEMLOCK=infinity in ringmq.service (or lower io memory per shard)",
            });
        }
    }

    let backlog = u64::from(listen_backlog);
    if let Some(somaxconn) = limits.somaxconn {
        if somaxconn < backlog {
            findings.push(LimitFinding {
                limit: "net.core.somaxconn",
                value: somaxconn,
                caps: format!(
                    "the listen backlog: {} requested, silently truncated to {}; a connection storm beyond that gets SYN drops and client retries",
                    group_thousands(backlog),
                    group_thousands(somaxconn)
                ),
                fix: "sysctl -w net.core.somaxconn=65535 (tuning/tune-broker-host.sh)",
            });
        }
    }

    if let Some(syn_backlog) = limits.tcp_max_syn_backlog {
        if syn_backlog < backlog {
            findings.push(LimitFinding {
                limit: "net.ipv4.tcp_max_syn_backlog",
                value: syn_backlog,
                caps: format!(
                    "half-open handshakes per listener at {}; beyond that SYNs fall back to cookies or are dropped",
                    group_thousands(syn_backlog)
                ),
                fix: "sysctl -w net.ipv4.tcp_max_syn_backlog=131072 (tuning/tune-broker-host.sh)",
            });
        }
    }

    // local_port_range bounds outgoing connections only; a broker accepts, so
    // it is not assessed here (it matters on the loadgen host).
    findings
}

/// Logs one line per finding and one info line with the connection ceiling;
/// returns the connection ceiling.
pub fn log_startup_limits(
    limits: &HostLimits,
    shards: usize,
    io_memory_per_shard_bytes: usize,
    listen_backlog: u32,
) -> u64 {
    for finding in assess(limits, shards, io_memory_per_shard_bytes, listen_backlog) {
        tracing::warn!(
            limit = finding.limit,
            value = finding.value,
            caps = %finding.caps,
            fix = finding.fix,
            "host limit caps the broker"
        );
    }
    let ceiling = connection_ceiling(limits, shards);
    tracing::info!(
        connection_ceiling = ceiling,
        open_files_soft = limits.open_files_soft,
        open_files_hard = limits.open_files_hard,
        file_max = ?limits.file_max,
        memlock_bytes = ?limits.memlock_bytes,
        somaxconn = ?limits.somaxconn,
        tcp_max_syn_backlog = ?limits.tcp_max_syn_backlog,
        local_port_range = ?limits.local_port_range,
        fd_reserve = fd_reserve(shards),
        "connection ceiling from host limits"
    );
    ceiling
}

/// 19872 -> "19,872".
fn group_thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    /// A host tuned per tuning/README.md: nothing to report.
    fn tuned() -> HostLimits {
        HostLimits {
            open_files_soft: 2_097_152,
            open_files_hard: 2_097_152,
            memlock_bytes: None,
            somaxconn: Some(65_535),
            tcp_max_syn_backlog: Some(131_072),
            file_max: Some(2_466_183),
            local_port_range: Some((32_768, 60_999)),
        }
    }

    fn limits_of(findings: &[LimitFinding]) -> Vec<&'static str> {
        findings.iter().map(|f| f.limit).collect()
    }

    #[test]
    fn tuned_host_has_no_findings() {
        assert!(assess(&tuned(), 8, 2 * MIB, 4096).is_empty());
    }

    #[test]
    fn open_files_cap_reports_connections_after_reserve() {
        let limits = HostLimits {
            open_files_soft: 20_000,
            open_files_hard: 20_000,
            ..tuned()
        };
        let findings = assess(&limits, 2, 2 * MIB, 1024);
        assert_eq!(limits_of(&findings), ["open_files_soft"]);
        assert_eq!(findings[0].value, 20_000);
        assert!(
            findings[0]
                .caps
                .starts_with("about 19,872 concurrent connections"),
            "{}",
            findings[0].caps
        );
        assert!(findings[0].fix.contains("LimitNOFILE"));
    }

    #[test]
    fn soft_below_hard_suggests_raising_soft() {
        let limits = HostLimits {
            open_files_soft: 1024,
            open_files_hard: 524_288,
            ..tuned()
        };
        let findings = assess(&limits, 1, 2 * MIB, 1024);
        assert_eq!(limits_of(&findings), ["open_files_soft"]);
        assert!(findings[0].fix.contains("hard limit"));
    }

    #[test]
    fn reserve_larger_than_limit_caps_at_zero() {
        let limits = HostLimits {
            open_files_soft: 100,
            open_files_hard: 100,
            ..tuned()
        };
        let findings = assess(&limits, 4, 2 * MIB, 1024);
        assert!(findings[0].caps.starts_with("about 0 concurrent"));
        assert_eq!(connection_ceiling(&limits, 4), 0);
    }

    #[test]
    fn file_max_below_target_is_reported() {
        let limits = HostLimits {
            file_max: Some(500_000),
            ..tuned()
        };
        let findings = assess(&limits, 2, 2 * MIB, 1024);
        assert_eq!(limits_of(&findings), ["fs.file-max"]);
        assert_eq!(connection_ceiling(&limits, 2), 500_000 - 128);
    }

    #[test]
    fn memlock_unlimited_or_sufficient_is_fine() {
        let exact = HostLimits {
            memlock_bytes: Some(4 * 3 * 2 * MIB as u64),
            ..tuned()
        };
        assert!(assess(&exact, 4, 2 * MIB, 1024).is_empty());
        assert!(assess(&tuned(), 64, 64 * MIB, 1024).is_empty());
    }

    #[test]
    fn memlock_below_shards_times_io_memory_names_the_value_to_set() {
        let limits = HostLimits {
            memlock_bytes: Some(8 * MIB as u64),
            ..tuned()
        };
        let findings = assess(&limits, 2, 2 * MIB, 1024);
        assert_eq!(limits_of(&findings), ["memlock"]);
        let caps = &findings[0].caps;
        assert!(caps.contains("at most 1 of 2 shard(s)"), "{caps}");
        assert!(caps.contains("at least 12,582,912 bytes"), "{caps}");
    }

    #[test]
    fn memlock_below_glommio_minimum_fails_every_shard() {
        let limits = HostLimits {
            memlock_bytes: Some(64 * 1024),
            ..tuned()
        };
        let findings = assess(&limits, 2, 2 * MIB, 1024);
        assert_eq!(limits_of(&findings), ["memlock"]);
        assert!(findings[0].caps.starts_with("no shard can start"));
    }

    #[test]
    fn zero_io_memory_does_not_divide_by_zero() {
        let limits = HostLimits {
            memlock_bytes: Some(GLOMMIO_MEMLOCK_MIN_BYTES),
            ..tuned()
        };
        assert!(assess(&limits, 2, 0, 1024).is_empty());
    }

    #[test]
    fn backlog_above_somaxconn_and_syn_backlog_is_reported() {
        let limits = HostLimits {
            somaxconn: Some(4096),
            tcp_max_syn_backlog: Some(2048),
            ..tuned()
        };
        let findings = assess(&limits, 2, 2 * MIB, 65_535);
        assert_eq!(
            limits_of(&findings),
            ["net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog"]
        );
        assert!(findings[0].caps.contains("truncated to 4,096"));
        // A backlog the kernel allows is not a finding.
        assert!(assess(&limits, 2, 2 * MIB, 2048).is_empty());
    }

    #[test]
    fn missing_proc_values_are_not_findings() {
        let limits = HostLimits {
            somaxconn: None,
            tcp_max_syn_backlog: None,
            file_max: None,
            local_port_range: None,
            ..tuned()
        };
        assert!(assess(&limits, 2, 2 * MIB, 65_535).is_empty());
        assert_eq!(connection_ceiling(&limits, 2), 2_097_152 - 128);
    }

    #[test]
    fn local_port_range_is_never_a_broker_finding() {
        let limits = HostLimits {
            local_port_range: Some((60_000, 60_010)),
            ..tuned()
        };
        assert!(assess(&limits, 2, 2 * MIB, 1024).is_empty());
    }

    #[test]
    fn findings_are_ordered_and_complete_on_an_untuned_host() {
        let limits = HostLimits {
            open_files_soft: 20_000,
            open_files_hard: 20_000,
            memlock_bytes: Some(8 * MIB as u64),
            somaxconn: Some(4096),
            tcp_max_syn_backlog: Some(2048),
            file_max: Some(100_000),
            local_port_range: Some((32_768, 60_999)),
        };
        let findings = assess(&limits, 2, 2 * MIB, 8192);
        assert_eq!(
            limits_of(&findings),
            [
                "open_files_soft",
                "fs.file-max",
                "memlock",
                "net.core.somaxconn",
                "net.ipv4.tcp_max_syn_backlog"
            ]
        );
        assert_eq!(connection_ceiling(&limits, 2), 19_872);
    }

    #[test]
    fn group_thousands_formats() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1000), "1,000");
        assert_eq!(group_thousands(19_872), "19,872");
        assert_eq!(group_thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn read_reports_this_host() {
        let limits = HostLimits::read();
        assert!(limits.open_files_soft <= limits.open_files_hard);
        assert!(limits.open_files_soft > 0);
    }

    #[test]
    fn raise_open_files_reaches_hard_limit() {
        let raised = raise_open_files_limit();
        let after = HostLimits::read();
        assert_eq!(raised.ok(), Some(after.open_files_soft));
        assert_eq!(after.open_files_soft, after.open_files_hard);
    }

    #[test]
    fn proc_parsers_handle_missing_and_malformed_files() {
        let dir = std::env::temp_dir().join(format!("ringmq-limits-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let range = dir.join("range");
        std::fs::write(&range, "1024\t65535\n").expect("write");
        assert_eq!(read_port_range(&range), Some((1024, 65_535)));
        std::fs::write(&range, "1024\n").expect("write");
        assert_eq!(read_port_range(&range), None);
        let number = dir.join("number");
        std::fs::write(&number, "4096\n").expect("write");
        assert_eq!(read_proc_u64(&number), Some(4096));
        std::fs::write(&number, "lots\n").expect("write");
        assert_eq!(read_proc_u64(&number), None);
        assert_eq!(read_proc_u64(dir.join("absent")), None);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
