//! A shard's budget of log lines that clients cause (a connection closed or refused, a request
//! refused): the first [`LOG_LINES_PER_WINDOW`] per [`LOG_WINDOW`] are written, the rest counted
//! (`ringtail_log_lines_suppressed_total`) and summed up in one line, so that a misbehaving
//! client cannot flood the log.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::ShardStats;

/// Log lines of one kind allowed per window; beyond them lines are counted, not written.
pub const LOG_LINES_PER_WINDOW: u32 = 20;
pub const LOG_WINDOW: Duration = Duration::from_secs(5);

/// What to do with a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLine {
    /// Write it; `suppressed` lines were left out in the window before (say so first).
    Write { suppressed: u64 },
    /// Leave it out (counted); `first` is the first one left out in this window, so the caller
    /// can arrange for the summary at the window's end.
    Suppress { first: bool },
}

/// First [`LOG_LINES_PER_WINDOW`] lines per [`LOG_WINDOW`], then a count: a client that
/// reconnects to send one bad frame after another cannot flood the log (each bad frame
/// closes its connection, so the limit is per shard, over all of its connections).
#[derive(Debug)]
pub struct LogLimiter {
    window_start: Instant,
    written: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(now: Instant) -> LogLimiter {
        LogLimiter {
            window_start: now,
            written: 0,
            suppressed: 0,
        }
    }

    pub fn line(&mut self, now: Instant) -> LogLine {
        let mut carried = 0;
        if now.duration_since(self.window_start) >= LOG_WINDOW {
            carried = self.take_suppressed();
            self.window_start = now;
            self.written = 0;
        }
        if self.written < LOG_LINES_PER_WINDOW {
            self.written += 1;
            return LogLine::Write {
                suppressed: carried,
            };
        }
        self.suppressed += 1;
        LogLine::Suppress {
            first: self.suppressed == 1,
        }
    }

    /// Lines left out since the last summary (and resets the count).
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

thread_local! {
    /// The shard's budget of connection log lines.
    static CONNECTION_LOG: RefCell<LogLimiter> = RefCell::new(LogLimiter::new(Instant::now()));
}

/// Whether a log line a client caused (a connection closed or refused, a request refused) may
/// be written now. Beyond the shard's budget the line is counted instead, and one summary line
/// says how many were left out.
pub fn may_log(stats: &Arc<ShardStats>) -> bool {
    match CONNECTION_LOG.with(|l| l.borrow_mut().line(Instant::now())) {
        LogLine::Write { suppressed } => {
            log_suppressed(suppressed);
            true
        }
        LogLine::Suppress { first } => {
            stats.log_lines_suppressed.fetch_add(1, Ordering::Relaxed);
            if first {
                ringtail_shards::spawn_detached(async {
                    ringtail_shards::sleep(LOG_WINDOW).await;
                    log_suppressed(CONNECTION_LOG.with(|l| l.borrow_mut().take_suppressed()));
                });
            }
            false
        }
    }
}

fn log_suppressed(suppressed: u64) {
    if suppressed > 0 {
        tracing::warn!(
            suppressed,
            window_s = LOG_WINDOW.as_secs(),
            "similar log lines suppressed (caused by clients: connections closed or refused, \
             requests refused)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_are_limited_per_window_and_summed_up() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(t0);
        for _ in 0..LOG_LINES_PER_WINDOW {
            assert_eq!(l.line(t0), LogLine::Write { suppressed: 0 });
        }
        assert_eq!(l.line(t0), LogLine::Suppress { first: true });
        for _ in 0..99 {
            assert_eq!(l.line(t0), LogLine::Suppress { first: false });
        }
        // The next window writes again and carries the count of the last.
        let t1 = t0 + LOG_WINDOW;
        assert_eq!(l.line(t1), LogLine::Write { suppressed: 100 });
        assert_eq!(l.take_suppressed(), 0);
        // A summary taken at the window's end is not counted twice.
        for _ in 1..LOG_LINES_PER_WINDOW {
            l.line(t1);
        }
        assert_eq!(l.line(t1), LogLine::Suppress { first: true });
        assert_eq!(l.take_suppressed(), 1);
        assert_eq!(l.line(t1 + LOG_WINDOW), LogLine::Write { suppressed: 0 });
    }
}
