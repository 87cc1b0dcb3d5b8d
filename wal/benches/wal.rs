//! WAL benchmark: prints figures, asserts nothing.
//!
//! In one run, on one shard executor and one file:
//! 1. the WAL under many concurrent small appends (group commit), at full load: 64 appenders,
//!    each with up to 4 appends outstanding;
//! 2. the raw baseline: aligned O_DIRECT writes of the WAL's average write size, each followed
//!    by the durability barrier, back to back (fdatasync, then O_DSYNC);
//! 3. the WAL at half of its full-load append rate, for latency.
//!
//! `cargo bench -p ringtail-wal --bench wal -- [DIR] [SECONDS]` (DIR defaults to target/wal-bench).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use ringtail_shards::fs::{DmaFile, OpenOptions};
use ringtail_wal::format::EntryMeta;
use ringtail_wal::{create_or_check, recover, SyncMode, Wal, WalConfig};

const RING_BYTES: u64 = 512 << 20;
const CHUNK_BYTES_MAX: u32 = 4 << 20;
/// Appends each appender keeps outstanding at full load.
const WINDOW: usize = 4;
/// Registered buffer memory of the bench executor: room for a few maximum writes.
const IO_MEMORY_BYTES: usize = 4 * CHUNK_BYTES_MAX as usize;

struct Run {
    label: String,
    ops: u64,
    bytes: u64,
    secs: f64,
    hist: Histogram<u64>,
    avg_write_bytes: u64,
}

impl Run {
    fn print(&self) {
        println!(
            "| {:<44} | {:>9.0} | {:>8.1} | {:>9} | {:>7} | {:>7} | {:>7} |",
            self.label,
            self.ops as f64 / self.secs,
            self.bytes as f64 / self.secs / 1e6,
            self.avg_write_bytes,
            self.hist.value_at_quantile(0.5),
            self.hist.value_at_quantile(0.99),
            self.hist.value_at_quantile(0.999),
        );
    }
}

fn meta() -> EntryMeta {
    EntryMeta {
        stream_id: [1; 16],
        stream_index: 0,
        base_offset: 0,
        record_count: 1,
        leader_epoch: 0,
    }
}

