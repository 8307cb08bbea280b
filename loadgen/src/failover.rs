//! Several brokers and reconnecting: which broker a client dials (round robin or random per
//! client, the next one after a loss), and how long it waits before trying again (exponential
//! backoff with jitter). Pure functions of the client index and the attempt number, so a run
//! is reproducible and the choices are unit-testable without sockets.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Doublings of the backoff before it is pinned at its maximum; keeps the shift in range.
const BACKOFF_DOUBLINGS_MAX: u32 = 20;
/// Broker addresses one run may name; a list longer than a cluster is a typo.
pub const BROKERS_MAX: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("broker address {text:?}: {problem} (expected host, host:port or [v6]:port)")]
    Malformed { text: String, problem: &'static str },
    #[error("{count} broker addresses given; at most {limit}")]
    TooMany { count: usize, limit: usize },
}

/// A broker address as written by the operator, port filled in from the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerEndpoint {
    pub host: String,
    pub port: u16,
}

impl BrokerEndpoint {
    /// Parses `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address.
    pub fn parse(text: &str, default_port: u16) -> Result<Self, EndpointError> {
        let text = text.trim();
        let malformed = |problem| EndpointError::Malformed {
            text: text.to_string(),
            problem,
        };
        if text.is_empty() {
            return Err(malformed("empty"));
        }
        let parse_port = |port: &str| port.parse::<u16>().map_err(|_| malformed("bad port"));
        if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| malformed("no ']'"))?;
            let port = match after {
                "" => default_port,
                _ => parse_port(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| malformed("junk after ']'"))?,
                )?,
            };
            return Ok(Self {
                host: host.to_string(),
                port,
            });
        }
        match text.matches(':').count() {
            0 => Ok(Self {
                host: text.to_string(),
                port: default_port,
            }),
            1 => {
                let (host, port) = text.split_once(':').ok_or_else(|| malformed("no port"))?;
                if host.is_empty() {
                    return Err(malformed("empty host"));
                }
                Ok(Self {
                    host: host.to_string(),
                    port: parse_port(port)?,
                })
            }
            // Several colons and no brackets: a bare IPv6 address.
            _ => Ok(Self {
                host: text.to_string(),
                port: default_port,
            }),
        }
    }

    /// Parses a list (each entry as [`BrokerEndpoint::parse`]).
    pub fn parse_list<'a>(
        entries: impl IntoIterator<Item = &'a str>,
        default_port: u16,
    ) -> Result<Vec<Self>, EndpointError> {
        let list: Vec<Self> = entries
            .into_iter()
            .map(|entry| Self::parse(entry, default_port))
            .collect::<Result<_, _>>()?;
        if list.len() > BROKERS_MAX {
            return Err(EndpointError::TooMany {
                count: list.len(),
                limit: BROKERS_MAX,
            });
        }
        Ok(list)
    }
}

/// How a client chooses among several brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BrokerPick {
    /// Client at position p dials broker p mod n first and the next one after each failure.
    #[default]
    RoundRobin,
    /// A broker drawn per client and per attempt (reproducible from the client index).
    Random,
}

impl std::str::FromStr for BrokerPick {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "round-robin" | "rr" => Ok(Self::RoundRobin),
            "random" => Ok(Self::Random),
            other => Err(format!(
                "unknown broker pick {other:?} (round-robin or random)"
            )),
        }
    }
}

