//! Where log lines wait for stdout: one writer thread takes every line that waits, a few
//! milliseconds at a time, and writes them in as few `write`s as it can, each of whole lines
//! and at most `PIPE_BUF` bytes (kept whole on a pipe, among any number of writers).
//!
//! A connection thread only appends its line under a lock held for that copy, and never
//! waits for stdout: when each thread wrote its own line, a pipe whose reader paused held
//! every request for as long (4.7 s on the Compose stack). The writer is never
//! woken per line (it polls, more slowly while there is nothing), so a line costs its thread
//! no system call. At most [`QUEUE_BYTES`] wait: beyond that a line is dropped and counted,
//! and the count is logged with the next line that fits.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// The most bytes of lines that wait; 1 MiB, the size of Docker's non-blocking log buffer.
pub(crate) const QUEUE_BYTES: usize = 1 << 20;
/// How long the writer sleeps after writing: lines wait at most about this under load.
const BUSY_POLL: Duration = Duration::from_millis(1);
/// How long it sleeps at most while no line comes (doubling from [`BUSY_POLL`]).
const IDLE_POLL: Duration = Duration::from_millis(50);
/// The longest [`Queue::flush`] waits.
const FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// The lines waiting for the writer thread.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    waiting: Mutex<Waiting>,
    written: Condvar,
}

#[derive(Debug, Default)]
struct Waiting {
    bytes: Vec<u8>,
    /// Lines dropped since the last count was logged.
    dropped: u64,
    /// The writer holds lines it took and has not written yet.
    writing: bool,
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

    /// Appends one whole line; `Err` if it was dropped (the queue is full). `Ok(n)` carries the
    /// lines dropped before it, once: the caller logs that count.
    pub(crate) fn push(&self, line: &[u8]) -> Result<u64, ()> {
        let mut waiting = self.lock();
        if waiting.bytes.len() + line.len() > QUEUE_BYTES {
            waiting.dropped += 1;
            return Err(());
        }
        waiting.bytes.extend_from_slice(line);
        Ok(std::mem::take(&mut waiting.dropped))
    }

    /// Waits (at most [`FLUSH_LIMIT`]) until every line pushed so far is written: before the
    /// process exits, so that its last lines are not lost.
    pub(crate) fn flush(&self) {
        let waiting = self.lock();
        let _ = self
            .written
            .wait_timeout_while(waiting, FLUSH_LIMIT, |w| !w.bytes.is_empty() || w.writing);
    }

    fn write_forever(&self, out: Option<File>) {
        let mut taken = Vec::new();
        let mut poll = BUSY_POLL;
        loop {
            {
                let mut waiting = self.lock();
                std::mem::swap(&mut waiting.bytes, &mut taken);
                waiting.writing = !taken.is_empty();
            }
            if taken.is_empty() {
                poll = (poll * 2).min(IDLE_POLL);
            } else {
                for chunk in whole_lines(&taken, crate::logging::MAX_LINE) {
                    let _ = match &out {
                        Some(out) => (&*out).write_all(chunk),
                        None => std::io::stdout().write_all(chunk),
                    };
                }
                taken.clear();
                self.lock().writing = false;
                self.written.notify_all();
                poll = BUSY_POLL;
            }
            let until = Instant::now() + poll;
            thread::sleep(until.saturating_duration_since(Instant::now()));
        }
    }
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

    #[test]
    fn a_full_queue_drops_and_counts_once() {
        let queue = Queue::default();
        let line = vec![b'x'; QUEUE_BYTES / 2];
        assert_eq!(queue.push(&line), Ok(0));
        assert_eq!(queue.push(&line), Ok(0));
        assert_eq!(queue.push(b"y\n"), Err(()));
        assert_eq!(queue.push(b"y\n"), Err(()));
        queue.lock().bytes.clear();
        assert_eq!(queue.push(b"z\n"), Ok(2), "the count, once");
        assert_eq!(queue.push(b"z\n"), Ok(0));
    }
}
