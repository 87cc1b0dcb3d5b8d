//! The tier against a real (local-directory) store: uploads, merges, fencing, refusals.

use super::*;
use futures::executor::block_on;
use kafka_protocol::records::Compression;
use ringtail_netio::batch::{split_and_validate, testing};
use std::collections::HashMap;
use std::future::Future as _;

fn batch(base: i64, n: i64) -> (ringtail_netio::header::BatchHeader, Bytes) {
    let values = (0..n).map(|i| Some(Bytes::from(format!("value-{base}-{i}"))));
    let buf = testing::encode(values, 1000 + base, Compression::None);
    split_and_validate(buf, 1 << 20)
        .unwrap()
        .into_iter()
        .next()
        .unwrap()
        .assign(base, 0)
}

/// A tier that committed `objects` one-batch objects on two partitions; returns every
/// partition's batch bytes in offset order.
fn tier_with_objects(store: Arc<dyn ObjectStore>, objects: i64) -> (Tier, HashMap<i32, Vec<u8>>) {
    let stats = Arc::new(ShardStats::new(0));
    let tier = block_on(Tier::open(
        store,
        0,
        1,
        1 << 20,
        Duration::from_secs(60),
        stats,
        &|| true,
    ))
    .unwrap();
    let mut written: HashMap<i32, Vec<u8>> = HashMap::new();
    for k in 0..objects {
        for partition in 0..2 {
            let (header, bytes) = batch(k * 3, 3);
            written
                .entry(partition)
                .or_default()
                .extend_from_slice(&bytes);
            tier.add([9; 16], partition, header, bytes);
        }
        tier.request_seal();
        let sealed = tier.seal_if_due().expect("a seal was requested");
        block_on(tier.upload(sealed, Vec::new())).unwrap();
    }
    (tier, written)
}

#[test]
fn a_merge_keeps_offsets_and_bytes_in_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(ringtail_objstore::local::LocalDir::open(dir.path()).unwrap());
    let (tier, written) = tier_with_objects(store.clone(), 9);
    let before = tier.committed_objects();
    assert_eq!(before.len(), 9);
    let merged = block_on(tier.merge())
        .unwrap()
        .expect("9 small objects merge");
    assert_eq!(merged.replaced, 9);
    let loaded = block_on(ManifestStore::new(store.clone(), 0).load())
        .unwrap()
        .unwrap();
    assert_eq!(loaded.manifest.objects.len(), 1);
    assert_eq!(loaded.manifest.objects[0].key, merged.key);
    for span in &merged.spans {
        assert_eq!((span.base_offset, span.last_offset), (0, 26));
        let bytes = block_on(store.get(
            &merged.key,
            Some(span.byte_start..span.byte_start + span.byte_len),
        ))
        .unwrap();
        assert_eq!(&bytes[..], &written[&span.partition][..]);
    }
    // The replaced objects stay readable until their delay has passed.
    block_on(tier.delete_retired());
    assert!(block_on(store.head(&before[0].key)).is_ok());
    assert!(
        block_on(tier.merge()).unwrap().is_none(),
        "nothing left to merge"
    );
}

/// A commit refused for the manifest's size stops uploads without losing the object or
/// blocking the deletion pass: once a deletion makes room, the same object is committed.
#[test]
fn an_object_refused_for_the_manifests_size_waits_for_room() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(ringtail_objstore::local::LocalDir::open(dir.path()).unwrap());
    let (mut tier, _) = tier_with_objects(store.clone(), 2);
    let limit = tier.committed.borrow().manifest.encode().len() + 16;
    tier.manifests = ManifestStore::with_bytes_max(store.clone(), 0, limit);
    let (header, bytes) = batch(6, 3);
    tier.add([9; 16], 0, header, bytes);
    tier.request_seal();
    let sealed = tier.seal_if_due().unwrap();
    let key = sealed.key.clone();
    let refused = block_on(tier.upload(sealed, Vec::new()));
    assert!(
        matches!(refused, Err(CommitError::TooLarge { .. })),
        "{refused:?}"
    );
    assert!(!tier.is_fenced());
    assert!(!tier.is_idle(), "a shutdown flush waits for it");
    assert!(tier.seal_if_due().is_none(), "not retried before its time");
    assert!(
        block_on(tier.merge()).unwrap().is_none(),
        "no merge while a commit is stalled"
    );
    // Retention drops the oldest object: room for one more.
    let (dropped, _) =
        block_on(tier.delete_data(|s| s.base_offset == 0, &HashMap::new(), |_| true)).unwrap();
    assert_eq!(dropped.len(), 2);
    tier.stalled.borrow_mut().as_mut().unwrap().0 = Instant::now();
    let again = block_on(tier.commit_uploads(Vec::new)).unwrap();
    assert_eq!(again.len(), 1, "the stalled object, due now");
    assert_eq!(again[0].0, key);
    assert!(tier.is_idle());
    let loaded = block_on(ManifestStore::new(store, 0).load())
        .unwrap()
        .unwrap();
    assert_eq!(loaded.manifest.objects.last().unwrap().key, key);
}

