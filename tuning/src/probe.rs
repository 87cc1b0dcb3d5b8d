//! Checks that need system calls on the live host: io_uring (a ring is set up and its opcodes
//! probed), resource limits and capabilities, the data directory's block device.

use std::path::Path;

use crate::host::{selected, Host};
use crate::item::{Item, Status, Write};

fn not_live(area: &'static str, name: &str) -> Item {
    let mut i = Item {
        area,
        name: name.into(),
        current: "not probed".into(),
        recommended: String::new(),
        status: Status::Unknown,
        why: "a fixture root is not the machine this runs on".into(),
        change: None,
        writes: Vec::new(),
    };
    i.recommended = "-".into();
    i
}

fn item(
    area: &'static str,
    name: &str,
    current: String,
    recommended: &str,
    status: Status,
    why: &str,
) -> Item {
    Item {
        area,
        name: name.into(),
        current,
        recommended: recommended.into(),
        status,
        why: why.into(),
        change: None,
        writes: Vec::new(),
    }
}

fn yes(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

/// io_uring: can a ring be set up here (seccomp and container runtimes block it), and does it
/// have what Ringtail uses.
pub fn io_uring_items(host: &Host) -> Vec<Item> {
    if !host.is_live() {
        return vec![not_live("io_uring", "io_uring")];
    }
    let ring = match io_uring::IoUring::new(8) {
        Ok(r) => r,
        Err(e) => {
            return vec![item(
                "io_uring",
                "io_uring",
                format!("unavailable: {e}"),
                "available",
                Status::Advise,
                "the shards and the WAL run on io_uring: blocked by kernel.io_uring_disabled, a seccomp profile (docker's default before 25.0 allows it; many others do not) or an old kernel. Allow io_uring_setup/enter/register",
            )]
        }
    };
    let mut probe = io_uring::Probe::new();
    let probed = ring.submitter().register_probe(&mut probe).is_ok();
    use io_uring::opcode;
    let ops = [
        ("Write (O_DIRECT WAL writes)", opcode::Write::CODE),
        ("Fsync (fdatasync barrier)", opcode::Fsync::CODE),
        ("WriteFixed (registered buffers)", opcode::WriteFixed::CODE),
        ("SendZc (zero-copy send)", opcode::SendZc::CODE),
        ("Recv", opcode::Recv::CODE),
    ];
    let mut items: Vec<Item> = ops
        .iter()
        .map(|(name, code)| {
            let ok = probed && probe.is_supported(*code);
            item(
                "io_uring",
                name,
                yes(ok),
                "yes",
                if ok { Status::Ok } else { Status::Advise },
                "used by the shards' I/O (glommio) and the WAL; a missing opcode means an older kernel",
            )
        })
        .collect();
    let sqpoll = io_uring::IoUring::<io_uring::squeue::Entry, io_uring::cqueue::Entry>::builder()
        .setup_sqpoll(1000)
        .build(8)
        .is_ok();
    items.push(item(
        "io_uring",
        "SQPOLL",
        yes(sqpoll),
        "optional",
        Status::Info,
        "a kernel thread polls the submission queue: fewer syscalls, one more busy core; glommio does not use it by default",
    ));
    let defer = io_uring::IoUring::<io_uring::squeue::Entry, io_uring::cqueue::Entry>::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(8)
        .is_ok();
    items.push(item(
        "io_uring",
        "DEFER_TASKRUN",
        yes(defer),
        "yes",
        if defer { Status::Ok } else { Status::Info },
        "completions run when the shard asks for them, not as interrupts of its work (6.1+)",
    ));
    items.push(item(
        "io_uring",
        "RWF_DSYNC",
        yes(true),
        "yes",
        Status::Ok,
        "a per-write durability flag (pwritev2, Linux 4.7+); Ringtail's WAL uses O_DSYNC or fdatasync (--wal-sync)",
    ));
    items
}

/// Locked memory (glommio's registered buffers), file descriptors.
pub fn limit_items(host: &Host, shards: usize) -> Vec<Item> {
    if !host.is_live() {
        return vec![not_live("limits", "memlock / nofile")];
    }
    let rlimit = |resource| {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass.
        (unsafe { libc::getrlimit(resource, &mut r) } == 0).then_some(r.rlim_cur)
    };
    let human = |v: u64| {
        if v == libc::RLIM_INFINITY {
            "unlimited".to_string()
        } else {
            format!("{} KiB", v / 1024)
        }
    };
    let cap_ipc_lock = host
        .read("/proc/self/status")
        .and_then(|s| {
            let hex = s
                .lines()
                .find(|l| l.starts_with("CapEff:"))?
                .split_whitespace()
                .nth(1)?
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << 14) != 0);
    let memlock = rlimit(libc::RLIMIT_MEMLOCK);
    // Ringtail fits its registered buffers into the limit (8 MiB runs four shards); more shards
    // or bigger WAL writes need more, or CAP_IPC_LOCK.
    let want = (shards as u64).div_ceil(4) * (8 << 20);
    let ok = cap_ipc_lock || memlock.is_some_and(|m| m >= want);
    let mut items = vec![item(
        "limits",
        "memlock (ulimit -l)",
        format!(
            "{}{}",
            memlock.map_or("?".into(), human),
            if cap_ipc_lock { ", CAP_IPC_LOCK" } else { "" }
        ),
        &format!("≥ {} KiB or CAP_IPC_LOCK", want / 1024),
        if ok { Status::Ok } else { Status::Advise },
        "io_uring's registered buffers count as locked memory; Ringtail sizes them to the limit and refuses to start when it is too small",
    )];
    items.last_mut().unwrap().change =
        Some("ulimit -l / systemd LimitMEMLOCK= / docker --ulimit memlock=".into());
    let nofile = rlimit(libc::RLIMIT_NOFILE);
    let mut fd = item(
        "limits",
        "open files (ulimit -n)",
        nofile.map_or("?".into(), |n| {
            if n == libc::RLIM_INFINITY {
                "unlimited".into()
            } else {
                n.to_string()
            }
        }),
        "≥ 65536",
        if nofile.is_some_and(|n| n >= 65536) {
            Status::Ok
        } else {
            Status::Advise
        },
        "one descriptor per client connection: a few thousand consumers exhaust the usual 1024",
    );
    fd.change = Some("ulimit -n 65536 / systemd LimitNOFILE=65536".into());
    items.push(fd);
    items
}

/// The block device holding `data_dir` (the WAL rings): its queue settings.
pub fn device_items(host: &Host, data_dir: &Path) -> Vec<Item> {
    if !host.is_live() {
        return vec![not_live("disk", "WAL device")];
    }
    let dir = std::iter::successors(Some(data_dir), |d| d.parent()).find(|d| d.exists());
    let Some(dir) = dir else {
        return vec![item(
            "disk",
            "WAL device",
            "?".into(),
            "-",
            Status::Unknown,
            "the data directory does not exist",
        )];
    };
    use std::os::unix::fs::MetadataExt;
    let dev = match std::fs::metadata(dir) {
        Ok(m) => m.dev(),
        Err(e) => {
            return vec![item(
                "disk",
                "WAL device",
                format!("{e}"),
                "-",
                Status::Unknown,
                "cannot stat the data directory",
            )]
        }
    };
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    queue_items(
        host,
        &format!("/sys/dev/block/{major}:{minor}"),
        &dir.display().to_string(),
    )
}

/// Queue settings of the device at `sys_dev` (a partition's are its disk's).
pub fn queue_items(host: &Host, sys_dev: &str, shown: &str) -> Vec<Item> {
    let resolved = std::fs::canonicalize(host.path(sys_dev)).ok();
    let Some(mut disk) = resolved else {
        return vec![item(
            "disk",
            "WAL device",
            format!("{shown}: no block device ({sys_dev})"),
            "-",
            Status::Info,
            "a virtual or network filesystem (tmpfs, overlay, NFS): O_DIRECT and barriers behave differently; put the data directory on a local NVMe filesystem",
        )];
    };
    if disk.join("partition").exists() {
        disk.pop();
    }
    let name = disk
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let q = |f: &str| {
        std::fs::read_to_string(disk.join("queue").join(f))
            .ok()
            .map(|s| s.trim().to_string())
    };
    let sys_q = format!("/sys/block/{name}/queue");
    let mut items = Vec::new();
    if let Some(s) = q("scheduler") {
        let cur = selected(&s);
        let rotational = q("rotational").as_deref() == Some("1");
        let mut i = item(
            "disk",
            &format!("{name} scheduler"),
            cur.clone(),
            "none",
            if cur == "none" || rotational { Status::Ok } else { Status::Advise },
            "an NVMe device orders and queues itself; a software scheduler adds latency to every WAL write (rotational disks keep mq-deadline)",
        );
        i.change = Some(format!("echo none > {sys_q}/scheduler"));
        if i.status == Status::Advise
            && s.split_whitespace()
                .any(|c| c.trim_matches(['[', ']']) == "none")
        {
            i.writes.push(Write {
                path: format!("{sys_q}/scheduler"),
                value: "none".into(),
            });
        }
        items.push(i);
    }
    if let Some(n) = q("nr_requests") {
        items.push(item("disk", &format!("{name} nr_requests"), n, "≥ 64", Status::Info, "requests the block layer queues; the WAL keeps one write in flight per shard, uploads a few more"));
    }
    if let Some(wc) = q("write_cache") {
        items.push(item(
            "disk",
            &format!("{name} write cache"),
            wc.clone(),
            "write through, or write back with power-loss protection",
            Status::Info,
            "with a volatile write-back cache an acknowledged WAL write is durable only because O_DSYNC/fdatasync send a flush (FUA); do not switch the cache to `write through` by hand on a device that lies",
        ));
    }
    let logical = q("logical_block_size");
    let physical = q("physical_block_size");
    if let (Some(l), Some(p)) = (logical, physical) {
        let ok = l.parse::<u64>().is_ok_and(|l| l <= 4096 && 4096 % l == 0);
        items.push(item(
            "disk",
            &format!("{name} block size"),
            format!("logical {l}, physical {p}"),
            "logical ≤ 4096",
            if ok { Status::Ok } else { Status::Advise },
            "WAL chunks are 4 KiB-aligned O_DIRECT writes; a device with a larger logical block cannot take them",
        ));
    }
    if let Some(poll) = q("io_poll") {
        items.push(item("disk", &format!("{name} poll queues"), if poll == "1" { "on".into() } else { "off".into() }, "optional", Status::Info, "polled completions (nvme.poll_queues=N) cut interrupt latency for IOPOLL rings; glommio's default rings do not poll"));
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_reports_its_disk_queue() {
        let dir = tempfile::tempdir().unwrap();
        let h = Host::at(dir.path());
        let disk = h.path("/sys/devices/pci0/nvme/nvme0n1");
        std::fs::create_dir_all(disk.join("queue")).unwrap();
        std::fs::create_dir_all(disk.join("nvme0n1p1")).unwrap();
        std::fs::write(disk.join("nvme0n1p1/partition"), "1").unwrap();
        for (f, v) in [
            ("scheduler", "[mq-deadline] kyber none"),
            ("rotational", "0"),
            ("write_cache", "write back"),
            ("logical_block_size", "512"),
            ("physical_block_size", "4096"),
            ("nr_requests", "1023"),
        ] {
            std::fs::write(disk.join("queue").join(f), v).unwrap();
        }
        std::fs::create_dir_all(h.path("/sys/dev/block")).unwrap();
        std::os::unix::fs::symlink(disk.join("nvme0n1p1"), h.path("/sys/dev/block/259:1")).unwrap();
        let items = queue_items(&h, "/sys/dev/block/259:1", "/data");
        let sched = &items[0];
        assert_eq!(
            (sched.name.as_str(), sched.status),
            ("nvme0n1 scheduler", Status::Advise)
        );
        assert_eq!(sched.writes[0].path, "/sys/block/nvme0n1/queue/scheduler");
        assert!(items
            .iter()
            .any(|i| i.name == "nvme0n1 block size" && i.status == Status::Ok));
        assert!(items.iter().any(|i| i.current == "write back"));
        // No device (tmpfs, overlay): said plainly.
        let none = queue_items(&h, "/sys/dev/block/0:42", "/data");
        assert!(none[0].current.contains("no block device"));
    }

    #[test]
    fn the_live_host_is_probed() {
        let items = io_uring_items(&Host::live());
        // This machine (and CI) has io_uring; a container without it reports it unavailable.
        assert!(!items.is_empty());
        let items = limit_items(&Host::live(), 2);
        assert!(items[0].current.contains("KiB") || items[0].current.contains("unlimited"));
    }
}
