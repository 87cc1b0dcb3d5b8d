//! Running without CAP_IPC_LOCK under a memlock limit, as a non-root user would: the broker
//! sizes glommio's registered buffers to fit, or refuses to start and says what to raise.

mod common;

use std::process::Command;

fn is_root() -> bool {
    String::from_utf8_lossy(&Command::new("id").arg("-u").output().unwrap().stdout).trim() == "0"
}

/// `prlimit` to `bytes`, and (as root) drop CAP_IPC_LOCK so that the limit applies.
fn limited(bytes: &str) -> Vec<String> {
    let mut w: Vec<String> = Vec::new();
    if is_root() {
        w.extend(["setpriv", "--bounding-set", "-ipc_lock"].map(String::from));
    }
    w.push("prlimit".into());
    w.push(format!("--memlock={bytes}:{bytes}"));
    w
}

#[test]
fn too_small_a_limit_fails_with_what_to_raise_and_8_mib_serves() {
    let dir = tempfile::tempdir().unwrap();
    let wrapper = limited("65536");
    let out = Command::new(&wrapper[0])
        .args(&wrapper[1..])
        .arg(env!("CARGO_BIN_EXE_ringtail"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("locked-memory limit is 64 KiB"), "{stderr}");
    assert!(stderr.contains("ulimit -l 4096"), "{stderr}");
    assert!(stderr.contains("CAP_IPC_LOCK"), "{stderr}");

    // A common default limit (8 MiB) runs two shards with registered buffers that fit.
    let wrapper = limited("8388608");
    let wrapper: Vec<&str> = wrapper.iter().map(|s| s.as_str()).collect();
    let dir = tempfile::tempdir().unwrap();
    let broker = common::TestBroker::start_wrapped(
        &wrapper,
        dir.path(),
        &["--shards", "2", "--auto-create-topics", "true"],
    );
    assert!(
        !broker.log_contains("registering buffers"),
        "glommio had to skip buffer registration"
    );
    let b = broker.bootstrap();
    let p = Command::new("sh")
        .arg("-c")
        .arg(format!("echo fits | kcat -b {b} -P -t m"))
        .status()
        .unwrap();
    assert!(p.success());
    let c = Command::new("kcat")
        .args(["-b", &b, "-C", "-t", "m", "-o", "beginning", "-e", "-q"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&c.stdout), "fits\n");
}
