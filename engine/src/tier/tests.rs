//! The tier against a real (local-directory) store: uploads, merges, fencing, refusals.

use super::*;
use futures::executor::block_on;
use kafka_protocol::records::Compression;
use ringtail_netio::batch::{split_and_validate, testing};
use std::collections::HashMap;
use std::future::Future as _;

fn batch(base: i64, n: i64) -> (ringtail_netio::header::BatchHeader, Bytes) {
    batch_of(
        base,
        (0..n).map(|i| Some(Bytes::from(format!("value-{base}-{i}")))),
    )
}

/// A batch of `values` at offset `base`.
fn batch_of(
    base: i64,
    values: impl IntoIterator<Item = Option<Bytes>>,
) -> (ringtail_netio::header::BatchHeader, Bytes) {
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
        let sealed = tier.seal_if_due(Vec::new).expect("a seal was requested");
        block_on(tier.upload(sealed)).unwrap();
    }
    (tier, written)
}

/// A local-directory store in a directory of its own (kept while the guard lives).
fn local_store() -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(ringtail_objstore::local::LocalDir::open(dir.path()).unwrap());
    (dir, store)
}

fn open_tier(store: Arc<dyn ObjectStore>, node: i32) -> Tier {
    let stats = Arc::new(ShardStats::new(0));
    block_on(Tier::open(
        store,
        0,
        node,
        1 << 20,
        Duration::from_secs(60),
        stats,
        &|| true,
    ))
    .unwrap()
}

/// Seals one object of one batch at offset `base` (not uploaded).
fn seal_one(tier: &Tier, base: i64) -> Sealed {
    let (header, bytes) = batch(base, 3);
    tier.add([9; 16], 0, header, bytes);
    tier.request_seal();
    tier.seal_if_due(Vec::new).expect("room for another upload")
}

/// Marks `sealed` as written (its PUT done) in the tier's queue of uploads.
fn written(tier: &Tier, slot: &Rc<RefCell<PutState>>, sealed: Sealed) {
    assert!(matches!(
        block_on(tier.put_sealed(&sealed)),
        PutEnd::Written
    ));
    *slot.borrow_mut() = PutState::Written(sealed);
    tier.advance();
}

fn queued(tier: &Tier) -> Rc<RefCell<PutState>> {
    let slot = Rc::new(RefCell::new(PutState::Putting));
    tier.uploads.borrow_mut().push_back(slot.clone());
    slot
}