/// SplitMix64 finaliser: a cheap, well-mixed hash for reproducible per-client choices.
pub fn mix64(value: u64) -> u64 {
    let mut x = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Broker index for a client's `attempt`-th connection (0 = the first connection).
pub fn pick_broker(pick: BrokerPick, position: u64, attempt: u64, brokers: usize) -> usize {
    if brokers <= 1 {
        return 0;
    }
    let brokers = brokers as u64;
    let index = match pick {
        BrokerPick::RoundRobin => position.wrapping_add(attempt) % brokers,
        BrokerPick::Random => mix64(mix64(position) ^ attempt) % brokers,
    };
    // `index < brokers`, which came from a usize.
    index as usize
}

/// Exponential backoff between reconnect attempts: attempt k waits a delay drawn uniformly
/// from [d/2, d] with d = min(min · 2^k, max) ("equal jitter": never zero, so a fleet that
/// lost one node does not come back in one instant, and never above `max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    /// `seed` makes the jitter reproducible (client index mixed with the attempt).
    pub fn delay(&self, attempt: u32, seed: u64) -> Duration {
        let min_us = self.min.as_micros().max(1) as u64;
        let max_us = (self.max.as_micros() as u64).max(min_us);
        let doublings = attempt.min(BACKOFF_DOUBLINGS_MAX);
        let ceiling = min_us.saturating_mul(1 << doublings).min(max_us);
        let half = ceiling / 2;
        let spread = ceiling - half;
        let jitter = if spread == 0 {
            0
        } else {
            mix64(seed) % (spread + 1)
        };
        Duration::from_micros(half + jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_broker_addresses() {
        let parse = |text| BrokerEndpoint::parse(text, 1883);
        assert_eq!(
            parse("10.0.0.1"),
            Ok(BrokerEndpoint {
                host: "10.0.0.1".into(),
                port: 1883
            })
        );
        assert_eq!(parse("node-b:1884").map(|e| e.port), Ok(1884));
        assert_eq!(parse(" node-b:1884 ").map(|e| e.host), Ok("node-b".into()));
        assert_eq!(
            parse("[::1]:1885").map(|e| (e.host, e.port)),
            Ok(("::1".into(), 1885))
        );
        assert_eq!(parse("[::1]").map(|e| e.port), Ok(1883));
        assert_eq!(
            parse("::1").map(|e| (e.host, e.port)),
            Ok(("::1".into(), 1883))
        );
        assert!(parse("").is_err());
        assert!(parse("host:").is_err());
        assert!(parse("host:99999").is_err());
        assert!(parse(":1883").is_err());
        assert!(parse("[::1").is_err());
        assert!(parse("[::1]1883").is_err());
    }

    #[test]
    fn refuses_absurd_broker_lists() {
        let many: Vec<String> = (0..=BROKERS_MAX).map(|i| format!("h{i}")).collect();
        let result = BrokerEndpoint::parse_list(many.iter().map(String::as_str), 1883);
        assert_eq!(
            result,
            Err(EndpointError::TooMany {
                count: BROKERS_MAX + 1,
                limit: BROKERS_MAX
            })
        );
    }

    #[test]
    fn round_robin_spreads_clients_and_fails_over_to_the_next_broker() {
        let first: Vec<usize> = (0..6)
            .map(|position| pick_broker(BrokerPick::RoundRobin, position, 0, 3))
            .collect();
        assert_eq!(first, vec![0, 1, 2, 0, 1, 2]);
        // Client 1 lost broker 1: its retries go 2, 0, 1, ...
        let retries: Vec<usize> = (1..4)
            .map(|attempt| pick_broker(BrokerPick::RoundRobin, 1, attempt, 3))
            .collect();
        assert_eq!(retries, vec![2, 0, 1]);
        assert_eq!(pick_broker(BrokerPick::RoundRobin, 7, 5, 1), 0);
    }

    #[test]
    fn random_pick_is_reproducible_in_range_and_uses_every_broker() {
        let mut seen = [0u32; 4];
        for position in 0..4000 {
            let index = pick_broker(BrokerPick::Random, position, 0, 4);
            assert_eq!(index, pick_broker(BrokerPick::Random, position, 0, 4));
            seen[index] += 1;
        }
        // Roughly uniform: each of 4 brokers gets 1000 ± 20 %.
        assert!(seen.iter().all(|&n| (800..=1200).contains(&n)), "{seen:?}");
    }

    #[test]
    fn backoff_grows_exponentially_within_bounds() {
        let backoff = Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_millis(5000),
        };
        for seed in 0..200 {
            for attempt in 0..40 {
                let ceiling = (100u64 << attempt.min(20)).min(5000);
                let delay = backoff.delay(attempt, seed).as_micros() as u64;
                assert!(delay >= ceiling * 1000 / 2, "attempt {attempt}: {delay}");
                assert!(delay <= ceiling * 1000, "attempt {attempt}: {delay}");
            }
        }
        assert!(backoff.delay(0, 1) <= Duration::from_millis(100));
        assert!(backoff.delay(30, 1) >= Duration::from_millis(2500));
        // Jitter: different clients wait different times.
        let spread: std::collections::HashSet<Duration> =
            (0..50).map(|seed| backoff.delay(3, seed)).collect();
        assert!(spread.len() > 40);
    }

    #[test]
    fn backoff_with_equal_bounds_is_fixed_range() {
        let backoff = Backoff {
            min: Duration::from_millis(10),
            max: Duration::from_millis(10),
        };
        for attempt in 0..5 {
            let delay = backoff.delay(attempt, 99);
            assert!(delay >= Duration::from_millis(5) && delay <= Duration::from_millis(10));
        }
    }
}
