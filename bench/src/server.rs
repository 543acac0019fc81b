//! A server process of the benchmark: started in a session of its own (through `setsid`, so
//! a Ctrl-C on the terminal reaches the benchmark, which then stops it), its stdout and stderr
//! going to a file (so it pays for its access log), and stopped and reaped when dropped.

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a server may take to listen.
const START_LIMIT: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGINT before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(6);

/// A running server; stopped (SIGINT, then SIGKILL) and reaped when dropped.
pub struct Server {
    name: String,
    child: Child,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl Server {
    /// Starts `program args` and waits for the `listening on http://IP:PORT` line it prints.
    pub fn start_announced(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<Server, String> {
        let mut server = Server::spawn(name, program, args, log)?;
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(addr) = announced_addr(&read_log(log)) {
                server.addr = addr;
                return Ok(server);
            }
            server.check_alive_until(deadline)?;
        }
    }

    /// Starts `program args` that will listen on `addr`, and waits until `addr` accepts.
    pub fn start_on(
        name: &str,
        program: &Path,
        args: &[String],
        addr: SocketAddr,
        log: &Path,
    ) -> Result<Server, String> {
        let mut server = Server::spawn(name, program, args, log)?;
        server.addr = addr;
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(server);
            }
            server.check_alive_until(deadline)?;
        }
    }

    fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Result<Server, String> {
        if !program.is_file() {
            return Err(format!("{name}: {} is missing", program.display()));
        }
        let file = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = file
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        // setsid execs the program in place (we are not a group leader), so the pid is the
        // server's own: its /proc/PID/status is the one read for the peak RSS.
        let child = Command::new("setsid")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {name} through setsid (util-linux): {e}"))?;
        Ok(Server {
            name: name.to_string(),
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: log.to_path_buf(),
        })
    }

    /// Fails if the process exited or the deadline passed; otherwise sleeps a little.
    fn check_alive_until(&mut self, deadline: Instant) -> Result<(), String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = read_log(&self.log);
            let last = log.lines().last().unwrap_or("no output");
            return Err(format!("{} exited at start ({status}): {last}", self.name));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not listen within {} s (log: {})",
                self.name,
                START_LIMIT.as_secs(),
                self.log.display()
            ));
        }
        thread::sleep(Duration::from_millis(20));
        Ok(())
    }

    /// Its name, as the results show it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its peak resident memory (VmHWM) in KiB, while it runs.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Sends SIGINT, waits for the exit (killing it after a while) and reaps it.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
        }
        let deadline = Instant::now() + STOP_LIMIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free loopback address: bound to port 0, then released for a server that takes an
/// explicit address.
pub fn free_addr() -> Result<SocketAddr, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot find a free port: {e}"))?;
    listener
        .local_addr()
        .map_err(|e| format!("cannot find a free port: {e}"))
}

/// The start of a log (at most 64 KiB: the `listening on` line comes first or nearly).
fn read_log(path: &Path) -> String {
    let mut text = Vec::new();
    if let Ok(file) = File::open(path) {
        let _ = file.take(64 * 1024).read_to_end(&mut text);
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// The address of the first complete `listening on http://IP:PORT` line (text or JSON logs).
pub fn announced_addr(log: &str) -> Option<SocketAddr> {
    log.split_inclusive('\n')
        .filter(|line| line.ends_with('\n') && line.contains("listening on http://"))
        .find_map(|line| {
            let rest = line.rsplit("http://").next()?;
            rest.split(['"', ' ', '/', '\n']).next()?.parse().ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_listening_line() {
        let text = "2026-12-03 07:48:38 INFO service_a config: listen=127.0.0.1:0\n\
                    2026-12-03 07:48:38 INFO service_a listening on http://127.0.0.1:43223\n";
        assert_eq!(announced_addr(text), "127.0.0.1:43223".parse().ok());
        let json = "{\"level\":\"INFO\",\"msg\":\"listening on http://127.0.0.1:9\"}\n";
        assert_eq!(announced_addr(json), "127.0.0.1:9".parse().ok());
        let ceiling = "bench_ceiling listening on http://127.0.0.1:41000 (2 workers)\n";
        assert_eq!(announced_addr(ceiling), "127.0.0.1:41000".parse().ok());
    }

    #[test]
    fn a_torn_line_is_not_an_address() {
        assert_eq!(announced_addr("INFO listening on http://127.0.0.1:4"), None);
        assert_eq!(announced_addr("INFO starting\n"), None);
    }
}
