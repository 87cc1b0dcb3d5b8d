//! Manifest commits fence stale owners: on the local directory store and on real S3
//! (SeaweedFS), a writer that lost ownership can never commit again.

use std::sync::Arc;

use futures::executor::block_on;
use ringtail_engine::tier::manifest::{CommitError, ManifestStore, ObjectRef};
use ringtail_objstore::local::LocalDir;
use ringtail_objstore::testing::Seaweed;
use ringtail_objstore::ObjectStore;

fn object(n: u64) -> ObjectRef {
    ObjectRef {
        key: format!("shards/0000/objects/{n}.rto"),
        size: n,
        spans: Vec::new(),
        node: 0,
    }
}

fn fencing(store: Arc<dyn ObjectStore>) {
    let a = ManifestStore::new(store.clone(), 0);
    let b = ManifestStore::new(store.clone(), 0);
    // A becomes the owner (epoch 1) and commits twice.
    let mut a_cur = block_on(a.take_over(&|| true)).unwrap();
    assert_eq!((a_cur.manifest.epoch, a_cur.manifest.generation), (1, 0));
    for n in 0..2 {
        let mut next = a_cur.manifest.clone();
        next.objects.push(object(n));
        a_cur = block_on(a.commit(Some(&a_cur), next)).unwrap();
    }
    assert_eq!(a_cur.manifest.generation, 2);
    // B takes over: epoch 2, same contents.
    let b_cur = block_on(b.take_over(&|| true)).unwrap();
    assert_eq!(b_cur.manifest.epoch, 2);
    assert_eq!(b_cur.manifest.objects, a_cur.manifest.objects);
    // A's next commit is refused, whatever it carries.
    let mut next = a_cur.manifest.clone();
    next.objects.push(object(99));
    match block_on(a.commit(Some(&a_cur), next)) {
        Err(CommitError::Fenced {
            epoch: 1,
            newer_epoch: Some(2),
            ..
        }) => {}
        other => panic!("stale owner was not fenced: {other:?}"),
    }
    // A cannot sneak in a first version either.
    let fresh = ringtail_engine::tier::manifest::ShardManifest::empty(0, 1);
    assert!(matches!(
        block_on(a.commit(None, fresh)),
        Err(CommitError::Fenced { .. })
    ));
    // B carries on; what is stored is B's.
    let mut next = b_cur.manifest.clone();
    next.objects.push(object(2));
    let b_cur = block_on(b.commit(Some(&b_cur), next)).unwrap();
    let stored = block_on(b.load()).unwrap().unwrap();
    assert_eq!(stored, b_cur);
    assert_eq!(stored.manifest.objects.len(), 3);
    assert!(stored
        .manifest
        .objects
        .iter()
        .all(|o| o.key != object(99).key));
}

#[test]
fn stale_owner_is_fenced_on_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    fencing(Arc::new(LocalDir::open(dir.path()).unwrap()));
}

#[test]
fn stale_owner_is_fenced_on_s3() {
    let weed = Seaweed::start();
    fencing(Arc::new(weed.ready_store("fencing/")));
}
