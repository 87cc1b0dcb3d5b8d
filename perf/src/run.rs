//! Running a workload against a broker: the same orchestration and the same measurements for
//! both drivers (librdkafka, native).
//!
//! Each message carries its due time (nanoseconds since the Unix epoch) and a sequence number in
//! its first 16 bytes; publish latency is acknowledgement time minus due time, end-to-end
//! latency is receipt time minus due time (one machine, one clock).
//!
//! A run that fails part-way (a broker that stalls or goes away, errors from the broker) still
//! returns its figures, with `failure` saying what went wrong; only a run that cannot start
//! (unreachable broker, bad workload) returns an error.

use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::shared::{unix_nanos, Shared};
use crate::stats::{histogram, Percentiles, RunResult};
use crate::workload::Workload;
use crate::{librdkafka, native};

/// How long consumers may take to get their partitions.
const CONSUMERS_READY_MAX: Duration = Duration::from_secs(30);
/// A progress line warns when nothing was acknowledged for this long.
const STALL_WARNING: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// librdkafka through the `rdkafka` crate: the standard client behaviour.
    Librdkafka,
    /// The lean pipelined client in [`native`].
    Native,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::Librdkafka => "librdkafka",
            Driver::Native => "native",
        }
    }
}

impl FromStr for Driver {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Driver> {
        match s {
            "librdkafka" => Ok(Driver::Librdkafka),
            "native" => Ok(Driver::Native),
            _ => anyhow::bail!("driver {s:?}: use native or librdkafka"),
        }
    }
}

/// Options of one run besides the workload.
pub struct RunOptions {
    pub bootstrap: String,
    pub driver: Driver,
    /// Overrides the workload's duration.
    pub duration: Option<Duration>,
    pub broker_pid: Option<u32>,
    pub label: String,
    /// Print a progress line every second.
    pub progress: bool,
    /// librdkafka properties for every client (security.protocol, sasl.*, ...).
    pub client_config: Vec<(String, String)>,
    /// How long a request may go unanswered before the run counts it failed (librdkafka's
    /// `message.timeout.ms`), and how long the end of a run waits for consumers to catch up.
    pub stall_timeout: Duration,
}

impl RunOptions {
    pub fn new(bootstrap: &str, driver: Driver) -> RunOptions {
        RunOptions {
            bootstrap: bootstrap.to_string(),
            driver,
            duration: None,
            broker_pid: None,
            label: bootstrap.to_string(),
            progress: false,
            client_config: Vec::new(),
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        }
    }
}

pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);

type Task = Box<dyn FnOnce() -> anyhow::Result<()> + Send>;

type Handles = Vec<tokio::task::JoinHandle<anyhow::Result<()>>>;

