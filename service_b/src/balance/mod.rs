//! Which replica of Service A takes a call, and which may not: the replica set and its
//! discovery (`set`, `discovery`), one replica (`replica`) with its Peak-EWMA load
//! (`ewma`) and its breaker (`breaker`), the power of two choices over a cost/eligibility
//! view (`choice`), and the background upkeep (`upkeep`: re-resolution, probes of ejected
//! and draining replicas, each on a thread of its own, `probe`). Depends only on
//! `crate::error` below it (and the leaf counters of `crate::window`, which each replica
//! carries for `/replicas`); the caller (`call`)
//! feeds it each attempt's outcome, and counts its events ([`Events`]).

mod breaker;
mod choice;
mod discovery;
mod ewma;
mod probe;
mod replica;
mod set;
mod upkeep;

pub(crate) use choice::{choose, Chosen};
pub(crate) use discovery::Target;
pub use discovery::{system_resolver, Resolve};
pub(crate) use ewma::now_ns;
pub(crate) use replica::{fastest_estimate, Replica, DRAIN_CHECK_EVERY};
pub(crate) use set::{Events, Replicas, Settings};
pub(crate) use upkeep::{start as start_upkeep, Chore};
