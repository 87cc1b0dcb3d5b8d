//! `ringtail-perf` against the real broker and the Tansu peer: short workloads with both drivers
//! produce and consume, the results have sane, non-zero figures with nothing missing; bad input
//! (unreachable or stalled broker, a topic too small, authentication) ends with a clear message,
//! a non-zero exit and the partial result kept.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{signal, Tansu, TestBroker};
use ringtail_perf::run::{run, Driver, RunOptions};
use ringtail_perf::stats::RunResult;
use ringtail_perf::workload::Workload;

fn assert_sane(r: &RunResult, what: &str) {
    println!(
        "{}",
        ringtail_perf::report::markdown(std::slice::from_ref(r))
    );
    assert!(r.produced_messages > 100, "{what}: {r:?}");
    assert_eq!(
        r.missing_messages, 0,
        "{what}: every produced message consumed"
    );
    assert!(r.consumed_messages >= r.produced_messages, "{what}");
    assert_eq!(
        (r.errors, &r.failure),
        (0, &None),
        "{what}: {:?}",
        r.error_messages
    );
    assert!(
        r.publish_latency.count > 0 && r.publish_latency.p50_us > 0,
        "{what}"
    );
    assert!(
        r.end_to_end_latency.count > 0
            && r.end_to_end_latency.p99_us >= r.end_to_end_latency.p50_us,
        "{what}"
    );
    assert!(
        r.publish_msgs_per_s > 0.0 && r.publish_mb_per_s > 0.0,
        "{what}"
    );
    if r.workload.rate > 0 {
        // At 1000/s for ~2 measured seconds (3 s with the warm-up).
        assert!(
            (1000..=3600).contains(&r.produced_messages),
            "{what}: {}",
            r.produced_messages
        );
    }
}

