//! The machine as files under a root: `/` in production, a fixture directory in tests. Only
//! the live root (`/`) is also probed by system calls (io_uring, rlimits, the data directory's
//! device).

use std::path::{Path, PathBuf};

pub struct Host {
    pub root: PathBuf,
}

impl Host {
    pub fn live() -> Host {
        Host { root: "/".into() }
    }

    pub fn at(root: impl Into<PathBuf>) -> Host {
        Host { root: root.into() }
    }

    /// The real machine (system calls describe it too), not a fixture.
    pub fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }

    /// `path` (absolute, as on the machine) under the root.
    pub fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// A file's content, trimmed; None if it does not exist or cannot be read.
    pub fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.path(path))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Names in a directory that start with `prefix` and continue with a digit, sorted by
    /// their number (`cpu0`, `cpu1`, ... but not `cpufreq`).
    pub fn numbered(&self, dir: &str, prefix: &str) -> Vec<String> {
        let mut names: Vec<(u64, String)> = std::fs::read_dir(self.path(dir))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let n = name.strip_prefix(prefix)?.parse().ok()?;
                Some((n, name))
            })
            .collect();
        names.sort();
        names.into_iter().map(|(_, n)| n).collect()
    }

    pub fn write(&self, path: &str, value: &str) -> std::io::Result<()> {
        std::fs::write(self.path(path), value)
    }
}

/// The selected value of a sysfs choice list: `always [madvise] never` -> `madvise`.
pub fn selected(choices: &str) -> String {
    choices
        .split_whitespace()
        .find_map(|c| c.strip_prefix('[').and_then(|c| c.strip_suffix(']')))
        .unwrap_or(choices)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_root_and_choices_parse() {
        let dir = tempfile::tempdir().unwrap();
        let h = Host::at(dir.path());
        std::fs::create_dir_all(h.path("/sys/devices/system/cpu/cpu10")).unwrap();
        std::fs::create_dir_all(h.path("/sys/devices/system/cpu/cpu2")).unwrap();
        std::fs::create_dir_all(h.path("/sys/devices/system/cpu/cpufreq")).unwrap();
        assert_eq!(
            h.numbered("/sys/devices/system/cpu", "cpu"),
            vec!["cpu2", "cpu10"]
        );
        assert!(!h.is_live() && Host::live().is_live());
        assert_eq!(h.read("/proc/nothing"), None);
        assert_eq!(selected("always [madvise] never"), "madvise");
        assert_eq!(selected("[none] mq-deadline"), "none");
        assert_eq!(selected("60"), "60");
    }
}
