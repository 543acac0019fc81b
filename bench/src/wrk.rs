//! wrk, the load generator: one run of it, and the figures read from its `--latency` output.

use std::process::Command;

/// Socket errors wrk reports on its `Socket errors:` line (all zero when it prints none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketErrors {
    /// Connections that could not be opened.
    pub connect: u64,
    /// Reads that failed (including the server closing a connection wrk was using).
    pub read: u64,
    /// Writes that failed.
    pub write: u64,
    /// Requests without an answer within wrk's `--timeout`.
    pub timeout: u64,
}

impl SocketErrors {
    /// All four kinds together.
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }

    /// Adds another run's errors to these.
    pub fn add(&mut self, other: &SocketErrors) {
        self.connect += other.connect;
        self.read += other.read;
        self.write += other.write;
        self.timeout += other.timeout;
    }
}

/// The figures of one wrk run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WrkResult {
    /// Requests completed (`N requests in …`).
    pub requests: u64,
    /// `Requests/sec:`.
    pub rps: f64,
    /// The 50th percentile latency in milliseconds, if wrk printed one.
    pub p50_ms: Option<f64>,
    /// The 99th percentile latency in milliseconds, if wrk printed one.
    pub p99_ms: Option<f64>,
    /// `Non-2xx or 3xx responses:` (0 when the line is absent).
    pub non_2xx: u64,
    /// `Socket errors:` (zeros when the line is absent).
    pub errors: SocketErrors,
}

/// How wrk is run: the same for every point.
#[derive(Clone, Debug)]
pub struct Load {
    /// wrk threads at most (never more than connections).
    pub threads: u32,
    /// wrk's `--timeout`, as wrk takes it (`2s`).
    pub timeout: String,
}

impl Load {
    /// Runs wrk against `url` with `conns` connections for `secs` seconds, `--latency` on.
    pub fn run(&self, url: &str, conns: u32, secs: u64) -> Result<WrkResult, String> {
        let threads = self.threads.clamp(1, conns.max(1));
        let out = Command::new("wrk")
            .arg(format!("-t{threads}"))
            .arg(format!("-c{conns}"))
            .arg(format!("-d{secs}s"))
            .args(["--timeout", &self.timeout, "--latency", url])
            .output()
            .map_err(|e| format!("cannot run wrk ({e}): install it with `apt-get install wrk`"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = last_line(&err)
                .or_else(|| last_line(&text))
                .unwrap_or("no output");
            return Err(format!("wrk {url} failed ({}): {last}", out.status));
        }
        parse(&text).map_err(|e| format!("wrk {url}: {e}"))
    }
}

/// Whether wrk can be run at all; the error says how to install it.
pub fn check_installed() -> Result<(), String> {
    match Command::new("wrk").arg("-v").output() {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "wrk is missing ({e}): install it with `apt-get install wrk`"
        )),
    }
}

/// wrk's version line (`wrk debian/4.1.0-3+b2`), or `wrk` if it prints none.
pub fn version() -> String {
    let out = Command::new("wrk").arg("-v").output();
    let text = out
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        })
        .unwrap_or_default();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    if words.is_empty() {
        "wrk".to_string()
    } else {
        words.join(" ")
    }
}

fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rfind(|l| !l.is_empty())
}

/// Reads the figures out of wrk's output; fails when there is no `Requests/sec:` line.
pub fn parse(text: &str) -> Result<WrkResult, String> {
    let mut result = WrkResult::default();
    let mut saw_rps = false;
    for line in text.lines() {
        let line = line.trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            result.rps = number(rest.trim(), line)?;
            saw_rps = true;
        } else if line.contains(" requests in ") {
            result.requests = number(words[0], line)?;
        } else if line.starts_with("50%") && words.len() == 2 {
            result.p50_ms = Some(millis(words[1]).ok_or_else(|| bad(line))?);
        } else if line.starts_with("99%") && words.len() == 2 {
            result.p99_ms = Some(millis(words[1]).ok_or_else(|| bad(line))?);
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            result.non_2xx = number(rest.trim(), line)?;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            result.errors = socket_errors(rest).ok_or_else(|| bad(line))?;
        }
    }
    if saw_rps {
        Ok(result)
    } else {
        Err(format!(
            "no `Requests/sec:` line in its output: {:?}",
            last_line(text).unwrap_or("")
        ))
    }
}

fn bad(line: &str) -> String {
    format!("cannot read {line:?}")
}

fn number<T: std::str::FromStr>(word: &str, line: &str) -> Result<T, String> {
    word.parse().map_err(|_| bad(line))
}

/// `connect 0, read 8, write 53250, timeout 0` → the four counts.
fn socket_errors(rest: &str) -> Option<SocketErrors> {
    let mut errors = SocketErrors::default();
    for part in rest.split(',') {
        let mut kv = part.split_whitespace();
        let (name, value) = (kv.next()?, kv.next()?.parse().ok()?);
        match name {
            "connect" => errors.connect = value,
            "read" => errors.read = value,
            "write" => errors.write = value,
            "timeout" => errors.timeout = value,
            _ => return None,
        }
    }
    Some(errors)
}

/// A wrk duration (`259.00us`, `8.04ms`, `1.10s`, `2.00m`) in milliseconds.
fn millis(word: &str) -> Option<f64> {
    let split = word.find(|c: char| c.is_ascii_alphabetic())?;
    let (value, unit) = word.split_at(split);
    let value: f64 = value.parse().ok()?;
    let scale = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    Some(value * scale)
}

#[cfg(test)]
#[path = "wrk_tests.rs"]
mod tests;