/// A merge is a manifest commit like any other: an owner fenced by a take-over never lands
/// one, and the new owner's manifest keeps every object.
#[test]
fn a_fenced_owner_never_commits_a_merge() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(ringtail_objstore::local::LocalDir::open(dir.path()).unwrap());
    let (tier, _) = tier_with_objects(store.clone(), 9);
    let taken = block_on(ManifestStore::new(store.clone(), 0).take_over(&|| true)).unwrap();
    assert_eq!(taken.manifest.objects.len(), 9);
    let refused = block_on(tier.merge());
    assert!(
        matches!(refused, Err(CommitError::Fenced { .. })),
        "{refused:?}"
    );
    assert!(tier.is_fenced());
    let loaded = block_on(ManifestStore::new(store, 0).load())
        .unwrap()
        .unwrap();
    assert_eq!(loaded, taken);
}

/// A store whose PUTs of data objects (keys ending `.rto`) fail with 403 while `refuse` is
/// set; everything else reaches the local store.
struct RefusingPuts {
    inner: Arc<dyn ObjectStore>,
    refuse: std::sync::atomic::AtomicBool,
}

impl RefusingPuts {
    fn refused(&self, key: &str) -> Option<StoreError> {
        (key.ends_with(".rto") && self.refuse.load(std::sync::atomic::Ordering::SeqCst))
            .then(|| StoreError::Fatal(format!("put {key}: 403 AccessDenied")))
    }
}

impl ObjectStore for RefusingPuts {
    fn put(
        &self,
        key: &str,
        body: Bytes,
        condition: Condition,
    ) -> futures::future::BoxFuture<'static, ringtail_objstore::StoreResult<String>> {
        match self.refused(key) {
            Some(e) => Box::pin(async move { Err(e) }),
            None => self.inner.put(key, body, condition),
        }
    }
    fn get(
        &self,
        key: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> futures::future::BoxFuture<'static, ringtail_objstore::StoreResult<Bytes>> {
        self.inner.get(key, range)
    }
    fn head(
        &self,
        key: &str,
    ) -> futures::future::BoxFuture<
        'static,
        ringtail_objstore::StoreResult<ringtail_objstore::ObjectMeta>,
    > {
        self.inner.head(key)
    }
    fn list(
        &self,
        prefix: &str,
    ) -> futures::future::BoxFuture<
        'static,
        ringtail_objstore::StoreResult<Vec<ringtail_objstore::ObjectMeta>>,
    > {
        self.inner.list(prefix)
    }
    fn delete(
        &self,
        key: &str,
    ) -> futures::future::BoxFuture<'static, ringtail_objstore::StoreResult<()>> {
        self.inner.delete(key)
    }
    fn create_multipart(
        &self,
        key: &str,
    ) -> futures::future::BoxFuture<'static, ringtail_objstore::StoreResult<String>> {
        match self.refused(key) {
            Some(e) => Box::pin(async move { Err(e) }),
            None => self.inner.create_multipart(key),
        }
    }
    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> futures::future::BoxFuture<'static, ringtail_objstore::StoreResult<Part>> {
        self.inner.upload_part(key, upload_id, number, body)
    }
    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<Part>,
    ) -> futures::future::BoxFuture<'static, ringtail_objstore::StoreResult<String>> {
        self.inner.complete_multipart(key, upload_id, parts)
    }
    fn abort_multipart(
        &self,
        key: &str,
        upload_id: &str,
    ) -> futures::future::BoxFuture<'static, ringtail_objstore::StoreResult<()>> {
        self.inner.abort_multipart(key, upload_id)
    }
}