/// `appenders` tasks append `payload_bytes` each, back to back or paced to `rate` appends/s.
async fn wal_run(
    cfg: &WalConfig,
    label: &str,
    appenders: usize,
    payload_bytes: usize,
    secs: f64,
    rate: Option<f64>,
) -> Run {
    let recovery = recover(&cfg.path).unwrap();
    let wal: Rc<Wal<()>> = Rc::new(
        Wal::open(cfg, &recovery, Vec::new(), |_: &[()]| {})
            .await
            .unwrap(),
    );
    let hist = Rc::new(RefCell::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
    ));
    let ops = Rc::new(Cell::new(0u64));
    let payload = Bytes::from(vec![0x5au8; payload_bytes]);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let before = wal.stats();
    let mut tasks = Vec::new();
    for a in 0..appenders {
        let (wal, hist, ops, payload) = (wal.clone(), hist.clone(), ops.clone(), payload.clone());
        let interval = rate.map(|r| Duration::from_secs_f64(appenders as f64 / r));
        tasks.push(ringtail_shards::spawn(async move {
            // Each appender keeps up to WINDOW appends outstanding, like a producer with
            // several requests in flight: the next group is queued while a write is in flight.
            let mut outstanding = std::collections::VecDeque::new();
            let mut next = Instant::now()
                + interval
                    .map(|i| i.mul_f64(a as f64 / appenders as f64))
                    .unwrap_or_default();
            while Instant::now() < deadline {
                if let Some(i) = interval {
                    let now = Instant::now();
                    if next > now {
                        ringtail_shards::sleep(next - now).await;
                    }
                    next += i;
                }
                let t = Instant::now();
                let ticket = loop {
                    match wal.append(meta(), payload.clone(), ()) {
                        Ok(t) => break t,
                        Err(_) => ringtail_shards::sleep(Duration::from_micros(50)).await,
                    }
                };
                outstanding.push_back((t, ticket));
                while outstanding.len() >= WINDOW || (interval.is_some() && !outstanding.is_empty())
                {
                    let (t, ticket) = outstanding.pop_front().unwrap();
                    ticket.await.unwrap().unwrap();
                    hist.borrow_mut()
                        .record(t.elapsed().as_micros().max(1) as u64)
                        .unwrap();
                    ops.set(ops.get() + 1);
                    wal.trim(|_| true);
                }
            }
            for (t, ticket) in outstanding {
                ticket.await.unwrap().unwrap();
                hist.borrow_mut()
                    .record(t.elapsed().as_micros().max(1) as u64)
                    .unwrap();
                ops.set(ops.get() + 1);
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = wal.stats();
    let writes = (after.writes - before.writes).max(1);
    let hist = hist.borrow().clone();
    Run {
        label: label.to_string(),
        ops: ops.get(),
        bytes: ops.get() * payload_bytes as u64,
        secs: elapsed,
        hist,
        avg_write_bytes: (after.bytes_written - before.bytes_written) / writes,
    }
}

/// Aligned O_DIRECT writes of `write_bytes` at sequential positions, each made durable.
async fn raw_run(
    path: &std::path::Path,
    label: &str,
    write_bytes: usize,
    secs: f64,
    sync: SyncMode,
) -> Run {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if sync == SyncMode::ODsync {
        o.custom_flags(libc::O_DSYNC);
    }
    let file: DmaFile = o.dma_open(path).await.unwrap();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let start = Instant::now();
    let mut pos = 8192u64;
    let mut ops = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        if pos + write_bytes as u64 > RING_BYTES {
            pos = 8192;
        }
        let mut buf = file.alloc_dma_buffer(write_bytes);
        buf.as_bytes_mut().fill(0x5a);
        let t = Instant::now();
        file.write_at(buf, pos).await.unwrap();
        if sync == SyncMode::Fdatasync {
            file.fdatasync().await.unwrap();
        }
        hist.record(t.elapsed().as_micros().max(1) as u64).unwrap();
        pos += write_bytes as u64;
        ops += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    file.close().await.unwrap();
    Run {
        label: label.to_string(),
        ops,
        bytes: ops * write_bytes as u64,
        secs,
        hist,
        avg_write_bytes: write_bytes as u64,
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let dir = std::path::PathBuf::from(
        args.first()
            .cloned()
            .unwrap_or_else(|| "target/wal-bench".into()),
    );
    let secs: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bench.wal");
    let _ = std::fs::remove_file(&path);
    let cfg = WalConfig {
        path: path.clone(),
        region_bytes: RING_BYTES,
        chunk_bytes_max: CHUNK_BYTES_MAX,
        max_delay: Duration::ZERO,
        sync: SyncMode::Fdatasync,
    };
    create_or_check(&cfg).unwrap();
    println!(
        "WAL bench: ring {} MiB at {}, {secs} s per run",
        RING_BYTES >> 20,
        path.display()
    );
    println!("| run | appends or writes/s | MB/s | avg write B | p50 µs | p99 µs | p99.9 µs |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    ringtail_shards::block_on(IO_MEMORY_BYTES, move || async move {
        for (payload, appenders) in [(1024usize, 64usize), (16 << 10, 64)] {
            for sync in [SyncMode::Fdatasync, SyncMode::ODsync] {
                let cfg = WalConfig { sync, ..cfg.clone() };
                let full = wal_run(&cfg, &format!("WAL {payload} B x {appenders} appenders, {sync:?}"), appenders, payload, secs, None).await;
                full.print();
                let write = (full.avg_write_bytes as usize).div_ceil(4096) * 4096;
                let raw = raw_run(&path, &format!("raw {write} B writes, {sync:?}"), write, secs, sync).await;
                raw.print();
                let rate = full.ops as f64 / full.secs / 2.0;
                let half = wal_run(&cfg, &format!("WAL {payload} B at half load ({rate:.0}/s), {sync:?}"), appenders, payload, secs, Some(rate)).await;
                half.print();
                let write_half = (half.avg_write_bytes as usize).div_ceil(4096) * 4096;
                let raw_half = raw_run(&path, &format!("raw {write_half} B writes, {sync:?}"), write_half, secs, sync).await;
                raw_half.print();
                println!(
                    "|   → ratios | WAL/raw MB/s at full load: {:.2} | WAL p99 at half load / raw p99 at that write size: {:.2} | | | | |",
                    (full.bytes as f64 / full.secs) / (raw.bytes as f64 / raw.secs),
                    half.hist.value_at_quantile(0.99) as f64 / raw_half.hist.value_at_quantile(0.99) as f64,
                );
            }
        }
    })
    .unwrap();
}
