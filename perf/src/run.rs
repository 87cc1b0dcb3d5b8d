//! Running a workload against a broker with librdkafka (the `rdkafka` crate): the standard client
//! behaviour, measured the same way for any Kafka-compatible broker.
//!
//! Each message carries its due time (nanoseconds since the Unix epoch) and a sequence number in
//! its first 16 bytes; publish latency is acknowledgement time minus due time, end-to-end
//! latency is receipt time minus due time (one machine, one clock).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;

use crate::stats::{due_offset, histogram, record, Percentiles, RunResult};
use crate::workload::Workload;

/// How long the end of a run waits for consumers to catch up.
const DRAIN_MAX: Duration = Duration::from_secs(30);
/// How long to wait for the broker to answer at all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[derive(Default)]
struct Shared {
    publish: Mutex<Option<Histogram<u64>>>,
    end_to_end: Mutex<Option<Histogram<u64>>>,
    produced: AtomicU64,
    produced_bytes: AtomicU64,
    consumed: AtomicU64,
    consumed_bytes: AtomicU64,
    errors: AtomicU64,
    /// Measuring (after the warm-up).
    measuring: AtomicBool,
    /// Consumers that hold their partitions (producing starts once all do).
    consumers_ready: AtomicU64,
    stop_producing: AtomicBool,
}

fn merge(into: &Mutex<Option<Histogram<u64>>>, h: &Histogram<u64>) {
    let mut slot = into.lock().unwrap();
    match slot.as_mut() {
        Some(all) => {
            let _ = all.add(h);
        }
        None => *slot = Some(h.clone()),
    }
}

/// Options of one run besides the workload.
pub struct RunOptions {
    pub bootstrap: String,
    /// Overrides the workload's duration.
    pub duration: Option<Duration>,
    pub broker_pid: Option<u32>,
    pub label: String,
    /// Print a progress line every second.
    pub progress: bool,
}

