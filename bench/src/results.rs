//! What a run measured: the targets, one wrk result per point, and the figures taken after.

use crate::switches::Switches;
use crate::wrk::{SocketErrors, WrkResult};

/// A target of the benchmark: a URL on one of the servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The trivial fixed-response server: the loopback ceiling.
    Ceiling,
    /// Our Service A, `/echo`.
    A,
    /// Our Service B calling our A, `/call-echo`.
    B,
    /// axum's A.
    AxumA,
    /// axum + reqwest's B calling axum's A.
    AxumB,
    /// actix-web's A.
    ActixA,
    /// actix-web + awc's B calling actix-web's A.
    ActixB,
}

/// The message every echo point sends.
pub const MSG: &str = "hello";

impl Kind {
    /// Every kind, in the order the points run at each connection count.
    pub const ALL: [Kind; 7] = [
        Kind::Ceiling,
        Kind::A,
        Kind::B,
        Kind::AxumA,
        Kind::AxumB,
        Kind::ActixA,
        Kind::ActixB,
    ];

    /// The name shown in the tables.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Ceiling => "ceiling /",
            Kind::A => "A /echo",
            Kind::B => "B→A /call-echo",
            Kind::AxumA => "axum A /echo",
            Kind::AxumB => "axum B→A /call-echo",
            Kind::ActixA => "actix A /echo",
            Kind::ActixB => "actix B→A /call-echo",
        }
    }

    /// The path and query wrk asks for.
    pub fn path(self) -> String {
        match self {
            Kind::Ceiling => "/".to_string(),
            Kind::A | Kind::AxumA | Kind::ActixA => format!("/echo?msg={MSG}"),
            Kind::B | Kind::AxumB | Kind::ActixB => format!("/call-echo?msg={MSG}"),
        }
    }

    /// Whether this is a B→A chain.
    pub fn is_chain(self) -> bool {
        matches!(self, Kind::B | Kind::AxumB | Kind::ActixB)
    }

    /// The same role on actix-web and on axum (for ours), to compare against.
    pub fn anchors(self) -> Option<(Kind, Kind)> {
        match self {
            Kind::A => Some((Kind::ActixA, Kind::AxumA)),
            Kind::B => Some((Kind::ActixB, Kind::AxumB)),
            _ => None,
        }
    }
}

/// One measured point: a target at a connection count, with its warm-up if there was one.
#[derive(Clone, Debug)]
pub struct Point {
    /// The target.
    pub kind: Kind,
    /// wrk's connections.
    pub conns: u32,
    /// The timed run.
    pub measured: WrkResult,
    /// The warm-up before it (same connections, not timed, checked like the timed run).
    pub warmup: Option<WrkResult>,
    /// How busy the machine was (percent) when the point started, after the wait for quiet
    /// (none when there was no wait).
    pub busy_before: Option<u32>,
    /// The server's context switches over the timed run, all its threads (none when its
    /// `/proc` could not be read).
    pub switches: Option<Switches>,
}

impl Point {
    /// The timed run and the warm-up, whichever ran.
    pub fn runs(&self) -> impl Iterator<Item = &WrkResult> {
        std::iter::once(&self.measured).chain(self.warmup.as_ref())
    }

    /// The server's (voluntary, involuntary) context switches per request of the timed run.
    pub fn switches_per_request(&self) -> Option<(f64, f64)> {
        self.switches?.per_request(self.measured.requests)
    }
}

/// Everything a run measured.
#[derive(Clone, Debug, Default)]
pub struct Results {
    /// The points in the order they ran.
    pub points: Vec<Point>,
    /// Peak RSS (VmHWM, KiB) of each server, read before it was stopped.
    pub peak_rss_kib: Vec<(String, Option<u64>)>,
    /// TIME_WAIT sockets after the run on the ports of the servers (either end).
    pub time_wait_on_ports: u64,
    /// TIME_WAIT sockets on the whole machine after the run.
    pub time_wait_machine: u64,
}

impl Results {
    /// The point of `kind` at `conns`, if it ran.
    pub fn get(&self, kind: Kind, conns: u32) -> Option<&Point> {
        self.points
            .iter()
            .find(|p| p.kind == kind && p.conns == conns)
    }

    /// `kind`'s requests/s over the ceiling's at `conns`, when both ran.
    pub fn of_ceiling(&self, kind: Kind, conns: u32) -> Option<f64> {
        ratio(self.rps(kind, conns)?, self.rps(Kind::Ceiling, conns)?)
    }

    /// `ours`'s requests/s over `other`'s at `conns`, when both ran.
    pub fn ratio(&self, ours: Kind, other: Kind, conns: u32) -> Option<f64> {
        ratio(self.rps(ours, conns)?, self.rps(other, conns)?)
    }

    fn rps(&self, kind: Kind, conns: u32) -> Option<f64> {
        self.get(kind, conns).map(|p| p.measured.rps)
    }

    /// Every wrk run, warm-ups included.
    pub fn runs(&self) -> impl Iterator<Item = &WrkResult> {
        self.points.iter().flat_map(Point::runs)
    }

    /// Non-2xx answers over every wrk run.
    pub fn non_2xx(&self) -> u64 {
        self.runs().map(|r| r.non_2xx).sum()
    }

    /// Socket errors over every wrk run.
    pub fn errors(&self) -> SocketErrors {
        let mut all = SocketErrors::default();
        self.runs().for_each(|r| all.add(&r.errors));
        all
    }

    /// wrk runs that completed no request at all.
    pub fn empty_runs(&self) -> usize {
        self.runs().filter(|r| r.requests == 0).count()
    }

    /// The peak RSS of the server named `name`, in KiB.
    pub fn rss_of(&self, name: &str) -> Option<u64> {
        self.peak_rss_kib
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, kib)| *kib)
    }
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}