pub async fn run(workload: &Workload, opts: &RunOptions) -> anyhow::Result<RunResult> {
    workload.validate()?;
    anyhow::ensure!(
        opts.driver == Driver::Librdkafka || opts.client_config.is_empty(),
        "the native driver speaks PLAINTEXT without authentication; \
         use --driver librdkafka for --client-config (TLS, SASL)"
    );
    let duration = opts
        .duration
        .unwrap_or(Duration::from_secs(workload.duration_s));
    let warmup = Duration::from_secs(workload.warmup_s).min(duration / 2);
    ensure_topic(workload, opts).await?;
    let shared = Arc::new(Shared::new(opts.stall_timeout));
    // However the run ends (an error included), consumers stop: a blocking librdkafka consumer
    // left polling would keep the runtime from shutting down.
    struct StopOnDrop(Arc<Shared>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.stop();
        }
    }
    let _stop = StopOnDrop(shared.clone());
    let cpu_before = opts.broker_pid.and_then(process_cpu_seconds);
    let client_cpu_before = process_cpu_seconds(std::process::id());

    // Consumers first, so that they are in place when the first message arrives.
    let mut consumers = start_consumers(workload, opts, &shared)?;
    consumers_ready(workload, &shared, &mut consumers).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let start = Instant::now();
    let base_nanos = unix_nanos() - start.elapsed().as_nanos() as u64;
    let producers = start_producers(workload, opts, &shared, start, base_nanos)?;
    let (series, measured_since) = drive(opts, &shared, &producers, start, duration, warmup).await;
    shared.stop_producing.store(true, Ordering::Relaxed);
    let measured = measured_since.map_or(start.elapsed(), |(t, _)| t.elapsed());
    let mut failure = join_all(producers, "producer").await;
    shared.producers_done.store(true, Ordering::Relaxed);
    let produced = shared.produced.load(Ordering::Relaxed);
    // Consumers stop once producing stopped and they caught up (or the drain gave up).
    let consumer_failure = join_all(consumers, "consumer").await;
    failure = failure.or(consumer_failure);
    shared.measuring.store(false, Ordering::Relaxed);
    let cpu_after = opts.broker_pid.and_then(process_cpu_seconds);
    let client_cpu_after = process_cpu_seconds(std::process::id());
    let secs = measured.as_secs_f64().max(1e-9);
    let (measured_produced, measured_bytes) = match measured_since {
        Some((_, at)) => {
            let n = produced - at;
            let bytes = shared.produced_bytes.load(Ordering::Relaxed);
            // Bytes in proportion (message sizes may vary).
            (n, bytes as f64 * n as f64 / produced.max(1) as f64)
        }
        None => (
            produced,
            shared.produced_bytes.load(Ordering::Relaxed) as f64,
        ),
    };
    let consumed = shared.consumed.load(Ordering::Relaxed);
    let consumed_bytes = shared.consumed_bytes.load(Ordering::Relaxed);
    let percentiles = |h: &Mutex<Option<Histogram<u64>>>| {
        Percentiles::of(&h.lock().unwrap().clone().unwrap_or_else(histogram))
    };
    let run_secs = start.elapsed().as_secs_f64().max(1e-9);
    let missing = if workload.consumers > 0 {
        produced.saturating_sub(consumed)
    } else {
        0
    };
    let errors = shared.errors.load(Ordering::Relaxed);
    let error_messages = shared.error_messages.lock().unwrap().clone();
    if failure.is_none() && (missing > 0 || errors > 0) {
        failure = Some(format!(
            "{missing} messages missing, {errors} errors{}",
            error_messages
                .first()
                .map(|m| format!(" (first: {m})"))
                .unwrap_or_default()
        ));
    }
    Ok(RunResult {
        label: opts.label.clone(),
        workload: workload.clone(),
        driver: opts.driver.name().into(),
        bootstrap: opts.bootstrap.clone(),
        duration_s: secs,
        produced_messages: produced,
        produced_bytes: shared.produced_bytes.load(Ordering::Relaxed),
        consumed_messages: consumed,
        consumed_bytes,
        missing_messages: missing,
        errors,
        retries: shared.retries.load(Ordering::Relaxed),
        error_messages,
        failure,
        publish_latency: percentiles(&shared.publish),
        end_to_end_latency: percentiles(&shared.end_to_end),
        publish_msgs_per_s: measured_produced as f64 / secs,
        publish_mb_per_s: measured_bytes / secs / 1e6,
        consume_msgs_per_s: consumed as f64 / run_secs,
        consume_mb_per_s: consumed_bytes as f64 / run_secs / 1e6,
        publish_msgs_per_s_series: series,
        broker_cpu_s: cpu_before.zip(cpu_after).map(|(a, b)| b - a),
        client_cpu_s: client_cpu_before.zip(client_cpu_after).map(|(a, b)| b - a),
        broker_peak_rss_mib: opts.broker_pid.and_then(peak_rss_mib),
    })
}

/// Creates the workload's topic if needed; a failure that looks like a secured listener says
/// how to reach it.
async fn ensure_topic(workload: &Workload, opts: &RunOptions) -> anyhow::Result<()> {
    let ready = match opts.driver {
        Driver::Librdkafka => {
            librdkafka::ensure_topic(workload, &opts.bootstrap, &opts.client_config).await
        }
        Driver::Native => native::ensure_topic(workload, &opts.bootstrap, opts.stall_timeout).await,
    };
    if let Err(e) = ready {
        let text = format!("{e:#}");
        let hint = if text.contains("closed") || text.contains("Transport") {
            " (if the broker requires TLS or SASL: --driver librdkafka with --client-config)"
        } else {
            ""
        };
        anyhow::bail!("{text}{hint}");
    }
    Ok(())
}

