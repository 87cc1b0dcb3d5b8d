//! `ringtail tune ...`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ringtail_perf::run::Driver;
use ringtail_perf::workload::Workload;

use crate::apply::{self, DEFAULT_STATE};
use crate::check;
use crate::experiment::{self, Experiment};
use crate::host::Host;
use crate::item::Status;

#[derive(Parser)]
#[command(
    name = "ringtail tune",
    about = "Check, tune and measure the host for Ringtail"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Target {
    /// The broker's data directory (its device is checked).
    #[arg(long, default_value = "/var/lib/ringtail")]
    data_dir: PathBuf,
    /// Shards the broker runs (default: the CPUs here).
    #[arg(long)]
    shards: Option<usize>,
    /// Read (and write) the machine's files under this root instead of `/` (tests, images).
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// One table: current, recommended, why, and the command that changes it.
    Check {
        #[command(flatten)]
        target: Target,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Prints what it would write; with --yes writes it, recording the previous values.
    Apply {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        yes: bool,
        /// Where previous values are recorded (under the root).
        #[arg(long, default_value = DEFAULT_STATE)]
        state: String,
    },
    /// Restores what `apply --yes` changed.
    Revert {
        #[arg(long, default_value = "/")]
        root: PathBuf,
        #[arg(long, default_value = DEFAULT_STATE)]
        state: String,
    },
    /// Sweeps one `ringtail serve` flag: a fresh broker per run, settings alternated, a
    /// standard workload each time; writes a table, an SVG and a recommendation.
    Experiment {
        /// The flag without dashes: wal-max-write-bytes, wal-max-delay-us, wal-sync, shards,
        /// hot-cache-bytes-per-shard, ...
        #[arg(long)]
        parameter: String,
        /// Comma-separated values; the first is the baseline (the current setting).
        #[arg(long, value_delimiter = ',')]
        values: Vec<String>,
        #[arg(long, default_value = "fixed-rate-1000-1kb")]
        workload: String,
        #[arg(long, default_value = "native")]
        driver: Driver,
        /// Seconds per run.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// More `ringtail serve` arguments for every broker (repeatable).
        #[arg(long = "broker-arg", allow_hyphen_values = true)]
        broker_args: Vec<String>,
        /// The ringtail binary (default: this one).
        #[arg(long)]
        broker: Option<PathBuf>,
        /// Refuse to run longer than this (estimated).
        #[arg(long, default_value_t = 30)]
        max_minutes: u64,
        #[arg(long, default_value = "tune-experiment")]
        out: PathBuf,
    },
}

fn shards(t: &Target) -> usize {
    t.shards
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Parses `args` (the first is the program name), runs the command and exits.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ! {
    let cli = Cli::parse_from(args);
    match real_main(cli) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("ringtail tune: {e:#}");
            std::process::exit(1)
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { target, json } => {
            let host = Host::at(&target.root);
            let items = check::check(&host, &target.data_dir, shards(&target));
            if json {
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else {
                print!("{}", check::table(&items));
                let advised = items.iter().filter(|i| i.status == Status::Advise).count();
                println!(
                    "\n{advised} item(s) advised; `ringtail tune apply` shows what it would write."
                );
            }
            Ok(())
        }
        Command::Apply { target, yes, state } => {
            let host = Host::at(&target.root);
            let items = check::check(&host, &target.data_dir, shards(&target));
            let changes = apply::plan(&host, &items);
            if changes.is_empty() {
                println!("nothing to write: every writable item is as recommended");
                return Ok(());
            }
            for c in &changes {
                println!(
                    "{} {:?} to {} (now {:?}) [{}]",
                    if yes { "writing" } else { "would write" },
                    c.to,
                    host.path(&c.path).display(),
                    c.from,
                    c.item
                );
            }
            if yes {
                apply::apply(&host, &changes, &state)?;
                println!(
                    "previous values in {}; `ringtail tune revert` restores them",
                    host.path(&state).display()
                );
            } else {
                println!("dry run: nothing written (add --yes)");
            }
            Ok(())
        }
        Command::Revert { root, state } => {
            let host = Host::at(&root);
            for c in apply::revert(&host, &state)? {
                println!("restored {:?} to {}", c.from, host.path(&c.path).display());
            }
            Ok(())
        }
        Command::Experiment {
            parameter,
            values,
            workload,
            driver,
            duration,
            repeats,
            broker_args,
            broker,
            max_minutes,
            out,
        } => {
            let e = Experiment {
                broker: match broker {
                    Some(b) => b,
                    None => std::env::current_exe()?,
                },
                parameter: parameter.trim_start_matches('-').to_string(),
                values,
                broker_args,
                workload: Workload::load(&workload)?,
                driver,
                duration: Duration::from_secs(duration.max(1)),
                repeats,
                max_time: Duration::from_secs(max_minutes * 60),
                out: out.clone(),
            };
            eprintln!(
                "{} runs of {} s, about {:.0} s in all",
                e.values.len() * e.repeats,
                duration,
                e.estimate().as_secs_f64()
            );
            let points = tokio::runtime::Runtime::new()?.block_on(e.run())?;
            let table = experiment::table(&e.parameter, &points);
            let advice = experiment::recommend(&e.parameter, &e.workload, &points);
            let report = format!(
                "# --{} on {} ({} driver, {} s × {} repeats)\n\n{table}\n{advice}\n",
                e.parameter,
                e.workload.name,
                e.driver.name(),
                duration,
                e.repeats
            );
            std::fs::write(out.join("report.md"), &report)?;
            std::fs::write(
                out.join("experiment.svg"),
                experiment::svg(&e.parameter, &points),
            )?;
            println!("{report}");
            Ok(())
        }
    }
}
