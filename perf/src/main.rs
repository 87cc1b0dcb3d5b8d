//! `ringtail-perf run ...` and `ringtail-perf compare ...`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ringtail_perf::report;
use ringtail_perf::run::{run, RunOptions};
use ringtail_perf::stats::RunResult;
use ringtail_perf::workload::Workload;

#[derive(Parser)]
#[command(name = "ringtail-perf", about = "Benchmark a Kafka-compatible broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a workload against a broker and write the result as JSON.
    Run {
        #[arg(long)]
        bootstrap: String,
        /// A workload file, or the name of a built-in one.
        #[arg(long)]
        workload: String,
        /// Only `librdkafka` so far.
        #[arg(long, default_value = "librdkafka")]
        driver: String,
        /// Seconds (overrides the workload's duration).
        #[arg(long)]
        duration: Option<u64>,
        /// The broker's process id, to report its CPU time and peak RSS.
        #[arg(long)]
        broker_pid: Option<u32>,
        /// A name for this run in reports (default: the bootstrap address).
        #[arg(long)]
        label: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Render results side by side: DIR/report.md and SVG plots.
    Compare {
        results: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("ringtail-perf: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run {
            bootstrap,
            workload,
            driver,
            duration,
            broker_pid,
            label,
            out,
        } => {
            anyhow::ensure!(
                driver == "librdkafka",
                "driver {driver:?}: only librdkafka exists so far"
            );
            let w = Workload::load(&workload)?;
            let opts = RunOptions {
                label: label.unwrap_or_else(|| bootstrap.clone()),
                bootstrap,
                duration: duration.map(Duration::from_secs),
                broker_pid,
                progress: true,
            };
            let rt = tokio::runtime::Runtime::new()?;
            let result = rt.block_on(run(&w, &opts))?;
            std::fs::write(&out, serde_json::to_vec_pretty(&result)?)?;
            println!("{}", report::markdown(std::slice::from_ref(&result)));
            if result.missing_messages > 0 || result.errors > 0 {
                anyhow::bail!(
                    "{} messages missing, {} errors (result kept in {})",
                    result.missing_messages,
                    result.errors,
                    out.display()
                );
            }
            Ok(())
        }
        Command::Compare { results, out } => {
            anyhow::ensure!(!results.is_empty(), "name at least one result file");
            let runs: Vec<RunResult> = results
                .iter()
                .map(|p| -> anyhow::Result<RunResult> {
                    let text =
                        std::fs::read(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
                    serde_json::from_slice(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
                })
                .collect::<anyhow::Result<_>>()?;
            std::fs::create_dir_all(&out)?;
            std::fs::write(out.join("report.md"), report::markdown(&runs))?;
            let bars = |f: fn(&RunResult) -> f64| {
                runs.iter()
                    .map(|r| (r.label.clone(), f(r)))
                    .collect::<Vec<_>>()
            };
            std::fs::write(
                out.join("throughput.svg"),
                report::bars_svg(
                    "Publish throughput",
                    "msg/s",
                    &bars(|r| r.publish_msgs_per_s),
                ),
            )?;
            std::fs::write(
                out.join("publish-p99.svg"),
                report::bars_svg(
                    "Publish latency p99",
                    "µs",
                    &bars(|r| r.publish_latency.p99_us as f64),
                ),
            )?;
            std::fs::write(
                out.join("e2e-p99.svg"),
                report::bars_svg(
                    "End-to-end latency p99",
                    "µs",
                    &bars(|r| r.end_to_end_latency.p99_us as f64),
                ),
            )?;
            println!("{}", report::markdown(&runs));
            Ok(())
        }
    }
}
