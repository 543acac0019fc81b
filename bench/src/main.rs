//! `cargo run --release -p bench -- [flags]`: see `--help` and docs/BENCHMARK.md.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = bench::cli::Args::parse();
    match bench::run::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}