/// Both standard workloads, in a group and on a fixed assignment, with `driver`.
async fn standard_runs(bootstrap: &str, pid: u32, driver: Driver, label: &str) {
    for (workload, subscribe, topics) in [
        ("fixed-rate-1000-1kb", true, 1),
        ("1-topic-8-partitions-1kb", false, 1),
        // Several topics, consumed by one group, keyed.
        ("fixed-rate-1000-1kb", true, 3),
    ] {
        let mut w = Workload::load(workload).unwrap();
        w.warmup_s = 1;
        w.subscribe = subscribe;
        w.topics = topics;
        if topics > 1 {
            w.keys = "random".into();
            w.partitions = 2;
        }
        // Distinct topics: the runs of one test never share one.
        w.topic = format!("{}-{}", w.topic, driver.name());
        let opts = RunOptions {
            duration: Some(Duration::from_secs(3)),
            broker_pid: Some(pid),
            label: label.into(),
            ..RunOptions::new(bootstrap, driver)
        };
        let r = run(&w, &opts).await.unwrap();
        let what = format!("{label} {workload} ×{topics} {}", driver.name());
        assert_sane(&r, &what);
        assert_eq!(r.driver, driver.name());
        assert!(
            r.broker_cpu_s.is_some_and(|c| c > 0.0)
                && r.broker_peak_rss_mib.is_some_and(|m| m > 1.0),
            "{what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_drivers_run_the_standard_workloads_against_ringtail() {
    let b = TestBroker::start(&["--shards", "2", "--group-initial-rebalance-delay-ms", "0"]);
    for driver in [Driver::Native, Driver::Librdkafka] {
        standard_runs(&b.bootstrap(), b.pid(), driver, "ringtail").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_drivers_run_the_standard_workloads_against_the_tansu_peer() {
    let t = Tansu::start(&[]);
    for driver in [Driver::Native, Driver::Librdkafka] {
        standard_runs(&t.addr.to_string(), t.pid(), driver, "tansu").await;
    }
}

/// `ringtail perf ARGS` (the alias runs the `ringtail-perf` built beside `ringtail`).
fn perf(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_ringtail"))
        .arg("perf")
        .args(args)
        .output()
        .unwrap();
    println!(
        "ringtail perf {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn result(path: &Path) -> RunResult {
    serde_json::from_slice(&std::fs::read(path).expect("the result file is kept")).unwrap()
}

#[test]
fn the_cli_reports_bad_input_clearly_and_keeps_partial_results() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let out_s = out.to_str().unwrap();

    // Nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nobody = format!("127.0.0.1:{port}");
    for driver in ["native", "librdkafka"] {
        let o = perf(&[
            "run",
            "--bootstrap",
            &nobody,
            "--workload",
            "fixed-rate-1000-1kb",
            "--driver",
            driver,
            "--out",
            out_s,
        ]);
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(
            e.contains(&nobody) && (e.contains("refused") || e.contains("does not answer")),
            "{driver}: {e}"
        );
    }
    // A listener that never answers: the handshake times out.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let o = perf(&[
        "run",
        "--bootstrap",
        &silent_addr,
        "--workload",
        "fixed-rate-1000-1kb",
        "--driver",
        "native",
        "--stall-timeout",
        "2",
        "--out",
        out_s,
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("no answer"),
        "{}",
        stderr(&o)
    );
    // A workload that does not exist, or is malformed.
    let o = perf(&[
        "run",
        "--bootstrap",
        &nobody,
        "--workload",
        "nonesuch",
        "--out",
        out_s,
    ]);
    assert!(!o.status.success() && stderr(&o).contains("built in: "));

    let mut b = TestBroker::start(&["--group-initial-rebalance-delay-ms", "0"]);
    let bootstrap = b.bootstrap();
    // The workload's topic exists with fewer partitions than it needs.
    let small = dir.path().join("small.toml");
    std::fs::write(
        &small,
        "name='small'\ntopic='perf-small'\npartitions=4\nmessage_size=100\nproducers=1\nconsumers=1\nduration_s=1\n",
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(common::create_topic(&bootstrap, "perf-small", 1, &[]));
    for driver in ["native", "librdkafka"] {
        let o = perf(&[
            "run",
            "--bootstrap",
            &bootstrap,
            "--workload",
            small.to_str().unwrap(),
            "--driver",
            driver,
            "--out",
            out_s,
        ]);
        assert!(
            !o.status.success() && stderr(&o).contains("exists with 1 partitions"),
            "{driver}: {}",
            stderr(&o)
        );
    }

    // The broker stalls (SIGSTOP) in the middle of a run: the run ends, says so, and keeps what
    // it measured.
    let child = Command::new(env!("CARGO_BIN_EXE_ringtail"))
        .args([
            "perf",
            "run",
            "--bootstrap",
            &bootstrap,
            "--workload",
            "fixed-rate-1000-1kb",
            "--driver",
            "native",
            "--duration",
            "4",
            "--stall-timeout",
            "3",
            "--out",
            out_s,
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Producing starts once the consumer holds its partitions (about a second).
    std::thread::sleep(Duration::from_secs(3));
    signal(b.pid(), "-STOP");
    let o = child.wait_with_output().unwrap();
    signal(b.pid(), "-CONT");
    let e = stderr(&o);
    println!("{e}");
    assert!(!o.status.success(), "a stalled run fails");
    assert!(e.contains("result kept in"), "{e}");
    let r = result(&out);
    assert!(r.produced_messages > 0, "{r:?}");
    let failure = r.failure.clone().unwrap_or_default();
    assert!(
        failure.contains("stalled") || failure.contains("missing") || failure.contains("errors"),
        "{failure}"
    );
    assert!(
        r.error_messages.iter().any(|m| m.contains("stalled")),
        "{:?}",
        r.error_messages
    );
    b.assert_alive();

    // TLS/SASL options are librdkafka's: the native driver refuses them.
    let o = perf(&[
        "run",
        "--bootstrap",
        &bootstrap,
        "--workload",
        "fixed-rate-1000-1kb",
        "--driver",
        "native",
        "--client-config",
        "security.protocol=SASL_PLAINTEXT",
        "--out",
        out_s,
    ]);
    assert!(!o.status.success() && stderr(&o).contains("--driver librdkafka"));
}

#[test]
fn authentication_failures_end_the_run_with_a_message() {
    // Tansu requiring SASL, clients without credentials.
    let t = Tansu::start(&["--authentication"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    for driver in ["native", "librdkafka"] {
        let o = perf(&[
            "run",
            "--bootstrap",
            &t.addr.to_string(),
            "--workload",
            "fixed-rate-1000-1kb",
            "--driver",
            driver,
            "--stall-timeout",
            "5",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(!o.status.success(), "{driver}");
        assert!(
            stderr(&o).contains("TLS or SASL"),
            "{driver}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn alternate_runs_two_brokers_interleaved_and_reports_the_spread() {
    let a = TestBroker::start(&["--group-initial-rebalance-delay-ms", "0"]);
    let t = Tansu::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("w.toml");
    std::fs::write(
        &w,
        "name='alt'\ntopic='perf-alt'\ntopics=3\npartitions=2\nmessage_size=256\nproducers=1\nconsumers=1\nduration_s=2\nrate=500\nsubscribe=false\nkeys='random'\nmessage_size_max=512\n",
    )
    .unwrap();
    let out = dir.path().join("alt");
    let o = perf(&[
        "run",
        "--bootstrap",
        &a.bootstrap(),
        "--label",
        "ringtail",
        "--broker-pid",
        &a.pid().to_string(),
        "--alternate",
        &t.addr.to_string(),
        "--alternate-label",
        "tansu",
        "--alternate-pid",
        &t.pid().to_string(),
        "--repeats",
        "2",
        "--driver",
        "native",
        "--workload",
        w.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["ringtail-1", "tansu-1", "ringtail-2", "tansu-2"] {
        let r = result(&out.join(format!("{f}.json")));
        assert_eq!((r.missing_messages, r.errors), (0, 0), "{f}");
        assert!(r.produced_messages >= 500, "{f}: {r:?}");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    println!("{report}");
    assert!(report.contains("Median (min–max) over repeats"), "{report}");
    assert!(report.contains("| ringtail | 2 |") && report.contains("| tansu | 2 |"));
    for svg in [
        "throughput.svg",
        "publish-latency.svg",
        "e2e-latency.svg",
        "throughput-over-time.svg",
    ] {
        let text = std::fs::read_to_string(out.join(svg)).unwrap();
        assert!(text.starts_with("<svg") && text.contains("tansu"), "{svg}");
    }
}