/// A merge whose upload the store refuses (403) is given up at once — it never blocks the
/// uploader — and reported like a failed upload (`/ready` answers 503); once the store
/// accepts writes again, uploads and merges go on under the same keys.
#[test]
fn a_merge_the_store_refuses_is_given_up_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn ObjectStore> =
        Arc::new(ringtail_objstore::local::LocalDir::open(dir.path()).unwrap());
    let store = Arc::new(RefusingPuts {
        inner: local,
        refuse: std::sync::atomic::AtomicBool::new(false),
    });
    let (tier, _) = tier_with_objects(store.clone(), 9);
    store
        .refuse
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let given_up = futures::executor::block_on(async {
        futures::future::select(
            Box::pin(tier.merge()),
            Box::pin(futures_timer(Duration::from_secs(10))),
        )
        .await
    });
    let futures::future::Either::Left((given_up, _)) = given_up else {
        panic!("the merge still retries its refused upload after 10 s");
    };
    assert!(matches!(given_up, Ok(None)), "{given_up:?}");
    assert_eq!(tier.committed_objects().len(), 9, "nothing committed");
    assert!(!tier.is_fenced());
    assert!(
        tier.stats.upload_failures.lock().unwrap().contains_key(&0),
        "/ready reports the permanent error"
    );
    store
        .refuse
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let merged = block_on(tier.merge())
        .unwrap()
        .expect("merged once allowed");
    assert_eq!(merged.replaced, 9);
    assert!(tier.stats.upload_failures.lock().unwrap().is_empty());
}

/// A merge gives way between its reads when a flush starts (a hand-over or shutdown must
/// not wait for up to 64 GETs and a 32 MiB PUT): nothing is uploaded or committed.
#[test]
fn a_merge_gives_way_to_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(ringtail_objstore::local::LocalDir::open(dir.path()).unwrap());
    let (tier, _) = tier_with_objects(store.clone(), 9);
    let keys_before = block_on(store.list("")).unwrap().len();
    let mut merge = Box::pin(tier.merge());
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    // The first poll sends the first GET (the local store answers on its own runtime).
    assert!(merge.as_mut().poll(&mut cx).is_pending());
    tier.start_flush();
    let out = block_on(merge);
    assert!(matches!(out, Ok(None)), "{out:?}");
    assert_eq!(tier.committed_objects().len(), 9);
    assert_eq!(
        block_on(store.list("")).unwrap().len(),
        keys_before,
        "no merged object"
    );
}

/// A timer for tests driven by `futures::executor` (no shard reactor).
async fn futures_timer(d: Duration) {
    let (tx, rx) = futures::channel::oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(d);
        let _ = tx.send(());
    });
    let _ = rx.await;
}

/// Uploads in flight commit in seal order and never overtake: uploads whose PUTs are done wait
/// for the one sealed before them, then all commit in one manifest commit; every object of the
/// epoch has its own key.
#[test]
fn uploads_commit_in_seal_order_and_together() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(ringtail_objstore::local::LocalDir::open(dir.path()).unwrap());
    let (tier, _) = tier_with_objects(store.clone(), 1);
    let generation = tier.committed.borrow().manifest.generation;
    let mut sealed = Vec::new();
    for k in 1..4 {
        let (header, bytes) = batch(k * 3, 3);
        tier.add([9; 16], 0, header, bytes);
        tier.request_seal();
        let s = tier.seal_if_due().expect("room for another upload");
        let slot = Rc::new(RefCell::new(PutState::Putting));
        tier.uploads.borrow_mut().push_back(slot.clone());
        sealed.push((s, slot));
    }
    let keys: Vec<String> = sealed.iter().map(|(s, _)| s.key.clone()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, keys, "distinct keys, in seal order");
    // The second and third PUTs finish first: nothing commits before the first.
    let mut sealed = sealed.into_iter();
    let (first, first_slot) = sealed.next().unwrap();
    for (s, slot) in sealed {
        assert!(block_on(tier.put_sealed(&s)));
        *slot.borrow_mut() = PutState::Done(Uploaded {
            sealed: s,
            producers: Vec::new(),
        });
    }
    assert!(!tier.commit_ready());
    assert!(block_on(tier.commit_uploads(Vec::new)).unwrap().is_empty());
    assert!(!tier.is_idle());
    assert!(block_on(tier.put_sealed(&first)));
    *first_slot.borrow_mut() = PutState::Done(Uploaded {
        sealed: first,
        producers: Vec::new(),
    });
    assert!(tier.commit_ready());
    let committed = block_on(tier.commit_uploads(Vec::new)).unwrap();
    let committed_keys: Vec<String> = committed.into_iter().map(|(k, _)| k).collect();
    assert_eq!(committed_keys, keys);
    assert!(tier.is_idle());
    let loaded = block_on(ManifestStore::new(store, 0).load())
        .unwrap()
        .unwrap();
    assert_eq!(loaded.manifest.generation, generation + 1, "one commit");
    let tail: Vec<String> = loaded.manifest.objects[1..]
        .iter()
        .map(|o| o.key.clone())
        .collect();
    assert_eq!(tail, keys);
}

