//! `ringtail tune apply` / `revert`: writes the advised sysctl and sysfs values — only those
//! `check` listed — after recording what was there, so that `revert` can put it back.

use serde::{Deserialize, Serialize};

use crate::host::{selected, Host};
use crate::item::{Item, Status};

/// One write: where, what was there, what goes there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub item: String,
    pub path: String,
    pub from: String,
    pub to: String,
}

/// Where `apply` records previous values unless told otherwise (under the root).
pub const DEFAULT_STATE: &str = "/var/lib/ringtail/tune-previous.json";

/// The changes `apply` would make for `items` (advised items with a known file to write).
pub fn plan(host: &Host, items: &[Item]) -> Vec<Change> {
    items
        .iter()
        .filter(|i| i.status == Status::Advise)
        .flat_map(|i| {
            i.writes.iter().filter_map(|w| {
                let from = selected(&host.read(&w.path)?);
                (from != w.value).then(|| Change {
                    item: i.name.clone(),
                    path: w.path.clone(),
                    from,
                    to: w.value.clone(),
                })
            })
        })
        .collect()
}

/// Writes `changes`, recording the previous values in `state` first. A write that fails puts
/// back the ones already made and returns the error. Refuses to run over an existing state file
/// (revert first: its values are the original ones).
pub fn apply(host: &Host, changes: &[Change], state: &str) -> anyhow::Result<()> {
    let state_path = host.path(state);
    anyhow::ensure!(
        !state_path.exists(),
        "{} exists: an earlier apply was not reverted (run `ringtail tune revert` first)",
        state_path.display()
    );
    if let Some(dir) = state_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&state_path, serde_json::to_vec_pretty(changes)?)?;
    for (n, c) in changes.iter().enumerate() {
        if let Err(e) = host.write(&c.path, &c.to) {
            for done in changes[..n].iter().rev() {
                let _ = host.write(&done.path, &done.from);
            }
            let _ = std::fs::remove_file(&state_path);
            anyhow::bail!(
                "writing {:?} to {}: {e} (earlier changes put back)",
                c.to,
                c.path
            );
        }
    }
    Ok(())
}

/// Puts back what `apply` recorded, newest first; returns what it restored.
pub fn revert(host: &Host, state: &str) -> anyhow::Result<Vec<Change>> {
    let state_path = host.path(state);
    let text = std::fs::read(&state_path).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e} (nothing was applied, or it was reverted)",
            state_path.display()
        )
    })?;
    let changes: Vec<Change> = serde_json::from_slice(&text)?;
    let mut failed = Vec::new();
    for c in changes.iter().rev() {
        if let Err(e) = host.write(&c.path, &c.from) {
            failed.push(format!("{}: {e}", c.path));
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "could not restore {} (state kept in {})",
        failed.join("; "),
        state_path.display()
    );
    std::fs::remove_file(&state_path)?;
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::check;
    use std::path::Path;

    fn fixture() -> (tempfile::TempDir, Host) {
        let dir = tempfile::tempdir().unwrap();
        let h = Host::at(dir.path());
        for (path, content) in [
            ("/proc/sys/vm/swappiness", "60\n"),
            ("/proc/sys/net/core/somaxconn", "4096\n"),
            (
                "/sys/kernel/mm/transparent_hugepage/enabled",
                "[always] madvise never\n",
            ),
            ("/proc/sys/kernel/osrelease", "6.18.0\n"),
        ] {
            std::fs::create_dir_all(h.path(path).parent().unwrap()).unwrap();
            std::fs::write(h.path(path), content).unwrap();
        }
        (dir, h)
    }

    fn snapshot(h: &Host) -> Vec<Option<String>> {
        [
            "/proc/sys/vm/swappiness",
            "/proc/sys/net/core/somaxconn",
            "/sys/kernel/mm/transparent_hugepage/enabled",
        ]
        .iter()
        .map(|p| h.read(p))
        .collect()
    }

    #[test]
    fn a_plan_changes_nothing_and_apply_then_revert_round_trips() {
        let (_dir, h) = fixture();
        let before = snapshot(&h);
        let changes = plan(&h, &check(&h, Path::new("/data"), 2));
        assert_eq!(
            snapshot(&h),
            before,
            "planning (the dry run) writes nothing"
        );
        let paths: Vec<&str> = changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "/sys/kernel/mm/transparent_hugepage/enabled",
                "/proc/sys/vm/swappiness"
            ],
            "only advised items; somaxconn is already fine"
        );
        assert_eq!(changes[0].from, "always");
        apply(&h, &changes, DEFAULT_STATE).unwrap();
        assert_eq!(h.read("/proc/sys/vm/swappiness").as_deref(), Some("1"));
        assert_eq!(
            h.read("/sys/kernel/mm/transparent_hugepage/enabled")
                .as_deref(),
            Some("madvise")
        );
        assert!(
            apply(&h, &changes, DEFAULT_STATE).is_err(),
            "a second apply would lose the originals"
        );
        let restored = revert(&h, DEFAULT_STATE).unwrap();
        assert_eq!(restored.len(), 2);
        assert_eq!(h.read("/proc/sys/vm/swappiness").as_deref(), Some("60"));
        assert_eq!(
            h.read("/sys/kernel/mm/transparent_hugepage/enabled")
                .as_deref(),
            Some("always")
        );
        assert!(revert(&h, DEFAULT_STATE).is_err(), "nothing left to revert");
    }

    #[test]
    fn a_failed_write_puts_back_the_earlier_ones() {
        let (_dir, h) = fixture();
        let changes = vec![
            Change {
                item: "a".into(),
                path: "/proc/sys/vm/swappiness".into(),
                from: "60".into(),
                to: "1".into(),
            },
            Change {
                item: "b".into(),
                path: "/proc/sys/no/such/dir/x".into(),
                from: "0".into(),
                to: "1".into(),
            },
        ];
        assert!(apply(&h, &changes, DEFAULT_STATE).is_err());
        assert_eq!(h.read("/proc/sys/vm/swappiness").as_deref(), Some("60"));
        assert!(!h.path(DEFAULT_STATE).exists());
    }
}
