//! A shard's manifest in object storage: the objects it has committed, i.e. the data that is
//! safe elsewhere. Committing is the fence.
//!
//! * Every version names the ownership epoch of the writer that committed it.
//! * A commit is a conditional put: `If-None-Match: *` for the first version, `If-Match:
//!   <etag it read>` after. A writer whose read is stale — because a newer owner committed since —
//!   fails with [`CommitError::Fenced`] and must stop: it can never overwrite a newer version.
//! * Taking a shard over ([`ManifestStore::take_over`]) commits the current contents again under
//!   a higher epoch, which fences the previous owner's next commit.

use std::sync::Arc;

use bytes::Bytes;
use ringtail_objstore::{Condition, ObjectStore, StoreError};

pub use crate::tier::object_format::{EpochStart, ProducerSnapshot};
use crate::tier::object_format::{ObjectIndex, Span, StreamKey};

/// 2: adds `log_starts`. 3: adds `producers`. 4: adds each object's writer `node`. 5: adds
/// `log_next` (uploads are committed by their own PUT into the slot's log of objects; format 4
/// is read as a manifest with an empty log). 6: adds the partitions' leader `epochs` (formats
/// 4 and 5 read as manifests without any).
pub const MANIFEST_FORMAT_VERSION: u32 = 6;
/// Bounds what a corrupt or hostile manifest can make us allocate.
pub const MANIFEST_BYTES_MAX: usize = 256 << 20;

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ObjectRef {
    pub key: String,
    pub size: u64,
    pub spans: Vec<Span>,
    /// The node id of the broker that uploaded it: a broker replaying its WAL into a slot tells
    /// its own uploads from another owner's writes at the same offsets.
    pub node: i32,
}

impl ObjectRef {
    /// How the manifest names the object at `key`, of `size` bytes, with `index`: its spans
    /// and the node that wrote it.
    pub fn of(key: String, size: u64, index: &ObjectIndex) -> ObjectRef {
        ObjectRef {
            key,
            size,
            spans: index.spans.clone(),
            node: index.node,
        }
    }
}

/// A partition's log start offset once data below it was deleted (retention, DeleteRecords).
/// It survives its spans: a partition whose every object is gone still continues at its old log
/// end, so offsets are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct LogStart {
    pub topic_id: [u8; 16],
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ShardManifest {
    pub format_version: u32,
    pub shard: u32,
    /// Epoch of the owner that committed this version.
    pub epoch: u64,
    /// Bumped by every commit, so no two versions have the same bytes: content-derived ETags
    /// (the local-directory store's) can then not repeat (no ABA).
    pub generation: u64,
    pub objects: Vec<ObjectRef>,
    /// Only partitions that deleted data; only partitions of live topics.
    pub log_starts: Vec<LogStart>,
    /// Idempotent producers' state as of this commit (a superset of what its objects hold).
    pub producers: Vec<ProducerSnapshot>,
    /// The first number of the slot's log of objects not folded into this manifest: below it,
    /// a log object is named here or is garbage; from it on, the log's objects are committed by
    /// their own PUT (ARCHITECTURE.md, "One PUT per acknowledgement").
    pub log_next: u64,
    /// The log numbers of the fences take-overs wrote (L3). Kept for good: a deleted fence
    /// would let a fenced owner that is still running write at its number and acknowledge what
    /// no later owner reads.
    pub fences: Vec<u64>,
    /// Per partition, the first offset of each leader epoch that wrote to its committed data,
    /// sorted by partition then epoch, at most [`crate::tier::object_format::EPOCHS_MAX`] per
    /// partition (ARCHITECTURE.md, "Leader epochs").
    pub epochs: Vec<EpochStart>,
}

/// Format 5, read when a bucket written before format 6 opens.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct ShardManifestV5 {
    format_version: u32,
    shard: u32,
    epoch: u64,
    generation: u64,
    objects: Vec<ObjectRef>,
    log_starts: Vec<LogStart>,
    producers: Vec<ProducerSnapshot>,
    log_next: u64,
    fences: Vec<u64>,
}

