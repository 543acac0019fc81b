//! The command line.

use std::path::PathBuf;

use clap::Parser;

/// The benchmark: wrk against a loopback ceiling, Service A, the B→A chain and (when built)
/// the same contract on axum and on actix-web, in one run. Prints the results and the goals
/// as markdown; exits 0 once it ran, whatever the goals say.
#[derive(Parser, Debug, Clone)]
#[command(version)]
pub struct Args {
    /// wrk connection counts, one point each per target.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub conns: Vec<u32>,

    /// Seconds per measured point.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub duration: u64,

    /// Seconds of warm-up before each point, at the same connection count (0: none).
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,

    /// Before each point, wait at most this many seconds for the machine to be under 10 %
    /// busy (0: do not wait), so that a concurrent build skews fewer points.
    #[arg(long, default_value_t = 20)]
    pub quiet_wait: u64,

    /// wrk threads (never more than connections).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: u32,

    /// wrk's --timeout: a request unanswered this long counts as a socket error.
    #[arg(long, default_value = "2s")]
    pub wrk_timeout: String,

    /// Where service_a, service_b and bench_ceiling are [default: this program's directory,
    /// i.e. target/release after `cargo build --release`].
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,

    /// The service_a binary [default: BIN_DIR/service_a].
    #[arg(long)]
    pub a_binary: Option<PathBuf>,

    /// The service_b binary [default: BIN_DIR/service_b]; run twice with two builds to
    /// compare them.
    #[arg(long)]
    pub b_binary: Option<PathBuf>,

    /// Service B's --max-inflight [default: the service's own].
    #[arg(long)]
    pub max_inflight_b: Option<u32>,

    /// The anchors: DIR/axum/target/release/axum_a, axum_b and DIR/actix/target/release/
    /// actix_a, actix_b, each pair run when built [default: the first of ../anchors (a built
    /// copy) and ../shared/anchors, from the workspace root, with an anchor built, else
    /// ../shared/anchors].
    #[arg(long, env = "BENCH_ANCHORS")]
    pub anchors: Option<PathBuf>,

    /// Run without the anchors even if they are built.
    #[arg(long)]
    pub no_anchors: bool,

    /// Also write the markdown to this file (e.g. bench/RESULTS.md).
    #[arg(long)]
    pub write: Option<PathBuf>,

    /// Keep the work directory (server logs) instead of removing it.
    #[arg(long)]
    pub keep: bool,
}

impl Args {
    /// The connection counts, or an error for an empty list or a zero.
    pub fn checked_conns(&self) -> Result<Vec<u32>, String> {
        if self.conns.is_empty() || self.conns.contains(&0) {
            return Err("--conns needs connection counts of at least 1".to_string());
        }
        Ok(self.conns.clone())
    }
}
