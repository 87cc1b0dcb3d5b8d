//! `ringtail-perf` against the real broker: a short workload produces and consumes through
//! librdkafka, and the result has sane, non-zero figures with nothing missing.

mod common;

use std::time::Duration;

use common::TestBroker;
use ringtail_perf::run::{run, RunOptions};
use ringtail_perf::workload::Workload;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_workload_runs_and_every_message_is_consumed() {
    let b = TestBroker::start(&["--shards", "2", "--group-initial-rebalance-delay-ms", "0"]);
    for (workload, subscribe) in [
        ("fixed-rate-1000-1kb", true),
        ("1-topic-8-partitions-1kb", false),
    ] {
        let mut w = Workload::load(workload).unwrap();
        w.warmup_s = 1;
        w.subscribe = subscribe;
        let opts = RunOptions {
            bootstrap: b.bootstrap(),
            duration: Some(Duration::from_secs(3)),
            broker_pid: Some(b.pid()),
            label: "ringtail".into(),
            progress: false,
        };
        let r = run(&w, &opts).await.unwrap();
        println!(
            "{}",
            ringtail_perf::report::markdown(std::slice::from_ref(&r))
        );
        assert!(r.produced_messages > 100, "{workload}: {r:?}");
        assert_eq!(
            r.missing_messages, 0,
            "{workload}: every produced message consumed"
        );
        assert!(r.consumed_messages >= r.produced_messages);
        assert_eq!(r.errors, 0);
        assert!(r.publish_latency.count > 0 && r.publish_latency.p50_us > 0);
        assert!(
            r.end_to_end_latency.count > 0
                && r.end_to_end_latency.p99_us >= r.end_to_end_latency.p50_us
        );
        assert!(r.publish_msgs_per_s > 0.0 && r.publish_mb_per_s > 0.0);
        assert!(
            r.broker_cpu_s.is_some_and(|c| c > 0.0)
                && r.broker_peak_rss_mib.is_some_and(|m| m > 1.0)
        );
        if w.rate > 0 {
            // At 1000/s for ~2 measured seconds.
            assert!(
                (1000.0..=3600.0).contains(&(r.produced_messages as f64)),
                "{}",
                r.produced_messages
            );
        }
    }
}
