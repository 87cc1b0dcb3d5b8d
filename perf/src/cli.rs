//! The command line of `ringtail-perf run ...` / `compare ...`, also `ringtail perf ...` (the
//! broker binary calls [`main`] with its arguments).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::report;
use crate::run::{run, Driver, RunOptions};
use crate::stats::RunResult;
use crate::workload::Workload;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ringtail-perf", about = "Benchmark a Kafka-compatible broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a workload against a broker and write the result as JSON; with --alternate, run it
    /// against two brokers interleaved A/B/A/B and write every result and a report to a
    /// directory.
    Run {
        /// HOST:PORT[,HOST:PORT...] of the broker.
        #[arg(long)]
        bootstrap: String,
        /// A workload file, or the name of a built-in one.
        #[arg(long)]
        workload: String,
        /// `librdkafka` (the standard client) or `native` (lean, pipelined).
        #[arg(long, default_value = "librdkafka")]
        driver: Driver,
        /// Seconds (overrides the workload's duration).
        #[arg(long)]
        duration: Option<u64>,
        /// The broker's process id, to report its CPU time and peak RSS.
        #[arg(long)]
        broker_pid: Option<u32>,
        /// A name for this run in reports (default: the bootstrap address).
        #[arg(long)]
        label: Option<String>,
        /// A librdkafka property for every client, KEY=VALUE (repeatable), e.g.
        /// security.protocol=SASL_PLAINTEXT.
        #[arg(long = "client-config", value_parser = key_value)]
        client_config: Vec<(String, String)>,
        /// Seconds a request may go unanswered before it counts as failed (a stalled broker),
        /// and the end of a run waits for consumers to catch up.
        #[arg(long, default_value_t = 30)]
        stall_timeout: u64,
        /// The second broker (B) for an interleaved comparison.
        #[arg(long)]
        alternate: Option<String>,
        #[arg(long)]
        alternate_pid: Option<u32>,
        #[arg(long)]
        alternate_label: Option<String>,
        /// Runs per broker with --alternate.
        #[arg(long, default_value_t = 2)]
        repeats: usize,
        /// RESULT.json, or a directory with --alternate.
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

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))
}

/// Parses `args` (the first is the program name), runs the command and exits: 0 on success,
/// 1 with a message on stderr otherwise (2 for a malformed command line).
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ! {
    let cli = Cli::parse_from(args);
    if let Err(e) = real_main(cli) {
        eprintln!("ringtail-perf: {e:#}");
        std::process::exit(1);
    }
    std::process::exit(0)
}

fn write_json(path: &Path, r: &RunResult) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(r)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            bootstrap,
            workload,
            driver,
            duration,
            broker_pid,
            label,
            client_config,
            stall_timeout,
            alternate,
            alternate_pid,
            alternate_label,
            repeats,
            out,
        } => {
            let w = Workload::load(&workload)?;
            let rt = tokio::runtime::Runtime::new()?;
            let options = |bootstrap: &str, pid, label: Option<String>| RunOptions {
                label: label.unwrap_or_else(|| bootstrap.to_string()),
                bootstrap: bootstrap.to_string(),
                driver,
                duration: duration.map(Duration::from_secs),
                broker_pid: pid,
                progress: true,
                client_config: client_config.clone(),
                stall_timeout: Duration::from_secs(stall_timeout.max(1)),
            };
            let Some(b) = alternate else {
                let result = rt.block_on(run(&w, &options(&bootstrap, broker_pid, label)))?;
                write_json(&out, &result)?;
                println!("{}", report::markdown(std::slice::from_ref(&result)));
                if let Some(f) = &result.failure {
                    anyhow::bail!("{f} (result kept in {})", out.display());
                }
                return Ok(());
            };
            anyhow::ensure!(repeats >= 1, "--repeats must be at least 1");
            std::fs::create_dir_all(&out)?;
            let a = options(&bootstrap, broker_pid, label.or(Some("A".into())));
            let b = options(&b, alternate_pid, alternate_label.or(Some("B".into())));
            let mut results = Vec::new();
            let mut failures = Vec::new();
            for r in 1..=repeats {
                for opts in [&a, &b] {
                    eprintln!("== {} run {r} of {repeats}", opts.label);
                    let result = match rt.block_on(run(&w, opts)) {
                        Ok(result) => result,
                        Err(e) => {
                            // Keep what was measured so far, with the report.
                            failures.push(format!("{} run {r}: {e:#}", opts.label));
                            continue;
                        }
                    };
                    write_json(&out.join(format!("{}-{r}.json", opts.label)), &result)?;
                    if let Some(f) = &result.failure {
                        failures.push(format!("{} run {r}: {f}", opts.label));
                    }
                    results.push(result);
                }
            }
            write_report(&results, &out)?;
            println!("{}", std::fs::read_to_string(out.join("report.md"))?);
            anyhow::ensure!(
                failures.is_empty(),
                "{} (results kept in {})",
                failures.join("; "),
                out.display()
            );
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
            write_report(&runs, &out)?;
            println!("{}", report::markdown(&runs));
            Ok(())
        }
    }
}

/// DIR/report.md and the SVG plots for `runs`.
fn write_report(runs: &[RunResult], out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("report.md"), report::markdown(runs))?;
    for (name, svg) in report::plots(runs) {
        std::fs::write(out.join(name), svg)?;
    }
    Ok(())
}
