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
