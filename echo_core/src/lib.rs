//! The plumbing both services share, written once: the HTTP model handlers see
//! ([`http`]), the server loop with its access log and shutdown ([`server`]), the log
//! format ([`logging`]) and the process entry point ([`cli`]).

pub mod cli;
pub mod guard;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod server;

pub use http::{route, Request, Response};
pub use metrics::Metrics;
pub use server::{serve, ServerHandle};

/// Both services (and their tests) allocate through [`guard::DrainSafeAlloc`], which keeps
/// tiny_http's drain of a huge declared body from aborting the process.
#[global_allocator]
static ALLOCATOR: guard::DrainSafeAlloc = guard::DrainSafeAlloc;
