//! The plumbing both services share, written once: the HTTP model handlers see
//! ([`http`]), our HTTP/1.1 core with its access log and shutdown ([`server`]), the log
//! format, the metrics ([`metrics`]), W3C trace context ([`trace`]) and the process entry
//! point ([`cli`]).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cli;
mod histogram;
pub mod http;
mod log_queue;
mod log_text;
mod logging;
pub mod metrics;
pub mod server;
pub mod trace;

pub use http::{route, Request, Response};
pub use logging::LogFormat;
pub use metrics::Metrics;
pub use server::{serve, ServerHandle};
pub use trace::Trace;
