//! The client of Service A, under the balancer: one attempt of a call on one replica
//! (`client`, over `ureq`), the TCP transport under ureq (`transport`) and B's one shared
//! pool of idle connections (`pool`). An attempt returns A's answer or its failure as a
//! value, classified by the 503 contract (`crate::error`), the one module it depends on.

mod client;
mod pool;
mod transport;

pub(crate) use client::{Answer, EchoClient, Forward, Limits};
pub(crate) use pool::{Bounds, Pool};
