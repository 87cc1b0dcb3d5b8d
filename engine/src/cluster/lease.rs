//! Node leases in the object store: the first piece of cluster mode.
//!
//! A broker with an object store holds the lease `cluster/brokers/<node id>` while it runs: it
//! creates it (`If-None-Match: *`) or takes it over (`If-Match: <etag>`), and renews it every
//! quarter of `--lease-ms` (checked on rounds of a sixth: in effect every third) by rewriting it
//! under `If-Match`. Liveness is judged without trusting
//! anyone's wall clock: an observer calls a lease expired when its ETag has not changed for a
//! whole lease duration *on the observer's own monotonic clock* ([`Observer`]).
//!
//! Invariants (tested here and in `tests/cluster_lease.rs`):
//! * At most one running process holds a node id's lease: a second broker started with the same
//!   node id sees the holder's renewals and refuses to start, naming the holder.
//! * A lease whose holder died is taken over after one lease duration of silence, by exactly one
//!   taker (the conditional write picks it).
//! * A holder that finds its lease rewritten by someone else (a renewal answered 412) has been
//!   replaced: it stops the process rather than serve as a zombie. The shards' manifests are
//!   fenced by their own epochs regardless (`manifest.rs`), so this is defence in depth, not the
//!   safety argument.
//! * A clean shutdown deletes the lease, so a restart does not wait.
//!
//! The functions here wait by sleeping their thread: they run at start-up and on the lease's
//! own thread (`futures::executor::block_on`), never on a shard.

use std::time::{Duration, Instant};

use ringtail_objstore::{Condition, ObjectStore, StoreError};
use serde::{Deserialize, Serialize};

/// A drain request (`ringtail admin drain`) asks the node to hand its slots over and stop; the
/// broker sees it in its membership round and deletes it when it has stopped.
pub use crate::layout::{drain as drain_key, lease as lease_key};

/// What a lease object holds (JSON): who holds it, for humans and for refusals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub node_id: i32,
    /// Random per process start: tells a restarted holder from its previous incarnation.
    pub incarnation: String,
    /// The holder's Kafka listener.
    pub listener: String,
    /// Renewals so far (every renewal changes the object, hence its ETag).
    pub renewals: u64,
    /// Slots open on this broker or claimed by it (cluster mode; see cluster.rs).
    #[serde(default)]
    pub open: Vec<u32>,
    /// Handing everything over before it stops.
    #[serde(default)]
    pub draining: bool,
    /// The ownership epoch of each slot open here: its partitions' leader epoch, which every
    /// broker's Metadata names.
    #[serde(default)]
    pub epochs: std::collections::BTreeMap<u32, u64>,
    /// The replicated WAL's listener, one `host:port` per shard (empty: no replicas here).
    #[serde(default)]
    pub replication: Vec<String>,
    /// The holder's rack (`--rack`), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
    /// The followers and ISR of each slot open here that streams to followers.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub replicas: std::collections::BTreeMap<u32, crate::cluster::replica_sets::ReplicaSet>,
}

/// A lease someone else holds, as watched from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No lease object.
    Absent,
    /// Changed within the last lease duration (or first seen just now): treat as alive.
    Alive,
    /// Unchanged for a whole lease duration on this observer's clock.
    Expired,
    /// Changed since an earlier observation: its holder is renewing it.
    Renewed,
}

/// Judges a lease from successive observations of its ETag (pure: no I/O, time passed in).
pub struct Observer {
    duration: Duration,
    last: Option<(String, Instant)>,
}

impl Observer {
    pub fn new(duration: Duration) -> Observer {
        Observer {
            duration,
            last: None,
        }
    }

