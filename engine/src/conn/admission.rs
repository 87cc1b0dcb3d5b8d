//! Connection admission (the broker's `max.connections` and `max.connections.per.ip`) and the
//! rate limit on per-connection log lines. Both are plain state, tested without I/O.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
}