pub async fn run(workload: &Workload, opts: &RunOptions) -> anyhow::Result<RunResult> {
    workload.validate()?;
    let duration = opts
        .duration
        .unwrap_or(Duration::from_secs(workload.duration_s));
    let warmup = Duration::from_secs(workload.warmup_s).min(duration / 2);
    ensure_topic(workload, &opts.bootstrap).await?;
    let shared = Arc::new(Shared::default());
    let cpu_before = opts.broker_pid.and_then(process_cpu_seconds);

    // Consumers first, so that they are in place when the first message arrives.
    // A fresh group per run: no committed offsets from an earlier run to resume from.
    let group = format!(
        "ringtail-perf-{}-{}",
        workload.name,
        uuid::Uuid::new_v4().simple()
    );
    let consumers: Vec<_> = (0..workload.consumers)
        .map(|i| {
            let c = consumer(workload, &opts.bootstrap, &group, i)?;
            let shared = shared.clone();
            Ok(std::thread::spawn(move || consume(c, shared)))
        })
        .collect::<anyhow::Result<_>>()?;
    // Consumers start at the end of the log: wait until every one holds its partitions (a
    // group may take a while to form), or messages sent meanwhile would be missed.
    let deadline = Instant::now() + CONNECT_TIMEOUT * 3;
    while shared.consumers_ready.load(Ordering::Relaxed) < workload.consumers as u64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "consumers did not get their partitions within {:?}",
            CONNECT_TIMEOUT * 3
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let start = Instant::now();
    let series = Arc::new(Mutex::new(Vec::new()));
    let producers: Vec<_> = (0..workload.producers)
        .map(|i| {
            let p = producer(workload, &opts.bootstrap)?;
            let (w, shared) = (workload.clone(), shared.clone());
            Ok(tokio::spawn(produce(p, w, i, start, shared)))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut last = 0u64;
    let mut measured_since = None;
    while start.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if start.elapsed() >= warmup && measured_since.is_none() {
            shared.measuring.store(true, Ordering::Relaxed);
            measured_since = Some((Instant::now(), shared.produced.load(Ordering::Relaxed)));
        }
        let now = shared.produced.load(Ordering::Relaxed);
        series.lock().unwrap().push((now - last) as f64);
        last = now;
        if opts.progress {
            eprintln!(
                "[{:>4.0}s] produced {now} ({} msg/s), consumed {}, errors {}",
                start.elapsed().as_secs_f64(),
                series.lock().unwrap().last().copied().unwrap_or(0.0),
                shared.consumed.load(Ordering::Relaxed),
                shared.errors.load(Ordering::Relaxed)
            );
        }
    }
    shared.stop_producing.store(true, Ordering::Relaxed);
    let measured = measured_since.map_or(duration, |(t, _)| t.elapsed());
    for p in producers {
        p.await.context("producer task")?;
    }
    let produced = shared.produced.load(Ordering::Relaxed);
    let deadline = Instant::now() + DRAIN_MAX;
    while shared.consumed.load(Ordering::Relaxed) < produced
        && workload.consumers > 0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shared.measuring.store(false, Ordering::Relaxed);
    // Consumers stop once producing stopped and they caught up (or the drain gave up).
    for c in consumers {
        let _ = c.join();
    }
    let cpu_after = opts.broker_pid.and_then(process_cpu_seconds);
    let secs = measured.as_secs_f64().max(1e-9);
    let (measured_produced, measured_bytes) = measured_since
        .map(|(_, at)| {
            let n = produced - at;
            (n, n * workload.message_size as u64)
        })
        .unwrap_or((produced, shared.produced_bytes.load(Ordering::Relaxed)));
    let consumed = shared.consumed.load(Ordering::Relaxed);
    let consumed_bytes = shared.consumed_bytes.load(Ordering::Relaxed);
    let publish = shared
        .publish
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(histogram);
    let e2e = shared
        .end_to_end
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(histogram);
    let run_secs = start.elapsed().as_secs_f64().max(1e-9);
    let result = RunResult {
        label: opts.label.clone(),
        workload: workload.clone(),
        driver: "librdkafka".into(),
        bootstrap: opts.bootstrap.clone(),
        duration_s: secs,
        produced_messages: produced,
        produced_bytes: shared.produced_bytes.load(Ordering::Relaxed),
        consumed_messages: consumed,
        consumed_bytes,
        missing_messages: if workload.consumers > 0 {
            produced.saturating_sub(consumed)
        } else {
            0
        },
        errors: shared.errors.load(Ordering::Relaxed),
        publish_latency: Percentiles::of(&publish),
        end_to_end_latency: Percentiles::of(&e2e),
        publish_msgs_per_s: measured_produced as f64 / secs,
        publish_mb_per_s: measured_bytes as f64 / secs / 1e6,
        consume_msgs_per_s: consumed as f64 / run_secs,
        consume_mb_per_s: consumed_bytes as f64 / run_secs / 1e6,
        publish_msgs_per_s_series: series.lock().unwrap().clone(),
        broker_cpu_s: cpu_before.zip(cpu_after).map(|(a, b)| b - a),
        broker_peak_rss_mib: opts.broker_pid.and_then(peak_rss_mib),
    };
    Ok(result)
}

async fn ensure_topic(w: &Workload, bootstrap: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("socket.connection.setup.timeout.ms", "10000")
        .create()?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, CONNECT_TIMEOUT)
        .with_context(|| format!("broker {bootstrap} does not answer"))?;
    if metadata
        .topics()
        .iter()
        .any(|t| t.name() == w.topic && t.error().is_none())
    {
        return Ok(());
    }
    let created = admin
        .create_topics(
            &[NewTopic::new(
                &w.topic,
                w.partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(CONNECT_TIMEOUT)),
        )
        .await?;
    match &created[0] {
        Ok(_) => Ok(()),
        Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => Ok(()),
        Err((t, e)) => anyhow::bail!("creating topic {t}: {e}"),
    }
}

fn producer(w: &Workload, bootstrap: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", if w.acks == "all" { "-1" } else { &w.acks })
        .set("compression.codec", &w.compression)
        .set("linger.ms", w.linger_ms.to_string())
        .set("batch.size", w.batch_size.to_string())
        .set("message.timeout.ms", "30000")
        .create()?)
}

fn consumer(
    w: &Workload,
    bootstrap: &str,
    group: &str,
    index: usize,
) -> anyhow::Result<BaseConsumer> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "latest")
        .set("fetch.wait.max.ms", "100")
        .create()?;
    if w.subscribe {
        c.subscribe(&[&w.topic])?;
    } else {
        // Partitions split round-robin over the consumers, each from the current end.
        let mut tpl = TopicPartitionList::new();
        for p in (0..w.partitions).filter(|p| *p as usize % w.consumers == index) {
            let (_, high) = c.fetch_watermarks(&w.topic, p, CONNECT_TIMEOUT)?;
            tpl.add_partition_offset(&w.topic, p, rdkafka::Offset::Offset(high))?;
        }
        c.assign(&tpl)?;
    }
    Ok(c)
}

