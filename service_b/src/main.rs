//! `service_b`: parse the command line, start, wait for SIGTERM/SIGINT, stop.

use std::process::ExitCode;

use service_b::Config;

fn main() -> ExitCode {
    let config: Config = echo_core::cli::parse("service_b");
    echo_core::cli::run("service_b", config.log_level, || service_b::spawn(config))
}
