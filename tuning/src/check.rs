//! `ringtail tune check`: what the host looks like against what a latency-sensitive Ringtail
//! broker wants, item by item, with the reasoning and the command that would change it.

use std::path::Path;

use crate::host::{selected, Host};
use crate::item::{Item, Status, Write};

fn sysctl_name(path: &str) -> String {
    path.trim_start_matches("/proc/sys/").replace('/', ".")
}

/// An integer sysctl that should be at least / at most / exactly `want`.
fn sysctl(
    host: &Host,
    area: &'static str,
    path: &str,
    want: i64,
    cmp: fn(i64, i64) -> bool,
    why: &str,
) -> Item {
    let name = sysctl_name(path);
    let Some(v) = host.read(path) else {
        return Item::new(area, &name, "missing").unknown("not exposed here (kernel or container)");
    };
    let ok = v.parse::<i64>().is_ok_and(|n| cmp(n, want));
    Item::new(area, &name, &v)
        .want(want.to_string(), ok, why)
        .writing(path, &want.to_string(), format!("sysctl -w {name}={want}"))
}

fn version(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// Every item for a broker with `shards` shards keeping its WAL under `data_dir`.
pub fn check(host: &Host, data_dir: &Path, shards: usize) -> Vec<Item> {
    let mut items = Vec::new();
    let release = host.read("/proc/sys/kernel/osrelease");
    let (major, minor) = release.as_deref().map(version).unwrap_or((0, 0));
    items.push(match &release {
        Some(r) => Item::new("kernel", "version", r).want(
            "≥ 6.1",
            (major, minor) >= (6, 1),
            "io_uring DEFER_TASKRUN (6.1), zero-copy send (6.0) and mature O_DIRECT/registered-buffer paths; older kernels lack what the shards and the WAL use",
        ),
        None => Item::new("kernel", "version", "?").unknown("/proc/sys/kernel/osrelease unreadable"),
    });
    items.push(match host.read("/proc/sys/kernel/io_uring_disabled") {
        None => Item::new("kernel", "kernel.io_uring_disabled", "absent").want(
            "0",
            true,
            "the sysctl exists from 6.6; without it io_uring is on unless seccomp blocks it (probed below)",
        ),
        Some(v) => Item::new("kernel", "kernel.io_uring_disabled", &v)
            .want("0", v == "0", "1 or 2 disable io_uring for Ringtail's user: the shards cannot start")
            .writing("/proc/sys/kernel/io_uring_disabled", "0", "sysctl -w kernel.io_uring_disabled=0".into()),
    });
    items.extend(crate::probe::io_uring_items(host));
    items.extend(crate::probe::limit_items(host, shards));
    items.extend(cpu_items(host, shards));
    items.extend(memory_items(host));
    items.extend(crate::probe::device_items(host, data_dir));
    items.extend(network_items(host, shards));
    items
}

fn cpu_items(host: &Host, shards: usize) -> Vec<Item> {
    let mut items = Vec::new();
    let cpus = host.numbered("/sys/devices/system/cpu", "cpu");
    items.push(
        Item::new("cpu", "CPUs", cpus.len().to_string()).info(
            format!("≥ {shards} (one per shard)"),
            "each shard is pinned to one CPU; more shards than CPUs share cores and lose the point of sharding",
        ),
    );
    if let Some(smt) = host.read("/sys/devices/system/cpu/smt/active") {
        items.push(Item::new("cpu", "SMT", if smt == "1" { "on" } else { "off" }).info(
            "shards = physical cores",
            "SMT siblings share a core's execution units: two shards on siblings contend; count physical cores when choosing --shards",
        ));
    }
    let nodes = host.numbered("/sys/devices/system/node", "node");
    items.push(Item::new("cpu", "NUMA nodes", nodes.len().max(1).to_string()).info(
        "1 per broker",
        "a shard's memory and its NIC/NVMe queues should sit on its node; with several nodes run one broker per node (numactl --cpunodebind --membind)",
    ));
    let governor_path = "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor";
    match host.read(governor_path) {
        None => items.push(Item::new("cpu", "frequency governor", "none").info(
            "performance",
            "no cpufreq here (a VM, or a fixed-frequency CPU): nothing to set",
        )),
        Some(g) => {
            let mut item = Item::new("cpu", "frequency governor", &g).want(
                "performance",
                g == "performance",
                "powersave/schedutil ramp the clock up only after load appears: the first requests after idle pay for it in latency",
            );
            if item.status == Status::Advise {
                for cpu in &cpus {
                    let p = format!("/sys/devices/system/cpu/{cpu}/cpufreq/scaling_governor");
                    if host.read(&p).is_some() {
                        item.writes.push(Write {
                            path: p,
                            value: "performance".into(),
                        });
                    }
                }
            }
            item.change = Some("cpupower frequency-set -g performance".into());
            items.push(item);
        }
    }
    let cs = "/sys/devices/system/clocksource/clocksource0/current_clocksource";
    if let Some(current) = host.read(cs) {
        let available = host
            .read("/sys/devices/system/clocksource/clocksource0/available_clocksource")
            .unwrap_or_default();
        let has_tsc = available.split_whitespace().any(|c| c == "tsc");
        let item = Item::new("cpu", "clocksource", &current);
        items.push(if has_tsc {
            item.want("tsc", current == "tsc", "every latency measurement and timer reads the clock: tsc is read in user space (vDSO), others may trap to the hypervisor")
                .writing(cs, "tsc", format!("echo tsc > {cs}"))
        } else {
            item.info(current.clone(), "tsc is not offered here (not stable, or the hypervisor's clock is preferred): keep the kernel's choice")
        });
    }
    items
}

fn memory_items(host: &Host) -> Vec<Item> {
    let mut items = Vec::new();
    let thp = "/sys/kernel/mm/transparent_hugepage/enabled";
    items.push(match host.read(thp) {
        None => Item::new("memory", "transparent huge pages", "absent").unknown("no THP control here"),
        Some(v) => {
            let cur = selected(&v);
            Item::new("memory", "transparent huge pages", &cur)
                .want(
                    "madvise",
                    cur != "always",
                    "with `always` the kernel compacts memory to make huge pages at fault time: multi-millisecond stalls on the shards; `madvise` leaves it to programs that ask",
                )
                .writing(thp, "madvise", format!("echo madvise > {thp}"))
        }
    });
    items.push(sysctl(
        host,
        "memory",
        "/proc/sys/vm/swappiness",
        1,
        |n, w| n <= w,
        "the hot-tail cache and in-flight batches must stay in RAM; a swapped-out page on the fetch path costs a disk read",
    ));
    items.push(sysctl(
        host,
        "memory",
        "/proc/sys/vm/dirty_background_ratio",
        10,
        |n, w| n <= w,
        "the WAL bypasses the page cache (O_DIRECT); the local object directory does not: a large dirty backlog makes its fsync slow (the kernel default, 10, is fine)",
    ));
    items.push(sysctl(
        host,
        "memory",
        "/proc/sys/vm/dirty_ratio",
        20,
        |n, w| n <= w,
        "writers block once this much memory is dirty; the default (20) bounds the object directory's flush burst",
    ));
    items
}

fn network_items(host: &Host, shards: usize) -> Vec<Item> {
    let mut items = vec![
        sysctl(
            host,
            "network",
            "/proc/sys/net/core/somaxconn",
            4096,
            |n, w| n >= w,
            "the accept backlog of each shard's listener: a reconnect storm after a broker restart overflows a small one (SYNs dropped, clients wait for a retransmit, ≥ 1 s)",
        ),
        sysctl(
            host,
            "network",
            "/proc/sys/net/core/busy_read",
            0,
            |n, w| n == w,
            "busy polling spins a core per waiting socket; Ringtail's shards already poll io_uring, so it only burns CPU (measure with `tune experiment` before changing)",
        ),
        sysctl(
            host,
            "network",
            "/proc/sys/net/core/busy_poll",
            0,
            |n, w| n == w,
            "the same for poll/epoll waits: the shards wait in io_uring, so socket busy polling adds spinning without shortening their wake-ups",
        ),
    ];
    for (path, why) in [
        ("/proc/sys/net/ipv4/tcp_rmem", "receive buffer max: a producer's window is bounded by it; 16 MiB keeps a 10 Gb/s link with 10 ms RTT full"),
        ("/proc/sys/net/ipv4/tcp_wmem", "send buffer max: a fetch response of several MiB goes out in one vectored send when the buffer can take it"),
    ] {
        let name = sysctl_name(path);
        items.push(match host.read(path) {
            None => Item::new("network", &name, "missing").unknown("not exposed here"),
            Some(v) => {
                let v = v.split_whitespace().collect::<Vec<_>>().join(" ");
                let max: u64 = v.split_whitespace().nth(2).and_then(|m| m.parse().ok()).unwrap_or(0);
                let fields: Vec<&str> = v.split_whitespace().collect();
                let want = format!("{} {} 16777216", fields.first().unwrap_or(&"4096"), fields.get(1).unwrap_or(&"131072"));
                Item::new("network", &name, &v)
                    .want(want.clone(), max >= 16 << 20, why)
                    .writing(path, &want, format!("sysctl -w {name}='{want}'"))
            }
        });
    }
    // NIC interrupts against the shards' cores (shards are pinned to CPUs 0..shards).
    if let Some(interrupts) = host.read("/proc/interrupts") {
        let nic: Vec<(String, String)> = interrupts
            .lines()
            .filter(|l| {
                ["virtio", "eth", "ens", "enp", "mlx", "ixgbe", "i40e", "ena"]
                    .iter()
                    .any(|n| l.contains(n))
                    && !l.contains("nvme")
                    && !l.contains("blk")
            })
            .filter(|l| {
                l.contains("input")
                    || l.contains("output")
                    || l.contains("TxRx")
                    || l.contains("eth")
                    || l.contains("ens")
                    || l.contains("enp")
                    || l.contains("-rx-")
                    || l.contains("-tx-")
                    || l.contains("Tx-Rx")
            })
            .filter_map(|l| {
                let irq = l.split(':').next()?.trim().to_string();
                irq.parse::<u32>().ok()?;
                let cpus = host
                    .read(&format!("/proc/irq/{irq}/smp_affinity_list"))
                    .unwrap_or_else(|| "?".into());
                Some((irq, cpus))
            })
            .collect();
        let current = if nic.is_empty() {
            "no NIC queue interrupts found".to_string()
        } else {
            nic.iter()
                .map(|(i, c)| format!("irq {i} → cpus {c}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        items.push(Item::new("network", "NIC IRQ affinity", current).info(
            format!("shard cores 0–{} (or all others)", shards.saturating_sub(1)),
            "a NIC queue's interrupt on the shard that owns the connection avoids a cross-core wake-up; on a busy box, moving IRQs off the shard cores keeps them from preempting a shard. Set with /proc/irq/N/smp_affinity_list (irqbalance may undo it)",
        ));
    }
    items
}

/// The table a person reads: one line per item.
pub fn table(items: &[Item]) -> String {
    let mut rows = vec![[
        "area".to_string(),
        "item".into(),
        "current".into(),
        "recommended".into(),
        "status".into(),
        "change with".into(),
    ]];
    for i in items {
        rows.push([
            i.area.to_string(),
            i.name.clone(),
            i.current.clone(),
            i.recommended.clone(),
            format!("{:?}", i.status).to_lowercase(),
            i.change.clone().unwrap_or_default(),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count().min(48))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (n, r) in rows.iter().enumerate() {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| {
                let cell: String = cell.chars().take(48).collect();
                format!("{cell:<w$}")
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if n > 0 && !items[n - 1].why.is_empty() && items[n - 1].status != Status::Ok {
            out.push_str(&format!("    why: {}\n", items[n - 1].why));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let p = dir.path().join(path.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        dir
    }

    fn find<'a>(items: &'a [Item], name: &str) -> &'a Item {
        items
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("{name}"))
    }

    #[test]
    fn a_tuned_host_is_ok_and_an_untuned_one_gets_advice_with_writes() {
        let untuned = fixture(&[
            ("/proc/sys/kernel/osrelease", "5.15.0-91-generic\n"),
            ("/proc/sys/kernel/io_uring_disabled", "2\n"),
            ("/proc/sys/vm/swappiness", "60\n"),
            ("/proc/sys/vm/dirty_ratio", "20\n"),
            ("/proc/sys/net/core/somaxconn", "128\n"),
            ("/proc/sys/net/ipv4/tcp_rmem", "4096 131072 6291456\n"),
            ("/sys/kernel/mm/transparent_hugepage/enabled", "[always] madvise never\n"),
            ("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor", "powersave\n"),
            ("/sys/devices/system/cpu/cpu1/cpufreq/scaling_governor", "powersave\n"),
            ("/sys/devices/system/cpu/smt/active", "1\n"),
            ("/sys/devices/system/clocksource/clocksource0/current_clocksource", "hpet\n"),
            ("/sys/devices/system/clocksource/clocksource0/available_clocksource", "tsc hpet acpi_pm\n"),
            ("/proc/interrupts", "           CPU0       CPU1\n 24:  100  0  PCI-MSI 49153-edge  virtio1-input.0\n 25:  5  0  PCI-MSI 1-edge  nvme0q1\n"),
            ("/proc/irq/24/smp_affinity_list", "1\n"),
        ]);
        let items = check(&Host::at(untuned.path()), Path::new("/data"), 2);
        for name in [
            "version",
            "kernel.io_uring_disabled",
            "vm.swappiness",
            "net.core.somaxconn",
            "net.ipv4.tcp_rmem",
            "transparent huge pages",
            "frequency governor",
            "clocksource",
        ] {
            assert_eq!(find(&items, name).status, Status::Advise, "{name}");
        }
        assert_eq!(find(&items, "vm.dirty_ratio").status, Status::Ok);
        let governor = find(&items, "frequency governor");
        assert_eq!(governor.writes.len(), 2, "every CPU's governor");
        assert_eq!(find(&items, "vm.swappiness").writes[0].value, "1");
        assert_eq!(
            find(&items, "net.ipv4.tcp_rmem").writes[0].value,
            "4096 131072 16777216"
        );
        let irq = find(&items, "NIC IRQ affinity");
        assert_eq!(
            irq.current, "irq 24 → cpus 1",
            "the NVMe queue is not a NIC"
        );
        // Missing files: unknown, never a write.
        let wmem = find(&items, "net.ipv4.tcp_wmem");
        assert_eq!((wmem.status, wmem.writes.len()), (Status::Unknown, 0));
        assert!(table(&items).contains("why: "));

        let tuned = fixture(&[
            ("/proc/sys/kernel/osrelease", "6.18.0\n"),
            ("/proc/sys/vm/swappiness", "1\n"),
            (
                "/sys/kernel/mm/transparent_hugepage/enabled",
                "always [madvise] never\n",
            ),
            (
                "/sys/devices/system/clocksource/clocksource0/current_clocksource",
                "kvm-clock\n",
            ),
            (
                "/sys/devices/system/clocksource/clocksource0/available_clocksource",
                "kvm-clock acpi_pm\n",
            ),
        ]);
        let items = check(&Host::at(tuned.path()), Path::new("/data"), 2);
        assert_eq!(find(&items, "version").status, Status::Ok);
        assert_eq!(
            find(&items, "kernel.io_uring_disabled").status,
            Status::Ok,
            "absent before 6.6"
        );
        assert_eq!(find(&items, "vm.swappiness").status, Status::Ok);
        assert_eq!(find(&items, "transparent huge pages").status, Status::Ok);
        assert_eq!(
            find(&items, "clocksource").status,
            Status::Info,
            "no tsc offered"
        );
        assert_eq!(
            find(&items, "frequency governor").status,
            Status::Info,
            "no cpufreq: a VM"
        );
        assert!(items
            .iter()
            .all(|i| i.status == Status::Advise || i.writes.is_empty()));
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(version("6.18.0-rc1"), (6, 18));
        assert_eq!(version("5.15.0-91-generic"), (5, 15));
        assert_eq!(version("garbage"), (0, 0));
    }
}
