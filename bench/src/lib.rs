//! The benchmark of the Distributed Echo System, as a library the `bench` binary runs.
//!
//! It starts a loopback ceiling (`bench_ceiling`), Service A, Service B calling that A and,
//! when built, the same contract on axum and on actix-web, each on a free loopback port in a
//! session of its own; drives each with wrk at several connection counts; and reports
//! requests/s, p50, p99, shares of the ceiling, ratios to the anchors, context switches per
//! request ([`switches`]), peak RSS and TIME_WAIT sockets, with its goals checked in one table.
//!
//! Read top-down: [`run`] drives [`fleet`] (the servers, [`server`]) and [`wrk`], gathers
//! [`results`], checks [`goals`] and renders the [`report`]; [`machine`] says how busy the
//! machine is and what it is.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cli;
pub mod fleet;
pub mod goals;
pub mod machine;
pub mod report;
pub mod results;
pub mod run;
pub mod server;
pub mod sockets;
pub mod switches;
pub mod wrk;
