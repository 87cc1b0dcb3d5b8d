//! What a run's producers and consumers, of either driver, report into; the clock their
//! messages carry.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

use crate::stats::record;

/// Error messages a result keeps (the first distinct ones).
const ERROR_MESSAGES_KEPT: usize = 10;

/// Now, in nanoseconds since the Unix epoch (the due time a message carries).
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// What producers and consumers of both drivers report into.
pub struct Shared {
    pub(crate) publish: Mutex<Option<Histogram<u64>>>,
    pub(crate) end_to_end: Mutex<Option<Histogram<u64>>>,
    pub(crate) produced: AtomicU64,
    pub(crate) produced_bytes: AtomicU64,
    pub(crate) consumed: AtomicU64,
    pub(crate) consumed_bytes: AtomicU64,
    pub errors: AtomicU64,
    /// Batches resent after a retriable error (native driver).
    pub retries: AtomicU64,
    pub(crate) error_messages: Mutex<Vec<String>>,
    /// Measuring (after the warm-up).
    pub measuring: AtomicBool,
    /// Consumers that hold their partitions (producing starts once all do).
    pub consumers_ready: AtomicU64,
    pub stop_producing: AtomicBool,
    /// Every producer finished (its last acknowledgement is in): consumers may stop once they
    /// have caught up.
    pub(crate) producers_done: AtomicBool,
    /// How long a request may go unanswered, and the end of a run waits for consumers.
    pub stall_timeout: Duration,
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

impl Shared {
    pub fn new(stall_timeout: Duration) -> Shared {
        Shared {
            publish: Mutex::default(),
            end_to_end: Mutex::default(),
            produced: AtomicU64::default(),
            produced_bytes: AtomicU64::default(),
            consumed: AtomicU64::default(),
            consumed_bytes: AtomicU64::default(),
            errors: AtomicU64::default(),
            retries: AtomicU64::default(),
            error_messages: Mutex::default(),
            measuring: AtomicBool::default(),
            consumers_ready: AtomicU64::default(),
            stop_producing: AtomicBool::default(),
            producers_done: AtomicBool::default(),
            stall_timeout,
        }
    }

    /// `n` messages of `bytes` in all were acknowledged.
    pub fn acked(&self, n: u64, bytes: u64) {
        self.produced.fetch_add(n, Ordering::Relaxed);
        self.produced_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A consumer received a message with this value.
    pub fn consumed_message(&self, value: &[u8], hist: &mut Histogram<u64>) {
        self.consumed.fetch_add(1, Ordering::Relaxed);
        self.consumed_bytes
            .fetch_add(value.len() as u64, Ordering::Relaxed);
        if value.len() >= 8 && self.measuring.load(Ordering::Relaxed) {
            let due = u64::from_be_bytes(value[..8].try_into().unwrap());
            record(hist, unix_nanos().saturating_sub(due) / 1000);
        }
    }

    /// After a poll that brought nothing: whether a consumer is done (every producer finished
    /// and everything acknowledged was consumed, or nothing came for the stall timeout).
    pub fn consumer_done(&self, idle_since: &mut Option<Instant>) -> bool {
        if !self.producers_done.load(Ordering::Relaxed) {
            return false;
        }
        if self.consumed.load(Ordering::Relaxed) >= self.produced.load(Ordering::Relaxed) {
            return true;
        }
        idle_since.get_or_insert_with(Instant::now).elapsed() > self.stall_timeout
    }

    pub(crate) fn stop(&self) {
        self.stop_producing.store(true, Ordering::Relaxed);
        self.producers_done.store(true, Ordering::Relaxed);
    }

    /// Keeps the first few distinct error messages for the result.
    pub fn note_error(&self, message: &str) {
        let mut kept = self.error_messages.lock().unwrap();
        if kept.len() < ERROR_MESSAGES_KEPT && !kept.iter().any(|m| m == message) {
            kept.push(message.to_string());
        }
    }

    pub fn merge_publish(&self, h: &Histogram<u64>) {
        merge(&self.publish, h);
    }

    pub fn merge_end_to_end(&self, h: &Histogram<u64>) {
        merge(&self.end_to_end, h);
    }
}
