//! Reloads `[overload.ban]` from the configuration file when SIGHUP asks for a reload
//! (`shard::reload::generation` moved), and hands it to the shards
//! (`shard::overload::publish_ban_list`). Only the ban list reloads: every other key needs a
//! restart. A file that no longer parses keeps the previous list (logged).

use std::path::PathBuf;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::Config;

/// How often the watcher looks at the reload generation.
const POLL: Duration = Duration::from_millis(250);

/// Starts the watcher thread for `path` (the `--config` file).
pub fn watch(path: PathBuf) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("ringmq-ban-reload".into())
        .spawn(move || {
            let mut seen = shard::reload::generation();
            loop {
                std::thread::sleep(POLL);
                let generation = shard::reload::generation();
                if generation == seen {
                    continue;
                }
                seen = generation;
                match Config::load(&path).and_then(|c| c.overload.ban_list()) {
                    Ok(ban) => {
                        info!(
                            client_ids = ban.client_ids.len(),
                            usernames = ban.usernames.len(),
                            addresses = ban.addresses.len(),
                            "overload.ban: reloaded"
                        );
                        shard::overload::publish_ban_list(ban);
                    }
                    Err(err) => {
                        warn!(error = %format!("{err:#}"), "overload.ban: reload failed; the previous list stays");
                    }
                }
            }
        })?;
    Ok(())
}
