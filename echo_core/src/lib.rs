//! The plumbing both services share, written once, one role a module: the HTTP model
//! handlers see ([`http`]), our HTTP/1.1 core with its access log and shutdown ([`server`]),
//! the client side of HTTP ([`client`]), the log format, the metrics ([`metrics`]), W3C trace
//! context ([`trace`]) and the life of the process ([`process`]).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod client;
mod histogram;
pub mod http;
mod log_queue;
mod log_text;
mod logging;
pub mod metrics;
pub mod process;
pub mod server;
pub mod trace;

pub use http::{route, Request, Response};
pub use logging::{fields_shown_in_message, LogFormat};
pub use metrics::Metrics;
pub use server::{serve, ServerHandle};
pub use trace::Trace;