/// At most [`UPLOADS_IN_FLIGHT_MAX`] objects are sealed and not committed.
#[test]
fn sealing_stops_at_the_uploads_in_flight_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(ringtail_objstore::local::LocalDir::open(dir.path()).unwrap());
    let (tier, _) = tier_with_objects(store, 0);
    for k in 0..=UPLOADS_IN_FLIGHT_MAX as i64 {
        let (header, bytes) = batch(k * 3, 3);
        tier.add([9; 16], 0, header, bytes);
        tier.request_seal();
        match tier.seal_if_due() {
            Some(_) => {
                assert!((k as usize) < UPLOADS_IN_FLIGHT_MAX);
                let slot = Rc::new(RefCell::new(PutState::Putting));
                tier.uploads.borrow_mut().push_back(slot);
            }
            None => assert_eq!(k as usize, UPLOADS_IN_FLIGHT_MAX, "sealed past the bound"),
        }
    }
    assert!(!tier.may_start_upload());
}

/// When the manifest has room for only some of the uploads ready, those commit and the rest
/// wait, in order, for room.
#[test]
fn uploads_the_manifest_has_room_for_commit_and_the_rest_wait() {
    let size = |objects| {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(ringtail_objstore::local::LocalDir::open(dir.path()).unwrap());
        let (tier, _) = tier_with_objects(store, objects);
        let len = tier.committed.borrow().manifest.encode().len();
        len
    };
    let per_object = size(3) - size(2);
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(ringtail_objstore::local::LocalDir::open(dir.path()).unwrap());
    let (mut tier, _) = tier_with_objects(store.clone(), 2);
    let limit = tier.committed.borrow().manifest.encode().len() + per_object + per_object / 2;
    tier.manifests = ManifestStore::with_bytes_max(store.clone(), 0, limit);
    let mut keys = Vec::new();
    for k in 2..4 {
        for partition in 0..2 {
            let (header, bytes) = batch(k * 3, 3);
            tier.add([9; 16], partition, header, bytes);
        }
        tier.request_seal();
        let s = tier.seal_if_due().unwrap();
        keys.push(s.key.clone());
        assert!(block_on(tier.put_sealed(&s)));
        tier.uploads
            .borrow_mut()
            .push_back(Rc::new(RefCell::new(PutState::Done(Uploaded {
                sealed: s,
                producers: Vec::new(),
            }))));
    }
    let first = block_on(tier.commit_uploads(Vec::new)).unwrap();
    assert_eq!(first.len(), 1, "room for one");
    assert_eq!(first[0].0, keys[0]);
    assert!(
        tier.has_uploads() && !tier.may_start_upload(),
        "the other waits"
    );
    assert!(block_on(tier.commit_uploads(Vec::new)).unwrap().is_empty());
    // Room again: the rest commits at its retry.
    tier.manifests = ManifestStore::new(store.clone(), 0);
    tier.stalled.borrow_mut().as_mut().unwrap().0 = Instant::now();
    let rest = block_on(tier.commit_uploads(Vec::new)).unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].0, keys[1]);
    assert!(tier.is_idle());
    let loaded = block_on(ManifestStore::new(store, 0).load())
        .unwrap()
        .unwrap();
    let tail: Vec<String> = loaded.manifest.objects[2..]
        .iter()
        .map(|o| o.key.clone())
        .collect();
    assert_eq!(tail, keys);
}