impl ShardManifestV5 {
    /// As the current format: no epochs known.
    fn upgraded(self) -> ShardManifest {
        ShardManifest {
            format_version: MANIFEST_FORMAT_VERSION,
            shard: self.shard,
            epoch: self.epoch,
            generation: self.generation,
            objects: self.objects,
            log_starts: self.log_starts,
            producers: self.producers,
            log_next: self.log_next,
            fences: self.fences,
            epochs: Vec::new(),
        }
    }
}

/// Format 4, read once when a bucket written before format 5 opens.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct ShardManifestV4 {
    format_version: u32,
    shard: u32,
    epoch: u64,
    generation: u64,
    objects: Vec<ObjectRef>,
    log_starts: Vec<LogStart>,
    producers: Vec<ProducerSnapshot>,
}

/// The first number of a log that has never been written.
pub const LOG_FIRST: u64 = 1;

impl ShardManifest {
    pub fn empty(shard: u32, epoch: u64) -> ShardManifest {
        ShardManifest {
            format_version: MANIFEST_FORMAT_VERSION,
            shard,
            epoch,
            generation: 0,
            objects: Vec::new(),
            log_starts: Vec::new(),
            producers: Vec::new(),
            log_next: LOG_FIRST,
            fences: Vec::new(),
            epochs: Vec::new(),
        }
    }

    /// Adds the epoch starts of newly committed objects (in log order): see [`add_epochs`].
    pub fn add_epochs<'a>(&mut self, starts: impl IntoIterator<Item = &'a EpochStart>) {
        add_epochs(&mut self.epochs, starts)
    }

    /// Forgets the epochs of partitions `live` rejects, and those that end at or below a
    /// partition's log start in `starts` (their data is deleted).
    pub fn trim_epochs(
        &mut self,
        starts: &std::collections::HashMap<StreamKey, i64>,
        live: impl Fn(&StreamKey) -> bool,
    ) {
        let epochs = std::mem::take(&mut self.epochs);
        for (i, e) in epochs.iter().enumerate() {
            let key = (e.topic_id, e.partition);
            let next_start = epochs
                .get(i + 1)
                .filter(|n| (n.topic_id, n.partition) == key)
                .map(|n| n.offset);
            let deleted =
                next_start.is_some_and(|next| starts.get(&key).is_some_and(|&start| next <= start));
            if live(&key) && !deleted {
                self.epochs.push(*e);
            }
        }
    }

    pub fn encode(&self) -> Bytes {
        Bytes::from(
            rkyv::to_bytes::<rkyv::rancor::Error>(self)
                .expect("a manifest always serialises")
                .into_vec(),
        )
    }

    pub fn decode(bytes: &[u8]) -> Result<ShardManifest, String> {
        Self::decode_bounded(bytes, MANIFEST_BYTES_MAX)
    }

    /// Decodes a manifest of at most `bytes_max` bytes.
    pub fn decode_bounded(bytes: &[u8], bytes_max: usize) -> Result<ShardManifest, String> {
        if bytes.len() > bytes_max {
            return Err(format!(
                "manifest of {} bytes exceeds {bytes_max}",
                bytes.len()
            ));
        }
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        // rkyv's root is at the end, so one format may validate as another by chance: only one
        // that validates as its own version is read, and bytes that read as two are refused.
        let (v6, other) = match rkyv::from_bytes::<ShardManifest, rkyv::rancor::Error>(&aligned) {
            Ok(m) if m.format_version == MANIFEST_FORMAT_VERSION => (Some(m), Ok(0)),
            Ok(m) => (None, Ok(m.format_version)),
            Err(e) => (None, Err(e.to_string())),
        };
        let v5 = rkyv::from_bytes::<ShardManifestV5, rkyv::rancor::Error>(&aligned)
            .ok()
            .filter(|m| m.format_version == 5)
            .map(ShardManifestV5::upgraded);
        let v4 = rkyv::from_bytes::<ShardManifestV4, rkyv::rancor::Error>(&aligned)
            .ok()
            .filter(|m| m.format_version == 4)
            .map(|old| {
                ShardManifestV5 {
                    format_version: 5,
                    shard: old.shard,
                    epoch: old.epoch,
                    generation: old.generation,
                    objects: old.objects,
                    log_starts: old.log_starts,
                    producers: old.producers,
                    log_next: LOG_FIRST,
                    fences: Vec::new(),
                }
                .upgraded()
            });
        let mut read = [v6, v5, v4].into_iter().flatten();
        match (read.next(), read.next()) {
            (Some(m), None) => Ok(m),
            (Some(_), Some(_)) => Err("manifest reads as two formats".into()),
            (None, _) => match other {
                Ok(version) => Err(format!(
                    "manifest format {version} is not supported (this broker reads 4 to \
                     {MANIFEST_FORMAT_VERSION}): written by a newer Ringtail?"
                )),
                Err(e) => Err(e),
            },
        }
    }
}

