//! `ringtail tune`: check reports this host's real values; apply's dry run changes nothing and
//! apply/revert round-trips on a fixture root; a tiny experiment produces its table, plot and
//! recommendation.

use std::process::{Command, Output};

fn tune(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_ringtail"))
        .arg("tune")
        .args(args)
        .output()
        .unwrap();
    println!(
        "ringtail tune {}: {}\n{}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn check_reports_this_host() {
    let dir = tempfile::tempdir().unwrap();
    let o = tune(&[
        "check",
        "--json",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let items: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let get = |name: &str| {
        items
            .iter()
            .find(|i| i["name"] == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(get("version")["current"], release.trim());
    let swappiness = std::fs::read_to_string("/proc/sys/vm/swappiness").unwrap();
    assert_eq!(get("vm.swappiness")["current"], swappiness.trim());
    // The WAL opcodes are probed on a real ring (CI machines have io_uring).
    assert_eq!(get("Write (O_DIRECT WAL writes)")["current"], "yes");
    assert!(items.iter().any(|i| i["area"] == "disk"));
    let table = tune(&["check", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("recommended"));
}

#[test]
fn apply_dry_run_changes_nothing_and_apply_revert_round_trips_on_a_fixture_root() {
    let root = tempfile::tempdir().unwrap();
    let files = [
        ("proc/sys/vm/swappiness", "60\n"),
        (
            "sys/kernel/mm/transparent_hugepage/enabled",
            "[always] madvise never\n",
        ),
        ("proc/sys/kernel/osrelease", "6.18.0\n"),
    ];
    for (path, content) in files {
        let p = root.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    let snapshot = || {
        files
            .iter()
            .map(|(p, _)| std::fs::read_to_string(root.path().join(p)).unwrap())
            .collect::<Vec<_>>()
    };
    let before = snapshot();
    let r = root.path().to_str().unwrap();
    let o = tune(&["apply", "--root", r]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("would write \"1\"") && text.contains("dry run"),
        "{text}"
    );
    assert_eq!(snapshot(), before, "the dry run wrote nothing");
    assert!(tune(&["apply", "--root", r, "--yes"]).status.success());
    assert_eq!(
        std::fs::read_to_string(root.path().join("proc/sys/vm/swappiness")).unwrap(),
        "1"
    );
    let again = tune(&["apply", "--root", r, "--yes"]);
    assert!(
        again.status.success()
            && String::from_utf8_lossy(&again.stdout).contains("nothing to write")
    );
    // Something drifted since: a new apply would overwrite the recorded originals, so it waits
    // for a revert.
    std::fs::write(root.path().join("proc/sys/vm/swappiness"), "30").unwrap();
    let o = tune(&["apply", "--root", r, "--yes"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("revert"));
    assert!(tune(&["revert", "--root", r]).status.success());
    assert_eq!(
        std::fs::read_to_string(root.path().join("proc/sys/vm/swappiness")).unwrap(),
        "60"
    );
    assert_eq!(
        std::fs::read_to_string(
            root.path()
                .join("sys/kernel/mm/transparent_hugepage/enabled")
        )
        .unwrap(),
        "always"
    );
}

#[test]
fn a_tiny_experiment_produces_its_table_plot_and_recommendation() {
    let out = tempfile::tempdir().unwrap();
    let o = tune(&[
        "experiment",
        "--parameter",
        "spin-before-park-us",
        "--values",
        "0,100",
        "--repeats",
        "2",
        "--duration",
        "2",
        "--broker-arg=--wal-size-per-shard",
        "--broker-arg=33554432",
        "--broker-arg=--shards",
        "--broker-arg=1",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(o.status.success());
    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(
        report.contains("| 0 | 2 |") && report.contains("| 100 | 2 |"),
        "{report}"
    );
    assert!(
        [
            "Keep --spin-before-park-us=0",
            "Use --spin-before-park-us=100",
            "Consider --spin-before-park-us=100"
        ]
        .iter()
        .any(|r| report.contains(r)),
        "{report}"
    );
    let svg = std::fs::read_to_string(out.path().join("experiment.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains(">100<"));
    let runs = std::fs::read_dir(out.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count();
    assert_eq!(runs, 4);
    // A sweep over the time limit is refused before it starts.
    let o = tune(&[
        "experiment",
        "--parameter",
        "shards",
        "--values",
        "1,2",
        "--duration",
        "600",
        "--max-minutes",
        "1",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("over the limit"));
}