#[test]
fn a_merge_keeps_offsets_and_bytes_in_one_commit() {
    let (_dir, store) = local_store();
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

/// A tier of `objects` committed objects whose manifest then has no room for one more: the next
/// upload commits, its fold is refused. Returns the tier and that upload's key.
fn tier_whose_fold_is_refused(store: Arc<dyn ObjectStore>, objects: i64) -> (Tier, String) {
    let (mut tier, _) = tier_with_objects(store.clone(), objects);
    let limit = tier.committed.borrow().manifest.encode().len() + 16;
    tier.manifests = ManifestStore::with_bytes_max(store, 0, limit);
    let sealed = seal_one(&tier, objects * 3);
    let key = sealed.key.clone();
    let refused = block_on(tier.upload(sealed));
    assert!(
        matches!(refused, Err(CommitError::TooLarge { .. })),
        "{refused:?}"
    );
    (tier, key)
}

/// A fold refused for the manifest's size loses nothing and blocks nothing: the object stays
/// committed (acknowledged, in the log), and once a deletion pass makes room the fold lands.
#[test]
fn a_fold_refused_for_the_manifests_size_waits_for_room() {
    let (_dir, store) = local_store();
    let (tier, key) = tier_whose_fold_is_refused(store.clone(), 2);
    assert!(!tier.is_fenced());
    assert!(tier.is_idle(), "committed: a shutdown flush need not wait");
    assert_eq!(tier.committed_objects().last().unwrap().key, key);
    assert!(!tier.fold_due(), "not retried before its time");
    assert!(
        block_on(tier.merge()).unwrap().is_none(),
        "three objects: nothing to merge"
    );
    // Retention drops the oldest object: room for one more.
    let (dropped, _) =
        block_on(tier.delete_data(|s| s.base_offset == 0, &HashMap::new(), |_| true)).unwrap();
    assert_eq!(dropped.len(), 2);
    tier.fold_refused_until.set(Some(Instant::now()));
    assert_eq!(block_on(tier.fold(true, Vec::new)).unwrap(), 1);
    let loaded = block_on(ManifestStore::new(store, 0).load())
        .unwrap()
        .unwrap();
    assert_eq!(loaded.manifest.objects.last().unwrap().key, key);
    assert!(tier.unfolded.borrow().is_empty());
}

/// A merge is a manifest commit like any other: an owner fenced by a take-over never lands
/// one, and the new owner's manifest keeps every object.
#[test]
fn a_fenced_owner_never_commits_a_merge() {
    let (_dir, store) = local_store();
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
    let (_dir, store) = local_store();
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
    // Its object, if its PUT went out before the flush began (the first poll may get that far
    // on a loaded machine), is left uncommitted: garbage the next start collects.
    let keys_after = block_on(store.list("")).unwrap().len();
    assert!(
        keys_after <= keys_before + 1,
        "{keys_after} keys after, {keys_before} before"
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

/// Uploads in flight commit in log order, each by its own PUT, and never overtake: uploads
/// whose PUTs are done wait for the one sealed before it, then all commit together — with no
/// manifest commit. The next owner's take-over folds them, in order.
#[test]
fn uploads_commit_in_log_order_by_their_own_put() {
    let (_dir, store) = local_store();
    let (tier, _) = tier_with_objects(store.clone(), 1);
    let heard = Rc::new(RefCell::new(Vec::new()));
    let h = heard.clone();
    tier.set_on_committed(move |key, _| h.borrow_mut().push(key));
    let generation = tier.committed.borrow().manifest.generation;
    let sealed: Vec<(Sealed, Rc<RefCell<PutState>>)> = (1..4)
        .map(|k| (seal_one(&tier, k * 3), queued(&tier)))
        .collect();
    let keys: Vec<String> = sealed.iter().map(|(s, _)| s.key.clone()).collect();
    let numbers: Vec<u64> = sealed.iter().map(|(s, _)| s.number).collect();
    assert_eq!(numbers, vec![numbers[0], numbers[0] + 1, numbers[0] + 2]);
    // The second and third PUTs finish first: nothing commits before the first.
    let mut sealed = sealed.into_iter();
    let (first, first_slot) = sealed.next().unwrap();
    for (s, slot) in sealed {
        written(&tier, &slot, s);
    }
    assert!(heard.borrow().is_empty());
    assert!(!tier.is_idle());
    written(&tier, &first_slot, first);
    assert_eq!(*heard.borrow(), keys, "all three, in log order");
    assert!(tier.is_idle());
    let committed: Vec<String> = tier.committed_objects()[1..]
        .iter()
        .map(|o| o.key.clone())
        .collect();
    assert_eq!(committed, keys);
    let loaded = block_on(ManifestStore::new(store.clone(), 0).load())
        .unwrap()
        .unwrap();
    assert_eq!(loaded.manifest.generation, generation, "no manifest commit");
    // A take-over (this broker restarting, or another) folds them.
    let next = open_tier(store, 2);
    let folded: Vec<(String, i32)> = next.committed_objects()[1..]
        .iter()
        .map(|o| (o.key.clone(), o.node))
        .collect();
    assert_eq!(
        folded,
        keys.iter().map(|k| (k.clone(), 1)).collect::<Vec<_>>(),
        "folded in order, with their writer's node"
    );
    let m = &next.committed.borrow().manifest;
    assert_eq!(m.log_next, numbers[2] + 1 + log::FENCE_GAP);
    assert_eq!(next.next_log.get(), m.log_next);
}

/// A take-over racing the old owner (L3): the old owner's PUT that lands first is folded; its
/// PUT at the fenced number is refused and stops it; what it wrote past the fence was never
/// committed, is never folded, and is swept.
#[test]
fn a_take_over_fences_the_old_owners_log() {
    let (_dir, store) = local_store();
    let (old, _) = tier_with_objects(store.clone(), 1);
    let (won, lost, late) = (seal_one(&old, 3), seal_one(&old, 6), seal_one(&old, 9));
    let (won_slot, lost_slot, late_slot) = (queued(&old), queued(&old), queued(&old));
    written(&old, &won_slot, won);
    // `late` lands before the take-over, `lost` after it: a gap at `lost`.
    assert!(matches!(block_on(old.put_sealed(&late)), PutEnd::Written));
    let late_key = late.key.clone();
    *late_slot.borrow_mut() = PutState::Written(late);
    let new = open_tier(store.clone(), 2);
    let keys: Vec<String> = new
        .committed_objects()
        .iter()
        .map(|o| o.key.clone())
        .collect();
    assert_eq!(keys.len(), 2, "the first object and `won`: {keys:?}");
    assert!(!keys.contains(&late_key));
    assert!(matches!(block_on(old.put_sealed(&lost)), PutEnd::Fenced));
    assert!(old.is_fenced());
    *lost_slot.borrow_mut() = PutState::GaveUp;
    old.advance();
    assert_eq!(old.committed_objects().len(), 2, "`late` never commits");
    // The new owner writes past the fence, and sweeps the fence and `late`.
    let fence = crate::layout::log_object(0, lost.number);
    assert!(block_on(store.head(&fence)).is_ok());
    assert_eq!(new.next_log.get(), lost.number + log::FENCE_GAP);
    assert_eq!(block_on(new.collect_garbage(true)), 1);
    assert!(block_on(store.head(&late_key)).is_err());
    assert!(block_on(store.head(&fence)).is_ok(), "fences stay");
    // An old owner still running cannot write at the fenced number after the sweep either.
    let again = block_on(store.put(&fence, Bytes::from_static(b"x"), Condition::IfNoneMatch));
    assert!(
        matches!(again, Err(StoreError::PreconditionFailed(_))),
        "{again:?}"
    );
    let sealed = seal_one(&new, 6);
    block_on(new.upload(sealed)).unwrap();
    // A third owner finds all of it, and nothing of the old owner's past the fence.
    let third = open_tier(store, 3);
    let nodes: Vec<i32> = third.committed_objects().iter().map(|o| o.node).collect();
    assert_eq!(nodes, vec![1, 1, 2]);
}

/// A PUT whose answer was lost is retried: the number is taken — by this writer's own object
/// (L2), which is not a fence.
#[test]
fn a_retried_put_finds_its_own_object() {
    let (_dir, store) = local_store();
    let (tier, _) = tier_with_objects(store.clone(), 0);
    let sealed = seal_one(&tier, 0);
    assert!(matches!(
        block_on(tier.put_sealed(&sealed)),
        PutEnd::Written
    ));
    assert!(matches!(
        block_on(tier.put_sealed(&sealed)),
        PutEnd::Written
    ));
    assert!(!tier.is_fenced());
    // Another opening of the same broker is another writer.
    let other = open_tier(store.clone(), 1);
    let late = seal_one(&tier, 3);
    let taken = crate::layout::log_object(0, other.next_log.get());
    let impostor = Sealed {
        key: taken,
        number: other.next_log.get(),
        ..late
    };
    block_on(other.upload(seal_one(&other, 3))).unwrap();
    assert!(matches!(
        block_on(tier.put_sealed(&impostor)),
        PutEnd::Fenced
    ));
}

/// The sweep at start never deletes the log's unfolded tail: committed objects the manifest
/// does not name yet.
#[test]
fn the_sweep_spares_the_unfolded_tail() {
    let (_dir, store) = local_store();
    let (tier, _) = tier_with_objects(store.clone(), 1);
    let sealed = seal_one(&tier, 3);
    let key = sealed.key.clone();
    written(&tier, &queued(&tier), sealed);
    assert_eq!(tier.unfolded.borrow().len(), 1);
    assert_eq!(block_on(tier.collect_garbage(true)), 0);
    assert!(block_on(store.head(&key)).is_ok());
}

/// At most [`UPLOADS_IN_FLIGHT_MAX`] objects are sealed and not committed.
#[test]
fn sealing_stops_at_the_uploads_in_flight_bound() {
    let (_dir, store) = local_store();
    let (tier, _) = tier_with_objects(store, 0);
    for k in 0..=UPLOADS_IN_FLIGHT_MAX as i64 {
        let (header, bytes) = batch(k * 3, 3);
        tier.add([9; 16], 0, header, bytes);
        tier.request_seal();
        match tier.seal_if_due(Vec::new) {
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

/// When the manifest has room for only some of the unfolded objects, a fold takes those and
/// the rest wait, in order, for room.
#[test]
fn a_fold_takes_what_the_manifest_has_room_for() {
    let size = |objects| {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(ringtail_objstore::local::LocalDir::open(dir.path()).unwrap());
        let (tier, _) = tier_with_objects(store, objects);
        let len = tier.committed.borrow().manifest.encode().len();
        len
    };
    let per_object = size(3) - size(2);
    let (_dir, store) = local_store();
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
        let s = tier.seal_if_due(Vec::new).unwrap();
        keys.push((s.key.clone(), s.number));
        written(&tier, &queued(&tier), s);
    }
    assert_eq!(
        block_on(tier.fold(true, Vec::new)).unwrap(),
        1,
        "room for one"
    );
    let loaded = block_on(ManifestStore::new(store.clone(), 0).load())
        .unwrap()
        .unwrap();
    assert_eq!(loaded.manifest.objects.last().unwrap().key, keys[0].0);
    assert_eq!(loaded.manifest.log_next, keys[0].1 + 1);
    assert_eq!(tier.unfolded.borrow().len(), 1, "the other waits");
    // Room again: the rest folds.
    tier.manifests = ManifestStore::new(store.clone(), 0);
    assert_eq!(block_on(tier.fold(true, Vec::new)).unwrap(), 1);
    let loaded = block_on(ManifestStore::new(store, 0).load())
        .unwrap()
        .unwrap();
    let tail: Vec<String> = loaded.manifest.objects[2..]
        .iter()
        .map(|o| o.key.clone())
        .collect();
    assert_eq!(tail, keys.into_iter().map(|k| k.0).collect::<Vec<_>>());
    assert_eq!(loaded.manifest.log_next, tier.next_log.get());
}

/// A take-over that wrote its fence and then failed (its lease lapsed before the commit) leaves
/// a fence the next take-over passes over, lists, and never sweeps: the owner it fenced may
/// still be retrying at that number.
#[test]
fn a_failed_take_overs_fence_is_kept() {
    let (_dir, store) = local_store();
    let (old, _) = tier_with_objects(store.clone(), 1);
    let stray = old.next_log.get();
    let calls = Cell::new(0);
    let lapses = || {
        calls.set(calls.get() + 1);
        calls.get() < 2
    };
    let manifests = ManifestStore::new(store.clone(), 0);
    let failed = block_on(log::take_over(&manifests, &store, 5, 77, &lapses));
    assert!(matches!(failed, Err(CommitError::Store(_))), "{failed:?}");
    let stray_key = crate::layout::log_object(0, stray);
    assert!(
        block_on(store.head(&stray_key)).is_ok(),
        "its fence was written"
    );
    assert!(matches!(
        block_on(old.put_sealed(&seal_one(&old, 3))),
        PutEnd::Fenced
    ));
    let next = open_tier(store.clone(), 2);
    let fences = next.committed.borrow().manifest.fences.clone();
    assert_eq!(
        fences.len(),
        3,
        "the first opening's, the stray one, its own: {fences:?}"
    );
    assert!(fences.contains(&stray));
    assert_eq!(block_on(next.collect_garbage(true)), 0);
    assert!(block_on(store.head(&stray_key)).is_ok());
    assert_eq!(next.committed_objects().len(), 1);
}

/// A take-over whose manifest has no room for everything the log holds folds what fits and
/// keeps the rest committed and unfolded (the slot opens; it used to be refused for good);
/// the next take-over reads on from the manifest's `log_next` and finds the rest.
#[test]
fn a_take_over_folds_what_the_manifest_has_room_for() {
    let (_dir, store) = local_store();
    let (old, _) = tier_with_objects(store.clone(), 2);
    let per_object = {
        let m = old.committed.borrow().manifest.clone();
        let mut one_less = m.clone();
        one_less.objects.pop();
        m.encode().len() - one_less.encode().len()
    };
    for k in 2..6 {
        written(&old, &queued(&old), seal_one(&old, k * 3));
    }
    assert_eq!(old.unfolded.borrow().len(), 4);
    let limit = old.committed.borrow().manifest.encode().len() + per_object * 3 / 2 + 64;
    let manifests = ManifestStore::with_bytes_max(store.clone(), 0, limit);
    let taken = block_on(log::take_over(&manifests, &store, 2, 7, &|| true)).unwrap();
    let folded = taken.committed.manifest.objects.len();
    assert!((3..6).contains(&folded), "{folded} folded");
    assert_eq!(folded + taken.unfolded.len(), 6);
    assert_eq!(
        taken.committed.manifest.log_next, taken.unfolded[0].number,
        "the rest is read again from there"
    );
    let third = open_tier(store, 3);
    assert_eq!(third.committed_objects().len(), 6);
    assert_eq!(third.committed.borrow().manifest.objects.len(), 6);
}

/// While no upload can start, the pending object grows only to its bound: then it waits whole
/// and the next begins, so that no upload is one unbounded PUT.
#[test]
fn pending_objects_are_bounded_while_uploads_are_full() {
    let (_dir, store) = local_store();
    let (tier, _) = tier_with_objects(store, 0);
    let slots: Vec<_> = (0..UPLOADS_IN_FLIGHT_MAX).map(|_| queued(&tier)).collect();
    let big = |base: i64| batch_of(base, [Some(Bytes::from(vec![7u8; 512 << 10]))]);
    let max = tier.object_bytes_max();
    let batch_len = big(0).1.len() as u64;
    let n = (max / batch_len) as i64 + 8;
    for base in 0..n {
        let (header, bytes) = big(base);
        tier.add([9; 16], 0, header, bytes);
    }
    tier.request_seal();
    assert!(tier.seal_if_due(Vec::new).is_none(), "no room");
    assert_eq!(tier.full.borrow().len(), 1);
    drop(slots);
    tier.uploads.borrow_mut().clear();
    let first = tier.seal_if_due(Vec::new).unwrap();
    let size = |s: &Sealed| s.index.spans.iter().map(|s| s.byte_len).sum::<u64>();
    assert!(size(&first) >= max && size(&first) < max + batch_len);
    assert_eq!(first.index.spans[0].base_offset, 0);
    let second = tier
        .seal_if_due(Vec::new)
        .expect("the rest, a seal was requested");
    assert_eq!(
        second.index.spans[0].base_offset,
        first.index.spans[0].last_offset + 1
    );
    assert!(tier.seal_if_due(Vec::new).is_none());
}

/// A fold refused for the manifest's size waits for room, and a merge makes it (with no
/// retention, nothing else would: merges used to wait for the fold).
#[test]
fn a_merge_makes_room_for_a_refused_fold() {
    let (_dir, store) = local_store();
    let (tier, _) = tier_whose_fold_is_refused(store, 9);
    let merged = block_on(tier.merge())
        .unwrap()
        .expect("9 small objects merge");
    assert_eq!(merged.replaced, 9);
    tier.fold_refused_until.set(Some(Instant::now()));
    assert_eq!(block_on(tier.fold(true, Vec::new)).unwrap(), 1);
    assert_eq!(tier.committed.borrow().manifest.objects.len(), 2);
}

/// A take-over reads a long unfolded tail (several read-ahead windows) whole
/// and in order.
#[test]
fn a_take_over_reads_a_long_tail_in_order() {
    let (_dir, store) = local_store();
    let (old, _) = tier_with_objects(store.clone(), 1);
    let mut keys: Vec<String> = old
        .committed_objects()
        .iter()
        .map(|o| o.key.clone())
        .collect();
    for k in 1..21 {
        let sealed = seal_one(&old, k * 3);
        keys.push(sealed.key.clone());
        written(&old, &queued(&old), sealed);
    }
    let next = open_tier(store, 2);
    let found: Vec<String> = next
        .committed_objects()
        .iter()
        .map(|o| o.key.clone())
        .collect();
    assert_eq!(found, keys);
}

/// The leader epochs of committed data reach the manifest by the owner's fold and by a
/// take-over's fold of the old owner's unfolded objects (from their indexes).
#[test]
fn leader_epochs_are_folded_by_the_owner_and_by_a_take_over() {
    let (_dir, store) = local_store();
    let add = |tier: &Tier, base: i64, epoch: i32| {
        let (header, bytes) = batch(base, 3);
        let (header, bytes) = stamped(header, bytes, epoch);
        tier.add([9; 16], 0, header, bytes);
        tier.request_seal();
        tier.seal_if_due(Vec::new).expect("room for another upload")
    };
    let old = open_tier(store.clone(), 1);
    assert_eq!(old.epoch(), 1);
    block_on(old.upload(add(&old, 0, 1))).unwrap();
    // Committed by its PUT, not folded: the next owner finds it in the log.
    let unfolded = add(&old, 3, 1);
    written(&old, &queued(&old), unfolded);
    let start = |epoch, offset| EpochStart {
        topic_id: [9; 16],
        partition: 0,
        epoch,
        offset,
    };
    assert_eq!(old.committed_epochs(), vec![start(1, 0)]);
    let new = open_tier(store.clone(), 2);
    assert_eq!(new.epoch(), 2);
    assert_eq!(new.committed_epochs(), vec![start(1, 0)]);
    block_on(new.upload(add(&new, 6, 2))).unwrap();
    assert_eq!(new.committed_epochs(), vec![start(1, 0), start(2, 6)]);
    let third = open_tier(store, 3);
    assert_eq!(third.committed_epochs(), vec![start(1, 0), start(2, 6)]);
}

/// `header` and `bytes` of a batch re-stamped with leader epoch `epoch` (as an append does).
fn stamped(
    header: ringtail_netio::header::BatchHeader,
    bytes: Bytes,
    epoch: i32,
) -> (ringtail_netio::header::BatchHeader, Bytes) {
    let mut b = bytes.to_vec();
    b[12..16].copy_from_slice(&epoch.to_be_bytes());
    (
        ringtail_netio::header::BatchHeader {
            partition_leader_epoch: epoch,
            ..header
        },
        Bytes::from(b),
    )
}