/// Adds to a manifest's `epochs` the epoch starts of newly committed objects (in log order):
/// those of an epoch newer than the partition's last. Each partition keeps its newest
/// [`crate::tier::object_format::EPOCHS_MAX`].
pub fn add_epochs<'a>(
    epochs: &mut Vec<EpochStart>,
    starts: impl IntoIterator<Item = &'a EpochStart>,
) {
    let mut latest: std::collections::HashMap<StreamKey, i32> = std::collections::HashMap::new();
    for e in epochs.iter() {
        let l = latest.entry((e.topic_id, e.partition)).or_insert(e.epoch);
        *l = (*l).max(e.epoch);
    }
    let before = epochs.len();
    for s in starts {
        let l = latest.entry((s.topic_id, s.partition)).or_insert(-1);
        if s.epoch > *l {
            *l = s.epoch;
            epochs.push(*s);
        }
    }
    if epochs.len() == before {
        return;
    }
    epochs.sort_by_key(|e| (e.topic_id, e.partition, e.epoch));
    // Newest first within a partition after reversing: keep the first EPOCHS_MAX of each.
    let mut kept: std::collections::HashMap<StreamKey, usize> = std::collections::HashMap::new();
    epochs.reverse();
    epochs.retain(|e| {
        let n = kept.entry((e.topic_id, e.partition)).or_insert(0);
        *n += 1;
        *n <= crate::tier::object_format::EPOCHS_MAX
    });
    epochs.reverse();
}

