//! Locked-memory planning: glommio registers I/O buffers, which count against
//! `RLIMIT_MEMLOCK` unless the process has `CAP_IPC_LOCK`.

/// Below this per shard, registered buffers are not worth having: refuse to start.
pub const IO_MEMORY_BYTES_MIN: usize = 256 * 1024;
/// Locked memory glommio needs per executor besides its I/O buffers. Measured just above
/// 512 KiB on Linux 6.18; twice that leaves a margin for other kernels.
pub const EXECUTOR_LOCKED_BYTES: usize = 1024 * 1024;
/// glommio registers the same I/O buffers with each of its three rings (main, latency, poll),
/// and the kernel charges the pinned pages once per registration (measured: 4 MiB of buffers
/// fail under an 8 MiB limit).
pub const RINGS_REGISTERING: usize = 3;
/// Buffers get this share of what remains after `EXECUTOR_LOCKED_BYTES`, per registration: the
/// kernel also charges pages the unaligned buffer merely touches, and concurrent executors race.
const BUFFER_SHARE_DIVISOR: usize = RINGS_REGISTERING + 1;

/// What bounds locked memory for this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemlockLimit {
    Unlimited,
    /// `CAP_IPC_LOCK` is effective: the rlimit does not apply.
    Capability,
    Bytes(u64),
}

impl MemlockLimit {
    /// Reads the current process's limit and capabilities.
    pub fn current() -> MemlockLimit {
        if has_cap_ipc_lock() {
            return MemlockLimit::Capability;
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
        if rc != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
            return MemlockLimit::Unlimited;
        }
        MemlockLimit::Bytes(limit.rlim_cur)
    }
}

/// Picks the registered I/O memory per shard that fits `limit`, or explains what to raise.
///
/// `wanted_bytes` is what each shard would like (the engine asks for a few WAL writes' worth, so
/// that WAL buffers come from registered, pre-faulted memory); less is given where the limit binds.
pub fn plan(limit: MemlockLimit, shards: usize, wanted_bytes: usize) -> Result<usize, String> {
    let bytes = match limit {
        MemlockLimit::Unlimited | MemlockLimit::Capability => return Ok(wanted_bytes),
        MemlockLimit::Bytes(b) => b as usize,
    };
    let per_shard = bytes / shards.max(1);
    let io_memory =
        (per_shard.saturating_sub(EXECUTOR_LOCKED_BYTES) / BUFFER_SHARE_DIVISOR).min(wanted_bytes);
    if io_memory >= IO_MEMORY_BYTES_MIN {
        return Ok(io_memory);
    }
    let need_kib =
        shards * (EXECUTOR_LOCKED_BYTES + BUFFER_SHARE_DIVISOR * IO_MEMORY_BYTES_MIN) / 1024;
    Err(format!(
        "locked-memory limit is {} KiB, but {shards} shard(s) need at least {need_kib} KiB: raise it \
         with `ulimit -l {need_kib}` (systemd: LimitMEMLOCK={need_kib}K; docker: --ulimit memlock={}), \
         grant CAP_IPC_LOCK, or run fewer shards (--shards)",
        bytes / 1024,
        need_kib * 1024,
    ))
}

fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WANTED: usize = 8 << 20;

    #[test]
    fn unlimited_or_capability_gets_the_default() {
        assert_eq!(plan(MemlockLimit::Unlimited, 8, WANTED), Ok(WANTED));
        assert_eq!(plan(MemlockLimit::Capability, 8, WANTED), Ok(WANTED));
    }

    #[test]
    fn a_default_8_mib_limit_fits_two_shards() {
        let io = plan(MemlockLimit::Bytes(8 << 20), 2, WANTED).unwrap();
        assert!(2 * (RINGS_REGISTERING * io + EXECUTOR_LOCKED_BYTES) <= 8 << 20);
        assert!(io >= IO_MEMORY_BYTES_MIN);
    }

    #[test]
    fn a_64_kib_limit_fails_with_what_to_raise() {
        let err = plan(MemlockLimit::Bytes(64 << 10), 2, WANTED).unwrap_err();
        assert!(err.contains("ulimit -l 4096"), "{err}");
        assert!(err.contains("CAP_IPC_LOCK"), "{err}");
    }
}
