//! `ringtail admin drain NODE`: ask a broker to hand its slots over and stop.

use anyhow::{bail, Context};
use ringtail_objstore::{Condition, StoreError};

use crate::boot::bucket::retry_blocking;
use crate::boot::store::object_store;
use crate::config::Config;

/// `ringtail admin drain NODE`: leaves a drain request next to the node's lease and waits for
/// the lease to go (a drained broker deletes it when it stops).
pub fn drain(config: &Config, node: i32, timeout: std::time::Duration) -> anyhow::Result<()> {
    use crate::cluster::lease::{drain_key, lease_key};
    let store = object_store(config)?
        .context("admin drain needs the brokers' object store (--object-store)")?;
    let lease = lease_key(node);
    match retry_blocking("reading the node lease", || store.head(&lease)) {
        Ok(_) => {}
        Err(StoreError::NotFound(_)) => bail!("node {node} is not running on this object store"),
        Err(e) => bail!("reading {lease}: {e}"),
    }
    retry_blocking("writing the drain request", || {
        store.put(
            &drain_key(node),
            bytes::Bytes::from(format!("{}", ringtail_shards::now_ms())),
            Condition::None,
        )
    })
    .map_err(|e| anyhow::anyhow!("writing the drain request: {e}"))?;
    println!("asked node {node} to drain; waiting for it to hand its slots over and stop");
    let started = std::time::Instant::now();
    while started.elapsed() < timeout {
        match futures::executor::block_on(store.head(&lease)) {
            Err(StoreError::NotFound(_)) => {
                println!(
                    "node {node} drained in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
    bail!(
        "node {node} still holds its lease after {} s (the drain request stays; it drains when \
         it next sees it)",
        timeout.as_secs()
    )
}
