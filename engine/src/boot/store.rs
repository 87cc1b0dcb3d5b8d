//! The object store the broker is configured with (the embedded default is a local
//! directory; `s3://` takes explicit credentials only), with fault injection for tests.

use std::sync::Arc;

use anyhow::Context;
use ringtail_objstore::faulty::Faulty;
use ringtail_objstore::local::LocalDir;
use ringtail_objstore::s3::{S3Config, S3Store};
use ringtail_objstore::ObjectStore;

use crate::config::{Config, ObjectStoreUrl};

/// The object store, if one is configured.
pub fn object_store(config: &Config) -> anyhow::Result<Option<Arc<dyn ObjectStore>>> {
    let Some(url) = &config.object_store else {
        return Ok(None);
    };
    let store: Arc<dyn ObjectStore> = match url {
        ObjectStoreUrl::Dir(path) => Arc::new(
            LocalDir::open(path)
                .map_err(|e| anyhow::anyhow!("object store {}: {e}", path.display()))?,
        ),
        ObjectStoreUrl::S3 { bucket, prefix } => {
            // Explicit credentials only: the default chain would probe a cloud metadata address.
            let key = std::env::var("AWS_ACCESS_KEY_ID")
                .context("s3:// object store needs AWS_ACCESS_KEY_ID")?;
            let secret = std::env::var("AWS_SECRET_ACCESS_KEY")
                .context("s3:// object store needs AWS_SECRET_ACCESS_KEY")?;
            Arc::new(
                S3Store::new(&S3Config {
                    endpoint: config.s3_endpoint.clone(),
                    region: config.s3_region.clone(),
                    bucket: bucket.clone(),
                    prefix: prefix.clone(),
                    access_key_id: key,
                    secret_access_key: secret,
                    path_style: config.s3_path_style,
                })
                .map_err(|e| anyhow::anyhow!("object store s3://{bucket}/{prefix}: {e}"))?,
            )
        }
    };
    tracing::info!(store = ?url, "object tier on");
    if let Some(faults) = &config.object_store_faults {
        tracing::warn!(?faults, "injecting object-store faults (test setting)");
        return Ok(Some(Arc::new(Faulty::new(store, faults.clone(), 0x5eed))));
    }
    Ok(Some(store))
}
