//! `ringtail`: the broker binary. Parses the command line and dispatches: `serve` (start-up
//! and shutdown live in `boot/`), `admin drain`, and the `perf` and `tune` tools.

use clap::{Parser, Subcommand};
use ringtail_engine::boot::{drain::drain, serve};
use ringtail_engine::config::{Config, ServeArgs};

#[derive(Parser)]
#[command(name = "ringtail", version, about = "A Kafka-compatible broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve(Box<ServeArgs>),
    /// Benchmark a Kafka-compatible broker (the same as `ringtail-perf`; `ringtail perf
    /// --help` lists the commands).
    #[command(disable_help_flag = true)]
    Perf {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Cluster administration on the object store the brokers share.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Host checks, safe apply/revert of kernel settings, measured experiments (`ringtail tune
    /// --help`).
    #[command(disable_help_flag = true)]
    Tune {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Ask broker NODE to hand its slots over to the other brokers and stop; waits until it
    /// has. Takes the brokers' object-store flags (`--object-store`, `--s3-*`, `--config`).
    Drain {
        /// Node id of the broker to drain.
        node: i32,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_s: u64,
        #[command(flatten)]
        store: Box<ServeArgs>,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Command::Perf { args } = cli.command {
        let program = std::iter::once("ringtail perf".to_string());
        ringtail_perf::cli::main(program.chain(args).map(Into::into));
    }
    if let Command::Tune { args } = cli.command {
        let program = std::iter::once("ringtail tune".to_string());
        ringtail_tuning::cli::main(program.chain(args).map(Into::into));
    }
    let result = match cli.command {
        Command::Serve(args) => Config::resolve(*args).and_then(|config| {
            init_logging(config.log_json);
            serve(config)
        }),
        Command::Admin {
            command:
                AdminCommand::Drain {
                    node,
                    timeout_s,
                    store,
                },
        } => Config::resolve(*store).and_then(|config| {
            init_logging(config.log_json);
            drain(&config, node, std::time::Duration::from_secs(timeout_s))
        }),
        Command::Perf { .. } | Command::Tune { .. } => {
            unreachable!("handled before logging starts")
        }
    };
    if let Err(e) = result {
        tracing::error!("{e:#}");
        eprintln!("ringtail: {e:#}");
        std::process::exit(1);
    }
}

/// Logs to stderr: text, or one JSON object per line (`--log-format json`); `RUST_LOG` filters.
fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}
