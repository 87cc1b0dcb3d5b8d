//! Every backend behaves the same: the local directory, and S3 against a real SeaweedFS server
//! started here on loopback. Plus the fault-injecting wrapper.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::executor::block_on;
use ringtail_objstore::faulty::{Faults, Faulty};
use ringtail_objstore::local::LocalDir;
use ringtail_objstore::testing::Seaweed;
use ringtail_objstore::{Condition, ObjectStore, Part, StoreError};

fn data(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>(),
    )
}

fn conformance(store: &dyn ObjectStore) {
    // put / get / ranged get / head
    let body = data(100_000, 1);
    let etag = block_on(store.put("a/b/one", body.clone(), Condition::None)).unwrap();
    assert_eq!(block_on(store.get("a/b/one", None)).unwrap(), body);
    assert_eq!(
        block_on(store.get("a/b/one", Some(10..20))).unwrap(),
        body.slice(10..20)
    );
    assert_eq!(
        block_on(store.get("a/b/one", Some(99_990..100_000))).unwrap(),
        body.slice(99_990..)
    );
    let meta = block_on(store.head("a/b/one")).unwrap();
    assert_eq!((meta.size, meta.etag.clone()), (100_000, etag.clone()));
    // A body in pieces is the same object as the pieces joined.
    let pieces = vec![body.slice(..7), body.slice(7..70_000), body.slice(70_000..)];
    let tag = block_on(store.put_pieces("a/b/pieces", pieces, Condition::IfNoneMatch)).unwrap();
    assert_eq!(block_on(store.get("a/b/pieces", None)).unwrap(), body);
    assert_eq!(block_on(store.head("a/b/pieces")).unwrap().etag, tag);
    block_on(store.delete("a/b/pieces")).unwrap();
    assert!(matches!(
        block_on(store.get("a/b/missing", None)),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        block_on(store.head("a/b/missing")),
        Err(StoreError::NotFound(_))
    ));

    // Conditional writes: create-only, then compare-and-swap on the ETag.
    assert!(block_on(store.put("cas", data(10, 2), Condition::IfNoneMatch)).is_ok());
    assert!(matches!(
        block_on(store.put("cas", data(10, 3), Condition::IfNoneMatch)),
        Err(StoreError::PreconditionFailed(_))
    ));
    let current = block_on(store.head("cas")).unwrap().etag;
    let next =
        block_on(store.put("cas", data(10, 4), Condition::IfMatch(current.clone()))).unwrap();
    assert!(
        matches!(
            block_on(store.put("cas", data(10, 5), Condition::IfMatch(current))),
            Err(StoreError::PreconditionFailed(_))
        ),
        "a stale writer loses"
    );
    assert_eq!(block_on(store.get("cas", None)).unwrap(), data(10, 4));
    assert_eq!(block_on(store.head("cas")).unwrap().etag, next);

    // Multipart: 5 MiB + a small last part.
    let p1 = data(5 << 20, 6);
    let p2 = data(1234, 7);
    let id = block_on(store.create_multipart("big/obj")).unwrap();
    let part1 = block_on(store.upload_part("big/obj", &id, 1, p1.clone())).unwrap();
    let part2 = block_on(store.upload_part("big/obj", &id, 2, p2.clone())).unwrap();
    assert!(
        block_on(store.get("big/obj", None)).is_err(),
        "invisible until completed"
    );
    block_on(store.complete_multipart("big/obj", &id, vec![part1, part2])).unwrap();
    let whole = block_on(store.get("big/obj", None)).unwrap();
    assert_eq!(whole.len(), p1.len() + p2.len());
    assert_eq!(&whole[..p1.len()], &p1[..]);
    assert_eq!(
        block_on(store.get("big/obj", Some((5 << 20) - 2..(5 << 20) + 2))).unwrap(),
        {
            let mut v = p1.slice(p1.len() - 2..).to_vec();
            v.extend_from_slice(&p2[..2]);
            Bytes::from(v)
        }
    );
    let id = block_on(store.create_multipart("big/aborted")).unwrap();
    block_on(store.upload_part("big/aborted", &id, 1, data(10, 8))).unwrap();
    block_on(store.abort_multipart("big/aborted", &id)).unwrap();
    assert!(matches!(
        block_on(store.get("big/aborted", None)),
        Err(StoreError::NotFound(_))
    ));

    // list / delete
    let keys: Vec<String> = block_on(store.list(""))
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, vec!["a/b/one", "big/obj", "cas"]);
    let under: Vec<String> = block_on(store.list("a/"))
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(under, vec!["a/b/one"]);
    block_on(store.delete("a/b/one")).unwrap();
    block_on(store.delete("a/b/one")).unwrap(); // idempotent
    assert!(block_on(store.list("a/")).unwrap().is_empty());
}

