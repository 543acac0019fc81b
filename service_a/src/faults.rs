//! The faults A injects into `/echo`: a delay, a failure rate and the failure's status. The
//! flags set them at start; the admin listener's `PUT /faults` changes them while A runs
//! (see `admin`). Each `/echo` reads them once, under a read lock held for a copy.

use std::fmt;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use serde::Deserialize;
use serde_json::Value;

/// The longest delay, by flag or by `PUT /faults`, in milliseconds (ten minutes).
pub const MAX_DELAY_MS: u64 = 600_000;
/// The statuses an injected failure may have: client and server errors.
pub const FAIL_STATUSES: RangeInclusive<u16> = 400..=599;

/// The faults every `/echo` gets, as `GET /faults` shows them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Faults {
    /// Delay of every `/echo`, in milliseconds (0 to [`MAX_DELAY_MS`]).
    pub delay_ms: u64,
    /// Share of `/echo` calls failed with `fail_status` (0.0 to 1.0).
    pub fail_rate: f64,
    /// Status of an injected failure (in [`FAIL_STATUSES`]).
    pub fail_status: u16,
}

/// The faults in force, shared by the service and its admin listener.
#[derive(Debug)]
pub struct LiveFaults(RwLock<Faults>);

impl LiveFaults {
    /// Faults as the flags set them.
    pub fn new(faults: Faults) -> LiveFaults {
        LiveFaults(RwLock::new(faults))
    }

    /// The faults now (a copy: the lock is held for nothing else).
    pub fn get(&self) -> Faults {
        *self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a checked change; returns the faults before and after it.
    pub fn update(&self, change: &Change) -> (Faults, Faults) {
        let mut faults = self.0.write().unwrap_or_else(|p| p.into_inner());
        let old = *faults;
        faults.delay_ms = change.delay_ms.unwrap_or(old.delay_ms);
        faults.fail_rate = change.fail_rate.unwrap_or(old.fail_rate);
        faults.fail_status = change.fail_status.unwrap_or(old.fail_status);
        (old, *faults)
    }
}

/// A checked `PUT /faults` body: each field present is set, each absent one kept.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Change {
    /// The new delay, if it changes.
    pub delay_ms: Option<u64>,
    /// The new failure rate, if it changes.
    pub fail_rate: Option<f64>,
    /// The new failure status, if it changes.
    pub fail_status: Option<u16>,
}

/// Why a `PUT /faults` body was refused; nothing was changed.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultsError {
    /// Not `Content-Type: application/json` (what was sent, if anything).
    ContentType(Option<String>),
    /// Over [`echo_core::server::MAX_BODY_BYTES`].
    TooLarge,
    /// Not a JSON object of the known fields, each once (serde's words: where and what).
    Json(String),
    /// A known field with a value of the wrong type or out of its bounds.
    Field(&'static str, String),
}

impl FaultsError {
    /// The status of the answer: 413 for a body too large, else 400.
    pub fn status(&self) -> u16 {
        match self {
            FaultsError::TooLarge => 413,
            _ => 400,
        }
    }
}

impl fmt::Display for FaultsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultsError::ContentType(None) => {
                f.write_str("Content-Type must be application/json, and none was sent")
            }
            FaultsError::ContentType(Some(sent)) => {
                write!(f, "Content-Type must be application/json, not '{sent}'")
            }
            FaultsError::TooLarge => write!(
                f,
                "Request body too large: at most {} bytes",
                echo_core::server::MAX_BODY_BYTES
            ),
            FaultsError::Json(why) => write!(f, "Invalid faults: {why}"),
            FaultsError::Field(name, value) => {
                let bounds = match *name {
                    "delay_ms" => {
                        format!("a whole number of milliseconds from 0 to {MAX_DELAY_MS}")
                    }
                    "fail_rate" => "a number from 0.0 to 1.0".to_string(),
                    _ => format!(
                        "a whole number from {} to {}",
                        FAIL_STATUSES.start(),
                        FAIL_STATUSES.end()
                    ),
                };
                write!(f, "Invalid faults: '{name}' must be {bounds}, not {value}")
            }
        }
    }
}

impl std::error::Error for FaultsError {}

/// The body as sent: the known fields only, each at most once (serde refuses the rest);
/// an explicit `null` is kept as a value, and refused as one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    #[serde(default, deserialize_with = "present")]
    delay_ms: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    fail_rate: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    fail_status: Option<Value>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Checks a `PUT /faults` request's content type and body against the flags' bounds.
pub fn parse_change(content_type: Option<&str>, body: &[u8]) -> Result<Change, FaultsError> {
    let media_type =
        content_type.map(|t| t.split(';').next().unwrap_or("").trim_matches([' ', '\t']));
    if !media_type.is_some_and(|t| t.eq_ignore_ascii_case("application/json")) {
        return Err(FaultsError::ContentType(content_type.map(str::to_string)));
    }
    if body.len() > echo_core::server::MAX_BODY_BYTES {
        return Err(FaultsError::TooLarge);
    }
    let json = |e: serde_json::Error| FaultsError::Json(e.to_string());
    // Parsed twice (1 KiB at most): serde would take a JSON array for the fields in order.
    if !serde_json::from_slice::<Value>(body)
        .map_err(json)?
        .is_object()
    {
        let why = r#"the body must be a JSON object, such as {"delay_ms": 500}"#;
        return Err(FaultsError::Json(why.to_string()));
    }
    let body: Body = serde_json::from_slice(body).map_err(json)?;
    let field = |name: &'static str, value: Option<Value>, check: fn(&Value) -> bool| match value {
        Some(v) if !check(&v) => Err(FaultsError::Field(name, v.to_string())),
        v => Ok(v),
    };
    let delay = field("delay_ms", body.delay_ms, |v| {
        v.as_u64().is_some_and(|ms| ms <= MAX_DELAY_MS)
    })?;
    let rate = field("fail_rate", body.fail_rate, |v| {
        v.as_f64().is_some_and(|p| (0.0..=1.0).contains(&p))
    })?;
    let status = field("fail_status", body.fail_status, |v| {
        v.as_u64()
            .and_then(|s| u16::try_from(s).ok())
            .is_some_and(|s| FAIL_STATUSES.contains(&s))
    })?;
    Ok(Change {
        delay_ms: delay.and_then(|v| v.as_u64()),
        fail_rate: rate.and_then(|v| v.as_f64()),
        fail_status: status.and_then(|v| v.as_u64()).map(|s| s as u16),
    })
}

/// A reproducible sequence of draws in [0, 1): the n-th `/echo` call gets the n-th draw of
/// the seed's sequence, with no lock. fastrand's generator (wyrand) steps its state by a
/// constant, so the n-th draw is the first draw of a generator seeded n steps on.
#[derive(Debug)]
pub(crate) struct Draws {
    seed: u64,
    next: AtomicU64,
}

impl Draws {
    /// wyrand's step: its state grows by this for each number drawn.
    const STEP: u64 = 0xa076_1d64_78bd_642f;

    pub(crate) fn new(seed: u64) -> Draws {
        Draws {
            seed,
            next: AtomicU64::new(0),
        }
    }

    pub(crate) fn draw(&self) -> f64 {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        fastrand::Rng::with_seed(self.seed.wrapping_add(n.wrapping_mul(Self::STEP))).f64()
    }
}
