//! The idempotent producer (librdkafka `enable.idempotence=true`) through a loopback proxy that
//! now and then lets a Produce through, swallows the broker's answer and cuts the connection:
//! the producer retries batches that were written; the broker answers each retry with the
//! original offset. Afterwards each partition holds every record exactly once, in order.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::TestBroker;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Forwards connections to `upstream`; for every `every`-th Produce request (up to `cuts`
/// times) it forwards the request, swallows the broker's answer and cuts the connection — the
/// batch is written but the producer never hears so, and must retry it.
struct CuttingProxy {
    cut: Arc<AtomicUsize>,
}

fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut size = [0u8; 4];
    s.read_exact(&mut size).ok()?;
    let mut frame = size.to_vec();
    frame.resize(4 + i32::from_be_bytes(size) as usize, 0);
    s.read_exact(&mut frame[4..]).ok()?;
    Some(frame)
}

impl CuttingProxy {
    fn start(
        listener: TcpListener,
        upstream: SocketAddr,
        every: usize,
        cuts: usize,
    ) -> CuttingProxy {
        let cut = Arc::new(AtomicUsize::new(0));
        let produces = Arc::new(AtomicUsize::new(0));
        let done = cut.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let swallow = Arc::new(AtomicBool::new(false));
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (flag, produces, done_up) = (swallow.clone(), produces.clone(), done.clone());
                std::thread::spawn(move || {
                    while let Some(frame) = read_frame(&mut c_in) {
                        let api_key = i16::from_be_bytes([frame[4], frame[5]]);
                        if api_key == 0
                            && (produces.fetch_add(1, Ordering::Relaxed) + 1) % every == 0
                            && done_up.load(Ordering::Relaxed) < cuts
                        {
                            flag.store(true, Ordering::Relaxed);
                        }
                        if s_out.write_all(&frame).is_err() {
                            break;
                        }
                    }
                    let _ = s_out.shutdown(Shutdown::Both);
                });
                let (mut s_in, mut c_out, done) = (server, client, done.clone());
                std::thread::spawn(move || {
                    while let Some(frame) = read_frame(&mut s_in) {
                        if swallow.load(Ordering::Relaxed) {
                            done.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        if c_out.write_all(&frame).is_err() {
                            break;
                        }
                    }
                    let _ = c_out.shutdown(Shutdown::Both);
                    let _ = s_in.shutdown(Shutdown::Both);
                });
            }
        });
        CuttingProxy { cut }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_batches_land_exactly_once_through_connection_cuts() {
    const RECORDS: usize = 10_000;
    const PARTITIONS: i32 = 3;
    const CUTS: usize = 10;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let advertised = listener.local_addr().unwrap().to_string();
    let b = TestBroker::start(&["--shards", "2", "--advertised-listener", &advertised]);
    let proxy = CuttingProxy::start(listener, b.addr, 25, CUTS);
    common::create_topic(&advertised, "idem", PARTITIONS, &[]).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &advertised)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", "50")
        .set("message.timeout.ms", "120000")
        .set("reconnect.backoff.ms", "10")
        .create()
        .unwrap();
    for chunk in (0..RECORDS).collect::<Vec<_>>().chunks(300) {
        let sends = chunk.iter().map(|&i| {
            let producer = producer.clone();
            async move {
                let v = i.to_string();
                let record = FutureRecord::<(), String>::to("idem")
                    .partition((i % PARTITIONS as usize) as i32)
                    .payload(&v);
                producer
                    .send(record, Duration::from_secs(120))
                    .await
                    .unwrap_or_else(|(e, _)| panic!("record {i}: {e}"));
            }
        });
        futures::future::join_all(sends).await;
    }
    let cuts = proxy.cut.load(Ordering::Relaxed);

    let (read, _) = common::read_all(&advertised, "idem", PARTITIONS);
    let mut per_partition: Vec<Vec<usize>> = vec![Vec::new(); PARTITIONS as usize];
    for ((p, _), v) in &read {
        per_partition[*p as usize].push(String::from_utf8(v.clone()).unwrap().parse().unwrap());
    }
    for (p, got) in per_partition.iter().enumerate() {
        let want: Vec<usize> = (0..RECORDS)
            .filter(|i| i % PARTITIONS as usize == p)
            .collect();
        assert_eq!(got.len(), want.len(), "partition {p}: no duplicate, no gap");
        assert!(got == &want, "partition {p}: every record once, in order");
    }
    let answered = b.log_count("duplicate batch answered");
    println!(
        "{RECORDS} records through {cuts} lost produce answers; {answered} retried batches answered with their original offsets"
    );
    assert!(cuts >= CUTS / 2, "the proxy swallowed answers: {cuts}");
    assert!(
        answered >= 1,
        "retries of written batches reached the broker"
    );
}

