//! Where log lines wait for stdout: one writer thread takes every line that waits, a few
//! milliseconds at a time, and writes them in as few `write`s as it can, each of whole lines
//! and at most `PIPE_BUF` bytes (kept whole on a pipe, among any number of writers).
//!
//! A thread that answers (a worker) only appends its line under a lock held for that copy,
//! and never
//! waits for stdout: when each thread wrote its own line, a pipe whose reader paused held
//! every request for as long (4.7 s on the Compose stack). The writer is never
//! woken per line (it polls, more slowly while there is nothing), so a line costs its thread
//! no system call. At most [`QUEUE_BYTES`] wait: beyond that a line is dropped and counted.
//! The count is exact: it is carried until the line that reports it is queued, and that line
//! never competes with the others for room (a line is queued only while it leaves
//! [`RESERVE`] free, which the report may use). The report goes in before the next line that
//! fits, or at the exit's [`Queue::flush`]; [`Queue::dropped_total`] gives the stop's line
//! the count since the start.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// The most bytes of lines that wait; 1 MiB, the size of Docker's non-blocking log buffer.
pub(crate) const QUEUE_BYTES: usize = 1 << 20;
/// Room no ordinary line may take: the line reporting a count, queued before the next line
/// that fits, and the one the exit's flush may still add.
const RESERVE: usize = 2 * crate::log_text::MAX_LINE;
/// How long the writer sleeps after writing: lines wait at most about this under load.
const BUSY_POLL: Duration = Duration::from_millis(10);
/// How long it sleeps at most while no line comes (doubling from [`BUSY_POLL`]).
const IDLE_POLL: Duration = Duration::from_millis(50);

/// The lines waiting for the writer thread.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    waiting: Mutex<Waiting>,
    written: Condvar,
    /// Lines the writer took and has not written yet, reports of drops not counted (it
    /// updates this without the lock).
    in_hand: AtomicUsize,
}

#[derive(Debug, Default)]
struct Waiting {
    bytes: Vec<u8>,
    /// Lines dropped whose count is not queued yet.
    dropped: u64,
    /// Lines dropped since the start.
    total: u64,
    /// Where each report of drops in `bytes` starts: reports are not counted as lines that
    /// were never written.
    reports: Vec<usize>,
    /// The writer holds lines it took and has not written yet.
    writing: bool,
    /// A flush waits for the writer: only then is it woken (a wake is a system call).
    flushing: bool,
}

