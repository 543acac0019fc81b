//! Context switches of a server, summed over its threads from `/proc/PID/task/*/status`
//! (`voluntary_ctxt_switches`: the thread slept, waiting for something;
//! `nonvoluntary_ctxt_switches`: it was preempted), sampled just before and just after a
//! timed wrk run. A server's own `/proc/PID/status` counts its main thread only, hence the
//! sum over its tasks.

use std::collections::BTreeMap;

/// Each live thread's (voluntary, involuntary) context switches, by thread id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sample(pub BTreeMap<u32, (u64, u64)>);

/// A server's context switches over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Switches {
    /// Voluntary: a thread waited (a read with nothing to read, a lock, a condition).
    pub voluntary: u64,
    /// Involuntary: a runnable thread was preempted (by wrk or another server's thread, on
    /// shared CPUs).
    pub involuntary: u64,
    /// Threads alive at the first sample and gone at the second: what they did in between
    /// is not counted (spare workers that ended).
    pub threads_gone: usize,
}

/// Reads every thread of `pid`; empty when `/proc` cannot be read (the process is gone).
pub fn sample(pid: u32) -> Sample {
    let mut threads = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Sample(threads);
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // A thread that ended since the listing is simply not counted.
        if let Ok(status) = std::fs::read_to_string(task.path().join("status")) {
            if let Some(counts) = parse_status(&status) {
                threads.insert(tid, counts);
            }
        }
    }
    Sample(threads)
}

/// (voluntary, involuntary) from one `status` file; `None` without both lines.
pub fn parse_status(status: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some((
        field("voluntary_ctxt_switches")?,
        field("nonvoluntary_ctxt_switches")?,
    ))
}

/// What happened between two samples of one process: per thread, after less before (a
/// thread started in between counts from zero). `None` if either sample is empty.
pub fn between(before: &Sample, after: &Sample) -> Option<Switches> {
    if before.0.is_empty() || after.0.is_empty() {
        return None;
    }
    let mut s = Switches::default();
    for (tid, &(vol, invol)) in &after.0 {
        let (vol0, invol0) = before.0.get(tid).copied().unwrap_or((0, 0));
        s.voluntary += vol.saturating_sub(vol0);
        s.involuntary += invol.saturating_sub(invol0);
    }
    s.threads_gone = before.0.keys().filter(|t| !after.0.contains_key(t)).count();
    Some(s)
}

impl Switches {
    /// (voluntary, involuntary) per request, for `requests` requests (`None` for none).
    pub fn per_request(&self, requests: u64) -> Option<(f64, f64)> {
        (requests > 0).then(|| {
            let n = requests as f64;
            (self.voluntary as f64 / n, self.involuntary as f64 / n)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of a real /proc/PID/task/TID/status around the counts.
    const STATUS: &str = "Name:\tservice_a-work\nState:\tS (sleeping)\nTgid:\t4242\n\
        Cpus_allowed_list:\t0-1\nvoluntary_ctxt_switches:\t1234\n\
        nonvoluntary_ctxt_switches:\t56\n";

    #[test]
    fn reads_both_counts() {
        assert_eq!(parse_status(STATUS), Some((1234, 56)));
        assert_eq!(parse_status("voluntary_ctxt_switches:\t3\n"), None);
        assert_eq!(parse_status(""), None);
        let junk = "voluntary_ctxt_switches:\tx\nnonvoluntary_ctxt_switches:\t1\n";
        assert_eq!(parse_status(junk), None);
    }

    #[test]
    fn sums_per_thread_deltas() {
        let before = Sample(BTreeMap::from([
            (10, (100, 5)),
            (11, (40, 1)),
            (12, (7, 7)),
        ]));
        // 10 and 11 went on, 12 ended (its work is lost), 13 started in between.
        let after = Sample(BTreeMap::from([
            (10, (150, 6)),
            (11, (45, 4)),
            (13, (20, 2)),
        ]));
        let s = between(&before, &after).unwrap();
        assert_eq!(
            s,
            Switches {
                voluntary: 50 + 5 + 20,
                involuntary: 1 + 3 + 2,
                threads_gone: 1,
            }
        );
        assert_eq!(s.per_request(25), Some((3.0, 0.24)));
        assert_eq!(s.per_request(0), None);
        assert_eq!(between(&Sample::default(), &after), None);
        assert_eq!(between(&before, &Sample::default()), None);
    }

    #[test]
    fn samples_this_process() {
        let me = sample(std::process::id());
        assert!(!me.0.is_empty(), "no thread read from /proc");
        assert!(me.0.contains_key(&std::process::id()), "{me:?}");
        assert_eq!(sample(u32::MAX).0.len(), 0);
    }
}
