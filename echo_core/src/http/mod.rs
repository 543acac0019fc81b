//! The HTTP model handlers see, independent of the server, so a handler is a plain function
//! from [`Request`] to [`Response`] that unit tests call without a socket; and the rules of
//! the API both services share, one role a module:
//! - `request`: what a handler is given, and its blocking sections;
//! - `response`: what it answers, the JSON error body and the `/health` and `/ready` answers;
//! - `router`: routing with 404 and 405;
//! - `query`: strict query decoding;
//! - `request_id`: the request-id rule;
//! - `deadline`: the headers in which a caller says how long it will wait.
//!
//! Everything public is re-exported here, so callers name `echo_core::http::X` whatever
//! module holds it.

mod deadline;
mod query;
mod request;
mod request_id;
mod response;
mod router;

pub(crate) use deadline::parse_budget;
pub use deadline::{DEADLINE_EXCEEDED_HEADER, TIMEOUT_HEADER};
pub use query::{decode_query, QueryError};
pub use request::Request;
pub(crate) use request::{Blocking, Worker};
pub use request_id::{is_valid_request_id, request_id};
pub use response::{health, ready, Response};
pub use router::{route, Handler};
