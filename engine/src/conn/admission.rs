//! Connection admission (the broker's `max.connections` and `max.connections.per.ip`) and the
//! rate limit on per-connection log lines. Both are plain state, tested without I/O.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::metrics::ShardStats;

/// File descriptors kept for everything but client connections (WAL rings, objects of the
/// local store, the metrics endpoint, the store's sockets, io_uring).
pub const FDS_RESERVED: usize = 256;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The broker holds `--max-connections` already.
    Total,
    /// The address holds `--max-connections-per-ip` already.
    PerIp,
}

/// Connections open across all shards, in total and per address. Touched once when a
/// connection opens and once when it closes (never per request), so a short lock is fine.
#[derive(Debug)]
pub struct Admission {
    total_max: usize,
    per_ip_max: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection's place; given back when dropped.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    pub fn new(total_max: usize, per_ip_max: usize) -> Arc<Admission> {
        assert!(total_max > 0 && per_ip_max > 0);
        Arc::new(Admission {
            total_max,
            per_ip_max,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// A place for a connection from `ip`, or why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refused> {
        let mut per_ip = self.per_ip.lock().expect("admission lock");
        if self.total.load(Ordering::Relaxed) >= self.total_max {
            return Err(Refused::Total);
        }
        let count = per_ip.get(&ip).copied().unwrap_or(0);
        if count >= self.per_ip_max {
            return Err(Refused::PerIp);
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        per_ip.insert(ip, count + 1);
        Ok(Permit {
            admission: self.clone(),
            ip,
        })
    }

    /// The limit that refused a connection.
    pub fn limit(&self, refused: Refused) -> usize {
        match refused {
            Refused::Total => self.total_max,
            Refused::PerIp => self.per_ip_max,
        }
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut per_ip = self.admission.per_ip.lock().expect("admission lock");
        let count = per_ip
            .get_mut(&self.ip)
            .expect("a permit's address is counted");
        assert!(*count > 0);
        *count -= 1;
        if *count == 0 {
            per_ip.remove(&self.ip);
        }
        let before = self.admission.total.fetch_sub(1, Ordering::Relaxed);
        assert!(before > 0);
    }
}

/// The connection limit the open-file limit allows: `wanted`, or less (with the reason) when
/// `nofile` (RLIMIT_NOFILE) cannot hold that many sockets besides [`FDS_RESERVED`].
pub fn connections_max(wanted: usize, nofile: u64) -> (usize, Option<String>) {
    let room = (nofile as usize).saturating_sub(FDS_RESERVED).max(1);
    if wanted <= room {
        return (wanted, None);
    }
    (
        room,
        Some(format!(
            "--max-connections {wanted} needs {} open files, the limit is {nofile}: at most \
             {room} connections (raise `ulimit -n`)",
            wanted + FDS_RESERVED
        )),
    )
}

/// Raises the soft open-file limit to the hard one; returns the soft limit now in force.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

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
    fn admission_counts_total_and_per_address_and_gives_places_back() {
        let a = Admission::new(3, 2);
        let (x, y, z): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let x1 = a.admit(x).unwrap();
        let x2 = a.admit(x).unwrap();
        assert_eq!(a.admit(x).unwrap_err(), Refused::PerIp);
        let y1 = a.admit(y).unwrap();
        assert_eq!(a.admit(z).unwrap_err(), Refused::Total);
        assert_eq!((a.limit(Refused::Total), a.limit(Refused::PerIp)), (3, 2));
        assert_eq!(a.open(), 3);
        drop(x1);
        assert_eq!(a.open(), 2);
        let z1 = a.admit(z).unwrap();
        assert_eq!(a.admit(x).unwrap_err(), Refused::Total);
        drop((x2, y1, z1));
        assert_eq!(a.open(), 0);
        assert!(
            a.per_ip.lock().unwrap().is_empty(),
            "no address left behind"
        );
    }

    #[test]
    fn the_connection_limit_fits_the_open_file_limit() {
        assert_eq!(connections_max(10_000, 1 << 20), (10_000, None));
        let (n, why) = connections_max(10_000, 1024);
        assert_eq!(n, 1024 - FDS_RESERVED);
        assert!(why.unwrap().contains("ulimit -n"));
        assert_eq!(connections_max(10, 10).0, 1);
    }

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