    pub fn observe(&mut self, etag: Option<&str>, now: Instant) -> Verdict {
        let Some(etag) = etag else {
            self.last = None;
            return Verdict::Absent;
        };
        match &self.last {
            Some((seen, since)) if seen == etag => {
                if now.duration_since(*since) >= self.duration {
                    Verdict::Expired
                } else {
                    Verdict::Alive
                }
            }
            Some(_) => {
                self.last = Some((etag.to_string(), now));
                Verdict::Renewed
            }
            None => {
                self.last = Some((etag.to_string(), now));
                Verdict::Alive
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "node id {node_id} is held by a running broker (listener {listener}, incarnation \
         {incarnation}): stop it, or start this one with another --node-id"
    )]
    Held {
        node_id: i32,
        listener: String,
        incarnation: String,
    },
    #[error("the lease of node id {0} was taken over by another process")]
    Lost(i32),
    #[error("object store: {0}")]
    Store(#[from] StoreError),
    #[error("lease object {0} is not a lease: {1}")]
    Corrupt(String, String),
}

/// A lease this process holds.
pub struct Lease {
    pub record: LeaseRecord,
    etag: String,
    pub duration: Duration,
    /// When the last successful write of the lease was sent: no other broker can judge it
    /// expired before this plus `duration` (their silence clock starts after they see it).
    pub written_at: Instant,
}

/// How long start-up retries a store that fails with retryable errors.
const STORE_RETRY_MAX: Duration = Duration::from_secs(60);

/// The lease's ETag and record, or None if there is none.
async fn read(
    store: &dyn ObjectStore,
    key: &str,
    known: Option<&(String, LeaseRecord)>,
) -> Result<Option<(String, LeaseRecord)>, LeaseError> {
    let meta = match store.head(key).await {
        Ok(m) => m,
        Err(StoreError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // The same version as last read: its body is known.
    if let Some(known) = known.filter(|(etag, _)| *etag == meta.etag) {
        return Ok(Some(known.clone()));
    }
    let body = match store.get(key, None).await {
        Ok(b) => b,
        Err(StoreError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let record: LeaseRecord = serde_json::from_slice(&body)
        .map_err(|e| LeaseError::Corrupt(key.to_string(), e.to_string()))?;
    Ok(Some((meta.etag, record)))
}

/// Takes node `record.node_id`'s lease: at once if nobody holds it, after one lease duration
/// of silence if its holder died, never while its holder renews it.
pub async fn acquire(
    store: &dyn ObjectStore,
    record: LeaseRecord,
    duration: Duration,
) -> Result<Lease, LeaseError> {
    let key = lease_key(record.node_id);
    let body = serde_json::to_vec(&record).expect("serialisable");
    let mut observer = Observer::new(duration);
    let poll = (duration / 8).max(Duration::from_millis(20));
    let started = Instant::now();
    let mut waited_logged = false;
    loop {
        let current = match read(store, &key, None).await {
            Ok(c) => c,
            Err(LeaseError::Store(e))
                if e.is_retryable() && started.elapsed() < STORE_RETRY_MAX =>
            {
                tracing::warn!(error = %e, "reading the node lease failed; retrying");
                std::thread::sleep(poll);
                continue;
            }
            Err(e) => return Err(e),
        };
        let verdict = observer.observe(current.as_ref().map(|(e, _)| e.as_str()), Instant::now());
        let condition = match (&current, verdict) {
            (None, _) => Condition::IfNoneMatch,
            (Some((etag, _)), Verdict::Expired) => Condition::IfMatch(etag.clone()),
            (Some((_, held)), Verdict::Renewed) => {
                return Err(LeaseError::Held {
                    node_id: record.node_id,
                    listener: held.listener.clone(),
                    incarnation: held.incarnation.clone(),
                })
            }
            (Some((_, held)), _) => {
                if !waited_logged {
                    tracing::info!(
                        node_id = record.node_id,
                        holder = %held.listener,
                        wait_ms = duration.as_millis() as u64,
                        "the node lease exists: waiting to see whether its holder renews it"
                    );
                    waited_logged = true;
                }
                std::thread::sleep(poll);
                continue;
            }
        };
        let sent = Instant::now();
        match store.put(&key, body.clone().into(), condition).await {
            Ok(etag) => {
                return Ok(Lease {
                    record,
                    etag,
                    duration,
                    written_at: sent,
                })
            }
            // Someone else created, renewed or took it meanwhile: look again.
            Err(StoreError::PreconditionFailed(_)) => observer = Observer::new(duration),
            Err(e) if e.is_retryable() && started.elapsed() < STORE_RETRY_MAX => {
                tracing::warn!(error = %e, "writing the node lease failed; retrying");
                std::thread::sleep(poll);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Watches the other brokers' leases from round to round (cluster membership).
pub struct PeerWatch {
    me: i32,
    duration: Duration,
    /// Per lease key: its observer, and the version last read (fetched again only when its
    /// ETag changes).
    peers: std::collections::HashMap<String, (Observer, Option<(String, LeaseRecord)>)>,
    /// Whether the last listing found a drain request for this broker.
    pub drain_requested: bool,
    /// When the leases were last listed.
    listed_at: Option<Instant>,
}

impl PeerWatch {
    pub fn new(me: i32, duration: Duration) -> PeerWatch {
        PeerWatch {
            me,
            duration,
            peers: std::collections::HashMap::new(),
            drain_requested: false,
            listed_at: None,
        }
    }

    /// Reads the other leases (see below for which); returns those not (yet) expired. A lease seen for the
    /// first time counts as alive: only a whole lease duration of silence makes it dead.
    ///
    /// Which leases exist is listed when `list` is set and at least once a lease duration;
    /// between listings the known ones are read (a LIST costs as much as a PUT on S3, a HEAD a
    /// twelfth). A broker that joins is seen within a lease duration, its drain requests too.
    pub async fn poll(
        &mut self,
        store: &dyn ObjectStore,
        list: bool,
    ) -> Result<Vec<LeaseRecord>, LeaseError> {
        let due = self.listed_at.is_none_or(|t| t.elapsed() >= self.duration);
        let keys: Vec<String> = if list || due {
            let listed: Vec<String> = store
                .list(crate::layout::BROKERS)
                .await?
                .into_iter()
                .map(|m| m.key)
                .collect();
            self.listed_at = Some(Instant::now());
            self.drain_requested = listed.contains(&drain_key(self.me));
            let keys: Vec<String> = listed
                .into_iter()
                .filter(|k| k != &lease_key(self.me) && !crate::layout::is_drain(k))
                .collect();
            self.peers.retain(|k, _| keys.contains(k));
            keys
        } else {
            self.peers.keys().cloned().collect()
        };
        let mut live = Vec::new();
        for key in keys {
            let (observer, known) = self
                .peers
                .entry(key.clone())
                .or_insert_with(|| (Observer::new(self.duration), None));
            let current = match read(store, &key, known.as_ref()).await {
                Ok(c) => c,
                Err(LeaseError::Corrupt(k, e)) => {
                    tracing::warn!(key = k, error = e, "ignoring a lease that does not parse");
                    continue;
                }
                Err(e) => return Err(e),
            };
            known.clone_from(&current);
            match observer.observe(current.as_ref().map(|(e, _)| e.as_str()), Instant::now()) {
                Verdict::Alive | Verdict::Renewed => live.extend(current.map(|(_, r)| r)),
                Verdict::Absent | Verdict::Expired => {}
            }
        }
        Ok(live)
    }
}

impl Lease {
    /// Rewrites the lease under `If-Match`; `Lost` if someone else rewrote it.
    ///
    /// A 412 is not always another holder: a write of ours can land without its answer reaching
    /// us (the client retries it, or an earlier renewal gave up waiting), and the lease then has
    /// an ETag we never saw. If the lease holds our incarnation, it is ours: its ETag is taken
    /// and the write repeated (with what we announce now, not that older body).
    pub async fn renew(&mut self, store: &dyn ObjectStore) -> Result<(), LeaseError> {
        let key = lease_key(self.record.node_id);
        let mut next = self.record.clone();
        for _ in 0..3 {
            next.renewals += 1;
            let body = serde_json::to_vec(&next).expect("serialisable");
            let sent = Instant::now();
            match store
                .put(&key, body.into(), Condition::IfMatch(self.etag.clone()))
                .await
            {
                Ok(etag) => {
                    self.etag = etag;
                    self.record = next;
                    self.written_at = sent;
                    return Ok(());
                }
                Err(StoreError::PreconditionFailed(_)) => match read(store, &key, None).await? {
                    Some((etag, held)) if held.incarnation == self.record.incarnation => {
                        tracing::info!(
                            "the lease holds a write of ours whose answer was lost: writing again"
                        );
                        self.etag = etag;
                        next.renewals = next.renewals.max(held.renewals);
                    }
                    _ => return Err(LeaseError::Lost(next.node_id)),
                },
                Err(e) => return Err(e.into()),
            }
        }
        Err(LeaseError::Lost(next.node_id))
    }

    /// Deletes the lease (clean shutdown) unless someone else holds it by now.
    pub async fn release(self, store: &dyn ObjectStore) {
        let key = lease_key(self.record.node_id);
        if let Ok(meta) = store.head(&key).await {
            if meta.etag == self.etag {
                let _ = store.delete(&key).await;
            }
        }
    }

    /// Renews every third of the lease duration on a thread of its own until `stop` is set;
    /// calls `lost` (which should end the process) if the lease was taken over.
    #[cfg(test)]
    pub fn keep(
        mut self,
        store: std::sync::Arc<dyn ObjectStore>,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
        lost: impl FnOnce(LeaseError) + Send + 'static,
    ) -> std::thread::JoinHandle<Lease> {
        std::thread::Builder::new()
            .name("ringtail-lease".into())
            .spawn(move || {
                let every = self.duration / 3;
                let mut last_ok = Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(every);
                    match futures::executor::block_on(self.renew(store.as_ref())) {
                        Ok(()) => last_ok = Instant::now(),
                        Err(e @ LeaseError::Lost(_)) => {
                            lost(e);
                            break;
                        }
                        Err(e) => {
                            let level_high = last_ok.elapsed() >= self.duration;
                            if level_high {
                                tracing::error!(error = %e, silent_ms = last_ok.elapsed().as_millis() as u64, "the node lease was not renewed for a whole lease duration: another broker may take this node over");
                            } else {
                                tracing::warn!(error = %e, "renewing the node lease failed; retrying");
                            }
                        }
                    }
                }
                self
            })
            .expect("spawn the lease thread")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn expiry_is_judged_by_silence_on_the_observers_clock() {
        let d = Duration::from_secs(2);
        let t0 = Instant::now();
        let mut o = Observer::new(d);
        assert_eq!(o.observe(None, t0), Verdict::Absent);
        assert_eq!(
            o.observe(Some("a"), t0),
            Verdict::Alive,
            "first sight: unknown yet"
        );
        assert_eq!(o.observe(Some("a"), t0 + d / 2), Verdict::Alive);
        assert_eq!(o.observe(Some("b"), t0 + d), Verdict::Renewed);
        assert_eq!(o.observe(Some("b"), t0 + d + d / 2), Verdict::Alive);
        assert_eq!(o.observe(Some("b"), t0 + 2 * d), Verdict::Expired);
        assert_eq!(o.observe(None, t0 + 3 * d), Verdict::Absent);
    }

    fn record(node: i32, who: &str) -> LeaseRecord {
        LeaseRecord {
            node_id: node,
            incarnation: who.into(),
            listener: format!("{who}:9092"),
            renewals: 0,
            open: Vec::new(),
            draining: false,
            epochs: Default::default(),
            replicas: Default::default(),
            replication: Vec::new(),
            rack: None,
        }
    }

    #[test]
    fn peers_are_listed_when_asked_or_once_a_lease_and_read_in_between() {
        let dir = tempfile::tempdir().unwrap();
        let store = ringtail_objstore::local::LocalDir::open(dir.path()).unwrap();
        let d = Duration::from_millis(300);
        futures::executor::block_on(async {
            let nodes = |live: Vec<LeaseRecord>| live.iter().map(|r| r.node_id).collect::<Vec<_>>();
            let mut w = PeerWatch::new(1, d);
            let two = acquire(&store, record(2, "b"), d).await.unwrap();
            assert_eq!(
                nodes(w.poll(&store, false).await.unwrap()),
                vec![2],
                "first poll lists"
            );
            let _three = acquire(&store, record(3, "c"), d).await.unwrap();
            assert_eq!(
                nodes(w.poll(&store, false).await.unwrap()),
                vec![2],
                "not listed yet"
            );
            let mut live = nodes(w.poll(&store, true).await.unwrap());
            live.sort();
            assert_eq!(live, vec![2, 3]);
            // A released lease is gone at the next read, listed or not.
            two.release(&store).await;
            assert_eq!(nodes(w.poll(&store, false).await.unwrap()), vec![3]);
            // A drain request is seen at the next listing (at the latest a lease later).
            store
                .put(&drain_key(1), bytes::Bytes::new(), Condition::None)
                .await
                .unwrap();
            w.poll(&store, false).await.unwrap();
            assert!(!w.drain_requested);
            std::thread::sleep(d);
            w.poll(&store, false).await.unwrap();
            assert!(w.drain_requested);
        });
    }

    #[test]
    fn one_holder_at_a_time_and_a_dead_holder_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(ringtail_objstore::local::LocalDir::open(dir.path()).unwrap());
        let d = Duration::from_millis(300);
        futures::executor::block_on(async {
            let mut a = acquire(store.as_ref(), record(1, "a"), d).await.unwrap();
            // Another node id is independent.
            let other = acquire(store.as_ref(), record(2, "x"), d).await.unwrap();
            // While `a` renews, `b` is refused, naming `a`.
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            a.renew(store.as_ref()).await.unwrap();
            let keeper = a.keep(store.clone(), stop.clone(), |e| panic!("{e}"));
            match acquire(store.as_ref(), record(1, "b"), d).await {
                Err(LeaseError::Held { listener, .. }) => assert_eq!(listener, "a:9092"),
                other => panic!("{:?}", other.map(|l| l.record)),
            }
            // `a` stops renewing (it died): `b` takes over after a lease duration of silence.
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let mut a = keeper.join().unwrap();
            let t = Instant::now();
            let b = acquire(store.as_ref(), record(1, "b"), d).await.unwrap();
            assert!(t.elapsed() >= d, "waited for the silence");
            // The old holder's next renewal finds it lost; its release leaves b's lease alone.
            assert!(matches!(
                a.renew(store.as_ref()).await,
                Err(LeaseError::Lost(1))
            ));
            a.release(store.as_ref()).await;
            assert!(store.head(&lease_key(1)).await.is_ok());
            // A write of b's own that landed unanswered (its ETag unknown to b) is not a loss.
            let mut b = b;
            let mut landed = b.record.clone();
            landed.renewals += 1;
            store
                .put(
                    &lease_key(1),
                    serde_json::to_vec(&landed).unwrap().into(),
                    Condition::IfMatch(b.etag.clone()),
                )
                .await
                .unwrap();
            b.record.open = vec![4];
            b.renew(store.as_ref()).await.unwrap();
            let (_, held) = read(store.as_ref(), &lease_key(1), None)
                .await
                .unwrap()
                .unwrap();
            assert_eq!((held.open, held.incarnation.as_str()), (vec![4], "b"));
            assert!(held.renewals > landed.renewals);
            // A clean release lets the next start go at once.
            b.release(store.as_ref()).await;
            let t = Instant::now();
            acquire(store.as_ref(), record(1, "c"), d).await.unwrap();
            assert!(t.elapsed() < d);
            other.release(store.as_ref()).await;
        });
    }
}
