//! `[[listener]]` entries (TLS, WebSocket, PROXY protocol) turned into the shards' runtime form:
//! each entry validated and its certificate files loaded, so a bad entry stops the broker at
//! start naming its key (`listener[1].tls.cert_file: ...`). The entries' types and key names
//! are `shard::edge`'s (`ListenerConfig`, `TlsConfig`).

use std::collections::HashSet;

use anyhow::bail;
use shard::edge::Listener;

use crate::config::Config;

/// Validates every `[[listener]]` (after the plain `listen` entries) and loads its files.
pub fn build(config: &Config) -> anyhow::Result<Vec<Listener>> {
    let mut seen: HashSet<std::net::SocketAddr> = config.listen.iter().copied().collect();
    let mut out = Vec::with_capacity(config.listeners.len());
    for (i, entry) in config.listeners.iter().enumerate() {
        let key = format!("listener[{i}]");
        if entry.addr.port() != 0 && !seen.insert(entry.addr) {
            bail!(
                "{key}.addr: {} is already used by another listener",
                entry.addr
            );
        }
        out.push(Listener::from_config(entry, &key)?);
    }
    Ok(out)
}