impl Queue {
    /// A queue with its writer thread writing to `out` (stdout when `None`).
    pub(crate) fn start(out: Option<File>) -> Arc<Queue> {
        let queue = Arc::new(Queue::default());
        let writer = Arc::clone(&queue);
        let spawned = thread::Builder::new()
            .name("log-writer".to_string())
            .spawn(move || writer.write_forever(out));
        if let Err(e) = spawned {
            eprintln!("cannot start the log writer thread: {e}; no log line will be written");
        }
        queue
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one whole line, after the line `report(n, total)` makes when `n` lines were
    /// dropped before it (`total` since the start); `false` if this one is dropped (the
    /// queue is full), then counted and reported with the next line that fits.
    pub(crate) fn push(&self, line: &[u8], report: impl FnOnce(u64, u64) -> Vec<u8>) -> bool {
        let mut waiting = self.lock();
        if waiting.bytes.len() + line.len() > QUEUE_BYTES - RESERVE {
            waiting.dropped += 1;
            waiting.total += 1;
            return false;
        }
        waiting.report(report);
        waiting.bytes.extend_from_slice(line);
        true
    }

    /// Lines dropped since the start (for the stop's last line).
    pub(crate) fn dropped_total(&self) -> u64 {
        self.lock().total
    }

    /// Queues the report of a count not reported yet (`report` as for [`Queue::push`]), then
    /// waits (at most `limit`) until every line queued is written: before the stop's last
    /// line and the exit, so that they are not lost. Returns how many lines were still
    /// waiting when it gave up (a reader of stdout that does not read).
    pub(crate) fn flush(&self, limit: Duration, report: impl FnOnce(u64, u64) -> Vec<u8>) -> usize {
        let mut waiting = self.lock();
        waiting.report(report);
        waiting.flushing = true;
        let waited = self
            .written
            .wait_timeout_while(waiting, limit, |w| !w.bytes.is_empty() || w.writing);
        let (waiting, _) = waited.unwrap_or_else(|p| p.into_inner());
        lines(&waiting.bytes) - waiting.reports.len() + self.in_hand.load(Ordering::Relaxed)
    }

    fn write_forever(&self, out: Option<File>) {
        let (mut taken, mut reports) = (Vec::new(), Vec::new());
        let mut poll = BUSY_POLL;
        loop {
            {
                let mut waiting = self.lock();
                std::mem::swap(&mut waiting.bytes, &mut taken);
                std::mem::swap(&mut waiting.reports, &mut reports);
                waiting.writing = !taken.is_empty();
                let in_hand = lines(&taken) - reports.len();
                self.in_hand.store(in_hand, Ordering::Relaxed);
            }
            if taken.is_empty() {
                poll = (poll * 2).min(IDLE_POLL);
            } else {
                let mut at = 0;
                for chunk in whole_lines(&taken, crate::log_text::MAX_LINE) {
                    let _ = match &out {
                        Some(out) => (&*out).write_all(chunk),
                        None => std::io::stdout().write_all(chunk),
                    };
                    let end = at + chunk.len();
                    let in_chunk = reports.iter().filter(|r| (at..end).contains(*r)).count();
                    self.in_hand
                        .fetch_sub(lines(chunk) - in_chunk, Ordering::Relaxed);
                    at = end;
                }
                taken.clear();
                reports.clear();
                let mut waiting = self.lock();
                waiting.writing = false;
                if waiting.flushing {
                    self.written.notify_all();
                }
                poll = BUSY_POLL;
            }
            let until = Instant::now() + poll;
            thread::sleep(until.saturating_duration_since(Instant::now()));
        }
    }
}

impl Waiting {
    /// Queues the line reporting the lines dropped since the last report, if any: in the
    /// room [`RESERVE`] keeps, so the count is never dropped itself.
    fn report(&mut self, report: impl FnOnce(u64, u64) -> Vec<u8>) {
        if self.dropped > 0 {
            let line = report(self.dropped, self.total);
            if self.bytes.len() + line.len() <= QUEUE_BYTES {
                self.reports.push(self.bytes.len());
                self.bytes.extend_from_slice(&line);
                self.dropped = 0;
            }
        }
    }
}

/// The number of lines in `bytes` (whole lines).
fn lines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

/// `bytes` (whole lines, each at most `max`) cut into runs of whole lines of at most `max`.
fn whole_lines(bytes: &[u8], max: usize) -> impl Iterator<Item = &[u8]> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let window = &rest[..rest.len().min(max)];
        let end = match window.len() == rest.len() {
            true => rest.len(),
            false => window
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(window.len(), |i| i + 1),
        };
        let (chunk, after) = rest.split_at(end);
        rest = after;
        Some(chunk)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_whole_lines_within_the_limit() {
        let text = b"aaaa\nbbb\ncc\nd\n";
        let runs: Vec<&[u8]> = whole_lines(text, 9).collect();
        assert_eq!(runs, [&b"aaaa\nbbb\n"[..], b"cc\nd\n"]);
        assert_eq!(whole_lines(b"", 9).count(), 0);
    }

    fn note(n: u64, total: u64) -> Vec<u8> {
        format!("{n} dropped, {total} in all\n").into_bytes()
    }

    #[test]
    fn a_full_queue_drops_and_counts_once() {
        let queue = Queue::default();
        let line = vec![b'x'; (QUEUE_BYTES - RESERVE) / 2];
        assert!(queue.push(&line, note));
        assert!(queue.push(&line, note));
        assert!(!queue.push(b"y\n", note));
        assert!(!queue.push(b"y\n", note));
        queue.lock().bytes.clear();
        assert!(queue.push(b"z\n", note));
        assert_eq!(
            queue.lock().bytes,
            b"2 dropped, 2 in all\nz\n",
            "the count, once"
        );
        assert!(queue.push(b"z\n", note));
        assert_eq!(queue.dropped_total(), 2);
    }

    /// Lines of many lengths pushed while the writer takes what waits only now and then:
    /// each one is written or counted in a report that is written, none is lost.
    #[test]
    fn every_line_is_written_or_counted() {
        let queue = Queue::default();
        let (mut written, mut counted) = (0u64, 0u64);
        let mut take = |queue: &Queue| {
            let taken = std::mem::take(&mut queue.lock().bytes);
            for line in taken.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                match std::str::from_utf8(line)
                    .ok()
                    .and_then(|l| l.strip_prefix("R "))
                {
                    Some(n) => counted += n.parse::<u64>().unwrap_or(0),
                    None => written += 1,
                }
            }
        };
        let pushed = 10_000;
        for round in 0..pushed {
            let line = format!("{}\n", "l".repeat(100 + round * 997 % 3900));
            queue.push(line.as_bytes(), |n, _| format!("R {n}\n").into_bytes());
            if round % 1000 == 999 {
                take(&queue);
            }
        }
        // What the exit's flush adds: the count not reported yet.
        queue.lock().report(|n, _| format!("R {n}\n").into_bytes());
        take(&queue);
        assert!(counted > 1000, "the queue was full at times: {counted}");
        assert_eq!(
            (written + counted, queue.dropped_total()),
            (pushed as u64, counted)
        );
    }
}