/// A manifest version as read or committed, with the ETag that the next commit must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub manifest: ShardManifest,
    pub etag: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    #[error("shard {shard}: fenced — another owner (epoch {newer_epoch:?}) committed the manifest since epoch {epoch} read it")]
    Fenced {
        shard: u32,
        epoch: u64,
        newer_epoch: Option<u64>,
    },
    #[error("shard {shard} manifest is damaged: {reason}")]
    Corrupt { shard: u32, reason: String },
    #[error("shard {shard}: a manifest of {bytes} bytes would exceed the {bytes_max}-byte limit a reader accepts; not written")]
    TooLarge {
        shard: u32,
        bytes: usize,
        bytes_max: usize,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct ManifestStore {
    store: Arc<dyn ObjectStore>,
    shard: u32,
    /// The largest manifest read or written ([`MANIFEST_BYTES_MAX`]; smaller in tests).
    bytes_max: usize,
}

impl ManifestStore {
    pub fn new(store: Arc<dyn ObjectStore>, shard: u32) -> ManifestStore {
        Self::with_bytes_max(store, shard, MANIFEST_BYTES_MAX)
    }

    /// A store whose manifests are bounded by `bytes_max` (at most [`MANIFEST_BYTES_MAX`]).
    pub fn with_bytes_max(
        store: Arc<dyn ObjectStore>,
        shard: u32,
        bytes_max: usize,
    ) -> ManifestStore {
        assert!(bytes_max <= MANIFEST_BYTES_MAX);
        ManifestStore {
            store,
            shard,
            bytes_max,
        }
    }

    pub fn key(&self) -> String {
        crate::layout::manifest(self.shard)
    }

    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// The current version, if any.
    ///
    /// The ETag returned is that of exactly these bytes: the same before and after the body was
    /// read (every commit changes it — the generation makes each version's bytes unique). An
    /// ETag read only after the body could be a newer commit's, and a conditional commit on it
    /// would then succeed over a version this writer never saw (dropping its objects).
    pub async fn load(&self) -> Result<Option<Committed>, CommitError> {
        let key = self.key();
        for _ in 0..5 {
            let before = match self.store.head(&key).await {
                Ok(m) => m.etag,
                Err(StoreError::NotFound(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let bytes = match self.store.get(&key, None).await {
                Ok(b) => b,
                Err(StoreError::NotFound(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            if self.store.head(&key).await?.etag != before {
                continue;
            }
            let manifest =
                ShardManifest::decode_bounded(&bytes, self.bytes_max).map_err(|reason| {
                    CommitError::Corrupt {
                        shard: self.shard,
                        reason,
                    }
                })?;
            return Ok(Some(Committed {
                manifest,
                etag: before,
            }));
        }
        Err(CommitError::Store(StoreError::Transient(format!(
            "{key} changed at every read"
        ))))
    }

    /// Commits `next` over `current` (what this writer last read or committed). Fails with
    /// [`CommitError::Fenced`] if anyone committed in between.
    pub async fn commit(
        &self,
        current: Option<&Committed>,
        mut next: ShardManifest,
    ) -> Result<Committed, CommitError> {
        assert_eq!(next.shard, self.shard, "a manifest belongs to its shard");
        let condition = match current {
            None => Condition::IfNoneMatch,
            Some(c) => {
                assert!(next.epoch >= c.manifest.epoch, "epochs never go back");
                next.generation = c.manifest.generation + 1;
                Condition::IfMatch(c.etag.clone())
            }
        };
        let bytes = next.encode();
        if bytes.len() > self.bytes_max {
            return Err(CommitError::TooLarge {
                shard: self.shard,
                bytes: bytes.len(),
                bytes_max: self.bytes_max,
            });
        }
        match self.store.put(&self.key(), bytes, condition).await {
            Ok(etag) => Ok(Committed {
                manifest: next,
                etag,
            }),
            Err(StoreError::PreconditionFailed(_)) => {
                let newer_epoch = self.load().await.ok().flatten().map(|c| c.manifest.epoch);
                Err(CommitError::Fenced {
                    shard: self.shard,
                    epoch: next.epoch,
                    newer_epoch,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Becomes the manifest's owner under an epoch above any committed one, fencing the previous
    /// owner's manifest commits, if `may_take()` still holds once the current version is read
    /// (just before the compare-and-swap). Returns the committed version to continue from.
    /// The manifest alone: a slot is taken over by [`crate::tier::log::take_over`], which also
    /// fences the slot's log of objects and folds its tail in.
    pub async fn take_over(&self, may_take: &dyn Fn() -> bool) -> Result<Committed, CommitError> {
        let current = self.load().await?;
        if !may_take() {
            return Err(CommitError::Store(StoreError::Fatal(
                "not taken over: this broker's lease lapsed meanwhile".into(),
            )));
        }
        let epoch = current.as_ref().map(|c| c.manifest.epoch + 1).unwrap_or(1);
        let next = match &current {
            Some(c) => ShardManifest {
                epoch,
                ..c.manifest.clone()
            },
            None => ShardManifest::empty(self.shard, epoch),
        };
        self.commit(current.as_ref(), next).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_round_trip_and_damage_is_an_error() {
        let m = ShardManifest {
            objects: vec![ObjectRef {
                key: "shards/0001/objects/x.rto".into(),
                size: 99,
                node: 3,
                spans: vec![Span {
                    topic_id: [4; 16],
                    partition: 2,
                    base_offset: 10,
                    last_offset: 20,
                    byte_start: 0,
                    byte_len: 99,
                    max_timestamp: 5,
                }],
            }],
            log_starts: vec![LogStart {
                topic_id: [4; 16],
                partition: 2,
                offset: 7,
            }],
            producers: vec![ProducerSnapshot {
                topic_id: [4; 16],
                partition: 2,
                producer_id: 9,
                epoch: 1,
                recent: vec![(0, 4, 10), (5, 9, 15)],
            }],
            ..ShardManifest::empty(1, 3)
        };
        let bytes = m.encode();
        assert_eq!(ShardManifest::decode(&bytes).unwrap(), m);
        assert!(ShardManifest::decode(&bytes[..bytes.len() / 2]).is_err());
        assert!(ShardManifest::decode(b"garbage").is_err());
    }

    /// A bucket written before format 5 opens: its manifest reads as one with an empty log.
    #[test]
    fn a_format_4_manifest_reads_with_an_empty_log() {
        let old = ShardManifestV4 {
            format_version: 4,
            shard: 2,
            epoch: 7,
            generation: 40,
            objects: vec![ObjectRef {
                key: crate::layout::object(2, 7, 39),
                size: 10,
                node: 1,
                spans: Vec::new(),
            }],
            log_starts: Vec::new(),
            producers: Vec::new(),
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&old).unwrap();
        let m = ShardManifest::decode(&bytes).unwrap();
        assert_eq!(
            (m.format_version, m.shard, m.epoch, m.generation, m.log_next),
            (MANIFEST_FORMAT_VERSION, 2, 7, 40, LOG_FIRST)
        );
        assert_eq!(m.objects, old.objects);
        let newer = ShardManifest {
            format_version: MANIFEST_FORMAT_VERSION + 1,
            ..ShardManifest::empty(2, 1)
        };
        let refused = ShardManifest::decode(&newer.encode()).unwrap_err();
        assert!(refused.contains("newer"), "{refused}");
    }

    /// A bucket written before format 6 opens: its manifest keeps its log and has no epochs.
    #[test]
    fn a_format_5_manifest_reads_without_epochs() {
        let old = ShardManifestV5 {
            format_version: 5,
            shard: 2,
            epoch: 7,
            generation: 40,
            objects: Vec::new(),
            log_starts: Vec::new(),
            producers: Vec::new(),
            log_next: 33,
            fences: vec![12],
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&old).unwrap();
        let m = ShardManifest::decode(&bytes).unwrap();
        assert_eq!(
            (m.format_version, m.epoch, m.log_next, m.fences.clone()),
            (MANIFEST_FORMAT_VERSION, 7, 33, vec![12])
        );
        assert!(m.epochs.is_empty());
    }

    fn start(partition: i32, epoch: i32, offset: i64) -> EpochStart {
        EpochStart {
            topic_id: [5; 16],
            partition,
            epoch,
            offset,
        }
    }

    /// Folded objects add only epochs newer than a partition's last; deletion forgets the
    /// epochs wholly below a log start and those of dropped partitions.
    #[test]
    fn epochs_fold_in_order_and_trim_with_the_log() {
        let mut m = ShardManifest::empty(0, 1);
        m.add_epochs(&[start(0, 3, 0), start(1, 3, 0)]);
        // A later object: partition 0 still in epoch 3, then 5; partition 1 in 5.
        m.add_epochs(&[start(0, 3, 40), start(0, 5, 50), start(1, 5, 7)]);
        m.add_epochs(&[start(0, 4, 60)]);
        assert_eq!(
            m.epochs,
            vec![
                start(0, 3, 0),
                start(0, 5, 50),
                start(1, 3, 0),
                start(1, 5, 7)
            ]
        );
        let starts = std::collections::HashMap::from([(([5; 16], 0), 50), (([5; 16], 1), 6)]);
        m.trim_epochs(&starts, |_| true);
        assert_eq!(
            m.epochs,
            vec![start(0, 5, 50), start(1, 3, 0), start(1, 5, 7)]
        );
        m.trim_epochs(&starts, |k| k.1 != 1);
        assert_eq!(m.epochs, vec![start(0, 5, 50)]);
        let bytes = m.encode();
        assert_eq!(ShardManifest::decode(&bytes).unwrap(), m);
    }

    /// A commit that would write a manifest larger than a reader accepts is refused before
    /// anything is written: the committed version stays readable (it used to be written, and
    /// every later load — a restart, a take-over — then failed with "exceeds").
    #[test]
    fn a_manifest_too_large_to_read_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn ObjectStore> =
            Arc::new(ringtail_objstore::local::LocalDir::open(dir.path()).unwrap());
        let manifests = ManifestStore::with_bytes_max(local, 0, 4096);
        let first = futures::executor::block_on(manifests.take_over(&|| true)).unwrap();
        let mut next = first.manifest.clone();
        next.objects.push(ObjectRef {
            key: "k".repeat(5000),
            size: 1,
            node: 1,
            spans: Vec::new(),
        });
        let refused = futures::executor::block_on(manifests.commit(Some(&first), next));
        assert!(
            matches!(refused, Err(CommitError::TooLarge { bytes, .. }) if bytes > 4096),
            "a manifest of over 5000 bytes was not refused: {:?}",
            refused.map(|c| c.etag)
        );
        let read = futures::executor::block_on(manifests.load())
            .expect("the committed manifest is still readable")
            .unwrap();
        assert_eq!(read, first);
    }

    use futures::future::BoxFuture;
    use ringtail_objstore::StoreResult;

    /// A store that runs `after_get` once, right after the first GET's body was read.
    struct CommitAfterGet {
        inner: Arc<dyn ObjectStore>,
        after_get: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
    }

    impl ObjectStore for CommitAfterGet {
        fn put(
            &self,
            k: &str,
            b: bytes::Bytes,
            c: Condition,
        ) -> BoxFuture<'static, StoreResult<String>> {
            self.inner.put(k, b, c)
        }
        fn get(
            &self,
            k: &str,
            r: Option<std::ops::Range<u64>>,
        ) -> BoxFuture<'static, StoreResult<bytes::Bytes>> {
            let (got, hook) = (self.inner.get(k, r), self.after_get.lock().unwrap().take());
            Box::pin(async move {
                let body = got.await;
                if let Some(hook) = hook {
                    hook();
                }
                body
            })
        }
        fn head(&self, k: &str) -> BoxFuture<'static, StoreResult<ringtail_objstore::ObjectMeta>> {
            self.inner.head(k)
        }
        fn list(
            &self,
            p: &str,
        ) -> BoxFuture<'static, StoreResult<Vec<ringtail_objstore::ObjectMeta>>> {
            self.inner.list(p)
        }
        fn delete(&self, k: &str) -> BoxFuture<'static, StoreResult<()>> {
            self.inner.delete(k)
        }
        fn create_multipart(&self, k: &str) -> BoxFuture<'static, StoreResult<String>> {
            self.inner.create_multipart(k)
        }
        fn upload_part(
            &self,
            k: &str,
            u: &str,
            n: i32,
            b: bytes::Bytes,
        ) -> BoxFuture<'static, StoreResult<ringtail_objstore::Part>> {
            self.inner.upload_part(k, u, n, b)
        }
        fn complete_multipart(
            &self,
            k: &str,
            u: &str,
            p: Vec<ringtail_objstore::Part>,
        ) -> BoxFuture<'static, StoreResult<String>> {
            self.inner.complete_multipart(k, u, p)
        }
        fn abort_multipart(&self, k: &str, u: &str) -> BoxFuture<'static, StoreResult<()>> {
            self.inner.abort_multipart(k, u)
        }
    }

    /// The old owner commits an object while a taker reads the manifest: the take-over either
    /// builds on that commit or fails; it never commits over it unseen (the taker's read used
    /// to pair the older body with the newer ETag, and its compare-and-swap then dropped the
    /// object).
    #[test]
    fn a_commit_during_the_takers_read_is_never_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn ObjectStore> =
            Arc::new(ringtail_objstore::local::LocalDir::open(dir.path()).unwrap());
        let owner = ManifestStore::new(local.clone(), 0);
        let first = futures::executor::block_on(owner.take_over(&|| true)).unwrap();
        let racing: Arc<dyn ObjectStore> = Arc::new(CommitAfterGet {
            inner: local.clone(),
            after_get: std::sync::Mutex::new(Some(Box::new(move || {
                // On a thread of its own: this runs inside the taker's executor.
                std::thread::spawn(move || {
                    let mut next = first.manifest.clone();
                    next.objects.push(ObjectRef {
                        key: "shards/0000/objects/late.rto".into(),
                        size: 1,
                        node: 1,
                        spans: Vec::new(),
                    });
                    futures::executor::block_on(owner.commit(Some(&first), next)).unwrap();
                })
                .join()
                .unwrap();
            }))),
        });
        let taker = ManifestStore::new(racing, 0);
        let taken = futures::executor::block_on(taker.take_over(&|| true)).unwrap();
        assert_eq!(taken.manifest.epoch, 2);
        assert_eq!(
            taken.manifest.objects.len(),
            1,
            "the old owner's commit kept"
        );
    }
}
