//! `service_a`: parse the command line, start, wait for SIGTERM/SIGINT, stop.

use std::process::ExitCode;

use service_a::Config;

fn main() -> ExitCode {
    let config: Config = echo_core::cli::parse("service_a");
    echo_core::cli::run("service_a", config.log_level, || service_a::spawn(config))
}
