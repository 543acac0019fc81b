//! The servers of a run: found, started on free loopback ports, checked with one request
//! each, and stopped together when the fleet is dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::Args;
use crate::machine;
use crate::results::{Kind, MSG};
use crate::server::{free_addr, Server};

/// A URL wrk drives.
#[derive(Clone, Debug)]
pub struct Target {
    /// What it is.
    pub kind: Kind,
    /// The full URL.
    pub url: String,
    /// The process that answers it (B's own for the chain), whose context switches count.
    pub pid: u32,
}

/// The started servers and the targets on them.
pub struct Fleet {
    /// Every server, stopped and reaped when the fleet is dropped.
    pub servers: Vec<Server>,
    /// The targets, in the order they run at each connection count.
    pub targets: Vec<Target>,
    /// What was left out and why (anchors not built).
    pub notes: Vec<String>,
    /// Where the anchors were looked for (none with `--no-anchors`).
    pub anchors: Option<PathBuf>,
}

/// Where the binaries are.
struct Binaries {
    a: PathBuf,
    b: PathBuf,
    ceiling: PathBuf,
    anchors: Option<PathBuf>,
}

impl Binaries {
    fn find(args: &Args) -> Result<Binaries, String> {
        let dir = match &args.bin_dir {
            Some(dir) => dir.clone(),
            None => std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(Path::to_path_buf))
                .ok_or("cannot tell this program's directory: give --bin-dir")?,
        };
        let anchors = args
            .anchors
            .clone()
            .unwrap_or_else(|| default_anchors(&machine::workspace_root()));
        let bins = Binaries {
            a: args.a_binary.clone().unwrap_or(dir.join("service_a")),
            b: args.b_binary.clone().unwrap_or(dir.join("service_b")),
            ceiling: dir.join("bench_ceiling"),
            anchors: (!args.no_anchors).then_some(anchors),
        };
        for bin in [&bins.a, &bins.b, &bins.ceiling] {
            if !bin.is_file() {
                return Err(format!(
                    "{} is missing: run `cargo build --release` first (or give --bin-dir)",
                    bin.display()
                ));
            }
        }
        Ok(bins)
    }
}