async fn produce(
    p: FutureProducer,
    w: Workload,
    index: usize,
    start: Instant,
    shared: Arc<Shared>,
) {
    let rate = w.rate / w.producers as u64;
    let filler = vec![0x5au8; w.message_size];
    let hist = Arc::new(Mutex::new(histogram()));
    let mut pending = futures::stream::FuturesUnordered::new();
    let base_nanos = unix_nanos() - start.elapsed().as_nanos() as u64;
    let mut i = 0u64;
    use futures::StreamExt;
    while !shared.stop_producing.load(Ordering::Relaxed) {
        let due = due_offset(i, rate, start.elapsed());
        if rate > 0 {
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                // Collect acknowledgements while waiting for the next message's turn.
                let turn = tokio::time::sleep(wait);
                tokio::pin!(turn);
                loop {
                    tokio::select! {
                        _ = &mut turn => break,
                        Some(()) = pending.next(), if !pending.is_empty() => {}
                    }
                }
            }
        }
        let mut payload = filler.clone();
        let due_nanos = base_nanos + due.as_nanos() as u64;
        payload[..8].copy_from_slice(&due_nanos.to_be_bytes());
        payload[8..16].copy_from_slice(&((index as u64) << 48 | i).to_be_bytes());
        let message = FutureRecord::<(), Vec<u8>>::to(&w.topic)
            .partition((i % w.partitions as u64) as i32)
            .payload(&payload);
        let delivery = match p.send_result(message) {
            Ok(d) => d,
            Err((e, _)) => {
                // The local queue is full: wait for acknowledgements, then try again.
                if matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::QueueFull)) {
                    if pending.next().await.is_none() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    continue;
                }
                shared.errors.fetch_add(1, Ordering::Relaxed);
                i += 1;
                continue;
            }
        };
        let shared2 = shared.clone();
        let hist2 = hist.clone();
        let size = w.message_size as u64;
        let measuring = shared.measuring.load(Ordering::Relaxed);
        pending.push(async move {
            match delivery.await {
                Ok(Ok(_)) => {
                    shared2.produced.fetch_add(1, Ordering::Relaxed);
                    shared2.produced_bytes.fetch_add(size, Ordering::Relaxed);
                    if measuring {
                        let latency = unix_nanos().saturating_sub(due_nanos) / 1000;
                        record(&mut hist2.lock().unwrap(), latency);
                    }
                }
                _ => {
                    shared2.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        i += 1;
        if rate == 0 && pending.len() >= 10_000 {
            pending.next().await;
        }
        if i.is_multiple_of(1000) {
            tokio::task::yield_now().await;
        }
    }
    while pending.next().await.is_some() {}
    merge(&shared.publish, &hist.lock().unwrap());
}

fn consume(c: BaseConsumer, shared: Arc<Shared>) {
    let mut hist = histogram();
    let mut idle_since: Option<Instant> = None;
    let mut ready = false;
    loop {
        let polled = c.poll(Duration::from_millis(100));
        if !ready && c.assignment().is_ok_and(|a| a.count() > 0) {
            ready = true;
            shared.consumers_ready.fetch_add(1, Ordering::Relaxed);
        }
        match polled {
            Some(Ok(m)) => {
                idle_since = None;
                let payload = m.payload().unwrap_or_default();
                shared.consumed.fetch_add(1, Ordering::Relaxed);
                shared
                    .consumed_bytes
                    .fetch_add(payload.len() as u64, Ordering::Relaxed);
                if payload.len() >= 8 && shared.measuring.load(Ordering::Relaxed) {
                    let due = u64::from_be_bytes(payload[..8].try_into().unwrap());
                    record(&mut hist, unix_nanos().saturating_sub(due) / 1000);
                }
            }
            Some(Err(_)) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                if shared.stop_producing.load(Ordering::Relaxed)
                    && shared.consumed.load(Ordering::Relaxed)
                        >= shared.produced.load(Ordering::Relaxed)
                {
                    break;
                }
                let idle = idle_since.get_or_insert_with(Instant::now);
                if shared.stop_producing.load(Ordering::Relaxed) && idle.elapsed() > DRAIN_MAX {
                    break;
                }
            }
        }
    }
    merge(&shared.end_to_end, &hist);
}

/// CPU seconds a process has used (Linux /proc).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux architecture that exports it to /proc.
    Some(ticks as f64 / 100.0)
}

/// Peak resident memory of a process in MiB (VmHWM).
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