#[test]
fn local_directory_backend() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalDir::open(dir.path()).unwrap();
    conformance(&store);
    assert!(block_on(store.put("../escape", data(1, 1), Condition::None)).is_err());
    // A part that does not match its ETag is refused at completion.
    let id = block_on(store.create_multipart("x")).unwrap();
    block_on(store.upload_part("x", &id, 1, data(10, 1))).unwrap();
    let bad = Part {
        number: 1,
        etag: "nope".into(),
    };
    assert!(block_on(store.complete_multipart("x", &id, vec![bad])).is_err());
}

/// Issue 17 item 14: a LIST (or HEAD) of the local directory reads no object's content: the
/// ETag comes from the attribute stored with the file (a LIST of a slot's objects at start read
/// every byte of them). Shown by changing a file behind the store's back: the ETag stays the
/// one the write returned. A file without the attribute gets its content's ETag.
#[test]
fn local_directory_lists_without_reading_objects() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalDir::open(dir.path()).unwrap();
    let etag =
        block_on(store.put("shards/0/objects/1", data(1 << 20, 1), Condition::None)).unwrap();
    block_on(store.put("cluster/brokers/0", data(10, 2), Condition::None)).unwrap();
    // The same length, other bytes, same file.
    std::fs::write(dir.path().join("shards/0/objects/1"), data(1 << 20, 9)).unwrap();
    let listed = block_on(store.list("shards/0/objects/")).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].size, listed[0].etag.clone()),
        (1 << 20, etag.clone())
    );
    assert_eq!(
        block_on(store.head("shards/0/objects/1")).unwrap().etag,
        etag
    );
    // Written by something else: no attribute, so the content decides.
    std::fs::write(dir.path().join("shards/0/objects/2"), data(10, 2)).unwrap();
    let brokers = block_on(store.head("cluster/brokers/0")).unwrap().etag;
    assert_eq!(
        block_on(store.head("shards/0/objects/2")).unwrap().etag,
        brokers
    );
    let keys: Vec<String> = block_on(store.list("shards/"))
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(keys, vec!["shards/0/objects/1", "shards/0/objects/2"]);
    assert!(block_on(store.list("../")).is_err());
}

#[test]
fn fault_injection_throttles_fails_and_goes_down() {
    let dir = tempfile::tempdir().unwrap();
    let store = Faulty::new(
        LocalDir::open(dir.path()).unwrap(),
        Faults {
            throttle_ppm: 200_000,
            error_ppm: 100_000,
            ..Faults::default()
        },
        42,
    );
    let mut failed = 0;
    for i in 0..200 {
        match block_on(store.put(&format!("k/{i}"), data(100, 1), Condition::None)) {
            Ok(_) => {}
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                failed += 1;
            }
        }
    }
    assert!(
        (30..=90).contains(&failed),
        "about 30% of 200 requests fail: {failed}"
    );
    assert_eq!(store.injected(), failed);
    let stored = block_on(store.list("k/")).unwrap().len() as u64;
    assert_eq!(
        stored,
        200 - failed,
        "a faulted put never reaches the store"
    );
    store.set_faults(Faults {
        latency: Duration::from_millis(30),
        ..Faults::default()
    });
    let t = Instant::now();
    block_on(store.put("slow", data(1, 1), Condition::None)).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(30));
    store.set_faults(Faults::default());
    store.set_down(true);
    assert!(matches!(
        block_on(store.get("slow", None)),
        Err(StoreError::Transient(_))
    ));
    store.set_down(false);
    assert_eq!(block_on(store.get("slow", None)).unwrap(), data(1, 1));
}

#[test]
fn s3_backend_against_seaweedfs() {
    let weed = Seaweed::start();
    let store = weed.ready_store("conformance/");
    conformance(&store);
    // The prefix isolates: another prefix sees nothing of it.
    let other = weed.store("elsewhere/");
    assert!(block_on(other.list("")).unwrap().is_empty());
    // A stopped server gives retryable errors, not a hang or a panic.
    drop(weed);
    let err = block_on(store.get("cas", None)).unwrap_err();
    assert!(err.is_retryable(), "{err}");
}