/// The anchors' folder when none is given: next to the workspace, `anchors` (a writable copy,
/// built) before `shared/anchors` (the read-only source), the first with an anchor built;
/// `shared/anchors` if neither has one (the report then says what is not built).
pub fn default_anchors(workspace: &Path) -> PathBuf {
    let parent = workspace.parent().unwrap_or(workspace);
    let candidates = [parent.join("anchors"), parent.join("shared/anchors")];
    let built = |dir: &&PathBuf| {
        ["axum", "actix"].iter().any(|f| {
            dir.join(f)
                .join("target/release")
                .join(format!("{f}_a"))
                .is_file()
        })
    };
    let found = candidates.iter().find(built);
    found.unwrap_or(&candidates[1]).clone()
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

impl Fleet {
    /// Starts the ceiling, A, B (calling that A) and every built anchor pair, logs in `work`.
    pub fn start(args: &Args, work: &Path) -> Result<Fleet, String> {
        let bins = Binaries::find(args)?;
        let mut fleet = Fleet {
            servers: Vec::new(),
            targets: Vec::new(),
            notes: Vec::new(),
            anchors: bins.anchors.clone(),
        };
        // The ceiling exits by itself after --max-secs, should this program be killed with -9.
        let points = args.conns.len() as u64 * Kind::ALL.len() as u64;
        let max_secs = 60 + points * (args.duration + args.warmup + 5);
        let ceiling_args = strings(&["--listen", "127.0.0.1:0", "--max-secs"]);
        let ceiling_args = [ceiling_args, vec![max_secs.to_string()]].concat();
        let log = work.join("ceiling.log");
        let ceiling = Server::start_announced("ceiling", &bins.ceiling, &ceiling_args, &log)?;
        fleet.add(Kind::Ceiling, ceiling)?;

        let a_args = strings(&["--listen", "127.0.0.1:0", "--log-level", "info"]);
        let log = work.join("service_a.log");
        let a = Server::start_announced("service_a", &bins.a, &a_args, &log)?;
        let a_url = url(a.addr);
        fleet.add(Kind::A, a)?;
        let mut b_args = strings(&["--listen", "127.0.0.1:0", "--log-level", "info"]);
        b_args.extend(strings(&[
            "--timeout-ms",
            "2000",
            "--service-a-url",
            &a_url,
        ]));
        if let Some(n) = args.max_inflight_b {
            b_args.extend(["--max-inflight".to_string(), n.to_string()]);
        }
        let log = work.join("service_b.log");
        fleet.add(
            Kind::B,
            Server::start_announced("service_b", &bins.b, &b_args, &log)?,
        )?;

        if let Some(dir) = &bins.anchors {
            fleet.start_anchor(dir, work, "axum", Kind::AxumA, Kind::AxumB)?;
            fleet.start_anchor(dir, work, "actix", Kind::ActixA, Kind::ActixB)?;
        } else {
            fleet
                .notes
                .push("anchors: left out (--no-anchors)".to_string());
        }
        Ok(fleet)
    }

    /// Starts `FAMILY_a` and `FAMILY_b` calling it, if both are built; notes it if not.
    fn start_anchor(
        &mut self,
        dir: &Path,
        work: &Path,
        family: &str,
        a_kind: Kind,
        b_kind: Kind,
    ) -> Result<(), String> {
        let release = dir.join(family).join("target/release");
        let (a_bin, b_bin) = (
            release.join(format!("{family}_a")),
            release.join(format!("{family}_b")),
        );
        if let Some(missing) = [&a_bin, &b_bin].into_iter().find(|b| !b.is_file()) {
            self.notes.push(format!(
                "anchors: {family} not run: {} is not built (`cargo build --release` in {})",
                missing.display(),
                dir.join(family).display()
            ));
            return Ok(());
        }
        let a_addr = free_addr()?;
        let name = format!("{family}_a");
        let log = work.join(format!("{name}.log"));
        let a = Server::start_on(&name, &a_bin, &[a_addr.to_string()], a_addr, &log)?;
        self.add(a_kind, a)?;
        let b_addr = free_addr()?;
        let name = format!("{family}_b");
        let log = work.join(format!("{name}.log"));
        let b_args = [b_addr.to_string(), url(a_addr)];
        let b = Server::start_on(&name, &b_bin, &b_args, b_addr, &log)?;
        self.add(b_kind, b)
    }

    /// Checks the server with one request and adds it with its target.
    fn add(&mut self, kind: Kind, server: Server) -> Result<(), String> {
        let target = Target {
            kind,
            url: format!("{}{}", url(server.addr), kind.path()),
            pid: server.pid(),
        };
        let name = server.name().to_string();
        eprintln!(
            "    {name:<10} {}  (pid {})",
            url(server.addr),
            server.pid()
        );
        self.servers.push(server);
        probe(&target).map_err(|e| format!("{name}: GET {}: {e}", target.url))?;
        self.targets.push(target);
        Ok(())
    }

    /// The ports of every server.
    pub fn ports(&self) -> Vec<u16> {
        self.servers.iter().map(|s| s.addr.port()).collect()
    }
}

/// One request, so that a broken server fails here and not as a table of errors.
fn probe(target: &Target) -> Result<(), String> {
    let rest = target.url.trim_start_matches("http://");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr: SocketAddr = host.parse().map_err(|_| "bad address".to_string())?;
    let limit = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, limit).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(limit))
        .map_err(|e| e.to_string())?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(head.as_bytes())
        .map_err(|e| e.to_string())?;
    let answer = read_answer(&mut stream)?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.lines().next().unwrap_or("");
    let echo = format!("\"echo\":\"{MSG}\"");
    if status.starts_with("HTTP/1.1 200") && answer.contains(&echo) {
        Ok(())
    } else {
        let body = answer.rsplit("\r\n\r\n").next().unwrap_or("");
        Err(format!(
            "answered {status:?} {body:?}, expected 200 with {echo}"
        ))
    }
}

/// Reads one answer: its head and the body its Content-Length announces (the ceiling keeps
/// the connection open whatever the request says, so reading to the end would wait).
fn read_answer(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while answer.len() < 64 * 1024 {
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok());
            if length.is_some_and(|len| answer.len() >= end + 4 + len) {
                break;
            }
        }
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_anchors_prefer_a_built_copy() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let root =
            std::env::temp_dir().join(format!("bench-anchors.{}.{nanos}", std::process::id()));
        let workspace = root.join("main");
        let (copy, shared) = (root.join("anchors"), root.join("shared/anchors"));
        std::fs::create_dir_all(copy.join("actix/target/release")).unwrap();
        std::fs::create_dir_all(shared.join("axum/target/release")).unwrap();
        // Neither built: the read-only source, whose missing binaries the report names.
        assert_eq!(default_anchors(&workspace), shared);
        std::fs::write(shared.join("axum/target/release/axum_a"), "").unwrap();
        assert_eq!(default_anchors(&workspace), shared);
        // The copy built: it comes first.
        std::fs::write(copy.join("actix/target/release/actix_a"), "").unwrap();
        assert_eq!(default_anchors(&workspace), copy);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
