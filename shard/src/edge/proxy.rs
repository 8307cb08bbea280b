//! PROXY protocol v1/v2 in front of a listener (`proxy_protocol`, `trusted_proxies`): the header
//! is required first on every connection, only peers in `trusted_proxies` may send it, and the
//! client address it carries becomes `ConnMeta::peer`. Anything else is closed without a reply
//! (the spec asks for an abort; a reply would tell a scanner what listens here). Parsing is
//! `wire::proxy`'s.

use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use wire::proxy::{ProxyCheck, ProxyMode};

use super::{invalid, EdgeConfigError, Failure, ListenerConfig, ProxyProtocol};

/// An address block in `trusted_proxies`: `10.0.0.0/8`, `192.0.2.7`, `::1`, `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix_len) = match text.split_once('/') {
            Some((a, p)) => (
                a.trim().parse::<IpAddr>().ok()?,
                Some(p.trim().parse::<u8>().ok()?),
            ),
            None => (text.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = prefix_len.unwrap_or(max);
        (prefix_len <= max).then_some(Cidr { addr, prefix_len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket shows as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_eq(&net.octets(), &ip.octets(), self.prefix_len)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_eq(&net.octets(), &ip.octets(), self.prefix_len)
            }
            _ => false,
        }
    }
}

fn mask_eq(net: &[u8], ip: &[u8], prefix_len: u8) -> bool {
    let full = usize::from(prefix_len / 8);
    let rest = prefix_len % 8;
    if net[..full] != ip[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xFFu8 << (8 - rest);
    net[full] & mask == ip[full] & mask
}

/// A listener's PROXY protocol rule.
#[derive(Debug, Clone)]
pub struct ProxyPolicy {
    pub mode: ProxyMode,
    pub trusted: Vec<Cidr>,
}

impl ProxyPolicy {
    /// `None` when `proxy_protocol = "off"`.
    pub fn from_config(
        cfg: &ListenerConfig,
        key: &str,
    ) -> Result<Option<ProxyPolicy>, EdgeConfigError> {
        let mode = match cfg.proxy_protocol {
            ProxyProtocol::Off => {
                if !cfg.trusted_proxies.is_empty() {
                    return Err(invalid(
                        format!("{key}.trusted_proxies"),
                        "only used with proxy_protocol = \"v1\", \"v2\" or \"any\"",
                    ));
                }
                return Ok(None);
            }
            ProxyProtocol::V1 => ProxyMode::V1,
            ProxyProtocol::V2 => ProxyMode::V2,
            ProxyProtocol::Any => ProxyMode::Any,
        };
        if cfg.trusted_proxies.is_empty() {
            return Err(invalid(
                format!("{key}.trusted_proxies"),
                "list the proxies' addresses or CIDRs allowed to send a PROXY header",
            ));
        }
        let mut trusted = Vec::new();
        for (i, text) in cfg.trusted_proxies.iter().enumerate() {
            let cidr = Cidr::parse(text).ok_or_else(|| {
                invalid(
                    format!("{key}.trusted_proxies[{i}]"),
                    format!("{text:?} is not an address or CIDR"),
                )
            })?;
            trusted.push(cidr);
        }
        Ok(Some(ProxyPolicy { mode, trusted }))
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }
}

/// A connection waiting for its PROXY header. `pending` holds at most one header
/// (`wire::proxy::V2_HEADER_LEN_MAX`) plus what arrived with it.
#[derive(Debug)]
pub struct ProxyStage {
    mode: ProxyMode,
    pending: BytesMut,
}

/// The client's address from the header (`None` for LOCAL/UNKNOWN: keep the socket's), and
/// the bytes after it.
type HeaderRead = (Option<SocketAddr>, BytesMut);

impl ProxyStage {
    pub fn new(mode: ProxyMode) -> Self {
        ProxyStage {
            mode,
            pending: BytesMut::new(),
        }
    }

    /// `Ok(None)` while the header is incomplete.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<HeaderRead>, Failure> {
        let buf: &[u8] = if self.pending.is_empty() {
            data
        } else {
            self.pending.extend_from_slice(data);
            &self.pending
        };
        match wire::proxy::check(buf, self.mode) {
            Ok(ProxyCheck::Incomplete { .. }) => {
                if self.pending.is_empty() {
                    self.pending.extend_from_slice(data);
                }
                Ok(None)
            }
            Ok(ProxyCheck::Complete { header_len, info }) => {
                let rest = BytesMut::from(&buf[header_len..]);
                Ok(Some((info.source, rest)))
            }
            Err(err) => {
                tracing::debug!(error = %err, "proxy protocol header refused");
                Err(Failure::ProxyHeader)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_match_their_block() {
        let net = Cidr::parse("10.1.0.0/16").expect("cidr");
        assert!(net.contains("10.1.200.3".parse().expect("ip")));
        assert!(!net.contains("10.2.0.1".parse().expect("ip")));
        let one = Cidr::parse("127.0.0.1").expect("ip");
        assert!(one.contains("127.0.0.1".parse().expect("ip")));
        assert!(one.contains("::ffff:127.0.0.1".parse().expect("ip")));
        assert!(!one.contains("127.0.0.2".parse().expect("ip")));
        let v6 = Cidr::parse("fd00::/8").expect("cidr");
        assert!(v6.contains("fd12::1".parse().expect("ip")));
        assert!(!v6.contains("fe80::1".parse().expect("ip")));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nope").is_none());
        let odd = Cidr::parse("192.168.0.0/20").expect("cidr");
        assert!(odd.contains("192.168.15.255".parse().expect("ip")));
        assert!(!odd.contains("192.168.16.0".parse().expect("ip")));
    }

    #[test]
    fn header_split_over_reads_gives_source_and_rest() {
        let mut stage = ProxyStage::new(ProxyMode::Any);
        let header = b"PROXY TCP4 192.0.2.1 192.0.2.2 40000 1883\r\n\x10\x00";
        assert!(stage.feed(&header[..10]).expect("partial").is_none());
        let (source, rest) = stage.feed(&header[10..]).expect("whole").expect("complete");
        assert_eq!(source, Some("192.0.2.1:40000".parse().expect("addr")));
        assert_eq!(&rest[..], b"\x10\x00");
        let mut stage = ProxyStage::new(ProxyMode::V2);
        assert_eq!(
            stage.feed(b"\x10\x0e\x00\x04MQTT").err(),
            Some(Failure::ProxyHeader)
        );
    }
}
