//! `ringtail-perf`: see [`ringtail_perf::cli`].

fn main() {
    ringtail_perf::cli::main(std::env::args_os())
}