/// Starts the workload's consumers, in a fresh group (no committed offsets from an earlier run
/// to resume from).
fn start_consumers(
    workload: &Workload,
    opts: &RunOptions,
    shared: &Arc<Shared>,
) -> anyhow::Result<Handles> {
    let group = format!(
        "ringtail-perf-{}-{}",
        workload.name,
        uuid::Uuid::new_v4().simple()
    );
    let mut consumers: Handles = Vec::new();
    for i in 0..workload.consumers {
        let shared = shared.clone();
        consumers.push(match opts.driver {
            Driver::Librdkafka => {
                let c = librdkafka::consumer(
                    workload,
                    &opts.bootstrap,
                    &opts.client_config,
                    &group,
                    i,
                )?;
                let task: Task = Box::new(move || {
                    librdkafka::consume(c, &shared);
                    Ok(())
                });
                tokio::task::spawn_blocking(task)
            }
            Driver::Native => tokio::spawn(native::consume(
                workload.clone(),
                opts.bootstrap.clone(),
                group.clone(),
                i,
                shared,
            )),
        });
    }
    Ok(consumers)
}

/// Consumers start at the end of the log: waits until every one holds its partitions (a group
/// may take a while to form), or messages sent meanwhile would be missed.
async fn consumers_ready(
    workload: &Workload,
    shared: &Shared,
    consumers: &mut Handles,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + CONSUMERS_READY_MAX;
    while shared.consumers_ready.load(Ordering::Relaxed) < workload.consumers as u64 {
        if let Some(done) = consumers.iter_mut().find(|c| c.is_finished()) {
            let why = match done.await {
                Ok(Err(e)) => format!("{e:#}"),
                _ => "a consumer stopped".to_string(),
            };
            shared.stop();
            anyhow::bail!("consumer failed before the run started: {why}");
        }
        if Instant::now() > deadline {
            shared.stop();
            anyhow::bail!("consumers did not get their partitions within {CONSUMERS_READY_MAX:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn start_producers(
    workload: &Workload,
    opts: &RunOptions,
    shared: &Arc<Shared>,
    start: Instant,
    base_nanos: u64,
) -> anyhow::Result<Handles> {
    let mut producers: Handles = Vec::new();
    for i in 0..workload.producers {
        let (w, shared) = (workload.clone(), shared.clone());
        producers.push(match opts.driver {
            Driver::Librdkafka => {
                let p = librdkafka::producer(
                    workload,
                    &opts.bootstrap,
                    &opts.client_config,
                    opts.stall_timeout,
                )?;
                tokio::spawn(librdkafka::produce(p, w, i, start, base_nanos, shared))
            }
            Driver::Native => tokio::spawn(native::produce(
                w,
                opts.bootstrap.clone(),
                i,
                start,
                base_nanos,
                shared,
            )),
        });
    }
    Ok(producers)
}

/// The run's clock: once a second, the messages acknowledged in that second (the series) and,
/// with `--progress`, a line; measuring starts after the warm-up. Ends after `duration`, or when
/// a producer gave up (its error is collected by the caller). Returns the series and when
/// measuring started, with the count produced by then.
async fn drive(
    opts: &RunOptions,
    shared: &Shared,
    producers: &Handles,
    start: Instant,
    duration: Duration,
    warmup: Duration,
) -> (Vec<f64>, Option<(Instant, u64)>) {
    let mut series = Vec::new();
    let mut last = 0u64;
    let mut last_ack = Instant::now();
    let mut measured_since = None;
    while start.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if start.elapsed() >= warmup && measured_since.is_none() {
            shared.measuring.store(true, Ordering::Relaxed);
            measured_since = Some((Instant::now(), shared.produced.load(Ordering::Relaxed)));
        }
        let now = shared.produced.load(Ordering::Relaxed);
        series.push((now - last) as f64);
        if now > last {
            last_ack = Instant::now();
        }
        last = now;
        if opts.progress {
            let stalled = if last_ack.elapsed() >= STALL_WARNING {
                format!(
                    "; nothing acknowledged for {:.0} s (broker stalled?)",
                    last_ack.elapsed().as_secs_f64()
                )
            } else {
                String::new()
            };
            eprintln!(
                "[{:>4.0}s] produced {now} ({} msg/s), consumed {}, errors {}{stalled}",
                start.elapsed().as_secs_f64(),
                series.last().copied().unwrap_or(0.0),
                shared.consumed.load(Ordering::Relaxed),
                shared.errors.load(Ordering::Relaxed),
            );
        }
        if producers.iter().any(|p| p.is_finished()) {
            break; // a producer gave up: its error is collected by the caller
        }
    }
    (series, measured_since)
}

/// Waits for every task; the first failure, named by `what`.
async fn join_all(tasks: Handles, what: &str) -> Option<String> {
    let mut failure = None;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure.get_or_insert(format!("{what}: {e:#}"));
            }
            Err(e) => {
                failure.get_or_insert(format!("{what} task: {e}"));
            }
        }
    }
    failure
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
