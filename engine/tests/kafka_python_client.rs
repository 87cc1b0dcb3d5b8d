//! kafka-python (its own pure-Python protocol implementation) against the real binary.
//! Needs the packages in `scripts/test-requirements.txt`; `.ci/run` and `scripts/test.sh` install them.

mod common;

use std::process::Command;

#[test]
fn kafka_python_round_trip_admin_and_offsets() {
    let broker = common::TestBroker::start(&["--shards", "2"]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/kafka_python_roundtrip.py"
    );
    let python = common::python();
    let out = Command::new(&python)
        .arg(script)
        .arg(broker.bootstrap())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e} (run scripts/test.sh, which installs the test requirements)"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kafka-python script failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("OK kafka-python"), "{stdout}");
}

/// Runs `group_one_thread.py` with `members` consumers against a 2-shard broker; returns its
/// output, or panics with it (and the broker's log lines about the group) when it fails. The
/// script bounds itself (about 50 s at worst); a hung interpreter is killed after 90 s.
fn one_thread_group(members: usize) -> String {
    let broker = common::TestBroker::start(&["--shards", "2"]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/group_one_thread.py"
    );
    let topic = format!("one-thread-{members}");
    let mut child = Command::new(common::python())
        .arg(script)
        .arg(broker.bootstrap())
        .arg(&topic)
        .arg(members.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python (scripts/test.sh installs the test requirements)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(&format!("OK {members} members settled")),
        "kafka-python group of {members} in one thread did not settle ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}

/// Issue 17: two kafka-python 3.0 consumers of one group polled in turn from one thread. The
/// second's join completes while the first is being polled; kafka-python drops that answer and
/// sends the same JoinGroup again. Answered with a new rebalance (before: the first held
/// partitions [0, 1] and the second none, for as long as the script ran), the group never
/// settled; answered from the current generation, as Kafka answers a follower rejoining with
/// unchanged metadata, it settles: every partition held once, every member reading its own.
#[test]
fn kafka_python_consumers_polled_in_turn_share_the_partitions() {
    let out = one_thread_group(2);
    eprintln!("{out}");
}

#[test]
fn three_kafka_python_consumers_polled_in_turn_share_the_partitions() {
    let out = one_thread_group(3);
    eprintln!("{out}");
}