/// One idempotent batch of `n` records from `producer_id`/`epoch` starting at `sequence`.
fn idempotent_batch(producer_id: i64, epoch: i16, sequence: i32, n: i32) -> bytes::Bytes {
    let values: Vec<String> = (0..n).map(|i| format!("{sequence}+{i}")).collect();
    let values: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
    common::raw::idempotent_records(producer_id, epoch, sequence, &values)
}

/// One acks=all Produce of `batch` to partition 0 of `topic`: (error code, base offset).
fn produce_to(raw: &mut common::raw::Raw, topic: &str, batch: bytes::Bytes) -> (i16, i64) {
    raw.produce(topic, 0, batch, -1)
}

/// InitProducerId for an idempotent producer: a fresh id for (-1, -1), else the epoch bump of
/// `id`/`epoch` (KIP-360). Returns (id, epoch).
fn init_producer_id(raw: &mut common::raw::Raw, id: i64, epoch: i16) -> (i64, i16) {
    raw.init_producer_id_from(id, epoch)
}

/// durability=object: a retry of a batch that is in the bucket already is answered at once
/// with its original offset (its answer waited for an upload that had nothing left to upload,
/// until another write to the partition came — after a takeover, a producer holding its
/// retries could wait a minute).
#[test]
fn a_retry_of_an_uploaded_batch_is_answered_at_once() {
    let b = TestBroker::start(&["--shards", "1", "--object-age-max-ms", "20"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(common::create_topic(
        &b.bootstrap(),
        "obj",
        1,
        &[("durability", "object")],
    ));
    let mut raw = common::raw::Raw::connect(b.addr);
    let (pid, epoch) = init_producer_id(&mut raw, -1, -1);
    // Answered once uploaded.
    assert_eq!(
        produce_to(&mut raw, "obj", idempotent_batch(pid, epoch, 0, 3)),
        (0, 0)
    );
    let t = std::time::Instant::now();
    assert_eq!(
        produce_to(&mut raw, "obj", idempotent_batch(pid, epoch, 0, 3)),
        (0, 0),
        "the retry gets its original offset"
    );
    println!("retry answered in {:?}", t.elapsed());
    assert_eq!(
        produce_to(&mut raw, "obj", idempotent_batch(pid, epoch, 3, 1)),
        (0, 3)
    );
    let (read, _) = common::read_all(&b.bootstrap(), "obj", 1);
    assert_eq!(read.len(), 4, "offsets 0..4, nothing twice");
}

/// The producer state survives kill -9 after its batches were uploaded and left the WAL: a
/// retry reaching the restarted broker is still answered with the original offset; a gap and a
/// stale epoch are still refused.
#[test]
fn producer_state_survives_a_restart_through_the_manifest() {
    use common::raw::Raw;

    let data = tempfile::tempdir().unwrap();
    let args = ["--shards", "1", "--object-age-max-ms", "20"];
    let b = TestBroker::start_at(data.path(), &args);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(common::create_topic(&b.bootstrap(), "idem", 1, &[]));
    let produce = |raw: &mut Raw, batch| produce_to(raw, "idem", batch);
    let mut raw = Raw::connect(b.addr);
    let (pid, epoch) = init_producer_id(&mut raw, -1, -1);
    assert_eq!(
        produce(&mut raw, idempotent_batch(pid, epoch, 0, 3)),
        (0, 0)
    );
    assert_eq!(
        produce(&mut raw, idempotent_batch(pid, epoch, 3, 2)),
        (0, 3)
    );
    // Uploaded and committed (the object holds the producer's state; the restart's take-over
    // folds it into the manifest).
    let objects = data.path().join("objects");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while common::data_objects(&objects).is_empty() {
        assert!(std::time::Instant::now() < deadline, "nothing uploaded");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    b.kill9();

    let b = TestBroker::start_at(data.path(), &args);
    let mut raw = Raw::connect(b.addr);
    assert_eq!(
        produce(&mut raw, idempotent_batch(pid, epoch, 3, 2)),
        (0, 3),
        "a retry after the restart gets its original offset"
    );
    assert_eq!(
        produce(&mut raw, idempotent_batch(pid, epoch, 9, 1)).0,
        45,
        "OUT_OF_ORDER_SEQUENCE_NUMBER"
    );
    assert_eq!(
        produce(&mut raw, idempotent_batch(pid, epoch, 5, 1)),
        (0, 5)
    );
    // A bumped epoch (KIP-360) fences the old one.
    assert_eq!(init_producer_id(&mut raw, pid, epoch), (pid, epoch + 1));
    assert_eq!(
        produce(&mut raw, idempotent_batch(pid, epoch + 1, 0, 1)),
        (0, 6)
    );
    assert_eq!(
        produce(&mut raw, idempotent_batch(pid, epoch, 6, 1)).0,
        47,
        "INVALID_PRODUCER_EPOCH"
    );
    // A fresh id is never one handed out before the restart.
    assert!(init_producer_id(&mut raw, -1, -1).0 > pid);
    let (read, _) = common::read_all(&b.bootstrap(), "idem", 1);
    assert_eq!(read.len(), 7, "offsets 0..7, nothing twice");
}
